//! `POST /hash` and `GET /hash-file/{path}`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::AppState;
use super::body::{BodyReader, mismatch};
use super::digest_fields::Expected;
use super::file_job::{Source, path_after};
use super::query::Query;
use crate::cpu_pool::{Pending, WorkKind};
use crate::digest_cache::Key;
use crate::error::ApiError;
use crate::kernel::{Digests, Encoding, MultiHasher};
use crate::metrics::{Direction, Op};

/// Body bytes hashed on the I/O thread as they arrive: a small body hashes
/// in less time than a hand-off to the pool costs (64 KiB: ~30 µs).
pub const INLINE_BODY: u64 = 1 << 20;

/// A file this small whose bytes are in the page cache is hashed on the
/// I/O thread too (`Source::fold_now`), without a pool job: a small hot
/// file then never waits behind a pool busy with big work. Smaller than
/// `INLINE_BODY`, because these bytes are copied from the cache first
/// where a body's had to be read from the socket anyway.
pub const INLINE_FILE: u64 = 256 << 10;

/// Past `INLINE_BODY` the body goes to the pool in batches, one hashing while
/// the next is read. A long upload then holds neither the I/O thread (in a
/// cluster worker, its only one) nor a core for its reading, and two uploads
/// that landed on the same worker hash on two cores. A body holds at most two
/// batches; the batches of all bodies being offloaded in this process share
/// `BATCH_BUDGET` bytes, each batch within `BATCH_MIN..=BATCH_MAX`: two
/// uploads get 2 MiB batches (few hand-offs), 32 get 128 KiB ones.
const BATCH_BUDGET: usize = 8 << 20;
const BATCH_MIN: usize = 128 << 10;
const BATCH_MAX: usize = 2 << 20;

/// Bodies of this process now hashing on the pool.
static OFFLOADED: AtomicUsize = AtomicUsize::new(0);

/// Counts one offloaded body for as long as it lives.
struct Offloaded;

impl Offloaded {
    fn start() -> Offloaded {
        OFFLOADED.fetch_add(1, Ordering::Relaxed);
        Offloaded
    }

    /// The batch size for a body now.
    fn batch(&self) -> usize {
        let bodies = OFFLOADED.load(Ordering::Relaxed).max(1);
        (BATCH_BUDGET / (2 * bodies)).clamp(BATCH_MIN, BATCH_MAX)
    }
}

