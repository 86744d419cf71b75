//! `tether run --kubernetes`: the model's routes, services and targets come from the cluster;
//! the optional file supplies the node-local `proxy`, `admin` and `dataplane` sections.
//!
//! Start-up: the admin endpoint answers `/healthz` at once and `/readyz` 503 until the cookie
//! key is read from its Secret, every watched resource has been listed, the proxy listens and
//! the dataplane (when configured) holds the first model. From then on `/readyz` stays 200,
//! also while the API server is unreachable: the last model keeps serving.
use crate::admin::{self, AdminState};
use crate::metrics::{Metrics, OutcomeCounters};
use crate::model::{AdminSettings, Model, ProxySettings, ProxyTimeouts, TargetState};
use crate::proxy::{Proxy, Shared};
use crate::run::RunOptions;
use crate::session_key;
use crate::source::file;
use crate::source::kube::{self, events::Reporter, secret, KubeMetrics, Source};
use crate::sticky::cookie::{CookieCodec, KEY_LEN};
use crate::table::Tables;
use anyhow::{bail, Context, Result};
use arc_swap::ArcSwap;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

/// Without a file: Kong's proxy and status ports.
pub const DEFAULT_PROXY: &str = "0.0.0.0:8000";
pub const DEFAULT_ADMIN: &str = "0.0.0.0:8100";

