//! The real `tether` process: started with a configuration written to a temporary directory,
//! its stderr kept in a log file, reloaded through that file or SIGHUP, read through its admin
//! endpoint, and killed when dropped.
//!
//! Configurations are YAML text in which `$PROXY`, `$ADMIN` and `$DIR` stand for the proxy's
//! and the admin endpoint's listen addresses and the temporary directory.
//!
//! Ports: the proxy listens on `127.0.0.1:0` and its real port is read from tether's log. A port
//! picked free beforehand would not do: tether binds the proxy with SO_REUSEPORT, so two
//! processes that happened to pick the same port would both bind it and share its connections
//! without an error, whereas the kernel never hands out a port of a reuseport group for port 0.
//! The admin endpoint binds without SO_REUSEPORT, so a picked port taken in the meantime fails
//! loudly, and start-up is retried with another.
use crate::http::Http;
use crate::process::Proc;
use anyhow::{bail, Context, Result};
use hyper::StatusCode;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

// Where the tests have always found them.
pub use crate::fs::{write_atomically, TempDir};
pub use crate::net::free_port;

/// How long a started process gets to answer `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a reload gets to show in the metrics (the file is polled every 100 ms and applied
/// once it has stayed the same for 500 ms).
const RELOAD_TIMEOUT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(25);
/// Tries at starting when a picked port was taken in the meantime.
const START_ATTEMPTS: usize = 3;
/// What `$PROXY` stands for: any free port, chosen by the kernel.
const PROXY_LISTEN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// How to start the process, beyond its configuration.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `--workers`; by default tether's own (one per core).
    pub workers: Option<usize>,
    /// `--session-key FILE`.
    pub session_key: Option<PathBuf>,
    /// More arguments after `run --config FILE` (`--kubernetes --kubeconfig ...`, say).
    pub args: Vec<String>,
    /// More environment variables.
    pub env: Vec<(String, String)>,
    /// Soft and hard `RLIMIT_NOFILE` for the process (tether raises soft to hard at start).
    pub open_files: Option<u64>,
}

/// A running `tether run`.
pub struct Tether {
    process: Proc,
    dir: TempDir,
    config: PathBuf,
    proxy: SocketAddr,
    admin: SocketAddr,
    http: Http,
}

impl Tether {
    /// Starts `binary` with `yaml` and waits until it is ready.
    pub async fn start(binary: &str, yaml: &str) -> Result<Self> {
        Self::start_with(binary, yaml, Options::default()).await
    }

