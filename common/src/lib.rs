//! Types shared by the agent (userspace) and the kernel programs (`ebpf/`).
//!
//! Everything here is `#[repr(C)]`, `Copy` and free of padding surprises, so the
//! same bytes mean the same thing on both sides of a map. Any padding a type
//! needs is an explicit field that must be zero: hash map keys are compared
//! byte for byte, so an uninitialised hole would make lookups miss.
//!
//! Byte order: addresses and ports are stored in network byte order, exactly
//! as they appear in packet headers, so the kernel program can copy them into a
//! key without swapping. The constructors take host-order ports and the
//! accessors return host-order ports. IPv4 addresses are stored IPv4-mapped
//! (`::ffff:a.b.c.d`, RFC 4291) in the 16-byte address, with the family field
//! saying which family the entry is; the kernel program parses IPv4 today and
//! IPv6 uses the same layout later.
#![cfg_attr(not(test), no_std)]

/// Name of the XDP program in the object built by `cargo xtask build-ebpf`.
pub const XDP_PROGRAM: &str = "tether_xdp";

/// `HashMap<ServiceKey, ServiceEntry>`: the virtual services (VIP, port, protocol).
pub const SERVICES_MAP: &str = "TETHER_SERVICES";
/// `HashMap<u32, TargetEntry>`: the backends (pods), keyed by target id.
pub const TARGETS_MAP: &str = "TETHER_TARGETS";
/// `PerCpuArray<u64>` of [`COUNTER_COUNT`] counters, indexed by the `Counter` constants.
pub const COUNTERS_MAP: &str = "TETHER_COUNTERS";

/// Capacity of [`SERVICES_MAP`].
pub const MAX_SERVICES: u32 = 4096;
/// Capacity of [`TARGETS_MAP`].
pub const MAX_TARGETS: u32 = 65536;
/// Target id slots in one [`ServiceEntry`]. A power of two, so the kernel
/// program can bound an index with a mask.
pub const MAX_TARGETS_PER_SERVICE: usize = 64;

/// Address family tags used in [`ServiceKey::family`] and [`TargetEntry::family`].
pub struct AddressFamily;

impl AddressFamily {
    /// The address is IPv4, stored IPv4-mapped (`::ffff:a.b.c.d`).
    pub const IPV4: u8 = 4;
    /// The address is IPv6.
    pub const IPV6: u8 = 6;
}

/// IP protocol numbers used in [`ServiceKey::protocol`] (the IANA numbers, as in the IP header).
pub struct Protocol;

impl Protocol {
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
}

/// Values of [`TargetEntry::state`].
pub struct TargetState;

impl TargetState {
    /// A slot that holds no target; never steered to.
    pub const UNUSED: u8 = 0;
    /// Takes new flows and keeps existing ones.
    pub const ACTIVE: u8 = 1;
    /// Terminating pod: keeps the flows it already has, takes no new ones.
    pub const DRAINING: u8 = 2;
}

/// Indexes into [`COUNTERS_MAP`].
pub struct Counter;

impl Counter {
    /// Every packet the XDP program saw.
    pub const PACKETS: u32 = 0;
    /// Packets whose destination (address, port, protocol) is a configured service.
    pub const SERVICE_HITS: u32 = 1;
    /// Packets cut short or with an invalid header (for example an IPv4 header
    /// length below 20 bytes).
    pub const PARSE_FAILURES: u32 = 2;
    /// Well-formed packets the program does not look at: not IPv4, not TCP or
    /// UDP, or a non-first IPv4 fragment.
    pub const NOT_HANDLED: u32 = 3;
    /// Service hits for which an active target was found in [`TARGETS_MAP`].
    pub const TARGET_SELECTED: u32 = 4;
    /// Service hits with no active target, or whose chosen target id is not in
    /// [`TARGETS_MAP`] (or is not active there).
    pub const NO_TARGET: u32 = 5;
}

/// Number of entries in [`COUNTERS_MAP`].
pub const COUNTER_COUNT: u32 = 6;

/// Builds the 16-byte form of an IPv4 address: IPv4-mapped, `::ffff:a.b.c.d`.
#[inline(always)]
pub const fn ipv4_mapped(octets: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

/// Key of [`SERVICES_MAP`]: a virtual service's destination.
///
/// 20 bytes, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// Destination address, network byte order; IPv4 is IPv4-mapped.
    pub addr: [u8; 16],
    /// Destination port, network byte order.
    pub port: u16,
    /// [`AddressFamily`] tag.
    pub family: u8,
    /// [`Protocol`] number.
    pub protocol: u8,
}

