//! The schema of a Projector database and its migrations, run at start in one write transaction:
//! from an empty file, or from any earlier schema, to this build's.
//!
//! The file says it is Projector's in its header (`PRAGMA application_id`) and which schema it
//! holds (`PRAGMA user_version`). A file that holds other tables, or a newer schema, is refused
//! before anything is written to it.

use crate::{Database, Error};

/// "Prjr" in the SQLite header: this file is a Projector database.
pub const APPLICATION_ID: i64 = 0x5072_6A72;

/// Each entry takes the schema from its index to its index + 1. Append only: a released entry is
/// never edited, because files in the field already hold what it made.
const MIGRATIONS: &[&str] = &[
    // 1: the clock, the slot limiters and the rate windows.
    "CREATE TABLE projector_clock (id INTEGER PRIMARY KEY CHECK (id = 1), ms INTEGER NOT NULL);
     INSERT INTO projector_clock (id, ms) VALUES (1, 0);
     CREATE TABLE projector_slot_limiters (
         name TEXT PRIMARY KEY,
         stored_limit INTEGER,
         paused_until_ms INTEGER NOT NULL DEFAULT 0,
         fence INTEGER NOT NULL DEFAULT 0,
         seq INTEGER NOT NULL DEFAULT 0,
         service_cap INTEGER,
         service_cap_until_ms INTEGER NOT NULL DEFAULT 0
     );
     CREATE TABLE projector_slot_leases (
         name TEXT NOT NULL,
         lease_id TEXT NOT NULL,
         holder TEXT NOT NULL,
         org_id INTEGER NOT NULL,
         acquired_ms INTEGER NOT NULL,
         expires_ms INTEGER NOT NULL,
         token INTEGER NOT NULL,
         PRIMARY KEY (name, lease_id)
     ) WITHOUT ROWID;
     CREATE TABLE projector_slot_waiters (
         name TEXT NOT NULL,
         waiter_id TEXT NOT NULL,
         seq INTEGER NOT NULL,
         holder TEXT NOT NULL,
         org_id INTEGER NOT NULL,
         deadline_ms INTEGER NOT NULL,
         seen_ms INTEGER NOT NULL,
         PRIMARY KEY (name, waiter_id)
     ) WITHOUT ROWID;
     CREATE INDEX projector_slot_waiters_line ON projector_slot_waiters (name, seq);
     CREATE TABLE projector_rate_windows (
         referrer TEXT NOT NULL,
         window TEXT NOT NULL,
         state TEXT NOT NULL,
         PRIMARY KEY (referrer, window)
     ) WITHOUT ROWID;
     CREATE TABLE projector_rate_cooldowns (referrer TEXT PRIMARY KEY, until_us INTEGER NOT NULL);",
    // 2: the projections (sink.kind = "sqlite"): one row per org and project, as the Redis sink
    // keeps one hash field, fenced by the run's first hour and the slot's token.
    "CREATE TABLE projector_projections (
         org_id INTEGER NOT NULL,
         project_id INTEGER NOT NULL,
         run_id TEXT NOT NULL,
         first_hour INTEGER NOT NULL,
         hourly TEXT NOT NULL,
         spike_threshold INTEGER NOT NULL,
         fencing_token INTEGER NOT NULL,
         written_ms INTEGER NOT NULL,
         PRIMARY KEY (org_id, project_id)
     ) WITHOUT ROWID;",
    // 3: the runs of a fleet on this file: one row per run, one per planned org (its batch,
    // projects, whether its job is in the queue, its outcome, attempt and trail), and the
    // operators' settings (the pause, the rollout flag).
    "CREATE TABLE projector_runs (
         run_id TEXT PRIMARY KEY,
         tick_ms INTEGER NOT NULL,
         created_ms INTEGER NOT NULL,
         orgs_total INTEGER NOT NULL,
         accounted INTEGER NOT NULL DEFAULT 0,
         deadline_ms INTEGER,
         pacing TEXT,
         fanned_out_ms INTEGER,
         finished_ms INTEGER,
         cancelled_ms INTEGER,
         retried INTEGER NOT NULL DEFAULT 0
     );
     CREATE INDEX projector_runs_created ON projector_runs (created_ms);
     CREATE TABLE projector_run_orgs (
         run_id TEXT NOT NULL,
         org_id INTEGER NOT NULL,
         batch INTEGER NOT NULL,
         projects TEXT NOT NULL,
         enqueued INTEGER NOT NULL DEFAULT 0,
         outcome TEXT,
         attempt INTEGER NOT NULL DEFAULT 0,
         trail TEXT NOT NULL DEFAULT '',
         PRIMARY KEY (run_id, org_id)
     ) WITHOUT ROWID;
     CREATE TABLE projector_settings (name TEXT PRIMARY KEY, value TEXT NOT NULL, set_ms INTEGER NOT NULL);",
    // 4: a finished run's completed orgs, compacted after runs.completed_detail: one packed list
    // per run of (org, when its outcome was recorded), a few bytes each.
    "CREATE TABLE projector_run_completed (run_id TEXT PRIMARY KEY, orgs BLOB NOT NULL, count INTEGER NOT NULL);",
];

/// The schema this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Tables apalis-sqlite keeps in the same file: their presence does not make a file foreign.
const APALIS_TABLES: &[&str] = &["Jobs", "Workers", "_sqlx_migrations"];

/// Brings `db` to [`SCHEMA_VERSION`], or refuses a file that is not Projector's or is newer.
pub(crate) async fn migrate(db: &Database) -> Result<(), Error> {
    migrate_to(db, SCHEMA_VERSION).await
}

