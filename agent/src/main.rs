//! The `tether` command.
use anyhow::Result;
use clap::builder::TypedValueParser;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tether::runtime::{self, RunOptions};
use tether::source::{kube::cluster::ClusterSource, standalone::FileSource};

// The proxy allocates small, short-lived buffers per request; mimalloc's thread-local free
// lists serve those faster than glibc's malloc (measured with `cargo xtask bench l7`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tether",
    version,
    about = "Cookie-pinned HTTP sessions and graceful drain for Kubernetes pods"
)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[expect(
    clippy::large_enum_variant,
    reason = "parsed once at start; boxing the large variant would buy nothing"
)]
#[derive(Subcommand)]
enum Command {
    /// Run the agent: from a configuration file (standalone), or from the cluster
    /// (--kubernetes).
    Run {
        /// The YAML configuration. With --kubernetes optional, and only its proxy, admin and
        /// dataplane sections count.
        #[arg(long, short, required_unless_present = "kubernetes")]
        config: Option<PathBuf>,
        #[command(flatten)]
        kubernetes: KubeArgs,
        /// Proxy worker threads (default: one per core).
        #[arg(long)]
        workers: Option<usize>,
        /// File holding the cookie signing key; created if absent (overrides sessionKey.file).
        #[arg(long, env = "TETHER_SESSION_KEY_FILE")]
        session_key: Option<PathBuf>,
        /// Seconds open requests get to finish after SIGTERM.
        #[arg(long, default_value_t = 10)]
        shutdown_grace: u64,
        /// The kernel object (default: next to this binary, /usr/lib/tether/tether-ebpf, or
        /// the workspace's `cargo xtask build-ebpf` output).
        #[arg(long, env = "TETHER_EBPF_OBJECT")]
        ebpf_object: Option<PathBuf>,
        /// Where the kernel maps and program links are pinned.
        #[arg(long, env = "TETHER_PIN_DIR", default_value = tether::dataplane::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Show the kernel data plane's pinned maps (of a running or stopped agent).
    Maps {
        #[arg(value_enum)]
        view: tether::dataplane::inspect::View,
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
        #[arg(long, env = "TETHER_PIN_DIR", default_value = tether::dataplane::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Detach the kernel programs and delete their pinned maps (drops established kernel flows).
    Cleanup {
        #[arg(long, env = "TETHER_PIN_DIR", default_value = tether::dataplane::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Check a configuration file and exit: 0 when valid, 1 with the reason when not.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// `tether run --kubernetes` and its settings.
#[derive(clap::Args)]
struct KubeArgs {
    /// Read routes, services, policies and targets from the Kubernetes API (in-cluster, or
    /// through a kubeconfig).
    #[arg(long)]
    kubernetes: bool,
    /// The kubeconfig to use (default: KUBECONFIG, ~/.kube/config, then in-cluster).
    #[arg(long, requires = "kubernetes")]
    kubeconfig: Option<PathBuf>,
    /// The Secret (NAMESPACE/NAME) holding the cookie key every agent shares; created with a
    /// random key by the first agent if absent.
    #[arg(long, env = "TETHER_COOKIE_SECRET", value_parser = tether::source::kube::parse_secret)]
    cookie_secret: Option<(String, String)>,
    /// Keep terminating endpoints as draining targets (weight 0) until they disappear, like
    /// Kong Ingress Controller's flag (env CONTROLLER_ENABLE_DRAIN_SUPPORT is read too).
    #[arg(long, env = "TETHER_ENABLE_DRAIN_SUPPORT", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    enable_drain_support: Option<bool>,
    /// Configuration dialects to read: kong, ingress-nginx, gateway-api (comma-separated), or all.
    #[arg(long, env = "TETHER_DIALECTS", default_value = "all",
          value_parser = tether::source::kube::parse_dialects)]
    dialects: tether::source::kube::translate::Dialects,
    /// Only Ingresses of these classes (spec.ingressClassName or the kubernetes.io/ingress.class
    /// annotation); default: every Ingress.
    #[arg(
        long = "ingress-class",
        env = "TETHER_INGRESS_CLASSES",
        value_delimiter = ','
    )]
    ingress_classes: Vec<String>,
    /// A GatewayClass that is tether's by name (repeatable), besides those whose
    /// controllerName is tether.dev/gateway-controller: Kong's Gateways work unchanged.
    #[arg(
        long = "gateway-class",
        env = "TETHER_GATEWAY_CLASSES",
        value_delimiter = ','
    )]
    gateway_classes: Vec<String>,
    /// This node's IP, for NodePort frontends on the kernel path (the DaemonSet passes
    /// status.hostIP).
    #[arg(long, env = "TETHER_NODE_IP")]
    node_ip: Option<std::net::IpAddr>,
    /// The Lease (NAMESPACE/NAME) whose holder writes Gateway API status, so that one agent
    /// writes it; default: tether-status in the --cookie-secret's namespace.
    #[arg(long, env = "TETHER_STATUS_LEASE", value_parser = tether::source::kube::parse_secret)]
    status_lease: Option<(String, String)>,
    /// This agent's name in Events (the DaemonSet passes spec.nodeName); default: the host name.
    #[arg(long, env = "TETHER_NODE_NAME")]
    node_name: Option<String>,
}

