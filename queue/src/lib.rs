//! The job queue: everything that knows apalis-redis's keys, status strings and Lua, and
//! apalis-sqlite's table (`sqlite`) — its
//! settings, building and pushing jobs (delayed, deduplicated per run), moving due jobs to the
//! ready list in bounded steps, quarantining entries apalis cannot fetch, the vacuum of finished
//! jobs and the queue depth. Used by the scheduler's fan-out and by the worker. It relies on
//! apalis-redis 1.0.0's internal layout (docs/apalis-redis.md), hence the exact version pin.

mod apalis_layout;
mod dead;
mod inflight;
mod inspect;
mod promote;
mod push;
pub mod sqlite;
mod vacuum;

pub use apalis_layout::{QUEUES_LIST, config, job_dedupe, job_queue, worker_metadata};
pub use dead::{DeadJob, DeadJobsChanged, Quarantined, dead_jobs, purge_dead, quarantine_unfetchable, requeue_dead};
pub use inflight::{expire_worker, forget_worker, return_unstarted};
pub use inspect::{Depth, Overview, depth, overview};
pub use promote::promote_due;
pub use push::{QueuedJob, push, pushed, task};
pub use vacuum::{remove_run_jobs, vacuum_done};
