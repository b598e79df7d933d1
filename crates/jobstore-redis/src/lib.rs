//! A [`JobStore`] on Redis (via fred): every process that uses the same Redis and the same
//! store name shares one queue of jobs.
//!
//! Build it with [`RedisJobStore::connect`], from a [`RedisConnectionConfig`] (the
//! `redis-connect` crate's, the same the limiter embeds as its `connection`: so the same URL
//! forms — `redis://`, `rediss://` over TLS, `redis-cluster://`, `redis-sentinel://` — the
//! same TLS options and the same timeouts apply) and a store name. Connecting, and reading
//! the scripts' replies (`redis_connect::reply`), is that crate's code.
//!
//! # Data model
//! Every key shares the hash tag `{talkgate-jobs:<name>}` (written `T` below):
//!
//! | key | type | field → value / member → score |
//! |---|---|---|
//! | `T:job` | HASH | id → the job as JSON, without `seq`, `version`, `lease`, `idempotency` |
//! | `T:ver` | HASH | id → version |
//! | `T:lease` | HASH | id → `<until_ms> <owner>` (absent without a lease) |
//! | `T:next` | HASH | id → `next_run_ms` (non-terminal jobs) |
//! | `T:order` | HASH | id → `(3 - priority index) · 2^40 + seq` (non-terminal jobs; the priority, and the claim order of builds before the fair order) |
//! | `T:rank` | HASH | id → [`Job::rank`](ports::Job::rank) (non-terminal jobs) |
//! | `T:fair` | HASH | `v:<p>` → the fair order's `V` of priority index `p`; `<p>:<tenant>` → the tenant's last rank there (those behind `V` dropped by `purge`) |
//! | `T:key` | HASH | key field → id |
//! | `T:keyof` | HASH | id → key field |
//! | `T:seq` | ZSET | id → seq (every job; `list` pages over it newest first) |
//! | `T:next_seq` | STRING | the last seq handed out (`INCR`) |
//! | `T:due:<p>` | ZSET | id → rank: non-terminal jobs of priority index `p` whose timer some claim saw pass |
//! | `T:due` | ZSET | id → claim order: the same, moved by a build before the fair order (a claim moves them back to `wait`) |
//! | `T:wait` | ZSET | id → timer, `max(next_run_ms, lease until)`: the other non-terminal jobs |
//! | `T:finished` | ZSET | id → `finished_ms` (terminal jobs that have one; `purge` reads it) |
//! | `T:status:<status>` | ZSET | id → seq, one per [`JobStatus`] (`list` of one status, counts) |
//! | `T:queued:<p>` | ZSET | id → `created_ms` of the queued jobs of priority index `p` (queue age) |
//! | `T:probe` | STRING | the readiness check's write probe (expires after a minute) |
//!
//! A key field is `<byte length of scope>:<scope><key>`, so no scope and key pair can be
//! mistaken for another. `seq`, `version`, the lease and the idempotency key of a job live
//! only in their own fields (the JSON leaves them out), so a claim or a renew never rewrites
//! the JSON; a read puts them back. Every non-terminal job is in exactly one of the `due`
//! sets and `wait`; a terminal job in none.
//!
//! # Atomicity
//! Every [`JobStore`] method is one Lua script (`EVALSHA`, loaded again after a `NOSCRIPT`),
//! so each step — look up the key, check the queue bound, insert; find the first runnable job
//! and lease it; compare the version and write — runs atomically, whichever process sends it.
//! The Rust side computes the index fields (status, priority, `next_run_ms`, lease,
//! `finished_ms`) from the job it writes and passes them next to the JSON, so Lua never
//! parses JSON. Times are the caller's `now_ms` (never Redis `TIME`), as the port requires.
//! A claim first moves every job of `wait` whose timer is at most `now_ms` into its
//! priority's `due:<p>`, then leases the first head of `due:3` … `due:0` (the lowest rank
//! of the highest priority: the fair order of the port's docs) and moves that priority's
//! `V` up to its rank; a submit ranks its job from `V` and its tenant's last rank, in the
//! same script, so every instance follows one order. Only [`purge`](JobStore::purge) may take more
//! than one script call: it deletes at most [`PURGE_BATCH`] jobs per call and repeats until
//! a call deletes fewer.
//!
//! # Cluster
//! All keys of a store hash to one slot (the one hash tag), and every script is given every
//! key it may touch in `KEYS` (it builds no key name), so the store runs unchanged on a
//! Redis Cluster through a `redis-cluster://` URL. One store lives on one master: it scales
//! by name (several stores), not by slots.
//!
//! # Durability
//! The store keeps what Redis keeps. A call is acknowledged once Redis ran its script, i.e.
//! once the write is in Redis's memory; a Redis that restarts comes back with only what it
//! had persisted:
//! - AOF with `appendfsync always`: no acknowledged write is lost (each script is on disk
//!   before its answer is sent);
//! - AOF with `appendfsync everysec` (the usual setting): a Redis process crash loses
//!   nothing, a crash of the machine (or power) loses up to about the last second;
//! - RDB snapshots only: everything written since the last snapshot is lost;
//! - no persistence (`save ""`, `appendonly no`): a restart starts with an empty store.
//!
//! Run it with AOF (`appendonly yes`, `appendfsync everysec` or `always`) for acknowledged
//! jobs to survive, and with `maxmemory-policy noeviction`: an evicting policy would drop
//! single keys of the store (a job, or an index) and break what the scripts keep consistent.
//! A failover to a replica loses what the replica had not received yet, like a crash.
//!
//! What is lost is always whole scripts (Redis persists and replicates a script's effects as
//! one unit), so the indexes never disagree with the jobs. Lost submits vanish (their keys
//! are free again, so a replay creates a new job); lost claims and updates roll the job back
//! to an older version: the writer's next update fails with
//! [`JobStoreError::Conflict`], and the job is claimed again once its (older) lease has run
//! out. Jobs that were running when the data was lost are worked on again, which the workers
//! must tolerate anyway (a `creating` job may exist at D-ID already).
//!
//! # Replays and clocks
//! The client sends a command a second time when its connection dropped before the answer
//! (fred's `max_command_attempts`, 2 with redis-connect's settings). A replayed submit finds
//! its own job and reports it created (same id, fingerprint, request and key); a replayed
//! claim leases a second job, whose lease then simply runs out; a replayed update answers
//! [`JobStoreError::Conflict`] although the first run wrote (the writer reads the job again).
//! A claim trusts its caller's `now_ms`: a claim from a clock that runs ahead moves jobs into
//! `due` early, and a claim from a clock that runs behind moves such jobs back to `wait`
//! (at most 64 per call) instead of claiming them before their time.

