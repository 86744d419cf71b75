//! What the kernel says over netlink about the interfaces the XDP program may deliver to:
//!
//! - which take frames an XDP program transmits into them (`XDP_REDIRECT`), as the `netdev`
//!   generic-netlink family reports them (`xdp-features`, Linux 6.3+; what
//!   `ynl --family netdev --dump dev-get` prints);
//! - which are one end of a veth or netkit pair whose other end is in another network
//!   namespace (rtnetlink's link dump: `IFLA_LINK_NETNSID` is there), the interfaces
//!   `bpf_redirect_peer` can deliver through.
//!
//! Why it matters: a veth takes redirected frames only while its peer, the pod's side, has
//! NAPI (GRO on, or an XDP program attached). Without it, which is a veth's default, the kernel
//! drops every frame redirected into it, and the pod's connections hang. Such an interface
//! stays a pod interface (its replies are still reverse-NATed and sent straight out), but the
//! XDP program leaves its packets to the stack.
use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

const NLMSG_HEADER: usize = 16;
const GENL_HEADER: usize = 4;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
/// `NETDEV_XDP_ACT_NDO_XMIT`: the device implements `ndo_xdp_xmit`, now.
pub const XDP_ACT_NDO_XMIT: u64 = 4;
/// Bound on the replies of one dump (a node has at most a few thousand interfaces, and the
/// kernel packs many into one datagram).
const MAX_DATAGRAMS: usize = 10_000;
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(2);
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
/// `struct ifinfomsg`: family, pad, type, ifindex (i32 at 4), flags, change.
const IFINFOMSG_LEN: usize = 16;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_LINK_NETNSID: u16 = 37;
/// Kinds of pair devices whose driver has `ndo_get_peer_dev` (what `bpf_redirect_peer` needs).
const PAIR_KINDS: [&[u8]; 2] = [b"veth", b"netkit"];

/// The ifindexes of the agent's network namespace that take XDP frames, or `None` when the
/// kernel has no `netdev` family (before 6.3): nothing is known to take them then.
pub fn xdp_transmit_targets() -> io::Result<Option<BTreeSet<u32>>> {
    let socket = Socket::open(libc::NETLINK_GENERIC)?;
    let Some(family) = socket.family_id("netdev")? else {
        return Ok(None);
    };
    let features = socket.dump_xdp_features(family)?;
    Ok(Some(
        features
            .into_iter()
            .filter(|(_, features)| features & XDP_ACT_NDO_XMIT != 0)
            .map(|(ifindex, _)| ifindex)
            .collect(),
    ))
}

/// The ifindexes of the agent's network namespace that are one end of a veth or netkit pair
/// whose other end is in another namespace.
pub fn pairs_into_other_namespaces() -> io::Result<BTreeSet<u32>> {
    let socket = Socket::open(libc::NETLINK_ROUTE)?;
    let mut message = vec![0u8; NLMSG_HEADER];
    message.extend_from_slice(&[0; IFINFOMSG_LEN]);
    finish(&mut message, RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP);
    let mut pairs = BTreeSet::new();
    socket.dump(&message, |kind, payload| {
        if kind == RTM_NEWLINK {
            if let Some(ifindex) = pair_into_other_namespace(payload) {
                pairs.insert(ifindex);
            }
        }
    })?;
    Ok(pairs)
}

/// One `RTM_NEWLINK` answer: its ifindex if it is a pair into another namespace.
fn pair_into_other_namespace(payload: &[u8]) -> Option<u32> {
    let ifindex = u32::from_ne_bytes(payload.get(4..8)?.try_into().ok()?);
    let attrs = payload.get(IFINFOMSG_LEN..)?;
    let elsewhere = attributes(attrs).any(|(kind, _)| kind == IFLA_LINK_NETNSID);
    let pair = attributes(attrs)
        .filter(|(kind, _)| *kind == IFLA_LINKINFO)
        .flat_map(|(_, info)| attributes(info))
        .any(|(kind, value)| {
            kind == IFLA_INFO_KIND
                && PAIR_KINDS.contains(&value.strip_suffix(b"\0").unwrap_or(value))
        });
    (elsewhere && pair).then_some(ifindex)
}

