//! A small HTTP backend that says which pod it is, like the echo image of the Kong how-to.
//!
//! - any path: `Running on Pod NAME.` and an `x-pod: NAME` header;
//! - `/headers...`: also lists the request's headers, one `name: value` a line;
//! - `?sleep_ms=N`: waits N ms (at most 60 s) before answering;
//! - an `Upgrade` request: answers 101 and echoes every byte back on the tunnel.
use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONNECTION, UPGRADE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Parser)]
struct Options {
    /// Address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// The pod name it reports.
    #[arg(long)]
    name: String,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    workers: usize,
}

fn main() -> Result<()> {
    let options = Options::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.workers.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(serve(options))
}

async fn serve(options: Options) -> Result<()> {
    let listener = TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("cannot listen on {}", options.listen))?;
    let name: &'static str = Box::leak(options.name.into_boxed_str());
    let greeting = Bytes::from(format!("Running on Pod {name}.\n"));
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let greeting = greeting.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| answer(request, name, greeting.clone()));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

async fn answer(
    mut request: Request<Incoming>,
    name: &'static str,
    greeting: Bytes,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    if let Some(ms) = query_value(&request, "sleep_ms").and_then(|v| v.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
    }
    if request.headers().contains_key(UPGRADE) {
        let protocol = request.headers()[UPGRADE].clone();
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let mut buffer = [0u8; 4096];
                while let Ok(n) = io.read(&mut buffer).await {
                    if n == 0 || io.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        response.headers_mut().insert(UPGRADE, protocol);
        response
            .headers_mut()
            .insert(CONNECTION, "upgrade".parse().expect("static header"));
        response
            .headers_mut()
            .insert("x-pod", name.parse().expect("pod name"));
        return Ok(response);
    }
    let body = if request.uri().path().starts_with("/headers") {
        let mut text = String::from_utf8_lossy(&greeting).into_owned();
        for (key, value) in request.headers() {
            text.push_str(&format!(
                "{key}: {}\n",
                value.to_str().unwrap_or("<binary>")
            ));
        }
        Bytes::from(text)
    } else {
        // Drain the request body so the connection can be reused.
        let _ = http_body_util::BodyExt::collect(request.into_body()).await;
        greeting
    };
    let mut response = Response::new(Full::new(body));
    response
        .headers_mut()
        .insert("x-pod", name.parse().expect("pod name"));
    Ok(response)
}

fn query_value<'a>(request: &'a Request<Incoming>, key: &str) -> Option<&'a str> {
    request.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then_some(v)
    })
}
