//! Project tasks: `cargo xtask build-ebpf | demo | test | bench l7 | bench l4`.
use anyhow::Result;
use clap::{Parser, Subcommand};

mod bench;
mod build_ebpf;
mod demo;
mod harness;
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
    /// Run the sticky-session and drain walkthrough against three local echo pods.
    Demo(demo::Options),
    /// Build the kernel programs, then run every test (unit, integration, privileged).
    Test(test::Options),
    /// Benchmarks; each runs its peers side by side and prints ratios.
    #[command(subcommand)]
    Bench(bench::Bench),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::BuildEbpf(options) => build_ebpf::run(&options).map(|_| ()),
        Command::Demo(options) => demo::run(&options),
        Command::Test(options) => test::run(&options),
        Command::Bench(bench) => bench::run(bench),
    }
}
