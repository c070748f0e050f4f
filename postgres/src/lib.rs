//! The projection store in PostgreSQL: a pooled connection, the schema's migrations, and one
//! fenced, batched write per organization (`projector_write_projections`, one round trip).

mod error;
mod migrations;

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

pub use error::Error;
pub use migrations::{MIGRATIONS, Migration, MigrationState};

/// How long a write waits for a pooled connection, and a new connection for PostgreSQL to answer.
const POOL_WAIT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A pool of connections to the database that holds `spike_projections`.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    /// Where the store is, without credentials, for errors and logs.
    target: String,
}

/// One org's projections, as one write: every project's hours under one header.
#[derive(Debug, Clone)]
pub struct OrgWrite<'a> {
    pub org_id: u64,
    pub run_id: &'a str,
    /// The run's first projected hour; it orders runs for the fence.
    pub first_hour: DateTime<Utc>,
    /// The slot lease's fencing token; 0 = the legacy path, which cannot be fenced.
    pub fencing_token: u64,
    /// Rows of this org for hours before this are deleted.
    pub prune_before: DateTime<Utc>,
    pub projects: Vec<ProjectHours>,
}

/// One project's projection: `hourly[i]` is for `first_hour + i` hours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectHours {
    pub project_id: u64,
    pub spike_threshold: u64,
    pub hourly: Vec<u64>,
}

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    Written {
        rows: u64,
    },
    /// A later run, or the same run under a newer lease, already wrote these projects.
    Stale {
        stored_first_hour: DateTime<Utc>,
        stored_token: u64,
    },
}

/// One stored row, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRow {
    pub project_id: u64,
    pub hour: DateTime<Utc>,
    pub events: u64,
    pub spike_threshold: u64,
    pub run_id: String,
    pub fencing_token: u64,
}

impl Store {
    /// Builds the pool; connections open on first use, so a worker starts while PostgreSQL is down
    /// and its writes fail (retryably) until it is back.
    pub fn new(url: &str, pool_size: usize) -> Result<Store, Error> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| Error::BadUrl { detail: format!("{e}"), url: redact(url) })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("projector");
        }
        let target = describe(&config);
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| Error::Unreachable { target: target.clone(), detail: e.to_string() })?;
        Ok(Store { pool, target })
    }

    /// Where the store is, without credentials.
    pub fn target(&self) -> &str {
        &self.target
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, Error> {
        self.pool.get().await.map_err(|e| Error::Unreachable { target: self.target.clone(), detail: e.to_string() })
    }

    fn statement_error(&self, what: &'static str) -> impl Fn(tokio_postgres::Error) -> Error + '_ {
        error::statement(&self.target, what)
    }

    /// Applies every migration this build knows and the database has not seen, in order, under a
    /// lock so that workers starting together apply each once. Returns the ones applied now.
    pub async fn migrate(&self) -> Result<Vec<&'static Migration>, Error> {
        let mut client = self.client().await?;
        migrations::apply(&mut client, &self.target).await
    }

    /// Every known migration and whether the database has it.
    pub async fn migration_states(&self) -> Result<Vec<MigrationState>, Error> {
        let client = self.client().await?;
        migrations::states(&client, &self.target).await
    }

    /// Stores one org's projections, fenced, in one statement.
    pub async fn write_org(&self, write: &OrgWrite<'_>) -> Result<WriteOutcome, Error> {
        let rows: usize = write.projects.iter().map(|p| p.hourly.len()).sum();
        let (mut projects, mut hours, mut events, mut thresholds) =
            (Vec::with_capacity(rows), Vec::with_capacity(rows), Vec::with_capacity(rows), Vec::with_capacity(rows));
        for p in &write.projects {
            let (project, threshold) = (bigint("project_id", p.project_id)?, bigint("spike_threshold", p.spike_threshold)?);
            for (i, count) in p.hourly.iter().enumerate() {
                projects.push(project);
                hours.push(write.first_hour + chrono::Duration::hours(i64::try_from(i).unwrap_or(i64::MAX)));
                events.push(bigint("events", *count)?);
                thresholds.push(threshold);
            }
        }
        let client = self.client().await?;
        let statement = client
            .prepare_cached("SELECT * FROM projector_write_projections($1, $2, $3, $4, $5, $6, $7, $8, $9)")
            .await
            .map_err(self.statement_error("preparing the projection write (has `projectorctl db migrate` run?)"))?;
        let row = client
            .query_one(
                &statement,
                &[
                    &bigint("org_id", write.org_id)?,
                    &write.run_id,
                    &write.first_hour,
                    &bigint("fencing_token", write.fencing_token)?,
                    &write.prune_before,
                    &projects,
                    &hours,
                    &events,
                    &thresholds,
                ],
            )
            .await
            .map_err(self.statement_error("writing projections"))?;
        let written: bool = row.get(0);
        if written {
            let rows: i64 = row.get(3);
            return Ok(WriteOutcome::Written { rows: u64::try_from(rows).unwrap_or(0) });
        }
        let stored_first_hour: DateTime<Utc> = row.get(1);
        let stored_token: i64 = row.get(2);
        Ok(WriteOutcome::Stale { stored_first_hour, stored_token: u64::try_from(stored_token).unwrap_or(0) })
    }

    /// Those of `orgs` holding a row from a run whose first hour is after `first_hour` (the
    /// write function would refuse a write for `first_hour`). One statement on the primary key.
    pub async fn orgs_fresher_than(&self, orgs: &[u64], first_hour: DateTime<Utc>) -> Result<Vec<u64>, Error> {
        let ids = orgs.iter().map(|o| bigint("org_id", *o)).collect::<Result<Vec<i64>, Error>>()?;
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT DISTINCT org_id FROM spike_projections WHERE org_id = ANY($1) AND first_hour > $2 ORDER BY org_id",
                &[&ids, &first_hour],
            )
            .await
            .map_err(self.statement_error("reading which orgs hold fresher projections"))?;
        Ok(rows.iter().map(|r| unsigned(r.get(0))).collect())
    }

    /// Rows in `spike_projections`, all orgs.
    pub async fn count_rows(&self) -> Result<u64, Error> {
        let client = self.client().await?;
        let row =
            client.query_one("SELECT count(*) FROM spike_projections", &[]).await.map_err(self.statement_error("counting projections"))?;
        Ok(unsigned(row.get(0)))
    }

    /// Every stored row of one org, by project and hour.
    pub async fn org_rows(&self, org_id: u64) -> Result<Vec<StoredRow>, Error> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT project_id, hour, events, spike_threshold, run_id, fencing_token
                   FROM spike_projections WHERE org_id = $1 ORDER BY project_id, hour",
                &[&bigint("org_id", org_id)?],
            )
            .await
            .map_err(self.statement_error("reading projections"))?;
        Ok(rows
            .iter()
            .map(|r| StoredRow {
                project_id: unsigned(r.get(0)),
                hour: r.get(1),
                events: unsigned(r.get(2)),
                spike_threshold: unsigned(r.get(3)),
                run_id: r.get(4),
                fencing_token: unsigned(r.get(5)),
            })
            .collect())
    }
}

