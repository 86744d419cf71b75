//! `cargo xtask bench l4`: the kernel data plane against nftables DNAT (kube-proxy's nftables
//! mode) and no translation at all, in one run.
//!
//! Two parts:
//!
//! 1. **Per-packet cost** of `tether_xdp` under `BPF_PROG_TEST_RUN` (see [`cost`]): ns/packet of
//!    a SYN, an established-flow packet and two misses, next to the empty program
//!    `tether_xdp_nop` in the same run. Target: established <= 3x empty.
//! 2. **End-to-end throughput** in a namespace topology the bench builds (see [`lab`]): client
//!    → node → three pods, the node steering the VIP with tether (XDP on its client-facing veth,
//!    TC reverse NAT on its egress), with nftables DNAT + conntrack, or not at all (direct, to a
//!    pod address). The same load for each (see [`load`]): bulk TCP (per-packet path) and
//!    connection rate (per-flow path). Everything the node does runs in its veths' NAPI kthreads,
//!    pinned to the node CPU; their CPU time is the node's cost, and throughput per node CPU
//!    is compared "at the same CPU". Target: tether >= 1.5x nftables there.
//!
//! Root only. A fresh lab (namespaces, servers, system) per system and round; a guard deletes
//! it on success, error and Ctrl-C.
use crate::built;
use crate::cpu::{cpu_list, parse_cpu_list, Snapshot, Usage};
use crate::machine::{command_text, have_program, nproc, utc_now, Machine};
use crate::summary::{
    self, disturbed_note, fail_unclean, failed_to_start, pct, percentile, round_order, save,
    sorted_unique, wait_quiet, Rounds, QUIET_PCT,
};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tether_testkit::fs::TempDir;
use tether_testkit::netns::mount_bpffs_if_needed;
use tether_testkit::process::{indent, run_checked};

mod chart;
mod cost;
mod interrupt;
mod lab;
mod load;
mod report;
mod topology;

use interrupt::{check_interrupted, install_signal_handlers, sleep_checked};
use lab::{Lab, Steering, TetherSetup};
use report::{
    cost_unit, fmt_throughput, print_results, ratios, summarize, target, Cell, CpuUse, Report,
    Sample, Scenario, Settings, System,
};
/// TCP payload per full-size packet on a 1500-byte MTU with timestamps: for packets/s estimates.
const MSS: f64 = 1448.0;

#[derive(clap::Args)]
pub struct Options {
    /// Seconds of measured load per cell (system x scenario).
    #[arg(long, default_value_t = 8)]
    duration: u64,
    /// Seconds of unmeasured load before each cell.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Rounds of the whole matrix (system order rotates); cells report medians.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Systems to run.
    #[arg(long, value_enum, value_delimiter = ',',
          default_values_t = [System::Direct, System::Tether, System::TetherRedirect,
                              System::TetherStack, System::Nftables])]
    systems: Vec<System>,
    /// Scenarios to run.
    #[arg(long, value_enum, value_delimiter = ',',
          default_values_t = [Scenario::Bulk, Scenario::ConnRate, Scenario::Udp])]
    scenarios: Vec<Scenario>,
    /// Bulk: parallel TCP streams.
    #[arg(long, default_value_t = 4)]
    streams: usize,
    /// Connection rate: connections kept in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Transport checksums on the client's and pods' veths: offload (partial checksums, nothing
    /// computed in software, as with a NIC) or complete (offload off, as the tests do).
    #[arg(long, value_enum, default_value_t = lab::Checksums::Offload)]
    checksums: lab::Checksums,
    /// How the client's frames reach the node: through a "wire" that hands the node's veth raw
    /// frames, as a NIC's ring does (native XDP then runs before any skb exists), or veth to
    /// veth (native XDP on a veth copies every locally-sent skb first).
    #[arg(long, value_enum, default_value_t = lab::Ingress::Wire)]
    ingress: lab::Ingress,
    /// Where the pods' kernel receive processing runs: on the load CPU(s) in their own NAPI
    /// kthreads (the node CPU then shows the data plane alone), or on the node's CPU in softirq
    /// as on a real node (the node CPU then includes the pods' receive work).
    #[arg(long, value_enum, default_value_t = lab::PodReceive::Load)]
    pod_receive: lab::PodReceive,
    /// XDP attach mode for tether (native or skb).
    #[arg(long, default_value = "native", value_parser = ["native", "skb"])]
    xdp_mode: String,
    /// CPU(s) for the node's packet processing (its NAPI kthreads) and the cost runs; default 0.
    #[arg(long)]
    node_cpus: Option<String>,
    /// CPU(s) for the client, the pods and their packet processing; default all but the node's.
    #[arg(long)]
    load_cpus: Option<String>,
    /// BPF_PROG_TEST_RUN rounds (medians are reported).
    #[arg(long, default_value_t = 7)]
    cost_rounds: u32,
    /// BPF_PROG_TEST_RUN repeats per fixture and round (the SYN fixture: 1000, its chain).
    #[arg(long, default_value_t = 1_000_000)]
    cost_repeat: u32,
    /// Only the per-packet cost part.
    #[arg(long, conflicts_with = "skip_cost")]
    cost_only: bool,
    /// Skip the per-packet cost part.
    #[arg(long)]
    skip_cost: bool,
    /// Before each cell, wait up to this many seconds for other processes to go quiet
    /// (< 10% of a CPU, I/O stalls < 10% of the time); 0 to not wait.
    #[arg(long, default_value_t = 15)]
    quiet_wait: u64,
    /// Use the kernel object and tether binary already built (`cargo xtask` then builds
    /// tether-bench alone).
    #[arg(long)]
    skip_build: bool,
    /// Where to write l4-*.json and l4-latest.png (default: bench/results).
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