impl ServiceKey {
    /// An IPv4 service; `port` is in host byte order.
    pub const fn ipv4(addr: [u8; 4], port: u16, protocol: u8) -> Self {
        Self {
            addr: ipv4_mapped(addr),
            port: port.to_be(),
            family: AddressFamily::IPV4,
            protocol,
        }
    }

    /// An IPv6 service; `port` is in host byte order.
    pub const fn ipv6(addr: [u8; 16], port: u16, protocol: u8) -> Self {
        Self {
            addr,
            port: port.to_be(),
            family: AddressFamily::IPV6,
            protocol,
        }
    }

    /// The port in host byte order.
    pub const fn port(&self) -> u16 {
        u16::from_be(self.port)
    }
}

/// Value of [`SERVICES_MAP`]: the targets of one service.
///
/// `targets[..active_count]` are the active targets new flows are spread over;
/// `targets[active_count..target_count]` are draining targets, kept so the
/// flows they already have can still be found. Userspace rewrites the whole
/// entry on every change (a map update replaces the value atomically for readers).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceEntry {
    /// Agent-assigned id of the service, for counters and debugging.
    pub service_id: u32,
    /// Slots of `targets` in use.
    pub target_count: u16,
    /// Leading slots of `targets` that are active (`active_count <= target_count`).
    pub active_count: u16,
    /// Target ids, keys of [`TARGETS_MAP`].
    pub targets: [u32; MAX_TARGETS_PER_SERVICE],
}

impl ServiceEntry {
    /// An entry with no targets.
    pub const fn empty(service_id: u32) -> Self {
        Self {
            service_id,
            target_count: 0,
            active_count: 0,
            targets: [0; MAX_TARGETS_PER_SERVICE],
        }
    }

    /// Builds an entry from active and draining target ids, or `None` when they
    /// don't fit in [`MAX_TARGETS_PER_SERVICE`] slots.
    pub fn new(service_id: u32, active: &[u32], draining: &[u32]) -> Option<Self> {
        let total = active.len() + draining.len();
        if total > MAX_TARGETS_PER_SERVICE {
            return None;
        }
        let mut entry = Self::empty(service_id);
        entry.targets[..active.len()].copy_from_slice(active);
        entry.targets[active.len()..total].copy_from_slice(draining);
        entry.target_count = total as u16;
        entry.active_count = active.len() as u16;
        Some(entry)
    }
}

/// Value of [`TARGETS_MAP`]: one backend (pod) address.
///
/// 24 bytes; `_pad` must be zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetEntry {
    /// Target address, network byte order; IPv4 is IPv4-mapped.
    pub addr: [u8; 16],
    /// Target port, network byte order.
    pub port: u16,
    /// Relative weight among the service's active targets.
    pub weight: u16,
    /// [`AddressFamily`] tag.
    pub family: u8,
    /// [`TargetState`] value.
    pub state: u8,
    /// Explicit padding, zero.
    pub _pad: [u8; 2],
}

impl TargetEntry {
    /// An IPv4 target; `port` is in host byte order.
    pub const fn ipv4(addr: [u8; 4], port: u16, weight: u16, state: u8) -> Self {
        Self {
            addr: ipv4_mapped(addr),
            port: port.to_be(),
            weight,
            family: AddressFamily::IPV4,
            state,
            _pad: [0; 2],
        }
    }

    /// An IPv6 target; `port` is in host byte order.
    pub const fn ipv6(addr: [u8; 16], port: u16, weight: u16, state: u8) -> Self {
        Self {
            addr,
            port: port.to_be(),
            weight,
            family: AddressFamily::IPV6,
            state,
            _pad: [0; 2],
        }
    }

    /// The port in host byte order.
    pub const fn port(&self) -> u16 {
        u16::from_be(self.port)
    }
}

// The kernel program and the agent must agree on these layouts; checked at
// compile time on both sides.
const _: () = {
    assert!(core::mem::size_of::<ServiceKey>() == 20);
    assert!(core::mem::size_of::<ServiceEntry>() == 8 + 4 * MAX_TARGETS_PER_SERVICE);
    assert!(core::mem::size_of::<TargetEntry>() == 24);
    assert!(MAX_TARGETS_PER_SERVICE.is_power_of_two());
    assert!(MAX_TARGETS_PER_SERVICE <= u16::MAX as usize);
};

#[cfg(feature = "user")]
mod user {
    use super::{ServiceEntry, ServiceKey, TargetEntry};

    // SAFETY: plain `#[repr(C)]` data with no implicit padding (checked by the
    // layout tests) and no invalid bit patterns.
    unsafe impl aya::Pod for ServiceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ServiceEntry {}
    // SAFETY: as above; `_pad` is an explicit field.
    unsafe impl aya::Pod for TargetEntry {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, offset_of, size_of};

