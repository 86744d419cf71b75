//! Runs `h2load` (nghttp2's HTTP/2 load generator) and reads its results into the same shape as
//! wrk's, so an HTTP/2 cell sits in the same table and chart as the HTTP/1.1 ones.
//!
//! h2load prints throughput and errors but no percentiles; its `--log-file` has one line per
//! request (start time, status, microseconds to the end of the response), from which the
//! percentiles are computed here.
use crate::cpu::pinned;
use crate::wrk::{SocketErrors, WrkResult};
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::Path;
use std::time::Duration;
use tether_testkit::process::Proc;

pub struct Load<'a> {
    pub url: &'a str,
    /// Full `Cookie` header value, or none.
    pub cookie: Option<&'a str>,
    pub connections: u32,
    /// Concurrent streams per connection.
    pub streams: u32,
    pub threads: u32,
    pub duration: Duration,
    pub cpus: &'a [usize],
}

/// Runs h2load once; the run is bounded to its duration plus 30 s.
pub fn run(load: &Load, dir: &Path, tag: &str) -> Result<WrkResult> {
    let secs = load.duration.as_secs().max(1);
    let requests_log = dir.join(format!("{tag}.requests"));
    let mut command = pinned(load.cpus, "h2load");
    command
        .arg(format!("--clients={}", load.connections))
        .arg(format!("--threads={}", load.threads))
        .arg(format!("--max-concurrent-streams={}", load.streams))
        .arg(format!("--duration={secs}"))
        .arg("--log-file")
        .arg(&requests_log);
    if let Some(cookie) = load.cookie {
        command.arg("--header").arg(format!("cookie: {cookie}"));
    }
    command.arg(load.url);
    let log = dir.join(format!("{tag}.out"));
    let mut h2load = Proc::spawn("h2load", command, log.clone())?;
    let status = h2load.wait_timeout(Duration::from_secs(secs + 30))?;
    let output = fs::read_to_string(&log).unwrap_or_default();
    if !status.success() {
        bail!("h2load failed ({status}):\n{output}");
    }
    let latencies = fs::read_to_string(&requests_log)
        .with_context(|| format!("h2load wrote no {}", requests_log.display()))?;
    let result = parse(&output, &latencies)
        .with_context(|| format!("cannot read h2load's report:\n{output}"))?;
    // The per-request log is large and read once.
    let _ = fs::remove_file(&requests_log);
    Ok(result)
}

/// h2load's summary (`finished in`, `requests:`, `status codes:`) and its per-request log.
pub fn parse(output: &str, requests_log: &str) -> Result<WrkResult> {
    let mut result = WrkResult::default();
    let mut rps = None;
    let mut seen_requests = false;
    for line in output.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("finished in ") {
            // "finished in 10.00s, 45678.90 req/s, 1.23MB/s"
            let mut parts = rest.split(", ");
            result.duration_s = parts
                .next()
                .and_then(|d| d.strip_suffix('s'))
                .and_then(|d| d.parse().ok())
                .context("bad `finished in` duration")?;
            rps = parts
                .next()
                .and_then(|r| r.strip_suffix(" req/s"))
                .and_then(|r| r.parse::<f64>().ok());
        } else if let Some(rest) = line.strip_prefix("requests: ") {
            // "requests: 456 total, 456 started, 456 done, 450 succeeded, 6 failed, 4 errored, 2 timeout"
            seen_requests = true;
            let count = |what: &str| counted(rest, what);
            result.requests = count("done");
            let errored = count("errored");
            let timeout = count("timeout");
            result.socket_errors = SocketErrors {
                connect: 0,
                read: errored + count("failed").saturating_sub(errored + timeout),
                write: 0,
                timeout,
            };
        } else if let Some(rest) = line.strip_prefix("status codes: ") {
            // "status codes: 456 2xx, 0 3xx, 0 4xx, 0 5xx"
            result.non_2xx = counted(rest, "4xx") + counted(rest, "5xx");
        }
    }
    if !seen_requests {
        bail!("no `requests:` line");
    }
    result.requests_per_sec = rps.context("no req/s in the `finished in` line")?;
    let mut latencies: Vec<f64> = requests_log
        .lines()
        .filter_map(|line| {
            let mut columns = line.split('\t');
            let _start = columns.next()?;
            let status: i64 = columns.next()?.trim().parse().ok()?;
            let micros: f64 = columns.next()?.trim().parse().ok()?;
            (status > 0).then_some(micros)
        })
        .collect();
    if latencies.is_empty() {
        bail!("the per-request log has no completed request");
    }
    latencies.sort_by(f64::total_cmp);
    let at = |p: f64| latencies[((p / 100.0) * (latencies.len() - 1) as f64).round() as usize];
    result.mean_us = latencies.iter().sum::<f64>() / latencies.len() as f64;
    result.p50_us = at(50.0);
    result.p75_us = at(75.0);
    result.p90_us = at(90.0);
    result.p99_us = at(99.0);
    result.p999_us = Some(at(99.9));
    result.max_us = latencies[latencies.len() - 1];
    Ok(result)
}

