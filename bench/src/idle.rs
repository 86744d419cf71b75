//! `cargo xtask bench idle`: what one idle keep-alive client connection costs a proxy in memory,
//! tether and HAProxy side by side (issue 11, item 8).
//!
//! Per cell (system x N) a fresh echo backend and a fresh proxy (one worker thread each): RSS after
//! a warm-up; then N client connections each send one complete keep-alive request with the
//! system's sticky cookie, read the whole response and stay open, idle; RSS once it settles.
//! (RSS_N - RSS_0) / N is the cost of one idle connection after a request, the state that matters
//! (a connection that never sent anything is cheaper). `baseline` has no proxy: the clients talk
//! to the echo backend itself, a bare hyper server. Every cell also records the bench's own RSS
//! (the client side's cost), which is not part of any system's number.
use crate::built;
use crate::machine::{utc_now, Machine};
use crate::proxies::{
    self, expect_2xx, issued_cookie, Haproxy, HAPROXY_COOKIE, READY_TIMEOUT, SYNTHETIC_SESSION,
    TETHER_COOKIE,
};
use crate::summary::{self, fail_unclean, first_line, save, sorted_unique, thousands};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tether_testkit::binaries::echo_command;
use tether_testkit::fs::TempDir;
use tether_testkit::net::{free_ports, http_get, parse_response};
use tether_testkit::process::{indent, Proc};

mod chart;
mod report;

use report::{
    print_cell_line, print_results, ratios, target, Cell, Report, Settings, System,
    TETHER_MAX_CONNECTIONS,
};

/// Open files for the bench and, inherited, everything it starts: N client sockets here, N (or
/// 2N, with a backend connection each) in the proxy.
const NOFILE: u64 = 200_000;
/// Open files a cell needs beyond its N connections (listeners, logs, pools, the runtime).
const FD_MARGIN: usize = 200;
/// Connections per client source address: well under the ~28k ephemeral ports that one (source,
/// destination) pair has.
const PER_SOURCE: usize = 10_000;
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// RSS counts as settled when this many consecutive samples (1 s) agree.
const STABLE_SAMPLES: usize = 5;
const SETTLE_LIMIT: Duration = Duration::from_secs(20);
/// Bound on opening one cell's connections.
const OPEN_LIMIT: Duration = Duration::from_secs(180);
/// Tries per client connection (connect, request, response).
const ATTEMPTS: u32 = 3;
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Warm-up requests before RSS_0.
const WARMUP_REQUESTS: usize = 20;

#[derive(clap::Args)]
pub struct Options {
    /// Idle client connections per cell.
    #[arg(long, value_delimiter = ',', default_values_t = [10_000, 50_000])]
    connections: Vec<usize>,
    /// Systems to run.
    #[arg(long, value_enum, value_delimiter = ',',
          default_values_t = [System::Baseline, System::Tether, System::Haproxy])]
    systems: Vec<System>,
    /// Client connections opened in parallel.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Use the binaries already in target/release (`cargo xtask` then builds tether-bench alone).
    #[arg(long)]
    skip_build: bool,
    /// Where to write idle-*.json and idle-latest.png (default: bench/results).
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

struct Ctx<'a> {
    options: &'a Options,
    dir: &'a Path,
    bin: PathBuf,
    tether_unavailable: Option<String>,
    /// Whether tether's config gets `proxy.maxConnections`.
    tether_max_connections: bool,
    /// RLIMIT_NOFILE of the bench and everything it starts.
    nofile: u64,
    /// Why it is below [`NOFILE`], if it is.
    nofile_note: Option<String>,
}

/// A system ready to hold connections; its processes stop on drop, the proxy first.
struct Running {
    addr: SocketAddrV4,
    cookie: String,
    measured_pid: u32,
    measured: String,
    proxy: Option<Proc>,
    backend: Proc,
}

impl Running {
    fn ensure_running(&mut self) -> Result<()> {
        if let Some(proxy) = self.proxy.as_mut() {
            proxy.ensure_running()?;
        }
        self.backend.ensure_running()
    }
}