struct Socket {
    fd: OwnedFd,
}

impl Socket {
    fn open(protocol: libc::c_int) -> io::Result<Self> {
        // SAFETY: plain socket(2); the descriptor is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let timeout = libc::timeval {
            tv_sec: RECEIVE_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: SO_RCVTIMEO reads a timeval of the given size.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd })
    }

    fn send(&self, message: &[u8]) -> io::Result<()> {
        // SAFETY: sockaddr_nl is plain data; zeroed is the kernel's address (pid 0).
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: the buffer and address outlive the call.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                message.as_ptr().cast(),
                message.len(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn receive(&self, buffer: &mut [u8]) -> io::Result<usize> {
        // SAFETY: the kernel writes at most buffer.len() bytes into it.
        let received = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                0,
            )
        };
        if received < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(received as usize)
    }

    /// The id of generic-netlink family `name`, `None` when the kernel has no such family.
    fn family_id(&self, name: &str) -> io::Result<Option<u16>> {
        let mut name_attribute = name.as_bytes().to_vec();
        name_attribute.push(0);
        self.send(&request(
            GENL_ID_CTRL,
            NLM_F_REQUEST,
            CTRL_CMD_GETFAMILY,
            &[(CTRL_ATTR_FAMILY_NAME, &name_attribute)],
        ))?;
        let mut buffer = vec![0u8; 16 * 1024];
        let length = self.receive(&mut buffer)?;
        for message in messages(&buffer[..length])? {
            match message {
                Message::Error(errno) if errno == libc::ENOENT => return Ok(None),
                Message::Error(errno) => return Err(io::Error::from_raw_os_error(errno)),
                Message::Done => break,
                Message::Data(_, payload) => {
                    for (kind, value) in attributes(payload.get(GENL_HEADER..).unwrap_or(&[])) {
                        if kind == CTRL_ATTR_FAMILY_ID && value.len() >= 2 {
                            return Ok(Some(u16::from_ne_bytes([value[0], value[1]])));
                        }
                    }
                }
            }
        }
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the kernel's answer names no family id",
        ))
    }

    /// Every interface's ifindex and `xdp-features` bits.
    fn dump_xdp_features(&self, family: u16) -> io::Result<Vec<(u32, u64)>> {
        let message = request(family, NLM_F_REQUEST | NLM_F_DUMP, NETDEV_CMD_DEV_GET, &[]);
        let mut devices = Vec::new();
        self.dump(&message, |_, payload| {
            if let Some(device) = device(payload.get(GENL_HEADER..).unwrap_or(&[])) {
                devices.push(device);
            }
        })?;
        Ok(devices)
    }

    /// Sends a dump request and hands each answer's type and payload to `each`, until the end.
    fn dump(&self, message: &[u8], mut each: impl FnMut(u16, &[u8])) -> io::Result<()> {
        self.send(message)?;
        let mut buffer = vec![0u8; 64 * 1024];
        for _ in 0..MAX_DATAGRAMS {
            let length = self.receive(&mut buffer)?;
            for message in messages(&buffer[..length])? {
                match message {
                    Message::Done => return Ok(()),
                    Message::Error(errno) => return Err(io::Error::from_raw_os_error(errno)),
                    Message::Data(kind, payload) => each(kind, payload),
                }
            }
        }
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the dump did not end",
        ))
    }
}

/// One request: netlink header, generic-netlink header, attributes.
fn request(kind: u16, flags: u16, command: u8, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut message = vec![0u8; NLMSG_HEADER];
    message.extend_from_slice(&[command, 1, 0, 0]);
    for (attr, value) in attrs {
        let length = 4 + value.len();
        message.extend_from_slice(&(length as u16).to_ne_bytes());
        message.extend_from_slice(&attr.to_ne_bytes());
        message.extend_from_slice(value);
        message.resize(message.len().next_multiple_of(4), 0);
    }
    finish(&mut message, kind, flags);
    message
}

