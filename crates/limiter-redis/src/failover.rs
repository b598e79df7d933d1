//! The switch to the in-memory fallback and back: what happens when Redis stops answering.
//!
//! Any Redis call that fails or outlives `op_timeout` calls [`Inner::fail_over`], which marks
//! the limiter *degraded*: the call at hand and every later `acquire` are served by the
//! injected fallback limiter (limit = the configured local share), and a probe task tries
//! Redis every `probe_interval` until a script runs again, then switches back. A permit
//! remembers where it came from, so memory permits are released in memory and Redis
//! permits in Redis.
//!
//! Giving a token back ([`Inner::spawn_cleanup`]) lives here too, because its failure is
//! part of the same story: a cleanup that cannot reach Redis is kept as *abandoned*, and the
//! probe sends it once more before switching back. fred's connection errors are recorded
//! ([`watch_errors`]) so the degraded reason names the cause, not only "timed out".
//!
//! While degraded, `share` grants at most the fallback share (`max(1, floor(C / N))` with N
//! the live instances last seen, or the configured share), `closed` refuses, `full` grants
//! the whole limit. Each fallback permit is tracked by a token; at the switch back the probe
//! registers all of them in Redis as holders (*adopts* them) with one heartbeat, so they
//! count against the global limit until they end.
//!
//! This module adds methods to [`Inner`]. It uses `inner` and `util` (and redis-connect's
//! failure classes), and none of those calls these methods, so the modules form no circle.
//! (The fallback permits themselves are `permit`'s; `limiter` serves an acquire from the
//! fallback.)

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use ports::DegradedReason;
use redis_connect::{BackendError, classify, diagnosed};
use tokio::time::Instant;

use crate::inner::{Cleanup, FallbackWaiter, Inner, Mode, Moved};
use crate::util::{jittered, lock, spawn_now};

/// Refused (or auth/TLS-failing) reconnects in a row that switch an instance to its
/// fallback before any call has failed.
const FAILURES_BEFORE_SWITCH: u32 = 2;

/// How often a change of the degraded reason is logged at `warn` (more often at `debug`).
const REASON_WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// The most tokens kept for a cleanup at the switch back (see [`Inner::spawn_cleanup`]).
const MAX_ABANDONED: usize = 10_000;

impl Inner {
    /// Switches to the fallback (once) and starts the probe that switches back.
    pub(crate) fn fail_over(self: &Arc<Self>, why: &BackendError) {
        if self.degraded.swap(true, Ordering::SeqCst) {
            return;
        }
        let why = self.explained(why.clone());
        let (reason, detail) = (why.reason, why.to_string());
        *lock(&self.degraded_reason) = Some(reason);
        self.went_degraded.notify_waiters();
        tracing::warn!(
            limiter = %self.config.name,
            configured_backend = "redis",
            serving_backend = "memory",
            address = %self.address,
            reason = %reason,
            error = %detail,
            "redis limiter degraded: redis at {} unusable ({reason}), serving from the \
             in-memory fallback",
            self.address
        );
        let weak = Arc::downgrade(self);
        let share = self.fallback_share();
        tokio::spawn(async move {
            if let Some(inner) = weak.upgrade()
                && let Err(e) = inner.fallback.set_limit(share).await
            {
                tracing::warn!(error = %e, "fallback refused its local share");
            }
            probe(weak).await;
        });
    }

    /// [`fail_over`](Self::fail_over) for a limiter that could not connect at start: the
    /// reason is made as precise as can be told (fred's last connection error for a
    /// timeout, and a check for the wrong protocol, see `redis_connect::diagnosed`); a wrong
    /// protocol stays the reason until Redis is reached, whatever timeouts the reconnects
    /// report meanwhile.
    pub(crate) async fn fail_over_at_start(self: &Arc<Self>, why: BackendError) {
        let why = diagnosed(self.explained(why), &self.address, &self.config.connection).await;
        if why.reason == DegradedReason::Tls {
            self.wrong_protocol.store(true, Ordering::SeqCst);
            if self.is_degraded() {
                // A connection error degraded it already, for a vaguer reason.
                *lock(&self.degraded_reason) = Some(why.reason);
                tracing::warn!(
                    limiter = %self.config.name,
                    address = %self.address,
                    reason = %why.reason,
                    error = %why,
                    "redis limiter degraded: redis at {} unusable ({})",
                    self.address,
                    why.reason
                );
            }
        }
        self.fail_over(&why);
    }

