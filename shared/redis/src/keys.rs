//! The one place that spells Redis key names. Every key of one slot limiter shares a hash tag, so
//! the limiter's scripts touch a single Redis Cluster slot.

/// The keys of one slot limiter, all under the hash tag `{projector:slots:<name>}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotKeys {
    tag: String,
}

impl SlotKeys {
    /// Keys for the limiter called `name` (one per referrer or resource; "default" normally).
    pub fn new(name: &str) -> Self {
        SlotKeys { tag: format!("{{projector:slots:{name}}}") }
    }

    /// The limit in force (string integer); initialised from `slots.limit`, changed by operators.
    pub fn limit(&self) -> String {
        format!("{}:limit", self.tag)
    }
    /// Sorted set: lease id → expiry (Redis time, ms).
    pub fn leases(&self) -> String {
        format!("{}:leases", self.tag)
    }
    /// Hash: lease id → `holder|org|acquired_ms|token`.
    pub fn holders(&self) -> String {
        format!("{}:holders", self.tag)
    }
    /// Counter behind fencing tokens.
    pub fn fence(&self) -> String {
        format!("{}:fence", self.tag)
    }
    /// Counter behind arrival order.
    pub fn seq(&self) -> String {
        format!("{}:seq", self.tag)
    }
    /// Sorted set: waiter id → arrival number (first come, first served).
    pub fn queue(&self) -> String {
        format!("{}:queue", self.tag)
    }
    /// Sorted set: waiter id → when the waiter gives up (Redis time, ms).
    pub fn waiter_deadlines(&self) -> String {
        format!("{}:waiter_deadlines", self.tag)
    }
    /// Hash: waiter id → `holder|org`.
    pub fn waiting(&self) -> String {
        format!("{}:waiting", self.tag)
    }
    /// Prefix of the per-waiter wake-up lists; a release pushes the handed-off fencing token there.
    pub fn wake_prefix(&self) -> String {
        format!("{}:wake:", self.tag)
    }
    pub fn wake(&self, waiter: &str) -> String {
        format!("{}{waiter}", self.wake_prefix())
    }

    /// Hash: the fleet's adaptive multiplier on the limit (and on every rate), and the window of
    /// query answers it is decided from (`lua/slots_adaptive.lua`).
    pub fn adaptive(&self) -> String {
        format!("{}:adaptive", self.tag)
    }

    /// List of the fleet's slot samples, oldest first (`lua/slots_history.lua`): what the
    /// status page charts over the last hour.
    pub fn history(&self) -> String {
        format!("{}:history", self.tag)
    }

    /// The key called `name` in a slot script's `SLOT_KEYS` (`limit`, `leases`, … `history`):
    /// every slot key is the limiter's tag and its name.
    pub fn named(&self, name: &str) -> String {
        format!("{}:{name}", self.tag)
    }
}

/// The keys of one referrer's rate policy, all under the hash tag `{projector:rate:<referrer>}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateKeys {
    tag: String,
}

impl RateKeys {
    pub fn new(referrer: &str) -> Self {
        RateKeys { tag: format!("{{projector:rate:{referrer}}}") }
    }

    /// Hash: the policy an operator set at runtime (`projectorctl rate set`), as `[rate]` key →
    /// raw value; it wins over the workers' configuration until `projectorctl rate reset`.
    pub fn runtime_policy(&self) -> String {
        format!("{}:policy", self.tag)
    }

    /// Hash: what a policy in shadow mode would have done (`would_delay`, `would_refuse`).
    pub fn shadow(&self) -> String {
        format!("{}:shadow", self.tag)
    }

    /// String whose PTTL is the cooldown left after a 429 (no key: no cooldown).
    pub fn cooldown(&self) -> String {
        format!("{}:cooldown", self.tag)
    }

