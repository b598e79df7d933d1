//! [`Inner`]: the state one limiter shares with its permits and background tasks, and the
//! calls every other module builds on: one typed method per script, local tokens and
//! waiters, and this process's counters.
//!
//! Nothing here decides to fail over or retries: a failed call comes back as a
//! [`BackendError`] and the caller chooses (see `failover`). So this module depends only on
//! the config, the connection, the scripts and their replies.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use domain::{Admission, Share, Tenant};
use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, PubsubInterface};
use fred::types::scripts::Script;
use fred::types::{FromValue, Value};
use ports::{ConcurrencyLimiter, DegradedReason, LimiterCounters};
use rand::Rng;
use redis_connect::{BackendError, Clients};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::{RedisLimiterConfig, address_of};
use crate::reply::{self, Acquire, Beat, GivenBack, Renew};
use crate::scripts::{ScriptSettings, Scripts};
use crate::util::{jittered, lock};

/// The state shared by the limiter, its permits and its background tasks.
pub(crate) struct Inner {
    /// The config the limiter was built with.
    pub(crate) config: RedisLimiterConfig,
    /// The connection that runs the scripts.
    pub(crate) client: Client,
    /// The connection subscribed to the wake-up channel.
    pub(crate) subscriber: SubscriberClient,
    /// The keys, channel and scripts of this limiter's name.
    pub(crate) scripts: Scripts,
    /// Serves every call while degraded.
    pub(crate) fallback: Arc<dyn ConcurrencyLimiter>,
    /// True while calls go to the fallback.
    pub(crate) degraded: AtomicBool,
    /// The last global limit seen or set: the default a script stores when Redis has lost it.
    pub(crate) limit: AtomicU32,
    /// A `set_limit` made while degraded, pushed to Redis by the probe before switching back.
    pub(crate) pending_limit: Mutex<Option<u32>>,
    /// This limiter instance's random id: its record in Redis, and the prefix of its tokens
    /// (`<instance>-<n>`), by which Redis tells whose a holder or waiter is.
    pub(crate) instance: String,
    /// True once the subscriber holds this instance's presence subscription (see
    /// [`Inner::presence_channel`]); a heartbeat tells Redis, which from then on skips this
    /// instance's waiters whenever the subscription is gone (its process died).
    pub(crate) listening: AtomicBool,
    /// Whether a failed presence subscription was logged already (once per limiter).
    presence_warned: AtomicBool,
    /// The epoch of Redis's data last seen (0: never seen); a new one means Redis lost it.
    pub(crate) epoch: AtomicI64,
    /// Live instances sharing the limit, as last seen in Redis (0: never seen).
    pub(crate) peers: AtomicU32,
    /// Tokens of this process's live Redis permits, with each permit's *lost* flag: renewed
    /// together (see `permit::renew_all`), re-established when Redis lost them.
    pub(crate) held: Mutex<HashMap<String, Arc<AtomicBool>>>,
    /// Tokens of this process's live fallback permits, and whether each is *adopted*:
    /// registered in Redis as a holder at the switch back, so it counts against the global
    /// limit until it ends (the heartbeat keeps its lease).
    pub(crate) fallback_held: Mutex<HashMap<String, bool>>,
    /// Instances Redis declared dead, as last counted by the stats script.
    pub(crate) instances_reclaimed: AtomicU64,
    next_token: AtomicU64,
    /// Local waiters by token, woken by the pub/sub task.
    pub(crate) waiters: Mutex<HashMap<String, Arc<Notify>>>,
    /// Tokens given up while Redis did not answer, with the script that gives each back.
    /// Their acquires may still be sitting in a socket and run when Redis answers again, so
    /// the probe sends every cleanup once more before switching back (see `failover`).
    pub(crate) abandoned: Mutex<HashMap<String, Cleanup>>,
    /// This process's event counters.
    pub(crate) counters: Counters,
    /// The Redis address (`host:port`), without credentials, for stats and logs.
    pub(crate) address: String,
    /// Why the limiter is degraded: set at the switch to the fallback, refined by the
    /// connection errors fred reports while it reconnects (a command that timed out because
    /// the connection is refused is a refusal, not a timeout), cleared at the switch back.
    pub(crate) degraded_reason: Mutex<Option<DegradedReason>>,
    /// The last connection error fred reported (reason, message, when), cleared at the switch
    /// back to Redis.
    pub(crate) last_failure: Mutex<Option<(DegradedReason, String, Instant)>>,
    /// The callers waiting in the fallback while degraded: at the switch back the probe
    /// moves them into the Redis queue in their arrival order (see `failover`), so that no
    /// fallback grant happens after Redis has taken over.
    pub(crate) fallback_waiters: Mutex<FallbackWaiters>,
    /// Notified when a switch back ends (done or given up): callers that arrived during it
    /// look again.
    pub(crate) switched: Notify,
    /// Notified at every switch to the fallback, so a `stats` call waiting on Redis answers
    /// from the fallback at once.
    pub(crate) went_degraded: Notify,
    /// Refused (or auth/TLS-failing) reconnects since the last heartbeat that got through.
    pub(crate) connection_failures: AtomicU32,
    /// When a change of the degraded reason was last logged at `warn`.
    pub(crate) reason_warned_at: Mutex<Option<Instant>>,
    /// Whether the stored limit was seen to differ from the configured one (logged once).
    pub(crate) limit_mismatch_told: AtomicBool,
    /// Set when the server at the address speaks the other protocol than the URL's scheme
    /// (see `diagnose`): the reason stays `tls` until Redis is reached.
    pub(crate) wrong_protocol: AtomicBool,
}

