//! The `tether` command.
use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tether::run::{run, RunOptions};

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
        } => run(RunOptions {
            config,
            workers: workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from)),
            session_key,
            shutdown_grace: Duration::from_secs(shutdown_grace),
        }),
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
