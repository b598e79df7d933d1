//! A distributed priority limiter on Redis: every process that shares one Redis and one
//! limiter name never exceeds the global limit, and waiters are served in one global order —
//! priority first, then weighted fair share between tenants (arrival order within a
//! tenant), with per-tenant caps — whichever process they live in.
//!
//! [`RedisLimiter`] implements [`ports::ConcurrencyLimiter`] and passes the same contract
//! suite as the in-memory limiter. While Redis is unreachable it serves from an injected
//! in-memory fallback and says so (`stats().degraded`).
//!
//! # Layout
//! Listed from the bottom up: each module uses only modules listed above it, so there is
//! no circle.
//! - (the `redis-connect` crate, shared with the Redis job store): how the limiter connects.
//!   The URL forms, TLS ([`RedisTlsConfig`]), URL redaction, building the fred clients
//!   (timeouts, reconnects, command attempts), `BackendError` (a failed Redis call
//!   classified), [`connect`] (a first connection whose failure is a typed [`ConnectError`])
//!   and the wrong-protocol diagnosis. This crate re-exports the parts its callers name.
//! - `util`: jitter, millisecond arguments, a poison-proof lock, `spawn_now` (for `Drop`).
//! - [`error`]: [`RedisLimiterError`], construction errors (runtime errors are
//!   [`ports::LimiterError`]).
//! - [`config`]: [`RedisLimiterConfig`], its defaults and validation; its
//!   [`connection`](RedisLimiterConfig::connection) is a [`RedisConnectionConfig`].
//! - [`scripts`]: the Redis data model and the Lua scripts, one per transition.
//! - `reply`: each script's answer decoded into a type (the one place that knows what
//!   `return 3` means).
//! - `inner`: `Inner`, the state shared by the limiter, its permits and tasks; one typed
//!   call per script; tokens, waiters, counters.
//! - `failover`: the switch to the fallback and back (probe, adopting fallback permits),
//!   connection errors, and giving tokens back in the background (abandoned tokens re-sent
//!   by the probe).
//! - `heartbeat`: this instance's record in Redis, and re-registering its permits when
//!   Redis lost them.
//! - `stats`: `LimiterStats` from Redis or from the fallback.
//! - `wakeup`: the pub/sub task that wakes local waiters when Redis grants their ticket.
//! - `permit`: the Redis permit handle (lease renewal, release, loss detection) and the
//!   fallback permit handle (tracked for adoption).
//! - `limiter`: [`RedisLimiter`]: `connect`, the acquire loop and its ticket, `stats`,
//!   `set_limit`, and [`RedisLimiter::records`].
//! - `records`: [`RedisRecords`], the fleet's [`ports::SharedRecords`] (the adaptive limit's
//!   and the breaker's state) on the limiter's connection and hash tag; one compare-and-swap
//!   script.
//! - `bin/limiter-holder.rs`: a tiny process used by the multi-process tests.
//!
//! # How it works
//! Every transition is one Lua script run with `EVALSHA` (reloaded after `NOSCRIPT`, e.g.
//! after a Redis restart); see [`scripts`] for the keys and each script. Holders have
//! *leases* and waiters have *tickets*, both deadlines in Redis server time; every script
//! first reclaims expired ones, then *promotes* the queue head into free slots, so the grant
//! happens inside Redis at the moment a slot frees, and a late arrival can never take a slot
//! freed for a waiter. Granted tokens are published; the waiting process wakes at once and
//! confirms its grant (which turns the short grant deadline, `grant_ttl`, into a full lease).
//! Waiters also re-check on a jittered safety poll (at most every `grant_ttl / 2`), which
//! refreshes their ticket. Cancel and release leave a short-lived *tombstone* for the token,
//! and an acquire for a tombstoned token creates nothing.
//!
//! # TLS
//! A `rediss://` (or `valkeys://`) URL connects over TLS, with rustls on aws-lc-rs. By
//! default the server's certificate is verified against the system's root certificates and
//! the URL's host name, and no client certificate is sent; [`RedisTlsConfig`] (the `tls`
//! field of the config's `connection`) names a private CA, a client certificate and key for
//! mutual TLS (Redis `tls-auth-clients yes`), another name to verify, or, for a throwaway
//! self-signed setup only, `insecure_skip_verify`. TLS options with a plain `redis://` URL
//! are a config error.
//!
//! ```no_run
//! # async fn example() -> Result<(), limiter_redis::RedisLimiterError> {
//! use limiter_redis::{RedisLimiter, RedisLimiterConfig};
//!
//! let mut config = RedisLimiterConfig::new("rediss://:password@redis.internal:6380", "d-id");
//! config.connection.tls.ca_file = Some("/etc/talkgate/redis-ca.pem".into());
//! config.connection.tls.cert_file = Some("/etc/talkgate/redis-client.pem".into());
//! config.connection.tls.key_file = Some("/etc/talkgate/redis-client-key.pem".into());
//! let limiter = RedisLimiter::connect_with_memory_fallback(config).await?;
//! # drop(limiter);
//! # Ok(())
//! # }
//! ```
//!
//! What can be known at start-up fails the start: a TLS file that cannot be read or holds no
//! PEM item, or a key that does not match its certificate, is a
//! [`RedisLimiterError::Connection`] with [`redis_connect::ConfigError::TlsFile`] naming the
//! setting and the file; no system root certificate and no `ca_file` is one with
//! [`redis_connect::ConfigError::Tls`]. A handshake that fails (a certificate
//! from another CA, for another name, mutual TLS without a certificate) is a run-time
//! failure: the limiter serves from its fallback, `stats().backend.degraded_reason` is
//! [`DegradedReason::Tls`](ports::DegradedReason::Tls), and fred keeps reconnecting.
//!
//! # Time and clocks
//! No client timestamp is ever written to Redis. Lease and ticket deadlines come from
//! `redis.call('TIME')` inside the scripts, and arrival order from the virtual finishes
//! the enqueues compute in Redis, so clock skew between hosts changes nothing. Local code only uses the
//! monotonic `tokio::time::Instant` to bound its own waits.
//!
//! # Instances and their peers
//! Each limiter is an *instance* with a record in Redis, renewed by a heartbeat every
//! `instance_ttl / 4` (default 2 s / 4) and removed when the limiter is dropped. The records
//! tell every instance how many peers share the limit (`stats().backend.failover.instances`) and
//! tell Redis whose holders and waiters are alive (see [`scripts`]).
//!
//! # Failure modes and their bounds
//! - **A holder's process dies** (SIGKILL, OOM): its connections close with it, so once its
//!   heartbeat is 3/8 of `instance_ttl` late (0.75 s; 0.25–0.75 s after the death) the next
//!   script declares it dead and reclaims all its holders, whatever their leases say; at the
//!   latest (a server without sharded pub/sub) its record expires `instance_ttl` (2 s) after
//!   its last heartbeat. Measured by
//!   `processes::killed_holder_frees_its_slots_within_the_instance_ttl_not_the_lease` and
//!   `…a_dead_holders_slots_come_back_once_its_heartbeat_is_late…`. A process that is alive
//!   but cut off from Redis (both connections) for that long is declared dead too: its
//!   holders no longer count, and its next heartbeat registers them again.
//! - **A waiter's process dies**: its connections close with it, so Redis sees at once
//!   that nobody listens on its presence channel (a sharded subscription every instance
//!   holds) and skips its waiters; they are dropped once the instance is declared dead.
//!   Measured by `processes::a_slot_freed_right_after_a_waiters_death_goes_to_a_live_waiter`
//!   (2–3 ms, against a grant TTL of 1 s without the check). On a server without sharded
//!   pub/sub (before Redis 7) the heartbeat alone decides: waiters are skipped once it is
//!   older than 3/8 of `instance_ttl` (0.75 s); a slot freed before that may go to one of
//!   them, and that unconfirmed grant frees after `grant_ttl` (1 s).
//! - **A holder that is alive but slow** (a long exchange, a busy runtime) keeps its slot as
//!   long as its heartbeat runs: leases (`lease_ttl`, default 15 s, renewed every third) are
//!   the protection when the whole process stalls (SIGSTOP) or loses Redis alone; then
//!   the slot is reclaimed and may be granted again, and when the holder resumes its renewal
//!   *re-establishes* the lease (so it counts again) and the permit reports
//!   [`is_lost`](ports::Permit::is_lost) (logged, counted in `leases_lost`).
//! - **A live waiter stalls longer than `waiter_ttl`**: its ticket expires; its next check
//!   queues it again at the back of its priority (it loses its place, never a slot).
//! - **Redis refuses, drops or hangs**: every call is bounded by `op_timeout` (fred's
//!   command timeout plus our own). The first failing call switches this process to the
//!   fallback, whose grants follow the [`FailoverPolicy`]: `share` (default) grants
//!   `max(1, floor(limit / N))` with N the live instances last seen (or `local_share`), so
//!   N degraded instances admit at most `max(limit, N)`; `closed` refuses
//!   ([`ports::LimiterError::Unavailable`]); `full` grants the whole limit (N × limit in
//!   all). A probe every `probe_interval` switches back once a script runs again.
//! - **The switch back**: the probe first registers every permit this process still holds
//!   as a holder in Redis — fallback permits are *adopted* (they count against the global
//!   limit until they end, the heartbeat keeps their lease) and Redis permits whose leases
//!   Redis lost are re-established. Redis grants nothing new for a *warm-up*
//!   ([`RedisLimiterConfig::warmup`], 1.6 s by default) after it lost its data (a new
//!   epoch, seen by a caller that knew the old one) or after no script reached it for half
//!   an instance TTL (a stall, an outage), so every instance registers before anyone is
//!   admitted, and a stall declares no live instance dead. Memory permits are released in
//!   memory, and in Redis if adopted.
//! - **Redis hangs, then resumes** (SIGSTOP/SIGCONT, a long GC-like pause): commands that
//!   timed out on our side are still in the socket and run when Redis resumes, long after
//!   their callers gave up. A stale acquire must not leave a ticket or a slot nobody owns:
//!   one that runs after its cancel is refused (tombstone); a token whose cleanup gave up
//!   during the outage is kept and given back once more by the probe, after Redis answered
//!   it (so after every earlier command of this connection) and before switching back; and
//!   any grant nobody confirms frees its slot after `grant_ttl`.
//! - **The TLS handshake fails**: as a refused Redis, with the reason `tls` (see TLS above).
//! - **Lost pub/sub messages** (reconnects): a reconnect wakes every local waiter; otherwise
//!   a lost message costs at most one safety poll.
//! - **Dropped futures and permits**: a dropped `acquire` cancels its ticket (giving back
//!   a grant that raced with the drop); a dropped permit releases its slot. Both are sent
//!   from `Drop` immediately, ordered before any later command of the same task.

pub mod config;
pub mod error;
mod failover;
mod heartbeat;
mod inner;
mod limiter;
mod permit;
mod records;
mod reply;
pub mod scripts;
mod stats;
mod util;
mod wakeup;

pub use config::{
    FailoverPolicy, RECONNECT_MAX, RedisConnectionConfig, RedisLimiterConfig, RedisTlsConfig,
};
pub use error::RedisLimiterError;
pub use limiter::RedisLimiter;
pub use records::RedisRecords;
pub use redis_connect::{ConnectError, client, connect, subscriber_client};
