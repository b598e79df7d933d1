//! [`RedisConnectionConfig`]: how to reach one Redis (the URL, its TLS options, the
//! timeouts), as one plain struct with documented defaults, and its validation;
//! [`RedisTlsConfig`], the TLS options of a `rediss://` URL; and what of a URL is safe to
//! show ([`address_of`], [`redact_url`]).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use fred::rustls::pki_types::ServerName;

use crate::error::ConfigError;

/// The longest pause between two reconnection attempts (50 ms doubling to this; fred adds
/// up to 100 ms of jitter): once Redis is back, a client is connected again within it.
pub const RECONNECT_MAX: Duration = Duration::from_millis(500);

/// fred's default reconnection jitter (`DEFAULT_JITTER_MS`).
pub const RECONNECT_JITTER: Duration = Duration::from_millis(100);

/// How a client reaches Redis: the URL (one server, a Cluster, Sentinel; TLS by scheme), the
/// TLS options and the timeouts of every client built from it ([`client`](crate::client),
/// [`clients`](crate::clients)). The limiter embeds it; the job store takes it as it is.
///
/// Build it with [`RedisConnectionConfig::new`] and change fields as needed. `Debug` hides
/// the password in [`url`](Self::url).
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConnectionConfig {
    /// The Redis URL, as fred's `Config::from_url` accepts it
    /// (`redis://[user:password@]host:port[/db]`, `redis-cluster://…`, `valkey://…`).
    /// `rediss://` (and `valkeys://`) connect over TLS, configured by [`tls`](Self::tls).
    pub url: String,
    /// The bound on every Redis command (fred's `default_command_timeout`, and the stores'
    /// own `tokio::time::timeout` around each call). A limiter call that takes longer
    /// switches the limiter to its in-memory fallback. Default 500 ms.
    pub op_timeout: Duration,
    /// The bound on opening a TCP connection to Redis. Default 1 s.
    pub connect_timeout: Duration,
    /// TLS options; only allowed with a TLS URL (`rediss://`). Default: verify the server
    /// against the system's root certificates and the URL's host name, no client certificate.
    pub tls: RedisTlsConfig,
}

/// How a `rediss://` connection is secured. Every field is off by default, which verifies the
/// server's certificate against the system's root certificates (`/etc/ssl/certs`) and the
/// host name in the URL, and sends no client certificate.
///
/// Every file is read once, when a client is built: a file that cannot be read or parsed, or
/// a key that does not match its certificate, fails [`clients`](crate::clients) (so
/// `RedisLimiter::connect` and the job store's `open`) with a [`ConfigError::TlsFile`]
/// naming the file, so a TLS setup that can never work stops the start instead of running
/// degraded. A handshake that fails later (a certificate from another CA, for another name)
/// is a run-time failure: the limiter serves from its fallback and reports the reason `tls`.
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

impl RedisConnectionConfig {
    /// A config for `url` with every other field at its default.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConnectionConfig {
            url: url.into(),
            op_timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(1),
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

    /// Every problem of these fields, for a caller that reports them with its own (the
    /// limiter's config); empty if there is none.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.url.trim().is_empty() {
            problems.push("url is empty".to_owned());
        }
        for (field, value, min) in [
            ("op_timeout", self.op_timeout, Duration::from_millis(1)),
            (
                "connect_timeout",
                self.connect_timeout,
                Duration::from_millis(1),
            ),
        ] {
            if value < min {
                problems.push(format!("{field} must be at least {min:?}, got {value:?}"));
            }
        }
        self.tls.check(self.uses_tls(), &mut problems);
        problems
    }

    /// Checks every field and reports all problems at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::InvalidConfig {
                problems: problems.join("; "),
            })
        }
    }
}

impl fmt::Debug for RedisConnectionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConnectionConfig")
            .field("url", &redact_url(&self.url))
            .field("op_timeout", &self.op_timeout)
            .field("connect_timeout", &self.connect_timeout)
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
        let config = RedisConnectionConfig::new("redis://u:hunter2@h:1");
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
        let config = RedisConnectionConfig::new(
            "redis-sentinel://s1?sentinelServiceName=m&sentinelPassword=hunter2",
        );
        assert!(!format!("{config:?}").contains("hunter2"));
        assert!(!address_of(&config.url).contains("hunter2"));
    }

    #[test]
    fn tls_options_need_a_tls_url_and_must_agree_with_each_other() {
        #[track_caller]
        fn check(url: &str, change: impl FnOnce(&mut RedisTlsConfig), expected: Option<&str>) {
            let mut config = RedisConnectionConfig::new(url);
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
