//! Layering: defaults < TOML file < `PROJECTOR_*` environment < flags, merged in memory, validated in one pass.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{ConfigError, Problem};
use crate::keys::{KEYS, env_var_for, find};
use crate::value::{format_duration, redact_url};
use crate::{BackendKind, Config, OrgSourceKind, QuerySourceKind, SinkKind};

/// Where a value came from; named in every error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File(PathBuf),
    Env(String),
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => write!(f, "default"),
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Env(v) => write!(f, "environment variable {v}"),
            Source::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// The `PROJECTOR_*` environment, captured once so tests can supply their own.
#[derive(Debug, Clone, Default)]
pub struct Env(BTreeMap<String, String>);

impl Env {
    /// The process environment's `PROJECTOR_*` variables.
    pub fn from_process() -> Self {
        Env::from_pairs(std::env::vars())
    }

    /// Any set of variables; those without the `PROJECTOR_` prefix are ignored.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        Env(pairs.into_iter().map(|(k, v)| (k.into(), v.into())).filter(|(k, _)| k.starts_with("PROJECTOR_")).collect())
    }
}

/// A value given on the command line for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagValue {
    pub key: String,
    pub value: String,
    /// The flag as the user typed it, for error messages (`--batch-delay`, `--set`).
    pub flag: String,
}

/// Loads the configuration from all layers. Reports every problem at once.
pub fn load(file: Option<&Path>, env: &Env, flags: &[FlagValue]) -> Result<Config, ConfigError> {
    let mut problems = Vec::new();
    // Later inserts win: that is the whole precedence rule.
    let mut layered: BTreeMap<&'static str, (String, Source)> = BTreeMap::new();
    let mut referrers = BTreeMap::new();

    if let Some(path) = file {
        for (key, value) in read_file(path, &mut referrers, &mut problems)? {
            layered.insert(key, (value, Source::File(path.to_owned())));
        }
    }

    for (var, value) in &env.0 {
        match KEYS.iter().find(|k| env_var_for(k.name) == *var) {
            Some(spec) => {
                layered.insert(spec.name, (value.clone(), Source::Env(var.clone())));
            }
            None => problems.push(Problem {
                key: var.clone(),
                value: Some(value.clone()),
                source: Source::Env(var.clone()),
                allowed: unknown("variable", var, KEYS.iter().map(|k| env_var_for(k.name))),
            }),
        }
    }

    for flag in flags {
        match find(&flag.key) {
            Some(spec) => {
                layered.insert(spec.name, (flag.value.clone(), Source::Flag(flag.flag.clone())));
            }
            None => problems.push(Problem {
                key: flag.key.clone(),
                value: Some(flag.value.clone()),
                source: Source::Flag(flag.flag.clone()),
                allowed: unknown("key", &flag.key, KEYS.iter().map(|k| k.name.to_owned())),
            }),
        }
    }

    let mut config = Config::default();
    let mut sources: BTreeMap<&'static str, Source> = BTreeMap::new();
    for (key, (value, source)) in layered {
        let Some(spec) = find(key) else { continue };
        if let Err(allowed) = (spec.set)(&mut config, &value) {
            problems.push(Problem { key: key.to_owned(), value: Some(value), source, allowed });
        } else {
            sources.insert(key, source);
        }
    }

    if let Some(path) = file {
        apply_referrer_overrides(&mut config, referrers, path, &mut problems);
    }
    check_combinations(&mut config, &sources, &mut problems);

    if problems.is_empty() { Ok(config) } else { Err(ConfigError::Invalid(problems)) }
}

