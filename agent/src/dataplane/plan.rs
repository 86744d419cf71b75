//! What the maps should hold for a model, and the ordered writes that take them there from
//! what they hold now. Pure: no map is touched here, so every rule is unit-tested.
//!
//! Identity and stability:
//! - a kernel service is its frontend ([`ServiceKey`]: VIP, port, protocol); its id (its
//!   Maglev row and counter slot) is kept as long as the frontend is configured;
//! - a target is one (service, address) pair; its id is kept as long as the pair is configured.
//!   New ids go round the id space from a cursor kept in the pinned meta map, so a removed
//!   target's id stays unused for as long as possible (flows pinned to it die rather than
//!   follow a reused id).
//!
//! Write order, so the kernel never sees a half-built service and no established flow breaks:
//! counters of new ids are zeroed; new and changed targets are written (a target turning
//! draining stops taking new flows at once: the kernel re-checks the picked target's state);
//! Maglev rows are rewritten slot by slot where they differ; services are written (a new one
//! becomes visible with its targets and row in place); the port bitmap follows; then removed
//! services are deleted and removed targets cleared. Nothing is flushed: the flow tables are
//! never written by the agent.
use crate::balance::maglev::{self, Maglev};
use crate::model::{KernelHashing, L4Protocol, Model, TargetState as ModelState};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use tether_common::{
    port_bit, Hashing, Protocol, ServiceEntry, ServiceKey, TargetEntry, TargetState, MAGLEV_SIZE,
    MAX_SERVICES, MAX_TARGETS, NO_TARGET,
};

/// The contents of the service, target, Maglev and port maps (read back, or desired).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelState {
    pub services: BTreeMap<ServiceKey, ServiceState>,
    /// Used target slots whose service is not in `services` (left by an interrupted update).
    pub orphans: BTreeMap<u32, TargetEntry>,
    /// Non-zero words of the port bitmap.
    pub ports: BTreeMap<u32, u64>,
    /// Where the search for the next new target id starts.
    pub next_target_id: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceState {
    pub entry: ServiceEntry,
    /// Target address → (target id, entry).
    pub targets: BTreeMap<SocketAddr, (u32, TargetEntry)>,
    /// The Maglev row ([`MAGLEV_SIZE`] target ids); `None` when unknown.
    pub row: Option<Vec<u32>>,
}

impl KernelState {
    pub fn service_id(&self, id: u32) -> Option<(&ServiceKey, &ServiceState)> {
        self.services.iter().find(|(_, s)| s.entry.service_id == id)
    }

    pub fn target_count(&self) -> usize {
        self.services.values().map(|s| s.targets.len()).sum()
    }

    pub fn used_target_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.services
            .values()
            .flat_map(|s| s.targets.values().map(|(id, _)| *id))
            .chain(self.orphans.keys().copied())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("{count} kernel services configured; the maps hold at most {MAX_SERVICES}")]
    TooManyServices { count: usize },
    #[error("{count} kernel service targets configured; the maps hold at most {MAX_TARGETS}")]
    TooManyTargets { count: usize },
}

/// The state a model asks for, and what of the model the kernel cannot take.
#[derive(Debug)]
pub struct Desired {
    pub state: KernelState,
    pub warnings: Vec<String>,
}

