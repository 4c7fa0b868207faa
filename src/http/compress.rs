//! `GET /compress/{path}`, `POST /compress` and `POST /compress/{path}`.
//!
//! All three feed a `GzipStream` on the CPU pool, one chunk per job, and
//! carry the encoder from job to job. Responses stream: a chunk is compressed
//! only when the client has taken the previous one, so a slow reader slows
//! the work down instead of growing a buffer.

use std::fs::File;
use std::io::Write;

use axum::Json;
use axum::body::Body;
use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};

use super::AppState;
use super::body::BodyReader;
use super::hash::{path_after, read_error, read_full, with_buffer};
use super::parallel_gzip::{self, AUTO_PARALLEL_BYTES};
use super::query::Query;
use crate::cpu_pool::Lane;
use crate::error::ApiError;
use crate::kernel::GzipStream;
use crate::metrics::{Direction, Op};
use crate::root::PendingFile;

/// Reads a chunk of `file` and compresses it; true at end of file.
fn compress_chunk(file: &mut File, gz: &mut GzipStream) -> std::io::Result<(Vec<u8>, bool)> {
    with_buffer(|buf| {
        let n = read_full(file, buf)?;
        Ok((gz.compress(&buf[..n]), n < buf.len()))
    })
}

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

/// A file under the root, gzip-compressed, streamed back.
pub async fn compress_file(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
    req: Request,
) -> Result<Response, ApiError> {
    let query = Query::parse(q.as_deref(), &["level", "parallel"])?;
    let level = query.level()?;
    let parallel = query.parallel()?;
    let rel = path_after(req.uri().path(), "/compress/")?;
    let shown = rel.display();
    let root = st.root.clone();
    let first_shown = shown.clone();
    // The first job opens the file: a request that cannot get a pool slot is
    // refused before touching the disk.
    let lane = st.pool.lane();
    let (file, size) = lane
        .try_run(move || {
            root.open_file(&rel)
                .map_err(|e| ApiError::from_open(e, &first_shown))
        })
        .await??;
    // Admitted by its size too, now that it is known.
    lane.plan(Op::Compress, size)?;
    if parallel.unwrap_or(size >= AUTO_PARALLEL_BYTES) {
        return Ok(gzip_response(parallel_gzip::file_body(
            &st, lane, file, size, level, shown,
        )));
    }
    let (gz, out, done) = (GzipStream::new(level), Vec::new(), false);

    struct Progress {
        st: AppState,
        lane: Lane,
        shown: String,
        /// None once the gzip trailer has been sent.
        work: Option<(File, GzipStream)>,
        ready: Vec<u8>,
        done: bool,
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
        lane,
        shown,
        work: Some((file, gz)),
        ready: out,
        done,
        counted_in: 0,
        counted_out: 0,
    };
    let stream = futures_util::stream::unfold(start, |mut p| async move {
        loop {
            if !p.ready.is_empty() {
                let chunk = Bytes::from(std::mem::take(&mut p.ready));
                return Some((Ok::<_, std::io::Error>(chunk), p));
            }
            let (mut file, mut gz) = p.work.take()?;
            if p.done {
                p.count(&gz);
                p.lane.done();
                let tail = gz.finish();
                p.st.metrics
                    .add_bytes(Op::Compress, Direction::Out, tail.len() as u64);
                return Some((Ok(Bytes::from(tail)), p));
            }
            let shown = p.shown.clone();
            let job = p
                .lane
                .run(move || {
                    let (out, done) =
                        compress_chunk(&mut file, &mut gz).map_err(|e| read_error(e, &shown))?;
                    Ok::<_, ApiError>((file, gz, out, done))
                })
                .await;
            match job.map_err(ApiError::from).and_then(|r| r) {
                Ok((file, gz, out, done)) => {
                    p.count(&gz);
                    p.work = Some((file, gz));
                    p.ready = out;
                    p.done = done;
                }
                // Headers are gone already: all we can do is cut the stream,
                // which the client sees as an incomplete gzip member.
                Err(e) => return Some((Err(stream_error(e)), p)),
            }
        }
    });
    Ok(gzip_response(Body::from_stream(stream)))
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
    let body = BodyReader::new(req, st.max_body, st.body_read_timeout)?;
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

/// Writes `{path}.gz` beside the file, atomically, when `--allow-write` is on.
pub async fn compress_to_file(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    if !st.allow_write {
        return Err(ApiError::WritesDisabled);
    }
    let level = Query::parse(q.as_deref(), &["level"])?.level()?;
    let rel = path_after(req.uri().path(), "/compress/")?;
    let out_rel = rel.with_suffix(".gz").map_err(ApiError::from_path)?;
    let shown = rel.display();
    let out_shown = out_rel.display();
    let root = st.root.clone();
    let (s1, o1) = (shown.clone(), out_shown.clone());
    let lane = st.pool.lane();
    let (mut state, mut done) = lane
        .try_run(move || {
            let (file, size) = root
                .open_file(&rel)
                .map_err(|e| ApiError::from_open(e, &s1))?;
            let dir = root
                .open_parent_dir(&out_rel)
                .map_err(|e| ApiError::from_open(e, &o1))?;
            let (_, name) = out_rel.split_parent();
            let pending = PendingFile::create(dir, name).map_err(|e| ApiError::from_io(e, &o1))?;
            let mut state = WriteState {
                file,
                size,
                gz: GzipStream::new(level),
                pending,
            };
            let done = state.step(&s1, &o1)?;
            Ok::<_, ApiError>((state, done))
        })
        .await??;
    if !done {
        lane.plan(Op::Compress, state.size)?;
    }
    while !done {
        let (s, o) = (shown.clone(), out_shown.clone());
        // Dropped (client gone) while a job runs: the job's result, and with it
        // the PendingFile, is dropped on the pool thread, removing the temporary.
        (state, done) = lane
            .run(move || {
                let done = state.step(&s, &o)?;
                Ok::<_, ApiError>((state, done))
            })
            .await??;
    }
    let o = out_shown.clone();
    let s = shown.clone();
    let (bytes_in, bytes_out) = lane.run(move || state.finish(&s, &o)).await??;
    lane.done();
    st.metrics.add_bytes(Op::Compress, Direction::In, bytes_in);
    st.metrics
        .add_bytes(Op::Compress, Direction::Out, bytes_out);
    Ok(Json(json!({
        "output": out_shown,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
    })))
}

struct WriteState {
    file: File,
    /// Size when opened: reading fewer bytes means the source was truncated.
    size: u64,
    gz: GzipStream,
    pending: PendingFile,
}

impl WriteState {
    fn step(&mut self, shown: &str, out: &str) -> Result<bool, ApiError> {
        let (data, done) =
            compress_chunk(&mut self.file, &mut self.gz).map_err(|e| read_error(e, shown))?;
        self.pending
            .file()
            .write_all(&data)
            .map_err(|e| ApiError::from_io(e, out))?;
        Ok(done)
    }

    fn finish(self, shown: &str, out: &str) -> Result<(u64, u64), ApiError> {
        let WriteState {
            file,
            size,
            gz,
            mut pending,
        } = self;
        // Deleted while read: the bytes came from an unlinked inode, so a
        // `.gz` beside the name would describe a file that no longer exists.
        if std::os::unix::fs::MetadataExt::nlink(
            &file.metadata().map_err(|e| read_error(e, shown))?,
        ) == 0
        {
            return Err(ApiError::SourceChanged(format!(
                "'{shown}' was deleted while it was compressed; nothing was written"
            )));
        }
        let bytes_in = gz.bytes_in();
        if bytes_in != size {
            // `pending` is dropped here, removing the temporary.
            return Err(ApiError::SourceChanged(format!(
                "'{shown}' changed size while it was compressed ({size} bytes at open, {bytes_in} read); nothing was written"
            )));
        }
        let before_tail = gz.bytes_out();
        let tail = gz.finish();
        pending
            .file()
            .write_all(&tail)
            .map_err(|e| ApiError::from_io(e, out))?;
        pending.commit().map_err(|e| ApiError::from_io(e, out))?;
        Ok((bytes_in, before_tail + tail.len() as u64))
    }
}
