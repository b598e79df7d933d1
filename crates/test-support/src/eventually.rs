//! The one bounded poll of the test suites: run a condition until it holds, or fail the test
//! after a deadline with a sentence saying what did not happen (and what was seen last).
//!
//! Tests use it for state that settles asynchronously (a request queued, a slot freed, a
//! backend degraded). A sleep that is "long enough" is what it replaces: the poll ends as soon
//! as the condition holds, and the deadline is only the point at which the test gives up.

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

/// How often the condition is evaluated.
const INTERVAL: Duration = Duration::from_millis(10);

/// What a condition of [`eventually`] returns: whether it holds, and what to hand back.
///
/// `bool` is a plain yes/no. `Result<T, E>` hands `T` back when the condition holds; an
/// `Err(last)` means "not yet", and the last one seen is printed if the deadline passes (the
/// limiter's stats, a body, ...).
pub trait Outcome {
    /// What [`eventually`] returns once the condition holds.
    type Value;

    /// `Ok` with the value when the condition holds; `Err` with a description of what was
    /// seen instead (`None` when there is nothing to show).
    fn settle(self) -> Result<Self::Value, Option<String>>;
}

impl Outcome for bool {
    type Value = ();

    fn settle(self) -> Result<(), Option<String>> {
        if self { Ok(()) } else { Err(None) }
    }
}

impl<T, E: Debug> Outcome for Result<T, E> {
    type Value = T;

    fn settle(self) -> Result<T, Option<String>> {
        self.map_err(|last| Some(format!("{last:?}")))
    }
}

/// Evaluates `check` every 10 ms until it holds and returns its value; panics after `within`
/// with "timed out after … waiting for `what`" (and the last value seen, for a `Result`).
///
/// The condition is async; a synchronous one is wrapped: `|| async { fake.in_flight() == 2 }`.
/// The deadline is measured on the real clock, so a test that paused tokio's clock still
/// gets its real-time bound (the 10 ms sleeps then advance the paused clock instead).
pub async fn eventually<F, Fut, O>(within: Duration, what: &str, mut check: F) -> O::Value
where
    F: FnMut() -> Fut,
    Fut: Future<Output = O>,
    O: Outcome,
{
    let deadline = Instant::now() + within;
    loop {
        let last = match check().await.settle() {
            Ok(value) => return value,
            Err(last) => last,
        };
        if Instant::now() >= deadline {
            match last {
                Some(last) => {
                    panic!("timed out after {within:?} waiting for {what}; last seen: {last}")
                }
                None => panic!("timed out after {within:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[tokio::test]
    async fn returns_as_soon_as_the_condition_holds() {
        let calls = Cell::new(0);
        let value = eventually(Duration::from_secs(5), "the third call", || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move { if n >= 3 { Ok(n) } else { Err(n) } }
        })
        .await;
        assert_eq!((value, calls.get()), (3, 3));
    }

    #[tokio::test]
    #[should_panic(expected = "timed out after 50ms waiting for the impossible")]
    async fn a_condition_that_never_holds_fails_the_test() {
        eventually(Duration::from_millis(50), "the impossible", || async {
            false
        })
        .await;
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for a seven; last seen: 6")]
    async fn the_timeout_shows_the_last_value_seen() {
        eventually(Duration::from_millis(50), "a seven", || async {
            Err::<(), _>(6)
        })
        .await;
    }
}
