//! Reloads: a changed file applies without a restart, SIGHUP forces a reload, requests in flight
//! finish on the configuration they started with, and an invalid file leaves the running
//! configuration in place with a log line that says where the mistake is.
use crate::fixtures::{
    get_in_background, new_session_pods, pods, reached, session_cookie, sticky, timing,
};
use anyhow::{Context, Result};
use std::time::Duration;
use tether_testkit::config::COOKIE;

/// Editing the file changes targets, routes and cookie options in the same process.
#[tokio::test]
async fn a_changed_file_applies_without_a_restart() -> Result<()> {
    let [b] = pods(["b"])?;
    let ([a], config, tether, http, url) = sticky(["a"]).await?;
    let pid = tether.pid();
    assert_eq!(new_session_pods(&http, &url, 4).await?, ["a"]);
    assert_eq!(tether.generation().await?, 1.0);

    tether
        .reload(
            &config
                .targets(&[(a.address(), 0), (b.address(), 100)])
                .yaml(),
        )
        .await?;
    assert_eq!(tether.generation().await?, 2.0);
    assert_eq!(new_session_pods(&http, &url, 4).await?, ["b"]);

    // Routes and cookie attributes change too.
    let next = config
        .targets(&[(a.address(), 100), (b.address(), 100)])
        .route("pathPrefix: /app")
        .cookie("secure: true");
    tether.reload(&next.yaml()).await?;
    let reply = http.get(&tether.url("/"), None).await?;
    assert_eq!(reply.status, 404);
    let reply = http.get(&tether.url("/app/x"), None).await?;
    assert_eq!(reply.status, 200);
    assert!(reply
        .set_cookie(COOKIE)
        .context("Set-Cookie")?
        .contains("; Secure"));
    assert_eq!(tether.pid(), pid);
    assert_eq!(
        tether
            .metric("tether_config_reloads_total", &[("result", "applied")])
            .await?,
        2.0
    );
    assert!(tether.logs().contains("configuration applied"));
    Ok(())
}

/// A file that changes but means the same (a comment, reordered keys) is not applied: the
/// generation stays and the reload is counted as unchanged; a real change after it applies.
#[tokio::test]
async fn a_change_that_means_nothing_new_is_not_applied() -> Result<()> {
    let [b] = pods(["b"])?;
    let ([a], config, tether, http, url) = sticky(["a"]).await?;
    let unchanged = [("result", "unchanged")];
    let before = tether
        .metric("tether_config_reloads_total", &unchanged)
        .await?;
    tether_testkit::agent::write_atomically(
        tether.config_path(),
        &format!("# edited by hand\n{}", tether.render(&config.yaml())),
    )?;
    tether
        .wait_for_metric("tether_config_reloads_total", &unchanged, before)
        .await?;
    assert_eq!(
        tether
            .metric("tether_config_reloads_total", &unchanged)
            .await?,
        before + 1.0
    );
    assert_eq!(tether.generation().await?, 1.0);
    assert!(!tether.logs().contains("configuration applied"));

    tether
        .reload(
            &config
                .targets(&[(a.address(), 0), (b.address(), 100)])
                .yaml(),
        )
        .await?;
    assert_eq!(tether.generation().await?, 2.0);
    assert_eq!(new_session_pods(&http, &url, 3).await?, ["b"]);
    Ok(())
}

/// SIGHUP reloads even an unchanged file; a file changed and signalled is applied once.
#[tokio::test]
async fn sighup_forces_a_reload() -> Result<()> {
    let [b] = pods(["b"])?;
    let (_pods, config, tether, http, url) = sticky(["a"]).await?;
    tether.sighup().await?;
    assert_eq!(tether.generation().await?, 2.0);
    assert!(
        tether.logs().contains("trigger=\"SIGHUP\""),
        "{}",
        tether.logs()
    );
    tether.sighup().await?;
    assert_eq!(tether.generation().await?, 3.0);
    assert_eq!(new_session_pods(&http, &url, 3).await?, ["a"]);

    // A new file followed by SIGHUP: applied.
    tether_testkit::agent::write_atomically(
        tether.config_path(),
        &tether.render(&config.targets(&[(b.address(), 100)]).yaml()),
    )?;
    tether.sighup().await?;
    assert_eq!(new_session_pods(&http, &url, 3).await?, ["b"]);
    Ok(())
}

/// A slow request started before a reload completes with 200, even when the reload removes its
/// target; the next request follows the new configuration.
#[tokio::test]
async fn requests_in_flight_survive_a_reload() -> Result<()> {
    // The reload must land within the slow request's 2.5 s: nothing that loads the machine
    // meanwhile.
    let _machine = timing().await;
    let ([a, b], config, tether, http, url) = sticky(["a", "b"]).await?;
    let on_a = session_cookie(&http, &url, "a", 4).await?;
    let started = std::time::Instant::now();
    let before = a.requests();
    let slow = get_in_background(
        &http,
        tether.url("/?sleep_ms=2500"),
        Some(on_a.clone()),
        &[],
    );
    assert!(
        reached(&a, before).await,
        "the slow request never reached a"
    );
    tether
        .reload(&config.targets(&[(b.address(), 100)]).yaml())
        .await?;
    assert!(
        !slow.is_finished(),
        "the reload should land while the request is in flight ({:?})",
        started.elapsed()
    );
    let reply = slow.await??;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.pod(), Some("a"));
    // The same cookie now re-pins: a is gone.
    let reply = http.get(&tether.url("/"), Some(&on_a)).await?;
    assert_eq!(reply.pod(), Some("b"));
    assert!(reply.set_cookie(COOKIE).is_some());
    Ok(())
}

