//! Types shared by the agent (userspace) and the kernel programs (`ebpf/`): map names, sizes,
//! keys, values, counter indexes and the flow hash.
//!
//! Everything here is `#[repr(C)]`, `Copy` and free of padding surprises, so the same bytes mean
//! the same thing on both sides of a map. Any padding a type needs is an explicit field that must
//! be zero: hash map keys are compared byte for byte, so an uninitialised hole would make lookups
//! miss.
//!
//! Byte order: addresses and ports are stored in network byte order, exactly as they appear in
//! packet headers, so the kernel program copies them into a key without swapping. Constructors
//! take host-order ports and accessors return host-order ports.
//!
//! Families: services and targets hold 16-byte addresses (IPv4 stored IPv4-mapped,
//! `::ffff:a.b.c.d`) with a family tag, so IPv6 needs no new layout there. The per-packet flow
//! tables are per family and protocol, as Cilium keeps its conntrack tables: the IPv4 ones take
//! a 12-byte key (addresses and ports), which hashes and compares measurably faster on the
//! established-flow path than a 40-byte family-neutral one; IPv6 gets its own tables later, with
//! a `FlowKeyV6` next to [`FlowKeyV4`].
#![cfg_attr(not(test), no_std)]

// ---------------------------------------------------------------------------------------------
// Programs

/// The XDP program: steers packets to service VIPs (Maglev pick, flow table, DNAT).
pub const XDP_PROGRAM: &str = "tether_xdp";
/// The TC program on the same interfaces' egress: reverse NAT of replies (pod → VIP).
pub const TC_PROGRAM: &str = "tether_reply";
/// The TC program on the ingress of pod interfaces: reverse NAT of replies, then straight out of
/// the uplink the FIB names (`bpf_redirect`), skipping the node's forwarding path.
pub const TC_POD_PROGRAM: &str = "tether_from_pod";
/// The TC program on the uplinks' ingress: moves a packet the XDP program steered to a pod
/// (and marked, see [`PeerMark`]) straight into the pod's namespace (`bpf_redirect_peer`).
pub const TC_TO_POD_PROGRAM: &str = "tether_to_pod";
/// An XDP program that only returns `XDP_PASS`: the baseline the per-packet cost is measured against.
pub const EMPTY_XDP_PROGRAM: &str = "tether_xdp_nop";

// ---------------------------------------------------------------------------------------------
// Maps

/// `HashMap<ServiceKey, ServiceEntry>`: the kernel services (VIP, port, protocol).
pub const SERVICES_MAP: &str = "TETHER_SERVICES";
/// `Array<TargetEntry>` indexed by target id. An array, so the per-packet lookup is inlined by
/// the verifier (no hashing); a slot whose `state` is [`TargetState::UNUSED`] holds no target.
pub const TARGETS_MAP: &str = "TETHER_TARGETS";
/// `Array<u32>` of [`MAX_SERVICES`] rows of [`MAGLEV_SIZE`] target ids: row `service_id` is that
/// service's Maglev lookup table, built by the agent from its active targets only.
pub const MAGLEV_MAP: &str = "TETHER_MAGLEV";
/// `LruHashMap<FlowKeyV4, FlowEntry>`: client → VIP TCP flows and the target each is pinned to.
pub const TCP_FLOWS4_MAP: &str = "TETHER_FLOWS_T4";
/// As [`TCP_FLOWS4_MAP`], for UDP. One table per protocol (as Cilium splits its conntrack
/// tables) keeps the key at 12 bytes, which the per-packet hash lookup is measurably faster on.
pub const UDP_FLOWS4_MAP: &str = "TETHER_FLOWS_U4";
/// `LruHashMap<FlowKeyV4, ReplyEntryV4>`: target → client TCP flows (the reply direction) and
/// the VIP their source is rewritten back to.
pub const TCP_REPLIES4_MAP: &str = "TETHER_REPLY_T4";
/// As [`TCP_REPLIES4_MAP`], for UDP.
pub const UDP_REPLIES4_MAP: &str = "TETHER_REPLY_U4";
/// `PerCpuArray<u64>` of [`COUNTER_COUNT`] global counters, indexed by [`Counter`].
pub const COUNTERS_MAP: &str = "TETHER_COUNTERS";
/// `PerCpuArray<TrafficCounters>` indexed by service id.
pub const SERVICE_COUNTERS_MAP: &str = "TETHER_SVC_CNT";
/// `PerCpuArray<TrafficCounters>` indexed by target id.
pub const TARGET_COUNTERS_MAP: &str = "TETHER_TGT_CNT";
/// `Array<u64>` of [`PORT_WORDS`] words: a bitmap of the (protocol, port) pairs some service
/// listens on. Checked before anything else, so traffic to other ports costs one inlined
/// array read instead of two hash lookups; see [`port_bit`].
pub const PORTS_MAP: &str = "TETHER_PORTS";
/// `Array<u64>` of [`META_COUNT`] entries: the schema version of the pinned maps, and the agent's
/// target id cursor, so ids stay stable (and are not reused early) across restarts.
pub const META_MAP: &str = "TETHER_META";

