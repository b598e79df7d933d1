//! [`RedisLimiter`]: the `ConcurrencyLimiter` adapter on Redis: building it, its waiting
//! loop, `stats` and `set_limit`.
//!
//! # Who decides what
//! Redis decides every grant (see [`crate::scripts`]); this process only asks, waits for a
//! wake-up or a safety poll, and confirms. All local time is `tokio::time::Instant`
//! (monotonic) and is used only to bound the caller's own wait. Whichever call finds Redis
//! failing hands over to the fallback (`failover`); this module only decides what the
//! caller at hand gets then.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use domain::Admission;
use fred::interfaces::{ClientLike, EventInterface};
use ports::{ConcurrencyLimiter, DegradedReason, LimiterError, LimiterStats, Permit};
use redis_connect::BackendError;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::FailoverPolicy;
use crate::config::{RedisLimiterConfig, redact_url};
use crate::error::RedisLimiterError;
use crate::failover::watch_errors;
use crate::heartbeat;
use crate::inner::{Cleanup, FallbackWaiter, Inner, Mode, Moved, bump};
use crate::permit;
use crate::reply::Acquire;
use crate::util::lock;
use crate::wakeup;

/// A distributed priority limiter: every process that uses the same Redis and the same
/// [`name`](RedisLimiterConfig::name) shares one limit and one queue.
///
/// Built by [`RedisLimiter::connect`]. Dropping it stops its background tasks; permits that
/// are still alive keep working (they hold the connection) until they are released.
pub struct RedisLimiter {
    inner: Arc<Inner>,
    wakeups: JoinHandle<()>,
    /// Records fred's connection errors (see `failover::watch_errors`).
    errors: JoinHandle<()>,
    /// Keeps this instance's record alive (see `heartbeat`).
    heartbeat: JoinHandle<()>,
    /// Renews the leases of this process's permits (see `permit::renew_all`).
    renewals: JoinHandle<()>,
}

impl RedisLimiter {
    /// Builds a limiter for `config`, with `fallback` serving calls while Redis is
    /// unreachable (its limit is set to the configured local share here).
    ///
    /// An unreachable Redis is not an error: the limiter then starts degraded and switches to
    /// Redis as soon as a probe succeeds. Must be called inside a tokio runtime.
    pub async fn connect(
        config: RedisLimiterConfig,
        fallback: Arc<dyn ConcurrencyLimiter>,
    ) -> Result<Self, RedisLimiterError> {
        config.validate()?;
        let clients = redis_connect::clients(&config.connection)?;

        fallback
            .set_limit(config.fallback_limit(config.max_concurrent, None))
            .await
            .map_err(RedisLimiterError::Fallback)?;

        let inner = Arc::new(Inner::new(config, clients, fallback));

        // The receivers exist before the connections, so the first connect event is seen.
        let messages = inner.subscriber.message_rx();
        let reconnects = inner.subscriber.reconnect_rx();
        let errors = tokio::spawn(watch_errors(
            Arc::downgrade(&inner),
            inner.client.error_rx(),
        ));
        let wakeups = tokio::spawn(wakeup::run(
            Arc::downgrade(&inner),
            inner.subscriber.clone(),
            inner.scripts.channel.clone(),
            messages,
            reconnects,
        ));
        let _subscriber_task = inner.subscriber.connect();
        let _client_task = inner.client.connect();

        // A refused connection, a wrong password or a failed handshake degrades the limiter
        // as soon as fred reports it (see `failover`); the start then waits no longer (the
        // degraded reason is that connection error's).
        let connected = {
            let failed = || {
                fred::error::Error::new(
                    fred::error::ErrorKind::Timeout,
                    "connect: the connection failed",
                )
            };
            let degraded = inner.went_degraded.notified();
            tokio::pin!(degraded);
            degraded.as_mut().enable();
            tokio::time::timeout(inner.config.connection.connect_timeout, async {
                let connect = async {
                    inner.client.wait_for_connect().await?;
                    // The presence subscription first (see `Inner::presence_channel`), so
                    // that the first heartbeat already tells Redis this instance listens.
                    inner.subscriber.wait_for_connect().await?;
                    inner.listen().await;
                    Ok::<(), fred::error::Error>(())
                };
                if inner.is_degraded() {
                    return Err(failed());
                }
                tokio::select! {
                    outcome = connect => outcome,
                    () = degraded => Err(failed()),
                }
            })
            .await
        };
        match connected {
            // The first heartbeat registers this instance and stores the limit, so that
            // other processes see both before this one's first acquire.
            Ok(Ok(())) => match inner.beat(&[]).await {
                Ok(beat) => tracing::debug!(
                    limiter = %inner.config.name,
                    url = %redact_url(&inner.config.connection.url),
                    limit = beat.limit,
                    instances = beat.instances,
                    "redis limiter connected"
                ),
                Err(e) => inner.fail_over(&e),
            },
            Ok(Err(e)) => {
                inner
                    .fail_over_at_start(BackendError::fred("connect", &e))
                    .await
            }
            Err(_) => {
                inner
                    .fail_over_at_start(BackendError::new(
                        DegradedReason::Timeout,
                        format!(
                            "connect: no connection within {:?}",
                            inner.config.connection.connect_timeout
                        ),
                    ))
                    .await;
            }
        }
        let heartbeat = tokio::spawn(heartbeat::run(Arc::downgrade(&inner)));
        let renewals = tokio::spawn(permit::renew_all(Arc::downgrade(&inner)));
        Ok(RedisLimiter {
            inner,
            wakeups,
            errors,
            heartbeat,
            renewals,
        })
    }