    pub async fn start_with(binary: &str, yaml: &str, options: Options) -> Result<Self> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::try_start(binary, yaml, &options).await {
                Ok(tether) => return Ok(tether),
                // A port picked free was taken before tether bound it: pick others.
                Err(Failed::PortTaken(logs)) if attempt < START_ATTEMPTS => {
                    eprintln!("tether could not bind a picked port, retrying:\n{logs}");
                }
                Err(Failed::PortTaken(logs)) => bail!("tether could not bind its ports:\n{logs}"),
                Err(Failed::Other(error)) => return Err(error),
            }
        }
    }

    async fn try_start(binary: &str, yaml: &str, options: &Options) -> Result<Self, Failed> {
        let dir = TempDir::new("agent")?;
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let config = dir.path().join("tether.yaml");
        let log = dir.path().join("tether.log");
        write_atomically(&config, &render(yaml, PROXY_LISTEN, admin, dir.path()))?;
        let process = Proc::spawn("tether", command(binary, &config, options), log)?;
        let mut tether = Self {
            process,
            dir,
            config,
            proxy: PROXY_LISTEN,
            admin,
            http: Http::new(),
        };
        let ready = match tether.wait_ready().await {
            Ok(()) => tether.proxy_port_from_logs(),
            Err(error) => Err(error),
        };
        match ready {
            Ok(proxy) => {
                tether.proxy = proxy;
                Ok(tether)
            }
            Err(error) => {
                let logs = tether.logs();
                if logs.contains("Address already in use") {
                    Err(Failed::PortTaken(logs))
                } else {
                    Err(Failed::Other(
                        error.context(format!("tether logs:\n{logs}")),
                    ))
                }
            }
        }
    }

    /// `yaml` with the placeholders filled in (`$PROXY` stays `127.0.0.1:0`, as at start, so a
    /// reload does not move the proxy).
    pub fn render(&self, yaml: &str) -> String {
        render(yaml, PROXY_LISTEN, self.admin, self.dir.path())
    }

    /// The port the proxy got, from its `proxy listening listen=ADDRESS` log line.
    fn proxy_port_from_logs(&self) -> Result<SocketAddr> {
        let logs = self.logs();
        let line = logs
            .lines()
            .find(|line| line.contains("proxy listening"))
            .context("tether is ready but logged no `proxy listening` line")?;
        let address = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("listen="))
            .with_context(|| format!("no listen= in {line:?}"))?;
        address
            .trim_matches('"')
            .parse()
            .with_context(|| format!("bad address in {line:?}"))
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let started = Instant::now();
        let url = format!("http://{}/readyz", self.admin);
        loop {
            if let Some(status) = self.process.exited() {
                bail!("tether exited before it was ready: {status}");
            }
            // Our own log must show the admin endpoint up: an answer on a port taken by another
            // process would not be ours.
            let listening = format!("admin listening listen={}", self.admin);
            if self.logs().contains(&listening) {
                if let Ok(Ok(reply)) =
                    tokio::time::timeout(Duration::from_secs(2), self.http.get(&url, None)).await
                {
                    if reply.status == StatusCode::OK {
                        return Ok(());
                    }
                }
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!("tether was not ready within {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Where the proxy really listens.
    pub fn proxy(&self) -> SocketAddr {
        self.proxy
    }

    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    /// The temporary directory (`$DIR`), removed with this value.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// `http://PROXY` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    /// The descriptors the process holds open now.
    pub fn open_fds(&self) -> Result<usize> {
        let dir = format!("/proc/{}/fd", self.process.pid());
        Ok(std::fs::read_dir(&dir)
            .with_context(|| format!("read {dir}"))?
            .count())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.process.exited().is_none()
    }

    /// Everything it wrote to stderr (and stdout) so far.
    pub fn logs(&self) -> String {
        self.process.log()
    }

    /// The admin endpoint's `/metrics` text.
    pub async fn metrics(&self) -> Result<String> {
        let reply = self
            .http
            .get(&format!("http://{}/metrics", self.admin), None)
            .await?;
        if reply.status != StatusCode::OK {
            bail!("/metrics answered {}", reply.status);
        }
        Ok(reply.text())
    }

    /// The value of metric `name` (with the `_total` of counters) whose labels include
    /// `labels`, summed over every matching series; 0 when none exists yet.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        Ok(metric_value(&self.metrics().await?, name, labels))
    }

    /// Waits (at most 5 s) until metric `name` reaches `expected`, and returns its last value.
    ///
    /// For counters bumped after the client got its answer: a connection's outcome (400, 431,
    /// a cut-off slow client) is counted when its connection ends, just after the reply is sent.
    pub async fn settled_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        expected: f64,
    ) -> Result<f64> {
        let started = Instant::now();
        loop {
            let value = self.metric(name, labels).await?;
            if value == expected || started.elapsed() > Duration::from_secs(5) {
                return Ok(value);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    pub async fn generation(&self) -> Result<f64> {
        self.metric("tether_config_generation", &[]).await
    }

    /// Writes `yaml` (placeholders filled in) as the configuration, atomically, and waits until
    /// tether has applied it (`tether_config_generation` went up).
    pub async fn reload(&self, yaml: &str) -> Result<()> {
        let before = self.generation().await?;
        write_atomically(&self.config, &self.render(yaml))?;
        self.wait_for_metric("tether_config_generation", &[], before)
            .await
            .context("the new configuration was not applied")
    }

    /// Writes `yaml` as the configuration and waits until tether has rejected it
    /// (`tether_config_reloads_total{result="rejected"}` went up).
    pub async fn reload_rejected(&self, yaml: &str) -> Result<()> {
        let labels = [("result", "rejected")];
        let before = self.metric("tether_config_reloads_total", &labels).await?;
        write_atomically(&self.config, &self.render(yaml))?;
        self.wait_for_metric("tether_config_reloads_total", &labels, before)
            .await
            .context("the new configuration was not rejected")
    }

    /// Sends SIGHUP and waits until the configuration was applied again.
    pub async fn sighup(&self) -> Result<()> {
        let before = self.generation().await?;
        self.signal(libc::SIGHUP)?;
        self.wait_for_metric("tether_config_generation", &[], before)
            .await
            .context("SIGHUP did not apply the configuration")
    }

    pub fn signal(&self, signal: libc::c_int) -> Result<()> {
        self.process.signal(signal)
    }

    /// Waits (bounded) until the metric is above `before`.
    pub async fn wait_for_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        before: f64,
    ) -> Result<()> {
        let started = Instant::now();
        loop {
            if self.metric(name, labels).await? > before {
                return Ok(());
            }
            if started.elapsed() > RELOAD_TIMEOUT {
                bail!(
                    "{name} stayed at {before} for {RELOAD_TIMEOUT:?}; logs:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Tether {
    fn drop(&mut self) {
        self.process.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- tether logs ({}) ----\n{}",
                self.config.display(),
                self.logs()
            );
        }
    }
}

enum Failed {
    PortTaken(String),
    Other(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Failed {
    fn from(error: E) -> Self {
        Failed::Other(error.into())
    }
}

fn render(yaml: &str, proxy: SocketAddr, admin: SocketAddr, dir: &Path) -> String {
    yaml.replace("$PROXY", &proxy.to_string())
        .replace("$ADMIN", &admin.to_string())
        .replace("$DIR", &dir.display().to_string())
}

/// `binary run --config CONFIG ...` with a clean environment; [`Proc::spawn`] starts it.
fn command(binary: &str, config: &Path, options: &Options) -> Command {
    let mut command = Command::new(binary);
    command.arg("run").arg("--config").arg(config);
    if let Some(workers) = options.workers {
        command.arg("--workers").arg(workers.to_string());
    }
    if let Some(key) = &options.session_key {
        command.arg("--session-key").arg(key);
    }
    command.args(&options.args);
    for name in [
        "KUBECONFIG",
        "TETHER_ENABLE_DRAIN_SUPPORT",
        "CONTROLLER_ENABLE_DRAIN_SUPPORT",
        "TETHER_COOKIE_SECRET",
        "TETHER_DIALECTS",
    ] {
        command.env_remove(name);
    }
    command.envs(options.env.iter().map(|(k, v)| (k, v)));
    command
        .env_remove("TETHER_SESSION_KEY_FILE")
        .env("RUST_LOG", "info");
    if let Some(limit) = options.open_files {
        use std::os::unix::process::CommandExt;
        // SAFETY: between fork and exec the closure only calls setrlimit, which is
        // async-signal-safe, on a value it owns.
        unsafe {
            command.pre_exec(move || {
                let rlimit = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    command
}

/// The value of `name` whose labels include `labels`, summed over matching series (0 if none).
pub fn metric_value(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, series_labels) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let has_all = labels.iter().all(|(k, v)| {
                series_labels
                    .split(',')
                    .any(|l| l == format!("{k}=\"{v}\""))
            });
            has_all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// How a process that was expected to exit ended.
#[derive(Debug)]
pub struct Exited {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `binary args...` to completion (killed after `limit`), capturing its output.
pub fn run_to_exit(binary: &str, args: &[&std::ffi::OsStr], limit: Duration) -> Result<Exited> {
    let dir = TempDir::new("exit")?;
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut child = Command::new(binary)
        .args(args)
        .env_remove("TETHER_SESSION_KEY_FILE")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(File::create(&out_path)?)
        .stderr(File::create(&err_path)?)
        .spawn()
        .with_context(|| format!("cannot start {binary}"))?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{binary} did not exit within {limit:?}; stderr:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(POLL);
    };
    Ok(Exited {
        status,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "# HELP tether_requests Requests\n# TYPE tether_requests counter\n\
tether_requests_total{service=\"echo\",target=\"127.0.0.1:1\"} 3\n\
tether_requests_total{service=\"echo\",target=\"127.0.0.1:2\"} 4\n\
tether_config_generation 2\n# EOF\n";

    #[test]
    fn reads_metric_values() {
        assert_eq!(metric_value(METRICS, "tether_config_generation", &[]), 2.0);
        assert_eq!(
            metric_value(
                METRICS,
                "tether_requests_total",
                &[("target", "127.0.0.1:2")]
            ),
            4.0
        );
        assert_eq!(metric_value(METRICS, "tether_requests_total", &[]), 7.0);
        assert_eq!(
            metric_value(METRICS, "tether_requests_total", &[("target", "x")]),
            0.0
        );
    }
}
