//! The namespace topology the L4 bench runs in, built and torn down by the bench itself:
//!
//! ```text
//!   client ns                  node ns (forwarding)                 pod ns x3
//!  c<tag> 10.77.0.2 ---- n<tag> 10.77.0.1     p<i><tag> 10.77.<i+1>.1 ---- e<i><tag> 10.77.<i+1>.2
//! ```
//!
//! Names are unique (`tl4-<pid>-<n>`, interfaces carry a tag derived from them); everything lives
//! in those namespaces (the veths are created inside them, never in the host's), and the
//! [`Lab`]'s drop deletes it all: the tether agent stops, its pins are cleaned up (detaching the
//! programs), the servers stop, the namespaces go. A run that was killed outright leaves
//! namespaces whose pid is dead: [`remove_stale`] deletes those at the next start.
//!
//! What makes the node's cost measurable, for every system alike:
//!
//! - the node's veths (`n`, `p<i>`) have GRO on and *threaded NAPI*, their kthreads pinned to the
//!   node CPU at SCHED_FIFO 1 (softirq work preempts tasks on a real node; every NAPI kthread of
//!   the lab runs so, see [`preempt_tasks`]): everything the node
//!   does to a packet (native XDP on a veth runs in its NAPI poll, then GRO, forwarding,
//!   netfilter, TC egress, the transmit into the next veth) runs in those kthreads, whose CPU
//!   time is the node's cost;
//! - the client's and pods' veths have receive packet steering to the load CPU(s), and the
//!   pods' veths GRO and threaded NAPI pinned there too (XDP frames redirected into a veth need
//!   its peer's NAPI), so the client's and pods' own receive processing does not run in the
//!   node's kthreads;
//! - the client and pods send with TSO and GSO off: the node receives MTU-sized frames, as from
//!   a NIC (GRO then merges them on the node, as a NIC driver's would). Their veths keep
//!   veth's default `noqueue`: a full ring drops, as a NIC ring does; a qdisc would push back,
//!   but its queue is then drained from the node's NAPI poll, which would do the senders'
//!   segmentation and checksums in the node's kthreads and charge them to the node;
//! - transmit checksum offload stays on by default ([`Checksums::Offload`]): no checksum is
//!   computed or verified in software anywhere, as on a node whose NIC offloads them. With
//!   [`Checksums::Complete`] it is off as in the tests: complete checksums, verified by the
//!   node's GRO and by the receivers (which then also check every DNAT and reverse NAT).
use super::load::Servers;
use super::topology::{
    gateway, nft_ruleset, pod_addr, tether_config, BULK_PORT, PODS, POD_BULK_PORT, POD_RR_PORT,
    POD_UDP_PORT, RR_PORT, UDP_PORT, VIP,
};
use anyhow::{ensure, Context, Result};
use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tether_testkit::cpu::{cpu_set, pin_task};
use tether_testkit::netns::{self, veth, Feature, Netns};
use tether_testkit::process::Proc;

/// Namespace and pin-directory prefix; `tl4-<pid>-<n>`.
pub const PREFIX: &str = "tl4";
/// Bound on tether coming up and on every command.
const WAIT: Duration = Duration::from_secs(20);

/// What the client's and pods' veths do with transport checksums.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Checksums {
    /// Transmit checksum offload on (veth's default): packets carry a partial checksum that
    /// nobody computes or verifies in software, as on a node whose NIC offloads checksums.
    Offload,
    /// Offload off, as the tests do: packets carry complete checksums, which the node's GRO
    /// and the receivers verify in software (and which catch a wrong DNAT or reverse NAT).
    Complete,
}

// ---------------------------------------------------------------------------------------------
// CPUs and kthreads

/// Makes a NAPI kthread run as softirq work does on a real node, where it preempts tasks:
/// SCHED_FIFO priority 1 (the lowest real-time one; threaded IRQ handlers use 50). Every NAPI
/// kthread of the lab gets it (node, pods, wire), so no system's receive work waits behind the
/// load's busy threads (its ring would overflow) while another system's runs in softirq. The
/// kernel's RT throttling still leaves tasks 5% of the CPU.
pub fn preempt_tasks(pid: i32) {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: plain syscall on a pid with a valid sched_param.
    if unsafe { libc::sched_setscheduler(pid, libc::SCHED_FIFO, &param) } != 0 {
        // Not fatal: nice -20 then.
        // SAFETY: as above.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, pid as libc::id_t, -20) };
    }
}

