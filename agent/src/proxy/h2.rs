//! The HTTP/2 server side (hyper's), for TLS connections that chose `h2` by ALPN and plaintext
//! connections that open with the HTTP/2 preface (h2c with prior knowledge). Every stream goes
//! through the same handler as an HTTP/1.1 request; the connection runs on the worker's
//! LocalSet like everything else.
//!
//! Limits: `proxy.http2.maxConcurrentStreams` streams at once, a header list of at most
//! `proxy.maxHeaderBytes`, a bounded count of streams the client resets before they are served
//! (rapid reset, CVE-2023-44487) and of streams tether itself must reset for the client's
//! errors; h2 bounds CONTINUATION frames by the header list limit. A connection with no open
//! stream for `clientIdle` is closed with GOAWAY; one whose client withholds flow-control
//! credit from a response for `clientIdle` is closed at once.
use super::body::{ClientBody, H2Body};
use super::handler::{self, plain, Answer, ProxyBody};
use super::headers;
use super::idle::WriteStall;
use super::Connection;
use bytes::BytesMut;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::debug;

/// The connection preface every HTTP/2 client sends first (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Streams a client may reset before tether has started serving them; past it, GOAWAY
/// (ENHANCE_YOUR_CALM): the rapid reset attack opens and cancels streams in a loop.
const MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Streams tether may reset for the client's own protocol errors before it gives up on the
/// connection (the same attack, provoked through malformed frames).
const MAX_LOCAL_ERROR_RESETS: usize = 256;

/// hyper's tasks (a stream's response, a connection) go to the worker's LocalSet: they hold the
/// worker's `Rc`s and never leave its thread.
#[derive(Clone, Copy)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, future: F) {
        tokio::task::spawn_local(future);
    }
}

/// Whether `bytes`, the first bytes of a connection, are the HTTP/2 preface (`Some(true)`),
/// cannot be (`Some(false)`), or are a start of it that needs more bytes (`None`).
pub fn is_preface(bytes: &[u8]) -> Option<bool> {
    let compared = bytes.len().min(PREFACE.len());
    if bytes[..compared] != PREFACE[..compared] {
        Some(false)
    } else if compared == PREFACE.len() {
        Some(true)
    } else {
        None
    }
}

/// Serves one client connection over HTTP/2 until the client closes it, it stays idle for
/// `clientIdle`, or shutdown; `early` are bytes already read from it (the preface).
pub async fn serve<T>(
    transport: T,
    early: BytesMut,
    connection: Rc<Connection>,
    mut shutdown: watch::Receiver<bool>,
) where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let shared = connection.shared.clone();
    let (timeouts, max_header_bytes, settings) = {
        let tables = shared.tables.load();
        (tables.timeouts, tables.max_header_bytes, tables.http2)
    };
    let streams = Rc::new(Streams::new());
    let service = {
        let streams = streams.clone();
        let connection = connection.clone();
        hyper::service::service_fn(move |request: Request<Incoming>| {
            let open = Open::new(&streams);
            let connection = connection.clone();
            async move {
                Ok::<_, Infallible>(exchange(request, connection, open, timeouts.client_idle).await)
            }
        })
    };
    let mut builder = hyper::server::conn::http2::Builder::new(LocalExec);
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_concurrent_streams)
        .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESETS);
    let io = TokioIo::new(WriteStall::new(
        Prefixed::new(early, transport),
        timeouts.client_idle,
    ));
    let served = builder.serve_connection(io, service);
    tokio::pin!(served);
    let mut closing = false;
    loop {
        tokio::select! {
            result = served.as_mut() => {
                if let Err(error) = result {
                    debug!(client = %connection.client, %error, "HTTP/2 connection ended");
                }
                break;
            }
            _ = shutdown.changed(), if !closing => {
                closing = true;
                served.as_mut().graceful_shutdown();
            }
            watched = streams.watch(timeouts.client_idle), if !closing => match watched {
                Watched::Idle => {
                    debug!(client = %connection.client, "HTTP/2 connection idle for clientIdle: GOAWAY");
                    closing = true;
                    served.as_mut().graceful_shutdown();
                }
                Watched::Starved => {
                    shared.outcomes.stalled.inc();
                    debug!(client = %connection.client, "HTTP/2 client gave no flow-control credit for clientIdle: connection closed");
                    break;
                }
            },
        }
    }
    shared.metrics.client_connections.dec();
}

/// One stream: the handler's answer as an HTTP/2 response.
async fn exchange(
    request: Request<Incoming>,
    connection: Rc<Connection>,
    open: Open,
    client_idle: Duration,
) -> Response<StreamBody> {
    let response = if request.method() == Method::CONNECT {
        // RFC 9113 §8.5: CONNECT over HTTP/2 tunnels through one stream; tether does not.
        connection.shared.outcomes.method_not_allowed.inc();
        plain(
            StatusCode::NOT_IMPLEMENTED,
            "CONNECT over HTTP/2 is not supported; use HTTP/1.1\n",
        )
    } else {
        let (parts, incoming) = request.into_parts();
        let (body, progress) = H2Body::new(incoming, client_idle);
        let request = Request::from_parts(parts, body.map(ClientBody::H2));
        let Answer { response, tunnel } =
            Box::pin(handler::handle(request, progress, connection)).await;
        if tunnel.is_some() {
            // Not reached: HTTP/2 requests carry no Upgrade, and CONNECT is refused above.
            plain(StatusCode::BAD_GATEWAY, "the target switched protocols\n")
        } else {
            response
        }
    };
    let (mut parts, body) = response.into_parts();
    // Connection-specific fields are malformed in HTTP/2 (RFC 9113 §8.2.2), `Connection: close`
    // on a refusal included.
    headers::remove_hop_by_hop(&mut parts.headers, false);
    let waiting = open.0.track();
    Response::from_parts(
        parts,
        StreamBody {
            inner: body,
            waiting,
            _open: open,
        },
    )
}

