//! The seed how-to ("Manage sticky sessions with KongUpstreamPolicy", with drain support)
//! replayed end to end: the real `tether run --kubernetes` against a fake API server that
//! speaks the list/watch protocol, with in-process echo pods. The same story through
//! ingress-nginx annotations and through Gateway API sessionPersistence.
use crate::fixtures::{new_sessions, session_jar, sticky_echo, TETHER};
use anyhow::{ensure, Context, Result};
use serde_json::json;
use std::collections::BTreeSet;
use tether_testkit::agent::Tether;
use tether_testkit::cluster::{self, annotate, NS};
use tether_testkit::http::{CookieJar, Http};
use tether_testkit::kube_lab::{applied_after, eventually, Lab};
const POLICY: &str = "konghq.com/upstream-policy";

/// New sessions (no cookie) until one lands on `pod`; its cookie.
async fn session_on(http: &Http, url: &str, cookie: &str, pod: &str) -> Result<CookieJar> {
    session_jar(http, url, cookie, pod, 30).await
}

/// `count` requests with the jar's cookie: every one on `pod`, none re-issuing the cookie.
async fn stays_on(http: &Http, url: &str, jar: &CookieJar, pod: &str, count: usize) -> Result<()> {
    for _ in 0..count {
        let reply = http.get(url, jar.header().as_deref()).await?;
        ensure!(reply.status == 200, "status {}", reply.status);
        ensure!(
            reply.pod() == Some(pod),
            "went to {:?}, not {pod}",
            reply.pod()
        );
        ensure!(
            reply.set_cookies().is_empty(),
            "cookie re-issued: {:?}",
            reply.set_cookies()
        );
    }
    Ok(())
}

/// A request with the jar's (old) cookie lands elsewhere and gets a new cookie.
async fn re_pinned(http: &Http, url: &str, jar: &mut CookieJar, away_from: &str) -> Result<String> {
    let old = jar.value().map(str::to_string);
    let reply = http.get(url, jar.header().as_deref()).await?;
    ensure!(reply.status == 200, "status {}", reply.status);
    let pod = reply.pod().context("x-pod")?.to_string();
    ensure!(pod != away_from, "still on {away_from}");
    ensure!(jar.update(&reply), "no new cookie after re-pinning");
    ensure!(jar.value().map(str::to_string) != old, "the same cookie");
    Ok(pod)
}

/// A session on `pod` (cookie `cookie`) stays there for `follow_ups` requests; `pod` turns
/// terminating: the session stays, new sessions avoid it; `pod` is gone: the session re-pins.
async fn drains_then_re_pins(
    lab: &Lab,
    tether: &Tether,
    url: &str,
    cookie: &str,
    pod: &str,
    follow_ups: usize,
) -> Result<()> {
    let http = Http::new();
    let on_pod = session_on(&http, url, cookie, pod).await?;
    stays_on(&http, url, &on_pod, pod, follow_ups).await?;
    let before = tether.generation().await?;
    lab.terminating(pod);
    applied_after(tether, before).await?;
    stays_on(&http, url, &on_pod, pod, 5).await?;
    let landed = new_sessions(&http, url, 20).await?;
    ensure!(!landed.iter().any(|p| p == pod), "{landed:?}");

    let before = tether.generation().await?;
    lab.gone(pod);
    applied_after(tether, before).await?;
    let mut jar = on_pod;
    re_pinned(&http, url, &mut jar, pod).await?;
    Ok(())
}

