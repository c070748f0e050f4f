//! The scheduler: lists organizations, plans batches and fans out one spike-projection job per
//! organization. It also hosts the embedded run, where the worker pipeline runs in the same process.

pub mod distributed;
pub mod embedded;
pub mod error;
pub mod fanout;
pub mod health;
pub mod on_file;
pub mod orgs;
pub mod progress;
pub mod report;

pub use error::Error;
