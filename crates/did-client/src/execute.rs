//! The one retry loop: attempts of a call until it succeeds, the policy gives up or the
//! deadline passes, with a hook for failures after which the request may have taken effect.
//!
//! A failure is *ambiguous* when D-ID may have done the work anyway: a timeout or a cut
//! connection after the request was sent, or a 5xx (a connection that could not be made is
//! not: nothing left). Repeating a read, a delete or an upload then is harmless, so most
//! calls retry it like any other failure ([`IfAmbiguous::Retry`]). Repeating a `POST /talks`
//! could pay for a second video, so the exactly-once create either looks first
//! ([`IfAmbiguous::LookUp`], with the talk its token finds) or gives up
//! ([`IfAmbiguous::GiveUp`], when it could not carry a token). A 4xx or a 429 is D-ID's
//! answer: nothing happened, and the policy alone decides.
//!
//! A call that fails reports the furthest any of its attempts got ([`Sent`]), not only its
//! last attempt's: a create whose first attempt timed out and whose retry was throttled may
//! have made the talk, and its caller must know that to look first when it tries again.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use domain::Admission;
use ports::{Sent, VideoApiError};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::client::DidClient;
use crate::retry::RetryDecision;
use crate::stats::bump;
use crate::transport::{Answer, Call, Failed};

/// What an ambiguous failure means for a call (see the module docs).
pub(crate) enum IfAmbiguous<L> {
    /// Repeating the call is harmless: retry as after any failure.
    Retry,
    /// Repeating it could do it twice and nothing can tell: give up with the error.
    GiveUp,
    /// Ask the look-up whether the failed attempt took effect: if it finds something, that is
    /// the call's result; if not, retry as the policy allows.
    LookUp(L),
}

/// Finds what an attempt that failed ambiguously did (the talk a timed-out create made).
pub(crate) trait LookUp: Sync {
    /// What a look-up finds.
    type Found;
    /// `Some` if the failed attempt took effect, `None` if it surely did not; an error if that
    /// cannot be told (then the call gives up rather than risk doing it twice).
    fn look_up(
        &self,
        deadline: Instant,
    ) -> impl Future<Output = Result<Option<Self::Found>, VideoApiError>> + Send;
}

/// The look-up of calls that never look ([`IfAmbiguous::Retry`] and [`IfAmbiguous::GiveUp`]).
pub(crate) enum NoLookUp {}

impl LookUp for NoLookUp {
    type Found = Infallible;
    async fn look_up(&self, _deadline: Instant) -> Result<Option<Infallible>, VideoApiError> {
        match *self {}
    }
}

/// How a call ended well: D-ID answered an attempt, or the look-up found what an earlier
/// attempt did.
pub(crate) enum Outcome<T> {
    /// The 2xx answer of the last attempt.
    Answered(Answer),
    /// What the look-up found after an ambiguous failure.
    Found(T),
}

impl DidClient {
    /// `call` with retries under its configured total deadline; every failure may be retried.
    pub(crate) async fn execute(
        &self,
        call: &Call,
        admission: &Admission,
    ) -> Result<Answer, VideoApiError> {
        let budget = if call.is_upload() {
            self.config.upload_call_deadline
        } else {
            self.config.call_deadline
        };
        self.execute_until(call, admission, Instant::now() + budget)
            .await
    }

    /// `call` with retries, bounded by `deadline`; every failure may be retried.
    pub(crate) async fn execute_until(
        &self,
        call: &Call,
        admission: &Admission,
        deadline: Instant,
    ) -> Result<Answer, VideoApiError> {
        match self
            .run(call, admission, deadline, IfAmbiguous::<NoLookUp>::Retry)
            .await
            .map_err(|failed| failed.error)?
        {
            Outcome::Answered(answer) => Ok(answer),
            Outcome::Found(never) => match never {},
        }
    }

    /// The retry loop: attempts of `call` until one succeeds, the policy gives up or
    /// `deadline` passes; `if_ambiguous` decides what an ambiguous failure leads to. The
    /// caller gets the last attempt's typed error, with the furthest any attempt got.
    pub(crate) async fn run<L: LookUp>(
        &self,
        call: &Call,
        admission: &Admission,
        deadline: Instant,
        if_ambiguous: IfAmbiguous<L>,
    ) -> Result<Outcome<L::Found>, Failed> {
        let mut sent = Sent::Nothing;
        let failed = |error: VideoApiError, sent: Sent| Failed { error, sent };
        let mut attempt = 1;
        loop {
            let (error, ambiguous) = match self.attempt(call, admission, deadline, attempt).await {
                Ok(answer) => return Ok(Outcome::Answered(answer)),
                Err(f) => {
                    sent = sent.max(f.sent);
                    // A transient failure of an attempt that never left (a refused
                    // connection) did nothing: it is retried like any other.
                    let ambiguous = f.error.is_retryable() && f.sent == Sent::Maybe;
                    (f.error, ambiguous)
                }
            };
            let retry = self.next_wait(attempt, &error, deadline);
            let look_up = match &if_ambiguous {
                IfAmbiguous::LookUp(look_up) if ambiguous => look_up,
                IfAmbiguous::GiveUp if ambiguous => return Err(failed(error, sent)),
                // Not ambiguous, or harmless to repeat: the policy decides.
                _ => {
                    let Some(wait) = retry else {
                        return Err(failed(error, sent));
                    };
                    self.back_off(call.op, attempt, wait, &error).await;
                    attempt += 1;
                    continue;
                }
            };
            // Wait before looking, also after the last attempt: what a request that timed out
            // did (a talk) may take a moment to show up.
            let wait = retry.unwrap_or_else(|| self.config.retry.backoff(attempt, rand::random()));
            if Instant::now() + wait < deadline {
                if retry.is_some() {
                    self.back_off(call.op, attempt, wait, &error).await;
                } else {
                    tokio::time::sleep(wait).await;
                }
            }
            match look_up.look_up(deadline).await {
                Ok(Some(found)) => return Ok(Outcome::Found(found)),
                Ok(None) if retry.is_some() => {
                    debug!(
                        op = call.op,
                        attempt, "the failed attempt left nothing; trying again"
                    );
                    attempt += 1;
                }
                Ok(None) => return Err(failed(error, sent)),
                Err(lookup) => {
                    // Without the look-up a retry could do it twice: report the call's error.
                    warn!(op = call.op, error = %error, lookup_error = %lookup, "could not check whether the failed attempt went through");
                    return Err(failed(error, sent));
                }
            }
        }
    }

    /// The wait before the next attempt, or `None` to give up: the policy's answer, unless
    /// the deadline would pass during the wait.
    fn next_wait(
        &self,
        attempt: u32,
        error: &VideoApiError,
        deadline: Instant,
    ) -> Option<Duration> {
        match self.config.retry.decide(attempt, error, rand::random()) {
            RetryDecision::GiveUp => None,
            RetryDecision::RetryAfter(wait) if Instant::now() + wait < deadline => Some(wait),
            RetryDecision::RetryAfter(wait) => {
                debug!(
                    wait_ms = wait.as_millis() as u64,
                    "no time left before the deadline for another attempt"
                );
                None
            }
        }
    }

    /// Waits `wait` before retry `attempt + 1`, visibly.
    async fn back_off(
        &self,
        op: &'static str,
        attempt: u32,
        wait: Duration,
        error: &VideoApiError,
    ) {
        bump(&self.counters.retries);
        warn!(
            op,
            attempt,
            wait_ms = wait.as_millis() as u64,
            error = %error,
            "D-ID call failed, retrying"
        );
        tokio::time::sleep(wait).await;
    }
}
