//! Hashing a walk on the CPU pool, in order.
//!
//! Three kinds of pool jobs, all in the request's lane:
//!
//! - **Listing**: the walk lists up to `WALK_BATCH` names in one job
//!   (reading directories, no file opened), one listing job at a time.
//! - **Groups**: up to `GROUP` listed files in one job that opens, stats
//!   and, when small, reads and hashes each of them whole through the
//!   thread's buffer. On a tree of many small files the cost is the system
//!   calls, not the hashing: a job per file would add a hand-off between
//!   threads (two context switches) to every few microseconds of work, and
//!   one walker opening every file would leave the other threads waiting.
//!   Groups run side by side on every pool thread. A group hashes at most
//!   `PIECE_MAX` bytes inline, so it stays a short job.
//! - **Pieces**: a file too big for its group's budget is closed and left to
//!   its own jobs of at most `map_piece` bytes, the first of which reopens
//!   it: a tree of
//!   big files is many short jobs, never one long one, so the scheduler
//!   keeps serving other requests beside it (and the lane's used CPU lowers
//!   its priority against fresh small requests), and no file stays open
//!   while it waits for its turn. Each job hashes its piece from a guarded
//!   mapping of the page cache (`sys::map_guarded`), not a copy: a file
//!   truncated meanwhile is a `source_changed` error record, never a crash
//!   nor a wrong digest.
//!
//! At most `window` entries are in flight, and at most two listings' worth
//! wait for a group; records come out in walk order, so the output is
//! sorted and memory stays flat whatever the tree's size. A client that
//! leaves drops the stream: no further job is queued.

use std::collections::VecDeque;
use std::fs::{File, Metadata};
use std::future::Future;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use sha2::{Digest as _, Sha256};

use super::format::{Format, text_line};
use super::walk::{Entry, Opened, Opener, Walk};
use crate::cpu_pool::{CpuPool, Lane, PoolError};
use crate::digest_cache::{DigestCache, Key};
use crate::error::ApiError;
use crate::kernel::{Algorithm, AlgorithmList, Digests, MultiHasher};
use crate::root::{RelPath, Root};
use crate::storage::local::{identity, read_full};
use crate::storage::{MAP_MIN, PIECE_MAX, with_buffer};

/// Entries the walk lists in one pool job: names only, ~1 µs each.
const WALK_BATCH: usize = 256;
/// Files one pool job opens and hashes: on small files ~10 µs each, so a
/// group is well under a millisecond, and the hand-off is shared by many.
const GROUP: usize = 32;

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

type Listing = Pin<Box<dyn Future<Output = Result<(Walk, Vec<Entry>), PoolError>> + Send>>;
type Group = Pin<Box<dyn Future<Output = Result<Vec<Record>, PoolError>> + Send>>;

/// What a group job did with one file.
enum Step {
    Done(Record),
    /// Too big for the group: hashed in pieces (`hash_big`).
    Big {
        path: Vec<u8>,
        symlink: bool,
    },
}

/// What a group's jobs share: how to open, what to compute, where to cache.
#[derive(Clone)]
struct Hashing {
    lane: Lane,
    opener: Opener,
    algs: AlgorithmList,
    cache: Option<Arc<DigestCache>>,
}

/// How a manifest reads the tree.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Names of one directory sorted in memory (`--dir-sort-names`); a
    /// bigger directory is sorted through a temporary file (`Walk::new`).
    pub sort_in_memory: usize,
}

/// Bytes of a big file one job hashes, from a guarded mapping: mapping and
/// unmapping cost a few microseconds, so pieces are bigger than
/// `PIECE_MAX`'s reads. It bounds what a job holds mapped (file pages
/// mapped count in RSS), whatever the file's size. 4 MiB of SHA-256 is
/// ~3 ms of a core, the longest a job should keep a thread from others.
const MAP_PIECE: usize = 4 << 20;

