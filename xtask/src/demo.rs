//! `cargo xtask demo`: the Kong "sticky sessions with drain support" how-to, replayed locally
//! against three echo pods and a real tether, with readable output. It checks every step and
//! exits non-zero if tether does not behave as the how-to says.
use crate::util::build_release_binaries;
use anyhow::{bail, ensure, Context, Result};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tether_testkit::binaries::{
    start_echo, sticky_config, testcert, tether_command, weighted_target,
};
use tether_testkit::fs::{write_atomically, TempDir};
use tether_testkit::net::{config_generation, free_ports, http_get, loopback, HttpResponse, Https};
use tether_testkit::process::Proc;

const COOKIE: &str = "session-id";
/// The HTTPS site's name (curl resolves it to the TLS listener).
const SITE: &str = "shop.example";

#[derive(clap::Args)]
pub struct Options {}

struct Pod {
    name: String,
    address: SocketAddr,
    weight: u32,
    present: bool,
}

pub fn run(_options: &Options) -> Result<()> {
    let bin = build_release_binaries()?;
    let scratch = TempDir::new("demo")?;
    let ports = free_ports(6)?;
    let proxy = loopback(ports[0]);
    let admin = loopback(ports[1]);
    let https = loopback(ports[5]);
    let mut pods: Vec<Pod> = (0..3)
        .map(|i| Pod {
            name: format!("pod-{}", i + 1),
            address: loopback(ports[2 + i]),
            weight: 100,
            present: true,
        })
        .collect();
    let mut backends = Vec::new();
    for pod in &pods {
        backends.push(start_echo(&bin, scratch.path(), &pod.name, pod.address)?);
    }
    let site = Site::new(&bin, scratch.path(), https)?;
    let config = scratch.path().join("tether.yaml");
    let listeners = Listeners {
        proxy,
        admin,
        tls: site.proxy_yaml(),
    };
    write_config(&config, &listeners, &pods)?;
    let mut command = tether_command(Command::new(bin.join("tether")), &config);
    command
        .arg("--session-key")
        .arg(scratch.path().join("session.key"));
    let mut tether = Proc::spawn("tether", command, scratch.path().join("tether.log"))?;
    tether.wait_ready(proxy, Duration::from_secs(10))?;

    println!(
        "Three echo pods answer on {}, {} and {}.",
        pods[0].address, pods[1].address, pods[2].address
    );
    println!("tether proxies /echo on {proxy} with this configuration:\n");
    println!("{}", indent(&std::fs::read_to_string(&config)?));

    step("1. The first request sets the session cookie");
    println!("$ curl -i http://{proxy}/echo");
    let first = http_get(proxy, "/echo", &[])?;
    show_response(&first);
    let cookie = first
        .set_cookie(COOKIE)
        .context("the first response has no session-id cookie")?;
    let pinned = pod_of(&first)?;
    println!("\nThe session is pinned to {pinned}.");

    step("2. Five requests with the cookie hit one pod; five without it spread");
    println!("$ for i in 1..5; do curl -H 'Cookie: {cookie}' http://{proxy}/echo; done");
    let with = replay(proxy, Some(&cookie), 5)?;
    ensure!(
        with.iter().all(|p| *p == pinned),
        "requests with the cookie left {pinned}: {with:?}"
    );
    println!("\n$ for i in 1..5; do curl http://{proxy}/echo; done");
    let without = replay(proxy, None, 5)?;
    ensure!(
        distinct(&without) > 1,
        "requests without a cookie all went to one pod: {without:?}"
    );

    step("3. The same session over HTTPS, with HTTP/2");
    println!(
        "$ curl -i --http2 --cacert site.pem --resolve {SITE}:{port}:127.0.0.1 \\\n    \
         -H 'Cookie: {cookie}' https://{SITE}:{port}/echo",
        port = https.port()
    );
    let over_h2 = site.curl(Some(&cookie))?;
    show_curl(&over_h2);
    ensure!(
        over_h2.status_line.starts_with("HTTP/2 "),
        "curl did not speak HTTP/2 over TLS: {}",
        over_h2.status_line
    );
    ensure!(
        over_h2.pod == pinned,
        "the session's HTTP/2 request reached {}, not {pinned}",
        over_h2.pod
    );
    println!(
        "\nTLS offered h2 (ALPN), and the cookie kept the session on {pinned}. A new session \
         over HTTPS gets its cookie the same way:\n"
    );
    println!(
        "$ curl -i --http2 --cacert site.pem --resolve {SITE}:{port}:127.0.0.1 https://{SITE}:{port}/echo",
        port = https.port()
    );
    let fresh_h2 = site.curl(None)?;
    show_curl(&fresh_h2);
    ensure!(
        fresh_h2
            .set_cookie
            .as_deref()
            .is_some_and(|c| c.starts_with(&format!("{COOKIE}="))),
        "a new HTTPS session got no {COOKIE} cookie"
    );

    step(&format!(
        "4. {pinned} starts terminating: drained (weight 0)"
    ));
    let drained = pods
        .iter_mut()
        .find(|p| p.name == pinned)
        .context("pinned pod is not one of ours")?;
    drained.weight = 0;
    apply(&config, &listeners, &pods, &mut tether)?;
    println!("The configuration now lists {pinned} with weight 0.\n");
    println!("$ curl -H 'Cookie: {cookie}' http://{proxy}/echo   # the existing session");
    let kept = replay(proxy, Some(&cookie), 3)?;
    ensure!(
        kept.iter().all(|p| *p == pinned),
        "the drained session moved: {kept:?}"
    );
    println!("\nThe existing session stays on {pinned}.\n");
    println!("$ curl http://{proxy}/echo   # new sessions, six times");
    let fresh = replay(proxy, None, 6)?;
    ensure!(
        !fresh.contains(&pinned),
        "a new session went to the draining {pinned}: {fresh:?}"
    );
    println!("\nNo new session goes to {pinned}.");

    step(&format!("5. {pinned} is gone: removed from the targets"));
    if let Some(pod) = pods.iter_mut().find(|p| p.name == pinned) {
        pod.present = false;
    }
    apply(&config, &listeners, &pods, &mut tether)?;
    println!("$ curl -i -H 'Cookie: {cookie}' http://{proxy}/echo");
    let moved = http_get(proxy, "/echo", &[("Cookie", &cookie)])?;
    show_response(&moved);
    let new_pod = pod_of(&moved)?;
    let new_cookie = moved
        .set_cookie(COOKIE)
        .context("the moved session got no new cookie")?;
    ensure!(
        new_pod != pinned,
        "the session still reached the removed {pinned}"
    );
    ensure!(
        new_cookie != cookie,
        "the moved session kept its old cookie"
    );
    println!("\nThe session moved to {new_pod} and got a new cookie; it stays there:");
    let after = replay(proxy, Some(&new_cookie), 3)?;
    ensure!(
        after.iter().all(|p| *p == new_pod),
        "the re-pinned session is not sticky: {after:?}"
    );

    step("Counters (from the admin endpoint)");
    let metrics = http_get(admin, "/metrics", &[])?;
    for line in metrics.body.lines().filter(|l| {
        (l.starts_with("tether_new_pins")
            || l.starts_with("tether_repins")
            || l.starts_with("tether_drained_session"))
            && !l.ends_with(" 0")
    }) {
        println!("  {line}");
    }
    tether.ensure_running()?;
    println!("\nEvery step behaved as the how-to says.");
    Ok(())
}

