//! `cargo xtask bench l7|l4|idle ...` and `cargo xtask soak ...`: builds what the run measures
//! (tether, tether-echo, the kernel object) and the bench binary (`tether-bench`, in `bench/`),
//! all in release, then runs `target/release/tether-bench` with the same arguments. Nothing is
//! measured here; `--help` after the bench's name lists its options.
use crate::build_ebpf;
use crate::util::{cargo_release, workspace_root};
use anyhow::{Context, Result};
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// What the bench reads (see bench/src/built.rs): why tether's release build failed, and the
/// kernel object.
const BUILD_FAILED_ENV: &str = "TETHER_BENCH_BUILD_FAILED";
const OBJECT_ENV: &str = "TETHER_EBPF_OBJECT";

#[derive(clap::Subcommand)]
pub enum Bench {
    /// L7: direct, tether, HAProxy, nginx; sticky and new-session scenarios, loaded by wrk.
    L7(Args),
    /// L4: tether's XDP data plane vs nftables DNAT vs direct; ns/packet and throughput per
    /// node CPU, in network namespaces (root).
    L4(Args),
    /// Idle: RSS per idle keep-alive client connection, tether vs HAProxy (and no proxy).
    Idle(Args),
}

/// The run's own options, passed through to `tether-bench`.
#[derive(clap::Args)]
#[command(disable_help_flag = true)]
pub struct Args {
    /// Options of the run (`--help` lists them); `--skip-build` uses what is already built.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Run {
    L7,
    L4,
    Idle,
    Soak,
}

impl Run {
    fn name(self) -> &'static str {
        match self {
            Run::L7 => "l7",
            Run::L4 => "l4",
            Run::Idle => "idle",
            Run::Soak => "soak",
        }
    }
}

pub fn bench(bench: Bench) -> Result<()> {
    match bench {
        Bench::L7(args) => run(Run::L7, args),
        Bench::L4(args) => run(Run::L4, args),
        Bench::Idle(args) => run(Run::Idle, args),
    }
}

pub fn soak(args: Args) -> Result<()> {
    run(Run::Soak, args)
}

fn run(run: Run, Args { args }: Args) -> Result<()> {
    let root = workspace_root();
    let given = |flag: &str| args.iter().any(|arg| arg == flag);
    cargo_release(&["-p", "tether-bench", "--bin", "tether-bench"])?;
    let help = given("--help") || given("-h");
    let env = if help || given("--skip-build") {
        Vec::new()
    } else {
        build_measured(run, given("--cost-only"))?
    };
    let bench = root.join("target/release/tether-bench");
    let error = Command::new(&bench)
        .arg(run.name())
        .args(&args)
        .envs(env)
        .exec();
    Err(error).with_context(|| format!("cannot run {}", bench.display()))
}

/// Builds what `run` measures; returns the environment that tells the bench what was built.
fn build_measured(run: Run, cost_only: bool) -> Result<Vec<(&'static str, OsString)>> {
    let mut env = Vec::new();
    let all = ["-p", "tether", "-p", "tether-testkit", "--bins"];
    match run {
        Run::Soak => cargo_release(&all)?,
        // A tether that does not build is reported as failed; the other systems still run.
        Run::L7 | Run::Idle => {
            if let Err(error) = cargo_release(&all) {
                eprintln!(
                    "warning: the release build failed ({error:#}); building tether-echo alone, \
                     tether will be reported as failed"
                );
                cargo_release(&["-p", "tether-testkit", "--bins"])?;
                env.push((BUILD_FAILED_ENV, format!("{error:#}").into()));
            }
        }
        // A tether that does not build falls back to the binary built earlier, if there is one.
        Run::L4 => {
            let object = build_ebpf::run(&build_ebpf::Options::default())?;
            env.push((OBJECT_ENV, object.into_os_string()));
            if !cost_only {
                if let Err(error) = cargo_release(&["-p", "tether", "--bin", "tether"]) {
                    let binary = workspace_root().join("target/release/tether");
                    if !binary.is_file() {
                        return Err(error.context("building tether"));
                    }
                    eprintln!(
                        "warning: the release build of tether failed ({error:#}); using the \
                         binary already in target/release (built earlier)"
                    );
                    env.push((BUILD_FAILED_ENV, format!("{error:#}").into()));
                }
            }
        }
    }
    Ok(env)
}
