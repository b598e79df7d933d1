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

pub(super) fn http_url(raw: &str) -> Result<String, String> {
    if raw.starts_with("http://") || raw.starts_with("https://") {
        Ok(raw.trim_end_matches('/').to_owned())
    } else {
        Err(format!("{raw:?} is not an http:// or https:// URL"))
    }
}

pub(super) fn redis_url(raw: &str) -> Result<SecretString, String> {
    let known = [
        "redis://",
        "rediss://",
        "valkey://",
        "valkeys://",
        "redis+unix://",
    ];
    if known.iter().any(|s| raw.starts_with(s)) {
        secret(raw)
    } else {
        // The value may carry a password, so only the scheme rule is quoted.
        Err(
            "expected a redis:// or rediss:// URL (value not shown: it may hold a password)"
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

/// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`, any ASCII case).
pub(super) fn boolean(raw: &str) -> Result<bool, String> {
    match raw.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("{raw:?} is not true or false")),
    }
}
