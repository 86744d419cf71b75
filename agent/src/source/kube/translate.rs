//! The cluster's objects → the model's routes and services. Pure: a complete [`Snapshot`] in, a
//! model part and the [`Finding`]s worth an Event out, so every rule is unit-tested here.
//!
//! Names (stable as long as the objects are, and unique):
//! - `NAMESPACE/SERVICE:PORT`: a Service port (its `port` number) that routes lead to;
//! - `httproute/NAMESPACE/ROUTE/RULE`: an HTTPRoute rule with several backendRefs (weighted);
//! - `NAMESPACE/SERVICE:PORT@VIP:VIPPORT`: a kernel (L4) frontend of a Service port.
//!
//! Session policy precedence, for one Service port (see `resolve_balancing`):
//! 1. the KongUpstreamPolicy the Service names (`konghq.com/upstream-policy`);
//! 2. the `sessionPersistence` of HTTPRoute rules that lead to it;
//! 3. the ingress-nginx affinity annotations of Ingresses that lead to it;
//! 4. round-robin.
//!
//! Within one tier the oldest object (creationTimestamp, then namespace/name) wins. A source
//! that is invalid is reported and skipped (the next tier applies). Sources that disagree are
//! a conflict: the loser is reported on itself and on the Service.
use super::gateway;
use super::gateways::{self, Gateways, Statuses};
use super::nginx;
use super::resources::{Gateway, GatewayClass, HttpRoute, KongUpstreamPolicy, ReferenceGrant};
use super::tls::{self as cluster_tls, Schemes};
use crate::model::{
    Balancing, Frontend, HashOn, HostMatch, KernelHashing, L4Protocol, PathMatch, PemCertificate,
    Plaintext, Route, Service, Target, TargetState, UpstreamProtocol, DEFAULT_WEIGHT, MAX_WEIGHT,
};
use crate::source::{host_match, policy, prefix_match};
use k8s_openapi::api::core::v1::{Namespace, Secret, Service as KubeService, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

/// `konghq.com/upstream-policy`: the KongUpstreamPolicy a Service uses.
pub const UPSTREAM_POLICY: &str = "konghq.com/upstream-policy";
/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const INGRESS_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// (namespace, name)
pub type Key = (String, String);

/// Everything read from the cluster: only ever complete lists (see `store.rs`).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub services: BTreeMap<Key, KubeService>,
    pub slices: BTreeMap<Key, EndpointSlice>,
    pub ingresses: BTreeMap<Key, Ingress>,
    pub http_routes: BTreeMap<Key, HttpRoute>,
    pub policies: BTreeMap<Key, KongUpstreamPolicy>,
    /// `kubernetes.io/tls` Secrets (watched only when the node has a TLS listener).
    pub secrets: BTreeMap<Key, Secret>,
    /// Keyed ("", name).
    pub gateway_classes: BTreeMap<Key, GatewayClass>,
    pub gateways: BTreeMap<Key, Gateway>,
    pub reference_grants: BTreeMap<Key, ReferenceGrant>,
    /// Keyed ("", name): their labels, for listeners' `allowedRoutes.namespaces.selector`.
    pub namespaces: BTreeMap<Key, Namespace>,
}

/// Which configuration dialects are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dialects {
    /// KongUpstreamPolicy and `konghq.com/upstream-policy`; Ingress and HTTPRoute routes.
    pub kong: bool,
    /// Ingress routes and the `nginx.ingress.kubernetes.io/` affinity annotations.
    pub ingress_nginx: bool,
    /// HTTPRoute routes and their `sessionPersistence`.
    pub gateway_api: bool,
}

impl Dialects {
    pub const ALL: Dialects = Dialects {
        kong: true,
        ingress_nginx: true,
        gateway_api: true,
    };

    pub fn ingresses(self) -> bool {
        self.kong || self.ingress_nginx
    }

