//! `cargo xtask build-ebpf`: builds the kernel programs in `ebpf/`.
//!
//! Works on a fresh machine with nothing but rustup and a nightly toolchain:
//!
//! 1. adds the nightly `rust-src` component when it is missing (`-Z build-std=core` needs it);
//! 2. builds `bpf-linker` against nightly's own `libLLVM` (prebuilt linkers can't be
//!    downloaded here, and the linker must speak the LLVM that wrote the bitcode),
//!    cached under `target/bpf-toolchain/<nightly commit hash>/` so later runs reuse it;
//! 3. builds `ebpf/` for `bpfel-unknown-none` into `target/ebpf/`, and returns the object's path.
//!
//! The nightly builds run in an environment scrubbed of what the outer
//! `cargo xtask` (stable) put there: `RUSTUP_TOOLCHAIN`, `CARGO`, `RUSTC`, the
//! `CARGO_*` package variables, the library path it prepended, and the user's
//! `RUSTFLAGS` (meant for host builds, not for BPF).
use crate::util::workspace_root;
use anyhow::{bail, ensure, Context, Result};
use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use tether_testkit::process::run_checked;

/// The bpf-linker release built from crates.io; it supports LLVM 21, 22 and 23.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// LLVM majors `BPF_LINKER_VERSION` has a feature (`llvm-N`) for.
const BPF_LINKER_LLVM_MAJORS: &[u32] = &[21, 22, 23];
const BPF_TARGET: &str = "bpfel-unknown-none";
/// Binary (and package) name of the kernel object, see ebpf/Cargo.toml.
const EBPF_BIN: &str = "tether-ebpf";

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Build the kernel object with the dev profile (still optimised, see
    /// ebpf/Cargo.toml) instead of release.
    #[arg(long, conflicts_with = "release")]
    pub debug: bool,
    /// Build with the release profile (the default).
    #[arg(long)]
    pub release: bool,
    /// The rustup toolchain to build with; it must be a nightly.
    #[arg(long, default_value = "nightly")]
    pub toolchain: String,
    /// Rebuild bpf-linker even when a cached one works.
    #[arg(long)]
    pub rebuild_linker: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            debug: false,
            release: false,
            toolchain: "nightly".to_owned(),
            rebuild_linker: false,
        }
    }
}

/// Where `build-ebpf` leaves the kernel object for `profile` (`release` or `debug`),
/// relative to the workspace root. The kernel_program tests look here too.
pub fn object_path(root: &Path, profile: &str) -> PathBuf {
    root.join("target/ebpf")
        .join(BPF_TARGET)
        .join(profile)
        .join(EBPF_BIN)
}

pub fn run(options: &Options) -> Result<PathBuf> {
    let started = Instant::now();
    let root = workspace_root();
    let toolchain = &options.toolchain;

    let info = NightlyInfo::query(toolchain)?;
    println!(
        "build-ebpf: {toolchain} is rustc {} ({}), LLVM {}",
        info.release, info.commit_hash, info.llvm_version
    );

    ensure_rust_src(toolchain, &info.sysroot)?;
    let linker = ensure_bpf_linker(&root, toolchain, &info, options.rebuild_linker)?;

    let profile = if options.debug { "debug" } else { "release" };
    let step = Instant::now();
    let mut build = ebpf_cargo(&root, toolchain, "build");
    build.env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", &linker);
    if !options.debug {
        build.arg("--release");
    }
    run_checked(&mut build).context("building ebpf/ failed")?;

    let object = object_path(&root, profile);
    check_bpf_elf(&object)?;
    println!(
        "build-ebpf: built the kernel object in {:.1}s",
        step.elapsed().as_secs_f64()
    );
    println!(
        "build-ebpf: done in {:.1}s; kernel object: {}",
        started.elapsed().as_secs_f64(),
        object.display()
    );
    println!(
        "build-ebpf: the tests find it there, or set TETHER_EBPF_OBJECT={}",
        object.display()
    );
    Ok(object)
}

