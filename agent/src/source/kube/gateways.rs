//! Gateway API Gateways, pure: which GatewayClasses and Gateways are tether's, their
//! listeners (HTTP, HTTPS with `tls.mode: Terminate` and Secret certificateRefs, across
//! namespaces with a ReferenceGrant), how HTTPRoutes attach through their parentRefs, and the
//! status every one of them should have, as the Gateway API defines it.
//!
//! - A GatewayClass is tether's when its `controllerName` is [`CONTROLLER`] or its name was
//!   given with `--gateway-class`; a Gateway is tether's when its class is.
//! - While tether has no GatewayClass at all, HTTPRoutes are served as before, whatever their
//!   parentRefs (Kong's how-to names a Gateway tether does not know). From the first class on,
//!   only routes attached to tether's Gateways are served, and the others (and their status)
//!   are left alone.
//! - A listener with a missing or bad certificate has `ResolvedRefs=False`
//!   (`InvalidCertificateRef`, or `RefNotPermitted` across namespaces without a grant) and is
//!   not programmed; the Gateway's other listeners keep working.
use super::resources::{
    Gateway, GatewayClass, HttpRoute, Listener, ParentReference, ReferenceGrant, RouteGroupKind,
};
use super::tls as cluster_tls;
use super::translate::{Key, Snapshot};
use crate::model::{HostMatch, PemCertificate};
use k8s_openapi::api::core::v1::Namespace;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

/// The controllerName of tether's GatewayClasses.
pub const CONTROLLER: &str = "tether.dev/gateway-controller";
pub const GROUP: &str = "gateway.networking.k8s.io";

/// One status condition, without its lastTransitionTime (the writer keeps the previous one
/// when the status did not change, else stamps the time of writing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
    pub observed_generation: i64,
}

impl Condition {
    fn new(
        type_: &'static str,
        status: bool,
        reason: &'static str,
        message: impl Into<String>,
        generation: i64,
    ) -> Self {
        Self {
            type_,
            status,
            reason,
            message: message.into(),
            observed_generation: generation,
        }
    }

    /// As the API has it, with `lastTransitionTime` set to `at`.
    pub fn json(&self, at: &str) -> Value {
        json!({
            "type": self.type_,
            "status": if self.status { "True" } else { "False" },
            "reason": self.reason,
            "message": self.message,
            "observedGeneration": self.observed_generation,
            "lastTransitionTime": at,
        })
    }
}

