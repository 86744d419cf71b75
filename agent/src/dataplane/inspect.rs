//! `tether maps services|targets|flows|interfaces|stats [--json]`: reads the maps a running (or stopped)
//! agent pinned, from a separate process. Human output is an aligned table; `--json` prints
//! one JSON document.
use super::maps::Maps;
use super::mirror::{self, map_error, target_address};
use super::pins::Pins;
use super::plan::KernelState;
use super::Error;
use aya::maps::{HashMap, MapData, PerCpuArray};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use tether_common::{
    FlowEntry, FlowKeyV4, Hashing, InterfaceRole, NextHopVerdict, ServiceKey, TargetEntry,
    TargetState, TrafficCounters, COUNTER_COUNT, COUNTER_NAMES,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum View {
    /// Kernel services: frontend, id, targets, traffic.
    Services,
    /// Targets: address, state, weight, Maglev share, traffic.
    Targets,
    /// Flows in the flow tables and the target each is pinned to.
    Flows,
    /// The interfaces the programs know: uplinks, and pod interfaces with whether XDP
    /// transmits into them (their pod side has NAPI) or leaves their packets to the stack.
    /// Names are those of this command's network namespace: run it in the agent's.
    Interfaces,
    /// Global counters (bad packets, new flows, drops, reply NAT).
    Stats,
}

/// Renders `view` of the maps pinned under `pin_dir`.
pub fn render(view: View, json: bool, pin_dir: &Path) -> Result<String, Error> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::NotRoot("tether maps"));
    }
    let pins = Pins::new(pin_dir);
    if !pins.any_map_pinned() {
        return Err(Error::NothingPinned(pin_dir.to_path_buf()));
    }
    let maps = Maps::open_pinned(pin_dir)?;
    let state = mirror::read_state(&maps)?;
    let (headers, rows, document) = match view {
        View::Services => services(&maps, &state)?,
        View::Targets => targets(&maps, &state)?,
        View::Flows => flows(&maps, &state)?,
        View::Interfaces => interfaces(&maps)?,
        View::Stats => stats(&maps, &state)?,
    };
    Ok(if json {
        let mut text = serde_json::to_string_pretty(&document).unwrap_or_default();
        text.push('\n');
        text
    } else {
        table(&headers, &rows)
    })
}

type Rendered = (Vec<&'static str>, Vec<Vec<Cell>>, Value);

enum Cell {
    Text(String),
    Number(u64),
}

impl Cell {
    fn text(&self) -> String {
        match self {
            Cell::Text(text) => text.clone(),
            Cell::Number(n) => n.to_string(),
        }
    }
}

fn text(value: impl ToString) -> Cell {
    Cell::Text(value.to_string())
}

/// An aligned table: text left-aligned, numbers right-aligned, two spaces between columns.
fn table(headers: &[&str], rows: &[Vec<Cell>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.text().len());
        }
    }
    let numeric: Vec<bool> = (0..headers.len())
        .map(|i| {
            !rows.is_empty()
                && rows
                    .iter()
                    .all(|row| matches!(row.get(i), Some(Cell::Number(_))))
        })
        .collect();
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                if numeric[i] {
                    format!("{cell:>width$}", width = widths[i])
                } else {
                    format!("{cell:<width$}", width = widths[i])
                }
            })
            .collect();
        format!("{}\n", parts.join("  ").trim_end())
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row.iter().map(Cell::text).collect()));
    }
    if rows.is_empty() {
        out.push_str("(none)\n");
    }
    out
}

fn protocol_name(protocol: u8) -> &'static str {
    match protocol {
        tether_common::Protocol::TCP => "tcp",
        tether_common::Protocol::UDP => "udp",
        _ => "?",
    }
}

fn frontend(key: &ServiceKey) -> SocketAddr {
    target_address(&TargetEntry {
        addr: key.addr,
        port: key.port,
        family: key.family,
        ..TargetEntry::UNUSED
    })
}

fn state_name(state: u8) -> &'static str {
    match state {
        TargetState::ACTIVE => "active",
        TargetState::DRAINING => "draining",
        _ => "gone",
    }
}

fn traffic(map: &PerCpuArray<MapData, TrafficCounters>, id: u32) -> Result<TrafficCounters, Error> {
    let values = map.get(&id, 0).map_err(map_error("read counters"))?;
    Ok(values
        .iter()
        .fold(TrafficCounters::default(), |sum, v| sum.plus(*v)))
}

fn traffic_json(t: &TrafficCounters) -> Value {
    json!({
        "packets": t.packets,
        "bytes": t.bytes,
        "new_flows": t.new_flows,
        "drained_packets": t.drained_packets,
    })
}