/// The how-to: policy attached → sticky; scale down → the terminating pod drains with its
/// session kept; pod gone → the session re-pins.
#[tokio::test]
async fn the_kong_how_to_with_drain_support() -> Result<()> {
    let lab = Lab::new(&["a", "b", "c"], vec![cluster::echo_route()])?;
    let tether = lab.tether(TETHER, &["--enable-drain-support"]).await?;
    let http = Http::new();
    let url = tether.url("/echo");

    // The first agent created the shared cookie key.
    let secret = lab
        .api
        .get("Secret", NS, "tether-cookie-key")
        .context("the cookie Secret was created")?;
    ensure!(secret["data"]["key"].is_string(), "{secret}");
    ensure!(
        tether.logs().contains("origin=\"created\""),
        "{}",
        tether.logs()
    );

    // Before the policy: round-robin, no cookie.
    let reply = http.get(&url, None).await?;
    ensure!(reply.status == 200 && reply.set_cookies().is_empty());
    let spread: BTreeSet<String> = new_sessions(&http, &url, 6).await?.into_iter().collect();
    ensure!(spread.len() == 3, "{spread:?}");

    // kubectl apply the KongUpstreamPolicy; kubectl annotate the Service.
    lab.api.apply(cluster::sticky_policy("session_id"));
    lab.api.apply(annotate(
        cluster::echo_service(),
        POLICY,
        "sticky-session-policy",
    ));
    eventually("the policy applies", || async {
        Ok(http
            .get(&url, None)
            .await?
            .set_cookie("session_id")
            .is_some())
    })
    .await?;
    let reply = http.get(&url, None).await?;
    let header = reply.set_cookie("session_id").context("Set-Cookie")?;
    ensure!(header.contains("; Path=/"), "{header}");

    let on_b = session_on(&http, &url, "session_id", "b").await?;
    stays_on(&http, &url, &on_b, "b", 5).await?;
    let spread: BTreeSet<String> = new_sessions(&http, &url, 6).await?.into_iter().collect();
    ensure!(
        spread.len() == 3,
        "without the cookie requests spread: {spread:?}"
    );

    // kubectl scale --replicas 2: b's endpoint turns terminating.
    let before = tether.generation().await?;
    lab.terminating("b");
    applied_after(&tether, before).await?;
    stays_on(&http, &url, &on_b, "b", 10).await?;
    let landed = new_sessions(&http, &url, 30).await?;
    ensure!(
        !landed.iter().any(|p| p == "b"),
        "a new session on the draining pod: {landed:?}"
    );
    ensure!(
        tether
            .metric(
                "tether_drained_session_requests_total",
                &[("service", "kong/echo:1027")]
            )
            .await?
            >= 10.0
    );

    // The pod is gone: its endpoint disappears, the session re-pins.
    let before = tether.generation().await?;
    lab.gone("b");
    applied_after(&tether, before).await?;
    let mut jar = on_b;
    let moved = re_pinned(&http, &url, &mut jar, "b").await?;
    stays_on(&http, &url, &jar, &moved, 5).await?;
    if std::env::var_os("SHOW_LOGS").is_some() {
        println!("{}", tether.logs());
    }
    Ok(())
}

/// Without --enable-drain-support a terminating endpoint is removed at once (KIC's default):
/// its sessions re-pin at the next request.
#[tokio::test]
async fn without_drain_support_a_terminating_pod_is_removed_at_once() -> Result<()> {
    let lab = Lab::new(&["a", "b", "c"], sticky_echo("session_id"))?;
    let tether = lab.tether(TETHER, &[]).await?;
    let http = Http::new();
    let url = tether.url("/echo");
    let mut on_c = session_on(&http, &url, "session_id", "c").await?;
    stays_on(&http, &url, &on_c, "c", 5).await?;

    let before = tether.generation().await?;
    lab.terminating("c");
    applied_after(&tether, before).await?;
    // The pod still runs (it is terminating), but tether no longer sends anything there.
    let requests_before = lab.pod("c").requests();
    let moved = re_pinned(&http, &url, &mut on_c, "c").await?;
    stays_on(&http, &url, &on_c, &moved, 5).await?;
    let landed = new_sessions(&http, &url, 20).await?;
    ensure!(!landed.iter().any(|p| p == "c"), "{landed:?}");
    ensure!(lab.pod("c").requests() == requests_before);
    Ok(())
}

/// The same through ingress-nginx's annotations (its documented example), with drain.
#[tokio::test]
async fn ingress_nginx_affinity_with_drain() -> Result<()> {
    let lab = Lab::new(&["a", "b", "c"], vec![cluster::nginx_sticky_ingress()])?;
    let tether = lab.tether(TETHER, &["--enable-drain-support"]).await?;
    let http = Http::new();
    let url = tether.url("/echo");
    let reply = http.get(&url, None).await?;
    let header = reply.set_cookie("INGRESSCOOKIE").context("INGRESSCOOKIE")?;
    for attribute in [
        "; Path=/echo",
        "; Max-Age=172800",
        "; Expires=",
        "; HttpOnly",
    ] {
        ensure!(header.contains(attribute), "{attribute} missing: {header}");
    }
    ensure!(!header.contains("Secure"), "{header}");

    drains_then_re_pins(&lab, &tether, &url, "INGRESSCOOKIE", "a", 5).await
}

