//! The workspace's binaries as child processes: `tether-echo` backends, `tether run` and
//! `tether-testcert`, for the demo and the benches (the tests run the echo in-process and
//! tether through `agent`).
use crate::process::Proc;
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// How long a started backend gets to listen.
const READY: Duration = Duration::from_secs(10);

/// `program` (`tether-echo`, maybe under `taskset`) as backend `name` on `addr`, one worker.
pub fn echo_command(mut program: Command, addr: SocketAddr, name: &str) -> Command {
    program.args([
        "--listen",
        &addr.to_string(),
        "--name",
        name,
        "--workers",
        "1",
    ]);
    program
}

/// Starts `bin_dir/tether-echo` as backend `name` on `addr`, its output in `log_dir/NAME.log`,
/// and waits until it listens.
pub fn start_echo(bin_dir: &Path, log_dir: &Path, name: &str, addr: SocketAddr) -> Result<Proc> {
    let command = echo_command(Command::new(bin_dir.join("tether-echo")), addr, name);
    let mut backend = Proc::spawn(name, command, log_dir.join(format!("{name}.log")))?;
    backend.wait_ready(addr, READY)?;
    Ok(backend)
}

/// `program` (`tether`, maybe under `taskset`) as `tether run --config CONFIG`.
pub fn tether_command(mut program: Command, config: &Path) -> Command {
    program.arg("run").arg("--config").arg(config);
    program
}

/// Runs `tether-testcert` (in `bin_dir`): a self-signed certificate for `name` written as
/// `DIR/FILE.pem` and `DIR/FILE.key`, and with `combined` both in that one file (HAProxy's
/// `ssl crt`). The certificate's and the key's paths.
pub fn testcert(
    bin_dir: &Path,
    dir: &Path,
    file: &str,
    name: &str,
    combined: Option<&Path>,
) -> Result<(PathBuf, PathBuf)> {
    let mut command = Command::new(bin_dir.join("tether-testcert"));
    command
        .arg("--dir")
        .arg(dir)
        .args(["--file", file, "--name", name]);
    if let Some(combined) = combined {
        command.arg("--combined").arg(combined);
    }
    crate::process::run_checked(&mut command)
        .context("tether-testcert (built with tether-echo)")?;
    Ok((
        dir.join(format!("{file}.pem")),
        dir.join(format!("{file}.key")),
    ))
}

/// tether's configuration for one sticky-sessions service `echo` on the routes under `path`:
/// the proxy on `proxy` (then `proxy_extra`, indented lines of its `proxy:` block), the admin
/// endpoint on `admin`, the session cookie `cookie`, and `targets`, each a whole
/// `      - {address: ...}` line.
pub fn sticky_config(
    proxy: SocketAddr,
    proxy_extra: &str,
    admin: SocketAddr,
    path: &str,
    cookie: &str,
    targets: &[String],
) -> String {
    let targets: String = targets.iter().map(|line| format!("{line}\n")).collect();
    format!(
        "proxy:
  listen: {proxy}
{proxy_extra}admin:
  listen: {admin}
routes:
  - match: {{pathPrefix: {path}}}
    service: echo
services:
  echo:
    policy:
      algorithm: sticky-sessions
      hashOn: {{input: none}}
      stickySessions: {{cookie: {cookie}, cookiePath: /}}
    targets:
{targets}"
    )
}

/// A `targets:` line of [`sticky_config`]: `address` with `weight`, commented with `name`.
pub fn weighted_target(address: SocketAddr, weight: u32, name: &str) -> String {
    format!("      - {{address: {address}, weight: {weight}}}   # {name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sticky_configs_keep_their_shape() {
        let text = sticky_config(
            SocketAddr::from(([127, 0, 0, 1], 1)),
            "",
            SocketAddr::from(([127, 0, 0, 1], 2)),
            "/echo",
            "session-id",
            &[weighted_target(
                SocketAddr::from(([127, 0, 0, 1], 3)),
                100,
                "pod-1",
            )],
        );
        assert_eq!(
            text,
            "proxy:\n  listen: 127.0.0.1:1\nadmin:\n  listen: 127.0.0.1:2\nroutes:\n  - match: \
             {pathPrefix: /echo}\n    service: echo\nservices:\n  echo:\n    policy:\n      \
             algorithm: sticky-sessions\n      hashOn: {input: none}\n      stickySessions: \
             {cookie: session-id, cookiePath: /}\n    targets:\n      - {address: 127.0.0.1:3, \
             weight: 100}   # pod-1\n"
        );
    }
}
