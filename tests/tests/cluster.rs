//! Projector on a three-node Redis Cluster (`redis.cluster = true`): a whole run through real
//! workers, the slot bound measured at the query service, a cancel, and the operator's views,
//! with the keys spread over the nodes.

use std::time::Duration;

use projector_tests::cluster::RedisCluster;
use projector_tests::fleet::{env_with, json_of, run, text, worker};
use projector_tests::{FakeSnuba, wait_until};

const FAKE: &str = env!("CARGO_BIN_EXE_projector-fake-snuba");

#[test]
fn a_run_on_a_redis_cluster_completes_every_org_within_the_slot_bound() {
    let cluster = RedisCluster::start();
    let fake = FakeSnuba::start(FAKE, &["--latency", "30ms"]);
    let env = env_with(cluster.url(), &fake.url(), &[("PROJECTOR_REDIS_CLUSTER", "true"), ("PROJECTOR_SLOTS_LIMIT", "4")]);
    let _workers = [worker(&env, &["--concurrency", "6"]), worker(&env, &["--concurrency", "6"])];

    let out = run("projector-scheduler", &env, &["run-once", "--wait", "--wait-timeout", "120s", "--orgs", "60", "--batch-delay", "0s"]);
    assert!(out.status.success(), "{}\n{}", text(&out.stdout), text(&out.stderr));
    let run_id = text(&out.stdout).split_whitespace().nth(1).map(|r| r.trim_end_matches(':').to_owned()).expect("run id");
    let stats = fake.stats_now();
    assert_eq!(stats["requests"], 60, "each org queried once: {stats}");
    assert!(stats["max_in_flight"].as_u64().unwrap_or(u64::MAX) <= 4, "the slot bound held at the query service: {stats}");

    let shown = json_of(&run("projectorctl", &env, &["runs", "show", &run_id, "--json"]));
    assert_eq!(shown["outcomes"]["completed"], 60, "{shown}");
    let status = json_of(&run("projectorctl", &env, &["status", "--json"]));
    assert_eq!(status["workers"]["alive"], 2, "{status}");
    assert_eq!(status["run"]["run_id"], run_id.as_str(), "{status}");

    // A cancel on the cluster: the second run's orgs all end accounted.
    let slow = run("projector-scheduler", &env, &["run-once", "--orgs", "40", "--batch-size", "5", "--batch-delay", "30s"]);
    assert!(slow.status.success(), "{}", text(&slow.stderr));
    let second = text(&slow.stdout).split_whitespace().nth(1).map(|r| r.trim_end_matches(':').to_owned()).expect("run id");
    let cancelled = json_of(&run("projectorctl", &env, &["runs", "cancel", &second, "--json", "--yes"]));
    assert!(cancelled["orgs_cancelled"].as_u64().unwrap_or(0) > 0, "{cancelled}");
    assert!(cancelled["jobs_removed"].as_u64().unwrap_or(0) > 0, "the later batches' jobs left the queue: {cancelled}");
    wait_until(Duration::from_secs(30), "every org of the cancelled run is accounted", || {
        json_of(&run("projectorctl", &env, &["runs", "show", &second, "--json"]))["accounted"] == 40
    });

    // The keys are spread over the nodes: the projections (one hash per org) land on all three.
    let spread: Vec<u64> = cluster.ports().into_iter().map(|p| cluster.keys_on(p)).collect();
    assert!(spread.iter().all(|&n| n > 0), "every node holds keys: {spread:?}");
}
