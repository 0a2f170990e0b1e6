//! Where the job starts from: `--from-savepoint PATH`, else the newest complete checkpoint, else
//! the configured starting offsets. (Each taskmanager still resumes at the Redis fence when it is
//! ahead: the fence records what is actually applied.)

use std::collections::BTreeMap;
use std::path::Path;

use crate::api::RestoreSource;

use super::store::{read_snapshot, Snapshot, SnapshotStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("cannot restore from savepoint: {0}")]
    Savepoint(#[source] StoreError),
    #[error("cannot read the checkpoint directory: {0}")]
    Checkpoints(#[source] StoreError),
    #[error(
        "{source_path} was taken for topic {snapshot_topic:?} with {snapshot_partitions} partitions, \
         but this job reads topic {topic:?} with {partitions} partitions; pass \
         --allow-non-restored-state (savepoint.allowNonRestoredState) to start anyway, restoring \
         only the offsets that still match"
    )]
    Incompatible {
        source_path: String,
        snapshot_topic: String,
        snapshot_partitions: u32,
        topic: String,
        partitions: u32,
    },
}

/// The chosen starting state, before it is checked against the live topic.
#[derive(Debug, Clone)]
pub struct RestorePlan {
    pub source: RestoreSource,
    pub snapshot: Option<Snapshot>,
}

/// Picks the starting state. A savepoint that cannot be read is an error (the user asked for it);
/// corrupt checkpoints are skipped in favour of older complete ones.
pub fn choose(
    from_savepoint: Option<&Path>,
    checkpoints: &SnapshotStore,
) -> Result<RestorePlan, RestoreError> {
    if let Some(path) = from_savepoint {
        let snapshot = read_snapshot(path).map_err(RestoreError::Savepoint)?;
        let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        return Ok(RestorePlan {
            source: RestoreSource::Savepoint {
                path: path.display().to_string(),
                id: snapshot.id,
            },
            snapshot: Some(snapshot),
        });
    }
    match checkpoints.newest().map_err(RestoreError::Checkpoints)? {
        Some((info, snapshot)) => Ok(RestorePlan {
            source: RestoreSource::Checkpoint {
                path: info.path,
                id: info.id,
            },
            snapshot: Some(snapshot),
        }),
        None => Ok(RestorePlan {
            source: RestoreSource::StartingOffsets,
            snapshot: None,
        }),
    }
}

/// The offsets to seed, once the topic's partition count is known.
pub fn restored_offsets(
    plan: &RestorePlan,
    topic: &str,
    partition_count: u32,
    allow_non_restored_state: bool,
) -> Result<BTreeMap<i32, i64>, RestoreError> {
    let Some(snapshot) = &plan.snapshot else {
        return Ok(BTreeMap::new());
    };
    let same_topic = snapshot.topic == topic;
    if same_topic && snapshot.partition_count == partition_count {
        return Ok(snapshot.offsets_map());
    }
    if !allow_non_restored_state {
        let source_path = match &plan.source {
            RestoreSource::Savepoint { path, .. } => format!("savepoint {path}"),
            RestoreSource::Checkpoint { path, .. } => format!("checkpoint {path}"),
            RestoreSource::StartingOffsets => "the restored state".into(),
        };
        return Err(RestoreError::Incompatible {
            source_path,
            snapshot_topic: snapshot.topic.clone(),
            snapshot_partitions: snapshot.partition_count,
            topic: topic.into(),
            partitions: partition_count,
        });
    }
    if !same_topic {
        tracing::warn!(snapshot_topic = %snapshot.topic, topic, "restored state is for another topic: none of it is restored");
        return Ok(BTreeMap::new());
    }
    let kept: BTreeMap<i32, i64> = snapshot
        .offsets_map()
        .into_iter()
        .filter(|(p, _)| *p >= 0 && (*p as i64) < partition_count as i64)
        .collect();
    tracing::warn!(
        snapshot_partitions = snapshot.partition_count,
        partitions = partition_count,
        restored = kept.len(),
        "partition count changed: restoring the offsets of the partitions that still exist"
    );
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SnapshotKind;

    fn store_with(dir: &Path, offsets: &[(i32, i64)]) -> SnapshotStore {
        let store = SnapshotStore::open(dir, SnapshotKind::Checkpoint).expect("open");
        let map: BTreeMap<i32, i64> = offsets.iter().copied().collect();
        store
            .write(&Snapshot::new(
                SnapshotKind::Checkpoint,
                "trace",
                "t",
                2,
                5,
                1,
                &map,
            ))
            .expect("write");
        store
    }

    #[test]
    fn a_savepoint_beats_the_newest_checkpoint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let checkpoints = store_with(&dir.path().join("chk"), &[(0, 5), (1, 5)]);
        let savepoints = store_with(&dir.path().join("sp"), &[(0, 9), (1, 9)]);
        let sp = savepoints.list().expect("list")[0].path.clone();
        let plan = choose(Some(Path::new(&sp)), &checkpoints).expect("restores");
        assert!(matches!(plan.source, RestoreSource::Savepoint { .. }));
        assert_eq!(
            restored_offsets(&plan, "t", 2, false)
                .expect("compatible")
                .get(&0),
            Some(&9)
        );
        let plan = choose(None, &checkpoints).expect("restores");
        assert!(matches!(plan.source, RestoreSource::Checkpoint { .. }));
        assert_eq!(
            restored_offsets(&plan, "t", 2, false)
                .expect("compatible")
                .get(&0),
            Some(&5)
        );
        let empty =
            SnapshotStore::open(dir.path().join("none"), SnapshotKind::Checkpoint).expect("open");
        let plan = choose(None, &empty).expect("restores");
        assert_eq!(plan.source, RestoreSource::StartingOffsets);
        assert!(restored_offsets(&plan, "t", 2, false)
            .expect("nothing")
            .is_empty());
    }

    #[test]
    fn an_unreadable_savepoint_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let checkpoints = store_with(&dir.path().join("chk"), &[(0, 5)]);
        let missing = dir.path().join("nope.json");
        let err = choose(Some(&missing), &checkpoints).expect_err("missing savepoint");
        assert!(err.to_string().contains("nope.json"), "{err}");
    }

    #[test]
    fn another_topic_or_partition_count_needs_allow_non_restored_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let checkpoints = store_with(dir.path(), &[(0, 5), (1, 7)]);
        let plan = choose(None, &checkpoints).expect("restores");
        let err = restored_offsets(&plan, "t", 3, false).expect_err("partition count differs");
        let message = err.to_string();
        assert!(
            message.contains("2 partitions") && message.contains("3 partitions"),
            "{message}"
        );
        assert!(message.contains("--allow-non-restored-state"), "{message}");
        let err = restored_offsets(&plan, "other", 2, false).expect_err("topic differs");
        assert!(err.to_string().contains("\"other\""), "{err}");
        assert_eq!(
            restored_offsets(&plan, "t", 1, true)
                .expect("allowed")
                .len(),
            1
        );
        assert_eq!(
            restored_offsets(&plan, "t", 3, true)
                .expect("allowed")
                .len(),
            2
        );
        assert!(restored_offsets(&plan, "other", 2, true)
            .expect("allowed")
            .is_empty());
    }
}
