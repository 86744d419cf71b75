//! `cargo xtask test`: every test, from a fresh machine. Builds the kernel programs (bootstrapping
//! the toolchain) and the image (`cargo xtask image`), makes sure bpffs is mounted, then runs the
//! workspace's tests with the kernel object's path and the image's reference exported, so the
//! privileged tests load the object just built and run the agent from the image just built.
//! `TETHER_SKIP_PRIVILEGED=1` skips the image with the privileged tests.
use crate::util::workspace_root;
use crate::{build_ebpf, image};
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
    let mut command = Command::new(env!("CARGO"));
    command
        .current_dir(workspace_root())
        .env("TETHER_EBPF_OBJECT", &object)
        .args(["test", "--workspace"])
        .args(&options.cargo_args);
    if std::env::var("TETHER_SKIP_PRIVILEGED").is_ok_and(|v| v == "1") {
        println!("test: TETHER_SKIP_PRIVILEGED=1: no image, no privileged tests");
    } else {
        let built = image::run(&image::Options::default())?;
        command.env("TETHER_IMAGE", &built.reference);
        if let image::Engine::Podman { conf } = &built.engine {
            command.env("CONTAINERS_CONF", conf);
        }
    }
    run_checked(&mut command)
}
