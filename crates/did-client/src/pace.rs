//! Pacing sends by the rate D-ID allows, learned from its 429s: [`PacingConfig`] and the
//! client's pacer.
//!
//! D-ID throttles by rate as well as by concurrency, and documents neither its numbers nor a
//! `Retry-After`. A client that only caps concurrency keeps sending into the throttle: every
//! 429 is a wasted call, and a job whose create or poll was throttled tries again later. So
//! the client learns a rate it can keep and spaces its sends by it:
//!
//! - **Unpaced until throttled.** While D-ID has not answered 429 (and again after
//!   [`PacingConfig::quiet`] without one), a send goes at once: no wait, no queue, no timer.
//! - **Multiplicative decrease.** A 429 sets the rate to [`PacingConfig::decrease`] times
//!   the rate sends went at: the paced rate, or the measured one if that is lower (sends
//!   over the last second, or since sending began if that was less than a second ago, so a
//!   client that has just started or restarted is not taken for a slow one: coming down
//!   from too high a rate costs a few 429s, climbing from too low a one costs seconds),
//!   never below [`PacingConfig::min_rps`]. Only a 429 to a send made *after* the last
//!   decrease lowers it again, so a burst of 429s to sends that were already under way
//!   counts once.
//! - **Additive increase.** While paced, each answer that is not a 429 adds
//!   `increase_rps / rate`, i.e. [`PacingConfig::increase_rps`] per second of answers at
//!   the rate, up to [`PacingConfig::max_rps`].
//! - **`Retry-After`.** A 429 that carries one holds every send until it has passed (at
//!   most [`PacingConfig::max_hold`]).
//!
//! Paced sends are spaced `1 / rate` apart (GCRA without a burst: the next send may go at
//! `max(previous, now) + 1 / rate`). Callers that must wait queue in priority order, then in
//! arrival order, the same order the limiter serves; a caller that gives up leaves the queue
//! at once and takes no turn. The queue holds at most [`MAX_WAITING`] callers; one more is
//! answered [`VideoApiError::RateLimited`] at once, without sending.
//!
//! A turn is taken before the limiter's permit, so no concurrency slot is held while a send
//! waits for its turn. The pacer learns per client, i.e. per service instance: instances
//! sharing one D-ID key each learn their part of the account's rate from the 429s they get.
//! A 429 from a concurrency cap teaches the pacer too (D-ID's answer does not say which limit
//! it is); the rate then only comes down to what the concurrency allowed.
//!
//! The state machine (the pacer's `State`) is a pure function of the instants passed in, so
//! the tests drive it with made-up times; the waiting itself runs on `tokio::time`.

use std::cmp::Reverse;
use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use domain::Priority;
use ports::{PacingStats, VideoApiError};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, info};

/// The most callers that wait for their turn at once; one more is refused at once.
pub const MAX_WAITING: usize = 4096;

/// How long the window is over which the send rate is measured before pacing starts.
const WINDOW: Duration = Duration::from_secs(1);
/// The shortest span a rate is measured over (a burst of sends at one instant is not an
/// infinite rate).
const MIN_SPAN: Duration = Duration::from_millis(100);

/// How the pacer learns its rate (see the module docs). Plain data; checked by
/// [`PacingConfig::validate`] when the client is built.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PacingConfig {
    /// Whether sends are paced at all after a 429 (default `true`). Off, every send goes at
    /// once, as before pacing existed.
    pub enabled: bool,
    /// The lowest rate, requests per second (default 1).
    pub min_rps: f64,
    /// The highest paced rate, requests per second (default 1000: the pacer comes down from
    /// what was sent, so the ceiling only bounds its climb).
    pub max_rps: f64,
    /// What a second of answers without a 429 adds to the rate, requests per second
    /// (default 1).
    pub increase_rps: f64,
    /// The factor a 429 multiplies the rate by, above 0 and below 1 (default 0.8).
    pub decrease: f64,
    /// How long without a 429 until sends are unpaced again (default 30 s).
    pub quiet: Duration,
    /// The longest `Retry-After` sends are held for (default 60 s).
    pub max_hold: Duration,
}

