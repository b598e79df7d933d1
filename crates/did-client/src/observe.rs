//! What a caller may watch of each HTTP exchange: an [`ExchangeObserver`] adds headers to a
//! request about to be sent (a W3C `traceparent`, say) and is told how each exchange ended
//! and how long it took (for an `http.client.request.duration` histogram).
//!
//! Every exchange runs in a `tracing` span named `upstream` with the attributes of the
//! OpenTelemetry HTTP client conventions (`otel.name` = `"{method} {url.template}"`,
//! `otel.kind` = `client`, `http.request.method`, `url.template`, `server.address`,
//! `server.port`, `http.request.resend_count` from the second attempt on,
//! `http.response.status_code`, `error.type`), the D-ID operation (`did.operation`), the
//! caller's priority (`talkgate.priority`) and how long the exchange waited for its limiter
//! slot (`talkgate.limiter.waited_ms`, 0 for a slot granted at once). The
//! URL carries no secret (the key is in a header), and no header is recorded. The observer's
//! [`ExchangeObserver::headers`] runs inside that span, so it can read the span's context.

use std::time::Duration;

use reqwest::header::HeaderMap;

/// How an exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeOutcome {
    /// D-ID answered with this status (any status, the error ones too).
    Answered(u16),
    /// No answer: `timeout`, `connect` (refused, reset, cut) or `protocol` (an answer that
    /// could not be read), the conventions' `error.type`.
    Failed(&'static str),
}

impl ExchangeOutcome {
    /// The status D-ID answered with, if it answered.
    pub fn status(self) -> Option<u16> {
        match self {
            ExchangeOutcome::Answered(status) => Some(status),
            ExchangeOutcome::Failed(_) => None,
        }
    }
}

/// One finished exchange, as told to [`ExchangeObserver::exchanged`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exchange {
    /// The D-ID operation (`create_talk`, `get_talk`, `upload_image`, …).
    pub operation: &'static str,
    /// The request method (`GET`, `POST`, `DELETE`).
    pub method: &'static str,
    /// The route at D-ID (`/talks/{id}`), never the path with its ids.
    pub template: &'static str,
    /// 1 for the first attempt of a call, 2 for its first retry, …
    pub attempt: u32,
    /// How it ended.
    pub outcome: ExchangeOutcome,
    /// From sending the request (the permit held) to the last byte of the answer.
    pub took: Duration,
    /// How long the exchange waited for its limiter slot (zero when granted at once): a
    /// wait means the limit bound.
    pub waited: Duration,
    /// The answer's `Retry-After`, when it had one.
    pub retry_after: Option<Duration>,
}

/// Watches the client's exchanges; both methods have empty defaults. Implementations must
/// be quick: they run on every exchange.
pub trait ExchangeObserver: Send + Sync {
    /// Adds headers to a request about to be sent, inside the exchange's span. The
    /// `Authorization`, `Accept` and `Content-Type` headers are the client's and are set
    /// after this, so an observer cannot replace them.
    fn headers(&self, headers: &mut HeaderMap) {
        let _ = headers;
    }

    /// An exchange ended.
    fn exchanged(&self, exchange: &Exchange) {
        let _ = exchange;
    }
}

/// The route template of a D-ID operation's path, for span names and labels.
pub(crate) fn template(operation: &str) -> &'static str {
    match operation {
        "upload_image" => "/images",
        "delete_image" => "/images/{id}",
        "upload_audio" => "/audios",
        "delete_audio" => "/audios/{id}",
        "create_talk" | "list_talks" => "/talks",
        "get_talk" | "delete_talk" => "/talks/{id}",
        "credits" => "/credits",
        _ => "other",
    }
}

/// The conventions' `error.type` of an exchange that got no answer.
pub(crate) fn error_type(error: &ports::VideoApiError) -> &'static str {
    match error {
        ports::VideoApiError::Timeout => "timeout",
        ports::VideoApiError::Protocol { .. } => "protocol",
        _ => "connect",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_has_a_template_without_ids() {
        for (op, t) in [
            ("upload_image", "/images"),
            ("delete_audio", "/audios/{id}"),
            ("create_talk", "/talks"),
            ("list_talks", "/talks"),
            ("get_talk", "/talks/{id}"),
            ("credits", "/credits"),
            ("something_new", "other"),
        ] {
            assert_eq!(template(op), t, "{op}");
        }
        assert_eq!(
            error_type(&ports::VideoApiError::Timeout),
            "timeout",
            "timeout"
        );
        assert_eq!(ExchangeOutcome::Answered(429).status(), Some(429));
        assert_eq!(ExchangeOutcome::Failed("connect").status(), None);
    }
}
