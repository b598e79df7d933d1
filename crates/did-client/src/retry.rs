//! The retry policy: which failures are tried again, and how long to wait before the next try.
//!
//! Everything here is a pure function of the attempt number, the error and a random sample,
//! so the schedule is unit-tested without clocks or sockets. The client owns the loop; this
//! module only answers "again, after how long?".
//!
//! The schedule is the one the original Python client promised and did not deliver (it slept
//! 2 s, 2 s because tenacity's `min=2` clamped both waits): the wait before retry `n` is
//! `base · 2^(n-1)`, i.e. 2 s → 4 s → 8 s, capped at 10 s, minus up to 25 % jitter so that
//! clients failing together do not come back together. Jitter only ever *shortens* a wait
//! (as in the Stainless SDKs), so the cap is a real upper bound.
//!
//! Classification reads [`VideoApiError::is_retryable`] (timeouts, connection failures,
//! 5xx), never raw status codes. A 429 ([`VideoApiError::RateLimited`]) is not retried unless
//! [`RetryPolicy::retry_rate_limited`] is set; then the server's `Retry-After` is honoured
//! when it is at most [`RetryPolicy::max_retry_after`], and a longer one gives up at once.

use std::time::Duration;

use ports::VideoApiError;

/// How failed upstream calls are retried. Plain data; see the module docs for the schedule.
///
/// Reported in [`DidClientStats`](crate::stats::DidClientStats) as a
/// [`RetryStats`](ports::RetryStats), every wait in whole milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (default 3). `1` disables retries.
    pub max_attempts: u32,
    /// Wait before the first retry (default 2 s); doubles for every further retry.
    pub base_delay: Duration,
    /// Upper bound of any one wait (default 10 s).
    pub max_delay: Duration,
    /// Fraction of a wait that jitter may remove, `0.0..=1.0` (default 0.25).
    pub jitter: f64,
    /// Whether a 429 is retried (default `false`: the caller gets
    /// [`VideoApiError::RateLimited`] at once, as the original client did).
    pub retry_rate_limited: bool,
    /// The longest `Retry-After` honoured when 429s are retried (default 60 s); a server that
    /// asks for more is not retried.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(10),
            jitter: 0.25,
            retry_rate_limited: false,
            max_retry_after: Duration::from_secs(60),
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Give the error to the caller.
    GiveUp,
    /// Wait this long, then try again.
    RetryAfter(Duration),
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1 for the first retry), given a uniform sample
    /// `u` in `[0, 1)`: `min(base · 2^(retry-1), max) · (1 − jitter · u)`.
    pub fn backoff(&self, retry: u32, u: f64) -> Duration {
        let exponent = retry.saturating_sub(1).min(30);
        let nominal = self
            .base_delay
            .saturating_mul(1u32 << exponent)
            .min(self.max_delay);
        let jitter = self.jitter.clamp(0.0, 1.0) * u.clamp(0.0, 1.0);
        nominal.mul_f64(1.0 - jitter)
    }

    /// Decides after attempt number `attempt` (1 for the first) failed with `error`; `u` is a
    /// uniform sample in `[0, 1)` for the jitter.
    pub fn decide(&self, attempt: u32, error: &VideoApiError, u: f64) -> RetryDecision {
        if attempt >= self.max_attempts {
            return RetryDecision::GiveUp;
        }
        if error.is_retryable() {
            return RetryDecision::RetryAfter(self.backoff(attempt, u));
        }
        match error {
            VideoApiError::RateLimited { retry_after } if self.retry_rate_limited => {
                match retry_after {
                    Some(wait) if *wait > self.max_retry_after => RetryDecision::GiveUp,
                    Some(wait) => RetryDecision::RetryAfter(*wait),
                    None => RetryDecision::RetryAfter(self.backoff(attempt, u)),
                }
            }
            _ => RetryDecision::GiveUp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use RetryDecision::{GiveUp, RetryAfter};

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn check(policy: &RetryPolicy, attempt: u32, error: VideoApiError, expected: RetryDecision) {
        assert_eq!(
            policy.decide(attempt, &error, 0.0),
            expected,
            "attempt {attempt}, {error:?}"
        );
    }

    #[test]
    fn backoff_doubles_from_two_seconds_and_is_capped_at_ten() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(1, 0.0), secs(2.0));
        assert_eq!(p.backoff(2, 0.0), secs(4.0));
        assert_eq!(p.backoff(3, 0.0), secs(8.0));
        assert_eq!(p.backoff(4, 0.0), secs(10.0));
        assert_eq!(
            p.backoff(40, 0.0),
            secs(10.0),
            "no overflow on huge retry counts"
        );
    }

    #[test]
    fn jitter_only_shortens_and_by_at_most_a_quarter() {
        let p = RetryPolicy::default();
        for retry in 1..6 {
            let nominal = p.backoff(retry, 0.0);
            for u in [0.0, 0.1, 0.5, 0.999_999] {
                let d = p.backoff(retry, u);
                assert!(d <= nominal, "{d:?} > {nominal:?}");
                assert!(d >= nominal.mul_f64(0.75), "{d:?} < 75% of {nominal:?}");
            }
        }
        assert_eq!(p.backoff(1, 0.5), secs(1.75));
    }

    #[test]
    fn the_default_schedule_is_two_retries_of_two_then_four_seconds() {
        // Not the original's 2 s, 2 s: the second wait really doubles.
        let p = RetryPolicy::default();
        let err = VideoApiError::Server { status: 503 };
        check(&p, 1, err.clone(), RetryAfter(secs(2.0)));
        check(&p, 2, err.clone(), RetryAfter(secs(4.0)));
        check(&p, 3, err, GiveUp);
    }

    #[test]
    fn transient_failures_are_retried_and_client_errors_are_not() {
        let p = RetryPolicy::default();
        check(&p, 1, VideoApiError::Timeout, RetryAfter(secs(2.0)));
        check(
            &p,
            1,
            VideoApiError::Connect {
                message: "reset".into(),
            },
            RetryAfter(secs(2.0)),
        );
        check(
            &p,
            1,
            VideoApiError::Server { status: 500 },
            RetryAfter(secs(2.0)),
        );
        check(&p, 1, VideoApiError::Unauthorized { status: 401 }, GiveUp);
        check(&p, 1, VideoApiError::InsufficientCredits, GiveUp);
        check(
            &p,
            1,
            VideoApiError::NotFound {
                description: "not found".into(),
            },
            GiveUp,
        );
        check(
            &p,
            1,
            VideoApiError::Validation {
                status: 400,
                kind: "ValidationError".into(),
                description: "validation failed".into(),
                details: None,
            },
            GiveUp,
        );
        check(
            &p,
            1,
            VideoApiError::Protocol {
                message: "bad json".into(),
            },
            GiveUp,
        );
        check(&p, 1, VideoApiError::NotConfigured, GiveUp);
    }

    #[test]
    fn rate_limits_are_not_retried_by_default() {
        let p = RetryPolicy::default();
        check(
            &p,
            1,
            VideoApiError::RateLimited {
                retry_after: Some(secs(1.0)),
            },
            GiveUp,
        );
    }

    #[test]
    fn opted_in_rate_limit_retries_honour_retry_after_up_to_the_cap() {
        let p = RetryPolicy {
            retry_rate_limited: true,
            max_retry_after: secs(30.0),
            ..RetryPolicy::default()
        };
        let limited = |s: Option<f64>| VideoApiError::RateLimited {
            retry_after: s.map(secs),
        };
        check(&p, 1, limited(Some(7.5)), RetryAfter(secs(7.5)));
        check(&p, 1, limited(Some(30.0)), RetryAfter(secs(30.0)));
        check(&p, 1, limited(Some(31.0)), GiveUp);
        check(&p, 2, limited(None), RetryAfter(secs(4.0)));
        check(&p, 3, limited(Some(1.0)), GiveUp);
    }

    #[test]
    fn a_single_attempt_policy_never_retries() {
        let p = RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        };
        check(&p, 1, VideoApiError::Timeout, GiveUp);
    }
}
