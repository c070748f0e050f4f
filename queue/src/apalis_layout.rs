//! Every apalis-redis fact Projector relies on: the queue's name and settings, the keys apalis
//! derives from it, and the keys Projector keeps beside them. Nothing outside `projector-queue`
//! names an apalis key, tag or status string (docs/apalis-redis.md says why each is as it is).

use std::time::Duration;

use projector_shared::RunId;
use projector_shared::keys::KeyLayout;

/// apalis's own list of queues, which its `register_worker.lua` writes beside the queue's keys
/// without declaring it.
pub const QUEUES_LIST: &str = "core:apalis:queues:list";

/// The apalis-redis queue of spike-projection jobs (apalis derives its own keys from it). On a
/// cluster its hash tag is [`QUEUES_LIST`]: with that tag, every key the queue's scripts touch
/// hashes to one slot.
pub fn job_queue(layout: KeyLayout) -> &'static str {
    if layout.is_cluster() { "{core:apalis:queues:list}projector:spike-projection" } else { "projector:spike-projection" }
}

/// Set of one run's jobs pushed within `runs.dedup_window`, by member
/// (`SpikeProjectionJob::dedupe_member`): a job whose member is there is not pushed again. Named
/// under the queue so that, on a cluster, it shares the push script's slot.
pub fn job_dedupe(layout: KeyLayout, run_id: &RunId) -> String {
    format!("{}:dedupe:{}", job_queue(layout), run_id.0)
}

/// A job loop's apalis worker metadata (`…:workers:metadata:<loop>`), which apalis keeps forever.
pub fn worker_metadata(layout: KeyLayout, loop_name: &str) -> String {
    format!("{}:workers:metadata:{loop_name}", job_queue(layout))
}

/// The apalis-redis settings every Projector process uses for the job queue.
pub fn config(layout: KeyLayout) -> apalis_redis::Config {
    apalis_redis::Config::default()
        .queue(job_queue(layout))
        // One job per fetch: prefetched jobs send no heartbeat and get run twice
        // (docs/apalis-redis.md#prefetch-runs-twice).
        .batch_size(1)
        .heartbeat_interval(Duration::from_secs(2))
        .missed_heartbeats(3)
        // Locking only stamps "Running" on the job's metadata, at 7 commands per job and an LREM that
        // scans the whole ready list for an id the fetch already took off it (quadratic in the
        // backlog). A dead worker's jobs come back through its in-flight set, which the fetch keeps
        // (docs/apalis-redis.md#no-lock).
        .lock_tasks(false)
        // Nobody listens to apalis's own pub/sub events: workers wake on projector:jobs-ready.
        .emit_events(false)
}
