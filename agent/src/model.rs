//! The model: plain, validated data that every source builds and every consumer reads.
//!
//! A source (the YAML file, later the Kubernetes reflectors) builds a [`Model`]; the proxy
//! and the dataplane mirror consume it. Nothing here does I/O.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Kong's default weight for a target.
pub const DEFAULT_WEIGHT: u32 = 100;
/// Kong's upper bound for a target weight.
pub const MAX_WEIGHT: u32 = 65_535;

#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub proxy: Option<ProxySettings>,
    pub admin: Option<AdminSettings>,
    pub session_key: Option<PathBuf>,
    pub dataplane: Option<DataplaneSettings>,
    pub routes: Vec<Route>,
    /// Keyed by service name; a BTreeMap so iteration (and therefore logs and diffs) is stable.
    pub services: BTreeMap<String, Service>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProxySettings {
    pub listen: SocketAddr,
    pub timeouts: ProxyTimeouts,
    /// Largest request head (request line plus headers) accepted; larger gets 431.
    pub max_header_bytes: usize,
    /// Client connections open at once; past it new ones get a 503 and are closed.
    pub max_connections: usize,
    /// The TLS listener, when there is one.
    pub tls: Option<TlsSettings>,
    /// `proxy.http2`: limits of client HTTP/2 connections.
    pub http2: Http2Settings,
}

/// `proxy.http2`: limits of client HTTP/2 connections (the header list limit is
/// `maxHeaderBytes`, as for HTTP/1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Settings {
    /// Streams a client may have open at once on one connection.
    pub max_concurrent_streams: u32,
}

pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 100;

impl Default for Http2Settings {
    fn default() -> Self {
        Self {
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
        }
    }
}

/// `proxy.tls`: a second listener that terminates TLS.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsSettings {
    pub listen: SocketAddr,
    /// Chosen by SNI; the first is the default.
    pub certificates: Vec<CertificateFiles>,
    /// Certificates from the cluster (`kubernetes.io/tls` Secrets that Ingresses name), after
    /// the files; empty for the standalone file.
    pub cluster: Vec<PemCertificate>,
}

/// A certificate chain and key held in memory (a Secret's `tls.crt` and `tls.key`).
#[derive(Clone, PartialEq, Eq)]
pub struct PemCertificate {
    /// For logs and errors: `Secret NAMESPACE/NAME`.
    pub origin: String,
    pub chain: Vec<u8>,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for PemCertificate {
    /// The origin only: a key never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PemCertificate")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// A PEM certificate chain (end-entity first) and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    pub cert_file: std::path::PathBuf,
    pub key_file: std::path::PathBuf,
}

impl CertificateFiles {
    /// For logs and errors: both files.
    pub fn origin(&self) -> String {
        format!("{} + {}", self.cert_file.display(), self.key_file.display())
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProxyTimeouts {
    /// A client must send its whole request head within this time (slowloris guard).
    pub header_read: Duration,
    /// Connecting to a target.
    pub connect: Duration,
    /// From the end of the request body until the target's response head arrives.
    pub response: Duration,
    /// How long any side may stall: a client not sending its body or not reading the response,
    /// a target not reading the request or not sending its body.
    pub client_idle: Duration,
}

impl Default for ProxyTimeouts {
    fn default() -> Self {
        Self {
            header_read: Duration::from_secs(10),
            connect: Duration::from_secs(2),
            response: Duration::from_secs(60),
            client_idle: Duration::from_secs(30),
        }
    }
}

pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// At ~20 KB per idle connection, 10,000 fit well inside the DaemonSet's 512Mi.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// Where the kernel programs attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneSettings {
    /// Interfaces whose ingress gets the XDP program (and whose egress the reply-path TC program).
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    /// Names or patterns (`*`, `?`) of the node's interfaces that lead to pods: steered packets
    /// are delivered straight to them and their replies sent straight out of the uplinks. Empty:
    /// the stack forwards both ways.
    pub pod_interfaces: Vec<String>,
    /// How steered packets reach a pod interface.
    pub pod_delivery: PodDelivery,
}

impl DataplaneSettings {
    /// Whether steered packets may take the peer path, which needs the uplinks' TC ingress
    /// program.
    pub fn peer_delivery(&self) -> bool {
        !self.pod_interfaces.is_empty() && self.pod_delivery == PodDelivery::Peer
    }
}

/// How steered packets reach a pod interface (`dataplane.podDelivery`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodDelivery {
    /// Up the uplink's stack as far as GRO, then straight to the pod's end of its veth
    /// (`bpf_redirect_peer` from the uplink's TC ingress), as Cilium's host routing does: the
    /// node's GRO merges segments once, and the pod's receive runs there and then, with no
    /// second queue or wake-up. Pod interfaces that are not a pair into another namespace
    /// fall back to `Redirect`'s rule.
    Peer,
    /// Transmitted into the pod interface by XDP (`XDP_REDIRECT`), where it takes XDP frames
    /// (its pod side has NAPI); the pod then does GRO and checksums per frame.
    Redirect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver: fastest, needs driver support (veth has it).
    Native,
    /// Generic XDP in the stack: works on any interface.
    Skb,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdminSettings {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub host: Option<HostMatch>,
    pub path: PathMatch,
    pub service: String,
    /// CONNECT requests matching this route are tunnelled to the target; elsewhere they get 405.
    pub allow_connect: bool,
    /// What a request that did not come over TLS gets.
    pub plaintext: Plaintext,
    /// Whether requests over TLS match this route (Kong's `protocols: [http]` says no).
    pub over_tls: bool,
}

/// What a route does with a plaintext (not TLS) request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Plaintext {
    /// Proxied like any other.
    #[default]
    Serve,
    /// Redirected to the same URL over https with this status (301, 302, 307 or 308), or
    /// refused with 426 Upgrade Required (Kong's `https_redirect_status_code`, 426 by default
    /// for a route whose `protocols` are https only).
    Redirect(u16),
    /// Not matched: the route is for TLS requests only (an HTTPRoute attached to HTTPS
    /// listeners only).
    NoMatch,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// `example.com`: that host only (case-insensitive, port ignored).
    Exact(String),
    /// `*.example.com`: any single label in front of `.example.com` (Ingress, the file).
    Wildcard(String),
    /// `*.example.com` as the Gateway API reads it: one or more labels in front of
    /// `.example.com` (`a.example.com`, `a.b.example.com`).
    WildcardAnyDepth(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// The whole path equals this.
    Exact(String),
    /// The path starts with these path elements (`/echo` matches `/echo` and `/echo/x`, not `/echoes`).
    Prefix(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    pub balancing: Balancing,
    /// Set for a service the kernel handles at L4 (a VIP:port).
    pub frontend: Option<Frontend>,
    pub targets: Vec<Target>,
    /// How requests reach the targets of a proxied service.
    pub upstream: UpstreamProtocol,
}

/// The protocol tether speaks to a proxied service's targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 over pooled connections.
    #[default]
    Http1,
    /// HTTP/2 over cleartext with prior knowledge (gRPC targets), one multiplexed connection
    /// per target per worker.
    H2c,
}

/// A virtual address the kernel program steers: new flows get a Maglev pick over active
/// targets, established flows keep theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frontend {
    pub listen: SocketAddr,
    pub protocol: L4Protocol,
    pub hashing: KernelHashing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum L4Protocol {
    Tcp,
    Udp,
}

impl L4Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            L4Protocol::Tcp => "tcp",
            L4Protocol::Udp => "udp",
        }
    }
}

