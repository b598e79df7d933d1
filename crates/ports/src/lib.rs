//! The ports of talkgate: what the service needs from the outside world, as traits.
//!
//! Adapters implement them (`limiter-memory`, `limiter-redis`, `did-client`); the service
//! (`http-api`) holds them as `Arc<dyn …>` and never names an adapter type in its handlers.
//! This crate depends on `domain` and nothing that does I/O.
//!
//! # Layout
//! - [`limiter`]: [`ConcurrencyLimiter`], [`Permit`], [`LimiterStats`] (with its adapter-filled
//!   [`BackendStats`]), [`LimiterError`].
//! - [`video`]: [`VideoApi`] (D-ID's operations), [`VideoApiError`], [`WaitOptions`],
//!   [`VideoApiStats`] (with its adapter-filled [`ClientStats`] and [`PacingStats`]); a
//!   failed create's [`CreateFailed`], which says whether it may have reached D-ID
//!   ([`Sent`]).
//! - [`jobs`]: [`JobStore`] (durable talk jobs, claimed in priority order), [`Job`],
//!   [`JobStatus`], [`JobStoreError`].
//! - [`events`]: [`JobEvents`], told of every committed job transition (the webhooks'
//!   seam); [`NoJobEvents`] when nobody listens. Its contract binds the caller (the engine
//!   in `app`, whose tests check it).
//! - [`callbacks`]: [`CallbackSender`], one signed attempt of a job event to a caller's
//!   `callback_url` ([`CallbackDelivery`]), and why it failed ([`CallbackError`]); the
//!   durable state of a job's [`Callback`], which the job store keeps and indexes.
//! - `contract` (feature `contract`): the behaviour every limiter must show, written once and
//!   run against each adapter with `limiter_contract_tests!`.
//! - `job_contract` (feature `contract`): the same for job stores, `job_store_contract_tests!`.
//! - [`credits`]: [`CreditLedger`], tenants' credit budgets reserved before a talk and
//!   settled after it; `credit_contract` (feature `contract`), `credit_ledger_contract_tests!`.
//! - [`upload_cache`]: [`UploadCache`], uploads by tenant and content hash, so the same
//!   bytes are paid (and stored at D-ID) once; `upload_cache_contract`,
//!   `upload_cache_contract_tests!`.
//!
//! - [`records`]: [`SharedRecords`], small named values a fleet changes by compare-and-swap
//!   (the adaptive limit's and the breaker's state); `records_contract`,
//!   `records_contract_tests!`.
//!
//! # Features
//! - `mock`: mockall mocks `MockConcurrencyLimiter` and `MockVideoApi`.
//! - `contract`: the limiter and job-store contract suites (pull in tokio and rand).

pub mod callbacks;
pub mod credits;
pub mod events;
pub mod jobs;
pub mod limiter;
pub mod records;
pub mod upload_cache;
pub mod video;

#[cfg(feature = "contract")]
pub mod contract;
#[cfg(feature = "contract")]
pub mod credit_contract;
#[cfg(feature = "contract")]
pub mod job_contract;
#[cfg(feature = "contract")]
pub mod records_contract;
#[cfg(feature = "contract")]
pub mod upload_cache_contract;

pub use callbacks::{
    Callback, CallbackAttempt, CallbackDelivery, CallbackError, CallbackEvent, CallbackReceipt,
    CallbackSender, CallbackStatus,
};
pub use credits::{CreditError, CreditLedger, Reservation, Reserved, Usage};
pub use events::{JobEvent, JobEvents, NoJobEvents};
pub use jobs::{
    Attempt, CreateSent, FailureCode, Job, JobCounts, JobFailure, JobId, JobPage, JobStatus,
    JobStore, JobStoreError, Lease, LeaseTerms, ListQuery, NewJob, QueueLimits, ScopedKey,
    Submitted, TraceContext,
};
pub use limiter::{
    Acquire, BackendStats, ConcurrencyLimiter, DegradedReason, FailoverPolicy, FailoverStats,
    LimiterCounters, LimiterError, LimiterStats, Permit, PermitHandle, QueuedByPriority,
    TenantSlots,
};
pub use records::{RecordsError, SharedRecords, Swap, Versioned};
pub use upload_cache::{CachedUpload, UploadCache, UploadCacheError, UploadKey};
pub use video::{
    ClientStats, CreateFailed, PacingStats, PollSchedule, PoolStats, RetryStats, Sent, VideoApi,
    VideoApiError, VideoApiStats, WaitOptions,
};

#[cfg(feature = "mock")]
pub use limiter::MockConcurrencyLimiter;
#[cfg(feature = "mock")]
pub use video::MockVideoApi;
