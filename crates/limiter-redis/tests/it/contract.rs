//! The shared `ConcurrencyLimiter` contract suite, run against the Redis limiter (each test
//! on its own fresh `redis-server`).

use crate::support::contract_limiter;

ports::limiter_contract_tests!(contract_limiter);

/// The shared-records contract, on the limiter's Redis.
mod records {
    use std::sync::{Arc, Mutex, Weak};

    use limiter_redis::RedisLimiter;
    use ports::{SharedRecords, Swap, Versioned};
    use test_support::redis::RedisServer;

    use crate::support::config;

    /// One redis-server for the records tests (each gets a limiter of its own name, so
    /// records no other test sees): fewer servers on a loaded machine.
    fn shared_server() -> Arc<RedisServer> {
        static SHARED: Mutex<Weak<RedisServer>> = Mutex::new(Weak::new());
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(server) = shared.upgrade() {
            return server;
        }
        let server = Arc::new(RedisServer::start());
        *shared = Arc::downgrade(&server);
        server
    }

    /// Records of a fresh limiter (its own name) on the shared server, kept alive by the
    /// records it returns.
    async fn records() -> Arc<dyn SharedRecords> {
        let server = tokio::task::spawn_blocking(shared_server)
            .await
            .expect("redis starts");
        let mut config = config(&server, 4);
        config.name = crate::support::unique_name("records");
        config.connection.op_timeout = std::time::Duration::from_secs(3);
        let limiter = RedisLimiter::connect_with_memory_fallback(config)
            .await
            .expect("limiter builds");
        assert!(
            !limiter.is_degraded(),
            "redis is up, the limiter must use it"
        );
        Arc::new(Owned {
            records: limiter.records(),
            _limiter: limiter,
            _server: server,
        })
    }

    struct Owned {
        records: limiter_redis::RedisRecords,
        _limiter: RedisLimiter,
        _server: Arc<RedisServer>,
    }

    #[async_trait::async_trait]
    impl SharedRecords for Owned {
        async fn load(&self, name: &str) -> Result<Option<Versioned>, ports::RecordsError> {
            self.records.load(name).await
        }
        async fn swap(
            &self,
            name: &str,
            expected: Option<u64>,
            value: &str,
        ) -> Result<Swap, ports::RecordsError> {
            self.records.swap(name, expected, value).await
        }
    }

    ports::records_contract_tests!(records);

    /// A stopped Redis is a typed `Unavailable`, within the limiter's operation timeout.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_redis_is_unavailable_not_a_hang() {
        let server = RedisServer::start();
        let limiter = RedisLimiter::connect_with_memory_fallback(config(&server, 4))
            .await
            .unwrap();
        let records = limiter.records();
        assert!(matches!(
            records.swap("limit", None, "{}").await,
            Ok(Swap::Stored(1))
        ));
        drop(server);
        let started = std::time::Instant::now();
        assert!(matches!(
            records.load("limit").await,
            Err(ports::RecordsError::Unavailable(_))
        ));
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }
}
