//! [`DidClientConfig`]: everything the client can be told, as one plain documented struct.
//!
//! Defaults follow the D-ID reference (connect 10 s, JSON calls 30 s; uploads 60 s per attempt
//! under a 150 s total, so a stalled upload waits no longer than other calls) and the
//! original client's contract (3 attempts, 60 s limiter wait). Reading it from the environment
//! is the service's job; this crate never reads env variables.

use std::fmt;
use std::time::Duration;

use secrecy::SecretString;

use crate::pace::PacingConfig;
use crate::retry::RetryPolicy;

/// D-ID's production API.
pub const DEFAULT_BASE_URL: &str = "https://api.d-id.com";

/// How the API key is put into `Authorization: Basic …`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthScheme {
    /// `Basic base64(key)` (RFC 7617), with the key in D-ID's `user:pass` form. D-ID's own
    /// agents SDK sends this; it is the default.
    #[default]
    Rfc7617,
    /// `Basic <key>` verbatim, the form in D-ID's documentation.
    Literal,
}

impl AuthScheme {
    /// The scheme's name in stats: `"rfc7617"` or `"literal"`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthScheme::Rfc7617 => "rfc7617",
            AuthScheme::Literal => "literal",
        }
    }
}

/// Configuration of a [`DidClient`](crate::DidClient).
///
/// `Debug` shows whether a key is set, never the key.
#[derive(Clone)]
pub struct DidClientConfig {
    /// D-ID's base URL without a trailing slash (default [`DEFAULT_BASE_URL`]); tests point it
    /// at `did-fake`.
    pub base_url: String,
    /// The API key in D-ID's `user:pass` form. `None` (or an empty key) builds a client whose
    /// every call fails with `VideoApiError::NotConfigured` without touching the network.
    pub api_key: Option<SecretString>,
    /// How the key is encoded in the `Authorization` header (default [`AuthScheme::Rfc7617`]).
    pub auth_scheme: AuthScheme,
    /// Idle connections kept per host (default 10). Make it at least the limiter's
    /// `max_concurrent`: every permit holder then finds a warm connection.
    pub pool_max_idle_per_host: usize,
    /// How long an idle pooled connection is kept (default 30 s).
    pub pool_idle_timeout: Duration,
    /// Bound on establishing a TCP (+TLS) connection (default 10 s).
    pub connect_timeout: Duration,
    /// Bound on one JSON exchange, body included (default 30 s, just above the ~29 s of
    /// D-ID's API gateway).
    pub request_timeout: Duration,
    /// Bound on one upload exchange (default 60 s: a 10 MiB upload at ~1.5 Mbit/s; two
    /// attempts and a backoff fit in [`upload_call_deadline`](Self::upload_call_deadline)).
    pub upload_timeout: Duration,
    /// Bound on a whole JSON call: limiter waits, every attempt and every backoff (default
    /// 120 s). When it passes the caller gets `VideoApiError::Timeout`.
    pub call_deadline: Duration,
    /// Bound on a whole upload call: limiter waits, attempts and backoffs (default 150 s,
    /// in line with [`call_deadline`](Self::call_deadline); a stalled upstream makes the
    /// caller wait at most this long).
    pub upload_call_deadline: Duration,
    /// How long one attempt waits for a limiter permit (default 60 s); past it the caller gets
    /// `VideoApiError::Limiter`.
    pub limiter_wait_timeout: Duration,
    /// Which failures are retried, and the backoff schedule.
    pub retry: RetryPolicy,
    /// How sends are paced after D-ID throttles (on by default; see [`crate::pace`]).
    pub pacing: PacingConfig,
    /// Pages of `GET /talks` scanned for a create token after an ambiguous create failure
    /// (default 3).
    pub recovery_pages: u32,
    /// Talks per page in that scan (default 100, D-ID's default page size).
    pub recovery_page_size: u32,
    /// Fraction of a poll interval added or removed at random (default 0.1, i.e. ±10 %).
    pub poll_jitter: f64,
    /// The largest successful (2xx) answer body read, in bytes (default 1 MiB, ample for a
    /// 100-talk `GET /talks` page). A larger body, declared by `Content-Length` or streamed,
    /// is a `VideoApiError::Protocol`, and nothing past the cap is read.
    pub max_body_bytes: usize,
    /// The largest error (non-2xx) body read, in bytes (default 16 KiB; D-ID's error bodies
    /// are a few hundred bytes). Past it the body is ignored and not read further; the status
    /// alone decides the error.
    pub max_error_body_bytes: usize,
}

