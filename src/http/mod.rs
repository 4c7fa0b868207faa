//! The HTTP API: the route list lives here, one file per endpoint family.

mod access_log;
mod body;
mod compress;
mod hash;
mod health;
mod observe;
mod parallel_gzip;
mod query;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::Router;
use axum::routing::{get, post};

use crate::config::Limit;
use crate::cpu_pool::CpuPool;
use crate::metrics::{Region, Slot};
use crate::root::Root;

/// Everything a handler may need; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub inner: Arc<Inner>,
}

pub struct Inner {
    /// The only directory tree we read or write.
    pub root: Arc<Root>,
    /// Where hashing of files and all compression runs.
    pub pool: CpuPool,
    /// This process's counters: its slot in the shared metrics region.
    pub metrics: &'static Slot,
    /// Every process's counters, for scrapes.
    pub region: &'static Region,
    /// Set when shutdown begins: `/readyz` answers 503 from then on.
    pub draining: Arc<AtomicBool>,
    /// `--digest-cache`: None when off.
    pub digest_cache: Option<Arc<crate::digest_cache::DigestCache>>,
    /// `--access-log`: one line per request.
    pub access_log: bool,
    /// `--metrics`: false skips request recording (to measure its cost).
    pub record_metrics: bool,
    /// `--allow-write`.
    pub allow_write: bool,
    /// `--max-body`.
    pub max_body: Limit,
    /// `--body-read-timeout`.
    pub body_read_timeout: std::time::Duration,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

/// The router: every route of the API and nothing else.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/hash", post(hash::hash_body))
        .route("/hash-file/", get(hash::hash_file))
        .route("/hash-file/{*path}", get(hash::hash_file))
        .route("/compress", post(compress::compress_body))
        .route(
            "/compress/",
            get(compress::compress_file).post(compress::compress_to_file),
        )
        .route(
            "/compress/{*path}",
            get(compress::compress_file).post(compress::compress_to_file),
        )
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/metrics.json", get(health::metrics_json))
        .fallback(observe::no_route)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            observe::observe,
        ))
        .with_state(state)
}
