//! A client's HTTP/1.1 byte stream into the proxy's real server path (agent/src/proxy/h1):
//! tether's own HTTP/1.1 server side and request handler, over a loopback TCP connection (the
//! server side reads its socket directly, so it takes a real one). The tables
//! come from a configuration with a sticky service (host and path routes), a consistent-hashing
//! service, a wildcard host and an exact path; every target is a reserved local port that
//! refuses connections, so each request ends in tether's own answer.
//!
//! Checks: no panic, no hang; the bytes that come back are a sequence of well-formed HTTP/1.x
//! responses with statuses tether gives, or, when the input begins with the HTTP/2 preface (the
//! plaintext listener takes h2c with prior knowledge), HTTP/2 frames that begin with SETTINGS. The same input, read as `name: value` lines,
//! is also a header map for the header rules (agent/src/proxy/headers.rs), whose invariants are
//! checked directly.
#![no_main]

use arc_swap::ArcSwap;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST, UPGRADE, VIA};
use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tether::metrics::{Metrics, OutcomeCounters};
use tether::proxy::headers::{
    self, ClientValues, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO,
};
use tether::proxy::upstream::Upstreams;
use tether::proxy::{h1, h2::PREFACE, Connection, Shared};
use tether::source::file;
use tether::sticky::cookie::{CookieCodec, KEY_LEN};
use tether::table::Tables;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::watch;
use tokio::task::LocalSet;

const CLIENT: &str = "192.0.2.7:40000";
const LISTEN_PORT: u16 = 8080;
/// A run that takes longer than this is a hang (the pipe closes at once, targets refuse).
const LIMIT: Duration = Duration::from_secs(10);

/// The statuses a client can get when no target answers: 100 Continue, the refusals of the
/// server side (400, 408, 431, 501) and of the handler (400 bad Host or body, 404 no route, 405
/// CONNECT, 502 failed targets, 503 no target, 504 timeout).
const STATUSES: &[u16] = &[100, 400, 404, 405, 408, 431, 501, 502, 503, 504];

/// `{A}`, `{B}` and `{C}` become the reserved ports.
const CONFIG: &str = "
proxy:
  listen: 127.0.0.1:8080
  timeouts: {headerRead: 5s, connect: 200ms, response: 1s}
routes:
  - match: {host: shop.example.com, pathPrefix: /cart}
    service: shop
  - match: {host: '*.example.org'}
    service: hashed
  - match: {path: /exact}
    service: empty
  - match: {pathPrefix: /echo}
    service: echo
services:
  shop:
    policy:
      algorithm: sticky-sessions
      hashOn: {input: none}
      stickySessions: {cookie: session-id, cookiePath: /}
    sessionCookie: {sameSite: None, secure: true, conditionalSameSiteNone: true, idleTimeout: 30m}
    targets:
      - {address: '127.0.0.1:{A}'}
      - {address: '127.0.0.1:{B}', weight: 0}
  echo:
    policy:
      algorithm: sticky-sessions
      hashOn: {input: none}
      stickySessions: {cookie: session-id, cookiePath: /}
    targets:
      - {address: '127.0.0.1:{A}'}
      - {address: '127.0.0.1:{C}'}
  hashed:
    policy:
      algorithm: consistent-hashing
      hashOn: {header: x-user}
      hashOnFallback: {queryArg: user}
    targets:
      - {address: '127.0.0.1:{B}'}
      - {address: '127.0.0.1:{C}'}
  empty: {}
";

struct Harness {
    runtime: Runtime,
    local: LocalSet,
    shared: Arc<Shared>,
    upstreams: Rc<Upstreams>,
    shutdown: watch::Receiver<bool>,
    _stop: watch::Sender<bool>,
    /// Where each input arrives, as one client connection.
    listener: TcpListener,
    /// Bound, never listening: connections to them are refused, and no one else takes them.
    _reserved: Vec<TcpSocket>,
}

