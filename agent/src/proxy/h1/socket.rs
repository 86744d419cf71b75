//! The client's socket, shared by the connection task (which reads heads and writes responses)
//! and the request body (which the upstream connection reads while the handler waits). Every
//! operation goes through `&self` and no borrow outlives a poll, so the two never conflict.
//!
//! Bytes read but not yet used wait in `pending`, which is empty, and holds no memory, while
//! the connection is idle between requests.
//!
//! The socket is plain TCP or TLS ([`Transport`]). Plain TCP is read and written through
//! readiness (`try_read`, `sendmsg`) with no buffer of its own; TLS goes through
//! rustls, which keeps its own buffers.
use bytes::BytesMut;
use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::proxy::idle::stalled;

/// How much one read asks for.
const READ_SIZE: usize = 8 * 1024;

/// A client connection's byte stream.
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(stream) => stream.is_write_vectored(),
            Transport::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

pub struct ClientSocket {
    stream: Stream,
    pending: RefCell<BytesMut>,
    /// `proxy.timeouts.clientIdle`: a write that makes no progress this long fails.
    write_idle: Duration,
}

enum Stream {
    Plain(TcpStream),
    /// rustls needs `&mut` to read or write; no borrow outlives a poll.
    Tls(RefCell<Box<tokio_rustls::server::TlsStream<TcpStream>>>),
}

impl ClientSocket {
    pub fn new(transport: Transport, write_idle: Duration) -> Self {
        Self {
            stream: match transport {
                Transport::Plain(stream) => Stream::Plain(stream),
                Transport::Tls(stream) => Stream::Tls(RefCell::new(stream)),
            },
            pending: RefCell::new(BytesMut::new()),
            write_idle,
        }
    }

    /// Runs `f` on the bytes read and not yet used.
    pub fn with_pending<R>(&self, f: impl FnOnce(&mut BytesMut) -> R) -> R {
        f(&mut self.pending.borrow_mut())
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.borrow().is_empty()
    }

    /// Frees the read buffer when nothing is left in it: an idle connection holds no buffer.
    pub fn release_buffer(&self) {
        let mut pending = self.pending.borrow_mut();
        if pending.is_empty() {
            *pending = BytesMut::new();
        }
    }

    /// Reads more into `pending`: the count read, 0 at end of stream.
    pub fn poll_fill(&self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut pending = self.pending.borrow_mut();
        reserve_read(&mut pending);
        match &self.stream {
            Stream::Plain(stream) => poll_read_tcp(stream, cx, &mut pending),
            Stream::Tls(stream) => {
                let mut stream = stream.borrow_mut();
                tokio_util::io::poll_read_buf(Pin::new(stream.as_mut()), cx, &mut *pending)
            }
        }
    }

