//! `ebpf/src/maps.rs`: the object declares exactly the maps of tether-common's schema, with
//! its key and value layouts.
use super::*;

#[test]
fn program_loads_with_the_shared_maps() {
    if !privileged("program_loads_with_the_shared_maps") {
        return;
    }
    let mut kernel = Kernel::load();
    // The typed views check key and value sizes against tether-common.
    kernel.services();
    kernel.targets();
    kernel.maglev();
    kernel.flows();
    kernel.replies();
    kernel.flow_table(UDP_FLOWS4_MAP);
    kernel.reply_table(UDP_REPLIES4_MAP);
    kernel.service_traffic(0);
    kernel.target_traffic(0);
    assert_eq!(kernel.counters(), expected(&[]));
}
#[test]
fn maps_match_the_shared_schema() {
    if !privileged("maps_match_the_shared_schema") {
        return;
    }
    // The agent checks pinned maps against MAP_SPECS; the object must declare exactly those.
    let kernel = Kernel::load();
    for spec in &MAP_SPECS {
        let data = match kernel.ebpf.map(spec.name) {
            Some(
                Map::Array(data)
                | Map::HashMap(data)
                | Map::LruHashMap(data)
                | Map::PerCpuArray(data),
            ) => data,
            other => panic!("{}: {other:?}", spec.name),
        };
        let info = data.info().expect("map info");
        let kind = match info.map_type().expect("map type") {
            MapType::Array => MapKind::Array,
            MapType::Hash => MapKind::Hash,
            MapType::LruHash => MapKind::LruHash,
            MapType::PerCpuArray => MapKind::PerCpuArray,
            other => panic!("{}: {other:?}", spec.name),
        };
        assert_eq!(
            (kind, info.key_size(), info.value_size(), info.max_entries()),
            (spec.kind, spec.key_size, spec.value_size, spec.max_entries),
            "{}",
            spec.name
        );
    }
    assert_eq!(
        kernel.ebpf.maps().count(),
        MAP_SPECS.len(),
        "no map outside the schema"
    );
}
