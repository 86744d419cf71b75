//! Header rules for a forwarding proxy (RFC 9110 §7.6): hop-by-hop fields stop here,
//! forwarded-for fields are added, and `Via` records the hop.
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, COOKIE, HOST, PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE, VIA,
};
use std::net::IpAddr;

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const VIA_VALUE: HeaderValue = HeaderValue::from_static("1.1 tether");

/// Whether the request asks to switch protocols (WebSocket and the like).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE) && connection_has(headers, "upgrade")
}

/// Whether `Connection` lists `token` (case-insensitive, read as bytes so a field with other
/// bytes in it still counts).
pub fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Removes hop-by-hop fields: the fixed set and any named in `Connection`.
/// With `keep_upgrade`, `Connection: upgrade` and `Upgrade` pass, so the tunnel can be set up.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none of these: one pass over the few names present is far cheaper
    // than a hashed remove() per hop-by-hop name (measured with callgrind).
    if !keep_upgrade && !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            // As bytes: a value with one non-ASCII byte still names the fields it lists
            // (found by fuzz/fuzz_targets/http_request.rs: they passed to the target).
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
            .filter(|name| !(keep_upgrade && name == UPGRADE))
            .collect();
        for name in named {
            headers.remove(&name);
        }
        headers.remove(CONNECTION);
    }
    for name in [&KEEP_ALIVE, &PROXY_CONNECTION] {
        headers.remove(name);
    }
    headers.remove(TE);
    headers.remove(TRAILER);
    headers.remove(TRANSFER_ENCODING);
    headers.remove(PROXY_AUTHENTICATE);
    headers.remove(PROXY_AUTHORIZATION);
    if keep_upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(UPGRADE);
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == CONNECTION
        || name == UPGRADE
        || name == TE
        || name == TRAILER
        || name == TRANSFER_ENCODING
        || name == PROXY_AUTHENTICATE
        || name == PROXY_AUTHORIZATION
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

/// Joins the Cookie fields of an HTTP/2 request into one, `"; "` between them: an HTTP/2
/// client may split Cookie into crumbs (RFC 9113 §8.2.3), and an HTTP/1.1 target expects
/// one field (RFC 6265 §5.4).
pub fn join_cookie_crumbs(headers: &mut HeaderMap) {
    let mut crumbs = headers.get_all(COOKIE).iter();
    if crumbs.next().is_none() || crumbs.next().is_none() {
        return;
    }
    let mut joined = Vec::with_capacity(128);
    for crumb in headers.get_all(COOKIE) {
        if crumb.is_empty() {
            continue;
        }
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(crumb.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(COOKIE, value);
    }
}

/// Adds X-Forwarded-For (appended), X-Forwarded-Proto/-Host/-Port (set) and Via.
pub fn add_forwarded(headers: &mut HeaderMap, client: &ClientValues) {
    // Several X-Forwarded-For lines are one list (RFC 9110 §5.3): keep every hop, in order.
    if headers.contains_key(&X_FORWARDED_FOR) {
        let mut forwarded_for: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect();
        forwarded_for.push(client.ip.to_str().unwrap_or_default());
        let forwarded_for = forwarded_for.join(", ");
        if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
            headers.insert(X_FORWARDED_FOR.clone(), value);
        }
    } else {
        headers.insert(X_FORWARDED_FOR.clone(), client.ip.clone());
    }
    // The client's own claims about scheme and host are overwritten: this hop knows better.
    headers.insert(X_FORWARDED_PROTO.clone(), client.proto.clone());
    if let Some(host) = headers.get(HOST).cloned() {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    } else {
        headers.remove(&X_FORWARDED_HOST);
    }
    headers.insert(X_FORWARDED_PORT.clone(), client.listen_port.clone());
    add_via(headers);
}

/// Header values fixed for a client connection, rendered once when it is accepted.
#[derive(Debug, Clone)]
pub struct ClientValues {
    pub ip: HeaderValue,
    pub listen_port: HeaderValue,
    /// `https` for a connection to the TLS listener, else `http`.
    pub proto: HeaderValue,
}

