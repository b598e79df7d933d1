//! The limiter on a real local Redis Cluster (`test_support::redis::RedisCluster`): the
//! contract suite through a `redis-cluster://` URL that names a node *not* owning the
//! limiter's slot, several processes sharing one global limit, pub/sub wake-ups across
//! nodes, a plain `redis://` URL at a cluster node (reported as `cluster`), and a failover
//! (the slot's master SIGKILLed, its replica promoted) under load.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use domain::Priority;
use fred::prelude::{Builder, ClientLike, Config, HashesInterface};
use limiter_redis::{RedisLimiter, RedisLimiterConfig};
use ports::{ConcurrencyLimiter, DegradedReason, LimiterStats};
use test_support::redis::RedisCluster;

use crate::load::{Load, stays_on_redis};
use crate::support::{fast_failover, report, unique_name, wait_until};

/// The hash tag of a limiter's keys: all of them hash to this key's slot.
fn tag(name: &str) -> String {
    format!("{{talkgate:{name}}}")
}

/// The cluster the contract tests share while they run at the same time (each uses a limiter
/// name of its own); the last one to finish drops it, which kills its nodes.
fn shared_cluster() -> Arc<RedisCluster> {
    static SHARED: Mutex<Weak<RedisCluster>> = Mutex::new(Weak::new());
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(cluster) = shared.upgrade() {
        return cluster;
    }
    let cluster = Arc::new(RedisCluster::start());
    *shared = Arc::downgrade(&cluster);
    cluster
}

/// A limiter that keeps its cluster alive.
struct ClusterLimiter {
    limiter: RedisLimiter,
    _cluster: Arc<RedisCluster>,
}

#[async_trait::async_trait]
impl ConcurrencyLimiter for ClusterLimiter {
    fn acquire<'a>(
        &'a self,
        admission: &'a domain::Admission,
        wait: Duration,
    ) -> ports::Acquire<'a> {
        self.limiter.acquire(admission, wait)
    }

    async fn stats(&self) -> LimiterStats {
        self.limiter.stats().await
    }

    async fn set_limit(&self, max_concurrent: u32) -> Result<(), ports::LimiterError> {
        self.limiter.set_limit(max_concurrent).await
    }
}

/// A config whose URL names only a master that does not own the limiter's slot, so every
/// script must be routed (fred follows the slot map it read from that node).
fn config_via_other_node(cluster: &RedisCluster, limit: u32) -> (RedisLimiterConfig, u16, u16) {
    let name = unique_name("cluster");
    let slot = cluster.keyslot(&tag(&name));
    let (owner, other) = (cluster.master_of(slot), cluster.master_without(slot));
    let mut config = RedisLimiterConfig::new(cluster.url_via(other), name);
    config.max_concurrent = limit;
    (config, owner, other)
}

/// The contract suite's factory on the cluster.
pub async fn cluster_contract_limiter(limit: u32) -> Arc<dyn ConcurrencyLimiter> {
    let cluster = tokio::task::spawn_blocking(shared_cluster)
        .await
        .expect("the cluster starts");
    let (mut config, _, _) = config_via_other_node(&cluster, limit);
    // As in `support::contract_limiter`: behaviour, not failover.
    config.connection.op_timeout = Duration::from_secs(3);
    let limiter = RedisLimiter::connect_with_memory_fallback(config)
        .await
        .expect("limiter builds");
    let stats = limiter.stats().await;
    assert!(!stats.degraded, "the cluster is up: {stats:?}");
    Arc::new(ClusterLimiter {
        limiter,
        _cluster: cluster,
    })
}

/// The whole limiter contract, on a cluster, through a node that does not own the slot.
mod contract {
    ports::limiter_contract_tests!(crate::cluster::cluster_contract_limiter);
}

/// The shared records of a limiter on a cluster (its hash tag, so its slot), through a node
/// that does not own the slot.
pub async fn cluster_records() -> Arc<dyn ports::SharedRecords> {
    let cluster = tokio::task::spawn_blocking(shared_cluster)
        .await
        .expect("the cluster starts");
    let (mut config, _, _) = config_via_other_node(&cluster, 4);
    config.connection.op_timeout = Duration::from_secs(3);
    let limiter = RedisLimiter::connect_with_memory_fallback(config)
        .await
        .expect("limiter builds");
    assert!(!limiter.is_degraded(), "the cluster is up");
    Arc::new(ClusterRecords {
        records: limiter.records(),
        _limiter: limiter,
        _cluster: cluster,
    })
}

struct ClusterRecords {
    records: limiter_redis::RedisRecords,
    _limiter: RedisLimiter,
    _cluster: Arc<RedisCluster>,
}

#[async_trait::async_trait]
impl ports::SharedRecords for ClusterRecords {
    async fn load(&self, name: &str) -> Result<Option<ports::Versioned>, ports::RecordsError> {
        self.records.load(name).await
    }
    async fn swap(
        &self,
        name: &str,
        expected: Option<u64>,
        value: &str,
    ) -> Result<ports::Swap, ports::RecordsError> {
        self.records.swap(name, expected, value).await
    }
}