/// The node-local settings: the file's proxy, admin and dataplane sections, or defaults.
fn base_model(options: &RunOptions) -> Result<Model> {
    let Some(path) = &options.config else {
        let parse = |text: &str| -> Result<SocketAddr> { Ok(text.parse()?) };
        return Ok(Model {
            proxy: Some(ProxySettings {
                listen: parse(DEFAULT_PROXY)?,
                timeouts: ProxyTimeouts::default(),
                max_header_bytes: crate::model::DEFAULT_MAX_HEADER_BYTES,
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
    let loaded = file::load(path)?;
    for warning in &loaded.warnings {
        warn!("{warning}");
    }
    let model = loaded.model;
    if !model.routes.is_empty() || !model.services.is_empty() {
        bail!(
            "{}: with --kubernetes the file supplies only proxy, admin and dataplane; routes and services come from the cluster",
            path.display()
        );
    }
    if model.proxy.is_none() {
        bail!(
            "{}: with --kubernetes the file needs a proxy section (proxy.listen)",
            path.display()
        );
    }
    Ok(model)
}

pub fn run(options: RunOptions, kubernetes: kube::Options) -> Result<()> {
    let base = base_model(&options)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let metrics = Metrics::default();
    let kube_metrics = KubeMetrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    kube_metrics.register(&mut registry);
    // Registers the dataplane's metrics; it starts with the first model from the cluster.
    let mut dataplane = crate::dataplane::Runner::start(
        &Model {
            dataplane: None,
            ..base.clone()
        },
        options.dataplane.clone(),
        &mut registry,
    )?;
    let admin_state = Arc::new(AdminState {
        registry,
        ready: false.into(),
    });
    let proxy = runtime.block_on(async {
        if let Some(admin) = &base.admin {
            admin::start(admin.listen, admin_state.clone())
                .await
                .with_context(|| format!("admin.listen: cannot listen on {}", admin.listen))?;
        }
        let client = kube::client(kubernetes.kubeconfig.as_deref()).await?;
        let key = tokio::select! {
            key = cookie_key(&client, &options, &kubernetes, &base) => key?,
            () = stopping() => return Ok(None),
        };
        let codec = CookieCodec::new(&key);
        let mut settings = kubernetes.settings.clone();
        settings.kernel = base.dataplane.is_some();
        let mut source = Source::start(&client, settings, kube_metrics.clone());
        let translated = tokio::select! {
            translated = source.synced() => translated,
            () = stopping() => return Ok(None),
        };
        let mut reporter = Reporter::new(
            client.clone(),
            kubernetes.instance.clone(),
            kube_metrics.events_posted.clone(),
        );
        let mut running = Model {
            routes: translated.routes,
            services: translated.services,
            ..base.clone()
        };
        let mut generation = 1u64;
        let shared = Arc::new(Shared {
            tables: ArcSwap::from_pointee(Tables::build(&running, &codec, &metrics, generation)),
            outcomes: OutcomeCounters::new(&metrics),
            codec,
            metrics: metrics.clone(),
        });
        metrics.config_generation.set(1);
        let proxy = match &running.proxy {
            Some(settings) => Some(
                Proxy::start(settings.listen, options.workers, shared.clone()).with_context(
                    || format!("proxy.listen: cannot listen on {}", settings.listen),
                )?,
            ),
            None => None,
        };
        dataplane.begin(&running)?;
        crate::run::log_model(&running);
        info!(
            services = running.services.len(),
            routes = running.routes.len(),
            targets = target_count(&running),
            "tether is running from the cluster"
        );
        reporter.report(&translated.findings);
        admin_state.ready.store(true, Ordering::Release);
        loop {
            let (translated, first) = tokio::select! {
                next = source.next() => next,
                () = stopping() => break,
            };
            reporter.report(&translated.findings);
            let model = Model {
                routes: translated.routes,
                services: translated.services,
                ..base.clone()
            };
            if model == running {
                continue;
            }
            generation += 1;
            log_changes(&running, &model);
            shared.tables.store(Arc::new(shared.tables.load().rebuild(
                &model,
                &shared.codec,
                &metrics,
                generation,
            )));
            let to_proxy = first.elapsed();
            metrics.config_generation.set(generation as i64);
            kube_metrics.models_applied.inc();
            kube_metrics
                .change_to_proxy_seconds
                .observe(to_proxy.as_secs_f64());
            let changed_at = SystemTime::now().checked_sub(first.elapsed());
            dataplane.apply_at(&model, changed_at);
            info!(
                generation,
                services = model.services.len(),
                routes = model.routes.len(),
                targets = target_count(&model),
                change_to_proxy_ms = to_proxy.as_secs_f64() * 1e3,
                "model applied"
            );
            running = model;
        }
        admin_state.ready.store(false, Ordering::Release);
        Ok::<Option<Proxy>, anyhow::Error>(proxy)
    })?;
    if let Some(proxy) = proxy {
        proxy.shutdown(options.shutdown_grace);
    }
    info!("stopped");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn stopping() {
    let Ok(mut terminate) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = terminate.recv() => info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT: stopping"),
    }
}

/// The cookie key: the shared Secret (retried until the API server answers), else a key file,
/// else one for this process only.
async fn cookie_key(
    client: &::kube::Client,
    options: &RunOptions,
    kubernetes: &kube::Options,
    base: &Model,
) -> Result<[u8; KEY_LEN]> {
    if let Some((namespace, name)) = &kubernetes.cookie_secret {
        let mut delay = Duration::from_millis(500);
        loop {
            match secret::load_or_create(client, namespace, name).await {
                Ok((content, origin)) => {
                    let key =
                        session_key::from_content(&format!("Secret {namespace}/{name}"), &content)?;
                    info!(secret = %format!("{namespace}/{name}"), origin = origin.as_str(), "cookie key");
                    tokio::spawn(secret::guard(
                        client.clone(),
                        namespace.clone(),
                        name.clone(),
                        content,
                    ));
                    return Ok(key);
                }
                Err(kube::Error::Secret(message)) => bail!("{message}"),
                Err(error) => {
                    let error = format!("{:#}", anyhow::Error::from(error));
                    warn!(%error, retry_in_ms = delay.as_millis() as u64, "cannot read the cookie key Secret yet");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
    match options
        .session_key
        .clone()
        .or_else(|| base.session_key.clone())
    {
        Some(path) => Ok(session_key::load_or_create(&path)?),
        None => {
            warn!("no --cookie-secret: using a key for this process only; cookies will not survive a restart or work on another agent");
            Ok(session_key::ephemeral()?)
        }
    }
}

fn target_count(model: &Model) -> usize {
    model.services.values().map(|s| s.targets.len()).sum()
}

/// One line per service whose targets or balancing changed.
fn log_changes(old: &Model, new: &Model) {
    for (name, service) in &new.services {
        let before = old.services.get(name);
        if before == Some(service) {
            continue;
        }
        let describe = |service: &crate::model::Service| {
            service
                .targets
                .iter()
                .map(|t| {
                    let state = match t.state {
                        TargetState::Active => "",
                        TargetState::Draining => "(draining)",
                    };
                    format!("{}{state}", t.address)
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        let active = service
            .targets
            .iter()
            .filter(|t| t.state == TargetState::Active)
            .count();
        info!(
            service = %name,
            active,
            draining = service.targets.len() - active,
            targets = %describe(service),
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
    if let Err(error) = check(new) {
        error!(%error, "the model from the cluster is inconsistent");
    }
}

fn balancing_name(balancing: &crate::model::Balancing) -> &'static str {
    use crate::model::Balancing;
    match balancing {
        Balancing::RoundRobin => "round-robin",
        Balancing::StickySessions(_) => "sticky-sessions",
        Balancing::LeastConnections => "least-connections",
        Balancing::ConsistentHashing { .. } => "consistent-hashing",
    }
}

/// Routes name existing services (translate guarantees it; checked as a guard).
fn check(model: &Model) -> Result<()> {
    for route in &model.routes {
        if !model.services.contains_key(&route.service) {
            bail!("route to unknown service {}", route.service);
        }
    }
    Ok(())
}
