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
//! `steer::cost_fixtures_take_their_paths` checks the fixtures that bench times do what they
//! are named after.
//!
//! The tests mirror `ebpf/src`: one module per source file, holding the tests of the program code
//! in it (`maps`, `parse`, `steer`, `route`, `reply`, `icmp`; `csum`'s incremental updates are
//! checked wherever a rewritten packet's checksums are, by [`assert_checksums_verify`]). This
//! file holds what they share: the loader ([`Kernel`]), the service every test starts from, and
//! the packet fixtures with the outputs a correct program gives.
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
use tether_testkit::netns::privileged;
// The frames every test feeds the programs: one builder for these tests and the L4 bench.
use tether_testkit::packet::{
    checksum, ipv4_frame, ipv4_frame_with, tcp, with_ttl, ACK, ETH_HDR_LEN, IPV4_HDR_LEN, L4,
    PSH_ACK, SYN,
};

mod icmp;
mod maps;
mod parse;
mod reply;
mod route;
mod steer;

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
