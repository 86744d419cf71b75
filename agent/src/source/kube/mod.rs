//! The Kubernetes source: watchers on Services, EndpointSlices, Ingresses, HTTPRoutes and
//! KongUpstreamPolicies build the model's routes and services (see [`translate`]).
//!
//! - Each resource has a kube-rs watcher (list, then watch from the list's resourceVersion,
//!   with bookmarks). Errors back off (0.1 s doubling, at most about 1 s apart: [`watch`]);
//!   a 410 Gone makes the watcher list again after the first delay only, and [`store`] keeps
//!   the previous complete list until the new one is complete, so a relist never drops a
//!   target.
//! - Nothing is built until every watched resource has been listed once. A resource whose
//!   CRD is not installed (404) counts as an empty list, and its watcher keeps retrying, so
//!   installing the CRD later is picked up.
//! - Changes are coalesced. A change that comes after a quiet spell (no model built for
//!   [`QUIET`]) is translated at once, with whatever events are already queued (leading edge:
//!   a lone change reaches the proxy in about a millisecond). A change that follows a model
//!   closely starts a burst: the next model is built once no event came for [`QUIET`], or
//!   [`MAX_DELAY`] after the burst's first change, whichever is first (trailing edge: a
//!   rollout's many slice updates become a few models). A model equal to the running one is
//!   not applied; the dataplane writes only what differs.
//! - When the API server is lost the last model keeps serving; the watchers resume from their
//!   resourceVersions (or relist on 410) when it is back.
pub mod cluster;
pub mod events;
pub mod gateway;
pub mod gateways;
pub mod nginx;
pub mod resources;
pub mod secret;
pub mod status;
pub mod store;
pub mod tls;
pub mod translate;

use futures_util::{future, stream, Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use resources::{Gateway, GatewayClass, HttpRoute, KongUpstreamPolicy, ReferenceGrant};
use std::path::PathBuf;
use std::time::Duration;
use store::{Cluster, Kind, Update};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};
use translate::{Dialects, Settings, Translated};

/// A burst of changes ends when no event came for this long; a change this long after the
/// last model is applied at once.
pub const QUIET: Duration = Duration::from_millis(20);
/// A model is built at the latest this long after the first change of a burst.
pub const MAX_DELAY: Duration = Duration::from_millis(250);
/// A watcher's first retry after an error waits this long (plus jitter); see [`watch_backoff`].
pub const RETRY_FIRST: Duration = Duration::from_millis(100);
/// A watcher's retries wait at most this long plus jitter (which adds up to as much again).
pub const RETRY_MAX: Duration = Duration::from_millis(500);

/// How every watcher (the model's and the cookie Secret's) waits between failed tries: from
/// [`RETRY_FIRST`] doubling to [`RETRY_MAX`], each delay plus a random share of itself (so
/// 0.5–1 s apart at the most, and agents do not retry in step), forever; any event resets it
/// (kube's `StreamBackoff` resets on every success). The cap bounds how long an API server's
/// return goes unnoticed: kube's default (client-go's 0.8 s doubling to 30 s) left a pod
/// removed during a 4 s outage pinned for up to 14 s after it.
fn watch_backoff() -> watcher::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(RETRY_FIRST)
        .with_max_delay(RETRY_MAX)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .into()
}

