//! `ebpf/src/steer.rs`: the XDP program's flow table, Maglev pick for new flows, DNAT, drain
//! and removal rules, UDP flows, the per-CPU flow cache, and the paths `cargo xtask bench l4`
//! times.
use super::*;

#[test]
fn syn_gets_a_maglev_pick_and_is_dnated() {
    if !privileged("syn_gets_a_maglev_pick_and_is_dnated") {
        return;
    }
    let mut kernel = kernel_with_service();
    let packet = syn(CLIENT_PORT);
    let pick = maglev_pick(&mut kernel, CLIENT_PORT);

    let (verdict, out) = kernel.run_xdp(&packet);
    assert_eq!(verdict, XDP_PASS);
    // Exactly the packet a from-scratch DNAT to the picked target gives, checksums included.
    assert_eq!(out, with_destination(&packet, pod_addr(pick), POD_PORT));
    assert_checksums_verify(&out);

    let key = FlowKeyV4::new(CLIENT, CLIENT_PORT, VIP, VIP_PORT);
    assert_eq!(
        kernel.flows().get(&key, 0).expect("flow recorded"),
        FlowEntry {
            target_id: pick,
            service_id: SERVICE
        }
    );
    let reply_key = FlowKeyV4::new(pod_addr(pick), POD_PORT, CLIENT, CLIENT_PORT);
    let reply = kernel.replies().get(&reply_key, 0).expect("reply recorded");
    assert_eq!((reply.vip, u16::from_be(reply.vip_port)), (VIP, VIP_PORT));
    assert_eq!((reply.service_id, reply.target_id), (SERVICE, pick));

    // The new flow asked the FIB where the target lives (nowhere here: no redirect).
    assert_eq!(
        kernel.counters(),
        expected(&[(Counter::NEW_FLOWS, 1), (Counter::ROUTE_LOOKUPS, 1)])
    );
    let counted = TrafficCounters {
        packets: 1,
        bytes: (packet.len() - ETH_HDR_LEN) as u64,
        new_flows: 1,
        drained_packets: 0,
    };
    assert_eq!(kernel.service_traffic(SERVICE), counted);
    assert_eq!(kernel.target_traffic(pick), counted);
}
#[test]
fn new_flows_spread_over_active_targets() {
    if !privileged("new_flows_spread_over_active_targets") {
        return;
    }
    let mut kernel = kernel_with_service();
    let mut seen = std::collections::BTreeMap::<u32, u32>::new();
    for port in 0..300u16 {
        let target = kernel.steered_to(&syn(CLIENT_PORT + port));
        assert_eq!(target, maglev_pick(&mut kernel, CLIENT_PORT + port));
        *seen.entry(target).or_default() += 1;
    }
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), vec![A, B, C]);
    for (target, flows) in &seen {
        assert!((60..140).contains(flows), "target {target}: {seen:?}");
    }
    assert_eq!(kernel.counters().get(Counter::NEW_FLOWS), 300);
}
#[test]
fn a_flow_hit_keeps_its_target_when_the_table_changes() {
    if !privileged("a_flow_hit_keeps_its_target_when_the_table_changes") {
        return;
    }
    let mut kernel = kernel_with_service();
    let first = kernel.steered_to(&syn(CLIENT_PORT));
    // The table moves every slot to another target (say weights changed): the flow stays.
    let others: Vec<u32> = [A, B, C].into_iter().filter(|&t| t != first).collect();
    kernel.set_row(SERVICE, &others);
    for _ in 0..3 {
        let packet = data(CLIENT_PORT);
        let (verdict, out) = kernel.run_xdp(&packet);
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(out, with_destination(&packet, pod_addr(first), POD_PORT));
    }
    // A retransmitted SYN of the same flow keeps its (active) target too. Each SYN resolves
    // the route afresh; the data packets used the cached answer.
    assert_eq!(kernel.steered_to(&syn(CLIENT_PORT)), first);
    assert_eq!(
        kernel.counters(),
        expected(&[(Counter::NEW_FLOWS, 1), (Counter::ROUTE_LOOKUPS, 2)])
    );
    assert_eq!(kernel.target_traffic(first).packets, 5);
    assert_eq!(kernel.target_traffic(first).new_flows, 1);
}
#[test]
fn a_draining_target_keeps_its_flows() {
    if !privileged("a_draining_target_keeps_its_flows") {
        return;
    }
    let mut kernel = kernel_with_service();
    let pinned = kernel.steered_to(&syn(CLIENT_PORT));
    // The agent marks the target draining, then rebuilds the table from the active ones.
    kernel.set_state(pinned, TargetState::DRAINING);
    let active: Vec<u32> = [A, B, C].into_iter().filter(|&t| t != pinned).collect();
    kernel.set_row(SERVICE, &active);
    kernel.add_service(service_key(), service_entry(2, 1, Hashing::FIVE_TUPLE));

    for _ in 0..4 {
        assert_eq!(kernel.steered_to(&data(CLIENT_PORT)), pinned);
    }
    let counters = kernel.counters();
    assert_eq!(counters.get(Counter::DRAINED_PACKETS), 4);
    assert_eq!(kernel.target_traffic(pinned).packets, 5);
    assert_eq!(kernel.target_traffic(pinned).drained_packets, 4);
    assert_eq!(kernel.service_traffic(SERVICE).drained_packets, 4);
}
#[test]
fn new_flows_avoid_a_draining_target() {
    if !privileged("new_flows_avoid_a_draining_target") {
        return;
    }
    let mut kernel = kernel_with_service();
    // B drains, but its slots are not rewritten yet (the agent flips the state first): the
    // program probes past them.
    kernel.set_state(B, TargetState::DRAINING);
    for port in 0..200u16 {
        let target = kernel.steered_to(&syn(CLIENT_PORT + port));
        assert_ne!(target, B, "new flow from port {}", CLIENT_PORT + port);
    }
    // A SYN of a flow pinned to the draining target is a new connection: re-picked.
    let mut port = CLIENT_PORT + 1000;
    kernel.set_state(B, TargetState::ACTIVE);
    while kernel.steered_to(&syn(port)) != B {
        port += 1;
        assert!(port < CLIENT_PORT + 2000, "no flow landed on B");
    }
    kernel.set_state(B, TargetState::DRAINING);
    kernel.set_row(SERVICE, &[A, C]);
    assert_ne!(kernel.steered_to(&syn(port)), B);
    assert_eq!(kernel.target_traffic(B).drained_packets, 0);
}
#[test]
fn no_active_target_drops_new_flows_but_keeps_drained_ones() {
    if !privileged("no_active_target_drops_new_flows_but_keeps_drained_ones") {
        return;
    }
    let mut kernel = kernel_with_service();
    let pinned = kernel.steered_to(&syn(CLIENT_PORT));
    for id in [A, B, C] {
        kernel.set_state(id, TargetState::DRAINING);
    }
    kernel.set_row(SERVICE, &[]);
    kernel.add_service(service_key(), service_entry(0, 3, Hashing::FIVE_TUPLE));

    let packet = syn(CLIENT_PORT + 1);
    assert_eq!(kernel.run_xdp(&packet), (XDP_DROP, packet.clone()));
    assert_eq!(kernel.steered_to(&data(CLIENT_PORT)), pinned);
    // A stale table naming only draining targets finds nothing either.
    kernel.add_service(service_key(), service_entry(3, 0, Hashing::FIVE_TUPLE));
    kernel.set_row(SERVICE, &[A, B, C]);
    assert_eq!(kernel.run_xdp(&packet).0, XDP_DROP);
    let counters = kernel.counters();
    assert_eq!(counters.get(Counter::NO_TARGET), 2);
    assert_eq!(counters.get(Counter::DRAINED_PACKETS), 1);
}
#[test]
fn a_removed_target_loses_its_flows_to_a_new_pick() {
    if !privileged("a_removed_target_loses_its_flows_to_a_new_pick") {
        return;
    }
    let mut kernel = kernel_with_service();
    let pinned = kernel.steered_to(&syn(CLIENT_PORT));
    let others: Vec<u32> = [A, B, C].into_iter().filter(|&t| t != pinned).collect();
    // The agent rewrites the table without the target, then clears its slot.
    kernel.set_row(SERVICE, &others);
    kernel.remove_target(pinned);

    // Mid-flow: re-picked over the active targets (the new pod will reset the connection).
    let moved = kernel.steered_to(&data(CLIENT_PORT));
    assert!(others.contains(&moved));
    // ...and recorded: the flow now stays there.
    assert_eq!(kernel.steered_to(&data(CLIENT_PORT)), moved);
    // A SYN of another flow whose target was removed is re-picked the same way.
    let port = CLIENT_PORT + 1;
    let second = kernel.steered_to(&syn(port));
    assert!(others.contains(&second));
    let counters = kernel.counters();
    assert_eq!(counters.get(Counter::REPICKED), 1);
    assert_eq!(counters.get(Counter::NEW_FLOWS), 2);
    assert_eq!(
        kernel.target_traffic(moved).packets,
        2 + u64::from(second == moved)
    );

    // The id is reused by another service's target: the old flows do not follow it there.
    kernel.set_target(pinned, target(pinned, TargetState::ACTIVE));
    kernel.set_row(SERVICE, &[pinned]);
    let port = CLIENT_PORT + 500;
    assert_eq!(kernel.steered_to(&syn(port)), pinned);
    kernel.set_row(SERVICE, &others);
    kernel.set_target(
        pinned,
        TargetEntry::ipv4(SERVICE + 1, [10, 99, 0, 1], 9999, 1, TargetState::ACTIVE),
    );
    let after = kernel.steered_to(&data(port));
    assert!(others.contains(&after), "went to {after}");
}
#[test]
fn an_unknown_mid_flow_packet_gets_the_maglev_pick_never_a_draining_target() {
    if !privileged("an_unknown_mid_flow_packet_gets_the_maglev_pick_never_a_draining_target") {
        return;
    }
    let mut kernel = kernel_with_service();
    // As if the flow had been evicted from the LRU table: consistent hashing sends it where a
    // SYN would have gone.
    let expected_target = maglev_pick(&mut kernel, CLIENT_PORT);
    assert_eq!(kernel.steered_to(&data(CLIENT_PORT)), expected_target);
    assert_eq!(kernel.counters().get(Counter::REPICKED), 1);
    assert_eq!(kernel.counters().get(Counter::NEW_FLOWS), 0);
    assert_eq!(kernel.service_traffic(SERVICE).new_flows, 0);

    kernel.set_state(A, TargetState::DRAINING);
    for port in 1..100 {
        assert_ne!(kernel.steered_to(&data(CLIENT_PORT + port)), A);
    }
}
#[test]
fn client_ip_hashing_sends_a_client_to_one_target() {
    if !privileged("client_ip_hashing_sends_a_client_to_one_target") {
        return;
    }
    let mut kernel = kernel_with_service();
    kernel.add_service(service_key(), service_entry(3, 0, Hashing::CLIENT_IP));
    let expected_target = kernel.slot(SERVICE, maglev_slot(client_hash_v4(CLIENT), 0));
    for port in 0..50 {
        assert_eq!(kernel.steered_to(&syn(CLIENT_PORT + port)), expected_target);
    }
    let mut seen = std::collections::BTreeSet::new();
    for host in 1..=60u8 {
        let packet = tcp([10, 244, 7, host], CLIENT_PORT, VIP, VIP_PORT, SYN, &[]);
        seen.insert(kernel.steered_to(&packet));
    }
    assert_eq!(seen.len(), 3, "clients spread over the targets");
}
#[test]
fn udp_flows_are_steered_and_keep_their_target() {
    if !privileged("udp_flows_are_steered_and_keep_their_target") {
        return;
    }
    let mut kernel = kernel_with_service();
    kernel.add_service(
        ServiceKey::ipv4(VIP, 53, Protocol::UDP),
        ServiceEntry {
            service_id: SERVICE,
            ..service_entry(3, 0, Hashing::FIVE_TUPLE)
        },
    );
    let first_packet = udp(CLIENT, 5353, VIP, 53, true);
    let (verdict, out) = kernel.run_xdp(&first_packet);
    assert_eq!(verdict, XDP_PASS);
    let (addr, port) = destination(&out);
    assert_eq!(port, POD_PORT);
    assert_eq!(
        out,
        with_destination(&first_packet, addr, POD_PORT),
        "checksum updated"
    );
    let target = u32::from(addr[3]);
    kernel.set_state(target, TargetState::DRAINING);

    // Without a checksum: the datagram keeps none; the drained flow keeps its target.
    let no_checksum = udp(CLIENT, 5353, VIP, 53, false);
    let (verdict, out) = kernel.run_xdp(&no_checksum);
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(out, with_destination(&no_checksum, addr, POD_PORT));
    assert_eq!(&out[L4 + 6..L4 + 8], &[0, 0]);
    let counters = kernel.counters();
    assert_eq!(counters.get(Counter::NEW_FLOWS), 1);
    assert_eq!(counters.get(Counter::DRAINED_PACKETS), 1);
    assert_eq!(kernel.target_traffic(target).packets, 2);

    // A new UDP flow (another client port) avoids the draining target.
    for port in 0..50 {
        assert_ne!(
            kernel.steered_to(&udp(CLIENT, 6000 + port, VIP, 53, true)),
            target
        );
    }
}
#[test]
fn other_destinations_pass_untouched() {
    if !privileged("other_destinations_pass_untouched") {
        return;
    }
    let kernel = kernel_with_service();
    let misses = [
        tcp(CLIENT, CLIENT_PORT, [10, 96, 0, 11], VIP_PORT, SYN, &[]),
        tcp(CLIENT, CLIENT_PORT, VIP, VIP_PORT + 1, SYN, &[]),
        // The VIP and port, but UDP while the service is TCP.
        udp(CLIENT, CLIENT_PORT, VIP, VIP_PORT, true),
        // The VIP's port as the source port does not count.
        tcp(VIP, VIP_PORT, CLIENT, CLIENT_PORT, SYN, &[]),
    ];
    for packet in &misses {
        assert_eq!(kernel.run_xdp(packet), (XDP_PASS, packet.clone()));
    }
    assert_eq!(
        kernel.counters(),
        expected(&[(Counter::NOT_SERVICE, misses.len() as u64)])
    );
}
// ---------------------------------------------------------------------------------------------
// The cost fixtures

