//! The adaptive concurrency limit: how D-ID's answers move the limit. Pure: time is a number
//! of milliseconds the caller passes in, so the controller is tested with virtual time.
//!
//! D-ID publishes no concurrency limit, so the limit is learned (AIMD, with a memory of the
//! level that was too high):
//! - **A drop** (a 429, or an exchange that timed out) of a request *sent after the limit last
//!   went down* (by more than [`LimitPolicy::settle`]) lowers the limit. Answers to requests sent under the old, higher limit say
//!   nothing about the new one, so they are ignored; this is what keeps a burst of 429s from
//!   cutting the limit once per 429.
//!   - Right after a raise (within [`LimitPolicy::probe_window`]), the raise was a probe that
//!     failed: the limit goes back to where it was, and the level that failed is *held*: not
//!     tried again for [`LimitPolicy::probe_hold`], twice as long each time it fails again, up
//!     to [`LimitPolicy::max_probe_hold`].
//!   - Otherwise the limit is multiplied by [`LimitPolicy::backoff`] (at least one less), and
//!     the level it left is held the same way.
//! - **A raise** by one happens at most every [`LimitPolicy::raise_every`], only while the limit
//!   binds (some exchange waited for its slot), only after answers that were not drops, never
//!   to a held level, and not while the mean latency is above [`LimitPolicy::latency_factor`]
//!   times its baseline (the lowest mean seen, drifting up towards what is normal now) (rising latency is the first sign of a saturated upstream, so the limit
//!   stops growing there).
//!
//! The state is a plain serializable value: a fleet shares one by storing it (see
//! `ports::SharedRecords`), each instance folding its [`Window`] of answers into it.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How the limit moves (see the module docs). Plain data; [`LimitPolicy::validate`] checks it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitPolicy {
    /// The lowest limit (≥ 1).
    pub floor: u32,
    /// The highest limit (≥ `floor`).
    pub ceiling: u32,
    /// The factor a drop multiplies the limit by, within `0.5..=0.95` (default 0.7).
    pub backoff: f64,
    /// The least time between two raises (default 1 s).
    pub raise_every: Duration,
    /// Drops of requests sent within this long after a cut still count as sent before it
    /// (default 100 ms): the new limit takes a moment to be in force everywhere (stored,
    /// then served), and a send time is known to the millisecond.
    pub settle: Duration,
    /// Drops this soon after a raise mean the raise failed (default 5 s).
    pub probe_window: Duration,
    /// How long a level that was too high is not tried again, the first time (default 60 s).
    pub probe_hold: Duration,
    /// The longest hold, reached by doubling (default 15 min).
    pub max_probe_hold: Duration,
    /// No raise while the window's mean latency is above this times the baseline, `≥ 1.0`
    /// (default 3.0: D-ID's latency varies by operation and load, so only a clear rise
    /// stops growth).
    pub latency_factor: f64,
}

impl LimitPolicy {
    /// The default policy between `floor` and `ceiling`.
    pub fn new(floor: u32, ceiling: u32) -> LimitPolicy {
        LimitPolicy {
            floor,
            ceiling,
            backoff: 0.7,
            raise_every: Duration::from_secs(1),
            settle: Duration::from_millis(100),
            probe_window: Duration::from_secs(5),
            probe_hold: Duration::from_secs(60),
            max_probe_hold: Duration::from_secs(15 * 60),
            latency_factor: 3.0,
        }
    }

    /// What is wrong with the policy, if anything, in words naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.floor == 0 {
            return Err("the floor must be at least 1".to_owned());
        }
        if self.ceiling < self.floor {
            return Err(format!(
                "the ceiling {} is below the floor {}",
                self.ceiling, self.floor
            ));
        }
        if !(0.5..=0.95).contains(&self.backoff) {
            return Err(format!(
                "the backoff must be within 0.5..=0.95, got {}",
                self.backoff
            ));
        }
        if !(self.latency_factor >= 1.0 && self.latency_factor.is_finite()) {
            return Err(format!(
                "the latency factor must be at least 1, got {}",
                self.latency_factor
            ));
        }
        if self.max_probe_hold < self.probe_hold {
            return Err("the longest probe hold is shorter than the first".to_owned());
        }
        Ok(())
    }

    /// `limit` within the floor and the ceiling.
    pub fn clamp(&self, limit: u32) -> u32 {
        limit.clamp(self.floor, self.ceiling.max(self.floor))
    }
}

