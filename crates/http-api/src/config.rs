//! The service's configuration: one documented struct, built from a [`Source`] of variables,
//! with every setting declared once.
//!
//! The `settings!` block below declares each setting in one place: its field and type, its
//! variable, its flag (or that it is a secret), its default, its help line and its parser.
//! Everything else is made from that: the [`Config`] struct, its `Debug` (secrets as
//! `set`/`unset`), [`Config::from_source`], the flags and `--help` of [`Cli`], and
//! [`SETTINGS`], against which a test checks the README's configuration table.
//!
//! `main` layers the command-line flags (each also read from its variable) over the process
//! environment; tests pass a `HashMap`. [`Config::from_source`] checks *every* variable and
//! reports all problems at once, so an operator fixes a bad deployment in one round trip.
//! Secrets (the D-ID key, the bearer token, a Redis URL that may carry a password) are kept
//! as [`SecretString`], whose `Debug` never shows them, and they have no command-line flag
//! (a flag would show up in `ps`).
//!
//! The parsers are in `config/parse.rs`, the command line in `config/cli.rs`. This file stays
//! whole although it is long: it keeps the declarations together with the macros that turn
//! them into code, which are read and changed together, and its tests.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ports::FailoverPolicy;
use secrecy::SecretString;

mod cli;
mod parse;

pub use cli::{Cli, Layered};

/// Where configuration variables come from: the environment, a map in tests, or the flags.
pub trait Source {
    /// The value of variable `name`, if set.
    fn get(&self, name: &str) -> Option<String>;
}

impl Source for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned()
    }
}

impl Source for HashMap<&str, &str> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).map(|v| (*v).to_owned())
    }
}

/// The process environment. Only `main` uses it; tests build a map.
#[derive(Debug, Clone, Copy, Default)]
pub struct EnvSource;

impl Source for EnvSource {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// One setting as declared: what the parser, the flags, `--help` and the README table are
/// made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// The environment variable.
    pub env: &'static str,
    /// Another spelling, read when `env` is unset.
    pub alias: Option<&'static str>,
    /// The long flag without its dashes; `None` for a variable read from the environment only.
    pub flag: Option<&'static str>,
    /// The default, as shown and as parsed when the variable is unset; `None`: unset.
    pub default: Option<&'static str>,
    /// What the setting does, in one line (`--help` adds the default).
    pub help: &'static str,
    /// A secret: no flag, and `Debug` shows only whether it is set.
    pub secret: bool,
}

impl Setting {
    /// The help line with its default, as `--help` shows it.
    pub fn help_with_default(&self) -> String {
        match self.default {
            Some(d) => format!("{} [default: {d}]", self.help),
            None => self.help.to_owned(),
        }
    }
}

/// `RUST_LOG`: read by the log subscriber (`telemetry`), not by [`Config`]; declared here so
/// that `--help` and the README table show it like every other variable.
pub const RUST_LOG: Setting = Setting {
    env: "RUST_LOG",
    alias: None,
    flag: None,
    default: Some(DEFAULT_LOG_FILTER),
    help: "log filter, e.g. `info`, `http_api=debug,info`",
    secret: false,
};

/// The log filter when `RUST_LOG` is unset.
pub const DEFAULT_LOG_FILTER: &str = "info";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Human,
    /// One JSON object per line, with the request span's fields.
    Json,
}

/// The value of an optional declaration part.
macro_rules! optional {
    () => {
        None
    };
    ($v:literal) => {
        Some($v)
    };
    (unset) => {
        None
    };
}

/// The [`Setting`] of one declaration.
macro_rules! setting {
    ($env:literal, [$($alias:literal)?], flag($flag:literal), $default:tt, $help:literal) => {
        Setting {
            env: $env,
            alias: optional!($($alias)?),
            flag: Some($flag),
            default: optional!($default),
            help: $help,
            secret: false,
        }
    };
    ($env:literal, [$($alias:literal)?], secret, $default:tt, $help:literal) => {
        Setting {
            env: $env,
            alias: optional!($($alias)?),
            flag: None,
            default: optional!($default),
            help: $help,
            secret: true,
        }
    };
}

/// How a field shows in `Debug`: a secret only as `set` or `unset`.
macro_rules! shown {
    (flag, $value:expr) => {
        $value
    };
    (secret, $value:expr) => {
        if $value.is_some() { &"set" } else { &"unset" }
    };
}

/// The first paragraph of a field's docs: its variable, default and help line.
macro_rules! field_doc {
    ($env:literal, unset, $help:literal) => {
        concat!("`", $env, "`, unset by default: ", $help, ".")
    };
    ($env:literal, $default:literal, $help:literal) => {
        concat!("`", $env, "`, default `", $default, "`: ", $help, ".")
    };
}

/// A field's final value: a setting with a default always has one once no problem was found.
macro_rules! required {
    (unset, $value:expr, $env:literal) => {
        $value
    };
    ($default:literal, $value:expr, $env:literal) => {
        $value.ok_or_else(|| ConfigError::internal($env))?
    };
}