/// The demo's HTTPS site: a self-signed certificate for [`SITE`] (made by `tether-testcert`)
/// served on `address`, and curl trusting it.
struct Site {
    address: SocketAddr,
    cert: PathBuf,
    key: PathBuf,
}

/// What curl showed of an HTTPS response.
struct Curled {
    status_line: String,
    set_cookie: Option<String>,
    pod: String,
}

impl Site {
    fn new(bin: &Path, dir: &Path, address: SocketAddr) -> Result<Self> {
        let (cert, key) = testcert(bin, dir, "site", SITE, None)?;
        Ok(Self { address, cert, key })
    }

    fn proxy_yaml(&self) -> String {
        format!(
            "  tls:\n    listen: {}\n    certificates:\n      - {{certFile: {}, keyFile: {}}}\n",
            self.address,
            self.cert.display(),
            self.key.display()
        )
    }

    /// `curl -i --http2` for `/echo` on the site, with `cookie` if given.
    fn curl(&self, cookie: Option<&str>) -> Result<Curled> {
        let headers: Vec<(&str, &str)> = cookie.map(|c| ("Cookie", c)).into_iter().collect();
        let fetched = Https {
            address: self.address,
            name: Some(SITE),
            path: "/echo",
            headers: &headers,
            http2: true,
            ca: Some(&self.cert),
        }
        .get()?;
        Ok(Curled {
            set_cookie: fetched.response.set_cookie(COOKIE),
            pod: pod_of(&fetched.response)?,
            status_line: fetched.status_line,
        })
    }
}

