//! A real local Redis Sentinel setup: a primary, one replica (`--replicaof`) and two
//! sentinels (`redis-server <conf> --sentinel`, the same binary the `redis-sentinel` package
//! links), each on free loopback ports, with a generated `sentinel.conf` per sentinel in a
//! unique temporary directory: quorum 1, `down-after-milliseconds 1000`, `failover-timeout
//! 3000`, so a SIGKILLed primary is replaced by its replica within a few seconds. Every
//! process is SIGKILLed on drop.

use std::time::Duration;

use super::procs::{Proc, TempDir, cli, poll};
use crate::{free_port, unique_name};

/// How long a start (processes, replication, sentinels finding each other) may take.
const START: Duration = Duration::from_secs(30);

/// A primary, its replica and the sentinels watching them.
pub struct RedisSentinel {
    servers: Vec<Proc>,
    sentinels: Vec<Proc>,
    service: String,
    _dir: TempDir,
}

impl RedisSentinel {
    /// Starts the primary, the replica and two sentinels, and waits until the replica is in
    /// sync and each sentinel knows the replica and the other sentinel (so either may lead a
    /// failover, and a majority of the two agrees on one).
    pub fn start() -> Self {
        for _ in 0..5 {
            if let Some(setup) = Self::try_start() {
                return setup;
            }
        }
        panic!("the redis sentinel setup did not start on any of 5 sets of free ports");
    }

    fn try_start() -> Option<Self> {
        let dir = TempDir::new("talkgate-sentinel");
        let service = unique_name("talkgate").replace('-', "_");
        let server = |port: u16, extra: &[String]| {
            let mut args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &dir.path().display().to_string(),
            ]
            .map(str::to_owned)
            .to_vec();
            args.extend_from_slice(extra);
            Proc::spawn(port, &args)
        };
        let primary_port = free_port();
        let mut primary = server(primary_port, &[]);
        if !answers(&mut primary) {
            return None;
        }
        let replica_port = free_port();
        let mut replica = server(
            replica_port,
            &[
                "--replicaof".to_owned(),
                "127.0.0.1".to_owned(),
                primary_port.to_string(),
            ],
        );
        if !answers(&mut replica) {
            return None;
        }
        let mut sentinels = Vec::new();
        for _ in 0..2 {
            let port = free_port();
            let conf = dir.file(&format!("sentinel-{port}.conf"));
            let text = format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor {service} 127.0.0.1 {primary_port} 1\n\
                 sentinel down-after-milliseconds {service} 1000\n\
                 sentinel failover-timeout {service} 3000\n\
                 sentinel parallel-syncs {service} 1\n",
                dir = dir.path().display(),
            );
            std::fs::write(&conf, text).expect("sentinel.conf written");
            let mut sentinel = Proc::spawn(port, &[conf, "--sentinel".to_owned()]);
            if !answers(&mut sentinel) {
                return None;
            }
            sentinels.push(sentinel);
        }
        let setup = RedisSentinel {
            servers: vec![primary, replica],
            sentinels,
            service,
            _dir: dir,
        };
        poll(START, "the replica in sync and the sentinels ready", || {
            let replication = cli(replica_port, &["INFO", "replication"]).unwrap_or_default();
            if !replication.contains("master_link_status:up") {
                return Err(format!("replica not in sync: {replication}"));
            }
            for s in &setup.sentinels {
                let master = setup.sentinel_master(s.port)?;
                let field = |name: &str| {
                    master
                        .windows(2)
                        .find(|w| w[0] == name)
                        .map(|w| w[1].clone())
                        .unwrap_or_default()
                };
                if field("num-slaves") != "1" || field("num-other-sentinels") != "1" {
                    return Err(format!("sentinel {}: {master:?}", s.port));
                }
            }
            Ok(())
        });
        Some(setup)
    }

    /// The service (master) name the sentinels monitor.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// A `redis-sentinel://` URL naming both sentinels (the first in the authority, the other
    /// as `?node=`) and the service.
    pub fn url(&self) -> String {
        format!(
            "redis-sentinel://127.0.0.1:{}/0?sentinelServiceName={}&node=127.0.0.1:{}",
            self.sentinels[0].port, self.service, self.sentinels[1].port
        )
    }

    /// The port of the primary the sentinels name now (`SENTINEL get-master-addr-by-name`).
    pub fn primary(&self) -> u16 {
        let answer = cli(
            self.sentinels[0].port,
            &["SENTINEL", "get-master-addr-by-name", &self.service],
        )
        .expect("the sentinel answers");
        answer
            .lines()
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("get-master-addr-by-name answered {answer:?}"))
    }

    /// The ports of the data servers (primary and replica), live or not.
    pub fn server_ports(&self) -> Vec<u16> {
        self.servers.iter().map(|s| s.port).collect()
    }

    /// SIGKILLs the data server on `port`.
    pub fn kill(&mut self, port: u16) {
        self.servers
            .iter_mut()
            .find(|s| s.port == port)
            .unwrap_or_else(|| panic!("no server on {port}"))
            .kill();
    }

    /// Waits until every sentinel names a primary other than `old` and that server says it
    /// is a master; returns its port.
    pub fn wait_for_new_primary(&self, old: u16, within: Duration) -> u16 {
        poll(within, "a sentinel failover", || {
            let mut named = None;
            for s in &self.sentinels {
                let answer = cli(
                    s.port,
                    &["SENTINEL", "get-master-addr-by-name", &self.service],
                )
                .ok_or(format!("sentinel {} is down", s.port))?;
                let port: u16 = answer
                    .lines()
                    .nth(1)
                    .and_then(|p| p.trim().parse().ok())
                    .ok_or(format!("sentinel {} answered {answer:?}", s.port))?;
                if port == old || named.is_some_and(|n| n != port) {
                    return Err(format!("sentinel {} names {port}", s.port));
                }
                named = Some(port);
            }
            let port = named.ok_or("no sentinel")?;
            let role = cli(port, &["ROLE"]).ok_or(format!("{port} is down"))?;
            if role.lines().next() == Some("master") {
                Ok(port)
            } else {
                Err(format!("{port} is still {role:?}"))
            }
        })
    }

    /// `SENTINEL MASTER <service>` as its flat list of fields and values.
    fn sentinel_master(&self, port: u16) -> Result<Vec<String>, String> {
        let text = cli(port, &["SENTINEL", "MASTER", &self.service])
            .ok_or(format!("sentinel {port} is down"))?;
        Ok(text.lines().map(str::to_owned).collect())
    }
}

/// Waits until the process answers `PING` (false: it exited, e.g. it lost its port).
fn answers(proc: &mut Proc) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if cli(proc.port, &["PING"]).is_some_and(|r| r.trim() == "PONG") {
            return true;
        }
        if proc.exited() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sentinels_promote_the_replica_when_the_primary_is_killed() {
        let mut setup = RedisSentinel::start();
        let primary = setup.primary();
        assert_eq!(setup.server_ports()[0], primary);
        assert!(setup.url().contains(setup.service()));
        setup.kill(primary);
        let started = std::time::Instant::now();
        let promoted = setup.wait_for_new_primary(primary, Duration::from_secs(20));
        assert_eq!(promoted, setup.server_ports()[1]);
        assert!(started.elapsed() < Duration::from_secs(20));
    }
}
