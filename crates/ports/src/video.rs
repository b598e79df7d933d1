//! The video port: D-ID's operations as talkgate uses them, with one closed error type.
//!
//! # Stats
//! [`VideoApiStats`] counts calls: requests, retries, answers per status, creates, polls.
//! How the adapter's client is set up (base URL, authentication, pool, retry policy) sits in
//! one section, [`ClientStats`], that the adapter fills in. It is a typed struct rather than
//! an adapter-defined map of JSON values because the service reads a field of it and the
//! compiler should check that read. It is `#[serde(flatten)]`ed, so a serialized
//! [`VideoApiStats`] has the same keys as before the section existed, and that JSON still
//! deserializes.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use domain::{
    Admission, Asset, AssetId, CreatedTalk, Credits, Talk, TalkId, TalkPage, TalkRequest, Upload,
};
use serde::{Deserialize, Serialize};

use crate::limiter::LimiterError;

/// Everything that can go wrong talking to D-ID, closed so callers can map each case.
///
/// Messages never contain credentials; upstream descriptions are D-ID's own words.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VideoApiError {
    /// No API key is configured, so no call was made.
    #[error("D-ID API key is not configured")]
    NotConfigured,
    /// D-ID rejected the credentials (401, or a gateway 403 without a D-ID error kind).
    #[error("D-ID rejected the credentials (HTTP {status})")]
    Unauthorized {
        /// 401 or 403.
        status: u16,
    },
    /// The account may not do this (403 `PermissionError`, e.g. stitch on some plans).
    #[error("D-ID refused permission: {description}")]
    Forbidden {
        /// D-ID's description.
        description: String,
    },
    /// The account has no credits left (402).
    #[error("D-ID account has insufficient credits")]
    InsufficientCredits,
    /// The resource does not exist (404).
    #[error("not found at D-ID: {description}")]
    NotFound {
        /// D-ID's description.
        description: String,
    },
    /// The talk is still in progress (409 on delete).
    #[error("D-ID resource not ready: {description}")]
    NotReady {
        /// D-ID's description.
        description: String,
    },
    /// D-ID refused the input (400, 413, 415, 422, 451).
    #[error("D-ID rejected the request ({kind}): {description}")]
    Validation {
        /// The HTTP status.
        status: u16,
        /// D-ID's error kind (`ValidationError`, `BadRequestError`, …).
        kind: String,
        /// D-ID's description.
        description: String,
        /// D-ID's details object, if any.
        details: Option<serde_json::Value>,
    },
    /// D-ID throttled the call (429).
    #[error("rate limited by D-ID (retry after {retry_after:?})")]
    RateLimited {
        /// The server's `Retry-After` / `retry-after-ms`, if it sent one.
        retry_after: Option<Duration>,
    },
    /// D-ID failed (5xx), after all retries.
    #[error("D-ID server error: HTTP {status}")]
    Server {
        /// The HTTP status.
        status: u16,
    },
    /// No response in time (per-request timeout or the call's total deadline).
    #[error("D-ID did not answer in time")]
    Timeout,
    /// The connection failed or was cut.
    #[error("could not reach D-ID: {message}")]
    Connect {
        /// What failed.
        message: String,
    },
    /// D-ID answered something this client cannot understand.
    #[error("unexpected answer from D-ID: {message}")]
    Protocol {
        /// What was wrong.
        message: String,
    },
    /// The talk ended in `error`.
    #[error("talk {talk_id} failed ({kind}): {description}")]
    TalkFailed {
        /// The talk.
        talk_id: TalkId,
        /// D-ID's error kind (`FaceError`, …).
        kind: String,
        /// D-ID's description.
        description: String,
    },
    /// The talk ended in `rejected`.
    #[error("talk {talk_id} was rejected: {description}")]
    TalkRejected {
        /// The talk.
        talk_id: TalkId,
        /// D-ID's description, if any.
        description: String,
    },
    /// The talk was not finished within the wait bound; it may still finish later.
    #[error("talk {talk_id} not finished after {waited:?}")]
    TalkTimedOut {
        /// The talk, so the caller can resume polling.
        talk_id: TalkId,
        /// How long was waited.
        waited: Duration,
    },
    /// No concurrency slot could be had.
    #[error(transparent)]
    Limiter(#[from] LimiterError),
}