// ---------------------------------------------------------------------------------------------
// Setup

fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!(
            "cargo xtask bench l4 needs root (it loads BPF programs, creates network namespaces \
             and nftables rules); effective uid is {euid}. Run it as root, e.g. \
             `sudo -E cargo xtask bench l4`"
        );
    }
    Ok(())
}

/// Installs the Debian packages providing `programs` that are missing.
fn ensure_programs(programs: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = programs
        .iter()
        .filter(|(program, _)| {
            !have_program(program) && !have_program(&format!("/usr/sbin/{program}"))
        })
        .map(|(_, package)| *package)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !have_program("apt-get") {
        bail!(
            "missing {}; install them (no apt-get here)",
            missing.join(", ")
        );
    }
    println!("installing {} (apt-get)", missing.join(", "));
    let install = |update: bool| -> Result<bool> {
        if update {
            run_checked(Command::new("apt-get").args(["update", "-q"]))?;
        }
        Ok(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("run apt-get")?
            .success())
    };
    if !install(false)? && !install(true)? {
        bail!("apt-get install {} failed", missing.join(" "));
    }
    Ok(())
}

/// The kernel object and the tether binary, and a note when tether's release build failed and
/// the binary built earlier is used.
fn built_parts(root: &Path) -> Result<(PathBuf, PathBuf, Option<String>)> {
    let binary = built::bin_dir().join("tether");
    let object = built::kernel_object(root);
    if !object.is_file() {
        bail!(
            "no kernel object at {}; run `cargo xtask build-ebpf`",
            object.display()
        );
    }
    let note = built::build_failure().map(|error| {
        format!(
            "the release build of tether failed ({error}); using the binary already in \
             target/release (built earlier)"
        )
    });
    Ok((object, binary, note))
}

fn pinning(options: &Options) -> Result<(Vec<usize>, Vec<usize>)> {
    let n = nproc();
    let node = match &options.node_cpus {
        Some(list) => parse_cpu_list(list)?,
        None => vec![0],
    };
    let load = match &options.load_cpus {
        Some(list) => parse_cpu_list(list)?,
        None if n >= 2 => (0..n).filter(|c| !node.contains(c)).collect(),
        None => vec![0],
    };
    if let Some(cpu) = node.iter().chain(&load).find(|&&c| c >= n) {
        bail!("CPU {cpu} does not exist here ({n} CPUs)");
    }
    if node.iter().any(|c| load.contains(c)) {
        eprintln!(
            "warning: the node and load CPU sets overlap: the client's and pods' receive \
             processing may then be charged to the node"
        );
    }
    Ok((node, load))
}

// ---------------------------------------------------------------------------------------------
// Run

struct Ctx<'a> {
    options: &'a Options,
    dir: PathBuf,
    binary: PathBuf,
    object: PathBuf,
    node_cpus: Vec<usize>,
    load_cpus: Vec<usize>,
    scenarios: Vec<Scenario>,
}