use ports::{LeaseTerms, ListQuery};
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use domain::Tenant;
use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface, KeysInterface, PubsubInterface};
use fred::types::scripts::Script;
use fred::types::{FromValue, Key, Value};
use ports::jobs::duration_ms;
use ports::{
    DegradedReason, Job, JobCounts, JobId, JobPage, JobStatus, JobStore, JobStoreError, Lease,
    NewJob, QueueLimits, ScopedKey, Submitted,
};
use redis_connect::reply::{array, number, tag, text};
use redis_connect::{ConnectError, RedisConnectionConfig, address_of, redact_url};
use tokio::sync::Notify;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

mod credits;
mod scripts;
mod upload_cache;

use scripts::{INDEX_ARGS, Scripts};

/// The most jobs one [`purge`](JobStore::purge) script call deletes (it repeats until done).
pub const PURGE_BATCH: usize = 500;

/// The JSON fields that live in side fields, not in `T:job`.
const SIDE_FIELDS: [&str; 5] = ["seq", "version", "lease", "idempotency", "rank"];

/// The job store on Redis. Cheap to share behind an `Arc`; all clones of the fred client
/// share its connections.
#[derive(Clone)]
pub struct RedisJobStore {
    client: Client,
    /// Listens on [`RedisJobStore::channel`] (a subscribed connection runs nothing else).
    subscriber: SubscriberClient,
    /// Wake-ups heard on the channel, for [`JobStore::woken`].
    wake: Arc<Notify>,
    /// Ends the listening task when the last clone goes.
    _listener: Arc<Listener>,
    channel: String,
    /// What this process knows of the store's epoch, and when the store last lost its data.
    epoch: Arc<Epoch>,
    scripts: Scripts,
    /// The credit ledger's keys and scripts (`credits`).
    credit_scripts: credits::CreditScripts,
    /// The upload cache's keys and scripts (`upload_cache`).
    upload_scripts: upload_cache::UploadScripts,
    name: String,
    address: String,
    op_timeout: Duration,
}

