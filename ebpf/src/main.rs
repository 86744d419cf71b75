//! tether's XDP program.
//!
//! For now it only observes: it parses Ethernet / IPv4 / TCP or UDP with a
//! bounds check before every read, looks the destination up in the service
//! table, picks the target a new flow would go to, and counts what it saw in a
//! per-CPU counter array. Every packet leaves with `XDP_PASS`; steering comes
//! with the flow table in a later change.
//!
//! Map names and layouts come from `tether-common`; the agent reads and writes
//! the same maps.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{HashMap, PerCpuArray},
    programs::XdpContext,
};
use tether_common::{
    AddressFamily, Counter, Protocol, ServiceEntry, ServiceKey, TargetEntry, TargetState,
    COUNTER_COUNT, MAX_SERVICES, MAX_TARGETS, MAX_TARGETS_PER_SERVICE,
};

// The names must match tether_common::{SERVICES_MAP, TARGETS_MAP, COUNTERS_MAP}
// (an attribute cannot take a const); the kernel_program tests look the maps
// up by those constants.
#[map(name = "TETHER_SERVICES")]
static SERVICES: HashMap<ServiceKey, ServiceEntry> = HashMap::with_max_entries(MAX_SERVICES, 0);

#[map(name = "TETHER_TARGETS")]
static TARGETS: HashMap<u32, TargetEntry> = HashMap::with_max_entries(MAX_TARGETS, 0);

#[map(name = "TETHER_COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

const ETH_HDR_LEN: usize = 14;
const ETH_P_IPV4: [u8; 2] = [0x08, 0x00];
const IPV4_MIN_HDR_LEN: usize = 20;
/// Fragment offset bits of the IPv4 flags/fragment field (host order).
const IPV4_FRAG_OFFSET_MASK: u16 = 0x1fff;

/// Ethernet II header. Byte arrays only, so every field read is a byte load
/// and alignment never matters.
#[allow(dead_code)]
#[repr(C)]
struct EthHdr {
    dst: [u8; 6],
    src: [u8; 6],
    ether_type: [u8; 2],
}

/// The fixed 20 bytes of an IPv4 header.
#[allow(dead_code)]
#[repr(C)]
struct Ipv4Hdr {
    version_ihl: u8,
    tos: u8,
    total_len: [u8; 2],
    id: [u8; 2],
    flags_frag: [u8; 2],
    ttl: u8,
    protocol: u8,
    checksum: [u8; 2],
    src: [u8; 4],
    dst: [u8; 4],
}

/// The first four bytes of a TCP or UDP header: the ports.
#[repr(C)]
struct Ports {
    src: [u8; 2],
    dst: [u8; 2],
}

/// Why a packet was not looked up.
enum Skip {
    /// Cut short or invalid header.
    Malformed,
    /// Well formed, but not something this program handles.
    NotHandled,
}

/// The parts of a packet the service lookup needs.
struct Parsed {
    key: ServiceKey,
    /// Flow hash input: source address and ports.
    src: [u8; 4],
    src_port: [u8; 2],
}

#[xdp]
pub fn tether_xdp(ctx: XdpContext) -> u32 {
    count(Counter::PACKETS);
    match parse(&ctx) {
        Ok(parsed) => observe(&parsed),
        Err(Skip::Malformed) => count(Counter::PARSE_FAILURES),
        Err(Skip::NotHandled) => count(Counter::NOT_HANDLED),
    }
    xdp_action::XDP_PASS
}

/// Returns a pointer to a `T` at `offset` bytes into the packet, or `None`
/// when the packet is too short. The comparison against `data_end` is what the
/// verifier needs to see before any read through the pointer.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

#[inline(always)]
fn parse(ctx: &XdpContext) -> Result<Parsed, Skip> {
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(Skip::Malformed)?;
    // SAFETY: ptr_at checked that the whole header is inside the packet.
    if unsafe { (*eth).ether_type } != ETH_P_IPV4 {
        return Err(Skip::NotHandled);
    }

    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_HDR_LEN).ok_or(Skip::Malformed)?;
    // SAFETY: as above, for the fixed part of the IPv4 header.
    let (version_ihl, flags_frag, protocol, src, dst) = unsafe {
        (
            (*ip).version_ihl,
            (*ip).flags_frag,
            (*ip).protocol,
            (*ip).src,
            (*ip).dst,
        )
    };
    if version_ihl >> 4 != 4 {
        return Err(Skip::Malformed);
    }
    let ip_hdr_len = usize::from(version_ihl & 0x0f) * 4;
    if ip_hdr_len < IPV4_MIN_HDR_LEN {
        return Err(Skip::Malformed);
    }
    if protocol != Protocol::TCP && protocol != Protocol::UDP {
        return Err(Skip::NotHandled);
    }
    if u16::from_be_bytes(flags_frag) & IPV4_FRAG_OFFSET_MASK != 0 {
        // A later fragment: no transport header in it.
        return Err(Skip::NotHandled);
    }

    // ip_hdr_len is at most 60, so the offset is bounded for the verifier.
    let ports = ptr_at::<Ports>(ctx, ETH_HDR_LEN + ip_hdr_len).ok_or(Skip::Malformed)?;
    // SAFETY: ptr_at checked the four port bytes are inside the packet.
    let (src_port, dst_port) = unsafe { ((*ports).src, (*ports).dst) };

    Ok(Parsed {
        key: ServiceKey {
            addr: tether_common::ipv4_mapped(dst),
            // Network byte order, as stored in the key.
            port: u16::from_ne_bytes(dst_port),
            family: AddressFamily::IPV4,
            protocol,
        },
        src,
        src_port,
    })
}

/// Looks the destination up and counts what a new flow would get.
#[inline(always)]
fn observe(parsed: &Parsed) {
    // SAFETY: the value is only read, within this program run.
    let Some(service) = (unsafe { SERVICES.get(parsed.key) }) else {
        return;
    };
    count(Counter::SERVICE_HITS);

    let active = usize::from(service.active_count).min(MAX_TARGETS_PER_SERVICE);
    if active == 0 {
        count(Counter::NO_TARGET);
        return;
    }
    // A cheap mix of the source address and port (golden-ratio multiply), so
    // that the high bits the slot is taken from depend on both.
    let port = u32::from(u16::from_ne_bytes(parsed.src_port));
    let hash = (u32::from_ne_bytes(parsed.src) ^ port ^ (port << 16)).wrapping_mul(0x9e37_79b1);
    // Maps the hash onto 0..active by multiply and shift rather than `%`: the
    // verifier tracks the bounds of a product but not of a remainder, and it
    // must see the index stay inside `targets` (active <= 64, so slot <= 63).
    let slot = ((u64::from(hash) * active as u64) >> 32) as usize;
    let Some(&target_id) = service.targets.get(slot) else {
        count(Counter::NO_TARGET);
        return;
    };
    // SAFETY: as above.
    match unsafe { TARGETS.get(target_id) } {
        Some(target) if target.state == TargetState::ACTIVE => count(Counter::TARGET_SELECTED),
        _ => count(Counter::NO_TARGET),
    }
}

#[inline(always)]
fn count(index: u32) {
    if let Some(counter) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot; nothing else writes it while this program runs on this CPU.
        unsafe { *counter += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible, as the kernel requires for GPL-only helpers (none are used yet).
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