/// The same through Gateway API sessionPersistence: a Session cookie (no Expires, no Max-Age)
/// that keeps 50 follow-up requests on one pod, drain, and re-pinning.
#[tokio::test]
async fn gateway_api_session_persistence_with_drain() -> Result<()> {
    let lab = Lab::new(
        &["a", "b", "c"],
        vec![cluster::echo_route_with_persistence(json!({
            "sessionName": "gw-session",
            "type": "Cookie",
            "absoluteTimeout": "1h",
            "cookieConfig": {"lifetimeType": "Session"}
        }))],
    )?;
    let tether = lab.tether(TETHER, &["--enable-drain-support"]).await?;
    let http = Http::new();
    let url = tether.url("/echo");
    let reply = http.get(&url, None).await?;
    let header = reply.set_cookie("gw-session").context("gw-session")?;
    ensure!(
        !header.contains("Expires") && !header.contains("Max-Age"),
        "{header}"
    );
    ensure!(
        header.contains("; Path=/echo") && header.contains("SameSite=Strict"),
        "{header}"
    );

    drains_then_re_pins(&lab, &tether, &url, "gw-session", "c", 50).await
}

/// Weighted backendRefs: new sessions follow the weights; sessions stay where they are.
#[tokio::test]
async fn weighted_backend_refs_are_honoured_for_new_sessions() -> Result<()> {
    let lab = Lab::new(&["a", "b", "c"], Vec::new())?;
    let d = tether_testkit::echo::EchoServer::start("d")?;
    lab.api
        .apply(cluster::service(NS, "canary", &[("http", 1027, "TCP")]));
    lab.api.apply(cluster::endpoint_slice(
        NS,
        "canary-d",
        "canary",
        "http",
        d.address().port(),
        &[cluster::Endpoint::ready("d", d.address())],
    ));
    lab.api.apply(cluster::http_route(
        NS,
        "split",
        &[],
        json!([{
            "matches": [{"path": {"type": "PathPrefix", "value": "/echo"}}],
            "backendRefs": [
                {"name": "echo", "port": 1027, "weight": 3},
                {"name": "canary", "port": 1027, "weight": 1}
            ],
            "sessionPersistence": {"sessionName": "split"}
        }]),
    ));
    let tether = lab.tether(TETHER, &[]).await?;
    let http = Http::new();
    let url = tether.url("/echo");
    let landed = new_sessions(&http, &url, 200).await?;
    let on_canary = landed.iter().filter(|p| *p == "d").count();
    // 3:1 over echo's three pods and canary's one: each pod a quarter.
    ensure!(
        (40..=60).contains(&on_canary),
        "{on_canary} of 200 on the canary"
    );
    let on_d = session_on(&http, &url, "split", "d").await?;
    stays_on(&http, &url, &on_d, "d", 10).await?;
    Ok(())
}

/// The API server goes away: the last model keeps serving, sessions stay; when it is back the
/// watches resume and new changes apply.
#[tokio::test]
async fn the_api_server_lost_keeps_the_last_tables() -> Result<()> {
    let mut lab = Lab::new(&["a", "b"], sticky_echo("session_id"))?;
    let tether = lab.tether(TETHER, &["--enable-drain-support"]).await?;
    let http = Http::new();
    let url = tether.url("/echo");
    let on_b = session_on(&http, &url, "session_id", "b").await?;

    lab.api.stop();
    eventually("the watches notice", || async {
        Ok(tether.metric("tether_kube_watch_errors_total", &[]).await? > 0.0)
    })
    .await?;
    for _ in 0..10 {
        stays_on(&http, &url, &on_b, "b", 1).await?;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let reply = http
        .get(&format!("http://{}/readyz", tether.admin()), None)
        .await?;
    ensure!(
        reply.status == 200,
        "still ready while the API server is away"
    );

    // Back, and a change made while away (pod a terminating) shows up.
    lab.api.restart()?;
    let before = tether.generation().await?;
    lab.terminating("a");
    applied_after(&tether, before).await?;
    let landed = new_sessions(&http, &url, 10).await?;
    ensure!(landed.iter().all(|p| p == "b"), "{landed:?}");
    stays_on(&http, &url, &on_b, "b", 3).await?;
    lab.pod_mut("a").stop().await;
    Ok(())
}

/// 410 Gone: every watch is expired while lists are slow; tether lists again, keeps serving
/// every target meanwhile, and applies what changed only from the complete new lists.
#[tokio::test]
async fn gone_410_relists_without_dropping_a_target() -> Result<()> {
    let lab = Lab::new(&["a", "b", "c"], vec![cluster::echo_route()])?;
    let tether = lab.tether(TETHER, &["--enable-drain-support"]).await?;
    let http = Http::new();
    let url = tether.url("/echo");
    let before = tether.generation().await?;

    lab.api
        .set_list_delay(std::time::Duration::from_millis(1500));
    lab.api.expire();
    // Changed while the watches are gone: only a relist can show it.
    lab.terminating("c");
    let started = std::time::Instant::now();
    let mut seen = BTreeSet::new();
    while started.elapsed() < std::time::Duration::from_millis(1200) {
        let reply = http.get(&url, None).await?;
        ensure!(
            reply.status == 200,
            "status {} during the relist",
            reply.status
        );
        seen.insert(reply.pod().context("x-pod")?.to_string());
    }
    ensure!(
        seen.len() == 3,
        "every target served during the relist: {seen:?}"
    );
    lab.api.set_list_delay(std::time::Duration::ZERO);
    applied_after(&tether, before).await?;
    eventually("the relists are counted", || async {
        Ok(tether
            .metric(
                "tether_kube_relists_total",
                &[("resource", "endpointslices")],
            )
            .await?
            >= 1.0)
    })
    .await?;
    let landed = new_sessions(&http, &url, 12).await?;
    ensure!(!landed.iter().any(|p| p == "c"), "{landed:?}");
    // No model on the way had fewer than three targets (c drains, it is not dropped).
    for line in tether
        .logs()
        .lines()
        .filter(|l| l.contains("configuration applied"))
    {
        let targets = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("targets="))
            .context("targets=")?;
        ensure!(targets == "3", "a model dropped targets: {line}");
    }
    let lists = lab
        .api
        .seen()
        .iter()
        .filter(|s| s.path.ends_with("/endpointslices") && !s.query.contains("watch=true"))
        .count();
    ensure!(lists >= 2, "endpointslices listed {lists} times");
    Ok(())
}

