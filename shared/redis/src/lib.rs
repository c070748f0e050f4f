//! `projector-redis`: the Redis every Projector process shares — one connection type for a
//! server, a cluster or a Sentinel set (`redis_conn`), the key layout carried as a value
//! (`keys::KeyLayout`), the one script registry with its `lua/lib/` includes (`lua`), the one
//! backoff (`backoff`), and the one classification of Redis failures (`RedisFailure`).
//!
//! It must never know what the keys hold: slots, rates and runs are `projector-limits`' and
//! `projector-runs`'; the queue is `projector-queue`'s.

pub mod backoff;
pub mod error;
pub mod keys;
pub mod lua;
pub mod redis_conn;

pub use error::{Error, RedisFailure};
