//! The workspace's binaries as child processes: `tether-echo` backends and `tether run`, for the
//! demo and the benches (the tests run the echo in-process and tether through `agent`).
use crate::process::Proc;
use anyhow::Result;
use std::net::SocketAddr;
use std::path::Path;
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
