//! The Kubernetes translation (agent/src/source/kube/store.rs and translate.rs), on arbitrary
//! objects.
//!
//! The input is JSON text: `{"settings": {...}, "items": [objects]}`, so a `kubectl get -o
//! json` List is an input as it is. Each item becomes the object its `kind` names (Service,
//! EndpointSlice, Ingress, HTTPRoute, KongUpstreamPolicy; other kinds, such as Gateway, are not
//! read by tether and are skipped), is listed into the store as a watcher would list it, and the
//! snapshot is translated. Checks: no panic; routes lead to services that exist; weights are in
//! Kong's range; the model builds the proxy's tables and the kernel maps' plan; translating is
//! a function of the objects (deleting one and applying it again gives the same result).
#![no_main]

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use kube::runtime::watcher::Event;
use kube::Resource;
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use std::net::IpAddr;
use std::sync::LazyLock;
use tether::dataplane::plan::{self, KernelState};
use tether::metrics::Metrics;
use tether::model::{Model, MAX_WEIGHT};
use tether::source::kube::parse_dialects;
use tether::source::kube::resources::{HttpRoute, KongUpstreamPolicy};
use tether::source::kube::store::{Cluster, Kind, Update};
use tether::source::kube::translate::{translate, Dialects, Settings, Translated};
use tether::sticky::cookie::{CookieCodec, KEY_LEN};
use tether::table::Tables;

static CODEC: LazyLock<CookieCodec> = LazyLock::new(|| CookieCodec::new(&[7u8; KEY_LEN]));

const KINDS: [Kind; 5] = [
    Kind::Services,
    Kind::EndpointSlices,
    Kind::Ingresses,
    Kind::HttpRoutes,
    Kind::KongUpstreamPolicies,
];

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Input {
    settings: RawSettings,
    items: Vec<Value>,
}

/// The agent's command-line settings for the Kubernetes source; absent ones as in a
/// kernel-and-proxy deployment with drain support.
#[derive(Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct RawSettings {
    drain: bool,
    kernel: bool,
    dialects: Option<String>,
    ingress_classes: Vec<String>,
    node_ip: Option<IpAddr>,
}

impl Default for RawSettings {
    fn default() -> Self {
        Self {
            drain: true,
            kernel: true,
            dialects: None,
            ingress_classes: Vec::new(),
            node_ip: Some(IpAddr::from([192, 0, 2, 10])),
        }
    }
}

fn object<K: DeserializeOwned>(item: &Value) -> Option<K> {
    serde_json::from_value(item.clone()).ok()
}

/// The object `item` is; `None` for a kind tether does not read or an object that does not
/// deserialize (the watcher would have failed on it).
fn typed(item: &Value) -> Option<Typed> {
    Some(match item.get("kind")?.as_str()? {
        "Service" => Typed::Service(object(item)?),
        "EndpointSlice" => Typed::EndpointSlice(object(item)?),
        "Ingress" => Typed::Ingress(object(item)?),
        "HTTPRoute" => Typed::HttpRoute(object(item)?),
        "KongUpstreamPolicy" => Typed::Policy(object(item)?),
        _ => return None,
    })
}

#[derive(Clone)]
enum Typed {
    Service(Service),
    EndpointSlice(EndpointSlice),
    Ingress(Ingress),
    HttpRoute(HttpRoute),
    Policy(KongUpstreamPolicy),
}

impl Typed {
    /// The store's key for the object, with its kind.
    fn key(&self) -> (&'static str, String, String) {
        let (kind, meta) = match self {
            Typed::Service(o) => ("Service", o.meta()),
            Typed::EndpointSlice(o) => ("EndpointSlice", o.meta()),
            Typed::Ingress(o) => ("Ingress", o.meta()),
            Typed::HttpRoute(o) => ("HTTPRoute", o.meta()),
            Typed::Policy(o) => ("KongUpstreamPolicy", o.meta()),
        };
        (
            kind,
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        )
    }
}

macro_rules! event {
    ($name:ident, $variant:ident) => {
        fn $name(typed: Typed) -> Update {
            match typed {
                Typed::Service(o) => Update::Services(Event::$variant(o)),
                Typed::EndpointSlice(o) => Update::EndpointSlices(Event::$variant(o)),
                Typed::Ingress(o) => Update::Ingresses(Event::$variant(o)),
                Typed::HttpRoute(o) => Update::HttpRoutes(Event::$variant(o)),
                Typed::Policy(o) => Update::KongUpstreamPolicies(Event::$variant(o)),
            }
        }
    };
}
event!(init_apply, InitApply);
event!(apply, Apply);
event!(delete, Delete);

