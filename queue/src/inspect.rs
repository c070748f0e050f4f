//! The queue as operators and gauges see it: depth, in-flight and dead counts.

use projector_shared::redis_conn::RedisConn;

use crate::apalis_layout::config;

/// How many jobs wait in the queue now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Depth {
    /// Runnable now (the ready list).
    pub ready: u64,
    /// Waiting for their release time (the scheduled set).
    pub scheduled: u64,
}

/// The queue's depth, read from apalis-redis's keys (its own counts read the wrong ones).
pub async fn depth(conn: &RedisConn) -> Result<Depth, redis::RedisError> {
    let config = config(conn.layout());
    let (ready, scheduled): (u64, u64) =
        redis::pipe().llen(config.active_jobs_list()).zcard(config.scheduled_jobs_set()).query_async(&mut conn.clone()).await?;
    Ok(Depth { ready, scheduled })
}

/// The queue as an operator sees it: besides the depth, the jobs fetched by a worker and not yet
/// finished, and the dead-lettered ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overview {
    pub ready: u64,
    pub scheduled: u64,
    pub in_flight: u64,
    pub dead: u64,
}

/// Reads the [`Overview`]: two round trips (the job loops, then every count).
pub async fn overview(conn: &RedisConn) -> Result<Overview, redis::RedisError> {
    let config = config(conn.layout());
    let mut conn = conn.clone();
    let loops: Vec<String> = redis::cmd("ZRANGE").arg(config.workers_set()).arg(0).arg(-1).query_async(&mut conn).await?;
    let mut pipe = redis::pipe();
    pipe.llen(config.active_jobs_list()).zcard(config.scheduled_jobs_set()).scard(config.dead_jobs_set());
    for name in &loops {
        pipe.scard(format!("{}:{name}", config.inflight_jobs_set()));
    }
    let counts: Vec<u64> = pipe.query_async(&mut conn).await?;
    let at = |i: usize| counts.get(i).copied().unwrap_or(0);
    Ok(Overview { ready: at(0), scheduled: at(1), dead: at(2), in_flight: counts.iter().skip(3).sum() })
}
