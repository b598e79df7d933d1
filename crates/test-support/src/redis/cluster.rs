//! A real local Redis Cluster: three masters (and, for failover tests, one replica each), each
//! a `redis-server --cluster-enabled yes` on free loopback ports with its node file in a unique
//! temporary directory, joined by `redis-cli --cluster create`, and ready once every node's
//! `CLUSTER INFO` says `cluster_state:ok`. Every node is SIGKILLed on drop.
//!
//! The helpers answer what the tests ask a cluster: which node owns a key's slot
//! (`CLUSTER KEYSLOT` + `CLUSTER NODES`), which node does not, which replica follows a master,
//! and, after a master is killed, when its replica has taken over.

use std::time::Duration;

use super::procs::{INSTALL, Proc, TempDir, cli, poll};
use crate::free_port;

/// How long a start (all nodes, the create, the first `cluster_state:ok`) may take.
const START: Duration = Duration::from_secs(30);

/// A running cluster.
pub struct RedisCluster {
    nodes: Vec<Proc>,
    _dir: TempDir,
}

/// One line of `CLUSTER NODES`, as far as the tests need it.
#[derive(Debug, Clone)]
struct NodeLine {
    id: String,
    port: u16,
    master: bool,
    failed: bool,
    /// The master's id, for a replica.
    master_id: Option<String>,
    slots: Vec<(u16, u16)>,
}

impl RedisCluster {
    /// Three masters, no replica, the default `cluster-node-timeout` of 5 s (no node of a
    /// busy CI machine is voted out by accident).
    pub fn start() -> Self {
        Self::start_with(0, Duration::from_secs(5))
    }

    /// Three masters with one replica each and a `cluster-node-timeout` of 1 s, so a replica
    /// takes over about 2 s after its master dies. `cluster-replica-validity-factor 0`: a
    /// replica always may take over, however long its link was down.
    pub fn start_with_replicas() -> Self {
        Self::start_with(1, Duration::from_secs(1))
    }

    fn start_with(replicas: usize, node_timeout: Duration) -> Self {
        let count = 3 * (1 + replicas);
        for _ in 0..5 {
            if let Some(cluster) = Self::try_start(count, replicas, node_timeout) {
                return cluster;
            }
        }
        panic!("the redis cluster did not start on any of 5 sets of free ports");
    }