/// A watcher with [`watch_backoff`] between failed tries. A 410 Gone is a live API server's
/// answer, not a failure: it starts the delays over, so the relist it asks for waits the
/// first delay, not one grown through the outage before it (which would double the time to
/// notice the API server's return). The first delay still spaces a server that answers
/// every watch with 410.
pub fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    /// What the backoff sees: an event, or a marker that only resets it.
    enum Step<K> {
        Event(watcher::Event<K>),
        Answered,
    }
    watcher(api, config)
        .flat_map(|item| {
            let (reset, item) = match item {
                Ok(event) => (None, Ok(Step::Event(event))),
                Err(watcher::Error::WatchError(status)) if status.code == 410 => (
                    Some(Ok(Step::Answered)),
                    Err(watcher::Error::WatchError(status)),
                ),
                Err(error) => (None, Err(error)),
            };
            stream::iter(reset.into_iter().chain([item]))
        })
        .backoff(watch_backoff())
        .filter_map(|item| {
            future::ready(match item {
                Ok(Step::Event(event)) => Some(Ok(event)),
                Ok(Step::Answered) => None,
                Err(error) => Some(Err(error)),
            })
        })
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the kubeconfig {path}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("no Kubernetes configuration (pass --kubeconfig, set KUBECONFIG, or run in a pod)")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("cannot build a Kubernetes client")]
    Client(#[source] kube::Error),
    #[error("{0}")]
    Api(String, #[source] kube::Error),
    #[error("{0}")]
    Secret(String),
}

/// `tether run --kubernetes` settings beyond the file.
#[derive(Debug, Clone)]
pub struct Options {
    pub kubeconfig: Option<PathBuf>,
    /// `--cookie-secret NAMESPACE/NAME`.
    pub cookie_secret: Option<(String, String)>,
    pub settings: Settings,
    /// This agent in Events' reportingInstance (the node name in a DaemonSet), and in the
    /// status Lease.
    pub instance: String,
    /// `--status-lease NAMESPACE/NAME`: the Lease whose holder writes Gateway API status;
    /// default: `tether-status` in the cookie Secret's namespace.
    pub status_lease: Option<(String, String)>,
}

/// A kube client from `--kubeconfig`, else `KUBECONFIG` or `~/.kube/config`, else the pod's
/// service account (in-cluster).
pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<Client, Error> {
    let config = match kubeconfig {
        Some(path) => {
            let file =
                kube::config::Kubeconfig::read_from(path).map_err(|source| Error::Kubeconfig {
                    path: path.to_path_buf(),
                    source,
                })?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|source| Error::Kubeconfig {
                    path: path.to_path_buf(),
                    source,
                })?
        }
        None => kube::Config::infer().await.map_err(Error::Infer)?,
    };
    info!(server = %config.cluster_url, "Kubernetes API server");
    Client::try_from(config).map_err(Error::Client)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub resource: String,
}

/// The Kubernetes source's metrics.
#[derive(Clone)]
pub struct KubeMetrics {
    pub watch_errors: Family<ResourceLabels, Counter>,
    pub relists: Family<ResourceLabels, Counter>,
    pub models_applied: Counter,
    pub events_posted: Counter,
    /// From the first watch event of a burst until the proxy's tables hold its model.
    pub change_to_proxy_seconds: Histogram,
}

impl Default for KubeMetrics {
    fn default() -> Self {
        Self {
            watch_errors: Family::default(),
            relists: Family::default(),
            models_applied: Counter::default(),
            events_posted: Counter::default(),
            change_to_proxy_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
        }
    }
}

impl KubeMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "tether_kube_watch_errors",
            "Watch and list errors, per resource (each is retried with backoff)",
            self.watch_errors.clone(),
        );
        registry.register(
            "tether_kube_relists",
            "Lists after the first, per resource (410 Gone, or a watch that could not resume)",
            self.relists.clone(),
        );
        registry.register(
            "tether_kube_models_applied",
            "Models built from the cluster that differed from the running one and were applied",
            self.models_applied.clone(),
        );
        registry.register(
            "tether_kube_events_posted",
            "Kubernetes Events posted about invalid or conflicting configuration",
            self.events_posted.clone(),
        );
        registry.register(
            "tether_kube_change_to_proxy_seconds",
            "From the first watch event of a burst of changes until the proxy serves the new model",
            self.change_to_proxy_seconds.clone(),
        );
    }
}

/// The watchers and the complete lists they feed.
pub struct Source {
    cluster: Cluster,
    updates: mpsc::UnboundedReceiver<Message>,
    settings: Settings,
    metrics: KubeMetrics,
    /// When the last model was translated (for the leading-edge debounce).
    last_build: Option<Instant>,
}

enum Message {
    Update(Box<Update>),
    Failed(Kind, watcher::Error),
}