/// A hex CPU mask for sysfs ("2" for CPU 1).
fn cpu_mask(cpus: &[usize]) -> String {
    let mut words: Vec<u32> = vec![0; cpus.iter().max().map_or(1, |m| m / 32 + 1)];
    for &cpu in cpus {
        words[cpu / 32] |= 1 << (cpu % 32);
    }
    words
        .iter()
        .rev()
        .map(|w| format!("{w:08x}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The NAPI kthreads (`napi/<interface>-<id>`) of `interfaces`: kernel threads, children of
/// kthreadd.
pub fn napi_threads(interfaces: &[String]) -> Vec<(String, i32)> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(comm) = fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        let comm = comm.trim();
        let kthread = fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1).map(str::to_string))
            })
            .is_some_and(|ppid| ppid == "2");
        if !kthread {
            continue;
        }
        for interface in interfaces {
            if comm.starts_with(&format!("napi/{interface}-")) {
                found.push((interface.clone(), pid));
            }
        }
    }
    found.sort();
    found
}

/// utime + stime (clock ticks) of the tasks `pids`, summed.
pub fn task_ticks(pids: &[i32]) -> u64 {
    pids.iter()
        .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            let (_, rest) = stat.rsplit_once(')')?;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .sum()
}

/// Per-CPU softnet drops (`/proc/net/softnet_stat`, second column), summed: backlog overflows.
pub fn softnet_drops() -> u64 {
    fs::read_to_string("/proc/net/softnet_stat")
        .map(|text| {
            text.lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter_map(|v| u64::from_str_radix(v, 16).ok())
                .sum()
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// The wire: a NIC for the node's client-facing veth

/// Where the pods' kernel receive processing (GRO, checksums, TCP/UDP) runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PodReceive {
    /// On the load CPU(s): the pods' veths have threaded NAPI pinned there (and RPS to them),
    /// so the node's CPU time is what the data plane itself costs. A redirect path that moves
    /// GRO from the node to the pods looks cheaper on the node than it is in total.
    Load,
    /// Where a real node runs it: in softirq on the CPU that handled the packet, the node's
    /// (the pods' NAPI in softirq, no RPS). The node's CPU time then includes the pods'
    /// kernel receive work for every system, wherever each system does its GRO.
    Node,
}

/// How the client's packets reach the node's client-facing veth.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ingress {
    /// Through a "wire" namespace whose XDP programs redirect every frame between its two
    /// veths: the node's veth receives raw frames (xdp_frames), as a NIC driver's ring holds
    /// them, so native XDP runs on the frame before any skb exists, and the stack builds the
    /// skb after it, for every system alike. The copy veth makes to run XDP on a
    /// locally-sent skb happens in the wire (on the load CPU), not in the node.
    Wire,
    /// The client's veth straight into the node's: the node's veth gets the client's skbs, and
    /// native XDP on a veth first copies each one into a fresh buffer (TCP's skbs are clones):
    /// a cost of XDP on veth (kind, pod veths), not of XDP on a NIC.
    Veth,
}

/// The wire namespace and its two XDP links (attached while the fds are open).
struct Wire {
    netns: Netns,
    links: Vec<std::os::fd::OwnedFd>,
    /// Its NAPI kthreads (load side).
    threads: Vec<i32>,
}

impl Wire {
    /// Attaches `redirect to the other` on `a` (client side) and `b` (node side). `a`'s NAPI
    /// stays in softirq, so it runs right after each of the client's transmits, on the client's
    /// CPU (a kthread there would have to wait for the client to yield, and its ring would
    /// overflow). `b`'s NAPI is threaded and pinned to the load CPU(s): in softirq, it would
    /// run in the node's context when the node transmits, and charge the wire to the node.
    fn connect(&mut self, a: &str, b: &str, load_cpus: &[usize]) -> Result<()> {
        let (a_index, b_index) = self.netns.run(|| (ifindex(a), ifindex(b)))?;
        let (a_index, b_index) = (a_index?, b_index?);
        for (interface, to) in [(a, b_index), (b, a_index)] {
            let program = redirect_program(to)?;
            let index = if interface == a { a_index } else { b_index };
            // The ifindex is resolved in the calling thread's namespace.
            let link = self.netns.run(|| xdp_link(&program, index))??;
            self.links.push(link);
        }
        self.netns
            .sysfs_script(&format!("echo 1 > /sys/class/net/{b}/threaded\n"))?;
        let threads = napi_threads(&[b.to_string()]);
        ensure!(
            threads.len() == 1,
            "expected the wire's NAPI kthread, found {threads:?}"
        );
        for (_, pid) in threads {
            pin_task(pid, load_cpus)?;
            preempt_tasks(pid);
            self.threads.push(pid);
        }
        Ok(())
    }
}

/// One counter of `ip -s -j link show`: direction "rx" or "tx", field "packets", "dropped"...
fn link_stat(netns: &str, interface: &str, direction: &str, field: &str) -> Option<u64> {
    let output = Command::new("ip")
        .args(["-n", netns, "-s", "-j", "link", "show", "dev", interface])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    value[0]["stats64"][direction][field].as_u64()
}

fn ifindex(interface: &str) -> Result<u32> {
    let name = std::ffi::CString::new(interface)?;
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    ensure!(index != 0, "no interface {interface}");
    Ok(index)
}

fn bpf(command: libc::c_long, attr: *mut libc::c_void, size: usize) -> std::io::Result<i32> {
    // SAFETY: `attr` points at a live, zero-padded attribute struct of `size` bytes.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, command, attr, size as libc::c_uint) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd as i32)
}

/// An XDP program of four instructions: `return bpf_redirect(to, 0)`.
fn redirect_program(to: u32) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_TYPE_XDP: u32 = 6;
    const BPF_FUNC_REDIRECT: i32 = 23;
    #[repr(C)]
    struct Insn {
        code: u8,
        regs: u8,
        off: i16,
        imm: i32,
    }
    #[repr(C)]
    struct ProgLoad {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
        prog_name: [u8; 16],
    }
    let insns = [
        // r1 = to; r2 = 0; call bpf_redirect; exit
        Insn {
            code: 0xb7,
            regs: 1,
            off: 0,
            imm: to as i32,
        },
        Insn {
            code: 0xb7,
            regs: 2,
            off: 0,
            imm: 0,
        },
        Insn {
            code: 0x85,
            regs: 0,
            off: 0,
            imm: BPF_FUNC_REDIRECT,
        },
        Insn {
            code: 0x95,
            regs: 0,
            off: 0,
            imm: 0,
        },
    ];
    let license = b"GPL\0";
    let mut name = [0u8; 16];
    name[..10].copy_from_slice(b"bench_wire");
    let mut attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
    };
    let fd = bpf(
        BPF_PROG_LOAD,
        (&mut attr as *mut ProgLoad).cast(),
        std::mem::size_of::<ProgLoad>(),
    )
    .context("loading the wire's XDP redirect program")?;
    // SAFETY: a new fd the kernel just returned, owned from here.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Attaches `program` to `ifindex` (native XDP) with a bpf_link; detached when the fd closes.
