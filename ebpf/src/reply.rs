//! The TC program on the egress of tether's interfaces: the reply of a steered flow (target →
//! client) gets its source rewritten back to the VIP and service port, so the client sees the
//! address it connected to. Everything else passes untouched.
//!
//! Checksums are updated with the kernel's helpers, which also handle `CHECKSUM_PARTIAL`
//! packets (locally generated or forwarded from a veth whose checksum is still to be filled in).
use crate::{
    maps::{count, replies4},
    parse::{self, ETH_HDR_LEN, L4_OFFSET, TCP_CSUM_OFFSET, TCP_HDR_LEN, UDP_CSUM_OFFSET},
};
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_UNSPEC},
    programs::TcContext,
};
use tether_common::{Counter, FlowKeyV4, Protocol};

/// Offsets of the IPv4 checksum and source address in the frame.
const IP_CSUM_OFFSET: usize = ETH_HDR_LEN + 10;
const IP_SRC_OFFSET: usize = ETH_HDR_LEN + 12;

/// Lets the next program on the hook run (TCX_NEXT), and the packet continue if none does.
const NEXT: i32 = TC_ACT_UNSPEC;

#[inline(always)]
pub fn reply(ctx: &TcContext) -> i32 {
    count(Counter::REPLY_PACKETS);
    // Headers of forwarded packets are in the linear area; pull them in if a driver left
    // them in fragments. Failure leaves the packet short, and the parse below passes it.
    if ctx.data() + L4_OFFSET + TCP_HDR_LEN > ctx.data_end() {
        let _ = ctx.pull_data((L4_OFFSET + TCP_HDR_LEN) as u32);
    }
    let Ok(packet) = parse::parse(ctx.data(), ctx.data_end(), ctx.len() as usize) else {
        return NEXT;
    };
    // SAFETY: parse checked the IPv4 header and the ports are inside the packet.
    let (src, dst, src_port, dst_port) = unsafe {
        let ports = packet.ports();
        (
            (*packet.ip).src,
            (*packet.ip).dst,
            (*ports).src,
            (*ports).dst,
        )
    };
    // SAFETY: FlowKeyV4 is 12 bytes of plain data, 2-byte aligned: src, dst, the ports.
    let key: FlowKeyV4 =
        unsafe { core::mem::transmute([src[0], src[1], dst[0], dst[1], src_port, dst_port]) };
    // By reference, and one call per map (see maps::flows4).
    #[allow(clippy::needless_borrows_for_generic_args)]
    let nat = if packet.protocol == Protocol::TCP {
        replies4::<true>().get_ptr(&key)
    } else {
        replies4::<false>().get_ptr(&key)
    };
    let Some(nat) = nat else {
        return NEXT;
    };
    // SAFETY: a value pointer from a lookup, read at once.
    let nat = unsafe { *nat };

    // The helpers below invalidate packet pointers: only offsets from here on.
    let from = u64::from(u32::from_ne_bytes(key.src));
    let to = u64::from(u32::from_ne_bytes(nat.vip));
    let from_port = u64::from(key.src_port);
    let to_port = u64::from(nat.vip_port);
    let (l4_csum, mangled) = if packet.protocol == Protocol::TCP {
        (L4_OFFSET + TCP_CSUM_OFFSET, 0)
    } else {
        // A zero UDP checksum ("none") stays zero; a computed zero becomes all ones.
        (L4_OFFSET + UDP_CSUM_OFFSET, u64::from(BPF_F_MARK_MANGLED_0))
    };
    let rewritten = ctx.l3_csum_replace(IP_CSUM_OFFSET, from, to, 4).is_ok()
        && ctx
            .l4_csum_replace(l4_csum, from, to, u64::from(BPF_F_PSEUDO_HDR) | mangled | 4)
            .is_ok()
        && ctx
            .l4_csum_replace(l4_csum, from_port, to_port, mangled | 2)
            .is_ok()
        && ctx.store(IP_SRC_OFFSET, &nat.vip, 0).is_ok()
        && ctx.store(L4_OFFSET, &nat.vip_port, 0).is_ok();
    count(if rewritten {
        Counter::REPLY_NAT
    } else {
        Counter::REPLY_ERRORS
    });
    NEXT
}
