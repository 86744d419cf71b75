//! The route phase: settle the request's host, find its route, and refuse what the route does
//! not allow.
use super::handler::{closing, plain, ProxyBody};
use super::headers;
use super::Connection;
use crate::model::Plaintext;
use crate::table::{Routed, Tables};
use hyper::header::HeaderValue;
use hyper::http::request::Parts;
use hyper::{Method, Response, StatusCode};
use tracing::debug;

/// The route for the request with head `head`, or tether's own refusal: 400 for a bad Host, 404
/// for no route, 405 for a CONNECT the route does not allow, a redirect to https (or 426) for a
/// plaintext request to a route that wants TLS.
#[expect(
    clippy::result_large_err,
    reason = "the refusal is the client's answer itself, moved once; boxing it would allocate"
)]
pub fn route<'t>(
    tables: &'t Tables,
    head: &mut Parts,
    connection: &Connection,
) -> Result<Routed<'t>, Response<ProxyBody>> {
    let outcomes = &connection.shared.outcomes;
    if let Err(why) = headers::settle_host(head.version, &head.uri, &mut head.headers) {
        outcomes.bad_request.inc();
        debug!(client = %connection.client, why, "bad Host: 400");
        return Err(closing(plain(
            StatusCode::BAD_REQUEST,
            "bad Host: expected exactly one valid host\n",
        )));
    }
    let host = if tables.routes_by_host {
        headers::routing_host(&head.headers, &head.uri)
    } else {
        None
    };
    // An authority-form (CONNECT) target has no path; it routes as "/".
    let path = match head.uri.path() {
        "" => "/",
        path => path,
    };
    let tls = connection.forwarded.proto.as_bytes() == b"https";
    let Some(routed) = tables.route_over(host.as_deref(), path, tls) else {
        outcomes.no_route.inc();
        debug!(
            host = host.as_deref().unwrap_or(""),
            path = head.uri.path(),
            "no route"
        );
        return Err(plain(
            StatusCode::NOT_FOUND,
            "no route matches this request\n",
        ));
    };
    if head.method == Method::CONNECT && !routed.allow_connect {
        outcomes.method_not_allowed.inc();
        debug!(
            service = &*routed.service.name,
            "CONNECT on a route that does not allow it: 405"
        );
        let mut response = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not allowed on this route\n",
        );
        response.headers_mut().insert(
            hyper::header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE"),
        );
        return Err(closing(response));
    }
    if let (Plaintext::Redirect(status), false) = (routed.plaintext, tls) {
        return Err(to_https(tables, head, status));
    }
    Ok(routed)
}

/// A plaintext request's answer on a route that wants TLS: `status` (301, 302, 307, 308) to the
/// same URL over https, on the TLS listener's port unless it is 443; 426 asks for TLS without
/// a redirect, as Kong does.
fn to_https(tables: &Tables, head: &Parts, status: u16) -> Response<ProxyBody> {
    let upgrade = || {
        plain(
            StatusCode::UPGRADE_REQUIRED,
            "this route is served over https only\n",
        )
    };
    let Ok(status) = StatusCode::from_u16(status) else {
        return upgrade();
    };
    if !status.is_redirection() {
        return upgrade();
    }
    let Some(host) = headers::routing_host(&head.headers, &head.uri) else {
        return upgrade();
    };
    let port = match tables.https_port {
        None | Some(443) => String::new(),
        Some(port) => format!(":{port}"),
    };
    let target = head.uri.path_and_query().map_or("/", |path| path.as_str());
    let Ok(location) = HeaderValue::from_str(&format!("https://{host}{port}{target}")) else {
        return upgrade();
    };
    debug!(location = ?location, status = status.as_u16(), "plaintext request: redirect to https");
    let mut response = plain(status, "use https\n");
    response
        .headers_mut()
        .insert(hyper::header::LOCATION, location);
    response
}
