//! The fake's SnQL: Snuba's grammar (`snql.pest`), then Snuba's checks in Snuba's order with
//! Snuba's messages (parse, LIMIT, time range, required columns, entity columns), then the
//! subset of queries the fake can answer. Sources: `snuba/query/snql/parser.py`,
//! `snuba/query/validation/validators.py` and the entity YAML files, revision 61009262d.

use pest::Parser;
use pest::iterators::Pair;

#[derive(pest_derive::Parser)]
#[grammar = "bin/fake_snuba/snql.pest"]
struct Snql;

/// Snuba's `MAX_LIMIT`.
pub const MAX_LIMIT: i64 = 10_000;
/// The LIMIT Snuba sets on a query without one.
pub const DEFAULT_LIMIT: i64 = 1_000;

/// An entity the fake knows: its columns (schema names) and the filters it requires.
pub struct Entity {
    pub name: &'static str,
    pub columns: &'static [&'static str],
    /// `EntityRequiredColumnValidator`: `col = <int>` at the top level.
    pub required: &'static [&'static str],
    pub time_column: &'static str,
}

/// From `snuba/datasets/configuration/{outcomes,outcomes_raw,events}/entities/*.yaml`.
pub const ENTITIES: &[Entity] = &[
    Entity {
        name: "outcomes",
        columns: &["org_id", "project_id", "key_id", "timestamp", "time", "outcome", "reason", "quantity", "category", "times_seen"],
        required: &["org_id"],
        time_column: "timestamp",
    },
    Entity {
        name: "outcomes_raw",
        columns: &["org_id", "project_id", "key_id", "timestamp", "time", "outcome", "reason", "event_id", "quantity", "category"],
        required: &["org_id"],
        time_column: "timestamp",
    },
    Entity {
        name: "events",
        columns: &[
            "project_id",
            "timestamp",
            "time",
            "rtime",
            "event_id",
            "platform",
            "environment",
            "release",
            "dist",
            "user",
            "tags",
            "contexts",
            "transaction_name",
            "trace_id",
            "group_id",
            "message",
            "title",
            "culprit",
            "level",
            "type",
            "received",
        ],
        required: &["project_id"],
        time_column: "timestamp",
    },
];

/// A term the fake can evaluate, or the text of one it cannot.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Column(String),
    /// An integer as Snuba's parser reads it: Python's `int`, so an org id up to u64's range
    /// (and beyond) is a number, never a parse failure.
    Int(i128),
    Str(String),
    Call {
        name: String,
        args: Vec<Expr>,
        alias: Option<String>,
    },
    Other(String),
}

/// One top-level AND condition: `lhs op rhs`.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub lhs: Expr,
    pub op: String,
    pub rhs: Expr,
}

/// A parsed query: what the fake reads of it.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub entity: String,
    pub select: Vec<Expr>,
    pub group_by: Vec<Expr>,
    pub conditions: Vec<Condition>,
    /// The WHERE clause has OR or a parenthesized part: its conditions are not all top-level.
    pub nested_where: bool,
    pub order_by: Vec<(Expr, bool)>,
    pub limit: i64,
    pub offset: i64,
    pub granularity: Option<i64>,
    /// Every column name the query refers to (aliases resolved away).
    pub columns: Vec<String>,
    /// Clauses the fake cannot answer (joins, subqueries, ARRAY JOIN, HAVING, LIMIT BY, TOTALS).
    pub unsupported: Vec<&'static str>,
}

/// Why a query is refused: Snuba's `invalid_query` message, or what the fake itself cannot do.
#[derive(Debug, Clone, PartialEq)]
pub enum Refused {
    Invalid(String),
    FakeCannot(String),
}

