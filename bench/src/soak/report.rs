//! The soak's verdict and its summary: the printed tables, also kept in soak-latest.md (the
//! soak writes soak-<stamp>.json, soak-latest.png and soak-latest.md from this report).
use super::churn::Event;
use super::sample::{self, Sample, Trend};
use super::stats::Counts;
use super::world::{Target, KILL_GRACE_S};
use crate::machine::Machine;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use tether_testkit::net::http_get;

/// Share of the run counted as warm-up.
pub const WARMUP_SHARE: f64 = 0.2;

pub struct Inputs {
    pub timestamp: String,
    pub machine: Machine,
    pub minutes: f64,
    pub churn_interval_s: f64,
    pub traffic_end_s: f64,
    pub targets: Vec<Target>,
    pub samples: Vec<Sample>,
    pub events: Vec<Event>,
    pub counts: Counts,
    pub idle_before: Option<(u64, u64)>,
    pub idle_after: Option<(u64, u64)>,
    pub tether_metrics: Vec<String>,
    pub problems: Vec<String>,
}

#[derive(Serialize)]
pub struct Report {
    pub timestamp: String,
    pub machine: Machine,
    pub minutes: f64,
    pub warmup_end_s: f64,
    pub churn_interval_s: f64,
    pub traffic_end_s: f64,
    pub kill_grace_s: f64,
    pub targets: Vec<Target>,
    pub counts: Counts,
    pub answered_total: u64,
    pub answers_per_sec_mean: f64,
    pub rss_kib: Option<Trend>,
    pub fds: Option<Trend>,
    pub flat_rule: &'static str,
    /// (RSS KiB, fds) with no client connected, before the traffic and after it.
    pub idle_before: Option<(u64, u64)>,
    pub idle_after: Option<(u64, u64)>,
    pub tether_metrics: Vec<String>,
    pub events: Vec<Event>,
    pub samples: Vec<Sample>,
    /// Why the run fails (empty: it passes).
    pub failures: Vec<String>,
    /// Reported, not failing: failures no event explains, unconfirmed reloads.
    pub warnings: Vec<String>,
}

impl Report {
    pub fn build(inputs: Inputs) -> Self {
        let warmup_end_s = inputs.minutes * 60.0 * WARMUP_SHARE;
        let rss_kib = sample::trend(&inputs.samples, warmup_end_s, sample::RSS_SLACK_KIB, |s| {
            s.rss_kib as f64
        });
        let fds = sample::trend(&inputs.samples, warmup_end_s, sample::FD_SLACK, |s| {
            s.fds as f64
        });
        let c = &inputs.counts;
        let mut failures = inputs.problems.clone();
        if c.unexpected_5xx > 0 {
            failures.push(format!(
                "{} unexpected 5xx (no backend kill overlaps them; see the notes)",
                c.unexpected_5xx
            ));
        }
        if c.lost_sessions > 0 {
            failures.push(format!(
                "{} lost sessions (answered by another target while theirs was configured and \
                 its backend up)",
                c.lost_sessions
            ));
        }
        if c.bad_landings > 0 {
            failures.push(format!(
                "{} new sessions landed on a draining or removed target",
                c.bad_landings
            ));
        }
        for (name, trend) in [("RSS", &rss_kib), ("fd count", &fds)] {
            if trend.as_ref().is_some_and(|t| t.growing) {
                failures.push(format!("tether's {name} is clearly growing"));
            }
        }
        let mut warnings = Vec::new();
        if c.unexplained_failures > 0 {
            warnings.push(format!(
                "{} failures (resets, timeouts, broken tunnels, truncated bodies) no churn event \
                 explains; see the notes",
                c.unexplained_failures
            ));
        }
        for (name, trend) in [("RSS", &rss_kib), ("fd count", &fds)] {
            match trend {
                Some(t) if !t.flat && !t.growing => warnings.push(format!(
                    "tether's {name} is above the flat rule (not clearly growing)"
                )),
                None => warnings.push(format!("too few samples to judge tether's {name}")),
                _ => {}
            }
        }
        let unconfirmed = inputs.events.iter().filter(|e| e.problem.is_some()).count();
        if unconfirmed > 0 {
            warnings.push(format!(
                "{unconfirmed} churn events had a problem (see events)"
            ));
        }
        let answered_total = c.answered;
        let rates: Vec<f64> = inputs.samples.iter().map(|s| s.per_sec).collect();
        let answers_per_sec_mean = if rates.is_empty() {
            0.0
        } else {
            rates.iter().sum::<f64>() / rates.len() as f64
        };
        Self {
            timestamp: inputs.timestamp,
            machine: inputs.machine,
            minutes: inputs.minutes,
            warmup_end_s,
            churn_interval_s: inputs.churn_interval_s,
            traffic_end_s: inputs.traffic_end_s,
            kill_grace_s: KILL_GRACE_S,
            targets: inputs.targets,
            counts: inputs.counts,
            answered_total,
            answers_per_sec_mean,
            rss_kib,
            fds,
            flat_rule: sample::FLAT_RULE,
            idle_before: inputs.idle_before,
            idle_after: inputs.idle_after,
            tether_metrics: inputs.tether_metrics,
            events: inputs.events,
            samples: inputs.samples,
            failures,
            warnings,
        }
    }

    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    pub fn print(&self) {
        print!("{}", self.text());
    }

