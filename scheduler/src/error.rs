//! The one error type of `projector-scheduler`.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Shared(#[from] projector_shared::Error),

    #[error(transparent)]
    Worker(#[from] projector_worker::Error),

    #[error("cannot enqueue jobs of run {run_id}: {detail}")]
    Enqueue { run_id: String, detail: String },

    #[error("the in-process workers stopped early: {0}")]
    Workers(String),

    #[error("run {run_id} interrupted with {accounted} of {total} orgs accounted for; re-run to finish the rest")]
    Interrupted { run_id: String, accounted: u64, total: u64 },
}
