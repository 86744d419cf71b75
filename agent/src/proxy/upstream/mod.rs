//! Connections to targets: one keep-alive pool per worker thread, no locks.
//!
//! HTTP/1.1 targets are reached through tether's own client ([`h1`]) on the client
//! connection's task; h2c targets through hyper's HTTP/2 client ([`h2c`]).
//!
//! A pooled connection is checked before it is used, and a new one is made when it is gone,
//! so a refused connection hands the request back untouched and the caller can re-pin it to
//! another target whatever its method or body. Whether a failed request may go to another
//! target is decided here and travels with the error ([`SendError`]).
pub mod h1;
pub mod h2c;

use super::body::ClientBody;
use super::idle::BodyProgress;
use crate::model::ProxyTimeouts;
pub use h1::TargetError;
use h1::{ExchangeError, TargetConnection};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

/// Idle connections kept per target per worker.
const MAX_IDLE_PER_TARGET: usize = 512;

/// A request on its way to a target, with what it takes to send it again.
pub enum Outgoing {
    H1(h1::Request),
    H2c(Box<h2c::Outgoing>),
}

impl Outgoing {
    /// The request as rewritten for an HTTP/1.1 target.
    pub fn h1(parts: &Parts, body: Option<ClientBody>) -> Self {
        Self::H1(h1::Request::new(parts, body))
    }

    /// The request as rewritten for an h2c target.
    pub fn h2c(parts: Parts, body: Option<ClientBody>) -> Self {
        Self::H2c(Box::new(h2c::Outgoing::new(parts, body)))
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
    /// The connection broke after the request was (at least partly) sent, or the target's
    /// answer was malformed.
    Broken(TargetError),
    /// The client stalled or broke its own request body: its fault, not the target's.
    Client,
}

impl SendError {
    fn not_retried(failure: Failure) -> Self {
        Self {
            failure,
            retry: None,
        }
    }
}

/// A target's response body: from tether's HTTP/1.1 client, or an h2c stream.
pub enum ResponseBody {
    H1(h1::ResponseBody),
    H2(Incoming),
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            ResponseBody::H1(body) => Pin::new(body).poll_frame(cx),
            ResponseBody::H2(body) => Pin::new(body).poll_frame(cx).map_err(std::io::Error::other),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::H1(body) => body.is_end_stream(),
            ResponseBody::H2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::H1(body) => body.size_hint(),
            ResponseBody::H2(body) => body.size_hint(),
        }
    }
}

/// The target's side of a tunnel (101, or 2xx to CONNECT).
pub enum TargetTunnel {
    H1(TargetConnection),
    H2(hyper::upgrade::OnUpgrade),
}

/// Takes the target's side of the tunnel `response` opened.
pub fn take_tunnel(response: &mut Response<ResponseBody>) -> Option<TargetTunnel> {
    match response.body_mut() {
        ResponseBody::H1(body) => body.take_tunnel().map(TargetTunnel::H1),
        ResponseBody::H2(_) => Some(TargetTunnel::H2(hyper::upgrade::on(response))),
    }
}

#[derive(Default)]
pub struct Upstreams {
    idle: RefCell<HashMap<SocketAddr, Vec<TargetConnection>>>,
    /// h2c targets: one multiplexed connection each.
    h2: RefCell<HashMap<SocketAddr, h2c::Sender>>,
}

impl Upstreams {
    /// Sends `outgoing` to `target` over a pooled connection, or a new one.
    ///
    /// `upgrade` requests get a connection of their own that is never pooled. The response
    /// timeout starts when `body` says the client's request body has been read.
    pub async fn send(
        self: &Rc<Self>,
        target: SocketAddr,
        outgoing: Outgoing,
        body: &BodyProgress,
        timeouts: &ProxyTimeouts,
        upgrade: bool,
    ) -> Result<Response<ResponseBody>, SendError> {
        match outgoing {
            Outgoing::H1(request) => self.send_h1(target, request, body, timeouts, upgrade).await,
            Outgoing::H2c(outgoing) => h2c::send(&self.h2, target, *outgoing, body, timeouts)
                .await
                .map(|response| response.map(ResponseBody::H2)),
        }
    }

