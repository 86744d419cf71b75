//! A real HTTP client for the tests (hyper), a session-cookie jar, and raw sockets for input no
//! client would send.
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderMap, HeaderName, HeaderValue, COOKIE, SET_COOKIE};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// No request of a test takes longer than this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The pod that answered (the echo's `x-pod` header).
    pub fn pod(&self) -> Option<&str> {
        self.header("x-pod")
    }

    /// Every `Set-Cookie` header, as text.
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect()
    }

    /// The whole `Set-Cookie` header for cookie `name`, if one was set.
    pub fn set_cookie(&self, name: &str) -> Option<String> {
        self.set_cookies()
            .into_iter()
            .find(|header| cookie_pair(header).is_some_and(|(n, _)| n == name))
    }

    /// The value `Set-Cookie` gives cookie `name`, if one was set.
    pub fn cookie_value(&self, name: &str) -> Option<String> {
        self.set_cookie(name)
            .and_then(|header| cookie_pair(&header).map(|(_, v)| v.to_string()))
    }

    /// The request headers the echo saw (its `/headers` answer), lowercase names, in order.
    pub fn echoed_headers(&self) -> Vec<(String, String)> {
        self.text()
            .lines()
            .skip(1)
            .filter_map(|line| {
                let (name, value) = line.split_once(": ")?;
                Some((name.to_string(), value.to_string()))
            })
            .collect()
    }

    /// The values of request header `name` the echo saw.
    pub fn echoed(&self, name: &str) -> Vec<String> {
        self.echoed_headers()
            .into_iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
            .collect()
    }
}

/// `name=value` of a Set-Cookie header.
fn cookie_pair(header: &str) -> Option<(&str, &str)> {
    let pair = header.split(';').next()?;
    let (name, value) = pair.split_once('=')?;
    Some((name.trim(), value.trim()))
}

/// Keeps one session cookie the way a browser would: replaced by every `Set-Cookie` for it.
#[derive(Debug, Clone)]
pub struct CookieJar {
    name: String,
    value: Option<String>,
}

impl CookieJar {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            value: None,
        }
    }

    pub fn session_id() -> Self {
        Self::new("session-id")
    }

    /// A jar already holding `value`.
    pub fn with(name: &str, value: &str) -> Self {
        Self {
            name: name.to_string(),
            value: Some(value.to_string()),
        }
    }

    /// Takes the cookie from `reply`; says whether it set one.
    pub fn update(&mut self, reply: &Reply) -> bool {
        match reply.cookie_value(&self.name) {
            Some(value) => {
                self.value = Some(value);
                true
            }
            None => false,
        }
    }

    pub fn value(&self) -> Option<&str> {
        self.value.as_deref()
    }

    /// The `Cookie` header to send, if the jar holds the cookie.
    pub fn header(&self) -> Option<String> {
        self.value
            .as_ref()
            .map(|value| format!("{}={value}", self.name))
    }
}

/// An HTTP/1.1 client that opens a new connection for every request, so no test depends on
/// which keep-alive connection (or which proxy worker) a request lands on.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Http {
    fn default() -> Self {
        Self::new()
    }
}

impl Http {
    pub fn new() -> Self {
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build_http();
        Self { client }
    }

    pub async fn get(&self, url: &str, cookie: Option<&str>) -> Result<Reply> {
        self.send(Method::GET, url, cookie, &[], Bytes::new()).await
    }

