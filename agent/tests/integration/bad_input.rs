//! Input no good client sends: malformed requests get 400, oversized heads 431, clients too slow
//! to send their head are cut off; each is counted, and tether keeps serving.
use crate::fixtures::{pods, settled_outcomes, sticky, sticky_with, TETHER};
use anyhow::Result;
use std::time::Duration;
use tether_testkit::agent::Tether;
use tether_testkit::config::Config;
use tether_testkit::http::{raw_exchange, Http};

const LIMIT: Duration = Duration::from_secs(10);

/// Still running, still serving, and no panic in its logs.
async fn still_serving(tether: &mut Tether) {
    assert!(tether.is_running(), "tether exited:\n{}", tether.logs());
    let reply = Http::new()
        .get(&tether.url("/"), None)
        .await
        .expect("a request after the bad input");
    assert_eq!(reply.status, 200);
    assert!(!tether.logs().contains("panicked"), "{}", tether.logs());
}

#[tokio::test]
async fn malformed_requests_get_400() -> Result<()> {
    let ([a], _, mut tether, _, _) = sticky(["a"]).await?;
    let cases: [&[u8]; 6] = [
        b"NOT AN HTTP REQUEST\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost a\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: a\r\n\r\n",
        b"GET /\x01path HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n",
        b"G\x00T / HTTP/1.1\r\n\r\n",
    ];
    for (index, request) in cases.iter().enumerate() {
        let reply = raw_exchange(tether.proxy(), request, LIMIT).await?;
        assert_eq!(
            reply.status(),
            Some(400),
            "case {index}: {:?}",
            reply.text()
        );
        assert!(reply.closed, "case {index}: the connection stays open");
    }
    let count = cases.len() as f64;
    assert_eq!(
        settled_outcomes(&tether, "bad_request", count).await?,
        count
    );
    assert_eq!(a.requests(), 0, "nothing malformed reached the target");
    still_serving(&mut tether).await;
    Ok(())
}

/// A request whose head (request line and headers, up to the blank line) is exactly `size`
/// bytes, asking the proxy to close the connection after answering.
fn head_of(size: usize) -> Vec<u8> {
    let frame = "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-Big: \r\n\r\n";
    let request = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
        "v".repeat(size - frame.len())
    );
    assert_eq!(request.len(), size);
    request.into_bytes()
}

/// The head limit is exact: `limit` bytes pass, one more gets 431.
async fn limit_is_exact(tether: &Tether, limit: usize) -> Result<()> {
    let reply = raw_exchange(tether.proxy(), &head_of(limit), LIMIT).await?;
    assert_eq!(reply.status(), Some(200), "a head of {limit} bytes");
    for over in [limit + 1, limit + 1000, 4 * limit] {
        let reply = raw_exchange(tether.proxy(), &head_of(over), LIMIT).await?;
        assert_eq!(reply.status(), Some(431), "a head of {over} bytes");
        assert!(reply.closed);
    }
    Ok(())
}

#[tokio::test]
async fn oversized_heads_get_431() -> Result<()> {
    let ([a], _, mut tether, _, _) = sticky(["a"]).await?;
    // The default limit is 16 KiB.
    limit_is_exact(&tether, 16 * 1024).await?;
    // Many headers, or a long request line, count as much as one long header.
    let many: String = (0..120)
        .map(|i| format!("x-header-{i}: {}\r\n", "w".repeat(140)))
        .collect();
    let long_path = format!("/{}", "p".repeat(20 * 1024));
    let requests = [
        format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n"),
        format!("GET {long_path} HTTP/1.1\r\nHost: a\r\n\r\n"),
    ];
    for (index, request) in requests.iter().enumerate() {
        let reply = raw_exchange(tether.proxy(), request.as_bytes(), LIMIT).await?;
        assert_eq!(
            reply.status(),
            Some(431),
            "case {index}: {:?}",
            reply.text()
        );
    }
    // Through a real client too.
    let http = Http::new();
    let reply = http
        .get_with(
            &tether.url("/"),
            None,
            &[("x-huge", &"v".repeat(17 * 1024))],
        )
        .await?;
    assert_eq!(reply.status, 431);
    assert_eq!(
        settled_outcomes(&tether, "header_too_large", 6.0).await?,
        6.0
    );
    assert_eq!(a.requests(), 1, "only the head at the limit was forwarded");
    still_serving(&mut tether).await;
    Ok(())
}

/// proxy.maxHeaderBytes moves the limit.
#[tokio::test]
async fn max_header_bytes_is_configurable() -> Result<()> {
    let [a] = pods(["a"])?;
    for limit in [65536, 8192] {
        let config =
            Config::sticky(&[(a.address(), 100)]).proxy(&format!("maxHeaderBytes: {limit}"));
        let tether = Tether::start(TETHER, &config.yaml()).await?;
        limit_is_exact(&tether, limit).await?;
    }
    Ok(())
}

/// A client that sends part of its head and stalls is cut off after proxy.timeouts.headerRead;
/// the other clients are served meanwhile.
#[tokio::test]
async fn slow_clients_are_cut_off() -> Result<()> {
    let ([a], _, mut tether, _, _) =
        sticky_with(["a"], |config| config.proxy("timeouts: {headerRead: 1s}")).await?;
    let partial = b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ";
    let slow = {
        let proxy = tether.proxy();
        tokio::spawn(async move { raw_exchange(proxy, partial, LIMIT).await })
    };
    let silent = {
        let proxy = tether.proxy();
        tokio::spawn(async move { raw_exchange(proxy, b"", LIMIT).await })
    };
    // Meanwhile, others are served.
    still_serving(&mut tether).await;
    for reply in [slow.await??, silent.await??] {
        assert!(
            reply.closed,
            "the stalled connection stayed open: {reply:?}"
        );
        assert!(
            reply.elapsed >= Duration::from_millis(900) && reply.elapsed < Duration::from_secs(5),
            "closed after {:?}",
            reply.elapsed
        );
        // Never forwarded: the target saw only the request of still_serving.
        assert!(reply.status().is_none_or(|s| s >= 400), "{reply:?}");
    }
    assert_eq!(a.requests(), 1);
    assert_eq!(settled_outcomes(&tether, "client_timeout", 2.0).await?, 2.0);
    still_serving(&mut tether).await;
    Ok(())
}
