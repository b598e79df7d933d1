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
    /// The connection settings cannot work: the URL cannot be parsed, a TLS file of
    /// [`RedisTlsConfig`](crate::RedisTlsConfig) cannot be used, or TLS cannot be set up
    /// (see [`redis_connect::ConfigError`]; its range problems are [`Self::InvalidConfig`]'s).
    #[error(transparent)]
    Connection(redis_connect::ConfigError),
    /// The fallback limiter refused the configured local share.
    #[error("the fallback limiter refused its limit")]
    Fallback(#[source] ports::LimiterError),
}

/// The connection's range problems join the limiter's list; its other errors are carried.
impl From<redis_connect::ConfigError> for RedisLimiterError {
    fn from(e: redis_connect::ConfigError) -> Self {
        match e {
            redis_connect::ConfigError::InvalidConfig { problems } => {
                RedisLimiterError::InvalidConfig { problems }
            }
            other => RedisLimiterError::Connection(other),
        }
    }
}
