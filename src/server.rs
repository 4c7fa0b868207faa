//! The accept loop: connections, their keep-alive limits, accept gating,
//! and graceful drain.

use std::cell::Cell;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::accept_gate::AcceptGate;
use crate::http::{Answer, App, ConnFacts};
use hyper::rt::{Sleep, Timer};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::shutdown::Shutdown;

/// How long a connection is kept alive (as nginx's `keepalive_*`).
#[derive(Clone, Copy, Debug)]
pub struct KeepAlive {
    /// Answers per connection; the last carries `Connection: close`. 0 = no limit.
    pub requests: u64,
    /// Age past which answers carry `Connection: close`. Zero = no limit.
    pub time: Duration,
    /// Time an idle connection has for its next request (head included).
    /// Zero turns keep-alive off.
    pub timeout: Duration,
}

/// Connection-level limits and timings.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Time a client has to send its first request head (`--header-read-timeout`).
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
    /// `--keepalive-requests`, `--keepalive-time`, `--keepalive-timeout`.
    pub keep_alive: KeepAlive,
    /// Cluster mode: pauses accepts while this worker holds more than its
    /// share of the connections.
    pub gate: Option<AcceptGate>,
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
    let marking = opts.gate.map(|g| tokio::spawn(g.keep_marking()));
    loop {
        // Hold a slot before accepting: at the limit, new clients wait in the
        // kernel's queue instead of being accepted and starved.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = shutdown.recv() => break,
        };
        if let Some(gate) = &opts.gate {
            tokio::select! {
                _ = gate.wait() => {}
                _ = shutdown.recv() => break,
            }
        }
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
        let conn = graceful.watch(http_connection(stream, &app, &opts, true));
        spawn_connection(conn, &app, Some(permit));
    }
    app.start_draining();
    if let Some(gate) = &opts.gate {
        if let Some(m) = marking {
            m.abort();
        }
        gate.unmark();
    }
    // Closing the listener makes new connections fail fast (refused)
    // rather than queue behind a server that will not accept them. But the
    // connections the kernel has already completed and queued would be
    // reset with the last copy of the socket, their requests lost (a POST
    // that a balancer cannot resend): accept those first, slot or not
    // (the backlog bounds them), and answer one request on each. (In
    // cluster mode the supervisor closed its copy before telling the
    // workers to drain, so whichever worker closes last empties the queue
    // last.) They are not watched by `graceful`: hyper closes a connection
    // that has read nothing yet as soon as it is told to shut down, which
    // is exactly what they are; keep-alive off ends each after its answer.
    let queued = accept_queued(listener);
    if !queued.is_empty() {
        tracing::info!(
            connections = queued.len(),
            "accepted the connections queued when the drain began"
        );
    }
    let queued: Vec<_> = queued
        .into_iter()
        .map(|stream| spawn_connection(http_connection(stream, &app, &opts, false), &app, None))
        .collect();
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
    let all_done = async {
        graceful.shutdown().await;
        for task in queued {
            let _ = task.await;
        }
    };
    tokio::select! {
        _ = all_done => tracing::info!("drained; all connections closed"),
        _ = tokio::time::sleep_until(deadline) => tracing::warn!("grace period over; closing the remaining connections"),
    }
}

/// hyper's HTTP/1 connection for an accepted stream, with our limits;
/// `keep_alive: false` answers one request only.
fn http_connection(
    stream: TcpStream,
    app: &App,
    opts: &ServerOptions,
    keep_alive: bool,
) -> http1::Connection<TokioIo<TcpStream>, Connection> {
    let _ = stream.set_nodelay(true);
    let service = Connection::new(app.clone(), opts.keep_alive);
    let mut builder = http1::Builder::new();
    builder
        .timer(HeadTimer::new(
            opts.header_read_timeout,
            opts.keep_alive.timeout,
        ))
        .header_read_timeout(opts.header_read_timeout)
        // The exact head limit. The read buffer's cap alone lets heads
        // through well past it: a read fills all the spare capacity of
        // the buffer, which may exceed the cap, and a head that is
        // complete in the buffer is then accepted whatever its size.
        // hyper writes that 431 itself, with an empty body: it offers no
        // hook to shape the answer to a head it refused to parse.
        .max_header_size(opts.max_header_bytes)
        .max_buf_size(opts.max_header_bytes.max(8192))
        .keep_alive(keep_alive && !opts.keep_alive.timeout.is_zero());
    builder.serve_connection(TokioIo::new(stream), service)
}

