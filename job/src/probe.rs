//! An independent count of queries in flight, and the most seen at once (the check on the slot
//! limiter); and the last job error, which the worker publishes with its registration.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counts queries in flight across every job sharing it.
#[derive(Debug, Clone, Default)]
pub struct QueryProbe {
    inner: Arc<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    in_flight: AtomicU64,
    max: AtomicU64,
}

/// One query in flight; dropping it ends the count.
pub struct QueryInFlight(Arc<Counts>);

impl QueryProbe {
    /// Marks a query as started until the returned guard is dropped.
    pub fn enter(&self) -> QueryInFlight {
        let now = self.inner.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.inner.max.fetch_max(now, Ordering::SeqCst);
        QueryInFlight(self.inner.clone())
    }

    pub fn in_flight(&self) -> u64 {
        self.inner.in_flight.load(Ordering::SeqCst)
    }

    /// The most queries seen in flight at once.
    pub fn max(&self) -> u64 {
        self.inner.max.load(Ordering::SeqCst)
    }
}

impl Drop for QueryInFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The last job error of this process, with its time, for the worker's registration.
static LAST_ERROR: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

/// Notes a job error; the worker's next heartbeat publishes it (bounded to 300 characters).
pub fn note_error(reason: &str, error: &dyn std::fmt::Display) {
    let mut text = format!("{} {reason}: {error}", chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    if let Some((cut, _)) = text.char_indices().nth(300) {
        text.truncate(cut);
    }
    *LAST_ERROR.lock().unwrap_or_else(|p| p.into_inner()) = text;
}

/// The last job error noted, or empty.
pub fn last_error() -> String {
    LAST_ERROR.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_the_peak() {
        let p = QueryProbe::default();
        let a = p.enter();
        let b = p.enter();
        drop(a);
        let _c = p.enter();
        drop(b);
        assert_eq!((p.in_flight(), p.max()), (1, 2));
    }
}
