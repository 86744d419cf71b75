//! The maps, and the counter helpers.
//!
//! None is pinned by the object itself: the agent chooses the pin paths when it loads the
//! object, and the TestRun tests load private copies.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use tether_common::{
    FlowCacheEntry, FlowEntry, FlowKeyV4, NextHop, ReplyEntryV4, ServiceEntry, ServiceKey,
    TargetEntry, TrafficCounters, COUNTER_COUNT, FLOW_CACHE_SLOTS, MAGLEV_SIZE, MAX_INTERFACES,
    MAX_SERVICES, MAX_TARGETS, MAX_TCP_FLOWS, MAX_UDP_FLOWS, META_COUNT, PORT_WORDS,
};

// The names must match tether_common's *_MAP constants (an attribute cannot take a const);
// the agent and the tests open the maps by those constants, and fail loudly on a mismatch.

#[map(name = "TETHER_META")]
pub static META: Array<u64> = Array::with_max_entries(META_COUNT, 0);

#[map(name = "TETHER_PORTS")]
pub static PORTS: Array<u64> = Array::with_max_entries(PORT_WORDS, 0);

#[map(name = "TETHER_SERVICES")]
pub static SERVICES: HashMap<ServiceKey, ServiceEntry> = HashMap::with_max_entries(MAX_SERVICES, 0);

#[map(name = "TETHER_TARGETS")]
pub static TARGETS: Array<TargetEntry> = Array::with_max_entries(MAX_TARGETS, 0);

/// The IPv4 address of a target as two network-order words.
#[inline(always)]
pub fn target_address(target: &TargetEntry) -> [u16; 2] {
    // SAFETY: `addr` is the first field of a 4-byte aligned struct; bytes 12..16 hold the
    // IPv4 address of an IPv4-mapped address.
    unsafe { *(target.addr.as_ptr().add(12) as *const [u16; 2]) }
}

#[map(name = "TETHER_MAGLEV")]
pub static MAGLEV: Array<u32> = Array::with_max_entries(MAX_SERVICES * MAGLEV_SIZE, 0);

#[map(name = "TETHER_FLOWS_T4")]
pub static TCP_FLOWS4: LruHashMap<FlowKeyV4, FlowEntry> =
    LruHashMap::with_max_entries(MAX_TCP_FLOWS, 0);

#[map(name = "TETHER_FLOWS_U4")]
pub static UDP_FLOWS4: LruHashMap<FlowKeyV4, FlowEntry> =
    LruHashMap::with_max_entries(MAX_UDP_FLOWS, 0);

#[map(name = "TETHER_REPLY_T4")]
pub static TCP_REPLIES4: LruHashMap<FlowKeyV4, ReplyEntryV4> =
    LruHashMap::with_max_entries(MAX_TCP_FLOWS, 0);

#[map(name = "TETHER_REPLY_U4")]
pub static UDP_REPLIES4: LruHashMap<FlowKeyV4, ReplyEntryV4> =
    LruHashMap::with_max_entries(MAX_UDP_FLOWS, 0);

#[map(name = "TETHER_COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

#[map(name = "TETHER_SVC_CNT")]
pub static SERVICE_COUNTERS: PerCpuArray<TrafficCounters> =
    PerCpuArray::with_max_entries(MAX_SERVICES, 0);

#[map(name = "TETHER_TGT_CNT")]
pub static TARGET_COUNTERS: PerCpuArray<TrafficCounters> =
    PerCpuArray::with_max_entries(MAX_TARGETS, 0);

#[map(name = "TETHER_FCACHE")]
pub static FLOW_CACHE: PerCpuArray<FlowCacheEntry> =
    PerCpuArray::with_max_entries(FLOW_CACHE_SLOTS, 0);

#[map(name = "TETHER_NEXTHOPS")]
pub static NEXTHOPS: Array<NextHop> = Array::with_max_entries(MAX_TARGETS, 0);

#[map(name = "TETHER_IFACES")]
pub static INTERFACES: HashMap<u32, u32> = HashMap::with_max_entries(MAX_INTERFACES, 0);

/// The flow table of TCP (`TCP = true`) or UDP. A const parameter, not a run-time choice: the
/// verifier inlines a lookup only when the map is known at that call site; a map picked at run
/// time costs an indirect call per packet.
#[inline(always)]
pub fn flows4<const TCP: bool>() -> &'static LruHashMap<FlowKeyV4, FlowEntry> {
    if TCP {
        &TCP_FLOWS4
    } else {
        &UDP_FLOWS4
    }
}

/// The reply table of TCP or UDP (see [`flows4`]).
#[inline(always)]
pub fn replies4<const TCP: bool>() -> &'static LruHashMap<FlowKeyV4, ReplyEntryV4> {
    if TCP {
        &TCP_REPLIES4
    } else {
        &UDP_REPLIES4
    }
}

/// Adds one to a global counter.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(counter) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot; nothing else writes it while this program runs on this CPU.
        unsafe { *counter += 1 };
    }
}

/// What one packet adds to a service's and its target's counters.
#[derive(Clone, Copy)]
pub struct Traffic {
    pub bytes: u64,
    pub new_flow: bool,
    pub drained: bool,
}

#[inline(always)]
pub fn count_traffic(service_id: u32, target_id: u32, traffic: Traffic) {
    if let Some(counters) = SERVICE_COUNTERS.get_ptr_mut(service_id) {
        // SAFETY: as in `count`.
        unsafe { add(counters, traffic) };
    }
    if let Some(counters) = TARGET_COUNTERS.get_ptr_mut(target_id) {
        // SAFETY: as in `count`.
        unsafe { add(counters, traffic) };
    }
}

/// # Safety
/// `counters` is a value pointer from a lookup that nothing else writes meanwhile (see
/// `count`).
#[inline(always)]
unsafe fn add(counters: *mut TrafficCounters, traffic: Traffic) {
    // SAFETY: the caller's promise.
    unsafe {
        (*counters).packets += 1;
        (*counters).bytes += traffic.bytes;
        // Branches rather than adding 0: a read-modify-write less on the common path.
        if traffic.new_flow {
            (*counters).new_flows += 1;
        }
        if traffic.drained {
            (*counters).drained_packets += 1;
        }
    }
}
