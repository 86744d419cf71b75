//! `cargo xtask fuzz`: runs every fuzz target in `fuzz/` (cargo-fuzz, libFuzzer) for a while.
//!
//! Works on a fresh machine with rustup and a nightly toolchain: builds the kernel object (for
//! `kernel_packet`), installs the pinned cargo-fuzz under `target/fuzz-tools/` when it is not
//! there yet, builds the targets once, then runs each for `--seconds`. New inputs a run finds
//! go to `target/fuzz/corpus/<target>/` (the checked-in seeds in `fuzz/corpus/<target>/` are
//! only read), crash inputs to `target/fuzz/artifacts/<target>/`, each run's output to
//! `target/fuzz/logs/<target>.log`. Exits non-zero when a target crashed, printing the input's
//! path and the command that reproduces it.
use crate::build_ebpf::{self, nightly_command};
use crate::util::workspace_root;
use anyhow::{bail, ensure, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tether_testkit::process::run_checked;

/// The cargo-fuzz release installed (from crates.io) and used.
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// Every target in fuzz/fuzz_targets/, in the order they run.
const TARGETS: &[&str] = &[
    "http_request",
    "h1_framing",
    "cookie_codec",
    "config_yaml",
    "kube_translate",
    "kernel_packet",
];
/// Needs the kernel object and root.
const KERNEL_TARGET: &str = "kernel_packet";
/// Build flags, the same for `build` and `run` so that `run` rebuilds nothing: optimised, with
/// debug assertions (overflow checks catch arithmetic slips), AddressSanitizer (the default),
/// and 16 codegen units (a much quicker build on small CI machines, a little slower to run).
const BUILD_FLAGS: &[&str] = &["--release", "--debug-assertions", "--codegen-units", "16"];
/// A single input that runs longer than this is reported as a hang.
const INPUT_TIMEOUT_SECS: u32 = 10;

#[derive(clap::Args, Debug)]
pub struct Options {
    /// How long each target runs, in seconds.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Run only these targets (repeat the option for several).
    #[arg(long = "target", value_name = "NAME")]
    pub targets: Vec<String>,
    /// The rustup toolchain to build with; it must be a nightly (sanitizers need one).
    #[arg(long, default_value = "nightly")]
    pub toolchain: String,
}

/// What one run found, read from libFuzzer's output.
#[derive(Debug, Default, PartialEq)]
struct Report {
    executed: Option<u64>,
    new_units: Option<u64>,
    /// `cov:` of the last status line: coverage points reached.
    coverage: Option<u64>,
    /// `corp:` of the last status line: inputs in the corpus, and their total size in bytes.
    corpus: Option<(u64, u64)>,
    /// Where libFuzzer wrote the input that crashed, timed out or ran out of memory.
    crash: Option<String>,
    /// libFuzzer's `==ERROR:` or panic line, if any.
    error: Option<String>,
}

pub fn run(options: &Options) -> Result<()> {
    let started = Instant::now();
    let root = workspace_root();
    let targets = selected(&options.targets)?;

    let mut object = None;
    if targets.contains(&KERNEL_TARGET) {
        ensure!(
            is_root(),
            "{KERNEL_TARGET} loads BPF programs: run as root, or leave it out with --target"
        );
        object = Some(build_ebpf::run(&build_ebpf::Options {
            toolchain: options.toolchain.clone(),
            ..build_ebpf::Options::default()
        })?);
        tether_testkit::netns::mount_bpffs_if_needed();
    }

    let cargo_fuzz = ensure_cargo_fuzz(&root, &options.toolchain)?;
    let step = Instant::now();
    run_checked(fuzz_command(&cargo_fuzz, &root, &options.toolchain, "build").args(BUILD_FLAGS))
        .context("building the fuzz targets failed")?;
    println!(
        "fuzz: built the targets in {:.1}s",
        step.elapsed().as_secs_f64()
    );

    let mut failed = Vec::new();
    let mut lines = Vec::new();
    for target in &targets {
        let report = run_target(&cargo_fuzz, &root, options, target, object.as_deref())?;
        let line = summary(target, &report);
        println!("fuzz: {line}");
        if let Some(crash) = &report.crash {
            println!(
                "fuzz: {target} crashed on {crash}; reproduce with\n  \
                 RUSTUP_TOOLCHAIN={} {} fuzz run --fuzz-dir fuzz --target-dir target/fuzz {} {target} {crash}",
                options.toolchain,
                cargo_fuzz.display(),
                BUILD_FLAGS.join(" "),
            );
        }
        if report.crash.is_some() || report.error.is_some() {
            failed.push(*target);
        }
        lines.push(line);
    }
    println!("fuzz: summary ({}s per target)", options.seconds);
    for line in &lines {
        println!("  {line}");
    }
    println!("fuzz: done in {:.1}s", started.elapsed().as_secs_f64());
    if !failed.is_empty() {
        bail!(
            "fuzz targets failed: {} (logs in target/fuzz/logs/)",
            failed.join(", ")
        );
    }
    Ok(())
}

fn selected(names: &[String]) -> Result<Vec<&'static str>> {
    if names.is_empty() {
        return Ok(TARGETS.to_vec());
    }
    names
        .iter()
        .map(|name| {
            TARGETS
                .iter()
                .find(|target| **target == name.as_str())
                .copied()
                .with_context(|| format!("no fuzz target {name}; the targets are {TARGETS:?}"))
        })
        .collect()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The pinned cargo-fuzz, installed under `target/fuzz-tools/` unless a working one is there.
fn ensure_cargo_fuzz(root: &Path, toolchain: &str) -> Result<PathBuf> {
    let install_root = root
        .join("target/fuzz-tools")
        .join(format!("cargo-fuzz-{CARGO_FUZZ_VERSION}"));
    let binary = install_root.join("bin/cargo-fuzz");
    let works = |binary: &Path| {
        nightly_command(binary)
            .args(["fuzz", "--version"])
            .output()
            .is_ok_and(|output| output.status.success())
    };
    if works(&binary) {
        return Ok(binary);
    }
    println!(
        "fuzz: installing cargo-fuzz {CARGO_FUZZ_VERSION} into {} (a minute or two)",
        install_root.display()
    );
    let step = Instant::now();
    run_checked(
        nightly_command("cargo")
            .arg(format!("+{toolchain}"))
            .args(["install", "cargo-fuzz", "--locked", "--force", "--version"])
            .arg(format!("={CARGO_FUZZ_VERSION}"))
            .arg("--root")
            .arg(&install_root),
    )
    .context("installing cargo-fuzz failed")?;
    ensure!(works(&binary), "the cargo-fuzz just installed does not run");
    println!(
        "fuzz: installed cargo-fuzz in {:.1}s",
        step.elapsed().as_secs_f64()
    );
    Ok(binary)
}

/// `cargo-fuzz fuzz SUBCOMMAND` for `fuzz/`, with the nightly toolchain and target/fuzz.
fn fuzz_command(
    cargo_fuzz: &Path,
    root: &Path,
    toolchain: &str,
    subcommand: &str,
) -> std::process::Command {
    let mut command = nightly_command(cargo_fuzz);
    command
        .current_dir(root)
        .env("RUSTUP_TOOLCHAIN", toolchain)
        .args(["fuzz", subcommand, "--fuzz-dir"])
        .arg(root.join("fuzz"))
        .arg("--target-dir")
        .arg(root.join("target/fuzz"));
    command
}

fn run_target(
    cargo_fuzz: &Path,
    root: &Path,
    options: &Options,
    target: &str,
    object: Option<&Path>,
) -> Result<Report> {
    let found = root.join("target/fuzz/corpus").join(target);
    let seeds = root.join("fuzz/corpus").join(target);
    let artifacts = root.join("target/fuzz/artifacts").join(target);
    let logs = root.join("target/fuzz/logs");
    for dir in [&found, &artifacts, &logs] {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let log_path = logs.join(format!("{target}.log"));
    let log = fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    println!(
        "fuzz: {target} for {}s (log: {})",
        options.seconds,
        log_path.display()
    );

    let mut command = fuzz_command(cargo_fuzz, root, &options.toolchain, "run");
    command
        .args(BUILD_FLAGS)
        .arg(target)
        // libFuzzer adds what it finds to the first corpus directory and only reads the rest.
        .arg(&found)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={}", options.seconds))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECS}"))
        .arg("-print_final_stats=1")
        // Later flags win: this replaces the artifacts directory cargo-fuzz names in fuzz/.
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .stdout(log.try_clone()?)
        .stderr(log);
    if let Some(object) = object {
        command.env("TETHER_EBPF_OBJECT", object);
    }
    let status = command
        .status()
        .with_context(|| format!("cannot start {command:?}"))?;
    let output = fs::read_to_string(&log_path)
        .with_context(|| format!("cannot read {}", log_path.display()))?;
    let mut report = parse(&output);
    if !status.success() && report.crash.is_none() && report.error.is_none() {
        report.error = Some(format!("cargo fuzz run exited with {status}"));
    }
    if report.crash.is_some() || report.error.is_some() {
        let tail: Vec<&str> = output.lines().rev().take(40).collect();
        println!("fuzz: {target}: the end of its log:");
        for line in tail.iter().rev() {
            println!("  | {line}");
        }
    }
    Ok(report)
}

