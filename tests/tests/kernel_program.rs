//! Privileged tests of the XDP program (`ebpf/`), run in the kernel with
//! `BPF_PROG_TEST_RUN` on crafted packets; nothing is attached to an interface.
//!
//! They need root (loading BPF programs) and the object that
//! `cargo xtask build-ebpf` builds: `$TETHER_EBPF_OBJECT` when set, else
//! `target/ebpf/bpfel-unknown-none/{release,debug}/tether-ebpf`. Without root
//! they fail, unless `TETHER_SKIP_PRIVILEGED=1`, in which case they say so and pass.
use aya::maps::{HashMap, MapData, PerCpuArray};
use aya::programs::Xdp;
use aya::{Ebpf, TestRun, TestRunOptions};
use std::path::{Path, PathBuf};
use tether_common::{
    Counter, Protocol, ServiceEntry, ServiceKey, TargetEntry, TargetState, COUNTERS_MAP,
    COUNTER_COUNT, SERVICES_MAP, TARGETS_MAP, XDP_PROGRAM,
};

/// `XDP_PASS` from the kernel's `enum xdp_action`.
const XDP_PASS: u32 = 2;

const VIP: [u8; 4] = [10, 96, 0, 10];
const VIP_PORT: u16 = 80;
const CLIENT: [u8; 4] = [10, 244, 1, 7];
const CLIENT_PORT: u16 = 40_000;

// ---------------------------------------------------------------------------
// Harness

/// Whether privileged tests may run: true as root; otherwise panics, or prints
/// a skip line and returns false when `TETHER_SKIP_PRIVILEGED=1`.
fn privileged(test: &str) -> bool {
    let euid = effective_uid();
    if euid == Some(0) {
        return true;
    }
    if std::env::var("TETHER_SKIP_PRIVILEGED").as_deref() == Ok("1") {
        println!("SKIP {test}: needs root to load BPF programs (TETHER_SKIP_PRIVILEGED=1)");
        return false;
    }
    panic!(
        "{test} needs root to load BPF programs (effective uid {euid:?}); run the tests as root, \
         or set TETHER_SKIP_PRIVILEGED=1 to skip them"
    );
}

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uids = status.lines().find_map(|line| line.strip_prefix("Uid:"))?;
    uids.split_whitespace().nth(1)?.parse().ok()
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The object built by `cargo xtask build-ebpf`.
fn object_path() -> PathBuf {
    if let Some(path) = std::env::var_os("TETHER_EBPF_OBJECT") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "TETHER_EBPF_OBJECT={} does not exist; run `cargo xtask build-ebpf` (it prints the path)",
            path.display()
        );
        return path;
    }
    let candidates = ["release", "debug"].map(|profile| {
        workspace_root()
            .join("target/ebpf/bpfel-unknown-none")
            .join(profile)
            .join("tether-ebpf")
    });
    let path = candidates
        .iter()
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no kernel object at {} (or the debug one); run `cargo xtask build-ebpf` first, \
                 or point TETHER_EBPF_OBJECT at the object",
                candidates[0].display()
            )
        })
        .clone();
    warn_if_stale(&path);
    path
}

/// Prints a warning when a source of the object is newer than the object.
fn warn_if_stale(object: &Path) {
    let Ok(built) = std::fs::metadata(object).and_then(|meta| meta.modified()) else {
        return;
    };
    let root = workspace_root();
    for source in ["ebpf/src/main.rs", "ebpf/Cargo.toml", "common/src/lib.rs"] {
        let newer = std::fs::metadata(root.join(source))
            .and_then(|meta| meta.modified())
            .is_ok_and(|modified| modified > built);
        if newer {
            println!(
                "warning: {source} is newer than {}; run `cargo xtask build-ebpf` to rebuild it",
                object.display()
            );
        }
    }
}

/// One loaded copy of the program with its own (empty) maps.
struct Kernel {
    ebpf: Ebpf,
}

