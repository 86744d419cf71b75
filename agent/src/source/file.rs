//! The standalone source: a YAML file becomes a [`Model`].
//!
//! Parsing happens in two steps: serde rejects unknown fields, wrong types and bad addresses
//! (serde_yaml reports path, line and column); then [`Validator`] applies the rules Kong's CRD
//! enforces and tether's own, pointing at the offending field through [`Locations`].
use super::locate::Locations;
use super::policy::{self, HashOnSpec, PolicySpec, StickySessionsSpec};
use crate::duration::serde_duration;
use crate::model::{
    AdminSettings, Balancing, CertificateFiles, DataplaneSettings, Frontend, HashOn, HostMatch,
    Http2Settings, KernelHashing, L4Protocol, Model, PathMatch, PodDelivery, ProxySettings,
    ProxyTimeouts, Route, SameSite, Service, SessionCookie, Target, TlsSettings, UpstreamProtocol,
    XdpMode, DEFAULT_MAX_CONCURRENT_STREAMS, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_WEIGHT, MAX_WEIGHT,
};
use serde::{de, Deserialize, Deserializer};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration error: which file, where in it, which field, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// The field, as a path like `services.echo.policy.hashOn.input`; empty for the document.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        if self.field.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.field, self.message)
        }
    }
}

/// A valid configuration, with the warnings worth logging (accepted but not acted on).
#[derive(Debug)]
pub struct Loaded {
    pub model: Model,
    pub warnings: Vec<String>,
    /// `allowEmpty: true`: the file means to serve no routes or no services, so a reload that
    /// removes all of them is intended (see [`refuses_emptying`]).
    pub allow_empty: bool,
}

/// Reads and validates a configuration file.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    parse_bytes(&read(path)?, &path.display().to_string())
}

/// [`parse`] for a file's content as read: it must be UTF-8 text.
pub fn parse_bytes(content: &[u8], file: &str) -> Result<Loaded, ConfigError> {
    match std::str::from_utf8(content) {
        Ok(text) => parse(text, file),
        Err(error) => Err(not_utf8(file, &error)),
    }
}

/// [`parse_node`] for a file's bytes: non-UTF-8 content is an error.
pub fn parse_node_bytes(content: &[u8], file: &str) -> Result<Loaded, ConfigError> {
    match std::str::from_utf8(content) {
        Ok(text) => parse_node(text, file),
        Err(error) => Err(not_utf8(file, &error)),
    }
}

fn not_utf8(file: &str, error: &std::str::Utf8Error) -> ConfigError {
    ConfigError {
        file: file.to_string(),
        line: None,
        column: None,
        field: String::new(),
        message: format!("not UTF-8 text: {error}"),
    }
}

/// A configuration file's content; the error names the file.
pub fn read(path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|error| ConfigError {
        file: path.display().to_string(),
        line: None,
        column: None,
        field: String::new(),
        message: format!("cannot read: {error}"),
    })
}

/// Validates the node-local file of `--kubernetes`, where `proxy.tls.certificates` may be
/// empty (certificates come from the cluster's Secrets).
pub fn parse_node(text: &str, file: &str) -> Result<Loaded, ConfigError> {
    parse_with(text, file, true)
}

/// Validates configuration text; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Loaded, ConfigError> {
    parse_with(text, file, false)
}

fn parse_with(
    text: &str,
    file: &str,
    certificates_from_cluster: bool,
) -> Result<Loaded, ConfigError> {
    // serde_path_to_error names the exact field even for errors raised by our own deserializers
    // (addresses, durations), where serde_yaml only names the enclosing mapping.
    let raw: Option<RawConfig> =
        serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text))
            .map_err(|error| serde_error(error, text, file))?;
    // An empty file is far more often a write caught halfway than a wish to serve nothing.
    let Some(raw) = raw else {
        return Err(ConfigError {
            file: file.to_string(),
            line: None,
            column: None,
            field: String::new(),
            message: "the file is empty (nothing but blanks and comments)".into(),
        });
    };
    let allow_empty = raw.allow_empty;
    let mut validator = Validator {
        file,
        certificates_from_cluster,
        locations: Locations::of(text),
        warnings: Vec::new(),
    };
    let model = validator.model(raw)?;
    Ok(Loaded {
        model,
        warnings: validator.warnings,
        allow_empty,
    })
}

/// Why a reload from `running` to `next` must be refused: it would remove every route or every
/// service, which a truncated file does and an operator rarely means. `allowEmpty: true` in the
/// new file says it is meant.
pub fn refuses_emptying(running: &Model, next: &Loaded) -> Option<&'static str> {
    if next.allow_empty {
        return None;
    }
    if !running.routes.is_empty() && next.model.routes.is_empty() {
        return Some("it removes every route (set allowEmpty: true if that is meant)");
    }
    if !running.services.is_empty() && next.model.services.is_empty() {
        return Some("it removes every service (set allowEmpty: true if that is meant)");
    }
    None
}

