//! An API-server outage that ends in a relist: while the API server is away (about 4 s), the
//! pinned pod's EndpointSlice is deleted and history is compacted, so the reconnecting
//! watches get 410 Gone and must list again. Measured: the time from the API server's return
//! until a request with the old cookie is re-pinned to the other pod (printed, and bounded at
//! 2 s), and how often the watchers retried while it was away (bounded, so a faster
//! convergence is not bought by hammering the API server).
use crate::fixtures::{session_jar, sticky_echo, timing, TETHER};
use anyhow::{ensure, Context, Result};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tether_testkit::fake_apiserver::UNANSWERED;
use tether_testkit::http::Http;
use tether_testkit::kube_lab::{eventually, Lab};
const COOKIE: &str = "session_id";
/// How long the API server is away.
const OUTAGE: Duration = Duration::from_secs(4);
/// The old cookie must be re-pinned this soon after the API server is back.
const CONVERGED: Duration = Duration::from_secs(2);
/// Polling stops here even when it never converges, so a slow run still prints its measure.
const GIVE_UP: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(50);
/// At most one list or watch per resource per this long, on average, while the API server is
/// away: client-go's default (0.8 s doubling) stays far below it, a retry loop without delay
/// far above.
const RETRY_FLOOR: Duration = Duration::from_millis(100);

#[tokio::test]
async fn a_pod_removed_during_an_outage_re_pins_soon_after_the_api_server_returns() -> Result<()> {
    // Convergence within 2 s of the API server's return, and a bound on retries per second:
    // nothing that loads the machine meanwhile.
    let _machine = timing().await;
    let mut lab = Lab::new(&["a", "b"], sticky_echo(COOKIE))?;
    // Without drain support a removed pod's sessions re-pin as soon as the model drops it.
    let tether = lab.tether(TETHER, &[]).await?;
    let http = Http::new();
    let url = tether.url("/echo");
    let mut jar = session_jar(&http, &url, COOKIE, "b", 30).await?;

    lab.api.stop_answering()?;
    let down = Instant::now();
    // While it is away the pod goes, and the history that would have told the watches so is
    // compacted: only a relist can show it.
    ensure!(lab.gone("b"), "no slice for pod b");
    lab.api.expire();
    eventually("the watches notice the outage", || async {
        Ok(tether.metric("tether_kube_watch_errors_total", &[]).await? > 0.0)
    })
    .await?;
    // Meanwhile the last model serves: the session stays on b (which still runs).
    while down.elapsed() < OUTAGE {
        let reply = http.get(&url, jar.header().as_deref()).await?;
        ensure!(
            reply.status == 200 && reply.pod() == Some("b"),
            "during the outage: status {}, pod {:?}",
            reply.status,
            reply.pod()
        );
        tokio::time::sleep(POLL.min(OUTAGE.saturating_sub(down.elapsed()))).await;
    }
    lab.api.restart()?;
    let back = Instant::now();
    let outage = back - down;

    let converged = loop {
        let reply = http.get(&url, jar.header().as_deref()).await?;
        ensure!(reply.status == 200, "status {}", reply.status);
        if reply.pod() != Some("b") {
            let took = back.elapsed();
            ensure!(reply.pod() == Some("a"), "re-pinned to {:?}", reply.pod());
            let old = jar.value().map(str::to_string);
            ensure!(jar.update(&reply), "no new cookie after re-pinning");
            ensure!(jar.value().map(str::to_string) != old, "the same cookie");
            break took;
        }
        ensure!(
            back.elapsed() < GIVE_UP,
            "the old cookie was not re-pinned within {GIVE_UP:?} of the API server's return; logs:\n{}",
            tether.logs()
        );
        tokio::time::sleep(POLL).await;
    };

    // Lists and watches tried while the API server was away, per resource.
    let mut tries: BTreeMap<String, usize> = BTreeMap::new();
    for seen in lab.api.seen() {
        if seen.status == UNANSWERED && seen.method == "GET" {
            let resource = seen.path.rsplit('/').next().unwrap_or_default();
            *tries.entry(resource.to_string()).or_default() += 1;
        }
    }
    let bound = (outage.as_secs_f64() / RETRY_FLOOR.as_secs_f64()).ceil() as usize;
    eprintln!(
        "API outage of {:.1} s ending in 410 and a relist: the old cookie re-pinned {:.0} ms after \
         the API server returned; lists and watches tried during the outage, per resource: \
         {tries:?} (bound {bound} each)",
        outage.as_secs_f64(),
        converged.as_secs_f64() * 1e3,
    );
    let slices = tries
        .get("endpointslices")
        .context("no list or watch of endpointslices reached the server during the outage")?;
    ensure!(*slices >= 1);
    for (resource, count) in &tries {
        ensure!(
            *count <= bound,
            "{resource}: {count} lists and watches in a {outage:?} outage (at most {bound})"
        );
    }
    ensure!(
        converged < CONVERGED,
        "re-pinned {converged:?} after the API server returned (at most {CONVERGED:?})"
    );
    let relists = tether
        .metric(
            "tether_kube_relists_total",
            &[("resource", "endpointslices")],
        )
        .await?;
    ensure!(relists >= 1.0, "endpointslices relisted {relists} times");
    Ok(())
}
