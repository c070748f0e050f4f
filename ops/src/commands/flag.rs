//! `projectorctl flag`: the rollout flag that puts orgs on the limited path.

use std::fmt::Write as _;

use clap::Subcommand;
use projector_config::Config;
use projector_shared::OrgId;
use projector_shared::rollout::{RATE_LIMIT_FLAG, Rollout};

use super::confirm;
use crate::records::Records;
use crate::views::View;

#[derive(Debug, Subcommand)]
pub enum FlagAction {
    /// Show the flag as stored and how many of orgs 1..=N it routes to each path.
    ///
    /// With --json: prints {"flag", "enabled", "percentage", "allow", "deny", "sample", "limited", "legacy"} (unset fields are null)
    Show {
        #[arg(long, default_value_t = 1000)]
        sample: u64,
    },
    /// Change the flag. Unset fields keep their value; never set at all, everyone is limited.
    ///
    /// With --json: prints the flag as `flag show --json` does, after the change
    Set {
        /// false: everyone not on the allow list takes the legacy path (no slot)
        #[arg(long)]
        enabled: Option<bool>,
        /// Share of orgs (0-100) on the limited path; raising it keeps the orgs already in
        #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
        percentage: Option<u8>,
        /// Comma-separated org ids always on the limited path
        #[arg(long, value_delimiter = ',')]
        allow: Option<Vec<u64>>,
        /// Comma-separated org ids always on the legacy path (beats --allow)
        #[arg(long, value_delimiter = ',')]
        deny: Option<Vec<u64>>,
        /// Confirm without a prompt (scripts); without it a terminal is asked, anything else refused
        #[arg(long)]
        yes: bool,
    },
    /// Forget the flag: back to the safe default, every org limited.
    ///
    /// With --json: prints the flag as `flag show --json` does, after the change
    Clear {},
}

pub async fn run(config: &Config, action: FlagAction) -> anyhow::Result<View> {
    let records = Records::open(config).await?;
    let mut rollout = records.rollout().await?;
    let sample = match action {
        FlagAction::Show { sample, .. } => sample,
        FlagAction::Set { enabled, percentage, allow, deny, yes } => {
            let before = rollout.clone();
            rollout.enabled = enabled.or(rollout.enabled);
            rollout.percentage = percentage.or(rollout.percentage);
            if let Some(ids) = allow {
                rollout.allow = ids.into_iter().map(OrgId).collect();
            }
            if let Some(ids) = deny {
                rollout.deny = ids.into_iter().map(OrgId).collect();
            }
            confirm_fewer_limited(&before, &rollout, yes)?;
            records.save_rollout(&rollout).await?;
            1000
        }
        FlagAction::Clear { .. } => {
            rollout = Rollout::default();
            records.clear_rollout().await?;
            1000
        }
    };
    let limited = limited_of(&rollout, sample);
    let value = serde_json::json!({
        "flag": RATE_LIMIT_FLAG, "enabled": rollout.enabled, "percentage": rollout.percentage,
        "allow": rollout.allow.iter().map(|o| o.0).collect::<Vec<_>>(), "deny": rollout.deny.iter().map(|o| o.0).collect::<Vec<_>>(),
        "sample": sample, "limited": limited, "legacy": sample as usize - limited,
    });
    let show = |v: Option<String>| v.unwrap_or_else(|| "unset".to_owned());
    let mut out = String::new();
    let _ = writeln!(out, "{RATE_LIMIT_FLAG}");
    let _ = writeln!(out, "  enabled: {}", show(rollout.enabled.map(|e| e.to_string())));
    let _ = writeln!(out, "  percentage: {}", show(rollout.percentage.map(|p| p.to_string())));
    let _ = writeln!(out, "  allow: {:?}", rollout.allow.iter().map(|o| o.0).collect::<Vec<_>>());
    let _ = writeln!(out, "  deny: {:?}", rollout.deny.iter().map(|o| o.0).collect::<Vec<_>>());
    let _ = writeln!(out, "  of orgs 1..={sample}: {limited} limited (slot first), {} legacy", sample as usize - limited);
    Ok(View::new(value, out))
}

/// Orgs of 1..=`sample` on the limited path under a flag.
fn limited_of(rollout: &Rollout, sample: u64) -> usize {
    (1..=sample).filter(|o| rollout.is_limited(OrgId(*o))).count()
}

/// How many orgs a flag change is measured on: the flag splits org ids by hash, so a thousand
/// of them show its effect to a few tenths of a percent.
const EFFECT_SAMPLE: u64 = 1000;

/// A change that takes orgs off the limited path brings back unlimited queries for them (the
/// incident Projector exists for): it shows how many and asks first.
fn confirm_fewer_limited(before: &Rollout, after: &Rollout, yes: bool) -> anyhow::Result<()> {
    let (was, will) = (limited_of(before, EFFECT_SAMPLE), limited_of(after, EFFECT_SAMPLE));
    if will >= was {
        return Ok(());
    }
    let effect = format!(
        "{} of {EFFECT_SAMPLE} orgs leave the limited path ({was} limited now, {will} after): they will query without a slot, \
         with nothing to keep them under the query service's limit",
        was - will
    );
    confirm(&effect, yes)
}
