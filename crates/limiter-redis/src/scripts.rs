//! The Redis data model and the Lua scripts: one script per transition, each atomic.
//!
//! # Keys (one hash tag per limiter, so one Cluster slot)
//! | key | type | member → score / field → value |
//! |---|---|---|
//! | `{talkgate:<name>}:holders` | ZSET | token → lease deadline (ms, Redis `TIME`) |
//! | `{talkgate:<name>}:queue` | ZSET | token → `(3 - priority index) · 2^40 + finish` (its virtual finish, below) |
//! | `{talkgate:<name>}:waiters` | ZSET | token → ticket deadline (ms, Redis `TIME`) |
//! | `{talkgate:<name>}:enqueued` | ZSET | token → time it was queued (ms, Redis `TIME`) |
//! | `{talkgate:<name>}:meta` | HASH | `limit`, `seq` (only versions before fair share write it), `reclaimed`, `max_wait_ms`, `epoch`, `last_ms`, `warm_until`, `warmups`, `instances_reclaimed`, `p:<instance id>` (it listens on its presence channel) |
//! | `{talkgate:<name>}:cancelled` | ZSET | token → tombstone deadline (ms, Redis `TIME`) |
//! | `{talkgate:<name>}:instances` | ZSET | instance id → liveness deadline (ms, Redis `TIME`) |
//! | `{talkgate:<name>}:dead` | ZSET | instance id declared dead → when to forget it (ms) |
//! | `{talkgate:<name>}:fair` | HASH | `v:<priority index>` → that priority's virtual time `V`; `f:<priority index>:<tenant>` → the tenant's last finish there |
//!
//! The wake-up channel is `{talkgate:<name>}:wake`; a message is the space-separated list of
//! tokens just granted.
//!
//! A token is in at most one of `holders` and `queue`; `queue`, `waiters` and `enqueued`
//! always hold the same members. A finish is computed by the enqueue itself, so arrival
//! order is the order in which Redis ran the enqueues, whatever the processes' clocks say.
//! Every deadline is computed from `redis.call('TIME')` inside the script: no client clock
//! is ever written.
//!
//! `cancelled` holds a *tombstone* for every token that was cancelled or released, for
//! `max(lease_ttl, waiter_ttl)` (the caller's `tombstone_ttl`). An acquire for a
//! tombstoned token is refused, so an acquire that was stuck in a socket while Redis hung
//! (or that a client library replayed after a reconnect) and runs *after* its cancel cannot
//! re-create a ticket or a slot that nobody owns. Tokens are never reused, so a tombstone
//! never refuses a live caller.
//!
//! # Tokens
//! A token is `<instance id>-<n>` for the public tenant with the default share (every
//! token of a version before tenants), else `<instance id>-<n>.<cap>.<tenant>`, `cap` 0
//! for none. A script reads whose a token is (`owner`), its tenant and its cap
//! (`share_of`) from the token alone, so Redis keeps no record per token: every path that
//! adds or removes a holder (a grant, the fast path, release, cancel, the reclaim of an
//! expired lease or of a dead instance, [`RENEW`] and [`BEAT`] re-establishing one)
//! changes each tenant's count of held slots by changing `holders`, with nothing else to
//! keep right.
//!
//! # Fair share between tenants
//! Within a priority, waiters are ordered by their *virtual finish*, written into their
//! queue score at the enqueue: `finish = max(V_p, F_p,t) + cost`, where `cost` is the
//! share's `round(27720 / weight)` (sent as `ARGV[7]` only when the weight is not 1; the
//! default is in the script text), `F_p,t` is the finish of tenant `t`'s previous waiter
//! at priority `p` and `V_p` the largest finish granted from the queue at `p` (`fair`).
//! So a tenant's own waiters keep their arrival order (each finish is above the last), a
//! tenant of weight 3 gets three grants for one of weight 1 while both wait, one that
//! arrives behind a busy tenant starts at `V_p`, not behind that tenant's backlog, and the
//! priority bands still decide first. Ties go by token (the ZSET's order). With one tenant
//! of the default share this is exactly arrival order: each finish is the previous + 27720.
//! `V_p` only moves forward (a grant from behind it, such as a capped tenant's waiter
//! passed over earlier, leaves it), so a last finish below it says nothing and is dropped;
//! the reclaim step (when due, at most every 20 ms) also drops a priority's `V_p` and last
//! finishes once its queue is empty (`prune_fair`). So `fair` holds, per priority, `V_p`
//! and a last finish for each tenant that queued there since its queue was last empty and
//! is not yet passed by `V_p` (in practice: the tenants waiting there).
//! Finishes restart from 0 with every emptied queue; one that would reach `2^40` is held
//! at `2^40 - 1` (then ties, ordered by token, until that priority's queue empties once):
//! 39.7 million grants of weight 1 at one priority without its queue ever emptying.
//!
//! A tenant holding its `cap` slots (counted from the tokens in `holders`) is *passed
//! over* by the promote step: its waiters keep their places and scores, and the next
//! waiters are served (work-conserving: a lower priority may take a slot a capped one
//! cannot). An acquire of a capped tenant at its cap queues (or, in `try` mode, is
//! refused) even with a slot free; the fast path counts a capped token's tenant's holders the
//! same way before it takes a slot.
//!
//! Rolling upgrade: entries queued by an older version are scored `band + seq`. A new
//! enqueue at a priority with no `V_p` starts from the last entry's score, so it queues
//! behind them; an older instance's later enqueues (by `seq`) may land ahead of newer
//! waiters until the fleet runs one version. No slot is ever lost or double-granted by
//! this, only the order within a priority is approximate meanwhile. An older version's
//! tokens are the public tenant's.
//!
//! # Instances
//! Every token starts with its instance id, and every instance keeps a record in `instances`
//! alive with [`BEAT`] every `instance_ttl / 4`. Its record says whose a holder or a waiter
//! is, and whether that process still lives. An instance is declared *dead* (moved to
//! `dead`) when its record expired, or when it is both *stale* and *absent* (below) — a
//! process whose connections closed and whose heartbeat stopped, i.e. one that died: then
//! its holders are reclaimed at once, whatever their leases say, and its waiters are
//! dropped when they reach the queue head. A waiter is skipped (kept, not granted) while
//! its instance is absent or stale:
//! - absent: the instance told its heartbeat that it holds a sharded subscription to its
//!   presence channel `<wake channel>:<instance id>` (meta field `p:<id>`), and
//!   `PUBSUB SHARDNUMSUB` counts no subscriber there — its connection closed, which is what
//!   a process death looks like to Redis, at once;
//! - stale: it has not beaten for 3/8 of `instance_ttl` (a process that hangs, or lost
//!   both its connections).
//!
//! So a slot freed right after a death goes to a live waiter. A token whose instance has no
//! record at all (an older version of this crate) is treated as alive, and so is one whose
//! presence is unknown (no `p:` field, or a server without sharded pub/sub).
//!
//! # What a call sends
//! A limiter's settings are constant for its life, so [`Scripts::new`] writes them into the
//! text of its scripts: the names of the keys and the wake-up channel (every byte escaped,
//! so any limiter name is safe), and the grant TTL, instance TTL, warm-up, lease, waiter
//! TTL and tombstone TTL in ms ([`ScriptSettings`]). Processes with other settings load
//! other texts (other SHA-1s) that work on the same keys. A call still declares its 9 keys
//! (Redis Cluster routes it, and handles a slot being migrated, by its declared keys; only
//! `holders` is read from `KEYS`), and sends `ARGV[1]` the default limit and `ARGV[2]` the
//! data epoch the caller last saw (`''` if none); a script's own arguments start at
//! `ARGV[3]`. Each argument costs on every call (encoding, parsing, one Lua string), so
//! none is sent that the text can carry (see `docs/BENCHMARKS.md`, issue 12).
//!
//! # The shared prelude
//! It starts by reading `TIME` and the meta hash, and notes whether the call is *quiet*:
//! the limiter is set up, the reclaim step ran less than 20 ms ago, and nothing stalled.
//! On a quiet limiter the two hot scripts may take a *fast path* right there, for the
//! uncontended case only ([`ACQUIRE`]: the first call of a token without a cap, no queue,
//! a free slot; [`RELEASE`]: no queue), skipping the rest of the prelude; what they do there is exactly
//! what the full script would do in that state (its reclaim step is not due and its
//! promote step finds no queue). The rest of the prelude:
//! - when Redis has no limit (a new limiter, or Redis lost its data) it stores the caller's
//!   default and a new `epoch`; if the caller knew an older epoch, Redis *lost its data*
//!   and starts a *warm-up*;
//! - when no script ran for half an instance TTL while instances were registered
//!   (`last_ms`: Redis stalled, or nobody could reach it), nobody's silence was their own
//!   fault: every instance record is renewed and a warm-up starts.
//!
//! During a warm-up (`warm_until`) nothing new is granted (new tokens queue, the `try`
//! mode is refused): the instances get time to reconnect and register what they still
//! hold ([`BEAT`] with their tokens: fallback permits granted during the outage, leases
//! Redis lost), so the switch back never admits more than the limit.
//!
//! It then defines two steps:
//! - `reclaim()`: drops holders whose lease deadline has passed and tickets whose deadline
//!   has passed (counted in `meta.reclaimed`), declares instances dead whose record expired
//!   or that are stale and absent, and drops their holders. It runs at most once per 20 ms (`last_ms`) in the hot scripts
//!   (acquire, release, cancel, renew), which saves five commands per call under load —
//!   deadlines are seconds, so 20 ms late changes nothing — and always in `STATS`, `BEAT`,
//!   `SET_LIMIT`, `LEAVE` and in an acquire that finds no free slot (so an expired lease
//!   never makes a caller queue for a slot that is really free);
//! - `promote()`: while `active < limit` and no warm-up runs, moves the queue head into
//!   `holders` (the grant is decided here, atomically, so a freed slot goes straight to the
//!   head waiter and no late arrival can take it), raises each granted priority's `V_p` to
//!   the finish granted, and publishes the granted tokens; heads of dead instances are
//!   dropped, heads of stale ones skipped (at most 64 of both per call; presence is looked
//!   up once per instance per call), heads of a tenant at its cap passed over (at most 512
//!   per call: past that a free slot waits for the next call, the one price of keeping the
//!   scan bounded). Until its owner confirms it, a grant only lives for the *grant TTL* (`grant_ttl`,
//!   capped by the ticket's own deadline): a grant whose owner is gone (its process died,
//!   or its acquire was a stale command run after the caller gave up) frees the slot within
//!   `grant_ttl`, not within a whole `waiter_ttl`. The reclaim step also drops expired
//!   tombstones and forgotten dead instances.
//!
//! # Scripts
//! Their integer answers are decoded into types in one place, the crate's private `reply`
//! module (a unit test there checks every number `ACQUIRE` returns): change a `return`
//! here and its decoder there together.
//! - [`ACQUIRE`]: reclaim, promote; a tombstoned token is refused (returns 3); then a token
//!   already in `holders` is confirmed (full
//!   lease, returns 1); a queued token refreshes its ticket (returns 0); a new token takes a
//!   free slot unless its tenant is at its cap (a slot is only free after promote with an
//!   empty queue, or one whose heads are all skipped or passed over; returns 1), or, in
//!   `try` mode, returns 2 without queueing, or is queued with its virtual finish (returns
//!   0).
//! - [`RELEASE`]: removes the token from `holders`, tombstones it, reclaims, promotes.
//!   Returns 1 if it held a slot (0 makes a second release, or a release after the lease was
//!   reclaimed, a no-op).
//! - [`CANCEL`]: removes the token's ticket, and its grant if it was promoted meanwhile;
//!   tombstones it, reclaims, promotes. Returns 2 (a grant was given back), 1 (a ticket
//!   removed) or 0.
//! - [`RENEW`]: for each token it is given (one call renews every lease of a process),
//!   extends a live lease (1); a lease already past its deadline or gone is re-established
//!   (2: the holder still works, so it must count; the permit reports itself lost, since the
//!   slot may have been granted twice meanwhile); a released or cancelled token is not
//!   revived (0). Then reclaims and promotes.
//! - [`STATS`]: reclaims, promotes, and returns `{limit, active, queued low, normal, high,
//!   critical, reclaimed, max_wait_ms, oldest_ms, live instances, epoch, instances
//!   reclaimed}`, then `tenant, held, queued` for every tenant with a token in `holders` or
//!   `queue` (the public one included), counted from the tokens (O(active + queued)).
//! - [`SET_LIMIT`]: stores the new limit, reclaims, promotes (raising it admits at once).
//! - [`BEAT`]: renews the caller's instance record, records whether it listens on its
//!   presence channel, and holds the tokens it passes (skipping tombstoned ones), then
//!   reclaims and promotes; returns whether the record was missing, the live instances, the
//!   limit, the epoch, how many tokens were re-added and the presence channel's subscribers
//!   (0 tells a listening instance to subscribe again).
//! - [`LEAVE`]: removes the caller's record (a clean shutdown).

