//! The TC programs of the reply direction: the reply of a steered flow (target → client) gets
//! its source rewritten back to the VIP and service port, so the client sees the address it
//! connected to. Everything else passes untouched.
//!
//! - On the egress of the uplinks (`FROM_POD = false`): replies the stack forwarded.
//! - On the ingress of pod interfaces (`FROM_POD = true`): the reply as the pod sent it. After
//!   the rewrite it is transmitted straight out of the uplink the FIB names, with the next
//!   hop's Ethernet addresses and a decremented TTL (`bpf_redirect`), skipping the node's
//!   forwarding path; when the route leads elsewhere it continues up the stack, already
//!   rewritten (the uplink's egress program then finds no entry for it).
//!
//! ICMP errors about a steered flow on their way to its client (port unreachable from the pod,
//! fragmentation needed or time exceeded from the node) get the same treatment for the packet
//! they quote: see [`icmp_error`].
//!
//! Checksums are updated with the kernel's helpers, which also handle `CHECKSUM_PARTIAL`
//! packets (locally generated or forwarded from a veth whose checksum is still to be filled in).
use crate::{
    icmp,
    maps::{count, replies4},
    parse::{self, ETH_HDR_LEN, L4_OFFSET, TCP_CSUM_OFFSET, TCP_HDR_LEN, UDP_CSUM_OFFSET},
    route::{self, FibParams},
};
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_UNSPEC},
    helpers::generated::bpf_redirect,
    programs::TcContext,
};
use tether_common::{Counter, FlowKeyV4, InterfaceRole, Protocol, ReplyEntryV4};

/// Offsets of the IPv4 checksum and source address in the frame.
const IP_CSUM_OFFSET: usize = ETH_HDR_LEN + 10;
const IP_SRC_OFFSET: usize = ETH_HDR_LEN + 12;
/// Offset of the IPv4 TOS byte, and of the TTL and protocol bytes (one checksummed word).
const IP_TOS_OFFSET: usize = ETH_HDR_LEN + 1;
const IP_TTL_OFFSET: usize = ETH_HDR_LEN + 8;

/// Lets the next program on the hook run (TCX_NEXT), and the packet continue if none does.
const NEXT: i32 = TC_ACT_UNSPEC;

/// `skb->tc_index` of a reply the pod-interface program rewrote and transmitted: the uplink's
/// egress program lets it through without a lookup (which could only miss). tc_index is free:
/// the qdiscs that used it (dsmark, tcindex) left the kernel in 6.3, and the field survives
/// `bpf_redirect` within a namespace.
const REWRITTEN: u32 = 0x7e7e;

