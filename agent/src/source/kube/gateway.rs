//! Gateway API session persistence (GEP-1619) → a session cookie.
//!
//! - `type: Cookie` (the default); `Header` is reported and ignored: tether's sessions are cookies.
//! - The cookie's name: `cookie.name`, else `sessionName`, else `tether-session`.
//! - `lifetimeType` (`cookie.lifetimeType` or `cookieConfig.lifetimeType`): `Session` (the
//!   default) sets neither Expires nor Max-Age; `Permanent` requires `absoluteTimeout` and sets
//!   `Max-Age` to it.
//! - `absoluteTimeout` and `idleTimeout` are enforced by tether from the signed cookie itself
//!   (issued-at and last-use times inside it), whatever the lifetime type.
//! - Attributes: HttpOnly and SameSite=Strict, as the GEP recommends. Secure only when the
//!   route is served through HTTPS listeners only (set by the translation, which knows the
//!   listeners): browsers drop Secure cookies set over plain HTTP.
//! - Path: `cookie.path`, else the common prefix of the rule's path matches.
use super::resources::SessionPersistence;
use crate::duration;
use crate::model::{SameSite, SessionCookie};
use crate::source::policy;
use std::time::Duration;

pub const DEFAULT_COOKIE: &str = "tether-session";

pub fn session_cookie(
    persistence: &SessionPersistence,
    default_path: &str,
) -> Result<SessionCookie, String> {
    let kind = persistence
        .type_
        .as_deref()
        .unwrap_or(if persistence.header.is_some() {
            "Header"
        } else {
            "Cookie"
        });
    if kind != "Cookie" {
        return Err(format!(
            "sessionPersistence type {kind:?} is not supported: tether's sessions are cookies"
        ));
    }
    let cookie_spec = persistence.cookie.as_ref();
    let name = cookie_spec
        .and_then(|c| c.name.as_deref())
        .or(persistence.session_name.as_deref())
        .filter(|n| !n.is_empty())
        .unwrap_or(DEFAULT_COOKIE);
    policy::check_cookie_name(name).map_err(|e| format!("sessionPersistence cookie name {e}"))?;
    let timeout = |field: &str, value: Option<&str>| -> Result<Option<Duration>, String> {
        let Some(value) = value else { return Ok(None) };
        let parsed =
            duration::parse(value).map_err(|e| format!("sessionPersistence.{field}: {e}"))?;
        if parsed < Duration::from_secs(1) {
            return Err(format!("sessionPersistence.{field}: must be at least 1s"));
        }
        Ok(Some(parsed))
    };
    let absolute = timeout("absoluteTimeout", persistence.absolute_timeout.as_deref())?;
    let idle = timeout("idleTimeout", persistence.idle_timeout.as_deref())?;
    let lifetime = cookie_spec
        .and_then(|c| c.lifetime_type.as_deref())
        .or(persistence
            .cookie_config
            .as_ref()
            .and_then(|c| c.lifetime_type.as_deref()))
        .unwrap_or("Session");
    let mut cookie = SessionCookie::named(name);
    cookie.same_site = Some(SameSite::Strict);
    cookie.absolute_timeout = absolute;
    cookie.idle_timeout = idle;
    match lifetime {
        "Session" => {}
        "Permanent" => match absolute {
            Some(absolute) => cookie.max_age = Some(absolute),
            None => {
                return Err(
                    "sessionPersistence lifetimeType Permanent requires absoluteTimeout".into(),
                )
            }
        },
        other => {
            return Err(format!(
                "sessionPersistence lifetimeType {other:?}: expected Session or Permanent"
            ))
        }
    }
    let path = cookie_spec
        .and_then(|c| c.path.as_deref())
        .unwrap_or(default_path);
    policy::check_cookie_value(path).map_err(|e| format!("sessionPersistence cookie path {e}"))?;
    cookie.path = path.to_string();
    Ok(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::kube::resources::{CookieConfig, CookieSpec, HeaderSpec};

    #[test]
    fn a_session_cookie_has_no_expiry_attributes() {
        let persistence = SessionPersistence {
            session_name: Some("gw".into()),
            idle_timeout: Some("30m".into()),
            ..SessionPersistence::default()
        };
        let cookie = session_cookie(&persistence, "/echo").expect("valid");
        assert_eq!(cookie.name, "gw");
        assert_eq!(cookie.path, "/echo");
        assert_eq!((cookie.max_age, cookie.expires), (None, None));
        assert_eq!(cookie.idle_timeout, Some(Duration::from_secs(1800)));
        assert_eq!(cookie.same_site, Some(SameSite::Strict));
        assert!(cookie.http_only);
    }

    #[test]
    fn permanent_needs_absolute_timeout_and_sets_max_age() {
        let mut persistence = SessionPersistence {
            cookie_config: Some(CookieConfig {
                lifetime_type: Some("Permanent".into()),
            }),
            ..SessionPersistence::default()
        };
        assert!(session_cookie(&persistence, "/").is_err());
        persistence.absolute_timeout = Some("1h30m".into());
        let cookie = session_cookie(&persistence, "/").expect("valid");
        assert_eq!(cookie.max_age, Some(Duration::from_secs(5400)));
        assert_eq!(cookie.absolute_timeout, Some(Duration::from_secs(5400)));
        assert_eq!(cookie.name, DEFAULT_COOKIE);
    }

    #[test]
    fn the_newer_shape() {
        let persistence = SessionPersistence {
            absolute_timeout: Some("10m".into()),
            cookie: Some(CookieSpec {
                name: Some("newer".into()),
                path: Some("/app".into()),
                lifetime_type: Some("Permanent".into()),
            }),
            ..SessionPersistence::default()
        };
        let cookie = session_cookie(&persistence, "/").expect("valid");
        assert_eq!(
            (cookie.name.as_str(), cookie.path.as_str()),
            ("newer", "/app")
        );
        assert_eq!(cookie.max_age, Some(Duration::from_secs(600)));
        let header = SessionPersistence {
            header: Some(HeaderSpec {
                name: Some("x-session".into()),
            }),
            ..SessionPersistence::default()
        };
        assert!(session_cookie(&header, "/")
            .expect_err("header")
            .contains("not supported"));
    }
}
