//! Delivering straight to the next hop, skipping the node's forwarding path.
//!
//! After DNAT, the XDP program asks the FIB (`bpf_fib_lookup`) where the target lives. When
//! the route leads out of a pod interface the agent listed ([`InterfaceRole::POD`]), the frame
//! gets the next hop's Ethernet addresses and a decremented TTL, and one of two paths:
//!
//! - **peer** ([`InterfaceRole::PEER_TARGET`]: the interface is a veth or netkit whose other
//!   end is in the pod's namespace, and `podDelivery` is `peer`): `XDP_PASS` with a
//!   [`PeerMark`] in the frame's metadata. The node's GRO merges the flow's segments, then the
//!   uplink's TC ingress program ([`to_pod`]) hands the skb to the pod's end of the pair
//!   (`bpf_redirect_peer`): no routing, no netfilter, no transmit through the veth, no wake-up
//!   of another NAPI poll. Cilium's host routing takes the same path.
//! - **redirect** ([`InterfaceRole::XDP_TARGET`]: a veth whose pod side has NAPI): the frame
//!   is transmitted into the interface (`XDP_REDIRECT`): no skb is built on the node, but the
//!   pod then does GRO and checksums per frame.
//!
//! Anything else (a route elsewhere, an unresolved neighbour, a TTL about to expire, a packet
//! over the interface's MTU) goes up the stack unchanged (`XDP_PASS`), which handles it fully.
//!
//! The answer is cached per target ([`NextHop`], in [`NEXTHOPS`]) for [`NEXTHOP_TTL_TICKS`],
//! so an established flow's packet costs one array read instead of a FIB lookup; a new flow
//! resolves afresh, and the agent clears the entry whenever it writes the target.
//!
//! The reply direction is in `reply.rs` (`to_client`): the pod interface's TC program, after
//! reverse NAT, transmits the reply straight out of the uplink the FIB names.
use crate::maps::{count, INTERFACES, NEXTHOPS};
use crate::parse::{Ipv4Hdr, Packet, ETH_HDR_LEN, L4_OFFSET};
use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_UNSPEC},
    helpers::generated::{
        bpf_fib_lookup, bpf_jiffies64, bpf_redirect, bpf_redirect_peer, bpf_xdp_adjust_meta,
    },
    programs::{TcContext, XdpContext},
};
use tether_common::{Counter, InterfaceRole, NextHop, NextHopVerdict, PeerMark, NEXTHOP_TTL_TICKS};

const AF_INET: u8 = 2;
/// `BPF_FIB_LKUP_RET_SUCCESS` and `BPF_FIB_LKUP_RET_NO_NEIGH`.
const FIB_SUCCESS: i64 = 0;
const FIB_NO_NEIGH: i64 = 7;

/// `struct bpf_fib_lookup` (64 bytes), IPv4 fields only; the unions are flattened to the
/// members tether uses. Addresses and ports in network byte order.
#[repr(C)]
pub struct FibParams {
    pub family: u8,
    pub l4_protocol: u8,
    pub sport: u16,
    pub dport: u16,
    /// In: the packet's total length, or 0 to skip the MTU check. Out: the MTU, on
    /// `FRAG_NEEDED` (and in TC on success).
    pub tot_len: u16,
    /// In: the ingress interface. Out: the egress interface.
    pub ifindex: u32,
    pub tos: u32,
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub vlan: u32,
    /// In: the first four bytes are the mark (0). Out: source MAC, then destination MAC.
    pub macs: [u8; 12],
}

const _: () = assert!(core::mem::size_of::<FibParams>() == 64);

impl FibParams {
    #[inline(always)]
    pub fn ipv4(ifindex: u32, protocol: u8, tos: u8, src: [u8; 4], dst: [u8; 4]) -> Self {
        Self {
            family: AF_INET,
            l4_protocol: protocol,
            sport: 0,
            dport: 0,
            tot_len: 0,
            ifindex,
            tos: u32::from(tos),
            src: [u32::from_ne_bytes(src), 0, 0, 0],
            dst: [u32::from_ne_bytes(dst), 0, 0, 0],
            vlan: 0,
            macs: [0; 12],
        }
    }