pub fn run(options: &Options) -> Result<()> {
    require_root()?;
    if options.duration == 0
        || options.rounds == 0
        || options.streams == 0
        || options.concurrency == 0
    {
        bail!("--duration, --rounds, --streams and --concurrency must be positive");
    }
    install_signal_handlers();
    ensure_programs(&[("ip", "iproute2"), ("tc", "iproute2"), ("nft", "nftables")])?;
    mount_bpffs_if_needed();

    let systems = sorted_unique(&options.systems);
    let scenarios = sorted_unique(&options.scenarios);
    let root = built::workspace_root();
    let out_dir = summary::out_dir(options.out_dir.as_ref(), &root);
    let (object, binary, build_note) = built_parts(&root)?;
    let (node_cpus, load_cpus) = pinning(options)?;
    for stale in lab::remove_stale(binary.is_file().then_some(binary.as_path())) {
        println!("removed {stale} (left by an earlier run that was killed)");
    }
    let machine = Machine::probe(&root);
    let tools = tools();
    let (timestamp, stamp) = utc_now();
    let temp = TempDir::new("bench-l4")?;
    let ctx = Ctx {
        options,
        dir: temp.path().to_path_buf(),
        binary,
        object,
        node_cpus,
        load_cpus,
        scenarios: scenarios.clone(),
    };
    print_header(&ctx, &machine, &tools);
    let mut notes: Vec<String> = build_note.into_iter().collect();
    if nproc() < 2 {
        notes.push(
            "one CPU: the node's cost cannot be separated from the load's; numbers are indicative"
                .into(),
        );
    }

    // Part 1: ns/packet.
    let (cost, cost_error) = if options.skip_cost {
        (None, None)
    } else {
        println!(
            "per-packet cost (BPF_PROG_TEST_RUN, pinned to CPU {}):",
            cpu_list(&ctx.node_cpus[..1])
        );
        quiet(options.quiet_wait)?;
        let before = Snapshot::take();
        let measured = cost::measure(
            &ctx.object,
            cost::Options {
                rounds: options.cost_rounds,
                repeat: options.cost_repeat,
            },
            ctx.node_cpus.first().copied(),
        );
        let after = Snapshot::take();
        match measured {
            Ok(mut report) => {
                if let (Some(b), Some(a)) = (&before, &after) {
                    let usage = Snapshot::usage(b, a, None, &[], &[]);
                    report.other_cpu_pct = usage.foreign_pct;
                    report.io_pressure_pct = usage.io_pressure_pct;
                    if usage.disturbed(QUIET_PCT) {
                        notes.push(format!(
                            "ns/packet: other processes used {} of a CPU and stalled on I/O {} of \
                             the time while it was measured; rerun on an idle machine",
                            pct(usage.foreign_pct),
                            pct(usage.io_pressure_pct)
                        ));
                    }
                }
                print_cost(&report);
                (Some(report), None)
            }
            Err(error) => {
                println!("  FAILED: {error:#}");
                (None, Some(format!("{error:#}")))
            }
        }
    };
    check_interrupted()?;

    // Part 2: throughput.
    let mut acc: BTreeMap<(System, Scenario), Rounds<Sample>> = BTreeMap::new();
    if !options.cost_only {
        println!();
        println!(
            "throughput (client -> node -> pods, {} s per cell after {} s warmup):",
            options.duration, options.warmup
        );
        for round in 1..=options.rounds {
            if options.rounds > 1 {
                println!("round {round}/{}", options.rounds);
            }
            for system in round_order(&systems, round) {
                run_system(&ctx, system, round, &mut acc)?;
            }
        }
    }

    let cells: Vec<Cell> = if options.cost_only {
        Vec::new()
    } else {
        systems
            .iter()
            .flat_map(|&sys| scenarios.iter().map(move |&sc| (sys, sc)))
            .map(|(sys, sc)| summarize(sys, sc, acc.remove(&(sys, sc)).unwrap_or_default()))
            .collect()
    };
    let ratios = ratios(&cells, &scenarios);
    let target = target(&cells, &scenarios, cost.as_ref());
    let report = Report {
        bench: "l4",
        timestamp,
        tools,
        settings: settings(&ctx),
        machine,
        cost,
        cost_error,
        cells,
        ratios,
        target,
        notes,
    };
    print_results(&report);
    save(&out_dir, &root, "l4", &stamp, &report, chart::draw)?;

    let mut failed: Vec<String> = report
        .cells
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{}/{}", c.system.name(), c.scenario.name()))
        .collect();
    if report.cost_error.is_some() {
        failed.push("per-packet cost".into());
    }
    fail_unclean(&failed, "part(s)")
}

