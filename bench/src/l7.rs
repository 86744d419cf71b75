//! `cargo xtask bench l7`: tether against HAProxy and nginx (and no proxy at all), side by side
//! in one run, against the same three `tether-echo` backends, loaded by `wrk`.
//!
//! Each proxy runs with each worker count of `--workers` (default one), its N workers pinned to
//! CPUs 0..N-1; the load generator and the backends share the other CPU(s) (all but CPU 0).
//! Every cell records the proxy's CPU time per request. Scenarios: `sticky` (every request
//! carries a valid session cookie) and `new-session` (no cookie, so every request makes a new
//! pin and gets a `Set-Cookie`) over plaintext HTTP/1.1; then over each proxy's TLS listener
//! (one self-signed ECDSA P-256 certificate for all, TLS 1.2 and 1.3, ALPN h2 and http/1.1):
//! `https` (HTTP/1.1 keep-alive), `h2` (HTTP/2, loaded by h2load) and `tls-handshake` (a new
//! connection and full handshake per request). The bare backend (`direct`) runs the plaintext scenarios only.
use crate::built;
use crate::cpu::{cpu_list, parse_cpu_list, pinned, Snapshot, Usage};
use crate::h2load;
use crate::machine::{have_program, nproc, utc_now, Machine};
use crate::proxies::{
    self, expect_2xx, issued_cookie, Haproxy, HAPROXY_COOKIE, READY_TIMEOUT, SYNTHETIC_SESSION,
    TETHER_COOKIE,
};
use crate::summary::{
    self, disturbed_note, fail_unclean, failed_to_start, ms, pct, round_order, save, sorted_unique,
    thousands, wait_quiet, Rounds, QUIET_PCT,
};
use crate::wrk::{self, Load};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tether_testkit::binaries::{echo_command, testcert};
use tether_testkit::fs::TempDir;
use tether_testkit::net::{free_ports, http_get, loopback, HttpResponse, Https};
use tether_testkit::process::{indent, Proc};

mod chart;
mod report;

use report::{
    cpu_us_per_request, groups, print_results, ratios, summarize, target, Cell, Group, Pinning,
    Report, Sample, Scenario, Settings, System, WorkerPinning,
};

/// The cookie nginx hashes on (nginx variables cannot contain '-', so not `session-id`).
const NGINX_COOKIE: &str = "session";

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
          default_values_t = [Scenario::Sticky, Scenario::NewSession, Scenario::Https,
                              Scenario::H2, Scenario::TlsHandshake])]
    scenarios: Vec<Scenario>,
    /// Concurrent streams per connection in the h2 scenario (h2load -m).
    #[arg(long, default_value_t = 4)]
    h2_streams: u32,
    /// Proxy worker counts to run every cell at (tether --workers, HAProxy nbthread, nginx
    /// worker_processes): positive integers or `all` (one per CPU), e.g. `1,2,all`.
    #[arg(long, default_value = "1")]
    workers: String,
    /// CPUs for the proxy under test (taskset list), at every worker count; default 0..N-1 for
    /// N workers.
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
    /// Use the binaries already in target/release (`cargo xtask` then builds tether-bench alone).
    #[arg(long)]
    skip_build: bool,
    /// Where to write l7-*.json and l7-latest.png (default: bench/results).
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

struct Ports {
    tether: u16,
    tether_tls: u16,
    tether_admin: u16,
    haproxy: u16,
    haproxy_tls: u16,
    nginx: u16,
    nginx_tls: u16,
}

/// The one certificate every system serves on its TLS listener.
struct Certificate {
    cert: PathBuf,
    key: PathBuf,
    /// Certificate and key in one file, for HAProxy.
    combined: PathBuf,
}

struct Ctx<'a> {
    options: &'a Options,
    dir: &'a Path,
    bin: PathBuf,
    backends: Vec<SocketAddr>,
    ports: Ports,
    certificate: Certificate,
    proxy_cpus: ProxyCpus,
    load_cpus: Vec<usize>,
    /// Why tether cannot run at all (build failed, binary missing).
    tether_unavailable: Option<String>,
}

