//! The one error type of `projector-core`: input that cannot be read as the domain's types.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("malformed spike-projection job ({reason}); payload starts with {sample:?}; the job cannot run and is dropped")]
    MalformedJob { reason: String, sample: String },

    // The cause is the error's source, printed once by the chain (`{:#}`), not here again.
    #[error("cannot read organizations file {path} (check orgs.path)")]
    OrgFile { path: std::path::PathBuf, source: std::io::Error },
}