impl Harness {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (reserved, config, listener) = runtime.block_on(async {
            let mut config = CONFIG.to_string();
            let mut reserved = Vec::new();
            for name in ["{A}", "{B}", "{C}"] {
                let socket = TcpSocket::new_v4().expect("socket");
                socket
                    .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
                    .expect("bind");
                let port = socket.local_addr().expect("address").port();
                config = config.replace(name, &port.to_string());
                reserved.push(socket);
            }
            let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
                .await
                .expect("listen");
            (reserved, config, listener)
        });
        let model = file::parse(&config, "fuzz.yaml")
            .expect("the harness configuration is valid")
            .model;
        let codec = CookieCodec::new(&[7u8; KEY_LEN]);
        let metrics = Metrics::default();
        let shared = Arc::new(Shared {
            tables: ArcSwap::from_pointee(Tables::build(&model, &codec, &metrics, 1)),
            outcomes: OutcomeCounters::new(&metrics),
            codec,
            metrics,
        });
        let (stop, shutdown) = watch::channel(false);
        Self {
            runtime,
            local: LocalSet::new(),
            shared,
            upstreams: Rc::new(Upstreams::default()),
            shutdown,
            _stop: stop,
            listener,
            _reserved: reserved,
        }
    }

    /// Sends `request` as one client connection and returns all it got back.
    fn exchange(&self, request: &[u8]) -> Vec<u8> {
        let connection = Rc::new(Connection::new(
            self.shared.clone(),
            self.upstreams.clone(),
            CLIENT.parse().expect("address"),
            LISTEN_PORT,
            false,
        ));
        let shutdown = self.shutdown.clone();
        let listener = &self.listener;
        self.local.block_on(&self.runtime, async move {
            let address = listener.local_addr().expect("address");
            let (client, accepted) = tokio::join!(TcpStream::connect(address), listener.accept());
            let (client, (server, _)) = (client.expect("connect"), accepted.expect("accept"));
            let served = tokio::task::spawn_local(h1::serve(
                h1::socket::Transport::Plain(server),
                connection,
                shutdown,
            ));
            let (mut reader, mut writer) = tokio::io::split(client);
            // Written while reading: a client that sends everything before reading anything
            // would block on a full pipe once the server blocks on its own.
            let write = async move {
                let _ = writer.write_all(request).await;
                let _ = writer.shutdown().await;
            };
            let read = async move {
                let mut received = Vec::new();
                let _ = reader.read_to_end(&mut received).await;
                received
            };
            let exchange = async {
                let ((), received) = tokio::join!(write, read);
                served.await.expect("the connection task panicked");
                received
            };
            tokio::time::timeout(LIMIT, exchange)
                .await
                .expect("the connection did not end")
        })
    }
}

thread_local! {
    static HARNESS: Harness = Harness::new();
}

/// Checks that `bytes`, the answer to a connection that began with the HTTP/2 preface (h2c with
/// prior knowledge), are HTTP/2 frames that begin with the server's SETTINGS, as RFC 9113 3.4
/// says.
fn check_frames(bytes: &[u8]) {
    const SETTINGS: u8 = 0x4;
    const HEADER: usize = 9;
    let context = || format!("{bytes:?}");
    let mut rest = bytes;
    let mut first = true;
    while rest.len() >= HEADER {
        let length = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        let kind = rest[3];
        let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7fff_ffff;
        // DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY,
        // WINDOW_UPDATE, CONTINUATION: hyper sends no other type.
        assert!(kind <= 0x9, "frame type {kind}: {}", context());
        if first {
            assert!(
                kind == SETTINGS && stream == 0,
                "the server's first frame is not SETTINGS: {}",
                context()
            );
            first = false;
        }
        if matches!(kind, 0x4 | 0x6 | 0x7) {
            assert_eq!(stream, 0, "a connection frame on a stream: {}", context());
        }
        if rest.len() < HEADER + length {
            break;
        }
        rest = &rest[HEADER + length..];
    }
}