impl fmt::Debug for RedisJobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisJobStore")
            .field("name", &self.name)
            .field("address", &self.address)
            .field("op_timeout", &self.op_timeout)
            .finish_non_exhaustive()
    }
}

/// Why [`RedisJobStore::open`] failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The config cannot work (an invalid URL or TLS setting); never the password.
    #[error("{0}")]
    Config(String),
    /// Redis could not be reached, or refused this client; the reason is typed.
    #[error(transparent)]
    Connect(ConnectError),
}

impl OpenError {
    /// What kind of failure it was: a connection's reason, or `other` for a bad config.
    pub fn reason(&self) -> DegradedReason {
        match self {
            OpenError::Config(_) => DegradedReason::Other,
            OpenError::Connect(e) => e.reason,
        }
    }
}

/// The hash tag of the store called `name`: `{talkgate-jobs:<name>}`. Every key of the store
/// starts with it.
pub fn hash_tag(name: &str) -> String {
    format!("{{talkgate-jobs:{name}}}")
}

impl RedisJobStore {
    /// Connects to the Redis of `config` (its URL, TLS options, `connect_timeout` and
    /// `op_timeout`) and opens the store called `name` there. Waits at most `config.connect_timeout` for the first connection.
    ///
    /// Fails with [`JobStoreError::Unavailable`] if the config is invalid or Redis cannot be
    /// reached in time (the message names the address and the reason, never the password).
    /// Once connected, the client reconnects by itself; a call while Redis is away fails
    /// with [`JobStoreError::Unavailable`] within `op_timeout`. [`open`](Self::open) says the
    /// same as a typed error, with the reason as a [`DegradedReason`].
    pub async fn connect(
        config: RedisConnectionConfig,
        name: &str,
    ) -> Result<RedisJobStore, JobStoreError> {
        Self::open(config, name)
            .await
            .map_err(|e| JobStoreError::Unavailable(format!("redis job store: {e}")))
    }

    /// As [`connect`](Self::connect), with the failure typed: a config that can never work
    /// ([`OpenError::Config`]) or a Redis that could not be reached, and why
    /// ([`OpenError::Connect`]: `auth`, `tls`, `refused`, `timeout`, …).
    pub async fn open(
        config: RedisConnectionConfig,
        name: &str,
    ) -> Result<RedisJobStore, OpenError> {
        let address = address_of(&config.url);
        let client = redis_connect::client(&config).map_err(|e| {
            OpenError::Config(format!(
                "redis job store at {}: {e}",
                redact_url(&config.url)
            ))
        })?;
        if let Err(e) = redis_connect::connect(&client, &config).await {
            let _ = tokio::time::timeout(config.connect_timeout, client.quit()).await;
            return Err(OpenError::Connect(e));
        }
        // A plain URL at a Redis Cluster node that does not own the store's slot connects
        // fine and then answers every script with MOVED: find out now. Only that counts
        // here; a least-privilege ACL may forbid EXISTS, and the scripts then tell.
        let exists = tokio::time::timeout(
            config.op_timeout,
            client.exists::<i64, _>(format!("{}:job", hash_tag(name))),
        )
        .await;
        if let Ok(Err(e)) = exists {
            let failure = ConnectError::from_fred(&address, "redis", &e);
            if failure.reason == DegradedReason::Cluster {
                let _ = tokio::time::timeout(config.connect_timeout, client.quit()).await;
                return Err(OpenError::Connect(failure));
            }
        }
        // Wake-ups: a submit publishes on the store's channel, every instance listens. The
        // subscriber connects (and reconnects) in the background and subscribes after each
        // connect; while it is away the periodic look finds the jobs.
        let subscriber = redis_connect::subscriber_client(&config)
            .map_err(|e| OpenError::Config(format!("redis job store at {address}: {e}")))?;
        let channel = format!("{}:wake", hash_tag(name));
        let wake = Arc::new(Notify::new());
        // The receivers exist before the connection, so its first connect event is seen.
        let events = (subscriber.message_rx(), subscriber.reconnect_rx());
        let listener = Listener(
            tokio::spawn(listen(
                subscriber.clone(),
                channel.clone(),
                events,
                Arc::downgrade(&wake),
            )),
            subscriber.clone(),
        );
        let _connection = subscriber.connect();
        warn_without_persistence(&client, name, &address, config.op_timeout).await;
        Ok(RedisJobStore {
            client,
            subscriber,
            wake,
            _listener: Arc::new(listener),
            channel,
            epoch: Arc::new(Epoch::default()),
            scripts: Scripts::new(&hash_tag(name)),
            credit_scripts: credits::CreditScripts::new(&hash_tag(name)),
            upload_scripts: upload_cache::UploadScripts::new(&hash_tag(name)),
            name: name.to_owned(),
            address,
            op_timeout: config.op_timeout,
        })
    }

