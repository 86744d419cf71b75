//! `ebpf/src/parse.rs`: every packet the parser does not steer is counted in its class and
//! passed or dropped; random bytes never steer and never crash it.
use super::*;

#[test]
fn every_bad_packet_class_is_counted_and_passed_or_dropped() {
    if !privileged("every_bad_packet_class_is_counted_and_passed_or_dropped") {
        return;
    }
    let kernel = kernel_with_service();
    let good = data(CLIENT_PORT);
    let mutate = |change: &dyn Fn(&mut Vec<u8>)| {
        let mut packet = good.clone();
        change(&mut packet);
        packet
    };
    // Each is addressed to the service, so a parser slip would show as a DNAT.
    let cases: Vec<(&str, Vec<u8>, u32, u32)> = vec![
        // Truncated: dropped.
        (
            "ethernet header only",
            good[..ETH_HDR_LEN].to_vec(),
            Counter::TRUNCATED,
            XDP_DROP,
        ),
        (
            "half an IPv4 header",
            good[..ETH_HDR_LEN + 10].to_vec(),
            Counter::TRUNCATED,
            XDP_DROP,
        ),
        (
            "no ports",
            good[..L4 + 2].to_vec(),
            Counter::TRUNCATED,
            XDP_DROP,
        ),
        (
            "half a TCP header",
            good[..L4 + 12].to_vec(),
            Counter::TRUNCATED,
            XDP_DROP,
        ),
        (
            "frame shorter than the total length",
            good[..good.len() - 4].to_vec(),
            Counter::TRUNCATED,
            XDP_DROP,
        ),
        (
            "datagram shorter than a TCP header",
            mutate(&|p| p[ETH_HDR_LEN + 2..ETH_HDR_LEN + 4].copy_from_slice(&30u16.to_be_bytes())),
            Counter::TRUNCATED,
            XDP_DROP,
        ),
        (
            "UDP header cut",
            udp(CLIENT, 5353, VIP, 53, true)[..L4 + 6].to_vec(),
            Counter::TRUNCATED,
            XDP_DROP,
        ),
        // Garbage: dropped.
        (
            "IPv6 version under the IPv4 ethertype",
            mutate(&|p| p[ETH_HDR_LEN] = 0x65),
            Counter::GARBAGE,
            XDP_DROP,
        ),
        (
            "header length below 20 bytes",
            mutate(&|p| p[ETH_HDR_LEN] = 0x44),
            Counter::GARBAGE,
            XDP_DROP,
        ),
        (
            "total length below the header length",
            mutate(&|p| p[ETH_HDR_LEN + 2..ETH_HDR_LEN + 4].copy_from_slice(&12u16.to_be_bytes())),
            Counter::GARBAGE,
            XDP_DROP,
        ),
        (
            "TCP data offset below 5",
            mutate(&|p| p[L4 + 12] = 0x40),
            Counter::GARBAGE,
            XDP_DROP,
        ),
        // Fragments: passed untouched.
        (
            "first fragment (more fragments)",
            mutate(&|p| {
                p[ETH_HDR_LEN + 6..ETH_HDR_LEN + 8].copy_from_slice(&0x2000u16.to_be_bytes())
            }),
            Counter::FRAGMENTED,
            XDP_PASS,
        ),
        (
            "later fragment (offset)",
            mutate(&|p| {
                p[ETH_HDR_LEN + 6..ETH_HDR_LEN + 8].copy_from_slice(&0x0003u16.to_be_bytes())
            }),
            Counter::FRAGMENTED,
            XDP_PASS,
        ),
        // IP options: passed untouched.
        (
            "IPv4 options",
            ipv4_frame_with(CLIENT, VIP, Protocol::TCP, &[1, 1, 1, 0], &good[L4..]),
            Counter::IP_OPTIONS,
            XDP_PASS,
        ),
        // Neither TCP nor UDP: passed untouched.
        (
            "ICMP to the VIP",
            ipv4_frame(CLIENT, VIP, 1, &[8, 0, 0, 0, 0, 1, 0, 1]),
            Counter::NOT_TCP_UDP,
            XDP_PASS,
        ),
        (
            "SCTP to the VIP",
            ipv4_frame(CLIENT, VIP, 132, &good[L4..]),
            Counter::NOT_TCP_UDP,
            XDP_PASS,
        ),
        // Not IPv4 at all: passed untouched.
        (
            "ARP",
            mutate(&|p| p[12..14].copy_from_slice(&0x0806u16.to_be_bytes())),
            Counter::NOT_IPV4,
            XDP_PASS,
        ),
        (
            "IPv6",
            mutate(&|p| p[12..14].copy_from_slice(&0x86ddu16.to_be_bytes())),
            Counter::NOT_IPV4,
            XDP_PASS,
        ),
        (
            "VLAN tag",
            mutate(&|p| p[12..14].copy_from_slice(&0x8100u16.to_be_bytes())),
            Counter::NOT_IPV4,
            XDP_PASS,
        ),
    ];
    let mut tally = [0u64; COUNTER_COUNT as usize];
    for (name, packet, counter, verdict) in &cases {
        let before = kernel.counters();
        let (got, out) = kernel.run_xdp(packet);
        assert_eq!(got, *verdict, "{name}: verdict");
        if got == XDP_PASS {
            assert_eq!(&out, packet, "{name}: passed untouched");
        }
        let after = kernel.counters();
        assert_eq!(
            after.get(*counter) - before.get(*counter),
            1,
            "{name}: counted as {}",
            COUNTER_NAMES[*counter as usize]
        );
        tally[*counter as usize] += 1;
    }
    assert_eq!(kernel.counters(), Counters(tally), "nothing else counted");
    assert!(kernel.flows().keys().next().is_none(), "no flow recorded");
}
#[test]
fn random_garbage_never_steers_or_crashes() {
    if !privileged("random_garbage_never_steers_or_crashes") {
        return;
    }
    let kernel = kernel_with_service();
    // xorshift: deterministic, no dependency.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let good = data(CLIENT_PORT);
    let runs = 2000;
    for run in 0..runs {
        let len = ETH_HDR_LEN + (next() % 100) as usize;
        let mut packet: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if run % 2 == 0 {
            // Half of them look like IPv4 to the VIP with random damage after the addresses.
            let keep = good.len().min(len).min(ETH_HDR_LEN + 20);
            packet[..keep].copy_from_slice(&good[..keep]);
        }
        let (verdict, out) = kernel.run_xdp(&packet);
        assert!(verdict == XDP_PASS || verdict == XDP_DROP, "{packet:02x?}");
        if verdict == XDP_PASS && kernel.flows().keys().next().is_none() {
            assert_eq!(out, packet, "untouched");
        }
    }
    let counters = kernel.counters();
    let service = kernel.service_traffic(SERVICE);
    let flow_hits = service.packets - service.new_flows - counters.get(Counter::REPICKED);
    let classified: u64 = flow_hits
        + [
            Counter::NO_TARGET,
            Counter::NOT_IPV4,
            Counter::TRUNCATED,
            Counter::GARBAGE,
            Counter::FRAGMENTED,
            Counter::IP_OPTIONS,
            Counter::NOT_TCP_UDP,
            Counter::NOT_SERVICE,
            Counter::NEW_FLOWS,
            Counter::REPICKED,
        ]
        .iter()
        .map(|&c| counters.get(c))
        .sum::<u64>();
    assert_eq!(classified, runs, "every packet counted once: {counters:?}");
}
