//! Support for privileged tests and benches: the root check, kernel version checks, bpffs, and
//! network namespaces that clean up after themselves.
//!
//! Privileged tests run as root. Not as root they fail with a clear message, unless
//! `TETHER_SKIP_PRIVILEGED=1`, in which case they print a skip line and pass.
//!
//! A [`Netns`] is a guard, as in aya's integration tests: a uniquely named namespace (see
//! [`unique`]) that exists while the value lives and is deleted, with every interface in it,
//! when it is dropped, on success, error and panic alike.

use anyhow::{bail, Context, Result};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Whether a privileged test may run: true as root; otherwise panics, or prints a skip line and
/// returns false when `TETHER_SKIP_PRIVILEGED=1`.
pub fn privileged(test: &str) -> bool {
    let euid = effective_uid();
    if euid == Some(0) {
        return true;
    }
    if std::env::var("TETHER_SKIP_PRIVILEGED").as_deref() == Ok("1") {
        println!("SKIP {test}: needs root (TETHER_SKIP_PRIVILEGED=1)");
        return false;
    }
    panic!(
        "{test} needs root (BPF programs, network namespaces); effective uid {euid:?}. Run the \
         tests as root, or set TETHER_SKIP_PRIVILEGED=1 to skip them"
    );
}

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uids = status.lines().find_map(|line| line.strip_prefix("Uid:"))?;
    uids.split_whitespace().nth(1)?.parse().ok()
}

/// The running kernel's (major, minor), from `/proc/sys/kernel/osrelease`.
pub fn kernel_version() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .filter(|part| !part.is_empty());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Panics with a clear message when the kernel is older than `major.minor`, which `feature`
/// needs.
pub fn require_kernel(major: u32, minor: u32, feature: &str) {
    let version = kernel_version();
    assert!(
        version.is_some_and(|v| v >= (major, minor)),
        "{feature} needs Linux {major}.{minor} or later; this kernel is {version:?}"
    );
}

/// Mounts bpffs on `/sys/fs/bpf` when it is not mounted there yet (pinned maps live on it), if
/// this process may; does nothing otherwise.
pub fn mount_bpffs_if_needed() {
    let mounted = std::fs::read_to_string("/proc/mounts")
        .map(|mounts| {
            mounts
                .lines()
                .any(|l| l.split_whitespace().nth(2) == Some("bpf"))
        })
        .unwrap_or(false);
    if !mounted {
        let _ = Command::new("mount")
            .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
            .stdin(Stdio::null())
            .status();
    }
}

// ---------------------------------------------------------------------------------------------
// Network namespaces