/// `Array<NextHop>` indexed by target id: where the XDP program transmits a target's packets.
/// Written by the kernel program (it resolves with `bpf_fib_lookup` and caches the answer);
/// the agent only clears an entry when it writes that target, so a changed target is
/// resolved afresh.
pub const NEXTHOPS_MAP: &str = "TETHER_NEXTHOPS";
/// `PerCpuArray<FlowCacheEntry>` of [`FLOW_CACHE_SLOTS`]: each CPU's direct-mapped cache of
/// flows pinned to active targets, in front of the flow tables (as Open vSwitch's exact-match
/// cache sits in front of its classifier). An established packet that hits it costs an inlined
/// array read and a key compare instead of a hash-table lookup. Owned by the kernel program;
/// the flow tables stay the truth (see the program's module comment for the rules).
pub const FLOW_CACHE_MAP: &str = "TETHER_FCACHE";
/// `HashMap<u32, u32>`: ifindex → [`InterfaceRole`] bits, written by the agent. The kernel
/// programs transmit directly only into interfaces listed here with the right role.
pub const INTERFACES_MAP: &str = "TETHER_IFACES";

/// Words of [`PORTS_MAP`]: one bit per port, for TCP then UDP.
pub const PORT_WORDS: u32 = 2 * 65_536 / 64;

/// The word of [`PORTS_MAP`] and the bit in it for a service port (host byte order).
#[inline(always)]
pub const fn port_bit(protocol: u8, port: u16) -> (u32, u64) {
    let udp = if protocol == Protocol::UDP { 1024 } else { 0 };
    (udp + (port as u32 >> 6), 1 << (port & 63))
}

/// The kind of a map, as the agent checks pinned maps against this schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    Array,
    Hash,
    LruHash,
    PerCpuArray,
}

/// One map of the schema: what a pinned map of that name must look like to be reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    pub name: &'static str,
    pub kind: MapKind,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

const fn spec<K, V>(name: &'static str, kind: MapKind, max_entries: u32) -> MapSpec {
    MapSpec {
        name,
        kind,
        key_size: core::mem::size_of::<K>() as u32,
        value_size: core::mem::size_of::<V>() as u32,
        max_entries,
    }
}

/// Every map, in the order the agent pins and checks them. The kernel program declares the
/// same maps (`ebpf/src/maps.rs`); the kernel tests check the two agree.
pub const MAP_SPECS: [MapSpec; 15] = [
    spec::<u32, u64>(META_MAP, MapKind::Array, META_COUNT),
    spec::<u32, u64>(PORTS_MAP, MapKind::Array, PORT_WORDS),
    spec::<ServiceKey, ServiceEntry>(SERVICES_MAP, MapKind::Hash, MAX_SERVICES),
    spec::<u32, TargetEntry>(TARGETS_MAP, MapKind::Array, MAX_TARGETS),
    spec::<u32, u32>(MAGLEV_MAP, MapKind::Array, MAX_SERVICES * MAGLEV_SIZE),
    spec::<FlowKeyV4, FlowEntry>(TCP_FLOWS4_MAP, MapKind::LruHash, MAX_TCP_FLOWS),
    spec::<FlowKeyV4, FlowEntry>(UDP_FLOWS4_MAP, MapKind::LruHash, MAX_UDP_FLOWS),
    spec::<FlowKeyV4, ReplyEntryV4>(TCP_REPLIES4_MAP, MapKind::LruHash, MAX_TCP_FLOWS),
    spec::<FlowKeyV4, ReplyEntryV4>(UDP_REPLIES4_MAP, MapKind::LruHash, MAX_UDP_FLOWS),
    spec::<u32, u64>(COUNTERS_MAP, MapKind::PerCpuArray, COUNTER_COUNT),
    spec::<u32, TrafficCounters>(SERVICE_COUNTERS_MAP, MapKind::PerCpuArray, MAX_SERVICES),
    spec::<u32, TrafficCounters>(TARGET_COUNTERS_MAP, MapKind::PerCpuArray, MAX_TARGETS),
    spec::<u32, NextHop>(NEXTHOPS_MAP, MapKind::Array, MAX_TARGETS),
    spec::<u32, u32>(INTERFACES_MAP, MapKind::Hash, MAX_INTERFACES),
    spec::<u32, FlowCacheEntry>(FLOW_CACHE_MAP, MapKind::PerCpuArray, FLOW_CACHE_SLOTS),
];

