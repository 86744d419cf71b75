//! `proxy.timeouts.clientIdle`: no side of an exchange may stall longer than this.
//!
//! - [`WriteStall`] wraps a socket: a write that cannot make progress for that long fails, so a
//!   client that stops reading a large response (or a target that stops reading an upload)
//!   loses its connection instead of holding it, and the other side's, forever.
//! - [`BodyProgress`] records how the request body ended (see `h1::body`): a client that stops
//!   sending it gets 408, a client whose framing is broken gets 400, and neither is blamed on the
//!   target. Its end starts the response timeout.
//! - [`TargetBody`] wraps a response body: a target that stops sending it mid-way is cut off.
//!
//! Each arms a timer only when its side is actually waiting, so the common path (everything
//! ready at once) costs no timer.
use super::upstream::ResponseBody;
use hyper::body::{Body, Bytes, Frame, SizeHint};
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

/// A timer armed while its side waits, and disarmed by progress.
pub struct StallTimer {
    limit: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl StallTimer {
    pub fn new(limit: Duration) -> Self {
        Self {
            limit,
            sleep: None,
            armed: false,
        }
    }

    pub fn progressed(&mut self) {
        self.armed = false;
    }

    /// Called when the side is waiting: true once it has waited `limit` without progress.
    pub fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = Instant::now() + self.limit;
        if !self.armed {
            self.armed = true;
            match &mut self.sleep {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        match &mut self.sleep {
            Some(sleep) => sleep.as_mut().poll(cx).is_ready(),
            None => false,
        }
    }
}

/// The error every side's stall ends with (its kind, TimedOut, is how it is counted).
pub fn stalled() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "no progress within proxy.timeouts.clientIdle",
    )
}

/// A socket whose writes fail after `limit` without progress.
pub struct WriteStall<T> {
    inner: T,
    timer: StallTimer,
}

impl<T> WriteStall<T> {
    pub fn new(inner: T, limit: Duration) -> Self {
        Self {
            inner,
            timer: StallTimer::new(limit),
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncWrite + Unpin> WriteStall<T> {
    fn guard<R>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<std::io::Result<R>>,
    ) -> Poll<std::io::Result<R>> {
        match poll {
            Poll::Pending if self.timer.expired(cx) => Poll::Ready(Err(stalled())),
            Poll::Pending => Poll::Pending,
            ready => {
                self.timer.progressed();
                ready
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteStall<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteStall<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.guard(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.guard(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.guard(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.guard(cx, poll)
    }
}

/// How far a request body has come, shared by the body (which reads it from the client) and
/// the handler (which must know whose fault a failed exchange was).
#[derive(Default)]
pub struct BodyProgress {
    state: Cell<BodyState>,
    ended: Notify,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BodyState {
    #[default]
    Streaming,
    /// The whole body was read from the client.
    Complete,
    /// The client stopped sending it for `clientIdle`: 408.
    Stalled,
    /// Broken framing, or the client went away mid-body: 400.
    Broken,
}

impl BodyProgress {
    pub fn state(&self) -> BodyState {
        self.state.get()
    }

    /// Whether the client, not the target, ended the exchange.
    pub fn client_failed(&self) -> bool {
        matches!(self.state(), BodyState::Stalled | BodyState::Broken)
    }

    pub fn end(&self, state: BodyState) {
        self.state.set(state);
        self.ended.notify_waiters();
    }

    /// Resolves once the body was read whole, or failed.
    pub async fn ended(&self) {
        loop {
            // Registered before the check, so an end between the two is not missed.
            let notified = self.ended.notified();
            if self.state() != BodyState::Streaming {
                return;
            }
            notified.await;
        }
    }
}

/// The target's response body, read with the `clientIdle` limit.
pub struct TargetBody {
    inner: ResponseBody,
    timer: StallTimer,
}

impl TargetBody {
    pub fn new(inner: ResponseBody, limit: Duration) -> Self {
        Self {
            inner,
            timer: StallTimer::new(limit),
        }
    }
}

impl Body for TargetBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending if this.timer.expired(cx) => Poll::Ready(Some(Err(stalled()))),
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(frame))) => {
                this.timer.progressed();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error))),
            Poll::Ready(None) => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
