//! The one error type of `projector-scheduler`.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Shared(#[from] projector_shared::Error),

    /// The metrics endpoint `serve` shares with the worker process.
    #[error(transparent)]
    Worker(#[from] projector_worker::Error),

    /// A part of the job path (query settings, sink) of the embedded run.
    #[error(transparent)]
    Job(#[from] projector_job::Error),

    #[error("cannot enqueue jobs of run {run_id}: {detail}")]
    Enqueue { run_id: String, detail: String },

    #[error("cannot resume run {run_id}: {detail}")]
    Resume { run_id: String, detail: String },

    #[error("no organizations to run from {from}; nothing was enqueued (check orgs.source, orgs.path and orgs.count)")]
    NoOrgs { from: String },

    #[error(
        "organizations file {path} is refused, nothing was enqueued: {lines}{}",
        if *more > 0 { format!("; and {more} more line(s)") } else { String::new() }
    )]
    OrgFileRefused { path: String, lines: String, more: usize },
}

projector_shared::from_shared_errors!(Error, Error::Shared);