pub fn run(options: &Options) -> Result<()> {
    let mut counts = options.connections.clone();
    counts.dedup();
    if counts.is_empty() || counts.contains(&0) || options.concurrency == 0 {
        bail!("--connections and --concurrency must be positive");
    }
    let systems = sorted_unique(&options.systems);
    if systems.is_empty() {
        bail!("nothing to run");
    }
    let (nofile, nofile_note) = raise_nofile()?;

    let root = built::workspace_root();
    let out_dir = summary::out_dir(options.out_dir.as_ref(), &root);
    let (bin, mut tether_unavailable) = proxies::binaries()?;
    let machine = Machine::probe(&root);
    let (timestamp, stamp) = utc_now();
    let temp = TempDir::new("bench-idle")?;
    let dir = temp.path();

    let mut max_connections_note = "not applicable (tether not run)".to_string();
    let mut tether_max_connections = false;
    if systems.contains(&System::Tether) && tether_unavailable.is_none() {
        match probe_max_connections(&bin, dir) {
            Ok((accepted, note)) => {
                tether_max_connections = accepted;
                max_connections_note = note;
            }
            Err(error) => tether_unavailable = Some(format!("{error:#}")),
        }
    }
    let ctx = Ctx {
        options,
        dir,
        bin,
        tether_unavailable,
        tether_max_connections,
        nofile,
        nofile_note: nofile_note.clone(),
    };
    print_header(&ctx, &machine, &counts, &max_connections_note);

    let mut cells = Vec::new();
    for &n in &counts {
        for &system in &systems {
            print!("  {:<8} {:>7} ", system.name(), thousands(n as f64));
            let _ = std::io::stdout().flush();
            let cell = run_cell(&ctx, system, n);
            print_cell_line(&cell);
            cells.push(cell);
        }
    }

    let ratios = ratios(&cells, &counts);
    let target = target(&cells, &counts);
    let report = Report {
        bench: "idle",
        timestamp,
        settings: Settings {
            connections: counts.clone(),
            concurrency: options.concurrency,
            connections_per_source_address: PER_SOURCE,
            nofile,
            nofile_note,
            proxy_workers: 1,
            tether_max_connections: max_connections_note,
            systems: system_descriptions(&machine),
            method: "per cell a fresh backend and system; RSS (VmRSS) after 20 warm-up requests \
                     and once settled (5 samples 200 ms apart within 64 KiB or 0.5%); then N \
                     connections each send one keep-alive GET / with the sticky cookie, read the \
                     response and stay idle; RSS once settled again; (after - before) / N"
                .into(),
        },
        machine,
        cells,
        ratios,
        target,
    };
    print_results(&report);
    save(&out_dir, &root, "idle", &stamp, &report, chart::draw)?;

    let failed: Vec<String> = report
        .cells
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{}/{}", c.system.name(), c.connections))
        .collect();
    fail_unclean(&failed, "cell(s)")
}

/// Raises RLIMIT_NOFILE (soft and, as root, hard) towards [`NOFILE`]; children inherit it.
/// Returns the limit, and why it is lower when it is.
fn raise_nofile() -> Result<(u64, Option<String>)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    let nr_open = fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(NOFILE);
    let want = NOFILE.min(nr_open);
    if limit.rlim_cur >= want {
        return Ok((limit.rlim_cur, None));
    }
    let raised = libc::rlimit {
        rlim_cur: want,
        rlim_max: limit.rlim_max.max(want),
    };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        return Ok((want, None));
    }
    let why = format!(
        "the hard limit is {} and this process may not raise it: {} (raising it needs \
         CAP_SYS_RESOURCE, which containers often drop)",
        limit.rlim_max,
        io::Error::last_os_error()
    );
    // Without the capability the soft limit can still go up to the hard one.
    let soft = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) } == 0 {
        return Ok((limit.rlim_max, Some(why)));
    }
    Ok((limit.rlim_cur, Some(why)))
}

/// Whether `tether check` accepts `proxy.maxConnections` (the field lands separately); a config
/// that fails for any other reason is an error.
fn probe_max_connections(bin: &Path, dir: &Path) -> Result<(bool, String)> {
    let path = dir.join("probe.yaml");
    let check = |with: bool| -> Result<(bool, String)> {
        fs::write(&path, tether_config(1, 2, "127.0.0.1:3".parse()?, with))?;
        let output = Command::new(bin.join("tether"))
            .arg("check")
            .arg("--config")
            .arg(&path)
            .output()
            .context("cannot run tether check")?;
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        Ok((output.status.success(), text))
    };
    let (accepted, text) = check(true)?;
    if accepted {
        return Ok((
            true,
            format!("proxy.maxConnections: {TETHER_MAX_CONNECTIONS} (accepted by tether check)"),
        ));
    }
    let (plain, plain_text) = check(false)?;
    if !plain {
        bail!(
            "tether check rejects the bench's config:\n{}",
            indent(&plain_text)
        );
    }
    let line = text.lines().next().unwrap_or_default();
    let why = line
        .find("proxy.maxConnections")
        .map_or(line, |at| &line[at..]);
    let why = why.split(", expected").next().unwrap_or(why);
    Ok((
        false,
        format!("proxy.maxConnections omitted (tether check: {why}): this tether has no cap"),
    ))
}

