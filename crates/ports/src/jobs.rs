//! The job-store port: durable talk jobs, claimed by workers in priority order.
//!
//! A [`Job`] is one intended talk: the request, its priority, and where it stands. The store
//! keeps it until it is finished and its retention has passed; workers of every process
//! sharing the store *claim* runnable jobs with a lease, work on them, and write each step
//! back with a compare-and-set on [`Job::version`].
//!
//! # Contract
//! Every adapter guarantees, and the contract suite (`ports::job_contract`) checks:
//! - [`JobStore::submit`] is put-if-absent by idempotency key: of any number of concurrent
//!   submits with one key (from any process), exactly one creates a job and the others get
//!   [`Submitted::Existing`] with that job; a full queue refuses a new job with
//!   [`JobStoreError::QueueFull`] and stores nothing;
//! - [`JobStore::claim`] hands a runnable job to one worker at a time: the highest priority
//!   first, then the lowest [`Job::rank`] (the tenants' fair order, below), then the oldest
//!   (`seq`, the store's own arrival order); a job is runnable when it is not terminal, its
//!   `next_run_ms` has come and nobody holds an unexpired lease on it;
//! - [`JobStore::update`] writes a job only if its version is still the one read
//!   ([`JobStoreError::Conflict`] otherwise), so two workers that race never lose an update;
//!   the stored version is then one higher;
//! - [`JobStore::renew`] extends a lease only for its holder;
//! - [`JobStore::list`] pages through jobs newest first with an opaque cursor, optionally of
//!   one status; [`JobStore::purge`] deletes terminal jobs finished before a time, and their
//!   keys with them — but never a job whose [`Callback`] is still pending;
//! - [`JobStore::claim_callback`] hands a due pending callback (earliest due first) to one
//!   callback worker at a time, under the job's `lease` (a terminal job has no other use for
//!   it); [`JobStore::next_callback_due`] says when the next one is due, from an index.
//!
//! Times are milliseconds since the Unix epoch, passed in by the caller, so a store never
//! reads a clock of its own (and the contract suite can move time without sleeping).
//!
//! # The fair order of claims
//! Within a priority, tenants share the workers by weight, as they share the limiter's slots
//! (the limiter port's rule, applied at submit): [`JobStore::submit`] gives a job the rank
//! `max(V, the tenant's last rank at that priority) + cost`, where `cost` is
//! [`rank_cost`] of the job's [`NewJob::share`] and `V` is the highest rank claimed at that
//! priority so far. A tenant's jobs so keep their order, a tenant that submits a large
//! backlog first does not hold back one that comes later (its first job ranks just past
//! `V`), and two backlogged tenants of weights 3 and 1 are claimed 3 to 1. Each store keeps
//! `V` and the last ranks in its own backend, updated in the same transaction as the submit
//! or claim, so every process sharing the store follows one order. [`FairRanks`] is that
//! bookkeeping for a store that holds it in memory.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use domain::{Admission, CallbackUrl, Priority, Share, TalkId, TalkRequest, Tenant};

use crate::callbacks::Callback;
use crate::limiter::LimiterError;
use crate::video::VideoApiError;
use serde::{Deserialize, Serialize};

/// Characters of a job id after its `job_` prefix.
pub const JOB_ID_LEN: usize = 22;
/// The most attempts a job remembers; older ones are dropped first.
pub const MAX_ATTEMPTS_KEPT: usize = 16;
/// The longest idempotency key accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// A job's identifier: `job_` and [`JOB_ID_LEN`] characters of `[A-Za-z0-9]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobId(String);

/// A string that is not a job id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a job id is job_ followed by {JOB_ID_LEN} characters of [A-Za-z0-9]")]
pub struct InvalidJobId;

impl JobId {
    /// A job id from random characters the caller drew (see [`JobId::parse`] for the form);
    /// `random` must yield at least [`JOB_ID_LEN`] alphanumeric characters.
    pub fn from_chars(random: impl Iterator<Item = char>) -> Result<JobId, InvalidJobId> {
        let mut id = String::with_capacity(4 + JOB_ID_LEN);
        id.push_str("job_");
        id.extend(random.take(JOB_ID_LEN));
        JobId::parse(&id)
    }

    /// Checks the form `job_[A-Za-z0-9]{22}`.
    pub fn parse(text: &str) -> Result<JobId, InvalidJobId> {
        match text.strip_prefix("job_") {
            Some(rest)
                if rest.len() == JOB_ID_LEN && rest.bytes().all(|b| b.is_ascii_alphanumeric()) =>
            {
                Ok(JobId(text.to_owned()))
            }
            _ => Err(InvalidJobId),
        }
    }

    /// The id's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for JobId {
    type Error = InvalidJobId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        JobId::parse(&s)
    }
}

impl From<JobId> for String {
    fn from(id: JobId) -> String {
        id.0
    }
}

/// Where a job stands.
///
/// `queued` → `creating` (a worker sends `POST /talks`) → `processing` (D-ID has the talk) →
/// `done` | `failed`; `queued` → `cancelled`. A `creating` or `processing` job whose worker
/// died goes on with the next worker that claims it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Waiting for a worker (and a limiter slot).
    Queued,
    /// A worker is creating the talk; it may exist at D-ID already.
    Creating,
    /// D-ID has the talk; the job follows it until it ends.
    Processing,
    /// The talk is done; `result_url` is set.
    Done,
    /// The job ended without a video; `error` says why.
    Failed,
    /// Cancelled while queued: no talk was created.
    Cancelled,
}