    /// State of one window: strict, a sorted set of admission times (us); smooth, the theoretical
    /// arrival time. Named by mode, limit and span, so a changed policy starts from a clean window.
    pub fn window(&self, mode: &str, limit: u32, span_ms: u128) -> String {
        format!("{}:{mode}:{limit}/{span_ms}ms", self.tag)
    }
}

/// Hash of one organization's stored projections (read by other services; layout in docs/redis-keys.md).
/// Field: [`projection_field`]; value: JSON `{"run_id","fencing_token","first_hour","spike_threshold","hourly":[…]}`,
/// `hourly[i]` being the projection for `first_hour + i` hours.
pub fn projections(org: projector_core::OrgId) -> String {
    format!("projector:projections:{}", org.0)
}

/// Field of one project's projections in [`projections`]: the project id.
pub fn projection_field(project: projector_core::ProjectId) -> String {
    project.0.to_string()
}

/// How keys are named on the Redis a connection talks to, carried as a value
/// (`RedisConn::layout`): a Redis Cluster needs every key one script or transaction uses together
/// under one hash tag, so all of them live in one cluster slot. One server keeps the names
/// Projector always used, so keys written before survive an upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyLayout {
    #[default]
    Server,
    Cluster,
}

impl KeyLayout {
    pub fn is_cluster(self) -> bool {
        self == KeyLayout::Cluster
    }

    /// Hash of one run: `run_id`, `tick`, `orgs_total`, `enqueued`, and a counter per outcome.
    /// Its other keys add a suffix; on a cluster the run id is their hash tag.
    pub fn run(self, run_id: &projector_core::RunId) -> String {
        if self.is_cluster() { format!("projector:run:{{{}}}", run_id.0) } else { format!("projector:run:{}", run_id.0) }
    }

    /// Hash of one run's plan: org id → its project ids, comma-separated. Written before any job is
    /// enqueued; the run records outcomes only for these orgs, and `run-once --resume` rebuilds the
    /// run's jobs from it.
    pub fn run_plan(self, run_id: &projector_core::RunId) -> String {
        format!("{}:plan", self.run(run_id))
    }

    /// Hash of one run's organizations: org id → outcome (the first recorded wins).
    pub fn run_orgs(self, run_id: &projector_core::RunId) -> String {
        format!("{}:orgs", self.run(run_id))
    }

    /// Hash: org → its trail in the run, one line per attempt (`<redis ms> <JSON>`, the last
    /// `trail::KEPT_ATTEMPTS`): what `projectorctl explain` and `runs show` read.
    pub fn run_trail(self, run_id: &projector_core::RunId) -> String {
        format!("{}:trail", self.run(run_id))
    }

    /// List: one item pushed when the run's last org is accounted for; `run-once --wait` blocks on
    /// it (BLPOP) between reads of the record, so it sees the end at once.
    pub fn run_finished(self, run_id: &projector_core::RunId) -> String {
        format!("{}:finished", self.run(run_id))
    }

    /// Hash: org → the attempt now open for it (absent: the first, 0). Written by `runs retry` only.
    pub fn run_attempts(self, run_id: &projector_core::RunId) -> String {
        format!("{}:attempts", self.run(run_id))
    }

    /// Sorted set of a finished run's compacted completed orgs (`runs.completed_detail`): each
    /// member is a block of up to 256 orgs in ascending order, packed as varints (org delta, then
    /// 1 + seconds from the run's start to its record, 0 if unknown); its score is the block's
    /// first org. About 4 B per org.
    pub fn run_completed(self, run_id: &projector_core::RunId) -> String {
        format!("{}:completed", self.run(run_id))
    }

    /// Sorted set of live worker processes: worker name → last heartbeat (Redis time, ms).
    pub fn workers(self) -> &'static str {
        if self.is_cluster() { "projector:{workers}" } else { "projector:workers" }
    }

    /// Hash of one worker's registration (host, pid, version, started, jobs in flight, slots held,
    /// last error); it expires when the worker stops beating. Written with `workers()` in one
    /// script, so on a cluster it shares its tag.
    pub fn worker(self, name: &str) -> String {
        if self.is_cluster() { format!("projector:{{workers}}:{name}") } else { format!("projector:worker:{name}") }
    }
}