fn xdp_link(program: &std::os::fd::OwnedFd, ifindex: u32) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    const BPF_LINK_CREATE: libc::c_long = 28;
    const BPF_XDP: u32 = 37;
    #[repr(C)]
    struct LinkCreate {
        prog_fd: u32,
        target_ifindex: u32,
        attach_type: u32,
        flags: u32,
        _rest: [u64; 4],
    }
    let mut attr = LinkCreate {
        prog_fd: program.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: BPF_XDP,
        flags: 0,
        _rest: [0; 4],
    };
    let fd = bpf(
        BPF_LINK_CREATE,
        (&mut attr as *mut LinkCreate).cast(),
        std::mem::size_of::<LinkCreate>(),
    )
    .context("attaching the wire's XDP program")?;
    // SAFETY: a new fd the kernel just returned, owned from here.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

// ---------------------------------------------------------------------------------------------
// The lab

/// Which system steers the VIP in this lab.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Steering {
    /// Nothing: the client connects to pod 0's address.
    Direct,
    /// The tether agent: XDP on `n<tag>` (and TC on its egress).
    Tether,
    /// An nftables ruleset shaped like kube-proxy's nftables mode.
    Nftables,
}

pub struct TetherSetup<'a> {
    pub binary: &'a Path,
    pub object: &'a Path,
    pub xdp_mode: &'a str,
    /// List the node's pod-facing veths as `dataplane.podInterfaces` with this
    /// `podDelivery` (`peer` or `redirect`): steered packets go straight to them and replies
    /// straight out of the client-facing veth. `None`: both directions go through the node's
    /// forwarding path (XDP_PASS).
    pub pod_delivery: Option<&'a str>,
}

