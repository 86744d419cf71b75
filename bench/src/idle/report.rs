//! What `bench idle` reports: bytes per idle connection per system and N, the ratios and the
//! target line, printed as a table and saved as idle-*.json.
use crate::machine::Machine;
use crate::summary::{self, find, first_line, ratio, thousands, times};
use serde::Serialize;
use std::collections::BTreeMap;
use tether_testkit::process::indent;

/// Issue 11's bar for one idle client connection.
pub const TARGET_BYTES: f64 = 4096.0;
/// `proxy.maxConnections` written to tether's config, when this tether knows the field.
pub const TETHER_MAX_CONNECTIONS: u32 = 200_000;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    Baseline,
    Tether,
    Haproxy,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Baseline => "baseline",
            System::Tether => "tether",
            System::Haproxy => "haproxy",
        }
    }
}

/// Everything saved to bench/results/idle-*.json (and drawn in the chart).
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
    pub connections: Vec<usize>,
    pub concurrency: usize,
    pub connections_per_source_address: usize,
    pub nofile: u64,
    /// Why RLIMIT_NOFILE is below 200000, if it is.
    pub nofile_note: Option<String>,
    pub proxy_workers: u32,
    /// Whether tether's config carried `proxy.maxConnections`, and why not.
    pub tether_max_connections: String,
    pub systems: BTreeMap<String, String>,
    pub method: String,
}

/// One system holding N idle client connections.
#[derive(Serialize)]
pub struct Cell {
    pub system: System,
    pub connections: usize,
    /// All N connections opened, got a 2xx and were still open when RSS was taken.
    pub ok: bool,
    /// Not run: N does not fit this machine's open-file limit.
    pub skipped: bool,
    pub error: Option<String>,
    pub notes: Vec<String>,
    /// The process whose RSS and fds are counted.
    pub measured: String,
    pub opened: usize,
    pub failed: usize,
    /// Attempts that failed and were tried again.
    pub retried: usize,
    /// Connections the system had closed by the time RSS was taken.
    pub closed_by_peer: usize,
    pub source_addresses: usize,
    pub open_seconds: f64,
    pub rss_before: u64,
    pub rss_after: u64,
    /// (rss_after - rss_before) / opened.
    pub bytes_per_connection: Option<f64>,
    pub settled: bool,
    pub settle_seconds: f64,
    pub fds_before: usize,
    pub fds_after: usize,
    /// The bench process itself (the clients): not part of the system's number.
    pub client_rss_before: u64,
    pub client_rss_after: u64,
    pub client_bytes_per_connection: Option<f64>,
    /// TCP socket memory of the whole machine (/proc/net/sockstat), both ends of every socket.
    pub kernel_tcp_mem_before: Option<u64>,
    pub kernel_tcp_mem_after: Option<u64>,
}

#[derive(Serialize)]
pub struct Ratio {
    pub connections: usize,
    pub numerator: System,
    pub denominator: System,
    /// numerator bytes per idle connection over denominator's.
    pub bytes_per_connection: Option<f64>,
}

#[derive(Serialize)]
pub struct Target {
    pub rule: String,
    pub pass: bool,
    pub lines: Vec<TargetLine>,
}

#[derive(Serialize)]
pub struct TargetLine {
    pub connections: usize,
    pub pass: bool,
    pub tether_bytes_per_connection: Option<f64>,
}

summary::cell_keys!(Cell, System = system, usize = connections);

/// Ratios between clean cells only.
pub fn ratios(cells: &[Cell], counts: &[usize]) -> Vec<Ratio> {
    const PAIRS: [(System, System); 2] = [
        (System::Tether, System::Haproxy),
        (System::Tether, System::Baseline),
    ];
    summary::pairs(cells, counts, &PAIRS)
        .into_iter()
        .map(|(connections, a, b)| Ratio {
            connections,
            numerator: a.system,
            denominator: b.system,
            bytes_per_connection: ratio(
                a.ok && b.ok,
                a.bytes_per_connection,
                b.bytes_per_connection,
            ),
        })
        .collect()
}

