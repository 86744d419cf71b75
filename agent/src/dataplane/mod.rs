//! The kernel data plane: loads tether's eBPF programs with their maps pinned under
//! `/sys/fs/bpf/tether/`, attaches them through pinned bpf_links (XDP on the configured
//! interfaces' ingress, TC on their egress), and mirrors the model's kernel services into the
//! maps as diffs.
//!
//! Restart behaviour: `tether run` stopping closes its handles only. The pinned links keep the
//! programs attached and the pinned maps keep services, targets and flows, so established
//! flows keep flowing while no agent runs. The next agent re-opens the maps, reads back what
//! they hold (ids included), swaps its programs into the pinned links atomically, and goes on
//! diffing from there. `tether cleanup` detaches and deletes everything.
pub mod inspect;
pub mod interfaces;
mod kernel;
pub mod maps;
pub mod metrics;
pub mod mirror;
mod netdev;
pub mod object;
pub mod pins;
pub mod plan;

use crate::model::{DataplaneSettings, Model};
use interfaces::InterfaceMirror;
use kernel::Kernel;
use metrics::DataplaneMetrics;
use mirror::Mirror;
use pins::Pins;
use prometheus_client::registry::Registry;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime};
use tracing::{error, info, warn};

pub use kernel::{MIN_KERNEL, TC_ATTACH_ENV};
pub use pins::DEFAULT_PIN_DIR;

/// Reloads whose file changed longer ago than this (a SIGHUP of an unchanged file) are not
/// counted in the change-to-maps metric.
const CHANGE_WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no kernel object found (looked at {}); build it with `cargo xtask build-ebpf`, or pass \
         --ebpf-object PATH (or set TETHER_EBPF_OBJECT)",
        list(searched)
    )]
    ObjectMissing { searched: Vec<PathBuf> },
    #[error(
        "Linux {found} is too old for the kernel data plane: it needs {}.{} or later \
         (bpf_redirect_peer, bpf_link attachments for XDP)",
        MIN_KERNEL.0,
        MIN_KERNEL.1
    )]
    KernelTooOld { found: String },
    #[error("{0} is not on a bpf filesystem; mount one (`mount -t bpf bpf /sys/fs/bpf`) or choose another --pin-dir")]
    NotBpffs(PathBuf),
    #[error(
        "the pinned map {path} is {found}, but this tether expects {wanted}: another version \
         pinned it. `tether cleanup` removes the old pins (established flows are dropped)"
    )]
    SchemaMismatch {
        path: PathBuf,
        found: String,
        wanted: String,
    },
    #[error(
        "the pinned maps are schema version {found}, this tether writes version {wanted}. \
         `tether cleanup` removes the old pins (established flows are dropped)"
    )]
    SchemaVersion { found: u64, wanted: u64 },
    #[error("loading the kernel object {object}")]
    Load {
        object: PathBuf,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("the kernel object has no program {0}; is it tether's?")]
    MissingProgram(&'static str),
    #[error("the kernel object has no map {0}; is it tether's?")]
    MissingMap(String),
    #[error("cannot {action} the program {program}")]
    Program {
        program: &'static str,
        action: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("cannot attach {program} to {interface}")]
    Attach {
        program: &'static str,
        interface: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("cannot delete tether's TC filter on {interface}")]
    Detach {
        interface: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("TETHER_TC_ATTACH={0:?}: expected tcx or netlink")]
    TcAttachSetting(String),
    #[error("{what} on {interface} was attached without a bpf_link, so it cannot be pinned (kernel too old?)")]
    NoBpfLink {
        what: &'static str,
        interface: String,
    },
    #[error("cannot pin {path}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("cannot open the pinned map {path}")]
    OpenPin {
        path: PathBuf,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("map {name}")]
    Map {
        name: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("cannot {what}")]
    MapWrite {
        what: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    #[error("cannot {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{0} opens pinned BPF maps and needs root (CAP_BPF and CAP_SYS_ADMIN); run it with sudo"
    )]
    NotRoot(&'static str),
    #[error("nothing is pinned at {0}: is `tether run` running with a dataplane section? (--pin-dir picks another directory)")]
    NothingPinned(PathBuf),
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where the dataplane's files are.
#[derive(Debug, Clone)]
pub struct Options {
    /// `--ebpf-object` / `TETHER_EBPF_OBJECT`; `None` searches the defaults (see [`object`]).
    pub object: Option<PathBuf>,
    /// `--pin-dir` / `TETHER_PIN_DIR`.
    pub pin_dir: PathBuf,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            object: None,
            pin_dir: PathBuf::from(DEFAULT_PIN_DIR),
        }
    }
}

/// The loaded programs and the mirror of their maps.
pub struct Dataplane {
    kernel: Kernel,
    mirror: Mirror,
    interfaces: InterfaceMirror,
    settings: DataplaneSettings,
    metrics: DataplaneMetrics,
}