/// The number before `what` in h2load's `N what, M other` lists.
fn counted(list: &str, what: &str) -> u64 {
    list.split(", ")
        .find_map(|part| {
            let (number, name) = part.trim().split_once(' ')?;
            (name == what).then(|| number.parse().ok())?
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "starting benchmark...
spawning thread #0: 32 total client(s). Timing-based test with 2s of warm-up time and 5s of main duration for measurements.
Warm-up started for thread #0.
progress: 10% of clients started
Warm-up phase is over for thread #0.
Main benchmark duration is started for thread #0.
TLS Protocol: TLSv1.3
Cipher: TLS_AES_256_GCM_SHA384
Server Temp Key: X25519 253 bits
Application protocol: h2
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 5.00s, 41234.60 req/s, 3.55MB/s
requests: 206173 total, 206301 started, 206173 done, 206160 succeeded, 13 failed, 3 errored, 0 timeout
status codes: 206160 2xx, 0 3xx, 10 4xx, 0 5xx
traffic: 17.75MB (18612990) total, 2.10MB (2202456) headers (space savings 90.14%), 4.13MB (4329633) data
                     min         max         mean         sd        +/- sd
time for request:      241us     14.76ms      3.09ms       891us    73.47%
";

    #[test]
    fn reads_the_summary_and_the_percentiles_from_the_request_log() -> Result<()> {
        // 1000 requests of 1..=1000 us, one failed stream (-1) that must not count.
        let mut log: String = (1..=1000)
            .map(|us| format!("1700000000000000\t200\t{us}\n"))
            .collect();
        log.push_str("1700000000000000\t-1\t99999\n");
        let r = parse(SAMPLE, &log)?;
        assert!((r.requests_per_sec - 41_234.6).abs() < 1e-6);
        assert!((r.duration_s - 5.0).abs() < 1e-9);
        assert_eq!(r.requests, 206_173);
        assert_eq!(r.non_2xx, 10);
        assert_eq!(r.socket_errors.read, 13);
        assert_eq!(r.socket_errors.timeout, 0);
        assert!((r.p50_us - 501.0).abs() < 1.0, "p50 {}", r.p50_us);
        assert!((r.p99_us - 990.0).abs() < 1.0, "p99 {}", r.p99_us);
        assert!((r.max_us - 1000.0).abs() < 1e-9);
        assert!(r.problem().is_some());
        Ok(())
    }

    #[test]
    fn a_report_without_completed_requests_is_an_error() {
        assert!(parse(SAMPLE, "").is_err());
        assert!(parse("finished in 1.00s, 0.00 req/s, 0B/s\n", "1\t200\t5\n").is_err());
    }
}
