//! A small HTTP backend that says which pod it is, like the echo image of the Kong how-to.
//!
//! - any path: `Running on Pod NAME.` and an `x-pod: NAME` header;
//! - `/headers...`: also lists the request's headers, one `name: value` a line;
//! - `?sleep_ms=N`: waits N ms (at most 60 s) before answering;
//! - `?size=N`: pads the body with `.` to N bytes (at most 64 MiB), for large responses;
//! - every answer but an upgrade's says how many request body bytes it read: `x-received-bytes`;
//! - an `Upgrade` request: answers 101 and echoes every byte back on the tunnel; a `CONNECT`
//!   answers 200 and does the same.
//!
//! [`run`] serves it until the process ends (the `tether-echo` binary); [`EchoServer`] runs it
//! inside a test, on its own thread and runtime, counts requests, and can be stopped (its port
//! then refuses connections) and restarted on the same port.
use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, UPGRADE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// The longest `sleep_ms` honoured.
const MAX_SLEEP_MS: u64 = 60_000;
/// The largest `size` honoured.
const MAX_SIZE: usize = 64 << 20;
/// How long [`EchoServer::stop`] waits after closing, for peers to notice.
const STOP_SETTLE: Duration = Duration::from_millis(100);

/// What every connection of one echo server shares.
struct EchoState {
    name: String,
    greeting: Bytes,
    requests: AtomicU64,
    /// Request bodies of non-`/headers` requests, kept only for in-process servers.
    bodies: Option<Mutex<Vec<Bytes>>>,
}

impl EchoState {
    fn new(name: &str, record_bodies: bool) -> Self {
        Self {
            name: name.to_string(),
            greeting: Bytes::from(format!("Running on Pod {name}.\n")),
            requests: AtomicU64::new(0),
            bodies: record_bodies.then(|| Mutex::new(Vec::new())),
        }
    }
}

/// Serves on `listen` as pod `name` with `workers` threads until the process ends.
pub fn run(listen: SocketAddr, name: &str, workers: usize) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .enable_all()
        .build()?;
    let state = Arc::new(EchoState::new(name, false));
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        // Never stopped: the sender lives as long as the server.
        let (_stop, stopped) = watch::channel(false);
        serve(listener, state, stopped, std::future::pending()).await;
        Ok(())
    })
}

/// Accepts and serves until `shutdown` resolves, then closes the listener and every connection.
async fn serve(
    listener: TcpListener,
    state: Arc<EchoState>,
    stopped: watch::Receiver<bool>,
    shutdown: impl Future<Output = ()>,
) {
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        // Out of file descriptors, usually: back off instead of spinning.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                let stopped = stopped.clone();
                connections.spawn(async move {
                    let service =
                        service_fn(move |request| answer(request, state.clone(), stopped.clone()));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
            // Reap finished connections so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    connections.shutdown().await;
}

async fn answer(
    mut request: Request<Incoming>,
    state: Arc<EchoState>,
    mut stopped: watch::Receiver<bool>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    state.requests.fetch_add(1, Ordering::Relaxed);
    if let Some(ms) = query_value(&request, "sleep_ms").and_then(|v| v.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms.min(MAX_SLEEP_MS))).await;
    }
    let pod = |response: &mut Response<Full<Bytes>>| {
        if let Ok(value) = state.name.parse() {
            response.headers_mut().insert("x-pod", value);
        }
    };
    let connect = request.method() == hyper::Method::CONNECT;
    if connect || request.headers().contains_key(UPGRADE) {
        let protocol = request.headers().get(UPGRADE).cloned();
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let mut buffer = [0u8; 4096];
                loop {
                    let n = tokio::select! {
                        read = io.read(&mut buffer) => match read {
                            Ok(n) => n,
                            Err(_) => break,
                        },
                        // A stopped server ends its tunnels too.
                        _ = stopped.wait_for(|stop| *stop) => break,
                    };
                    if n == 0 || io.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut response = Response::new(Full::new(Bytes::new()));
        if let (false, Some(protocol)) = (connect, protocol) {
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            response.headers_mut().insert(UPGRADE, protocol);
            response
                .headers_mut()
                .insert(CONNECTION, "upgrade".parse().expect("static header"));
        }
        pod(&mut response);
        return Ok(response);
    }
    let size = query_value(&request, "size").and_then(|v| v.parse::<usize>().ok());
    let mut received_bytes = 0;
    let body = if request.uri().path().starts_with("/headers") {
        let mut text = String::from_utf8_lossy(&state.greeting).into_owned();
        for (key, value) in request.headers() {
            text.push_str(&format!(
                "{key}: {}\n",
                value.to_str().unwrap_or("<binary>")
            ));
        }
        Bytes::from(text)
    } else {
        // Drain the request body so the connection can be reused.
        let received = request.into_body().collect().await;
        if let Ok(received) = received {
            let received = received.to_bytes();
            received_bytes = received.len();
            if let Some(bodies) = &state.bodies {
                bodies
                    .lock()
                    .expect("no test thread panics holding the lock")
                    .push(received);
            }
        }
        state.greeting.clone()
    };
    let body = match size.map(|n| n.min(MAX_SIZE)) {
        Some(n) if n > body.len() => {
            let mut padded = body.to_vec();
            padded.resize(n, b'.');
            Bytes::from(padded)
        }
        _ => body,
    };
    let mut response = Response::new(Full::new(body));
    pod(&mut response);
    response
        .headers_mut()
        .insert("x-received-bytes", received_bytes.into());
    Ok(response)
}

fn query_value<'a>(request: &'a Request<Incoming>, key: &str) -> Option<&'a str> {
    request.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then_some(v)
    })
}

