//! The callback port: one signed POST of a job event to a caller's `callback_url`, and the
//! durable state of a job's callback ([`Callback`]) that the job store keeps with the job.
//!
//! The engine decides *what* to send and *when* (the event, its `webhook-id`, the retry
//! schedule); an adapter sends one attempt and says how it went. `callback-sender` is the
//! adapter: Standard Webhooks signatures, and the SSRF rules (https by default, no internal
//! addresses, the address it connects to checked, no redirects, a capped answer, a timeout).
//!
//! # Contract
//! - one [`CallbackSender::send`] is at most one HTTP request, to the URL's host only;
//! - a 2xx answer is `Ok`; anything else is a [`CallbackError`], whose
//!   [`is_permanent`](CallbackError::is_permanent) says whether trying again can help;
//! - every attempt of one delivery carries the same `webhook-id` (the caller's dedupe key)
//!   and a fresh `webhook-timestamp`.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use domain::CallbackUrl;
use serde::{Deserialize, Serialize};

/// The most delivery attempts a callback remembers; older ones are dropped first (the count
/// in [`Callback::attempts`] goes on).
pub const MAX_CALLBACK_ATTEMPTS_KEPT: usize = 16;

/// What a callback tells: how the job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CallbackEvent {
    /// The talk is done; the job has its `result_url`.
    #[serde(rename = "talk.done")]
    TalkDone,
    /// The job ended without a video (D-ID's `error`, a timeout, an upstream failure).
    #[serde(rename = "talk.failed")]
    TalkFailed,
    /// D-ID rejected the talk (its `rejected` state: moderation).
    #[serde(rename = "talk.rejected")]
    TalkRejected,
    /// The job was cancelled while queued; no talk was made.
    #[serde(rename = "job.cancelled")]
    JobCancelled,
}

impl CallbackEvent {
    /// Every event, in the order above.
    pub const ALL: [CallbackEvent; 4] = [
        CallbackEvent::TalkDone,
        CallbackEvent::TalkFailed,
        CallbackEvent::TalkRejected,
        CallbackEvent::JobCancelled,
    ];

    /// The dotted name, as in the payload's `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            CallbackEvent::TalkDone => "talk.done",
            CallbackEvent::TalkFailed => "talk.failed",
            CallbackEvent::TalkRejected => "talk.rejected",
            CallbackEvent::JobCancelled => "job.cancelled",
        }
    }
}

impl fmt::Display for CallbackEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a callback's delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallbackStatus {
    /// Not delivered yet; the next attempt is at [`Callback::next_attempt_ms`].
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Given up: a permanent refusal, or the retry horizon passed.
    Failed,
}

impl CallbackStatus {
    /// The lowercase name, as in JSON and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            CallbackStatus::Pending => "pending",
            CallbackStatus::Delivered => "delivered",
            CallbackStatus::Failed => "failed",
        }
    }
}

/// One delivery attempt, as remembered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackAttempt {
    /// When it was sent, ms since the epoch.
    pub at_ms: u64,
    /// How it ended: `ok`, or a [`CallbackError::code`].
    pub outcome: String,
    /// The receiver's status, where it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// What went wrong, without secrets (empty on success).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// How long it took, ms.
    pub took_ms: u64,
}

/// The durable state of a job's callback: armed by the write that ends the job (so a crash
/// cannot lose it between the two), delivered at least once by whichever instance's callback
/// workers claim it ([`crate::JobStore::claim_callback`]), under one `webhook-id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Callback {
    /// What it tells.
    pub event: CallbackEvent,
    /// The `webhook-id` of every attempt.
    pub webhook_id: String,
    /// Where its delivery stands.
    pub status: CallbackStatus,
    /// When it was armed (the job's end), ms since the epoch; the payload's `timestamp`.
    pub created_ms: u64,
    /// When the next attempt is due, ms since the epoch (while pending).
    pub next_attempt_ms: u64,
    /// Attempts sent so far.
    pub attempts: u32,
    /// The newest [`MAX_CALLBACK_ATTEMPTS_KEPT`] attempts.
    #[serde(default)]
    pub history: Vec<CallbackAttempt>,
    /// When it was delivered or given up, ms since the epoch.
    #[serde(default)]
    pub ended_ms: Option<u64>,
}

impl Callback {
    /// A callback of `event`, due at once.
    pub fn new(event: CallbackEvent, webhook_id: String, now_ms: u64) -> Callback {
        Callback {
            event,
            webhook_id,
            status: CallbackStatus::Pending,
            created_ms: now_ms,
            next_attempt_ms: now_ms,
            attempts: 0,
            history: Vec::new(),
            ended_ms: None,
        }
    }

    /// Whether it still has to be delivered.
    pub fn is_pending(&self) -> bool {
        self.status == CallbackStatus::Pending
    }

