//! Hostile clients and clumsy operators: each gets a bounded answer, and tether keeps serving.
//! Every test here failed on tether before the hardening it names.
use crate::fixtures::{
    invalid_cookies, loading, pods, settled_outcomes, sticky, sticky_with, TETHER,
};
use anyhow::{Context, Result};
use std::time::{Duration, Instant};
use tether_testkit::agent::{Options, Tether};
use tether_testkit::config::Config;
use tether_testkit::http::Http;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// tether's own cap on admin connections (admin.rs), with room for the listeners, the log, the
/// runtime's own descriptors and a pooled target connection or two.
const ADMIN_CAP: usize = 64;
const SLACK: usize = 24;

/// Waits until `stream` is closed by the peer (EOF or reset), for at most `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(limit, stream.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn silent_admin_connections_cannot_starve_the_proxy() -> Result<()> {
    // 600 connections at once, and their closing timed: a flood no timed test should meet.
    let _machine = loading().await;
    let [a] = pods(["a"])?;
    // Fewer descriptors than the flood below: before the cap, accepting it took them all.
    let options = Options {
        open_files: Some(512),
        ..Options::default()
    };
    let tether = Tether::start_with(
        TETHER,
        &Config::sticky(&[(a.address(), 100)]).yaml(),
        options,
    )
    .await?;
    assert!(
        tether.logs().contains("open-file limit"),
        "the soft and hard limits are logged at start:\n{}",
        tether.logs()
    );
    let baseline = settled_fds(&tether).await?;
    let mut silent = Vec::with_capacity(600);
    for _ in 0..600 {
        silent.push(TcpStream::connect(tether.admin()).await?);
    }
    // Let tether accept them all: they are handled on the admin's own task.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let http = Http::new();
    let health = http
        .get(&format!("http://{}/healthz", tether.admin()), None)
        .await
        .context("/healthz during the flood")?;
    assert_eq!(health.status, 200);
    let proxied = http
        .get(&tether.url("/"), None)
        .await
        .context("the proxy during the flood")?;
    assert_eq!(proxied.status, 200);
    let held = tether.open_fds()?;
    assert!(
        held <= baseline + ADMIN_CAP + SLACK,
        "tether holds {held} descriptors with 600 silent admin connections (baseline {baseline})"
    );
    // The ones still held get the header-read timeout (5 s).
    let started = Instant::now();
    for (index, stream) in silent.iter_mut().enumerate() {
        let left = Duration::from_secs(8).saturating_sub(started.elapsed());
        assert!(
            closed_within(stream, left).await,
            "silent admin connection {index} still open after {:?}",
            started.elapsed()
        );
    }
    Ok(())
}

/// The descriptors tether holds once the count has stopped moving (connections the harness
/// just closed take a moment to be noticed).
async fn settled_fds(tether: &Tether) -> Result<usize> {
    let mut last = tether.open_fds()?;
    let mut same = 0;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = tether.open_fds()?;
        same = if now == last { same + 1 } else { 0 };
        last = now;
        if same == 3 {
            break;
        }
    }
    Ok(last)
}

/// Sum of every target's failure counters (refused, broken, timed out).
async fn target_failures(tether: &Tether) -> Result<f64> {
    tether.metric("tether_upstream_failures_total", &[]).await
}

/// Writes `head`, then `body` in `pieces` pieces `pause` apart, then reads the whole reply.
async fn slow_exchange(
    address: std::net::SocketAddr,
    head: &[u8],
    body: &[u8],
    pieces: usize,
    pause: Duration,
) -> Result<tether_testkit::http::RawReply> {
    use tokio::io::AsyncWriteExt;
    let started = Instant::now();
    let mut stream = TcpStream::connect(address).await?;
    stream.write_all(head).await?;
    for piece in body.chunks(body.len().div_ceil(pieces.max(1)).max(1)) {
        tokio::time::sleep(pause).await;
        stream.write_all(piece).await?;
    }
    let mut received = Vec::new();
    let limit = Duration::from_secs(20);
    let closed = loop {
        let mut buffer = [0u8; 8192];
        match tokio::time::timeout(limit, stream.read(&mut buffer)).await {
            Err(_) => break false,
            Ok(Ok(0) | Err(_)) => break true,
            Ok(Ok(n)) => {
                received.extend_from_slice(&buffer[..n]);
                if received.windows(4).any(|w| w == b"\r\n\r\n") && received.ends_with(b".") {
                    break false;
                }
            }
        }
    };
    Ok(tether_testkit::http::RawReply {
        bytes: received,
        closed,
        elapsed: started.elapsed(),
    })
}