/// The kernel state for `model`, keeping the ids `current` already gave its services and targets.
pub fn desired(model: &Model, current: &KernelState) -> Result<Desired, PlanError> {
    let mut warnings = Vec::new();
    let mut wanted = Vec::new();
    for service in model.services.values() {
        let Some(frontend) = service.frontend else {
            continue;
        };
        let IpAddr::V4(vip) = frontend.listen.ip() else {
            warnings.push(format!(
                "services.{}: {} is IPv6; the kernel program steers IPv4 only so far, so the service is not installed",
                service.name, frontend.listen
            ));
            continue;
        };
        let protocol = match frontend.protocol {
            L4Protocol::Tcp => Protocol::TCP,
            L4Protocol::Udp => Protocol::UDP,
        };
        let key = ServiceKey::ipv4(vip.octets(), frontend.listen.port(), protocol);
        let mut targets = Vec::new();
        for target in &service.targets {
            match target.address.ip() {
                IpAddr::V4(addr) => targets.push((target, addr)),
                IpAddr::V6(_) => warnings.push(format!(
                    "services.{}: target {} is IPv6 behind an IPv4 VIP; left out",
                    service.name, target.address
                )),
            }
        }
        wanted.push((key, service, frontend.hashing, targets));
    }
    if wanted.len() > MAX_SERVICES as usize {
        return Err(PlanError::TooManyServices {
            count: wanted.len(),
        });
    }
    let target_total: usize = wanted.iter().map(|w| w.3.len()).sum();
    if target_total > MAX_TARGETS as usize {
        return Err(PlanError::TooManyTargets {
            count: target_total,
        });
    }

    // Ids: kept where the service or target stays; new ones avoid every id in use now, so no
    // id changes meaning within one update.
    let mut used_services: BTreeSet<u32> = current
        .services
        .values()
        .map(|s| s.entry.service_id)
        .collect();
    let mut used_targets: BTreeSet<u32> = current.used_target_ids().collect();
    let mut cursor = current.next_target_id % MAX_TARGETS;
    let mut state = KernelState::default();
    for (key, service, hashing, targets) in wanted {
        let existing = current.services.get(&key);
        let service_id = match existing {
            Some(existing) => existing.entry.service_id,
            None => {
                let id = (0..MAX_SERVICES)
                    .find(|id| !used_services.contains(id))
                    .ok_or(PlanError::TooManyServices {
                        count: used_services.len() + 1,
                    })?;
                used_services.insert(id);
                id
            }
        };

        let mut entry = ServiceEntry::new(
            service_id,
            &service.name,
            match hashing {
                KernelHashing::FiveTuple => Hashing::FIVE_TUPLE,
                KernelHashing::ClientIp => Hashing::CLIENT_IP,
            },
        );
        let mut target_states = BTreeMap::new();
        let mut ids = Vec::with_capacity(targets.len());
        for &(target, addr) in &targets {
            let kept = existing.and_then(|s| s.targets.get(&target.address).map(|(id, _)| *id));
            let id = match kept {
                Some(id) => id,
                None => {
                    let id = (0..MAX_TARGETS)
                        .map(|step| (cursor + step) % MAX_TARGETS)
                        .find(|id| !used_targets.contains(id))
                        .ok_or(PlanError::TooManyTargets {
                            count: used_targets.len() + 1,
                        })?;
                    used_targets.insert(id);
                    cursor = (id + 1) % MAX_TARGETS;
                    id
                }
            };
            let active = takes_new_flows(target);
            let kernel_state = if active {
                entry.active_targets += 1;
                TargetState::ACTIVE
            } else {
                entry.draining_targets += 1;
                TargetState::DRAINING
            };
            let weight = u16::try_from(target.weight).unwrap_or(u16::MAX);
            let target_entry = TargetEntry::ipv4(
                service_id,
                addr.octets(),
                target.address.port(),
                weight,
                kernel_state,
            );
            target_states.insert(target.address, (id, target_entry));
            ids.push(id);
        }
        let row = maglev_row(targets.iter().map(|(target, _)| *target), &ids);
        let (word, bit) = port_bit(key.protocol, key.port());
        *state.ports.entry(word).or_default() |= bit;
        state.services.insert(
            key,
            ServiceState {
                entry,
                targets: target_states,
                row: Some(row),
            },
        );
    }
    state.next_target_id = cursor;
    Ok(Desired { state, warnings })
}

/// A target takes new flows when it is active with a weight (as balance::Candidate decides for
/// new sessions); weight 0 is Kong's drain.
fn takes_new_flows(target: &crate::model::Target) -> bool {
    target.state == ModelState::Active && target.weight > 0
}

/// The service's Maglev row: built by the one Maglev builder from the active targets with
/// their weights, slots naming target ids. Identities are the target addresses, so every agent
/// builds the same row.
fn maglev_row<'a>(
    targets: impl Iterator<Item = &'a crate::model::Target> + Clone,
    ids: &[u32],
) -> Vec<u32> {
    let identities: Vec<String> = targets.clone().map(|t| t.address.to_string()).collect();
    let entries: Vec<maglev::Entry> = targets
        .zip(&identities)
        .map(|(target, identity)| maglev::Entry {
            identity: identity.as_bytes(),
            weight: if takes_new_flows(target) {
                target.weight
            } else {
                0
            },
        })
        .collect();
    let maglev = Maglev::build(&entries, MAGLEV_SIZE);
    if maglev.table().is_empty() {
        return vec![NO_TARGET; MAGLEV_SIZE as usize];
    }
    debug_assert_eq!(maglev.table().len(), MAGLEV_SIZE as usize);
    maglev
        .table()
        .iter()
        .map(|&index| ids[index as usize])
        .collect()
}