impl VideoApiError {
    /// Whether the same call may succeed if repeated: timeouts, connection failures and 5xx.
    /// A 429 is not retryable by default (a retry policy may opt in and honour `retry_after`).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            VideoApiError::Server { .. } | VideoApiError::Timeout | VideoApiError::Connect { .. }
        )
    }
}

/// How far a failed call got: whether any of its attempts may have been acted on by D-ID.
///
/// A call's error is its *last* attempt's, which does not say what the attempts before it
/// did: a create whose first attempt timed out and whose second was throttled fails with
/// [`VideoApiError::RateLimited`], yet its first attempt may have made the talk. An adapter
/// that retries inside one call therefore reports the furthest any attempt got, so that a
/// caller repeating the call (a durable job) knows whether it must look for what an earlier
/// attempt did before it sends again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Sent {
    /// No attempt sent anything D-ID could act on: each was refused before it left (no
    /// limiter slot, no connection, the call's deadline passed while it waited) or D-ID
    /// answered it with a refusal (a 429 or another 4xx, which creates nothing).
    Nothing,
    /// Some attempt may have been acted on: it timed out or its connection was cut after it
    /// was sent, D-ID answered 5xx (or 408), or D-ID answered 2xx and the answer could not
    /// be read.
    Maybe,
}

impl Sent {
    /// What an exchange that got D-ID's answer `status` sent: a 4xx other than 408 is a
    /// refusal and made nothing; any other answer may have been acted on.
    pub fn by_status(status: u16) -> Sent {
        if (400..500).contains(&status) && status != 408 {
            Sent::Nothing
        } else {
            Sent::Maybe
        }
    }
}

/// A create that failed: the call's error (its last attempt's) and how far its attempts got
/// ([`Sent`]), so that whoever tries again knows whether a talk may exist already.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{error}")]
pub struct CreateFailed {
    /// The error the call ended with.
    pub error: VideoApiError,
    /// Whether any attempt of the call may have made the talk.
    pub sent: Sent,
}

impl CreateFailed {
    /// A create that failed before anything D-ID could act on was sent.
    pub fn not_sent(error: VideoApiError) -> CreateFailed {
        CreateFailed {
            error,
            sent: Sent::Nothing,
        }
    }

    /// A create of which some attempt may have reached D-ID (the safe assumption when it
    /// cannot be told).
    pub fn maybe_sent(error: VideoApiError) -> CreateFailed {
        CreateFailed {
            error,
            sent: Sent::Maybe,
        }
    }
}

/// How a talk's status is polled, by a request that waits for it (`VideoApi::wait_for_talk`)
/// and by the job engine alike: the first pause short ([`PollSchedule::FIRST`], a talk may
/// be done at once), doubling with every poll up to `interval` (never more), then `±jitter`
/// of it. So a talk that is done at once is seen after ~0.5 s instead of a full interval, a
/// long render is polled at the interval after a few polls, and many waiters do not poll in
/// step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PollSchedule {
    /// The pause before the first poll.
    pub first: Duration,
    /// The longest pause.
    pub interval: Duration,
    /// The spread of every pause, as a fraction of it (0 to 1).
    pub jitter: f64,
}

impl PollSchedule {
    /// The pause before the first poll.
    pub const FIRST: Duration = Duration::from_millis(500);
    /// The default spread: ±10 %.
    pub const JITTER: f64 = 0.1;

    /// Polls up to every `interval`, spread by `jitter`.
    pub fn new(interval: Duration, jitter: f64) -> PollSchedule {
        PollSchedule {
            first: PollSchedule::FIRST,
            interval,
            jitter,
        }
    }

    /// The pause before poll number `poll` (0 for the first), spread by the uniform sample
    /// `u` in `[0, 1)`.
    pub fn delay(&self, poll: u32, u: f64) -> Duration {
        let nominal = self
            .first
            .saturating_mul(1u32 << poll.min(16))
            .min(self.interval);
        let jitter = self.jitter.clamp(0.0, 1.0);
        nominal.mul_f64(1.0 + jitter * (2.0 * u.clamp(0.0, 1.0) - 1.0))
    }
}

/// How long [`VideoApi::wait_for_talk`] and [`VideoApi::create_talk_and_wait`] poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitOptions {
    /// Pause between two status polls (jitter is added by the adapter).
    pub poll_interval: Duration,
    /// Give up (with [`VideoApiError::TalkTimedOut`]) after this long.
    pub max_wait: Duration,
}