fn summary(target: &str, report: &Report) -> String {
    let number = |value: Option<u64>| value.map_or_else(|| "?".to_owned(), |v| v.to_string());
    let corpus = report.corpus.map_or_else(
        || "?".to_owned(),
        |(units, bytes)| format!("{units} ({bytes} B)"),
    );
    let outcome = match (&report.crash, &report.error) {
        (Some(crash), _) => format!("CRASH {crash}"),
        (None, Some(error)) => format!("FAILED: {error}"),
        (None, None) => "ok".to_owned(),
    };
    format!(
        "{target:<15} execs {:>9}  cov {:>6}  corpus {:<16} new {:>5}  {outcome}",
        number(report.executed),
        number(report.coverage),
        corpus,
        number(report.new_units),
    )
}

/// Reads libFuzzer's status lines, final stats and crash notes.
fn parse(output: &str) -> Report {
    let mut report = Report::default();
    for line in output.lines() {
        let line = line.trim();
        if let Some(value) = line.strip_prefix("stat::number_of_executed_units:") {
            report.executed = value.trim().parse().ok();
        } else if let Some(value) = line.strip_prefix("stat::new_units_added:") {
            report.new_units = value.trim().parse().ok();
        } else if line.starts_with('#') {
            // `#1234	NEW    cov: 567 ft: 890 corp: 12/3456b ...`
            let mut words = line.split_whitespace();
            while let Some(word) = words.next() {
                match word {
                    "cov:" => report.coverage = words.next().and_then(|v| v.parse().ok()),
                    "corp:" => report.corpus = words.next().and_then(corpus),
                    _ => {}
                }
            }
        } else if let Some((_, path)) = line.split_once("Test unit written to ") {
            report.crash = Some(path.trim().to_owned());
        } else if (line.starts_with("thread '") && line.contains("panicked"))
            || (line.starts_with("==") && line.contains("ERROR:") && report.error.is_none())
        {
            // The panic's line when there is one (it comes first), else the sanitizer's.
            report.error = Some(line.to_owned());
        }
    }
    report
}

