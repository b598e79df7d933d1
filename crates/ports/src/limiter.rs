//! The concurrency-limiter port: a bounded number of slots, handed out by priority.
//!
//! # Contract
//! Every adapter guarantees, and the contract suite (`ports::contract`) checks:
//! - at most `max_concurrent` permits are alive at any moment (across all processes, for a
//!   distributed adapter);
//! - a waiter is served before every waiter of a lower priority, and after every earlier
//!   waiter of its own priority (strict priority, FIFO within a class);
//! - a freed slot goes straight to the head waiter: a later `acquire` cannot take it first;
//! - dropping a pending `acquire` future removes its place in the queue and takes no slot;
//! - dropping a [`Permit`] frees its slot, also while a task unwinds from a panic; a slot is
//!   freed at most once, so releases can never raise capacity above the limit.
//!
//! # Releasing a permit
//! [`Permit`] is a value. Dropping it releases the slot: synchronously for an in-process
//! adapter, by a spawned task for an adapter that needs I/O (Redis), whose server-side lease
//! is the last safety net. [`Permit::release`] releases it and waits until the backend
//! confirms, reporting a backend error instead of logging it; callers that can `.await`
//! should prefer it. Either way a permit is released exactly once.
//!
//! # Stats
//! [`LimiterStats`] speaks of slots, queues, waits and whether the limiter is
//! [`degraded`](LimiterStats::degraded), which the service acts on. What only an adapter knows
//! (the backend's kind and address, why it is not serving, a distributed limiter's failover
//! policy and peers) sits in one section, [`BackendStats`], that each adapter fills in. The
//! section is a typed struct rather than an adapter-defined map of JSON values because the
//! service reads parts of it (the kind names and reason for `/ready`, the fleet's limit for
//! `/limit`, the failover counts for `/metrics`) and the compiler should check those reads; its
//! fields name what they describe, not the technology behind it. It is `#[serde(flatten)]`ed,
//! so a serialized [`LimiterStats`] has the same keys as before the section existed, and that
//! JSON still deserializes.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use domain::{Admission, Priority};
use serde::{Deserialize, Serialize};

/// Why a limiter could not grant a permit or apply a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimiterError {
    /// No slot became free within the caller's wait timeout. The queue entry is gone.
    #[error("no {priority} slot free within {waited:?}")]
    Timeout {
        /// The priority that was waited for.
        priority: Priority,
        /// How long the caller waited.
        waited: Duration,
    },
    /// `set_limit` was given a limit of zero.
    #[error("invalid limit {given}: must be at least 1")]
    InvalidLimit {
        /// The rejected value.
        given: u32,
    },
    /// The circuit breaker in front of the upstream is open: nothing is sent for now, and
    /// the caller may come back after `retry_after`.
    #[error("the upstream is unavailable (circuit breaker open); retry after {retry_after:?}")]
    UpstreamUnavailable {
        /// When the breaker may let requests through again.
        retry_after: Duration,
    },
    /// The backend failed and no fallback could serve the call.
    #[error("limiter backend unavailable: {message}")]
    Unavailable {
        /// What went wrong (never contains credentials).
        message: String,
    },
}

/// The adapter side of a [`Permit`]: how one granted slot is given back.
///
/// Adapters implement this; callers only see [`Permit`], which calls exactly one of the two
/// release methods exactly once per permit. The handle is shared (`Arc`), so an adapter whose
/// permits need no identity (the in-memory limiter) can hand out clones of one `Arc` and grant
/// a permit without allocating; an adapter with per-permit state (a Redis lease) allocates one
/// `Arc` per permit and keeps any state it must take out of it behind a lock.
pub trait PermitHandle: Send + Sync + 'static {
    /// Gives the slot back without blocking. Called from `Drop` (also during unwinding), so
    /// it must not panic; an adapter that needs I/O spawns the release here.
    fn release_on_drop(self: Arc<Self>);

    /// Gives the slot back and resolves once the backend has confirmed it.
    fn release(
        self: Arc<Self>,
    ) -> Pin<Box<dyn Future<Output = Result<(), LimiterError>> + Send + 'static>>;

    /// Whether the adapter knows this slot has been lost (a distributed lease expired and was
    /// reclaimed by others). The default says no.
    fn is_lost(&self) -> bool {
        false
    }
}

/// One granted slot. Dropping it frees the slot; see the module docs.
#[must_use = "a permit frees its slot as soon as it is dropped"]
pub struct Permit {
    handle: Option<Arc<dyn PermitHandle>>,
    priority: Priority,
    waited: Duration,
}

