//! `tether run`: one runtime for every source of models.
//!
//! A [`ModelSource`] (the standalone file, [`crate::source::standalone`], or the cluster,
//! [`crate::source::kube::cluster`]) says where models come from; this module does everything
//! else, the same way for both: the admin endpoint, the cookie key, the proxy, the kernel data
//! plane, applying each new model (tables, generation, maps, logs, metrics), signals and a
//! graceful stop.
//!
//! Start-up: `/healthz` answers at once and `/readyz` is 503 until the cookie key is known,
//! the source has its first model, the proxy listens and the dataplane (when configured) holds
//! that model. From then on `/readyz` stays 200, also while a source cannot produce a new model
//! (an unreachable API server, an invalid file): the last model keeps serving.
use crate::admin::{self, AdminState};
use crate::metrics::{Metrics, OutcomeCounters, ReloadLabels, ReloadResult};
use crate::model::{Balancing, Model, PemCertificate, Service, TargetState, TlsSettings};
use crate::proxy::{Proxy, Shared, TlsListener};
use crate::report::Chain;
use crate::session_key;
use crate::sticky::cookie::{CookieCodec, KEY_LEN};
use crate::table::Tables;
use crate::tls::certificate::Certificate;
use crate::tls::select::CertificateSet;
use crate::tls::store::{CertificateStore, FileCertificates};
use crate::tls::{ALPN_H2, ALPN_HTTP1};
use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use prometheus_client::registry::Registry;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

/// What `tether run` takes besides the source.
pub struct RunOptions {
    /// Proxy worker threads.
    pub workers: usize,
    /// `--session-key`: overrides the model's `sessionKey.file`.
    pub session_key: Option<PathBuf>,
    /// How long open requests may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// The kernel data plane's object and pin directory.
    pub dataplane: crate::dataplane::Options,
}

/// A model a source offers.
#[derive(Debug)]
pub struct Candidate {
    pub model: Model,
    /// Apply even when equal to the running model (SIGHUP: rewrite tables and maps).
    pub forced: bool,
    /// When the change that led to this model happened (for the change-to-maps metric).
    pub changed_at: Option<SystemTime>,
}

/// What a source says next.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "one per reload, moved once; boxing the model would buy nothing"
)]
pub enum Change {
    /// A new model to apply.
    Model(Candidate),
    /// A change the source could not turn into a model; the running one stays.
    Rejected(String),
}

/// Where models come from. The runtime drives a source on one current-thread runtime, awaiting
/// one method at a time; a future it drops is dropped only because tether is stopping.
#[expect(
    async_fn_in_trait,
    reason = "sources run on the runtime's one thread; nothing needs them to be Send"
)]
pub trait ModelSource {
    /// For the logs: `/etc/tether/config.yaml`, `the cluster`.
    fn describe(&self) -> String;

    /// The node-local sections (proxy, admin, dataplane, sessionKey), known before the first
    /// model: the admin endpoint starts from them.
    fn node(&self) -> &Model;

    /// Registers the source's own metrics.
    fn register(&self, _registry: &mut Registry) {}

    /// The cookie key every agent shares, when the source has one (a cluster Secret); `None`
    /// falls back to the key file, then to a key for this process only.
    async fn shared_key(&mut self) -> Result<Option<[u8; KEY_LEN]>> {
        Ok(None)
    }

    /// The first model; nothing is served before it.
    async fn first(&mut self) -> Result<Model>;

    /// The next change; pending until there is one.
    async fn next(&mut self, running: &Model) -> Change;

    /// Told after `model` was applied (the cluster source measures change-to-proxy).
    fn applied(&mut self, _model: &Model) {}

    /// tether is stopping: let go of what others wait for (the cluster source's status
    /// Lease). Given at most [`STOP_SOURCE`].
    async fn stop(&mut self) {}
}

/// How long a source may take to stop.
const STOP_SOURCE: Duration = Duration::from_secs(2);

