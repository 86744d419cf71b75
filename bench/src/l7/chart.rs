//! The L7 chart (l7-latest.png): grouped bars of req/s, p99 and the proxy's CPU per request,
//! one group per scenario, one bar per system (and worker count, labelled under the bar, when
//! the run had several).
use super::report::{Cell, Report, Scenario, System};
use crate::chart::{
    canvas, draw_bars, draw_heading, machine_line, plot_error, version_label, Bar, Group, Panel,
    Style, HEADING,
};
use crate::summary::thousands;
use anyhow::Result;
use plotters::prelude::*;
use std::path::Path;

/// The chart's width with up to four bars to a group; more bars widen it.
const WIDTH: u32 = 2000;
const MAX_WIDTH: u32 = 4800;
/// The height of one row of panels (req/s; p99 and CPU per request).
const ROW: u32 = 610;

fn color(system: System) -> RGBColor {
    match system {
        System::Direct => RGBColor(150, 150, 150),
        System::Tether => RGBColor(230, 120, 20),
        System::Haproxy => RGBColor(40, 100, 180),
        System::Nginx => RGBColor(40, 150, 70),
    }
}

fn label(report: &Report, system: System) -> String {
    match system {
        System::Direct => "direct (no proxy)".to_string(),
        System::Tether => "tether".to_string(),
        System::Haproxy => version_label(report.machine.haproxy.as_deref(), "HAProxy"),
        System::Nginx => version_label(report.machine.nginx.as_deref(), "nginx"),
    }
}

/// The worker counts of the run's cells, ascending.
fn worker_counts(report: &Report) -> Vec<usize> {
    let mut counts: Vec<usize> = report.cells.iter().map(|c| c.workers).collect();
    counts.sort_unstable();
    counts.dedup();
    counts
}

fn systems(report: &Report) -> Vec<System> {
    let mut systems: Vec<System> = report.cells.iter().map(|c| c.system).collect();
    systems.sort();
    systems.dedup();
    systems
}

pub fn draw(report: &Report, path: &Path) -> Result<()> {
    let bars = (systems(report).len() * worker_counts(report).len()).max(1) as u32;
    let width = (WIDTH * bars / 4).clamp(WIDTH, MAX_WIDTH);
    let root = canvas(path, (width, HEADING + 2 * ROW))?;
    let (header, body) = root.split_vertically(HEADING);
    draw_header(report, &header, width)?;
    let requests = |v: f64| {
        if v >= 10_000.0 {
            format!("{:.1}k", v / 1e3)
        } else {
            thousands(v)
        }
    };
    let p99 = |v: f64| format!("{v:.2}");
    let us = |v: f64| format!("{v:.1}");
    let rate = |c: &Cell| {
        let range = match (c.requests_per_sec_min, c.requests_per_sec_max) {
            (Some(lo), Some(hi)) if c.samples_used > 1 => Some((lo, hi)),
            _ => None,
        };
        (c.requests_per_sec, range)
    };
    // Handshakes per second are an order of magnitude below keep-alive requests per second:
    // they get their own panel and axis.
    let keep_alive = |scenario: Scenario| scenario != Scenario::TlsHandshake;
    let handshake = |scenario: Scenario| scenario == Scenario::TlsHandshake;
    let all = |_: System| true;
    let proxies = |system: System| system != System::Direct;
    let mut top = vec![Panel {
        title: "Requests/sec over keep-alive connections, median (whiskers: min-max)",
        axis: "req/s",
        groups: groups(report, &keep_alive, &all, &requests, rate),
        line: None,
        clip: None,
        tick: requests,
    }];
    let handshakes = groups(report, &handshake, &all, &requests, rate);
    if !handshakes.is_empty() {
        top.push(Panel {
            title: "New TLS conn/s (a full handshake per request)",
            axis: "conn/s",
            groups: handshakes,
            line: None,
            clip: None,
            tick: requests,
        });
    }
    let bottom = vec![
        Panel {
            title: "p99 latency, ms (lower is better)",
            axis: "ms",
            groups: groups(report, &|_| true, &all, &p99, |c| (c.p99_ms, None)),
            line: None,
            clip: None,
            tick: p99,
        },
        Panel {
            title: "Proxy CPU time per request, us (lower is better)",
            axis: "us",
            groups: groups(report, &|_| true, &proxies, &us, |c| {
                (c.cpu_us_per_request, None)
            }),
            line: None,
            clip: None,
            tick: us,
        },
    ];
    // Worker counts are labelled under the bars: the scenario names go under those.
    let style = if worker_counts(report).len() > 1 {
        Style {
            x_label_area: 62,
            group_name_gap: 30,
            ..Style::LARGE
        }
    } else {
        Style::LARGE
    };
    let (upper, lower) = body.split_vertically(ROW);
    draw_row(&upper, &top, width, &style)?;
    draw_row(&lower, &bottom, width, &style)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

/// `panels` side by side in `area`, each as wide as its groups need (one slot per group).
fn draw_row<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    panels: &[Panel],
    width: u32,
    style: &Style,
) -> Result<()> {
    let slots: Vec<u32> = panels
        .iter()
        .map(|panel| panel.groups.len().max(1) as u32)
        .collect();
    let total: u32 = slots.iter().sum::<u32>().max(1);
    let mut rest = area.clone();
    for (i, panel) in panels.iter().enumerate() {
        let part = if i + 1 == panels.len() {
            rest.clone()
        } else {
            let w = (width * slots[i] / total).max(width / 5);
            let (left, right) = rest.split_horizontally(w);
            rest = right;
            left
        };
        draw_bars(&part, panel, style)?;
    }
    Ok(())
}

