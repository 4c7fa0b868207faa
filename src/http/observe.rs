//! The middleware every request passes: request id, panic guard, JSON for
//! axum's bare 405s, counters and the access log.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;

use super::{AppState, access_log};
use crate::error::ApiError;
use crate::metrics::Route;

static REQUEST_IDS: AtomicU64 = AtomicU64::new(1);

pub async fn observe(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let id = REQUEST_IDS.fetch_add(1, Ordering::Relaxed);
    let method = req.method().clone();
    let route = Route::classify(req.uri().path());
    let bytes_in = Arc::new(AtomicU64::new(0));
    let req = if st.access_log {
        req.map(|b| access_log::CountIn::wrap(b, bytes_in.clone()))
    } else {
        req
    };
    // A panicking handler fails its own request, not the connection or the process.
    let mut resp = match AssertUnwindSafe(next.run(req)).catch_unwind().await {
        Ok(resp) => resp,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!(request_id = id, route = route.template(), panic = %what, "handler panicked");
            ApiError::Internal(format!("panic: {what}")).into_response()
        }
    };
    if resp.status() == StatusCode::METHOD_NOT_ALLOWED
        && !resp.headers().contains_key(header::CONTENT_TYPE)
    {
        resp = ApiError::MethodNotAllowed(route.allow().to_string()).into_response();
    }
    if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let status = resp.status().as_u16();
    if st.record_metrics {
        st.metrics
            .record_request(route, method.as_str(), status, start.elapsed());
    }
    if st.access_log {
        let entry = access_log::Entry {
            request_id: id,
            method: method.to_string(),
            route,
            status,
            start,
            bytes_in,
        };
        resp = resp.map(|b| access_log::LogOnDone::wrap(b, entry));
    }
    resp
}

/// 404 for paths that match no route, naming the routes that exist.
pub async fn no_route(req: Request) -> ApiError {
    ApiError::NoRoute(format!(
        "no route for {} {}; routes: POST /hash, GET /hash-file/{{path}}, GET|POST /compress/{{path}}, POST /compress, GET /healthz, GET /readyz, GET /metrics",
        req.method(),
        req.uri().path()
    ))
}
