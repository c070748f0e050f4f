//! The organizations of a run, from the configured source (synthetic or a JSON-lines file).

use projector_config::{Config, OrgSourceKind};
use projector_shared::org::{OrgInfo, read_org_file};
use projector_shared::synthetic::synthetic_orgs;

use crate::error::Error;

/// The active organizations to fan out to. Bad file lines are logged with their number and skipped.
pub fn list_orgs(config: &Config) -> Result<Vec<OrgInfo>, Error> {
    match (config.orgs.source, &config.orgs.path) {
        (OrgSourceKind::File, Some(path)) => {
            let file = read_org_file(path)?;
            for bad in &file.bad_lines {
                tracing::warn!(path = %path.display(), line = bad.line, reason = %bad.reason, "organizations file: line skipped");
            }
            tracing::info!(
                path = %path.display(), active = file.orgs.len(), inactive = file.inactive,
                bad_lines = file.bad_lines.len(), "organizations read"
            );
            Ok(file.orgs)
        }
        // Config validation guarantees a path for the file source.
        _ => Ok(synthetic_orgs(config.orgs.count)),
    }
}