impl KubeArgs {
    fn options(self) -> Result<Option<tether::source::kube::Options>> {
        if !self.kubernetes {
            return Ok(None);
        }
        let drain = match self.enable_drain_support {
            Some(drain) => drain,
            None => match std::env::var("CONTROLLER_ENABLE_DRAIN_SUPPORT") {
                Ok(value) => clap::builder::BoolishValueParser::new()
                    .parse_ref(&Cli::command(), None, std::ffi::OsStr::new(&value))
                    .map_err(|_| {
                        anyhow::anyhow!(
                            "CONTROLLER_ENABLE_DRAIN_SUPPORT={value:?}: expected true or false"
                        )
                    })?,
                Err(_) => false,
            },
        };
        let instance = self
            .node_name
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .map(|name| name.trim().to_string())
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "tether".into());
        Ok(Some(tether::source::kube::Options {
            kubeconfig: self.kubeconfig,
            cookie_secret: self.cookie_secret,
            settings: tether::source::kube::translate::Settings {
                drain,
                dialects: self.dialects,
                ingress_classes: self.ingress_classes,
                kernel: false,
                node_ip: self.node_ip,
                tls: false,
                gateway_classes: self.gateway_classes,
            },
            instance,
            status_lease: self.status_lease,
        }))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match execute(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", tether::report::Chain(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn execute(command: Command) -> Result<()> {
    match command {
        Command::Run {
            config,
            kubernetes,
            workers,
            session_key,
            shutdown_grace,
            ebpf_object,
            pin_dir,
        } => {
            let options = RunOptions {
                dataplane: tether::dataplane::Options {
                    object: ebpf_object,
                    pin_dir,
                },
                workers: workers
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from)),
                session_key,
                shutdown_grace: Duration::from_secs(shutdown_grace),
            };
            match (kubernetes.options()?, config) {
                (Some(cluster), config) => {
                    runtime::run(ClusterSource::new(config.as_deref(), cluster)?, options)
                }
                (None, Some(config)) => runtime::run(FileSource::open(config)?, options),
                (None, None) => anyhow::bail!("--config FILE is required (or --kubernetes)"),
            }
        }
        Command::Maps {
            view,
            json,
            pin_dir,
        } => {
            print!(
                "{}",
                tether::dataplane::inspect::render(view, json, &pin_dir)?
            );
            Ok(())
        }
        Command::Cleanup { pin_dir } => cleanup(&pin_dir),
        Command::Check { config } => {
            let loaded = tether::source::file::load(&config)?;
            for warning in loaded.warnings {
                eprintln!("warning: {warning}");
            }
            println!(
                "{}: valid ({} services, {} routes)",
                config.display(),
                loaded.model.services.len(),
                loaded.model.routes.len()
            );
            Ok(())
        }
    }
}

/// `tether cleanup`: detaches the kernel programs and removes the pinned maps.
fn cleanup(pin_dir: &std::path::Path) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(tether::dataplane::Error::NotRoot("tether cleanup").into());
    }
    let removed = tether::dataplane::pins::Pins::new(pin_dir).cleanup()?;
    if removed.links.is_empty() && removed.maps.is_empty() {
        println!("nothing pinned at {}", pin_dir.display());
    }
    for link in &removed.links {
        println!("detached {}", link.display());
    }
    if !removed.maps.is_empty() {
        println!(
            "removed {} maps from {}",
            removed.maps.len(),
            pin_dir.display()
        );
    }
    for (dir, why) in &removed.left {
        println!("left {} in place: {why}", dir.display());
    }
    Ok(())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
