//! ingress-nginx's cookie affinity annotations → a session cookie, with ingress-nginx's
//! documented defaults:
//!
//! | annotation (`nginx.ingress.kubernetes.io/…`) | tether |
//! |---|---|
//! | `affinity: cookie` | sticky sessions; any other value is reported and ignored |
//! | `affinity-mode` | `balanced` (default) and `persistent` both pin a session to its pod for as long as the pod lives: tether's cookie names the target, so scaling up never moves a session |
//! | `session-cookie-name` | default `INGRESSCOOKIE` |
//! | `session-cookie-path` | default: the Ingress path (the common prefix of this Ingress's paths to the Service); with regex paths it is required, and tether uses `/` and reports it when absent |
//! | `session-cookie-domain` | `Domain` |
//! | `session-cookie-samesite` | `None`, `Lax` or `Strict` |
//! | `session-cookie-conditional-samesite-none` | omits `SameSite=None` for browsers known to reject it |
//! | `session-cookie-expires` | seconds, written as an `Expires` date |
//! | `session-cookie-max-age` | seconds, `Max-Age` |
//! | `session-cookie-secure` | default false: tether's listener is plain HTTP, and ingress-nginx's default follows the request's scheme |
//! | `session-cookie-change-on-failure` | default false: a retry on another pod after the pinned one failed keeps the cookie |
//!
//! HttpOnly is always set, as ingress-nginx does.
//!
//! `backend-protocol: GRPC` makes the Ingress's Services h2c (HTTP/2 with prior knowledge).
use crate::model::{SameSite, SessionCookie};
use crate::source::policy;
use std::collections::BTreeMap;
use std::time::Duration;

pub const PREFIX: &str = "nginx.ingress.kubernetes.io/";
pub const DEFAULT_COOKIE: &str = "INGRESSCOOKIE";

/// The cookie an Ingress's annotations ask for, and what in them was ignored and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Affinity {
    pub cookie: SessionCookie,
    pub warnings: Vec<String>,
}

fn annotation<'a>(annotations: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
    annotations
        .get(&format!("{PREFIX}{name}"))
        .map(|v| v.trim())
}

/// Whether the Ingress's paths are regular expressions to ingress-nginx.
pub fn uses_regex(annotations: &BTreeMap<String, String>) -> bool {
    annotation(annotations, "use-regex").and_then(parse_bool) == Some(true)
        || annotation(annotations, "rewrite-target").is_some()
}

/// `backend-protocol: GRPC`: the backends speak HTTP/2 over cleartext.
pub fn grpc_backend(annotations: &BTreeMap<String, String>) -> bool {
    annotation(annotations, "backend-protocol").is_some_and(|v| v.eq_ignore_ascii_case("GRPC"))
}

/// Go's strconv.ParseBool, which ingress-nginx uses for its boolean annotations.
fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// `None`: no affinity annotation. `Some(Err)`: affinity is set but cannot be honoured.
/// `default_path` is the cookie path when `session-cookie-path` is absent; `regex` says the
/// Ingress's paths are regular expressions (a regex never works as a cookie path).
pub fn affinity(
    annotations: &BTreeMap<String, String>,
    default_path: &str,
    regex: bool,
) -> Option<Result<Affinity, String>> {
    let kind = annotation(annotations, "affinity")?;
    Some(build(annotations, kind, default_path, regex))
}

