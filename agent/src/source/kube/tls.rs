//! TLS from the cluster, pure: the certificate a `kubernetes.io/tls` Secret holds, and what a
//! route does with plaintext requests (ingress-nginx's `ssl-redirect` and
//! `force-ssl-redirect`, Kong's `konghq.com/protocols` and
//! `konghq.com/https-redirect-status-code`).
//!
//! | annotation | tether |
//! |---|---|
//! | Ingress `spec.tls` (ingress-nginx) | a plaintext request for a host listed there gets 308 to https |
//! | `nginx.ingress.kubernetes.io/ssl-redirect: "false"` | no redirect for that Ingress's routes |
//! | `nginx.ingress.kubernetes.io/force-ssl-redirect: "true"` | 308 for every route of the Ingress, TLS hosts or not |
//! | `konghq.com/protocols` | `https` only: plaintext requests get the redirect status below; `http` only: requests over TLS do not match the route; both: both are served (and the annotation overrides ingress-nginx's rules) |
//! | `konghq.com/https-redirect-status-code` | 301, 302, 307, 308 redirect; 426 (Kong's default) answers Upgrade Required |
use crate::model::{PemCertificate, Plaintext};
use k8s_openapi::api::core::v1::Secret;
use std::collections::BTreeMap;

/// The Secret type that holds `tls.crt` and `tls.key`.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";
pub const KONG_PROTOCOLS: &str = "konghq.com/protocols";
pub const KONG_REDIRECT_STATUS: &str = "konghq.com/https-redirect-status-code";
pub const NGINX_SSL_REDIRECT: &str = "nginx.ingress.kubernetes.io/ssl-redirect";
pub const NGINX_FORCE_SSL_REDIRECT: &str = "nginx.ingress.kubernetes.io/force-ssl-redirect";
/// ingress-nginx's redirect status (`http-redirect-code`'s default).
pub const NGINX_REDIRECT: u16 = 308;
/// Kong's default `https_redirect_status_code`.
pub const KONG_DEFAULT_REDIRECT: u16 = 426;

/// The certificate in Secret `namespace/name`, or why it cannot serve one. The PEM content is
/// checked where it is loaded (a bad one is logged there and the others keep serving).
pub fn certificate(
    namespace: &str,
    name: &str,
    secret: Option<&Secret>,
) -> Result<PemCertificate, String> {
    let origin = format!("Secret {namespace}/{name}");
    let Some(secret) = secret else {
        return Err(format!(
            "{origin} does not exist or is not of type {TLS_SECRET_TYPE}: its hosts get no certificate of their own"
        ));
    };
    if secret.type_.as_deref() != Some(TLS_SECRET_TYPE) {
        return Err(format!(
            "{origin} is not of type {TLS_SECRET_TYPE}: its hosts get no certificate of their own"
        ));
    }
    let field = |key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|data| data.get(key))
            .map(|bytes| bytes.0.clone())
            .filter(|bytes| !bytes.is_empty())
            .ok_or_else(|| {
                format!("{origin} has no {key}: its hosts get no certificate of their own")
            })
    };
    let chain = field("tls.crt")?;
    let key = field("tls.key")?;
    Ok(PemCertificate { origin, chain, key })
}

/// What an Ingress's routes do with plaintext requests and requests over TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schemes {
    pub plaintext: Plaintext,
    pub over_tls: bool,
}

impl Default for Schemes {
    fn default() -> Self {
        Self {
            plaintext: Plaintext::Serve,
            over_tls: true,
        }
    }
}

/// Kong's annotations: `None` when `konghq.com/protocols` is absent; `Err` names what is wrong
/// (the route is then served both ways).
pub fn kong_schemes(annotations: &BTreeMap<String, String>) -> Option<Result<Schemes, String>> {
    let protocols = annotations.get(KONG_PROTOCOLS)?;
    let mut http = false;
    let mut https = false;
    for protocol in protocols.split(',').map(|p| p.trim().to_ascii_lowercase()) {
        match protocol.as_str() {
            "http" => http = true,
            "https" => https = true,
            "" => {}
            other => {
                return Some(Err(format!(
                    "{KONG_PROTOCOLS}: {other:?} is not supported on an Ingress (http, https); served over both"
                )))
            }
        }
    }
    if !http && !https {
        return Some(Err(format!(
            "{KONG_PROTOCOLS}: names no protocol; served over both"
        )));
    }
    if http {
        return Some(Ok(Schemes {
            plaintext: Plaintext::Serve,
            over_tls: https,
        }));
    }
    let status = match annotations.get(KONG_REDIRECT_STATUS).map(|s| s.trim()) {
        None => KONG_DEFAULT_REDIRECT,
        Some(text) => match text.parse::<u16>() {
            Ok(status @ (301 | 302 | 307 | 308 | 426)) => status,
            _ => {
                return Some(Err(format!(
                    "{KONG_REDIRECT_STATUS}: {text:?} is not one of 301, 302, 307, 308, 426; served over both"
                )))
            }
        },
    };
    Some(Ok(Schemes {
        plaintext: Plaintext::Redirect(status),
        over_tls: true,
    }))
}

