//! The pin directory: every map at `<dir>/<MAP NAME>`, and the bpf_links that keep the
//! programs attached at `<dir>/links/{xdp-native,xdp-skb,tc,to-pod}-<interface>` and
//! `<dir>/links/from-pod-<ifindex>-<interface>`.
//!
//! On kernels before TCX (6.6) the TC programs are netlink `cls_bpf` filters instead
//! ([`TcAttach::Netlink`]), which have no link to pin: they stay attached until deleted, and
//! each is recorded as an empty directory `<dir>/links/nl-<name>`, found again by interface,
//! hook and tether's fixed priority and handle ([`NETLINK_PRIORITY`], [`NETLINK_HANDLE`]).
//!
//! Pins outlive the agent: a stopped or restarted `tether run` leaves them, so the programs
//! keep steering with the maps as they were, and the next agent re-opens both. Only
//! `tether cleanup` removes them (which detaches the programs and frees the maps).
use super::Error;
use crate::model::XdpMode;
use aya::maps::{MapInfo, MapType};
use aya::programs::links::Link as _;
use aya::programs::tc::{SchedClassifierLink, TcError, TcHandle};
use aya::programs::{ProgramError, TcAttachType};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use tether_common::{MapKind, MapSpec, MAP_SPECS};

/// Where `tether run`, `tether maps` and `tether cleanup` look by default.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/tether";
/// The usual bpffs mount point, mounted by the agent when nothing is mounted there.
const BPFFS: &str = "/sys/fs/bpf";
/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// How the TC programs are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcAttach {
    /// bpf_links (TCX, Linux 6.6+), pinned like the XDP links.
    Tcx,
    /// Netlink `cls_bpf` filters on the clsact qdisc, recorded by name (see the module comment).
    Netlink,
}

/// Prefix of the record of a netlink TC filter in the links directory.
const NETLINK_PREFIX: &str = "nl-";
/// tether's netlink TC filters: first on their hook, under a handle of their own.
pub const NETLINK_PRIORITY: u16 = 1;
pub const NETLINK_HANDLE: TcHandle = TcHandle::new(0, 0x7e7e);

/// A program attachment, as its pin name records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkPin {
    Xdp {
        interface: String,
        mode: XdpMode,
    },
    /// The reply program on an uplink's egress.
    Tc {
        interface: String,
    },
    /// The peer-path program on an uplink's ingress (after XDP and GRO).
    ToPod {
        interface: String,
    },
    /// The reply program on a pod interface's ingress. The ifindex tells a link of a deleted
    /// interface (defunct) from one of a new interface of the same name.
    FromPod {
        interface: String,
        ifindex: u32,
    },
}

impl LinkPin {
    pub fn file_name(&self) -> String {
        match self {
            LinkPin::Xdp { interface, mode } => format!("xdp-{}-{interface}", mode_name(*mode)),
            LinkPin::Tc { interface } => format!("tc-{interface}"),
            LinkPin::ToPod { interface } => format!("to-pod-{interface}"),
            LinkPin::FromPod { interface, ifindex } => format!("from-pod-{ifindex}-{interface}"),
        }
    }

    fn parse(name: &str) -> Option<Self> {
        if let Some(interface) = name.strip_prefix("xdp-native-") {
            return Some(LinkPin::Xdp {
                interface: interface.to_owned(),
                mode: XdpMode::Native,
            });
        }
        if let Some(interface) = name.strip_prefix("xdp-skb-") {
            return Some(LinkPin::Xdp {
                interface: interface.to_owned(),
                mode: XdpMode::Skb,
            });
        }
        if let Some(interface) = name.strip_prefix("to-pod-") {
            return Some(LinkPin::ToPod {
                interface: interface.to_owned(),
            });
        }
        if let Some(rest) = name.strip_prefix("from-pod-") {
            let (ifindex, interface) = rest.split_once('-')?;
            return Some(LinkPin::FromPod {
                interface: interface.to_owned(),
                ifindex: ifindex.parse().ok()?,
            });
        }
        name.strip_prefix("tc-").map(|interface| LinkPin::Tc {
            interface: interface.to_owned(),
        })
    }