impl ClientValues {
    pub fn new(client: IpAddr, listen_port: u16, tls: bool) -> Self {
        Self {
            ip: HeaderValue::from_str(&client.to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            listen_port: HeaderValue::from(listen_port),
            proto: HeaderValue::from_static(if tls { "https" } else { "http" }),
        }
    }
}

pub fn add_via(headers: &mut HeaderMap) {
    headers.append(VIA, VIA_VALUE);
}

/// Makes the request's host one thing (RFC 9112 §3.2): an absolute-form or authority-form
/// target's authority replaces any Host the client sent, and otherwise exactly one valid Host is
/// required of HTTP/1.1. Routing, X-Forwarded-Host and the forwarded Host then all read the
/// same field.
pub fn settle_host(
    version: hyper::Version,
    uri: &hyper::Uri,
    headers: &mut HeaderMap,
) -> Result<(), &'static str> {
    if let Some(authority) = uri.authority() {
        if authority.as_str().contains('@') {
            return Err("a request target may not carry user information");
        }
        let value = HeaderValue::from_str(authority.as_str())
            .map_err(|_| "the request target's authority is not a valid host")?;
        headers.insert(HOST, value);
        return Ok(());
    }
    let mut hosts = headers.get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Err("more than one Host header"),
        (None, _) if version == hyper::Version::HTTP_11 => Err("an HTTP/1.1 request needs a Host"),
        (None, _) => Ok(()),
        (Some(host), None) => {
            let valid = host.is_empty()
                || (!host.as_bytes().contains(&b'@')
                    && host
                        .to_str()
                        .ok()
                        .and_then(|text| text.parse::<hyper::http::uri::Authority>().ok())
                        .is_some());
            if valid {
                Ok(())
            } else {
                Err("the Host header is not a valid host")
            }
        }
    }
}

