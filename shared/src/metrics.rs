//! Every metric name Projector emits, in Prometheus form; labels are bounded (never an org id).

/// Slots granted (`spike_projection.slot.acquired` in the seed).
pub const SLOT_ACQUIRED_TOTAL: &str = "spike_projection_slot_acquired_total";
/// Slots given back.
pub const SLOT_RELEASED_TOTAL: &str = "spike_projection_slot_released_total";
/// Slot waits that hit `slots.max_wait`.
pub const SLOT_WAIT_TIMEOUT_TOTAL: &str = "spike_projection_slot_wait_timeout_total";
/// Slots held now (gauge).
pub const CONCURRENT_QUERIES: &str = "spike_projection_concurrent_queries";
/// Slots held as a percentage of the limit (gauge).
pub const UTILIZATION_PERCENT: &str = "spike_projection_utilization_percent";
/// Time from asking for a slot to holding one or giving up (histogram).
pub const SLOT_WAIT_SECONDS: &str = "spike_projection_slot_wait_seconds";
/// Expired leases of dead or paused holders taken back.
pub const SLOT_LEASE_RECLAIMED_TOTAL: &str = "spike_projection_slot_lease_reclaimed_total";
/// Leases a live holder lost (renewal failed or came too late).
pub const SLOT_LEASE_LOST_TOTAL: &str = "spike_projection_slot_lease_lost_total";
/// Slots handed out by the local fallback limit because Redis was unreachable (`fail_open`).
pub const SLOT_FALLBACK_TOTAL: &str = "spike_projection_slot_fallback_total";

/// Jobs started.
pub const TASK_STARTED_TOTAL: &str = "run_spike_projection_started_total";
/// Jobs whose projections were stored.
pub const TASK_COMPLETED_TOTAL: &str = "run_spike_projection_completed_total";
/// Jobs skipped because no slot came within `slots.max_wait`.
pub const TASK_SKIPPED_NO_SLOT_TOTAL: &str = "run_spike_projection_skipped_no_slot_total";
/// Jobs that ended in an error, labelled `reason`.
pub const TASK_ERROR_TOTAL: &str = "run_spike_projection_error_total";

/// Duration of one query to the analytics store (histogram).
pub const QUERY_DURATION_SECONDS: &str = "projector_query_duration_seconds";
/// Query errors, labelled `kind`.
pub const QUERY_ERRORS_TOTAL: &str = "projector_query_errors_total";
/// Queries refused with HTTP 429 by the analytics store.
pub const QUERY_RATE_LIMITED_TOTAL: &str = "projector_query_rate_limited_total";

/// Projection writes refused because a newer run or a newer lease already wrote those hours.
pub const PROJECTION_STALE_REFUSED_TOTAL: &str = "projector_projection_stale_write_refused_total";

/// Jobs ready to run now (gauge; length of the apalis active list).
pub const QUEUE_READY_JOBS: &str = "projector_queue_ready_jobs";
/// Jobs waiting for their batch's release time (gauge; the apalis scheduled set).
pub const QUEUE_SCHEDULED_JOBS: &str = "projector_queue_scheduled_jobs";
/// Restarts of a worker's job loop after an error (usually Redis unreachable); backoff caps at 30 s.
pub const WORKER_RESTARTS_TOTAL: &str = "projector_worker_restarts_total";