/// An echo server inside the test process, on 127.0.0.1, with its own thread and runtime.
pub struct EchoServer {
    address: SocketAddr,
    state: Arc<EchoState>,
    runtime: Option<tokio::runtime::Runtime>,
    running: Option<Running>,
}

struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl EchoServer {
    /// Starts pod `name` on a free loopback port.
    pub fn start(name: &str) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("echo-{name}"))
            .enable_all()
            .build()?;
        let mut server = Self {
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            state: Arc::new(EchoState::new(name, true)),
            runtime: Some(runtime),
            running: None,
        };
        server.listen()?;
        Ok(server)
    }

    fn listen(&mut self) -> Result<()> {
        let runtime = self.runtime.as_ref().context("the runtime is gone")?;
        // std's bind sets SO_REUSEADDR, so a restart is not held up by TIME_WAIT.
        let listener = std::net::TcpListener::bind(self.address)
            .with_context(|| format!("echo {}: cannot listen on {}", self.name(), self.address))?;
        listener.set_nonblocking(true)?;
        self.address = listener.local_addr()?;
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(listener)?
        };
        let (stop, stopped) = watch::channel(false);
        let mut signal = stopped.clone();
        let shutdown = async move {
            let _ = signal.wait_for(|stop| *stop).await;
        };
        let task = runtime.spawn(serve(listener, self.state.clone(), stopped, shutdown));
        self.running = Some(Running { stop, task });
        Ok(())
    }

    /// Where it listens (the same across [`EchoServer::stop`] and [`EchoServer::restart`]).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The pod name it reports.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// Requests answered (or being answered) since it first started.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// Bodies of the requests it read (every path but `/headers...`), in arrival order.
    pub fn bodies(&self) -> Vec<Bytes> {
        self.state
            .bodies
            .as_ref()
            .map(|bodies| {
                bodies
                    .lock()
                    .expect("no test thread panics holding the lock")
                    .clone()
            })
            .unwrap_or_default()
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Closes the listener and every open connection and tunnel; its port then refuses
    /// connections. Waits (at most 5 s) until that is done, then a moment more so that clients'
    /// pooled keep-alive connections (tether's) have seen the close: a request sent at the very
    /// instant a pooled connection closes is the keep-alive race every proxy has, not a refusal.
    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = running.stop.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(5), running.task).await;
            tokio::time::sleep(STOP_SETTLE).await;
        }
    }

    /// Listens again on the same port.
    pub fn restart(&mut self) -> Result<()> {
        if self.running.is_none() {
            self.listen()?;
        }
        Ok(())
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = running.stop.send(true);
        }
        // Dropping a runtime may block, which an async test's thread must not do.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
