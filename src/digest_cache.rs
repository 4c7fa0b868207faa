//! An opt-in cache of file digests (`--digest-cache SIZE`).
//!
//! Keyed by what identifies a file's content without reading it: device,
//! inode, size, mtime and ctime (nanoseconds), plus the algorithm list.
//! Any write, truncation, rename-over or touch changes one of them. Two
//! races remain and both are closed here:
//! - the file changes while it is hashed: the key is taken at open and
//!   again after the last read, and only an unchanged file is cached;
//! - the file changes within one timestamp tick of the last change (file
//!   systems stamp with a coarse clock, ~4 ms): like git's "racy" entries,
//!   a file whose ctime is less than `RACY_WINDOW` before the hash started
//!   is not cached, so a later write in the same tick cannot hide.

use std::collections::{HashMap, VecDeque};
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::kernel::{Algorithm, AlgorithmList, Digests};

/// A change this close to the hash's start may share its timestamp with a
/// later write: far more than any file system's tick.
pub const RACY_WINDOW: Duration = Duration::from_secs(1);

/// Bytes charged per entry on top of its digests, for the size bound.
const ENTRY_OVERHEAD: u64 = 160;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    algs: Vec<Algorithm>,
}

impl Key {
    pub fn new(meta: &Metadata, algs: &AlgorithmList) -> Key {
        Key {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
            algs: algs.as_slice().to_vec(),
        }
    }

    /// The same file and algorithms, identified by fresher metadata.
    pub fn refreshed(&self, meta: &Metadata) -> Key {
        Key {
            algs: self.algs.clone(),
            ..Key::new(meta, &AlgorithmList::default_list())
        }
    }
}

/// Bounded by an approximate byte budget; evicts oldest-inserted first.
pub struct DigestCache {
    capacity: u64,
    inner: Mutex<Inner>,
}

struct Inner {
    map: HashMap<Key, Digests>,
    order: VecDeque<Key>,
    bytes: u64,
}

fn cost(d: &Digests) -> u64 {
    ENTRY_OVERHEAD
        + d.entries
            .iter()
            .map(|(_, h)| h.len() as u64 + 8)
            .sum::<u64>()
}

impl DigestCache {
    pub fn new(capacity_bytes: u64) -> DigestCache {
        DigestCache {
            capacity: capacity_bytes,
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                order: VecDeque::new(),
                bytes: 0,
            }),
        }
    }

    pub fn get(&self, key: &Key) -> Option<Digests> {
        self.lock().map.get(key).cloned()
    }

    /// Caches `digests` if the file did not change while it was hashed
    /// (`before == after`) and its last change is not racy with `started`.
    pub fn insert(&self, before: Key, after: &Key, digests: &Digests, started: SystemTime) {
        if before != *after {
            return;
        }
        let started_ns = started
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        if before.ctime_ns + RACY_WINDOW.as_nanos() as i128 > started_ns
            || before.mtime_ns + RACY_WINDOW.as_nanos() as i128 > started_ns
        {
            return;
        }
        let c = cost(digests);
        if c > self.capacity {
            return;
        }
        let mut inner = self.lock();
        if inner.map.contains_key(&before) {
            return;
        }
        while inner.bytes + c > self.capacity {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            if let Some(d) = inner.map.remove(&old) {
                inner.bytes -= cost(&d);
            }
        }
        inner.bytes += c;
        inner.order.push_back(before.clone());
        inner.map.insert(before, digests.clone());
    }

    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::MultiHasher;

    fn digest_of(data: &[u8], algs: &AlgorithmList) -> Digests {
        let mut h = MultiHasher::new(algs);
        h.update(data);
        h.finish()
    }

    #[test]
    fn racy_and_changed_files_are_not_cached_and_budget_holds() {
        let dir = tempfile::tempdir().unwrap();
        let algs = AlgorithmList::default_list();
        let p = dir.path().join("f");
        std::fs::write(&p, b"one").unwrap();
        let k = Key::new(&std::fs::metadata(&p).unwrap(), &algs);
        let cache = DigestCache::new(10_000);
        let d = digest_of(b"one", &algs);
        // Just written: racy, not cached.
        cache.insert(k.clone(), &k, &d, SystemTime::now());
        assert!(cache.get(&k).is_none());
        // Hashed long enough after the change: cached.
        let later = SystemTime::now() + Duration::from_secs(5);
        cache.insert(k.clone(), &k, &d, later);
        assert_eq!(cache.get(&k), Some(d.clone()));
        // Changed during hashing: not cached.
        std::fs::write(&p, b"two!").unwrap();
        let k2 = Key::new(&std::fs::metadata(&p).unwrap(), &algs);
        assert_ne!(k, k2);
        cache.insert(k.clone(), &k2, &d, later);
        assert!(cache.get(&k2).is_none());
        // The budget evicts the oldest entries.
        let small = DigestCache::new(2 * cost(&d));
        for i in 0..5u64 {
            let mut key = k.clone();
            key.ino = i;
            small.insert(key.clone(), &key, &d, later);
        }
        assert_eq!(small.len(), 2);
    }
}