/// Declares every setting once: makes [`Config`], its `Debug`, [`Config::from_source`] and
/// [`SETTINGS`].
macro_rules! settings {
    ($(
        $(#[$doc:meta])*
        $field:ident: $ty:ty {
            env: $env:literal,
            $(alias: $alias:literal,)?
            access: $access:ident $(($flag:literal))?,
            default: $default:tt,
            help: $help:literal,
            parse: $parse:expr,
        }
    )*) => {
        /// Everything the service reads at start-up. Each field names its variable; the
        /// README's configuration table lists them all.
        #[derive(Clone)]
        pub struct Config {
            $(
                #[doc = field_doc!($env, $default, $help)]
                #[doc = ""]
                $(#[$doc])*
                pub $field: $ty,
            )*
        }

        /// Every setting: those of [`Config`] in the order their problems are reported, then
        /// [`RUST_LOG`].
        pub const SETTINGS: &[Setting] = &[
            $( setting!($env, [$($alias)?], $access $(($flag))?, $default, $help), )*
            RUST_LOG,
        ];

        impl fmt::Debug for Config {
            // Made from the declarations, so a secret cannot be printed by accident: it
            // shows as `set`/`unset`.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut d = f.debug_struct("Config");
                $( d.field(stringify!($field), shown!($access, &self.$field)); )*
                d.finish()
            }
        }

        impl Config {
            /// Reads and checks every variable; all problems are reported together.
            pub fn from_source<S: Source + ?Sized>(source: &S) -> Result<Config, ConfigError> {
                let mut r = Reader {
                    source,
                    problems: Vec::new(),
                };
                $(
                    let $field = r.value(
                        &setting!($env, [$($alias)?], $access $(($flag))?, $default, $help),
                        $parse,
                    );
                )*
                r.cross_checks();
                if !r.problems.is_empty() {
                    return Err(ConfigError {
                        problems: r.problems,
                    });
                }
                Ok(Config {
                    $( $field: required!($default, $field, $env), )*
                })
            }
        }
    };
}

settings! {
    /// The original service's port, on loopback only.
    bind_addr: SocketAddr {
        env: "BIND_ADDR",
        access: flag("bind-addr"),
        default: "127.0.0.1:55433",
        help: "Listen address",
        parse: parse::address,
    }
    /// `DID_API_KEY`, the original service's spelling, is read when it is unset. `None` starts
    /// the service with D-ID routes answering 503.
    did_api_key: Option<SecretString> {
        env: "D_ID_API_KEY",
        alias: "DID_API_KEY",
        access: secret,
        default: unset,
        help: "D-ID API key (`user:secret`); unset: D-ID routes answer 503",
        parse: parse::secret,
    }
    /// Kept without a trailing slash.
    did_base_url: String {
        env: "D_ID_BASE_URL",
        access: flag("did-base-url"),
        default: "https://api.d-id.com",
        help: "D-ID API base URL",
        parse: parse::http_url,
    }
    /// `None` selects the in-memory limiter. A secret: it may hold a password.
    redis_url: Option<SecretString> {
        env: "REDIS_URL",
        access: secret,
        default: unset,
        help: "redis://, rediss://, redis-cluster:// or redis-sentinel:// URL of the shared limiter; \
               unset: in-memory limiter",
        parse: parse::redis_url,
    }
    /// Read by the Redis limiter at start-up; unreadable or unparsable stops the start.
    redis_tls_ca_file: Option<PathBuf> {
        env: "REDIS_TLS_CA_FILE",
        access: flag("redis-tls-ca-file"),
        default: unset,
        help: "PEM CA file trusted instead of the system roots for a rediss:// REDIS_URL",
        parse: parse::file,
    }
    /// With [`redis_tls_key_file`](Self::redis_tls_key_file): mutual TLS.
    redis_tls_cert_file: Option<PathBuf> {
        env: "REDIS_TLS_CERT_FILE",
        access: flag("redis-tls-cert-file"),
        default: unset,
        help: "PEM client certificate for mutual TLS to Redis (needs REDIS_TLS_KEY_FILE)",
        parse: parse::file,
    }
    /// The key of [`redis_tls_cert_file`](Self::redis_tls_cert_file).
    redis_tls_key_file: Option<PathBuf> {
        env: "REDIS_TLS_KEY_FILE",
        access: flag("redis-tls-key-file"),
        default: unset,
        help: "PEM private key of REDIS_TLS_CERT_FILE",
        parse: parse::file,
    }
    /// Unset: the URL's host.
    redis_tls_server_name: Option<String> {
        env: "REDIS_TLS_SERVER_NAME",
        access: flag("redis-tls-server-name"),
        default: unset,
        help: "Name the Redis server certificate must carry, when not REDIS_URL's host",
        parse: |raw| Ok(raw.to_owned()),
    }
    /// Dangerous: encrypted but not authenticated.
    redis_tls_insecure_skip_verify: bool {
        env: "REDIS_TLS_INSECURE_SKIP_VERIFY",
        access: flag("redis-tls-insecure-skip-verify"),
        default: "false",
        help: "DANGEROUS: accept any Redis server certificate (throwaway self-signed setups only)",
        parse: parse::boolean,
    }
    /// At least 1.
    max_concurrent: u32 {
        env: "MAX_CONCURRENT_REQUESTS",
        access: flag("max-concurrent-requests"),
        default: "10",
        help: "Maximum concurrent D-ID calls (across all instances with Redis)",
        parse: |raw| parse::whole(raw, 1u32),
    }
    /// `adaptive` learns the limit from D-ID's answers (see `app::upstream`).
    limit_mode: LimitMode {
        env: "LIMIT_MODE",
        access: flag("limit-mode"),
        default: "fixed",
        help: "fixed (MAX_CONCURRENT_REQUESTS) or adaptive (learned from D-ID's 429s, timeouts and latency, one limit for all instances; starts at the stored limit or MAX_CONCURRENT_REQUESTS)",
        parse: parse::limit_mode,
    }
    /// The adaptive limit never goes below this.
    limit_min: u32 {
        env: "LIMIT_MIN",
        access: flag("limit-min"),
        default: "1",
        help: "Adaptive mode: the lowest limit (1 to 10000)",
        parse: |raw| parse::whole_within(raw, 1u32, 10_000),
    }
    /// The adaptive limit never goes above this.
    limit_max: u32 {
        env: "LIMIT_MAX",
        access: flag("limit-max"),
        default: "100",
        help: "Adaptive mode: the highest limit (LIMIT_MIN to 10000)",
        parse: |raw| parse::whole_within(raw, 1u32, 10_000),
    }
    /// The multiplicative decrease of a drop.
    limit_backoff: f64 {
        env: "LIMIT_BACKOFF",
        access: flag("limit-backoff"),
        default: "0.7",
        help: "Adaptive mode: the factor a 429 or timeout multiplies the limit by (0.5 to 0.95)",
        parse: |raw| parse::number_in(raw, 0.5, 0.95),
    }
    /// How long a level found too high is not tried again (doubling up to 15 min).
    limit_probe_hold: Duration {
        env: "LIMIT_PROBE_HOLD_SECS",
        access: flag("limit-probe-hold-secs"),
        default: "60",
        help: "Adaptive mode: seconds a limit that earned 429s is not tried again, doubling each time it fails again up to 900 (1 to 900)",
        parse: |raw| parse::seconds_within(raw, 1.0, 900.0),
    }
    /// The circuit breaker in front of D-ID.
    breaker: bool {
        env: "BREAKER",
        access: flag("breaker"),
        default: "on",
        help: "Circuit breaker: after a burst of D-ID failures stop sending for a cooldown, shed below critical with 503, then probe (on or off)",
        parse: parse::boolean,
    }
    /// Failures in one window that may open it.
    breaker_min_failures: u32 {
        env: "BREAKER_MIN_FAILURES",
        access: flag("breaker-min-failures"),
        default: "10",
        help: "Breaker: failures (5xx, timeouts, cut connections) in a row that open it, and the least in a window that may (1 to 100000)",
        parse: |raw| parse::whole_within(raw, 1u32, 100_000),
    }
    /// And the share of the window's exchanges they must be.
    breaker_failure_ratio: f64 {
        env: "BREAKER_FAILURE_RATIO",
        access: flag("breaker-failure-ratio"),
        default: "0.5",
        help: "Breaker: the share of a window's D-ID exchanges that must have failed (0.05 to 1)",
        parse: |raw| parse::number_in(raw, 0.05, 1.0),
    }
    /// The counting window.
    breaker_window: Duration {
        env: "BREAKER_WINDOW_SECS",
        access: flag("breaker-window-secs"),
        default: "10",
        help: "Breaker: seconds of the window failures are counted in (1 to 600)",
        parse: |raw| parse::seconds_within(raw, 1.0, 600.0),
    }
    /// The first cooldown; each failed probe doubles it.
    breaker_cooldown: Duration {
        env: "BREAKER_COOLDOWN_SECS",
        access: flag("breaker-cooldown-secs"),
        default: "1",
        help: "Breaker: seconds it stays open before the first probe; each failed probe doubles it (0.1 to 60)",
        parse: |raw| parse::seconds_within(raw, 0.1, 60.0),
    }
    /// The longest cooldown.
    breaker_max_cooldown: Duration {
        env: "BREAKER_MAX_COOLDOWN_SECS",
        access: flag("breaker-max-cooldown-secs"),
        default: "4",
        help: "Breaker: the longest cooldown, so recovery is seen within it plus one probe (BREAKER_COOLDOWN_SECS to 300)",
        parse: |raw| parse::seconds_within(raw, 0.1, 300.0),
    }
    /// The original's default; a longer wait answers 429.
    limiter_wait_timeout: Duration {
        env: "LIMITER_WAIT_TIMEOUT_SECS",
        access: flag("limiter-wait-timeout-secs"),
        default: "60",
        help: "Seconds a request may wait for a limiter slot before 429",
        parse: |raw| parse::seconds(raw, true),
    }
    /// The Redis limiter's lease, renewed while held.
    lease_ttl: Duration {
        env: "LEASE_TTL_SECS",
        access: flag("lease-ttl-secs"),
        default: "15",
        help: "Seconds of a Redis slot lease",
        parse: |raw| parse::seconds(raw, false),
    }
    /// What the Redis limiter grants while Redis is unreachable.
    failover_policy: FailoverPolicy {
        env: "FAILOVER_POLICY",
        access: flag("failover-policy"),
        default: "share",
        help: "What an instance grants while Redis is down: share, closed (answer 503) or full",
        parse: |raw| raw.parse::<FailoverPolicy>(),
    }
    /// `None`: derived from the live instances (`MAX_CONCURRENT_REQUESTS / N`, at least 1).
    failover_local_share: Option<u32> {
        env: "FAILOVER_LOCAL_SHARE",
        access: flag("failover-local-share"),
        default: unset,
        help: "Slots one instance grants alone while Redis is down (share); unset: limit / live instances",
        parse: |raw| parse::whole(raw, 1u32),
    }
    /// A dead instance's slots are back within this long of its death.
    instance_ttl: Duration {
        env: "INSTANCE_TTL_SECS",
        access: flag("instance-ttl-secs"),
        default: "2",
        help: "Seconds an instance's Redis record lives without a heartbeat (at least 0.1)",
        parse: parse::instance_ttl,
    }
    /// The longest pause between two polls (they start faster and back off).
    poll_interval: Duration {
        env: "POLL_INTERVAL_SECS",
        access: flag("poll-interval-secs"),
        default: "5",
        help: "Seconds between status polls of a synchronous generate",
        parse: |raw| parse::seconds(raw, false),
    }
    /// Then the answer is 504.
    max_wait: Duration {
        env: "MAX_WAIT_SECS",
        access: flag("max-wait-secs"),
        default: "600",
        help: "Longest a synchronous generate waits, in seconds",
        parse: |raw| parse::seconds(raw, false),
    }
    /// When set, API routes need `Authorization: Bearer <token>`.
    http_api_token: Option<SecretString> {
        env: "HTTP_API_TOKEN",
        access: secret,
        default: unset,
        help: "bearer token the API routes require; unset: no authentication",
        parse: parse::secret,
    }
    /// Its tenants' `[[tenants]]` tables: name, `token_sha256`, weight, `max_concurrent`,
    /// `max_priority`, `admin`, `budget` (see [`crate::tenants`]). `SIGHUP` reads it again.
    tenants_file: Option<crate::tenants::TenantsFile> {
        env: "TENANTS_FILE",
        access: flag("tenants-file"),
        default: unset,
        help: "TOML file of tenants (name, token_sha256, weight, max_concurrent, max_priority, admin, budget), read again on SIGHUP; unset: one tenant",
        parse: crate::tenants::TenantsFile::load,
    }
    /// `text` and `pretty` are read as `human`.
    log_format: LogFormat {
        env: "LOG_FORMAT",
        access: flag("log-format"),
        default: "human",
        help: "Log format: human or json",
        parse: parse::log_format,
    }
    /// Then what is still running is cut off with 503 `shutting_down`.
    shutdown_grace: Duration {
        env: "SHUTDOWN_GRACE_SECS",
        access: flag("shutdown-grace-secs"),
        default: "30",
        help: "Seconds in-flight requests get after SIGINT/SIGTERM",
        parse: |raw| parse::seconds(raw, true),
    }
    /// A client that has not sent its headers by then is disconnected.
    header_read_timeout: Duration {
        env: "HEADER_READ_TIMEOUT_SECS",
        access: flag("header-read-timeout-secs"),
        default: "10",
        help: "Seconds a client may take to send its request headers",
        parse: |raw| parse::seconds(raw, false),
    }
    /// A request body must arrive whole within this long after its headers, or the request is
    /// answered 408 and the connection closed.
    /// Sized for the largest upload (10 MiB + 64 KiB multipart overhead ≈ 84 Mbit) on a
    /// 1 Mbit/s uplink: ≈ 84 s, so 120 s leaves room for links down to ≈ 0.7 Mbit/s.
    body_read_timeout: Duration {
        env: "BODY_READ_TIMEOUT_SECS",
        access: flag("body-read-timeout-secs"),
        default: "120",
        help: "Seconds a client may take to send a whole request body",
        parse: |raw| parse::seconds(raw, false),
    }
    /// A request body that sends no byte for this long is cut the same way (408), so a stalled client cannot hold its connection for the
    /// whole `BODY_READ_TIMEOUT_SECS`.
    body_idle_timeout: Duration {
        env: "BODY_IDLE_TIMEOUT_SECS",
        access: flag("body-idle-timeout-secs"),
        default: "10",
        help: "Longest pause, in seconds, between two pieces of a request body",
        parse: |raw| parse::seconds(raw, false),
    }
    /// `/ready` fails once the limiter has been degraded (Redis down, running on its local
    /// fallback) for longer than this.
    ready_degraded_grace: Duration {
        env: "READY_DEGRADED_GRACE_SECS",
        access: flag("ready-degraded-grace-secs"),
        default: "30",
        help: "Seconds the limiter may run degraded before /ready answers 503",
        parse: |raw| parse::seconds(raw, true),
    }
    /// At least 256.
    json_body_limit: usize {
        env: "JSON_BODY_LIMIT_BYTES",
        access: flag("json-body-limit-bytes"),
        default: "65536",
        help: "Largest accepted JSON body, in bytes",
        parse: |raw| parse::whole(raw, 256usize),
    }
    /// Instances sharing a Redis and this name share one limit and one queue.
    limiter_name: String {
        env: "LIMITER_NAME",
        access: flag("limiter-name"),
        default: "d-id",
        help: "Name of the shared Redis limiter",
        parse: parse::limiter_name,
    }
    /// `auto`: Redis when `REDIS_URL` is set (jobs shared by every instance), else SQLite.
    job_store: JobStoreKind {
        env: "JOB_STORE",
        access: flag("job-store"),
        default: "auto",
        help: "Where jobs live: auto (redis with REDIS_URL, else sqlite), sqlite, redis, memory (not durable)",
        parse: parse::job_store,
    }
    /// Created with its directory at start-up; keep it on a persistent disk.
    job_store_path: PathBuf {
        env: "JOB_STORE_PATH",
        access: flag("job-store-path"),
        default: "data/talkgate-jobs.sqlite3",
        help: "File of the SQLite job store (relative to the working directory)",
        parse: parse::file,
    }
    /// `full` also survives a crash of the machine, at one fsync per write.
    job_store_sync: JobStoreSync {
        env: "JOB_STORE_SYNC",
        access: flag("job-store-sync"),
        default: "normal",
        help: "SQLite job store durability: normal (survives the process) or full (also the machine; an fsync per write)",
        parse: parse::job_store_sync,
    }
    /// `0`: four times `MAX_CONCURRENT_REQUESTS` (a worker waiting for a slot holds its job).
    job_workers: usize {
        env: "JOB_WORKERS",
        access: flag("job-workers"),
        default: "0",
        help: "Job workers per instance; 0: four times the concurrency limit",
        parse: |raw| parse::whole(raw, 0usize),
    }
    /// Beyond it `POST /jobs` answers 429 with `Retry-After`; nothing is dropped.
    job_queue_max: u64 {
        env: "JOB_QUEUE_MAX",
        access: flag("job-queue-max"),
        default: "10000",
        help: "Most jobs queued at once (all priorities); then POST /jobs answers 429",
        parse: |raw| parse::whole(raw, 1u64),
    }
    /// Where D-ID can reach this service; set, talks are created with a webhook to it.
    public_base_url: Option<String> {
        env: "PUBLIC_BASE_URL",
        access: flag("public-base-url"),
        default: unset,
        help: "The service's URL as D-ID reaches it (https); set: D-ID's webhooks replace most polls",
        parse: parse::public_base_url,
    }
    /// While a talk's webhook is expected, its job is polled only this often.
    talk_webhook_poll: Duration {
        env: "TALK_WEBHOOK_POLL_SECS",
        access: flag("talk-webhook-poll-secs"),
        default: "60",
        help: "Seconds between fallback polls of a talk whose D-ID webhook is expected",
        parse: |raw| parse::seconds(raw, false),
    }
    /// A job's `callback_url` may be `http://` (signed, but readable on the way).
    callback_allow_http: bool {
        env: "CALLBACK_ALLOW_HTTP",
        access: flag("callback-allow-http"),
        default: "false",
        help: "Accept http:// callback URLs (default: https only)",
        parse: parse::boolean,
    }
    /// Networks a `callback_url` may reach although they are internal (loopback, private…).
    callback_allowed_nets: Option<Vec<domain::IpNet>> {
        env: "CALLBACK_ALLOWED_NETS",
        access: flag("callback-allowed-nets"),
        default: unset,
        help: "Comma-separated CIDRs callbacks may reach although internal (e.g. 10.1.0.0/16); unset: none",
        parse: parse::networks,
    }
    /// Set: jobs with a `callback_url` get their outcome POSTed there, signed with it
    /// (Standard Webhooks); unset: `POST /jobs` refuses a `callback_url`.
    callback_secret: Option<SecretString> {
        env: "CALLBACK_SECRET",
        access: secret,
        default: unset,
        help: "Standard Webhooks secret (whsec_ + 24-64 bytes base64) callbacks are signed with; unset: callbacks off",
        parse: parse::webhook_secret,
    }
    /// During a rotation: callbacks carry a signature with each secret.
    callback_secret_previous: Option<SecretString> {
        env: "CALLBACK_SECRET_PREVIOUS",
        access: secret,
        default: unset,
        help: "The secret before CALLBACK_SECRET, while receivers move over: callbacks are signed with both",
        parse: parse::webhook_secret,
    }
    /// Connect to answer, per attempt.
    callback_timeout: Duration {
        env: "CALLBACK_TIMEOUT_SECS",
        access: flag("callback-timeout-secs"),
        default: "15",
        help: "Seconds one callback attempt may take before it counts as failed",
        parse: |raw| parse::seconds(raw, false),
    }
    /// Doubling after each failed attempt, at most 2 h apart.
    callback_first_retry: Duration {
        env: "CALLBACK_FIRST_RETRY_SECS",
        access: flag("callback-first-retry-secs"),
        default: "5",
        help: "Seconds before the second attempt of a failed callback (doubling, at most 2 h)",
        parse: |raw| parse::seconds(raw, false),
    }
    /// After it, a callback that never got a 2xx is given up (`failed`).
    callback_horizon: Duration {
        env: "CALLBACK_HORIZON_SECS",
        access: flag("callback-horizon-secs"),
        default: "86400",
        help: "Seconds after a job ends that its callback is retried",
        parse: |raw| parse::seconds(raw, false),
    }
    /// One slow receiver holds at most this many attempts.
    callback_per_endpoint: usize {
        env: "CALLBACK_PER_ENDPOINT",
        access: flag("callback-per-endpoint"),
        default: "4",
        help: "Callback attempts to one endpoint (scheme, host, port) at once",
        parse: |raw| parse::whole(raw, 1usize),
    }
    /// Per instance.
    callback_workers: usize {
        env: "CALLBACK_WORKERS",
        access: flag("callback-workers"),
        default: "8",
        help: "Callback attempts under way at once per instance",
        parse: |raw| parse::whole(raw, 1usize),
    }
    /// Their idempotency keys are kept as long.
    job_retention: Duration {
        env: "JOB_RETENTION_SECS",
        access: flag("job-retention-secs"),
        default: "604800",
        help: "Seconds finished jobs (and their idempotency keys) are kept",
        parse: |raw| parse::seconds(raw, false),
    }
    /// What a talk whose audio URL the service did not upload (so whose length it does not
    /// know) is taken to last when its tenant's budget is checked; settled at the real cost.
    budget_unknown_audio_secs: f64 {
        env: "BUDGET_UNKNOWN_AUDIO_SECS",
        access: flag("budget-unknown-audio-secs"),
        default: "60",
        help: "Seconds an audio of unknown length is estimated to last, for credit budgets (1 to 3600)",
        parse: |raw| parse::seconds(raw, false).and_then(|d| if d > Duration::from_secs(3600) || d < Duration::from_secs(1) { Err(format!("{raw:?} is not from 1 to 3600")) } else { Ok(d.as_secs_f64()) }),
    }
    /// `GET /credits` of the D-ID account, for `/stats` and `/metrics`; `0`: never.
    credits_check: Duration {
        env: "CREDITS_CHECK_SECS",
        access: flag("credits-check-secs"),
        default: "300",
        help: "Seconds between reads of the D-ID account's credits (GET /credits, beside the budgets); 0: never (at least 10 otherwise)",
        parse: |raw| parse::seconds(raw, true).and_then(|d| if !d.is_zero() && d < Duration::from_secs(10) { Err(format!("{raw:?} is below the 10 s minimum")) } else { Ok(d) }),
    }
    /// After a 429, D-ID calls are spaced by a rate learned per instance (down on a 429, up
    /// while answers come without one, held for a `Retry-After`), until a quiet period.
    /// `auto`: on with a fixed limit, off with an adaptive one (whose limit already learns
    /// from the same 429s: two controllers on one signal fight).
    pacing: Pacing {
        env: "PACING",
        access: flag("pacing"),
        default: "auto",
        help: "Pace D-ID calls by the rate learned from its 429s: on, off, or auto (on with LIMIT_MODE=fixed, off with adaptive)",
        parse: parse::pacing,
    }
    /// The pacer never goes below it, however many 429s come.
    pacing_min_rps: f64 {
        env: "PACING_MIN_RPS",
        access: flag("pacing-min-rps"),
        default: "1",
        help: "Lowest rate the pacer slows D-ID calls to, requests per second (0.01 to 10000)",
        parse: |raw| parse::number_in(raw, 0.01, 10_000.0),
    }
    /// Checked against `PACING_MIN_RPS`.
    pacing_max_rps: f64 {
        env: "PACING_MAX_RPS",
        access: flag("pacing-max-rps"),
        default: "1000",
        help: "Highest rate paced D-ID calls go at, requests per second (PACING_MIN_RPS to 10000)",
        parse: |raw| parse::number_in(raw, 0.01, 10_000.0),
    }
    /// The additive increase.
    pacing_increase_rps: f64 {
        env: "PACING_INCREASE_RPS",
        access: flag("pacing-increase-rps"),
        default: "1",
        help: "Requests per second that each second of answers without a 429 adds to the paced rate (0 to 1000)",
        parse: |raw| parse::number_in(raw, 0.0, 1_000.0),
    }
    /// The multiplicative decrease.
    pacing_decrease: f64 {
        env: "PACING_DECREASE",
        access: flag("pacing-decrease"),
        default: "0.8",
        help: "Factor a 429 multiplies the paced rate by (above 0, below 1)",
        parse: parse::fraction,
    }
    /// Then calls go at once again, as before the first 429.
    pacing_quiet: Duration {
        env: "PACING_QUIET_SECS",
        access: flag("pacing-quiet-secs"),
        default: "30",
        help: "Seconds without a 429 after which D-ID calls are no longer paced (1 to 3600)",
        parse: |raw| parse::seconds(raw, false).and_then(|d| if d < Duration::from_secs(1) || d > Duration::from_secs(3600) { Err(format!("{raw:?} is not from 1 to 3600")) } else { Ok(d) }),
    }
    /// Answer an upload of bytes the same tenant uploaded before with the stored URL.
    upload_cache: bool {
        env: "UPLOAD_CACHE",
        access: flag("upload-cache"),
        default: "on",
        help: "Answer an upload of the same bytes by the same tenant from the job store's cache, without a D-ID call (on or off)",
        parse: parse::boolean,
    }
    /// D-ID keeps uploads 24–48 h: entries stop being served after this.
    upload_cache_ttl: Duration {
        env: "UPLOAD_CACHE_TTL_SECS",
        access: flag("upload-cache-ttl-secs"),
        default: "86400",
        help: "Seconds a cached upload's URL is served (1 to 172800; D-ID keeps uploads 24-48 h)",
        parse: |raw| parse::seconds(raw, false).and_then(|d| if d < Duration::from_secs(1) || d > Duration::from_secs(172_800) { Err(format!("{raw:?} is not from 1 to 172800")) } else { Ok(d) }),
    }
    /// The bound of the cache (all instances together): the entries that expire first go.
    upload_cache_max_entries: usize {
        env: "UPLOAD_CACHE_MAX_ENTRIES",
        access: flag("upload-cache-max-entries"),
        default: "10000",
        help: "Most uploads the cache keeps (1 to 1000000)",
        parse: |raw| parse::whole(raw, 1usize).and_then(|n| if n > 1_000_000 { Err(format!("{raw:?} is over 1000000")) } else { Ok(n) }),
    }
    /// A dead worker's job is taken over this long after its last renewal.
    job_lease: Duration {
        env: "JOB_LEASE_SECS",
        access: flag("job-lease-secs"),
        default: "30",
        help: "Seconds a worker's claim on a job lasts without renewal (at least 1)",
        parse: |raw| parse::seconds(raw, false).and_then(|d| if d < Duration::from_secs(1) { Err(format!("{raw:?} is below the 1 s minimum")) } else { Ok(d) }),
    }
}

/// How durable a write of the SQLite job store is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JobStoreSync {
    /// Survives the process (SIGKILL, OOM); a machine crash may lose the last writes.
    #[default]
    Normal,
    /// Survives a machine crash too: every write is fsynced.
    Full,
}

