//! The one way handlers read a source and write an output: admission to the
//! CPU pool, open, the piece-by-piece loop on the pool, and the key named in
//! every error. Handlers bring the synchronous kernel step; where each part
//! runs is the storage backend's to say (`Work`, `Piece`), never theirs.

use std::sync::{Arc, Mutex};

use futures_util::FutureExt;

use super::AppState;
use super::body::mismatch;
use super::digest_fields::Expected;
use crate::cpu_pool::{Lane, PoolError, WorkKind};
use crate::error::ApiError;
use crate::kernel::{AlgorithmList, MultiHasher};
use crate::metrics::Slot;
use crate::root::RelPath;
use crate::storage::{Identity, Object, PIECE_MAX, Piece, StorageError, Upload, Work};

/// Parses the key that follows `prefix` in the raw (still encoded) URL path.
pub fn path_after(uri_path: &str, prefix: &str) -> Result<RelPath, ApiError> {
    let raw = uri_path.strip_prefix(prefix).unwrap_or("");
    RelPath::parse(raw).map_err(ApiError::from_path)
}

/// Runs a backend's `Work` where it belongs, in the request's lane. With
/// `admit` this is the request's first use of the pool: refused at once
/// (503) when the pool is too busy, before the disk or the store is touched.
async fn run<T: Send + 'static>(
    lane: &Lane,
    work: Work<T>,
    admit: bool,
) -> Result<Result<T, StorageError>, PoolError> {
    match work {
        Work::Blocking(f) if admit => lane.try_run(f).await,
        Work::Blocking(f) => lane.run(f).await,
        Work::Async(fut) => {
            if admit {
                lane.try_run(|| ()).await?;
            }
            Ok(fut.await)
        }
    }
}

/// A source opened for one request, read front to back.
pub struct Source {
    /// The request's way into the CPU pool; every job of it goes there.
    lane: Lane,
    /// Whether the lane has passed admission: the open ran as its first
    /// job, or `plan` admitted it (a source opened without the pool).
    admitted: bool,
    obj: Box<dyn Object>,
    /// A piece taken from `obj` but not used yet (`fold_now` found it was
    /// not in memory), handed out first by `next`. At most `PIECE_MAX`.
    held: Option<Piece>,
    /// The key as the client wrote it, for answers and errors.
    shown: Arc<str>,
    /// `verify`: the digests the client declared, and their hasher, fed
    /// by each `step`'s pool job (one job at a time: the lock is never
    /// contended).
    check: Option<(Expected, SharedHasher, &'static Slot)>,
}

/// A hasher lent to each pool job in turn; `None` once finished.
type SharedHasher = Arc<Mutex<Option<MultiHasher>>>;

impl Source {
    /// Opens the source: right here when the backend can do it without
    /// blocking (a hot local file), else as the request's first pool job,
    /// which is its admission.
    pub async fn open(st: &AppState, rel: &RelPath) -> Result<Source, ApiError> {
        let shown: Arc<str> = Arc::from(rel.display());
        let lane = st.pool.lane();
        let (obj, admitted) = match st.storage.open_now(rel) {
            Some(opened) => (opened, false),
            None => (run(&lane, st.storage.open(rel), true).await?, true),
        };
        let obj = obj.map_err(|e| ApiError::from_storage(e, &shown, false))?;
        Ok(Source {
            lane,
            admitted,
            obj,
            held: None,
            shown,
            check: None,
        })
    }

    /// Checks the bytes `step` reads against the digests the request's
    /// `Content-Digest` declares, if it has one: `check_unchanged` then
    /// fails (`digest_mismatch`) when they differ, before anything is
    /// committed.
    pub fn verify(
        &mut self,
        headers: &axum::http::HeaderMap,
        metrics: &'static Slot,
    ) -> Result<(), ApiError> {
        if let Some(expected) = Expected::from_headers(headers)? {
            let hasher = MultiHasher::new(&AlgorithmList::of(expected.algorithms()));
            self.check = Some((expected, Arc::new(Mutex::new(Some(hasher))), metrics));
        }
        Ok(())
    }

