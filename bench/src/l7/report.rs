//! What `bench l7` reports: its systems and scenarios, the cells (medians over rounds, one per
//! system, scenario and proxy worker count), the ratios and the target lines, printed as a table
//! and saved as l7-*.json.
use crate::cpu::Usage;
use crate::machine::Machine;
use crate::proxies::{HAPROXY_COOKIE, TETHER_COOKIE};
use crate::summary::{
    self, find, median_of, ms, pct, ratio, spread_of, status, thousands, times, vs_baseline,
    Rounds, QUIET_PCT,
};
use crate::wrk::WrkResult;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// The throughput bar tether is held to (against HAProxy).
pub const TARGET_RATIO: f64 = 1.2;
/// The CPU bar tether is held to: at most this much of HAProxy's CPU time per request.
pub const TARGET_CPU_RATIO: f64 = 0.83;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    Direct,
    Tether,
    Haproxy,
    Nginx,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Direct => "direct",
            System::Tether => "tether",
            System::Haproxy => "haproxy",
            System::Nginx => "nginx",
        }
    }

    /// Whether this bench runs the system with a TLS listener (the backends speak plaintext).
    pub fn speaks_tls(self) -> bool {
        self != System::Direct
    }

    /// The cookie this system issues itself, if it does.
    pub fn issued_cookie(self) -> Option<&'static str> {
        match self {
            System::Tether => Some(TETHER_COOKIE),
            System::Haproxy => Some(HAPROXY_COOKIE),
            System::Direct | System::Nginx => None,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Plaintext HTTP/1.1 keep-alive, every request with a valid session cookie.
    Sticky,
    /// Plaintext HTTP/1.1 keep-alive, no cookie: every request is a new pin and a Set-Cookie.
    NewSession,
    /// HTTPS keep-alive (HTTP/1.1 over TLS), with the session cookie.
    Https,
    /// HTTP/2 over TLS (ALPN h2), several streams per connection, with the session cookie.
    H2,
    /// A new TLS connection (full handshake) per request, with the session cookie: what
    /// returning clients without keep-alive cost.
    TlsHandshake,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Sticky => "sticky",
            Scenario::NewSession => "new-session",
            Scenario::Https => "https",
            Scenario::H2 => "h2",
            Scenario::TlsHandshake => "tls-handshake",
        }
    }

    /// Over the systems' TLS listener.
    pub fn tls(self) -> bool {
        matches!(
            self,
            Scenario::Https | Scenario::H2 | Scenario::TlsHandshake
        )
    }

    /// Requests carry the session cookie the system issued.
    pub fn sticky(self) -> bool {
        self != Scenario::NewSession
    }

    /// Whether `system` runs this scenario (the bare backend has no TLS).
    pub fn runs_on(self, system: System) -> bool {
        !self.tls() || system.speaks_tls()
    }
}

/// Everything saved to bench/results/l7-*.json (and drawn in the chart).
#[derive(Serialize)]
pub struct Report {
    pub bench: &'static str,
    pub timestamp: String,
    pub machine: Machine,
    pub settings: Settings,
    pub cells: Vec<Cell>,
    pub ratios: Vec<Ratio>,
    pub target: Target,
}

#[derive(Serialize)]
pub struct Settings {
    pub duration_s: u64,
    pub warmup_s: u64,
    pub connections: u32,
    pub wrk_threads: u32,
    pub rounds: u32,
    /// The worker counts every proxy ran with (tether `--workers`, HAProxy `nbthread`, nginx
    /// `worker_processes`), ascending; every cell ran at each.
    pub proxy_workers: Vec<usize>,
    /// Streams per connection in the h2 scenario.
    pub h2_streams: u32,
    /// What the TLS scenarios' listeners serve.
    pub certificate: String,
    pub pinning: Pinning,
    pub backends: Vec<String>,
    pub systems: BTreeMap<String, String>,
}

#[derive(Serialize)]
pub struct Pinning {
    pub enabled: bool,
    /// The proxy's CPUs; with several worker counts, `N workers: CPUS` for each.
    pub proxy_cpus: String,
    pub load_cpus: String,
    pub description: String,
    /// Where the proxy ran at each worker count.
    pub by_workers: Vec<WorkerPinning>,
    /// Caveats: the proxy sharing CPUs with the load, above all.
    pub notes: Vec<String>,
}