impl Default for PacingConfig {
    fn default() -> Self {
        PacingConfig {
            enabled: true,
            min_rps: 1.0,
            max_rps: 1000.0,
            increase_rps: 1.0,
            decrease: 0.8,
            quiet: Duration::from_secs(30),
            max_hold: Duration::from_secs(60),
        }
    }
}

impl PacingConfig {
    /// Pacing off: every send goes at once.
    pub fn off() -> PacingConfig {
        PacingConfig {
            enabled: false,
            ..PacingConfig::default()
        }
    }

    /// Checks the bounds; the message names every field that is out of them.
    pub fn validate(&self) -> Result<(), String> {
        let mut bad = Vec::new();
        if !(self.min_rps.is_finite() && self.min_rps > 0.0) {
            bad.push(format!("min_rps must be above 0, got {}", self.min_rps));
        }
        if !(self.max_rps.is_finite() && self.max_rps >= self.min_rps) {
            bad.push(format!(
                "max_rps must be at least min_rps ({}), got {}",
                self.min_rps, self.max_rps
            ));
        }
        if !(self.increase_rps.is_finite() && self.increase_rps >= 0.0) {
            bad.push(format!(
                "increase_rps must be 0 or more, got {}",
                self.increase_rps
            ));
        }
        if !(self.decrease > 0.0 && self.decrease < 1.0) {
            bad.push(format!(
                "decrease must be above 0 and below 1, got {}",
                self.decrease
            ));
        }
        if self.quiet.is_zero() {
            bad.push("quiet must be above 0".to_owned());
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(bad.join("; "))
        }
    }
}

/// A granted turn: when the send went, for the feedback of its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Turn {
    at: Instant,
}

/// A waiting caller's place: higher priorities first, then arrival.
type Place = (Reverse<Priority>, u64);

/// Sends counted over two windows, for the rate they went at.
#[derive(Debug)]
struct Window {
    start: Instant,
    previous: u32,
    current: u32,
    /// The first send since the windows were last empty: sends that began less than a
    /// window ago are measured over the time since (a client that just started, or came
    /// back, has sent at its rate for that long, not for the whole window).
    active_since: Option<Instant>,
}

impl Window {
    fn roll(&mut self, now: Instant) {
        let since = now.saturating_duration_since(self.start);
        if since >= 2 * WINDOW {
            self.previous = 0;
            self.current = 0;
            self.start = now;
            self.active_since = None;
        } else if since >= WINDOW {
            self.previous = self.current;
            self.current = 0;
            self.start += WINDOW;
        }
    }

    fn record(&mut self, now: Instant) {
        self.roll(now);
        self.active_since.get_or_insert(now);
        self.current = self.current.saturating_add(1);
    }

    /// Sends per second over the last window (the previous window weighted by how much of
    /// it the last second still covers), or over the time since sending began when that is
    /// shorter (at least [`MIN_SPAN`]).
    fn rate(&mut self, now: Instant) -> f64 {
        self.roll(now);
        let active = self.active_since.map(|t| now.saturating_duration_since(t));
        if let Some(active) = active.filter(|a| *a < WINDOW) {
            // Every send of this activity is in the two windows.
            return f64::from(self.previous.saturating_add(self.current))
                / active.max(MIN_SPAN).as_secs_f64();
        }
        let into = now.saturating_duration_since(self.start).as_secs_f64() / WINDOW.as_secs_f64();
        (f64::from(self.previous) * (1.0 - into.min(1.0)) + f64::from(self.current))
            / WINDOW.as_secs_f64()
    }
}

/// What the pacer knows, and what it has done.
#[derive(Debug)]
struct State {
    config: PacingConfig,
    /// `Some(rate)` while paced, in requests per second.
    rate: Option<f64>,
    /// The earliest instant the next paced send may go.
    next_free: Instant,
    /// Every send waits until then (a 429's `Retry-After`).
    hold_until: Option<Instant>,
    /// The last 429, for the quiet period.
    last_throttle: Option<Instant>,
    /// The last decrease: a 429 to a send made before it says nothing new.
    decreased_at: Option<Instant>,
    /// Pacing ended (a quiet period passed) and nobody has been told yet.
    ended: bool,
    window: Window,
    waiting: BTreeSet<Place>,
    next_place: u64,
    delayed: u64,
    delayed_ms: u64,
    throttled: u64,
    decreases: u64,
    holds: u64,
}