/// A 2 MiB upload that takes ~2 s against a 1 s response timeout: the timeout counts from the
/// end of the body, so the target answers in time and is not marked failed.
#[tokio::test]
async fn a_slow_upload_is_timed_from_its_end() -> Result<()> {
    let (_pods, _, tether, _, _) =
        sticky_with(["a"], |config| config.proxy("timeouts: {response: 1s}")).await?;
    let body = vec![b'u'; 2 << 20];
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let reply = slow_exchange(
        tether.proxy(),
        head.as_bytes(),
        &body,
        20,
        Duration::from_millis(100),
    )
    .await?;
    assert_eq!(reply.status(), Some(200), "{}", reply.text());
    assert!(reply.elapsed > Duration::from_millis(1800), "{reply:?}");
    assert_eq!(target_failures(&tether).await?, 0.0);
    Ok(())
}

/// A client that sends part of its body and stalls gets 408 after proxy.timeouts.clientIdle;
/// the target is not blamed: no failure counted, and new sessions still go to it.
#[tokio::test]
async fn a_stalled_upload_gets_408_and_the_target_stays_healthy() -> Result<()> {
    let (_pods, _, tether, _, _) = sticky_with(["a"], |config| {
        config.proxy("timeouts: {response: 1s, clientIdle: 1s}")
    })
    .await?;
    let request = b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\nonly ten b";
    let reply =
        tether_testkit::http::raw_exchange(tether.proxy(), request, Duration::from_secs(10))
            .await?;
    assert_eq!(reply.status(), Some(408), "{}", reply.text());
    assert!(reply.elapsed < Duration::from_secs(5), "{reply:?}");
    assert_eq!(target_failures(&tether).await?, 0.0);
    assert_eq!(
        settled_outcomes(&tether, "client_body_timeout", 1.0).await?,
        1.0
    );
    let next = Http::new().get(&tether.url("/"), None).await?;
    assert_eq!(next.status, 200);
    assert_eq!(next.pod(), Some("a"));
    Ok(())
}

/// Broken chunked framing is the client's fault: 400, counted as a bad request, and the
/// target's health untouched.
#[tokio::test]
async fn broken_chunk_framing_gets_400_and_spares_the_target() -> Result<()> {
    let (_pods, _, tether, _, _) = sticky(["a"]).await?;
    let head = "POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    let cases: [&str; 5] = [
        // A chunk size over 64 bits.
        "5\r\nhello\r\n1FFFFFFFFFFFFFFFFF\r\nx\r\n0\r\n\r\n",
        // 2^64-1: fits in 64 bits, and is refused at once rather than awaited.
        "5\r\nhello\r\nFFFFFFFFFFFFFFFF\r\nx",
        // Chunk data not followed by CRLF.
        "5\r\nhelloXX\r\n0\r\n\r\n",
        // A bare LF ending a chunk's data.
        "5\r\nhello\n0\r\n\r\n",
        // Not a hex digit.
        "5\r\nhello\r\nzz\r\n\r\n",
    ];
    for (index, chunks) in cases.iter().enumerate() {
        let request = format!("{head}{chunks}");
        let reply = tether_testkit::http::raw_exchange(
            tether.proxy(),
            request.as_bytes(),
            Duration::from_secs(10),
        )
        .await?;
        assert_eq!(reply.status(), Some(400), "case {index}: {}", reply.text());
        assert!(
            reply.elapsed < Duration::from_secs(2),
            "case {index}: answered after {:?}",
            reply.elapsed
        );
    }
    assert_eq!(target_failures(&tether).await?, 0.0);
    let next = Http::new().get(&tether.url("/"), None).await?;
    assert_eq!(next.status, 200);
    Ok(())
}