mod records_contract {
    ports::records_contract_tests!(crate::cluster::cluster_records);
}

/// A plain client on one node (no cluster routing), to look at what that node holds.
async fn node_client(port: u16) -> fred::prelude::Client {
    let url = format!("redis://127.0.0.1:{port}");
    let client = Builder::from_config(Config::from_url(&url).unwrap())
        .build()
        .unwrap();
    client.init().await.expect("node client connects");
    client
}

async fn start_cluster(replicas: bool) -> RedisCluster {
    tokio::task::spawn_blocking(move || {
        if replicas {
            RedisCluster::start_with_replicas()
        } else {
            RedisCluster::start()
        }
    })
    .await
    .expect("the cluster starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_url_at_a_node_without_the_slot_keeps_every_key_on_the_slot_owner() {
    let cluster = start_cluster(false).await;
    let (config, owner, other) = config_via_other_node(&cluster, 2);
    let name = config.name.clone();
    let limiter = RedisLimiter::connect_with_memory_fallback(config)
        .await
        .unwrap();
    let permit = limiter
        .acquire(&Priority::High.into(), Duration::from_secs(5))
        .await
        .expect("a slot from the cluster");
    let stats = limiter.stats().await;
    assert!(!stats.degraded, "{stats:?}");
    assert_eq!((stats.active, stats.backend.serving.as_str()), (1, "redis"));
    assert_eq!(
        stats.backend.address.as_deref(),
        Some(format!("127.0.0.1:{other}").as_str())
    );
    // Every key of the limiter is on the node that owns the hash tag's slot.
    let on_owner = node_client(owner).await;
    let holders: i64 = on_owner
        .custom(fred::cmd!("ZCARD"), vec![format!("{}:holders", tag(&name))])
        .await
        .unwrap();
    let limit: Option<i64> = on_owner
        .hget(format!("{}:meta", tag(&name)), "limit")
        .await
        .unwrap();
    assert_eq!((holders, limit), (1, Some(2)));
    let on_other = node_client(other).await;
    let here: Result<i64, _> = on_other
        .custom(fred::cmd!("ZCARD"), vec![format!("{}:holders", tag(&name))])
        .await;
    let moved = here.expect_err("the other node does not own the slot");
    assert!(moved.details().starts_with("MOVED"), "{moved:?}");
    permit.release().await.unwrap();
    assert_eq!(limiter.stats().await.active, 0);
}

/// A plain `redis://` URL at a cluster node that does not own the slot: the node answers
/// `MOVED`, which the limiter names (reason `cluster`), never as `other`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_url_at_a_node_without_the_slot_is_reported_as_cluster() {
    let cluster = start_cluster(false).await;
    let (mut config, _, other) = config_via_other_node(&cluster, 2);
    config.connection.url = format!("redis://127.0.0.1:{other}");
    let limiter = RedisLimiter::connect_with_memory_fallback(crate::support::short_ttls(config))
        .await
        .expect("a wrong topology is not a build error");
    // The first call hits MOVED and fails over; calls keep being served from memory.
    let permit = limiter
        .acquire(&Priority::Normal.into(), Duration::from_secs(2))
        .await
        .expect("served by the fallback");
    let stats = limiter.stats().await;
    assert!(stats.degraded, "{stats:?}");
    assert_eq!(stats.backend.serving, "memory");
    assert_eq!(stats.backend.degraded_reason, Some(DegradedReason::Cluster));
    assert_eq!(
        stats.backend.address.as_deref(),
        Some(format!("127.0.0.1:{other}").as_str())
    );
    let json = serde_json::to_value(&stats).unwrap();
    assert_eq!(json["degraded_reason"], "cluster");
    permit.release().await.unwrap();
}

