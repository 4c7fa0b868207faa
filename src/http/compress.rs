//! `GET /compress/{path}`, `POST /compress` and `POST /compress/{path}`.
//!
//! All three take `?format=gzip|zstd` and `?level=` (`Query::codec`) and
//! feed the codec's streaming encoder (`kernel::Encode`) on the CPU pool, one
//! chunk per job, carrying the encoder from job to job; inputs of 4 MiB or
//! more go to the parallel path (`parallel_compress`). Responses stream: a
//! chunk is compressed only when the client has taken the previous one, so
//! a slow reader slows the work down instead of growing a buffer.

use axum::Json;
use axum::body::Body;
use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};

use super::AppState;
use super::body::BodyReader;
use super::file_job::{Output, Source, path_after};
use super::hash::INLINE_BODY;
use super::parallel_compress::{self, AUTO_PARALLEL_BYTES};
use super::query::Query;
use super::sent_digest::SourceIdentity;
use crate::cpu_pool::{Lane, WorkKind};
use crate::error::ApiError;
use crate::kernel::{Codec, Encode, Format};
use crate::metrics::{Direction, Op};

fn compressed_response(codec: Codec, body: Body) -> Response {
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(codec.format().content_type()),
    );
    resp
}

/// What the pool learns the cost of, for this codec: per byte at the
/// codec's default level, the bytes planned being scaled by the level's
/// `relative_cost`, so one learned figure prices every level.
fn work(codec: Codec) -> WorkKind {
    match codec.format() {
        Format::Gzip => WorkKind::Gzip,
        Format::Zstd => WorkKind::Zstd,
    }
}

/// Ends a response body that has already started: the client sees a cut
/// stream (an incomplete gzip member or zstd frame), the log sees why.
/// The `ApiError` rides inside, for a caller that has not answered yet
/// (`ApiError::from_stream`).
pub(super) fn stream_error(e: ApiError) -> std::io::Error {
    std::io::Error::other(e)
}

/// A file or object under the root, compressed, streamed back.
pub async fn compress_file(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
    req: Request,
) -> Result<Response, ApiError> {
    let query = Query::parse(q.as_deref(), &["format", "level", "parallel"])?;
    let codec = query.codec()?;
    let parallel = query.parallel()?;
    let rel = path_after(req.uri().path(), "/compress/")?;
    let mut src = Source::open(&st, &rel).await?;
    src.plan(work(codec), codec.relative_cost())?;
    // What the bytes sent are made from, for their digest (`sent_digest`).
    let made_from = SourceIdentity(src.identity().clone());
    if parallel.unwrap_or(src.size() >= AUTO_PARALLEL_BYTES) {
        let mut resp = compressed_response(codec, parallel_compress::file_body(&st, src, codec));
        resp.extensions_mut().insert(made_from);
        return Ok(resp);
    }

    struct Progress {
        st: AppState,
        src: Source,
        /// None once the stream's end has been sent, or the stream cut.
        enc: Option<Box<dyn Encode>>,
        counted_in: u64,
        counted_out: u64,
    }
    impl Progress {
        fn count(&mut self, enc: &dyn Encode) {
            let m = &self.st.metrics;
            m.add_bytes(
                Op::Compress,
                Direction::In,
                enc.bytes_in() - self.counted_in,
            );
            m.add_bytes(
                Op::Compress,
                Direction::Out,
                enc.bytes_out() - self.counted_out,
            );
            self.counted_in = enc.bytes_in();
            self.counted_out = enc.bytes_out();
        }
    }
    let start = Progress {
        st: st.clone(),
        src,
        enc: Some(codec.encoder()),
        counted_in: 0,
        counted_out: 0,
    };
    let stream = futures_util::stream::unfold(start, |mut p| async move {
        loop {
            let enc = p.enc.take()?;
            // Headers are gone already: on an error all we can do is cut the
            // stream, which the client sees as an incomplete gzip member.
            match p.src.step(enc, |e, bytes| Ok(e.encode(bytes, false))).await {
                Ok((enc, Some(out))) => {
                    p.count(&*enc);
                    p.enc = Some(enc);
                    if !out.is_empty() {
                        return Some((Ok::<_, std::io::Error>(Bytes::from(out)), p));
                    }
                }
                Ok((mut enc, None)) => {
                    if let Err(e) = p.src.check_unchanged() {
                        return Some((Err(stream_error(e)), p));
                    }
                    p.count(&*enc);
                    let tail = enc.encode(&[], true);
                    p.st.metrics
                        .add_bytes(Op::Compress, Direction::Out, tail.len() as u64);
                    return Some((Ok(Bytes::from(tail)), p));
                }
                Err(e) => return Some((Err(stream_error(e)), p)),
            }
        }
    });
    let mut resp = compressed_response(codec, Body::from_stream(stream));
    resp.extensions_mut().insert(made_from);
    Ok(resp)
}

