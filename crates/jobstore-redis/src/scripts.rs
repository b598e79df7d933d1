//! The keys of one store and its Lua scripts (one per [`ports::JobStore`] method).
//!
//! Every script is given the same [`KEYS`] list, in this order, so each one declares every
//! key it could touch; no script builds a key name. The layout is described in the crate
//! docs; the argument lists are described on each script.

use fred::types::Key;
use fred::types::scripts::Script;

/// The key suffixes, in `KEYS` order (`KEYS[1]` is `job`). Statuses are in
/// [`ports::JobStatus::ALL`] order, priorities in `Priority::index` order (0 = low).
pub(crate) const KEYS: [&str; 32] = [
    "job",
    "ver",
    "lease",
    "next",
    "order",
    "key",
    "keyof",
    "seq",
    "next_seq",
    "due",
    "wait",
    "finished",
    "status:queued",
    "status:creating",
    "status:processing",
    "status:done",
    "status:failed",
    "status:cancelled",
    "queued:0",
    "queued:1",
    "queued:2",
    "queued:3",
    "probe",
    "epoch",
    "lost_at",
    "callbacks",
    "due:0",
    "due:1",
    "due:2",
    "due:3",
    "rank",
    "fair",
];

/// Shared by every script: key names and the helpers.
///
/// - `read(id)`: `{json, version, lease, seq, key field, rank}` (`''` for a missing lease,
///   key or rank), or `false` if there is no such job;
/// - `fair_v(p)`: the fair order's `V` of priority index `p` (set, on first use, to the last
///   seq handed out, so that jobs queued by a build before the fair order — ranked by their
///   seq — stay ahead of new ones);
/// - `timer_of(id)`: `max(next_run_ms, lease until)` of a non-terminal job, as a string;
/// - `index(id, seq)`: writes the body and every index of a job from `ARGV[4..13]` (see
///   [`INDEX_ARGS`]);
/// - `forget(id)`: removes a job from every key.
const PRELUDE: &str = r#"
local JOB, VER, LEASE, NEXT, ORDER, KEY, KEYOF, SEQ, NEXT_SEQ, DUE, WAIT, FINISHED =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10],
  KEYS[11], KEYS[12]
local STATUS0, QUEUED0 = 13, 19
local EPOCH, LOST_AT, CALLBACKS = KEYS[24], KEYS[25], KEYS[26]
local DUE0, RANK, FAIR = 27, KEYS[31], KEYS[32]

local function fair_v(p)
  local field = 'v:' .. p
  local v = redis.call('HGET', FAIR, field)
  if not v then
    v = redis.call('GET', NEXT_SEQ) or '0'
    redis.call('HSET', FAIR, field, v)
  end
  return tonumber(v)
end

local function unqueue(id)
  local n = redis.call('ZREM', DUE, id)
  for p = 0, 3 do n = n + redis.call('ZREM', KEYS[DUE0 + p], id) end
  return n
end

-- The store's epoch: set by the first call that finds none (a new store, or one whose data
-- Redis lost). A caller that knew another epoch sees that the data was lost, and records
-- when in LOST_AT, for every instance (also one started later) to see. Returns {epoch,
-- lost_at or ''}.
local function epoch_check(known, now)
  local epoch = redis.call('GET', EPOCH)
  if not epoch then
    epoch = now
    redis.call('SET', EPOCH, epoch)
  end
  if known ~= '' and known ~= epoch and not redis.call('GET', LOST_AT) then
    redis.call('SET', LOST_AT, now)
  end
  return {epoch, redis.call('GET', LOST_AT) or ''}
end
local BAND = 1099511627776

local function read(id)
  local json = redis.call('HGET', JOB, id)
  if not json then return false end
  return {
    json,
    redis.call('HGET', VER, id) or '',
    redis.call('HGET', LEASE, id) or '',
    redis.call('ZSCORE', SEQ, id) or '',
    redis.call('HGET', KEYOF, id) or '',
    redis.call('HGET', RANK, id) or ''
  }
end