/// Bytes of a big file one job hashes with BLAKE3 (or memory-speed
/// algorithms) alone: at ~4 GB/s a core, 16 MiB is ~4 ms, as long as a
/// SHA-256 piece, in a quarter of the jobs. Each job is a hand-off between
/// threads and an unmap that interrupts every core running the process
/// (TLB shootdown): on a tree of 16 MiB files they were a few per cent of
/// a BLAKE3 manifest.
const MAP_PIECE_FAST: usize = 16 << 20;

/// The piece size for `algs`: as big as keeps a job at a few ms.
fn map_piece(algs: &AlgorithmList) -> usize {
    let fast = algs
        .as_slice()
        .iter()
        .all(|a| *a == Algorithm::Blake3 || a.at_memory_speed());
    if fast { MAP_PIECE_FAST } else { MAP_PIECE }
}

/// A manifest being computed; `next` yields its records in walk order.
pub struct Manifest {
    hashing: Hashing,
    /// None while a listing job holds it, or once it is exhausted.
    walk: Option<Walk>,
    /// The listing job in flight.
    listing: Option<Listing>,
    walk_done: bool,
    /// Listed, not yet in a group (fewer than two listings' worth).
    listed: VecDeque<Entry>,
    /// Groups in flight, in walk order, and how many entries each holds.
    groups: FuturesOrdered<Group>,
    sizes: VecDeque<usize>,
    /// Entries in `groups`.
    in_groups: usize,
    /// Records ready, in order (a group finishes several at once).
    ready: VecDeque<Record>,
    /// Most entries in groups in flight.
    window: usize,
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
        options: Options,
    ) -> Result<Manifest, ApiError> {
        let lane = pool.lane();
        let shown = dir.as_ref().map_or_else(String::new, RelPath::display);
        let sort = options.sort_in_memory;
        let walk = lane
            .try_run(move || Walk::new(root, dir, sort).map_err(|e| ApiError::from_open(e, &shown)))
            .await??;
        Ok(Manifest {
            hashing: Hashing {
                lane,
                opener: walk.opener(),
                algs: algs.clone(),
                cache,
            },
            walk: Some(walk),
            listing: None,
            walk_done: false,
            listed: VecDeque::new(),
            groups: FuturesOrdered::new(),
            sizes: VecDeque::new(),
            in_groups: 0,
            ready: VecDeque::new(),
            // Every thread busy with a group, and two more queued so none
            // waits for this task to hand it the next one.
            window: GROUP * (pool.threads() + 2),
        })
    }

    /// The next record in walk order; `None` at the end.
    pub async fn next(&mut self) -> Option<Record> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Record>> {
        loop {
            if let Some(r) = self.ready.pop_front() {
                return Poll::Ready(Some(r));
            }
            let mut moved = false;
            // List a batch ahead, so the names for the next groups are there
            // when a group ends: a listing queued only once the groups ran
            // low would leave the threads idle while it ran.
            if self.listing.is_none()
                && !self.walk_done
                && self.listed.len() < WALK_BATCH
                && let Some(mut walk) = self.walk.take()
            {
                let lane = self.hashing.lane.clone();
                self.listing = Some(Box::pin(async move {
                    lane.run(move || {
                        let batch: Vec<Entry> = walk.by_ref().take(WALK_BATCH).collect();
                        (walk, batch)
                    })
                    .await
                }));
            }
            if let Some(listing) = &mut self.listing
                && let Poll::Ready(listed) = listing.poll_unpin(cx)
            {
                self.listing = None;
                moved = true;
                match listed {
                    Ok((walk, batch)) => {
                        if batch.len() < WALK_BATCH {
                            self.walk_done = true;
                        } else {
                            self.walk = Some(walk);
                        }
                        self.listed.extend(batch);
                    }
                    Err(e) => self.fail(e),
                }
            }
            while self.in_groups < self.window && !self.listed.is_empty() {
                let n = self.listed.len().min(GROUP);
                let entries: Vec<Entry> = self.listed.drain(..n).collect();
                self.groups
                    .push_back(Box::pin(self.hashing.clone().group(entries)));
                self.sizes.push_back(n);
                self.in_groups += n;
            }
            match self.groups.poll_next_unpin(cx) {
                Poll::Ready(Some(done)) => {
                    self.in_groups -= self.sizes.pop_front().expect("one size per group");
                    match done {
                        Ok(records) => self.ready.extend(records),
                        Err(e) => self.fail(e),
                    }
                }
                Poll::Ready(None) if self.walk_done && self.listing.is_none() => {
                    return Poll::Ready(None);
                }
                _ if moved => {}
                _ => return Poll::Pending,
            }
        }
    }

    /// The pool failed (it is shutting down): one error record, then the end.
    fn fail(&mut self, e: PoolError) {
        self.walk_done = true;
        self.walk = None;
        self.listing = None;
        self.listed.clear();
        self.groups = FuturesOrdered::new();
        self.sizes.clear();
        self.in_groups = 0;
        self.ready.push_back(Record::Error {
            path: Vec::new(),
            error: e.into(),
        });
    }
}