/// One map write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Zero a new service id's counters.
    ResetServiceCounters(u32),
    /// Zero a new target id's counters.
    ResetTargetCounters(u32),
    SetTarget(u32, TargetEntry),
    /// Maglev slots of one service's row: (slot within the row, target id).
    SetSlots {
        service_id: u32,
        slots: Vec<(u32, u32)>,
    },
    SetService(ServiceKey, ServiceEntry),
    SetPortWord(u32, u64),
    DeleteService(ServiceKey),
    ClearTarget(u32),
    SetNextTargetId(u32),
}

/// What an update changes, for the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub services_added: usize,
    pub services_changed: usize,
    pub services_removed: usize,
    pub targets_added: usize,
    pub targets_changed: usize,
    pub targets_removed: usize,
    pub slots: usize,
    pub writes: usize,
}

impl Summary {
    pub fn is_empty(&self) -> bool {
        self.writes == 0
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "services +{} ~{} -{}, targets +{} ~{} -{}, {} Maglev slots, {} writes",
            self.services_added,
            self.services_changed,
            self.services_removed,
            self.targets_added,
            self.targets_changed,
            self.targets_removed,
            self.slots,
            self.writes
        )
    }
}

/// The writes that take the maps from `current` to `desired`, in a safe order (module docs).
pub fn diff(current: &KernelState, desired: &KernelState) -> (Vec<Op>, Summary) {
    let mut summary = Summary::default();
    let mut resets = Vec::new();
    let mut targets = Vec::new();
    let mut slots = Vec::new();
    let mut services = Vec::new();
    let mut removals = Vec::new();
    let mut clears = Vec::new();

    for (key, want) in &desired.services {
        let have = current.services.get(key);
        match have {
            None => {
                summary.services_added += 1;
                resets.push(Op::ResetServiceCounters(want.entry.service_id));
                services.push(Op::SetService(*key, want.entry));
            }
            Some(have) if have.entry != want.entry => {
                summary.services_changed += 1;
                services.push(Op::SetService(*key, want.entry));
            }
            Some(_) => {}
        }
        for (address, (id, entry)) in &want.targets {
            match have.and_then(|h| h.targets.get(address)) {
                None => {
                    summary.targets_added += 1;
                    resets.push(Op::ResetTargetCounters(*id));
                    targets.push(Op::SetTarget(*id, *entry));
                }
                Some((_, old)) if old != entry => {
                    summary.targets_changed += 1;
                    targets.push(Op::SetTarget(*id, *entry));
                }
                Some(_) => {}
            }
        }
        if let Some(have) = have {
            for (address, (id, _)) in &have.targets {
                if !want.targets.contains_key(address) {
                    summary.targets_removed += 1;
                    clears.push(Op::ClearTarget(*id));
                }
            }
        }
        let old_row = have.and_then(|h| h.row.as_ref());
        let new_row = want.row.as_deref().unwrap_or(&[]);
        let changed: Vec<(u32, u32)> = new_row
            .iter()
            .enumerate()
            .filter(|(slot, id)| old_row.is_none_or(|old| old.get(*slot) != Some(id)))
            .map(|(slot, id)| (slot as u32, *id))
            .collect();
        if !changed.is_empty() {
            summary.slots += changed.len();
            slots.push(Op::SetSlots {
                service_id: want.entry.service_id,
                slots: changed,
            });
        }
    }
    for (key, have) in &current.services {
        if !desired.services.contains_key(key) {
            summary.services_removed += 1;
            removals.push(Op::DeleteService(*key));
            for (id, _) in have.targets.values() {
                summary.targets_removed += 1;
                clears.push(Op::ClearTarget(*id));
            }
        }
    }
    for id in current.orphans.keys() {
        clears.push(Op::ClearTarget(*id));
    }

    let words: BTreeSet<u32> = current
        .ports
        .keys()
        .chain(desired.ports.keys())
        .copied()
        .collect();
    let ports: Vec<Op> = words
        .into_iter()
        .filter_map(|word| {
            let old = current.ports.get(&word).copied().unwrap_or(0);
            let new = desired.ports.get(&word).copied().unwrap_or(0);
            (old != new).then_some(Op::SetPortWord(word, new))
        })
        .collect();

    let mut ops = Vec::new();
    ops.extend(resets);
    ops.extend(targets);
    ops.extend(slots);
    ops.extend(services);
    ops.extend(ports);
    ops.extend(removals);
    ops.extend(clears);
    if desired.next_target_id != current.next_target_id {
        ops.push(Op::SetNextTargetId(desired.next_target_id));
    }
    summary.writes = ops
        .iter()
        .map(|op| match op {
            Op::SetSlots { slots, .. } => slots.len(),
            _ => 1,
        })
        .sum();
    (ops, summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Balancing, Frontend, Service, Target};

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("socket address")
    }

    fn service(name: &str, listen: &str, targets: &[(&str, u32)]) -> Service {
        Service {
            name: name.into(),
            balancing: Balancing::RoundRobin,
            frontend: Some(Frontend {
                listen: addr(listen),
                protocol: L4Protocol::Tcp,
                hashing: KernelHashing::FiveTuple,
            }),
            targets: targets
                .iter()
                .map(|(a, w)| Target::from_weight(addr(a), *w))
                .collect(),
            upstream: Default::default(),
        }
    }

    fn model(services: Vec<Service>) -> Model {
        Model {
            proxy: None,
            admin: None,
            session_key: None,
            dataplane: None,
            routes: Vec::new(),
            services: services.into_iter().map(|s| (s.name.clone(), s)).collect(),
        }
    }

    fn web(targets: &[(&str, u32)]) -> Model {
        model(vec![service("web", "10.0.0.100:80", targets)])
    }

    const THREE: [(&str, u32); 3] = [
        ("10.0.1.2:8080", 100),
        ("10.0.1.3:8080", 100),
        ("10.0.1.4:8080", 100),
    ];

    fn web_key() -> ServiceKey {
        ServiceKey::ipv4([10, 0, 0, 100], 80, Protocol::TCP)
    }

    fn apply(current: &KernelState, model: &Model) -> (KernelState, Vec<Op>, Summary) {
        let desired = desired(model, current).expect("plan");
        let (ops, summary) = diff(current, &desired.state);
        (desired.state, ops, summary)
    }

    fn ids(state: &KernelState) -> BTreeMap<SocketAddr, u32> {
        state.services[&web_key()]
            .targets
            .iter()
            .map(|(a, (id, _))| (*a, *id))
            .collect()
    }

    #[test]
    fn a_new_service_gets_targets_row_service_then_port_in_that_order() {
        let (state, ops, summary) = apply(&KernelState::default(), &web(&THREE));
        let web = &state.services[&web_key()];
        assert_eq!(web.entry.service_id, 0);
        assert_eq!(web.entry.active_targets, 3);
        assert_eq!(web.entry.name(), "web");
        let row = web.row.as_ref().expect("row");
        assert_eq!(row.len(), MAGLEV_SIZE as usize);
        let target_ids: BTreeSet<u32> = web.targets.values().map(|(id, _)| *id).collect();
        assert_eq!(target_ids, BTreeSet::from([0, 1, 2]));
        assert!(row.iter().all(|id| target_ids.contains(id)));

        let kinds: Vec<&str> = ops
            .iter()
            .map(|op| match op {
                Op::ResetServiceCounters(_) | Op::ResetTargetCounters(_) => "reset",
                Op::SetTarget(..) => "target",
                Op::SetSlots { .. } => "slots",
                Op::SetService(..) => "service",
                Op::SetPortWord(..) => "port",
                Op::DeleteService(_) => "delete",
                Op::ClearTarget(_) => "clear",
                Op::SetNextTargetId(_) => "cursor",
            })
            .collect();
        let mut order = kinds.clone();
        order.dedup();
        assert_eq!(
            order,
            ["reset", "target", "slots", "service", "port", "cursor"]
        );
        assert_eq!(summary.services_added, 1);
        assert_eq!(summary.targets_added, 3);
        assert_eq!(summary.slots, MAGLEV_SIZE as usize);
        let (word, bit) = port_bit(Protocol::TCP, 80);
        assert!(ops.contains(&Op::SetPortWord(word, bit)));
    }

    #[test]
    fn the_same_model_again_writes_nothing() {
        let (state, _, _) = apply(&KernelState::default(), &web(&THREE));
        let (again, ops, summary) = apply(&state, &web(&THREE));
        assert!(ops.is_empty(), "{ops:?}");
        assert!(summary.is_empty());
        assert_eq!(again, state);
    }

    #[test]
    fn draining_flips_the_state_and_rewrites_only_the_drained_targets_slots() {
        let (state, _, _) = apply(&KernelState::default(), &web(&THREE));
        let before_ids = ids(&state);
        let drained_id = before_ids[&addr("10.0.1.3:8080")];
        let mut drained = THREE;
        drained[1].1 = 0;
        let (next, ops, summary) = apply(&state, &web(&drained));
        assert_eq!(ids(&next), before_ids, "ids are stable");
        let web = &next.services[&web_key()];
        assert_eq!(web.entry.active_targets, 2);
        assert_eq!(web.entry.draining_targets, 1);
        assert_eq!(
            web.targets[&addr("10.0.1.3:8080")].1.state,
            TargetState::DRAINING
        );
        // The state flip comes before the slot rewrite.
        let flip = ops
            .iter()
            .position(|op| matches!(op, Op::SetTarget(id, e) if *id == drained_id && e.state == TargetState::DRAINING))
            .expect("state flip");
        let rewrite = ops
            .iter()
            .position(|op| matches!(op, Op::SetSlots { .. }))
            .expect("slots");
        assert!(flip < rewrite);
        // Slots that named the drained target move, few others do (Maglev's minimal
        // disruption), and only changed slots are written.
        let old_row = state.services[&web_key()].row.clone().expect("row");
        let new_row = web.row.clone().expect("row");
        assert!(!new_row.contains(&drained_id));
        let changed = old_row.iter().zip(&new_row).filter(|(o, n)| o != n).count();
        let collateral = old_row
            .iter()
            .zip(&new_row)
            .filter(|(o, n)| o != n && **o != drained_id)
            .count();
        assert!(collateral < MAGLEV_SIZE as usize / 20, "{collateral}");
        assert_eq!(summary.slots, changed);
        assert_eq!(summary.targets_changed, 1);
        assert!(!ops
            .iter()
            .any(|op| matches!(op, Op::ClearTarget(_) | Op::DeleteService(_))));
    }

    #[test]
    fn removing_a_target_clears_it_after_the_rows_and_keeps_the_other_ids() {
        let (state, _, _) = apply(&KernelState::default(), &web(&THREE));
        let before = ids(&state);
        let (next, ops, summary) = apply(&state, &web(&[THREE[0], THREE[2]]));
        let removed = before[&addr("10.0.1.3:8080")];
        assert_eq!(ops.last(), Some(&Op::ClearTarget(removed)));
        assert_eq!(summary.targets_removed, 1);
        let after = ids(&next);
        assert_eq!(after.len(), 2);
        for (address, id) in after {
            assert_eq!(before[&address], id);
        }
        // Added back later: a new id, not the removed one.
        let (again, _, _) = apply(&next, &web(&THREE));
        let readded = ids(&again)[&addr("10.0.1.3:8080")];
        assert_ne!(readded, removed);
        assert_eq!(readded, 3);
    }

    #[test]
    fn target_ids_go_round_the_id_space_and_skip_ids_in_use() {
        let current = KernelState {
            next_target_id: MAX_TARGETS - 1,
            orphans: BTreeMap::from([(0, TargetEntry::UNUSED)]),
            ..KernelState::default()
        };
        let (state, ops, _) = apply(&current, &web(&THREE));
        let mut got: Vec<u32> = ids(&state).into_values().collect();
        got.sort();
        assert_eq!(got, vec![1, 2, MAX_TARGETS - 1]);
        assert_eq!(state.next_target_id, 3);
        // The orphan is cleared.
        assert!(ops.contains(&Op::ClearTarget(0)));
    }

    #[test]
    fn removing_a_service_deletes_it_and_clears_its_port_and_targets() {
        let both = model(vec![
            service("web", "10.0.0.100:80", &THREE),
            service("api", "10.0.0.101:80", &[("10.0.2.2:9090", 1)]),
        ]);
        let (state, _, _) = apply(&KernelState::default(), &both);
        let (next, ops, summary) = apply(&state, &web(&THREE));
        let api_key = ServiceKey::ipv4([10, 0, 0, 101], 80, Protocol::TCP);
        assert!(ops.contains(&Op::DeleteService(api_key)));
        assert_eq!(summary.services_removed, 1);
        assert_eq!(summary.targets_removed, 1);
        // Port 80 is still used by web: the bitmap word does not change.
        assert!(!ops.iter().any(|op| matches!(op, Op::SetPortWord(..))));
        assert!(next.services.contains_key(&web_key()));
        // The last service on a port takes its bit with it, before the delete.
        let (_, ops, _) = apply(&next, &model(vec![]));
        let port = ops
            .iter()
            .position(|op| matches!(op, Op::SetPortWord(_, 0)))
            .expect("port cleared");
        let delete = ops
            .iter()
            .position(|op| matches!(op, Op::DeleteService(_)))
            .expect("delete");
        assert!(port < delete);
    }

    #[test]
    fn service_ids_are_not_reused_within_one_update() {
        let (state, _, _) = apply(
            &KernelState::default(),
            &model(vec![service("a", "10.0.0.1:80", &THREE)]),
        );
        let (next, _, _) = apply(&state, &model(vec![service("b", "10.0.0.2:80", &THREE)]));
        let b = &next.services[&ServiceKey::ipv4([10, 0, 0, 2], 80, Protocol::TCP)];
        assert_eq!(b.entry.service_id, 1);
        // A new service has no known row: every slot is written.
        let (_, ops, _) = apply(&state, &model(vec![service("b", "10.0.0.2:80", &THREE)]));
        let slots = ops
            .iter()
            .find_map(|op| match op {
                Op::SetSlots { slots, .. } => Some(slots.len()),
                _ => None,
            })
            .expect("slots");
        assert_eq!(slots, MAGLEV_SIZE as usize);
    }

    #[test]
    fn weights_are_honoured_in_the_row() {
        let (state, _, _) = apply(
            &KernelState::default(),
            &web(&[("10.0.1.2:8080", 300), ("10.0.1.3:8080", 100)]),
        );
        let ids = ids(&state);
        let row = state.services[&web_key()].row.clone().expect("row");
        let heavy = row
            .iter()
            .filter(|id| **id == ids[&addr("10.0.1.2:8080")])
            .count() as f64;
        let light = row.len() as f64 - heavy;
        assert!((2.8..3.2).contains(&(heavy / light)), "{heavy}/{light}");
    }

    #[test]
    fn all_draining_leaves_an_empty_row_and_no_active_target() {
        let (state, _, _) = apply(&KernelState::default(), &web(&THREE));
        let (next, _, _) = apply(
            &state,
            &web(&[
                ("10.0.1.2:8080", 0),
                ("10.0.1.3:8080", 0),
                ("10.0.1.4:8080", 0),
            ]),
        );
        let web = &next.services[&web_key()];
        assert_eq!(web.entry.active_targets, 0);
        assert_eq!(web.entry.draining_targets, 3);
        assert!(web
            .row
            .as_ref()
            .expect("row")
            .iter()
            .all(|id| *id == NO_TARGET));
    }

    #[test]
    fn ipv6_services_and_targets_are_left_out_with_a_warning() {
        let mut v6 = service("v6", "[fd00::1]:80", &[("[fd00::2]:80", 1)]);
        v6.frontend = v6.frontend.map(|f| Frontend {
            hashing: KernelHashing::ClientIp,
            ..f
        });
        let mixed = service(
            "web",
            "10.0.0.100:80",
            &[("10.0.1.2:8080", 1), ("[fd00::3]:80", 1)],
        );
        let desired = desired(&model(vec![v6, mixed]), &KernelState::default()).expect("plan");
        assert_eq!(desired.state.services.len(), 1);
        assert_eq!(desired.state.services[&web_key()].targets.len(), 1);
        assert_eq!(desired.warnings.len(), 2, "{:?}", desired.warnings);
    }

    #[test]
    fn client_ip_hashing_is_recorded_in_the_service_entry() {
        let mut s = service("web", "10.0.0.100:80", &THREE);
        s.frontend = s.frontend.map(|f| Frontend {
            hashing: KernelHashing::ClientIp,
            ..f
        });
        let (state, _, _) = apply(&KernelState::default(), &model(vec![s]));
        assert_eq!(state.services[&web_key()].entry.hashing, Hashing::CLIENT_IP);
    }

    #[test]
    fn too_many_services_is_an_error() {
        let services = (0..=MAX_SERVICES)
            .map(|i| {
                service(
                    &format!("s{i}"),
                    &format!("10.1.{}.{}:80", i / 250, i % 250 + 1),
                    &[],
                )
            })
            .collect();
        assert_eq!(
            desired(&model(services), &KernelState::default()).map(|_| ()),
            Err(PlanError::TooManyServices {
                count: MAX_SERVICES as usize + 1
            })
        );
    }
}
