//! The L4 chart (l4-latest.png): ns/packet bars (the empty program included), throughput bars
//! of direct, tether and nftables per scenario, and throughput per node CPU relative to
//! nftables.
use super::cost;
use super::lab::PodReceive;
use super::report::{cost_unit, fmt_throughput, Cell, Report, Scenario, System, TARGET_RATIO};
use crate::chart::{
    canvas, draw_bars, draw_heading, machine_line, plot_error, Area, Bar, Group, Line, Panel,
    Style, HEADING,
};
use anyhow::Result;
use plotters::prelude::*;
use std::path::Path;

const WIDTH: u32 = 1950;
const HEIGHT: u32 = 980;

fn color(system: System) -> RGBColor {
    match system {
        System::Direct => RGBColor(150, 150, 150),
        System::Tether => RGBColor(230, 120, 20),
        System::TetherRedirect => RGBColor(200, 60, 40),
        System::TetherStack => RGBColor(240, 190, 120),
        System::Nftables => RGBColor(40, 100, 180),
    }
}

/// The reference lines' colour.
const LINE: RGBColor = RGBColor(200, 30, 30);

/// A bar's text is red when the bar is missing.
fn text_color(value: Option<f64>) -> RGBColor {
    if value.is_some() {
        BLACK
    } else {
        RED
    }
}

pub fn draw(report: &Report, path: &Path) -> Result<()> {
    let root = canvas(path, (WIDTH, HEIGHT))?;
    let (header, body) = root.split_vertically(HEADING);
    draw_header(report, &header)?;
    let (top, bottom) = body.split_vertically((HEIGHT - HEADING) / 2);
    let [top_left, top_middle, top_right] = thirds(&top);
    let [bottom_left, bottom_middle, bottom_right] = thirds(&bottom);

    draw_bars(&top_left, &cost_panel(report), &Style::COMPACT)?;
    draw_bars(
        &top_middle,
        &throughput_panel(report, Scenario::Bulk),
        &Style::COMPACT,
    )?;
    draw_bars(
        &top_right,
        &throughput_panel(report, Scenario::ConnRate),
        &Style::COMPACT,
    )?;
    draw_bars(
        &bottom_left,
        &throughput_panel(report, Scenario::Udp),
        &Style::COMPACT,
    )?;
    draw_bars(
        &bottom_middle,
        &relative_panel(report, Relative::NodeCpu),
        &Style::COMPACT,
    )?;
    draw_bars(
        &bottom_right,
        &relative_panel(report, Relative::PathCpu),
        &Style::COMPACT,
    )?;
    root.present().map_err(plot_error)?;
    Ok(())
}

fn thirds<DB: DrawingBackend>(area: &Area<DB>) -> [Area<DB>; 3] {
    let (left, rest) = area.split_horizontally(WIDTH / 3);
    let (middle, right) = rest.split_horizontally(WIDTH / 3);
    [left, middle, right]
}

/// What the relative panels divide by: the node's CPU, or the whole path's.
#[derive(Clone, Copy)]
enum Relative {
    NodeCpu,
    PathCpu,
}

