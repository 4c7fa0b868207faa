//! What every request passes through on its way to the router: request id,
//! the HTTP/1.1 head checks (`request_head`), bearer token, panic guard, JSON for axum's bare 405s, counters, the
//! access log and `Connection: close` (draining, keep-alive limits, shedding).
//!
//! This is one hand-written service in front of the router rather than a
//! stack of `axum::middleware` layers: a layer on a `Router` wraps every
//! route separately, and each one boxes a future and clones a boxed service
//! per request. At tens of thousands of tiny requests a second those
//! allocations were a visible share of the work (callgrind).

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use tower::ServiceExt;

use super::{AppState, access_log, auth, request_head};
use crate::error::ApiError;
use crate::metrics::Route;

static REQUEST_IDS: AtomicU64 = AtomicU64::new(1);

/// A constant name: `insert("x-request-id", ..)` would allocate the name per request.
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What the accept loop knows about the connection a request came on.
#[derive(Clone, Copy, Debug)]
pub struct ConnFacts {
    /// This is its last answer by `--keepalive-requests`.
    pub last: bool,
    /// From this instant on its answers end it (`--keepalive-time`).
    pub expires: Option<Instant>,
}

impl ConnFacts {
    /// A connection with no keep-alive limit in sight.
    pub const FRESH: ConnFacts = ConnFacts {
        last: false,
        expires: None,
    };
}

/// A router behind the per-request steps above; what the accept loop serves.
#[derive(Clone)]
pub struct App {
    router: Router,
    state: AppState,
    /// False on `--admin-listen`, which serves metrics without a token.
    require_token: bool,
}

impl App {
    /// `router` must already have its state.
    pub fn new(router: Router, state: AppState, require_token: bool) -> App {
        App {
            router,
            state,
            require_token,
        }
    }
}