fn show_curl(response: &Curled) {
    println!("< {}", response.status_line);
    if let Some(cookie) = &response.set_cookie {
        println!("< set-cookie: {cookie}; ...");
    }
    println!("Running on Pod {}.", response.pod);
}

fn step(title: &str) {
    println!("\n== {title} ==\n");
}

/// Where tether listens: plaintext, admin, and the `tls:` lines of its `proxy:` block.
struct Listeners {
    proxy: SocketAddr,
    admin: SocketAddr,
    tls: String,
}

fn write_config(path: &Path, listeners: &Listeners, pods: &[Pod]) -> Result<()> {
    let targets: Vec<String> = pods
        .iter()
        .filter(|p| p.present)
        .map(|p| weighted_target(p.address, p.weight, &p.name))
        .collect();
    write_atomically(
        path,
        &sticky_config(
            listeners.proxy,
            &listeners.tls,
            listeners.admin,
            "/echo",
            COOKIE,
            &targets,
        ),
    )
}

/// Rewrites the configuration and waits until tether reports the new generation.
fn apply(path: &Path, listeners: &Listeners, pods: &[Pod], tether: &mut Proc) -> Result<()> {
    let before = config_generation(listeners.admin)?;
    write_config(path, listeners, pods)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while config_generation(listeners.admin)? <= before {
        tether.ensure_running()?;
        if Instant::now() > deadline {
            bail!(
                "tether did not apply the new configuration within 10 s:\n{}",
                tether.log_tail(10)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn replay(proxy: SocketAddr, cookie: Option<&str>, times: usize) -> Result<Vec<String>> {
    let headers: Vec<(&str, &str)> = cookie.map(|c| ("Cookie", c)).into_iter().collect();
    let mut pods = Vec::with_capacity(times);
    for _ in 0..times {
        let response = http_get(proxy, "/echo", &headers)?;
        print!("{}", response.body);
        pods.push(pod_of(&response)?);
    }
    Ok(pods)
}

fn pod_of(response: &HttpResponse) -> Result<String> {
    ensure!(
        response.status == 200,
        "status {}: {}",
        response.status,
        response.body
    );
    response
        .body
        .trim()
        .strip_prefix("Running on Pod ")
        .and_then(|rest| rest.strip_suffix('.'))
        .map(str::to_string)
        .with_context(|| format!("unexpected body {:?}", response.body))
}

fn distinct(pods: &[String]) -> usize {
    pods.iter().collect::<std::collections::BTreeSet<_>>().len()
}

fn show_response(response: &HttpResponse) {
    println!("< HTTP/1.1 {}", response.status);
    let shown: BTreeMap<&str, &str> = response
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie") || k.eq_ignore_ascii_case("x-pod"))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    for (name, value) in shown {
        println!("< {name}: {value}");
    }
    print!("{}", response.body);
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}