/// What status tether's objects should have.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Statuses {
    /// GatewayClass name → its conditions.
    pub classes: BTreeMap<String, Vec<Condition>>,
    pub gateways: BTreeMap<Key, GatewayStatus>,
    /// HTTPRoute → its parents as tether sees them (only parentRefs to tether's Gateways).
    pub routes: BTreeMap<Key, Vec<RouteParentStatus>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GatewayStatus {
    pub conditions: Vec<Condition>,
    pub listeners: Vec<ListenerStatus>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerStatus {
    pub name: String,
    pub supported_kinds: Vec<RouteGroupKind>,
    pub attached_routes: i32,
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteParentStatus {
    /// As the route wrote it.
    pub parent_ref: ParentReference,
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http,
    Https,
}

/// A listener of one of tether's Gateways, resolved.
#[derive(Debug, Clone)]
struct ResolvedListener {
    name: String,
    port: i32,
    protocol: Option<Protocol>,
    hostname: Option<String>,
    from: From,
    kinds: Vec<RouteGroupKind>,
    /// Takes routes: its protocol is supported and its route kinds include HTTPRoute.
    accepted: bool,
    /// Serves: accepted, and for HTTPS, its certificates resolved.
    programmed: bool,
    conditions: Vec<Condition>,
    attached: i32,
}

#[derive(Debug, Clone)]
enum From {
    Same,
    All,
    Selector(k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector),
}

struct OwnGateway {
    generation: i64,
    namespace: String,
    listeners: Vec<ResolvedListener>,
}

/// How a route is served through one listener it attached to: the hostnames (None: any), and
/// whether over TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub hosts: Vec<Option<String>>,
    pub tls: bool,
    /// The session cookie is Secure (HTTPS listener).
    pub secure: bool,
}

/// tether's Gateways in a snapshot.
pub struct Gateways {
    /// tether has GatewayClasses: only routes attached to its Gateways are served.
    pub active: bool,
    /// tether's GatewayClasses: their generation, and whether their `controllerName` is
    /// tether's (a class adopted by name with `--gateway-class` keeps its status to its own
    /// controller).
    classes: BTreeMap<String, (i64, bool)>,
    gateways: BTreeMap<Key, OwnGateway>,
    pub certificates: BTreeMap<Key, PemCertificate>,
    routes: BTreeMap<Key, Vec<RouteParentStatus>>,
}

fn generation(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> i64 {
    meta.generation.unwrap_or(0)
}

fn name_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Key {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// Whether a ReferenceGrant in `to_namespace` lets a `from_kind` of `from_namespace` refer to
/// the `to_group`/`to_kind` named `to_name`.
pub fn granted(
    grants: &BTreeMap<Key, ReferenceGrant>,
    from_kind: &str,
    from_namespace: &str,
    to_group: &str,
    to_kind: &str,
    to_namespace: &str,
    to_name: &str,
) -> bool {
    grants
        .iter()
        .filter(|((namespace, _), _)| namespace == to_namespace)
        .any(|(_, grant)| {
            grant
                .spec
                .from
                .iter()
                .any(|f| f.group == GROUP && f.kind == from_kind && f.namespace == from_namespace)
                && grant.spec.to.iter().any(|t| {
                    t.group == to_group
                        && t.kind == to_kind
                        && t.name.as_deref().is_none_or(|n| n == to_name)
                })
        })
}

impl Gateways {
    pub fn build(snapshot: &Snapshot, extra_classes: &[String], tls_listener: bool) -> Self {
        let mut classes = BTreeMap::new();
        for class in snapshot.gateway_classes.values() {
            let name = class.metadata.name.clone().unwrap_or_default();
            let named_ours = class.spec.controller_name == CONTROLLER;
            if named_ours || extra_classes.contains(&name) {
                classes.insert(name, (generation(&class.metadata), named_ours));
            }
        }
        let mut this = Self {
            active: !classes.is_empty() || !extra_classes.is_empty(),
            classes,
            gateways: BTreeMap::new(),
            certificates: BTreeMap::new(),
            routes: BTreeMap::new(),
        };
        for (key, gateway) in &snapshot.gateways {
            if !this.classes.contains_key(&gateway.spec.gateway_class_name) {
                continue;
            }
            let own = this.gateway(snapshot, key, gateway, tls_listener);
            this.gateways.insert(key.clone(), own);
        }
        this
    }

    fn gateway(
        &mut self,
        snapshot: &Snapshot,
        key: &Key,
        gateway: &Gateway,
        tls_listener: bool,
    ) -> OwnGateway {
        let generation = generation(&gateway.metadata);
        let mut listeners: Vec<ResolvedListener> = gateway
            .spec
            .listeners
            .iter()
            .map(|listener| self.listener(snapshot, key, listener, generation, tls_listener))
            .collect();
        mark_conflicts(&mut listeners, generation);
        OwnGateway {
            generation,
            namespace: key.0.clone(),
            listeners,
        }
    }

    fn listener(
        &mut self,
        snapshot: &Snapshot,
        gateway: &Key,
        listener: &Listener,
        generation: i64,
        tls_listener: bool,
    ) -> ResolvedListener {
        let protocol = match listener.protocol.as_str() {
            "HTTP" => Some(Protocol::Http),
            "HTTPS" => Some(Protocol::Https),
            _ => None,
        };
        let allowed = listener.allowed_routes.clone().unwrap_or_default();
        let from = match allowed.namespaces.as_ref().and_then(|n| n.from.as_deref()) {
            Some("All") => From::All,
            Some("Selector") => From::Selector(
                allowed
                    .namespaces
                    .as_ref()
                    .and_then(|n| n.selector.clone())
                    .unwrap_or_default(),
            ),
            _ => From::Same,
        };
        let http_route = RouteGroupKind {
            group: Some(GROUP.into()),
            kind: "HTTPRoute".into(),
        };
        let (kinds, invalid_kinds) = match &allowed.kinds {
            None => (vec![http_route.clone()], false),
            Some(wanted) => {
                let valid: Vec<RouteGroupKind> = wanted
                    .iter()
                    .filter(|k| {
                        k.kind == "HTTPRoute" && k.group.as_deref().unwrap_or(GROUP) == GROUP
                    })
                    .map(|_| http_route.clone())
                    .collect();
                let invalid = valid.len() != wanted.len();
                let mut valid = valid;
                valid.dedup();
                (valid, invalid)
            }
        };
        let mut accepted = Condition::new("Accepted", true, "Accepted", "", generation);
        let mut resolved = Condition::new("ResolvedRefs", true, "ResolvedRefs", "", generation);
        match protocol {
            None => {
                accepted = Condition::new(
                    "Accepted",
                    false,
                    "UnsupportedProtocol",
                    format!(
                        "protocol {:?} is not supported: HTTP and HTTPS are",
                        listener.protocol
                    ),
                    generation,
                );
            }
            Some(Protocol::Https) => {
                let tls = listener.tls.clone().unwrap_or_default();
                if tls.mode.as_deref().unwrap_or("Terminate") != "Terminate" {
                    accepted = Condition::new(
                        "Accepted",
                        false,
                        "UnsupportedProtocol",
                        "HTTPS listeners terminate TLS (tls.mode: Terminate)",
                        generation,
                    );
                } else if let Err((reason, message)) =
                    self.certificates_of(snapshot, gateway, &tls.certificate_refs)
                {
                    resolved = Condition::new("ResolvedRefs", false, reason, message, generation);
                }
            }
            Some(Protocol::Http) => {}
        }
        if invalid_kinds && resolved.status {
            resolved = Condition::new(
                "ResolvedRefs",
                false,
                "InvalidRouteKinds",
                "only HTTPRoute (gateway.networking.k8s.io) is supported",
                generation,
            );
        }
        let takes_routes = accepted.status && !kinds.is_empty();
        let programmed =
            takes_routes && resolved.status && (protocol != Some(Protocol::Https) || tls_listener);
        let programmed_condition = if programmed {
            Condition::new("Programmed", true, "Programmed", "", generation)
        } else if protocol == Some(Protocol::Https) && accepted.status && !tls_listener {
            Condition::new(
                "Programmed",
                false,
                "Invalid",
                "the agent has no TLS listener (proxy.tls.listen)",
                generation,
            )
        } else {
            Condition::new(
                "Programmed",
                false,
                "Invalid",
                "the listener is not accepted or its references are not resolved",
                generation,
            )
        };
        ResolvedListener {
            name: listener.name.clone(),
            port: listener.port,
            protocol,
            hostname: listener
                .hostname
                .as_deref()
                .filter(|h| !h.is_empty())
                .map(str::to_ascii_lowercase),
            from,
            kinds,
            accepted: takes_routes,
            programmed,
            conditions: vec![accepted, resolved, programmed_condition],
            attached: 0,
        }
    }

    /// The certificates of an HTTPS listener, put on the TLS listener; the first problem.
    fn certificates_of(
        &mut self,
        snapshot: &Snapshot,
        gateway: &Key,
        refs: &[super::resources::ObjectReference],
    ) -> Result<(), (&'static str, String)> {
        if refs.is_empty() {
            return Err((
                "InvalidCertificateRef",
                "an HTTPS listener needs tls.certificateRefs".into(),
            ));
        }
        let mut problem = None;
        for reference in refs {
            let group = reference.group.as_deref().unwrap_or("");
            let kind = reference.kind.as_deref().unwrap_or("Secret");
            let namespace = reference.namespace.clone().unwrap_or(gateway.0.clone());
            if !group.is_empty() || kind != "Secret" {
                problem.get_or_insert((
                    "InvalidCertificateRef",
                    format!(
                        "certificateRef {group}/{kind} {}: only Secrets are supported",
                        reference.name
                    ),
                ));
                continue;
            }
            if namespace != gateway.0
                && !granted(
                    &snapshot.reference_grants,
                    "Gateway",
                    &gateway.0,
                    "",
                    "Secret",
                    &namespace,
                    &reference.name,
                )
            {
                problem.get_or_insert((
                    "RefNotPermitted",
                    format!(
                        "Secret {namespace}/{}: no ReferenceGrant in {namespace} lets Gateways of {} use it",
                        reference.name, gateway.0
                    ),
                ));
                continue;
            }
            let key = (namespace.clone(), reference.name.clone());
            let pem = match cluster_tls::certificate(&key.0, &key.1, snapshot.secrets.get(&key)) {
                Ok(pem) => pem,
                Err(message) => {
                    problem.get_or_insert(("InvalidCertificateRef", message));
                    continue;
                }
            };
            if let Err(error) = crate::tls::certificate::Certificate::from_pem(
                &pem.origin,
                &pem.chain,
                &pem.key,
                &crate::tls::provider(),
            ) {
                problem.get_or_insert((
                    "InvalidCertificateRef",
                    crate::report::Chain(&error).to_string(),
                ));
                continue;
            }
            self.certificates.insert(key, pem);
        }
        match problem {
            Some(problem) => Err(problem),
            None => Ok(()),
        }
    }

    /// Attaches `route` to tether's Gateways it names: how it is served, and its status per
    /// parentRef. Empty when none of its parents is tether's.
    pub fn attach(
        &mut self,
        route: &HttpRoute,
        namespaces: &BTreeMap<Key, Namespace>,
    ) -> Vec<Attachment> {
        let key = name_of(&route.metadata);
        let generation = generation(&route.metadata);
        let mut served = Vec::new();
        let mut parents = Vec::new();
        for parent in &route.spec.parent_refs {
            let group = parent.group.as_deref().unwrap_or(GROUP);
            let kind = parent.kind.as_deref().unwrap_or("Gateway");
            if group != GROUP || kind != "Gateway" {
                continue;
            }
            let gateway_key = (
                parent.namespace.clone().unwrap_or(key.0.clone()),
                parent.name.clone(),
            );
            let Some(gateway) = self.gateways.get_mut(&gateway_key) else {
                continue;
            };
            let accepted = attach_to(
                gateway,
                parent,
                &key.0,
                &route.spec.hostnames,
                namespaces,
                &mut served,
            );
            let accepted = match accepted {
                Ok(()) => Condition::new("Accepted", true, "Accepted", "", generation),
                Err((reason, message)) => {
                    Condition::new("Accepted", false, reason, message, generation)
                }
            };
            parents.push(RouteParentStatus {
                parent_ref: parent.clone(),
                conditions: vec![accepted],
            });
        }
        if !parents.is_empty() {
            self.routes.insert(key, parents);
        }
        served
    }

    /// Whether `route` names one of tether's Gateways (it then has a status from tether).
    pub fn has_route(&self, route: &Key) -> bool {
        self.routes.contains_key(route)
    }

    /// Adds the route's ResolvedRefs condition (its backends) to each of its parents.
    pub fn resolved_refs(
        &mut self,
        route: &Key,
        generation: i64,
        problem: Option<(&'static str, String)>,
    ) {
        let condition = match problem {
            None => Condition::new("ResolvedRefs", true, "ResolvedRefs", "", generation),
            Some((reason, message)) => {
                Condition::new("ResolvedRefs", false, reason, message, generation)
            }
        };
        for parent in self.routes.get_mut(route).into_iter().flatten() {
            parent.conditions.push(condition.clone());
        }
    }

    pub fn statuses(self) -> Statuses {
        let classes = self
            .classes
            .iter()
            .filter(|(_, (_, named_ours))| *named_ours)
            .map(|(name, (generation, _))| {
                (
                    name.clone(),
                    vec![Condition::new(
                        "Accepted",
                        true,
                        "Accepted",
                        "",
                        *generation,
                    )],
                )
            })
            .collect();
        let gateways = self
            .gateways
            .into_iter()
            .map(|(key, gateway)| {
                let generation = gateway.generation;
                let any_programmed = gateway.listeners.iter().any(|l| l.programmed);
                let all_accepted = gateway.listeners.iter().all(|l| l.accepted);
                let accepted = if all_accepted {
                    Condition::new("Accepted", true, "Accepted", "", generation)
                } else {
                    Condition::new(
                        "Accepted",
                        true,
                        "ListenersNotValid",
                        "some listeners are not accepted; see their conditions",
                        generation,
                    )
                };
                let programmed = if any_programmed {
                    Condition::new("Programmed", true, "Programmed", "", generation)
                } else {
                    Condition::new(
                        "Programmed",
                        false,
                        "Invalid",
                        "no listener is programmed",
                        generation,
                    )
                };
                let listeners = gateway
                    .listeners
                    .into_iter()
                    .map(|listener| ListenerStatus {
                        name: listener.name,
                        supported_kinds: listener.kinds,
                        attached_routes: listener.attached,
                        conditions: listener.conditions,
                    })
                    .collect();
                (
                    key,
                    GatewayStatus {
                        conditions: vec![accepted, programmed],
                        listeners,
                    },
                )
            })
            .collect();
        Statuses {
            classes,
            gateways,
            routes: self.routes,
        }
    }
}

/// Attaches a route of `namespace` with `hostnames` to the listeners of `gateway` that `parent`
/// selects; records how it is served in `served`.
fn attach_to(
    gateway: &mut OwnGateway,
    parent: &ParentReference,
    namespace: &str,
    hostnames: &[String],
    namespaces: &BTreeMap<Key, Namespace>,
    served: &mut Vec<Attachment>,
) -> Result<(), (&'static str, String)> {
    let gateway_namespace = gateway.namespace.clone();
    let selected: Vec<&mut ResolvedListener> = gateway
        .listeners
        .iter_mut()
        .filter(|l| parent.section_name.as_ref().is_none_or(|s| *s == l.name))
        .filter(|l| parent.port.is_none_or(|p| p == l.port))
        .collect();
    if selected.is_empty() {
        return Err((
            "NoMatchingParent",
            "no listener matches the parentRef's sectionName and port".into(),
        ));
    }
    let mut allowed: Vec<&mut ResolvedListener> = selected
        .into_iter()
        .filter(|l| l.accepted && allows(&l.from, &gateway_namespace, namespace, namespaces))
        .collect();
    if allowed.is_empty() {
        return Err((
            "NotAllowedByListeners",
            "the listeners' allowedRoutes do not admit this route".into(),
        ));
    }
    let mut any = false;
    for listener in &mut allowed {
        let Some(hosts) = intersect(listener.hostname.as_deref(), hostnames) else {
            continue;
        };
        any = true;
        listener.attached += 1;
        if listener.programmed {
            let https = listener.protocol == Some(Protocol::Https);
            served.push(Attachment {
                hosts,
                tls: https,
                secure: https,
            });
        }
    }
    if !any {
        return Err((
            "NoMatchingListenerHostname",
            "no hostname of the route matches a listener's hostname".into(),
        ));
    }
    Ok(())
}

fn allows(
    from: &From,
    gateway_namespace: &str,
    namespace: &str,
    namespaces: &BTreeMap<Key, Namespace>,
) -> bool {
    match from {
        From::Same => gateway_namespace == namespace,
        From::All => true,
        From::Selector(selector) => {
            let labels = namespaces
                .get(&(String::new(), namespace.to_string()))
                .and_then(|n| n.metadata.labels.clone())
                .unwrap_or_default();
            selects(selector, &labels)
        }
    }
}

/// A LabelSelector against labels: matchLabels, and matchExpressions In, NotIn, Exists,
/// DoesNotExist.
fn selects(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    labels: &BTreeMap<String, String>,
) -> bool {
    let by_label = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expression = selector.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let values = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    by_label && by_expression
}

/// Gives every listener its Conflicted condition, as the Gateway API defines it: listeners on
/// one port must share a protocol (else ProtocolConflict), and those with one protocol must
/// differ in hostname (else HostnameConflict). A conflicted listener takes no routes and is not
/// programmed, so no request depends on which of two listeners would have won.
fn mark_conflicts(listeners: &mut [ResolvedListener], generation: i64) {
    let conflicts: Vec<Option<(&'static str, String)>> = listeners
        .iter()
        .enumerate()
        .map(|(i, listener)| {
            let same_port = || {
                listeners
                    .iter()
                    .enumerate()
                    .filter(move |&(j, other)| j != i && other.port == listener.port)
            };
            if let Some((_, other)) = same_port().find(|(_, o)| o.protocol != listener.protocol) {
                return Some((
                    "ProtocolConflict",
                    format!(
                        "listener {:?} uses port {} with another protocol",
                        other.name, listener.port
                    ),
                ));
            }
            same_port()
                .find(|(_, o)| o.hostname == listener.hostname)
                .map(|(_, other)| {
                    (
                        "HostnameConflict",
                        format!(
                            "listener {:?} has the same port, protocol and hostname",
                            other.name
                        ),
                    )
                })
        })
        .collect();
    for (listener, conflict) in listeners.iter_mut().zip(conflicts) {
        let condition = match conflict {
            None => Condition::new("Conflicted", false, "NoConflicts", "", generation),
            Some((reason, message)) => {
                listener.accepted = false;
                listener.programmed = false;
                for condition in &mut listener.conditions {
                    if condition.type_ == "Programmed" {
                        *condition = Condition::new(
                            "Programmed",
                            false,
                            "Invalid",
                            message.clone(),
                            generation,
                        );
                    }
                }
                Condition::new("Conflicted", true, reason, message, generation)
            }
        };
        listener.conditions.push(condition);
    }
}

/// The hostnames a route is served under through a listener: `None` in the list means any
/// host. `None` overall: nothing in common.
fn intersect(listener: Option<&str>, route: &[String]) -> Option<Vec<Option<String>>> {
    let route: Vec<String> = route.iter().map(|h| h.to_ascii_lowercase()).collect();
    match (listener, route.is_empty()) {
        (None, true) => Some(vec![None]),
        (Some(listener), true) => Some(vec![Some(listener.to_string())]),
        (None, false) => Some(route.into_iter().map(Some).collect()),
        (Some(listener), false) => {
            let common: BTreeSet<String> = route
                .iter()
                .filter_map(|host| {
                    if host == listener || covers(listener, host) {
                        Some(host.clone())
                    } else if covers(host, listener) {
                        Some(listener.to_string())
                    } else {
                        None
                    }
                })
                .collect();
            (!common.is_empty()).then(|| common.into_iter().map(Some).collect())
        }
    }
}

/// Whether wildcard `pattern` (`*.example.com`) covers `host` (one or more labels in front).
fn covers(pattern: &str, host: &str) -> bool {
    let Some(suffix) = pattern.strip_prefix("*.") else {
        return false;
    };
    host.strip_suffix(suffix)
        .and_then(|front| front.strip_suffix('.'))
        .is_some_and(|front| !front.is_empty() && front != "*")
}

/// The model's host match for a Gateway API hostname, whose wildcard covers any number of
/// labels.
pub fn host(hostname: &Option<String>) -> Result<Option<HostMatch>, String> {
    match hostname {
        None => Ok(None),
        Some(host) => match crate::source::host_match(host)? {
            HostMatch::Wildcard(suffix) => Ok(Some(HostMatch::WildcardAnyDepth(suffix))),
            exact => Ok(Some(exact)),
        },
    }
}

/// Which GatewayClasses `snapshot` has that are tether's (for the status writer).
pub fn own_class(class: &GatewayClass, extra: &[String]) -> bool {
    class.spec.controller_name == CONTROLLER
        || extra.contains(&class.metadata.name.clone().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_wildcard_hostname_covers_any_depth() {
        assert_eq!(
            host(&Some("*.Example.com".into())),
            Ok(Some(HostMatch::WildcardAnyDepth("example.com".into())))
        );
        assert_eq!(
            host(&Some("a.example.com".into())),
            Ok(Some(HostMatch::Exact("a.example.com".into())))
        );
        assert_eq!(host(&None), Ok(None));
    }

    #[test]
    fn hostnames_intersect_as_the_gateway_api_says() {
        let hosts = |l: Option<&str>, r: &[&str]| {
            intersect(l, &r.iter().map(|h| h.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(hosts(None, &[]), Some(vec![None]));
        assert_eq!(
            hosts(Some("a.example.com"), &[]),
            Some(vec![Some("a.example.com".into())])
        );
        assert_eq!(
            hosts(Some("*.example.com"), &["a.example.com", "other.org"]),
            Some(vec![Some("a.example.com".into())])
        );
        assert_eq!(
            hosts(Some("a.example.com"), &["*.example.com"]),
            Some(vec![Some("a.example.com".into())])
        );
        assert_eq!(hosts(Some("a.example.com"), &["b.example.com"]), None);
        assert_eq!(hosts(Some("*.example.com"), &["example.com"]), None);
    }
}