/// What a waiting caller does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Send now.
    Go(Turn),
    /// Wait until then (or until the queue moves).
    Wait(Instant),
}

impl State {
    fn new(config: PacingConfig, now: Instant) -> State {
        State {
            config,
            rate: None,
            next_free: now,
            hold_until: None,
            last_throttle: None,
            decreased_at: None,
            ended: false,
            window: Window {
                start: now,
                previous: 0,
                current: 0,
                active_since: None,
            },
            waiting: BTreeSet::new(),
            next_place: 0,
            delayed: 0,
            delayed_ms: 0,
            throttled: 0,
            decreases: 0,
            holds: 0,
        }
    }

    /// Forgets what has passed: an expired hold, and the rate after a quiet period.
    fn refresh(&mut self, now: Instant) {
        if self.hold_until.is_some_and(|h| h <= now) {
            self.hold_until = None;
        }
        if self.rate.is_some()
            && self
                .last_throttle
                .is_none_or(|t| now.saturating_duration_since(t) >= self.config.quiet)
        {
            self.rate = None;
            self.ended = true;
        }
    }

    /// The spacing of paced sends.
    fn interval(&self) -> Option<Duration> {
        self.rate.map(|r| Duration::from_secs_f64(1.0 / r))
    }

    /// The earliest instant a send may go now.
    fn earliest(&self, now: Instant) -> Instant {
        let held = self.hold_until.unwrap_or(now).max(now);
        match self.rate {
            Some(_) => self.next_free.max(held),
            None => held,
        }
    }

    /// Takes the turn at `now`.
    fn grant(&mut self, now: Instant) -> Turn {
        if let Some(interval) = self.interval() {
            self.next_free = self.next_free.max(now) + interval;
        }
        self.window.record(now);
        Turn { at: now }
    }

    /// A caller without a place: its turn at once if nobody waits and a send may go now.
    fn try_now(&mut self, now: Instant) -> Option<Turn> {
        self.refresh(now);
        (self.waiting.is_empty() && self.earliest(now) <= now).then(|| self.grant(now))
    }

    /// A place in the queue at `priority`, or `None` when the queue is full.
    fn enqueue(&mut self, priority: Priority) -> Option<Place> {
        if self.waiting.len() >= MAX_WAITING {
            return None;
        }
        let place = (Reverse(priority), self.next_place);
        self.next_place += 1;
        self.waiting.insert(place);
        Some(place)
    }

    /// The next step of the caller at `place`, which has waited since `since`.
    fn step(&mut self, place: Place, since: Instant, now: Instant) -> Step {
        self.refresh(now);
        let earliest = self.earliest(now);
        // Unpaced and not held: everyone goes (the queue is left from pacing that ended).
        let free = self.rate.is_none() && earliest <= now;
        let first = self.waiting.first() == Some(&place);
        if free || first && earliest <= now {
            self.waiting.remove(&place);
            self.delayed += 1;
            self.delayed_ms = self.delayed_ms.saturating_add(
                u64::try_from(now.saturating_duration_since(since).as_millis()).unwrap_or(u64::MAX),
            );
            return Step::Go(self.grant(now));
        }
        if first {
            return Step::Wait(earliest);
        }
        // Behind someone: woken when the queue moves; this is only the fallback.
        Step::Wait(earliest + self.interval().unwrap_or(Duration::from_millis(10)))
    }