impl Kernel {
    fn load() -> Self {
        let path = object_path();
        let mut ebpf = Ebpf::load_file(&path)
            .unwrap_or_else(|error| panic!("loading {}: {error:?}", path.display()));
        let program: &mut Xdp = ebpf
            .program_mut(XDP_PROGRAM)
            .unwrap_or_else(|| panic!("{} has no program {XDP_PROGRAM}", path.display()))
            .try_into()
            .expect("tether_xdp is an XDP program");
        program
            .load()
            .unwrap_or_else(|error| panic!("the verifier rejected {XDP_PROGRAM}: {error:?}"));
        Self { ebpf }
    }

    fn services(&mut self) -> HashMap<&mut MapData, ServiceKey, ServiceEntry> {
        HashMap::try_from(self.ebpf.map_mut(SERVICES_MAP).expect("services map"))
            .expect("services map has the ServiceKey/ServiceEntry layout")
    }

    fn targets(&mut self) -> HashMap<&mut MapData, u32, TargetEntry> {
        HashMap::try_from(self.ebpf.map_mut(TARGETS_MAP).expect("targets map"))
            .expect("targets map has the u32/TargetEntry layout")
    }

    fn add_target(&mut self, id: u32, target: TargetEntry) {
        self.targets().insert(id, target, 0).expect("insert target");
    }

    fn add_service(&mut self, key: ServiceKey, entry: ServiceEntry) {
        self.services()
            .insert(key, entry, 0)
            .expect("insert service");
    }

    /// Runs the program once on `packet` and returns its verdict.
    fn run(&self, packet: &[u8]) -> u32 {
        let program: &Xdp = self
            .ebpf
            .program(XDP_PROGRAM)
            .expect("program")
            .try_into()
            .expect("XDP program");
        let mut out = vec![0u8; packet.len() + 256];
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        result.return_value
    }