    /// The Ethernet addresses in header order: destination, then source.
    #[inline(always)]
    pub fn header_macs(&self) -> [u8; 12] {
        let m = &self.macs;
        [
            m[6], m[7], m[8], m[9], m[10], m[11], m[0], m[1], m[2], m[3], m[4], m[5],
        ]
    }

    /// Runs the lookup; `ctx` is the program's context (`xdp_md` or `__sk_buff`).
    #[inline(always)]
    pub fn lookup(&mut self, ctx: *mut core::ffi::c_void) -> i64 {
        count(Counter::ROUTE_LOOKUPS);
        // SAFETY: `self` is a 64-byte `struct bpf_fib_lookup` on the stack.
        unsafe { bpf_fib_lookup(ctx, (self as *mut Self).cast(), 64, 0) }
    }
}

/// The roles and MTU the agent recorded for `ifindex`.
#[inline(always)]
pub fn interface(ifindex: u32) -> Option<(u32, u16)> {
    // SAFETY: a value pointer from a lookup, read at once.
    let value = unsafe { *INTERFACES.get(ifindex)? };
    Some(InterfaceRole::unpack(value))
}

/// The verdict for a packet just DNATed to `target_id`: `XDP_REDIRECT` into the pod interface
/// the target is reached through, or `XDP_PASS`. `fresh` (a new flow) resolves the route
/// afresh instead of trusting the cache.
#[inline(always)]
pub fn to_target(ctx: &XdpContext, packet: &Packet, target_id: u32, fresh: bool) -> u32 {
    let Some(hop) = NEXTHOPS.get_ptr_mut(target_id) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: bpf_jiffies64 has no preconditions (the verifier inlines it into a load).
    let now = unsafe { bpf_jiffies64() };
    // SAFETY: a value pointer from a lookup. The entry is shared by all CPUs: one resolving
    // while another reads can at worst mix two answers for the same target, which agree
    // unless the route changed in between; the entry is then resolved again within its TTL.
    unsafe {
        if fresh || (*hop).expires <= now {
            resolve(ctx, packet, hop, now);
        }
        let hop = &*hop;
        let verdict = hop.verdict;
        let direct = verdict == NextHopVerdict::REDIRECT || verdict == NextHopVerdict::PEER;
        if !direct || packet.total_len > hop.mtu || (*packet.ip).ttl <= 1 {
            return xdp_action::XDP_PASS;
        }
        if verdict == NextHopVerdict::PEER {
            return to_peer(ctx, hop.ifindex, &hop.macs);
        }
        forward(packet.eth, packet.ip, &hop.macs);
        count(Counter::REDIRECTED);
        bpf_redirect(hop.ifindex, 0) as u32
    }
}

/// What the stack's forwarding would do to the frame: one hop less, the next hop's addresses.
///
/// # Safety
/// `eth` and `ip` point at the frame's Ethernet and (checked) IPv4 headers.
#[inline(always)]
unsafe fn forward(eth: usize, ip: *mut Ipv4Hdr, macs: &[u8; 12]) {
    // SAFETY: the caller's promise: both headers are inside the frame.
    unsafe {
        (*ip).ttl -= 1;
        let check = u32::from((*ip).check) + u32::from(0x0100u16.to_be());
        (*ip).check = (check + (check >> 16)) as u16;
        // As 16-bit words (the frame is 2-byte aligned, the map value 8-byte aligned), without
        // overlap: LLVM inlines that as six loads and stores, where a plain array assignment
        // becomes a call to a byte-by-byte memmove.
        core::ptr::copy_nonoverlapping(macs.as_ptr().cast::<u16>(), eth as *mut u16, 6);
    }
}

