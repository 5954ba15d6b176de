//! A private Redis Cluster per test: 3 primaries and 3 replicas from Debian's `redis-server` on
//! free loopback ports, created with `redis-cli --cluster create`, with the operations a test
//! needs (move a slot, kill a primary and wait for its replica to take over).

use std::process::Command;
use std::time::{Duration, Instant};

use super::redis_server::RedisServer;

/// A running cluster; every node is killed when dropped.
pub struct RedisCluster {
    /// All six nodes, in creation order (the first three start as primaries).
    pub nodes: Vec<RedisServer>,
}

/// The slot of a room's keys and channel (`<tenant>/<kind>:<id>` with the default prefix).
pub fn room_slot(room: &str) -> u16 {
    // The hash tag of `rtg:{<room>}` is the room itself.
    crc16::State::<crc16::XMODEM>::calculate(room.as_bytes()) % 16384
}

impl RedisCluster {
    /// Starts six nodes and makes them a cluster of three shards with one replica each; returns
    /// once every slot is served and every replica is in sync.
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..6).map(|_| RedisServer::start_cluster_node()).collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli must be on the PATH");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_until("every slot served and every replica in sync", |c| {
            c.healthy()
        });
        cluster
    }

    /// Comma-separated `redis://` URLs of every node (what REDIS_CLUSTER_NODES takes).
    pub fn seeds(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.url())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn alive(&self) -> impl Iterator<Item = &RedisServer> {
        self.nodes
            .iter()
            .filter(|n| n.cli(&["PING"]).trim() == "PONG")
    }

    /// Runs `redis-cli` on any live node.
    pub fn cli(&self, args: &[&str]) -> String {
        self.alive()
            .next()
            .map(|n| n.cli(args))
            .expect("no live cluster node")
    }

    /// The node (index into `nodes`) that serves `slot`, as the live nodes agree.
    pub fn owner(&self, slot: u16) -> Option<usize> {
        let text = self.cli(&["CLUSTER", "NODES"]);
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let serves = f[8..].iter().any(|r| {
                let (a, b) = r.split_once('-').unwrap_or((r, r));
                match (a.parse::<u16>(), b.parse::<u16>()) {
                    (Ok(a), Ok(b)) => (a..=b).contains(&slot),
                    _ => false,
                }
            });
            if serves {
                let port: u16 = f[1].split(['@', ':']).nth(1)?.parse().ok()?;
                return self.nodes.iter().position(|n| n.port == port);
            }
        }
        None
    }

    /// Indexes of the nodes that serve slots now.
    pub fn primaries(&self) -> Vec<usize> {
        let text = self.cli(&["CLUSTER", "NODES"]);
        let mut out: Vec<usize> = text
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|f| f.len() > 8 && f[2].contains("master") && !f[2].contains("fail"))
            .filter_map(|f| {
                let port: u16 = f[1].split(['@', ':']).nth(1)?.parse().ok()?;
                self.nodes.iter().position(|n| n.port == port)
            })
            .collect();
        out.sort();
        out
    }

    fn healthy(&self) -> bool {
        let live: Vec<&RedisServer> = self.alive().collect();
        live.iter().all(|n| {
            let info = n.cli(&["CLUSTER", "INFO"]);
            let repl = n.cli(&["INFO", "replication"]);
            info.contains("cluster_state:ok")
                && (repl.contains("role:master") || repl.contains("master_link_status:up"))
        }) && live
            .iter()
            .filter(|n| {
                let repl = n.cli(&["INFO", "replication"]);
                repl.contains("role:master") && repl.contains("connected_slaves:1")
            })
            .count()
            >= 3
    }

    /// Waits (up to 30 s) until `ready` holds.
    pub fn wait_until(&self, what: &str, ready: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready(self) {
            assert!(Instant::now() < deadline, "cluster: {what} did not happen");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn id(&self, node: usize) -> String {
        self.nodes[node]
            .cli(&["CLUSTER", "MYID"])
            .trim()
            .to_string()
    }

    /// Moves `slot` (and its keys) from its owner to `to`, the way `redis-cli --cluster
    /// reshard` does it: IMPORTING / MIGRATING, MIGRATE in batches, then SETSLOT NODE.
    pub fn migrate_slot(&self, slot: u16, to: usize) {
        let from = self.owner(slot).expect("slot has an owner");
        assert_ne!(from, to, "slot {slot} already on node {to}");
        let (src, dst) = (&self.nodes[from], &self.nodes[to]);
        let (src_id, dst_id) = (self.id(from), self.id(to));
        let s = slot.to_string();
        assert_eq!(
            dst.cli(&["CLUSTER", "SETSLOT", &s, "IMPORTING", &src_id])
                .trim(),
            "OK"
        );
        assert_eq!(
            src.cli(&["CLUSTER", "SETSLOT", &s, "MIGRATING", &dst_id])
                .trim(),
            "OK"
        );
        loop {
            let keys: Vec<String> = src
                .cli(&["CLUSTER", "GETKEYSINSLOT", &s, "1"])
                .lines()
                .map(str::to_string)
                .filter(|k| !k.is_empty())
                .collect();
            if keys.is_empty() {
                break;
            }
            let mut args = vec![
                "MIGRATE".to_string(),
                "127.0.0.1".into(),
                dst.port.to_string(),
                String::new(),
                "0".into(),
                "5000".into(),
                "KEYS".into(),
            ];
            args.extend(keys);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = src.cli(&args);
            assert!(
                out.trim() == "OK" || out.trim() == "NOKEY",
                "MIGRATE: {out}"
            );
        }
        for n in [dst, src] {
            assert_eq!(
                n.cli(&["CLUSTER", "SETSLOT", &s, "NODE", &dst_id]).trim(),
                "OK"
            );
        }
        self.wait_until("every node agrees on the moved slot", |c| {
            c.alive().all(|n| {
                let nodes = n.cli(&["CLUSTER", "NODES"]);
                nodes.lines().any(|l| {
                    l.starts_with(&dst_id)
                        && l.split_whitespace().skip(8).any(|r| {
                            r == s
                                || r.split_once('-').is_some_and(|(a, b)| {
                                    a.parse::<u16>().is_ok_and(|a| a <= slot)
                                        && b.parse::<u16>().is_ok_and(|b| slot <= b)
                                })
                        })
                })
            })
        });
    }

    /// SIGKILLs the primary of `slot`; returns its index.
    pub fn kill_owner(&mut self, slot: u16) -> usize {
        let victim = self.owner(slot).expect("slot has an owner");
        self.nodes[victim].kill();
        victim
    }

    /// Waits until a node other than `old` serves `slot` and the cluster is ok again.
    pub fn wait_failover(&self, slot: u16, old: usize) -> usize {
        self.wait_until("a replica took over", |c| {
            c.owner(slot).is_some_and(|o| o != old)
                && c.alive()
                    .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        });
        self.owner(slot).expect("new owner")
    }
}
