//! Kubernetes objects as the API server returns them (real JSON: apiVersion, kind, metadata,
//! spec), for the translation's unit tests and the fake API server's scenarios. The seed
//! how-to's objects are here as they are applied there: the echo Service (Kong's
//! echo-service.yaml ports), the `echo` HTTPRoute, and the `sticky-session-policy`
//! KongUpstreamPolicy.
use serde_json::{json, Value};
use std::net::SocketAddr;

/// The how-to's namespace.
pub const NS: &str = "kong";

/// One endpoint of an EndpointSlice, with its conditions.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub address: SocketAddr,
    pub pod: String,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl Endpoint {
    /// A running, ready pod.
    pub fn ready(pod: &str, address: SocketAddr) -> Self {
        Self {
            address,
            pod: pod.to_string(),
            ready: true,
            serving: true,
            terminating: false,
        }
    }

    /// A pod being deleted that still serves (its preStop or grace period).
    pub fn terminating(pod: &str, address: SocketAddr) -> Self {
        Self {
            ready: false,
            serving: true,
            terminating: true,
            ..Self::ready(pod, address)
        }
    }

    /// A running pod whose readiness probe fails.
    pub fn not_ready(pod: &str, address: SocketAddr) -> Self {
        Self {
            ready: false,
            serving: false,
            terminating: false,
            ..Self::ready(pod, address)
        }
    }

    fn json(&self, namespace: &str) -> Value {
        json!({
            "addresses": [self.address.ip().to_string()],
            "conditions": {"ready": self.ready, "serving": self.serving, "terminating": self.terminating},
            "nodeName": "node-1",
            "targetRef": {"kind": "Pod", "namespace": namespace, "name": self.pod, "uid": format!("uid-pod-{}", self.pod)}
        })
    }
}

fn meta(namespace: &str, name: &str) -> Value {
    json!({"name": name, "namespace": namespace})
}

/// Sets `metadata.annotations[key] = value`.
pub fn annotate(mut object: Value, key: &str, value: &str) -> Value {
    let metadata = &mut object["metadata"];
    if !metadata["annotations"].is_object() {
        metadata["annotations"] = json!({});
    }
    metadata["annotations"][key] = json!(value);
    object
}

/// Removes `metadata.annotations[key]`.
pub fn unannotate(mut object: Value, key: &str) -> Value {
    if let Some(annotations) = object["metadata"]["annotations"].as_object_mut() {
        annotations.remove(key);
    }
    object
}

/// A ClusterIP Service; `ports` are (name, port, protocol).
pub fn service(namespace: &str, name: &str, ports: &[(&str, u16, &str)]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(port_name, port, protocol)| {
            json!({"name": port_name, "port": port, "protocol": protocol, "targetPort": port_name})
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(namespace, name),
        "spec": {
            "type": "ClusterIP",
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10"],
            "selector": {"app": name},
            "ports": ports,
            "sessionAffinity": "None"
        }
    })
}

/// Kong's echo-service.yaml Service: tcp 1025, udp 1026, http 1027.
pub fn echo_service() -> Value {
    service(
        NS,
        "echo",
        &[
            ("tcp", 1025, "TCP"),
            ("udp", 1026, "UDP"),
            ("http", 1027, "TCP"),
        ],
    )
}

/// An EndpointSlice of `service` whose port `port_name` is `port`.
pub fn endpoint_slice(
    namespace: &str,
    name: &str,
    service: &str,
    port_name: &str,
    port: u16,
    endpoints: &[Endpoint],
) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"
            },
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": service, "uid": format!("uid-svc-{service}"), "controller": true, "blockOwnerDeletion": true}]
        },
        "addressType": "IPv4",
        "endpoints": endpoints.iter().map(|e| e.json(namespace)).collect::<Vec<_>>(),
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}]
    })
}

/// The slice of one echo pod: pods listen on different loopback ports, so each pod's named
/// port resolves to its own number and gets its own slice, as the EndpointSlice controller
/// does when a named targetPort resolves differently per pod.
pub fn pod_slice(endpoint: &Endpoint) -> Value {
    endpoint_slice(
        NS,
        &format!("echo-{}", endpoint.pod),
        "echo",
        "http",
        endpoint.address.port(),
        std::slice::from_ref(endpoint),
    )
}

/// The how-to's KongUpstreamPolicy, with cookie `cookie`.
pub fn sticky_policy(cookie: &str) -> Value {
    kong_upstream_policy(
        NS,
        "sticky-session-policy",
        json!({
            "algorithm": "sticky-sessions",
            "hashOn": {"input": "none"},
            "stickySessions": {"cookie": cookie, "cookiePath": "/"}
        }),
    )
}

pub fn kong_upstream_policy(namespace: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "configuration.konghq.com/v1beta1",
        "kind": "KongUpstreamPolicy",
        "metadata": meta(namespace, name),
        "spec": spec
    })
}

/// An HTTPRoute with `rules` (Gateway API JSON), attached to the how-to's Gateway `kong`.
pub fn http_route(namespace: &str, name: &str, hostnames: &[&str], rules: Value) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": meta(namespace, name),
        "spec": {
            "parentRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "kong"}],
            "hostnames": hostnames,
            "rules": rules
        }
    })
}

