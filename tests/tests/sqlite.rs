//! The SQLite backend with real processes: embedded runs on one machine sharing one file, the
//! limit taken at the fake query service's `/stats`, a process killed with -9 mid-query, and an
//! hourly rate budget across a restart.

use std::process::{Output, Stdio};
use std::time::Duration;

use projector_tests::fleet::text;
use projector_tests::{FakeSnuba, Proc, command, workspace_bin};
use serde_json::Value;

const FAKE: &str = env!("CARGO_BIN_EXE_projector-fake-snuba");

/// The environment of an embedded run on the file `db` against `fake`.
fn env(db: &std::path::Path, fake: &FakeSnuba, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = vec![
        ("PROJECTOR_BACKEND_KIND".to_owned(), "sqlite".to_owned()),
        ("PROJECTOR_BACKEND_DSN".to_owned(), format!("sqlite://{}", db.display())),
        ("PROJECTOR_QUERY_SOURCE".to_owned(), "snuba".to_owned()),
        ("PROJECTOR_QUERY_URL".to_owned(), fake.url()),
    ];
    env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    env
}

/// An embedded run of `orgs` orgs, its summary written to `summary`.
fn embedded(env: &[(String, String)], orgs: u64, summary: &std::path::Path) -> Proc {
    let mut cmd = command(workspace_bin("projector-scheduler"));
    cmd.args(["run-once", "--embedded", "--batch-delay", "0s", "--orgs", &orgs.to_string(), "--summary-json"])
        .arg(summary)
        .envs(env.iter().cloned())
        .stdout(Stdio::piped());
    Proc::spawn(cmd)
}

fn summary_of(out: &Output, path: &std::path::Path) -> Value {
    let read = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("no summary ({e}): {}\n{}", text(&out.stdout), text(&out.stderr)));
    serde_json::from_str(&read).expect("summary JSON")
}

#[test]
fn embedded_runs_on_one_machine_share_the_files_limit_at_the_service() {
    let fake = FakeSnuba::start(FAKE, &["--latency", "100ms"]);
    let dir = tempfile::tempdir().expect("tempdir");
    // Three runs of the same hour project the same orgs: with the file's sink, the fence would
    // (rightly) refuse the older of two writes of one org. This test is about the slots.
    let env = env(
        &dir.path().join("fleet.db"),
        &fake,
        &[("PROJECTOR_SLOTS_LIMIT", "4"), ("PROJECTOR_WORKER_CONCURRENCY", "8"), ("PROJECTOR_SINK_KIND", "discard")],
    );
    let runs: Vec<(Proc, std::path::PathBuf)> = (0..3)
        .map(|i| {
            let summary = dir.path().join(format!("run-{i}.json"));
            (embedded(&env, 40, &summary), summary)
        })
        .collect();
    for (run, summary) in runs {
        let out = run.wait_with_output(Duration::from_secs(120));
        assert!(out.status.success(), "{}\n{}", text(&out.stdout), text(&out.stderr));
        let s = summary_of(&out, &summary);
        assert_eq!(s["completed"], 40, "{s}");
    }
    let stats = fake.stats_now();
    let most = stats["max_in_flight"].as_u64().expect("max_in_flight");
    // Three processes of 8 jobs each, 24 wanting a slot at once, against the file's 4.
    assert!(most <= 4, "the service saw {most} queries at once against a limit of 4 on the file: {stats}");
    assert_eq!(most, 4, "the limit is used, not starved: {stats}");
    assert_eq!(stats["rejected_429"].as_u64(), Some(0), "{stats}");
}

