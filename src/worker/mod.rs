//! The worker role: one process serving HTTP. `--workers 0` runs it in the
//! process the user started; in cluster mode each worker process runs it on
//! the socket its supervisor passed down (see `child`). The start-up
//! sequence is written once, here; what differs between the two is in
//! `ListenerSource` and `Hooks`.

pub mod child;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::accept_gate::AcceptGate;
use crate::config::Config;
use crate::cpu_pool::CpuPool;
use crate::digest_cache::DigestCache;
use crate::http::auth::{Access, Tokens};
use crate::http::{AppState, Inner, admin_app, app};
use crate::metrics::Region;
use crate::server::{self, ServerOptions};
use crate::shutdown::{self, ShutdownTrigger};
use crate::start_error::StartError;
use crate::storage::Backend;
use crate::tls::Certs;

/// Where the listening socket comes from.
pub enum ListenerSource {
    /// `--workers 0`: bind `--listen` in this process.
    Bind(SocketAddr),
    /// A worker: the supervisor's socket, inherited (blocking mode as passed).
    Inherited(std::net::TcpListener),
}

/// Which of the two roles runs: they differ in signals and in who owns the
/// metrics region.
pub enum Role {
    /// `--workers 0`: SIGTERM/SIGINT drain, a second one exits at once;
    /// SIGHUP re-reads `--token-file`. The process makes its own metrics region.
    Single,
    /// Started by a supervisor: SIGTERM/SIGINT drain (again and again: only
    /// the supervisor decides to hurry), SIGQUIT exits at once; SIGHUP is
    /// the supervisor's (a reload starts new workers).
    Worker {
        /// The shared metrics region and this worker's slot in it.
        metrics: (&'static Region, usize),
        /// Called once the state is built, just before the first accept: the
        /// worker tells its supervisor it is ready here.
        on_ready: Box<dyn FnOnce() + Send>,
    },
}

/// What differs between the two roles.
pub struct Hooks {
    pub role: Role,
    /// After the drain starts, how long idle keep-alive connections are left
    /// open so that their next request can still be answered (with
    /// `Connection: close`) instead of being cut under a client that is
    /// sending it. Zero (single process) closes idle connections at once.
    pub drain_linger: Duration,
}

impl Hooks {
    /// `--workers 0`.
    pub fn single() -> Hooks {
        Hooks {
            role: Role::Single,
            drain_linger: Duration::ZERO,
        }
    }
}

/// Serves until the role's signals say stop and the drain is over.
pub fn run(config: Config, source: ListenerSource, hooks: Hooks) -> Result<(), StartError> {
    let single = matches!(hooks.role, Role::Single);
    // A single process checks that the store answers; a worker started while
    // it is briefly down must not crash-loop (its supervisor checked), and
    // answers 502 until it is back.
    let root = Backend::open(&config.storage, single).map_err(StartError::Config)?;
    // Loaded as the process starts: a reload's new workers see new files.
    let tls = config
        .tls
        .as_ref()
        .map(Certs::load)
        .transpose()
        .map_err(StartError::Config)?
        .map(Arc::new);
    let runtime = io_runtime(config.api.io_threads)
        .map_err(|e| StartError::system("cannot start the runtime", e))?;
    let served = runtime.block_on(async move {
        let listener = match source {
            ListenerSource::Bind(addr) => TcpListener::bind(addr).await,
            // Non-blocking is a property of the shared open socket: every
            // worker sets it, and the supervisor never accepts, so all agree.
            ListenerSource::Inherited(l) => l
                .set_nonblocking(true)
                .and_then(|()| TcpListener::from_std(l)),
        }
        .map_err(|e| StartError::system(format!("cannot listen on {}", config.listen), e))?;
        let admin_listener = match config.admin_listen {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
                StartError::config(format!("cannot listen on --admin-listen {addr}: {e}"))
            })?),
            None => None,
        };
        let signals = StopSignals::install(single)
            .map_err(|e| StartError::system("cannot install signal handlers", e))?;
        if single {
            let addr = listener.local_addr().map_or(config.listen, |a| a);
            tracing::info!(
                root = %config.storage.root,
                io_threads = config.api.io_threads,
                pool_threads = config.pool.threads,
                pool_queue = config.pool.queue,
                max_queue_wait_ms = config.pool.max_wait.as_millis() as u64,
                allow_write = config.api.allow_write,
                "listening on {}://{addr}",
                if tls.is_some() { "https" } else { "http" }
            );
        }
        let (trigger, shutdown) = shutdown::channel();
        let hurry = tokio::spawn(signals.run(trigger));
        tokio::select! {
            r = serve(config, listener, admin_listener, root, tls, shutdown, hooks) => r,
            // A second signal (single) or SIGQUIT (worker): skip the rest of the drain.
            _ = hurry => Ok(()),
        }
    });
    // Pool threads may still be busy with a request cut short; they die with us.
    runtime.shutdown_background();
    served
}

