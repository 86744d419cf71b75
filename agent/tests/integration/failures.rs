//! Targets that fail: a refused connection re-pins (whatever the method or body); when no target
//! can take the request, 502; a target too slow to answer, 504.
use crate::fixtures::{
    get_in_background, outcomes, reached, session_cookie, sticky, sticky_with, target_metric,
    TETHER,
};
use anyhow::{Context, Result};
use bytes::Bytes;
use std::time::Duration;
use tether_testkit::config::COOKIE;
use tether_testkit::http::CookieJar;

/// The pinned target refuses: the request goes to another target, the session is re-pinned there
/// with a new cookie, and when the target is back the old cookie finds it again.
#[tokio::test]
async fn a_refused_pinned_target_re_pins_the_session() -> Result<()> {
    let ([a, mut b], _, tether, http, url) = sticky(["a", "b"]).await?;
    let old = http.session_on(&url, COOKIE, "b", 4).await?;
    let mut jar = CookieJar::with(COOKIE, &old);

    b.stop().await;
    let reply = http.get(&url, jar.header().as_deref()).await?;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.pod(), Some("a"));
    assert!(jar.update(&reply), "a re-pinned session gets a new cookie");
    assert_ne!(jar.value(), Some(old.as_str()));
    let reply = http.get(&url, jar.header().as_deref()).await?;
    assert_eq!(reply.pod(), Some("a"));
    assert_eq!(reply.set_cookie(COOKIE), None);
    assert_eq!(
        target_metric(
            &tether,
            "tether_repins_total",
            &a,
            &[("reason", "target_failed")]
        )
        .await?,
        1.0
    );
    assert_eq!(
        target_metric(
            &tether,
            "tether_upstream_failures_total",
            &b,
            &[("kind", "connect")]
        )
        .await?,
        1.0
    );

    // b is back on the same port: the old cookie is still valid and still names b.
    b.restart()?;
    let reply = http.get(&url, Some(&format!("{COOKIE}={old}"))).await?;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.pod(), Some("b"));
    assert_eq!(reply.set_cookie(COOKIE), None);
    Ok(())
}

/// A POST with a body to a refused target is re-sent to another target whole: nothing had been
/// sent, so nothing is lost or doubled.
#[tokio::test]
async fn a_post_with_a_body_is_re_pinned_too() -> Result<()> {
    let ([a, mut b], _, tether, http, _) = sticky(["a", "b"]).await?;
    let url = tether.url("/orders");
    let on_b = session_cookie(&http, &url, "b", 4).await?;
    b.stop().await;
    let a_bodies = a.bodies().len();
    let body = Bytes::from(
        (0..20_000)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect::<String>(),
    );
    let reply = http.post(&url, Some(&on_b), body.clone()).await?;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.pod(), Some("a"));
    assert!(reply.set_cookie(COOKIE).is_some());
    let bodies = a.bodies();
    assert_eq!(bodies.len(), a_bodies + 1, "a got the POST exactly once");
    assert_eq!(bodies.last(), Some(&body));
    Ok(())
}

/// A new session whose first pick refuses lands on a target that answers.
#[tokio::test]
async fn new_sessions_skip_a_refusing_target() -> Result<()> {
    let ([a, mut b], _, tether, http, url) = sticky(["a", "b"]).await?;
    b.stop().await;
    for _ in 0..10 {
        let reply = http.get(&url, None).await?;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.pod(), Some("a"));
        let value = reply.cookie_value(COOKIE).context("a cookie")?;
        // The cookie names a, where the session really is.
        let again = http.get(&url, Some(&format!("{COOKIE}={value}"))).await?;
        assert_eq!(again.pod(), Some("a"));
        assert_eq!(again.set_cookie(COOKIE), None);
    }
    // Once b refused, new sessions avoid it for a while instead of each trying it first.
    let refused = target_metric(
        &tether,
        "tether_upstream_failures_total",
        &b,
        &[("kind", "connect")],
    )
    .await?;
    assert_eq!(refused, 1.0);
    // They are new sessions pinned to a, not sessions moved from b.
    assert_eq!(
        target_metric(&tether, "tether_new_pins_total", &a, &[]).await?,
        10.0
    );
    assert_eq!(tether.metric("tether_repins_total", &[]).await?, 0.0);
    Ok(())
}