impl Default for WaitOptions {
    /// 5 s between polls, at most 10 minutes.
    fn default() -> Self {
        WaitOptions {
            poll_interval: Duration::from_secs(5),
            max_wait: Duration::from_secs(600),
        }
    }
}

/// A snapshot of a video adapter's counters, for `/stats` and `/metrics` (the video side's
/// [`LimiterStats`](crate::LimiterStats)), with the [`ClientStats`] section its adapter fills in.
///
/// Every duration is whole milliseconds under a name ending in `_ms`. Counters only grow.
/// The API key itself is never part of it. Serialized flat, as before the section existed:
/// the section's keys (`base_url`, …, `retry_policy`) sit beside `requests` and the rest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VideoApiStats {
    /// HTTP exchanges started (each attempt counts once).
    pub requests: u64,
    /// Attempts that were repeated after a failure.
    pub retries: u64,
    /// Exchanges that got no HTTP answer (timeout, connection refused or cut).
    pub transport_errors: u64,
    /// Answers received, per HTTP status.
    pub responses: BTreeMap<u16, u64>,
    /// Creates started.
    pub creates: u64,
    /// Talks found by their create token (after an ambiguous create failure, or before a
    /// create with a token the caller supplied), instead of being created a second time.
    pub create_recoveries: u64,
    /// Creates sent without a token because the caller's `user_data` left no room; these
    /// are never repeated after an ambiguous failure.
    pub creates_untagged: u64,
    /// Status polls made by [`VideoApi::wait_for_talk`] and [`VideoApi::create_talk_and_wait`].
    pub polls: u64,
    /// Pages of `GET /talks` read to find what a create may have made (a look-up before a
    /// create, or after an ambiguous failure), each page counted once.
    #[serde(default)]
    pub lookup_pages: u64,
    /// How the adapter paces its sends by the rate D-ID allows (see [`PacingStats`]).
    #[serde(default)]
    pub pacing: PacingStats,
    /// How the adapter's client is set up.
    #[serde(flatten)]
    pub client: ClientStats,
}

/// How a video adapter paces its sends by the rate D-ID allows, learned from its 429s (part of
/// [`VideoApiStats`]; did-client's `pace` module). Rates are requests per second, waits whole
/// milliseconds. Counters only grow.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PacingStats {
    /// Whether the adapter paces at all (the service's `PACING`); `pacing_enabled` in JSON,
    /// as `/stats` names each fact once.
    #[serde(rename = "pacing_enabled")]
    pub enabled: bool,
    /// Whether sends are paced now: after a 429, until a quiet period without one passes.
    pub paced: bool,
    /// The learned rate sends are paced at now; `None` while unpaced.
    pub rate_rps: Option<f64>,
    /// How long sends are still held for a `Retry-After`, in milliseconds (0: not held).
    pub held_ms: u64,
    /// Callers waiting for their turn now.
    pub waiting: u64,
    /// Sends that had to wait for their turn.
    pub delayed: u64,
    /// The time those sends waited, in all, in milliseconds.
    pub delayed_ms: u64,
    /// 429 answers seen.
    pub throttled: u64,
    /// Times the rate was lowered (a 429 to a send made at the current rate).
    pub decreases: u64,
    /// Times sends were held for a 429's `Retry-After`.
    pub retry_after_holds: u64,
    /// The lowest rate the pacer goes down to.
    pub min_rps: f64,
    /// The highest rate it paces at.
    pub max_rps: f64,
    /// What each second of answers without a 429 adds to the rate, while paced.
    pub increase_rps: f64,
    /// The factor a 429 multiplies the rate with.
    pub decrease: f64,
    /// How long without a 429 until sends are unpaced again, in milliseconds.
    pub quiet_ms: u64,
}

/// The adapter-filled section of [`VideoApiStats`]: where the client sends requests, how it
/// authenticates, its connection pool and its retry policy.
///
/// Typed rather than an adapter's free-form map because the service reads part of it (the
/// pool's idle connections become `/stats`' `pool_limits.max_keepalive`); the values are the
/// adapter's own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientStats {
    /// Where requests go.
    pub base_url: String,
    /// Whether an API key is set.
    pub api_key_configured: bool,
    /// How the key is sent (`"rfc7617"` or `"literal"` for the D-ID client).
    pub auth_scheme: String,
    /// The connection pool and timeouts.
    pub pool: PoolStats,
    /// How failed attempts are repeated.
    pub retry_policy: RetryStats,
}