/// Runs a connection on a task of its own, counted in the metrics;
/// `permit` is its `--max-connections` slot (none for the connections a
/// drain takes from the queue).
fn spawn_connection<E: std::fmt::Display>(
    conn: impl Future<Output = Result<(), E>> + Send + 'static,
    app: &App,
    permit: Option<OwnedSemaphorePermit>,
) -> tokio::task::JoinHandle<()> {
    let metrics = app.metrics();
    metrics.connection_opened();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
        metrics.connection_closed();
        drop(permit);
    })
}

/// Takes every connection the kernel has queued on `listener`, then closes
/// it. The accepts are made directly on the socket, not through the
/// reactor, whose readiness may lag behind the queue.
fn accept_queued(listener: TcpListener) -> Vec<TcpStream> {
    let mut queued = Vec::new();
    let listener = match listener.into_std() {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot take the queued connections");
            return queued;
        }
    };
    loop {
        match listener.accept() {
            Ok((stream, _peer)) => {
                let stream = stream
                    .set_nonblocking(true)
                    .and_then(|()| TcpStream::from_std(stream));
                match stream {
                    Ok(s) => queued.push(s),
                    Err(e) => tracing::warn!(error = %e, "a queued connection is lost"),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => {
                // EMFILE and friends: what is still queued is reset with the socket.
                tracing::warn!(error = %e, "accepting the queued connections failed");
                break;
            }
        }
    }
    queued
}

/// One connection's service: counts its answers and knows its age, so that
/// the one that passes a keep-alive limit tells the client to reconnect.
/// Nothing here allocates per request.
struct Connection {
    app: App,
    /// Answers begun so far (hyper calls one at a time per connection).
    answered: Cell<u64>,
    /// `--keepalive-requests`, 0 = no limit.
    max_requests: u64,
    /// Accepted at, plus `--keepalive-time`.
    expires: Option<Instant>,
}

impl Connection {
    fn new(app: App, keep_alive: KeepAlive) -> Connection {
        let expires = (!keep_alive.time.is_zero()).then(|| Instant::now() + keep_alive.time);
        Connection {
            app,
            answered: Cell::new(0),
            max_requests: keep_alive.requests,
            expires,
        }
    }
}

impl<B> hyper::service::Service<axum::http::Request<B>> for Connection
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = Answer;

    fn call(&self, req: axum::http::Request<B>) -> Answer {
        let n = self.answered.get() + 1;
        self.answered.set(n);
        let facts = ConnFacts {
            last: self.max_requests != 0 && n >= self.max_requests,
            expires: self.expires,
        };
        self.app.call_on(req, facts)
    }
}

/// hyper's request-head timer for one connection. hyper starts it when it
/// begins waiting for a head: at the accept for the first request, and as
/// soon as the previous answer is sent for every later one, so on an idle
/// keep-alive connection it measures the idle time plus the head. The first
/// head gets `--header-read-timeout` (a slow client is cut early); later ones
/// `--keepalive-timeout` (an idle client may think before its next request).
struct HeadTimer {
    tokio: TokioTimer,
    /// No head has been waited for yet.
    first: AtomicBool,
    header_read: Duration,
    keep_alive: Duration,
}

impl HeadTimer {
    fn new(header_read: Duration, keep_alive: Duration) -> HeadTimer {
        HeadTimer {
            tokio: TokioTimer::new(),
            first: AtomicBool::new(true),
            header_read,
            keep_alive,
        }
    }

    /// hyper asks for "now + header-read timeout"; a later head gets
    /// "now + keep-alive timeout" instead.
    fn deadline(&self, asked: Instant) -> Instant {
        // A load and, once, a store: no locked instruction per request.
        if self.first.load(Ordering::Relaxed) {
            self.first.store(false, Ordering::Relaxed);
            return asked;
        }
        match asked.checked_sub(self.header_read) {
            Some(started) => started + self.keep_alive,
            None => asked,
        }
    }
}

impl Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.tokio.sleep(duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        self.tokio.sleep_until(self.deadline(deadline))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: Instant) {
        self.tokio.reset(sleep, self.deadline(new_deadline));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_head_gets_the_header_timeout_later_ones_the_keep_alive_timeout() {
        let t = HeadTimer::new(Duration::from_secs(10), Duration::from_secs(75));
        let now = Instant::now();
        let asked = now + Duration::from_secs(10);
        assert_eq!(t.deadline(asked), asked);
        assert_eq!(t.deadline(asked), now + Duration::from_secs(75));
        assert_eq!(t.deadline(asked), now + Duration::from_secs(75));
        // Shorter than the header timeout: later heads get less.
        let t = HeadTimer::new(Duration::from_secs(10), Duration::from_secs(1));
        t.deadline(asked);
        assert_eq!(t.deadline(asked), now + Duration::from_secs(1));
    }
}
