//! [`CreditLedger`] for [`RedisJobStore`]: under the store's hash tag (so one Cluster slot),
//! each operation one Lua script, so a reserve's check and write are one atomic step for
//! every process sharing the store.
//!
//! | key | type | field → value / member → score |
//! |---|---|---|
//! | `T:credit_usage` | HASH | `<byte length of tenant>:<tenant><period>` → `<spent> <reserved> <written_ms>` |
//! | `T:credit_holds` | HASH | job id → `<credits> <usage field>` |
//! | `T:credit_age` | ZSET | job id → `at_ms` of its reservation (`stale`) |

use async_trait::async_trait;
use domain::Tenant;
use fred::types::Key;
use fred::types::Value;
use fred::types::scripts::Script;
use ports::{CreditError, CreditLedger, JobId, Reservation, Reserved, Usage};
use redis_connect::reply::{array, number, tag, text};

use crate::RedisJobStore;

const KEYS: [&str; 3] = ["credit_usage", "credit_holds", "credit_age"];

const PRELUDE: &str = r#"
local USAGE, HOLDS, AGE = KEYS[1], KEYS[2], KEYS[3]
local function usage(field)
  local v = redis.call('HGET', USAGE, field)
  if not v then return 0, 0, 0 end
  local s, r, w = string.match(v, '^(%d+) (%d+) (%d+)$')
  return tonumber(s), tonumber(r), tonumber(w)
end
local function put(field, s, r, w)
  redis.call('HSET', USAGE, field, string.format('%.0f %.0f %.0f', s, r, w))
end
"#;

/// `ARGV`: usage field, job, credits, budget, at_ms. Returns `{tag, spent, reserved}` with
/// tag `taken`, `exists` or `exhausted`.
const RESERVE: &str = r#"
local field, job, credits, budget, at = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local s, r, w = usage(field)
if redis.call('HEXISTS', HOLDS, job) == 1 then return {'exists', s, r} end
if s + r + credits > budget then return {'exhausted', s, r} end
r = r + credits
if at > w then w = at end
put(field, s, r, w)
redis.call('HSET', HOLDS, job, string.format('%.0f', credits) .. ' ' .. field)
redis.call('ZADD', AGE, at, job)
return {'taken', s, r}
"#;

/// `ARGV`: job, credits spent (`''` for a release), now. Returns 1 if it ended a hold.
const END: &str = r#"
local hold = redis.call('HGET', HOLDS, ARGV[1])
if not hold then return 0 end
local credits, field = string.match(hold, '^(%d+) (.*)$')
redis.call('HDEL', HOLDS, ARGV[1])
redis.call('ZREM', AGE, ARGV[1])
local s, r, w = usage(field)
r = math.max(0, r - tonumber(credits))
if ARGV[2] ~= '' then s = s + tonumber(ARGV[2]) end
local now = tonumber(ARGV[3])
if now > w then w = now end
put(field, s, r, w)
return 1
"#;

/// `ARGV`: usage field. Returns `{spent, reserved}`.
const USAGE: &str = r#"
local s, r = usage(ARGV[1])
return {s, r}
"#;

