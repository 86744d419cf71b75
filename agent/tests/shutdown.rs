//! SIGTERM: tether stops accepting, lets the requests it holds finish, then exits 0.
use anyhow::{Context, Result};
use std::time::{Duration, Instant};
use tether_tests::agent::Tether;
use tether_tests::config::Config;
use tether_tests::echo::EchoServer;
use tether_tests::http::Http;

const TETHER: &str = env!("CARGO_BIN_EXE_tether");

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish() -> Result<()> {
    let pod = EchoServer::start("a")?;
    let mut tether = Tether::start(TETHER, &Config::sticky(&[(pod.address(), 100)]).yaml()).await?;
    let http = Http::new();
    let slow = {
        let http = http.clone();
        let url = tether.url("/?sleep_ms=1500");
        tokio::spawn(async move { http.get(&url, None).await })
    };
    // Bounded wait until the pod holds the request, then stop tether under it.
    for _ in 0..200 {
        if pod.requests() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::ensure!(pod.requests() > 0, "the slow request never reached the pod");
    tether.signal(libc::SIGTERM)?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused =
        tokio::time::timeout(Duration::from_secs(2), http.get(&tether.url("/"), None)).await;
    assert!(
        !matches!(refused, Ok(Ok(_))),
        "a new request was served after SIGTERM"
    );
    let reply = slow.await?.context("the in-flight request failed")?;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.pod(), Some("a"));
    let started = Instant::now();
    while tether.is_running() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(10),
            "tether did not exit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(tether.logs().contains("SIGTERM: stopping"));
    Ok(())
}
