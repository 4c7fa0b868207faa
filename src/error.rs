//! One error type for every endpoint, rendered as
//! `{"error": "<code>", "message": "<sentence>"}` with the right status.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::cpu_pool::PoolError;
use crate::metrics::ShedReason;
use crate::root::{OpenError, PathError};
use crate::storage::StorageError;

#[derive(Debug)]
pub enum ApiError {
    /// 400: a query parameter is wrong; the message says what is valid.
    BadQuery(String),
    /// 400: the path in the URL is malformed.
    BadPath(String),
    /// 400: the path names something that is not a regular file.
    NotAFile(String),
    /// 400: the request body could not be read (malformed chunked encoding, ...).
    BadBody(String),
    /// 400: a Digest Field of the request (RFC 9530) does not parse.
    BadDigestField(String),
    /// 400: the content does not match the request's `Content-Digest`.
    DigestMismatch(crate::http::digest_fields::Mismatch),
    /// 400: the request head breaks HTTP/1.1 (Host, Authorization, chunked twice).
    BadHead(&'static str),
    /// 401: no valid bearer token (`--token-file`); true when one was
    /// presented but is not accepted.
    Unauthorized(bool),
    /// 403: the path leaves the served root.
    OutsideRoot(String),
    /// 403: a write was asked of a server started without `--allow-write`.
    WritesDisabled,
    /// 403: the file system refused the write (read-only, permissions).
    WriteRefused(String),
    /// 403: the object store refused our credentials or this key.
    AccessDenied(String),
    /// 404: no such file under the root.
    FileNotFound(String),
    /// 404: no such route.
    NoRoute(String),
    /// 405: the route exists, the method does not; carries the `Allow` value.
    MethodNotAllowed(String),
    /// 408: the client stopped sending its body.
    BodyTimeout(u64),
    /// 409: the source changed while it was being read.
    SourceChanged(String),
    /// 413: the body is larger than `--max-body`.
    BodyTooLarge(u64),
    /// 501: a transfer coding other than `chunked`.
    TransferCodingNotImplemented,
    /// 503: the CPU pool shed the request; `retry_after` (whole seconds, at
    /// least 1) is the measured backlog.
    Overloaded {
        reason: ShedReason,
        retry_after: u64,
    },
    /// 503: the server is draining.
    Draining,
    /// 507: the disk is full.
    NoSpace,
    /// 501: this endpoint needs a directory `--root` (a tree manifest of an
    /// object store is not walked).
    NeedsDirectory,
    /// 502: the object store cannot be reached, or failed, after the retries.
    StorageUnavailable(String),
    /// 504: the object store did not answer within `--s3-deadline`.
    StorageTimeout(String),
    /// 500: a real internal fault. The detail is logged, never sent.
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            BadQuery(_) | BadPath(_) | NotAFile(_) | BadBody(_) | BadHead(_)
            | BadDigestField(_) | DigestMismatch(_) => StatusCode::BAD_REQUEST,
            Unauthorized(_) => StatusCode::UNAUTHORIZED,
            OutsideRoot(_) | WritesDisabled | WriteRefused(_) | AccessDenied(_) => {
                StatusCode::FORBIDDEN
            }
            FileNotFound(_) | NoRoute(_) => StatusCode::NOT_FOUND,
            MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            SourceChanged(_) => StatusCode::CONFLICT,
            BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            TransferCodingNotImplemented | NeedsDirectory => StatusCode::NOT_IMPLEMENTED,
            Overloaded { .. } | Draining => StatusCode::SERVICE_UNAVAILABLE,
            NoSpace => StatusCode::INSUFFICIENT_STORAGE,
            StorageUnavailable(_) => StatusCode::BAD_GATEWAY,
            StorageTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        use ApiError::*;
        match self {
            BadQuery(_) => "bad_query",
            BadPath(_) => "bad_path",
            NotAFile(_) => "not_a_file",
            BadBody(_) => "bad_body",
            BadHead(_) => "bad_head",
            BadDigestField(_) => "bad_digest_field",
            DigestMismatch(_) => "digest_mismatch",
            Unauthorized(_) => "unauthorized",
            OutsideRoot(_) => "outside_root",
            WritesDisabled => "writes_disabled",
            WriteRefused(_) => "write_refused",
            AccessDenied(_) => "access_denied",
            FileNotFound(_) => "not_found",
            NoRoute(_) => "no_route",
            MethodNotAllowed(_) => "method_not_allowed",
            BodyTimeout(_) => "body_timeout",
            SourceChanged(_) => "source_changed",
            BodyTooLarge(_) => "body_too_large",
            TransferCodingNotImplemented => "transfer_coding_not_implemented",
            NeedsDirectory => "needs_directory",
            Overloaded { .. } => "overloaded",
            Draining => "draining",
            NoSpace => "no_space",
            StorageUnavailable(_) => "storage_unavailable",
            StorageTimeout(_) => "storage_timeout",
            Internal(_) => "internal",
        }
    }