/// A system ready to take load; its process (if any) stops on drop.
struct Running {
    system: System,
    /// The proxy's worker count.
    workers: usize,
    addr: SocketAddr,
    /// The TLS listener, for systems that have one.
    tls_addr: Option<SocketAddr>,
    process: Option<Proc>,
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
    let systems = sorted_unique(&options.systems);
    let scenarios = sorted_unique(&options.scenarios);
    let workers = parse_workers(&options.workers, nproc())?;
    if scenarios.contains(&Scenario::H2) && !have_program("h2load") {
        bail!(
            "h2load is not installed (apt-get install nghttp2-client), or leave out --scenarios h2"
        );
    }
    if options.h2_streams == 0 {
        bail!("--h2-streams must be positive");
    }

    let root = built::workspace_root();
    let out_dir = summary::out_dir(options.out_dir.as_ref(), &root);
    let (bin, tether_unavailable) = proxies::binaries()?;
    let (proxy_cpus, load_cpus) = pinning(options, &workers)?;
    let machine = Machine::probe(&root);
    let (timestamp, stamp) = utc_now();
    let temp = TempDir::new("bench-l7")?;
    let dir = temp.path();

    let ports = free_ports(10)?;
    let backends: Vec<SocketAddr> = ports[..3].iter().map(|&p| loopback(p)).collect();
    let certificate = make_certificate(&bin, dir)?;
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
            tether_tls: ports[7],
            haproxy_tls: ports[8],
            nginx_tls: ports[9],
        },
        certificate,
        proxy_cpus,
        load_cpus,
        tether_unavailable,
    };

    let pinning = describe_pinning(&ctx);
    print_header(&ctx, &machine, &pinning, &scenarios, &workers);

    // Backends live for the whole run; dropping the Vec stops them, on error too.
    let _backends = start_backends(&ctx)?;

    let mut acc: BTreeMap<(System, Group), Rounds<Sample>> = BTreeMap::new();
    for round in 1..=options.rounds {
        if options.rounds > 1 {
            println!("round {round}/{}", options.rounds);
        }
        for &count in &workers {
            if workers.len() > 1 {
                println!(" {}", workers_text(count));
            }
            for system in round_order(&systems, round) {
                let runs: Vec<Group> = scenarios
                    .iter()
                    .copied()
                    .filter(|scenario| scenario.runs_on(system))
                    .map(|scenario| Group {
                        scenario,
                        workers: count,
                    })
                    .collect();
                run_system(&ctx, system, count, &runs, round, &mut acc);
            }
        }
    }

    let groups = groups(&scenarios, &workers);
    let cells: Vec<Cell> = systems
        .iter()
        .flat_map(|&sys| groups.iter().map(move |&group| (sys, group)))
        .filter(|&(sys, group)| group.scenario.runs_on(sys))
        .map(|(sys, group)| summarize(sys, group, acc.remove(&(sys, group)).unwrap_or_default()))
        .collect();
    let ratios = ratios(&cells, &groups);
    let target = target(&cells, &groups);
    let report = Report {
        bench: "l7",
        timestamp,
        settings: Settings {
            duration_s: options.duration,
            warmup_s: options.warmup,
            connections: options.connections,
            wrk_threads: options.wrk_threads,
            rounds: options.rounds,
            proxy_workers: workers.clone(),
            h2_streams: options.h2_streams,
            certificate: "one self-signed ECDSA P-256 certificate (rcgen), served by every system"
                .to_string(),
            pinning,
            backends: ctx
                .backends
                .iter()
                .enumerate()
                .map(|(i, a)| format!("pod-{} {a}", i + 1))
                .collect(),
            systems: system_descriptions(&machine, &workers),
        },
        machine,
        cells,
        ratios,
        target,
    };
    print_results(&report);
    save(&out_dir, &root, "l7", &stamp, &report, chart::draw)?;

    let failed: Vec<String> = report
        .cells
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{}/{}/{}w", c.system.name(), c.scenario.name(), c.workers))
        .collect();
    fail_unclean(&failed, "cell(s)")
}

