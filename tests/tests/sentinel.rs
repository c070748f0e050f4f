//! Projector behind a Redis Sentinel (`redis.sentinel_master`): a run through a real worker, the
//! master killed with SIGKILL, the Sentinel's failover, and a second run on the promoted replica,
//! every org queried once and the slot bound held at the query service throughout.

use std::time::Duration;

use projector_tests::fleet::{env_with, json_of, run, text, worker};
use projector_tests::sentinel::{MASTER_NAME, RedisSentinel};
use projector_tests::{FakeSnuba, wait_until};

const FAKE: &str = env!("CARGO_BIN_EXE_projector-fake-snuba");

fn run_once(env: &[(String, String)], orgs: u32) -> String {
    let out = run(
        "projector-scheduler",
        env,
        &["run-once", "--wait", "--wait-timeout", "120s", "--orgs", &orgs.to_string(), "--batch-delay", "0s"],
    );
    assert!(out.status.success(), "{}\n{}", text(&out.stdout), text(&out.stderr));
    text(&out.stdout).split_whitespace().nth(1).map(|r| r.trim_end_matches(':').to_owned()).expect("run id")
}

#[test]
fn runs_follow_the_master_through_a_sentinel_failover() {
    let mut set = RedisSentinel::start();
    let fake = FakeSnuba::start(FAKE, &["--latency", "30ms"]);
    let env = env_with(set.url(), &fake.url(), &[("PROJECTOR_REDIS_SENTINEL_MASTER", MASTER_NAME), ("PROJECTOR_SLOTS_LIMIT", "4")]);
    let _worker = worker(&env, &["--concurrency", "6"]);

    let first = run_once(&env, 30);
    assert_eq!(json_of(&run("projectorctl", &env, &["runs", "show", &first, "--json"]))["outcomes"]["completed"], 30);

    set.kill_master_and_wait_for_failover();
    assert_eq!(set.master_port(), Some(set.replica_port()));
    // The worker finds the new master on its own: the second run completes through it.
    let second = run_once(&env, 30);
    let shown = json_of(&run("projectorctl", &env, &["runs", "show", &second, "--json"]));
    assert_eq!(shown["outcomes"]["completed"], 30, "{shown}");
    wait_until(Duration::from_secs(30), "the worker beats on the new master", || {
        json_of(&run("projectorctl", &env, &["status", "--json"]))["workers"]["alive"] == 1
    });
    let stats = fake.stats_now();
    assert_eq!(stats["requests"], 60, "each org of both runs queried once: {stats}");
    assert!(stats["max_in_flight"].as_u64().unwrap_or(u64::MAX) <= 4, "the slot bound held at the query service: {stats}");
}