fn print_header(ctx: &Ctx, machine: &Machine, counts: &[usize], max_conns: &str) {
    let haproxy = machine.haproxy.as_deref().unwrap_or("haproxy: not found");
    summary::print_header("idle", machine, haproxy);
    println!(
        "idle connections per cell: {}; {} opened in parallel, {PER_SOURCE} per source address \
         (127.0.0.2, ...); RLIMIT_NOFILE {}",
        counts
            .iter()
            .map(|&n| thousands(n as f64))
            .collect::<Vec<_>>()
            .join(", "),
        ctx.options.concurrency,
        ctx.nofile
    );
    if let Some(note) = &ctx.nofile_note {
        println!("RLIMIT_NOFILE is below {NOFILE}: {note}");
    }
    println!("tether: {max_conns}");
    if let Some(why) = &ctx.tether_unavailable {
        println!("tether: UNAVAILABLE: {why}");
    }
    println!();
}

fn run_cell(ctx: &Ctx, system: System, n: usize) -> Cell {
    let mut cell = Cell {
        system,
        connections: n,
        ok: false,
        skipped: false,
        error: None,
        notes: Vec::new(),
        measured: String::new(),
        opened: 0,
        failed: 0,
        retried: 0,
        closed_by_peer: 0,
        source_addresses: n.div_ceil(PER_SOURCE),
        open_seconds: 0.0,
        rss_before: 0,
        rss_after: 0,
        bytes_per_connection: None,
        settled: false,
        settle_seconds: 0.0,
        fds_before: 0,
        fds_after: 0,
        client_rss_before: 0,
        client_rss_after: 0,
        client_bytes_per_connection: None,
        kernel_tcp_mem_before: None,
        kernel_tcp_mem_after: None,
    };
    if (ctx.nofile as usize) < n + FD_MARGIN {
        cell.skipped = true;
        cell.error = Some(format!(
            "skipped: {n} connections need about {} open files in the proxy and in this bench, \
             and RLIMIT_NOFILE is {}{}",
            n + FD_MARGIN,
            ctx.nofile,
            ctx.nofile_note
                .as_deref()
                .map(|note| format!(" ({note})"))
                .unwrap_or_default()
        ));
    } else if let Err(error) = measure(ctx, system, n, &mut cell) {
        cell.error = Some(format!("{error:#}"));
    }
    cell.ok = cell.error.is_none();
    cell
}

fn measure(ctx: &Ctx, system: System, n: usize, cell: &mut Cell) -> Result<()> {
    let mut running = start(ctx, system, n)?;
    cell.measured = running.measured.clone();
    let pid = running.measured_pid;
    for _ in 0..WARMUP_REQUESTS {
        let response = http_get(
            SocketAddr::V4(running.addr),
            "/",
            &[("Cookie", &running.cookie)],
        )?;
        expect_2xx(&response, system.name())?;
        if response.header("x-pod") != Some("pod-1") {
            bail!(
                "{} answered from {:?}, not pod-1",
                system.name(),
                response.header("x-pod")
            );
        }
    }

    let (before, settled, _) = settle(pid)?;
    if !settled {
        cell.notes
            .push("RSS before did not settle within 20 s".into());
    }
    cell.rss_before = before;
    cell.fds_before = fd_count(pid)?;
    cell.client_rss_before = rss(None)?;
    cell.kernel_tcp_mem_before = kernel_tcp_mem();

    let sources: Vec<Ipv4Addr> = (0..cell.source_addresses)
        .map(|i| Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 2)) + i as u32))
        .collect();
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nCookie: {}\r\n\r\n",
        running.addr, running.cookie
    );
    let opened = open_idle(
        running.addr,
        request.as_bytes(),
        n,
        ctx.options.concurrency,
        &sources,
    );
    cell.opened = opened.streams.len();
    cell.failed = opened.failed;
    cell.retried = opened.retried;
    cell.open_seconds = opened.elapsed.as_secs_f64();
    running.ensure_running()?;

    let (after, settled, waited) = settle(pid)?;
    cell.rss_after = after;
    cell.settled = settled;
    cell.settle_seconds = waited.as_secs_f64();
    if !settled {
        cell.notes.push(format!(
            "RSS after did not settle within {} s (last sample taken)",
            SETTLE_LIMIT.as_secs()
        ));
    }
    cell.fds_after = fd_count(pid)?;
    cell.client_rss_after = rss(None)?;
    cell.kernel_tcp_mem_after = kernel_tcp_mem();
    cell.closed_by_peer = closed_count(&opened.streams);
    running.ensure_running()?;

    if cell.opened > 0 {
        let per = |a: u64, b: u64| (a as f64 - b as f64) / cell.opened as f64;
        cell.bytes_per_connection = Some(per(cell.rss_after, cell.rss_before));
        cell.client_bytes_per_connection = Some(per(cell.client_rss_after, cell.client_rss_before));
    }
    close_all(opened.streams);

    let mut problems = Vec::new();
    if cell.failed > 0 {
        let reasons: Vec<String> = opened
            .errors
            .iter()
            .map(|(reason, count)| format!("{count}x {reason}"))
            .collect();
        problems.push(format!(
            "{} of {n} connections failed: {}",
            cell.failed,
            reasons.join("; ")
        ));
    }
    if cell.closed_by_peer > 0 {
        problems.push(format!(
            "{} connections were closed by {} before RSS was taken",
            cell.closed_by_peer,
            system.name()
        ));
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(())
}

