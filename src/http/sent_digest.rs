//! The digest of what a download sent (RFC 9530 §4): `GET /compress/{path}`
//! with `Want-Repr-Digest` or `Want-Content-Digest` gets `Repr-Digest` or
//! `Content-Digest` of the bytes it receives. The answer is a compressed
//! file served as itself (`application/gzip`, no `Content-Encoding`), so
//! its representation data and its content are the same bytes and both
//! fields carry the digest of the stream sent.
//!
//! Those bytes are known only at the end: they come as a trailer when the
//! client said `TE: trailers`. With `--digest-cache`, the digest of a
//! finished download is kept under the source's identity and the query
//! (the encoders are deterministic), so a later `GET` or `HEAD` of the same
//! version gets it as a header. A `HEAD` that finds none computes it: the
//! output is made and hashed, not sent.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use axum::response::Response;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;

use super::AppState;
use super::compress;
use super::digest_fields::{field_value, wanted};
use crate::digest_cache::Key;
use crate::error::ApiError;
use crate::kernel::{Algorithm, AlgorithmList, Digests, MultiHasher};
use crate::storage::Identity;

const REPR_DIGEST: HeaderName = HeaderName::from_static("repr-digest");
const CONTENT_DIGEST: HeaderName = HeaderName::from_static("content-digest");

/// The fields a request wants, each with the algorithm it prefers.
type Wants = Vec<(HeaderName, Algorithm)>;

fn wants(headers: &HeaderMap) -> Result<Wants, ApiError> {
    let mut out = Wants::new();
    for (want, field) in [
        ("want-repr-digest", REPR_DIGEST),
        ("want-content-digest", CONTENT_DIGEST),
    ] {
        let lines = headers.get_all(want).into_iter().map(|v| v.as_bytes());
        let name = if field == REPR_DIGEST {
            "Want-Repr-Digest"
        } else {
            "Want-Content-Digest"
        };
        if let Some(alg) = wanted(name, lines).map_err(ApiError::BadDigestField)? {
            out.push((field, alg));
        }
    }
    Ok(out)
}

/// `TE: trailers` (RFC 9110 §10.1.4): the client reads trailer fields.
fn takes_trailers(headers: &HeaderMap) -> bool {
    headers.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    })
}

fn fields(wants: &Wants, digests: &Digests) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (field, alg) in wants {
        if let Some((_, hex)) = digests.entries.iter().find(|(a, _)| a == alg) {
            let value = HeaderValue::from_str(&field_value(*alg, hex))
                .expect("base64 and ASCII are valid in a field");
            map.insert(field.clone(), value);
        }
    }
    map
}

/// The identity of the source a download was made from, put in the
/// response's extensions by the handler that opened it.
#[derive(Clone)]
pub struct SourceIdentity(pub Identity);

/// `GET /compress/{path}`, with the digest of what it sends when asked.
pub async fn compress_file(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
    req: Request,
) -> Result<Response, ApiError> {
    let wants = wants(req.headers())?;
    if wants.is_empty() {
        return compress::compress_file(State(st), RawQuery(q), req).await;
    }
    let head = req.method() == Method::HEAD;
    let trailers = takes_trailers(req.headers());
    let output = format!("GET /compress?{}", q.as_deref().unwrap_or(""));
    let algs = AlgorithmList::of(wants.iter().map(|(_, a)| *a));
    let started = SystemTime::now();
    let resp = compress::compress_file(State(st.clone()), RawQuery(q), req).await?;
    let cache = match (&st.digest_cache, resp.extensions().get::<SourceIdentity>()) {
        (Some(cache), Some(id)) => Some((
            cache.clone(),
            Key::output(id.0.clone(), &algs, output),
            started,
        )),
        _ => None,
    };
    if let Some((cache, key, _)) = &cache
        && let Some(known) = cache.get(key)
    {
        st.metrics.add_digest_cache(true);
        let (mut parts, body) = resp.into_parts();
        parts.headers.extend(fields(&wants, &known));
        return Ok(Response::from_parts(parts, body));
    }
    if cache.is_some() {
        st.metrics.add_digest_cache(false);
    }
    let (mut parts, body) = resp.into_parts();
    let mut body = Digesting {
        inner: body,
        hasher: Some(MultiHasher::new(&algs)),
        wants,
        trailers: trailers && !head,
        cache,
        done: None,
    };
    if head {
        // Made and hashed, not sent: the client asked for the digest alone.
        while let Some(frame) = body.frame().await {
            // Nothing has been sent: the failure is the answer, with its
            // own status (409 a changed source, 502 a store down, ...).
            frame.map_err(ApiError::from_stream)?;
        }
        let known = body.done.take().expect("hashed");
        parts.headers.extend(fields(&body.wants, &known));
        // The spent body, not an empty one: its size is not exact, so no
        // `Content-Length: 0` claims what a GET would not send.
        return Ok(Response::from_parts(parts, Body::new(body)));
    }
    if body.trailers {
        let names: Vec<&str> = body.wants.iter().map(|(f, _)| f.as_str()).collect();
        let value = HeaderValue::from_str(&names.join(", ")).expect("field names");
        parts.headers.insert(header::TRAILER, value);
    } else if body.cache.is_none() {
        // Nowhere to put the digest: send the download as it is.
        return Ok(Response::from_parts(parts, body.inner));
    }
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// A download's body, hashed as it goes; at its end, the digests go to
/// the trailer, the digest cache, or both. A body that fails gives
/// neither.
struct Digesting {
    inner: Body,
    /// None once the body ended or failed.
    hasher: Option<MultiHasher>,
    wants: Wants,
    trailers: bool,
    cache: Option<(
        std::sync::Arc<crate::digest_cache::DigestCache>,
        Key,
        SystemTime,
    )>,
    done: Option<Digests>,
}

impl HttpBody for Digesting {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let (Some(h), Some(data)) = (&mut this.hasher, frame.data_ref()) {
                    h.update(data);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                this.hasher = None;
                Poll::Ready(Some(Err(e)))
            }
            None => {
                let Some(h) = this.hasher.take() else {
                    return Poll::Ready(None);
                };
                let digests = h.finish();
                if let Some((cache, key, started)) = this.cache.take() {
                    cache.insert(key, &digests, started);
                }
                let trailers = this.trailers.then(|| fields(&this.wants, &digests));
                this.done = Some(digests);
                Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.hasher.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        // Never exact: an exact size would be sent as Content-Length, and
        // trailers need the chunked coding.
        let mut hint = SizeHint::new();
        hint.set_lower(self.inner.size_hint().lower());
        hint
    }
}
