//! `ebpf/src/route.rs`: after DNAT, straight to the pod interface (XDP_REDIRECT, or the peer
//! path's mark), what a router would not forward to the stack, and the cached FIB answers.
use super::*;

/// The next hop's MAC, then the pod interface's, as a resolved route caches them.
const POD_MACS: [u8; 12] = [2, 0, 0, 0, 0, 0xb, 2, 0, 0, 0, 0, 0xa];
const POD_IFINDEX: u32 = 77;
/// What the program caches after the FIB named a pod interface with this MTU.
fn route_to_pod(mtu: u16) -> NextHop {
    NextHop {
        macs: POD_MACS,
        ifindex: POD_IFINDEX,
        expires: u64::MAX,
        mtu,
        verdict: NextHopVerdict::REDIRECT,
        _pad: [0; 5],
    }
}
#[test]
fn a_flow_routed_to_a_pod_interface_is_transmitted_straight_into_it() {
    if !privileged("a_flow_routed_to_a_pod_interface_is_transmitted_straight_into_it") {
        return;
    }
    let mut kernel = kernel_with_service();
    let target = kernel.steered_to(&syn(CLIENT_PORT));
    kernel.set_nexthop(target, route_to_pod(1500));
    let packet = data(CLIENT_PORT);
    for _ in 0..3 {
        let (verdict, out) = kernel.run_xdp(&packet);
        assert_eq!(verdict, XDP_REDIRECT);
        let dnated = with_destination(&packet, pod_addr(target), POD_PORT);
        assert_eq!(out, forwarded(&dnated, POD_MACS));
        assert_checksums_verify(&out);
    }
    let counters = kernel.counters();
    assert_eq!(counters.get(Counter::REDIRECTED), 3);
    // The cached route answered: only the SYN asked the FIB.
    assert_eq!(counters.get(Counter::ROUTE_LOOKUPS), 1);
    assert_eq!(kernel.target_traffic(target).packets, 4);
}
/// The peer path (`podDelivery: peer`): the frame is rewritten as for a redirect (DNAT, the
/// next hop's addresses, TTL - 1) but passes up the stack, carrying a mark in its metadata that
/// names the pod interface; the uplink's TC ingress program acts on the mark after GRO.
#[test]
fn a_flow_routed_into_a_pods_namespace_passes_marked_for_the_peer_path() {
    if !privileged("a_flow_routed_into_a_pods_namespace_passes_marked_for_the_peer_path") {
        return;
    }
    let mut kernel = kernel_with_service();
    let target = kernel.steered_to(&syn(CLIENT_PORT));
    kernel.set_nexthop(
        target,
        NextHop {
            verdict: NextHopVerdict::PEER,
            ..route_to_pod(1500)
        },
    );
    let packet = data(CLIENT_PORT);
    let mut mark = PeerMark::MAGIC.to_ne_bytes().to_vec();
    mark.extend_from_slice(&POD_IFINDEX.to_ne_bytes());
    for _ in 0..3 {
        let (verdict, out) = kernel.run_xdp(&packet);
        assert_eq!(verdict, XDP_PASS);
        // The test run returns the metadata in front of the frame.
        let (metadata, frame) = out.split_at(std::mem::size_of::<PeerMark>());
        assert_eq!(metadata, mark.as_slice());
        let dnated = with_destination(&packet, pod_addr(target), POD_PORT);
        assert_eq!(frame, forwarded(&dnated, POD_MACS));
        assert_checksums_verify(frame);
    }
    let counters = kernel.counters();
    assert_eq!(counters.get(Counter::REDIRECTED), 3);
    assert_eq!(counters.get(Counter::ROUTE_LOOKUPS), 1);

    // What a router would not forward as is goes up unmarked and unrewritten, as on the
    // redirect path.
    let last_hop = with_ttl(&packet, 1);
    let (verdict, out) = kernel.run_xdp(&last_hop);
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(out.len(), last_hop.len(), "no metadata");
    assert_eq!(
        out[..12],
        last_hop[..12],
        "the addresses are the stack's business"
    );
    assert_eq!(out[ETH_HDR_LEN + 8], 1, "the TTL is left to the stack");
    assert_checksums_verify(&out);
    assert_eq!(kernel.counters().get(Counter::REDIRECTED), 3);
}
#[test]
fn what_a_router_would_not_forward_as_is_goes_to_the_stack() {
    if !privileged("what_a_router_would_not_forward_as_is_goes_to_the_stack") {
        return;
    }
    let mut kernel = kernel_with_service();
    let target = kernel.steered_to(&syn(CLIENT_PORT));
    let packet = data(CLIENT_PORT);

    // Larger than the pod interface's MTU: the stack fragments it or answers ICMP.
    kernel.set_nexthop(
        target,
        route_to_pod((packet.len() - ETH_HDR_LEN - 1) as u16),
    );
    let (verdict, out) = kernel.run_xdp(&packet);
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(out, with_destination(&packet, pod_addr(target), POD_PORT));

    // A TTL about to expire: the stack answers time exceeded.
    kernel.set_nexthop(target, route_to_pod(1500));
    let last_hop = with_ttl(&packet, 1);
    let (verdict, out) = kernel.run_xdp(&last_hop);
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(out[ETH_HDR_LEN + 8], 1, "the TTL is left to the stack");
    assert_checksums_verify(&out);
    assert_eq!(kernel.counters().get(Counter::REDIRECTED), 0);
}
#[test]
fn an_expired_route_and_every_new_flow_ask_the_fib_again() {
    if !privileged("an_expired_route_and_every_new_flow_ask_the_fib_again") {
        return;
    }
    let mut kernel = kernel_with_service();
    let target = kernel.steered_to(&syn(CLIENT_PORT));
    assert_eq!(kernel.counters().get(Counter::ROUTE_LOOKUPS), 1);
    // The test run has no ingress interface, so the FIB answers nothing usable: the answer
    // cached is "leave it to the stack".
    assert_eq!(kernel.nexthop(target).verdict, NextHopVerdict::STACK);

    // An expired route to a pod interface is looked up again, and replaced by the answer.
    kernel.set_nexthop(
        target,
        NextHop {
            expires: 0,
            ..route_to_pod(1500)
        },
    );
    let (verdict, _) = kernel.run_xdp(&data(CLIENT_PORT));
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(kernel.counters().get(Counter::ROUTE_LOOKUPS), 2);
    assert_eq!(kernel.nexthop(target).verdict, NextHopVerdict::STACK);

    // A new flow resolves afresh even over a valid cached route.
    kernel.set_nexthop(target, route_to_pod(1500));
    let mut port = CLIENT_PORT + 1;
    while kernel.steered_to(&syn(port)) != target {
        port += 1;
        assert!(
            port < CLIENT_PORT + 200,
            "no new flow reached target {target}"
        );
    }
    assert_eq!(
        kernel.counters().get(Counter::ROUTE_LOOKUPS),
        2 + u64::from(port - CLIENT_PORT)
    );
    assert_eq!(kernel.nexthop(target).verdict, NextHopVerdict::STACK);
}