fn tools() -> BTreeMap<String, String> {
    let mut tools = BTreeMap::new();
    let first = |program: &str, args: &[&str]| {
        command_text(Command::new(program).args(args)).and_then(|t| {
            t.lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .map(str::to_string)
        })
    };
    if let Some(v) = first("nft", &["--version"]) {
        tools.insert("nft".into(), v);
    }
    if let Some(v) = first("ip", &["-V"]) {
        tools.insert("iproute2".into(), v);
    }
    tools
}

/// One system in a fresh lab: start it, check it, run its scenarios. Failures land in the
/// cells; only an interruption stops the run.
fn run_system(
    ctx: &Ctx,
    system: System,
    round: u32,
    acc: &mut BTreeMap<(System, Scenario), Rounds<Sample>>,
) -> Result<()> {
    let mut lab = match prepare(ctx, system) {
        Ok(lab) => lab,
        Err(error) => {
            check_interrupted()?;
            println!(
                "  {:<9} FAILED TO START\n{}",
                system.name(),
                indent(&format!("{error:#}"))
            );
            let message = format!("{} failed to start: {error:#}", system.name());
            failed_to_start(acc, system, &ctx.scenarios, &message);
            return Ok(());
        }
    };
    for &scenario in &ctx.scenarios {
        print!("  {:<9} {:<10} ", system.name(), scenario.name());
        let _ = std::io::stdout().flush();
        let entry = acc.entry((system, scenario)).or_default();
        match measure(ctx, &mut lab, system, scenario, round, &mut entry.notes) {
            Ok(sample) => {
                println!(
                    "{:>10} {:<6}  node cpu {:>4}  per node CPU {:>10}  node cost {:>8}  load cpu {} other {}{}{}",
                    fmt_throughput(scenario, sample.throughput),
                    scenario.unit(),
                    pct(Some(sample.node_cpu_pct)),
                    sample
                        .per_node_cpu
                        .map(|v| fmt_throughput(scenario, v))
                        .unwrap_or_else(|| "-".into()),
                    sample
                        .node_cost
                        .map(|v| format!("{v:.0} {}", cost_unit(scenario)))
                        .unwrap_or_else(|| "-".into()),
                    pct(sample.cpu.load_cpu_busy_pct),
                    pct(sample.cpu.other_pct),
                    if sample.sender_drops.is_empty() {
                        String::new()
                    } else {
                        format!("  ring drops {:?}", sample.sender_drops)
                    },
                    if sample.errors > 0 {
                        format!("  !! {} errors {:?}", sample.errors, sample.error_kinds)
                    } else {
                        String::new()
                    }
                );
                entry.samples.push(sample);
            }
            Err(error) => {
                check_interrupted()?;
                println!("FAILED\n{}", indent(&format!("{error:#}")));
                entry.errors.push(format!("{error:#}"));
            }
        }
    }
    drop(lab);
    check_interrupted()
}

