//! [`RedisRecords`]: the Redis adapter of [`ports::SharedRecords`], on the limiter's own
//! connection, so the instances that share a limit also share its adaptive state and breaker.
//!
//! A record is a hash `{talkgate:<limiter name>}:rec:<record name>` with fields `v` (the
//! version) and `d` (the value). It carries the limiter's hash tag, so on a Cluster it lives
//! in the limiter's slot. One script compares the version and stores, atomically; a load is
//! one `HMGET`. Records have no TTL: their names are fixed by the service (a handful per
//! limiter), like the limiter's own `meta` hash.

use std::time::Duration;

use async_trait::async_trait;
use fred::clients::Client;
use fred::interfaces::HashesInterface;
use fred::types::Value;
use fred::types::scripts::Script;
use ports::records::check;
use ports::{RecordsError, SharedRecords, Swap, Versioned};

/// Stores `ARGV[2]` if the version is still `ARGV[1]` (`""`: if there is no record).
/// Returns `{1, new version}`, or `{0}` (no record) / `{0, version, value}` on a conflict.
const SWAP: &str = r"
local cur = redis.call('HMGET', KEYS[1], 'v', 'd')
local have = cur[1]
if (ARGV[1] == '' and have) or (ARGV[1] ~= '' and (not have or tonumber(have) ~= tonumber(ARGV[1]))) then
  if have then return {0, tonumber(have), cur[2]} end
  return {0}
end
local v = tonumber(have or '0') + 1
redis.call('HSET', KEYS[1], 'v', v, 'd', ARGV[2])
return {1, v}
";

/// Shared records in Redis (see the module docs). Built by
/// [`RedisLimiter::records`](crate::RedisLimiter::records).
#[derive(Clone)]
pub struct RedisRecords {
    client: Client,
    tag: String,
    swap: Script,
    op_timeout: Duration,
}

impl std::fmt::Debug for RedisRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRecords")
            .field("tag", &self.tag)
            .finish()
    }
}

impl RedisRecords {
    pub(crate) fn new(client: Client, limiter_name: &str, op_timeout: Duration) -> RedisRecords {
        RedisRecords {
            client,
            tag: format!("{{talkgate:{limiter_name}}}"),
            swap: Script::from_lua(SWAP),
            op_timeout,
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}:rec:{name}", self.tag)
    }

    async fn bounded<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = Result<T, fred::error::Error>>,
    ) -> Result<T, RecordsError> {
        match tokio::time::timeout(self.op_timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(RecordsError::Unavailable(format!("redis {what}: {e}"))),
            Err(_) => Err(RecordsError::Unavailable(format!(
                "redis {what}: no answer within {:?}",
                self.op_timeout
            ))),
        }
    }
}

fn versioned(version: &Value, value: &Value) -> Result<Versioned, RecordsError> {
    let version = match version {
        Value::Integer(v) => u64::try_from(*v).ok(),
        Value::String(s) => s.parse().ok(),
        Value::Bytes(b) => std::str::from_utf8(b).ok().and_then(|s| s.parse().ok()),
        _ => None,
    };
    let value = match value {
        Value::String(s) => Some(s.to_string()),
        Value::Bytes(b) => String::from_utf8(b.to_vec()).ok(),
        _ => None,
    };
    match (version, value) {
        (Some(version), Some(value)) => Ok(Versioned { version, value }),
        _ => Err(RecordsError::Unavailable(
            "redis: a shared record is malformed".to_owned(),
        )),
    }
}

#[async_trait]
impl SharedRecords for RedisRecords {
    async fn load(&self, name: &str) -> Result<Option<Versioned>, RecordsError> {
        check(name, "")?;
        let fields: Vec<Value> = self
            .bounded("load", self.client.hmget(self.key(name), vec!["v", "d"]))
            .await?;
        match fields.as_slice() {
            [Value::Null, _] | [] => Ok(None),
            [version, value] => versioned(version, value).map(Some),
            _ => Err(RecordsError::Unavailable(
                "redis: unexpected answer to a record load".to_owned(),
            )),
        }
    }

    async fn swap(
        &self,
        name: &str,
        expected: Option<u64>,
        value: &str,
    ) -> Result<Swap, RecordsError> {
        check(name, value)?;
        let expected = expected.map_or_else(String::new, |v| v.to_string());
        let reply: Vec<Value> = self
            .bounded(
                "swap",
                self.swap.evalsha_with_reload(
                    &self.client,
                    vec![self.key(name)],
                    vec![expected, value.to_owned()],
                ),
            )
            .await?;
        match reply.as_slice() {
            [Value::Integer(1), Value::Integer(v)] => {
                Ok(Swap::Stored(u64::try_from(*v).unwrap_or(u64::MAX)))
            }
            [Value::Integer(0)] => Ok(Swap::Conflict(None)),
            [Value::Integer(0), version, value] => {
                versioned(version, value).map(|v| Swap::Conflict(Some(v)))
            }
            _ => Err(RecordsError::Unavailable(
                "redis: unexpected answer to a record swap".to_owned(),
            )),
        }
    }
}
