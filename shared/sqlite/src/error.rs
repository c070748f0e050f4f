//! The one error type of `projector-sqlite`: what was being done, on which file, the class of
//! the failure and the advice for that class, so that a person on call can act on it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{} ({}) while {doing}: {source} ({})", failure.headline(), file.display(), failure.advice())]
    Sqlite {
        doing: String,
        file: PathBuf,
        failure: SqliteFailure,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "{} is not a Projector database (application_id {found:#x}, tables: {tables}): point backend.dsn at a new file or at the file a Projector fleet wrote; nothing was changed",
        file.display()
    )]
    NotProjector { file: PathBuf, found: i64, tables: String },
    #[error(
        "{} was written by a newer Projector (schema {found}; this build knows up to {known}): run the newer release, or point backend.dsn at another file; nothing was changed",
        file.display()
    )]
    NewerSchema { file: PathBuf, found: i64, known: i64 },
    #[error(
        "{} is on a network file system ({fstype}): SQLite's locks and its WAL do not work across hosts there, so a fleet of several hosts on one file would break the limit; keep the file on a local disk of the one machine, or use backend.kind = \"redis\" for several hosts",
        file.display()
    )]
    NetworkFileSystem { file: PathBuf, fstype: String },
    #[error("backend.dsn {dsn:?} {problem}")]
    Dsn { dsn: String, problem: String },
}

impl Error {
    /// Wraps a driver error with what was being done on which file.
    pub fn sqlite(doing: impl Into<String>, file: impl Into<PathBuf>) -> impl FnOnce(sqlx::Error) -> Error {
        let (doing, file) = (doing.into(), file.into());
        move |source| Error::Sqlite { doing, file, failure: SqliteFailure::of(&source), source }
    }

    /// The class of the failure, when the driver reported one.
    pub fn failure(&self) -> Option<SqliteFailure> {
        match self {
            Error::Sqlite { failure, .. } => Some(*failure),
            _ => None,
        }
    }

    /// A try that failed with this error could succeed later (a lock released, space freed).
    pub fn is_retryable(&self) -> bool {
        self.failure().is_some_and(SqliteFailure::may_heal)
    }
}

/// What went wrong with the file, in words with their own advice: "locked" and "disk full" send
/// the person on call different ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqliteFailure {
    /// Another process held the write lock past `backend.busy_timeout` (SQLITE_BUSY, SQLITE_LOCKED).
    Locked,
    /// The file, its folder or its `-wal`/`-shm` files cannot be written (SQLITE_READONLY).
    ReadOnly,
    /// The disk or quota is full (SQLITE_FULL).
    Full,
    /// The file cannot be opened or created (SQLITE_CANTOPEN).
    CantOpen,
    /// The file is not a SQLite database or is damaged (SQLITE_NOTADB, SQLITE_CORRUPT).
    NotADatabase,
    /// An I/O error from the operating system (SQLITE_IOERR).
    Io,
    /// Anything else: a driver or pool failure, a constraint.
    Other,
}

impl SqliteFailure {
    pub fn of(e: &sqlx::Error) -> SqliteFailure {
        match e {
            sqlx::Error::Database(db) => {
                let code = db.code().and_then(|c| c.parse::<i64>().ok()).unwrap_or(0);
                match code & 0xff {
                    5 | 6 => SqliteFailure::Locked,
                    8 => SqliteFailure::ReadOnly,
                    13 => SqliteFailure::Full,
                    14 => SqliteFailure::CantOpen,
                    11 | 26 => SqliteFailure::NotADatabase,
                    10 => SqliteFailure::Io,
                    _ => SqliteFailure::Other,
                }
            }
            sqlx::Error::PoolTimedOut => SqliteFailure::Locked,
            _ => SqliteFailure::Other,
        }
    }

    pub fn headline(self) -> &'static str {
        match self {
            SqliteFailure::Locked => "the SQLite file stayed locked past backend.busy_timeout",
            SqliteFailure::ReadOnly => "the SQLite file is read-only",
            SqliteFailure::Full => "the disk holding the SQLite file is full",
            SqliteFailure::CantOpen => "the SQLite file cannot be opened",
            SqliteFailure::NotADatabase => "the file is not a SQLite database or is damaged",
            SqliteFailure::Io => "an I/O error on the SQLite file",
            SqliteFailure::Other => "SQLite failed",
        }
    }

    pub fn advice(self) -> &'static str {
        match self {
            SqliteFailure::Locked => {
                "another process holds a write transaction: find it with `fuser <file>`; raise backend.busy_timeout if it is a Projector process under load"
            }
            SqliteFailure::ReadOnly => {
                "make the file, its -wal and -shm files and their folder writable by this user (a fleet shares one file, so run its processes as one user)"
            }
            SqliteFailure::Full => "free space on that disk; nothing recorded so far is lost, and the failed write is tried again",
            SqliteFailure::CantOpen => "check that the folder exists and that this user may create files in it",
            SqliteFailure::NotADatabase => {
                "point backend.dsn at a Projector database or at a new file; restore from a backup if it was one"
            }
            SqliteFailure::Io => "check the disk (dmesg) and the file system",
            SqliteFailure::Other => "see the detail",
        }
    }

    /// A later try may pass without anyone changing the file or its settings.
    pub fn may_heal(self) -> bool {
        matches!(self, SqliteFailure::Locked | SqliteFailure::Full | SqliteFailure::Io | SqliteFailure::Other)
    }
}
