//! One request, in phases: route → pin decision → upstream request → forward (with retries)
//! → response (with the session cookie re-issued). Each phase is its own module; this one
//! only runs them in order.
use super::body::ClientBody;
use super::h1::TargetUpgrade;
use super::idle::{BodyProgress, TargetBody};
use super::upstream::Outgoing;
use super::{choose, forward, headers, respond, route, Connection};
use crate::sticky::cookie::unix_now;
use crate::table::{ServiceTable, Strategy};
use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::header::{HeaderValue, CONTENT_TYPE, USER_AGENT};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode, Version};
use std::rc::Rc;

/// What the client gets back: the target's streamed body, or tether's own short message.
pub type ProxyBody = Either<TargetBody, Full<Bytes>>;

pub async fn handle(
    request: Request<Option<ClientBody>>,
    body_progress: Rc<BodyProgress>,
    connection: Rc<Connection>,
) -> Answer {
    let tables = connection.shared.tables.load_full();
    let (mut head, body) = request.into_parts();
    let routed = match route::route(&tables, &mut head, &connection) {
        Ok(routed) => routed,
        Err(refused) => return refused.into(),
    };
    let service = routed.service;
    let now = unix_now();
    let decision = choose::first(service, &head, &connection, now);
    let asked = Asked::of(&head, service);
    let outgoing = upstream_request(head, body, &connection, &asked, service.h2c);
    let timeouts = &tables.timeouts;
    let served = forward::forward(
        service,
        decision,
        outgoing,
        &connection,
        &body_progress,
        timeouts,
        asked.upgrade,
    )
    .await;
    match served {
        Ok(served) => respond::respond(
            service,
            served,
            &asked,
            &connection.shared,
            now,
            timeouts.client_idle,
        ),
        Err(refused) => refused.into(),
    }
}

/// What the response phase needs from the request, which has gone to the target by then.
pub(super) struct Asked {
    /// A CONNECT: a 2xx answer opens the tunnel.
    pub(super) connect: bool,
    /// A tunnel either way: an Upgrade (101) or a CONNECT (2xx).
    pub(super) upgrade: bool,
    /// Kept only for a cookie whose SameSite depends on the browser.
    pub(super) user_agent: Option<HeaderValue>,
}

impl Asked {
    fn of(head: &Parts, service: &ServiceTable) -> Self {
        let connect = head.method == Method::CONNECT;
        let user_agent = match &service.strategy {
            Strategy::Sticky { cookie, .. } if cookie.reads_user_agent() => {
                head.headers.get(USER_AGENT).cloned()
            }
            _ => None,
        };
        Self {
            connect,
            upgrade: connect || headers::is_upgrade(&head.headers),
            user_agent,
        }
    }
}

/// The request as targets get it: hop-by-hop fields out, forwarded fields in, origin-form
/// toward HTTP/1.1 targets (with an HTTP/2 client's cookie crumbs joined into one Cookie
/// field), absolute-form toward h2c targets (HTTP/2 sends it as :scheme and :authority).
fn upstream_request(
    mut head: Parts,
    body: Option<ClientBody>,
    connection: &Connection,
    asked: &Asked,
    h2c: bool,
) -> Outgoing {
    // gRPC needs `te: trailers` end to end; it is the one TE value HTTP/2 allows.
    let te_trailers = h2c
        && head
            .headers
            .get(hyper::header::TE)
            .is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"trailers"));
    headers::remove_hop_by_hop(&mut head.headers, asked.upgrade && !asked.connect);
    headers::add_forwarded(&mut head.headers, &connection.forwarded);
    if h2c {
        to_h2c(&mut head, te_trailers);
        return Outgoing::h2c(head, body);
    }
    if head.version == Version::HTTP_2 {
        headers::join_cookie_crumbs(&mut head.headers);
        head.version = Version::HTTP_11;
    }
    // Targets get origin-form, whatever form the client used.
    if head.uri.authority().is_some() {
        if let Some(uri) = head
            .uri
            .path_and_query()
            .and_then(|p| p.as_str().parse().ok())
        {
            head.uri = uri;
        }
    }
    Outgoing::h1(&head, body)
}

/// An h2c target's request: HTTP/2, `http://` and the request's host as its authority.
fn to_h2c(head: &mut Parts, te_trailers: bool) {
    head.version = Version::HTTP_2;
    if te_trailers {
        head.headers
            .insert(hyper::header::TE, HeaderValue::from_static("trailers"));
    }
    let authority = head
        .uri
        .authority()
        .map(|authority| authority.as_str().to_owned())
        .or_else(|| {
            head.headers
                .get(hyper::header::HOST)
                .and_then(|host| host.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "localhost".to_owned());
    let path = head
        .uri
        .path_and_query()
        .map_or("/", |path| path.as_str())
        .to_owned();
    if let Ok(uri) = hyper::Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path)
        .build()
    {
        head.uri = uri;
    }
    // :authority carries the host.
    head.headers.remove(hyper::header::HOST);
}

/// The handler's answer: the response, and the target's side of a tunnel when it switched
/// protocols (101, or 2xx to CONNECT).
pub struct Answer {
    pub response: Response<ProxyBody>,
    pub tunnel: Option<TargetUpgrade>,
}

impl From<Response<ProxyBody>> for Answer {
    fn from(response: Response<ProxyBody>) -> Self {
        Self {
            response,
            tunnel: None,
        }
    }
}

/// tether's own short answers.
pub fn plain(status: StatusCode, message: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from_static(
        message.as_bytes(),
    ))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Ends the connection after this answer: what follows a refused request cannot be trusted to
/// be the next request (a tunnel's bytes, the rest of a broken body).
pub(super) fn closing(mut response: Response<ProxyBody>) -> Response<ProxyBody> {
    response
        .headers_mut()
        .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    response
}
