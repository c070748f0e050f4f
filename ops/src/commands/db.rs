//! `projectorctl db`: the PostgreSQL projection store's migrations.

use crate::views::View;
use clap::Subcommand;
use projector_config::Config;

#[derive(Debug, Subcommand)]
pub enum DbAction {
    /// Apply every schema migration the database lacks, in order, under a lock (safe while workers
    /// start). Workers do this themselves at start unless sink.migrate = false.
    ///
    /// With --json: prints {"store", "applied": [{version, name}], "migrations": [{version, name, applied_at}]}
    Migrate {},
    /// Every migration this build knows, and when the database applied it (pending if not).
    ///
    /// With --json: prints {"store", "migrations": [{version, name, applied_at (RFC 3339 or null)}], "pending"}
    Status {},
}

/// `projectorctl db migrate|status`.
pub async fn run(config: &Config, action: DbAction) -> anyhow::Result<View> {
    let url = config.sink.postgres_url.as_deref().ok_or_else(|| {
        anyhow::anyhow!(
            "sink.postgres_url is not set: pass --set sink.postgres_url=postgresql://user@host/db or PROJECTOR_SINK_POSTGRES_URL"
        )
    })?;
    let store = projector_postgres::Store::new(url, 1)?;
    let applied = match action {
        DbAction::Migrate { .. } => Some(store.migrate().await?),
        DbAction::Status { .. } => None,
    };
    let states = store.migration_states().await?;
    let pending = states.iter().filter(|m| m.applied_at.is_none()).count();
    let mut value = serde_json::json!({
        "store": store.target(),
        "migrations": states.iter().map(|m| serde_json::json!({
            "version": m.version, "name": m.name, "applied_at": m.applied_at.map(|t| t.to_rfc3339()),
        })).collect::<Vec<_>>(),
        "pending": pending,
    });
    if let Some(applied) = &applied {
        value["applied"] = applied.iter().map(|m| serde_json::json!({"version": m.version, "name": m.name})).collect();
    }
    let mut out = format!("store: {}\n", store.target());
    for m in &states {
        let when = m.applied_at.map_or_else(|| "pending".to_owned(), |t| format!("applied {}", t.to_rfc3339()));
        out.push_str(&format!("  {:>4}  {:<28} {when}\n", m.version, m.name));
    }
    match applied {
        Some(applied) if applied.is_empty() => out.push_str("nothing to apply: the schema is current\n"),
        Some(applied) => out.push_str(&format!("applied {} migration(s) now\n", applied.len())),
        None if pending > 0 => out.push_str(&format!("{pending} pending: run `projectorctl db migrate`\n")),
        None => out.push_str("the schema is current\n"),
    }
    Ok(View::new(value, out))
}
