//! What the benches' charts share: a white canvas with an embedded font, the heading (title,
//! legend, information lines), and panels of grouped bars with whiskers and a reference line.
//!
//! Drawn with plotters' bitmap backend and an embedded DejaVu Sans (Bitstream Vera license, see
//! fonts/LICENSE-DejaVu.txt), so they need no system fonts or fontconfig.
use crate::machine::Machine;
use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

static FONT: &[u8] = include_bytes!("fonts/DejaVuSans.ttf");
pub const FAMILY: &str = "sans-serif";
/// The height of the heading, above the panels.
pub const HEADING: u32 = 110;

/// A drawing area of any backend.
pub type Area<DB> = DrawingArea<DB, Shift>;

/// A white `size` bitmap that becomes the PNG at `path` on `present()`.
pub fn canvas(path: &Path, size: (u32, u32)) -> Result<Area<BitMapBackend<'_>>> {
    plotters::style::register_font(FAMILY, FontStyle::Normal, FONT)
        .map_err(|_| anyhow!("the embedded font does not parse"))?;
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    Ok(root)
}

pub fn plot_error<E: std::fmt::Debug>(error: E) -> anyhow::Error {
    anyhow!("plotting failed: {error:?}")
}

/// The first 10 characters of the commit, or `?`.
pub fn short_commit(machine: &Machine) -> String {
    machine
        .git_commit
        .as_deref()
        .map(|c| c.chars().take(10).collect::<String>())
        .unwrap_or_else(|| "?".into())
}

/// `TIMESTAMP  |  commit C (dirty)  |  N CPU(s) MODEL  |  kernel K`: a heading's first line.
pub fn machine_line(timestamp: &str, machine: &Machine) -> String {
    format!(
        "{timestamp}  |  commit {}{}  |  {} CPU(s) {}  |  kernel {}",
        short_commit(machine),
        dirty(machine),
        machine.nproc,
        machine.cpu_model.as_deref().unwrap_or(""),
        machine.kernel.as_deref().unwrap_or("?")
    )
}

/// ` (dirty)` when the checkout had uncommitted changes.
pub fn dirty(machine: &Machine) -> &'static str {
    if machine.git_dirty == Some(true) {
        " (dirty)"
    } else {
        ""
    }
}

/// `NAME 2.8.5` from a tool's version line (`HAProxy version 2.8.5-1 ...`, `nginx/1.24.0`), or
/// `NAME` alone.
pub fn version_label(line: Option<&str>, name: &str) -> String {
    line.and_then(|line| {
        line.split_whitespace()
            .find(|w| w.starts_with(|c: char| c.is_ascii_digit()) || w.contains('/'))
    })
    .map(|w| w.rsplit('/').next().unwrap_or(w))
    .map(|w| format!("{name} {}", w.split(['-', '+']).next().unwrap_or(w)))
    .unwrap_or_else(|| name.to_string())
}

/// A chart's heading, the same for every bench: the title, a legend of systems on the title
/// line's right (in the order given, left to right), and grey information lines under it.
pub fn draw_heading<DB: DrawingBackend>(
    area: &Area<DB>,
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

// ---------------------------------------------------------------------------------------------
// Bar panels

/// One bar: its value (none: a missing bar and only its text), a whisker, and texts.
pub struct Bar {
    pub value: Option<f64>,
    /// Spread over rounds, drawn as a whisker.
    pub range: Option<(f64, f64)>,
    pub color: RGBColor,
    /// Above the bar; `VALUE @ MORE` goes on two lines.
    pub text: String,
    pub text_color: RGBColor,
    /// Under the bar (inside the group), one text per `\n`-separated line.
    pub label: Option<String>,
}

/// Bars side by side, named under the axis.
pub struct Group {
    pub name: String,
    pub bars: Vec<Bar>,
}

/// A horizontal line across a panel: a target, a baseline.
pub struct Line {
    pub value: f64,
    pub label: String,
    pub color: RGBColor,
}

pub struct Panel<'a> {
    pub title: &'a str,
    pub axis: &'a str,
    pub groups: Vec<Group>,
    pub line: Option<Line>,
    /// Bars taller than this are cut at it (and say so), so one tall bar does not flatten the
    /// rest.
    pub clip: Option<f64>,
    pub tick: fn(f64) -> String,
}

/// Sizes and proportions of a bar panel.
pub struct Style {
    pub caption: u32,
    pub margin: u32,
    pub x_label_area: u32,
    pub y_label_area: u32,
    /// Tick labels, and the axis description.
    pub ticks: u32,
    pub axis: u32,
    /// The y axis reaches this much above the tallest bar.
    pub headroom: f64,
    /// The share of a group's width its bars take, and of a bar's slot the bar takes.
    pub group_fill: f64,
    pub bar_fill: f64,
    /// Whisker caps, as a share of a bar's slot.
    pub cap: f64,
    /// Texts above bars, labels under them, group names, the line's label.
    pub text: u32,
    pub label: u32,
    pub group_name: u32,
    /// Pixels between the axis and the group names.
    pub group_name_gap: i32,
    pub line_label: u32,
}