    /// The store's name (its keys are under [`hash_tag`]`(name)`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The Redis address(es) it uses, `host:port`, without credentials.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Closes the connections. Calls after this fail with [`JobStoreError::Unavailable`].
    pub async fn quit(&self) {
        // A subscribed connection's QUIT is not answered as fred waits for it: not awaited.
        let subscriber = self.subscriber.clone();
        tokio::spawn(async move {
            let _ = subscriber.quit().await;
        });
        let _ = tokio::time::timeout(self.op_timeout, self.client.quit()).await;
    }

    /// Tells every instance's idle workers that a job is claimable (best effort: a lost
    /// message costs the listeners one periodic look).
    fn announce(&self) {
        let (client, channel) = (self.client.clone(), self.channel.clone());
        tokio::spawn(async move {
            if let Err(e) = client.publish::<(), _, _>(channel, "1").await {
                tracing::debug!(error = %e, "could not announce a new job");
            }
        });
    }

    /// Runs `script` with the store's keys, bounded by `op_timeout` (a `SCRIPT LOAD` after
    /// `NOSCRIPT` included).
    async fn eval<R: FromValue>(
        &self,
        script: &Script,
        args: Vec<Value>,
    ) -> Result<R, JobStoreError> {
        self.eval_keys(script, self.scripts.keys.clone(), args)
            .await
    }

    /// Runs `script` over `keys` (all under the store's hash tag) within the op timeout.
    pub(crate) async fn eval_keys<R: FromValue>(
        &self,
        script: &Script,
        keys: Vec<Key>,
        args: Vec<Value>,
    ) -> Result<R, JobStoreError> {
        let call = script.evalsha_with_reload::<R, _, _>(&self.client, keys, args);
        match tokio::time::timeout(self.op_timeout, call).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(JobStoreError::Unavailable(format!(
                "redis at {}: {e}",
                self.address
            ))),
            Err(_) => Err(JobStoreError::Unavailable(format!(
                "redis at {}: no answer within {:?}",
                self.address, self.op_timeout
            ))),
        }
    }
}

/// The key field of `key`: `<byte length of scope>:<scope><key>` (the scope is the tenant).
fn key_field(key: &ScopedKey) -> String {
    let scope = key.tenant.as_str();
    format!("{}:{scope}{}", scope.len(), key.key)
}

/// The key of a key field.
fn parse_key_field(field: &str) -> Result<ScopedKey, JobStoreError> {
    let bad = || JobStoreError::Corrupt(format!("bad idempotency key field {field:?}"));
    let (len, rest) = field.split_once(':').ok_or_else(bad)?;
    let len: usize = len.parse().map_err(|_| bad())?;
    let (scope, key) = (
        rest.get(..len).ok_or_else(bad)?,
        rest.get(len..).ok_or_else(bad)?,
    );
    Ok(ScopedKey {
        tenant: Tenant::parse(scope).map_err(|_| bad())?,
        key: key.to_owned(),
    })
}

/// A lease as stored: `<until_ms> <owner>`.
fn lease_text(lease: &Lease) -> String {
    format!("{} {}", lease.until_ms, lease.owner)
}

fn parse_lease(text: &str) -> Result<Lease, JobStoreError> {
    let bad = || JobStoreError::Corrupt(format!("bad lease {text:?}"));
    let (until, owner) = text.split_once(' ').ok_or_else(bad)?;
    Ok(Lease {
        owner: owner.to_owned(),
        until_ms: until.parse().map_err(|_| bad())?,
    })
}

/// The JSON stored for `job`: the job without its side fields.
fn body_json(job: &Job) -> Result<String, JobStoreError> {
    let mut value = serde_json::to_value(job)
        .map_err(|e| JobStoreError::Corrupt(format!("job {} cannot be encoded: {e}", job.id)))?;
    if let Some(object) = value.as_object_mut() {
        for field in SIDE_FIELDS {
            object.remove(field);
        }
    }
    Ok(value.to_string())
}