/// Capacity of [`SERVICES_MAP`], and the bound on service ids.
pub const MAX_SERVICES: u32 = 1024;
/// Capacity of [`TARGETS_MAP`], and the bound on target ids. A target is one (service, address)
/// pair: its weight and state are per service.
pub const MAX_TARGETS: u32 = 16_384;
/// Slots of one service's Maglev table. Prime, as Maglev needs; 4093 keeps the whole
/// table at 16 MiB for [`MAX_SERVICES`] while leaving about 100 slots per target at 40
/// targets, i.e. weights honoured to about 1%.
pub const MAGLEV_SIZE: u32 = 4093;
/// Capacity of [`TCP_FLOWS4_MAP`] and [`TCP_REPLIES4_MAP`] (LRU: the least recently used flow
/// goes when full).
pub const MAX_TCP_FLOWS: u32 = 131_072;
/// Capacity of [`UDP_FLOWS4_MAP`] and [`UDP_REPLIES4_MAP`].
pub const MAX_UDP_FLOWS: u32 = 65_536;
/// log2 of [`FLOW_CACHE_SLOTS`].
pub const FLOW_CACHE_BITS: u32 = 13;
/// Slots of [`FLOW_CACHE_MAP`] per CPU: 8192 × 24 bytes = 192 KiB per CPU.
pub const FLOW_CACHE_SLOTS: u32 = 1 << FLOW_CACHE_BITS;
/// Capacity of [`INTERFACES_MAP`]: uplinks plus pod interfaces on one node.
pub const MAX_INTERFACES: u32 = 4096;
/// How long a resolved [`NextHop`] is trusted, in kernel ticks (`jiffies`: 0.25 s to 2.5 s
/// depending on `CONFIG_HZ`). A new flow to the target resolves afresh regardless.
pub const NEXTHOP_TTL_TICKS: u64 = 250;
/// Maglev slots a new flow tries, starting at its hash, before it gives up: a slot can name a
/// target that turned draining a moment before the agent rewrote the slot.
pub const MAGLEV_PROBES: u32 = 8;
/// A Maglev slot that names no target (the service has no active target).
pub const NO_TARGET: u32 = u32::MAX;

/// The layout and meaning of the maps. An agent refuses pinned maps of another version rather
/// than misreading them (`tether cleanup` removes them).
pub const SCHEMA_VERSION: u64 = 2;

/// Indexes into [`META_MAP`].
pub struct Meta;

impl Meta {
    /// [`SCHEMA_VERSION`] of the pinned maps; 0 in maps created a moment ago.
    pub const SCHEMA: u32 = 0;
    /// The next target id the agent hands out (it goes round the id space rather than reusing
    /// the lowest free id, so a removed target's id stays unused for as long as possible).
    pub const NEXT_TARGET_ID: u32 = 1;
}

/// Number of entries in [`META_MAP`].
pub const META_COUNT: u32 = 4;

/// Address family tags used in [`ServiceKey::family`] and [`TargetEntry::family`].
pub struct AddressFamily;

impl AddressFamily {
    /// The address is IPv4, stored IPv4-mapped (`::ffff:a.b.c.d`).
    pub const IPV4: u8 = 4;
    /// The address is IPv6.
    pub const IPV6: u8 = 6;
}

/// IP protocol numbers (the IANA numbers, as in the IP header).
pub struct Protocol;

impl Protocol {
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
}

/// Values of [`TargetEntry::state`]. State lives in the target entry, as Cilium keeps backend
/// state in the backend entry.
pub struct TargetState;

impl TargetState {
    /// A slot that holds no target; never steered to. Flows pinned to it are dead.
    pub const UNUSED: u8 = 0;
    /// Takes new flows and keeps existing ones.
    pub const ACTIVE: u8 = 1;
    /// Terminating pod: keeps the flows it already has, takes no new ones.
    pub const DRAINING: u8 = 2;
}

/// Bits of [`INTERFACES_MAP`] values.
pub struct InterfaceRole;

impl InterfaceRole {
    /// A `dataplane.interfaces` entry: XDP steers its ingress, and replies may be transmitted
    /// straight out of it.
    pub const UPLINK: u32 = 1;
    /// A `dataplane.podInterfaces` match: XDP may transmit steered packets straight into it,
    /// and the TC program on its ingress reverse-NATs replies.
    pub const POD: u32 = 2;
    /// The interface takes frames an XDP program transmits into it (`xdp-features` has
    /// `ndo-xdp-xmit`; for a veth, its pod side has NAPI). XDP redirects only into pod
    /// interfaces with this bit: the kernel would drop frames redirected into the others.
    pub const XDP_TARGET: u32 = 4;
    /// The interface is one end of a pair whose other end is in another network namespace (a
    /// veth or netkit to a pod), and `dataplane.podDelivery` is `peer`: packets steered to it
    /// are handed, as skbs after the node's GRO, straight to the other end's ingress
    /// (`bpf_redirect_peer` from the uplink's TC ingress). Preferred over [`Self::XDP_TARGET`].
    pub const PEER_TARGET: u32 = 8;

    /// How the XDP program delivers packets whose route leads out of an interface with these
    /// roles ([`NextHopVerdict`]): the peer path, else the redirect, else the stack. The kernel
    /// program decides with it and `tether maps interfaces` reports it.
    pub const fn delivery(roles: u32) -> u8 {
        if roles & Self::POD == 0 {
            NextHopVerdict::STACK
        } else if roles & Self::PEER_TARGET != 0 {
            NextHopVerdict::PEER
        } else if roles & Self::XDP_TARGET != 0 {
            NextHopVerdict::REDIRECT
        } else {
            NextHopVerdict::STACK
        }
    }