impl JobStatus {
    /// All states, in lifecycle order.
    pub const ALL: [JobStatus; 6] = [
        JobStatus::Queued,
        JobStatus::Creating,
        JobStatus::Processing,
        JobStatus::Done,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    /// The lowercase name used in JSON, query strings and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Creating => "creating",
            JobStatus::Processing => "processing",
            JobStatus::Done => "done",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// Parses [`JobStatus::as_str`]'s names.
    pub fn parse(text: &str) -> Option<JobStatus> {
        JobStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Whether the job has ended (`done`, `failed`, `cancelled`).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Done | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a job failed: the service's stable error code, its message, and D-ID's own status
/// where the failure is D-ID's answer. Which HTTP status a failure answers with is the HTTP
/// service's business: it derives it from the code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFailure {
    /// The stable error code (`talk_failed`, `upstream_validation_error`, …).
    pub code: FailureCode,
    /// What went wrong, without secrets.
    pub message: String,
    /// The HTTP status D-ID answered with, for a failure that is D-ID's answer (a
    /// validation error: D-ID's 400 and 422 are told apart by it). Jobs stored by earlier
    /// builds carry the service's status as `http_status` instead, read here: for the one
    /// code whose answer depends on it the two numbers are the same.
    #[serde(
        default,
        alias = "http_status",
        skip_serializing_if = "Option::is_none"
    )]
    pub upstream_status: Option<u16>,
}

/// The closed set of codes a job can fail with: the codes of [`VideoApiError`] (and so of
/// the synchronous routes' upstream errors), and `internal_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureCode {
    /// No D-ID key is configured.
    UpstreamNotConfigured,
    /// D-ID rejected the service's credentials.
    UpstreamAuthFailed,
    /// D-ID refused permission.
    UpstreamPermissionDenied,
    /// The D-ID account is out of credits.
    InsufficientCredits,
    /// D-ID does not know the talk.
    NotFound,
    /// A D-ID resource was not ready.
    NotReady,
    /// D-ID rejected the request as invalid.
    UpstreamValidationError,
    /// D-ID throttled the service.
    UpstreamRateLimited,
    /// D-ID failed (5xx) after retries.
    UpstreamError,
    /// D-ID could not be reached.
    UpstreamUnreachable,
    /// D-ID answered something unreadable.
    UpstreamProtocolError,
    /// D-ID did not answer in time.
    UpstreamTimeout,
    /// The talk did not finish in time.
    TalkTimeout,
    /// The talk ended in `error`.
    TalkFailed,
    /// D-ID rejected the talk.
    TalkRejected,
    /// No limiter slot was free in time.
    QueueTimeout,
    /// The limiter's backend was unavailable.
    LimiterUnavailable,
    /// The circuit breaker in front of D-ID was open.
    UpstreamUnavailable,
    /// This service failed.
    InternalError,
    /// A code this build does not know (a job stored by a newer one).
    #[serde(other)]
    Unknown,
}

impl FailureCode {
    /// The code of a D-ID call's error. Every variant is named, so a new error does not
    /// compile until it has its code.
    pub fn of(error: &VideoApiError) -> FailureCode {
        use VideoApiError as V;
        match error {
            V::NotConfigured => FailureCode::UpstreamNotConfigured,
            V::Unauthorized { .. } => FailureCode::UpstreamAuthFailed,
            V::Forbidden { .. } => FailureCode::UpstreamPermissionDenied,
            V::InsufficientCredits => FailureCode::InsufficientCredits,
            V::NotFound { .. } => FailureCode::NotFound,
            V::NotReady { .. } => FailureCode::NotReady,
            V::Validation { .. } => FailureCode::UpstreamValidationError,
            V::RateLimited { .. } => FailureCode::UpstreamRateLimited,
            V::Server { .. } => FailureCode::UpstreamError,
            V::Connect { .. } => FailureCode::UpstreamUnreachable,
            V::Protocol { .. } => FailureCode::UpstreamProtocolError,
            V::Timeout => FailureCode::UpstreamTimeout,
            V::TalkTimedOut { .. } => FailureCode::TalkTimeout,
            V::TalkFailed { .. } => FailureCode::TalkFailed,
            V::TalkRejected { .. } => FailureCode::TalkRejected,
            V::Limiter(LimiterError::Timeout { .. }) => FailureCode::QueueTimeout,
            V::Limiter(LimiterError::Unavailable { .. }) => FailureCode::LimiterUnavailable,
            V::Limiter(LimiterError::UpstreamUnavailable { .. }) => {
                FailureCode::UpstreamUnavailable
            }
            V::Limiter(LimiterError::InvalidLimit { .. }) => FailureCode::InternalError,
        }
    }

