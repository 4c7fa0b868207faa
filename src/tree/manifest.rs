//! Hashing a walk on the CPU pool, in order.
//!
//! The walk itself (listing directories, opening and stat-ing files) runs
//! in pool jobs of a few dozen entries, so the disk's latency overlaps with
//! hashing. Each file is hashed in jobs of at most `PIECE_MAX` bytes: a
//! tree is many short jobs in one request's lane, never one long one, so
//! the scheduler keeps serving other requests beside it (and the lane's
//! used CPU lowers its priority against fresh small requests). At most
//! `window` entries are in flight; their records come out in walk order,
//! so the output is sorted and memory stays flat whatever the tree's size.
//! A client that leaves drops the stream: no further job is queued.

use std::collections::VecDeque;
use std::fs::File;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use sha2::{Digest as _, Sha256};

use super::format::{Format, text_line};
use super::walk::{Entry, Walk};
use crate::cpu_pool::{CpuPool, Lane};
use crate::digest_cache::{DigestCache, Key};
use crate::error::ApiError;
use crate::kernel::{AlgorithmList, Digests, MultiHasher};
use crate::root::{RelPath, Root};
use crate::storage::local::{identity, read_full};
use crate::storage::{PIECE_MAX, with_buffer};

/// Entries the walk reads in one pool job.
const WALK_BATCH: usize = 32;

/// What the manifest says of one path.
#[derive(Debug)]
pub enum Record {
    File {
        path: Vec<u8>,
        digests: Digests,
    },
    /// Listed, not read (a FIFO, socket, device, symlinked directory).
    Skipped {
        path: Vec<u8>,
        why: &'static str,
    },
    /// Could not be read; the walk went on.
    Error {
        path: Vec<u8>,
        error: ApiError,
    },
}

impl Record {
    pub fn path(&self) -> &[u8] {
        match self {
            Record::File { path, .. }
            | Record::Skipped { path, .. }
            | Record::Error { path, .. } => path,
        }
    }
}

type Pending = Pin<Box<dyn Future<Output = Record> + Send>>;

/// A manifest being computed; `next` yields its records in walk order.
pub struct Manifest {
    lane: Lane,
    /// None while a walk job holds it, or once it is exhausted.
    walk: Option<Walk>,
    walk_done: bool,
    /// Entries being hashed, in walk order.
    inflight: FuturesOrdered<Pending>,
    /// Records ready, in order (a walk batch may finish several at once).
    ready: VecDeque<Record>,
    window: usize,
    algs: AlgorithmList,
    cache: Option<Arc<DigestCache>>,
}

impl Manifest {
    /// Opens `dir` under the root in an admitted pool job: a missing,
    /// outside or non-directory `dir` fails here, before any answer starts.
    pub async fn start(
        pool: &CpuPool,
        root: Arc<Root>,
        dir: Option<RelPath>,
        algs: &AlgorithmList,
        cache: Option<Arc<DigestCache>>,
    ) -> Result<Manifest, ApiError> {
        let lane = pool.lane();
        let shown = dir.as_ref().map_or_else(String::new, RelPath::display);
        let walk = lane
            .try_run(move || Walk::new(root, dir).map_err(|e| ApiError::from_open(e, &shown)))
            .await??;
        Ok(Manifest {
            lane,
            walk: Some(walk),
            walk_done: false,
            inflight: FuturesOrdered::new(),
            ready: VecDeque::new(),
            window: 4 * pool.threads() + WALK_BATCH,
            algs: algs.clone(),
            cache,
        })
    }

    /// The next record in walk order; `None` at the end.
    pub async fn next(&mut self) -> Option<Record> {
        loop {
            if self.inflight.len() < self.window
                && !self.walk_done
                && let Err(e) = self.walk_batch().await
            {
                self.walk_done = true;
                self.ready.push_back(Record::Error {
                    path: Vec::new(),
                    error: e,
                });
            }
            if let Some(r) = self.ready.pop_front() {
                return Some(r);
            }
            match self.inflight.next().await {
                Some(r) => return Some(r),
                None if self.walk_done => return None,
                None => {}
            }
        }
    }

