//! `--access-log`: one line per request, written when the response body has
//! been sent (or abandoned), so streamed requests log their real byte counts
//! and duration.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::metrics::Route;

/// Wraps a request body to count the bytes read from it.
pub struct CountIn {
    inner: Body,
    count: Arc<AtomicU64>,
}

impl CountIn {
    pub fn wrap(inner: Body, count: Arc<AtomicU64>) -> Body {
        Body::new(CountIn { inner, count })
    }
}

impl HttpBody for CountIn {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &poll
            && let Some(data) = frame.data_ref()
        {
            self.count.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What the log line says besides the byte counts.
pub struct Entry {
    pub request_id: u64,
    pub method: String,
    pub route: Route,
    pub status: u16,
    pub start: Instant,
    pub bytes_in: Arc<AtomicU64>,
}

/// Wraps a response body; logs the line when it is dropped.
pub struct LogOnDone {
    inner: Body,
    entry: Entry,
    bytes_out: u64,
    complete: bool,
}

impl LogOnDone {
    pub fn wrap(inner: Body, entry: Entry) -> Body {
        Body::new(LogOnDone {
            inner,
            entry,
            bytes_out: 0,
            complete: false,
        })
    }
}

impl HttpBody for LogOnDone {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        match &poll {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes_out += data.len() as u64;
                }
            }
            Poll::Ready(None) => self.complete = true,
            _ => {}
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LogOnDone {
    fn drop(&mut self) {
        let e = &self.entry;
        let complete = self.complete || self.inner.is_end_stream();
        tracing::info!(
            target: "hashpress::access",
            request_id = e.request_id,
            method = %e.method,
            route = e.route.template(),
            status = e.status,
            bytes_in = e.bytes_in.load(Ordering::Relaxed),
            bytes_out = self.bytes_out,
            micros = e.start.elapsed().as_micros() as u64,
            complete,
            "request"
        );
    }
}
