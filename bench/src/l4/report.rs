//! What `bench l4` reports: its systems and scenarios, the cells (medians over rounds), the
//! ratios and the target lines, printed as a table and saved as l4-*.json.
use super::cost::CostReport;
use super::lab::{Checksums, Ingress, PodReceive, Steering};
use crate::machine::Machine;
use crate::summary::{
    self, find, median_of, pct, ratio, spread_of, status, thousands, times, vs_baseline, Rounds,
    QUIET_PCT,
};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// The throughput bar (tether over nftables, per node CPU).
pub const TARGET_RATIO: f64 = 1.5;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    Direct,
    /// tether with its pod interfaces listed (`podDelivery: peer`, the default): steered
    /// packets go up the node's stack as far as GRO, then into the pod's namespace
    /// (`bpf_redirect_peer`); replies redirected out of the client-facing veth.
    Tether,
    /// tether with `podDelivery: redirect`: XDP_REDIRECT into the pods' veths.
    TetherRedirect,
    /// tether without pod interfaces: XDP_PASS, the node's stack forwards both ways.
    TetherStack,
    Nftables,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Direct => "direct",
            System::Tether => "tether",
            System::TetherRedirect => "tether-redirect",
            System::TetherStack => "tether-stack",
            System::Nftables => "nftables",
        }
    }

    pub fn is_tether(self) -> bool {
        matches!(
            self,
            System::Tether | System::TetherRedirect | System::TetherStack
        )
    }

    pub fn steering(self) -> Steering {
        match self {
            System::Direct => Steering::Direct,
            System::Tether | System::TetherRedirect | System::TetherStack => Steering::Tether,
            System::Nftables => Steering::Nftables,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    Bulk,
    ConnRate,
    Udp,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Bulk => "bulk",
            Scenario::ConnRate => "conn-rate",
            Scenario::Udp => "udp",
        }
    }

    /// The throughput unit.
    pub fn unit(self) -> &'static str {
        match self {
            Scenario::Bulk => "Gbit/s",
            Scenario::ConnRate => "conn/s",
            Scenario::Udp => "Mpkt/s",
        }
    }
}

#[derive(Serialize)]
pub struct Report {
    pub bench: &'static str,
    pub timestamp: String,
    pub machine: Machine,
    pub tools: BTreeMap<String, String>,
    pub settings: Settings,
    pub cost: Option<CostReport>,
    pub cost_error: Option<String>,
    pub cells: Vec<Cell>,
    pub ratios: Vec<Ratio>,
    pub target: Target,
    pub notes: Vec<String>,
}

#[derive(Serialize)]
pub struct Settings {
    pub duration_s: u64,
    pub warmup_s: u64,
    pub rounds: u32,
    pub streams: usize,
    pub concurrency: usize,
    pub xdp_mode: String,
    pub checksums: Checksums,
    pub ingress: Ingress,
    pub pod_receive: PodReceive,
    pub node_cpus: String,
    pub load_cpus: String,
    pub topology: String,
    pub systems: BTreeMap<String, String>,
    pub scenarios: BTreeMap<String, String>,
    pub node_cost: String,
    pub tether_binary: Option<String>,
}