/// Parses and checks `text` the way Snuba does before it runs a query, against entities that
/// lack the columns `without` (a Snuba older than the migration that added them).
pub fn parse(text: &str, without: &[String]) -> Result<Query, Refused> {
    let mut pairs = Snql::parse(Rule::query_exp, text).map_err(|e| parse_error(text, &e))?;
    let root = pairs.next().ok_or_else(|| Refused::Invalid("empty parse".into()))?;
    let consumed = root.as_span().end();
    if consumed < text.len() {
        return Err(Refused::Invalid(incomplete(text, consumed)));
    }
    let mut q = Query { limit: DEFAULT_LIMIT, ..Query::default() };
    walk_columns(root.clone(), &mut q.columns);
    let mut limit = None;
    for clause in root.into_inner() {
        match clause.as_rule() {
            Rule::match_clause => read_match(clause, &mut q),
            Rule::select_clause => q.select = exprs(clause, Rule::selected_expression),
            Rule::group_by_clause => q.group_by = exprs(clause, Rule::selected_expression),
            Rule::where_clause => read_where(clause, &mut q),
            Rule::order_by_clause => read_order(clause, &mut q),
            Rule::limit_clause => limit = Some(first_int(clause)),
            Rule::offset_clause => q.offset = first_int(clause),
            Rule::granularity_clause => q.granularity = Some(first_int(clause)),
            Rule::arrayjoin_clause => q.unsupported.push("ARRAY JOIN"),
            Rule::having_clause => q.unsupported.push("HAVING"),
            Rule::limit_by_clause => q.unsupported.push("LIMIT BY"),
            Rule::totals_clause => q.unsupported.push("TOTALS"),
            _ => {}
        }
    }
    // parse_snql_query_initial: the default and the cap.
    match limit {
        None => {}
        Some(l) if l > MAX_LIMIT => return Err(Refused::Invalid("queries cannot have a limit higher than 10000".into())),
        Some(l) => q.limit = l,
    }
    let aliases: Vec<String> = q.select.iter().filter_map(alias).collect();
    q.columns.retain(|c| !aliases.contains(c));
    q.columns.sort();
    q.columns.dedup();
    check(&q, without)?;
    Ok(q)
}

/// The checks after parsing, in Snuba's order.
fn check(q: &Query, without: &[String]) -> Result<(), Refused> {
    let entity =
        ENTITIES.iter().find(|e| e.name == q.entity).ok_or_else(|| Refused::Invalid(format!("'{}' is not a valid EntityKey", q.entity)))?;
    // _replace_time_condition: a >= and a < on the time column with a datetime literal.
    let has = |op: &str| {
        q.conditions.iter().any(|c| c.op == op && c.lhs == Expr::Column(entity.time_column.into()) && datetime(&c.rhs).is_some())
    };
    let example = format!("Example: {} >= toDateTime('2023-05-16 00:00')", entity.time_column);
    if !has(">=") {
        return Err(Refused::Invalid(format!(
            "Missing >= condition with a datetime literal on column {} for entity {}. {example}",
            entity.time_column, entity.name
        )));
    }
    if !has("<") {
        return Err(Refused::Invalid(format!(
            "Missing < condition with a datetime literal on column {} for entity {}. {}",
            entity.time_column,
            entity.name,
            example.replace(">=", "<")
        )));
    }
    // EntityRequiredColumnValidator, then EntityContainsColumnsValidator: entity validators, whose
    // messages Snuba prefixes with "Validation failed for entity <name>: "
    // (`_validate_entities_with_query`, snuba/datasets/plans/entity_validation.py).
    let missing: Vec<&str> = entity.required.iter().copied().filter(|col| int_condition(q, col, "=").is_none()).collect();
    if !missing.is_empty() {
        return Err(Refused::Invalid(format!(
            "Validation failed for entity {}: missing required conditions for {}",
            entity.name,
            missing.join(", ")
        )));
    }
    let unknown: Vec<&str> =
        q.columns.iter().filter(|c| !entity.columns.contains(&c.as_str()) || without.contains(c)).map(String::as_str).collect();
    if !unknown.is_empty() {
        return Err(Refused::Invalid(format!(
            "Validation failed for entity {}: Tag keys ({}) not resolved",
            entity.name,
            unknown.join(", ")
        )));
    }
    Ok(())
}

