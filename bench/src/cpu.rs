//! CPUs: lists ("0,2-3") and `taskset`, and CPU accounting between two instants (per-CPU
//! jiffies, the ticks of process trees, I/O pressure), which tells a bench's own load from
//! other users of the machine.
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

/// `program` run under `taskset -c CPUS` when `cpus` is not empty.
pub fn pinned(cpus: &[usize], program: impl AsRef<OsStr>) -> Command {
    if cpus.is_empty() {
        Command::new(program)
    } else {
        let mut command = Command::new("taskset");
        command.arg("-c").arg(cpu_list(cpus)).arg(program);
        command
    }
}

/// "0", "1-3", "0,2"
pub fn cpu_list(cpus: &[usize]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(",")
}

/// Parses "0", "1-3", "0,2-3".
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.trim().parse()?, b.trim().parse()?);
                if a > b {
                    bail!("bad CPU range {part}");
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().with_context(|| format!("bad CPU {part}"))?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// Per-CPU busy and total jiffies from /proc/stat.
pub struct CpuTimes(Vec<[u64; 8]>);

/// Which jiffies of a CPU to count: user nice system idle iowait irq softirq steal.
type Pick = fn(&[u64; 8]) -> u64;

pub const BUSY: Pick = |v| v.iter().sum::<u64>() - v[3] - v[4];
pub const INTERRUPTS: Pick = |v| v[5] + v[6];
pub const STEAL: Pick = |v| v[7];

impl CpuTimes {
    pub fn read() -> Option<Self> {
        let text = fs::read_to_string("/proc/stat").ok()?;
        let mut cpus = Vec::new();
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            let Some(name) = fields.next() else { continue };
            let Some(index) = name
                .strip_prefix("cpu")
                .and_then(|i| i.parse::<usize>().ok())
            else {
                continue;
            };
            // (guest time is already included in user)
            let values: Vec<u64> = fields.take(8).filter_map(|v| v.parse().ok()).collect();
            let Ok(values) = <[u64; 8]>::try_from(values) else {
                continue;
            };
            if cpus.len() <= index {
                cpus.resize(index + 1, [0; 8]);
            }
            cpus[index] = values;
        }
        Some(Self(cpus))
    }

    /// Share (0–100 %) of the time of `cpus` spent in `pick` between two snapshots.
    pub fn percent(before: &Self, after: &Self, cpus: &[usize], pick: Pick) -> Option<f64> {
        let (mut part, mut total) = (0u64, 0u64);
        for &cpu in cpus {
            let (v0, v1) = (before.0.get(cpu)?, after.0.get(cpu)?);
            part += pick(v1).saturating_sub(pick(v0));
            total += v1.iter().sum::<u64>().saturating_sub(v0.iter().sum());
        }
        (total > 0).then(|| 100.0 * part as f64 / total as f64)
    }
}

/// CPU accounting at one instant: per-CPU jiffies, and CPU ticks of every live process.
pub struct Snapshot {
    at: Instant,
    cpus: CpuTimes,
    /// user + nice + system over all CPUs (irq/softirq are not charged to processes).
    busy: u64,
    /// pid -> (ppid, utime + stime, cutime + cstime)
    procs: HashMap<u32, (u32, u64, u64)>,
    /// Microseconds some task waited on I/O (/proc/pressure/io), where PSI exists.
    io_stall_us: Option<u64>,
}

/// CPU use between two snapshots, in % of one CPU unless said otherwise.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Usage {
    /// The proxy's process tree (nginx master + worker, tether's threads...).
    pub proxy_process_pct: Option<f64>,
    /// Everything outside this harness's process tree: other users of the machine.
    pub foreign_pct: Option<f64>,
    /// Busy share (0–100 %) of the proxy's CPU(s), and of the load CPU(s).
    pub proxy_cpu_busy_pct: Option<f64>,
    pub load_cpu_busy_pct: Option<f64>,
    /// Share of the proxy CPU(s) spent in irq + softirq (loopback networking, but also disk
    /// interrupts of other users), and stolen by the hypervisor.
    pub proxy_cpu_interrupts_pct: Option<f64>,
    pub proxy_cpu_steal_pct: Option<f64>,
    /// Share of wall time (0–100 %) in which some task was stalled on I/O (PSI). The bench does
    /// no disk I/O, so this is other users of the machine (builds, copies).
    pub io_pressure_pct: Option<f64>,
}

impl Usage {
    /// Other users of the machine took `threshold` % of a CPU, or stalled on I/O that long.
    pub fn disturbed(&self, threshold: f64) -> bool {
        self.foreign_pct.is_some_and(|f| f >= threshold)
            || self.io_pressure_pct.is_some_and(|p| p >= threshold)
    }
}

