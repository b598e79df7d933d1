//! The circuit breaker in front of D-ID: after a burst of failures it stops sending for a
//! cooldown, then lets one probe through. Pure: time is a number of milliseconds the caller
//! passes in, so the state machine is tested with virtual time.
//!
//! - **Closed**: everything is sent. The breaker *opens* after
//!   [`BreakerPolicy::min_failures`] failures (5xx, timeouts, cut connections) in a row — an
//!   outage, seen within a few calls however many answers came before it — or when a window
//!   of [`BreakerPolicy::window`] holds at least that many failures that are at least
//!   [`BreakerPolicy::failure_ratio`] of its exchanges (a sustained partial outage). So does a 429
//!   storm (the same counts over 429s) when the caller says 429s count (a fixed limit without
//!   pacing, or an adaptive one at its floor), and so does any 429 with a `Retry-After`, for that long.
//! - **Open** until the cooldown ends: requests below `critical` are shed at once (the
//!   service answers 503 `upstream_unavailable` with `Retry-After`), `critical` ones wait.
//! - **Half-open** after the cooldown: one probe at a time may be sent (a waiting `critical`
//!   request first). A probe that is answered closes the breaker; one that fails opens it
//!   again for twice the cooldown, up to [`BreakerPolicy::max_cooldown`]. A probe whose
//!   answer never comes is given up after [`BreakerPolicy::probe_timeout`], and another may go.
//!
//! Outcomes of requests sent before the breaker opened (or before the half-open began) say
//! nothing about the probe and are ignored while it is not closed.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Priority;

/// When the breaker opens and how long it stays open. Plain data; [`BreakerPolicy::validate`]
/// checks it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerPolicy {
    /// Failures in a row that open it, and the least failures in a window that may (default
    /// 10: with 20 % of calls failing at random, ten in a row happen about once in 10⁷).
    pub min_failures: u32,
    /// The share of a window's exchanges that must have failed, within `0.0..=1.0`
    /// (default 0.5).
    pub failure_ratio: f64,
    /// The counting window (default 10 s).
    pub window: Duration,
    /// The first cooldown (default 1 s).
    pub cooldown: Duration,
    /// The longest cooldown, reached by doubling (default 4 s: D-ID's recovery is seen
    /// within it plus one probe, under 5 s).
    pub max_cooldown: Duration,
    /// The longest `Retry-After` honoured (default 60 s); longer ones are cut to it.
    pub max_retry_after: Duration,
    /// How long a probe may take before another is let through (default 35 s: a request's
    /// timeout and then some).
    pub probe_timeout: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            min_failures: 10,
            failure_ratio: 0.5,
            window: Duration::from_secs(10),
            cooldown: Duration::from_secs(1),
            max_cooldown: Duration::from_secs(4),
            max_retry_after: Duration::from_secs(60),
            probe_timeout: Duration::from_secs(35),
        }
    }
}

impl BreakerPolicy {
    /// What is wrong with the policy, if anything, in words naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.min_failures == 0 {
            return Err("the failures that open the breaker must be at least 1".to_owned());
        }
        if !(0.0..=1.0).contains(&self.failure_ratio) {
            return Err(format!(
                "the failure ratio must be within 0..=1, got {}",
                self.failure_ratio
            ));
        }
        if self.window.is_zero() || self.cooldown.is_zero() || self.probe_timeout.is_zero() {
            return Err(
                "the window, the cooldown and the probe timeout must be above 0".to_owned(),
            );
        }
        if self.max_cooldown < self.cooldown {
            return Err("the longest cooldown is shorter than the first".to_owned());
        }
        Ok(())
    }
}

/// What one instance saw of D-ID's answers since it last reported, for the breaker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcomes {
    /// Exchanges D-ID answered (2xx, or a 4xx other than 429).
    pub answered: u32,
    /// Exchanges that failed: 5xx, timeouts, cut or refused connections.
    pub failed: u32,
    /// Exchanges answered 429.
    pub throttled: u32,
    /// Failures after the last answered exchange (all of them if none was answered), in the
    /// order they were seen.
    pub trailing_failed: u32,
    /// The latest send time (ms) of an answered exchange; 0 if none.
    pub last_answered_sent_ms: u64,
    /// The latest send time (ms) of a failed exchange; 0 if none.
    pub last_failed_sent_ms: u64,
    /// The longest `Retry-After` of a 429, in ms; 0 if none.
    pub retry_after_ms: u64,
}

impl Outcomes {
    /// Whether there is nothing in it.
    pub fn is_empty(&self) -> bool {
        self.answered == 0 && self.failed == 0 && self.throttled == 0
    }

