//! Header rules for a forwarding proxy (RFC 9110 §7.6): hop-by-hop fields stop here,
//! forwarded-for fields are added, and `Via` records the hop.
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION,
    TE, TRAILER, TRANSFER_ENCODING, UPGRADE, VIA,
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

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
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
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
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
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
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
}

impl ClientValues {
    pub fn new(client: IpAddr, listen_port: u16) -> Self {
        Self {
            ip: HeaderValue::from_str(&client.to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            listen_port: HeaderValue::from(listen_port),
        }
    }
}

pub fn add_via(headers: &mut HeaderMap) {
    headers.append(VIA, VIA_VALUE);
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

    #[test]
    fn upgrades_keep_their_two_fields() {
        let mut map = headers(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_upgrade(&map));
        remove_hop_by_hop(&mut map, true);
        assert_eq!(map.get(UPGRADE).expect("upgrade"), "websocket");
        assert_eq!(map.get(CONNECTION).expect("connection"), "upgrade");
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
            &ClientValues::new("127.0.0.1".parse().expect("ip"), 8080),
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
            &ClientValues::new("127.0.0.1".parse().expect("ip"), 8080),
        );
        let values: Vec<_> = map.get_all(&X_FORWARDED_FOR).iter().collect();
        assert_eq!(values, ["203.0.113.9, 198.51.100.7, 192.0.2.1, 127.0.0.1"]);
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