pub fn target(cells: &[Cell], counts: &[usize]) -> Target {
    let lines: Vec<TargetLine> = counts
        .iter()
        .filter_map(|&n| {
            let t = find(cells, System::Tether, n)?;
            let bytes = t.bytes_per_connection.filter(|_| t.ok);
            Some(TargetLine {
                connections: n,
                pass: bytes.is_some_and(|b| b <= TARGET_BYTES),
                tether_bytes_per_connection: bytes,
            })
        })
        .collect();
    Target {
        rule: format!(
            "tether <= {TARGET_BYTES:.0} bytes of RSS per idle keep-alive client connection \
             (issue 11)"
        ),
        pass: !lines.is_empty() && lines.iter().all(|l| l.pass),
        lines,
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

pub fn per_conn(bytes: Option<f64>) -> String {
    match bytes {
        None => "-".into(),
        Some(b) if b.abs() < 1024.0 => format!("{b:.0} B"),
        Some(b) => format!("{:.1} KiB", b / 1024.0),
    }
}

pub fn print_cell_line(c: &Cell) {
    if c.skipped {
        println!("SKIPPED");
        return;
    }
    if c.opened == 0 && c.error.is_some() {
        println!("FAILED\n{}", indent(c.error.as_deref().unwrap_or("failed")));
        return;
    }
    println!(
        "opened {} in {:.1} s ({} retried), RSS {} -> {} (settled in {:.1} s{}), {} per connection, fds {} -> {}{}",
        thousands(c.opened as f64),
        c.open_seconds,
        c.retried,
        mib(c.rss_before),
        mib(c.rss_after),
        c.settle_seconds,
        if c.settled { "" } else { ", NOT settled" },
        per_conn(c.bytes_per_connection),
        c.fds_before,
        c.fds_after,
        c.error
            .as_deref()
            .map(|e| format!("\n{}", indent(&format!("ERROR: {e}"))))
            .unwrap_or_default()
    );
}

pub fn print_results(report: &Report) {
    println!();
    println!(
        "{:<9} {:>7} {:>11} {:>11} {:>11} {:>8} {:>8} {:>13} {:>12}  status",
        "system",
        "N",
        "RSS before",
        "RSS after",
        "bytes/conn",
        "fds",
        "fds/conn",
        "client B/conn",
        "kernel B/conn"
    );
    for c in &report.cells {
        let measured = c.opened > 0;
        let per_fd = if c.opened > 0 {
            format!(
                "{:.2}",
                (c.fds_after as f64 - c.fds_before as f64) / c.opened as f64
            )
        } else {
            "-".into()
        };
        let kernel = match (c.kernel_tcp_mem_before, c.kernel_tcp_mem_after) {
            (Some(b), Some(a)) if c.opened > 0 => {
                per_conn(Some((a as f64 - b as f64) / c.opened as f64))
            }
            _ => "-".into(),
        };
        let status = if c.skipped {
            first_line(c.error.as_deref().unwrap_or("skipped"))
        } else if c.ok {
            if c.settled {
                "ok".to_string()
            } else {
                "ok, RSS not settled".to_string()
            }
        } else {
            format!(
                "ERROR: {}",
                first_line(c.error.as_deref().unwrap_or("failed"))
            )
        };
        println!(
            "{:<9} {:>7} {:>11} {:>11} {:>11} {:>8} {:>8} {:>13} {:>12}  {status}",
            c.system.name(),
            thousands(c.connections as f64),
            if measured {
                mib(c.rss_before)
            } else {
                "-".into()
            },
            if measured {
                mib(c.rss_after)
            } else {
                "-".into()
            },
            per_conn(c.bytes_per_connection),
            if measured {
                c.fds_after.to_string()
            } else {
                "-".into()
            },
            per_fd,
            per_conn(c.client_bytes_per_connection),
            kernel,
        );
    }
    println!(
        "(bytes/conn: (RSS after - RSS before) / N of the system's process; baseline counts the \
         echo backend; fds: open fds after; client B/conn: this bench's own RSS growth, not part \
         of any system's number; kernel B/conn: TCP socket memory of the whole machine, both \
         ends, outside every RSS)"
    );
    println!();
    for r in &report.ratios {
        println!(
            "{:>7} {}/{}: bytes per idle connection {}",
            thousands(r.connections as f64),
            r.numerator.name(),
            r.denominator.name(),
            times(r.bytes_per_connection)
        );
    }
    for c in &report.cells {
        for note in &c.notes {
            println!("note: {}/{}: {note}", c.system.name(), c.connections);
        }
    }
    let mut errors: Vec<&str> = Vec::new();
    for c in &report.cells {
        if let Some(error) = c.error.as_deref().filter(|e| !errors.contains(e)) {
            errors.push(error);
            println!("{}/{}: {error}", c.system.name(), c.connections);
        }
    }
    println!();
    println!("target: {}", report.target.rule);
    for line in &report.target.lines {
        println!(
            "  {:>7}  {}  tether {}",
            thousands(line.connections as f64),
            if line.pass { "PASS" } else { "MISS" },
            per_conn(line.tether_bytes_per_connection)
        );
    }
    println!(
        "  overall  {}",
        if report.target.pass { "PASS" } else { "MISS" }
    );
}
