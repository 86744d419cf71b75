//! The kernel data plane end to end, in network namespaces: a client, a node running the real
//! `tether` with XDP on its client-facing veth (and TC on that veth's egress), and three pods
//! with real TCP servers. Each test builds its own namespaces (unique names, deleted on drop),
//! its own pin directory (removed with `tether cleanup` on drop), and never touches the host's
//! interfaces; the 10.x addresses exist only inside its namespaces.
//!
//! Transmit checksum offload is off on the client's and the pods' veths, so every packet
//! carries a complete checksum that the receiver verifies: a wrong incremental update in the
//! XDP DNAT or the TC reverse NAT would show as a connection that never completes.
//!
//! Privileged: root runs them; otherwise they fail, unless `TETHER_SKIP_PRIVILEGED=1`.
use crate::container::{self, Container};
use crate::fixtures::{dataplane_ready, loading_blocking, TETHER};
use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tether_testkit::netns::{privileged, unique, veth, Netns};
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const VIP_PORT: u16 = 80;
const POD_PORT: u16 = 8080;
/// Where the pods also answer HTTP, for the proxy's sticky service (labs with `http`).
const POD_HTTP_PORT: u16 = 8081;
/// The proxy's listener on the node, and its session cookie.
const PROXY: &str = "10.77.0.1:8000";
const SESSION_COOKIE: &str = "s";
const UDP_VIP_PORT: u16 = 53;
/// Where the UDP service's targets point: no pod listens there.
const UDP_POD_PORT: u16 = 5353;
const PODS: usize = 3;
/// Connections opened to see them spread.
const SPREAD: usize = 30;
/// Bound on every wait for the agent, the maps or a socket.
const WAIT: Duration = Duration::from_secs(20);
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// `dataplane.podDelivery`: how steered packets reach a pod interface.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Delivery {
    /// After the node's GRO, into the pod's namespace (`bpf_redirect_peer`).
    Peer,
    /// Transmitted into the pod's veth by XDP (`XDP_REDIRECT`).
    Redirect,
}

impl Delivery {
    fn name(self) -> &'static str {
        match self {
            Delivery::Peer => "peer",
            Delivery::Redirect => "redirect",
        }
    }
}

fn pod_addr(pod: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, pod as u8 + 1, 2)
}

fn pod_target(pod: usize) -> SocketAddr {
    SocketAddr::from((pod_addr(pod), POD_PORT))
}

// ---------------------------------------------------------------------------------------------
// Pods: line servers that answer "pod-N LINE", and HTTP servers that answer with their name.

struct Pod {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Pod {
    fn start(netns: &Netns, index: usize) -> Result<Self> {
        let name = format!("pod-{index}");
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (port, answer) in [(POD_PORT, answer as Answer), (POD_HTTP_PORT, answer_http)] {
            let listener = netns.run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))??;
            listener.set_nonblocking(true)?;
            let stop = stop.clone();
            let name = name.clone();
            threads.push(std::thread::spawn(move || {
                serve(listener, &name, &stop, answer)
            }));
        }
        Ok(Self { stop, threads })
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// How a pod's server answers one connection.
type Answer = fn(TcpStream, &str, &AtomicBool);

fn serve(listener: TcpListener, name: &str, stop: &Arc<AtomicBool>, answer: Answer) {
    let mut connections = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let stop = stop.clone();
                let name = name.to_owned();
                connections.push(std::thread::spawn(move || answer(stream, &name, &stop)));
            }
            Err(error) if error.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => break,
        }
    }
    for connection in connections {
        let _ = connection.join();
    }
}

/// Answers each HTTP/1.1 request (a head, no body) with 200, `x-pod: NAME` and NAME, keeping
/// the connection, until the peer closes, an error, or stop.
fn answer_http(stream: TcpStream, name: &str, stop: &AtomicBool) {
    let mut head_bytes = 0;
    each_line(stream, stop, |line| {
        head_bytes += line.len();
        if head_bytes > 16 * 1024 {
            return None;
        }
        if line != "\r\n" {
            return Some(String::new());
        }
        head_bytes = 0;
        Some(format!(
            "HTTP/1.1 200 OK\r\nx-pod: {name}\r\ncontent-length: {}\r\n\r\n{name}",
            name.len()
        ))
    });
}

/// Answers each line with "NAME LINE" until the peer closes, an error, or stop.
fn answer(stream: TcpStream, name: &str, stop: &AtomicBool) {
    each_line(stream, stop, |line| Some(format!("{name} {line}")));
}

