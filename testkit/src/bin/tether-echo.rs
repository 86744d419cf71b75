//! A small HTTP backend that says which pod it is, like the echo image of the Kong how-to.
//! The behaviour lives in [`tether_testkit::echo`], which the integration tests run in-process.
use anyhow::Result;
use clap::Parser;
use std::net::SocketAddr;

#[derive(Parser)]
struct Options {
    /// Address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// The pod name it reports.
    #[arg(long)]
    name: String,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    workers: usize,
}

fn main() -> Result<()> {
    let options = Options::parse();
    tether_testkit::echo::run(options.listen, &options.name, options.workers)
}
