//! Project tasks: `cargo xtask build-ebpf | image | demo | test | fuzz | clippy | bench l7 |
//! bench l4 | bench idle | soak`. The benches and the soak live in `bench/` (`tether-bench`): xtask builds
//! them and what they measure, and runs them.
use anyhow::Result;
use clap::{Parser, Subcommand};

mod bench;
mod build_ebpf;
mod clippy;
mod demo;
mod fuzz;
mod image;
mod test;
mod util;

#[derive(Parser)]
#[command(name = "xtask", about = "tether project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Bootstrap the nightly toolchain and bpf-linker (cached under target/), then build ebpf/.
    BuildEbpf(build_ebpf::Options),
    /// Build the OCI image the DaemonSet runs (static tether + kernel object, FROM scratch);
    /// its reference is the last line printed.
    Image(image::Options),
    /// Run the sticky-session and drain walkthrough against three local echo pods.
    Demo(demo::Options),
    /// Build the kernel programs, then run every test (unit, integration, privileged).
    Test(test::Options),
    /// Run every fuzz target (fuzz/, cargo-fuzz on nightly) for a while; non-zero on a crash.
    Fuzz(fuzz::Options),
    /// Clippy with warnings denied: the workspace, then the kernel programs (nightly, BPF).
    Clippy(clippy::Options),
    /// Benchmarks (bench/, run in release); each runs its peers side by side and prints ratios.
    #[command(subcommand)]
    Bench(bench::Bench),
    /// Mixed traffic while targets churn; RSS/fds over time, errors by kind, lost sessions.
    Soak(bench::Args),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::BuildEbpf(options) => build_ebpf::run(&options).map(|_| ()),
        Command::Image(options) => image::run(&options).map(|_| ()),
        Command::Demo(options) => demo::run(&options),
        Command::Test(options) => test::run(&options),
        Command::Fuzz(options) => fuzz::run(&options),
        Command::Clippy(options) => clippy::run(&options),
        Command::Bench(bench) => bench::bench(bench),
        Command::Soak(args) => bench::soak(args),
    }
}