    /// Both windows' counts in one.
    pub fn merge(&mut self, other: &Outcomes) {
        self.answered = self.answered.saturating_add(other.answered);
        self.failed = self.failed.saturating_add(other.failed);
        self.throttled = self.throttled.saturating_add(other.throttled);
        self.trailing_failed = if other.answered > 0 {
            other.trailing_failed
        } else {
            self.trailing_failed.saturating_add(other.failed)
        };
        self.last_answered_sent_ms = self.last_answered_sent_ms.max(other.last_answered_sent_ms);
        self.last_failed_sent_ms = self.last_failed_sent_ms.max(other.last_failed_sent_ms);
        self.retry_after_ms = self.retry_after_ms.max(other.retry_after_ms);
    }
}

/// The breaker's three states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerMode {
    /// Everything is sent.
    Closed,
    /// Nothing is sent until the cooldown ends.
    Open,
    /// One probe at a time is sent.
    HalfOpen,
}

impl BreakerMode {
    /// All modes, for metric labels.
    pub const ALL: [BreakerMode; 3] = [
        BreakerMode::Closed,
        BreakerMode::Open,
        BreakerMode::HalfOpen,
    ];

    /// The snake-case name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerMode::Closed => "closed",
            BreakerMode::Open => "open",
            BreakerMode::HalfOpen => "half_open",
        }
    }
}

impl fmt::Display for BreakerMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the breaker opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TripReason {
    /// A burst of 5xx answers, timeouts and cut connections.
    Failures,
    /// A 429 storm.
    Throttled,
    /// A 429 asked for a pause (`Retry-After`).
    RetryAfter,
    /// The probe failed.
    ProbeFailed,
}

impl TripReason {
    /// The snake-case name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            TripReason::Failures => "failures",
            TripReason::Throttled => "throttled",
            TripReason::RetryAfter => "retry_after",
            TripReason::ProbeFailed => "probe_failed",
        }
    }
}

impl fmt::Display for TripReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change of the breaker's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerChange {
    /// The mode before.
    pub from: BreakerMode,
    /// The mode after.
    pub to: BreakerMode,
    /// Why it opened, when it did.
    pub reason: Option<TripReason>,
    /// When (ms since the Unix epoch).
    pub at_ms: u64,
}

/// What a request may do now, by [`BreakerState::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Send it.
    Send,
    /// Send it as the probe, once the probe is claimed ([`BreakerState::claim_probe`]).
    Probe,
    /// Wait (a `critical` request) until this time, then ask again.
    Wait {
        /// Until when (ms).
        until_ms: u64,
    },
    /// Refuse it now; it may come back after `retry_after_ms`.
    Shed {
        /// When to come back, in ms from now.
        retry_after_ms: u64,
    },
}

/// The breaker (see the module docs). Serializable, so a fleet can share one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerState {
    /// Closed, open or half-open, as stored (an open breaker whose cooldown has ended is
    /// half-open: see [`mode`](Self::mode)).
    pub stored: BreakerMode,
    /// When the counting window began (ms).
    pub window_start_ms: u64,
    /// Exchanges answered in the window.
    pub answered: u32,
    /// Exchanges failed in the window.
    pub failed: u32,
    /// Exchanges answered 429 in the window.
    pub throttled: u32,
    /// Failures in a row (across the fleet, as reported).
    #[serde(default)]
    pub consecutive: u32,
    /// When it last opened (ms).
    #[serde(default)]
    pub opened_ms: u64,
    /// Until when it stays open (ms).
    #[serde(default)]
    pub open_until_ms: u64,
    /// The cooldown it opened with (ms); the next failed probe doubles it.
    #[serde(default)]
    pub cooldown_ms: u64,
    /// Until when the probe in flight has the way (ms); 0 if none.
    #[serde(default)]
    pub probe_until_ms: u64,
    /// Why it last opened.
    #[serde(default)]
    pub reason: Option<TripReason>,
    /// How often it opened.
    #[serde(default)]
    pub trips: u64,
    /// The last change of mode.
    #[serde(default)]
    pub last_change: Option<BreakerChange>,
}

impl BreakerState {
    /// A closed breaker at `now_ms`.
    pub fn new(now_ms: u64) -> BreakerState {
        BreakerState {
            stored: BreakerMode::Closed,
            window_start_ms: now_ms,
            answered: 0,
            failed: 0,
            throttled: 0,
            consecutive: 0,
            opened_ms: 0,
            open_until_ms: 0,
            cooldown_ms: 0,
            probe_until_ms: 0,
            reason: None,
            trips: 0,
            last_change: None,
        }
    }

