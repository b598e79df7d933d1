//! [`RedisLimiterConfig`]: everything a [`RedisLimiter`](crate::RedisLimiter) needs to know,
//! as one plain struct with documented defaults, and its validation; [`RedisTlsConfig`], the
//! TLS options of a `rediss://` URL.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use fred::rustls::pki_types::ServerName;

use crate::error::RedisLimiterError;

/// The longest pause between two reconnection attempts (50 ms doubling to this; fred adds
/// up to 100 ms of jitter): once Redis is back, a limiter is connected again within it.
pub const RECONNECT_MAX: Duration = Duration::from_millis(500);

/// fred's default reconnection jitter (`DEFAULT_JITTER_MS`).
const RECONNECT_JITTER: Duration = Duration::from_millis(100);

/// How a [`RedisLimiter`](crate::RedisLimiter) connects and how long its leases live.
///
/// Build it with [`RedisLimiterConfig::new`] and change fields as needed; every field has a
/// default suited to a D-ID gateway (slots held for seconds to minutes). `Debug` hides the
/// password in [`url`](Self::url).
#[derive(Clone, PartialEq, Eq)]
pub struct RedisLimiterConfig {
    /// The Redis URL, as fred's `Config::from_url` accepts it
    /// (`redis://[user:password@]host:port[/db]`, `redis-cluster://…`, `valkey://…`).
    /// `rediss://` (and `valkeys://`) connect over TLS, configured by [`tls`](Self::tls).
    pub url: String,
    /// The limiter's name. Every process that uses the same name on the same Redis shares one
    /// limit and one queue. All keys live under the hash tag `{talkgate:<name>}`.
    pub name: String,
    /// The global limit used when Redis holds none yet (the first process to run a script
    /// stores it; [`set_limit`](ports::ConcurrencyLimiter::set_limit) changes it for all).
    /// Default 10.
    pub max_concurrent: u32,
    /// How long a holder's lease lives without renewal. Permits renew it every
    /// `lease_ttl / 3`, so a holder whose process died frees its slot within
    /// `lease_ttl + lease_ttl / 3`. Default 15 s.
    pub lease_ttl: Duration,
    /// How long a queued ticket lives without refresh. Waiters refresh theirs at least every
    /// `waiter_ttl / 3`, so a dead process's waiter blocks the queue head for at most this
    /// long. Default 6 s.
    pub waiter_ttl: Duration,
    /// How long a grant lives until its owner confirms it. Redis grants a slot to the queue
    /// head the moment one frees; the waiting process is woken at once and confirms it with
    /// one round trip (which turns it into a full lease). A grant nobody confirms (the
    /// waiter's process died, or the ticket was re-created by a stale command after its
    /// owner gave up) frees the slot after this long. Waiters re-check at least every
    /// `grant_ttl / 2`, so a lost wake-up message never costs a live waiter its grant.
    /// Default 1 s.
    pub grant_ttl: Duration,
    /// The bound on every Redis command (fred's `default_command_timeout`, and our own
    /// `tokio::time::timeout` around each call). A call that takes longer switches the
    /// limiter to its in-memory fallback. Default 500 ms.
    pub op_timeout: Duration,
    /// The bound on opening a TCP connection to Redis. Default 1 s.
    pub connect_timeout: Duration,
    /// What this process does while Redis is unreachable: grant a share of the limit
    /// ([`FailoverPolicy::Share`], the default), refuse ([`FailoverPolicy::Closed`]) or grant
    /// the whole limit ([`FailoverPolicy::Full`], for a single instance).
    pub failover_policy: FailoverPolicy,
    /// Under [`FailoverPolicy::Share`], the share this process may grant on its own while
    /// Redis is unreachable. `None` (the default) derives it from the live instances last
    /// seen in Redis: `max(1, floor(limit / instances))`, so N degraded instances together
    /// grant at most `max(limit, N)`; an instance that never reached Redis assumes the
    /// smallest share, 1. Ignored by the other policies.
    pub local_share: Option<u32>,
    /// How long this instance's record in Redis lives without a heartbeat (sent every
    /// `instance_ttl / 4`). An instance whose record expired is dead: its holders are
    /// reclaimed at once and its waiters are never granted a slot. Also the share's peer
    /// count comes from these records. Default 2 s.
    pub instance_ttl: Duration,
    /// The longest a waiter sleeps between two checks when no wake-up message arrives (a
    /// lost pub/sub message costs at most this, jittered to 50–100 %). It is also capped at
    /// `waiter_ttl / 3`. Default 1 s.
    pub safety_poll: Duration,
    /// How often a degraded limiter probes Redis to switch back (jittered). Default 500 ms.
    pub probe_interval: Duration,
    /// TLS options; only allowed with a TLS URL (`rediss://`). Default: verify the server
    /// against the system's root certificates and the URL's host name, no client certificate.
    pub tls: RedisTlsConfig,
}