impl Hashing {
    /// The records of `entries`, in order: one job for all of them, then
    /// the pieces of the big files, side by side.
    async fn group(self, entries: Vec<Entry>) -> Result<Vec<Record>, PoolError> {
        let this = self.clone();
        let steps = self
            .lane
            .run(move || {
                let mut budget = PIECE_MAX;
                entries
                    .into_iter()
                    .map(|e| this.step(e, &mut budget))
                    .collect::<Vec<Step>>()
            })
            .await?;
        if steps.iter().all(|s| matches!(s, Step::Done(_))) {
            return Ok(steps
                .into_iter()
                .map(|s| match s {
                    Step::Done(r) => r,
                    Step::Big { .. } => unreachable!("all done"),
                })
                .collect());
        }
        let each = steps.into_iter().map(|s| {
            let this = self.clone();
            async move {
                match s {
                    Step::Done(r) => Ok(r),
                    Step::Big { path, symlink } => this.hash_big(path, symlink).await,
                }
            }
        });
        futures_util::future::try_join_all(each).await
    }

    /// In a group job: opens one entry and hashes it whole if it fits in
    /// what is left of the group's `budget` of bytes.
    fn step(&self, entry: Entry, budget: &mut usize) -> Step {
        let (path, symlink) = match entry {
            Entry::File { path, symlink } => (path, symlink),
            Entry::Skipped { path, why } => return Step::Done(Record::Skipped { path, why }),
            Entry::Error { path, error } => {
                let error = ApiError::from_open(error, &String::from_utf8_lossy(&path));
                return Step::Done(Record::Error { path, error });
            }
        };
        let (path, mut file, meta) = match self.open(path, symlink) {
            Ok(opened) => opened,
            Err(r) => return Step::Done(r),
        };
        let key = match self.cached(&meta) {
            Ok(key) => key,
            Err(digests) => return Step::Done(Record::File { path, digests }),
        };
        let size = usize::try_from(meta.len()).unwrap_or(usize::MAX);
        if size > *budget {
            // Closed now, reopened by its pieces: no descriptor waits in a queue.
            return Step::Big { path, symlink };
        }
        *budget -= size;
        // Only a cache needs the time (a clock read per file otherwise).
        let started = self.cache.as_ref().map(|_| SystemTime::now());
        match hash_whole(&mut file, size, &self.algs) {
            Ok(digests) => {
                self.remember(key, &file, &digests, started);
                Step::Done(Record::File { path, digests })
            }
            Err(e) => Step::Done(read_error(path, e)),
        }
    }

    /// An opened file's digest-cache key (`None` without a cache), or, as
    /// `Err`, the digests the cache already holds for this version of it.
    fn cached(&self, meta: &Metadata) -> Result<Option<Key>, Digests> {
        let Some(cache) = &self.cache else {
            return Ok(None);
        };
        let key = Key::new(identity(meta), &self.algs);
        match cache.get(&key) {
            Some(digests) => Err(digests),
            None => Ok(Some(key)),
        }
    }