impl Snapshot {
    pub fn take() -> Option<Self> {
        let text = fs::read_to_string("/proc/stat").ok()?;
        let busy = text.lines().find(|l| l.starts_with("cpu ")).map(|l| {
            l.split_whitespace()
                .skip(1)
                .take(3)
                .filter_map(|v| v.parse::<u64>().ok())
                .sum()
        })?;
        let mut procs = HashMap::new();
        for entry in fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // "pid (comm) state ppid ..." where comm may hold spaces and parentheses.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| {
                fields
                    .get(i)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            let ppid = fields
                .get(1)
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(0);
            // fields[0] is the state (stat field 3): utime is field 14, so index 11.
            procs.insert(pid, (ppid, num(11) + num(12), num(13) + num(14)));
        }
        let io_stall_us = fs::read_to_string("/proc/pressure/io")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with("some "))?
                    .split_whitespace()
                    .find_map(|f| f.strip_prefix("total="))?
                    .parse()
                    .ok()
            });
        Some(Self {
            at: Instant::now(),
            cpus: CpuTimes::read()?,
            busy,
            procs,
            io_stall_us,
        })
    }

    /// Ticks of the live processes descending from (and including) `root`.
    fn tree_ticks(&self, root: u32) -> u64 {
        let descends = |mut pid: u32| {
            for _ in 0..64 {
                if pid == root {
                    return true;
                }
                match self.procs.get(&pid) {
                    Some(&(ppid, _, _)) if ppid != 0 && ppid != pid => pid = ppid,
                    _ => return false,
                }
            }
            false
        };
        self.procs
            .iter()
            .filter(|(&pid, _)| descends(pid))
            .map(|(_, &(_, ticks, _))| ticks)
            .sum()
    }

    /// Ticks of this harness and everything it started, reaped children included.
    fn own_ticks(&self) -> u64 {
        let me = std::process::id();
        let reaped = self.procs.get(&me).map_or(0, |&(_, _, children)| children);
        self.tree_ticks(me) + reaped
    }

    /// CPU seconds (user + system, all threads) the live process tree of `root` used between
    /// two snapshots, from the ticks in /proc/PID/stat; `None` when `root` is not in both.
    pub fn tree_cpu_seconds(before: &Self, after: &Self, root: u32) -> Option<f64> {
        if !before.procs.contains_key(&root) || !after.procs.contains_key(&root) {
            return None;
        }
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let ticks = after.tree_ticks(root) as f64 - before.tree_ticks(root) as f64;
        (hz > 0.0).then(|| ticks.max(0.0) / hz)
    }

    pub fn usage(
        before: &Self,
        after: &Self,
        proxy: Option<u32>,
        proxy_cpus: &[usize],
        load_cpus: &[usize],
    ) -> Usage {
        let wall = after.at.duration_since(before.at).as_secs_f64();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let pct = |ticks: f64| (wall > 0.0 && hz > 0.0).then(|| 100.0 * ticks / hz / wall);
        let delta = |a: u64, b: u64| b as f64 - a as f64;
        let foreign = delta(before.busy, after.busy) - delta(before.own_ticks(), after.own_ticks());
        let share = |cpus: &[usize], pick: Pick| {
            (!cpus.is_empty())
                .then(|| CpuTimes::percent(&before.cpus, &after.cpus, cpus, pick))
                .flatten()
        };
        let busy = |cpus: &[usize]| share(cpus, BUSY);
        Usage {
            proxy_process_pct: proxy
                .and_then(|pid| pct(delta(before.tree_ticks(pid), after.tree_ticks(pid)))),
            foreign_pct: pct(foreign.max(0.0)),
            proxy_cpu_busy_pct: busy(proxy_cpus),
            load_cpu_busy_pct: busy(load_cpus),
            proxy_cpu_interrupts_pct: share(proxy_cpus, INTERRUPTS),
            proxy_cpu_steal_pct: share(proxy_cpus, STEAL),
            io_pressure_pct: match (before.io_stall_us, after.io_stall_us) {
                (Some(a), Some(b)) if wall > 0.0 => {
                    Some((100.0 * delta(a, b) / 1e6 / wall).clamp(0.0, 100.0))
                }
                _ => None,
            },
        }
    }
}

/// Waits (at most `limit`) until, over a 1 s window, processes outside this harness use less
/// than `threshold` % of one CPU and I/O stalls stay under `threshold` % of the time; returns
/// the last reading and the time spent waiting.
pub fn wait_for_quiet(limit: Duration, threshold: f64) -> (Usage, Duration) {
    let start = Instant::now();
    loop {
        let Some(before) = Snapshot::take() else {
            return (Usage::default(), start.elapsed());
        };
        std::thread::sleep(Duration::from_secs(1));
        let Some(after) = Snapshot::take() else {
            return (Usage::default(), start.elapsed());
        };
        let usage = Snapshot::usage(&before, &after, None, &[], &[]);
        if !usage.disturbed(threshold) || start.elapsed() >= limit {
            return (usage, start.elapsed());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_round_trip() -> Result<()> {
        assert_eq!(parse_cpu_list("0")?, vec![0]);
        assert_eq!(parse_cpu_list("1-3,0")?, vec![0, 1, 2, 3]);
        assert_eq!(cpu_list(&[3, 1, 2, 5]), "1-3,5");
        assert_eq!(cpu_list(&[0]), "0");
        assert!(parse_cpu_list("3-1").is_err());
        Ok(())
    }
}