    /// Admission by size, once the request knows it will read the whole
    /// source for `work` on the pool (a digest-cache hit or a `fold_now` will
    /// not): refused at once (503) when the pool is too busy, or when
    /// sharing it with the work already planned would make it wait too
    /// long. Before any pool job of the request.
    /// `weight` scales the bytes to the work's reference cost (a codec's
    /// level against its default; 1 for a hash).
    pub fn plan(&mut self, work: WorkKind, weight: f64) -> Result<(), ApiError> {
        if !self.admitted {
            self.lane.admit()?;
            self.admitted = true;
        }
        let bytes = (self.size() as f64 * weight) as u64;
        Ok(self.lane.plan(work, bytes)?)
    }

    /// Folds a source of at most `max` bytes right here, on the I/O thread,
    /// when it was opened without blocking and none of its bytes has to wait
    /// for a device: for a small hot file a digest costs less than a
    /// hand-off to the pool (64 KiB of SHA-256: ~30 µs), and it never waits
    /// behind busy pool threads. `Err` gives the state back untouched: fold
    /// on the pool instead (after `plan`).
    pub fn fold_now<S>(
        &mut self,
        mut state: S,
        max: u64,
        f: fn(&mut S, &[u8]),
    ) -> Result<Result<S, S>, ApiError> {
        // Opened on the pool: this backend (or this path) may block.
        if self.admitted || self.size() > max.min(PIECE_MAX as u64) {
            return Ok(Err(state));
        }
        // A local object describes its next piece without waiting.
        let piece = match self.obj.next(PIECE_MAX).now_or_never() {
            Some(Ok(Some(piece))) => piece,
            Some(Ok(None)) => return Ok(Ok(state)),
            Some(Err(e)) => return Err(ApiError::from_storage(e, &self.shown, false)),
            None => return Ok(Err(state)),
        };
        match piece.with_bytes_now(|bytes| f(&mut state, bytes)) {
            Some(done) => {
                done.map_err(|e| ApiError::from_storage(e, &self.shown, false))?;
                Ok(Ok(state))
            }
            None => {
                // Not in the page cache: the pool reads it, from this piece.
                self.held = Some(piece);
                Ok(Err(state))
            }
        }
    }

    /// Whether `verify` found a declared digest: the bytes must then go
    /// through `step`, in order, to be checked.
    pub fn verifying(&self) -> bool {
        self.check.is_some()
    }

    /// The request's lane, for jobs of its own (parallel blocks, the end).
    pub fn lane(&self) -> Lane {
        self.lane.clone()
    }

    pub fn shown(&self) -> &str {
        &self.shown
    }

    pub fn shown_arc(&self) -> Arc<str> {
        Arc::clone(&self.shown)
    }

    pub fn size(&self) -> u64 {
        self.obj.meta().size
    }

    pub fn identity(&self) -> &Identity {
        &self.obj.meta().identity
    }

    /// The next piece, at most `max` bytes, for a pool job; `None` at the end.
    pub async fn next(&mut self, max: usize) -> Result<Option<Piece>, ApiError> {
        if let Some(piece) = self.held.take() {
            let (piece, rest) = piece.split(max);
            self.held = rest;
            return Ok(Some(piece));
        }
        let shown = &self.shown;
        self.obj
            .next(max)
            .await
            .map_err(|e| ApiError::from_storage(e, shown, false))
    }

    /// Runs `f` on the next piece (at most `PIECE_MAX`) in a pool job,
    /// carrying `state` in and out; `None` for the result at the end. If the
    /// client goes away, this future is dropped and no further job is queued.
    pub async fn step<S, R>(
        &mut self,
        state: S,
        f: impl FnOnce(&mut S, &[u8]) -> Result<R, ApiError> + Send + 'static,
    ) -> Result<(S, Option<R>), ApiError>
    where
        S: Send + 'static,
        R: Send + 'static,
    {
        self.step_with(state, f, false).await
    }

