//! HTTP/2 toward clients: h2c with prior knowledge on the plaintext listener, `h2` by ALPN on
//! the TLS listener, both through curl; the raw cases (cookie crumbs, streams past the limit,
//! rapid reset, CONTINUATION floods, idle connections) through the Python `h2` package
//! (`h2_client.py` beside this file); and `protocol: h2c` services, with gRPC trailers, against
//! an HTTP/2 backend written here with hyper.
use crate::fixtures::{pods, session_cookie, sticky, sticky_with, TETHER};
use crate::tls::{curl as curl_tls, Site};
use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{HeaderMap, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use tether_testkit::agent::{TempDir, Tether};
use tether_testkit::config::{Config, COOKIE};
use tether_testkit::http::Http;
use tokio::net::TcpListener;

const CLIENT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/integration/h2_client.py"
);

/// What curl got over HTTP/2.
struct Got {
    http2: bool,
    status: u16,
    pod: Option<String>,
    /// The session cookie's value, when the response set one.
    session: Option<String>,
    body: String,
}

impl Got {
    fn of(ok: bool, body: String, trace: &str) -> Result<Self> {
        ensure!(ok, "curl failed: {trace}");
        let header = |name: &str| {
            trace.lines().find_map(|line| {
                let line = line.strip_prefix("< ")?;
                let (key, value) = line.split_once(':')?;
                key.eq_ignore_ascii_case(name)
                    .then(|| value.trim().to_string())
            })
        };
        let status_line = trace
            .lines()
            .find(|line| line.starts_with("< HTTP/"))
            .context("no status line")?;
        Ok(Self {
            http2: status_line.starts_with("< HTTP/2 "),
            status: status_line
                .split_whitespace()
                .nth(2)
                .context("status")?
                .parse()?,
            pod: header("x-pod"),
            session: header("set-cookie").and_then(|cookie| {
                let value = cookie.strip_prefix(&format!("{COOKIE}="))?;
                Some(value.split(';').next()?.to_string())
            }),
            body,
        })
    }
}

/// `curl --http2-prior-knowledge` (h2c) for `url`, with `cookie` as the Cookie header.
fn curl_h2c(url: &str, cookie: Option<&str>) -> Result<Got> {
    let mut command = Command::new("curl");
    command.args([
        "-sS",
        "-v",
        "--max-time",
        "10",
        "--http2-prior-knowledge",
        "-o",
        "-",
    ]);
    if let Some(cookie) = cookie {
        command.arg("-H").arg(format!("Cookie: {cookie}"));
    }
    let output = command.arg(url).output().context("curl")?;
    Got::of(
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        &String::from_utf8_lossy(&output.stderr),
    )
}

/// The raw HTTP/2 client's library, installed into a venv under target/ on first use.
const H2_PACKAGE: &str = "h2==4.4.1";

/// Runs `h2_client.py` with `args` (it bounds its own time); its JSON answer.
fn h2_client(args: &[&str]) -> Result<Value> {
    let python = crate::fixtures::python_venv("python-h2-venv", H2_PACKAGE)?.join("bin/python");
    let output = Command::new(python)
        .arg(CLIENT)
        .args(args)
        .output()
        .context("python3")?;
    ensure!(
        output.status.success(),
        "h2_client.py {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

fn port(tether: &Tether) -> String {
    tether.proxy().port().to_string()
}

/// A response's header `name` from h2_client.py's `headers` list.
fn header<'a>(response: &'a Value, name: &str) -> Option<&'a str> {
    response["headers"].as_array()?.iter().find_map(|pair| {
        (pair[0].as_str()? == name)
            .then(|| pair[1].as_str())
            .flatten()
    })
}

/// New h2c sessions until one lands on `pod` (at most `tries`): the session cookie's value.
fn h2c_session_on(url: &str, pod: &str, tries: usize) -> Result<String> {
    for _ in 0..tries {
        let got = curl_h2c(url, None)?;
        ensure!(got.http2 && got.status == 200, "status {}", got.status);
        if got.pod.as_deref() == Some(pod) {
            return got.session.context("a new session gets a cookie");
        }
    }
    anyhow::bail!("no new session landed on {pod} in {tries} tries")
}