/// Lock taken by the one scheduler replica that fans out a cron tick.
pub fn tick_lock(run_id: &projector_core::RunId) -> String {
    format!("projector:tick-lock:{}", run_id.0)
}

/// Hash of the fleet-wide pause (`reason`, `since_ms`); absent when not paused.
pub const PAUSED: &str = "projector:paused";

/// Zset of recent runs: run id -> tick (unix ms); entries older than `runs.retention` are dropped.
pub const RUNS: &str = "projector:runs";

/// Zset of the runs not yet ended: run id -> tick (unix ms). Added when a run is created; a
/// reader drops an entry once its run is done, cancelled, skipped or expired. The deadline sweep,
/// the overlap check and `status` read it, so an open run is seen however many runs and skipped
/// ticks came after it.
pub const OPEN_RUNS: &str = "projector:runs:open";

/// Zset of ended runs waiting for compaction: run id -> when it finished (Redis ms). `open_runs`
/// adds a run as it leaves [`OPEN_RUNS`]; a worker compacts it `runs.completed_detail` later.
pub const COMPACT_RUNS: &str = "projector:runs:compact";

/// String: the id of the run fanned out last. The next plan puts that run's orgs that did not
/// complete first, so a run cut short (a deadline, `overlap = "replace"`) leaves no org always last.
pub const LAST_PLANNED_RUN: &str = "projector:runs:last-planned";

/// Sorted set: cancelled run id → when (Redis ms), trimmed to `runs.retention`; workers load it
/// into their mirror (`cancels::CancelWatch`) when they subscribe.
pub const CANCELLED_RUNS: &str = "projector:cancelled";

/// Pub/sub channel on which `runs cancel` announces a cancelled run id.
pub const CANCELS_CHANNEL: &str = "projector:cancels";

/// Pub/sub channel on which a fan-out, a promotion of due jobs or a retry says jobs are ready,
/// so that idle job loops fetch at once.
pub const JOBS_READY_CHANNEL: &str = "projector:jobs-ready";

/// Hash of a rollout flag: `enabled`, `percentage`, `allow`, `deny` (comma-separated org ids).
pub fn flag(name: &str) -> String {
    format!("projector:flag:{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_layout_tags_a_runs_keys_and_the_workers_and_one_server_keeps_the_old_names() {
        let run = projector_core::RunId("run-1".to_owned());
        assert_eq!(KeyLayout::Server.run_orgs(&run), "projector:run:run-1:orgs");
        assert_eq!(KeyLayout::Cluster.run_orgs(&run), "projector:run:{run-1}:orgs");
        assert_eq!((KeyLayout::Server.workers(), KeyLayout::Server.worker("w")), ("projector:workers", "projector:worker:w".to_owned()));
        assert_eq!(
            (KeyLayout::Cluster.workers(), KeyLayout::Cluster.worker("w")),
            ("projector:{workers}", "projector:{workers}:w".to_owned())
        );
        assert_eq!(KeyLayout::default(), KeyLayout::Server);
    }

    #[test]
    fn every_key_shares_one_hash_tag() {
        let k = SlotKeys::new("default");
        let names = ["limit", "leases", "holders", "fence", "seq", "queue", "waiter_deadlines", "waiting", "adaptive", "history"];
        let named: Vec<String> = names.iter().map(|n| k.named(n)).collect();
        assert_eq!(named[0], k.limit());
        assert_eq!((&named[6], &named[9]), (&k.waiter_deadlines(), &k.history()));
        for key in named.iter().chain([&k.wake("w1")]) {
            assert!(key.starts_with("{projector:slots:default}:"), "{key}");
        }
    }
}