    /// One probe: pushes a pending limit, runs the stats script, and switches back to Redis
    /// when both succeed.
    async fn try_recover(self: &Arc<Self>) -> bool {
        let pending = *lock(&self.pending_limit);
        let result = match pending {
            Some(limit) => self.store_limit(limit).await,
            None => self.read_stats().await.map(drop),
        };
        if result.is_err() {
            return false;
        }
        // Redis answered this probe, so every command this process wrote to it before (stale
        // acquires included) has run by now. Give back each token abandoned during the
        // outage once more: a stale acquire that ran after its cancel, or whose cancel gave
        // up, would otherwise hold a slot or a place in the queue that nobody owns.
        let abandoned: Vec<(String, Cleanup)> = lock(&self.abandoned)
            .iter()
            .map(|(token, what)| (token.clone(), *what))
            .collect();
        for (token, what) in abandoned {
            if self.run_cleanup(what, &token).await.is_err() {
                return false;
            }
            lock(&self.abandoned).remove(&token);
        }
        {
            let mut slot = lock(&self.pending_limit);
            if *slot == pending {
                *slot = None;
            }
        }
        // From here no fallback grant may happen unseen: take every caller waiting in the
        // fallback (new callers wait for the end of the switch), so the permits held now are
        // all the fallback permits there will be.
        let waiters = {
            let mut registry = lock(&self.fallback_waiters);
            registry.switching = true;
            registry.take_all()
        };
        // Register every permit this process still holds as a holder before granting from
        // Redis again: fallback permits granted during the outage count against the global
        // limit from now on (adopted), and Redis permits Redis may have lost (a restart) are
        // re-established. A fresh or stalled Redis grants nothing new for a warm-up meanwhile,
        // so every instance gets to do this before anyone is admitted.
        let fallback: Vec<String> = lock(&self.fallback_held).keys().cloned().collect();
        let mut tokens = fallback.clone();
        tokens.extend(lock(&self.held).keys().cloned());
        let beat = match self.beat(&tokens).await {
            Ok(beat) => beat,
            Err(_) => {
                self.give_up_switch(waiters, None);
                return false;
            }
        };
        let gone = {
            let mut held = lock(&self.fallback_held);
            let mut gone = Vec::new();
            for token in fallback {
                match held.get_mut(&token) {
                    Some(adopted) => *adopted = true,
                    // Released while the beat was on its way: it is in Redis now, give it back.
                    None => gone.push(token),
                }
            }
            gone
        };
        for token in gone {
            self.spawn_cleanup(Cleanup::Release, token);
        }
        // Move the fallback's waiters into the Redis queue, in their arrival order (Redis
        // orders by priority, then arrival): they wait there from now on, and the fallback
        // grants nobody once Redis has taken over.
        let moved = waiters.len();
        let mut waiters = waiters.into_iter();
        while let Some(waiter) = waiters.next() {
            let queued = self
                .acquire_script(&waiter.token, &waiter.admission, Mode::Wait, true)
                .await;
            match queued {
                Ok(_) => {
                    if waiter.moved.send(Moved::Queued).is_err() {
                        // The caller left meanwhile: its ticket is nobody's.
                        self.spawn_cleanup(Cleanup::Cancel, waiter.token);
                    }
                }
                Err(_) => {
                    // The script may still run: give that token back; this waiter and the
                    // rest stay in the fallback.
                    self.spawn_cleanup(Cleanup::Cancel, waiter.token.clone());
                    self.give_up_switch(waiters.collect(), Some(waiter));
                    return false;
                }
            }
        }
        *lock(&self.last_failure) = None;
        self.wrong_protocol.store(false, Ordering::SeqCst);
        *lock(&self.degraded_reason) = None;
        {
            let mut registry = lock(&self.fallback_waiters);
            self.degraded.store(false, Ordering::SeqCst);
            registry.switching = false;
        }
        self.switched.notify_waiters();
        // A fallback permit granted between the beat and the switch: adopt it too.
        self.adopt_stragglers();
        tracing::info!(
            limiter = %self.config.name,
            address = %self.address,
            adopted = lock(&self.fallback_held).len(),
            moved_waiters = moved,
            reestablished = beat.reestablished,
            instances = beat.instances,
            "redis limiter recovered: back on redis"
        );
        true
    }