pub struct Lab {
    pub id: String,
    dir: PathBuf,
    checksums: Checksums,
    pod_receive: PodReceive,
    /// (namespace, interface) of the client's and pods' veths.
    senders: Vec<(String, String)>,
    pub node_interfaces: Vec<String>,
    /// The pods' own veths (`e<i>`), whose NAPI kthreads run on the load CPU(s).
    pod_threads: Vec<i32>,
    pub node_cpus: Vec<usize>,
    pub load_cpus: Vec<usize>,
    tether: Option<Tether>,
    pub servers: Option<Servers>,
    /// Between the client and the node in [`Ingress::Wire`] mode; dropped before the others.
    wire: Option<Wire>,
    pub client: Netns,
    pub node: Netns,
    pub pods: Vec<Netns>,
}

struct Tether {
    binary: PathBuf,
    pins: PathBuf,
    process: Option<Proc>,
    log: PathBuf,
}

impl Tether {
    fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop();
        }
        // Detaches the programs (they stay attached when the agent stops) and removes the pins.
        if self.pins.exists() {
            match Command::new(&self.binary)
                .args(["cleanup", "--pin-dir"])
                .arg(&self.pins)
                .stdin(Stdio::null())
                .output()
            {
                Ok(output) if !output.status.success() => eprintln!(
                    "cleanup: tether cleanup: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
                Err(error) => eprintln!("cleanup: tether cleanup: {error}"),
                Ok(_) => {}
            }
            let _ = fs::remove_dir_all(&self.pins);
        }
    }
}

static LABS: AtomicU32 = AtomicU32::new(0);

impl Lab {
    /// Builds the topology (see the module comment). Nothing steers the VIP yet.
    pub fn build(
        node_cpus: &[usize],
        load_cpus: &[usize],
        checksums: Checksums,
        ingress: Ingress,
        pod_receive: PodReceive,
        dir: &Path,
    ) -> Result<Self> {
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let id = format!("{PREFIX}-{pid}-{n}");
        // Interface names: <= 15 bytes, and short enough that `napi/<name>-` fits in a task
        // name (15 bytes) to find the kthreads by.
        let tag = format!("{:04x}{:02}", pid % 0x1_0000, n % 100);
        let client = Netns::new(format!("{id}-c"))?;
        let node = Netns::new(format!("{id}-n"))?;
        let wire = match ingress {
            Ingress::Wire => Some(Wire {
                netns: Netns::new(format!("{id}-w"))?,
                links: Vec::new(),
                threads: Vec::new(),
            }),
            Ingress::Veth => None,
        };
        let mut pods = Vec::new();
        for pod in 0..PODS {
            pods.push(Netns::new(format!("{id}-p{pod}"))?);
        }
        let lab_dir = dir.join(&id);
        fs::create_dir_all(&lab_dir)?;
        let mut lab = Self {
            id,
            dir: lab_dir,
            checksums,
            pod_receive,
            senders: Vec::new(),
            node_interfaces: Vec::new(),
            pod_threads: Vec::new(),
            node_cpus: node_cpus.to_vec(),
            load_cpus: load_cpus.to_vec(),
            tether: None,
            servers: None,
            wire,
            client,
            node,
            pods,
        };
        lab.wire(&tag).context("building the namespace topology")?;
        Ok(lab)
    }