impl Source {
    /// Starts a watcher per resource the dialects need.
    pub fn start(client: &Client, settings: Settings, metrics: KubeMetrics) -> Self {
        let (sender, updates) = mpsc::unbounded_channel();
        let mut kinds = vec![Kind::Services, Kind::EndpointSlices];
        spawn_watch::<Service>(client, sender.clone(), Update::Services, Kind::Services);
        spawn_watch::<EndpointSlice>(
            client,
            sender.clone(),
            Update::EndpointSlices,
            Kind::EndpointSlices,
        );
        if settings.dialects.ingresses() {
            kinds.push(Kind::Ingresses);
            spawn_watch::<Ingress>(client, sender.clone(), Update::Ingresses, Kind::Ingresses);
        }
        if settings.dialects.http_routes() {
            kinds.push(Kind::HttpRoutes);
            spawn_watch::<HttpRoute>(client, sender.clone(), Update::HttpRoutes, Kind::HttpRoutes);
        }
        if settings.dialects.kong {
            kinds.push(Kind::KongUpstreamPolicies);
            spawn_watch::<KongUpstreamPolicy>(
                client,
                sender.clone(),
                Update::KongUpstreamPolicies,
                Kind::KongUpstreamPolicies,
            );
        }
        if settings.dialects.gateway_api {
            kinds.extend([
                Kind::GatewayClasses,
                Kind::Gateways,
                Kind::ReferenceGrants,
                Kind::Namespaces,
            ]);
            spawn_watch::<GatewayClass>(
                client,
                sender.clone(),
                Update::GatewayClasses,
                Kind::GatewayClasses,
            );
            spawn_watch::<Gateway>(client, sender.clone(), Update::Gateways, Kind::Gateways);
            spawn_watch::<ReferenceGrant>(
                client,
                sender.clone(),
                Update::ReferenceGrants,
                Kind::ReferenceGrants,
            );
            spawn_watch::<Namespace>(client, sender.clone(), Update::Namespaces, Kind::Namespaces);
        }
        if settings.tls && (settings.dialects.ingresses() || settings.dialects.gateway_api) {
            // Only TLS Secrets: the others are none of tether's business.
            kinds.push(Kind::Secrets);
            spawn_watch_with::<Secret>(
                client,
                sender,
                Update::Secrets,
                Kind::Secrets,
                watcher::Config::default().fields(&format!("type={}", tls::TLS_SECRET_TYPE)),
            );
        }
        info!(
            resources = %kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(","),
            drain = settings.drain,
            "watching the cluster"
        );
        Self {
            cluster: Cluster::new(&kinds),
            updates,
            settings,
            metrics,
            last_build: None,
        }
    }

    /// Waits until every resource has been listed, and translates.
    pub async fn synced(&mut self) -> Translated {
        let mut last_report = Instant::now();
        while !self.cluster.synced() {
            match tokio::time::timeout(Duration::from_secs(5), self.updates.recv()).await {
                Ok(Some(message)) => {
                    self.handle(message);
                }
                Ok(None) => std::future::pending::<()>().await,
                Err(_) => {}
            }
            if last_report.elapsed() > Duration::from_secs(5) && !self.cluster.synced() {
                info!(waiting_for = %self.cluster.waiting().join(","), "waiting for the first list of every resource");
                last_report = Instant::now();
            }
        }
        self.last_build = Some(Instant::now());
        self.translate()
    }

    /// Waits for the next change, coalesces the burst it starts, and translates. Returns when
    /// the burst's first event arrived, too.
    pub async fn next(&mut self) -> (Translated, Instant) {
        loop {
            let Some(message) = self.updates.recv().await else {
                // Every watcher ended: cannot happen (they retry forever); wait for shutdown.
                std::future::pending::<()>().await;
                continue;
            };
            if !self.handle(message) {
                continue;
            }
            let first = Instant::now();
            // What is already queued belongs to this change (a relist's whole list, say).
            while let Ok(message) = self.updates.try_recv() {
                self.handle(message);
            }
            // Leading edge: a change after a quiet spell is applied at once; only changes
            // that follow a model closely wait for the burst to end.
            let quiet_before = self.last_build.is_none_or(|built| built.elapsed() >= QUIET);
            if quiet_before && self.cluster.synced() {
                self.last_build = Some(Instant::now());
                return (self.translate(), first);
            }
            let latest = first + MAX_DELAY;
            loop {
                let quiet = (Instant::now() + QUIET).min(latest);
                tokio::select! {
                    message = self.updates.recv() => {
                        if let Some(message) = message {
                            self.handle(message);
                        }
                        if Instant::now() >= latest {
                            break;
                        }
                    }
                    () = tokio::time::sleep_until(quiet) => break,
                }
            }
            if self.cluster.synced() {
                self.last_build = Some(Instant::now());
                return (self.translate(), first);
            }
        }
    }

    /// The complete lists the last model was made from.
    pub fn snapshot(&self) -> &translate::Snapshot {
        self.cluster.snapshot()
    }

    fn translate(&self) -> Translated {
        translate::translate(self.cluster.snapshot(), &self.settings)
    }