/// The worker counts of `--workers`: positive integers or `all` (`nproc`), comma-separated;
/// ascending, each once. None may exceed the CPUs there are.
fn parse_workers(text: &str, nproc: usize) -> Result<Vec<usize>> {
    let mut counts = Vec::new();
    for part in text.split(',').map(str::trim) {
        let count = if part.eq_ignore_ascii_case("all") {
            nproc.max(1)
        } else {
            match part.parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => bail!("--workers {text}: {part:?} is not a positive integer or `all`"),
            }
        };
        if count > nproc.max(1) {
            bail!("--workers {text}: {count} workers, but this machine has {nproc} CPU(s)");
        }
        counts.push(count);
    }
    Ok(sorted_unique(&counts))
}

/// `1 worker`, `2 workers`.
fn workers_text(count: usize) -> String {
    format!("{count} worker{}", if count == 1 { "" } else { "s" })
}

/// The proxy's CPUs at `workers` workers: `--proxy-cpus` as given, else CPUs 0..workers-1
/// (none, so unpinned, on a 1-CPU machine).
fn choose_proxy_cpus(given: Option<&[usize]>, workers: usize, nproc: usize) -> Vec<usize> {
    match given {
        Some(cpus) => cpus.to_vec(),
        None if nproc >= 2 => (0..workers.min(nproc)).collect(),
        None => Vec::new(),
    }
}

/// The proxy's CPUs at each worker count (empty: unpinned).
type ProxyCpus = BTreeMap<usize, Vec<usize>>;

/// The proxy's CPUs at each worker count, and the load's CPUs (empty: unpinned).
fn pinning(options: &Options, workers: &[usize]) -> Result<(ProxyCpus, Vec<usize>)> {
    let n = nproc();
    let unpinned = || {
        let proxy = workers.iter().map(|&w| (w, Vec::new())).collect();
        Ok((proxy, Vec::new()))
    };
    if options.no_pin {
        return unpinned();
    }
    if !have_program("taskset") {
        eprintln!("warning: taskset not found (util-linux); running unpinned");
        return unpinned();
    }
    let given = options
        .proxy_cpus
        .as_deref()
        .map(parse_cpu_list)
        .transpose()?;
    let proxy: ProxyCpus = workers
        .iter()
        .map(|&w| (w, choose_proxy_cpus(given.as_deref(), w, n)))
        .collect();
    let load = match &options.load_cpus {
        Some(list) => parse_cpu_list(list)?,
        None if n >= 2 => (1..n).collect(),
        None => Vec::new(),
    };
    if let Some(cpu) = proxy.values().flatten().chain(&load).find(|&&c| c >= n) {
        bail!("CPU {cpu} does not exist here ({n} CPUs)");
    }
    Ok((proxy, load))
}

