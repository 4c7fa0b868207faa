//! `POST /hash` and `GET /hash-file/{path}`.

use std::fs::File;
use std::io::{self, Read};
use std::time::SystemTime;

use axum::Json;
use axum::extract::{RawQuery, Request, State};
use serde_json::{Value, json};

use super::AppState;
use super::body::BodyReader;
use super::query::Query;
use crate::digest_cache::Key;
use crate::error::ApiError;
use crate::kernel::{Digests, MultiHasher};
use crate::metrics::{Direction, Op};
use crate::root::RelPath;

/// Bytes a pool job reads and hashes before yielding the thread: 1 MiB is
/// ~0.5 ms of SHA-256, short enough to keep the queue moving.
pub const FILE_CHUNK: usize = 1 << 20;

/// The digest of the request body. Hashing runs inline on the I/O thread:
/// a 64 KiB chunk hashes in ~30 µs, less than a hand-off to another thread
/// costs, and the body arrives no faster than it can be hashed.
pub async fn hash_body(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    let algs = Query::parse(q.as_deref(), &["alg"])?.algorithms()?;
    let mut body = BodyReader::new(req, st.max_body, st.body_read_timeout)?;
    let mut hasher = MultiHasher::new(&algs);
    while let Some(chunk) = body.next().await? {
        hasher.update(&chunk);
    }
    st.metrics
        .add_bytes(Op::Hash, Direction::In, hasher.bytes());
    Ok(Json(digest_json(&hasher.finish(), None)))
}

/// The digest of a file under the root, hashed on the CPU pool one chunk per job.
pub async fn hash_file(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    let algs = Query::parse(q.as_deref(), &["alg"])?.algorithms()?;
    let rel = path_after(req.uri().path(), "/hash-file/")?;
    let shown = rel.display();
    let root = st.root.clone();
    let cache = st.digest_cache.clone();
    let shown2 = shown.clone();
    let started = SystemTime::now();
    // The first job opens the file: a request that cannot get a pool slot is
    // refused before touching the disk.
    let first = st
        .pool
        .try_run(move || {
            let (mut file, _) = root
                .open_file(&rel)
                .map_err(|e| ApiError::from_open(e, &shown2))?;
            let key = match &cache {
                Some(cache) => {
                    let meta = file.metadata().map_err(|e| read_error(e, &shown2))?;
                    let key = Key::new(&meta, &algs);
                    if let Some(hit) = cache.get(&key) {
                        return Ok(Step::Cached(hit));
                    }
                    Some(key)
                }
                None => None,
            };
            let mut hasher = MultiHasher::new(&algs);
            let done = hash_chunk(&mut file, &mut hasher).map_err(|e| read_error(e, &shown2))?;
            Ok::<_, ApiError>(Step::Hashing {
                file,
                hasher,
                done,
                key,
            })
        })
        .await??;
    let (mut file, mut hasher, mut done, key) = match first {
        Step::Cached(digests) => {
            st.metrics.add_digest_cache(true);
            return Ok(Json(digest_json(&digests, Some(&shown))));
        }
        Step::Hashing {
            file,
            hasher,
            done,
            key,
        } => (file, hasher, done, key),
    };
    while !done {
        let shown = shown.clone();
        // If the client goes away, this future is dropped and no further job
        // is queued: the file is not read past the current chunk.
        (file, hasher, done) = st
            .pool
            .run(move || {
                let done = hash_chunk(&mut file, &mut hasher).map_err(|e| read_error(e, &shown))?;
                Ok::<_, ApiError>((file, hasher, done))
            })
            .await??;
    }
    st.metrics
        .add_bytes(Op::Hash, Direction::In, hasher.bytes());
    let digests = hasher.finish();
    if let (Some(cache), Some(before)) = (&st.digest_cache, key) {
        st.metrics.add_digest_cache(false);
        // Same identity after the last read as at open: the digest is of
        // one version of the file, and may be reused for that version.
        if let Ok(meta) = file.metadata() {
            let after = before.refreshed(&meta);
            cache.insert(before, &after, &digests, started);
        }
    }
    Ok(Json(digest_json(&digests, Some(&shown))))
}

/// What the first job of `hash_file` found.
enum Step {
    Cached(Digests),
    Hashing {
        file: File,
        hasher: MultiHasher,
        done: bool,
        /// The cache key taken at open, when the cache is on.
        key: Option<Key>,
    },
}

/// Reads up to `FILE_CHUNK` bytes into the hasher; true at end of file.
fn hash_chunk(file: &mut File, hasher: &mut MultiHasher) -> io::Result<bool> {
    with_buffer(|buf| {
        let n = read_full(file, buf)?;
        hasher.update(&buf[..n]);
        Ok(n < buf.len())
    })
}

thread_local! {
    /// One read buffer per pool thread, reused by every job it runs.
    static BUFFER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; FILE_CHUNK]);
}

/// Runs `f` with this thread's `FILE_CHUNK`-byte buffer.
pub fn with_buffer<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    BUFFER.with(|b| f(&mut b.borrow_mut()))
}

/// Fills `buf` unless the file ends first; returns the bytes read.
pub fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

pub fn read_error(e: io::Error, shown: &str) -> ApiError {
    ApiError::Internal(format!("reading '{shown}': {e}"))
}

/// Parses the file path that follows `prefix` in the raw (still encoded) URL path.
pub fn path_after(uri_path: &str, prefix: &str) -> Result<RelPath, ApiError> {
    let raw = uri_path.strip_prefix(prefix).unwrap_or("");
    RelPath::parse(raw).map_err(ApiError::from_path)
}

fn digest_json(d: &Digests, path: Option<&str>) -> Value {
    let (alg, hex) = d.primary();
    let digests: serde_json::Map<String, Value> = d
        .entries
        .iter()
        .map(|(a, h)| (a.name().to_string(), Value::String(h.clone())))
        .collect();
    let mut v = json!({
        "hash": hex,
        "algorithm": alg.name(),
        "bytes": d.bytes,
        "digests": digests,
    });
    if let Some(p) = path {
        v["path"] = Value::String(p.to_string());
    }
    v
}