/// `12/3456b`, `12/3Kb` or `12/3Mb`: units and bytes.
fn corpus(text: &str) -> Option<(u64, u64)> {
    let (units, size) = text.split_once('/')?;
    let size = size.strip_suffix('b')?;
    let (number, scale) = match size.strip_suffix('K') {
        Some(number) => (number, 1 << 10),
        None => match size.strip_suffix('M') {
            Some(number) => (number, 1 << 20),
            None => (size, 1),
        },
    };
    Some((units.parse().ok()?, number.parse::<u64>().ok()? * scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_output() {
        let output = "\
INFO: Seed: 1234
#2\tINITED cov: 100 ft: 120 corp: 5/1024b exec/s: 0 rss: 40Mb
#512\tNEW    cov: 140 ft: 170 corp: 6/1130b lim: 43 exec/s: 0 rss: 41Mb L: 5/43 MS: 1 ChangeBit-
#70000\tDONE   cov: 150 ft: 190 corp: 9/2Kb lim: 400 exec/s: 2333 rss: 60Mb
Done 70000 runs in 31 second(s)
stat::number_of_executed_units: 70000
stat::average_exec_per_sec:     2258
stat::new_units_added:          4
";
        assert_eq!(
            parse(output),
            Report {
                executed: Some(70000),
                new_units: Some(4),
                coverage: Some(150),
                corpus: Some((9, 2048)),
                crash: None,
                error: None,
            }
        );
    }

    #[test]
    fn reads_a_crash() {
        let output = "\
thread '<unnamed>' panicked at fuzz_targets/cookie_codec.rs:10:5:
boom
==4242== ERROR: libFuzzer: deadly signal
MS: 2 ChangeByte-InsertByte-; base unit: 0000
artifact_prefix='/w/target/fuzz/artifacts/cookie_codec/'; Test unit written to /w/target/fuzz/artifacts/cookie_codec/crash-da39a3ee
";
        let report = parse(output);
        assert_eq!(
            report.crash.as_deref(),
            Some("/w/target/fuzz/artifacts/cookie_codec/crash-da39a3ee")
        );
        assert_eq!(
            report.error.as_deref(),
            Some("thread '<unnamed>' panicked at fuzz_targets/cookie_codec.rs:10:5:")
        );
    }

    #[test]
    fn every_target_has_a_source_and_seeds() {
        let root = workspace_root();
        for target in TARGETS {
            assert!(root
                .join("fuzz/fuzz_targets")
                .join(format!("{target}.rs"))
                .is_file());
            let seeds = fs::read_dir(root.join("fuzz/corpus").join(target))
                .map(|entries| entries.count())
                .unwrap_or(0);
            assert!(seeds > 0, "{target} has no seeds in fuzz/corpus/{target}");
        }
    }
}