/// What one instance saw of D-ID's answers since it last reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    /// Exchanges answered with anything but a 429 (a 4xx is D-ID's answer too).
    pub answered: u32,
    /// Exchanges answered 429.
    pub throttled: u32,
    /// Exchanges that timed out.
    pub timed_out: u32,
    /// The latest send time (ms) of a throttled or timed-out exchange; 0 if none.
    pub last_drop_sent_ms: u64,
    /// Whether the limit bound: some exchange waited for its slot.
    pub saturated: bool,
    /// The summed latency of the answered exchanges, in microseconds.
    pub latency_sum_us: u64,
}

impl Window {
    /// Whether there is nothing in it.
    pub fn is_empty(&self) -> bool {
        self.answered == 0 && self.throttled == 0 && self.timed_out == 0
    }

    /// Throttled and timed-out exchanges.
    pub fn drops(&self) -> u32 {
        self.throttled.saturating_add(self.timed_out)
    }

    /// The mean latency of the answered exchanges, in microseconds.
    pub fn mean_latency_us(&self) -> Option<u64> {
        (self.answered > 0).then(|| self.latency_sum_us / u64::from(self.answered))
    }

    /// Both windows' counts in one.
    pub fn merge(&mut self, other: &Window) {
        self.answered = self.answered.saturating_add(other.answered);
        self.throttled = self.throttled.saturating_add(other.throttled);
        self.timed_out = self.timed_out.saturating_add(other.timed_out);
        self.last_drop_sent_ms = self.last_drop_sent_ms.max(other.last_drop_sent_ms);
        self.saturated |= other.saturated;
        self.latency_sum_us = self.latency_sum_us.saturating_add(other.latency_sum_us);
    }
}

/// Why the limit changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitReason {
    /// D-ID answered 429 to a request sent under the current limit.
    Throttled,
    /// A request sent under the current limit timed out.
    TimedOut,
    /// The raise just before failed: back to the level before it.
    ProbeFailed,
    /// The limit bound and D-ID kept up: one more.
    Raised,
    /// An operator set it (`PUT /limit`).
    Operator,
}

impl LimitReason {
    /// All reasons, for metric labels.
    pub const ALL: [LimitReason; 5] = [
        LimitReason::Throttled,
        LimitReason::TimedOut,
        LimitReason::ProbeFailed,
        LimitReason::Raised,
        LimitReason::Operator,
    ];

    /// The snake-case name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitReason::Throttled => "throttled",
            LimitReason::TimedOut => "timed_out",
            LimitReason::ProbeFailed => "probe_failed",
            LimitReason::Raised => "raised",
            LimitReason::Operator => "operator",
        }
    }
}

impl fmt::Display for LimitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One change of the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitChange {
    /// The limit before.
    pub from: u32,
    /// The limit after.
    pub to: u32,
    /// Why.
    pub reason: LimitReason,
    /// When (ms since the Unix epoch).
    pub at_ms: u64,
}

/// A level found too high, and until when it is not tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// The level (limits at or above it are not tried).
    pub level: u32,
    /// Until when (ms since the Unix epoch).
    pub until_ms: u64,
    /// How long this hold was (the next one at the same level is twice as long).
    pub hold_ms: u64,
}

/// The learned limit and what it remembers (see the module docs). Serializable, so a fleet
/// can share one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitState {
    /// The limit now.
    pub limit: u32,
    /// When it last changed (ms).
    pub changed_ms: u64,
    /// When it last went down (ms); drops of requests sent before then are ignored.
    pub lowered_ms: u64,
    /// The level before the last change, when that change was a raise.
    #[serde(default)]
    pub raised_from: Option<u32>,
    /// The level last found too high (held until its `until_ms`; kept after that so that a
    /// second failure at the same level holds it twice as long).
    #[serde(default)]
    pub held: Option<Held>,
    /// The lowest mean latency seen (µs), drifting up slowly so that it follows a slower
    /// upstream.
    #[serde(default)]
    pub baseline_us: Option<u64>,
    /// Changes so far.
    #[serde(default)]
    pub changes: u64,
    /// The last change.
    #[serde(default)]
    pub last_change: Option<LimitChange>,
}