    fn try_start(count: usize, replicas: usize, node_timeout: Duration) -> Option<Self> {
        let dir = TempDir::new("talkgate-cluster");
        let mut nodes: Vec<Proc> = (0..count)
            .map(|_| {
                let (port, bus) = (free_port(), free_port());
                let args: Vec<String> = [
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &dir.file(&format!("nodes-{port}.conf")),
                    "--cluster-port",
                    &bus.to_string(),
                    "--cluster-node-timeout",
                    &node_timeout.as_millis().to_string(),
                    "--cluster-replica-validity-factor",
                    "0",
                    "--dir",
                    &dir.path().display().to_string(),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ]
                .map(str::to_owned)
                .to_vec();
                Proc::spawn(port, &args)
            })
            .collect();
        // Every node answers, or one lost the race for a port and the caller tries again.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        for node in &mut nodes {
            loop {
                if cli(node.port, &["PING"]).is_some_and(|r| r.trim() == "PONG") {
                    break;
                }
                if node.exited() || std::time::Instant::now() > deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let create = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(std::process::Stdio::null())
            .output();
        let create = match create {
            Ok(o) => o,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("redis-cli not found: install it with `{INSTALL}`")
            }
            Err(e) => panic!("could not run redis-cli: {e}"),
        };
        assert!(
            create.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&create.stdout)
        );
        let cluster = RedisCluster { nodes, _dir: dir };
        cluster.wait_until_ok(START);
        Some(cluster)
    }

    /// Waits until every live node says `cluster_state:ok` and knows every live node, and
    /// every replica's link to its master is up (a replica that never synced cannot stand
    /// in for its master).
    pub fn wait_until_ok(&self, within: Duration) {
        let live: Vec<u16> = self.ports();
        poll(within, "cluster_state:ok on every node", || {
            for &port in &live {
                let info = cli(port, &["CLUSTER", "INFO"]).ok_or(format!("{port} is down"))?;
                if !info.contains("cluster_state:ok") {
                    return Err(format!("{port}: {info}"));
                }
                let lines = self.nodes_seen_by(port)?;
                let known = lines.iter().filter(|l| !l.failed).count();
                if known < live.len() {
                    return Err(format!("{port} knows {known} of {} nodes", live.len()));
                }
                let me = lines.iter().find(|l| l.port == port);
                if me.is_some_and(|l| !l.master) {
                    let replication = cli(port, &["INFO", "replication"]).unwrap_or_default();
                    if !replication.contains("master_link_status:up") {
                        return Err(format!("replica {port} not in sync: {replication}"));
                    }
                }
            }
            Ok(())
        });
    }

    /// The ports of the live nodes.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.alive())
            .map(|n| n.port)
            .collect()
    }

    /// A `redis-cluster://` URL naming every live node (the first in the authority, the
    /// others as `?node=`).
    pub fn url(&self) -> String {
        let ports = self.ports();
        let (first, rest) = ports.split_first().expect("a live node");
        let nodes: Vec<String> = rest.iter().map(|p| format!("node=127.0.0.1:{p}")).collect();
        format!("redis-cluster://127.0.0.1:{first}?{}", nodes.join("&"))
    }

    /// A `redis-cluster://` URL naming only the node on `port`.
    pub fn url_via(&self, port: u16) -> String {
        format!("redis-cluster://127.0.0.1:{port}")
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`).
    pub fn keyslot(&self, key: &str) -> u16 {
        let port = self.ports()[0];
        let answer = cli(port, &["CLUSTER", "KEYSLOT", key]).expect("CLUSTER KEYSLOT answered");
        answer
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("CLUSTER KEYSLOT {key} answered {answer:?}"))
    }

    /// The port of the master serving `slot` now, as the first live node sees it.
    pub fn master_of(&self, slot: u16) -> u16 {
        let port = self.ports()[0];
        self.master_of_slot_seen_by(port, slot)
            .unwrap_or_else(|e| panic!("no master serves slot {slot}: {e}"))
    }

    /// A live master that does not serve `slot`.
    pub fn master_without(&self, slot: u16) -> u16 {
        let owner = self.master_of(slot);
        let lines = self
            .nodes_seen_by(self.ports()[0])
            .expect("CLUSTER NODES answered");
        lines
            .iter()
            .find(|l| l.master && !l.failed && l.port != owner)
            .map(|l| l.port)
            .expect("a second master")
    }

    /// The replica of the master on `port`.
    pub fn replica_of(&self, port: u16) -> u16 {
        let lines = self
            .nodes_seen_by(self.ports()[0])
            .expect("CLUSTER NODES answered");
        let master = lines
            .iter()
            .find(|l| l.port == port)
            .expect("the master is a node");
        lines
            .iter()
            .find(|l| l.master_id.as_deref() == Some(master.id.as_str()))
            .map(|l| l.port)
            .unwrap_or_else(|| panic!("{port} has no replica: {lines:?}"))
    }

    /// SIGKILLs the node on `port` (a crash: it tells nobody).
    pub fn kill(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node on {port}"));
        node.kill();
    }

    /// Waits until every live node agrees that a live master other than `old` serves
    /// `slot` and says `cluster_state:ok`; returns that master's port.
    pub fn wait_for_new_master(&self, slot: u16, old: u16, within: Duration) -> u16 {
        let live = self.ports();
        poll(within, "a replica took over the slot", || {
            let mut owner = None;
            for &port in &live {
                let info = cli(port, &["CLUSTER", "INFO"]).ok_or(format!("{port} is down"))?;
                if !info.contains("cluster_state:ok") {
                    return Err(format!("{port}: not ok"));
                }
                let master = self.master_of_slot_seen_by(port, slot)?;
                if master == old || !live.contains(&master) || owner.is_some_and(|o| o != master) {
                    return Err(format!("{port} sees {master} serving {slot}"));
                }
                owner = Some(master);
            }
            owner.ok_or_else(|| "no live node".to_owned())
        })
    }

    fn master_of_slot_seen_by(&self, port: u16, slot: u16) -> Result<u16, String> {
        self.nodes_seen_by(port)?
            .iter()
            .find(|l| {
                l.master && !l.failed && l.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
            })
            .map(|l| l.port)
            .ok_or_else(|| format!("{port} knows no master of slot {slot}"))
    }

    fn nodes_seen_by(&self, port: u16) -> Result<Vec<NodeLine>, String> {
        let text = cli(port, &["CLUSTER", "NODES"]).ok_or(format!("{port} is down"))?;
        Ok(text.lines().filter_map(parse_node_line).collect())
    }
}

/// `<id> <ip:port@bus[,hostname]> <flags> <master id or -> <ping> <pong> <epoch> <link>
/// <slot or range>…`; slots being migrated (`[…]`) are skipped.
fn parse_node_line(line: &str) -> Option<NodeLine> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 8 {
        return None;
    }
    let address = fields[1].split(['@', ',']).next()?;
    let port = address.rsplit(':').next()?.parse().ok()?;
    let flags: Vec<&str> = fields[2].split(',').collect();
    let slots = fields[8..]
        .iter()
        .filter(|s| !s.starts_with('['))
        .filter_map(|s| match s.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => s.parse().ok().map(|n| (n, n)),
        })
        .collect();
    Some(NodeLine {
        id: fields[0].to_owned(),
        port,
        master: flags.contains(&"master"),
        failed: flags.iter().any(|f| *f == "fail" || *f == "fail?"),
        master_id: (fields[3] != "-").then(|| fields[3].to_owned()),
        slots,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_line_gives_port_role_and_slots() {
        let line = parse_node_line(
            "05856a 127.0.0.1:31002@31102 master - 0 1796290984194 2 connected 5461-10922 12000",
        )
        .unwrap();
        assert_eq!(line.port, 31002);
        assert!(line.master && !line.failed);
        assert_eq!(line.slots, [(5461, 10922), (12000, 12000)]);
        let replica =
            parse_node_line("ab 127.0.0.1:7004@17004 myself,slave 05856a 0 0 2 connected").unwrap();
        assert_eq!(replica.master_id.as_deref(), Some("05856a"));
        assert!(!replica.master);
        let failed =
            parse_node_line("cd 127.0.0.1:7001@17001 master,fail - 0 0 1 disconnected").unwrap();
        assert!(failed.failed);
    }

    #[test]
    fn a_cluster_serves_every_slot_from_its_masters_and_names_them_in_its_url() {
        let cluster = RedisCluster::start();
        assert_eq!(cluster.ports().len(), 3);
        let slot = cluster.keyslot("{talkgate:x}:holders");
        assert_eq!(
            slot,
            cluster.keyslot("{talkgate:x}:queue"),
            "one hash tag, one slot"
        );
        let owner = cluster.master_of(slot);
        let other = cluster.master_without(slot);
        assert_ne!(owner, other);
        let url = cluster.url();
        for port in cluster.ports() {
            assert!(url.contains(&format!("127.0.0.1:{port}")), "{url}");
        }
        let moved = cli(other, &["GET", "{talkgate:x}:holders"]).unwrap();
        assert!(
            moved.starts_with(&format!("MOVED {slot} 127.0.0.1:{owner}")),
            "{moved}"
        );
    }
}
