//! `cargo xtask soak --minutes N`: mixed traffic through a real tether while its targets churn,
//! on 127.0.0.1 only. It samples tether's RSS and fds every second, counts outcomes by kind,
//! and fails on an unexplained 5xx, a lost session or a clearly growing RSS/fd count.
//!
//! - traffic (tokio tasks, raw sockets): [`traffic`];
//! - churn (a thread: drain, remove, kill, rewrite, SIGHUP): [`churn`];
//! - what each event explains: [`world`]; counters: [`stats`]; RSS/fds: [`sample`];
//! - output (table, JSON, PNG, markdown): [`report`], [`chart`].
use crate::built;
use crate::chart::{dirty, short_commit};
use crate::machine::{utc_now, Machine};
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use tether_testkit::binaries::{start_echo, tether_command};
use tether_testkit::fs::{write_atomically, TempDir};
use tether_testkit::net::{free_ports, loopback};
use tether_testkit::process::Proc;

mod chart;
mod churn;
mod client;
mod report;
mod sample;
mod stats;
mod traffic;
mod world;

use traffic::{Ctx, Session};
use world::{Target, World};

const TARGETS: usize = 4;
/// Sticky keep-alive workers, and sessions each one cycles through.
const STICKY_WORKERS: usize = 8;
const SESSIONS_PER_WORKER: usize = 4;
/// The longest the traffic tasks get to wind down after the deadline.
const WIND_DOWN: Duration = Duration::from_secs(25);

