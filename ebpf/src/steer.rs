//! The XDP program: flow table first, Maglev pick for new flows, DNAT, `XDP_PASS`.
//!
//! Rules (Cilium's for backend state, Katran's for the flow table):
//! - a packet of a known flow goes to the flow's target while that target exists (its slot is
//!   used and still belongs to the flow's service), active or draining;
//! - a TCP SYN whose flow is pinned to a draining or removed target is a new connection: it is
//!   re-picked;
//! - a new flow (SYN, or a UDP packet of no known flow) gets a Maglev pick over the service's
//!   active targets: the agent builds each service's table from active targets only, and the
//!   program re-checks the picked target's state, probing the next slots if the agent is midway
//!   through rewriting the table;
//! - a TCP packet other than a SYN of an unknown or dead flow (evicted from the LRU, or its
//!   target removed) gets the same Maglev pick and is recorded (Katran's rule): while the
//!   service's targets are unchanged, consistent hashing sends it back to the target it had;
//!   otherwise the new target answers with a reset and the connection ends at once instead of
//!   hanging. It is never sent to a draining target;
//! - a service with no active target drops new flows (counted): draining targets take no new
//!   flows, and passing the packet on would let the stack route the VIP elsewhere.
//!
//! After DNAT the packet is transmitted straight into the pod interface the target is reached
//! through when the agent listed one (`XDP_REDIRECT`, see `route`), and goes up the stack
//! otherwise (`XDP_PASS`), which routes it to the pod.
//!
//! The established path starts at each CPU's flow cache (a direct-mapped array: an inlined read
//! and a key compare), which holds flows pinned to *active* targets only. A hit whose target is
//! still active and of the flow's service is steered from there; anything else (a miss, a SYN,
//! a target that turned draining or was removed) goes to the flow tables, which stay the truth,
//! and the rules above. So a flow whose target changes state leaves the cache at its next
//! packet. A flow steered on two CPUs at once could, like with Katran's per-CPU flow tables,
//! see its two caches disagree only if its table entry was evicted and re-picked onto another
//! target meanwhile; flows stay on one CPU in practice (RSS, RPS).
//!
//! Behind the cache, the established path is one hash lookup (the flow), one inlined array
//! lookup (the target) and per-CPU counters; everything else waits for the slow path.
use crate::{
    csum, icmp,
    maps::{
        count, count_traffic, flows4, replies4, target_address, Traffic, FLOW_CACHE, MAGLEV, PORTS,
        SERVICES, TARGETS,
    },
    parse::{self, Packet},
    route,
};
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use core::mem::transmute;
use tether_common::{
    client_hash_v4, flow_cache_slot, flow_hash_v4, maglev_slot, port_bit, AddressFamily, Counter,
    FlowCacheEntry, FlowEntry, FlowKeyV4, Hashing, Protocol, ReplyEntryV4, ServiceKey, TargetEntry,
    TargetState, MAGLEV_PROBES, MAGLEV_SIZE,
};

#[inline(always)]
pub fn steer(ctx: &XdpContext) -> u32 {
    let packet = match parse::parse(ctx.data(), ctx.data_end(), ctx.data_end() - ctx.data()) {
        Ok(packet) => packet,
        Err(skip) => {
            // Not TCP or UDP: maybe an ICMP error about a steered flow's reply.
            if skip.0 == Counter::NOT_TCP_UDP
                && icmp::error_to_target(ctx.data(), ctx.data_end()).is_some()
            {
                count(Counter::REPLY_NAT);
                return xdp_action::XDP_PASS;
            }
            count(skip.0);
            return if skip.drops() {
                xdp_action::XDP_DROP
            } else {
                xdp_action::XDP_PASS
            };
        }
    };
    // The key is the 12 bytes from the IPv4 source address to the destination port, as they
    // follow each other in the packet: one copy, and nothing held in registers across the
    // lookups. SAFETY: parse checked the IPv4 header and the ports are inside the packet.
    let key: FlowKeyV4 = unsafe { core::ptr::read((packet.ip as usize + 12) as *const FlowKeyV4) };
    // Traffic to ports no service listens on leaves after one inlined array read. Flows are
    // keyed by a service port, so no flow is skipped.
    let (word, bit) = port_bit(packet.protocol, u16::from_be(key.dst_port));
    if PORTS
        .get_ptr(word)
        // SAFETY: a value pointer from a lookup, read at once.
        .is_none_or(|bits| unsafe { *bits } & bit == 0)
    {
        count(Counter::NOT_SERVICE);
        return xdp_action::XDP_PASS;
    }

    if packet.protocol == Protocol::TCP {
        steer_flow::<true>(ctx, &packet, key)
    } else {
        steer_flow::<false>(ctx, &packet, key)
    }
}

