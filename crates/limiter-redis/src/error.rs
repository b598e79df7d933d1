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
    /// A TLS file of [`RedisTlsConfig`](crate::RedisTlsConfig) cannot be used: it
    /// cannot be read, holds no usable PEM item, or (the key) does not match the certificate.
    #[error("redis tls {setting} {path}: {problem}")]
    TlsFile {
        /// Which option named the file: `ca_file`, `cert_file` or `key_file`.
        setting: &'static str,
        /// The file, as configured.
        path: String,
        /// What is wrong with it, e.g. `cannot be read`.
        problem: String,
        /// The underlying error (I/O, PEM, rustls), when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// TLS was asked for (`rediss://`) but cannot be set up, e.g. no system root
    /// certificates were found and no `ca_file` was given.
    #[error("redis tls cannot be set up: {problem}")]
    Tls {
        /// What is missing, and what to do about it.
        problem: String,
    },
    /// The fallback limiter refused the configured local share.
    #[error("the fallback limiter refused its limit")]
    Fallback(#[source] ports::LimiterError),
}

/// The connection's errors keep their variants here, so a caller matches one enum.
impl From<redis_connect::ConfigError> for RedisLimiterError {
    fn from(e: redis_connect::ConfigError) -> Self {
        use redis_connect::ConfigError;
        match e {
            ConfigError::InvalidConfig { problems } => {
                RedisLimiterError::InvalidConfig { problems }
            }
            ConfigError::InvalidUrl { url, source } => {
                RedisLimiterError::InvalidUrl { url, source }
            }
            ConfigError::TlsFile {
                setting,
                path,
                problem,
                source,
            } => RedisLimiterError::TlsFile {
                setting,
                path,
                problem,
                source,
            },
            ConfigError::Tls { problem } => RedisLimiterError::Tls { problem },
        }
    }
}