fn start(ctx: &Ctx, system: System, n: usize) -> Result<Running> {
    let ports = free_ports(3)?;
    let backend_addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, ports[0]);
    let tag = format!("{}-{n}", system.name());
    let command = echo_command(
        Command::new(ctx.bin.join("tether-echo")),
        SocketAddr::V4(backend_addr),
        "pod-1",
    );
    let mut backend = Proc::spawn("pod-1", command, ctx.dir.join(format!("{tag}-pod-1.log")))?;
    backend.wait_ready(SocketAddr::V4(backend_addr), READY_TIMEOUT)?;

    let (addr, command, cookie_name) = match system {
        System::Baseline => {
            return Ok(Running {
                addr: backend_addr,
                cookie: format!("{TETHER_COOKIE}={SYNTHETIC_SESSION}"),
                measured_pid: backend.pid(),
                measured: "tether-echo (the backend; no proxy)".into(),
                proxy: None,
                backend,
            });
        }
        System::Tether => {
            if let Some(why) = &ctx.tether_unavailable {
                bail!("{why}");
            }
            let config = ctx.dir.join(format!("{tag}.yaml"));
            fs::write(
                &config,
                tether_config(ports[1], ports[2], backend_addr, ctx.tether_max_connections),
            )?;
            let command = proxies::tether(Command::new(ctx.bin.join("tether")), &config, 1);
            (ports[1], command, TETHER_COOKIE)
        }
        System::Haproxy => {
            let config = ctx.dir.join(format!("{tag}.cfg"));
            fs::write(&config, haproxy_config(ports[1], backend_addr, n))?;
            let command = proxies::haproxy(Command::new("haproxy"), &config)?;
            (ports[1], command, HAPROXY_COOKIE)
        }
    };
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, addr);
    let mut proxy = Proc::spawn(system.name(), command, ctx.dir.join(format!("{tag}.log")))?;
    proxy.wait_ready(SocketAddr::V4(addr), READY_TIMEOUT)?;
    let response = http_get(SocketAddr::V4(addr), "/", &[])?;
    expect_2xx(&response, system.name())?;
    let cookie = issued_cookie(&response, system.name(), cookie_name)?;
    Ok(Running {
        addr,
        cookie,
        measured_pid: proxy.pid(),
        measured: format!("{} (--workers 1 / nbthread 1)", system.name()),
        proxy: Some(proxy),
        backend,
    })
}

fn tether_config(port: u16, admin: u16, backend: SocketAddrV4, max_connections: bool) -> String {
    let cap = if max_connections {
        format!("  maxConnections: {TETHER_MAX_CONNECTIONS}\n")
    } else {
        String::new()
    };
    // headerRead also ends idle keep-alive connections: 5m keeps them through the measurement.
    let proxy = format!("{cap}  timeouts:\n    headerRead: 5m\n");
    proxies::tether_config(port, admin, &[SocketAddr::V4(backend)], &proxy)
}

