//! The operators' settings on the SQLite file: the fleet's pause and the rollout flag, one row
//! each in `projector_settings`, as the Redis keys hold them.

use projector_sqlite::sqlx;

use crate::error::Error;
use crate::pause::Pause;
use crate::rollout::{RATE_LIMIT_FLAG, Rollout};
use crate::sqlite::SqliteRuns;

impl SqliteRuns {
    /// An operator's setting (the pause, the rollout flag): its value and when it was set.
    pub async fn setting(&self, name: &str) -> Result<Option<(String, i64)>, Error> {
        Ok(sqlx::query_as("SELECT value, set_ms FROM projector_settings WHERE name = ?1")
            .bind(name)
            .fetch_optional(self.db.pool())
            .await
            .map_err(self.db.err(format!("reading the setting {name}")))?)
    }

    /// Sets (`Some`) or clears (`None`) an operator's setting; returns whether one was there.
    /// `keep_since` keeps the time of a setting already there (a pause's start).
    pub async fn set_setting(&self, name: &str, value: Option<&str>, keep_since: bool) -> Result<bool, Error> {
        let mut w = self.db.write("writing an operator's setting").await?;
        let had: Option<i64> = sqlx::query_scalar("SELECT set_ms FROM projector_settings WHERE name = ?1")
            .bind(name)
            .fetch_optional(&mut *w.tx)
            .await
            .map_err(w.err())?;
        match value {
            Some(value) => {
                let since = if keep_since { had.unwrap_or(w.now_ms) } else { w.now_ms };
                sqlx::query("INSERT OR REPLACE INTO projector_settings (name, value, set_ms) VALUES (?1, ?2, ?3)")
                    .bind(name)
                    .bind(value)
                    .bind(since)
                    .execute(&mut *w.tx)
                    .await
                    .map_err(w.err())?;
            }
            None => {
                sqlx::query("DELETE FROM projector_settings WHERE name = ?1").bind(name).execute(&mut *w.tx).await.map_err(w.err())?;
            }
        }
        w.commit().await?;
        Ok(had.is_some())
    }
}

/// The settings' names: the pause and the rollout flag, as the Redis keys name them.
const PAUSE: &str = "paused";

impl SqliteRuns {
    /// Pauses the fleet (or changes the reason of the pause in force, keeping its start).
    pub async fn pause(&self, reason: &str) -> Result<Pause, Error> {
        self.set_setting(PAUSE, Some(reason), true).await?;
        self.paused().await?.ok_or_else(|| Error::NotKept { doing: "pausing the fleet".to_owned() })
    }

    /// Ends the pause; `false` when there was none.
    pub async fn resume(&self) -> Result<bool, Error> {
        self.set_setting(PAUSE, None, false).await
    }

    /// The pause in force, if any.
    pub async fn paused(&self) -> Result<Option<Pause>, Error> {
        Ok(self.setting(PAUSE).await?.map(|(reason, since)| Pause { reason, since_ms: u64::try_from(since).unwrap_or(0) }))
    }

    /// The rollout flag; unset is the default (everyone limited).
    pub async fn rollout(&self) -> Result<Rollout, Error> {
        let Some((text, _)) = self.setting(RATE_LIMIT_FLAG).await? else { return Ok(Rollout::default()) };
        let fields: std::collections::HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
        Ok(Rollout::from_fields(|name| fields.get(name).map(|v| (*v).to_owned())))
    }

    /// Writes the whole rollout flag.
    pub async fn save_rollout(&self, rollout: &Rollout) -> Result<(), Error> {
        let text = rollout.fields().into_iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("\n");
        self.set_setting(RATE_LIMIT_FLAG, Some(&text), false).await.map(|_| ())
    }
}
