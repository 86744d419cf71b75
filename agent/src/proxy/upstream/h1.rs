//! tether's HTTP/1.1 client toward targets, run on the client connection's own task: the
//! request head goes out as bytes rendered once, the body is relayed from the client, the
//! response head is parsed with httparse from the connection's own buffer, and the response
//! body is read by whatever writes it to the client. Nothing stands between the two sides
//! (hyper's client ran a task per target connection and handed every request and response
//! across a channel to it).
//!
//! Responses are framed by RFC 9112 §6.3. A target's message that two readers could frame
//! differently (conflicting lengths, an invalid length) is refused with a 502 rather than
//! guessed at; Transfer-Encoding wins over Content-Length, which is then dropped, and such a
//! connection is not reused.
use super::Upstreams;
use crate::proxy::body::ClientBody;
use crate::proxy::h1::chunked::{ChunkedDecoder, Decoded};
use crate::proxy::h1::head::Span;
use crate::proxy::h1::socket::{poll_read_tcp, reserve_read, write_all_tcp};
use crate::proxy::headers::connection_has;
use crate::proxy::idle::BodyProgress;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{HeaderName, HeaderValue, CONTENT_LENGTH, TRANSFER_ENCODING};
use hyper::http::request::Parts;
use hyper::{HeaderMap, Method, StatusCode, Version};
use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Weak;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Sleep;