    /// Ends a switch back that failed before every waiter was moved: `waiters` (and `first`)
    /// stay in the fallback, and the callers that waited for the switch look again.
    fn give_up_switch(&self, waiters: Vec<FallbackWaiter>, first: Option<FallbackWaiter>) {
        lock(&self.fallback_waiters).switching = false;
        for waiter in first.into_iter().chain(waiters) {
            let _ = waiter.moved.send(Moved::Stay);
        }
        self.switched.notify_waiters();
    }

    /// The permits the fallback may grant now, under the configured policy, from the limit
    /// and the peers last seen.
    pub(crate) fn fallback_share(&self) -> u32 {
        self.config
            .fallback_limit(self.limit.load(Ordering::Relaxed), self.known_peers())
    }

    /// Adopts, in the background, every fallback permit not adopted yet, once this process
    /// is back on Redis (a permit the fallback granted while the switch back was under way).
    pub(crate) fn adopt_stragglers(self: &Arc<Self>) {
        if self.is_degraded() {
            return;
        }
        let stragglers: Vec<String> = lock(&self.fallback_held)
            .iter()
            .filter(|(_, adopted)| !**adopted)
            .map(|(token, _)| token.clone())
            .collect();
        if stragglers.is_empty() {
            return;
        }
        let inner = Arc::clone(self);
        spawn_now(async move {
            match inner.beat(&stragglers).await {
                Ok(_) => {
                    let mut held = lock(&inner.fallback_held);
                    for token in &stragglers {
                        if let Some(adopted) = held.get_mut(token) {
                            *adopted = true;
                        }
                    }
                }
                Err(e) => inner.fail_over(&e),
            }
        });
    }

    /// Gives `token` back in the background, retrying while Redis is unreachable until the
    /// server-side deadline would have freed it anyway. Until one attempt succeeds the token
    /// is also kept in `abandoned`, so the switch back to Redis gives it back once more.
    pub(crate) fn spawn_cleanup(self: &Arc<Self>, what: Cleanup, token: String) {
        {
            let mut abandoned = lock(&self.abandoned);
            // Bounded: only calls in flight when Redis stopped answering land here, and the
            // server-side deadlines free the rest anyway.
            if abandoned.len() < MAX_ABANDONED {
                abandoned.insert(token.clone(), what);
            }
        }
        let inner = Arc::clone(self);
        spawn_now(async move {
            let give_up = Instant::now() + inner.config.lease_ttl.max(inner.config.waiter_ttl);
            loop {
                match inner.run_cleanup(what, &token).await {
                    Ok(_) => {
                        lock(&inner.abandoned).remove(&token);
                        return;
                    }
                    Err(e) => {
                        inner.fail_over(&e);
                        if Instant::now() >= give_up {
                            tracing::debug!(
                                error = %e,
                                "giving up a cleanup: the switch back to redis retries it"
                            );
                            return;
                        }
                    }
                }
                tokio::time::sleep(jittered(inner.config.renew_period(), 0.5)).await;
            }
        });
    }

    /// `why`, or, for a command that timed out while fred could not connect, the
    /// connection's reason: what fred reported about the connection is the better
    /// explanation.
    fn explained(&self, why: BackendError) -> BackendError {
        match self.last_failure() {
            Some((reason, message)) if why.reason == DegradedReason::Timeout => {
                BackendError::new(reason, format!("{why}; connection: {message}"))
            }
            _ => why,
        }
    }