/// What a [`RedisLimiter`](crate::RedisLimiter) grants while Redis is unreachable.
///
/// With N instances degraded at once and a global limit C, the permits alive at once are at
/// most: `share` → `max(C, N)` (with the derived share; N × `local_share` when it is set),
/// `closed` → 0 new ones, `full` → N × C.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FailoverPolicy {
    /// Grant a share of the limit from the in-memory fallback (see
    /// [`RedisLimiterConfig::local_share`]).
    #[default]
    Share,
    /// Grant nothing: every acquire fails with [`ports::LimiterError::Unavailable`] while
    /// degraded (the service answers 503). Work already admitted finishes.
    Closed,
    /// Grant the whole limit from the fallback, as if this instance were alone. Only right
    /// for a single instance: N degraded instances admit up to N × the limit.
    Full,
}

impl FailoverPolicy {
    /// The lowercase name, as the service's `FAILOVER_POLICY` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            FailoverPolicy::Share => "share",
            FailoverPolicy::Closed => "closed",
            FailoverPolicy::Full => "full",
        }
    }
}

impl fmt::Display for FailoverPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for FailoverPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "share" => Ok(FailoverPolicy::Share),
            "closed" => Ok(FailoverPolicy::Closed),
            "full" => Ok(FailoverPolicy::Full),
            _ => Err(format!(
                "unknown failover policy {s:?}: expected share, closed or full"
            )),
        }
    }
}

/// How a `rediss://` connection is secured. Every field is off by default, which verifies the
/// server's certificate against the system's root certificates (`/etc/ssl/certs`) and the
/// host name in the URL, and sends no client certificate.
///
/// Every file is read once, when the limiter is built: a file that cannot be read or parsed,
/// or a key that does not match its certificate, fails
/// [`RedisLimiter::connect`](crate::RedisLimiter::connect) with a
/// [`RedisLimiterError::TlsFile`] naming the file, so a TLS setup that can never work stops
/// the start instead of running degraded. A handshake that fails later (a certificate from
/// another CA, for another name) is a run-time failure: the limiter serves from its fallback
/// and reports the reason `tls`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTlsConfig {
    /// A PEM file with the CA certificate(s) to trust *instead of* the system's roots (a
    /// private CA, a self-signed server certificate).
    pub ca_file: Option<PathBuf>,
    /// A PEM file with the client certificate (chain) for mutual TLS (Redis
    /// `tls-auth-clients yes`). Needs [`key_file`](Self::key_file).
    pub cert_file: Option<PathBuf>,
    /// A PEM file with the private key (PKCS#8, PKCS#1 or SEC1) of
    /// [`cert_file`](Self::cert_file).
    pub key_file: Option<PathBuf>,
    /// The name the server's certificate must carry, when it is not the host of the URL
    /// (e.g. the URL names an IP address or a tunnel). Default: the URL's host. Applies to
    /// the host(s) named in the URL.
    pub server_name: Option<String>,
    /// **Dangerous**: accept any server certificate, from any CA, for any name. The traffic
    /// is still encrypted but anyone on the path can impersonate Redis. Only for a throwaway
    /// self-signed setup; excludes [`ca_file`](Self::ca_file). Default false.
    pub insecure_skip_verify: bool,
}

impl RedisTlsConfig {
    /// The names of the options that are set, for error messages.
    fn set_options(&self) -> Vec<&'static str> {
        [
            ("ca_file", self.ca_file.is_some()),
            ("cert_file", self.cert_file.is_some()),
            ("key_file", self.key_file.is_some()),
            ("server_name", self.server_name.is_some()),
            ("insecure_skip_verify", self.insecure_skip_verify),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }

