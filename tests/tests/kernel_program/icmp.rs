//! `ebpf/src/icmp.rs`: ICMP errors about a steered flow's reply, arriving from the client's
//! side, go on to the flow's target with their quote rewritten.
use super::*;

/// ICMP errors about a steered flow's reply arrive from the client's side addressed to the VIP
/// (fragmentation needed from a router on the way: the path MTU the pod must learn; port
/// unreachable from the client) and quote the reply as it left, from VIP:port. They go on to
/// the flow's target with the quote rewritten to the pod's address and port. Errors about no
/// flow pass untouched and count as not_tcp_udp.
#[test]
fn icmp_errors_about_a_reply_go_to_the_flows_target() {
    if !privileged("icmp_errors_about_a_reply_go_to_the_flows_target") {
        return;
    }
    const ROUTER: [u8; 4] = [10, 244, 9, 1];
    let kernel = kernel_with_service();
    let pinned = kernel.steered_to(&syn(CLIENT_PORT));
    let pod = pod_addr(pinned);
    let answered = tcp(
        pod,
        POD_PORT,
        CLIENT,
        CLIENT_PORT,
        PSH_ACK,
        b"HTTP/1.1 200 OK\r\n\r\n",
    );
    let (_, left) = kernel.run_tc(&answered);
    assert_eq!(source(&left), (VIP, VIP_PORT));

    let cases = [(ROUTER, 3, 4, [0, 0, 0x05, 0x78]), (CLIENT, 3, 3, [0; 4])];
    for (from, kind, code, rest) in cases {
        let error = icmp_error(from, VIP, kind, code, rest, &quote_of(&left));
        let (verdict, out) = kernel.run_xdp(&error);
        assert_eq!(verdict, XDP_PASS);
        let expected = icmp_error(from, pod, kind, code, rest, &quote_of(&answered));
        assert_eq!(out, expected, "ICMP {kind}/{code} from {from:?}");
        assert_eq!(checksum(&[&out[ETH_HDR_LEN..L4]]), 0, "outer IPv4 checksum");
        assert_eq!(checksum(&[&out[L4..]]), 0, "ICMP checksum");
    }
    assert_eq!(
        kernel.counters().get(Counter::REPLY_NAT),
        1 + cases.len() as u64
    );
    // A whole quote: the transport checksum is the pod's again, so the quote is the pod's
    // packet byte for byte.
    let error = icmp_error(
        ROUTER,
        VIP,
        3,
        4,
        [0, 0, 0x05, 0x78],
        &whole_quote_of(&left),
    );
    let (verdict, out) = kernel.run_xdp(&error);
    assert_eq!(verdict, XDP_PASS);
    let expected = icmp_error(
        ROUTER,
        pod,
        3,
        4,
        [0, 0, 0x05, 0x78],
        &whole_quote_of(&answered),
    );
    assert_eq!(out, expected);
    assert_eq!(
        kernel.counters().get(Counter::REPLY_NAT),
        2 + cases.len() as u64
    );

    let mut other_port = left.clone();
    other_port[L4..L4 + 2].copy_from_slice(&(VIP_PORT + 1).to_be_bytes());
    let untouched = [
        icmp_error(
            ROUTER,
            VIP,
            3,
            4,
            [0, 0, 0x05, 0x78],
            &quote_of(&other_port),
        ),
        icmp_error(CLIENT, VIP, 8, 0, [0, 1, 0, 1], &quote_of(&left)),
        icmp_error(ROUTER, VIP, 3, 4, [0; 4], &quote_of(&left)[..22]),
    ];
    let before = kernel.counters().get(Counter::NOT_TCP_UDP);
    for packet in &untouched {
        assert_eq!(kernel.run_xdp(packet), (XDP_PASS, packet.clone()));
    }
    let counters = kernel.counters();
    assert_eq!(
        counters.get(Counter::NOT_TCP_UDP) - before,
        untouched.len() as u64
    );
    assert_eq!(counters.get(Counter::REPLY_NAT), 2 + cases.len() as u64);
}