local function lease_until(lease)
  if not lease then return nil end
  return string.match(lease, '^(%d+) ')
end

local function timer_of(id)
  local next_run = redis.call('HGET', NEXT, id) or '0'
  local untl = lease_until(redis.call('HGET', LEASE, id))
  if untl and tonumber(untl) > tonumber(next_run) then return untl end
  return next_run
end

local function index(id, seq)
  local json, status, terminal, prio = ARGV[4], tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
  local created, next_run, lease, finished = ARGV[8], ARGV[9], ARGV[10], ARGV[11]
  local callback = ARGV[12]
  redis.call('HSET', JOB, id, json)
  -- A pending callback keeps the job out of FINISHED (so out of the purge) until settled.
  redis.call('ZREM', CALLBACKS, id)
  if callback ~= '' then redis.call('ZADD', CALLBACKS, callback, id) end
  for i = 0, 5 do redis.call('ZREM', KEYS[STATUS0 + i], id) end
  redis.call('ZADD', KEYS[STATUS0 + status], seq, id)
  for i = 0, 3 do redis.call('ZREM', KEYS[QUEUED0 + i], id) end
  if status == 0 then redis.call('ZADD', KEYS[QUEUED0 + prio], created, id) end
  if lease == '' then
    redis.call('HDEL', LEASE, id)
  else
    redis.call('HSET', LEASE, id, lease)
  end
  unqueue(id)
  if terminal == '1' then
    redis.call('ZREM', WAIT, id)
    redis.call('HDEL', NEXT, id)
    redis.call('HDEL', ORDER, id)
    redis.call('HDEL', RANK, id)
    if finished == '' or callback ~= '' then
      redis.call('ZREM', FINISHED, id)
    else
      redis.call('ZADD', FINISHED, finished, id)
    end
  else
    redis.call('ZREM', FINISHED, id)
    redis.call('HSET', ORDER, id, string.format('%.0f', (3 - prio) * BAND + tonumber(seq)))
    redis.call('HSET', NEXT, id, next_run)
    redis.call('ZADD', WAIT, timer_of(id), id)
  end
end

local function forget(id)
  local kf = redis.call('HGET', KEYOF, id)
  if kf and redis.call('HGET', KEY, kf) == id then redis.call('HDEL', KEY, kf) end
  for _, k in ipairs({JOB, VER, LEASE, NEXT, ORDER, KEYOF, RANK}) do redis.call('HDEL', k, id) end
  for _, k in ipairs({SEQ, WAIT, FINISHED, CALLBACKS}) do redis.call('ZREM', k, id) end
  unqueue(id)
  for i = 0, 5 do redis.call('ZREM', KEYS[STATUS0 + i], id) end
  for i = 0, 3 do redis.call('ZREM', KEYS[QUEUED0 + i], id) end
end
"#;

/// What `index()` reads, `ARGV[4..12]`: the job JSON (without `seq`, `version`, `lease`,
/// `idempotency`), the status index, `1` if terminal (else `0`), the priority index,
/// `created_ms`, `next_run_ms`, the lease (`<until_ms> <owner>` or `''`), `finished_ms`
/// (or `''`), and when its pending callback is due (`ports::jobs::callback_due_at`, or `''`).
pub(crate) const INDEX_ARGS: usize = 9;

