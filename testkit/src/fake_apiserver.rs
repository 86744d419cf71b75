//! A local Kubernetes API server for `tether run --kubernetes`: it speaks the real list/watch
//! protocol over plain HTTP on 127.0.0.1, with real object JSON, and a test drives it by
//! applying and deleting objects.
//!
//! What it implements, as the real API server does:
//! - paths `/api/v1/...` and `/apis/GROUP/VERSION/...`, cluster-wide and per namespace, for
//!   the resources in [`RESOURCES`];
//! - one resourceVersion counter for everything (etcd's revision), `metadata.resourceVersion`
//!   on every object, `uid`, `creationTimestamp` and `generation` set on create;
//! - lists (`kind: ServiceList`, `metadata.resourceVersion`), with `fieldSelector`
//!   (`metadata.name`, `metadata.namespace`) and equality `labelSelector`s;
//! - `?watch=true` streams of newline-delimited `{"type": ..., "object": ...}` events: ADDED,
//!   MODIFIED and DELETED from the requested resourceVersion on (history is kept), BOOKMARK
//!   events when `allowWatchBookmarks=true`, the stream closed after `timeoutSeconds`;
//! - 410 Gone: a watch from a resourceVersion older than the compaction point gets an ERROR
//!   event with a `Status` of code 410 (reason Expired), as the real server sends it;
//!   [`FakeApiServer::expire`] compacts and sends that to every open watch;
//! - PUT (replace) and PATCH (JSON merge patch) of one object and of its `/status`
//!   subresource (which changes only `status`; the main resource leaves `status` alone), with
//!   a `metadata.resourceVersion` in the body checked (409 Conflict when stale); Leases;
//! - GET of one object (404 `Status` when absent), POST create (201; 409 AlreadyExists), a
//!   bearer token (401 without it), and 404 for resources it is told not to serve (a CRD that
//!   is not installed).
//!
//! It runs on its own thread and runtime, so a test can stop it (the API server is lost: the
//! port refuses connections and open watches break) and start it again on the same port with
//! the same objects. It can also be lost behind something that still takes connections
//! ([`FakeApiServer::stop_answering`]): then each request is read and counted, so a test can
//! tell how often clients retried during the outage.
use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

/// The bearer token the generated kubeconfig carries and the server demands.
pub const TOKEN: &str = "tether-test-token";

/// A resource the server knows: (plural, group, version, kind, built in).
pub struct Resource {
    pub plural: &'static str,
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// Built-in types' list items carry no apiVersion and kind; custom resources' do.
    pub builtin: bool,
}

pub const RESOURCES: &[Resource] = &[
    Resource {
        plural: "services",
        group: "",
        version: "v1",
        kind: "Service",
        builtin: true,
    },
    Resource {
        plural: "secrets",
        group: "",
        version: "v1",
        kind: "Secret",
        builtin: true,
    },
    Resource {
        plural: "endpointslices",
        group: "discovery.k8s.io",
        version: "v1",
        kind: "EndpointSlice",
        builtin: true,
    },
    Resource {
        plural: "ingresses",
        group: "networking.k8s.io",
        version: "v1",
        kind: "Ingress",
        builtin: true,
    },
    Resource {
        plural: "events",
        group: "events.k8s.io",
        version: "v1",
        kind: "Event",
        builtin: true,
    },
    Resource {
        plural: "httproutes",
        group: "gateway.networking.k8s.io",
        version: "v1",
        kind: "HTTPRoute",
        builtin: false,
    },
    Resource {
        plural: "kongupstreampolicies",
        group: "configuration.konghq.com",
        version: "v1beta1",
        kind: "KongUpstreamPolicy",
        builtin: false,
    },
    Resource {
        plural: "gatewayclasses",
        group: "gateway.networking.k8s.io",
        version: "v1",
        kind: "GatewayClass",
        builtin: false,
    },
    Resource {
        plural: "gateways",
        group: "gateway.networking.k8s.io",
        version: "v1",
        kind: "Gateway",
        builtin: false,
    },
    Resource {
        plural: "referencegrants",
        group: "gateway.networking.k8s.io",
        version: "v1beta1",
        kind: "ReferenceGrant",
        builtin: false,
    },
    Resource {
        plural: "namespaces",
        group: "",
        version: "v1",
        kind: "Namespace",
        builtin: true,
    },
    Resource {
        plural: "leases",
        group: "coordination.k8s.io",
        version: "v1",
        kind: "Lease",
        builtin: true,
    },
];

