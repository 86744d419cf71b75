//! The soak chart: tether's RSS, its open fds and the answers per second over time, with the
//! warm-up shaded and every churn event marked, one colour per action.
use super::report::Report;
use super::sample::{Sample, Trend};
use crate::chart::{canvas, dirty, draw_heading, plot_error, short_commit, Area, FAMILY, HEADING};
use anyhow::Result;
use plotters::prelude::*;
use std::path::Path;

const WIDTH: u32 = 1400;
const HEIGHT: u32 = 980;

const ACTIONS: [(&str, RGBColor); 9] = [
    ("drain", RGBColor(230, 120, 20)),
    ("undrain", RGBColor(240, 190, 110)),
    ("remove", RGBColor(130, 60, 170)),
    ("re-add", RGBColor(190, 150, 220)),
    ("kill", RGBColor(210, 30, 30)),
    ("restart", RGBColor(40, 160, 60)),
    ("rewrite", RGBColor(40, 100, 200)),
    ("sighup", RGBColor(20, 170, 170)),
    ("restore", RGBColor(120, 120, 120)),
];

fn action_color(action: &str) -> RGBColor {
    ACTIONS
        .iter()
        .find(|(name, _)| *name == action)
        .map_or(BLACK, |(_, color)| *color)
}

struct Panel {
    title: String,
    axis: &'static str,
    color: RGBColor,
    value: fn(&Sample) -> f64,
}

pub fn draw(report: &Report, path: &Path) -> Result<()> {
    let root = canvas(path, (WIDTH, HEIGHT))?;
    let (header, body) = root.split_vertically(HEADING);
    let c = &report.counts;
    let m = &report.machine;
    let verdict = |t: &Option<Trend>| match t {
        Some(t) if t.growing => "GROWING",
        Some(t) if t.flat => "flat",
        Some(_) => "above rule",
        None => "?",
    };
    let lines = [
        format!(
            "{}  |  commit {}{}  |  {} CPU(s)  |  {:.1} min, churn every {:.1} s, warm-up shaded",
            report.timestamp,
            short_commit(m),
            dirty(m),
            m.nproc,
            report.minutes,
            report.churn_interval_s
        ),
        format!(
            "unexpected 5xx {}  |  lost sessions {}  |  expected 5xx (kills) {}  |  unexplained failures {}  |  {:.0} answers/s mean",
            c.unexpected_5xx,
            c.lost_sessions,
            c.expected_5xx,
            c.unexplained_failures,
            report.answers_per_sec_mean
        ),
        format!(
            "RSS {}  |  fds {}  |  result: {}",
            verdict(&report.rss_kib),
            verdict(&report.fds),
            if report.passed() { "PASS" } else { "FAIL" }
        ),
    ];
    let legend: Vec<(String, RGBColor)> = ACTIONS
        .iter()
        .filter(|(name, _)| report.events.iter().any(|e| e.action == *name))
        .map(|(name, color)| (name.to_string(), *color))
        .collect();
    draw_heading(&header, WIDTH, "tether soak".to_string(), &legend, &lines)?;

    let panels = [
        Panel {
            title: "tether RSS (MiB)".to_string(),
            axis: "MiB",
            color: RGBColor(230, 120, 20),
            value: |s| s.rss_kib as f64 / 1024.0,
        },
        Panel {
            title: "tether open file descriptors".to_string(),
            axis: "fds",
            color: RGBColor(40, 100, 180),
            value: |s| s.fds as f64,
        },
        Panel {
            title: "answers per second (HTTP responses + tunnel echoes)".to_string(),
            axis: "per s",
            color: RGBColor(40, 150, 70),
            value: |s| s.per_sec,
        },
    ];
    let areas = body.split_evenly((3, 1));
    for (area, panel) in areas.iter().zip(&panels) {
        draw_panel(report, area, panel)?;
    }
    root.present().map_err(plot_error)?;
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(report: &Report, area: &Area<DB>, panel: &Panel) -> Result<()> {
    let end = report
        .samples
        .last()
        .map_or(report.minutes * 60.0, |s| s.t)
        .max(report.minutes * 60.0)
        .max(1.0);
    let top = report
        .samples
        .iter()
        .map(panel.value)
        .fold(0.0_f64, f64::max);
    let top = if top > 0.0 { top * 1.15 } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FAMILY, 17))
        .margin(10)
        .margin_right(30)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..end, 0.0..top)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc(panel.axis)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 13))
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(230, 230, 230))
        .draw()
        .map_err(plot_error)?;
    chart
        .draw_series(std::iter::once(Rectangle::new(
            [(0.0, 0.0), (report.warmup_end_s.min(end), top)],
            RGBColor(235, 235, 235).filled(),
        )))
        .map_err(plot_error)?;
    for event in &report.events {
        let color = action_color(event.action);
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(event.t, 0.0), (event.t, top)],
                ShapeStyle::from(&color.mix(0.8)).stroke_width(2),
            )))
            .map_err(plot_error)?;
    }
    chart
        .draw_series(LineSeries::new(
            report.samples.iter().map(|s| (s.t, (panel.value)(s))),
            ShapeStyle::from(&panel.color).stroke_width(2),
        ))
        .map_err(plot_error)?;
    Ok(())
}
