//! The parsers of the setting declarations in [`config`](super): a trimmed, non-empty value
//! in, the field's value or what is wrong with it out. A message never quotes a secret.

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::SecretString;

use super::LogFormat;

pub(super) fn address(raw: &str) -> Result<SocketAddr, String> {
    raw.parse()
        .map_err(|_| format!("{raw:?} is not an address like 127.0.0.1:55433"))
}

pub(super) fn secret(raw: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(raw.to_owned()))
}

/// A Standard Webhooks secret: `whsec_` and 24 to 64 random bytes in base64 (the message
/// never quotes it).
pub(super) fn webhook_secret(raw: &str) -> Result<SecretString, String> {
    use base64::Engine as _;
    let bytes = raw
        .strip_prefix("whsec_")
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok());
    match bytes {
        Some(key) if (24..=64).contains(&key.len()) => Ok(SecretString::from(raw.to_owned())),
        _ => Err(
            "not a whsec_ secret of 24 to 64 bytes in base64 (make one with: \
             echo whsec_$(head -c 32 /dev/urandom | base64))"
                .to_owned(),
        ),
    }
}

pub(super) fn http_url(raw: &str) -> Result<String, String> {
    if raw.starts_with("http://") || raw.starts_with("https://") {
        Ok(raw.trim_end_matches('/').to_owned())
    } else {
        Err(format!("{raw:?} is not an http:// or https:// URL"))
    }
}

/// Where D-ID reaches this service: `https://…`, or `http://` to a loopback host (only a
/// local did-fake calls that; D-ID takes https webhooks only).
/// A host is required; credentials, a query and a fragment are refused (the receiver's
/// path and token are appended to it).
pub(super) fn public_base_url(raw: &str) -> Result<String, String> {
    let url = http_url(raw)?;
    if !(url.starts_with("https://") || domain::request::is_loopback_http(&url)) {
        return Err(format!(
            "{raw:?}: D-ID calls https:// webhooks only (http:// only to a loopback host, for did-fake)"
        ));
    }
    let parsed = url::Url::parse(&url).map_err(|e| format!("{raw:?}: {e}"))?;
    if parsed.host_str().is_none_or(str::is_empty)
        || !parsed.username().is_empty()
        || parsed.password().is_some()
        || parsed.query().is_some()
        || parsed.fragment().is_some()
        || url.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "{raw:?}: a base URL with a host and nothing after the path (no credentials, query or fragment)"
        ));
    }
    Ok(url)
}

/// A Redis URL of a scheme fred connects with: one server (`redis`, `valkey`, and their TLS
/// twins `rediss`, `valkeys`; `redis+unix`), a Cluster (`-cluster` suffix) or a primary found
/// through Sentinel (`-sentinel` suffix). The TLS options (`REDIS_TLS_*`) need a TLS scheme,
/// which the limiter checks.
pub(super) fn redis_url(raw: &str) -> Result<SecretString, String> {
    let scheme = raw.split_once("://").map_or("", |(scheme, _)| scheme);
    let known = ["redis", "rediss", "valkey", "valkeys"]
        .into_iter()
        .flat_map(|base| ["", "-cluster", "-sentinel"].map(|suffix| (base, suffix)))
        .any(|(base, suffix)| {
            scheme.strip_suffix(suffix) == Some(base) && scheme.len() == base.len() + suffix.len()
        });
    if known || scheme == "redis+unix" {
        secret(raw)
    } else {
        // The value may carry a password, so only the scheme rule is quoted.
        Err(
            "expected a redis://, rediss://, redis-cluster://, rediss-cluster://, \
             redis-sentinel:// or rediss-sentinel:// URL (or a valkey twin, or redis+unix://; \
             value not shown: it may hold a password)"
                .to_owned(),
        )
    }
}

/// A whole number of at least `min`.
pub(super) fn whole<T>(raw: &str, min: T) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    match raw.parse::<T>() {
        Ok(v) if v >= min => Ok(v),
        _ => Err(format!("{raw:?} is not a whole number of at least {min}")),
    }
}

/// Seconds as a positive decimal number (`0.5` is half a second), or zero if allowed.
pub(super) fn seconds(raw: &str, allow_zero: bool) -> Result<Duration, String> {
    match raw.parse::<f64>() {
        Ok(v) if v.is_finite() && (v > 0.0 || (allow_zero && v == 0.0)) && v < 1e9 => {
            Ok(Duration::from_secs_f64(v))
        }
        _ => {
            let what = if allow_zero {
                "zero or more"
            } else {
                "more than zero"
            };
            Err(format!("{raw:?} is not a number of seconds ({what})"))
        }
    }
}

/// Seconds, at least 0.1 (the Redis limiter's floor for an instance record).
pub(super) fn instance_ttl(raw: &str) -> Result<Duration, String> {
    let ttl = seconds(raw, false)?;
    if ttl < Duration::from_millis(100) {
        return Err(format!("{raw:?} is below the 0.1 s minimum"));
    }
    Ok(ttl)
}

pub(super) fn job_store(raw: &str) -> Result<super::JobStoreKind, String> {
    use super::JobStoreKind as K;
    match raw.to_ascii_lowercase().as_str() {
        "auto" => Ok(K::Auto),
        "sqlite" => Ok(K::Sqlite),
        "redis" => Ok(K::Redis),
        "memory" => Ok(K::Memory),
        other => Err(format!(
            "{other:?} is not one of auto, sqlite, redis, memory"
        )),
    }
}

pub(super) fn job_store_sync(raw: &str) -> Result<super::JobStoreSync, String> {
    match raw.to_ascii_lowercase().as_str() {
        "normal" => Ok(super::JobStoreSync::Normal),
        "full" => Ok(super::JobStoreSync::Full),
        other => Err(format!("{other:?} is not one of normal, full")),
    }
}

