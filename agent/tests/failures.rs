//! Targets that fail: a refused connection re-pins (whatever the method or body); when no target
//! can take the request, 502; a target too slow to answer, 504.
use anyhow::{Context, Result};
use bytes::Bytes;
use std::time::Duration;
use tether_tests::agent::Tether;
use tether_tests::config::{Config, COOKIE};
use tether_tests::echo::EchoServer;
use tether_tests::http::{CookieJar, Http};

const TETHER: &str = env!("CARGO_BIN_EXE_tether");

fn target_labels(pod: &EchoServer) -> String {
    pod.address().to_string()
}

/// The pinned target refuses: the request goes to another target, the session is re-pinned there
/// with a new cookie, and when the target is back the old cookie finds it again.
#[tokio::test]
async fn a_refused_pinned_target_re_pins_the_session() -> Result<()> {
    let a = EchoServer::start("a")?;
    let mut b = EchoServer::start("b")?;
    let config = Config::sticky(&[(a.address(), 100), (b.address(), 100)]);
    let tether = Tether::start(TETHER, &config.yaml()).await?;
    let http = Http::new();
    let url = tether.url("/");
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
    let b_target = target_labels(&b);
    let a_target = target_labels(&a);
    assert_eq!(
        tether
            .metric(
                "tether_repins_total",
                &[("target", &a_target), ("reason", "target_failed")]
            )
            .await?,
        1.0
    );
    assert_eq!(
        tether
            .metric(
                "tether_upstream_failures_total",
                &[("target", &b_target), ("kind", "connect")]
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
    let a = EchoServer::start("a")?;
    let mut b = EchoServer::start("b")?;
    let config = Config::sticky(&[(a.address(), 100), (b.address(), 100)]);
    let tether = Tether::start(TETHER, &config.yaml()).await?;
    let http = Http::new();
    let url = tether.url("/orders");
    let on_b = format!("{COOKIE}={}", http.session_on(&url, COOKIE, "b", 4).await?);
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
    let a = EchoServer::start("a")?;
    let mut b = EchoServer::start("b")?;
    let config = Config::sticky(&[(a.address(), 100), (b.address(), 100)]);
    let tether = Tether::start(TETHER, &config.yaml()).await?;
    b.stop().await;
    let http = Http::new();
    let url = tether.url("/");
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
    let refused = tether
        .metric(
            "tether_upstream_failures_total",
            &[("target", &target_labels(&b)), ("kind", "connect")],
        )
        .await?;
    assert_eq!(refused, 1.0);
    // They are new sessions pinned to a, not sessions moved from b.
    let a_target = target_labels(&a);
    assert_eq!(
        tether
            .metric("tether_new_pins_total", &[("target", &a_target)])
            .await?,
        10.0
    );
    assert_eq!(tether.metric("tether_repins_total", &[]).await?, 0.0);
    Ok(())
}

/// Every target refuses: 502, with or without a cookie; tether keeps running.
#[tokio::test]
async fn every_target_refusing_answers_502() -> Result<()> {
    let mut a = EchoServer::start("a")?;
    let mut b = EchoServer::start("b")?;
    let config = Config::sticky(&[(a.address(), 100), (b.address(), 100)]);
    let mut tether = Tether::start(TETHER, &config.yaml()).await?;
    let http = Http::new();
    let url = tether.url("/");
    let on_a = format!("{COOKIE}={}", http.session_on(&url, COOKIE, "a", 4).await?);
    a.stop().await;
    b.stop().await;
    let reply = http.get(&url, None).await?;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.set_cookie(COOKIE), None);
    let reply = http.get(&url, Some(&on_a)).await?;
    assert_eq!(reply.status, 502);
    let reply = http.post(&url, Some(&on_a), Bytes::from("x")).await?;
    assert_eq!(reply.status, 502);
    assert_eq!(
        tether
            .metric(
                "tether_request_outcomes_total",
                &[("outcome", "upstream_error")]
            )
            .await?,
        3.0
    );
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
    let a = EchoServer::start("a")?;
    let config = Config::sticky(&[(a.address(), 100)]).proxy("timeouts: {response: 1s}");
    let tether = Tether::start(TETHER, &config.yaml()).await?;
    let http = Http::new();
    let started = std::time::Instant::now();
    let reply = http.get(&tether.url("/?sleep_ms=4000"), None).await?;
    assert_eq!(reply.status, 504);
    assert!(started.elapsed() < Duration::from_millis(3500));
    let reply = http.get(&tether.url("/?sleep_ms=10"), None).await?;
    assert_eq!(reply.status, 200);
    assert_eq!(
        tether
            .metric(
                "tether_request_outcomes_total",
                &[("outcome", "upstream_timeout")]
            )
            .await?,
        1.0
    );
    Ok(())
}

/// The pinned target breaks the connection after taking a GET: the GET (idempotent, no body) is
/// sent again to another target, as the client sent it, with the forwarded headers.
#[tokio::test]
async fn a_broken_get_is_retried_on_another_target_with_its_headers() -> Result<()> {
    let a = EchoServer::start("a")?;
    let mut b = EchoServer::start("b")?;
    let config = Config::sticky(&[(a.address(), 100), (b.address(), 100)]);
    let tether = Tether::start(TETHER, &config.yaml()).await?;
    let http = Http::new();
    let on_b = format!(
        "{COOKIE}={}",
        http.session_on(&tether.url("/"), COOKIE, "b", 4).await?
    );
    let url = tether.url("/headers?sleep_ms=1500");
    let slow = {
        let http = http.clone();
        let on_b = on_b.clone();
        tokio::spawn(async move {
            http.get_with(&url, Some(&on_b), &[("x-forwarded-for", "203.0.113.9")])
                .await
        })
    };
    // Wait (bounded) until b holds the request, then kill it mid-request.
    let before = b.requests();
    for _ in 0..200 {
        if b.requests() > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(b.requests() > before, "the request never reached b");
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
        tether
            .metric(
                "tether_upstream_failures_total",
                &[("target", &target_labels(&b)), ("kind", "broken")]
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
    let a = EchoServer::start("a")?;
    let b = EchoServer::start("b")?;
    let mut c = EchoServer::start("c")?;
    let config = Config::sticky(&[(a.address(), 100), (b.address(), 100), (c.address(), 100)]);
    let tether = Tether::start(TETHER, &config.yaml()).await?;
    c.stop().await;
    let http = Http::new();
    let url = tether.url("/");
    let mut pods = Vec::new();
    for _ in 0..30 {
        let reply = http.get(&url, None).await?;
        assert_eq!(reply.status, 200);
        pods.push(reply.pod().context("a pod")?.to_string());
    }
    let c_target = c.address().to_string();
    let refusals = tether
        .metric(
            "tether_upstream_failures_total",
            &[("target", &c_target), ("kind", "connect")],
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
    let a = EchoServer::start("a")?;
    let config = Config::sticky(&[(a.address(), 100)]);
    let first = Tether::start(TETHER, &config.yaml()).await?;
    let dir = tether_tests::agent::TempDir::new("second")?;
    let path = dir.path().join("tether.yaml");
    let yaml = config
        .yaml()
        .replace("$PROXY", &first.proxy().to_string())
        .replace("$ADMIN", "127.0.0.1:0");
    tether_tests::agent::write_atomically(&path, &yaml)?;
    let exited = tether_tests::agent::run_to_exit(
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
