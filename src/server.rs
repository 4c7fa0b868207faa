//! The accept loop: connections, limits and graceful drain.

use std::sync::Arc;
use std::time::Duration;

use crate::http::App;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::shutdown::Shutdown;

/// Connection-level limits and timings.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Time a client has to send its request head (`--header-read-timeout`).
    pub header_read_timeout: Duration,
    /// Largest request head in bytes (`--max-header-bytes`), request line
    /// and final blank line included; hyper answers 431 past it.
    pub max_header_bytes: usize,
    /// Connections served at once (`--max-connections`); more wait in the backlog.
    pub max_connections: usize,
    /// How long the drain may take after shutdown begins (`--grace`).
    pub grace: Duration,
    /// How long idle keep-alive connections stay open once the drain begins,
    /// so that a request already on its way is answered (with
    /// `Connection: close`) rather than met by a closed socket. Zero closes
    /// them at once (single process: nobody else will serve the client).
    pub drain_linger: Duration,
}

/// Serves `app` on an already-bound `listener` until `shutdown` fires, then
/// stops accepting, lets in-flight requests finish for up to `grace`, and
/// returns. The app's draining flag is raised as soon as the drain starts.
pub async fn run(listener: TcpListener, app: App, opts: ServerOptions, mut shutdown: Shutdown) {
    let graceful = GracefulShutdown::new();
    let max_connections = opts
        .max_connections
        .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        // Hold a slot before accepting: at the limit, new clients wait in the
        // kernel's queue instead of being accepted and starved.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = shutdown.recv() => break,
        };
        let (stream, _peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.recv() => break,
        };
        let _ = stream.set_nodelay(true);
        let service = app.clone();
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(opts.header_read_timeout)
            // The exact head limit. The read buffer's cap alone lets heads
            // through well past it: a read fills all the spare capacity of
            // the buffer, which may exceed the cap, and a head that is
            // complete in the buffer is then accepted whatever its size.
            // hyper writes that 431 itself, with an empty body: it offers no
            // hook to shape the answer to a head it refused to parse.
            .max_header_size(opts.max_header_bytes)
            .max_buf_size(opts.max_header_bytes.max(8192))
            .keep_alive(true);
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    app.start_draining();
    // Closing the listener now makes new connections fail fast (refused)
    // rather than queue behind a server that will not accept them. (In
    // cluster mode this closes only our copy: the socket stays open in the
    // supervisor and the other workers, so queued connections go to them.)
    drop(listener);
    tracing::info!(
        grace_ms = opts.grace.as_millis() as u64,
        "draining in-flight requests"
    );
    let deadline = tokio::time::Instant::now() + opts.grace;
    if !opts.drain_linger.is_zero() {
        // Every permit back means every connection has closed by itself.
        let all_closed = slots.acquire_many(max_connections as u32);
        tokio::select! {
            _ = all_closed => {}
            _ = tokio::time::sleep(opts.drain_linger.min(opts.grace)) => {}
        }
    }
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("drained; all connections closed"),
        _ = tokio::time::sleep_until(deadline) => tracing::warn!("grace period over; closing the remaining connections"),
    }
}