    /// The last connection error, if it is recent enough to explain a failure now (an old
    /// one, from before a healthy spell, says nothing about a hang today).
    fn last_failure(&self) -> Option<(DegradedReason, String)> {
        let connection = &self.config.connection;
        let recent = connection.connect_timeout.max(connection.op_timeout) * 4;
        lock(&self.last_failure)
            .as_ref()
            .filter(|(_, _, at)| at.elapsed() <= recent)
            .map(|(reason, message, _)| (*reason, message.clone()))
    }

    /// Records a connection error fred reported; while degraded, a better-known reason
    /// replaces a timeout (and a change of reason is logged once).
    fn record_connection_error(self: &Arc<Self>, e: &fred::error::Error) {
        let reason = classify(e);
        *lock(&self.last_failure) = Some((reason, e.to_string(), Instant::now()));
        if !self.is_degraded() {
            // A reconnect that was refused (Redis died: SIGKILL, OOM, a restart), or whose
            // credentials or handshake fail, tells now what the next call would learn only
            // after its `op_timeout` — and an idle instance makes its next call only at the
            // next heartbeat (`instance_ttl / 4`), so without this it degraded up to
            // heartbeat + op_timeout (1 s) after the fault. A Cluster is left to its calls:
            // one node refusing says nothing about the node that owns this limiter's slot.
            // Two in a row, so a restart that fred rides over (the next attempt connects)
            // switches nothing; the count restarts at every heartbeat that gets through.
            if matches!(
                reason,
                DegradedReason::Refused | DegradedReason::Auth | DegradedReason::Tls
            ) && !self.config.connection.is_cluster()
                && self.connection_failures.fetch_add(1, Ordering::SeqCst) + 1
                    >= FAILURES_BEFORE_SWITCH
            {
                self.fail_over(&BackendError::fred("reconnect", e));
            }
            return;
        }
        if self.wrong_protocol.load(Ordering::SeqCst) {
            return;
        }
        let mut current = lock(&self.degraded_reason);
        let known = matches!(
            *current,
            Some(DegradedReason::Auth | DegradedReason::Refused | DegradedReason::Tls)
        );
        if *current != Some(reason) && (!known || reason != DegradedReason::Other) {
            *current = Some(reason);
            let mut last = lock(&self.reason_warned_at);
            if last.is_some_and(|at| at.elapsed() < REASON_WARN_EVERY) {
                tracing::debug!(
                    limiter = %self.config.name,
                    reason = %reason,
                    error = %e,
                    "redis limiter still degraded"
                );
                return;
            }
            *last = Some(Instant::now());
            tracing::warn!(
                limiter = %self.config.name,
                address = %self.address,
                reason = %reason,
                error = %e,
                "redis limiter still degraded: redis at {} unusable ({reason})",
                self.address
            );
        }
    }
}

/// Tries Redis every `probe_interval` (jittered) until it answers, then returns.
async fn probe(weak: Weak<Inner>) {
    loop {
        let period = match weak.upgrade() {
            Some(inner) => jittered(inner.config.probe_interval, 0.5),
            None => return,
        };
        tokio::time::sleep(period).await;
        let Some(inner) = weak.upgrade() else { return };
        if !inner.is_degraded() || inner.try_recover().await {
            return;
        }
    }
}

/// Records every connection error fred broadcasts (a refused connect, a wrong password at
/// `AUTH`), so that stats and logs can name the cause and not only "timed out". Runs until
/// the limiter is dropped (the task is aborted) or the client is closed.
pub(crate) async fn watch_errors(
    weak: Weak<Inner>,
    mut errors: tokio::sync::broadcast::Receiver<(
        fred::error::Error,
        Option<fred::types::config::Server>,
    )>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match errors.recv().await {
            Ok((e, _server)) => match weak.upgrade() {
                Some(inner) => inner.record_connection_error(&e),
                None => return,
            },
            Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
    }
}