#[tokio::test]
async fn h2c_prior_knowledge_is_sticky_and_http1_still_works() -> Result<()> {
    let (_pods, _config, tether, http, url) = sticky(["a", "b"]).await?;
    let headers = tether.url("/headers");
    let first = curl_h2c(&headers, None)?;
    assert!(first.http2, "spoken over HTTP/2");
    assert_eq!(first.status, 200);
    assert!(
        first.body.contains("x-forwarded-proto: http\n"),
        "{}",
        first.body
    );
    let pod = first.pod.clone().context("x-pod")?;
    let session = first.session.context("a new session gets a cookie")?;
    for _ in 0..6 {
        let got = curl_h2c(&url, Some(&format!("{COOKIE}={session}")))?;
        assert_eq!(got.pod.as_deref(), Some(pod.as_str()), "the session sticks");
        assert_eq!(got.session, None, "a kept session is not re-issued");
    }
    // New sessions are still spread over both pods.
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.extend(curl_h2c(&url, None)?.pod);
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen, ["a", "b"]);
    // HTTP/1.1 on the same listener is untouched.
    let reply = http.get(&headers, None).await?;
    assert_eq!(reply.status, 200);
    assert!(reply.text().contains("x-forwarded-proto: http\n"));
    Ok(())
}

#[tokio::test]
async fn h2_over_tls_by_alpn_is_sticky_and_forwarded_as_https() -> Result<()> {
    let dir = TempDir::new("h2-tls")?;
    let site = Site::write(dir.path(), "a", &["a.example"])?;
    let [a, b] = pods(["a", "b"])?;
    let (_tether, address) = crate::tls::start(&[&site], &[a.address(), b.address()]).await?;

    let fetched = curl_tls(address, "a.example", "/headers", &site, &["--http2"])?;
    assert!(
        fetched.trace.contains("ALPN: server accepted h2"),
        "{}",
        fetched.trace
    );
    let first = Got::of(fetched.ok, fetched.body, &fetched.trace)?;
    assert!(first.http2 && first.status == 200);
    assert!(
        first.body.contains("x-forwarded-proto: https\n"),
        "{}",
        first.body
    );
    let pod = first.pod.context("x-pod")?;
    let cookie = format!("Cookie: {COOKIE}={}", first.session.context("cookie")?);
    for _ in 0..5 {
        let fetched = curl_tls(
            address,
            "a.example",
            "/",
            &site,
            &["--http2", "-H", &cookie],
        )?;
        let got = Got::of(fetched.ok, fetched.body, &fetched.trace)?;
        assert!(got.http2);
        assert_eq!(got.pod.as_deref(), Some(pod.as_str()), "the session sticks");
    }
    // ALPN still offers HTTP/1.1.
    let fetched = curl_tls(address, "a.example", "/headers", &site, &["--http1.1"])?;
    assert!(
        fetched.trace.contains("ALPN: server accepted http/1.1"),
        "{}",
        fetched.trace
    );
    assert!(fetched.ok && fetched.status == "200");
    assert!(fetched.body.contains("x-forwarded-proto: https\n"));
    Ok(())
}

/// Weight 0 over HTTP/2 as over HTTP/1.1: the pinned session stays, new ones go elsewhere.
#[tokio::test]
async fn a_draining_target_keeps_its_pinned_h2_session() -> Result<()> {
    let ([a, b], config, tether, _http, url) = sticky(["a", "b"]).await?;
    let on_b = h2c_session_on(&url, "b", 6)?;
    tether
        .reload(
            &config
                .targets(&[(a.address(), 100), (b.address(), 0)])
                .yaml(),
        )
        .await?;
    let before = b.requests();
    for _ in 0..5 {
        let got = curl_h2c(&url, Some(&format!("{COOKIE}={on_b}")))?;
        assert_eq!(got.status, 200);
        assert_eq!(got.pod.as_deref(), Some("b"), "the drained session stays");
    }
    assert_eq!(b.requests() - before, 5);
    for _ in 0..6 {
        let got = curl_h2c(&url, None)?;
        assert_eq!(got.pod.as_deref(), Some("a"), "no new session on b");
        assert!(got.session.is_some());
    }
    Ok(())
}