/// Default of [`DidClientConfig::max_body_bytes`]: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Default of [`DidClientConfig::max_error_body_bytes`]: 16 KiB.
pub const DEFAULT_MAX_ERROR_BODY_BYTES: usize = 16 * 1024;

impl Default for DidClientConfig {
    fn default() -> Self {
        DidClientConfig {
            base_url: DEFAULT_BASE_URL.to_owned(),
            api_key: None,
            auth_scheme: AuthScheme::default(),
            pool_max_idle_per_host: 10,
            pool_idle_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            upload_timeout: Duration::from_secs(60),
            call_deadline: Duration::from_secs(120),
            upload_call_deadline: Duration::from_secs(150),
            limiter_wait_timeout: Duration::from_secs(60),
            retry: RetryPolicy::default(),
            pacing: PacingConfig::default(),
            recovery_pages: 3,
            recovery_page_size: 100,
            poll_jitter: ports::PollSchedule::JITTER,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_error_body_bytes: DEFAULT_MAX_ERROR_BODY_BYTES,
        }
    }
}

impl DidClientConfig {
    /// The defaults with `base_url` and `api_key` set.
    pub fn new(base_url: impl Into<String>, api_key: Option<SecretString>) -> Self {
        DidClientConfig {
            base_url: base_url.into(),
            api_key,
            ..DidClientConfig::default()
        }
    }

    /// Sizes the pool for a limiter of `max_concurrent` slots: at least that many idle
    /// connections are kept per host, so every permit holder finds a warm connection.
    pub fn with_pool_for(mut self, max_concurrent: u32) -> Self {
        self.pool_max_idle_per_host = self.pool_max_idle_per_host.max(max_concurrent as usize);
        self
    }
}

impl fmt::Debug for DidClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DidClientConfig")
            .field("base_url", &self.base_url)
            .field("api_key_configured", &self.api_key.is_some())
            .field("auth_scheme", &self.auth_scheme)
            .field("pool_max_idle_per_host", &self.pool_max_idle_per_host)
            .field("pool_idle_timeout", &self.pool_idle_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("upload_timeout", &self.upload_timeout)
            .field("call_deadline", &self.call_deadline)
            .field("upload_call_deadline", &self.upload_call_deadline)
            .field("limiter_wait_timeout", &self.limiter_wait_timeout)
            .field("retry", &self.retry)
            .field("pacing", &self.pacing)
            .field("recovery_pages", &self.recovery_pages)
            .field("recovery_page_size", &self.recovery_page_size)
            .field("poll_jitter", &self.poll_jitter)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_error_body_bytes", &self.max_error_body_bytes)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_key() {
        let cfg = DidClientConfig::new(
            "http://127.0.0.1:1",
            Some(SecretString::from("user:hunter2")),
        );
        let text = format!("{cfg:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("api_key_configured: true"), "{text}");
    }

    #[test]
    fn defaults_follow_the_reference() {
        let cfg = DidClientConfig::default();
        assert_eq!(cfg.base_url, "https://api.d-id.com");
        assert_eq!(cfg.pool_idle_timeout, Duration::from_secs(30));
        assert_eq!(cfg.retry.max_attempts, 3);
        assert!(cfg.api_key.is_none());
    }

    #[test]
    fn the_pool_grows_to_the_limiter_but_never_shrinks() {
        assert_eq!(
            DidClientConfig::default()
                .with_pool_for(32)
                .pool_max_idle_per_host,
            32
        );
        assert_eq!(
            DidClientConfig::default()
                .with_pool_for(2)
                .pool_max_idle_per_host,
            10
        );
    }
}