/// A client that asks for a large response and never reads it is cut off after
/// proxy.timeouts.clientIdle, and the connection to the target with it.
#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off() -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let (_pods, _, tether, _, _) =
        sticky_with(["a"], |config| config.proxy("timeouts: {clientIdle: 1s}")).await?;
    let baseline = settled_fds(&tether).await?;
    let mut stream = TcpStream::connect(tether.proxy()).await?;
    stream
        .write_all(b"GET /big?size=33554432 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await?;
    // Both the client's and the target's connections are open while the response is queued.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = tether.open_fds()?;
    assert!(
        during >= baseline + 2,
        "{during} descriptors during, baseline {baseline}:\n{}",
        tether.logs()
    );
    let started = Instant::now();
    let mut released = false;
    while started.elapsed() < Duration::from_secs(6) {
        if tether.open_fds()? <= baseline {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        released,
        "tether still holds {} descriptors (baseline {baseline}) after {:?}",
        tether.open_fds()?,
        started.elapsed()
    );
    assert_eq!(settled_outcomes(&tether, "stalled", 1.0).await?, 1.0);
    Ok(())
}

/// The `name: value` lines the echo backend saw (its `/headers` answer), for `name`.
fn echoed(reply: &tether_testkit::http::RawReply, name: &str) -> Vec<String> {
    let text = reply.text();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    body.lines()
        .filter_map(|line| line.split_once(": "))
        .filter(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.to_string())
        .collect()
}

/// RFC 9112 §3.2: an absolute-form target's authority is the host; a Host that disagrees is
/// replaced, and routing, the forwarded Host and X-Forwarded-Host all say the same. Two Host
/// lines are refused.
#[tokio::test]
async fn the_host_is_one_thing() -> Result<()> {
    let ([a], _, tether, _, _) =
        sticky_with(["a"], |config| config.route("host: shop.example.com")).await?;
    let limit = Duration::from_secs(10);
    let absolute = b"GET http://shop.example.com/headers HTTP/1.1\r\nHost: admin.internal\r\nConnection: close\r\n\r\n";
    let reply = tether_testkit::http::raw_exchange(tether.proxy(), absolute, limit).await?;
    assert_eq!(reply.status(), Some(200), "{}", reply.text());
    assert_eq!(
        echoed(&reply, "host"),
        ["shop.example.com"],
        "{}",
        reply.text()
    );
    assert_eq!(echoed(&reply, "x-forwarded-host"), ["shop.example.com"]);

    let cases: [&[u8]; 4] = [
        b"GET /headers HTTP/1.1\r\nHost: shop.example.com\r\nHost: admin.internal\r\n\r\n",
        b"GET /headers HTTP/1.1\r\nHost: shop.example.com\r\nHost: shop.example.com\r\n\r\n",
        b"GET /headers HTTP/1.1\r\nHost: user@shop.example.com\r\n\r\n",
        b"GET /headers HTTP/1.1\r\nConnection: close\r\n\r\n",
    ];
    for (index, request) in cases.iter().enumerate() {
        let reply = tether_testkit::http::raw_exchange(tether.proxy(), request, limit).await?;
        assert_eq!(reply.status(), Some(400), "case {index}: {}", reply.text());
        assert!(reply.closed, "case {index}: the connection stays open");
    }
    assert_eq!(a.requests(), 1, "a refused request reached the target");
    Ok(())
}

/// CONNECT gets 405 unless its route says `allowConnect: true`; then it is a tunnel.
#[tokio::test]
async fn connect_is_refused_unless_the_route_allows_it() -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let ([a], config, tether, _, _) = sticky(["a"]).await?;
    let connect = b"CONNECT shop.example.com:443 HTTP/1.1\r\nHost: shop.example.com:443\r\n\r\n";
    let reply =
        tether_testkit::http::raw_exchange(tether.proxy(), connect, Duration::from_secs(5)).await?;
    assert_eq!(reply.status(), Some(405), "{}", reply.text());
    assert!(
        reply.text().to_ascii_lowercase().contains("allow: get"),
        "{}",
        reply.text()
    );
    assert_eq!(a.requests(), 0);

    tether
        .reload(&config.route_option("allowConnect: true").yaml())
        .await?;
    let mut stream = TcpStream::connect(tether.proxy()).await?;
    stream.write_all(connect).await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut byte)).await??;
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    stream.write_all(b"through the tunnel").await?;
    let mut echoed = [0u8; 18];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echoed)).await??;
    assert_eq!(&echoed, b"through the tunnel");
    Ok(())
}

