//! Every metric name Projector emits, in Prometheus form; labels are bounded (never an org id).

/// Slots granted (`spike_projection.slot.acquired` in statsd form).
pub const SLOT_ACQUIRED_TOTAL: &str = "spike_projection_slot_acquired_total";
/// Slots given back.
pub const SLOT_RELEASED_TOTAL: &str = "spike_projection_slot_released_total";
/// Slot waits that hit `slots.max_wait`.
pub const SLOT_WAIT_TIMEOUT_TOTAL: &str = "spike_projection_slot_wait_timeout_total";
/// Slots this process holds now (gauge; 0 whenever it holds none). `sum()` over workers is the fleet's.
pub const CONCURRENT_QUERIES: &str = "spike_projection_concurrent_queries";
/// The fleet's live leases as a percentage of the limit in force, read from the limiter's own
/// state (gauge; every worker reports the same fleet-wide value: aggregate with `max()`).
pub const UTILIZATION_PERCENT: &str = "spike_projection_utilization_percent";
/// The slot limit in force (gauge; from Redis, where operators can change it; aggregate with `max()`).
pub const SLOT_LIMIT: &str = "spike_projection_slot_limit";
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

/// 200 answers the query service marked throttled (`quota_allowance.summary.is_throttled`): its
/// early warning, below the limit where it starts refusing.
pub const QUERY_THROTTLED_TOTAL: &str = "projector_query_throttled_total";

/// 200 answers throttled by a policy other than the referrer's (bytes scanned): they say
/// nothing about the fleet's concurrency and feed no limit. Labelled `policy` (Snuba's class names).
pub const QUERY_THROTTLED_OTHER_TOTAL: &str = "projector_query_throttled_other_total";
/// Queries (pages) one org's history took (histogram): projects are read in groups whose every
/// hour fits one page of at most 10,000 rows.
pub const QUERY_PAGES: &str = "projector_query_pages";
/// The query service's own count of this referrer's running queries, from every caller, as its
/// latest answer to this process reported it (`ReferrerGuardRailPolicy.quota_used`; -1 when the
/// service's counter failed). Gauge, labelled `referrer`.
pub const SERVICE_QUOTA_USED: &str = "projector_service_quota_used";
/// The referrer's limit in force at the query service, overrides included
/// (`ReferrerGuardRailPolicy.rejection_threshold`). Gauge, labelled `referrer`.
pub const SERVICE_REJECTION_THRESHOLD: &str = "projector_service_rejection_threshold";
/// When this process last heard the service's numbers (Unix seconds, gauge): the two gauges
/// above hold their last value between runs, so anything comparing them with the fleet's
/// current queries must first check they are fresh.
pub const SERVICE_HEARD_SECONDS: &str = "projector_service_heard_timestamp_seconds";
/// Other callers' queries on the referrer at the query service: its count less the fleet's
/// leases at the same answers, the smallest over two 5-second windows (`lua/slots_service.lua`),
/// for a minute after the last answer; NaN without one. Gauge. Never the service's count of one
/// moment less the fleet's count of another.
pub const SERVICE_OTHER_CALLERS: &str = "projector_service_other_callers";
/// Slots kept after their query was abandoned (a client-side timeout, a lost lease, a cancel):
/// the service still counts such a query until it ends, so the slot is not handed on before
/// query.max_duration has passed since the query started.
pub const SLOT_KEPT_AFTER_ABANDON_TOTAL: &str = "projector_slot_kept_after_abandon_total";
/// Cron ticks a scheduler handled, labelled `outcome`: `fanned_out`, `skipped_overlap` (an
/// earlier run still open, `schedule.overlap`), `replaced` (the open run cancelled first),
/// `skipped_paused`, `other_replica`, `failed`.
pub const SCHEDULER_TICKS_TOTAL: &str = "projector_scheduler_ticks_total";
/// When the newest run of the fleet had every job in the queue (Unix seconds; gauge, from the
/// run record, reported by `projector-scheduler serve`; aggregate with `max()`).
pub const RUN_LAST_FANOUT_SECONDS: &str = "projector_run_last_fanout_timestamp_seconds";
/// When the newest finished run recorded its last org (Unix seconds; gauge, from the run record).
/// An hourly schedule that stops finishing runs shows here first: alert when it is older than two periods.
pub const RUN_LAST_FINISHED_SECONDS: &str = "projector_run_last_finished_timestamp_seconds";
/// How long the newest finished run took, from its tick to its last org (gauge, seconds).
pub const RUN_LAST_DURATION_SECONDS: &str = "projector_run_last_duration_seconds";
/// The newest finished run's orgs per outcome (gauge, labelled `outcome`).
pub const RUN_LAST_ORGS: &str = "projector_run_last_orgs";
/// Workers with a fresh heartbeat in Redis (gauge, reported by `projector-scheduler serve`):
/// 0 while runs are due means nobody runs the jobs.
pub const WORKERS_ALIVE: &str = "projector_workers_alive";
/// Seconds between two ticks of `schedule.cron` (gauge, from `serve`): alerts measure "no run
/// finished" in periods, whatever the schedule.
pub const SCHEDULE_PERIOD_SECONDS: &str = "projector_schedule_period_seconds";
/// When this `serve` process started (Unix seconds, gauge): a fresh deployment has finished no
/// run yet, and that is not an alert before two periods have passed.
pub const SCHEDULER_STARTED_SECONDS: &str = "projector_scheduler_started_timestamp_seconds";
/// Runs fanning out or running now (gauge, from the run record).
pub const RUNS_OPEN: &str = "projector_runs_open";
/// The query service's own limit for the referrer as configured (`query.referrer_limit`; gauge,
/// set by every worker at start): dashboards draw it beside the fleet's limit.
pub const QUERY_REFERRER_LIMIT: &str = "projector_query_referrer_limit";
/// How many seconds after its deadline the latest open run is predicted to finish, at the pace
/// so far (0: on time, or nothing to predict). Gauge; every worker reports the same fleet-wide
/// value: aggregate with `max()`.
pub const RUN_PREDICTED_OVERRUN_SECONDS: &str = "projector_run_predicted_overrun_seconds";
/// Orgs ended because their run's deadline passed before they ran (`runs.deadline`).
pub const RUN_DEADLINE_ORGS_TOTAL: &str = "projector_run_deadline_orgs_total";
/// Runs stopped because the query service refused the query itself (a 400): one per run.
pub const RUN_STOPPED_TOTAL: &str = "projector_run_stopped_total";