#[derive(Serialize)]
pub struct WorkerPinning {
    pub workers: usize,
    /// taskset list, or empty when unpinned.
    pub proxy_cpus: String,
    /// The CPUs the proxy shares with wrk and the backends (taskset list), if any.
    pub shared_with_load: String,
}

/// Cells are compared within one of these: the same scenario at the same proxy worker count.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct Group {
    pub scenario: Scenario,
    pub workers: usize,
}

/// One system under one scenario; medians over rounds.
#[derive(Serialize)]
pub struct Cell {
    pub system: System,
    pub scenario: Scenario,
    /// The proxy's worker count (threads, processes) in this cell; for `direct`, the worker
    /// count of the block of cells it was measured with (there is no proxy).
    pub workers: usize,
    /// Ran, and served only 2xx without socket errors.
    pub ok: bool,
    /// Every round of this cell ran while the machine was busy (see [`Usage::disturbed`]).
    pub disturbed: bool,
    /// Rounds the medians come from (the undisturbed ones, if any).
    pub samples_used: usize,
    pub error: Option<String>,
    pub notes: Vec<String>,
    pub requests_per_sec: Option<f64>,
    /// Lowest and highest req/s of the rounds the median comes from.
    pub requests_per_sec_min: Option<f64>,
    pub requests_per_sec_max: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// CPU time of the proxy's process tree per request served, in microseconds (median over
    /// the rounds used); `None` for `direct`, which has no proxy.
    pub cpu_us_per_request: Option<f64>,
    pub requests: u64,
    pub non_2xx: u64,
    pub socket_errors: u64,
    /// CPU use while measuring (medians over rounds); see [`Usage`].
    pub cpu: Usage,
    pub samples: Vec<Sample>,
}

#[derive(Serialize)]
pub struct Sample {
    pub round: u32,
    #[serde(flatten)]
    pub wrk: WrkResult,
    pub cpu: Usage,
    /// CPU seconds (user + system) of the proxy's process tree over the measured window, from
    /// /proc/PID/stat; `None` without a proxy process.
    pub proxy_cpu_s: Option<f64>,
    /// `proxy_cpu_s` over the requests the load generator completed, in microseconds.
    pub cpu_us_per_request: Option<f64>,
}

#[derive(Serialize)]
pub struct Ratio {
    pub scenario: Scenario,
    /// Both cells ran at this proxy worker count.
    pub workers: usize,
    pub numerator: System,
    pub denominator: System,
    /// numerator req/s over denominator req/s.
    pub requests_per_sec: Option<f64>,
    /// numerator CPU per request over denominator's (lower is better for the numerator); none
    /// against `direct`.
    pub cpu_per_request: Option<f64>,
    /// numerator p99 over denominator p99 (lower is better for the numerator).
    pub p99: Option<f64>,
}

#[derive(Serialize)]
pub struct Target {
    pub rule: String,
    pub pass: bool,
    pub scenarios: Vec<TargetLine>,
}

#[derive(Serialize)]
pub struct TargetLine {
    pub scenario: Scenario,
    pub workers: usize,
    /// All three goals met.
    pub pass: bool,
    pub requests_per_sec_ratio: Option<f64>,
    /// req/s >= TARGET_RATIO x HAProxy's (none: not measured).
    pub requests_per_sec_met: Option<bool>,
    pub tether_cpu_us_per_request: Option<f64>,
    pub haproxy_cpu_us_per_request: Option<f64>,
    pub cpu_per_request_ratio: Option<f64>,
    /// CPU per request <= TARGET_CPU_RATIO x HAProxy's (none: not measured).
    pub cpu_per_request_met: Option<bool>,
    pub tether_p99_ms: Option<f64>,
    pub haproxy_p99_ms: Option<f64>,
    /// p99 <= HAProxy's (none: not measured).
    pub p99_met: Option<bool>,
    pub reason: String,
    /// Set when the load side (direct) cannot even reach the target throughput.
    pub ceiling: Option<String>,
}

