//! The service's configuration: one documented struct, built from a [`Source`] of variables.
//!
//! `main` layers the command-line flags (clap, each with its `env` variable) over the process
//! environment; tests pass a `HashMap`. [`Config::from_source`] checks *every* variable and
//! reports all problems at once, so an operator fixes a bad deployment in one round trip.
//! Secrets (the D-ID key, the bearer token, a Redis URL that may carry a password) are kept
//! as [`SecretString`], whose `Debug` never shows them, and they have no command-line flag
//! (a flag would show up in `ps`).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use secrecy::SecretString;

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

/// Variable names, in one place so the docs, the flags and the parser agree.
pub mod vars {
    /// D-ID API key (`user:secret` as D-ID issues it). Secret; no flag.
    pub const D_ID_API_KEY: &str = "D_ID_API_KEY";
    /// The original service's alternative spelling, read when `D_ID_API_KEY` is unset.
    pub const DID_API_KEY: &str = "DID_API_KEY";
    /// D-ID base URL.
    pub const D_ID_BASE_URL: &str = "D_ID_BASE_URL";
    /// Redis URL; absent → in-memory limiter. Secret (may contain a password); no flag.
    pub const REDIS_URL: &str = "REDIS_URL";
    /// Limit of concurrent D-ID calls.
    pub const MAX_CONCURRENT_REQUESTS: &str = "MAX_CONCURRENT_REQUESTS";
    /// Listen address.
    pub const BIND_ADDR: &str = "BIND_ADDR";
    /// How long a request may wait for a limiter slot.
    pub const LIMITER_WAIT_TIMEOUT_SECS: &str = "LIMITER_WAIT_TIMEOUT_SECS";
    /// Lease of a Redis limiter slot.
    pub const LEASE_TTL_SECS: &str = "LEASE_TTL_SECS";
    /// Pause between two status polls of a synchronous generate.
    pub const POLL_INTERVAL_SECS: &str = "POLL_INTERVAL_SECS";
    /// Longest a synchronous generate waits for the talk to finish.
    pub const MAX_WAIT_SECS: &str = "MAX_WAIT_SECS";
    /// Bearer token for the API routes. Secret; no flag.
    pub const HTTP_API_TOKEN: &str = "HTTP_API_TOKEN";
    /// `human` or `json`.
    pub const LOG_FORMAT: &str = "LOG_FORMAT";
    /// How long shutdown waits for in-flight requests.
    pub const SHUTDOWN_GRACE_SECS: &str = "SHUTDOWN_GRACE_SECS";
    /// How long a client may take to send its request headers.
    pub const HEADER_READ_TIMEOUT_SECS: &str = "HEADER_READ_TIMEOUT_SECS";
    /// How long a client may take to send a whole request body.
    pub const BODY_READ_TIMEOUT_SECS: &str = "BODY_READ_TIMEOUT_SECS";
    /// Longest pause between two pieces of a request body.
    pub const BODY_IDLE_TIMEOUT_SECS: &str = "BODY_IDLE_TIMEOUT_SECS";
    /// How long the limiter may run degraded before `/ready` answers 503.
    pub const READY_DEGRADED_GRACE_SECS: &str = "READY_DEGRADED_GRACE_SECS";
    /// Largest accepted JSON body, in bytes.
    pub const JSON_BODY_LIMIT_BYTES: &str = "JSON_BODY_LIMIT_BYTES";
    /// Name of the shared Redis limiter (instances with the same name share one limit).
    pub const LIMITER_NAME: &str = "LIMITER_NAME";
}

/// The default D-ID endpoint.
pub const DEFAULT_BASE_URL: &str = "https://api.d-id.com";
/// The default listen address (the original service's port, loopback only).
pub const DEFAULT_BIND_ADDR: &str = "127.0.0.1:55433";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Human,
    /// One JSON object per line, with the request span's fields.
    Json,
}

