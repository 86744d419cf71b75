//! `ebpf/src/reply.rs`: the TC programs of the reply direction give replies (TCP, UDP) and
//! the ICMP errors about steered flows the VIP back.
use super::*;

#[test]
fn replies_get_the_vip_back_as_their_source() {
    if !privileged("replies_get_the_vip_back_as_their_source") {
        return;
    }
    let kernel = kernel_with_service();
    let pinned = kernel.steered_to(&syn(CLIENT_PORT));

    let syn_ack = tcp(
        pod_addr(pinned),
        POD_PORT,
        CLIENT,
        CLIENT_PORT,
        SYN | ACK,
        &[],
    );
    let (verdict, out) = kernel.run_tc(&syn_ack);
    assert_eq!(verdict, TC_NEXT);
    assert_eq!(out, with_source(&syn_ack, VIP, VIP_PORT));
    assert_checksums_verify(&out);

    let payload = tcp(
        pod_addr(pinned),
        POD_PORT,
        CLIENT,
        CLIENT_PORT,
        PSH_ACK,
        b"HTTP/1.1 200 OK\r\n\r\n",
    );
    let (_, out) = kernel.run_tc(&payload);
    assert_eq!(out, with_source(&payload, VIP, VIP_PORT));

    // Traffic of no steered flow passes untouched: another client port, another pod, a
    // direct connection to the pod, and the other direction.
    let untouched = [
        tcp(
            pod_addr(pinned),
            POD_PORT,
            CLIENT,
            CLIENT_PORT + 1,
            ACK,
            &[],
        ),
        tcp(pod_addr(99), POD_PORT, CLIENT, CLIENT_PORT, ACK, &[]),
        tcp(pod_addr(pinned), 22, CLIENT, CLIENT_PORT, ACK, &[]),
        data(CLIENT_PORT),
        ipv4_frame(pod_addr(pinned), CLIENT, 1, &[0, 0, 0, 0, 0, 1, 0, 1]),
    ];
    for packet in &untouched {
        assert_eq!(kernel.run_tc(packet), (TC_NEXT, packet.clone()));
    }
    let counters = kernel.counters();
    assert_eq!(
        counters.get(Counter::REPLY_PACKETS),
        2 + untouched.len() as u64
    );
    assert_eq!(counters.get(Counter::REPLY_NAT), 2);
    assert_eq!(counters.get(Counter::REPLY_ERRORS), 0);
}
#[test]
fn udp_replies_get_the_vip_back_with_or_without_a_checksum() {
    if !privileged("udp_replies_get_the_vip_back_with_or_without_a_checksum") {
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
    let (_, out) = kernel.run_xdp(&udp(CLIENT, 5353, VIP, 53, true));
    let (pod, _) = destination(&out);
    for with_checksum in [true, false] {
        let answer = udp(pod, POD_PORT, CLIENT, 5353, with_checksum);
        let (verdict, out) = kernel.run_tc(&answer);
        assert_eq!(verdict, TC_NEXT);
        assert_eq!(
            out,
            with_source(&answer, VIP, 53),
            "checksum {with_checksum}"
        );
        assert_checksums_verify(&out);
    }
}
const NODE: [u8; 4] = [10, 244, 1, 1];
/// ICMP errors about a steered flow, on their way to its client, quote the client's packet as
/// the pod got it (to the pod): the quote gets the VIP and service port back, with a valid
/// header checksum, and the error its source the VIP when the pod sent it (a node's own
/// error keeps the node's address). Errors about other flows and other ICMP pass untouched.
#[test]
fn icmp_errors_about_a_steered_flow_quote_the_vip() {
    if !privileged("icmp_errors_about_a_steered_flow_quote_the_vip") {
        return;
    }
    let kernel = kernel_with_service();
    let pinned = kernel.steered_to(&syn(CLIENT_PORT));
    let pod = pod_addr(pinned);
    let sent = data(CLIENT_PORT);
    let (_, delivered) = kernel.run_xdp(&sent);
    assert_eq!(destination(&delivered), (pod, POD_PORT));

    // Port unreachable from the pod; fragmentation needed (MTU 1400) from the node.
    let cases = [
        (pod, 3, 3, [0; 4], VIP),
        (NODE, 3, 4, [0, 0, 0x05, 0x78], NODE),
        (NODE, 11, 0, [0; 4], NODE),
    ];
    for (from, kind, code, rest, expected_source) in cases {
        let error = icmp_error(from, CLIENT, kind, code, rest, &quote_of(&delivered));
        let (verdict, out) = kernel.run_tc(&error);
        assert_eq!(verdict, TC_NEXT);
        let expected = icmp_error(expected_source, CLIENT, kind, code, rest, &quote_of(&sent));
        assert_eq!(out, expected, "ICMP {kind}/{code} from {from:?}");
        assert_eq!(checksum(&[&out[ETH_HDR_LEN..L4]]), 0, "outer IPv4 checksum");
        assert_eq!(checksum(&[&out[L4..]]), 0, "ICMP checksum");
        assert_eq!(
            checksum(&[&out[L4 + 8..L4 + 28]]),
            0,
            "quoted IPv4 checksum"
        );
    }
    let counters = kernel.counters();
    assert_eq!(counters.get(Counter::REPLY_NAT), 3);

    // A quote long enough to hold the transport checksum gets that back too: the client finds
    // its packet in the quote byte for byte, for TCP and for UDP with and without a checksum.
    let mut kernel = kernel;
    kernel.add_service(
        ServiceKey::ipv4(VIP, 53, Protocol::UDP),
        ServiceEntry {
            service_id: SERVICE,
            ..service_entry(3, 0, Hashing::FIVE_TUPLE)
        },
    );
    let datagrams = [
        udp(CLIENT, 5353, VIP, 53, true),
        udp(CLIENT, 5354, VIP, 53, false),
    ];
    for sent in [sent.clone()].iter().chain(&datagrams) {
        let (_, delivered) = kernel.run_xdp(sent);
        let (pod, _) = destination(&delivered);
        let error = icmp_error(pod, CLIENT, 3, 3, [0; 4], &whole_quote_of(&delivered));
        let (verdict, out) = kernel.run_tc(&error);
        assert_eq!(verdict, TC_NEXT);
        let expected = icmp_error(VIP, CLIENT, 3, 3, [0; 4], &whole_quote_of(sent));
        assert_eq!(out, expected, "a whole quote of {sent:?}");
        assert_eq!(checksum(&[&out[L4..]]), 0, "ICMP checksum");
    }
    let counters = kernel.counters();
    assert_eq!(counters.get(Counter::REPLY_NAT), 6);

    // Untouched: an error about another client port, about a flow to another pod, an echo
    // request, a quote cut short.
    let other_port = with_destination(&delivered, pod, POD_PORT + 1);
    let mut other_client = delivered.clone();
    other_client[L4..L4 + 2].copy_from_slice(&(CLIENT_PORT + 7).to_be_bytes());
    let untouched = [
        icmp_error(pod, CLIENT, 3, 3, [0; 4], &quote_of(&other_port)),
        icmp_error(pod, CLIENT, 3, 3, [0; 4], &quote_of(&other_client)),
        icmp_error(pod, CLIENT, 8, 0, [0, 1, 0, 1], &quote_of(&delivered)),
        icmp_error(pod, CLIENT, 3, 3, [0; 4], &quote_of(&delivered)[..22]),
    ];
    for packet in &untouched {
        assert_eq!(kernel.run_tc(packet), (TC_NEXT, packet.clone()));
    }
    let counters = kernel.counters();
    assert_eq!(counters.get(Counter::REPLY_NAT), 6);
    assert_eq!(counters.get(Counter::REPLY_ERRORS), 0);
}
