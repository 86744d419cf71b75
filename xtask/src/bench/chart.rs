//! The L7 chart: grouped bars of req/s and of p99 per system, one group per scenario.
//!
//! Drawn with plotters' bitmap backend and an embedded DejaVu Sans (Bitstream Vera license, see
//! fonts/LICENSE-DejaVu.txt), so it needs no system fonts or fontconfig.
use super::l7::{thousands, Cell, Report, Scenario, System};
use anyhow::{anyhow, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

pub(super) static FONT: &[u8] = include_bytes!("fonts/DejaVuSans.ttf");
pub(super) const FAMILY: &str = "sans-serif";
const WIDTH: u32 = 1400;
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
    let version = |v: &Option<String>, prefix: &str| {
        v.as_deref()
            .and_then(|line| {
                line.split_whitespace()
                    .find(|w| w.starts_with(|c: char| c.is_ascii_digit()) || w.contains('/'))
            })
            .map(|w| w.rsplit('/').next().unwrap_or(w))
            .map(|w| format!("{prefix} {}", w.split(['-', '+']).next().unwrap_or(w)))
            .unwrap_or_else(|| prefix.to_string())
    };
    match system {
        System::Direct => "direct (no proxy)".to_string(),
        System::Tether => "tether".to_string(),
        System::Haproxy => version(&report.machine.haproxy, "HAProxy"),
        System::Nginx => version(&report.machine.nginx, "nginx"),
    }
}

struct Metric {
    title: &'static str,
    axis: &'static str,
    value: fn(&Cell) -> Option<f64>,
    /// Spread over rounds, drawn as a whisker.
    range: fn(&Cell) -> Option<(f64, f64)>,
    text: fn(f64) -> String,
}

pub fn draw(report: &Report, path: &Path) -> Result<()> {
    plotters::style::register_font(FAMILY, FontStyle::Normal, FONT)
        .map_err(|_| anyhow!("the embedded font does not parse"))?;
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let (header, body) = root.split_vertically(110);
    draw_header(report, &header)?;
    let (left, right) = body.split_horizontally(WIDTH / 2);
    let metrics = [
        Metric {
            title: "Requests/sec, median (whiskers: min-max over rounds)",
            axis: "req/s",
            value: |c| c.requests_per_sec,
            range: |c| match (c.requests_per_sec_min, c.requests_per_sec_max) {
                (Some(lo), Some(hi)) if c.samples_used > 1 => Some((lo, hi)),
                _ => None,
            },
            text: |v| {
                if v >= 10_000.0 {
                    format!("{:.1}k", v / 1e3)
                } else {
                    thousands(v)
                }
            },
        },
        Metric {
            title: "p99 latency, ms (lower is better)",
            axis: "ms",
            value: |c| c.p99_ms,
            range: |_| None,
            text: |v| format!("{v:.2}"),
        },
    ];
    for (area, metric) in [(&left, &metrics[0]), (&right, &metrics[1])] {
        draw_panel(report, area, metric)?;
    }
    root.present().map_err(plot_error)?;
    Ok(())
}

