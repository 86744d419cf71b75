//! The L4 chart (l4-latest.png): ns/packet bars (the empty program included), throughput bars
//! of direct, tether and nftables per scenario, and throughput per node CPU relative to
//! nftables. Same backend and embedded font as the L7 chart.
use super::{cost_unit, fmt_throughput, Cell, Report, Scenario, System, TARGET_RATIO};
use crate::bench::chart::{draw_heading, plot_error, FAMILY, FONT};
use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
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

struct Bar {
    value: Option<f64>,
    range: Option<(f64, f64)>,
    color: RGBColor,
    /// Above the bar.
    text: String,
    /// Under the bar (inside the group), if any.
    label: Option<String>,
}

struct Group {
    name: String,
    bars: Vec<Bar>,
}

struct Panel<'a> {
    title: &'a str,
    axis: &'a str,
    groups: Vec<Group>,
    /// A horizontal reference line (value, label).
    line: Option<(f64, String)>,
    /// Bars taller than this are cut at it (and say so), so one tall bar does not flatten the rest.
    clip: Option<f64>,
    tick: fn(f64) -> String,
}

pub fn draw(report: &Report, path: &Path) -> Result<()> {
    plotters::style::register_font(FAMILY, FontStyle::Normal, FONT)
        .map_err(|_| anyhow!("the embedded font does not parse"))?;
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let (header, body) = root.split_vertically(110);
    draw_header(report, &header)?;
    let (top, bottom) = body.split_vertically((HEIGHT - 110) / 2);
    let [top_left, top_middle, top_right] = thirds(&top);
    let [bottom_left, bottom_middle, bottom_right] = thirds(&bottom);

    draw_panel(&top_left, &cost_panel(report))?;
    draw_panel(&top_middle, &throughput_panel(report, Scenario::Bulk))?;
    draw_panel(&top_right, &throughput_panel(report, Scenario::ConnRate))?;
    draw_panel(&bottom_left, &throughput_panel(report, Scenario::Udp))?;
    draw_panel(&bottom_middle, &relative_panel(report, Relative::NodeCpu))?;
    draw_panel(&bottom_right, &relative_panel(report, Relative::PathCpu))?;
    root.present().map_err(plot_error)?;
    Ok(())
}

fn thirds<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>) -> [DrawingArea<DB, Shift>; 3] {
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
            line = Some((
                empty * super::cost::TARGET_RATIO,
                format!("{}x empty", super::cost::TARGET_RATIO),
            ));
        }
    }
    // The SYN's (cold) cost dwarfs the rest: cut it at 2.5x the tallest of the others.
    let others = report
        .cost
        .iter()
        .flat_map(|c| &c.fixtures)
        .filter(|f| f.key != "syn")
        .filter_map(|f| f.ns_max.or(f.ns_per_packet))
        .chain(line.as_ref().map(|(v, _)| *v))
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
            Some((TARGET_RATIO, format!("target {TARGET_RATIO}x"))),
        ),
        Relative::PathCpu => (
            "throughput per CPU of the whole path (node, client, pods), relative to nftables",
            Some((1.0, "nftables".to_string())),
        ),
    };
    Panel {
        title,
        axis: "x nftables",
        groups,
        line,
        clip: None,
        tick: |v| format!("{v:.1}"),
    }
}