    /// Walks up to `WALK_BATCH` entries in one pool job and queues them.
    async fn walk_batch(&mut self) -> Result<(), ApiError> {
        let Some(mut walk) = self.walk.take() else {
            self.walk_done = true;
            return Ok(());
        };
        let (walk, batch) = self
            .lane
            .run(move || {
                let batch: Vec<Entry> = walk.by_ref().take(WALK_BATCH).collect();
                (walk, batch)
            })
            .await?;
        if batch.len() < WALK_BATCH {
            self.walk_done = true;
        } else {
            self.walk = Some(walk);
        }
        for entry in batch {
            let fut: Pending = match entry {
                Entry::File { path, file, .. } => Box::pin(hash_file(
                    self.lane.clone(),
                    path,
                    file,
                    self.algs.clone(),
                    self.cache.clone(),
                )),
                Entry::Skipped { path, why } => {
                    Box::pin(std::future::ready(Record::Skipped { path, why }))
                }
                Entry::Error { path, error } => {
                    let error = ApiError::from_open(error, &String::from_utf8_lossy(&path));
                    Box::pin(std::future::ready(Record::Error { path, error }))
                }
            };
            self.inflight.push_back(fut);
        }
        Ok(())
    }
}

/// Hashes one file in `PIECE_MAX` jobs, or answers from the digest cache.
pub async fn hash_file(
    lane: Lane,
    path: Vec<u8>,
    file: File,
    algs: AlgorithmList,
    cache: Option<Arc<DigestCache>>,
) -> Record {
    let shown = String::from_utf8_lossy(&path).into_owned();
    let started = SystemTime::now();
    let key = match (&cache, file.metadata()) {
        (Some(cache), Ok(meta)) => {
            let key = Key::new(identity(&meta), &algs);
            if let Some(digests) = cache.get(&key) {
                return Record::File { path, digests };
            }
            Some(key)
        }
        _ => None,
    };
    let mut state = (file, MultiHasher::new(&algs), false);
    while !state.2 {
        let (mut file, mut hasher, _) = state;
        let job = lane
            .run(move || {
                let done = with_buffer(PIECE_MAX, |buf| {
                    let n = read_full(&mut file, buf)?;
                    hasher.update(&buf[..n]);
                    Ok::<_, std::io::Error>(n < PIECE_MAX)
                });
                done.map(|done| (file, hasher, done))
            })
            .await;
        state = match job {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let error = ApiError::Internal(format!("reading '{shown}': {e}"));
                return Record::Error { path, error };
            }
            Err(e) => {
                return Record::Error {
                    path,
                    error: e.into(),
                };
            }
        };
    }
    let (file, hasher, _) = state;
    let digests = hasher.finish();
    // Cached only if the file did not change while it was hashed.
    if let (Some(cache), Some(before), Ok(meta)) = (&cache, key, file.metadata())
        && Key::new(identity(&meta), &algs) == before
    {
        cache.insert(before, &digests, started);
    }
    Record::File { path, digests }
}

/// Counts of a manifest, and the SHA-256 of the tree in `sha256sum` format
/// (lines of the first requested algorithm: what `sha256sum`, or `b3sum`
/// for BLAKE3, prints for the same files).
#[derive(Default)]
pub struct Summary {
    pub files: u64,
    pub bytes: u64,
    pub errors: u64,
    pub skipped: u64,
    text: Sha256,
}

impl Summary {
    pub fn add(&mut self, r: &Record) {
        match r {
            Record::File { path, digests } => {
                self.files += 1;
                self.bytes += digests.bytes;
                let (alg, hex) = digests.primary();
                let mut line = Vec::with_capacity(80 + path.len());
                text_line(Format::Sha256sum, alg, hex, path, &mut line);
                self.text.update(&line);
            }
            Record::Skipped { .. } => self.skipped += 1,
            Record::Error { .. } => self.errors += 1,
        }
    }

    /// SHA-256 of every file's `sha256sum`-format line, in order: `sha256sum`
    /// (or `b3sum`, ...) run on the same files in `sort` order and piped
    /// into `sha256sum` gives the same digest. Computing it costs no extra
    /// pass over the files: a BLAKE3 manifest runs at BLAKE3's speed.
    pub fn manifest_sha256(&self) -> String {
        self.text
            .clone()
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// One NDJSON line for a record: the requested digests by name.
pub fn ndjson_line(r: &Record, requested: &AlgorithmList, out: &mut Vec<u8>) {
    let path = String::from_utf8_lossy(r.path()).into_owned();
    let mut obj = serde_json::Map::new();
    obj.insert("path".into(), path.into());
    match r {
        Record::File { digests, .. } => {
            obj.insert("bytes".into(), digests.bytes.into());
            for (a, hex) in &digests.entries {
                if requested.as_slice().contains(a) {
                    obj.insert(a.name().into(), hex.clone().into());
                }
            }
        }
        Record::Skipped { why, .. } => {
            obj.insert("skipped".into(), (*why).into());
        }
        Record::Error { error, .. } => {
            obj.insert("error".into(), error.code().into());
            obj.insert("message".into(), error.message().into());
        }
    }
    serde_json::to_writer(&mut *out, &obj).expect("writing JSON to a Vec");
    out.push(b'\n');
}