use std::time::Duration;

use domain::Share;
use fred::types::Key;
use fred::types::scripts::Script;

use crate::config::RedisLimiterConfig;
use crate::util::duration_ms;

/// `2^40`: the width of one priority band in the queue score. Each band holds finishes
/// below 2^40, and `3 · 2^40 + finish` stays exact in a Lua double.
pub const BAND: u64 = 1 << 40;

/// The first half of the prelude: the time, the meta hash, and whether the call is *quiet*
/// (the limiter is set up, its reclaim step ran less than 20 ms ago, and nothing stalled),
/// which is when the hot scripts may take their fast path before the rest of the prelude.
const HEAD: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function num(x) return string.format('%.0f', x) end
local meta = redis.call('HMGET', M, 'limit', 'last_ms', 'warm_until', 'epoch')
local limit = tonumber(meta[1])
local warm_until = tonumber(meta[3]) or 0
local epoch = meta[4]
local last = tonumber(meta[2])
local due = (not last) or now - last >= 20
local quiet = limit and epoch and not due and now - last < inst_ttl / 2
"#;

/// The second half of the prelude: setting the limiter up, the stall check, and the
/// `reclaim` and `promote` steps.
const PRELUDE: &str = r#"
if not limit then
  limit = tonumber(ARGV[1])
  epoch = num(now)
  redis.call('HSET', M, 'limit', limit, 'epoch', epoch, 'last_ms', num(now))
  if ARGV[2] ~= '' then
    warm_until = now + warmup
    redis.call('HSET', M, 'warm_until', num(warm_until), 'warmups', 1)
  end