/// Runs the agent from `source` until SIGTERM or SIGINT.
pub fn run(mut source: impl ModelSource, options: RunOptions) -> Result<()> {
    crate::fd_limit::raise_to_hard_limit();
    let metrics = Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    source.register(&mut registry);
    // Starts with the first model; registers its metrics now so /metrics lists them at once.
    let dataplane = crate::dataplane::Runner::new(options.dataplane.clone(), &mut registry);
    let admin_state = Arc::new(AdminState {
        registry,
        ready: false.into(),
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let proxy = runtime.block_on(async {
        let stop = stopping();
        tokio::pin!(stop);
        if let Some(admin) = &source.node().admin {
            admin::start(admin.listen, admin_state.clone())
                .await
                .with_context(|| format!("admin.listen: cannot listen on {}", admin.listen))?;
        }
        let Some(key) = until_stopped(&mut stop, cookie_key(&mut source, &options)).await else {
            return Ok(None);
        };
        let Some(first) = until_stopped(&mut stop, source.first()).await else {
            return Ok(None);
        };
        let mut agent = Agent::start(first?, &key?, &options, metrics, dataplane)?;
        if let Some(tls) = &agent.tls {
            tokio::spawn(watch_certificates(tls.clone()));
        }
        info!(
            services = agent.running.services.len(),
            routes = agent.running.routes.len(),
            targets = target_count(&agent.running),
            "tether is running from {}",
            source.describe()
        );
        admin_state.ready.store(true, Ordering::Release);
        loop {
            // Only stopping drops a source's `next` unfinished (a file reload half settled, a
            // burst of cluster events half debounced): nothing else shares this select.
            let change = tokio::select! {
                change = source.next(&agent.running) => change,
                () = &mut stop => break,
            };
            match change {
                Change::Model(candidate) => match agent.apply(candidate, &options) {
                    Ok(true) => source.applied(&agent.running),
                    Ok(false) => {}
                    Err(why) => agent.reject(&why),
                },
                Change::Rejected(why) => agent.reject(&why),
            }
        }
        admin_state.ready.store(false, Ordering::Release);
        let _ = tokio::time::timeout(STOP_SOURCE, source.stop()).await;
        Ok::<Option<Proxy>, anyhow::Error>(agent.proxy)
    })?;
    if let Some(proxy) = proxy {
        proxy.shutdown(options.shutdown_grace);
    }
    info!("stopped");
    Ok(())
}

/// How often certificate files are read to see whether they changed.
const CERTIFICATE_POLL: Duration = Duration::from_secs(1);

/// The running agent: the model it serves, and what serves it.
struct Agent {
    running: Model,
    generation: u64,
    shared: Arc<Shared>,
    metrics: Metrics,
    dataplane: crate::dataplane::Runner,
    proxy: Option<Proxy>,
    /// Shared with the task that polls the certificate files.
    tls: Option<Arc<Mutex<Tls>>>,
    /// The TLS listener's bound port, for redirects to https.
    https_port: Option<u16>,
}

/// The TLS listener's certificates: the files and cluster Secrets they come from, and the store
/// handshakes read.
struct Tls {
    files: FileCertificates,
    /// The cluster's certificates as the model last gave them, each with what it serves.
    cluster: Vec<ClusterCertificate>,
    store: Arc<CertificateStore>,
}

/// A certificate from the cluster, and what is served for it: itself, or, when its content is
/// not a valid certificate and key, the last valid version from the same origin (or nothing).
struct ClusterCertificate {
    pem: PemCertificate,
    served: Option<Arc<Certificate>>,
}

impl Tls {
    fn load(settings: &TlsSettings) -> Result<Self> {
        let files = FileCertificates::load(&settings.certificates, crate::tls::provider())
            .context("proxy.tls.certificates")?;
        let mut tls = Self {
            files,
            cluster: Vec::new(),
            store: Arc::new(CertificateStore::new(CertificateSet::default())),
        };
        tls.update_cluster(&settings.cluster);
        tls.store.replace(tls.set());
        Ok(tls)
    }

    /// What handshakes choose from: the files' certificates, then the cluster's.
    fn set(&self) -> CertificateSet {
        let files = self.files.set();
        CertificateSet::new(
            files
                .certificates()
                .iter()
                .cloned()
                .chain(self.cluster.iter().filter_map(|c| c.served.clone()))
                .collect(),
        )
    }

    /// Takes the cluster's certificates `wanted`; true when they differ from the last ones. One
    /// that cannot be loaded is logged, and its origin's previous version (if any) keeps
    /// serving; the others are not affected.
    fn update_cluster(&mut self, wanted: &[PemCertificate]) -> bool {
        if self.cluster.len() == wanted.len()
            && self
                .cluster
                .iter()
                .zip(wanted)
                .all(|(have, want)| have.pem == *want)
        {
            return false;
        }
        let provider = crate::tls::provider();
        let previous = std::mem::take(&mut self.cluster);
        for pem in wanted {
            let before = previous.iter().find(|c| c.pem.origin == pem.origin);
            let served = match before {
                Some(before) if before.pem == *pem => before.served.clone(),
                _ => match Certificate::from_pem(&pem.origin, &pem.chain, &pem.key, &provider) {
                    Ok(certificate) => Some(Arc::new(certificate)),
                    Err(error) => {
                        let kept = before.and_then(|b| b.served.clone());
                        error!(
                            error = %Chain(&error),
                            previous_stays = kept.is_some(),
                            "certificate rejected; the other certificates keep serving"
                        );
                        kept
                    }
                },
            };
            self.cluster.push(ClusterCertificate {
                pem: pem.clone(),
                served,
            });
        }
        true
    }

    fn describe(&self) -> String {
        self.store
            .current()
            .certificates()
            .iter()
            .map(|certificate| format!("{} ({})", certificate.origin, certificate.names.join(" ")))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Agent {
    /// Builds the tables, starts the proxy and the dataplane with the first model.
    fn start(
        model: Model,
        key: &[u8; KEY_LEN],
        options: &RunOptions,
        metrics: Metrics,
        mut dataplane: crate::dataplane::Runner,
    ) -> Result<Self> {
        let codec = CookieCodec::new(key);
        let generation = 1;
        let shared = Arc::new(Shared {
            tables: ArcSwap::from_pointee(Tables::build(&model, &codec, &metrics, generation)),
            outcomes: OutcomeCounters::new(&metrics),
            codec,
            metrics: metrics.clone(),
        });
        metrics.config_generation.set(generation as i64);
        let tls = match model.proxy.as_ref().and_then(|proxy| proxy.tls.as_ref()) {
            Some(settings) => Some(Tls::load(settings)?),
            None => None,
        };
        let store = tls.as_ref().map(|tls| tls.store.clone());
        let proxy = match &model.proxy {
            Some(settings) => {
                let listener = match (&settings.tls, store) {
                    (Some(settings), Some(store)) => Some(TlsListener {
                        listen: settings.listen,
                        config: crate::tls::server_config(store, &[ALPN_H2, ALPN_HTTP1])
                            .context("proxy.tls")?,
                    }),
                    _ => None,
                };
                Some(Proxy::start(
                    settings.listen,
                    listener,
                    options.workers,
                    shared.clone(),
                )?)
            }
            None => None,
        };
        if let Some(tls) = &tls {
            info!(certificates = %tls.describe(), "TLS certificates");
        }
        // Redirects to https name the port the TLS listener is bound to (0 in the file asks
        // for any).
        let https_port = proxy
            .as_ref()
            .and_then(|proxy| proxy.tls_local_addr)
            .map(|address| address.port());
        if https_port.is_some() && https_port != shared.tables.load().https_port {
            let mut tables =
                shared
                    .tables
                    .load()
                    .rebuild(&model, &shared.codec, &metrics, generation);
            tables.https_port = https_port;
            shared.tables.store(Arc::new(tables));
        }
        // Maps follow the proxy's tables: the kernel never knows a target the proxy does not.
        dataplane.begin(&model)?;
        log_model(&model);
        Ok(Self {
            running: model,
            generation,
            shared,
            metrics,
            dataplane,
            proxy,
            tls: tls.map(|tls| Arc::new(Mutex::new(tls))),
            https_port,
        })
    }

    /// Applies `candidate` unless it equals the running model and is not forced; says whether
    /// it did. A candidate whose new certificates cannot be loaded is refused whole.
    fn apply(&mut self, candidate: Candidate, options: &RunOptions) -> Result<bool, String> {
        let Candidate {
            model,
            forced,
            changed_at,
        } = candidate;
        if model == self.running && !forced {
            self.count(ReloadResult::unchanged);
            return Ok(false);
        }
        self.reconfigure_certificates(&model)?;
        warn_about_restart_only_changes(&self.running, &model, options);
        log_changes(&self.running, &model);
        self.generation += 1;
        let mut tables = self.shared.tables.load().rebuild(
            &model,
            &self.shared.codec,
            &self.metrics,
            self.generation,
        );
        if self.https_port.is_some() {
            tables.https_port = self.https_port;
        }
        self.shared.tables.store(Arc::new(tables));
        self.metrics.config_generation.set(self.generation as i64);
        self.dataplane.apply(&model, changed_at);
        info!(
            generation = self.generation,
            services = model.services.len(),
            routes = model.routes.len(),
            targets = target_count(&model),
            "configuration applied"
        );
        self.count(ReloadResult::applied);
        self.running = model;
        Ok(true)
    }

    /// Loads the certificate files `model` lists when the list changed (all of them, or none: a
    /// candidate with one bad file is refused and the running ones stay), and the cluster's
    /// certificates when they changed (one bad Secret is logged; the others serve).
    fn reconfigure_certificates(&mut self, model: &Model) -> Result<(), String> {
        let Some(tls) = &self.tls else {
            return Ok(());
        };
        let Some(wanted) = model.proxy.as_ref().and_then(|proxy| proxy.tls.as_ref()) else {
            return Ok(());
        };
        let mut tls = tls.lock().unwrap_or_else(PoisonError::into_inner);
        let files = if tls.files.files() == wanted.certificates {
            None
        } else {
            Some(
                FileCertificates::load(&wanted.certificates, crate::tls::provider())
                    .map_err(|error| format!("proxy.tls.certificates: {}", Chain(&error)))?,
            )
        };
        let files_changed = files.is_some();
        if let Some(files) = files {
            tls.files = files;
        }
        let cluster_changed = tls.update_cluster(&wanted.cluster);
        if files_changed || cluster_changed {
            tls.store.replace(tls.set());
            info!(certificates = %tls.describe(), "TLS certificates changed");
        }
        Ok(())
    }

    fn reject(&self, why: &str) {
        error!("configuration rejected, the running one stays: {why}");
        self.count(ReloadResult::rejected);
    }

    fn count(&self, result: ReloadResult) {
        self.metrics
            .config_reloads
            .get_or_create(&ReloadLabels { result })
            .inc();
    }
}

/// Polls the certificate files, and reads them again on SIGHUP: a changed pair is served from
/// the next handshake on, a bad one is refused and its previous version stays.
async fn watch_certificates(tls: Arc<Mutex<Tls>>) {
    let mut poll = tokio::time::interval(CERTIFICATE_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut hangup = signal(SignalKind::hangup()).ok();
    loop {
        tokio::select! {
            _ = poll.tick() => {}
            Some(()) = async {
                match hangup.as_mut() {
                    Some(hangup) => hangup.recv().await,
                    None => std::future::pending().await,
                }
            } => {}
        }
        let mut tls = tls.lock().unwrap_or_else(PoisonError::into_inner);
        let refreshed = tls.files.refresh();
        for error in &refreshed.refused {
            error!(error = %Chain(error), "certificate rejected, the previous one stays");
        }
        if !refreshed.reloaded.is_empty() {
            tls.store.replace(tls.set());
            info!(reloaded = ?refreshed.reloaded, certificates = %tls.describe(), "TLS certificates reloaded");
        }
    }
}

/// `fut`, unless SIGTERM or SIGINT comes first (`None`).
async fn until_stopped<T>(
    stop: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    fut: impl Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        value = fut => Some(value),
        () = stop.as_mut() => None,
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn stopping() {
    let Ok(mut terminate) = signal(SignalKind::terminate()) else {
        error!("cannot listen for SIGTERM; stopping on SIGINT only");
        let _ = tokio::signal::ctrl_c().await;
        info!("SIGINT: stopping");
        return;
    };
    tokio::select! {
        _ = terminate.recv() => info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT: stopping"),
    }
}

/// The source's shared key, else `--session-key` or `sessionKey.file`, else a key for this
/// process only.
async fn cookie_key(source: &mut impl ModelSource, options: &RunOptions) -> Result<[u8; KEY_LEN]> {
    if let Some(key) = source.shared_key().await? {
        return Ok(key);
    }
    let file = options
        .session_key
        .clone()
        .or_else(|| source.node().session_key.clone());
    match file {
        Some(path) => Ok(session_key::load_or_create(&path)?),
        None => {
            warn!("no sessionKey.file or --cookie-secret: using a key for this process only; cookies will not survive a restart or work on another agent");
            Ok(session_key::ephemeral()?)
        }
    }
}

/// Listen addresses and the session key are bound at start; say so instead of ignoring it.
fn warn_about_restart_only_changes(old: &Model, new: &Model, options: &RunOptions) {
    if old.proxy.as_ref().map(|p| p.listen) != new.proxy.as_ref().map(|p| p.listen) {
        warn!("proxy.listen changed: takes effect on restart");
    }
    let tls_listen = |model: &Model| {
        model
            .proxy
            .as_ref()
            .and_then(|p| p.tls.as_ref())
            .map(|t| t.listen)
    };
    if tls_listen(old) != tls_listen(new) {
        warn!("proxy.tls.listen changed: takes effect on restart");
    }
    if old.admin != new.admin {
        warn!("admin.listen changed: takes effect on restart");
    }
    if options.session_key.is_none() && old.session_key != new.session_key {
        warn!("sessionKey changed: takes effect on restart");
    }
}

fn target_count(model: &Model) -> usize {
    model.services.values().map(|s| s.targets.len()).sum()
}

/// Every target of the first model, a line each.
fn log_model(model: &Model) {
    for service in model.services.values() {
        for target in &service.targets {
            info!(
                service = %service.name,
                target = %target.address,
                weight = target.weight,
                state = target.state.as_str(),
                "target"
            );
        }
    }
}

/// One line per service whose targets or balancing changed, and per removed service.
fn log_changes(old: &Model, new: &Model) {
    for (name, service) in &new.services {
        let before = old.services.get(name);
        if before == Some(service) {
            continue;
        }
        let active = service
            .targets
            .iter()
            .filter(|t| t.state == TargetState::Active)
            .count();
        info!(
            service = %name,
            active,
            draining = service.targets.len() - active,
            targets = %describe_targets(service),
            balancing = balancing_name(&service.balancing),
            new = before.is_none(),
            "service changed"
        );
        if active == 0 {
            warn!(service = %name, "no ready target: new sessions get 503; sessions pinned to draining targets continue");
        }
    }
    for name in old.services.keys() {
        if !new.services.contains_key(name) {
            info!(service = %name, "service removed");
        }
    }
    for route in &new.routes {
        if !new.services.contains_key(&route.service) {
            // Sources guarantee it (the file validates, translate drops such routes).
            error!(service = %route.service, "the new model routes to a service it does not have");
        }
    }
}

fn describe_targets(service: &Service) -> String {
    service
        .targets
        .iter()
        .map(|t| match t.state {
            TargetState::Active => t.address.to_string(),
            TargetState::Draining => format!("{}(draining)", t.address),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn balancing_name(balancing: &Balancing) -> &'static str {
    match balancing {
        Balancing::RoundRobin => "round-robin",
        Balancing::StickySessions(_) => "sticky-sessions",
        Balancing::LeastConnections => "least-connections",
        Balancing::ConsistentHashing { .. } => "consistent-hashing",
    }
}