/// A fresh lab with its servers and `system` steering, checked end to end.
fn prepare(ctx: &Ctx, system: System) -> Result<Lab> {
    let mut lab = Lab::build(
        &ctx.node_cpus,
        &ctx.load_cpus,
        ctx.options.checksums,
        ctx.options.ingress,
        ctx.options.pod_receive,
        &ctx.dir,
    )?;
    lab.servers = Some(load::Servers::start(&lab.pods, &ctx.load_cpus)?);
    match system.steering() {
        Steering::Direct => {}
        Steering::Tether => lab.start_tether(&TetherSetup {
            binary: &ctx.binary,
            object: &ctx.object,
            xdp_mode: &ctx.options.xdp_mode,
            pod_delivery: match system {
                System::Tether => Some("peer"),
                System::TetherRedirect => Some("redirect"),
                _ => None,
            },
        })?,
        Steering::Nftables => lab.start_nftables()?,
    }
    let ((rr_ip, rr_port), (bulk_ip, bulk_port)) = Lab::targets(system.steering());
    let (rr, bulk) = (
        SocketAddrV4::new(rr_ip, rr_port),
        SocketAddrV4::new(bulk_ip, bulk_port),
    );
    let pods =
        load::probe_rr(&lab.client, rr, 12).context("probing the connection-rate service")?;
    let distinct: BTreeSet<usize> = pods.iter().copied().collect();
    match system {
        System::Direct if distinct != BTreeSet::from([0]) => {
            bail!("direct connections to pod 0 reached pods {distinct:?}")
        }
        System::Tether | System::TetherRedirect | System::TetherStack | System::Nftables
            if distinct.len() < 2 =>
        {
            bail!("12 connections to the VIP all reached pod(s) {distinct:?}: not load balanced")
        }
        _ => {}
    }
    let servers = lab.servers.as_ref().context("servers")?;
    load::probe_bulk(&lab.client, servers, bulk, 1 << 20).context("probing the bulk service")?;
    let (udp_ip, udp_port) = Lab::udp_target(system.steering());
    load::probe_udp(
        &lab.client,
        servers,
        SocketAddrV4::new(udp_ip, udp_port),
        20,
    )
    .context("probing the UDP service")?;
    match system {
        System::Tether | System::TetherRedirect | System::TetherStack => {
            let stats = lab.tether_stats()?;
            let counter = |name: &str| stats["counters"][name].as_u64().unwrap_or(0);
            if counter("new_flows") < 13 || counter("reply_nat") == 0 {
                bail!(
                    "the probes did not go through tether's kernel path (new_flows {}, reply_nat \
                     {}):\n{}",
                    counter("new_flows"),
                    counter("reply_nat"),
                    lab.tether_log_tail()
                );
            }
            // Each path is what its name says: redirected both ways, or not at all.
            let (redirected, replies_redirected) =
                (counter("redirected"), counter("reply_redirected"));
            let redirects = system != System::TetherStack;
            if redirects != (redirected > 0) || redirects != (replies_redirected > 0) {
                bail!(
                    "{}: {redirected} packets redirected to pods and {replies_redirected} replies \
                     redirected to the client during the probes:\n{}",
                    system.name(),
                    lab.tether_log_tail()
                );
            }
        }
        System::Nftables => {
            if lab.conntrack_count().unwrap_or(0) == 0 {
                bail!("the probes left no conntrack entry in the node: nftables did not see them");
            }
        }
        System::Direct => {}
    }
    Ok(lab)
}

struct Reading {
    at: Instant,
    node_ticks: u64,
    wire_ticks: u64,
    snapshot: Option<Snapshot>,
    units: u64,
    errors: u64,
    error_kinds: [u64; 4],
    served: Vec<u64>,
    softnet_drops: u64,
    sender_drops: BTreeMap<String, u64>,
    node_rx_packets: u64,
}

fn reading(lab: &Lab, scenario: Scenario, load: &load::Load, pids: &[i32]) -> Reading {
    let servers = lab.servers.as_ref();
    Reading {
        at: Instant::now(),
        node_ticks: lab::task_ticks(pids),
        wire_ticks: lab::task_ticks(&lab.load_threads()),
        snapshot: Snapshot::take(),
        units: match scenario {
            Scenario::Bulk => servers.map_or(0, load::Servers::bulk_bytes),
            Scenario::ConnRate => load.progress.done.load(Ordering::Relaxed),
            Scenario::Udp => servers.map_or(0, load::Servers::datagrams),
        },
        errors: load.progress.errors.load(Ordering::Relaxed),
        error_kinds: std::array::from_fn(|i| load.progress.error_kinds[i].load(Ordering::Relaxed)),
        served: servers.map(load::Servers::served).unwrap_or_default(),
        softnet_drops: lab::softnet_drops(),
        sender_drops: lab.sender_drops(),
        node_rx_packets: lab.node_rx_packets(),
    }
}