    /// The snake_case code, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureCode::UpstreamNotConfigured => "upstream_not_configured",
            FailureCode::UpstreamAuthFailed => "upstream_auth_failed",
            FailureCode::UpstreamPermissionDenied => "upstream_permission_denied",
            FailureCode::InsufficientCredits => "insufficient_credits",
            FailureCode::NotFound => "not_found",
            FailureCode::NotReady => "not_ready",
            FailureCode::UpstreamValidationError => "upstream_validation_error",
            FailureCode::UpstreamRateLimited => "upstream_rate_limited",
            FailureCode::UpstreamError => "upstream_error",
            FailureCode::UpstreamUnreachable => "upstream_unreachable",
            FailureCode::UpstreamProtocolError => "upstream_protocol_error",
            FailureCode::UpstreamTimeout => "upstream_timeout",
            FailureCode::TalkTimeout => "talk_timeout",
            FailureCode::TalkFailed => "talk_failed",
            FailureCode::TalkRejected => "talk_rejected",
            FailureCode::QueueTimeout => "queue_timeout",
            FailureCode::LimiterUnavailable => "limiter_unavailable",
            FailureCode::UpstreamUnavailable => "upstream_unavailable",
            FailureCode::InternalError => "internal_error",
            FailureCode::Unknown => "unknown",
        }
    }

    /// Whether the failure happened before anything reached D-ID, so that trying again
    /// cannot pay twice (no slot, the limiter down, the breaker open, D-ID's throttle).
    pub fn is_before_upstream(self) -> bool {
        matches!(
            self,
            FailureCode::QueueTimeout
                | FailureCode::LimiterUnavailable
                | FailureCode::UpstreamUnavailable
                | FailureCode::UpstreamRateLimited
        )
    }
}

impl fmt::Display for FailureCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One worker's turn on a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// The worker (`<instance>/<n>`).
    pub worker: String,
    /// What it did (`create`, `poll`, `adopt`…).
    pub action: String,
    /// When it started, ms since the epoch.
    pub at_ms: u64,
    /// How it ended (`ok`, `retry: …`, an error code).
    pub outcome: String,
}

/// An idempotency key in its tenant's scope: the same key of two tenants is two keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ScopedKey {
    /// Whose key it is (stored as `scope`, the name it had before tenants: the same
    /// strings, `public` or `t:<digest of the bearer token>`).
    #[serde(rename = "scope")]
    pub tenant: Tenant,
    /// The key as the caller sent it (at most [`MAX_IDEMPOTENCY_KEY_LEN`] bytes).
    pub key: String,
}

/// A worker's claim on a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The worker holding it.
    pub owner: String,
    /// When it runs out, ms since the epoch.
    pub until_ms: u64,
}

/// The W3C trace context of the request that submitted a job (`traceparent` and
/// `tracestate` as received or made by the service), kept with the job so that its later
/// steps (a worker's, a webhook's, a callback's) can be linked to that trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    /// `00-<trace id>-<span id>-<flags>`.
    pub traceparent: String,
    /// The vendors' list, if any (at most [`MAX_TRACESTATE_LEN`] bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

/// The longest `tracestate` kept with a job: W3C Trace Context caps it at 32 entries and
/// advises propagating at least 512 bytes.
pub const MAX_TRACESTATE_LEN: usize = 512;

impl TraceContext {
    /// The context if `traceparent` has the W3C version-00 form (55 characters, lowercase
    /// hex, neither id all zeros); a `tracestate` longer than [`MAX_TRACESTATE_LEN`] is
    /// dropped (as W3C allows), not cut.
    pub fn new(traceparent: &str, tracestate: Option<&str>) -> Option<TraceContext> {
        let parts: Vec<&str> = traceparent.split('-').collect();
        let hex = |p: &str, n: usize| {
            p.len() == n
                && p.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let valid = matches!(parts.as_slice(), [v, t, s, f]
            if *v == "00" && hex(t, 32) && hex(s, 16) && hex(f, 2)
                && t.bytes().any(|b| b != b'0') && s.bytes().any(|b| b != b'0'));
        valid.then(|| TraceContext {
            traceparent: traceparent.to_owned(),
            tracestate: tracestate
                .filter(|t| !t.is_empty() && t.len() <= MAX_TRACESTATE_LEN && t.is_ascii())
                .map(str::to_owned),
        })
    }
}

/// What a job's creates may have done at D-ID, kept with the job so that a create looks for
/// an earlier talk first exactly when one may exist.
///
/// A create that may have reached D-ID (see [`Sent`](crate::Sent)) could have made the talk
/// even though it failed; its token then finds it. A create that sent nothing (a 429, no
/// limiter slot) made nothing, and the next one need not spend `GET /talks` pages looking.
/// The owner of a job writes [`CreateSent::InCall`] *before* each create call that could
/// otherwise leave nothing behind, so that a worker killed mid-call leaves a job the next
/// owner looks up first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreateSent {
    /// No create of this job has sent anything D-ID could act on.
    Nothing,
    /// A create call was under way when the job was written. Read by its own caller that is
    /// its call; read by any other owner, the caller may have died mid-call, so it counts
    /// as [`CreateSent::Maybe`].
    InCall,
    /// A create may have reached D-ID (or did: the talk exists). It stays so.
    Maybe,
    /// Stored by a build before this field existed: decided as that build did (see
    /// [`Job::create_may_have_been_sent`]).
    #[serde(other)]
    Unknown,
}

