//! `cargo xtask bench l7`: tether against HAProxy and nginx (and no proxy at all), side by side
//! in one run, against the same three `tether-echo` backends, loaded by `wrk`.
//!
//! Each proxy gets one worker thread pinned to its own CPU; the load generator and the backends
//! share the other CPU(s). Scenarios: `sticky` (every request carries a valid session cookie)
//! and `new-session` (no cookie, so every request makes a new pin and gets a `Set-Cookie`) over
//! plaintext HTTP/1.1; then over each proxy's TLS listener (one self-signed ECDSA P-256
//! certificate for all, TLS 1.2 and 1.3, ALPN h2 and http/1.1): `https` (HTTP/1.1 keep-alive),
//! `h2` (HTTP/2, loaded by h2load) and `tls-handshake` (a new connection and full handshake per
//! request). The bare backend (`direct`) runs the plaintext scenarios only.
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
    print_results, ratios, summarize, target, Cell, Pinning, Report, Sample, Scenario, Settings,
    System,
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
    proxy_cpus: Vec<usize>,
    load_cpus: Vec<usize>,
    /// Why tether cannot run at all (build failed, binary missing).
    tether_unavailable: Option<String>,
}

/// A system ready to take load; its process (if any) stops on drop.
struct Running {
    system: System,
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
    let (proxy_cpus, load_cpus) = pinning(options)?;
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
    print_header(&ctx, &machine, &pinning.description, &scenarios);

    // Backends live for the whole run; dropping the Vec stops them, on error too.
    let _backends = start_backends(&ctx)?;

    let mut acc: BTreeMap<(System, Scenario), Rounds<Sample>> = BTreeMap::new();
    for round in 1..=options.rounds {
        if options.rounds > 1 {
            println!("round {round}/{}", options.rounds);
        }
        for system in round_order(&systems, round) {
            let runs: Vec<Scenario> = scenarios
                .iter()
                .copied()
                .filter(|scenario| scenario.runs_on(system))
                .collect();
            run_system(&ctx, system, &runs, round, &mut acc);
        }
    }

    let cells: Vec<Cell> = systems
        .iter()
        .flat_map(|&sys| scenarios.iter().map(move |&sc| (sys, sc)))
        .filter(|&(sys, sc)| sc.runs_on(sys))
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
            systems: system_descriptions(&machine),
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
        .map(|c| format!("{}/{}", c.system.name(), c.scenario.name()))
        .collect();
    fail_unclean(&failed, "cell(s)")
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
    scenarios: &[Scenario],
    round: u32,
    acc: &mut BTreeMap<(System, Scenario), Rounds<Sample>>,
) {
    let mut running = match start(ctx, system) {
        Ok(running) => running,
        Err(error) => {
            println!(
                "  {:<8} FAILED TO START\n{}",
                system.name(),
                indent(&format!("{error:#}"))
            );
            let message = format!("{} failed to start: {error:#}", system.name());
            failed_to_start(acc, system, scenarios, &message);
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
            let command = proxies::tether(pinned(&ctx.proxy_cpus, ctx.bin.join("tether")), &config);
            (loopback(ctx.ports.tether), command)
        }
        System::Haproxy => {
            let config = dir.join("haproxy.cfg");
            fs::write(&config, haproxy_config(ctx))?;
            let command = proxies::haproxy(pinned(&ctx.proxy_cpus, "haproxy"), &config)?;
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
    let tls_addr = loopback(match system {
        System::Tether => ctx.ports.tether_tls,
        System::Haproxy => ctx.ports.haproxy_tls,
        System::Nginx | System::Direct => ctx.ports.nginx_tls,
    });
    process.wait_ready(tls_addr, READY_TIMEOUT)?;
    Ok(Running {
        system,
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
    let tag = format!("{}-{}-{round}", running.system.name(), scenario.name());
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
        notes.insert(disturbed_note(
            &format!("{}/{}", running.system.name(), scenario.name()),
            round,
            cpu.foreign_pct,
            cpu.io_pressure_pct,
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

fn haproxy_config(ctx: &Ctx) -> String {
    proxies::haproxy_config(&Haproxy {
        port: ctx.ports.haproxy,
        backends: &ctx.backends,
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

fn system_descriptions(machine: &Machine) -> BTreeMap<String, String> {
    let version = |v: &Option<String>| v.clone().unwrap_or_else(|| "?".into());
    BTreeMap::from([
        ("direct".into(), "wrk straight to backend pod-1".into()),
        (
            "tether".into(),
            format!(
                "target/release/tether run --workers 1, sticky-sessions cookie {TETHER_COOKIE}; \
                 proxy.tls (rustls, ring)"
            ),
        ),
        (
            "haproxy".into(),
            format!(
                "{}; nbthread 1, cookie {HAPROXY_COOKIE} insert indirect nocache, roundrobin; \
                 bind ssl crt alpn h2,http/1.1",
                version(&machine.haproxy)
            ),
        ),
        (
            "nginx".into(),
            format!(
                "{}; worker_processes 1, hash $cookie_{NGINX_COOKIE} consistent, upstream \
                 keepalive 64; listen ssl http2",
                version(&machine.nginx)
            ),
        ),
    ])
}
