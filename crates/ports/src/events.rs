//! The job-events port: told of every committed change of a job's state, so that an adapter
//! can report it (the webhooks feature delivers it to the job's `callback_url`).
//!
//! # Contract
//! - the engine calls [`JobEvents::job_changed`] once per committed transition (a submit
//!   is the transition from nothing to its first state), after the store has it: an adapter
//!   that reads the job back sees the new state;
//! - the calls for one job come in the order of its transitions;
//! - a call must not hold the engine up: an adapter that does I/O queues its work (bounded)
//!   and returns; it cannot fail the transition, which is committed already.

use async_trait::async_trait;

use crate::jobs::{Job, JobStatus};

/// A committed change of a job's state.
#[derive(Debug, Clone, PartialEq)]
pub struct JobEvent {
    /// The job as stored after the change.
    pub job: Job,
    /// The state it left; `None` for a job just submitted.
    pub from: Option<JobStatus>,
}

/// Where the engine reports job transitions. Object-safe; inject it as
/// `Arc<dyn JobEvents>`.
#[async_trait]
pub trait JobEvents: Send + Sync {
    /// The job `event.job` changed state (see the module's contract).
    async fn job_changed(&self, event: &JobEvent);
}

/// Reports nothing: the engine's events when no adapter listens.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoJobEvents;

#[async_trait]
impl JobEvents for NoJobEvents {
    async fn job_changed(&self, _event: &JobEvent) {}
}
