//! [`DidClient`]: construction, authentication and stats. What a call does lives beside it,
//! one job a file: `transport` (one exchange under one permit), `execute` (the one retry loop),
//! `create` (exactly-once `POST /talks`), `poll` (waiting for a talk), `video_api` (the port).

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use ports::ConcurrencyLimiter;
use reqwest::header::HeaderValue;
use secrecy::{ExposeSecret, SecretString};

use crate::config::{AuthScheme, DidClientConfig};
use crate::observe::ExchangeObserver;
use crate::pace::{self, Pacer};
use crate::stats::{Counters, DidClientStats};

/// Why a [`DidClient`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DidClientError {
    /// The base URL is not an `http://` or `https://` URL.
    #[error("invalid D-ID base URL {url:?}: expected an http:// or https:// URL")]
    InvalidBaseUrl {
        /// The rejected URL.
        url: String,
    },
    /// The API key contains characters that cannot go into an HTTP header.
    #[error("the D-ID API key contains characters not allowed in an HTTP header")]
    InvalidApiKey,
    /// reqwest could not build its client (TLS initialisation).
    #[error("could not build the HTTP client")]
    Http(#[source] reqwest::Error),
    /// The pacing settings are out of their bounds.
    #[error("invalid pacing settings: {0}")]
    InvalidPacing(String),
}

/// The D-ID adapter of [`VideoApi`](ports::VideoApi): one pooled `reqwest::Client`, a limiter permit per
/// exchange, retries with backoff, exactly-once talk creation. See the crate docs.
pub struct DidClient {
    pub(crate) http: reqwest::Client,
    pub(crate) config: DidClientConfig,
    /// `config.base_url` without a trailing slash.
    pub(crate) base: String,
    /// The prebuilt, sensitive-marked `Authorization` value; `None` when no key is set.
    pub(crate) auth: Option<HeaderValue>,
    pub(crate) limiter: Arc<dyn ConcurrencyLimiter>,
    /// Shared with the exchange tasks, which may outlive the call that started them.
    pub(crate) counters: Arc<Counters>,
    /// Told of every exchange ([`DidClient::with_observer`]).
    pub(crate) observer: Option<Arc<dyn ExchangeObserver>>,
    /// Paces sends by the rate D-ID allows; `None` when pacing is off. Shared with the
    /// exchange tasks, which tell it D-ID's answers.
    pub(crate) pacer: Option<Arc<Pacer>>,
    /// The base URL's host and port, for the exchange spans' `server.*` attributes.
    pub(crate) server: (String, u16),
}

impl fmt::Debug for DidClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DidClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The `Authorization` header for `key`, marked sensitive so no log or `Debug` prints it.
fn auth_header(
    key: &SecretString,
    scheme: AuthScheme,
) -> Result<Option<HeaderValue>, DidClientError> {
    let key = key.expose_secret().trim();
    if key.is_empty() {
        return Ok(None);
    }
    let token = match scheme {
        AuthScheme::Rfc7617 => base64::engine::general_purpose::STANDARD.encode(key),
        AuthScheme::Literal => key.to_owned(),
    };
    let mut value = HeaderValue::from_str(&format!("Basic {token}"))
        .map_err(|_| DidClientError::InvalidApiKey)?;
    value.set_sensitive(true);
    Ok(Some(value))
}