/// CPU time per request in microseconds: `cpu_s` seconds over `requests`; `None` when either
/// is missing or there were no requests.
pub fn cpu_us_per_request(cpu_s: Option<f64>, requests: u64) -> Option<f64> {
    cpu_s
        .filter(|s| s.is_finite() && *s >= 0.0)
        .filter(|_| requests > 0)
        .map(|s| s * 1e6 / requests as f64)
}

pub fn summarize(system: System, group: Group, rounds: Rounds<Sample>) -> Cell {
    // Prefer the rounds nothing else disturbed; fall back to all (and say so).
    let (used, disturbed) = rounds.used(Sample::disturbed);
    let med = |f: &dyn Fn(&Sample) -> Option<f64>| median_of(&used, f);
    let problems = rounds.problems(rounds.samples.iter().filter_map(|s| s.wrk.problem()));
    let (requests_per_sec_min, requests_per_sec_max) =
        spread_of(&used, |s| Some(s.wrk.requests_per_sec));
    let samples = &rounds.samples;
    Cell {
        system,
        scenario: group.scenario,
        workers: group.workers,
        ok: problems.is_empty(),
        disturbed,
        samples_used: used.len(),
        error: (!problems.is_empty()).then(|| problems.join("; ")),
        notes: rounds.notes.iter().cloned().collect(),
        requests_per_sec: med(&|s| Some(s.wrk.requests_per_sec)),
        requests_per_sec_min,
        requests_per_sec_max,
        p50_ms: med(&|s| Some(s.wrk.p50_us / 1e3)),
        p90_ms: med(&|s| Some(s.wrk.p90_us / 1e3)),
        p99_ms: med(&|s| Some(s.wrk.p99_us / 1e3)),
        p999_ms: med(&|s| s.wrk.p999_us.map(|v| v / 1e3)),
        max_ms: med(&|s| Some(s.wrk.max_us / 1e3)),
        cpu_us_per_request: med(&|s| s.cpu_us_per_request),
        requests: samples.iter().map(|s| s.wrk.requests).sum(),
        non_2xx: samples.iter().map(|s| s.wrk.non_2xx).sum(),
        socket_errors: samples.iter().map(|s| s.wrk.socket_errors.total()).sum(),
        cpu: Usage {
            proxy_process_pct: med(&|s| s.cpu.proxy_process_pct),
            foreign_pct: med(&|s| s.cpu.foreign_pct),
            proxy_cpu_busy_pct: med(&|s| s.cpu.proxy_cpu_busy_pct),
            load_cpu_busy_pct: med(&|s| s.cpu.load_cpu_busy_pct),
            proxy_cpu_interrupts_pct: med(&|s| s.cpu.proxy_cpu_interrupts_pct),
            proxy_cpu_steal_pct: med(&|s| s.cpu.proxy_cpu_steal_pct),
            io_pressure_pct: med(&|s| s.cpu.io_pressure_pct),
        },
        samples: rounds.samples,
    }
}

impl Sample {
    /// Other processes took a noticeable share of the machine while this was measured.
    fn disturbed(&self) -> bool {
        self.cpu.disturbed(QUIET_PCT)
    }
}

impl summary::Cell for Cell {
    type System = System;
    type Group = Group;
    fn system(&self) -> System {
        self.system
    }
    fn group(&self) -> Group {
        Group {
            scenario: self.scenario,
            workers: self.workers,
        }
    }
}

/// Every scenario at every worker count, scenario by scenario.
pub fn groups(scenarios: &[Scenario], workers: &[usize]) -> Vec<Group> {
    scenarios
        .iter()
        .flat_map(|&scenario| {
            workers
                .iter()
                .map(move |&workers| Group { scenario, workers })
        })
        .collect()
}

/// Ratios between two clean cells of the same group (scenario and worker count) only: a system
/// serving errors does not get a ratio.
pub fn ratios(cells: &[Cell], groups: &[Group]) -> Vec<Ratio> {
    const PAIRS: [(System, System); 5] = [
        (System::Tether, System::Haproxy),
        (System::Tether, System::Nginx),
        (System::Tether, System::Direct),
        (System::Haproxy, System::Direct),
        (System::Nginx, System::Direct),
    ];
    summary::pairs(cells, groups, &PAIRS)
        .into_iter()
        .map(|(group, a, b)| {
            let clean = a.ok && b.ok;
            Ratio {
                scenario: group.scenario,
                workers: group.workers,
                numerator: a.system,
                denominator: b.system,
                requests_per_sec: ratio(clean, a.requests_per_sec, b.requests_per_sec),
                cpu_per_request: ratio(clean, a.cpu_us_per_request, b.cpu_us_per_request),
                p99: ratio(clean, a.p99_ms, b.p99_ms),
            }
        })
        .collect()
}