    pub fn http_routes(self) -> bool {
        self.kong || self.gateway_api
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// `--enable-drain-support`: terminating endpoints stay as draining targets.
    pub drain: bool,
    pub dialects: Dialects,
    /// Only Ingresses of these classes; empty: every Ingress.
    pub ingress_classes: Vec<String>,
    /// A dataplane is configured: LoadBalancer, NodePort and ClientIP Services get kernel
    /// frontends.
    pub kernel: bool,
    /// This node's address, for NodePort frontends.
    pub node_ip: Option<IpAddr>,
    /// The node has a TLS listener (`proxy.tls`): Ingress `spec.tls` Secrets become its
    /// certificates, and ingress-nginx's ssl-redirect applies to their hosts.
    pub tls: bool,
    /// `--gateway-class`: GatewayClasses that are tether's by name, besides those whose
    /// controllerName is tether's.
    pub gateway_classes: Vec<String>,
}

/// The object an Event is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub kind: &'static str,
    pub api_version: &'static str,
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl ObjectRef {
    fn of(kind: &'static str, api_version: &'static str, meta: &ObjectMeta) -> Self {
        Self {
            kind,
            api_version,
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
        }
    }

    fn service(meta: &ObjectMeta) -> Self {
        Self::of("Service", "v1", meta)
    }

    fn ingress(meta: &ObjectMeta) -> Self {
        Self::of("Ingress", "networking.k8s.io/v1", meta)
    }

    fn http_route(meta: &ObjectMeta) -> Self {
        Self::of("HTTPRoute", "gateway.networking.k8s.io/v1", meta)
    }

    fn policy(meta: &ObjectMeta) -> Self {
        Self::of(
            "KongUpstreamPolicy",
            "configuration.konghq.com/v1beta1",
            meta,
        )
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// Something worth a Warning Event on `regarding` (and a log line).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Finding {
    pub regarding: ObjectRef,
    /// UpperCamelCase, as Kubernetes reasons are.
    pub reason: &'static str,
    pub message: String,
}

/// The model's routes and services, and what to report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Translated {
    pub routes: Vec<Route>,
    pub services: BTreeMap<String, Service>,
    /// For the TLS listener, in Secret order (namespace/name).
    pub certificates: Vec<PemCertificate>,
    pub findings: BTreeSet<Finding>,
    /// The status tether's GatewayClasses, Gateways and the HTTPRoutes attached to them should
    /// have.
    pub statuses: Statuses,
}

pub fn translate(snapshot: &Snapshot, settings: &Settings) -> Translated {
    let mut slices: HashMap<Key, Vec<&EndpointSlice>> = HashMap::new();
    for ((namespace, _), slice) in &snapshot.slices {
        if let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        {
            slices
                .entry((namespace.clone(), service.clone()))
                .or_default()
                .push(slice);
        }
    }
    let mut translator = Translator {
        snapshot,
        settings,
        slices,
        findings: BTreeSet::new(),
        uses: BTreeMap::new(),
        rule_services: Vec::new(),
        routes: Vec::new(),
        tls_hosts: BTreeSet::new(),
        certificates: BTreeMap::new(),
        gateways: settings
            .dialects
            .gateway_api
            .then(|| Gateways::build(snapshot, &settings.gateway_classes, settings.tls)),
    };
    if settings.dialects.ingresses() {
        if settings.tls {
            for ingress in snapshot.ingresses.values() {
                translator.ingress_tls(ingress);
            }
        }
        for ingress in snapshot.ingresses.values() {
            translator.ingress(ingress);
        }
    }
    if settings.dialects.http_routes() {
        for route in snapshot.http_routes.values() {
            translator.http_route(route);
        }
    }
    translator.finish()
}

/// Where a route's backend leads: the model service name, and the Service port when it exists.
#[derive(Debug, Clone)]
struct Resolved {
    name: String,
    port: Option<(Key, ServicePort)>,
}

enum PortRef<'a> {
    Number(i32),
    Name(&'a str),
}

/// A source of a session policy for one model service.
#[derive(Debug, Clone)]
struct Candidate {
    /// 0 Kong, 1 Gateway API, 2 ingress-nginx.
    tier: u8,
    created: Option<Timestamp>,
    source: ObjectRef,
    balancing: Balancing,
}

impl Candidate {
    fn order(&self) -> (u8, Option<Timestamp>, &str, &str) {
        (
            self.tier,
            self.created,
            &self.source.namespace,
            &self.source.name,
        )
    }

    fn describe(&self) -> String {
        let what = match self.tier {
            0 => "KongUpstreamPolicy",
            1 => "sessionPersistence of HTTPRoute",
            _ => "ingress-nginx affinity of Ingress",
        };
        format!("{what} {}/{}", self.source.namespace, self.source.name)
    }
}

/// A Service port that routes lead to.
struct Use {
    port: Option<(Key, ServicePort)>,
    candidates: Vec<Candidate>,
    /// An Ingress with ingress-nginx's `backend-protocol: GRPC` leads here.
    grpc: bool,
}

/// An HTTPRoute rule over several backends: one model service with all their targets.
struct RuleService {
    name: String,
    route: ObjectRef,
    backends: Vec<(Resolved, u32)>,
    persistence: Option<Candidate>,
}

/// A route with what orders it: the oldest object first, so ties go to the oldest.
struct PendingRoute {
    order: (Option<Timestamp>, u8, String, String, usize, usize),
    source: ObjectRef,
    route: Route,
}

struct Translator<'a> {
    snapshot: &'a Snapshot,
    settings: &'a Settings,
    slices: HashMap<Key, Vec<&'a EndpointSlice>>,
    findings: BTreeSet<Finding>,
    uses: BTreeMap<String, Use>,
    rule_services: Vec<RuleService>,
    routes: Vec<PendingRoute>,
    /// Hosts some Ingress lists under `spec.tls` (lowercase; `*.example.com` as written).
    tls_hosts: BTreeSet<String>,
    certificates: BTreeMap<Key, PemCertificate>,
    /// tether's Gateways (with the gateway-api dialect).
    gateways: Option<Gateways>,
}