impl CreateSent {
    /// What a job stored without the field reads as.
    fn unknown() -> CreateSent {
        CreateSent::Unknown
    }
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// The job's id.
    pub id: JobId,
    /// The store's arrival order (set by [`JobStore::submit`]; unique, increasing).
    pub seq: u64,
    /// Written by every successful [`JobStore::update`], starting at 1.
    pub version: u64,
    /// The limiter class of its upstream calls and its place in the claim order.
    pub priority: Priority,
    /// Its place among its priority's jobs in the tenants' fair order (see the module docs),
    /// set by [`JobStore::submit`]; jobs stored by builds before it read as 0 (claimed first,
    /// as they were: by `seq`).
    #[serde(default)]
    pub rank: u64,
    /// Whose job it is: the tenant of its upstream calls (jobs stored by builds before
    /// tenants read as the public tenant).
    #[serde(default)]
    pub tenant: Tenant,
    /// The `POST /talks` body.
    pub request: TalkRequest,
    /// Where to report the outcome (see [`Job::callback`]).
    pub callback_url: Option<CallbackUrl>,
    /// The outcome's callback to `callback_url`: armed by the write that ends the job (when
    /// the service delivers callbacks), then delivered; `None` before, and for a job without
    /// a `callback_url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<Callback>,
    /// The caller's idempotency key, if it sent one.
    pub idempotency: Option<ScopedKey>,
    /// Whether the create token derives from the idempotency key (jobs submitted with a key
    /// since this field exists) rather than from the job id (without a key, and jobs stored
    /// by earlier builds, whose talks carry the id's token).
    #[serde(default)]
    pub token_from_key: bool,
    /// What its creates may have done at D-ID: whether the next one looks first.
    #[serde(default = "CreateSent::unknown")]
    pub create_sent: CreateSent,
    /// A digest of the request as the caller sent it, to tell a replay from a misuse.
    pub fingerprint: String,
    /// The secret of the webhook D-ID calls when the talk ends (in the receiver URL the
    /// create sends), set when the service takes D-ID's webhooks; `None` otherwise.
    #[serde(default)]
    pub webhook_token: Option<String>,
    /// Whether the talk's create asked D-ID for that webhook (so one is expected: the job is
    /// polled only as the fallback for a lost one).
    #[serde(default)]
    pub webhook_sent: bool,
    /// Where it stands.
    pub status: JobStatus,
    /// The talk at D-ID, once created.
    pub talk_id: Option<TalkId>,
    /// The talk's `status` and `created_at` as the first answer gave them (D-ID's create
    /// answer; `created_at` from the finished talk for a synchronous generate), so that a
    /// replay answers the same.
    #[serde(default)]
    pub talk_created_status: Option<String>,
    /// See [`Job::talk_created_status`].
    #[serde(default)]
    pub talk_created_at: Option<String>,
    /// The finished video.
    pub result_url: Option<String>,
    /// When `result_url` stops working (D-ID keeps results about 24 h), ms since the epoch.
    pub result_expires_ms: Option<u64>,
    /// The finished video's length in seconds, as D-ID reported it (what the talk cost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video_seconds: Option<f64>,
    /// Why it failed.
    pub error: Option<JobFailure>,
    /// Submitted, ms since the epoch.
    pub created_ms: u64,
    /// Last written, ms since the epoch.
    pub updated_ms: u64,
    /// Reached a terminal state, ms since the epoch.
    pub finished_ms: Option<u64>,
    /// Not claimable before this, ms since the epoch (the next poll, a retry's back-off).
    pub next_run_ms: u64,
    /// Polls of the talk's status so far.
    pub polls: u32,
    /// The newest [`MAX_ATTEMPTS_KEPT`] worker turns.
    pub attempts: Vec<Attempt>,
    /// The worker that holds it, if any: a job worker's while it runs; on a terminal job,
    /// the callback worker's delivering its pending [`Job::callback`].
    pub lease: Option<Lease>,
    /// The trace of the request that submitted it, when traces are exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceContext>,
}

impl Job {
    /// Whether a create of this job may have reached D-ID before, so that the next one must
    /// look for the talk first. `own_call`: the caller wrote the job's state itself for the
    /// create it is about to make (a request that submitted or took back its own job), so a
    /// [`CreateSent::InCall`] is its own and not a dead owner's.
    pub fn create_may_have_been_sent(&self, own_call: bool) -> bool {
        match self.create_sent {
            CreateSent::Nothing => false,
            CreateSent::InCall => !own_call,
            CreateSent::Maybe => true,
            // The rule of the builds before the field: left `creating` by another owner, or
            // any earlier attempt at all.
            CreateSent::Unknown => {
                (self.status == JobStatus::Creating && !own_call) || !self.attempts.is_empty()
            }
        }
    }

    /// Who its upstream calls are for and how urgent they are.
    pub fn admission(&self) -> Admission {
        Admission::new(self.tenant.clone(), self.priority)
    }

    /// Appends an attempt, dropping the oldest beyond [`MAX_ATTEMPTS_KEPT`].
    pub fn record_attempt(&mut self, attempt: Attempt) {
        self.attempts.push(attempt);
        if self.attempts.len() > MAX_ATTEMPTS_KEPT {
            let extra = self.attempts.len() - MAX_ATTEMPTS_KEPT;
            self.attempts.drain(..extra);
        }
    }
}

