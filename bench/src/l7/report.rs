//! What `bench l7` reports: its systems and scenarios, the cells (medians over rounds), the
//! ratios and the target line, printed as a table and saved as l7-*.json.
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
    pub proxy_workers: u32,
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
    pub proxy_cpus: String,
    pub load_cpus: String,
    pub description: String,
}

/// One system under one scenario; medians over rounds.
#[derive(Serialize)]
pub struct Cell {
    pub system: System,
    pub scenario: Scenario,
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
}

#[derive(Serialize)]
pub struct Ratio {
    pub scenario: Scenario,
    pub numerator: System,
    pub denominator: System,
    /// numerator req/s over denominator req/s.
    pub requests_per_sec: Option<f64>,
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
    pub pass: bool,
    pub requests_per_sec_ratio: Option<f64>,
    pub tether_p99_ms: Option<f64>,
    pub haproxy_p99_ms: Option<f64>,
    pub reason: String,
    /// Set when the load side (direct) cannot even reach the target throughput.
    pub ceiling: Option<String>,
}

pub fn summarize(system: System, scenario: Scenario, rounds: Rounds<Sample>) -> Cell {
    // Prefer the rounds nothing else disturbed; fall back to all (and say so).
    let (used, disturbed) = rounds.used(Sample::disturbed);
    let med = |f: &dyn Fn(&Sample) -> Option<f64>| median_of(&used, f);
    let problems = rounds.problems(rounds.samples.iter().filter_map(|s| s.wrk.problem()));
    let (requests_per_sec_min, requests_per_sec_max) =
        spread_of(&used, |s| Some(s.wrk.requests_per_sec));
    let samples = &rounds.samples;
    Cell {
        system,
        scenario,
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

summary::cell_keys!(Cell, System = system, Scenario = scenario);

/// Ratios between two clean cells only: a system serving errors does not get a ratio.
pub fn ratios(cells: &[Cell], scenarios: &[Scenario]) -> Vec<Ratio> {
    const PAIRS: [(System, System); 5] = [
        (System::Tether, System::Haproxy),
        (System::Tether, System::Nginx),
        (System::Tether, System::Direct),
        (System::Haproxy, System::Direct),
        (System::Nginx, System::Direct),
    ];
    summary::pairs(cells, scenarios, &PAIRS)
        .into_iter()
        .map(|(scenario, a, b)| {
            let clean = a.ok && b.ok;
            Ratio {
                scenario,
                numerator: a.system,
                denominator: b.system,
                requests_per_sec: ratio(clean, a.requests_per_sec, b.requests_per_sec),
                p99: ratio(clean, a.p99_ms, b.p99_ms),
            }
        })
        .collect()
}

pub fn target(cells: &[Cell], scenarios: &[Scenario]) -> Target {
    let rule = format!(
        "tether >= {TARGET_RATIO}x HAProxy req/s with p99 no worse than HAProxy's, per scenario"
    );
    let lines: Vec<TargetLine> = scenarios
        .iter()
        .map(|&scenario| {
            let t = find(cells, System::Tether, scenario);
            let h = find(cells, System::Haproxy, scenario);
            let mut line = TargetLine {
                scenario,
                pass: false,
                requests_per_sec_ratio: None,
                tether_p99_ms: t.and_then(|c| c.p99_ms),
                haproxy_p99_ms: h.and_then(|c| c.p99_ms),
                reason: String::new(),
                ceiling: None,
            };
            match (t, h) {
                (None, _) | (_, None) => line.reason = "tether or HAProxy was not run".into(),
                (Some(t), _) if !t.ok => {
                    line.reason = format!("tether: {}", t.error.as_deref().unwrap_or("failed"));
                }
                (_, Some(h)) if !h.ok => {
                    line.reason = format!("HAProxy: {}", h.error.as_deref().unwrap_or("failed"));
                }
                (Some(t), Some(h)) => {
                    if let (Some(tr), Some(hr), Some(tp), Some(hp)) =
                        (t.requests_per_sec, h.requests_per_sec, t.p99_ms, h.p99_ms)
                    {
                        let ratio = tr / hr;
                        line.requests_per_sec_ratio = Some(ratio);
                        let fast = ratio >= TARGET_RATIO;
                        let tail = tp <= hp;
                        line.pass = fast && tail;
                        let direct = find(cells, System::Direct, scenario)
                            .filter(|c| c.ok)
                            .and_then(|c| c.requests_per_sec);
                        // Within 10% of the no-proxy ceiling, the load side caps what a proxy shows.
                        if let Some(d) = direct.filter(|&d| hr * TARGET_RATIO > 0.9 * d) {
                            line.ceiling = Some(format!(
                                "{TARGET_RATIO}x HAProxy = {} req/s is {:.0}% of what wrk + \
                                 backends do with no proxy at all ({} req/s direct): the load \
                                 side, not tether, may decide this line here",
                                thousands(hr * TARGET_RATIO),
                                100.0 * hr * TARGET_RATIO / d,
                                thousands(d)
                            ));
                        }
                        line.reason = format!(
                            "{ratio:.2}x req/s ({}), p99 {tp:.2} ms vs {hp:.2} ms ({}){}",
                            if fast { "ok" } else { "short" },
                            if tail { "ok" } else { "worse" },
                            if t.disturbed || h.disturbed {
                                " [machine was busy: rerun on an idle machine]"
                            } else {
                                ""
                            }
                        );
                    }
                }
            }
            line
        })
        .collect();
    Target {
        rule,
        pass: !lines.is_empty() && lines.iter().all(|l| l.pass),
        scenarios: lines,
    }
}

pub fn print_results(report: &Report) {
    println!();
    println!(
        "{:<13} {:<8} {:>10} {:>13} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9} {:>8}  status",
        "scenario",
        "system",
        "req/s",
        "(min-max)",
        "p50",
        "p90",
        "p99",
        "vs direct",
        "proxy cpu",
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
                    && r.numerator == c.system
                    && r.denominator == System::Direct
            })
            .and_then(|r| r.requests_per_sec);
        let vs_direct = vs_baseline(vs_direct, c.system == System::Direct);
        let status = status(c.ok, c.disturbed, c.error.as_deref());
        println!(
            "{:<13} {:<8} {:>10} {:>13} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9} {:>8}  {status}",
            c.scenario.name(),
            c.system.name(),
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
        "(proxy cpu: the proxy's processes, % of one CPU; load cpu: busy share of the wrk + \
         backend CPU(s); other cpu: processes outside this bench, % of one CPU; io stall: share of \
         time other processes stalled on I/O; the last two should be ~0)"
    );
    println!();
    for r in report
        .ratios
        .iter()
        .filter(|r| r.denominator != System::Direct)
    {
        println!(
            "{:<13} {}/{}: req/s {}, p99 {}",
            r.scenario.name(),
            r.numerator.name(),
            r.denominator.name(),
            times(r.requests_per_sec),
            times(r.p99),
        );
    }
    let notes: BTreeSet<&String> = report.cells.iter().flat_map(|c| &c.notes).collect();
    for note in notes {
        println!("note: {note}");
    }
    println!();
    println!("target: {}", report.target.rule);
    for line in &report.target.scenarios {
        println!(
            "  {:<13} {}  {}",
            line.scenario.name(),
            if line.pass { "PASS" } else { "MISS" },
            line.reason.lines().next().unwrap_or_default()
        );
        if let Some(ceiling) = &line.ceiling {
            println!("  {:<13}       ({ceiling})", "");
        }
    }
    println!(
        "  overall      {}",
        if report.target.pass { "PASS" } else { "MISS" }
    );
}