    pub async fn fill(&self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// Waits until the client sends something, holding no buffer meanwhile: readiness can be
    /// reported with nothing to read (a fresh socket is), so the read goes to the stack and
    /// only bytes that arrived are moved to `pending`. The count read, 0 at end of stream.
    /// (rustls buffers a TLS connection's records itself: that one simply reads.)
    pub async fn fill_when_idle(&self) -> io::Result<usize> {
        let Stream::Plain(stream) = &self.stream else {
            return self.fill().await;
        };
        loop {
            stream.readable().await?;
            if let Some(read) = Self::try_read_idle(stream, &self.pending)? {
                return Ok(read);
            }
        }
    }

    fn try_read_idle(stream: &TcpStream, pending: &RefCell<BytesMut>) -> io::Result<Option<usize>> {
        let mut scratch = [0u8; READ_SIZE];
        match stream.try_read(&mut scratch) {
            Ok(read) => {
                if read < READ_SIZE {
                    drained(stream);
                }
                let mut pending = pending.borrow_mut();
                pending.reserve(READ_SIZE);
                pending.extend_from_slice(&scratch[..read]);
                Ok(Some(read))
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Writes all of `parts` in order (one vectored write when the socket takes it); fails when
    /// the client reads nothing for `write_idle`.
    pub async fn write_all(&self, parts: &mut [io::IoSlice<'_>]) -> io::Result<()> {
        match &self.stream {
            Stream::Plain(stream) => write_all_tcp(stream, parts, self.write_idle).await?,
            Stream::Tls(stream) => {
                let mut parts = &mut parts[..];
                io::IoSlice::advance_slices(&mut parts, 0);
                while !parts.is_empty() {
                    let written = self
                        .within_write_idle(std::future::poll_fn(|cx| {
                            Pin::new(stream.borrow_mut().as_mut()).poll_write_vectored(cx, parts)
                        }))
                        .await?;
                    if written == 0 {
                        return Err(io::ErrorKind::WriteZero.into());
                    }
                    io::IoSlice::advance_slices(&mut parts, written);
                }
                // rustls may hold the last records until the socket takes them.
                self.within_write_idle(std::future::poll_fn(|cx| {
                    Pin::new(stream.borrow_mut().as_mut()).poll_flush(cx)
                }))
                .await?;
            }
        }
        Ok(())
    }

    async fn within_write_idle<T>(
        &self,
        write: impl std::future::Future<Output = io::Result<T>>,
    ) -> io::Result<T> {
        tokio::time::timeout(self.write_idle, write)
            .await
            .map_err(|_| stalled())?
    }

    /// A short write from the body's side (100 Continue): no await, so it polls. (rustls
    /// sends what it accepts at once, while the socket takes it.)
    pub fn poll_write_some(&self, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        match &self.stream {
            Stream::Plain(stream) => loop {
                ready!(stream.poll_write_ready(cx))?;
                match stream.try_write(bytes) {
                    Ok(written) => return Poll::Ready(Ok(written)),
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(error) => return Poll::Ready(Err(error)),
                }
            },
            Stream::Tls(stream) => Pin::new(stream.borrow_mut().as_mut()).poll_write(cx, bytes),
        }
    }

    /// Ends the connection politely: FIN first (after TLS close_notify), then what the client
    /// still sends is read and dropped for a moment (bounded), so an answer it has not read yet
    /// is not destroyed by a reset.
    #[expect(
        clippy::await_holding_refcell_ref,
        reason = "close owns the socket: nothing else can borrow the TLS stream during the drain"
    )]
    pub async fn close(self) {
        match &self.stream {
            Stream::Plain(stream) => {
                let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write);
                Self::drain(stream).await;
            }
            Stream::Tls(stream) => {
                // close_notify, then the TCP FIN (tokio-rustls shuts the socket's write side).
                let notify = std::future::poll_fn(|cx| {
                    Pin::new(stream.borrow_mut().as_mut()).poll_shutdown(cx)
                });
                let _ = tokio::time::timeout(Duration::from_secs(1), notify).await;
                // Nothing else holds the stream now: this borrow may span the drain.
                let stream = stream.borrow();
                Self::drain(stream.get_ref().0).await;
            }
        }
    }

    async fn drain(tcp: &TcpStream) {
        let drained = async {
            let mut left: usize = 256 * 1024;
            // On the heap: a connection's task is as large as its largest state, and this one
            // must not make every idle connection pay for it.
            let mut scratch = vec![0u8; 4096];
            while left > 0 {
                if tcp.readable().await.is_err() {
                    return;
                }
                match tcp.try_read(&mut scratch) {
                    Ok(0) => return,
                    Ok(read) => left = left.saturating_sub(read),
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), drained).await;
    }

    pub fn into_stream(self) -> (Transport, BytesMut) {
        let transport = match self.stream {
            Stream::Plain(stream) => Transport::Plain(stream),
            Stream::Tls(stream) => Transport::Tls(stream.into_inner()),
        };
        (transport, self.pending.into_inner())
    }
}

/// Room for one more read: a quarter of a read's size at least, else another read's worth.
pub fn reserve_read(buffer: &mut BytesMut) {
    if buffer.capacity() - buffer.len() < READ_SIZE / 4 {
        buffer.reserve(READ_SIZE);
    }
}

/// One read from a plain TCP socket into `buffer`'s spare room (no zeroing, no copy): the
/// count read, 0 at end of stream. Shared by the client's socket and the targets'.
pub fn poll_read_tcp(
    stream: &TcpStream,
    cx: &mut Context<'_>,
    buffer: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    loop {
        ready!(stream.poll_read_ready(cx))?;
        let room = buffer.capacity() - buffer.len();
        match stream.try_read_buf(buffer) {
            Ok(read) => {
                if read < room {
                    drained(stream);
                }
                return Poll::Ready(Ok(read));
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            Err(error) => return Poll::Ready(Err(error)),
        }
    }
}

/// After a read that did not fill the room it was given, the socket is empty (epoll is
/// edge-triggered): tokio's `try_read` keeps the socket marked readable anyway, so the next
/// wait would start with a read that finds nothing, one wasted system call per read. Clearing
/// the mark here is what tokio's own `poll_read` does; an operation that reports WouldBlock
/// without a system call is how to reach it from outside.
pub fn drained(stream: &TcpStream) {
    let _ = stream.try_io(tokio::io::Interest::READABLE, || {
        Err::<(), _>(io::ErrorKind::WouldBlock.into())
    });
}

/// Writes all of `parts` in order to a plain TCP socket (one vectored write when it takes
/// them); fails when the peer reads nothing for `write_idle`.
/// One vectored write as `sendmsg`, not tokio's `writev`: a socket call skips the file-position
/// lock and VFS layer `writev` goes through (`fdget_pos`, `vfs_writev`: about 1.3% of the
/// proxy's CPU under load in perf).
fn try_send_vectored(stream: &TcpStream, parts: &[io::IoSlice<'_>]) -> io::Result<usize> {
    stream.try_io(tokio::io::Interest::WRITABLE, || {
        socket2::SockRef::from(stream).send_vectored(parts)
    })
}

pub async fn write_all_tcp(
    stream: &TcpStream,
    parts: &mut [io::IoSlice<'_>],
    write_idle: Duration,
) -> io::Result<()> {
    let mut parts = &mut parts[..];
    io::IoSlice::advance_slices(&mut parts, 0);
    while !parts.is_empty() {
        match try_send_vectored(stream, parts) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => io::IoSlice::advance_slices(&mut parts, written),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                tokio::time::timeout(write_idle, stream.writable())
                    .await
                    .map_err(|_| stalled())??;
            }
            Err(error) => return Err(error),
        }
    }
    Ok(())
}