/// Everything the service reads at start-up. See `crates/http-api/README-section.md` for the
/// table of variables; each field names its variable.
#[derive(Clone)]
pub struct Config {
    /// `BIND_ADDR` (default `127.0.0.1:55433`).
    pub bind_addr: SocketAddr,
    /// `D_ID_API_KEY` (or `DID_API_KEY`); `None` starts the service with D-ID routes answering 503.
    pub did_api_key: Option<SecretString>,
    /// `D_ID_BASE_URL` (default `https://api.d-id.com`).
    pub did_base_url: String,
    /// `REDIS_URL`; `None` selects the in-memory limiter.
    pub redis_url: Option<SecretString>,
    /// `MAX_CONCURRENT_REQUESTS` (default 10, at least 1).
    pub max_concurrent: u32,
    /// `LIMITER_WAIT_TIMEOUT_SECS` (default 60, the original's): longer waits answer 429.
    pub limiter_wait_timeout: Duration,
    /// `LEASE_TTL_SECS` (default 15): the Redis limiter's lease; renewed while held.
    pub lease_ttl: Duration,
    /// `POLL_INTERVAL_SECS` (default 5): pause between status polls of a synchronous generate.
    pub poll_interval: Duration,
    /// `MAX_WAIT_SECS` (default 600): longest a synchronous generate waits, then 504.
    pub max_wait: Duration,
    /// `HTTP_API_TOKEN`: when set, API routes need `Authorization: Bearer <token>`.
    pub http_api_token: Option<SecretString>,
    /// `LOG_FORMAT` (`human` default, or `json`).
    pub log_format: LogFormat,
    /// `SHUTDOWN_GRACE_SECS` (default 30): in-flight requests get this long after SIGTERM.
    pub shutdown_grace: Duration,
    /// `HEADER_READ_TIMEOUT_SECS` (default 10).
    pub header_read_timeout: Duration,
    /// `BODY_READ_TIMEOUT_SECS` (default 120): a request body must arrive whole within this
    /// long after its headers, or the request is answered 408 and the connection closed.
    /// Sized for the largest upload (10 MiB + 64 KiB multipart overhead ≈ 84 Mbit) on a
    /// 1 Mbit/s uplink: ≈ 84 s, so 120 s leaves room for links down to ≈ 0.7 Mbit/s.
    pub body_read_timeout: Duration,
    /// `BODY_IDLE_TIMEOUT_SECS` (default 10): a request body that sends no byte for this long
    /// is cut the same way (408), so a stalled client cannot hold its connection for the
    /// whole `BODY_READ_TIMEOUT_SECS`.
    pub body_idle_timeout: Duration,
    /// `READY_DEGRADED_GRACE_SECS` (default 30): `/ready` fails once the limiter has been
    /// degraded (Redis down, running on its local fallback) for longer than this.
    pub ready_degraded_grace: Duration,
    /// `JSON_BODY_LIMIT_BYTES` (default 65536).
    pub json_body_limit: usize,
    /// `LIMITER_NAME` (default `d-id`): instances sharing a Redis and this name share one
    /// limit and one queue.
    pub limiter_name: String,
}

