//! What the watchers have seen, per resource, kept only as complete lists.
//!
//! A watcher (re)starts with `Init`, then `InitApply` for every object listed, then `InitDone`.
//! The objects of a (re)list are buffered and replace the previous ones only at `InitDone`, so
//! a relist (after a 410 Gone, say) never shows a partial list: no target disappears while the
//! list is read, and a model is only ever built from complete lists.
use super::resources::{Gateway, GatewayClass, HttpRoute, KongUpstreamPolicy, ReferenceGrant};
use super::translate::{Key, Snapshot};
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use kube::runtime::watcher::Event;
use kube::Resource;
use std::collections::BTreeMap;

/// The resources watched for the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Services,
    EndpointSlices,
    Ingresses,
    HttpRoutes,
    KongUpstreamPolicies,
    /// `kubernetes.io/tls` Secrets, for the TLS listener's certificates.
    Secrets,
    GatewayClasses,
    Gateways,
    ReferenceGrants,
    Namespaces,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Services => "services",
            Kind::EndpointSlices => "endpointslices",
            Kind::Ingresses => "ingresses",
            Kind::HttpRoutes => "httproutes",
            Kind::KongUpstreamPolicies => "kongupstreampolicies",
            Kind::Secrets => "secrets",
            Kind::GatewayClasses => "gatewayclasses",
            Kind::Gateways => "gateways",
            Kind::ReferenceGrants => "referencegrants",
            Kind::Namespaces => "namespaces",
        }
    }

    /// Served by a CustomResourceDefinition that a cluster may not have.
    pub fn is_custom(self) -> bool {
        matches!(
            self,
            Kind::HttpRoutes
                | Kind::KongUpstreamPolicies
                | Kind::GatewayClasses
                | Kind::Gateways
                | Kind::ReferenceGrants
        )
    }
}

/// One watcher's event.
pub enum Update {
    Services(Event<Service>),
    EndpointSlices(Event<EndpointSlice>),
    Ingresses(Event<Ingress>),
    HttpRoutes(Event<HttpRoute>),
    KongUpstreamPolicies(Event<KongUpstreamPolicy>),
    Secrets(Event<Secret>),
    GatewayClasses(Event<GatewayClass>),
    Gateways(Event<Gateway>),
    ReferenceGrants(Event<ReferenceGrant>),
    Namespaces(Event<Namespace>),
}

impl Update {
    pub fn kind(&self) -> Kind {
        match self {
            Update::Services(_) => Kind::Services,
            Update::EndpointSlices(_) => Kind::EndpointSlices,
            Update::Ingresses(_) => Kind::Ingresses,
            Update::HttpRoutes(_) => Kind::HttpRoutes,
            Update::KongUpstreamPolicies(_) => Kind::KongUpstreamPolicies,
            Update::Secrets(_) => Kind::Secrets,
            Update::GatewayClasses(_) => Kind::GatewayClasses,
            Update::Gateways(_) => Kind::Gateways,
            Update::ReferenceGrants(_) => Kind::ReferenceGrants,
            Update::Namespaces(_) => Kind::Namespaces,
        }
    }

    pub fn is_init(&self) -> bool {
        matches!(
            self,
            Update::Services(Event::Init)
                | Update::EndpointSlices(Event::Init)
                | Update::Ingresses(Event::Init)
                | Update::HttpRoutes(Event::Init)
                | Update::KongUpstreamPolicies(Event::Init)
                | Update::Secrets(Event::Init)
                | Update::GatewayClasses(Event::Init)
                | Update::Gateways(Event::Init)
                | Update::ReferenceGrants(Event::Init)
                | Update::Namespaces(Event::Init)
        )
    }
}

#[derive(Default)]
struct Buffers {
    services: Option<BTreeMap<Key, Service>>,
    slices: Option<BTreeMap<Key, EndpointSlice>>,
    ingresses: Option<BTreeMap<Key, Ingress>>,
    http_routes: Option<BTreeMap<Key, HttpRoute>>,
    policies: Option<BTreeMap<Key, KongUpstreamPolicy>>,
    secrets: Option<BTreeMap<Key, Secret>>,
    gateway_classes: Option<BTreeMap<Key, GatewayClass>>,
    gateways: Option<BTreeMap<Key, Gateway>>,
    reference_grants: Option<BTreeMap<Key, ReferenceGrant>>,
    namespaces: Option<BTreeMap<Key, Namespace>>,
}

/// The complete lists, plus the lists being read.
pub struct Cluster {
    snapshot: Snapshot,
    buffers: Buffers,
    /// Watched kinds, and whether each has completed a list.
    synced: BTreeMap<Kind, bool>,
}

impl Cluster {
    pub fn new(watched: &[Kind]) -> Self {
        Self {
            snapshot: Snapshot::default(),
            buffers: Buffers::default(),
            synced: watched.iter().map(|kind| (*kind, false)).collect(),
        }
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Every watched kind has completed a list (or is known not to be served).
    pub fn synced(&self) -> bool {
        self.synced.values().all(|s| *s)
    }

    pub fn is_synced(&self, kind: Kind) -> bool {
        self.synced.get(&kind).copied().unwrap_or(false)
    }

    /// The kinds still waiting for their first complete list.
    pub fn waiting(&self) -> Vec<&'static str> {
        self.synced
            .iter()
            .filter(|(_, synced)| !**synced)
            .map(|(kind, _)| kind.as_str())
            .collect()
    }

