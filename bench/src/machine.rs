//! Facts about the machine and the tools, recorded next to every bench's numbers, and the UTC
//! timestamps results are named by.
use serde::Serialize;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

/// Facts about the machine and the tools, recorded next to the numbers.
#[derive(Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: Option<String>,
    pub kernel: Option<String>,
    pub os: Option<String>,
    pub haproxy: Option<String>,
    pub nginx: Option<String>,
    pub wrk: Option<String>,
    /// nghttp2's HTTP/2 load generator (`bench l7`'s h2 scenario).
    pub h2load: Option<String>,
    pub rustc: Option<String>,
    pub git_commit: Option<String>,
    pub git_dirty: Option<bool>,
}

impl Machine {
    pub fn probe(root: &Path) -> Self {
        let cpu_model = fs::read_to_string("/proc/cpuinfo").ok().and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        });
        let os = fs::read_to_string("/etc/os-release").ok().and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        });
        let git_dirty = command_text(Command::new("git").current_dir(root).args([
            "status",
            "--porcelain",
            "--untracked-files=no",
        ]))
        .map(|s| !s.trim().is_empty());
        Self {
            nproc: nproc(),
            cpu_model,
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .map(|s| s.trim().to_string()),
            os,
            haproxy: first_line(Command::new("haproxy").arg("-v")),
            nginx: first_line(Command::new("nginx").arg("-v")),
            wrk: first_line(Command::new("wrk").arg("-v")).map(|l| {
                l.split(" Copyright")
                    .next()
                    .unwrap_or(&l)
                    .trim()
                    .to_string()
            }),
            h2load: first_line(Command::new("h2load").arg("--version")),
            rustc: first_line(Command::new("rustc").arg("-V")),
            git_commit: first_line(
                Command::new("git")
                    .current_dir(root)
                    .args(["rev-parse", "HEAD"]),
            ),
            git_dirty,
        }
    }
}

pub fn nproc() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// stdout followed by stderr of a command that ran (whatever its exit code).
pub fn command_text(command: &mut Command) -> Option<String> {
    let output = command.stdin(Stdio::null()).output().ok()?;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    Some(text)
}

fn first_line(command: &mut Command) -> Option<String> {
    command_text(command)?
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

pub fn have_program(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
        || Path::new(name).is_file()
}

/// UTC now as ("2026-04-21T10:15:00Z", "20260421T101500Z").
pub fn utc_now() -> (String, String) {
    let now = tether_testkit::clock::Utc::now_plus(0);
    (now.rfc3339(), now.compact())
}
