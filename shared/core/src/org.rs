//! Organizations as the scheduler sees them, and reading them from a JSON-lines file.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::ids::{OrgId, ProjectId};

/// One organization: its id, its projects, and whether it is active (inactive ones are left out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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

/// The keys a line of an organizations file may have.
pub const ORG_KEYS: [&str; 3] = ["org_id", "project_ids", "active"];

/// How strictly an organizations file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OrgFileRules {
    /// Accept keys other than [`ORG_KEYS`] and ignore them (`orgs.allow_unknown_keys`), for a
    /// file written for another tool too. Off: an unknown key refuses the file.
    pub allow_unknown_keys: bool,
}

/// What reading an organizations file produced: the active orgs, the lines that were skipped,
/// and the lines that refuse the whole file.
#[derive(Debug, Clone, Default)]
pub struct OrgFile {
    pub orgs: Vec<OrgInfo>,
    /// Lines that are not an organization at all (not JSON, not UTF-8, an org listed twice):
    /// skipped and reported.
    pub bad_lines: Vec<BadLine>,
    /// Lines that are JSON objects but not as the format says (an unknown key, a value of the
    /// wrong type, no org_id): a misspelt key would otherwise change what is queried without a
    /// word, so the file is refused, as a config file with an unknown key is.
    pub refused: Vec<BadLine>,
    pub inactive: usize,
}

/// Parses JSON lines `{"org_id":…, "project_ids":[…], "active":true}`; bad lines are reported, not fatal.
pub fn parse_org_lines(text: &str, rules: OrgFileRules) -> OrgFile {
    let mut parser = OrgLines { rules, ..OrgLines::default() };
    for line in text.lines() {
        parser.line(Ok(line));
    }
    parser.out
}

/// Reads and parses an organizations file line by line (a large file is never held whole). A
/// UTF-8 byte-order mark is skipped; a line that is not UTF-8 is reported with its number, like
/// any other bad line, and the rest of the file is still read.
pub fn read_org_file(path: &Path, rules: OrgFileRules) -> Result<OrgFile, Error> {
    use std::io::BufRead;
    let file = std::fs::File::open(path).map_err(|source| Error::OrgFile { path: path.to_owned(), source })?;
    let mut reader = std::io::BufReader::new(file);
    let mut parser = OrgLines { rules, ..OrgLines::default() };
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(|source| Error::OrgFile { path: path.to_owned(), source })?;
        if n == 0 {
            break;
        }
        let mut bytes = buf.as_slice();
        if parser.line_no == 0 {
            bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        }
        let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        parser.line(std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8 (invalid byte at column {})", e.valid_up_to() + 1)));
    }
    Ok(parser.out)
}

/// Line-by-line parsing state: line numbers, duplicates, and what was read so far.
#[derive(Default)]
struct OrgLines {
    rules: OrgFileRules,
    out: OrgFile,
    seen: std::collections::HashSet<OrgId>,
    line_no: usize,
}

impl OrgLines {
    /// One line of the file, or why it cannot be read as text.
    fn line(&mut self, line: Result<&str, String>) {
        self.line_no += 1;
        let line_no = self.line_no;
        let line = match line {
            Ok(line) => line.trim_start_matches('\u{feff}'),
            Err(reason) => {
                self.out.bad_lines.push(BadLine { line: line_no, reason });
                return;
            }
        };
        if line.trim().is_empty() {
            return;
        }
        let org = match self.org_of(line) {
            Ok(org) => Ok(org),
            Err(Parse::Refused(reason)) => return self.out.refused.push(BadLine { line: line_no, reason }),
            Err(Parse::Bad(reason)) => Err(reason),
        };
        match org {
            Ok(org) if !self.seen.insert(org.org_id) => self
                .out
                .bad_lines
                .push(BadLine { line: line_no, reason: format!("org {} appears twice; the first line is used", org.org_id) }),
            Ok(org) if !org.active => self.out.inactive += 1,
            Ok(mut org) => {
                // A project listed twice would be read twice and projected twice: once is meant.
                let mut seen = std::collections::HashSet::new();
                org.project_ids.retain(|p| seen.insert(*p));
                self.out.orgs.push(org)
            }
            Err(reason) => self.out.bad_lines.push(BadLine { line: line_no, reason }),
        }
    }

