//! A small fleet for operator tests: the environment that points every binary at one Redis and
//! one query service, running a binary to its output, and a worker that is ready.

use std::process::{Output, Stdio};
use std::time::Duration;

use crate::{Proc, RedisServer, command, workspace_bin};

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
        ("PROJECTOR_WORKER_HOUSEKEEPING_INTERVAL".into(), "100ms".into()),
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
