//! KongUpstreamPolicy's spec → [`Balancing`]: Kong's CRD rules, then what tether supports. One
//! place for both sources: the file's `services.NAME.policy` and the cluster's
//! KongUpstreamPolicy objects (configuration.konghq.com/v1beta1) are validated by the same code,
//! so a policy valid in one is valid in the other.
//!
//! Also here: the cookie-name and cookie-attribute checks every session cookie passes, whichever
//! dialect (Kong, ingress-nginx, Gateway API) configured it.
use crate::model::{Balancing, HashOn, SameSite, SessionCookie};
use serde::{Deserialize, Serialize};
use std::fmt;

/// KongUpstreamPolicy's `spec`, field for field (unknown fields are ignored here; the file
/// source rejects them before converting).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOnSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on_fallback: Option<HashOnSpec>,
    /// Accepted, not applied (tether re-pins on connection failure instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthchecks: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky_sessions: Option<StickySessionsSpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HashOnSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_arg: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri_capture: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StickySessionsSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie_path: Option<String>,
}

/// Why a policy is invalid: the field (relative to the spec, like `hashOn.input`; empty for the
/// spec itself) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

fn error(field: impl Into<String>, message: impl Into<String>) -> PolicyError {
    PolicyError {
        field: field.into(),
        message: message.into(),
    }
}

/// A valid policy: how the service balances, and what was accepted but is not acted on
/// (field, message).
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    pub balancing: Balancing,
    pub warnings: Vec<(String, String)>,
}

/// Kong's KongUpstreamPolicy validation (its CRD's CEL rules), then tether's support.
pub fn balancing(spec: &PolicySpec) -> Result<Validated, PolicyError> {
    let mut warnings = Vec::new();
    if let Some(slots) = spec.slots {
        if !(10..=65_536).contains(&slots) {
            return Err(error("slots", "must be between 10 and 65536"));
        }
    }
    if spec.healthchecks.is_some() {
        warnings.push((
            "healthchecks".to_string(),
            "accepted but not applied; tether re-pins on connection failure instead".to_string(),
        ));
    }
    let algorithm = spec.algorithm.as_deref().unwrap_or("round-robin");
    let hash_on = match &spec.hash_on {
        None => None,
        Some(hash) => hash_on("hashOn", hash)?,
    };
    if let Some(sticky) = &spec.sticky_sessions {
        if algorithm != "sticky-sessions" {
            return Err(error(
                "algorithm",
                "must be sticky-sessions when stickySessions is set",
            ));
        }
        let input = spec.hash_on.as_ref().and_then(|h| h.input.as_deref());
        if input != Some("none") || hash_on.is_some() {
            return Err(error(
                "hashOn.input",
                "stickySessions requires hashOn.input: none and no other hashOn field",
            ));
        }
        if spec.hash_on_fallback.is_some() {
            return Err(error("hashOnFallback", "not allowed with stickySessions"));
        }
        let Some(cookie) = sticky.cookie.as_deref().filter(|c| !c.is_empty()) else {
            return Err(error(
                "stickySessions.cookie",
                "is required: the name of the session cookie",
            ));
        };
        check_cookie_name(cookie).map_err(|m| error("stickySessions.cookie", m))?;
        let mut session = SessionCookie::named(cookie);
        if let Some(path) = &sticky.cookie_path {
            check_cookie_value(path).map_err(|m| error("stickySessions.cookiePath", m))?;
            session.path = path.clone();
        }
        return Ok(Validated {
            balancing: Balancing::StickySessions(session),
            warnings,
        });
    }
    let fallback = match &spec.hash_on_fallback {
        None => None,
        Some(hash) => {
            if hash_on.is_none() {
                return Err(error("hashOnFallback", "needs hashOn"));
            }
            if matches!(hash_on, Some(HashOn::Cookie { .. })) {
                return Err(error(
                    "hashOnFallback",
                    "is not allowed when hashOn.cookie is set",
                ));
            }
            hash_on_fallback(hash)?
        }
    };
    let balancing = match algorithm {
        "sticky-sessions" => {
            return Err(error(
                "stickySessions",
                "is required by algorithm sticky-sessions",
            ))
        }
        "round-robin" | "least-connections" if hash_on.is_some() => {
            return Err(error(
                "hashOn",
                format!("has no effect with algorithm {algorithm}; use consistent-hashing"),
            ))
        }
        "round-robin" => Balancing::RoundRobin,
        "least-connections" => Balancing::LeastConnections,
        "consistent-hashing" => match hash_on {
            Some(hash_on) => Balancing::ConsistentHashing { hash_on, fallback },
            None => {
                return Err(error(
                    "hashOn",
                    "consistent-hashing needs hashOn with input ip or path, header, cookie or queryArg",
                ))
            }
        },
        "latency" => {
            return Err(error(
                "algorithm",
                "latency is not supported by tether; use least-connections",
            ))
        }
        other => {
            return Err(error(
                "algorithm",
                format!(
                    "unknown algorithm {other:?}: expected round-robin, consistent-hashing, least-connections or sticky-sessions"
                ),
            ))
        }
    };
    Ok(Validated {
        balancing,
        warnings,
    })
}

fn hash_on_fallback(raw: &HashOnSpec) -> Result<Option<HashOn>, PolicyError> {
    hash_on("hashOnFallback", raw)
}