#[derive(clap::Args)]
pub struct Options {
    /// How long the traffic runs (fractions allowed: 0.5 = 30 s).
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Use the binaries already in target/release (`cargo xtask` then builds tether-bench alone).
    #[arg(long)]
    skip_build: bool,
    /// tether's proxy threads (default: tether's own, one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Where to write soak-*.json, soak-latest.png and soak-latest.md (default: bench/results).
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

pub fn run(options: &Options) -> Result<()> {
    ensure!(
        options.minutes > 0.0 && options.minutes <= 24.0 * 60.0,
        "--minutes must be in (0, 1440]"
    );
    let root = built::workspace_root();
    let bin = built::bin_dir();
    for name in ["tether", "tether-echo"] {
        ensure!(
            bin.join(name).is_file(),
            "{} is missing",
            bin.join(name).display()
        );
    }
    let out_dir = options
        .out_dir
        .clone()
        .unwrap_or_else(|| root.join("bench/results"));
    let machine = Machine::probe(&root);
    let (timestamp, stamp) = utc_now();

    let scratch = TempDir::new("soak")?;
    let ports = free_ports(2 + TARGETS)?;
    let (proxy, admin) = (loopback(ports[0]), loopback(ports[1]));
    let targets: Vec<Target> = (0..TARGETS)
        .map(|i| Target {
            name: format!("pod-{}", i + 1),
            address: loopback(ports[2 + i]),
            weight: 100,
            present: true,
            absent: Vec::new(),
            removed: Vec::new(),
            killed: Vec::new(),
            draining: Vec::new(),
        })
        .collect();
    let mut backends = Vec::new();
    for target in &targets {
        backends.push(Some(start_echo(
            &bin,
            scratch.path(),
            &target.name,
            target.address,
        )?));
    }
    let config = scratch.path().join("tether.yaml");
    write_atomically(
        &config,
        &world::config_yaml(proxy, admin, traffic::COOKIE, &targets, 0),
    )?;
    let mut command = tether_command(Command::new(bin.join("tether")), &config);
    command
        .arg("--session-key")
        .arg(scratch.path().join("session.key"));
    if let Some(workers) = options.workers {
        command.args(["--workers", &workers.to_string()]);
    }
    let mut tether = Proc::spawn("tether", command, scratch.path().join("tether.log"))?;
    tether.wait_ready(proxy, Duration::from_secs(10))?;
    tether.wait_ready(admin, Duration::from_secs(10))?;
    let idle_before = sample::read(tether.pid());

    let duration = Duration::from_secs_f64(options.minutes * 60.0);
    let churn_interval = (duration / 30).clamp(Duration::from_millis(1500), Duration::from_secs(8));
    println!(
        "soak: {:.1} min of mixed traffic through tether (pid {}) on {proxy}, {TARGETS} echo \
         backends, churn every {:.1} s",
        options.minutes,
        tether.pid(),
        churn_interval.as_secs_f64()
    );

    let start = Instant::now();
    let world = Arc::new(World::new(start, targets));
    let stats = Arc::new(stats::Stats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let events = Arc::new(Mutex::new(Vec::new()));
    let churn = churn::Churn {
        world: world.clone(),
        config: config.clone(),
        proxy,
        admin,
        bin: bin.clone(),
        scratch: scratch.path().to_path_buf(),
        backends,
        tether_pid: tether.pid(),
        events: events.clone(),
        revision: 0,
    };
    let deadline = start + duration;
    let (done, churned) = mpsc::channel();
    let (release, released) = mpsc::channel();
    let churn_thread = {
        let stop = stop.clone();
        std::thread::spawn(move || churn.run(churn_interval, deadline, &stop, done, released))
    };

    let samples = traffic_and_samples(proxy, &world, &stats, &stop, tether.pid(), start, deadline)?;
    stop.store(true, Ordering::Relaxed);
    let churned = churned
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the churn thread did not finish")));
    let traffic_end = start.elapsed().as_secs_f64();
    // Idle: no client connections left; what tether still holds is its own.
    std::thread::sleep(Duration::from_secs(2));
    let idle_after = sample::read(tether.pid());
    let tether_metrics = report::tether_metrics(admin);
    let tether_alive = tether.ensure_running();
    tether.stop();
    let _ = release.send(());
    if churn_thread.join().is_err() {
        eprintln!("warning: the churn thread panicked");
    }

    let events = events.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let report = report::Report::build(report::Inputs {
        timestamp,
        machine,
        minutes: options.minutes,
        churn_interval_s: churn_interval.as_secs_f64(),
        traffic_end_s: traffic_end,
        targets: world.snapshot(),
        samples,
        events,
        counts: stats.snapshot(),
        idle_before,
        idle_after,
        tether_metrics,
        problems: [
            churned.err().map(|e| format!("churn failed: {e:#}")),
            tether_alive
                .err()
                .map(|e| format!("tether died during the soak: {e:#}")),
        ]
        .into_iter()
        .flatten()
        .collect(),
    });
    report.print();
    let saved = save(&report, &out_dir, &stamp)?;
    for path in &saved {
        println!("saved {}", path.display());
    }
    if !report.failures.is_empty() {
        println!("\ntether log (last 20 lines):\n{}", tether.log_tail(20));
        bail!("soak failed:\n  - {}", report.failures.join("\n  - "));
    }
    Ok(())
}

/// Runs the traffic mix and the sampler until the deadline, then winds the tasks down.
fn traffic_and_samples(
    proxy: std::net::SocketAddr,
    world: &Arc<World>,
    stats: &Arc<stats::Stats>,
    stop: &Arc<AtomicBool>,
    pid: u32,
    start: Instant,
    deadline: Instant,
) -> Result<Vec<sample::Sample>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot build the tokio runtime")?;
    runtime.block_on(async {
        let deadline = tokio::time::Instant::from_std(deadline);
        let ctx = Arc::new(Ctx {
            proxy,
            world: world.clone(),
            stats: stats.clone(),
            deadline,
            stop: stop.clone(),
        });
        let sampler = tokio::spawn(sample::sampler(
            pid,
            stats.clone(),
            start,
            deadline,
            stop.clone(),
        ));
        let mut tasks = tokio::task::JoinSet::new();
        let mut id = 0usize;
        let mut sessions = |n: usize| -> Vec<Session> {
            (0..n)
                .map(|_| {
                    id += 1;
                    Session::new(id)
                })
                .collect()
        };
        let ms = Duration::from_millis;
        for _ in 0..STICKY_WORKERS {
            tasks.spawn(traffic::sticky(
                ctx.clone(),
                sessions(SESSIONS_PER_WORKER),
                ms(5),
            ));
        }
        for seed in 1..=2 {
            tasks.spawn(traffic::new_sessions(ctx.clone(), seed, ms(20)));
            tasks.spawn(traffic::uploads(ctx.clone(), sessions(2), seed, ms(100)));
            tasks.spawn(traffic::slow_heads(
                ctx.clone(),
                sessions(1).remove(0),
                ms(15),
            ));
            tasks.spawn(traffic::slow_readers(
                ctx.clone(),
                sessions(1).remove(0),
                4 << 20,
                ms(2000),
            ));
        }
        for seed in 1..=4 {
            tasks.spawn(traffic::tunnels(ctx.clone(), sessions(1).remove(0), seed));
        }
        tasks.spawn(traffic::too_slow(ctx.clone(), Duration::from_secs(30)));
        tasks.spawn(traffic::bad(ctx.clone(), ms(100)));

        let until_deadline = tokio::time::sleep_until(deadline);
        tokio::pin!(until_deadline);
        loop {
            tokio::select! {
                () = &mut until_deadline => break,
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        let wind_down = tokio::time::timeout(WIND_DOWN, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if wind_down.is_err() {
            eprintln!(
                "warning: {} traffic task(s) still busy {WIND_DOWN:?} after the deadline; aborted",
                tasks.len()
            );
            tasks.abort_all();
        }
        Ok(sampler.await.unwrap_or_default())
    })
}

/// Writes soak-<stamp>.json, soak-latest.png and soak-latest.md; returns their paths.
fn save(report: &report::Report, dir: &Path, stamp: &str) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let json = dir.join(format!("soak-{stamp}.json"));
    std::fs::write(&json, serde_json::to_string_pretty(report)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let png = dir.join("soak-latest.png");
    chart::draw(report, &png)?;
    let md = dir.join("soak-latest.md");
    let commit = short_commit(&report.machine);
    let text = format!(
        "# Soak, {}\n\n`cargo xtask soak --minutes {}` on commit {commit}{}, {} CPU(s), kernel {}.\n\
         Data: `{}`. Chart: `soak-latest.png`.\n\n![soak](soak-latest.png)\n\n```text{}```\n",
        report.timestamp,
        report.minutes,
        dirty(&report.machine),
        report.machine.nproc,
        report.machine.kernel.as_deref().unwrap_or("?"),
        json.file_name().and_then(|n| n.to_str()).unwrap_or_default(),
        report.text()
    );
    std::fs::write(&md, text).with_context(|| format!("writing {}", md.display()))?;
    Ok(vec![json, png, md])
}