fn draw_header<DB: DrawingBackend>(
    report: &Report,
    area: &DrawingArea<DB, plotters::coord::Shift>,
) -> Result<()> {
    let m = &report.machine;
    let s = &report.settings;
    let title = format!(
        "tether L7 bench: {} conns, {} s/cell, 1 worker/proxy",
        s.connections, s.duration_s
    );
    let commit = m
        .git_commit
        .as_deref()
        .map(|c| c.chars().take(10).collect::<String>())
        .unwrap_or_else(|| "?".into());
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

/// A chart's heading, the same for every bench: the title, a legend of systems on the title
/// line's right (in the order given, left to right), and grey information lines under it.
pub fn draw_heading<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    width: u32,
    title: String,
    legend: &[(String, RGBColor)],
    lines: &[String],
) -> Result<()> {
    area.draw(&Text::new(
        title,
        (20, 12),
        (FAMILY, 26).into_font().color(&BLACK),
    ))
    .map_err(plot_error)?;
    let mut x = i32::try_from(width).unwrap_or(1400) - 20;
    for (text, color) in legend.iter().rev() {
        let style = (FAMILY, 16).into_font().color(&BLACK);
        let (w, _) = area.estimate_text_size(text, &style).map_err(plot_error)?;
        x -= i32::try_from(w).unwrap_or(100);
        area.draw(&Text::new(text.as_str(), (x, 16), style))
            .map_err(plot_error)?;
        x -= 22;
        area.draw(&Rectangle::new([(x, 13), (x + 15, 28)], color.filled()))
            .map_err(plot_error)?;
        x -= 22;
    }
    for (i, line) in lines.iter().enumerate() {
        let y = 46 + 20 * i32::try_from(i).unwrap_or(0);
        area.draw(&Text::new(
            line.clone(),
            (20, y),
            (FAMILY, 15).into_font().color(&RGBColor(70, 70, 70)),
        ))
        .map_err(plot_error)?;
    }
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(
    report: &Report,
    area: &DrawingArea<DB, plotters::coord::Shift>,
    metric: &Metric,
) -> Result<()> {
    let scenarios: Vec<Scenario> = {
        let mut v: Vec<Scenario> = report.cells.iter().map(|c| c.scenario).collect();
        v.dedup();
        v.sort();
        v.dedup();
        v
    };
    let systems: Vec<System> = {
        let mut v: Vec<System> = report.cells.iter().map(|c| c.system).collect();
        v.sort();
        v.dedup();
        v
    };
    let top = report
        .cells
        .iter()
        .filter_map(|c| {
            let high = (metric.range)(c).map(|(_, hi)| hi);
            (metric.value)(c).map(|v| v.max(high.unwrap_or(v)))
        })
        .fold(0.0_f64, f64::max);
    let top = if top > 0.0 { top * 1.18 } else { 1.0 };
    let groups = scenarios.len().max(1) as f64;

    let mut chart = ChartBuilder::on(area)
        .caption(metric.title, (FAMILY, 20))
        .margin(18)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5..groups - 0.5, 0.0..top)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .x_label_formatter(&|_| String::new())
        .y_desc(metric.axis)
        .y_label_formatter(&|v| (metric.text)(*v))
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 15))
        .y_labels(8)
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()
        .map_err(plot_error)?;

    let n = systems.len().max(1) as f64;
    let slot = 0.8 / n;
    for (k, &system) in systems.iter().enumerate() {
        let fill = color(system);
        let bars: Vec<Rectangle<(f64, f64)>> = scenarios
            .iter()
            .enumerate()
            .filter_map(|(g, &scenario)| {
                let cell = report
                    .cells
                    .iter()
                    .find(|c| c.system == system && c.scenario == scenario)?;
                let value = (metric.value)(cell)?;
                let x0 = g as f64 - 0.4 + k as f64 * slot + slot * 0.06;
                let x1 = x0 + slot * 0.88;
                Some(Rectangle::new([(x0, 0.0), (x1, value)], fill.filled()))
            })
            .collect();
        chart.draw_series(bars).map_err(plot_error)?;

        // Value labels (or why there is no bar) above each bar.
        for (g, &scenario) in scenarios.iter().enumerate() {
            let Some(cell) = report
                .cells
                .iter()
                .find(|c| c.system == system && c.scenario == scenario)
            else {
                continue;
            };
            let x = g as f64 - 0.4 + (k as f64 + 0.5) * slot;
            let value = (metric.value)(cell);
            let mut label_at = value.unwrap_or(0.0);
            if let Some((lo, hi)) = (metric.range)(cell) {
                let whisker = ShapeStyle::from(&BLACK.mix(0.6)).stroke_width(2);
                let cap = slot * 0.15;
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
            let (text, y, tint) = match value {
                Some(v) if cell.ok && cell.disturbed => {
                    (format!("{}*", (metric.text)(v)), label_at, BLACK)
                }
                Some(v) if cell.ok => ((metric.text)(v), label_at, BLACK),
                Some(v) => (format!("{} ERR", (metric.text)(v)), label_at, RED),
                None => ("failed".to_string(), 0.0, RED),
            };
            let style = (FAMILY, 13)
                .into_font()
                .color(&tint)
                .pos(Pos::new(HPos::Center, VPos::Bottom));
            chart
                .plotting_area()
                .draw(&Text::new(text, (x, y + top * 0.01), style))
                .map_err(plot_error)?;
        }
    }

    // Scenario names under each group, placed in pixels below the x axis.
    for (g, scenario) in scenarios.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(g as f64, 0.0));
        let (ox, oy) = area.get_base_pixel();
        let style = (FAMILY, 17)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Top));
        area.draw(&Text::new(
            scenario.name().to_string(),
            (px - ox, py - oy + 10),
            style,
        ))
        .map_err(plot_error)?;
    }
    Ok(())
}

pub(super) fn plot_error<E: std::fmt::Debug>(error: E) -> anyhow::Error {
    anyhow!("plotting failed: {error:?}")
}
