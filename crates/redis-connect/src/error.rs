//! [`ConfigError`]: why a client could not be built from a
//! [`RedisConnectionConfig`](crate::RedisConnectionConfig).
//!
//! Connection failures never use this type: a Redis that refuses or does not answer is a
//! [`ConnectError`](crate::ConnectError) (from [`connect`](crate::connect)) or a
//! [`BackendError`](crate::BackendError) (a failed call).

/// Why a client could not be built: a config that can never work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// One or more config fields are out of range (all problems are listed).
    #[error("invalid redis config: {problems}")]
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
    /// A TLS file of [`RedisTlsConfig`](crate::RedisTlsConfig) cannot be used: it cannot be
    /// read, holds no usable PEM item, or (the key) does not match the certificate.
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
}