/// As in `bench l7` (cookie insert, http-reuse safe), with room for the connections and
/// timeouts long enough that idle ones stay open while measured.
fn haproxy_config(port: u16, backend: SocketAddrV4, n: usize) -> String {
    // HAProxy reserves two fds per maxconn and, by default, refuses to start when it cannot
    // raise RLIMIT_NOFILE that far; what it really uses is counted (fds) instead.
    let maxconn = n + 1000;
    proxies::haproxy_config(&Haproxy {
        port,
        backends: &[SocketAddr::V4(backend)],
        threads: 1,
        global: &format!("    maxconn {maxconn}\n    no strict-limits\n"),
        timeouts: "    timeout client 5m\n    timeout server 5m\n    timeout http-request 5m\n    \
                   timeout http-keep-alive 5m\n",
        frontend: &format!("    maxconn {maxconn}\n"),
    })
}

fn system_descriptions(machine: &Machine) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "baseline".into(),
            "no proxy: the clients talk to the tether-echo backend (hyper, --workers 1), whose \
             RSS is counted"
                .into(),
        ),
        (
            "tether".into(),
            format!(
                "target/release/tether run --workers 1, sticky-sessions cookie {TETHER_COOKIE}, \
                 proxy.timeouts.headerRead 5m"
            ),
        ),
        (
            "haproxy".into(),
            format!(
                "{}; nbthread 1, maxconn N + 1000, no strict-limits, cookie {HAPROXY_COOKIE} insert indirect \
                 nocache, http-reuse safe, timeouts client/http-request/http-keep-alive 5m",
                machine.haproxy.clone().unwrap_or_else(|| "?".into())
            ),
        ),
    ])
}

/// The client connections of one cell.
struct Opened {
    streams: Vec<TcpStream>,
    failed: usize,
    retried: usize,
    /// Why connections failed, with counts.
    errors: BTreeMap<String, usize>,
    elapsed: Duration,
}

/// Opens `n` connections to `addr`, `concurrency` at a time, each sending `request` and reading
/// the whole response; the ones that succeed are returned open and idle.
fn open_idle(
    addr: SocketAddrV4,
    request: &[u8],
    n: usize,
    concurrency: usize,
    sources: &[Ipv4Addr],
) -> Opened {
    let started = Instant::now();
    let deadline = started + OPEN_LIMIT;
    let next = AtomicUsize::new(0);
    let mut opened = Opened {
        streams: Vec::with_capacity(n),
        failed: 0,
        retried: 0,
        errors: BTreeMap::new(),
        elapsed: Duration::ZERO,
    };
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..concurrency.min(n))
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Opened {
                        streams: Vec::new(),
                        failed: 0,
                        retried: 0,
                        errors: BTreeMap::new(),
                        elapsed: Duration::ZERO,
                    };
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        if Instant::now() >= deadline {
                            mine.failed += 1;
                            *mine
                                .errors
                                .entry("not opened: the open phase ran out of time".into())
                                .or_default() += 1;
                            continue;
                        }
                        let source = sources[i % sources.len()];
                        for attempt in 1..=ATTEMPTS {
                            match one_request(source, addr, request) {
                                Ok(stream) => {
                                    mine.streams.push(stream);
                                    break;
                                }
                                Err(_) if attempt < ATTEMPTS => {
                                    mine.retried += 1;
                                    std::thread::sleep(Duration::from_millis(
                                        50 * u64::from(attempt),
                                    ));
                                }
                                Err(error) => {
                                    mine.failed += 1;
                                    *mine
                                        .errors
                                        .entry(first_line(&format!("{error:#}")))
                                        .or_default() += 1;
                                }
                            }
                        }
                    }
                    mine
                })
            })
            .collect();
        for worker in workers {
            match worker.join() {
                Ok(mine) => {
                    opened.streams.extend(mine.streams);
                    opened.failed += mine.failed;
                    opened.retried += mine.retried;
                    for (reason, count) in mine.errors {
                        *opened.errors.entry(reason).or_default() += count;
                    }
                }
                Err(_) => {
                    *opened
                        .errors
                        .entry("an opener thread panicked".into())
                        .or_default() += 1;
                }
            }
        }
    });
    // Whatever a panicked opener was holding is gone; count it as failed.
    opened.failed = opened.failed.max(n - opened.streams.len());
    opened.elapsed = started.elapsed();
    opened
}