fn measure(
    ctx: &Ctx,
    lab: &mut Lab,
    system: System,
    scenario: Scenario,
    round: u32,
    notes: &mut BTreeSet<String>,
) -> Result<Sample> {
    let options = ctx.options;
    quiet(options.quiet_wait)?;
    let ((rr_ip, rr_port), (bulk_ip, bulk_port)) = Lab::targets(system.steering());
    let xdp_before = match system.is_tether() {
        true => Some(xdp_packets(lab)?),
        false => None,
    };
    let load = match scenario {
        Scenario::Bulk => load::bulk(
            &lab.client,
            SocketAddrV4::new(bulk_ip, bulk_port),
            options.streams,
            &ctx.load_cpus,
        ),
        Scenario::ConnRate => load::connection_rate(
            &lab.client,
            SocketAddrV4::new(rr_ip, rr_port),
            options.concurrency,
            &ctx.load_cpus,
        ),
        Scenario::Udp => {
            let (ip, port) = Lab::udp_target(system.steering());
            load::udp(&lab.client, SocketAddrV4::new(ip, port), &ctx.load_cpus)
        }
    };
    sleep_checked(Duration::from_secs(options.warmup))?;
    let pids = lab.pin_node_threads()?;
    let before = reading(lab, scenario, &load, &pids);
    load.progress.recording.store(true, Ordering::Relaxed);
    sleep_checked(Duration::from_secs(options.duration))?;
    let after = reading(lab, scenario, &load, &pids);
    load.progress.recording.store(false, Ordering::Relaxed);
    let mut latencies = load.finish();
    if system.is_tether() {
        lab.tether_running()?;
    }
    let xdp_steered_packets = match xdp_before {
        Some(b) => Some(xdp_packets(lab)?.saturating_sub(b)),
        None => None,
    };
    let conntrack_entries = match system {
        System::Nftables => lab.conntrack_count(),
        _ => None,
    };

    let seconds = after.at.duration_since(before.at).as_secs_f64();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let node_ticks = after.node_ticks.saturating_sub(before.node_ticks) as f64;
    let node_cpu_pct = 100.0 * node_ticks / hz / seconds;
    let wire_cpu_pct =
        100.0 * after.wire_ticks.saturating_sub(before.wire_ticks) as f64 / hz / seconds;
    let units = after.units.saturating_sub(before.units);
    let errors = after.errors.saturating_sub(before.errors);
    let throughput = match scenario {
        Scenario::Bulk => units as f64 * 8.0 / seconds / 1e9,
        Scenario::ConnRate => units as f64 / seconds,
        Scenario::Udp => units as f64 / seconds / 1e6,
    };
    let per_node_cpu = (node_cpu_pct > 0.0).then(|| throughput / (node_cpu_pct / 100.0));
    let node_seconds = node_ticks / hz;
    let node_packets = after.node_rx_packets.saturating_sub(before.node_rx_packets);
    let node_cost = match scenario {
        // Per packet the node received from the client (retransmissions included).
        Scenario::Bulk | Scenario::Udp => {
            (node_packets > 0).then(|| node_seconds * 1e9 / node_packets as f64)
        }
        Scenario::ConnRate => (units > 0).then(|| node_seconds * 1e6 / units as f64),
    };
    let usage = match (&before.snapshot, &after.snapshot) {
        (Some(b), Some(a)) => Snapshot::usage(b, a, None, &ctx.node_cpus, &ctx.load_cpus),
        _ => Usage::default(),
    };
    // Both measured the same way for every system: the node's kthreads, and the load CPUs'
    // busy share (which includes the pods' and the wire's kthreads, pinned there).
    let path_cpus = usage
        .load_cpu_busy_pct
        .map(|busy| (node_cpu_pct + busy * ctx.load_cpus.len() as f64) / 100.0);
    let per_path_cpu = path_cpus.filter(|c| *c > 0.0).map(|c| throughput / c);
    let cpu = CpuUse {
        node_threads_pct: Some(node_cpu_pct),
        node_cpu_busy_pct: usage.proxy_cpu_busy_pct,
        load_cpu_busy_pct: usage.load_cpu_busy_pct,
        // The node's and the wire's kthreads are not in this process's tree: take them out of
        // "foreign".
        other_pct: usage
            .foreign_pct
            .map(|f| (f - node_cpu_pct - wire_cpu_pct).max(0.0)),
        io_pressure_pct: usage.io_pressure_pct,
        steal_pct: usage.proxy_cpu_steal_pct,
    };
    if cpu.disturbed() {
        notes.insert(disturbed_note(
            &format!("{}/{}", system.name(), scenario.name()),
            round,
            cpu.other_pct,
            cpu.io_pressure_pct,
        ));
    }
    latencies.sort_unstable();
    let latencies: Vec<f64> = latencies.into_iter().map(f64::from).collect();
    let (latency_p50_us, latency_p99_us) =
        (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    let pods: Vec<u64> = after
        .served
        .iter()
        .zip(before.served.iter().chain(std::iter::repeat(&0)))
        .map(|(a, b)| a.saturating_sub(*b))
        .collect();
    if units == 0 {
        bail!(
            "no {} got through in {seconds:.1} s ({errors} errors)",
            match scenario {
                Scenario::Bulk => "bytes",
                Scenario::ConnRate => "connections",
                Scenario::Udp => "datagrams",
            }
        );
    }
    if let Some(steered) = xdp_steered_packets {
        // Every full-size data packet of the cell went through the XDP program.
        let expected = match scenario {
            Scenario::Bulk => units as f64 / MSS,
            Scenario::ConnRate => units as f64 * 3.0,
            Scenario::Udp => units as f64,
        };
        if (steered as f64) < 0.9 * expected {
            bail!(
                "tether's XDP program steered {steered} packets, fewer than the {expected:.0} \
                 the measured traffic needs: the traffic did not take the kernel path"
            );
        }
    }
    Ok(Sample {
        round,
        seconds,
        throughput,
        units,
        errors,
        error_kinds: load::ERROR_KINDS
            .iter()
            .enumerate()
            .map(|(i, name)| {
                (
                    name.to_string(),
                    after.error_kinds[i].saturating_sub(before.error_kinds[i]),
                )
            })
            .filter(|(_, n)| *n > 0)
            .collect(),
        node_cpu_pct,
        per_node_cpu,
        per_path_cpu,
        node_cost,
        latency_p50_us,
        latency_p99_us,
        pods: if scenario == Scenario::ConnRate {
            pods
        } else {
            Vec::new()
        },
        softnet_drops: after.softnet_drops.saturating_sub(before.softnet_drops),
        sender_drops: after
            .sender_drops
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.saturating_sub(*before.sender_drops.get(k).unwrap_or(&0)),
                )
            })
            .filter(|(_, v)| *v > 0)
            .collect(),
        node_rx_packets: node_packets,
        conntrack_entries,
        xdp_steered_packets,
        cpu,
    })
}