impl Resource {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    fn by_kind(kind: &str) -> Option<&'static Resource> {
        RESOURCES.iter().find(|r| r.kind == kind)
    }

    fn by_plural(plural: &str) -> Option<&'static Resource> {
        RESOURCES.iter().find(|r| r.plural == plural)
    }
}

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    /// [`UNANSWERED`] for a request read while the server was not answering.
    pub status: u16,
}

/// The [`Seen::status`] of a request whose connection was closed without an answer.
pub const UNANSWERED: u16 = 0;

/// Whether a serving thread speaks the API or only takes requests and drops them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Answering,
    Unanswering,
}

struct Change {
    revision: u64,
    resource: &'static str,
    kind: &'static str,
    object: Value,
}

struct Watcher {
    id: u64,
    resource: &'static str,
    namespace: Option<String>,
    selector: Selector,
    bookmarks: bool,
    sender: mpsc::UnboundedSender<Bytes>,
}

#[derive(Default, Clone)]
struct Selector {
    name: Option<String>,
    namespace: Option<String>,
    type_: Option<String>,
    labels: Vec<(String, Option<String>, bool)>,
}

impl Selector {
    fn parse(fields: Option<&str>, labels: Option<&str>) -> Self {
        let mut selector = Selector::default();
        for term in fields.unwrap_or("").split(',').filter(|t| !t.is_empty()) {
            if let Some((key, value)) = term.split_once('=') {
                let value = value.trim_start_matches('=').to_string();
                match key {
                    "metadata.name" => selector.name = Some(value),
                    "metadata.namespace" => selector.namespace = Some(value),
                    // A Secret's type: `type=kubernetes.io/tls`.
                    "type" => selector.type_ = Some(value),
                    _ => {}
                }
            }
        }
        for term in labels.unwrap_or("").split(',').filter(|t| !t.is_empty()) {
            if let Some((key, value)) = term.split_once("!=") {
                selector
                    .labels
                    .push((key.into(), Some(value.into()), false));
            } else if let Some((key, value)) = term.split_once('=') {
                selector.labels.push((
                    key.into(),
                    Some(value.trim_start_matches('=').into()),
                    true,
                ));
            } else if let Some(key) = term.strip_prefix('!') {
                selector.labels.push((key.into(), None, false));
            } else {
                selector.labels.push((term.into(), None, true));
            }
        }
        selector
    }

    fn matches(&self, object: &Value) -> bool {
        let meta = &object["metadata"];
        if let Some(name) = &self.name {
            if meta["name"].as_str() != Some(name) {
                return false;
            }
        }
        if let Some(namespace) = &self.namespace {
            if meta["namespace"].as_str() != Some(namespace) {
                return false;
            }
        }
        if let Some(type_) = &self.type_ {
            if object["type"].as_str() != Some(type_) {
                return false;
            }
        }
        self.labels.iter().all(|(key, value, wanted)| {
            let found = meta["labels"][key].as_str();
            let hit = match value {
                Some(value) => found == Some(value.as_str()),
                None => found.is_some(),
            };
            hit == *wanted
        })
    }
}

struct State {
    revision: u64,
    /// plural → (namespace, name) → object
    objects: BTreeMap<&'static str, BTreeMap<(String, String), Value>>,
    history: Vec<Change>,
    /// Watches from a revision below this get 410 Gone.
    compacted: u64,
    watchers: Vec<Watcher>,
    next_watcher: u64,
    not_served: BTreeSet<String>,
    list_delay: Duration,
    max_watch: Duration,
    seen: Vec<Seen>,
    next_uid: u64,
    /// On the next POST of a Secret: store this one first (another agent won), answer 409.
    race_secret: Option<Value>,
    /// When each revision was sent to watchers.
    sent_at: BTreeMap<u64, Instant>,
    /// Every accepted PUT and PATCH, in order.
    writes: Vec<Write>,
}

/// An accepted PUT or PATCH.
#[derive(Debug, Clone)]
pub struct Write {
    pub method: String,
    pub plural: &'static str,
    pub namespace: String,
    pub name: String,
    /// To `/status`.
    pub subresource: bool,
    pub body: Value,
}