/// How a video adapter's connection pool and timeouts are set up (part of [`ClientStats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStats {
    /// Idle connections kept per host.
    pub max_idle_per_host: usize,
    /// Idle connection lifetime, in milliseconds.
    pub idle_timeout_ms: u64,
    /// Connect timeout, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Per-exchange timeout of JSON calls, in milliseconds.
    pub request_timeout_ms: u64,
    /// Per-exchange timeout of uploads, in milliseconds.
    pub upload_timeout_ms: u64,
}

/// A video adapter's retry policy, as reported in [`ClientStats`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RetryStats {
    /// Attempts in all, the first included (`1`: no retries).
    pub max_attempts: u32,
    /// Wait before the first retry, in milliseconds; doubles for every further retry.
    pub base_delay_ms: u64,
    /// Upper bound of any one wait, in milliseconds.
    pub max_delay_ms: u64,
    /// Fraction of a wait that jitter may remove, `0.0..=1.0`.
    pub jitter: f64,
    /// Whether a 429 is retried.
    pub retry_rate_limited: bool,
    /// The longest `Retry-After` honoured when 429s are retried, in milliseconds.
    pub max_retry_after_ms: u64,
}

/// D-ID's talk and upload operations. Each call takes the caller's priority, which the
/// adapter uses for its concurrency slot. Object-safe; inject it as `Arc<dyn VideoApi>`.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait VideoApi: Send + Sync {
    /// `POST /images`; `upload` must be of kind image.
    async fn upload_image(
        &self,
        upload: Upload,
        admission: &Admission,
    ) -> Result<Asset, VideoApiError>;
    /// `POST /audios`; `upload` must be of kind audio.
    async fn upload_audio(
        &self,
        upload: Upload,
        admission: &Admission,
    ) -> Result<Asset, VideoApiError>;
    /// `DELETE /images/{id}`.
    async fn delete_image(&self, id: &AssetId, admission: &Admission) -> Result<(), VideoApiError>;
    /// `DELETE /audios/{id}`.
    async fn delete_audio(&self, id: &AssetId, admission: &Admission) -> Result<(), VideoApiError>;
    /// `POST /talks`, exactly once even when the adapter retries.
    async fn create_talk(
        &self,
        request: &TalkRequest,
        admission: &Admission,
    ) -> Result<CreatedTalk, VideoApiError>;
    /// `POST /talks` exactly once per `key`, also across processes and restarts: the create
    /// carries a token derived from `key` (a job id), so whoever creates with the same key
    /// and request finds the same talk. With `look_first` (a create for `key` may have been
    /// sent before, e.g. by a worker that died) the adapter first looks for that talk among
    /// the newest ones and returns it instead of creating another; the look-up is bounded by
    /// the adapter (did-client: `recovery_pages` pages of `GET /talks`).
    ///
    /// A failure says whether any attempt of this call may have made the talk
    /// ([`CreateFailed::sent`]): a caller that tries the key again needs `look_first` only
    /// if one may have (or if an earlier call's may have). A failed look-up before the
    /// first attempt sent nothing.
    async fn create_talk_keyed(
        &self,
        request: &TalkRequest,
        admission: &Admission,
        key: &str,
        look_first: bool,
    ) -> Result<CreatedTalk, CreateFailed>;
    /// `GET /talks/{id}`.
    async fn get_talk(&self, id: &TalkId, admission: &Admission) -> Result<Talk, VideoApiError>;
    /// `GET /talks?limit=&token=`.
    async fn list_talks(
        &self,
        limit: Option<u32>,
        token: Option<String>,
        admission: &Admission,
    ) -> Result<TalkPage, VideoApiError>;
    /// `DELETE /talks/{id}` (409 → [`VideoApiError::NotReady`] while in progress).
    async fn delete_talk(&self, id: &TalkId, admission: &Admission) -> Result<Talk, VideoApiError>;
    /// `GET /credits`.
    async fn credits(&self, admission: &Admission) -> Result<Credits, VideoApiError>;
    /// A snapshot of the adapter's configuration and counters. Makes no call.
    fn stats(&self) -> VideoApiStats;
    /// Polls the talk `id` until it is terminal: the `done` talk, or
    /// [`VideoApiError::TalkFailed`], [`VideoApiError::TalkRejected`],
    /// [`VideoApiError::TalkTimedOut`] once `wait.max_wait` (counted from this call) has
    /// passed. Transient poll failures do not end the wait. No slot is held between polls.
    ///
    /// With [`VideoApi::create_talk`] this is [`VideoApi::create_talk_and_wait`] split in
    /// two, for a caller that must know the talk id while it waits.
    async fn wait_for_talk(
        &self,
        id: &TalkId,
        admission: &Admission,
        wait: WaitOptions,
    ) -> Result<Talk, VideoApiError>;
    /// Creates a talk (exactly once, as [`VideoApi::create_talk`]) and waits for it as
    /// [`VideoApi::wait_for_talk`] does, with `wait.max_wait` counted from the start of the
    /// create.
    async fn create_talk_and_wait(
        &self,
        request: &TalkRequest,
        admission: &Admission,
        wait: WaitOptions,
    ) -> Result<Talk, VideoApiError>;
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn polls_start_short_and_grow_to_the_interval() {
        let ms = Duration::from_millis;
        let check = |interval: Duration, poll: u32, expected: Duration| {
            assert_eq!(
                PollSchedule::new(interval, 0.0).delay(poll, 0.5),
                expected,
                "{interval:?} poll {poll}"
            );
        };
        let five = Duration::from_secs(5);
        check(five, 0, ms(500));
        check(five, 1, ms(1000));
        check(five, 2, ms(2000));
        check(five, 3, ms(4000));
        check(five, 4, five);
        check(five, 40, five);
        // An interval shorter than the first step is used from the start.
        check(ms(100), 0, ms(100));
        check(ms(100), 5, ms(100));
        // Jitter is ±10 % of the step, never more.
        assert_eq!(PollSchedule::new(five, 0.1).delay(0, 0.0), ms(450));
        assert_eq!(PollSchedule::new(five, 0.1).delay(9, 1.0), ms(5500));
    }

    /// The keys a `VideoApiStats` had before its client section existed: it still reads
    /// them (status keys included), and writes them back unchanged.
    #[test]
    fn stats_json_keeps_its_flat_shape() {
        let flat = json!({
            "base_url": "http://127.0.0.1:1", "api_key_configured": true,
            "auth_scheme": "rfc7617",
            "pool": {
                "max_idle_per_host": 8, "idle_timeout_ms": 90_000, "connect_timeout_ms": 5_000,
                "request_timeout_ms": 30_000, "upload_timeout_ms": 120_000,
            },
            "retry_policy": {
                "max_attempts": 3, "base_delay_ms": 500, "max_delay_ms": 10_000,
                "jitter": 0.25, "retry_rate_limited": false, "max_retry_after_ms": 60_000,
            },
            "requests": 7, "retries": 1, "transport_errors": 1,
            "responses": {"200": 5, "503": 1},
            "creates": 2, "create_recoveries": 0, "creates_untagged": 0, "polls": 3,
        });
        let stats: VideoApiStats = serde_json::from_value(flat.clone()).unwrap();
        assert_eq!(stats.responses.get(&503), Some(&1));
        assert_eq!(stats.client.pool.max_idle_per_host, 8);
        assert_eq!(stats.client.retry_policy.jitter, 0.25);
        assert_eq!(stats.lookup_pages, 0, "counted since it exists");
        assert_eq!(stats.pacing, PacingStats::default());
        // Written back: the same keys with the same values, and the newer ones beside them.
        let mut written = serde_json::to_value(&stats).unwrap();
        let written = written.as_object_mut().unwrap();
        assert_eq!(written.remove("lookup_pages"), Some(json!(0)));
        assert!(
            written
                .remove("pacing")
                .is_some_and(|p| p["pacing_enabled"] == false)
        );
        assert_eq!(Value::Object(written.clone()), flat);
    }

    #[test]
    fn only_a_refusal_sends_nothing() {
        for (status, sent) in [
            (429, Sent::Nothing),
            (400, Sent::Nothing),
            (403, Sent::Nothing),
            (404, Sent::Nothing),
            (408, Sent::Maybe),
            (500, Sent::Maybe),
            (504, Sent::Maybe),
            (200, Sent::Maybe),
            (302, Sent::Maybe),
        ] {
            assert_eq!(Sent::by_status(status), sent, "{status}");
        }
        assert!(Sent::Maybe > Sent::Nothing, "the furthest attempt wins");
    }
}