#[test]
fn a_run_killed_mid_query_holds_its_slots_no_longer_than_the_bound_and_the_other_finishes() {
    let fake = FakeSnuba::start(FAKE, &["--latency", "300ms"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let env = env(
        &dir.path().join("fleet.db"),
        &fake,
        &[
            ("PROJECTOR_SLOTS_LIMIT", "3"),
            ("PROJECTOR_SLOTS_LEASE_TTL", "1s"),
            ("PROJECTOR_WORKER_CONCURRENCY", "6"),
            // The fake ends every query within a second: a slot of a killed process comes back
            // 2 s after its query was sent, not Snuba's 60 s.
            ("PROJECTOR_QUERY_MAX_DURATION", "2s"),
            ("PROJECTOR_QUERY_MAX_DURATION_BELOW_SERVICE", "true"),
        ],
    );
    let killed_summary = dir.path().join("killed.json");
    let mut killed = embedded(&env, 200, &killed_summary);
    projector_tests::wait_until(Duration::from_secs(30), "the first run's queries reach the service", || {
        fake.stats_now()["in_flight"].as_u64().unwrap_or(0) >= 3
    });
    let survivor_summary = dir.path().join("survivor.json");
    let survivor = embedded(&env, 30, &survivor_summary);
    killed.signal("KILL");
    let _ = killed.is_running();
    let out = survivor.wait_with_output(Duration::from_secs(120));
    assert!(out.status.success(), "{}\n{}", text(&out.stdout), text(&out.stderr));
    let s = summary_of(&out, &survivor_summary);
    assert_eq!(s["completed"], 30, "every org of the survivor completes once the killed run's leases lapse: {s}");
    let stats = fake.stats_now();
    let most = stats["max_in_flight"].as_u64().expect("max_in_flight");
    assert!(most <= 3, "the service saw {most} queries at once against a limit of 3, across a kill -9: {stats}");
    assert!(!killed_summary.exists(), "the killed run wrote no summary");
}

#[test]
fn a_rate_budget_of_hours_survives_a_restart() {
    let fake = FakeSnuba::start(FAKE, &["--latency", "10ms"]);
    let dir = tempfile::tempdir().expect("tempdir");
    // 5 per 2 hours: the budget a refusal would wait for comes back after the run's deadline
    // (an hour, the schedule's period), so the refusal is the org's outcome, not a reschedule.
    let env = env(
        &dir.path().join("fleet.db"),
        &fake,
        &[("PROJECTOR_RATE_RATES", "5/2h"), ("PROJECTOR_RATE_MAX_DELAY", "0s"), ("PROJECTOR_SINK_KIND", "sqlite")],
    );
    let first = dir.path().join("first.json");
    let out = embedded(&env, 3, &first).wait_with_output(Duration::from_secs(60));
    assert_eq!(summary_of(&out, &first)["completed"], 3);
    // A new process: the window's budget of 5 has 2 left, whatever this process remembers.
    let second = dir.path().join("second.json");
    let out = embedded(&env, 3, &second).wait_with_output(Duration::from_secs(60));
    let s = summary_of(&out, &second);
    assert_eq!((s["completed"].as_u64(), s["skipped_rate_policy"].as_u64()), (Some(2), Some(1)), "{s}");
    let stats = fake.stats_now();
    assert_eq!(stats["requests"].as_u64(), Some(5), "the service saw 5 queries in the window: {stats}");
    // sink.kind = "sqlite": the projections are in the same file, and the second run's writes,
    // under later slot tokens (the first run took 1 to 3), replaced the first's.
    let stored: Vec<(i64, i64)> = projector_tests::runtime().block_on(async {
        let db = projector_sqlite::Database::open(&format!("sqlite://{}", dir.path().join("fleet.db").display()), Duration::from_secs(5))
            .await
            .expect("the file");
        projector_sqlite::sqlx::query_as("SELECT org_id, max(fencing_token) FROM projector_projections GROUP BY org_id ORDER BY org_id")
            .fetch_all(db.pool())
            .await
            .expect("rows")
    });
    assert_eq!(stored.iter().map(|(org, _)| *org).collect::<Vec<_>>(), vec![1, 2, 3], "{stored:?}");
    // Whichever two orgs the budget admitted in the second run were written again under its leases.
    assert_eq!(stored.iter().filter(|(_, token)| *token > 3).count(), 2, "{stored:?}");
}

#[test]
fn a_fleet_process_on_the_memory_backend_is_refused_at_start_with_what_to_use() {
    for (bin, args) in [("projector-worker", vec!["run"]), ("projector-scheduler", vec!["run-once"]), ("projectorctl", vec!["status"])] {
        let out = command(workspace_bin(bin)).args(&args).env("PROJECTOR_BACKEND_KIND", "memory").output().expect("run");
        assert_eq!(out.status.code(), Some(2), "{bin}: {}", text(&out.stderr));
        let err = text(&out.stderr);
        assert!(err.contains("backend.kind") && err.contains("run-once --embedded"), "{bin}: {err}");
        assert!(err.contains("from environment variable PROJECTOR_BACKEND_KIND"), "{bin} names where the kind was set: {err}");
    }
}
