//! The Redis data model and the Lua scripts: one script per transition, each atomic.
//!
//! # Keys (one hash tag per limiter, so one Cluster slot)
//! | key | type | member → score / field → value |
//! |---|---|---|
//! | `{talkgate:<name>}:holders` | ZSET | token → lease deadline (ms, Redis `TIME`) |
//! | `{talkgate:<name>}:queue` | ZSET | token → `(3 - priority index) · 2^40 + seq` |
//! | `{talkgate:<name>}:waiters` | ZSET | token → ticket deadline (ms, Redis `TIME`) |
//! | `{talkgate:<name>}:enqueued` | ZSET | token → time it was queued (ms, Redis `TIME`) |
//! | `{talkgate:<name>}:meta` | HASH | `limit`, `seq`, `reclaimed`, `max_wait_ms` |
//! | `{talkgate:<name>}:cancelled` | ZSET | token → tombstone deadline (ms, Redis `TIME`) |
//!
//! The wake-up channel is `{talkgate:<name>}:wake`; a message is the space-separated list of
//! tokens just granted.
//!
//! A token is in at most one of `holders` and `queue`; `queue`, `waiters` and `enqueued`
//! always hold the same members. `seq` comes from `HINCRBY`, so arrival order is the order
//! in which Redis ran the enqueues, whatever the processes' clocks say. Every deadline is
//! computed from `redis.call('TIME')` inside the script: no client clock is ever written.
//!
//! `cancelled` holds a *tombstone* for every token that was cancelled or released, for
//! `ARGV[4]` ms (the caller passes `max(lease_ttl, waiter_ttl)`). An acquire for a
//! tombstoned token is refused, so an acquire that was stuck in a socket while Redis hung
//! (or that a client library replayed after a reconnect) and runs *after* its cancel cannot
//! re-create a ticket or a slot that nobody owns. Tokens are never reused, so a tombstone
//! never refuses a live caller.
//!
//! # The shared prelude
//! Every script gets `ARGV[1]` the default limit, `ARGV[2]` the wake-up channel and
//! `ARGV[3]` the grant TTL in ms; its own arguments start at `ARGV[4]`. It starts by reading
//! `TIME` and the limit (storing the caller's default when Redis has none, e.g. after a
//! restart) and defines two steps:
//! - `reclaim()`: drops holders whose lease deadline has passed and tickets whose deadline
//!   has passed (counted in `meta.reclaimed`);
//! - `promote()`: while `active < limit`, moves the queue head into `holders` (the grant is
//!   decided here, atomically, so a freed slot goes straight to the head waiter and no late
//!   arrival can take it) and publishes the granted tokens. Until its owner confirms it, a
//!   grant only lives for the *grant TTL* (`ARGV[3]` of the prelude, `grant_ttl`, capped by
//!   the ticket's own deadline): a grant whose owner is gone (its process died, or its
//!   acquire was a stale command run after the caller gave up) frees the slot within
//!   `grant_ttl`, not within a whole `waiter_ttl`. The reclaim step also drops expired
//!   tombstones.
//!
//! # Scripts
//! Their integer answers are decoded into types in one place, the crate's private `reply`
//! module (a unit test there checks every number `ACQUIRE` returns): change a `return`
//! here and its decoder there together.
//! - [`ACQUIRE`]: reclaim, promote; a tombstoned token is refused (returns 3); then a token
//!   already in `holders` is confirmed (full
//!   lease, returns 1); a queued token refreshes its ticket (returns 0); a new token takes a
//!   free slot (only possible with an empty queue, returns 1), or, in `try` mode, returns 2
//!   without queueing, or is queued with the next `seq` (returns 0).
//! - [`RELEASE`]: removes the token from `holders`, tombstones it, reclaims, promotes.
//!   Returns 1 if it held a slot (0 makes a second release, or a release after the lease was
//!   reclaimed, a no-op).
//! - [`CANCEL`]: removes the token's ticket, and its grant if it was promoted meanwhile;
//!   tombstones it, reclaims, promotes. Returns 2 (a grant was given back), 1 (a ticket
//!   removed) or 0.
//! - [`RENEW`]: extends a live lease (returns 1); a lease already past its deadline or gone
//!   is not revived (returns 0: the permit is lost). Then reclaims and promotes.
//! - [`STATS`]: reclaims, promotes, and returns
//!   `{limit, active, queued low, normal, high, critical, reclaimed, max_wait_ms, oldest_ms}`.
//! - [`SET_LIMIT`]: stores the new limit, reclaims, promotes (raising it admits at once).

