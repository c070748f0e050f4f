//! The SQLite file a single-machine fleet shares: opening it (WAL, busy timeout), its schema and
//! migrations, the write transaction every change goes through, and the one clock every process
//! agrees on.
//!
//! **The clock.** Redis time decides leases and windows in the Redis backend. Here every process
//! runs on one machine and reads one kernel clock, so the file's time is that clock, read by
//! SQLite (`unixepoch('subsec')`) inside the write transaction that uses it. The file keeps the
//! highest time any transaction has used (`projector_clock`), and a transaction never uses a time
//! below it: a clock stepped backwards (NTP, a VM restored) never moves a lease or a window back,
//! and times are ordered as the transactions that took them are. After a reboot the clock goes on
//! from that mark.

mod error;
mod schema;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, Transaction};

pub use error::{Error, SqliteFailure};
pub use schema::{APPLICATION_ID, SCHEMA_VERSION};
pub use sqlx;

/// How long a process waits for another's write lock by default (`backend.busy_timeout`).
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// One open Projector database: a small pool of connections to one file.
#[derive(Debug, Clone)]
pub struct Database {
    pool: SqlitePool,
    /// Connections for Projector's own write transactions, with no busy handler: a `BEGIN
    /// IMMEDIATE` that meets another process's lock is tried again here at once, then every
    /// millisecond, instead of in SQLite's handler, whose sleeps grow to 100 ms (docs/sqlite.md).
    writes: SqlitePool,
    busy_timeout: Duration,
    file: PathBuf,
    /// This process's writers take turns here before they take the file's write lock: a writer
    /// that meets the lock held waits in SQLite's busy handler, which sleeps in steps of 1 to
    /// 100 ms, far longer than a Projector transaction holds it. Other processes still meet it.
    writer: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// A write transaction (`BEGIN IMMEDIATE`: it holds the file's write lock from its start, so
/// what it reads cannot change before it commits) and the file's time when it began.
pub struct Write {
    pub tx: Transaction<'static, Sqlite>,
    /// The file's clock (ms since the epoch), never below a time an earlier transaction used.
    pub now_ms: i64,
    file: PathBuf,
    doing: &'static str,
    /// This process's turn to write, given back after the transaction ends (fields drop in
    /// order: the transaction first).
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

impl Write {
    /// Commits; the changes are in the file (and its WAL) when this returns.
    pub async fn commit(self) -> Result<(), Error> {
        let Write { tx, file, doing, _turn, .. } = self;
        tx.commit().await.map_err(Error::sqlite(format!("committing {doing}"), file))
    }

    /// Wraps a driver error of a statement in this transaction.
    pub fn err(&self) -> impl FnOnce(sqlx::Error) -> Error {
        Error::sqlite(self.doing, self.file.clone())
    }
}

impl Database {
    /// Opens (creating if missing) the file `dsn` names, `sqlite:///absolute/path.db` or
    /// `sqlite://relative.db` as sqlx reads it, and brings its schema up to date.
    pub async fn open(dsn: &str, busy_timeout: Duration) -> Result<Database, Error> {
        // Processes that open a new file together meet locks SQLite does not wait for (the
        // switch to WAL, the first migration): such a refusal is tried again, within the same
        // `busy_timeout` a held lock is waited for.
        let started = std::time::Instant::now();
        let mut pause = Duration::from_millis(10);
        loop {
            match Database::open_once(dsn, busy_timeout).await {
                Err(e) if e.failure() == Some(SqliteFailure::Locked) && started.elapsed() + pause < busy_timeout => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                opened => return opened,
            }
        }
    }

    async fn open_once(dsn: &str, busy_timeout: Duration) -> Result<Database, Error> {
        let options = connect_options(dsn)?.busy_timeout(busy_timeout);
        let file = options.get_filename().to_path_buf();
        refuse_network_file_system(&file)?;
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .min_connections(1)
            // A pool wait longer than the lock's own is a lock held past it, and is said so.
            .acquire_timeout(busy_timeout + Duration::from_secs(1))
            .connect_with(options)
            .await
            .map_err(Error::sqlite("opening the database", &file))?;
        let writes = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .acquire_timeout(busy_timeout + Duration::from_secs(1))
            .connect_with(connect_options(dsn)?.busy_timeout(Duration::ZERO))
            .await
            .map_err(Error::sqlite("opening the database", &file))?;
        let db = Database { pool, writes, busy_timeout, file, writer: Default::default() };
        schema::migrate(&db).await?;
        Ok(db)
    }

