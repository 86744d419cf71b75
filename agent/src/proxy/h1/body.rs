//! The request body as the upstream connection reads it: straight from the client's socket,
//! delimited by Content-Length or decoded from chunked, with the `clientIdle` limit. Whatever
//! ends it is recorded in [`BodyProgress`], so a failure the client caused is never blamed on
//! the target, and its end starts the response timeout.
use super::chunked::{ChunkedDecoder, Decoded};
use super::head::Framing;
use super::socket::ClientSocket;
use crate::proxy::idle::{stalled, BodyProgress, BodyState, StallTimer};
use hyper::body::{Body, Bytes, Frame, SizeHint};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

enum Decoder {
    Length(u64),
    Chunked(ChunkedDecoder),
    Done,
}

pub struct RequestBody {
    socket: Rc<ClientSocket>,
    decoder: Decoder,
    progress: Rc<BodyProgress>,
    timer: StallTimer,
    /// Bytes of `100 Continue` still to send before the first read.
    continue_left: usize,
}

impl RequestBody {
    /// The body of a request framed as `framing`; `None` when it has none.
    pub fn new(
        socket: &Rc<ClientSocket>,
        framing: Framing,
        expect_continue: bool,
        client_idle: Duration,
        max_trailer_bytes: usize,
    ) -> (Option<Self>, Rc<BodyProgress>) {
        let progress = Rc::new(BodyProgress::default());
        let decoder = match framing {
            Framing::None => {
                progress.end(BodyState::Complete);
                return (None, progress);
            }
            Framing::Length(length) => Decoder::Length(length),
            Framing::Chunked => Decoder::Chunked(ChunkedDecoder::new(max_trailer_bytes)),
        };
        let body = Self {
            socket: socket.clone(),
            decoder,
            progress: progress.clone(),
            timer: StallTimer::new(client_idle),
            continue_left: if expect_continue { CONTINUE.len() } else { 0 },
        };
        (Some(body), progress)
    }

    fn fail(
        &mut self,
        state: BodyState,
        error: std::io::Error,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.decoder = Decoder::Done;
        self.progress.end(state);
        Poll::Ready(Some(Err(error)))
    }

    /// What the bytes already read yield, if anything.
    fn decode_pending(&mut self) -> Result<Option<Frame<Bytes>>, std::io::Error> {
        let frame = match &mut self.decoder {
            Decoder::Done => None,
            Decoder::Length(left) => self.socket.with_pending(|pending| {
                if pending.is_empty() {
                    return None;
                }
                let take = usize::try_from(*left)
                    .unwrap_or(usize::MAX)
                    .min(pending.len());
                *left -= take as u64;
                Some(Frame::data(pending.split_to(take).freeze()))
            }),
            Decoder::Chunked(decoder) => {
                match self.socket.with_pending(|pending| decoder.decode(pending)) {
                    Ok(Some(Decoded::Data(data))) => Some(Frame::data(data)),
                    Ok(Some(Decoded::Trailers(trailers))) => Some(Frame::trailers(trailers)),
                    Ok(Some(Decoded::End)) | Ok(None) => None,
                    Err(error) => {
                        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, error))
                    }
                }
            }
        };
        let finished = match &self.decoder {
            Decoder::Length(0) => true,
            Decoder::Chunked(decoder) => decoder.is_done(),
            _ => false,
        };
        if finished {
            self.decoder = Decoder::Done;
            self.progress.end(BodyState::Complete);
        }
        Ok(frame)
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        // The client waits for this before it sends the body.
        while this.continue_left > 0 {
            let from = CONTINUE.len() - this.continue_left;
            match this.socket.poll_write_some(cx, &CONTINUE[from..]) {
                Poll::Ready(Ok(written)) => {
                    this.continue_left -= written.max(1).min(this.continue_left)
                }
                Poll::Ready(Err(error)) => return this.fail(BodyState::Broken, error),
                Poll::Pending => return Poll::Pending,
            }
        }
        loop {
            match this.decode_pending() {
                Ok(Some(frame)) => {
                    this.timer.progressed();
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(None) if matches!(this.decoder, Decoder::Done) => return Poll::Ready(None),
                Ok(None) => {}
                Err(error) => return this.fail(BodyState::Broken, error),
            }
            match this.socket.poll_fill(cx) {
                Poll::Ready(Ok(0)) => {
                    let error = std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the client closed the connection mid-body",
                    );
                    return this.fail(BodyState::Broken, error);
                }
                Poll::Ready(Ok(_)) => this.timer.progressed(),
                Poll::Ready(Err(error)) => return this.fail(BodyState::Broken, error),
                Poll::Pending if this.timer.expired(cx) => {
                    return this.fail(BodyState::Stalled, stalled());
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.decoder, Decoder::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder {
            Decoder::Length(left) => SizeHint::with_exact(left),
            Decoder::Done => SizeHint::with_exact(0),
            Decoder::Chunked(_) => SizeHint::default(),
        }
    }
}
