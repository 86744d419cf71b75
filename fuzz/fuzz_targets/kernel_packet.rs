//! Arbitrary frames through the kernel programs (ebpf/) with `BPF_PROG_TEST_RUN`: the XDP
//! program (steering), then the TC programs that reverse-NAT replies on an uplink's egress and
//! on a pod interface's ingress.
//!
//! The object is `$TETHER_EBPF_OBJECT` (`cargo xtask fuzz` builds it and sets it), else the
//! release build under target/ebpf. It is loaded once per process, with one TCP virtual service
//! (10.96.0.10:80; targets 10.244.2.10 and .11 active, .12 draining, all on port 8080) and one
//! UDP service (10.96.0.10:53; .10 and .11), as the kernel tests set them up
//! (tests/tests/kernel_program/main.rs). The seeds in fuzz/corpus/kernel_packet use these addresses.
//! Flows the fuzzer opens stay in the flow tables across inputs, as they would on a node.
//!
//! libFuzzer sees only userspace coverage, not the BPF program's branches; so that it still
//! keeps inputs that take new paths in the kernel, each run's outcome (verdict, which of the
//! programs' counters moved, whether the frame was rewritten) is turned into a distinct branch
//! here (see `feedback`).
//!
//! Checks: every run succeeds and returns one of the verdicts the programs give. Needs root.
#![no_main]

use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::{SchedClassifier, Xdp};
use aya::{Ebpf, TestRun, TestRunOptions};
use libfuzzer_sys::fuzz_target;
use std::path::{Path, PathBuf};
use tether_common::{
    port_bit, Hashing, NextHop, NextHopVerdict, Protocol, ServiceEntry, ServiceKey, TargetEntry,
    TargetState, COUNTERS_MAP, COUNTER_COUNT, MAGLEV_MAP, MAGLEV_SIZE, NEXTHOPS_MAP, PORTS_MAP,
    SERVICES_MAP, TARGETS_MAP, TC_POD_PROGRAM, TC_PROGRAM, XDP_PROGRAM,
};

const VIP: [u8; 4] = [10, 96, 0, 10];
const POD_PORT: u16 = 8080;
/// `enum xdp_action`: what the XDP program may answer.
const XDP_VERDICTS: [u32; 3] = [1 /* DROP */, 2 /* PASS */, 4 /* REDIRECT */];
/// What the TC programs may answer: TC_ACT_UNSPEC (next), TC_ACT_SHOT, TC_ACT_REDIRECT.
const TC_VERDICTS: [u32; 3] = [u32::MAX, 2, 7];
/// The test run needs a whole Ethernet header and takes at most about a page.
const MIN_FRAME: usize = 14;
const MAX_FRAME: usize = 1514;

fn pod(last: u8) -> [u8; 4] {
    [10, 244, 2, last]
}

fn object_path() -> PathBuf {
    std::env::var_os("TETHER_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/ebpf/bpfel-unknown-none/release/tether-ebpf")
        })
}

struct Kernel {
    ebpf: Ebpf,
}

impl Kernel {
    fn load() -> Self {
        let path = object_path();
        let mut ebpf = Ebpf::load_file(&path).unwrap_or_else(|error| {
            panic!(
                "loading {} (build it with `cargo xtask build-ebpf`; loading needs root): {error:?}",
                path.display()
            )
        });
        let xdp: &mut Xdp = ebpf
            .program_mut(XDP_PROGRAM)
            .expect("the XDP program")
            .try_into()
            .expect("an XDP program");
        xdp.load().expect("the verifier takes the XDP program");
        for name in [TC_PROGRAM, TC_POD_PROGRAM] {
            let tc: &mut SchedClassifier = ebpf
                .program_mut(name)
                .expect("the TC program")
                .try_into()
                .expect("a TC program");
            tc.load().expect("the verifier takes the TC program");
        }
        let mut kernel = Self { ebpf };
        kernel.add_service(
            ServiceKey::ipv4(VIP, 80, Protocol::TCP),
            1,
            &[
                (10, 10, TargetState::ACTIVE),
                (11, 11, TargetState::ACTIVE),
                (12, 12, TargetState::DRAINING),
            ],
            Hashing::FIVE_TUPLE,
        );
        kernel.add_service(
            ServiceKey::ipv4(VIP, 53, Protocol::UDP),
            2,
            &[(20, 10, TargetState::ACTIVE), (21, 11, TargetState::ACTIVE)],
            Hashing::CLIENT_IP,
        );
        kernel
    }

    /// Writes a service as the agent does: targets, Maglev row over the active ones, entry,
    /// port bit. `targets` are (target id, last octet of the pod address, state).
    fn add_service(&mut self, key: ServiceKey, id: u32, targets: &[(u32, u8, u8)], hashing: u8) {
        let mut table: Array<&mut MapData, TargetEntry> =
            Array::try_from(self.ebpf.map_mut(TARGETS_MAP).expect("targets map")).expect("layout");
        for &(target, last, state) in targets {
            table
                .set(
                    target,
                    TargetEntry::ipv4(id, pod(last), POD_PORT, 1, state),
                    0,
                )
                .expect("set target");
        }
        let active: Vec<u32> = targets
            .iter()
            .filter(|(_, _, state)| *state == TargetState::ACTIVE)
            .map(|(target, _, _)| *target)
            .collect();
        let mut maglev: Array<&mut MapData, u32> =
            Array::try_from(self.ebpf.map_mut(MAGLEV_MAP).expect("maglev map")).expect("layout");
        for slot in 0..MAGLEV_SIZE {
            maglev
                .set(
                    id * MAGLEV_SIZE + slot,
                    active[slot as usize % active.len()],
                    0,
                )
                .expect("set slot");
        }
        let mut entry = ServiceEntry::new(id, "fuzz/service", hashing);
        entry.active_targets = active.len() as u16;
        entry.draining_targets = (targets.len() - active.len()) as u16;
        let mut services: HashMap<&mut MapData, ServiceKey, ServiceEntry> =
            HashMap::try_from(self.ebpf.map_mut(SERVICES_MAP).expect("services map"))
                .expect("layout");
        services.insert(key, entry, 0).expect("insert service");
        let (word, bit) = port_bit(key.protocol, key.port());
        let mut ports: Array<&mut MapData, u64> =
            Array::try_from(self.ebpf.map_mut(PORTS_MAP).expect("ports map")).expect("layout");
        let bits = ports.get(&word, 0).expect("read port bits");
        ports.set(word, bits | bit, 0).expect("set port bit");
    }

