//! A store on a Redis that persists nothing says so when it connects: a restart of that
//! Redis loses every job.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobstore_redis::RedisJobStore;
use redis_connect::RedisConnectionConfig;
use test_support::redis::RedisServer;
use test_support::unique_name;

/// Log lines written by the test's subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

async fn connect_logged(server: &RedisServer) -> String {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // The connect runs on this (current-thread) runtime's thread, so it logs here.
    let _guard = tracing::subscriber::set_default(subscriber);
    let mut config = RedisConnectionConfig::new(server.url());
    config.op_timeout = Duration::from_secs(5);
    let store = RedisJobStore::connect(config, &unique_name("persist"))
        .await
        .expect("the store connects");
    store.quit().await;
    logs.text()
}

fn config_set(server: &RedisServer, name: &str, value: &str) {
    let out = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &server.port().to_string(),
            "CONFIG",
            "SET",
            name,
            value,
        ])
        .output()
        .expect("redis-cli runs (apt-get install -y redis-tools)");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
}

#[tokio::test]
async fn a_redis_without_persistence_is_named_at_connect_and_one_with_snapshots_is_not() {
    // The test servers run with `--save "" --appendonly no`.
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let logs = connect_logged(&server).await;
    assert!(logs.contains("persists nothing"), "{logs}");
    assert!(logs.contains("WARN"), "{logs}");
    // RDB snapshots (one an hour after a write): persistence that writes nothing during the
    // test. AOF would write at once, into the server's working directory (the source tree),
    // and `dir` is a protected setting.
    config_set(&server, "save", "3600 1");
    let logs = connect_logged(&server).await;
    assert!(!logs.contains("persists nothing"), "{logs}");
}