#[inline(always)]
pub fn reply<const FROM_POD: bool>(ctx: &TcContext) -> i32 {
    if !FROM_POD {
        // SAFETY: the context of a TC program is its __sk_buff; tc_index is writable there.
        unsafe {
            let skb = ctx.skb.skb;
            if (*skb).tc_index == REWRITTEN {
                (*skb).tc_index = 0;
                return NEXT;
            }
        }
    }
    count(Counter::REPLY_PACKETS);
    // Headers of forwarded packets are in the linear area; pull them in if a driver left
    // them in fragments. Failure leaves the packet short, and the parse below passes it.
    if ctx.data() + L4_OFFSET + TCP_HDR_LEN > ctx.data_end() {
        let _ = ctx.pull_data((L4_OFFSET + TCP_HDR_LEN) as u32);
    }
    let packet = match parse::parse(ctx.data(), ctx.data_end(), ctx.len() as usize) {
        Ok(packet) => packet,
        Err(parse::Skip(Counter::NOT_TCP_UDP)) => return icmp_error::<FROM_POD>(ctx),
        Err(_) => return NEXT,
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
    let Some(nat) = reverse_nat(packet.protocol == Protocol::TCP, &key) else {
        return NEXT;
    };

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
    if FROM_POD && rewritten {
        return to_client(ctx, nat.vip, key.dst, packet.protocol);
    }
    NEXT
}

/// Fields of the packet an ICMP error quotes (see `icmp`).
const QUOTE_IP_CSUM: usize = icmp::QUOTE_IP + 10;
const QUOTE_DST: usize = icmp::QUOTE_IP + 16;
const QUOTE_DST_PORT: usize = icmp::QUOTE_PORTS + 2;

/// An ICMP error about a steered flow, on its way to the client: sent by the pod (port
/// unreachable) or by the node while forwarding to it (fragmentation needed, time exceeded).
/// It quotes the client's packet as the pod got it, addressed to the pod, which the client
/// never used: the quote gets the VIP and service port back, so the client's stack finds its
/// socket (a connected UDP socket gets ECONNREFUSED, TCP learns the path MTU), with the quoted
/// transport checksum updated when the quote reaches it (see `icmp::quoted_checksum_at`); and
/// the error's own source becomes the VIP when the pod sent it. Counted as `reply_nat`.
#[inline(always)]
fn icmp_error<const FROM_POD: bool>(ctx: &TcContext) -> i32 {
    // The outer IPv4 header, then the ICMP header and the quote up to its ports.
    let (Ok(ip), Ok(message)) = (
        ctx.load::<[u8; 20]>(ETH_HDR_LEN),
        ctx.load::<[u8; 32]>(L4_OFFSET),
    ) else {
        return NEXT;
    };
    let fragment = u16::from_be_bytes([ip[6], ip[7]]) & parse::IPV4_FRAGMENT_BITS != 0;
    if ip[0] != 0x45 || ip[9] != icmp::ICMP || fragment || !icmp::is_error(message[0]) {
        return NEXT;
    }
    let quote = &message[8..];
    let tcp = match quote[9] {
        Protocol::TCP => true,
        Protocol::UDP => false,
        _ => return NEXT,
    };
    if quote[0] != 0x45 {
        return NEXT;
    }
    let word = |at: usize| u16::from_ne_bytes([quote[at], quote[at + 1]]);
    // The reply direction of the quoted packet: pod → client.
    let pod = [quote[16], quote[17], quote[18], quote[19]];
    let client = [quote[12], quote[13], quote[14], quote[15]];
    let key = FlowKeyV4 {
        src: pod,
        dst: client,
        src_port: word(22),
        dst_port: word(20),
    };
    let Some(nat) = reverse_nat(tcp, &key) else {
        return NEXT;
    };
    let outer_src = [ip[12], ip[13], ip[14], ip[15]];
    let from_pod = outer_src == pod;

    // The quote's destination: the inner header checksum, then the ICMP checksum for both
    // changed words (the ICMP checksum covers the quote; it has no pseudo-header).
    let (from, to) = (
        u64::from(u32::from_ne_bytes(pod)),
        u64::from(u32::from_ne_bytes(nat.vip)),
    );
    let old_quote_csum = u64::from(word(10));
    let quote_rewritten = ctx.l3_csum_replace(QUOTE_IP_CSUM, from, to, 4).is_ok()
        && ctx.store(QUOTE_DST, &nat.vip, 0).is_ok()
        && ctx.l4_csum_replace(icmp::CHECKSUM, from, to, 4).is_ok();
    let new_quote_csum = ctx.load::<u16>(QUOTE_IP_CSUM).map(u64::from);
    let rewritten = quote_rewritten
        && match new_quote_csum {
            Ok(new) => ctx
                .l4_csum_replace(icmp::CHECKSUM, old_quote_csum, new, 2)
                .is_ok(),
            Err(_) => false,
        }
        && ctx
            .l4_csum_replace(
                icmp::CHECKSUM,
                u64::from(word(22)),
                u64::from(nat.vip_port),
                2,
            )
            .is_ok()
        && ctx.store(QUOTE_DST_PORT, &nat.vip_port, 0).is_ok()
        && rewrite_quoted_checksum(
            ctx,
            quote[9],
            ETH_HDR_LEN + usize::from(u16::from_be_bytes([ip[2], ip[3]])),
            (pod, nat.vip),
            (word(22), nat.vip_port),
        )
        && (!from_pod
            || (ctx.l3_csum_replace(IP_CSUM_OFFSET, from, to, 4).is_ok()
                && ctx.store(IP_SRC_OFFSET, &nat.vip, 0).is_ok()));
    count(if rewritten {
        Counter::REPLY_NAT
    } else {
        Counter::REPLY_ERRORS
    });
    if FROM_POD && rewritten {
        let source = if from_pod { nat.vip } else { outer_src };
        return to_client(ctx, source, client, icmp::ICMP);
    }
    NEXT
}

/// Updates the quoted transport checksum of an ICMP error for the quote's new destination
/// address and port, and the ICMP checksum for that; nothing to do when the quote (which ends
/// at `quoted`) stops before it. False when a helper failed.
#[inline(always)]
fn rewrite_quoted_checksum(
    ctx: &TcContext,
    protocol: u8,
    quoted: usize,
    (from, to): ([u8; 4], [u8; 4]),
    (from_port, to_port): (u16, u16),
) -> bool {
    let at = icmp::quoted_checksum_at(protocol);
    if at + 2 > quoted {
        return true;
    }
    let Ok(old) = ctx.load::<u16>(at) else {
        return true;
    };
    // SAFETY: [u8; 4] and [u16; 2] are the same 4 bytes.
    let (from, to) = unsafe {
        (
            core::mem::transmute::<[u8; 4], [u16; 2]>(from),
            core::mem::transmute::<[u8; 4], [u16; 2]>(to),
        )
    };
    let new = icmp::quoted_checksum(protocol, old, from, to, from_port, to_port);
    ctx.store(at, &new, 0).is_ok()
        && ctx
            .l4_csum_replace(icmp::CHECKSUM, u64::from(old), u64::from(new), 2)
            .is_ok()
}

/// The reverse-NAT entry of a flow in the reply direction (target → client), copied out.
#[inline(always)]
fn reverse_nat(tcp: bool, key: &FlowKeyV4) -> Option<ReplyEntryV4> {
    // One call per map (see maps::flows4).
    let nat = if tcp {
        replies4::<true>().get_ptr(key)
    } else {
        replies4::<false>().get_ptr(key)
    };
    // SAFETY: a value pointer from a lookup, read at once.
    nat.map(|nat| unsafe { *nat })
}

/// Transmits a rewritten reply straight out of the uplink the FIB names for the client, or
/// lets it continue up the stack.
#[inline(always)]
fn to_client(ctx: &TcContext, source: [u8; 4], client: [u8; 4], protocol: u8) -> i32 {
    let (Ok(tos), Ok(ttl_word)) = (
        ctx.load::<u8>(IP_TOS_OFFSET),
        ctx.load::<u16>(IP_TTL_OFFSET),
    ) else {
        return NEXT;
    };
    let [ttl, ip_protocol] = ttl_word.to_ne_bytes();
    if ttl <= 1 {
        // The stack answers with ICMP time exceeded.
        return NEXT;
    }
    // SAFETY: the context of a TC program is its __sk_buff.
    let ingress = unsafe { (*ctx.skb.skb).ifindex };
    // tot_len 0: the TC lookup then checks the MTU against the skb itself (GSO-aware).
    let mut params = FibParams::ipv4(ingress, protocol, tos, source, client);
    if params.lookup(ctx.skb.skb.cast()) != 0 {
        return NEXT;
    }
    match route::interface(params.ifindex) {
        Some((roles, _)) if roles & InterfaceRole::UPLINK != 0 => {}
        _ => return NEXT,
    }
    let new_ttl_word = u16::from_ne_bytes([ttl - 1, ip_protocol]);
    let macs = params.header_macs();
    let forwarded = ctx
        .l3_csum_replace(
            IP_CSUM_OFFSET,
            u64::from(ttl_word),
            u64::from(new_ttl_word),
            2,
        )
        .is_ok()
        && ctx.store(IP_TTL_OFFSET, &new_ttl_word, 0).is_ok()
        && ctx.store(0, &macs, 0).is_ok();
    if !forwarded {
        count(Counter::REPLY_ERRORS);
        return NEXT;
    }
    count(Counter::REPLY_REDIRECTED);
    // SAFETY: as above; bpf_redirect has no memory arguments.
    unsafe {
        (*ctx.skb.skb).tc_index = REWRITTEN;
        bpf_redirect(params.ifindex, 0) as i32
    }
}