    /// Opens a listed file; the record to give instead when it cannot be.
    fn open(&self, path: Vec<u8>, symlink: bool) -> Result<(Vec<u8>, File, Metadata), Record> {
        match self.opener.open(&path, symlink) {
            Opened::File(file, meta) => Ok((path, file, meta)),
            Opened::Skipped(why) => Err(Record::Skipped { path, why }),
            Opened::Error(error) => {
                let error = ApiError::from_open(error, &String::from_utf8_lossy(&path));
                Err(Record::Error { path, error })
            }
        }
    }

    /// Caches `digests` of the version `key` names, if the file did not
    /// change while it was hashed.
    fn remember(
        &self,
        key: Option<Key>,
        file: &File,
        digests: &Digests,
        started: Option<SystemTime>,
    ) {
        // No fstat without a cache (the command line has none).
        if let (Some(cache), Some(before), Some(started)) = (&self.cache, key, started)
            && let Ok(meta) = file.metadata()
            && Key::new(identity(&meta), &self.algs) == before
        {
            cache.insert(before, digests, started);
        }
    }

    /// A file too big for a group: reopened in the job that hashes its first
    /// piece (one hand-off fewer per file), then hashed in `map_piece` jobs;
    /// or answered from the digest cache.
    async fn hash_big(self, path: Vec<u8>, symlink: bool) -> Result<Record, PoolError> {
        let this = self.clone();
        let opened = self
            .lane
            .run(move || {
                let (path, file, meta) = this.open(path, symlink).map_err(Box::new)?;
                let key = match this.cached(&meta) {
                    Ok(key) => key,
                    Err(digests) => return Err(Box::new(Record::File { path, digests })),
                };
                // Only a cache needs the time (a clock read per file otherwise).
                let started = this.cache.as_ref().map(|_| SystemTime::now());
                let mut pieces = Pieces::new(file, meta, &this.algs);
                let first = pieces.next();
                Ok((path, key, started, pieces, first))
            })
            .await?;
        let (path, key, started, pieces, first) = match opened {
            Ok(x) => x,
            Err(done) => return Ok(*done),
        };
        let hashed = match first {
            Ok(()) => pieces.finish(&self.lane).await,
            Err(t) => Err(t),
        };
        match hashed {
            Ok((file, digests)) => {
                self.remember(key, &file, &digests, started);
                Ok(Record::File { path, digests })
            }
            Err(Trouble::Read(e)) => Ok(read_error(path, e)),
            Err(Trouble::Shrank) => Ok(changed(path, "shrank")),
            Err(Trouble::Changed) => Ok(changed(path, "changed")),
            Err(Trouble::Pool(e)) => Err(e),
        }
    }
}

/// The record of a file that `how` (shrank, changed) while it was hashed:
/// no digest, as `GET /hash-file` answers 409 for it.
fn changed(path: Vec<u8>, how: &str) -> Record {
    let shown = String::from_utf8_lossy(&path);
    let error = ApiError::SourceChanged(format!("'{shown}' {how} while it was read"));
    Record::Error { path, error }
}

fn read_error(path: Vec<u8>, e: io::Error) -> Record {
    let shown = String::from_utf8_lossy(&path);
    let error = ApiError::Internal(format!("reading '{shown}': {e}"));
    Record::Error { path, error }
}