    fn wire(&mut self, tag: &str) -> Result<()> {
        let (c, n) = (format!("c{tag}"), format!("n{tag}"));
        match &self.wire {
            None => veth(&self.client, &c, &self.node, &n)?,
            Some(wire) => {
                let (a, b) = (format!("a{tag}"), format!("b{tag}"));
                veth(&self.client, &c, &wire.netns, &a)?;
                veth(&wire.netns, &b, &self.node, &n)?;
            }
        }
        self.client
            .ip(&["addr", "add", "10.77.0.2/24", "dev", &c])?;
        self.client
            .ip(&["route", "add", &format!("{VIP}/32"), "via", "10.77.0.1"])?;
        self.client
            .ip(&["route", "add", "10.77.0.0/16", "via", "10.77.0.1"])?;
        self.node.ip(&["addr", "add", "10.77.0.1/24", "dev", &n])?;
        self.node.sysctl("net.ipv4.ip_forward", "1")?;
        let mut node_interfaces = vec![n.clone()];
        let mut pod_interfaces = Vec::new();
        for (i, pod) in self.pods.iter().enumerate() {
            let (e, p) = (format!("e{i}{tag}"), format!("p{i}{tag}"));
            veth(pod, &e, &self.node, &p)?;
            pod.ip(&["addr", "add", &format!("{}/24", pod_addr(i)), "dev", &e])?;
            pod.ip(&["route", "add", "default", "via", &gateway(i).to_string()])?;
            self.node
                .ip(&["addr", "add", &format!("{}/24", gateway(i)), "dev", &p])?;
            node_interfaces.push(p);
            pod_interfaces.push(e);
        }

        // Senders (client, pods): no TSO or GSO, so the node receives MTU-sized frames as from
        // a NIC; transmit checksum offload as chosen (see `Checksums`); their receive
        // processing steered to the load CPU(s). No qdisc (veth's noqueue): a full ring drops,
        // as a NIC ring does, and nothing of the sender's transmit work is done later in the
        // node's context (a qdisc woken from the node's NAPI poll would segment and checksum
        // the sender's packets there).
        let rps = if self.load_cpus.is_empty() {
            None
        } else {
            Some(cpu_mask(&self.load_cpus))
        };
        let edges = std::iter::once((&self.client, c.clone()))
            .chain(self.pods.iter().zip(pod_interfaces.iter().cloned()));
        for (netns, interface) in edges {
            // Through the wire, frames lose the partial-checksum state: the client must send
            // complete checksums (as on a real wire).
            let client = netns.name() == self.client.name();
            if self.checksums == Checksums::Complete || (client && self.wire.is_some()) {
                netns.set_feature(&interface, Feature::TxChecksum, false)?;
            }
            netns.set_feature(&interface, Feature::Tso, false)?;
            netns.set_feature(&interface, Feature::Gso, false)?;
            let steered = client || self.pod_receive == PodReceive::Load;
            if let (Some(mask), true) = (&rps, steered) {
                netns.sysfs_script(&format!(
                    "echo {mask} > /sys/class/net/{interface}/queues/rx-0/rps_cpus"
                ))?;
            }
            self.senders.push((netns.name().to_string(), interface));
        }
        // The node: GRO and threaded NAPI on each of its veths.
        let mut script = String::new();
        for interface in &node_interfaces {
            self.node.set_feature(interface, Feature::Gro, true)?;
            script.push_str(&format!("echo 1 > /sys/class/net/{interface}/threaded\n"));
        }
        self.node.sysfs_script(&script)?;
        self.node_interfaces = node_interfaces;
        // The pods: GRO, hence NAPI, on their veths, threaded and pinned to the load CPU(s), as
        // the client's side of the wire is. Their receive processing (GRO, checksums, TCP)
        // then runs in their own kthreads whatever the node does: an skb the node forwards
        // and a frame XDP transmits into the pod's veth (which needs the pod's NAPI) land in
        // the same place, for every system alike.
        // With `PodReceive::Node` their NAPI stays in softirq: it runs where it is scheduled,
        // on the node's CPU.
        for (pod, interface) in self.pods.iter().zip(&pod_interfaces) {
            pod.set_feature(interface, Feature::Gro, true)?;
        }
        let threaded = self.pod_receive == PodReceive::Load;
        if threaded {
            for (pod, interface) in self.pods.iter().zip(&pod_interfaces) {
                pod.sysfs_script(&format!("echo 1 > /sys/class/net/{interface}/threaded\n"))?;
            }
        }
        let pod_threads = match threaded {
            true => napi_threads(&pod_interfaces),
            false => Vec::new(),
        };
        ensure!(
            !threaded || pod_threads.len() == pod_interfaces.len(),
            "expected one NAPI kthread per pod veth ({pod_interfaces:?}), found {pod_threads:?}"
        );
        for (_, pid) in &pod_threads {
            pin_task(*pid, &self.load_cpus)?;
            preempt_tasks(*pid);
            self.pod_threads.push(*pid);
        }
        if let Some(wire) = self.wire.as_mut() {
            // The client receives the wire's redirected frames: that needs its NAPI (GRO).
            self.client.set_feature(&c, Feature::Gro, true)?;
            // Frames carry no checksum state: what the node sends into the wire must carry
            // complete checksums too (computed in software when it transmits, as a NIC would
            // in hardware; replies only, the same for every system).
            self.node.set_feature(&n, Feature::TxChecksum, false)?;
            wire.connect(&format!("a{tag}"), &format!("b{tag}"), &self.load_cpus)?;
            for interface in [format!("a{tag}"), format!("b{tag}")] {
                self.senders
                    .push((wire.netns.name().to_string(), interface));
            }
        }
        self.pin_node_threads()?;
        Ok(())
    }