/// A job from `read()`'s `{json, version, lease, seq, key field, rank}` (a rank of `''`, a
/// job queued before the fair order, reads as 0).
fn decode_job(value: Value) -> Result<Job, JobStoreError> {
    let items = array(value, 5, "read")?;
    let json = text(&items[0], "job json")?;
    let version = number(&items[1], "version")?;
    let lease = match text(&items[2], "lease")?.as_str() {
        "" => None,
        t => Some(parse_lease(t)?),
    };
    let seq = number(&items[3], "seq")?;
    let idempotency = match text(&items[4], "key field")?.as_str() {
        "" => None,
        f => Some(parse_key_field(f)?),
    };
    let rank = match items.get(5) {
        Some(v) if v.as_str().is_some_and(|t| t.is_empty()) => 0,
        Some(v) => number(v, "rank")?,
        None => 0,
    };
    let corrupt = |e: serde_json::Error| JobStoreError::Corrupt(format!("job json: {e}"));
    let mut object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&json).map_err(corrupt)?;
    object.insert("seq".into(), seq.into());
    object.insert("version".into(), version.into());
    object.insert("rank".into(), rank.into());
    object.insert(
        "lease".into(),
        serde_json::to_value(&lease).map_err(corrupt)?,
    );
    object.insert(
        "idempotency".into(),
        serde_json::to_value(&idempotency).map_err(corrupt)?,
    );
    serde_json::from_value(serde_json::Value::Object(object)).map_err(corrupt)
}

fn decode_optional_job(value: Value) -> Result<Option<Job>, JobStoreError> {
    if value.is_null() {
        Ok(None)
    } else {
        decode_job(value).map(Some)
    }
}

fn status_index(status: JobStatus) -> usize {
    JobStatus::ALL
        .iter()
        .position(|s| *s == status)
        .unwrap_or_default()
}

/// `index()`'s arguments for `job` (see `scripts::INDEX_ARGS`).
fn index_args(job: &Job) -> Result<Vec<Value>, JobStoreError> {
    let args: Vec<Value> = vec![
        body_json(job)?.into(),
        status_index(job.status).to_string().into(),
        if job.status.is_terminal() { "1" } else { "0" }.into(),
        job.priority.index().to_string().into(),
        job.created_ms.to_string().into(),
        job.next_run_ms.to_string().into(),
        job.lease
            .as_ref()
            .map(lease_text)
            .unwrap_or_default()
            .into(),
        job.finished_ms
            .map(|f| f.to_string())
            .unwrap_or_default()
            .into(),
        ports::jobs::callback_due_at(job)
            .map(|d| d.to_string())
            .unwrap_or_default()
            .into(),
    ];
    debug_assert_eq!(args.len(), INDEX_ARGS);
    Ok(args)
}

#[async_trait]
impl JobStore for RedisJobStore {
    async fn submit(&self, job: NewJob, limits: QueueLimits) -> Result<Submitted, JobStoreError> {
        let cost = ports::jobs::rank_cost(job.share);
        let job = job.into_job(0, 0);
        let field = job.idempotency.as_ref().map(key_field).unwrap_or_default();
        let mut args: Vec<Value> = vec![
            job.id.as_str().into(),
            field.into(),
            limits.max_queued.to_string().into(),
        ];
        args.extend(index_args(&job)?);
        args.push(job.tenant.as_str().into());
        args.push(cost.to_string().into());
        args.push(self.epoch.known().into());
        args.push(job.created_ms.to_string().into());
        let items = array(self.eval(&self.scripts.submit, args).await?, 1, "submit")?;
        match tag(&items, "submit")?.as_str() {
            "created" if items.len() >= 2 => {
                let seq = number(&items[1], "seq")?;
                if let (Some(epoch), Some(lost)) = (items.get(2), items.get(3)) {
                    self.epoch.learn(epoch, lost, &self.address)?;
                }
                let rank = match items.get(4) {
                    Some(rank) => number(rank, "rank")?,
                    None => 0,
                };
                if job.lease.is_none() {
                    self.announce();
                }
                Ok(Submitted::Created(Job { seq, rank, ..job }))
            }
            "existing" if items.len() >= 2 => {
                let mut items = items;
                Ok(Submitted::Existing(decode_job(items.swap_remove(1))?))
            }
            "full" if items.len() >= 2 => Err(JobStoreError::QueueFull {
                queued: number(&items[1], "queued")?,
                limit: limits.max_queued,
            }),
            "duplicate" if items.len() >= 2 => {
                let mut items = items;
                let stored = decode_job(items.swap_remove(1))?;
                // The same submit run twice (fred sends a command again when the connection
                // dropped before its answer): the first run created it.
                if stored.fingerprint == job.fingerprint
                    && stored.created_ms == job.created_ms
                    && stored.idempotency == job.idempotency
                    && stored.request == job.request
                {
                    Ok(Submitted::Created(stored))
                } else {
                    Err(JobStoreError::Corrupt(format!("job id {} exists", job.id)))
                }
            }
            "dangling" => Err(JobStoreError::Corrupt(format!(
                "the idempotency key of job {} points at a missing job",
                job.id
            ))),
            other => Err(JobStoreError::Corrupt(format!(
                "unexpected reply to submit: {other}"
            ))),
        }
    }

