//! tether's HTTP/1.1 server side: one task per client connection reads a head, hands the
//! request to the handler, writes the response and waits for the next, holding no buffer while
//! it waits (an idle keep-alive connection costs its task and its socket, nothing more).
//!
//! Targets are reached through `upstream` on this same task; the request body streams
//! from this socket to the target through [`body::RequestBody`].
pub mod body;
pub mod chunked;
pub mod head;
mod response;
pub mod socket;

use super::handler;
use super::idle::BodyState;
use super::upstream::TargetTunnel;
use super::Connection;
use head::{Head, HeadError};
use socket::{ClientSocket, Transport};
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Sleep;
use tracing::debug;

/// A tunnel the handler set up with the target (101, or 2xx to CONNECT): the connection task
/// joins the client's socket to it once the response head is written.
pub struct TargetUpgrade {
    pub upgrade: super::upstream::TargetTunnel,
    pub service: std::sync::Arc<str>,
    pub target: std::sync::Arc<str>,
}

/// How reading the next head ended, when it yielded none.
enum NoHead {
    /// The client closed, or shutdown came while idle: close quietly.
    Closed,
    /// `headerRead` passed; `partial` when part of a head had arrived.
    Timeout {
        partial: bool,
    },
    Refused(HeadError),
    /// The connection opened with the HTTP/2 preface (h2c with prior knowledge).
    Http2,
}

pub async fn serve(
    transport: Transport,
    connection: Rc<Connection>,
    mut shutdown: watch::Receiver<bool>,
) {
    let shared = connection.shared.clone();
    let outcomes = &shared.outcomes;
    let (timeouts, max_header_bytes) = {
        let tables = shared.tables.load();
        (tables.timeouts, tables.max_header_bytes)
    };
    let socket = Rc::new(ClientSocket::new(transport, timeouts.client_idle));
    let mut served = 0u64;
    let mut http2 = false;
    // One timer for every head the connection reads (see `read_head`).
    let mut header_timer = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
    let end = loop {
        let head = match read_head(
            &socket,
            header_timer.as_mut(),
            timeouts.header_read,
            max_header_bytes,
            served == 0,
            &mut shutdown,
        )
        .await
        {
            Ok(head) => head,
            Err(NoHead::Http2) => {
                http2 = true;
                break None;
            }
            Err(NoHead::Closed) => break None,
            Err(NoHead::Timeout { partial }) => {
                // The same timer ends idle keep-alive connections; only a connection that never
                // completed a head, or stalled inside one, counts as a slow client.
                if served == 0 || partial {
                    outcomes.client_timeout.inc();
                    debug!(client = %connection.client, "client too slow sending its request head");
                }
                break None;
            }
            Err(NoHead::Refused(error)) => {
                debug!(client = %connection.client, %error, "request refused");
                break Some(error);
            }
        };
        served += 1;
        connection.served.set(served);
        let Head {
            request,
            framing,
            keep_alive,
            expect_continue,
        } = head;
        let version = request.version();
        let is_head = request.method() == hyper::Method::HEAD;
        let (body, progress) = body::RequestBody::new(
            &socket,
            framing,
            expect_continue,
            timeouts.client_idle,
            max_header_bytes,
        );
        // Boxed, so the connection's task is only as large as its idle state: the exchange's
        // futures (hyper's client, the response writer) are allocated while it runs and freed
        // with it.
        let answer = Box::pin(handler::handle(
            request.map(|()| body.map(super::body::ClientBody::H1)),
            progress.clone(),
            connection.clone(),
        ))
        .await;
        let keep_alive = keep_alive && !*shutdown.borrow();
        let written = Box::pin(response::write(
            &socket, answer, version, is_head, keep_alive,
        ))
        .await;
        match written {
            Ok(response::Written::KeepAlive) if progress.state() == BodyState::Complete => {
                socket.release_buffer();
            }
            Ok(response::Written::KeepAlive | response::Written::Close) => break None,
            Ok(response::Written::Tunnel(upgrade)) => {
                tunnel(socket, upgrade);
                shared.metrics.client_connections.dec();
                return;
            }
            Err(error) => {
                if error.kind() == std::io::ErrorKind::TimedOut {
                    outcomes.stalled.inc();
                    debug!(client = %connection.client, "a side stalled for clientIdle: connection closed");
                } else {
                    debug!(client = %connection.client, %error, "writing the response failed");
                }
                break None;
            }
        }
    };
    if http2 {
        // Nothing else holds the socket before the first request.
        if let Ok(socket) = Rc::try_unwrap(socket) {
            let (transport, early) = socket.into_stream();
            // Boxed: an HTTP/1.1 connection's task does not grow by an HTTP/2 one.
            Box::pin(super::h2::serve(transport, early, connection, shutdown)).await;
            return;
        }
        shared.metrics.client_connections.dec();
        return;
    }
    if let Some(error) = end {
        let (status, counter) = match error {
            HeadError::TooLarge => (431, &outcomes.header_too_large),
            HeadError::Malformed(_) => (400, &outcomes.bad_request),
            HeadError::UnsupportedCoding => (501, &outcomes.bad_request),
        };
        counter.inc();
        let _ = response::write_error(&socket, status).await;
    }
    // The body may still be held by an upstream connection winding down; the last owner
    // closes the socket either way.
    if let Ok(socket) = Rc::try_unwrap(socket) {
        socket.close().await;
    }
    shared.metrics.client_connections.dec();
}