/// One system under one scenario; medians over rounds.
#[derive(Serialize)]
pub struct Cell {
    pub system: System,
    pub scenario: Scenario,
    pub ok: bool,
    /// Every round of this cell ran while the machine was busy.
    pub disturbed: bool,
    pub samples_used: usize,
    pub error: Option<String>,
    pub notes: Vec<String>,
    /// Gbit/s (bulk) or connections/s (conn-rate).
    pub throughput: Option<f64>,
    pub throughput_min: Option<f64>,
    pub throughput_max: Option<f64>,
    /// The node's NAPI kthreads' CPU time, % of one CPU.
    pub node_cpu_pct: Option<f64>,
    /// Throughput per node CPU: `throughput / (node_cpu_pct / 100)` (median of the rounds').
    pub per_node_cpu: Option<f64>,
    pub per_node_cpu_min: Option<f64>,
    pub per_node_cpu_max: Option<f64>,
    /// Throughput per CPU of the whole path (node, client, pods, wire); see [`Sample`].
    pub per_path_cpu: Option<f64>,
    /// Node CPU per unit: ns per packet received from the client (bulk) or µs per connection.
    pub node_cost: Option<f64>,
    pub node_cost_unit: &'static str,
    pub latency_p50_us: Option<f64>,
    pub latency_p99_us: Option<f64>,
    pub cpu: CpuUse,
    pub samples: Vec<Sample>,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct CpuUse {
    /// The node's NAPI kthreads, % of one CPU (the node's cost).
    pub node_threads_pct: Option<f64>,
    /// Busy share (0–100 %) of the node CPU(s) (includes other processes placed there).
    pub node_cpu_busy_pct: Option<f64>,
    /// Busy share of the load CPU(s): ~100 % means the load side was the limit.
    pub load_cpu_busy_pct: Option<f64>,
    /// Processes outside this bench and the node's kthreads, % of one CPU.
    pub other_pct: Option<f64>,
    /// Share of wall time some task stalled on I/O (PSI): other users of the machine.
    pub io_pressure_pct: Option<f64>,
    pub steal_pct: Option<f64>,
}

impl CpuUse {
    pub fn disturbed(&self) -> bool {
        self.other_pct.is_some_and(|v| v >= QUIET_PCT)
            || self.io_pressure_pct.is_some_and(|v| v >= QUIET_PCT)
    }
}

#[derive(Serialize)]
pub struct Sample {
    pub round: u32,
    pub seconds: f64,
    pub throughput: f64,
    /// Bytes received by the pods' sinks (bulk), connections completed (conn-rate).
    pub units: u64,
    pub errors: u64,
    /// conn-rate: errors by kind.
    pub error_kinds: BTreeMap<String, u64>,
    pub node_cpu_pct: f64,
    pub per_node_cpu: Option<f64>,
    /// Throughput per CPU of the whole path: the node's kthreads plus the load CPU(s) (client,
    /// pods, wire). Work a system moves from the node to the pods shows here.
    pub per_path_cpu: Option<f64>,
    pub node_cost: Option<f64>,
    pub latency_p50_us: Option<f64>,
    pub latency_p99_us: Option<f64>,
    /// Connections answered per pod (conn-rate).
    pub pods: Vec<u64>,
    /// Backlog drops (/proc/net/softnet_stat) during the measurement.
    pub softnet_drops: u64,
    /// Packets the senders' veths dropped because the receiving ring was full, by sender.
    pub sender_drops: BTreeMap<String, u64>,
    /// Packets the node's client-facing veth received (bulk: the node cost's denominator).
    pub node_rx_packets: u64,
    /// nftables: conntrack entries in the node after the cell.
    pub conntrack_entries: Option<u64>,
    /// tether: packets its XDP program steered during the cell (warmup included).
    pub xdp_steered_packets: Option<u64>,
    pub cpu: CpuUse,
}

impl Sample {
    pub fn disturbed(&self) -> bool {
        self.cpu.disturbed()
    }
}

#[derive(Serialize)]
pub struct Ratio {
    pub scenario: Scenario,
    pub numerator: System,
    pub denominator: System,
    pub throughput: Option<f64>,
    pub per_node_cpu: Option<f64>,
    pub per_path_cpu: Option<f64>,
}

#[derive(Serialize)]
pub struct Target {
    pub rule: String,
    pub pass: bool,
    pub scenarios: Vec<TargetLine>,
    pub cost_rule: Option<String>,
    pub cost_pass: Option<bool>,
    pub cost_reason: Option<String>,
}

#[derive(Serialize)]
pub struct TargetLine {
    pub scenario: Scenario,
    pub pass: bool,
    pub per_node_cpu_ratio: Option<f64>,
    pub throughput_ratio: Option<f64>,
    /// Throughput per CPU of the whole path (node, client, pods), tether over nftables.
    pub per_path_cpu_ratio: Option<f64>,
    pub reason: String,
    /// Node cost above direct's (the NAT's own cost, in the node cost's unit): tether, nftables.
    pub tether_over_direct: Option<f64>,
    pub nftables_over_direct: Option<f64>,
    /// Set when direct (no NAT at all) is not 1.5x nftables per node CPU: then no NAT that keeps
    /// the kernel's forwarding path (XDP_PASS) can reach the target here.
    pub ceiling: Option<String>,
}

pub fn summarize(system: System, scenario: Scenario, rounds: Rounds<Sample>) -> Cell {
    let (used, disturbed) = rounds.used(Sample::disturbed);
    let med = |f: &dyn Fn(&Sample) -> Option<f64>| median_of(&used, f);
    let samples = &rounds.samples;
    let errors: u64 = samples.iter().map(|s| s.errors).sum();
    let units: u64 = samples.iter().map(|s| s.units).sum();
    // A handful of connection errors in millions is noise (a SYN lost to a full ring);
    // more than 0.1% is a system that does not work under load.
    let too_many = (errors > 0 && (errors as f64) > 0.001 * units as f64)
        .then(|| format!("{errors} load errors in {} round(s)", samples.len()));
    let problems = rounds.problems(too_many);
    let mut notes = rounds.notes.clone();
    if errors > 0 && problems.is_empty() {
        notes.insert(format!(
            "{}/{}: {errors} load errors (under 0.1%)",
            system.name(),
            scenario.name()
        ));
    }
    let (throughput_min, throughput_max) = spread_of(&used, |s| Some(s.throughput));
    let (per_min, per_max) = spread_of(&used, |s| s.per_node_cpu);
    Cell {
        system,
        scenario,
        ok: problems.is_empty(),
        disturbed,
        samples_used: used.len(),
        error: (!problems.is_empty()).then(|| problems.join("; ")),
        notes: notes.into_iter().collect(),
        throughput: med(&|s| Some(s.throughput)),
        throughput_min,
        throughput_max,
        node_cpu_pct: med(&|s| Some(s.node_cpu_pct)),
        per_node_cpu: med(&|s| s.per_node_cpu),
        per_node_cpu_min: per_min,
        per_node_cpu_max: per_max,
        per_path_cpu: med(&|s| s.per_path_cpu),
        node_cost: med(&|s| s.node_cost),
        node_cost_unit: cost_unit(scenario),
        latency_p50_us: med(&|s| s.latency_p50_us),
        latency_p99_us: med(&|s| s.latency_p99_us),
        cpu: CpuUse {
            node_threads_pct: med(&|s| s.cpu.node_threads_pct),
            node_cpu_busy_pct: med(&|s| s.cpu.node_cpu_busy_pct),
            load_cpu_busy_pct: med(&|s| s.cpu.load_cpu_busy_pct),
            other_pct: med(&|s| s.cpu.other_pct),
            io_pressure_pct: med(&|s| s.cpu.io_pressure_pct),
            steal_pct: med(&|s| s.cpu.steal_pct),
        },
        samples: rounds.samples,
    }
}

summary::cell_keys!(Cell, System = system, Scenario = scenario);

/// Ratios between two clean cells only.
pub fn ratios(cells: &[Cell], scenarios: &[Scenario]) -> Vec<Ratio> {
    const PAIRS: [(System, System); 7] = [
        (System::Tether, System::Nftables),
        (System::Tether, System::Direct),
        (System::TetherRedirect, System::Nftables),
        (System::TetherStack, System::Nftables),
        (System::Tether, System::TetherRedirect),
        (System::Tether, System::TetherStack),
        (System::Nftables, System::Direct),
    ];
    summary::pairs(cells, scenarios, &PAIRS)
        .into_iter()
        .map(|(scenario, a, b)| {
            let clean = a.ok && b.ok;
            Ratio {
                scenario,
                numerator: a.system,
                denominator: b.system,
                throughput: ratio(clean, a.throughput, b.throughput),
                per_node_cpu: ratio(clean, a.per_node_cpu, b.per_node_cpu),
                per_path_cpu: ratio(clean, a.per_path_cpu, b.per_path_cpu),
            }
        })
        .collect()
}

pub fn target(cells: &[Cell], scenarios: &[Scenario], cost: Option<&CostReport>) -> Target {
    let rule = format!(
        "tether >= {TARGET_RATIO}x nftables DNAT's throughput at the same node CPU \
         (throughput per node CPU), per scenario"
    );
    let lines: Vec<TargetLine> = if cells.is_empty() {
        Vec::new()
    } else {
        scenarios
            .iter()
            .map(|&scenario| {
                let t = find(cells, System::Tether, scenario);
                let n = find(cells, System::Nftables, scenario);
                let mut line = TargetLine {
                    scenario,
                    pass: false,
                    per_node_cpu_ratio: None,
                    throughput_ratio: None,
                    per_path_cpu_ratio: None,
                    reason: String::new(),
                    tether_over_direct: None,
                    nftables_over_direct: None,
                    ceiling: None,
                };
                let direct = find(cells, System::Direct, scenario).filter(|c| c.ok);
                match (t, n) {
                    (None, _) | (_, None) => line.reason = "tether or nftables was not run".into(),
                    (Some(t), _) if !t.ok => {
                        line.reason = format!("tether: {}", t.error.as_deref().unwrap_or("failed"));
                    }
                    (_, Some(n)) if !n.ok => {
                        line.reason =
                            format!("nftables: {}", n.error.as_deref().unwrap_or("failed"));
                    }
                    (Some(t), Some(n)) => {
                        if let (Some(tp), Some(np), Some(tt), Some(nt)) =
                            (t.per_node_cpu, n.per_node_cpu, t.throughput, n.throughput)
                        {
                            let ratio = tp / np;
                            line.per_node_cpu_ratio = Some(ratio);
                            line.throughput_ratio = Some(tt / nt);
                            line.per_path_cpu_ratio =
                                t.per_path_cpu.zip(n.per_path_cpu).map(|(t, n)| t / n);
                            line.pass = ratio >= TARGET_RATIO;
                            line.reason = format!(
                                "{ratio:.2}x per node CPU ({} vs {} {} per node CPU; node cost {} \
                                 vs {} {}); raw throughput {:.2}x; per CPU of the whole path \
                                 (node, client, pods) {}{}",
                                fmt_throughput(scenario, tp),
                                fmt_throughput(scenario, np),
                                scenario.unit(),
                                t.node_cost.map_or("-".into(), |v| format!("{v:.0}")),
                                n.node_cost.map_or("-".into(), |v| format!("{v:.0}")),
                                cost_unit(scenario),
                                tt / nt,
                                times(line.per_path_cpu_ratio),
                                if t.disturbed || n.disturbed {
                                    " [machine was busy: rerun on an idle machine]"
                                } else {
                                    ""
                                }
                            );
                            let direct_cost = direct.and_then(|d| d.node_cost);
                            if let (Some(d), Some(tc), Some(nc)) =
                                (direct_cost, t.node_cost, n.node_cost)
                            {
                                line.tether_over_direct = Some(tc - d);
                                line.nftables_over_direct = Some(nc - d);
                            }
                            if let Some(dp) = direct.and_then(|d| d.per_node_cpu) {
                                if dp / np < TARGET_RATIO {
                                    line.ceiling = Some(format!(
                                        "direct, with no NAT at all, is {:.2}x nftables per node \
                                         CPU: a NAT that keeps the kernel's forwarding path \
                                         (XDP_PASS) cannot reach {TARGET_RATIO}x here",
                                        dp / np
                                    ));
                                }
                            }
                        }
                    }
                }
                line
            })
            .collect()
    };
    Target {
        rule,
        pass: !lines.is_empty() && lines.iter().all(|l| l.pass),
        scenarios: lines,
        cost_rule: cost.map(|c| c.target.rule.clone()),
        cost_pass: cost.map(|c| c.target.pass),
        cost_reason: cost.map(|c| c.target.reason.clone()),
    }
}

pub fn print_results(report: &Report) {
    if !report.cells.is_empty() {
        println!();
        println!(
            "{:<10} {:<9} {:>10} {:>19} {:>9} {:>13} {:>12} {:>10} {:>9} {:>9} {:>9}  status",
            "scenario",
            "system",
            "throughput",
            "(min-max)",
            "node cpu",
            "per node CPU",
            "node cost",
            "p99",
            "vs direct",
            "load cpu",
            "other cpu"
        );
        for c in &report.cells {
            let s = c.scenario;
            let vs_direct = report
                .ratios
                .iter()
                .find(|r| {
                    r.scenario == s && r.numerator == c.system && r.denominator == System::Direct
                })
                .and_then(|r| r.throughput);
            let vs_direct = vs_baseline(vs_direct, c.system == System::Direct);
            let status = status(c.ok, c.disturbed, c.error.as_deref());
            println!(
                "{:<10} {:<9} {:>10} {:>19} {:>9} {:>13} {:>12} {:>10} {:>9} {:>9} {:>9}  {status}",
                s.name(),
                c.system.name(),
                c.throughput
                    .map(|v| format!("{} {}", fmt_throughput(s, v), short_unit(s)))
                    .unwrap_or_else(|| "-".into()),
                match (c.throughput_min, c.throughput_max) {
                    (Some(lo), Some(hi)) if c.samples_used > 1 => {
                        format!("({}-{})", fmt_throughput(s, lo), fmt_throughput(s, hi))
                    }
                    _ => String::new(),
                },
                pct(c.node_cpu_pct),
                c.per_node_cpu.map_or("-".into(), |v| fmt_throughput(s, v)),
                c.node_cost
                    .map_or("-".into(), |v| format!("{v:.0} {}", cost_unit(s))),
                c.latency_p99_us
                    .map_or("-".into(), |v| format!("{:.2}ms", v / 1e3)),
                vs_direct,
                pct(c.cpu.load_cpu_busy_pct),
                pct(c.cpu.other_pct),
            );
        }
        println!(
            "(medians over the rounds used: the undisturbed ones when there are any; min-max: \
             their spread)"
        );
        println!(
            "(node cpu: the node's NAPI kthreads, % of one CPU; per node CPU: throughput / node \
             cpu; node cost: node CPU time per packet received from the client (bulk) or per connection; load \
             cpu: busy share of the client+pods CPU(s); other cpu: processes outside the bench, \
             % of one CPU, should be ~0)"
        );
        println!();
        for r in report
            .ratios
            .iter()
            .filter(|r| r.denominator != System::Direct)
        {
            println!(
                "{:<10} {}/{}: throughput {}, per node CPU {}, per whole-path CPU {}",
                r.scenario.name(),
                r.numerator.name(),
                r.denominator.name(),
                times(r.throughput),
                times(r.per_node_cpu),
                times(r.per_path_cpu),
            );
        }
    }
    let notes: BTreeSet<&String> = report
        .cells
        .iter()
        .flat_map(|c| &c.notes)
        .chain(&report.notes)
        .collect();
    for note in notes {
        println!("note: {note}");
    }
    println!();
    if let (Some(rule), Some(pass), Some(reason)) = (
        &report.target.cost_rule,
        report.target.cost_pass,
        &report.target.cost_reason,
    ) {
        println!("target: {rule}");
        println!(
            "  {:<10} {}  {reason}",
            "ns/packet",
            if pass { "PASS" } else { "MISS" }
        );
    }
    if !report.target.scenarios.is_empty() {
        println!("target: {}", report.target.rule);
        for line in &report.target.scenarios {
            println!(
                "  {:<10} {}  {}",
                line.scenario.name(),
                if line.pass { "PASS" } else { "MISS" },
                line.reason
            );
            if let (Some(t), Some(n)) = (line.tether_over_direct, line.nftables_over_direct) {
                println!(
                    "  {:<10}       node cost above direct's (the NAT's own): tether {t:+.0}, \
                     nftables {n:+.0} {}",
                    "",
                    cost_unit(line.scenario)
                );
            }
            if let Some(ceiling) = &line.ceiling {
                println!("  {:<10}       ({ceiling})", "");
            }
        }
        println!(
            "  {:<10} {}",
            "overall",
            if report.target.pass { "PASS" } else { "MISS" }
        );
    }
}

pub fn fmt_throughput(scenario: Scenario, value: f64) -> String {
    match scenario {
        Scenario::Bulk => format!("{value:.2}"),
        Scenario::ConnRate => thousands(value),
        Scenario::Udp => format!("{value:.3}"),
    }
}

fn short_unit(scenario: Scenario) -> &'static str {
    match scenario {
        Scenario::Bulk => "Gb/s",
        Scenario::ConnRate => "c/s",
        Scenario::Udp => "Mp/s",
    }
}

pub fn cost_unit(scenario: Scenario) -> &'static str {
    match scenario {
        Scenario::Bulk | Scenario::Udp => "ns/pkt",
        Scenario::ConnRate => "us/conn",
    }
}