/// A Service with a KongUpstreamPolicy behind an Ingress with affinity annotations: the
/// policy wins, and the conflict is posted as an Event (and logged). An invalid policy is an
/// Event too, and its Service is round-robin.
#[tokio::test]
async fn conflicts_and_invalid_policies_are_events() -> Result<()> {
    let lab = Lab::new(
        &["a", "b"],
        vec![
            cluster::sticky_policy("session_id"),
            annotate(cluster::echo_service(), POLICY, "sticky-session-policy"),
            cluster::nginx_sticky_ingress(),
        ],
    )?;
    let tether = lab.tether(TETHER, &[]).await?;
    let http = Http::new();
    let url = tether.url("/echo");
    let reply = http.get(&url, None).await?;
    ensure!(
        reply.set_cookie("session_id").is_some(),
        "the Kong policy wins"
    );
    ensure!(reply.set_cookie("INGRESSCOOKIE").is_none());
    let event_about = |kind: &str, name: &str, reason: &str| {
        lab.api.all("Event").into_iter().find(|e| {
            e["regarding"]["kind"] == kind
                && e["regarding"]["name"] == name
                && e["reason"] == reason
        })
    };
    eventually("the conflict Event", || async {
        Ok(
            event_about("Ingress", "nginx-test", "PolicyConflict").is_some()
                && event_about("Service", "echo", "PolicyConflict").is_some(),
        )
    })
    .await?;
    let event = event_about("Ingress", "nginx-test", "PolicyConflict").context("event")?;
    ensure!(
        event["type"] == "Warning" && event["reportingController"] == "tether",
        "{event}"
    );
    ensure!(event["reportingInstance"] == "test-node", "{event}");
    ensure!(tether.logs().contains("PolicyConflict"), "logged too");

    // Break the policy: reported, and the Service falls back (to the Ingress's affinity,
    // the next source in precedence).
    let before = tether.generation().await?;
    lab.api.apply(cluster::kong_upstream_policy(
        NS,
        "sticky-session-policy",
        json!({"algorithm": "sticky-sessions", "hashOn": {"input": "ip"}, "stickySessions": {"cookie": "session_id"}}),
    ));
    applied_after(&tether, before).await?;
    let reply = http.get(&url, None).await?;
    ensure!(
        reply.set_cookie("INGRESSCOOKIE").is_some(),
        "{:?}",
        reply.set_cookies()
    );
    eventually("the invalid policy Event", || async {
        Ok(event_about(
            "KongUpstreamPolicy",
            "sticky-session-policy",
            "InvalidPolicy",
        )
        .is_some())
    })
    .await?;

    // Without the Ingress: round-robin.
    let before = tether.generation().await?;
    lab.api.delete("Ingress", NS, "nginx-test");
    lab.api.apply(cluster::echo_route());
    applied_after(&tether, before).await?;
    eventually("round-robin", || async {
        Ok(http.get(&url, None).await?.set_cookies().is_empty())
    })
    .await?;
    ensure!(
        tether
            .metric("tether_kube_events_posted_total", &[])
            .await?
            >= 3.0
    );
    Ok(())
}

