//! The schema's migrations: numbered SQL files applied once each, in order, and recorded in
//! `projector_schema_migrations`.

use chrono::{DateTime, Utc};

use crate::Error;

/// One schema change.
#[derive(Debug)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, oldest first. Append only: an applied migration is never edited.
pub const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "spike_projections table", sql: include_str!("../migrations/0001_spike_projections.sql") },
    Migration { version: 2, name: "fenced write function", sql: include_str!("../migrations/0002_write_function.sql") },
];

/// A known migration and when the database applied it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationState {
    pub version: i32,
    pub name: &'static str,
    pub applied_at: Option<DateTime<Utc>>,
}

const LEDGER: &str = "CREATE TABLE IF NOT EXISTS projector_schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

fn newest_known() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

pub(crate) async fn apply(client: &mut deadpool_postgres::Object, target: &str) -> Result<Vec<&'static Migration>, Error> {
    let failed = |what: &'static str| crate::error::statement(target, what);
    let tx = client.transaction().await.map_err(failed("starting the migration"))?;
    // Workers that start together queue here; each finds the others' work done.
    tx.execute("SELECT pg_advisory_xact_lock(hashtextextended('projector.migrations', 0))", &[])
        .await
        .map_err(failed("locking the migrations"))?;
    tx.execute(LEDGER, &[]).await.map_err(failed("creating projector_schema_migrations"))?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM projector_schema_migrations", &[])
        .await
        .map_err(failed("reading projector_schema_migrations"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if let Some(found) = applied.iter().copied().max().filter(|v| *v > newest_known()) {
        return Err(Error::SchemaNewer { target: target.to_owned(), found, known: newest_known() });
    }
    let mut now = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
        tx.batch_execute(m.sql).await.map_err(failed("applying a migration"))?;
        tx.execute("INSERT INTO projector_schema_migrations (version, name) VALUES ($1, $2)", &[&m.version, &m.name])
            .await
            .map_err(failed("recording a migration"))?;
        tracing::info!(target_db = %target, version = m.version, name = m.name, "applied a schema migration");
        now.push(m);
    }
    tx.commit().await.map_err(failed("committing the migrations"))?;
    Ok(now)
}

pub(crate) async fn states(client: &deadpool_postgres::Object, target: &str) -> Result<Vec<MigrationState>, Error> {
    let failed = crate::error::statement(target, "reading projector_schema_migrations");
    let exists: bool =
        client.query_one("SELECT to_regclass('projector_schema_migrations') IS NOT NULL", &[]).await.map_err(&failed)?.get(0);
    let applied: Vec<(i32, DateTime<Utc>)> = if exists {
        client
            .query("SELECT version, applied_at FROM projector_schema_migrations", &[])
            .await
            .map_err(&failed)?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    } else {
        Vec::new()
    };
    if let Some(found) = applied.iter().map(|(v, _)| *v).max().filter(|v| *v > newest_known()) {
        return Err(Error::SchemaNewer { target: target.to_owned(), found, known: newest_known() });
    }
    Ok(MIGRATIONS
        .iter()
        .map(|m| MigrationState {
            version: m.version,
            name: m.name,
            applied_at: applied.iter().find(|(v, _)| *v == m.version).map(|(_, at)| *at),
        })
        .collect())
}
