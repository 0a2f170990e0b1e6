//! What the dashboard shows over time, kept by the jobmanager from the progress reports it
//! already receives: a ring buffer of throughput and lag samples (15 minutes), dead-letter
//! counts for the whole job, and a short log of recent problems. Pure: the sampler task feeds it
//! the coordinator's view and a wall-clock time.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

use crate::api::{PartitionError, PartitionProgress, PartitionStatus};

/// How far back the throughput chart reaches.
pub const WINDOW_MS: u64 = 15 * 60 * 1000;
/// Problems kept (newest first).
pub const MAX_PROBLEMS: usize = 50;

/// One point of the throughput chart.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    pub at_ms: u64,
    pub events_per_second: f64,
    /// Sum of the known per-partition lags.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
}

/// One entry of the "recent problems" list.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    pub at_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// `warning` (something is wrong) or `info` (it recovered).
    pub severity: &'static str,
    /// `redis`, `kafka`, `dlq`, … (a partition error's source).
    pub source: String,
    pub message: String,
}

/// Dead-lettered records of the whole job since the jobmanager started.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterTally {
    pub total: u64,
    pub by_kind: BTreeMap<String, u64>,
}

/// What was last seen of one partition's reports.
#[derive(Debug, Clone, Default)]
struct Seen {
    epoch: u64,
    retrying: bool,
    last_error_at: Option<u64>,
    dead_lettered: BTreeMap<String, u64>,
}

/// The dashboard's memory.
#[derive(Debug, Default)]
pub struct Activity {
    samples: VecDeque<Sample>,
    problems: VecDeque<Problem>,
    seen: BTreeMap<i32, Seen>,
    /// Dead-letter counts of owners that no longer report (an owner's counts start at zero).
    banked: BTreeMap<String, u64>,
}

impl Activity {
    /// Takes one sample and notes what changed since the last one.
    pub fn observe(
        &mut self,
        now_ms: u64,
        partitions: &[PartitionStatus],
        reports: &BTreeMap<i32, PartitionProgress>,
    ) {
        let lags: Vec<i64> = partitions.iter().filter_map(|p| p.lag).collect();
        self.samples.push_back(Sample {
            at_ms: now_ms,
            events_per_second: partitions.iter().map(|p| p.events_per_second).sum(),
            lag: (!lags.is_empty()).then(|| lags.iter().sum()),
        });
        while self
            .samples
            .front()
            .is_some_and(|s| s.at_ms + WINDOW_MS < now_ms)
        {
            self.samples.pop_front();
        }
        let owners: BTreeMap<i32, &str> = partitions
            .iter()
            .filter_map(|p| Some((p.partition, p.owner.as_deref()?)))
            .collect();
        for (partition, report) in reports {
            let owner = owners.get(partition).copied();
            self.observe_partition(now_ms, *partition, owner, report);
        }
    }

    fn observe_partition(
        &mut self,
        now_ms: u64,
        partition: i32,
        owner: Option<&str>,
        report: &PartitionProgress,
    ) {
        let seen = self.seen.entry(partition).or_default();
        let counts_went_back = report
            .dead_lettered
            .iter()
            .any(|(kind, n)| seen.dead_lettered.get(kind).is_some_and(|old| n < old))
            || seen
                .dead_lettered
                .keys()
                .any(|kind| !report.dead_lettered.contains_key(kind));
        if report.epoch != seen.epoch || counts_went_back {
            // A new owner (or a restarted one) counts from zero: keep what the old one counted.
            for (kind, n) in std::mem::take(&mut seen.dead_lettered) {
                *self.banked.entry(kind).or_insert(0) += n;
            }
            seen.epoch = report.epoch;
        }
        seen.dead_lettered = report.dead_lettered.clone();
        let mut noted = Vec::new();
        let new_error = report
            .last_error
            .as_ref()
            .filter(|e| seen.last_error_at != Some(e.at_ms));
        if let Some(error) = new_error {
            seen.last_error_at = Some(error.at_ms);
            noted.push(problem_from_error(partition, owner, error));
        }
        if report.retrying != seen.retrying {
            seen.retrying = report.retrying;
            let (severity, message) = if report.retrying {
                (
                    "warning",
                    "paused: retrying its batch (Redis or the broker unavailable)",
                )
            } else {
                ("info", "resumed: the retried batch went through")
            };
            noted.push(Problem {
                at_ms: now_ms,
                partition: Some(partition),
                owner: owner.map(str::to_string),
                severity,
                source: "retry".into(),
                message: message.into(),
            });
        }
        // Rewinds (a Redis that lost acknowledged writes) are reported here the same way once
        // progress carries them: compare the report's counter with `seen` and push a Problem.
        for problem in noted {
            self.push_problem(problem);
        }
    }

