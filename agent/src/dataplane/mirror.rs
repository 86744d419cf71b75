//! The mirror: keeps the maps equal to the model by writing only what changed.
//!
//! Its idea of the maps' contents is read back from the kernel when it opens them (so a
//! restarted agent continues from what the last one wrote, ids included), and updated after
//! every successful write. When a write fails midway, it reads the maps back again so the
//! next update diffs against the truth.
use super::maps::Maps;
use super::plan::{self, KernelState, Op, ServiceState, Summary};
use super::Error;
use crate::model::Model;
use aya::maps::PerCpuValues;
use aya::util::nr_cpus;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use tether_common::{
    ipv4_of_mapped, AddressFamily, Meta, NextHop, ServiceKey, TargetEntry, TrafficCounters,
    MAGLEV_SIZE, MAX_TARGETS, PORT_WORDS, SCHEMA_VERSION,
};

pub struct Mirror {
    maps: Maps,
    state: KernelState,
}

/// What one update did.
#[derive(Debug, Clone)]
pub struct Applied {
    pub summary: Summary,
    pub warnings: Vec<String>,
}

impl Mirror {
    /// Opens the maps: stamps fresh ones with the schema version, refuses another version's,
    /// and reads back what they hold.
    pub fn open(mut maps: Maps) -> Result<Self, Error> {
        let schema = maps
            .meta
            .get(&Meta::SCHEMA, 0)
            .map_err(map_error("read meta"))?;
        match schema {
            0 => maps
                .meta
                .set(Meta::SCHEMA, SCHEMA_VERSION, 0)
                .map_err(map_error("write meta"))?,
            SCHEMA_VERSION => {}
            other => {
                return Err(Error::SchemaVersion {
                    found: other,
                    wanted: SCHEMA_VERSION,
                })
            }
        }
        let state = read_state(&maps)?;
        Ok(Self { maps, state })
    }

    pub fn state(&self) -> &KernelState {
        &self.state
    }

