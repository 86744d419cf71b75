//! Connections to targets: one keep-alive pool per worker thread, no locks.
//!
//! The pool connects before it sends, so a refused connection hands the request back untouched
//! and the caller can re-pin it to another target whatever its method or body. Whether a failed
//! request may go to another target is decided here and travels with the error ([`SendError`]).
use super::body::ClientBody;
use super::headers;
use super::idle::{BodyProgress, WriteStall};
use crate::model::ProxyTimeouts;
use http_body_util::{Either, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::client::conn::http2;
use hyper::http::request::Parts;
use hyper::{HeaderMap, Method, Request, Response, Uri, Version};
use hyper_util::rt::TokioIo;
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use tokio::net::TcpStream;

/// The body sent to a target: the client's own, or empty for a rebuilt retry.
pub type UpstreamBody = Either<ClientBody, Empty<Bytes>>;

/// Idle connections kept per target per worker.
const MAX_IDLE_PER_TARGET: usize = 512;

/// A request on its way to a target, with what it takes to send it again.
pub struct Outgoing {
    request: Request<UpstreamBody>,
    /// Set for an idempotent request without a body, the only kind that may be sent again
    /// after a target has seen it (RFC 9110 §9.2.2).
    replay: Option<Replay>,
}

impl Outgoing {
    /// The request as rewritten for targets. A replay copy is taken now, so a resent request
    /// carries the same forwarded headers.
    pub fn new(parts: Parts, body: Option<ClientBody>) -> Self {
        let replay = (is_idempotent(&parts.method) && body.is_none()).then(|| Replay::of(&parts));
        let body = match body {
            Some(body) => Either::Left(body),
            None => Either::Right(Empty::new()),
        };
        Self {
            request: Request::from_parts(parts, body),
            replay,
        }
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The head of a bodiless request, to send it again once hyper has consumed it.
struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Replay {
    fn of(parts: &Parts) -> Self {
        let mut headers = parts.headers.clone();
        headers::remove_hop_by_hop(&mut headers, false);
        Self {
            method: parts.method.clone(),
            // Origin-form already, or left as the client sent it when it would not parse.
            uri: parts.uri.clone(),
            version: parts.version,
            headers,
        }
    }

    fn request(&self) -> Request<UpstreamBody> {
        let mut request = Request::new(Either::Right(Empty::new()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// A failed send: what went wrong, and the request again when it may go to another target.
pub struct SendError {
    pub failure: Failure,
    /// Always after a connection failure (nothing was sent); after a broken connection only for
    /// a request that may be replayed; never after a timeout or the client's own failure.
    pub retry: Option<Box<Outgoing>>,
}

pub enum Failure {
    /// Connecting failed, or a fresh connection closed before taking the request: nothing was
    /// sent.
    Connect(std::io::Error),
    /// The target took the request but sent no response head in time (counted from the end of
    /// the request body: a slow upload is not the target's delay).
    Timeout,
    /// The connection broke after the request was (at least partly) sent.
    Broken(hyper::Error),
    /// The client stalled or broke its own request body: its fault, not the target's.
    Client,
}

impl SendError {
    fn unsent(
        error: std::io::Error,
        request: Request<UpstreamBody>,
        replay: Option<Replay>,
    ) -> Self {
        Self {
            failure: Failure::Connect(error),
            retry: Some(Box::new(Outgoing { request, replay })),
        }
    }

    fn broken(error: hyper::Error, replay: Option<Replay>) -> Self {
        Self {
            failure: Failure::Broken(error),
            retry: replay.map(|replay| {
                Box::new(Outgoing {
                    request: replay.request(),
                    replay: Some(replay),
                })
            }),
        }
    }

    fn not_retried(failure: Failure) -> Self {
        Self {
            failure,
            retry: None,
        }
    }
}

#[derive(Default)]
pub struct Upstreams {
    idle: RefCell<HashMap<SocketAddr, Vec<SendRequest<UpstreamBody>>>>,
    /// h2c targets: one multiplexed connection each.
    h2: RefCell<HashMap<SocketAddr, http2::SendRequest<UpstreamBody>>>,
}

impl Upstreams {
    /// Sends `request` to `target` over a pooled connection, or a new one.
    ///
    /// `upgrade` requests get a connection of their own that is never pooled. The response
    /// timeout starts when `body` says the client's request body has been read.
    pub async fn send(
        &self,
        target: SocketAddr,
        outgoing: Outgoing,
        body: &BodyProgress,
        timeouts: &ProxyTimeouts,
        upgrade: bool,
        h2c: bool,
    ) -> Result<Response<Incoming>, SendError> {
        if h2c {
            return self.send_h2(target, outgoing, body, timeouts).await;
        }
        let Outgoing {
            mut request,
            replay,
        } = outgoing;
        // A pooled connection may have been closed by the target in the meantime; then the
        // request comes back unsent and goes out on a fresh connection.
        loop {
            let pooled = if upgrade {
                None
            } else {
                self.take_ready(target)
            };
            let fresh = pooled.is_none();
            let mut sender = match pooled {
                Some(sender) => sender,
                None => match connect(target, timeouts, upgrade).await {
                    Ok(sender) => sender,
                    Err(error) => return Err(SendError::unsent(error, request, replay)),
                },
            };
            let exchange = sender.try_send_request(request);
            tokio::pin!(exchange);
            let answered = tokio::select! {
                biased;
                answered = &mut exchange => Some(answered),
                () = body.ended() => None,
            };
            let answered = match answered {
                Some(answered) => answered,
                None => match tokio::time::timeout(timeouts.response, exchange).await {
                    Ok(answered) => answered,
                    // A client that stalled or broke its body ends the exchange itself.
                    Err(_) if body.client_failed() => {
                        return Err(SendError::not_retried(Failure::Client));
                    }
                    Err(_) => return Err(SendError::not_retried(Failure::Timeout)),
                },
            };
            match answered {
                Ok(response) => {
                    if !upgrade {
                        self.put_back(target, sender);
                    }
                    return Ok(response);
                }
                Err(mut error) => match error.take_message() {
                    Some(unsent) if !fresh => request = unsent,
                    Some(unsent) => {
                        let io = std::io::Error::new(
                            std::io::ErrorKind::ConnectionAborted,
                            error.into_error(),
                        );
                        return Err(SendError::unsent(io, unsent, replay));
                    }
                    None if body.client_failed() => {
                        return Err(SendError::not_retried(Failure::Client))
                    }
                    None => return Err(SendError::broken(error.into_error(), replay)),
                },
            }
        }
    }

    /// [`Self::send`] to an h2c target: over its one shared connection, or a new one when
    /// there is none or it closed.
    async fn send_h2(
        &self,
        target: SocketAddr,
        outgoing: Outgoing,
        body: &BodyProgress,
        timeouts: &ProxyTimeouts,
    ) -> Result<Response<Incoming>, SendError> {
        let Outgoing {
            mut request,
            replay,
        } = outgoing;
        loop {
            let pooled = self
                .h2
                .borrow()
                .get(&target)
                .filter(|sender| !sender.is_closed())
                .cloned();
            let fresh = pooled.is_none();
            let mut sender = match pooled {
                Some(sender) => sender,
                None => match connect_h2(target, timeouts).await {
                    Ok(sender) => {
                        self.h2.borrow_mut().insert(target, sender.clone());
                        sender
                    }
                    Err(error) => return Err(SendError::unsent(error, request, replay)),
                },
            };
            let answered = match answer(sender.try_send_request(request), body, timeouts).await {
                Ok(answered) => answered,
                Err(failure) => return Err(SendError::not_retried(failure)),
            };
            match answered {
                Ok(response) => return Ok(response),
                Err(mut error) => match error.take_message() {
                    // The shared connection went away: once more on a new one.
                    Some(unsent) if !fresh => {
                        self.h2.borrow_mut().remove(&target);
                        request = unsent;
                    }
                    Some(unsent) => {
                        self.h2.borrow_mut().remove(&target);
                        let io = std::io::Error::new(
                            std::io::ErrorKind::ConnectionAborted,
                            error.into_error(),
                        );
                        return Err(SendError::unsent(io, unsent, replay));
                    }
                    None if body.client_failed() => {
                        return Err(SendError::not_retried(Failure::Client))
                    }
                    None => return Err(SendError::broken(error.into_error(), replay)),
                },
            }
        }
    }

    fn take_ready(&self, target: SocketAddr) -> Option<SendRequest<UpstreamBody>> {
        let mut idle = self.idle.borrow_mut();
        let senders = idle.get_mut(&target)?;
        senders.retain(|sender| !sender.is_closed());
        // A connection still streaming a response body is not ready; it stays for later.
        let ready = senders.iter().rposition(SendRequest::is_ready)?;
        Some(senders.swap_remove(ready))
    }

    fn put_back(&self, target: SocketAddr, sender: SendRequest<UpstreamBody>) {
        let mut idle = self.idle.borrow_mut();
        let senders = idle.entry(target).or_default();
        if senders.len() < MAX_IDLE_PER_TARGET {
            senders.push(sender);
        }
    }

    /// Drops pooled connections to targets no longer configured.
    pub fn retain_targets(&self, keep: impl Fn(&SocketAddr) -> bool) {
        self.idle.borrow_mut().retain(|address, _| keep(address));
        self.h2.borrow_mut().retain(|address, _| keep(address));
    }
}

/// Waits for `exchange`: the response timeout starts when the client's body has been read.
async fn answer<F: std::future::Future>(
    exchange: F,
    body: &BodyProgress,
    timeouts: &ProxyTimeouts,
) -> Result<F::Output, Failure> {
    tokio::pin!(exchange);
    let answered = tokio::select! {
        biased;
        answered = &mut exchange => Some(answered),
        () = body.ended() => None,
    };
    match answered {
        Some(answered) => Ok(answered),
        None => match tokio::time::timeout(timeouts.response, exchange).await {
            Ok(answered) => Ok(answered),
            // A client that stalled or broke its body ends the exchange itself.
            Err(_) if body.client_failed() => Err(Failure::Client),
            Err(_) => Err(Failure::Timeout),
        },
    }
}

/// A new HTTP/2 connection with prior knowledge to an h2c target; its task runs on the
/// worker's LocalSet.
async fn connect_h2(
    target: SocketAddr,
    timeouts: &ProxyTimeouts,
) -> std::io::Result<http2::SendRequest<UpstreamBody>> {
    let stream = tokio::time::timeout(timeouts.connect, TcpStream::connect(target))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    let (sender, connection) = http2::Builder::new(super::h2::LocalExec)
        .timer(hyper_util::rt::TokioTimer::new())
        .handshake(TokioIo::new(WriteStall::new(stream, timeouts.client_idle)))
        .await
        .map_err(std::io::Error::other)?;
    tokio::task::spawn_local(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

async fn connect(
    target: SocketAddr,
    timeouts: &ProxyTimeouts,
    upgrade: bool,
) -> std::io::Result<SendRequest<UpstreamBody>> {
    let stream = tokio::time::timeout(timeouts.connect, TcpStream::connect(target))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::Builder::new()
        .handshake(TokioIo::new(WriteStall::new(stream, timeouts.client_idle)))
        .await
        .map_err(std::io::Error::other)?;
    if upgrade {
        tokio::task::spawn_local(async move {
            let _ = connection.with_upgrades().await;
        });
    } else {
        tokio::task::spawn_local(async move {
            let _ = connection.await;
        });
    }
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outgoing(method: Method) -> Outgoing {
        let request = Request::builder()
            .method(method)
            .uri("/items?page=2")
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("x-forwarded-for", "10.0.0.1")
            .body(())
            .expect("request");
        Outgoing::new(request.into_parts().0, None)
    }

    #[test]
    fn only_idempotent_requests_without_a_body_may_be_replayed() {
        for method in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::TRACE,
            Method::PUT,
            Method::DELETE,
        ] {
            assert!(outgoing(method.clone()).replay.is_some(), "{method}");
        }
        for method in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert!(outgoing(method.clone()).replay.is_none(), "{method}");
        }
    }

    #[test]
    fn a_replay_is_the_rewritten_head_without_hop_by_hop_fields_or_body() {
        let replay = outgoing(Method::GET).replay.expect("replayable");
        let request = replay.request();
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri(), "/items?page=2");
        let names: Vec<&str> = request.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-forwarded-for"]);
        assert!(matches!(request.body(), Either::Right(_)));
    }
}