/// The future of one answer, as hyper's `Service` wants it.
pub type Answer = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl App {
    /// From now on `/readyz` answers 503 and every answer carries
    /// `Connection: close`.
    pub fn start_draining(&self) {
        self.state.draining.store(true, Ordering::SeqCst);
    }

    /// This process's counters (the accept loop counts connections there).
    pub fn metrics(&self) -> &'static crate::metrics::Slot {
        self.state.metrics
    }

    /// Answers `req`, which came on a connection described by `conn`: what
    /// the per-connection service of the accept loop calls.
    pub fn call_on<B>(&self, req: axum::http::Request<B>, conn: ConnFacts) -> Answer
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let app = self.clone();
        Box::pin(async move { Ok(app.handle(req.map(Body::new), conn).await) })
    }

    async fn handle(self, req: Request, conn: ConnFacts) -> Response {
        let st = &self.state;
        let start = Instant::now();
        let id = REQUEST_IDS.fetch_add(1, Ordering::Relaxed);
        let method = req.method().clone();
        let route = Route::classify(req.uri().path());
        // Counted only when logged: the default path allocates nothing here.
        let bytes_in = st.access_log.then(|| Arc::new(AtomicU64::new(0)));
        let req = match &bytes_in {
            Some(count) => req.map(|b| access_log::CountIn::wrap(b, count.clone())),
            None => req,
        };
        // Kept for the `Allow` list of a 405, worked out only when one happens.
        let uri = req.uri().clone();
        let denied = match request_head::check(&req) {
            Err(bad) => Some(bad),
            Ok(()) if self.require_token => auth::check(st, &req).err(),
            Ok(()) => None,
        };
        let mut resp = match denied {
            Some(denied) => denied.into_response(),
            // A panicking handler fails its own request, not the connection or the process.
            None => match AssertUnwindSafe(self.router.oneshot(req))
                .catch_unwind()
                .await
            {
                Ok(Ok(resp)) => resp,
                Ok(Err(never)) => match never {},
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    tracing::error!(request_id = id, route = route.template(), panic = %what, "handler panicked");
                    ApiError::Internal(format!("panic: {what}")).into_response()
                }
            },
        };
        if resp.status() == StatusCode::METHOD_NOT_ALLOWED
            && !resp.headers().contains_key(header::CONTENT_TYPE)
        {
            resp = ApiError::MethodNotAllowed(crate::routes::allowed_methods(uri.path()))
                .into_response();
        }
        drop(uri);
        resp.headers_mut()
            .insert(X_REQUEST_ID, HeaderValue::from(id));
        // The client is told to reconnect: while draining (in cluster mode
        // the reconnection lands on a worker that is not going away), past
        // the connection's keep-alive limits (so connections are placed
        // again from time to time), and when the supervisor moves
        // connections off this worker (a shed answer is counted, so it is
        // asked last: an answer that closes anyway spends none).
        if st.draining.load(Ordering::Relaxed)
            || conn.last
            || conn.expires.is_some_and(|at| start >= at)
            || st.metrics.take_shed()
        {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        let status = resp.status().as_u16();
        if st.record_metrics {
            st.metrics
                .record_request(route, method.as_str(), status, start.elapsed());
        }
        if let Some(bytes_in) = bytes_in {
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
}

/// 404 for paths that match no route, naming the routes that exist.
pub async fn no_route(req: Request) -> ApiError {
    let routes = crate::routes::Endpoint::listing("|");
    ApiError::NoRoute(format!(
        "no route for {} {}; routes: {}",
        req.method(),
        req.uri().path(),
        routes.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Duration;

    use axum::Router;
    use axum::routing::get;

    use crate::http::test_state;
    use crate::server::{self, ServerOptions};
    use crate::shutdown;

    /// No production route panics on purpose, so the guard is tested with a
    /// router built here: the real middleware and the real accept loop, on a
    /// real socket. A panic fails its own request with a JSON 500 and nothing
    /// else: the same keep-alive connection then gets a normal answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_handler_fails_only_its_request() {
        async fn boom() -> &'static str {
            panic!("deliberate test panic")
        }
        let dir = tempfile::tempdir().unwrap();
        let state = test_state(dir.path());
        let router = Router::new()
            .route("/boom", get(boom))
            .route("/ok", get(|| async { "fine" }));
        let app = super::App::new(router, state.clone(), true);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (trigger, down) = shutdown::channel();
        let opts = ServerOptions {
            header_read_timeout: Duration::from_secs(5),
            max_header_bytes: 65536,
            max_connections: 16,
            grace: Duration::from_secs(1),
            drain_linger: Duration::ZERO,
            keep_alive: server::KeepAlive {
                requests: 0,
                time: Duration::ZERO,
                timeout: Duration::from_secs(5),
            },
            gate: None,
        };
        let srv = tokio::spawn(server::run(listener, app, opts, down));
        let answers = tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"GET /boom HTTP/1.1\r\nHost: t\r\n\r\nGET /ok HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut raw = Vec::new();
            s.read_to_end(&mut raw).unwrap();
            String::from_utf8_lossy(&raw).into_owned()
        })
        .await
        .unwrap();
        trigger.trigger();
        srv.await.unwrap();
        let first = answers.find("HTTP/1.1 500").expect("a 500 first");
        let second = answers.find("HTTP/1.1 200").expect("then a 200");
        assert!(first < second, "{answers}");
        assert!(answers.contains(r#""error":"internal""#), "{answers}");
        assert!(
            !answers.contains("deliberate"),
            "panic text leaked: {answers}"
        );
        assert!(answers.ends_with("fine"), "{answers}");
        assert!(answers.contains("x-request-id"), "{answers}");
        let pool = crate::metrics::snapshot::PoolConfig {
            threads: 1,
            queue_capacity: 4,
            io_threads: 1,
        };
        let text = crate::metrics::Snapshot::collect(state.region, pool).to_prometheus();
        let counted: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("status=\"500\"") && !l.starts_with('#'))
            .collect();
        assert!(
            counted.iter().any(|l| l.ends_with(" 1")),
            "500 not counted: {counted:?}"
        );
    }
}