    pub fn message(&self) -> String {
        use ApiError::*;
        match self {
            BadQuery(m) | BadPath(m) | BadBody(m) | OutsideRoot(m) | SourceChanged(m)
            | WriteRefused(m) | AccessDenied(m) | StorageUnavailable(m) | StorageTimeout(m)
            | BadDigestField(m) => {
                m.clone()
            }
            BadHead(m) => (*m).into(),
            DigestMismatch(m) => m.to_string(),
            NotAFile(p) => format!("'{p}' is not a regular file"),
            Unauthorized(false) => {
                "this endpoint requires 'Authorization: Bearer <token>'".into()
            }
            Unauthorized(true) => "the bearer token is not accepted".into(),
            WritesDisabled => {
                "this server does not write files; start it with --allow-write to enable POST /compress/{path}".into()
            }
            FileNotFound(p) => format!("no file '{p}' under the served root"),
            NoRoute(m) => m.clone(),
            MethodNotAllowed(allow) => format!("method not allowed here; allowed: {allow}"),
            BodyTimeout(s) => format!("no body data arrived for {s} s; request abandoned"),
            BodyTooLarge(limit) => format!("the body exceeds the limit of {limit} bytes (--max-body)"),
            NeedsDirectory => "tree manifests walk a directory; this server serves an object \
                               store (--root s3://...)"
                .into(),
            TransferCodingNotImplemented => {
                "only the chunked transfer coding is implemented (RFC 9112 §6.1); send the body as is or chunked".into()
            }
            Overloaded {
                reason: ShedReason::Wait,
                retry_after,
            } => format!(
                "the server is busy: the work queued ahead would make this request wait longer \
                 than --max-queue-wait; retry in {retry_after} s (Retry-After)"
            ),
            Overloaded {
                reason: ShedReason::Memory,
                retry_after,
            } => format!(
                "the server is busy: the CPU pool's queue is full (--pool-queue); retry in \
                 {retry_after} s (Retry-After)"
            ),
            Draining => "the server is shutting down; retry on another instance".into(),
            NoSpace => "no space left on the device for the output file".into(),
            Internal(_) => "internal error; the server logged the details".into(),
        }
    }

    pub fn from_path(e: PathError) -> ApiError {
        match e {
            PathError::Malformed(m) => ApiError::BadPath(m),
            PathError::Escapes(m) => ApiError::OutsideRoot(m),
        }
    }

    pub fn from_open(e: OpenError, shown: &str) -> ApiError {
        match e {
            OpenError::NotFound => ApiError::FileNotFound(shown.into()),
            OpenError::Forbidden(why) => ApiError::OutsideRoot(format!("'{shown}': {why}")),
            OpenError::NotAFile => ApiError::NotAFile(shown.into()),
            OpenError::Io(e) => ApiError::from_io(e, shown),
        }
    }

