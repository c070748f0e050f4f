//! Organizations as the scheduler sees them, and reading them from a JSON-lines file.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::ids::{OrgId, ProjectId};

/// One organization: its id, its projects, and whether it is active (inactive ones are left out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgInfo {
    pub org_id: OrgId,
    #[serde(default)]
    pub project_ids: Vec<ProjectId>,
    #[serde(default = "active_by_default")]
    pub active: bool,
}

fn active_by_default() -> bool {
    true
}

/// A line of the organizations file that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// 1-based line number.
    pub line: usize,
    pub reason: String,
}

/// What reading an organizations file produced: the active orgs, and the lines that were skipped.
#[derive(Debug, Clone, Default)]
pub struct OrgFile {
    pub orgs: Vec<OrgInfo>,
    pub bad_lines: Vec<BadLine>,
    pub inactive: usize,
}

/// Parses JSON lines `{"org_id":…, "project_ids":[…], "active":true}`; bad lines are reported, not fatal.
pub fn parse_org_lines(text: &str) -> OrgFile {
    let mut out = OrgFile::default();
    let mut seen = std::collections::HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<OrgInfo>(line) {
            Ok(org) if !seen.insert(org.org_id) => {
                out.bad_lines.push(BadLine { line: line_no, reason: format!("org {} appears twice; the first line is used", org.org_id) })
            }
            Ok(org) if !org.active => out.inactive += 1,
            Ok(org) => out.orgs.push(org),
            Err(e) => out.bad_lines.push(BadLine { line: line_no, reason: e.to_string() }),
        }
    }
    out
}

/// Reads and parses an organizations file.
pub fn read_org_file(path: &Path) -> Result<OrgFile, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::OrgFile { path: path.to_owned(), source })?;
    Ok(parse_org_lines(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_lines_are_reported_with_their_number_and_skipped() {
        let text = r#"{"org_id": 1, "project_ids": [10, 11], "active": true}
not json
{"org_id": 2, "active": false}

{"org_id": "three"}
{"org_id": 4}
{"org_id": 1}
"#;
        let f = parse_org_lines(text);
        let ids: Vec<u64> = f.orgs.iter().map(|o| o.org_id.0).collect();
        assert_eq!(ids, [1, 4]);
        assert_eq!(f.orgs[0].project_ids, [ProjectId(10), ProjectId(11)]);
        assert_eq!(f.inactive, 1);
        let lines: Vec<usize> = f.bad_lines.iter().map(|b| b.line).collect();
        assert_eq!(lines, [2, 5, 7]);
    }
}
