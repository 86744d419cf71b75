//! Gateway API through the real `tether run --kubernetes` and the fake API server: tether's
//! GatewayClass and an HTTPS Gateway (certificate from a Secret), HTTPRoutes attached to its
//! listeners, and the status tether writes (only while it holds the status Lease).
use crate::fixtures::TETHER;
use crate::tls::{curl, tls_address, Site};
use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tether_testkit::agent::TempDir;
use tether_testkit::cluster::{self, NS};
use tether_testkit::kube_lab::{eventually, Lab};

const TLS_NODE: &str =
    "proxy:\n  listen: $PROXY\n  tls:\n    listen: 127.0.0.1:0\nadmin:\n  listen: $ADMIN\n";

fn secret(name: &str, site: &Site) -> Result<Value> {
    Ok(cluster::tls_secret(
        NS,
        name,
        &std::fs::read_to_string(&site.cert)?,
        &std::fs::read_to_string(&site.key)?,
    ))
}

/// The condition `type_` in `conditions`: (status, reason, observedGeneration).
fn condition(conditions: &Value, type_: &str) -> Option<(String, String, i64)> {
    let found = conditions.as_array()?.iter().find(|c| c["type"] == type_)?;
    Some((
        found["status"].as_str()?.to_string(),
        found["reason"].as_str()?.to_string(),
        found["observedGeneration"].as_i64()?,
    ))
}

fn listener<'a>(gateway: &'a Value, name: &str) -> &'a Value {
    gateway["status"]["listeners"]
        .as_array()
        .and_then(|listeners| listeners.iter().find(|l| l["name"] == name))
        .unwrap_or(&Value::Null)
}

fn is(found: Option<(String, String, i64)>, status: &str, reason: &str, generation: i64) -> bool {
    found == Some((status.to_string(), reason.to_string(), generation))
}

