//! The callback port: one signed POST of a job event to a caller's `callback_url`.
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

use std::time::Duration;

use async_trait::async_trait;
use domain::CallbackUrl;

/// One attempt of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackDelivery {
    /// Where to POST.
    pub url: CallbackUrl,
    /// The delivery's id, the same on every attempt (`webhook-id`).
    pub webhook_id: String,
    /// The JSON body, signed as it is sent.
    pub payload: Vec<u8>,
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

    /// A short stable code (`refused`, `status`, `timeout`, `transport`, `busy`).
    pub fn code(&self) -> &'static str {
        match self {
            CallbackError::Refused(_) => "refused",
            CallbackError::Status { .. } => "status",
            CallbackError::Timeout(_) => "timeout",
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
