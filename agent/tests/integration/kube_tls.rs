//! TLS from the cluster (`tether run --kubernetes` with `proxy.tls.listen` in the node file):
//! Ingress `spec.tls` Secrets are served by SNI, plaintext requests for their hosts get
//! ingress-nginx's 308 to https (unless `ssl-redirect: "false"`), Kong's `protocols` and
//! `https-redirect-status-code` apply, and a renewed Secret is served without a restart while a
//! broken one keeps its previous version. Through curl, against the fake API server.
use crate::fixtures::TETHER;
use crate::tls::{curl, subject, tls_address, Site};
use anyhow::{ensure, Context, Result};
use serde_json::Value;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};
use tether_testkit::agent::{TempDir, Tether};
use tether_testkit::cluster::{self, annotate, NS};
use tether_testkit::kube_lab::{eventually, Lab};

/// The node-local file: a plaintext and a TLS listener, and no certificate files.
const TLS_NODE: &str =
    "proxy:\n  listen: $PROXY\n  tls:\n    listen: 127.0.0.1:0\nadmin:\n  listen: $ADMIN\n";

/// An Ingress for `host` → the echo Service.
fn ingress(name: &str, host: &str) -> Value {
    cluster::ingress(NS, name, Some(host), &[("/", "Prefix", "echo", 1027)])
}

/// The Secret `name` holding `site`'s certificate and key.
fn secret(name: &str, site: &Site) -> Result<Value> {
    Ok(cluster::tls_secret(
        NS,
        name,
        &std::fs::read_to_string(&site.cert)?,
        &std::fs::read_to_string(&site.key)?,
    ))
}

/// A plaintext request for `http://HOST:PORT/PATH` (HOST resolved to the proxy): its status
/// and Location.
fn plaintext(proxy: SocketAddr, host: &str, path: &str) -> Result<(String, String)> {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o", "/dev/null", "-w"])
        .arg("%{http_code}\n%header{location}")
        .arg("--resolve")
        .arg(format!("{host}:{}:127.0.0.1", proxy.port()))
        .arg(format!("http://{host}:{}{path}", proxy.port()))
        .output()
        .context("curl")?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let (status, location) = stdout.split_once('\n').unwrap_or((&stdout, ""));
    Ok((status.to_string(), location.to_string()))
}

async fn start(lab: &Lab) -> Result<(Tether, SocketAddr)> {
    let tether = lab.tether_on(TETHER, TLS_NODE, &[], &[], true).await?;
    let address = tls_address(&tether)?;
    Ok((tether, address))
}