impl Permit {
    /// Wraps an adapter's handle. `waited` is the time spent queued before the grant.
    pub fn new(handle: Arc<dyn PermitHandle>, priority: Priority, waited: Duration) -> Self {
        Permit {
            handle: Some(handle),
            priority,
            waited,
        }
    }

    /// The priority this permit was granted at.
    pub fn priority(&self) -> Priority {
        self.priority
    }

    /// How long the acquire waited in the queue (zero when granted at once).
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// Whether the backend reports the slot as lost (see [`PermitHandle::is_lost`]).
    pub fn is_lost(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| h.is_lost())
    }

    /// Releases the slot and waits for the backend to confirm.
    pub async fn release(mut self) -> Result<(), LimiterError> {
        match self.handle.take() {
            Some(handle) => handle.release().await,
            None => Ok(()),
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.release_on_drop();
        }
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("priority", &self.priority)
            .field("waited", &self.waited)
            .field("held", &self.handle.is_some())
            .finish()
    }
}

/// Waiters currently queued, per priority.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedByPriority {
    /// Queued `low` waiters.
    pub low: u32,
    /// Queued `normal` waiters.
    pub normal: u32,
    /// Queued `high` waiters.
    pub high: u32,
    /// Queued `critical` waiters.
    pub critical: u32,
}

impl QueuedByPriority {
    /// The count for one priority.
    pub fn get(&self, priority: Priority) -> u32 {
        match priority {
            Priority::Low => self.low,
            Priority::Normal => self.normal,
            Priority::High => self.high,
            Priority::Critical => self.critical,
        }
    }

    /// A mutable reference to the count for one priority.
    pub fn get_mut(&mut self, priority: Priority) -> &mut u32 {
        match priority {
            Priority::Low => &mut self.low,
            Priority::Normal => &mut self.normal,
            Priority::High => &mut self.high,
            Priority::Critical => &mut self.critical,
        }
    }

    /// All queued waiters.
    pub fn total(&self) -> u32 {
        self.low + self.normal + self.high + self.critical
    }
}

/// One tenant's part of a limiter's state (see [`LimiterStats::tenants`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantSlots {
    /// Slots it holds now.
    pub active: u32,
    /// Its waiters queued now (all priorities).
    pub queued: u32,
}

/// Monotonic counters since the limiter was built (per process for distributed adapters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimiterCounters {
    /// Permits granted without queueing.
    pub acquired_immediately: u64,
    /// Permits granted after queueing.
    pub acquired_after_wait: u64,
    /// Acquires that gave up at their wait timeout.
    pub timeouts: u64,
    /// Acquires dropped while queued (caller went away).
    pub cancelled: u64,
    /// Permits given back.
    pub released: u64,
    /// Permits whose lease was found expired while still held (distributed adapters).
    pub leases_lost: u64,
    /// Expired leases or waiter tickets of dead holders removed (distributed adapters).
    pub leases_reclaimed: u64,
}

/// Why a distributed limiter could not use its backend and serves from its local fallback.
///
/// Serialized in lowercase (`"auth"`, `"refused"`, …), the words `/health` and `/ready` show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DegradedReason {
    /// The backend refused the credentials (`WRONGPASS`, `NOAUTH`).
    Auth,
    /// Nothing accepted the connection at the address (connection refused).
    Refused,
    /// The backend did not connect or answer in time (down host, hung server, slow network).
    Timeout,
    /// The TLS handshake failed (certificate, protocol).
    Tls,
    /// The server answered `MOVED`, `ASK` or `CROSSSLOT`: it is a Redis Cluster node and the
    /// URL does not say so (use a `redis-cluster://` URL).
    Cluster,
    /// Anything else (the limiter's log line has the detail).
    Other,
}

impl DegradedReason {
    /// The lowercase word, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            DegradedReason::Auth => "auth",
            DegradedReason::Refused => "refused",
            DegradedReason::Timeout => "timeout",
            DegradedReason::Tls => "tls",
            DegradedReason::Cluster => "cluster",
            DegradedReason::Other => "other",
        }
    }
}