impl DidClient {
    /// Builds the client and its connection pool. Without an API key the client works, but
    /// every call returns [`VideoApiError::NotConfigured`](ports::VideoApiError::NotConfigured).
    pub fn new(
        config: DidClientConfig,
        limiter: Arc<dyn ConcurrencyLimiter>,
    ) -> Result<DidClient, DidClientError> {
        let base = config.base_url.trim_end_matches('/').to_owned();
        let server = reqwest::Url::parse(&base)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .and_then(|u| Some((u.host_str()?.to_owned(), u.port_or_known_default()?)));
        let Some(server) = server else {
            return Err(DidClientError::InvalidBaseUrl {
                url: config.base_url.clone(),
            });
        };
        let auth = match &config.api_key {
            Some(key) => auth_header(key, config.auth_scheme)?,
            None => None,
        };
        config
            .pacing
            .validate()
            .map_err(DidClientError::InvalidPacing)?;
        let pacer = config
            .pacing
            .enabled
            .then(|| Arc::new(Pacer::new(config.pacing)));
        let http = reqwest::Client::builder()
            .user_agent(concat!("talkgate-did-client/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .pool_idle_timeout(config.pool_idle_timeout)
            .connect_timeout(config.connect_timeout)
            // D-ID does not redirect; following one could send the key elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            // Our own policy owns retries; reqwest must not repeat a POST /talks on its own.
            .retry(reqwest::retry::never())
            .build()
            .map_err(DidClientError::Http)?;
        Ok(DidClient {
            http,
            base,
            auth,
            limiter,
            counters: Arc::default(),
            observer: None,
            pacer,
            server,
            config,
        })
    }

    /// This client telling `observer` of every exchange (see [`ExchangeObserver`]).
    pub fn with_observer(mut self, observer: Arc<dyn ExchangeObserver>) -> DidClient {
        self.observer = Some(observer);
        self
    }

    /// The configuration the client was built with.
    pub fn config(&self) -> &DidClientConfig {
        &self.config
    }

    /// Whether an API key is set (calls are made at all).
    pub fn is_configured(&self) -> bool {
        self.auth.is_some()
    }

    /// Pool configuration and counters since the client was built, and what the pacer does.
    pub fn stats(&self) -> DidClientStats {
        let mut stats = self.counters.snapshot(&self.config, self.auth.is_some());
        stats.pacing = match &self.pacer {
            Some(pacer) => pacer.stats(),
            None => pace::stats_off(&self.config.pacing),
        };
        stats
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    use ports::MockConcurrencyLimiter;

    /// A limiter that must never be asked: the assertion is that no call reaches it.
    pub(crate) fn untouchable_limiter() -> Arc<dyn ConcurrencyLimiter> {
        let mut limiter = MockConcurrencyLimiter::new();
        limiter.expect_acquire().never();
        Arc::new(limiter)
    }

    #[test]
    fn the_auth_header_is_basic_base64_of_the_key_and_sensitive() {
        let key = SecretString::from("dXNlckBleGFtcGxlLmNvbQ:AbCdEf");
        let value = auth_header(&key, AuthScheme::Rfc7617).unwrap().unwrap();
        assert!(value.is_sensitive());
        assert_eq!(
            value.to_str().unwrap(),
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("dXNlckBleGFtcGxlLmNvbQ:AbCdEf")
            )
        );
        assert!(!format!("{value:?}").contains("AbCdEf"));
        let literal = auth_header(&key, AuthScheme::Literal).unwrap().unwrap();
        assert_eq!(
            literal.to_str().unwrap(),
            "Basic dXNlckBleGFtcGxlLmNvbQ:AbCdEf"
        );
        assert!(matches!(
            auth_header(&SecretString::from("bad\nkey"), AuthScheme::Literal),
            Err(DidClientError::InvalidApiKey)
        ));
    }

    #[test]
    fn debug_and_stats_never_show_the_key() {
        let config = DidClientConfig::new(
            "https://api.d-id.com/",
            Some(SecretString::from("someone:s3cr3t-value")),
        );
        let client = DidClient::new(config, untouchable_limiter()).unwrap();
        let debug = format!("{client:?}");
        let stats = serde_json::to_string(&client.stats()).unwrap();
        for text in [&debug, &stats] {
            assert!(!text.contains("s3cr3t"), "{text}");
            let encoded = base64::engine::general_purpose::STANDARD.encode("someone:s3cr3t-value");
            assert!(!text.contains(&encoded), "{text}");
        }
        assert!(client.stats().client.api_key_configured);
    }

    #[test]
    fn pacing_out_of_bounds_is_refused_when_the_client_is_built() {
        let config = DidClientConfig {
            pacing: crate::PacingConfig {
                decrease: 1.5,
                ..crate::PacingConfig::default()
            },
            ..DidClientConfig::new("https://api.d-id.com", None)
        };
        let err = DidClient::new(config, untouchable_limiter()).unwrap_err();
        assert!(
            matches!(&err, DidClientError::InvalidPacing(m) if m.contains("decrease")),
            "{err}"
        );
        let off = DidClientConfig {
            pacing: crate::PacingConfig::off(),
            ..DidClientConfig::new("https://api.d-id.com", None)
        };
        let client = DidClient::new(off, untouchable_limiter()).unwrap();
        assert!(client.pacer.is_none());
        assert!(!client.stats().pacing.enabled);
    }

    #[test]
    fn base_urls_must_be_http_or_https() {
        for bad in ["", "api.d-id.com", "ftp://x", "http://"] {
            let config = DidClientConfig::new(bad, None);
            assert!(
                matches!(
                    DidClient::new(config, untouchable_limiter()),
                    Err(DidClientError::InvalidBaseUrl { .. })
                ),
                "{bad:?}"
            );
        }
    }
}