    /// [`connect`](Self::connect) with a [`limiter_memory::MemoryLimiter`] as the fallback,
    /// sized to the configured local share.
    pub async fn connect_with_memory_fallback(
        config: RedisLimiterConfig,
    ) -> Result<Self, RedisLimiterError> {
        let share = config.fallback_limit(config.max_concurrent, None);
        let fallback = Arc::new(limiter_memory::MemoryLimiter::new(share));
        Self::connect(config, fallback).await
    }

    /// Whether calls are currently served by the in-memory fallback.
    pub fn is_degraded(&self) -> bool {
        self.inner.is_degraded()
    }

    /// The shared records of this limiter's fleet ([`ports::SharedRecords`]), on its
    /// connection and under its name: where the adaptive limit and the breaker keep their
    /// state, so every instance sharing the limit shares them too.
    pub fn records(&self) -> crate::RedisRecords {
        crate::RedisRecords::new(
            self.inner.client.clone(),
            &self.inner.config.name,
            self.inner.config.connection.op_timeout,
        )
    }

    /// The config this limiter was built with.
    pub fn config(&self) -> &RedisLimiterConfig {
        &self.inner.config
    }
}

impl Drop for RedisLimiter {
    fn drop(&mut self) {
        self.wakeups.abort();
        self.errors.abort();
        self.heartbeat.abort();
        self.renewals.abort();
        // Leave the registry at once, so peers stop counting this instance (its record
        // would expire after `instance_ttl` anyway).
        if !self.inner.is_degraded()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            let inner = Arc::clone(&self.inner);
            handle.spawn(async move {
                let _ = inner.leave().await;
            });
        }
    }
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("config", &self.inner.config)
            .field("degraded", &self.is_degraded())
            .finish()
    }
}

/// A queued ticket of the current `acquire`: registered for wake-ups, and cancelled in Redis
/// if the future is dropped before it is disarmed.
struct Ticket {
    inner: Arc<Inner>,
    token: String,
    armed: bool,
}

impl Ticket {
    fn new(inner: &Arc<Inner>, token: &str, notify: Arc<Notify>) -> Self {
        lock(&inner.waiters).insert(token.to_owned(), notify);
        Ticket {
            inner: Arc::clone(inner),
            token: token.to_owned(),
            armed: true,
        }
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        lock(&self.inner.waiters).remove(&self.token);
        if self.armed {
            // The caller went away while queued. Remove the ticket; if Redis granted it in
            // the meantime, the cancel script gives the slot back.
            bump(&self.inner.counters.cancelled);
            self.inner
                .spawn_cleanup(Cleanup::Cancel, std::mem::take(&mut self.token));
        }
    }
}