    /// The file this database lives in.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The pool, for apalis-sqlite's storage and for reads.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Begins a write transaction for `doing` and reads the file's clock in it.
    pub async fn write(&self, doing: &'static str) -> Result<Write, Error> {
        let err = || Error::sqlite(doing, self.file.clone());
        let turn = self.writer.clone().lock_owned().await;
        let mut tx = self.begin_immediate().await.map_err(err())?;
        let now_ms: i64 = sqlx::query_scalar(
            "UPDATE projector_clock SET ms = max(ms, CAST(unixepoch('subsec') * 1000 AS INTEGER)) WHERE id = 1 RETURNING ms",
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(err())?;
        Ok(Write { tx, now_ms, file: self.file.clone(), doing, _turn: turn })
    }

    /// `BEGIN IMMEDIATE` on a connection without a busy handler, tried again while another
    /// process holds the lock: at once for the first 2 ms (a Projector transaction holds it for
    /// well under a millisecond), then every millisecond, until `backend.busy_timeout`.
    async fn begin_immediate(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        let started = std::time::Instant::now();
        loop {
            match self.writes.begin_with("BEGIN IMMEDIATE").await {
                Err(e) if SqliteFailure::of(&e) == SqliteFailure::Locked && started.elapsed() < self.busy_timeout => {
                    if started.elapsed() < Duration::from_millis(2) {
                        tokio::task::yield_now().await;
                    } else {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                begun => return begun,
            }
        }
    }

    /// The file's clock for a read outside a write transaction: the machine's clock, never below
    /// the last time a transaction used.
    pub async fn now_ms(&self) -> Result<i64, Error> {
        sqlx::query_scalar("SELECT max(ms, CAST(unixepoch('subsec') * 1000 AS INTEGER)) FROM projector_clock WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(Error::sqlite("reading the clock", self.file.clone()))
    }

    /// Wraps a driver error met while `doing` something on this file.
    pub fn err(&self, doing: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Error {
        Error::sqlite(doing, self.file.clone())
    }

    /// Closes every connection (checkpointing the WAL when this is the last process).
    pub async fn close(&self) {
        self.writes.close().await;
        self.pool.close().await;
    }
}

/// Parses `backend.dsn` as sqlx does, with Projector's settings: WAL (readers never wait for the
/// writer), `synchronous = NORMAL` (a commit survives any process crash, kill -9 included; an
/// operating-system crash can lose the last commits, never the file's consistency), and the
/// file created when missing.
pub fn connect_options(dsn: &str) -> Result<SqliteConnectOptions, Error> {
    let bad = |problem: &str| Error::Dsn { dsn: dsn.to_owned(), problem: problem.to_owned() };
    if !dsn.starts_with("sqlite:") {
        return Err(bad("is not a SQLite URL: write sqlite:///absolute/path.db or sqlite://relative.db"));
    }
    let options = SqliteConnectOptions::from_str(dsn).map_err(|e| bad(&format!("cannot be read: {e}")))?;
    let file = options.get_filename().to_string_lossy().into_owned();
    if file.is_empty() || file.contains(":memory:") || file.starts_with("file:sqlx-in-memory") || dsn.contains("mode=memory") {
        return Err(bad(
            "names no file: an in-memory SQLite database lives and dies with one process; use backend.kind = \"memory\" for that, or name a file",
        ));
    }
    Ok(options.create_if_missing(true).journal_mode(SqliteJournalMode::Wal).synchronous(SqliteSynchronous::Normal).foreign_keys(false))
}

/// File systems shared over a network, where SQLite's locks (and the shared memory of its WAL)
/// do not hold between hosts: https://www.sqlite.org/wal.html, "all processes using a database
/// must be on the same host computer".
const NETWORK_FILE_SYSTEMS: &[&str] = &["nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "lustre", "fuse.sshfs"];

/// Refuses a file whose folder is on a network file system, as `/proc/self/mountinfo` tells
/// (Linux); elsewhere, or when it cannot be read, nothing is refused.
fn refuse_network_file_system(file: &Path) -> Result<(), Error> {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else { return Ok(()) };
    let folder = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let Ok(folder) = folder.canonicalize() else { return Ok(()) };
    match file_system_of(&mountinfo, &folder) {
        Some(fstype) if NETWORK_FILE_SYSTEMS.contains(&fstype.as_str()) => {
            Err(Error::NetworkFileSystem { file: file.to_path_buf(), fstype })
        }
        _ => Ok(()),
    }
}

/// The type of the file system `path` is on: that of the longest mount point above it.
fn file_system_of(mountinfo: &str, path: &Path) -> Option<String> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (mount, rest) = line.split_once(" - ")?;
            let mount_point = mount.split(' ').nth(4)?;
            let fstype = rest.split(' ').next()?;
            path.starts_with(mount_point).then(|| (mount_point.len(), fstype.to_owned()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, fstype)| fstype)
}

/// The file a DSN names, for messages and checks made before opening it.
pub fn file_of(dsn: &str) -> Result<PathBuf, Error> {
    Ok(connect_options(dsn)?.get_filename().to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dsn(dir: &tempfile::TempDir, name: &str) -> String {
        format!("sqlite://{}", dir.path().join(name).display())
    }

    #[tokio::test]
    async fn a_new_file_is_created_migrated_and_marked_as_projectors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::open(&dsn(&dir, "fleet.db"), DEFAULT_BUSY_TIMEOUT).await.expect("open");
        let (app, version): (i64, i64) =
            sqlx::query_as("SELECT (SELECT application_id FROM pragma_application_id), (SELECT user_version FROM pragma_user_version)")
                .fetch_one(db.pool())
                .await
                .expect("pragmas");
        assert_eq!((app, version), (APPLICATION_ID, SCHEMA_VERSION));
        let journal: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(db.pool()).await.expect("journal");
        assert_eq!(journal, "wal");
        db.close().await;
        // Opened again, nothing is migrated twice.
        Database::open(&dsn(&dir, "fleet.db"), DEFAULT_BUSY_TIMEOUT).await.expect("reopen");
    }

    #[tokio::test]
    async fn the_clock_never_goes_back_below_a_time_a_transaction_used() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::open(&dsn(&dir, "clock.db"), DEFAULT_BUSY_TIMEOUT).await.expect("open");
        let ahead = db.now_ms().await.expect("now") + 3_600_000;
        // As if a clock an hour fast had been stepped back after a transaction used it.
        sqlx::query("UPDATE projector_clock SET ms = ?").bind(ahead).execute(db.pool()).await.expect("set");
        let w = db.write("a test").await.expect("write");
        assert_eq!(w.now_ms, ahead, "a write never takes a time below the mark");
        w.commit().await.expect("commit");
        assert_eq!(db.now_ms().await.expect("now"), ahead);
    }

    #[tokio::test]
    async fn a_file_locked_past_the_busy_timeout_is_named_with_what_to_do_and_left_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let holder = Database::open(&dsn(&dir, "locked.db"), DEFAULT_BUSY_TIMEOUT).await.expect("open");
        let held = holder.write("holding the lock").await.expect("lock");
        let started = std::time::Instant::now();
        let e = Database::open(&dsn(&dir, "locked.db"), Duration::from_millis(300)).await.expect_err("locked");
        assert!(started.elapsed() >= Duration::from_millis(300), "it waited backend.busy_timeout first");
        assert_eq!(e.failure(), Some(SqliteFailure::Locked), "{e}");
        let text = e.to_string();
        assert!(text.contains("locked.db") && text.contains("backend.busy_timeout") && text.contains("fuser"), "{text}");
        assert!(e.is_retryable());
        held.commit().await.expect("the holder is unharmed");
        Database::open(&dsn(&dir, "locked.db"), Duration::from_millis(300)).await.expect("opens once the lock is gone");
    }

    #[tokio::test]
    async fn a_read_only_file_refuses_writes_with_advice_and_keeps_what_it_holds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::open(&dsn(&dir, "ro.db"), DEFAULT_BUSY_TIMEOUT).await.expect("open");
        db.close().await;
        let read_only = format!("{}?mode=ro", dsn(&dir, "ro.db"));
        let e = Database::open(&read_only, DEFAULT_BUSY_TIMEOUT).await.expect_err("read-only");
        assert_eq!(e.failure(), Some(SqliteFailure::ReadOnly), "{e}");
        assert!(e.to_string().contains("writable"), "{e}");
        let db = Database::open(&dsn(&dir, "ro.db"), DEFAULT_BUSY_TIMEOUT).await.expect("still a Projector database");
        let version: i64 = sqlx::query_scalar("PRAGMA user_version").fetch_one(db.pool()).await.expect("version");
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[test]
    fn a_file_on_a_network_file_system_is_found_by_its_mount() {
        let mountinfo = "27 1 252:0 / / rw,relatime - ext4 /dev/vda rw\n\
                         90 27 0:50 / /mnt/shared rw,relatime - nfs4 server:/export rw,vers=4.2\n\
                         91 90 0:51 / /mnt/shared/local rw,relatime - tmpfs tmpfs rw\n";
        assert_eq!(file_system_of(mountinfo, Path::new("/mnt/shared/projector")).as_deref(), Some("nfs4"));
        assert_eq!(file_system_of(mountinfo, Path::new("/mnt/shared/local/x")).as_deref(), Some("tmpfs"));
        assert_eq!(file_system_of(mountinfo, Path::new("/var/lib/projector")).as_deref(), Some("ext4"));
        // A mount point is a whole path component: /mnt/sharedfoo is not under /mnt/shared.
        assert_eq!(file_system_of(mountinfo, Path::new("/mnt/sharedfoo")).as_deref(), Some("ext4"));
        let e = Error::NetworkFileSystem { file: PathBuf::from("/mnt/shared/fleet.db"), fstype: "nfs4".to_owned() };
        assert!(e.to_string().contains("/mnt/shared/fleet.db") && e.to_string().contains("backend.kind = \"redis\""), "{e}");
    }

    #[test]
    fn a_dsn_that_names_no_file_is_refused_with_the_forms_that_work() {
        for dsn in ["redis://127.0.0.1:6379", "sqlite::memory:", "sqlite://:memory:", "sqlite:"] {
            let e = connect_options(dsn).expect_err(dsn).to_string();
            assert!(e.contains(dsn), "{e}");
            assert!(e.contains("sqlite:///") || e.contains("backend.kind = \"memory\""), "{e}");
        }
        let relative = file_of("sqlite://relative.db").expect("relative");
        assert_eq!(relative, PathBuf::from("relative.db"));
        assert_eq!(file_of("sqlite:///var/lib/projector/fleet.db").expect("absolute"), PathBuf::from("/var/lib/projector/fleet.db"));
    }
}
