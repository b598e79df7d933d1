//! A faithful fake of the D-ID talks API, served by hyper 1 on loopback.
//!
//! The fake answers the nine D-ID routes this project uses (`/images`, `/audios`, `/talks`,
//! `/credits`) with D-ID's status codes, ids, `s3://` urls, validation rules and error bodies,
//! moves talks through `created → started → done | error | rejected` on D-ID's observed timing
//! (scaled by [`FakeBuilder::time_scale`]), and serves the finished videos from a fake S3 route
//! on the same server. Everything a test or a benchmark needs to provoke is a knob in
//! [`Faults`]: latency, 500 / 502-HTML / 504, cut connections, create-then-fail, asynchronous
//! errors, rejected and stuck talks, and 429s from an in-flight cap or a token bucket.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use did_fake::{FakeDid, Faults};
//! let fake = FakeDid::builder()
//!     .time_scale(0.001)
//!     .faults(Faults { max_in_flight_per_key: Some(4), ..Faults::default() })
//!     .spawn()
//!     .await?;
//! let base = fake.base_url(); // "http://127.0.0.1:PORT"; use `Basic talkgate:fake-key`
//! # let _ = base;
//! fake.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Outside D-ID's path space the fake has its own routes, which need no auth:
//! `GET /_fake/stats`, `POST /_fake/reset` (`?state=clear` also forgets talks and uploads),
//! `GET|POST /_fake/faults`, and `GET /_fake_s3/...` for result videos.
//!
//! # Layout
//! - [`builder`]: [`FakeDid`], [`FakeBuilder`] (configuration) and [`RunningFake`] (the handle).
//! - [`faults`]: [`Faults`], [`Latency`], [`Delay`], [`CreateThenFail`]: failure and load knobs.
//! - [`timing`]: [`Timing`], the talk timing model of the spec's §10.3.
//! - [`stats`]: [`FakeStats`], the counters behind `GET /_fake/stats`.
//! - [`webhook`]: delivery of a finished talk to its `webhook` as D-ID does it (§10.5), with
//!   [`WebhookFaults`] (drop, duplicate, delay, reorder, retries) and [`WebhookStats`].
//! - `server`: the hyper-util accept loop, connection counting and graceful shutdown.
//! - `router`: route matching, auth, throttling, injected latency and faults, stats per route.
//! - `api`: one module per resource (`uploads`, `talks`, `credits`, `s3`, `control`), plus the
//!   D-ID error bodies (`errors`) and `Authorization` parsing (`auth`).
//! - `validate`: the `POST /talks` body rules (§10.4), with D-ID's error bodies.
//! - `lifecycle`: the task that walks one talk through its states (and hands an ended talk
//!   to `webhook`).
//! - `state`: the shared store (talks, uploads, credits), RNG and counters.
//! - `util`: nanoid ids, D-ID timestamp formats, WAV durations, fake S3 signatures.

// Handlers return finished responses as their `Err` (an early answer, not a failure); a
// response is 144 bytes, which is nothing next to the socket I/O around it.
#![allow(clippy::result_large_err)]

pub mod builder;
pub mod faults;
pub mod stats;
pub mod timing;

mod api;
mod lifecycle;
mod router;
mod server;
mod state;
mod util;
mod validate;
pub mod webhook;

pub use builder::{FakeBuilder, FakeDid, RunningFake};
pub use faults::{CreateThenFail, Delay, Faults, Latency};
pub use stats::FakeStats;
pub use timing::Timing;
pub use webhook::{WebhookFaults, WebhookStats};

/// The API key every fake accepts unless told otherwise: send it as
/// `Authorization: Basic talkgate:fake-key` (or base64 of it).
pub const DEFAULT_API_KEY: &str = "talkgate:fake-key";