use fred::types::Key;
use fred::types::scripts::Script;

/// `2^40`: the width of one priority band in the queue score. Each band holds 2^40
/// sequence numbers, and `3 · 2^40 + seq` stays exact in a Lua double.
pub const BAND: u64 = 1 << 40;

const PRELUDE: &str = r#"
local H, Q, W, E, M, C = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function num(x) return string.format('%.0f', x) end
local limit = tonumber(redis.call('HGET', M, 'limit'))
if not limit then
  limit = tonumber(ARGV[1])
  redis.call('HSET', M, 'limit', limit)
end
local grant_ttl = tonumber(ARGV[3])
local function reclaim()
  redis.call('ZREMRANGEBYSCORE', C, '-inf', num(now))
  local n = redis.call('ZREMRANGEBYSCORE', H, '-inf', num(now))
  local gone = redis.call('ZRANGEBYSCORE', W, '-inf', num(now))
  for i = 1, #gone do
    redis.call('ZREM', Q, gone[i])
    redis.call('ZREM', E, gone[i])
  end
  if #gone > 0 then redis.call('ZREMRANGEBYSCORE', W, '-inf', num(now)) end
  n = n + #gone
  if n > 0 then redis.call('HINCRBY', M, 'reclaimed', n) end
end
local function promote()
  local free = limit - redis.call('ZCARD', H)
  if free <= 0 then return end
  local heads = redis.call('ZRANGE', Q, 0, free - 1)
  if #heads == 0 then return end
  local maxw = tonumber(redis.call('HGET', M, 'max_wait_ms')) or 0
  for i = 1, #heads do
    local tok = heads[i]
    local deadline = tonumber(redis.call('ZSCORE', W, tok)) or (now + grant_ttl)
    if deadline > now + grant_ttl then deadline = now + grant_ttl end
    local since = tonumber(redis.call('ZSCORE', E, tok)) or now
    if now - since > maxw then maxw = now - since end
    redis.call('ZREM', Q, tok)
    redis.call('ZREM', W, tok)
    redis.call('ZREM', E, tok)
    redis.call('ZADD', H, num(deadline), tok)
  end
  redis.call('HSET', M, 'max_wait_ms', num(maxw))
  redis.call('PUBLISH', ARGV[2], table.concat(heads, ' '))
end
"#;

/// ARGV 4 token, 5 priority index (0 low … 3 critical), 6 lease ms, 7 waiter ttl ms,
/// 8 mode (`wait` or `try`). Returns 1 granted, 0 queued, 2 refused (`try` only),
/// 3 the token was cancelled or released already (a stale command: nothing is created).
pub const ACQUIRE: &str = r#"
reclaim()
promote()
local tok, lease = ARGV[4], tonumber(ARGV[6])
if redis.call('ZSCORE', C, tok) then return 3 end
if redis.call('ZSCORE', H, tok) then
  redis.call('ZADD', H, num(now + lease), tok)
  return 1
end
if redis.call('ZSCORE', Q, tok) then
  redis.call('ZADD', W, num(now + tonumber(ARGV[7])), tok)
  return 0
end
if redis.call('ZCARD', H) < limit then
  redis.call('ZADD', H, num(now + lease), tok)
  return 1
end
if ARGV[8] == 'try' then return 2 end
local seq = redis.call('HINCRBY', M, 'seq', 1)
redis.call('ZADD', Q, num((3 - tonumber(ARGV[5])) * 1099511627776 + seq), tok)
redis.call('ZADD', W, num(now + tonumber(ARGV[7])), tok)
redis.call('ZADD', E, num(now), tok)
return 0
"#;

/// ARGV 4 token, 5 tombstone ms. Returns 1 if the token held a slot, else 0.
pub const RELEASE: &str = r#"
local n = redis.call('ZREM', H, ARGV[4])
redis.call('ZADD', C, num(now + tonumber(ARGV[5])), ARGV[4])
reclaim()
promote()
return n
"#;