/// A waiter in one limiter (URL naming one node) is woken by the grant a release in another
/// limiter (URL naming another node) publishes: well before its safety poll, which this
/// config puts at 2.5 s or more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_wakes_a_waiter_connected_through_another_node_at_once() {
    let cluster = start_cluster(false).await;
    let (mut holder_config, owner, other) = config_via_other_node(&cluster, 1);
    holder_config.safety_poll = Duration::from_secs(5);
    holder_config.grant_ttl = Duration::from_secs(10);
    holder_config.waiter_ttl = Duration::from_secs(30);
    let mut waiter_config = holder_config.clone();
    waiter_config.connection.url = cluster.url_via(owner);
    holder_config.connection.url = cluster.url_via(other);
    let holder = RedisLimiter::connect_with_memory_fallback(holder_config)
        .await
        .unwrap();
    let waiter = Arc::new(
        RedisLimiter::connect_with_memory_fallback(waiter_config)
            .await
            .unwrap(),
    );
    for round in 0..3 {
        let gate = holder
            .acquire(&Priority::Normal.into(), Duration::from_secs(5))
            .await
            .unwrap();
        let w = Arc::clone(&waiter);
        let next = tokio::spawn(async move {
            let permit = w
                .acquire(&Priority::Normal.into(), Duration::from_secs(20))
                .await;
            (permit, Instant::now())
        });
        wait_until(&holder, Duration::from_secs(5), "the waiter queued", |s| {
            s.queued.normal == 1
        })
        .await;
        // Let the waiter's first check pass, so only a wake-up or a poll can serve it.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let released = Instant::now();
        gate.release().await.unwrap();
        let (permit, granted) = next.await.unwrap();
        let woken = granted - released;
        report(
            &format!("cluster wake-up across nodes, round {round}"),
            woken,
        );
        assert!(
            woken < Duration::from_secs(1),
            "round {round}: the waiter was served {woken:?} after the release: by its \
             poll, not by the published grant"
        );
        permit.unwrap().release().await.unwrap();
    }
    assert!(!holder.stats().await.degraded);
    assert!(!waiter.stats().await.degraded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_limit_holds_across_processes_on_a_cluster() {
    use crate::processes::Holder;
    let cluster = start_cluster(false).await;
    let name = unique_name("cluster-procs");
    // Each process names another node in its URL.
    let ports = cluster.ports();
    let mut holders: Vec<Holder> = ["low", "normal", "high", "critical"]
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Holder::spawn(
                &cluster.url_via(ports[i % ports.len()]),
                &name,
                &[
                    ("limit", "3"),
                    ("priority", p),
                    ("count", "6"),
                    ("hold-ms", "30"),
                ],
            )
        })
        .collect();
    for h in &mut holders {
        h.finish(Duration::from_secs(60));
    }
    let redis = Builder::from_config(Config::from_url(&cluster.url()).unwrap())
        .build()
        .unwrap();
    redis.init().await.unwrap();
    let (peak, failed, order) = crate::processes::bookkeeping_on(&redis, &name).await;
    assert_eq!(failed, 0, "every acquire must be served");
    assert_eq!(order.len(), 24);
    assert!(
        (1..=3).contains(&peak),
        "peak {peak} concurrent holders with a limit of 3"
    );
}

/// The master that owns the limiter's slot is SIGKILLed under load; the cluster promotes its
/// replica (`cluster-node-timeout` 1 s). Meanwhile the limiter serves from its fallback
/// (local share 1, so at most limit + 1 held); once the replica serves the slot it is back
/// on Redis, holds no more than the limit, stays there, and leaks nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_failover_keeps_the_limit_and_the_limiter_returns_to_redis() {
    const LIMIT: u32 = 3;
    const SHARE: u32 = 1;
    let mut cluster = start_cluster(true).await;
    let name = unique_name("cluster-failover");
    let slot = cluster.keyslot(&tag(&name));
    let owner = cluster.master_of(slot);
    let promoted_replica = cluster.replica_of(owner);
    let mut config = fast_failover(RedisLimiterConfig::new(cluster.url(), name));
    config.max_concurrent = LIMIT;
    config.local_share = Some(SHARE);
    config.lease_ttl = Duration::from_secs(3);
    let limiter = Arc::new(
        RedisLimiter::connect_with_memory_fallback(config)
            .await
            .unwrap(),
    );
    let load = Load::start(&limiter, 6, Duration::from_millis(30));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = limiter.stats().await;
    assert!(!before.degraded, "{before:?}");
    assert!(load.grants() > 0, "the load runs");

    let killed = Instant::now();
    tokio::task::block_in_place(|| cluster.kill(owner));
    wait_until(
        &*limiter,
        Duration::from_secs(5),
        "the limiter notices the dead master",
        |s| s.degraded,
    )
    .await;
    let new_master = tokio::task::block_in_place(|| {
        cluster.wait_for_new_master(slot, owner, Duration::from_secs(20))
    });
    let promoted = killed.elapsed();
    assert_eq!(
        new_master, promoted_replica,
        "the dead master's replica took over"
    );
    let stats = wait_until(
        &*limiter,
        Duration::from_secs(15),
        "the limiter back on redis",
        |s| !s.degraded,
    )
    .await;
    let recovered = killed.elapsed();
    report(
        "cluster failover: master SIGKILLed -> replica promoted",
        promoted,
    );
    report(
        "cluster failover: master SIGKILLed -> limiter back on redis",
        recovered,
    );
    assert!(stats.max_concurrent == LIMIT, "{stats:?}");
    assert!(
        recovered < Duration::from_secs(10),
        "back on redis {recovered:?} after the kill"
    );

    // Permits of the outage (memory, held 30 ms) are gone well within 300 ms; from then on
    // only Redis grants, so no more than the limit is held.
    tokio::time::sleep(Duration::from_millis(300)).await;
    load.reset_peak();
    let grants = load.grants();
    stays_on_redis(&limiter, Duration::from_millis(1_500)).await;
    assert!(
        load.grants() > grants + 10,
        "the load is served after the failover"
    );
    let counts = load.stop().await;
    crate::load::assert_failover_kept_the_limit(
        "cluster failover",
        &limiter,
        &counts,
        LIMIT,
        SHARE,
    )
    .await;
}