impl LimitState {
    /// A state starting at `limit` (clamped to the policy) at `now_ms`.
    pub fn new(limit: u32, policy: &LimitPolicy, now_ms: u64) -> LimitState {
        LimitState {
            limit: policy.clamp(limit),
            changed_ms: now_ms,
            lowered_ms: now_ms,
            raised_from: None,
            held: None,
            baseline_us: None,
            changes: 0,
            last_change: None,
        }
    }

    /// The state after an operator set the limit to `limit` (clamped): what was learned about
    /// too-high levels is forgotten.
    pub fn set(
        &self,
        limit: u32,
        policy: &LimitPolicy,
        now_ms: u64,
    ) -> (LimitState, Option<LimitChange>) {
        let to = policy.clamp(limit);
        let mut next = self.clone();
        next.held = None;
        next.raised_from = None;
        next.lowered_ms = now_ms;
        let change = next.change(to, LimitReason::Operator, now_ms);
        (next, change)
    }

    /// The state after `window`, at `now_ms`, and the change it made if any.
    pub fn apply(
        &self,
        window: &Window,
        policy: &LimitPolicy,
        now_ms: u64,
    ) -> (LimitState, Option<LimitChange>) {
        let mut next = self.clone();
        // The bounds may have been changed by a restart with other settings.
        let clamped = policy.clamp(next.limit);
        if clamped != next.limit {
            next.limit = clamped;
        }
        let mean = window.mean_latency_us();
        if let Some(mean) = mean {
            // The baseline follows the lowest mean, and creeps up by 1/16 of the gap a window
            // so that a slower upstream (or another mix of operations) becomes the new normal
            // within seconds of steady answers.
            next.baseline_us = Some(match next.baseline_us {
                Some(b) if mean < b => mean,
                Some(b) => b + (mean - b) / 16,
                None => mean,
            });
        }
        if window.drops() > 0 && window.last_drop_sent_ms >= self.lowered_ms + millis(policy.settle)
        {
            let reason = if window.throttled > 0 {
                LimitReason::Throttled
            } else {
                LimitReason::TimedOut
            };
            let probe = self
                .raised_from
                .filter(|_| now_ms < self.changed_ms + millis(policy.probe_window));
            let (to, reason) = match probe {
                Some(before) => (before, LimitReason::ProbeFailed),
                None => {
                    let cut = (f64::from(next.limit) * policy.backoff).floor() as u32;
                    (cut.min(next.limit.saturating_sub(1)), reason)
                }
            };
            let to = policy.clamp(to);
            if to < next.limit {
                let level = next.limit;
                let hold_ms = match self.held {
                    Some(h) if h.level == level => {
                        (h.hold_ms.saturating_mul(2)).min(millis(policy.max_probe_hold))
                    }
                    _ => millis(policy.probe_hold),
                };
                next.held = Some(Held {
                    level,
                    until_ms: now_ms + hold_ms,
                    hold_ms,
                });
                next.lowered_ms = now_ms;
                next.raised_from = None;
                let change = next.change(to, reason, now_ms);
                return (next, change);
            }
            // At the floor: nothing lower to go to; the breaker handles what is left.
            next.lowered_ms = now_ms;
            return (next, None);
        }
        let latency_ok = match (mean, self.baseline_us) {
            (Some(mean), Some(base)) => (mean as f64) <= policy.latency_factor * base as f64,
            _ => true,
        };
        let up = next.limit.saturating_add(1);
        let may_raise = window.saturated
            && window.answered > 0
            && window.drops() == 0
            && latency_ok
            && next.limit < policy.ceiling
            && now_ms >= self.changed_ms + millis(policy.raise_every)
            && !next
                .held
                .is_some_and(|h| up >= h.level && now_ms < h.until_ms);
        if may_raise {
            next.raised_from = Some(next.limit);
            let change = next.change(up, LimitReason::Raised, now_ms);
            return (next, change);
        }
        (next, None)
    }