pub fn target(cells: &[Cell], groups: &[Group]) -> Target {
    let rule = format!(
        "tether >= {TARGET_RATIO}x HAProxy req/s, CPU per request <= {TARGET_CPU_RATIO}x \
         HAProxy's, p99 no worse than HAProxy's; per scenario and worker count"
    );
    let lines: Vec<TargetLine> = groups
        .iter()
        .map(|&group| target_line(cells, group))
        .collect();
    Target {
        rule,
        pass: !lines.is_empty() && lines.iter().all(|l| l.pass),
        scenarios: lines,
    }
}

/// tether against HAProxy in one group: each of the three goals met or not, with its numbers.
fn target_line(cells: &[Cell], group: Group) -> TargetLine {
    let t = find(cells, System::Tether, group);
    let h = find(cells, System::Haproxy, group);
    let mut line = TargetLine {
        scenario: group.scenario,
        workers: group.workers,
        pass: false,
        requests_per_sec_ratio: None,
        requests_per_sec_met: None,
        tether_cpu_us_per_request: t.and_then(|c| c.cpu_us_per_request),
        haproxy_cpu_us_per_request: h.and_then(|c| c.cpu_us_per_request),
        cpu_per_request_ratio: None,
        cpu_per_request_met: None,
        tether_p99_ms: t.and_then(|c| c.p99_ms),
        haproxy_p99_ms: h.and_then(|c| c.p99_ms),
        p99_met: None,
        reason: String::new(),
        ceiling: None,
    };
    let (t, h) = match (t, h) {
        (None, _) | (_, None) => {
            line.reason = "tether or HAProxy was not run".into();
            return line;
        }
        (Some(t), _) if !t.ok => {
            line.reason = format!("tether: {}", t.error.as_deref().unwrap_or("failed"));
            return line;
        }
        (_, Some(h)) if !h.ok => {
            line.reason = format!("HAProxy: {}", h.error.as_deref().unwrap_or("failed"));
            return line;
        }
        (Some(t), Some(h)) => (t, h),
    };
    let rps = ratio(true, t.requests_per_sec, h.requests_per_sec);
    let cpu = ratio(true, t.cpu_us_per_request, h.cpu_us_per_request);
    line.requests_per_sec_ratio = rps;
    line.requests_per_sec_met = rps.map(|r| r >= TARGET_RATIO);
    line.cpu_per_request_ratio = cpu;
    line.cpu_per_request_met = cpu.map(|r| r <= TARGET_CPU_RATIO);
    line.p99_met = match (t.p99_ms, h.p99_ms) {
        (Some(tp), Some(hp)) => Some(tp <= hp),
        _ => None,
    };
    line.pass = [
        line.requests_per_sec_met,
        line.cpu_per_request_met,
        line.p99_met,
    ]
    .iter()
    .all(|met| *met == Some(true));
    let met = |met: Option<bool>| match met {
        Some(true) => "met",
        Some(false) => "not met",
        None => "not measured",
    };
    let requests = match rps {
        Some(r) => format!("req/s {r:.2}x"),
        None => "req/s ?".to_string(),
    };
    let cpu_text = match (t.cpu_us_per_request, h.cpu_us_per_request, cpu) {
        (Some(tc), Some(hc), Some(r)) => format!("CPU/req {tc:.1} vs {hc:.1} us = {r:.2}x"),
        _ => format!(
            "CPU/req {} vs {}",
            us(t.cpu_us_per_request),
            us(h.cpu_us_per_request)
        ),
    };
    let p99 = match (t.p99_ms, h.p99_ms) {
        (Some(tp), Some(hp)) => format!("p99 {tp:.2} vs {hp:.2} ms"),
        _ => "p99 ?".to_string(),
    };
    line.reason = format!(
        "{requests} (>= {TARGET_RATIO}x: {}) | {cpu_text} (<= {TARGET_CPU_RATIO}x: {}) | {p99} \
         (<= HAProxy's: {}){}",
        met(line.requests_per_sec_met),
        met(line.cpu_per_request_met),
        met(line.p99_met),
        if t.disturbed || h.disturbed {
            " [machine was busy: rerun on an idle machine]"
        } else {
            ""
        }
    );
    let direct = find(cells, System::Direct, group)
        .filter(|c| c.ok)
        .and_then(|c| c.requests_per_sec);
    // Within 10% of the no-proxy ceiling, the load side caps what a proxy shows.
    if let (Some(d), Some(hr)) = (direct, h.requests_per_sec) {
        if hr * TARGET_RATIO > 0.9 * d {
            line.ceiling = Some(format!(
                "{TARGET_RATIO}x HAProxy = {} req/s is {:.0}% of what wrk + backends do with no \
                 proxy at all ({} req/s direct): the load side, not tether, may decide req/s here",
                thousands(hr * TARGET_RATIO),
                100.0 * hr * TARGET_RATIO / d,
                thousands(d)
            ));
        }
    }
    line
}