else
  if last and now - last >= inst_ttl / 2 and redis.call('ZCARD', I) > 0 then
    warm_until = now + warmup
    redis.call('HSET', M, 'warm_until', num(warm_until))
    redis.call('HINCRBY', M, 'warmups', 1)
    local ids = redis.call('ZRANGE', I, 0, -1)
    for i = 1, #ids do redis.call('ZADD', I, num(now + inst_ttl), ids[i]) end
  end
  if due then redis.call('HSET', M, 'last_ms', num(now)) end
end
if not epoch then
  epoch = num(now)
  redis.call('HSET', M, 'epoch', epoch)
end
local BAND = 1099511627776
local function owner(tok) return string.match(tok, '^(.-)%-') end
-- Whether instance `id` listens: an instance that said it subscribes to its presence
-- channel (`<wake channel>:<id>`, sharded pub/sub, same slot) and has no subscriber there
-- lost its connection to Redis, most likely because its process died. Unknown (the field
-- is absent, or the server has no sharded pub/sub) counts as present.
local heard = {}
local function present(id)
  local p = heard[id]
  if p == nil then
    p = true
    if redis.call('HEXISTS', M, 'p:' .. id) == 1 then
      local r = redis.pcall('PUBSUB', 'SHARDNUMSUB', CH .. ':' .. id)
      if type(r) == 'table' and r[2] ~= nil and tonumber(r[2]) == 0 then p = false end
    end
    heard[id] = p
  end
  return p
