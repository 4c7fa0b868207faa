//! `hashpress serve` in one process: wire config, pool, root and server.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio::net::TcpListener;

use crate::config::ServeArgs;
use crate::cpu_pool::CpuPool;
use crate::http::auth::{Access, Tokens};
use crate::http::{AppState, Inner, admin_app, app};
use crate::metrics::Slot;
use crate::root::Root;
use crate::server::{self, ServerOptions};
use crate::shutdown;

/// Runs the server on `listener` until SIGTERM/SIGINT and the drain that follows.
pub async fn serve(args: ServeArgs, listener: TcpListener, root: Root) {
    let metrics: Arc<Slot> = Arc::from(Slot::new_boxed());
    let pool = CpuPool::new(
        args.effective_pool_threads(),
        args.effective_pool_queue(),
        metrics.clone(),
    );
    let draining = Arc::new(AtomicBool::new(false));
    let tokens = args
        .token_file
        .as_deref()
        .map(|path| match Tokens::load(path) {
            Ok(t) => Arc::new(t),
            Err(e) => {
                // Checked at start already; the file vanished since.
                eprintln!("hashpress: {e}");
                std::process::exit(2);
            }
        });
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
    let state = AppState {
        inner: Arc::new(Inner {
            root: Arc::new(root),
            pool,
            metrics,
            draining: draining.clone(),
            allow_write: args.allow_write,
            max_body: args.max_body,
            body_read_timeout: args.body_read_timeout,
            access: Access {
                tokens: tokens.clone(),
                metrics_on_admin: admin_listener.is_some(),
            },
        }),
    };
    let opts = ServerOptions {
        header_read_timeout: args.header_read_timeout,
        max_header_bytes: args.max_header_bytes.min(usize::MAX as u64) as usize,
        max_connections: args.max_connections,
        grace: args.grace,
    };
    let (trigger, shutdown) = shutdown::channel();
    let trigger_for_admin = trigger.clone();
    tokio::spawn(async move {
        shutdown::terminate_signal().await;
        trigger.trigger();
        // A second signal means "now": skip the rest of the drain.
        shutdown::terminate_signal().await;
        tracing::warn!("second signal: exiting without waiting for the drain");
        std::process::exit(0);
    });
    tokio::spawn(reload_on_sighup(tokens));
    let admin = admin_listener.map(|l| {
        if let Ok(a) = l.local_addr() {
            tracing::info!("admin (metrics) listening on http://{a}");
        }
        let admin_opts = opts.clone();
        let down = trigger_for_admin.subscribe();
        let app = admin_app(state.clone());
        tokio::spawn(async move {
            server::run(l, app, admin_opts, down, Arc::new(AtomicBool::new(false))).await
        })
    });
    server::run(listener, app(state), opts, shutdown, draining).await;
    if let Some(admin) = admin {
        let _ = admin.await;
    }
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
