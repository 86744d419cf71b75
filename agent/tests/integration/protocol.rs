//! HTTP as a proxy speaks it: hop-by-hop headers stop at tether, forwarding headers are added,
//! Upgrade requests are pinned and tunnelled, and a request no route matches gets 404.
use crate::fixtures::{outcomes, session_cookie, sticky, sticky_with};
use anyhow::{Context, Result};
use bytes::Bytes;
use hyper::Method;
use tether_testkit::config::COOKIE;
use tether_testkit::http;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// RFC 9110 §7.6.1: Connection and the fields it names, Keep-Alive, TE, Proxy-* stop here;
/// X-Forwarded-For is appended to, X-Forwarded-Proto/-Host/-Port are set, Via is added.
#[tokio::test]
async fn hop_by_hop_headers_stop_and_forwarding_headers_are_added() -> Result<()> {
    let (_pods, _, tether, http, _) = sticky(["a"]).await?;
    let reply = http
        .get_with(
            &tether.url("/headers/x?y=1"),
            None,
            &[
                ("host", "shop.example.com:8443"),
                ("connection", "keep-alive, x-secret, X-Other-Secret"),
                ("keep-alive", "timeout=5"),
                ("x-secret", "s1"),
                ("x-other-secret", "s2"),
                ("te", "trailers"),
                ("proxy-authorization", "Basic dXNlcjpwYXNz"),
                ("proxy-connection", "keep-alive"),
                ("upgrade", "h2c"),
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "evil.example"),
                ("x-forwarded-port", "1"),
                ("via", "1.0 corporate-proxy"),
                ("x-kept", "yes"),
            ],
        )
        .await?;
    assert_eq!(reply.status, 200);
    let seen = reply.echoed_headers();
    for gone in [
        "x-secret",
        "x-other-secret",
        "keep-alive",
        "te",
        "proxy-authorization",
        "proxy-connection",
        "upgrade",
        "transfer-encoding",
    ] {
        assert!(
            seen.iter().all(|(name, _)| name != gone),
            "{gone} reached the target: {seen:?}"
        );
    }
    // tether's own connection to the target may say keep-alive, never the client's list.
    for value in reply.echoed("connection") {
        assert!(!value.to_ascii_lowercase().contains("secret"), "{value}");
    }
    assert_eq!(reply.echoed("x-kept"), vec!["yes"]);
    assert_eq!(reply.echoed("host"), vec!["shop.example.com:8443"]);
    assert_eq!(
        reply.echoed("x-forwarded-for"),
        vec!["203.0.113.9, 127.0.0.1"]
    );
    assert_eq!(reply.echoed("x-forwarded-proto"), vec!["http"]);
    assert_eq!(
        reply.echoed("x-forwarded-host"),
        vec!["shop.example.com:8443"]
    );
    assert_eq!(
        reply.echoed("x-forwarded-port"),
        vec![tether.proxy().port().to_string()]
    );
    assert_eq!(
        reply.echoed("via"),
        vec!["1.0 corporate-proxy", "1.1 tether"]
    );
    // The response records the hop too.
    let via: Vec<_> = reply.headers.get_all("via").iter().collect();
    assert_eq!(via, ["1.1 tether"]);
    Ok(())
}

