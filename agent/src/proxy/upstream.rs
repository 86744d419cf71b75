//! Connections to targets: one keep-alive pool per worker thread, no locks.
//!
//! The pool connects before it sends, so a refused connection hands the request back untouched
//! and the caller can re-pin it to another target whatever its method or body.
use http_body_util::{Either, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

/// The body sent to a target: the client's own, or empty for a rebuilt retry.
pub type UpstreamBody = Either<Incoming, Empty<Bytes>>;

/// Idle connections kept per target per worker.
const MAX_IDLE_PER_TARGET: usize = 512;

pub enum SendError {
    /// Nothing was sent: the request comes back for another target.
    Connect(std::io::Error, Box<Request<UpstreamBody>>),
    /// The target took the request but sent no response head in time.
    Timeout,
    /// The connection broke after the request was (at least partly) sent.
    Broken(hyper::Error),
}

#[derive(Default)]
pub struct Upstreams {
    idle: RefCell<HashMap<SocketAddr, Vec<SendRequest<UpstreamBody>>>>,
}

impl Upstreams {
    /// Sends `request` to `target` over a pooled connection, or a new one.
    ///
    /// `upgrade` requests get a connection of their own that is never pooled.
    pub async fn send(
        &self,
        target: SocketAddr,
        mut request: Request<UpstreamBody>,
        connect_timeout: Duration,
        response_timeout: Duration,
        upgrade: bool,
    ) -> Result<Response<Incoming>, SendError> {
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
                None => match connect(target, connect_timeout, upgrade).await {
                    Ok(sender) => sender,
                    Err(error) => return Err(SendError::Connect(error, Box::new(request))),
                },
            };
            let exchange = sender.try_send_request(request);
            match tokio::time::timeout(response_timeout, exchange).await {
                Err(_) => return Err(SendError::Timeout),
                Ok(Ok(response)) => {
                    if !upgrade {
                        self.put_back(target, sender);
                    }
                    return Ok(response);
                }
                Ok(Err(mut error)) => match error.take_message() {
                    Some(unsent) if !fresh => request = unsent,
                    Some(unsent) => {
                        let io = std::io::Error::new(
                            std::io::ErrorKind::ConnectionAborted,
                            error.into_error(),
                        );
                        return Err(SendError::Connect(io, Box::new(unsent)));
                    }
                    None => return Err(SendError::Broken(error.into_error())),
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
    }
}

async fn connect(
    target: SocketAddr,
    timeout: Duration,
    upgrade: bool,
) -> std::io::Result<SendRequest<UpstreamBody>> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(target))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
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
