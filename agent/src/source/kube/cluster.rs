//! The cluster source (`tether run --kubernetes`): routes, services and targets come from the
//! API server; the optional file supplies only the node-local `proxy`, `admin` and `dataplane`
//! sections (and `sessionKey`).
//!
//! The file (the DaemonSet's ConfigMap) is watched like a standalone configuration: a change
//! that settles, or SIGHUP, is applied with the cluster's latest routes and services. What the
//! runtime cannot change while running (the listen addresses, `sessionKey`) is logged as taking
//! effect on restart; adding or removing the `dataplane` or `proxy.tls` section, which decide
//! what is watched in the cluster, is refused with the reason.
use super::events::Reporter;
use super::{secret, KubeMetrics, Options, Source};
use crate::model::{AdminSettings, Model, ProxySettings, ProxyTimeouts};
use crate::runtime::{Candidate, Change, ModelSource};
use crate::session_key;
use crate::source::file;
use crate::source::watch::{Reload, Trigger, Watcher};
use crate::sticky::cookie::KEY_LEN;
use anyhow::{bail, Context, Result};
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};
use tracing::{info, warn};

/// Without a file: Kong's proxy and status ports.
pub const DEFAULT_PROXY: &str = "0.0.0.0:8000";
pub const DEFAULT_ADMIN: &str = "0.0.0.0:8100";

/// The cluster's models, for [`crate::runtime::run`].
pub struct ClusterSource {
    options: Options,
    /// The node-local sections; every model from the cluster carries them.
    node: Model,
    /// The node-local file and its content as first read, when there is one.
    node_file: Option<(PathBuf, Vec<u8>)>,
    node_watcher: Option<Watcher>,
    metrics: KubeMetrics,
    /// Connected in [`ModelSource::shared_key`] or [`ModelSource::first`], whichever runs
    /// first (the admin endpoint answers meanwhile).
    client: Option<::kube::Client>,
    watchers: Option<Watching>,
    /// When the first event of the change being applied arrived.
    change_seen: Option<Instant>,
    /// The status Lease (namespace, name), when this agent may write status.
    status_lease: Option<(String, String)>,
}

struct Watching {
    source: Source,
    reporter: Reporter,
    /// The status writer's plan (with the gateway-api dialect and a Lease to hold).
    status: Option<tokio::sync::watch::Sender<Vec<super::status::Write>>>,
}

impl Watching {
    /// Hands the status writer what to write for `translated`.
    fn plan_status(&self, translated: &super::translate::Translated) {
        if let Some(status) = &self.status {
            let plan = super::status::plan(
                &translated.statuses,
                self.source.snapshot(),
                &super::status::now(),
            );
            status.send_if_modified(|current| {
                if *current == plan {
                    return false;
                }
                *current = plan;
                true
            });
        }
    }
}

impl ClusterSource {
    /// Reads the node-local settings from `config` (or takes Kong's default ports).
    pub fn new(config: Option<&Path>, options: Options) -> Result<Self> {
        // Read once: the first sections come from this content, and watching starts from it.
        let node_file = match config {
            Some(path) => Some((path.to_path_buf(), file::read(path)?)),
            None => None,
        };
        let node = node_settings(node_file.as_ref().map(|(p, c)| (p.as_path(), c.as_slice())))?;
        // The dataplane section decides whether Services get kernel frontends.
        let mut options = options;
        options.settings.kernel = node.dataplane.is_some();
        // The TLS listener decides whether Secrets are watched for its certificates.
        options.settings.tls = node.proxy.as_ref().is_some_and(|p| p.tls.is_some());
        Ok(Self {
            options,
            node,
            node_file,
            node_watcher: None,
            metrics: KubeMetrics::default(),
            client: None,
            watchers: None,
            change_seen: None,
            status_lease: None,
        })
    }

