//! The organizations of a run, from the configured source (synthetic or a JSON-lines file).

use projector_config::{Config, OrgSourceKind};
use projector_shared::org::{OrgFileRules, OrgInfo, read_org_file};
use projector_shared::run::BadLines;
use projector_shared::synthetic::synthetic_orgs;

use crate::error::Error;

/// The active organizations of a run, and the file lines that were skipped.
#[derive(Debug, Clone, Default)]
pub struct OrgList {
    pub orgs: Vec<OrgInfo>,
    pub bad_lines: BadLines,
}

/// The active organizations to fan out to. Bad file lines are logged with their number, skipped
/// and reported in the run summary; an empty list (nothing to run) is an error, never a run of 0.
pub fn list_orgs(config: &Config) -> Result<OrgList, Error> {
    match (config.orgs.source, &config.orgs.path) {
        (OrgSourceKind::File, Some(path)) => {
            let rules = OrgFileRules { allow_unknown_keys: config.orgs.allow_unknown_keys };
            let file = read_org_file(path, rules).map_err(projector_shared::Error::from)?;
            if !file.refused.is_empty() {
                return Err(Error::OrgFileRefused {
                    path: path.display().to_string(),
                    lines: file.refused.iter().take(5).map(|b| format!("line {}: {}", b.line, b.reason)).collect::<Vec<_>>().join("; "),
                    more: file.refused.len().saturating_sub(5),
                });
            }
            for bad in &file.bad_lines {
                tracing::warn!(path = %path.display(), line = bad.line, reason = %bad.reason, "organizations file: line skipped");
            }
            tracing::info!(
                path = %path.display(), active = file.orgs.len(), inactive = file.inactive,
                bad_lines = file.bad_lines.len(), "organizations read"
            );
            if file.orgs.is_empty() {
                return Err(Error::NoOrgs {
                    from: format!(
                        "organizations file {} ({} bad lines{}, {} inactive)",
                        path.display(),
                        file.bad_lines.len(),
                        file.bad_lines.first().map(|b| format!(", the first at line {}: {}", b.line, b.reason)).unwrap_or_default(),
                        file.inactive
                    ),
                });
            }
            Ok(OrgList { bad_lines: BadLines::from_file(&file.bad_lines), orgs: file.orgs })
        }
        // Config validation guarantees a path for the file source, and orgs.count >= 1.
        _ => Ok(OrgList { orgs: synthetic_orgs(config.orgs.count), bad_lines: BadLines::default() }),
    }
}