/// `ARGV`: id, key field (`''` if none), max queued, then [`INDEX_ARGS`], then the tenant and
/// the job's rank cost (`ports::jobs::rank_cost`), the epoch the caller knows (`''` if none)
/// and now. Returns `{'existing', job}`, `{'duplicate', job}` (the id exists),
/// `{'full', queued}` or `{'created', seq, epoch, lost_at, rank}`.
const SUBMIT: &str = r#"
local id, kf = ARGV[1], ARGV[2]
local epoch = epoch_check(ARGV[#ARGV - 1], ARGV[#ARGV])
if kf ~= '' then
  local existing = redis.call('HGET', KEY, kf)
  if existing then
    local job = read(existing)
    if job then return {'existing', job} end
    return {'dangling', existing}
  end
end
local same = read(id)
if same then return {'duplicate', same} end
local queued = redis.call('ZCARD', KEYS[STATUS0])
if queued >= tonumber(ARGV[3]) then return {'full', queued} end
local prio = ARGV[7]
local v = fair_v(prio)
local last_field = prio .. ':' .. ARGV[#ARGV - 3]
local last = tonumber(redis.call('HGET', FAIR, last_field) or '0')
if last > v then v = last end
local rank = string.format('%.0f', v + tonumber(ARGV[#ARGV - 2]))
redis.call('HSET', FAIR, last_field, rank)
redis.call('HSET', RANK, id, rank)
local seq = redis.call('INCR', NEXT_SEQ)
redis.call('HSET', VER, id, 1)
redis.call('ZADD', SEQ, seq, id)
if kf ~= '' then
  redis.call('HSET', KEY, kf, id)
  redis.call('HSET', KEYOF, id, kf)
end
index(id, seq)
return {'created', seq, epoch[1], epoch[2], rank}
"#;

/// `ARGV`: id. Returns the job or nil.
const GET: &str = r#"
return read(ARGV[1])
"#;

/// `ARGV`: key field. Returns the job or nil.
const GET_BY_KEY: &str = r#"
local id = redis.call('HGET', KEY, ARGV[1])
if not id then return false end
return read(id)
"#;

/// `ARGV`: now, owner, lease until (`now + lease`). Moves every job whose timer has come
/// from `wait` to its priority's `due:<p>` (scored by its rank; a job queued by a build before
/// the fair order has none and is scored by its seq), then claims the first head of
/// `due:3` … `due:0` and moves that priority's `V` up to its rank. A head whose timer is
/// still ahead of `now` (moved by a caller whose clock runs ahead) goes back to `wait`, and
/// one that ended meanwhile (ended by an earlier build, which does not know `due:<p>`) is
/// dropped; at most 64 such heads per call. Jobs that an earlier build moved into the old
/// single `due` go back to `wait` first. Returns `{'claimed', job}` or nil.
const CLAIM: &str = r#"
local now = tonumber(ARGV[1])
while true do
  local old = redis.call('ZRANGE', DUE, 0, 255)
  for _, id in ipairs(old) do
    redis.call('ZREM', DUE, id)
    redis.call('ZADD', WAIT, timer_of(id), id)
  end
  if #old < 256 then break end
end
while true do
  local ready = redis.call('ZRANGEBYSCORE', WAIT, '-inf', ARGV[1], 'LIMIT', 0, 256)
  for _, id in ipairs(ready) do
    local order = tonumber(redis.call('HGET', ORDER, id) or '')
    if order then
      local p = 3 - math.floor(order / BAND)
      local rank = redis.call('HGET', RANK, id) or string.format('%.0f', order % BAND)
      redis.call('ZADD', KEYS[DUE0 + p], rank, id)
    end
    redis.call('ZREM', WAIT, id)
  end
  if #ready < 256 then break end
end
for _ = 1, 64 do
  local head, p
  for q = 3, 0, -1 do
    head = redis.call('ZRANGE', KEYS[DUE0 + q], 0, 0, 'WITHSCORES')
    if head[1] then p = q break end
  end
  if not p then return false end
  local id, rank = head[1], tonumber(head[2])
  local timer = timer_of(id)
  if redis.call('HEXISTS', ORDER, id) == 0 then
    redis.call('ZREM', KEYS[DUE0 + p], id)
  elseif tonumber(timer) > now then
    redis.call('ZREM', KEYS[DUE0 + p], id)
    redis.call('ZADD', WAIT, timer, id)
  else
    redis.call('HINCRBY', VER, id, 1)
    redis.call('HSET', LEASE, id, ARGV[3] .. ' ' .. ARGV[2])
    redis.call('ZREM', KEYS[DUE0 + p], id)
    redis.call('ZADD', WAIT, timer_of(id), id)
    if rank > fair_v(p) then
      redis.call('HSET', FAIR, 'v:' .. p, string.format('%.0f', rank))
    end
    return {'claimed', read(id)}
  end
end
return false
"#;

/// `ARGV`: now, owner, lease until (`now + lease`). Claims the pending callback due first
/// (at most `now`): the job's lease is the callback worker's, and the callback is due again
/// when it runs out. Returns `{'claimed', job}` or nil.
const CLAIM_CALLBACK: &str = r#"
local head = redis.call('ZRANGEBYSCORE', CALLBACKS, '-inf', ARGV[1], 'LIMIT', 0, 1)[1]
if not head then return false end
redis.call('HINCRBY', VER, head, 1)
redis.call('HSET', LEASE, head, ARGV[3] .. ' ' .. ARGV[2])
redis.call('ZADD', CALLBACKS, ARGV[3], head)
return {'claimed', read(head)}
"#;

/// No `ARGV`. When the next pending callback is due, or `''` when none is pending.
const NEXT_CALLBACK_DUE: &str = r#"
local head = redis.call('ZRANGE', CALLBACKS, 0, 0, 'WITHSCORES')
return head[2] or ''
"#;

/// `ARGV`: the epoch the caller knows (`''` if none), now. When the next job becomes
/// claimable: `0` when `due` holds a job (a claim sorts it out), else the lowest timer in
/// `wait`, or `''` when no job is active; then the epoch and `lost_at` (see
/// `epoch_check`).
const NEXT_DUE: &str = r#"
local epoch = epoch_check(ARGV[1], ARGV[2])
local due = ''
local queued = redis.call('ZCARD', DUE)
for p = 0, 3 do queued = queued + redis.call('ZCARD', KEYS[DUE0 + p]) end
if queued > 0 then
  due = '0'
else
  local head = redis.call('ZRANGE', WAIT, 0, 0, 'WITHSCORES')
  if head[2] then due = head[2] end
end
return {due, epoch[1], epoch[2]}
"#;

/// `ARGV`: a token. Writes it to `probe` (expiring after a minute): a write that Redis
/// refuses (a replica, `MISCONF` after a failed snapshot, out of memory) fails the check.
const PROBE: &str = r#"
redis.call('SET', KEYS[23], ARGV[1], 'PX', 60000)
return 1
"#;

/// `ARGV`: id, owner, now, new lease until. Returns 1 if renewed, 0 if it is not `owner`'s
/// live lease.
const RENEW: &str = r#"
local id = ARGV[1]
local lease = redis.call('HGET', LEASE, id)
if not lease then return 0 end
local untl, owner = string.match(lease, '^(%d+) (.*)$')
if owner ~= ARGV[2] or tonumber(untl) <= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', LEASE, id, ARGV[4] .. ' ' .. owner)
local waiting = redis.call('ZSCORE', WAIT, id)
local due = unqueue(id)
if waiting or due > 0 then redis.call('ZADD', WAIT, timer_of(id), id) end
return 1
"#;

/// `ARGV`: id, the version read, `''`, then [`INDEX_ARGS`]. Returns `{'missing'}`,
/// `{'conflict'}` or `{'updated', new version, seq, key field}`.
const UPDATE: &str = r#"
local id = ARGV[1]
local ver = redis.call('HGET', VER, id)
if not ver then return {'missing'} end
if ver ~= ARGV[2] then return {'conflict'} end
local seq = redis.call('ZSCORE', SEQ, id)
if not seq then return {'dangling', id} end
local new_ver = redis.call('HINCRBY', VER, id, 1)
index(id, seq)
return {'updated', new_ver, seq, redis.call('HGET', KEYOF, id) or ''}
"#;

/// `ARGV`: status index (`''` for all), the upper bound (`+inf` or `(<seq>`), how many.
/// Returns the jobs, newest first.
const LIST: &str = r#"
local set = SEQ
if ARGV[1] ~= '' then set = KEYS[STATUS0 + tonumber(ARGV[1])] end
local ids = redis.call('ZREVRANGEBYSCORE', set, ARGV[2], '-inf', 'LIMIT', 0, ARGV[3])
local out = {}
for _, id in ipairs(ids) do
  local job = read(id)
  if job then out[#out + 1] = job end
end
return out
"#;

/// `ARGV`: finished before (exclusive), batch size. Deletes up to a batch of terminal jobs
/// that finished before the bound, and their keys; returns how many.
const PURGE: &str = r#"
local ids = redis.call('ZRANGEBYSCORE', FINISHED, '-inf', '(' .. ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(ids) do forget(id) end
-- Tenants whose last rank is not ahead of V are as good as absent.
local fair = redis.call('HGETALL', FAIR)
for i = 1, #fair, 2 do
  local p, tenant = string.match(fair[i], '^(%d):(.+)$')
  if p and tonumber(fair[i + 1]) <= fair_v(p) then redis.call('HDEL', FAIR, fair[i]) end
end
return #ids
"#;

/// No `ARGV`. Returns the six status counts, then the oldest queued `created_ms` of each
/// priority (`''` for none), then the pending callbacks.
const COUNTS: &str = r#"
local out = {}
for i = 0, 5 do out[#out + 1] = redis.call('ZCARD', KEYS[STATUS0 + i]) end
for p = 0, 3 do
  local head = redis.call('ZRANGE', KEYS[QUEUED0 + p], 0, 0, 'WITHSCORES')
  out[#out + 1] = head[2] or ''
end
out[#out + 1] = redis.call('ZCARD', CALLBACKS)
return out
"#;

/// The keys and scripts of one store.
#[derive(Debug, Clone)]
pub(crate) struct Scripts {
    /// [`KEYS`] under the store's hash tag.
    pub(crate) keys: Vec<Key>,
    pub(crate) submit: Script,
    pub(crate) get: Script,
    pub(crate) get_by_key: Script,
    pub(crate) claim: Script,
    pub(crate) renew: Script,
    pub(crate) update: Script,
    pub(crate) list: Script,
    pub(crate) purge: Script,
    pub(crate) counts: Script,
    pub(crate) next_due: Script,
    pub(crate) claim_callback: Script,
    pub(crate) next_callback_due: Script,
    pub(crate) probe: Script,
}

impl Scripts {
    /// The keys and scripts of the store whose hash tag is `tag`.
    pub(crate) fn new(tag: &str) -> Scripts {
        let script = |body: &str| Script::from_lua(format!("{PRELUDE}{body}"));
        Scripts {
            keys: KEYS
                .iter()
                .map(|k| Key::from(format!("{tag}:{k}")))
                .collect(),
            submit: script(SUBMIT),
            get: script(GET),
            get_by_key: script(GET_BY_KEY),
            claim: script(CLAIM),
            renew: script(RENEW),
            update: script(UPDATE),
            list: script(LIST),
            purge: script(PURGE),
            counts: script(COUNTS),
            next_due: script(NEXT_DUE),
            claim_callback: script(CLAIM_CALLBACK),
            next_callback_due: script(NEXT_CALLBACK_DUE),
            probe: script(PROBE),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_in_one_slot() {
        let s = Scripts::new("{talkgate-jobs:t}");
        let slots: Vec<u16> = s
            .keys
            .iter()
            .map(|k| fred::util::redis_keyslot(k.as_bytes()))
            .collect();
        assert!(slots.iter().all(|s| *s == slots[0]), "{slots:?}");
        assert_eq!(s.keys[0].as_str(), Some("{talkgate-jobs:t}:job"));
    }

    #[test]
    fn the_status_and_priority_keys_follow_their_index_order() {
        for (i, status) in ports::JobStatus::ALL.iter().enumerate() {
            assert_eq!(KEYS[12 + i], format!("status:{status}"));
        }
        assert_eq!(KEYS[18], "queued:0");
        assert_eq!(KEYS[26], "due:0", "DUE0 = 27 in Lua's 1-based KEYS");
        assert_eq!(KEYS[30], "rank");
        assert_eq!(KEYS[31], "fair");
    }
}