fn services(maps: &Maps, state: &KernelState) -> Result<Rendered, Error> {
    let mut rows = Vec::new();
    let mut list = Vec::new();
    let mut services: Vec<_> = state.services.iter().collect();
    services.sort_by(|a, b| a.1.entry.name().cmp(b.1.entry.name()).then(a.0.cmp(b.0)));
    for (key, service) in services {
        let entry = &service.entry;
        let t = traffic(&maps.service_counters, entry.service_id)?;
        let hashing = if entry.hashing == Hashing::CLIENT_IP {
            "client-ip"
        } else {
            "5-tuple"
        };
        rows.push(vec![
            text(entry.name()),
            text(frontend(key)),
            text(protocol_name(key.protocol)),
            Cell::Number(u64::from(entry.service_id)),
            text(hashing),
            Cell::Number(u64::from(entry.active_targets)),
            Cell::Number(u64::from(entry.draining_targets)),
            Cell::Number(t.packets),
            Cell::Number(t.bytes),
            Cell::Number(t.new_flows),
            Cell::Number(t.drained_packets),
        ]);
        list.push(json!({
            "name": entry.name(),
            "frontend": frontend(key).to_string(),
            "protocol": protocol_name(key.protocol),
            "id": entry.service_id,
            "hashing": hashing,
            "active_targets": entry.active_targets,
            "draining_targets": entry.draining_targets,
            "traffic": traffic_json(&t),
        }));
    }
    Ok((
        vec![
            "SERVICE",
            "FRONTEND",
            "PROTO",
            "ID",
            "HASH",
            "ACTIVE",
            "DRAINING",
            "PACKETS",
            "BYTES",
            "NEW FLOWS",
            "DRAINED PKTS",
        ],
        rows,
        json!({ "services": list }),
    ))
}

fn targets(maps: &Maps, state: &KernelState) -> Result<Rendered, Error> {
    let mut rows = Vec::new();
    let mut list = Vec::new();
    let mut services: Vec<_> = state.services.values().collect();
    services.sort_by(|a, b| a.entry.name().cmp(b.entry.name()));
    for service in services {
        let row = service.row.as_deref().unwrap_or(&[]);
        for (address, (id, entry)) in &service.targets {
            let slots = row.iter().filter(|slot| *slot == id).count() as u64;
            let t = traffic(&maps.target_counters, *id)?;
            rows.push(vec![
                Cell::Number(u64::from(*id)),
                text(service.entry.name()),
                text(address),
                text(state_name(entry.state)),
                Cell::Number(u64::from(entry.weight)),
                Cell::Number(slots),
                Cell::Number(t.packets),
                Cell::Number(t.bytes),
                Cell::Number(t.new_flows),
                Cell::Number(t.drained_packets),
            ]);
            list.push(json!({
                "id": id,
                "service": service.entry.name(),
                "address": address.to_string(),
                "state": state_name(entry.state),
                "weight": entry.weight,
                "maglev_slots": slots,
                "traffic": traffic_json(&t),
            }));
        }
    }
    Ok((
        vec![
            "ID",
            "SERVICE",
            "ADDRESS",
            "STATE",
            "WEIGHT",
            "SLOTS",
            "PACKETS",
            "BYTES",
            "NEW FLOWS",
            "DRAINED PKTS",
        ],
        rows,
        json!({ "targets": list }),
    ))
}

fn flows(maps: &Maps, state: &KernelState) -> Result<Rendered, Error> {
    let targets: BTreeMap<u32, (&str, SocketAddr, &TargetEntry)> = state
        .services
        .values()
        .flat_map(|service| {
            service
                .targets
                .iter()
                .map(move |(address, (id, entry))| (*id, (service.entry.name(), *address, entry)))
        })
        .collect();
    let mut rows = Vec::new();
    let mut list = Vec::new();
    let tables: [(&str, &HashMap<MapData, FlowKeyV4, FlowEntry>); 2] =
        [("tcp", &maps.tcp_flows), ("udp", &maps.udp_flows)];
    for (protocol, table) in tables {
        // An entry evicted between listing and reading is simply gone.
        let mut flows: Vec<(FlowKeyV4, FlowEntry)> = table.iter().flatten().collect();
        flows.sort_by_key(|(key, _)| (key.dst, key.dst_port(), key.src, key.src_port()));
        for (key, flow) in flows {
            let client = SocketAddr::from((Ipv4Addr::from(key.src), key.src_port()));
            let vip = SocketAddr::from((Ipv4Addr::from(key.dst), key.dst_port()));
            let target = targets
                .get(&flow.target_id)
                .filter(|(_, _, entry)| entry.service_id == flow.service_id);
            let (service, address, target_state) = match target {
                Some((service, address, entry)) => (
                    service.to_string(),
                    address.to_string(),
                    state_name(entry.state),
                ),
                None => ("-".to_owned(), "-".to_owned(), "gone"),
            };
            rows.push(vec![
                text(protocol),
                text(client),
                text(vip),
                text(&service),
                Cell::Number(u64::from(flow.target_id)),
                text(&address),
                text(target_state),
            ]);
            list.push(json!({
                "protocol": protocol,
                "client": client.to_string(),
                "vip": vip.to_string(),
                "service": service,
                "target_id": flow.target_id,
                "target": address,
                "state": target_state,
            }));
        }
    }
    Ok((
        vec![
            "PROTO",
            "CLIENT",
            "FRONTEND",
            "SERVICE",
            "TARGET ID",
            "TARGET",
            "STATE",
        ],
        rows,
        json!({ "flows": list }),
    ))
}

