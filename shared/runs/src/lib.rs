//! `projector-runs`: the fleet's runs and members in Redis — run records, plans, trails and the
//! `RunLedger` trait with its in-memory and Redis ledgers (`ledger`, `run_record`), worker
//! heartbeats (`heartbeat`), the fleet-wide pause (`pause`), the rollout flag (`rollout`) and
//! fleet events such as cancels (`events`); on one machine's SQLite file, the run records
//! (`sqlite`: writes, `sqlite_reads`, `sqlite_compact`), the pause and the flag
//! (`sqlite_settings`).
//!
//! It must never know slots, rates, the queue or the query service.

pub mod compact;
pub mod error;
pub mod events;
pub mod heartbeat;
pub mod ledger;
pub mod pause;
pub mod rollout;
pub mod run_record;
pub mod sqlite;
pub mod sqlite_compact;
pub mod sqlite_reads;
pub mod sqlite_settings;

pub use error::Error;
