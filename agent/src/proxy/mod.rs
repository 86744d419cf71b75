//! The userspace fast path: an HTTP proxy (its own HTTP/1.1 server side in `h1`, hyper's
//! HTTP/2 one in `h2`, its own HTTP/1.1 client and hyper's h2c one toward targets in
//! `upstream`) with one single-threaded runtime per worker, each accepting on its own SO_REUSEPORT socket and owning its own connection pool, so the
//! request path takes no lock.
pub mod body;
mod choose;
mod forward;
pub mod h1;
pub mod h2;
pub mod handler;
pub mod headers;
pub mod idle;
mod respond;
mod route;
pub mod upstream;

use crate::metrics::{Metrics, OutcomeCounters};
use crate::sticky::cookie::CookieCodec;
use crate::table::Tables;
use arc_swap::ArcSwap;
use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, info, warn};
use upstream::Upstreams;

/// What every worker shares: the current tables, the cookie codec and the metrics.
pub struct Shared {
    pub tables: ArcSwap<Tables>,
    pub codec: CookieCodec,
    pub metrics: Metrics,
    pub outcomes: OutcomeCounters,
}

/// One client connection, as the request handler sees it.
pub struct Connection {
    pub shared: Arc<Shared>,
    pub upstreams: Rc<Upstreams>,
    pub client: SocketAddr,
    /// X-Forwarded-For and -Port values for this client, rendered once.
    pub forwarded: headers::ClientValues,
    served: Cell<u64>,
}

impl Connection {
    /// A client connection from `client`, accepted on `local_port`, over TLS or not.
    pub fn new(
        shared: Arc<Shared>,
        upstreams: Rc<Upstreams>,
        client: SocketAddr,
        local_port: u16,
        tls: bool,
    ) -> Self {
        Self {
            shared,
            upstreams,
            client,
            forwarded: headers::ClientValues::new(client.ip(), local_port, tls),
            served: Cell::new(0),
        }
    }
}

/// Running workers; dropping it does not stop them, [`Proxy::shutdown`] does.
pub struct Proxy {
    shutdown: watch::Sender<bool>,
    workers: Vec<std::thread::JoinHandle<()>>,
    pub local_addr: SocketAddr,
    pub tls_local_addr: Option<SocketAddr>,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{setting}: cannot listen on {address}")]
    Listen {
        setting: &'static str,
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start a proxy worker thread")]
    Thread(#[source] std::io::Error),
}

/// The TLS listener: where, and how handshakes are answered.
pub struct TlsListener {
    pub listen: SocketAddr,
    pub config: Arc<rustls::ServerConfig>,
}

/// One worker's sockets.
struct WorkerSockets {
    plain: std::net::TcpListener,
    tls: Option<(std::net::TcpListener, tokio_rustls::TlsAcceptor)>,
}

impl Proxy {
    /// Binds `workers` sockets to `listen`, and to the TLS listener's address if there is one
    /// (SO_REUSEPORT), and starts one thread for each.
    pub fn start(
        listen: SocketAddr,
        tls: Option<TlsListener>,
        workers: usize,
        shared: Arc<Shared>,
    ) -> Result<Self, StartError> {
        let workers = workers.max(1);
        let listening = |setting: &'static str, address: SocketAddr| {
            move |source| StartError::Listen {
                setting,
                address,
                source,
            }
        };
        let plain = bind_all(listen, workers).map_err(listening("proxy.listen", listen))?;
        let secure = match &tls {
            Some(tls) => Some(
                bind_all(tls.listen, workers).map_err(listening("proxy.tls.listen", tls.listen))?,
            ),
            None => None,
        };
        let local_addr = plain[0]
            .local_addr()
            .map_err(listening("proxy.listen", listen))?;
        let tls_local_addr = match (&secure, &tls) {
            (Some(sockets), Some(tls)) => Some(
                sockets[0]
                    .local_addr()
                    .map_err(listening("proxy.tls.listen", tls.listen))?,
            ),
            _ => None,
        };
        let acceptor = tls.map(|tls| tokio_rustls::TlsAcceptor::from(tls.config));
        let mut secure = secure.map(Vec::into_iter);
        let (shutdown, watcher) = watch::channel(false);
        let mut handles = Vec::with_capacity(workers);
        for (index, plain) in plain.into_iter().enumerate() {
            let sockets = WorkerSockets {
                plain,
                tls: secure
                    .as_mut()
                    .and_then(Iterator::next)
                    .zip(acceptor.clone()),
            };
            let shared = shared.clone();
            let watcher = watcher.clone();
            let handle = std::thread::Builder::new()
                .name(format!("tether-proxy-{index}"))
                .spawn(move || {
                    if let Err(error) = run_worker(sockets, shared, watcher) {
                        warn!(worker = index, %error, "proxy worker stopped");
                    }
                })
                .map_err(StartError::Thread)?;
            handles.push(handle);
        }
        info!(listen = %local_addr, workers, "proxy listening");
        if let Some(tls) = tls_local_addr {
            info!(listen = %tls, workers, "TLS listening");
        }
        Ok(Self {
            shutdown,
            workers: handles,
            local_addr,
            tls_local_addr,
        })
    }

    /// Stops accepting, lets open requests finish (up to `grace`), then returns.
    pub fn shutdown(self, grace: Duration) {
        let _ = self.shutdown.send(true);
        let deadline = std::time::Instant::now() + grace;
        for worker in self.workers {
            while !worker.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if worker.is_finished() {
                let _ = worker.join();
            }
        }
    }
}

/// SO_REUSEPORT would let a second tether (or anything else with the option) silently share the
/// port and half the connections; a plain bind first makes "address in use" an error again.
fn ensure_not_in_use(address: SocketAddr) -> std::io::Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    let probe = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    probe.set_reuse_address(true)?;
    probe.bind(&address.into())
}