    async fn get(&self, id: &JobId) -> Result<Option<Job>, JobStoreError> {
        let reply = self
            .eval(&self.scripts.get, vec![id.as_str().into()])
            .await?;
        decode_optional_job(reply)
    }

    async fn get_by_key(&self, key: &ScopedKey) -> Result<Option<Job>, JobStoreError> {
        let reply = self
            .eval(&self.scripts.get_by_key, vec![key_field(key).into()])
            .await?;
        decode_optional_job(reply)
    }

    async fn claim(&self, terms: LeaseTerms<'_>) -> Result<Option<Job>, JobStoreError> {
        let (owner, lease, now_ms) = (terms.owner, terms.lease, terms.now_ms);
        let until = now_ms.saturating_add(duration_ms(lease));
        let args: Vec<Value> = vec![
            now_ms.to_string().into(),
            owner.into(),
            until.to_string().into(),
        ];
        let reply: Value = self.eval(&self.scripts.claim, args).await?;
        if reply.is_null() {
            return Ok(None);
        }
        let mut items = array(reply, 2, "claim")?;
        decode_job(items.swap_remove(1)).map(Some)
    }

    async fn renew(&self, id: &JobId, terms: LeaseTerms<'_>) -> Result<bool, JobStoreError> {
        let (owner, lease, now_ms) = (terms.owner, terms.lease, terms.now_ms);
        let until = now_ms.saturating_add(duration_ms(lease));
        let args: Vec<Value> = vec![
            id.as_str().into(),
            owner.into(),
            now_ms.to_string().into(),
            until.to_string().into(),
        ];
        let renewed: i64 = self.eval(&self.scripts.renew, args).await?;
        Ok(renewed == 1)
    }

    async fn update(&self, job: Job) -> Result<Job, JobStoreError> {
        let mut args: Vec<Value> = vec![
            job.id.as_str().into(),
            job.version.to_string().into(),
            "".into(),
        ];
        args.extend(index_args(&job)?);
        let items = array(self.eval(&self.scripts.update, args).await?, 1, "update")?;
        match tag(&items, "update")?.as_str() {
            "updated" if items.len() >= 4 => {
                let idempotency = match text(&items[3], "key field")?.as_str() {
                    "" => None,
                    f => Some(parse_key_field(f)?),
                };
                Ok(Job {
                    version: number(&items[1], "version")?,
                    seq: number(&items[2], "seq")?,
                    idempotency,
                    ..job
                })
            }
            "missing" => Err(JobStoreError::NotFound(job.id)),
            "conflict" => Err(JobStoreError::Conflict {
                id: job.id,
                expected: job.version,
            }),
            "dangling" => Err(JobStoreError::Corrupt(format!("job {} has no seq", job.id))),
            other => Err(JobStoreError::Corrupt(format!(
                "unexpected reply to update: {other}"
            ))),
        }
    }

    async fn list(&self, query: ListQuery<'_>) -> Result<JobPage, JobStoreError> {
        // Scores are seqs: below the cursor's (exclusive), or from the top.
        let before = match query.before_seq()? {
            u64::MAX => "+inf".to_owned(),
            seq => format!("({seq}"),
        };
        let args: Vec<Value> = vec![
            query
                .status
                .map(|s| status_index(s).to_string())
                .unwrap_or_default()
                .into(),
            before.into(),
            query.fetch().to_string().into(),
        ];
        let reply: Value = self.eval(&self.scripts.list, args).await?;
        let jobs = reply
            .into_array()
            .into_iter()
            .filter(|v| !v.is_null())
            .map(decode_job)
            .collect::<Result<Vec<Job>, _>>()?;
        Ok(query.page(jobs))
    }