/// Kong allows exactly one hash source; `input: none` means "no hashing".
fn hash_on(at: &str, raw: &HashOnSpec) -> Result<Option<HashOn>, PolicyError> {
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
        return Err(error(
            format!("{at}.{}", set[1]),
            format!("only one of {} may be set", set.join(", ")),
        ));
    }
    if raw.cookie_path.is_some() && raw.cookie.is_none() {
        return Err(error(format!("{at}.cookiePath"), "needs cookie"));
    }
    if let Some(input) = &raw.input {
        return match input.as_str() {
            "none" => Ok(None),
            "ip" => Ok(Some(HashOn::ClientIp)),
            "path" => Ok(Some(HashOn::Path)),
            "consumer" => Err(error(
                format!("{at}.input"),
                "consumer needs Kong's authentication plugins, which tether does not have",
            )),
            other => Err(error(
                format!("{at}.input"),
                format!("unknown input {other:?}: expected none, ip, path or consumer"),
            )),
        };
    }
    if let Some(header) = &raw.header {
        return Ok(Some(HashOn::Header(header.to_ascii_lowercase())));
    }
    if let Some(cookie) = &raw.cookie {
        check_cookie_name(cookie).map_err(|m| error(format!("{at}.cookie"), m))?;
        return Ok(Some(HashOn::Cookie {
            name: cookie.clone(),
            path: raw.cookie_path.clone().unwrap_or_else(|| "/".into()),
        }));
    }
    if let Some(arg) = &raw.query_arg {
        return Ok(Some(HashOn::QueryArg(arg.clone())));
    }
    if raw.uri_capture.is_some() {
        return Err(error(
            format!("{at}.uriCapture"),
            "regex route captures are not supported by tether",
        ));
    }
    Err(error(at, "set one of input, header, cookie or queryArg"))
}

/// RFC 6265 cookie-name: a token.
pub fn check_cookie_name(name: &str) -> Result<(), String> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return Err(format!(
            "{name:?} is not a valid cookie name (letters, digits and !#$%&'*+-.^_`|~)"
        ));
    }
    Ok(())
}

/// Attribute values (Path, Domain) may not break the Set-Cookie header.
pub fn check_cookie_value(value: &str) -> Result<(), String> {
    if value
        .bytes()
        .any(|b| b == b';' || b.is_ascii_control() || !b.is_ascii())
    {
        return Err(format!(
            "{value:?} may not contain ; or control or non-ASCII characters"
        ));
    }
    Ok(())
}

/// `Strict`, `Lax` or `None`, in any case.
pub fn same_site(value: &str) -> Result<SameSite, String> {
    match value.to_ascii_lowercase().as_str() {
        "strict" => Ok(SameSite::Strict),
        "lax" => Ok(SameSite::Lax),
        "none" => Ok(SameSite::None),
        _ => Err(format!("{value:?}: expected Strict, Lax or None")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sticky(cookie: Option<&str>, input: Option<&str>) -> PolicySpec {
        PolicySpec {
            algorithm: Some("sticky-sessions".into()),
            hash_on: Some(HashOnSpec {
                input: input.map(Into::into),
                ..HashOnSpec::default()
            }),
            sticky_sessions: Some(StickySessionsSpec {
                cookie: cookie.map(Into::into),
                cookie_path: Some("/".into()),
            }),
            ..PolicySpec::default()
        }
    }

    #[test]
    fn the_how_to_policy_is_sticky() {
        let valid = balancing(&sticky(Some("session_id"), Some("none"))).expect("valid");
        assert_eq!(
            valid.balancing,
            Balancing::StickySessions(SessionCookie::named("session_id"))
        );
        assert!(valid.warnings.is_empty());
    }

    #[test]
    fn kong_s_rules() {
        assert_eq!(
            balancing(&sticky(Some("c"), Some("ip")))
                .expect_err("hashOn.input ip")
                .field,
            "hashOn.input"
        );
        assert_eq!(
            balancing(&sticky(None, Some("none")))
                .expect_err("no cookie")
                .field,
            "stickySessions.cookie"
        );
        let mut spec = sticky(Some("c"), Some("none"));
        spec.algorithm = Some("round-robin".into());
        assert_eq!(balancing(&spec).expect_err("algorithm").field, "algorithm");
        let mut spec = sticky(Some("c"), Some("none"));
        spec.hash_on = None;
        assert_eq!(
            balancing(&spec).expect_err("no hashOn").field,
            "hashOn.input"
        );
        let spec = PolicySpec {
            algorithm: Some("sticky-sessions".into()),
            ..PolicySpec::default()
        };
        assert_eq!(
            balancing(&spec).expect_err("no sticky").field,
            "stickySessions"
        );
        let spec = PolicySpec {
            slots: Some(5),
            ..PolicySpec::default()
        };
        assert_eq!(balancing(&spec).expect_err("slots").field, "slots");
        let spec = PolicySpec {
            algorithm: Some("consistent-hashing".into()),
            hash_on: Some(HashOnSpec {
                input: Some("ip".into()),
                header: Some("x".into()),
                ..HashOnSpec::default()
            }),
            ..PolicySpec::default()
        };
        assert_eq!(balancing(&spec).expect_err("two").field, "hashOn.header");
    }

    #[test]
    fn healthchecks_are_a_warning() {
        let spec = PolicySpec {
            healthchecks: Some(serde_json::json!({"active": {}})),
            ..PolicySpec::default()
        };
        let valid = balancing(&spec).expect("valid");
        assert_eq!(valid.balancing, Balancing::RoundRobin);
        assert_eq!(valid.warnings[0].0, "healthchecks");
    }

    #[test]
    fn cookie_checks() {
        assert!(check_cookie_name("session_id").is_ok());
        assert!(check_cookie_name("a b").is_err());
        assert!(check_cookie_name("").is_err());
        assert!(check_cookie_value("/echo").is_ok());
        assert!(check_cookie_value("a;b").is_err());
        assert_eq!(same_site("lax"), Ok(SameSite::Lax));
        assert!(same_site("sometimes").is_err());
    }
}