/// Whether D-ID calls are paced by a learned rate (`PACING`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pacing {
    /// On with `LIMIT_MODE=fixed`, off with `adaptive`.
    #[default]
    Auto,
    /// Always.
    On,
    /// Never.
    Off,
}

/// How the concurrency limit is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LimitMode {
    /// `MAX_CONCURRENT_REQUESTS` (or `PUT /limit`), as given.
    #[default]
    Fixed,
    /// Learned from D-ID's answers between `LIMIT_MIN` and `LIMIT_MAX`, one limit for the
    /// fleet.
    Adaptive,
}

/// Where jobs are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JobStoreKind {
    /// Redis when `REDIS_URL` is set, else SQLite.
    #[default]
    Auto,
    /// The SQLite file at `JOB_STORE_PATH`.
    Sqlite,
    /// The Redis of `REDIS_URL` (needed).
    Redis,
    /// In memory: lost at exit (tests, throw-away setups).
    Memory,
}

/// One variable that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The variable's name.
    pub var: &'static str,
    /// What is wrong with it (never the value of a secret).
    pub message: String,
}

/// Every problem found in the configuration, not just the first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {}", .problems.iter().map(|p| format!("{}: {}", p.var, p.message)).collect::<Vec<_>>().join("; "))]
pub struct ConfigError {
    /// The problems, in variable order.
    pub problems: Vec<ConfigProblem>,
}