/// The request body, compressed, streamed back as it arrives.
pub async fn compress_body(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
    req: Request,
) -> Result<Response, ApiError> {
    let query = Query::parse(q.as_deref(), &["format", "level", "parallel"])?;
    let codec = query.codec()?;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let parallel = query
        .parallel()?
        .unwrap_or(declared.is_some_and(|n| n >= AUTO_PARALLEL_BYTES));
    let mut body = BodyReader::verified(req, &st)?;
    // A small upload with a wrong Content-Digest gets its 400 before the
    // 200 has started (a long one can only be cut short at its end).
    body.read_ahead(INLINE_BODY).await?;
    let lane = st.pool.lane();
    if let Some(n) = declared {
        lane.plan(work(codec), (n as f64 * codec.relative_cost()) as u64)?;
    }
    if parallel {
        // Admission, as for the serial path: 503 now if the pool is full.
        lane.try_run(|| ()).await?;
        return Ok(compressed_response(
            codec,
            parallel_compress::body_body(&st, lane, body, codec),
        ));
    }
    // Admission: a request that cannot get a pool slot is refused now, with a
    // real 503, rather than after its response has started.
    let enc = lane.try_run(move || codec.encoder()).await?;

    struct Progress {
        st: AppState,
        lane: Lane,
        body: BodyReader,
        enc: Option<Box<dyn Encode>>,
    }
    let start = Progress {
        st: st.clone(),
        lane,
        body,
        enc: Some(enc),
    };
    let stream = futures_util::stream::unfold(start, |mut p| async move {
        loop {
            let mut enc = p.enc.take()?;
            let chunk = match p.body.next().await {
                Ok(c) => c,
                Err(e) => return Some((Err(stream_error(e)), p)),
            };
            let Some(chunk) = chunk else {
                p.lane.done();
                let tail = enc.encode(&[], true);
                p.st.metrics
                    .add_bytes(Op::Compress, Direction::Out, tail.len() as u64);
                return Some((Ok(Bytes::from(tail)), p));
            };
            let n = chunk.len() as u64;
            let job = p
                .lane
                .run(move || {
                    let out = enc.encode(&chunk, false);
                    (enc, out)
                })
                .await;
            match job {
                Ok((enc, out)) => {
                    p.st.metrics.add_bytes(Op::Compress, Direction::In, n);
                    p.st.metrics
                        .add_bytes(Op::Compress, Direction::Out, out.len() as u64);
                    p.enc = Some(enc);
                    if !out.is_empty() {
                        return Some((Ok::<_, std::io::Error>(Bytes::from(out)), p));
                    }
                }
                Err(e) => return Some((Err(stream_error(e.into())), p)),
            }
        }
    });
    Ok(compressed_response(codec, Body::from_stream(stream)))
}

