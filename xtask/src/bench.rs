use anyhow::{bail, Result};

#[derive(clap::Subcommand)]
pub enum Bench {
    /// L7: direct, tether, HAProxy, nginx.
    L7,
}

pub fn run(_bench: Bench) -> Result<()> {
    bail!("bench is being written")
}