    /// The API server does not serve `kind` (its CRD is not installed): an empty list until it
    /// does. True when that changed the view.
    pub fn absent(&mut self, kind: Kind) -> bool {
        let synced = self.synced.entry(kind).or_insert(false);
        if *synced {
            return false;
        }
        *synced = true;
        true
    }

    /// Applies one event; true when the complete view changed.
    pub fn apply(&mut self, update: Update) -> bool {
        let kind = update.kind();
        let synced = self.synced.entry(kind).or_insert(false);
        let snapshot = &mut self.snapshot;
        let buffers = &mut self.buffers;
        match update {
            Update::Services(event) => {
                apply(&mut snapshot.services, &mut buffers.services, synced, event)
            }
            Update::EndpointSlices(event) => {
                apply(&mut snapshot.slices, &mut buffers.slices, synced, event)
            }
            Update::Ingresses(event) => apply(
                &mut snapshot.ingresses,
                &mut buffers.ingresses,
                synced,
                event,
            ),
            Update::HttpRoutes(event) => apply(
                &mut snapshot.http_routes,
                &mut buffers.http_routes,
                synced,
                event,
            ),
            Update::KongUpstreamPolicies(event) => {
                apply(&mut snapshot.policies, &mut buffers.policies, synced, event)
            }
            Update::Secrets(event) => {
                apply(&mut snapshot.secrets, &mut buffers.secrets, synced, event)
            }
            Update::GatewayClasses(event) => apply(
                &mut snapshot.gateway_classes,
                &mut buffers.gateway_classes,
                synced,
                event,
            ),
            Update::Gateways(event) => {
                apply(&mut snapshot.gateways, &mut buffers.gateways, synced, event)
            }
            Update::ReferenceGrants(event) => apply(
                &mut snapshot.reference_grants,
                &mut buffers.reference_grants,
                synced,
                event,
            ),
            Update::Namespaces(event) => apply(
                &mut snapshot.namespaces,
                &mut buffers.namespaces,
                synced,
                event,
            ),
        }
    }
}

fn key<K: Resource>(object: &K) -> Key {
    let meta = object.meta();
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

fn apply<K: Resource + PartialEq>(
    objects: &mut BTreeMap<Key, K>,
    buffer: &mut Option<BTreeMap<Key, K>>,
    synced: &mut bool,
    event: Event<K>,
) -> bool {
    match event {
        Event::Init => {
            *buffer = Some(BTreeMap::new());
            false
        }
        Event::InitApply(object) => {
            buffer
                .get_or_insert_with(BTreeMap::new)
                .insert(key(&object), object);
            false
        }
        Event::InitDone => {
            let fresh = buffer.take().unwrap_or_default();
            let changed = !*synced || *objects != fresh;
            *objects = fresh;
            *synced = true;
            changed
        }
        Event::Apply(object) => {
            let key = key(&object);
            if objects.get(&key) == Some(&object) {
                return false;
            }
            objects.insert(key, object);
            true
        }
        Event::Delete(object) => objects.remove(&key(&object)).is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn slice(name: &str, version: &str) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                resource_version: Some(version.into()),
                ..ObjectMeta::default()
            },
            address_type: "IPv4".into(),
            endpoints: Vec::new(),
            ports: None,
        }
    }

    #[test]
    fn a_relist_replaces_the_list_only_when_complete() {
        let mut cluster = Cluster::new(&[Kind::EndpointSlices]);
        assert!(!cluster.synced());
        assert!(!cluster.apply(Update::EndpointSlices(Event::Init)));
        assert!(!cluster.apply(Update::EndpointSlices(Event::InitApply(slice("a", "1")))));
        assert!(!cluster.apply(Update::EndpointSlices(Event::InitApply(slice("b", "1")))));
        assert!(cluster.snapshot().slices.is_empty());
        assert!(cluster.apply(Update::EndpointSlices(Event::InitDone)));
        assert!(cluster.synced());
        assert_eq!(cluster.snapshot().slices.len(), 2);

        // A relist (410 Gone): the old list stays whole while the new one is read.
        assert!(!cluster.apply(Update::EndpointSlices(Event::Init)));
        assert!(!cluster.apply(Update::EndpointSlices(Event::InitApply(slice("a", "1")))));
        assert_eq!(cluster.snapshot().slices.len(), 2, "b is still there");
        assert!(cluster.apply(Update::EndpointSlices(Event::InitDone)));
        assert_eq!(cluster.snapshot().slices.len(), 1);
        // A relist that finds the same objects changes nothing.
        cluster.apply(Update::EndpointSlices(Event::Init));
        cluster.apply(Update::EndpointSlices(Event::InitApply(slice("a", "1"))));
        assert!(!cluster.apply(Update::EndpointSlices(Event::InitDone)));
    }

    #[test]
    fn events_after_the_list() {
        let mut cluster = Cluster::new(&[Kind::EndpointSlices, Kind::HttpRoutes]);
        cluster.apply(Update::EndpointSlices(Event::Init));
        cluster.apply(Update::EndpointSlices(Event::InitDone));
        assert!(!cluster.synced());
        assert_eq!(cluster.waiting(), vec!["httproutes"]);
        assert!(cluster.absent(Kind::HttpRoutes));
        assert!(cluster.synced());
        assert!(cluster.apply(Update::EndpointSlices(Event::Apply(slice("a", "2")))));
        assert!(!cluster.apply(Update::EndpointSlices(Event::Apply(slice("a", "2")))));
        assert!(cluster.apply(Update::EndpointSlices(Event::Delete(slice("a", "3")))));
        assert!(!cluster.apply(Update::EndpointSlices(Event::Delete(slice("a", "3")))));
    }
}