fn init(kind: Kind) -> Update {
    match kind {
        Kind::Services => Update::Services(Event::Init),
        Kind::EndpointSlices => Update::EndpointSlices(Event::Init),
        Kind::Ingresses => Update::Ingresses(Event::Init),
        Kind::HttpRoutes => Update::HttpRoutes(Event::Init),
        Kind::KongUpstreamPolicies => Update::KongUpstreamPolicies(Event::Init),
        Kind::Secrets => Update::Secrets(Event::Init),
        Kind::GatewayClasses => Update::GatewayClasses(Event::Init),
        Kind::Gateways => Update::Gateways(Event::Init),
        Kind::ReferenceGrants => Update::ReferenceGrants(Event::Init),
        Kind::Namespaces => Update::Namespaces(Event::Init),
    }
}

fn init_done(kind: Kind) -> Update {
    match kind {
        Kind::Services => Update::Services(Event::InitDone),
        Kind::EndpointSlices => Update::EndpointSlices(Event::InitDone),
        Kind::Ingresses => Update::Ingresses(Event::InitDone),
        Kind::HttpRoutes => Update::HttpRoutes(Event::InitDone),
        Kind::KongUpstreamPolicies => Update::KongUpstreamPolicies(Event::InitDone),
        Kind::Secrets => Update::Secrets(Event::InitDone),
        Kind::GatewayClasses => Update::GatewayClasses(Event::InitDone),
        Kind::Gateways => Update::Gateways(Event::InitDone),
        Kind::ReferenceGrants => Update::ReferenceGrants(Event::InitDone),
        Kind::Namespaces => Update::Namespaces(Event::InitDone),
    }
}

fn check(translated: &Translated) {
    for route in &translated.routes {
        assert!(
            translated.services.contains_key(&route.service),
            "route to unknown service {}: {translated:#?}",
            route.service
        );
    }
    for service in translated.services.values() {
        for target in &service.targets {
            assert!(target.weight <= MAX_WEIGHT, "{service:#?}");
        }
    }
    let model = Model {
        proxy: None,
        admin: None,
        session_key: None,
        dataplane: None,
        routes: translated.routes.clone(),
        services: translated.services.clone(),
    };
    let metrics = Metrics::default();
    let tables = Tables::build(&model, &CODEC, &metrics, 1);
    for route in &model.routes {
        assert!(tables.service(&route.service).is_some());
    }
    let _ = plan::desired(&model, &KernelState::default());
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = serde_json::from_slice::<Input>(data) else {
        return;
    };
    let dialects = match input.settings.dialects.as_deref() {
        None => Dialects::ALL,
        Some(text) => match parse_dialects(text) {
            Ok(dialects) => dialects,
            Err(_) => return,
        },
    };
    let settings = Settings {
        drain: input.settings.drain,
        dialects,
        ingress_classes: input.settings.ingress_classes,
        kernel: input.settings.kernel,
        node_ip: input.settings.node_ip,
        tls: true,
        gateway_classes: Vec::new(),
    };

    let objects: Vec<Typed> = input.items.iter().filter_map(typed).collect();
    let mut cluster = Cluster::new(&KINDS);
    for kind in KINDS {
        cluster.apply(init(kind));
    }
    for object in &objects {
        cluster.apply(init_apply(object.clone()));
    }
    for kind in KINDS {
        cluster.apply(init_done(kind));
    }
    assert!(cluster.synced());
    let translated = translate(cluster.snapshot(), &settings);
    check(&translated);
    assert_eq!(translate(cluster.snapshot(), &settings), translated);

    // The first object deleted, then applied again: the same model as before, unless a later
    // object of the same kind and name was the one listed.
    if let Some(first) = objects.first() {
        cluster.apply(delete(first.clone()));
        check(&translate(cluster.snapshot(), &settings));
        cluster.apply(apply(first.clone()));
        let listed = objects.iter().filter(|o| o.key() == first.key()).count() == 1;
        if listed {
            assert_eq!(translate(cluster.snapshot(), &settings), translated);
        }
    }
});