/// Hundreds of forged session cookies in one request: only the first few are verified (the
/// rest counted as unchecked), and the warning is logged at most once a second.
#[tokio::test]
async fn a_forged_cookie_flood_is_cheap_and_quiet() -> Result<()> {
    use tether_testkit::config::COOKIE;
    let (_pods, _, tether, http, url) = sticky(["a"]).await?;
    let genuine = http
        .get(&url, None)
        .await?
        .cookie_value(COOKIE)
        .context("a session cookie")?;
    // One character changed in the middle: well-formed, but the MAC no longer matches.
    let mut forged = genuine.into_bytes();
    let middle = forged.len() / 2;
    forged[middle] = if forged[middle] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged)?;
    let header = vec![format!("{COOKIE}={forged}"); 280].join("; ");
    let started = Instant::now();
    let requests = 50;
    for _ in 0..requests {
        let reply = http.get(&url, Some(&header)).await?;
        assert_eq!(reply.status, 200);
    }
    let seconds = started.elapsed().as_secs() as usize;
    assert_eq!(
        invalid_cookies(&tether, Some("forged")).await?,
        requests as f64
    );
    assert_eq!(
        invalid_cookies(&tether, Some("unchecked")).await?,
        (requests * 277) as f64
    );
    let warnings = tether
        .logs()
        .lines()
        .filter(|line| line.contains("forged session cookie ignored"))
        .count();
    assert!(
        (1..=seconds + 2).contains(&warnings),
        "{warnings} warnings for {requests} requests in {seconds} s"
    );
    Ok(())
}

/// A session key file others can read is warned about at start; one that is a symlink out of
/// its directory stops start-up.
#[tokio::test]
async fn session_key_files_are_checked() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let [a] = pods(["a"])?;
    let dir = tether_testkit::agent::TempDir::new("key")?;
    let key = dir.path().join("session.key");
    std::fs::write(&key, "a perfectly long session key, shared too widely")?;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644))?;
    let options = Options {
        session_key: Some(key.clone()),
        ..Options::default()
    };
    let yaml = Config::sticky(&[(a.address(), 100)]).yaml();
    let tether = Tether::start_with(TETHER, &yaml, options).await?;
    let logs = tether.logs();
    assert!(
        logs.contains("session key file is readable by group or others") && logs.contains("0644"),
        "{logs}"
    );
    drop(tether);

    let elsewhere = tether_testkit::agent::TempDir::new("elsewhere")?;
    let target = elsewhere.path().join("not-a-key");
    std::fs::write(&target, "some file tether should never sign cookies with")?;
    let link = dir.path().join("linked.key");
    std::os::unix::fs::symlink(&target, &link)?;
    let config = dir.path().join("tether.yaml");
    std::fs::write(
        &config,
        "proxy:\n  listen: 127.0.0.1:0\nservices:\n  echo: {targets: []}\n",
    )?;
    let exited = tether_testkit::agent::run_to_exit(
        TETHER,
        &[
            "run".as_ref(),
            "--config".as_ref(),
            config.as_os_str(),
            "--session-key".as_ref(),
            link.as_os_str(),
        ],
        Duration::from_secs(20),
    )?;
    assert_eq!(exited.status.code(), Some(1), "{exited:?}");
    assert!(
        exited.stderr.contains("outside its directory"),
        "{exited:?}"
    );
    Ok(())
}

/// Past proxy.maxConnections, a new connection gets a 503 and is closed, and a slot freed by a
/// closed connection is taken again.
#[tokio::test]
async fn connections_past_the_cap_are_shed_cleanly() -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let (_pods, _, tether, _, _) =
        sticky_with(["a"], |config| config.proxy("maxConnections: 5")).await?;
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut stream = TcpStream::connect(tether.proxy()).await?;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await?;
        let mut buffer = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await??;
        assert!(buffer[..n].starts_with(b"HTTP/1.1 200"));
        held.push(stream);
    }
    let request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let reply =
        tether_testkit::http::raw_exchange(tether.proxy(), request, Duration::from_secs(5)).await?;
    assert_eq!(reply.status(), Some(503), "{}", reply.text());
    assert!(reply.closed);
    assert_eq!(
        tether.metric("tether_shed_connections_total", &[]).await?,
        1.0
    );
    drop(held.pop());
    let started = Instant::now();
    loop {
        let reply = tether_testkit::http::raw_exchange(
            tether.proxy(),
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        )
        .await?;
        if reply.status() == Some(200) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the freed slot was never taken: {}",
            reply.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