    fn push_problem(&mut self, problem: Problem) {
        self.problems.push_front(problem);
        self.problems.truncate(MAX_PROBLEMS);
    }

    /// The chart's points, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.iter().cloned().collect()
    }

    /// Newest first.
    pub fn problems(&self) -> Vec<Problem> {
        self.problems.iter().cloned().collect()
    }

    pub fn dead_letters(&self) -> DeadLetterTally {
        let mut by_kind = self.banked.clone();
        for seen in self.seen.values() {
            for (kind, n) in &seen.dead_lettered {
                *by_kind.entry(kind.clone()).or_insert(0) += n;
            }
        }
        DeadLetterTally {
            total: by_kind.values().sum(),
            by_kind,
        }
    }
}

fn problem_from_error(partition: i32, owner: Option<&str>, error: &PartitionError) -> Problem {
    Problem {
        at_ms: error.at_ms,
        partition: Some(partition),
        owner: owner.map(str::to_string),
        severity: "warning",
        source: error.source.clone(),
        message: format!("{}: {}", error.kind, error.message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(partition: i32, owner: &str, eps: f64, lag: i64) -> PartitionStatus {
        PartitionStatus {
            partition,
            owner: Some(owner.into()),
            lag: Some(lag),
            events_per_second: eps,
            ..Default::default()
        }
    }

    fn report(partition: i32, epoch: u64, dead: &[(&str, u64)]) -> PartitionProgress {
        PartitionProgress {
            partition,
            epoch,
            dead_lettered: dead.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn samples_cover_the_last_15_minutes_and_sum_partitions() {
        let mut activity = Activity::default();
        let partitions = [status(0, "a", 10.0, 3), status(1, "b", 5.5, 4)];
        for i in 0..1000u64 {
            activity.observe(i * 2000, &partitions, &BTreeMap::new());
        }
        let samples = activity.samples();
        assert_eq!(
            samples.len(),
            451,
            "15 min of 2 s samples, both ends included"
        );
        let last = samples.last().expect("a sample");
        assert_eq!(last.at_ms, 999 * 2000);
        assert_eq!(last.events_per_second, 15.5);
        assert_eq!(last.lag, Some(7));
        assert_eq!(samples[0].at_ms, 999 * 2000 - WINDOW_MS);
    }

    #[test]
    fn dead_letters_survive_owner_changes() {
        let mut activity = Activity::default();
        let partitions = [status(0, "a", 0.0, 0)];
        let observe = |activity: &mut Activity, r: PartitionProgress| {
            activity.observe(0, &partitions, &BTreeMap::from([(0, r)]));
        };
        observe(&mut activity, report(0, 1, &[("invalid_json", 2)]));
        observe(
            &mut activity,
            report(0, 1, &[("invalid_json", 3), ("missing_ids", 1)]),
        );
        // A new owner (epoch 2) starts counting from zero.
        observe(&mut activity, report(0, 2, &[("invalid_json", 1)]));
        let tally = activity.dead_letters();
        assert_eq!(tally.by_kind["invalid_json"], 4);
        assert_eq!(tally.by_kind["missing_ids"], 1);
        assert_eq!(tally.total, 5);
    }

    #[test]
    fn retry_transitions_and_new_errors_become_problems_once() {
        let mut activity = Activity::default();
        let partitions = [status(3, "tm-1", 0.0, 0)];
        let mut r = report(3, 1, &[]);
        r.retrying = true;
        r.last_error = Some(PartitionError {
            at_ms: 42,
            source: "redis".into(),
            kind: "unavailable".into(),
            message: "connection refused".into(),
        });
        let reports = BTreeMap::from([(3, r.clone())]);
        activity.observe(100, &partitions, &reports);
        activity.observe(200, &partitions, &reports);
        let problems = activity.problems();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems.iter().any(|p| p.source == "redis"
            && p.message == "unavailable: connection refused"
            && p.owner.as_deref() == Some("tm-1")));
        assert!(problems
            .iter()
            .any(|p| p.source == "retry" && p.severity == "warning"));
        r.retrying = false;
        activity.observe(300, &partitions, &BTreeMap::from([(3, r)]));
        let newest = &activity.problems()[0];
        assert_eq!((newest.severity, newest.partition), ("info", Some(3)));
    }
}