/// The fixtures `cargo xtask bench l4` times (ns/packet against the empty program) take the
/// path they are named after; no timing here.
///
/// `BPF_PROG_TEST_RUN` repeats a run on the same buffer, so a rewritten packet would be a
/// different packet on the next repeat. The established flow's target is therefore the VIP
/// itself (the DNAT and checksum work is the same, and the packet stays identical): every
/// repeat is a flow hit. The misses pass untouched and count as not_service; a SYN records a
/// new flow and the empty program passes everything untouched.
#[test]
fn cost_fixtures_take_their_paths() {
    if !privileged("cost_fixtures_take_their_paths") {
        return;
    }
    let mut kernel = kernel_with_service();
    const REPEAT: u32 = 1000;

    let established = data(CLIENT_PORT);
    // Not a service port: one array read and out.
    let miss_port = tcp(CLIENT, CLIENT_PORT, VIP, 22, PSH_ACK, b"x");
    // A service port on another address: flow lookup, service lookup, out.
    let miss_vip = tcp(
        CLIENT,
        CLIENT_PORT,
        [10, 96, 0, 99],
        VIP_PORT,
        PSH_ACK,
        b"x",
    );
    let key = FlowKeyV4::new(CLIENT, CLIENT_PORT, VIP, VIP_PORT);
    const SELF: u32 = 100;
    kernel.set_target(
        SELF,
        TargetEntry::ipv4(SERVICE, VIP, VIP_PORT, 1, TargetState::ACTIVE),
    );
    kernel
        .ebpf
        .map_mut(TCP_FLOWS4_MAP)
        .map(|map| HashMap::<_, FlowKeyV4, FlowEntry>::try_from(map).expect("flows"))
        .expect("flows map")
        .insert(
            key,
            FlowEntry {
                target_id: SELF,
                service_id: SERVICE,
            },
            0,
        )
        .expect("insert flow");
    let (verdict, out) = kernel.run_xdp(&established);
    assert_eq!(
        (verdict, &out),
        (XDP_PASS, &established),
        "stays the same packet"
    );
    assert_checksums_verify(&out);

    let before = kernel.target_traffic(SELF).packets;
    assert_eq!(
        kernel.run_repeated(XDP_PROGRAM, &established, REPEAT),
        XDP_PASS
    );
    assert_eq!(
        kernel.target_traffic(SELF).packets - before,
        u64::from(REPEAT),
        "every repeat is a flow hit"
    );

    let misses = kernel.counters().get(Counter::NOT_SERVICE);
    for packet in [&miss_port, &miss_vip] {
        assert_eq!(kernel.run_xdp(packet), (XDP_PASS, packet.clone()));
        assert_eq!(kernel.run_repeated(XDP_PROGRAM, packet, REPEAT), XDP_PASS);
    }
    assert_eq!(
        kernel.counters().get(Counter::NOT_SERVICE) - misses,
        2 * (u64::from(REPEAT) + 1),
        "misses count as not_service"
    );

    let new_flows = kernel.counters().get(Counter::NEW_FLOWS);
    for port in 0..100 {
        kernel.steered_to(&syn(30_000 + port));
    }
    assert_eq!(kernel.counters().get(Counter::NEW_FLOWS) - new_flows, 100);

    assert_eq!(
        kernel.run_repeated(EMPTY_XDP_PROGRAM, &established, REPEAT),
        XDP_PASS
    );
}
// ---------------------------------------------------------------------------------------------
// The per-CPU flow cache