    /// The mode at `now_ms`: an open breaker whose cooldown has ended is half-open.
    pub fn mode(&self, now_ms: u64) -> BreakerMode {
        match self.stored {
            BreakerMode::Open if now_ms >= self.open_until_ms => BreakerMode::HalfOpen,
            mode => mode,
        }
    }

    /// What a request of `priority` may do at `now_ms`.
    pub fn admit(&self, priority: Priority, policy: &BreakerPolicy, now_ms: u64) -> Admit {
        let critical = priority == Priority::Critical;
        match self.mode(now_ms) {
            BreakerMode::Closed => Admit::Send,
            BreakerMode::Open if critical => Admit::Wait {
                until_ms: self.open_until_ms,
            },
            BreakerMode::Open => Admit::Shed {
                retry_after_ms: self.open_until_ms - now_ms,
            },
            BreakerMode::HalfOpen if self.probe_until_ms <= now_ms => Admit::Probe,
            BreakerMode::HalfOpen if critical => Admit::Wait {
                until_ms: self.probe_until_ms,
            },
            // A probe is out: come back when its answer is likely in.
            BreakerMode::HalfOpen => Admit::Shed {
                retry_after_ms: self.cooldown_ms.max(millis(policy.cooldown)),
            },
        }
    }

    /// The state with the probe claimed at `now_ms`, or `None` if another has the way.
    pub fn claim_probe(&self, policy: &BreakerPolicy, now_ms: u64) -> Option<BreakerState> {
        if self.mode(now_ms) != BreakerMode::HalfOpen || self.probe_until_ms > now_ms {
            return None;
        }
        let mut next = self.clone();
        if next.stored == BreakerMode::Open {
            next.stored = BreakerMode::HalfOpen;
            next.last_change = Some(BreakerChange {
                from: BreakerMode::Open,
                to: BreakerMode::HalfOpen,
                reason: None,
                at_ms: now_ms,
            });
        }
        next.probe_until_ms = now_ms + millis(policy.probe_timeout);
        Some(next)
    }

    /// The state after `outcomes` at `now_ms`; `throttle_counts` says whether a 429 storm
    /// opens it (see the module docs). Returns the change of mode, if any.
    pub fn record(
        &self,
        outcomes: &Outcomes,
        throttle_counts: bool,
        policy: &BreakerPolicy,
        now_ms: u64,
    ) -> (BreakerState, Option<BreakerChange>) {
        let mut next = self.clone();
        let retry_after = outcomes.retry_after_ms.min(millis(policy.max_retry_after));
        match self.mode(now_ms) {
            BreakerMode::Closed => {
                if now_ms >= next.window_start_ms + millis(policy.window) {
                    next.window_start_ms = now_ms;
                    next.answered = 0;
                    next.failed = 0;
                    next.throttled = 0;
                }
                next.answered = next.answered.saturating_add(outcomes.answered);
                next.failed = next.failed.saturating_add(outcomes.failed);
                next.throttled = next.throttled.saturating_add(outcomes.throttled);
                next.consecutive = if outcomes.answered > 0 {
                    outcomes.trailing_failed
                } else {
                    next.consecutive.saturating_add(outcomes.failed)
                };
                let total =
                    f64::from(next.answered) + f64::from(next.failed) + f64::from(next.throttled);
                let tripped = |count: u32| {
                    count >= policy.min_failures && f64::from(count) >= policy.failure_ratio * total
                };
                let reason = if retry_after > 0 {
                    Some(TripReason::RetryAfter)
                } else if next.consecutive >= policy.min_failures || tripped(next.failed) {
                    Some(TripReason::Failures)
                } else if throttle_counts && tripped(next.throttled) {
                    Some(TripReason::Throttled)
                } else {
                    None
                };
                match reason {
                    Some(reason) => {
                        let cooldown = millis(policy.cooldown).max(retry_after);
                        let change = next.open(reason, cooldown, now_ms);
                        (next, change)
                    }
                    None => (next, None),
                }
            }
            BreakerMode::Open | BreakerMode::HalfOpen => {
                // Only the probe's answer counts: an exchange sent after the cooldown ended.
                let since = next.open_until_ms;
                if outcomes.failed > 0 && outcomes.last_failed_sent_ms >= since
                    || retry_after > 0 && outcomes.throttled > 0
                {
                    let doubled = next
                        .cooldown_ms
                        .saturating_mul(2)
                        .clamp(millis(policy.cooldown), millis(policy.max_cooldown));
                    let (reason, cooldown) = if retry_after > 0 {
                        (
                            TripReason::RetryAfter,
                            retry_after.max(millis(policy.cooldown)),
                        )
                    } else {
                        (TripReason::ProbeFailed, doubled)
                    };
                    let change = next.open(reason, cooldown, now_ms);
                    return (next, change);
                }
                if outcomes.answered > 0 && outcomes.last_answered_sent_ms >= since {
                    let from = self.mode(now_ms);
                    next.stored = BreakerMode::Closed;
                    next.window_start_ms = now_ms;
                    next.answered = 0;
                    next.failed = 0;
                    next.throttled = 0;
                    next.consecutive = 0;
                    next.probe_until_ms = 0;
                    let change = BreakerChange {
                        from,
                        to: BreakerMode::Closed,
                        reason: None,
                        at_ms: now_ms,
                    };
                    next.last_change = Some(change);
                    return (next, Some(change));
                }
                (next, None)
            }
        }
    }

