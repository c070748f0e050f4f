//! `projectorctl rate`: the rate policy on query starts, live and changed at runtime.

use std::fmt::Write as _;

use clap::Subcommand;
use projector_config::Config;
use projector_shared::rate::{RatePolicy, RedisRateLimiter, store};

use super::{connection, slot_limiter};
use crate::views::View;

#[derive(Debug, Subcommand)]
pub enum RateAction {
    /// The policy in force (configuration plus any runtime change), the live window counts, the
    /// adaptive multiplier, any cooldown in force and the shadow counters.
    ///
    /// With --json: prints one JSON object instead of text
    Show {},
    /// Change the policy for every worker at once, without a restart; it wins over the workers'
    /// [rate] configuration until `rate reset`. Only the given keys change; each is checked as
    /// it would be in a config file.
    Set {
        /// Windows, shortest first: "20/s,5000/h" (empty string: no windows)
        #[arg(long)]
        rates: Option<String>,
        /// Longest delay before a start is refused, e.g. "2s"
        #[arg(long)]
        max_delay: Option<String>,
        /// "strict" or "smooth"
        #[arg(long)]
        mode: Option<String>,
        #[arg(long)]
        burst: Option<String>,
        #[arg(long)]
        start_jitter: Option<String>,
        /// false: shadow mode (nothing delayed or refused; counted)
        #[arg(long)]
        enforce: Option<String>,
        /// Fleet-wide pause after a 429, e.g. "5s" ("0s": none)
        #[arg(long)]
        cooldown_after_429: Option<String>,
    },
    /// Forget the runtime policy: workers go back to their [rate] configuration.
    Reset {},
}

/// The policy in force now for query.referrer, with its live state, as text or one JSON object.
async fn rate_report(config: &Config, conn: &projector_shared::redis_conn::RedisConn, note: &str) -> anyhow::Result<View> {
    let referrer = &config.query.referrer;
    let changes = store::runtime_changes(conn, referrer).await?;
    let rate = config
        .rate_policy_with(referrer, &changes)
        .map_err(|problems| anyhow::anyhow!("the runtime policy in Redis does not load: {}", problems.join("; ")))?;
    let policy = RatePolicy::from_config(&rate);
    let live = RedisRateLimiter::new(conn.clone(), referrer, policy.clone()).now().await?;
    let slots = slot_limiter(config)?;
    let multiplier = slots.occupancy_now().await?.multiplier;
    // This command's own view is its configuration plus the runtime change; the workers say what
    // they actually run, and that is what answers "why were my orgs refused".
    let fleet = crate::views::FleetSettings::of(&projector_shared::heartbeat::workers(conn).await?);
    let value = serde_json::json!({
        "fleet": fleet.to_json(),
        "referrer": referrer,
        "rates": policy.describe(),
        "mode": policy.mode_name(),
        "burst": policy.burst,
        "max_delay_ms": policy.max_delay.as_millis() as u64,
        "start_jitter_ms": policy.start_jitter.as_millis() as u64,
        "enforce": rate.enforce,
        "cooldown_after_429_ms": rate.cooldown_after_429.as_millis() as u64,
        "runtime_changes": changes.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
        "adaptive_multiplier": multiplier,
        "live": live,
    });
    let mut out = String::new();
    let source = if changes.is_empty() { "configuration" } else { "runtime change in Redis (`projectorctl rate reset` hands it back)" };
    let rates = if policy.windows.is_empty() { "none".to_owned() } else { policy.describe() };
    let _ = writeln!(out, "rate policy for {referrer} (from {source})");
    let _ = writeln!(
        out,
        "  rates: {rates}  mode: {}  burst: {}  max_delay: {}  start_jitter: {}",
        policy.mode_name(),
        policy.burst,
        projector_config::format_duration(policy.max_delay),
        projector_config::format_duration(policy.start_jitter)
    );
    let _ = writeln!(
        out,
        "  enforce: {}{}  cooldown_after_429: {}",
        rate.enforce,
        if rate.enforce { "" } else { " (shadow mode)" },
        projector_config::format_duration(rate.cooldown_after_429)
    );
    for (key, value) in &changes {
        let _ = writeln!(out, "  runtime change: {key} = {value}");
    }
    let _ = writeln!(out, "  adaptive multiplier: {multiplier}");
    for w in &live.windows {
        let scaled = ((f64::from(w.limit) * multiplier + 1e-9).floor() as u64).max(1);
        let _ = writeln!(out, "  window {}: {} of {scaled} used now", w.window, w.used);
    }
    match live.cooldown_left_ms {
        0 => {
            let _ = writeln!(out, "  cooldown: none");
        }
        ms => {
            let _ = writeln!(out, "  cooldown: {ms} ms left (after a 429)");
        }
    }
    let _ = writeln!(out, "  shadow: would have delayed {}, would have refused {}", live.shadow_would_delay, live.shadow_would_refuse);
    if fleet.rate.is_empty() {
        let _ = writeln!(out, "what the workers run: no live worker publishes its policy");
    }
    for (rate, names) in &fleet.rate {
        let _ = writeln!(out, "what the workers run: {rate} on {} worker(s): {}", names.len(), names.join(", "));
    }
    for warning in fleet.warnings() {
        let _ = writeln!(out, "WARNING {warning}");
    }
    out.push_str(note);
    Ok(View::new(value, out))
}

pub async fn run(config: &Config, action: RateAction) -> anyhow::Result<View> {
    let conn = connection(config)?;
    let referrer = &config.query.referrer;
    match action {
        RateAction::Show { .. } => rate_report(config, &conn, "").await,
        RateAction::Set { rates, max_delay, mode, burst, start_jitter, enforce, cooldown_after_429, .. } => {
            let given = [
                ("rates", rates),
                ("max_delay", max_delay),
                ("mode", mode),
                ("burst", burst),
                ("start_jitter", start_jitter),
                ("enforce", enforce),
                ("cooldown_after_429", cooldown_after_429),
            ];
            let changes: Vec<(String, String)> = given.into_iter().filter_map(|(k, v)| v.map(|v| (k.to_owned(), v))).collect();
            anyhow::ensure!(
                !changes.is_empty(),
                "nothing to change; give at least one of --rates, --max-delay, --mode, --burst, --start-jitter, --enforce, --cooldown-after-429"
            );
            let mut all = store::runtime_changes(&conn, referrer).await?;
            all.retain(|(k, _)| !changes.iter().any(|(c, _)| c == k));
            all.extend(changes.iter().cloned());
            config.rate_policy_with(referrer, &all).map_err(|problems| anyhow::anyhow!("refused: {}", problems.join("; ")))?;
            store::set_runtime_changes(&conn, referrer, &changes).await?;
            rate_report(config, &conn, "every worker applies it within worker.rollout_refresh\n").await
        }
        RateAction::Reset { .. } => {
            let removed = store::clear_runtime_changes(&conn, referrer).await?;
            let note = if removed {
                "runtime policy removed; workers go back to their [rate] configuration\n"
            } else {
                "no runtime policy was stored\n"
            };
            rate_report(config, &conn, note).await
        }
    }
}
