//! What can stop a worker process: its metrics endpoint, a part of the job path that cannot be
//! built (the query service's settings, the sink), or Redis. Each keeps its source.

/// A worker process's error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot serve metrics on {addr}: {detail}")]
    Metrics { addr: std::net::SocketAddr, detail: String },

    #[error(transparent)]
    Job(#[from] projector_job::Error),

    #[error(transparent)]
    Shared(#[from] projector_shared::Error),
}

projector_shared::from_shared_errors!(Error, Error::Shared);