fn cost_panel(report: &Report) -> Panel<'static> {
    let mut bars = Vec::new();
    let mut line = None;
    if let Some(cost) = &report.cost {
        for f in &cost.fixtures {
            let color = match f.key {
                "empty" => RGBColor(150, 150, 150),
                "established" => RGBColor(230, 120, 20),
                "syn" => RGBColor(200, 80, 40),
                _ => RGBColor(240, 170, 90),
            };
            bars.push(Bar {
                value: f.ns_per_packet,
                range: match (f.ns_min, f.ns_max) {
                    (Some(lo), Some(hi)) if f.rounds.len() > 1 => Some((lo, hi)),
                    _ => None,
                },
                color,
                text: match (f.ns_per_packet, f.ratio_to_empty) {
                    (Some(v), Some(r)) => format!("{v:.1} ({r:.1}x)"),
                    (Some(v), None) => format!("{v:.1}"),
                    _ => "-".into(),
                },
                text_color: text_color(f.ns_per_packet),
                label: Some(
                    match f.key {
                        "empty" => "empty",
                        "established" => "established",
                        "established-redirect" => "redirected",
                        "established-draining" => "draining",
                        "syn" => "SYN",
                        "miss-port" => "miss: port",
                        "miss-vip" => "miss: VIP",
                        other => other,
                    }
                    .to_string(),
                ),
            });
        }
        if let Some(empty) = cost.fixture("empty").and_then(|f| f.ns_per_packet) {
            line = Some(Line {
                value: empty * cost::TARGET_RATIO,
                label: format!("{}x empty", cost::TARGET_RATIO),
                color: LINE,
            });
        }
    }
    // The SYN's (cold) cost dwarfs the rest: cut it at 2.5x the tallest of the others.
    let others = report
        .cost
        .iter()
        .flat_map(|c| &c.fixtures)
        .filter(|f| f.key != "syn")
        .filter_map(|f| f.ns_max.or(f.ns_per_packet))
        .chain(line.as_ref().map(|line| line.value))
        .fold(0.0_f64, f64::max);
    let clip = (others > 0.0).then_some(others * 2.5);
    Panel {
        title: "XDP ns/packet, BPF_PROG_TEST_RUN (median; whiskers: min-max)",
        axis: "ns/packet",
        groups: vec![Group {
            name: String::new(),
            bars,
        }],
        line,
        clip,
        tick: |v| format!("{v:.0}"),
    }
}

fn systems(report: &Report) -> Vec<System> {
    let mut systems: Vec<System> = report.cells.iter().map(|c| c.system).collect();
    systems.sort();
    systems.dedup();
    systems
}

fn find(report: &Report, system: System, scenario: Scenario) -> Option<&Cell> {
    report
        .cells
        .iter()
        .find(|c| c.system == system && c.scenario == scenario)
}

fn throughput_panel(report: &Report, scenario: Scenario) -> Panel<'static> {
    let bars = systems(report)
        .into_iter()
        .filter_map(|system| {
            let cell = find(report, system, scenario)?;
            let text = match cell.throughput {
                Some(v) => format!(
                    "{}{} @ {} node CPU",
                    fmt_throughput(scenario, v),
                    if cell.ok { "" } else { " ERR" },
                    cell.node_cpu_pct.map_or("-".into(), |p| format!("{p:.0}%"))
                ),
                None => "failed".into(),
            };
            Some(Bar {
                value: cell.throughput,
                range: match (cell.throughput_min, cell.throughput_max) {
                    (Some(lo), Some(hi)) if cell.samples_used > 1 => Some((lo, hi)),
                    _ => None,
                },
                color: color(system),
                text: if cell.disturbed {
                    format!("{text}*")
                } else {
                    text
                },
                text_color: text_color(cell.throughput),
                label: Some(format!(
                    "{}\n{}",
                    system.name(),
                    cell.node_cost
                        .map_or("-".into(), |c| format!("{c:.0} {}", cost_unit(scenario)))
                )),
            })
        })
        .collect();
    let (title, axis, tick): (&str, &str, fn(f64) -> String) = match scenario {
        Scenario::Bulk => (
            "bulk TCP throughput, Gbit/s (label: node CPU; under: node ns per packet)",
            "Gbit/s",
            |v| format!("{v:.1}"),
        ),
        Scenario::ConnRate => (
            "connection rate, conn/s (label: node CPU; under: node us per connection)",
            "conn/s",
            |v| format!("{:.0}k", v / 1e3),
        ),
        Scenario::Udp => (
            "UDP 64-byte datagrams, Mpkt/s (label: node CPU; under: node ns per packet)",
            "Mpkt/s",
            |v| format!("{v:.2}"),
        ),
    };
    Panel {
        title,
        axis,
        groups: vec![Group {
            name: String::new(),
            bars,
        }],
        line: None,
        clip: None,
        tick,
    }
}

