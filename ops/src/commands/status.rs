//! `projectorctl status` (once, or redrawn with `--watch`), `pause` and `resume`: the fleet as a
//! whole, and the one switch that stops it taking jobs.

use crate::records::Records;
use std::time::Duration;

use projector_config::Config;
use projector_process::telemetry;

use crate::actions;
use crate::views::{self, View};

/// `pause`: workers take no new jobs within a second; jobs already running finish.
pub async fn pause(config: &Config, reason: &str) -> anyhow::Result<View> {
    let pause = actions::pause(&Records::open(config).await?, reason).await?;
    Ok(View::new(
        serde_json::json!({"paused": true, "reason": pause.reason, "since_ms": pause.since_ms}),
        format!("fleet paused ({}): workers take no new jobs within a second; `projectorctl resume` ends it\n", pause.reason),
    ))
}

/// `resume`: ends a pause (saying so when there was none).
pub async fn resume(config: &Config) -> anyhow::Result<View> {
    let was = actions::resume(&Records::open(config).await?).await?;
    let text = if was { "fleet resumed: workers take jobs again within a second\n" } else { "the fleet was not paused\n" };
    Ok(View::new(serde_json::json!({"paused": false, "was_paused": was}), text.to_owned()))
}

/// `status --watch`: redraws the status every `every` until Ctrl-C (one JSON line per round
/// with `--json`).
pub async fn watch(config: &Config, every: Duration, json: bool) -> anyhow::Result<String> {
    loop {
        let screen = views::render(&views::status(config).await?, json);
        // Clear the screen and home the cursor, then draw.
        telemetry::print(&if json { screen } else { format!("\x1b[2J\x1b[H{screen}") });
        tokio::time::sleep(every).await;
    }
}
