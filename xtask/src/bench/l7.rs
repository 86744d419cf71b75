//! `cargo xtask bench l7`: tether against HAProxy and nginx (and no proxy at all), side by side
//! in one run, against the same three `tether-echo` backends, loaded by `wrk`.
//!
//! Each proxy gets one worker thread pinned to its own CPU; wrk and the backends share the other
//! CPU(s). Two scenarios per system: `sticky` (every request carries a valid session cookie) and
//! `new-session` (no cookie, so every request makes a new pin and gets a `Set-Cookie`).
use super::chart;
use super::wrk::{self, Load, WrkResult};
use crate::harness::{
    cpu_list, have_program, http_get, indent, loopback, nproc, parse_cpu_list, pinned, utc_now,
    wait_for_quiet, HttpResponse, Machine, Proc, Snapshot, TempDir, Usage,
};
use crate::util;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The cookie tether issues (its config below).
const TETHER_COOKIE: &str = "session-id";
/// The cookie HAProxy inserts.
const HAPROXY_COOKIE: &str = "SRV";
/// The cookie nginx hashes on (nginx variables cannot contain '-', so not `session-id`).
const NGINX_COOKIE: &str = "session";
/// Value sent where any value does (nginx's hash, the direct backend).
const SYNTHETIC_SESSION: &str = "bench-3f9a0c1e7b2d4a6f8e5c0b1a2d3e4f5a";
/// Bound on a proxy coming up.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// The throughput bar tether is held to (against HAProxy).
const TARGET_RATIO: f64 = 1.2;
/// CPU (% of one CPU) that other processes may use before a cell counts as disturbed.
const QUIET_PCT: f64 = 10.0;

#[derive(clap::Args)]
pub struct Options {
    /// Seconds of measured load per cell (system x scenario).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds of unmeasured load before each cell.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// wrk keep-alive connections.
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// wrk threads.
    #[arg(long, default_value_t = 1)]
    wrk_threads: u32,
    /// Repeat the whole matrix this many times (system order rotates); cells report medians.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Systems to run.
    #[arg(long, value_enum, value_delimiter = ',',
          default_values_t = [System::Direct, System::Tether, System::Haproxy, System::Nginx])]
    systems: Vec<System>,
    /// Scenarios to run.
    #[arg(long, value_enum, value_delimiter = ',',
          default_values_t = [Scenario::Sticky, Scenario::NewSession])]
    scenarios: Vec<Scenario>,
    /// CPUs for the proxy under test (taskset list); default 0.
    #[arg(long)]
    proxy_cpus: Option<String>,
    /// CPUs for wrk and the backends (taskset list); default all but CPU 0.
    #[arg(long)]
    load_cpus: Option<String>,
    /// Do not pin anything.
    #[arg(long)]
    no_pin: bool,
    /// Before each cell, wait up to this many seconds for other processes to go quiet
    /// (< 10% of a CPU, I/O stalls < 10% of the time); 0 to not wait. Disturbed cells are
    /// flagged either way.
    #[arg(long, default_value_t = 30)]
    quiet_wait: u64,
    /// Use the binaries already in target/release.
    #[arg(long)]
    skip_build: bool,
    /// Where to write l7-*.json and l7-latest.png (default: bench/results).
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    Direct,
    Tether,
    Haproxy,
    Nginx,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Direct => "direct",
            System::Tether => "tether",
            System::Haproxy => "haproxy",
            System::Nginx => "nginx",
        }
    }

    /// The cookie this system issues itself, if it does.
    fn issued_cookie(self) -> Option<&'static str> {
        match self {
            System::Tether => Some(TETHER_COOKIE),
            System::Haproxy => Some(HAPROXY_COOKIE),
            System::Direct | System::Nginx => None,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    Sticky,
    NewSession,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Sticky => "sticky",
            Scenario::NewSession => "new-session",
        }
    }
}

/// Everything saved to bench/results/l7-*.json (and drawn in the chart).
#[derive(Serialize)]
pub struct Report {
    pub bench: &'static str,
    pub timestamp: String,
    pub machine: Machine,
    pub settings: Settings,
    pub cells: Vec<Cell>,
    pub ratios: Vec<Ratio>,
    pub target: Target,
}

#[derive(Serialize)]
pub struct Settings {
    pub duration_s: u64,
    pub warmup_s: u64,
    pub connections: u32,
    pub wrk_threads: u32,
    pub rounds: u32,
    pub proxy_workers: u32,
    pub pinning: Pinning,
    pub backends: Vec<String>,
    pub systems: BTreeMap<String, String>,
}

#[derive(Serialize)]
pub struct Pinning {
    pub enabled: bool,
    pub proxy_cpus: String,
    pub load_cpus: String,
    pub description: String,
}

