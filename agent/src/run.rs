//! `tether run`: load the configuration, start the proxy and the admin endpoint, apply reloads,
//! and stop gracefully on SIGTERM or SIGINT.
use crate::admin::{self, AdminState};
use crate::metrics::{Metrics, OutcomeCounters, ReloadLabels, ReloadResult};
use crate::model::Model;
use crate::proxy::{Proxy, Shared};
use crate::session_key;
use crate::source::file::{self, ConfigError, Loaded};
use crate::source::watch;
use crate::sticky::cookie::CookieCodec;
use crate::table::Tables;
use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use prometheus_client::registry::Registry;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

pub struct RunOptions {
    /// The configuration file; in Kubernetes mode optional, and only its proxy, admin and
    /// dataplane sections are read.
    pub config: Option<PathBuf>,
    /// `--kubernetes`: routes, services and targets come from the cluster.
    pub kubernetes: Option<crate::source::kube::Options>,
    pub workers: usize,
    /// Overrides the file's `sessionKey.file`.
    pub session_key: Option<PathBuf>,
    /// How long open requests may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// The kernel data plane's object and pin directory.
    pub dataplane: crate::dataplane::Options,
}

/// Loads and validates the file; the error names the file, line, column and field.
pub fn load_config(path: &std::path::Path) -> Result<Loaded, ConfigError> {
    file::load(path)
}

pub fn run(mut options: RunOptions) -> Result<()> {
    if let Some(kubernetes) = options.kubernetes.take() {
        return crate::run_kube::run(options, kubernetes);
    }
    let Some(config) = options.config.clone() else {
        anyhow::bail!("--config FILE is required (or --kubernetes)");
    };
    let initial_text =
        std::fs::read(&config).with_context(|| format!("cannot read {}", config.display()))?;
    let loaded = file::parse(
        &String::from_utf8_lossy(&initial_text),
        &config.display().to_string(),
    )?;
    for warning in &loaded.warnings {
        warn!("{warning}");
    }
    let model = loaded.model;
    let key_file = options
        .session_key
        .clone()
        .or_else(|| model.session_key.clone());
    let key = match &key_file {
        Some(path) => session_key::load_or_create(path)?,
        None => {
            warn!("no sessionKey.file: using a key for this process only; cookies will not survive a restart or work on another agent");
            session_key::ephemeral()?
        }
    };
    let codec = CookieCodec::new(&key);
    let metrics = Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    // The kernel data plane, when the file has a `dataplane` section; reloads are mirrored
    // into its maps below. Stopping leaves it attached (see dataplane/mod.rs).
    let mut dataplane =
        crate::dataplane::Runner::start(&model, options.dataplane.clone(), &mut registry)?;
    let tables = Tables::build(&model, &codec, &metrics, 1);
    metrics.config_generation.set(1);
    let shared = Arc::new(Shared {
        tables: ArcSwap::from_pointee(tables),
        outcomes: OutcomeCounters::new(&metrics),
        codec,
        metrics: metrics.clone(),
    });
    log_model(&model);
    let proxy = match &model.proxy {
        Some(settings) => Some(
            Proxy::start(settings.listen, options.workers, shared.clone())
                .with_context(|| format!("proxy.listen: cannot listen on {}", settings.listen))?,
        ),
        None => None,
    };
    let admin_state = Arc::new(AdminState {
        registry,
        ready: false.into(),
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        if let Some(admin) = &model.admin {
            admin::start(admin.listen, admin_state.clone())
                .await
                .with_context(|| format!("admin.listen: cannot listen on {}", admin.listen))?;
        }
        admin_state.ready.store(true, Ordering::Release);
        info!(config = %config.display(), "tether is running");
        let mut running = model;
        let mut generation = 1u64;
        let reloads = watch::watch(config.clone(), initial_text, move |result| {
            let outcome = match result {
                Ok(loaded) => {
                    for warning in &loaded.warnings {
                        warn!("{warning}");
                    }
                    warn_about_restart_only_changes(&running, &loaded.model, key_file.as_ref());
                    generation += 1;
                    let tables = shared.tables.load().rebuild(
                        &loaded.model,
                        &shared.codec,
                        &metrics,
                        generation,
                    );
                    shared.tables.store(Arc::new(tables));
                    metrics.config_generation.set(generation as i64);
                    log_model(&loaded.model);
                    info!(generation, "configuration applied");
                    dataplane.apply(&loaded.model);
                    running = loaded.model;
                    ReloadResult::applied
                }
                Err(rejected) => {
                    error!("configuration rejected, the running one stays: {rejected}");
                    ReloadResult::rejected
                }
            };
            metrics
                .config_reloads
                .get_or_create(&ReloadLabels { result: outcome })
                .inc();
        });
        let mut terminate = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = reloads => {}
            _ = terminate.recv() => info!("SIGTERM: stopping"),
            _ = tokio::signal::ctrl_c() => info!("SIGINT: stopping"),
        }
        admin_state.ready.store(false, Ordering::Release);
        Ok::<(), anyhow::Error>(())
    })?;
    if let Some(proxy) = proxy {
        proxy.shutdown(options.shutdown_grace);
    }
    info!("stopped");
    Ok(())
}

/// Listen addresses and the session key are bound at start; say so instead of ignoring it.
fn warn_about_restart_only_changes(old: &Model, new: &Model, key_override: Option<&PathBuf>) {
    if old.proxy.as_ref().map(|p| p.listen) != new.proxy.as_ref().map(|p| p.listen) {
        warn!("proxy.listen changed: takes effect on restart");
    }
    if old.admin != new.admin {
        warn!("admin.listen changed: takes effect on restart");
    }
    if key_override.is_none() && old.session_key != new.session_key {
        warn!("sessionKey changed: takes effect on restart");
    }
}

pub(crate) fn log_model(model: &Model) {
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
