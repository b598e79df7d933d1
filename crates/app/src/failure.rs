//! How a failed D-ID call is told to the caller: its [`FailureCode`], the message, and the
//! fields beside them ([`Described`]); a job stores the first two ([`failure_of`]), the HTTP
//! service answers with all of it. Which failures a replay may try again
//! ([`failure_is_retryable`]).
//!
//! D-ID's own descriptions are passed on (they explain what to fix), capped and without
//! control characters ([`client_text`]); D-ID's free-form `details` object never is: an
//! upstream (or a proxy in front of it) may echo request headers into it.

use domain::TalkId;
use ports::{FailureCode, Job, JobFailure, JobStatus, LimiterError, VideoApiError};

/// The longest upstream `description` passed on to a client, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 300;

/// What a caller is told about a failed D-ID call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    /// The stable code.
    pub code: FailureCode,
    /// The message, without secrets and without internals.
    pub message: String,
    /// The talk the failure is about.
    pub talk_id: Option<TalkId>,
    /// D-ID's error kind, capped.
    pub upstream_kind: Option<String>,
    /// D-ID's description of a failed or rejected talk, capped.
    pub description: Option<String>,
}

/// Tells `error` to a caller.
pub fn describe(error: &VideoApiError) -> Described {
    use VideoApiError as V;
    let mut said = Described {
        code: FailureCode::of(error),
        message: String::new(),
        talk_id: None,
        upstream_kind: None,
        description: None,
    };
    said.message = match error {
        V::NotConfigured => {
            "D-ID is not configured on this service: set D_ID_API_KEY and restart".to_owned()
        }
        V::Unauthorized { .. } => {
            "D-ID rejected this service's credentials; an operator must check D_ID_API_KEY"
                .to_owned()
        }
        V::Forbidden { description } => {
            format!("D-ID refused permission: {}", client_text(description))
        }
        V::InsufficientCredits => error.to_string(),
        V::NotFound { description } => {
            // D-ID's description is usually "not found" itself: say it once.
            let d = client_text(description);
            if d.is_empty() || d.to_ascii_lowercase().contains("not found") {
                format!("D-ID: {}", if d.is_empty() { "not found" } else { &d })
            } else {
                format!("not found at D-ID: {d}")
            }
        }
        V::NotReady { description } => {
            format!("D-ID resource not ready: {}", client_text(description))
        }
        V::Validation {
            kind, description, ..
        } => {
            said.upstream_kind = Some(client_text(kind));
            format!(
                "D-ID rejected the request ({}): {}",
                client_text(kind),
                client_text(description)
            )
        }
        V::RateLimited { .. } => {
            "D-ID is rate limiting this service; retry after the Retry-After delay".to_owned()
        }
        V::Server { status } => format!("D-ID failed (HTTP {status}) after retries; retry later"),
        V::Timeout => error.to_string(),
        V::Connect { .. } => "D-ID could not be reached; retry later".to_owned(),
        V::Protocol { .. } => {
            "D-ID sent an answer this service could not read; retry later".to_owned()
        }
        V::TalkFailed {
            talk_id,
            kind,
            description,
        } => {
            said.talk_id = Some(talk_id.clone());
            said.upstream_kind = Some(client_text(kind));
            said.description = Some(client_text(description));
            format!(
                "talk {talk_id} failed ({}): {}",
                client_text(kind),
                client_text(description)
            )
        }
        V::TalkRejected {
            talk_id,
            description,
        } => {
            said.talk_id = Some(talk_id.clone());
            said.description = Some(client_text(description));
            format!("talk {talk_id} was rejected: {}", client_text(description))
        }
        V::TalkTimedOut { talk_id, waited } => {
            said.talk_id = Some(talk_id.clone());
            format!(
                "talk {talk_id} was not finished after {:.1}s; poll its status to follow it",
                waited.as_secs_f64()
            )
        }
        V::Limiter(LimiterError::Timeout { priority, waited }) => format!(
            "all D-ID slots stayed busy for {:.1}s ({priority} priority); retry later",
            waited.as_secs_f64()
        ),
        V::Limiter(LimiterError::Unavailable { .. }) => {
            "the concurrency limiter is unavailable; retry later".to_owned()
        }
        V::Limiter(LimiterError::UpstreamUnavailable { retry_after }) => format!(
            "D-ID is failing, so talkgate is not sending to it for now (circuit breaker open); \
             retry in {:.0}s",
            retry_after.as_secs_f64().ceil().max(1.0)
        ),
        V::Limiter(LimiterError::InvalidLimit { .. }) => {
            "internal error; the request id identifies the log entry".to_owned()
        }
    };
    said
}

/// The failure a job stores for `error`.
pub fn failure_of(error: &VideoApiError) -> JobFailure {
    let described = describe(error);
    JobFailure {
        code: described.code,
        message: described.message,
        upstream_status: match error {
            VideoApiError::Validation { status, .. } => Some(*status),
            _ => None,
        },
    }
}

/// Whether a failure may be tried again by a replay of its key: it came before D-ID did the
/// work (no slot, the limiter down, D-ID's throttle) and no talk is known. A create of such a
/// job that may still have reached D-ID (an earlier attempt of the same call timed out, say)
/// says so in [`Job::create_sent`], and the retried create looks for its talk first.
pub fn failure_is_retryable(job: &Job) -> bool {
    job.status == JobStatus::Failed
        && job.talk_id.is_none()
        && job
            .error
            .as_ref()
            .is_some_and(|f| f.code.is_before_upstream())
}

/// Upstream text as shown to a client: control characters replaced by spaces, trimmed, and
/// at most [`MAX_DESCRIPTION_CHARS`] characters (with `…` when cut).
pub fn client_text(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let cleaned = cleaned.trim();
    if cleaned.chars().count() <= MAX_DESCRIPTION_CHARS {
        cleaned.to_owned()
    } else {
        let mut cut: String = cleaned.chars().take(MAX_DESCRIPTION_CHARS).collect();
        cut.push('…');
        cut
    }
}