/// `ARGV`: before (exclusive), limit. Returns `{job, hold, at}` triples, oldest first.
const STALE: &str = r#"
local ids = redis.call('ZRANGEBYSCORE', AGE, '-inf', '(' .. ARGV[1], 'WITHSCORES', 'LIMIT', 0, ARGV[2])
local out = {}
for i = 1, #ids, 2 do
  local hold = redis.call('HGET', HOLDS, ids[i])
  if hold then
    out[#out + 1] = ids[i]
    out[#out + 1] = hold
    out[#out + 1] = ids[i + 1]
  end
end
return out
"#;

/// `ARGV`: before (exclusive). Forgets usage written before it that holds nothing.
const PURGE: &str = r#"
local all = redis.call('HGETALL', USAGE)
local n = 0
for i = 1, #all, 2 do
  local s, r, w = string.match(all[i + 1], '^(%d+) (%d+) (%d+)$')
  if r and tonumber(r) == 0 and tonumber(w) < tonumber(ARGV[1]) then
    redis.call('HDEL', USAGE, all[i])
    n = n + 1
  end
end
return n
"#;

/// The ledger's keys and scripts under a store's hash tag.
#[derive(Debug, Clone)]
pub(crate) struct CreditScripts {
    keys: Vec<Key>,
    reserve: Script,
    end: Script,
    usage: Script,
    stale: Script,
    purge: Script,
}

impl CreditScripts {
    pub(crate) fn new(tag: &str) -> CreditScripts {
        let script = |body: &str| Script::from_lua(format!("{PRELUDE}{body}"));
        CreditScripts {
            keys: KEYS
                .iter()
                .map(|k| Key::from(format!("{tag}:{k}")))
                .collect(),
            reserve: script(RESERVE),
            end: script(END),
            usage: script(USAGE),
            stale: script(STALE),
            purge: script(PURGE),
        }
    }
}

/// The usage field of (tenant, period): the tenant's byte length first, so no pair can be
/// mistaken for another.
fn usage_field(tenant: &Tenant, period: &str) -> String {
    let t = tenant.as_str();
    format!("{}:{t}{period}", t.len())
}

fn parse_usage_field(field: &str) -> Option<(Tenant, String)> {
    let (len, rest) = field.split_once(':')?;
    let len: usize = len.parse().ok()?;
    let tenant = Tenant::parse(rest.get(..len)?).ok()?;
    Some((tenant, rest.get(len..)?.to_owned()))
}

fn corrupt(e: impl std::fmt::Display) -> CreditError {
    CreditError::Corrupt(e.to_string())
}

fn usage_of(items: &[Value], from: usize) -> Result<Usage, CreditError> {
    Ok(Usage {
        spent: number(&items[from], "spent").map_err(corrupt)?,
        reserved: number(&items[from + 1], "reserved").map_err(corrupt)?,
    })
}

impl RedisJobStore {
    async fn credit_eval(
        &self,
        pick: impl Fn(&CreditScripts) -> &Script,
        args: Vec<Value>,
    ) -> Result<Value, CreditError> {
        let scripts = &self.credit_scripts;
        self.eval_keys(pick(scripts), scripts.keys.clone(), args)
            .await
            .map_err(CreditError::from)
    }
}

#[async_trait]
impl CreditLedger for RedisJobStore {
    async fn reserve(
        &self,
        reservation: &Reservation,
        budget: u64,
    ) -> Result<Reserved, CreditError> {
        let args: Vec<Value> = vec![
            usage_field(&reservation.tenant, &reservation.period).into(),
            reservation.job.as_str().into(),
            reservation.credits.to_string().into(),
            budget.to_string().into(),
            reservation.at_ms.to_string().into(),
        ];
        let items =
            array(self.credit_eval(|s| &s.reserve, args).await?, 3, "reserve").map_err(corrupt)?;
        let usage = usage_of(&items, 1)?;
        match tag(&items, "reserve").map_err(corrupt)?.as_str() {
            "taken" => Ok(Reserved::Taken(usage)),
            "exists" => Ok(Reserved::Exists(usage)),
            "exhausted" => Ok(Reserved::Exhausted(usage)),
            other => Err(CreditError::Corrupt(format!(
                "unexpected reserve reply {other:?}"
            ))),
        }
    }

    async fn settle(&self, job: &JobId, credits: u64, now_ms: u64) -> Result<bool, CreditError> {
        let args: Vec<Value> = vec![
            job.as_str().into(),
            credits.to_string().into(),
            now_ms.to_string().into(),
        ];
        let n = self.credit_eval(|s| &s.end, args).await?;
        Ok(number(&n, "settle").map_err(corrupt)? == 1)
    }

    async fn release(&self, job: &JobId, now_ms: u64) -> Result<bool, CreditError> {
        let args: Vec<Value> = vec![job.as_str().into(), "".into(), now_ms.to_string().into()];
        let n = self.credit_eval(|s| &s.end, args).await?;
        Ok(number(&n, "release").map_err(corrupt)? == 1)
    }

    async fn usage(&self, tenant: &Tenant, period: &str) -> Result<Usage, CreditError> {
        let args: Vec<Value> = vec![usage_field(tenant, period).into()];
        let items =
            array(self.credit_eval(|s| &s.usage, args).await?, 2, "usage").map_err(corrupt)?;
        usage_of(&items, 0)
    }

    async fn stale(&self, before_ms: u64, limit: usize) -> Result<Vec<Reservation>, CreditError> {
        let args: Vec<Value> = vec![before_ms.to_string().into(), limit.to_string().into()];
        let items =
            array(self.credit_eval(|s| &s.stale, args).await?, 0, "stale").map_err(corrupt)?;
        items
            .chunks_exact(3)
            .map(|c| {
                let job = text(&c[0], "job").map_err(corrupt)?;
                let hold = text(&c[1], "hold").map_err(corrupt)?;
                let bad = || CreditError::Corrupt(format!("bad credit hold {hold:?}"));
                let (credits, field) = hold.split_once(' ').ok_or_else(bad)?;
                let (tenant, period) = parse_usage_field(field).ok_or_else(bad)?;
                Ok(Reservation {
                    job: JobId::parse(&job).map_err(corrupt)?,
                    tenant,
                    period,
                    credits: credits.parse().map_err(|_| bad())?,
                    at_ms: number(&c[2], "at").map_err(corrupt)?,
                })
            })
            .collect()
    }

    async fn purge_usage(&self, before_ms: u64) -> Result<u64, CreditError> {
        let n = self
            .credit_eval(|s| &s.purge, vec![before_ms.to_string().into()])
            .await?;
        number(&n, "purge").map_err(corrupt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_fields_name_one_tenant_and_period() {
        let t = Tenant::parse("t:ab").unwrap();
        let field = usage_field(&t, "2026-12");
        assert_eq!(field, "4:t:ab2026-12");
        assert_eq!(parse_usage_field(&field), Some((t, "2026-12".to_owned())));
        assert_eq!(parse_usage_field("9:short"), None);
    }

    #[test]
    fn every_key_is_in_the_stores_slot() {
        let s = CreditScripts::new("{talkgate-jobs:t}");
        let jobs = crate::scripts::Scripts::new("{talkgate-jobs:t}");
        let slot = |k: &Key| fred::util::redis_keyslot(k.as_bytes());
        assert!(s.keys.iter().all(|k| slot(k) == slot(&jobs.keys[0])));
    }
}