#[tokio::test]
async fn an_https_gateway_serves_attached_routes_and_its_status_is_written_by_the_lease_holder(
) -> Result<()> {
    let dir = TempDir::new("kube-gateway")?;
    let site = Site::write(dir.path(), "site", &["*.example.com"])?;
    let route = |name: &str, hosts: &[&str], section: &str, persistence: Option<Value>| {
        let mut rule = json!({"backendRefs": [{"name": "echo", "port": 1027}]});
        if let Some(persistence) = persistence {
            rule["sessionPersistence"] = persistence;
        }
        cluster::with_parents(
            cluster::http_route(NS, name, hosts, json!([rule])),
            json!([{"name": "gw", "sectionName": section}]),
        )
    };
    // Another agent holds the status Lease, for 2 s more (from now: the check below counts
    // from here, not from tether's start, which a loaded machine can make late).
    let now = tether_now(0);
    let lease_renewed = Instant::now();
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "tether-status", "namespace": NS},
        "spec": {"holderIdentity": "other-node", "leaseDurationSeconds": 2,
                 "acquireTime": now, "renewTime": now}
    });
    let objects = vec![
        lease,
        cluster::gateway_class("tether", cluster::TETHER_CONTROLLER),
        cluster::gateway(
            NS,
            "gw",
            "tether",
            json!([
                cluster::http_listener("http", 80, None),
                cluster::https_listener("https", 443, Some("*.example.com"), "site-tls", None),
                cluster::https_listener("broken", 8443, Some("bad.example.com"), "later-tls", None),
            ]),
        ),
        secret("site-tls", &site)?,
        route(
            "app",
            &["app.example.com"],
            "https",
            Some(json!({"sessionName": "gw-session", "type": "Cookie"})),
        ),
        route("plain", &["plain.example.com"], "http", None),
        // Not tether's: another controller's Gateway.
        cluster::with_parents(
            cluster::http_route(
                NS,
                "foreign",
                &["foreign.example.com"],
                json!([{"backendRefs": [{"name": "echo", "port": 1027}]}]),
            ),
            json!([{"name": "kong"}]),
        ),
    ];
    let lab = Lab::new(&["a", "b"], objects)?;
    let tether = lab.tether_on(TETHER, TLS_NODE, &[], &[], true).await?;
    let tls = tls_address(&tether)?;

    // The HTTPS listener's route over TLS, with a Secure session cookie of Session lifetime.
    let fetched = curl(tls, "app.example.com", "/", &site, &[])?;
    ensure!(fetched.ok && fetched.status == "200", "{}", fetched.trace);
    let cookie = fetched
        .trace
        .lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with("< set-cookie: gw-session=")
        })
        .with_context(|| fetched.trace.clone())?
        .to_string();
    ensure!(cookie.contains("Secure"), "{cookie}");
    let lower = cookie.to_ascii_lowercase();
    ensure!(
        !lower.contains("expires") && !lower.contains("max-age"),
        "{cookie}"
    );
    // Not over plaintext: it is attached to the HTTPS listener only.
    let http = tether_testkit::http::Http::new();
    let plain = http
        .get_with(&tether.url("/"), None, &[("host", "app.example.com")])
        .await?;
    ensure!(plain.status == 404, "{}", plain.status);
    let plain = http
        .get_with(&tether.url("/"), None, &[("host", "plain.example.com")])
        .await?;
    ensure!(plain.status == 200, "{}", plain.status);
    let foreign = http
        .get_with(&tether.url("/"), None, &[("host", "foreign.example.com")])
        .await?;
    ensure!(
        foreign.status == 404,
        "a route of another controller is served"
    );

    // The Lease is someone else's until it expires: no status before that.
    tokio::time::sleep(Duration::from_millis(800)).await;
    if lease_renewed.elapsed() < Duration::from_millis(1500) {
        ensure!(
            lab.api.writes().iter().all(|w| w.plural == "leases"),
            "{:?}",
            lab.api.writes()
        );
    }
    // Written object by object (class, Gateway, routes): wait for the last of them too.
    eventually("the status is written", || async {
        let gateway = lab.api.get("Gateway", NS, "gw").unwrap_or_default();
        let app = lab.api.get("HTTPRoute", NS, "app").unwrap_or_default();
        Ok(is(
            condition(&gateway["status"]["conditions"], "Programmed"),
            "True",
            "Programmed",
            1,
        ) && app["status"]["parents"]
            .as_array()
            .is_some_and(|p| !p.is_empty()))
    })
    .await?;
    let lease = lab.api.get("Lease", NS, "tether-status").context("lease")?;
    ensure!(lease["spec"]["holderIdentity"] == "test-node", "{lease}");

    let class = lab.api.get("GatewayClass", "", "tether").context("class")?;
    ensure!(
        is(
            condition(&class["status"]["conditions"], "Accepted"),
            "True",
            "Accepted",
            1
        ),
        "{class}"
    );
    let gateway = lab.api.get("Gateway", NS, "gw").context("gateway")?;
    ensure!(
        is(
            condition(&gateway["status"]["conditions"], "Accepted"),
            "True",
            "Accepted",
            1
        ),
        "{gateway}"
    );
    let https = listener(&gateway, "https");
    ensure!(https["attachedRoutes"] == 1, "{https}");
    ensure!(
        https["supportedKinds"]
            == json!([{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}]),
        "{https}"
    );
    for type_ in ["Accepted", "ResolvedRefs", "Programmed"] {
        ensure!(
            condition(&https["conditions"], type_).is_some_and(|c| c.0 == "True"),
            "{type_}: {https}"
        );
    }
    ensure!(listener(&gateway, "http")["attachedRoutes"] == 1);
    let broken = listener(&gateway, "broken");
    ensure!(
        is(
            condition(&broken["conditions"], "ResolvedRefs"),
            "False",
            "InvalidCertificateRef",
            1
        ),
        "{broken}"
    );
    let app = lab.api.get("HTTPRoute", NS, "app").context("route")?;
    let parents = app["status"]["parents"].as_array().context("parents")?;
    ensure!(parents.len() == 1, "{app}");
    ensure!(parents[0]["controllerName"] == cluster::TETHER_CONTROLLER);
    ensure!(
        parents[0]["parentRef"] == json!({"name": "gw", "sectionName": "https"}),
        "{app}"
    );
    ensure!(
        is(
            condition(&parents[0]["conditions"], "Accepted"),
            "True",
            "Accepted",
            1
        ),
        "{app}"
    );
    ensure!(
        is(
            condition(&parents[0]["conditions"], "ResolvedRefs"),
            "True",
            "ResolvedRefs",
            1
        ),
        "{app}"
    );
    let foreign = lab.api.get("HTTPRoute", NS, "foreign").context("foreign")?;
    ensure!(foreign["status"].is_null(), "{foreign}");
    // Status goes through /status only, each write naming the version it was made from.
    let writes = lab.api.writes();
    ensure!(
        writes
            .iter()
            .filter(|w| w.plural != "leases")
            .all(|w| w.subresource && w.body["metadata"]["resourceVersion"].is_string()),
        "{writes:?}"
    );

    // The missing Secret appears: that listener resolves and serves, the others keep working.
    let later = Site::write(dir.path(), "later", &["bad.example.com"])?;
    lab.api.apply(secret("later-tls", &later)?);
    eventually("the listener resolves", || async {
        let gateway = lab.api.get("Gateway", NS, "gw").unwrap_or_default();
        Ok(
            condition(&listener(&gateway, "broken")["conditions"], "ResolvedRefs")
                .is_some_and(|c| c.0 == "True"),
        )
    })
    .await?;
    let fetched = curl(tls, "app.example.com", "/", &site, &[])?;
    ensure!(fetched.ok && fetched.status == "200", "{}", fetched.trace);

    // Settled: no more status writes while nothing changes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let settled = lab
        .api
        .writes()
        .iter()
        .filter(|w| w.plural != "leases")
        .count();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = lab
        .api
        .writes()
        .iter()
        .filter(|w| w.plural != "leases")
        .count();
    ensure!(
        settled == after,
        "status rewritten without a change: {settled} → {after}"
    );
    Ok(())
}

