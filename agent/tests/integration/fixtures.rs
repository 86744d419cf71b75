//! The set-up the integration tests share: echo pods behind a running tether with a client
//! (where most proxy tests start), sessions pinned to a pod, the counters the tests read, a
//! request left in flight, and how a test shares the machine with the others of this binary.
use anyhow::{anyhow, ensure, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use tether_testkit::agent::Tether;
use tether_testkit::cluster::{self, annotate};
use tether_testkit::config::{Config, COOKIE};
use tether_testkit::echo::EchoServer;
use tether_testkit::http::{CookieJar, Http, Reply};
use tether_testkit::netns::{privileged, require_kernel};
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use tokio::task::JoinHandle;

/// The `tether` binary Cargo built for these tests.
pub const TETHER: &str = env!("CARGO_BIN_EXE_tether");

// ---------------------------------------------------------------------------------------------
// Echo pods behind tether

/// Echo pods named `names`, started.
pub fn pods<const N: usize>(names: [&str; N]) -> Result<[EchoServer; N]> {
    let mut started = Vec::with_capacity(N);
    for name in names {
        started.push(EchoServer::start(name)?);
    }
    started
        .try_into()
        .map_err(|_| anyhow!("{N} pods were asked for"))
}

/// Echo pods behind a running tether, and a client: `(pods, config, tether, http, url)`, where
/// `config` is the configuration tether started with (tests reload variations of it) and `url`
/// is `tether.url("/")`. Tests bind the pods and tether by name (`_pods`, never `_`): a pod or
/// a tether dropped is stopped.
pub type Stage<const N: usize> = ([EchoServer; N], Config, Tether, Http, String);

/// Pods `names`, weight 100 each, behind a sticky-sessions service.
pub async fn sticky<const N: usize>(names: [&str; N]) -> Result<Stage<N>> {
    stage(names.map(|name| (name, 100)), Config::sticky).await
}

/// The same, with the configuration adjusted by `adjust` (cookie attributes, timeouts, routes).
pub async fn sticky_with<const N: usize>(
    names: [&str; N],
    adjust: impl FnOnce(Config) -> Config,
) -> Result<Stage<N>> {
    stage(names.map(|name| (name, 100)), |targets| {
        adjust(Config::sticky(targets))
    })
    .await
}

/// Pods with their weights, behind the service `config` makes of them as targets
/// (`Config::sticky`, `Config::round_robin`).
pub async fn stage<const N: usize>(
    pods: [(&str, u32); N],
    config: impl FnOnce(&[(SocketAddr, u32)]) -> Config,
) -> Result<Stage<N>> {
    let started = self::pods(pods.map(|(name, _)| name))?;
    let targets: Vec<_> = started
        .iter()
        .zip(pods)
        .map(|(pod, (_, weight))| (pod.address(), weight))
        .collect();
    let config = config(&targets);
    let tether = Tether::start(TETHER, &config.yaml()).await?;
    let url = tether.url("/");
    Ok((started, config, tether, Http::new(), url))
}

// ---------------------------------------------------------------------------------------------
// Sessions

/// New sessions at `url` until one lands on `pod` (at most `tries`): a jar with its `cookie`.
pub async fn session_jar(
    http: &Http,
    url: &str,
    cookie: &str,
    pod: &str,
    tries: usize,
) -> Result<CookieJar> {
    let value = http.session_on(url, cookie, pod, tries).await?;
    Ok(CookieJar::with(cookie, &value))
}

/// New sessions at `url` until one lands on `pod` (at most `tries`): the `Cookie` header that
/// keeps it there (tether's cookie, [`COOKIE`]).
pub async fn session_cookie(http: &Http, url: &str, pod: &str, tries: usize) -> Result<String> {
    let value = http.session_on(url, COOKIE, pod, tries).await?;
    Ok(format!("{COOKIE}={value}"))
}

/// The pods `count` new sessions (no cookie) land on, in order.
pub async fn new_sessions(http: &Http, url: &str, count: usize) -> Result<Vec<String>> {
    let mut pods = Vec::with_capacity(count);
    for _ in 0..count {
        let reply = http.get(url, None).await?;
        ensure!(
            reply.status == 200,
            "status {}: {}",
            reply.status,
            reply.text()
        );
        pods.push(reply.pod().context("x-pod")?.to_string());
    }
    Ok(pods)
}

/// The distinct pods `count` new sessions land on, sorted.
pub async fn new_session_pods(http: &Http, url: &str, count: usize) -> Result<Vec<String>> {
    let mut pods = new_sessions(http, url, count).await?;
    pods.sort();
    pods.dedup();
    Ok(pods)
}

// ---------------------------------------------------------------------------------------------
// The Kubernetes source

/// The how-to's cluster with its policy applied: the echo HTTPRoute, the KongUpstreamPolicy
/// `sticky-session-policy` with session cookie `cookie`, and the echo Service that names it.
pub fn sticky_echo(cookie: &str) -> Vec<Value> {
    vec![
        cluster::echo_route(),
        cluster::sticky_policy(cookie),
        annotate(
            cluster::echo_service(),
            "konghq.com/upstream-policy",
            "sticky-session-policy",
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Requests in flight

/// A GET of `url` (with `cookie` and `headers`) on a task of its own, to be awaited later.
pub fn get_in_background(
    http: &Http,
    url: String,
    cookie: Option<String>,
    headers: &[(&'static str, &'static str)],
) -> JoinHandle<Result<Reply>> {
    let http = http.clone();
    let headers = headers.to_vec();
    tokio::spawn(async move { http.get_with(&url, cookie.as_deref(), &headers).await })
}

/// Waits, at most 2 s, until `pod` has taken more requests than `before`: a request sent on
/// another task has reached it, and the pod holds it. Says whether it did.
pub async fn reached(pod: &EchoServer, before: u64) -> bool {
    for _ in 0..200 {
        if pod.requests() > before {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    pod.requests() > before
}

// ---------------------------------------------------------------------------------------------
// Counters

/// Counter `name` of the echo service for `pod`'s target, with `extra` labels.
pub async fn target_metric(
    tether: &Tether,
    name: &str,
    pod: &EchoServer,
    extra: &[(&str, &str)],
) -> Result<f64> {
    let target = pod.address().to_string();
    let mut labels = vec![("service", "echo"), ("target", target.as_str())];
    labels.extend_from_slice(extra);
    tether.metric(name, &labels).await
}

/// `tether_invalid_cookies_total` of the echo service: for `reason`, or every reason.
pub async fn invalid_cookies(tether: &Tether, reason: Option<&str>) -> Result<f64> {
    let mut labels = vec![("service", "echo")];
    labels.extend(reason.map(|reason| ("reason", reason)));
    tether.metric("tether_invalid_cookies_total", &labels).await
}

/// `tether_request_outcomes_total` for `outcome`.
pub async fn outcomes(tether: &Tether, outcome: &str) -> Result<f64> {
    tether
        .metric("tether_request_outcomes_total", &[("outcome", outcome)])
        .await
}

/// `tether_request_outcomes_total` for `outcome`, once it reached `expected` (or 5 s passed):
/// connection-level outcomes are counted as the connection ends, a moment after the client got
/// its answer.
pub async fn settled_outcomes(tether: &Tether, outcome: &str, expected: f64) -> Result<f64> {
    tether
        .settled_metric(
            "tether_request_outcomes_total",
            &[("outcome", outcome)],
            expected,
        )
        .await
}

// ---------------------------------------------------------------------------------------------
// The kernel data plane

/// Whether a test of the kernel data plane may run: root (else it fails, or is skipped with
/// `TETHER_SKIP_PRIVILEGED=1`), on a kernel with bpf_link for XDP and TCX (else it fails).
pub fn dataplane_ready(test: &str) -> bool {
    if !privileged(test) {
        return false;
    }
    require_kernel(
        tether::dataplane::MIN_KERNEL.0,
        tether::dataplane::MIN_KERNEL.1,
        "the kernel data plane (bpf_link for XDP and TCX)",
    );
    true
}

// ---------------------------------------------------------------------------------------------
// Sharing the machine

/// Every test of this binary is a thread of one process, and they run two at a time (the
/// machine has two CPUs), in whatever pairs the scheduler makes; in their own binaries they
/// met only their neighbours. Most are short and light. Two kinds must not meet:
///
/// - tests that load the machine for long (network namespaces with XDP and hundreds of
///   connections, Python and kubectl, a flood of sockets) hold [`loading`]: any number of them
///   run together, as they did in their own binaries;
/// - tests whose assertions bound wall time (a latency's percentiles, convergence after an
///   outage, a request that must finish within a timeout's margin) hold [`timing`]: none of the
///   others runs meanwhile.
///
/// Light tests take neither: they may run beside either kind. The lock is tokio's: it is not
/// poisoned when a test holding it fails.
static MACHINE: RwLock<()> = RwLock::const_new(());

/// Held by a test that loads the machine for long; see [`MACHINE`].
pub async fn loading() -> RwLockReadGuard<'static, ()> {
    MACHINE.read().await
}

/// [`loading`], for a test that is not async.
pub fn loading_blocking() -> RwLockReadGuard<'static, ()> {
    MACHINE.blocking_read()
}

/// Held by a test whose assertions bound wall time; see [`MACHINE`].
pub async fn timing() -> RwLockWriteGuard<'static, ()> {
    MACHINE.write().await
}

/// [`timing`], for a test that is not async.
pub fn timing_blocking() -> RwLockWriteGuard<'static, ()> {
    MACHINE.blocking_write()
}

/// A Python venv under target/ (`name`) with `requirement` installed from PyPI: created on
/// first use, kept across runs (a marker names what is installed), shared by this process.
pub fn python_venv(name: &str, requirement: &str) -> Result<PathBuf> {
    static READY: OnceLock<Mutex<BTreeMap<String, PathBuf>>> = OnceLock::new();
    let mut ready = READY
        .get_or_init(|| Mutex::new(BTreeMap::new()))
        .lock()
        .map_err(|_| anyhow!("poisoned"))?;
    if let Some(dir) = ready.get(name) {
        return Ok(dir.clone());
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join(name);
    let marker = dir.join(".installed");
    let installed = std::fs::read_to_string(&marker).unwrap_or_default();
    if installed.trim() != requirement {
        let _ = std::fs::remove_dir_all(&dir);
        run_quietly(Command::new("python3").args(["-m", "venv"]).arg(&dir))
            .context("python3 -m venv (Debian: apt-get install python3-venv)")?;
        let install = || {
            run_quietly(Command::new(dir.join("bin/pip")).args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--retries",
                "5",
                requirement,
            ]))
        };
        // Once more after a pause: a registry hiccup should not fail the suite.
        install()
            .or_else(|_| {
                std::thread::sleep(Duration::from_secs(5));
                install()
            })
            .with_context(|| format!("pip install {requirement} (from PyPI)"))?;
        std::fs::write(&marker, requirement)?;
    }
    ready.insert(name.to_string(), dir.clone());
    Ok(dir)
}

fn run_quietly(command: &mut Command) -> Result<()> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    ensure!(
        output.status.success(),
        "{command:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}