/// `backend.*` with each other and with `redis.url`: a combination that cannot work is refused
/// with what to set instead. A Redis DSN takes `redis.url`'s place.
fn check_backend(config: &mut Config, source_of: &dyn Fn(&str) -> Source, problems: &mut Vec<Problem>) {
    let dsn = config.backend.dsn.clone();
    let mut refuse = |key: &str, value: Option<String>, allowed: String| {
        problems.push(Problem { key: key.to_owned(), value, source: source_of(key), allowed });
    };
    match (config.backend.kind, dsn) {
        (None, Some(dsn)) => refuse(
            "backend.dsn",
            Some(redact_url(&dsn)),
            "is read only with backend.kind set; set backend.kind = \"sqlite\" (or \"redis\") to say what the DSN is".to_owned(),
        ),
        (Some(BackendKind::Memory), Some(dsn)) => refuse(
            "backend.dsn",
            Some(redact_url(&dsn)),
            "names a store, but backend.kind = \"memory\" keeps everything in this process; unset backend.dsn, or set backend.kind = \"sqlite\" to keep it in that file".to_owned(),
        ),
        (Some(BackendKind::Sqlite), None) => refuse(
            "backend.dsn",
            None,
            "required when backend.kind = \"sqlite\"; set it to the file every process of this machine shares, like sqlite:///var/lib/projector/fleet.db".to_owned(),
        ),
        (Some(BackendKind::Sqlite), Some(dsn)) => {
            let names_a_file = dsn.strip_prefix("sqlite://").is_some_and(|rest| !rest.is_empty() && !rest.contains(":memory:") && !rest.contains("mode=memory"));
            if !names_a_file {
                refuse(
                    "backend.dsn",
                    Some(redact_url(&dsn)),
                    "must name a SQLite file the processes share: sqlite:///absolute/path.db or sqlite://relative.db (an in-memory database lives and dies with one process: use backend.kind = \"memory\" for that)".to_owned(),
                );
            }
            // One machine, one file: unless a sink is chosen, projections are kept there too.
            if source_of("sink.kind") == Source::Default && config.sink.kind == SinkKind::Redis {
                config.sink.kind = SinkKind::Sqlite;
            }
        }
        (Some(BackendKind::Redis), Some(dsn)) => {
            if !["redis://", "rediss://", "unix://", "redis+unix://"].iter().any(|scheme| dsn.starts_with(scheme)) {
                refuse("backend.dsn", Some(redact_url(&dsn)), "with backend.kind = \"redis\" must be a Redis URL (redis://, rediss:// or unix://)".to_owned());
            } else if source_of("redis.url") != Source::Default && config.redis.url != dsn {
                refuse(
                    "backend.dsn",
                    Some(redact_url(&dsn)),
                    format!("and redis.url ({}) name two different Redis servers; set one of them", redact_url(&config.redis.url)),
                );
            } else {
                config.redis.url = dsn;
            }
        }
        (Some(BackendKind::Redis) | Some(BackendKind::Memory) | None, None) => {}
    }
}

