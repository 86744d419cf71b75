//! `cargo xtask image`: the OCI image the DaemonSet runs.
//!
//! - tether is built as a static glibc binary (static-pie: `crt-static` on the gnu target, so
//!   no musl toolchain; tether brings its own allocator, mimalloc), stripped of debug info;
//! - the kernel object from `cargo xtask build-ebpf` goes to `/usr/lib/tether/tether-ebpf`,
//!   where tether looks by itself;
//! - the image is `FROM scratch` with those two files, entrypoint `tether`;
//! - podman builds it (docker where its engine answers and podman is missing). On a machine
//!   with Debian's podman it needs runc, cgroupfs and no default ulimits: the task writes such a
//!   containers.conf under target/ and uses it.
//!
//! The reference (`localhost/tether:VERSION`, the agent crate's version) is the last line
//! printed. An image over [`REFUSED_BYTES`] is refused.
use crate::build_ebpf;
use crate::util::workspace_root;
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use tether_testkit::process::run_checked;

/// The image's name; the tag is the agent crate's version.
pub const NAME: &str = "localhost/tether";
/// Where tether looks for its kernel object when nothing says otherwise
/// (agent/src/dataplane/object.rs, `PACKAGED`).
const OBJECT_IN_IMAGE: &str = "/usr/lib/tether/tether-ebpf";
/// The size this image is meant to stay under.
const GOAL_BYTES: u64 = 20 * 1024 * 1024;
/// Bigger than this, the build is refused.
const REFUSED_BYTES: u64 = 40 * 1024 * 1024;
/// The target the static binary is built for (explicit, so `crt-static` does not reach build
/// scripts and proc macros).
const TARGET: &str = "x86_64-unknown-linux-gnu";

#[derive(clap::Args, Default)]
pub struct Options {}

/// A built image: its reference, and the engine that holds it.
pub struct Built {
    pub reference: String,
    pub engine: Engine,
}

/// Builds the image.
pub fn run(_options: &Options) -> Result<Built> {
    let root = workspace_root();
    let engine = Engine::find(&root)?;
    let object = build_ebpf::run(&build_ebpf::Options::default())?;
    let binary = build_static(&root)?;
    let context = root.join("target/image");
    let _ = std::fs::remove_dir_all(&context);
    std::fs::create_dir_all(&context)?;
    std::fs::copy(&binary, context.join("tether"))?;
    std::fs::copy(&object, context.join("tether-ebpf"))?;
    std::fs::write(context.join("Containerfile"), containerfile())?;
    let reference = format!("{NAME}:{}", agent_version(&root)?);
    println!("image: building {reference} with {}", engine.describe());
    run_checked(
        engine
            .command()
            .args(["build", "--no-cache", "--tag", &reference, "--file"])
            .arg(context.join("Containerfile"))
            .arg(&context),
    )?;
    let size = engine.size(&reference)?;
    let mib = size as f64 / (1024.0 * 1024.0);
    println!(
        "image: {reference} is {mib:.1} MiB (goal {} MiB, refused over {} MiB)",
        GOAL_BYTES / (1024 * 1024),
        REFUSED_BYTES / (1024 * 1024)
    );
    if size > REFUSED_BYTES {
        let _ = engine.command().args(["rmi", &reference]).status();
        bail!(
            "the image is {mib:.1} MiB, over the {} MiB limit",
            REFUSED_BYTES >> 20
        );
    }
    println!("{reference}");
    Ok(Built { reference, engine })
}

/// The image: the static binary and the kernel object, nothing else.
fn containerfile() -> String {
    format!(
        "# Written by `cargo xtask image`.\n\
         FROM scratch\n\
         COPY tether /usr/bin/tether\n\
         COPY tether-ebpf {OBJECT_IN_IMAGE}\n\
         ENTRYPOINT [\"/usr/bin/tether\"]\n\
         CMD [\"--help\"]\n"
    )
}