    /// Finds the node's NAPI kthreads (one per node veth) and pins them to the node CPU(s);
    /// returns their pids.
    pub fn pin_node_threads(&self) -> Result<Vec<i32>> {
        let threads = napi_threads(&self.node_interfaces);
        ensure!(
            threads.len() == self.node_interfaces.len(),
            "expected one NAPI kthread per node veth ({:?}), found {threads:?}",
            self.node_interfaces
        );
        for (_, pid) in &threads {
            pin_task(*pid, &self.node_cpus)?;
            preempt_tasks(*pid);
        }
        Ok(threads.into_iter().map(|(_, pid)| pid).collect())
    }

    /// Packets the senders' veths dropped (a full ring on the node side), summed.
    pub fn sender_drops(&self) -> std::collections::BTreeMap<String, u64> {
        self.senders
            .iter()
            .filter_map(|(netns, interface)| {
                let dropped = link_stat(netns, interface, "tx", "dropped")?;
                // Name by role: the interface names carry the lab's tag.
                let role = match interface.chars().next() {
                    Some('c') => "client".to_string(),
                    // Frames the wire redirects leave through the other veth: `b` sends into
                    // the node's ring, `a` into the client's.
                    Some('a') => "wire (to the client)".to_string(),
                    Some('b') => "wire (to the node)".to_string(),
                    _ => format!("pod {}", interface.chars().nth(1).unwrap_or('?')),
                };
                Some((role, dropped))
            })
            .chain(
                // The node's pod-facing veths: frames XDP transmits into a pod whose ring
                // (256 frames, fixed for veths) is full are dropped and counted here.
                self.node_interfaces.iter().skip(1).filter_map(|interface| {
                    let dropped = link_stat(self.node.name(), interface, "tx", "dropped")?;
                    let pod = interface.chars().nth(1).unwrap_or('?');
                    Some((format!("node to pod {pod}"), dropped))
                }),
            )
            .collect()
    }

    /// The load side's NAPI kthreads: the wire's, if any, and the pods'.
    pub fn load_threads(&self) -> Vec<i32> {
        let mut threads = self
            .wire
            .as_ref()
            .map(|w| w.threads.clone())
            .unwrap_or_default();
        threads.extend(&self.pod_threads);
        threads
    }

    /// Packets the node's client-facing veth received.
    pub fn node_rx_packets(&self) -> u64 {
        link_stat(self.node.name(), &self.node_interfaces[0], "rx", "packets").unwrap_or(0)
    }

    /// The address and port of the datagram service for `steering`.
    pub fn udp_target(steering: Steering) -> (Ipv4Addr, u16) {
        match steering {
            Steering::Direct => (pod_addr(0), POD_UDP_PORT),
            Steering::Tether | Steering::Nftables => (VIP, UDP_PORT),
        }
    }

    /// The address and ports the client loads for `steering`: (rr, bulk).
    pub fn targets(steering: Steering) -> ((Ipv4Addr, u16), (Ipv4Addr, u16)) {
        match steering {
            Steering::Direct => ((pod_addr(0), POD_RR_PORT), (pod_addr(0), POD_BULK_PORT)),
            Steering::Tether | Steering::Nftables => ((VIP, RR_PORT), (VIP, BULK_PORT)),
        }
    }

