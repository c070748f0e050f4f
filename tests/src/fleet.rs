//! The one way tests build a fleet: the environment that points every binary at one Redis and
//! one query service (`base_env`, `env_with`), a worker that is ready (`worker`), the address it
//! serves /metrics on, running a binary to its output, and [`Fleet`]: Redis, the fake query
//! service and the workers of one test together, with the run checks the chaos tests share.

use std::collections::HashMap;
use std::process::{Output, Stdio};
use std::time::Duration;

use crate::{FakeSnuba, Proc, ProcLog, RedisServer, command, workspace_bin};

/// The environment of every process of the fleet: this Redis, this query service (Snuba API),
/// metrics on a free port, fast housekeeping, info logs.
pub fn base_env(redis: &RedisServer, query_url: &str) -> Vec<(String, String)> {
    env_with(redis.url(), query_url, &[])
}

/// The same for any Redis URL (a cluster's node, a Sentinel), with `extra` variables after.
pub fn env_with(redis_url: String, query_url: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = vec![
        ("PROJECTOR_REDIS_URL".into(), redis_url),
        ("PROJECTOR_QUERY_SOURCE".into(), "snuba".into()),
        ("PROJECTOR_QUERY_URL".into(), query_url.to_owned()),
        ("PROJECTOR_WORKER_METRICS_ADDR".into(), "127.0.0.1:0".into()),
        ("PROJECTOR_SCHEDULE_METRICS_ADDR".into(), "127.0.0.1:0".into()),
        // Short periods so tests wait for conditions, not for defaults meant for production.
        ("PROJECTOR_WORKER_HOUSEKEEPING_INTERVAL".into(), "100ms".into()),
        ("PROJECTOR_WORKER_ROLLOUT_REFRESH".into(), "100ms".into()),
        ("RUST_LOG".into(), "info".into()),
    ];
    env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    env
}

/// Runs a workspace binary to its end.
pub fn run(bin: &str, env: &[(String, String)], args: &[&str]) -> Output {
    command(workspace_bin(bin)).args(args).envs(env.iter().cloned()).output().expect("run binary")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The JSON a successful command printed.
pub fn json_of(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}\n{}", text(&out.stdout), text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&out.stdout)))
}

/// A `projector-worker run` that has logged "worker started".
pub fn worker(env: &[(String, String)], args: &[&str]) -> Proc {
    let mut cmd = command(workspace_bin("projector-worker"));
    cmd.arg("run").args(args).envs(env.iter().cloned()).stdout(Stdio::null());
    let w = Proc::spawn(cmd);
    w.wait_for_line(&["worker started"], Duration::from_secs(30));
    w
}

/// The `host:port` a process serves /metrics, /healthz and /readyz on: with port 0 it picks a
/// free one, and its log line at start is the only place that tells which.
pub fn metrics_addr(p: &Proc) -> String {
    let line = p.wait_for_line(&["serving /metrics"], Duration::from_secs(30));
    line.split("addr=").nth(1).and_then(|rest| rest.split_whitespace().next()).expect("addr= in the log line").to_owned()
}

/// Redis, the fake query service and the workers of one test, all killed when it ends.
pub struct Fleet {
    pub redis: RedisServer,
    pub fake: FakeSnuba,
    pub env: Vec<(String, String)>,
    /// Every worker's log, shown when a run does not finish.
    worker_logs: std::sync::Mutex<Vec<ProcLog>>,
}

impl Fleet {
    /// A fleet on `redis`, with a fake query service started with `fake_args` and `extra`
    /// variables after the base environment.
    pub fn start(redis: RedisServer, fake: &str, fake_args: &[&str], extra: &[(&str, &str)]) -> Self {
        let fake = FakeSnuba::start(fake, fake_args);
        let env = env_with(redis.url(), &fake.url(), extra);
        Fleet { redis, fake, env, worker_logs: Default::default() }
    }

    /// A worker of this fleet that has logged "worker started"; its log joins the failure report.
    pub fn worker(&self, args: &[&str]) -> Proc {
        let w = worker(&self.env, args);
        self.worker_logs.lock().unwrap_or_else(|p| p.into_inner()).push(w.log());
        w
    }

    /// The last lines of every worker's log, for a failure report.
    pub fn worker_tails(&self) -> String {
        let logs = self.worker_logs.lock().unwrap_or_else(|p| p.into_inner());
        logs.iter().enumerate().map(|(i, l)| format!("--- worker {i}:\n{}", l.tail(40))).collect::<Vec<_>>().join("\n")
    }

    /// A run of `orgs` orgs followed to the end, judged leniently (the test judges it).
    pub fn run(&self, orgs: u64) -> Proc {
        let mut cmd = command(workspace_bin("projector-scheduler"));
        cmd.args(["run-once", "--wait", "--wait-timeout", "150s", "--fail-on", "none", "--batch-delay", "0s", "--orgs"])
            .arg(orgs.to_string())
            .envs(self.env.iter().cloned())
            .stdout(Stdio::piped());
        Proc::spawn(cmd)
    }

    /// Waits for a run to end and checks its record: every planned org (1..=orgs) has exactly
    /// one outcome and there is no other. Returns outcome → count.
    pub fn finish(&self, run: Proc, orgs: u64) -> HashMap<String, u64> {
        let out = run.wait_with_output(Duration::from_secs(180));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(out.status.code(), Some(0), "run-once: {stdout}\n{}\n{}", String::from_utf8_lossy(&out.stderr), self.worker_tails());
        let run_id = stdout.split_whitespace().nth(1).expect("run id in the summary").trim_end_matches(':').to_owned();
        let mut conn = self.redis.connection();
        let recorded: HashMap<u64, String> =
            redis::cmd("HGETALL").arg(format!("projector:run:{run_id}:orgs")).query(&mut conn).expect("hgetall");
        let mut planned: Vec<u64> = recorded.keys().copied().collect();
        planned.sort_unstable();
        assert_eq!(planned, (1..=orgs).collect::<Vec<_>>(), "every planned org has one outcome, none foreign: {recorded:?}");
        let mut by_outcome = HashMap::new();
        for outcome in recorded.values() {
            *by_outcome.entry(outcome.clone()).or_insert(0) += 1;
        }
        by_outcome
    }

    /// The most queries the fake saw in flight at once.
    pub fn max_in_flight(&self) -> u64 {
        self.fake.stats_now()["max_in_flight"].as_u64().expect("max_in_flight")
    }
}
