//! Folds an org's rows into projections as pages come in: rows arrive ordered by project then
//! hour, so a project is complete when the next one starts, and a job holds one page and the
//! finished projections, never the org's whole history.

use std::collections::BTreeSet;

use projector_shared::ProjectId;
use projector_shared::projection::{Projection, project};

use crate::error::Error;
use crate::query::Row;

/// The fold of one org's window `[start_hour, start_hour + hours)`.
#[derive(Debug)]
pub struct Fold {
    start_hour: i64,
    hours: usize,
    /// The project being read and its counts so far.
    current: Option<(ProjectId, Vec<u64>)>,
    /// Projects of the current group already finished (rows for them again mean disorder).
    done_in_group: BTreeSet<ProjectId>,
    finished: Vec<(ProjectId, Projection)>,
    /// The last row seen, to check the order.
    last: Option<(ProjectId, i64)>,
}

impl Fold {
    pub fn new(start_hour: i64, hours: usize) -> Self {
        Fold { start_hour, hours, current: None, done_in_group: BTreeSet::new(), finished: Vec::new(), last: None }
    }

    /// Adds a page's rows. `group` is the projects the page was asked for (empty: any).
    pub fn add(&mut self, rows: &[Row], group: &[ProjectId]) -> Result<(), Error> {
        for row in rows {
            if self.last.is_some_and(|last| (row.project_id, row.hour) <= last) {
                return Err(Error::Incomplete {
                    detail: format!(
                        "rows out of order or repeated at project {} hour {} (did the data change between pages?)",
                        row.project_id.0, row.hour
                    ),
                });
            }
            if !group.is_empty() && !group.contains(&row.project_id) {
                return Err(Error::QueryMalformed {
                    reason: format!("a row for project {}, which the query did not ask for", row.project_id.0),
                    sample: String::new(),
                });
            }
            self.last = Some((row.project_id, row.hour));
            if self.current.as_ref().is_none_or(|(p, _)| *p != row.project_id) {
                self.finish_current();
                self.current = Some((row.project_id, vec![0; self.hours]));
            }
            let offset = usize::try_from(row.hour - self.start_hour).ok().filter(|o| *o < self.hours);
            let (Some(offset), Some((_, counts))) = (offset, self.current.as_mut()) else {
                return Err(Error::QueryMalformed { reason: format!("row hour {} outside the window", row.hour), sample: String::new() });
            };
            counts[offset] = counts[offset].saturating_add(row.count);
        }
        Ok(())
    }

    fn finish_current(&mut self) {
        if let Some((id, counts)) = self.current.take() {
            self.done_in_group.insert(id);
            self.finished.push((id, project(&counts)));
        }
    }

    /// Ends a group: its last project is complete, and its projects with no rows (no accepted
    /// events in the window) are projected from zeros.
    pub fn end_group(&mut self, group: &[ProjectId]) {
        self.finish_current();
        for p in group {
            if !self.done_in_group.contains(p) {
                self.done_in_group.insert(*p);
                self.finished.push((*p, project(&vec![0; self.hours])));
            }
        }
        self.done_in_group.clear();
        self.last = None;
    }

    /// Every project's projection, in the order they were read.
    pub fn into_projections(mut self) -> Vec<(ProjectId, Projection)> {
        self.finish_current();
        self.finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(p: u64, hour: i64, count: u64) -> Row {
        Row { project_id: ProjectId(p), hour, count }
    }

    #[test]
    fn pages_split_anywhere_fold_to_the_same_projections() {
        let rows: Vec<Row> = (1..=3).flat_map(|p| (0..10).map(move |h| row(p, 100 + h, p * 10 + h as u64))).collect();
        let whole = {
            let mut f = Fold::new(100, 10);
            f.add(&rows, &[]).expect("ordered");
            f.end_group(&[]);
            f.into_projections()
        };
        for cut in [1, 7, 10, 11, 29] {
            let mut f = Fold::new(100, 10);
            f.add(&rows[..cut], &[]).expect("ordered");
            f.add(&rows[cut..], &[]).expect("ordered");
            f.end_group(&[]);
            assert_eq!(f.into_projections(), whole, "cut at {cut}");
        }
        let expected: Vec<u64> = (0..10).map(|h| 20 + h).collect();
        assert_eq!(whole[1], (ProjectId(2), project(&expected)));
    }

    #[test]
    fn a_project_without_rows_is_projected_from_zeros_and_disorder_is_refused() {
        let mut f = Fold::new(0, 4);
        f.add(&[row(5, 0, 3)], &[ProjectId(5), ProjectId(6)]).expect("ordered");
        f.end_group(&[ProjectId(5), ProjectId(6)]);
        let p = f.into_projections();
        assert_eq!(p.iter().map(|(id, _)| id.0).collect::<Vec<_>>(), vec![5, 6]);
        assert_eq!(p[1].1, project(&[0, 0, 0, 0]));
        let mut f = Fold::new(0, 4);
        assert!(matches!(f.add(&[row(5, 1, 3), row(5, 1, 3)], &[]), Err(Error::Incomplete { .. })), "a repeated hour");
        let mut f = Fold::new(0, 4);
        assert!(matches!(f.add(&[row(6, 1, 3), row(5, 2, 3)], &[]), Err(Error::Incomplete { .. })), "projects out of order");
        let mut f = Fold::new(0, 4);
        assert!(matches!(f.add(&[row(9, 1, 3)], &[ProjectId(5)]), Err(Error::QueryMalformed { .. })), "a project not asked for");
    }
}