/// A client without forwarding headers gets them made up from the connection.
#[tokio::test]
async fn forwarding_headers_start_from_the_client_connection() -> Result<()> {
    let (_pods, _, tether, http, _) = sticky(["a"]).await?;
    let reply = http.get(&tether.url("/headers"), None).await?;
    assert_eq!(reply.echoed("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(reply.echoed("x-forwarded-proto"), vec!["http"]);
    assert_eq!(
        reply.echoed("x-forwarded-host"),
        vec![tether.proxy().to_string()]
    );
    assert_eq!(reply.echoed("via"), vec!["1.1 tether"]);
    // Two X-Forwarded-For lines are one list (RFC 9110 §5.3): both stay, in order.
    let reply = http
        .get_with(
            &tether.url("/headers"),
            None,
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-for", "198.51.100.7"),
            ],
        )
        .await?;
    let joined = reply.echoed("x-forwarded-for").join(", ");
    assert_eq!(joined, "203.0.113.9, 198.51.100.7, 127.0.0.1");
    Ok(())
}

/// A request body reaches the target whole, whatever framing the client used.
#[tokio::test]
async fn bodies_pass_through() -> Result<()> {
    let ([a], _, tether, http, _) = sticky(["a"]).await?;
    let body = Bytes::from(vec![b'z'; 100_000]);
    let reply = http
        .send(Method::PUT, &tether.url("/upload"), None, &[], body.clone())
        .await?;
    assert_eq!(reply.status, 200);
    let chunked = Bytes::from_static(b"5\r\nhello\r\n0\r\n\r\n");
    let reply = http::raw_exchange(
        tether.proxy(),
        &[
            b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                .as_slice(),
            &chunked,
        ]
        .concat(),
        std::time::Duration::from_secs(10),
    )
    .await?;
    assert_eq!(reply.status(), Some(200), "{}", reply.text());
    assert_eq!(
        a.bodies(),
        vec![body, Bytes::from_static(b"hello")],
        "bodies as the target read them"
    );
    Ok(())
}

/// An Upgrade request goes to the cookie's pod, then bytes flow both ways through the tunnel.
#[tokio::test]
async fn upgrades_are_pinned_then_tunnelled() -> Result<()> {
    let (_pods, _, tether, http, url) = sticky(["a", "b", "c"]).await?;
    let cookie = session_cookie(&http, &url, "b", 6).await?;
    for round in 0..3 {
        let mut upgraded = http::upgrade(tether.proxy(), "/ws", "websocket", Some(&cookie)).await?;
        assert_eq!(upgraded.reply.status, 101);
        assert_eq!(upgraded.reply.pod(), Some("b"), "round {round}");
        assert_eq!(upgraded.reply.header("upgrade"), Some("websocket"));
        assert_eq!(upgraded.reply.set_cookie(COOKIE), None);
        for message in [
            &b"hello"[..],
            &b"through the tunnel"[..],
            &[0u8, 255, 1][..],
        ] {
            upgraded.io.write_all(message).await?;
            let mut echoed = vec![0u8; message.len()];
            tokio::time::timeout(
                std::time::Duration::from_secs(5),
                upgraded.io.read_exact(&mut echoed),
            )
            .await
            .context("no echo through the tunnel")??;
            assert_eq!(echoed, message);
        }
    }
    // A new session starting with an upgrade gets its cookie on the 101.
    let upgraded = http::upgrade(tether.proxy(), "/ws", "websocket", None).await?;
    assert!(upgraded.reply.set_cookie(COOKIE).is_some());
    assert_eq!(outcomes(&tether, "upgraded").await?, 4.0);
    Ok(())
}

/// No route for the path (or host): 404, counted.
#[tokio::test]
async fn unknown_routes_get_404() -> Result<()> {
    let ([a], _, tether, http, _) = sticky_with(["a"], |config| {
        config.route("host: shop.example.com, pathPrefix: /echo")
    })
    .await?;
    let shop = [("host", "Shop.Example.com:80")];
    let reply = http.get_with(&tether.url("/echo/x"), None, &shop).await?;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.pod(), Some("a"));
    for (path, host) in [
        ("/echoes", "shop.example.com"),
        ("/", "shop.example.com"),
        ("/echo", "other.example.com"),
    ] {
        let reply = http
            .get_with(&tether.url(path), None, &[("host", host)])
            .await?;
        assert_eq!(reply.status, 404, "{host}{path}");
        assert_eq!(reply.set_cookie(COOKIE), None);
    }
    assert_eq!(a.requests(), 1);
    assert_eq!(outcomes(&tether, "no_route").await?, 3.0);
    Ok(())
}