    /// The counters, summed over CPUs.
    fn counters(&self) -> Counters {
        let map: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map(COUNTERS_MAP).expect("counters map"))
                .expect("counters map is a PerCpuArray<u64>");
        let mut values = [0u64; COUNTER_COUNT as usize];
        for (index, value) in values.iter_mut().enumerate() {
            *value = map
                .get(&(index as u32), 0)
                .expect("read counter")
                .iter()
                .sum();
        }
        Counters(values)
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Counters([u64; COUNTER_COUNT as usize]);

impl Counters {
    fn get(&self, counter: u32) -> u64 {
        self.0[counter as usize]
    }
}

/// The counters a test expects; the ones not named are zero.
fn expected(pairs: &[(u32, u64)]) -> Counters {
    let mut values = [0u64; COUNTER_COUNT as usize];
    for &(counter, value) in pairs {
        values[counter as usize] = value;
    }
    Counters(values)
}

/// A kernel with one service at VIP:VIP_PORT/TCP and two active targets.
fn kernel_with_service() -> Kernel {
    let mut kernel = Kernel::load();
    kernel.add_target(
        1,
        TargetEntry::ipv4([10, 244, 2, 11], 8080, 1, TargetState::ACTIVE),
    );
    kernel.add_target(
        2,
        TargetEntry::ipv4([10, 244, 3, 12], 8080, 1, TargetState::ACTIVE),
    );
    kernel.add_service(
        ServiceKey::ipv4(VIP, VIP_PORT, Protocol::TCP),
        ServiceEntry::new(100, &[1, 2], &[]).expect("fits"),
    );
    kernel
}

// ---------------------------------------------------------------------------
// Packet fixtures

const ETH_HDR_LEN: usize = 14;
const IPV4_HDR_LEN: usize = 20;

/// The internet checksum (RFC 1071) of `parts`, concatenated.
fn checksum(parts: &[&[u8]]) -> u16 {
    let bytes: Vec<u8> = parts.concat();
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Ethernet + IPv4 (no options) around the transport segment `l4`, checksums filled in.
fn ipv4_frame(src: [u8; 4], dst: [u8; 4], protocol: u8, l4: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(ETH_HDR_LEN + IPV4_HDR_LEN + l4.len());
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // destination MAC
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // source MAC
    frame.extend_from_slice(&0x0800u16.to_be_bytes()); // IPv4

    let total_len = (IPV4_HDR_LEN + l4.len()) as u16;
    let mut ip = [0u8; IPV4_HDR_LEN];
    ip[0] = 0x45; // version 4, 5 words
    ip[2..4].copy_from_slice(&total_len.to_be_bytes());
    ip[4..6].copy_from_slice(&1u16.to_be_bytes()); // id
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // don't fragment
    ip[8] = 64; // ttl
    ip[9] = protocol;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let ip_sum = checksum(&[&ip]);
    ip[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    frame.extend_from_slice(&ip);

    // Transport checksum over the pseudo-header and the segment.
    let mut segment = l4.to_vec();
    let pseudo = [
        &src[..],
        &dst[..],
        &[0, protocol],
        &(l4.len() as u16).to_be_bytes(),
    ]
    .concat();
    let sum_at = if protocol == Protocol::TCP { 16 } else { 6 };
    segment[sum_at..sum_at + 2].copy_from_slice(&[0, 0]);
    let l4_sum = checksum(&[&pseudo, &segment]);
    segment[sum_at..sum_at + 2].copy_from_slice(&l4_sum.to_be_bytes());
    frame.extend_from_slice(&segment);
    frame
}

/// A TCP SYN from `src:src_port` to `dst:dst_port`.
fn tcp_syn(src: [u8; 4], src_port: u16, dst: [u8; 4], dst_port: u16) -> Vec<u8> {
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&src_port.to_be_bytes());
    tcp[2..4].copy_from_slice(&dst_port.to_be_bytes());
    tcp[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes()); // sequence number
    tcp[12] = 5 << 4; // data offset: 5 words
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64_240u16.to_be_bytes()); // window
    ipv4_frame(src, dst, Protocol::TCP, &tcp)
}

/// A UDP datagram with a small payload.
fn udp(src: [u8; 4], src_port: u16, dst: [u8; 4], dst_port: u16) -> Vec<u8> {
    let payload = b"tether";
    let mut datagram = vec![0u8; 8];
    datagram[0..2].copy_from_slice(&src_port.to_be_bytes());
    datagram[2..4].copy_from_slice(&dst_port.to_be_bytes());
    datagram[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    datagram.extend_from_slice(payload);
    ipv4_frame(src, dst, Protocol::UDP, &datagram)
}

#[test]
fn packet_fixtures_are_well_formed() {
    // Not privileged: checks the helper the kernel tests rely on.
    let syn = tcp_syn(CLIENT, CLIENT_PORT, VIP, VIP_PORT);
    assert_eq!(syn.len(), ETH_HDR_LEN + IPV4_HDR_LEN + 20);
    assert_eq!(&syn[12..14], &[0x08, 0x00]);
    assert_eq!(syn[ETH_HDR_LEN], 0x45);
    assert_eq!(&syn[ETH_HDR_LEN + 16..ETH_HDR_LEN + 20], &VIP);
    assert_eq!(
        &syn[ETH_HDR_LEN + IPV4_HDR_LEN + 2..ETH_HDR_LEN + IPV4_HDR_LEN + 4],
        &VIP_PORT.to_be_bytes()
    );
    // A header with its checksum in place sums to zero.
    assert_eq!(
        checksum(&[&syn[ETH_HDR_LEN..ETH_HDR_LEN + IPV4_HDR_LEN]]),
        0
    );
    let pseudo = [
        &CLIENT[..],
        &VIP[..],
        &[0, Protocol::TCP],
        &20u16.to_be_bytes(),
    ]
    .concat();
    assert_eq!(checksum(&[&pseudo, &syn[ETH_HDR_LEN + IPV4_HDR_LEN..]]), 0);
}

// ---------------------------------------------------------------------------
// Kernel tests

#[test]
fn program_loads_with_the_shared_maps() {
    if !privileged("program_loads_with_the_shared_maps") {
        return;
    }
    let mut kernel = Kernel::load();
    // The typed views check key and value sizes against tether-common.
    kernel.services();
    kernel.targets();
    assert_eq!(kernel.counters(), expected(&[]));
}

#[test]
fn syn_to_a_service_is_a_hit_and_passes() {
    if !privileged("syn_to_a_service_is_a_hit_and_passes") {
        return;
    }
    let kernel = kernel_with_service();
    let verdict = kernel.run(&tcp_syn(CLIENT, CLIENT_PORT, VIP, VIP_PORT));
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(
        kernel.counters(),
        expected(&[
            (Counter::PACKETS, 1),
            (Counter::SERVICE_HITS, 1),
            (Counter::TARGET_SELECTED, 1),
        ])
    );

    // Every client port lands on one of the active targets.
    for port in 1..=20u16 {
        assert_eq!(
            kernel.run(&tcp_syn(CLIENT, CLIENT_PORT + port, VIP, VIP_PORT)),
            XDP_PASS
        );
    }
    let counters = kernel.counters();
    assert_eq!(counters.get(Counter::SERVICE_HITS), 21);
    assert_eq!(counters.get(Counter::TARGET_SELECTED), 21);
    assert_eq!(counters.get(Counter::NO_TARGET), 0);
}

#[test]
fn other_destinations_are_not_hits() {
    if !privileged("other_destinations_are_not_hits") {
        return;
    }
    let kernel = kernel_with_service();
    let misses = [
        // Another address, same port.
        tcp_syn(CLIENT, CLIENT_PORT, [10, 96, 0, 11], VIP_PORT),
        // The VIP, another port.
        tcp_syn(CLIENT, CLIENT_PORT, VIP, VIP_PORT + 1),
        // The VIP and port, but UDP while the service is TCP.
        udp(CLIENT, CLIENT_PORT, VIP, VIP_PORT),
        // The VIP's port as the source port does not count.
        tcp_syn(VIP, VIP_PORT, CLIENT, CLIENT_PORT),
    ];
    for packet in &misses {
        assert_eq!(kernel.run(packet), XDP_PASS);
    }
    assert_eq!(
        kernel.counters(),
        expected(&[(Counter::PACKETS, misses.len() as u64)])
    );
}

#[test]
fn udp_services_are_matched_too() {
    if !privileged("udp_services_are_matched_too") {
        return;
    }
    let mut kernel = kernel_with_service();
    kernel.add_service(
        ServiceKey::ipv4(VIP, 53, Protocol::UDP),
        ServiceEntry::new(101, &[2], &[]).expect("fits"),
    );
    assert_eq!(kernel.run(&udp(CLIENT, CLIENT_PORT, VIP, 53)), XDP_PASS);
    assert_eq!(
        kernel.counters(),
        expected(&[
            (Counter::PACKETS, 1),
            (Counter::SERVICE_HITS, 1),
            (Counter::TARGET_SELECTED, 1),
        ])
    );
}

#[test]
fn truncated_and_invalid_packets_are_parse_failures_and_pass() {
    if !privileged("truncated_and_invalid_packets_are_parse_failures_and_pass") {
        return;
    }
    let kernel = kernel_with_service();
    let syn = tcp_syn(CLIENT, CLIENT_PORT, VIP, VIP_PORT);

    // Ethernet header and half an IPv4 header.
    let half_ip = &syn[..ETH_HDR_LEN + 10];
    // A whole IPv4 header but only two bytes of TCP: no destination port.
    let no_ports = &syn[..ETH_HDR_LEN + IPV4_HDR_LEN + 2];
    // An IPv4 header length of 4 words (below the minimum of 5).
    let mut bad_ihl = syn.clone();
    bad_ihl[ETH_HDR_LEN] = 0x44;
    // An IPv4 header length of 15 words (60 bytes) in a packet too short for it.
    let mut long_ihl = syn.clone();
    long_ihl[ETH_HDR_LEN] = 0x4f;
    // An IPv4 ethertype carrying an IPv6 version nibble.
    let mut bad_version = syn.clone();
    bad_version[ETH_HDR_LEN] = 0x65;

    let malformed: [&[u8]; 5] = [half_ip, no_ports, &bad_ihl, &long_ihl, &bad_version];
    for packet in malformed {
        assert_eq!(kernel.run(packet), XDP_PASS, "packet {packet:02x?}");
    }
    assert_eq!(
        kernel.counters(),
        expected(&[
            (Counter::PACKETS, malformed.len() as u64),
            (Counter::PARSE_FAILURES, malformed.len() as u64),
        ])
    );
}

#[test]
fn other_traffic_is_not_handled_and_passes() {
    if !privileged("other_traffic_is_not_handled_and_passes") {
        return;
    }
    let kernel = kernel_with_service();
    let syn = tcp_syn(CLIENT, CLIENT_PORT, VIP, VIP_PORT);

    // An ARP ethertype (the rest of the bytes don't matter).
    let mut arp = syn.clone();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    // ICMP to the VIP.
    let icmp = ipv4_frame(CLIENT, VIP, 1, &[8, 0, 0, 0, 0, 1, 0, 1]);
    // A later fragment of a datagram to the VIP: no ports in it.
    let mut fragment = syn.clone();
    fragment[ETH_HDR_LEN + 6..ETH_HDR_LEN + 8].copy_from_slice(&0x0001u16.to_be_bytes());
    // Just an Ethernet header (the shortest frame BPF_PROG_TEST_RUN takes).
    let eth_only = &syn[..ETH_HDR_LEN];

    for packet in [&arp[..], &icmp, &fragment] {
        assert_eq!(kernel.run(packet), XDP_PASS);
    }
    assert_eq!(
        kernel.counters(),
        expected(&[(Counter::PACKETS, 3), (Counter::NOT_HANDLED, 3)])
    );
    // An Ethernet header alone is an IPv4 packet cut short.
    assert_eq!(kernel.run(eth_only), XDP_PASS);
    assert_eq!(kernel.counters().get(Counter::PARSE_FAILURES), 1);
}

#[test]
fn services_without_active_targets_count_no_target() {
    if !privileged("services_without_active_targets_count_no_target") {
        return;
    }
    let mut kernel = Kernel::load();
    // Target 3 drains: it keeps its flows but takes no new ones.
    kernel.add_target(
        3,
        TargetEntry::ipv4([10, 244, 4, 13], 8080, 1, TargetState::DRAINING),
    );
    kernel.add_service(
        ServiceKey::ipv4(VIP, VIP_PORT, Protocol::TCP),
        ServiceEntry::new(100, &[], &[3]).expect("fits"),
    );
    // Target 4 is listed as active but is missing from the targets map.
    kernel.add_service(
        ServiceKey::ipv4(VIP, 443, Protocol::TCP),
        ServiceEntry::new(102, &[4], &[]).expect("fits"),
    );
    assert_eq!(
        kernel.run(&tcp_syn(CLIENT, CLIENT_PORT, VIP, VIP_PORT)),
        XDP_PASS
    );
    assert_eq!(
        kernel.run(&tcp_syn(CLIENT, CLIENT_PORT, VIP, 443)),
        XDP_PASS
    );
    assert_eq!(
        kernel.counters(),
        expected(&[
            (Counter::PACKETS, 2),
            (Counter::SERVICE_HITS, 2),
            (Counter::NO_TARGET, 2),
        ])
    );
}