    async fn client(&mut self) -> Result<::kube::Client> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let client = super::client(self.options.kubeconfig.as_deref()).await?;
        self.client = Some(client.clone());
        Ok(client)
    }

    /// A model: the cluster's routes and services with the node's sections.
    fn model(&self, translated: super::translate::Translated) -> Model {
        self.with_node(
            translated.routes,
            translated.services,
            translated.certificates,
        )
    }

    fn with_node(
        &self,
        routes: Vec<crate::model::Route>,
        services: BTreeMap<String, crate::model::Service>,
        certificates: Vec<crate::model::PemCertificate>,
    ) -> Model {
        let mut model = Model {
            routes,
            services,
            ..self.node.clone()
        };
        if let Some(tls) = model.proxy.as_mut().and_then(|p| p.tls.as_mut()) {
            tls.cluster = certificates;
        }
        model
    }

    /// A change of the node-local file: the new sections with the running model's routes,
    /// services and certificates (the cluster's, as last applied), or why it is refused (the
    /// old sections stay).
    fn node_changed(&mut self, reload: Reload, running: &Model) -> Change {
        let loaded = match reload.loaded {
            Ok(loaded) => loaded,
            Err(error) => return Change::Rejected(error.to_string()),
        };
        let path = self
            .node_file
            .as_ref()
            .map(|(path, _)| path.display().to_string())
            .unwrap_or_default();
        if let Err(why) = check_node(&loaded.model, &path) {
            return Change::Rejected(format!("{why:#}"));
        }
        let node = loaded.model;
        if node.dataplane.is_some() != self.node.dataplane.is_some() {
            return Change::Rejected(format!(
                "{path}: dataplane: adding or removing the section decides which Services the \
                 kernel path takes from the cluster; restart the agent to change it"
            ));
        }
        let tls = |model: &Model| model.proxy.as_ref().is_some_and(|p| p.tls.is_some());
        if tls(&node) != tls(&self.node) {
            return Change::Rejected(format!(
                "{path}: proxy.tls: adding or removing the section decides whether certificate \
                 Secrets are watched; restart the agent to change it"
            ));
        }
        for warning in &loaded.warnings {
            warn!("{warning}");
        }
        self.node = node;
        let certificates = running
            .proxy
            .as_ref()
            .and_then(|p| p.tls.as_ref())
            .map(|t| t.cluster.clone())
            .unwrap_or_default();
        let model = self.with_node(
            running.routes.clone(),
            running.services.clone(),
            certificates,
        );
        let changed_at = self
            .node_file
            .as_ref()
            .and_then(|(path, _)| std::fs::metadata(path).and_then(|m| m.modified()).ok());
        Change::Model(Candidate {
            model,
            forced: reload.trigger == Trigger::Hangup,
            changed_at,
        })
    }
}

impl ModelSource for ClusterSource {
    fn describe(&self) -> String {
        "the cluster".into()
    }

    fn node(&self) -> &Model {
        &self.node
    }

    fn register(&self, registry: &mut Registry) {
        self.metrics.register(registry);
    }

