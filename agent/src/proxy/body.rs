//! The client's request body as the upstream connection reads it: from tether's own HTTP/1.1
//! server ([`RequestBody`]) or from an HTTP/2 stream ([`H2Body`]). An enum, so the HTTP/1.1
//! path allocates nothing more than before.
use super::h1::body::RequestBody;
use super::idle::{stalled, BodyProgress, BodyState, StallTimer};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

pub enum ClientBody {
    H1(RequestBody),
    H2(H2Body),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            ClientBody::H1(body) => Pin::new(body).poll_frame(cx),
            ClientBody::H2(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::H1(body) => body.is_end_stream(),
            ClientBody::H2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::H1(body) => body.size_hint(),
            ClientBody::H2(body) => body.size_hint(),
        }
    }
}

/// An HTTP/2 stream's request body, with the `clientIdle` limit, its end recorded in
/// [`BodyProgress`] as for HTTP/1.1 (408 for a stall, 400 for a reset stream).
pub struct H2Body {
    inner: Incoming,
    progress: Rc<BodyProgress>,
    timer: StallTimer,
}

impl H2Body {
    /// The body of a stream; `None` when the request ended with its headers.
    pub fn new(inner: Incoming, client_idle: Duration) -> (Option<Self>, Rc<BodyProgress>) {
        let progress = Rc::new(BodyProgress::default());
        if inner.is_end_stream() {
            progress.end(BodyState::Complete);
            return (None, progress);
        }
        let body = Self {
            inner,
            progress: progress.clone(),
            timer: StallTimer::new(client_idle),
        };
        (Some(body), progress)
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.progress.state() != BodyState::Streaming {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.timer.progressed();
                if this.inner.is_end_stream() {
                    this.progress.end(BodyState::Complete);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                this.progress.end(BodyState::Broken);
                Poll::Ready(Some(Err(std::io::Error::other(error))))
            }
            Poll::Ready(None) => {
                this.progress.end(BodyState::Complete);
                Poll::Ready(None)
            }
            Poll::Pending if this.timer.expired(cx) => {
                this.progress.end(BodyState::Stalled);
                Poll::Ready(Some(Err(stalled())))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.progress.state() != BodyState::Streaming || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