/// The rest of [`steer`], one copy per protocol (`TCP` or UDP) so that each copy's flow
/// lookup names its map at compile time (see `maps::flows4`).
#[inline(always)]
fn steer_flow<const TCP: bool>(ctx: &XdpContext, packet: &Packet, key: FlowKeyV4) -> u32 {
    let syn = TCP && packet.is_syn();
    let protocol = if TCP { Protocol::TCP } else { Protocol::UDP };
    let cache = FLOW_CACHE.get_ptr_mut(flow_cache_slot(&key));
    // The flow cache: flows of active targets (see the module comment). SYNs skip it: whether
    // one keeps its flow's target is for the flow tables' rules.
    if let (Some(cached), false) = (cache, syn) {
        // SAFETY: this CPU's slot; nothing else writes it while this program runs here.
        let cached = unsafe { &*cached };
        if cached.protocol == protocol && same_key(&cached.key, &key) {
            let flow = cached.flow;
            if let Some(target) = TARGETS.get_ptr(flow.target_id) {
                // SAFETY: a value pointer from a lookup, read at once.
                let target = unsafe { &*target };
                if target.state == TargetState::ACTIVE && target.service_id == flow.service_id {
                    return to_known_target(ctx, packet, flow, target, false, false);
                }
            }
        }
    }
    // Established flows.
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "by value, the key would be copied to another stack slot first"
    )]
    let flow = flows4::<TCP>().get_ptr(&key);
    if let Some(flow) = flow {
        // SAFETY: a value pointer from a lookup, read at once.
        let flow = unsafe { *flow };
        if let Some(target) = TARGETS.get_ptr(flow.target_id) {
            // SAFETY: as above.
            let target = unsafe { &*target };
            let state = target.state;
            let alive = target.service_id == flow.service_id
                && (state == TargetState::ACTIVE || (state == TargetState::DRAINING && !syn));
            if alive {
                let drained = state == TargetState::DRAINING;
                if drained {
                    count(Counter::DRAINED_PACKETS);
                } else {
                    remember(cache, key, protocol, flow);
                }
                return to_known_target(ctx, packet, flow, target, drained, syn);
            }
        }
    }
    new_flow::<TCP>(ctx, packet, &key, syn, cache)
}

/// A packet of a known flow to its (live) target: counters, DNAT, then into the pod interface
/// or up the stack. `fresh` resolves the route afresh (a SYN).
#[inline(always)]
fn to_known_target(
    ctx: &XdpContext,
    packet: &Packet,
    flow: FlowEntry,
    target: &TargetEntry,
    drained: bool,
    fresh: bool,
) -> u32 {
    count_traffic(
        flow.service_id,
        flow.target_id,
        Traffic {
            bytes: u64::from(packet.total_len),
            new_flow: false,
            drained,
        },
    );
    dnat(packet, target);
    route::to_target(ctx, packet, flow.target_id, fresh)
}

/// Whether two flow keys are the same 12 bytes, compared as three words.
#[inline(always)]
fn same_key(a: &FlowKeyV4, b: &FlowKeyV4) -> bool {
    // SAFETY: FlowKeyV4 is 12 bytes of plain data; read as words by value.
    let (a, b) = unsafe {
        (
            transmute::<FlowKeyV4, [u32; 3]>(*a),
            transmute::<FlowKeyV4, [u32; 3]>(*b),
        )
    };
    a[0] == b[0] && a[1] == b[1] && a[2] == b[2]
}

/// Puts a flow of an active target in this CPU's cache slot.
#[inline(always)]
fn remember(cache: Option<*mut FlowCacheEntry>, key: FlowKeyV4, protocol: u8, flow: FlowEntry) {
    if let Some(slot) = cache {
        // SAFETY: this CPU's slot (see steer_flow).
        unsafe {
            *slot = FlowCacheEntry {
                key,
                protocol,
                _pad: [0; 3],
                flow,
            };
        }
    }
}