    /// The summary printed at the end and kept in soak-latest.md (inside a code block).
    pub fn text(&self) -> String {
        let mut out = String::new();
        let c = &self.counts;
        let _ = writeln!(out, "\n== Outcomes by traffic kind ==");
        let _ = writeln!(out, "{:<30} {:<42} {:>9}", "kind", "outcome", "count");
        for (kind, outcomes) in &c.outcomes {
            for (outcome, n) in outcomes {
                let _ = writeln!(out, "{kind:<30} {outcome:<42} {n:>9}");
            }
        }
        let _ = writeln!(out, "\n== Errors by kind ==");
        let _ = writeln!(out, "{:<40}{:>9}", "unexpected 5xx", c.unexpected_5xx);
        let _ = writeln!(out, "{:<40}{:>9}", "lost sessions", c.lost_sessions);
        let _ = writeln!(
            out,
            "{:<40}{:>9}",
            "new sessions on draining/removed target", c.bad_landings
        );
        let _ = writeln!(
            out,
            "{:<40}{:>9}   (a kill of the request's target within {KILL_GRACE_S} s)",
            "expected 5xx (backend killed)", c.expected_5xx
        );
        let _ = writeln!(
            out,
            "{:<40}{:>9}",
            "unexplained failures", c.unexplained_failures
        );
        let moves: Vec<String> = c.moves.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(
            out,
            "{:<40}{:>9}; moved: {}",
            "pinned requests kept on their target",
            c.kept,
            if moves.is_empty() {
                "none".to_string()
            } else {
                moves.join(", ")
            }
        );

        let _ = writeln!(
            out,
            "\n== tether's RSS and fds (warm-up = first {:.0} s) ==",
            self.warmup_end_s
        );
        let _ = writeln!(
            out,
            "{:<8} {:>12} {:>12} {:>12} {:>12} {:>12}  verdict",
            "", "idle before", "warm-up end", "end (load)", "peak", "idle after"
        );
        let mib = |kib: f64| format!("{:.1} MiB", kib / 1024.0);
        for (name, trend, idle) in [("RSS", &self.rss_kib, 0usize), ("fds", &self.fds, 1usize)] {
            let fmt = |v: f64| if idle == 0 { mib(v) } else { format!("{v:.0}") };
            let idle_value = |pair: Option<(u64, u64)>| {
                pair.map(|(rss, fds)| fmt(if idle == 0 { rss as f64 } else { fds as f64 }))
                    .unwrap_or_else(|| "?".into())
            };
            match trend {
                Some(t) => {
                    let _ = writeln!(
                        out,
                        "{name:<8} {:>12} {:>12} {:>12} {:>12} {:>12}  {}",
                        idle_value(self.idle_before),
                        fmt(t.warmup),
                        fmt(t.end),
                        fmt(t.peak),
                        idle_value(self.idle_after),
                        if t.growing {
                            "GROWING"
                        } else if t.flat {
                            "flat"
                        } else {
                            "above rule"
                        }
                    );
                }
                None => {
                    let _ = writeln!(out, "{name:<8} too few samples");
                }
            }
        }
        let _ = writeln!(out, "rule: {}", self.flat_rule);

        let rates: Vec<f64> = self.samples.iter().map(|s| s.per_sec).collect();
        let min = rates.iter().copied().fold(f64::INFINITY, f64::min);
        let max = rates.iter().copied().fold(0.0, f64::max);
        let _ = writeln!(
            out,
            "\n== Throughput ==\n{} answers (HTTP responses + tunnel echoes), mean {:.0}/s (per second: {:.0}..{:.0})",
            self.answered_total,
            self.answers_per_sec_mean,
            if min.is_finite() { min } else { 0.0 },
            max
        );

        let mut actions: BTreeMap<&str, (usize, Vec<f64>)> = BTreeMap::new();
        for event in &self.events {
            let entry = actions.entry(event.action).or_default();
            entry.0 += 1;
            entry.1.extend(event.took_s);
        }
        let _ = writeln!(
            out,
            "\n== Churn ({} events, one every {:.1} s) ==",
            self.events.len(),
            self.churn_interval_s
        );
        for (action, (n, took)) in &actions {
            let max = took.iter().copied().fold(0.0, f64::max);
            let _ = writeln!(
                out,
                "{action:<10} x{n:<4}{}",
                if took.is_empty() {
                    String::new()
                } else {
                    format!(" applied/listening within {:.0} ms (max)", max * 1000.0)
                }
            );
        }
        if !c.cases.is_empty() {
            let _ = writeln!(
                out,
                "\n== Noteworthy cases: count, then up to 3 examples (20 of each kept in the JSON) =="
            );
            for (case, n) in &c.cases {
                let _ = writeln!(out, "{case}: {n}");
                let examples = c
                    .notes
                    .iter()
                    .filter(|note| format!("{}: {}", note.kind, note.what) == *case);
                for note in examples.take(3) {
                    let _ = writeln!(
                        out,
                        "    t={:.2}..{:.2}s  {}",
                        note.t0, note.t1, note.detail
                    );
                }
            }
        }
        if !self.tether_metrics.is_empty() {
            let _ = writeln!(out, "\n== tether's counters at the end ==");
            for line in &self.tether_metrics {
                let _ = writeln!(out, "  {line}");
            }
        }
        for warning in &self.warnings {
            let _ = writeln!(out, "warning: {warning}");
        }
        let _ = writeln!(
            out,
            "\nRESULT: {}",
            if self.passed() {
                "PASS".to_string()
            } else {
                format!("FAIL: {}", self.failures.join("; "))
            }
        );
        out
    }
}

/// tether's own counters of interest, non-zero lines only.
pub fn tether_metrics(admin: SocketAddr) -> Vec<String> {
    const PREFIXES: [&str; 7] = [
        "tether_repins_total",
        "tether_upstream_failures_total",
        "tether_request_outcomes_total",
        "tether_config_reloads_total",
        "tether_invalid_cookies_total",
        "tether_client_connections",
        "tether_config_generation",
    ];
    let Ok(metrics) = http_get(admin, "/metrics", &[]) else {
        return vec!["(the admin endpoint did not answer)".into()];
    };
    metrics
        .body
        .lines()
        .filter(|l| PREFIXES.iter().any(|p| l.starts_with(p)) && !l.ends_with(" 0"))
        .map(str::to_string)
        .collect()
}
