//! Small helpers the other modules share: jitter, millisecond arguments, a lock that
//! survives poisoning, and starting a task from `Drop`. Depends on no other module of the
//! crate.

use std::future::Future;
use std::sync::Mutex;
use std::task::Context;
use std::time::Duration;

use rand::Rng;

/// `d` scaled by a random factor in `[low, 1]`, so periodic work of many holders and
/// processes does not line up.
pub(crate) fn jittered(d: Duration, low: f64) -> Duration {
    d.mul_f64(rand::rng().random_range(low..=1.0))
}

/// `d` in whole milliseconds for a script argument, at least 1 (a deadline of `now + 0`
/// would already have passed).
pub(crate) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// A poisoned lock still holds a valid value here (plain data, no invariant across fields).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts `fut` at once and lets the runtime finish it.
///
/// The first poll happens here, synchronously, so a Redis command inside is already queued
/// on the connection when this returns: a release or cancel issued from `Drop` therefore
/// reaches Redis before any command the same task sends afterwards (fred keeps the order of
/// commands on one connection). Without a runtime nothing can be sent; the server-side lease
/// or ticket deadline then frees the slot.
pub(crate) fn spawn_now<F>(fut: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let mut fut = Box::pin(fut);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    if fut.as_mut().poll(&mut cx).is_pending() {
        handle.spawn(fut);
    }
}