    #[test]
    fn service_key_layout() {
        assert_eq!(size_of::<ServiceKey>(), 20);
        assert_eq!(align_of::<ServiceKey>(), 2);
        assert_eq!(offset_of!(ServiceKey, addr), 0);
        assert_eq!(offset_of!(ServiceKey, port), 16);
        assert_eq!(offset_of!(ServiceKey, family), 18);
        assert_eq!(offset_of!(ServiceKey, protocol), 19);
    }

    #[test]
    fn service_entry_layout() {
        assert_eq!(size_of::<ServiceEntry>(), 264);
        assert_eq!(align_of::<ServiceEntry>(), 4);
        assert_eq!(offset_of!(ServiceEntry, service_id), 0);
        assert_eq!(offset_of!(ServiceEntry, target_count), 4);
        assert_eq!(offset_of!(ServiceEntry, active_count), 6);
        assert_eq!(offset_of!(ServiceEntry, targets), 8);
    }

    #[test]
    fn target_entry_layout() {
        assert_eq!(size_of::<TargetEntry>(), 24);
        assert_eq!(align_of::<TargetEntry>(), 2);
        assert_eq!(offset_of!(TargetEntry, addr), 0);
        assert_eq!(offset_of!(TargetEntry, port), 16);
        assert_eq!(offset_of!(TargetEntry, weight), 18);
        assert_eq!(offset_of!(TargetEntry, family), 20);
        assert_eq!(offset_of!(TargetEntry, state), 21);
        assert_eq!(offset_of!(TargetEntry, _pad), 22);
    }

    #[test]
    fn map_names_fit_the_kernel_limit() {
        // BPF_OBJ_NAME_LEN is 16 including the NUL.
        for name in [SERVICES_MAP, TARGETS_MAP, COUNTERS_MAP, XDP_PROGRAM] {
            assert!(name.len() <= 15, "{name} is too long for a BPF object name");
        }
    }

    #[test]
    fn counters_are_dense() {
        let all = [
            Counter::PACKETS,
            Counter::SERVICE_HITS,
            Counter::PARSE_FAILURES,
            Counter::NOT_HANDLED,
            Counter::TARGET_SELECTED,
            Counter::NO_TARGET,
        ];
        for (i, c) in all.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
        assert_eq!(all.len() as u32, COUNTER_COUNT);
    }

    #[test]
    fn ipv4_key_bytes_are_network_order_and_mapped() {
        let key = ServiceKey::ipv4([10, 96, 0, 1], 8080, Protocol::TCP);
        assert_eq!(
            key.addr,
            std::net::Ipv4Addr::new(10, 96, 0, 1)
                .to_ipv6_mapped()
                .octets()
        );
        assert_eq!(key.port.to_ne_bytes(), 8080u16.to_be_bytes());
        assert_eq!(key.port(), 8080);
        assert_eq!(key.family, AddressFamily::IPV4);
        assert_eq!(key.protocol, 6);
    }

    #[test]
    fn ipv6_key_keeps_the_address() {
        let addr = std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x10).octets();
        let key = ServiceKey::ipv6(addr, 443, Protocol::UDP);
        assert_eq!(key.addr, addr);
        assert_eq!(key.port(), 443);
        assert_eq!(key.family, AddressFamily::IPV6);
    }

    #[test]
    fn target_entry_constructors() {
        let t = TargetEntry::ipv4([10, 0, 0, 7], 8080, 100, TargetState::DRAINING);
        assert_eq!(t.port(), 8080);
        assert_eq!(t.weight, 100);
        assert_eq!(t.state, TargetState::DRAINING);
        assert_eq!(t._pad, [0, 0]);
        assert_eq!(&t.addr[10..], &[0xff, 0xff, 10, 0, 0, 7]);
    }

    #[test]
    fn service_entry_orders_active_before_draining() {
        let e = ServiceEntry::new(7, &[1, 2, 3], &[9]).expect("fits");
        assert_eq!(e.service_id, 7);
        assert_eq!(e.active_count, 3);
        assert_eq!(e.target_count, 4);
        assert_eq!(&e.targets[..5], &[1, 2, 3, 9, 0]);
        let too_many = [0u32; MAX_TARGETS_PER_SERVICE + 1];
        assert!(ServiceEntry::new(1, &too_many, &[]).is_none());
        assert!(ServiceEntry::new(1, &too_many[..MAX_TARGETS_PER_SERVICE], &[]).is_some());
    }
}
