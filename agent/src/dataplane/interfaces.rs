//! The node's interfaces as the kernel programs see them: which ifindexes are uplinks
//! (`dataplane.interfaces`) and which lead to pods (`dataplane.podInterfaces`), mirrored into
//! the interfaces map so the programs know where they may transmit directly.
//!
//! Pod interfaces come and go with pods, so the agent rescans every second
//! ([`RESCAN_INTERVAL`]). Interfaces are listed with `if_nameindex(3)` and their MTU read with
//! `SIOCGIFMTU`, both of which answer for the agent's own network namespace (sysfs answers for
//! the namespace it was mounted in, which `nsenter --net` does not change).
use super::Error;
use crate::model::{DataplaneSettings, PodDelivery};
use aya::maps::{HashMap, MapData, MapError};
use std::collections::BTreeMap;
use std::ffi::CStr;
use std::time::Duration;
use tether_common::InterfaceRole;

/// How often pod interfaces are rescanned.
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(1);

/// An interface of the node as the map records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub roles: u32,
    pub mtu: u16,
}

impl Interface {
    /// The map value (what the kernel side reads).
    pub fn value(&self) -> u32 {
        InterfaceRole::pack(self.roles, self.mtu)
    }
}

/// Checks a `dataplane.podInterfaces` entry: an interface name, or a pattern with `*` (any
/// run of characters) and `?` (one character).
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() || pattern.contains(['/', ' ', '\0', ':']) {
        return Err(format!(
            "{pattern:?} is not an interface name or pattern (names with * and ?, like \"veth*\")"
        ));
    }
    // A literal name must fit IFNAMSIZ (16 with the NUL); a pattern may stand for shorter names.
    if !pattern.contains(['*', '?']) && pattern.len() > 15 {
        return Err(format!(
            "{pattern:?} is longer than an interface name can be (15 characters)"
        ));
    }
    Ok(())
}