/// One system under one scenario; medians over rounds.
#[derive(Serialize)]
pub struct Cell {
    pub system: System,
    pub scenario: Scenario,
    /// Ran, and served only 2xx without socket errors.
    pub ok: bool,
    /// Every round of this cell ran while the machine was busy (see [`Usage::disturbed`]).
    pub disturbed: bool,
    /// Rounds the medians come from (the undisturbed ones, if any).
    pub samples_used: usize,
    pub error: Option<String>,
    pub notes: Vec<String>,
    pub requests_per_sec: Option<f64>,
    /// Lowest and highest req/s of the rounds the median comes from.
    pub requests_per_sec_min: Option<f64>,
    pub requests_per_sec_max: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub requests: u64,
    pub non_2xx: u64,
    pub socket_errors: u64,
    /// CPU use while measuring (medians over rounds); see [`Usage`].
    pub cpu: Usage,
    pub samples: Vec<Sample>,
}

#[derive(Serialize)]
pub struct Sample {
    pub round: u32,
    #[serde(flatten)]
    pub wrk: WrkResult,
    pub cpu: Usage,
}

#[derive(Serialize)]
pub struct Ratio {
    pub scenario: Scenario,
    pub numerator: System,
    pub denominator: System,
    /// numerator req/s over denominator req/s.
    pub requests_per_sec: Option<f64>,
    /// numerator p99 over denominator p99 (lower is better for the numerator).
    pub p99: Option<f64>,
}

#[derive(Serialize)]
pub struct Target {
    pub rule: String,
    pub pass: bool,
    pub scenarios: Vec<TargetLine>,
}

#[derive(Serialize)]
pub struct TargetLine {
    pub scenario: Scenario,
    pub pass: bool,
    pub requests_per_sec_ratio: Option<f64>,
    pub tether_p99_ms: Option<f64>,
    pub haproxy_p99_ms: Option<f64>,
    pub reason: String,
    /// Set when the load side (direct) cannot even reach the target throughput.
    pub ceiling: Option<String>,
}

struct Ports {
    tether: u16,
    tether_admin: u16,
    haproxy: u16,
    nginx: u16,
}

struct Ctx<'a> {
    options: &'a Options,
    dir: &'a Path,
    bin: PathBuf,
    backends: Vec<SocketAddr>,
    ports: Ports,
    proxy_cpus: Vec<usize>,
    load_cpus: Vec<usize>,
    /// Why tether cannot run at all (build failed, binary missing).
    tether_unavailable: Option<String>,
}

/// A system ready to take load; its process (if any) stops on drop.
struct Running {
    system: System,
    addr: SocketAddr,
    process: Option<Proc>,
}

#[derive(Default)]
struct Acc {
    samples: Vec<Sample>,
    errors: Vec<String>,
    notes: BTreeSet<String>,
}