    fn open(&mut self, reason: TripReason, cooldown_ms: u64, now_ms: u64) -> Option<BreakerChange> {
        let from = self.mode(now_ms);
        self.stored = BreakerMode::Open;
        self.opened_ms = now_ms;
        self.open_until_ms = now_ms + cooldown_ms;
        self.cooldown_ms = cooldown_ms;
        self.probe_until_ms = 0;
        self.reason = Some(reason);
        self.trips += 1;
        self.answered = 0;
        self.failed = 0;
        self.throttled = 0;
        self.consecutive = 0;
        let change = BreakerChange {
            from,
            to: BreakerMode::Open,
            reason: Some(reason),
            at_ms: now_ms,
        };
        self.last_change = Some(change);
        Some(change)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(n: u32, sent_ms: u64) -> Outcomes {
        Outcomes {
            failed: n,
            trailing_failed: n,
            last_failed_sent_ms: sent_ms,
            ..Outcomes::default()
        }
    }

    fn answered(n: u32, sent_ms: u64) -> Outcomes {
        Outcomes {
            answered: n,
            last_answered_sent_ms: sent_ms,
            ..Outcomes::default()
        }
    }

    #[test]
    fn a_burst_of_failures_opens_it_and_a_trickle_does_not() {
        let p = BreakerPolicy::default();
        let s = BreakerState::new(0);
        // 9 failures among 100: below both bounds.
        let (s, c) = s.record(
            &Outcomes {
                answered: 91,
                ..failed(9, 10)
            },
            false,
            &p,
            100,
        );
        assert_eq!((c, s.mode(100)), (None, BreakerMode::Closed));
        // Interleaved with answers (never more than 3 in a row): enough failures, not half.
        let some = Outcomes {
            answered: 60,
            trailing_failed: 2,
            ..failed(20, 10)
        };
        let (s, c) = s.record(&some, false, &p, 200);
        assert_eq!(c, None, "{s:?}");
        // Many more, still interleaved: half of all, so the ratio opens it.
        let most = Outcomes {
            answered: 10,
            trailing_failed: 3,
            ..failed(200, 250)
        };
        let (s, c) = s.record(&most, false, &p, 300);
        assert_eq!(
            c.map(|c| (c.to, c.reason)),
            Some((BreakerMode::Open, Some(TripReason::Failures)))
        );
        assert_eq!(s.open_until_ms, 1_300);
    }

    #[test]
    fn failures_in_a_row_open_it_however_many_answers_came_before() {
        let p = BreakerPolicy::default();
        let (s, _) = BreakerState::new(0).record(&answered(5_000, 10), false, &p, 100);
        // Answers, then 6 failures in a row; then 4 more: ten in a row.
        let mixed = Outcomes {
            answered: 3,
            trailing_failed: 6,
            ..failed(7, 150)
        };
        let (s, c) = s.record(&mixed, false, &p, 200);
        assert_eq!((c, s.consecutive), (None, 6));
        let (s, c) = s.record(&failed(4, 250), false, &p, 300);
        assert_eq!(
            c.map(|c| c.reason),
            Some(Some(TripReason::Failures)),
            "{s:?}"
        );
        // A failure, then an answer: the run is over.
        let (s, _) = BreakerState::new(0).record(&failed(9, 10), false, &p, 20);
        let (s, c) = s.record(
            &Outcomes {
                trailing_failed: 0,
                ..answered(1, 30)
            },
            false,
            &p,
            40,
        );
        assert_eq!((c, s.consecutive), (None, 0));
    }

    #[test]
    fn the_window_forgets_old_failures() {
        let p = BreakerPolicy::default();
        let s = BreakerState::new(0);
        let (s, _) = s.record(&failed(9, 0), false, &p, 0);
        let (s, _) = s.record(
            &Outcomes {
                trailing_failed: 0,
                ..answered(1, 5)
            },
            false,
            &p,
            10,
        );
        let (s, c) = s.record(&failed(9, 10_999), false, &p, 11_000);
        assert_eq!(c, None);
        assert_eq!(s.failed, 9);
    }

    #[test]
    fn while_open_low_is_shed_and_critical_waits_then_one_probe_goes() {
        let p = BreakerPolicy::default();
        let (s, _) = BreakerState::new(0).record(&failed(10, 0), false, &p, 1_000);
        assert_eq!(
            s.admit(Priority::Low, &p, 1_200),
            Admit::Shed {
                retry_after_ms: 800
            }
        );
        assert_eq!(
            s.admit(Priority::High, &p, 1_200),
            Admit::Shed {
                retry_after_ms: 800
            }
        );
        assert_eq!(
            s.admit(Priority::Critical, &p, 1_200),
            Admit::Wait { until_ms: 2_000 }
        );
        // The cooldown is over: the first asker probes, then the way is taken.
        assert_eq!(s.mode(2_000), BreakerMode::HalfOpen);
        assert_eq!(s.admit(Priority::Critical, &p, 2_000), Admit::Probe);
        let s = s.claim_probe(&p, 2_000).unwrap();
        assert!(s.claim_probe(&p, 2_001).is_none());
        assert_eq!(
            s.admit(Priority::Low, &p, 2_001),
            Admit::Shed {
                retry_after_ms: 1_000
            }
        );
        assert_eq!(
            s.admit(Priority::Critical, &p, 2_001),
            Admit::Wait { until_ms: 37_000 }
        );
        // A probe that never answers is given up.
        assert!(s.claim_probe(&p, 37_000).is_some());
    }

    #[test]
    fn a_failed_probe_doubles_the_cooldown_up_to_its_cap_and_an_answer_closes() {
        let p = BreakerPolicy::default();
        let (mut s, _) = BreakerState::new(0).record(&failed(10, 0), false, &p, 0);
        let mut cooldowns = Vec::new();
        for _ in 0..5 {
            let now = s.open_until_ms;
            s = s.claim_probe(&p, now).unwrap();
            let (n, c) = s.record(&failed(1, now), false, &p, now + 5);
            assert_eq!(c.map(|c| c.reason), Some(Some(TripReason::ProbeFailed)));
            cooldowns.push(n.cooldown_ms);
            s = n;
        }
        assert_eq!(cooldowns, [2_000, 4_000, 4_000, 4_000, 4_000]);
        // A failure of a request sent before the half-open began does not reopen it.
        let now = s.open_until_ms;
        s = s.claim_probe(&p, now).unwrap();
        let (s, c) = s.record(&failed(3, now - 10), false, &p, now + 1);
        assert_eq!(c, None);
        let (s, c) = s.record(&answered(1, now), false, &p, now + 20);
        assert_eq!(
            c.map(|c| (c.from, c.to)),
            Some((BreakerMode::HalfOpen, BreakerMode::Closed))
        );
        assert_eq!(s.admit(Priority::Low, &p, now + 21), Admit::Send);
        assert_eq!(s.trips, 6);
    }

    #[test]
    fn a_429_storm_opens_it_only_when_429s_count_and_retry_after_always() {
        let p = BreakerPolicy::default();
        let storm = Outcomes {
            throttled: 50,
            answered: 10,
            ..Outcomes::default()
        };
        let (_, c) = BreakerState::new(0).record(&storm, false, &p, 10);
        assert_eq!(c, None, "an adaptive limit above its floor handles 429s");
        let (_, c) = BreakerState::new(0).record(&storm, true, &p, 10);
        assert_eq!(c.map(|c| c.reason), Some(Some(TripReason::Throttled)));
        let paused = Outcomes {
            throttled: 1,
            retry_after_ms: 120_000,
            ..Outcomes::default()
        };
        let (s, c) = BreakerState::new(0).record(&paused, false, &p, 10);
        assert_eq!(c.map(|c| c.reason), Some(Some(TripReason::RetryAfter)));
        assert_eq!(s.open_until_ms, 60_010, "cut to the longest honoured");
    }

    #[test]
    fn policies_are_validated_and_the_state_round_trips() {
        assert!(BreakerPolicy::default().validate().is_ok());
        let p = BreakerPolicy {
            failure_ratio: 1.5,
            ..BreakerPolicy::default()
        };
        assert!(p.validate().unwrap_err().contains("ratio"));
        let (s, _) =
            BreakerState::new(0).record(&failed(10, 0), false, &BreakerPolicy::default(), 5);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<BreakerState>(&json).unwrap(), s);
    }
}