/// RFC 9113 §8.2.3: the session cookie is found in any crumb, and the HTTP/1.1 target gets the
/// crumbs as one Cookie field.
#[tokio::test]
async fn cookie_crumbs_find_the_session_and_reach_the_target_joined() -> Result<()> {
    let (_pods, _config, tether, http, url) = sticky(["a", "b"]).await?;
    let session = session_cookie(&http, &url, "b", 6).await?;
    let port = port(&tether);
    for crumbs in [
        vec!["theme=dark", session.as_str(), "lang=en"],
        vec![session.as_str(), "theme=dark"],
        vec!["theme=dark", "lang=en", session.as_str()],
    ] {
        let mut args = vec![
            "request", "--port", &port, "--path", "/headers", "--count", "3",
        ];
        for crumb in &crumbs {
            args.extend(["--cookie", crumb]);
        }
        let answer = h2_client(&args)?;
        let responses = answer["responses"].as_array().context("responses")?;
        assert_eq!(responses.len(), 3, "{answer}");
        let joined = format!("cookie: {}", crumbs.join("; "));
        for response in responses {
            assert_eq!(response["status"], 200, "{answer}");
            assert_eq!(header(response, "x-pod"), Some("b"), "{crumbs:?}");
            assert_eq!(header(response, "set-cookie"), None, "kept, not re-issued");
            let body = response["body"].as_str().context("body")?;
            let cookie_lines: Vec<&str> = body
                .lines()
                .filter(|line| line.starts_with("cookie:"))
                .collect();
            assert_eq!(cookie_lines, [joined.as_str()], "{body}");
        }
    }
    // A forged session in a crumb is refused like a forged cookie.
    let answer = h2_client(&[
        "request",
        "--port",
        &port,
        "--cookie",
        "theme=dark",
        "--cookie",
        &format!("{COOKIE}=AAAAforgedAAAAforgedAAAAforgedAAAAforgedAAAA"),
    ])?;
    let response = &answer["responses"][0];
    assert_eq!(response["status"], 200);
    assert!(
        header(response, "set-cookie").is_some_and(|c| c.starts_with(COOKIE)),
        "a new session replaces the forged one: {answer}"
    );
    Ok(())
}

#[tokio::test]
async fn streams_past_max_concurrent_streams_are_refused() -> Result<()> {
    let (_pods, _config, tether, _http, _url) =
        sticky_with(["a"], |c| c.proxy("http2: {maxConcurrentStreams: 4}")).await?;
    let answer = h2_client(&[
        "streams",
        "--port",
        &port(&tether),
        "--open",
        "7",
        "--path",
        "/?sleep_ms=1500",
    ])?;
    // SETTINGS_MAX_CONCURRENT_STREAMS is setting 3.
    assert_eq!(answer["settings"]["3"], 4, "{answer}");
    let statuses = answer["statuses"].as_array().context("statuses")?;
    let served = statuses.iter().filter(|s| **s == 200).count();
    let refused = answer["resets"]
        .as_array()
        .context("resets")?
        .iter()
        .filter(|r| **r == 7)
        .count();
    assert_eq!((served, refused), (4, 3), "REFUSED_STREAM past 4: {answer}");
    Ok(())
}

#[tokio::test]
async fn a_header_list_over_max_header_bytes_gets_431() -> Result<()> {
    let ([a], _config, tether, _http, _url) =
        sticky_with(["a"], |c| c.proxy("maxHeaderBytes: 16384")).await?;
    let port = port(&tether);
    let before = a.requests();
    let big = format!("x-big={}", "a".repeat(20_000));
    let answer = h2_client(&["request", "--port", &port, "--header", &big])?;
    assert_eq!(answer["responses"][0]["status"], 431, "{answer}");
    assert_eq!(a.requests(), before, "the target never saw it");
    let fits = format!("x-big={}", "a".repeat(8_000));
    let answer = h2_client(&["request", "--port", &port, "--header", &fits])?;
    assert_eq!(answer["responses"][0]["status"], 200, "{answer}");
    Ok(())
}

/// RFC 9113 §8.5: tether does not tunnel CONNECT over HTTP/2; it says so (501) and the
/// connection goes on.
#[tokio::test]
async fn connect_over_h2_gets_501() -> Result<()> {
    let ([a], _config, tether, _http, _url) =
        sticky_with(["a"], |c| c.route_option("allowConnect: true")).await?;
    let port = port(&tether);
    let answer = h2_client(&["request", "--port", &port, "--method", "CONNECT"])?;
    assert_eq!(answer["responses"][0]["status"], 501, "{answer}");
    assert_eq!(a.requests(), 0, "nothing reached the target");
    let answer = h2_client(&["request", "--port", &port, "--count", "2"])?;
    assert_eq!(answer["responses"][1]["status"], 200, "{answer}");
    Ok(())
}

