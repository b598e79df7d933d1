//! The job-store contract suite against real Redis servers started by `test-support`: a
//! standalone `redis-server`, then a 3-master Redis Cluster reached through a
//! `redis-cluster://` URL. Each store has a name of its own, so the tests of one run share
//! one server (one cluster) at a time; the last test to finish drops it, which kills it.

use std::any::Any;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use jobstore_redis::RedisJobStore;
use ports::JobStore;
use ports::job_contract::Guarded;
use redis_connect::RedisConnectionConfig;
use test_support::redis::{RedisCluster, RedisServer};
use test_support::unique_name;

/// The server `start` gives, shared by the tests that run at the same time.
fn shared<T: Send + Sync + 'static>(slot: &Mutex<Weak<T>>, start: fn() -> T) -> Arc<T> {
    let mut shared = slot.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(server) = shared.upgrade() {
        return server;
    }
    let server = Arc::new(start());
    *shared = Arc::downgrade(&server);
    server
}

/// A config with generous timeouts: the suite checks behaviour, not latency (a busy CI
/// machine runs many tests at once).
fn config(url: String) -> RedisConnectionConfig {
    let mut config = RedisConnectionConfig::new(url);
    config.op_timeout = Duration::from_secs(5);
    config.connect_timeout = Duration::from_secs(5);
    config
}

async fn kept(url: String, server: Arc<dyn Any + Send + Sync>) -> Arc<dyn JobStore> {
    let store = RedisJobStore::connect(config(url), &unique_name("jobs"))
        .await
        .expect("the store connects");
    assert_eq!(store.kind(), "redis");
    // The server lives as long as the stores on it.
    Arc::new(Guarded::new(store, server))
}

/// A fresh store (a name of its own) on the shared standalone server.
async fn new_store() -> Arc<dyn JobStore> {
    static SERVER: Mutex<Weak<RedisServer>> = Mutex::new(Weak::new());
    let server = tokio::task::spawn_blocking(|| shared(&SERVER, RedisServer::start))
        .await
        .expect("the server starts");
    kept(server.url(), server).await
}

ports::job_store_contract_tests!(new_store);

/// The credit ledger of a fresh store on the shared standalone server.
mod credits {
    use super::*;
    use ports::CreditLedger;

    async fn new_ledger() -> Arc<dyn CreditLedger> {
        static SERVER: Mutex<Weak<RedisServer>> = Mutex::new(Weak::new());
        let server = tokio::task::spawn_blocking(|| shared(&SERVER, RedisServer::start))
            .await
            .expect("the server starts");
        let store = RedisJobStore::connect(config(server.url()), &unique_name("credits"))
            .await
            .expect("the store connects");
        Arc::new(Guarded::new(store, server))
    }

    ports::credit_ledger_contract_tests!(new_ledger);
}

/// The upload cache of a fresh store on the shared standalone server.
mod uploads {
    use super::*;
    use ports::UploadCache;

    async fn new_cache() -> Arc<dyn UploadCache> {
        static SERVER: Mutex<Weak<RedisServer>> = Mutex::new(Weak::new());
        let server = tokio::task::spawn_blocking(|| shared(&SERVER, RedisServer::start))
            .await
            .expect("the server starts");
        let store = RedisJobStore::connect(config(server.url()), &unique_name("uploads"))
            .await
            .expect("the store connects");
        Arc::new(Guarded::new(store, server))
    }

    ports::upload_cache_contract_tests!(new_cache);

    /// The cache's four keys expire an hour after its last entry does, so a cache nobody
    /// writes to any more leaves nothing behind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cache_keys_expire_an_hour_after_the_last_entry() {
        use domain::{Asset, Tenant, UploadKind};
        use ports::{CachedUpload, UploadKey};

        let server = tokio::task::spawn_blocking(RedisServer::start)
            .await
            .expect("the server starts");
        let name = unique_name("upload-ttl");
        let store = RedisJobStore::connect(config(server.url()), &name)
            .await
            .expect("the store connects");
        let now = 1_800_000_000_000u64;
        for (n, expires) in [
            (1u32, now + 60_000),
            (2, now + 7_200_000),
            (3, now + 30_000),
        ] {
            let key = UploadKey {
                tenant: Tenant::parse("web").unwrap(),
                kind: UploadKind::Image,
                sha256: format!("{n:064x}"),
            };
            let entry = CachedUpload {
                asset: Asset {
                    id: None,
                    url: format!("s3://d-id-images-prod/u/{n}.png"),
                    duration: None,
                },
                audio_seconds: None,
                expires_ms: expires,
            };
            store.cache_upload(&key, &entry, now, 10).await.unwrap();
        }
        let tag = jobstore_redis::hash_tag(&name);
        for key in ["uploads", "upload_expiry", "upload_urls", "upload_url_of"] {
            let reply = server.command(None, &["PTTL", &format!("{tag}:{key}")]);
            let ttl: i64 = reply.trim_start_matches(':').parse().expect(&reply);
            // The last entry expires in 2 h: the key an hour later (less the test's time).
            assert!(
                (10_700_000..=10_800_000).contains(&ttl),
                "{key}: PTTL {ttl}"
            );
        }
    }
}

/// The same suite on a real 3-master cluster.
mod cluster {
    use super::*;

    /// The cluster the job and upload-cache suites share while both run.
    static CLUSTER: Mutex<Weak<RedisCluster>> = Mutex::new(Weak::new());

    /// A fresh store on the shared cluster, through a URL that names every node.
    async fn new_cluster_store() -> Arc<dyn JobStore> {
        let cluster = tokio::task::spawn_blocking(|| {
            let cluster = shared(&CLUSTER, RedisCluster::start);
            cluster.wait_until_ok(Duration::from_secs(30));
            cluster
        })
        .await
        .expect("the cluster starts");
        kept(cluster.url(), cluster).await
    }

    ports::job_store_contract_tests!(new_cluster_store);

    /// The upload cache on the cluster: every script's keys are in the store's one slot.
    mod uploads {
        use super::*;
        use ports::UploadCache;

        async fn new_cluster_cache() -> Arc<dyn UploadCache> {
            let cluster = tokio::task::spawn_blocking(|| {
                let cluster = shared(&CLUSTER, RedisCluster::start);
                cluster.wait_until_ok(Duration::from_secs(30));
                cluster
            })
            .await
            .expect("the cluster starts");
            let store = RedisJobStore::connect(config(cluster.url()), &unique_name("uploads"))
                .await
                .expect("the store connects");
            Arc::new(Guarded::new(store, cluster))
        }

        ports::upload_cache_contract_tests!(new_cluster_cache);
    }
}