/// Lints `ebpf/` as it is built, the way aya lints its eBPF crates: clippy from `toolchain` (its
/// `rust-src` added when missing), `--target bpfel-unknown-none -Z build-std=core`, warnings
/// denied. Clippy only checks, so it needs no bpf-linker.
pub fn clippy(toolchain: &str) -> Result<()> {
    let root = workspace_root();
    let info = NightlyInfo::query(toolchain)?;
    ensure_rust_src(toolchain, &info.sysroot)?;
    let mut clippy = ebpf_cargo(&root, toolchain, "clippy");
    clippy.args(["--", "-D", "warnings"]);
    run_checked(&mut clippy).context("clippy on ebpf/ failed")
}

/// `cargo +TOOLCHAIN SUBCOMMAND` on `ebpf/` for `bpfel-unknown-none` with `-Z build-std=core`,
/// into `target/ebpf/`.
fn ebpf_cargo(root: &Path, toolchain: &str, subcommand: &str) -> Command {
    let mut cargo = nightly_command("cargo");
    cargo
        .arg(format!("+{toolchain}"))
        .current_dir(root.join("ebpf"))
        .args([subcommand, "-Z", "build-std=core", "--target", BPF_TARGET])
        .arg("--manifest-path")
        .arg(root.join("ebpf/Cargo.toml"))
        .arg("--target-dir")
        .arg(root.join("target/ebpf"));
    cargo
}

/// What `rustc +nightly -vV` and `--print sysroot` say.
struct NightlyInfo {
    release: String,
    commit_hash: String,
    llvm_version: String,
    llvm_major: u32,
    sysroot: PathBuf,
}

impl NightlyInfo {
    fn query(toolchain: &str) -> Result<Self> {
        let version = capture(
            nightly_command("rustc")
                .arg(format!("+{toolchain}"))
                .arg("-vV"),
        )
        .with_context(|| {
            format!(
                "cannot run rustc from the `{toolchain}` toolchain; install it with \
                     `rustup toolchain install {toolchain}`"
            )
        })?;
        let field = |name: &str| -> Result<String> {
            version
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .map(|value| value.trim().to_owned())
                .with_context(|| format!("`rustc +{toolchain} -vV` printed no `{name}` line"))
        };
        let release = field("release:")?;
        ensure!(
            release.contains("nightly") || release.contains("dev"),
            "the `{toolchain}` toolchain is rustc {release}; -Z build-std needs a nightly"
        );
        let commit_hash = field("commit-hash:")?;
        let llvm_version = field("LLVM version:")?;
        let llvm_major = llvm_version
            .split('.')
            .next()
            .and_then(|major| major.parse().ok())
            .with_context(|| format!("cannot read the LLVM major from `{llvm_version}`"))?;
        let sysroot = capture(
            nightly_command("rustc")
                .arg(format!("+{toolchain}"))
                .args(["--print", "sysroot"]),
        )?;
        Ok(Self {
            release,
            commit_hash,
            llvm_version,
            llvm_major,
            sysroot: PathBuf::from(sysroot.trim()),
        })
    }
}

fn ensure_rust_src(toolchain: &str, sysroot: &Path) -> Result<()> {
    let core = sysroot.join("lib/rustlib/src/rust/library/core/Cargo.toml");
    if core.is_file() {
        return Ok(());
    }
    println!("build-ebpf: adding the rust-src component to {toolchain}");
    run_checked(nightly_command("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        toolchain,
    ]))?;
    ensure!(
        core.is_file(),
        "rust-src was added but {} is still missing",
        core.display()
    );
    Ok(())
}