/// Fills in the netlink header of `message` (its first 16 bytes).
fn finish(message: &mut [u8], kind: u16, flags: u16) {
    let total = message.len() as u32;
    message[0..4].copy_from_slice(&total.to_ne_bytes());
    message[4..6].copy_from_slice(&kind.to_ne_bytes());
    message[6..8].copy_from_slice(&flags.to_ne_bytes());
    message[8..12].copy_from_slice(&1u32.to_ne_bytes());
}

#[derive(Debug, PartialEq)]
enum Message<'a> {
    /// A message's type and payload (after the netlink header).
    Data(u16, &'a [u8]),
    /// `NLMSG_ERROR` with a non-zero error: the errno.
    Error(i32),
    Done,
}

/// The netlink messages of one datagram; a message cut short is an error.
fn messages(mut datagram: &[u8]) -> io::Result<Vec<Message<'_>>> {
    let truncated = || io::Error::new(io::ErrorKind::InvalidData, "truncated netlink message");
    let mut out = Vec::new();
    while datagram.len() >= NLMSG_HEADER {
        let length = u32::from_ne_bytes(datagram[0..4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes([datagram[4], datagram[5]]);
        if length < NLMSG_HEADER || length > datagram.len() {
            return Err(truncated());
        }
        let payload = &datagram[NLMSG_HEADER..length];
        match kind {
            NLMSG_DONE => out.push(Message::Done),
            NLMSG_ERROR => {
                let code = payload.get(0..4).ok_or_else(truncated)?;
                let code = i32::from_ne_bytes(code.try_into().expect("4 bytes"));
                // An error of 0 is an acknowledgement.
                if code != 0 {
                    out.push(Message::Error(-code));
                }
            }
            _ => out.push(Message::Data(kind, payload)),
        }
        datagram = datagram.get(length.next_multiple_of(4)..).unwrap_or(&[]);
    }
    Ok(out)
}

/// The attributes of a payload: type (flags masked off) and value; stops at a malformed one.
fn attributes(mut payload: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if payload.len() < 4 {
            return None;
        }
        let length = u16::from_ne_bytes([payload[0], payload[1]]) as usize;
        let kind = u16::from_ne_bytes([payload[2], payload[3]]) & 0x3fff;
        if length < 4 || length > payload.len() {
            return None;
        }
        let value = &payload[4..length];
        payload = payload.get(length.next_multiple_of(4)..).unwrap_or(&[]);
        Some((kind, value))
    })
}

