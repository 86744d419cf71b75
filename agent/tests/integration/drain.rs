//! Drain: weight 0 keeps existing sessions and takes no new one; a removed target's sessions
//! move; with no target to take a new session, 503.
use crate::fixtures::{
    invalid_cookies, outcomes, session_cookie, session_jar, sticky, target_metric,
};
use anyhow::{Context, Result};
use tether_testkit::config::COOKIE;
use tether_testkit::http::CookieJar;

/// A reload that sets the pinned target's weight to 0: its sessions stay, new ones go elsewhere.
#[tokio::test]
async fn weight_zero_keeps_existing_sessions_and_takes_no_new_ones() -> Result<()> {
    let ([a, b], config, tether, http, url) = sticky(["a", "b"]).await?;
    let on_a = session_jar(&http, &url, COOKIE, "a", 4).await?;
    let on_b = session_jar(&http, &url, COOKIE, "b", 4).await?;
    let drained = "tether_drained_session_requests_total";
    assert_eq!(target_metric(&tether, drained, &b, &[]).await?, 0.0);

    tether
        .reload(
            &config
                .targets(&[(a.address(), 100), (b.address(), 0)])
                .yaml(),
        )
        .await?;
    let b_before = b.requests();
    for _ in 0..5 {
        let reply = http.get(&url, on_b.header().as_deref()).await?;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.pod(), Some("b"), "the drained session stays on b");
        assert_eq!(reply.set_cookie(COOKIE), None);
        let reply = http.get(&url, on_a.header().as_deref()).await?;
        assert_eq!(reply.pod(), Some("a"));
    }
    assert_eq!(b.requests() - b_before, 5);
    assert_eq!(target_metric(&tether, drained, &b, &[]).await?, 5.0);
    assert_eq!(
        target_metric(&tether, drained, &a, &[]).await?,
        0.0,
        "a is not draining"
    );
    for _ in 0..20 {
        let reply = http.get(&url, None).await?;
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.pod(),
            Some("a"),
            "no new session on a draining target"
        );
        assert!(reply.set_cookie(COOKIE).is_some());
    }
    assert_eq!(b.requests() - b_before, 5);

    // Back to weight 100: b takes new sessions again.
    tether.reload(&config.yaml()).await?;
    let mut on_b_again = 0;
    for _ in 0..10 {
        if http.get(&url, None).await?.pod() == Some("b") {
            on_b_again += 1;
        }
    }
    assert_eq!(on_b_again, 5);
    Ok(())
}

/// A cookie naming a target the reload removed picks anew and gets a new cookie.
#[tokio::test]
async fn a_removed_target_s_sessions_are_re_pinned() -> Result<()> {
    let ([a, b, c], config, tether, http, url) = sticky(["a", "b", "c"]).await?;
    let old = http.session_on(&url, COOKIE, "b", 6).await?;

    tether
        .reload(
            &config
                .targets(&[(a.address(), 100), (c.address(), 100)])
                .yaml(),
        )
        .await?;
    let b_before = b.requests();
    let mut jar = CookieJar::with(COOKIE, &old);
    let reply = http.get(&url, jar.header().as_deref()).await?;
    assert_eq!(reply.status, 200);
    let moved_to = reply.pod().context("x-pod")?.to_string();
    assert!(moved_to == "a" || moved_to == "c", "{moved_to}");
    assert!(jar.update(&reply), "a re-pinned session gets a new cookie");
    assert_ne!(jar.value(), Some(old.as_str()));
    let moved_to_pod = if moved_to == "a" { &a } else { &c };
    assert_eq!(
        target_metric(
            &tether,
            "tether_repins_total",
            moved_to_pod,
            &[("reason", "target_removed")]
        )
        .await?,
        1.0
    );
    // The new cookie sticks to the new target; the old one keeps being re-pinned, never to b.
    for _ in 0..5 {
        let reply = http.get(&url, jar.header().as_deref()).await?;
        assert_eq!(reply.pod(), Some(moved_to.as_str()));
        assert_eq!(reply.set_cookie(COOKIE), None);
        let reply = http.get(&url, Some(&format!("{COOKIE}={old}"))).await?;
        assert_ne!(reply.pod(), Some("b"));
        assert!(reply.set_cookie(COOKIE).is_some());
    }
    assert_eq!(b.requests(), b_before);
    assert_eq!(
        invalid_cookies(&tether, None).await?,
        0.0,
        "a cookie for a removed target is valid, just re-pinned"
    );
    Ok(())
}

/// Every target draining: no new session can start (503), existing ones still work.
#[tokio::test]
async fn all_targets_draining_refuses_new_sessions_only() -> Result<()> {
    let ([a, b], config, tether, http, url) = sticky(["a", "b"]).await?;
    let on_a = session_cookie(&http, &url, "a", 4).await?;

    tether
        .reload(&config.targets(&[(a.address(), 0), (b.address(), 0)]).yaml())
        .await?;
    let reply = http.get(&url, None).await?;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.set_cookie(COOKIE), None);
    assert!(reply.text().contains("draining"), "{}", reply.text());
    let reply = http.get(&url, Some("session-id=forged")).await?;
    assert_eq!(reply.status, 503);
    let reply = http.get(&url, Some(&on_a)).await?;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.pod(), Some("a"));
    assert_eq!(outcomes(&tether, "no_target").await?, 2.0);
    Ok(())
}

/// A service with no targets answers 503.
#[tokio::test]
async fn a_service_without_targets_answers_503() -> Result<()> {
    let ([], _, tether, http, url) = sticky([]).await?;
    let reply = http.get(&url, None).await?;
    assert_eq!(reply.status, 503);
    assert!(reply.text().contains("no targets"), "{}", reply.text());
    let reply = http.get(&url, Some("session-id=whatever")).await?;
    assert_eq!(reply.status, 503);
    assert_eq!(outcomes(&tether, "no_target").await?, 2.0);
    Ok(())
}