    fn change(&mut self, to: u32, reason: LimitReason, now_ms: u64) -> Option<LimitChange> {
        if to == self.limit {
            return None;
        }
        let change = LimitChange {
            from: self.limit,
            to,
            reason,
            at_ms: now_ms,
        };
        self.limit = to;
        self.changed_ms = now_ms;
        self.changes += 1;
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

    fn policy() -> LimitPolicy {
        LimitPolicy::new(1, 64)
    }

    fn ok(saturated: bool) -> Window {
        Window {
            answered: 10,
            saturated,
            latency_sum_us: 10 * 50_000,
            ..Window::default()
        }
    }

    fn throttled(sent_ms: u64) -> Window {
        Window {
            answered: 5,
            throttled: 1,
            last_drop_sent_ms: sent_ms,
            saturated: true,
            latency_sum_us: 5 * 50_000,
            ..Window::default()
        }
    }

    /// A fake upstream with a hidden cap: a window at a limit above it has 429s, sent now.
    fn run(start: u32, cap: u32, secs: u64) -> Vec<(u64, u32)> {
        let p = policy();
        let mut s = LimitState::new(start, &p, 0);
        let mut trace = Vec::new();
        // Windows every 250 ms.
        for tick in 1..=secs * 4 {
            let now = tick * 250;
            let w = if s.limit > cap {
                throttled(now - 1)
            } else {
                ok(true)
            };
            s = s.apply(&w, &p, now).0;
            trace.push((now, s.limit));
        }
        trace
    }

    #[test]
    fn from_twenty_it_settles_at_or_just_below_a_hidden_cap_of_seven() {
        let trace = run(20, 7, 120);
        let settled = trace.iter().position(|(_, l)| (6..=7).contains(l)).unwrap();
        // 20 → 14 → 9 → 6 in three windows.
        assert!(trace[settled].0 <= 1_000, "{:?}", &trace[..8]);
        // After settling the limit only leaves [6, 7] for the probe of 8, once a minute or
        // less often, and each probe lasts one window.
        let above: Vec<_> = trace[settled..].iter().filter(|(_, l)| *l > 7).collect();
        assert!(above.len() <= 2, "{above:?}");
        assert!(trace[settled..].iter().all(|(_, l)| *l >= 6), "{trace:?}");
    }

    #[test]
    fn from_one_it_reaches_six_in_seconds_and_stays() {
        let trace = run(1, 7, 60);
        let reached = trace.iter().find(|(_, l)| *l >= 6).unwrap();
        assert!(reached.0 <= 6_000, "{reached:?}");
        assert!(
            trace
                .iter()
                .skip_while(|(_, l)| *l < 6)
                .all(|(_, l)| *l >= 6)
        );
    }

    #[test]
    fn drops_of_requests_sent_before_the_last_decrease_are_ignored() {
        let p = policy();
        let s = LimitState::new(20, &p, 0);
        let (s, c) = s.apply(&throttled(150), &p, 200);
        assert_eq!(
            c.map(|c| (c.from, c.to, c.reason)),
            Some((20, 14, LimitReason::Throttled))
        );
        // A burst of late 429s, all sent before 200: no further cut.
        let (s2, c) = s.apply(&throttled(150), &p, 300);
        assert_eq!(c, None);
        assert_eq!(s2.limit, 14);
        // Nor one sent right after it, before the new limit is surely in force.
        assert_eq!(s2.apply(&throttled(250), &p, 400).1, None);
        // One sent after that does cut.
        let (_, c) = s2.apply(&throttled(310), &p, 400);
        assert_eq!(c.map(|c| c.to), Some(9));
    }

    #[test]
    fn a_failed_probe_goes_back_and_holds_the_level_doubling_each_time() {
        let p = policy();
        let mut s = LimitState::new(7, &p, 0);
        let (n, c) = s.apply(&ok(true), &p, 1_000);
        assert_eq!(c.map(|c| c.to), Some(8));
        s = n;
        let (n, c) = s.apply(&throttled(1_100), &p, 1_200);
        assert_eq!(
            c.map(|c| (c.to, c.reason)),
            Some((7, LimitReason::ProbeFailed))
        );
        assert_eq!(n.held.map(|h| (h.level, h.until_ms)), Some((8, 61_200)));
        s = n;
        // Held: no raise to 8 before the hold ends, however long the limit binds.
        for t in (2_000..61_000).step_by(1_000) {
            let (n, c) = s.apply(&ok(true), &p, t);
            assert_eq!(c, None, "at {t}");
            s = n;
        }
        let (n, c) = s.apply(&ok(true), &p, 61_500);
        assert_eq!(c.map(|c| c.to), Some(8));
        s = n;
        let (n, _) = s.apply(&throttled(61_600), &p, 61_700);
        // The same level failed again: twice as long.
        assert_eq!(n.held.map(|h| h.hold_ms), Some(120_000));
        assert_eq!(n.limit, 7);
    }

    #[test]
    fn it_grows_only_while_the_limit_binds_and_latency_holds() {
        let p = policy();
        let s = LimitState::new(4, &p, 0);
        // Not saturated: nobody waited, so more slots would go unused.
        assert_eq!(s.apply(&ok(false), &p, 5_000).1, None);
        let s = s.apply(&ok(true), &p, 1_000).0; // baseline 50 ms, raised to 5
        assert_eq!(s.limit, 5);
        let slow = Window {
            latency_sum_us: 10 * 200_000,
            ..ok(true)
        };
        let (s2, c) = s.apply(&slow, &p, 3_000);
        assert_eq!(c, None, "four times the baseline: no raise");
        assert_eq!(s2.limit, 5);
        // At most one raise per second.
        let (s3, c) = s.apply(&ok(true), &p, 1_500);
        assert_eq!((c, s3.limit), (None, 5));
    }

    #[test]
    fn bounds_hold_and_an_operator_resets_what_was_learned() {
        let p = LimitPolicy::new(3, 10);
        let mut s = LimitState::new(50, &p, 0);
        assert_eq!(s.limit, 10);
        for t in 1..20u64 {
            s = s.apply(&throttled(t * 200 - 1), &p, t * 200).0;
        }
        assert_eq!(s.limit, 3, "never below the floor");
        let (s, c) = s.set(9, &p, 5_000);
        assert_eq!(
            c.map(|c| (c.from, c.to, c.reason)),
            Some((3, 9, LimitReason::Operator))
        );
        assert_eq!(s.held, None);
        let mut s = s;
        for t in 6..100u64 {
            s = s.apply(&ok(true), &p, t * 1_000).0;
        }
        assert_eq!(s.limit, 10, "never above the ceiling");
    }

    #[test]
    fn a_timeout_cuts_like_a_429() {
        let p = policy();
        let s = LimitState::new(10, &p, 0);
        let w = Window {
            timed_out: 1,
            last_drop_sent_ms: 110,
            ..Window::default()
        };
        assert_eq!(
            s.apply(&w, &p, 200).1.map(|c| (c.to, c.reason)),
            Some((7, LimitReason::TimedOut))
        );
    }

    #[test]
    fn policies_are_validated() {
        assert!(LimitPolicy::new(1, 10).validate().is_ok());
        assert!(LimitPolicy::new(0, 10).validate().is_err());
        assert!(LimitPolicy::new(5, 4).validate().is_err());
        let mut p = LimitPolicy::new(1, 10);
        p.backoff = 0.99;
        assert!(p.validate().unwrap_err().contains("backoff"));
    }

    #[test]
    fn the_state_round_trips_through_json() {
        let p = policy();
        let s = LimitState::new(7, &p, 0).apply(&ok(true), &p, 1_000).0;
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<LimitState>(&json).unwrap(), s);
    }
}
