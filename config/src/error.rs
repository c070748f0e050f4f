//! The configuration error: every problem found in one load, each naming key, value, source and what is allowed.

use std::fmt;

use crate::load::Source;

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key (`slots.limit`), or the unknown name as written.
    pub key: String,
    /// The value as given, when there is one.
    pub value: Option<String>,
    pub source: Source,
    /// What would have been accepted.
    pub allowed: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            // A value may be a URL with a password (redis.url, sink.postgres_url): never printed.
            Some(v) => write!(f, "{} = {:?} (from {}): {}", self.key, crate::value::redact_url(v), self.source, self.allowed),
            None => write!(f, "{} (from {}): {}", self.key, self.source, self.allowed),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration ({} problem{}):\n{}", .0.len(), if .0.len() == 1 { "" } else { "s" }, list(.0))]
    Invalid(Vec<Problem>),
    #[error("cannot read config file {path}: {source} (check the --config path)")]
    Read { path: std::path::PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: std::path::PathBuf, message: String },
}

impl ConfigError {
    /// The problems, when the error is a validation failure.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid(p) => p,
            _ => &[],
        }
    }
}

fn list(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n")
}