/// `cargo build --release` of tether as a static-pie without debug info.
fn build_static(root: &Path) -> Result<PathBuf> {
    run_checked(
        Command::new(env!("CARGO"))
            .current_dir(root)
            .args([
                "build",
                "--release",
                "--locked",
                "-p",
                "tether",
                "--bin",
                "tether",
            ])
            .args(["--target", TARGET])
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .env("CARGO_PROFILE_RELEASE_DEBUG", "0")
            .env("CARGO_PROFILE_RELEASE_STRIP", "symbols"),
    )?;
    let binary = root.join(format!("target/{TARGET}/release/tether"));
    ensure!(binary.is_file(), "{} was not built", binary.display());
    let file = Command::new("file").arg(&binary).output();
    if let Ok(output) = file {
        let text = String::from_utf8_lossy(&output.stdout);
        ensure!(
            !text.contains("dynamically linked"),
            "the binary is not static: {}",
            text.trim()
        );
    }
    Ok(binary)
}

/// The agent crate's version (agent/Cargo.toml, or the workspace's).
fn agent_version(root: &Path) -> Result<String> {
    let version_of = |path: PathBuf| -> Result<Option<String>> {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Ok(text.lines().find_map(|line| {
            let value = line.trim().strip_prefix("version")?.trim_start();
            let value = value.strip_prefix('=')?.trim();
            value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .map(str::to_string)
        }))
    };
    if let Some(version) = version_of(root.join("agent/Cargo.toml"))? {
        return Ok(version);
    }
    version_of(root.join("Cargo.toml"))?.context("no version in agent/Cargo.toml or Cargo.toml")
}

/// The container engine: podman (with this project's containers.conf where it needs one), or
/// docker with a running engine.
pub enum Engine {
    Podman { conf: PathBuf },
    Docker,
}

impl Engine {
    /// Finds an engine, installing Debian's podman and runc when there is none and this runs
    /// as root with apt-get (a fresh machine of this project's kind).
    pub fn find(root: &Path) -> Result<Self> {
        if !works("podman") {
            if works_docker() {
                return Ok(Self::Docker);
            }
            install_podman()?;
        }
        let conf = root.join("target/containers.conf");
        std::fs::create_dir_all(root.join("target"))?;
        std::fs::write(&conf, CONTAINERS_CONF)?;
        Ok(Self::Podman { conf })
    }

    /// A command for the engine, set up to use its configuration.
    pub fn command(&self) -> Command {
        match self {
            Self::Podman { conf } => {
                let mut command = Command::new("podman");
                command.env("CONTAINERS_CONF", conf);
                command
            }
            Self::Docker => Command::new("docker"),
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Podman { conf } => format!("podman (CONTAINERS_CONF={})", conf.display()),
            Self::Docker => "docker".to_string(),
        }
    }

    /// The image's size in bytes, as the engine reports it.
    fn size(&self, reference: &str) -> Result<u64> {
        let output = self
            .command()
            .args(["image", "inspect", "--format", "{{.Size}}", reference])
            .output()
            .context("image inspect")?;
        ensure!(
            output.status.success(),
            "image inspect {reference}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8_lossy(&output.stdout);
        text.trim()
            .parse()
            .with_context(|| format!("image size {text:?}"))
    }
}

/// What Debian's podman needs on this machine kind: runc, cgroupfs, and no default ulimits
/// (the default asks for more open files than a nested container may have).
const CONTAINERS_CONF: &str = "# Written by `cargo xtask image`.
[containers]
default_ulimits = []

[engine]
cgroup_manager = \"cgroupfs\"
runtime = \"runc\"
";

fn works(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn works_docker() -> bool {
    Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn install_podman() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || !works("apt-get") {
        bail!(
            "no container engine: install podman and runc (apt-get install podman runc) or run \
             a docker engine"
        );
    }
    println!("image: installing podman and runc (apt-get)");
    let install = || {
        run_checked(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "podman", "runc"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    if install().is_err() {
        // A fresh machine's package lists may be stale.
        run_checked(Command::new("apt-get").args(["update", "-q"]))?;
        install().context("apt-get install podman runc")?;
    }
    ensure!(works("podman"), "podman was installed but does not run");
    Ok(())
}