/// The [`NextHopVerdict::PEER`] path: the frame is rewritten as for a redirect and goes up the
/// stack (`XDP_PASS`) carrying a [`PeerMark`] in its metadata; after GRO the uplink's TC
/// ingress program (`to_pod`) moves it into the pod's namespace.
///
/// If the driver keeps no metadata, the frame goes up the stack unchanged, which forwards it.
///
/// # Safety
/// The frame was parsed (an IPv4 header follows the Ethernet header) and checked for TTL.
#[inline(always)]
unsafe fn to_peer(ctx: &XdpContext, ifindex: u32, macs: &[u8; 12]) -> u32 {
    let mark_len = core::mem::size_of::<PeerMark>();
    // SAFETY: the context is the program's xdp_md. Every packet pointer is stale after it.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -(mark_len as i32)) } != 0 {
        return xdp_action::XDP_PASS;
    }
    let (meta, eth, end) = (ctx.metadata(), ctx.data(), ctx.data_end());
    // Always true (the metadata was just made, the frame parsed); the verifier needs to see it.
    if meta + mark_len > eth || eth + L4_OFFSET > end {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: both ranges were checked just above.
    unsafe {
        // Two 4-byte stores: the metadata is 4-byte aligned, as the kernel requires of its size.
        let mark = meta as *mut u32;
        *mark = PeerMark::MAGIC;
        *mark.add(1) = ifindex;
        forward(eth, (eth + ETH_HDR_LEN) as *mut Ipv4Hdr, macs);
    }
    count(Counter::REDIRECTED);
    xdp_action::XDP_PASS
}

/// Asks the FIB for the route to the packet's (new) destination and caches the answer.
///
/// # Safety
/// `packet` was parsed from `ctx`'s frame, and `hop` is a value pointer from a lookup.
#[inline(always)]
unsafe fn resolve(ctx: &XdpContext, packet: &Packet, hop: *mut NextHop, now: u64) {
    // SAFETY: the caller's promise: the IPv4 header and the next-hop entry are valid; the
    // context is the program's xdp_md.
    unsafe {
        let ip = packet.ip;
        let mut params = FibParams::ipv4(
            (*ctx.ctx).ingress_ifindex,
            packet.protocol,
            (*ip).tos,
            core::mem::transmute::<[u16; 2], [u8; 4]>((*ip).src),
            core::mem::transmute::<[u16; 2], [u8; 4]>((*ip).dst),
        );
        let rc = params.lookup(ctx.ctx.cast());
        if rc == FIB_NO_NEIGH {
            // The stack resolves the neighbour; ask again with the next packet.
            (*hop).verdict = NextHopVerdict::UNRESOLVED;
            (*hop).expires = 0;
            return;
        }
        let pod = match interface(params.ifindex) {
            Some((roles, mtu)) if rc == FIB_SUCCESS => match InterfaceRole::delivery(roles) {
                NextHopVerdict::STACK => None,
                verdict => Some((mtu, verdict)),
            },
            _ => None,
        };
        (*hop).expires = now + NEXTHOP_TTL_TICKS;
        match pod {
            Some((mtu, verdict)) => {
                (*hop).macs = params.header_macs();
                (*hop).ifindex = params.ifindex;
                (*hop).mtu = mtu;
                (*hop).verdict = verdict;
            }
            None => (*hop).verdict = NextHopVerdict::STACK,
        }
    }
}

/// The uplinks' TC ingress program: a packet the XDP program marked for the peer path (see
/// [`to_peer`]) is moved into the pod's namespace, to the ingress of the pod's end of the pair
/// (`bpf_redirect_peer`): no forwarding, no netfilter, no transmit through the veth, no second
/// NAPI poll. It runs after GRO, once per merged skb. Everything else passes untouched.
#[inline(always)]
pub fn to_pod(ctx: &TcContext) -> i32 {
    // SAFETY: the context of a TC program is its __sk_buff; data_meta and data are readable.
    let (meta, data) = unsafe {
        let skb = ctx.skb.skb;
        ((*skb).data_meta as usize, (*skb).data as usize)
    };
    if meta + core::mem::size_of::<PeerMark>() > data {
        return TC_ACT_UNSPEC;
    }
    // SAFETY: checked just above: the mark is inside the metadata.
    let (magic, ifindex) = unsafe {
        let mark = meta as *const u32;
        (*mark, *mark.add(1))
    };
    if magic != PeerMark::MAGIC {
        return TC_ACT_UNSPEC;
    }
    // SAFETY: no preconditions; TC_ACT_REDIRECT on success, and the kernel drops the packet
    // (counted on the interface) if the peer turns out unusable.
    unsafe { bpf_redirect_peer(ifindex, 0) as i32 }
}