/// Two agents, one cookie key: the second finds the Secret the first created... and when the
/// first loses the create race (409), it reads the winner's key. A cookie from one agent is
/// valid on the other.
#[tokio::test]
async fn agents_share_the_cookie_secret_even_after_a_create_race() -> Result<()> {
    let lab = Lab::new(&["a", "b", "c"], sticky_echo("session_id"))?;
    lab.api.race_secret_create(json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "tether-cookie-key", "namespace": NS},
        "data": {"key": "d2lubmVyLWtleS13aW5uZXIta2V5LXdpbm5lci1rZXk="}
    }));
    let first = lab.tether(TETHER, &[]).await?;
    ensure!(
        first.logs().contains("read after another agent created it"),
        "{}",
        first.logs()
    );
    let conflicts = lab
        .api
        .seen()
        .iter()
        .filter(|s| s.method == "POST" && s.path.ends_with("/secrets") && s.status == 409)
        .count();
    ensure!(conflicts == 1);
    let second: Tether = lab.tether(TETHER, &[]).await?;
    ensure!(
        second.logs().contains("origin=\"read\""),
        "{}",
        second.logs()
    );
    let http = Http::new();
    for pod in ["a", "b", "c"] {
        let jar = session_on(&http, &first.url("/echo"), "session_id", pod).await?;
        stays_on(&http, &second.url("/echo"), &jar, pod, 3).await?;
    }
    Ok(())
}

/// A cluster without the Gateway API and Kong CRDs: those lists answer 404, tether treats them
/// as empty and serves the Ingresses.
#[tokio::test]
async fn missing_crds_count_as_empty() -> Result<()> {
    let lab = Lab::new(&["a"], vec![cluster::nginx_sticky_ingress()])?;
    lab.api.set_served("httproutes", false);
    lab.api.set_served("kongupstreampolicies", false);
    let tether = lab.tether(TETHER, &[]).await?;
    let reply = Http::new().get(&tether.url("/echo"), None).await?;
    ensure!(reply.status == 200 && reply.pod() == Some("a"));
    ensure!(
        tether.logs().contains("CRD is not installed"),
        "{}",
        tether.logs()
    );
    Ok(())
}

/// The ingress-nginx-only dialect reads no HTTPRoutes and no Kong policies (and needs no RBAC
/// for them): only Services, EndpointSlices and Ingresses are requested.
#[tokio::test]
async fn the_ingress_nginx_dialect_watches_only_what_it_needs() -> Result<()> {
    let lab = Lab::new(&["a"], vec![cluster::nginx_sticky_ingress()])?;
    let tether = lab.tether(TETHER, &["--dialects", "ingress-nginx"]).await?;
    let reply = Http::new().get(&tether.url("/echo"), None).await?;
    ensure!(reply.set_cookie("INGRESSCOOKIE").is_some());
    let paths: BTreeSet<String> = lab.api.seen().into_iter().map(|s| s.path).collect();
    ensure!(
        !paths
            .iter()
            .any(|p| p.contains("httproutes") || p.contains("kongupstreampolicies")),
        "{paths:?}"
    );
    Ok(())
}

/// ingress-nginx's session-cookie-change-on-failure: by default (false) a request whose pinned
/// pod refuses is served elsewhere but keeps its cookie, so the session is back on its pod
/// when the pod answers again; with "true" the session moves (a new cookie).
#[tokio::test]
async fn change_on_failure_follows_the_annotation() -> Result<()> {
    let mut lab = Lab::new(&["a", "b"], vec![cluster::nginx_sticky_ingress()])?;
    let tether = lab.tether(TETHER, &[]).await?;
    let http = Http::new();
    let url = tether.url("/echo");
    let on_a = session_on(&http, &url, "INGRESSCOOKIE", "a").await?;
    lab.pod_mut("a").stop().await;
    let reply = http.get(&url, on_a.header().as_deref()).await?;
    ensure!(
        reply.status == 200 && reply.pod() == Some("b"),
        "{:?}",
        reply.pod()
    );
    ensure!(
        reply.set_cookies().is_empty(),
        "the cookie stays: {:?}",
        reply.set_cookies()
    );
    lab.pod_mut("a").restart()?;
    // New sessions avoid a failed target for a while; a pinned session goes back at once.
    stays_on(&http, &url, &on_a, "a", 3).await?;

    let before = tether.generation().await?;
    lab.api.apply(annotate(
        cluster::nginx_sticky_ingress(),
        "nginx.ingress.kubernetes.io/session-cookie-change-on-failure",
        "true",
    ));
    applied_after(&tether, before).await?;
    // b has not failed yet, so new sessions still land there.
    let on_b = session_on(&http, &url, "INGRESSCOOKIE", "b").await?;
    lab.pod_mut("b").stop().await;
    let mut jar = on_b;
    re_pinned(&http, &url, &mut jar, "b").await?;
    lab.pod_mut("b").restart()?;
    stays_on(&http, &url, &jar, "a", 3).await?;
    Ok(())
}

