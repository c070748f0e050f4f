//! The PostgreSQL projection store against a real PostgreSQL per test: migrations applied once
//! when many start together, the fence (later run, newer lease) refusing whole writes, pruning,
//! a distributed run and an embedded run storing every org, and an unreachable store named at start.

use std::process::{Output, Stdio};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use projector_postgres::{MIGRATIONS, OrgWrite, ProjectHours, Store, WriteOutcome};
use projector_shared::OrgId;
use projector_shared::synthetic::synthetic_projects;
use projector_tests::{PostgresServer, Proc, RedisServer, command, workspace_bin};

use projector_tests::runtime;

fn hour(h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, h, 0, 0).single().expect("valid hour")
}

fn write<'a>(run: &'a str, first_hour: DateTime<Utc>, token: u64, projects: &[u64]) -> OrgWrite<'a> {
    OrgWrite {
        org_id: 7,
        run_id: run,
        first_hour,
        fencing_token: token,
        prune_before: first_hour - chrono::Duration::hours(2),
        projects: projects
            .iter()
            .map(|&p| ProjectHours { project_id: p, spike_threshold: 1000 + token, hourly: (0..24).map(|i| p * 100 + i + token).collect() })
            .collect(),
    }
}

fn projectorctl(pg: &PostgresServer, args: &[&str]) -> Output {
    command(workspace_bin("projectorctl")).args(args).env("PROJECTOR_SINK_POSTGRES_URL", pg.url()).output().expect("run projectorctl")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn migrations_apply_once_even_when_many_processes_start_together() {
    let pg = PostgresServer::start();
    let status = projectorctl(&pg, &["db", "status", "--json"]);
    assert!(status.status.success(), "{}", text(&status.stderr));
    let before: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    assert_eq!(before["pending"], MIGRATIONS.len(), "{before}");

    runtime().block_on(async {
        let store = Store::new(&pg.url(), 4).expect("store");
        // Eight pools migrating at once: the advisory lock serializes them, so each migration is
        // applied exactly once in all, and nobody fails on a half-made table.
        let racers: Vec<_> = (0..8)
            .map(|_| {
                let url = pg.url();
                tokio::spawn(async move { Store::new(&url, 1).expect("store").migrate().await.expect("migrate").len() })
            })
            .collect();
        let mut applied = 0;
        for r in racers {
            applied += r.await.expect("racer");
        }
        assert_eq!(applied, MIGRATIONS.len());
        assert!(store.migrate().await.expect("migrate again").is_empty(), "a second migrate applies nothing");
        assert!(store.migration_states().await.expect("states").iter().all(|m| m.applied_at.is_some()));
    });

    let migrate = projectorctl(&pg, &["db", "migrate", "--json"]);
    assert!(migrate.status.success(), "{}", text(&migrate.stderr));
    let after: serde_json::Value = serde_json::from_slice(&migrate.stdout).expect("migrate JSON");
    assert_eq!(after["pending"], 0, "{after}");
    assert_eq!(after["applied"].as_array().map(Vec::len), Some(0), "{after}");
    assert!(after["migrations"][0]["applied_at"].is_string(), "{after}");
    let human = text(&projectorctl(&pg, &["db", "status"]).stdout);
    assert!(human.contains("the schema is current"), "{human}");
}

#[test]
fn writes_are_fenced_by_run_and_lease_whole_and_old_hours_are_pruned() {
    let pg = PostgresServer::start();
    runtime().block_on(async {
        let store = Store::new(&pg.url(), 2).expect("store");
        store.migrate().await.expect("migrate");

        let first = store.write_org(&write("run-10", hour(10), 5, &[701, 702])).await.expect("write");
        assert_eq!(first, WriteOutcome::Written { rows: 48 });
        let rows = store.org_rows(7).await.expect("rows");
        assert_eq!(rows.len(), 48);
        assert_eq!(rows[0].hour, hour(10));
        assert_eq!((rows[0].events, rows[23].events, rows[24].project_id), (701 * 100 + 5, 701 * 100 + 23 + 5, 702));
        assert!(rows.iter().all(|r| r.run_id == "run-10" && r.fencing_token == 5 && r.spike_threshold == 1005));

        // The same write again (a retried job) rewrites the same rows.
        assert_eq!(store.write_org(&write("run-10", hour(10), 5, &[701, 702])).await.expect("rewrite"), first);
        // An older lease of the same run, or an earlier run, is refused whole, naming the newer write.
        let stale = WriteOutcome::Stale { stored_first_hour: hour(10), stored_token: 5 };
        assert_eq!(store.write_org(&write("run-10", hour(10), 4, &[701, 702])).await.expect("older lease"), stale);
        assert_eq!(store.write_org(&write("run-9", hour(9), 9, &[702])).await.expect("earlier run"), stale);
        assert!(store.org_rows(7).await.expect("rows").iter().all(|r| r.fencing_token == 5), "nothing of a refused write lands");
        // A write that shares only one project with the newer one is refused too: one check per project.
        assert_eq!(store.write_org(&write("run-9", hour(9), 9, &[702, 703])).await.expect("partly newer"), stale);
        assert!(store.org_rows(7).await.expect("rows").iter().all(|r| r.project_id != 703));

        // A newer lease of the same run wins; so does the next run, which prunes hours before
        // its prune_before (first hour - 2 h here) and leaves the rest.
        assert_eq!(
            store.write_org(&write("run-10", hour(10), 6, &[701, 702])).await.expect("newer lease"),
            WriteOutcome::Written { rows: 48 }
        );
        assert_eq!(store.write_org(&write("run-13", hour(13), 1, &[701])).await.expect("next run"), WriteOutcome::Written { rows: 24 });
        let rows = store.org_rows(7).await.expect("rows");
        assert!(rows.iter().all(|r| r.hour >= hour(11)), "hours before 11:00 pruned");
        let p701: Vec<_> = rows.iter().filter(|r| r.project_id == 701).collect();
        assert!(p701.iter().filter(|r| r.hour >= hour(13)).all(|r| r.run_id == "run-13"));
        assert!(p701.iter().filter(|r| r.hour < hour(13)).all(|r| r.run_id == "run-10" && r.fencing_token == 6));
        // The legacy path (token 0) holds no lease and cannot be fenced within its run...
        assert!(matches!(store.write_org(&write("run-13", hour(13), 0, &[701])).await.expect("legacy"), WriteOutcome::Written { .. }));
        // ...but an earlier run is refused whatever its token.
        assert!(matches!(
            store.write_org(&write("run-12", hour(12), 0, &[701])).await.expect("legacy, earlier"),
            WriteOutcome::Stale { .. }
        ));
        // A replayed tick asks first which orgs hold a later run: 7 holds run-13's, 8 nothing.
        assert_eq!(store.orgs_fresher_than(&[7, 8], hour(12)).await.expect("fresher"), vec![7]);
        assert_eq!(store.orgs_fresher_than(&[7, 8], hour(13)).await.expect("fresher"), Vec::<u64>::new(), "its own hour is not fresher");

        // Ids beyond bigint are refused before anything is sent.
        let mut huge = write("run-14", hour(14), 1, &[701]);
        huge.org_id = u64::MAX;
        let e = store.write_org(&huge).await.expect_err("org id out of range");
        assert!(e.to_string().contains("org_id"), "{e}");
    });
}

/// Expected rows of orgs `1..=orgs`: 24 projected hours per project.
fn expected_rows(orgs: u64) -> usize {
    (1..=orgs).map(|o| synthetic_projects(OrgId(o)).len() * 24).sum()
}

async fn stored_rows(store: &Store, orgs: u64) -> (usize, Vec<projector_postgres::StoredRow>) {
    let mut all = Vec::new();
    for org in 1..=orgs {
        all.extend(store.org_rows(org).await.expect("rows"));
    }
    (all.len(), all)
}

#[test]
fn a_distributed_run_stores_every_org_in_postgres_through_the_slots() {
    let (redis, pg) = (RedisServer::start(), PostgresServer::start());
    let env = [
        ("PROJECTOR_REDIS_URL", redis.url()),
        ("PROJECTOR_SINK_KIND", "postgres".to_owned()),
        ("PROJECTOR_SINK_POSTGRES_URL", pg.url()),
        ("PROJECTOR_SINK_POSTGRES_POOL", "4".to_owned()),
        ("PROJECTOR_QUERY_SYNTHETIC_LATENCY", "5ms".to_owned()),
        ("PROJECTOR_WORKER_METRICS_ADDR", "127.0.0.1:0".to_owned()),
        ("PROJECTOR_WORKER_HOUSEKEEPING_INTERVAL", "100ms".to_owned()),
        ("RUST_LOG", "info".to_owned()),
    ];
    // Two workers start together; both migrate, and the schema ends applied once.
    let spawn = || {
        let mut cmd = command(workspace_bin("projector-worker"));
        cmd.arg("run").envs(env.iter().map(|(k, v)| (*k, v.as_str()))).stdout(Stdio::null());
        Proc::spawn(cmd)
    };
    let workers = [spawn(), spawn()];
    for w in &workers {
        w.wait_for_line(&["worker started"], Duration::from_secs(60));
    }
    let orgs = 60;
    let out = command(workspace_bin("projector-scheduler"))
        .args(["run-once", "--wait", "--wait-timeout", "120s", "--batch-delay", "0s", "--orgs", &orgs.to_string()])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("run projector-scheduler");
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", text(&out.stderr));
    let completed = orgs.to_string();
    assert!(stdout.lines().any(|l| l.split_whitespace().eq(["completed", completed.as_str()])), "{stdout}");

    runtime().block_on(async {
        let store = Store::new(&pg.url(), 2).expect("store");
        let (count, rows) = stored_rows(&store, orgs).await;
        assert_eq!(count, expected_rows(orgs));
        let run = &rows[0].run_id;
        assert!(rows.iter().all(|r| &r.run_id == run), "one run wrote everything");
        assert!(rows.iter().all(|r| r.fencing_token > 0), "every org took a slot first (the flag was never set)");
        assert!(store.migration_states().await.expect("states").iter().all(|m| m.applied_at.is_some()));
    });
}

#[test]
fn an_embedded_run_writes_to_postgres_without_redis() {
    let pg = PostgresServer::start();
    let orgs = 25;
    let out = command(workspace_bin("projector-scheduler"))
        .args(["run-once", "--embedded", "--orgs", &orgs.to_string(), "--batch-delay", "0s"])
        .env("PROJECTOR_SINK_KIND", "postgres")
        .env("PROJECTOR_SINK_POSTGRES_URL", pg.url())
        .env("PROJECTOR_QUERY_SYNTHETIC_LATENCY", "1ms")
        // No Redis anywhere: a connection attempt would fail the run.
        .env("PROJECTOR_REDIS_URL", "redis://127.0.0.1:1")
        .output()
        .expect("run projector-scheduler");
    assert!(out.status.success(), "{}\n{}", text(&out.stdout), text(&out.stderr));
    runtime().block_on(async {
        let store = Store::new(&pg.url(), 2).expect("store");
        let (count, rows) = stored_rows(&store, orgs).await;
        assert_eq!(count, expected_rows(orgs));
        assert!(rows.iter().all(|r| r.fencing_token > 0), "embedded slots carry tokens too");
    });
}

#[test]
fn an_unreachable_store_is_named_at_start_and_a_missing_url_is_a_config_error() {
    let pg = PostgresServer::start();
    let socket_dir_without_server = tempfile::tempdir_in("/tmp").expect("tempdir");
    let url =
        format!("postgresql://projector@{}:5432/postgres", socket_dir_without_server.path().display().to_string().replace('/', "%2F"));
    let out = command(workspace_bin("projector-worker"))
        .arg("run")
        .env("PROJECTOR_SINK_KIND", "postgres")
        .env("PROJECTOR_SINK_POSTGRES_URL", &url)
        .env("PROJECTOR_REDIS_URL", "redis://127.0.0.1:1")
        .env("PROJECTOR_WORKER_METRICS_ADDR", "127.0.0.1:0")
        .output()
        .expect("run projector-worker");
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("cannot reach postgres") && stderr.contains(".s.PGSQL.5432"), "{stderr}");

    let missing = command(workspace_bin("projector-worker")).args(["run", "--set", "sink.kind=postgres"]).output().expect("run");
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing.stderr));
    assert!(text(&missing.stderr).contains("sink.postgres_url"), "{}", text(&missing.stderr));

    // With sink.migrate = false the schema is left alone: every write fails, saying what to run,
    // and each org ends failed rather than lost.
    let out = command(workspace_bin("projector-scheduler"))
        .args([
            "run-once",
            "--embedded",
            "--orgs",
            "3",
            "--batch-delay",
            "0s",
            "--set",
            "sink.migrate=false",
            "--set",
            "sink.kind=postgres",
        ])
        .env("PROJECTOR_SINK_POSTGRES_URL", pg.url())
        .env("PROJECTOR_QUERY_SYNTHETIC_LATENCY", "1ms")
        .output()
        .expect("run projector-scheduler");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("projectorctl db migrate"), "{stderr}");
    assert!(stdout.contains("failed"), "{stdout}");
    let unmigrated = projectorctl(&pg, &["db", "status"]);
    assert!(text(&unmigrated.stdout).contains("pending: run `projectorctl db migrate`"), "{}", text(&unmigrated.stdout));
}
