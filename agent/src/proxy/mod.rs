//! The userspace fast path: an HTTP/1.1 proxy with one single-threaded runtime per worker,
//! each accepting on its own SO_REUSEPORT socket and owning its own connection pool, so the
//! request path takes no lock.
pub mod handler;
pub mod headers;
pub mod upstream;

use crate::metrics::{Metrics, OutcomeCounters};
use crate::sticky::cookie::CookieCodec;
use crate::table::Tables;
use arc_swap::ArcSwap;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
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

/// Running workers; dropping it does not stop them, [`Proxy::shutdown`] does.
pub struct Proxy {
    shutdown: watch::Sender<bool>,
    workers: Vec<std::thread::JoinHandle<()>>,
    pub local_addr: SocketAddr,
}

impl Proxy {
    /// Binds `workers` sockets to `listen` (SO_REUSEPORT) and starts one thread for each.
    pub fn start(listen: SocketAddr, workers: usize, shared: Arc<Shared>) -> std::io::Result<Self> {
        let workers = workers.max(1);
        if listen.port() != 0 {
            ensure_not_in_use(listen)?;
        }
        let mut sockets = Vec::with_capacity(workers);
        let mut local_addr = listen;
        for _ in 0..workers {
            // A port of 0 is chosen by the first bind and shared by the rest.
            let socket = bind_reuseport(local_addr)?;
            local_addr = socket.local_addr()?;
            sockets.push(socket);
        }
        let (shutdown, watcher) = watch::channel(false);
        let mut handles = Vec::with_capacity(workers);
        for (index, socket) in sockets.into_iter().enumerate() {
            let shared = shared.clone();
            let watcher = watcher.clone();
            let handle = std::thread::Builder::new()
                .name(format!("tether-proxy-{index}"))
                .spawn(move || {
                    if let Err(error) = run_worker(socket, shared, watcher) {
                        warn!(worker = index, %error, "proxy worker stopped");
                    }
                })?;
            handles.push(handle);
        }
        info!(listen = %local_addr, workers, "proxy listening");
        Ok(Self {
            shutdown,
            workers: handles,
            local_addr,
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
    socket: std::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = TcpListener::from_std(socket)?;
        let local_port = listener.local_addr()?.port();
        let upstreams = Rc::new(Upstreams::default());
        let mut stop = shutdown.clone();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, client)) => {
                        let connection = Rc::new(Connection {
                            shared: shared.clone(),
                            upstreams: upstreams.clone(),
                            client,
                            forwarded: headers::ClientValues::new(client.ip(), local_port),
                            served: Cell::new(0),
                        });
                        tokio::task::spawn_local(serve(stream, connection, shutdown.clone()));
                    }
                    Err(error) => {
                        // Out of file descriptors, usually: back off instead of spinning.
                        warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = stop.changed() => break,
            }
        }
        drop(listener);
        Ok::<(), std::io::Error>(())
    })?;
    // Open connections finish their current request (graceful shutdown) before the runtime ends.
    runtime.block_on(local);
    Ok(())
}

async fn serve(stream: TcpStream, connection: Rc<Connection>, mut shutdown: watch::Receiver<bool>) {
    let shared = connection.shared.clone();
    shared.metrics.client_connections.inc();
    let _ = stream.set_nodelay(true);
    let (header_read, max_header_bytes) = {
        let tables = shared.tables.load();
        (tables.timeouts.header_read, tables.max_header_bytes)
    };
    let handler_connection = connection.clone();
    let service = service_fn(move |request| {
        let connection = handler_connection.clone();
        connection.served.set(connection.served.get() + 1);
        handler::handle(request, connection)
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read)
        .max_buf_size(max_header_bytes)
        // The buffer limit alone is not exact (one read may overshoot it); this one is.
        .max_header_size(max_header_bytes);
    let serving = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(serving);
    let result = tokio::select! {
        result = serving.as_mut() => result,
        _ = shutdown.changed() => {
            serving.as_mut().graceful_shutdown();
            serving.await
        }
    };
    if let Err(error) = result {
        let outcomes = &shared.outcomes;
        if error.is_parse_too_large() {
            outcomes.header_too_large.inc();
            debug!(client = %connection.client, "request head too large: 431");
        } else if error.is_parse() {
            outcomes.bad_request.inc();
            debug!(client = %connection.client, %error, "malformed request: 400");
        } else if error.is_timeout() {
            // The same timer ends idle keep-alive connections; only a connection that never
            // completed a request head counts as a slow client.
            if connection.served.get() == 0 {
                outcomes.client_timeout.inc();
                debug!(client = %connection.client, "client too slow sending its request head");
            }
        } else {
            debug!(client = %connection.client, %error, "client connection ended with an error");
        }
    }
    shared.metrics.client_connections.dec();
}