impl fmt::Display for DegradedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot of a limiter's state: its slots, queue and counters in the port's words, and
/// the [`BackendStats`] section its adapter fills in.
///
/// Serialized flat, as before the section existed: the section's keys (`backend`,
/// `configured_backend`, …, `failover`) sit beside `max_concurrent` and the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimiterStats {
    /// The limit.
    pub max_concurrent: u32,
    /// Permits alive now (may exceed the limit right after `set_limit` lowered it).
    pub active: u32,
    /// Slots free now (`max_concurrent - active`, never negative).
    pub available: u32,
    /// Waiters queued now, per priority.
    pub queued: QueuedByPriority,
    /// Event counters.
    pub counters: LimiterCounters,
    /// The longest wait of any granted acquire so far, in milliseconds.
    pub max_wait_ms: u64,
    /// How long the oldest current waiter has been queued, in milliseconds (0 if none).
    pub oldest_queued_ms: u64,
    /// True while a distributed limiter runs on its local fallback: the service reports
    /// itself degraded, and not ready once this lasts past its grace.
    pub degraded: bool,
    /// Per tenant, its waiters queued now and the slots it holds: every tenant with waiters,
    /// and every tenant with a cap that holds slots (uncapped tenants' slots need not be
    /// counted, so `active` may be 0 for them). A tenant with neither is left out, so the
    /// map is bounded by the limit plus the queue; empty (and left out of the JSON) when
    /// nobody waits and no capped tenant holds a slot.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tenants: BTreeMap<String, TenantSlots>,
    /// What the adapter says about the backend behind the slots.
    #[serde(flatten)]
    pub backend: BackendStats,
}

/// The adapter-filled section of [`LimiterStats`]: which backend the operator configured and
/// which one serves now, where it is, why it is not serving, and for a distributed limiter
/// how it shares the limit and degrades.
///
/// The service shows these facts (`/health`, `/ready`, `/stats`, `/metrics`) and reads a few
/// of them (the fleet's limit for `/limit`, the kind names for `/ready`'s reason), so they are
/// typed rather than an adapter's free-form map; the values are the adapter's own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStats {
    /// Which backend answered: `"memory"` or `"redis"` (the same as
    /// [`serving`](Self::serving), kept for compatibility). Serialized as `backend`.
    #[serde(rename = "backend")]
    pub kind: String,
    /// The backend the operator configured: `"redis"` for a Redis limiter also while it runs
    /// degraded, `"memory"` for the in-memory limiter. Serialized as `configured_backend`.
    #[serde(rename = "configured_backend", default)]
    pub configured: String,
    /// The backend serving calls now: `"memory"` while a Redis limiter runs on its fallback.
    /// Serialized as `serving_backend`.
    #[serde(rename = "serving_backend", default)]
    pub serving: String,
    /// Where the configured backend is (`host:port`, or a socket path), never with
    /// credentials; `None` for an in-process limiter.
    #[serde(default)]
    pub address: Option<String>,
    /// Why the configured backend is not serving; `None` unless
    /// [`LimiterStats::degraded`].
    #[serde(default)]
    pub degraded_reason: Option<DegradedReason>,
    /// What a distributed limiter does while its backend is unreachable, and what it knows
    /// of the instances it shares the limit with; `None` for an in-process limiter.
    #[serde(default)]
    pub failover: Option<FailoverStats>,
}

/// How a distributed limiter degrades: its policy, the share it grants on its own, and the
/// peers it last saw (part of [`BackendStats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverStats {
    /// The adapter's name of its policy (limiter-redis: `"share"`, `"closed"` or `"full"`).
    pub policy: String,
    /// The permits this instance grants on its own while degraded (0 under `closed`).
    pub share: u32,
    /// Live instances sharing the limit (this one included), as last seen in the backend;
    /// `None` if it was never reached.
    pub instances: Option<u32>,
    /// Permits granted by the fallback that are still alive (after the switch back they
    /// count against the global limit until they end).
    pub fallback_active: u32,
    /// Instances the backend declared dead (their record expired) since its data was
    /// created: their holders were reclaimed at once.
    pub instances_reclaimed: u64,
    /// The limit every instance sharing the backend serves (as last seen there, or a
    /// `set_limit` waiting for the backend): while degraded `max_concurrent` is this
    /// instance's fallback limit, and this is the fleet's.
    #[serde(default)]
    pub fleet_limit: u32,
}

/// The future [`ConcurrencyLimiter::acquire`] returns: already resolved when the adapter
/// decided without waiting (a free slot taken in process: no allocation, no `await` on
/// anything), else the adapter's boxed future. Await it like any future; it is `Unpin`.
#[must_use = "an acquire does nothing until it is awaited"]
pub struct Acquire<'a>(AcquireState<'a>);

