//! Once a second: tether's RSS and open file descriptors, and the answers per second; then the
//! flatness verdict over the run.
use super::stats::Stats;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Sample {
    /// Seconds since the start.
    pub t: f64,
    pub rss_kib: u64,
    pub fds: u64,
    /// Answers (HTTP responses and tunnel echoes) in the last second.
    pub per_sec: f64,
}

/// VmRSS (KiB) and the number of open fds of `pid`; `None` once it is gone.
pub fn read(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((rss, fds))
}

/// Samples every second until the deadline or `stop`; sets `stop` if tether disappears.
pub async fn sampler(
    pid: u32,
    stats: Arc<Stats>,
    start: std::time::Instant,
    deadline: Instant,
    stop: Arc<AtomicBool>,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate: take it now so every sample covers a whole second.
    ticker.tick().await;
    let mut last = (Instant::now(), stats.answered.load(Ordering::Relaxed));
    // Bounded by the deadline, and by a count in case the clock misbehaves.
    for _ in 0..100_000 {
        ticker.tick().await;
        if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
            break;
        }
        let now = Instant::now();
        let answered = stats.answered.load(Ordering::Relaxed);
        let elapsed = now.duration_since(last.0).as_secs_f64();
        let per_sec = if elapsed > 0.0 {
            (answered - last.1) as f64 / elapsed
        } else {
            0.0
        };
        last = (now, answered);
        let Some((rss_kib, fds)) = read(pid) else {
            eprintln!("error: tether (pid {pid}) is gone; stopping the soak");
            stop.store(true, Ordering::Relaxed);
            break;
        };
        samples.push(Sample {
            t: start.elapsed().as_secs_f64(),
            rss_kib,
            fds,
            per_sec,
        });
    }
    samples
}

/// Slack for RSS (KiB) and fds in the flatness rule.
pub const RSS_SLACK_KIB: f64 = 8.0 * 1024.0;
pub const FD_SLACK: f64 = 16.0;
pub const FLAT_FACTOR: f64 = 1.1;

pub const FLAT_RULE: &str = "flat = end <= warm-up x 1.1 + slack (RSS 8 MiB, fds 16), where \
    warm-up = median of the 5 samples before 20% of the run and end = median of the last 5 \
    samples under load; clearly growing (fails the run) = not flat, above warm-up x 1.25 + 2 x \
    slack, and the median rising over each third of the post-warm-up samples";

#[derive(Clone, Debug, Serialize)]
pub struct Trend {
    pub warmup: f64,
    pub end: f64,
    pub peak: f64,
    pub flat: bool,
    pub growing: bool,
}

/// The verdict for one series (`value` of each sample) with the warm-up ending at `warm_end`.
pub fn trend(
    samples: &[Sample],
    warm_end: f64,
    slack: f64,
    value: fn(&Sample) -> f64,
) -> Option<Trend> {
    let before: Vec<f64> = samples
        .iter()
        .filter(|s| s.t <= warm_end)
        .map(value)
        .collect();
    let after: Vec<f64> = samples
        .iter()
        .filter(|s| s.t > warm_end)
        .map(value)
        .collect();
    if before.is_empty() || after.len() < 3 {
        return None;
    }
    let warmup = median(&before[before.len().saturating_sub(5)..]);
    let end = median(&after[after.len().saturating_sub(5)..]);
    let peak = samples.iter().map(value).fold(0.0, f64::max);
    let flat = end <= warmup * FLAT_FACTOR + slack;
    let third = after.len() / 3;
    let thirds = [
        median(&after[..third]),
        median(&after[third..2 * third]),
        median(&after[2 * third..]),
    ];
    let rising = thirds[0] < thirds[1] && thirds[1] < thirds[2];
    let growing = !flat && rising && end > warmup * 1.25 + 2.0 * slack;
    Some(Trend {
        warmup,
        end,
        peak,
        flat,
        growing,
    })
}

fn median(values: &[f64]) -> f64 {
    crate::summary::median(values.to_vec()).unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(values: &[u64]) -> Vec<Sample> {
        values
            .iter()
            .enumerate()
            .map(|(i, &fds)| Sample {
                t: i as f64,
                rss_kib: 0,
                fds,
                per_sec: 0.0,
            })
            .collect()
    }

    #[test]
    fn flat_and_growing() {
        let fds = |s: &Sample| s.fds as f64;
        let flat = series(&[10, 50, 52, 51, 50, 53, 49, 50, 52, 51, 50, 52]);
        let t = trend(&flat, 3.0, FD_SLACK, fds).expect("enough samples");
        assert!(t.flat && !t.growing);
        let leak = series(&[10, 50, 60, 80, 100, 130, 160, 200, 240, 280, 330, 400]);
        let t = trend(&leak, 3.0, FD_SLACK, fds).expect("enough samples");
        assert!(!t.flat && t.growing);
    }
}