/// The integer of a top-level `col <op> <int>` condition.
pub fn int_condition(q: &Query, col: &str, op: &str) -> Option<i128> {
    q.conditions.iter().find_map(|c| match (&c.lhs, &c.rhs) {
        (Expr::Column(name), Expr::Int(v)) if name == col && c.op == op => Some(*v),
        _ => None,
    })
}

/// The datetime string of `toDateTime('…')`.
pub fn datetime(e: &Expr) -> Option<&str> {
    match e {
        Expr::Call { name, args, .. } if name == "toDateTime" => match args.as_slice() {
            [Expr::Str(s)] => Some(s),
            _ => None,
        },
        _ => None,
    }
}

fn alias(e: &Expr) -> Option<String> {
    match e {
        Expr::Call { alias, .. } => alias.clone(),
        _ => None,
    }
}

/// Parsimonious's messages: a rule that matched nothing, or a query left unread.
fn parse_error(text: &str, e: &pest::error::Error<Rule>) -> Refused {
    let pos = match e.location {
        pest::error::InputLocation::Pos(p) => p,
        pest::error::InputLocation::Span((p, _)) => p,
    };
    // query_exp matches any text that starts with a MATCH and a SELECT; anything short of that
    // is parsimonious's ParseError on the first rule.
    if pos == 0 || !text.contains("SELECT") {
        let at: String = text.chars().take(20).collect();
        return Refused::Invalid(format!("Rule 'query_exp' didn't match at '{at}' (line 1, column 1)."));
    }
    Refused::Invalid(incomplete(text, pos))
}

/// `IncompleteParseError` as `parse_snql_query_initial` words it.
fn incomplete(text: &str, pos: usize) -> String {
    let line_no = text[..pos].matches('\n').count() + 1;
    let line_start = text[..pos].rfind('\n').map_or(0, |i| i + 1);
    let line: Vec<char> = text[line_start..].lines().next().unwrap_or("").chars().collect();
    let idx = text[line_start..pos].chars().count() + 1;
    let prefix: String = line[idx.saturating_sub(3).min(line.len())..idx.min(line.len())].iter().collect();
    let suffix: String = line[idx.min(line.len())..(idx + 10).min(line.len())].iter().collect();
    format!("Parsing error on line {line_no} at '{prefix}{suffix}'")
}

fn first_int(clause: Pair<Rule>) -> i64 {
    clause.into_inner().find(|p| p.as_rule() == Rule::integer_literal).and_then(|p| p.as_str().parse().ok()).unwrap_or(0)
}

fn read_match(clause: Pair<Rule>, q: &mut Query) {
    for p in clause.into_inner() {
        match p.as_rule() {
            Rule::entity_single => {
                q.entity = p.into_inner().find(|x| x.as_rule() == Rule::entity_name).map(|x| x.as_str().to_owned()).unwrap_or_default()
            }
            Rule::relationships => q.unsupported.push("joins"),
            Rule::subquery => q.unsupported.push("subqueries"),
            Rule::storage_single => q.unsupported.push("STORAGE()"),
            _ => {}
        }
    }
}

fn exprs(clause: Pair<Rule>, rule: Rule) -> Vec<Expr> {
    clause.into_inner().flat_map(|p| p.into_inner()).flat_map(|p| collect(p, rule)).collect()
}

/// Every descendant of `pair` (itself included) of kind `rule`, read as an expression.
fn collect(pair: Pair<Rule>, rule: Rule) -> Vec<Expr> {
    if pair.as_rule() == rule {
        return vec![expr(pair)];
    }
    pair.into_inner().flat_map(|p| collect(p, rule)).collect()
}