/// An invalid file is rejected with a log line naming the field and its line; the running
/// configuration keeps serving; a later valid file applies.
#[tokio::test]
async fn an_invalid_file_is_rejected_and_the_old_config_keeps_serving() -> Result<()> {
    let [b] = pods(["b"])?;
    let ([a], config, mut tether, http, url) = sticky(["a"]).await?;
    let cookie = session_cookie(&http, &url, "a", 2).await?;

    // A weight over the maximum, on a known line.
    let invalid = config
        .targets(&[(a.address(), 100), (b.address(), 70_000)])
        .yaml();
    let line = invalid
        .lines()
        .position(|l| l.contains("70000"))
        .context("the line")?
        + 1;
    tether.reload_rejected(&invalid).await?;
    let logs = tether.logs();
    let rejected = logs
        .lines()
        .find(|l| l.contains("configuration rejected"))
        .context("no rejection logged")?;
    let path = tether.config_path().display().to_string();
    assert!(
        rejected.contains(&format!("{path}:{line}:")),
        "line {line}: {rejected}"
    );
    assert!(
        rejected.contains("services.echo.targets[1].weight"),
        "{rejected}"
    );
    assert!(rejected.contains("70000"), "{rejected}");

    // Unknown field, through serde: also named, with its line.
    let mut unknown = config.yaml();
    unknown.push_str("      - {address: \"127.0.0.1:1\", wieght: 5}\n");
    let line = unknown.lines().count();
    tether.reload_rejected(&unknown).await?;
    let logs = tether.logs();
    let rejected = logs
        .lines()
        .filter(|l| l.contains("configuration rejected"))
        .nth(1)
        .context("no second rejection logged")?;
    assert!(
        rejected.contains(&format!(":{line}:")),
        "line {line}: {rejected}"
    );
    assert!(rejected.contains("wieght"), "{rejected}");
    assert!(rejected.contains("services.echo.targets[1]"), "{rejected}");

    // Not even YAML.
    tether.reload_rejected("proxy: [unclosed\n").await?;

    assert_eq!(tether.generation().await?, 1.0);
    assert!(tether.is_running());
    assert_eq!(new_session_pods(&http, &url, 4).await?, ["a"]);
    let reply = http.get(&tether.url("/"), Some(&cookie)).await?;
    assert_eq!(reply.pod(), Some("a"));
    assert_eq!(
        reply.set_cookie(COOKIE),
        None,
        "sessions survive a rejection"
    );

    tether
        .reload(&config.targets(&[(b.address(), 100)]).yaml())
        .await?;
    assert_eq!(tether.generation().await?, 2.0);
    assert_eq!(new_session_pods(&http, &url, 2).await?, ["b"]);
    Ok(())
}

/// Truncating the file to nothing, as a crashed or non-atomic writer does, is refused; so is a
/// file that would remove every route or service, unless it says `allowEmpty: true`.
#[tokio::test]
async fn an_emptied_file_is_refused_unless_it_says_so() -> Result<()> {
    let (_pods, _, tether, http, url) = sticky(["a"]).await?;
    assert_eq!(http.get(&url, None).await?.status, 200);

    tether.reload_rejected("").await?;
    assert_eq!(http.get(&url, None).await?.status, 200);

    let proxy_only = "proxy:\n  listen: $PROXY\nadmin:\n  listen: $ADMIN\n";
    tether.reload_rejected(proxy_only).await?;
    let logs = tether.logs();
    assert!(
        logs.contains("it removes every route (set allowEmpty: true if that is meant)"),
        "{logs}"
    );
    assert_eq!(http.get(&url, None).await?.status, 200);

    tether
        .reload(&format!("{proxy_only}allowEmpty: true\n"))
        .await?;
    assert_eq!(http.get(&url, None).await?.status, 404);
    Ok(())
}

/// A file rewritten in place, slowly enough that a poll sees half of it, is applied once, whole:
/// the half-written prefix (valid YAML with one target fewer) never re-pins a session.
#[tokio::test]
async fn a_half_written_file_is_never_applied() -> Result<()> {
    use std::io::Write;
    let [c] = pods(["c"])?;
    let ([a, b], config, tether, http, url) = sticky(["a", "b"]).await?;
    let cookie = session_cookie(&http, &url, "b", 20).await?;
    let generation = tether.generation().await?;

    let next = tether.render(
        &config
            .targets(&[(a.address(), 100), (b.address(), 100), (c.address(), 100)])
            .yaml(),
    );
    let b_line = next.find(&b.address().to_string()).context("b's line")?;
    let cut = next[..b_line].rfind('\n').context("a line start")? + 1;
    let mut file = std::fs::File::create(tether.config_path())?;
    file.write_all(&next.as_bytes()[..cut])?;
    file.sync_all()?;
    // Three polls' worth: before settling, tether applied this prefix (no target b).
    tokio::time::sleep(Duration::from_millis(300)).await;
    file.write_all(&next.as_bytes()[cut..])?;
    file.sync_all()?;
    drop(file);

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tether.generation().await? == generation {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the whole file was never applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Time for a second (late) application to show, if there were one.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        tether.generation().await?,
        generation + 1.0,
        "applied more than once:\n{}",
        tether.logs()
    );
    let reply = http.get(&tether.url("/"), Some(&cookie)).await?;
    assert_eq!(reply.pod(), Some("b"));
    assert!(
        reply.set_cookie(COOKIE).is_none(),
        "the session was re-pinned"
    );
    assert_eq!(
        tether
            .metric("tether_repins_total", &[("reason", "target_removed")])
            .await?,
        0.0
    );
    Ok(())
}