    /// Adds every problem of these options (for a URL that does or does not use TLS).
    fn check(&self, uses_tls: bool, problems: &mut Vec<String>) {
        let set = self.set_options();
        if !uses_tls && !set.is_empty() {
            problems.push(format!(
                "tls options ({}) are set but the url does not use TLS: use a rediss:// url",
                set.join(", ")
            ));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            problems.push(
                "tls cert_file and key_file must be set together (a client certificate needs \
                 its key)"
                    .to_owned(),
            );
        }
        if self.insecure_skip_verify && self.ca_file.is_some() {
            problems.push(
                "tls insecure_skip_verify and ca_file exclude each other (skipping \
                 verification would ignore the CA)"
                    .to_owned(),
            );
        }
        if let Some(name) = &self.server_name
            && ServerName::try_from(name.as_str()).is_err()
        {
            problems.push(format!(
                "tls server_name {name:?} is not a DNS name or an IP address"
            ));
        }
    }
}

/// Whether `url` asks for TLS: the scheme is `rediss` or `valkeys` (also with a `-cluster`
/// or `-sentinel` suffix), as fred decides it.
pub fn uses_tls(url: &str) -> bool {
    let scheme = url.split("://").next().unwrap_or("").to_ascii_lowercase();
    url.contains("://") && (scheme.starts_with("rediss") || scheme.starts_with("valkeys"))
}

impl RedisLimiterConfig {
    /// A config for `url` and `name` with every other field at its default.
    pub fn new(url: impl Into<String>, name: impl Into<String>) -> Self {
        RedisLimiterConfig {
            url: url.into(),
            name: name.into(),
            max_concurrent: 10,
            lease_ttl: Duration::from_secs(15),
            waiter_ttl: Duration::from_secs(6),
            grant_ttl: Duration::from_secs(1),
            op_timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(1),
            failover_policy: FailoverPolicy::Share,
            local_share: None,
            instance_ttl: Duration::from_secs(2),
            safety_poll: Duration::from_secs(1),
            probe_interval: Duration::from_millis(500),
            tls: RedisTlsConfig::default(),
        }
    }

    /// Whether the URL names a Redis Cluster (`redis-cluster://`, `rediss-cluster://`, …).
    pub fn is_cluster(&self) -> bool {
        self.url
            .split("://")
            .next()
            .is_some_and(|scheme| scheme.to_ascii_lowercase().ends_with("-cluster"))
    }

    /// Whether the URL asks for TLS (see [`uses_tls`]).
    pub fn uses_tls(&self) -> bool {
        uses_tls(&self.url)
    }

    /// How often a permit renews its lease.
    pub fn renew_period(&self) -> Duration {
        self.lease_ttl / 3
    }

    /// How long Redis remembers a cancelled or released token, refusing stale acquires for
    /// it: `max(lease_ttl, waiter_ttl)`.
    pub fn tombstone_ttl(&self) -> Duration {
        self.lease_ttl.max(self.waiter_ttl)
    }

    /// The limit the in-memory fallback enforces for a global limit `global`, with `peers`
    /// live instances last seen in Redis (this one included; `None` if never seen), under
    /// the configured policy. `Closed` grants nothing, so its fallback limit is moot (1).
    pub fn fallback_limit(&self, global: u32, peers: Option<u32>) -> u32 {
        let global = global.max(1);
        match self.failover_policy {
            FailoverPolicy::Full => global,
            FailoverPolicy::Closed => 1,
            FailoverPolicy::Share => match (self.local_share, peers) {
                (Some(share), _) => share.clamp(1, global),
                (None, Some(n)) => (global / n.max(1)).max(1),
                (None, None) => 1,
            },
        }
    }

    /// How often this instance renews its record in Redis: `instance_ttl / 4`.
    pub fn heartbeat_period(&self) -> Duration {
        self.instance_ttl / 4
    }