/// `count` SO_REUSEPORT sockets on `address` (a port of 0 is chosen by the first bind and
/// shared by the rest).
fn bind_all(address: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    if address.port() != 0 {
        ensure_not_in_use(address)?;
    }
    let mut sockets = Vec::with_capacity(count);
    let mut address = address;
    for _ in 0..count {
        let socket = bind_reuseport(address)?;
        address = socket.local_addr()?;
        sockets.push(socket);
    }
    Ok(sockets)
}

fn bind_reuseport(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

fn run_worker(
    sockets: WorkerSockets,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let plain = TcpListener::from_std(sockets.plain)?;
        let plain_port = plain.local_addr()?.port();
        let (secure, acceptor) = match sockets.tls {
            Some((socket, acceptor)) => (Some(TcpListener::from_std(socket)?), Some(acceptor)),
            None => (None, None),
        };
        let secure_port = match &secure {
            Some(listener) => listener.local_addr()?.port(),
            None => 0,
        };
        let upstreams = Rc::new(Upstreams::default());
        tokio::task::spawn_local(prune_idle(Rc::downgrade(&upstreams), shutdown.clone()));
        let mut stop = shutdown.clone();
        loop {
            let (accepted, tls) = tokio::select! {
                accepted = plain.accept() => (accepted, false),
                accepted = accept(secure.as_ref()) => (accepted, true),
                _ = stop.changed() => break,
            };
            let (stream, client) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, usually: back off instead of spinning.
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if at_capacity(&shared) {
                shed(stream, &shared, tls);
                continue;
            }
            // Counted here, not in the task, so the cap sees it at once.
            shared.metrics.client_connections.inc();
            let _ = stream.set_nodelay(true);
            let port = if tls { secure_port } else { plain_port };
            let connection = Rc::new(Connection::new(
                shared.clone(),
                upstreams.clone(),
                client,
                port,
                tls,
            ));
            match (&acceptor, tls) {
                (Some(acceptor), true) => {
                    tokio::task::spawn_local(serve_tls(
                        acceptor.clone(),
                        stream,
                        connection,
                        shutdown.clone(),
                    ));
                }
                _ => {
                    tokio::task::spawn_local(h1::serve(
                        h1::socket::Transport::Plain(stream),
                        connection,
                        shutdown.clone(),
                    ));
                }
            }
        }
        drop(plain);
        drop(secure);
        Ok::<(), std::io::Error>(())
    })?;
    // Open connections finish their current request (graceful shutdown) before the runtime ends.
    runtime.block_on(local);
    Ok(())
}

/// Lets go of idle target connections their targets closed, every few seconds, until shutdown.
async fn prune_idle(upstreams: std::rc::Weak<Upstreams>, mut shutdown: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.changed() => return,
        }
        match upstreams.upgrade() {
            Some(upstreams) => upstreams.prune(),
            None => return,
        }
    }
}

/// Accepts on the TLS listener; pending forever when there is none.
async fn accept(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// The TLS handshake (within `headerRead`: a client that stalls in it is a slow client), then
/// HTTP/2 over it when ALPN chose `h2`, else HTTP/1.1. A failed handshake (garbage,
/// plaintext, no shared version or cipher) closes this connection only.
async fn serve_tls(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    connection: Rc<Connection>,
    shutdown: watch::Receiver<bool>,
) {
    let shared = connection.shared.clone();
    let header_read = shared.tables.load().timeouts.header_read;
    match tokio::time::timeout(header_read, acceptor.accept(stream)).await {
        Ok(Ok(stream)) if stream.get_ref().1.alpn_protocol() == Some(crate::tls::ALPN_H2) => {
            Box::pin(h2::serve(
                h1::socket::Transport::Tls(Box::new(stream)),
                bytes::BytesMut::new(),
                connection,
                shutdown,
            ))
            .await;
        }
        Ok(Ok(stream)) => {
            h1::serve(
                h1::socket::Transport::Tls(Box::new(stream)),
                connection,
                shutdown,
            )
            .await;
        }
        Ok(Err(error)) => {
            shared.outcomes.tls_handshake_failed.inc();
            debug!(client = %connection.client, %error, "TLS handshake failed");
            shared.metrics.client_connections.dec();
        }
        Err(_) => {
            shared.outcomes.client_timeout.inc();
            debug!(client = %connection.client, "TLS handshake not done within headerRead");
            shared.metrics.client_connections.dec();
        }
    }
}

/// Whether `proxy.maxConnections` client connections are open (all workers together).
fn at_capacity(shared: &Shared) -> bool {
    let open = shared.metrics.client_connections.get();
    open >= 0 && open as usize >= shared.tables.load().max_connections
}

/// Past the cap a connection gets a short 503 and is closed: a clean answer, where holding it
/// would spend memory the agent may not have.
fn shed(stream: TcpStream, shared: &Shared, tls: bool) {
    const ANSWER: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 32\r\n\r\ntoo many connections; try again\n";
    // A fresh socket's send buffer is empty: this write does not block, and if it cannot
    // complete the close alone still tells the client. (A TLS client gets the close only: an
    // answer needs a handshake, which is what the cap saves.)
    if !tls {
        let _ = stream.try_write(ANSWER);
    }
    shared.metrics.shed_connections.inc();
    if SHED_LOG.allow() {
        warn!(
            max = shared.tables.load().max_connections,
            "proxy.maxConnections reached: closing new connections (logged at most once a second; tether_shed_connections_total counts all)"
        );
    }
}

static SHED_LOG: crate::log_limit::OncePerSecond = crate::log_limit::OncePerSecond::new();
