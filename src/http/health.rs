//! `/healthz`, `/readyz` and `/metrics`.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use crate::error::ApiError;
use crate::metrics::Snapshot;
use crate::metrics::snapshot::PoolConfig;

/// Alive: the process answers HTTP. `x-worker-pid` names the process that
/// answered, so one can tell cluster workers apart from outside.
pub async fn healthz() -> Response {
    let mut resp = Json(json!({ "status": "ok" })).into_response();
    resp.headers_mut()
        .insert("x-worker-pid", HeaderValue::from(std::process::id()));
    resp
}

/// Ready: serving, and not draining.
pub async fn readyz(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    if st.draining.load(Ordering::Relaxed) {
        return Err(ApiError::Draining);
    }
    Ok(Json(json!({ "status": "ready" })))
}

fn snapshot(st: &AppState) -> Snapshot {
    Snapshot::collect(
        st.region,
        PoolConfig {
            threads: st.pool.threads() as u64,
            queue_capacity: st.pool.queue_capacity() as u64,
            io_threads: st.config.io_threads as u64,
        },
    )
}

/// Prometheus text, or JSON when the client asks for it with `Accept`.
/// Either way the figures are the sum over every worker, live and retired.
pub async fn metrics(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json"));
    if wants_json {
        return Json(snapshot(&st).to_json()).into_response();
    }
    let mut resp = snapshot(&st).to_prometheus().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// The same figures as JSON.
pub async fn metrics_json(State(st): State<AppState>) -> Json<Value> {
    Json(snapshot(&st).to_json())
}