/// Waits (at most `seconds`) for other processes to go quiet, and says so when it waited.
fn quiet(seconds: u64) -> Result<()> {
    wait_quiet(seconds);
    check_interrupted()
}

/// Packets tether's XDP program steered so far (all services).
fn xdp_packets(lab: &Lab) -> Result<u64> {
    let stats = lab.tether_stats()?;
    Ok(stats["traffic"]["packets"].as_u64().unwrap_or(0))
}

fn settings(ctx: &Ctx) -> Settings {
    let o = ctx.options;
    Settings {
        duration_s: o.duration,
        warmup_s: o.warmup,
        rounds: o.rounds,
        streams: o.streams,
        concurrency: o.concurrency,
        xdp_mode: o.xdp_mode.clone(),
        checksums: o.checksums,
        ingress: o.ingress,
        pod_receive: o.pod_receive,
        node_cpus: cpu_list(&ctx.node_cpus),
        load_cpus: cpu_list(&ctx.load_cpus),
        topology: format!(
            "namespaces client -> {}node -> 3 pods over veth pairs, MTU 1500; node veths: GRO + \
             threaded NAPI, kthreads pinned to the node CPU(s) at SCHED_FIFO 1; client/pod veths: \
             TSO and GSO off (MTU frames reach the node), noqueue (a full ring drops), client RPS \
             to the load CPU(s); pods' receive processing: {}; pod checksums: {}",
            match o.ingress {
                lab::Ingress::Wire => {
                    "wire (XDP redirect between two veths, NAPI on the load CPU: the node's veth \
                     receives raw frames as from a NIC ring; client checksums complete) -> "
                }
                lab::Ingress::Veth => "",
            },
            match o.pod_receive {
                lab::PodReceive::Load => {
                    "on the load CPU(s) (threaded NAPI at SCHED_FIFO 1, RPS there)"
                }
                lab::PodReceive::Node => "on the node CPU (softirq where scheduled, no RPS)",
            },
            match o.checksums {
                lab::Checksums::Offload => "offload (partial, nothing computed in software)",
                lab::Checksums::Complete => "complete (tx offload off, verified in software)",
            }
        ),
        systems: BTreeMap::from([
            (
                "direct".into(),
                "client to pod 0's address, routed by the node, no translation".into(),
            ),
            (
                "tether".into(),
                format!(
                    "target/release/tether run: XDP ({}) on the node's client-facing veth, TC \
                     reverse NAT on its egress; services VIP:{} -> 3 pods (Maglev), VIP:{} -> \
                     pod 0",
                    o.xdp_mode,
                    topology::RR_PORT,
                    topology::BULK_PORT
                ),
            ),
            (
                "nftables".into(),
                "kube-proxy nftables-mode shape: nat prerouting -> verdict map on daddr . \
                 l4proto . dport -> service chain numgen random mod N -> endpoint chain dnat; \
                 conntrack reverse NAT; nat postrouting masquerade-mark check; forward ct state \
                 invalid drop"
                    .into(),
            ),
        ]),
        scenarios: BTreeMap::from([
            (
                "bulk".into(),
                format!(
                    "{} TCP streams writing 256 KiB buffers to VIP:{} (pod 0's sink); Gbit/s of \
                     payload received",
                    o.streams,
                    topology::BULK_PORT
                ),
            ),
            (
                "conn-rate".into(),
                format!(
                    "{} connections in flight to VIP:{} (3 pods): connect, 64-byte request, \
                     128-byte answer, pod closes, client closes; connections/s",
                    o.concurrency,
                    topology::RR_PORT
                ),
            ),
        ]),
        node_cost: "CPU time of the node veths' NAPI kthreads (everything the node does to a \
                    packet: XDP, GRO, forwarding, netfilter, TC, the transmit into the next veth), \
                    in % of one CPU; per node CPU = throughput / that share; node cost = that \
                    time per packet the node received from the client (bulk) or per connection"
            .into(),
        tether_binary: Some(ctx.binary.display().to_string()),
    }
}