    /// One line as an organization: a line that is not a JSON object is bad (skipped); an
    /// object with an unknown key or a value of the wrong type is refused.
    fn org_of(&self, line: &str) -> Result<OrgInfo, Parse> {
        let mut object: serde_json::Map<String, serde_json::Value> = match serde_json::from_str(line) {
            Ok(serde_json::Value::Object(object)) => object,
            Ok(_) => return Err(Parse::Bad("not a JSON object".to_owned())),
            Err(e) => return Err(Parse::Bad(e.to_string())),
        };
        let unknown: Vec<String> = object.keys().filter(|k| !ORG_KEYS.contains(&k.as_str())).cloned().collect();
        if let Some(key) = unknown.first()
            && !self.rules.allow_unknown_keys
        {
            return Err(Parse::Refused(format!(
                "unknown key \"{key}\"; did you mean \"{}\"? (the keys are {}; orgs.allow_unknown_keys = true ignores others)",
                nearest_key(key),
                ORG_KEYS.join(", ")
            )));
        }
        for key in unknown {
            object.remove(&key);
        }
        serde_json::from_value(serde_json::Value::Object(object)).map_err(|e| Parse::Refused(e.to_string()))
    }
}

/// Why a line is not an organization.
enum Parse {
    /// Not an organization at all: skipped and reported.
    Bad(String),
    /// An organization written against the format: the file is refused.
    Refused(String),
}

/// The known key nearest to `key`, for "did you mean".
fn nearest_key(key: &str) -> &'static str {
    ORG_KEYS.into_iter().min_by_key(|known| strsim::levenshtein(key, known)).unwrap_or(ORG_KEYS[0])
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_project_listed_twice_is_kept_once_in_its_first_place() {
        let f = super::parse_org_lines(r#"{"org_id": 1, "project_ids": [10, 11, 10, 12, 11]}"#, super::OrgFileRules::default());
        assert_eq!(f.orgs[0].project_ids, [10, 11, 12].map(crate::ids::ProjectId));
        assert!(f.bad_lines.is_empty());
    }

    use super::*;

    #[test]
    fn bad_lines_are_reported_with_their_number_and_skipped() {
        let text = r#"{"org_id": 1, "project_ids": [10, 11], "active": true}
not json
{"org_id": 2, "active": false}

[4]
{"org_id": 4}
{"org_id": 1}
"#;
        let f = parse_org_lines(text, OrgFileRules::default());
        let ids: Vec<u64> = f.orgs.iter().map(|o| o.org_id.0).collect();
        assert_eq!(ids, [1, 4]);
        assert_eq!(f.orgs[0].project_ids, [ProjectId(10), ProjectId(11)]);
        assert_eq!(f.inactive, 1);
        let lines: Vec<usize> = f.bad_lines.iter().map(|b| b.line).collect();
        assert_eq!(lines, [2, 5, 7]);
        assert!(f.refused.is_empty());
    }

    #[test]
    fn an_unknown_key_or_a_wrong_type_refuses_the_line_naming_the_key_and_the_nearest() {
        let text = r#"{"org_id": 1, "projects": [10]}
{"org_id": 2, "actve": false}
{"org_id": "three"}
{"project_ids": [5]}
{"org_id": 5, "project_ids": [50]}
"#;
        let f = parse_org_lines(text, OrgFileRules::default());
        let refused: Vec<(usize, &str)> = f.refused.iter().map(|b| (b.line, b.reason.as_str())).collect();
        assert_eq!(refused.len(), 4, "{refused:?}");
        assert!(refused[0].1.starts_with("unknown key \"projects\"; did you mean \"project_ids\"?"), "{refused:?}");
        assert!(refused[1].1.starts_with("unknown key \"actve\"; did you mean \"active\"?"), "{refused:?}");
        assert!(refused[2].1.contains("invalid type"), "{refused:?}");
        assert!(refused[3].1.contains("missing field `org_id`"), "{refused:?}");
        assert_eq!(f.orgs.len(), 1);
        let lenient = parse_org_lines(text, OrgFileRules { allow_unknown_keys: true });
        assert_eq!(lenient.refused.len(), 2, "a wrong type is refused whatever the rules: {:?}", lenient.refused);
        let inactive_kept: Vec<u64> = lenient.orgs.iter().map(|o| o.org_id.0).collect();
        assert_eq!(inactive_kept, [1, 2, 5], "unknown keys ignored: org 2's misspelt flag does not apply");
    }

    #[test]
    fn a_bom_is_skipped_and_bad_bytes_are_reported_per_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("orgs.jsonl");
        let mut bytes = b"\xEF\xBB\xBF{\"org_id\": 1}\r\n".to_vec();
        bytes.extend_from_slice(b"{\"org_id\": 2, \"name\": \"caf\xE9\"}\n");
        bytes.extend_from_slice(b"{\"org_id\": 3}\n");
        std::fs::write(&path, bytes).expect("write");
        let f = read_org_file(&path, OrgFileRules::default()).expect("reads");
        let ids: Vec<u64> = f.orgs.iter().map(|o| o.org_id.0).collect();
        assert_eq!(ids, [1, 3], "the first org survives the BOM, the rest of the file survives the bad byte");
        assert_eq!(f.bad_lines.len(), 1);
        assert_eq!(f.bad_lines[0].line, 2);
        assert!(f.bad_lines[0].reason.contains("not UTF-8"), "{:?}", f.bad_lines);
    }
}
