//! Where a run finds what it measures: the release binaries next to its own, the kernel object,
//! and what `cargo xtask` could not build for it.
use std::path::{Path, PathBuf};

/// Set by `cargo xtask bench|soak` when `cargo build --release` of tether failed (the error):
/// the benches then report tether as unavailable, or use the binary built earlier and say so.
pub const BUILD_FAILED_ENV: &str = "TETHER_BENCH_BUILD_FAILED";
/// The kernel object (`cargo xtask build-ebpf`), as the agent and the tests read it.
pub const OBJECT_ENV: &str = "TETHER_EBPF_OBJECT";

/// The workspace root: where `bench/results` and the git checkout are.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The directory of `tether` and `tether-echo`: this binary's own (`target/release`).
pub fn bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| workspace_root().join("target/release"))
}

/// Why the release build of tether failed, if `cargo xtask` said it did.
pub fn build_failure() -> Option<String> {
    std::env::var(BUILD_FAILED_ENV)
        .ok()
        .filter(|error| !error.is_empty())
}

/// The kernel object: `TETHER_EBPF_OBJECT`, or where `cargo xtask build-ebpf` leaves it.
pub fn kernel_object(root: &Path) -> PathBuf {
    std::env::var_os(OBJECT_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/ebpf/bpfel-unknown-none/release/tether-ebpf"))
}