// ---------------------------------------------------------------------------------------------
// Printing

fn print_header(ctx: &Ctx, machine: &Machine, tools: &BTreeMap<String, String>) {
    let unknown = || "?".to_string();
    let o = ctx.options;
    let tools = format!(
        "{} | {}",
        tools.get("nft").cloned().unwrap_or_else(unknown),
        tools.get("iproute2").cloned().unwrap_or_else(unknown)
    );
    summary::print_header("l4", machine, &tools);
    println!("kernel object: {}", ctx.object.display());
    println!(
        "pinning: node packet processing (NAPI kthreads) -> CPU {}; client, pods and their \
         receive processing -> CPU {}",
        cpu_list(&ctx.node_cpus),
        cpu_list(&ctx.load_cpus)
    );
    if !o.cost_only {
        println!(
            "load: bulk {} streams, conn-rate {} in flight; {} s measured after {} s warmup per \
             cell, {} round(s); tether XDP mode {}",
            o.streams, o.concurrency, o.duration, o.warmup, o.rounds, o.xdp_mode
        );
    }
    println!();
}

fn print_cost(report: &cost::CostReport) {
    println!(
        "  {:<36} {:>10} {:>17} {:>9}",
        "fixture", "ns/packet", "(min-max)", "vs empty"
    );
    for f in &report.fixtures {
        println!(
            "  {:<36} {:>10} {:>17} {:>9}",
            f.label,
            f.ns_per_packet.map_or("-".into(), |v| format!("{v:.1}")),
            match (f.ns_min, f.ns_max) {
                (Some(lo), Some(hi)) => format!("({lo:.1}-{hi:.1})"),
                _ => String::new(),
            },
            f.ratio_to_empty
                .map_or("1.00x".into(), |r| format!("{r:.2}x"))
        );
    }
    println!(
        "  (medians of {} rounds of {} runs; SYN: {} runs per round, each a new flow; other \
         processes meanwhile: cpu {}, io {})",
        report.rounds,
        report.repeat,
        report.syn_repeat,
        pct(report.other_cpu_pct),
        pct(report.io_pressure_pct)
    );
    println!(
        "  target: {}: {}  {}",
        report.target.rule,
        if report.target.pass { "PASS" } else { "MISS" },
        report.target.reason
    );
}