/// Pins the calling thread to one CPU: the flow cache is per CPU, and test runs execute on the
/// caller's CPU.
fn stay_on_one_cpu() {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity on it are sound.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}
#[test]
fn the_flow_cache_serves_active_flows_and_never_a_draining_one() {
    if !privileged("the_flow_cache_serves_active_flows_and_never_a_draining_one") {
        return;
    }
    stay_on_one_cpu();
    let mut kernel = kernel_with_service();
    let pinned = kernel.steered_to(&syn(CLIENT_PORT));
    let key = FlowKeyV4::new(CLIENT, CLIENT_PORT, VIP, VIP_PORT);

    // With the flow table's entry gone (say evicted), the cache still knows the flow: no
    // re-pick, same target. Moving every Maglev slot away shows it is not a re-pick that
    // happened to land on the same target.
    let others: Vec<u32> = [A, B, C].into_iter().filter(|&t| t != pinned).collect();
    kernel.set_row(SERVICE, &others);
    let mut flows = kernel.flow_table_mut();
    flows.remove(&key).expect("delete the flow");
    for _ in 0..3 {
        assert_eq!(kernel.steered_to(&data(CLIENT_PORT)), pinned);
    }
    assert_eq!(kernel.counters().get(Counter::REPICKED), 0);
    assert_eq!(kernel.target_traffic(pinned).packets, 4);

    // A draining target is never served from the cache: the flow table decides, and without
    // an entry there the packet is re-picked over the active targets.
    kernel.set_state(pinned, TargetState::DRAINING);
    let moved = kernel.steered_to(&data(CLIENT_PORT));
    assert!(
        others.contains(&moved),
        "went to {moved}, pinned was {pinned}"
    );
    assert_eq!(kernel.counters().get(Counter::REPICKED), 1);
    // The re-pick is cached in turn.
    assert_eq!(kernel.steered_to(&data(CLIENT_PORT)), moved);
    assert_eq!(kernel.counters().get(Counter::REPICKED), 1);

    // A removed target is not served from the cache either.
    kernel.remove_target(moved);
    let mut flows = kernel.flow_table_mut();
    flows.remove(&key).expect("delete the flow");
    let last = kernel.steered_to(&data(CLIENT_PORT));
    assert!(last != moved && last != pinned, "went to {last}");
    assert_eq!(kernel.counters().get(Counter::REPICKED), 2);
}