/// A boxed future of an acquire.
type BoxedAcquire<'a> = Pin<Box<dyn Future<Output = Result<Permit, LimiterError>> + Send + 'a>>;

enum AcquireState<'a> {
    Ready(Option<Result<Permit, LimiterError>>),
    Pending(BoxedAcquire<'a>),
}

impl<'a> Acquire<'a> {
    /// An acquire decided at once.
    pub fn ready(result: Result<Permit, LimiterError>) -> Acquire<'a> {
        Acquire(AcquireState::Ready(Some(result)))
    }

    /// An acquire that waits: `future` is boxed.
    pub fn pending(
        future: impl Future<Output = Result<Permit, LimiterError>> + Send + 'a,
    ) -> Acquire<'a> {
        Acquire(AcquireState::Pending(Box::pin(future)))
    }

    /// Whether the adapter decided at once (the future is resolved; nothing waits).
    pub fn is_ready(&self) -> bool {
        matches!(self.0, AcquireState::Ready(_))
    }

    /// The same acquire, telling `observe` of its result when it has one (at once for a
    /// decided acquire, which stays unboxed; a decorator such as a metrics wrapper uses it).
    pub fn inspect(
        self,
        observe: impl FnOnce(&Result<Permit, LimiterError>) + Send + 'a,
    ) -> Acquire<'a> {
        match self.0 {
            AcquireState::Ready(Some(result)) => {
                observe(&result);
                Acquire::ready(result)
            }
            AcquireState::Ready(None) => Acquire(AcquireState::Ready(None)),
            AcquireState::Pending(future) => Acquire::pending(async move {
                let result = future.await;
                observe(&result);
                result
            }),
        }
    }
}

impl Future for Acquire<'_> {
    type Output = Result<Permit, LimiterError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            AcquireState::Ready(result) => Poll::Ready(result.take().unwrap_or_else(|| {
                Err(LimiterError::Unavailable {
                    message: "an acquire was polled after it completed".to_owned(),
                })
            })),
            AcquireState::Pending(future) => future.as_mut().poll(cx),
        }
    }
}

impl fmt::Debug for Acquire<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            AcquireState::Ready(_) => "Acquire(ready)",
            AcquireState::Pending(_) => "Acquire(pending)",
        })
    }
}

/// A priority-aware concurrency limiter. Object-safe; inject it as `Arc<dyn ConcurrencyLimiter>`.
///
/// Between tenants waiting at the same priority it grants by weighted fair share, and never
/// lets a tenant hold more than its cap ([`domain::Share`], carried by the [`Admission`]):
/// a waiter's virtual finish is `max(V, its tenant's last finish at that priority) +
/// share.cost()`, where `V` is the finish of the last waiter granted at that priority; the
/// waiter with the smallest finish goes first (ties in either order; an adapter in one
/// process breaks them by arrival), a capped tenant's waiters are passed over until it
/// frees a slot. With one tenant this is arrival order.
#[async_trait]
pub trait ConcurrencyLimiter: Send + Sync {
    /// Waits up to `wait` for a slot at `admission`'s priority (its tenant travels
    /// with it, for the tenants feature; a zero timeout only takes a slot that is free now
    /// with nobody queued). Cancel-safe: dropping the future leaves no trace.
    /// The returned [`Acquire`] resolves at once when the adapter decides without waiting.
    fn acquire<'a>(&'a self, admission: &'a Admission, wait: Duration) -> Acquire<'a>;

    /// A snapshot of the limiter's state. Infallible: a distributed adapter that cannot reach
    /// its backend reports its fallback's state with `degraded: true`.
    async fn stats(&self) -> LimiterStats;

    /// Changes the limit (≥ 1). Raising it admits waiters at once; lowering it lets holders
    /// finish, admitting nobody until `active` is below the new limit.
    async fn set_limit(&self, max_concurrent: u32) -> Result<(), LimiterError>;
}

#[cfg(feature = "mock")]
mockall::mock! {
    /// A mockall mock of [`ConcurrencyLimiter`] (feature `mock`): `expect_acquire`,
    /// `expect_stats`, `expect_set_limit`, each answered at once (an acquire's
    /// [`Acquire`] is always ready; a test that needs waiting uses a real limiter).
    pub ConcurrencyLimiter {
        /// What `acquire` resolves to.
        pub fn acquire(&self, admission: &Admission, wait: Duration) -> Result<Permit, LimiterError>;
        /// What `stats` resolves to.
        pub fn stats(&self) -> LimiterStats;
        /// What `set_limit` resolves to.
        pub fn set_limit(&self, max_concurrent: u32) -> Result<(), LimiterError>;
    }
}

