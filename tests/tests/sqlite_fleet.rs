//! A single-machine fleet on one SQLite file, with real processes: three `projector-worker run`
//! and a `projector-scheduler`, the limit taken at the fake query service's `/stats`, under
//! kill -9 of a worker mid-query, SIGSTOP past the lease and the heartbeat, kill -9 of the
//! scheduler mid fan-out, and kill -9 of every process; each ends with every org accounted once.

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

use projector_tests::fleet::text;
use projector_tests::{FakeSnuba, Proc, command, wait_until, workspace_bin};
use serde_json::Value;

const FAKE: &str = env!("CARGO_BIN_EXE_projector-fake-snuba");

/// The slot limit of these fleets: below what three workers of 6 jobs would send at once.
const LIMIT: u64 = 4;

/// One file, one fake service, and the environment every process of the fleet shares.
struct Fleet {
    dir: tempfile::TempDir,
    fake: FakeSnuba,
    env: Vec<(String, String)>,
}

impl Fleet {
    fn new(latency: &str) -> Fleet {
        let fake = FakeSnuba::start(FAKE, &["--latency", latency]);
        let dir = tempfile::tempdir().expect("tempdir");
        let env = [
            ("PROJECTOR_BACKEND_KIND", "sqlite".to_owned()),
            ("PROJECTOR_BACKEND_DSN", format!("sqlite://{}", dir.path().join("fleet.db").display())),
            ("PROJECTOR_QUERY_SOURCE", "snuba".to_owned()),
            ("PROJECTOR_QUERY_URL", fake.url()),
            ("PROJECTOR_SLOTS_LIMIT", LIMIT.to_string()),
            ("PROJECTOR_SLOTS_LEASE_TTL", "1s".to_owned()),
            // The fake ends every query within a second: a killed holder's slot comes back 2 s
            // after its query was sent, not Snuba's 60 s.
            ("PROJECTOR_QUERY_MAX_DURATION", "2s".to_owned()),
            ("PROJECTOR_QUERY_MAX_DURATION_BELOW_SERVICE", "true".to_owned()),
            ("PROJECTOR_WORKER_CONCURRENCY", "6".to_owned()),
            ("PROJECTOR_WORKER_METRICS_ADDR", "127.0.0.1:0".to_owned()),
            ("PROJECTOR_BATCH_DELAY", "0s".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        Fleet { dir, fake, env }
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("fleet.db")
    }

    fn worker(&self) -> Proc {
        let mut cmd = command(workspace_bin("projector-worker"));
        cmd.arg("run").envs(self.env.iter().cloned());
        Proc::spawn(cmd)
    }

    fn scheduler(&self, args: &[&str]) -> Proc {
        let mut cmd = command(workspace_bin("projector-scheduler"));
        cmd.arg("run-once").args(args).envs(self.env.iter().cloned()).stdout(Stdio::piped());
        Proc::spawn(cmd)
    }

    fn ctl(&self, args: &[&str]) -> Output {
        command(workspace_bin("projectorctl")).args(args).envs(self.env.iter().cloned()).output().expect("projectorctl")
    }

    /// `runs show --json` of the run.
    fn run(&self, run_id: &str) -> Value {
        let out = self.ctl(&["--json", "runs", "show", run_id]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("runs show JSON")
    }

    /// The only run on the file (the tests make one each).
    fn run_id(&self) -> String {
        let out = self.ctl(&["--json", "runs", "list"]);
        let runs: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        runs["runs"][0]["run_id"].as_str().map(str::to_owned).unwrap_or_default()
    }

    /// Waits until every org of the run has an outcome; returns the run.
    fn wait_accounted(&self, run_id: &str, timeout: Duration, procs: &[&Proc]) -> Value {
        let last = std::cell::RefCell::new(Value::Null);
        projector_tests::wait_until_or(
            timeout,
            || {
                let run = self.run(run_id);
                let done = run["accounted"].as_u64().is_some() && run["accounted"] == run["orgs_total"];
                *last.borrow_mut() = run;
                done
            },
            || {
                let logs = procs.iter().map(|p| p.log().tail(20)).collect::<Vec<_>>().join("\n---\n");
                format!("run not accounted: {}\n{logs}", last.borrow())
            },
        );
        last.into_inner()
    }

    /// The most queries the service ever had at once, asserted within the limit.
    fn assert_limit_held(&self) {
        let stats = self.fake.stats_now();
        let most = stats["max_in_flight"].as_u64().expect("max_in_flight");
        assert!(most <= LIMIT, "the service saw {most} queries at once against a limit of {LIMIT} on the file: {stats}");
    }
}

fn run_id_of(out: &Output) -> String {
    let stdout = text(&out.stdout);
    stdout.split_whitespace().nth(1).map(|id| id.trim_end_matches(':').to_owned()).unwrap_or_else(|| panic!("no run id in {stdout:?}"))
}

/// Each org ended once: as many outcomes as orgs, and the service saw no more queries than that
/// (a second try of an org after a kill queries again only if the first never answered).
fn assert_every_org_completed(run: &Value, orgs: u64) {
    assert_eq!(run["orgs_total"], orgs, "{run}");
    assert_eq!(run["outcomes"]["completed"], orgs, "every org completes: {run}");
    assert_eq!(run["state"], "done", "{run}");
}

#[test]
fn three_workers_on_one_file_hold_the_limit_through_a_kill_9_and_account_for_every_org() {
    let fleet = Fleet::new("200ms");
    let workers: Vec<Proc> = (0..3).map(|_| fleet.worker()).collect();
    let out = fleet.scheduler(&["--orgs", "120"]).wait_with_output(Duration::from_secs(60));
    assert!(out.status.success(), "{}\n{}", text(&out.stdout), text(&out.stderr));
    let run_id = run_id_of(&out);
    wait_until(Duration::from_secs(30), "queries reach the service", || fleet.fake.stats_now()["in_flight"].as_u64().unwrap_or(0) >= 3);
    workers[0].signal("KILL");
    let run = fleet.wait_accounted(&run_id, Duration::from_secs(120), &[&workers[1], &workers[2]]);
    assert_every_org_completed(&run, 120);
    fleet.assert_limit_held();
    let most = fleet.fake.stats_now()["max_in_flight"].as_u64().unwrap_or(0);
    assert_eq!(most, LIMIT, "the limit is used, not starved");
}

#[test]
fn a_worker_stopped_past_its_lease_and_heartbeat_leaves_its_jobs_to_the_others_or_holds_the_lock_and_the_limit_holds() {
    let fleet = Fleet::new("200ms");
    let workers: Vec<Proc> = (0..3).map(|_| fleet.worker()).collect();
    let out = fleet.scheduler(&["--orgs", "150"]).wait_with_output(Duration::from_secs(60));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run_id = run_id_of(&out);
    wait_until(Duration::from_secs(30), "queries reach the service", || fleet.fake.stats_now()["in_flight"].as_u64().unwrap_or(0) >= 3);
    workers[0].signal("STOP");
    // Stopped past its leases (1 s), its queries' bound (2 s) and its heartbeat (three missed
    // 2 s beats): the file counts two workers alive, and its jobs went back to the queue. Unless
    // the stop caught it inside a write transaction: then it holds the file's write lock, as
    // SQLite has it, and every writer waits (the limit cannot be passed, nothing is recorded)
    // until it goes on; `projectorctl` says the file is locked. Either is a right answer here.
    let status = std::cell::RefCell::new(String::new());
    projector_tests::wait_until_or(
        Duration::from_secs(60),
        || {
            let out = fleet.ctl(&["--json", "status"]);
            *status.borrow_mut() = format!("{}{}", text(&out.stdout), text(&out.stderr));
            let alive = serde_json::from_slice::<Value>(&out.stdout).ok().map(|s| s["workers"]["alive"].clone());
            alive == Some(Value::from(2)) || (!out.status.success() && status.borrow().contains("stayed locked"))
        },
        || format!("neither taken over nor locked: {}\n{}", status.borrow(), workers[1].log().tail(30)),
    );
    workers[0].signal("CONT");
    let run = fleet.wait_accounted(&run_id, Duration::from_secs(120), &[&workers[0], &workers[1], &workers[2]]);
    assert_every_org_completed(&run, 150);
    fleet.assert_limit_held();
}

#[test]
fn a_scheduler_killed_mid_fan_out_is_finished_by_resume_with_one_job_per_org() {
    let fleet = Fleet::new("10ms");
    const ORGS: i64 = 20_000;
    let file = fleet.file();
    let scheduler = fleet.scheduler(&["--orgs", &ORGS.to_string()]);
    // The plan is stored with the run in one transaction; then jobs go in 500 at a time. The
    // test takes the file's write lock as soon as the run exists, so the fan-out stops midway,
    // and the scheduler is killed there.
    let rt = projector_tests::runtime();
    let (db, lock) = rt.block_on(async {
        let db = projector_sqlite::Database::open(&format!("sqlite://{}", file.display()), Duration::from_secs(5)).await.expect("file");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let runs: i64 =
                projector_sqlite::sqlx::query_scalar("SELECT count(*) FROM projector_runs").fetch_one(db.pool()).await.unwrap_or(0);
            if runs > 0 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the run was never created: {}", scheduler.log().tail(20));
            tokio::task::yield_now().await;
        }
        let lock = db.pool().begin_with("BEGIN IMMEDIATE").await.expect("the write lock");
        (db, lock)
    });
    scheduler.signal("KILL");
    let enqueued = |db: &projector_sqlite::Database| -> (i64, i64) {
        rt.block_on(async {
            projector_sqlite::sqlx::query_as(
                "SELECT (SELECT count(*) FROM Jobs), (SELECT count(*) FROM projector_run_orgs WHERE enqueued = 1)",
            )
            .fetch_one(db.pool())
            .await
            .expect("counts")
        })
    };
    rt.block_on(async { lock.rollback().await.expect("release") });
    let (jobs, marked) = enqueued(&db);
    assert!(jobs < ORGS, "the fan-out was cut short ({jobs} of {ORGS} jobs in the queue)");
    assert!(marked <= jobs, "an org is marked enqueued only once its job is in: {marked} marked, {jobs} jobs");
    let run_id = fleet.run_id();
    assert_eq!(fleet.run(&run_id)["state"], "fanning out");
    let out = fleet.scheduler(&["--resume", &run_id]).wait_with_output(Duration::from_secs(120));
    assert!(out.status.success(), "{}\n{}", text(&out.stdout), text(&out.stderr));
    let (jobs, marked) = enqueued(&db);
    assert_eq!((jobs, marked), (ORGS, ORGS), "one job per org after the resume, none twice");
    let distinct: i64 = rt.block_on(async {
        projector_sqlite::sqlx::query_scalar("SELECT count(DISTINCT idempotency_key) FROM Jobs").fetch_one(db.pool()).await.expect("count")
    });
    assert_eq!(distinct, ORGS);
    assert_eq!(fleet.run(&run_id)["state"], "running");
}

#[test]
fn every_process_killed_mid_run_and_restarted_finishes_the_run() {
    let fleet = Fleet::new("300ms");
    let workers: Vec<Proc> = (0..3).map(|_| fleet.worker()).collect();
    let waiting = fleet.scheduler(&["--orgs", "100", "--wait", "--wait-timeout", "5m"]);
    wait_until(Duration::from_secs(30), "queries reach the service", || fleet.fake.stats_now()["requests"].as_u64().unwrap_or(0) >= 10);
    let run_id = fleet.run_id();
    for w in &workers {
        w.signal("KILL");
    }
    waiting.signal("KILL");
    drop(workers);
    let before = fleet.run(&run_id);
    assert!(before["accounted"].as_u64() < Some(100), "killed mid-run: {before}");
    let workers: Vec<Proc> = (0..3).map(|_| fleet.worker()).collect();
    let summary = fleet.dir.path().join("summary.json");
    let out = fleet
        .scheduler(&["--resume", &run_id, "--wait", "--wait-timeout", "3m", "--summary-json", &summary.display().to_string()])
        .wait_with_output(Duration::from_secs(200));
    assert!(out.status.success(), "{}\n{}\n{}", text(&out.stdout), text(&out.stderr), workers[0].log().tail(20));
    let s: Value = serde_json::from_str(&std::fs::read_to_string(&summary).expect("summary")).expect("JSON");
    assert_eq!(s["completed"], 100, "{s}");
    assert_every_org_completed(&fleet.run(&run_id), 100);
    fleet.assert_limit_held();
}

#[test]
fn operators_pause_flag_and_read_the_file_and_redis_only_commands_say_what_to_use() {
    let fleet = Fleet::new("10ms");
    let out = fleet.ctl(&["pause", "--reason", "maintenance"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let worker = fleet.worker();
    let out = fleet.scheduler(&["--orgs", "10"]).wait_with_output(Duration::from_secs(60));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run_id = run_id_of(&out);
    worker.wait_for_line(&["fleet paused"], Duration::from_secs(30));
    assert_eq!(fleet.run(&run_id)["accounted"], 0, "a paused fleet takes no job");
    // Org 3 on the legacy path: shown with its effect, confirmed with --yes.
    let out = fleet.ctl(&["flag", "set", "--deny", "3", "--yes"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(fleet.ctl(&["resume"]).status.success());
    let run = fleet.wait_accounted(&run_id, Duration::from_secs(60), &[&worker]);
    assert_every_org_completed(&run, 10);
    let explain = text(&fleet.ctl(&["explain", &run_id, "3"]).stdout);
    assert!(explain.contains("legacy path"), "org 3 took the legacy path: {explain}");
    let workers: Value = serde_json::from_slice(&fleet.ctl(&["--json", "workers"]).stdout).expect("workers JSON");
    assert_eq!(workers["alive"], 1, "{workers}");
    // The status page reads the same file.
    let addr = format!("127.0.0.1:{}", projector_tests::free_port());
    let mut page = command(workspace_bin("projectorctl"));
    page.args(["serve", "--addr", &addr]).envs(fleet.env.iter().cloned());
    let page = Proc::spawn(page);
    page.wait_for_line(&["serving"], Duration::from_secs(30));
    let status: Value = serde_json::from_str(&projector_tests::http_get(&format!("http://{addr}/api/status"))).expect("status JSON");
    assert_eq!(status["backend"]["kind"], "sqlite", "{status}");
    assert_eq!(status["run"]["run_id"], run_id.as_str(), "{status}");
    assert!(projector_tests::http_get(&format!("http://{addr}/runs/{run_id}")).contains(&run_id));
    // The slots of the file: a limit set for every process, and handed back to configuration.
    assert!(fleet.ctl(&["slots", "set-limit", "2"]).status.success());
    let slots: Value = serde_json::from_slice(&fleet.ctl(&["--json", "slots", "inspect"]).stdout).expect("slots JSON");
    assert_eq!((slots["limit"].as_u64(), slots["holders"].as_u64()), (Some(2), Some(0)), "{slots}");
    let status: Value = serde_json::from_slice(&fleet.ctl(&["--json", "status"]).stdout).expect("status JSON");
    assert_eq!(status["limit"]["in_force"], 2, "{status}");
    assert!(text(&fleet.ctl(&["slots", "reset-limit"]).stdout).contains("stored limit removed"));
    for args in [&["rate", "show"][..], &["jobs", "dead"][..]] {
        let out = fleet.ctl(args);
        assert!(!out.status.success(), "{args:?} on the file");
        let err = text(&out.stderr);
        assert!(err.contains("only the Redis backend keeps") && err.contains("projectorctl status"), "{args:?}: {err}");
    }
}

/// A small tmpfs mounted for one test, unmounted when dropped: a disk that can be filled.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("mount");
        assert!(out.status.success(), "this test mounts a small tmpfs (run as root, as CI does): {}", text(&out.stderr));
        SmallDisk { dir }
    }

    /// Writes a file until the disk is full.
    fn fill(&self) -> PathBuf {
        let filler = self.dir.path().join("filler");
        let mut file = std::fs::File::create(&filler).expect("filler");
        let block = vec![0u8; 64 * 1024];
        while std::io::Write::write_all(&mut file, &block).is_ok() {}
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

#[test]
fn a_full_disk_mid_run_leaves_the_orgs_to_be_tried_again_and_none_is_lost() {
    let disk = SmallDisk::mount("32m");
    let mut fleet = Fleet::new("100ms");
    let dsn = format!("sqlite://{}", disk.dir.path().join("fleet.db").display());
    fleet.env.retain(|(k, _)| k != "PROJECTOR_BACKEND_DSN");
    fleet.env.push(("PROJECTOR_BACKEND_DSN".to_owned(), dsn));
    let worker = fleet.worker();
    let out = fleet.scheduler(&["--orgs", "80"]).wait_with_output(Duration::from_secs(60));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run_id = run_id_of(&out);
    wait_until(Duration::from_secs(30), "some orgs are recorded", || fleet.run(&run_id)["accounted"].as_u64().unwrap_or(0) >= 5);
    let filler = disk.fill();
    // Whichever write meets the full disk first (an outcome, a slot, the queue's fetch or
    // heartbeat, whose failure ends the job loop with the jobs in it), the org is tried again.
    worker.wait_for_line(&["disk is full"], Duration::from_secs(60));
    std::fs::remove_file(filler).expect("free the disk");
    let run = fleet.wait_accounted(&run_id, Duration::from_secs(120), &[&worker]);
    assert_every_org_completed(&run, 80);
    fleet.assert_limit_held();
}

#[test]
fn two_schedulers_serving_one_file_fan_each_tick_out_once_and_serve_their_metrics() {
    let mut fleet = Fleet::new("10ms");
    fleet.env.push(("PROJECTOR_SCHEDULE_CRON".to_owned(), "*/2 * * * * *".to_owned()));
    fleet.env.push(("PROJECTOR_ORGS_COUNT".to_owned(), "20".to_owned()));
    let worker = fleet.worker();
    let addrs: Vec<String> = (0..2).map(|_| format!("127.0.0.1:{}", projector_tests::free_port())).collect();
    let schedulers: Vec<Proc> = addrs
        .iter()
        .map(|addr| {
            let mut cmd = command(workspace_bin("projector-scheduler"));
            cmd.arg("serve").envs(fleet.env.iter().cloned()).env("PROJECTOR_SCHEDULE_METRICS_ADDR", addr);
            Proc::spawn(cmd)
        })
        .collect();
    for s in &schedulers {
        s.wait_for_line(&["scheduler serving on the SQLite file"], Duration::from_secs(30));
    }
    let runs = std::cell::RefCell::new(Value::Null);
    projector_tests::wait_until_or(
        Duration::from_secs(60),
        || {
            *runs.borrow_mut() = serde_json::from_slice(&fleet.ctl(&["--json", "runs", "list"]).stdout).unwrap_or(Value::Null);
            runs.borrow()["runs"].as_array().is_some_and(|r| r.len() >= 2 && r.iter().skip(1).all(|run| run["state"] == "done"))
        },
        || format!("two ticks not fanned out and done: {}\n{}", runs.borrow(), worker.log().tail(20)),
    );
    // Each tick's run was fanned out once, by one of the two: one job per org, whoever pushed.
    let db = fleet.file();
    let jobs: Vec<(String, i64)> = projector_tests::runtime().block_on(async {
        let db = projector_sqlite::Database::open(&format!("sqlite://{}", db.display()), Duration::from_secs(5)).await.expect("file");
        projector_sqlite::sqlx::query_as(
            "SELECT run_id, count(*) FROM projector_run_orgs WHERE enqueued = 1 GROUP BY run_id ORDER BY run_id",
        )
        .fetch_all(db.pool())
        .await
        .expect("rows")
    });
    assert!(jobs.iter().all(|(_, n)| *n == 20), "every org of every tick enqueued once: {jobs:?}");
    for run in runs.borrow()["runs"].as_array().expect("runs").iter().skip(1) {
        assert_eq!(run["outcomes"]["completed"], 20, "{run}");
    }
    for addr in &addrs {
        assert!(projector_tests::http_get(&format!("http://{addr}/metrics")).contains("projector_scheduler_ticks_total"));
    }
    // The two schedulers' counts of one tick outcome, summed.
    let ticks = |outcome: &str| -> f64 {
        let series = format!("projector_scheduler_ticks_total{{outcome=\"{outcome}\"}}");
        addrs
            .iter()
            .filter_map(|addr| projector_tests::sample(&projector_tests::http_get(&format!("http://{addr}/metrics")), &series))
            .sum()
    };
    let (fanned, elsewhere) = (ticks("fanned_out"), ticks("other_replica"));
    assert!(fanned >= 2.0 && elsewhere >= 1.0, "each tick fanned out by one, left by the other: {fanned} and {elsewhere}");
}
