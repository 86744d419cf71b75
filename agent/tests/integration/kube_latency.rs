//! How long an EndpointSlice change takes to reach the proxy: from the moment the fake API
//! server sends the MODIFIED event on the watch stream until the proxy routes by it, over 50
//! changes; p50 and p99 are printed (`cargo test --test integration kube_latency -- --nocapture`), with
//! tether's own measure (`tether_kube_change_to_proxy_seconds`: first watch event of a burst →
//! tables swapped). Bounds are generous: this is a record, not a benchmark, and the machine is
//! shared.
use crate::fixtures::{dataplane_ready, pods, timing, timing_blocking, TETHER};
use anyhow::{ensure, Context, Result};
use std::time::{Duration, Instant};
use tether_testkit::cluster::{self, Endpoint, NS};
use tether_testkit::http::Http;
use tether_testkit::kube_lab::Lab;
const CHANGES: usize = 50;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[tokio::test]
async fn endpoint_slice_change_to_proxy() -> Result<()> {
    let _machine = timing().await;
    // One slice whose single endpoint flips between pod a and pod b.
    let lab = Lab::new(&[], vec![cluster::echo_route()])?;
    let [a, b] = pods(["a", "b"])?;
    // Each pod's port differs; the one slice holds whichever pod is current.
    let slice = |pod: &tether_testkit::echo::EchoServer| {
        cluster::endpoint_slice(
            NS,
            "echo-flip",
            "echo",
            "http",
            pod.address().port(),
            &[Endpoint::ready(pod.name(), pod.address())],
        )
    };
    lab.api.apply(slice(&a));
    let tether = lab.tether(TETHER, &[]).await?;
    let http = Http::new();
    let url = tether.url("/echo");
    ensure!(http.get(&url, None).await?.pod() == Some("a"));

    let mut samples = Vec::with_capacity(CHANGES);
    for change in 0..CHANGES {
        let next = if change % 2 == 0 { &b } else { &a };
        let revision = lab.api.apply(slice(next));
        let sent = lab.api.sent_at(revision).context("sent")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let reply = http.get(&url, None).await?;
            if reply.pod() == Some(next.name()) {
                samples.push(sent.elapsed());
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "change {change} never reached the proxy"
            );
        }
        // Apart, so each change is its own burst.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    samples.sort();
    let (p50, p99, max) = (
        percentile(&samples, 0.50),
        percentile(&samples, 0.99),
        samples[samples.len() - 1],
    );
    let metrics = tether.metrics().await?;
    let internal_sum = tether_testkit::agent::metric_value(
        &metrics,
        "tether_kube_change_to_proxy_seconds_sum",
        &[],
    );
    let internal_count = tether_testkit::agent::metric_value(
        &metrics,
        "tether_kube_change_to_proxy_seconds_count",
        &[],
    );
    println!(
        "EndpointSlice change → proxy over {CHANGES} changes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms \
         (watch event sent → first request routed by it; debounce quiet window {} ms); \
         tether's own mean (first event → tables swapped): {:.1} ms over {internal_count} models",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        tether::source::kube::QUIET.as_millis(),
        internal_sum / internal_count.max(1.0) * 1e3,
    );
    ensure!(internal_count >= CHANGES as f64);
    ensure!(p50 < Duration::from_millis(500), "p50 {p50:?}");
    ensure!(p99 < Duration::from_secs(2), "p99 {p99:?}");
    Ok(())
}