/// Every target refuses: 502, with or without a cookie; tether keeps running.
#[tokio::test]
async fn every_target_refusing_answers_502() -> Result<()> {
    let ([mut a, mut b], config, mut tether, http, url) = sticky(["a", "b"]).await?;
    let on_a = session_cookie(&http, &url, "a", 4).await?;
    a.stop().await;
    b.stop().await;
    let reply = http.get(&url, None).await?;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.set_cookie(COOKIE), None);
    let reply = http.get(&url, Some(&on_a)).await?;
    assert_eq!(reply.status, 502);
    let reply = http.post(&url, Some(&on_a), Bytes::from("x")).await?;
    assert_eq!(reply.status, 502);
    assert_eq!(outcomes(&tether, "upstream_error").await?, 3.0);
    // Draining targets that refuse: still 502 for a pinned session (it was tried).
    tether
        .reload(&config.targets(&[(a.address(), 0), (b.address(), 0)]).yaml())
        .await?;
    let reply = http.get(&url, Some(&on_a)).await?;
    assert_eq!(reply.status, 502);
    assert!(tether.is_running());
    a.restart()?;
    let reply = http.get(&url, Some(&on_a)).await?;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.pod(), Some("a"));
    Ok(())
}

/// A target that takes longer than proxy.timeouts.response: 504.
#[tokio::test]
async fn a_target_too_slow_to_answer_gives_504() -> Result<()> {
    let (_pods, _, tether, http, _) =
        sticky_with(["a"], |config| config.proxy("timeouts: {response: 1s}")).await?;
    let started = std::time::Instant::now();
    let reply = http.get(&tether.url("/?sleep_ms=4000"), None).await?;
    assert_eq!(reply.status, 504);
    assert!(started.elapsed() < Duration::from_millis(3500));
    let reply = http.get(&tether.url("/?sleep_ms=10"), None).await?;
    assert_eq!(reply.status, 200);
    assert_eq!(outcomes(&tether, "upstream_timeout").await?, 1.0);
    Ok(())
}

/// The pinned target breaks the connection after taking a GET: the GET (idempotent, no body) is
/// sent again to another target, as the client sent it, with the forwarded headers.
#[tokio::test]
async fn a_broken_get_is_retried_on_another_target_with_its_headers() -> Result<()> {
    let ([_a, mut b], _, tether, http, url) = sticky(["a", "b"]).await?;
    let on_b = session_cookie(&http, &url, "b", 4).await?;
    let before = b.requests();
    let slow = get_in_background(
        &http,
        tether.url("/headers?sleep_ms=1500"),
        Some(on_b),
        &[("x-forwarded-for", "203.0.113.9")],
    );
    // Wait (bounded) until b holds the request, then kill it mid-request.
    assert!(reached(&b, before).await, "the request never reached b");
    b.stop().await;
    let reply = slow.await??;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.pod(), Some("a"));
    assert!(reply.set_cookie(COOKIE).is_some());
    assert_eq!(
        reply.echoed("x-forwarded-for"),
        vec!["203.0.113.9, 127.0.0.1"]
    );
    assert_eq!(reply.echoed("via"), vec!["1.1 tether"]);
    assert_eq!(reply.echoed("x-forwarded-proto"), vec!["http"]);
    assert_eq!(
        target_metric(
            &tether,
            "tether_upstream_failures_total",
            &b,
            &[("kind", "broken")]
        )
        .await?,
        1.0
    );
    Ok(())
}

/// After a target refuses once, new sessions avoid it (passive health, like nginx's
/// `fail_timeout`) instead of each trying it first; the remaining targets keep their shares.
#[tokio::test]
async fn new_sessions_avoid_a_target_that_just_refused() -> Result<()> {
    let ([_a, _b, mut c], _, tether, http, url) = sticky(["a", "b", "c"]).await?;
    c.stop().await;
    let mut pods = Vec::new();
    for _ in 0..30 {
        let reply = http.get(&url, None).await?;
        assert_eq!(reply.status, 200);
        pods.push(reply.pod().context("a pod")?.to_string());
    }
    let refusals = target_metric(
        &tether,
        "tether_upstream_failures_total",
        &c,
        &[("kind", "connect")],
    )
    .await?;
    assert_eq!(refusals, 1.0, "the dead target was tried again: {pods:?}");
    let on_a = pods.iter().filter(|p| *p == "a").count();
    assert!(
        (12..=18).contains(&on_a),
        "a and b should share evenly: {pods:?}"
    );
    Ok(())
}

/// SO_REUSEPORT must not let a second tether silently share the first one's port.
#[tokio::test]
async fn a_second_agent_on_the_same_port_is_refused() -> Result<()> {
    let (_pods, config, first, _, _) = sticky(["a"]).await?;
    let dir = tether_testkit::agent::TempDir::new("second")?;
    let path = dir.path().join("tether.yaml");
    let yaml = config
        .yaml()
        .replace("$PROXY", &first.proxy().to_string())
        .replace("$ADMIN", "127.0.0.1:0");
    tether_testkit::agent::write_atomically(&path, &yaml)?;
    let exited = tether_testkit::agent::run_to_exit(
        TETHER,
        &["run".as_ref(), "--config".as_ref(), path.as_os_str()],
        Duration::from_secs(10),
    )?;
    assert!(!exited.status.success());
    assert!(
        exited.stderr.contains("proxy.listen") && exited.stderr.contains("in use"),
        "{}",
        exited.stderr
    );
    Ok(())
}