/// ingress-nginx's rule for one route: `tls_host` says a certificate is configured for its host
/// (an Ingress lists the host under `spec.tls`). The warnings name unreadable annotations (their
/// defaults then apply).
pub fn nginx_schemes(
    annotations: &BTreeMap<String, String>,
    tls_host: bool,
) -> (Schemes, Vec<String>) {
    let mut warnings = Vec::new();
    let mut flag = |name: &str, default: bool| match annotations.get(name).map(|v| v.trim()) {
        None => default,
        Some(value) => parse_bool(value).unwrap_or_else(|| {
            warnings.push(format!(
                "{name}: {value:?} is not a boolean; the default ({default}) applies"
            ));
            default
        }),
    };
    let force = flag(NGINX_FORCE_SSL_REDIRECT, false);
    let redirect = flag(NGINX_SSL_REDIRECT, true);
    let plaintext = if force || (tls_host && redirect) {
        Plaintext::Redirect(NGINX_REDIRECT)
    } else {
        Plaintext::Serve
    };
    (
        Schemes {
            plaintext,
            over_tls: true,
        },
        warnings,
    )
}

/// Go's strconv.ParseBool, which ingress-nginx uses for its boolean annotations.
fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn kong_protocols() {
        assert_eq!(kong_schemes(&annotations(&[])), None);
        let https_only = kong_schemes(&annotations(&[(KONG_PROTOCOLS, "https")]));
        assert_eq!(
            https_only,
            Some(Ok(Schemes {
                plaintext: Plaintext::Redirect(426),
                over_tls: true
            }))
        );
        let redirect = kong_schemes(&annotations(&[
            (KONG_PROTOCOLS, "https"),
            (KONG_REDIRECT_STATUS, "301"),
        ]));
        assert_eq!(
            redirect.and_then(Result::ok).map(|s| s.plaintext),
            Some(Plaintext::Redirect(301))
        );
        let http_only = kong_schemes(&annotations(&[(KONG_PROTOCOLS, "http")]));
        assert_eq!(
            http_only,
            Some(Ok(Schemes {
                plaintext: Plaintext::Serve,
                over_tls: false
            }))
        );
        let both = kong_schemes(&annotations(&[
            (KONG_PROTOCOLS, "http, HTTPS"),
            (KONG_REDIRECT_STATUS, "308"),
        ]));
        assert_eq!(both, Some(Ok(Schemes::default())));
        assert!(matches!(
            kong_schemes(&annotations(&[(KONG_PROTOCOLS, "grpcs")])),
            Some(Err(_))
        ));
        assert!(matches!(
            kong_schemes(&annotations(&[
                (KONG_PROTOCOLS, "https"),
                (KONG_REDIRECT_STATUS, "200")
            ])),
            Some(Err(_))
        ));
    }

    #[test]
    fn nginx_redirects_tls_hosts_unless_told_not_to() {
        let none = annotations(&[]);
        assert_eq!(
            nginx_schemes(&none, true).0.plaintext,
            Plaintext::Redirect(308)
        );
        assert_eq!(nginx_schemes(&none, false).0.plaintext, Plaintext::Serve);
        let off = annotations(&[(NGINX_SSL_REDIRECT, "false")]);
        assert_eq!(nginx_schemes(&off, true).0.plaintext, Plaintext::Serve);
        let forced = annotations(&[(NGINX_FORCE_SSL_REDIRECT, "true")]);
        assert_eq!(
            nginx_schemes(&forced, false).0.plaintext,
            Plaintext::Redirect(308)
        );
        let (schemes, warnings) = nginx_schemes(&annotations(&[(NGINX_SSL_REDIRECT, "no")]), true);
        assert_eq!(schemes.plaintext, Plaintext::Redirect(308));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
    }

    #[test]
    fn secrets() {
        let secret = |type_: &str, keys: &[&str]| Secret {
            type_: Some(type_.into()),
            data: Some(
                keys.iter()
                    .map(|k| (k.to_string(), ByteString(b"pem".to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        };
        let good = certificate(
            "ns",
            "site",
            Some(&secret(TLS_SECRET_TYPE, &["tls.crt", "tls.key"])),
        )
        .expect("a TLS secret");
        assert_eq!(good.origin, "Secret ns/site");
        assert!(certificate("ns", "site", None)
            .expect_err("missing")
            .contains("does not exist"));
        assert!(certificate(
            "ns",
            "site",
            Some(&secret("Opaque", &["tls.crt", "tls.key"]))
        )
        .expect_err("opaque")
        .contains("not of type"));
        assert!(
            certificate("ns", "site", Some(&secret(TLS_SECRET_TYPE, &["tls.crt"])))
                .expect_err("no key")
                .contains("no tls.key")
        );
    }
}