end
local reclaimed = false
local active = nil
local function count_active()
  if not active then active = redis.call('ZCARD', H) end
  return active
end
-- A token's tenant and cap: `<instance>-<n>.<cap>.<tenant>` (cap 0: none), or a plain
-- `<instance>-<n>`, the public tenant's with the default share.
local function share_of(tok)
  local c, t = string.match(tok, '^[^-]*%-%d+%.(%d+)%.(.+)$')
  if not t then return 'public', 0 end
  return t, tonumber(c)
end
-- Slots held per tenant, counted from the holders' tokens once per call when a cap is
-- looked at (so no path that adds or removes a holder keeps a count), then kept by promote.
local held_by = nil
local function held_of(t)
  if not held_by then
    held_by = {}
    local hs = redis.call('ZRANGE', H, 0, -1)
    for i = 1, #hs do
      local x = share_of(hs[i])
      held_by[x] = (held_by[x] or 0) + 1
    end
  end
  return held_by[t] or 0
end
local function at_cap(tok)
  local t, cap = share_of(tok)
  return cap > 0 and held_of(t) >= cap
end
-- Drops what the fair order no longer needs: a priority's virtual time and last finishes
-- once its queue is empty, and a last finish the virtual time has passed (`max(V, F)` is
-- `V` then, and `V` never goes back).
local function prune_fair()
  if redis.call('ZCARD', Q) == 0 then
    redis.call('DEL', S)
    return
  end
  local all = redis.call('HGETALL', S)
  if #all == 0 then return end
  local v, empty, drop = {}, {}, {}
  for p = 0, 3 do
    local lo = (3 - p) * BAND
    empty[p] = redis.call('ZCOUNT', Q, num(lo), '(' .. num(lo + BAND)) == 0
  end
  for i = 1, #all, 2 do
    local p = string.match(all[i], '^v:(%d)$')
    if p then v[tonumber(p)] = tonumber(all[i + 1]) end
  end
  for i = 1, #all, 2 do
    local kind, p = string.match(all[i], '^([vf]):(%d)')
    p = tonumber(p)
    if p and (empty[p] or (kind == 'f' and v[p] and tonumber(all[i + 1]) <= v[p])) then
      drop[#drop + 1] = all[i]
    end
  end
  for i = 1, #drop, 500 do
    redis.call('HDEL', S, unpack(drop, i, math.min(i + 499, #drop)))
  end
end
local function reclaim(force)
  if reclaimed or not (force or due) then return end
  reclaimed = true
  redis.call('ZREMRANGEBYSCORE', C, '-inf', num(now))
  redis.call('ZREMRANGEBYSCORE', D, '-inf', num(now))
  local n = redis.call('ZREMRANGEBYSCORE', H, '-inf', num(now))
  -- Dead: the record expired, or the instance is stale (no beat for 3/8 of its TTL) and
  -- absent (its presence subscription is gone): its process died with its connections.
  local dead = {}
  local stale = redis.call('ZRANGEBYSCORE', I, '-inf', num(now + inst_ttl * 5 / 8), 'WITHSCORES')
  for i = 1, #stale, 2 do
    if tonumber(stale[i + 1]) <= now or not present(stale[i]) then
      dead[#dead + 1] = stale[i]
      redis.call('ZREM', I, stale[i])
    end
  end
  if #dead > 0 then
    local gone = {}
    for i = 1, #dead do
      gone[dead[i]] = true
      redis.call('HDEL', M, 'p:' .. dead[i])
      redis.call('ZADD', D, num(now + math.max(10 * inst_ttl, 60000)), dead[i])
    end
    local held = redis.call('ZRANGE', H, 0, -1)
    for i = 1, #held do
      local id = owner(held[i])
      if id and gone[id] then
        redis.call('ZREM', H, held[i])
        n = n + 1
      end
    end
    redis.call('HINCRBY', M, 'instances_reclaimed', #dead)
  end
  local gone = redis.call('ZRANGEBYSCORE', W, '-inf', num(now))
  for i = 1, #gone do
    redis.call('ZREM', Q, gone[i])
    redis.call('ZREM', E, gone[i])
  end
  if #gone > 0 then redis.call('ZREMRANGEBYSCORE', W, '-inf', num(now)) end
  n = n + #gone
  if n > 0 then redis.call('HINCRBY', M, 'reclaimed', n) end
  active = nil
  held_by = nil
  if due then prune_fair() end
end
local function unqueue(tok)
  redis.call('ZREM', Q, tok)
  redis.call('ZREM', W, tok)
  redis.call('ZREM', E, tok)
end
local function promote()
  if now < warm_until or redis.call('ZCARD', Q) == 0 then return end
  local free = limit - count_active()
  if free <= 0 then return end
  local granted, dropped, rank, skipped, passed = {}, 0, 0, 0, 0
  local maxw = tonumber(redis.call('HGET', M, 'max_wait_ms')) or 0
  local fresh_after = now + inst_ttl * 5 / 8
  local finished = {}
  while free > 0 and skipped < 64 and passed < 512 do
    local heads = redis.call('ZRANGE', Q, rank, rank + math.max(free, 8) - 1, 'WITHSCORES')
    if #heads == 0 then break end
    for i = 1, #heads, 2 do
      if free <= 0 then break end
      local tok = heads[i]
      local id = owner(tok)
      if at_cap(tok) then
        -- Its tenant holds its cap: passed over, keeping its place (tested first: once the
        -- holders are counted it is a table look-up, cheaper than the instance checks).
        rank = rank + 1
        passed = passed + 1
      elseif id and redis.call('ZSCORE', D, id) then
        unqueue(tok)
        dropped = dropped + 1
        skipped = skipped + 1
      else
        local beat = id and tonumber(redis.call('ZSCORE', I, id))
        if beat and (beat < fresh_after or not present(id)) then
          rank = rank + 1
          skipped = skipped + 1
        else
          local deadline = tonumber(redis.call('ZSCORE', W, tok)) or (now + grant_ttl)
          if deadline > now + grant_ttl then deadline = now + grant_ttl end
          local since = tonumber(redis.call('ZSCORE', E, tok)) or now
          if now - since > maxw then maxw = now - since end
          unqueue(tok)
          redis.call('ZADD', H, num(deadline), tok)
          granted[#granted + 1] = tok
          free = free - 1
          if held_by then
            local t = share_of(tok)
            held_by[t] = (held_by[t] or 0) + 1
          end
          local score = tonumber(heads[i + 1])
          local band = math.floor(score / BAND)
          local p, f = 3 - band, score - band * BAND
          if not finished[p] or f > finished[p] then finished[p] = f end
        end
      end
    end
  end
  if dropped > 0 then redis.call('HINCRBY', M, 'reclaimed', dropped) end
  active = active + #granted
  if #granted == 0 then return end
  for p, f in pairs(finished) do
    local v = tonumber(redis.call('HGET', S, 'v:' .. p))
    if not v or f > v then redis.call('HSET', S, 'v:' .. p, num(f)) end
  end
  redis.call('HSET', M, 'max_wait_ms', num(maxw))
  redis.call('PUBLISH', CH, table.concat(granted, ' '))
end
"#;

/// The fast path of [`ACQUIRE`], run between the two halves of the prelude: the first call
/// of an acquire on a quiet limiter outside a warm-up that finds no queue and a free slot
/// (for a capped tenant: also fewer of its tokens in `holders` than its cap) takes it (or
/// is refused for a tombstone) without the rest of the prelude. Anything else falls through
/// to the full script, which decides exactly the same for this case: its reclaim step is not
/// due, its promote step finds no queue, and it counts a tenant's holders the same way.
const ACQUIRE_FAST: &str = r#"
if quiet and ARGV[6] == '1' and now >= warm_until and redis.call('ZCARD', Q) == 0 then
  local room = redis.call('ZCARD', H) < limit
  local cap, tenant = string.match(ARGV[3], '^[^-]*%-%d+%.(%d+)%.(.+)$')
  cap = tonumber(cap or '0')
  if room and cap > 0 then
    -- A capped tenant: its holders counted from the tokens, as the full script counts them.
    local held, hs = 0, redis.call('ZRANGE', H, 0, -1)
    for i = 1, #hs do
      local _, t = string.match(hs[i], '^[^-]*%-%d+%.(%d+)%.(.+)$')
      if t == tenant then held = held + 1 end
    end
    room = held < cap
  end
  if room then
    if redis.call('ZSCORE', C, ARGV[3]) then return 3 end
    redis.call('ZADD', H, num(now + lease_ms), ARGV[3])
    return 1
  end
end
"#;

/// The fast path of [`RELEASE`]: on a quiet limiter with no queue (so nobody to promote),
/// free the slot and tombstone the token; else the full script.
const RELEASE_FAST: &str = r#"
if quiet and redis.call('ZCARD', Q) == 0 then
  local n = redis.call('ZREM', H, ARGV[3])
  redis.call('ZADD', C, num(now + tomb_ms), ARGV[3])
  return n
end
"#;

/// ARGV 3 token (with its tenant and cap, see the module docs), 4 priority index (0 low …
/// 3 critical), 5 mode (`wait` or `try`), 6 `1` for the first call of an acquire (its token is new,
/// so the look-ups among holders and tickets are skipped on the way to a free slot; a copy
/// of the call replayed after a reconnect that finds its token held still confirms it
/// before queueing anything), 7 the share's cost when not the default one. Returns 1 granted,
/// 0 queued, 2 refused (`try` only), 3 the token was cancelled or released already (a stale
/// command: nothing is created).
pub const ACQUIRE: &str = r#"
reclaim()
promote()
local tok, lease = ARGV[3], lease_ms
if redis.call('ZSCORE', C, tok) then return 3 end
if ARGV[6] ~= '1' then
  if redis.call('ZSCORE', H, tok) then
    redis.call('ZADD', H, num(now + lease), tok)
    return 1
  end
  if redis.call('ZSCORE', Q, tok) then
    redis.call('ZADD', W, num(now + waiter_ttl), tok)
    return 0
  end
end
if now >= warm_until and not reclaimed and count_active() >= limit then
  reclaim(true)
  promote()
end
if now >= warm_until and count_active() < limit and not at_cap(tok) then
  redis.call('ZADD', H, num(now + lease), tok)
  return 1
end
if ARGV[6] == '1' and redis.call('ZSCORE', H, tok) then return 1 end
if ARGV[5] == 'try' then return 2 end
local p = tonumber(ARGV[4])
local lo = (3 - p) * BAND
local vk, fk = 'v:' .. p, 'f:' .. p .. ':' .. share_of(tok)
local fair = redis.call('HMGET', S, vk, fk)
local v = tonumber(fair[1])
if not v then
  -- No virtual time at this priority: its queue is empty, or holds only entries of an
  -- older version (scored by `seq`), which keep their places ahead of this one.
  v = 0
  local last = redis.call('ZREVRANGEBYSCORE', Q, '(' .. num(lo + BAND), num(lo), 'WITHSCORES', 'LIMIT', 0, 1)
  if #last == 2 then v = tonumber(last[2]) - lo end
end
local finish = math.max(v, tonumber(fair[2]) or 0) + (tonumber(ARGV[7]) or unit_cost)
if finish > BAND - 1 then finish = BAND - 1 end
redis.call('HSET', S, vk, num(v), fk, num(finish))
redis.call('ZADD', Q, num(lo + finish), tok)
redis.call('ZADD', W, num(now + waiter_ttl), tok)
redis.call('ZADD', E, num(now), tok)
return 0
"#;

/// ARGV 3 token. Returns 1 if the token held a slot, else 0.
pub const RELEASE: &str = r#"
local n = redis.call('ZREM', H, ARGV[3])
redis.call('ZADD', C, num(now + tomb_ms), ARGV[3])
reclaim()
promote()
return n
"#;

/// ARGV 3 token. Returns 2 if a grant was given back, 1 if a ticket was
/// removed, else 0.
pub const CANCEL: &str = r#"
local tok = ARGV[3]
redis.call('ZADD', C, num(now + tomb_ms), tok)
local q = redis.call('ZREM', Q, tok)
redis.call('ZREM', W, tok)
redis.call('ZREM', E, tok)
local h = redis.call('ZREM', H, tok)
reclaim()
promote()
if h > 0 then return 2 end
return q
"#;

/// ARGV 3… tokens. Returns one code per token: 1 the lease was extended, 2 it
/// was gone and is re-established (Redis lost its data, or reclaimed it while its holder
/// was alive), 0 the token was released or cancelled already (nothing is re-created).
pub const RENEW: &str = r#"
local lease = lease_ms
local out = {}
for i = 3, #ARGV do
  local tok = ARGV[i]
  local ok = 1
  if redis.call('ZSCORE', C, tok) then
    ok = 0
  else
    local s = tonumber(redis.call('ZSCORE', H, tok))
    if not s or s <= now then ok = 2 end
    redis.call('ZADD', H, num(now + lease), tok)
  end
  out[#out + 1] = ok
end
reclaim()
promote()
return out
"#;

/// No extra ARGV. Returns `{limit, active, low, normal, high, critical, reclaimed,
/// max_wait_ms, oldest_ms, live instances, epoch, instances reclaimed}`, then a `tenant,
/// held, queued` triple per tenant that holds or waits.
pub const STATS: &str = r#"
reclaim(true)
promote()
local out = {limit, redis.call('ZCARD', H)}
for p = 0, 3 do
  local lo = (3 - p) * BAND
  out[#out + 1] = redis.call('ZCOUNT', Q, num(lo), '(' .. num(lo + BAND))
end
out[#out + 1] = tonumber(redis.call('HGET', M, 'reclaimed')) or 0
out[#out + 1] = tonumber(redis.call('HGET', M, 'max_wait_ms')) or 0
local oldest = redis.call('ZRANGE', E, 0, 0, 'WITHSCORES')
if #oldest == 2 then out[#out + 1] = now - tonumber(oldest[2]) else out[#out + 1] = 0 end
out[#out + 1] = redis.call('ZCOUNT', I, '(' .. num(now), '+inf')
out[#out + 1] = tonumber(epoch)
out[#out + 1] = tonumber(redis.call('HGET', M, 'instances_reclaimed')) or 0
local per, names = {}, {}
local function count(list, slot)
  for i = 1, #list do
    local t = share_of(list[i])
    local e = per[t]
    if not e then
      e = {0, 0}
      per[t] = e
      names[#names + 1] = t
    end
    e[slot] = e[slot] + 1
  end
end
count(redis.call('ZRANGE', H, 0, -1), 1)
count(redis.call('ZRANGE', Q, 0, -1), 2)
for i = 1, #names do
  local t = names[i]
  out[#out + 1] = t
  out[#out + 1] = per[t][1]
  out[#out + 1] = per[t][2]
end
return out
"#;

/// ARGV 3 the new limit (≥ 1). Returns 1.
pub const SET_LIMIT: &str = r#"
limit = tonumber(ARGV[3])
redis.call('HSET', M, 'limit', limit)
reclaim(true)
promote()
return 1
"#;

/// The instance heartbeat. ARGV 3 instance id, 4 `1` if the instance subscribed to its
/// presence channel (else `0`), 5… tokens this instance holds that must
/// count against the limit (re-established if Redis lost them; a tombstoned token is
/// skipped). Marks the instance live for `inst_ttl` (and no longer dead).
/// Returns `{1 if the instance was not registered, live instances, limit, epoch,
/// tokens re-established, subscribers of its presence channel}`.
pub const BEAT: &str = r#"
local me, lease = ARGV[3], lease_ms
local added = redis.call('ZADD', I, num(now + inst_ttl), me)
redis.call('ZREM', D, me)
if ARGV[4] == '1' then
  redis.call('HSET', M, 'p:' .. me, 1)
else
  redis.call('HDEL', M, 'p:' .. me)
end
local readded = 0
for i = 5, #ARGV do
  local tok = ARGV[i]
  if not redis.call('ZSCORE', C, tok) then
    if redis.call('ZADD', H, num(now + lease), tok) == 1 then readded = readded + 1 end
  end
end
reclaim(true)
promote()
local subs = 0
local r = redis.pcall('PUBSUB', 'SHARDNUMSUB', CH .. ':' .. me)
if type(r) == 'table' and r[2] ~= nil then subs = tonumber(r[2]) end
return {added, redis.call('ZCOUNT', I, '(' .. num(now), '+inf'), limit, tonumber(epoch), readded, subs}
"#;

/// An instance leaving for good (a clean shutdown). ARGV 3 instance id. Its record is
/// removed, so its peers stop counting it at once. Returns 1.
pub const LEAVE: &str = r#"
redis.call('ZREM', I, ARGV[3])
redis.call('HDEL', M, 'p:' .. ARGV[3])
reclaim(true)
promote()
return 1
"#;

/// The settings a limiter's scripts are built with (see [`Scripts::new`]). They are constant
/// for the limiter's life, so they are written into the script text instead of being sent
/// with every call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScriptSettings {
    /// How long a grant waits for its owner to confirm it.
    pub grant_ttl: Duration,
    /// How long an instance record lives without a heartbeat.
    pub instance_ttl: Duration,
    /// How long nothing is granted after Redis lost its data or stalled.
    pub warmup: Duration,
    /// A holder's lease.
    pub lease_ttl: Duration,
    /// A queued ticket's lifetime without a refresh.
    pub waiter_ttl: Duration,
    /// How long a released or cancelled token is remembered.
    pub tombstone_ttl: Duration,
}

impl ScriptSettings {
    /// The settings of the limiter `config` describes.
    pub fn of(config: &RedisLimiterConfig) -> Self {
        ScriptSettings {
            grant_ttl: config.grant_ttl,
            instance_ttl: config.instance_ttl,
            warmup: config.warmup(),
            lease_ttl: config.lease_ttl,
            waiter_ttl: config.waiter_ttl,
            tombstone_ttl: config.tombstone_ttl(),
        }
    }
}

/// The keys and channel of one limiter, and its scripts with their SHA-1s computed once.
#[derive(Debug, Clone)]
pub struct Scripts {
    /// `holders, queue, waiters, enqueued, meta, cancelled, instances, dead, fair`, in the
    /// order the scripts read them.
    pub keys: Vec<Key>,
    /// The keys a call declares: all of them, although the scripts name them in their text
    /// too. Redis Cluster routes a call and handles a slot migration by its declared keys:
    /// with every key declared, a call that finds its keys split between two nodes gets
    /// `TRYAGAIN` instead of running on half the state.
    pub call_keys: Vec<Key>,
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
    /// [`BEAT`].
    pub beat: Script,
    /// [`LEAVE`].
    pub leave: Script,
}

/// `text` as a Lua string literal, every byte a decimal escape (so any limiter name is safe).
fn lua_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 4 + 2);
    out.push('"');
    for byte in text.bytes() {
        out.push_str(&format!("\\{byte}"));
    }
    out.push('"');
    out
}

impl Scripts {
    /// The keys, channel and scripts of the limiter called `name`, with `settings` written
    /// into the scripts.
    pub fn new(name: &str, settings: ScriptSettings) -> Self {
        let tag = format!("{{talkgate:{name}}}");
        let names: Vec<String> = [
            "holders",
            "queue",
            "waiters",
            "enqueued",
            "meta",
            "cancelled",
            "instances",
            "dead",
            "fair",
        ]
        .iter()
        .map(|k| format!("{tag}:{k}"))
        .collect();
        let channel = format!("{tag}:wake");
        let ms = |d: Duration| duration_ms(d);
        let constants = format!(
            "local H = KEYS[1]\n\
             local Q, W, E, M, C, I, D, S = {}\n\
             local CH = {}\n\
             local grant_ttl, inst_ttl, warmup = {}, {}, {}\n\
             local lease_ms, waiter_ttl, tomb_ms = {}, {}, {}\n\
             local unit_cost = {}\n",
            names[1..]
                .iter()
                .map(|n| lua_string(n))
                .collect::<Vec<_>>()
                .join(", "),
            lua_string(&channel),
            ms(settings.grant_ttl),
            ms(settings.instance_ttl),
            ms(settings.warmup),
            ms(settings.lease_ttl),
            ms(settings.waiter_ttl),
            ms(settings.tombstone_ttl),
            Share::default().cost(),
        );
        let script = |body: &str| Script::from_lua(format!("{constants}{HEAD}{PRELUDE}{body}"));
        let fast = |fast: &str, body: &str| {
            Script::from_lua(format!("{constants}{HEAD}{fast}{PRELUDE}{body}"))
        };
        let keys: Vec<Key> = names.into_iter().map(Key::from).collect();
        Scripts {
            call_keys: keys.clone(),
            keys,
            channel,
            acquire: fast(ACQUIRE_FAST, ACQUIRE),
            release: fast(RELEASE_FAST, RELEASE),
            cancel: script(CANCEL),
            renew: script(RENEW),
            stats: script(STATS),
            set_limit: script(SET_LIMIT),
            beat: script(BEAT),
            leave: script(LEAVE),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ScriptSettings {
        ScriptSettings::of(&RedisLimiterConfig::new("redis://127.0.0.1:6379", "d-id"))
    }

    #[test]
    fn all_keys_share_one_hash_tag() {
        let s = Scripts::new("d-id", settings());
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
    fn a_call_declares_every_key_it_touches() {
        // Redis Cluster decides routing and slot-migration redirects (`ASK`, `TRYAGAIN`) by
        // the declared keys only: declaring fewer could run a script on half a migrated state.
        let s = Scripts::new("d-id", settings());
        assert_eq!(s.call_keys, s.keys);
        assert_eq!(s.keys.len(), 9);
    }

    #[test]
    fn priority_bands_keep_scores_exact_in_a_double() {
        let max = 3 * BAND + BAND - 1;
        assert!(max < (1u64 << 53));
        assert_eq!(BAND, 1_099_511_627_776);
    }
}
