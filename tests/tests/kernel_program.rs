//! Tests of the kernel programs (`ebpf/`) run with `BPF_PROG_TEST_RUN` on crafted packets,
//! Katran style: each fixture goes in, and the test checks the verdict, the packet that comes
//! out (rewritten addresses and ports, checksums that verify), the flow tables and the
//! counters. Nothing is attached to an interface; every test loads private copies of the maps.
//!
//! They need root (loading BPF programs) and the object that `cargo xtask build-ebpf` builds:
//! `$TETHER_EBPF_OBJECT` when set, else `target/ebpf/bpfel-unknown-none/{release,debug}/tether-ebpf`.
//! Without root they fail, unless `TETHER_SKIP_PRIVILEGED=1`, in which case they say so and pass.
//!
//! The per-packet cost (ns/packet against the empty program) is measured by
//! `cargo xtask bench l4`, not here: benchmarks live in `cargo xtask bench`, never in timed tests.
//! `cost_fixtures_take_their_paths` checks the fixtures that bench times do what they are named
//! after.
use aya::maps::{Array, HashMap, Map, MapData, MapType, PerCpuArray, PerCpuValues};
use aya::programs::{SchedClassifier, Xdp};
use aya::{Ebpf, TestRun, TestRunOptions};
use std::path::{Path, PathBuf};
use tether_common::{
    client_hash_v4, flow_hash_v4, maglev_slot, port_bit, Counter, FlowEntry, FlowKeyV4, Hashing,
    MapKind, NextHop, NextHopVerdict, PeerMark, Protocol, ReplyEntryV4, ServiceEntry, ServiceKey,
    TargetEntry, TargetState, TrafficCounters, COUNTERS_MAP, COUNTER_COUNT, COUNTER_NAMES,
    EMPTY_XDP_PROGRAM, MAGLEV_MAP, MAGLEV_SIZE, MAP_SPECS, NEXTHOPS_MAP, NO_TARGET, PORTS_MAP,
    SERVICES_MAP, SERVICE_COUNTERS_MAP, TARGETS_MAP, TARGET_COUNTERS_MAP, TCP_FLOWS4_MAP,
    TCP_REPLIES4_MAP, TC_PROGRAM, UDP_FLOWS4_MAP, UDP_REPLIES4_MAP, XDP_PROGRAM,
};
use tether_tests::netns::privileged;

/// `enum xdp_action`.
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;
/// `TC_ACT_UNSPEC` (TCX_NEXT) as the u32 the test run reports.
const TC_NEXT: u32 = u32::MAX;

const VIP: [u8; 4] = [10, 96, 0, 10];
const VIP_PORT: u16 = 80;
const CLIENT: [u8; 4] = [10, 244, 1, 7];
const CLIENT_PORT: u16 = 40_000;

/// Service 3 at VIP:80/TCP with targets 10 (A), 11 (B), 12 (C).
const SERVICE: u32 = 3;
const A: u32 = 10;
const B: u32 = 11;
const C: u32 = 12;
const POD_PORT: u16 = 8080;

fn pod_addr(id: u32) -> [u8; 4] {
    [10, 244, 2, id as u8]
}

