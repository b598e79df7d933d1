//! The ports of talkgate: what the service needs from the outside world, as traits.
//!
//! Adapters implement them (`limiter-memory`, `limiter-redis`, `did-client`); the service
//! (`http-api`) holds them as `Arc<dyn …>` and never names an adapter type in its handlers.
//! This crate depends on `domain` and nothing that does I/O.
//!
//! # Layout
//! - [`limiter`]: [`ConcurrencyLimiter`], [`Permit`], [`LimiterStats`], [`LimiterError`].
//! - [`video`]: [`VideoApi`] (D-ID's operations), [`VideoApiError`], [`WaitOptions`],
//!   [`VideoApiStats`].
//! - `contract` (feature `contract`): the behaviour every limiter must show, written once and
//!   run against each adapter with `limiter_contract_tests!`.
//!
//! # Features
//! - `mock`: mockall mocks `MockConcurrencyLimiter` and `MockVideoApi`.
//! - `contract`: the limiter contract suite (pulls in tokio and rand).

pub mod limiter;
pub mod video;

#[cfg(feature = "contract")]
pub mod contract;

pub use limiter::{
    ConcurrencyLimiter, DegradedReason, FailoverStats, LimiterCounters, LimiterError, LimiterStats,
    Permit, PermitHandle, QueuedByPriority,
};
pub use video::{PoolStats, RetryStats, VideoApi, VideoApiError, VideoApiStats, WaitOptions};

#[cfg(feature = "mock")]
pub use limiter::MockConcurrencyLimiter;
#[cfg(feature = "mock")]
pub use video::MockVideoApi;