    /// `step`; with `mapped`, a big enough local piece is given to `f`
    /// straight from the page cache (`Piece::with_bytes_mapped`), and `f`'s
    /// state must then be one the caller drops on an error.
    async fn step_with<S, R>(
        &mut self,
        mut state: S,
        f: impl FnOnce(&mut S, &[u8]) -> Result<R, ApiError> + Send + 'static,
        mapped: bool,
    ) -> Result<(S, Option<R>), ApiError>
    where
        S: Send + 'static,
        R: Send + 'static,
    {
        let Some(piece) = self.next(PIECE_MAX).await? else {
            // All read: what it cost teaches the pool the cost per byte.
            self.lane.done();
            return Ok((state, None));
        };
        let shown = self.shown_arc();
        let hasher = self.check.as_ref().map(|(_, h, _)| Arc::clone(h));
        self.lane
            .run(move || {
                let use_bytes = |bytes: &[u8]| {
                    if let Some(h) = &hasher
                        && let Some(h) = h.lock().unwrap_or_else(|p| p.into_inner()).as_mut()
                    {
                        h.update(bytes);
                    }
                    f(&mut state, bytes)
                };
                let r = if mapped {
                    piece.with_bytes_mapped(use_bytes)
                } else {
                    piece.with_bytes(use_bytes)
                };
                let r = r.map_err(|e| ApiError::from_storage(e, &shown, false))??;
                Ok((state, Some(r)))
            })
            .await?
    }

    /// Runs `f` on every piece, in order, one pool job each. Local pieces
    /// come from guarded mappings, without a copy: `state` is a digest
    /// being computed, dropped if the source shrank (`Changed`).
    pub async fn fold<S: Send + 'static>(
        &mut self,
        mut state: S,
        f: fn(&mut S, &[u8]),
    ) -> Result<S, ApiError> {
        loop {
            let (s, more) = self
                .step_with(
                    state,
                    move |s, bytes| {
                        f(s, bytes);
                        Ok(())
                    },
                    true,
                )
                .await?;
            state = s;
            if more.is_none() {
                return Ok(state);
            }
        }
    }

    /// After the last piece: the bytes read were one version of the source
    /// (409 otherwise: a file rewritten or deleted, an object overwritten),
    /// and the one the client declared (`verify`; 400 otherwise).
    pub fn check_unchanged(&self) -> Result<(), ApiError> {
        let after = self
            .obj
            .identity_after()
            .map_err(|e| ApiError::from_storage(e, &self.shown, false))?;
        if after != *self.identity() {
            return Err(ApiError::SourceChanged(format!(
                "'{}' changed while it was read",
                self.shown
            )));
        }
        if let Some((expected, hasher, metrics)) = &self.check
            && let Some(h) = hasher.lock().unwrap_or_else(|p| p.into_inner()).take()
        {
            expected
                .check(&h.finish())
                .map_err(|m| mismatch(metrics, m))?;
        }
        Ok(())
    }
}

/// An output being written; nothing appears under its name until `commit`
/// has finished, and a dropped `Output` leaves nothing behind.
pub struct Output {
    upload: Box<dyn Upload>,
    shown: Arc<str>,
}

impl Output {
    /// Starts the output of a request admitted already, in its `lane`.
    pub async fn create(st: &AppState, lane: &Lane, rel: &RelPath) -> Result<Output, ApiError> {
        let shown: Arc<str> = Arc::from(rel.display());
        let upload = run(lane, st.storage.create(rel), false)
            .await?
            .map_err(|e| ApiError::from_storage(e, &shown, true))?;
        Ok(Output { upload, shown })
    }

    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Appends `data`; in a pool job.
    pub fn write(&mut self, data: &[u8]) -> Result<(), ApiError> {
        self.upload
            .write(data)
            .map_err(|e| ApiError::from_storage(e, &self.shown, true))
    }

    /// Appends `data` on the request's task when the backend can do it
    /// without blocking, else in a pool job of `lane`.
    pub async fn write_anywhere(mut self, lane: &Lane, data: Vec<u8>) -> Result<Self, ApiError> {
        if let Some(r) = self.upload.write_now(&data) {
            r.map_err(|e| ApiError::from_storage(e, &self.shown, true))?;
            return Ok(self);
        }
        lane.run(move || {
            self.write(&data)?;
            Ok::<_, ApiError>(self)
        })
        .await?
    }

    /// After each job that wrote: lets the backend send what it buffered.
    pub async fn flush(&mut self) -> Result<(), ApiError> {
        let shown = &self.shown;
        self.upload
            .flush()
            .await
            .map_err(|e| ApiError::from_storage(e, shown, true))
    }

    /// Makes the output visible, complete.
    pub async fn commit(self, lane: &Lane) -> Result<(), ApiError> {
        let Output { upload, shown } = self;
        run(lane, upload.commit(), false)
            .await?
            .map_err(|e| ApiError::from_storage(e, &shown, true))
    }
}