impl fmt::Debug for Config {
    // Written out so that adding a field cannot leak a secret by accident: the secrets print
    // as `set`/`unset`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |o: &Option<SecretString>| if o.is_some() { "set" } else { "unset" };
        f.debug_struct("Config")
            .field("bind_addr", &self.bind_addr)
            .field("did_api_key", &set(&self.did_api_key))
            .field("did_base_url", &self.did_base_url)
            .field("redis_url", &set(&self.redis_url))
            .field("max_concurrent", &self.max_concurrent)
            .field("limiter_wait_timeout", &self.limiter_wait_timeout)
            .field("lease_ttl", &self.lease_ttl)
            .field("poll_interval", &self.poll_interval)
            .field("max_wait", &self.max_wait)
            .field("http_api_token", &set(&self.http_api_token))
            .field("log_format", &self.log_format)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("body_read_timeout", &self.body_read_timeout)
            .field("body_idle_timeout", &self.body_idle_timeout)
            .field("ready_degraded_grace", &self.ready_degraded_grace)
            .field("json_body_limit", &self.json_body_limit)
            .field("limiter_name", &self.limiter_name)
            .finish()
    }
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

    fn problem(&mut self, var: &'static str, message: impl Into<String>) {
        self.problems.push(ConfigProblem {
            var,
            message: message.into(),
        });
    }

    fn secret(&self, var: &'static str) -> Option<SecretString> {
        self.raw(var).map(SecretString::from)
    }

    /// Seconds as a positive decimal number (`0.5` is half a second).
    fn seconds(&mut self, var: &'static str, default: f64, allow_zero: bool) -> Duration {
        let Some(raw) = self.raw(var) else {
            return Duration::from_secs_f64(default);
        };
        match raw.parse::<f64>() {
            Ok(v) if v.is_finite() && (v > 0.0 || (allow_zero && v == 0.0)) && v < 1e9 => {
                Duration::from_secs_f64(v)
            }
            _ => {
                let what = if allow_zero {
                    "zero or more"
                } else {
                    "more than zero"
                };
                self.problem(var, format!("{raw:?} is not a number of seconds ({what})"));
                Duration::from_secs_f64(default)
            }
        }
    }

    fn integer<T: std::str::FromStr + PartialOrd + fmt::Display + Copy>(
        &mut self,
        var: &'static str,
        default: T,
        min: T,
    ) -> T {
        let Some(raw) = self.raw(var) else {
            return default;
        };
        match raw.parse::<T>() {
            Ok(v) if v >= min => v,
            _ => {
                self.problem(
                    var,
                    format!("{raw:?} is not a whole number of at least {min}"),
                );
                default
            }
        }
    }
}

impl Config {
    /// Reads and checks every variable; all problems are reported together.
    pub fn from_source<S: Source + ?Sized>(source: &S) -> Result<Config, ConfigError> {
        let mut r = Reader {
            source,
            problems: Vec::new(),
        };

        let bind_raw = r
            .raw(vars::BIND_ADDR)
            .unwrap_or_else(|| DEFAULT_BIND_ADDR.to_owned());
        let bind_addr = match bind_raw.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                r.problem(
                    vars::BIND_ADDR,
                    format!("{bind_raw:?} is not an address like 127.0.0.1:55433"),
                );
                // A placeholder; the error is returned below.
                SocketAddr::from(([127, 0, 0, 1], 55433))
            }
        };

        let did_api_key = r
            .secret(vars::D_ID_API_KEY)
            .or_else(|| r.secret(vars::DID_API_KEY));

        let did_base_url = r
            .raw(vars::D_ID_BASE_URL)
            .unwrap_or_else(|| DEFAULT_BASE_URL.to_owned());
        if !(did_base_url.starts_with("http://") || did_base_url.starts_with("https://")) {
            r.problem(
                vars::D_ID_BASE_URL,
                format!("{did_base_url:?} is not an http:// or https:// URL"),
            );
        }
        let did_base_url = did_base_url.trim_end_matches('/').to_owned();

        let redis_url = r.secret(vars::REDIS_URL);
        if let Some(url) = &r.raw(vars::REDIS_URL) {
            let known = [
                "redis://",
                "rediss://",
                "valkey://",
                "valkeys://",
                "redis+unix://",
            ];
            if !known.iter().any(|s| url.starts_with(s)) {
                // The value may carry a password, so only the scheme rule is quoted.
                r.problem(
                    vars::REDIS_URL,
                    "expected a redis:// or rediss:// URL (value not shown: it may hold a password)",
                );
            }
        }

        let max_concurrent = r.integer(vars::MAX_CONCURRENT_REQUESTS, 10u32, 1);
        let limiter_wait_timeout = r.seconds(vars::LIMITER_WAIT_TIMEOUT_SECS, 60.0, true);
        let lease_ttl = r.seconds(vars::LEASE_TTL_SECS, 15.0, false);
        let poll_interval = r.seconds(vars::POLL_INTERVAL_SECS, 5.0, false);
        let max_wait = r.seconds(vars::MAX_WAIT_SECS, 600.0, false);
        let http_api_token = r.secret(vars::HTTP_API_TOKEN);

        let log_format = match r.raw(vars::LOG_FORMAT).map(|s| s.to_ascii_lowercase()) {
            None => LogFormat::Human,
            Some(s) if s == "human" || s == "text" || s == "pretty" => LogFormat::Human,
            Some(s) if s == "json" => LogFormat::Json,
            Some(s) => {
                r.problem(vars::LOG_FORMAT, format!("{s:?} is not one of human, json"));
                LogFormat::Human
            }
        };

        let shutdown_grace = r.seconds(vars::SHUTDOWN_GRACE_SECS, 30.0, true);
        let header_read_timeout = r.seconds(vars::HEADER_READ_TIMEOUT_SECS, 10.0, false);
        let body_read_timeout = r.seconds(vars::BODY_READ_TIMEOUT_SECS, 120.0, false);
        let body_idle_timeout = r.seconds(vars::BODY_IDLE_TIMEOUT_SECS, 10.0, false);
        let ready_degraded_grace = r.seconds(vars::READY_DEGRADED_GRACE_SECS, 30.0, true);
        let json_body_limit = r.integer(vars::JSON_BODY_LIMIT_BYTES, 64 * 1024usize, 256);
        let limiter_name = r
            .raw(vars::LIMITER_NAME)
            .unwrap_or_else(|| "d-id".to_owned());
        if !limiter_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
        {
            r.problem(
                vars::LIMITER_NAME,
                format!("{limiter_name:?} may only hold A-Z, a-z, 0-9, '_', '-', '.', ':'"),
            );
        }

        if !r.problems.is_empty() {
            return Err(ConfigError {
                problems: r.problems,
            });
        }
        Ok(Config {
            bind_addr,
            did_api_key,
            did_base_url,
            redis_url,
            max_concurrent,
            limiter_wait_timeout,
            lease_ttl,
            poll_interval,
            max_wait,
            http_api_token,
            log_format,
            shutdown_grace,
            header_read_timeout,
            body_read_timeout,
            body_idle_timeout,
            ready_degraded_grace,
            json_body_limit,
            limiter_name,
        })
    }
}