fn draw_header<DB: DrawingBackend>(report: &Report, area: &DrawingArea<DB, Shift>) -> Result<()> {
    let m = &report.machine;
    let s = &report.settings;
    let title = format!(
        "tether L4 bench (XDP {}), {} s/cell",
        s.xdp_mode, s.duration_s
    );
    let commit = m
        .git_commit
        .as_deref()
        .map(|c| c.chars().take(10).collect::<String>())
        .unwrap_or_else(|| "?".into());
    let verdict = |pass: Option<bool>| match pass {
        Some(true) => "PASS",
        Some(false) => "MISS",
        None => "n/a",
    };
    let lines = [
        format!(
            "{}  |  commit {}{}  |  {} CPU(s) {}  |  kernel {}",
            report.timestamp,
            commit,
            if m.git_dirty == Some(true) {
                " (dirty)"
            } else {
                ""
            },
            m.nproc,
            m.cpu_model.as_deref().unwrap_or(""),
            m.kernel.as_deref().unwrap_or("?")
        ),
        format!(
            "node NAPI kthreads on CPU {}, client + pods on CPU {}, pods' kernel receive on the \
             {} CPU; bulk {} streams, conn-rate {} in flight",
            s.node_cpus,
            s.load_cpus,
            match s.pod_receive {
                super::lab::PodReceive::Load => "load",
                super::lab::PodReceive::Node => "node",
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

fn draw_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, panel: &Panel) -> Result<()> {
    let cut = |v: f64| panel.clip.map_or(v, |c| v.min(c));
    let top = panel
        .groups
        .iter()
        .flat_map(|g| &g.bars)
        .filter_map(|b| b.value.map(|v| cut(v.max(b.range.map_or(v, |(_, hi)| hi)))))
        .chain(panel.line.as_ref().map(|(v, _)| *v))
        .fold(0.0_f64, f64::max);
    let top = if top > 0.0 { top * 1.3 } else { 1.0 };
    let groups = panel.groups.len().max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(panel.title, (FAMILY, 17))
        .margin(16)
        .x_label_area_size(52)
        .y_label_area_size(64)
        .build_cartesian_2d(-0.5..groups - 0.5, 0.0..top)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .x_label_formatter(&|_| String::new())
        .y_desc(panel.axis)
        .y_label_formatter(&|v| (panel.tick)(*v))
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 14))
        .y_labels(8)
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()
        .map_err(plot_error)?;

    let (ox, oy) = area.get_base_pixel();
    for (g, group) in panel.groups.iter().enumerate() {
        let n = group.bars.len().max(1) as f64;
        let slot = 0.84 / n;
        for (k, bar) in group.bars.iter().enumerate() {
            let x0 = g as f64 - 0.42 + k as f64 * slot + slot * 0.08;
            let x1 = x0 + slot * 0.84;
            let x = (x0 + x1) / 2.0;
            let clipped = bar.value.is_some_and(|v| cut(v) < v);
            if let Some(value) = bar.value.map(cut) {
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(x0, 0.0), (x1, value)],
                        bar.color.filled(),
                    )))
                    .map_err(plot_error)?;
            }
            if clipped {
                // A white notch near the top marks the cut.
                let at = cut(bar.value.unwrap_or(0.0)) * 0.93;
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(x0, at), (x1, at + top * 0.015)],
                        WHITE.filled(),
                    )))
                    .map_err(plot_error)?;
            }
            let mut label_at = bar.value.map(cut).unwrap_or(0.0);
            if let Some((lo, hi)) = bar.range.filter(|_| !clipped) {
                let whisker = ShapeStyle::from(&BLACK.mix(0.6)).stroke_width(2);
                let cap = slot * 0.12;
                for points in [
                    vec![(x, lo), (x, hi)],
                    vec![(x - cap, lo), (x + cap, lo)],
                    vec![(x - cap, hi), (x + cap, hi)],
                ] {
                    chart
                        .plotting_area()
                        .draw(&PathElement::new(points, whisker))
                        .map_err(plot_error)?;
                }
                label_at = label_at.max(hi);
            }
            let tint = if bar.value.is_some() { BLACK } else { RED };
            let style = (FAMILY, 12)
                .into_font()
                .color(&tint)
                .pos(Pos::new(HPos::Center, VPos::Bottom));
            let text = if clipped {
                format!("{} (cut)", bar.text)
            } else {
                bar.text.clone()
            };
            // "value @ CPU" on two lines, the value on top: five bars to a group leave no room
            // for one line.
            let (px, py) = chart.backend_coord(&(x, label_at + top * 0.01));
            let lines: Vec<&str> = match text.split_once(" @ ") {
                Some((value, cpu)) => vec![value, cpu],
                None => vec![text.as_str()],
            };
            for (i, line) in (0i32..).zip(lines.iter().rev()) {
                area.draw(&Text::new(
                    line.to_string(),
                    (px - ox, py - oy - 14 * i),
                    style.clone(),
                ))
                .map_err(plot_error)?;
            }
            if let Some(label) = &bar.label {
                let (px, py) = chart.backend_coord(&(x, 0.0));
                let style = (FAMILY, 13)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Top));
                // One text per line: plotters draws no line breaks.
                for (i, line) in (0i32..).zip(label.split('\n')) {
                    area.draw(&Text::new(
                        line.to_string(),
                        (px - ox, py - oy + 8 + 15 * i),
                        style.clone(),
                    ))
                    .map_err(plot_error)?;
                }
            }
        }
        if !group.name.is_empty() {
            let (px, py) = chart.backend_coord(&(g as f64, 0.0));
            let style = (FAMILY, 15)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Top));
            area.draw(&Text::new(
                group.name.clone(),
                (px - ox, py - oy + 8),
                style,
            ))
            .map_err(plot_error)?;
        }
    }
    if let Some((value, label)) = &panel.line {
        let style = ShapeStyle::from(&RED.mix(0.7)).stroke_width(2);
        chart
            .plotting_area()
            .draw(&PathElement::new(
                vec![(-0.5, *value), (groups - 0.5, *value)],
                style,
            ))
            .map_err(plot_error)?;
        let text_style = (FAMILY, 12)
            .into_font()
            .color(&RED)
            .pos(Pos::new(HPos::Right, VPos::Bottom));
        chart
            .plotting_area()
            .draw(&Text::new(
                label.clone(),
                (groups - 0.52, *value),
                text_style,
            ))
            .map_err(plot_error)?;
    }
    Ok(())
}