#[async_trait]
impl ConcurrencyLimiter for RedisLimiter {
    #[tracing::instrument(skip(self), fields(limiter = %self.inner.config.name))]
    fn acquire<'a>(&'a self, admission: &'a Admission, wait: Duration) -> ports::Acquire<'a> {
        ports::Acquire::pending(async move {
            let inner = &self.inner;
            let started = Instant::now();
            if inner.is_degraded() {
                return fallback_acquire(inner, admission, started, wait).await;
            }
            redis_acquire(inner, admission, started, wait).await
        })
    }

    async fn stats(&self) -> LimiterStats {
        let inner = &self.inner;
        if !inner.is_degraded() {
            // A call that fails over meanwhile (a refused reconnect, another caller's
            // timeout) ends this one's wait: `/health` then says `degraded` at once, not
            // after this script's own `op_timeout`.
            let degraded = inner.went_degraded.notified();
            tokio::pin!(degraded);
            degraded.as_mut().enable();
            if !inner.is_degraded() {
                tokio::select! {
                    stats = inner.redis_stats() => match stats {
                        Ok(stats) => return stats,
                        Err(e) => inner.fail_over(&e),
                    },
                    () = degraded => {}
                }
            }
        }
        inner.fallback_stats().await
    }

    #[tracing::instrument(skip(self), fields(limiter = %self.inner.config.name))]
    async fn set_limit(&self, max_concurrent: u32) -> Result<(), LimiterError> {
        if max_concurrent == 0 {
            return Err(LimiterError::InvalidLimit { given: 0 });
        }
        let inner = &self.inner;
        inner.limit.store(max_concurrent, Ordering::Relaxed);
        inner
            .fallback
            .set_limit(
                inner
                    .config
                    .fallback_limit(max_concurrent, inner.known_peers()),
            )
            .await?;
        if !inner.is_degraded() {
            match inner.store_limit(max_concurrent).await {
                Ok(()) => return Ok(()),
                Err(e) => inner.fail_over(&e),
            }
        }
        // Redis is unreachable: the probe stores the limit before switching back.
        *lock(&inner.pending_limit) = Some(max_concurrent);
        Ok(())
    }
}

/// An acquire served by Redis: a try (`wait_timeout` zero) or a ticket in the queue.
async fn redis_acquire(
    inner: &Arc<Inner>,
    admission: &Admission,
    started: Instant,
    wait_timeout: Duration,
) -> Result<Permit, LimiterError> {
    let priority = admission.priority;
    let token = inner.new_token(admission);
    if wait_timeout.is_zero() {
        return match inner
            .acquire_script(&token, admission, Mode::Try, true)
            .await
        {
            Ok(Acquire::Granted) => {
                bump(&inner.counters.acquired_immediately);
                Ok(permit::granted(inner, token, priority, Duration::ZERO))
            }
            // `try` never queues; a tombstone cannot exist for a fresh token.
            Ok(Acquire::Refused | Acquire::Queued | Acquire::Tombstoned) => {
                bump(&inner.counters.timeouts);
                Err(LimiterError::Timeout {
                    priority,
                    waited: Duration::ZERO,
                })
            }
            Err(e) => {
                inner.fail_over(&e);
                // The script may still run after our timeout: give back what it grants.
                inner.spawn_cleanup(Cleanup::Cancel, token);
                Box::pin(fallback_acquire(inner, admission, started, Duration::ZERO)).await
            }
        };
    }
    redis_wait(
        inner,
        token,
        admission,
        started,
        started + wait_timeout,
        true,
    )
    .await
}