    /// The TC hook of a TC program's attachment; `None` for XDP.
    pub fn tc_hook(&self) -> Option<TcAttachType> {
        match self {
            LinkPin::Xdp { .. } => None,
            LinkPin::Tc { .. } => Some(TcAttachType::Egress),
            LinkPin::ToPod { .. } | LinkPin::FromPod { .. } => Some(TcAttachType::Ingress),
        }
    }

    pub fn interface(&self) -> &str {
        match self {
            LinkPin::Xdp { interface, .. }
            | LinkPin::Tc { interface }
            | LinkPin::ToPod { interface }
            | LinkPin::FromPod { interface, .. } => interface,
        }
    }
}

pub fn mode_name(mode: XdpMode) -> &'static str {
    match mode {
        XdpMode::Native => "native",
        XdpMode::Skb => "skb",
    }
}

#[derive(Debug, Clone)]
pub struct Pins {
    root: PathBuf,
}

/// What `tether cleanup` removed.
#[derive(Debug, Default)]
pub struct Removed {
    pub links: Vec<PathBuf>,
    pub maps: Vec<PathBuf>,
    /// Directories left in place (not empty: something else is pinned there), and why.
    pub left: Vec<(PathBuf, String)>,
}

impl Pins {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn link(&self, link: &LinkPin) -> PathBuf {
        self.links_dir().join(link.file_name())
    }

    /// Where a TC attachment made through netlink is recorded.
    pub fn netlink_record(&self, link: &LinkPin) -> PathBuf {
        self.links_dir()
            .join(format!("{NETLINK_PREFIX}{}", link.file_name()))
    }

    /// True when any of the maps is pinned.
    pub fn any_map_pinned(&self) -> bool {
        MAP_SPECS.iter().any(|spec| self.map(spec.name).exists())
    }

    /// The pinned program attachments and the records of netlink TC filters, XDP links first:
    /// unpinned in this order, an uplink loses its XDP program before the TC program that acts
    /// on the XDP program's peer-path marks, so no marked packet meets an uplink without it.
    pub fn links(&self) -> Vec<(PathBuf, LinkPin)> {
        let Ok(entries) = std::fs::read_dir(self.links_dir()) else {
            return Vec::new();
        };
        let mut links: Vec<(PathBuf, LinkPin)> = entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name();
                let name = name.to_str()?;
                LinkPin::parse(name.strip_prefix(NETLINK_PREFIX).unwrap_or(name))
                    .map(|link| (entry.path(), link))
            })
            .collect();
        links.sort_by_key(|(path, link)| (!matches!(link, LinkPin::Xdp { .. }), path.clone()));
        links
    }

    /// Makes sure the pin directory exists on a bpf filesystem, mounting bpffs at /sys/fs/bpf
    /// when the directory is under it and nothing is mounted there.
    pub fn prepare(&self) -> Result<(), Error> {
        let bpffs = Path::new(BPFFS);
        if self.root.starts_with(bpffs) && !is_bpffs(bpffs) {
            mount_bpffs(bpffs)?;
        }
        let existing = self
            .root
            .ancestors()
            .find(|dir| dir.exists())
            .unwrap_or(Path::new("/"));
        if !is_bpffs(existing) {
            return Err(Error::NotBpffs(self.root.clone()));
        }
        for dir in [self.root.clone(), self.links_dir()] {
            std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
                what: format!("create {}", dir.display()),
                source,
            })?;
        }
        Ok(())
    }

    /// Checks every pinned map against this build's schema, so an agent never reuses maps
    /// whose layout it would misread (an upgrade that changed them needs `tether cleanup`).
    pub fn check_schema(&self) -> Result<(), Error> {
        for spec in &MAP_SPECS {
            let path = self.map(spec.name);
            if !path.exists() {
                continue;
            }
            let info = MapInfo::from_pin(&path).map_err(|source| Error::OpenPin {
                path: path.clone(),
                source,
            })?;
            let found = (
                info.map_type().ok(),
                info.key_size(),
                info.value_size(),
                info.max_entries(),
            );
            let wanted = (
                Some(map_type(spec)),
                spec.key_size,
                spec.value_size,
                spec.max_entries,
            );
            if found != wanted {
                return Err(Error::SchemaMismatch {
                    path,
                    found: format!(
                        "{:?}, key {} B, value {} B, {} entries",
                        found.0, found.1, found.2, found.3
                    ),
                    wanted: format!(
                        "{:?}, key {} B, value {} B, {} entries",
                        spec.kind, spec.key_size, spec.value_size, spec.max_entries
                    ),
                });
            }
        }
        Ok(())
    }

    /// Removes tether's pins: links first (which detaches the programs), then the maps, then
    /// the directories if nothing else is in them. Only names tether pins are touched, so a
    /// mistaken `--pin-dir` cannot take other programs' pins with it. Returns what was removed;
    /// nothing when nothing was pinned.
    pub fn cleanup(&self) -> Result<Removed, Error> {
        let mut removed = Removed::default();
        if !self.root.exists() {
            return Ok(removed);
        }
        let remove = |path: &Path| {
            std::fs::remove_file(path).map_err(|source| Error::Io {
                what: format!("remove {}", path.display()),
                source,
            })
        };
        for (path, link) in self.links() {
            unpin_link(&path, &link)?;
            removed.links.push(path);
        }
        for spec in &MAP_SPECS {
            let path = self.map(spec.name);
            if path.exists() {
                remove(&path)?;
                removed.maps.push(path);
            }
        }
        for dir in [self.links_dir(), self.root.clone()] {
            if dir.exists() {
                if let Err(error) = std::fs::remove_dir(&dir) {
                    removed.left.push((dir, error.to_string()));
                }
            }
        }
        Ok(removed)
    }
}