/// A Kubernetes MicroTime `seconds` from now.
fn tether_now(seconds: i64) -> String {
    tether_testkit::clock::Utc::now_plus(seconds).micro_time()
}

/// Two agents: one holds the Lease and writes status; when it stops (SIGTERM, it gives the
/// Lease up) the other takes the Lease over within seconds and writes the next change (a
/// Gateway spec change: observedGeneration 2).
#[tokio::test]
async fn one_agent_writes_status_and_another_takes_over_when_it_is_gone() -> Result<()> {
    let gateway = |listeners: Value| cluster::gateway(NS, "gw", "tether", listeners);
    let objects = vec![
        cluster::gateway_class("tether", cluster::TETHER_CONTROLLER),
        gateway(json!([cluster::http_listener("http", 80, None)])),
        cluster::with_parents(
            cluster::http_route(
                NS,
                "plain",
                &["plain.example.com"],
                json!([{"backendRefs": [{"name": "echo", "port": 1027}]}]),
            ),
            json!([{"name": "gw"}]),
        ),
    ];
    let lab = Lab::new(&["a"], objects)?;
    let first = lab
        .tether_as(TETHER, TLS_NODE, "node-1", &[], &[], true)
        .await?;
    let second = lab
        .tether_as(TETHER, TLS_NODE, "node-2", &[], &[], true)
        .await?;
    eventually("the status is written", || async {
        let gateway = lab.api.get("Gateway", NS, "gw").unwrap_or_default();
        Ok(is(
            condition(&gateway["status"]["conditions"], "Accepted"),
            "True",
            "Accepted",
            1,
        ))
    })
    .await?;
    let holder = lab.api.get("Lease", NS, "tether-status").context("lease")?["spec"]
        ["holderIdentity"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let leading = |logs: String| logs.contains("leading=true");
    ensure!(
        leading(first.logs()) != leading(second.logs()),
        "exactly one leads:\n{}\n{}",
        first.logs(),
        second.logs()
    );
    let (leader, follower, follower_name) = if holder == "node-1" {
        (first, second, "node-2")
    } else {
        ensure!(holder == "node-2", "{holder}");
        (second, first, "node-1")
    };
    ensure!(leading(leader.logs()), "{}", leader.logs());
    leader.signal(libc::SIGTERM)?;
    eventually("the leader gives the Lease up", || async {
        Ok(leader.logs().contains("status Lease released"))
    })
    .await?;

    // The spec changes (a listener added): generation 2, written by the other agent (without
    // waiting the 15 s a Lease lasts).
    lab.api.apply(gateway(json!([
        cluster::http_listener("http", 80, None),
        cluster::http_listener("other", 8080, Some("other.example.com")),
    ])));
    let started = Instant::now();
    loop {
        let gateway = lab.api.get("Gateway", NS, "gw").unwrap_or_default();
        if is(
            condition(&gateway["status"]["conditions"], "Accepted"),
            "True",
            "Accepted",
            2,
        ) {
            let other = listener(&gateway, "other");
            ensure!(
                is(
                    condition(&other["conditions"], "Programmed"),
                    "True",
                    "Programmed",
                    2
                ),
                "{gateway}"
            );
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(8),
            "not taken over: {}",
            follower.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let lease = lab.api.get("Lease", NS, "tether-status").context("lease")?;
    ensure!(lease["spec"]["holderIdentity"] == follower_name, "{lease}");
    ensure!(lease["spec"]["leaseTransitions"] == 1, "{lease}");
    Ok(())
}
