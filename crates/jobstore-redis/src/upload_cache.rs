//! [`UploadCache`] for [`RedisJobStore`]: under the store's hash tag (one Cluster slot), each
//! operation one Lua script with its own key list.
//!
//! | key | type | field → value / member → score |
//! |---|---|---|
//! | `T:uploads` | HASH | [`UploadKey::field`] → the entry as JSON |
//! | `T:upload_expiry` | ZSET | key field → `expires_ms` (the bound drops the lowest first) |
//! | `T:upload_urls` | HASH | `<byte length of tenant>:<tenant><url>` → key field |
//! | `T:upload_url_of` | HASH | key field → its URL field (to drop both together) |
//!
//! Each store sets the four keys to expire an hour after the last entry does ([`KEY_SLACK_MS`],
//! counted on the caller's clock, as the entries are): a cache nobody writes to any more (a
//! renamed store, the cache turned off) leaves nothing behind in Redis.

use async_trait::async_trait;
use domain::Tenant;
use fred::types::Key;
use fred::types::Value;
use fred::types::scripts::Script;
use ports::{CachedUpload, UploadCache, UploadCacheError, UploadKey};

use crate::RedisJobStore;

const KEYS: [&str; 4] = ["uploads", "upload_expiry", "upload_urls", "upload_url_of"];

const PRELUDE: &str = r#"
local ENTRIES, EXPIRY, URLS, URL_OF = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local function drop(field)
  local url = redis.call('HGET', URL_OF, field)
  if url and redis.call('HGET', URLS, url) == field then redis.call('HDEL', URLS, url) end
  redis.call('HDEL', ENTRIES, field)
  redis.call('HDEL', URL_OF, field)
  redis.call('ZREM', EXPIRY, field)
end
local function live(field, now)
  local at = redis.call('ZSCORE', EXPIRY, field)
  if not at or tonumber(at) <= now then return false end
  return redis.call('HGET', ENTRIES, field)
end
"#;

/// `ARGV`: key field, now. Returns the entry's JSON, or nil.
const GET: &str = r#"
return live(ARGV[1], tonumber(ARGV[2]))
"#;

/// How long after the last entry's expiry the cache's keys are kept (slack for the clocks of
/// the instances writing).
const KEY_SLACK_MS: u64 = 3_600_000;

/// `ARGV`: key field, url field, JSON, expires_ms, now, max entries, key slack. Drops expired
/// entries (at most 256 a call), stores, drops what expires first beyond the bound, then sets
/// the keys to expire `ARGV[7]` ms after the last entry.
const PUT: &str = r#"
local field, url, now, max = ARGV[1], ARGV[2], tonumber(ARGV[5]), tonumber(ARGV[6])
for _, old in ipairs(redis.call('ZRANGEBYSCORE', EXPIRY, '-inf', now, 'LIMIT', 0, 256)) do
  drop(old)
end
drop(field)
redis.call('HSET', ENTRIES, field, ARGV[3])
redis.call('ZADD', EXPIRY, ARGV[4], field)
redis.call('HSET', URLS, url, field)
redis.call('HSET', URL_OF, field, url)
while redis.call('ZCARD', EXPIRY) > max do
  local first = redis.call('ZRANGE', EXPIRY, 0, 0)[1]
  if not first then break end
  drop(first)
end
local last = redis.call('ZRANGE', EXPIRY, -1, -1, 'WITHSCORES')[2]
if last then
  local ttl = math.max(tonumber(last) - now, 0) + tonumber(ARGV[7])
  for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], string.format('%d', ttl)) end
end
return 1
"#;

/// `ARGV`: url field, now. Returns the JSON of the live entry at that URL, or nil.
const BY_URL: &str = r#"
local field = redis.call('HGET', URLS, ARGV[1])
if not field then return false end
return live(field, tonumber(ARGV[2]))
"#;

/// The cache's keys and scripts under a store's hash tag.
#[derive(Debug, Clone)]
pub(crate) struct UploadScripts {
    keys: Vec<Key>,
    get: Script,
    put: Script,
    by_url: Script,
}

impl UploadScripts {
    pub(crate) fn new(tag: &str) -> UploadScripts {
        let script = |body: &str| Script::from_lua(format!("{PRELUDE}{body}"));
        UploadScripts {
            keys: KEYS
                .iter()
                .map(|k| Key::from(format!("{tag}:{k}")))
                .collect(),
            get: script(GET),
            put: script(PUT),
            by_url: script(BY_URL),
        }
    }
}

fn url_field(tenant: &Tenant, url: &str) -> String {
    let t = tenant.as_str();
    format!("{}:{t}{url}", t.len())
}

fn decode(value: Value) -> Result<Option<CachedUpload>, UploadCacheError> {
    if value.is_null() {
        return Ok(None);
    }
    let text = value
        .as_str()
        .ok_or_else(|| UploadCacheError::Corrupt(format!("upload cache entry: {value:?}")))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| UploadCacheError::Corrupt(format!("upload cache entry: {e}")))
}

impl RedisJobStore {
    async fn upload_eval(
        &self,
        pick: impl Fn(&UploadScripts) -> &Script,
        args: Vec<Value>,
    ) -> Result<Value, UploadCacheError> {
        let scripts = &self.upload_scripts;
        self.eval_keys(pick(scripts), scripts.keys.clone(), args)
            .await
            .map_err(UploadCacheError::from)
    }
}

#[async_trait]
impl UploadCache for RedisJobStore {
    async fn cached_upload(
        &self,
        key: &UploadKey,
        now_ms: u64,
    ) -> Result<Option<CachedUpload>, UploadCacheError> {
        let args: Vec<Value> = vec![key.field().into(), now_ms.to_string().into()];
        decode(self.upload_eval(|s| &s.get, args).await?)
    }

    async fn cache_upload(
        &self,
        key: &UploadKey,
        entry: &CachedUpload,
        now_ms: u64,
        max_entries: usize,
    ) -> Result<(), UploadCacheError> {
        let json = serde_json::to_string(entry)
            .map_err(|e| UploadCacheError::Corrupt(format!("upload cache entry: {e}")))?;
        let args: Vec<Value> = vec![
            key.field().into(),
            url_field(&key.tenant, &entry.asset.url).into(),
            json.into(),
            entry.expires_ms.to_string().into(),
            now_ms.to_string().into(),
            max_entries.max(1).to_string().into(),
            KEY_SLACK_MS.to_string().into(),
        ];
        self.upload_eval(|s| &s.put, args).await.map(drop)
    }

    async fn uploaded_audio_seconds(
        &self,
        tenant: &Tenant,
        url: &str,
        now_ms: u64,
    ) -> Result<Option<f64>, UploadCacheError> {
        let args: Vec<Value> = vec![url_field(tenant, url).into(), now_ms.to_string().into()];
        Ok(decode(self.upload_eval(|s| &s.by_url, args).await?)?.and_then(|e| e.audio_seconds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_in_the_stores_slot_and_url_fields_name_one_tenant() {
        let s = UploadScripts::new("{talkgate-jobs:t}");
        let slot = |k: &Key| fred::util::redis_keyslot(k.as_bytes());
        assert!(s.keys.iter().all(|k| slot(k) == slot(&s.keys[0])));
        let t = Tenant::parse("ab").unwrap();
        assert_eq!(url_field(&t, "s3://x/y.wav"), "2:abs3://x/y.wav");
    }
}
