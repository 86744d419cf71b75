//! h2c targets (HTTP/2 with prior knowledge), through hyper's HTTP/2 client: one multiplexed
//! connection per target per worker, its task on the worker's LocalSet.
use super::{ClientBody, Failure, SendError, TargetError};
use crate::model::ProxyTimeouts;
use crate::proxy::headers;
use crate::proxy::idle::{BodyProgress, WriteStall};
use http_body_util::{Either, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http2;
use hyper::http::request::Parts;
use hyper::{HeaderMap, Method, Request, Response, Uri, Version};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use tokio::net::TcpStream;

/// The body sent to an h2c target: the client's own, or empty for a rebuilt retry.
pub type Body = Either<ClientBody, Empty<Bytes>>;

pub type Sender = http2::SendRequest<Body>;

/// A request for an h2c target, with what it takes to send it again.
pub struct Outgoing {
    pub(super) request: Request<Body>,
    /// Set for an idempotent request without a body, the only kind that may be sent again
    /// after a target has seen it (RFC 9110 §9.2.2).
    pub(super) replay: Option<Replay>,
}

impl Outgoing {
    /// A replay copy is taken now, so a resent request carries the same forwarded headers.
    pub fn new(parts: Parts, body: Option<ClientBody>) -> Self {
        let replay =
            (super::h1::is_idempotent(&parts.method) && body.is_none()).then(|| Replay::of(&parts));
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

/// The head of a bodiless request, to send it again once hyper has consumed it.
pub(super) struct Replay {
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
            uri: parts.uri.clone(),
            version: parts.version,
            headers,
        }
    }

    fn request(&self) -> Request<Body> {
        let mut request = Request::new(Either::Right(Empty::new()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        request
    }
}

fn unsent(error: std::io::Error, outgoing: Outgoing) -> SendError {
    SendError {
        failure: Failure::Connect(error),
        retry: Some(Box::new(super::Outgoing::H2c(Box::new(outgoing)))),
    }
}

fn broken(error: hyper::Error, replay: Option<Replay>) -> SendError {
    SendError {
        failure: Failure::Broken(TargetError::Http2(error)),
        retry: replay.map(|replay| {
            Box::new(super::Outgoing::H2c(Box::new(Outgoing {
                request: replay.request(),
                replay: Some(replay),
            })))
        }),
    }
}

/// Sends over the target's one shared connection, or a new one when there is none or it
/// closed.
pub(super) async fn send(
    shared: &std::cell::RefCell<std::collections::HashMap<SocketAddr, Sender>>,
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
        let pooled = shared
            .borrow()
            .get(&target)
            .filter(|sender| !sender.is_closed())
            .cloned();
        let fresh = pooled.is_none();
        let mut sender = match pooled {
            Some(sender) => sender,
            None => match connect(target, timeouts).await {
                Ok(sender) => {
                    shared.borrow_mut().insert(target, sender.clone());
                    sender
                }
                Err(error) => return Err(unsent(error, Outgoing { request, replay })),
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
                Some(unsent_request) if !fresh => {
                    shared.borrow_mut().remove(&target);
                    request = unsent_request;
                }
                Some(unsent_request) => {
                    shared.borrow_mut().remove(&target);
                    let io = std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        error.into_error(),
                    );
                    return Err(unsent(
                        io,
                        Outgoing {
                            request: unsent_request,
                            replay,
                        },
                    ));
                }
                None if body.client_failed() => {
                    return Err(SendError::not_retried(Failure::Client))
                }
                None => return Err(broken(error.into_error(), replay)),
            },
        }
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

async fn connect(target: SocketAddr, timeouts: &ProxyTimeouts) -> std::io::Result<Sender> {
    let stream = tokio::time::timeout(timeouts.connect, TcpStream::connect(target))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    let (sender, connection) = http2::Builder::new(crate::proxy::h2::LocalExec)
        .timer(hyper_util::rt::TokioTimer::new())
        .handshake(TokioIo::new(WriteStall::new(stream, timeouts.client_idle)))
        .await
        .map_err(std::io::Error::other)?;
    tokio::task::spawn_local(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_is_the_rewritten_head_without_hop_by_hop_fields_or_body() {
        let request = Request::builder()
            .method(Method::GET)
            .uri("http://shop/items?page=2")
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("x-forwarded-for", "10.0.0.1")
            .body(())
            .expect("request");
        let outgoing = Outgoing::new(request.into_parts().0, None);
        let replay = outgoing.replay.expect("replayable").request();
        assert_eq!(replay.method(), Method::GET);
        assert_eq!(replay.uri(), "http://shop/items?page=2");
        let names: Vec<&str> = replay.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-forwarded-for"]);
        assert!(matches!(replay.body(), Either::Right(_)));
    }
}