/// Waits in the Redis queue with `token` until granted or `deadline`: `first` for a new
/// token, else one already queued (a fallback waiter moved at the switch back).
async fn redis_wait(
    inner: &Arc<Inner>,
    token: String,
    admission: &Admission,
    started: Instant,
    deadline: Instant,
    mut first: bool,
) -> Result<Permit, LimiterError> {
    let priority = admission.priority;
    let notify = Arc::new(Notify::new());
    let mut ticket = Ticket::new(inner, &token, Arc::clone(&notify));
    loop {
        match inner
            .acquire_script(&token, admission, Mode::Wait, first)
            .await
        {
            Ok(Acquire::Granted) => {
                ticket.disarm();
                drop(ticket);
                let waited = if first {
                    bump(&inner.counters.acquired_immediately);
                    Duration::ZERO
                } else {
                    bump(&inner.counters.acquired_after_wait);
                    started.elapsed()
                };
                return Ok(permit::granted(inner, token, priority, waited));
            }
            Ok(Acquire::Tombstoned) => {
                // Redis already saw this token cancelled: never for a live caller, but
                // never wait on a ticket that cannot exist either.
                ticket.disarm();
                drop(ticket);
                bump(&inner.counters.timeouts);
                return Err(LimiterError::Timeout {
                    priority,
                    waited: started.elapsed(),
                });
            }
            // Queued (`wait` mode is never refused): wait for a wake-up or the poll.
            Ok(Acquire::Queued | Acquire::Refused) => {}
            Err(e) => {
                inner.fail_over(&e);
                ticket.disarm();
                drop(ticket);
                inner.spawn_cleanup(Cleanup::Cancel, token);
                let remaining = deadline.saturating_duration_since(Instant::now());
                return Box::pin(fallback_acquire(inner, admission, started, remaining)).await;
            }
        }
        first = false;
        let now = Instant::now();
        if now >= deadline {
            // Leave the queue before answering, so that the caller's next `stats()`
            // no longer sees this ticket.
            ticket.disarm();
            drop(ticket);
            let cancel = inner.run_cleanup(Cleanup::Cancel, &token).await;
            if let Err(e) = cancel {
                inner.fail_over(&e);
                inner.spawn_cleanup(Cleanup::Cancel, token);
            }
            bump(&inner.counters.timeouts);
            return Err(LimiterError::Timeout {
                priority,
                waited: started.elapsed(),
            });
        }
        let nap = inner.poll_period().min(deadline - now);
        tokio::select! {
            () = notify.notified() => {}
            () = tokio::time::sleep(nap) => {}
        }
    }
}

