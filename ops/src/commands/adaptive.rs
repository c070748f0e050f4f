//! `projectorctl adaptive`: the fleet's adaptive multiplier.

use std::fmt::Write as _;

use anyhow::Context;
use clap::Subcommand;
use projector_config::Config;
use projector_shared::redis_conn::Endpoint;

use super::slot_limiter;
use crate::views::View;

#[derive(Debug, Subcommand)]
pub enum AdaptiveAction {
    /// The multiplier, the slot limit it puts in force, and the last window closed.
    Show {},
    /// Set the multiplier by hand (between adaptive.min_multiplier and max_multiplier); with
    /// adaptation enabled, the fleet moves on from it at the next window.
    Set { multiplier: f64 },
    /// Forget the multiplier and its window, and the query service's cap and remembered room
    /// (slots.service_memory): the stored slot limit and the configured rates apply as they are
    /// until the next answer brings the service's numbers again.
    Reset {},
}

pub async fn run(config: &Config, action: AdaptiveAction) -> anyhow::Result<View> {
    let slots = slot_limiter(config)?;
    let redis = Endpoint::from(&config.redis).redacted();
    let note = match action {
        AdaptiveAction::Show { .. } => String::new(),
        AdaptiveAction::Set { multiplier, .. } => {
            let (min, max) = (config.adaptive.min_multiplier, config.adaptive.max_multiplier);
            anyhow::ensure!(
                (min..=max).contains(&multiplier),
                "refusing multiplier {multiplier}: outside [adaptive.min_multiplier {min}, adaptive.max_multiplier {max}]"
            );
            slots.set_multiplier(multiplier).await.with_context(|| format!("setting the multiplier in {redis}"))?;
            format!("multiplier set to {multiplier} for every worker\n")
        }
        AdaptiveAction::Reset { .. } => {
            let removed = slots.reset_multiplier().await.with_context(|| format!("resetting the multiplier in {redis}"))?;
            format!(
                "{}\n",
                if removed { "multiplier, window and the service's remembered numbers removed" } else { "no multiplier was stored" }
            )
        }
    };
    let now = slots.occupancy_now().await.with_context(|| format!("reading the slots in {redis}"))?;
    let last = slots.last_adaptive_window().await?;
    let value = serde_json::json!({
        "multiplier": now.multiplier,
        "stored_limit": now.limit,
        "limit_in_force": now.in_force,
        "in_use": now.in_use,
        "enabled_here": config.adaptive.enabled,
        "last_window": last,
    });
    let mut out = note;
    let _ = writeln!(out, "adaptive multiplier: {}", now.multiplier);
    let _ = writeln!(
        out,
        "slot limit: {} stored, {} in force, {} in use",
        now.limit.map_or("none".to_owned(), |l| l.to_string()),
        now.in_force.map_or("none".to_owned(), |l| l.to_string()),
        now.in_use
    );
    match last {
        Some(w) => {
            let _ = writeln!(
                out,
                "last window closed {} ms ago: {} ok, {} 429, {} throttled; signal {}",
                w.closed_ms_ago,
                w.ok,
                w.rate_limited,
                w.throttled,
                if w.signal.is_empty() { "none" } else { &w.signal }
            );
        }
        None => {
            let _ = writeln!(out, "no window closed yet (adaptive.enabled on the workers: is it on?)");
        }
    }
    Ok(View::new(value, out))
}