pub fn run(options: &Options) -> Result<()> {
    if options.duration == 0 || options.connections == 0 || options.wrk_threads == 0 {
        bail!("--duration, --connections and --wrk-threads must be positive");
    }
    if options.wrk_threads > options.connections {
        bail!("wrk needs at least one connection per thread");
    }
    if options.systems.is_empty() || options.scenarios.is_empty() {
        bail!("nothing to run");
    }
    if !have_program("wrk") {
        bail!("wrk is not installed (apt-get install wrk)");
    }
    let mut systems = options.systems.clone();
    systems.sort();
    systems.dedup();
    let mut scenarios = options.scenarios.clone();
    scenarios.sort();
    scenarios.dedup();

    let root = util::workspace_root();
    let out_dir = options
        .out_dir
        .clone()
        .unwrap_or_else(|| root.join("bench/results"));
    let (bin, tether_unavailable) = build(options, &root)?;
    let (proxy_cpus, load_cpus) = pinning(options)?;
    let machine = Machine::probe(&root);
    let (timestamp, stamp) = utc_now();
    let temp = TempDir::new("tether-bench-l7")?;
    let dir = temp.path();

    let ports = crate::harness::free_ports(7)?;
    let backends: Vec<SocketAddr> = ports[..3].iter().map(|&p| loopback(p)).collect();
    let ctx = Ctx {
        options,
        dir,
        bin,
        backends,
        ports: Ports {
            tether: ports[3],
            tether_admin: ports[4],
            haproxy: ports[5],
            nginx: ports[6],
        },
        proxy_cpus,
        load_cpus,
        tether_unavailable,
    };

    let pinning = describe_pinning(&ctx);
    print_header(&ctx, &machine, &pinning.description, &scenarios);

    // Backends live for the whole run; dropping the Vec stops them, on error too.
    let _backends = start_backends(&ctx)?;

    let mut acc: BTreeMap<(System, Scenario), Acc> = BTreeMap::new();
    for round in 1..=options.rounds {
        let mut order = systems.clone();
        let shift = (round as usize - 1) % order.len();
        order.rotate_left(shift);
        if options.rounds > 1 {
            println!("round {round}/{}", options.rounds);
        }
        for &system in &order {
            run_system(&ctx, system, &scenarios, round, &mut acc);
        }
    }

    let cells: Vec<Cell> = systems
        .iter()
        .flat_map(|&sys| scenarios.iter().map(move |&sc| (sys, sc)))
        .map(|(sys, sc)| summarize(sys, sc, acc.remove(&(sys, sc)).unwrap_or_default()))
        .collect();
    let ratios = ratios(&cells, &scenarios);
    let target = target(&cells, &scenarios);
    let report = Report {
        bench: "l7",
        timestamp,
        settings: Settings {
            duration_s: options.duration,
            warmup_s: options.warmup,
            connections: options.connections,
            wrk_threads: options.wrk_threads,
            rounds: options.rounds,
            proxy_workers: 1,
            pinning,
            backends: ctx
                .backends
                .iter()
                .enumerate()
                .map(|(i, a)| format!("pod-{} {a}", i + 1))
                .collect(),
            systems: system_descriptions(&machine),
        },
        machine,
        cells,
        ratios,
        target,
    };
    print_results(&report);

    fs::create_dir_all(&out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let json = serde_json::to_string_pretty(&report)? + "\n";
    let stamped = out_dir.join(format!("l7-{stamp}.json"));
    let latest = out_dir.join("l7-latest.json");
    fs::write(&stamped, &json).with_context(|| format!("cannot write {}", stamped.display()))?;
    fs::write(&latest, &json).with_context(|| format!("cannot write {}", latest.display()))?;
    let png = out_dir.join("l7-latest.png");
    chart::draw(&report, &png).context("cannot draw the chart")?;
    println!(
        "\nsaved {}, {} and {}",
        shown(&stamped, &root),
        shown(&latest, &root),
        shown(&png, &root)
    );

    let failed: Vec<String> = report
        .cells
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{}/{}", c.system.name(), c.scenario.name()))
        .collect();
    if !failed.is_empty() {
        bail!(
            "{} cell(s) did not produce a clean result: {}",
            failed.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

/// Builds tether and tether-echo; a tether that does not build is reported, not fatal.
fn build(options: &Options, root: &Path) -> Result<(PathBuf, Option<String>)> {
    let release = root.join("target/release");
    let mut unavailable = None;
    let bin = if options.skip_build {
        release
    } else {
        match util::build_release_binaries() {
            Ok(bin) => bin,
            Err(error) => {
                eprintln!(
                    "warning: the release build failed ({error:#}); building tether-echo alone, \
                     tether will be reported as failed"
                );
                util::run_checked(Command::new(env!("CARGO")).current_dir(root).args([
                    "build",
                    "--release",
                    "-p",
                    "tether-tests",
                    "--bins",
                ]))?;
                unavailable = Some(format!("the release build failed: {error:#}"));
                release
            }
        }
    };
    if !bin.join("tether-echo").is_file() {
        bail!("{} is missing", bin.join("tether-echo").display());
    }
    if unavailable.is_none() && !bin.join("tether").is_file() {
        unavailable = Some(format!("{} is missing", bin.join("tether").display()));
    }
    Ok((bin, unavailable))
}

fn pinning(options: &Options) -> Result<(Vec<usize>, Vec<usize>)> {
    let n = nproc();
    if options.no_pin {
        return Ok((Vec::new(), Vec::new()));
    }
    if !have_program("taskset") {
        eprintln!("warning: taskset not found (util-linux); running unpinned");
        return Ok((Vec::new(), Vec::new()));
    }
    let proxy = match &options.proxy_cpus {
        Some(list) => parse_cpu_list(list)?,
        None if n >= 2 => vec![0],
        None => Vec::new(),
    };
    let load = match &options.load_cpus {
        Some(list) => parse_cpu_list(list)?,
        None if n >= 2 => (1..n).collect(),
        None => Vec::new(),
    };
    if let Some(cpu) = proxy.iter().chain(&load).find(|&&c| c >= n) {
        bail!("CPU {cpu} does not exist here ({n} CPUs)");
    }
    if proxy.iter().any(|c| load.contains(c)) {
        eprintln!("warning: the proxy and load CPU sets overlap");
    }
    Ok((proxy, load))
}

fn describe_pinning(ctx: &Ctx) -> Pinning {
    let o = ctx.options;
    let load_what = format!(
        "wrk ({} thread(s), {} connections) + 3 tether-echo backends (1 worker each)",
        o.wrk_threads, o.connections
    );
    let where_ = |cpus: &[usize]| {
        if cpus.is_empty() {
            "unpinned".to_string()
        } else {
            format!("CPU {} (taskset -c {})", cpu_list(cpus), cpu_list(cpus))
        }
    };
    let enabled = !ctx.proxy_cpus.is_empty() || !ctx.load_cpus.is_empty();
    let description = if enabled {
        format!(
            "proxy under test (1 worker) -> {}; {load_what} -> {}",
            where_(&ctx.proxy_cpus),
            where_(&ctx.load_cpus)
        )
    } else {
        format!(
            "nothing pinned ({} CPU(s)); proxy (1 worker), {load_what}",
            nproc()
        )
    };
    Pinning {
        enabled,
        proxy_cpus: cpu_list(&ctx.proxy_cpus),
        load_cpus: cpu_list(&ctx.load_cpus),
        description,
    }
}

fn print_header(ctx: &Ctx, machine: &Machine, pinning: &str, scenarios: &[Scenario]) {
    let unknown = || "?".to_string();
    println!("== cargo xtask bench l7 ==");
    println!(
        "machine: {} CPU(s), {}, kernel {}, {}",
        machine.nproc,
        machine.cpu_model.clone().unwrap_or_else(unknown),
        machine.kernel.clone().unwrap_or_else(unknown),
        machine.os.clone().unwrap_or_else(unknown)
    );
    println!(
        "tools: {} | {} | {}",
        machine
            .haproxy
            .clone()
            .unwrap_or_else(|| "haproxy: not found".into()),
        machine
            .nginx
            .clone()
            .unwrap_or_else(|| "nginx: not found".into()),
        machine.wrk.clone().unwrap_or_else(unknown)
    );
    println!(
        "commit: {}{}",
        machine.git_commit.clone().unwrap_or_else(unknown),
        if machine.git_dirty == Some(true) {
            " (dirty)"
        } else {
            ""
        }
    );
    println!("pinning: {pinning}");
    println!(
        "load: {} s measured after {} s warmup per cell, {} round(s); scenarios: {}",
        ctx.options.duration,
        ctx.options.warmup,
        ctx.options.rounds,
        scenarios
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "backends: {}",
        ctx.backends
            .iter()
            .enumerate()
            .map(|(i, a)| format!("pod-{} {a}", i + 1))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(why) = &ctx.tether_unavailable {
        println!("tether: UNAVAILABLE: {why}");
    }
    println!();
}

fn start_backends(ctx: &Ctx) -> Result<Vec<Proc>> {
    let mut procs = Vec::new();
    for (i, addr) in ctx.backends.iter().enumerate() {
        let name = format!("pod-{}", i + 1);
        let mut command = pinned(&ctx.load_cpus, ctx.bin.join("tether-echo"));
        command.args([
            "--listen",
            &addr.to_string(),
            "--name",
            &name,
            "--workers",
            "1",
        ]);
        let mut process = Proc::spawn(&name, command, ctx.dir.join(format!("{name}.log")))?;
        process.wait_ready(*addr, READY_TIMEOUT)?;
        procs.push(process);
        let response = http_get(*addr, "/", &[])?;
        expect_2xx(&response, &name)?;
        if response.header("x-pod") != Some(name.as_str()) {
            bail!(
                "backend {addr} says it is {:?}, not {name}",
                response.header("x-pod")
            );
        }
    }
    Ok(procs)
}

/// Starts one system, runs its scenarios, stops it; failures land in the cells.
fn run_system(
    ctx: &Ctx,
    system: System,
    scenarios: &[Scenario],
    round: u32,
    acc: &mut BTreeMap<(System, Scenario), Acc>,
) {
    let mut running = match start(ctx, system) {
        Ok(running) => running,
        Err(error) => {
            let message = format!("{} failed to start: {error:#}", system.name());
            println!(
                "  {:<8} FAILED TO START\n{}",
                system.name(),
                indent(&format!("{error:#}"))
            );
            for &scenario in scenarios {
                acc.entry((system, scenario))
                    .or_default()
                    .errors
                    .push(message.clone());
            }
            return;
        }
    };
    for &scenario in scenarios {
        print!("  {:<8} {:<12} ", system.name(), scenario.name());
        let _ = std::io::stdout().flush();
        let entry = acc.entry((system, scenario)).or_default();
        match measure(ctx, &mut running, scenario, round, &mut entry.notes) {
            Ok(sample) => {
                let w = &sample.wrk;
                println!(
                    "{:>9} req/s  p50 {:>7}  p99 {:>7}  cpu: proxy {} load {} other {}  io {}{}",
                    thousands(w.requests_per_sec),
                    ms(w.p50_us / 1e3),
                    ms(w.p99_us / 1e3),
                    pct(sample.cpu.proxy_process_pct),
                    pct(sample.cpu.load_cpu_busy_pct),
                    pct(sample.cpu.foreign_pct),
                    pct(sample.cpu.io_pressure_pct),
                    w.problem().map(|p| format!("  !! {p}")).unwrap_or_default()
                );
                entry.samples.push(sample);
            }
            Err(error) => {
                println!("FAILED\n{}", indent(&format!("{error:#}")));
                entry.errors.push(format!("{error:#}"));
            }
        }
    }
    if let Some(process) = running.process.as_mut() {
        process.stop();
    }
}

fn start(ctx: &Ctx, system: System) -> Result<Running> {
    let dir = ctx.dir;
    let (addr, command) = match system {
        System::Direct => {
            return Ok(Running {
                system,
                addr: ctx.backends[0],
                process: None,
            })
        }
        System::Tether => {
            if let Some(why) = &ctx.tether_unavailable {
                bail!("{why}");
            }
            let config = dir.join("tether.yaml");
            fs::write(&config, tether_config(ctx))?;
            let mut command = pinned(&ctx.proxy_cpus, ctx.bin.join("tether"));
            command
                .arg("run")
                .arg("--config")
                .arg(&config)
                .args(["--workers", "1"])
                .env("RUST_LOG", "warn");
            (loopback(ctx.ports.tether), command)
        }
        System::Haproxy => {
            if !have_program("haproxy") {
                bail!("haproxy is not installed (apt-get install haproxy)");
            }
            let config = dir.join("haproxy.cfg");
            fs::write(&config, haproxy_config(ctx))?;
            let mut command = pinned(&ctx.proxy_cpus, "haproxy");
            command.arg("-db").arg("-f").arg(&config);
            (loopback(ctx.ports.haproxy), command)
        }
        System::Nginx => {
            if !have_program("nginx") {
                bail!("nginx is not installed (apt-get install nginx)");
            }
            let prefix = dir.join("nginx");
            fs::create_dir_all(&prefix)?;
            let config = prefix.join("nginx.conf");
            fs::write(&config, nginx_config(ctx, &prefix))?;
            let mut command = pinned(&ctx.proxy_cpus, "nginx");
            command
                .arg("-p")
                .arg(&prefix)
                .arg("-c")
                .arg(&config)
                .arg("-e")
                .arg(prefix.join("error.log"));
            (loopback(ctx.ports.nginx), command)
        }
    };
    let log = dir.join(format!("{}.log", system.name()));
    let mut process = Proc::spawn(system.name(), command, log)?;
    process.wait_ready(addr, READY_TIMEOUT)?;
    Ok(Running {
        system,
        addr,
        process: Some(process),
    })
}

fn measure(
    ctx: &Ctx,
    running: &mut Running,
    scenario: Scenario,
    round: u32,
    notes: &mut BTreeSet<String>,
) -> Result<Sample> {
    let cookie = match scenario {
        Scenario::Sticky => Some(sticky_cookie(running)?),
        Scenario::NewSession => None,
    };
    preflight(running, scenario, cookie.as_deref(), notes)?;
    if ctx.options.quiet_wait > 0 {
        let limit = Duration::from_secs(ctx.options.quiet_wait);
        let (usage, waited) = wait_for_quiet(limit, QUIET_PCT);
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
    let url = format!("http://{}/", running.addr);
    let tag = format!("{}-{}-{round}", running.system.name(), scenario.name());
    let mut load = Load {
        url: &url,
        cookie: cookie.as_deref(),
        connections: ctx.options.connections,
        threads: ctx.options.wrk_threads,
        duration: Duration::from_secs(ctx.options.warmup),
        cpus: &ctx.load_cpus,
    };
    if ctx.options.warmup > 0 {
        wrk::run(&load, ctx.dir, &format!("{tag}-warmup")).context("warmup")?;
    }
    load.duration = Duration::from_secs(ctx.options.duration);
    let before = Snapshot::take();
    let result = wrk::run(&load, ctx.dir, &tag)?;
    let after = Snapshot::take();
    if let Some(process) = running.process.as_mut() {
        process.ensure_running()?;
    }
    let cpu = match (&before, &after) {
        (Some(b), Some(a)) => Snapshot::usage(
            b,
            a,
            running.process.as_ref().map(Proc::pid),
            &ctx.proxy_cpus,
            &ctx.load_cpus,
        ),
        _ => Usage::default(),
    };
    if cpu.disturbed(QUIET_PCT) {
        notes.insert(format!(
            "{}/{} round {round}: other processes used {} of a CPU and stalled on I/O {} of the \
             time during the measurement",
            running.system.name(),
            scenario.name(),
            pct(cpu.foreign_pct),
            pct(cpu.io_pressure_pct)
        ));
    }
    Ok(Sample {
        round,
        wrk: result,
        cpu,
    })
}

/// The `Cookie` header value for the sticky scenario: one the system issued itself, where it does.
fn sticky_cookie(running: &Running) -> Result<String> {
    match running.system {
        System::Direct => Ok(format!("{TETHER_COOKIE}={SYNTHETIC_SESSION}")),
        System::Nginx => Ok(format!("{NGINX_COOKIE}={SYNTHETIC_SESSION}")),
        System::Tether | System::Haproxy => {
            let name = running.system.issued_cookie().unwrap_or(TETHER_COOKIE);
            let response = http_get(running.addr, "/", &[])?;
            expect_2xx(&response, running.system.name())?;
            response.set_cookie(name).with_context(|| {
                format!(
                    "{} answered without Set-Cookie: {name}=...; headers: {:?}",
                    running.system.name(),
                    response.headers
                )
            })
        }
    }
}

/// Checks, before loading it, that the system does what the scenario claims to measure.
fn preflight(
    running: &Running,
    scenario: Scenario,
    cookie: Option<&str>,
    notes: &mut BTreeSet<String>,
) -> Result<()> {
    let name = running.system.name();
    match scenario {
        Scenario::Sticky => {
            let cookie = cookie.context("the sticky scenario needs a cookie")?;
            let mut pods = BTreeSet::new();
            let mut reissued = 0;
            for _ in 0..5 {
                let response = http_get(running.addr, "/", &[("Cookie", cookie)])?;
                expect_2xx(&response, name)?;
                pods.insert(response.header("x-pod").unwrap_or("(no x-pod)").to_string());
                if let Some(issued) = running.system.issued_cookie() {
                    reissued += usize::from(response.set_cookie(issued).is_some());
                }
            }
            if pods.len() != 1 {
                bail!("{name}: five requests with the same cookie reached {pods:?}");
            }
            if reissued > 0 {
                notes.insert(format!(
                    "sticky: {name} sent Set-Cookie on {reissued} of 5 requests that carried its \
                     valid cookie"
                ));
            }
        }
        Scenario::NewSession => {
            for _ in 0..3 {
                let response = http_get(running.addr, "/", &[])?;
                expect_2xx(&response, name)?;
                if let Some(issued) = running.system.issued_cookie() {
                    response.set_cookie(issued).with_context(|| {
                        format!("{name}: a request without a cookie got no Set-Cookie: {issued}")
                    })?;
                }
            }
            if running.system == System::Nginx {
                notes.insert(
                    "new-session: nginx issues no cookie; an absent cookie hashes to one \
                     backend"
                        .to_string(),
                );
            }
        }
    }
    Ok(())
}

fn expect_2xx(response: &HttpResponse, who: &str) -> Result<()> {
    if !(200..300).contains(&response.status) {
        bail!("{who} answered {} to GET /", response.status);
    }
    Ok(())
}

fn tether_config(ctx: &Ctx) -> String {
    let targets: String = ctx
        .backends
        .iter()
        .map(|a| format!("      - {{address: {a}}}\n"))
        .collect();
    format!(
        "proxy:
  listen: 127.0.0.1:{}
admin:
  listen: 127.0.0.1:{}
routes:
  - match: {{pathPrefix: /}}
    service: echo
services:
  echo:
    policy:
      algorithm: sticky-sessions
      hashOn: {{input: none}}
      stickySessions: {{cookie: {TETHER_COOKIE}, cookiePath: /}}
    targets:
{targets}",
        ctx.ports.tether, ctx.ports.tether_admin
    )
}

fn haproxy_config(ctx: &Ctx) -> String {
    let servers: String = ctx
        .backends
        .iter()
        .enumerate()
        .map(|(i, a)| format!("    server pod-{n} {a} cookie pod-{n}\n", n = i + 1))
        .collect();
    format!(
        "global
    nbthread 1
    maxconn 4096

defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s

frontend bench
    bind 127.0.0.1:{port}
    default_backend echo

backend echo
    balance roundrobin
    cookie {HAPROXY_COOKIE} insert indirect nocache
    http-reuse safe
{servers}",
        port = ctx.ports.haproxy
    )
}

fn nginx_config(ctx: &Ctx, prefix: &Path) -> String {
    let p = prefix.display();
    let servers: String = ctx
        .backends
        .iter()
        .map(|a| format!("        server {a};\n"))
        .collect();
    format!(
        "daemon off;
master_process on;
worker_processes 1;
pid {p}/nginx.pid;
error_log {p}/error.log warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    client_body_temp_path {p}/client_body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    keepalive_timeout 60s;
    keepalive_requests 1000000;

    upstream echo {{
        hash $cookie_{NGINX_COOKIE} consistent;
{servers}        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }}

    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://echo;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}
}}
",
        port = ctx.ports.nginx
    )
}

fn system_descriptions(machine: &Machine) -> BTreeMap<String, String> {
    let version = |v: &Option<String>| v.clone().unwrap_or_else(|| "?".into());
    BTreeMap::from([
        ("direct".into(), "wrk straight to backend pod-1".into()),
        (
            "tether".into(),
            format!(
                "target/release/tether run --workers 1, sticky-sessions cookie {TETHER_COOKIE}"
            ),
        ),
        (
            "haproxy".into(),
            format!(
                "{}; nbthread 1, cookie {HAPROXY_COOKIE} insert indirect nocache, roundrobin",
                version(&machine.haproxy)
            ),
        ),
        (
            "nginx".into(),
            format!(
                "{}; worker_processes 1, hash $cookie_{NGINX_COOKIE} consistent, upstream \
                 keepalive 64",
                version(&machine.nginx)
            ),
        ),
    ])
}

fn median(mut values: Vec<f64>) -> Option<f64> {
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

fn summarize(system: System, scenario: Scenario, acc: Acc) -> Cell {
    let samples = acc.samples;
    // Prefer the rounds nothing else disturbed; fall back to all (and say so).
    let quiet: Vec<&Sample> = samples.iter().filter(|s| !s.disturbed()).collect();
    let disturbed = quiet.is_empty() && !samples.is_empty();
    let used: Vec<&Sample> = if disturbed {
        samples.iter().collect()
    } else {
        quiet
    };
    let med =
        |f: &dyn Fn(&Sample) -> Option<f64>| median(used.iter().filter_map(|s| f(s)).collect());
    let mut problems = acc.errors;
    problems.extend(samples.iter().filter_map(|s| s.wrk.problem()));
    if samples.is_empty() && problems.is_empty() {
        problems.push("not measured".into());
    }
    problems.dedup();
    Cell {
        system,
        scenario,
        ok: problems.is_empty(),
        disturbed,
        samples_used: used.len(),
        error: (!problems.is_empty()).then(|| problems.join("; ")),
        notes: acc.notes.into_iter().collect(),
        requests_per_sec: med(&|s| Some(s.wrk.requests_per_sec)),
        requests_per_sec_min: used.iter().map(|s| s.wrk.requests_per_sec).reduce(f64::min),
        requests_per_sec_max: used.iter().map(|s| s.wrk.requests_per_sec).reduce(f64::max),
        p50_ms: med(&|s| Some(s.wrk.p50_us / 1e3)),
        p90_ms: med(&|s| Some(s.wrk.p90_us / 1e3)),
        p99_ms: med(&|s| Some(s.wrk.p99_us / 1e3)),
        p999_ms: med(&|s| s.wrk.p999_us.map(|v| v / 1e3)),
        max_ms: med(&|s| Some(s.wrk.max_us / 1e3)),
        requests: samples.iter().map(|s| s.wrk.requests).sum(),
        non_2xx: samples.iter().map(|s| s.wrk.non_2xx).sum(),
        socket_errors: samples.iter().map(|s| s.wrk.socket_errors.total()).sum(),
        cpu: Usage {
            proxy_process_pct: med(&|s| s.cpu.proxy_process_pct),
            foreign_pct: med(&|s| s.cpu.foreign_pct),
            proxy_cpu_busy_pct: med(&|s| s.cpu.proxy_cpu_busy_pct),
            load_cpu_busy_pct: med(&|s| s.cpu.load_cpu_busy_pct),
            proxy_cpu_interrupts_pct: med(&|s| s.cpu.proxy_cpu_interrupts_pct),
            proxy_cpu_steal_pct: med(&|s| s.cpu.proxy_cpu_steal_pct),
            io_pressure_pct: med(&|s| s.cpu.io_pressure_pct),
        },
        samples,
    }
}

impl Sample {
    /// Other processes took a noticeable share of the machine while this was measured.
    fn disturbed(&self) -> bool {
        self.cpu.disturbed(QUIET_PCT)
    }
}

fn cell(cells: &[Cell], system: System, scenario: Scenario) -> Option<&Cell> {
    cells
        .iter()
        .find(|c| c.system == system && c.scenario == scenario)
}

/// Ratios between two clean cells only: a system serving errors does not get a ratio.
fn ratios(cells: &[Cell], scenarios: &[Scenario]) -> Vec<Ratio> {
    const PAIRS: [(System, System); 5] = [
        (System::Tether, System::Haproxy),
        (System::Tether, System::Nginx),
        (System::Tether, System::Direct),
        (System::Haproxy, System::Direct),
        (System::Nginx, System::Direct),
    ];
    let mut out = Vec::new();
    for &scenario in scenarios {
        for (numerator, denominator) in PAIRS {
            let (Some(a), Some(b)) = (
                cell(cells, numerator, scenario),
                cell(cells, denominator, scenario),
            ) else {
                continue;
            };
            let clean = a.ok && b.ok;
            let div = |x: Option<f64>, y: Option<f64>| match (x, y) {
                (Some(x), Some(y)) if clean && y > 0.0 => Some(x / y),
                _ => None,
            };
            out.push(Ratio {
                scenario,
                numerator,
                denominator,
                requests_per_sec: div(a.requests_per_sec, b.requests_per_sec),
                p99: div(a.p99_ms, b.p99_ms),
            });
        }
    }
    out
}

fn target(cells: &[Cell], scenarios: &[Scenario]) -> Target {
    let rule = format!(
        "tether >= {TARGET_RATIO}x HAProxy req/s with p99 no worse than HAProxy's, per scenario"
    );
    let lines: Vec<TargetLine> = scenarios
        .iter()
        .map(|&scenario| {
            let t = cell(cells, System::Tether, scenario);
            let h = cell(cells, System::Haproxy, scenario);
            let mut line = TargetLine {
                scenario,
                pass: false,
                requests_per_sec_ratio: None,
                tether_p99_ms: t.and_then(|c| c.p99_ms),
                haproxy_p99_ms: h.and_then(|c| c.p99_ms),
                reason: String::new(),
                ceiling: None,
            };
            match (t, h) {
                (None, _) | (_, None) => line.reason = "tether or HAProxy was not run".into(),
                (Some(t), _) if !t.ok => {
                    line.reason = format!("tether: {}", t.error.as_deref().unwrap_or("failed"));
                }
                (_, Some(h)) if !h.ok => {
                    line.reason = format!("HAProxy: {}", h.error.as_deref().unwrap_or("failed"));
                }
                (Some(t), Some(h)) => {
                    if let (Some(tr), Some(hr), Some(tp), Some(hp)) =
                        (t.requests_per_sec, h.requests_per_sec, t.p99_ms, h.p99_ms)
                    {
                        let ratio = tr / hr;
                        line.requests_per_sec_ratio = Some(ratio);
                        let fast = ratio >= TARGET_RATIO;
                        let tail = tp <= hp;
                        line.pass = fast && tail;
                        let direct = cell(cells, System::Direct, scenario)
                            .filter(|c| c.ok)
                            .and_then(|c| c.requests_per_sec);
                        // Within 10% of the no-proxy ceiling, the load side caps what a proxy shows.
                        if let Some(d) = direct.filter(|&d| hr * TARGET_RATIO > 0.9 * d) {
                            line.ceiling = Some(format!(
                                "{TARGET_RATIO}x HAProxy = {} req/s is {:.0}% of what wrk + \
                                 backends do with no proxy at all ({} req/s direct): the load \
                                 side, not tether, may decide this line here",
                                thousands(hr * TARGET_RATIO),
                                100.0 * hr * TARGET_RATIO / d,
                                thousands(d)
                            ));
                        }
                        line.reason = format!(
                            "{ratio:.2}x req/s ({}), p99 {tp:.2} ms vs {hp:.2} ms ({}){}",
                            if fast { "ok" } else { "short" },
                            if tail { "ok" } else { "worse" },
                            if t.disturbed || h.disturbed {
                                " [machine was busy: rerun on an idle machine]"
                            } else {
                                ""
                            }
                        );
                    }
                }
            }
            line
        })
        .collect();
    Target {
        rule,
        pass: !lines.is_empty() && lines.iter().all(|l| l.pass),
        scenarios: lines,
    }
}

fn print_results(report: &Report) {
    println!();
    println!(
        "{:<12} {:<8} {:>10} {:>13} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9} {:>8}  status",
        "scenario",
        "system",
        "req/s",
        "(min-max)",
        "p50",
        "p90",
        "p99",
        "vs direct",
        "proxy cpu",
        "load cpu",
        "other cpu",
        "io stall"
    );
    for c in &report.cells {
        let vs_direct = report
            .ratios
            .iter()
            .find(|r| {
                r.scenario == c.scenario
                    && r.numerator == c.system
                    && r.denominator == System::Direct
            })
            .and_then(|r| r.requests_per_sec)
            .map(|r| format!("{r:.2}x"))
            .unwrap_or_else(|| {
                if c.system == System::Direct {
                    "1.00x".into()
                } else {
                    "-".into()
                }
            });
        let status = if c.ok && c.disturbed {
            "ok, but DISTURBED (machine busy)".to_string()
        } else if c.ok {
            "ok".to_string()
        } else {
            format!(
                "ERROR: {}",
                first_line(c.error.as_deref().unwrap_or("failed"))
            )
        };
        println!(
            "{:<12} {:<8} {:>10} {:>13} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9} {:>8}  {status}",
            c.scenario.name(),
            c.system.name(),
            c.requests_per_sec
                .map(thousands)
                .unwrap_or_else(|| "-".into()),
            match (c.requests_per_sec_min, c.requests_per_sec_max) {
                (Some(lo), Some(hi)) if c.samples_used > 1 => {
                    format!("({:.1}-{:.1}k)", lo / 1e3, hi / 1e3)
                }
                _ => String::new(),
            },
            c.p50_ms.map(ms).unwrap_or_else(|| "-".into()),
            c.p90_ms.map(ms).unwrap_or_else(|| "-".into()),
            c.p99_ms.map(ms).unwrap_or_else(|| "-".into()),
            vs_direct,
            pct(c.cpu.proxy_process_pct),
            pct(c.cpu.load_cpu_busy_pct),
            pct(c.cpu.foreign_pct),
            pct(c.cpu.io_pressure_pct),
        );
    }
    println!(
        "(medians over the rounds used: the undisturbed ones when there are any; \
         min-max: their spread)"
    );
    println!(
        "(proxy cpu: the proxy's processes, % of one CPU; load cpu: busy share of the wrk + \
         backend CPU(s); other cpu: processes outside this bench, % of one CPU; io stall: share of \
         time other processes stalled on I/O; the last two should be ~0)"
    );
    println!();
    for r in report
        .ratios
        .iter()
        .filter(|r| r.denominator != System::Direct)
    {
        println!(
            "{:<12} {}/{}: req/s {}, p99 {}",
            r.scenario.name(),
            r.numerator.name(),
            r.denominator.name(),
            r.requests_per_sec
                .map(|v| format!("{v:.2}x"))
                .unwrap_or_else(|| "n/a".into()),
            r.p99
                .map(|v| format!("{v:.2}x"))
                .unwrap_or_else(|| "n/a".into()),
        );
    }
    let notes: BTreeSet<&String> = report.cells.iter().flat_map(|c| &c.notes).collect();
    for note in notes {
        println!("note: {note}");
    }
    println!();
    println!("target: {}", report.target.rule);
    for line in &report.target.scenarios {
        println!(
            "  {:<12} {}  {}",
            line.scenario.name(),
            if line.pass { "PASS" } else { "MISS" },
            line.reason.lines().next().unwrap_or_default()
        );
        if let Some(ceiling) = &line.ceiling {
            println!("  {:<12}       ({ceiling})", "");
        }
    }
    println!(
        "  overall      {}",
        if report.target.pass { "PASS" } else { "MISS" }
    );
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() > 100 {
        format!("{}...", line.chars().take(100).collect::<String>())
    } else {
        line.to_string()
    }
}

fn shown(path: &Path, root: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

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

fn ms(value: f64) -> String {
    format!("{value:.2}ms")
}

fn pct(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.0}%"))
}