    /// How long Redis grants nothing new after it lost its data or was unreachable for
    /// everyone (a restart, a stall): long enough for every live instance to reconnect and
    /// register the permits it still holds (its heartbeat, or the probe of a degraded
    /// instance) before new ones are granted, so the switch back never admits more than the
    /// limit. `max(probe_interval, heartbeat) + reconnect pause + op_timeout`: 1.6 s by
    /// default. Instances sharing a limiter should share these timings (the instance that
    /// runs the first script after the outage sets the warm-up).
    pub fn warmup(&self) -> Duration {
        self.probe_interval.max(self.heartbeat_period())
            + RECONNECT_MAX
            + RECONNECT_JITTER
            + self.op_timeout
    }

    /// Checks every field and reports all problems at once.
    pub(crate) fn validate(&self) -> Result<(), RedisLimiterError> {
        let mut problems = Vec::new();
        if self.url.trim().is_empty() {
            problems.push("url is empty".to_owned());
        }
        if self.name.is_empty() || self.name.contains(['{', '}']) {
            problems.push(format!(
                "name {:?} must be non-empty and contain no braces",
                self.name
            ));
        }
        if self.max_concurrent == 0 {
            problems.push("max_concurrent must be at least 1".to_owned());
        }
        for (field, value, min) in [
            ("lease_ttl", self.lease_ttl, Duration::from_millis(30)),
            ("waiter_ttl", self.waiter_ttl, Duration::from_millis(30)),
            ("grant_ttl", self.grant_ttl, Duration::from_millis(30)),
            ("op_timeout", self.op_timeout, Duration::from_millis(1)),
            (
                "connect_timeout",
                self.connect_timeout,
                Duration::from_millis(1),
            ),
            ("safety_poll", self.safety_poll, Duration::from_millis(1)),
            (
                "instance_ttl",
                self.instance_ttl,
                Duration::from_millis(100),
            ),
            (
                "probe_interval",
                self.probe_interval,
                Duration::from_millis(1),
            ),
        ] {
            if value < min {
                problems.push(format!("{field} must be at least {min:?}, got {value:?}"));
            }
        }
        if self.local_share == Some(0) {
            problems.push("local_share must be at least 1 when set".to_owned());
        }
        self.tls.check(self.uses_tls(), &mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(RedisLimiterError::InvalidConfig {
                problems: problems.join("; "),
            })
        }
    }
}

impl fmt::Debug for RedisLimiterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimiterConfig")
            .field("url", &redact_url(&self.url))
            .field("name", &self.name)
            .field("max_concurrent", &self.max_concurrent)
            .field("lease_ttl", &self.lease_ttl)
            .field("waiter_ttl", &self.waiter_ttl)
            .field("grant_ttl", &self.grant_ttl)
            .field("op_timeout", &self.op_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("failover_policy", &self.failover_policy)
            .field("local_share", &self.local_share)
            .field("instance_ttl", &self.instance_ttl)
            .field("safety_poll", &self.safety_poll)
            .field("probe_interval", &self.probe_interval)
            .field("tls", &self.tls)
            .finish()
    }
}

/// The server a Redis URL points at, as `host:port` (port 6379 when the URL has none, 26379
/// for a `-sentinel` scheme, as fred defaults them), or the socket path of a `redis+unix://`
/// URL: never the user name or the password, safe to show. A Cluster or Sentinel URL that
/// names more nodes (`?node=host:port&node=…`) gives all of them, the URL's host first,
/// separated by commas (`10.0.0.1:7000,10.0.0.2:7000`).
pub fn address_of(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => (&url[..i], &url[i + 3..]),
        None => ("", url),
    };
    if ambiguous_userinfo(rest) {
        return HIDDEN_ADDRESS.to_owned();
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let host = authority
        .rfind('@')
        .map_or(authority, |at| &authority[at + 1..]);
    if host.is_empty() {
        // `redis+unix:///path/to/socket`: the path is the address.
        return rest[authority_end..]
            .split(['?', '#'])
            .next()
            .unwrap_or("")
            .to_owned();
    }
    let default_port = if scheme.to_ascii_lowercase().ends_with("-sentinel") {
        26379
    } else {
        6379
    };
    let first = if host.contains(':') && !host.ends_with(']') {
        host.to_owned()
    } else {
        format!("{host}:{default_port}")
    };
    let mut addresses = vec![first];
    addresses.extend(
        query_pairs(rest)
            .filter(|(key, _)| *key == "node")
            .map(|(_, value)| percent_decoded(value))
            .filter(|node| !node.is_empty()),
    );
    addresses.join(",")
}