    /// True when the complete view changed.
    fn handle(&mut self, message: Message) -> bool {
        match message {
            Message::Update(update) => {
                let kind = update.kind();
                if update.is_init() && self.cluster.is_synced(kind) {
                    self.metrics
                        .relists
                        .get_or_create(&ResourceLabels {
                            resource: kind.as_str().into(),
                        })
                        .inc();
                    info!(
                        resource = kind.as_str(),
                        "listing again; the previous list serves until the new one is complete"
                    );
                }
                self.cluster.apply(*update)
            }
            Message::Failed(kind, error) => {
                self.metrics
                    .watch_errors
                    .get_or_create(&ResourceLabels {
                        resource: kind.as_str().into(),
                    })
                    .inc();
                let not_served = matches!(
                    &error,
                    watcher::Error::InitialListFailed(kube::Error::Api(status)) if status.code == 404
                );
                if not_served && kind.is_custom() && !self.cluster.is_synced(kind) {
                    warn!(
                        resource = kind.as_str(),
                        "not served by the API server (its CRD is not installed): treated as empty; retrying with backoff"
                    );
                    return self.cluster.absent(kind);
                }
                if let watcher::Error::WatchError(status) = &error {
                    if status.code == 410 {
                        info!(
                            resource = kind.as_str(),
                            "resourceVersion expired (410 Gone): listing again"
                        );
                        return false;
                    }
                }
                warn!(resource = kind.as_str(), error = %crate::report::Chain(&error), "watch failed; the running model keeps serving, retrying with backoff");
                false
            }
        }
    }
}

fn spawn_watch<K>(
    client: &Client,
    sender: mpsc::UnboundedSender<Message>,
    wrap: fn(watcher::Event<K>) -> Update,
    kind: Kind,
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    spawn_watch_with(client, sender, wrap, kind, watcher::Config::default());
}

fn spawn_watch_with<K>(
    client: &Client,
    sender: mpsc::UnboundedSender<Message>,
    wrap: fn(watcher::Event<K>) -> Update,
    kind: Kind,
    config: watcher::Config,
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    let api: Api<K> = Api::all(client.clone());
    tokio::spawn(async move {
        let mut events = watch(api, config).boxed();
        while let Some(event) = events.next().await {
            let message = match event {
                Ok(event) => Message::Update(Box::new(wrap(event.modify(|object| {
                    // Kept by every agent for every object, and never read: dropped on arrival.
                    object.meta_mut().managed_fields = None;
                })))),
                Err(error) => Message::Failed(kind, error),
            };
            if sender.send(message).is_err() {
                return;
            }
        }
    });
}

/// Parses `--dialects`: a comma list of kong, ingress-nginx, gateway-api (or all).
pub fn parse_dialects(text: &str) -> Result<Dialects, String> {
    let mut dialects = Dialects {
        kong: false,
        ingress_nginx: false,
        gateway_api: false,
    };
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part {
            "all" => dialects = Dialects::ALL,
            "kong" => dialects.kong = true,
            "ingress-nginx" | "nginx" => dialects.ingress_nginx = true,
            "gateway-api" | "gateway" => dialects.gateway_api = true,
            other => {
                return Err(format!(
                    "unknown dialect {other:?}: expected kong, ingress-nginx, gateway-api or all"
                ))
            }
        }
    }
    if dialects
        == (Dialects {
            kong: false,
            ingress_nginx: false,
            gateway_api: false,
        })
    {
        return Err("name at least one dialect".into());
    }
    Ok(dialects)
}

/// Parses `--cookie-secret NAMESPACE/NAME`.
pub fn parse_secret(text: &str) -> Result<(String, String), String> {
    match text.split_once('/') {
        Some((namespace, name))
            if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
        {
            Ok((namespace.to_string(), name.to_string()))
        }
        _ => Err(format!("{text:?}: expected NAMESPACE/NAME")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_retries_start_soon_and_stay_within_a_second() {
        let delays: Vec<Duration> = watch_backoff().take(50).collect();
        assert_eq!(delays.len(), 50, "the watchers retry forever");
        assert!(delays[0] >= RETRY_FIRST && delays[0] < 2 * RETRY_FIRST);
        assert!(delays.iter().all(|d| *d < 2 * RETRY_MAX), "{delays:?}");
        assert!(delays[10..].iter().all(|d| *d >= RETRY_MAX), "{delays:?}");
        // Jittered: agents that failed together do not retry together.
        let other: Vec<Duration> = watch_backoff().take(50).collect();
        assert_ne!(delays, other);
    }

    #[test]
    fn flags() {
        assert_eq!(parse_dialects("all"), Ok(Dialects::ALL));
        let nginx = parse_dialects("ingress-nginx").expect("valid");
        assert!(nginx.ingress_nginx && !nginx.kong && !nginx.gateway_api);
        assert!(nginx.ingresses() && !nginx.http_routes());
        assert!(parse_dialects("haproxy").is_err());
        assert!(parse_dialects("").is_err());
        assert_eq!(
            parse_secret("kong/tether-cookie-key"),
            Ok(("kong".into(), "tether-cookie-key".into()))
        );
        assert!(parse_secret("nope").is_err());
        assert!(parse_secret("a/b/c").is_err());
    }
}