    /// A storage error about `shown`, met while reading it (`writing`
    /// false) or writing it: local faults differ (a read has no disk to fill).
    pub fn from_storage(e: StorageError, shown: &str, writing: bool) -> ApiError {
        match e {
            StorageError::NotFound => ApiError::FileNotFound(shown.into()),
            StorageError::Forbidden(why) => ApiError::OutsideRoot(format!("'{shown}': {why}")),
            StorageError::Denied(why) => ApiError::AccessDenied(format!("'{shown}': {why}")),
            StorageError::NotAFile => ApiError::NotAFile(shown.into()),
            StorageError::BadKey(why) => ApiError::BadPath(format!("'{shown}': {why}")),
            StorageError::Changed(how) => ApiError::SourceChanged(format!("'{shown}' {how}")),
            StorageError::Unavailable(why) => {
                ApiError::StorageUnavailable(format!("'{shown}': {why}"))
            }
            StorageError::Timeout(why) => ApiError::StorageTimeout(format!("'{shown}': {why}")),
            StorageError::Io(e) if writing => ApiError::from_io(e, shown),
            StorageError::Io(e) => ApiError::Internal(format!("reading '{shown}': {e}")),
        }
    }

    pub fn from_io(e: std::io::Error, what: &str) -> ApiError {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => ApiError::NoSpace,
            Some(libc::EROFS) | Some(libc::EACCES) | Some(libc::EPERM) => {
                ApiError::WriteRefused(format!(
                    "'{what}': the file system refused the write ({})",
                    os_reason(&e)
                ))
            }
            _ => ApiError::Internal(format!("{what}: {e}")),
        }
    }
}

/// The OS's sentence without Rust's "(os error N)" suffix.
fn os_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code(), self.message())
    }
}

/// So a response body that has started can carry one (`io::Error::other`)
/// and an answer that has not can still be made of it (`from_stream`).
impl std::error::Error for ApiError {}

impl ApiError {
    /// The error a response body ended with: the `ApiError` it carries,
    /// wherever in the chain of wrappers (axum's, `io::Error`) it sits;
    /// otherwise an internal error naming what happened.
    pub fn from_stream(e: axum::Error) -> ApiError {
        let mut inner = e.into_inner();
        loop {
            inner = match inner.downcast::<ApiError>() {
                Ok(api) => return *api,
                Err(other) => match other.downcast::<std::io::Error>() {
                    Ok(io) => match io.into_inner() {
                        Some(next) => next,
                        None => return ApiError::Internal("a response stream failed".into()),
                    },
                    Err(other) => match other.downcast::<axum::Error>() {
                        Ok(ax) => ax.into_inner(),
                        Err(other) => return ApiError::Internal(other.to_string()),
                    },
                },
            };
        }
    }
}

impl From<PoolError> for ApiError {
    fn from(e: PoolError) -> ApiError {
        match e {
            PoolError::Overloaded { reason, backlog } => ApiError::Overloaded {
                reason,
                // Rounded up: a client told "0" would come straight back.
                retry_after: backlog.as_secs_f64().ceil().clamp(1.0, 60.0) as u64,
            },
            PoolError::Failed => ApiError::Internal("a CPU pool job failed".into()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(detail) = &self {
            tracing::error!(%detail, "internal error");
        }
        let body = serde_json::json!({ "error": self.code(), "message": self.message() });
        let mut resp = (self.status(), axum::Json(body)).into_response();
        let headers = resp.headers_mut();
        match &self {
            ApiError::Overloaded { retry_after, .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            ApiError::Draining => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::Unauthorized(presented) => {
                // RFC 6750: name the error only when credentials were sent.
                let v = if *presented {
                    "Bearer error=\"invalid_token\""
                } else {
                    "Bearer"
                };
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(v));
            }
            ApiError::MethodNotAllowed(allow) => {
                if let Ok(v) = HeaderValue::from_str(allow) {
                    headers.insert(header::ALLOW, v);
                }
            }
            // The body was left unread, and a client this far off the
            // protocol is best not trusted with the next request either.
            ApiError::BadHead(_) | ApiError::TransferCodingNotImplemented => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        resp
    }
}