impl State {
    fn new() -> Self {
        Self {
            revision: 1000,
            objects: BTreeMap::new(),
            history: Vec::new(),
            compacted: 0,
            watchers: Vec::new(),
            next_watcher: 0,
            not_served: BTreeSet::new(),
            list_delay: Duration::ZERO,
            max_watch: Duration::from_secs(60),
            seen: Vec::new(),
            next_uid: 1,
            race_secret: None,
            sent_at: BTreeMap::new(),
            writes: Vec::new(),
        }
    }

    /// Stores `object` (create or update) and tells the watchers. Returns its revision.
    fn put(&mut self, resource: &'static Resource, mut object: Value) -> (u64, bool) {
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_string();
        self.revision += 1;
        let revision = self.revision;
        let existing = self
            .objects
            .get(resource.plural)
            .and_then(|m| m.get(&(namespace.clone(), name.clone())))
            .cloned();
        object["apiVersion"] = json!(resource.api_version());
        object["kind"] = json!(resource.kind);
        let metadata = &mut object["metadata"];
        metadata["resourceVersion"] = json!(revision.to_string());
        let created = existing.is_none();
        match &existing {
            Some(old) => {
                metadata["uid"] = old["metadata"]["uid"].clone();
                metadata["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
                let generation = old["metadata"]["generation"].as_u64().unwrap_or(1);
                let changed = old.get("spec") != object.get("spec");
                object["metadata"]["generation"] =
                    json!(if changed { generation + 1 } else { generation });
            }
            None => {
                if metadata["uid"].is_null() {
                    metadata["uid"] =
                        json!(format!("00000000-0000-4000-8000-{:012}", self.next_uid));
                    self.next_uid += 1;
                }
                if metadata["creationTimestamp"].is_null() {
                    metadata["creationTimestamp"] = json!(timestamp(revision));
                }
                metadata["generation"] = json!(1);
            }
        }
        self.objects
            .entry(resource.plural)
            .or_default()
            .insert((namespace, name), object.clone());
        let kind = if created { "ADDED" } else { "MODIFIED" };
        self.publish(resource.plural, kind, object);
        (revision, created)
    }

    fn remove(&mut self, resource: &'static Resource, namespace: &str, name: &str) -> bool {
        let Some(mut object) = self
            .objects
            .get_mut(resource.plural)
            .and_then(|m| m.remove(&(namespace.to_string(), name.to_string())))
        else {
            return false;
        };
        self.revision += 1;
        object["metadata"]["resourceVersion"] = json!(self.revision.to_string());
        self.publish(resource.plural, "DELETED", object);
        true
    }

    fn publish(&mut self, resource: &'static str, kind: &'static str, object: Value) {
        let revision = self.revision;
        let line = event_line(kind, &object);
        self.watchers.retain(|watcher| {
            if watcher.resource != resource || !watcher.wants(&object) {
                return true;
            }
            watcher.sender.send(line.clone()).is_ok()
        });
        self.sent_at.insert(revision, Instant::now());
        self.history.push(Change {
            revision,
            resource,
            kind,
            object,
        });
    }
}

impl Watcher {
    fn wants(&self, object: &Value) -> bool {
        if let Some(namespace) = &self.namespace {
            if object["metadata"]["namespace"].as_str() != Some(namespace) {
                return false;
            }
        }
        self.selector.matches(object)
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// A creationTimestamp that orders objects by when they were created here.
fn timestamp(revision: u64) -> String {
    let seconds = revision % 86_400;
    format!(
        "2025-01-01T{:02}:{:02}:{:02}Z",
        seconds / 3600,
        (seconds / 60) % 60,
        seconds % 60
    )
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code
    })
}

/// A server thread with its runtime, stopped by the sender.
struct Running {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub struct FakeApiServer {
    state: Arc<Mutex<State>>,
    address: SocketAddr,
    running: Option<Running>,
    tls: Option<Tls>,
}

/// HTTPS: a CA made for this server, and a serving certificate it signed for
/// `kubernetes.default.svc`, `localhost` and 127.0.0.1 (what in-cluster clients check).
#[derive(Clone)]
pub struct Tls {
    /// The CA certificate, PEM (a kubeconfig's certificate-authority-data, or the pod's
    /// ca.crt).
    pub ca_pem: String,
    config: Arc<tokio_rustls::rustls::ServerConfig>,
}

impl Tls {
    pub fn generate() -> Result<Self> {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        use tokio_rustls::rustls;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "tether test cluster CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
        let key = KeyPair::generate()?;
        let mut serving = CertificateParams::new(vec![
            "kubernetes.default.svc".to_string(),
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])?;
        serving
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        let certificate = serving.signed_by(&key, &issuer)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![certificate.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            ca_pem: issuer.pem(),
            config: Arc::new(config),
        })
    }
}

impl FakeApiServer {
    /// Starts on a free loopback port.
    pub fn start() -> Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::new()));
        let mut server = Self {
            state,
            address,
            running: None,
            tls: None,
        };
        server.serve(listener, Mode::Answering)?;
        Ok(server)
    }

    /// Starts on a free loopback port, serving HTTPS with `tls`.
    pub fn start_tls(tls: Tls) -> Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?;
        let mut server = Self {
            state: Arc::new(Mutex::new(State::new())),
            address,
            running: None,
            tls: Some(tls),
        };
        server.serve(listener, Mode::Answering)?;
        Ok(server)
    }

    pub fn tls(&self) -> Option<&Tls> {
        self.tls.as_ref()
    }

    /// Serves on `listener` (one bound inside a network namespace, say: an agent in that
    /// namespace reaches it on its loopback).
    pub fn start_on(listener: std::net::TcpListener) -> Result<Self> {
        let address = listener.local_addr()?;
        let mut server = Self {
            state: Arc::new(Mutex::new(State::new())),
            address,
            running: None,
            tls: None,
        };
        server.serve(listener, Mode::Answering)?;
        Ok(server)
    }

    fn serve(&mut self, listener: std::net::TcpListener, mode: Mode) -> Result<()> {
        listener.set_nonblocking(true)?;
        let state = self.state.clone();
        let tls = self.tls.as_ref().map(|t| t.config.clone());
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("fake-apiserver".into())
            .spawn(move || {
                let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                runtime.block_on(run(listener, state, tls, mode, stopped));
            })?;
        self.running = Some(Running {
            stop: Some(stop),
            thread: Some(thread),
        });
        Ok(())
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn url(&self) -> String {
        match self.tls {
            Some(_) => format!("https://{}", self.address),
            None => format!("http://{}", self.address),
        }
    }

    /// The API server is lost: the port refuses connections, open watches break. Objects stay.
    pub fn stop(&mut self) {
        if let Some(mut running) = self.running.take() {
            if let Some(stop) = running.stop.take() {
                let _ = stop.send(());
            }
            if let Some(thread) = running.thread.take() {
                let _ = thread.join();
            }
        }
        self.lock().watchers.clear();
    }

    /// The API server is lost behind something that still takes connections (a TCP load
    /// balancer with no healthy backend): open watches break, and every new connection is
    /// read up to its request head, recorded in [`seen`](Self::seen) with status
    /// [`UNANSWERED`], and closed without an answer, as a server dying mid-request closes it.
    /// Unlike [`stop`](Self::stop), this lets a test count the clients' retries. Objects stay;
    /// [`restart`](Self::restart) answers again.
    pub fn stop_answering(&mut self) -> Result<()> {
        self.stop();
        let listener = std::net::TcpListener::bind(self.address)
            .with_context(|| format!("rebind {}", self.address))?;
        self.serve(listener, Mode::Unanswering)
    }

    /// Serves again on the same port, with the same objects and revisions (after
    /// [`stop`](Self::stop) or [`stop_answering`](Self::stop_answering)).
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let listener = std::net::TcpListener::bind(self.address)
            .with_context(|| format!("rebind {}", self.address))?;
        self.serve(listener, Mode::Answering)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Creates or updates an object (its `kind` says where it goes); returns its
    /// resourceVersion. Watchers see ADDED or MODIFIED at once.
    pub fn apply(&self, object: Value) -> u64 {
        let kind = object["kind"].as_str().unwrap_or_default().to_string();
        let resource = Resource::by_kind(&kind)
            .unwrap_or_else(|| panic!("the fake API server does not know kind {kind:?}"));
        let mut object = object;
        let mut state = self.lock();
        // As kubectl apply: the stored status stays (controllers own it).
        if object.get("status").is_none() {
            let key = (
                object["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                object["metadata"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            );
            if let Some(status) = state
                .objects
                .get(resource.plural)
                .and_then(|m| m.get(&key))
                .and_then(|stored| stored.get("status"))
                .cloned()
            {
                object["status"] = status;
            }
        }
        state.put(resource, object).0
    }

    /// Deletes an object; watchers see DELETED. False when there was none.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> bool {
        let resource = Resource::by_kind(kind)
            .unwrap_or_else(|| panic!("the fake API server does not know kind {kind:?}"));
        self.lock().remove(resource, namespace, name)
    }

    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let resource = Resource::by_kind(kind)?;
        self.lock()
            .objects
            .get(resource.plural)
            .and_then(|m| m.get(&(namespace.to_string(), name.to_string())))
            .cloned()
    }

    /// Every object of `kind`.
    pub fn all(&self, kind: &str) -> Vec<Value> {
        let Some(resource) = Resource::by_kind(kind) else {
            return Vec::new();
        };
        self.lock()
            .objects
            .get(resource.plural)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Compacts history to now and ends every open watch with 410 Gone (reason Expired): the
    /// clients must list again.
    pub fn expire(&self) {
        let mut state = self.lock();
        state.compacted = state.revision + 1;
        let message = format!(
            "too old resource version: {} ({})",
            state.compacted - 1,
            state.compacted
        );
        let line = event_line("ERROR", &status(410, "Expired", &message));
        for watcher in state.watchers.drain(..) {
            let _ = watcher.sender.send(line.clone());
        }
    }

    /// Lists take this long to answer (a slow relist).
    pub fn set_list_delay(&self, delay: Duration) {
        self.lock().list_delay = delay;
    }

    /// Answers 404 for `plural` (its CRD is not installed), or serves it again.
    pub fn set_served(&self, plural: &str, served: bool) {
        let mut state = self.lock();
        if served {
            state.not_served.remove(plural);
        } else {
            state.not_served.insert(plural.to_string());
        }
    }

    /// The next Secret create finds `winner` already created by someone else: 409.
    pub fn race_secret_create(&self, winner: Value) {
        self.lock().race_secret = Some(winner);
    }

    /// Every request answered so far.
    /// Every accepted PUT and PATCH so far.
    pub fn writes(&self) -> Vec<Write> {
        self.lock().writes.clone()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    /// Open watches on `plural`.
    pub fn watches(&self, plural: &str) -> usize {
        self.lock()
            .watchers
            .iter()
            .filter(|w| w.resource == plural && !w.sender.is_closed())
            .count()
    }

    /// When revision `revision` was sent to the watchers.
    pub fn sent_at(&self, revision: u64) -> Option<Instant> {
        self.lock().sent_at.get(&revision).copied()
    }

    /// Sends a BOOKMARK to every watch that asked for them.
    pub fn bookmark(&self) {
        let state = self.lock();
        send_bookmarks(&state);
    }

    /// Writes a kubeconfig for this server (its CA when it serves HTTPS, a bearer token) into
    /// `dir`.
    pub fn kubeconfig(&self, dir: &Path) -> Result<PathBuf> {
        use base64::Engine;
        let path = dir.join("kubeconfig");
        let authority = match &self.tls {
            Some(tls) => format!(
                "    certificate-authority-data: {}\n",
                base64::engine::general_purpose::STANDARD.encode(&tls.ca_pem)
            ),
            None => String::new(),
        };
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n{authority}\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
             current-context: fake\nusers:\n- name: fake\n  user:\n    token: {TOKEN}\n",
            self.url()
        );
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
        Ok(path)
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn send_bookmarks(state: &State) {
    for watcher in state.watchers.iter().filter(|w| w.bookmarks) {
        let Some(resource) = Resource::by_plural(watcher.resource) else {
            continue;
        };
        let bookmark = json!({
            "kind": resource.kind,
            "apiVersion": resource.api_version(),
            "metadata": {"resourceVersion": state.revision.to_string()}
        });
        let _ = watcher.sender.send(event_line("BOOKMARK", &bookmark));
    }
}

async fn run(
    listener: std::net::TcpListener,
    state: Arc<Mutex<State>>,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    mode: Mode,
    mut stopped: oneshot::Receiver<()>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let Ok(listener) = TcpListener::from_std(listener) else {
        return;
    };
    let mut connections = JoinSet::new();
    let mut bookmarks = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let state = state.clone();
                let acceptor = acceptor.clone();
                connections.spawn(async move {
                    if mode == Mode::Unanswering {
                        match acceptor {
                            Some(acceptor) => {
                                if let Ok(stream) = acceptor.accept(stream).await {
                                    unanswered(stream, &state).await;
                                }
                            }
                            None => unanswered(stream, &state).await,
                        }
                        return;
                    }
                    let service = service_fn(move |request| answer(request, state.clone()));
                    match acceptor {
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else { return };
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                        None => {
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = bookmarks.tick() => {
                if let Ok(state) = state.lock() {
                    send_bookmarks(&state);
                }
            }
            _ = &mut stopped => break,
        }
    }
    drop(listener);
    connections.shutdown().await;
}

/// Reads one request head (bounded in size and time), records it as [`UNANSWERED`], and
/// drops the connection: the client sees it closed before any response.
async fn unanswered<S>(mut stream: S, state: &Arc<Mutex<State>>)
where
    S: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    const LIMIT: usize = 64 * 1024;
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while head.len() < LIMIT && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(read)) if read > 0 => head.extend_from_slice(&chunk[..read]),
            _ => return,
        }
    }
    let line = String::from_utf8_lossy(&head);
    let mut words = line.split_whitespace();
    let (Some(method), Some(target)) = (words.next(), words.next()) else {
        return;
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if let Ok(mut state) = state.lock() {
        state.seen.push(Seen {
            method: method.to_string(),
            path: path.to_string(),
            query: query.to_string(),
            status: UNANSWERED,
        });
    }
}

type Reply = Response<ReplyBody>;

/// A whole JSON document, or a watch stream.
pub enum ReplyBody {
    Full(Full<Bytes>),
    Stream(mpsc::UnboundedReceiver<Bytes>),
}

impl Body for ReplyBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            ReplyBody::Full(full) => Pin::new(full).poll_frame(cx),
            ReplyBody::Stream(receiver) => receiver
                .poll_recv(cx)
                .map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes)))),
        }
    }
}