/// An expression node (selected expression, arithmetic, term) to what the fake can evaluate.
fn expr(pair: Pair<Rule>) -> Expr {
    let text = pair.as_str().trim().to_owned();
    let inner: Vec<Pair<Rule>> = pair.clone().into_inner().filter(|p| p.as_rule() != Rule::space).collect();
    match pair.as_rule() {
        Rule::selected_expression | Rule::low_pri_arithmetic | Rule::high_pri_arithmetic | Rule::arithmetic_term => {
            match inner.as_slice() {
                [one] => expr(one.clone()),
                _ => Expr::Other(text),
            }
        }
        Rule::aliased_column_name => {
            Expr::Call { name: "identity".into(), args: vec![Expr::Column(first_text(&inner))], alias: alias_of(&inner) }
        }
        Rule::function_call => {
            let name = first_text(&inner);
            let args = inner
                .iter()
                .find(|p| p.as_rule() == Rule::parameters_list)
                .map(|list| {
                    list.clone()
                        .into_inner()
                        .map(|p| {
                            let param = if p.as_rule() == Rule::parameter { p.into_inner().next() } else { Some(p) };
                            param.map(|x| expr(x)).unwrap_or(Expr::Other(String::new()))
                        })
                        .collect()
                })
                .unwrap_or_default();
            Expr::Call { name, args, alias: alias_of(&inner) }
        }
        Rule::param_expression => match inner.as_slice() {
            [one] => expr(one.clone()),
            _ => Expr::Other(text),
        },
        Rule::simple_term => match inner.first() {
            Some(p) => expr(p.clone()),
            None => Expr::Other(text),
        },
        Rule::column_name => Expr::Column(text),
        Rule::numeric_literal => text.parse().map(Expr::Int).unwrap_or(Expr::Other(text)),
        Rule::quoted_literal => Expr::Str(text.trim_matches('\'').replace("\\'", "'")),
        _ => Expr::Other(text),
    }
}

fn first_text(inner: &[Pair<Rule>]) -> String {
    inner.first().map(|p| p.as_str().to_owned()).unwrap_or_default()
}

fn alias_of(inner: &[Pair<Rule>]) -> Option<String> {
    inner
        .iter()
        .find(|p| matches!(p.as_rule(), Rule::alias_literal | Rule::quoted_alias_literal))
        .map(|p| p.as_str().trim_matches('`').to_owned())
}

fn read_where(clause: Pair<Rule>, q: &mut Query) {
    let Some(or) = clause.into_inner().find(|p| p.as_rule() == Rule::or_expression) else { return };
    let parts: Vec<Pair<Rule>> = or.into_inner().filter(|p| p.as_rule() != Rule::space).collect();
    if parts.len() != 1 {
        q.nested_where = true;
    }
    for part in parts {
        for condition in descendants(part, Rule::condition) {
            let Some(c) = condition.into_inner().next() else { continue };
            match c.as_rule() {
                Rule::main_condition => {
                    let inner: Vec<Pair<Rule>> = c.into_inner().filter(|p| p.as_rule() != Rule::space).collect();
                    if let [lhs, op, rhs] = inner.as_slice() {
                        q.conditions.push(Condition { lhs: expr(lhs.clone()), op: op.as_str().to_owned(), rhs: expr(rhs.clone()) });
                    }
                }
                _ => q.nested_where = true,
            }
        }
    }
}

/// Top-level conditions only: an and_expression's own conditions and its and_tuples'.
fn descendants(pair: Pair<Rule>, rule: Rule) -> Vec<Pair<Rule>> {
    let mut out = Vec::new();
    for p in pair.into_inner() {
        if p.as_rule() == rule {
            out.push(p);
        } else if p.as_rule() == Rule::and_tuple {
            out.extend(p.into_inner().filter(|x| x.as_rule() == rule));
        }
    }
    out
}

fn read_order(clause: Pair<Rule>, q: &mut Query) {
    let Some(list) = clause.into_inner().find(|p| p.as_rule() == Rule::order_list) else { return };
    let mut pending: Option<Expr> = None;
    let visit = |p: Pair<Rule>, q: &mut Query, pending: &mut Option<Expr>| match p.as_rule() {
        Rule::low_pri_arithmetic => *pending = Some(expr(p)),
        Rule::direction => {
            if let Some(e) = pending.take() {
                q.order_by.push((e, p.as_str() == "ASC"));
            }
        }
        _ => {}
    };
    for p in list.into_inner() {
        if p.as_rule() == Rule::order_columns {
            for x in p.into_inner() {
                visit(x, q, &mut pending);
            }
        } else {
            visit(p, q, &mut pending);
        }
    }
}