/// Checks that `bytes` are whole HTTP/1.x responses, one after another.
fn check_responses(bytes: &[u8]) {
    let context = || String::from_utf8_lossy(bytes).into_owned();
    let mut rest = bytes;
    while !rest.is_empty() {
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut fields);
        let head = match response.parse(rest) {
            Ok(httparse::Status::Complete(length)) => length,
            other => panic!("not a response head ({other:?}): {:?}", context()),
        };
        let status = response.code.expect("a parsed head has a status");
        assert!(
            STATUSES.contains(&status),
            "status {status}: {:?}",
            context()
        );
        let mut length = None;
        for field in response.headers.iter() {
            assert!(
                !field.name.eq_ignore_ascii_case("transfer-encoding"),
                "tether's answers have a length: {:?}",
                context()
            );
            if field.name.eq_ignore_ascii_case("content-length") {
                let value = std::str::from_utf8(field.value).expect("ASCII length");
                length = Some(value.parse::<usize>().expect("a number"));
            }
        }
        rest = &rest[head..];
        let next_or_end = |tail: &[u8]| tail.is_empty() || tail.starts_with(b"HTTP/1.");
        let body = length.unwrap_or(0);
        if rest.len() >= body && next_or_end(&rest[body..]) {
            rest = &rest[body..];
        } else {
            // A response to HEAD keeps its Content-Length and has no body.
            assert!(
                next_or_end(rest),
                "a body of the wrong length: {:?}",
                context()
            );
        }
    }
}

/// The input as a header map: each `name: value` line that is a valid field.
fn header_map(data: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            map.append(name, value);
        }
    }
    map
}

/// The field names a `Connection` header lists (RFC 9110 §7.6.1), whatever else its value has.
fn connection_options(map: &HeaderMap) -> Vec<HeaderName> {
    map.get_all(CONNECTION)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .filter_map(|token| HeaderName::from_bytes(token.trim_ascii()).ok())
        .collect()
}

fn check_header_rules(data: &[u8]) {
    let original = header_map(data);
    let uri: hyper::Uri = data
        .split(|b| *b == b' ')
        .nth(1)
        .and_then(|target| hyper::Uri::try_from(target).ok())
        .unwrap_or_else(|| hyper::Uri::from_static("/"));

    if let Some(host) = headers::routing_host(&original, &uri) {
        assert_eq!(host, host.to_ascii_lowercase());
        assert!(!host.ends_with('.'), "{host:?}");
        assert!(host.starts_with('[') || !host.contains(':'), "{host:?}");
    }

    if headers::is_upgrade(&original) {
        assert!(original.contains_key(UPGRADE));
    }
    for keep_upgrade in [false, true] {
        let mut map = original.clone();
        headers::remove_hop_by_hop(&mut map, keep_upgrade);
        for name in [
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "transfer-encoding",
            "proxy-authenticate",
            "proxy-authorization",
        ] {
            assert!(!map.contains_key(name), "{name} passed: {map:?}");
        }
        for name in connection_options(&original) {
            if keep_upgrade && (name == UPGRADE || name == CONNECTION) {
                continue;
            }
            assert!(
                !map.contains_key(&name),
                "{name}, named in Connection, passed: {map:?}"
            );
        }
        if keep_upgrade {
            assert_eq!(map.get_all(CONNECTION).iter().count(), 1);
            assert_eq!(
                map.get(CONNECTION).map(HeaderValue::as_bytes),
                Some(&b"upgrade"[..])
            );
        } else {
            assert!(!map.contains_key(CONNECTION) && !map.contains_key(UPGRADE));
        }

        let client = ClientValues::new(
            CLIENT.parse::<SocketAddr>().expect("address").ip(),
            8080,
            false,
        );
        let vias = map.get_all(VIA).iter().count();
        headers::add_forwarded(&mut map, &client);
        let forwarded: Vec<_> = map.get_all(&X_FORWARDED_FOR).iter().collect();
        assert_eq!(forwarded.len(), 1, "{map:?}");
        assert!(forwarded[0].as_bytes().ends_with(client.ip.as_bytes()));
        assert_eq!(
            map.get(&X_FORWARDED_PROTO).map(HeaderValue::as_bytes),
            Some(&b"http"[..])
        );
        assert_eq!(map.get_all(VIA).iter().count(), vias + 1);
        assert_eq!(map.get(&X_FORWARDED_HOST), map.get(HOST));
    }
}

fuzz_target!(|data: &[u8]| {
    check_header_rules(data);
    let received = HARNESS.with(|harness| harness.exchange(data));
    if data.starts_with(PREFACE) {
        check_frames(&received);
    } else {
        check_responses(&received);
    }
});