/// Returns a working bpf-linker built against the nightly's libLLVM, building it
/// into `target/bpf-toolchain/<commit hash>/` unless a cached one works.
fn ensure_bpf_linker(
    root: &Path,
    toolchain: &str,
    info: &NightlyInfo,
    rebuild: bool,
) -> Result<PathBuf> {
    let cache = root.join("target/bpf-toolchain").join(&info.commit_hash);
    let install_root = cache.join(format!("bpf-linker-{BPF_LINKER_VERSION}"));
    let linker = install_root.join("bin/bpf-linker");

    if !rebuild && linker.is_file() {
        match linker_works(&linker) {
            Ok(()) => {
                println!("build-ebpf: using cached {}", linker.display());
                return Ok(linker);
            }
            Err(error) => {
                println!("build-ebpf: cached bpf-linker is broken ({error:#}); rebuilding")
            }
        }
    }

    ensure!(
        BPF_LINKER_LLVM_MAJORS.contains(&info.llvm_major),
        "{toolchain} uses LLVM {}, but bpf-linker {BPF_LINKER_VERSION} supports LLVM {:?} only; \
         use a nightly with one of those or bump BPF_LINKER_VERSION in xtask/src/build_ebpf.rs",
        info.llvm_major,
        BPF_LINKER_LLVM_MAJORS
    );

    // bpf-linker's build script links `-lLLVM` from $LLVM_PREFIX/lib and sets
    // its rpath there, so that folder must name nightly's libLLVM both as
    // libLLVM.so (for the link) and by its soname (for the loader).
    let sysroot_lib = info.sysroot.join("lib");
    let libllvm = find_libllvm(&sysroot_lib, info.llvm_major)?;
    let llvm_prefix = cache.join("llvm");
    let llvm_lib = llvm_prefix.join("lib");
    if llvm_lib.exists() {
        fs::remove_dir_all(&llvm_lib)
            .with_context(|| format!("cannot clear {}", llvm_lib.display()))?;
    }
    fs::create_dir_all(&llvm_lib)
        .with_context(|| format!("cannot create {}", llvm_lib.display()))?;
    let libllvm_name = libllvm
        .file_name()
        .context("libLLVM path has no file name")?
        .to_owned();
    for name in [OsString::from("libLLVM.so"), libllvm_name] {
        let link = llvm_lib.join(&name);
        if !link.exists() {
            std::os::unix::fs::symlink(&libllvm, &link).with_context(|| {
                format!("cannot link {} to {}", link.display(), libllvm.display())
            })?;
        }
    }

    println!(
        "build-ebpf: building bpf-linker {BPF_LINKER_VERSION} against {} (about a minute)",
        libllvm.display()
    );
    let step = Instant::now();
    run_checked(
        nightly_command("cargo")
            .arg(format!("+{toolchain}"))
            .current_dir(&cache)
            .args(["install", "bpf-linker", "--locked", "--force", "--version"])
            .arg(format!("={BPF_LINKER_VERSION}"))
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{}", info.llvm_major))
            .arg("--root")
            .arg(&install_root)
            .env("LLVM_PREFIX", &llvm_prefix)
            // Only so that cargo doesn't warn that the install dir is not on PATH.
            .env("PATH", path_with(&install_root.join("bin"))),
    )
    .context("building bpf-linker failed")?;
    linker_works(&linker).context("the bpf-linker just built does not run")?;
    println!(
        "build-ebpf: built {} in {:.1}s",
        linker.display(),
        step.elapsed().as_secs_f64()
    );
    Ok(linker)
}

/// Finds the real libLLVM shared object (not the linker script beside it) in
/// nightly's `lib/`.
fn find_libllvm(sysroot_lib: &Path, llvm_major: u32) -> Result<PathBuf> {
    let entries = fs::read_dir(sysroot_lib)
        .with_context(|| format!("cannot list {}", sysroot_lib.display()))?;
    let mut found = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
            continue;
        };
        if name.starts_with("libLLVM") && name.contains(".so") && is_elf(&path) {
            found.push(path);
        }
    }
    found.sort();
    let major = llvm_major.to_string();
    let path = found
        .into_iter()
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.contains(&major))
        })
        .with_context(|| {
            format!(
                "no libLLVM {llvm_major} shared object in {}",
                sysroot_lib.display()
            )
        })?;
    Ok(path)
}