/// Every column name under `pair`, for the entity's column check.
fn walk_columns(pair: Pair<Rule>, out: &mut Vec<String>) {
    match pair.as_rule() {
        // Entity names, aliases and function names are not columns.
        Rule::match_clause | Rule::alias_literal | Rule::quoted_alias_literal | Rule::function_name => {}
        Rule::column_name => out.push(pair.as_str().to_owned()),
        _ => {
            for p in pair.into_inner() {
                walk_columns(p, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "MATCH (outcomes) SELECT sum(quantity) AS accepted BY project_id, time WHERE org_id = 7 \
        AND project_id IN tuple(701, 702) AND outcome = 0 AND category IN tuple(0, 1, 3) \
        AND timestamp >= toDateTime('2026-11-01T13:00:00') AND timestamp < toDateTime('2026-11-22T13:00:00') \
        ORDER BY project_id ASC, time ASC LIMIT 9576 OFFSET 0 GRANULARITY 3600";

    #[test]
    fn projectors_query_parses_with_its_parts() {
        let q = parse(GOOD, &[]).expect("valid");
        assert_eq!(q.entity, "outcomes");
        assert_eq!((q.limit, q.offset, q.granularity), (9576, 0, Some(3600)));
        assert_eq!(int_condition(&q, "org_id", "="), Some(7));
        assert_eq!(q.order_by.len(), 2);
        assert!(matches!(&q.select[0], Expr::Call { name, alias: Some(a), .. } if name == "sum" && a == "accepted"));
    }

    fn refused(text: &str) -> String {
        match parse(text, &[]) {
            Err(Refused::Invalid(m)) => m,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn each_rule_refuses_with_snubas_message() {
        assert_eq!(refused("SELECT 1"), "Rule 'query_exp' didn't match at 'SELECT 1' (line 1, column 1).");
        assert!(refused(&GOOD.replace("GRANULARITY 3600", "GRANULARITY x")).starts_with("Parsing error on line 1 at '"));
        assert_eq!(refused(&GOOD.replace("LIMIT 9576", "LIMIT 10001")), "queries cannot have a limit higher than 10000");
        assert!(
            refused(&GOOD.replace("org_id = 7 AND ", ""))
                .starts_with("Validation failed for entity outcomes: missing required conditions for org_id")
        );
        // Python's int: the largest u64 is an org id like any other.
        let big = parse(&GOOD.replace("org_id = 7", "org_id = 18446744073709551615"), &[]).expect("valid");
        assert_eq!(int_condition(&big, "org_id", "="), Some(i128::from(u64::MAX)));
        let no_start = GOOD.replace("AND timestamp >= toDateTime('2026-11-01T13:00:00') ", "");
        assert!(refused(&no_start).starts_with("Missing >= condition with a datetime literal on column timestamp for entity outcomes"));
        let no_end = GOOD.replace("AND timestamp < toDateTime('2026-11-22T13:00:00') ", "");
        assert!(refused(&no_end).starts_with("Missing < condition"));
        assert_eq!(
            refused(&GOOD.replace("sum(quantity)", "sum(times)")),
            "Validation failed for entity outcomes: Tag keys (times) not resolved"
        );
        assert_eq!(
            refused(&GOOD.replace("MATCH (outcomes)", "MATCH (events)")),
            "Validation failed for entity events: missing required conditions for project_id"
        );
        assert_eq!(refused(&GOOD.replace("MATCH (outcomes)", "MATCH (nothing)")), "'nothing' is not a valid EntityKey");
        assert_eq!(parse(&GOOD.replace(" LIMIT 9576 OFFSET 0", ""), &[]).expect("valid").limit, DEFAULT_LIMIT);
        let older = parse(GOOD, &["category".into(), "quantity".into()]);
        assert_eq!(
            older.err(),
            Some(Refused::Invalid("Validation failed for entity outcomes: Tag keys (category, quantity) not resolved".into()))
        );
    }
}