fn build(
    annotations: &BTreeMap<String, String>,
    kind: &str,
    default_path: &str,
    regex: bool,
) -> Result<Affinity, String> {
    if kind != "cookie" {
        return Err(format!(
            "{PREFIX}affinity {kind:?} is not supported: cookie is the only affinity"
        ));
    }
    let mut warnings = Vec::new();
    let get = |name: &str| annotation(annotations, name).filter(|v| !v.is_empty());
    let name = get("session-cookie-name").unwrap_or(DEFAULT_COOKIE);
    policy::check_cookie_name(name).map_err(|e| format!("{PREFIX}session-cookie-name: {e}"))?;
    let mut cookie = SessionCookie::named(name);
    cookie.change_on_failure = false;
    match get("affinity-mode") {
        None | Some("balanced") | Some("persistent") => {}
        Some(other) => warnings.push(format!(
            "{PREFIX}affinity-mode {other:?} is not balanced or persistent; using balanced"
        )),
    }
    cookie.path = match get("session-cookie-path") {
        Some(path) => {
            policy::check_cookie_value(path)
                .map_err(|e| format!("{PREFIX}session-cookie-path: {e}"))?;
            path.to_string()
        }
        None if regex => {
            warnings.push(format!(
                "{PREFIX}session-cookie-path is required with regex paths (a regex never matches as a cookie path); using /"
            ));
            "/".to_string()
        }
        None => default_path.to_string(),
    };
    if let Some(domain) = get("session-cookie-domain") {
        policy::check_cookie_value(domain)
            .map_err(|e| format!("{PREFIX}session-cookie-domain: {e}"))?;
        cookie.domain = Some(domain.to_string());
    }
    let flag = |name: &str, warnings: &mut Vec<String>| -> Option<bool> {
        let value = get(name)?;
        let parsed = parse_bool(value);
        if parsed.is_none() {
            warnings.push(format!(
                "{PREFIX}{name} {value:?} is not true or false; ignored"
            ));
        }
        parsed
    };
    cookie.secure = flag("session-cookie-secure", &mut warnings).unwrap_or(false);
    cookie.conditional_same_site_none =
        flag("session-cookie-conditional-samesite-none", &mut warnings).unwrap_or(false);
    cookie.change_on_failure =
        flag("session-cookie-change-on-failure", &mut warnings).unwrap_or(false);
    if let Some(value) = get("session-cookie-samesite") {
        match policy::same_site(value) {
            Ok(same_site) => cookie.same_site = Some(same_site),
            Err(e) => warnings.push(format!("{PREFIX}session-cookie-samesite {e}; ignored")),
        }
    }
    if cookie.same_site == Some(SameSite::None) && !cookie.secure {
        warnings.push(format!(
            "{PREFIX}session-cookie-samesite None without session-cookie-secure \"true\": browsers reject such cookies"
        ));
    }
    let seconds = |name: &str, warnings: &mut Vec<String>| -> Option<Duration> {
        let value = get(name)?;
        match value.parse::<u64>() {
            Ok(seconds) => Some(Duration::from_secs(seconds)),
            Err(_) => {
                warnings.push(format!(
                    "{PREFIX}{name} {value:?} is not a number of seconds; ignored"
                ));
                None
            }
        }
    };
    cookie.expires = seconds("session-cookie-expires", &mut warnings);
    cookie.max_age = seconds("session-cookie-max-age", &mut warnings);
    Ok(Affinity { cookie, warnings })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string()))
            .collect()
    }

    #[test]
    fn no_affinity_no_cookie() {
        assert_eq!(affinity(&annotations(&[]), "/", false), None);
    }

    #[test]
    fn ingress_nginx_defaults() {
        let found = affinity(&annotations(&[("affinity", "cookie")]), "/echo", false)
            .expect("affinity")
            .expect("valid");
        let cookie = found.cookie;
        assert_eq!(cookie.name, "INGRESSCOOKIE");
        assert_eq!(cookie.path, "/echo");
        assert!(cookie.http_only);
        assert!(!cookie.secure);
        assert!(!cookie.change_on_failure);
        assert_eq!((cookie.max_age, cookie.expires), (None, None));
        assert!(found.warnings.is_empty());
    }

    #[test]
    fn the_documented_example() {
        let found = affinity(
            &annotations(&[
                ("affinity", "cookie"),
                ("affinity-mode", "persistent"),
                ("session-cookie-name", "route"),
                ("session-cookie-expires", "172800"),
                ("session-cookie-max-age", "172800"),
                ("session-cookie-path", "/"),
                ("session-cookie-domain", "example.com"),
                ("session-cookie-samesite", "None"),
                ("session-cookie-secure", "true"),
                ("session-cookie-conditional-samesite-none", "true"),
                ("session-cookie-change-on-failure", "true"),
            ]),
            "/echo",
            false,
        )
        .expect("affinity")
        .expect("valid");
        let cookie = found.cookie;
        assert_eq!(cookie.name, "route");
        assert_eq!(cookie.path, "/");
        assert_eq!(cookie.domain.as_deref(), Some("example.com"));
        assert_eq!(cookie.same_site, Some(SameSite::None));
        assert!(cookie.secure && cookie.conditional_same_site_none && cookie.change_on_failure);
        assert_eq!(cookie.max_age, Some(Duration::from_secs(172_800)));
        assert_eq!(cookie.expires, Some(Duration::from_secs(172_800)));
        assert!(found.warnings.is_empty(), "{:?}", found.warnings);
    }

    #[test]
    fn regex_paths_need_an_explicit_cookie_path() {
        let set = annotations(&[("affinity", "cookie"), ("use-regex", "true")]);
        assert!(uses_regex(&set));
        let found = affinity(&set, "/api/v[0-9]+", true)
            .expect("affinity")
            .expect("valid");
        assert_eq!(found.cookie.path, "/");
        assert!(found.warnings[0].contains("required with regex paths"));
    }

    #[test]
    fn bad_values_are_reported() {
        assert!(affinity(&annotations(&[("affinity", "ip")]), "/", false)
            .expect("affinity")
            .is_err());
        assert!(affinity(
            &annotations(&[("affinity", "cookie"), ("session-cookie-name", "a b")]),
            "/",
            false
        )
        .expect("affinity")
        .is_err());
        let found = affinity(
            &annotations(&[
                ("affinity", "cookie"),
                ("session-cookie-max-age", "2d"),
                ("session-cookie-samesite", "Sometimes"),
                ("session-cookie-secure", "yes"),
            ]),
            "/",
            false,
        )
        .expect("affinity")
        .expect("valid");
        assert_eq!(found.warnings.len(), 3, "{:?}", found.warnings);
        assert_eq!(found.cookie.max_age, None);
    }
}