/// Hashes a file of `size` bytes (at its fstat) whole, in this thread's
/// buffer. Once `size` bytes are in, the read that would return 0 is not
/// made: the digest is of the file as its fstat saw it, as for a file that
/// grows just after it was read. A file longer than its size said (or a
/// size of 0, as /proc gives) is read to its end.
fn hash_whole(file: &mut File, size: usize, algs: &AlgorithmList) -> io::Result<Digests> {
    let mut hasher = MultiHasher::new(algs);
    with_buffer(PIECE_MAX, |buf| {
        let mut filled = 0;
        loop {
            let n = match file.read(&mut buf[filled..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            filled += n;
            if n == 0 || filled == size {
                break;
            }
            if filled == buf.len() {
                hasher.update(buf);
                filled = 0;
            }
        }
        hasher.update(&buf[..filled]);
        Ok(())
    })?;
    Ok(hasher.finish())
}

/// Why a file's pieces stopped.
enum Trouble {
    Read(io::Error),
    /// Shorter than its fstat said: truncated while it was read.
    Shrank,
    /// Written, truncated or touched while it was read.
    Changed,
    Pool(PoolError),
}

/// Hashes an open file to its end in `PIECE_MAX` jobs.
async fn hash_pieces(
    lane: &Lane,
    file: File,
    algs: &AlgorithmList,
) -> Result<(File, Digests), Trouble> {
    let mut state = (file, MultiHasher::new(algs), false);
    while !state.2 {
        let (mut file, mut hasher, _) = state;
        state = lane
            .run(move || {
                let done = with_buffer(PIECE_MAX, |buf| {
                    let n = read_full(&mut file, buf)?;
                    hasher.update(&buf[..n]);
                    Ok::<_, io::Error>(n < PIECE_MAX)
                });
                done.map(|done| (file, hasher, done))
            })
            .await
            .map_err(Trouble::Pool)?
            .map_err(Trouble::Read)?;
    }
    let (file, hasher, _) = state;
    Ok((file, hasher.finish()))
}

/// An open file hashed to the size its fstat gave, a piece of `map_piece`
/// bytes a job, each from a guarded mapping (`sys::map_guarded`): no copy
/// out of the page cache, and a file truncated meanwhile is `Shrank`, never
/// a crash nor a digest of bytes it never held.
struct Pieces {
    file: File,
    /// The fstat the pieces go by, compared with the file's at the end.
    before: Metadata,
    hasher: MultiHasher,
    /// Bytes hashed so far.
    at: u64,
    piece: usize,
}

impl Pieces {
    fn new(file: File, before: Metadata, algs: &AlgorithmList) -> Pieces {
        Pieces {
            file,
            before,
            hasher: MultiHasher::new(algs),
            at: 0,
            piece: map_piece(algs),
        }
    }

    fn done(&self) -> bool {
        self.at >= self.before.len()
    }

    /// In a pool job: hashes the next piece (nothing once all are done).
    fn next(&mut self) -> Result<(), Trouble> {
        let len = self
            .before
            .len()
            .saturating_sub(self.at)
            .min(self.piece as u64);
        if len > 0 {
            hash_window(&self.file, &mut self.hasher, self.at, len as usize)?;
            self.at += len;
        }
        Ok(())
    }

    /// The remaining pieces, a job each, then the digests.
    async fn finish(mut self, lane: &Lane) -> Result<(File, Digests), Trouble> {
        while !self.done() {
            self = lane
                .run(move || self.next().map(|()| self))
                .await
                .map_err(Trouble::Pool)??;
        }
        // A file cut within a page reads zeros past the cut without a
        // fault, and may have grown back since: any change of identity
        // (size, times) means the bytes hashed may be of no version of it.
        let after = self.file.metadata().map_err(Trouble::Read)?;
        if identity(&after) != identity(&self.before) {
            return Err(Trouble::Changed);
        }
        Ok((self.file, self.hasher.finish()))
    }
}

/// Hashes `len` bytes of `file` at `at`: from a guarded mapping, or read
/// through this thread's buffer when the window is small, every guard
/// window is taken, or the file system cannot map.
fn hash_window(file: &File, hasher: &mut MultiHasher, at: u64, len: usize) -> Result<(), Trouble> {
    if len >= MAP_MIN
        && let Ok(Some(map)) = crate::sys::map_guarded(file, at, len)
    {
        hasher.update(map.bytes());
        return if map.shrank() {
            Err(Trouble::Shrank)
        } else {
            Ok(())
        };
    }
    let mut done = 0;
    while done < len {
        let n = (len - done).min(PIECE_MAX);
        with_buffer(n, |buf| {
            // Short of `n` bytes: the file was cut after its fstat.
            file.read_exact_at(buf, at + done as u64)
                .map_err(|e| match e.kind() {
                    io::ErrorKind::UnexpectedEof => Trouble::Shrank,
                    _ => Trouble::Read(e),
                })?;
            hasher.update(buf);
            Ok(())
        })?;
        done += n;
    }
    Ok(())
}

/// Hashes one open file in `PIECE_MAX` jobs, as a manifest hashes a big one.
pub async fn hash_file(lane: Lane, path: Vec<u8>, file: File, algs: AlgorithmList) -> Record {
    match hash_pieces(&lane, file, &algs).await {
        Ok((_, digests)) => Record::File { path, digests },
        Err(Trouble::Read(e)) => read_error(path, e),
        Err(Trouble::Shrank) => changed(path, "shrank"),
        Err(Trouble::Changed) => changed(path, "changed"),
        Err(Trouble::Pool(e)) => Record::Error {
            path,
            error: e.into(),
        },
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu_pool::PoolLimits;
    use crate::digest_cache::RACY_WINDOW;
    use crate::metrics::Slot;
    use crate::tree::listing::SORT_IN_MEMORY;
    use std::time::Duration;

    fn manifest(root: &Arc<Root>, cache: &Arc<DigestCache>) -> Vec<(String, Digests)> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let limits = PoolLimits {
            threads: 2,
            queue: 64,
            max_wait: Duration::from_secs(60),
            priority: crate::cpu_pool::PoolPriority::Low,
        };
        let pool = CpuPool::new(limits, Box::leak(Slot::new_boxed()));
        let algs = AlgorithmList::default_list();
        rt.block_on(async {
            let mut m = Manifest::start(
                &pool,
                root.clone(),
                None,
                &algs,
                Some(cache.clone()),
                Options {
                    sort_in_memory: SORT_IN_MEMORY,
                },
            )
            .await
            .unwrap();
            let mut out = Vec::new();
            while let Some(r) = m.next().await {
                match r {
                    Record::File { path, digests } => {
                        out.push((String::from_utf8(path).unwrap(), digests))
                    }
                    r => panic!("{r:?}"),
                }
            }
            out
        })
    }

    /// Both paths, a small file hashed inside its group and a big one hashed
    /// in pieces, answer from the digest cache and fill it.
    #[test]
    fn small_and_big_files_use_and_fill_the_digest_cache() {
        let t = tempfile::tempdir().unwrap();
        let big = vec![7u8; PIECE_MAX + 1];
        std::fs::write(t.path().join("big"), &big).unwrap();
        std::fs::write(t.path().join("small"), b"small").unwrap();
        let root = Arc::new(Root::open(t.path()).unwrap());
        let algs = AlgorithmList::default_list();
        let key = |name: &str| {
            let meta = std::fs::metadata(t.path().join(name)).unwrap();
            Key::new(identity(&meta), &algs)
        };

        // Planted entries (as if hashed well after the files' last change)
        // are what a manifest that asks the cache reports.
        let planted = Arc::new(DigestCache::new(1 << 20));
        let fake = Digests {
            bytes: 1,
            entries: vec![(algs.as_slice()[0], "00".repeat(32))],
        };
        let later = SystemTime::now() + 2 * RACY_WINDOW;
        planted.insert(key("big"), &fake, later);
        planted.insert(key("small"), &fake, later);
        let got = manifest(&root, &planted);
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|(_, d)| *d == fake), "{got:?}");

        // Files older than the racy window are learnt, with their real digests.
        std::thread::sleep(RACY_WINDOW + Duration::from_millis(100));
        let learnt = Arc::new(DigestCache::new(1 << 20));
        let got = manifest(&root, &learnt);
        let hex = |data: &[u8]| -> String {
            Sha256::digest(data)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        assert_eq!(got[0].0, "big");
        assert_eq!(got[0].1.entries[0].1, hex(&big));
        assert_eq!(got[1].1.entries[0].1, hex(b"small"));
        assert_eq!(learnt.get(&key("big")), Some(got[0].1.clone()));
        assert_eq!(learnt.get(&key("small")), Some(got[1].1.clone()));
    }
}