/// One `dev-get` answer: ifindex and `xdp-features`.
fn device(payload: &[u8]) -> Option<(u32, u64)> {
    let (mut ifindex, mut features) = (None, None);
    for (kind, value) in attributes(payload) {
        match kind {
            NETDEV_A_DEV_IFINDEX => ifindex = value.try_into().ok().map(u32::from_ne_bytes),
            NETDEV_A_DEV_XDP_FEATURES => features = value.try_into().ok().map(u64::from_ne_bytes),
            _ => {}
        }
    }
    Some((ifindex?, features.unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attribute(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut out = ((4 + value.len()) as u16).to_ne_bytes().to_vec();
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(value);
        out.resize(out.len().next_multiple_of(4), 0);
        out
    }

    fn message(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = ((NLMSG_HEADER + payload.len()) as u32)
            .to_ne_bytes()
            .to_vec();
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&[0; 10]);
        out.extend_from_slice(payload);
        out.resize(out.len().next_multiple_of(4), 0);
        out
    }

    #[test]
    fn a_request_is_laid_out_as_the_kernel_reads_it() {
        let bytes = request(
            GENL_ID_CTRL,
            NLM_F_REQUEST,
            CTRL_CMD_GETFAMILY,
            &[(2, b"netdev\0")],
        );
        // 16 header + 4 genl + (4 + 7 padded to 12).
        assert_eq!(bytes.len(), 32);
        assert_eq!(
            u32::from_ne_bytes(bytes[0..4].try_into().expect("test input")),
            32
        );
        assert_eq!(u16::from_ne_bytes([bytes[4], bytes[5]]), GENL_ID_CTRL);
        assert_eq!(bytes[16], CTRL_CMD_GETFAMILY);
        assert_eq!(u16::from_ne_bytes([bytes[20], bytes[21]]), 11);
        assert_eq!(&bytes[24..31], b"netdev\0");
    }

    #[test]
    fn a_dump_is_parsed_into_devices_and_its_end() {
        let mut device_payload = vec![NETDEV_CMD_DEV_GET, 1, 0, 0];
        device_payload.extend(attribute(NETDEV_A_DEV_IFINDEX, &7u32.to_ne_bytes()));
        device_payload.extend(attribute(2, &[0; 4]));
        device_payload.extend(attribute(
            NETDEV_A_DEV_XDP_FEATURES,
            &(XDP_ACT_NDO_XMIT | 1).to_ne_bytes(),
        ));
        let mut datagram = message(0x20, &device_payload);
        datagram.extend(message(NLMSG_DONE, &0i32.to_ne_bytes()));
        let parsed = messages(&datagram).expect("test input");
        assert_eq!(parsed.len(), 2);
        let Message::Data(0x20, payload) = parsed[0] else {
            panic!("{parsed:?}")
        };
        assert_eq!(
            device(&payload[GENL_HEADER..]),
            Some((7, XDP_ACT_NDO_XMIT | 1))
        );
        assert_eq!(parsed[1], Message::Done);
    }

    #[test]
    fn errors_and_truncation_are_reported() {
        let error = message(NLMSG_ERROR, &(-libc::ENOENT).to_ne_bytes());
        assert_eq!(
            messages(&error).expect("test input"),
            vec![Message::Error(libc::ENOENT)]
        );
        let ack = message(NLMSG_ERROR, &0i32.to_ne_bytes());
        assert!(messages(&ack).expect("test input").is_empty());
        let mut cut = message(0x20, &[0; 8]);
        cut.truncate(20);
        assert!(messages(&cut).is_err());
        // A device with no ifindex is skipped, a malformed attribute ends the walk.
        assert_eq!(device(&attribute(NETDEV_A_DEV_XDP_FEATURES, &[0; 8])), None);
        assert_eq!(attributes(&[200, 0, 1, 0, 9]).count(), 0);
    }

    #[test]
    fn pairs_into_other_namespaces_are_told_from_other_links() {
        let link = |ifindex: u32, kind: &[u8], netnsid: bool| {
            let mut payload = vec![0u8; IFINFOMSG_LEN];
            payload[4..8].copy_from_slice(&ifindex.to_ne_bytes());
            payload.extend(attribute(3, b"veth0\0"));
            payload.extend(attribute(IFLA_LINKINFO, &attribute(IFLA_INFO_KIND, kind)));
            if netnsid {
                payload.extend(attribute(IFLA_LINK_NETNSID, &0i32.to_ne_bytes()));
            }
            payload
        };
        assert_eq!(
            pair_into_other_namespace(&link(7, b"veth\0", true)),
            Some(7)
        );
        assert_eq!(
            pair_into_other_namespace(&link(8, b"netkit\0", true)),
            Some(8)
        );
        // Both ends in this namespace, or a device of another kind (macvlan on a link elsewhere).
        assert_eq!(pair_into_other_namespace(&link(9, b"veth\0", false)), None);
        assert_eq!(
            pair_into_other_namespace(&link(10, b"macvlan\0", true)),
            None
        );
        assert_eq!(pair_into_other_namespace(&[0; 3]), None);
    }

    /// The real kernel answers for the loopback interface (which takes no XDP frames).
    #[test]
    fn the_kernel_lists_the_namespaces_interfaces() {
        let socket = Socket::open(libc::NETLINK_GENERIC).expect("test input");
        let Some(family) = socket.family_id("netdev").expect("test input") else {
            eprintln!("skipped: the kernel has no netdev family (before 6.3)");
            return;
        };
        let devices = socket.dump_xdp_features(family).expect("test input");
        // SAFETY: a NUL-terminated name.
        let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
        assert!(
            devices.iter().any(|(ifindex, _)| *ifindex == lo),
            "{devices:?}"
        );
        assert_eq!(
            socket.family_id("no-such-family").expect("test input"),
            None
        );
    }
}