fn reply(code: u16, body: &Value) -> Reply {
    let mut response = Response::new(ReplyBody::Full(Full::new(Bytes::from(body.to_string()))));
    *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// `/api/v1/[namespaces/NS/]PLURAL[/NAME]` or `/apis/GROUP/VERSION/[namespaces/NS/]PLURAL[/NAME]`.
fn route(path: &str) -> Option<(&'static Resource, Option<String>, Option<String>)> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", namespace, rest @ ..] if !rest.is_empty() => {
            (Some(namespace.to_string()), rest)
        }
        _ => (None, rest),
    };
    let (plural, name) = match rest {
        [plural] => (*plural, None),
        [plural, name] => (*plural, Some(name.to_string())),
        _ => return None,
    };
    let resource = Resource::by_plural(plural)?;
    (resource.group == group && resource.version == version).then_some((resource, namespace, name))
}

fn query(request: &Request<Incoming>) -> BTreeMap<String, String> {
    request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), decode(v)))
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(byte) => {
                        out.push(byte);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn answer(request: Request<Incoming>, state: Arc<Mutex<State>>) -> Result<Reply, Infallible> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let raw_query = request.uri().query().unwrap_or("").to_string();
    let authorized = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {TOKEN}"));
    let params = query(&request);
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let response = if !authorized {
        reply(401, &status(401, "Unauthorized", "Unauthorized"))
    } else {
        handle(&method, &path, &params, &body, &state).await
    };
    if let Ok(mut state) = state.lock() {
        state.seen.push(Seen {
            method: method.to_string(),
            path,
            query: raw_query,
            status: response.status().as_u16(),
        });
    }
    Ok(response)
}