/// Reads `stream` line by line and writes what `reply` makes of each line, until the peer
/// closes, an error, `reply` says `None`, or stop.
fn each_line(stream: TcpStream, stop: &AtomicBool, mut reply: impl FnMut(&str) -> Option<String>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {
                let Some(answer) = reply(&line) else {
                    return;
                };
                if !answer.is_empty() && writer.write_all(answer.as_bytes()).is_err() {
                    return;
                }
                line.clear();
            }
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The topology and the agent

/// Everything one test runs on. Dropped in field order: the agent stops, its pins are
/// cleaned up (detaching the programs), the pods stop, then the namespaces go.
struct Lab {
    agent: Option<Child>,
    /// Set: the agent runs from the image, as the DaemonSet runs it (a container named
    /// `{id}-agent` in the node namespace), and `tether maps` from a second container.
    container: Option<Container>,
    pins: PathBuf,
    config: PathBuf,
    log: PathBuf,
    dir: PathBuf,
    /// Whether the configuration lists the node's pod veths as `podInterfaces`, and with which
    /// `podDelivery`.
    pod_interfaces: bool,
    /// The configuration also has the proxy on [`PROXY`] with a sticky service over the pods'
    /// HTTP servers, and a session key file (created by the lab, as the DaemonSet's Secret).
    http: bool,
    pod_delivery: Delivery,
    /// `dataplane.xdpMode`.
    xdp_mode: &'static str,
    /// `TETHER_TC_ATTACH` for the agent (`netlink` forces the pre-6.6 path), if set.
    tc_attach: Option<&'static str>,
    /// Whether the configuration also has the UDP service `VIP:53` → the targets' port 5353,
    /// where no pod listens.
    udp_service: bool,
    pods: Vec<Pod>,
    client: Netns,
    node: Netns,
    pod_namespaces: Vec<Netns>,
    id: String,
}

impl Lab {
    fn new(tag: &str) -> Result<Self> {
        let id = unique(&format!("tt-{tag}"));
        let client = Netns::new(format!("{id}-c"))?;
        let node = Netns::new(format!("{id}-n"))?;
        veth(&client, "c0", &node, "n0")?;
        client.ip(&["addr", "add", "10.77.0.2/24", "dev", "c0"])?;
        client.ip(&["route", "add", &format!("{VIP}/32"), "via", "10.77.0.1"])?;
        client.disable_tx_checksum("c0")?;
        node.ip(&["addr", "add", "10.77.0.1/24", "dev", "n0"])?;
        node.sysctl("net.ipv4.ip_forward", "1")?;
        let dir = std::env::temp_dir().join(&id);
        std::fs::create_dir_all(&dir)?;
        let mut lab = Self {
            agent: None,
            container: None,
            pins: PathBuf::from("/sys/fs/bpf").join(&id),
            config: dir.join("tether.yaml"),
            log: dir.join("tether.log"),
            dir,
            pod_interfaces: false,
            http: false,
            pod_delivery: Delivery::Peer,
            xdp_mode: "native",
            tc_attach: None,
            udp_service: false,
            pods: Vec::new(),
            client,
            node,
            pod_namespaces: Vec::new(),
            id,
        };
        for pod in 0..PODS {
            lab.add_pod(pod)?;
        }
        Ok(lab)
    }

    /// A lab whose configuration lists the node's pod veths (`p*`) as `podInterfaces`: steered
    /// packets go straight to them and replies straight out of `n0`. With
    /// [`Delivery::Redirect`] the pods' veths have GRO on, hence NAPI, which a veth needs to
    /// take frames XDP transmits into its peer; the peer path needs none.
    fn delivering(tag: &str, delivery: Delivery) -> Result<Self> {
        let mut lab = Self::new(tag)?;
        lab.pod_interfaces = true;
        lab.pod_delivery = delivery;
        if delivery == Delivery::Redirect {
            for netns in &lab.pod_namespaces {
                netns.enable_gro("eth0")?;
            }
        }
        Ok(lab)
    }

    /// Pod `pod`: its namespace, a veth `p<pod>` on the node, its server.
    fn add_pod(&mut self, pod: usize) -> Result<()> {
        let netns = Netns::new(format!("{}-p{pod}", self.id))?;
        let node_side = format!("p{pod}");
        veth(&netns, "eth0", &self.node, &node_side)?;
        netns.ip(&[
            "addr",
            "add",
            &format!("{}/24", pod_addr(pod)),
            "dev",
            "eth0",
        ])?;
        let gateway = Ipv4Addr::new(10, 77, pod as u8 + 1, 1);
        netns.ip(&["route", "add", "default", "via", &gateway.to_string()])?;
        netns.disable_tx_checksum("eth0")?;
        if self.pod_interfaces && self.pod_delivery == Delivery::Redirect {
            netns.enable_gro("eth0")?;
        }
        self.node
            .ip(&["addr", "add", &format!("{gateway}/24"), "dev", &node_side])?;
        self.pods.push(Pod::start(&netns, pod)?);
        self.pod_namespaces.push(netns);
        Ok(())
    }

    /// Writes the configuration: the pods in `targets` with their weights.
    fn configure(&self, targets: &[(usize, u32)]) -> Result<()> {
        let pod_interfaces = if self.pod_interfaces {
            format!(
                "  podInterfaces: [\"p*\"]\n  podDelivery: {}\n",
                self.pod_delivery.name()
            )
        } else {
            String::new()
        };
        let proxy = if self.http {
            // The key's path as the agent sees it: the configuration's directory, mounted at
            // /etc/tether in a container.
            let key = if self.container.is_some() {
                PathBuf::from("/etc/tether/session.key")
            } else {
                self.dir.join("session.key")
            };
            if !self.dir.join("session.key").exists() {
                std::fs::write(self.dir.join("session.key"), [7u8; 32])?;
            }
            format!(
                "proxy:\n  listen: {PROXY}\nsessionKey:\n  file: {}\nroutes:\n  - {{match: {{pathPrefix: /}}, service: shop}}\n",
                key.display()
            )
        } else {
            String::new()
        };
        let mut yaml = format!(
            "{proxy}dataplane:\n  interfaces: [n0]\n  xdpMode: {}\n{pod_interfaces}services:\n  web:\n    listen: {VIP}:{VIP_PORT}\n    protocol: tcp\n    targets:\n",
            self.xdp_mode
        );
        for (pod, weight) in targets {
            yaml.push_str(&format!(
                "      - {{address: {}, weight: {weight}}}\n",
                pod_target(*pod)
            ));
        }
        if self.udp_service {
            yaml.push_str(&format!(
                "  dns:\n    listen: {VIP}:{UDP_VIP_PORT}\n    protocol: udp\n    targets:\n"
            ));
            for (pod, weight) in targets {
                yaml.push_str(&format!(
                    "      - {{address: {}:{UDP_POD_PORT}, weight: {weight}}}\n",
                    pod_addr(*pod)
                ));
            }
        }
        if self.http {
            yaml.push_str(&format!(
                "  shop:\n    policy: {{algorithm: sticky-sessions, hashOn: {{input: none}}, stickySessions: {{cookie: {SESSION_COOKIE}, cookiePath: /}}}}\n    targets:\n"
            ));
            for (pod, weight) in targets {
                yaml.push_str(&format!(
                    "      - {{address: {}:{POD_HTTP_PORT}, weight: {weight}}}\n",
                    pod_addr(*pod)
                ));
            }
        }
        let temporary = self.config.with_extension("tmp");
        std::fs::write(&temporary, yaml)?;
        std::fs::rename(&temporary, &self.config)?;
        Ok(())
    }

    /// The agent's container, when it runs from the image.
    fn container_name(&self) -> String {
        format!("{}-agent", self.id)
    }

    /// Starts `tether run` in the node namespace and waits until it runs.
    fn start_agent(&mut self) -> Result<()> {
        let marker = self.logs().matches("tether is running").count();
        self.launch_agent()?;
        let deadline = Instant::now() + WAIT;
        loop {
            if self.logs().matches("tether is running").count() > marker {
                return Ok(());
            }
            if let Some(exit) = self.agent_exit()? {
                bail!("tether exited with {exit}:\n{}", self.logs());
            }
            ensure!(
                Instant::now() < deadline,
                "tether did not start:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `tether run` in the node namespace: a child process, or a container from the image.
    fn launch_agent(&mut self) -> Result<()> {
        if let Some(container) = &self.container {
            ensure!(
                self.tc_attach.is_none(),
                "TETHER_TC_ATTACH is not passed into the agent's container"
            );
            let pins = self.pins.display().to_string();
            let args = [
                "run",
                "--config",
                "/etc/tether/tether.yaml",
                "--pin-dir",
                &pins,
            ];
            return container.start(&self.container_name(), &self.node.path(), &self.dir, &args);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut command = self.node.command(TETHER)?;
        if let Some(tc_attach) = self.tc_attach {
            command.env(tether::dataplane::TC_ATTACH_ENV, tc_attach);
        }
        let child = command
            .args(["run", "--config"])
            .arg(&self.config)
            .arg("--pin-dir")
            .arg(&self.pins)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("start tether")?;
        self.agent = Some(child);
        Ok(())
    }

    /// How the agent ended, if it did: the child's status or the container's exit code.
    fn agent_exit(&mut self) -> Result<Option<String>> {
        if self.container.is_some() {
            return Ok(container::state(&self.container_name())?.map(|code| format!("code {code}")));
        }
        Ok(self
            .agent
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
            .map(|status| status.to_string()))
    }

    /// SIGTERM, and waits for the exit.
    fn stop_agent(&mut self) -> Result<()> {
        if self.container.is_some() {
            // The stopped container's logs join the file, as a restarted pod's previous logs.
            let (code, logs) = container::stop(&self.container_name())?;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)?;
            file.write_all(logs.as_bytes())?;
            ensure!(
                code == 0,
                "the agent's container exited with {code}:\n{logs}"
            );
            return Ok(());
        }
        let Some(mut child) = self.agent.take() else {
            return Ok(());
        };
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait()? {
                ensure!(status.success(), "tether exited with {status}");
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("tether did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn logs(&self) -> String {
        let mut logs = std::fs::read_to_string(&self.log).unwrap_or_default();
        if self.container.is_some() {
            logs.push_str(&container::logs(&self.container_name()));
        }
        logs
    }

    /// `GET /` through the proxy from the client's namespace, with the session cookie if given.
    fn http_get(&self, cookie: Option<&str>) -> Result<tether_testkit::net::HttpResponse> {
        let proxy: SocketAddr = PROXY.parse()?;
        let headers: Vec<(&str, &str)> = cookie.map(|c| ("Cookie", c)).into_iter().collect();
        self.client
            .run(|| tether_testkit::net::http_get(proxy, "/", &headers))?
    }

    /// `tether maps VIEW --json`, run as its own process as an operator would (from a second
    /// container when the agent runs from the image).
    fn maps(&self, view: &str) -> Result<Value> {
        if let Some(container) = &self.container {
            let pins = self.pins.display().to_string();
            let output = container.exec(
                &self.node.path(),
                &["maps", view, "--json", "--pin-dir", &pins],
            )?;
            return Ok(serde_json::from_slice(&output)?);
        }
        let output = std::process::Command::new(TETHER)
            .args(["maps", view, "--json", "--pin-dir"])
            .arg(&self.pins)
            .output()?;
        ensure!(
            output.status.success(),
            "tether maps {view}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(serde_json::from_slice(&output.stdout)?)
    }

    /// The targets in the maps: address → state.
    fn target_states(&self) -> Result<BTreeMap<String, String>> {
        let targets = self.maps("targets")?;
        Ok(targets["targets"]
            .as_array()
            .context("targets")?
            .iter()
            .map(|t| {
                (
                    t["address"].as_str().unwrap_or_default().to_owned(),
                    t["state"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect())
    }

    /// Rewrites the configuration and waits until the maps show `expected` target states.
    fn reconfigure(&self, targets: &[(usize, u32)], expected: &[(usize, &str)]) -> Result<()> {
        self.configure(targets)?;
        let expected: BTreeMap<String, String> = expected
            .iter()
            .map(|(pod, state)| (pod_target(*pod).to_string(), state.to_string()))
            .collect();
        let deadline = Instant::now() + WAIT;
        loop {
            let states = self.target_states()?;
            if states == expected {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "the maps show {states:?}, expected {expected:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A global counter of the kernel programs, from `tether maps stats --json`.
    fn counter(&self, name: &str) -> Result<u64> {
        let stats = self.maps("stats")?;
        stats["counters"][name]
            .as_u64()
            .with_context(|| format!("no counter {name} in {stats}"))
    }

    /// How `tether maps interfaces --json`, run in the node's namespace, says steered packets
    /// reach `interface` (`peer`, `redirect`, `stack`; null for an uplink); `None` when the
    /// interface is not listed.
    fn delivery_to(&self, interface: &str) -> Result<Option<Value>> {
        let output = self
            .node
            .command(TETHER)?
            .args(["maps", "interfaces", "--json", "--pin-dir"])
            .arg(&self.pins)
            .output()?;
        ensure!(
            output.status.success(),
            "tether maps interfaces: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let document: Value = serde_json::from_slice(&output.stdout)?;
        let listed = document["interfaces"]
            .as_array()
            .context("an interfaces array")?
            .iter()
            .find(|entry| entry["name"] == interface);
        Ok(listed.map(|entry| entry["delivery"].clone()))
    }

    /// Waits until `tether maps interfaces` lists `interface` with `delivery`.
    fn wait_for_delivery(&self, interface: &str, delivery: Delivery) -> Result<()> {
        let deadline = Instant::now() + WAIT;
        loop {
            let listed = self.delivery_to(interface)?;
            if listed == Some(Value::from(delivery.name())) {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{interface} listed with delivery {listed:?}, expected {delivery:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `tc filter show dev INTERFACE HOOK` in the node's namespace.
    fn tc_filters(&self, interface: &str, hook: &str) -> Result<String> {
        let output = self
            .node
            .command("tc")?
            .args(["filter", "show", "dev", interface, hook])
            .output()?;
        ensure!(output.status.success(), "tc filter show: {output:?}");
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Datagrams the node's stack forwarded (`Ip: ForwDatagrams` of its /proc/net/snmp).
    fn node_forwarded(&self) -> Result<u64> {
        let snmp = self
            .node
            .run(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))??;
        let mut ip = snmp.lines().filter(|line| line.starts_with("Ip:"));
        let (names, values) = (
            ip.next().context("Ip: names")?,
            ip.next().context("Ip: values")?,
        );
        let index = names
            .split_whitespace()
            .position(|name| name == "ForwDatagrams")
            .context("ForwDatagrams")?;
        Ok(values
            .split_whitespace()
            .nth(index)
            .context("ForwDatagrams value")?
            .parse()?)
    }

    /// The pinned links of the pod-interface reply program: interface names.
    fn pod_links(&self) -> Vec<String> {
        let mut links: Vec<String> = std::fs::read_dir(self.pins.join("links"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                // A pinned link, or the record of a netlink filter (`nl-`).
                let name = name.strip_prefix("nl-").unwrap_or(&name);
                let rest = name.strip_prefix("from-pod-")?;
                Some(rest.split_once('-')?.1.to_owned())
            })
            .collect();
        links.sort();
        links
    }

    /// Waits until the pod-interface links are exactly `expected`.
    fn wait_for_pod_links(&self, expected: &[&str]) -> Result<()> {
        let deadline = Instant::now() + WAIT;
        loop {
            let links = self.pod_links();
            if links == expected {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "pod-interface links {links:?}, expected {expected:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A connection from the client to the VIP.
    fn connect(&self) -> Result<Connection> {
        let stream = self
            .client
            .run(|| TcpStream::connect_timeout(&SocketAddr::from((VIP, VIP_PORT)), IO_TIMEOUT))?
            .context("connect to the VIP")?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Connection { stream, reader })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.container.is_some() {
            container::remove(&self.container_name());
        }
        // Detaches the programs and removes the maps; the namespaces then go with the fields.
        let cleanup = std::process::Command::new(TETHER)
            .args(["cleanup", "--pin-dir"])
            .arg(&self.pins)
            .output();
        if let Ok(output) = cleanup {
            if !output.status.success() {
                eprintln!("cleanup: {}", String::from_utf8_lossy(&output.stderr));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        self.pods.clear();
    }
}

struct Connection {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Connection {
    /// Sends a line and returns the pod that echoed it.
    fn ask(&mut self, line: &str) -> Result<String> {
        self.stream.write_all(format!("{line}\n").as_bytes())?;
        let mut answer = String::new();
        let read = self.reader.read_line(&mut answer)?;
        ensure!(read > 0, "the connection was closed");
        let (pod, echoed) = answer.trim_end().split_once(' ').context("an answer")?;
        ensure!(echoed == line, "echoed {echoed:?} for {line:?}");
        Ok(pod.to_owned())
    }

    fn local_port(&self) -> Result<u16> {
        Ok(self.stream.local_addr()?.port())
    }
}

/// Opens `count` connections and returns how many each pod took.
fn spread(lab: &Lab, count: usize) -> Result<BTreeMap<String, usize>> {
    let mut pods = BTreeMap::new();
    for i in 0..count {
        let mut connection = lab.connect()?;
        let pod = connection.ask(&format!("hello {i}"))?;
        *pods.entry(pod).or_default() += 1;
    }
    Ok(pods)
}

fn pod_name(pod: usize) -> String {
    format!("pod-{pod}")
}

fn pod_index(name: &str) -> Result<usize> {
    name.strip_prefix("pod-")
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("pod name {name}"))
}

/// Opens a long-lived connection, then drains its pod (weight 0) and waits for the maps to show
/// it: the connection, its pod's name and index.
fn drain_a_long_connections_pod(lab: &Lab) -> Result<(Connection, String, usize)> {
    let mut long = lab.connect()?;
    let pinned = long.ask("first")?;
    let pinned_pod = pod_index(&pinned)?;
    let mut targets = all_active();
    targets[pinned_pod].1 = 0;
    let states: Vec<(usize, &str)> = (0..PODS)
        .map(|pod| {
            (
                pod,
                if pod == pinned_pod {
                    "draining"
                } else {
                    "active"
                },
            )
        })
        .collect();
    lab.reconfigure(&targets, &states)?;
    Ok((long, pinned, pinned_pod))
}

fn all_active() -> Vec<(usize, u32)> {
    (0..PODS).map(|pod| (pod, 100)).collect()
}

// ---------------------------------------------------------------------------------------------
// Tests

/// New connections spread; a long-lived connection keeps its pod after the pod is drained
/// while every new connection avoids it; `tether maps flows --json` shows the flow; the
/// connection survives a restart of the agent (and the time it is down).
#[test]
fn drained_flows_stay_and_survive_an_agent_restart() -> Result<()> {
    if !dataplane_ready("drained_flows_stay_and_survive_an_agent_restart") {
        return Ok(());
    }
    let _machine = loading_blocking();
    drained_flows_stay_and_survive_a_restart(Lab::new("drain")?)
}

/// The same scenario with the agent started as the DaemonSet starts it: from the image, with
/// the rendered DaemonSet's securityContext and nothing more; `tether maps` from a second
/// container, and the restart a new container.
#[test]
fn the_image_runs_the_data_plane_with_the_daemonsets_privileges_only() -> Result<()> {
    let test = "the_image_runs_the_data_plane_with_the_daemonsets_privileges_only";
    if !dataplane_ready(test) {
        return Ok(());
    }
    let Some(container) = Container::from_env(test)? else {
        return Ok(());
    };
    eprintln!("{test}: podman run {}", container.described);
    let _machine = loading_blocking();
    let mut lab = Lab::new("image")?;
    lab.container = Some(container);
    drained_flows_stay_and_survive_a_restart(lab)
}

/// A rolling update: the agent's container is replaced by one from a new image reference,
/// on the same pinned maps and the same session key. An established L4 flow keeps its pod
/// through the swap, and so does a pinned L7 session; the new agent swaps its programs into the
/// pinned links.
#[test]
fn an_upgrade_to_a_new_image_keeps_flows_and_sessions() -> Result<()> {
    let test = "an_upgrade_to_a_new_image_keeps_flows_and_sessions";
    if !dataplane_ready(test) {
        return Ok(());
    }
    let Some(container) = Container::from_env(test)? else {
        return Ok(());
    };
    let next = container.tagged("upgrade")?;
    let _machine = loading_blocking();
    let mut lab = Lab::new("upgrade")?;
    lab.http = true;
    lab.container = Some(container);
    lab.configure(&all_active())?;
    lab.start_agent()?;

    // A session through the proxy, and a long-lived flow through the kernel path.
    let first = lab.http_get(None)?;
    ensure!(
        first.status == 200,
        "status {}: {}",
        first.status,
        first.body
    );
    let cookie = first
        .set_cookie(SESSION_COOKIE)
        .context("no session cookie")?;
    let session_pod = first.header("x-pod").context("x-pod")?.to_string();
    let mut long = lab.connect()?;
    let flow_pod = long.ask("before the upgrade")?;

    // The upgrade: the old container stops, one from the new image starts on the same pins.
    lab.stop_agent()?;
    assert_eq!(long.ask("between the two")?, flow_pod);
    lab.container = Some(next);
    lab.start_agent()?;
    let logs = lab.logs();
    assert!(
        logs.contains("program replaced in the pinned link"),
        "{logs}"
    );
    for i in 0..5 {
        assert_eq!(long.ask(&format!("after the upgrade {i}"))?, flow_pod);
        let again = lab.http_get(Some(&cookie))?;
        ensure!(
            again.status == 200,
            "status {}: {}",
            again.status,
            again.body
        );
        assert_eq!(
            again.header("x-pod"),
            Some(session_pod.as_str()),
            "the session moved"
        );
        // The new agent took the cookie as valid (the key is the same): no new pin.
        assert_eq!(
            again.set_cookie(SESSION_COOKIE),
            None,
            "the session was re-pinned"
        );
    }
    lab.stop_agent()?;
    Ok(())
}

fn drained_flows_stay_and_survive_a_restart(mut lab: Lab) -> Result<()> {
    lab.configure(&all_active())?;
    lab.start_agent()?;

    // New connections spread over the pods.
    let first = spread(&lab, SPREAD)?;
    assert_eq!(first.len(), PODS, "every pod gets connections: {first:?}");

    // A long-lived connection, and its pod drained.
    let (mut long, pinned, pinned_pod) = drain_a_long_connections_pod(&lab)?;
    for i in 0..5 {
        assert_eq!(long.ask(&format!("while draining {i}"))?, pinned);
    }
    let during = spread(&lab, SPREAD)?;
    assert!(
        !during.contains_key(&pinned),
        "new connections avoid {pinned}: {during:?}"
    );
    assert_eq!(during.len(), PODS - 1, "and use the others: {during:?}");

    // The flow is in the maps, pinned to the draining pod.
    let flows = lab.maps("flows")?;
    let port = long.local_port()?;
    let flow = flows["flows"]
        .as_array()
        .context("flows")?
        .iter()
        .find(|f| f["client"] == format!("10.77.0.2:{port}").as_str())
        .with_context(|| format!("no flow from port {port} in {flows}"))?;
    assert_eq!(flow["vip"], format!("{VIP}:{VIP_PORT}").as_str());
    assert_eq!(flow["target"], pod_target(pinned_pod).to_string().as_str());
    assert_eq!(flow["state"], "draining");
    assert_eq!(flow["protocol"], "tcp");

    // The agent stops: the pinned programs and maps keep steering.
    lab.stop_agent()?;
    assert_eq!(long.ask("agent stopped")?, pinned);
    let down = spread(&lab, 6)?;
    assert!(!down.contains_key(&pinned), "{down:?}");

    // It comes back: same maps, programs swapped into the pinned links, nothing rewritten.
    lab.start_agent()?;
    let logs = lab.logs();
    assert!(
        logs.contains("program replaced in the pinned link"),
        "{logs}"
    );
    assert!(logs.contains("reopened_services=1"), "{logs}");
    // Ids and rows were read back exactly: the restarted agent had nothing to write.
    assert!(
        logs.contains("targets +0 ~0 -0, 0 Maglev slots, 0 writes"),
        "{logs}"
    );
    for i in 0..5 {
        assert_eq!(long.ask(&format!("after restart {i}"))?, pinned);
    }
    let after = spread(&lab, SPREAD)?;
    assert!(!after.contains_key(&pinned), "{after:?}");
    lab.stop_agent()?;
    Ok(())
}

/// Removing a target ends the flows pinned to it (its packets are re-picked, and the pod that
/// gets them resets the connection) and only those; `tether cleanup` then detaches everything.
#[test]
fn removing_a_target_ends_only_its_flows() -> Result<()> {
    if !dataplane_ready("removing_a_target_ends_only_its_flows") {
        return Ok(());
    }
    let _machine = loading_blocking();
    let mut lab = Lab::new("remove")?;
    lab.configure(&all_active())?;
    lab.start_agent()?;

    // One long-lived connection on every pod.
    let mut connections: BTreeMap<usize, Connection> = BTreeMap::new();
    let deadline = Instant::now() + WAIT;
    while connections.len() < PODS {
        ensure!(Instant::now() < deadline, "could not reach every pod");
        let mut connection = lab.connect()?;
        let pod = pod_index(&connection.ask("hello")?)?;
        connections.entry(pod).or_insert(connection);
    }

    let removed = 1;
    let remaining: Vec<(usize, u32)> = (0..PODS)
        .filter(|p| *p != removed)
        .map(|p| (p, 100))
        .collect();
    let states: Vec<(usize, &str)> = remaining.iter().map(|(p, _)| (*p, "active")).collect();
    lab.reconfigure(&remaining, &states)?;

    // The removed pod's connection ends at once: its next segment is re-picked to another pod,
    // which answers with a reset. Not an answer, and not a timeout.
    let mut gone = connections
        .remove(&removed)
        .context("connection to the removed pod")?;
    let started = Instant::now();
    gone.stream.write_all(b"after removal\n")?;
    let mut answer = String::new();
    match gone.reader.read_line(&mut answer) {
        Ok(0) => {}
        Ok(_) => bail!("the removed target's flow still got an answer: {answer:?}"),
        Err(error) => assert_eq!(error.kind(), ErrorKind::ConnectionReset, "{error}"),
    }
    assert!(
        started.elapsed() < IO_TIMEOUT,
        "ended by a reset, not a timeout"
    );
    // The others carry on with their pods.
    for (pod, connection) in &mut connections {
        for i in 0..3 {
            assert_eq!(connection.ask(&format!("still here {i}"))?, pod_name(*pod));
        }
    }
    let after = spread(&lab, SPREAD)?;
    assert!(!after.contains_key(&pod_name(removed)), "{after:?}");
    assert_eq!(after.len(), PODS - 1, "{after:?}");

    let stats = lab.maps("stats")?;
    assert!(stats["counters"]["repicked"].as_u64() >= Some(1), "{stats}");

    // Stopping leaves everything attached; cleanup detaches it and removes the pins.
    lab.stop_agent()?;
    let output = std::process::Command::new(TETHER)
        .args(["cleanup", "--pin-dir"])
        .arg(&lab.pins)
        .output()?;
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("detached") && text.contains("xdp-native-n0"),
        "{text}"
    );
    assert!(!Path::new(&lab.pins).exists());
    let output = std::process::Command::new(TETHER)
        .args(["maps", "flows", "--pin-dir"])
        .arg(&lab.pins)
        .output()?;
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("nothing is pinned"),
        "{output:?}"
    );
    // Without the programs, the VIP is nobody's: connecting fails.
    assert!(lab.connect().is_err());
    Ok(())
}

/// `tether maps` and `tether cleanup` say plainly what is wrong: not root, or nothing pinned.
#[test]
fn maps_and_cleanup_explain_what_is_missing() -> Result<()> {
    if !privileged("maps_and_cleanup_explain_what_is_missing") {
        return Ok(());
    }
    let nowhere = PathBuf::from("/sys/fs/bpf").join(unique("tt-none"));
    let run = |args: &[&str], as_nobody: bool| -> Result<std::process::Output> {
        use std::os::unix::process::CommandExt;
        let mut command = std::process::Command::new(TETHER);
        command.args(args).arg("--pin-dir").arg(&nowhere);
        if as_nobody {
            // SAFETY: only setgid/setuid, async-signal-safe, between fork and exec.
            unsafe {
                command.pre_exec(|| {
                    if libc::setgid(65_534) != 0 || libc::setuid(65_534) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        Ok(command.output()?)
    };
    for view in ["services", "targets", "flows", "stats"] {
        let output = run(&["maps", view], false)?;
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("nothing is pinned at"), "{stderr}");
        let output = run(&["maps", view, "--json"], true)?;
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("needs root"), "{stderr}");
    }
    let output = run(&["cleanup"], true)?;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("needs root"));
    let output = run(&["cleanup"], false)?;
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("nothing pinned"));
    Ok(())
}

/// With `podInterfaces` listed, both directions skip the node's forwarding path: steered
/// packets go straight to the pod veths and replies, reverse-NATed on the pod veth's ingress,
/// straight out of `n0` (TC `bpf_redirect`); the node's stack forwards nothing. That holds for
/// both deliveries: into the pod's namespace after GRO (`peer`, through the uplink's TC
/// ingress) and transmitted into the veth by XDP (`redirect`). Drain works the same on those
/// paths; a pod veth that appears later is picked up by the rescan; taking the list out of the
/// configuration puts the stack back in the path.
#[test]
fn pod_interfaces_skip_the_nodes_forwarding_both_ways() -> Result<()> {
    if !dataplane_ready("pod_interfaces_skip_the_nodes_forwarding_both_ways") {
        return Ok(());
    }
    let _machine = loading_blocking();
    // Generic XDP (skb mode) hands the peer path's mark on too; netlink TC filters (kernels
    // before 6.6) do what TCX links do.
    for (delivery, xdp_mode, tc_attach) in [
        (Delivery::Peer, "native", "tcx"),
        (Delivery::Redirect, "native", "tcx"),
        (Delivery::Peer, "skb", "tcx"),
        (Delivery::Peer, "native", "netlink"),
    ] {
        skip_the_nodes_forwarding(delivery, xdp_mode, tc_attach).with_context(|| {
            format!(
                "podDelivery: {}, xdpMode: {xdp_mode}, TC: {tc_attach}",
                delivery.name()
            )
        })?;
    }
    Ok(())
}

fn skip_the_nodes_forwarding(
    delivery: Delivery,
    xdp_mode: &'static str,
    tc_attach: &'static str,
) -> Result<()> {
    let mut lab = Lab::delivering(
        &format!("{}-{xdp_mode}-{tc_attach}", delivery.name()),
        delivery,
    )?;
    lab.xdp_mode = xdp_mode;
    lab.tc_attach = Some(tc_attach);
    let netlink = tc_attach == "netlink";
    lab.configure(&all_active())?;
    lab.start_agent()?;
    lab.wait_for_pod_links(&["p0", "p1", "p2"])?;
    // The uplink has the peer-path program exactly when the peer delivery is configured.
    let to_pod = lab.pins.join("links").join(match netlink {
        true => "nl-to-pod-n0",
        false => "to-pod-n0",
    });
    assert_eq!(to_pod.exists(), delivery == Delivery::Peer, "{to_pod:?}");
    // The pods' veths have no NAPI on the peer path (GRO is off): that path needs none.
    assert_eq!(
        lab.delivery_to("p0")?,
        Some(Value::from(delivery.name())),
        "{delivery:?}"
    );

    // The first packets to each pod wait for the node to resolve its neighbour: the stack
    // forwards those. From then on, nothing.
    let warmup = spread(&lab, SPREAD)?;
    assert_eq!(warmup.len(), PODS, "every pod gets connections: {warmup:?}");
    let (forwarded, redirected, replies) = (
        lab.node_forwarded()?,
        lab.counter("redirected")?,
        lab.counter("reply_redirected")?,
    );
    let spread_out = spread(&lab, SPREAD)?;
    assert_eq!(spread_out.len(), PODS, "{spread_out:?}");
    assert_eq!(
        lab.node_forwarded()?,
        forwarded,
        "the node's stack forwarded packets of redirected flows"
    );
    // Per connection the client sends at least SYN, ACK, the line, FIN; the pod at least
    // SYN-ACK and its answer.
    let sent = lab.counter("redirected")? - redirected;
    let answered = lab.counter("reply_redirected")? - replies;
    assert!(sent >= 4 * SPREAD as u64, "{sent} packets redirected");
    assert!(
        answered >= 2 * SPREAD as u64,
        "{answered} replies redirected"
    );

    // Drain on this path: the long connection keeps its pod, new ones avoid it.
    let (mut long, pinned, _) = drain_a_long_connections_pod(&lab)?;
    let redirected = lab.counter("redirected")?;
    for i in 0..5 {
        assert_eq!(long.ask(&format!("while draining {i}"))?, pinned);
    }
    assert!(lab.counter("redirected")? >= redirected + 5);
    let during = spread(&lab, SPREAD)?;
    assert!(!during.contains_key(&pinned), "{during:?}");

    // A pod whose veth appears while the agent runs: the rescan attaches the reply program,
    // and its flows take the same path.
    lab.add_pod(PODS)?;
    lab.wait_for_pod_links(&["p0", "p1", "p2", "p3"])?;
    // A rescan may see the veth before its pod side is set up (GRO for the redirect path) and
    // record it as stack-only; the next one corrects that. Only then is the path fully ours.
    lab.wait_for_delivery("p3", delivery)?;
    let mut targets = all_active();
    targets.push((PODS, 100));
    let states: Vec<(usize, &str)> = (0..=PODS).map(|pod| (pod, "active")).collect();
    lab.reconfigure(&targets, &states)?;
    let warmup = spread(&lab, SPREAD)?;
    assert!(warmup.contains_key(&pod_name(PODS)), "{warmup:?}");
    let forwarded = lab.node_forwarded()?;
    let with_new = spread(&lab, SPREAD)?;
    assert!(with_new.contains_key(&pod_name(PODS)), "{with_new:?}");
    assert_eq!(lab.node_forwarded()?, forwarded);

    // A restarted agent swaps its program into the pinned pod-interface links and keeps them.
    lab.stop_agent()?;
    lab.start_agent()?;
    let logs = lab.logs();
    let replaced = match netlink {
        true => "TC ingress on p3: program replaced in the filter",
        false => "TC ingress on p3: program replaced in the pinned link",
    };
    assert!(logs.contains(replaced), "{logs}");
    // The filters themselves, as `tc` lists them: one per hook, under tether's handle.
    if netlink {
        for (interface, hook, program) in [
            ("n0", "ingress", "tether_to_pod"),
            ("n0", "egress", "tether_reply"),
            ("p3", "ingress", "tether_from_pod"),
        ] {
            let filters = lab.tc_filters(interface, hook)?;
            let ours = filters
                .lines()
                .filter(|line| line.contains("handle 0x7e7e") && line.contains(program))
                .count();
            assert_eq!(ours, 1, "{interface} {hook}:\n{filters}");
        }
    }
    lab.wait_for_pod_links(&["p0", "p1", "p2", "p3"])?;
    let forwarded = lab.node_forwarded()?;
    spread(&lab, SPREAD)?;
    assert_eq!(lab.node_forwarded()?, forwarded);

    // Without podInterfaces the stack forwards again, and the reply programs are detached.
    lab.pod_interfaces = false;
    lab.configure(&targets)?;
    lab.wait_for_pod_links(&[])?;
    // The peer-path program goes right after the pod interfaces (see attach_and_sync).
    let deadline = Instant::now() + WAIT;
    while to_pod.exists() {
        ensure!(
            Instant::now() < deadline,
            "the peer-path program stays without pod interfaces:\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    if netlink {
        let filters = lab.tc_filters("p0", "ingress")?;
        assert!(!filters.contains("tether_from_pod"), "{filters}");
        let filters = lab.tc_filters("n0", "ingress")?;
        assert!(!filters.contains("tether_to_pod"), "{filters}");
    }
    let (forwarded, redirected) = (lab.node_forwarded()?, lab.counter("redirected")?);
    let stack = spread(&lab, SPREAD)?;
    assert_eq!(stack.len(), PODS + 1, "{stack:?}");
    assert!(lab.node_forwarded()? >= forwarded + 4 * SPREAD as u64);
    assert_eq!(lab.counter("redirected")?, redirected);
    lab.stop_agent()?;
    // `tether cleanup`, run where the agent runs, deletes the netlink filters.
    if netlink {
        let output = lab
            .node
            .command(TETHER)?
            .args(["cleanup", "--pin-dir"])
            .arg(&lab.pins)
            .output()?;
        ensure!(output.status.success(), "{output:?}");
        for (hook, program) in [("ingress", "tether_to_pod"), ("egress", "tether_reply")] {
            let filters = lab.tc_filters("n0", hook)?;
            assert!(!filters.contains(program), "{hook}:\n{filters}");
        }
    }
    Ok(())
}

/// A pod veth whose pod side has no NAPI (GRO off and no XDP program: a veth's default) cannot
/// take XDP frames; the kernel would drop every frame redirected into it and the pod's
/// connections would hang. Its flows take the stack's path (replies are still redirected);
/// once the pod side turns GRO on, the rescan moves new packets to the redirect path, and
/// back when it turns GRO off again.
#[test]
fn a_pod_veth_without_napi_is_served_by_the_stack() -> Result<()> {
    if !dataplane_ready("a_pod_veth_without_napi_is_served_by_the_stack") {
        return Ok(());
    }
    let _machine = loading_blocking();
    let mut lab = Lab::delivering("nonapi", Delivery::Redirect)?;
    lab.pod_namespaces[0].set_gro("eth0", false)?;
    let only_pod_0 = [(0, 100)];
    lab.configure(&only_pod_0)?;
    lab.start_agent()?;
    lab.wait_for_pod_links(&["p0", "p1", "p2"])?;

    let stack_path = |lab: &Lab| -> Result<()> {
        let (forwarded, redirected, replies) = (
            lab.node_forwarded()?,
            lab.counter("redirected")?,
            lab.counter("reply_redirected")?,
        );
        let served = spread(lab, SPREAD)?;
        assert_eq!(served.get(&pod_name(0)), Some(&SPREAD), "{served:?}");
        assert!(
            lab.node_forwarded()? >= forwarded + 4 * SPREAD as u64,
            "the stack forwards what XDP cannot transmit into the pod"
        );
        assert_eq!(lab.counter("redirected")?, redirected);
        assert!(lab.counter("reply_redirected")? >= replies + 2 * SPREAD as u64);
        Ok(())
    };
    stack_path(&lab)?;
    assert_eq!(lab.delivery_to("p0")?, Some(Value::from("stack")));
    assert_eq!(lab.delivery_to("p1")?, Some(Value::from("redirect")));
    assert_eq!(lab.delivery_to("n0")?, Some(Value::Null), "the uplink");

    // GRO on the pod side: the redirect path, within a rescan or two.
    lab.pod_namespaces[0].set_gro("eth0", true)?;
    let deadline = Instant::now() + WAIT;
    loop {
        let redirected = lab.counter("redirected")?;
        spread(&lab, 3)?;
        if lab.counter("redirected")? > redirected {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "no packet redirected after GRO went on:\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let forwarded = lab.node_forwarded()?;
    let served = spread(&lab, SPREAD)?;
    assert_eq!(served.get(&pod_name(0)), Some(&SPREAD), "{served:?}");
    assert_eq!(lab.node_forwarded()?, forwarded);
    assert_eq!(lab.delivery_to("p0")?, Some(Value::from("redirect")));

    // GRO off again: every connection still completes, through the stack once the rescan ran.
    lab.pod_namespaces[0].set_gro("eth0", false)?;
    std::thread::sleep(interfaces_rescan() * 3);
    stack_path(&lab)?;
    lab.stop_agent()?;
    Ok(())
}

fn interfaces_rescan() -> Duration {
    tether::dataplane::interfaces::RESCAN_INTERVAL
}

/// A pod answers a datagram to a port nobody listens on with ICMP port unreachable, quoting
/// the datagram as it got it (to the pod's address). Translated back to the VIP, the error
/// reaches the client's connected socket as ECONNREFUSED, on the stack path and on the
/// redirect path alike; untranslated, the client's stack would find no socket and the
/// application would wait for an answer that never comes.
#[test]
fn icmp_errors_from_a_pod_reach_the_clients_socket() -> Result<()> {
    if !dataplane_ready("icmp_errors_from_a_pod_reach_the_clients_socket") {
        return Ok(());
    }
    let _machine = loading_blocking();
    for delivery in [None, Some(Delivery::Redirect), Some(Delivery::Peer)] {
        let mut lab = match delivery {
            None => Lab::new("icmp")?,
            Some(Delivery::Redirect) => Lab::delivering("icmpr", Delivery::Redirect)?,
            Some(Delivery::Peer) => Lab::delivering("icmpp", Delivery::Peer)?,
        };
        lab.udp_service = true;
        lab.configure(&all_active())?;
        lab.start_agent()?;
        if delivery.is_some() {
            lab.wait_for_pod_links(&["p0", "p1", "p2"])?;
        }
        let refused = |port: u16| -> Result<ErrorKind> {
            lab.client.run(move || -> Result<ErrorKind> {
                let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))?;
                socket.set_read_timeout(Some(Duration::from_secs(3)))?;
                socket.connect((VIP, UDP_VIP_PORT))?;
                socket.send(b"anyone?")?;
                let mut buffer = [0u8; 64];
                Ok(match socket.recv(&mut buffer) {
                    Ok(_) => ErrorKind::Other,
                    Err(error) => error.kind(),
                })
            })?
        };
        // Several flows, so every pod (and every path) answers at least once.
        for port in 0..6 {
            assert_eq!(
                refused(41_000 + port)?,
                ErrorKind::ConnectionRefused,
                "delivery: {delivery:?}, flow {port}:\n{}",
                lab.logs()
            );
        }
        lab.stop_agent()?;
    }
    Ok(())
}
