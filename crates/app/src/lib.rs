//! talkgate's application layer: the use cases over the ports, with no transport in sight.
//!
//! - [`Jobs`] ([`engine`]): the job engine. Workers claim jobs from the [`ports::JobStore`]
//!   under a lease that a background task renews, a request that works on its own job holds
//!   its claim ([`Hold`]) and gives it back when dropped, finished jobs are purged after their
//!   retention, and one look per instance asks the store when the next job is due.
//! - [`steps`]: one step of a claimed job: create its talk (or adopt the one an earlier
//!   attempt made), poll it, schedule the next poll, classify a failure.
//! - [`admission`]: a request becomes a job: its fingerprint, its create key, the keys being
//!   accepted here, the submit with its `Idempotency-Key` decision, and the drain rate behind
//!   a full queue's retry delay.
//! - [`generate`]: the synchronous (and asynchronous) generate, and re-attaching a replay to
//!   the job of its key.
//! - [`queries`]: reading, listing and cancelling jobs.
//! - [`talk_webhooks`]: D-ID's webhook when a talk ends — a per-job token, a receipt that
//!   makes the job due (its poll confirms), slow fallback polls while one is expected.
//! - [`callbacks`]: talkgate → caller — the callback armed by the write that ends a job,
//!   delivered at least once by the callback workers with back-off over a horizon.
//! - [`credits`]: tenants' credit budgets — a job reserves its estimated credits before it
//!   is stored, the write that ends it settles them, a sweep ends what was left behind.
//! - [`traces`]: a job keeps the trace of the request that submitted it; its later steps
//!   run in spans linked to it ([`JobTraces`], the service's OpenTelemetry bridge).
//! - [`upstream`]: the gate in front of D-ID — the adaptive limit and the circuit breaker
//!   ([`Upstream`]), their state shared by the fleet through [`ports::SharedRecords`].
//! - [`failure`]: how a failed call becomes a job's stored failure.
//! - [`counted`]: the job store with its calls counted.
//! - [`mod@cutoff`]: the shutdown's cut-off signal, and where a request records its talk and job.
//! - [`error`]: [`AppError`], the one closed error of every use case.
//!
//! It depends on `domain` and `ports` only: which adapters stand behind the ports, and how
//! the use cases are reached (HTTP in `http-api`), is decided by the caller.

pub mod admission;
pub mod callbacks;
pub mod counted;
pub mod credits;
pub mod cutoff;
pub mod engine;
pub mod error;
pub mod failure;
pub mod generate;
pub mod queries;
pub mod steps;
pub mod talk_webhooks;
pub mod traces;
pub mod upstream;

use std::time::{SystemTime, UNIX_EPOCH};

pub use admission::{Accepting, Admitted, create_key, fingerprint, keyed_create_key, new_job_id};
pub use callbacks::{CallbackCounts, CallbackSettings, RenderCallback};
pub use cutoff::{Cutoff, CutoffTrigger, TalkSlot, cutoff};
pub use engine::{Hold, IDLE_LOOK, Jobs, JobsConfig, TenantShares, purge_period};
pub use error::AppError;
pub use failure::{failure_is_retryable, failure_of};
pub use generate::{GenerateInput, Generated, Replay};
pub use steps::{CreateMode, MAX_CREATE_ATTEMPTS, RESULT_TTL};
pub use talk_webhooks::{TalkWebhookCounts, TalkWebhookReceipt, TalkWebhooks};
pub use traces::JobTraces;
pub use upstream::{Upstream, UpstreamSettings, UpstreamStats};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