/// The callers queued in the fallback, by arrival, and whether a switch back is moving them.
#[derive(Default)]
pub(crate) struct FallbackWaiters {
    /// Set while the probe moves the waiters into Redis: a new caller waits for the end of
    /// the switch (it would be granted by neither side meanwhile).
    pub(crate) switching: bool,
    next_seq: u64,
    /// Waiters by arrival.
    waiting: std::collections::BTreeMap<u64, FallbackWaiter>,
}

/// A caller queued in the fallback.
pub(crate) struct FallbackWaiter {
    /// The token it is known by in Redis once moved.
    pub(crate) token: String,
    /// What it asked for (its priority and its tenant's share, for the Redis queue).
    pub(crate) admission: Admission,
    /// Tells it where it stands once the probe took it.
    pub(crate) moved: tokio::sync::oneshot::Sender<Moved>,
}

/// What the switch back did with a fallback waiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Moved {
    /// Its token is queued (or granted) in Redis: it waits there from now on.
    Queued,
    /// The switch back failed before its token was queued: it stays in the fallback.
    Stay,
}

impl FallbackWaiters {
    /// Registers a waiter; returns its arrival number.
    pub(crate) fn register(&mut self, waiter: FallbackWaiter) -> u64 {
        self.next_seq += 1;
        self.waiting.insert(self.next_seq, waiter);
        self.next_seq
    }

    /// Removes waiter `seq`; `false` if the switch back took it already.
    pub(crate) fn leave(&mut self, seq: u64) -> bool {
        self.waiting.remove(&seq).is_some()
    }

    /// Takes every waiter, in arrival order.
    pub(crate) fn take_all(&mut self) -> Vec<FallbackWaiter> {
        std::mem::take(&mut self.waiting).into_values().collect()
    }
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
    /// The counters as the port reports them, with Redis's count of reclaimed leases.
    pub(crate) fn snapshot(&self, leases_reclaimed: u64) -> LimiterCounters {
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

/// Counts one event.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Which script gives a token back.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Cleanup {
    /// The token holds (or may hold) a slot.
    Release,
    /// The token is (or may be) queued, or was granted without anyone taking the permit.
    Cancel,
}

/// How the acquire script treats a token that finds no free slot.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Mode {
    /// Queue it (a ticket that lives `waiter_ttl` unless refreshed).
    Wait,
    /// Refuse it without queueing (an acquire with a zero wait).
    Try,
}

impl Mode {
    /// The script's `ARGV[5]`.
    fn as_str(self) -> &'static str {
        match self {
            Mode::Wait => "wait",
            Mode::Try => "try",
        }
    }
}

