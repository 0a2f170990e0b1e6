//! Checkpoint and savepoint files on the state volume.
//!
//! One JSON file per snapshot, carrying a CRC-32 of its own canonical form. A file is written as
//! `.<name>.tmp`, fsynced, renamed into place and the directory fsynced, so a crash leaves either
//! the old set or the new file complete. `MANIFEST.json` then indexes the complete files for people
//! and tools. Loading trusts only the files themselves: each is verified against its checksum and
//! a torn or corrupt one is skipped with a warning, never loaded.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::api::{SnapshotInfo, SnapshotKind};

pub const FORMAT_VERSION: u32 = 1;
const MANIFEST: &str = "MANIFEST.json";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a snapshot file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// One partition's next offset to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PartitionOffset {
    pub partition: i32,
    pub offset: i64,
}

/// The content of a checkpoint or savepoint file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Snapshot {
    pub format: u32,
    pub kind: SnapshotKind,
    /// Sequence number within its directory (assigned on write).
    pub id: u64,
    pub job: String,
    pub topic: String,
    pub partition_count: u32,
    /// Highest assignment generation handed out when it was taken.
    pub generation: u64,
    pub created_at_ms: u64,
    pub offsets: Vec<PartitionOffset>,
    /// The job's event-time watermark when it was taken (epoch ms); a restore never starts the
    /// job watermark below it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark_ms: Option<i64>,
    /// CRC-32 (hex) of this document serialised with an empty `checksum`.
    #[serde(default)]
    pub checksum: String,
}

impl Snapshot {
    pub fn new(
        kind: SnapshotKind,
        job: &str,
        topic: &str,
        partition_count: u32,
        generation: u64,
        created_at_ms: u64,
        offsets: &BTreeMap<i32, i64>,
    ) -> Self {
        Self {
            format: FORMAT_VERSION,
            kind,
            id: 0,
            job: job.into(),
            topic: topic.into(),
            partition_count,
            generation,
            created_at_ms,
            offsets: offsets
                .iter()
                .map(|(p, o)| PartitionOffset {
                    partition: *p,
                    offset: *o,
                })
                .collect(),
            watermark_ms: None,
            checksum: String::new(),
        }
    }

    /// The same snapshot recording the job's event-time watermark.
    pub fn with_watermark(mut self, watermark_ms: Option<i64>) -> Self {
        self.watermark_ms = watermark_ms;
        self
    }

    pub fn offsets_map(&self) -> BTreeMap<i32, i64> {
        self.offsets
            .iter()
            .map(|o| (o.partition, o.offset))
            .collect()
    }

    fn canonical_checksum(&self) -> String {
        let mut unsigned = self.clone();
        unsigned.checksum.clear();
        let bytes = serde_json::to_vec_pretty(&unsigned).unwrap_or_default();
        format!("{:08x}", crc32fast::hash(&bytes))
    }

    /// The bytes written to disk (checksum filled in).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut signed = self.clone();
        signed.checksum = self.canonical_checksum();
        let mut bytes = serde_json::to_vec_pretty(&signed).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }

    /// Parses and verifies a file's bytes.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Self, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let snapshot: Snapshot =
            serde_json::from_slice(bytes).map_err(|e| corrupt(format!("unreadable JSON ({e})")))?;
        if snapshot.format != FORMAT_VERSION {
            return Err(corrupt(format!("unsupported format {}", snapshot.format)));
        }
        let expected = snapshot.canonical_checksum();
        if snapshot.checksum != expected {
            return Err(corrupt(format!(
                "checksum mismatch (file says {:?}, content is {expected})",
                snapshot.checksum
            )));
        }
        Ok(snapshot)
    }
}

/// Reads and verifies one snapshot file (e.g. `--from-savepoint PATH`).
pub fn read_snapshot(path: &Path) -> Result<Snapshot, StoreError> {
    let bytes = fs::read(path).map_err(io("read", path))?;
    Snapshot::from_bytes(path, &bytes)
}