/// A burst of EndpointSlice updates (a rollout) becomes a few models, not one per update,
/// and the last one holds the final state.
#[tokio::test]
async fn bursts_are_coalesced() -> Result<()> {
    let lab = Lab::new(&["a", "b", "c"], vec![cluster::echo_route()])?;
    let tether = lab.tether(TETHER, &["--enable-drain-support"]).await?;
    let before = tether
        .metric("tether_kube_models_applied_total", &[])
        .await?;
    for round in 0..10 {
        for pod in ["a", "b"] {
            if round % 2 == 0 {
                lab.terminating(pod);
            } else {
                lab.ready(pod);
            }
        }
    }
    lab.terminating("a");
    let http = Http::new();
    let url = tether.url("/echo");
    eventually("the final state", || async {
        let landed = new_sessions(&http, &url, 6).await?;
        Ok(landed.iter().all(|p| p != "a") && landed.iter().any(|p| p == "b"))
    })
    .await?;
    let models = tether
        .metric("tether_kube_models_applied_total", &[])
        .await?
        - before;
    println!("21 EndpointSlice updates in a burst became {models} models");
    ensure!(
        (1.0..=5.0).contains(&models),
        "21 slice updates became {models} models"
    );
    Ok(())
}

/// KIC's environment variable turns drain on as the flag does; the kubeconfig comes from
/// KUBECONFIG (the inferred configuration: in a pod it falls back to the service account).
#[tokio::test]
async fn kic_s_drain_variable_and_an_inferred_kubeconfig() -> Result<()> {
    let lab = Lab::new(&["a", "b"], sticky_echo("session_id"))?;
    let tether = lab
        .tether_with(
            TETHER,
            &[],
            &[("CONTROLLER_ENABLE_DRAIN_SUPPORT", "true")],
            false,
        )
        .await?;
    ensure!(tether.logs().contains("drain=true"), "{}", tether.logs());
    let http = Http::new();
    let url = tether.url("/echo");
    let on_a = session_on(&http, &url, "session_id", "a").await?;
    let before = tether.generation().await?;
    lab.terminating("a");
    applied_after(&tether, before).await?;
    stays_on(&http, &url, &on_a, "a", 3).await?;
    Ok(())
}

/// The API server is not there when tether starts: /healthz answers, /readyz does not, and
/// tether becomes ready once the server is up.
#[tokio::test]
async fn starts_once_the_api_server_is_up() -> Result<()> {
    let mut lab = Lab::new(&["a"], vec![cluster::echo_route()])?;
    lab.api.stop();
    let kubeconfig = lab.api.kubeconfig(lab.dir.path())?;
    let config = tether_testkit::agent::TempDir::new("late-api")?;
    let log = config.path().join("tether.log");
    let file = config.path().join("tether.yaml");
    let admin = tether_testkit::agent::free_port()?;
    std::fs::write(
        &file,
        format!("proxy:\n  listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:{admin}\n"),
    )?;
    let mut child = std::process::Command::new(TETHER)
        .args(["run", "--kubernetes", "--config"])
        .arg(&file)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--cookie-secret", "kong/tether-cookie-key"])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let http = Http::new();
    let status = |path: &'static str| {
        let http = http.clone();
        async move {
            http.get(&format!("http://127.0.0.1:{admin}{path}"), None)
                .await
                .map(|r| r.status.as_u16())
                .unwrap_or(0)
        }
    };
    eventually("/healthz answers", || async {
        Ok(status("/healthz").await == 200)
    })
    .await?;
    ensure!(child.try_wait()?.is_none());
    let child = Kill(child);
    ensure!(
        status("/readyz").await == 503,
        "not ready without the API server"
    );
    lab.api.restart()?;
    eventually("ready", || async { Ok(status("/readyz").await == 200) }).await?;
    let logs = std::fs::read_to_string(&log)?;
    ensure!(
        logs.contains("cannot read the cookie key Secret yet"),
        "{logs}"
    );
    drop(child);
    Ok(())
}