fn map_type(spec: &MapSpec) -> MapType {
    match spec.kind {
        MapKind::Array => MapType::Array,
        MapKind::Hash => MapType::Hash,
        MapKind::LruHash => MapType::LruHash,
        MapKind::PerCpuArray => MapType::PerCpuArray,
    }
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own; the path is NUL-terminated.
    unsafe {
        let mut stat: libc::statfs = std::mem::zeroed();
        libc::statfs(c_path.as_ptr(), &mut stat) == 0 && stat.f_type as i64 == BPF_FS_MAGIC
    }
}

fn mount_bpffs(path: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(path).map_err(|source| Error::Io {
        what: format!("create {}", path.display()),
        source,
    })?;
    let target =
        CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::NotBpffs(path.into()))?;
    // SAFETY: NUL-terminated strings that outlive the call; no data argument.
    let result = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if result != 0 {
        return Err(Error::Io {
            what: format!("mount bpffs at {}", path.display()),
            source: std::io::Error::last_os_error(),
        });
    }
    tracing::info!(path = %path.display(), "mounted bpffs");
    Ok(())
}

/// Detaches the program of the link pinned at `path` (or of the netlink filter recorded
/// there), then removes the pin (or the record). Removing a pin alone detaches too, but only
/// once bpffs frees the inode after an RCU grace period and a workqueue pass: the program would
/// go on steering for a moment after `tether cleanup` returned. `BPF_LINK_DETACH` (Linux 5.9)
/// detaches at once; a link that is already defunct (its interface gone) has nothing to detach.
pub fn unpin_link(path: &Path, link: &LinkPin) -> Result<(), Error> {
    use std::os::fd::AsRawFd;
    let recorded = path
        .file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| name.starts_with(NETLINK_PREFIX));
    if recorded {
        delete_filter(link)?;
        return std::fs::remove_dir(path).map_err(|source| Error::Io {
            what: format!("remove {}", path.display()),
            source,
        });
    }
    if let Ok(file) = CString::new(path.as_os_str().as_bytes()) {
        // union bpf_attr for BPF_OBJ_GET: pathname, bpf_fd, file_flags.
        #[repr(C)]
        struct ObjGet {
            pathname: u64,
            bpf_fd: u32,
            file_flags: u32,
        }
        let mut get = ObjGet {
            pathname: file.as_ptr() as u64,
            bpf_fd: 0,
            file_flags: 0,
        };
        const BPF_OBJ_GET: libc::c_long = 7;
        const BPF_LINK_DETACH: libc::c_long = 34;
        // SAFETY: the attr is a live, correctly sized struct; the fd is owned below.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_OBJ_GET,
                &mut get as *mut ObjGet,
                std::mem::size_of::<ObjGet>(),
            )
        };
        if fd >= 0 {
            // SAFETY: a descriptor BPF_OBJ_GET just returned to this process.
            let link =
                unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
            // union bpf_attr for BPF_LINK_DETACH: link_fd.
            let mut detach = [0u32; 2];
            detach[0] = link.as_raw_fd() as u32;
            // SAFETY: as above. Failure (a defunct link) leaves nothing attached anyway.
            let _ = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_LINK_DETACH,
                    detach.as_mut_ptr(),
                    std::mem::size_of_val(&detach),
                )
            };
        }
    }
    std::fs::remove_file(path).map_err(|source| Error::Io {
        what: format!("unpin {}", path.display()),
        source,
    })
}