    /// An [`INTERFACES_MAP`] value: roles in the low 16 bits, the MTU above.
    pub const fn pack(roles: u32, mtu: u16) -> u32 {
        roles | ((mtu as u32) << 16)
    }

    /// The roles and MTU of an [`INTERFACES_MAP`] value.
    pub const fn unpack(value: u32) -> (u32, u16) {
        (value & 0xffff, (value >> 16) as u16)
    }
}

/// Values of [`NextHop::verdict`].
pub struct NextHopVerdict;

impl NextHopVerdict {
    /// Not resolved yet (or cleared by the agent): the next packet asks the FIB.
    pub const UNRESOLVED: u8 = 0;
    /// Transmit straight into [`NextHop::ifindex`] with [`NextHop::macs`] (`XDP_REDIRECT`).
    pub const REDIRECT: u8 = 1;
    /// Leave the packet to the stack (`XDP_PASS`): the route does not lead to a pod interface.
    pub const STACK: u8 = 2;
    /// Rewrite the Ethernet addresses and TTL as for [`Self::REDIRECT`], then `XDP_PASS` with
    /// a [`PeerMark`] naming [`NextHop::ifindex`]: after GRO, the uplink's TC ingress program
    /// moves the skb into the pod's namespace (`bpf_redirect_peer`).
    pub const PEER: u8 = 3;
}

/// What the XDP program leaves in a packet's metadata (in front of the frame, `data_meta`) for
/// the uplink's TC ingress program: move this packet to the peer of `ifindex`. 8 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerMark {
    /// [`PeerMark::MAGIC`]: metadata another XDP program left is not taken for a mark.
    pub magic: u32,
    /// The pod interface (the node's end of the pair).
    pub ifindex: u32,
}

impl PeerMark {
    pub const MAGIC: u32 = 0x7465_7468;
}

/// Value of [`NEXTHOPS_MAP`]: the kernel program's cached route to one target. 32 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextHop {
    /// The Ethernet addresses in header order: destination (the target's neighbour entry),
    /// then source (the egress interface's).
    pub macs: [u8; 12],
    /// The egress interface.
    pub ifindex: u32,
    /// `jiffies` after which the entry is resolved again.
    pub expires: u64,
    /// The egress MTU: larger packets are left to the stack (which fragments or answers ICMP).
    pub mtu: u16,
    /// [`NextHopVerdict`] value.
    pub verdict: u8,
    pub _pad: [u8; 5],
}

impl NextHop {
    pub const UNRESOLVED: Self = Self {
        macs: [0; 12],
        ifindex: 0,
        expires: 0,
        mtu: 0,
        verdict: NextHopVerdict::UNRESOLVED,
        _pad: [0; 5],
    };
}

/// Values of [`ServiceEntry::hashing`]: what a new flow's Maglev pick hashes.
pub struct Hashing;

impl Hashing {
    /// The 5-tuple: flows spread independently.
    pub const FIVE_TUPLE: u8 = 0;
    /// The client address only: one client's flows go to one target.
    pub const CLIENT_IP: u8 = 1;
}

/// Indexes into [`COUNTERS_MAP`]. Each bad-packet class has its own counter; the verdict for
/// each is part of its documentation. Packets of known flows are counted per service and per
/// target only ([`TrafficCounters`]), which keeps the established path to two counter updates.
pub struct Counter;

impl Counter {
    /// Not IPv4 (ARP, IPv6, VLAN-tagged, ...): passed untouched.
    pub const NOT_IPV4: u32 = 0;
    /// Cut short: the frame ends inside the IPv4 or TCP/UDP header, or before the IPv4 total
    /// length, or the datagram is shorter than its transport header. Dropped (the stack would
    /// drop it too).
    pub const TRUNCATED: u32 = 1;
    /// Invalid header: IP version not 4 under the IPv4 ethertype, header length below 20
    /// bytes, total length below the header length, TCP data offset below 5 words. Dropped.
    pub const GARBAGE: u32 = 2;
    /// An IPv4 fragment (more-fragments set or a fragment offset): passed untouched; tether
    /// steers only whole datagrams.
    pub const FRAGMENTED: u32 = 3;
    /// An IPv4 header with options: passed untouched.
    pub const IP_OPTIONS: u32 = 4;
    /// IPv4 but neither TCP nor UDP (ICMP, ...): passed untouched.
    pub const NOT_TCP_UDP: u32 = 5;
    /// TCP or UDP to no service and of no known flow: passed untouched.
    pub const NOT_SERVICE: u32 = 6;
    /// New flows: a TCP SYN or a UDP packet of no known flow, given a Maglev pick.
    pub const NEW_FLOWS: u32 = 7;
    /// TCP packets other than a SYN with no usable flow (evicted from the LRU table, or its
    /// target removed): given a Maglev pick over active targets, like Katran.
    pub const REPICKED: u32 = 8;
    /// New or re-picked flows dropped because the service had no active target.
    pub const NO_TARGET: u32 = 9;
    /// Packets of known flows whose target is draining.
    pub const DRAINED_PACKETS: u32 = 10;
    /// Packets the reply-path TC program saw.
    pub const REPLY_PACKETS: u32 = 11;
    /// Replies whose source was rewritten back to the VIP, and ICMP errors about steered flows
    /// translated (either way: the quoted packet gets the address its receiver knows).
    pub const REPLY_NAT: u32 = 12;
    /// Replies that could not be rewritten (a helper failed); passed as they were.
    pub const REPLY_ERRORS: u32 = 13;
    /// New flows whose entry could not be stored in the flow tables; steered anyway.
    pub const FLOW_INSERT_ERRORS: u32 = 14;
    /// Steered packets sent straight to a pod interface: transmitted into it (`XDP_REDIRECT`), or
    /// marked for the uplink's TC ingress to move into the pod's namespace (`bpf_redirect_peer`).
    pub const REDIRECTED: u32 = 15;
    /// Route lookups (`bpf_fib_lookup`) for a target: a new flow, or a cached route expired.
    pub const ROUTE_LOOKUPS: u32 = 16;
    /// Replies transmitted straight out of an uplink by the pod-interface TC program.
    pub const REPLY_REDIRECTED: u32 = 17;
}