#[cfg(feature = "mock")]
#[async_trait]
impl ConcurrencyLimiter for MockConcurrencyLimiter {
    fn acquire<'a>(&'a self, admission: &'a Admission, wait: Duration) -> Acquire<'a> {
        Acquire::ready(MockConcurrencyLimiter::acquire(self, admission, wait))
    }

    async fn stats(&self) -> LimiterStats {
        MockConcurrencyLimiter::stats(self)
    }

    async fn set_limit(&self, max_concurrent: u32) -> Result<(), LimiterError> {
        MockConcurrencyLimiter::set_limit(self, max_concurrent)
    }
}

/// What a limiter that keeps its count in a shared store (Redis, for `limiter-redis`) grants
/// while that store is unreachable and it serves from an in-memory fallback.
///
/// With N instances degraded at once and a global limit C, the permits alive at once are at
/// most: `share` → `max(C, N)` (with the derived share; N × `local_share` when it is set),
/// `closed` → 0 new ones, `full` → N × C.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FailoverPolicy {
    /// Grant a share of the limit from the in-memory fallback: the limit divided among the
    /// live instances (at least 1), or a configured share (`limiter-redis`'s
    /// `RedisLimiterConfig::local_share`).
    #[default]
    Share,
    /// Grant nothing: every acquire fails with [`LimiterError::Unavailable`] while
    /// degraded (the service answers 503). Work already admitted finishes.
    Closed,
    /// Grant the whole limit from the fallback, as if this instance were alone. Only right
    /// for a single instance: N degraded instances admit up to N × the limit.
    Full,
}

impl FailoverPolicy {
    /// The lowercase name, as the service's `FAILOVER_POLICY` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            FailoverPolicy::Share => "share",
            FailoverPolicy::Closed => "closed",
            FailoverPolicy::Full => "full",
        }
    }
}

impl fmt::Display for FailoverPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for FailoverPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "share" => Ok(FailoverPolicy::Share),
            "closed" => Ok(FailoverPolicy::Closed),
            "full" => Ok(FailoverPolicy::Full),
            _ => Err(format!(
                "unknown failover policy {s:?}: expected share, closed or full"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The keys a `LimiterStats` had before its backend section existed: it still reads
    /// them, and writes them back unchanged.
    #[test]
    fn stats_json_keeps_its_flat_shape() {
        let failover = json!({
            "policy": "share", "share": 2, "instances": 3, "fallback_active": 1,
            "instances_reclaimed": 4, "fleet_limit": 6,
        });
        let flat = json!({
            "backend": "memory", "configured_backend": "redis", "serving_backend": "memory",
            "address": "127.0.0.1:6379", "degraded_reason": "refused", "degraded": true,
            "max_concurrent": 2, "active": 1, "available": 1,
            "queued": {"low": 0, "normal": 1, "high": 0, "critical": 0},
            "counters": {
                "acquired_immediately": 5, "acquired_after_wait": 1, "timeouts": 0,
                "cancelled": 0, "released": 4, "leases_lost": 0, "leases_reclaimed": 0,
            },
            "max_wait_ms": 12, "oldest_queued_ms": 3, "failover": failover,
        });
        let stats: LimiterStats = serde_json::from_value(flat.clone()).unwrap();
        assert_eq!(
            (
                stats.backend.kind.as_str(),
                stats.backend.configured.as_str(),
                stats.backend.serving.as_str()
            ),
            ("memory", "redis", "memory")
        );
        assert_eq!(stats.backend.degraded_reason, Some(DegradedReason::Refused));
        assert_eq!(
            stats.backend.failover.as_ref().map(|f| f.fleet_limit),
            Some(6)
        );
        assert_eq!(serde_json::to_value(&stats).unwrap(), flat);

        let memory = LimiterStats {
            max_concurrent: 1,
            backend: BackendStats {
                kind: "memory".to_owned(),
                ..BackendStats::default()
            },
            ..LimiterStats::default()
        };
        let v = serde_json::to_value(&memory).unwrap();
        assert_eq!(
            (&v["failover"], &v["address"]),
            (&json!(null), &json!(null))
        );
        assert_eq!(serde_json::from_value::<LimiterStats>(v).unwrap(), memory);
    }
}