/// What the kernel hashes a new flow's Maglev pick on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelHashing {
    /// The 5-tuple: flows spread independently (policy round-robin).
    FiveTuple,
    /// The client's address: one client's flows go to one target (consistent-hashing on ip,
    /// Kubernetes `sessionAffinity: ClientIP`).
    ClientIp,
}

/// How a service spreads requests: KongUpstreamPolicy's `algorithm` and its options.
#[derive(Debug, Clone, PartialEq)]
pub enum Balancing {
    /// Weighted round-robin over active targets.
    RoundRobin,
    /// Weighted round-robin for new sessions; a signed cookie pins each session to its target.
    StickySessions(SessionCookie),
    /// Fewest requests in flight among active targets, weighted.
    LeastConnections,
    /// A hash of a request attribute picks the target (consistent while the target set is stable).
    ConsistentHashing {
        hash_on: HashOn,
        fallback: Option<HashOn>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    ClientIp,
    Path,
    Header(String),
    Cookie { name: String, path: String },
    QueryArg(String),
}

/// The session cookie: its name and attributes, and the lifetimes tether enforces itself.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionCookie {
    pub name: String,
    pub path: String,
    pub domain: Option<String>,
    pub http_only: bool,
    pub secure: bool,
    pub same_site: Option<SameSite>,
    /// Leave out `SameSite=None` for browsers known to reject it (ingress-nginx's option).
    pub conditional_same_site_none: bool,
    /// `Max-Age` attribute (browser side only).
    pub max_age: Option<Duration>,
    /// `Expires` attribute, written as now + this (browser side only).
    pub expires: Option<Duration>,
    /// A session older than this (from its first pin) is over: enforced from the cookie itself.
    pub absolute_timeout: Option<Duration>,
    /// A session unused for this long is over: enforced from the cookie itself.
    pub idle_timeout: Option<Duration>,
    /// When the pinned target fails and the request is retried on another, whether the session
    /// moves there (a new cookie) or stays pinned to the failed target for its next request
    /// (ingress-nginx's `session-cookie-change-on-failure`, false by default there; Kong moves).
    pub change_on_failure: bool,
}

impl SessionCookie {
    /// Kong's defaults for a `stickySessions` cookie, plus HttpOnly (ingress-nginx always sets it).
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            path: "/".into(),
            domain: None,
            http_only: true,
            secure: false,
            same_site: None,
            conditional_same_site_none: false,
            max_age: None,
            expires: None,
            absolute_timeout: None,
            idle_timeout: None,
            change_on_failure: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Strict,
    Lax,
    None,
}

impl SameSite {
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::Strict => "Strict",
            SameSite::Lax => "Lax",
            SameSite::None => "None",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub address: SocketAddr,
    /// Relative share of new sessions among active targets.
    pub weight: u32,
    pub state: TargetState,
}

impl Target {
    /// A file-configured target: weight 0 means draining, as in Kong.
    pub fn from_weight(address: SocketAddr, weight: u32) -> Self {
        let state = if weight == 0 {
            TargetState::Draining
        } else {
            TargetState::Active
        };
        Self {
            address,
            weight,
            state,
        }
    }
}

/// Kept in the target itself (as Cilium keeps backend state in the backend entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetState {
    /// Takes new sessions and keeps existing ones.
    Active,
    /// Keeps existing sessions and flows, takes no new ones.
    Draining,
}

impl TargetState {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Active => "active",
            TargetState::Draining => "draining",
        }
    }
}
