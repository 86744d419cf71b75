//! What the benches' reports share: medians, spreads and percentiles over rounds, ratios between
//! clean cells, the printed tables' columns and opening lines, and how results are saved.
use crate::cpu::wait_for_quiet;
use crate::machine::Machine;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// CPU (% of one CPU) that other processes may use, and share of the time tasks may stall on
/// I/O, before a measurement counts as disturbed.
pub const QUIET_PCT: f64 = 10.0;

// ---------------------------------------------------------------------------------------------
// Numbers

/// The median of the finite `values`; `None` when there is none.
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

/// The lowest and the highest of `values`.
pub fn spread(values: impl IntoIterator<Item = f64>) -> (Option<f64>, Option<f64>) {
    let values: Vec<f64> = values.into_iter().collect();
    (
        values.iter().copied().reduce(f64::min),
        values.iter().copied().reduce(f64::max),
    )
}

/// The `q` quantile (0..=1) of ascending `sorted` values, nearest rank; `None` when empty.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    sorted.get((last as f64 * q).round() as usize).copied()
}

/// `numerator / denominator` of two cells' figures, only when both cells are clean.
pub fn ratio(clean: bool, numerator: Option<f64>, denominator: Option<f64>) -> Option<f64> {
    match (numerator, denominator) {
        (Some(x), Some(y)) if clean && y > 0.0 => Some(x / y),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Rounds and cells

/// What the rounds of one cell (a system under one scenario) collected.
pub struct Rounds<S> {
    pub samples: Vec<S>,
    pub errors: Vec<String>,
    pub notes: BTreeSet<String>,
}

impl<S> Default for Rounds<S> {
    fn default() -> Self {
        Self {
            samples: Vec::new(),
            errors: Vec::new(),
            notes: BTreeSet::new(),
        }
    }
}

impl<S> Rounds<S> {
    /// The samples the cell's medians come from: the rounds nothing else disturbed, or all of
    /// them when every round was disturbed (then `true`, and the cell says so).
    pub fn used(&self, disturbed: impl Fn(&S) -> bool) -> (Vec<&S>, bool) {
        let quiet: Vec<&S> = self.samples.iter().filter(|s| !disturbed(s)).collect();
        if quiet.is_empty() && !self.samples.is_empty() {
            (self.samples.iter().collect(), true)
        } else {
            (quiet, false)
        }
    }

    /// The errors of the rounds and `more`, deduplicated; "not measured" when there was
    /// nothing at all.
    pub fn problems(&self, more: impl IntoIterator<Item = String>) -> Vec<String> {
        let mut problems = self.errors.clone();
        problems.extend(more);
        if self.samples.is_empty() && problems.is_empty() {
            problems.push("not measured".into());
        }
        problems.dedup();
        problems
    }
}

/// The median of `f` over `used` samples.
pub fn median_of<S>(used: &[&S], f: impl Fn(&S) -> Option<f64>) -> Option<f64> {
    median(used.iter().filter_map(|s| f(s)).collect())
}

/// The lowest and highest of `f` over `used` samples.
pub fn spread_of<S>(used: &[&S], f: impl Fn(&S) -> Option<f64>) -> (Option<f64>, Option<f64>) {
    spread(used.iter().filter_map(|s| f(s)))
}

/// The systems in the order of round `round` (1-based): rotated by one each round, so no
/// system always runs first.
pub fn round_order<T: Clone>(systems: &[T], round: u32) -> Vec<T> {
    let mut order = systems.to_vec();
    if !order.is_empty() {
        let shift = (round as usize - 1) % order.len();
        order.rotate_left(shift);
    }
    order
}

/// Records that `system` did not start: every scenario of it gets `message` as an error.
pub fn failed_to_start<Y: Ord + Copy, C: Ord + Copy, S>(
    rounds: &mut BTreeMap<(Y, C), Rounds<S>>,
    system: Y,
    scenarios: &[C],
    message: &str,
) {
    for &scenario in scenarios {
        rounds
            .entry((system, scenario))
            .or_default()
            .errors
            .push(message.to_string());
    }
}

/// A cell of a bench's results: one system in one group (a scenario, a connection count).
pub trait Cell {
    type System: Copy + PartialEq;
    type Group: Copy + PartialEq;
    fn system(&self) -> Self::System;
    fn group(&self) -> Self::Group;
}

/// Implements [`Cell`] for a bench's cell type from its system and group fields:
/// `cell_keys!(Cell, System = system, Scenario = scenario)`.
macro_rules! cell_keys {
    ($cell:ty, $system:ty = $system_field:ident, $group:ty = $group_field:ident) => {
        impl $crate::summary::Cell for $cell {
            type System = $system;
            type Group = $group;
            fn system(&self) -> $system {
                self.$system_field
            }
            fn group(&self) -> $group {
                self.$group_field
            }
        }
    };
}
pub(crate) use cell_keys;

/// The systems (or scenarios) asked for, in order, each once.
pub fn sorted_unique<T: Ord + Clone>(items: &[T]) -> Vec<T> {
    let mut items = items.to_vec();
    items.sort();
    items.dedup();
    items
}

/// The cell of `system` in `group`.
pub fn find<C: Cell>(cells: &[C], system: C::System, group: C::Group) -> Option<&C> {
    cells
        .iter()
        .find(|c| c.system() == system && c.group() == group)
}

/// Per group, in order, each pair `(numerator, denominator)` of `pairs` whose two cells exist.
pub fn pairs<'a, C: Cell>(
    cells: &'a [C],
    groups: &[C::Group],
    pairs: &[(C::System, C::System)],
) -> Vec<(C::Group, &'a C, &'a C)> {
    let mut out = Vec::new();
    for &group in groups {
        for &(numerator, denominator) in pairs {
            if let (Some(a), Some(b)) = (
                find(cells, numerator, group),
                find(cells, denominator, group),
            ) {
                out.push((group, a, b));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Printing

/// `12%`, or `-` when unknown.
pub fn pct(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.0}%"))
}

/// `1.23ms`.
pub fn ms(value: f64) -> String {
    format!("{value:.2}ms")
}

/// `1.23x`, or `n/a` when there is no ratio.
pub fn times(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".into(), |v| format!("{v:.2}x"))
}

/// A cell's ratio to the baseline system's cell: `1.23x`, `1.00x` for the baseline itself, or
/// `-`.
pub fn vs_baseline(ratio: Option<f64>, is_baseline: bool) -> String {
    match ratio {
        Some(r) => format!("{r:.2}x"),
        None if is_baseline => "1.00x".into(),
        None => "-".into(),
    }
}

/// `12,345`.
pub fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The first line of `text`, cut at 100 characters.
pub fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() > 100 {
        format!("{}...", line.chars().take(100).collect::<String>())
    } else {
        line.to_string()
    }
}

/// `path` relative to `root` when it is inside it.
pub fn shown(path: &Path, root: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// A cell's status column: ok, ok but disturbed, or its first error line.
pub fn status(ok: bool, disturbed: bool, error: Option<&str>) -> String {
    if ok && disturbed {
        "ok, but DISTURBED (machine busy)".to_string()
    } else if ok {
        "ok".to_string()
    } else {
        format!("ERROR: {}", first_line(error.unwrap_or("failed")))
    }
}

/// `== cargo xtask bench BENCH ==`, the machine, the `tools` line and the commit.
pub fn print_header(bench: &str, machine: &Machine, tools: &str) {
    let unknown = || "?".to_string();
    println!("== cargo xtask bench {bench} ==");
    println!(
        "machine: {} CPU(s), {}, kernel {}, {}",
        machine.nproc,
        machine.cpu_model.clone().unwrap_or_else(unknown),
        machine.kernel.clone().unwrap_or_else(unknown),
        machine.os.clone().unwrap_or_else(unknown)
    );
    println!("tools: {tools}");
    println!(
        "commit: {}{}",
        machine.git_commit.clone().unwrap_or_else(unknown),
        if machine.git_dirty == Some(true) {
            " (dirty)"
        } else {
            ""
        }
    );
}

/// Waits (at most `seconds`; 0: not at all) for other processes to go quiet, and says so on
/// the current line when it waited.
pub fn wait_quiet(seconds: u64) {
    if seconds == 0 {
        return;
    }
    let (usage, waited) = wait_for_quiet(Duration::from_secs(seconds), QUIET_PCT);
    if waited >= Duration::from_secs(2) {
        print!(
            "(waited {:.0} s for other processes: cpu {}, io {}) ",
            waited.as_secs_f64(),
            pct(usage.foreign_pct),
            pct(usage.io_pressure_pct)
        );
        let _ = std::io::stdout().flush();
    }
}

/// The note on a measurement other processes disturbed.
pub fn disturbed_note(
    cell: &str,
    round: u32,
    other_pct: Option<f64>,
    io_pct: Option<f64>,
) -> String {
    format!(
        "{cell} round {round}: other processes used {} of a CPU and stalled on I/O {} of the \
         time during the measurement",
        pct(other_pct),
        pct(io_pct)
    )
}

// ---------------------------------------------------------------------------------------------
// Results

/// Writes `BENCH-STAMP.json` and `BENCH-latest.json` of `report`, and `BENCH-latest.png` with
/// `draw`, into `out_dir`; prints where.
pub fn save<R: Serialize>(
    out_dir: &Path,
    root: &Path,
    bench: &str,
    stamp: &str,
    report: &R,
    draw: impl FnOnce(&R, &Path) -> Result<()>,
) -> Result<()> {
    fs::create_dir_all(out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let json = serde_json::to_string_pretty(report)? + "\n";
    let stamped = out_dir.join(format!("{bench}-{stamp}.json"));
    let latest = out_dir.join(format!("{bench}-latest.json"));
    fs::write(&stamped, &json).with_context(|| format!("cannot write {}", stamped.display()))?;
    fs::write(&latest, &json).with_context(|| format!("cannot write {}", latest.display()))?;
    let png = out_dir.join(format!("{bench}-latest.png"));
    draw(report, &png).context("cannot draw the chart")?;
    println!(
        "\nsaved {}, {} and {}",
        shown(&stamped, root),
        shown(&latest, root),
        shown(&png, root)
    );
    Ok(())
}

/// Where results go: `--out-dir`, or `bench/results`.
pub fn out_dir(given: Option<&PathBuf>, root: &Path) -> PathBuf {
    given.cloned().unwrap_or_else(|| root.join("bench/results"))
}

/// Fails when any `failed` cell (or part) did not produce a clean result.
pub fn fail_unclean(failed: &[String], what: &str) -> Result<()> {
    if !failed.is_empty() {
        bail!(
            "{} {what} did not produce a clean result: {}",
            failed.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![f64::NAN]), None);
        assert_eq!(median(vec![]), None);
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 0.5), Some(51.0));
        assert_eq!(percentile(&sorted, 0.99), Some(99.0));
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(spread([2.0, 1.0, 3.0]), (Some(1.0), Some(3.0)));
    }

    #[test]
    fn formats() {
        assert_eq!(thousands(1234567.0), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(pct(Some(12.4)), "12%");
        assert_eq!(times(None), "n/a");
        assert_eq!(round_order(&[1, 2, 3], 2), vec![2, 3, 1]);
    }
}
