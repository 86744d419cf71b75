//! The HTTP systems `bench l7` and `bench idle` put in front of `tether-echo` backends, the same
//! way in both: tether and HAProxy with a sticky cookie, with as many workers as asked (one in
//! `bench idle`); their configurations, their commands, and the checks that they answer as they
//! should.
use crate::built;
use crate::machine::have_program;
use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tether_testkit::binaries::{sticky_config, tether_command};
use tether_testkit::net::{loopback, HttpResponse};

/// The cookie tether issues (its config below).
pub const TETHER_COOKIE: &str = "session-id";
/// The cookie HAProxy inserts.
pub const HAPROXY_COOKIE: &str = "SRV";
/// A session value sent where any value does (nginx's hash, a bare backend).
pub const SYNTHETIC_SESSION: &str = "bench-3f9a0c1e7b2d4a6f8e5c0b1a2d3e4f5a";
/// Bound on a process coming up.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The directory of tether and tether-echo, and why tether cannot run if it cannot (its
/// release build failed, or the binary is missing); tether-echo must be there.
pub fn binaries() -> Result<(PathBuf, Option<String>)> {
    let bin = built::bin_dir();
    let mut unavailable =
        built::build_failure().map(|error| format!("the release build failed: {error}"));
    if !bin.join("tether-echo").is_file() {
        bail!("{} is missing", bin.join("tether-echo").display());
    }
    if unavailable.is_none() && !bin.join("tether").is_file() {
        unavailable = Some(format!("{} is missing", bin.join("tether").display()));
    }
    Ok((bin, unavailable))
}

/// Fails unless `response` is a 2xx.
pub fn expect_2xx(response: &HttpResponse, who: &str) -> Result<()> {
    if !(200..300).contains(&response.status) {
        bail!("{who} answered {} to GET /", response.status);
    }
    Ok(())
}

/// `NAME=VALUE` of the cookie `name` that `who` set in `response`.
pub fn issued_cookie(response: &HttpResponse, who: &str, name: &str) -> Result<String> {
    response.set_cookie(name).with_context(|| {
        format!(
            "{who} answered without Set-Cookie: {name}=...; headers: {:?}",
            response.headers
        )
    })
}

/// tether's configuration: the proxy on `port` (then `proxy_extra`, indented lines of its
/// `proxy:` block), the admin endpoint on `admin`, every path to `backends` with sticky
/// sessions on [`TETHER_COOKIE`].
pub fn tether_config(port: u16, admin: u16, backends: &[SocketAddr], proxy_extra: &str) -> String {
    let targets: Vec<String> = backends
        .iter()
        .map(|a| format!("      - {{address: {a}}}"))
        .collect();
    sticky_config(
        loopback(port),
        proxy_extra,
        loopback(admin),
        "/",
        TETHER_COOKIE,
        &targets,
    )
}

/// `command` (`tether`, maybe under taskset) running `config` with `workers` worker threads.
pub fn tether(command: Command, config: &Path, workers: usize) -> Command {
    let mut command = tether_command(command, config);
    command
        .arg("--workers")
        .arg(workers.to_string())
        .env("RUST_LOG", "warn");
    command
}

/// What differs between the benches' HAProxy configurations.
pub struct Haproxy<'a> {
    pub port: u16,
    pub backends: &'a [SocketAddr],
    /// `nbthread`: HAProxy's worker threads.
    pub threads: usize,
    /// Indented lines of `global` after `nbthread N`.
    pub global: &'a str,
    /// Indented `timeout` lines of `defaults` after `timeout connect 5s`.
    pub timeouts: &'a str,
    /// Indented lines of the frontend after its `bind`.
    pub frontend: &'a str,
}

/// HAProxy with `threads` threads, round robin over `backends` named `pod-N`, with `cookie SRV
/// insert indirect nocache` and `http-reuse safe`.
pub fn haproxy_config(haproxy: &Haproxy) -> String {
    let servers: String = haproxy
        .backends
        .iter()
        .enumerate()
        .map(|(i, a)| format!("    server pod-{n} {a} cookie pod-{n}\n", n = i + 1))
        .collect();
    format!(
        "global
    nbthread {threads}
{global}
defaults
    mode http
    timeout connect 5s
{timeouts}
frontend bench
    bind 127.0.0.1:{port}
{frontend}    default_backend echo

backend echo
    balance roundrobin
    cookie {HAPROXY_COOKIE} insert indirect nocache
    http-reuse safe
{servers}",
        threads = haproxy.threads,
        global = haproxy.global,
        timeouts = haproxy.timeouts,
        frontend = haproxy.frontend,
        port = haproxy.port,
    )
}

/// `command` (`haproxy`, maybe under taskset) running `config` in the foreground; fails when
/// HAProxy is not installed.
pub fn haproxy(mut command: Command, config: &Path) -> Result<Command> {
    if !have_program("haproxy") {
        bail!("haproxy is not installed (apt-get install haproxy)");
    }
    command.arg("-db").arg("-f").arg(config);
    Ok(command)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haproxy_configs_keep_their_shape() {
        let backends = [SocketAddr::from(([127, 0, 0, 1], 1))];
        let text = haproxy_config(&Haproxy {
            port: 9,
            backends: &backends,
            threads: 1,
            global: "    maxconn 4096\n",
            timeouts: "    timeout client 30s\n",
            frontend: "",
        });
        assert_eq!(
            text,
            "global\n    nbthread 1\n    maxconn 4096\n\ndefaults\n    mode http\n    timeout \
             connect 5s\n    timeout client 30s\n\nfrontend bench\n    bind 127.0.0.1:9\n    \
             default_backend echo\n\nbackend echo\n    balance roundrobin\n    cookie SRV insert \
             indirect nocache\n    http-reuse safe\n    server pod-1 127.0.0.1:1 cookie pod-1\n"
        );
        let threaded = haproxy_config(&Haproxy {
            port: 9,
            backends: &backends,
            threads: 4,
            global: "",
            timeouts: "",
            frontend: "",
        });
        assert!(threaded.starts_with("global\n    nbthread 4\n\n"));
    }
}
