//! ICMP errors about steered flows that arrive from the client's side (`tether_xdp`).
//!
//! A reply leaves the node from the VIP, so an error about it (port unreachable from the
//! client, fragmentation needed from a router on the way, which is how the pod learns the
//! path MTU) comes back addressed to the VIP and quotes the reply as it left, from VIP:port.
//! The pod knows neither: the error goes on to the flow's target, and its quote gets the
//! pod's address and port back, so the pod's stack finds the socket. The other direction,
//! errors the pod or the node send to the client, is in `reply.rs`.
use crate::{
    csum,
    maps::{flows4, target_address, TARGETS},
    parse::{
        ptr_at, Ipv4Hdr, Ports, ETH_HDR_LEN, IPV4_FRAGMENT_BITS, IPV4_HDR_LEN, L4_OFFSET,
        TCP_CSUM_OFFSET, UDP_CSUM_OFFSET,
    },
};
use core::mem::transmute;
use tether_common::{FlowKeyV4, Protocol, TargetState};

pub const ICMP: u8 = 1;
/// ICMP errors, which quote the packet they are about (RFC 792): destination unreachable,
/// time exceeded, parameter problem.
const DEST_UNREACH: u8 = 3;
const TIME_EXCEEDED: u8 = 11;
const PARAMETER_PROBLEM: u8 = 12;
/// Offset of the ICMP checksum in the frame.
pub const CHECKSUM: usize = L4_OFFSET + 2;
/// The quoted packet: an IPv4 header without options (all tether steers), then the first 8
/// bytes of its transport header, whose first 4 are the ports.
pub const QUOTE_IP: usize = L4_OFFSET + 8;
pub const QUOTE_PORTS: usize = QUOTE_IP + IPV4_HDR_LEN;

/// Where the quoted packet's transport checksum is, when the quote reaches it: RFC 792 asks
/// for 8 bytes of the transport header (a UDP checksum, not a TCP one), Linux quotes up to 576
/// bytes. Its pseudo-header covers the quoted addresses, so a translated quote gets it updated
/// as Linux's own NAT does; a UDP datagram sent without one (0) keeps none.
#[inline(always)]
pub fn quoted_checksum_at(protocol: u8) -> usize {
    QUOTE_PORTS
        + if protocol == Protocol::TCP {
            TCP_CSUM_OFFSET
        } else {
            UDP_CSUM_OFFSET
        }
}

/// The quoted transport checksum after the quoted address and port changed (see
/// [`quoted_checksum_at`]).
#[inline(always)]
pub fn quoted_checksum(
    protocol: u8,
    check: u16,
    from: [u16; 2],
    to: [u16; 2],
    from_port: u16,
    to_port: u16,
) -> u16 {
    let udp = protocol == Protocol::UDP;
    if udp && check == 0 {
        return 0;
    }
    match csum::replace4_2(check, from, to, from_port, to_port) {
        0 if udp => 0xffff,
        updated => updated,
    }
}

/// Whether an ICMP type is an error, which quotes the packet it is about.
#[inline(always)]
pub fn is_error(kind: u8) -> bool {
    matches!(kind, DEST_UNREACH | TIME_EXCEEDED | PARAMETER_PROBLEM)
}

/// The ICMP header; `check` holds network-order bytes.
#[repr(C)]
struct IcmpHdr {
    kind: u8,
    code: u8,
    check: u16,
    rest: u32,
}

/// Rewrites an ICMP error about a steered flow's reply for its target (see the module
/// comment); `None` when the frame is not one, which leaves it untouched.
#[inline(always)]
pub fn error_to_target(start: usize, end: usize) -> Option<()> {
    let ip = ptr_at::<Ipv4Hdr>(start, end, ETH_HDR_LEN)?;
    let icmp = ptr_at::<IcmpHdr>(start, end, L4_OFFSET)?;
    let quote = ptr_at::<Ipv4Hdr>(start, end, QUOTE_IP)?;
    let ports = ptr_at::<Ports>(start, end, QUOTE_PORTS)?;
    // SAFETY: ptr_at checked every header read and written below is inside the packet.
    unsafe {
        let fragment = u16::from_be((*ip).flags_frag) & IPV4_FRAGMENT_BITS != 0;
        if (*ip).version_ihl != 0x45 || (*ip).protocol != ICMP || fragment {
            return None;
        }
        if !is_error((*icmp).kind) {
            return None;
        }
        if (*quote).version_ihl != 0x45 || (*ip).dst != (*quote).src {
            return None;
        }
        // The quoted reply runs VIP → client; its flow, client → VIP.
        let (vip, client) = ((*quote).src, (*quote).dst);
        let (vip_port, client_port) = ((*ports).src, (*ports).dst);
        let key: FlowKeyV4 =
            transmute([client[0], client[1], vip[0], vip[1], client_port, vip_port]);
        #[expect(
            clippy::needless_borrows_for_generic_args,
            reason = "by value, the key would be copied to another stack slot first; one call \
                      per map, see maps::flows4"
        )]
        let flow = match (*quote).protocol {
            Protocol::TCP => flows4::<true>().get_ptr(&key)?,
            Protocol::UDP => flows4::<false>().get_ptr(&key)?,
            _ => return None,
        };
        let flow = *flow;
        let target = *TARGETS.get_ptr(flow.target_id)?;
        let live = target.state == TargetState::ACTIVE || target.state == TargetState::DRAINING;
        if !live || target.service_id != flow.service_id {
            return None;
        }
        let (pod, pod_port) = (target_address(&target), target.port);

        (*ip).check = csum::replace4((*ip).check, vip, pod);
        (*ip).dst = pod;
        let old_quote_check = (*quote).check;
        let new_quote_check = csum::replace4(old_quote_check, vip, pod);
        (*quote).check = new_quote_check;
        (*quote).src = pod;
        (*ports).src = pod_port;
        // The ICMP checksum covers the quote (and no pseudo-header): its source, its header
        // checksum and its source port changed.
        let check = csum::replace4((*icmp).check, vip, pod);
        let check = csum::replace2(check, old_quote_check, new_quote_check);
        let mut check = csum::replace2(check, vip_port, pod_port);
        let protocol = (*quote).protocol;
        let at = quoted_checksum_at(protocol);
        let quoted = ETH_HDR_LEN + usize::from(u16::from_be((*ip).total_len));
        if at + 2 <= quoted {
            if let Some(inner) = ptr_at::<u16>(start, end, at) {
                let old = *inner;
                let new = quoted_checksum(protocol, old, vip, pod, vip_port, pod_port);
                *inner = new;
                check = csum::replace2(check, old, new);
            }
        }
        (*icmp).check = check;
    }
    Some(())
}
