//! The admin endpoint: `/metrics` (Prometheus text), `/healthz` (the process answers) and
//! `/readyz` (a configuration is loaded and the proxy is listening).
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tracing::{info, warn};

pub struct AdminState {
    pub registry: Registry,
    pub ready: AtomicBool,
}

/// Admin connections open at once. Probes and scrapes need a handful; the cap keeps a flood of
/// idle connections from taking the descriptors the proxy needs.
pub const MAX_CONNECTIONS: usize = 64;
/// A connection must send its request head within this, and may stay idle between requests no
/// longer than this (kubelet probes and Prometheus scrapes send at once).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds now (so a taken port fails start-up), then serves in the background.
pub async fn start(listen: SocketAddr, state: Arc<AdminState>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(listen).await?;
    let local = listener.local_addr()?;
    info!(listen = %local, max_connections = MAX_CONNECTIONS, "admin listening");
    tokio::spawn(async move {
        let mut open = OpenConnections::default();
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(%error, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let closed = open.make_room();
            let state = state.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| answer(request, state.clone()));
                let mut builder = http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT);
                let serving = builder.serve_connection(TokioIo::new(stream), service);
                // Evicted to make room for a newer connection: drop it mid-flight.
                tokio::select! {
                    _ = serving => {}
                    _ = closed => {}
                }
            });
        }
    });
    Ok(local)
}

/// The open admin connections, oldest first. When the cap is reached the oldest is closed to
/// make room: a new probe is always answered, and whoever holds connections open without
/// using them loses them first.
#[derive(Default)]
struct OpenConnections {
    open: std::collections::VecDeque<oneshot::Sender<()>>,
}

impl OpenConnections {
    /// Registers a new connection; the receiver resolves when it must close.
    fn make_room(&mut self) -> oneshot::Receiver<()> {
        // Finished connections dropped their receivers.
        self.open.retain(|sender| !sender.is_closed());
        while self.open.len() >= MAX_CONNECTIONS {
            if let Some(oldest) = self.open.pop_front() {
                let _ = oldest.send(());
            }
        }
        let (sender, receiver) = oneshot::channel();
        self.open.push_back(sender);
        receiver
    }
}

async fn answer(
    request: Request<Incoming>,
    state: Arc<AdminState>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into()));
    }
    Ok(match request.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" if state.ready.load(Ordering::Acquire) => text(StatusCode::OK, "ready\n".into()),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into()),
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
                Ok(()) => {
                    let mut response = text(StatusCode::OK, body);
                    response.headers_mut().insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static(
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        ),
                    );
                    response
                }
                Err(_) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "cannot encode metrics\n".into(),
                ),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "try /metrics, /healthz or /readyz\n".into(),
        ),
    })
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
