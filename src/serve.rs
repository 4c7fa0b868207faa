//! `hashpress serve` in one process: wire config, pool, storage and server.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio::net::TcpListener;

use crate::accept_gate::AcceptGate;
use crate::config::ServeArgs;
use crate::cpu_pool::{CpuPool, PoolLimits};
use crate::digest_cache::DigestCache;
use crate::http::auth::{Access, Tokens};
use crate::http::{AppState, Inner, admin_app, app};
use crate::metrics::Region;
use crate::server::{self, KeepAlive, ServerOptions};
use crate::shutdown;
use crate::storage::Backend;

/// Opens `--root` (with `check`, a bucket must also answer), or says why
/// not (exit code 2: a configuration error).
pub fn open_root(args: &ServeArgs, check: bool) -> Result<Backend, std::process::ExitCode> {
    Backend::open(args, check).map_err(|e| {
        eprintln!("hashpress: {e}");
        std::process::ExitCode::from(2)
    })
}

/// The runtime that serves HTTP, with `threads` I/O threads (see
/// `--io-threads`). One thread gets the current-thread scheduler, which has
/// no work stealing to pay for.
pub fn io_runtime(threads: usize) -> Result<tokio::runtime::Runtime, std::process::ExitCode> {
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    builder
        .enable_all()
        .thread_name("hashpress-io")
        .build()
        .map_err(|e| {
            eprintln!("hashpress: cannot start the runtime: {e}");
            std::process::ExitCode::FAILURE
        })
}

/// Runs the server on `listener` until SIGTERM/SIGINT and the drain that follows.
pub async fn serve(args: ServeArgs, listener: TcpListener, root: Backend) {
    let admin_listener = match args.admin_listen {
        Some(addr) => match TcpListener::bind(addr).await {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("hashpress: cannot listen on --admin-listen {addr}: {e}");
                std::process::exit(2);
            }
        },
        None => None,
    };
    let (trigger, shutdown) = shutdown::channel();
    tokio::spawn(async move {
        shutdown::terminate_signal().await;
        trigger.trigger();
        // A second signal means "now": skip the rest of the drain.
        shutdown::terminate_signal().await;
        tracing::warn!("second signal: exiting without waiting for the drain");
        std::process::exit(0);
    });
    let hooks = ServeHooks {
        admin_listener,
        reload_tokens_on_sighup: true,
        ..ServeHooks::default()
    };
    serve_until(args, listener, root, shutdown, hooks).await;
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
    /// `--admin-listen`, bound by the caller (single-process mode only).
    pub admin_listener: Option<TcpListener>,
    /// Single process: SIGHUP re-reads `--token-file`. (A supervisor turns
    /// SIGHUP into a reload, and new workers read the file as they start.)
    pub reload_tokens_on_sighup: bool,
}

fn own_region() -> std::io::Result<(&'static Region, usize)> {
    let region = Region::create()?;
    let slot = region
        .claim(0)
        .ok_or_else(|| std::io::Error::other("no free metrics slot"))?;
    region.set_pid(slot, std::process::id());
    region.set_own_build(&crate::build_info::Build::own());
    Ok((region, slot))
}

/// Serves until `shutdown` fires, then drains; signal handling is the caller's.
pub async fn serve_until(
    args: ServeArgs,
    listener: TcpListener,
    root: Backend,
    shutdown: shutdown::Shutdown,
    hooks: ServeHooks,
) {
    // A worker records into the slot its supervisor gave it, and gates its
    // accepts by its peers' connections; a single process makes a region of
    // its own.
    let gate = hooks
        .metrics
        .map(|(region, slot)| AcceptGate::new(region, slot));
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
    let tokens = match args.token_file.as_deref().map(Tokens::load).transpose() {
        Ok(t) => t.map(Arc::new),
        Err(e) => {
            // Checked at start already; the file changed since.
            tracing::error!(error = %e, "cannot read --token-file");
            return;
        }
    };
    let metrics = region.slot(slot);
    let crate::storage::Served { storage, dir } = match root.into_storage(metrics) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot open the storage");
            return;
        }
    };
    let pool = CpuPool::new(
        PoolLimits {
            threads: args.effective_pool_threads(),
            queue: args.effective_pool_queue(),
            max_wait: args.max_queue_wait,
        },
        metrics,
    );
    let state = AppState {
        inner: Arc::new(Inner {
            storage: Arc::clone(&storage),
            root: dir,
            pool,
            metrics,
            region,
            draining: Arc::new(AtomicBool::new(false)),
            digest_cache: (args.digest_cache > 0)
                .then(|| Arc::new(DigestCache::new(args.digest_cache))),
            allow_write: args.allow_write,
            io_threads: args.effective_io_threads(),
            access_log: args.access_log,
            record_metrics: args.metrics,
            max_body: args.max_body,
            body_read_timeout: args.body_read_timeout,
            access: Access {
                tokens: tokens.clone(),
                metrics_on_admin: hooks.admin_listener.is_some(),
            },
        }),
    };
    let opts = ServerOptions {
        header_read_timeout: args.header_read_timeout,
        max_header_bytes: args.max_header_bytes.min(usize::MAX as u64) as usize,
        max_connections: args.max_connections,
        grace: args.grace,
        drain_linger: hooks.drain_linger,
        keep_alive: KeepAlive {
            requests: args.keepalive_requests,
            time: args.keepalive_time,
            timeout: args.keepalive_timeout,
        },
        gate: None,
    };
    if hooks.reload_tokens_on_sighup {
        tokio::spawn(reload_on_sighup(tokens));
    }
    let admin = hooks.admin_listener.map(|l| {
        if let Ok(a) = l.local_addr() {
            tracing::info!("admin (metrics) listening on http://{a}");
        }
        let admin_opts = opts.clone();
        let down = shutdown.clone();
        let app = admin_app(state.clone());
        tokio::spawn(async move { server::run(l, app, admin_opts, down).await })
    });
    // Peers count this worker in before the supervisor hears it is ready
    // (and starts moving connections to it).
    if let Some(g) = gate {
        g.mark_accepting();
    }
    if let Some(ready) = hooks.on_ready {
        ready();
    }
    let opts = ServerOptions { gate, ..opts };
    server::run(listener, app(state), opts, shutdown).await;
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    // Requests cut at the end of the drain may have left uploads to abort.
    storage.close().await;
}

/// SIGHUP re-reads `--token-file` (and is harmless without one).
async fn reload_on_sighup(tokens: Option<Arc<Tokens>>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        match &tokens {
            None => tracing::info!("SIGHUP: no --token-file to re-read"),
            Some(t) => match t.reload() {
                Ok(n) => {
                    tracing::info!(tokens = n, file = %t.path().display(), "SIGHUP: token file re-read")
                }
                Err(e) => tracing::error!("SIGHUP: {e}; keeping the previous tokens"),
            },
        }
    }
}