/// Rules that involve more than one key.
fn check_combinations(config: &mut Config, sources: &BTreeMap<&'static str, Source>, problems: &mut Vec<Problem>) {
    let source_of = |key: &str| sources.get(key).cloned().unwrap_or(Source::Default);
    if config.orgs.source == OrgSourceKind::File && config.orgs.path.is_none() {
        problems.push(Problem {
            key: "orgs.path".to_owned(),
            value: None,
            source: source_of("orgs.source"),
            allowed: "required when orgs.source = \"file\"; set it to a JSON-lines file of organizations".to_owned(),
        });
    }
    if config.orgs.source != OrgSourceKind::File && config.orgs.path.is_some() {
        // Refused rather than taken to mean the file source: a run of synthetic orgs where a file
        // was meant, or the other way round, is not a guess to make.
        problems.push(Problem {
            key: "orgs.path".to_owned(),
            value: config.orgs.path.as_ref().map(|p| p.display().to_string()),
            source: source_of("orgs.path"),
            allowed: "is read only with orgs.source = \"file\"; set orgs.source = \"file\" to run its organizations, or unset orgs.path"
                .to_owned(),
        });
    }
    config.backend.kind_from = sources.get("backend.kind").cloned();
    check_backend(config, &source_of, problems);
    if config.sink.kind == SinkKind::JsonLines && config.sink.path.is_none() {
        problems.push(Problem {
            key: "sink.path".to_owned(),
            value: None,
            source: source_of("sink.kind"),
            allowed: "required when sink.kind = \"jsonl\"; set it to the file projections are appended to".to_owned(),
        });
    }
    if config.sink.kind == SinkKind::Sqlite && config.backend.kind != Some(BackendKind::Sqlite) {
        problems.push(Problem {
            key: "sink.kind".to_owned(),
            value: Some("sqlite".to_owned()),
            source: source_of("sink.kind"),
            allowed:
                "stores projections in the backend's SQLite file: set backend.kind = \"sqlite\" and backend.dsn too, or choose another sink"
                    .to_owned(),
        });
    }
    if config.sink.kind == SinkKind::Postgres && config.sink.postgres_url.is_none() {
        problems.push(Problem {
            key: "sink.postgres_url".to_owned(),
            value: None,
            source: source_of("sink.kind"),
            allowed: "required when sink.kind = \"postgres\"; set it to the database, like postgresql://user@host:5432/billing".to_owned(),
        });
    }
    if config.adaptive.min_multiplier > config.adaptive.max_multiplier {
        problems.push(Problem {
            key: "adaptive.min_multiplier".to_owned(),
            value: Some(config.adaptive.min_multiplier.to_string()),
            source: source_of("adaptive.min_multiplier"),
            allowed: format!("must not exceed adaptive.max_multiplier ({})", config.adaptive.max_multiplier),
        });
    }
    if config.redis.cluster && config.redis.sentinel_master.is_some() {
        problems.push(Problem {
            key: "redis.sentinel_master".to_owned(),
            value: config.redis.sentinel_master.clone(),
            source: source_of("redis.sentinel_master"),
            allowed: "cannot be set with redis.cluster = true: a cluster fails over by itself; unset one of them".to_owned(),
        });
    }
    if config.runs.summary_retention < config.runs.retention {
        problems.push(Problem {
            key: "runs.summary_retention".to_owned(),
            value: Some(format_duration(config.runs.summary_retention)),
            source: source_of("runs.summary_retention"),
            allowed: format!(
                "must be at least runs.retention ({}): a run's summary outlives its per-org records, never the reverse",
                format_duration(config.runs.retention)
            ),
        });
    }
    if config.query.referrer.starts_with("billing.") {
        problems.push(Problem {
            key: "query.referrer".to_owned(),
            value: Some(config.query.referrer.clone()),
            source: source_of("query.referrer"),
            allowed: "must not start with \"billing.\": Snuba sends such referrers to the daily outcomes table, which has no hours \
                      (OutcomesStorageSelector); keep the default getsentry.get_spike_projections"
                .to_owned(),
        });
    }
    // The same bounds `projectorctl slots set-limit` applies, so that every binary refuses what one refuses.
    if config.slots.limit > config.query.referrer_limit {
        problems.push(Problem {
            key: "slots.limit".to_owned(),
            value: Some(config.slots.limit.to_string()),
            source: source_of("slots.limit"),
            allowed: format!(
                "must not exceed query.referrer_limit ({}), the query service's own limit for {}: queries beyond it get 429s; \
                 if the service's limit was raised, raise query.referrer_limit to match",
                config.query.referrer_limit, config.query.referrer
            ),
        });
    }
    if config.slots.service_margin >= config.query.referrer_limit {
        problems.push(Problem {
            key: "slots.service_margin".to_owned(),
            value: Some(config.slots.service_margin.to_string()),
            source: source_of("slots.service_margin"),
            allowed: format!(
                "must be below query.referrer_limit ({}): the limit in force is the service's room less this margin, so a margin \
                 that large leaves the fleet one slot once the service's numbers are heard",
                config.query.referrer_limit
            ),
        });
    }
    if config.query.max_duration < crate::SERVICE_QUERY_BOUND && !config.query.max_duration_below_service {
        problems.push(Problem {
            key: "query.max_duration".to_owned(),
            value: Some(format_duration(config.query.max_duration)),
            source: source_of("query.max_duration"),
            allowed: format!(
                "must be at least {} (Snuba counts a query as running that long unless it ends sooner: max_query_duration_s); \
                 a slot given back sooner can join a query the service still counts. To shorten the client's patience set \
                 query.timeout instead; if your service's max_query_duration_s is lower, also set query.max_duration_below_service = true",
                format_duration(crate::SERVICE_QUERY_BOUND)
            ),
        });
    }
    if config.query.source == QuerySourceKind::Snuba && config.query.url.is_none() {
        problems.push(Problem {
            key: "query.url".to_owned(),
            value: None,
            source: source_of("query.source"),
            allowed: "required when query.source = \"snuba\"; set it to the query service's base URL".to_owned(),
        });
    }
}

/// Checks each referrer's overrides against `[rate]` as finally layered, and keeps those that load.
fn apply_referrer_overrides(
    config: &mut Config,
    referrers: BTreeMap<String, Vec<(String, String)>>,
    path: &Path,
    problems: &mut Vec<Problem>,
) {
    for (referrer, overrides) in referrers {
        let mut scratch = config.clone();
        for (key, raw) in &overrides {
            let dotted = format!("rate.referrers.{referrer:?}.{key}");
            let spec = crate::RATE_POLICY_KEYS.contains(&key.as_str()).then(|| find(&format!("rate.{key}"))).flatten();
            let outcome = match spec {
                Some(spec) => (spec.set)(&mut scratch, raw),
                None => Err(format!("unknown key; a referrer may override {}", crate::RATE_POLICY_KEYS.join(", "))),
            };
            if let Err(allowed) = outcome {
                problems.push(Problem { key: dotted, value: Some(raw.clone()), source: Source::File(path.to_owned()), allowed });
            }
        }
        config.rate.referrers.insert(referrer, overrides);
    }
}

