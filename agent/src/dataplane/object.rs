//! Where the kernel object comes from: `--ebpf-object PATH` (or `TETHER_EBPF_OBJECT`), else
//! the first that exists of: `tether-ebpf` next to the `tether` binary, the packaged
//! `/usr/lib/tether/tether-ebpf`, and this workspace's `cargo xtask build-ebpf` output.
use super::Error;
use std::path::{Path, PathBuf};

/// File name of the object `cargo xtask build-ebpf` builds and packages ship.
pub const OBJECT_NAME: &str = "tether-ebpf";
/// Where packages install the object.
pub const PACKAGED: &str = "/usr/lib/tether/tether-ebpf";

/// The candidates searched when no path is given, in order.
pub fn candidates() -> Vec<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        candidates.push(dir.join(OBJECT_NAME));
    }
    candidates.push(PathBuf::from(PACKAGED));
    // The workspace this binary was built from (development and tests).
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for profile in ["release", "debug"] {
        candidates.push(
            workspace
                .join("target/ebpf/bpfel-unknown-none")
                .join(profile)
                .join(OBJECT_NAME),
        );
    }
    candidates
}

/// The object to load: `explicit` when given (it must exist), else the first candidate.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, Error> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(Error::ObjectMissing {
                searched: vec![path.to_path_buf()],
            })
        };
    }
    let candidates = candidates();
    candidates
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .ok_or(Error::ObjectMissing {
            searched: candidates,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_path_must_exist() {
        let missing = Path::new("/nonexistent/tether-ebpf");
        match locate(Some(missing)) {
            Err(Error::ObjectMissing { searched }) => assert_eq!(searched, vec![missing]),
            other => panic!("{other:?}"),
        }
        let error = locate(Some(missing)).expect_err("missing").to_string();
        assert!(error.contains("--ebpf-object"), "{error}");
        assert!(error.contains("cargo xtask build-ebpf"), "{error}");
    }

    #[test]
    fn defaults_are_next_to_the_binary_then_packaged_then_the_workspace() {
        let candidates = candidates();
        assert_eq!(candidates.len(), 4);
        assert!(candidates[0].ends_with(OBJECT_NAME));
        assert_eq!(candidates[1], PathBuf::from(PACKAGED));
        assert!(candidates[2].ends_with("target/ebpf/bpfel-unknown-none/release/tether-ebpf"));
    }
}