/// PostgreSQL has no unsigned integers: ids, counts and tokens above i64::MAX are refused whole.
fn bigint(what: &'static str, value: u64) -> Result<i64, Error> {
    i64::try_from(value).map_err(|_| Error::OutOfRange { what, value })
}

fn unsigned(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// `host:port/db` for every host, without user or password.
fn describe(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match h {
                tokio_postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
                tokio_postgres::config::Host::Unix(dir) => format!("{}/.s.PGSQL.{port}", dir.display()),
            }
        })
        .collect();
    format!("postgres {} db {}", hosts.join(","), config.get_dbname().unwrap_or("(user's)"))
}

/// The URL with its password masked, for an error about the URL itself.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => format!("{}***{}", &url[..scheme_end + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_name_host_and_database_but_no_secret() {
        let config: tokio_postgres::Config = "postgresql://billing:hunter2@db.internal:6432/billing".parse().expect("url");
        let target = describe(&config);
        assert_eq!(target, "postgres db.internal:6432 db billing");
        let config: tokio_postgres::Config = "postgresql://projector@%2Ftmp%2Fpg1:5433/projector".parse().expect("url");
        assert_eq!(describe(&config), "postgres /tmp/pg1/.s.PGSQL.5433 db projector");
        assert!(!redact("postgresql://billing:hunter2@db/billing").contains("hunter2"));
    }

    #[test]
    fn values_beyond_bigint_are_refused_not_wrapped() {
        assert_eq!(bigint("org_id", 7).expect("fits"), 7);
        let e = bigint("org_id", u64::MAX).expect_err("too big");
        assert!(e.to_string().contains("org_id"), "{e}");
    }

    #[test]
    fn a_bad_url_is_refused_at_start() {
        let e = Store::new("postgresql://host:notaport/db", 4).err().expect("bad port");
        assert!(matches!(e, Error::BadUrl { .. }), "{e}");
    }
}
