use super::*;
use crate::model::{SameSite, SessionCookie};
use serde_json::{json, Value};
use std::time::Duration;
use tether_tests::cluster::{self, annotate, Endpoint, NS};

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn created(mut object: Value, at: &str) -> Value {
    object["metadata"]["creationTimestamp"] = json!(at);
    object["metadata"]["uid"] = json!(format!(
        "uid-{}",
        object["metadata"]["name"].as_str().unwrap_or("x")
    ));
    object
}

fn key(object: &Value) -> Key {
    (
        object["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

/// A snapshot from object JSON, each put where its kind goes.
fn snapshot(objects: &[Value]) -> Snapshot {
    let mut snapshot = Snapshot::default();
    for (index, object) in objects.iter().enumerate() {
        let mut object = object.clone();
        if object["metadata"]["creationTimestamp"].is_null() {
            object = created(object, &format!("2024-01-01T00:00:{:02}Z", index % 60));
        }
        let key = key(&object);
        let parse = "fixture parses";
        match object["kind"].as_str() {
            Some("Service") => {
                snapshot
                    .services
                    .insert(key, serde_json::from_value(object).expect(parse));
            }
            Some("EndpointSlice") => {
                snapshot
                    .slices
                    .insert(key, serde_json::from_value(object).expect(parse));
            }
            Some("Ingress") => {
                snapshot
                    .ingresses
                    .insert(key, serde_json::from_value(object).expect(parse));
            }
            Some("HTTPRoute") => {
                snapshot
                    .http_routes
                    .insert(key, serde_json::from_value(object).expect(parse));
            }
            Some("KongUpstreamPolicy") => {
                snapshot
                    .policies
                    .insert(key, serde_json::from_value(object).expect(parse));
            }
            other => panic!("unexpected kind {other:?}"),
        }
    }
    snapshot
}

fn settings(drain: bool) -> Settings {
    Settings {
        drain,
        dialects: Dialects::ALL,
        ingress_classes: Vec::new(),
        kernel: false,
        node_ip: None,
    }
}

fn pods(endpoints: &[Endpoint]) -> Vec<Value> {
    endpoints.iter().map(cluster::pod_slice).collect()
}

fn three_pods() -> Vec<Endpoint> {
    vec![
        Endpoint::ready("a", addr(9001)),
        Endpoint::ready("b", addr(9002)),
        Endpoint::ready("c", addr(9003)),
    ]
}

fn attached_service() -> Value {
    annotate(
        cluster::echo_service(),
        UPSTREAM_POLICY,
        "sticky-session-policy",
    )
}

fn how_to(endpoints: &[Endpoint]) -> Vec<Value> {
    let mut objects = vec![
        attached_service(),
        cluster::echo_route(),
        cluster::sticky_policy("session_id"),
    ];
    objects.extend(pods(endpoints));
    objects
}

const ECHO: &str = "kong/echo:1027";

fn reasons(translated: &Translated) -> Vec<(&'static str, String, &'static str)> {
    translated
        .findings
        .iter()
        .map(|f| (f.regarding.kind, f.regarding.name.clone(), f.reason))
        .collect()
}

#[test]
fn the_how_to_becomes_a_sticky_service_behind_its_route() {
    let translated = translate(&snapshot(&how_to(&three_pods())), &settings(true));
    assert_eq!(
        translated.routes,
        vec![Route {
            host: None,
            path: PathMatch::Prefix("/echo".into()),
            service: ECHO.into()
        }]
    );
    let echo = &translated.services[ECHO];
    assert_eq!(
        echo.balancing,
        Balancing::StickySessions(SessionCookie::named("session_id"))
    );
    let targets: Vec<(SocketAddr, u32, TargetState)> = echo
        .targets
        .iter()
        .map(|t| (t.address, t.weight, t.state))
        .collect();
    assert_eq!(
        targets,
        vec![
            (addr(9001), 100, TargetState::Active),
            (addr(9002), 100, TargetState::Active),
            (addr(9003), 100, TargetState::Active)
        ]
    );
    assert!(translated.findings.is_empty(), "{:?}", translated.findings);
    assert_eq!(translated.services.len(), 1, "only routed Service ports");
}

#[test]
fn without_the_annotation_the_service_is_round_robin() {
    let mut objects = how_to(&three_pods());
    objects[0] = cluster::echo_service();
    let translated = translate(&snapshot(&objects), &settings(true));
    assert_eq!(translated.services[ECHO].balancing, Balancing::RoundRobin);
}

#[test]
fn drain_keeps_terminating_endpoints_at_weight_zero() {
    let endpoints = vec![
        Endpoint::ready("a", addr(9001)),
        Endpoint::terminating("b", addr(9002)),
        Endpoint::not_ready("c", addr(9003)),
    ];
    let with = translate(&snapshot(&how_to(&endpoints)), &settings(true));
    let targets: Vec<(SocketAddr, u32, TargetState)> = with.services[ECHO]
        .targets
        .iter()
        .map(|t| (t.address, t.weight, t.state))
        .collect();
    assert_eq!(
        targets,
        vec![
            (addr(9001), 100, TargetState::Active),
            (addr(9002), 0, TargetState::Draining)
        ],
        "terminating drains; not ready and not terminating is removed"
    );
    let without = translate(&snapshot(&how_to(&endpoints)), &settings(false));
    let addresses: Vec<SocketAddr> = without.services[ECHO]
        .targets
        .iter()
        .map(|t| t.address)
        .collect();
    assert_eq!(addresses, vec![addr(9001)], "KIC without drain support");
}

#[test]
fn terminating_drains_even_when_reported_ready() {
    // publishNotReadyAddresses: the controller reports every endpoint ready.
    let mut endpoint = Endpoint::terminating("a", addr(9001));
    endpoint.ready = true;
    let objects = how_to(&[endpoint, Endpoint::ready("b", addr(9002))]);
    let with = translate(&snapshot(&objects), &settings(true));
    assert_eq!(with.services[ECHO].targets[0].state, TargetState::Draining);
    let without = translate(&snapshot(&objects), &settings(false));
    assert_eq!(without.services[ECHO].targets[0].state, TargetState::Active);
}

#[test]
fn conditions_left_out_mean_ready() {
    let mut slice = cluster::pod_slice(&Endpoint::ready("a", addr(9001)));
    slice["endpoints"][0]
        .as_object_mut()
        .expect("endpoint")
        .remove("conditions");
    let objects = vec![cluster::echo_service(), cluster::echo_route(), slice];
    let translated = translate(&snapshot(&objects), &settings(false));
    assert_eq!(translated.services[ECHO].targets.len(), 1);
}

#[test]
fn an_endpoint_in_two_slices_is_one_target_and_active_wins() {
    let mut objects = how_to(&[Endpoint::terminating("a", addr(9001))]);
    let mut second = cluster::pod_slice(&Endpoint::ready("a", addr(9001)));
    second["metadata"]["name"] = json!("echo-moved");
    objects.push(second);
    let translated = translate(&snapshot(&objects), &settings(true));
    let targets = &translated.services[ECHO].targets;
    assert_eq!(targets.len(), 1);
    assert_eq!(targets[0].state, TargetState::Active);
}

#[test]
fn an_invalid_policy_is_reported_and_the_service_is_round_robin() {
    let mut objects = how_to(&three_pods());
    objects[2] = cluster::kong_upstream_policy(
        NS,
        "sticky-session-policy",
        json!({"algorithm": "sticky-sessions", "hashOn": {"input": "ip"}, "stickySessions": {"cookie": "c"}}),
    );
    let translated = translate(&snapshot(&objects), &settings(true));
    assert_eq!(translated.services[ECHO].balancing, Balancing::RoundRobin);
    let found = reasons(&translated);
    assert!(found.contains(&(
        "KongUpstreamPolicy",
        "sticky-session-policy".into(),
        "InvalidPolicy"
    )));
    assert!(found.contains(&("Service", "echo".into(), "InvalidPolicy")));
    let message = &translated
        .findings
        .iter()
        .find(|f| f.regarding.kind == "KongUpstreamPolicy")
        .expect("finding")
        .message;
    assert!(message.contains("spec.hashOn.input"), "{message}");

    objects.remove(2);
    let translated = translate(&snapshot(&objects), &settings(true));
    assert_eq!(
        reasons(&translated),
        vec![("Service", "echo".into(), "PolicyNotFound")]
    );
}

#[test]
fn ingress_nginx_annotations_make_the_cookie() {
    let mut objects = vec![cluster::echo_service(), cluster::nginx_sticky_ingress()];
    objects.extend(pods(&three_pods()));
    let translated = translate(&snapshot(&objects), &settings(true));
    let Balancing::StickySessions(cookie) = &translated.services[ECHO].balancing else {
        panic!("sticky expected: {:?}", translated.services[ECHO].balancing)
    };
    assert_eq!(cookie.name, "INGRESSCOOKIE");
    assert_eq!(cookie.path, "/echo", "the Ingress path");
    assert_eq!(cookie.max_age, Some(Duration::from_secs(172_800)));
    assert_eq!(cookie.expires, Some(Duration::from_secs(172_800)));
    assert!(!cookie.change_on_failure);
    assert!(translated.findings.is_empty(), "{:?}", translated.findings);
}

#[test]
fn a_kong_policy_wins_over_ingress_affinity_and_the_conflict_is_reported() {
    let mut objects = how_to(&three_pods());
    objects.push(cluster::nginx_sticky_ingress());
    let translated = translate(&snapshot(&objects), &settings(true));
    assert_eq!(
        translated.services[ECHO].balancing,
        Balancing::StickySessions(SessionCookie::named("session_id"))
    );
    let found = reasons(&translated);
    assert!(
        found.contains(&("Ingress", "nginx-test".into(), "PolicyConflict")),
        "{found:?}"
    );
    assert!(found.contains(&("Service", "echo".into(), "PolicyConflict")));
    // The Ingress's own route still routes (to the same Service).
    assert_eq!(translated.routes.len(), 1, "same path: one route");
}

#[test]
fn the_oldest_ingress_wins_within_a_tier() {
    let base = |name: &str, cookie: &str, path: &str, at: &str| {
        let mut ingress = cluster::ingress(NS, name, None, &[(path, "Prefix", "echo", 1027)]);
        ingress = annotate(ingress, "nginx.ingress.kubernetes.io/affinity", "cookie");
        ingress = annotate(
            ingress,
            "nginx.ingress.kubernetes.io/session-cookie-name",
            cookie,
        );
        created(ingress, at)
    };
    let objects = vec![
        cluster::echo_service(),
        base("newer", "NEWER", "/b", "2024-02-01T00:00:00Z"),
        base("older", "OLDER", "/a", "2024-01-01T00:00:00Z"),
    ];
    let translated = translate(&snapshot(&objects), &settings(true));
    let Balancing::StickySessions(cookie) = &translated.services[ECHO].balancing else {
        panic!("sticky expected")
    };
    assert_eq!(
        (cookie.name.as_str(), cookie.path.as_str()),
        ("OLDER", "/a")
    );
    assert!(reasons(&translated).contains(&("Ingress", "newer".into(), "PolicyConflict")));
}

#[test]
fn http_route_session_persistence() {
    let mut objects = vec![
        cluster::echo_service(),
        cluster::echo_route_with_persistence(json!({
            "sessionName": "gw-session", "type": "Cookie", "absoluteTimeout": "1h",
            "idleTimeout": "10m", "cookieConfig": {"lifetimeType": "Permanent"}
        })),
    ];
    objects.extend(pods(&three_pods()));
    let translated = translate(&snapshot(&objects), &settings(true));
    let Balancing::StickySessions(cookie) = &translated.services[ECHO].balancing else {
        panic!("sticky expected")
    };
    assert_eq!(cookie.name, "gw-session");
    assert_eq!(cookie.path, "/echo");
    assert_eq!(cookie.max_age, Some(Duration::from_secs(3600)));
    assert_eq!(cookie.absolute_timeout, Some(Duration::from_secs(3600)));
    assert_eq!(cookie.idle_timeout, Some(Duration::from_secs(600)));
    assert_eq!(cookie.same_site, Some(SameSite::Strict));

    // Permanent without absoluteTimeout is invalid: reported, round-robin.
    objects[1] = cluster::echo_route_with_persistence(
        json!({"sessionName": "s", "cookieConfig": {"lifetimeType": "Permanent"}}),
    );
    let translated = translate(&snapshot(&objects), &settings(true));
    assert_eq!(translated.services[ECHO].balancing, Balancing::RoundRobin);
    assert_eq!(
        reasons(&translated),
        vec![("HTTPRoute", "echo".into(), "InvalidSessionPersistence")]
    );
}

#[test]
fn weighted_backend_refs_share_new_sessions_by_weight() {
    let mut objects = vec![
        cluster::echo_service(),
        cluster::service(NS, "echo2", &[("http", 1027, "TCP")]),
        cluster::http_route(
            NS,
            "split",
            &["app.example.com"],
            json!([{
                "backendRefs": [
                    {"name": "echo", "port": 1027, "weight": 90},
                    {"name": "echo2", "port": 1027, "weight": 10}
                ],
                "sessionPersistence": {"sessionName": "split"}
            }]),
        ),
        cluster::endpoint_slice(
            NS,
            "echo2-x",
            "echo2",
            "http",
            9100,
            &[Endpoint::ready("d", addr(9100))],
        ),
    ];
    objects.extend(pods(&three_pods()));
    let translated = translate(&snapshot(&objects), &settings(true));
    let rule = &translated.services["httproute/kong/split/0"];
    assert!(matches!(rule.balancing, Balancing::StickySessions(ref c) if c.name == "split"));
    let total = |ports: &[u16]| -> u32 {
        rule.targets
            .iter()
            .filter(|t| ports.contains(&t.address.port()))
            .map(|t| t.weight)
            .sum()
    };
    let echo = f64::from(total(&[9001, 9002, 9003]));
    let echo2 = f64::from(total(&[9100]));
    assert!(
        (echo / (echo + echo2) - 0.9).abs() < 0.001,
        "{echo} vs {echo2}"
    );
    assert!(rule.targets.iter().all(|t| t.weight <= MAX_WEIGHT));
    assert_eq!(
        translated.routes,
        vec![Route {
            host: Some(HostMatch::Exact("app.example.com".into())),
            path: PathMatch::Prefix("/".into()),
            service: "httproute/kong/split/0".into()
        }]
    );
}

#[test]
fn ingress_paths_hosts_and_default_backend() {
    let mut ingress = cluster::ingress(
        NS,
        "web",
        Some("*.example.com"),
        &[
            ("/exact", "Exact", "echo", 1027),
            ("/any/", "ImplementationSpecific", "echo", 1027),
        ],
    );
    ingress["spec"]["defaultBackend"] =
        json!({"service": {"name": "echo", "port": {"name": "http"}}});
    let objects = vec![cluster::echo_service(), ingress];
    let translated = translate(&snapshot(&objects), &settings(true));
    let wildcard = Some(HostMatch::Wildcard("example.com".into()));
    let routes: Vec<(Option<HostMatch>, PathMatch)> = translated
        .routes
        .iter()
        .map(|r| (r.host.clone(), r.path.clone()))
        .collect();
    assert!(routes.contains(&(wildcard.clone(), PathMatch::Exact("/exact".into()))));
    assert!(routes.contains(&(wildcard, PathMatch::Prefix("/any".into()))));
    assert!(routes.contains(&(None, PathMatch::Prefix("/".into()))));
    assert!(translated.routes.iter().all(|r| r.service == ECHO));
}

#[test]
fn the_same_host_and_path_twice_goes_to_the_oldest() {
    let first = created(
        cluster::ingress(NS, "first", None, &[("/x", "Prefix", "echo", 1027)]),
        "2024-01-01T00:00:00Z",
    );
    let second = created(
        cluster::ingress(NS, "second", None, &[("/x", "Prefix", "other", 80)]),
        "2024-03-01T00:00:00Z",
    );
    let objects = vec![
        cluster::echo_service(),
        cluster::service(NS, "other", &[("http", 80, "TCP")]),
        second,
        first,
    ];
    let translated = translate(&snapshot(&objects), &settings(true));
    assert_eq!(translated.routes.len(), 1);
    assert_eq!(translated.routes[0].service, ECHO);
    assert!(reasons(&translated).contains(&("Ingress", "second".into(), "RouteConflict")));
}

#[test]
fn a_missing_backend_is_an_empty_service_and_a_finding() {
    let objects = vec![cluster::ingress(
        NS,
        "web",
        None,
        &[("/", "Prefix", "nope", 80)],
    )];
    let translated = translate(&snapshot(&objects), &settings(true));
    assert!(translated.services["kong/nope:80"].targets.is_empty());
    assert_eq!(
        reasons(&translated),
        vec![("Ingress", "web".into(), "BackendNotFound")]
    );
}

#[test]
fn dialects_can_be_turned_off() {
    let mut objects = how_to(&three_pods());
    objects.push(cluster::nginx_sticky_ingress());
    let mut nginx_only = settings(true);
    nginx_only.dialects = Dialects {
        kong: false,
        ingress_nginx: true,
        gateway_api: false,
    };
    let translated = translate(&snapshot(&objects), &nginx_only);
    let Balancing::StickySessions(cookie) = &translated.services[ECHO].balancing else {
        panic!("sticky expected")
    };
    assert_eq!(cookie.name, "INGRESSCOOKIE", "no Kong policy is read");
    assert!(translated.findings.is_empty(), "{:?}", translated.findings);
    assert_eq!(translated.routes.len(), 1, "the HTTPRoute is not read");
}

#[test]
fn ingress_classes_filter() {
    let objects = vec![cluster::echo_service(), cluster::nginx_sticky_ingress()];
    let mut only_kong = settings(true);
    only_kong.ingress_classes = vec!["kong".into()];
    assert!(translate(&snapshot(&objects), &only_kong).routes.is_empty());
    only_kong.ingress_classes = vec!["nginx".into()];
    assert_eq!(translate(&snapshot(&objects), &only_kong).routes.len(), 1);
}

#[test]
fn unsupported_matches_are_skipped_and_reported() {
    let objects = vec![
        cluster::echo_service(),
        cluster::http_route(
            NS,
            "odd",
            &[],
            json!([{
                "matches": [
                    {"path": {"type": "RegularExpression", "value": "/a.*"}},
                    {"path": {"type": "PathPrefix", "value": "/b"}, "headers": [{"name": "x", "value": "y"}]},
                    {"path": {"type": "Exact", "value": "/c"}}
                ],
                "backendRefs": [{"name": "echo", "port": 1027}]
            }]),
        ),
    ];
    let translated = translate(&snapshot(&objects), &settings(true));
    assert_eq!(
        translated
            .routes
            .iter()
            .map(|r| r.path.clone())
            .collect::<Vec<_>>(),
        vec![PathMatch::Exact("/c".into())]
    );
    assert_eq!(
        translated
            .findings
            .iter()
            .filter(|f| f.reason == "MatchNotSupported")
            .count(),
        2
    );
}

#[test]
fn load_balancer_node_port_and_client_ip_services_get_kernel_frontends() {
    let mut lb = cluster::service(NS, "lb", &[("http", 80, "TCP")]);
    lb["spec"]["type"] = json!("LoadBalancer");
    lb["spec"]["clusterIP"] = json!("10.96.0.20");
    lb["spec"]["clusterIPs"] = json!(["10.96.0.20"]);
    lb["spec"]["ports"][0]["nodePort"] = json!(30080);
    lb["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}});
    let mut sticky = cluster::service(NS, "affine", &[("dns", 53, "UDP")]);
    sticky["spec"]["clusterIP"] = json!("10.96.0.30");
    sticky["spec"]["clusterIPs"] = json!(["10.96.0.30"]);
    sticky["spec"]["sessionAffinity"] = json!("ClientIP");
    let objects = vec![
        lb,
        sticky,
        cluster::service(NS, "plain", &[("http", 80, "TCP")]),
        cluster::endpoint_slice(
            NS,
            "lb-1",
            "lb",
            "http",
            8080,
            &[Endpoint::ready("p", "10.1.0.5:8080".parse().expect("addr"))],
        ),
    ];
    let mut kernel = settings(true);
    kernel.kernel = true;
    kernel.node_ip = Some("192.0.2.1".parse().expect("ip"));
    let translated = translate(&snapshot(&objects), &kernel);
    let names: Vec<&str> = translated.services.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        vec![
            "kong/affine:53@10.96.0.30:53",
            "kong/lb:80@10.96.0.20:80",
            "kong/lb:80@192.0.2.10:80",
            "kong/lb:80@192.0.2.1:30080",
        ]
    );
    let lb = &translated.services["kong/lb:80@192.0.2.10:80"];
    let frontend = lb.frontend.expect("frontend");
    assert_eq!(frontend.hashing, KernelHashing::FiveTuple);
    assert_eq!(frontend.protocol, L4Protocol::Tcp);
    assert_eq!(lb.targets.len(), 1);
    let affine = translated.services["kong/affine:53@10.96.0.30:53"]
        .frontend
        .expect("frontend");
    assert_eq!(affine.hashing, KernelHashing::ClientIp);
    assert_eq!(affine.protocol, L4Protocol::Udp);
    // Without a dataplane there are none.
    assert!(translate(&snapshot(&objects), &settings(true))
        .services
        .is_empty());
}

#[test]
fn common_paths() {
    assert_eq!(common_path(&["/echo".into()]), "/echo");
    assert_eq!(common_path(&["/echo/a".into(), "/echo/b".into()]), "/echo");
    assert_eq!(common_path(&["/a".into(), "/b".into()]), "/");
    assert_eq!(common_path(&["/".into()]), "/");
    assert_eq!(common_path(&[]), "/");
}

/// A large cluster translates in well under the debounce window (printed for the record).
#[test]
fn a_thousand_services_translate_quickly() {
    let mut objects = Vec::new();
    for s in 0..1000u16 {
        let name = format!("svc{s}");
        objects.push(cluster::service(NS, &name, &[("http", 80, "TCP")]));
        let endpoints: Vec<Endpoint> = (0..10u16)
            .map(|e| {
                let ip = [10, (s / 256) as u8, (s % 256) as u8, e as u8 + 1];
                Endpoint::ready(&format!("{name}-{e}"), SocketAddr::from((ip, 8080)))
            })
            .collect();
        objects.push(cluster::endpoint_slice(
            NS,
            &format!("{name}-x"),
            &name,
            "http",
            8080,
            &endpoints,
        ));
        objects.push(cluster::ingress(
            NS,
            &name,
            Some(&format!("{name}.example.com")),
            &[("/", "Prefix", &name, 80)],
        ));
    }
    let snapshot = snapshot(&objects);
    let started = std::time::Instant::now();
    let translated = translate(&snapshot, &settings(true));
    let elapsed = started.elapsed();
    println!("1000 services x 10 targets translated in {elapsed:?}");
    assert_eq!(translated.services.len(), 1000);
    assert_eq!(translated.routes.len(), 1000);
    assert_eq!(translated.services["kong/svc999:80"].targets.len(), 10);
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
}