    pub fn maps(&self) -> &Maps {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut Maps {
        &mut self.maps
    }

    /// Clears every target's cached route, so the next packet of each asks the FIB again
    /// (after the set of pod interfaces changed).
    pub fn clear_routes(&mut self) -> Result<(), Error> {
        let ids: Vec<u32> = self.state.used_target_ids().collect();
        for id in ids {
            clear_route(&mut self.maps, id)?;
        }
        Ok(())
    }

    /// Writes the difference between what the maps hold and what `model` asks for.
    pub fn apply(&mut self, model: &Model) -> Result<Applied, Error> {
        let desired = plan::desired(model, &self.state)?;
        let (ops, summary) = plan::diff(&self.state, &desired.state);
        if let Err(error) = self.write(&ops) {
            // Part of the update may be in: learn what is.
            match read_state(&self.maps) {
                Ok(state) => self.state = state,
                Err(reread) => {
                    tracing::error!(%reread, "cannot read the maps back after a failed update")
                }
            }
            return Err(error);
        }
        self.state = desired.state;
        Ok(Applied {
            summary,
            warnings: desired.warnings,
        })
    }

    fn write(&mut self, ops: &[Op]) -> Result<(), Error> {
        let maps = &mut self.maps;
        for op in ops {
            match op {
                Op::ResetServiceCounters(id) => maps
                    .service_counters
                    .set(*id, zeroed()?, 0)
                    .map_err(map_error("reset service counters"))?,
                Op::ResetTargetCounters(id) => maps
                    .target_counters
                    .set(*id, zeroed()?, 0)
                    .map_err(map_error("reset target counters"))?,
                Op::SetTarget(id, entry) => {
                    maps.targets
                        .set(*id, *entry, 0)
                        .map_err(map_error("write target"))?;
                    // After the target: the next packet resolves the route for what it is now.
                    clear_route(maps, *id)?;
                }
                Op::SetSlots { service_id, slots } => {
                    let row = service_id * MAGLEV_SIZE;
                    for (slot, target) in slots {
                        maps.maglev
                            .set(row + slot, *target, 0)
                            .map_err(map_error("write Maglev slot"))?;
                    }
                }
                Op::SetService(key, entry) => maps
                    .services
                    .insert(*key, *entry, 0)
                    .map_err(map_error("write service"))?,
                Op::SetPortWord(word, bits) => maps
                    .ports
                    .set(*word, *bits, 0)
                    .map_err(map_error("write port bitmap"))?,
                Op::DeleteService(key) => match maps.services.remove(key) {
                    Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                    Err(source) => return Err(map_error("delete service")(source)),
                },
                Op::ClearTarget(id) => maps
                    .targets
                    .set(*id, TargetEntry::UNUSED, 0)
                    .map_err(map_error("clear target"))?,
                Op::SetNextTargetId(id) => maps
                    .meta
                    .set(Meta::NEXT_TARGET_ID, u64::from(*id), 0)
                    .map_err(map_error("write meta"))?,
            }
        }
        Ok(())
    }
}

/// Clears target `id`'s cached route: the kernel program asks the FIB again at its next packet.
fn clear_route(maps: &mut Maps, id: u32) -> Result<(), Error> {
    maps.nexthops
        .set(id, NextHop::UNRESOLVED, 0)
        .map_err(map_error("clear a target's cached route"))
}

fn zeroed() -> Result<PerCpuValues<TrafficCounters>, Error> {
    let cpus = nr_cpus().map_err(|(what, source)| Error::Io {
        what: what.to_owned(),
        source,
    })?;
    PerCpuValues::try_from(vec![TrafficCounters::default(); cpus]).map_err(|source| Error::Io {
        what: "per-CPU values".into(),
        source,
    })
}

pub fn map_error(what: &'static str) -> impl Fn(aya::maps::MapError) -> Error {
    move |source| Error::MapWrite { what, source }
}

/// The address a target entry holds.
pub fn target_address(entry: &TargetEntry) -> SocketAddr {
    let ip = if entry.family == AddressFamily::IPV4 {
        IpAddr::V4(Ipv4Addr::from(ipv4_of_mapped(&entry.addr)))
    } else {
        IpAddr::V6(Ipv6Addr::from(entry.addr))
    };
    SocketAddr::new(ip, entry.port())
}

/// Reads the service, target, Maglev and port maps back.
pub fn read_state(maps: &Maps) -> Result<KernelState, Error> {
    let mut services = BTreeMap::new();
    let mut by_id = BTreeMap::new();
    for item in maps.services.iter() {
        let (key, entry) = item.map_err(map_error("read services"))?;
        by_id.insert(entry.service_id, key);
        services.insert(
            key,
            ServiceState {
                entry,
                targets: BTreeMap::new(),
                row: None,
            },
        );
    }
    let mut orphans = BTreeMap::new();
    for id in 0..MAX_TARGETS {
        let entry = maps
            .targets
            .get(&id, 0)
            .map_err(map_error("read targets"))?;
        if !entry.is_used() {
            continue;
        }
        match by_id
            .get(&entry.service_id)
            .and_then(|key: &ServiceKey| services.get_mut(key))
        {
            Some(service) => {
                service.targets.insert(target_address(&entry), (id, entry));
            }
            None => {
                orphans.insert(id, entry);
            }
        }
    }
    for service in services.values_mut() {
        let base = service.entry.service_id * MAGLEV_SIZE;
        let mut row = Vec::with_capacity(MAGLEV_SIZE as usize);
        for slot in 0..MAGLEV_SIZE {
            row.push(
                maps.maglev
                    .get(&(base + slot), 0)
                    .map_err(map_error("read Maglev row"))?,
            );
        }
        service.row = Some(row);
    }
    let mut ports = BTreeMap::new();
    for word in 0..PORT_WORDS {
        let bits = maps.ports.get(&word, 0).map_err(map_error("read ports"))?;
        if bits != 0 {
            ports.insert(word, bits);
        }
    }
    let next = maps
        .meta
        .get(&Meta::NEXT_TARGET_ID, 0)
        .map_err(map_error("read meta"))?;
    Ok(KernelState {
        services,
        orphans,
        ports,
        next_target_id: (next % u64::from(MAX_TARGETS)) as u32,
    })
}