/// Serves an acquire from the fallback under the configured policy: refused under
/// `closed`, else a fallback permit that this process tracks so that the switch back can
/// register it in Redis. A caller still waiting when the probe switches back is moved into
/// the Redis queue (in arrival order, see `failover`) and waits there: the fallback grants
/// nothing once Redis has taken over.
async fn fallback_acquire(
    inner: &Arc<Inner>,
    admission: &Admission,
    started: Instant,
    wait: Duration,
) -> Result<Permit, LimiterError> {
    let priority = admission.priority;
    if inner.config.failover_policy == FailoverPolicy::Closed {
        let reason = lock(&inner.degraded_reason).unwrap_or(DegradedReason::Other);
        return Err(LimiterError::Unavailable {
            message: format!(
                "redis at {} is unusable ({reason}) and the failover policy is closed",
                inner.address
            ),
        });
    }
    let deadline = Instant::now() + wait;
    // One wait in the fallback, kept across a switch back that was given up (the caller
    // keeps its place there).
    let mut memory = Box::pin(inner.fallback.acquire(admission, wait));
    loop {
        // Register, unless the limiter is back on Redis or a switch back is moving the
        // waiters right now (then wait for its end and look again).
        let registered = {
            let switched = inner.switched.notified();
            tokio::pin!(switched);
            let registration = {
                let mut waiters = lock(&inner.fallback_waiters);
                if !inner.is_degraded() {
                    None
                } else if waiters.switching {
                    // Registered for the notification before the lock is let go.
                    switched.as_mut().enable();
                    Some(None)
                } else {
                    let token = inner.new_token(admission);
                    let (moved, rx) = tokio::sync::oneshot::channel();
                    let seq = waiters.register(FallbackWaiter {
                        token: token.clone(),
                        admission: admission.clone(),
                        moved,
                    });
                    Some(Some((seq, token, rx)))
                }
            };
            match registration {
                None => {
                    drop(memory);
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    return redis_acquire(inner, admission, started, remaining).await;
                }
                Some(None) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if tokio::time::timeout(left, switched).await.is_err() {
                        bump(&inner.counters.timeouts);
                        return Err(LimiterError::Timeout {
                            priority,
                            waited: started.elapsed(),
                        });
                    }
                    continue;
                }
                Some(Some(registered)) => registered,
            }
        };
        let (seq, token, mut rx) = registered;
        let mut guard = Registered {
            inner,
            admission,
            seq,
            token: Some(token),
        };
        let outcome = tokio::select! {
            granted = &mut memory => Err(granted),
            moved = &mut rx => Ok(moved),
        };
        match outcome {
            Err(Err(e)) => {
                // Timed out (or refused) in the fallback; the guard gives a moved token back.
                return Err(e);
            }
            Err(Ok(permit)) => {
                if let Some(token) = guard.claim() {
                    return Ok(permit::fallback(inner, permit, token));
                }
                // The switch back took this waiter just as the fallback granted it: the
                // probe says where it stands (within the caller's deadline; past it the
                // guard gives the token back in Redis).
                let Ok(moved) = tokio::time::timeout_at(deadline, rx).await else {
                    drop(permit);
                    bump(&inner.counters.timeouts);
                    return Err(LimiterError::Timeout {
                        priority,
                        waited: started.elapsed(),
                    });
                };
                match moved {
                    Ok(Moved::Queued) => {
                        drop(permit);
                        drop(memory);
                        let token = guard.moved();
                        return redis_wait(inner, token, admission, started, deadline, false).await;
                    }
                    // The switch back was given up: still degraded, keep the fallback's grant.
                    Ok(Moved::Stay) | Err(_) => {
                        let token = guard.keep();
                        return Ok(permit::fallback(inner, permit, token));
                    }
                }
            }
            Ok(Ok(Moved::Queued)) => {
                // Leave the fallback's queue before waiting in Redis's.
                drop(memory);
                let token = guard.moved();
                return redis_wait(inner, token, admission, started, deadline, false).await;
            }
            // The switch back was given up before queueing this waiter in Redis: wait on in
            // the fallback (same place there), registered again.
            Ok(Ok(Moved::Stay) | Err(_)) => {
                guard.stayed();
            }
        }
    }
}

/// A registered fallback waiter: leaves the registry on drop, and gives its token back in
/// Redis if the switch back may have queued it there.
struct Registered<'a> {
    inner: &'a Arc<Inner>,
    /// What the waiter asked for (a fresh token carries its tenant and cap).
    admission: &'a Admission,
    seq: u64,
    token: Option<String>,
}

impl Registered<'_> {
    /// The fallback granted this waiter: unless the switch back took it, it leaves the
    /// registry and its token is tracked as a fallback permit's, both under the waiters'
    /// lock (so the switch back either moves it or sees the permit). `None` if taken.
    fn claim(&mut self) -> Option<String> {
        let mut waiters = lock(&self.inner.fallback_waiters);
        if !waiters.leave(self.seq) {
            return None;
        }
        let token = self.token.take()?;
        lock(&self.inner.fallback_held).insert(token.clone(), false);
        drop(waiters);
        Some(token)
    }

    /// A taken waiter whose switch back was given up keeps its fallback grant, under a
    /// fresh token (the probe gives back the one it may have sent to Redis).
    fn keep(&mut self) -> String {
        self.token = None;
        let fresh = self.inner.new_token(self.admission);
        lock(&self.inner.fallback_held).insert(fresh.clone(), false);
        fresh
    }

    /// The waiter is queued in Redis now; its ticket takes over the token.
    fn moved(&mut self) -> String {
        self.token.take().unwrap_or_default()
    }

    /// The waiter stays in the fallback (the switch back was given up before its turn): it
    /// registers again under a fresh token (the probe gives back the one it may have sent).
    fn stayed(&mut self) {
        self.token = None;
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        let Some(token) = self.token.take() else {
            return;
        };
        let taken = !lock(&self.inner.fallback_waiters).leave(self.seq);
        if taken {
            // The probe took it: its token is, or may soon be, queued in Redis. The cancel
            // tombstones it, so an acquire that arrives later creates nothing.
            self.inner.spawn_cleanup(Cleanup::Cancel, token);
        }
    }
}