/// ARGV 4 token, 5 tombstone ms. Returns 2 if a grant was given back, 1 if a ticket was
/// removed, else 0.
pub const CANCEL: &str = r#"
local tok = ARGV[4]
redis.call('ZADD', C, num(now + tonumber(ARGV[5])), tok)
local q = redis.call('ZREM', Q, tok)
redis.call('ZREM', W, tok)
redis.call('ZREM', E, tok)
local h = redis.call('ZREM', H, tok)
reclaim()
promote()
if h > 0 then return 2 end
return q
"#;

/// ARGV 4 token, 5 lease ms. Returns 1 if the lease was extended, 0 if it was lost.
pub const RENEW: &str = r#"
local tok = ARGV[4]
local s = tonumber(redis.call('ZSCORE', H, tok))
local ok = 0
if s and s > now then
  redis.call('ZADD', H, num(now + tonumber(ARGV[5])), tok)
  ok = 1
end
reclaim()
promote()
return ok
"#;

/// No extra ARGV. Returns `{limit, active, low, normal, high, critical, reclaimed,
/// max_wait_ms, oldest_ms}`.
pub const STATS: &str = r#"
reclaim()
promote()
local band = 1099511627776
local out = {limit, redis.call('ZCARD', H)}
for p = 0, 3 do
  local lo = (3 - p) * band
  out[#out + 1] = redis.call('ZCOUNT', Q, num(lo), '(' .. num(lo + band))
end
out[#out + 1] = tonumber(redis.call('HGET', M, 'reclaimed')) or 0
out[#out + 1] = tonumber(redis.call('HGET', M, 'max_wait_ms')) or 0
local oldest = redis.call('ZRANGE', E, 0, 0, 'WITHSCORES')
if #oldest == 2 then out[#out + 1] = now - tonumber(oldest[2]) else out[#out + 1] = 0 end
return out
"#;

/// ARGV 4 the new limit (≥ 1). Returns 1.
pub const SET_LIMIT: &str = r#"
limit = tonumber(ARGV[4])
redis.call('HSET', M, 'limit', limit)
reclaim()
promote()
return 1
"#;

/// The keys and channel of one limiter, and its scripts with their SHA-1s computed once.
#[derive(Debug, Clone)]
pub struct Scripts {
    /// `holders, queue, waiters, enqueued, meta, cancelled`, in the order the scripts read
    /// them.
    pub keys: Vec<Key>,
    /// The wake-up channel.
    pub channel: String,
    /// [`ACQUIRE`].
    pub acquire: Script,
    /// [`RELEASE`].
    pub release: Script,
    /// [`CANCEL`].
    pub cancel: Script,
    /// [`RENEW`].
    pub renew: Script,
    /// [`STATS`].
    pub stats: Script,
    /// [`SET_LIMIT`].
    pub set_limit: Script,
}

impl Scripts {
    /// The keys, channel and scripts of the limiter called `name`.
    pub fn new(name: &str) -> Self {
        let tag = format!("{{talkgate:{name}}}");
        let keys = [
            "holders",
            "queue",
            "waiters",
            "enqueued",
            "meta",
            "cancelled",
        ]
        .iter()
        .map(|k| Key::from(format!("{tag}:{k}")))
        .collect();
        let script = |body: &str| Script::from_lua(format!("{PRELUDE}{body}"));
        Scripts {
            keys,
            channel: format!("{tag}:wake"),
            acquire: script(ACQUIRE),
            release: script(RELEASE),
            cancel: script(CANCEL),
            renew: script(RENEW),
            stats: script(STATS),
            set_limit: script(SET_LIMIT),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_keys_share_one_hash_tag() {
        let s = Scripts::new("d-id");
        for key in &s.keys {
            let k = key.as_str().unwrap();
            assert!(k.starts_with("{talkgate:d-id}:"), "{k}");
        }
        assert_eq!(s.channel, "{talkgate:d-id}:wake");
        let slots: Vec<u16> = s
            .keys
            .iter()
            .map(|k| fred::util::redis_keyslot(k.as_bytes()))
            .collect();
        assert!(slots.iter().all(|&slot| slot == slots[0]), "{slots:?}");
    }

    #[test]
    fn priority_bands_keep_scores_exact_in_a_double() {
        let max = 3 * BAND + BAND - 1;
        assert!(max < (1u64 << 53));
        assert_eq!(BAND, 1_099_511_627_776);
    }
}