    /// Appends an attempt, dropping the oldest beyond [`MAX_CALLBACK_ATTEMPTS_KEPT`].
    pub fn record(&mut self, attempt: CallbackAttempt) {
        self.attempts = self.attempts.saturating_add(1);
        self.history.push(attempt);
        if self.history.len() > MAX_CALLBACK_ATTEMPTS_KEPT {
            let extra = self.history.len() - MAX_CALLBACK_ATTEMPTS_KEPT;
            self.history.drain(..extra);
        }
    }
}

/// One attempt of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackDelivery {
    /// Where to POST.
    pub url: CallbackUrl,
    /// The delivery's id, the same on every attempt (`webhook-id`).
    pub webhook_id: String,
    /// The JSON body, signed as it is sent.
    pub payload: Vec<u8>,
    /// The W3C trace context to send (`traceparent`, `tracestate`), so the receiver can
    /// continue the delivery's trace; `None` when nothing is traced.
    pub trace: Option<crate::jobs::TraceContext>,
}

/// How a 2xx attempt went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallbackReceipt {
    /// The receiver's status.
    pub status: u16,
    /// How long the attempt took.
    pub took: Duration,
}

/// Why an attempt was not a success.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    /// The destination is not allowed (scheme, host name, or an address it resolves to);
    /// nothing was sent. Permanent.
    #[error("callback refused: {0}")]
    Refused(String),
    /// The receiver answered, but not with a 2xx.
    #[error("callback answered {status}")]
    Status {
        /// Its status.
        status: u16,
    },
    /// No answer within the attempt's timeout.
    #[error("callback timed out after {0:?}")]
    Timeout(Duration),
    /// No connection or no complete answer (DNS, connect, TLS, reset).
    #[error("callback not delivered: {0}")]
    Transport(String),
    /// Too many attempts to this endpoint are under way; try later. Nothing was sent.
    #[error("callback endpoint busy")]
    Busy,
}

impl CallbackError {
    /// Whether trying the same delivery again cannot succeed: a refused destination, or a
    /// receiver that says the request itself is wrong (a 4xx other than 408, 409 and 429).
    pub fn is_permanent(&self) -> bool {
        match self {
            CallbackError::Refused(_) => true,
            CallbackError::Status { status } => {
                (400..500).contains(status) && !matches!(status, 408 | 409 | 429)
            }
            CallbackError::Timeout(_) | CallbackError::Transport(_) | CallbackError::Busy => false,
        }
    }

    /// A short stable code (`refused`, `status`, `timed_out`, `transport`, `busy`).
    pub fn code(&self) -> &'static str {
        match self {
            CallbackError::Refused(_) => "refused",
            CallbackError::Status { .. } => "status",
            CallbackError::Timeout(_) => "timed_out",
            CallbackError::Transport(_) => "transport",
            CallbackError::Busy => "busy",
        }
    }
}

/// Sends callbacks. Object-safe; inject it as `Arc<dyn CallbackSender>`.
#[async_trait]
pub trait CallbackSender: Send + Sync {
    /// One attempt of `delivery` (see the module's contract).
    async fn send(&self, delivery: &CallbackDelivery) -> Result<CallbackReceipt, CallbackError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_and_states_have_their_wire_names() {
        for event in CallbackEvent::ALL {
            assert_eq!(
                serde_json::to_value(event).unwrap(),
                serde_json::json!(event.as_str())
            );
        }
        assert_eq!(
            serde_json::to_value(CallbackStatus::Delivered).unwrap(),
            serde_json::json!("delivered")
        );
    }

    #[test]
    fn a_callback_keeps_its_newest_attempts_and_counts_all() {
        let mut cb = Callback::new(CallbackEvent::TalkDone, "msg_1".into(), 5);
        assert!(cb.is_pending());
        for n in 0..(MAX_CALLBACK_ATTEMPTS_KEPT as u64 + 3) {
            cb.record(CallbackAttempt {
                at_ms: n,
                outcome: "timeout".into(),
                status: None,
                error: String::new(),
                took_ms: 1,
            });
        }
        assert_eq!(cb.attempts as usize, MAX_CALLBACK_ATTEMPTS_KEPT + 3);
        assert_eq!(cb.history.len(), MAX_CALLBACK_ATTEMPTS_KEPT);
        assert_eq!(cb.history[0].at_ms, 3, "the oldest went first");
    }

    #[test]
    fn only_refusals_and_request_errors_are_permanent() {
        assert!(CallbackError::Refused("loopback".into()).is_permanent());
        for status in [400, 401, 404, 410, 422] {
            assert!(CallbackError::Status { status }.is_permanent(), "{status}");
        }
        for status in [408, 409, 429, 500, 503] {
            assert!(!CallbackError::Status { status }.is_permanent(), "{status}");
        }
        assert!(!CallbackError::Timeout(Duration::from_secs(1)).is_permanent());
        assert!(!CallbackError::Busy.is_permanent());
    }
}