/// Reads `[rate.referrers."<referrer>"]` tables into (key, raw text) overrides.
fn read_referrers(
    value: &toml::Value,
    source: &Source,
    referrers: &mut BTreeMap<String, Vec<(String, String)>>,
    problems: &mut Vec<Problem>,
) {
    let not_a_table = |key: String, value: &toml::Value| Problem {
        key,
        value: Some(value.to_string()),
        source: source.clone(),
        allowed: "must be a table per referrer, like [rate.referrers.\"getsentry.get_spike_projections\"]".to_owned(),
    };
    let Some(tables) = value.as_table() else {
        problems.push(not_a_table("rate.referrers".to_owned(), value));
        return;
    };
    for (referrer, body) in tables {
        let Some(body) = body.as_table() else {
            problems.push(not_a_table(format!("rate.referrers.{referrer:?}"), body));
            continue;
        };
        let overrides = body
            .iter()
            .filter_map(|(key, v)| match scalar_text(v) {
                Some(raw) => Some((key.clone(), raw)),
                None => {
                    problems.push(Problem {
                        key: format!("rate.referrers.{referrer:?}.{key}"),
                        value: Some(v.to_string()),
                        source: source.clone(),
                        allowed: "must be a single value (string, number or boolean), or a list of rates".to_owned(),
                    });
                    None
                }
            })
            .collect();
        referrers.insert(referrer.clone(), overrides);
    }
}

/// Reads a TOML file into (key, raw text) pairs; unknown sections and keys are problems.
fn read_file(
    path: &Path,
    referrers: &mut BTreeMap<String, Vec<(String, String)>>,
    problems: &mut Vec<Problem>,
) -> Result<Vec<(&'static str, String)>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    let table: toml::Table =
        text.parse().map_err(|e: toml::de::Error| ConfigError::Syntax { path: path.to_owned(), message: e.to_string() })?;
    let source = Source::File(path.to_owned());
    let mut out = Vec::new();
    for (section, body) in &table {
        let Some(body) = body.as_table() else {
            problems.push(Problem {
                key: section.clone(),
                value: Some(body.to_string()),
                source: source.clone(),
                allowed: format!("top-level entries must be sections; known sections are {}", known_sections()),
            });
            continue;
        };
        for (name, value) in body {
            let dotted = format!("{section}.{name}");
            if dotted == "rate.referrers" {
                read_referrers(value, &source, referrers, problems);
                continue;
            }
            let Some(spec) = find(&dotted) else {
                let allowed = unknown("key", &dotted, KEYS.iter().map(|k| k.name.to_owned()));
                problems.push(Problem { key: dotted, value: Some(value.to_string()), source: source.clone(), allowed });
                continue;
            };
            match scalar_text(value) {
                Some(raw) => out.push((spec.name, raw)),
                None => problems.push(Problem {
                    key: dotted,
                    value: Some(value.to_string()),
                    source: source.clone(),
                    allowed: "must be a single value (string, number or boolean), not a table or list".to_owned(),
                }),
            }
        }
    }
    Ok(out)
}