    /// The answer to the send of `turn` came at `now` with `status`.
    fn answered(&mut self, turn: Turn, status: u16, retry_after: Option<Duration>, now: Instant) {
        self.refresh(now);
        if status != 429 {
            if let Some(rate) = self.rate {
                self.rate = Some((rate + self.config.increase_rps / rate).min(self.config.max_rps));
            }
            return;
        }
        self.throttled += 1;
        self.last_throttle = Some(now);
        if let Some(wait) = retry_after.filter(|w| !w.is_zero()) {
            let until = now + wait.min(self.config.max_hold);
            self.hold_until = Some(self.hold_until.map_or(until, |h| h.max(until)));
            self.holds += 1;
        }
        if self.decreased_at.is_some_and(|d| turn.at < d) {
            // Sent before the rate came down: this 429 was already answered.
            return;
        }
        let measured = self.window.rate(now);
        let base = match self.rate {
            Some(rate) if measured > 0.0 => rate.min(measured),
            Some(rate) => rate,
            None => measured,
        };
        let rate = (base * self.config.decrease).clamp(self.config.min_rps, self.config.max_rps);
        // The next send waits a whole interval at the new rate: the bucket at D-ID is empty.
        self.next_free = self
            .next_free
            .max(now + Duration::from_secs_f64(1.0 / rate));
        self.rate = Some(rate);
        self.decreased_at = Some(now);
        self.decreases += 1;
    }

    fn stats(&mut self, now: Instant) -> PacingStats {
        self.refresh(now);
        let c = &self.config;
        PacingStats {
            enabled: c.enabled,
            paced: self.rate.is_some(),
            rate_rps: self.rate,
            held_ms: self.hold_until.map_or(0, |h| {
                u64::try_from(h.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX)
            }),
            waiting: self.waiting.len() as u64,
            delayed: self.delayed,
            delayed_ms: self.delayed_ms,
            throttled: self.throttled,
            decreases: self.decreases,
            retry_after_holds: self.holds,
            min_rps: c.min_rps,
            max_rps: c.max_rps,
            increase_rps: c.increase_rps,
            decrease: c.decrease,
            quiet_ms: u64::try_from(c.quiet.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// The client's pacer (see the module docs): turns in priority order at the learned rate.
#[derive(Debug)]
pub(crate) struct Pacer {
    state: Mutex<State>,
    /// Wakes the waiting callers when the queue moves (a turn taken, a caller gone).
    moved: Notify,
}

/// A caller's place in the queue; leaving it (given up, or granted) lets the next one move.
struct Queued<'a> {
    pacer: &'a Pacer,
    place: Option<Place>,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if let Some(place) = self.place.take() {
            self.pacer.lock().waiting.remove(&place);
        }
        self.pacer.moved.notify_waiters();
    }
}

impl Pacer {
    /// A pacer that starts unpaced.
    pub(crate) fn new(config: PacingConfig) -> Pacer {
        Pacer {
            state: Mutex::new(State::new(config, Instant::now())),
            moved: Notify::new(),
        }
    }

    /// The state (a panic elsewhere leaves it consistent: every change is one assignment
    /// sequence under the lock, so poison is ignored).
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tells the log that pacing ended, once.
    fn tell_ended(ended: bool) {
        if ended {
            info!("no 429 from D-ID for the quiet period: its calls are no longer paced");
        }
    }

    /// Waits for the turn of a send at `priority`. Cancellable: a caller that gives up
    /// leaves the queue and takes no turn. A full queue answers
    /// [`VideoApiError::RateLimited`] with the wait a turn would take, at once.
    pub(crate) async fn turn(&self, priority: Priority) -> Result<Turn, VideoApiError> {
        let since = Instant::now();
        let (first, ended) = {
            let mut state = self.lock();
            let first = match state.try_now(since) {
                Some(turn) => Ok(Ok(turn)),
                None => match state.enqueue(priority) {
                    Some(place) => Err(place),
                    None => Ok(Err(VideoApiError::RateLimited {
                        retry_after: Some(state.earliest(since).saturating_duration_since(since)),
                    })),
                },
            };
            (first, std::mem::take(&mut state.ended))
        };
        Self::tell_ended(ended);
        let place = match first {
            // A turn at once, or the queue is full.
            Ok(decided) => return decided,
            Err(place) => place,
        };
        let mut queued = Queued {
            pacer: self,
            place: Some(place),
        };
        loop {
            let moved = self.moved.notified();
            tokio::pin!(moved);
            // Registered before the state is read, so a move in between is not missed.
            moved.as_mut().enable();
            let step = self.lock().step(place, since, Instant::now());
            match step {
                Step::Go(turn) => {
                    // Out of the queue already; the drop tells the next caller.
                    queued.place = None;
                    drop(queued);
                    return Ok(turn);
                }
                Step::Wait(until) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(until) => {}
                        () = &mut moved => {}
                    }
                }
            }
        }
    }