fn interfaces(maps: &Maps) -> Result<Rendered, Error> {
    let mut entries: Vec<(u32, u32)> = maps
        .interfaces
        .iter()
        .collect::<Result<_, _>>()
        .map_err(map_error("read interfaces"))?;
    entries.sort_unstable();
    let mut rows = Vec::new();
    let mut documents = Vec::new();
    for (ifindex, value) in entries {
        let (roles, mtu) = InterfaceRole::unpack(value);
        // Names as this process's network namespace knows them: the agent's, when run beside it.
        let name = interface_name(ifindex);
        // Which path the XDP program gives packets steered to this pod interface.
        let delivery =
            (roles & InterfaceRole::POD != 0).then(|| match InterfaceRole::delivery(roles) {
                NextHopVerdict::PEER => "peer",
                NextHopVerdict::REDIRECT => "redirect",
                _ => "stack",
            });
        let role = match delivery {
            None => "uplink",
            Some("peer") => "pod: peer (into the pod's namespace after GRO)",
            Some("redirect") => "pod: redirect (XDP frames into the veth)",
            Some(_) => "pod: stack (no NAPI on the pod side, no pair into a pod)",
        };
        rows.push(vec![
            Cell::Number(u64::from(ifindex)),
            text(name.as_deref().unwrap_or("?")),
            text(role),
            Cell::Number(u64::from(mtu)),
        ]);
        documents.push(json!({
            "ifindex": ifindex,
            "name": name,
            "uplink": roles & InterfaceRole::UPLINK != 0,
            "pod": roles & InterfaceRole::POD != 0,
            "delivery": delivery,
            "mtu": mtu,
        }));
    }
    Ok((
        vec!["IFINDEX", "NAME", "ROLE", "MTU"],
        rows,
        json!({ "interfaces": documents }),
    ))
}

fn interface_name(ifindex: u32) -> Option<String> {
    let mut buffer = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: if_indextoname writes at most IF_NAMESIZE bytes, NUL-terminated, into buffer.
    let name = unsafe { libc::if_indextoname(ifindex, buffer.as_mut_ptr()) };
    if name.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buffer.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

fn stats(maps: &Maps, state: &KernelState) -> Result<Rendered, Error> {
    let mut rows = Vec::new();
    let mut counters = serde_json::Map::new();
    for index in 0..COUNTER_COUNT {
        let values = maps
            .counters
            .get(&index, 0)
            .map_err(map_error("read counters"))?;
        let total: u64 = values.iter().sum();
        let name = COUNTER_NAMES[index as usize];
        rows.push(vec![text(name), Cell::Number(total)]);
        counters.insert(name.to_owned(), json!(total));
    }
    let mut totals = TrafficCounters::default();
    for service in state.services.values() {
        totals = totals.plus(traffic(&maps.service_counters, service.entry.service_id)?);
    }
    let tcp_flows = maps.tcp_flows.keys().flatten().count() as u64;
    let udp_flows = maps.udp_flows.keys().flatten().count() as u64;
    for (name, value) in [
        ("services", state.services.len() as u64),
        ("targets", state.target_count() as u64),
        ("tcp_flows", tcp_flows),
        ("udp_flows", udp_flows),
        ("service_packets", totals.packets),
        ("service_bytes", totals.bytes),
    ] {
        rows.push(vec![text(name), Cell::Number(value)]);
    }
    let document = json!({
        "counters": counters,
        "services": state.services.len(),
        "targets": state.target_count(),
        "flows": { "tcp": tcp_flows, "udp": udp_flows },
        "traffic": traffic_json(&totals),
    });
    Ok((vec!["COUNTER", "VALUE"], rows, document))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_text_left_and_numbers_right() {
        let out = table(
            &["NAME", "COUNT"],
            &[
                vec![text("web"), Cell::Number(7)],
                vec![text("longer-name"), Cell::Number(1234)],
            ],
        );
        assert_eq!(
            out,
            "NAME         COUNT\nweb              7\nlonger-name   1234\n"
        );
        assert_eq!(table(&["A"], &[]), "A\n(none)\n");
    }
}