/// CVE-2023-44487: thousands of streams opened and cancelled at once get GOAWAY
/// (ENHANCE_YOUR_CALM), long before the last; other clients are still served.
#[tokio::test]
async fn rapid_reset_gets_goaway_and_others_are_still_served() -> Result<()> {
    let (_pods, _config, mut tether, http, url) = sticky(["a"]).await?;
    let answer = h2_client(&[
        "rapid-reset",
        "--port",
        &port(&tether),
        "--streams",
        "20000",
    ])?;
    assert_eq!(answer["goaway"], 11, "ENHANCE_YOUR_CALM: {answer}");
    let sent = answer["sent"].as_u64().context("sent")?;
    assert!(sent < 20_000, "cut off before the end: {answer}");
    assert!(tether.is_running());
    assert_eq!(curl_h2c(&url, None)?.status, 200);
    assert_eq!(http.get(&url, None).await?.status, 200);
    Ok(())
}

/// HEADERS without END_HEADERS, then CONTINUATION frames without end: the connection is closed
/// after a bounded amount, and tether's memory does not follow the flood.
#[tokio::test]
async fn a_continuation_flood_is_cut_off_with_bounded_memory() -> Result<()> {
    let (_pods, _config, mut tether, _http, url) = sticky(["a"]).await?;
    let rss_before = rss_kib(tether.pid())?;
    let answer = h2_client(&[
        "continuation",
        "--port",
        &port(&tether),
        "--frames",
        "200000",
        "--size",
        "1024",
    ])?;
    assert_eq!(answer["closed"], true, "{answer}");
    let flooded = answer["bytes"].as_u64().context("bytes")?;
    assert!(flooded < 4 << 20, "closed within 4 MiB: {answer}");
    let grown = rss_kib(tether.pid())?.saturating_sub(rss_before);
    assert!(grown < 32 * 1024, "RSS grew {grown} KiB");
    assert!(tether.is_running());
    assert_eq!(curl_h2c(&url, None)?.status, 200);
    Ok(())
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .context("VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?)
}

#[tokio::test]
async fn an_idle_h2_connection_is_closed_after_client_idle() -> Result<()> {
    let (_pods, _config, tether, _http, _url) =
        sticky_with(["a"], |c| c.proxy("timeouts: {clientIdle: 1s}")).await?;
    let answer = h2_client(&["idle", "--port", &port(&tether), "--seconds", "6"])?;
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(answer["closed"], true, "{answer}");
    assert_eq!(answer["goaway"], 0, "GOAWAY(NO_ERROR) first: {answer}");
    let after = answer["after"].as_f64().context("after")?;
    assert!((0.8..4.0).contains(&after), "closed after {after} s");
    Ok(())
}

/// A client that reads its socket but gives no flow-control credit holds a response (and its
/// target connection) only for `clientIdle`, as one that stops reading does over HTTP/1.1.
#[tokio::test]
async fn a_client_withholding_flow_control_credit_is_cut_off() -> Result<()> {
    let (_pods, _config, tether, _http, url) =
        sticky_with(["a"], |c| c.proxy("timeouts: {clientIdle: 1s}")).await?;
    let answer = h2_client(&[
        "starve",
        "--port",
        &port(&tether),
        "--path",
        "/?size=4000000",
        "--seconds",
        "8",
    ])?;
    assert_eq!(answer["status"], 200, "{answer}");
    let received = answer["received"].as_u64().context("received")?;
    assert!(
        received <= 65_535,
        "no more than the initial window: {answer}"
    );
    assert_eq!(answer["closed"], true, "{answer}");
    let after = answer["after"].as_f64().context("after")?;
    assert!((0.8..4.0).contains(&after), "closed after {after} s");
    assert_eq!(curl_h2c(&url, None)?.status, 200);
    Ok(())
}

/// An HTTP/2 (h2c) backend that answers like a gRPC server: a body, then trailers. Each
/// request's version and `te` are recorded.
async fn grpc_backend(name: &'static str) -> Result<(SocketAddr, Arc<Mutex<Vec<String>>>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let te = request
                        .headers()
                        .get("te")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_string();
                    let cookies = request.headers().get_all("cookie").iter().count();
                    if let Ok(mut log) = log.lock() {
                        log.push(format!(
                            "{:?} te={te} authority={} cookies={cookies}",
                            request.version(),
                            request.uri().authority().map_or("-", |a| a.as_str()),
                        ));
                    }
                    async move {
                        let mut trailers = HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().expect("value"));
                        trailers.insert("grpc-message", "ok".parse().expect("value"));
                        let body = Full::new(Bytes::from_static(b"\0\0\0\0\x05hello"))
                            .with_trailers(async move { Some(Ok::<_, Infallible>(trailers)) });
                        let mut response = Response::new(body);
                        response
                            .headers_mut()
                            .insert("content-type", "application/grpc".parse().expect("value"));
                        response
                            .headers_mut()
                            .insert("x-pod", name.parse().expect("value"));
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((address, seen))
}

// The backends run on the test's runtime while the client blocks a thread of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_targets_get_http2_and_grpc_trailers_pass_through() -> Result<()> {
    let (a, seen_a) = grpc_backend("a").await?;
    let (b, seen_b) = grpc_backend("b").await?;
    let yaml = Config::sticky(&[(a, 100), (b, 100)]).yaml().replace(
        "services:\n  echo:\n",
        "services:\n  echo:\n    protocol: h2c\n",
    );
    let tether = Tether::start(TETHER, &yaml).await?;
    let port = port(&tether);
    let grpc = [
        "--header",
        "te=trailers",
        "--header",
        "content-type=application/grpc",
    ];
    let mut args = vec!["request", "--port", &port, "--path", "/echo.Echo/Say"];
    args.extend(grpc);
    let answer = h2_client(&args)?;
    let first = &answer["responses"][0];
    assert_eq!(first["status"], 200, "{answer}");
    assert_eq!(first["body"], "\0\0\0\0\u{5}hello");
    assert_eq!(
        first["trailers"],
        serde_json::json!([["grpc-status", "0"], ["grpc-message", "ok"]]),
        "{answer}"
    );
    let pod = header(first, "x-pod").context("x-pod")?.to_string();
    let cookie = header(first, "set-cookie")
        .and_then(|c| c.split(';').next())
        .context("a new session gets a cookie")?
        .to_string();
    // Sticky over h2c targets too, with the cookie in a crumb of its own.
    let mut args = vec![
        "request",
        "--port",
        &port,
        "--path",
        "/echo.Echo/Say",
        "--count",
        "4",
        "--cookie",
        "theme=dark",
        "--cookie",
        &cookie,
    ];
    args.extend(grpc);
    let answer = h2_client(&args)?;
    for response in answer["responses"].as_array().context("responses")? {
        assert_eq!(header(response, "x-pod"), Some(pod.as_str()), "{answer}");
        assert_eq!(response["trailers"][0][0], "grpc-status");
    }
    let seen = if pod == "a" { &seen_a } else { &seen_b };
    let seen = seen
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    assert_eq!(seen.len(), 5, "{seen:?}");
    let host = format!("127.0.0.1:{port}");
    assert_eq!(
        seen[0],
        format!("HTTP/2.0 te=trailers authority={host} cookies=0")
    );
    // Toward an HTTP/2 target, crumbs may stay crumbs.
    assert_eq!(
        seen[1],
        format!("HTTP/2.0 te=trailers authority={host} cookies=2")
    );
    // An HTTP/1.1 client reaches the h2c target too.
    let reply = Http::new().get(&tether.url("/"), None).await?;
    assert_eq!(reply.status, 200);
    Ok(())
}

/// SIGTERM: GOAWAY, and the stream in flight still gets its answer.
#[tokio::test]
async fn sigterm_lets_in_flight_h2_streams_finish() -> Result<()> {
    let ([pod], _config, mut tether, _http, _url) = sticky(["a"]).await?;
    let port = port(&tether);
    let slow = std::thread::spawn(move || {
        h2_client(&["request", "--port", &port, "--path", "/?sleep_ms=1500"])
    });
    ensure!(
        crate::fixtures::reached(&pod, 0).await,
        "the slow stream never reached the pod"
    );
    tether.signal(libc::SIGTERM)?;
    let answer = tokio::task::spawn_blocking(move || slow.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the client thread panicked"))??;
    assert_eq!(answer["responses"][0]["status"], 200, "{answer}");
    assert_eq!(answer["goaway"], 0, "GOAWAY(NO_ERROR): {answer}");
    let started = std::time::Instant::now();
    while tether.is_running() {
        ensure!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "tether did not exit"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(())
}
