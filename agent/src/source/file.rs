//! The standalone source: a YAML file becomes a [`Model`].
//!
//! Parsing happens in two steps: serde rejects unknown fields, wrong types and bad addresses
//! (serde_yaml reports path, line and column); then [`Validator`] applies the rules Kong's CRD
//! enforces and tether's own, pointing at the offending field through [`Locations`].
use super::locate::Locations;
use crate::duration::serde_duration;
use crate::model::{
    AdminSettings, Balancing, HashOn, HostMatch, Model, PathMatch, ProxySettings, ProxyTimeouts,
    Route, SameSite, Service, SessionCookie, Target, DEFAULT_MAX_HEADER_BYTES, DEFAULT_WEIGHT,
    MAX_WEIGHT,
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
}

/// Reads and validates a configuration file.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
        file: path.display().to_string(),
        line: None,
        column: None,
        field: String::new(),
        message: format!("cannot read: {error}"),
    })?;
    parse(&text, &path.display().to_string())
}

/// Validates configuration text; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Loaded, ConfigError> {
    let raw: RawConfig = serde_yaml::from_str(text).map_err(|error| serde_error(error, file))?;
    let mut validator = Validator {
        file,
        locations: Locations::of(text),
        warnings: Vec::new(),
    };
    let model = validator.model(raw)?;
    Ok(Loaded {
        model,
        warnings: validator.warnings,
    })
}