    /// Cached routes that send target 10's packets straight into a pod interface and target
    /// 11's up the peer path; set before every input, since a new flow asks the FIB afresh.
    fn set_routes(&mut self) {
        let mut hops: Array<&mut MapData, NextHop> =
            Array::try_from(self.ebpf.map_mut(NEXTHOPS_MAP).expect("nexthops map"))
                .expect("layout");
        for (target, verdict) in [(10, NextHopVerdict::REDIRECT), (11, NextHopVerdict::PEER)] {
            let hop = NextHop {
                macs: [2, 0, 0, 0, 0, 0xb, 2, 0, 0, 0, 0, 0xa],
                ifindex: 1,
                expires: u64::MAX,
                mtu: 1500,
                verdict,
                _pad: [0; 5],
            };
            hops.set(target, hop, 0).expect("set next hop");
        }
    }

    /// The global counters, summed over CPUs.
    fn counters(&self) -> [u64; COUNTER_COUNT as usize] {
        let map: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map(COUNTERS_MAP).expect("counters map"))
                .expect("layout");
        let mut values = [0u64; COUNTER_COUNT as usize];
        for (index, value) in values.iter_mut().enumerate() {
            *value = map
                .get(&(index as u32), 0)
                .expect("read counter")
                .iter()
                .sum();
        }
        values
    }

    /// Runs `name` on `frame`: the verdict, and whether the frame came out changed.
    fn run<P>(&self, name: &str, frame: &[u8]) -> (u32, bool)
    where
        P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = aya::TestRunResult>,
        for<'a> &'a P: TryFrom<&'a aya::programs::Program>,
    {
        let program: &P = self
            .ebpf
            .program(name)
            .and_then(|program| program.try_into().ok())
            .expect("a loaded program");
        // Room for the metadata and headers a program may push in front.
        let mut out = vec![0u8; frame.len() + 256];
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .unwrap_or_else(|error| panic!("{name}: BPF_PROG_TEST_RUN failed: {error:?}"));
        out.truncate(result.data_size_out as usize);
        (result.return_value, out != frame)
    }
}

/// A distinct branch for `value` (up to 31), so libFuzzer counts each value as new coverage.
#[inline(never)]
fn branch(kind: u32, value: u32) {
    macro_rules! arms {
        ($($n:literal)*) => {
            match value {
                $($n => {
                    std::hint::black_box((kind, $n));
                })*
                _ => {
                    std::hint::black_box((kind, u32::MAX));
                }
            }
        };
    }
    match kind {
        0 => {
            arms!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31)
        }
        1 => {
            arms!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31)
        }
        _ => {
            arms!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31)
        }
    }
}

/// What the kernel did with one frame, as branches: `program` (0 XDP, 1 and 2 the TC ones)
/// with its verdict and whether it rewrote the frame; then each counter that moved.
fn feedback(program: u32, verdict: u32, rewritten: bool, before: &[u64], after: &[u64]) {
    branch(program, (verdict.min(15) << 1) | u32::from(rewritten));
    for (index, (old, new)) in before.iter().zip(after).enumerate() {
        if new != old {
            branch(program, 16 + index as u32 % 16);
        }
    }
}

/// Whether the kernel builds an skb from `frame` for a TC test run: it refuses (EINVAL) an
/// IPv4 or IPv6 ethertype without room for that header, before any program runs.
fn skb_test_run_takes(frame: &[u8]) -> bool {
    match (frame[12], frame[13]) {
        (0x08, 0x00) => frame.len() >= MIN_FRAME + 20,
        (0x86, 0xdd) => frame.len() >= MIN_FRAME + 40,
        _ => true,
    }
}

thread_local! {
    static KERNEL: std::cell::RefCell<Kernel> = std::cell::RefCell::new(Kernel::load());
}

fuzz_target!(|data: &[u8]| {
    if data.len() < MIN_FRAME {
        return;
    }
    let frame = &data[..data.len().min(MAX_FRAME)];
    KERNEL.with(|kernel| {
        let mut kernel = kernel.borrow_mut();
        kernel.set_routes();
        let mut before = kernel.counters();
        let (verdict, rewritten) = kernel.run::<Xdp>(XDP_PROGRAM, frame);
        assert!(
            XDP_VERDICTS.contains(&verdict),
            "{XDP_PROGRAM}: verdict {verdict}"
        );
        let after = kernel.counters();
        feedback(0, verdict, rewritten, &before, &after);
        before = after;
        if !skb_test_run_takes(frame) {
            return;
        }
        for (program, name) in [(1, TC_PROGRAM), (2, TC_POD_PROGRAM)] {
            let (verdict, rewritten) = kernel.run::<SchedClassifier>(name, frame);
            assert!(TC_VERDICTS.contains(&verdict), "{name}: verdict {verdict}");
            let after = kernel.counters();
            feedback(program, verdict & 0xf, rewritten, &before, &after);
            before = after;
        }
    });
});
