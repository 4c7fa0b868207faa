//! Reading a request body as a stream of chunks, within the limits.

use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::header;
use bytes::Bytes;
use http_body_util::BodyExt;

use super::digest_fields::{Expected, Mismatch};
use crate::config::Limit;
use crate::error::ApiError;
use crate::kernel::{AlgorithmList, MultiHasher};
use crate::metrics::Slot;

/// Yields the body's data chunks, enforcing `--max-body` and
/// `--body-read-timeout`.
pub struct BodyReader {
    body: Body,
    limit: Option<u64>,
    timeout: Duration,
    read: u64,
    /// `verified`: the declared digests and the hasher computing them as
    /// the chunks go by; checked at the end of the body.
    check: Option<Box<Check>>,
    /// Chunks `read_ahead` took before the answer started, handed out
    /// first by `next`; `ended` when the body's end came with them.
    ahead: std::collections::VecDeque<Bytes>,
    ended: bool,
}

struct Check {
    expected: Expected,
    hasher: MultiHasher,
    metrics: &'static Slot,
}

impl BodyReader {
    /// Refuses at once (413) when the declared Content-Length is over the
    /// limit, before a single body byte is read.
    pub fn new(req: Request, limit: Limit, timeout: Duration) -> Result<BodyReader, ApiError> {
        let limit = limit.get();
        if let (Some(max), Some(len)) = (limit, declared_length(&req))
            && len > max
        {
            return Err(ApiError::BodyTooLarge(max));
        }
        Ok(BodyReader {
            body: req.into_body(),
            limit,
            timeout,
            read: 0,
            check: None,
            ahead: Default::default(),
            ended: false,
        })
    }

    /// `new`, checking the body against the request's `Content-Digest`, if
    /// it has one, as the chunks go by: the end of the body is then a
    /// `digest_mismatch` error when a digest differs. The hashing runs where
    /// `next` is called: for handlers that do not hash the body themselves
    /// (compression), at the cost of a SHA-2 pass (~2 GB/s with SHA-NI)
    /// beside a codec that runs an order of magnitude slower.
    pub fn verified(req: Request, st: &super::AppState) -> Result<BodyReader, ApiError> {
        let expected = Expected::from_headers(req.headers())?;
        let mut body = BodyReader::new(req, st.config.max_body, st.config.body_read_timeout)?;
        if let Some(expected) = expected {
            let algs = AlgorithmList::of(expected.algorithms());
            body.check = Some(Box::new(Check {
                hasher: MultiHasher::new(&algs),
                expected,
                metrics: st.metrics,
            }));
        }
        Ok(body)
    }

    /// For an answer that streams while the body is read: when the body
    /// carries a `Content-Digest` and ends within `max` bytes, reads all of
    /// it now, so a mismatch is a clear 400 before the answer starts rather
    /// than a stream cut short. A longer body keeps what was read (at most
    /// `max` and one chunk) for `next` and is checked at its end as before.
    pub async fn read_ahead(&mut self, max: u64) -> Result<(), ApiError> {
        if self.check.is_none() {
            return Ok(());
        }
        let (mut taken, mut held) = (std::collections::VecDeque::new(), 0);
        let mut ended = false;
        while held <= max {
            match self.next().await? {
                Some(chunk) => {
                    held += chunk.len() as u64;
                    taken.push_back(chunk);
                }
                None => {
                    ended = true;
                    break;
                }
            }
        }
        // Only now: `next` hands out `ahead` first.
        self.ahead = taken;
        self.ended = ended;
        Ok(())
    }

    /// The next chunk, `None` at the end of the body.
    pub async fn next(&mut self) -> Result<Option<Bytes>, ApiError> {
        if let Some(chunk) = self.ahead.pop_front() {
            return Ok(Some(chunk));
        }
        if self.ended {
            return Ok(None);
        }
        loop {
            let frame = match tokio::time::timeout(self.timeout, self.body.frame()).await {
                Err(_) => return Err(ApiError::BodyTimeout(self.timeout.as_secs())),
                Ok(None) => {
                    if let Some(c) = self.check.take() {
                        let Check {
                            expected,
                            hasher,
                            metrics,
                        } = *c;
                        expected
                            .check(&hasher.finish())
                            .map_err(|m| mismatch(metrics, m))?;
                    }
                    return Ok(None);
                }
                Ok(Some(Err(e))) => {
                    return Err(ApiError::BadBody(format!(
                        "the request body could not be read: {}",
                        root_cause(&e)
                    )));
                }
                Ok(Some(Ok(frame))) => frame,
            };
            // Trailers carry no data: skip them.
            let Ok(data) = frame.into_data() else {
                continue;
            };
            self.read += data.len() as u64;
            if let Some(max) = self.limit
                && self.read > max
            {
                return Err(ApiError::BodyTooLarge(max));
            }
            if let Some(c) = &mut self.check {
                c.hasher.update(&data);
            }
            return Ok(Some(data));
        }
    }
}

/// A content that does not match its `Content-Digest`: counted and logged
/// here, whichever handler found it, since on a streamed answer the client
/// only sees a cut stream.
pub fn mismatch(metrics: &Slot, m: Mismatch) -> ApiError {
    metrics.add_digest_mismatch();
    tracing::warn!(
        algorithm = m.key,
        declared = %m.declared,
        computed = %m.computed,
        "request content does not match its Content-Digest"
    );
    ApiError::DigestMismatch(m)
}

fn declared_length(req: &Request) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn root_cause(e: &axum::Error) -> String {
    let mut err: &dyn std::error::Error = e;
    while let Some(src) = err.source() {
        err = src;
    }
    err.to_string()
}