/// Writes `{path}.gz` (`.zst`) beside the file or object, atomically, when
/// `--allow-write` is on.
pub async fn compress_to_file(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    if !st.config.allow_write {
        return Err(ApiError::WritesDisabled);
    }
    let codec = Query::parse(q.as_deref(), &["format", "level"])?.codec()?;
    let rel = path_after(req.uri().path(), "/compress/")?;
    let out_rel = rel
        .with_suffix(codec.format().suffix())
        .map_err(ApiError::from_path)?;
    let mut src = Source::open(&st, &rel).await?;
    src.verify(req.headers(), st.metrics)?;
    src.plan(work(codec), codec.relative_cost())?;
    // From here on, any error or a client that leaves drops `state`, and
    // with it the output: no partial `.gz`/`.zst`, no temporary, no upload left.
    let lane = src.lane();
    // Large sources in parallel blocks, on every pool thread, as GET does;
    // a declared Content-Digest needs the bytes in order: the serial path.
    if src.size() >= AUTO_PARALLEL_BYTES && !src.verifying() {
        let out = Output::create(&st, &lane, &out_rel).await?;
        let bytes_in = src.size();
        let (bytes_out, out) = write_parallel(&st, src, codec, out, &lane).await?;
        let out_shown = out.shown().to_string();
        out.commit(&lane).await?;
        return Ok(Json(json!({
            "output": out_shown,
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
        })));
    }
    let mut state = (codec.encoder(), Output::create(&st, &lane, &out_rel).await?);
    // Counted as it goes, like a download, so progress shows while it runs.
    let (mut counted_in, mut counted_out) = (0, 0);
    loop {
        let (s, more) = src
            .step(state, |(enc, out), bytes| {
                let data = enc.encode(bytes, false);
                out.write(&data)
            })
            .await?;
        state = s;
        let enc = &state.0;
        st.metrics
            .add_bytes(Op::Compress, Direction::In, enc.bytes_in() - counted_in);
        st.metrics
            .add_bytes(Op::Compress, Direction::Out, enc.bytes_out() - counted_out);
        (counted_in, counted_out) = (enc.bytes_in(), enc.bytes_out());
        if more.is_none() {
            break;
        }
        state.1.flush().await?;
    }
    // The bytes read must be one version of a source that still exists.
    src.check_unchanged()?;
    let (mut enc, mut out) = state;
    let (bytes_in, bytes_out, mut out) = lane
        .run(move || {
            let tail = enc.encode(&[], true);
            out.write(&tail)?;
            Ok::<_, ApiError>((enc.bytes_in(), enc.bytes_out(), out))
        })
        .await??;
    st.metrics
        .add_bytes(Op::Compress, Direction::Out, bytes_out - counted_out);
    out.flush().await?;
    let out_shown = out.shown().to_string();
    out.commit(&lane).await?;
    Ok(Json(json!({
        "output": out_shown,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
    })))
}

/// Output written per write: large enough that a local write is one pool
/// job per megabyte, small enough to keep the upload's parts flowing.
const WRITE_BATCH: usize = 1 << 20;

/// Compresses `src` in parallel blocks into `out`; the bytes written.
async fn write_parallel(
    st: &AppState,
    src: Source,
    codec: Codec,
    mut out: Output,
    lane: &Lane,
) -> Result<(u64, Output), ApiError> {
    let mut blocks = std::pin::pin!(parallel_compress::file_stream(st, src, codec));
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let mut written = 0;
    loop {
        let block = blocks.next().await.transpose()?;
        if let Some(b) = &block {
            batch.extend_from_slice(b);
        }
        if batch.len() >= WRITE_BATCH || (block.is_none() && !batch.is_empty()) {
            written += batch.len() as u64;
            let full = std::mem::replace(&mut batch, Vec::with_capacity(WRITE_BATCH));
            out = out.write_anywhere(lane, full).await?;
            out.flush().await?;
        }
        if block.is_none() {
            return Ok((written, out));
        }
    }
}