/// Shell-style match of `name` against `pattern` (`*` and `?` only).
pub fn matches(pattern: &str, name: &str) -> bool {
    let (pattern, name) = (pattern.as_bytes(), name.as_bytes());
    // Iterative matching with one backtrack point: linear enough for interface names.
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((star_p, star_n)) => {
                    p = star_p + 1;
                    n = star_n + 1;
                    star = Some((star_p, star_n + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// An interface of the agent's network namespace, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub ifindex: u32,
    pub mtu: u16,
    /// Whether it takes frames XDP transmits into it (see [`super::netdev`]).
    pub takes_xdp_frames: bool,
    /// Whether it is one end of a veth or netkit pair whose other end is in another namespace
    /// (see [`super::netdev`]).
    pub pair_into_other_namespace: bool,
}

/// What the map should hold for `links` under `settings`. An uplink is never also a pod
/// interface. A pod interface gets [`InterfaceRole::PEER_TARGET`] when it is a pair into
/// another namespace and delivery is [`PodDelivery::Peer`], and [`InterfaceRole::XDP_TARGET`]
/// when it takes XDP frames (the kernel program prefers the first).
pub fn desired(settings: &DataplaneSettings, links: &[Link]) -> BTreeMap<u32, Interface> {
    let mut wanted = BTreeMap::new();
    for link in links {
        let roles = if settings.interfaces.contains(&link.name) {
            InterfaceRole::UPLINK
        } else if settings
            .pod_interfaces
            .iter()
            .any(|pattern| matches(pattern, &link.name))
        {
            let mut roles = InterfaceRole::POD;
            if link.takes_xdp_frames {
                roles |= InterfaceRole::XDP_TARGET;
            }
            if link.pair_into_other_namespace && settings.pod_delivery == PodDelivery::Peer {
                roles |= InterfaceRole::PEER_TARGET;
            }
            roles
        } else {
            continue;
        };
        wanted.insert(
            link.ifindex,
            Interface {
                name: link.name.clone(),
                roles,
                mtu: link.mtu,
            },
        );
    }
    wanted
}

/// The interfaces of the agent's network namespace.
pub fn list() -> Result<Vec<Link>, Error> {
    let io = |what: &str| {
        let what = what.to_owned();
        move |source| Error::Io { what, source }
    };
    // SAFETY: if_nameindex returns an array terminated by a zeroed entry, freed below.
    let head = unsafe { libc::if_nameindex() };
    if head.is_null() {
        return Err(io("list interfaces")(std::io::Error::last_os_error()));
    }
    let mut names = Vec::new();
    let mut entry = head;
    // SAFETY: entries up to the terminating one are valid, names are NUL-terminated.
    unsafe {
        while (*entry).if_index != 0 && !(*entry).if_name.is_null() {
            let name = CStr::from_ptr((*entry).if_name)
                .to_string_lossy()
                .into_owned();
            names.push((name, (*entry).if_index));
            entry = entry.add(1);
        }
        libc::if_freenameindex(head);
    }
    // SAFETY: a datagram socket for the ioctl, closed when the OwnedFd drops.
    let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if socket < 0 {
        return Err(io("open a socket for SIOCGIFMTU")(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: a fresh descriptor this function owns.
    let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(socket) };
    let xdp_targets = match super::netdev::xdp_transmit_targets()
        .map_err(io("ask the kernel which interfaces take XDP frames"))?
    {
        Some(targets) => targets,
        None => {
            if !NO_NETDEV_FAMILY_LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(
                    "dataplane: the kernel does not say which interfaces take XDP frames \
                     (no netdev netlink family, Linux < 6.3): pod traffic takes the stack path"
                );
            }
            Default::default()
        }
    };
    let pairs = super::netdev::pairs_into_other_namespaces()
        .map_err(io("ask the kernel which interfaces are veths into pods"))?;
    let mut links = Vec::with_capacity(names.len());
    for (name, ifindex) in names {
        // An interface gone since the listing is simply left out.
        if let Some(mtu) = mtu(&socket, &name) {
            links.push(Link {
                name,
                ifindex,
                mtu,
                takes_xdp_frames: xdp_targets.contains(&ifindex),
                pair_into_other_namespace: pairs.contains(&ifindex),
            });
        }
    }
    Ok(links)
}

static NO_NETDEV_FAMILY_LOGGED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

fn mtu(socket: &std::os::fd::OwnedFd, name: &str) -> Option<u16> {
    use std::os::fd::AsRawFd;
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= request.ifr_name.len() {
        return None;
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: SIOCGIFMTU reads ifr_name and writes ifru_mtu of a live ifreq.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFMTU, &mut request) };
    if rc < 0 {
        return None;
    }
    // SAFETY: the ioctl filled ifru_mtu.
    let mtu = unsafe { request.ifr_ifru.ifru_mtu };
    Some(u16::try_from(mtu).unwrap_or(u16::MAX))
}

/// The interfaces map as the agent last wrote it.
#[derive(Debug, Default)]
pub struct InterfaceMirror {
    written: BTreeMap<u32, u32>,
}

impl InterfaceMirror {
    /// Reads back what the pinned map holds (a restarted agent diffs from there).
    pub fn open(map: &HashMap<MapData, u32, u32>) -> Self {
        let written = map.iter().filter_map(Result::ok).collect();
        Self { written }
    }

    /// Makes the map hold `wanted`; returns whether anything changed.
    pub fn sync(
        &mut self,
        map: &mut HashMap<MapData, u32, u32>,
        wanted: &BTreeMap<u32, Interface>,
    ) -> Result<bool, Error> {
        let mut changed = false;
        let gone: Vec<u32> = self
            .written
            .keys()
            .filter(|ifindex| !wanted.contains_key(ifindex))
            .copied()
            .collect();
        for ifindex in gone {
            match map.remove(&ifindex) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(source) => {
                    return Err(Error::MapWrite {
                        what: "remove an interface",
                        source,
                    })
                }
            }
            self.written.remove(&ifindex);
            changed = true;
        }
        for (ifindex, interface) in wanted {
            let value = interface.value();
            if self.written.get(ifindex) != Some(&value) {
                map.insert(ifindex, value, 0)
                    .map_err(|source| Error::MapWrite {
                        what: "write an interface",
                        source,
                    })?;
                self.written.insert(*ifindex, value);
                changed = true;
            }
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::XdpMode;

    #[test]
    fn patterns_match_like_a_shell() {
        assert!(matches("veth*", "veth1a2b"));
        assert!(matches("veth*", "veth"));
        assert!(!matches("veth*", "eth0"));
        assert!(matches("p?x", "p1x"));
        assert!(!matches("p?x", "p12x"));
        assert!(matches("*pod*", "lxc-pod-1"));
        assert!(matches("a*b*c", "aXXbYYc"));
        assert!(!matches("a*b*c", "aXXbYY"));
        assert!(matches("eth0", "eth0"));
        assert!(!matches("eth0", "eth01"));
        assert!(matches("*", "anything"));
    }

    #[test]
    fn patterns_are_checked() {
        assert!(check_pattern("veth*").is_ok());
        assert!(check_pattern("lxc????????????????*").is_ok());
        assert!(check_pattern("").is_err());
        assert!(check_pattern("a/b").is_err());
        assert!(check_pattern("a-very-long-interface").is_err());
    }

    #[test]
    fn uplinks_and_pods_get_their_roles() {
        let mut settings = DataplaneSettings {
            interfaces: vec!["eth0".into()],
            xdp_mode: XdpMode::Native,
            pod_interfaces: vec!["veth*".into(), "eth*".into()],
            pod_delivery: PodDelivery::Peer,
        };
        let link = |name: &str, ifindex, mtu, takes_xdp_frames, pair| Link {
            name: name.to_owned(),
            ifindex,
            mtu,
            takes_xdp_frames,
            pair_into_other_namespace: pair,
        };
        let links = vec![
            link("lo", 1, 65535, false, false),
            link("eth0", 2, 1500, true, true),
            link("veth1", 7, 1450, false, false),
            link("eth1", 9, 9000, true, false),
            link("veth2", 11, 1500, true, true),
        ];
        let wanted = desired(&settings, &links);
        assert_eq!(wanted.len(), 4);
        assert_eq!(
            wanted[&2].roles,
            InterfaceRole::UPLINK,
            "an uplink is never a pod interface"
        );
        assert_eq!(
            wanted[&7].roles,
            InterfaceRole::POD,
            "no NAPI on the pod side, no pair into a pod"
        );
        assert_eq!(wanted[&7].value(), InterfaceRole::POD | (1450 << 16));
        assert_eq!(
            wanted[&9].roles,
            InterfaceRole::POD | InterfaceRole::XDP_TARGET
        );
        assert_eq!(wanted[&9].mtu, 9000);
        assert_eq!(
            wanted[&11].roles,
            InterfaceRole::POD | InterfaceRole::XDP_TARGET | InterfaceRole::PEER_TARGET
        );
        assert!(!wanted.contains_key(&1));

        settings.pod_delivery = PodDelivery::Redirect;
        assert_eq!(
            desired(&settings, &links)[&11].roles,
            InterfaceRole::POD | InterfaceRole::XDP_TARGET,
            "redirect delivery never takes the peer path"
        );
    }
}