    async fn purge(&self, finished_before_ms: u64) -> Result<u64, JobStoreError> {
        let mut total = 0;
        loop {
            let args: Vec<Value> = vec![
                finished_before_ms.to_string().into(),
                PURGE_BATCH.to_string().into(),
            ];
            let deleted: u64 = self.eval(&self.scripts.purge, args).await?;
            total += deleted;
            if deleted < PURGE_BATCH as u64 {
                return Ok(total);
            }
        }
    }

    async fn counts(&self) -> Result<JobCounts, JobStoreError> {
        let items = array(
            self.eval(&self.scripts.counts, Vec::new()).await?,
            11,
            "counts",
        )?;
        let mut counts = JobCounts::default();
        for (status, value) in JobStatus::ALL.into_iter().zip(&items) {
            counts.by_status.insert(status, number(value, "count")?);
        }
        for (slot, value) in counts.oldest_queued_ms.iter_mut().zip(&items[6..]) {
            *slot = match text(value, "queue age")?.as_str() {
                "" => None,
                _ => Some(number(value, "queue age")?),
            };
        }
        counts.callbacks_pending = number(&items[10], "pending callbacks")?;
        Ok(counts)
    }

    async fn next_due(&self, now_ms: u64) -> Result<Option<u64>, JobStoreError> {
        let args: Vec<Value> = vec![self.epoch.known().into(), now_ms.to_string().into()];
        let items = array(
            self.eval(&self.scripts.next_due, args).await?,
            3,
            "next_due",
        )?;
        self.epoch.learn(&items[1], &items[2], &self.address)?;
        match text(&items[0], "next due")?.as_str() {
            "" => Ok(None),
            _ => Ok(Some(number(&items[0], "next due")?)),
        }
    }

    async fn claim_callback(&self, terms: LeaseTerms<'_>) -> Result<Option<Job>, JobStoreError> {
        let args: Vec<Value> = vec![
            terms.now_ms.to_string().into(),
            terms.owner.into(),
            terms.until_ms().to_string().into(),
        ];
        let reply: Value = self.eval(&self.scripts.claim_callback, args).await?;
        if reply.is_null() {
            return Ok(None);
        }
        let mut items = array(reply, 2, "claim_callback")?;
        decode_job(items.swap_remove(1)).map(Some)
    }

    async fn next_callback_due(&self, _now_ms: u64) -> Result<Option<u64>, JobStoreError> {
        let reply: Value = self
            .eval(&self.scripts.next_callback_due, Vec::new())
            .await?;
        match text(&reply, "next callback due")?.as_str() {
            "" => Ok(None),
            _ => Ok(Some(number(&reply, "next callback due")?)),
        }
    }

    fn lost_data_at(&self) -> Option<u64> {
        match self.epoch.lost_at.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }

    async fn woken(&self) {
        self.wake.notified().await;
    }