impl Inner {
    /// The state of a new limiter on `clients` (not connected yet), healthy until a call
    /// fails.
    pub(crate) fn new(
        config: RedisLimiterConfig,
        clients: Clients,
        fallback: Arc<dyn ConcurrencyLimiter>,
    ) -> Self {
        let mut instance_id = [0u8; 8];
        rand::rng().fill(&mut instance_id);
        Inner {
            scripts: Scripts::new(&config.name, ScriptSettings::of(&config)),
            address: address_of(&config.connection.url),
            degraded_reason: Mutex::new(None),
            last_failure: Mutex::new(None),
            wrong_protocol: AtomicBool::new(false),
            limit_mismatch_told: AtomicBool::new(false),
            connection_failures: AtomicU32::new(0),
            reason_warned_at: Mutex::new(None),
            went_degraded: Notify::new(),
            fallback_waiters: Mutex::new(FallbackWaiters::default()),
            switched: Notify::new(),
            limit: AtomicU32::new(config.max_concurrent),
            config,
            client: clients.client,
            subscriber: clients.subscriber,
            fallback,
            degraded: AtomicBool::new(false),
            pending_limit: Mutex::new(None),
            instance: instance_id.iter().map(|b| format!("{b:02x}")).collect(),
            listening: AtomicBool::new(false),
            presence_warned: AtomicBool::new(false),
            epoch: AtomicI64::new(0),
            peers: AtomicU32::new(0),
            held: Mutex::new(HashMap::new()),
            fallback_held: Mutex::new(HashMap::new()),
            instances_reclaimed: AtomicU64::new(0),
            next_token: AtomicU64::new(0),
            waiters: Mutex::new(HashMap::new()),
            abandoned: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        }
    }

