//! The HTTP API: the route list lives here, one file per endpoint family.

mod access_log;
pub mod auth;
mod body;
mod compress;
mod dashboard;
pub(crate) mod digest_fields;
mod file_job;
pub(crate) mod hash;
mod health;
mod index;
mod manifest;
mod observe;
mod openapi;
mod parallel_compress;
pub mod query;
mod request_head;
mod sent_digest;

pub use observe::{Answer, App, ConnFacts};

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::Router;
use axum::routing::{MethodRouter, get, post};

use crate::config::ApiConfig;
use crate::cpu_pool::CpuPool;
use crate::metrics::{Region, Slot};
use crate::routes::{Endpoint, Spec};
use crate::storage::Storage;

/// Everything a handler may need; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub inner: Arc<Inner>,
}

pub struct Inner {
    /// The only directory tree or bucket prefix we read or write.
    pub storage: Arc<dyn Storage>,
    /// The same directory, when `--root` is one: tree manifests walk it
    /// directly. `None` for an object store.
    pub root: Option<Arc<crate::root::Root>>,
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
    /// The flags handlers read, shared with the process's `Config`.
    pub config: Arc<ApiConfig>,
    /// `--token-file` and `--admin-listen`: who may call, where `/metrics` is.
    pub access: auth::Access,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

/// The API: every route, behind the steps every request takes (`observe`).
pub fn app(state: AppState) -> App {
    App::new(routes(state.clone()), state, true)
}

/// The handlers of an endpoint. Its methods must be those of the table
/// (`crate::routes`); a test holds them together.
fn handler(e: Endpoint) -> MethodRouter<AppState> {
    match e {
        Endpoint::Index => get(index::page),
        Endpoint::Hash => post(hash::hash_body),
        Endpoint::HashFile => get(hash::hash_file),
        Endpoint::Compress => post(compress::compress_body),
        Endpoint::CompressPath => get(sent_digest::compress_file).post(compress::compress_to_file),
        Endpoint::Manifest => get(manifest::manifest).post(manifest::check),
        Endpoint::Healthz => get(health::healthz),
        Endpoint::Readyz => get(health::readyz),
        Endpoint::Metrics => get(health::metrics),
        Endpoint::MetricsJson => get(health::metrics_json),
        Endpoint::Dashboard => get(dashboard::page),
        Endpoint::OpenApi => get(openapi::spec),
    }
}

/// A router of the endpoints `serve` picks from the table, and nothing else.
fn router(state: AppState, serve: impl Fn(&Spec) -> bool) -> Router {
    let mut router = Router::new();
    for e in Endpoint::ALL {
        let spec = e.spec();
        if !serve(&spec) {
            continue;
        }
        router = match spec.template.strip_suffix("{path}") {
            // The bare prefix too: an empty path gets the handler's 400
            // (or, for a manifest, means the whole root).
            Some(prefix) => router
                .route(prefix, handler(e))
                .route(&format!("{prefix}{{*path}}"), handler(e)),
            None => router.route(spec.template, handler(e)),
        };
    }
    router.fallback(observe::no_route).with_state(state)
}

/// The main listener's router: every endpoint, but the admin ones when
/// `--admin-listen` serves them.
fn routes(state: AppState) -> Router {
    let on_admin = state.access.metrics_on_admin;
    router(state, |s| !(s.admin && on_admin))
}

/// The router of `--admin-listen`: the metrics endpoints only, without a
/// token (bind it to a private address).
pub fn admin_app(state: AppState) -> App {
    App::new(router(state.clone(), |s| s.admin), state, false)
}

/// A state over `root` with a one-thread pool, for unit tests of the router.
#[cfg(test)]
pub(crate) fn test_state(root: &std::path::Path) -> AppState {
    let dir = Arc::new(crate::root::Root::open(root).expect("test root"));
    let region = Region::create().expect("metrics region");
    let slot = region.claim(0).expect("a free slot");
    region.set_pid(slot, std::process::id());
    let metrics = region.slot(slot);
    AppState {
        inner: Arc::new(Inner {
            storage: Arc::new(crate::storage::local::LocalStorage::new(Arc::clone(&dir))),
            root: Some(dir),
            pool: CpuPool::new(
                crate::cpu_pool::PoolLimits {
                    threads: 1,
                    queue: 4,
                    max_wait: std::time::Duration::from_secs(1),
                    priority: crate::cpu_pool::PoolPriority::Low,
                },
                metrics,
            ),
            metrics,
            region,
            draining: Arc::new(AtomicBool::new(false)),
            digest_cache: None,
            config: Arc::new(ApiConfig {
                allow_write: true,
                max_body: crate::config::Limit::Unlimited,
                body_read_timeout: std::time::Duration::from_secs(5),
                digest_cache: 0,
                dir_sort_names: crate::tree::listing::SORT_IN_MEMORY,
                access_log: false,
                record_metrics: true,
                io_threads: 1,
            }),
            access: auth::Access::default(),
        }),
    }
}