/// Largest response head accepted from a target (HAProxy's whole buffer is 16 KiB; nginx's
/// `proxy_buffer_size` is 4-8 KiB). Past it the target's answer is a 502.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Header lines accepted in a response head.
const MAX_RESPONSE_HEADERS: usize = 128;
/// Largest trailer section after a chunked response body.
const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// Why an exchange with a target failed, as far as the target is concerned.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("the target closed the connection before it answered")]
    ClosedBeforeAnswer,
    #[error("the target closed the connection mid-body")]
    ClosedMidBody,
    #[error("the target's response head is over {MAX_RESPONSE_HEAD} bytes or {MAX_RESPONSE_HEADERS} lines")]
    HeadTooLarge,
    #[error("malformed response from the target: {0}")]
    Malformed(&'static str),
    #[error("malformed chunked response body: {0}")]
    Chunked(#[from] crate::proxy::h1::chunked::ChunkError),
    #[error(transparent)]
    Http2(#[from] hyper::Error),
}

/// A connection to a target, with the bytes read from it and not used yet.
pub struct TargetConnection {
    stream: TcpStream,
    buffer: BytesMut,
    /// The response timeout, one timer for the connection's life: moving a registered tokio
    /// timer later is one atomic update, where a timer per request is a timer-wheel insert and
    /// removal each.
    response_timer: Pin<Box<Sleep>>,
}

impl TargetConnection {
    pub async fn connect(target: SocketAddr, within: Duration) -> io::Result<Self> {
        let stream = tokio::time::timeout(within, TcpStream::connect(target))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buffer: BytesMut::new(),
            response_timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
        })
    }

    /// Whether an idle connection can take a request: the target has neither closed it nor
    /// sent anything unasked. Costs no system call unless the socket was reported readable.
    pub fn is_usable(&self) -> bool {
        if !self.buffer.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readiness can be stale (left from the last response): a read tells.
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.stream.try_read(&mut probe), Err(error) if error.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// The socket and the target's bytes already read (the target's side of a tunnel).
    pub fn into_parts(self) -> (TcpStream, BytesMut) {
        (self.stream, self.buffer)
    }
}

/// A request rendered for an HTTP/1.1 target.
pub struct Request {
    head: Vec<u8>,
    pub body: Option<ClientBody>,
    /// Chunked toward the target: a body whose length the head does not give.
    chunked: bool,
    pub kind: RequestKind,
}

/// What about the request decides how its response is framed and whether it may be resent.
#[derive(Clone, Copy)]
pub struct RequestKind {
    head_method: bool,
    connect: bool,
    /// Idempotent and without a body (RFC 9110 §9.2.2): may be sent again after a target has
    /// seen it.
    pub replayable: bool,
}

impl Request {
    /// Renders `parts` (already rewritten for targets: origin-form, hop-by-hop fields out).
    pub fn new(parts: &Parts, body: Option<ClientBody>) -> Self {
        let chunked = body.is_some() && !parts.headers.contains_key(CONTENT_LENGTH);
        let kind = RequestKind {
            head_method: parts.method == Method::HEAD,
            connect: parts.method == Method::CONNECT,
            replayable: is_idempotent(&parts.method) && body.is_none(),
        };
        Self {
            head: render_head(parts, chunked),
            body,
            chunked,
            kind,
        }
    }

    #[cfg(test)]
    pub fn head(&self) -> &[u8] {
        &self.head
    }
}

pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

fn render_head(parts: &Parts, chunked: bool) -> Vec<u8> {
    let fields: usize = parts
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    let mut head = Vec::with_capacity(fields + 64);
    head.extend_from_slice(parts.method.as_str().as_bytes());
    head.push(b' ');
    if parts.method == Method::CONNECT {
        if let Some(authority) = parts.uri.authority() {
            head.extend_from_slice(authority.as_str().as_bytes());
        }
    } else {
        match parts.uri.path_and_query() {
            Some(path) if !path.as_str().is_empty() => {
                head.extend_from_slice(path.as_str().as_bytes())
            }
            _ => head.push(b'/'),
        }
    }
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if chunked {
        head.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// How an exchange failed.
pub enum ExchangeError {
    /// The head did not reach the target, and the body was not touched: the request may go
    /// anywhere again.
    Unsent(io::Error),
    /// The request went out, and the connection broke before a whole answer came, or the
    /// answer was malformed.
    Broken(TargetError),
    /// No response head within `proxy.timeouts.response` of the request body's end.
    Timeout,
    /// The client stalled or broke its own request body.
    Client,
}

/// A response head from a target, and how its body is framed.
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    framing: ResponseFraming,
    /// The target keeps the connection for another request.
    keep_alive: bool,
    /// 101, or 2xx to CONNECT: the connection becomes a tunnel.
    tunnel: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResponseFraming {
    /// No body: HEAD, 1xx, 204, 304, or the start of a tunnel.
    None,
    Length(u64),
    Chunked,
    /// Until the target closes (no length and not chunked).
    UntilClose,
}

/// Sends `request` on `connection` and reads the response head; the body stays on the
/// connection for [`ResponseBody`]. The response timeout runs from the end of the request
/// body; a response that arrives before the body was all sent ends the upload (the connection
/// is then not reused, and neither is the client's).
pub async fn exchange(
    connection: &mut TargetConnection,
    request: &mut Request,
    progress: &BodyProgress,
    response_timeout: Duration,
    write_idle: Duration,
) -> Result<(ResponseHead, bool), ExchangeError> {
    let TargetConnection {
        stream,
        buffer,
        response_timer,
    } = connection;
    let stream = &*stream;
    write_all_tcp(stream, &mut [IoSlice::new(&request.head)], write_idle)
        .await
        .map_err(ExchangeError::Unsent)?;
    let kind = request.kind;
    let reading = read_head(stream, buffer, kind);
    tokio::pin!(reading);
    if let Some(body) = request.body.as_mut() {
        let sending = send_body(stream, body, request.chunked, write_idle);
        tokio::pin!(sending);
        tokio::select! {
            biased;
            head = &mut reading => {
                // Answered before the upload ended (413, 401, a redirect): the rest of the
                // body is not sent.
                let head = head.map_err(|error| answer_failed(error, progress))?;
                return Ok((head, false));
            }
            sent = &mut sending => match sent {
                Ok(()) => {}
                Err(BodyFailure::Client) => return Err(ExchangeError::Client),
                // The target may have answered and closed (413 and close): read that answer.
                Err(BodyFailure::Target(error)) => {
                    return match within(response_timer.as_mut(), response_timeout, &mut reading).await {
                        Ok(Ok(head)) => Ok((head, false)),
                        _ => Err(ExchangeError::Broken(TargetError::Io(error))),
                    };
                }
            }
        }
    }
    match within(response_timer.as_mut(), response_timeout, reading).await {
        Ok(Ok(head)) => Ok((head, true)),
        Ok(Err(error)) => Err(answer_failed(error, progress)),
        Err(_) if progress.client_failed() => Err(ExchangeError::Client),
        Err(_) => Err(ExchangeError::Timeout),
    }
}

/// `future`, unless `limit` passes first (then `Err(())`), timed by the reused `timer`.
async fn within<F: Future>(
    mut timer: Pin<&mut Sleep>,
    limit: Duration,
    future: F,
) -> Result<F::Output, ()> {
    timer.as_mut().reset(tokio::time::Instant::now() + limit);
    tokio::select! {
        biased;
        output = future => Ok(output),
        () = timer => Err(()),
    }
}

fn answer_failed(error: TargetError, progress: &BodyProgress) -> ExchangeError {
    if progress.client_failed() {
        ExchangeError::Client
    } else {
        ExchangeError::Broken(error)
    }
}

enum BodyFailure {
    Client,
    Target(io::Error),
}

/// Relays the client's body: as it is when the head gives its length, else chunked.
async fn send_body(
    stream: &TcpStream,
    body: &mut ClientBody,
    chunked: bool,
    write_idle: Duration,
) -> Result<(), BodyFailure> {
    loop {
        let frame = match body.frame().await {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(_)) => return Err(BodyFailure::Client),
        };
        let frame = match frame.into_data() {
            Ok(data) if data.is_empty() => continue,
            Ok(data) if chunked => {
                let size = format!("{:x}\r\n", data.len());
                write_all_tcp(
                    stream,
                    &mut [
                        IoSlice::new(size.as_bytes()),
                        IoSlice::new(&data),
                        IoSlice::new(b"\r\n"),
                    ],
                    write_idle,
                )
                .await
            }
            Ok(data) => write_all_tcp(stream, &mut [IoSlice::new(&data)], write_idle).await,
            Err(frame) => match frame.into_trailers() {
                Ok(trailers) if chunked => {
                    let mut last = b"0\r\n".to_vec();
                    for (name, value) in &trailers {
                        last.extend_from_slice(name.as_str().as_bytes());
                        last.extend_from_slice(b": ");
                        last.extend_from_slice(value.as_bytes());
                        last.extend_from_slice(b"\r\n");
                    }
                    last.extend_from_slice(b"\r\n");
                    return write_all_tcp(stream, &mut [IoSlice::new(&last)], write_idle)
                        .await
                        .map_err(BodyFailure::Target);
                }
                _ => continue,
            },
        };
        frame.map_err(BodyFailure::Target)?;
    }
    if chunked {
        write_all_tcp(stream, &mut [IoSlice::new(b"0\r\n\r\n")], write_idle)
            .await
            .map_err(BodyFailure::Target)?;
    }
    Ok(())
}

/// Reads until a final response head is in (1xx other than 101 are read and dropped, as
/// hyper's client does).
async fn read_head(
    stream: &TcpStream,
    buffer: &mut BytesMut,
    kind: RequestKind,
) -> Result<ResponseHead, TargetError> {
    loop {
        if !buffer.is_empty() {
            match parse_head(buffer, kind)? {
                Some(head)
                    if head.status.is_informational()
                        && head.status != StatusCode::SWITCHING_PROTOCOLS =>
                {
                    continue
                }
                Some(head) => return Ok(head),
                None => {}
            }
        }
        reserve_read(buffer);
        match std::future::poll_fn(|cx| poll_read_tcp(stream, cx, buffer)).await {
            Ok(0) => return Err(TargetError::ClosedBeforeAnswer),
            Ok(_) => {}
            Err(error) => return Err(TargetError::Io(error)),
        }
    }
}

/// Parses a response head off the front of `buffer`: `None` while it is incomplete. Header
/// values share the buffer's memory instead of being copied.
fn parse_head(
    buffer: &mut BytesMut,
    kind: RequestKind,
) -> Result<Option<ResponseHead>, TargetError> {
    let mut lines = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut parsed = httparse::Response::new(&mut lines);
    let length = match parsed.parse(buffer) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if buffer.len() >= MAX_RESPONSE_HEAD => {
            return Err(TargetError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(TargetError::HeadTooLarge),
        Err(_) => return Err(TargetError::Malformed("unparsable response head")),
    };
    if length > MAX_RESPONSE_HEAD {
        return Err(TargetError::HeadTooLarge);
    }
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        Some(1) => Version::HTTP_11,
        _ => return Err(TargetError::Malformed("unsupported HTTP version")),
    };
    let status = parsed
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or(TargetError::Malformed("invalid status code"))?;
    // Where each field lies in the head, so the values can be slices of it once it is frozen.
    let mut fields = [(Span::default(), Span::default()); MAX_RESPONSE_HEADERS];
    let count = parsed.headers.len();
    for (slot, line) in fields.iter_mut().zip(parsed.headers.iter()) {
        *slot = (
            Span::of(line.name.as_bytes(), buffer),
            Span::of(line.value, buffer),
        );
    }
    let head = buffer.split_to(length).freeze();
    // Room for what tether adds (Set-Cookie, Connection), so those do not grow the map.
    let mut headers = HeaderMap::with_capacity(count + 2);
    for (name, value) in &fields[..count] {
        let name = HeaderName::from_bytes(&head[name.range()])
            .map_err(|_| TargetError::Malformed("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(value.range()))
            .map_err(|_| TargetError::Malformed("invalid header value"))?;
        headers.append(name, value);
    }
    let (framing, ambiguous) = response_framing(status, kind, &mut headers)?;
    let keep_alive = !ambiguous
        && if version == Version::HTTP_11 {
            !connection_has(&headers, "close")
        } else {
            connection_has(&headers, "keep-alive")
        };
    let tunnel = status == StatusCode::SWITCHING_PROTOCOLS || (kind.connect && status.is_success());
    Ok(Some(ResponseHead {
        status,
        version,
        headers,
        framing,
        keep_alive,
        tunnel,
    }))
}

/// A response head's verdict, for the fuzz target: the status, the bytes the head took, the
/// body's framing and whether the connection may be reused.
#[derive(Debug, PartialEq, Eq)]
pub struct ParsedResponse {
    pub status: u16,
    pub head_length: usize,
    pub framing: String,
    pub keep_alive: bool,
}

/// [`parse_head`] on a copy of `bytes`, as a response to a HEAD request or not.
pub fn parse_response(
    bytes: &[u8],
    head_method: bool,
) -> Result<Option<ParsedResponse>, TargetError> {
    let mut buffer = BytesMut::from(bytes);
    let kind = RequestKind {
        head_method,
        connect: false,
        replayable: false,
    };
    Ok(parse_head(&mut buffer, kind)?.map(|head| ParsedResponse {
        status: head.status.as_u16(),
        head_length: bytes.len() - buffer.len(),
        framing: format!("{:?}", head.framing),
        keep_alive: head.keep_alive,
    }))
}

/// RFC 9112 §6.3 for a response; `true` when the message had both Transfer-Encoding and
/// Content-Length (then Content-Length is dropped and the connection not reused).
fn response_framing(
    status: StatusCode,
    kind: RequestKind,
    headers: &mut HeaderMap,
) -> Result<(ResponseFraming, bool), TargetError> {
    if kind.head_method
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || (kind.connect && status.is_success())
    {
        return Ok((ResponseFraming::None, false));
    }
    if headers.contains_key(TRANSFER_ENCODING) {
        let ambiguous = headers.remove(CONTENT_LENGTH).is_some();
        let last = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .flat_map(|value| value.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .rfind(|coding| !coding.is_empty());
        let framing = match last {
            Some(coding) if coding.eq_ignore_ascii_case(b"chunked") => ResponseFraming::Chunked,
            _ => ResponseFraming::UntilClose,
        };
        return Ok((framing, ambiguous));
    }
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for item in value.as_bytes().split(|&b| b == b',') {
            let item = item.trim_ascii();
            if item.is_empty() || item.len() > 19 || !item.iter().all(u8::is_ascii_digit) {
                return Err(TargetError::Malformed("invalid Content-Length"));
            }
            let parsed = item
                .iter()
                .fold(0u64, |sum, digit| sum * 10 + u64::from(digit - b'0'));
            if length.is_some_and(|seen| seen != parsed) {
                return Err(TargetError::Malformed("conflicting Content-Length"));
            }
            length = Some(parsed);
        }
    }
    Ok(match length {
        Some(length) => (ResponseFraming::Length(length), false),
        None => (ResponseFraming::UntilClose, false),
    })
}

/// A target's response body, read from its connection as the client takes it. Read whole, the
/// connection goes back to the pool when both sides can reuse it; dropped early, it closes.
pub struct ResponseBody {
    connection: Option<TargetConnection>,
    decoder: Decoder,
    reusable: bool,
    /// The worker's pool and the target, to give the connection back.
    release: Option<(Weak<Upstreams>, SocketAddr)>,
}

enum Decoder {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    Done,
}

impl ResponseBody {
    /// The body after `head`; `reusable` when the request went out whole. The connection goes
    /// back to `pool` when it may carry another request.
    pub fn new(
        head: &ResponseHead,
        connection: TargetConnection,
        reusable: bool,
        pool: Weak<Upstreams>,
        target: SocketAddr,
    ) -> Self {
        let decoder = match head.framing {
            ResponseFraming::None => Decoder::Done,
            ResponseFraming::Length(0) => Decoder::Done,
            ResponseFraming::Length(length) => Decoder::Length(length),
            ResponseFraming::Chunked => Decoder::Chunked(ChunkedDecoder::new(MAX_TRAILER_BYTES)),
            ResponseFraming::UntilClose => Decoder::UntilClose,
        };
        let mut body = Self {
            connection: Some(connection),
            reusable: reusable && head.keep_alive && head.framing != ResponseFraming::UntilClose,
            decoder,
            release: Some((pool, target)),
        };
        // A tunnel's connection is the client's now; any other bodiless answer frees it at once.
        if head.tunnel {
            body.reusable = false;
        } else if matches!(body.decoder, Decoder::Done) {
            body.finish();
        }
        body
    }

    /// The connection, for a tunnel (101, or 2xx to CONNECT): nothing else reads it after.
    pub fn take_tunnel(&mut self) -> Option<TargetConnection> {
        self.release = None;
        self.decoder = Decoder::Done;
        self.connection.take()
    }

    fn finish(&mut self) {
        self.decoder = Decoder::Done;
        if let Some(connection) = self.connection.take() {
            if self.reusable && connection.buffer.is_empty() {
                if let Some(pool) = self
                    .release
                    .take()
                    .and_then(|(pool, target)| pool.upgrade().map(|pool| (pool, target)))
                {
                    pool.0.put_back(pool.1, connection);
                }
            }
        }
    }

    /// What the bytes already read yield, if anything.
    fn decode(&mut self) -> Result<Option<Frame<Bytes>>, TargetError> {
        let Some(connection) = self.connection.as_mut() else {
            return Ok(None);
        };
        let buffer = &mut connection.buffer;
        let frame = match &mut self.decoder {
            Decoder::Done => None,
            Decoder::Length(left) => {
                if buffer.is_empty() {
                    None
                } else {
                    let take = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(buffer.len());
                    *left -= take as u64;
                    Some(Frame::data(buffer.split_to(take).freeze()))
                }
            }
            Decoder::Chunked(decoder) => match decoder.decode(buffer)? {
                Some(Decoded::Data(data)) => Some(Frame::data(data)),
                Some(Decoded::Trailers(trailers)) => Some(Frame::trailers(trailers)),
                Some(Decoded::End) | None => None,
            },
            Decoder::UntilClose => {
                (!buffer.is_empty()).then(|| Frame::data(buffer.split().freeze()))
            }
        };
        let finished = match &self.decoder {
            Decoder::Length(0) => true,
            Decoder::Chunked(decoder) => decoder.is_done(),
            _ => false,
        };
        if finished {
            self.finish();
        }
        Ok(frame)
    }

    /// Leaves the body at its end, the connection closed.
    fn fail(&mut self, error: TargetError) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.decoder = Decoder::Done;
        self.connection = None;
        Poll::Ready(Some(Err(match error {
            TargetError::Io(error) => error,
            other => io::Error::other(other),
        })))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        loop {
            match this.decode() {
                Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(None) if matches!(this.decoder, Decoder::Done) => return Poll::Ready(None),
                Ok(None) => {}
                Err(error) => return this.fail(error),
            }
            let Some(connection) = this.connection.as_mut() else {
                return Poll::Ready(None);
            };
            reserve_read(&mut connection.buffer);
            match poll_read_tcp(&connection.stream, cx, &mut connection.buffer) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) if matches!(this.decoder, Decoder::UntilClose) => {
                    this.decoder = Decoder::Done;
                    this.connection = None;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => return this.fail(TargetError::ClosedMidBody),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(error)) => return this.fail(TargetError::Io(error)),
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
            _ => SizeHint::default(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // A body dropped at its very end (all bytes in the buffer were taken) still frees the
        // connection for reuse.
        if matches!(self.decoder, Decoder::Length(0)) {
            self.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind() -> RequestKind {
        RequestKind {
            head_method: false,
            connect: false,
            replayable: true,
        }
    }

    fn parse(text: &str) -> Result<Option<ResponseHead>, TargetError> {
        parse_head(&mut BytesMut::from(text), kind())
    }

    fn framing(text: &str) -> ResponseFraming {
        parse(text).expect("valid").expect("complete").framing
    }

    #[test]
    fn only_idempotent_requests_without_a_body_may_be_replayed() {
        let kind = |method: Method| {
            let parts = hyper::Request::builder()
                .method(method)
                .uri("/")
                .body(())
                .expect("request")
                .into_parts()
                .0;
            Request::new(&parts, None).kind.replayable
        };
        for method in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::TRACE,
            Method::PUT,
            Method::DELETE,
        ] {
            assert!(kind(method.clone()), "{method}");
        }
        for method in [Method::POST, Method::PATCH] {
            assert!(!kind(method.clone()), "{method}");
        }
    }

    #[test]
    fn a_request_head_is_rendered_in_origin_form_with_its_fields() {
        let request = hyper::Request::builder()
            .method(Method::POST)
            .uri("/cart?x=1")
            .header("host", "shop")
            .header("cookie", "a=b")
            .body(())
            .expect("request");
        let parts = request.into_parts().0;
        assert_eq!(
            String::from_utf8_lossy(&render_head(&parts, true)),
            "POST /cart?x=1 HTTP/1.1\r\nhost: shop\r\ncookie: a=b\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
            ResponseFraming::Length(5)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            ResponseFraming::Chunked
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"),
            ResponseFraming::UntilClose
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\n\r\n"),
            ResponseFraming::UntilClose
        );
        assert_eq!(
            framing("HTTP/1.1 204 No Content\r\n\r\n"),
            ResponseFraming::None
        );
        assert_eq!(
            framing("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"),
            ResponseFraming::None
        );
        let both =
            parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n")
                .expect("valid")
                .expect("complete");
        assert_eq!(both.framing, ResponseFraming::Chunked);
        assert!(!both.headers.contains_key(CONTENT_LENGTH));
        assert!(
            !both.keep_alive,
            "a connection framed two ways is not reused"
        );
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "HTTP/2 200 OK\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keep_alive_depends_on_the_response_version() {
        let kept = |text: &str| parse(text).expect("valid").expect("complete").keep_alive;
        assert!(kept("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(!kept(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!kept("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(kept(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
        ));
    }

    #[test]
    fn a_partial_head_waits_and_an_oversized_one_is_refused() {
        assert!(matches!(parse("HTTP/1.1 200 OK\r\nContent-Le"), Ok(None)));
        let huge = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_RESPONSE_HEAD));
        assert!(matches!(parse(&huge), Err(TargetError::HeadTooLarge)));
    }

    #[test]
    fn header_values_are_kept_byte_for_byte_and_the_body_stays_in_the_buffer() {
        let mut buffer = BytesMut::from(
            "HTTP/1.1 200 OK\r\nSet-Cookie: a=b; Path=/\r\nContent-Length: 3\r\n\r\nabc",
        );
        let head = parse_head(&mut buffer, kind())
            .expect("valid")
            .expect("complete");
        assert_eq!(head.headers["set-cookie"], "a=b; Path=/");
        assert_eq!(&buffer[..], b"abc");
    }
}