async fn handle(
    method: &Method,
    path: &str,
    params: &BTreeMap<String, String>,
    body: &Bytes,
    state: &Arc<Mutex<State>>,
) -> Reply {
    // `.../NAME/status`: the status subresource (writes change only `status`).
    let (path, subresource) = match path.strip_suffix("/status") {
        Some(object) if route(object).is_some_and(|(_, _, name)| name.is_some()) => (object, true),
        _ => (path, false),
    };
    let Some((resource, namespace, name)) = route(path) else {
        return reply(
            404,
            &status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        );
    };
    let lock = || match state.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    if lock().not_served.contains(resource.plural) {
        return reply(
            404,
            &status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        );
    }
    match (method, name) {
        (&Method::GET, Some(name)) => {
            let found = lock()
                .objects
                .get(resource.plural)
                .and_then(|m| m.get(&(namespace.clone().unwrap_or_default(), name.clone())))
                .cloned();
            match found {
                Some(object) => reply(200, &object),
                None => reply(
                    404,
                    &status(
                        404,
                        "NotFound",
                        &format!("{} \"{name}\" not found", resource.plural),
                    ),
                ),
            }
        }
        (&Method::GET, None)
            if params.get("watch").map(String::as_str) == Some("true")
                || params.get("watch").map(String::as_str) == Some("1") =>
        {
            watch(resource, namespace, params, state)
        }
        (&Method::GET, None) => {
            let delay = lock().list_delay;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let selector = Selector::parse(
                params.get("fieldSelector").map(String::as_str),
                params.get("labelSelector").map(String::as_str),
            );
            let state = lock();
            let items: Vec<Value> = state
                .objects
                .get(resource.plural)
                .into_iter()
                .flat_map(|m| m.values())
                .filter(|o| {
                    namespace.is_none()
                        || o["metadata"]["namespace"].as_str() == namespace.as_deref()
                })
                .filter(|o| selector.matches(o))
                .map(|o| {
                    let mut item = o.clone();
                    if resource.builtin {
                        if let Some(map) = item.as_object_mut() {
                            map.remove("apiVersion");
                            map.remove("kind");
                        }
                    }
                    item
                })
                .collect();
            reply(
                200,
                &json!({
                    "apiVersion": resource.api_version(),
                    "kind": format!("{}List", resource.kind),
                    "metadata": {"resourceVersion": state.revision.to_string()},
                    "items": items
                }),
            )
        }
        (&Method::POST, None) => {
            let Ok(mut object) = serde_json::from_slice::<Value>(body) else {
                return reply(400, &status(400, "BadRequest", "the body is not JSON"));
            };
            if let Some(namespace) = &namespace {
                object["metadata"]["namespace"] = json!(namespace);
            }
            let name = object["metadata"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string();
            if name.is_empty() {
                return reply(
                    422,
                    &status(422, "Invalid", "metadata.name: Required value"),
                );
            }
            let mut state = lock();
            if resource.plural == "secrets" {
                if let Some(winner) = state.race_secret.take() {
                    state.put(resource, winner);
                }
            }
            let exists = state.objects.get(resource.plural).is_some_and(|m| {
                m.contains_key(&(namespace.clone().unwrap_or_default(), name.clone()))
            });
            if exists {
                return reply(
                    409,
                    &status(
                        409,
                        "AlreadyExists",
                        &format!("{} \"{name}\" already exists", resource.plural),
                    ),
                );
            }
            state.put(resource, object);
            let stored = state
                .objects
                .get(resource.plural)
                .and_then(|m| m.get(&(namespace.unwrap_or_default(), name)))
                .cloned()
                .unwrap_or_default();
            reply(201, &stored)
        }
        (&Method::PUT, Some(name)) | (&Method::PATCH, Some(name)) => {
            let Ok(body) = serde_json::from_slice::<Value>(body) else {
                return reply(400, &status(400, "BadRequest", "the body is not JSON"));
            };
            let key = (namespace.clone().unwrap_or_default(), name.clone());
            let mut state = lock();
            let Some(stored) = state
                .objects
                .get(resource.plural)
                .and_then(|m| m.get(&key))
                .cloned()
            else {
                return reply(
                    404,
                    &status(
                        404,
                        "NotFound",
                        &format!("{} \"{name}\" not found", resource.plural),
                    ),
                );
            };
            // Optimistic concurrency, as the real server: a resourceVersion in the body must
            // be the stored one.
            if let Some(version) = body["metadata"]["resourceVersion"].as_str() {
                if Some(version) != stored["metadata"]["resourceVersion"].as_str() {
                    return reply(
                        409,
                        &status(
                            409,
                            "Conflict",
                            &format!("Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again", resource.plural),
                        ),
                    );
                }
            }
            let mut updated = if *method == Method::PUT {
                body.clone()
            } else {
                let mut merged = stored.clone();
                merge_patch(&mut merged, &body);
                merged
            };
            if subresource {
                // Only status changes through /status.
                let mut object = stored.clone();
                object["status"] = updated["status"].clone();
                updated = object;
            } else if resource.plural != "leases" && resource.plural != "secrets" {
                // The main resource does not change status (the CRDs' status subresource).
                updated["status"] = stored["status"].clone();
            }
            updated["metadata"]["namespace"] = stored["metadata"]["namespace"].clone();
            updated["metadata"]["name"] = json!(name);
            if updated["status"].is_null() {
                if let Some(map) = updated.as_object_mut() {
                    map.remove("status");
                }
            }
            state.put(resource, updated);
            let stored = state
                .objects
                .get(resource.plural)
                .and_then(|m| m.get(&key))
                .cloned()
                .unwrap_or_default();
            state.writes.push(Write {
                method: method.to_string(),
                plural: resource.plural,
                namespace: key.0,
                name: key.1,
                subresource,
                body,
            });
            reply(200, &stored)
        }
        _ => reply(
            405,
            &status(
                405,
                "MethodNotAllowed",
                "the fake API server does not do that",
            ),
        ),
    }
}

/// RFC 7386 JSON merge patch: objects merge, `null` removes, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Some(map) = target.as_object_mut() {
        for (key, value) in patch {
            if value.is_null() {
                map.remove(key);
            } else {
                merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

fn watch(
    resource: &'static Resource,
    namespace: Option<String>,
    params: &BTreeMap<String, String>,
    state: &Arc<Mutex<State>>,
) -> Reply {
    let (sender, receiver) = mpsc::unbounded_channel();
    let mut guard = match state.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    let from = params
        .get("resourceVersion")
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|v| *v > 0);
    let watcher = Watcher {
        id: guard.next_watcher,
        resource: resource.plural,
        namespace,
        selector: Selector::parse(
            params.get("fieldSelector").map(String::as_str),
            params.get("labelSelector").map(String::as_str),
        ),
        bookmarks: params.get("allowWatchBookmarks").map(String::as_str) == Some("true"),
        sender,
    };
    guard.next_watcher += 1;
    match from {
        Some(from) if from < guard.compacted => {
            let message = format!("too old resource version: {from} ({})", guard.compacted);
            let _ = watcher
                .sender
                .send(event_line("ERROR", &status(410, "Expired", &message)));
            // The stream ends after the error, as the real server's does.
            drop(watcher);
            return stream_reply(receiver);
        }
        Some(from) => {
            for change in guard
                .history
                .iter()
                .filter(|c| c.revision > from && c.resource == resource.plural)
            {
                if watcher.wants(&change.object) {
                    let _ = watcher.sender.send(event_line(change.kind, &change.object));
                }
            }
        }
        None => {
            for object in guard
                .objects
                .get(resource.plural)
                .into_iter()
                .flat_map(|m| m.values())
            {
                if watcher.wants(object) {
                    let _ = watcher.sender.send(event_line("ADDED", object));
                }
            }
        }
    }
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(guard.max_watch)
        .min(guard.max_watch);
    let id = watcher.id;
    guard.watchers.push(watcher);
    drop(guard);
    let state = state.clone();
    tokio::spawn(async move {
        tokio::time::sleep(timeout).await;
        if let Ok(mut state) = state.lock() {
            state.watchers.retain(|w| w.id != id);
        }
    });
    stream_reply(receiver)
}

fn stream_reply(receiver: mpsc::UnboundedReceiver<Bytes>) -> Reply {
    let mut response = Response::new(ReplyBody::Stream(receiver));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_selectors() {
        let (resource, namespace, name) =
            route("/apis/discovery.k8s.io/v1/namespaces/kong/endpointslices").expect("route");
        assert_eq!(resource.kind, "EndpointSlice");
        assert_eq!(namespace.as_deref(), Some("kong"));
        assert!(name.is_none());
        let (resource, _, name) = route("/api/v1/namespaces/kong/secrets/key").expect("route");
        assert_eq!((resource.kind, name.as_deref()), ("Secret", Some("key")));
        assert!(route("/apis/discovery.k8s.io/v1beta1/endpointslices").is_none());
        let selector = Selector::parse(Some("metadata.name=key"), Some("a=b,!c"));
        assert!(selector.matches(&json!({"metadata": {"name": "key", "labels": {"a": "b"}}})));
        assert!(
            !selector.matches(&json!({"metadata": {"name": "key", "labels": {"a": "b", "c": ""}}}))
        );
        assert_eq!(decode("metadata.name%3Dkey"), "metadata.name=key");
    }
}
