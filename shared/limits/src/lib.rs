//! `projector-limits`: what bounds the fleet's queries — the cluster-wide concurrency slots
//! (`slots`: the `SlotLimiter` trait, its Redis, in-memory and fail-open limiters, the slot
//! history), the rate policies (`rate`) and the adaptive multiplier (`adaptive`).
//!
//! It must never know runs, the queue or the query service: it is told the service's numbers
//! (`projector_core::service`) and answers with slots and starts.

pub mod adaptive;
pub mod error;
pub mod rate;
pub mod slots;

pub use error::Error;