fn serde_error(error: serde_yaml::Error, file: &str) -> ConfigError {
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
    ConfigError {
        file: file.to_string(),
        line: location.as_ref().map(|l| l.line()),
        column: location.as_ref().map(|l| l.column()),
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
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    services: BTreeMap<String, RawService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawProxy {
    #[serde(deserialize_with = "socket_address")]
    listen: SocketAddr,
    #[serde(default)]
    timeouts: RawTimeouts,
    max_header_bytes: Option<usize>,
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    #[serde(deserialize_with = "socket_address")]
    listen: SocketAddr,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSessionKey {
    file: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    #[serde(rename = "match")]
    matches: RawMatch,
    service: String,
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

// ---- Validation -------------------------------------------------------------------------------

struct Validator<'a> {
    file: &'a str,
    locations: Locations,
    warnings: Vec<String>,
}

impl Validator<'_> {
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
            },
            max_header_bytes: proxy.max_header_bytes.unwrap_or(DEFAULT_MAX_HEADER_BYTES),
        });
        if let Some(proxy) = &proxy {
            // hyper cannot buffer less than 8 KiB; a smaller limit would silently not apply.
            if !(8192..=1024 * 1024).contains(&proxy.max_header_bytes) {
                return Err(self.error("proxy.maxHeaderBytes", "must be between 8192 and 1048576"));
            }
            for (name, value) in [
                ("headerRead", proxy.timeouts.header_read),
                ("connect", proxy.timeouts.connect),
                ("response", proxy.timeouts.response),
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
            if proxy.listen == admin.listen {
                return Err(self.error(
                    "admin.listen",
                    format!("{} is already proxy.listen", admin.listen),
                ));
            }
        }
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
        Ok(Model {
            proxy,
            admin,
            session_key: raw.session_key.map(|key| key.file),
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
                // "/echo/" and "/echo" both mean the path elements under /echo.
                let trimmed = prefix.trim_end_matches('/');
                PathMatch::Prefix(if trimmed.is_empty() { "/" } else { trimmed }.to_string())
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
        })
    }

    fn check_path(&self, field: &str, path: &str) -> Result<(), ConfigError> {
        if !path.starts_with('/') {
            return Err(self.error(field, format!("{path:?} must start with /")));
        }
        Ok(())
    }

    fn host(&self, field: &str, host: &str) -> Result<HostMatch, ConfigError> {
        let lower = host.to_ascii_lowercase();
        let valid_label = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if let Some(suffix) = lower.strip_prefix("*.") {
            if suffix.split('.').all(valid_label) {
                return Ok(HostMatch::Wildcard(suffix.to_string()));
            }
        } else if lower.split('.').all(valid_label) {
            return Ok(HostMatch::Exact(lower));
        }
        Err(self.error(
            field,
            format!("{host:?} is not a host name (a wildcard may only be a leading *.)"),
        ))
    }

    fn service(&mut self, name: &str, raw: RawService) -> Result<Service, ConfigError> {
        let at = format!("services.{name}");
        let balancing = match raw.policy {
            None => Balancing::RoundRobin,
            Some(policy) => self.policy(&format!("{at}.policy"), policy)?,
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
            targets,
        })
    }

    /// Kong's KongUpstreamPolicy validation (its CRD's CEL rules), then tether's support.
    fn policy(&mut self, at: &str, raw: RawPolicy) -> Result<Balancing, ConfigError> {
        if let Some(slots) = raw.slots {
            if !(10..=65_536).contains(&slots) {
                return Err(self.error(format!("{at}.slots"), "must be between 10 and 65536"));
            }
        }
        if raw.healthchecks.is_some() {
            self.warnings.push(format!(
                "{at}.healthchecks: accepted but not applied; tether re-pins on connection failure instead"
            ));
        }
        let algorithm = raw.algorithm.as_deref().unwrap_or("round-robin");
        let hash_on = match &raw.hash_on {
            None => None,
            Some(hash) => self.hash_on(&format!("{at}.hashOn"), hash)?,
        };
        if let Some(sticky) = &raw.sticky_sessions {
            if algorithm != "sticky-sessions" {
                return Err(self.error(
                    format!("{at}.algorithm"),
                    "must be sticky-sessions when stickySessions is set",
                ));
            }
            let input = raw.hash_on.as_ref().and_then(|h| h.input.as_deref());
            if input != Some("none") || hash_on.is_some() {
                return Err(self.error(
                    format!("{at}.hashOn.input"),
                    "stickySessions requires hashOn.input: none and no other hashOn field",
                ));
            }
            if raw.hash_on_fallback.is_some() {
                return Err(self.error(
                    format!("{at}.hashOnFallback"),
                    "not allowed with stickySessions",
                ));
            }
            let Some(cookie) = sticky.cookie.as_deref().filter(|c| !c.is_empty()) else {
                return Err(self.error(
                    format!("{at}.stickySessions.cookie"),
                    "is required: the name of the session cookie",
                ));
            };
            self.check_cookie_name(&format!("{at}.stickySessions.cookie"), cookie)?;
            let mut session = SessionCookie::named(cookie);
            if let Some(path) = &sticky.cookie_path {
                self.check_cookie_value(&format!("{at}.stickySessions.cookiePath"), path)?;
                session.path = path.clone();
            }
            return Ok(Balancing::StickySessions(session));
        }
        let fallback = match &raw.hash_on_fallback {
            None => None,
            Some(hash) => {
                let field = format!("{at}.hashOnFallback");
                if hash_on.is_none() {
                    return Err(self.error(field, "needs hashOn"));
                }
                if matches!(hash_on, Some(HashOn::Cookie { .. })) {
                    return Err(self.error(field, "is not allowed when hashOn.cookie is set"));
                }
                self.hash_on(&field, hash)?
            }
        };
        match algorithm {
            "sticky-sessions" => Err(self.error(
                format!("{at}.stickySessions"),
                "is required by algorithm sticky-sessions",
            )),
            "round-robin" | "least-connections" if hash_on.is_some() => Err(self.error(
                format!("{at}.hashOn"),
                format!("has no effect with algorithm {algorithm}; use consistent-hashing"),
            )),
            "round-robin" => Ok(Balancing::RoundRobin),
            "least-connections" => Ok(Balancing::LeastConnections),
            "consistent-hashing" => match hash_on {
                Some(hash_on) => Ok(Balancing::ConsistentHashing { hash_on, fallback }),
                None => Err(self.error(
                    format!("{at}.hashOn"),
                    "consistent-hashing needs hashOn with input ip or path, header, cookie or queryArg",
                )),
            },
            "latency" => Err(self.error(
                format!("{at}.algorithm"),
                "latency is not supported by tether; use least-connections",
            )),
            other => Err(self.error(
                format!("{at}.algorithm"),
                format!(
                    "unknown algorithm {other:?}: expected round-robin, consistent-hashing, least-connections or sticky-sessions"
                ),
            )),
        }
    }

    /// Kong allows exactly one hash source; `input: none` means "no hashing".
    fn hash_on(&self, at: &str, raw: &RawHashOn) -> Result<Option<HashOn>, ConfigError> {
        let set: Vec<&str> = [
            ("input", raw.input.is_some()),
            ("header", raw.header.is_some()),
            ("cookie", raw.cookie.is_some()),
            ("queryArg", raw.query_arg.is_some()),
            ("uriCapture", raw.uri_capture.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, present)| present.then_some(name))
        .collect();
        if set.len() > 1 {
            return Err(self.error(
                format!("{at}.{}", set[1]),
                format!("only one of {} may be set", set.join(", ")),
            ));
        }
        if raw.cookie_path.is_some() && raw.cookie.is_none() {
            return Err(self.error(format!("{at}.cookiePath"), "needs cookie"));
        }
        if let Some(input) = &raw.input {
            return match input.as_str() {
                "none" => Ok(None),
                "ip" => Ok(Some(HashOn::ClientIp)),
                "path" => Ok(Some(HashOn::Path)),
                "consumer" => Err(self.error(
                    format!("{at}.input"),
                    "consumer needs Kong's authentication plugins, which tether does not have",
                )),
                other => Err(self.error(
                    format!("{at}.input"),
                    format!("unknown input {other:?}: expected none, ip, path or consumer"),
                )),
            };
        }
        if let Some(header) = &raw.header {
            return Ok(Some(HashOn::Header(header.to_ascii_lowercase())));
        }
        if let Some(cookie) = &raw.cookie {
            self.check_cookie_name(&format!("{at}.cookie"), cookie)?;
            return Ok(Some(HashOn::Cookie {
                name: cookie.clone(),
                path: raw.cookie_path.clone().unwrap_or_else(|| "/".into()),
            }));
        }
        if let Some(arg) = &raw.query_arg {
            return Ok(Some(HashOn::QueryArg(arg.clone())));
        }
        if raw.uri_capture.is_some() {
            return Err(self.error(
                format!("{at}.uriCapture"),
                "regex route captures are not supported by tether",
            ));
        }
        Err(self.error(at, "set one of input, header, cookie or queryArg"))
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
            Some(value) => Some(match value.to_ascii_lowercase().as_str() {
                "strict" => SameSite::Strict,
                "lax" => SameSite::Lax,
                "none" => SameSite::None,
                _ => {
                    return Err(self.error(
                        format!("{at}.sameSite"),
                        format!("{value:?}: expected Strict, Lax or None"),
                    ))
                }
            }),
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

    /// RFC 6265 cookie-name: a token.
    fn check_cookie_name(&self, field: &str, name: &str) -> Result<(), ConfigError> {
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(token) {
            return Err(self.error(
                field,
                format!(
                    "{name:?} is not a valid cookie name (letters, digits and !#$%&'*+-.^_`|~)"
                ),
            ));
        }
        Ok(())
    }

    /// Attribute values may not break the Set-Cookie header.
    fn check_cookie_value(&self, field: &str, value: &str) -> Result<(), ConfigError> {
        if value.bytes().any(|b| b == b';' || b.is_ascii_control()) {
            return Err(self.error(
                field,
                format!("{value:?} may not contain ; or control characters"),
            ));
        }
        Ok(())
    }
}
