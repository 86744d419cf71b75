//! `tether-bench`: tether's benchmarks and its soak, each run next to its peers on this machine,
//! side by side in one run, printing (and saving under `bench/results/`) the ratios.
//!
//! `cargo xtask bench l7|l4|idle ...` and `cargo xtask soak ...` build what is measured (tether,
//! tether-echo, the kernel object) and this binary in release, then run it with the same
//! arguments; it can also be run directly once they are built.
use anyhow::Result;
use clap::Parser;

mod built;
mod chart;
mod cpu;
mod h2load;
mod idle;
mod l4;
mod l7;
mod machine;
mod proxies;
mod soak;
mod summary;
mod wrk;

#[derive(Parser)]
#[command(name = "tether-bench", about = "tether's benchmarks and soak")]
enum Command {
    /// L7: direct, tether, HAProxy, nginx; sticky and new-session scenarios, loaded by wrk.
    L7(l7::Options),
    /// L4: tether's XDP data plane vs nftables DNAT vs direct; ns/packet and throughput per
    /// node CPU, in network namespaces (root).
    L4(l4::Options),
    /// Idle: RSS per idle keep-alive client connection, tether vs HAProxy (and no proxy).
    Idle(idle::Options),
    /// Mixed traffic while targets churn; RSS/fds over time, errors by kind, lost sessions.
    Soak(soak::Options),
}

fn main() -> Result<()> {
    match Command::parse() {
        Command::L7(options) => l7::run(&options),
        Command::L4(options) => l4::run(&options),
        Command::Idle(options) => idle::run(&options),
        Command::Soak(options) => soak::run(&options),
    }
}