/// The cookie key Secret deleted: the agent puts it back with the key in use, so agents that
/// start later agree with the running ones.
#[tokio::test]
async fn a_deleted_cookie_secret_is_put_back() -> Result<()> {
    let lab = Lab::new(&["a"], vec![cluster::echo_route()])?;
    let _tether = lab.tether(TETHER, &[]).await?;
    let before = lab
        .api
        .get("Secret", NS, "tether-cookie-key")
        .context("created")?;
    ensure!(lab.api.delete("Secret", NS, "tether-cookie-key"));
    eventually("put back", || async {
        Ok(lab.api.get("Secret", NS, "tether-cookie-key").is_some())
    })
    .await?;
    let after = lab
        .api
        .get("Secret", NS, "tether-cookie-key")
        .context("back")?;
    ensure!(
        after["data"]["key"] == before["data"]["key"],
        "the same key"
    );
    ensure!(
        after["metadata"]["uid"] != before["metadata"]["uid"],
        "a new object"
    );
    Ok(())
}

/// No endpoint ready (every pod terminating, drain on): pinned sessions continue on their
/// draining pods, new sessions get 503, and the agent says so.
#[tokio::test]
async fn no_ready_endpoint_means_503_for_new_sessions() -> Result<()> {
    let lab = Lab::new(&["a", "b"], sticky_echo("session_id"))?;
    let tether = lab.tether(TETHER, &["--enable-drain-support"]).await?;
    let http = Http::new();
    let url = tether.url("/echo");
    let on_a = session_on(&http, &url, "session_id", "a").await?;
    let before = tether.generation().await?;
    lab.terminating("a");
    lab.terminating("b");
    eventually("both draining", || async {
        Ok(tether.generation().await? > before && http.get(&url, None).await?.status == 503)
    })
    .await?;
    let reply = http.get(&url, None).await?;
    ensure!(
        reply.text().contains("every target is draining"),
        "{}",
        reply.text()
    );
    stays_on(&http, &url, &on_a, "a", 3).await?;
    ensure!(
        tether.logs().contains("no ready target"),
        "{}",
        tether.logs()
    );
    // Both gone: nothing left, 503 for everyone.
    let before = tether.generation().await?;
    lab.gone("a");
    lab.gone("b");
    applied_after(&tether, before).await?;
    eventually("empty", || async {
        Ok(http.get(&url, on_a.header().as_deref()).await?.status == 503)
    })
    .await?;
    Ok(())
}

/// The API server over HTTPS with its own CA: the kubeconfig's certificate-authority-data is
/// what tether trusts.
#[tokio::test]
async fn https_with_the_kubeconfig_s_ca() -> Result<()> {
    use tether_testkit::fake_apiserver::{FakeApiServer, Tls};
    let api = FakeApiServer::start_tls(Tls::generate()?)?;
    ensure!(api.url().starts_with("https://"));
    let lab = Lab::on(api, &["a"], vec![cluster::echo_route()])?;
    let tether = lab.tether(TETHER, &[]).await?;
    let reply = Http::new().get(&tether.url("/echo"), None).await?;
    ensure!(reply.status == 200 && reply.pod() == Some("a"));
    Ok(())
}