pub(super) fn log_format(raw: &str) -> Result<LogFormat, String> {
    match raw.to_ascii_lowercase().as_str() {
        "human" | "text" | "pretty" => Ok(LogFormat::Human),
        "json" => Ok(LogFormat::Json),
        other => Err(format!("{other:?} is not one of human, json")),
    }
}

pub(super) fn limiter_name(raw: &str) -> Result<String, String> {
    if raw
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
    {
        Ok(raw.to_owned())
    } else {
        Err(format!(
            "{raw:?} may only hold A-Z, a-z, 0-9, '_', '-', '.', ':'"
        ))
    }
}

/// A file path (whether it can be read is checked by whoever opens it, naming the setting).
pub(super) fn file(raw: &str) -> Result<std::path::PathBuf, String> {
    Ok(std::path::PathBuf::from(raw))
}

/// Comma-separated CIDR networks (`10.1.0.0/16, fd00::/8`); at least one.
pub(super) fn networks(raw: &str) -> Result<Vec<domain::IpNet>, String> {
    let nets = raw
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            part.parse::<domain::IpNet>()
                .map_err(|_| format!("{part:?} is not a network like 10.1.0.0/16"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if nets.is_empty() {
        return Err("no network given".to_owned());
    }
    Ok(nets)
}

/// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`, any ASCII case).
/// A number from `low` to `high`, both included.
pub(super) fn number_in(raw: &str, low: f64, high: f64) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(v) if v.is_finite() && (low..=high).contains(&v) => Ok(v),
        _ => Err(format!("{raw:?} is not a number from {low} to {high}")),
    }
}

/// A factor above 0 and below 1.
pub(super) fn fraction(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(v) if v > 0.0 && v < 1.0 => Ok(v),
        _ => Err(format!("{raw:?} is not a number above 0 and below 1")),
    }
}

pub(super) fn boolean(raw: &str) -> Result<bool, String> {
    match raw.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("{raw:?} is not true or false")),
    }
}

/// A whole number within `min..=max`.
pub(super) fn whole_within<T>(raw: &str, min: T, max: T) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    match raw.parse::<T>() {
        Ok(v) if v >= min && v <= max => Ok(v),
        _ => Err(format!("{raw:?} is not a whole number from {min} to {max}")),
    }
}

/// Seconds within `min..=max`.
pub(super) fn seconds_within(raw: &str, min: f64, max: f64) -> Result<Duration, String> {
    number_in(raw, min, max)
        .map(Duration::from_secs_f64)
        .map_err(|_| format!("{raw:?} is not a number of seconds from {min} to {max}"))
}

pub(super) fn pacing(raw: &str) -> Result<super::Pacing, String> {
    match raw.to_ascii_lowercase().as_str() {
        "auto" => Ok(super::Pacing::Auto),
        _ => boolean(raw)
            .map(|on| {
                if on {
                    super::Pacing::On
                } else {
                    super::Pacing::Off
                }
            })
            .map_err(|_| format!("{raw:?} is not on, off or auto")),
    }
}

pub(super) fn limit_mode(raw: &str) -> Result<super::LimitMode, String> {
    match raw.to_ascii_lowercase().as_str() {
        "fixed" => Ok(super::LimitMode::Fixed),
        "adaptive" => Ok(super::LimitMode::Adaptive),
        _ => Err(format!("{raw:?} is not fixed or adaptive")),
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn a_public_base_url_is_https_or_loopback_http() {
        assert_eq!(
            public_base_url("https://gw.example.com/").unwrap(),
            "https://gw.example.com"
        );
        assert!(public_base_url("http://127.0.0.1:8080").is_ok());
        assert!(public_base_url("http://localhost:8080").is_ok());
        for bad in [
            "http://gw.example.com",
            "ftp://x",
            "gw.example.com",
            "https://",
            "https://gw.example.com?x=1",
            "https://gw.example.com#f",
            "https://user@gw.example.com",
            "https://gw.example.com/a b",
        ] {
            assert!(public_base_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn networks_are_comma_separated_cidrs() {
        let nets = networks("10.1.0.0/16, fd00::/8").unwrap();
        assert_eq!(nets.len(), 2);
        assert!(nets[0].contains(&"10.1.2.3".parse::<std::net::IpAddr>().unwrap()));
        for bad in ["", " , ", "10.1.0.0/33", "localhost", "10.1.0.0/16,nope"] {
            assert!(networks(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn redis_urls_of_every_topology_are_accepted_and_others_refused_without_the_value() {
        for url in [
            "redis://h:6379",
            "rediss://:pw@h:6380/0",
            "valkey://h",
            "valkeys://h",
            "redis+unix:///run/redis.sock",
            "redis-cluster://h:7000?node=h:7001&node=h:7002",
            "rediss-cluster://:pw@h:7000",
            "valkey-cluster://h:7000",
            "valkeys-cluster://h:7000",
            "redis-sentinel://h:26379/0?sentinelServiceName=main&node=h2:26379",
            "rediss-sentinel://h:26379/0?sentinelServiceName=main",
            "valkey-sentinel://h?sentinelServiceName=main",
            "valkeys-sentinel://h?sentinelServiceName=main",
        ] {
            let parsed = redis_url(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(parsed.expose_secret(), url);
        }
        for url in [
            "http://h",
            "redis-clusterx://h",
            "redis-cluster-sentinel://h",
            "-cluster://h",
            "redis",
            "redis-sentinel:h:26379",
            "memcached://:hunter2@h",
        ] {
            let err = redis_url(url).expect_err(url);
            assert!(err.contains("redis-cluster://"), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }
}