/// A unique name for this test's objects: `prefix`, the process id and a counter, so tests
/// running in parallel (or a rerun after a crash) never share a namespace or a pin directory.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A named network namespace (`ip netns add`), deleted when dropped, and with it every
/// interface inside it (a veth's peer goes too). Nothing is ever created in the host's own
/// namespace: veths are created directly inside test namespaces.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `/run/netns/NAME`, with its loopback up.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        ip(&["netns", "add", &name])?;
        let netns = Self { name };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's bind mount, for `nsenter --net=` or setns.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n NAME ARGS...`.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Runs `f` on a thread that has entered the namespace: sockets it creates belong to the
    /// namespace for their whole life, whichever thread uses them afterwards.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let path = self.path();
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    enter(&path)?;
                    Ok(f())
                })
                .join()
                .map_err(|_| anyhow::anyhow!("the thread in {} panicked", self.name))?
        })
    }

    /// Writes a sysctl inside the namespace (`net.ipv4.ip_forward` → `/proc/sys/net/ipv4/ip_forward`).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        self.run(|| std::fs::write(&path, value))?
            .with_context(|| format!("sysctl {key}={value} in {}", self.name))
    }

    /// Reads a sysctl inside the namespace, trimmed; `None` when it cannot be read.
    pub fn read_sysctl(&self, key: &str) -> Option<String> {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        self.run(|| std::fs::read_to_string(&path).ok())
            .ok()
            .flatten()
            .map(|s| s.trim().to_string())
    }

    /// Runs a shell script with the namespace's own /sys (`ip netns exec` remounts it), for the
    /// sysfs knobs that have no netlink or ioctl: threaded NAPI, RPS masks.
    pub fn sysfs_script(&self, script: &str) -> Result<()> {
        let output = Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-ec", script])
            .stdin(Stdio::null())
            .output()
            .context("run ip netns exec")?;
        if !output.status.success() {
            bail!(
                "in {}: {script}: {}",
                self.name,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    /// A command that runs `program` inside the namespace, through setns in the child (the
    /// mount namespace stays the host's, so bpffs pins stay visible, unlike `ip netns exec`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        use std::os::unix::process::CommandExt;
        let file = std::fs::File::open(self.path())
            .with_context(|| format!("open {}", self.path().display()))?;
        let mut command = Command::new(program);
        // SAFETY: only setns, an async-signal-safe syscall, runs between fork and exec; the
        // file stays open (moved into the closure) until then.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(command)
    }

    /// Turns transmit checksum offload off on `interface` (`ethtool -K IF tx off`): its
    /// packets then carry complete checksums, which the receiving stack verifies, instead of
    /// the partial ones veths pass around and receivers trust.
    pub fn disable_tx_checksum(&self, interface: &str) -> Result<()> {
        self.set_feature(interface, Feature::TxChecksum, false)
    }

    /// Turns GRO on for `interface` (`ethtool -K IF gro on`). On a veth that also turns on its
    /// NAPI, which it needs to take frames an XDP program transmits into its peer.
    pub fn enable_gro(&self, interface: &str) -> Result<()> {
        self.set_gro(interface, true)
    }

    /// Turns GRO on or off for `interface` (`ethtool -K IF gro on|off`).
    pub fn set_gro(&self, interface: &str, on: bool) -> Result<()> {
        self.set_feature(interface, Feature::Gro, on)
    }

    /// Turns an offload `feature` of `interface` on or off (`ethtool -K IF FEATURE on|off`).
    pub fn set_feature(&self, interface: &str, feature: Feature, on: bool) -> Result<()> {
        let interface = interface.to_owned();
        self.run(move || set_feature(&interface, feature, on))?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(error) = ip(&["netns", "del", &self.name]) {
            eprintln!("cleanup: {error:#}");
        }
    }
}

/// Deletes the namespace named `name` that no [`Netns`] owns (one a killed run left behind).
pub fn delete(name: &str) -> Result<()> {
    ip(&["netns", "del", name])
}

/// A veth pair from `a` (named `a_name` there) to `b` (named `b_name` there), both up.
pub fn veth(a: &Netns, a_name: &str, b: &Netns, b_name: &str) -> Result<()> {
    ip(&[
        "link",
        "add",
        a_name,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_name,
        "netns",
        b.name(),
    ])?;
    a.ip(&["link", "set", a_name, "up"])?;
    b.ip(&["link", "set", b_name, "up"])?;
    Ok(())
}

fn ip(args: &[&str]) -> Result<()> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("run ip (iproute2)")?;
    if !output.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Moves the calling thread into the network namespace at `path` (for good: sockets it creates
/// afterwards belong to that namespace). [`Netns::run`] does it on a scoped thread instead.
pub fn enter(path: &Path) -> Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    // SAFETY: a valid namespace fd; affects the calling thread only.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!(
            "setns {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// An offload an interface can have on or off: the `ETHTOOL_S*` command that sets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// Transmit checksum offload (off also turns TSO off).
    TxChecksum,
    /// Generic receive offload (on a veth, also its NAPI).
    Gro,
    /// TCP segmentation offload.
    Tso,
    /// Generic segmentation offload.
    Gso,
}

impl Feature {
    fn command(self) -> u32 {
        match self {
            Feature::TxChecksum => 0x17,
            Feature::Gro => 0x2c,
            Feature::Tso => 0x1f,
            Feature::Gso => 0x24,
        }
    }
}

/// Sets an ethtool feature flag on `interface`, in the calling thread's namespace.
fn set_feature(interface: &str, feature: Feature, on: bool) -> Result<()> {
    let command = feature.command();
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct Ifreq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut libc::c_void,
        _pad: [u8; 16],
    }
    let mut value = EthtoolValue {
        cmd: command,
        data: u32::from(on),
    };
    let mut request = Ifreq {
        name: [0; libc::IFNAMSIZ],
        data: (&mut value as *mut EthtoolValue).cast(),
        _pad: [0; 16],
    };
    let bytes = interface.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ {
        bail!("interface name {interface} is too long");
    }
    request.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: a socket we close below, and an ifreq pointing at a live ethtool_value.
    unsafe {
        let socket = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        if socket < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        let result = libc::ioctl(socket, SIOCETHTOOL, &mut request);
        let error = std::io::Error::last_os_error();
        libc::close(socket);
        if result != 0 {
            bail!(
                "ethtool {feature:?} {} on {interface}: {error}",
                if on { "on" } else { "off" }
            );
        }
    }
    Ok(())
}
