//! Test support of the limiter's tests: configs, limiters and the contract factories over a
//! real `redis-server`. The server itself (plain or TLS, with [`TestPki`]'s certificates) is
//! the shared harness of `test_support::redis`, re-exported here for the test modules.

use std::sync::Arc;
use std::time::Duration;

use limiter_redis::{RedisLimiter, RedisLimiterConfig};
use ports::{ConcurrencyLimiter, LimiterStats};
pub use test_support::redis::{ClientCerts, RedisServer, TestPki};
pub use test_support::{free_port, unique_name};

/// A config for `server`'s TLS port that trusts the test CA, with a unique name and `limit`.
pub fn tls_config(server: &RedisServer, pki: &TestPki, limit: u32) -> RedisLimiterConfig {
    let mut config = RedisLimiterConfig::new(server.tls_url(), unique_name("tls"));
    config.max_concurrent = limit;
    config.connection.tls.ca_file = Some(pki.ca_file());
    config
}

/// A config for `server` with a unique name, `limit`, and the default timings.
pub fn config(server: &RedisServer, limit: u32) -> RedisLimiterConfig {
    let mut config = RedisLimiterConfig::new(server.url(), unique_name("t"));
    config.max_concurrent = limit;
    config
}

/// Short leases and tickets, for crash and fault tests.
pub fn short_ttls(mut config: RedisLimiterConfig) -> RedisLimiterConfig {
    config.lease_ttl = Duration::from_secs(1);
    config.waiter_ttl = Duration::from_secs(1);
    config.connection.connect_timeout = Duration::from_millis(300);
    config.probe_interval = Duration::from_millis(100);
    config.safety_poll = Duration::from_millis(200);
    config
}

/// [`short_ttls`] plus a 200 ms op timeout, for the failover tests that measure it.
pub fn fast_failover(config: RedisLimiterConfig) -> RedisLimiterConfig {
    let mut config = short_ttls(config);
    config.connection.op_timeout = Duration::from_millis(200);
    config
}

/// A limiter that owns its server (and the server's certificates, if any), so the server
/// lives exactly as long as the limiter.
pub struct OwnedServerLimiter {
    limiter: RedisLimiter,
    _server: RedisServer,
    _pki: Option<TestPki>,
}

#[async_trait::async_trait]
impl ConcurrencyLimiter for OwnedServerLimiter {
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

/// The contract suite's factory: a fresh server and a fresh limiter with default timings.
pub async fn contract_limiter(limit: u32) -> Arc<dyn ConcurrencyLimiter> {
    let server = RedisServer::start();
    let mut config = config(&server, limit);
    // The contract is about behaviour, not failover: on a loaded 2-core CI box a 500 ms
    // hiccup must not switch the limiter to its fallback mid-test.
    config.connection.op_timeout = Duration::from_secs(3);
    let limiter = RedisLimiter::connect_with_memory_fallback(config)
        .await
        .expect("limiter builds");
    assert!(
        !limiter.is_degraded(),
        "redis is up, the limiter must use it"
    );
    Arc::new(OwnedServerLimiter {
        limiter,
        _server: server,
        _pki: None,
    })
}

/// The contract suite's factory over TLS: a fresh TLS server, certificates and limiter.
pub async fn tls_contract_limiter(limit: u32) -> Arc<dyn ConcurrencyLimiter> {
    let pki = TestPki::generate();
    let server = RedisServer::start_tls(&pki, ClientCerts::Optional);
    let mut config = tls_config(&server, &pki, limit);
    // As in `contract_limiter`: behaviour, not failover.
    config.connection.op_timeout = Duration::from_secs(3);
    let limiter = RedisLimiter::connect_with_memory_fallback(config)
        .await
        .expect("limiter builds");
    let stats = limiter.stats().await;
    assert!(
        !stats.degraded,
        "redis is up over TLS, the limiter must use it: {stats:?}"
    );
    Arc::new(OwnedServerLimiter {
        limiter,
        _server: server,
        _pki: Some(pki),
    })
}

/// Polls `limiter.stats()` until `pred` holds, failing after `within` with the last stats.
pub async fn wait_until(
    limiter: &dyn ConcurrencyLimiter,
    within: Duration,
    what: &str,
    pred: impl Fn(&LimiterStats) -> bool,
) -> LimiterStats {
    test_support::eventually(within, what, || async {
        let stats = limiter.stats().await;
        if pred(&stats) { Ok(stats) } else { Err(stats) }
    })
    .await
}

/// Prints a measured figure to the test output (`--nocapture` shows it), for the benchmark
/// notes; the assertions next to each call are what the test checks.
#[allow(clippy::print_stderr)]
pub fn report(what: &str, took: Duration) {
    eprintln!("MEASURED {what}: {} ms", took.as_millis());
}

/// A plain fred client on `server`, for poking at the limiter's keys.
pub async fn raw_client(server: &RedisServer) -> fred::prelude::Client {
    use fred::prelude::{Builder, ClientLike, Config};
    let client = Builder::from_config(Config::from_url(&server.url()).unwrap())
        .build()
        .unwrap();
    client.init().await.expect("raw redis client connects");
    client
}
