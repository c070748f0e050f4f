//! The one error type of `projector-core`: input that cannot be read as the domain's types.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("malformed spike-projection job ({reason}); payload starts with {sample:?}; the job cannot run and is dropped")]
    MalformedJob { reason: String, sample: String },

    #[error("cannot read organizations file {path}: {source}")]
    OrgFile { path: std::path::PathBuf, source: std::io::Error },
}