impl Translator<'_> {
    fn report(&mut self, regarding: &ObjectRef, reason: &'static str, message: impl Into<String>) {
        self.findings.insert(Finding {
            regarding: regarding.clone(),
            reason,
            message: message.into(),
        });
    }

    fn class_matches(&self, ingress: &Ingress) -> bool {
        if self.settings.ingress_classes.is_empty() {
            return true;
        }
        let class = ingress
            .spec
            .as_ref()
            .and_then(|s| s.ingress_class_name.clone())
            .or_else(|| {
                ingress
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(INGRESS_CLASS_ANNOTATION).cloned())
            });
        class.is_some_and(|c| self.settings.ingress_classes.contains(&c))
    }

    /// The Service port `reference` names, from a route of `from`.
    fn resolve(
        &mut self,
        namespace: &str,
        service: &str,
        reference: PortRef,
        from: &ObjectRef,
    ) -> Resolved {
        let wanted = match reference {
            PortRef::Number(number) => number.to_string(),
            PortRef::Name(name) => name.to_string(),
        };
        let key = (namespace.to_string(), service.to_string());
        let Some(found) = self.snapshot.services.get(&key) else {
            self.report(
                from,
                "BackendNotFound",
                format!(
                    "Service {namespace}/{service} does not exist: requests to its routes get 503"
                ),
            );
            return Resolved {
                name: format!("{namespace}/{service}:{wanted}"),
                port: None,
            };
        };
        let spec = found.spec.clone().unwrap_or_default();
        if spec.type_.as_deref() == Some("ExternalName") {
            self.report(
                from,
                "BackendNotSupported",
                format!("Service {namespace}/{service} is an ExternalName Service, which tether does not proxy: requests to its routes get 503"),
            );
            return Resolved {
                name: format!("{namespace}/{service}:{wanted}"),
                port: None,
            };
        }
        let port = spec
            .ports
            .unwrap_or_default()
            .into_iter()
            .find(|p| match reference {
                PortRef::Number(number) => p.port == number,
                PortRef::Name(name) => p.name.as_deref() == Some(name),
            });
        match port {
            Some(port) => Resolved {
                name: format!("{namespace}/{service}:{}", port.port),
                port: Some((key, port)),
            },
            None => {
                self.report(
                    from,
                    "BackendNotFound",
                    format!("Service {namespace}/{service} has no port {wanted}: requests to its routes get 503"),
                );
                Resolved {
                    name: format!("{namespace}/{service}:{wanted}"),
                    port: None,
                }
            }
        }
    }

    fn use_service(&mut self, resolved: &Resolved) {
        self.uses
            .entry(resolved.name.clone())
            .or_insert_with(|| Use {
                port: resolved.port.clone(),
                candidates: Vec::new(),
                grpc: false,
            });
    }

    fn add_route(
        &mut self,
        meta: &ObjectMeta,
        source: &ObjectRef,
        kind_rank: u8,
        index: (usize, usize),
        route: Route,
    ) {
        self.routes.push(PendingRoute {
            order: (
                meta.creation_timestamp.as_ref().map(|t| t.0),
                kind_rank,
                source.namespace.clone(),
                source.name.clone(),
                index.0,
                index.1,
            ),
            source: source.clone(),
            route,
        });
    }

    /// An Ingress's `spec.tls`: its hosts (for ingress-nginx's ssl-redirect) and the
    /// certificates of the Secrets it names.
    fn ingress_tls(&mut self, ingress: &Ingress) {
        if !self.class_matches(ingress) {
            return;
        }
        let object = ObjectRef::ingress(&ingress.metadata);
        for entry in ingress
            .spec
            .iter()
            .flat_map(|spec| spec.tls.iter().flatten())
        {
            for host in entry.hosts.iter().flatten() {
                self.tls_hosts.insert(host.trim().to_ascii_lowercase());
            }
            // No secretName: ingress-nginx serves its default certificate; tether's first.
            let Some(name) = entry.secret_name.as_deref().filter(|n| !n.is_empty()) else {
                continue;
            };
            let key = (object.namespace.clone(), name.to_string());
            if self.certificates.contains_key(&key) {
                continue;
            }
            match cluster_tls::certificate(&key.0, &key.1, self.snapshot.secrets.get(&key)) {
                Ok(certificate) => {
                    self.certificates.insert(key, certificate);
                }
                Err(message) => self.report(&object, "InvalidCertificate", message),
            }
        }
    }

    /// What one of `object`'s routes to `host` does with plaintext and TLS requests: Kong's
    /// `protocols` when given, else ingress-nginx's ssl-redirect.
    fn schemes(
        &mut self,
        object: &ObjectRef,
        annotations: &BTreeMap<String, String>,
        kong: Option<Schemes>,
        host: Option<&HostMatch>,
    ) -> Schemes {
        if let Some(kong) = kong {
            return kong;
        }
        if !self.settings.dialects.ingress_nginx {
            return Schemes::default();
        }
        let tls_host = self.settings.tls
            && host.is_some_and(|host| self.tls_hosts.contains(&describe_host(Some(host))));
        let (schemes, warnings) = cluster_tls::nginx_schemes(annotations, tls_host);
        for warning in warnings {
            self.report(object, "InvalidAnnotation", warning);
        }
        schemes
    }

    fn ingress(&mut self, ingress: &Ingress) {
        if !self.class_matches(ingress) {
            return;
        }
        let meta = &ingress.metadata;
        let object = ObjectRef::ingress(meta);
        let namespace = object.namespace.clone();
        let annotations = meta.annotations.clone().unwrap_or_default();
        let nginx = self.settings.dialects.ingress_nginx;
        let regex = nginx && nginx::uses_regex(&annotations);
        if regex {
            self.report(
                &object,
                "RegexPathNotSupported",
                "regular-expression paths (use-regex, rewrite-target) are not supported: paths are matched as literal prefixes",
            );
        }
        let Some(spec) = &ingress.spec else { return };
        let kong_schemes =
            match cluster_tls::kong_schemes(&annotations).filter(|_| self.settings.dialects.kong) {
                Some(Ok(schemes)) => Some(schemes),
                Some(Err(message)) => {
                    self.report(&object, "InvalidAnnotation", message);
                    Some(Schemes::default())
                }
                None => None,
            };
        // Cookie paths per model service: the paths of this Ingress that lead there.
        let mut paths: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut index = 0;
        if let Some(backend) = spec
            .default_backend
            .as_ref()
            .and_then(|b| b.service.as_ref())
        {
            if let Some(resolved) = self.ingress_backend(&namespace, backend, &object) {
                self.use_service(&resolved);
                paths
                    .entry(resolved.name.clone())
                    .or_default()
                    .push("/".into());
                let schemes = self.schemes(&object, &annotations, kong_schemes, None);
                let route = Route {
                    host: None,
                    path: PathMatch::Prefix("/".into()),
                    service: resolved.name,
                    allow_connect: false,
                    plaintext: schemes.plaintext,
                    over_tls: schemes.over_tls,
                };
                self.add_route(meta, &object, 0, (usize::MAX, 0), route);
            }
        }
        for rule in spec.rules.iter().flatten() {
            let host = match rule.host.as_deref().filter(|h| !h.is_empty()) {
                None => None,
                Some(host) => match host_match(host) {
                    Ok(host) => Some(host),
                    Err(message) => {
                        self.report(&object, "InvalidHost", message);
                        continue;
                    }
                },
            };
            for path in rule.http.iter().flat_map(|h| &h.paths) {
                index += 1;
                let text = path.path.clone().unwrap_or_else(|| "/".into());
                if !text.starts_with('/') {
                    self.report(
                        &object,
                        "InvalidPath",
                        format!("path {text:?} must start with /; skipped"),
                    );
                    continue;
                }
                let matched = match path.path_type.as_str() {
                    "Exact" => PathMatch::Exact(text.clone()),
                    // ImplementationSpecific is a prefix in tether (as Kong treats it).
                    _ => prefix_match(&text),
                };
                let Some(backend) = &path.backend.service else {
                    self.report(
                        &object,
                        "BackendNotSupported",
                        format!("path {text:?}: only Service backends are supported; skipped"),
                    );
                    continue;
                };
                let Some(resolved) = self.ingress_backend(&namespace, backend, &object) else {
                    continue;
                };
                self.use_service(&resolved);
                let cookie_path = match &matched {
                    PathMatch::Exact(p) | PathMatch::Prefix(p) => p.clone(),
                };
                paths
                    .entry(resolved.name.clone())
                    .or_default()
                    .push(cookie_path);
                let schemes = self.schemes(&object, &annotations, kong_schemes, host.as_ref());
                let route = Route {
                    host: host.clone(),
                    path: matched,
                    service: resolved.name,
                    allow_connect: false,
                    plaintext: schemes.plaintext,
                    over_tls: schemes.over_tls,
                };
                self.add_route(meta, &object, 0, (0, index), route);
            }
        }
        if !nginx {
            return;
        }
        let grpc = nginx::grpc_backend(&annotations);
        for (service, paths) in paths {
            if grpc {
                if let Some(used) = self.uses.get_mut(&service) {
                    used.grpc = true;
                }
            }
            let default_path = common_path(&paths);
            match nginx::affinity(&annotations, &default_path, regex) {
                None => {}
                Some(Err(message)) => self.report(&object, "InvalidAffinity", message),
                Some(Ok(affinity)) => {
                    for warning in affinity.warnings {
                        self.report(&object, "AffinityAnnotation", warning);
                    }
                    let candidate = Candidate {
                        tier: 2,
                        created: meta.creation_timestamp.as_ref().map(|t| t.0),
                        source: object.clone(),
                        balancing: Balancing::StickySessions(affinity.cookie),
                    };
                    if let Some(used) = self.uses.get_mut(&service) {
                        used.candidates.push(candidate);
                    }
                }
            }
        }
    }

    fn ingress_backend(
        &mut self,
        namespace: &str,
        backend: &k8s_openapi::api::networking::v1::IngressServiceBackend,
        from: &ObjectRef,
    ) -> Option<Resolved> {
        let port = backend.port.as_ref();
        let reference = match (
            port.and_then(|p| p.number),
            port.and_then(|p| p.name.as_deref()),
        ) {
            (Some(number), _) => PortRef::Number(number),
            (None, Some(name)) => PortRef::Name(name),
            (None, None) => {
                self.report(
                    from,
                    "BackendNotFound",
                    format!("backend Service {} names no port; skipped", backend.name),
                );
                return None;
            }
        };
        Some(self.resolve(namespace, &backend.name, reference, from))
    }

    fn http_route(&mut self, route: &HttpRoute) {
        let meta = &route.metadata;
        let object = ObjectRef::http_route(meta);
        let namespace = object.namespace.clone();
        let route_key = (namespace.clone(), object.name.clone());
        // With Gateways of tether's: only routes attached to them, served as their listeners
        // say; otherwise every route, over both listeners.
        let attached = match self.gateways.as_mut() {
            Some(gateways) if gateways.active => {
                let attachments = gateways.attach(route, &self.snapshot.namespaces);
                if !gateways.has_route(&route_key) {
                    return;
                }
                Some(attachments)
            }
            _ => None,
        };
        let mut hosts: Vec<(Option<HostMatch>, Plaintext, bool)> = Vec::new();
        let mut secure = false;
        match &attached {
            None => {
                for hostname in &route.spec.hostnames {
                    match host_match(hostname) {
                        Ok(host) => hosts.push((Some(host), Plaintext::Serve, true)),
                        Err(message) => self.report(&object, "InvalidHost", message),
                    }
                }
                if hosts.is_empty() {
                    if !route.spec.hostnames.is_empty() {
                        return;
                    }
                    hosts.push((None, Plaintext::Serve, true));
                }
            }
            Some(attachments) => {
                // Per host: over plaintext, over TLS.
                let mut ways: BTreeMap<Option<String>, (bool, bool)> = BTreeMap::new();
                for attachment in attachments {
                    for host in &attachment.hosts {
                        let way = ways.entry(host.clone()).or_default();
                        if attachment.tls {
                            way.1 = true;
                        } else {
                            way.0 = true;
                        }
                    }
                }
                secure = !attachments.is_empty() && attachments.iter().all(|a| a.secure);
                for (host, (plain, tls)) in ways {
                    match gateways::host(&host) {
                        Ok(host) => hosts.push((
                            host,
                            if plain {
                                Plaintext::Serve
                            } else {
                                Plaintext::NoMatch
                            },
                            tls,
                        )),
                        Err(message) => self.report(&object, "InvalidHost", message),
                    }
                }
            }
        }
        // The first problem with the route's backends, for its ResolvedRefs condition.
        let mut backend_problem: Option<(&'static str, String)> = None;
        for (rule_index, rule) in route.spec.rules.iter().enumerate() {
            let mut paths = Vec::new();
            let default_match = [Default::default()];
            let matches = rule.matches.as_deref().unwrap_or(&default_match);
            for found in matches {
                if !found.headers.is_empty()
                    || !found.query_params.is_empty()
                    || found.method.is_some()
                {
                    self.report(
                        &object,
                        "MatchNotSupported",
                        format!("rule {rule_index}: header, query parameter and method matches are not supported; that match is skipped"),
                    );
                    continue;
                }
                let (kind, value) = match &found.path {
                    None => ("PathPrefix", "/".to_string()),
                    Some(path) => (
                        path.type_.as_deref().unwrap_or("PathPrefix"),
                        path.value.clone().unwrap_or_else(|| "/".into()),
                    ),
                };
                if !value.starts_with('/') {
                    self.report(
                        &object,
                        "InvalidPath",
                        format!("rule {rule_index}: path {value:?} must start with /; skipped"),
                    );
                    continue;
                }
                match kind {
                    "PathPrefix" => paths.push(prefix_match(&value)),
                    "Exact" => paths.push(PathMatch::Exact(value)),
                    other => self.report(
                        &object,
                        "MatchNotSupported",
                        format!("rule {rule_index}: path match type {other} is not supported; that match is skipped"),
                    ),
                }
            }
            if paths.is_empty() {
                continue;
            }
            if !rule.filters.is_empty() {
                self.report(
                    &object,
                    "FilterNotSupported",
                    format!("rule {rule_index}: filters are not applied by tether"),
                );
            }
            let mut backends = Vec::new();
            for backend in &rule.backend_refs {
                let group = backend.group.as_deref().unwrap_or("");
                let kind = backend.kind.as_deref().unwrap_or("Service");
                if !group.is_empty() || kind != "Service" {
                    let message = format!(
                        "rule {rule_index}: backendRef {group}/{kind} {} is not a Service; skipped",
                        backend.name
                    );
                    backend_problem.get_or_insert(("InvalidKind", message.clone()));
                    self.report(&object, "BackendNotSupported", message);
                    continue;
                }
                let backend_namespace = backend.namespace.clone().unwrap_or(namespace.clone());
                if backend_namespace != namespace
                    && !(attached.is_some()
                        && gateways::granted(
                            &self.snapshot.reference_grants,
                            "HTTPRoute",
                            &namespace,
                            "",
                            "Service",
                            &backend_namespace,
                            &backend.name,
                        ))
                {
                    let message = format!("rule {rule_index}: backendRef to Service {backend_namespace}/{} needs a ReferenceGrant in {backend_namespace}; skipped", backend.name);
                    backend_problem.get_or_insert(("RefNotPermitted", message.clone()));
                    self.report(&object, "RefNotPermitted", message);
                    continue;
                }
                let Some(port) = backend.port else {
                    backend_problem.get_or_insert((
                        "BackendNotFound",
                        format!(
                            "rule {rule_index}: backendRef {} names no port",
                            backend.name
                        ),
                    ));
                    self.report(
                        &object,
                        "BackendNotFound",
                        format!(
                            "rule {rule_index}: backendRef {} names no port; skipped",
                            backend.name
                        ),
                    );
                    continue;
                };
                if !backend.filters.is_empty() {
                    self.report(
                        &object,
                        "FilterNotSupported",
                        format!("rule {rule_index}: backendRef filters are not applied by tether"),
                    );
                }
                let weight = backend.weight.unwrap_or(1).clamp(0, 1_000_000) as u32;
                let resolved = self.resolve(
                    &backend_namespace,
                    &backend.name,
                    PortRef::Number(port),
                    &object,
                );
                if resolved.port.is_none() {
                    backend_problem.get_or_insert((
                        "BackendNotFound",
                        format!(
                            "rule {rule_index}: Service {backend_namespace}/{} port {port} does not exist",
                            backend.name
                        ),
                    ));
                }
                backends.push((resolved, weight));
            }
            let cookie_paths: Vec<String> = paths
                .iter()
                .map(|p| match p {
                    PathMatch::Exact(p) | PathMatch::Prefix(p) => p.clone(),
                })
                .collect();
            let persistence = match &rule.session_persistence {
                Some(persistence) if self.settings.dialects.gateway_api => {
                    match gateway::session_cookie(persistence, &common_path(&cookie_paths)) {
                        Ok(cookie) => Some(Candidate {
                            tier: 1,
                            created: meta.creation_timestamp.as_ref().map(|t| t.0),
                            source: object.clone(),
                            balancing: Balancing::StickySessions(cookie),
                        }),
                        Err(message) => {
                            self.report(
                                &object,
                                "InvalidSessionPersistence",
                                format!("rule {rule_index}: {message}"),
                            );
                            None
                        }
                    }
                }
                _ => None,
            };
            let mut persistence = persistence;
            if let Some(Candidate {
                balancing: Balancing::StickySessions(cookie),
                ..
            }) = persistence.as_mut()
            {
                cookie.secure = secure;
            }
            // A rule of a route attached to tether's Gateways keeps its own session (its own
            // service), as the Gateway API's conformance tests expect.
            let own_session = attached.is_some() && persistence.is_some();
            let service = match backends.as_slice() {
                [(resolved, weight)] if *weight > 0 && !own_session => {
                    let resolved = resolved.clone();
                    self.use_service(&resolved);
                    if let (Some(candidate), Some(used)) =
                        (persistence, self.uses.get_mut(&resolved.name))
                    {
                        used.candidates.push(candidate);
                    }
                    resolved.name
                }
                _ => {
                    let name = format!("httproute/{namespace}/{}/{rule_index}", object.name);
                    self.rule_services.push(RuleService {
                        name: name.clone(),
                        route: object.clone(),
                        backends,
                        persistence,
                    });
                    name
                }
            };
            for (match_index, path) in paths.iter().enumerate() {
                for (host, plaintext, over_tls) in &hosts {
                    let route = Route {
                        host: host.clone(),
                        path: path.clone(),
                        service: service.clone(),
                        allow_connect: false,
                        plaintext: *plaintext,
                        over_tls: *over_tls,
                    };
                    self.add_route(meta, &object, 1, (rule_index, match_index), route);
                }
            }
        }
        if attached.is_some() {
            if let Some(gateways) = self.gateways.as_mut() {
                gateways.resolved_refs(&route_key, meta.generation.unwrap_or(0), backend_problem);
            }
        }
    }

    /// The KongUpstreamPolicy a Service names, validated; reported when missing or invalid.
    fn kong_policy(&mut self, key: &Key) -> Option<Candidate> {
        if !self.settings.dialects.kong {
            return None;
        }
        let service = self.snapshot.services.get(key)?;
        let name = service
            .metadata
            .annotations
            .as_ref()?
            .get(UPSTREAM_POLICY)?
            .trim();
        let service_ref = ObjectRef::service(&service.metadata);
        let Some(found) = self
            .snapshot
            .policies
            .get(&(key.0.clone(), name.to_string()))
        else {
            self.report(
                &service_ref,
                "PolicyNotFound",
                format!("{UPSTREAM_POLICY}: KongUpstreamPolicy {}/{name} does not exist; the next session policy source applies (round-robin if none)", key.0),
            );
            return None;
        };
        let policy_ref = ObjectRef::policy(&found.metadata);
        match policy::balancing(&found.spec) {
            Ok(valid) => {
                for (field, message) in valid.warnings {
                    self.report(
                        &policy_ref,
                        "PolicyWarning",
                        format!("spec.{field}: {message}"),
                    );
                }
                Some(Candidate {
                    tier: 0,
                    created: found.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    source: policy_ref,
                    balancing: valid.balancing,
                })
            }
            Err(error) => {
                let message = format!(
                    "spec.{error}; Services using it fall back to the next session policy source (round-robin if none)"
                );
                self.report(&policy_ref, "InvalidPolicy", message.clone());
                self.report(
                    &service_ref,
                    "InvalidPolicy",
                    format!("KongUpstreamPolicy {}/{name}: {message}", key.0),
                );
                None
            }
        }
    }

    /// Picks the session policy by precedence and reports every source that lost to a
    /// different one.
    fn resolve_balancing(
        &mut self,
        service: &str,
        service_ref: Option<&ObjectRef>,
        mut candidates: Vec<Candidate>,
    ) -> Balancing {
        candidates.sort_by(|a, b| a.order().cmp(&b.order()));
        let Some(winner) = candidates.first().cloned() else {
            return Balancing::RoundRobin;
        };
        for loser in &candidates[1..] {
            if loser.balancing == winner.balancing {
                continue;
            }
            let message = format!(
                "conflicting session policies for {service}: {} wins over {} (precedence: KongUpstreamPolicy, then HTTPRoute sessionPersistence, then ingress-nginx annotations; the oldest object first within one kind)",
                winner.describe(),
                loser.describe()
            );
            self.report(&loser.source.clone(), "PolicyConflict", message.clone());
            if let Some(service_ref) = service_ref {
                self.report(service_ref, "PolicyConflict", message);
            }
        }
        winner.balancing
    }

    /// The targets of a Service port: with drain support, terminating endpoints drain (weight
    /// 0); otherwise ready endpoints are active and the rest left out (Kong Ingress
    /// Controller's rule; `serving` is not read). Without drain support a terminating endpoint
    /// is left out unless reported ready (publishNotReadyAddresses), as KIC does.
    fn targets(&self, key: &Key, port: &ServicePort) -> Vec<Target> {
        let name = port.name.as_deref().unwrap_or("");
        let protocol = port.protocol.as_deref().unwrap_or("TCP");
        let mut found: BTreeMap<SocketAddr, TargetState> = BTreeMap::new();
        for slice in self.slices.get(key).into_iter().flatten() {
            if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
                continue;
            }
            let Some(number) = slice.ports.iter().flatten().find_map(|p| {
                (p.name.as_deref().unwrap_or("") == name
                    && p.protocol.as_deref().unwrap_or("TCP") == protocol)
                    .then_some(p.port)
                    .flatten()
            }) else {
                continue;
            };
            let Ok(number) = u16::try_from(number) else {
                continue;
            };
            for endpoint in &slice.endpoints {
                let Some(ip) = endpoint
                    .addresses
                    .first()
                    .and_then(|a| a.parse::<IpAddr>().ok())
                else {
                    continue;
                };
                let conditions = endpoint.conditions.clone().unwrap_or_default();
                let terminating = conditions.terminating.unwrap_or(false);
                // Terminating drains even when reported ready (publishNotReadyAddresses
                // Services report every endpoint ready).
                let state = if self.settings.drain && terminating {
                    TargetState::Draining
                } else if conditions.ready.unwrap_or(true) {
                    TargetState::Active
                } else {
                    continue;
                };
                let address = SocketAddr::new(ip, number);
                // The same endpoint in two slices (while it moves between them): active wins.
                let entry = found.entry(address).or_insert(state);
                if state == TargetState::Active {
                    *entry = TargetState::Active;
                }
            }
        }
        found
            .into_iter()
            .map(|(address, state)| Target {
                address,
                weight: if state == TargetState::Active {
                    DEFAULT_WEIGHT
                } else {
                    0
                },
                state,
            })
            .collect()
    }

    fn finish(mut self) -> Translated {
        let mut services = BTreeMap::new();
        let uses = std::mem::take(&mut self.uses);
        for (name, used) in uses {
            let mut candidates = used.candidates;
            let mut service_ref = None;
            let upstream = match &used.port {
                _ if used.grpc => UpstreamProtocol::H2c,
                Some((_, port)) => upstream_protocol(port),
                None => UpstreamProtocol::Http1,
            };
            let targets = match &used.port {
                Some((key, port)) => {
                    if let Some(kong) = self.kong_policy(key) {
                        candidates.push(kong);
                    }
                    service_ref = self
                        .snapshot
                        .services
                        .get(key)
                        .map(|s| ObjectRef::service(&s.metadata));
                    self.targets(key, port)
                }
                None => Vec::new(),
            };
            let balancing = self.resolve_balancing(&name, service_ref.as_ref(), candidates);
            services.insert(
                name.clone(),
                Service {
                    name,
                    balancing,
                    frontend: None,
                    targets,
                    upstream,
                },
            );
        }
        let rules = std::mem::take(&mut self.rule_services);
        for rule in rules {
            let service = self.rule_service(rule);
            services.insert(service.name.clone(), service);
        }
        if self.settings.kernel {
            self.kernel_services(&mut services);
        }
        let mut pending = std::mem::take(&mut self.routes);
        pending.sort_by(|a, b| a.order.cmp(&b.order));
        let mut seen: HashMap<String, ObjectRef> = HashMap::new();
        let mut routes = Vec::with_capacity(pending.len());
        for item in pending {
            let key = format!("{:?} {:?}", item.route.host, item.route.path);
            match seen.get(&key) {
                Some(owner) if *owner != item.source => {
                    let message = format!(
                        "host {} path {} is already routed by {owner} (the oldest wins); this route is ignored",
                        describe_host(item.route.host.as_ref()),
                        describe_path(&item.route.path)
                    );
                    self.report(&item.source, "RouteConflict", message);
                }
                Some(_) => {}
                None => {
                    seen.insert(key, item.source.clone());
                    routes.push(item.route);
                }
            }
        }
        let statuses = match self.gateways.take() {
            Some(gateways) => {
                if self.settings.tls {
                    for (key, certificate) in &gateways.certificates {
                        self.certificates
                            .entry(key.clone())
                            .or_insert_with(|| certificate.clone());
                    }
                }
                gateways.statuses()
            }
            None => Statuses::default(),
        };
        Translated {
            routes,
            services,
            certificates: std::mem::take(&mut self.certificates)
                .into_values()
                .collect(),
            findings: self.findings,
            statuses,
        }
    }

    /// Weights: each backend's share of new sessions is its backendRef weight, spread evenly
    /// over its active targets (scaled into Kong's 1..=65535 target weights).
    fn rule_service(&mut self, rule: RuleService) -> Service {
        let mut per_backend = Vec::new();
        let mut kong = Vec::new();
        for (resolved, weight) in &rule.backends {
            let targets = match &resolved.port {
                Some((key, port)) => {
                    kong.push(self.kong_policy(key));
                    self.targets(key, port)
                }
                None => Vec::new(),
            };
            per_backend.push((targets, *weight));
        }
        let heaviest = rule
            .backends
            .iter()
            .map(|(_, w)| *w)
            .max()
            .unwrap_or(1)
            .max(1);
        let scale = (f64::from(MAX_WEIGHT) / f64::from(heaviest)).min(10_000.0);
        let mut merged: BTreeMap<SocketAddr, Target> = BTreeMap::new();
        for (targets, weight) in per_backend {
            let active = targets
                .iter()
                .filter(|t| t.state == TargetState::Active)
                .count();
            for target in targets {
                let weight = if target.state == TargetState::Active && weight > 0 {
                    let share = f64::from(weight) * scale / active.max(1) as f64;
                    (share.round() as u32).clamp(1, MAX_WEIGHT)
                } else {
                    0
                };
                let state = if weight > 0 {
                    TargetState::Active
                } else {
                    TargetState::Draining
                };
                let entry = merged.entry(target.address).or_insert(Target {
                    address: target.address,
                    weight: 0,
                    state,
                });
                entry.weight = (entry.weight + weight).min(MAX_WEIGHT);
                if state == TargetState::Active {
                    entry.state = TargetState::Active;
                }
            }
        }
        let mut candidates: Vec<Candidate> = rule.persistence.into_iter().collect();
        // The backends' Kong policies count only when every backend names the same one.
        let first = kong.first().cloned().flatten();
        if let Some(first) = first {
            if kong
                .iter()
                .all(|k| k.as_ref().map(|c| &c.balancing) == Some(&first.balancing))
            {
                candidates.push(first);
            } else {
                self.report(
                    &rule.route,
                    "PolicyConflict",
                    format!(
                        "{}: the backends' KongUpstreamPolicies differ, so none applies",
                        rule.name
                    ),
                );
            }
        }
        let balancing = self.resolve_balancing(&rule.name, None, candidates);
        // h2c only when every backend's port says so: the service has one protocol.
        let mut ports = rule.backends.iter().filter_map(|(r, _)| r.port.as_ref());
        let upstream = match ports.next() {
            Some((_, first))
                if ports.all(|(_, port)| upstream_protocol(port) == upstream_protocol(first)) =>
            {
                upstream_protocol(first)
            }
            _ => UpstreamProtocol::Http1,
        };
        Service {
            name: rule.name,
            balancing,
            frontend: None,
            targets: merged.into_values().collect(),
            upstream,
        }
    }

    /// LoadBalancer and NodePort Services, and those with `sessionAffinity: ClientIP`: a kernel
    /// frontend per VIP (ClusterIPs, load-balancer IPs, this node's IP for node ports) and port.
    fn kernel_services(&mut self, services: &mut BTreeMap<String, Service>) {
        let mut taken: HashMap<(SocketAddr, L4Protocol), String> = HashMap::new();
        for (key, service) in &self.snapshot.services {
            let Some(spec) = &service.spec else { continue };
            let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
            let client_ip = spec.session_affinity.as_deref() == Some("ClientIP");
            if !(client_ip || kind == "LoadBalancer" || kind == "NodePort") {
                continue;
            }
            let mut ips: Vec<IpAddr> = spec
                .cluster_ips
                .iter()
                .flatten()
                .chain(spec.cluster_ip.iter())
                .filter_map(|ip| ip.parse().ok())
                .collect();
            if kind == "LoadBalancer" {
                ips.extend(
                    service
                        .status
                        .iter()
                        .flat_map(|s| s.load_balancer.iter())
                        .flat_map(|lb| lb.ingress.iter().flatten())
                        .filter_map(|i| i.ip.as_deref()?.parse::<IpAddr>().ok()),
                );
            }
            ips.sort();
            ips.dedup();
            let (balancing, hashing) = if client_ip {
                (
                    Balancing::ConsistentHashing {
                        hash_on: HashOn::ClientIp,
                        fallback: None,
                    },
                    KernelHashing::ClientIp,
                )
            } else {
                (Balancing::RoundRobin, KernelHashing::FiveTuple)
            };
            for port in spec.ports.iter().flatten() {
                let protocol = match port.protocol.as_deref().unwrap_or("TCP") {
                    "TCP" => L4Protocol::Tcp,
                    "UDP" => L4Protocol::Udp,
                    _ => continue,
                };
                let Ok(number) = u16::try_from(port.port) else {
                    continue;
                };
                let mut vips: Vec<SocketAddr> =
                    ips.iter().map(|ip| SocketAddr::new(*ip, number)).collect();
                if let (Some(node), Some(node_port)) = (self.settings.node_ip, port.node_port) {
                    if kind != "ClusterIP" {
                        if let Ok(node_port) = u16::try_from(node_port) {
                            vips.push(SocketAddr::new(node, node_port));
                        }
                    }
                }
                let targets = self.targets(key, port);
                for vip in vips {
                    let name = format!("{}/{}:{}@{vip}", key.0, key.1, port.port);
                    if let Some(owner) = taken.get(&(vip, protocol)) {
                        let service_ref = ObjectRef::service(&service.metadata);
                        self.report(
                            &service_ref,
                            "FrontendConflict",
                            format!(
                                "{} {vip} is already {owner}'s; not installed",
                                protocol.as_str()
                            ),
                        );
                        continue;
                    }
                    taken.insert((vip, protocol), name.clone());
                    services.insert(
                        name.clone(),
                        Service {
                            name,
                            balancing: balancing.clone(),
                            frontend: Some(Frontend {
                                listen: vip,
                                protocol,
                                hashing,
                            }),
                            targets: targets.clone(),
                            upstream: Default::default(),
                        },
                    );
                }
            }
        }
    }
}

