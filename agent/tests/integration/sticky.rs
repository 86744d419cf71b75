//! New sessions spread by weight; a session cookie keeps its session on its target.
use crate::fixtures::{invalid_cookies, stage, sticky, target_metric};
use anyhow::{ensure, Context, Result};
use std::collections::BTreeMap;
use tether_testkit::config::{Config, COOKIE};
use tether_testkit::http::CookieJar;

/// Weights 100/200 give exactly 1:2 over whole cycles of the smooth weighted round-robin, even
/// with requests arriving concurrently on both proxy workers (the schedule is shared).
#[tokio::test]
async fn new_sessions_follow_the_weights_exactly() -> Result<()> {
    let ([a, b], _, tether, http, url) = stage([("a", 100), ("b", 200)], Config::sticky).await?;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut cookies = std::collections::HashSet::new();
    // 300 new sessions, 10 at a time, each on its own connection.
    for _ in 0..30 {
        let batch: Vec<_> = (0..10)
            .map(|_| {
                let http = http.clone();
                let url = url.clone();
                tokio::spawn(async move { http.get(&url, None).await })
            })
            .collect();
        for request in batch {
            let reply = request.await??;
            ensure!(reply.status == 200, "status {}", reply.status);
            let pod = reply.pod().context("no x-pod")?.to_string();
            let set_cookie = reply.set_cookie(COOKIE).context("no Set-Cookie")?;
            ensure!(
                set_cookie.ends_with("; Path=/; HttpOnly"),
                "default cookie attributes: {set_cookie}"
            );
            cookies.insert(reply.cookie_value(COOKIE).context("cookie value")?);
            *counts.entry(pod).or_default() += 1;
        }
    }
    assert_eq!(counts.get("a"), Some(&100), "{counts:?}");
    assert_eq!(counts.get("b"), Some(&200), "{counts:?}");
    assert_eq!((a.requests(), b.requests()), (100, 200));
    // Each session has a cookie of its own (they carry the time, so two may coincide only
    // within one second on one target; the 300 are never all alike).
    assert!(cookies.len() >= 2, "{} distinct cookies", cookies.len());
    let new_pins = "tether_new_pins_total";
    assert_eq!(target_metric(&tether, new_pins, &a, &[]).await?, 100.0);
    assert_eq!(target_metric(&tether, new_pins, &b, &[]).await?, 200.0);
    Ok(())
}

/// A valid cookie brings every request of its session back to its target, without a new cookie.
#[tokio::test]
async fn a_cookie_keeps_the_session_on_its_target() -> Result<()> {
    let (pods, _, tether, http, _) = sticky(["a", "b", "c"]).await?;
    let url = tether.url("/some/page");
    for pod in ["a", "b", "c"] {
        let value = http.session_on(&url, COOKIE, pod, 6).await?;
        let jar = CookieJar::with(COOKIE, &value);
        for _ in 0..10 {
            let reply = http.get(&url, jar.header().as_deref()).await?;
            assert_eq!(reply.status, 200);
            assert_eq!(reply.pod(), Some(pod));
            assert_eq!(
                reply.set_cookie(COOKIE),
                None,
                "a kept session gets no new cookie"
            );
        }
    }
    for pod in &pods {
        // One new session (or a few) plus the ten pinned requests, each counted once.
        let requests = target_metric(&tether, "tether_requests_total", pod, &[]).await?;
        assert_eq!(requests, pod.requests() as f64);
        assert!(pod.requests() >= 11, "{}: {}", pod.name(), pod.requests());
    }
    assert_eq!(invalid_cookies(&tether, None).await?, 0.0);
    Ok(())
}

/// A target configured with weight 0 from the start gets no new session.
#[tokio::test]
async fn new_sessions_never_go_to_weight_zero() -> Result<()> {
    let ([_a, b, _c], _, tether, http, _) =
        stage([("a", 100), ("b", 0), ("c", 300)], Config::sticky).await?;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..80 {
        let reply = http.get(&tether.url("/"), None).await?;
        assert_eq!(reply.status, 200);
        assert!(reply.set_cookie(COOKIE).is_some());
        *counts
            .entry(reply.pod().context("x-pod")?.to_string())
            .or_default() += 1;
    }
    assert_eq!(counts.get("b"), None, "{counts:?}");
    assert_eq!(counts.get("a"), Some(&20), "{counts:?}");
    assert_eq!(counts.get("c"), Some(&60), "{counts:?}");
    assert_eq!(b.requests(), 0);
    Ok(())
}

/// A browser may send several cookies of the same name (different paths); a valid one wins over
/// an invalid one.
#[tokio::test]
async fn the_valid_cookie_among_several_wins() -> Result<()> {
    let (_pods, _, _tether, http, url) = sticky(["a", "b"]).await?;
    let value = http.session_on(&url, COOKIE, "b", 4).await?;
    let header = format!("other=1; {COOKIE}=not-a-session; {COOKIE}={value}");
    for _ in 0..6 {
        let reply = http.get(&url, Some(&header)).await?;
        assert_eq!(reply.pod(), Some("b"));
        assert_eq!(reply.set_cookie(COOKIE), None);
    }
    Ok(())
}

/// A round-robin service spreads requests by weight and has nothing to do with cookies.
#[tokio::test]
async fn a_round_robin_service_sets_and_reads_no_cookie() -> Result<()> {
    let (_pods, _, tether, http, _) = stage([("a", 100), ("b", 300)], Config::round_robin).await?;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..40 {
        let reply = http
            .get(&tether.url("/"), Some("session-id=whatever"))
            .await?;
        assert_eq!(reply.status, 200);
        assert!(reply.set_cookies().is_empty());
        *counts
            .entry(reply.pod().context("x-pod")?.to_string())
            .or_default() += 1;
    }
    assert_eq!(counts.get("a"), Some(&10), "{counts:?}");
    assert_eq!(counts.get("b"), Some(&30), "{counts:?}");
    assert_eq!(invalid_cookies(&tether, None).await?, 0.0);
    Ok(())
}