impl Default for Config {
    /// The configuration of an empty environment.
    fn default() -> Self {
        let empty: HashMap<String, String> = HashMap::new();
        // An empty source has no bad variable, so this cannot fail.
        Config::from_source(&empty).unwrap_or_else(|_| unreachable!("defaults are valid"))
    }
}

/// The long help's closing text: the variables that have no flag.
const AFTER_LONG_HELP: &str = "\
Every flag can also be set by the environment variable shown with it; a flag wins over its
variable. A flag left out means \"not set\": the default shown applies.

Read from the environment only (secrets get no flag, a flag would show up in `ps`):
  D_ID_API_KEY     D-ID API key (`user:secret`); unset: D-ID routes answer 503
                   (DID_API_KEY is read when D_ID_API_KEY is unset)
  HTTP_API_TOKEN   bearer token the API routes require; unset: no authentication
  REDIS_URL        redis:// or rediss:// URL of the shared limiter; unset: in-memory limiter
  RUST_LOG         log filter, e.g. `info`, `http_api=debug,info` [default: info]";

/// Command-line flags. Each falls back to its environment variable; secrets have no flag.
///
/// Clap fills no default value: a flag that is absent (and whose variable is unset) stays
/// `None`, so [`Config::from_source`] applies the default and the help text only shows it.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "http-api",
    version,
    about = "talkgate: a D-ID gateway with a priority concurrency limiter",
    long_about = "talkgate: a D-ID gateway with a priority concurrency limiter.\n\n\
        Secrets are read from the environment only: D_ID_API_KEY, HTTP_API_TOKEN, REDIS_URL. \
        Logging is filtered by RUST_LOG.",
    after_long_help = AFTER_LONG_HELP
)]
pub struct Cli {
    /// Listen address [default: 127.0.0.1:55433].
    #[arg(long, env = "BIND_ADDR")]
    pub bind_addr: Option<String>,
    /// D-ID API base URL (default `https://api.d-id.com`).
    #[arg(
        long,
        env = "D_ID_BASE_URL",
        help = "D-ID API base URL [default: https://api.d-id.com]"
    )]
    pub did_base_url: Option<String>,
    /// Maximum concurrent D-ID calls (across all instances with Redis) [default: 10].
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS")]
    pub max_concurrent_requests: Option<String>,
    /// Seconds a request may wait for a limiter slot before 429 [default: 60].
    #[arg(long, env = "LIMITER_WAIT_TIMEOUT_SECS")]
    pub limiter_wait_timeout_secs: Option<String>,
    /// Seconds of a Redis slot lease [default: 15].
    #[arg(long, env = "LEASE_TTL_SECS")]
    pub lease_ttl_secs: Option<String>,
    /// Seconds between status polls of a synchronous generate [default: 5].
    #[arg(long, env = "POLL_INTERVAL_SECS")]
    pub poll_interval_secs: Option<String>,
    /// Longest a synchronous generate waits, in seconds [default: 600].
    #[arg(long, env = "MAX_WAIT_SECS")]
    pub max_wait_secs: Option<String>,
    /// Log format: human or json [default: human].
    #[arg(long, env = "LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Seconds in-flight requests get after SIGINT/SIGTERM [default: 30].
    #[arg(long, env = "SHUTDOWN_GRACE_SECS")]
    pub shutdown_grace_secs: Option<String>,
    /// Seconds a client may take to send its request headers [default: 10].
    #[arg(long, env = "HEADER_READ_TIMEOUT_SECS")]
    pub header_read_timeout_secs: Option<String>,
    /// Seconds a client may take to send a whole request body [default: 120].
    #[arg(long, env = "BODY_READ_TIMEOUT_SECS")]
    pub body_read_timeout_secs: Option<String>,
    /// Longest pause, in seconds, between two pieces of a request body [default: 10].
    #[arg(long, env = "BODY_IDLE_TIMEOUT_SECS")]
    pub body_idle_timeout_secs: Option<String>,
    /// Seconds the limiter may run degraded before /ready answers 503 [default: 30].
    #[arg(long, env = "READY_DEGRADED_GRACE_SECS")]
    pub ready_degraded_grace_secs: Option<String>,
    /// Largest accepted JSON body, in bytes [default: 65536].
    #[arg(long, env = "JSON_BODY_LIMIT_BYTES")]
    pub json_body_limit_bytes: Option<String>,
    /// Name of the shared Redis limiter [default: d-id].
    #[arg(long, env = "LIMITER_NAME")]
    pub limiter_name: Option<String>,
    /// The variables whose value came from a command-line flag rather than the environment,
    /// so that a problem is reported under the name the user typed.
    #[arg(skip)]
    pub from_flags: Vec<String>,
}