/// `12.3us`, or `-` when unknown.
fn us(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.1}us"))
}

pub fn print_results(report: &Report) {
    println!();
    println!(
        "{:<13} {:<8} {:>7} {:>10} {:>13} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>9} \
         {:>8}  status",
        "scenario",
        "system",
        "workers",
        "req/s",
        "(min-max)",
        "p50",
        "p90",
        "p99",
        "vs direct",
        "proxy cpu",
        "cpu/req",
        "load cpu",
        "other cpu",
        "io stall"
    );
    for c in &report.cells {
        let vs_direct = report
            .ratios
            .iter()
            .find(|r| {
                r.scenario == c.scenario
                    && r.workers == c.workers
                    && r.numerator == c.system
                    && r.denominator == System::Direct
            })
            .and_then(|r| r.requests_per_sec);
        let vs_direct = vs_baseline(vs_direct, c.system == System::Direct);
        let status = status(c.ok, c.disturbed, c.error.as_deref());
        println!(
            "{:<13} {:<8} {:>7} {:>10} {:>13} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>9} \
             {:>8}  {status}",
            c.scenario.name(),
            c.system.name(),
            if c.system == System::Direct {
                "-".to_string()
            } else {
                c.workers.to_string()
            },
            c.requests_per_sec
                .map(thousands)
                .unwrap_or_else(|| "-".into()),
            match (c.requests_per_sec_min, c.requests_per_sec_max) {
                (Some(lo), Some(hi)) if c.samples_used > 1 => {
                    format!("({:.1}-{:.1}k)", lo / 1e3, hi / 1e3)
                }
                _ => String::new(),
            },
            c.p50_ms.map(ms).unwrap_or_else(|| "-".into()),
            c.p90_ms.map(ms).unwrap_or_else(|| "-".into()),
            c.p99_ms.map(ms).unwrap_or_else(|| "-".into()),
            vs_direct,
            pct(c.cpu.proxy_process_pct),
            us(c.cpu_us_per_request),
            pct(c.cpu.load_cpu_busy_pct),
            pct(c.cpu.foreign_pct),
            pct(c.cpu.io_pressure_pct),
        );
    }
    println!(
        "(medians over the rounds used: the undisturbed ones when there are any; \
         min-max: their spread)"
    );
    println!(
        "(proxy cpu: the proxy's processes, % of one CPU; cpu/req: their CPU time (user + \
         system, all threads and processes, from /proc) over the measured window divided by the \
         requests completed; load cpu: busy share of the wrk + backend CPU(s); other cpu: \
         processes outside this bench, % of one CPU; io stall: share of time other processes \
         stalled on I/O; the last two should be ~0)"
    );
    println!();
    for r in report
        .ratios
        .iter()
        .filter(|r| r.denominator != System::Direct)
    {
        println!(
            "{:<13} {:>2}w {}/{}: req/s {}, cpu/req {}, p99 {}",
            r.scenario.name(),
            r.workers,
            r.numerator.name(),
            r.denominator.name(),
            times(r.requests_per_sec),
            times(r.cpu_per_request),
            times(r.p99),
        );
    }
    let notes: BTreeSet<&String> = report
        .cells
        .iter()
        .flat_map(|c| &c.notes)
        .chain(&report.settings.pinning.notes)
        .collect();
    for note in notes {
        println!("note: {note}");
    }
    println!();
    println!("target: {}", report.target.rule);
    for line in &report.target.scenarios {
        println!(
            "  {:<13} {:>2}w  {}  {}",
            line.scenario.name(),
            line.workers,
            if line.pass { "PASS" } else { "MISS" },
            line.reason.lines().next().unwrap_or_default()
        );
        if let Some(ceiling) = &line.ceiling {
            println!("  {:<13} {:>3}  {:<4}  ({ceiling})", "", "", "");
        }
    }
    println!(
        "  overall      {}",
        if report.target.pass { "PASS" } else { "MISS" }
    );
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A sticky cell of one round: `rps` req/s over 10 s, `p99` ms, `cpu_s` proxy CPU seconds.
    fn cell(system: System, workers: usize, rps: f64, p99_ms: f64, cpu_s: Option<f64>) -> Cell {
        let group = Group {
            scenario: Scenario::Sticky,
            workers,
        };
        cell_in(system, group, rps, p99_ms, cpu_s)
    }

    /// A cell of `group`, as [`cell`].
    pub fn cell_in(
        system: System,
        group: Group,
        rps: f64,
        p99_ms: f64,
        cpu_s: Option<f64>,
    ) -> Cell {
        let requests = (rps * 10.0) as u64;
        let wrk = WrkResult {
            requests,
            duration_s: 10.0,
            requests_per_sec: rps,
            p50_us: p99_ms * 500.0,
            p90_us: p99_ms * 800.0,
            p99_us: p99_ms * 1e3,
            max_us: p99_ms * 2e3,
            ..WrkResult::default()
        };
        let rounds = Rounds {
            samples: vec![Sample {
                round: 1,
                wrk,
                cpu: Usage::default(),
                proxy_cpu_s: cpu_s,
                cpu_us_per_request: cpu_us_per_request(cpu_s, requests),
            }],
            ..Rounds::default()
        };
        summarize(system, group, rounds)
    }

    #[test]
    fn cpu_per_request_is_cpu_time_over_requests() {
        // 2 s of CPU for 100,000 requests: 20 us each.
        assert_eq!(cpu_us_per_request(Some(2.0), 100_000), Some(20.0));
        assert_eq!(cpu_us_per_request(Some(0.0), 10), Some(0.0));
        assert_eq!(cpu_us_per_request(Some(2.0), 0), None);
        assert_eq!(cpu_us_per_request(None, 100), None);
        assert_eq!(cpu_us_per_request(Some(f64::NAN), 100), None);
        assert_eq!(cpu_us_per_request(Some(-1.0), 100), None);
    }

    #[test]
    fn cells_take_the_median_cpu_per_request() {
        let mut rounds = Rounds::default();
        for (round, cpu_s) in [(1, 1.0), (2, 3.0), (3, 2.0)] {
            rounds.samples.push(Sample {
                round,
                wrk: WrkResult {
                    requests: 100_000,
                    requests_per_sec: 10_000.0,
                    ..WrkResult::default()
                },
                cpu: Usage::default(),
                proxy_cpu_s: Some(cpu_s),
                cpu_us_per_request: cpu_us_per_request(Some(cpu_s), 100_000),
            });
        }
        let group = Group {
            scenario: Scenario::Https,
            workers: 2,
        };
        let c = summarize(System::Tether, group, rounds);
        assert_eq!(c.cpu_us_per_request, Some(20.0));
        assert_eq!((c.workers, c.scenario), (2, Scenario::Https));
        assert_eq!(
            cell(System::Direct, 1, 1e4, 1.0, None).cpu_us_per_request,
            None
        );
    }

    #[test]
    fn ratios_pair_cells_of_the_same_worker_count() {
        let cells = vec![
            cell(System::Direct, 1, 40_000.0, 1.0, None),
            cell(System::Direct, 2, 40_000.0, 1.0, None),
            cell(System::Tether, 1, 12_000.0, 2.0, Some(1.44)),
            cell(System::Tether, 2, 24_000.0, 1.0, Some(2.4)),
            cell(System::Haproxy, 1, 10_000.0, 2.5, Some(1.5)),
            cell(System::Haproxy, 2, 16_000.0, 2.0, Some(2.0)),
        ];
        let groups = groups(&[Scenario::Sticky], &[1, 2]);
        let ratios = ratios(&cells, &groups);
        let find = |workers, numerator, denominator| {
            ratios
                .iter()
                .find(|r| {
                    r.workers == workers && r.numerator == numerator && r.denominator == denominator
                })
                .unwrap_or_else(|| panic!("no {numerator:?}/{denominator:?} at {workers}"))
        };
        let one = find(1, System::Tether, System::Haproxy);
        assert_eq!(one.requests_per_sec, Some(1.2));
        // 12 us per request against 15.
        assert!((one.cpu_per_request.unwrap_or_default() - 0.8).abs() < 1e-9);
        assert_eq!(one.p99, Some(0.8));
        let two = find(2, System::Tether, System::Haproxy);
        assert_eq!(two.requests_per_sec, Some(1.5));
        assert!((two.cpu_per_request.unwrap_or_default() - 0.8).abs() < 1e-9);
        assert_eq!(two.p99, Some(0.5));
        // Against direct: req/s, but no CPU per request (direct has no proxy).
        let direct = find(2, System::Tether, System::Direct);
        assert_eq!(direct.requests_per_sec, Some(0.6));
        assert_eq!(direct.cpu_per_request, None);
        // Tether/HAProxy, tether/direct and HAProxy/direct at each count; nothing across counts.
        assert_eq!(ratios.len(), 6);
        assert_eq!(ratios.iter().filter(|r| r.workers == 1).count(), 3);
    }

    #[test]
    fn target_states_each_goal_per_worker_count() {
        let cells = vec![
            // 1 worker: 1.2x req/s, 0.8x CPU per request, better p99: all three met.
            cell(System::Tether, 1, 12_000.0, 2.0, Some(1.44)),
            cell(System::Haproxy, 1, 10_000.0, 2.5, Some(1.5)),
            // 2 workers: 1.1x req/s, 0.9x CPU, worse p99: none met.
            cell(System::Tether, 2, 22_000.0, 3.0, Some(2.376)),
            cell(System::Haproxy, 2, 20_000.0, 2.0, Some(2.4)),
        ];
        let target = target(&cells, &groups(&[Scenario::Sticky], &[1, 2]));
        assert!(!target.pass);
        let [one, two] = &target.scenarios[..] else {
            panic!("{} target lines", target.scenarios.len());
        };
        assert_eq!(one.workers, 1);
        assert!(one.pass, "{}", one.reason);
        assert_eq!(
            (
                one.requests_per_sec_met,
                one.cpu_per_request_met,
                one.p99_met
            ),
            (Some(true), Some(true), Some(true))
        );
        assert_eq!(one.tether_cpu_us_per_request, Some(12.0));
        assert_eq!(one.haproxy_cpu_us_per_request, Some(15.0));
        assert!(one
            .reason
            .contains("CPU/req 12.0 vs 15.0 us = 0.80x (<= 0.83x: met)"));
        assert_eq!(two.workers, 2);
        assert!(!two.pass);
        assert_eq!(
            (
                two.requests_per_sec_met,
                two.cpu_per_request_met,
                two.p99_met
            ),
            (Some(false), Some(false), Some(false))
        );
        assert!(
            two.reason.contains("req/s 1.10x (>= 1.2x: not met)"),
            "{}",
            two.reason
        );
        assert!(two
            .reason
            .contains("p99 3.00 vs 2.00 ms (<= HAProxy's: not met)"));

        // Without CPU figures the CPU goal is not measured, so the line cannot pass.
        let cells = vec![
            cell(System::Tether, 1, 12_000.0, 2.0, None),
            cell(System::Haproxy, 1, 10_000.0, 2.5, Some(1.5)),
        ];
        let unmeasured = super::target(&cells, &groups(&[Scenario::Sticky], &[1]));
        assert!(!unmeasured.pass);
        assert_eq!(unmeasured.scenarios[0].cpu_per_request_met, None);
        assert!(unmeasured.scenarios[0].reason.contains("not measured"));
    }
}