    /// Starts the tether agent in the node namespace, XDP on the client-facing veth.
    pub fn start_tether(&mut self, setup: &TetherSetup) -> Result<()> {
        let pins = PathBuf::from("/sys/fs/bpf").join(&self.id);
        let config = self.dir.join("tether.yaml");
        fs::write(
            &config,
            tether_config(
                &self.node_interfaces[0],
                match setup.pod_delivery {
                    Some(delivery) => Some((&self.node_interfaces[1..], delivery)),
                    None => None,
                },
                setup.xdp_mode,
            ),
        )?;
        let log = self.dir.join("tether.log");
        let mut command = self.node.command(setup.binary)?;
        command
            .arg("run")
            .arg("--config")
            .arg(&config)
            .arg("--pin-dir")
            .arg(&pins)
            .env("TETHER_EBPF_OBJECT", setup.object)
            .env("RUST_LOG", "info");
        let load = cpu_set(&self.load_cpus);
        let pin = !self.load_cpus.is_empty();
        // SAFETY: only sched_setaffinity, async-signal-safe, on a set built before the fork.
        unsafe {
            command.pre_exec(move || {
                if pin
                    && libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &load)
                        != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let process = Proc::spawn("tether", command, log.clone())?;
        self.tether = Some(Tether {
            binary: setup.binary.to_path_buf(),
            pins,
            process: Some(process),
            log: log.clone(),
        });
        let deadline = Instant::now() + WAIT;
        loop {
            if fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("tether is running")
            {
                break;
            }
            if let Some(process) = self.tether.as_mut().and_then(|t| t.process.as_mut()) {
                process.ensure_running()?;
            }
            ensure!(
                Instant::now() < deadline,
                "tether did not start within {WAIT:?}:\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
            super::interrupt::check_interrupted()?;
            std::thread::sleep(Duration::from_millis(50));
        }
        // Attaching XDP must not have replaced the pinned NAPI kthreads; re-pin to be sure.
        self.pin_node_threads()?;
        Ok(())
    }

    pub fn tether_running(&mut self) -> Result<()> {
        if let Some(process) = self.tether.as_mut().and_then(|t| t.process.as_mut()) {
            process.ensure_running()?;
        }
        Ok(())
    }

    /// `tether maps stats --json` of the running agent.
    pub fn tether_stats(&self) -> Result<serde_json::Value> {
        let tether = self.tether.as_ref().context("tether is not running")?;
        let output = Command::new(&tether.binary)
            .args(["maps", "stats", "--json", "--pin-dir"])
            .arg(&tether.pins)
            .stdin(Stdio::null())
            .output()?;
        ensure!(
            output.status.success(),
            "tether maps stats: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(serde_json::from_slice(&output.stdout)?)
    }

    pub fn tether_log_tail(&self) -> String {
        self.tether
            .as_ref()
            .map(|t| {
                let text = fs::read_to_string(&t.log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(10)..].join("\n")
            })
            .unwrap_or_default()
    }

    /// Loads the kube-proxy-shaped nftables ruleset into the node namespace.
    pub fn start_nftables(&self) -> Result<()> {
        let file = self.dir.join("ruleset.nft");
        fs::write(&file, nft_ruleset())?;
        let output = self
            .node
            .command("nft")?
            .arg("-f")
            .arg(&file)
            .stdin(Stdio::null())
            .output()
            .context("run nft")?;
        ensure!(
            output.status.success(),
            "nft -f {}: {}",
            file.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(())
    }

    /// Conntrack entries in the node namespace.
    pub fn conntrack_count(&self) -> Option<u64> {
        self.node
            .read_sysctl("net.netfilter.nf_conntrack_count")
            .and_then(|v| v.parse().ok())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut tether) = self.tether.take() {
            tether.stop();
        }
        if let Some(servers) = self.servers.take() {
            servers.stop();
        }
        let _ = fs::remove_dir_all(&self.dir);
        // The namespaces go with the fields.
    }
}

/// Deletes what a killed earlier run left: namespaces and pin directories named
/// `tl4-<pid>-...` whose pid no longer runs.
pub fn remove_stale(tether: Option<&Path>) -> Vec<String> {
    let dead = |name: &str| {
        name.strip_prefix(&format!("{PREFIX}-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| {
                pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
            })
    };
    let mut removed = Vec::new();
    if let Ok(entries) = fs::read_dir("/sys/fs/bpf") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if dead(&name) {
                if let Some(binary) = tether {
                    let _ = Command::new(binary)
                        .args(["cleanup", "--pin-dir"])
                        .arg(entry.path())
                        .stdin(Stdio::null())
                        .output();
                }
                let _ = fs::remove_dir_all(entry.path());
                removed.push(entry.path().display().to_string());
            }
        }
    }
    if let Ok(entries) = fs::read_dir("/run/netns") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if dead(&name) && netns::delete(&name).is_ok() {
                removed.push(format!("netns {name}"));
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(cpu_mask(&[1]), "00000002");
        assert_eq!(cpu_mask(&[0, 33]), "00000002,00000001");
    }
}