/// Number of entries in [`COUNTERS_MAP`].
pub const COUNTER_COUNT: u32 = 18;

/// Names of the [`Counter`]s, by index, as `tether maps stats` prints them.
pub const COUNTER_NAMES: [&str; COUNTER_COUNT as usize] = [
    "not_ipv4",
    "truncated",
    "garbage",
    "fragmented",
    "ip_options",
    "not_tcp_udp",
    "not_service",
    "new_flows",
    "repicked",
    "no_target",
    "drained_packets",
    "reply_packets",
    "reply_nat",
    "reply_errors",
    "flow_insert_errors",
    "redirected",
    "route_lookups",
    "reply_redirected",
];

/// Builds the 16-byte form of an IPv4 address: IPv4-mapped, `::ffff:a.b.c.d`.
#[inline(always)]
pub const fn ipv4_mapped(octets: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

/// The IPv4 address inside an IPv4-mapped 16-byte address.
#[inline(always)]
pub const fn ipv4_of_mapped(addr: &[u8; 16]) -> [u8; 4] {
    [addr[12], addr[13], addr[14], addr[15]]
}

// ---------------------------------------------------------------------------------------------
// Services and targets

/// Key of [`SERVICES_MAP`]: a kernel service's frontend. 20 bytes, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// VIP, network byte order; IPv4 is IPv4-mapped.
    pub addr: [u8; 16],
    /// Port, network byte order.
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

/// Bytes of [`ServiceEntry::name`].
pub const SERVICE_NAME_LEN: usize = 64;

/// Value of [`SERVICES_MAP`]. Replaced whole by the agent (a hash map update swaps the value
/// atomically for readers).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceEntry {
    /// The service's row in [`MAGLEV_MAP`], and its index in [`SERVICE_COUNTERS_MAP`]; below
    /// [`MAX_SERVICES`].
    pub service_id: u32,
    /// Targets with Maglev slots. 0: new flows are dropped (and counted), since draining
    /// targets take no new flows.
    pub active_targets: u16,
    /// Targets that keep their flows but take no new ones (for `tether maps`).
    pub draining_targets: u16,
    /// [`Hashing`] value.
    pub hashing: u8,
    /// Explicit padding, zero.
    pub _pad: [u8; 3],
    /// The service's name, NUL-padded (truncated to fit); the kernel never reads it.
    pub name: [u8; SERVICE_NAME_LEN],
}

impl ServiceEntry {
    pub fn new(service_id: u32, name: &str, hashing: u8) -> Self {
        let mut entry = Self {
            service_id,
            active_targets: 0,
            draining_targets: 0,
            hashing,
            _pad: [0; 3],
            name: [0; SERVICE_NAME_LEN],
        };
        // Truncate on a character boundary so the stored name stays valid UTF-8.
        let mut len = name.len().min(SERVICE_NAME_LEN);
        while !name.is_char_boundary(len) {
            len -= 1;
        }
        entry.name[..len].copy_from_slice(&name.as_bytes()[..len]);
        entry
    }

    /// The name, up to the first NUL.
    pub fn name(&self) -> &str {
        let len = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(SERVICE_NAME_LEN);
        core::str::from_utf8(&self.name[..len]).unwrap_or("?")
    }
}

/// Value of [`TARGETS_MAP`]: one target (pod address) of one service. 28 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetEntry {
    /// Target address, network byte order; IPv4 is IPv4-mapped.
    pub addr: [u8; 16],
    /// Target port, network byte order.
    pub port: u16,
    /// Relative weight among the service's active targets (for `tether maps`; the Maglev
    /// table already reflects it).
    pub weight: u16,
    /// [`AddressFamily`] tag.
    pub family: u8,
    /// [`TargetState`] value.
    pub state: u8,
    /// Explicit padding, zero.
    pub _pad: [u8; 2],
    /// The service this target belongs to. A flow is steered to its target only while this
    /// still matches the flow's service, so a reused id never captures another service's flows.
    pub service_id: u32,
}