#[tokio::test]
async fn ingress_tls_hosts_are_served_over_https_and_plaintext_is_redirected() -> Result<()> {
    let dir = TempDir::new("kube-tls")?;
    let shop = Site::write(dir.path(), "shop", &["shop.example.com"])?;
    let open = Site::write(dir.path(), "open", &["open.example.com"])?;
    let objects = vec![
        cluster::with_tls(
            ingress("shop", "shop.example.com"),
            &["shop.example.com"],
            "shop-tls",
        ),
        // ssl-redirect off: plaintext is served too.
        annotate(
            cluster::with_tls(
                ingress("open", "open.example.com"),
                &["open.example.com"],
                "open-tls",
            ),
            "nginx.ingress.kubernetes.io/ssl-redirect",
            "false",
        ),
        // No TLS: plaintext only, no redirect.
        ingress("plain", "plain.example.com"),
        secret("shop-tls", &shop)?,
        secret("open-tls", &open)?,
    ];
    let lab = Lab::new(&["a"], objects)?;
    let (tether, tls) = start(&lab).await?;

    // Each host gets its own certificate by SNI, and the request reaches the pod.
    for (host, site) in [("shop.example.com", &shop), ("open.example.com", &open)] {
        let fetched = curl(tls, host, "/x", site, &[])?;
        ensure!(
            fetched.ok && fetched.status == "200",
            "{host}: {}",
            fetched.trace
        );
        ensure!(
            subject(&fetched).as_deref() == Some(host),
            "{}",
            fetched.trace
        );
        ensure!(
            fetched.trace.to_ascii_lowercase().contains("x-pod: a"),
            "{}",
            fetched.trace
        );
    }

    // A plaintext request for a TLS host: 308 to the same URL on the TLS listener.
    let (status, location) = plaintext(tether.proxy(), "shop.example.com", "/cart?id=7")?;
    ensure!(status == "308", "{status} {location}");
    ensure!(
        location == format!("https://shop.example.com:{}/cart?id=7", tls.port()),
        "{location}"
    );
    // Following it lands on the pod over TLS.
    let followed = Command::new("curl")
        .args([
            "-sS",
            "-L",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{scheme}",
        ])
        .arg("--cacert")
        .arg(&shop.cert)
        .arg("--resolve")
        .arg(format!(
            "shop.example.com:{}:127.0.0.1",
            tether.proxy().port()
        ))
        .arg("--resolve")
        .arg(format!("shop.example.com:{}:127.0.0.1", tls.port()))
        .arg(format!(
            "http://shop.example.com:{}/cart",
            tether.proxy().port()
        ))
        .output()?;
    let followed = String::from_utf8_lossy(&followed.stdout).to_ascii_lowercase();
    ensure!(followed == "200 https", "{followed}");

    // ssl-redirect "false", and a host without TLS: plaintext is served.
    for host in ["open.example.com", "plain.example.com"] {
        let (status, location) = plaintext(tether.proxy(), host, "/")?;
        ensure!(
            status == "200" && location.is_empty(),
            "{host}: {status} {location}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_renewed_secret_is_served_within_seconds_and_a_broken_one_keeps_the_old() -> Result<()> {
    let dir = TempDir::new("kube-tls-renew")?;
    let first = Site::write(dir.path(), "first", &["shop.example.com"])?;
    let other = Site::write(dir.path(), "other", &["other.example.com"])?;
    let objects = vec![
        cluster::with_tls(
            ingress("shop", "shop.example.com"),
            &["shop.example.com"],
            "shop-tls",
        ),
        cluster::with_tls(
            ingress("other", "other.example.com"),
            &["other.example.com"],
            "other-tls",
        ),
        secret("shop-tls", &first)?,
        secret("other-tls", &other)?,
    ];
    let lab = Lab::new(&["a"], objects)?;
    let (tether, tls) = start(&lab).await?;
    let fetched = curl(tls, "shop.example.com", "/", &first, &[])?;
    ensure!(fetched.ok && fetched.status == "200", "{}", fetched.trace);

    // cert-manager renews: the Secret gets a new certificate (another CA, so the old CA file
    // no longer verifies it); served from the next handshakes on, no restart.
    let renewed = Site::write(
        dir.path(),
        "renewed",
        &["shop.example.com", "www.shop.example.com"],
    )?;
    let at = Instant::now();
    lab.api.apply(secret("shop-tls", &renewed)?);
    eventually("the renewed certificate is served", || async {
        Ok(curl(tls, "shop.example.com", "/", &renewed, &[])?.status == "200")
    })
    .await?;
    ensure!(at.elapsed() < Duration::from_secs(5), "{:?}", at.elapsed());
    ensure!(
        tether.logs().contains("TLS certificates changed"),
        "{}",
        tether.logs()
    );
    let old = curl(tls, "shop.example.com", "/", &first, &[])?;
    ensure!(
        !old.ok,
        "the old certificate is still served: {}",
        old.trace
    );
    let www = curl(tls, "www.shop.example.com", "/", &renewed, &[])?;
    ensure!(www.ok, "{}", www.trace);

    // A broken renewal (the key of another certificate): logged, the last good one stays, and
    // the other host is not affected.
    let mut broken = secret("shop-tls", &renewed)?;
    broken["data"]["tls.key"] = secret("other-tls", &other)?["data"]["tls.key"].clone();
    lab.api.apply(broken);
    eventually("the broken Secret is refused", || async {
        Ok(tether.logs().contains("certificate rejected"))
    })
    .await?;
    let logs = tether.logs();
    ensure!(logs.contains("Secret kong/shop-tls"), "{logs}");
    ensure!(
        !logs.contains("BEGIN PRIVATE KEY"),
        "a key reached the logs"
    );
    let still = curl(tls, "shop.example.com", "/", &renewed, &[])?;
    ensure!(still.ok && still.status == "200", "{}", still.trace);
    let fine = curl(tls, "other.example.com", "/", &other, &[])?;
    ensure!(fine.ok && fine.status == "200", "{}", fine.trace);
    Ok(())
}

#[tokio::test]
async fn kong_protocols_and_redirect_status() -> Result<()> {
    let dir = TempDir::new("kube-tls-kong")?;
    let site = Site::write(
        dir.path(),
        "kong",
        &[
            "moved.example.com",
            "upgrade.example.com",
            "http.example.com",
        ],
    )?;
    let kong = |name: &str, host: &str, protocols: &str| {
        annotate(ingress(name, host), "konghq.com/protocols", protocols)
    };
    let objects = vec![
        cluster::with_tls(
            annotate(
                kong("moved", "moved.example.com", "https"),
                "konghq.com/https-redirect-status-code",
                "301",
            ),
            &["moved.example.com"],
            "kong-tls",
        ),
        kong("upgrade", "upgrade.example.com", "https"),
        kong("http", "http.example.com", "http"),
        secret("kong-tls", &site)?,
    ];
    let lab = Lab::new(&["a"], objects)?;
    let (tether, tls) = start(&lab).await?;

    let (status, location) = plaintext(tether.proxy(), "moved.example.com", "/a")?;
    ensure!(status == "301", "{status}");
    ensure!(
        location == format!("https://moved.example.com:{}/a", tls.port()),
        "{location}"
    );
    let (status, location) = plaintext(tether.proxy(), "upgrade.example.com", "/a")?;
    ensure!(
        status == "426" && location.is_empty(),
        "{status} {location}"
    );
    let over_tls = curl(tls, "upgrade.example.com", "/a", &site, &[])?;
    ensure!(over_tls.status == "200", "{}", over_tls.trace);

    // protocols: http — over TLS the route does not match.
    let (status, _) = plaintext(tether.proxy(), "http.example.com", "/a")?;
    ensure!(status == "200", "{status}");
    let refused = curl(tls, "http.example.com", "/a", &site, &[])?;
    ensure!(refused.status == "404", "{}", refused.trace);
    Ok(())
}