/// The longest common path-element prefix (`/echo/a` and `/echo/b` → `/echo`).
pub fn common_path(paths: &[String]) -> String {
    let mut common: Option<Vec<&str>> = None;
    for path in paths {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        common = Some(match common {
            None => parts,
            Some(prefix) => prefix
                .iter()
                .zip(&parts)
                .take_while(|(a, b)| a == b)
                .map(|(a, _)| *a)
                .collect(),
        });
    }
    format!("/{}", common.unwrap_or_default().join("/"))
}

fn describe_host(host: Option<&HostMatch>) -> String {
    match host {
        None => "(any)".into(),
        Some(HostMatch::Exact(host)) => host.clone(),
        Some(HostMatch::Wildcard(suffix) | HostMatch::WildcardAnyDepth(suffix)) => {
            format!("*.{suffix}")
        }
    }
}

fn describe_path(path: &PathMatch) -> String {
    match path {
        PathMatch::Exact(path) => format!("{path} (exact)"),
        PathMatch::Prefix(path) => format!("{path} (prefix)"),
    }
}

/// A Service port's `appProtocol: kubernetes.io/h2c` (KEP-3726) makes its targets h2c.
fn upstream_protocol(port: &ServicePort) -> UpstreamProtocol {
    match port.app_protocol.as_deref() {
        Some("kubernetes.io/h2c") => UpstreamProtocol::H2c,
        _ => UpstreamProtocol::Http1,
    }
}

#[cfg(test)]
mod tests;