/// In a pod: no kubeconfig, KUBERNETES_SERVICE_HOST/PORT, and the service account's token
/// and CA under /var/run/secrets/kubernetes.io/serviceaccount. tether runs in a private mount
/// namespace with a tmpfs on /run holding those files (the host's are untouched), against the
/// fake API server over HTTPS. Privileged (root: mount namespaces).
#[tokio::test]
async fn in_cluster_with_the_service_account() -> Result<()> {
    use std::ffi::CString;
    use std::os::unix::process::CommandExt;
    use tether_testkit::fake_apiserver::{FakeApiServer, Tls, TOKEN};
    if !tether_testkit::netns::privileged("in_cluster_with_the_service_account") {
        return Ok(());
    }
    let tls = Tls::generate()?;
    let ca = tls.ca_pem.clone();
    let lab = Lab::on(
        FakeApiServer::start_tls(tls)?,
        &["a"],
        vec![cluster::echo_route()],
    )?;
    let dir = tether_testkit::agent::TempDir::new("in-cluster")?;
    let admin = tether_testkit::agent::free_port()?;
    let file = dir.path().join("tether.yaml");
    std::fs::write(
        &file,
        format!("proxy:\n  listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:{admin}\n"),
    )?;
    let log = dir.path().join("tether.log");
    let run = std::fs::canonicalize("/var/run")?;
    let c = |s: &str| CString::new(s).context("nul");
    let directories = [
        c(&format!("{}/secrets", run.display()))?,
        c(&format!("{}/secrets/kubernetes.io", run.display()))?,
        c(&format!(
            "{}/secrets/kubernetes.io/serviceaccount",
            run.display()
        ))?,
    ];
    let account = format!("{}/secrets/kubernetes.io/serviceaccount", run.display());
    let files = [
        (c(&format!("{account}/token"))?, TOKEN.as_bytes().to_vec()),
        (c(&format!("{account}/ca.crt"))?, ca.into_bytes()),
        (
            c(&format!("{account}/namespace"))?,
            b"tether-system".to_vec(),
        ),
    ];
    let run_dir = c(&run.display().to_string())?;
    let (tmpfs, root) = (c("tmpfs")?, c("/")?);
    let mut command = std::process::Command::new(TETHER);
    command
        .args(["run", "--kubernetes", "--config"])
        .arg(&file)
        .args(["--cookie-secret", "kong/tether-cookie-key"])
        .env_remove("KUBECONFIG")
        .env("HOME", dir.path())
        .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        .env(
            "KUBERNETES_SERVICE_PORT",
            lab.api.address().port().to_string(),
        )
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log)?);
    // SAFETY: between fork and exec only async-signal-safe calls (unshare, mount, mkdir,
    // open, write, close) on memory prepared before the fork.
    unsafe {
        command.pre_exec(move || {
            let check = |result: libc::c_int| {
                if result < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(())
                }
            };
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                tmpfs.as_ptr(),
                run_dir.as_ptr(),
                tmpfs.as_ptr(),
                0,
                std::ptr::null(),
            ))?;
            for directory in &directories {
                check(libc::mkdir(directory.as_ptr(), 0o755))?;
            }
            for (path, content) in &files {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CREAT, 0o644);
                check(fd)?;
                let written = libc::write(fd, content.as_ptr().cast(), content.len());
                libc::close(fd);
                if written < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = Kill(command.spawn().context("start tether")?);
    let http = Http::new();
    let ready = eventually("ready in-cluster", || async {
        Ok(http
            .get(&format!("http://127.0.0.1:{admin}/readyz"), None)
            .await
            .map(|r| r.status == 200)
            .unwrap_or(false))
    })
    .await;
    let logs = std::fs::read_to_string(&log)?;
    ready.with_context(|| logs.clone())?;
    ensure!(
        logs.contains(&format!(
            "server=https://127.0.0.1:{}/",
            lab.api.address().port()
        )),
        "{logs}"
    );
    ensure!(lab.api.get("Secret", NS, "tether-cookie-key").is_some());
    // The host's /var/run is untouched.
    ensure!(
        !std::path::Path::new("/var/run/secrets/kubernetes.io/serviceaccount/token").exists()
            || std::fs::read(format!("{account}/token"))? != TOKEN.as_bytes()
    );
    Ok(())
}

/// Drain support off, through the other two dialects: a terminating pod's sessions re-pin at
/// once.
async fn removed_at_once(objects: Vec<serde_json::Value>, cookie: &str) -> Result<()> {
    let lab = Lab::new(&["a", "b", "c"], objects)?;
    let tether = lab.tether(TETHER, &[]).await?;
    let http = Http::new();
    let url = tether.url("/echo");
    let mut on_b = session_on(&http, &url, cookie, "b").await?;
    stays_on(&http, &url, &on_b, "b", 5).await?;
    let before = tether.generation().await?;
    lab.terminating("b");
    applied_after(&tether, before).await?;
    let moved = re_pinned(&http, &url, &mut on_b, "b").await?;
    stays_on(&http, &url, &on_b, &moved, 3).await?;
    let landed = new_sessions(&http, &url, 12).await?;
    ensure!(!landed.iter().any(|p| p == "b"), "{landed:?}");
    Ok(())
}

#[tokio::test]
async fn ingress_nginx_affinity_without_drain() -> Result<()> {
    removed_at_once(vec![cluster::nginx_sticky_ingress()], "INGRESSCOOKIE").await
}

#[tokio::test]
async fn gateway_api_session_persistence_without_drain() -> Result<()> {
    removed_at_once(
        vec![cluster::echo_route_with_persistence(
            json!({"sessionName": "gw-session"}),
        )],
        "gw-session",
    )
    .await
}
