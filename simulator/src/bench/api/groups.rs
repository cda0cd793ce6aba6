//! How large the cloud's groups were during a phase: the mean assessments per group commit
//! (`ecs_group_commit_items{work="assessments"}`), from this process's metrics (the cloud runs
//! here), as the difference of two snapshots.

use serde::Serialize;

/// The group work assessments are recorded by (`work` label of `ecs_group_commit_items`).
const RECORD: &str = "assessments";

/// Mean items per group over a stretch of the run; `None` when no group ran in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct GroupSizes {
    /// Assessments recorded per transaction.
    pub assess_record_group_mean: Option<f64>,
}

/// The cloud's metrics now, as Prometheus text.
pub fn snapshot() -> String {
    ecs_cloud::app::metrics_handle().render()
}

impl GroupSizes {
    /// The mean group sizes between two [`snapshot`]s.
    pub fn between(before: &str, after: &str) -> Self {
        Self {
            assess_record_group_mean: mean_between(before, after, RECORD),
        }
    }
}

fn mean_between(before: &str, after: &str, work: &str) -> Option<f64> {
    let (sum_before, count_before) = totals(before, work).unwrap_or((0.0, 0.0));
    let (sum_after, count_after) = totals(after, work)?;
    let groups = count_after - count_before;
    (groups > 0.0).then(|| (sum_after - sum_before) / groups)
}

/// The `_sum` and `_count` of `work`'s group sizes in Prometheus text.
fn totals(text: &str, work: &str) -> Option<(f64, f64)> {
    let value = |suffix: &str| {
        let name = format!("ecs_group_commit_items_{suffix}{{work=\"{work}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(name.as_str()))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    Some((value("sum")?, value("count")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "\
ecs_group_commit_items{work=\"assessments\",quantile=\"0.5\"} 1
ecs_group_commit_items_sum{work=\"assessments\"} 10
ecs_group_commit_items_count{work=\"assessments\"} 10
";
    const AFTER: &str = "\
ecs_group_commit_items_sum{work=\"assessments\"} 110
ecs_group_commit_items_count{work=\"assessments\"} 30
ecs_group_commit_items_sum{work=\"batches\"} 999
ecs_group_commit_items_count{work=\"batches\"} 1
";

    #[test]
    fn the_mean_is_of_the_groups_between_the_snapshots() {
        let sizes = GroupSizes::between(BEFORE, AFTER);
        assert_eq!(sizes.assess_record_group_mean, Some(100.0 / 20.0));
        // Absent before: every group it counts is in the stretch.
        let first = "ecs_group_commit_items_sum{work=\"assessments\"} 40\n\
                     ecs_group_commit_items_count{work=\"assessments\"} 5\n";
        assert_eq!(
            GroupSizes::between("", first).assess_record_group_mean,
            Some(8.0)
        );
        // No group in the stretch, or none at all: no mean.
        assert_eq!(GroupSizes::between(AFTER, AFTER), GroupSizes::default());
        assert_eq!(GroupSizes::between("", ""), GroupSizes::default());
    }
}
