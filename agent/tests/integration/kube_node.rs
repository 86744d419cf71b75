//! The node-local file of `--kubernetes` (the DaemonSet's ConfigMap) is reloaded while the agent
//! runs: a new setting is applied with the cluster's routes kept; a file that says what only
//! the cluster may say, or that adds the kernel path, is refused with the reason and the
//! running settings stay.
use crate::fixtures::{sticky_echo, TETHER};
use anyhow::{ensure, Result};
use tether_testkit::http::Http;
use tether_testkit::kube_lab::{Lab, NODE_CONFIG};

const COOKIE: &str = "session_id";

/// A request head of about 10 KiB: under the default `maxHeaderBytes` (16 KiB), over 8 KiB.
async fn large_head_status(http: &Http, url: &str) -> Result<u16> {
    let filler = "x".repeat(10 * 1024);
    Ok(http
        .get_with(url, None, &[("x-filler", &filler)])
        .await?
        .status
        .as_u16())
}

#[tokio::test]
async fn the_node_file_reloads_and_keeps_the_clusters_routes() -> Result<()> {
    let lab = Lab::new(&["a"], sticky_echo(COOKIE))?;
    let tether = lab.tether(TETHER, &[]).await?;
    let http = Http::new();
    let url = tether.url("/echo");
    ensure!(http.get(&url, None).await?.pod() == Some("a"));
    ensure!(large_head_status(&http, &url).await? == 200);

    // A smaller maxHeaderBytes is applied; the cluster's route still serves.
    let smaller = "proxy:\n  listen: $PROXY\n  maxHeaderBytes: 8192\nadmin:\n  listen: $ADMIN\n";
    tether.reload(smaller).await?;
    let status = large_head_status(&http, &url).await?;
    ensure!(
        status == 431,
        "the new maxHeaderBytes is not applied: {status}"
    );
    let reply = http.get(&url, None).await?;
    ensure!(
        reply.pod() == Some("a"),
        "the cluster's route was lost with the node change: {} {:?}",
        reply.status,
        reply.pod()
    );

    // Routes belong to the cluster: refused, and the running settings stay.
    tether
        .reload_rejected(&format!(
            "{smaller}routes:\n  - {{match: {{pathPrefix: /}}, service: x}}\nservices:\n  x: {{targets: [{{address: 127.0.0.1:9}}]}}\n"
        ))
        .await?;
    ensure!(tether
        .logs()
        .contains("routes and services come from the cluster"));
    // Adding the kernel path needs a restart: refused with the reason.
    tether
        .reload_rejected(&format!("{smaller}dataplane:\n  interfaces: [lo]\n"))
        .await?;
    ensure!(tether.logs().contains("restart the agent to change it"));
    ensure!(large_head_status(&http, &url).await? == 431);
    ensure!(http.get(&url, None).await?.pod() == Some("a"));

    // Back to the default.
    tether.reload(NODE_CONFIG).await?;
    ensure!(large_head_status(&http, &url).await? == 200);
    Ok(())
}