/// How many savepoints to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_count: usize,
    /// `None`: no age limit.
    pub max_age: Option<Duration>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    format: u32,
    kind: SnapshotKind,
    /// Complete snapshots, newest first.
    snapshots: Vec<SnapshotInfo>,
}

/// A directory of checkpoints or savepoints.
#[derive(Debug)]
pub struct SnapshotStore {
    dir: PathBuf,
    kind: SnapshotKind,
    /// Serialises writers (periodic and triggered snapshots run concurrently).
    lock: Mutex<()>,
}

impl SnapshotStore {
    pub fn open(dir: impl Into<PathBuf>, kind: SnapshotKind) -> Result<Self, StoreError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io("create directory", &dir))?;
        let dir = dir.canonicalize().map_err(io("resolve", &dir))?;
        Ok(Self {
            dir,
            kind,
            lock: Mutex::new(()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn prefix(&self) -> &'static str {
        match self.kind {
            SnapshotKind::Checkpoint => "chk-",
            SnapshotKind::Savepoint => "savepoint-",
        }
    }

    fn file_name(&self, id: u64) -> String {
        format!("{}{id:010}.json", self.prefix())
    }

    /// Files that look like ours, with the id from their name, newest first.
    fn scan(&self) -> Result<Vec<(u64, PathBuf)>, StoreError> {
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io("list", &self.dir))? {
            let entry = entry.map_err(io("list", &self.dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(id) = name
                .strip_prefix(self.prefix())
                .and_then(|rest| rest.strip_suffix(".json"))
                .and_then(|id| id.parse::<u64>().ok())
            else {
                continue;
            };
            found.push((id, entry.path()));
        }
        found.sort_by_key(|e| std::cmp::Reverse(e.0));
        Ok(found)
    }

    /// Verified snapshots, newest first; corrupt ones are logged and skipped.
    pub fn complete(&self) -> Result<Vec<(SnapshotInfo, Snapshot)>, StoreError> {
        let mut complete = Vec::new();
        for (_, path) in self.scan()? {
            match fs::read(&path).map_err(io("read", &path)).and_then(|b| {
                let snapshot = Snapshot::from_bytes(&path, &b)?;
                Ok((b.len() as u64, snapshot))
            }) {
                Ok((size, snapshot)) => {
                    complete.push((self.info(&path, size, &snapshot), snapshot))
                }
                Err(e) => tracing::warn!(error = %e, "skipping a torn or corrupt {:?}", self.kind),
            }
        }
        Ok(complete)
    }

    fn info(&self, path: &Path, size: u64, snapshot: &Snapshot) -> SnapshotInfo {
        SnapshotInfo {
            id: snapshot.id,
            kind: self.kind,
            path: path.display().to_string(),
            created_at_ms: snapshot.created_at_ms,
            size_bytes: size,
            partitions: snapshot.offsets.len() as u32,
        }
    }

    /// What a reader may restore from. Waits for a running write and its retention, so a listing
    /// never shows more snapshots than the policy keeps.
    pub fn list(&self) -> Result<Vec<SnapshotInfo>, StoreError> {
        let _guard = self.guard();
        self.list_unlocked()
    }

    fn list_unlocked(&self) -> Result<Vec<SnapshotInfo>, StoreError> {
        Ok(self.complete()?.into_iter().map(|(info, _)| info).collect())
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The newest verified snapshot.
    pub fn newest(&self) -> Result<Option<(SnapshotInfo, Snapshot)>, StoreError> {
        Ok(self.complete()?.into_iter().next())
    }

    /// Writes a snapshot atomically under the next id and indexes it in the manifest.
    pub fn write(&self, snapshot: &Snapshot) -> Result<SnapshotInfo, StoreError> {
        let _guard = self.guard();
        self.write_unlocked(snapshot)
    }

    /// Writes a snapshot and applies the retention policy as one step, so no reader sees the new
    /// snapshot next to one the policy is about to delete. Returns the new snapshot and the
    /// deleted paths.
    pub fn write_retaining(
        &self,
        snapshot: &Snapshot,
        retention: Retention,
        now_ms: u64,
    ) -> Result<(SnapshotInfo, Vec<PathBuf>), StoreError> {
        let _guard = self.guard();
        let info = self.write_unlocked(snapshot)?;
        Ok((info, self.retain_unlocked(retention, now_ms)?))
    }

    fn write_unlocked(&self, snapshot: &Snapshot) -> Result<SnapshotInfo, StoreError> {
        let id = self.scan()?.first().map(|(id, _)| id + 1).unwrap_or(1);
        let mut snapshot = snapshot.clone();
        snapshot.id = id;
        snapshot.kind = self.kind;
        let bytes = snapshot.to_bytes();
        let path = self.dir.join(self.file_name(id));
        write_atomically(&path, &bytes)?;
        let info = self.info(&path, bytes.len() as u64, &snapshot);
        self.write_manifest()?;
        Ok(info)
    }

    fn write_manifest(&self) -> Result<(), StoreError> {
        let manifest = Manifest {
            format: FORMAT_VERSION,
            kind: self.kind,
            snapshots: self.list_unlocked()?,
        };
        let mut bytes = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
        bytes.push(b'\n');
        write_atomically(&self.dir.join(MANIFEST), &bytes)
    }

    /// Deletes what the policy does not keep, plus corrupt files and leftovers of interrupted
    /// writes. The newest complete snapshot is always kept. Returns the deleted paths.
    pub fn apply_retention(
        &self,
        retention: Retention,
        now_ms: u64,
    ) -> Result<Vec<PathBuf>, StoreError> {
        let _guard = self.guard();
        self.retain_unlocked(retention, now_ms)
    }

    fn retain_unlocked(
        &self,
        retention: Retention,
        now_ms: u64,
    ) -> Result<Vec<PathBuf>, StoreError> {
        let complete = self.complete()?;
        let keep: Vec<&Path> = complete
            .iter()
            .enumerate()
            .filter(|(rank, (info, _))| {
                let young_enough = retention.max_age.is_none_or(|age| {
                    now_ms.saturating_sub(info.created_at_ms) <= age.as_millis() as u64
                });
                *rank == 0 || (*rank < retention.max_count && young_enough)
            })
            .map(|(_, (info, _))| Path::new(&info.path))
            .collect();
        let mut deleted = Vec::new();
        for (_, path) in self.scan()? {
            if !keep.contains(&path.as_path()) {
                fs::remove_file(&path).map_err(io("delete", &path))?;
                deleted.push(path);
            }
        }
        for entry in fs::read_dir(&self.dir).map_err(io("list", &self.dir))? {
            let entry = entry.map_err(io("list", &self.dir))?;
            let name = entry.file_name();
            if name
                .to_str()
                .is_some_and(|n| n.starts_with('.') && n.ends_with(".tmp"))
            {
                let path = entry.path();
                fs::remove_file(&path).map_err(io("delete", &path))?;
                deleted.push(path);
            }
        }
        if !deleted.is_empty() {
            sync_dir(&self.dir)?;
            self.write_manifest()?;
        }
        Ok(deleted)
    }
}

/// temp file → fsync → rename → fsync directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("snapshot");
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = File::create(&tmp).map_err(io("create", &tmp))?;
    file.write_all(bytes).map_err(io("write", &tmp))?;
    file.sync_all().map_err(io("fsync", &tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(io("rename into place", path))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(created_at_ms: u64, offset: i64) -> Snapshot {
        let offsets: BTreeMap<i32, i64> = [(0, offset), (1, offset + 1)].into_iter().collect();
        Snapshot::new(
            SnapshotKind::Checkpoint,
            "trace",
            "austinTraceLog",
            2,
            3,
            created_at_ms,
            &offsets,
        )
    }

    #[test]
    fn a_written_snapshot_reads_back_verified_and_indexed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SnapshotStore::open(dir.path(), SnapshotKind::Checkpoint).expect("open");
        let first = store.write(&snapshot(1, 10)).expect("write");
        let second = store.write(&snapshot(2, 20)).expect("write");
        assert_eq!((first.id, second.id), (1, 2));
        let (info, newest) = store.newest().expect("list").expect("one");
        assert_eq!(info, second);
        assert_eq!(newest.offsets_map().get(&1), Some(&21));
        let manifest: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.path().join(MANIFEST)).expect("manifest"))
                .expect("json");
        assert_eq!(manifest["snapshots"].as_array().map(Vec::len), Some(2));
        assert_eq!(manifest["snapshots"][0]["id"], 2);
        assert!(fs::read_dir(dir.path()).expect("ls").all(|e| !e
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp")));
    }

    #[test]
    fn torn_and_corrupt_files_are_skipped_never_loaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SnapshotStore::open(dir.path(), SnapshotKind::Checkpoint).expect("open");
        store.write(&snapshot(1, 10)).expect("write");
        let second = store.write(&snapshot(2, 20)).expect("write");
        let third = store.write(&snapshot(3, 30)).expect("write");
        // Third: torn (cut in half). Second: one digit changed, still valid JSON.
        let bytes = fs::read(&third.path).expect("read");
        fs::write(&third.path, &bytes[..bytes.len() / 2]).expect("tear");
        let text = fs::read_to_string(&second.path)
            .expect("read")
            .replace("\"offset\": 20", "\"offset\": 29");
        fs::write(&second.path, text).expect("corrupt");
        assert!(matches!(
            read_snapshot(Path::new(&second.path)),
            Err(StoreError::Corrupt { .. })
        ));
        let (info, newest) = store.newest().expect("list").expect("one left");
        assert_eq!(info.id, 1);
        assert_eq!(newest.offsets_map().get(&0), Some(&10));
        // A leftover temp file of an interrupted write is ignored too.
        fs::write(dir.path().join(".chk-0000000009.json.tmp"), b"{").expect("tmp");
        assert_eq!(store.list().expect("list").len(), 1);
        // The next write still gets a fresh id.
        assert_eq!(store.write(&snapshot(4, 40)).expect("write").id, 4);
    }

    #[test]
    fn retention_by_count_and_age_deletes_files_and_keeps_the_newest_complete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SnapshotStore::open(dir.path(), SnapshotKind::Savepoint).expect("open");
        for t in 1..=5 {
            store.write(&snapshot(t * 1000, t as i64)).expect("write");
        }
        let deleted = store
            .apply_retention(
                Retention {
                    max_count: 3,
                    max_age: None,
                },
                5000,
            )
            .expect("retention");
        assert_eq!(deleted.len(), 2);
        assert!(deleted.iter().all(|p| !p.exists()));
        let ids: Vec<u64> = store.list().expect("list").iter().map(|i| i.id).collect();
        assert_eq!(ids, vec![5, 4, 3]);
        // Age: everything is older than 1 s at t = 100 s, yet the newest complete one stays,
        // even when the file after it is corrupt.
        let corrupt = store.write(&snapshot(6000, 6)).expect("write");
        fs::write(&corrupt.path, b"garbage").expect("corrupt");
        let deleted = store
            .apply_retention(
                Retention {
                    max_count: 10,
                    max_age: Some(Duration::from_secs(1)),
                },
                100_000,
            )
            .expect("retention");
        assert_eq!(deleted.len(), 3, "{deleted:?}");
        let left = store.list().expect("list");
        assert_eq!(left.iter().map(|i| i.id).collect::<Vec<_>>(), vec![5]);
        let files = fs::read_dir(dir.path()).expect("ls").count();
        assert_eq!(files, 2, "the kept savepoint and the manifest");
    }
}