    /// Learns from D-ID's answer to the send of `turn`.
    pub(crate) fn answered(&self, turn: Turn, status: u16, retry_after: Option<Duration>) {
        let (before, after) = {
            let mut state = self.lock();
            let before = state.rate;
            state.answered(turn, status, retry_after, Instant::now());
            (before, state.rate)
        };
        if status != 429 {
            return;
        }
        // The hold or the slower rate applies to those waiting too.
        self.moved.notify_waiters();
        let hold_ms = retry_after.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        match (before, after) {
            (None, Some(rate)) => {
                info!(
                    rate_rps = rate,
                    ?hold_ms,
                    "D-ID answered 429: pacing its calls"
                );
            }
            (Some(was), Some(rate)) if rate < was => {
                debug!(
                    rate_rps = rate,
                    was_rps = was,
                    ?hold_ms,
                    "D-ID answered 429: pacing slower"
                );
            }
            _ => {}
        }
    }

    /// What the pacer does now, and its counters.
    pub(crate) fn stats(&self) -> PacingStats {
        self.lock().stats(Instant::now())
    }
}

/// The stats of a client built without a pacer ([`PacingConfig::enabled`] off).
pub(crate) fn stats_off(config: &PacingConfig) -> PacingStats {
    let mut state = State::new(*config, Instant::now());
    let mut stats = state.stats(Instant::now());
    stats.enabled = false;
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn config() -> PacingConfig {
        PacingConfig::default()
    }

    /// `n` sends granted at once from `at` on, spaced `gap` apart (unpaced).
    fn send_burst(state: &mut State, at: Instant, n: u32, gap: Duration) -> Vec<Turn> {
        (0..n)
            .map(|i| {
                let now = at + gap * i;
                state.try_now(now).expect("unpaced: at once")
            })
            .collect()
    }

    #[test]
    fn unthrottled_sends_go_at_once_and_unpaced() {
        let t0 = Instant::now();
        let mut s = State::new(config(), t0);
        let turns = send_burst(&mut s, t0, 100, Duration::ZERO);
        for turn in turns {
            s.answered(turn, 200, None, t0);
        }
        let stats = s.stats(t0);
        assert!(!stats.paced);
        assert_eq!(stats.rate_rps, None, "answers alone never start pacing");
        assert_eq!(stats.delayed, 0);
    }

    #[test]
    fn a_429_paces_at_a_fraction_of_the_measured_rate_and_spaces_sends() {
        let t0 = Instant::now();
        let mut s = State::new(config(), t0);
        // 40 sends in the last second: 40 per second.
        let turns = send_burst(&mut s, t0, 40, ms(25));
        let now = t0 + ms(1000);
        s.answered(turns[39], 429, None, now);
        assert_eq!(s.rate, Some(0.8 * 40.0));
        // Sends go 1 / 32 s apart from now on, the first one interval after the 429.
        let gap = Duration::from_secs_f64(1.0 / 32.0);
        assert_eq!(s.try_now(now + ms(10)), None, "too soon");
        let place = s.enqueue(Priority::Normal).unwrap();
        assert_eq!(s.step(place, now, now + ms(10)), Step::Wait(now + gap));
        assert_eq!(
            s.step(place, now, now + gap),
            Step::Go(Turn { at: now + gap })
        );
        assert_eq!(s.try_now(now + gap + ms(1)), None, "spaced");
        assert_eq!(s.try_now(now + gap * 2), Some(Turn { at: now + gap * 2 }));
        assert_eq!(s.stats(now).delayed, 1);
    }

    #[test]
    fn sends_that_began_less_than_a_second_ago_are_measured_over_the_time_since() {
        let t0 = Instant::now();
        let mut s = State::new(config(), t0);
        // A client that just started: 8 sends in 160 ms is 50 a second, not 8.
        let turns = send_burst(&mut s, t0, 8, ms(20));
        s.answered(turns[7], 429, None, t0 + ms(160));
        assert_eq!(s.rate, Some(0.8 * 50.0));
        // Sends at one instant are measured over 100 ms at the least.
        let mut s = State::new(config(), t0);
        let turns = send_burst(&mut s, t0, 5, Duration::ZERO);
        s.answered(turns[4], 429, None, t0 + ms(1));
        assert_eq!(s.rate, Some(0.8 * 50.0));
        // After two idle windows the next burst is measured afresh.
        let later = t0 + Duration::from_secs(5);
        let turns = send_burst(&mut s, later, 2, ms(50));
        s.answered(turns[1], 429, None, later + ms(100));
        assert_eq!(s.decreases, 2);
        assert_eq!(s.rate, Some(0.8 * 20.0), "min(rate, 2 in 100 ms)");
    }

    #[test]
    fn a_burst_of_429s_to_sends_already_under_way_lowers_the_rate_once() {
        let t0 = Instant::now();
        let mut s = State::new(config(), t0);
        let turns = send_burst(&mut s, t0, 20, ms(50));
        let now = t0 + ms(1000);
        for turn in &turns {
            s.answered(*turn, 429, None, now);
        }
        assert_eq!(s.decreases, 1);
        assert_eq!(s.throttled, 20);
        let rate = s.rate.unwrap();
        // A send made after the decrease that is throttled again lowers it again.
        let later = s.try_now(now + ms(1000)).unwrap();
        s.answered(later, 429, None, now + ms(1100));
        assert_eq!(s.decreases, 2);
        assert!(s.rate.unwrap() < rate);
    }

    #[test]
    fn answers_raise_the_rate_by_the_increase_per_second_up_to_the_ceiling() {
        let t0 = Instant::now();
        let mut s = State::new(
            PacingConfig {
                max_rps: 12.0,
                ..config()
            },
            t0,
        );
        let turns = send_burst(&mut s, t0, 10, ms(100));
        s.answered(turns[9], 429, None, t0 + ms(1000));
        assert_eq!(s.rate, Some(8.0));
        // One second of answers at the rate (8 of them) adds about increase_rps (1).
        let mut now = t0 + ms(1000);
        for _ in 0..8 {
            now += ms(125);
            let turn = Turn { at: now };
            s.answered(turn, 200, None, now);
        }
        let rate = s.rate.unwrap();
        assert!((8.9..9.1).contains(&rate), "{rate}");
        for _ in 0..1000 {
            now += ms(10);
            s.answered(Turn { at: now }, 200, None, now);
        }
        assert_eq!(s.rate, Some(12.0), "capped");
    }

    #[test]
    fn the_rate_never_goes_below_the_floor() {
        let t0 = Instant::now();
        let mut s = State::new(
            PacingConfig {
                min_rps: 2.0,
                ..config()
            },
            t0,
        );
        let turn = s.try_now(t0).unwrap();
        s.answered(turn, 429, None, t0 + ms(500));
        assert_eq!(s.rate, Some(2.0), "one send measured, floored");
        let mut now = t0 + ms(500);
        for _ in 0..20 {
            let turn = Turn { at: now };
            now += ms(1);
            s.answered(turn, 429, None, now);
        }
        assert_eq!(s.rate, Some(2.0));
    }

    #[test]
    fn retry_after_holds_every_send_up_to_the_cap() {
        let t0 = Instant::now();
        let mut s = State::new(
            PacingConfig {
                max_hold: Duration::from_secs(5),
                ..config()
            },
            t0,
        );
        let turn = s.try_now(t0).unwrap();
        s.answered(turn, 429, Some(Duration::from_secs(2)), t0);
        assert_eq!(s.try_now(t0 + ms(1999)), None);
        let place = s.enqueue(Priority::Critical).unwrap();
        assert_eq!(
            s.step(place, t0, t0 + ms(10)),
            Step::Wait(t0 + Duration::from_secs(2))
        );
        assert!(matches!(
            s.step(place, t0, t0 + Duration::from_secs(2)),
            Step::Go(_)
        ));
        // A server asking for an hour is held to the cap.
        let turn = Turn {
            at: t0 + Duration::from_secs(3),
        };
        s.answered(turn, 429, Some(Duration::from_secs(3600)), turn.at);
        assert_eq!(s.stats(turn.at).held_ms, 5000);
        assert_eq!(s.stats(turn.at).retry_after_holds, 2);
    }

    #[test]
    fn a_quiet_period_without_429s_ends_pacing() {
        let t0 = Instant::now();
        let mut s = State::new(config(), t0);
        let turns = send_burst(&mut s, t0, 10, ms(10));
        s.answered(turns[9], 429, None, t0 + ms(100));
        assert!(s.stats(t0 + ms(100)).paced);
        let quiet = t0 + ms(100) + Duration::from_secs(30);
        assert!(s.stats(quiet - ms(1)).paced);
        assert!(!s.stats(quiet).paced);
        // And sends go at once again, however many.
        send_burst(&mut s, quiet, 50, Duration::ZERO);
    }

    #[test]
    fn waiting_callers_go_by_priority_then_arrival() {
        let t0 = Instant::now();
        let mut s = State::new(config(), t0);
        let turns = send_burst(&mut s, t0, 10, ms(100));
        let now = t0 + ms(1000);
        s.answered(turns[9], 429, None, now);
        let low = s.enqueue(Priority::Low).unwrap();
        let normal_1 = s.enqueue(Priority::Normal).unwrap();
        let normal_2 = s.enqueue(Priority::Normal).unwrap();
        let critical = s.enqueue(Priority::Critical).unwrap();
        let mut order = Vec::new();
        let mut at = now;
        while order.len() < 4 {
            at += ms(50);
            for (name, place) in [
                ("low", low),
                ("normal 1", normal_1),
                ("normal 2", normal_2),
                ("critical", critical),
            ] {
                if s.waiting.contains(&place) && matches!(s.step(place, now, at), Step::Go(_)) {
                    order.push(name);
                }
            }
        }
        assert_eq!(order, ["critical", "normal 1", "normal 2", "low"]);
    }

    #[test]
    fn a_full_queue_refuses_more_callers() {
        let t0 = Instant::now();
        let mut s = State::new(config(), t0);
        for _ in 0..MAX_WAITING {
            s.enqueue(Priority::Low).unwrap();
        }
        assert_eq!(s.enqueue(Priority::Critical), None);
    }

    #[test]
    fn bad_bounds_are_all_named() {
        assert!(config().validate().is_ok());
        assert!(PacingConfig::off().validate().is_ok());
        let err = PacingConfig {
            min_rps: 0.0,
            max_rps: f64::NAN,
            increase_rps: -1.0,
            decrease: 1.0,
            quiet: Duration::ZERO,
            ..config()
        }
        .validate()
        .unwrap_err();
        for field in ["min_rps", "max_rps", "increase_rps", "decrease", "quiet"] {
            assert!(err.contains(field), "{field}: {err}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn paced_callers_wait_their_turn_and_one_that_gives_up_takes_none() {
        let pacer = std::sync::Arc::new(Pacer::new(PacingConfig {
            min_rps: 10.0,
            ..config()
        }));
        let first = pacer.turn(Priority::Normal).await.unwrap();
        pacer.answered(first, 429, None);
        assert_eq!(pacer.stats().rate_rps, Some(10.0), "floored from 1 send");
        let started = Instant::now();
        // A caller that gives up while waiting leaves no gap behind.
        let gone = tokio::time::timeout(ms(10), pacer.turn(Priority::Low)).await;
        assert!(gone.is_err());
        assert_eq!(pacer.stats().waiting, 0);
        let mut handles = Vec::new();
        for _ in 0..5 {
            let pacer = pacer.clone();
            handles.push(tokio::spawn(async move {
                pacer.turn(Priority::Normal).await.unwrap();
                Instant::now()
            }));
        }
        let mut at = Vec::new();
        for h in handles {
            at.push(h.await.unwrap() - started);
        }
        at.sort();
        // The first paced turn 100 ms after the throttled send, then every 100 ms.
        assert_eq!(at, [ms(100), ms(200), ms(300), ms(400), ms(500)]);
        assert_eq!(pacer.stats().delayed, 5);
    }
}
