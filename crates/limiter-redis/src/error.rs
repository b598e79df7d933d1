//! [`RedisLimiterError`]: why a [`RedisLimiter`](crate::RedisLimiter) could not be built.
//!
//! Runtime failures never use this type: a Redis error during `acquire` or `stats` switches
//! the limiter to its fallback, and what the fallback cannot serve is a
//! [`ports::LimiterError`].

/// Why [`RedisLimiter::connect`](crate::RedisLimiter::connect) failed. An unreachable Redis
/// is not an error (the limiter starts degraded); a config that can never work is.
#[derive(Debug, thiserror::Error)]
pub enum RedisLimiterError {
    /// One or more config fields are out of range (all problems are listed).
    #[error("invalid redis limiter config: {problems}")]
    InvalidConfig {
        /// Every problem found, separated by `; `.
        problems: String,
    },
    /// fred could not parse the URL or build a client from it.
    #[error("invalid redis url {url}")]
    InvalidUrl {
        /// The URL with its password redacted.
        url: String,
        /// fred's reason.
        #[source]
        source: fred::error::Error,
    },
    /// The fallback limiter refused the configured local share.
    #[error("the fallback limiter refused its limit")]
    Fallback(#[source] ports::LimiterError),
}
