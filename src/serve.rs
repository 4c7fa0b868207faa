//! `hashpress serve` in one process: wire config, pool, root and server.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio::net::TcpListener;

use crate::config::ServeArgs;
use crate::cpu_pool::CpuPool;
use crate::digest_cache::DigestCache;
use crate::http::{AppState, Inner, app};
use crate::metrics::Region;
use crate::root::Root;
use crate::server::{self, ServerOptions};
use crate::shutdown;

/// Runs the server on `listener` until SIGTERM/SIGINT and the drain that follows.
pub async fn serve(args: ServeArgs, listener: TcpListener, root: Root) {
    let (trigger, shutdown) = shutdown::channel();
    tokio::spawn(async move {
        shutdown::terminate_signal().await;
        trigger.trigger();
        // A second signal means "now": skip the rest of the drain.
        shutdown::terminate_signal().await;
        tracing::warn!("second signal: exiting without waiting for the drain");
        std::process::exit(0);
    });
    serve_until(args, listener, root, shutdown, ServeHooks::default()).await;
}

/// What differs when a supervisor runs this process as one of its workers.
#[derive(Default)]
pub struct ServeHooks {
    /// Called once the state is built, just before the first accept: a
    /// worker tells its supervisor it is ready here.
    pub on_ready: Option<Box<dyn FnOnce() + Send>>,
    /// After the drain starts, how long idle keep-alive connections are left
    /// open so that their next request can still be answered (with
    /// `Connection: close`) instead of being cut under a client that is
    /// sending it. Zero (single process) closes idle connections at once.
    pub drain_linger: std::time::Duration,
    /// The shared metrics region and this worker's slot in it; `None` in
    /// single-process mode, which creates its own.
    pub metrics: Option<(&'static Region, usize)>,
}

fn own_region() -> std::io::Result<(&'static Region, usize)> {
    let region = Region::create()?;
    let slot = region
        .claim(0)
        .ok_or_else(|| std::io::Error::other("no free metrics slot"))?;
    region.set_pid(slot, std::process::id());
    Ok((region, slot))
}

/// Serves until `shutdown` fires, then drains; signal handling is the caller's.
pub async fn serve_until(
    args: ServeArgs,
    listener: TcpListener,
    root: Root,
    shutdown: shutdown::Shutdown,
    hooks: ServeHooks,
) {
    // A worker records into the slot its supervisor gave it; a single
    // process makes a region of its own.
    let (region, slot) = match hooks.metrics {
        Some(m) => m,
        None => match own_region() {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "cannot create the metrics region");
                return;
            }
        },
    };
    let metrics = region.slot(slot);
    let pool = CpuPool::new(
        args.effective_pool_threads(),
        args.effective_pool_queue(),
        metrics,
    );
    let draining = Arc::new(AtomicBool::new(false));
    let state = AppState {
        inner: Arc::new(Inner {
            root: Arc::new(root),
            pool,
            metrics,
            region,
            draining: draining.clone(),
            digest_cache: (args.digest_cache > 0)
                .then(|| Arc::new(DigestCache::new(args.digest_cache))),
            allow_write: args.allow_write,
            access_log: args.access_log,
            record_metrics: args.metrics,
            max_body: args.max_body,
            body_read_timeout: args.body_read_timeout,
        }),
    };
    let opts = ServerOptions {
        header_read_timeout: args.header_read_timeout,
        max_header_bytes: args.max_header_bytes.min(usize::MAX as u64) as usize,
        max_connections: args.max_connections,
        grace: args.grace,
        drain_linger: hooks.drain_linger,
    };
    if let Some(ready) = hooks.on_ready {
        ready();
    }
    server::run(listener, app(state), opts, shutdown, draining).await;
}