/// A job to submit.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    /// A fresh id.
    pub id: JobId,
    /// Its priority.
    pub priority: Priority,
    /// Whose job it is.
    pub tenant: Tenant,
    /// The tenant's weight, which spaces its jobs' ranks (its cap is the limiter's business).
    pub share: Share,
    /// The `POST /talks` body.
    pub request: TalkRequest,
    /// Where to report the outcome.
    pub callback_url: Option<CallbackUrl>,
    /// The caller's idempotency key.
    pub idempotency: Option<ScopedKey>,
    /// A digest of the request as sent.
    pub fingerprint: String,
    /// See [`Job::webhook_token`].
    pub webhook_token: Option<String>,
    /// Now, ms since the epoch.
    pub now_ms: u64,
    /// Claim it at once for this worker (a synchronous route runs its own job), for this long.
    pub lease: Option<Lease>,
    /// The status it starts in: `queued`, or `creating` for a job claimed at once.
    pub status: JobStatus,
    /// See [`Job::trace`].
    pub trace: Option<TraceContext>,
}

impl NewJob {
    /// The job as [`JobStore::submit`] stores it, with the store's `seq` and `rank`.
    pub fn into_job(self, seq: u64, rank: u64) -> Job {
        Job {
            id: self.id,
            seq,
            version: 1,
            priority: self.priority,
            rank,
            tenant: self.tenant,
            request: self.request,
            callback_url: self.callback_url,
            callback: None,
            token_from_key: self.idempotency.is_some(),
            // A job claimed at once is created by its submitter right after this write: if
            // that caller dies mid-call, the next owner must look first.
            create_sent: if self.status == JobStatus::Creating {
                CreateSent::InCall
            } else {
                CreateSent::Nothing
            },
            idempotency: self.idempotency,
            fingerprint: self.fingerprint,
            webhook_token: self.webhook_token,
            webhook_sent: false,
            status: self.status,
            talk_id: None,
            talk_created_status: None,
            talk_created_at: None,
            result_url: None,
            result_expires_ms: None,
            video_seconds: None,
            error: None,
            created_ms: self.now_ms,
            updated_ms: self.now_ms,
            finished_ms: None,
            next_run_ms: self.now_ms,
            polls: 0,
            attempts: Vec::new(),
            lease: self.lease,
            trace: self.trace,
        }
    }
}

/// What [`JobStore::submit`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    /// The job is new.
    Created(Job),
    /// A job with the same idempotency key exists (whatever its fingerprint): nothing was
    /// written.
    Existing(Job),
}

/// How many jobs may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueLimits {
    /// At most this many jobs `queued` at once, all priorities together.
    pub max_queued: u64,
}

/// Who takes (or renews) a lease, for how long, from when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTerms<'a> {
    /// The worker taking it.
    pub owner: &'a str,
    /// How long it lasts.
    pub lease: Duration,
    /// Now, ms since the epoch.
    pub now_ms: u64,
}

impl<'a> LeaseTerms<'a> {
    /// `owner` takes a lease of `lease` at `now_ms`.
    pub fn new(owner: &'a str, lease: Duration, now_ms: u64) -> LeaseTerms<'a> {
        LeaseTerms {
            owner,
            lease,
            now_ms,
        }
    }

    /// When the lease runs out, ms since the epoch.
    pub fn until_ms(&self) -> u64 {
        self.now_ms.saturating_add(duration_ms(self.lease))
    }
}

/// A page request of [`JobStore::list`]: up to `limit` jobs (at least one), newest first,
/// of `status` if given, after `cursor` (a [`JobPage::next_cursor`] this store handed out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListQuery<'a> {
    /// Only jobs in this state.
    pub status: Option<JobStatus>,
    /// The most jobs on the page.
    pub limit: usize,
    /// Where the page starts.
    pub cursor: Option<&'a str>,
}

impl<'a> ListQuery<'a> {
    /// Up to `limit` jobs of `status` after `cursor`.
    pub fn new(status: Option<JobStatus>, limit: usize, cursor: Option<&'a str>) -> Self {
        ListQuery {
            status,
            limit,
            cursor,
        }
    }

    /// The page's jobs are those whose `seq` is below this: the cursor's `seq`, or
    /// `u64::MAX` from the newest. Every store's cursors are `s<seq>`, read here once.
    pub fn before_seq(&self) -> Result<u64, JobStoreError> {
        match self.cursor {
            None => Ok(u64::MAX),
            Some(c) => c
                .strip_prefix('s')
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or(JobStoreError::InvalidCursor),
        }
    }

    /// How many jobs a store reads for the page: one more than the page holds, to know
    /// whether another page follows.
    pub fn fetch(&self) -> usize {
        self.limit.max(1).saturating_add(1)
    }

    /// The page of `fetched` (newest first, at most [`ListQuery::fetch`] jobs, read before
    /// [`ListQuery::before_seq`]), with the cursor of the next page if there is one.
    pub fn page(&self, mut fetched: Vec<Job>) -> JobPage {
        let limit = self.limit.max(1);
        let next_cursor = if fetched.len() > limit {
            fetched.truncate(limit);
            fetched.last().map(|j| format!("s{}", j.seq))
        } else {
            None
        };
        JobPage {
            jobs: fetched,
            next_cursor,
        }
    }
}

/// One page of [`JobStore::list`].
#[derive(Debug, Clone, PartialEq)]
pub struct JobPage {
    /// Newest first.
    pub jobs: Vec<Job>,
    /// Pass it back for the next page; `None` on the last one.
    pub next_cursor: Option<String>,
}

/// Jobs per state and the oldest queued job per priority.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobCounts {
    /// Jobs per state (every state present, zeros included).
    pub by_status: BTreeMap<JobStatus, u64>,
    /// `created_ms` of the oldest `queued` job of each priority, by [`Priority::index`].
    pub oldest_queued_ms: [Option<u64>; 4],
    /// Jobs whose callback is still pending.
    #[serde(default)]
    pub callbacks_pending: u64,
}

