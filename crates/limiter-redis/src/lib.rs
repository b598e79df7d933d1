//! A distributed priority limiter on Redis: every process that shares one Redis and one
//! limiter name never exceeds the global limit, and waiters are served in one global order —
//! priority first, then arrival — whichever process they live in.
//!
//! [`RedisLimiter`] implements [`ports::ConcurrencyLimiter`] and passes the same contract
//! suite as the in-memory limiter. While Redis is unreachable it serves from an injected
//! in-memory fallback and says so (`stats().degraded`).
//!
//! # Layout
//! Listed from the bottom up: each module uses only modules listed above it, so there is
//! no circle.
//! - `util`: jitter, millisecond arguments, a poison-proof lock, `spawn_now` (for `Drop`).
//! - [`error`]: [`RedisLimiterError`], construction errors (runtime errors are
//!   [`ports::LimiterError`]).
//! - [`config`]: [`RedisLimiterConfig`] and [`RedisTlsConfig`], their defaults and
//!   validation, URL redaction.
//! - `tls`: [`RedisTlsConfig`] → a rustls client config (roots, client certificate,
//!   skip-verify); reads and checks the TLS files.
//! - `connection`: config → fred clients (timeouts, reconnects, command attempts, TLS), and
//!   `BackendError`, a failed Redis call classified. The one place that knows how we
//!   connect.
//! - [`scripts`]: the Redis data model and the Lua scripts, one per transition.
//! - `reply`: each script's answer decoded into a type (the one place that knows what
//!   `return 3` means).
//! - `inner`: `Inner`, the state shared by the limiter, its permits and tasks; one typed
//!   call per script; tokens, waiters, counters.
//! - `failover`: the switch to the fallback and back (probe), connection errors, and giving
//!   tokens back in the background (abandoned tokens re-sent by the probe).
//! - `stats`: `LimiterStats` from Redis or from the fallback.
//! - `wakeup`: the pub/sub task that wakes local waiters when Redis grants their ticket.
//! - `permit`: the Redis permit handle: lease renewal, release, loss detection.
//! - `limiter`: [`RedisLimiter`]: `connect`, the acquire loop and its ticket, `stats`,
//!   `set_limit`.
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
//! the URL's host name, and no client certificate is sent; [`RedisTlsConfig`] (the
//! config's `tls` field) names a private CA, a client certificate and key for mutual TLS
//! (Redis `tls-auth-clients yes`), another name to verify, or, for a throwaway self-signed
//! setup only, `insecure_skip_verify`. TLS options with a plain `redis://` URL are a config
//! error.
//!
//! ```no_run
//! # async fn example() -> Result<(), limiter_redis::RedisLimiterError> {
//! use limiter_redis::{RedisLimiter, RedisLimiterConfig};
//!
//! let mut config = RedisLimiterConfig::new("rediss://:password@redis.internal:6380", "d-id");
//! config.tls.ca_file = Some("/etc/talkgate/redis-ca.pem".into());
//! config.tls.cert_file = Some("/etc/talkgate/redis-client.pem".into());
//! config.tls.key_file = Some("/etc/talkgate/redis-client-key.pem".into());
//! let limiter = RedisLimiter::connect_with_memory_fallback(config).await?;
//! # drop(limiter);
//! # Ok(())
//! # }
//! ```
//!
//! What can be known at start-up fails the start: a TLS file that cannot be read or holds no
//! PEM item, or a key that does not match its certificate, is a
//! [`RedisLimiterError::TlsFile`] naming the setting and the file; no system root certificate
//! and no `ca_file` is a [`RedisLimiterError::Tls`]. A handshake that fails (a certificate
//! from another CA, for another name, mutual TLS without a certificate) is a run-time
//! failure: the limiter serves from its fallback, `stats().degraded_reason` is
//! [`DegradedReason::Tls`](ports::DegradedReason::Tls), and fred keeps reconnecting.
//!
//! # Time and clocks
//! No client timestamp is ever written to Redis. Lease and ticket deadlines come from
//! `redis.call('TIME')` inside the scripts, and arrival order from a counter in Redis
//! (`HINCRBY`), so clock skew between hosts changes nothing. Local code only uses the
//! monotonic `tokio::time::Instant` to bound its own waits.
//!
//! # Failure modes and their bounds
//! - **A holder's process dies** (SIGKILL, OOM): its lease is not renewed and is reclaimed
//!   by the next script after its deadline: the slot is free within `lease_ttl` + one renew
//!   period (`lease_ttl / 3`) of the death.
//! - **A waiter's process dies**: its ticket is not refreshed and expires within
//!   `waiter_ttl`; if it was granted in the meantime, the unconfirmed grant expires after
//!   `grant_ttl` (default 1 s), so the slot is blocked for at most `grant_ttl`, plus one
//!   safety poll of the next waiter until it notices.
//! - **A live waiter stalls longer than `waiter_ttl`**: its ticket expires; its next check
//!   queues it again at the back of its priority (it loses its place, never a slot).
//! - **A holder stalls longer than its lease** (e.g. SIGSTOP): the slot is reclaimed and
//!   may be granted again; when the holder resumes, its renewal returns 0 and the permit
//!   reports [`is_lost`](ports::Permit::is_lost) (logged, counted in `leases_lost`).
//! - **Redis refuses, drops or hangs**: every call is bounded by `op_timeout` (fred's
//!   command timeout plus our own). The first failing call switches this process to the
//!   fallback, which grants up to `local_share` (default: the full limit) permits, so with
//!   N degraded processes at most N × share permits are alive. A probe every
//!   `probe_interval` switches back once a script runs again. Memory permits are released
//!   in memory; Redis permits granted before the outage keep renewing and are released in
//!   Redis (retried in the background until their lease would have expired anyway).
//! - **Redis hangs, then resumes** (SIGSTOP/SIGCONT, a long GC-like pause): commands that
//!   timed out on our side are still in the socket and run when Redis resumes, long after
//!   their callers gave up. A stale acquire must not leave a ticket or a slot nobody owns:
//!   one that runs after its cancel is refused (tombstone); a token whose cleanup gave up
//!   during the outage is kept and given back once more by the probe, after Redis answered
//!   it (so after every earlier command of this connection) and before switching back; and
//!   any grant nobody confirms frees its slot after `grant_ttl`. Measured: callers are served
//!   by Redis again ~160 ms after SIGCONT (7 s SIGSTOP, 200 ms op timeout, 6 s tickets).
//! - **The TLS handshake fails**: as a refused Redis, with the reason `tls` (see TLS above).
//! - **After switching back**, memory permits still alive and new Redis permits coexist
//!   until the former finish: at most `share` extra permits per process, for as long as the
//!   work started during the outage lasts.
//! - **Lost pub/sub messages** (reconnects): a reconnect wakes every local waiter; otherwise
//!   a lost message costs at most one safety poll.
//! - **Dropped futures and permits**: a dropped `acquire` cancels its ticket (giving back
//!   a grant that raced with the drop); a dropped permit releases its slot. Both are sent
//!   from `Drop` immediately, ordered before any later command of the same task.

pub mod config;
mod connection;
pub mod error;
mod failover;
mod inner;
mod limiter;
mod permit;
mod reply;
pub mod scripts;
mod stats;
mod tls;
mod util;
mod wakeup;

pub use config::{RedisLimiterConfig, RedisTlsConfig};
pub use error::RedisLimiterError;
pub use limiter::RedisLimiter;