fn serde_error(
    error: serde_path_to_error::Error<serde_yaml::Error>,
    text: &str,
    file: &str,
) -> ConfigError {
    let path = error.path().to_string();
    let error = error.into_inner();
    // serde_yaml's message reads "path: message at line L column C"; split it into fields.
    let location = error.location();
    let mut message = error.to_string();
    if let Some(at) = message.rfind(" at line ") {
        message.truncate(at);
    }
    let (field, message) = match message.split_once(": ") {
        Some((field, rest)) if !field.contains(' ') => (field.to_string(), rest.to_string()),
        _ => (String::new(), message),
    };
    // The full path when there is one ("." is the document itself).
    let field = if path == "." { field } else { path };
    let (line, column, message) = match (location, super::locate::syntax_error(text)) {
        (Some(location), _) => (Some(location.line()), Some(location.column()), message),
        // serde_yaml lost the place (and sometimes the reason: a scanner error can come out
        // as "more than one document"); the YAML parser says both.
        (None, Some((position, why))) => (
            Some(position.line),
            Some(position.column),
            format!("invalid YAML: {why}"),
        ),
        (None, None) => (None, None, message),
    };
    ConfigError {
        file: file.to_string(),
        line,
        column,
        field,
        message,
    }
}

// ---- The file's shape -------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawConfig {
    proxy: Option<RawProxy>,
    admin: Option<RawAdmin>,
    session_key: Option<RawSessionKey>,
    dataplane: Option<RawDataplane>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    services: BTreeMap<String, RawService>,
    #[serde(default)]
    allow_empty: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawProxy {
    #[serde(deserialize_with = "socket_address")]
    listen: SocketAddr,
    #[serde(default)]
    timeouts: RawTimeouts,
    max_header_bytes: Option<usize>,
    max_connections: Option<usize>,
    tls: Option<RawTls>,
    #[serde(default)]
    http2: RawHttp2,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawHttp2 {
    max_concurrent_streams: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawTls {
    #[serde(deserialize_with = "socket_address")]
    listen: SocketAddr,
    #[serde(default)]
    certificates: Vec<RawCertificate>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawCertificate {
    cert_file: PathBuf,
    key_file: PathBuf,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawTimeouts {
    #[serde(default, deserialize_with = "serde_duration::deserialize")]
    header_read: Option<Duration>,
    #[serde(default, deserialize_with = "serde_duration::deserialize")]
    connect: Option<Duration>,
    #[serde(default, deserialize_with = "serde_duration::deserialize")]
    response: Option<Duration>,
    #[serde(default, deserialize_with = "serde_duration::deserialize")]
    client_idle: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    #[serde(deserialize_with = "socket_address")]
    listen: SocketAddr,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawDataplane {
    interfaces: Vec<String>,
    xdp_mode: Option<String>,
    #[serde(default)]
    pod_interfaces: Vec<String>,
    pod_delivery: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSessionKey {
    file: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRoute {
    #[serde(rename = "match")]
    matches: RawMatch,
    service: String,
    #[serde(default)]
    allow_connect: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawMatch {
    host: Option<String>,
    path_prefix: Option<String>,
    path: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawService {
    /// A VIP:port makes this a kernel (L4) service.
    #[serde(default, deserialize_with = "optional_socket_address")]
    listen: Option<SocketAddr>,
    protocol: Option<String>,
    policy: Option<RawPolicy>,
    session_cookie: Option<RawSessionCookie>,
    #[serde(default)]
    targets: Vec<RawTarget>,
}

/// KongUpstreamPolicy's spec, field for field.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPolicy {
    algorithm: Option<String>,
    slots: Option<u32>,
    hash_on: Option<RawHashOn>,
    hash_on_fallback: Option<RawHashOn>,
    healthchecks: Option<serde_yaml::Value>,
    sticky_sessions: Option<RawStickySessions>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawHashOn {
    input: Option<String>,
    header: Option<String>,
    cookie: Option<String>,
    cookie_path: Option<String>,
    query_arg: Option<String>,
    uri_capture: Option<String>,
}

impl RawHashOn {
    fn into_spec(self) -> HashOnSpec {
        HashOnSpec {
            input: self.input,
            header: self.header,
            cookie: self.cookie,
            cookie_path: self.cookie_path,
            query_arg: self.query_arg,
            uri_capture: self.uri_capture,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawStickySessions {
    cookie: Option<String>,
    cookie_path: Option<String>,
}

/// tether's cookie options beyond Kong's: ingress-nginx's attributes and Gateway API lifetimes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSessionCookie {
    domain: Option<String>,
    http_only: Option<bool>,
    secure: Option<bool>,
    same_site: Option<String>,
    conditional_same_site_none: Option<bool>,
    #[serde(default, deserialize_with = "serde_duration::deserialize")]
    max_age: Option<Duration>,
    #[serde(default, deserialize_with = "serde_duration::deserialize")]
    expires: Option<Duration>,
    #[serde(default, deserialize_with = "serde_duration::deserialize")]
    absolute_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "serde_duration::deserialize")]
    idle_timeout: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    #[serde(deserialize_with = "socket_address")]
    address: SocketAddr,
    weight: Option<u32>,
}

fn socket_address<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.trim().parse().map_err(|_| {
        de::Error::custom(format!(
            "invalid address {text:?}: expected IP:port, like 127.0.0.1:9001 or [::1]:9001"
        ))
    })
}

fn optional_socket_address<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<SocketAddr>, D::Error> {
    socket_address(d).map(Some)
}

// ---- Validation -------------------------------------------------------------------------------

struct Validator<'a> {
    file: &'a str,
    /// `--kubernetes`: certificates may all come from the cluster, so `proxy.tls.certificates`
    /// may be empty.
    certificates_from_cluster: bool,
    locations: Locations,
    warnings: Vec<String>,
}

impl Validator<'_> {
    /// A path from the file, relative to the file's directory unless absolute.
    fn beside_file(&self, path: PathBuf) -> PathBuf {
        match Path::new(self.file).parent() {
            Some(directory) if path.is_relative() => directory.join(path),
            _ => path,
        }
    }

    fn error(&self, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        let field = field.into();
        let position = self.locations.find(&field);
        ConfigError {
            file: self.file.to_string(),
            line: position.map(|p| p.line),
            column: position.map(|p| p.column),
            field,
            message: message.into(),
        }
    }

    fn model(&mut self, raw: RawConfig) -> Result<Model, ConfigError> {
        let proxy = raw.proxy.map(|proxy| ProxySettings {
            tls: proxy.tls.map(|tls| TlsSettings {
                listen: tls.listen,
                certificates: tls
                    .certificates
                    .into_iter()
                    .map(|certificate| CertificateFiles {
                        cert_file: self.beside_file(certificate.cert_file),
                        key_file: self.beside_file(certificate.key_file),
                    })
                    .collect(),
                cluster: Vec::new(),
            }),
            listen: proxy.listen,
            timeouts: ProxyTimeouts {
                header_read: proxy
                    .timeouts
                    .header_read
                    .unwrap_or(ProxyTimeouts::default().header_read),
                connect: proxy
                    .timeouts
                    .connect
                    .unwrap_or(ProxyTimeouts::default().connect),
                response: proxy
                    .timeouts
                    .response
                    .unwrap_or(ProxyTimeouts::default().response),
                client_idle: proxy
                    .timeouts
                    .client_idle
                    .unwrap_or(ProxyTimeouts::default().client_idle),
            },
            max_header_bytes: proxy.max_header_bytes.unwrap_or(DEFAULT_MAX_HEADER_BYTES),
            max_connections: proxy.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
            http2: Http2Settings {
                max_concurrent_streams: proxy
                    .http2
                    .max_concurrent_streams
                    .unwrap_or(DEFAULT_MAX_CONCURRENT_STREAMS),
            },
        });
        if let Some(proxy) = &proxy {
            // hyper cannot buffer less than 8 KiB; a smaller limit would silently not apply.
            if !(8192..=1024 * 1024).contains(&proxy.max_header_bytes) {
                return Err(self.error("proxy.maxHeaderBytes", "must be between 8192 and 1048576"));
            }
            if proxy.max_connections == 0 {
                return Err(self.error("proxy.maxConnections", "must be above 0"));
            }
            if !(1..=10_000).contains(&proxy.http2.max_concurrent_streams) {
                return Err(self.error(
                    "proxy.http2.maxConcurrentStreams",
                    "must be between 1 and 10000",
                ));
            }
            if let Some(tls) = &proxy.tls {
                // Port 0 asks the kernel for a free port: two of them never collide.
                if tls.listen == proxy.listen && tls.listen.port() != 0 {
                    return Err(self.error(
                        "proxy.tls.listen",
                        format!("{} is already proxy.listen", tls.listen),
                    ));
                }
                if tls.certificates.is_empty() && !self.certificates_from_cluster {
                    return Err(self.error(
                        "proxy.tls.certificates",
                        "needs at least one certificate ({certFile, keyFile})",
                    ));
                }
            }
            for (name, value) in [
                ("headerRead", proxy.timeouts.header_read),
                ("connect", proxy.timeouts.connect),
                ("response", proxy.timeouts.response),
                ("clientIdle", proxy.timeouts.client_idle),
            ] {
                if value.is_zero() {
                    return Err(self.error(format!("proxy.timeouts.{name}"), "must be above 0"));
                }
            }
        }
        let admin = raw.admin.map(|admin| AdminSettings {
            listen: admin.listen,
        });
        if let (Some(proxy), Some(admin)) = (&proxy, &admin) {
            if proxy.tls.as_ref().map(|tls| tls.listen) == Some(admin.listen)
                && admin.listen.port() != 0
            {
                return Err(self.error(
                    "admin.listen",
                    format!("{} is already proxy.tls.listen", admin.listen),
                ));
            }
            if proxy.listen == admin.listen {
                return Err(self.error(
                    "admin.listen",
                    format!("{} is already proxy.listen", admin.listen),
                ));
            }
        }
        let dataplane = match raw.dataplane {
            None => None,
            Some(dataplane) => Some(self.dataplane(dataplane)?),
        };
        let mut services = BTreeMap::new();
        for (name, service) in raw.services {
            let service = self.service(&name, service)?;
            services.insert(name, service);
        }
        if !raw.routes.is_empty() && proxy.is_none() {
            return Err(self.error("routes", "routes need a proxy section with proxy.listen"));
        }
        let mut routes = Vec::with_capacity(raw.routes.len());
        for (index, route) in raw.routes.into_iter().enumerate() {
            routes.push(self.route(index, route, &services)?);
        }
        if let Some((name, _)) = services.iter().find(|(_, s)| s.frontend.is_some()) {
            if dataplane.is_none() {
                return Err(self.error(
                    format!("services.{name}.listen"),
                    "a kernel service needs a dataplane section with dataplane.interfaces",
                ));
            }
        }
        let mut vips = HashSet::new();
        for (name, service) in &services {
            if let Some(frontend) = service.frontend {
                if !vips.insert((frontend.listen, frontend.protocol)) {
                    return Err(self.error(
                        format!("services.{name}.listen"),
                        format!(
                            "{} {} is already another service's",
                            frontend.protocol.as_str(),
                            frontend.listen
                        ),
                    ));
                }
            }
        }
        Ok(Model {
            proxy,
            admin,
            session_key: raw.session_key.map(|key| key.file),
            dataplane,
            routes,
            services,
        })
    }

    fn route(
        &self,
        index: usize,
        raw: RawRoute,
        services: &BTreeMap<String, Service>,
    ) -> Result<Route, ConfigError> {
        let at = format!("routes[{index}]");
        if !services.contains_key(&raw.service) {
            return Err(self.error(
                format!("{at}.service"),
                format!("no service named {:?} under services", raw.service),
            ));
        }
        let path = match (raw.matches.path_prefix, raw.matches.path) {
            (Some(_), Some(_)) => {
                return Err(self.error(format!("{at}.match"), "set pathPrefix or path, not both"))
            }
            (Some(prefix), None) => {
                self.check_path(&format!("{at}.match.pathPrefix"), &prefix)?;
                super::prefix_match(&prefix)
            }
            (None, Some(exact)) => {
                self.check_path(&format!("{at}.match.path"), &exact)?;
                PathMatch::Exact(exact)
            }
            (None, None) => PathMatch::Prefix("/".into()),
        };
        let host = match raw.matches.host {
            None => None,
            Some(host) => Some(self.host(&format!("{at}.match.host"), &host)?),
        };
        Ok(Route {
            host,
            path,
            service: raw.service,
            allow_connect: raw.allow_connect,
            plaintext: crate::model::Plaintext::Serve,
            over_tls: true,
        })
    }

    fn check_path(&self, field: &str, path: &str) -> Result<(), ConfigError> {
        if !path.starts_with('/') {
            return Err(self.error(field, format!("{path:?} must start with /")));
        }
        Ok(())
    }

    fn host(&self, field: &str, host: &str) -> Result<HostMatch, ConfigError> {
        super::host_match(host).map_err(|message| self.error(field, message))
    }

    fn dataplane(&self, raw: RawDataplane) -> Result<DataplaneSettings, ConfigError> {
        if raw.interfaces.is_empty() {
            return Err(self.error("dataplane.interfaces", "name at least one interface"));
        }
        for (index, interface) in raw.interfaces.iter().enumerate() {
            // IFNAMSIZ is 16 with the terminating NUL.
            if interface.is_empty() || interface.len() > 15 || interface.contains(['/', ' ', '\0'])
            {
                return Err(self.error(
                    format!("dataplane.interfaces[{index}]"),
                    format!("{interface:?} is not an interface name"),
                ));
            }
        }
        for (index, pattern) in raw.pod_interfaces.iter().enumerate() {
            if let Err(message) = crate::dataplane::interfaces::check_pattern(pattern) {
                return Err(self.error(format!("dataplane.podInterfaces[{index}]"), message));
            }
        }
        let xdp_mode = match raw.xdp_mode.as_deref() {
            None | Some("native") => XdpMode::Native,
            Some("skb") => XdpMode::Skb,
            Some(other) => {
                return Err(self.error(
                    "dataplane.xdpMode",
                    format!("{other:?}: expected native or skb"),
                ))
            }
        };
        let pod_delivery = match raw.pod_delivery.as_deref() {
            None | Some("peer") => PodDelivery::Peer,
            Some("redirect") => PodDelivery::Redirect,
            Some(other) => {
                return Err(self.error(
                    "dataplane.podDelivery",
                    format!("{other:?}: expected peer or redirect"),
                ))
            }
        };
        Ok(DataplaneSettings {
            interfaces: raw.interfaces,
            xdp_mode,
            pod_interfaces: raw.pod_interfaces,
            pod_delivery,
        })
    }

    fn service(&mut self, name: &str, raw: RawService) -> Result<Service, ConfigError> {
        let at = format!("services.{name}");
        let balancing = match raw.policy {
            None => Balancing::RoundRobin,
            Some(policy) => self.policy(&format!("{at}.policy"), policy)?,
        };
        let mut upstream = UpstreamProtocol::Http1;
        let frontend = match raw.listen {
            None => {
                upstream = match raw.protocol.as_deref() {
                    None | Some("http") => UpstreamProtocol::Http1,
                    Some("h2c") => UpstreamProtocol::H2c,
                    Some(other) => {
                        return Err(self.error(
                            format!("{at}.protocol"),
                            format!("{other:?}: expected http or h2c for a proxied service (tcp and udp need listen, a VIP:port)"),
                        ))
                    }
                };
                None
            }
            Some(listen) => {
                Some(self.frontend(&at, listen, raw.protocol.as_deref(), &balancing)?)
            }
        };
        let balancing = match (balancing, raw.session_cookie) {
            (Balancing::StickySessions(cookie), Some(options)) => Balancing::StickySessions(
                self.session_cookie(&format!("{at}.sessionCookie"), cookie, options)?,
            ),
            (_, Some(_)) => {
                return Err(self.error(
                    format!("{at}.sessionCookie"),
                    "only applies to policy.algorithm sticky-sessions",
                ))
            }
            (balancing, None) => balancing,
        };
        let mut seen = HashSet::new();
        let mut targets = Vec::with_capacity(raw.targets.len());
        for (index, target) in raw.targets.into_iter().enumerate() {
            let field = format!("{at}.targets[{index}]");
            if !seen.insert(target.address) {
                return Err(self.error(
                    format!("{field}.address"),
                    format!("{} is listed twice", target.address),
                ));
            }
            let weight = target.weight.unwrap_or(DEFAULT_WEIGHT);
            if weight > MAX_WEIGHT {
                return Err(self.error(
                    format!("{field}.weight"),
                    format!("{weight} is above the maximum of {MAX_WEIGHT}"),
                ));
            }
            targets.push(Target::from_weight(target.address, weight));
        }
        Ok(Service {
            name: name.to_string(),
            balancing,
            frontend,
            targets,
            upstream,
        })
    }

    /// A kernel service: the kernel can hash the 5-tuple or the client address, nothing at L7.
    fn frontend(
        &self,
        at: &str,
        listen: SocketAddr,
        protocol: Option<&str>,
        balancing: &Balancing,
    ) -> Result<Frontend, ConfigError> {
        let protocol = match protocol {
            None | Some("tcp") | Some("TCP") => L4Protocol::Tcp,
            Some("udp") | Some("UDP") => L4Protocol::Udp,
            Some(other) => {
                return Err(self.error(
                    format!("{at}.protocol"),
                    format!("{other:?}: expected tcp or udp"),
                ))
            }
        };
        if listen.port() == 0 || listen.ip().is_unspecified() {
            return Err(self.error(
                format!("{at}.listen"),
                "a kernel service needs a specific VIP and a port",
            ));
        }
        let hashing = match balancing {
            Balancing::RoundRobin => KernelHashing::FiveTuple,
            Balancing::ConsistentHashing {
                hash_on: HashOn::ClientIp,
                fallback: None,
            } => KernelHashing::ClientIp,
            _ => {
                return Err(self.error(
                    format!("{at}.policy"),
                    "a kernel service (listen) takes algorithm round-robin, or consistent-hashing with hashOn.input ip; cookies and headers are HTTP",
                ))
            }
        };
        Ok(Frontend {
            listen,
            protocol,
            hashing,
        })
    }

    /// Kong's KongUpstreamPolicy validation, shared with the Kubernetes source ([`policy`]).
    fn policy(&mut self, at: &str, raw: RawPolicy) -> Result<Balancing, ConfigError> {
        let spec = PolicySpec {
            algorithm: raw.algorithm,
            slots: raw.slots,
            hash_on: raw.hash_on.map(RawHashOn::into_spec),
            hash_on_fallback: raw.hash_on_fallback.map(RawHashOn::into_spec),
            healthchecks: raw
                .healthchecks
                .map(|h| serde_json::to_value(h).unwrap_or(serde_json::Value::Null)),
            sticky_sessions: raw.sticky_sessions.map(|s| StickySessionsSpec {
                cookie: s.cookie,
                cookie_path: s.cookie_path,
            }),
        };
        let valid = policy::balancing(&spec).map_err(|e| {
            let field = if e.field.is_empty() {
                at.to_string()
            } else {
                format!("{at}.{}", e.field)
            };
            self.error(field, e.message)
        })?;
        for (field, message) in valid.warnings {
            self.warnings.push(format!("{at}.{field}: {message}"));
        }
        Ok(valid.balancing)
    }

    fn session_cookie(
        &self,
        at: &str,
        mut cookie: SessionCookie,
        raw: RawSessionCookie,
    ) -> Result<SessionCookie, ConfigError> {
        if let Some(domain) = raw.domain {
            self.check_cookie_value(&format!("{at}.domain"), &domain)?;
            cookie.domain = Some(domain);
        }
        cookie.http_only = raw.http_only.unwrap_or(true);
        cookie.secure = raw.secure.unwrap_or(false);
        cookie.same_site = match raw.same_site.as_deref() {
            None => None,
            Some(value) => Some(
                policy::same_site(value)
                    .map_err(|message| self.error(format!("{at}.sameSite"), message))?,
            ),
        };
        if cookie.same_site == Some(SameSite::None) && !cookie.secure {
            // Browsers drop SameSite=None cookies without Secure.
            return Err(self.error(
                format!("{at}.sameSite"),
                "None needs secure: true, or browsers reject the cookie",
            ));
        }
        cookie.conditional_same_site_none = raw.conditional_same_site_none.unwrap_or(false);
        cookie.max_age = raw.max_age;
        cookie.expires = raw.expires;
        cookie.absolute_timeout = raw.absolute_timeout;
        cookie.idle_timeout = raw.idle_timeout;
        for (name, value) in [
            ("absoluteTimeout", cookie.absolute_timeout),
            ("idleTimeout", cookie.idle_timeout),
        ] {
            if value.is_some_and(|v| v < Duration::from_secs(1)) {
                return Err(self.error(format!("{at}.{name}"), "must be at least 1s"));
            }
        }
        Ok(cookie)
    }

    fn check_cookie_value(&self, field: &str, value: &str) -> Result<(), ConfigError> {
        policy::check_cookie_value(value).map_err(|message| self.error(field, message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TargetState;

    /// The standalone example from the README, verbatim.
    const L7: &str = r#"proxy:
  listen: 127.0.0.1:8080
admin:
  listen: 127.0.0.1:9901
routes:
  - match: {pathPrefix: /echo}
    service: echo
services:
  echo:
    policy:
      algorithm: sticky-sessions
      hashOn: {input: none}
      stickySessions: {cookie: session-id, cookiePath: /}
    targets:
      - {address: 127.0.0.1:9001}
      - {address: 127.0.0.1:9002, weight: 100}
      - {address: 127.0.0.1:9003, weight: 0}
"#;

    const L4: &str = r#"dataplane:
  interfaces: [eth0]
  xdpMode: native
services:
  web:
    listen: 10.0.0.100:80
    protocol: tcp
    policy: {algorithm: round-robin}
    targets:
      - {address: 10.0.1.2:8080}
      - {address: 10.0.1.3:8080, weight: 0}
"#;

    fn error(yaml: &str) -> ConfigError {
        parse(yaml, "t.yaml").expect_err("must be rejected")
    }

    #[test]
    fn http2_settings_and_h2c_services() {
        let model = parse(L7, "t.yaml").expect("valid").model;
        let proxy = model.proxy.expect("proxy");
        assert_eq!(proxy.http2.max_concurrent_streams, 100);
        assert_eq!(model.services["echo"].upstream, UpstreamProtocol::Http1);
        let yaml = L7
            .replace(
                "  listen: 127.0.0.1:8080\n",
                "  listen: 127.0.0.1:8080\n  http2: {maxConcurrentStreams: 7}\n",
            )
            .replace("  echo:\n", "  echo:\n    protocol: h2c\n");
        let model = parse(&yaml, "t.yaml").expect("valid").model;
        assert_eq!(model.proxy.expect("proxy").http2.max_concurrent_streams, 7);
        assert_eq!(model.services["echo"].upstream, UpstreamProtocol::H2c);
        let zero = L7.replace(
            "  listen: 127.0.0.1:8080\n",
            "  listen: 127.0.0.1:8080\n  http2: {maxConcurrentStreams: 0}\n",
        );
        assert_eq!(error(&zero).field, "proxy.http2.maxConcurrentStreams");
        let unknown = L7.replace("  echo:\n", "  echo:\n    protocol: h3\n");
        assert_eq!(error(&unknown).field, "services.echo.protocol");
        let kernel = L4.replace("protocol: tcp", "protocol: h2c");
        assert_eq!(error(&kernel).field, "services.web.protocol");
    }

    #[test]
    fn tls_listener_certificates_resolve_beside_the_file() {
        let yaml = r#"proxy:
  listen: 127.0.0.1:8080
  tls:
    listen: 127.0.0.1:8443
    certificates:
      - {certFile: a.pem, keyFile: /etc/tether/a.key}
"#;
        let model = parse(yaml, "/etc/tether/conf/tether.yaml")
            .expect("valid")
            .model;
        let tls = model.proxy.and_then(|proxy| proxy.tls).expect("tls");
        assert_eq!(tls.listen.to_string(), "127.0.0.1:8443");
        assert_eq!(
            tls.certificates,
            [CertificateFiles {
                cert_file: "/etc/tether/conf/a.pem".into(),
                key_file: "/etc/tether/a.key".into(),
            }]
        );
    }

    #[test]
    fn tls_listener_mistakes_are_named() {
        let base = "proxy:\n  listen: 127.0.0.1:8080\n  tls:\n";
        for (tls, field, message) in [
            (
                "    listen: 127.0.0.1:8443\n",
                "proxy.tls.certificates",
                "at least one",
            ),
            (
                "    listen: 127.0.0.1:8080\n    certificates: [{certFile: a, keyFile: b}]\n",
                "proxy.tls.listen",
                "already proxy.listen",
            ),
            (
                "    listen: 127.0.0.1:8443\n    certificates: [{certFile: a}]\n",
                "proxy.tls.certificates[0]",
                "missing field `keyFile`",
            ),
        ] {
            let error = error(&format!("{base}{tls}"));
            assert_eq!(error.field, field, "{error}");
            assert!(error.message.contains(message), "{error}");
            assert!(error.line.is_some(), "{error}");
        }
        let error = error(
            "proxy:\n  listen: 127.0.0.1:8080\n  tls:\n    listen: 127.0.0.1:9000\n    certificates: [{certFile: a, keyFile: b}]\nadmin:\n  listen: 127.0.0.1:9000\n",
        );
        assert_eq!(error.field, "admin.listen", "{error}");
    }

    #[test]
    fn syntax_errors_serde_yaml_cannot_place_are_placed() {
        // Found by the config_yaml fuzz target: serde_yaml said "more than one document", with
        // no location.
        let text = format!("&yyyy,,,,,,,{}p241", "y".repeat(39));
        let error = parse(&text, "tether.yaml").expect_err("not a configuration");
        assert!(error.line.is_some(), "{error:?}");
        assert!(!error.message.contains("more than one document"), "{error}");
    }

    #[test]
    fn the_standalone_example_parses() {
        let model = parse(L7, "t.yaml").expect("valid").model;
        let echo = &model.services["echo"];
        let Balancing::StickySessions(cookie) = &echo.balancing else {
            panic!("sticky expected")
        };
        assert_eq!(
            (cookie.name.as_str(), cookie.path.as_str()),
            ("session-id", "/")
        );
        assert!(cookie.http_only);
        let weights: Vec<(u32, TargetState)> =
            echo.targets.iter().map(|t| (t.weight, t.state)).collect();
        assert_eq!(
            weights,
            vec![
                (100, TargetState::Active),
                (100, TargetState::Active),
                (0, TargetState::Draining)
            ]
        );
        assert_eq!(model.routes[0].path, PathMatch::Prefix("/echo".into()));
    }

    #[test]
    fn a_kernel_only_file_parses() {
        let model = parse(L4, "t.yaml").expect("valid").model;
        assert!(model.proxy.is_none());
        let web = &model.services["web"];
        let frontend = web.frontend.expect("kernel service");
        assert_eq!(frontend.listen, "10.0.0.100:80".parse().expect("addr"));
        assert_eq!(frontend.protocol, L4Protocol::Tcp);
        assert_eq!(frontend.hashing, KernelHashing::FiveTuple);
        assert_eq!(
            model.dataplane.expect("dataplane").interfaces,
            vec!["eth0".to_string()]
        );
    }

    #[test]
    fn kong_rejects_sticky_sessions_without_hash_on_none() {
        let e = error(&L7.replace("hashOn: {input: none}", "hashOn: {input: ip}"));
        assert_eq!(e.field, "services.echo.policy.hashOn.input");
        assert_eq!(e.line, Some(12));
        assert!(e.to_string().starts_with("t.yaml:12:"), "{e}");
        let e = error(&L7.replace("      hashOn: {input: none}\n", ""));
        assert_eq!(e.field, "services.echo.policy.hashOn.input");
        let e = error(&L7.replace("cookie: session-id, ", ""));
        assert_eq!(e.field, "services.echo.policy.stickySessions.cookie");
        let e = error(&L7.replace("algorithm: sticky-sessions", "algorithm: round-robin"));
        assert_eq!(e.field, "services.echo.policy.algorithm");
    }

    #[test]
    fn unknown_fields_and_bad_addresses_name_field_and_line() {
        let e = error(&L7.replace("cookiePath: /}", "cookiePath: /, bogus: 1}"));
        assert!(e.message.contains("unknown field `bogus`"), "{e}");
        assert_eq!(e.line, Some(13));
        let e = error(&L7.replace("127.0.0.1:9002", "127.0.0.1:99999"));
        assert!(e.message.contains("expected IP:port"), "{e}");
        assert_eq!(e.line, Some(16));
        let e = error(&L7.replace("service: echo", "service: nope"));
        assert_eq!((e.field.as_str(), e.line), ("routes[0].service", Some(7)));
    }

    #[test]
    fn target_rules() {
        let e = error(&L7.replace("127.0.0.1:9003", "127.0.0.1:9001"));
        assert!(e.message.contains("listed twice"), "{e}");
        let e = error(&L7.replace("weight: 100}", "weight: 70000}"));
        assert_eq!(e.field, "services.echo.targets[1].weight");
    }

    #[test]
    fn cookie_options_are_validated() {
        let with = |block: &str| {
            L7.replace(
                "    targets:",
                &format!("    sessionCookie: {block}\n    targets:"),
            )
        };
        let model = parse(
            &with(
                "{sameSite: Lax, secure: true, maxAge: 1h, idleTimeout: 30m, domain: example.com}",
            ),
            "t",
        )
        .expect("valid")
        .model;
        let Balancing::StickySessions(cookie) = &model.services["echo"].balancing else {
            panic!("sticky expected")
        };
        assert_eq!(cookie.same_site, Some(SameSite::Lax));
        assert_eq!(cookie.max_age, Some(Duration::from_secs(3600)));
        assert_eq!(cookie.idle_timeout, Some(Duration::from_secs(1800)));
        assert_eq!(
            error(&with("{sameSite: Sometimes}")).field,
            "services.echo.sessionCookie.sameSite"
        );
        assert_eq!(
            error(&with("{sameSite: None}")).field,
            "services.echo.sessionCookie.sameSite"
        );
        assert!(error(&with("{maxAge: 10x}"))
            .message
            .contains("unknown unit"));
        assert_eq!(
            error(&with("{domain: \"a;b\"}")).field,
            "services.echo.sessionCookie.domain"
        );
    }

    #[test]
    fn kernel_service_rules() {
        let e = error(&L4.replace("dataplane:\n  interfaces: [eth0]\n  xdpMode: native\n", ""));
        assert_eq!(e.field, "services.web.listen");
        let e = error(&L4.replace(
            "{algorithm: round-robin}",
            "{algorithm: sticky-sessions, hashOn: {input: none}, stickySessions: {cookie: c}}",
        ));
        assert_eq!(e.field, "services.web.policy");
        let hashed = parse(
            &L4.replace(
                "{algorithm: round-robin}",
                "{algorithm: consistent-hashing, hashOn: {input: ip}}",
            ),
            "t",
        )
        .expect("valid")
        .model;
        assert_eq!(
            hashed.services["web"].frontend.expect("frontend").hashing,
            KernelHashing::ClientIp
        );
        assert_eq!(
            error(&L4.replace("protocol: tcp", "protocol: sctp")).field,
            "services.web.protocol"
        );
        assert_eq!(
            error(&L4.replace("xdpMode: native", "xdpMode: turbo")).field,
            "dataplane.xdpMode"
        );
        let delivery = |text: &str| {
            parse(text, "t")
                .expect("valid")
                .model
                .dataplane
                .expect("dataplane")
                .pod_delivery
        };
        assert_eq!(delivery(L4), PodDelivery::Peer);
        let redirect = L4.replace(
            "xdpMode: native",
            "xdpMode: native\n  podDelivery: redirect",
        );
        assert_eq!(delivery(&redirect), PodDelivery::Redirect);
        assert_eq!(
            error(&L4.replace(
                "xdpMode: native",
                "xdpMode: native\n  podDelivery: teleport"
            ))
            .field,
            "dataplane.podDelivery"
        );
        assert_eq!(
            error(&L4.replace("10.0.0.100:80", "0.0.0.0:80")).field,
            "services.web.listen"
        );
    }

    #[test]
    fn routes_need_a_proxy_and_valid_matches() {
        let e = error(&L7.replace("proxy:\n  listen: 127.0.0.1:8080\n", ""));
        assert_eq!(e.field, "routes");
        let e = error(&L7.replace("{pathPrefix: /echo}", "{pathPrefix: echo}"));
        assert_eq!(e.field, "routes[0].match.pathPrefix");
        let e = error(&L7.replace("{pathPrefix: /echo}", "{pathPrefix: /echo, path: /x}"));
        assert_eq!(e.field, "routes[0].match");
        let e = error(&L7.replace("{pathPrefix: /echo}", "{host: \"a*.b\"}"));
        assert_eq!(e.field, "routes[0].match.host");
    }
}