fn is_elf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    fs::File::open(path)
        .and_then(|mut file| file.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

fn linker_works(linker: &Path) -> Result<()> {
    let output = nightly_command(linker.as_os_str())
        .arg("--version")
        .output()
        .with_context(|| format!("cannot run {}", linker.display()))?;
    ensure!(
        output.status.success(),
        "{} --version failed: {}",
        linker.display(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// Checks that `object` is a little-endian BPF ELF file.
fn check_bpf_elf(object: &Path) -> Result<()> {
    let mut header = [0u8; 20];
    fs::File::open(object)
        .and_then(|mut file| file.read_exact(&mut header))
        .with_context(|| format!("the build left no object at {}", object.display()))?;
    const EM_BPF: u16 = 247;
    const ELFDATA2LSB: u8 = 1;
    let machine = u16::from_le_bytes([header[18], header[19]]);
    if &header[..4] != b"\x7fELF" || header[5] != ELFDATA2LSB || machine != EM_BPF {
        bail!("{} is not a little-endian BPF ELF object", object.display());
    }
    Ok(())
}

/// `$PATH` with `dir` appended.
fn path_with(dir: &Path) -> OsString {
    let mut paths: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default();
    paths.push(dir.to_path_buf());
    std::env::join_paths(paths).unwrap_or_else(|_| dir.as_os_str().to_owned())
}

fn capture(command: &mut Command) -> Result<String> {
    let output = command
        .output()
        .with_context(|| format!("cannot start {command:?}"))?;
    ensure!(
        output.status.success(),
        "{command:?} failed with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    String::from_utf8(output.stdout).with_context(|| format!("{command:?} printed non-UTF-8"))
}

/// A command whose environment is free of what the outer (stable) `cargo run`
/// of xtask set, so that `+nightly` tools pick their own toolchain, compiler and flags.
pub(crate) fn nightly_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    for (key, _) in std::env::vars_os() {
        if let Some(key) = key.to_str() {
            if leaks_from_outer_cargo(key) {
                command.env_remove(key);
            }
        }
    }
    if let Some(paths) = std::env::var_os("LD_LIBRARY_PATH") {
        // `cargo run` prepends its target dir and the stable toolchain's lib dirs.
        let rustup_home = std::env::var_os("RUSTUP_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".rustup")));
        let target = workspace_root().join("target");
        let kept: Vec<PathBuf> = std::env::split_paths(&paths)
            .filter(|path| {
                !path.starts_with(&target)
                    && !rustup_home
                        .as_ref()
                        .is_some_and(|home| path.starts_with(home.join("toolchains")))
            })
            .collect();
        match std::env::join_paths(&kept) {
            Ok(joined) if !kept.is_empty() => {
                command.env("LD_LIBRARY_PATH", joined);
            }
            _ => {
                command.env_remove("LD_LIBRARY_PATH");
            }
        }
    }
    command
}

/// Variables set by the outer cargo or rustup (or meant for host builds) that
/// must not reach the nightly cargo. Registry, network and terminal settings stay.
fn leaks_from_outer_cargo(key: &str) -> bool {
    const KEEP: &[&str] = &[
        "CARGO_HOME",
        "CARGO_NET_",
        "CARGO_HTTP_",
        "CARGO_REGISTRY_",
        "CARGO_REGISTRIES_",
        "CARGO_SOURCE_",
        "CARGO_TERM_",
        "CARGO_LOG",
    ];
    const CLEAR: &[&str] = &[
        "CARGO",
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "RUSTUP_TOOLCHAIN",
        "RUSTUP_TOOLCHAIN_SOURCE",
        "RUST_RECURSION_COUNT",
    ];
    if CLEAR.contains(&key) {
        return true;
    }
    key.starts_with("CARGO_") && !KEEP.iter().any(|keep| key.starts_with(keep))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_outer_cargo_variables() {
        for key in [
            "CARGO",
            "RUSTC",
            "RUSTUP_TOOLCHAIN",
            "CARGO_MANIFEST_DIR",
            "CARGO_PKG_NAME",
            "CARGO_TARGET_DIR",
            "CARGO_ENCODED_RUSTFLAGS",
            "CARGO_BUILD_TARGET",
            "RUSTFLAGS",
        ] {
            assert!(leaks_from_outer_cargo(key), "{key} should be cleared");
        }
        for key in [
            "CARGO_HOME",
            "CARGO_NET_OFFLINE",
            "CARGO_REGISTRIES_CRATES_IO_PROTOCOL",
            "CARGO_TERM_COLOR",
            "PATH",
            "HOME",
            "RUSTUP_HOME",
        ] {
            assert!(!leaks_from_outer_cargo(key), "{key} should be kept");
        }
    }

    #[test]
    fn object_path_is_under_target_ebpf() {
        assert_eq!(
            object_path(Path::new("/w"), "release"),
            PathBuf::from("/w/target/ebpf/bpfel-unknown-none/release/tether-ebpf")
        );
    }
}