/// TOML scalars become the same text an environment variable would carry; a list of strings
/// (`rates = ["20/s", "5000/h"]`) becomes the comma-separated form.
fn scalar_text(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::Array(items) => items.iter().map(|i| i.as_str().map(str::to_owned)).collect::<Option<Vec<_>>>().map(|v| v.join(",")),
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// "unknown key; did you mean slots.limit?" — the nearest known name, or where to find them all.
fn unknown(what: &str, given: &str, known: impl Iterator<Item = String>) -> String {
    let nearest = known
        .map(|k| (strsim::jaro_winkler(&given.to_ascii_lowercase(), &k.to_ascii_lowercase()), k))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .filter(|(score, _)| *score >= 0.8);
    match nearest {
        Some((_, name)) => format!("unknown {what}; did you mean {name}?"),
        None => format!("unknown {what}; config.example.toml lists every key (environment: PROJECTOR_<SECTION>_<KEY>)"),
    }
}

fn known_sections() -> String {
    let mut sections: Vec<&str> = KEYS.iter().filter_map(|k| k.name.split('.').next()).collect();
    sections.dedup();
    sections.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(text.as_bytes()).expect("write temp file");
        f
    }

    fn flag(key: &str, value: &str) -> FlagValue {
        FlagValue { key: key.to_owned(), value: value.to_owned(), flag: format!("--{}", key.replace(['.', '_'], "-")) }
    }

    /// A scheduled tick's deadline is the next tick; a manual run just before a tick gets a
    /// whole period, not the seconds left; runs.deadline counts from the tick.
    #[test]
    fn a_runs_deadline_is_one_period_of_the_schedule_after_its_tick() {
        use chrono::TimeZone;
        let at = |h, m, s| chrono::Utc.with_ymd_and_hms(2026, 11, 22, h, m, s).single().expect("valid");
        let hourly = load(None, &Env::default(), &[]).expect("defaults load");
        assert_eq!(hourly.run_deadline(at(13, 0, 0)), at(14, 0, 0));
        assert_eq!(hourly.run_deadline(at(13, 59, 58)), at(14, 59, 58));
        let every_five = load(None, &Env::default(), &[flag("schedule.cron", "0 */5 * * * *")]).expect("load");
        assert_eq!(every_five.run_deadline(at(13, 4, 59)), at(13, 9, 59));
        let fixed = load(None, &Env::default(), &[flag("runs.deadline", "20m")]).expect("load");
        assert_eq!(fixed.run_deadline(at(13, 59, 58)), at(14, 19, 58));
    }

    #[test]
    fn defaults_match_the_documented_design() {
        let c = load(None, &Env::default(), &[]).expect("defaults load");
        assert_eq!(c.slots.limit, 50);
        assert_eq!(c.slots.lease_ttl, Duration::from_secs(30));
        assert_eq!(c.slots.max_wait, Duration::from_secs(60));
        assert_eq!(c.batch.size, 25);
        assert_eq!(c.batch.delay, Duration::from_secs(2));
        assert_eq!(c.query.referrer, "getsentry.get_spike_projections");
    }

    #[test]
    fn each_layer_overrides_the_one_below() {
        let f = file("[slots]\nlimit = 10\nmax_wait = \"5s\"\n[batch]\nsize = 7\ndelay = \"1s\"\n");
        let from_file = load(Some(f.path()), &Env::default(), &[]).expect("file loads");
        assert_eq!((from_file.slots.limit, from_file.batch.size), (10, 7));
        assert_eq!(from_file.slots.max_wait, Duration::from_secs(5));

        let env = Env::from_pairs([("PROJECTOR_SLOTS_LIMIT", "20"), ("PROJECTOR_BATCH_SIZE", "8")]);
        let from_env = load(Some(f.path()), &env, &[]).expect("env loads");
        assert_eq!((from_env.slots.limit, from_env.batch.size), (20, 8));
        assert_eq!(from_env.slots.max_wait, Duration::from_secs(5), "file value kept where env is silent");

        let from_flag = load(Some(f.path()), &env, &[flag("slots.limit", "30")]).expect("flags load");
        assert_eq!(from_flag.slots.limit, 30);
        assert_eq!(from_flag.batch.size, 8, "env value kept where flags are silent");
        assert_eq!(from_flag.batch.delay, Duration::from_secs(1), "file value kept below");
    }

    #[test]
    fn every_problem_is_reported_with_key_value_and_source() {
        let f = file("[slots]\nlimt = 10\n[batch]\ndelay = \"later\"\n");
        let env = Env::from_pairs([("PROJECTOR_SLOTS_LIMIT", "0")]);
        let err = load(Some(f.path()), &env, &[flag("batch.size", "-1")]).expect_err("invalid");
        let problems = err.problems();
        assert_eq!(problems.len(), 4, "{err}");
        let by_key = |k: &str| problems.iter().find(|p| p.key == k).unwrap_or_else(|| panic!("no problem for {k}: {err}"));
        assert_eq!(by_key("slots.limt").source, Source::File(f.path().to_owned()));
        assert_eq!(by_key("slots.limit").source, Source::Env("PROJECTOR_SLOTS_LIMIT".into()));
        assert_eq!(by_key("slots.limit").value.as_deref(), Some("0"));
        assert!(by_key("batch.delay").allowed.contains("duration"));
        assert_eq!(by_key("batch.size").source, Source::Flag("--batch-size".into()));
        let text = err.to_string();
        assert!(text.contains("environment variable PROJECTOR_SLOTS_LIMIT"), "{text}");
    }

    #[test]
    fn unknown_environment_variables_are_errors() {
        let env = Env::from_pairs([("PROJECTOR_SLOT_LIMIT", "10"), ("HOME", "/root")]);
        let err = load(None, &env, &[]).expect_err("typo is an error");
        assert_eq!(err.problems().len(), 1);
        assert_eq!(err.problems()[0].key, "PROJECTOR_SLOT_LIMIT");
        assert_eq!(err.problems()[0].allowed, "unknown variable; did you mean PROJECTOR_SLOTS_LIMIT?");
        assert!(!err.to_string().contains("PROJECTOR_WORKER_CONCURRENCY"), "one suggestion, not the whole list: {err}");
    }

    #[test]
    fn combinations_are_checked() {
        let env = Env::from_pairs([("PROJECTOR_QUERY_SOURCE", "snuba"), ("PROJECTOR_ORGS_SOURCE", "file")]);
        let err = load(None, &env, &[]).expect_err("missing url and path");
        let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["orgs.path", "query.url"]);
    }

    #[test]
    fn query_max_duration_is_the_services_bound_not_the_clients_patience() {
        let short_patience = Env::from_pairs([("PROJECTOR_QUERY_TIMEOUT", "2s")]);
        let config = load(None, &short_patience, &[]).expect("a short timeout is the client's business");
        assert_eq!((config.query.timeout, config.query.max_duration), (Duration::from_secs(2), Duration::from_secs(60)));
        let below = Env::from_pairs([("PROJECTOR_QUERY_MAX_DURATION", "10s")]);
        let err = load(None, &below, &[]).expect_err("below the service's bound");
        assert_eq!(err.problems().len(), 1, "{err}");
        assert_eq!(err.problems()[0].key, "query.max_duration");
        assert!(err.problems()[0].allowed.contains("must be at least 1m"), "{err}");
        assert!(err.problems()[0].allowed.contains("query.max_duration_below_service = true"), "{err}");
        let known = Env::from_pairs([("PROJECTOR_QUERY_MAX_DURATION", "10s"), ("PROJECTOR_QUERY_MAX_DURATION_BELOW_SERVICE", "true")]);
        assert_eq!(load(None, &known, &[]).expect("the operator knows better").query.max_duration, Duration::from_secs(10));
    }

    #[test]
    fn slot_settings_beyond_the_services_own_limit_are_refused_by_every_binary() {
        let above = Env::from_pairs([("PROJECTOR_SLOTS_LIMIT", "500")]);
        let err = load(None, &above, &[]).expect_err("above the referrer's limit");
        assert_eq!(err.problems()[0].key, "slots.limit", "{err}");
        assert!(err.problems()[0].allowed.contains("must not exceed query.referrer_limit (100)"), "{err}");
        let raised = Env::from_pairs([("PROJECTOR_SLOTS_LIMIT", "500"), ("PROJECTOR_QUERY_REFERRER_LIMIT", "600")]);
        assert_eq!(load(None, &raised, &[]).expect("the service's limit was raised").slots.limit, 500);
        let margin = Env::from_pairs([("PROJECTOR_SLOTS_SERVICE_MARGIN", "1000")]);
        let err = load(None, &margin, &[]).expect_err("a margin above the service's limit");
        assert_eq!(err.problems()[0].key, "slots.service_margin", "{err}");
    }

    #[test]
    fn an_organizations_file_without_the_file_source_is_refused() {
        let env = Env::from_pairs([("PROJECTOR_ORGS_PATH", "/tmp/orgs.jsonl")]);
        let err = load(None, &env, &[]).expect_err("the synthetic source ignores the path");
        assert_eq!(err.problems()[0].key, "orgs.path", "{err}");
        assert!(err.problems()[0].allowed.contains("set orgs.source = \"file\""), "{err}");
        let both = Env::from_pairs([("PROJECTOR_ORGS_PATH", "/tmp/orgs.jsonl"), ("PROJECTOR_ORGS_SOURCE", "file")]);
        assert!(load(None, &both, &[]).is_ok());
    }

    #[test]
    fn a_summary_kept_shorter_than_the_run_is_refused() {
        let env = Env::from_pairs([("PROJECTOR_RUNS_RETENTION", "7days"), ("PROJECTOR_RUNS_SUMMARY_RETENTION", "1day")]);
        let err = load(None, &env, &[]).expect_err("summary shorter than the record");
        assert_eq!(err.problems().len(), 1, "{err}");
        assert_eq!(err.problems()[0].key, "runs.summary_retention");
        assert!(err.problems()[0].allowed.contains("at least runs.retention (7days)"), "{err}");
        let ok = Env::from_pairs([("PROJECTOR_RUNS_RETENTION", "1day"), ("PROJECTOR_RUNS_SUMMARY_RETENTION", "1day")]);
        assert_eq!(load(None, &ok, &[]).expect("equal is fine").runs.summary_retention, Duration::from_secs(86_400));
    }

    #[test]
    fn the_printed_configuration_loads_back() {
        let env = Env::from_pairs([
            ("PROJECTOR_QUERY_SOURCE", "snuba"),
            ("PROJECTOR_QUERY_URL", "https://snuba.internal:1218"),
            ("PROJECTOR_SLOTS_LIMIT", "20"),
            ("PROJECTOR_BATCH_DELAY", "1m 30s"),
            ("PROJECTOR_REDIS_URL", "redis://:hunter2@cache:6379/1"),
        ]);
        let config = load(None, &env, &[]).expect("loads");
        let printed = crate::to_toml(&config, false);
        assert!(!printed.contains("hunter2"), "{printed}");
        let secret = crate::to_toml(&config, true);
        let f = file(&secret);
        assert_eq!(load(Some(f.path()), &Env::default(), &[]).expect("printed config loads"), config, "{secret}");
        let defaults = crate::to_toml(&Config::default(), false);
        let f = file(&defaults);
        assert_eq!(load(Some(f.path()), &Env::default(), &[]).expect("defaults load back"), Config::default(), "{defaults}");
    }

    #[test]
    fn a_rate_policy_loads_from_a_list_an_env_string_and_per_referrer_overrides() {
        let f = file(concat!(
            "[rate]\nrates = [\"10/SECOND\", \"5000/HOUR\"]\nmax_delay = \"500ms\"\n",
            "[rate.referrers.\"getsentry.other\"]\nrates = [\"2/s\"]\nmode = \"smooth\"\n",
        ));
        let c = load(Some(f.path()), &Env::default(), &[]).expect("loads");
        assert_eq!(c.rate.rates.iter().map(ToString::to_string).collect::<Vec<_>>(), ["10/s", "5000/h"]);
        let other = c.rate_policy("getsentry.other");
        assert_eq!(other.rates.iter().map(ToString::to_string).collect::<Vec<_>>(), ["2/s"]);
        assert_eq!(other.mode, crate::RateMode::Smooth);
        assert_eq!(other.max_delay, Duration::from_millis(500), "keys a referrer does not override come from [rate]");
        assert_eq!(c.rate_policy("getsentry.get_spike_projections").rates, c.rate.rates);

        let env = Env::from_pairs([("PROJECTOR_RATE_RATES", "20/s,5000/h")]);
        let from_env = load(Some(f.path()), &env, &[]).expect("env loads");
        assert_eq!(from_env.rate.rates.iter().map(ToString::to_string).collect::<Vec<_>>(), ["20/s", "5000/h"]);
        assert_eq!(from_env.rate_policy("getsentry.other").rates.len(), 1, "the override still wins for its referrer");

        let printed = crate::to_toml(&c, true);
        let again = file(&printed);
        assert_eq!(load(Some(again.path()), &Env::default(), &[]).expect("printed config loads"), c, "{printed}");
    }

    #[test]
    fn a_bad_rate_policy_names_its_key() {
        let f = file("[rate]\nrates = [\"10/h\", \"20/s\"]\n[rate.referrers.\"x\"]\nrates = \"0/s\"\nlimit = 3\n");
        let err = load(Some(f.path()), &Env::default(), &[]).expect_err("invalid");
        let mut keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["rate.rates", "rate.referrers.\"x\".limit", "rate.referrers.\"x\".rates"], "{err}");
        assert!(err.to_string().contains("strictly increasing"), "{err}");
        assert!(err.to_string().contains("zero rate"), "{err}");
    }

    #[test]
    fn the_backend_is_chosen_by_one_key_and_impossible_combinations_are_refused() {
        let env =
            Env::from_pairs([("PROJECTOR_BACKEND_KIND", "sqlite"), ("PROJECTOR_BACKEND_DSN", "sqlite:///var/lib/projector/fleet.db")]);
        let c = load(None, &env, &[]).expect("sqlite from the environment");
        assert_eq!(c.backend.kind, Some(BackendKind::Sqlite));
        assert_eq!(c.backend.dsn.as_deref(), Some("sqlite:///var/lib/projector/fleet.db"));
        assert_eq!(c.backend.busy_timeout, std::time::Duration::from_secs(5));
        // One machine, one file: projections go there too unless a sink is chosen.
        assert_eq!(c.sink.kind, SinkKind::Sqlite);
        let env = Env::from_pairs([
            ("PROJECTOR_BACKEND_KIND", "sqlite"),
            ("PROJECTOR_BACKEND_DSN", "sqlite:///var/lib/projector/fleet.db"),
            ("PROJECTOR_SINK_KIND", "redis"),
        ]);
        assert_eq!(load(None, &env, &[]).expect("a chosen sink").sink.kind, SinkKind::Redis);
        // A Redis DSN takes redis.url's place.
        let env = Env::from_pairs([("PROJECTOR_BACKEND_KIND", "redis"), ("PROJECTOR_BACKEND_DSN", "redis://:secret@cache:6379/2")]);
        assert_eq!(load(None, &env, &[]).expect("redis").redis.url, "redis://:secret@cache:6379/2");
        for (pairs, says) in [
            (vec![("PROJECTOR_BACKEND_KIND", "sqlite")], "required when backend.kind = \"sqlite\""),
            (vec![("PROJECTOR_BACKEND_KIND", "sqlite"), ("PROJECTOR_BACKEND_DSN", "sqlite::memory:")], "must name a SQLite file"),
            (vec![("PROJECTOR_BACKEND_KIND", "sqlite"), ("PROJECTOR_BACKEND_DSN", "/var/lib/fleet.db")], "sqlite:///absolute/path.db"),
            (vec![("PROJECTOR_BACKEND_DSN", "sqlite:///x.db")], "set backend.kind"),
            (vec![("PROJECTOR_BACKEND_KIND", "memory"), ("PROJECTOR_BACKEND_DSN", "sqlite:///x.db")], "keeps everything in this process"),
            (vec![("PROJECTOR_BACKEND_KIND", "redis"), ("PROJECTOR_BACKEND_DSN", "sqlite:///x.db")], "must be a Redis URL"),
            (
                vec![
                    ("PROJECTOR_BACKEND_KIND", "redis"),
                    ("PROJECTOR_BACKEND_DSN", "redis://a:6379"),
                    ("PROJECTOR_REDIS_URL", "redis://b:6379"),
                ],
                "two different Redis servers",
            ),
            (vec![("PROJECTOR_BACKEND_KIND", "postgres")], "memory"),
            (vec![("PROJECTOR_SINK_KIND", "sqlite")], "set backend.kind = \"sqlite\" and backend.dsn too"),
        ] {
            let err = load(None, &Env::from_pairs(pairs.clone()), &[]).expect_err(&format!("{pairs:?}"));
            let text = err.to_string();
            assert!(text.contains(says), "{pairs:?}: {text}");
            assert!(!text.contains("secret"), "{text}");
        }
    }

    #[test]
    fn tables_and_lists_are_refused() {
        let f = file("[slots]\nlimit = [1, 2]\n");
        let err = load(Some(f.path()), &Env::default(), &[]).expect_err("list refused");
        assert_eq!(err.problems()[0].key, "slots.limit");
    }

    #[test]
    fn the_example_file_loads_and_lists_every_key() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.example.toml");
        let config = load(Some(&path), &Env::default(), &[]).expect("config.example.toml loads");
        assert_eq!(config, Config::default(), "the example documents the defaults");
        let text = std::fs::read_to_string(&path).expect("read example");
        for key in KEYS {
            let (section, name) = key.name.split_once('.').expect("dotted");
            assert!(text.contains(&format!("[{section}]")), "section {section} missing");
            assert!(text.contains(&format!("{name} =")), "key {} missing from the example", key.name);
        }
    }

    #[test]
    fn the_readme_config_table_is_the_key_table() {
        // The table lives in docs/configuration.md, which the README links to.
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
        let doc = std::fs::read_to_string(&path).expect("read docs/configuration.md");
        let (begin, end) = ("<!-- config-table:begin (generated from config/src/keys.rs) -->\n", "<!-- config-table:end -->");
        let start = doc.find(begin).expect("docs/configuration.md has the config table's begin marker") + begin.len();
        let stop = doc[start..].find(end).expect("docs/configuration.md has the config table's end marker") + start;
        let table = crate::markdown_table();
        if std::env::var_os("UPDATE_README").is_some() {
            std::fs::write(&path, format!("{}{table}{}", &doc[..start], &doc[stop..])).expect("rewrite docs/configuration.md");
            return;
        }
        assert!(
            doc[start..stop] == table,
            "docs/configuration.md's config table differs from config/src/keys.rs: run UPDATE_README=1 cargo test -p projector-config readme"
        );
    }
}
