//! The projection store's one error type, with messages that say what to check.

/// Everything the PostgreSQL store can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("sink.postgres_url {url} is not a PostgreSQL URL: {detail} (expected postgresql://user[:password]@host[:port]/database)")]
    BadUrl { url: String, detail: String },

    #[error("cannot reach {target}: {detail} (is PostgreSQL up, and does the URL's user have access?)")]
    Unreachable { target: String, detail: String },

    #[error("{what} failed on {target}: {detail}")]
    Statement { target: String, what: &'static str, transient: bool, detail: String },

    #[error("{what} = {value} does not fit PostgreSQL's bigint; the write was refused whole")]
    OutOfRange { what: &'static str, value: u64 },

    #[error(
        "the schema on {target} is at migration {found}, newer than this build knows ({known}); run a build at least as new, or restore the database"
    )]
    SchemaNewer { target: String, found: i32, known: i32 },
}

impl Error {
    /// Worth retrying: the store was unreachable or the connection broke, not the statement wrong.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unreachable { .. } => true,
            Error::Statement { transient, .. } => *transient,
            Error::BadUrl { .. } | Error::OutOfRange { .. } | Error::SchemaNewer { .. } => false,
        }
    }
}

/// A broken connection, or a server that is shutting down, starting or overloaded.
pub(crate) fn is_transient(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        // Class 08 (connection exception), 57P01-03 (shutdown, crash, cannot connect now),
        // 53300 (too many connections), 40001/40P01 (serialization failure, deadlock).
        Some(code) => {
            let code = code.code();
            code.starts_with("08") || code.starts_with("57P0") || code == "53300" || code == "40001" || code == "40P01"
        }
        // No SQLSTATE: an I/O error on the socket.
        None => true,
    }
}

/// The server's message with its detail and hint, or the driver's.
pub(crate) fn detail(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut text = format!("{} ({})", db.message(), db.code().code());
            if let Some(d) = db.detail() {
                text.push_str(&format!("; {d}"));
            }
            if let Some(h) = db.hint() {
                text.push_str(&format!("; hint: {h}"));
            }
            text
        }
        None => e.to_string(),
    }
}

/// Maps a failed statement to [`Error::Statement`], naming what was being done and where.
pub(crate) fn statement<'a>(target: &'a str, what: &'static str) -> impl Fn(tokio_postgres::Error) -> Error + 'a {
    move |e| Error::Statement { target: target.to_owned(), what, transient: is_transient(&e), detail: detail(&e) }
}