/// The runtime that serves HTTP, with `threads` I/O threads (see
/// `--io-threads`). One thread gets the current-thread scheduler, which has
/// no work stealing to pay for.
pub fn io_runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    builder.enable_all().thread_name("hashpress-io").build()
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

/// Builds the state and serves until `shutdown` fires, then drains.
async fn serve(
    config: Config,
    listener: TcpListener,
    admin_listener: Option<TcpListener>,
    root: Backend,
    tls: Option<Arc<Certs>>,
    shutdown: shutdown::Shutdown,
    hooks: Hooks,
) -> Result<(), StartError> {
    // A worker records into the slot its supervisor gave it, and gates its
    // accepts by its peers' connections; a single process makes a region of
    // its own.
    let (metrics_slot, on_ready) = match hooks.role {
        Role::Single => (None, None),
        Role::Worker { metrics, on_ready } => (Some(metrics), Some(on_ready)),
    };
    let gate = metrics_slot.map(|(region, slot)| AcceptGate::new(region, slot));
    let (region, slot) = match metrics_slot {
        Some(m) => m,
        None => {
            own_region().map_err(|e| StartError::system("cannot create the metrics region", e))?
        }
    };
    // A worker reads the file as it starts: what a reload re-reads.
    let tokens = config
        .token_file
        .as_deref()
        .map(Tokens::load)
        .transpose()
        .map_err(StartError::Config)?
        .map(Arc::new);
    let metrics = region.slot(slot);
    let crate::storage::Served { storage, dir } =
        root.into_storage(metrics).map_err(StartError::Config)?;
    let pool = CpuPool::new(config.pool, metrics);
    let state = AppState {
        inner: Arc::new(Inner {
            storage: Arc::clone(&storage),
            root: dir,
            pool,
            metrics,
            region,
            draining: Arc::new(AtomicBool::new(false)),
            digest_cache: (config.api.digest_cache > 0)
                .then(|| Arc::new(DigestCache::new(config.api.digest_cache))),
            config: Arc::clone(&config.api),
            access: Access {
                tokens: tokens.clone(),
                metrics_on_admin: admin_listener.is_some(),
            },
        }),
    };
    let opts = ServerOptions {
        limits: config.connections,
        drain_linger: hooks.drain_linger,
        gate: None,
        tls: None,
    };
    if gate.is_none() {
        // A supervisor turns SIGHUP into a reload, and new workers read the
        // file as they start.
        tokio::spawn(reload_on_sighup(tokens, tls.clone()));
    }
    let admin = admin_listener.map(|l| {
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
    if let Some(g) = &gate {
        g.mark_accepting();
    }
    if let Some(ready) = on_ready {
        ready();
    }
    let opts = ServerOptions { gate, tls, ..opts };
    server::run(listener, app(state), opts, shutdown).await;
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    // Requests cut at the end of the drain may have left uploads to abort.
    storage.close().await;
    Ok(())
}

/// The role's stop signals, installed before serving so that a failure is
/// a start-up error.
struct StopSignals {
    term: Signal,
    int: Signal,
    /// A worker's "exit now"; a single process leaves SIGQUIT at its
    /// default (a core dump).
    quit: Option<Signal>,
    single: bool,
}

impl StopSignals {
    fn install(single: bool) -> std::io::Result<StopSignals> {
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            quit: if single {
                None
            } else {
                Some(signal(SignalKind::quit())?)
            },
            single,
        })
    }

    /// The first SIGTERM/SIGINT fires `trigger`; returns when the process
    /// should exit without finishing the drain: a second SIGTERM/SIGINT in
    /// a single process, SIGQUIT in a worker.
    async fn run(mut self, trigger: ShutdownTrigger) {
        loop {
            tokio::select! {
                _ = self.term.recv() => tracing::info!("SIGTERM: draining"),
                _ = self.int.recv() => tracing::info!("SIGINT: draining"),
                () = recv_if_some(&mut self.quit) => {
                    tracing::warn!("SIGQUIT: exiting without draining");
                    return;
                }
            }
            let already = trigger.subscribe().is_shutdown();
            trigger.trigger();
            if already && self.single {
                tracing::warn!("second signal: exiting without waiting for the drain");
                return;
            }
        }
    }
}

async fn recv_if_some(signal: &mut Option<Signal>) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// SIGHUP re-reads `--token-file` and the TLS files (and is harmless
/// without them); a file that does not load leaves the previous one in use.
async fn reload_on_sighup(tokens: Option<Arc<Tokens>>, tls: Option<Arc<Certs>>) {
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
        if let Some(certs) = &tls {
            match certs.reload() {
                Ok(()) => tracing::info!(
                    cert = %certs.files().cert.display(),
                    "SIGHUP: TLS certificate re-read; new connections get it"
                ),
                Err(e) => tracing::error!("SIGHUP: {e}; keeping the previous certificate"),
            }
        }
    }
}
