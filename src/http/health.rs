//! `/healthz`, `/readyz` and `/metrics`.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use crate::error::ApiError;
use crate::metrics::{Gauges, render};

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

/// Prometheus text format.
pub async fn metrics(State(st): State<AppState>) -> Response {
    let gauges = Gauges {
        pool_threads: st.pool.threads() as u64,
        pool_queue_capacity: st.pool.queue_capacity() as u64,
    };
    let text = render(&[&st.metrics], &gauges);
    let mut resp = text.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}
