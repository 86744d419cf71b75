use anyhow::{bail, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Options {}

pub fn run(_options: &Options) -> Result<PathBuf> {
    bail!("build-ebpf is being written")
}