/// The connection's open streams, when the last one ended, and since when each response body
/// has waited for hyper to take its next frame.
struct Streams {
    open: Cell<usize>,
    last: Cell<Instant>,
    bodies: RefCell<Vec<Rc<Waiting>>>,
}

/// Since when a response body has had a frame taken and not been asked for the next: hyper
/// asks only while the client's flow-control window has room.
type Waiting = Cell<Option<Instant>>;

/// What [`Streams::watch`] saw.
enum Watched {
    /// No stream open for the limit.
    Idle,
    /// A response has waited for the client's flow-control credit for the limit: the client
    /// reads the socket (so writes do not stall) but does not let the response through.
    Starved,
}

impl Streams {
    fn new() -> Self {
        Self {
            open: Cell::new(0),
            last: Cell::new(Instant::now()),
            bodies: RefCell::new(Vec::new()),
        }
    }

    /// Resolves once no stream has been open for `limit`, or a response body has waited for
    /// the client's credit that long.
    async fn watch(&self, limit: Duration) -> Watched {
        loop {
            let now = Instant::now();
            if self.open.get() == 0 {
                let deadline = self.last.get() + limit;
                if deadline <= now {
                    return Watched::Idle;
                }
                tokio::time::sleep_until(deadline).await;
                continue;
            }
            let starved = {
                let mut bodies = self.bodies.borrow_mut();
                // A body hyper has dropped is held here only.
                bodies.retain(|waiting| Rc::strong_count(waiting) > 1);
                bodies.iter().any(|waiting| {
                    waiting
                        .get()
                        .is_some_and(|since| now.duration_since(since) >= limit)
                })
            };
            if starved {
                return Watched::Starved;
            }
            tokio::time::sleep(limit / 2).await;
        }
    }

    /// A new response body's wait, watched until hyper drops the body.
    fn track(&self) -> Rc<Waiting> {
        let waiting = Rc::new(Cell::new(Some(Instant::now())));
        let mut bodies = self.bodies.borrow_mut();
        // Live bodies are at most the open streams: pruning at twice that keeps a long-lived
        // connection's list bounded (amortized, whether or not the watch ever wakes).
        if bodies.len() >= 16 && bodies.len() >= 2 * self.open.get() {
            bodies.retain(|waiting| Rc::strong_count(waiting) > 1);
        }
        bodies.push(waiting.clone());
        waiting
    }
}

/// A stream counted open until its response body is done (or dropped).
struct Open(Rc<Streams>);

impl Open {
    fn new(streams: &Rc<Streams>) -> Self {
        streams.open.set(streams.open.get() + 1);
        streams.last.set(Instant::now());
        Self(streams.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.set(self.0.open.get().saturating_sub(1));
        self.0.last.set(Instant::now());
    }
}

/// A response body that keeps its stream counted open, and records when it waits for hyper
/// (that is, for the client's flow-control credit).
pub struct StreamBody {
    inner: ProxyBody,
    waiting: Rc<Waiting>,
    _open: Open,
}

impl Body for StreamBody {
    type Data = Bytes;
    type Error = <ProxyBody as Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        // Waiting on the target is the target body's own limit; only a frame handed over
        // starts the wait for hyper's next ask.
        let waiting = matches!(polled, Poll::Ready(Some(Ok(_)))).then(Instant::now);
        self.waiting.set(waiting);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A transport whose first reads return bytes already taken from it.
pub struct Prefixed<T> {
    early: BytesMut,
    inner: T,
}

impl<T> Prefixed<T> {
    pub fn new(early: BytesMut, inner: T) -> Self {
        Self { early, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.early.is_empty() {
            let take = self.early.len().min(buf.remaining());
            let early = self.early.split_to(take);
            buf.put_slice(&early);
            if self.early.is_empty() {
                self.early = BytesMut::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_streams_do_not_pile_up_on_a_long_lived_connection() {
        let streams = Rc::new(Streams::new());
        let kept: Vec<_> = (0..5)
            .map(|_| (Open::new(&streams), streams.track()))
            .collect();
        for _ in 0..10_000 {
            let open = Open::new(&streams);
            let waiting = streams.track();
            drop((open, waiting));
        }
        assert_eq!(streams.open.get(), 5);
        assert!(
            streams.bodies.borrow().len() <= 16,
            "{}",
            streams.bodies.borrow().len()
        );
        drop(kept);
        assert_eq!(streams.open.get(), 0);
    }

    #[test]
    fn the_preface_is_recognised_from_its_first_byte() {
        assert_eq!(is_preface(PREFACE), Some(true));
        assert_eq!(
            is_preface(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00"),
            Some(true)
        );
        assert_eq!(is_preface(b"PRI * HT"), None);
        assert_eq!(is_preface(b"P"), None);
        assert_eq!(is_preface(b"POST / HTTP/1.1\r\n"), Some(false));
        assert_eq!(is_preface(b"PRI * HTTP/1.1\r\n"), Some(false));
        assert_eq!(is_preface(b"GET / HTTP/1.1\r\n"), Some(false));
    }
}
