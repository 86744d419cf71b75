//! `cargo xtask clippy`: the lints CI enforces. Clippy over the workspace (every target,
//! warnings denied), then over the kernel programs in `ebpf/` as they are built: nightly,
//! `bpfel-unknown-none`, `-Z build-std=core`, warnings denied (as aya's own CI lints its eBPF
//! crates).
use crate::build_ebpf;
use crate::util::workspace_root;
use anyhow::{Context, Result};
use std::process::Command;
use tether_testkit::process::run_checked;

#[derive(clap::Args)]
pub struct Options {
    /// The rustup toolchain for the kernel programs; it must be a nightly.
    #[arg(long, default_value = "nightly")]
    pub toolchain: String,
}

pub fn run(options: &Options) -> Result<()> {
    run_checked(
        Command::new(env!("CARGO"))
            .current_dir(workspace_root())
            .args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
    )
    .context("clippy on the workspace failed")?;
    build_ebpf::clippy(&options.toolchain)
}