/// One connection from `source`: one keep-alive request, its whole response, then left open.
fn one_request(source: Ipv4Addr, addr: SocketAddrV4, request: &[u8]) -> Result<TcpStream> {
    let mut stream =
        connect_from(source, addr).with_context(|| format!("connect from {source}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(request).context("sending the request")?;
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(response) = parse_response(&buffer, false)? {
            if !(200..300).contains(&response.status) {
                bail!("answered {}", response.status);
            }
            return Ok(stream);
        }
        let n = stream.read(&mut chunk).context("reading the response")?;
        if n == 0 {
            bail!("closed before a full response");
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn setsockopt<T>(fd: &OwnedFd, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: value points to a live T and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A TCP connection from `source` (any loopback address) to `addr`, bounded to 5 s.
fn connect_from(source: Ipv4Addr, addr: SocketAddrV4) -> io::Result<TcpStream> {
    // SAFETY: socket(2) with constant arguments; the descriptor is owned right below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // The port is picked at connect(), per (source, destination); bind() alone would reserve it
    // against every destination and run out sooner.
    setsockopt(
        &socket,
        libc::IPPROTO_IP,
        libc::IP_BIND_ADDRESS_NO_PORT,
        &(1 as libc::c_int),
    )?;
    // Linux's connect() honours SO_SNDTIMEO: a full accept queue cannot stall an opener for long.
    let timeout = libc::timeval {
        tv_sec: 5,
        tv_usec: 0,
    };
    setsockopt(&socket, libc::SOL_SOCKET, libc::SO_SNDTIMEO, &timeout)?;
    let local = sockaddr(SocketAddrV4::new(source, 0));
    let remote = sockaddr(addr);
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: local is a valid sockaddr_in of the length given.
    if unsafe { libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: remote is a valid sockaddr_in of the length given.
    if unsafe { libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TcpStream::from(socket))
}

/// Connections that are readable (EOF, a reset, or bytes nobody asked for): no longer idle.
fn closed_count(streams: &[TcpStream]) -> usize {
    let mut fds: Vec<libc::pollfd> = streams
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN | libc::POLLRDHUP,
            revents: 0,
        })
        .collect();
    // SAFETY: fds is a valid array of pollfd of the length given; timeout 0 does not block.
    let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
    if ready < 0 {
        return 0;
    }
    fds.iter().filter(|p| p.revents != 0).count()
}

/// Closes with a reset (SO_LINGER 0): no TIME_WAIT left on the ports the next cell uses, and the
/// system frees each connection at once.
fn close_all(streams: Vec<TcpStream>) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    for stream in streams {
        let fd = OwnedFd::from(stream);
        let _ = setsockopt(&fd, libc::SOL_SOCKET, libc::SO_LINGER, &linger);
    }
}

/// VmRSS in bytes of `pid`, or of this process.
fn rss(pid: Option<u32>) -> Result<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".into(),
    };
    let status = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .with_context(|| format!("no VmRSS in {path}"))
}

fn fd_count(pid: u32) -> Result<usize> {
    let path = format!("/proc/{pid}/fd");
    Ok(fs::read_dir(&path)
        .with_context(|| format!("cannot list {path}"))?
        .count())
}

/// TCP socket memory of the machine, bytes ("TCP: ... mem PAGES" in /proc/net/sockstat).
fn kernel_tcp_mem() -> Option<u64> {
    let text = fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let pages: u64 = words
        .windows(2)
        .find(|w| w[0] == "mem")
        .and_then(|w| w[1].parse().ok())?;
    // SAFETY: sysconf has no memory effects.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// Samples RSS every 200 ms until [`STABLE_SAMPLES`] in a row agree (bounded by
/// [`SETTLE_LIMIT`]); returns the last sample, whether it settled and how long it took.
fn settle(pid: u32) -> Result<(u64, bool, Duration)> {
    let started = Instant::now();
    let mut window = VecDeque::new();
    loop {
        let sample = rss(Some(pid))?;
        window.push_back(sample);
        if window.len() > STABLE_SAMPLES {
            window.pop_front();
        }
        if window.len() == STABLE_SAMPLES {
            let high = window.iter().copied().max().unwrap_or(0);
            let low = window.iter().copied().min().unwrap_or(0);
            if high - low <= (64 * 1024).max(high / 200) {
                return Ok((sample, true, started.elapsed()));
            }
        }
        if started.elapsed() >= SETTLE_LIMIT {
            return Ok((sample, false, started.elapsed()));
        }
        std::thread::sleep(SAMPLE_EVERY);
    }
}
