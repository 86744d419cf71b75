//! The idle chart (idle-latest.png): bytes per idle connection, grouped by N, one bar per
//! system, with the 4 KiB target drawn across.
use super::report::{per_conn, Report, System, TARGET_BYTES, TETHER_MAX_CONNECTIONS};
use crate::chart::{
    canvas, draw_bars, draw_heading, machine_line, plot_error, version_label, Bar, Group, Line,
    Panel, Style, HEADING,
};
use crate::summary::{find, thousands};
use anyhow::Result;
use plotters::prelude::*;
use std::path::Path;

const WIDTH: u32 = 1400;
const HEIGHT: u32 = 720;
const RED: RGBColor = RGBColor(200, 30, 30);

fn color(system: System) -> RGBColor {
    match system {
        System::Baseline => RGBColor(150, 150, 150),
        System::Tether => RGBColor(230, 120, 20),
        System::Haproxy => RGBColor(40, 100, 180),
    }
}

pub fn draw(report: &Report, path: &Path) -> Result<()> {
    let root = canvas(path, (WIDTH, HEIGHT))?;
    let (header, body) = root.split_vertically(HEADING);

    let mut systems: Vec<System> = report.cells.iter().map(|c| c.system).collect();
    systems.sort();
    systems.dedup();
    let legend: Vec<(String, RGBColor)> = systems
        .iter()
        .map(|&s| {
            let text = match s {
                System::Baseline => "baseline (echo backend, no proxy)".to_string(),
                System::Tether => "tether".to_string(),
                System::Haproxy => version_label(report.machine.haproxy.as_deref(), "HAProxy"),
            };
            (text, color(s))
        })
        .collect();
    let ratio_text: Vec<String> = report
        .ratios
        .iter()
        .filter(|r| r.denominator == System::Haproxy)
        .map(|r| {
            format!(
                "{}: {}",
                thousands(r.connections as f64),
                r.bytes_per_connection
                    .map_or_else(|| "n/a".into(), |v| format!("{v:.1}x"))
            )
        })
        .collect();
    let lines = [
        machine_line(&report.timestamp, &report.machine),
        format!(
            "(RSS after N idle keep-alive connections - RSS before) / N, each connection after one \
             request with the sticky cookie  |  RLIMIT_NOFILE {}{}",
            report.settings.nofile,
            if report.cells.iter().any(|c| c.skipped) {
                " (hard limit; larger N skipped)"
            } else {
                ""
            }
        ),
        format!(
            "tether/HAProxy per connection: {}  |  tether maxConnections: {}  |  target 4 KiB: {}",
            if ratio_text.is_empty() {
                "n/a".to_string()
            } else {
                ratio_text.join(", ")
            },
            if report.settings.tether_max_connections.contains("omitted") {
                "omitted (unknown to this tether)".to_string()
            } else {
                TETHER_MAX_CONNECTIONS.to_string()
            },
            if report.target.pass { "PASS" } else { "MISS" }
        ),
    ];
    draw_heading(
        &header,
        WIDTH,
        "tether idle-connection bench: RSS per idle client connection, 1 worker/proxy".into(),
        &legend,
        &lines,
    )?;

    // Drawn in KiB, so the axis gets round steps.
    let kib = |bytes: f64| bytes / 1024.0;
    let groups = report
        .settings
        .connections
        .iter()
        .map(|&n| Group {
            name: format!("{} idle connections", thousands(n as f64)),
            bars: systems
                .iter()
                .filter_map(|&system| {
                    let c = find(&report.cells, system, n)?;
                    let value = c.bytes_per_connection.map(|v| kib(v.max(0.0)));
                    let (text, text_color) = match value {
                        Some(v) if c.ok => (per_conn(Some(v * 1024.0)), BLACK),
                        Some(v) => (format!("{} ERR", per_conn(Some(v * 1024.0))), RED),
                        None if c.skipped => ("skipped (open-file limit)".to_string(), RED),
                        None => ("failed".to_string(), RED),
                    };
                    Some(Bar {
                        value,
                        range: None,
                        color: color(system),
                        text,
                        text_color,
                        label: None,
                    })
                })
                .collect(),
        })
        .collect();
    let tick = |v: f64| {
        if v.fract() == 0.0 {
            format!("{v:.0} KiB")
        } else {
            format!("{v:.1} KiB")
        }
    };
    let panel = Panel {
        title: "RSS per idle keep-alive connection (lower is better)",
        axis: "KiB per idle connection",
        groups,
        line: Some(Line {
            value: kib(TARGET_BYTES),
            label: format!("target (issue 11): {}", per_conn(Some(TARGET_BYTES))),
            color: RED,
        }),
        clip: None,
        tick,
    };
    draw_bars(&body, &panel, &Style::LARGE)?;
    root.present().map_err(plot_error)?;
    Ok(())
}