fn relative_panel(report: &Report, relative: Relative) -> Panel<'static> {
    let measure = move |cell: &Cell| match relative {
        Relative::NodeCpu => cell.per_node_cpu,
        Relative::PathCpu => cell.per_path_cpu,
    };
    let mut scenarios: Vec<Scenario> = report.cells.iter().map(|c| c.scenario).collect();
    scenarios.sort();
    scenarios.dedup();
    let groups = scenarios
        .into_iter()
        .map(|scenario| {
            let base = find(report, System::Nftables, scenario).and_then(measure);
            let bars = systems(report)
                .into_iter()
                .filter_map(|system| {
                    let cell = find(report, system, scenario)?;
                    let value = match (measure(cell), base) {
                        (Some(v), Some(b)) if b > 0.0 => Some(v / b),
                        _ => None,
                    };
                    Some(Bar {
                        value,
                        range: None,
                        color: color(system),
                        text: value.map_or("-".into(), |v| format!("{v:.2}x")),
                        text_color: text_color(value),
                        label: None,
                    })
                })
                .collect();
            Group {
                name: scenario.name().to_string(),
                bars,
            }
        })
        .collect();
    let (title, line) = match relative {
        Relative::NodeCpu => (
            "throughput per node CPU, relative to nftables (higher is better)",
            Line {
                value: TARGET_RATIO,
                label: format!("target {TARGET_RATIO}x"),
                color: LINE,
            },
        ),
        Relative::PathCpu => (
            "throughput per CPU of the whole path (node, client, pods), relative to nftables",
            Line {
                value: 1.0,
                label: "nftables".to_string(),
                color: LINE,
            },
        ),
    };
    Panel {
        title,
        axis: "x nftables",
        groups,
        line: Some(line),
        clip: None,
        tick: |v| format!("{v:.1}"),
    }
}

fn draw_header<DB: DrawingBackend>(report: &Report, area: &Area<DB>) -> Result<()> {
    let s = &report.settings;
    let title = format!(
        "tether L4 bench (XDP {}), {} s/cell",
        s.xdp_mode, s.duration_s
    );
    let verdict = |pass: Option<bool>| match pass {
        Some(true) => "PASS",
        Some(false) => "MISS",
        None => "n/a",
    };
    let lines = [
        machine_line(&report.timestamp, &report.machine),
        format!(
            "node NAPI kthreads on CPU {}, client + pods on CPU {}, pods' kernel receive on the \
             {} CPU; bulk {} streams, conn-rate {} in flight",
            s.node_cpus,
            s.load_cpus,
            match s.pod_receive {
                PodReceive::Load => "load",
                PodReceive::Node => "node",
            },
            s.streams,
            s.concurrency
        ),
        format!(
            "targets: established <= 3x empty: {}   |   tether >= {TARGET_RATIO}x nftables per \
             node CPU: {}{}",
            verdict(report.target.cost_pass),
            if report.target.scenarios.is_empty() {
                "n/a".to_string()
            } else {
                report
                    .target
                    .scenarios
                    .iter()
                    .map(|l| {
                        format!(
                            "{} {}",
                            l.scenario.name(),
                            if l.pass { "PASS" } else { "MISS" }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            if report.cells.iter().any(|c| c.disturbed) {
                "   (* = machine busy)"
            } else {
                ""
            }
        ),
    ];
    let legend: Vec<(String, RGBColor)> = systems(report)
        .iter()
        .map(|&system| {
            let text = match system {
                System::Direct => "direct (no NAT)",
                System::Tether => "tether (peer delivery)",
                System::TetherRedirect => "tether (XDP redirect)",
                System::TetherStack => "tether (stack path)",
                System::Nftables => "nftables DNAT",
            };
            (text.to_string(), color(system))
        })
        .collect();
    draw_heading(area, WIDTH, title, &legend, &lines)
}
