//! The L7 chart (l7-latest.png): grouped bars of req/s and of p99 per system, one group per
//! scenario.
use super::report::{Cell, Report, Scenario, System};
use crate::chart::{
    canvas, draw_bars, draw_heading, machine_line, plot_error, version_label, Bar, Group, Panel,
    Style, HEADING,
};
use crate::summary::thousands;
use anyhow::Result;
use plotters::prelude::*;
use std::path::Path;

const WIDTH: u32 = 2000;
const HEIGHT: u32 = 720;

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

pub fn draw(report: &Report, path: &Path) -> Result<()> {
    let root = canvas(path, (WIDTH, HEIGHT))?;
    let (header, body) = root.split_vertically(HEADING);
    draw_header(report, &header)?;
    let requests = |v: f64| {
        if v >= 10_000.0 {
            format!("{:.1}k", v / 1e3)
        } else {
            thousands(v)
        }
    };
    let p99 = |v: f64| format!("{v:.2}");
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
    let mut panels = vec![Panel {
        title: "Requests/sec over keep-alive connections, median (whiskers: min-max)",
        axis: "req/s",
        groups: groups(report, &keep_alive, &requests, rate),
        line: None,
        clip: None,
        tick: requests,
    }];
    let handshakes = groups(report, &handshake, &requests, rate);
    if !handshakes.is_empty() {
        panels.push(Panel {
            title: "New TLS connections/sec (a full handshake per request)",
            axis: "conn/s",
            groups: handshakes,
            line: None,
            clip: None,
            tick: requests,
        });
    }
    panels.push(Panel {
        title: "p99 latency, ms (lower is better)",
        axis: "ms",
        groups: groups(report, &|_| true, &p99, |c| (c.p99_ms, None)),
        line: None,
        clip: None,
        tick: p99,
    });
    // The request rates take the room they need: one slot per scenario group.
    let slots: Vec<u32> = panels
        .iter()
        .map(|panel| panel.groups.len().max(1) as u32)
        .collect();
    let total: u32 = slots.iter().sum();
    let mut rest = body;
    for (i, panel) in panels.iter().enumerate() {
        let area = if i + 1 == panels.len() {
            rest.clone()
        } else {
            let width = (WIDTH * slots[i] / total).max(WIDTH / 5);
            let (left, right) = rest.split_horizontally(width);
            rest = right;
            left
        };
        draw_bars(&area, panel, &Style::LARGE)?;
    }
    root.present().map_err(plot_error)?;
    Ok(())
}

/// One group per scenario, one bar per system: its value, whisker and text.
fn groups(
    report: &Report,
    shown: &dyn Fn(Scenario) -> bool,
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
    let mut systems: Vec<System> = report.cells.iter().map(|c| c.system).collect();
    systems.sort();
    systems.dedup();
    scenarios
        .into_iter()
        .map(|scenario| Group {
            name: scenario.name().to_string(),
            bars: systems
                .iter()
                .filter_map(|&system| {
                    let cell = report
                        .cells
                        .iter()
                        .find(|c| c.system == system && c.scenario == scenario)?;
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
                        label: None,
                    })
                })
                .collect(),
        })
        .collect()
}

fn draw_header<DB: DrawingBackend>(
    report: &Report,
    area: &DrawingArea<DB, plotters::coord::Shift>,
) -> Result<()> {
    let s = &report.settings;
    let title = format!(
        "tether L7 bench: {} conns, {} s/cell, 1 worker/proxy",
        s.connections, s.duration_s
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
    let mut systems: Vec<System> = report.cells.iter().map(|c| c.system).collect();
    systems.sort();
    systems.dedup();
    let legend: Vec<(String, RGBColor)> = systems
        .iter()
        .map(|&system| (label(report, system), color(system)))
        .collect();
    draw_heading(area, WIDTH, title, &legend, &lines)
}
