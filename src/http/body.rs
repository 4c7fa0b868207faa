//! Reading a request body as a stream of chunks, within the limits.

use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::header;
use bytes::Bytes;
use http_body_util::BodyExt;

use crate::config::Limit;
use crate::error::ApiError;

/// Yields the body's data chunks, enforcing `--max-body` and
/// `--body-read-timeout`.
pub struct BodyReader {
    body: Body,
    limit: Option<u64>,
    timeout: Duration,
    read: u64,
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
        })
    }

    /// The next chunk, `None` at the end of the body.
    pub async fn next(&mut self) -> Result<Option<Bytes>, ApiError> {
        loop {
            let frame = match tokio::time::timeout(self.timeout, self.body.frame()).await {
                Err(_) => return Err(ApiError::BodyTimeout(self.timeout.as_secs())),
                Ok(None) => return Ok(None),
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
            return Ok(Some(data));
        }
    }
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