impl Cli {
    /// Parses the process's arguments (exiting with clap's message and code 2 on a usage
    /// error, or printing `--help`/`--version`) and remembers which values were typed as flags.
    pub fn parse_args() -> Cli {
        Self::parse_from_args(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// [`parse_args`](Self::parse_args) over given arguments, for tests.
    pub fn parse_from_args<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::{CommandFactory, FromArgMatches, parser::ValueSource};
        let matches = Cli::command().try_get_matches_from(args)?;
        let mut cli = Cli::from_arg_matches(&matches)?;
        cli.from_flags = Cli::command()
            .get_arguments()
            .filter(|a| matches.value_source(a.get_id().as_str()) == Some(ValueSource::CommandLine))
            .filter_map(|a| a.get_env().and_then(|v| v.to_str()))
            .map(str::to_owned)
            .collect();
        Ok(cli)
    }

    /// How a problem's variable is shown to the user: `--flag` when its value came from the
    /// command line, else the variable's name.
    pub fn source_name(&self, var: &str) -> String {
        use clap::CommandFactory;
        if !self.from_flags.iter().any(|v| v == var) {
            return var.to_owned();
        }
        Cli::command()
            .get_arguments()
            .find(|a| a.get_env().and_then(|v| v.to_str()) == Some(var))
            .and_then(|a| a.get_long())
            .map_or_else(|| var.to_owned(), |long| format!("--{long}"))
    }

    /// `err` in one line, each problem under the name the user gave it (see
    /// [`source_name`](Self::source_name)).
    pub fn describe(&self, err: &ConfigError) -> String {
        let problems: Vec<String> = err
            .problems
            .iter()
            .map(|p| format!("{}: {}", self.source_name(p.var), p.message))
            .collect();
        format!("invalid configuration: {}", problems.join("; "))
    }
}

/// The flags (which clap already filled from their variables) over a fallback source for the
/// variables that have no flag.
#[derive(Debug)]
pub struct Layered<'a, S: Source + ?Sized> {
    cli: &'a Cli,
    fallback: &'a S,
}

