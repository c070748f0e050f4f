//! The SnQL text of one page of accepted outcomes.
//! Every clause is checked against Snuba's grammar and entity files (docs/snuba.md); the datasets
//! whose entity can answer it are `projector_config::DATASETS_WITH_OUTCOMES`.

use std::fmt::Write;

use crate::query::PageRequest;

/// `outcome = 0`: accepted (Relay's `Outcome::Accepted`; Snuba's outcomes processor stores it as 0).
pub const ACCEPTED: u8 = 0;

/// The alias of the summed quantity in each row.
pub const ACCEPTED_ALIAS: &str = "accepted";

/// The SnQL of one page: accepted quantity per project and hour, ordered so pages follow each other.
pub fn page(dataset: &str, categories: &[u8], request: &PageRequest) -> String {
    let mut q = format!(
        "MATCH ({dataset}) SELECT sum(quantity) AS {ACCEPTED_ALIAS} BY project_id, time WHERE org_id = {org}",
        org = request.org_id.0
    );
    if !request.project_ids.is_empty() {
        q.push_str(" AND project_id IN tuple(");
        for (i, p) in request.project_ids.iter().enumerate() {
            let _ = write!(q, "{}{}", if i > 0 { ", " } else { "" }, p.0);
        }
        q.push(')');
    }
    let _ = write!(q, " AND outcome = {ACCEPTED}");
    match categories {
        [] => {}
        [one] => {
            let _ = write!(q, " AND category = {one}");
        }
        many => {
            q.push_str(" AND category IN tuple(");
            for (i, c) in many.iter().enumerate() {
                let _ = write!(q, "{}{c}", if i > 0 { ", " } else { "" });
            }
            q.push(')');
        }
    }
    let _ = write!(
        q,
        " AND timestamp >= toDateTime('{start}') AND timestamp < toDateTime('{end}') \
         ORDER BY project_id ASC, time ASC LIMIT {limit} OFFSET {offset} GRANULARITY 3600",
        start = request.start.format("%Y-%m-%dT%H:%M:%S"),
        end = request.end.format("%Y-%m-%dT%H:%M:%S"),
        limit = request.limit,
        offset = request.offset,
    );
    q
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use projector_shared::{OrgId, ProjectId};

    #[test]
    fn the_query_names_org_projects_outcome_categories_window_and_page() {
        let request = PageRequest {
            org_id: OrgId(7),
            project_ids: vec![ProjectId(701), ProjectId(702)],
            start: Utc.with_ymd_and_hms(2026, 11, 1, 13, 0, 0).single().expect("valid"),
            end: Utc.with_ymd_and_hms(2026, 11, 22, 13, 0, 0).single().expect("valid"),
            limit: 9_576,
            offset: 0,
        };
        let q = page("outcomes", &[0, 1, 3], &request);
        assert_eq!(
            q,
            "MATCH (outcomes) SELECT sum(quantity) AS accepted BY project_id, time WHERE org_id = 7 \
             AND project_id IN tuple(701, 702) AND outcome = 0 AND category IN tuple(0, 1, 3) \
             AND timestamp >= toDateTime('2026-11-01T13:00:00') AND timestamp < toDateTime('2026-11-22T13:00:00') \
             ORDER BY project_id ASC, time ASC LIMIT 9576 OFFSET 0 GRANULARITY 3600"
        );
        let one = page("outcomes", &[1], &PageRequest { project_ids: vec![], offset: 10_000, ..request });
        assert!(one.contains("WHERE org_id = 7 AND outcome = 0 AND category = 1 AND timestamp"), "{one}");
        assert!(one.contains("LIMIT 9576 OFFSET 10000"), "{one}");
    }
}
