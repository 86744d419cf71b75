//! Reloads: a changed file applies without a restart, SIGHUP forces a reload, requests in flight
//! finish on the configuration they started with, and an invalid file leaves the running
//! configuration in place with a log line that says where the mistake is.
use anyhow::{Context, Result};
use std::time::Duration;
use tether_tests::agent::Tether;
use tether_tests::config::{Config, COOKIE};
use tether_tests::echo::EchoServer;
use tether_tests::http::Http;

const TETHER: &str = env!("CARGO_BIN_EXE_tether");

/// Pods that new sessions land on, over `n` new sessions.
async fn new_session_pods(http: &Http, tether: &Tether, n: usize) -> Result<Vec<String>> {
    let mut pods = Vec::with_capacity(n);
    for _ in 0..n {
        let reply = http.get(&tether.url("/"), None).await?;
        anyhow::ensure!(reply.status == 200, "status {}", reply.status);
        pods.push(reply.pod().context("x-pod")?.to_string());
    }
    pods.sort();
    pods.dedup();
    Ok(pods)
}

/// Editing the file changes targets, routes and cookie options in the same process.
#[tokio::test]
async fn a_changed_file_applies_without_a_restart() -> Result<()> {
    let a = EchoServer::start("a")?;
    let b = EchoServer::start("b")?;
    let config = Config::sticky(&[(a.address(), 100)]);
    let tether = Tether::start(TETHER, &config.yaml()).await?;
    let pid = tether.pid();
    let http = Http::new();
    assert_eq!(new_session_pods(&http, &tether, 4).await?, ["a"]);
    assert_eq!(tether.generation().await?, 1.0);

    tether
        .reload(
            &config
                .targets(&[(a.address(), 0), (b.address(), 100)])
                .yaml(),
        )
        .await?;
    assert_eq!(tether.generation().await?, 2.0);
    assert_eq!(new_session_pods(&http, &tether, 4).await?, ["b"]);

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

/// SIGHUP reloads even an unchanged file; a file changed and signalled is applied once.
#[tokio::test]
async fn sighup_forces_a_reload() -> Result<()> {
    let a = EchoServer::start("a")?;
    let b = EchoServer::start("b")?;
    let config = Config::sticky(&[(a.address(), 100)]);
    let tether = Tether::start(TETHER, &config.yaml()).await?;
    let http = Http::new();
    tether.sighup().await?;
    assert_eq!(tether.generation().await?, 2.0);
    assert!(
        tether.logs().contains("trigger=\"SIGHUP\""),
        "{}",
        tether.logs()
    );
    tether.sighup().await?;
    assert_eq!(tether.generation().await?, 3.0);
    assert_eq!(new_session_pods(&http, &tether, 3).await?, ["a"]);

    // A new file followed by SIGHUP: applied.
    tether_tests::agent::write_atomically(
        tether.config_path(),
        &tether.render(&config.targets(&[(b.address(), 100)]).yaml()),
    )?;
    tether.sighup().await?;
    assert_eq!(new_session_pods(&http, &tether, 3).await?, ["b"]);
    Ok(())
}

/// A slow request started before a reload completes with 200, even when the reload removes its
/// target; the next request follows the new configuration.
#[tokio::test]
async fn requests_in_flight_survive_a_reload() -> Result<()> {
    let a = EchoServer::start("a")?;
    let b = EchoServer::start("b")?;
    let config = Config::sticky(&[(a.address(), 100), (b.address(), 100)]);
    let tether = Tether::start(TETHER, &config.yaml()).await?;
    let http = Http::new();
    let on_a = format!(
        "{COOKIE}={}",
        http.session_on(&tether.url("/"), COOKIE, "a", 4).await?
    );
    let started = std::time::Instant::now();
    let before = a.requests();
    let slow = {
        let http = http.clone();
        let url = tether.url("/?sleep_ms=2500");
        let on_a = on_a.clone();
        tokio::spawn(async move { http.get(&url, Some(&on_a)).await })
    };
    for _ in 0..200 {
        if a.requests() > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(a.requests() > before, "the slow request never reached a");
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
    let a = EchoServer::start("a")?;
    let b = EchoServer::start("b")?;
    let config = Config::sticky(&[(a.address(), 100)]);
    let mut tether = Tether::start(TETHER, &config.yaml()).await?;
    let http = Http::new();
    let cookie = format!(
        "{COOKIE}={}",
        http.session_on(&tether.url("/"), COOKIE, "a", 2).await?
    );

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
    assert_eq!(new_session_pods(&http, &tether, 4).await?, ["a"]);
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
    assert_eq!(new_session_pods(&http, &tether, 2).await?, ["b"]);
    Ok(())
}
