//! `GET /compress/{path}`, `POST /compress` and `POST /compress/{path}`.
//!
//! All three feed a `GzipStream` on the CPU pool, one chunk per job, and
//! carry the encoder from job to job. Responses stream: a chunk is compressed
//! only when the client has taken the previous one, so a slow reader slows
//! the work down instead of growing a buffer.

use axum::Json;
use axum::body::Body;
use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};

use super::AppState;
use super::body::BodyReader;
use super::file_job::{Output, Source, path_after};
use super::parallel_gzip::{self, AUTO_PARALLEL_BYTES};
use super::query::Query;
use super::sent_digest::SourceIdentity;
use crate::cpu_pool::Lane;
use crate::error::ApiError;
use crate::kernel::GzipStream;
use crate::metrics::{Direction, Op};

fn gzip_response(body: Body) -> Response {
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/gzip"),
    );
    resp
}

/// Ends a response body that has already started: the client sees a cut
/// stream (an incomplete gzip member), the log sees why.
pub(super) fn stream_error(e: ApiError) -> std::io::Error {
    std::io::Error::other(format!("{}: {}", e.code(), e.message()))
}

/// A file or object under the root, gzip-compressed, streamed back.
pub async fn compress_file(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
    req: Request,
) -> Result<Response, ApiError> {
    let query = Query::parse(q.as_deref(), &["level", "parallel"])?;
    let level = query.level()?;
    let parallel = query.parallel()?;
    let rel = path_after(req.uri().path(), "/compress/")?;
    let mut src = Source::open(&st, &rel).await?;
    src.plan(Op::Compress)?;
    // What the bytes sent are made from, for their digest (`sent_digest`).
    let made_from = SourceIdentity(src.identity().clone());
    if parallel.unwrap_or(src.size() >= AUTO_PARALLEL_BYTES) {
        let mut resp = gzip_response(parallel_gzip::file_body(&st, src, level));
        resp.extensions_mut().insert(made_from);
        return Ok(resp);
    }

    struct Progress {
        st: AppState,
        src: Source,
        /// None once the gzip trailer has been sent, or the stream cut.
        gz: Option<GzipStream>,
        counted_in: u64,
        counted_out: u64,
    }
    impl Progress {
        fn count(&mut self, gz: &GzipStream) {
            let m = &self.st.metrics;
            m.add_bytes(Op::Compress, Direction::In, gz.bytes_in() - self.counted_in);
            m.add_bytes(
                Op::Compress,
                Direction::Out,
                gz.bytes_out() - self.counted_out,
            );
            self.counted_in = gz.bytes_in();
            self.counted_out = gz.bytes_out();
        }
    }
    let start = Progress {
        st: st.clone(),
        src,
        gz: Some(GzipStream::new(level)),
        counted_in: 0,
        counted_out: 0,
    };
    let stream = futures_util::stream::unfold(start, |mut p| async move {
        loop {
            let gz = p.gz.take()?;
            // Headers are gone already: on an error all we can do is cut the
            // stream, which the client sees as an incomplete gzip member.
            match p.src.step(gz, |gz, bytes| Ok(gz.compress(bytes))).await {
                Ok((gz, Some(out))) => {
                    p.count(&gz);
                    p.gz = Some(gz);
                    if !out.is_empty() {
                        return Some((Ok::<_, std::io::Error>(Bytes::from(out)), p));
                    }
                }
                Ok((gz, None)) => {
                    if let Err(e) = p.src.check_unchanged() {
                        return Some((Err(stream_error(e)), p));
                    }
                    p.count(&gz);
                    let tail = gz.finish();
                    p.st.metrics
                        .add_bytes(Op::Compress, Direction::Out, tail.len() as u64);
                    return Some((Ok(Bytes::from(tail)), p));
                }
                Err(e) => return Some((Err(stream_error(e)), p)),
            }
        }
    });
    let mut resp = gzip_response(Body::from_stream(stream));
    resp.extensions_mut().insert(made_from);
    Ok(resp)
}

