//! Configurations for the tests: one sticky-sessions service `echo` behind one route, with
//! whatever proxy settings and session cookie options a test needs.
use std::fmt::Write;
use std::net::SocketAddr;

/// The session cookie every built configuration uses.
pub const COOKIE: &str = "session-id";

/// Builds a YAML configuration; `$PROXY` and `$ADMIN` are filled in by [`crate::agent::Tether`].
#[derive(Debug, Clone)]
pub struct Config {
    targets: Vec<(SocketAddr, u32)>,
    proxy: Vec<String>,
    session_cookie: Vec<String>,
    route: String,
    route_options: Vec<String>,
    sticky: bool,
}

impl Config {
    /// A sticky-sessions service over `targets` (address, weight), routed from `/`.
    pub fn sticky(targets: &[(SocketAddr, u32)]) -> Self {
        Self {
            targets: targets.to_vec(),
            proxy: Vec::new(),
            session_cookie: Vec::new(),
            route: "pathPrefix: /".into(),
            route_options: Vec::new(),
            sticky: true,
        }
    }

    /// A plain round-robin service (no cookie).
    pub fn round_robin(targets: &[(SocketAddr, u32)]) -> Self {
        Self {
            sticky: false,
            ..Self::sticky(targets)
        }
    }

    /// Adds a line under `proxy:` (like `maxHeaderBytes: 8192` or `timeouts: {headerRead: 1s}`).
    pub fn proxy(mut self, line: &str) -> Self {
        self.proxy.push(line.to_string());
        self
    }

    /// Adds a line under the service's `sessionCookie:` (like `idleTimeout: 3s`).
    pub fn cookie(mut self, line: &str) -> Self {
        self.session_cookie.push(line.to_string());
        self
    }

    /// The route's match, as a flow mapping's content (default `pathPrefix: /`).
    pub fn route(mut self, matches: &str) -> Self {
        self.route = matches.to_string();
        self
    }

    /// Adds a field to the route (like `allowConnect: true`).
    pub fn route_option(mut self, line: &str) -> Self {
        self.route_options.push(line.to_string());
        self
    }

    /// The same configuration over other targets.
    pub fn targets(&self, targets: &[(SocketAddr, u32)]) -> Self {
        Self {
            targets: targets.to_vec(),
            ..self.clone()
        }
    }

    pub fn yaml(&self) -> String {
        let mut yaml = String::from("proxy:\n  listen: $PROXY\n");
        for line in &self.proxy {
            let _ = writeln!(yaml, "  {line}");
        }
        yaml.push_str("admin:\n  listen: $ADMIN\n");
        let _ = writeln!(
            yaml,
            "routes:\n  - match: {{{}}}\n    service: echo",
            self.route
        );
        for line in &self.route_options {
            let _ = writeln!(yaml, "    {line}");
        }
        yaml.push_str("services:\n  echo:\n");
        if self.sticky {
            let _ = writeln!(
                yaml,
                "    policy:\n      algorithm: sticky-sessions\n      hashOn: {{input: none}}\n      stickySessions: {{cookie: {COOKIE}, cookiePath: /}}"
            );
        }
        if !self.session_cookie.is_empty() {
            yaml.push_str("    sessionCookie:\n");
            for line in &self.session_cookie {
                let _ = writeln!(yaml, "      {line}");
            }
        }
        if self.targets.is_empty() {
            yaml.push_str("    targets: []\n");
        } else {
            yaml.push_str("    targets:\n");
            for (address, weight) in &self.targets {
                let _ = writeln!(yaml, "      - {{address: \"{address}\", weight: {weight}}}");
            }
        }
        yaml
    }
}
