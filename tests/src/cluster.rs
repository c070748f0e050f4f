//! A three-node Redis Cluster owned by one test: three `redis-server --cluster-enabled` on free
//! TCP ports in one temp dir, joined by `redis-cli --cluster create`; killed when dropped.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{redis_cli, wait_until};

/// Three masters, no replicas, every slot served.
pub struct RedisCluster {
    _dir: tempfile::TempDir,
    nodes: Vec<(u16, Child)>,
}

/// A port whose cluster bus port (port + 10000) is free too.
fn free_node_port() -> u16 {
    for _ in 0..200 {
        let Ok(listener) = TcpListener::bind("127.0.0.1:0") else { continue };
        let Ok(port) = listener.local_addr().map(|a| a.port()) else { continue };
        if port <= 55_535 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair (port, port + 10000) for a cluster node");
}

impl RedisCluster {
    /// Starts the nodes, joins them and waits until every node says the cluster is ok. Panics
    /// (failing the test) if `redis-server` or `redis-cli` is missing.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new().prefix("rc").tempdir_in("/tmp").expect("tempdir for the cluster");
        let mut nodes = Vec::new();
        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < 3 {
            let port = free_node_port();
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        for port in &ports {
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--cluster-enabled", "yes"])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf"), "--save", "", "--appendonly", "no", "--dir"])
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server must be installed (ops/test.sh installs it)");
            nodes.push((*port, child));
        }
        let cluster = RedisCluster { _dir: dir, nodes };
        for port in &ports {
            wait_until(Duration::from_secs(10), "a cluster node answers PING", || redis_cli(*port, &["ping"]).is_some_and(|o| o == "PONG"));
        }
        let addresses: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed");
        assert!(created.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&created.stdout));
        for port in &ports {
            wait_until(Duration::from_secs(30), "every node sees the cluster ok", || {
                redis_cli(*port, &["cluster", "info"]).is_some_and(|info| info.contains("cluster_state:ok"))
            });
        }
        cluster
    }

    /// The nodes' ports.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|(p, _)| *p).collect()
    }

    /// The URL of one node: a seed for a cluster client.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.nodes[0].0)
    }

    /// How many keys the node on `port` holds.
    pub fn keys_on(&self, port: u16) -> u64 {
        redis_cli(port, &["dbsize"]).and_then(|n| n.parse().ok()).unwrap_or(0)
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