    pub async fn get_with(
        &self,
        url: &str,
        cookie: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<Reply> {
        self.send(Method::GET, url, cookie, headers, Bytes::new())
            .await
    }

    pub async fn post(&self, url: &str, cookie: Option<&str>, body: Bytes) -> Result<Reply> {
        self.send(Method::POST, url, cookie, &[], body).await
    }

    /// Sends one request; `cookie` is a whole `Cookie` header value (`name=value; ...`).
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        cookie: Option<&str>,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Reply> {
        let mut request = Request::builder().method(method).uri(url);
        if let Some(cookie) = cookie {
            request = request.header(COOKIE, cookie);
        }
        for (name, value) in headers {
            request = request.header(
                HeaderName::from_bytes(name.as_bytes())?,
                HeaderValue::from_str(value)?,
            );
        }
        let request = request.body(Full::new(body))?;
        let exchange = async {
            let response = self.client.request(request).await?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<Reply, anyhow::Error>(Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .with_context(|| format!("{url}: no answer in {REQUEST_TIMEOUT:?}"))?
            .with_context(|| format!("{url}: request failed"))
    }
}

impl Http {
    /// Starts new sessions (no cookie) at `url` until one lands on `pod` (at most `tries`);
    /// returns that session's cookie value.
    pub async fn session_on(
        &self,
        url: &str,
        cookie: &str,
        pod: &str,
        tries: usize,
    ) -> Result<String> {
        let mut seen = Vec::new();
        for _ in 0..tries {
            let reply = self.get(url, None).await?;
            let landed = reply.pod().unwrap_or("<none>").to_string();
            if landed == pod {
                return reply
                    .cookie_value(cookie)
                    .with_context(|| format!("a new session on {pod} got no {cookie} cookie"));
            }
            seen.push(landed);
        }
        bail!("{tries} new sessions never landed on {pod}: {seen:?}")
    }
}

/// A protocol switch: the 101 answer and the tunnel behind it.
pub struct Upgraded {
    pub reply: Reply,
    pub io: TokioIo<hyper::upgrade::Upgraded>,
}

/// Sends `GET path` with `Connection: upgrade` and `Upgrade: protocol` to `address`; on a
/// 101 answer, returns the tunnel.
pub async fn upgrade(
    address: SocketAddr,
    path: &str,
    protocol: &str,
    cookie: Option<&str>,
) -> Result<Upgraded> {
    let exchange = async {
        let stream = TcpStream::connect(address).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.with_upgrades().await;
        });
        let mut request = Request::get(path)
            .header("host", address.to_string())
            .header("connection", "upgrade")
            .header("upgrade", protocol);
        if let Some(cookie) = cookie {
            request = request.header(COOKIE, cookie);
        }
        let mut response = sender.send_request(request.body(Full::default())?).await?;
        let status = response.status();
        let headers = response.headers().clone();
        if status != StatusCode::SWITCHING_PROTOCOLS {
            let body = response.into_body().collect().await?.to_bytes();
            bail!(
                "upgrade answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let upgraded = hyper::upgrade::on(&mut response).await?;
        Ok(Upgraded {
            reply: Reply {
                status,
                headers,
                body: Bytes::new(),
            },
            io: TokioIo::new(upgraded),
        })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .context("upgrade: no answer in time")?
}

/// Writes `bytes` on a new connection to `address`, then reads until the peer closes, `limit`
/// passes, or 64 KiB arrived. Returns what was read and whether the peer closed.
pub async fn raw_exchange(address: SocketAddr, bytes: &[u8], limit: Duration) -> Result<RawReply> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(address).await?;
    stream.write_all(bytes).await?;
    let mut received = Vec::new();
    let mut buffer = [0u8; 8192];
    let deadline = started + limit;
    let closed = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || received.len() > 64 * 1024 {
            break false;
        }
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Err(_) => break false,
            Ok(Ok(0)) => break true,
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
            // A reset counts as closed.
            Ok(Err(_)) => break true,
        }
    };
    Ok(RawReply {
        bytes: received,
        closed,
        elapsed: started.elapsed(),
    })
}

#[derive(Debug)]
pub struct RawReply {
    pub bytes: Vec<u8>,
    /// The peer closed the connection (within the limit).
    pub closed: bool,
    /// From connecting until the close, or until the limit.
    pub elapsed: Duration,
}

impl RawReply {
    /// The status code of the first response, if one arrived.
    pub fn status(&self) -> Option<u16> {
        let text = String::from_utf8_lossy(&self.bytes);
        let line = text.lines().next()?;
        let mut words = line.split(' ');
        if !words.next()?.starts_with("HTTP/1.") {
            return None;
        }
        words.next()?.parse().ok()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}
