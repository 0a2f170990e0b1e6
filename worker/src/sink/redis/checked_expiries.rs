//! Which user lists already carry tonight's expiry, as far as this process knows.
//!
//! The apply must make sure a user list it pushes to expires at the next local midnight.
//! A list the batch creates gets `PEXPIREAT`; an existing one may have been written by someone
//! else (upstream's 52-year TTLs while migrating) and is checked with `PEXPIRETIME` — a second
//! Redis call for most events, since a receiver gets many messages a day. Once a batch that
//! touched a list is applied, that list's expiry is tonight's midnight until midnight, so later
//! batches of the same day can skip the check. This set remembers those lists (by a 64-bit hash
//! of the key) for one day and is shared by all partitions of the process.
//!
//! It is a cache, never a source of truth: a list missing from it is checked as before. A hash
//! collision, or a foreign writer changing a list's expiry after it was checked, can leave a
//! foreign expiry until the next day's first touch — the same as with the check switched off.

use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use foldhash::quality::RandomState;

/// The set's values are already seeded hashes: hashing them again would only cost time.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

/// At most this many lists are remembered per day (~16 bytes each): a bound on memory, not on
/// correctness (lists beyond it are simply checked every time).
pub(crate) const MAX_CHECKED_LISTS: usize = 1 << 18;

#[derive(Debug)]
pub(crate) struct CheckedExpiries {
    /// The midnight (epoch ms) the remembered lists expire at.
    day_end: i64,
    lists: HashSet<u64, BuildHasherDefault<PassThrough>>,
    capacity: usize,
    hasher: RandomState,
}

impl Default for CheckedExpiries {
    fn default() -> Self {
        Self::with_capacity(MAX_CHECKED_LISTS)
    }
}

impl CheckedExpiries {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self {
            day_end: i64::MIN,
            lists: HashSet::default(),
            capacity,
            hasher: RandomState::default(),
        }
    }

    pub(crate) fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Whether list `hash` is known to expire at `day_end` already.
    pub(crate) fn contains(&self, day_end: i64, hash: u64) -> bool {
        self.day_end == day_end && self.lists.contains(&hash)
    }

    /// Records lists an applied batch set or checked to expire at `day_end`. A new day forgets
    /// the previous one's lists.
    pub(crate) fn insert_all(&mut self, day_end: i64, hashes: &[u64]) {
        if day_end != self.day_end {
            if day_end < self.day_end {
                return; // a late batch of the previous day
            }
            self.day_end = day_end;
            self.lists.clear();
        }
        for &hash in hashes {
            if self.lists.len() >= self.capacity {
                break;
            }
            self.lists.insert(hash);
        }
    }

    /// Trusts no list any more: Redis may have lost them (a failover, a restart from an older
    /// snapshot), and a list this set still trusted would then be re-created by a batch without
    /// an expiry inside its transaction.
    pub(crate) fn forget_all(&mut self) {
        self.lists.clear();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lists.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_remembered_for_their_day_only() {
        let mut checked = CheckedExpiries::with_capacity(10);
        let a = checked.hash("alice");
        let b = checked.hash("bob");
        assert_ne!(a, b);
        assert!(!checked.contains(100, a));
        checked.insert_all(100, &[a]);
        assert!(checked.contains(100, a));
        assert!(!checked.contains(100, b));
        assert!(!checked.contains(200, a), "another day's midnight");
        checked.insert_all(200, &[b]);
        assert!(!checked.contains(100, a), "the new day forgot yesterday");
        assert!(checked.contains(200, b));
        checked.insert_all(100, &[a]);
        assert!(
            !checked.contains(100, a),
            "a late batch of yesterday adds nothing"
        );
        assert_eq!(checked.len(), 1);
        checked.forget_all();
        assert!(!checked.contains(100, b) && checked.len() == 0);
    }

    #[test]
    fn memory_is_bounded_and_lists_beyond_it_are_just_checked() {
        let mut checked = CheckedExpiries::with_capacity(3);
        let hashes: Vec<u64> = (0..10).map(|i| checked.hash(&format!("user{i}"))).collect();
        checked.insert_all(1, &hashes);
        assert_eq!(checked.len(), 3);
        assert!(hashes[..3].iter().all(|&h| checked.contains(1, h)));
        assert!(hashes[3..].iter().all(|&h| !checked.contains(1, h)));
    }
}