/// The how-to's route: `/echo` to Service echo port 1027.
pub fn echo_route() -> Value {
    http_route(
        NS,
        "echo",
        &[],
        json!([{
            "matches": [{"path": {"type": "PathPrefix", "value": "/echo"}}],
            "backendRefs": [{"group": "", "kind": "Service", "name": "echo", "port": 1027, "weight": 1}]
        }]),
    )
}

/// The how-to's route with a `sessionPersistence` on its rule.
pub fn echo_route_with_persistence(persistence: Value) -> Value {
    let mut route = echo_route();
    route["spec"]["rules"][0]["sessionPersistence"] = persistence;
    route
}

/// An Ingress; `paths` are (path, pathType, service, port).
pub fn ingress(
    namespace: &str,
    name: &str,
    host: Option<&str>,
    paths: &[(&str, &str, &str, u16)],
) -> Value {
    let paths: Vec<Value> = paths
        .iter()
        .map(|(path, kind, service, port)| {
            json!({"path": path, "pathType": kind, "backend": {"service": {"name": service, "port": {"number": port}}}})
        })
        .collect();
    let mut rule = json!({"http": {"paths": paths}});
    if let Some(host) = host {
        rule["host"] = json!(host);
    }
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": meta(namespace, name),
        "spec": {"ingressClassName": "nginx", "rules": [rule]}
    })
}

/// The ingress-nginx sticky-sessions example, pointed at the echo Service.
pub fn nginx_sticky_ingress() -> Value {
    let mut ingress = ingress(NS, "nginx-test", None, &[("/echo", "Prefix", "echo", 1027)]);
    for (key, value) in [
        ("affinity", "cookie"),
        ("session-cookie-name", "INGRESSCOOKIE"),
        ("session-cookie-expires", "172800"),
        ("session-cookie-max-age", "172800"),
    ] {
        ingress = annotate(
            ingress,
            &format!("nginx.ingress.kubernetes.io/{key}"),
            value,
        );
    }
    ingress
}

/// A `kubernetes.io/tls` Secret holding `chain` and `key` (PEM), as cert-manager writes one.
pub fn tls_secret(namespace: &str, name: &str, chain: &str, key: &str) -> Value {
    use base64::Engine;
    let encode = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta(namespace, name),
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": encode(chain), "tls.key": encode(key)}
    })
}

/// Adds `spec.tls[]`: `hosts` served with the certificate in Secret `secret`.
pub fn with_tls(mut ingress: Value, hosts: &[&str], secret: &str) -> Value {
    let spec = &mut ingress["spec"];
    if !spec["tls"].is_array() {
        spec["tls"] = json!([]);
    }
    if let Some(entries) = spec["tls"].as_array_mut() {
        entries.push(json!({"hosts": hosts, "secretName": secret}));
    }
    ingress
}

/// tether's controllerName.
pub const TETHER_CONTROLLER: &str = "tether.dev/gateway-controller";

/// A GatewayClass of `controller`.
pub fn gateway_class(name: &str, controller: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GatewayClass",
        "metadata": {"name": name},
        "spec": {"controllerName": controller}
    })
}

/// A Gateway of class `class` with `listeners` (Gateway API listener objects).
pub fn gateway(namespace: &str, name: &str, class: &str, listeners: Value) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": meta(namespace, name),
        "spec": {"gatewayClassName": class, "listeners": listeners}
    })
}

/// An HTTP listener.
pub fn http_listener(name: &str, port: u16, hostname: Option<&str>) -> Value {
    let mut listener = json!({"name": name, "port": port, "protocol": "HTTP"});
    if let Some(hostname) = hostname {
        listener["hostname"] = json!(hostname);
    }
    listener
}

/// An HTTPS listener terminating TLS with the certificate in Secret `secret` (of `namespace`,
/// or the Gateway's).
pub fn https_listener(
    name: &str,
    port: u16,
    hostname: Option<&str>,
    secret: &str,
    namespace: Option<&str>,
) -> Value {
    let mut reference = json!({"group": "", "kind": "Secret", "name": secret});
    if let Some(namespace) = namespace {
        reference["namespace"] = json!(namespace);
    }
    let mut listener = json!({
        "name": name, "port": port, "protocol": "HTTPS",
        "tls": {"mode": "Terminate", "certificateRefs": [reference]}
    });
    if let Some(hostname) = hostname {
        listener["hostname"] = json!(hostname);
    }
    listener
}

/// Replaces a route's parentRefs.
pub fn with_parents(mut route: Value, parents: Value) -> Value {
    route["spec"]["parentRefs"] = parents;
    route
}

/// A ReferenceGrant in `namespace` letting `from_kind`s of `from_namespace` refer to `to_kind`s
/// (group "" for Secrets and Services).
pub fn reference_grant(
    namespace: &str,
    name: &str,
    from_kind: &str,
    from_namespace: &str,
    to_kind: &str,
) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1beta1",
        "kind": "ReferenceGrant",
        "metadata": meta(namespace, name),
        "spec": {
            "from": [{"group": "gateway.networking.k8s.io", "kind": from_kind, "namespace": from_namespace}],
            "to": [{"group": "", "kind": to_kind}]
        }
    })
}