impl Dataplane {
    /// Loads the programs (re-opening pinned maps), fills the maps from `model`, then attaches
    /// the programs where `model.dataplane` says.
    pub fn start(
        settings: &DataplaneSettings,
        model: &Model,
        options: &Options,
        metrics: DataplaneMetrics,
    ) -> Result<Self, Error> {
        let started = Instant::now();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(Error::NotRoot("the dataplane section (kernel services)"));
        }
        let object = object::locate(options.object.as_deref())?;
        let pins = Pins::new(&options.pin_dir);
        let (kernel, maps) = Kernel::load(&object, &pins)?;
        let mut mirror = Mirror::open(maps)?;
        let reopened = mirror.state().services.len();
        // Maps before attachments: a freshly attached program finds its services ready.
        let applied = mirror.apply(model)?;
        for warning in &applied.warnings {
            warn!("{warning}");
        }
        let interfaces = InterfaceMirror::open(&mirror.maps().interfaces);
        let mut dataplane = Self {
            kernel,
            mirror,
            interfaces,
            settings: settings.clone(),
            metrics,
        };
        dataplane.attach_and_sync(true)?;
        dataplane.record(&applied, started.elapsed());
        info!(
            object = %object.display(),
            pins = %options.pin_dir.display(),
            reopened_services = reopened,
            changes = %applied.summary,
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "dataplane ready"
        );
        Ok(dataplane)
    }

    /// Mirrors `model` into the maps, and re-attaches when the interfaces or the XDP mode
    /// changed. `changed_at` is when the configuration changed, for the change-to-maps time.
    pub fn apply(
        &mut self,
        model: &Model,
        changed_at: Option<SystemTime>,
    ) -> Result<plan::Summary, Error> {
        let started = Instant::now();
        let applied = self.mirror.apply(model).inspect_err(|_| {
            self.metrics.apply_errors.inc();
        })?;
        let elapsed = started.elapsed();
        for warning in &applied.warnings {
            warn!("{warning}");
        }
        self.record(&applied, elapsed);
        let since_change = changed_at
            .and_then(|at| SystemTime::now().duration_since(at).ok())
            .filter(|since| *since < CHANGE_WINDOW);
        if let Some(since) = since_change {
            self.metrics
                .change_to_maps_seconds
                .observe(since.as_secs_f64());
        }
        info!(
            changes = %applied.summary,
            apply_ms = elapsed.as_secs_f64() * 1e3,
            config_change_to_maps_ms = since_change.map(|s| s.as_secs_f64() * 1e3),
            "dataplane maps updated"
        );
        if let Some(settings) = &model.dataplane {
            if *settings != self.settings {
                let previous = std::mem::replace(&mut self.settings, settings.clone());
                if let Err(error) = self.attach_and_sync(false) {
                    // Tried again with the next change.
                    self.settings = previous;
                    return Err(error);
                }
            }
        }
        Ok(applied.summary)
    }

    /// Attaches the uplinks' programs and brings the interfaces in line with the settings. The
    /// peer-path TC program goes on before pod interfaces get the peer role, and off after they
    /// lost it (which clears the route cache): no marked packet meets an uplink without it.
    fn attach_and_sync(&mut self, replace_programs: bool) -> Result<(), Error> {
        let peer = self.settings.peer_delivery();
        if !peer {
            self.sync_interfaces(replace_programs)?;
        }
        for change in self
            .kernel
            .attach(&self.settings.interfaces, self.settings.xdp_mode, peer)?
        {
            info!("dataplane: {change}");
        }
        if peer {
            self.sync_interfaces(replace_programs)?;
        }
        Ok(())
    }

    /// Brings the interfaces map and the pod-interface reply programs in line with the
    /// interfaces the node has now: called at start, on a settings change and every
    /// [`interfaces::RESCAN_INTERVAL`] (pod interfaces come and go with pods).
    pub fn refresh_interfaces(&mut self) -> Result<(), Error> {
        self.sync_interfaces(false)
    }

    /// [`Dataplane::refresh_interfaces`]; `replace_programs` also swaps the loaded program into
    /// the pod-interface links already pinned (at start, which may be an upgrade).
    fn sync_interfaces(&mut self, replace_programs: bool) -> Result<(), Error> {
        let links = interfaces::list()?;
        let wanted = interfaces::desired(&self.settings, &links);
        let pods: Vec<(&str, u32)> = wanted
            .iter()
            .filter(|(_, interface)| interface.roles & tether_common::InterfaceRole::POD != 0)
            .map(|(ifindex, interface)| (interface.name.as_str(), *ifindex))
            .collect();
        // The reply program first: a pod interface the XDP program transmits into has it.
        for change in self.kernel.attach_pods(&pods, replace_programs)? {
            info!("dataplane: {change}");
        }
        if self
            .interfaces
            .sync(&mut self.mirror.maps_mut().interfaces, &wanted)?
        {
            self.mirror.clear_routes()?;
            info!(
                uplinks = ?wanted.values().filter(|i| i.roles & tether_common::InterfaceRole::UPLINK != 0).map(|i| i.name.as_str()).collect::<Vec<_>>(),
                pods = ?pods.iter().map(|(name, _)| *name).collect::<Vec<_>>(),
                // Pod interfaces neither path can deliver to take their packets from the stack.
                peer_into = ?wanted.values().filter(|i| i.roles & tether_common::InterfaceRole::PEER_TARGET != 0).map(|i| i.name.as_str()).collect::<Vec<_>>(),
                redirect_into = ?wanted.values().filter(|i| i.roles & tether_common::InterfaceRole::XDP_TARGET != 0).map(|i| i.name.as_str()).collect::<Vec<_>>(),
                "dataplane: interfaces updated"
            );
        }
        Ok(())
    }

    fn record(&self, applied: &mirror::Applied, elapsed: Duration) {
        self.metrics.apply_seconds.observe(elapsed.as_secs_f64());
        self.metrics
            .map_writes
            .inc_by(applied.summary.writes as u64);
        let state = self.mirror.state();
        self.metrics.services.set(state.services.len() as i64);
        self.metrics.targets.set(state.target_count() as i64);
    }
}