/// Projection writes refused because a newer run or a newer lease already wrote those hours.
pub const PROJECTION_STALE_REFUSED_TOTAL: &str = "projector_projection_stale_write_refused_total";

/// Time of one org's projection write to its store (refused and failed writes included).
pub const SINK_WRITE_SECONDS: &str = "projector_sink_write_seconds";

/// Jobs ready to run now (gauge; length of the apalis active list). Every worker reports the same
/// fleet-wide value: aggregate with `max()`, never `sum()`.
pub const QUEUE_READY_JOBS: &str = "projector_queue_ready_jobs";
/// Jobs waiting for their batch's release time (gauge; the apalis scheduled set; aggregate with `max()`).
pub const QUEUE_SCHEDULED_JOBS: &str = "projector_queue_scheduled_jobs";
/// Restarts of a worker's job loop after an error (usually Redis unreachable); backoff caps at 30 s.
pub const WORKER_RESTARTS_TOTAL: &str = "projector_worker_restarts_total";

/// Panics in a worker service (housekeeping duties, the metrics server), labelled `service`: a bug.
pub const SERVICE_PANICS_TOTAL: &str = "projector_service_panics_total";

/// Query starts admitted by the rate policy (`[rate]`), at once or after a delay.
pub const RATE_ADMITTED_TOTAL: &str = "projector_rate_admitted_total";
/// Jobs the rate policy refused (no admission within `rate.max_delay`, or a cooldown), labelled
/// `reason` (`window`, `cooldown`); each ends `skipped_rate_policy`.
pub const RATE_BLOCKED_TOTAL: &str = "projector_rate_blocked_total";
/// Shadow mode (`rate.enforce = false`): what the policy would have done, labelled `would`
/// (`delay`, `refuse`) and `reason`; nothing was delayed or refused.
pub const RATE_SHADOW_TOTAL: &str = "projector_rate_shadow_total";
/// Admission requests that could not be asked (Redis unreachable): the rate-limiter design's limiter errors.
pub const RATE_LIMITER_ERRORS_TOTAL: &str = "projector_rate_limiter_errors_total";
/// Cooldowns started after a 429 (`rate.cooldown_after_429`).
pub const RATE_COOLDOWNS_TOTAL: &str = "projector_rate_cooldowns_total";
/// How long a query start was held to fit the rate policy (histogram; 0 when admitted at once).
pub const RATE_DELAY_SECONDS: &str = "projector_rate_delay_seconds";

/// The fleet's adaptive multiplier on the slot limit and every rate (gauge; 1 without adaptation;
/// every worker reports the same value: aggregate with `max()`).
pub const ADAPTIVE_MULTIPLIER: &str = "projector_adaptive_multiplier";
/// Adaptive windows that moved or held the multiplier, labelled `direction` (`up`, `down`,
/// `hold`) and `signal` (`429`, `throttle`, `demand`, `none`); counted by the worker that closed the window.
pub const ADAPTIVE_ADJUSTMENTS_TOTAL: &str = "projector_adaptive_adjustments_total";

/// Histogram buckets (seconds) for slot waits: 1 ms to 60 s, the range of slots.max_wait.
pub const SLOT_WAIT_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// Histogram buckets (seconds) for queries: 10 ms to 60 s, the query service's longest query.
pub const QUERY_DURATION_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0];
/// Histogram buckets (seconds) for store writes: 0.5 ms to 10 s.
pub const SINK_WRITE_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];
/// Histograms and their buckets; everything else is a counter or a gauge.
pub const HISTOGRAMS: &[(&str, &[f64])] = &[
    (SLOT_WAIT_SECONDS, SLOT_WAIT_BUCKETS),
    (QUERY_DURATION_SECONDS, QUERY_DURATION_BUCKETS),
    (RATE_DELAY_SECONDS, SLOT_WAIT_BUCKETS),
    (SINK_WRITE_SECONDS, SINK_WRITE_BUCKETS),
    (QUERY_PAGES, QUERY_PAGE_BUCKETS),
];
/// Histogram buckets for pages per org: 1 (almost every org) to a 20,000-project org's ~1,000.
pub const QUERY_PAGE_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0];