/// One group per scenario, one bar per system (of those `systems` keeps) and worker count:
/// its value, whisker and text, and the worker count under it when the run had several.
fn groups(
    report: &Report,
    shown: &dyn Fn(Scenario) -> bool,
    systems_shown: &dyn Fn(System) -> bool,
    text: &dyn Fn(f64) -> String,
    value: impl Fn(&Cell) -> (Option<f64>, Option<(f64, f64)>),
) -> Vec<Group> {
    let mut scenarios: Vec<Scenario> = report
        .cells
        .iter()
        .map(|c| c.scenario)
        .filter(|&scenario| shown(scenario))
        .collect();
    scenarios.sort();
    scenarios.dedup();
    let counts = worker_counts(report);
    let several = counts.len() > 1;
    // Bars by worker count first, so the systems compared at one count stand side by side.
    let keys: Vec<(usize, System)> = counts
        .iter()
        .flat_map(|&w| {
            systems(report)
                .into_iter()
                .filter(|&system| systems_shown(system))
                .map(move |system| (w, system))
        })
        .collect();
    scenarios
        .into_iter()
        .map(|scenario| Group {
            name: scenario.name().to_string(),
            bars: keys
                .iter()
                .filter_map(|&(workers, system)| {
                    let cell = report.cells.iter().find(|c| {
                        c.system == system && c.scenario == scenario && c.workers == workers
                    })?;
                    let (value, range) = value(cell);
                    let (text, text_color) = match value {
                        Some(v) if cell.ok && cell.disturbed => (format!("{}*", text(v)), BLACK),
                        Some(v) if cell.ok => (text(v), BLACK),
                        Some(v) => (format!("{} ERR", text(v)), RED),
                        None => ("failed".to_string(), RED),
                    };
                    Some(Bar {
                        value,
                        range,
                        color: color(system),
                        text,
                        text_color,
                        label: several.then(|| format!("{workers}w")),
                    })
                })
                .collect(),
        })
        .collect()
}

