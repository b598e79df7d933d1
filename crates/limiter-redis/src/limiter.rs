//! [`RedisLimiter`]: the `ConcurrencyLimiter` adapter on Redis, its waiting loop, and the
//! switch to and from the in-memory fallback.
//!
//! # Who decides what
//! Redis decides every grant (see [`crate::scripts`]); this process only asks, waits for a
//! wake-up or a safety poll, and confirms. All local time is `tokio::time::Instant`
//! (monotonic) and is used only to bound the caller's own wait.
//!
//! # Failover
//! Any Redis call that fails or outlives `op_timeout` marks the limiter *degraded*: the
//! call at hand and every later `acquire` are served by the injected fallback limiter
//! (limit = the configured local share), and a probe task tries Redis every
//! `probe_interval` until a script runs again, then switches back. A permit remembers where
//! it came from, so memory permits are released in memory and Redis permits in Redis.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::Context;
use std::time::Duration;

use async_trait::async_trait;
use domain::Priority;
use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface};
use fred::types::scripts::Script;
use fred::types::{FromValue, Value};
use ports::{
    ConcurrencyLimiter, DegradedReason, LimiterCounters, LimiterError, LimiterStats, Permit,
};
use rand::Rng;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{RedisLimiterConfig, address_of, redact_url};
use crate::connection::{self, BackendError, Clients, classify};
use crate::error::RedisLimiterError;
use crate::permit::{Cleanup, RedisPermit};
use crate::reply::{self, Acquire, GivenBack, Renew};
use crate::scripts::Scripts;
use crate::wakeup;

/// A distributed priority limiter: every process that uses the same Redis and the same
/// [`name`](RedisLimiterConfig::name) shares one limit and one queue.
///
/// Built by [`RedisLimiter::connect`]. Dropping it stops its background tasks; permits that
/// are still alive keep working (they hold the connection) until they are released.
pub struct RedisLimiter {
    inner: Arc<Inner>,
    wakeups: JoinHandle<()>,
    /// Records fred's connection errors (see [`Inner::last_failure`]).
    errors: JoinHandle<()>,
}

/// The state shared by the limiter, its permits and its background tasks.
pub(crate) struct Inner {
    pub(crate) config: RedisLimiterConfig,
    client: Client,
    subscriber: SubscriberClient,
    pub(crate) scripts: Scripts,
    fallback: Arc<dyn ConcurrencyLimiter>,
    /// True while calls go to the fallback.
    degraded: AtomicBool,
    /// The last global limit seen or set: the default a script stores when Redis has lost it.
    limit: AtomicU32,
    /// A `set_limit` made while degraded, pushed to Redis by the probe before switching back.
    pending_limit: Mutex<Option<u32>>,
    /// This limiter instance's random prefix for tokens.
    instance: String,
    next_token: AtomicU64,
    /// Local waiters by token, woken by the pub/sub task.
    waiters: Mutex<HashMap<String, Arc<Notify>>>,
    /// Tokens given up while Redis did not answer, with the script that gives each back.
    /// Their acquires may still be sitting in a socket and run when Redis answers again, so
    /// the probe sends every cleanup once more before switching back (see [`Self::try_recover`]).
    abandoned: Mutex<HashMap<String, Cleanup>>,
    pub(crate) counters: Counters,
    /// The Redis address (`host:port`), without credentials, for stats and logs.
    address: String,
    /// Why the limiter is degraded: set at the switch to the fallback, refined by the
    /// connection errors fred reports while it reconnects (a command that timed out because
    /// the connection is refused is a refusal, not a timeout), cleared at the switch back.
    degraded_reason: Mutex<Option<DegradedReason>>,
    /// The last connection error fred reported (reason, message, when), cleared at the switch
    /// back to Redis.
    last_failure: Mutex<Option<(DegradedReason, String, Instant)>>,
}

/// This process's event counters (see [`LimiterCounters`]).
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) acquired_immediately: AtomicU64,
    pub(crate) acquired_after_wait: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) released: AtomicU64,
    pub(crate) leases_lost: AtomicU64,
}