/// What a job store can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobStoreError {
    /// The job was written by someone else since it was read (its version moved on).
    #[error("job {id} changed since it was read (version {expected} is no longer current)")]
    Conflict {
        /// The job.
        id: JobId,
        /// The version the writer had read.
        expected: u64,
    },
    /// No such job.
    #[error("no job {0}")]
    NotFound(JobId),
    /// The queue holds `max_queued` jobs already.
    #[error("the job queue is full ({queued} of {limit} queued)")]
    QueueFull {
        /// Jobs queued now.
        queued: u64,
        /// The limit.
        limit: u64,
    },
    /// The cursor was not one this store handed out.
    #[error("invalid cursor")]
    InvalidCursor,
    /// The store could not be reached or failed; nothing is known to have been written.
    #[error("job store unavailable: {0}")]
    Unavailable(String),
    /// The store holds data this version cannot read.
    #[error("job store data is corrupt: {0}")]
    Corrupt(String),
}

/// The durable home of jobs. Object-safe; inject it as `Arc<dyn JobStore>`.
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Stores `job` unless its idempotency key exists already (then returns that job and
    /// writes nothing), or `limits` would be exceeded by a new `queued` job.
    async fn submit(&self, job: NewJob, limits: QueueLimits) -> Result<Submitted, JobStoreError>;
    /// The job `id`.
    async fn get(&self, id: &JobId) -> Result<Option<Job>, JobStoreError>;
    /// The job of an idempotency key.
    async fn get_by_key(&self, key: &ScopedKey) -> Result<Option<Job>, JobStoreError>;
    /// Claims the first runnable job (priority, rank, then `seq`) for `terms.owner` until
    /// [`LeaseTerms::until_ms`]; the returned job carries the lease and its new version.
    async fn claim(&self, terms: LeaseTerms<'_>) -> Result<Option<Job>, JobStoreError>;
    /// Extends `terms.owner`'s lease on `id` to [`LeaseTerms::until_ms`]; `false` if it is
    /// not its lease (any more). Does not change the job's version.
    async fn renew(&self, id: &JobId, terms: LeaseTerms<'_>) -> Result<bool, JobStoreError>;
    /// Replaces the stored job with `job` if the stored version is still `job.version`;
    /// returns it as stored (version + 1).
    async fn update(&self, job: Job) -> Result<Job, JobStoreError>;
    /// A page of jobs, newest first (see [`ListQuery`]).
    async fn list(&self, query: ListQuery<'_>) -> Result<JobPage, JobStoreError>;
    /// Deletes terminal jobs that finished before `finished_before_ms`, and their keys,
    /// except those whose callback is pending; returns how many.
    async fn purge(&self, finished_before_ms: u64) -> Result<u64, JobStoreError>;
    /// Jobs per state and queue age per priority.
    async fn counts(&self) -> Result<JobCounts, JobStoreError>;
    /// When the next job becomes claimable: the earliest `max(next_run_ms, lease until)`
    /// over the jobs that are not terminal (at most `now_ms` when one is claimable now);
    /// `None` when every job is terminal. Workers sleep until then instead of asking the
    /// store over and over; one indexed look, not a scan.
    async fn next_due(&self, now_ms: u64) -> Result<Option<u64>, JobStoreError>;
    /// Claims the first due pending callback — [`callback_due_at`] at most `terms.now_ms`,
    /// earliest first — for `terms.owner` until [`LeaseTerms::until_ms`] (in the job's
    /// `lease`); the returned job carries the lease and its new version. The worker writes
    /// the attempt's outcome back with [`JobStore::update`].
    async fn claim_callback(&self, terms: LeaseTerms<'_>) -> Result<Option<Job>, JobStoreError>;
    /// The earliest [`callback_due_at`] of any job, `None` when no callback is pending; one
    /// indexed look.
    async fn next_callback_due(&self, now_ms: u64) -> Result<Option<u64>, JobStoreError>;
    /// When this store last found itself emptied while processes that used it before were
    /// still running (Redis restarted without its data), ms since the epoch; `None` if it
    /// never did (or cannot tell). Jobs accepted before are gone then, and a caller replaying
    /// its key gets a new job: the engine looks the talk up at D-ID before creating one.
    /// Learnt from the store's answers; no call of its own.
    fn lost_data_at(&self) -> Option<u64>;
    /// Resolves when another process made a job claimable here (a submit on another
    /// instance sharing the store), so that idle workers of this one take it at once rather
    /// than at their next periodic look. Wake-ups may be spurious, coalesced or, while the
    /// store is unreachable, lost (the periodic look covers those). A store only one process
    /// uses never resolves it: that process wakes its own workers.
    async fn woken(&self);
    /// Whether the store can take a write now (readiness): the file or server is there and
    /// a small write commits. `Err` says why not; cheap enough to run on every `/ready`.
    async fn check(&self) -> Result<(), JobStoreError>;
    /// The adapter's name (`memory`, `sqlite`, `redis`), for `/stats`.
    fn kind(&self) -> &'static str;
}

/// Whether job `a` is claimed before job `b`: higher priority first, then lower rank, then
/// lower `seq`.
pub fn claim_order(a: &Job, b: &Job) -> std::cmp::Ordering {
    b.priority
        .cmp(&a.priority)
        .then(a.rank.cmp(&b.rank))
        .then(a.seq.cmp(&b.seq))
}

/// What one job of weight 1 adds to its tenant's rank; weights 1 to 12 divide it exactly.
pub const RANK_SCALE: u64 = Share::COST_SCALE;

/// What one job of a tenant with `share` adds to its rank: [`RANK_SCALE`] ÷ weight, rounded
/// (the limiter's [`Share::cost`]).
pub fn rank_cost(share: Share) -> u64 {
    share.cost()
}

/// The rank of a tenant's next job: `max(v, its last rank) + cost`.
pub fn next_rank(v: u64, last: Option<u64>, cost: u64) -> u64 {
    v.max(last.unwrap_or(0)).saturating_add(cost)
}

/// The fair-order bookkeeping of a store that holds it in memory: `V` per priority and each
/// tenant's last rank. A tenant whose last rank is behind `V` counts as absent, so those
/// entries are dropped by [`FairRanks::sweep`] and the map holds only tenants with jobs
/// ahead of `V`.
#[derive(Debug, Default, Clone)]
pub struct FairRanks {
    v: [u64; 4],
    last: std::collections::HashMap<(usize, Tenant), u64>,
}

impl FairRanks {
    /// Ranks a new job of `tenant` at `priority` and records it as the tenant's last.
    pub fn rank(&mut self, priority: Priority, tenant: &Tenant, share: Share) -> u64 {
        let p = priority.index();
        let key = (p, tenant.clone());
        let rank = next_rank(self.v[p], self.last.get(&key).copied(), rank_cost(share));
        self.last.insert(key, rank);
        rank
    }

    /// A job of `rank` at `priority` was claimed: `V` moves up to it (never back).
    pub fn claimed(&mut self, priority: Priority, rank: u64) {
        let v = &mut self.v[priority.index()];
        *v = (*v).max(rank);
    }

    /// Drops the tenants whose last rank is not ahead of `V`.
    pub fn sweep(&mut self) {
        let v = self.v;
        self.last.retain(|(p, _), last| *last > v[*p]);
    }

    /// Tenants with a rank ahead of `V`, for tests and bounds.
    pub fn len(&self) -> usize {
        self.last.len()
    }

    /// Whether no tenant is ahead of `V`.
    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}

/// When `job` becomes claimable: `max(next_run_ms, lease until)`; `None` for a terminal job.
pub fn due_at(job: &Job) -> Option<u64> {
    (!job.status.is_terminal()).then(|| {
        job.next_run_ms
            .max(job.lease.as_ref().map_or(0, |l| l.until_ms))
    })
}

/// When `job`'s pending callback may be claimed: `max(next_attempt_ms, lease until)`;
/// `None` without a pending callback. Every store indexes it.
pub fn callback_due_at(job: &Job) -> Option<u64> {
    job.callback.as_ref().filter(|c| c.is_pending()).map(|c| {
        c.next_attempt_ms
            .max(job.lease.as_ref().map_or(0, |l| l.until_ms))
    })
}

/// Whether `job` may be claimed at `now_ms`.
pub fn is_runnable(job: &Job, now_ms: u64) -> bool {
    !job.status.is_terminal()
        && job.next_run_ms <= now_ms
        && job.lease.as_ref().is_none_or(|l| l.until_ms <= now_ms)
}

/// Duration as whole milliseconds (saturating).
pub fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_are_s_and_a_seq() {
        assert_eq!(ListQuery::new(None, 3, None).before_seq(), Ok(u64::MAX));
        assert_eq!(ListQuery::new(None, 3, Some("s42")).before_seq(), Ok(42));
        for bad in ["42", "s", "sx", "s-1", "not a cursor"] {
            assert_eq!(
                ListQuery::new(None, 3, Some(bad)).before_seq(),
                Err(JobStoreError::InvalidCursor),
                "{bad:?}"
            );
        }
        assert_eq!(
            ListQuery::new(None, 0, None).fetch(),
            2,
            "a page holds one job at least"
        );
    }

    #[test]
    fn fair_ranks_interleave_a_late_tenant_and_keep_each_tenants_order() {
        let (a, b) = (Tenant::parse("a").unwrap(), Tenant::parse("b").unwrap());
        let (three, one) = (Share::new(3, None), Share::new(1, None));
        let mut fair = FairRanks::default();
        let p = Priority::Normal;
        let backlog: Vec<u64> = (0..9).map(|_| fair.rank(p, &a, three)).collect();
        assert!(
            backlog.windows(2).all(|w| w[0] < w[1]),
            "FIFO within a tenant"
        );
        // Two of a's jobs are claimed; then b arrives behind a's backlog of 7.
        fair.claimed(p, backlog[0]);
        fair.claimed(p, backlog[1]);
        let late: Vec<u64> = (0..3).map(|_| fair.rank(p, &b, one)).collect();
        let mut all: Vec<(u64, &str)> = backlog[2..].iter().map(|r| (*r, "a")).collect();
        all.extend(late.iter().map(|r| (*r, "b")));
        all.sort();
        let first8: String = all.iter().take(8).map(|(_, t)| *t).collect();
        assert_eq!(
            first8.matches('b').count(),
            2,
            "3:1 from b's arrival: {first8}"
        );
        assert!(
            first8.starts_with("aaab"),
            "b's first job ranks one cost past V: {first8}"
        );
        // Another priority has its own V.
        assert_eq!(fair.rank(Priority::High, &b, one), rank_cost(one));
        // Claimed past everything: the sweep drops every tenant.
        fair.claimed(p, u64::MAX / 2);
        fair.claimed(Priority::High, u64::MAX / 2);
        fair.sweep();
        assert!(fair.is_empty());
    }

    #[test]
    fn a_job_stored_before_tenants_reads_as_the_public_tenant_with_its_key_scope() {
        let job = NewJob {
            id: JobId::parse("job_0000000000000000000001").unwrap(),
            priority: Priority::High,
            tenant: Tenant::parse("t:0011223344556677").unwrap(),
            share: Share::default(),
            request: TalkRequest::new(
                Some("https://example.test/face.jpg".into()),
                domain::Script::Audio {
                    audio_url: "https://example.test/voice.mp3".into(),
                },
            )
            .unwrap(),
            callback_url: None,
            idempotency: Some(ScopedKey {
                tenant: Tenant::parse("t:0011223344556677").unwrap(),
                key: "order-1".into(),
            }),
            fingerprint: "fp".into(),
            webhook_token: None,
            now_ms: 1,
            lease: None,
            status: JobStatus::Queued,
            trace: None,
        }
        .into_job(1, 0);
        let mut stored = serde_json::to_value(&job).unwrap();
        assert_eq!(
            stored["idempotency"],
            serde_json::json!({"scope": "t:0011223344556677", "key": "order-1"}),
            "the key's tenant is stored under the name it had before"
        );
        // An earlier build wrote no tenant.
        stored.as_object_mut().unwrap().remove("tenant");
        stored.as_object_mut().unwrap().remove("rank");
        let read: Job = serde_json::from_value(stored).unwrap();
        assert_eq!(read.tenant, Tenant::public());
        assert_eq!(read.rank, 0, "claimed by seq among its priority's first");
        assert_eq!(read.idempotency, job.idempotency);
        assert_eq!(
            read.admission(),
            Admission::new(Tenant::public(), Priority::High)
        );
    }

    fn job_in(status: JobStatus) -> Job {
        NewJob {
            id: JobId::parse("job_0000000000000000000002").unwrap(),
            priority: Priority::Normal,
            tenant: Tenant::public(),
            share: Share::default(),
            request: TalkRequest::new(
                Some("https://example.test/face.jpg".into()),
                domain::Script::Audio {
                    audio_url: "https://example.test/voice.mp3".into(),
                },
            )
            .unwrap(),
            callback_url: None,
            idempotency: None,
            fingerprint: "fp".into(),
            webhook_token: None,
            now_ms: 1,
            lease: None,
            status,
            trace: None,
        }
        .into_job(1, 0)
    }

    #[test]
    fn a_create_looks_first_only_when_an_earlier_one_may_have_reached_d_id() {
        let queued = job_in(JobStatus::Queued);
        assert_eq!(queued.create_sent, CreateSent::Nothing);
        assert!(!queued.create_may_have_been_sent(false));
        // Claimed at once by its submitter: its own call, unless someone else reads it.
        let inline = job_in(JobStatus::Creating);
        assert_eq!(inline.create_sent, CreateSent::InCall);
        assert!(!inline.create_may_have_been_sent(true));
        assert!(inline.create_may_have_been_sent(false), "a dead submitter");
        let maybe = Job {
            create_sent: CreateSent::Maybe,
            ..queued.clone()
        };
        assert!(maybe.create_may_have_been_sent(true));
        assert!(maybe.create_may_have_been_sent(false));
        let nothing = Job {
            status: JobStatus::Creating,
            create_sent: CreateSent::Nothing,
            ..queued.clone()
        };
        assert!(
            !nothing.create_may_have_been_sent(false),
            "throttled before"
        );
        // Stored round trip keeps it.
        let text = serde_json::to_string(&maybe).unwrap();
        assert_eq!(
            serde_json::from_str::<Job>(&text).unwrap().create_sent,
            CreateSent::Maybe
        );
    }

    #[test]
    fn a_job_stored_before_create_sent_decides_as_that_build_did() {
        let strip = |job: &Job| {
            let mut v = serde_json::to_value(job).unwrap();
            v.as_object_mut().unwrap().remove("create_sent");
            serde_json::from_value::<Job>(v).unwrap()
        };
        let queued = strip(&job_in(JobStatus::Queued));
        assert_eq!(queued.create_sent, CreateSent::Unknown);
        assert!(!queued.create_may_have_been_sent(false), "never tried");
        let creating = strip(&job_in(JobStatus::Creating));
        assert!(creating.create_may_have_been_sent(false), "left creating");
        assert!(!creating.create_may_have_been_sent(true));
        let mut tried = job_in(JobStatus::Queued);
        tried.record_attempt(Attempt {
            worker: "w/0".into(),
            action: "wait".into(),
            at_ms: 2,
            outcome: "not sent: upstream_rate_limited".into(),
        });
        assert!(
            strip(&tried).create_may_have_been_sent(true),
            "tried before"
        );
        // A value a newer build writes reads as unknown too, never as nothing.
        let mut v = serde_json::to_value(job_in(JobStatus::Creating)).unwrap();
        v["create_sent"] = serde_json::json!("sent_twice");
        let newer: Job = serde_json::from_value(v).unwrap();
        assert_eq!(newer.create_sent, CreateSent::Unknown);
    }
}
