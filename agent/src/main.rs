//! The `tether` command.
use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tether::run::{run, RunOptions};

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

#[derive(Subcommand)]
enum Command {
    /// Run the agent from a configuration file (standalone mode).
    Run {
        /// The YAML configuration.
        #[arg(long, short)]
        config: PathBuf,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match execute(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn execute(command: Command) -> Result<()> {
    match command {
        Command::Run {
            config,
            workers,
            session_key,
            shutdown_grace,
            ebpf_object,
            pin_dir,
        } => run(RunOptions {
            dataplane: tether::dataplane::Options {
                object: ebpf_object,
                pin_dir,
                config: Some(config.clone()),
            },
            config,
            workers: workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from)),
            session_key,
            shutdown_grace: Duration::from_secs(shutdown_grace),
        }),
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
            let loaded = tether::run::load_config(&config)?;
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