fn draw_header<DB: DrawingBackend>(
    report: &Report,
    area: &DrawingArea<DB, plotters::coord::Shift>,
    width: u32,
) -> Result<()> {
    let s = &report.settings;
    let counts = s
        .proxy_workers
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let title = format!(
        "tether L7 bench: {} conns, {} s/cell, {counts} worker{}/proxy{}",
        s.connections,
        s.duration_s,
        if s.proxy_workers == [1] { "" } else { "s" },
        if s.proxy_workers.len() > 1 {
            " (under the bars)"
        } else {
            ""
        }
    );
    let lines = [
        machine_line(&report.timestamp, &report.machine),
        format!("pinning: {}", s.pinning.description),
        format!(
            "target: {}: {}{}",
            report.target.rule,
            if report.target.pass { "PASS" } else { "MISS" },
            if report.cells.iter().any(|c| c.disturbed) {
                "   (* = machine busy: other processes used >= 10% of a CPU or stalled on I/O)"
            } else {
                ""
            }
        ),
    ];
    // One legend for both panels, on the title line's right.
    let legend: Vec<(String, RGBColor)> = systems(report)
        .into_iter()
        .map(|system| (label(report, system), color(system)))
        .collect();
    draw_heading(area, width, title, &legend, &lines)
}

#[cfg(test)]
mod tests {
    use super::super::report::{
        groups, ratios, target, tests::cell_in, Pinning, Settings, WorkerPinning,
    };
    use super::*;
    use crate::machine::Machine;
    use std::collections::BTreeMap;
    use tether_testkit::fs::TempDir;

    fn report(workers: &[usize]) -> Report {
        let systems = [
            System::Direct,
            System::Tether,
            System::Haproxy,
            System::Nginx,
        ];
        let scenarios = [
            Scenario::Sticky,
            Scenario::NewSession,
            Scenario::Https,
            Scenario::H2,
            Scenario::TlsHandshake,
        ];
        let groups = groups(&scenarios, workers);
        let cells: Vec<Cell> = systems
            .iter()
            .flat_map(|&system| groups.iter().map(move |&group| (system, group)))
            .filter(|&(system, group)| group.scenario.runs_on(system))
            .map(|(system, group)| {
                let w = group.workers as f64;
                let cpu = (system != System::Direct).then_some(0.5 + w / 10.0);
                cell_in(system, group, 20_000.0 * w, 1.0 + w, cpu)
            })
            .collect();
        let ratios = ratios(&cells, &groups);
        let target = target(&cells, &groups);
        Report {
            bench: "l7",
            timestamp: "2026-01-01T00:00:00Z".into(),
            machine: Machine {
                nproc: 2,
                cpu_model: None,
                kernel: None,
                os: None,
                haproxy: None,
                nginx: None,
                wrk: None,
                h2load: None,
                rustc: None,
                git_commit: None,
                git_dirty: None,
            },
            settings: Settings {
                duration_s: 10,
                warmup_s: 2,
                connections: 32,
                wrk_threads: 1,
                rounds: 1,
                proxy_workers: workers.to_vec(),
                h2_streams: 4,
                certificate: String::new(),
                pinning: Pinning {
                    enabled: true,
                    proxy_cpus: "0".into(),
                    load_cpus: "1".into(),
                    description: "test".into(),
                    by_workers: workers
                        .iter()
                        .map(|&workers| WorkerPinning {
                            workers,
                            proxy_cpus: "0".into(),
                            shared_with_load: String::new(),
                        })
                        .collect(),
                    notes: Vec::new(),
                },
                backends: Vec::new(),
                systems: BTreeMap::new(),
            },
            cells,
            ratios,
            target,
        }
    }

    #[test]
    fn charts_draw_with_one_and_several_worker_counts() -> Result<()> {
        let dir = TempDir::new("l7-chart")?;
        for workers in [&[1][..], &[1, 2, 4][..]] {
            let path = dir.path().join(format!("l7-{}.png", workers.len()));
            draw(&report(workers), &path)?;
            assert!(std::fs::metadata(&path)?.len() > 10_000);
        }
        Ok(())
    }
}
