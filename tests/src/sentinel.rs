//! A Redis master, its replica and one Sentinel watching them (quorum 1, a master is judged down
//! after 1 s), owned by one test on free TCP ports in one temp dir; killed when dropped. The
//! master can be killed to make the Sentinel fail over.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, redis_cli as cli, wait_until};

/// The name of the master set the Sentinel watches.
pub const MASTER_NAME: &str = "projector-master";

pub struct RedisSentinel {
    _dir: tempfile::TempDir,
    master: (u16, Option<Child>),
    replica: (u16, Child),
    sentinel: (u16, Child),
}

fn redis_server(dir: &std::path::Path, args: &[String]) -> Child {
    Command::new("redis-server")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (ops/test.sh installs it)")
}

impl RedisSentinel {
    /// Starts the three and waits until the replica is in sync and the Sentinel knows both.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new().prefix("rs").tempdir_in("/tmp").expect("tempdir for the sentinel set");
        let (m, r, s) = (free_port(), free_port(), free_port());
        let common = |port: u16| -> Vec<String> {
            [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dbfilename",
                &format!("dump-{port}.rdb"),
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
        };
        let master = redis_server(dir.path(), &common(m));
        let mut replica_args = common(r);
        replica_args.extend(["--replicaof".to_owned(), "127.0.0.1".to_owned(), m.to_string()]);
        let replica = redis_server(dir.path(), &replica_args);
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {s}\nbind 127.0.0.1\nsentinel monitor {MASTER_NAME} 127.0.0.1 {m} 1\n\
                 sentinel down-after-milliseconds {MASTER_NAME} 1000\nsentinel failover-timeout {MASTER_NAME} 5000\n"
            ),
        )
        .expect("write sentinel.conf");
        let sentinel = redis_server(dir.path(), &[conf.display().to_string(), "--sentinel".to_owned()]);
        let set = RedisSentinel { _dir: dir, master: (m, Some(master)), replica: (r, replica), sentinel: (s, sentinel) };
        wait_until(Duration::from_secs(30), "the replica is in sync with the master", || {
            cli(r, &["info", "replication"]).is_some_and(|i| i.contains("master_link_status:up"))
        });
        wait_until(Duration::from_secs(30), "the Sentinel knows the master and its replica", || {
            cli(s, &["sentinel", "replicas", MASTER_NAME]).is_some_and(|out| out.contains(&r.to_string()))
        });
        set
    }

    /// The Sentinel's URL (`redis.url` with `redis.sentinel_master`).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.sentinel.0)
    }

    /// The port the Sentinel names as the master now.
    pub fn master_port(&self) -> Option<u16> {
        let out = cli(self.sentinel.0, &["sentinel", "get-master-addr-by-name", MASTER_NAME])?;
        out.lines().nth(1).and_then(|p| p.trim().parse().ok())
    }

    /// The replica's port: the master after a failover.
    pub fn replica_port(&self) -> u16 {
        self.replica.0
    }

    /// Kills the master (SIGKILL) and waits until the Sentinel has promoted the replica.
    pub fn kill_master_and_wait_for_failover(&mut self) {
        if let Some(mut child) = self.master.1.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let (replica, sentinel) = (self.replica.0, self.sentinel.0);
        // Until the failover ends, SENTINEL MASTER still shows the old master, down: clients that
        // ask then find no master (as they would in production for those seconds).
        wait_until(Duration::from_secs(60), "the Sentinel's failover to the replica ended", || {
            cli(sentinel, &["sentinel", "master", MASTER_NAME]).is_some_and(|out| {
                let fields: Vec<&str> = out.lines().map(str::trim).collect();
                let field = |name: &str| fields.iter().position(|f| *f == name).and_then(|i| fields.get(i + 1)).copied();
                field("port") == Some(replica.to_string().as_str()) && field("flags") == Some("master")
            }) && cli(replica, &["role"]).is_some_and(|r| r.starts_with("master"))
        });
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        let children = self.master.1.iter_mut().chain([&mut self.replica.1, &mut self.sentinel.1]);
        for child in children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
