//! `cargo xtask bench ...`: benchmarks that run tether next to its peers on this machine, side by
//! side in one run, and print (and save) the ratios.
use anyhow::Result;

mod chart;
mod l4;
mod l7;
mod wrk;

#[derive(clap::Subcommand)]
pub enum Bench {
    /// L7: direct, tether, HAProxy, nginx; sticky and new-session scenarios, loaded by wrk.
    L7(l7::Options),
    /// L4: tether's XDP data plane vs nftables DNAT vs direct; ns/packet and throughput per
    /// node CPU, in network namespaces (root).
    L4(l4::Options),
}

pub fn run(bench: Bench) -> Result<()> {
    match bench {
        Bench::L7(options) => l7::run(&options),
        Bench::L4(options) => l4::run(&options),
    }
}