impl Counters {
    fn snapshot(&self, leases_reclaimed: u64) -> LimiterCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        LimiterCounters {
            acquired_immediately: get(&self.acquired_immediately),
            acquired_after_wait: get(&self.acquired_after_wait),
            timeouts: get(&self.timeouts),
            cancelled: get(&self.cancelled),
            released: get(&self.released),
            leases_lost: get(&self.leases_lost),
            leases_reclaimed,
        }
    }
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// `d` scaled by a random factor in `[low, 1]`, so periodic work of many holders and
/// processes does not line up.
pub(crate) fn jittered(d: Duration, low: f64) -> Duration {
    d.mul_f64(rand::rng().random_range(low..=1.0))
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

/// How the acquire script treats a token that finds no free slot.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// Queue it (a ticket that lives `waiter_ttl` unless refreshed).
    Wait,
    /// Refuse it without queueing (an acquire with a zero wait).
    Try,
}

impl Mode {
    /// The script's `ARGV[8]`.
    fn as_str(self) -> &'static str {
        match self {
            Mode::Wait => "wait",
            Mode::Try => "try",
        }
    }
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
        let Clients { client, subscriber } = connection::clients(&config)?;

        fallback
            .set_limit(config.fallback_limit(config.max_concurrent))
            .await
            .map_err(RedisLimiterError::Fallback)?;

        let mut instance_id = [0u8; 8];
        rand::rng().fill(&mut instance_id);
        let inner = Arc::new(Inner {
            scripts: Scripts::new(&config.name),
            address: address_of(&config.url),
            degraded_reason: Mutex::new(None),
            last_failure: Mutex::new(None),
            limit: AtomicU32::new(config.max_concurrent),
            config,
            client,
            subscriber,
            fallback,
            degraded: AtomicBool::new(false),
            pending_limit: Mutex::new(None),
            instance: instance_id.iter().map(|b| format!("{b:02x}")).collect(),
            next_token: AtomicU64::new(0),
            waiters: Mutex::new(HashMap::new()),
            abandoned: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        });

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

        let connected = tokio::time::timeout(
            inner.config.connect_timeout,
            inner.client.wait_for_connect(),
        )
        .await;
        match connected {
            // One script now loads it into Redis's cache and stores the limit, so that
            // other processes see it before this one's first acquire.
            Ok(Ok(())) => match inner.redis_stats().await {
                Ok(stats) => tracing::debug!(
                    limiter = %inner.config.name,
                    url = %redact_url(&inner.config.url),
                    limit = stats.max_concurrent,
                    "redis limiter connected"
                ),
                Err(e) => inner.fail_over(&e),
            },
            Ok(Err(e)) => inner.fail_over(&BackendError::fred("connect", &e)),
            Err(_) => inner.fail_over(&BackendError::new(
                DegradedReason::Timeout,
                format!(
                    "connect: no connection within {:?}",
                    inner.config.connect_timeout
                ),
            )),
        }
        Ok(RedisLimiter {
            inner,
            wakeups,
            errors,
        })
    }

    /// [`connect`](Self::connect) with a [`limiter_memory::MemoryLimiter`] as the fallback,
    /// sized to the configured local share.
    pub async fn connect_with_memory_fallback(
        config: RedisLimiterConfig,
    ) -> Result<Self, RedisLimiterError> {
        let share = config.fallback_limit(config.max_concurrent);
        let fallback = Arc::new(limiter_memory::MemoryLimiter::new(share));
        Self::connect(config, fallback).await
    }

    /// Whether calls are currently served by the in-memory fallback.
    pub fn is_degraded(&self) -> bool {
        self.inner.degraded.load(Ordering::SeqCst)
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

impl Inner {
    /// Runs `script` with the limiter's keys and `[default limit, channel, grant ttl, args…]`, bounded
    /// by `op_timeout` in total (including a `SCRIPT LOAD` after `NOSCRIPT`).
    pub(crate) async fn eval<R: FromValue>(
        &self,
        script: &Script,
        args: Vec<Value>,
    ) -> Result<R, BackendError> {
        let mut argv: Vec<Value> = Vec::with_capacity(args.len() + 3);
        argv.push(Value::Integer(i64::from(
            self.limit.load(Ordering::Relaxed),
        )));
        argv.push(Value::from(self.scripts.channel.as_str()));
        argv.push(Value::Integer(duration_ms(self.config.grant_ttl)));
        argv.extend(args);
        let call =
            script.evalsha_with_reload::<R, _, _>(&self.client, self.scripts.keys.clone(), argv);
        match tokio::time::timeout(self.config.op_timeout, call).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(BackendError::fred("redis", &e)),
            Err(_) => Err(BackendError::new(
                DegradedReason::Timeout,
                format!("redis: no answer within {:?}", self.config.op_timeout),
            )),
        }
    }

    fn new_token(&self) -> String {
        let n = self.next_token.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.instance)
    }

    fn lease_ms(&self) -> i64 {
        duration_ms(self.config.lease_ttl)
    }

    /// Runs the acquire script for `token`: queue it, refresh its ticket, or confirm its
    /// grant (see [`Acquire`] for the answers).
    async fn acquire_script(
        &self,
        token: &str,
        priority: Priority,
        mode: Mode,
    ) -> Result<Acquire, BackendError> {
        let args = vec![
            Value::from(token),
            Value::Integer(priority.index() as i64),
            Value::Integer(self.lease_ms()),
            Value::Integer(duration_ms(self.config.waiter_ttl)),
            Value::from(mode.as_str()),
        ];
        Acquire::decode(self.eval(&self.scripts.acquire, args).await?)
    }

    /// Extends the lease of `token` by a full `lease_ttl`, unless it was lost.
    pub(crate) async fn renew_lease(&self, token: &str) -> Result<Renew, BackendError> {
        let args = vec![Value::from(token), Value::Integer(self.lease_ms())];
        Renew::decode(self.eval(&self.scripts.renew, args).await?)
    }

    /// Stores `limit` as the global limit (admitting waiters at once if it grew).
    async fn store_limit(&self, limit: u32) -> Result<(), BackendError> {
        let args = vec![Value::Integer(i64::from(limit))];
        reply::decode_set_limit(self.eval(&self.scripts.set_limit, args).await?)
    }

    /// Runs the stats script (which also reclaims and promotes).
    async fn read_stats(&self) -> Result<reply::Stats, BackendError> {
        reply::Stats::decode(self.eval(&self.scripts.stats, Vec::new()).await?)
    }

    /// The longest a waiter sleeps without a wake-up: the safety poll, capped so that the
    /// ticket is refreshed at least three times per `waiter_ttl` and a grant whose wake-up
    /// message was lost is confirmed well within `grant_ttl`, jittered to 50–100 %.
    fn poll_period(&self) -> Duration {
        let cap = (self.config.waiter_ttl / 3).min(self.config.grant_ttl / 2);
        jittered(self.config.safety_poll.min(cap), 0.5)
    }

    /// Runs the script that gives `token` back (it also tombstones the token in Redis).
    pub(crate) async fn run_cleanup(
        &self,
        what: Cleanup,
        token: &str,
    ) -> Result<GivenBack, BackendError> {
        let args = || {
            let tombstone = Value::Integer(duration_ms(self.config.tombstone_ttl()));
            vec![Value::from(token), tombstone]
        };
        match what {
            Cleanup::Release => {
                GivenBack::decode_release(self.eval(&self.scripts.release, args()).await?)
            }
            Cleanup::Cancel => {
                GivenBack::decode_cancel(self.eval(&self.scripts.cancel, args()).await?)
            }
        }
    }

    /// Switches to the fallback (once) and starts the probe that switches back.
    pub(crate) fn fail_over(self: &Arc<Self>, why: &BackendError) {
        if self.degraded.swap(true, Ordering::SeqCst) {
            return;
        }
        // A command that timed out while fred could not connect failed for the connection's
        // reason: prefer what fred reported about the connection.
        let (reason, detail) = match self.last_failure() {
            Some((reason, message)) if why.reason == DegradedReason::Timeout => {
                (reason, format!("{why}; connection: {message}"))
            }
            _ => (why.reason, why.to_string()),
        };
        *lock(&self.degraded_reason) = Some(reason);
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
        let share = self
            .config
            .fallback_limit(self.limit.load(Ordering::Relaxed));
        tokio::spawn(async move {
            if let Some(inner) = weak.upgrade() {
                if let Err(e) = inner.fallback.set_limit(share).await {
                    tracing::warn!(error = %e, "fallback refused its local share");
                }
            }
            probe(weak).await;
        });
    }

    /// One probe: pushes a pending limit, runs the stats script, and switches back to Redis
    /// when both succeed.
    async fn try_recover(self: &Arc<Self>) -> bool {
        let pending = *self.pending_limit.lock().unwrap_or_else(|p| p.into_inner());
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
        let abandoned: Vec<(String, Cleanup)> = self
            .abandoned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(token, what)| (token.clone(), *what))
            .collect();
        for (token, what) in abandoned {
            if self.run_cleanup(what, &token).await.is_err() {
                return false;
            }
            self.abandoned
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&token);
        }
        {
            let mut slot = self.pending_limit.lock().unwrap_or_else(|p| p.into_inner());
            if *slot == pending {
                *slot = None;
            }
        }
        *lock(&self.last_failure) = None;
        *lock(&self.degraded_reason) = None;
        self.degraded.store(false, Ordering::SeqCst);
        tracing::info!(
            limiter = %self.config.name,
            address = %self.address,
            "redis limiter recovered: back on redis"
        );
        true
    }

    /// Wakes the local waiters among `tokens`.
    pub(crate) fn wake<'a>(&self, tokens: impl Iterator<Item = &'a str>) {
        let waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        for token in tokens {
            if let Some(notify) = waiters.get(token) {
                notify.notify_one();
            }
        }
    }

    /// Wakes every local waiter (after a reconnect or a lagged receiver).
    pub(crate) fn wake_all(&self) {
        let waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        for notify in waiters.values() {
            notify.notify_one();
        }
    }

    /// Gives `token` back in the background, retrying while Redis is unreachable until the
    /// server-side deadline would have freed it anyway. Until one attempt succeeds the token
    /// is also kept in `abandoned`, so the switch back to Redis gives it back once more.
    pub(crate) fn spawn_cleanup(self: &Arc<Self>, what: Cleanup, token: String) {
        {
            let mut abandoned = self.abandoned.lock().unwrap_or_else(|p| p.into_inner());
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
                        inner
                            .abandoned
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&token);
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

    async fn redis_stats(self: &Arc<Self>) -> Result<LimiterStats, BackendError> {
        let reply::Stats {
            limit,
            active,
            queued: [low, normal, high, critical],
            reclaimed,
            max_wait_ms: max_wait,
            oldest_ms: oldest,
        } = self.read_stats().await?;
        let u32_of = |x: i64| u32::try_from(x.max(0)).unwrap_or(u32::MAX);
        let u64_of = |x: i64| u64::try_from(x.max(0)).unwrap_or(0);
        self.limit.store(u32_of(limit).max(1), Ordering::Relaxed);
        Ok(LimiterStats {
            backend: "redis".to_owned(),
            configured_backend: "redis".to_owned(),
            serving_backend: "redis".to_owned(),
            address: Some(self.address.clone()),
            degraded_reason: None,
            degraded: false,
            max_concurrent: u32_of(limit),
            active: u32_of(active),
            available: u32_of(limit - active),
            queued: ports::QueuedByPriority {
                low: u32_of(low),
                normal: u32_of(normal),
                high: u32_of(high),
                critical: u32_of(critical),
            },
            counters: self.counters.snapshot(u64_of(reclaimed)),
            max_wait_ms: u64_of(max_wait),
            oldest_queued_ms: u64_of(oldest),
        })
    }

    async fn fallback_stats(&self) -> LimiterStats {
        let mut stats = self.fallback.stats().await;
        let local = self.counters.snapshot(0);
        let c = &mut stats.counters;
        c.acquired_immediately += local.acquired_immediately;
        c.acquired_after_wait += local.acquired_after_wait;
        c.timeouts += local.timeouts;
        c.cancelled += local.cancelled;
        c.released += local.released;
        c.leases_lost += local.leases_lost;
        stats.backend = "memory".to_owned();
        stats.configured_backend = "redis".to_owned();
        stats.serving_backend = "memory".to_owned();
        stats.address = Some(self.address.clone());
        stats.degraded_reason = Some(lock(&self.degraded_reason).unwrap_or(DegradedReason::Other));
        stats.degraded = true;
        stats
    }

    /// The last connection error, if it is recent enough to explain a failure now (an old
    /// one, from before a healthy spell, says nothing about a hang today).
    fn last_failure(&self) -> Option<(DegradedReason, String)> {
        let recent = self.config.connect_timeout.max(self.config.op_timeout) * 4;
        lock(&self.last_failure)
            .as_ref()
            .filter(|(_, _, at)| at.elapsed() <= recent)
            .map(|(reason, message, _)| (*reason, message.clone()))
    }

    /// Records a connection error fred reported; while degraded, a better-known reason
    /// replaces a timeout (and a change of reason is logged once).
    fn record_connection_error(&self, e: &fred::error::Error) {
        let reason = classify(e);
        *lock(&self.last_failure) = Some((reason, e.to_string(), Instant::now()));
        if !self.degraded.load(Ordering::SeqCst) {
            return;
        }
        let mut current = lock(&self.degraded_reason);
        let known = matches!(
            *current,
            Some(DegradedReason::Auth | DegradedReason::Refused | DegradedReason::Tls)
        );
        if *current != Some(reason) && (!known || reason != DegradedReason::Other) {
            *current = Some(reason);
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

    fn permit(self: &Arc<Self>, token: String, priority: Priority, waited: Duration) -> Permit {
        Permit::new(Arc::new(RedisPermit::start(self, token)), priority, waited)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Close both connections; fred's connection tasks otherwise live on.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            let subscriber = self.subscriber.clone();
            handle.spawn(async move {
                let _ = client.quit().await;
                let _ = subscriber.quit().await;
            });
        }
    }
}

/// A poisoned lock still holds a valid value here (plain data, no invariant across fields).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Records every connection error fred broadcasts (a refused connect, a wrong password at
/// `AUTH`), so that stats and logs can name the cause and not only "timed out".
async fn watch_errors(
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

/// The most tokens kept for a cleanup at the switch back (see [`Inner::spawn_cleanup`]).
const MAX_ABANDONED: usize = 10_000;

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
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
        if !inner.degraded.load(Ordering::SeqCst) || inner.try_recover().await {
            return;
        }
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
        inner
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.to_owned(), notify);
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
        self.inner
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.token);
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
    async fn acquire(
        &self,
        priority: Priority,
        wait_timeout: Duration,
    ) -> Result<Permit, LimiterError> {
        let inner = &self.inner;
        if inner.degraded.load(Ordering::SeqCst) {
            return inner.fallback.acquire(priority, wait_timeout).await;
        }
        let started = Instant::now();
        let token = inner.new_token();

        if wait_timeout.is_zero() {
            return match inner.acquire_script(&token, priority, Mode::Try).await {
                Ok(Acquire::Granted) => {
                    bump(&inner.counters.acquired_immediately);
                    Ok(inner.permit(token, priority, Duration::ZERO))
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
                    inner.fallback.acquire(priority, Duration::ZERO).await
                }
            };
        }

        let deadline = started + wait_timeout;
        let notify = Arc::new(Notify::new());
        let mut ticket = Ticket::new(inner, &token, Arc::clone(&notify));
        let mut first = true;
        loop {
            match inner.acquire_script(&token, priority, Mode::Wait).await {
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
                    return Ok(inner.permit(token, priority, waited));
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
                    return inner.fallback.acquire(priority, remaining).await;
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

    async fn stats(&self) -> LimiterStats {
        let inner = &self.inner;
        if !inner.degraded.load(Ordering::SeqCst) {
            match inner.redis_stats().await {
                Ok(stats) => return stats,
                Err(e) => inner.fail_over(&e),
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
            .set_limit(inner.config.fallback_limit(max_concurrent))
            .await?;
        if !inner.degraded.load(Ordering::SeqCst) {
            match inner.store_limit(max_concurrent).await {
                Ok(()) => return Ok(()),
                Err(e) => inner.fail_over(&e),
            }
        }
        // Redis is unreachable: the probe stores the limit before switching back.
        *inner
            .pending_limit
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(max_concurrent);
        Ok(())
    }
}
