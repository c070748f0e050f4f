//! Worker heartbeats and registrations in Redis: each worker process stamps its name with Redis
//! time every housekeeping tick and refreshes what it says about itself (host, pid, version, jobs
//! in flight, slots held, last error); anyone can list the workers alive without trusting a
//! worker's clock, and a dead worker's registration expires.

use std::sync::LazyLock;
use std::time::Duration;

use projector_redis::redis_conn::RedisConn;
use redis::Script;

use crate::error::Error;
use projector_core::service::ServiceQuota;

/// A worker whose last heartbeat is older than this is counted as gone.
pub const ALIVE_WITHIN: Duration = Duration::from_secs(15);

static BEAT: LazyLock<Script> = LazyLock::new(|| projector_redis::lua::script(include_str!("../../../lua/heartbeat_beat.lua")));
static ALIVE: LazyLock<Script> = LazyLock::new(|| projector_redis::lua::script(include_str!("../../../lua/heartbeat_alive.lua")));

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// What a worker says about itself at every beat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registration {
    pub host: String,
    pub pid: u32,
    pub version: String,
    /// When the process started (RFC 3339).
    pub started: String,
    pub jobs_in_flight: u64,
    pub slots_held: u64,
    /// The last job error, with its time, or empty.
    pub last_error: String,
    /// The query service's numbers for the referrer, as this worker last heard them, and how
    /// many milliseconds before this beat.
    pub service: Option<(ServiceQuota, u64)>,
    /// The rate policy this worker applies now (runtime changes included), as `rate show`
    /// writes it, e.g. `20/s, 5000/h (strict, enforced)`, or `none`.
    pub rate: String,
    /// The slot settings this worker runs with, e.g. `limit 50, max_wait 60s, on_timeout skip`.
    pub slots: String,
    /// A digest of the worker's whole configuration (addresses and secrets left out): workers
    /// started with different settings show different digests.
    pub config_digest: String,
}

/// A worker alive now, as listed by [`workers`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerEntry {
    pub name: String,
    /// Milliseconds since its last beat (Redis time).
    pub beat_ms_ago: u64,
    /// `None` for a worker that beats without registering (an older build).
    pub registration: Option<Registration>,
}

/// Records that worker `name` is alive now, with what it says about itself.
pub async fn beat(conn: &RedisConn, name: &str, registration: &Registration) -> Result<(), Error> {
    let mut invocation = BEAT.key(conn.layout().workers());
    invocation.key(conn.layout().worker(name)).arg(name).arg(ms(ALIVE_WITHIN * 4)).arg(ms(ALIVE_WITHIN));
    let r = registration;
    for (field, value) in [
        ("host", r.host.clone()),
        ("pid", r.pid.to_string()),
        ("version", r.version.clone()),
        ("started", r.started.clone()),
        ("jobs_in_flight", r.jobs_in_flight.to_string()),
        ("slots_held", r.slots_held.to_string()),
        ("last_error", r.last_error.clone()),
        ("service_quota_used", r.service.map(|(q, _)| q.quota_used.to_string()).unwrap_or_default()),
        ("service_rejection_threshold", r.service.map(|(q, _)| q.rejection_threshold.to_string()).unwrap_or_default()),
        ("service_throttle_threshold", r.service.map(|(q, _)| q.throttle_threshold.to_string()).unwrap_or_default()),
        ("service_heard_ms_ago", r.service.map(|(_, ago)| ago.to_string()).unwrap_or_default()),
        ("rate", r.rate.clone()),
        ("slots", r.slots.clone()),
        ("config_digest", r.config_digest.clone()),
    ] {
        invocation.arg(field).arg(value);
    }
    let _: u8 = invocation.invoke_async(&mut conn.clone()).await.map_err(Error::redis("writing the worker heartbeat"))?;
    Ok(())
}

/// The workers that beat within [`ALIVE_WITHIN`], most recent beat first (ties in no set order),
/// with their registrations.
pub async fn workers(conn: &RedisConn) -> Result<Vec<WorkerEntry>, Error> {
    let mut conn = conn.clone();
    let (beats, time): (Vec<(String, u64)>, (u64, u64)) = redis::pipe()
        .cmd("ZRANGE")
        .arg(conn.layout().workers())
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .cmd("TIME")
        .query_async(&mut conn)
        .await
        .map_err(Error::redis("listing workers"))?;
    let now = time.0 * 1000 + time.1 / 1000;
    let alive: Vec<(String, u64)> = beats.into_iter().filter(|(_, at)| now.saturating_sub(*at) <= ms(ALIVE_WITHIN)).rev().collect();
    if alive.is_empty() {
        // The client refuses to send an empty pipeline.
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for (name, _) in &alive {
        pipe.hgetall(conn.layout().worker(name));
    }
    let registrations: Vec<std::collections::HashMap<String, String>> =
        pipe.query_async(&mut conn).await.map_err(Error::redis("reading worker registrations"))?;
    Ok(alive
        .into_iter()
        .zip(registrations)
        .map(|((name, at), fields)| {
            let text = |k: &str| fields.get(k).cloned().unwrap_or_default();
            let number = |k: &str| fields.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
            WorkerEntry {
                name,
                beat_ms_ago: now.saturating_sub(at),
                registration: (!fields.is_empty()).then(|| Registration {
                    host: text("host"),
                    pid: u32::try_from(number("pid")).unwrap_or(0),
                    version: text("version"),
                    started: text("started"),
                    jobs_in_flight: number("jobs_in_flight"),
                    slots_held: number("slots_held"),
                    last_error: text("last_error"),
                    service: service(&fields),
                    rate: text("rate"),
                    slots: text("slots"),
                    config_digest: text("config_digest"),
                }),
            }
        })
        .collect())
}

/// The service numbers a registration carries, when it carries them all.
fn service(fields: &std::collections::HashMap<String, String>) -> Option<(ServiceQuota, u64)> {
    let number = |k: &str| fields.get(k).and_then(|v| v.parse::<i64>().ok());
    let quota = ServiceQuota {
        quota_used: number("service_quota_used")?,
        rejection_threshold: number("service_rejection_threshold")?,
        throttle_threshold: number("service_throttle_threshold")?,
    };
    Some((quota, u64::try_from(number("service_heard_ms_ago")?).unwrap_or(0)))
}

/// Removes worker `name` at a clean exit, so it stops counting as alive at once.
pub async fn leave(conn: &RedisConn, name: &str) -> Result<(), Error> {
    let _: () = redis::pipe()
        .zrem(conn.layout().workers(), name)
        .del(conn.layout().worker(name))
        .query_async(&mut conn.clone())
        .await
        .map_err(Error::redis("removing the worker heartbeat"))?;
    Ok(())
}

/// How many workers beat within [`ALIVE_WITHIN`].
pub async fn alive(conn: &RedisConn) -> Result<u64, Error> {
    ALIVE
        .key(conn.layout().workers())
        .arg(ms(ALIVE_WITHIN))
        .invoke_async(&mut conn.clone())
        .await
        .map_err(Error::redis("counting live workers"))
}
