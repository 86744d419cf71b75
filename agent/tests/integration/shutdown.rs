//! SIGTERM: tether stops accepting, lets the requests it holds finish, then exits 0.
use crate::fixtures::{get_in_background, reached, sticky};
use anyhow::{Context, Result};
use std::time::{Duration, Instant};

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish() -> Result<()> {
    let ([pod], _, mut tether, http, url) = sticky(["a"]).await?;
    let slow = get_in_background(&http, tether.url("/?sleep_ms=1500"), None, &[]);
    // Bounded wait until the pod holds the request, then stop tether under it.
    anyhow::ensure!(
        reached(&pod, 0).await,
        "the slow request never reached the pod"
    );
    tether.signal(libc::SIGTERM)?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = tokio::time::timeout(Duration::from_secs(2), http.get(&url, None)).await;
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
