//! `cargo xtask test`: every test, from a fresh machine. Builds the kernel programs (bootstrapping
//! the toolchain), makes sure bpffs is mounted, then runs the workspace's tests with the kernel
//! object's path exported, so the privileged tests load the object just built.
use crate::build_ebpf;
use crate::util::workspace_root;
use anyhow::Result;
use std::process::Command;
use tether_testkit::netns::mount_bpffs_if_needed;
use tether_testkit::process::run_checked;

#[derive(clap::Args)]
pub struct Options {
    /// Extra arguments for `cargo test` (after `--` go to the test binaries).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub cargo_args: Vec<String>,
}

pub fn run(options: &Options) -> Result<()> {
    let object = build_ebpf::run(&build_ebpf::Options::default())?;
    mount_bpffs_if_needed();
    run_checked(
        Command::new(env!("CARGO"))
            .current_dir(workspace_root())
            .env("TETHER_EBPF_OBJECT", &object)
            .args(["test", "--workspace"])
            .args(&options.cargo_args),
    )
}
