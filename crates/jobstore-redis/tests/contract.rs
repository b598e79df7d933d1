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
}

/// The same suite on a real 3-master cluster.
mod cluster {
    use super::*;

    /// A fresh store on the shared cluster, through a URL that names every node.
    async fn new_cluster_store() -> Arc<dyn JobStore> {
        static CLUSTER: Mutex<Weak<RedisCluster>> = Mutex::new(Weak::new());
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
}