    async fn check(&self) -> Result<(), JobStoreError> {
        let token = crate::now_token();
        let _: Value = self.eval(&self.scripts.probe, vec![token.into()]).await?;
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

/// Warns once, at start-up, when the Redis holding the store persists nothing (neither AOF
/// nor RDB snapshots): a restart of it then loses every job. Says so at `info` where `CONFIG
/// GET` is not allowed (ACLs, a managed Redis), since nothing can be told then.
async fn warn_without_persistence(client: &Client, name: &str, address: &str, within: Duration) {
    use fred::types::{ClusterHash, CustomCommand};
    // The hash tag as a third (matching nothing) pattern routes the call, on a Cluster, to
    // the master that holds the store.
    let cmd = CustomCommand::new_static("CONFIG", ClusterHash::Offset(3), false);
    let args: Vec<Value> = vec![
        "GET".into(),
        "appendonly".into(),
        "save".into(),
        hash_tag(name).into(),
    ];
    let reply = tokio::time::timeout(within, client.custom::<Value, Value>(cmd, args)).await;
    let pairs = match reply {
        Ok(Ok(Value::Array(items))) => items,
        Ok(Ok(Value::Map(map))) => map
            .inner()
            .into_iter()
            .flat_map(|(k, v)| [Value::from(k), v])
            .collect(),
        Ok(Ok(other)) => {
            tracing::info!(address, reply = ?other, "could not read the job store's Redis persistence settings");
            return;
        }
        Ok(Err(e)) => {
            tracing::info!(
                address,
                error = %e,
                "CONFIG GET is not allowed: cannot tell whether the job store's Redis persists \
                 its data; make sure it does (AOF), or a Redis restart loses every job"
            );
            return;
        }
        Err(_) => return,
    };
    let setting = |name: &str| {
        pairs
            .chunks(2)
            .find(|p| p[0].as_str().is_some_and(|n| n == name))
            .and_then(|p| p.get(1))
            .and_then(|v| v.as_str().map(|s| s.into_owned()))
    };
    let aof = setting("appendonly").is_some_and(|v| v.eq_ignore_ascii_case("yes"));
    let rdb = setting("save").is_some_and(|v| !v.trim().is_empty());
    if !aof && !rdb {
        tracing::warn!(
            address,
            "the job store's Redis persists nothing (appendonly no, save \"\"): a restart \
             of it loses every job; run it with appendonly yes"
        );
    }
}

/// The store's epoch as this process last saw it (set by the first call on an empty store),
/// and when the store last lost its data (`0`: not that anyone saw).
#[derive(Default)]
struct Epoch {
    known: std::sync::Mutex<String>,
    lost_at: AtomicU64,
}

impl Epoch {
    fn known(&self) -> String {
        self.known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Takes in what a script said: the epoch now, and `lost_at` (`''` if never).
    fn learn(&self, epoch: &Value, lost: &Value, address: &str) -> Result<(), JobStoreError> {
        let epoch = text(epoch, "epoch")?;
        let lost = match text(lost, "lost_at")?.as_str() {
            "" => 0,
            _ => number(lost, "lost_at")?,
        };
        let mut known = self
            .known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !known.is_empty() && *known != epoch {
            tracing::error!(
                address,
                "the Redis job store lost its data (Redis restarted without it, or was \
                 flushed): the jobs accepted before are gone; a replayed Idempotency-Key \
                 looks its talk up at D-ID before creating one, for JOB_RETENTION_SECS"
            );
        }
        *known = epoch;
        self.lost_at.store(lost, Ordering::Relaxed);
        Ok(())
    }
}

/// Aborts the listening task and closes the subscriber connection (whose reconnect policy
/// would keep it alive) when the last clone of the store goes.
struct Listener(JoinHandle<()>, SubscriberClient);

impl Drop for Listener {
    fn drop(&mut self) {
        self.0.abort();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let subscriber = self.1.clone();
            handle.spawn(async move {
                let _ = subscriber.quit().await;
            });
        }
    }
}

/// Subscribes to `channel` after every (re)connect (fred announces the first connect too)
/// and turns each message, and each reconnect (messages sent meanwhile are lost), into a
/// wake-up. Ends when the store is gone.
async fn listen(
    subscriber: SubscriberClient,
    channel: String,
    (mut messages, mut reconnects): (
        tokio::sync::broadcast::Receiver<fred::types::Message>,
        tokio::sync::broadcast::Receiver<fred::types::config::Server>,
    ),
    wake: std::sync::Weak<Notify>,
) {
    loop {
        tokio::select! {
            message = messages.recv() => match message {
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
            event = reconnects.recv() => {
                if matches!(event, Err(RecvError::Closed)) {
                    return;
                }
                if let Err(e) = subscriber.subscribe(channel.clone()).await {
                    tracing::warn!(error = %e, "job store: could not subscribe to its wake-up channel");
                }
            }
        }
        let Some(wake) = wake.upgrade() else { return };
        wake.notify_one();
    }
}

/// A token for the write probe: this process and the time.
fn now_token() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{} {ms}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_fields_round_trip_and_never_collide() {
        let a = ScopedKey {
            tenant: Tenant::parse("a:b").unwrap(),
            key: "c".into(),
        };
        let b = ScopedKey {
            tenant: Tenant::parse("a").unwrap(),
            key: ":bc".into(),
        };
        assert_ne!(key_field(&a), key_field(&b));
        for k in [a, b] {
            assert_eq!(parse_key_field(&key_field(&k)).unwrap(), k);
        }
        assert!(parse_key_field("9:ab").is_err());
    }

    #[test]
    fn leases_round_trip() {
        let lease = Lease {
            owner: "inst 1/2".into(),
            until_ms: 1_800_000_030_000,
        };
        assert_eq!(parse_lease(&lease_text(&lease)).unwrap(), lease);
    }
}