/// Reads until a whole head is in, within `header_read` from the first wait: that bounds both a
/// slow head and an idle keep-alive connection. On a connection's `first` request, the HTTP/2
/// preface instead hands the connection to the HTTP/2 server (h2c with prior knowledge; over
/// TLS too, for a client that did not use ALPN).
///
/// `timer` is the connection's own, moved later for each head: a registered tokio timer moved
/// later is one atomic update, where a new timer per head is a timer-wheel insert and removal.
async fn read_head(
    socket: &ClientSocket,
    mut timer: Pin<&mut Sleep>,
    header_read: Duration,
    max_bytes: usize,
    mut first: bool,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Head, NoHead> {
    timer
        .as_mut()
        .reset(tokio::time::Instant::now() + header_read);
    loop {
        if first && socket.has_pending() {
            match socket.with_pending(|pending| super::h2::is_preface(pending)) {
                Some(true) => return Err(NoHead::Http2),
                Some(false) => first = false,
                None => {}
            }
        }
        if !first && socket.has_pending() {
            let parsed = socket.with_pending(|pending| head::parse_shared(pending, max_bytes));
            match parsed {
                Ok(Some(head)) => return Ok(head),
                Ok(None) => {}
                Err(error) => return Err(NoHead::Refused(error)),
            }
        }
        let partial = socket.has_pending();
        let wait = async {
            if partial {
                socket.fill().await
            } else {
                socket.fill_when_idle().await
            }
        };
        tokio::select! {
            read = wait => match read {
                Ok(0) | Err(_) => return Err(NoHead::Closed),
                Ok(_) => {}
            },
            () = timer.as_mut() => return Err(NoHead::Timeout { partial }),
            _ = shutdown.changed(), if !partial => return Err(NoHead::Closed),
        }
    }
}

/// Joins the client to the target's side of a tunnel, bytes already read from the client first.
fn tunnel(socket: Rc<ClientSocket>, upgrade: TargetUpgrade) {
    let TargetUpgrade {
        upgrade,
        service,
        target,
    } = upgrade;
    tokio::task::spawn_local(async move {
        use tokio::io::AsyncWriteExt;
        let Ok(socket) = Rc::try_unwrap(socket) else {
            debug!(
                service = &*service,
                target = &*target,
                "tunnel: the request body still holds the socket"
            );
            return;
        };
        let (mut client, early) = socket.into_stream();
        let copied = match upgrade {
            TargetTunnel::H1(connection) => {
                let (mut upstream, from_target) = connection.into_parts();
                if !from_target.is_empty() && client.write_all(&from_target).await.is_err() {
                    return;
                }
                join(&mut client, &mut upstream, &early).await
            }
            TargetTunnel::H2(upgrade) => match upgrade.await {
                Ok(upstream) => {
                    join(
                        &mut client,
                        &mut hyper_util::rt::TokioIo::new(upstream),
                        &early,
                    )
                    .await
                }
                Err(error) => {
                    debug!(service = &*service, target = &*target, %error, "upgrade failed");
                    return;
                }
            },
        };
        match copied {
            Ok((up, down)) => debug!(
                service = &*service,
                target = &*target,
                up,
                down,
                "tunnel closed"
            ),
            Err(error) => debug!(service = &*service, target = &*target, %error, "tunnel ended"),
        }
    });
}

/// Sends the client's bytes read early to the target, then copies both ways until either ends.
async fn join<T>(
    client: &mut Transport,
    upstream: &mut T,
    early: &[u8],
) -> std::io::Result<(u64, u64)>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    if !early.is_empty() {
        upstream.write_all(early).await?;
    }
    tokio::io::copy_bidirectional(client, upstream).await
}