impl Cli {
    /// A [`Source`] answering from the flags first, then from `fallback` (the environment).
    pub fn layered<'a, S: Source + ?Sized>(&'a self, fallback: &'a S) -> Layered<'a, S> {
        Layered {
            cli: self,
            fallback,
        }
    }
}

impl<S: Source + ?Sized> Source for Layered<'_, S> {
    fn get(&self, name: &str) -> Option<String> {
        let c = self.cli;
        let flag = match name {
            vars::BIND_ADDR => &c.bind_addr,
            vars::D_ID_BASE_URL => &c.did_base_url,
            vars::MAX_CONCURRENT_REQUESTS => &c.max_concurrent_requests,
            vars::LIMITER_WAIT_TIMEOUT_SECS => &c.limiter_wait_timeout_secs,
            vars::LEASE_TTL_SECS => &c.lease_ttl_secs,
            vars::POLL_INTERVAL_SECS => &c.poll_interval_secs,
            vars::MAX_WAIT_SECS => &c.max_wait_secs,
            vars::LOG_FORMAT => &c.log_format,
            vars::SHUTDOWN_GRACE_SECS => &c.shutdown_grace_secs,
            vars::HEADER_READ_TIMEOUT_SECS => &c.header_read_timeout_secs,
            vars::BODY_READ_TIMEOUT_SECS => &c.body_read_timeout_secs,
            vars::BODY_IDLE_TIMEOUT_SECS => &c.body_idle_timeout_secs,
            vars::READY_DEGRADED_GRACE_SECS => &c.ready_degraded_grace_secs,
            vars::JSON_BODY_LIMIT_BYTES => &c.json_body_limit_bytes,
            vars::LIMITER_NAME => &c.limiter_name,
            _ => &None,
        };
        flag.clone().or_else(|| self.fallback.get(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
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
    fn the_original_key_spelling_and_blank_values_are_understood() {
        let c = config(&[("DID_API_KEY", "a:b"), ("HTTP_API_TOKEN", "  ")]).unwrap();
        assert_eq!(c.did_api_key.unwrap().expose_secret(), "a:b");
        assert!(c.http_api_token.is_none(), "a blank token means no auth");
        let c = config(&[("D_ID_API_KEY", "new"), ("DID_API_KEY", "old")]).unwrap();
        assert_eq!(c.did_api_key.unwrap().expose_secret(), "new");
    }

    #[test]
    fn flags_win_over_the_environment() {
        let cli = Cli::try_parse_from(["http-api", "--bind-addr", "127.0.0.1:0"]).unwrap();
        let env: HashMap<&str, &str> =
            HashMap::from([("BIND_ADDR", "127.0.0.1:1"), ("D_ID_API_KEY", "k:v")]);
        let c = Config::from_source(&cli.layered(&env)).unwrap();
        assert_eq!(c.bind_addr.port(), 0);
        assert!(c.did_api_key.is_some());
        Cli::command().debug_assert();
    }

    #[test]
    fn an_absent_flag_stays_unset_and_problems_name_what_the_user_typed() {
        let cli = Cli::parse_from_args(["http-api", "--did-base-url", "ftp://x"]).unwrap();
        assert!(cli.bind_addr.is_none(), "clap must not fill defaults");
        let env: HashMap<&str, &str> = HashMap::from([("MAX_CONCURRENT_REQUESTS", "0")]);
        let err = Config::from_source(&cli.layered(&env)).unwrap_err();
        let text = cli.describe(&err);
        assert!(text.contains("--did-base-url: "), "{text}");
        assert!(text.contains("MAX_CONCURRENT_REQUESTS: "), "{text}");
    }
}