impl TargetEntry {
    /// An empty slot.
    pub const UNUSED: Self = Self {
        addr: [0; 16],
        port: 0,
        weight: 0,
        family: 0,
        state: TargetState::UNUSED,
        _pad: [0; 2],
        service_id: 0,
    };

    /// An IPv4 target; `port` is in host byte order.
    pub const fn ipv4(service_id: u32, addr: [u8; 4], port: u16, weight: u16, state: u8) -> Self {
        Self {
            addr: ipv4_mapped(addr),
            port: port.to_be(),
            weight,
            family: AddressFamily::IPV4,
            state,
            _pad: [0; 2],
            service_id,
        }
    }

    /// An IPv6 target; `port` is in host byte order.
    pub const fn ipv6(service_id: u32, addr: [u8; 16], port: u16, weight: u16, state: u8) -> Self {
        Self {
            addr,
            port: port.to_be(),
            weight,
            family: AddressFamily::IPV6,
            state,
            _pad: [0; 2],
            service_id,
        }
    }

    /// The port in host byte order.
    pub const fn port(&self) -> u16 {
        u16::from_be(self.port)
    }

    pub const fn is_used(&self) -> bool {
        self.state != TargetState::UNUSED
    }
}

// ---------------------------------------------------------------------------------------------
// Flows

/// Key of the flow tables (client → VIP, as the client sent it) and of the reply tables
/// (target → client, as the target answers); the protocol is the table's. 12 bytes, exactly
/// the IPv4 source, destination and ports as they follow each other in the packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKeyV4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    /// Network byte order.
    pub src_port: u16,
    /// Network byte order.
    pub dst_port: u16,
}

impl FlowKeyV4 {
    /// Ports in host byte order.
    pub const fn new(src: [u8; 4], src_port: u16, dst: [u8; 4], dst_port: u16) -> Self {
        Self {
            src,
            dst,
            src_port: src_port.to_be(),
            dst_port: dst_port.to_be(),
        }
    }

    pub const fn src_port(&self) -> u16 {
        u16::from_be(self.src_port)
    }

    pub const fn dst_port(&self) -> u16 {
        u16::from_be(self.dst_port)
    }
}

/// Value of the flow tables: the target a flow is pinned to. 8 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEntry {
    pub target_id: u32,
    /// The target's service when the flow was pinned (see [`TargetEntry::service_id`]).
    pub service_id: u32,
}

/// Value of [`FLOW_CACHE_MAP`]: a flow and its target. 24 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowCacheEntry {
    pub key: FlowKeyV4,
    /// [`Protocol`] of the flow; 0 in a slot never filled.
    pub protocol: u8,
    pub _pad: [u8; 3],
    pub flow: FlowEntry,
}

/// The [`FLOW_CACHE_MAP`] slot of a flow: a multiplicative hash of its key (collisions only
/// cost a miss, the key is compared in full).
#[inline(always)]
pub const fn flow_cache_slot(key: &FlowKeyV4) -> u32 {
    let ports = (key.src_port as u32) | ((key.dst_port as u32) << 16);
    let h = u32::from_ne_bytes(key.src) ^ u32::from_ne_bytes(key.dst).rotate_left(16) ^ ports;
    h.wrapping_mul(0x9e37_79b1) >> (32 - FLOW_CACHE_BITS)
}

/// Value of the reply tables: what a reply's source is rewritten to. 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyEntryV4 {
    /// The VIP, network byte order.
    pub vip: [u8; 4],
    /// The service port, network byte order.
    pub vip_port: u16,
    /// Explicit padding, zero.
    pub _pad: [u8; 2],
    pub service_id: u32,
    pub target_id: u32,
}

/// Value of [`SERVICE_COUNTERS_MAP`] and [`TARGET_COUNTERS_MAP`], per CPU. Client → VIP
/// direction; bytes are IPv4 total lengths.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    pub packets: u64,
    pub bytes: u64,
    /// Flows given this service/target by a Maglev pick (SYN or first UDP packet).
    pub new_flows: u64,
    /// Packets of existing flows steered to a draining target.
    pub drained_packets: u64,
}

