//! Traces across time: a job remembers the trace of the request that submitted it
//! ([`ports::TraceContext`], stored with the job), and each later step of the job — a
//! worker's step, a D-ID webhook's receipt, a callback's delivery — runs in a span linked to
//! that trace, minutes or hours later, on any instance.
//!
//! The engine only names its spans (`job.step`, `job.update`, `talk_webhook.receive`,
//! `callback.deliver`, each with `job.id` and `job.status`) and asks a [`JobTraces`] for the
//! rest: what the current trace is when a job is submitted, and how a span is linked to a
//! stored one. The service's implementation speaks OpenTelemetry; without one (the default)
//! nothing is stored and nothing linked.

use std::sync::Arc;
use std::sync::PoisonError;

use ports::TraceContext;

use crate::engine::Jobs;

/// How the engine reaches the trace machinery (the service's OpenTelemetry bridge).
pub trait JobTraces: Send + Sync {
    /// The context of the current span, to store with a job being submitted; `None` when
    /// nothing is traced.
    fn current(&self) -> Option<TraceContext>;

    /// Links `span` to the stored `trace` (the submit's), so a step long after the request
    /// is found from it.
    fn link(&self, span: &tracing::Span, trace: &TraceContext);
}

impl Jobs {
    /// Where the engine stores and links trace contexts (see [`crate::traces`]). Without,
    /// jobs carry none.
    pub fn set_traces(&self, traces: Arc<dyn JobTraces>) {
        *self.traces.write().unwrap_or_else(PoisonError::into_inner) = Some(traces);
    }

    fn traces(&self) -> Option<Arc<dyn JobTraces>> {
        self.traces
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The current trace context, for a job being submitted.
    pub(crate) fn current_trace(&self) -> Option<TraceContext> {
        self.traces().and_then(|t| t.current())
    }

    /// Links `span` to the trace `job` was submitted in, if it has one.
    pub(crate) fn link_to_submit(&self, span: &tracing::Span, job: &ports::Job) {
        if let (Some(traces), Some(trace)) = (self.traces(), &job.trace) {
            traces.link(span, trace);
        }
    }
}
