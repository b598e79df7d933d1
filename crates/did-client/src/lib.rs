//! D-ID over HTTP: the reqwest adapter of [`ports::VideoApi`].
//!
//! [`DidClient`] talks to D-ID's REST API (`/images`, `/audios`, `/talks`, `/credits`) through
//! one shared, pooled `reqwest::Client`, and fixes what the original Python client got wrong:
//!
//! - **Permits per exchange.** Each HTTP exchange takes a permit from the injected
//!   [`ports::ConcurrencyLimiter`] at the caller's priority and returns it as soon as the
//!   answer is read — never held while backing off or between status polls.
//! - **Retries done right.** At most 3 attempts; timeouts, cut connections and 5xx are
//!   retried, other 4xx never; 429 becomes [`ports::VideoApiError::RateLimited`] (retried only
//!   if [`RetryPolicy::retry_rate_limited`], honouring `Retry-After` up to a cap). Backoff
//!   2 s → 4 s → 8 s, capped at 10 s, with jitter; a total deadline bounds every call; after
//!   the last attempt the caller gets the typed error itself, not a wrapper.
//! - **Pacing by D-ID's rate.** After a 429 the client spaces its sends by a rate it learns
//!   (down on a 429, up while answers come without one, held for a `Retry-After`, unpaced
//!   again after a quiet period; [`pace`]), so it stops sending into the throttle.
//! - **Exactly-once talk creation.** `POST /talks` has no idempotency key, so every create
//!   carries a random token in `user_data` (format in [`tag`]); after an ambiguous failure
//!   (timeout, cut connection, 5xx) the client looks for the token in `GET /talks` before it
//!   creates again, and reports a talk it found as created. A caller that may repeat a create
//!   from another process supplies the token ([`DidClient::create_talk_with_token`] with
//!   [`CreateToken::derive`] of its job id); the client then looks before the first attempt
//!   too. A failed create says whether any of its attempts may have reached D-ID
//!   ([`ports::CreateFailed`]'s [`ports::Sent`]): one throttled or refused before it left made
//!   nothing, and the caller's next try need not look.
//! - **Typed errors for every shape D-ID answers** (`{kind, description}`, the gateway's
//!   `{message}`/`{Message}`, HTML, empty), uploads with their real content type, one
//!   `Authorization: Basic base64(key)` for every call, a key that never reaches logs, `Debug`
//!   or errors, and a client without a key that answers
//!   [`ports::VideoApiError::NotConfigured`] without touching the network.
//!
//! # Layout
//! - [`config`]: [`DidClientConfig`] (base URL, key, pool, timeouts, deadlines, retries) and
//!   [`AuthScheme`].
//! - `client`: [`DidClient`] (construction, auth, [`DidClient::stats`]) and
//!   [`DidClientError`] for construction failures; one job a module beside it: `transport`
//!   (one exchange under one permit), `execute` (the one retry loop, with the hook for
//!   ambiguous failures), `create` (exactly-once create,
//!   [`DidClient::create_talk_with_token`]), `poll` (waiting for a talk), `video_api` (the
//!   port).
//! - [`retry`]: [`RetryPolicy`], a pure function from attempt and error to a wait.
//! - [`pace`]: [`PacingConfig`] and the pacer every exchange takes its turn from.
//! - `errors`: D-ID's answers and transport failures → [`ports::VideoApiError`],
//!   `Retry-After` parsing.
//! - [`tag`]: the create token in `user_data` ([`CreateToken`]: random, or derived from a
//!   caller's key): format, 1000-character limit, stripping.
//! - [`stats`]: [`DidClientStats`], the serializable snapshot of [`DidClient::stats`].
//! - [`observe`]: [`ExchangeObserver`], told of every exchange (headers to add, such as a
//!   W3C `traceparent`; how it ended and how long it took); each exchange runs in an
//!   `upstream` span with the OpenTelemetry HTTP client attributes.
//!
//! # Example: using did-client from your own binary
//! ```no_run
//! use std::sync::Arc;
//!
//! use did_client::{DidClient, DidClientConfig};
//! use domain::{Priority, Script, TalkRequest};
//! use limiter_memory::MemoryLimiter;
//! use ports::{ConcurrencyLimiter, VideoApi, WaitOptions};
//! use secrecy::SecretString;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // At most 4 exchanges with D-ID in flight, whoever asks; the pool keeps as many warm.
//!     let limiter: Arc<dyn ConcurrencyLimiter> = Arc::new(MemoryLimiter::new(4));
//!     let key = std::env::var("DID_API_KEY").ok().map(SecretString::from);
//!     let config = DidClientConfig {
//!         pool_max_idle_per_host: 4,
//!         ..DidClientConfig::new(did_client::DEFAULT_BASE_URL, key)
//!     };
//!     let did: Arc<dyn VideoApi> = Arc::new(DidClient::new(config, limiter)?);
//!
//!     let request = TalkRequest::new(
//!         Some("https://example.com/alice.jpg".to_owned()),
//!         Script::Text { input: "Hello from talkgate!".to_owned() },
//!     )?
//!     .with_user_data("job-42".to_owned())?;
//!     let talk = did
//!         .create_talk_and_wait(&request, &Priority::High.into(), WaitOptions::default())
//!         .await?;
//!     tracing::info!(talk_id = %talk.id, result_url = ?talk.result_url, "video ready");
//!     Ok(())
//! }
//! ```

mod client;
pub mod config;
mod create;
mod errors;
mod execute;
pub mod observe;
pub mod pace;
mod poll;
pub mod retry;
pub mod stats;
pub mod tag;
mod transport;
mod video_api;

pub use client::{DidClient, DidClientError};
pub use config::{AuthScheme, DEFAULT_BASE_URL, DidClientConfig};
pub use observe::{Exchange, ExchangeObserver, ExchangeOutcome};
pub use pace::PacingConfig;
pub use ports::{ClientStats, PoolStats, RetryStats};
pub use retry::{RetryDecision, RetryPolicy};
pub use stats::DidClientStats;
pub use tag::{CreateToken, InvalidCreateToken};