/// What [`address_of`] says for a URL whose user info cannot be told from its host.
const HIDDEN_ADDRESS: &str = "(hidden: the URL has an '@' after its host part; percent-encode \
    '/', '?', '#' and '@' in the password)";

/// Whether an `@` comes after the end of the authority (the first `/`, `?` or `#` after
/// `scheme://`): then a password holds one of those characters unescaped
/// (`redis://:pa/ss@host`), and whatever is cut off as the "host" may be part of it. Such a
/// URL is shown as nothing but its scheme, and its address is hidden.
fn ambiguous_userinfo(rest: &str) -> bool {
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(authority_end);
    // An `@` in the path (a Redis URL's path is a database number): a `/` in the password.
    if after.split(['?', '#']).next().unwrap_or("").contains('@') {
        return true;
    }
    // `user:pa` cut off at a `?` or `#` of the password: a "port" that is no number, and
    // the `@` later on.
    !authority.contains('@')
        && after.contains('@')
        && authority
            .rsplit_once(':')
            .is_some_and(|(_, port)| !port.bytes().all(|b| b.is_ascii_digit()))
}

/// The query parameters whose value is a secret: fred reads the password of the Sentinel
/// nodes from `sentinelPassword` (feature `sentinel-auth`). Compared ignoring ASCII case.
const SECRET_PARAMS: &[&str] = &["sentinelPassword"];

/// The URL with any password replaced by `***` (the one in the user info, and a
/// `sentinelPassword=` query parameter), safe to log.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    if ambiguous_userinfo(rest) {
        return format!("{}***", &url[..scheme_end]);
    }
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = match rest[..authority_end].rfind('@') {
        None => rest[..authority_end].to_owned(),
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                // `redis://secret@host` puts the password in the user position.
                "***".to_owned()
            };
            format!("{masked}{}", &rest[at..authority_end])
        }
    };
    let after = &rest[authority_end..];
    let tail = match after.find('?') {
        None => after.to_owned(),
        Some(q) => {
            let (path, query) = (&after[..q], &after[q + 1..]);
            let (query, fragment) = query.split_at(query.find('#').unwrap_or(query.len()));
            let params: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _))
                        if SECRET_PARAMS
                            .iter()
                            .any(|s| s.eq_ignore_ascii_case(&percent_decoded(key))) =>
                    {
                        format!("{key}=***")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}{fragment}", params.join("&"))
        }
    };
    format!("{}{authority}{tail}", &url[..scheme_end])
}

/// The `key=value` pairs of the query of `rest` (the URL after `scheme://`), undecoded.
fn query_pairs(rest: &str) -> impl Iterator<Item = (&str, &str)> {
    let query = rest.split_once('?').map_or("", |(_, q)| q);
    let query = query.split('#').next().unwrap_or("");
    query.split('&').filter_map(|pair| pair.split_once('='))
}

