//! Plumbing shared by the benchmarks and the demo: child processes that die with the harness, CPU pinning,
//! free ports, a tiny HTTP/1.1 client, CPU accounting and machine facts.
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A scratch directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Result<Self> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped, on success and error alike.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    stopped: bool,
}

impl Proc {
    /// Starts `command` with stdin closed and stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut command: Command, log: PathBuf) -> Result<Self> {
        let out = File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone()?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        // If the harness dies without unwinding (SIGKILL, SIGTERM to cargo), the child still gets
        // SIGTERM from the kernel; Drop covers everything else.
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {name}: {command:?}"))?;
        Ok(Self {
            name: name.to_string(),
            child,
            log,
            stopped: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has already ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last `lines` lines of the process's output.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Fails with the log tail if the process has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.exited() {
            bail!("{} exited ({status}){}", self.name, self.output_note());
        }
        Ok(())
    }

    /// "; last output:\n    ..." or " with no output".
    fn output_note(&self) -> String {
        let tail = self.log_tail(15);
        if tail.trim().is_empty() {
            " with no output".to_string()
        } else {
            format!("; last output:\n{}", indent(&tail))
        }
    }

    /// Polls until `addr` accepts TCP connections, the process exits, or `timeout` passes.
    pub fn wait_ready(&mut self, addr: SocketAddr, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.ensure_running()?;
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not listen on {addr} within {timeout:?}{}",
                    self.name,
                    self.output_note()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the process to end by itself, killing it after `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.stopped = true;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.stop();
                bail!("{} did not finish within {timeout:?}; killed", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, up to 3 s grace, then SIGKILL; always reaps.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        if self.exited().is_some() {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: plain kill(2) on our own child's pid, which has not been reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("warning: {} ignored SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn indent(text: &str) -> String {
    text.lines()
        .map(|line| format!("    {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

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

/// `n` distinct loopback ports that were free a moment ago.
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("cannot reserve a loopback port")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// An HTTP/1.1 response as read by [`http_get`].
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The body as text (lossy); complete when Content-Length or the connection's end said so.
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `NAME=VALUE` of the `Set-Cookie` for `name`, without its attributes.
    pub fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
            .filter_map(|(_, v)| v.split(';').next().map(str::trim))
            .find(|pair| pair.split_once('=').is_some_and(|(k, _)| k.trim() == name))
            .map(str::to_string)
    }
}

/// One `GET` over a fresh connection (`Connection: close`), bounded to 5 s.
pub fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<HttpResponse> {
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;

    let deadline = Instant::now() + timeout;
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(response) = parse_response(&buffer, false)? {
            return Ok(response);
        }
        if Instant::now() >= deadline {
            bail!("no complete response from {addr} within {timeout:?}");
        }
        let n = stream
            .read(&mut chunk)
            .with_context(|| format!("reading the response from {addr}"))?;
        if n == 0 {
            return parse_response(&buffer, true)?
                .with_context(|| format!("{addr} closed the connection before a full response"));
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
}

/// `Some` once the head and (with a Content-Length) the body are in, or at EOF.
fn parse_response(buffer: &[u8], eof: bool) -> Result<Option<HttpResponse>> {
    let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buffer[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut response = HttpResponse {
        status,
        headers,
        body: String::new(),
    };
    let body = &buffer[end + 4..];
    let length = response
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok());
    let complete = eof || length.is_some_and(|len| body.len() >= len);
    if complete {
        let body = &body[..length.unwrap_or(body.len()).min(body.len())];
        response.body = String::from_utf8_lossy(body).into_owned();
    }
    Ok(complete.then_some(response))
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

/// Facts about the machine and the tools, recorded next to the numbers.
#[derive(Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: Option<String>,
    pub kernel: Option<String>,
    pub os: Option<String>,
    pub haproxy: Option<String>,
    pub nginx: Option<String>,
    pub wrk: Option<String>,
    pub rustc: Option<String>,
    pub git_commit: Option<String>,
    pub git_dirty: Option<bool>,
}

impl Machine {
    pub fn probe(root: &Path) -> Self {
        let cpu_model = fs::read_to_string("/proc/cpuinfo").ok().and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        });
        let os = fs::read_to_string("/etc/os-release").ok().and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        });
        let git_dirty = command_text(Command::new("git").current_dir(root).args([
            "status",
            "--porcelain",
            "--untracked-files=no",
        ]))
        .map(|s| !s.trim().is_empty());
        Self {
            nproc: nproc(),
            cpu_model,
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .map(|s| s.trim().to_string()),
            os,
            haproxy: first_line(Command::new("haproxy").arg("-v")),
            nginx: first_line(Command::new("nginx").arg("-v")),
            wrk: first_line(Command::new("wrk").arg("-v")).map(|l| {
                l.split(" Copyright")
                    .next()
                    .unwrap_or(&l)
                    .trim()
                    .to_string()
            }),
            rustc: first_line(Command::new("rustc").arg("-V")),
            git_commit: first_line(
                Command::new("git")
                    .current_dir(root)
                    .args(["rev-parse", "HEAD"]),
            ),
            git_dirty,
        }
    }
}

pub fn nproc() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// stdout followed by stderr of a command that ran (whatever its exit code).
pub fn command_text(command: &mut Command) -> Option<String> {
    let output = command.stdin(Stdio::null()).output().ok()?;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    Some(text)
}

fn first_line(command: &mut Command) -> Option<String> {
    command_text(command)?
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

pub fn have_program(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
        || Path::new(name).is_file()
}

/// UTC now as ("2026-04-21T10:15:00Z", "20260421T101500Z").
pub fn utc_now() -> (String, String) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc_strings(secs)
}

fn utc_strings(secs: u64) -> (String, String) {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (h, mi, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z"),
        format!("{y:04}{m:02}{d:02}T{h:02}{mi:02}{s:02}Z"),
    )
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

    #[test]
    fn utc_formatting() {
        assert_eq!(
            utc_strings(0),
            ("1970-01-01T00:00:00Z".into(), "19700101T000000Z".into())
        );
        // 2024-02-29T12:34:56Z
        assert_eq!(utc_strings(1_709_210_096).0, "2024-02-29T12:34:56Z");
    }

    #[test]
    fn parses_set_cookie() -> Result<()> {
        let raw = b"HTTP/1.1 200 OK\r\nset-cookie: session-id=abc.def=; Path=/; HttpOnly\r\n\
                    Set-Cookie: other=1\r\ncontent-length: 2\r\n\r\nok";
        let response = parse_response(raw, false)?.context("complete")?;
        assert_eq!(response.status, 200);
        assert_eq!(
            response.set_cookie("session-id").as_deref(),
            Some("session-id=abc.def=")
        );
        assert_eq!(response.set_cookie("SRV"), None);
        assert!(parse_response(&raw[..raw.len() - 1], false)?.is_none());
        Ok(())
    }
}