    /// Whether calls are currently served by the fallback.
    pub(crate) fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::SeqCst)
    }

    /// Runs `script` with the limiter's call key and the prelude's `[default limit, known
    /// epoch, args…]` (the constant settings are in the script text), bounded by
    /// `op_timeout` in total (including a `SCRIPT LOAD` after `NOSCRIPT`).
    async fn eval<R: FromValue>(
        &self,
        script: &Script,
        args: Vec<Value>,
    ) -> Result<R, BackendError> {
        let mut argv: Vec<Value> = Vec::with_capacity(args.len() + 2);
        argv.push(Value::Integer(i64::from(
            self.limit.load(Ordering::Relaxed),
        )));
        argv.push(match self.epoch.load(Ordering::Relaxed) {
            0 => Value::from(""),
            epoch => Value::Integer(epoch),
        });
        argv.extend(args);
        let call = script.evalsha_with_reload::<R, _, _>(
            &self.client,
            self.scripts.call_keys.clone(),
            argv,
        );
        match tokio::time::timeout(self.config.connection.op_timeout, call).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(BackendError::fred("redis", &e)),
            Err(_) => Err(BackendError::new(
                DegradedReason::Timeout,
                format!(
                    "redis: no answer within {:?}",
                    self.config.connection.op_timeout
                ),
            )),
        }
    }

    /// A token no other acquire of any process uses, now or later, for `admission`:
    /// `<instance>-<n>` for the public tenant with the default share, else
    /// `<instance>-<n>.<cap>.<tenant>` (cap 0: none), so every script can tell a holder's or
    /// a waiter's tenant and cap from its token alone (see [`crate::scripts`]).
    pub(crate) fn new_token(&self, admission: &Admission) -> String {
        let n = self.next_token.fetch_add(1, Ordering::Relaxed);
        if admission.tenant.as_str() == Tenant::PUBLIC && admission.share.is_default() {
            format!("{}-{n}", self.instance)
        } else {
            let cap = admission.share.cap().unwrap_or(0);
            format!("{}-{n}.{cap}.{}", self.instance, admission.tenant)
        }
    }

    /// Runs the acquire script for `token`: queue it, refresh its ticket, or confirm its
    /// grant (see [`Acquire`] for the answers).
    /// `first` says this is the acquire's first call for `token` (a new token, so Redis
    /// skips looking for it among holders and tickets).
    /// The share's cost in the fair order is sent only when it is not the default one's
    /// (the script text carries that).
    pub(crate) async fn acquire_script(
        &self,
        token: &str,
        admission: &Admission,
        mode: Mode,
        first: bool,
    ) -> Result<Acquire, BackendError> {
        let mut args = Vec::with_capacity(5);
        args.extend([
            Value::from(token),
            Value::Integer(admission.priority.index() as i64),
            Value::from(mode.as_str()),
            Value::from(if first { "1" } else { "0" }),
        ]);
        let cost = admission.share.cost();
        if cost != Share::default().cost() {
            args.push(Value::Integer(i64::try_from(cost).unwrap_or(i64::MAX)));
        }
        Acquire::decode(self.eval(&self.scripts.acquire, args).await?)
    }

    /// Extends the leases of `tokens` by a full `lease_ttl` (re-establishing those Redis
    /// lost); one answer per token.
    pub(crate) async fn renew_leases(&self, tokens: &[String]) -> Result<Vec<Renew>, BackendError> {
        let args = tokens.iter().map(|t| Value::from(t.as_str())).collect();
        Renew::decode_all(self.eval(&self.scripts.renew, args).await?, tokens.len())
    }

    /// Stores `limit` as the global limit (admitting waiters at once if it grew).
    pub(crate) async fn store_limit(&self, limit: u32) -> Result<(), BackendError> {
        let args = vec![Value::Integer(i64::from(limit))];
        reply::decode_set_limit(self.eval(&self.scripts.set_limit, args).await?)
    }

    /// Runs the stats script (which also reclaims and promotes), and remembers the peers
    /// and the epoch it saw.
    pub(crate) async fn read_stats(&self) -> Result<reply::Stats, BackendError> {
        let stats = reply::Stats::decode(self.eval(&self.scripts.stats, Vec::new()).await?)?;
        self.saw(stats.instances, stats.epoch);
        self.instances_reclaimed.store(
            u64::try_from(stats.instances_reclaimed).unwrap_or(0),
            Ordering::Relaxed,
        );
        Ok(stats)
    }

    /// Remembers the live instances and the data's epoch a script reported.
    fn saw(&self, instances: i64, epoch: i64) {
        if let Ok(n) = u32::try_from(instances)
            && n > 0
        {
            self.peers.store(n, Ordering::Relaxed);
        }
        if epoch > 0 {
            self.epoch.store(epoch, Ordering::Relaxed);
        }
    }

    /// Runs the heartbeat: renews this instance's record and holds `tokens` as holders
    /// (re-establishing those Redis lost). Remembers the peers and the epoch; the caller
    /// checks [`Beat::was_unknown`] and the epoch to re-establish every token.
    pub(crate) async fn beat(&self, tokens: &[String]) -> Result<Beat, BackendError> {
        let mut args = Vec::with_capacity(tokens.len() + 2);
        args.push(Value::from(self.instance.as_str()));
        let listening = self.listening.load(Ordering::Relaxed);
        args.push(Value::from(if listening { "1" } else { "0" }));
        args.extend(tokens.iter().map(|t| Value::from(t.as_str())));
        let beat = Beat::decode(self.eval(&self.scripts.beat, args).await?)?;
        self.connection_failures.store(0, Ordering::SeqCst);
        self.saw(i64::from(beat.instances), beat.epoch);
        let stored = beat.limit.max(1);
        let before = self.limit.swap(stored, Ordering::Relaxed);
        self.tell_limit(before, stored);
        Ok(beat)
    }

    /// Logs what the fleet's limit stored in Redis means for this instance: once, at
    /// `warn`, when it first differs from the configured one (the first instance on an
    /// empty Redis stores its limit, and the others serve it, whatever they are configured
    /// with), and at `info` whenever it changes (a `set_limit` of any instance).
    pub(crate) fn tell_limit(&self, before: u32, stored: u32) {
        let configured = self.config.max_concurrent;
        if stored != configured && !self.limit_mismatch_told.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                limiter = %self.config.name,
                address = %self.address,
                stored_limit = stored,
                configured_limit = configured,
                "the fleet's limit stored in redis is {stored}, this instance is configured \
                 with {configured}: serving {stored} (one limit for every instance sharing \
                 the name; set_limit changes it for all of them)"
            );
        } else if stored != before {
            tracing::info!(
                limiter = %self.config.name,
                from = before,
                to = stored,
                "the fleet's limit changed from {before} to {stored}"
            );
        }
    }

    /// This instance's presence channel, `<wake channel>:<instance>` (same hash slot). The
    /// subscriber holds a sharded subscription to it, so Redis sees at once when this
    /// process's connection closes — when it dies — and stops granting slots to its
    /// waiters (`PUBSUB SHARDNUMSUB` in the promotion step). Nothing is published there.
    pub(crate) fn presence_channel(&self) -> String {
        format!("{}:{}", self.scripts.channel, self.instance)
    }

    /// Takes this instance's presence subscription (again), remembering whether it holds.
    /// A server without sharded pub/sub (before Redis 7) or an ACL that forbids the
    /// channel leaves the instance unmarked: its waiters are then judged by heartbeats only.
    /// Returns true if the instance listens now and did not before: then a heartbeat should
    /// tell Redis at once.
    pub(crate) async fn listen(&self) -> bool {
        match self.subscriber.ssubscribe(self.presence_channel()).await {
            Ok(()) => !self.listening.swap(true, Ordering::Relaxed),
            Err(e) => {
                self.listening.store(false, Ordering::Relaxed);
                if !self.presence_warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        limiter = %self.config.name,
                        address = %self.address,
                        error = %e,
                        "could not subscribe to this instance's presence channel; a dead \
                         instance's waiters are then recognised by its heartbeat only"
                    );
                } else {
                    tracing::debug!(error = %e, "no presence subscription");
                }
                false
            }
        }
    }

    /// Removes this instance's record (a clean shutdown), so peers stop counting it.
    pub(crate) async fn leave(&self) -> Result<(), BackendError> {
        let args = vec![Value::from(self.instance.as_str())];
        reply::decode_leave(self.eval(&self.scripts.leave, args).await?)
    }

    /// Every token this process holds a permit for: its Redis permits and its fallback
    /// permits (the tokens a heartbeat re-establishes when Redis lost them).
    pub(crate) fn all_tokens(&self) -> Vec<String> {
        let mut tokens: Vec<String> = lock(&self.held).keys().cloned().collect();
        tokens.extend(lock(&self.fallback_held).keys().cloned());
        tokens
    }

    /// The tokens of fallback permits adopted by Redis (renewed by every heartbeat).
    pub(crate) fn adopted_tokens(&self) -> Vec<String> {
        lock(&self.fallback_held)
            .iter()
            .filter(|(_, adopted)| **adopted)
            .map(|(token, _)| token.clone())
            .collect()
    }

    /// The live peers last seen in Redis, if ever.
    pub(crate) fn known_peers(&self) -> Option<u32> {
        match self.peers.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    /// Runs the script that gives `token` back (it also tombstones the token in Redis).
    pub(crate) async fn run_cleanup(
        &self,
        what: Cleanup,
        token: &str,
    ) -> Result<GivenBack, BackendError> {
        let args = || vec![Value::from(token)];
        match what {
            Cleanup::Release => {
                GivenBack::decode_release(self.eval(&self.scripts.release, args()).await?)
            }
            Cleanup::Cancel => {
                GivenBack::decode_cancel(self.eval(&self.scripts.cancel, args()).await?)
            }
        }
    }

    /// The longest a waiter sleeps without a wake-up: the safety poll, capped so that the
    /// ticket is refreshed at least three times per `waiter_ttl` and a grant whose wake-up
    /// message was lost is confirmed well within `grant_ttl`, jittered to 50–100 %.
    pub(crate) fn poll_period(&self) -> Duration {
        let cap = (self.config.waiter_ttl / 3).min(self.config.grant_ttl / 2);
        jittered(self.config.safety_poll.min(cap), 0.5)
    }

    /// Wakes the local waiters among `tokens`.
    pub(crate) fn wake<'a>(&self, tokens: impl Iterator<Item = &'a str>) {
        let waiters = lock(&self.waiters);
        for token in tokens {
            if let Some(notify) = waiters.get(token) {
                notify.notify_one();
            }
        }
    }

    /// Wakes every local waiter (after a reconnect or a lagged receiver).
    pub(crate) fn wake_all(&self) {
        let waiters = lock(&self.waiters);
        for notify in waiters.values() {
            notify.notify_one();
        }
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