// ---------------------------------------------------------------------------------------------
// Harness

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
    let sources = std::fs::read_dir(root.join("ebpf/src"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .chain([root.join("ebpf/Cargo.toml"), root.join("common/src/lib.rs")]);
    for source in sources {
        let newer = std::fs::metadata(&source)
            .and_then(|meta| meta.modified())
            .is_ok_and(|modified| modified > built);
        if newer {
            println!(
                "warning: {} is newer than {}; run `cargo xtask build-ebpf` to rebuild it",
                source.display(),
                object.display()
            );
        }
    }
}

/// One loaded copy of the programs with their own (empty) maps.
struct Kernel {
    ebpf: Ebpf,
}

impl Kernel {
    fn load() -> Self {
        let path = object_path();
        let mut ebpf = Ebpf::load_file(&path)
            .unwrap_or_else(|error| panic!("loading {}: {error:?}", path.display()));
        for name in [XDP_PROGRAM, EMPTY_XDP_PROGRAM] {
            let program: &mut Xdp = ebpf
                .program_mut(name)
                .unwrap_or_else(|| panic!("{} has no program {name}", path.display()))
                .try_into()
                .expect("an XDP program");
            program
                .load()
                .unwrap_or_else(|error| panic!("the verifier rejected {name}: {error:?}"));
        }
        let program: &mut SchedClassifier = ebpf
            .program_mut(TC_PROGRAM)
            .unwrap_or_else(|| panic!("{} has no program {TC_PROGRAM}", path.display()))
            .try_into()
            .expect("a TC program");
        program
            .load()
            .unwrap_or_else(|error| panic!("the verifier rejected {TC_PROGRAM}: {error:?}"));
        Self { ebpf }
    }

    fn services(&mut self) -> HashMap<&mut MapData, ServiceKey, ServiceEntry> {
        HashMap::try_from(self.ebpf.map_mut(SERVICES_MAP).expect("services map"))
            .expect("services map has the ServiceKey/ServiceEntry layout")
    }

    fn targets(&mut self) -> Array<&mut MapData, TargetEntry> {
        Array::try_from(self.ebpf.map_mut(TARGETS_MAP).expect("targets map"))
            .expect("targets map is an Array<TargetEntry>")
    }

    fn maglev(&mut self) -> Array<&mut MapData, u32> {
        Array::try_from(self.ebpf.map_mut(MAGLEV_MAP).expect("maglev map"))
            .expect("maglev map is an Array<u32>")
    }

    /// The TCP flow table.
    fn flows(&self) -> HashMap<&MapData, FlowKeyV4, FlowEntry> {
        self.flow_table(TCP_FLOWS4_MAP)
    }

    /// The TCP flow table, writable.
    fn flow_table_mut(&mut self) -> HashMap<&mut MapData, FlowKeyV4, FlowEntry> {
        HashMap::try_from(self.ebpf.map_mut(TCP_FLOWS4_MAP).expect("flows map"))
            .expect("flows map has the FlowKeyV4/FlowEntry layout")
    }

    fn flow_table(&self, name: &str) -> HashMap<&MapData, FlowKeyV4, FlowEntry> {
        HashMap::try_from(self.ebpf.map(name).expect("flows map"))
            .expect("flows map has the FlowKeyV4/FlowEntry layout")
    }

    /// The TCP reply table.
    fn replies(&self) -> HashMap<&MapData, FlowKeyV4, ReplyEntryV4> {
        self.reply_table(TCP_REPLIES4_MAP)
    }

    fn reply_table(&self, name: &str) -> HashMap<&MapData, FlowKeyV4, ReplyEntryV4> {
        HashMap::try_from(self.ebpf.map(name).expect("replies map"))
            .expect("replies map has the FlowKeyV4/ReplyEntryV4 layout")
    }

    fn nexthops(&mut self) -> Array<&mut MapData, NextHop> {
        Array::try_from(self.ebpf.map_mut(NEXTHOPS_MAP).expect("nexthops map"))
            .expect("nexthops map is an Array<NextHop>")
    }

    fn set_nexthop(&mut self, id: u32, hop: NextHop) {
        self.nexthops().set(id, hop, 0).expect("set next hop");
    }

    fn nexthop(&mut self, id: u32) -> NextHop {
        self.nexthops().get(&id, 0).expect("read next hop")
    }

    fn set_target(&mut self, id: u32, target: TargetEntry) {
        self.targets().set(id, target, 0).expect("set target");
    }

    fn set_state(&mut self, id: u32, state: u8) {
        let mut target = self.targets().get(&id, 0).expect("read target");
        target.state = state;
        self.set_target(id, target);
    }

    fn remove_target(&mut self, id: u32) {
        self.set_target(id, TargetEntry::UNUSED);
    }

    /// Adds (or replaces) a service, and marks its port as a service port as the agent does.
    fn add_service(&mut self, key: ServiceKey, entry: ServiceEntry) {
        self.services()
            .insert(key, entry, 0)
            .expect("insert service");
        let (word, bit) = port_bit(key.protocol, key.port());
        let mut ports: Array<&mut MapData, u64> =
            Array::try_from(self.ebpf.map_mut(PORTS_MAP).expect("ports map"))
                .expect("ports map is an Array<u64>");
        let bits = ports.get(&word, 0).expect("read port bits");
        ports.set(word, bits | bit, 0).expect("set port bit");
    }

    /// Fills the service's Maglev row with `targets` in turn (the kernel does not care how the
    /// agent spread them; the tests want to know where each slot points).
    fn set_row(&mut self, service_id: u32, targets: &[u32]) {
        let mut maglev = self.maglev();
        for slot in 0..MAGLEV_SIZE {
            let id = if targets.is_empty() {
                NO_TARGET
            } else {
                targets[slot as usize % targets.len()]
            };
            maglev
                .set(service_id * MAGLEV_SIZE + slot, id, 0)
                .expect("set maglev slot");
        }
    }

    fn slot(&mut self, service_id: u32, slot: u32) -> u32 {
        self.maglev()
            .get(&(service_id * MAGLEV_SIZE + slot), 0)
            .expect("read maglev slot")
    }

    fn run_xdp(&self, packet: &[u8]) -> (u32, Vec<u8>) {
        let program: &Xdp = self
            .ebpf
            .program(XDP_PROGRAM)
            .expect("program")
            .try_into()
            .expect("XDP program");
        run_once(program, packet)
    }

    fn run_tc(&self, packet: &[u8]) -> (u32, Vec<u8>) {
        let program: &SchedClassifier = self
            .ebpf
            .program(TC_PROGRAM)
            .expect("program")
            .try_into()
            .expect("TC program");
        run_once(program, packet)
    }

    /// Runs `program` `repeat` times on `packet` (the kernel reuses the buffer between runs)
    /// and returns the verdict of the last run.
    fn run_repeated(&self, program: &str, packet: &[u8], repeat: u32) -> u32 {
        let program: &Xdp = self
            .ebpf
            .program(program)
            .expect("program")
            .try_into()
            .expect("XDP program");
        let mut out = vec![0u8; packet.len() + 256];
        program
            .test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut out),
                repeat,
                ..TestRunOptions::default()
            })
            .expect("BPF_PROG_TEST_RUN")
            .return_value
    }

    /// Runs `packet` and returns the target it was steered to (from its new destination).
    fn steered_to(&self, packet: &[u8]) -> u32 {
        let (verdict, out) = self.run_xdp(packet);
        assert_eq!(verdict, XDP_PASS, "steered packets pass to the stack");
        let (addr, port) = destination(&out);
        assert_eq!(port, POD_PORT, "destination port rewritten to the target's");
        assert_checksums_verify(&out);
        u32::from(addr[3])
    }

    /// The global counters, summed over CPUs.
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

    fn traffic(&self, map: &str, id: u32) -> TrafficCounters {
        let map: PerCpuArray<&MapData, TrafficCounters> =
            PerCpuArray::try_from(self.ebpf.map(map).expect("traffic counters map"))
                .expect("a PerCpuArray<TrafficCounters>");
        let values: PerCpuValues<TrafficCounters> = map.get(&id, 0).expect("read counters");
        values
            .iter()
            .fold(TrafficCounters::default(), |sum, v| sum.plus(*v))
    }

    fn service_traffic(&self, id: u32) -> TrafficCounters {
        self.traffic(SERVICE_COUNTERS_MAP, id)
    }

    fn target_traffic(&self, id: u32) -> TrafficCounters {
        self.traffic(TARGET_COUNTERS_MAP, id)
    }
}

