//! The framework floor, for `bench/run`: hyper's HTTP/1 server on tokio,
//! with the same allocator and connection settings as hashpress, that reads
//! each request body to its end and answers a constant JSON digest. No
//! routing, no hashing, no metrics. What it reaches on a given machine is
//! the most hashpress could reach on the same stack; what nginx's constant
//! answer reaches is the most any server reaches there.
//!
//!     cargo run --release --example hyper_floor -- 127.0.0.1:3197 [THREADS]
//!
//! THREADS defaults to one per core; 1 runs tokio's current-thread scheduler.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ANSWER: &[u8] =
    br#"{"hash":"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"}"#;

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the body as hashpress does, then drop it.
    let _ = req.into_body().collect().await;
    let mut resp = Response::new(Full::new(Bytes::from_static(ANSWER)));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .and_then(|a| a.parse().ok())
        .expect("usage: hyper_floor ADDR:PORT [THREADS]");
    let threads: usize = args
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // The same runtime hashpress builds for the same thread count.
    let Ok(runtime) = hashpress::worker::io_runtime(threads) else {
        std::process::exit(1);
    };
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("binding the address");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let mut builder = hyper::server::conn::http1::Builder::new();
                // hashpress sets a header read timeout; so does the floor.
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10));
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service_fn(answer))
                    .await;
            });
        }
    });
}
