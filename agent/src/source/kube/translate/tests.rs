use super::*;
use crate::model::{SameSite, SessionCookie};
use serde_json::{json, Value};
use std::time::Duration;
use tether_testkit::cluster::{self, annotate, Endpoint, NS};

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
            Some("Secret") => {
                snapshot
                    .secrets
                    .insert(key, serde_json::from_value(object).expect(parse));
            }
            Some("GatewayClass") => {
                snapshot
                    .gateway_classes
                    .insert(key, serde_json::from_value(object).expect(parse));
            }
            Some("Gateway") => {
                snapshot
                    .gateways
                    .insert(key, serde_json::from_value(object).expect(parse));
            }
            Some("ReferenceGrant") => {
                snapshot
                    .reference_grants
                    .insert(key, serde_json::from_value(object).expect(parse));
            }
            Some("Namespace") => {
                snapshot
                    .namespaces
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
        tls: false,
        gateway_classes: Vec::new(),
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
            service: ECHO.into(),
            allow_connect: false,
            plaintext: Plaintext::Serve,
            over_tls: true,
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
fn app_protocol_h2c_makes_an_h2c_service() {
    let translated = translate(&snapshot(&how_to(&three_pods())), &settings(true));
    assert_eq!(translated.services[ECHO].upstream, UpstreamProtocol::Http1);
    let mut objects = how_to(&three_pods());
    // Port 1027 ("http", the third) is the one the route uses.
    objects[0]["spec"]["ports"][2]["appProtocol"] = json!("kubernetes.io/h2c");
    let translated = translate(&snapshot(&objects), &settings(true));
    assert_eq!(translated.services[ECHO].upstream, UpstreamProtocol::H2c);
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
fn ingress_nginx_backend_protocol_grpc_makes_an_h2c_service() {
    let mut objects = vec![cluster::echo_service(), cluster::nginx_sticky_ingress()];
    objects.extend(pods(&three_pods()));
    let translated = translate(&snapshot(&objects), &settings(true));
    assert_eq!(translated.services[ECHO].upstream, UpstreamProtocol::Http1);
    objects[1] = annotate(
        cluster::nginx_sticky_ingress(),
        "nginx.ingress.kubernetes.io/backend-protocol",
        "GRPC",
    );
    let translated = translate(&snapshot(&objects), &settings(true));
    assert_eq!(translated.services[ECHO].upstream, UpstreamProtocol::H2c);
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
            service: "httproute/kong/split/0".into(),
            allow_connect: false,
            plaintext: Plaintext::Serve,
            over_tls: true,
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

fn tls_settings() -> Settings {
    Settings {
        tls: true,
        ..settings(false)
    }
}

/// (host, plaintext, over TLS) of every route.
fn schemes(translated: &Translated) -> Vec<(String, Plaintext, bool)> {
    translated
        .routes
        .iter()
        .map(|r| (describe_host(r.host.as_ref()), r.plaintext, r.over_tls))
        .collect()
}

#[test]
fn ingress_tls_brings_its_secret_and_redirects_its_hosts() {
    let shop = cluster::with_tls(
        cluster::ingress(
            NS,
            "shop",
            Some("shop.example.com"),
            &[("/", "Prefix", "echo", 1027)],
        ),
        &["shop.example.com"],
        "shop-tls",
    );
    let plain = cluster::ingress(
        NS,
        "plain",
        Some("plain.example.com"),
        &[("/", "Prefix", "echo", 1027)],
    );
    let objects = vec![
        cluster::echo_service(),
        shop.clone(),
        plain.clone(),
        cluster::tls_secret(NS, "shop-tls", "CHAIN", "KEY"),
    ];
    let translated = translate(&snapshot(&objects), &tls_settings());
    assert_eq!(
        translated
            .certificates
            .iter()
            .map(|c| (c.origin.as_str(), c.chain.as_slice(), c.key.as_slice()))
            .collect::<Vec<_>>(),
        [("Secret kong/shop-tls", &b"CHAIN"[..], &b"KEY"[..])]
    );
    assert_eq!(
        schemes(&translated),
        [
            ("shop.example.com".into(), Plaintext::Redirect(308), true),
            ("plain.example.com".into(), Plaintext::Serve, true),
        ]
    );
    assert!(translated.findings.is_empty(), "{:?}", translated.findings);

    // ssl-redirect: "false" serves plaintext too; the certificate stays.
    let off = annotate(
        shop.clone(),
        "nginx.ingress.kubernetes.io/ssl-redirect",
        "false",
    );
    let translated = translate(
        &snapshot(&[
            cluster::echo_service(),
            off,
            cluster::tls_secret(NS, "shop-tls", "C", "K"),
        ]),
        &tls_settings(),
    );
    assert_eq!(
        schemes(&translated),
        [("shop.example.com".into(), Plaintext::Serve, true)]
    );
    assert_eq!(translated.certificates.len(), 1);

    // Without a TLS listener: no certificates, no redirect (nothing would answer https).
    let translated = translate(&snapshot(&objects), &settings(false));
    assert!(translated.certificates.is_empty());
    assert!(schemes(&translated)
        .iter()
        .all(|(_, p, _)| *p == Plaintext::Serve));

    // Only ingress-nginx's dialect redirects by default.
    let kong_only = Settings {
        dialects: Dialects {
            kong: true,
            ingress_nginx: false,
            gateway_api: false,
        },
        ..tls_settings()
    };
    let translated = translate(&snapshot(&objects), &kong_only);
    assert!(schemes(&translated)
        .iter()
        .all(|(_, p, _)| *p == Plaintext::Serve));
    assert_eq!(translated.certificates.len(), 1);
}

#[test]
fn a_missing_tls_secret_is_reported_and_the_routes_still_serve() {
    let shop = cluster::with_tls(
        cluster::ingress(
            NS,
            "shop",
            Some("shop.example.com"),
            &[("/", "Prefix", "echo", 1027)],
        ),
        &["shop.example.com"],
        "missing",
    );
    let translated = translate(&snapshot(&[cluster::echo_service(), shop]), &tls_settings());
    assert!(translated.certificates.is_empty());
    assert_eq!(translated.routes.len(), 1);
    assert_eq!(
        reasons(&translated),
        [("Ingress", "shop".into(), "InvalidCertificate")]
    );
}

#[test]
fn kong_protocols_on_an_ingress() {
    let ingress = |name: &str, host: &str, protocols: &str| {
        annotate(
            cluster::ingress(NS, name, Some(host), &[("/", "Prefix", "echo", 1027)]),
            "konghq.com/protocols",
            protocols,
        )
    };
    let redirect = annotate(
        ingress("a", "a.example.com", "https"),
        "konghq.com/https-redirect-status-code",
        "301",
    );
    let objects = [
        cluster::echo_service(),
        redirect,
        ingress("b", "b.example.com", "https"),
        ingress("c", "c.example.com", "http"),
        // Kong's annotation wins over ingress-nginx's TLS redirect.
        cluster::with_tls(
            ingress("d", "d.example.com", "http,https"),
            &["d.example.com"],
            "d",
        ),
        ingress("e", "e.example.com", "ftp"),
    ];
    let translated = translate(&snapshot(&objects), &tls_settings());
    assert_eq!(
        schemes(&translated),
        [
            ("a.example.com".into(), Plaintext::Redirect(301), true),
            ("b.example.com".into(), Plaintext::Redirect(426), true),
            ("c.example.com".into(), Plaintext::Serve, false),
            ("d.example.com".into(), Plaintext::Serve, true),
            ("e.example.com".into(), Plaintext::Serve, true),
        ]
    );
    let found = reasons(&translated);
    assert!(
        found.contains(&("Ingress", "e".into(), "InvalidAnnotation")),
        "{found:?}"
    );
}

/// tether's GatewayClass and Gateway `kong/gw` (HTTP any host; HTTPS `*.example.com` with a
/// good certificate; HTTPS with a missing Secret; TCP), another controller's Gateway, and
/// routes attached every which way.
fn gateway_objects() -> Vec<Value> {
    let (chain, key) = crate::tls::certificate::tests::self_signed_pem(&["*.example.com"]);
    let route = |namespace: &str, name: &str, hosts: &[&str], parents: Value, service: &str| {
        cluster::with_parents(
            cluster::http_route(
                namespace,
                name,
                hosts,
                json!([{"backendRefs": [{"name": service, "port": 1027}]}]),
            ),
            parents,
        )
    };
    vec![
        cluster::echo_service(),
        cluster::gateway_class("tether", cluster::TETHER_CONTROLLER),
        cluster::gateway_class("other", "example.com/other"),
        cluster::gateway(
            NS,
            "gw",
            "tether",
            json!([
                cluster::http_listener("http", 80, None),
                cluster::https_listener("https", 443, Some("*.example.com"), "site-tls", None),
                cluster::https_listener("broken", 8443, Some("bad.example.com"), "missing", None),
                {"name": "tcp", "port": 9000, "protocol": "TCP"},
            ]),
        ),
        cluster::gateway(
            NS,
            "foreign",
            "other",
            json!([cluster::http_listener("http", 80, None)]),
        ),
        cluster::tls_secret(NS, "site-tls", &chain, &key),
        route(
            NS,
            "app",
            &["app.example.com"],
            json!([{"name": "gw", "sectionName": "https"}]),
            "echo",
        ),
        route(
            NS,
            "plain",
            &["plain.test"],
            json!([{"name": "gw", "sectionName": "http"}]),
            "echo",
        ),
        route(
            NS,
            "nohost",
            &["other.org"],
            json!([{"name": "gw", "sectionName": "https"}]),
            "echo",
        ),
        route(
            NS,
            "foreign",
            &["foreign.test"],
            json!([{"name": "foreign"}]),
            "echo",
        ),
        route(
            NS,
            "noparent",
            &[],
            json!([{"name": "gw", "sectionName": "nope"}]),
            "echo",
        ),
        route(
            NS,
            "nobackend",
            &["nb.test"],
            json!([{"name": "gw", "port": 80}]),
            "nosuch",
        ),
        route(
            "team",
            "elsewhere",
            &["team.test"],
            json!([{"name": "gw", "namespace": NS}]),
            "echo",
        ),
    ]
}

fn condition(conditions: &[gateways::Condition], type_: &str) -> (bool, &'static str, i64) {
    let found = conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} in {conditions:?}"));
    (found.status, found.reason, found.observed_generation)
}

#[test]
fn gateways_listeners_and_attached_routes() {
    let translated = translate(&snapshot(&gateway_objects()), &tls_settings());
    // Only routes attached to tether's listeners are served, as those listeners say.
    assert_eq!(
        schemes(&translated),
        [
            ("app.example.com".into(), Plaintext::NoMatch, true),
            ("plain.test".into(), Plaintext::Serve, false),
            ("nb.test".into(), Plaintext::Serve, false),
        ]
    );
    assert_eq!(
        translated
            .certificates
            .iter()
            .map(|c| c.origin.as_str())
            .collect::<Vec<_>>(),
        ["Secret kong/site-tls"]
    );
    let statuses = &translated.statuses;
    assert_eq!(statuses.classes.keys().collect::<Vec<_>>(), ["tether"]);
    let gateway = &statuses.gateways[&(NS.to_string(), "gw".to_string())];
    assert_eq!(
        statuses.gateways.len(),
        1,
        "the foreign Gateway is not tether's"
    );
    assert!(condition(&gateway.conditions, "Programmed").0);
    let listener = |name: &str| {
        gateway
            .listeners
            .iter()
            .find(|l| l.name == name)
            .unwrap_or_else(|| panic!("{name}"))
    };
    assert_eq!(listener("http").attached_routes, 2);
    assert_eq!(listener("https").attached_routes, 1);
    assert!(condition(&listener("https").conditions, "ResolvedRefs").0);
    assert_eq!(
        condition(&listener("https").conditions, "Conflicted"),
        (false, "NoConflicts", 0)
    );
    assert_eq!(
        condition(&listener("broken").conditions, "ResolvedRefs"),
        (false, "InvalidCertificateRef", 0)
    );
    assert!(!condition(&listener("broken").conditions, "Programmed").0);
    assert_eq!(
        condition(&listener("tcp").conditions, "Accepted"),
        (false, "UnsupportedProtocol", 0)
    );
    assert_eq!(listener("http").supported_kinds.len(), 1);

    let parent = |name: &str, namespace: &str| {
        let parents = &statuses.routes[&(namespace.to_string(), name.to_string())];
        assert_eq!(parents.len(), 1);
        parents[0].conditions.clone()
    };
    assert_eq!(condition(&parent("app", NS), "Accepted").1, "Accepted");
    assert_eq!(
        condition(&parent("app", NS), "ResolvedRefs").1,
        "ResolvedRefs"
    );
    assert_eq!(
        condition(&parent("nohost", NS), "Accepted").1,
        "NoMatchingListenerHostname"
    );
    assert_eq!(
        condition(&parent("noparent", NS), "Accepted").1,
        "NoMatchingParent"
    );
    assert_eq!(
        condition(&parent("elsewhere", "team"), "Accepted").1,
        "NotAllowedByListeners"
    );
    assert_eq!(
        condition(&parent("nobackend", NS), "ResolvedRefs"),
        (false, "BackendNotFound", 0)
    );
    assert!(!statuses
        .routes
        .contains_key(&(NS.to_string(), "foreign".to_string())));
}

#[test]
fn conflicting_listeners_are_conflicted_and_take_no_routes() {
    let objects = vec![
        cluster::echo_service(),
        cluster::gateway_class("tether", cluster::TETHER_CONTROLLER),
        cluster::gateway(
            NS,
            "gw",
            "tether",
            json!([
                cluster::http_listener("first", 80, Some("a.test")),
                cluster::http_listener("twin", 80, Some("a.test")),
                cluster::http_listener("alone", 80, Some("b.test")),
                cluster::http_listener("plain", 8080, None),
                cluster::https_listener("secure", 8080, None, "site-tls", None),
            ]),
        ),
        cluster::with_parents(
            cluster::http_route(
                NS,
                "twin-route",
                &[],
                json!([{"backendRefs": [{"name": "echo", "port": 1027}]}]),
            ),
            json!([{"name": "gw", "sectionName": "twin"}]),
        ),
        cluster::with_parents(
            cluster::http_route(
                NS,
                "alone-route",
                &[],
                json!([{"backendRefs": [{"name": "echo", "port": 1027}]}]),
            ),
            json!([{"name": "gw", "sectionName": "alone"}]),
        ),
    ];
    let translated = translate(&snapshot(&objects), &tls_settings());
    let gateway = &translated.statuses.gateways[&(NS.to_string(), "gw".to_string())];
    let listener = |name: &str| {
        gateway
            .listeners
            .iter()
            .find(|l| l.name == name)
            .unwrap_or_else(|| panic!("{name}"))
    };
    for (name, conflicted, reason) in [
        ("first", true, "HostnameConflict"),
        ("twin", true, "HostnameConflict"),
        ("alone", false, "NoConflicts"),
        ("plain", true, "ProtocolConflict"),
        ("secure", true, "ProtocolConflict"),
    ] {
        assert_eq!(
            condition(&listener(name).conditions, "Conflicted"),
            (conflicted, reason, 0),
            "{name}"
        );
        assert_eq!(
            condition(&listener(name).conditions, "Programmed").0,
            !conflicted,
            "{name}"
        );
    }
    assert_eq!(listener("twin").attached_routes, 0);
    assert_eq!(listener("alone").attached_routes, 1);
    // Only the route on the listener without a conflict is served, under its hostname.
    assert_eq!(
        schemes(&translated),
        [("b.test".into(), Plaintext::Serve, false)]
    );
    let parents = &translated.statuses.routes[&(NS.to_string(), "twin-route".to_string())];
    assert!(!condition(&parents[0].conditions, "Accepted").0);
}

#[test]
fn without_gateway_classes_every_route_is_served_as_before() {
    let objects: Vec<Value> = gateway_objects()
        .into_iter()
        .filter(|o| o["kind"] != "GatewayClass" || o["metadata"]["name"] != "tether")
        .collect();
    let translated = translate(&snapshot(&objects), &tls_settings());
    assert!(translated
        .routes
        .iter()
        .all(|r| r.plaintext == Plaintext::Serve && r.over_tls));
    assert!(translated.statuses.gateways.is_empty() && translated.statuses.routes.is_empty());
    // --gateway-class adds a class by name: Kong's Gateways work unchanged.
    let kong = Settings {
        gateway_classes: vec!["other".into()],
        ..tls_settings()
    };
    let translated = translate(&snapshot(&objects), &kong);
    assert_eq!(
        schemes(&translated),
        [("foreign.test".into(), Plaintext::Serve, false)]
    );
    // The adopted class's own status stays its controller's; its Gateway's is tether's.
    assert!(translated.statuses.classes.is_empty());
    assert!(translated
        .statuses
        .gateways
        .contains_key(&(NS.to_string(), "foreign".to_string())));
}

#[test]
fn a_cross_namespace_certificate_needs_a_reference_grant() {
    let (chain, key) = crate::tls::certificate::tests::self_signed_pem(&["a.example.com"]);
    let gateway = cluster::gateway(
        NS,
        "gw",
        "tether",
        json!([cluster::https_listener(
            "https",
            443,
            None,
            "shared",
            Some("certs")
        )]),
    );
    let mut objects = vec![
        cluster::gateway_class("tether", cluster::TETHER_CONTROLLER),
        gateway,
        cluster::tls_secret("certs", "shared", &chain, &key),
    ];
    let listener_resolved = |objects: &[Value]| {
        let translated = translate(&snapshot(objects), &tls_settings());
        let gateway = &translated.statuses.gateways[&(NS.to_string(), "gw".to_string())];
        (
            condition(&gateway.listeners[0].conditions, "ResolvedRefs"),
            translated.certificates.len(),
        )
    };
    assert_eq!(
        listener_resolved(&objects),
        ((false, "RefNotPermitted", 0), 0)
    );
    objects.push(cluster::reference_grant(
        "certs", "gateways", "Gateway", NS, "Secret",
    ));
    assert_eq!(listener_resolved(&objects), ((true, "ResolvedRefs", 0), 1));
}

#[test]
fn status_plans_write_once_and_keep_other_controllers_entries() {
    let mut objects = gateway_objects();
    // Another controller's entry on a route tether also serves.
    for object in &mut objects {
        if object["metadata"]["name"] == "app" {
            object["status"] = json!({"parents": [{
                "parentRef": {"name": "elsewhere"},
                "controllerName": "example.com/other",
                "conditions": []
            }]});
        }
    }
    let mut current = snapshot(&objects);
    let translated = translate(&current, &tls_settings());
    let writes = super::super::status::plan(&translated.statuses, &current, "2026-01-01T00:00:00Z");
    let targets: BTreeSet<(String, String)> = writes
        .iter()
        .map(|w| (w.namespace.clone(), w.name.clone()))
        .collect();
    assert!(
        targets.contains(&(String::new(), "tether".into())),
        "{targets:?}"
    );
    assert!(targets.contains(&(NS.into(), "gw".into())));
    assert!(targets.contains(&(NS.into(), "app".into())));
    assert!(!targets.contains(&(NS.into(), "foreign".into())));
    assert!(!targets.contains(&(String::new(), "other".into())));
    let app = writes.iter().find(|w| w.name == "app").expect("app");
    let parents = app.status["parents"].as_array().expect("parents");
    assert_eq!(parents.len(), 2, "{parents:?}");
    assert_eq!(parents[0]["controllerName"], "example.com/other");
    assert_eq!(parents[1]["controllerName"], cluster::TETHER_CONTROLLER);
    assert_eq!(
        parents[1]["parentRef"],
        json!({"name": "gw", "sectionName": "https"})
    );
    assert_eq!(
        parents[1]["conditions"][0]["lastTransitionTime"],
        "2026-01-01T00:00:00Z"
    );

    // Once written, nothing more to write (later, with the same conditions).
    for write in &writes {
        let key = (write.namespace.clone(), write.name.clone());
        let status = Some(write.status.clone());
        if let Some(o) = current.gateway_classes.get_mut(&key) {
            o.status = status.clone();
        }
        if let Some(o) = current.gateways.get_mut(&key) {
            o.status = status.clone();
        }
        if let Some(o) = current.http_routes.get_mut(&key) {
            o.status = status;
        }
    }
    let again = super::super::status::plan(&translated.statuses, &current, "2026-01-01T00:05:00Z");
    assert!(again.is_empty(), "{again:?}");
}

#[test]
fn each_rule_of_an_attached_route_keeps_its_own_session() {
    let rule = |path: &str, cookie: &str| {
        json!({
            "matches": [{"path": {"type": "PathPrefix", "value": path}}],
            "backendRefs": [{"name": "echo", "port": 1027}],
            "sessionPersistence": {"sessionName": cookie, "type": "Cookie"}
        })
    };
    let route = cluster::with_parents(
        cluster::http_route(
            NS,
            "two",
            &["two.example.com"],
            json!([rule("/a", "session-a"), rule("/b", "session-b")]),
        ),
        json!([{"name": "gw", "sectionName": "https"}]),
    );
    let mut objects = gateway_objects();
    objects.push(route);
    let translated = translate(&snapshot(&objects), &tls_settings());
    let cookies: Vec<(String, String, bool)> = translated
        .routes
        .iter()
        .filter(|r| r.host == Some(HostMatch::Exact("two.example.com".into())))
        .map(|r| {
            let Balancing::StickySessions(cookie) = &translated.services[&r.service].balancing
            else {
                panic!("{:?}", translated.services[&r.service]);
            };
            (r.service.clone(), cookie.name.clone(), cookie.secure)
        })
        .collect();
    assert_eq!(
        cookies,
        [
            ("httproute/kong/two/0".into(), "session-a".into(), true),
            ("httproute/kong/two/1".into(), "session-b".into(), true),
        ]
    );
    assert!(
        !translated
            .findings
            .iter()
            .any(|f| f.reason == "PolicyConflict"),
        "{:?}",
        translated.findings
    );
}