impl Drop for Offloaded {
    fn drop(&mut self) {
        OFFLOADED.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The digest of the request body.
pub async fn hash_body(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
    req: Request,
) -> Result<Response, ApiError> {
    let query = Query::parse(q.as_deref(), &["alg", "encoding"])?;
    let (algs, enc) = (query.algorithms()?, query.encoding()?);
    // A Content-Digest is checked in the same pass: its algorithms are
    // computed after the ones asked for, and left out of the answer.
    let expected = Expected::from_headers(req.headers())?;
    let mut computed = algs.clone();
    if let Some(e) = &expected {
        computed.add(e.algorithms());
    }
    let reply = Reply {
        expected,
        shown: algs.as_slice().len(),
        enc,
    };
    let mut body = BodyReader::new(req, st.config.max_body, st.config.body_read_timeout)?;
    let mut hasher = MultiHasher::new(&computed);
    // Digests at memory speed cost less than reading the socket: a hand-off
    // to the pool would only add a wake-up and move the bytes to another
    // core's cache, so the whole body is hashed here as it arrives.
    let inline = if computed.at_memory_speed() {
        u64::MAX
    } else {
        INLINE_BODY
    };
    while hasher.bytes() < inline {
        match body.next().await? {
            Some(chunk) => hasher.update(&chunk),
            None => return reply.body_digest(&st, hasher.finish()),
        }
    }
    let offloaded = Offloaded::start();
    // Not admitted: the upload is under way, and shedding it now would
    // waste what was read. Its batches wait for room like any continuation.
    let lane = st.pool.lane();
    // Several dear digests are computed as two sets of about equal cost,
    // each batch hashed by two jobs at once when the pool has no backlog
    // (SHA-256, SHA-512, BLAKE3 and MD5 over 64 MiB: 287 MiB/s on two
    // threads against 161 on one), by one job otherwise.
    let mut parts = match computed.halves() {
        Some(halves) if st.pool.threads() > 1 => hasher.split(&halves).into(),
        _ => vec![hasher],
    };
    // The hashers are either here or inside the jobs that hold them, in order.
    let mut in_flight: Vec<Pending<Vec<MultiHasher>>> = Vec::new();
    let mut batch: Vec<Bytes> = Vec::new();
    let mut batch_len = 0;
    loop {
        let chunk = body.next().await?;
        let end = chunk.is_none();
        if let Some(chunk) = chunk {
            batch_len += chunk.len();
            batch.push(chunk);
        }
        if batch_len >= offloaded.batch() || (end && batch_len > 0) {
            for job in in_flight.drain(..) {
                parts.extend(job.wait().await?);
            }
            let work = std::mem::take(&mut batch);
            batch_len = 0;
            let groups: Vec<Vec<MultiHasher>> = if parts.len() > 1 && st.pool.no_backlog() {
                parts.drain(..).map(|h| vec![h]).collect()
            } else {
                vec![std::mem::take(&mut parts)]
            };
            for mut group in groups {
                // A clone of the batch is a reference count per chunk.
                let work = work.clone();
                in_flight.push(
                    lane.submit(move || {
                        for hasher in &mut group {
                            for piece in &work {
                                hasher.update(piece);
                            }
                        }
                        group
                    })
                    .await?,
                );
            }
        }
        if end {
            break;
        }
    }
    for job in in_flight {
        parts.extend(job.wait().await?);
    }
    let digests = Digests::joined(&computed, parts.into_iter().map(MultiHasher::finish));
    reply.body_digest(&st, digests)
}

/// What `POST /hash` answers once the body is hashed.
struct Reply {
    expected: Option<Expected>,
    /// The digests asked for: the first `shown` of those computed.
    shown: usize,
    enc: Encoding,
}

impl Reply {
    fn body_digest(self, st: &AppState, mut digests: Digests) -> Result<Response, ApiError> {
        st.metrics.add_bytes(Op::Hash, Direction::In, digests.bytes);
        if let Some(e) = &self.expected {
            e.check(&digests).map_err(|m| mismatch(st.metrics, m))?;
        }
        digests.entries.truncate(self.shown);
        Ok(digest_response(&digests, None, self.enc))
    }
}

/// The digest of a file or object under the root, hashed on the CPU pool
/// one piece per job.
pub async fn hash_file(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
    req: Request,
) -> Result<Response, ApiError> {
    let query = Query::parse(q.as_deref(), &["alg", "encoding"])?;
    let (algs, enc) = (query.algorithms()?, query.encoding()?);
    let rel = path_after(req.uri().path(), "/hash-file/")?;
    let started = SystemTime::now();
    let mut src = Source::open(&st, &rel).await?;
    let key = st
        .digest_cache
        .as_ref()
        .map(|_| Key::new(src.identity().clone(), &algs));
    if let (Some(cache), Some(key)) = (&st.digest_cache, &key)
        && let Some(hit) = cache.get(key)
    {
        st.metrics.add_digest_cache(true);
        return Ok(digest_response(&hit, Some(src.shown()), enc));
    }
    let update: fn(&mut MultiHasher, &[u8]) = |h, bytes| h.update(bytes);
    let hasher = match src.fold_now(MultiHasher::new(&algs), INLINE_FILE, update)? {
        Ok(hasher) => hasher,
        Err(hasher) => {
            src.plan(WorkKind::Hash, 1.0)?;
            src.fold(hasher, update).await?
        }
    };
    // One version of the source, or no digest at all.
    src.check_unchanged()?;
    st.metrics
        .add_bytes(Op::Hash, Direction::In, hasher.bytes());
    let digests = hasher.finish();
    if let (Some(cache), Some(key)) = (&st.digest_cache, key) {
        st.metrics.add_digest_cache(false);
        cache.insert(key, &digests, started);
    }
    Ok(digest_response(&digests, Some(src.shown()), enc))
}

/// The JSON answer of both endpoints, written directly: keys in
/// alphabetical order (`algorithm`, `bytes`, `digests` by name, `hash`,
/// `path`). Building a `serde_json::Value` for it cost more than hashing a
/// small body (a dozen allocations and an escaping pass over hex digits).
fn digest_response(d: &Digests, path: Option<&str>, enc: Encoding) -> Response {
    let (alg, hex) = d.primary();
    let mut out = String::with_capacity(96 + 150 * d.entries.len() + path.map_or(0, str::len));
    // Algorithm names and hex digits need no escaping.
    out.push_str(r#"{"algorithm":""#);
    out.push_str(alg.name());
    out.push_str(r#"","bytes":"#);
    out.push_str(itoa::Buffer::new().format(d.bytes));
    out.push_str(r#","digests":{"#);
    // By name; the usual single digest needs no sorting (nor a Vec to sort in).
    if d.entries.len() == 1 {
        push_digests(&mut out, d.entries.iter(), enc);
    } else {
        let mut by_name: Vec<_> = d.entries.iter().collect();
        by_name.sort_unstable_by_key(|(a, _)| a.name());
        push_digests(&mut out, by_name.into_iter(), enc);
    }
    out.push_str(r#"},"hash":""#);
    // Hex digits and base64 (A-Z a-z 0-9 + / =) need no JSON escaping.
    out.push_str(&enc.render(hex));
    out.push('"');
    if let Some(p) = path {
        out.push_str(r#","path":"#);
        // Paths are arbitrary UTF-8: let serde_json escape them.
        out.push_str(&serde_json::to_string(p).expect("a str always serializes"));
    }
    out.push('}');
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        out,
    )
        .into_response()
}

fn push_digests<'a>(
    out: &mut String,
    entries: impl Iterator<Item = &'a (crate::kernel::Algorithm, String)>,
    enc: Encoding,
) {
    for (i, (a, h)) in entries.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        out.push_str(a.name());
        out.push_str(r#"":""#);
        out.push_str(&enc.render(h));
        out.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::Algorithm;

    async fn body_of(resp: Response) -> serde_json::Value {
        use http_body_util::BodyExt;
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).expect("valid JSON")
    }

    /// The hand-written answer parses, and says what the old
    /// `serde_json::json!` one said, for one and several digests and for
    /// paths that need escaping.
    #[tokio::test]
    async fn digest_response_is_the_json_it_claims() {
        let d = Digests {
            bytes: 5,
            entries: vec![
                (Algorithm::Sha256, "ab".repeat(32)),
                (Algorithm::Blake3, "cd".repeat(32)),
                (Algorithm::Crc32c, "0badf00d".into()),
            ],
        };
        for path in [None, Some("a/b.txt"), Some("we\"ird\\ \u{1}\n é.bin")] {
            let resp = digest_response(&d, path, Encoding::Hex);
            assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
            let mut want = serde_json::json!({
                "algorithm": "sha256",
                "bytes": 5,
                "hash": "ab".repeat(32),
                "digests": {
                    "sha256": "ab".repeat(32),
                    "blake3": "cd".repeat(32),
                    "crc32c": "0badf00d",
                },
            });
            if let Some(p) = path {
                want["path"] = p.into();
            }
            assert_eq!(body_of(resp).await, want);
        }
    }
}
