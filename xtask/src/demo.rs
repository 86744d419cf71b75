use anyhow::{bail, Result};

#[derive(clap::Args)]
pub struct Options {}

pub fn run(_options: &Options) -> Result<()> {
    bail!("demo is being written")
}