/// A packet of no usable flow: a Maglev pick over the service's active targets.
#[inline(always)]
fn new_flow<const TCP: bool>(
    ctx: &XdpContext,
    packet: &Packet,
    key: &FlowKeyV4,
    syn: bool,
    cache: Option<*mut FlowCacheEntry>,
) -> u32 {
    // SAFETY: [u8; 4] and [u16; 2] are the same 4 bytes.
    let (src, dst) = unsafe {
        (
            transmute::<[u8; 4], [u16; 2]>(key.src),
            transmute::<[u8; 4], [u16; 2]>(key.dst),
        )
    };
    let dst_port = key.dst_port;
    // SAFETY: ServiceKey is 20 bytes of plain data, 2-byte aligned: the IPv4-mapped VIP, the
    // port, then the family and protocol bytes.
    let service_key: ServiceKey = unsafe {
        transmute([
            0u16,
            0,
            0,
            0,
            0,
            0xffff,
            dst[0],
            dst[1],
            dst_port,
            u16::from_ne_bytes([AddressFamily::IPV4, packet.protocol]),
        ])
    };
    let Some(service) = SERVICES.get_ptr(service_key) else {
        count(Counter::NOT_SERVICE);
        return xdp_action::XDP_PASS;
    };
    // SAFETY: a value pointer from a lookup, read at once.
    let (service_id, active, hashing) = unsafe {
        (
            (*service).service_id,
            (*service).active_targets,
            (*service).hashing,
        )
    };
    if active == 0 {
        count(Counter::NO_TARGET);
        return xdp_action::XDP_DROP;
    }
    let hash = if hashing == Hashing::CLIENT_IP {
        // SAFETY: [u16; 2] and [u8; 4] are the same 4 bytes.
        client_hash_v4(unsafe { transmute::<[u16; 2], [u8; 4]>(src) })
    } else {
        flow_hash_v4(key, if TCP { Protocol::TCP } else { Protocol::UDP })
    };
    let Some((target_id, target)) = pick(service_id, hash) else {
        count(Counter::NO_TARGET);
        return xdp_action::XDP_DROP;
    };

    let to = target_address(&target);
    // SAFETY: as for the flow key: the target → client direction of the same flow.
    let reply_key: FlowKeyV4 =
        unsafe { transmute([to[0], to[1], src[0], src[1], target.port, key.src_port]) };
    let reply = ReplyEntryV4 {
        // SAFETY: [u16; 2] and [u8; 4] are the same 4 bytes.
        vip: unsafe { transmute::<[u16; 2], [u8; 4]>(dst) },
        vip_port: dst_port,
        _pad: [0; 2],
        service_id,
        target_id,
    };
    let flow = FlowEntry {
        target_id,
        service_id,
    };
    // The reply entry first: once the flow entry exists, the target may answer.
    if replies4::<TCP>().insert(reply_key, reply, 0).is_err()
        || flows4::<TCP>().insert(key, flow, 0).is_err()
    {
        count(Counter::FLOW_INSERT_ERRORS);
    }
    remember(
        cache,
        *key,
        if TCP { Protocol::TCP } else { Protocol::UDP },
        flow,
    );
    // UDP has no handshake: any datagram of no usable flow starts one.
    let new = syn || !TCP;
    count(if new {
        Counter::NEW_FLOWS
    } else {
        Counter::REPICKED
    });
    count_traffic(
        service_id,
        target_id,
        Traffic {
            bytes: u64::from(packet.total_len),
            new_flow: new,
            drained: false,
        },
    );
    dnat(packet, &target);
    route::to_target(ctx, packet, target_id, true)
}

/// The Maglev pick: the slot the hash names, or the next of [`MAGLEV_PROBES`] slots whose
/// target is active and belongs to the service.
#[inline(always)]
fn pick(service_id: u32, hash: u32) -> Option<(u32, TargetEntry)> {
    let row = service_id.wrapping_mul(MAGLEV_SIZE);
    for probe in 0..MAGLEV_PROBES {
        let slot = MAGLEV.get_ptr(row.wrapping_add(maglev_slot(hash, probe)))?;
        // SAFETY: a value pointer from a lookup, read at once.
        let target_id = unsafe { *slot };
        if let Some(target) = TARGETS.get_ptr(target_id) {
            // SAFETY: as above.
            let target = unsafe { *target };
            if target.state == TargetState::ACTIVE && target.service_id == service_id {
                return Some((target_id, target));
            }
        }
    }
    None
}

/// Rewrites the destination to the target, with incremental IPv4 and TCP/UDP checksum updates.
///
/// The update assumes a complete checksum, which is what a NIC delivers. A packet a local
/// socket sent through a veth with checksum offload on carries a partial (pseudo-header) sum
/// instead, which XDP cannot tell apart; receivers on the node trust such packets, but one
/// forwarded out of a NIC that completes the checksum would leave with a wrong one. So XDP
/// belongs on the node's ingress interfaces; the integration test turns offload off on its
/// veths so the pods verify every rewrite.
#[inline(always)]
fn dnat(packet: &Packet, target: &TargetEntry) {
    let to = target_address(target);
    let to_port = target.port;
    // SAFETY: parse checked the IPv4 header and the ports are inside the packet; l4_csum
    // checks its own bounds.
    unsafe {
        let ip = packet.ip;
        let dst = (*ip).dst;
        let dst_port = (*packet.ports()).dst;
        (*ip).check = csum::replace4((*ip).check, dst, to);
        (*ip).dst = to;
        if let Some(check) = packet.l4_csum() {
            let mut updated = csum::replace4_2(*check, dst, to, dst_port, to_port);
            // A computed zero is sent as all ones in UDP, where zero means "no checksum".
            if packet.protocol == Protocol::UDP && updated == 0 {
                updated = 0xffff;
            }
            *check = updated;
        }
        (*packet.ports()).dst = to_port;
    }
}