impl TrafficCounters {
    /// Field-wise sum, for adding up the per-CPU values.
    pub const fn plus(self, other: Self) -> Self {
        Self {
            packets: self.packets.wrapping_add(other.packets),
            bytes: self.bytes.wrapping_add(other.bytes),
            new_flows: self.new_flows.wrapping_add(other.new_flows),
            drained_packets: self.drained_packets.wrapping_add(other.drained_packets),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Hashing

/// murmur3's 32-bit finaliser: cheap, and every input bit affects every output bit.
#[inline(always)]
pub const fn mix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

const HASH_SEED: u32 = 0x7465_7468; // "teth"

/// The hash a new IPv4 flow's Maglev pick uses for [`Hashing::FIVE_TUPLE`]. Ports in network
/// byte order as in [`FlowKeyV4`]; the same function runs in the kernel and in tests.
#[inline(always)]
pub const fn flow_hash_v4(key: &FlowKeyV4, protocol: u8) -> u32 {
    let ports = ((u16::from_be(key.src_port) as u32) << 16) | u16::from_be(key.dst_port) as u32;
    let mut h = mix32(u32::from_be_bytes(key.src) ^ HASH_SEED ^ protocol as u32);
    h = mix32(h ^ u32::from_be_bytes(key.dst));
    mix32(h ^ ports)
}

/// The hash for [`Hashing::CLIENT_IP`]: the client address only.
#[inline(always)]
pub const fn client_hash_v4(src: [u8; 4]) -> u32 {
    mix32(mix32(u32::from_be_bytes(src) ^ HASH_SEED))
}

/// The Maglev slot (within the service's row) the `probe`-th try of a flow with `hash` reads.
#[inline(always)]
pub const fn maglev_slot(hash: u32, probe: u32) -> u32 {
    (hash % MAGLEV_SIZE + probe) % MAGLEV_SIZE
}

// The kernel program and the agent must agree on these layouts; checked at compile time on
// both sides.
const _: () = {
    assert!(core::mem::size_of::<ServiceKey>() == 20);
    assert!(core::mem::size_of::<ServiceEntry>() == 12 + SERVICE_NAME_LEN);
    assert!(core::mem::size_of::<TargetEntry>() == 28);
    assert!(core::mem::size_of::<FlowKeyV4>() == 12);
    assert!(core::mem::size_of::<FlowEntry>() == 8);
    assert!(core::mem::size_of::<ReplyEntryV4>() == 16);
    assert!(core::mem::size_of::<TrafficCounters>() == 32);
    assert!(core::mem::size_of::<NextHop>() == 32);
    assert!(core::mem::size_of::<PeerMark>() == 8);
    assert!(core::mem::size_of::<FlowCacheEntry>() == 24);
    assert!((MAX_SERVICES as u64) * (MAGLEV_SIZE as u64) < u32::MAX as u64);
    assert!(MAX_TARGETS < NO_TARGET);
    assert!(COUNTER_NAMES.len() == COUNTER_COUNT as usize);
};

#[cfg(feature = "user")]
mod user {
    use super::{
        FlowCacheEntry, FlowEntry, FlowKeyV4, NextHop, ReplyEntryV4, ServiceEntry, ServiceKey,
        TargetEntry, TrafficCounters,
    };

    // Each: plain `#[repr(C)]` data with no implicit padding (checked by the layout tests)
    // and no invalid bit patterns; padding is explicit fields.
    // SAFETY: as above.
    unsafe impl aya::Pod for ServiceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ServiceEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for TargetEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowKeyV4 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ReplyEntryV4 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for TrafficCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for NextHop {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowCacheEntry {}
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
        assert_eq!(size_of::<ServiceEntry>(), 76);
        assert_eq!(align_of::<ServiceEntry>(), 4);
        assert_eq!(offset_of!(ServiceEntry, service_id), 0);
        assert_eq!(offset_of!(ServiceEntry, active_targets), 4);
        assert_eq!(offset_of!(ServiceEntry, draining_targets), 6);
        assert_eq!(offset_of!(ServiceEntry, hashing), 8);
        assert_eq!(offset_of!(ServiceEntry, _pad), 9);
        assert_eq!(offset_of!(ServiceEntry, name), 12);
    }

    #[test]
    fn target_entry_layout() {
        assert_eq!(size_of::<TargetEntry>(), 28);
        assert_eq!(align_of::<TargetEntry>(), 4);
        assert_eq!(offset_of!(TargetEntry, addr), 0);
        assert_eq!(offset_of!(TargetEntry, port), 16);
        assert_eq!(offset_of!(TargetEntry, weight), 18);
        assert_eq!(offset_of!(TargetEntry, family), 20);
        assert_eq!(offset_of!(TargetEntry, state), 21);
        assert_eq!(offset_of!(TargetEntry, _pad), 22);
        assert_eq!(offset_of!(TargetEntry, service_id), 24);
    }

    #[test]
    fn flow_layouts() {
        assert_eq!(size_of::<FlowKeyV4>(), 12);
        assert_eq!(align_of::<FlowKeyV4>(), 2);
        assert_eq!(offset_of!(FlowKeyV4, src), 0);
        assert_eq!(offset_of!(FlowKeyV4, dst), 4);
        assert_eq!(offset_of!(FlowKeyV4, src_port), 8);
        assert_eq!(offset_of!(FlowKeyV4, dst_port), 10);
        assert_eq!(size_of::<FlowEntry>(), 8);
        assert_eq!(size_of::<ReplyEntryV4>(), 16);
        assert_eq!(offset_of!(ReplyEntryV4, vip_port), 4);
        assert_eq!(offset_of!(ReplyEntryV4, service_id), 8);
        assert_eq!(offset_of!(ReplyEntryV4, target_id), 12);
        assert_eq!(size_of::<TrafficCounters>(), 32);
    }

    #[test]
    fn pod_interfaces_prefer_the_peer_path_then_the_redirect() {
        let (pod, peer, xdp) = (
            InterfaceRole::POD,
            InterfaceRole::PEER_TARGET,
            InterfaceRole::XDP_TARGET,
        );
        assert_eq!(
            InterfaceRole::delivery(pod | peer | xdp),
            NextHopVerdict::PEER
        );
        assert_eq!(InterfaceRole::delivery(pod | xdp), NextHopVerdict::REDIRECT);
        assert_eq!(InterfaceRole::delivery(pod), NextHopVerdict::STACK);
        // Only pod interfaces are delivered to.
        assert_eq!(
            InterfaceRole::delivery(InterfaceRole::UPLINK | peer | xdp),
            NextHopVerdict::STACK
        );
    }

    #[test]
    fn names_fit_the_kernel_limit() {
        // BPF_OBJ_NAME_LEN is 16 including the NUL.
        for name in MAP_SPECS.iter().map(|spec| &spec.name).chain(&[
            XDP_PROGRAM,
            TC_PROGRAM,
            TC_POD_PROGRAM,
            TC_TO_POD_PROGRAM,
            EMPTY_XDP_PROGRAM,
        ]) {
            assert!(name.len() <= 15, "{name} is too long for a BPF object name");
        }
    }

    #[test]
    fn port_bits_cover_both_protocols_without_overlap() {
        assert_eq!(port_bit(Protocol::TCP, 0), (0, 1));
        assert_eq!(port_bit(Protocol::TCP, 80), (1, 1 << 16));
        assert_eq!(port_bit(Protocol::TCP, 65_535), (1023, 1 << 63));
        assert_eq!(port_bit(Protocol::UDP, 0), (1024, 1));
        assert_eq!(port_bit(Protocol::UDP, 65_535), (PORT_WORDS - 1, 1 << 63));
    }

    #[test]
    fn maglev_size_is_prime() {
        let n = MAGLEV_SIZE;
        assert!((2..n)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d)));
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
        assert_eq!(ipv4_of_mapped(&key.addr), [10, 96, 0, 1]);
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
    fn service_entry_names_are_truncated_on_char_boundaries() {
        let e = ServiceEntry::new(3, "web", Hashing::CLIENT_IP);
        assert_eq!(e.name(), "web");
        assert_eq!(e.hashing, Hashing::CLIENT_IP);
        let long = "é".repeat(40); // 80 bytes
        let e = ServiceEntry::new(3, &long, Hashing::FIVE_TUPLE);
        assert_eq!(e.name(), "é".repeat(32));
    }

    #[test]
    fn target_entry_constructors() {
        let t = TargetEntry::ipv4(9, [10, 0, 0, 7], 8080, 100, TargetState::DRAINING);
        assert_eq!(t.port(), 8080);
        assert_eq!(t.weight, 100);
        assert_eq!(t.state, TargetState::DRAINING);
        assert_eq!(t.service_id, 9);
        assert_eq!(&t.addr[10..], &[0xff, 0xff, 10, 0, 0, 7]);
        assert!(t.is_used());
        assert!(!TargetEntry::UNUSED.is_used());
    }

    #[test]
    fn flow_hash_spreads_and_depends_on_every_field() {
        let base = FlowKeyV4::new([10, 0, 0, 1], 40_000, [10, 96, 0, 10], 80);
        let h = flow_hash_v4(&base, Protocol::TCP);
        let variants = [
            FlowKeyV4 {
                src: [10, 0, 0, 2],
                ..base
            },
            FlowKeyV4 {
                dst: [10, 96, 0, 11],
                ..base
            },
            FlowKeyV4::new([10, 0, 0, 1], 40_001, [10, 96, 0, 10], 80),
            FlowKeyV4::new([10, 0, 0, 1], 40_000, [10, 96, 0, 10], 81),
        ];
        for v in variants {
            assert_ne!(flow_hash_v4(&v, Protocol::TCP), h, "{v:?}");
        }
        assert_ne!(flow_hash_v4(&base, Protocol::UDP), h);
        // Consecutive client ports land all over a 3-target table.
        let mut buckets = [0u32; 3];
        for port in 0..3000u16 {
            let key = FlowKeyV4::new([10, 0, 0, 1], 30_000 + port, [10, 96, 0, 10], 80);
            buckets[(maglev_slot(flow_hash_v4(&key, Protocol::TCP), 0) % 3) as usize] += 1;
        }
        for b in buckets {
            assert!((900..1100).contains(&b), "{buckets:?}");
        }
    }

    #[test]
    fn maglev_slots_wrap_around() {
        assert_eq!(maglev_slot(MAGLEV_SIZE - 1, 0), MAGLEV_SIZE - 1);
        assert_eq!(maglev_slot(MAGLEV_SIZE - 1, 1), 0);
        assert_eq!(maglev_slot(u32::MAX, 0), u32::MAX % MAGLEV_SIZE);
        assert_ne!(client_hash_v4([10, 0, 0, 1]), client_hash_v4([10, 0, 0, 2]));
    }

    #[test]
    fn counters_have_names() {
        assert_eq!(COUNTER_NAMES[Counter::NOT_IPV4 as usize], "not_ipv4");
        assert_eq!(
            COUNTER_NAMES[Counter::FLOW_INSERT_ERRORS as usize],
            "flow_insert_errors"
        );
        assert_eq!(Counter::REPLY_REDIRECTED + 1, COUNTER_COUNT);
    }
}
