//! The HTTP API: the route list lives here, one file per endpoint family.

mod access_log;
pub mod auth;
mod body;
mod compress;
mod dashboard;
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

pub use observe::{Answer, App, ConnFacts};

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::Router;
use axum::routing::{get, post};

use crate::config::Limit;
use crate::cpu_pool::CpuPool;
use crate::metrics::{Region, Slot};
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
    /// `--access-log`: one line per request.
    pub access_log: bool,
    /// `--metrics`: false skips request recording (to measure its cost).
    pub record_metrics: bool,
    /// `--io-threads`, after "0 = one per core": reported in `/metrics`.
    pub io_threads: usize,
    /// `--allow-write`.
    pub allow_write: bool,
    /// `--max-body`.
    pub max_body: Limit,
    /// `--body-read-timeout`.
    pub body_read_timeout: std::time::Duration,
    /// `--token-file` and `--admin-listen`: who may call, where `/metrics` is.
    pub access: auth::Access,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

/// Every route of the API as `(template, methods)`, in OpenAPI spelling.
/// `app` must serve exactly these (a trailing-slash form of the `{path}`
/// routes exists only to answer "empty path" with a 400), and
/// `openapi.json` must describe exactly these: tests hold all three together.
pub const ROUTES: &[(&str, &[&str])] = &[
    ("/", &["GET"]),
    ("/hash", &["POST"]),
    ("/hash-file/{path}", &["GET"]),
    ("/compress", &["POST"]),
    ("/compress/{path}", &["GET", "POST"]),
    ("/manifest/{path}", &["GET", "POST"]),
    ("/healthz", &["GET"]),
    ("/readyz", &["GET"]),
    ("/metrics", &["GET"]),
    ("/metrics.json", &["GET"]),
    ("/dashboard", &["GET"]),
    ("/openapi.json", &["GET"]),
];

/// The `Allow` value for a request path, from `ROUTES` (GET implies HEAD).
pub fn allowed_methods(path: &str) -> String {
    let found = ROUTES
        .iter()
        .find(|(template, _)| match template.strip_suffix("{path}") {
            Some(prefix) => path.starts_with(prefix),
            None => path == *template,
        });
    let mut out: Vec<&str> = Vec::new();
    for m in found.map_or(&[][..], |(_, methods)| *methods) {
        out.push(m);
        if *m == "GET" {
            out.push("HEAD");
        }
    }
    out.join(", ")
}

/// The API: every route, behind the steps every request takes (`observe`).
pub fn app(state: AppState) -> App {
    App::new(routes(state.clone()), state, true)
}

/// The router: every route of the API and nothing else.
fn routes(state: AppState) -> Router {
    let mut router = Router::new()
        .route("/", get(index::page))
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
        // "/manifest/" is the whole root; POST takes "{dir}/check".
        .route("/manifest/", get(manifest::manifest).post(manifest::check))
        .route(
            "/manifest/{*path}",
            get(manifest::manifest).post(manifest::check),
        )
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/openapi.json", get(openapi::spec));
    if !state.access.metrics_on_admin {
        router = router
            .route("/metrics", get(health::metrics))
            .route("/metrics.json", get(health::metrics_json))
            .route("/dashboard", get(dashboard::page));
    }
    router.fallback(observe::no_route).with_state(state)
}

/// The router of `--admin-listen`: `/metrics` only, without a token (bind it
/// to a private address).
pub fn admin_app(state: AppState) -> App {
    let router = Router::new()
        .route("/metrics", get(health::metrics))
        .route("/metrics.json", get(health::metrics_json))
        .route("/dashboard", get(dashboard::page))
        .fallback(observe::no_route)
        .with_state(state.clone());
    App::new(router, state, false)
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
                },
                metrics,
            ),
            metrics,
            region,
            draining: Arc::new(AtomicBool::new(false)),
            digest_cache: None,
            access_log: false,
            record_metrics: true,
            io_threads: 1,
            allow_write: true,
            max_body: Limit::Unlimited,
            body_read_timeout: std::time::Duration::from_secs(5),
            access: auth::Access::default(),
        }),
    }
}