    /// The `--cookie-secret` Secret, retried until the API server answers (created with a
    /// random key by the first agent).
    async fn shared_key(&mut self) -> Result<Option<[u8; KEY_LEN]>> {
        let Some((namespace, name)) = self.options.cookie_secret.clone() else {
            return Ok(None);
        };
        let client = self.client().await?;
        let mut delay = Duration::from_millis(500);
        loop {
            match secret::load_or_create(&client, &namespace, &name).await {
                Ok((content, origin)) => {
                    let key =
                        session_key::from_content(&format!("Secret {namespace}/{name}"), &content)?;
                    info!(secret = %format!("{namespace}/{name}"), origin = origin.as_str(), "cookie key");
                    tokio::spawn(secret::guard(client, namespace, name, content));
                    return Ok(Some(key));
                }
                Err(super::Error::Secret(message)) => bail!("{message}"),
                Err(error) => {
                    warn!(error = %crate::report::Chain(&error), retry_in_ms = delay.as_millis() as u64, "cannot read the cookie key Secret yet");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Once every watched resource has been listed.
    async fn first(&mut self) -> Result<Model> {
        let client = self.client().await?;
        let mut source =
            Source::start(&client, self.options.settings.clone(), self.metrics.clone());
        let translated = source.synced().await;
        let mut reporter = Reporter::new(
            client.clone(),
            self.options.instance.clone(),
            self.metrics.events_posted.clone(),
        );
        reporter.report(&translated.findings);
        let lease = self.options.status_lease.clone().or_else(|| {
            self.options
                .cookie_secret
                .as_ref()
                .map(|(namespace, _)| (namespace.clone(), "tether-status".to_string()))
        });
        let status = match (self.options.settings.dialects.gateway_api, lease) {
            (true, Some((namespace, name))) => {
                self.status_lease = Some((namespace.clone(), name.clone()));
                let (sender, plans) = tokio::sync::watch::channel(Vec::new());
                let election =
                    super::status::Election::new(client, &namespace, &name, &self.options.instance);
                tokio::spawn(super::status::run(self.client().await?, election, plans));
                Some(sender)
            }
            (true, None) => {
                warn!("no --status-lease (or --cookie-secret): Gateway API status is not written");
                None
            }
            (false, _) => None,
        };
        let watching = Watching {
            source,
            reporter,
            status,
        };
        watching.plan_status(&translated);
        let model = self.model(translated);
        self.watchers = Some(watching);
        if let Some((path, initial)) = &self.node_file {
            // Watching starts from the content the node's sections were read from.
            self.node_watcher = Some(Watcher::node(path.clone(), initial.clone()));
        }
        Ok(model)
    }

    async fn next(&mut self, running: &Model) -> Change {
        let Some(watching) = self.watchers.as_mut() else {
            // `first` has not run: the runtime never asks.
            return std::future::pending().await;
        };
        let node_watcher = &mut self.node_watcher;
        let node_change = async {
            match node_watcher.as_mut() {
                Some(watcher) => watcher.next().await,
                None => std::future::pending().await,
            }
        };
        let (translated, first_event) = tokio::select! {
            cluster = watching.source.next() => cluster,
            reload = node_change => return self.node_changed(reload, running),
        };
        watching.reporter.report(&translated.findings);
        watching.plan_status(&translated);
        self.change_seen = Some(first_event.into_std());
        let changed_at = SystemTime::now().checked_sub(first_event.elapsed());
        Change::Model(Candidate {
            model: self.model(translated),
            forced: false,
            changed_at,
        })
    }

    async fn stop(&mut self) {
        if let (Some((namespace, name)), Some(client)) = (&self.status_lease, &self.client) {
            super::status::Election::release(
                client.clone(),
                namespace,
                name,
                &self.options.instance,
            )
            .await;
        }
    }

    fn applied(&mut self, _model: &Model) {
        self.metrics.models_applied.inc();
        if let Some(seen) = self.change_seen.take() {
            let to_proxy = seen.elapsed();
            self.metrics
                .change_to_proxy_seconds
                .observe(to_proxy.as_secs_f64());
            info!(
                change_to_proxy_ms = to_proxy.as_secs_f64() * 1e3,
                "cluster change served"
            );
        }
    }
}

/// The node-local settings: the file's proxy, admin, dataplane and sessionKey sections, or
/// Kong's default ports.
fn node_settings(config: Option<(&Path, &[u8])>) -> Result<Model> {
    let Some((path, content)) = config else {
        let parse = |text: &str| -> Result<SocketAddr> { Ok(text.parse()?) };
        return Ok(Model {
            proxy: Some(ProxySettings {
                listen: parse(DEFAULT_PROXY)?,
                timeouts: ProxyTimeouts::default(),
                max_header_bytes: crate::model::DEFAULT_MAX_HEADER_BYTES,
                max_connections: crate::model::DEFAULT_MAX_CONNECTIONS,
                tls: None,
                http2: Default::default(),
            }),
            admin: Some(AdminSettings {
                listen: parse(DEFAULT_ADMIN)?,
            }),
            session_key: None,
            dataplane: None,
            routes: Vec::new(),
            services: BTreeMap::new(),
        });
    };
    let loaded = file::parse_node_bytes(content, &path.display().to_string())?;
    for warning in &loaded.warnings {
        warn!("{warning}");
    }
    check_node(&loaded.model, &path.display().to_string())?;
    Ok(loaded.model)
}

/// What the node-local file may say: proxy (required), admin, dataplane, sessionKey.
fn check_node(model: &Model, path: &str) -> Result<()> {
    if !model.routes.is_empty() || !model.services.is_empty() {
        bail!(
            "{path}: with --kubernetes the file supplies only proxy, admin and dataplane; routes and services come from the cluster"
        );
    }
    model.proxy.as_ref().with_context(|| {
        format!("{path}: with --kubernetes the file needs a proxy section (proxy.listen)")
    })?;
    Ok(())
}