/// Brings `db` to schema `target` (tests start from an earlier one).
pub(crate) async fn migrate_to(db: &Database, target: i64) -> Result<(), Error> {
    let doing = "migrating the schema";
    let err = || db.err(doing);
    // BEGIN IMMEDIATE: two processes starting at once migrate one after the other.
    let mut tx = db.pool().begin_with("BEGIN IMMEDIATE").await.map_err(err())?;
    let (app, version): (i64, i64) =
        sqlx::query_as("SELECT (SELECT application_id FROM pragma_application_id), (SELECT user_version FROM pragma_user_version)")
            .fetch_one(&mut *tx)
            .await
            .map_err(err())?;
    if app != APPLICATION_ID {
        let tables: Vec<String> = sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
            .fetch_all(&mut *tx)
            .await
            .map_err(err())?;
        let foreign: Vec<String> = tables.into_iter().filter(|t| !APALIS_TABLES.contains(&t.as_str())).collect();
        if app != 0 || version != 0 || !foreign.is_empty() {
            return Err(Error::NotProjector { file: db.file().to_path_buf(), found: app, tables: foreign.join(", ") });
        }
    }
    if version > SCHEMA_VERSION {
        return Err(Error::NewerSchema { file: db.file().to_path_buf(), found: version, known: SCHEMA_VERSION });
    }
    if version >= target && version > 0 {
        // One write at start: a file this process cannot write (read-only, a full disk) is
        // refused now, not at the first outcome it would have lost.
        sqlx::query("UPDATE projector_clock SET ms = max(ms, CAST(unixepoch('subsec') * 1000 AS INTEGER)) WHERE id = 1")
            .execute(&mut *tx)
            .await
            .map_err(err())?;
        return tx.commit().await.map_err(err());
    }
    for (from, sql) in
        MIGRATIONS.iter().enumerate().skip(usize::try_from(version).unwrap_or(0)).take(usize::try_from(target - version).unwrap_or(0))
    {
        tracing::info!(file = %db.file().display(), from, to = from + 1, "migrating the SQLite schema");
        sqlx::raw_sql(sqlx::AssertSqlSafe(*sql)).execute(&mut *tx).await.map_err(err())?;
    }
    // Both pragmas write the header inside this transaction: a crash leaves the old schema whole.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {target};")))
        .execute(&mut *tx)
        .await
        .map_err(err())?;
    tx.commit().await.map_err(err())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DEFAULT_BUSY_TIMEOUT;

    fn dsn(dir: &tempfile::TempDir) -> String {
        format!("sqlite://{}", dir.path().join("fleet.db").display())
    }

    #[tokio::test]
    async fn every_earlier_schema_migrates_to_this_builds() {
        for start in 0..SCHEMA_VERSION {
            let dir = tempfile::tempdir().expect("tempdir");
            let options = crate::connect_options(&dsn(&dir)).expect("dsn");
            let pool = sqlx::sqlite::SqlitePoolOptions::new().connect_with(options.clone()).await.expect("pool");
            let writes = sqlx::sqlite::SqlitePoolOptions::new().connect_with(options).await.expect("pool");
            let early = Database {
                pool,
                writes,
                busy_timeout: DEFAULT_BUSY_TIMEOUT,
                file: dir.path().join("fleet.db"),
                writer: Default::default(),
            };
            migrate_to(&early, start).await.expect("the earlier schema");
            early.close().await;
            let db = Database::open(&dsn(&dir), DEFAULT_BUSY_TIMEOUT).await.expect("migrated");
            let version: i64 = sqlx::query_scalar("PRAGMA user_version").fetch_one(db.pool()).await.expect("version");
            assert_eq!(version, SCHEMA_VERSION, "from schema {start}");
        }
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused_and_left_as_it_was() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::open(&dsn(&dir), DEFAULT_BUSY_TIMEOUT).await.expect("open");
        let newer = SCHEMA_VERSION + 1;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("PRAGMA user_version = {newer}"))).execute(db.pool()).await.expect("bump");
        db.close().await;
        let e = Database::open(&dsn(&dir), DEFAULT_BUSY_TIMEOUT).await.expect_err("newer");
        let text = e.to_string();
        assert!(matches!(e, Error::NewerSchema { found, .. } if found == newer), "{text}");
        assert!(text.contains("fleet.db") && text.contains("newer release"), "{text}");
    }

    #[tokio::test]
    async fn a_file_of_another_application_is_refused_and_left_as_it_was() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = crate::connect_options(&dsn(&dir)).expect("dsn");
        let pool = sqlx::sqlite::SqlitePoolOptions::new().connect_with(options).await.expect("pool");
        sqlx::query("CREATE TABLE invoices (id INTEGER)").execute(&pool).await.expect("foreign table");
        pool.close().await;
        let e = Database::open(&dsn(&dir), DEFAULT_BUSY_TIMEOUT).await.expect_err("foreign");
        let text = e.to_string();
        assert!(text.contains("not a Projector database") && text.contains("invoices"), "{text}");
    }

    #[tokio::test]
    async fn a_file_that_is_not_sqlite_is_refused_with_advice() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("fleet.db"), "org_id,name\n1,acme\n".repeat(100)).expect("text file");
        let e = Database::open(&dsn(&dir), DEFAULT_BUSY_TIMEOUT).await.expect_err("not sqlite");
        assert_eq!(e.failure(), Some(crate::SqliteFailure::NotADatabase), "{e}");
        assert!(e.to_string().contains("fleet.db"), "{e}");
        let left = std::fs::read_to_string(dir.path().join("fleet.db")).expect("still there");
        assert!(left.starts_with("org_id,name"), "the file is left as it was");
    }
}