/// `s` with `%XX` escapes decoded (and `+` as a space, as in a query); an invalid escape is
/// kept as written.
fn percent_decoded(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        // Two hex digits are at most 0xff.
                        out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_names_host_and_port_but_never_the_credentials() {
        fn check(url: &str, expected: &str) {
            assert_eq!(address_of(url), expected, "{url}");
        }
        check("redis://127.0.0.1:6380", "127.0.0.1:6380");
        check("redis://:hunter2@127.0.0.1:6380/0", "127.0.0.1:6380");
        check(
            "rediss://user:pw@cache.example:6390/?timeout=1",
            "cache.example:6390",
        );
        check("redis://secret@host", "host:6379");
        check("redis://[::1]:7000", "[::1]:7000");
        check("redis+unix:///run/redis.sock?db=1", "/run/redis.sock");
        // Cluster and Sentinel URLs name every seed node, the URL's host first.
        check(
            "redis-cluster://:pw@10.0.0.1:7000?node=10.0.0.2:7001&node=10.0.0.3:7002",
            "10.0.0.1:7000,10.0.0.2:7001,10.0.0.3:7002",
        );
        check("rediss-cluster://c.example:7000", "c.example:7000");
        check("redis-cluster://c.example", "c.example:6379");
        check("valkey-cluster://h:1?node=h%3A2", "h:1,h:2");
        check(
            "redis-sentinel://:pw@s1:26380/0?sentinelServiceName=main&node=s2:26381\
             &sentinelPassword=sentinel-secret",
            "s1:26380,s2:26381",
        );
        check(
            "rediss-sentinel://s1/0?sentinelServiceName=main&node=s2:26379",
            "s1:26379,s2:26379",
        );
        check("REDIS-SENTINEL://s1?sentinelServiceName=m", "s1:26379");
    }

    fn check(url: &str, expected: &str) {
        assert_eq!(redact_url(url), expected, "{url}");
    }

    #[test]
    fn passwords_never_reach_the_logs() {
        check("redis://127.0.0.1:6379", "redis://127.0.0.1:6379");
        check("redis://:hunter2@host:6379/0", "redis://:***@host:6379/0");
        check("redis://me:hunter2@host", "redis://me:***@host");
        check("rediss://hunter2@host", "rediss://***@host");
        check("redis://host/0?x=a@b", "redis://host/0?x=a@b");
        let config = RedisLimiterConfig::new("redis://u:hunter2@h:1", "n");
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn cluster_and_sentinel_passwords_never_reach_the_logs() {
        check(
            "redis-cluster://:hunter2@h:7000?node=h:7001&node=h:7002",
            "redis-cluster://:***@h:7000?node=h:7001&node=h:7002",
        );
        check(
            "redis-sentinel://:hunter2@s1:26379/0?sentinelServiceName=main\
             &sentinelPassword=sentinel-secret&node=s2:26379",
            "redis-sentinel://:***@s1:26379/0?sentinelServiceName=main\
             &sentinelPassword=***&node=s2:26379",
        );
        // No user info, the key in another case or percent-encoded, an empty value, a
        // fragment after the query.
        check(
            "rediss-sentinel://s1?sentinelServiceName=m&SENTINELPASSWORD=x%26y",
            "rediss-sentinel://s1?sentinelServiceName=m&SENTINELPASSWORD=***",
        );
        check(
            "redis-sentinel://s1?sentinel%50assword=secret",
            "redis-sentinel://s1?sentinel%50assword=***",
        );
        check(
            "redis-sentinel://s1?sentinelPassword=&sentinelServiceName=m#frag",
            "redis-sentinel://s1?sentinelPassword=***&sentinelServiceName=m#frag",
        );
        check(
            "redis-sentinel://s1?sentinelUsername=admin&sentinelServiceName=m",
            "redis-sentinel://s1?sentinelUsername=admin&sentinelServiceName=m",
        );
        let config = RedisLimiterConfig::new(
            "redis-sentinel://s1?sentinelServiceName=m&sentinelPassword=hunter2",
            "n",
        );
        assert!(!format!("{config:?}").contains("hunter2"));
        assert!(!address_of(&config.url).contains("hunter2"));
    }

    #[test]
    fn defaults_are_valid_and_bad_fields_are_all_reported() {
        assert!(
            RedisLimiterConfig::new("redis://h", "d-id")
                .validate()
                .is_ok()
        );
        let mut config = RedisLimiterConfig::new("", "{x}");
        config.max_concurrent = 0;
        config.lease_ttl = Duration::ZERO;
        let err = config.validate().unwrap_err().to_string();
        for needle in ["url", "name", "max_concurrent", "lease_ttl"] {
            assert!(err.contains(needle), "{needle} missing from {err}");
        }
    }

    #[test]
    fn tls_options_need_a_tls_url_and_must_agree_with_each_other() {
        #[track_caller]
        fn check(url: &str, change: impl FnOnce(&mut RedisTlsConfig), expected: Option<&str>) {
            let mut config = RedisLimiterConfig::new(url, "n");
            change(&mut config.tls);
            match (config.validate(), expected) {
                (Ok(()), None) => {}
                (Err(e), Some(needle)) => {
                    let message = e.to_string();
                    assert!(message.contains(needle), "{needle:?} not in {message:?}");
                }
                (got, want) => panic!("{url} {:?}: got {got:?}, want {want:?}", config.tls),
            }
        }
        let ca = |t: &mut RedisTlsConfig| t.ca_file = Some("ca.pem".into());
        check("rediss://h:6380", |_| {}, None);
        check("rediss://h:6380", ca, None);
        check("valkeys://h", ca, None);
        check("REDISS://h", ca, None);
        check("rediss-cluster://h:7000?node=h:7001", ca, None);
        check("rediss-sentinel://h/0?sentinelServiceName=m", ca, None);
        check("valkeys-cluster://h", ca, None);
        check(
            "redis-cluster://h:7000",
            ca,
            Some("tls options (ca_file) are set but the url does not use TLS"),
        );
        check(
            "redis-sentinel://h/0?sentinelServiceName=m",
            ca,
            Some("tls options (ca_file) are set but the url does not use TLS"),
        );
        check(
            "redis://h",
            ca,
            Some("tls options (ca_file) are set but the url does not use TLS: use a rediss://"),
        );
        check(
            "redis://h",
            |t| t.insecure_skip_verify = true,
            Some("(insecure_skip_verify)"),
        );
        check(
            "rediss://h",
            |t| t.cert_file = Some("c.pem".into()),
            Some("cert_file and key_file must be set together"),
        );
        check(
            "rediss://h",
            |t| t.key_file = Some("k.pem".into()),
            Some("cert_file and key_file must be set together"),
        );
        check(
            "rediss://h",
            |t| {
                t.insecure_skip_verify = true;
                t.ca_file = Some("ca.pem".into());
            },
            Some("insecure_skip_verify and ca_file exclude each other"),
        );
        check(
            "rediss://h",
            |t| t.server_name = Some("not a name".into()),
            Some("server_name \"not a name\""),
        );
        check(
            "rediss://10.0.0.1",
            |t| t.server_name = Some("redis.internal".into()),
            None,
        );
    }

    #[test]
    fn tls_is_asked_for_by_the_scheme() {
        for (url, tls) in [
            ("rediss://h", true),
            ("rediss-cluster://h", true),
            ("valkeys://h", true),
            ("Rediss://h", true),
            ("redis://h", false),
            ("redis://rediss", false),
            ("valkey://h", false),
            ("rediss", false),
        ] {
            assert_eq!(uses_tls(url), tls, "{url}");
        }
    }

    #[test]
    fn the_fallback_share_follows_the_policy_and_the_live_instances() {
        let mut config = RedisLimiterConfig::new("redis://h", "n");
        // Share, derived: floor(C / N), at least 1; never seen Redis: 1.
        assert_eq!(config.fallback_limit(6, Some(4)), 1);
        assert_eq!(config.fallback_limit(6, Some(2)), 3);
        assert_eq!(config.fallback_limit(6, Some(1)), 6);
        assert_eq!(config.fallback_limit(6, Some(9)), 1);
        assert_eq!(config.fallback_limit(6, None), 1);
        config.local_share = Some(3);
        assert_eq!(config.fallback_limit(8, Some(4)), 3);
        assert_eq!(config.fallback_limit(2, None), 2);
        config.failover_policy = FailoverPolicy::Full;
        assert_eq!(config.fallback_limit(8, Some(4)), 8);
        for (name, policy) in [
            ("share", FailoverPolicy::Share),
            ("CLOSED", FailoverPolicy::Closed),
            (" full", FailoverPolicy::Full),
        ] {
            assert_eq!(name.parse::<FailoverPolicy>(), Ok(policy));
        }
        assert!(
            "open"
                .parse::<FailoverPolicy>()
                .unwrap_err()
                .contains("share, closed or full")
        );
    }

    #[test]
    fn a_password_with_an_unescaped_slash_question_mark_or_hash_never_shows() {
        for url in [
            "redis://:pw1/zz9@10.0.0.1:6379/0",
            "redis://user:pw1?zz9@10.0.0.1:6379",
            "rediss://:pw1#zz9@redis.internal:6380",
            "redis-sentinel://s1:26379?sentinelServiceName=m&sentinelPassword=pw1@zz9",
        ] {
            for shown in [redact_url(url), address_of(url)] {
                for secret in ["pw1", "zz9"] {
                    assert!(!shown.contains(secret), "{url} shown as {shown}");
                }
            }
        }
        assert_eq!(redact_url("redis://:pw1/zz9@h:6379"), "redis://***");
        // An escaped one is fine: the host is known.
        assert_eq!(address_of("redis://:pw1%2Fzz9@h:6379/0"), "h:6379");
    }
}