impl Style {
    /// One or two panels across a 1400-pixel chart (l7, idle).
    pub const LARGE: Style = Style {
        caption: 20,
        margin: 18,
        x_label_area: 40,
        y_label_area: 80,
        ticks: 14,
        axis: 15,
        headroom: 1.18,
        group_fill: 0.8,
        bar_fill: 0.88,
        cap: 0.15,
        text: 13,
        label: 13,
        group_name: 17,
        group_name_gap: 10,
        line_label: 14,
    };
    /// Six panels on a chart (l4).
    pub const COMPACT: Style = Style {
        caption: 17,
        margin: 16,
        x_label_area: 52,
        y_label_area: 64,
        ticks: 13,
        axis: 14,
        headroom: 1.3,
        group_fill: 0.84,
        bar_fill: 0.84,
        cap: 0.12,
        text: 12,
        label: 13,
        group_name: 15,
        group_name_gap: 8,
        line_label: 12,
    };
}

/// Draws `panel` into `area`.
pub fn draw_bars<DB: DrawingBackend>(area: &Area<DB>, panel: &Panel, style: &Style) -> Result<()> {
    let cut = |v: f64| panel.clip.map_or(v, |c| v.min(c));
    let top = panel
        .groups
        .iter()
        .flat_map(|g| &g.bars)
        .filter_map(|b| b.value.map(|v| cut(v.max(b.range.map_or(v, |(_, hi)| hi)))))
        .chain(panel.line.as_ref().map(|line| line.value))
        .fold(0.0_f64, f64::max);
    let top = if top > 0.0 { top * style.headroom } else { 1.0 };
    let groups = panel.groups.len().max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(panel.title, (FAMILY, style.caption))
        .margin(style.margin)
        .x_label_area_size(style.x_label_area)
        .y_label_area_size(style.y_label_area)
        .build_cartesian_2d(-0.5..groups - 0.5, 0.0..top)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .x_label_formatter(&|_| String::new())
        .y_desc(panel.axis)
        .y_label_formatter(&|v| (panel.tick)(*v))
        .label_style((FAMILY, style.ticks))
        .axis_desc_style((FAMILY, style.axis))
        .y_labels(8)
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()
        .map_err(plot_error)?;

    let (ox, oy) = area.get_base_pixel();
    for (g, group) in panel.groups.iter().enumerate() {
        let n = group.bars.len().max(1) as f64;
        let slot = style.group_fill / n;
        for (k, bar) in group.bars.iter().enumerate() {
            let x0 = g as f64 - style.group_fill / 2.0
                + k as f64 * slot
                + slot * (1.0 - style.bar_fill) / 2.0;
            let x1 = x0 + slot * style.bar_fill;
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
                let cap = slot * style.cap;
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
            let text_style = (FAMILY, style.text)
                .into_font()
                .color(&bar.text_color)
                .pos(Pos::new(HPos::Center, VPos::Bottom));
            let text = if clipped {
                format!("{} (cut)", bar.text)
            } else {
                bar.text.clone()
            };
            // "value @ more" on two lines, the value on top: many bars to a group leave no room
            // for one line.
            let (px, py) = chart.backend_coord(&(x, label_at + top * 0.01));
            let lines: Vec<&str> = match text.split_once(" @ ") {
                Some((value, more)) => vec![value, more],
                None => vec![text.as_str()],
            };
            let step = i32::try_from(style.text).unwrap_or(12) + 2;
            for (i, line) in (0i32..).zip(lines.iter().rev()) {
                area.draw(&Text::new(
                    line.to_string(),
                    (px - ox, py - oy - step * i),
                    text_style.clone(),
                ))
                .map_err(plot_error)?;
            }
            if let Some(label) = &bar.label {
                let (px, py) = chart.backend_coord(&(x, 0.0));
                let label_style = (FAMILY, style.label)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Top));
                // One text per line: plotters draws no line breaks.
                for (i, line) in (0i32..).zip(label.split('\n')) {
                    area.draw(&Text::new(
                        line.to_string(),
                        (px - ox, py - oy + 8 + 15 * i),
                        label_style.clone(),
                    ))
                    .map_err(plot_error)?;
                }
            }
        }
        if !group.name.is_empty() {
            let (px, py) = chart.backend_coord(&(g as f64, 0.0));
            let name_style = (FAMILY, style.group_name)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Top));
            area.draw(&Text::new(
                group.name.clone(),
                (px - ox, py - oy + style.group_name_gap),
                name_style,
            ))
            .map_err(plot_error)?;
        }
    }
    if let Some(line) = &panel.line {
        chart
            .plotting_area()
            .draw(&PathElement::new(
                vec![(-0.5, line.value), (groups - 0.5, line.value)],
                ShapeStyle::from(&line.color).stroke_width(2),
            ))
            .map_err(plot_error)?;
        let label_style = (FAMILY, style.line_label)
            .into_font()
            .color(&line.color)
            .pos(Pos::new(HPos::Right, VPos::Bottom));
        chart
            .plotting_area()
            .draw(&Text::new(
                line.label.clone(),
                (groups - 0.52, line.value + top * 0.01),
                label_style,
            ))
            .map_err(plot_error)?;
    }
    Ok(())
}
