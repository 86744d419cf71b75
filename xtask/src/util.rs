//! Small helpers shared by the xtask commands.
use anyhow::Result;
use std::path::PathBuf;
use std::process::Command;
use tether_testkit::process::run_checked;

/// The workspace root (the parent of xtask/).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `cargo build --release ARGS` in the workspace.
pub fn cargo_release(args: &[&str]) -> Result<()> {
    run_checked(
        Command::new(env!("CARGO"))
            .current_dir(workspace_root())
            .args(["build", "--release"])
            .args(args),
    )
}

/// Builds tether and tether-echo in release mode and returns the directory holding them.
pub fn build_release_binaries() -> Result<PathBuf> {
    cargo_release(&["-p", "tether", "-p", "tether-testkit", "--bins"])?;
    Ok(workspace_root().join("target/release"))
}