/// The request's host without port, lowercased, for routing.
pub fn routing_host(headers: &HeaderMap, uri: &hyper::Uri) -> Option<String> {
    let raw = uri
        .host()
        .map(str::to_string)
        .or_else(|| headers.get(HOST)?.to_str().ok().map(str::to_string))?;
    let host = if raw.starts_with('[') {
        // An IPv6 literal keeps its brackets; only a port after them is cut.
        raw.split_once(']')
            .map(|(h, _)| format!("{h}]"))
            .unwrap_or(raw)
    } else {
        raw.split(':').next().unwrap_or_default().to_string()
    };
    Some(host.trim_end_matches('.').to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        map
    }

    #[test]
    fn hop_by_hop_fields_are_removed() {
        let mut map = headers(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic x"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
        ]);
        remove_hop_by_hop(&mut map, false);
        let names: Vec<&str> = map.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-kept"]);
    }

    /// The fuzzer's find: a Connection value that is not all ASCII was skipped whole, so
    /// the fields it named reached the target.
    #[test]
    fn fields_named_in_a_connection_value_with_obs_text_are_removed() {
        let mut map = headers(&[("x-secret", "0"), ("x-kept", "yes")]);
        map.append(
            CONNECTION,
            HeaderValue::from_bytes(b"keep-ali\xcde, x-secret").expect("obs-text is allowed"),
        );
        remove_hop_by_hop(&mut map, false);
        let names: Vec<&str> = map.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-kept"]);

        let mut map = headers(&[("upgrade", "websocket")]);
        map.append(
            CONNECTION,
            HeaderValue::from_bytes(b"\xff, Upgrade").expect("obs-text is allowed"),
        );
        assert!(is_upgrade(&map));
    }

    #[test]
    fn upgrades_keep_their_two_fields() {
        let mut map = headers(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_upgrade(&map));
        remove_hop_by_hop(&mut map, true);
        assert_eq!(map.get(UPGRADE).expect("upgrade"), "websocket");
        assert_eq!(map.get(CONNECTION).expect("connection"), "upgrade");
    }

    #[test]
    fn cookie_crumbs_are_joined_into_one_field() {
        let mut map = headers(&[
            ("cookie", "a=1"),
            ("x-other", "x"),
            ("cookie", "session=v1.abc; b=2"),
            ("cookie", "c=3"),
        ]);
        join_cookie_crumbs(&mut map);
        let cookies: Vec<_> = map.get_all(COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1; session=v1.abc; b=2; c=3"]);
        assert_eq!(map.get("x-other").expect("kept"), "x");

        let mut one = headers(&[("cookie", "a=1;b=2")]);
        join_cookie_crumbs(&mut one);
        let cookies: Vec<_> = one.get_all(COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1;b=2"], "a single field is left as it is");

        let mut none = headers(&[("x-other", "x")]);
        join_cookie_crumbs(&mut none);
        assert!(none.get(COOKIE).is_none());
    }

    #[test]
    fn forwarded_for_appends_and_the_rest_is_overwritten() {
        let mut map = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("host", "shop.example.com:8080"),
        ]);
        add_forwarded(
            &mut map,
            &ClientValues::new("127.0.0.1".parse().expect("ip"), 8080, false),
        );
        assert_eq!(
            map.get(&X_FORWARDED_FOR).expect("xff"),
            "203.0.113.9, 127.0.0.1"
        );
        assert_eq!(map.get(&X_FORWARDED_PROTO).expect("proto"), "http");
        assert_eq!(
            map.get(&X_FORWARDED_HOST).expect("host"),
            "shop.example.com:8080"
        );
        assert_eq!(map.get(&X_FORWARDED_PORT).expect("port"), "8080");
        assert_eq!(map.get(VIA).expect("via"), "1.1 tether");
    }

    #[test]
    fn every_forwarded_for_line_is_kept() {
        let mut map = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "198.51.100.7, 192.0.2.1"),
        ]);
        add_forwarded(
            &mut map,
            &ClientValues::new("127.0.0.1".parse().expect("ip"), 8080, false),
        );
        let values: Vec<_> = map.get_all(&X_FORWARDED_FOR).iter().collect();
        assert_eq!(values, ["203.0.113.9, 198.51.100.7, 192.0.2.1, 127.0.0.1"]);
    }

    #[test]
    fn the_host_is_settled_once() {
        use hyper::Version;
        let origin: hyper::Uri = "/x".parse().expect("uri");
        let absolute: hyper::Uri = "http://shop.example.com:8080/x".parse().expect("uri");
        let mut map = headers(&[("host", "other.example.com")]);
        settle_host(Version::HTTP_11, &absolute, &mut map).expect("absolute form");
        let hosts: Vec<_> = map.get_all(HOST).iter().collect();
        assert_eq!(hosts, ["shop.example.com:8080"]);

        let mut map = headers(&[("host", "a.example.com"), ("host", "b.example.com")]);
        assert!(settle_host(Version::HTTP_11, &origin, &mut map).is_err());
        let mut map = headers(&[("host", "a.example.com"), ("host", "a.example.com")]);
        assert!(settle_host(Version::HTTP_11, &origin, &mut map).is_err());
        assert!(settle_host(Version::HTTP_11, &origin, &mut HeaderMap::new()).is_err());
        assert!(settle_host(Version::HTTP_10, &origin, &mut HeaderMap::new()).is_ok());
        for bad in ["user@evil.example.com", "a b", "a/b", "[::1"] {
            let mut map = headers(&[("host", bad)]);
            assert!(
                settle_host(Version::HTTP_11, &origin, &mut map).is_err(),
                "{bad}"
            );
        }
        for good in [
            "shop.example.com",
            "shop.example.com:8080",
            "[::1]:80",
            "10.0.0.1",
        ] {
            let mut map = headers(&[("host", good)]);
            assert!(
                settle_host(Version::HTTP_11, &origin, &mut map).is_ok(),
                "{good}"
            );
        }
        let userinfo: hyper::Uri = "http://user@shop.example.com/".parse().expect("uri");
        assert!(settle_host(Version::HTTP_11, &userinfo, &mut HeaderMap::new()).is_err());
    }

    #[test]
    fn routing_host_drops_port_and_case() {
        let uri: hyper::Uri = "/x".parse().expect("uri");
        let map = headers(&[("host", "Shop.Example.COM:8080")]);
        assert_eq!(
            routing_host(&map, &uri).as_deref(),
            Some("shop.example.com")
        );
        let map = headers(&[("host", "[::1]:8080")]);
        assert_eq!(routing_host(&map, &uri).as_deref(), Some("[::1]"));
        assert_eq!(routing_host(&HeaderMap::new(), &uri), None);
    }
}
