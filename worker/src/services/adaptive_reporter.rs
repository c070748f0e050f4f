//! Reports this worker's query answers to the fleet's adaptive window. Every worker runs it: the
//! window closes inside one script call, whoever reports first, so there is one decision per window
//! with no leader.

use futures::future::BoxFuture;
use projector_shared::metrics as m;
use projector_shared::slots::RedisSlotLimiter;

use super::Periodic;

/// Reports this worker's query answers to the fleet's adaptive window every round and takes
/// back the multiplier in force (`[adaptive]`); the report that closes a window logs the change
/// with its inputs and counts it.
pub struct AdaptiveReporter {
    pub slots: RedisSlotLimiter,
    pub settings: projector_shared::adaptive::AdaptiveSettings,
    /// Where the rate limiter reads the multiplier from.
    pub multiplier: projector_shared::adaptive::Multiplier,
}

impl Periodic for AdaptiveReporter {
    fn name(&self) -> &'static str {
        "adaptive_reporter"
    }

    fn run_once(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let answers = projector_shared::adaptive::SIGNALS.drain();
            match self.slots.report_answers(answers, &self.settings).await {
                Ok(report) => {
                    self.multiplier.set(report.multiplier);
                    metrics::gauge!(m::ADAPTIVE_MULTIPLIER).set(report.multiplier);
                    if let (true, Some(direction)) = (report.closed || report.cut_early, report.direction) {
                        let (ok, r429, throttled) = report.window;
                        metrics::counter!(m::ADAPTIVE_ADJUSTMENTS_TOTAL, "direction" => direction, "signal" => signal_label(&report.signal))
                            .increment(1);
                        let ratio = if ok + r429 == 0 { 0.0 } else { r429 as f64 / (ok + r429) as f64 };
                        tracing::info!(
                            stage = "adaptive", direction, signal = %report.signal, multiplier = report.multiplier,
                            limit_in_force = report.limit_in_force, window_ok = ok, window_429 = r429, window_throttled = throttled,
                            ratio_429 = ratio, high_429_ratio = self.settings.high_429_ratio,
                            "{}", if report.cut_early { "adaptive limit cut mid-window: the 429 ratio crossed the bound" } else { "adaptive window closed" }
                        );
                    }
                }
                Err(e) => {
                    // The answers of this round are lost to the adaptive window, not to the run.
                    tracing::debug!(error = %e, "cannot report query answers to the adaptive window");
                }
            }
        })
    }
}

/// The bounded `signal` label: what moved the multiplier, or `none`.
fn signal_label(signal: &str) -> &'static str {
    match signal {
        "429" => "429",
        "throttle" => "throttle",
        "demand" => "demand",
        _ => "none",
    }
}