    async fn send_h1(
        self: &Rc<Self>,
        target: SocketAddr,
        mut request: h1::Request,
        progress: &BodyProgress,
        timeouts: &ProxyTimeouts,
        upgrade: bool,
    ) -> Result<Response<ResponseBody>, SendError> {
        // A pooled connection that would not take the head (the target reset it while idle) is
        // dropped and the request goes out on the next one, or a fresh one. Once the head went
        // out, a silent close is a broken exchange, as with any connection: the request is
        // replayed elsewhere only when that is safe.
        loop {
            let pooled = if upgrade { None } else { self.take(target) };
            let reused = pooled.is_some();
            let mut connection = match pooled {
                Some(connection) => connection,
                None => match TargetConnection::connect(target, timeouts.connect).await {
                    Ok(connection) => connection,
                    Err(error) => return Err(unsent(error, request)),
                },
            };
            let exchanged = h1::exchange(
                &mut connection,
                &mut request,
                progress,
                timeouts.response,
                timeouts.client_idle,
            )
            .await;
            let error = match exchanged {
                Ok((head, _)) if head.status == StatusCode::SWITCHING_PROTOCOLS && !upgrade => {
                    h1::TargetError::Malformed("101 to a request that asked for no upgrade")
                }
                Ok((head, sent_whole)) => {
                    let body = h1::ResponseBody::new(
                        &head,
                        connection,
                        sent_whole,
                        Rc::downgrade(self),
                        target,
                    );
                    let mut response = Response::new(ResponseBody::H1(body));
                    *response.status_mut() = head.status;
                    *response.version_mut() = head.version;
                    *response.headers_mut() = head.headers;
                    return Ok(response);
                }
                Err(ExchangeError::Unsent(_)) if reused => continue,
                Err(ExchangeError::Unsent(error)) => return Err(unsent(error, request)),
                Err(ExchangeError::Broken(error)) => error,
                Err(ExchangeError::Timeout) => {
                    return Err(SendError::not_retried(Failure::Timeout))
                }
                Err(ExchangeError::Client) => return Err(SendError::not_retried(Failure::Client)),
            };
            let retry = request
                .kind
                .replayable
                .then(|| Box::new(Outgoing::H1(request)));
            return Err(SendError {
                failure: Failure::Broken(error),
                retry,
            });
        }
    }

    /// The most recently used idle connection to `target` that is still open.
    fn take(&self, target: SocketAddr) -> Option<TargetConnection> {
        let mut idle = self.idle.borrow_mut();
        let connections = idle.get_mut(&target)?;
        while let Some(connection) = connections.pop() {
            if connection.is_usable() {
                return Some(connection);
            }
        }
        None
    }

    fn put_back(&self, target: SocketAddr, connection: TargetConnection) {
        let mut idle = self.idle.borrow_mut();
        let connections = idle.entry(target).or_default();
        if connections.len() < MAX_IDLE_PER_TARGET {
            connections.push(connection);
        }
    }

    /// Drops idle connections their targets have closed (they would hold a socket in
    /// CLOSE_WAIT until their next use otherwise).
    pub fn prune(&self) {
        let mut idle = self.idle.borrow_mut();
        for connections in idle.values_mut() {
            connections.retain(TargetConnection::is_usable);
        }
        idle.retain(|_, connections| !connections.is_empty());
        self.h2.borrow_mut().retain(|_, sender| !sender.is_closed());
    }

    /// Drops pooled connections to targets no longer configured.
    pub fn retain_targets(&self, keep: impl Fn(&SocketAddr) -> bool) {
        self.idle.borrow_mut().retain(|address, _| keep(address));
        self.h2.borrow_mut().retain(|address, _| keep(address));
    }
}

/// Nothing reached the target: the request, body untouched, may go anywhere.
fn unsent(error: std::io::Error, request: h1::Request) -> SendError {
    SendError {
        failure: Failure::Connect(error),
        retry: Some(Box::new(Outgoing::H1(request))),
    }
}