/// The dataplane as `tether run` drives it: started when the configuration has a
/// `dataplane` section, given every reloaded model.
pub struct Runner {
    options: Options,
    metrics: DataplaneMetrics,
    dataplane: Option<Arc<Mutex<Dataplane>>>,
}

/// Shares a started dataplane with a thread that rescans the interfaces every
/// [`interfaces::RESCAN_INTERVAL`] for as long as the dataplane lives.
fn shared(dataplane: Dataplane) -> Arc<Mutex<Dataplane>> {
    let dataplane = Arc::new(Mutex::new(dataplane));
    let weak: Weak<Mutex<Dataplane>> = Arc::downgrade(&dataplane);
    let spawned = std::thread::Builder::new()
        .name("tether-interfaces".into())
        .spawn(move || loop {
            std::thread::sleep(interfaces::RESCAN_INTERVAL);
            let Some(dataplane) = weak.upgrade() else {
                return;
            };
            let mut dataplane = dataplane.lock().unwrap_or_else(PoisonError::into_inner);
            if let Err(error) = dataplane.refresh_interfaces() {
                warn!(error = %crate::report::Chain(&error), "rescanning the interfaces failed; the interfaces map keeps what it held");
            }
        });
    if let Err(error) = spawned {
        warn!(%error, "cannot start the interface rescan; pod interfaces are read at start and on reload only");
    }
    dataplane
}

impl Runner {
    /// Registers the metrics; the dataplane starts with the first model ([`Runner::begin`]).
    pub fn new(options: Options, registry: &mut Registry) -> Self {
        let metrics = DataplaneMetrics::default();
        metrics.register(registry);
        Self {
            options,
            metrics,
            dataplane: None,
        }
    }

    /// Starts the dataplane if `model` has a `dataplane` section and none runs yet. A dataplane
    /// that cannot start is an error: the configuration asks for kernel services.
    pub fn begin(&mut self, model: &Model) -> Result<(), Error> {
        if let (None, Some(settings)) = (&self.dataplane, &model.dataplane) {
            self.dataplane = Some(shared(Dataplane::start(
                settings,
                model,
                &self.options,
                self.metrics.clone(),
            )?));
        }
        Ok(())
    }

    /// Applies a new model; `changed_at` is when the change happened (for the change-to-maps
    /// metric). Failures are logged; the maps keep what they held.
    pub fn apply(&mut self, model: &Model, changed_at: Option<SystemTime>) {
        match (&mut self.dataplane, &model.dataplane) {
            (Some(dataplane), settings) => {
                if settings.is_none() {
                    warn!("the dataplane section is gone: kernel services are removed; the programs stay attached until `tether cleanup`");
                }
                let mut dataplane = dataplane.lock().unwrap_or_else(PoisonError::into_inner);
                if let Err(error) = dataplane.apply(model, changed_at) {
                    error!(error = %crate::report::Chain(&error), "dataplane update failed; the maps keep their previous contents where not written");
                }
            }
            (None, Some(settings)) => {
                match Dataplane::start(settings, model, &self.options, self.metrics.clone()) {
                    Ok(dataplane) => self.dataplane = Some(shared(dataplane)),
                    Err(error) => {
                        self.metrics.apply_errors.inc();
                        error!(error = %crate::report::Chain(&error), "cannot start the dataplane");
                    }
                }
            }
            (None, None) => {}
        }
    }
}