/// One test run of `program` on `packet`: the verdict and the packet that came out.
fn run_once<P>(program: &P, packet: &[u8]) -> (u32, Vec<u8>)
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = aya::TestRunResult>,
{
    let mut out = vec![0u8; packet.len() + 256];
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}

#[derive(PartialEq, Eq)]
struct Counters([u64; COUNTER_COUNT as usize]);

impl Counters {
    fn get(&self, counter: u32) -> u64 {
        self.0[counter as usize]
    }
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nonzero: Vec<String> = self
            .0
            .iter()
            .enumerate()
            .filter(|(_, v)| **v != 0)
            .map(|(i, v)| format!("{}={v}", COUNTER_NAMES[i]))
            .collect();
        write!(f, "{{{}}}", nonzero.join(", "))
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

fn service_key() -> ServiceKey {
    ServiceKey::ipv4(VIP, VIP_PORT, Protocol::TCP)
}

fn target(id: u32, state: u8) -> TargetEntry {
    TargetEntry::ipv4(SERVICE, pod_addr(id), POD_PORT, 1, state)
}

/// A kernel with service 3 at VIP:80/TCP over active targets A, B and C.
fn kernel_with_service() -> Kernel {
    let mut kernel = Kernel::load();
    for id in [A, B, C] {
        kernel.set_target(id, target(id, TargetState::ACTIVE));
    }
    kernel.set_row(SERVICE, &[A, B, C]);
    kernel.add_service(service_key(), service_entry(3, 0, Hashing::FIVE_TUPLE));
    kernel
}

fn service_entry(active: u16, draining: u16, hashing: u8) -> ServiceEntry {
    let mut entry = ServiceEntry::new(SERVICE, "default/web", hashing);
    entry.active_targets = active;
    entry.draining_targets = draining;
    entry
}

/// The target the Maglev row of [`kernel_with_service`] gives a new flow from `port`.
fn maglev_pick(kernel: &mut Kernel, port: u16) -> u32 {
    let key = FlowKeyV4::new(CLIENT, port, VIP, VIP_PORT);
    kernel.slot(SERVICE, maglev_slot(flow_hash_v4(&key, Protocol::TCP), 0))
}

// ---------------------------------------------------------------------------------------------
// Packet fixtures

const ETH_HDR_LEN: usize = 14;
const IPV4_HDR_LEN: usize = 20;
const L4: usize = ETH_HDR_LEN + IPV4_HDR_LEN;

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const PSH_ACK: u8 = 0x18;

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

/// Ethernet + IPv4 (with `options`, a multiple of 4 bytes) around the transport segment `l4`,
/// checksums filled in.
fn ipv4_frame_with(src: [u8; 4], dst: [u8; 4], protocol: u8, options: &[u8], l4: &[u8]) -> Vec<u8> {
    let ip_len = IPV4_HDR_LEN + options.len();
    let mut frame = Vec::with_capacity(ETH_HDR_LEN + ip_len + l4.len());
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // destination MAC
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // source MAC
    frame.extend_from_slice(&0x0800u16.to_be_bytes()); // IPv4

    let total_len = (ip_len + l4.len()) as u16;
    let mut ip = vec![0u8; ip_len];
    ip[0] = 0x40 | (ip_len / 4) as u8;
    ip[2..4].copy_from_slice(&total_len.to_be_bytes());
    ip[4..6].copy_from_slice(&1u16.to_be_bytes()); // id
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // don't fragment
    ip[8] = 64; // ttl
    ip[9] = protocol;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    ip[20..].copy_from_slice(options);
    let ip_sum = checksum(&[&ip]);
    ip[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    frame.extend_from_slice(&ip);

    let mut segment = l4.to_vec();
    let sum_at = match protocol {
        Protocol::TCP => Some(16),
        Protocol::UDP => Some(6),
        _ => None,
    };
    if let Some(at) = sum_at.filter(|at| segment.len() >= at + 2) {
        let pseudo = [
            &src[..],
            &dst[..],
            &[0, protocol],
            &(l4.len() as u16).to_be_bytes(),
        ]
        .concat();
        segment[at..at + 2].copy_from_slice(&[0, 0]);
        let l4_sum = checksum(&[&pseudo, &segment]);
        segment[at..at + 2].copy_from_slice(&l4_sum.to_be_bytes());
    }
    frame.extend_from_slice(&segment);
    frame
}

fn ipv4_frame(src: [u8; 4], dst: [u8; 4], protocol: u8, l4: &[u8]) -> Vec<u8> {
    ipv4_frame_with(src, dst, protocol, &[], l4)
}

/// A TCP segment with `flags` and `payload`.
fn tcp(
    src: [u8; 4],
    src_port: u16,
    dst: [u8; 4],
    dst_port: u16,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut segment = vec![0u8; 20];
    segment[0..2].copy_from_slice(&src_port.to_be_bytes());
    segment[2..4].copy_from_slice(&dst_port.to_be_bytes());
    segment[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes()); // sequence number
    segment[12] = 5 << 4; // data offset: 5 words
    segment[13] = flags;
    segment[14..16].copy_from_slice(&64_240u16.to_be_bytes()); // window
    segment.extend_from_slice(payload);
    ipv4_frame(src, dst, Protocol::TCP, &segment)
}

fn syn(port: u16) -> Vec<u8> {
    tcp(CLIENT, port, VIP, VIP_PORT, SYN, &[])
}

fn data(port: u16) -> Vec<u8> {
    tcp(
        CLIENT,
        port,
        VIP,
        VIP_PORT,
        PSH_ACK,
        b"GET / HTTP/1.1\r\n\r\n",
    )
}

/// A UDP datagram; `with_checksum: false` sends it with a zero ("none") checksum.
fn udp(src: [u8; 4], src_port: u16, dst: [u8; 4], dst_port: u16, with_checksum: bool) -> Vec<u8> {
    let payload = b"tether";
    let mut datagram = vec![0u8; 8];
    datagram[0..2].copy_from_slice(&src_port.to_be_bytes());
    datagram[2..4].copy_from_slice(&dst_port.to_be_bytes());
    datagram[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    datagram.extend_from_slice(payload);
    let mut frame = ipv4_frame(src, dst, Protocol::UDP, &datagram);
    if !with_checksum {
        frame[L4 + 6..L4 + 8].copy_from_slice(&[0, 0]);
    }
    frame
}

fn source(frame: &[u8]) -> ([u8; 4], u16) {
    let addr = frame[ETH_HDR_LEN + 12..ETH_HDR_LEN + 16]
        .try_into()
        .expect("4 bytes");
    (addr, u16::from_be_bytes([frame[L4], frame[L4 + 1]]))
}

fn destination(frame: &[u8]) -> ([u8; 4], u16) {
    let addr = frame[ETH_HDR_LEN + 16..ETH_HDR_LEN + 20]
        .try_into()
        .expect("4 bytes");
    (addr, u16::from_be_bytes([frame[L4 + 2], frame[L4 + 3]]))
}

/// Checks the IPv4 header checksum and the TCP/UDP checksum over the pseudo-header.
fn assert_checksums_verify(frame: &[u8]) {
    let ip = &frame[ETH_HDR_LEN..ETH_HDR_LEN + IPV4_HDR_LEN];
    assert_eq!(checksum(&[ip]), 0, "IPv4 header checksum of {frame:02x?}");
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let segment = &frame[L4..ETH_HDR_LEN + total];
    let protocol = ip[9];
    if protocol == Protocol::UDP && segment[6..8] == [0, 0] {
        return; // no checksum
    }
    let pseudo = [
        &ip[12..16],
        &ip[16..20],
        &[0, protocol],
        &(segment.len() as u16).to_be_bytes(),
    ]
    .concat();
    assert_eq!(
        checksum(&[&pseudo, segment]),
        0,
        "transport checksum of {frame:02x?}"
    );
}

/// `packet` with its destination replaced, checksums recomputed from scratch: what a correct
/// DNAT produces.
fn with_destination(packet: &[u8], addr: [u8; 4], port: u16) -> Vec<u8> {
    rebuilt(packet, |frame| {
        frame[ETH_HDR_LEN + 16..ETH_HDR_LEN + 20].copy_from_slice(&addr);
        frame[L4 + 2..L4 + 4].copy_from_slice(&port.to_be_bytes());
    })
}

fn with_source(packet: &[u8], addr: [u8; 4], port: u16) -> Vec<u8> {
    rebuilt(packet, |frame| {
        frame[ETH_HDR_LEN + 12..ETH_HDR_LEN + 16].copy_from_slice(&addr);
        frame[L4..L4 + 2].copy_from_slice(&port.to_be_bytes());
    })
}

fn rebuilt(packet: &[u8], change: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut frame = packet.to_vec();
    change(&mut frame);
    let src: [u8; 4] = frame[ETH_HDR_LEN + 12..ETH_HDR_LEN + 16]
        .try_into()
        .expect("4 bytes");
    let dst: [u8; 4] = frame[ETH_HDR_LEN + 16..ETH_HDR_LEN + 20]
        .try_into()
        .expect("4 bytes");
    let protocol = frame[ETH_HDR_LEN + 9];
    let no_udp_checksum = protocol == Protocol::UDP && frame[L4 + 6..L4 + 8] == [0, 0];
    let mut again = ipv4_frame(src, dst, protocol, &frame[L4..]);
    if no_udp_checksum {
        again[L4 + 6..L4 + 8].copy_from_slice(&[0, 0]);
    }
    again[..ETH_HDR_LEN].copy_from_slice(&frame[..ETH_HDR_LEN]);
    again
}

#[test]
fn packet_fixtures_are_well_formed() {
    // Not privileged: checks the helpers the kernel tests rely on.
    let syn = syn(CLIENT_PORT);
    assert_eq!(syn.len(), L4 + 20);
    assert_eq!(&syn[12..14], &[0x08, 0x00]);
    assert_eq!(syn[ETH_HDR_LEN], 0x45);
    assert_eq!(destination(&syn), (VIP, VIP_PORT));
    assert_eq!(source(&syn), (CLIENT, CLIENT_PORT));
    assert_checksums_verify(&syn);
    assert_checksums_verify(&data(CLIENT_PORT));
    assert_checksums_verify(&udp(CLIENT, 5353, VIP, 53, true));
    let moved = with_destination(&syn, [10, 0, 0, 1], 8080);
    assert_checksums_verify(&moved);
    assert_eq!(destination(&moved), ([10, 0, 0, 1], 8080));
    let options = ipv4_frame_with(CLIENT, VIP, Protocol::TCP, &[1, 1, 1, 0], &syn[L4..]);
    assert_eq!(options[ETH_HDR_LEN], 0x46);
    assert_eq!(checksum(&[&options[ETH_HDR_LEN..ETH_HDR_LEN + 24]]), 0);
}

/// `frame` as a router forwards it: the next hop's Ethernet addresses, one hop less.
fn forwarded(frame: &[u8], macs: [u8; 12]) -> Vec<u8> {
    let mut out = with_ttl(frame, frame[ETH_HDR_LEN + 8] - 1);
    out[..12].copy_from_slice(&macs);
    out
}

/// `frame` with another IPv4 TTL (and the header checksum to match).
fn with_ttl(frame: &[u8], ttl: u8) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[ETH_HDR_LEN + 8] = ttl;
    out[ETH_HDR_LEN + 10..ETH_HDR_LEN + 12].copy_from_slice(&[0, 0]);
    let sum = checksum(&[&out[ETH_HDR_LEN..L4]]);
    out[ETH_HDR_LEN + 10..ETH_HDR_LEN + 12].copy_from_slice(&sum.to_be_bytes());
    out
}

// ---------------------------------------------------------------------------------------------
// Steering

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
// Bad packets

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

// ---------------------------------------------------------------------------------------------
// Reply path

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

/// An ICMP error (`kind`, `code`, the 4 bytes after the checksum) from `src` to `dst` quoting
/// `quote`, ICMP checksum filled in.
fn icmp_error(
    src: [u8; 4],
    dst: [u8; 4],
    kind: u8,
    code: u8,
    rest: [u8; 4],
    quote: &[u8],
) -> Vec<u8> {
    let mut message = vec![kind, code, 0, 0];
    message.extend_from_slice(&rest);
    message.extend_from_slice(quote);
    let sum = checksum(&[&message]);
    message[2..4].copy_from_slice(&sum.to_be_bytes());
    ipv4_frame(src, dst, ICMP, &message)
}

/// What an ICMP error quotes: the IPv4 header and the first 8 bytes of the transport header.
fn quote_of(frame: &[u8]) -> Vec<u8> {
    frame[ETH_HDR_LEN..L4 + 8].to_vec()
}

/// A quote of the whole packet, as Linux sends (up to 576 bytes): the transport checksum is in it.
fn whole_quote_of(frame: &[u8]) -> Vec<u8> {
    frame[ETH_HDR_LEN..].to_vec()
}

const ICMP: u8 = 1;
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
// Straight into the pod interface (XDP_REDIRECT)

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