/// The same to the kernel maps: tether in a node network namespace with a dataplane on a
/// veth, a LoadBalancer Service (a kernel frontend), and a slice whose one endpoint flips
/// between two addresses; the pinned maps are read in-process until they show the change.
/// Privileged (root, the kernel object, a kernel with bpf_link for XDP and TCX).
#[test]
fn endpoint_slice_change_to_maps() -> Result<()> {
    use tether_testkit::netns::{unique, veth, Netns};
    if !dataplane_ready("endpoint_slice_change_to_maps") {
        return Ok(());
    }
    let _machine = timing_blocking();
    let id = unique("tkl");
    let node = Netns::new(format!("{id}-n"))?;
    let peer = Netns::new(format!("{id}-c"))?;
    veth(&peer, "c0", &node, "n0")?;
    let listener = node.run(|| std::net::TcpListener::bind("127.0.0.1:0"))??;
    let api = tether_testkit::fake_apiserver::FakeApiServer::start_on(listener)?;
    let dir = tether_testkit::agent::TempDir::new("maps-latency")?;
    let pins = std::path::PathBuf::from("/sys/fs/bpf").join(&id);
    let config = dir.path().join("tether.yaml");
    std::fs::write(
        &config,
        "proxy:\n  listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:8100\ndataplane:\n  interfaces: [n0]\n  xdpMode: native\n",
    )?;
    let mut web = cluster::service(NS, "web", &[("http", 80, "TCP")]);
    web["spec"]["type"] = serde_json::json!("LoadBalancer");
    api.apply(web);
    let slice = |last: u8| {
        let address = std::net::SocketAddr::from(([10, 77, 1, last], 8080));
        cluster::endpoint_slice(
            NS,
            "web-1",
            "web",
            "http",
            8080,
            &[Endpoint::ready(&format!("web-{last}"), address)],
        )
    };
    api.apply(slice(2));
    let log = dir.path().join("tether.log");
    let mut agent = Agent {
        child: node
            .command(TETHER)?
            .args(["run", "--kubernetes", "--config"])
            .arg(&config)
            .arg("--kubeconfig")
            .arg(api.kubeconfig(dir.path())?)
            .arg("--pin-dir")
            .arg(&pins)
            .env("RUST_LOG", "info")
            .env_remove("KUBECONFIG")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?,
        pins: pins.clone(),
    };
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    // The targets in the maps. Read entry by entry over the low ids (ids are handed out from a
    // cursor, so 2 × CHANGES ids cover the test) rather than through `tether maps`, whose full
    // read would dominate the measure.
    let mut maps: Option<tether::dataplane::maps::Maps> = None;
    let targets = |maps: &mut Option<tether::dataplane::maps::Maps>| -> Result<Vec<String>> {
        if maps.is_none() {
            *maps = Some(tether::dataplane::maps::Maps::open_pinned(&pins)?);
        }
        let Some(maps) = maps.as_ref() else {
            return Ok(Vec::new());
        };
        let mut found = Vec::new();
        for id in 0..(4 * CHANGES as u32 + 16) {
            let entry = maps.targets.get(&id, 0)?;
            if entry.state != tether_common::TargetState::UNUSED {
                let ip = std::net::Ipv4Addr::new(
                    entry.addr[12],
                    entry.addr[13],
                    entry.addr[14],
                    entry.addr[15],
                );
                found.push(format!("{ip}:{}", u16::from_be(entry.port)));
            }
        }
        Ok(found)
    };
    let started = Instant::now();
    while !logs().contains("tether is running from the cluster") {
        ensure!(
            agent.child.try_wait()?.is_none(),
            "tether exited:\n{}",
            logs()
        );
        ensure!(
            started.elapsed() < Duration::from_secs(30),
            "tether did not start:\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let initial = targets(&mut maps)?;
    ensure!(initial == ["10.77.1.2:8080"], "{initial:?}");
    let mut samples = Vec::with_capacity(CHANGES);
    for change in 0..CHANGES {
        let (next, old) = if change % 2 == 0 { (3, 2) } else { (2, 3) };
        let revision = api.apply(slice(next));
        let sent = api.sent_at(revision).context("sent")?;
        let want = format!("10.77.1.{next}:8080");
        let gone = format!("10.77.1.{old}:8080");
        loop {
            let now = targets(&mut maps)?;
            if now.contains(&want) && !now.contains(&gone) {
                samples.push(sent.elapsed());
                break;
            }
            ensure!(
                sent.elapsed() < Duration::from_secs(10),
                "change {change} never reached the maps:\n{}",
                logs()
            );
            std::thread::sleep(Duration::from_micros(100));
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    samples.sort();
    let (p50, p99) = (percentile(&samples, 0.50), percentile(&samples, 0.99));
    println!(
        "EndpointSlice change → kernel maps over {CHANGES} changes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3,
    );
    if std::env::var_os("SHOW_LOGS").is_some() {
        println!("{}", logs());
    }
    ensure!(p99 < Duration::from_secs(2), "p99 {p99:?}");
    drop(agent);
    Ok(())
}

/// The agent in the node namespace: killed, and its pins cleaned up, when dropped.
struct Agent {
    child: std::process::Child,
    pins: std::path::PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::process::Command::new(TETHER)
            .args(["cleanup", "--pin-dir"])
            .arg(&self.pins)
            .output();
    }
}
