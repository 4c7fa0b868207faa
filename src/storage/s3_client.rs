//! The HTTP client of the S3 backend for a plain-http endpoint (a store on
//! this host or its network: garage, MinIO, s3s-fs): hyper's client, on
//! sockets that acknowledge what they receive at once.
//!
//! Why not the default client: reads come as ranges, each a request on a
//! kept-alive connection, and a client that sends a request right after a
//! response makes the kernel delay its ACKs (Linux "pingpong" mode: 40 ms).
//! A store that writes its body in small chunks without TCP_NODELAY
//! (s3s-fs: 4 KiB) then holds the last bytes of every answer back (Nagle)
//! until that delayed ACK comes: 4 MiB ranges from s3s-fs took ~10 ms or
//! ~50 ms, bimodal, and setting TCP_QUICKACK before each read removed the
//! 50 ms ones (per connection, 20 ranges: ~100 MB/s → ~400 MB/s). The
//! default client (reqwest) does not let us reach its sockets, so this one
//! dials them itself. HTTPS endpoints keep the default client: TLS and its
//! roots are its business, and the stores that need this are local ones.
//!
//! It keeps the default client's contract with `object_store`: one overall
//! timeout per attempt, body included; a connect timeout; failures sorted
//! into `HttpErrorKind`s so that the retries treat them the same.

use std::error::Error;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::Uri;
use hyper::body::Incoming;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use object_store::ClientOptions;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpRequestBody,
    HttpResponse, HttpResponseBody, HttpService,
};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// Idle connections are closed after this (the default client's value).
const POOL_IDLE: Duration = Duration::from_secs(90);
/// Each connection reads answers in buffers of this one size. hyper's
/// default read buffer adapts (8 to 408 KiB) and is replaced whenever a
/// body chunk still holds its bytes: one 1 GiB read made ~200 allocations
/// of some twenty sizes between 64 and 800 KiB on the I/O threads, while
/// the heap in use stayed near 20 MiB. mimalloc gives each size above
/// 84 KiB a 4 MiB page per thread (above 512 KiB, pages of their own) and
/// keeps freed blocks resident: RSS grew by 63 MiB, 105 MiB committed.
/// With one 64 KiB size (the 512 KiB pages): 18 MiB, 27 MiB committed.
const READ_BUF: usize = 64 << 10;

/// Makes `object_store`'s clients for one plain-http endpoint.
#[derive(Debug)]
pub struct QuickAckConnector {
    /// One attempt, from sending the request to the body's last byte.
    pub timeout: Duration,
    pub connect_timeout: Duration,
}

impl HttpConnector for QuickAckConnector {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .http1_read_buf_exact_size(READ_BUF)
            .build(Dial {
                connect_timeout: self.connect_timeout,
            });
        Ok(HttpClient::new(QuickAckClient {
            client,
            timeout: self.timeout,
        }))
    }
}

struct QuickAckClient {
    client: Client<Dial, HttpRequestBody>,
    timeout: Duration,
}

impl std::fmt::Debug for QuickAckClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuickAckClient")
            .field("timeout", &self.timeout)
            .finish()
    }
}

// `HttpService` is declared with `#[async_trait]`: this is the signature it
// expands to, written out rather than adding the macro crate for one impl.
impl HttpService for QuickAckClient {
    fn call<'life0, 'async_trait>(
        &'life0 self,
        req: HttpRequest,
    ) -> Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            let deadline = Instant::now() + self.timeout;
            let answer = tokio::time::timeout_at(deadline, self.client.request(req))
                .await
                .map_err(|_| timed_out())?
                .map_err(|e| {
                    // A refused connection is `Connect`; a connect that timed
                    // out stays `Timeout`, as the default client reports it.
                    let kind = match kind_of(&e) {
                        HttpErrorKind::Unknown if e.is_connect() => HttpErrorKind::Connect,
                        kind => kind,
                    };
                    HttpError::new(kind, e)
                })?;
            Ok(answer.map(|body| {
                HttpResponseBody::new(Bounded {
                    body,
                    deadline: Box::pin(tokio::time::sleep_until(deadline)),
                })
            }))
        })
    }
}

fn timed_out() -> HttpError {
    HttpError::new(
        HttpErrorKind::Timeout,
        io::Error::new(io::ErrorKind::TimedOut, "the request timed out"),
    )
}

/// A failure sorted as the default client's are (see `object_store`'s
/// `HttpError::reqwest`): what the retries may repeat, and what not.
fn kind_of(e: &(dyn Error + 'static)) -> HttpErrorKind {
    let mut cur: Option<&(dyn Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_timeout() {
                return HttpErrorKind::Timeout;
            }
            if h.is_closed() || h.is_incomplete_message() || h.is_body_write_aborted() {
                return HttpErrorKind::Request;
            }
        }
        if let Some(io) = err.downcast_ref::<io::Error>() {
            match io.kind() {
                io::ErrorKind::TimedOut => return HttpErrorKind::Timeout,
                io::ErrorKind::ConnectionAborted
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof => return HttpErrorKind::Interrupted,
                _ => {}
            }
        }
        cur = err.source();
    }
    HttpErrorKind::Unknown
}

/// A response body that fails with a timeout past the attempt's deadline.
struct Bounded {
    body: Incoming,
    deadline: Pin<Box<Sleep>>,
}

impl Body for Bounded {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|r| r.map_err(|e| HttpError::new(kind_of(&e), e))));
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(timed_out()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Opens the connections: TCP, no Nagle, quick ACKs.
#[derive(Clone)]
struct Dial {
    connect_timeout: Duration,
}

impl tower::Service<Uri> for Dial {
    type Response = QuickAck;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<QuickAck>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let limit = self.connect_timeout;
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host in the URL"))?
                // An IPv6 address comes in brackets.
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(80);
            let stream = tokio::time::timeout(limit, TcpStream::connect((host.as_str(), port)))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
            stream.set_nodelay(true)?;
            Ok(QuickAck(TokioIo::new(stream)))
        })
    }
}

/// A connection that sets TCP_QUICKACK before each read (see the module
/// comment): one system call per read of up to hyper's buffer size. Against
/// garage too, reads were slower without it (1 GiB: ~450 against ~480
/// MB/s); a fixed 4 or 8 MiB SO_RCVBUF instead of the kernel's autotuning
/// gained nothing there.
struct QuickAck(TokioIo<TcpStream>);

impl Read for QuickAck {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        // A failure only costs the speed-up: the read itself goes on.
        let _ = crate::sys::quick_ack(self.0.inner());
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl Write for QuickAck {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
}

impl Connection for QuickAck {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that names its cause, as a client error names the I/O error.
    #[derive(Debug)]
    struct Wrapped(io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "request failed")
        }
    }

    impl Error for Wrapped {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn failures_are_sorted_as_the_default_client_sorts_them() {
        let kind = |k: io::ErrorKind| kind_of(&Wrapped(io::Error::new(k, "x")));
        // Retried: a timeout, a connection cut under a request.
        assert_eq!(kind(io::ErrorKind::TimedOut), HttpErrorKind::Timeout);
        for cut in [
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::ConnectionAborted,
            io::ErrorKind::BrokenPipe,
            io::ErrorKind::UnexpectedEof,
        ] {
            assert_eq!(kind(cut), HttpErrorKind::Interrupted, "{cut:?}");
        }
        // Anything else is left to the caller (a refused connect: `Connect`).
        assert_eq!(
            kind(io::ErrorKind::ConnectionRefused),
            HttpErrorKind::Unknown
        );
        assert_eq!(timed_out().kind(), HttpErrorKind::Timeout);
    }
}