/// Where the proxy ran at each worker count, and what that means: the notes say where it
/// shared CPUs with the load (at N = all CPUs it must), or had fewer CPUs than workers.
fn describe_pinning(ctx: &Ctx) -> Pinning {
    let o = ctx.options;
    let load_what = format!(
        "wrk or h2load ({} thread(s), {} connections) + 3 tether-echo backends (1 worker each)",
        o.wrk_threads, o.connections
    );
    let where_ = |cpus: &[usize]| {
        if cpus.is_empty() {
            "unpinned".to_string()
        } else {
            format!("CPU {} (taskset -c {})", cpu_list(cpus), cpu_list(cpus))
        }
    };
    let enabled = ctx.proxy_cpus.values().any(|c| !c.is_empty()) || !ctx.load_cpus.is_empty();
    let mut by_workers = Vec::new();
    let mut notes = Vec::new();
    for (&workers, cpus) in &ctx.proxy_cpus {
        let shared: Vec<usize> = cpus
            .iter()
            .copied()
            .filter(|c| ctx.load_cpus.contains(c))
            .collect();
        if !shared.is_empty() {
            notes.push(format!(
                "at {}, the proxy (CPU {}) shares CPU {} with wrk and the backends: proxy and \
                 load compete for {}, so those cells are not the proxy's alone",
                workers_text(workers),
                cpu_list(cpus),
                cpu_list(&shared),
                if shared.len() == 1 { "it" } else { "them" }
            ));
        }
        if !cpus.is_empty() && cpus.len() < workers {
            notes.push(format!(
                "at {}, the proxy has only {} CPU(s) (CPU {})",
                workers_text(workers),
                cpus.len(),
                cpu_list(cpus)
            ));
        }
        by_workers.push(WorkerPinning {
            workers,
            proxy_cpus: cpu_list(cpus),
            shared_with_load: cpu_list(&shared),
        });
    }
    let proxies = |text: &dyn Fn(&[usize]) -> String| {
        ctx.proxy_cpus
            .iter()
            .map(|(&w, cpus)| {
                if ctx.proxy_cpus.len() == 1 {
                    text(cpus)
                } else {
                    format!("{}: {}", workers_text(w), text(cpus))
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let counts = ctx
        .proxy_cpus
        .keys()
        .map(|&w| workers_text(w))
        .collect::<Vec<_>>()
        .join(", ");
    let description = if enabled {
        let proxy = if ctx.proxy_cpus.len() == 1 {
            format!("proxy under test ({counts}) -> {}", proxies(&where_))
        } else {
            format!("proxy under test: {}", proxies(&where_))
        };
        format!("{proxy}; {load_what} -> {}", where_(&ctx.load_cpus))
    } else {
        format!(
            "nothing pinned ({} CPU(s)); proxy ({counts}), {load_what}",
            nproc()
        )
    };
    Pinning {
        enabled,
        proxy_cpus: proxies(&|cpus: &[usize]| cpu_list(cpus)),
        load_cpus: cpu_list(&ctx.load_cpus),
        description,
        by_workers,
        notes,
    }
}

fn print_header(
    ctx: &Ctx,
    machine: &Machine,
    pinning: &Pinning,
    scenarios: &[Scenario],
    workers: &[usize],
) {
    let tools = format!(
        "{} | {} | {}",
        machine
            .haproxy
            .clone()
            .unwrap_or_else(|| "haproxy: not found".into()),
        machine
            .nginx
            .clone()
            .unwrap_or_else(|| "nginx: not found".into()),
        machine.wrk.clone().unwrap_or_else(|| "?".into())
    );
    summary::print_header("l7", machine, &tools);
    println!("pinning: {}", pinning.description);
    for note in &pinning.notes {
        println!("pinning: NOTE: {note}");
    }
    println!(
        "load: {} s measured after {} s warmup per cell, {} round(s); scenarios: {}; proxy \
         workers: {}",
        ctx.options.duration,
        ctx.options.warmup,
        ctx.options.rounds,
        scenarios
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", "),
        workers
            .iter()
            .map(ToString::to_string)
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
        let command = echo_command(
            pinned(&ctx.load_cpus, ctx.bin.join("tether-echo")),
            *addr,
            &name,
        );
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
    workers: usize,
    groups: &[Group],
    round: u32,
    acc: &mut BTreeMap<(System, Group), Rounds<Sample>>,
) {
    let mut running = match start(ctx, system, workers) {
        Ok(running) => running,
        Err(error) => {
            println!(
                "  {:<8} FAILED TO START\n{}",
                system.name(),
                indent(&format!("{error:#}"))
            );
            let message = format!(
                "{} ({}) failed to start: {error:#}",
                system.name(),
                workers_text(workers)
            );
            failed_to_start(acc, system, groups, &message);
            return;
        }
    };
    for &group in groups {
        print!("  {:<8} {:<12} ", system.name(), group.scenario.name());
        let _ = std::io::stdout().flush();
        let entry = acc.entry((system, group)).or_default();
        match measure(ctx, &mut running, group.scenario, round, &mut entry.notes) {
            Ok(sample) => {
                let w = &sample.wrk;
                println!(
                    "{:>9} req/s  p50 {:>7}  p99 {:>7}  cpu: proxy {} ({}/req) load {} other {}  \
                     io {}{}",
                    thousands(w.requests_per_sec),
                    ms(w.p50_us / 1e3),
                    ms(w.p99_us / 1e3),
                    pct(sample.cpu.proxy_process_pct),
                    sample
                        .cpu_us_per_request
                        .map_or_else(|| "-".into(), |v| format!("{v:.1}us")),
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

fn start(ctx: &Ctx, system: System, workers: usize) -> Result<Running> {
    let dir = ctx.dir;
    let cpus = ctx.proxy_cpus(workers);
    let (addr, command) = match system {
        System::Direct => {
            return Ok(Running {
                system,
                workers,
                addr: ctx.backends[0],
                tls_addr: None,
                process: None,
            })
        }
        System::Tether => {
            if let Some(why) = &ctx.tether_unavailable {
                bail!("{why}");
            }
            let config = dir.join("tether.yaml");
            fs::write(
                &config,
                proxies::tether_config(
                    ctx.ports.tether,
                    ctx.ports.tether_admin,
                    &ctx.backends,
                    &format!(
                        "  tls:\n    listen: {}\n    certificates:\n      - {{certFile: {}, \
                         keyFile: {}}}\n",
                        loopback(ctx.ports.tether_tls),
                        ctx.certificate.cert.display(),
                        ctx.certificate.key.display()
                    ),
                ),
            )?;
            let command = proxies::tether(pinned(cpus, ctx.bin.join("tether")), &config, workers);
            (loopback(ctx.ports.tether), command)
        }
        System::Haproxy => {
            let config = dir.join("haproxy.cfg");
            fs::write(&config, haproxy_config(ctx, workers))?;
            let command = proxies::haproxy(pinned(cpus, "haproxy"), &config)?;
            (loopback(ctx.ports.haproxy), command)
        }
        System::Nginx => {
            if !have_program("nginx") {
                bail!("nginx is not installed (apt-get install nginx)");
            }
            let prefix = dir.join("nginx");
            fs::create_dir_all(&prefix)?;
            let config = prefix.join("nginx.conf");
            fs::write(&config, nginx_config(ctx, &prefix, workers))?;
            let mut command = pinned(cpus, "nginx");
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
    let tls_addr = loopback(match system {
        System::Tether => ctx.ports.tether_tls,
        System::Haproxy => ctx.ports.haproxy_tls,
        System::Nginx | System::Direct => ctx.ports.nginx_tls,
    });
    process.wait_ready(tls_addr, READY_TIMEOUT)?;
    Ok(Running {
        system,
        workers,
        addr,
        tls_addr: Some(tls_addr),
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
    let cookie = if scenario.sticky() {
        Some(sticky_cookie(running)?)
    } else {
        None
    };
    preflight(running, scenario, cookie.as_deref(), notes)?;
    wait_quiet(ctx.options.quiet_wait);
    let url = match (scenario.tls(), running.tls_addr) {
        (false, _) => format!("http://{}/", running.addr),
        (true, Some(tls)) => format!("https://{tls}/"),
        (true, None) => bail!("{} has no TLS listener", running.system.name()),
    };
    let tag = format!(
        "{}-{}-w{}-{round}",
        running.system.name(),
        scenario.name(),
        running.workers
    );
    let o = ctx.options;
    let measured = Duration::from_secs(o.duration);
    let warmup = Duration::from_secs(o.warmup);
    // One run of the scenario's load generator: h2load for HTTP/2, wrk for the others.
    let load = |duration: Duration, tag: &str| {
        if scenario == Scenario::H2 {
            let load = h2load::Load {
                url: &url,
                cookie: cookie.as_deref(),
                connections: o.connections,
                streams: o.h2_streams,
                threads: o.wrk_threads,
                duration,
                cpus: &ctx.load_cpus,
            };
            h2load::run(&load, ctx.dir, tag)
        } else {
            let load = Load {
                url: &url,
                cookie: cookie.as_deref(),
                close: scenario == Scenario::TlsHandshake,
                connections: o.connections,
                threads: o.wrk_threads,
                duration,
                cpus: &ctx.load_cpus,
            };
            wrk::run(&load, ctx.dir, tag)
        }
    };
    if o.warmup > 0 {
        load(warmup, &format!("{tag}-warmup")).context("warmup")?;
    }
    let before = Snapshot::take();
    let result = load(measured, &tag)?;
    let after = Snapshot::take();
    if let Some(process) = running.process.as_mut() {
        process.ensure_running()?;
    }
    let pid = running.process.as_ref().map(Proc::pid);
    let (cpu, proxy_cpu_s) = match (&before, &after) {
        (Some(b), Some(a)) => (
            Snapshot::usage(b, a, pid, ctx.proxy_cpus(running.workers), &ctx.load_cpus),
            pid.and_then(|pid| Snapshot::tree_cpu_seconds(b, a, pid)),
        ),
        _ => (Usage::default(), None),
    };
    if cpu.disturbed(QUIET_PCT) {
        notes.insert(disturbed_note(
            &format!(
                "{}/{}/{}w",
                running.system.name(),
                scenario.name(),
                running.workers
            ),
            round,
            cpu.foreign_pct,
            cpu.io_pressure_pct,
        ));
    }
    let cpu_us_per_request = cpu_us_per_request(proxy_cpu_s, result.requests);
    Ok(Sample {
        round,
        wrk: result,
        cpu,
        proxy_cpu_s,
        cpu_us_per_request,
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
            issued_cookie(&response, running.system.name(), name)
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
    if scenario.sticky() {
        let cookie = cookie.context("a sticky scenario needs a cookie")?;
        let mut pods = BTreeSet::new();
        let mut reissued = 0;
        for _ in 0..5 {
            let response = ask(running, scenario, Some(cookie))?;
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
                "{}: {name} sent Set-Cookie on {reissued} of 5 requests that carried its \
                 valid cookie",
                scenario.name()
            ));
        }
    } else {
        for _ in 0..3 {
            let response = ask(running, scenario, None)?;
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
    Ok(())
}

/// One request as the scenario makes them: plaintext, or over TLS with curl (HTTP/2 for the
/// h2 scenario, which must be what the listener negotiated).
fn ask(running: &Running, scenario: Scenario, cookie: Option<&str>) -> Result<HttpResponse> {
    let headers: Vec<(&str, &str)> = cookie.map(|c| ("Cookie", c)).into_iter().collect();
    if !scenario.tls() {
        return http_get(running.addr, "/", &headers);
    }
    let address = running
        .tls_addr
        .with_context(|| format!("{} has no TLS listener", running.system.name()))?;
    let http2 = scenario == Scenario::H2;
    let fetched = Https {
        address,
        name: None,
        path: "/",
        headers: &headers,
        http2,
        ca: None,
    }
    .get()?;
    let expected = if http2 { "HTTP/2 " } else { "HTTP/1.1 " };
    if !fetched.status_line.starts_with(expected) {
        bail!(
            "{}: {} answered {:?} over TLS, not {expected}",
            running.system.name(),
            scenario.name(),
            fetched.status_line
        );
    }
    Ok(fetched.response)
}

/// A self-signed certificate (tether-testcert, next to tether) that every system serves.
fn make_certificate(bin: &Path, dir: &Path) -> Result<Certificate> {
    let combined = dir.join("site-combined.pem");
    let (cert, key) = testcert(bin, dir, "site", "bench.example", Some(&combined))?;
    Ok(Certificate {
        cert,
        key,
        combined,
    })
}

fn haproxy_config(ctx: &Ctx, workers: usize) -> String {
    proxies::haproxy_config(&Haproxy {
        port: ctx.ports.haproxy,
        backends: &ctx.backends,
        threads: workers,
        global: "    maxconn 4096\n",
        timeouts:
            "    timeout client 30s\n    timeout server 30s\n    timeout http-keep-alive 30s\n",
        frontend: &format!(
            "    bind 127.0.0.1:{} ssl crt {} alpn h2,http/1.1\n",
            ctx.ports.haproxy_tls,
            ctx.certificate.combined.display()
        ),
    })
}

fn nginx_config(ctx: &Ctx, prefix: &Path, workers: usize) -> String {
    let p = prefix.display();
    let servers: String = ctx
        .backends
        .iter()
        .map(|a| format!("        server {a};\n"))
        .collect();
    format!(
        "daemon off;
master_process on;
worker_processes {workers};
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
        listen 127.0.0.1:{tls_port} ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            proxy_pass http://echo;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}
}}
",
        port = ctx.ports.nginx,
        tls_port = ctx.ports.nginx_tls,
        cert = ctx.certificate.cert.display(),
        key = ctx.certificate.key.display(),
    )
}

fn system_descriptions(machine: &Machine, workers: &[usize]) -> BTreeMap<String, String> {
    let version = |v: &Option<String>| v.clone().unwrap_or_else(|| "?".into());
    let n = workers
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("|");
    BTreeMap::from([
        (
            "direct".into(),
            "wrk straight to backend pod-1 (no proxy; run again with each worker count's cells)"
                .into(),
        ),
        (
            "tether".into(),
            format!(
                "target/release/tether run --workers {n}, sticky-sessions cookie \
                 {TETHER_COOKIE}; proxy.tls (rustls, ring)"
            ),
        ),
        (
            "haproxy".into(),
            format!(
                "{}; nbthread {n}, cookie {HAPROXY_COOKIE} insert indirect nocache, roundrobin; \
                 bind ssl crt alpn h2,http/1.1",
                version(&machine.haproxy)
            ),
        ),
        (
            "nginx".into(),
            format!(
                "{}; worker_processes {n}, hash $cookie_{NGINX_COOKIE} consistent, upstream \
                 keepalive 64; listen ssl http2",
                version(&machine.nginx)
            ),
        ),
    ])
}

impl Ctx<'_> {
    /// The proxy's CPUs at `workers` workers (empty: unpinned).
    fn proxy_cpus(&self, workers: usize) -> &[usize] {
        self.proxy_cpus.get(&workers).map_or(&[], Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_lists_resolve_all_and_dedupe() -> Result<()> {
        assert_eq!(parse_workers("1", 2)?, vec![1]);
        assert_eq!(parse_workers("1,2,all", 2)?, vec![1, 2]);
        assert_eq!(parse_workers("all,1", 4)?, vec![1, 4]);
        assert_eq!(parse_workers(" 2 , 1,2,ALL", 8)?, vec![1, 2, 8]);
        assert_eq!(parse_workers("all", 1)?, vec![1]);
        for bad in ["0", "-1", "x", "", "1,", "1.5", "3"] {
            assert!(parse_workers(bad, 2).is_err(), "{bad:?} parsed");
        }
        Ok(())
    }

    #[test]
    fn proxy_cpus_follow_the_worker_count_unless_given() {
        assert_eq!(choose_proxy_cpus(None, 1, 2), vec![0]);
        assert_eq!(choose_proxy_cpus(None, 2, 2), vec![0, 1]);
        assert_eq!(choose_proxy_cpus(None, 3, 8), vec![0, 1, 2]);
        assert_eq!(choose_proxy_cpus(None, 1, 1), Vec::<usize>::new());
        assert_eq!(choose_proxy_cpus(Some(&[2, 3]), 1, 4), vec![2, 3]);
        assert_eq!(choose_proxy_cpus(Some(&[2]), 4, 4), vec![2]);
        assert_eq!(workers_text(1), "1 worker");
        assert_eq!(workers_text(2), "2 workers");
    }
}
