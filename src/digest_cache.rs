//! An opt-in cache of file and object digests (`--digest-cache SIZE`).
//!
//! Keyed by what identifies a source's content without reading it (see
//! `storage::Identity`): for a file its device, inode, size, mtime and ctime
//! (nanoseconds), which any write, truncation, rename-over or touch changes;
//! for an object its bucket, key, ETag, size and last-modified time; plus
//! the algorithm list. Two races remain and both are closed:
//! - the source changes while it is hashed: the handler answers 409 unless
//!   the identity after the last read is the one at open
//!   (`Source::check_unchanged`), so only digests of one version get here;
//! - a file changes within one timestamp tick of the last change (file
//!   systems stamp with a coarse clock, ~4 ms): like git's "racy" entries,
//!   a file whose ctime is less than `RACY_WINDOW` before the hash started
//!   is not cached, so a later write in the same tick cannot hide. (An
//!   object's ETag changes with every write, whatever the clock says.)

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::kernel::{Algorithm, AlgorithmList, Digests};
use crate::storage::Identity;

/// A change this close to the hash's start may share its timestamp with a
/// later write: far more than any file system's tick.
pub const RACY_WINDOW: Duration = Duration::from_secs(1);

/// Bytes charged per entry on top of its digests, for the size bound.
const ENTRY_OVERHEAD: u64 = 160;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    id: Identity,
    algs: Vec<Algorithm>,
    /// None for the digests of the source's own bytes; for those of an
    /// output made from it (a compressed download, RFC 9530 `Repr-Digest`),
    /// what determines that output: route and query.
    output: Option<String>,
}

impl Key {
    pub fn new(id: Identity, algs: &AlgorithmList) -> Key {
        Key {
            id,
            algs: algs.as_slice().to_vec(),
            output: None,
        }
    }

    /// The digests of the output `what` makes from this version of a
    /// source; `what` must name everything the output's bytes depend on.
    pub fn output(id: Identity, algs: &AlgorithmList, what: String) -> Key {
        Key {
            output: Some(what),
            ..Key::new(id, algs)
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

    /// Caches `digests` of the version `key` names (read unchanged), unless
    /// its last change is racy with `started`, when the hash began.
    pub fn insert(&self, key: Key, digests: &Digests, started: SystemTime) {
        let started_ns = started
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        if key
            .id
            .changed_ns()
            .is_some_and(|changed| changed + RACY_WINDOW.as_nanos() as i128 > started_ns)
        {
            return;
        }
        let c = cost(digests);
        if c > self.capacity {
            return;
        }
        let mut inner = self.lock();
        if inner.map.contains_key(&key) {
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
        inner.order.push_back(key.clone());
        inner.map.insert(key, digests.clone());
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

    fn file_key(path: &std::path::Path, algs: &AlgorithmList) -> Key {
        Key::new(
            crate::storage::local::identity(&std::fs::metadata(path).unwrap()),
            algs,
        )
    }

    #[test]
    fn racy_and_changed_files_are_not_cached_and_budget_holds() {
        let dir = tempfile::tempdir().unwrap();
        let algs = AlgorithmList::default_list();
        let p = dir.path().join("f");
        std::fs::write(&p, b"one").unwrap();
        let k = file_key(&p, &algs);
        let cache = DigestCache::new(10_000);
        let d = digest_of(b"one", &algs);
        // Just written: racy, not cached.
        cache.insert(k.clone(), &d, SystemTime::now());
        assert!(cache.get(&k).is_none());
        // Hashed long enough after the change: cached.
        let later = SystemTime::now() + Duration::from_secs(5);
        cache.insert(k.clone(), &d, later);
        assert_eq!(cache.get(&k), Some(d.clone()));
        // Changed since: another key, not answered from the cache.
        std::fs::write(&p, b"two!").unwrap();
        let k2 = file_key(&p, &algs);
        assert_ne!(k, k2);
        assert!(cache.get(&k2).is_none());
        // An object's identity has no clock to be racy with.
        let object = Key::new(
            Identity::Object {
                bucket: "b".into(),
                key: "k".into(),
                etag: "\"e\"".into(),
                size: 3,
                last_modified_ns: 0,
            },
            &algs,
        );
        cache.insert(object.clone(), &d, SystemTime::now());
        assert_eq!(cache.get(&object), Some(d.clone()));
        // The budget evicts the oldest entries.
        let small = DigestCache::new(2 * cost(&d));
        for i in 0..5u64 {
            let Identity::File {
                dev,
                size,
                mtime_ns,
                ctime_ns,
                ..
            } = k.id
            else {
                unreachable!()
            };
            let key = Key::new(
                Identity::File {
                    dev,
                    ino: i,
                    size,
                    mtime_ns,
                    ctime_ns,
                },
                &algs,
            );
            small.insert(key, &d, later);
        }
        assert_eq!(small.len(), 2);
    }
}