/// Deletes tether's netlink filter for `link`. One already gone (with its interface, or by
/// hand) is not an error.
fn delete_filter(link: &LinkPin) -> Result<(), Error> {
    let Some(hook) = link.tc_hook() else {
        return Ok(());
    };
    let interface = link.interface();
    if let LinkPin::FromPod { ifindex, .. } = link {
        // The name may belong to another interface by now: only the recorded one's filter goes.
        let name = CString::new(interface).unwrap_or_default();
        // SAFETY: a NUL-terminated name.
        if unsafe { libc::if_nametoindex(name.as_ptr()) } != *ifindex {
            return Ok(());
        }
    }
    let Ok(filter) =
        SchedClassifierLink::attached(interface, hook, NETLINK_PRIORITY, NETLINK_HANDLE, None)
    else {
        // No such interface: its filters went with it.
        return Ok(());
    };
    match filter.detach() {
        Ok(()) => Ok(()),
        Err(ProgramError::TcError(TcError::NetlinkError(error)))
            if matches!(error.raw_os_error(), Some(libc::ENOENT | libc::ENODEV)) =>
        {
            Ok(())
        }
        Err(source) => Err(Error::Detach {
            interface: interface.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_pin_names_round_trip() {
        for link in [
            LinkPin::Xdp {
                interface: "eth0".into(),
                mode: XdpMode::Native,
            },
            LinkPin::Xdp {
                interface: "veth-a.1".into(),
                mode: XdpMode::Skb,
            },
            LinkPin::Tc {
                interface: "eth0".into(),
            },
            LinkPin::ToPod {
                interface: "eth0".into(),
            },
            LinkPin::FromPod {
                interface: "veth-a.1".into(),
                ifindex: 7,
            },
        ] {
            assert_eq!(LinkPin::parse(&link.file_name()), Some(link.clone()));
        }
        assert_eq!(LinkPin::parse("something-else"), None);
    }

    #[test]
    fn paths_live_under_the_root() {
        let pins = Pins::new("/sys/fs/bpf/tether");
        assert_eq!(
            pins.map("TETHER_TARGETS"),
            PathBuf::from("/sys/fs/bpf/tether/TETHER_TARGETS")
        );
        assert_eq!(
            pins.link(&LinkPin::Tc {
                interface: "eth0".into()
            }),
            PathBuf::from("/sys/fs/bpf/tether/links/tc-eth0")
        );
    }

    #[test]
    fn xdp_links_are_listed_and_so_unpinned_first() {
        let dir = std::env::temp_dir().join(format!("tether-links-{}", std::process::id()));
        let pins = Pins::new(&dir);
        std::fs::create_dir_all(pins.links_dir()).expect("test input");
        for name in [
            "from-pod-7-veth1",
            "tc-eth0",
            "to-pod-eth0",
            "xdp-native-eth0",
        ] {
            std::fs::write(pins.links_dir().join(name), b"").expect("test input");
        }
        let order: Vec<String> = pins.links().iter().map(|(_, l)| l.file_name()).collect();
        std::fs::remove_dir_all(&dir).expect("test input");
        assert_eq!(
            order,
            [
                "xdp-native-eth0",
                "from-pod-7-veth1",
                "tc-eth0",
                "to-pod-eth0"
            ]
        );
    }

    #[test]
    fn a_directory_off_bpffs_is_refused() {
        let dir = std::env::temp_dir().join(format!("tether-pins-{}", std::process::id()));
        match Pins::new(&dir).prepare() {
            Err(Error::NotBpffs(path)) => assert_eq!(path, dir),
            other => panic!("{other:?}"),
        }
    }
}