impl ConfigError {
    /// A setting with a default ended up without a value: a bug in the declarations, which
    /// the tests rule out; reported rather than panicking.
    fn internal(var: &'static str) -> ConfigError {
        ConfigError {
            problems: vec![ConfigProblem {
                var,
                message: "no value and no usable default".to_owned(),
            }],
        }
    }
}

/// Collects problems while the fields are parsed.
struct Reader<'a, S: Source + ?Sized> {
    source: &'a S,
    problems: Vec<ConfigProblem>,
}

impl<S: Source + ?Sized> Reader<'_, S> {
    /// The trimmed value; empty counts as unset (as `VAR=` in a compose file means "no value").
    fn raw(&self, var: &str) -> Option<String> {
        self.source
            .get(var)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    /// The rules between settings, recorded with the others.
    fn cross_checks(&mut self) {
        if let (Some(file), Some(token)) = (self.raw("TENANTS_FILE"), self.raw("HTTP_API_TOKEN"))
            && let Ok(file) = crate::tenants::TenantsFile::load(&file)
            && !token.trim().is_empty()
            && file.has_token(&SecretString::from(token.trim().to_owned()))
        {
            self.problems.push(ConfigProblem {
                var: "TENANTS_FILE",
                message: "a tenant has HTTP_API_TOKEN's token (HTTP_API_TOKEN is a tenant of its own; give each caller its own token)".to_owned(),
            });
        }
        if let (Some(min), Some(max)) = (
            self.number_or_default("LIMIT_MIN"),
            self.number_or_default("LIMIT_MAX"),
        ) && max < min
        {
            self.problems.push(ConfigProblem {
                var: "LIMIT_MAX",
                message: format!("{max} is below LIMIT_MIN ({min})"),
            });
        }
        if let (Some(cooldown), Some(max_cooldown)) = (
            self.number_or_default("BREAKER_COOLDOWN_SECS"),
            self.number_or_default("BREAKER_MAX_COOLDOWN_SECS"),
        ) && max_cooldown < cooldown
        {
            self.problems.push(ConfigProblem {
                var: "BREAKER_MAX_COOLDOWN_SECS",
                message: format!("{max_cooldown} is below BREAKER_COOLDOWN_SECS ({cooldown})"),
            });
        }
        if let (Some(min), Some(max)) = (
            self.number_or_default("PACING_MIN_RPS"),
            self.number_or_default("PACING_MAX_RPS"),
        ) && max < min
        {
            self.problems.push(ConfigProblem {
                var: "PACING_MAX_RPS",
                message: format!("{max} is below PACING_MIN_RPS ({min})"),
            });
        }
        if self.raw("CALLBACK_SECRET_PREVIOUS").is_some() && self.raw("CALLBACK_SECRET").is_none() {
            self.problems.push(ConfigProblem {
                var: "CALLBACK_SECRET_PREVIOUS",
                message: "is set without CALLBACK_SECRET (during a rotation both are set: the new secret and the one before)".to_owned(),
            });
        }
    }

    /// The number `var` is set to, else its declared default; `None` when that does not
    /// parse (the variable's own check reports it).
    fn number_or_default(&self, var: &str) -> Option<f64> {
        let raw = self.raw(var).or_else(|| {
            SETTINGS
                .iter()
                .find(|s| s.env == var)
                .and_then(|s| s.default)
                .map(str::to_owned)
        })?;
        raw.parse::<f64>().ok().filter(|v| v.is_finite())
    }

    /// The setting's value (from its variable, else its alias, else its default), or `None`
    /// when it is unset without a default or is bad; a bad value is recorded under the name
    /// it was read from.
    fn value<T>(
        &mut self,
        setting: &Setting,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<T> {
        let given = std::iter::once(setting.env)
            .chain(setting.alias)
            .find_map(|var| self.raw(var).map(|raw| (var, raw)));
        let (var, raw, default) = match given {
            Some((var, raw)) => (var, raw, false),
            None => (setting.env, setting.default?.to_owned(), true),
        };
        match parse(&raw) {
            Ok(v) => Some(v),
            Err(message) => {
                let message = if default {
                    format!("the built-in default is invalid: {message}")
                } else {
                    message
                };
                self.problems.push(ConfigProblem { var, message });
                None
            }
        }
    }
}

impl Default for Config {
    /// The configuration of an empty environment.
    fn default() -> Self {
        let empty: HashMap<String, String> = HashMap::new();
        // An empty source has no bad variable and the defaults parse (tested), so this
        // cannot fail.
        Config::from_source(&empty).unwrap_or_else(|_| unreachable!("defaults are valid"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    use secrecy::ExposeSecret;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_source(&map)
    }

    #[test]
    fn an_empty_environment_gives_the_documented_defaults() {
        let c = config(&[]).unwrap();
        assert_eq!(c.bind_addr.to_string(), "127.0.0.1:55433");
        assert!(c.did_api_key.is_none());
        assert_eq!(c.did_base_url, "https://api.d-id.com");
        assert!(c.redis_url.is_none());
        assert_eq!(c.max_concurrent, 10);
        assert_eq!(c.limiter_wait_timeout, Duration::from_secs(60));
        assert_eq!(c.poll_interval, Duration::from_secs(5));
        assert_eq!(c.max_wait, Duration::from_secs(600));
        assert!(c.http_api_token.is_none());
        assert_eq!(c.log_format, LogFormat::Human);
        assert_eq!(c.json_body_limit, 65536);
    }

    #[test]
    fn the_upload_cache_is_on_for_a_day_and_bounded_and_one_setting_turns_it_off() {
        let c = config(&[]).unwrap();
        assert!(c.upload_cache);
        assert_eq!(c.upload_cache_ttl, Duration::from_secs(86_400));
        assert_eq!(c.upload_cache_max_entries, 10_000);
        assert!(!config(&[("UPLOAD_CACHE", "off")]).unwrap().upload_cache);
        let c = config(&[
            ("UPLOAD_CACHE_TTL_SECS", "1"),
            ("UPLOAD_CACHE_MAX_ENTRIES", "1000000"),
        ])
        .unwrap();
        assert_eq!(c.upload_cache_ttl, Duration::from_secs(1));
        assert_eq!(c.upload_cache_max_entries, 1_000_000);
        assert_eq!(
            config(&[("UPLOAD_CACHE_TTL_SECS", "172800")])
                .unwrap()
                .upload_cache_ttl,
            Duration::from_secs(172_800)
        );
        let err = config(&[
            ("UPLOAD_CACHE", "maybe"),
            ("UPLOAD_CACHE_TTL_SECS", "172801"),
            ("UPLOAD_CACHE_MAX_ENTRIES", "0"),
        ])
        .unwrap_err();
        let vars: Vec<_> = err.problems.iter().map(|p| p.var).collect();
        assert_eq!(
            vars,
            [
                "UPLOAD_CACHE",
                "UPLOAD_CACHE_TTL_SECS",
                "UPLOAD_CACHE_MAX_ENTRIES"
            ],
            "{err}"
        );
        for bad in ["0", "0.5", "-1", "1e9"] {
            assert!(
                config(&[("UPLOAD_CACHE_TTL_SECS", bad)]).is_err(),
                "TTL {bad}"
            );
        }
        assert!(config(&[("UPLOAD_CACHE_MAX_ENTRIES", "1000001")]).is_err());
    }

    #[test]
    fn pacing_is_auto_by_default_bounded_and_one_setting_turns_it_off() {
        let c = config(&[]).unwrap();
        assert_eq!(c.pacing, Pacing::Auto);
        assert_eq!(
            (
                c.pacing_min_rps,
                c.pacing_max_rps,
                c.pacing_increase_rps,
                c.pacing_decrease
            ),
            (1.0, 1000.0, 1.0, 0.8)
        );
        assert_eq!(c.pacing_quiet, Duration::from_secs(30));
        assert_eq!(config(&[("PACING", "off")]).unwrap().pacing, Pacing::Off);
        assert_eq!(config(&[("PACING", "ON")]).unwrap().pacing, Pacing::On);
        assert_eq!(config(&[]).unwrap().pacing, Pacing::Auto);
        let c = config(&[
            ("PACING_MIN_RPS", "0.5"),
            ("PACING_MAX_RPS", "20"),
            ("PACING_INCREASE_RPS", "0"),
            ("PACING_DECREASE", "0.5"),
            ("PACING_QUIET_SECS", "3600"),
        ])
        .unwrap();
        assert_eq!(
            (
                c.pacing_min_rps,
                c.pacing_max_rps,
                c.pacing_increase_rps,
                c.pacing_decrease
            ),
            (0.5, 20.0, 0.0, 0.5)
        );
        let err = config(&[
            ("PACING", "sometimes"),
            ("PACING_MIN_RPS", "0"),
            ("PACING_MAX_RPS", "1e9"),
            ("PACING_INCREASE_RPS", "-1"),
            ("PACING_DECREASE", "1"),
            ("PACING_QUIET_SECS", "0.5"),
        ])
        .unwrap_err();
        let vars: Vec<_> = err.problems.iter().map(|p| p.var).collect();
        assert_eq!(
            vars,
            [
                "PACING",
                "PACING_MIN_RPS",
                "PACING_MAX_RPS",
                "PACING_INCREASE_RPS",
                "PACING_DECREASE",
                "PACING_QUIET_SECS"
            ],
            "{err}"
        );
        // A ceiling below the floor, also the default one, with the other problems.
        let err = config(&[("PACING_MIN_RPS", "2000"), ("PACING_DECREASE", "x")]).unwrap_err();
        let vars: Vec<_> = err.problems.iter().map(|p| p.var).collect();
        assert_eq!(vars, ["PACING_DECREASE", "PACING_MAX_RPS"], "{err}");
        assert!(err.to_string().contains("below PACING_MIN_RPS"), "{err}");
    }

    #[test]
    fn every_bad_variable_is_reported_at_once() {
        let err = config(&[
            ("BIND_ADDR", "localhost"),
            ("MAX_CONCURRENT_REQUESTS", "0"),
            ("POLL_INTERVAL_SECS", "-1"),
            ("LOG_FORMAT", "xml"),
            ("D_ID_BASE_URL", "ftp://x"),
            ("REDIS_URL", "http://user:hunter2@x"),
        ])
        .unwrap_err();
        let vars: Vec<_> = err.problems.iter().map(|p| p.var).collect();
        assert_eq!(
            vars,
            [
                "BIND_ADDR",
                "D_ID_BASE_URL",
                "REDIS_URL",
                "MAX_CONCURRENT_REQUESTS",
                "POLL_INTERVAL_SECS",
                "LOG_FORMAT"
            ]
        );
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn failover_settings_are_parsed_and_checked() {
        let c = config(&[]).unwrap();
        assert_eq!(c.failover_policy, FailoverPolicy::Share);
        assert_eq!(c.failover_local_share, None);
        assert_eq!(c.instance_ttl, Duration::from_secs(2));
        let c = config(&[
            ("FAILOVER_POLICY", "closed"),
            ("FAILOVER_LOCAL_SHARE", "2"),
            ("INSTANCE_TTL_SECS", "0.5"),
        ])
        .unwrap();
        assert_eq!(c.failover_policy, FailoverPolicy::Closed);
        assert_eq!(c.failover_local_share, Some(2));
        assert_eq!(c.instance_ttl, Duration::from_millis(500));
        let err = config(&[
            ("FAILOVER_POLICY", "open"),
            ("FAILOVER_LOCAL_SHARE", "0"),
            ("INSTANCE_TTL_SECS", "0.05"),
        ])
        .unwrap_err();
        let vars: Vec<_> = err.problems.iter().map(|p| p.var).collect();
        assert_eq!(
            vars,
            [
                "FAILOVER_POLICY",
                "FAILOVER_LOCAL_SHARE",
                "INSTANCE_TTL_SECS"
            ]
        );
        assert!(err.to_string().contains("share, closed or full"), "{err}");
    }

    #[test]
    fn secrets_are_read_but_never_printed() {
        let c = config(&[
            ("D_ID_API_KEY", "user:s3cr3t"),
            ("HTTP_API_TOKEN", "tok-123"),
            ("REDIS_URL", "redis://:pw@127.0.0.1:6379"),
        ])
        .unwrap();
        assert_eq!(
            c.did_api_key.as_ref().unwrap().expose_secret(),
            "user:s3cr3t"
        );
        let debug = format!("{c:?}");
        for secret in ["s3cr3t", "tok-123", ":pw@"] {
            assert!(!debug.contains(secret), "{debug}");
        }
    }

    #[test]
    fn a_previous_callback_secret_needs_a_current_one_and_is_reported_with_the_rest() {
        let err = config(&[
            (
                "CALLBACK_SECRET_PREVIOUS",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            ),
            ("MAX_CONCURRENT_REQUESTS", "abc"),
        ])
        .unwrap_err();
        let vars: Vec<&str> = err.problems.iter().map(|p| p.var).collect();
        assert_eq!(
            vars,
            ["MAX_CONCURRENT_REQUESTS", "CALLBACK_SECRET_PREVIOUS"],
            "{err}"
        );
        assert!(
            !err.to_string().contains("MfKQ9r8"),
            "never the secret: {err}"
        );
        let ok = config(&[
            ("CALLBACK_SECRET", "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"),
            (
                "CALLBACK_SECRET_PREVIOUS",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            ),
        ]);
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn the_original_key_spelling_and_blank_values_are_understood() {
        let c = config(&[("DID_API_KEY", "a:b"), ("HTTP_API_TOKEN", "  ")]).unwrap();
        assert_eq!(c.did_api_key.unwrap().expose_secret(), "a:b");
        assert!(c.http_api_token.is_none(), "a blank token means no auth");
        let c = config(&[("D_ID_API_KEY", "new"), ("DID_API_KEY", "old")]).unwrap();
        assert_eq!(c.did_api_key.unwrap().expose_secret(), "new");
    }

    #[test]
    fn the_declarations_name_each_variable_and_flag_once_and_secrets_get_no_flag() {
        let envs: BTreeSet<&str> = SETTINGS
            .iter()
            .flat_map(|s| std::iter::once(s.env).chain(s.alias))
            .collect();
        let flags: Vec<&str> = SETTINGS.iter().filter_map(|s| s.flag).collect();
        assert_eq!(envs.len(), SETTINGS.len() + 1, "one alias: DID_API_KEY");
        assert_eq!(flags.iter().collect::<BTreeSet<_>>().len(), flags.len());
        for s in SETTINGS {
            assert!(!s.help.is_empty(), "{} has no help", s.env);
            assert!(
                !(s.secret && s.flag.is_some()),
                "{} is a secret flag",
                s.env
            );
            assert!(
                s.flag.is_some() || s.secret || *s == RUST_LOG,
                "{} is neither a flag nor a secret",
                s.env
            );
        }
    }
}
