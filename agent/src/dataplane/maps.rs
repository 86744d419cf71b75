//! Typed handles to the maps, taken from a freshly loaded object or opened from their pins.
use super::Error;
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use aya::Ebpf;
use std::path::Path;
use tether_common::{
    FlowEntry, FlowKeyV4, NextHop, ReplyEntryV4, ServiceEntry, ServiceKey, TargetEntry,
    TrafficCounters, COUNTERS_MAP, INTERFACES_MAP, MAGLEV_MAP, META_MAP, NEXTHOPS_MAP, PORTS_MAP,
    SERVICES_MAP, SERVICE_COUNTERS_MAP, TARGETS_MAP, TARGET_COUNTERS_MAP, TCP_FLOWS4_MAP,
    TCP_REPLIES4_MAP, UDP_FLOWS4_MAP, UDP_REPLIES4_MAP,
};

pub struct Maps {
    pub meta: Array<MapData, u64>,
    pub ports: Array<MapData, u64>,
    pub services: HashMap<MapData, ServiceKey, ServiceEntry>,
    pub targets: Array<MapData, TargetEntry>,
    pub maglev: Array<MapData, u32>,
    pub tcp_flows: HashMap<MapData, FlowKeyV4, FlowEntry>,
    pub udp_flows: HashMap<MapData, FlowKeyV4, FlowEntry>,
    pub tcp_replies: HashMap<MapData, FlowKeyV4, ReplyEntryV4>,
    pub udp_replies: HashMap<MapData, FlowKeyV4, ReplyEntryV4>,
    pub counters: PerCpuArray<MapData, u64>,
    pub service_counters: PerCpuArray<MapData, TrafficCounters>,
    pub target_counters: PerCpuArray<MapData, TrafficCounters>,
    pub nexthops: Array<MapData, NextHop>,
    pub interfaces: HashMap<MapData, u32, u32>,
}

impl Maps {
    /// Takes the maps out of a loaded object.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, Error> {
        Self::build(|name| {
            ebpf.take_map(name)
                .ok_or_else(|| Error::MissingMap(name.to_owned()))
        })
    }

    /// Opens the maps pinned under `dir`.
    pub fn open_pinned(dir: &Path) -> Result<Self, Error> {
        Self::build(|name| {
            let path = dir.join(name);
            let data = MapData::from_pin(&path).map_err(|source| Error::OpenPin {
                path: path.clone(),
                source,
            })?;
            Map::from_map_data(data).map_err(|source| Error::Map {
                name: name.to_owned(),
                source,
            })
        })
    }

    fn build(mut get: impl FnMut(&str) -> Result<Map, Error>) -> Result<Self, Error> {
        // Each conversion checks the map type and the key and value sizes against the types.
        macro_rules! typed {
            ($name:expr) => {{
                let map = get($name)?;
                map.try_into().map_err(|source| Error::Map {
                    name: $name.to_owned(),
                    source,
                })?
            }};
        }
        Ok(Self {
            meta: typed!(META_MAP),
            ports: typed!(PORTS_MAP),
            services: typed!(SERVICES_MAP),
            targets: typed!(TARGETS_MAP),
            maglev: typed!(MAGLEV_MAP),
            tcp_flows: typed!(TCP_FLOWS4_MAP),
            udp_flows: typed!(UDP_FLOWS4_MAP),
            tcp_replies: typed!(TCP_REPLIES4_MAP),
            udp_replies: typed!(UDP_REPLIES4_MAP),
            counters: typed!(COUNTERS_MAP),
            service_counters: typed!(SERVICE_COUNTERS_MAP),
            target_counters: typed!(TARGET_COUNTERS_MAP),
            nexthops: typed!(NEXTHOPS_MAP),
            interfaces: typed!(INTERFACES_MAP),
        })
    }
}
