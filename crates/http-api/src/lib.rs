//! talkgate's HTTP service: the original Python router's routes on hyper 1, in front of the
//! [`ports::VideoApi`] and [`ports::ConcurrencyLimiter`] ports.
//!
//! A request goes: accept loop ([`server`]) → request span with `request_id` → [`router`]
//! (404/405, bearer auth) → a handler ([`handlers`] for D-ID, [`ops`] for stats, probes,
//! metrics) → one port call → `Result<Response, ApiError>` → [`error`], the one place where
//! errors become HTTP.
//!
//! # Layout
//! - [`config`]: [`Config`] from a [`config::Source`] (env map or flags), all errors at once;
//!   every setting declared once ([`config::SETTINGS`]), flags and `--help` made from it.
//! - [`wiring`]: builds the adapters a config asks for and the [`AppState`].
//! - [`state`]: [`AppState`], [`Settings`].
//! - [`server`]: [`run`], the accept loop, graceful shutdown, panic catching, request ids.
//! - [`mod@cutoff`]: how a request carries its talk slot (the signal and the slot are
//!   [`mod@app::cutoff`]'s).
//! - [`head`]: the request head's size limits (414, 431), checked before routing.
//! - [`router`]: the route table and the auth rule per route.
//! - [`uri`]: the route prefix, a talk's status URL, query parameters.
//! - [`handlers`]: `generate-video`, `upload-source-image`, `upload-audio`, `talk-status`.
//! - [`job_routes`]: `POST /jobs`, `GET /jobs`, `GET /jobs/{id}`, `DELETE /jobs/{id}`, and
//!   the `Idempotency-Key` rules.
//! - [`store_open`]: a job store that could not be opened at start, opened again in the
//!   background (its calls 503 meanwhile, and it says why).
//! - [`ops`]: `stats`, `health`, `ready`, `metrics`, `cleanup-expired`.
//! - [`body`]: JSON and multipart bodies, always size-limited.
//! - [`auth`]: bearer tokens compared in constant time.
//! - [`error`]: [`ApiError`] and its mapping to status, code and headers.
//! - [`metrics`]: the Prometheus registry and [`metrics::MeteredLimiter`].
//! - [`telemetry`]: the tracing subscriber (human or JSON).
//! - [`traces`]: OpenTelemetry traces over OTLP (when the `OTEL_*` variables ask), the
//!   W3C trace context in and out, the job engine's and did-client's bridges.

pub mod account;
pub mod auth;
pub mod body;
pub mod budgets;
pub mod config;
pub mod cutoff;
pub mod error;
pub mod handlers;
pub mod head;
pub mod job_routes;
pub mod metrics;
pub mod ops;
pub mod router;
pub mod server;
pub mod state;
pub mod store_open;
pub mod talk_webhooks;
pub mod telemetry;
pub mod tenants;
pub mod time_text;
pub mod traces;
pub mod upload_cache;
pub mod uri;
pub mod wiring;

pub use config::{Config, ConfigError, LogFormat};
pub use error::ApiError;
pub use server::{run, shutdown_signal};
pub use state::{AppState, Settings};