/// The request body gzip-compressed, streamed back as it arrives.
pub async fn compress_body(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
    req: Request,
) -> Result<Response, ApiError> {
    let query = Query::parse(q.as_deref(), &["level", "parallel"])?;
    let level = query.level()?;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let parallel = query
        .parallel()?
        .unwrap_or(declared.is_some_and(|n| n >= AUTO_PARALLEL_BYTES));
    let body = BodyReader::verified(req, &st)?;
    let lane = st.pool.lane();
    if let Some(n) = declared {
        lane.plan(Op::Compress, n)?;
    }
    if parallel {
        // Admission, as for the serial path: 503 now if the pool is full.
        lane.try_run(|| ()).await?;
        return Ok(gzip_response(parallel_gzip::body_body(
            &st, lane, body, level,
        )));
    }
    // Admission: a request that cannot get a pool slot is refused now, with a
    // real 503, rather than after its response has started.
    let gz = lane.try_run(move || GzipStream::new(level)).await?;

    struct Progress {
        st: AppState,
        lane: Lane,
        body: BodyReader,
        gz: Option<GzipStream>,
    }
    let start = Progress {
        st: st.clone(),
        lane,
        body,
        gz: Some(gz),
    };
    let stream = futures_util::stream::unfold(start, |mut p| async move {
        loop {
            let mut gz = p.gz.take()?;
            let chunk = match p.body.next().await {
                Ok(c) => c,
                Err(e) => return Some((Err(stream_error(e)), p)),
            };
            let Some(chunk) = chunk else {
                p.lane.done();
                let tail = gz.finish();
                p.st.metrics
                    .add_bytes(Op::Compress, Direction::Out, tail.len() as u64);
                return Some((Ok(Bytes::from(tail)), p));
            };
            let n = chunk.len() as u64;
            let job = p
                .lane
                .run(move || {
                    let out = gz.compress(&chunk);
                    (gz, out)
                })
                .await;
            match job {
                Ok((gz, out)) => {
                    p.st.metrics.add_bytes(Op::Compress, Direction::In, n);
                    p.st.metrics
                        .add_bytes(Op::Compress, Direction::Out, out.len() as u64);
                    p.gz = Some(gz);
                    if !out.is_empty() {
                        return Some((Ok::<_, std::io::Error>(Bytes::from(out)), p));
                    }
                }
                Err(e) => return Some((Err(stream_error(e.into())), p)),
            }
        }
    });
    Ok(gzip_response(Body::from_stream(stream)))
}

/// Writes `{path}.gz` beside the file or object, atomically, when
/// `--allow-write` is on.
pub async fn compress_to_file(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    if !st.config.allow_write {
        return Err(ApiError::WritesDisabled);
    }
    let level = Query::parse(q.as_deref(), &["level"])?.level()?;
    let rel = path_after(req.uri().path(), "/compress/")?;
    let out_rel = rel.with_suffix(".gz").map_err(ApiError::from_path)?;
    let mut src = Source::open(&st, &rel).await?;
    src.verify(req.headers(), st.metrics)?;
    src.plan(Op::Compress)?;
    // From here on, any error or a client that leaves drops `state`, and
    // with it the output: no partial `.gz`, no temporary, no upload left.
    let lane = src.lane();
    let mut state = (
        GzipStream::new(level),
        Output::create(&st, &lane, &out_rel).await?,
    );
    // Counted as it goes, like a download, so progress shows while it runs.
    let (mut counted_in, mut counted_out) = (0, 0);
    loop {
        let (s, more) = src
            .step(state, |(gz, out), bytes| {
                let data = gz.compress(bytes);
                out.write(&data)
            })
            .await?;
        state = s;
        let gz = &state.0;
        st.metrics
            .add_bytes(Op::Compress, Direction::In, gz.bytes_in() - counted_in);
        st.metrics
            .add_bytes(Op::Compress, Direction::Out, gz.bytes_out() - counted_out);
        (counted_in, counted_out) = (gz.bytes_in(), gz.bytes_out());
        if more.is_none() {
            break;
        }
        state.1.flush().await?;
    }
    // The bytes read must be one version of a source that still exists.
    src.check_unchanged()?;
    let (gz, out) = state;
    let (bytes_in, bytes_out, mut out) = lane
        .run(move || {
            let (mut out, bytes_in, before_tail) = (out, gz.bytes_in(), gz.bytes_out());
            let tail = gz.finish();
            out.write(&tail)?;
            Ok::<_, ApiError>((bytes_in, before_tail + tail.len() as u64, out))
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
