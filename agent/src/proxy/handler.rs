//! One request: route → service → pin (cookie) or pick → forward, re-pinning on failure.
use super::headers;
use super::upstream::SendError;
use super::Connection;
use crate::maglev::stable_hash;
use crate::metrics::OutcomeCounters;
use crate::model::HashOn;
use crate::sticky::cookie::{unix_now, Rejected, Session};
use crate::sticky::select::PinnedTo;
use crate::table::{ServiceTable, Strategy, TargetSlot};
use bytes::Bytes;
use http_body_util::{Either, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, COOKIE, SET_COOKIE, USER_AGENT};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::rc::Rc;
use std::time::SystemTime;
use tracing::{debug, info, warn};

/// What the client gets back: the target's streamed body, or tether's own short message.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

/// Kong retries a failed target up to 5 times by default; tether tries each target at most once.
const MAX_ATTEMPTS: usize = 5;

/// How the session came to its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pin {
    /// No session cookie applies (not a sticky service).
    Unpinned,
    /// The cookie's target kept the session.
    Kept { draining: bool },
    /// No valid cookie: a new session.
    New,
    /// The cookie's target is gone or failed: the session moved.
    Moved,
    /// The cookie's target failed and another served this request, but the session stays
    /// pinned to it (change-on-failure off): no new cookie.
    Stays,
}

pub async fn handle(
    request: Request<Incoming>,
    connection: Rc<Connection>,
) -> Result<Response<ProxyBody>, Infallible> {
    let shared = &connection.shared;
    let outcomes = &shared.outcomes;
    let tables = shared.tables.load_full();
    let host = if tables.routes_by_host {
        headers::routing_host(request.headers(), request.uri())
    } else {
        None
    };
    let Some(service) = tables.route(host.as_deref(), request.uri().path()) else {
        outcomes.no_route.inc();
        debug!(
            host = host.as_deref().unwrap_or(""),
            path = request.uri().path(),
            "no route"
        );
        return Ok(plain(
            StatusCode::NOT_FOUND,
            "no route matches this request\n",
        ));
    };
    let now = unix_now();
    let (mut pin, session, mut target) = choose(service, &request, &connection, now);
    let upgrade = headers::is_upgrade(request.headers());
    let mut request = request;
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    let (mut parts, body) = request.into_parts();
    let user_agent = parts.headers.get(USER_AGENT).cloned();
    let method = parts.method.clone();
    let retryable = is_idempotent(&method) && hyper::body::Body::is_end_stream(&body);
    headers::remove_hop_by_hop(&mut parts.headers, upgrade);
    headers::add_forwarded(&mut parts.headers, &connection.forwarded);
    // Targets get origin-form, whatever form the client used.
    if parts.uri.authority().is_some() {
        if let Some(uri) = parts
            .uri
            .path_and_query()
            .and_then(|p| p.as_str().parse().ok())
        {
            parts.uri = uri;
        }
    }
    // Taken after the rewrite above, so a resent request carries the forwarded headers too.
    let retry_parts = retryable.then(|| rebuild_parts(&parts));
    let mut upstream_request = Some(Request::from_parts(parts, Either::Left(body)));
    let timeouts = tables.timeouts;
    let mut tried = Tried::default();
    let response = loop {
        let Some(index) = target else {
            break Err(no_target(service, outcomes, &tried));
        };
        let slot = &service.targets[index];
        let Some(request) = upstream_request.take() else {
            break Err(failed(
                outcomes,
                service,
                slot,
                "request could not be retried",
            ));
        };
        tried.push(index);
        let _in_flight = service.in_flight(index);
        let sent = connection
            .upstreams
            .send(
                slot.address,
                request,
                timeouts.connect,
                timeouts.response,
                upgrade,
            )
            .await;
        match sent {
            Ok(response) => break Ok((index, response)),
            Err(SendError::Connect(error, request)) => {
                slot.counters.connect_failures.inc();
                slot.failed();
                warn!(service = &*service.name, target = &*slot.label, %error, "target refused the connection");
                upstream_request = Some(*request);
            }
            Err(SendError::Broken(error)) => {
                slot.counters.broken.inc();
                warn!(service = &*service.name, target = &*slot.label, %error, "connection to target broke");
                // Safe to resend only an idempotent request without a body.
                upstream_request = retry_parts.as_ref().map(|parts| {
                    Request::from_parts(parts.clone_parts(), Either::Right(Empty::new()))
                });
                if upstream_request.is_none() {
                    break Err(failed(
                        outcomes,
                        service,
                        slot,
                        "connection to target broke",
                    ));
                }
            }
            Err(SendError::Timeout) => {
                slot.counters.timeouts.inc();
                slot.failed();
                outcomes.upstream_timeout.inc();
                warn!(
                    service = &*service.name,
                    target = &*slot.label,
                    "target did not answer in time"
                );
                break Err(plain(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the target did not answer in time\n",
                ));
            }
        }
        if tried.len() >= MAX_ATTEMPTS.min(service.targets.len()) {
            break Err(failed(outcomes, service, slot, "every target tried failed"));
        }
        target = service.pick_new(connection.hash_for(service, None), |i| tried.contains(&i));
        if let Some(next) = target {
            // A new session whose first pick failed was never pinned: it stays new.
            let keeps_pin = matches!(
                service.strategy,
                Strategy::Sticky {
                    change_on_failure: false,
                    ..
                }
            );
            if matches!(pin, Pin::Kept { .. }) && keeps_pin {
                pin = Pin::Stays;
            } else if matches!(pin, Pin::Kept { .. } | Pin::Moved) {
                pin = Pin::Moved;
                service.targets[next].counters.repins_failed.inc();
            }
        }
    };
    let (index, mut response) = match response {
        Ok(found) => found,
        Err(response) => return Ok(response),
    };
    let slot = &service.targets[index];
    slot.counters.requests.inc();
    match pin {
        Pin::New => {
            slot.counters.new_pins.inc();
        }
        Pin::Kept { draining: true } => {
            slot.counters.drained_session_requests.inc();
        }
        _ => {}
    }
    debug!(
        service = &*service.name,
        target = &*slot.label,
        state = slot.state.as_str(),
        pin = ?pin,
        status = response.status().as_u16(),
        "forwarded"
    );
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    // The target's side of a tunnel travels in the response's extensions.
    let target_upgrade = (switching && upgrade).then(|| hyper::upgrade::on(&mut response));
    let (mut parts, body) = response.into_parts();
    headers::remove_hop_by_hop(&mut parts.headers, switching && upgrade);
    headers::add_via(&mut parts.headers);
    if let Strategy::Sticky {
        cookie, refresh, ..
    } = &service.strategy
    {
        let reissue = match pin {
            Pin::New | Pin::Moved => Some(Session {
                target: slot.tag,
                issued_at: now,
                refreshed_at: now,
            }),
            Pin::Kept { .. } => session
                .filter(|s| *refresh && s.refreshed_at < now)
                .map(|s| Session {
                    refreshed_at: now,
                    ..s
                }),
            Pin::Unpinned | Pin::Stays => None,
        };
        if let Some(session) = reissue {
            let value = shared.codec.encode(&service.name, &session);
            let header = cookie.header(
                &value,
                user_agent.as_ref().map(HeaderValue::as_bytes),
                SystemTime::now(),
            );
            parts.headers.append(SET_COOKIE, header);
        }
    }
    if let (Some(client), Some(target)) = (client_upgrade, target_upgrade) {
        tunnel(client, target, service.name.clone(), slot.label.clone());
        outcomes.upgraded.inc();
        return Ok(Response::from_parts(
            parts,
            Either::Right(Full::new(Bytes::new())),
        ));
    }
    outcomes.forwarded.inc();
    Ok(Response::from_parts(parts, Either::Left(body)))
}

/// Decides the first target: the cookie's pin when it is valid and its target still here, a new
/// pick otherwise.
fn choose(
    service: &ServiceTable,
    request: &Request<Incoming>,
    connection: &Connection,
    now: u32,
) -> (Pin, Option<Session>, Option<usize>) {
    let Strategy::Sticky {
        cookie, lifetimes, ..
    } = &service.strategy
    else {
        let hash = connection.hash_for(service, Some(request));
        return (Pin::Unpinned, None, service.pick_new(hash, |_| false));
    };
    let mut rejected = None;
    for value in cookie_values(request, cookie.name()) {
        match connection
            .shared
            .codec
            .decode(&service.name, value, *lifetimes, now)
        {
            Ok(session) => {
                return match service.pinned(session.target) {
                    PinnedTo::Active(index) => {
                        (Pin::Kept { draining: false }, Some(session), Some(index))
                    }
                    PinnedTo::Draining(index) => {
                        (Pin::Kept { draining: true }, Some(session), Some(index))
                    }
                    PinnedTo::Gone => {
                        let target = service.pick_new(None, |_| false);
                        if let Some(index) = target {
                            service.targets[index].counters.repins_removed.inc();
                            info!(
                                service = &*service.name,
                                to = &*service.targets[index].label,
                                "pinned target is gone: session re-pinned"
                            );
                        }
                        (Pin::Moved, None, target)
                    }
                };
            }
            Err(reason) => rejected = Some(reason),
        }
    }
    if let Some(reason) = rejected {
        service.count_rejected_cookie(reason);
        if reason == Rejected::Forged {
            warn!(service = &*service.name, client = %connection.client.ip(), "forged session cookie ignored");
        } else {
            debug!(
                service = &*service.name,
                reason = reason.as_str(),
                "session cookie ignored"
            );
        }
    }
    (Pin::New, None, service.pick_new(None, |_| false))
}

/// Every value of the cookie `name` across all Cookie headers (a browser may send several with
/// the same name for different paths; the first valid one wins).
fn cookie_values<'a>(
    request: &'a Request<Incoming>,
    name: &'a str,
) -> impl Iterator<Item = &'a str> {
    request
        .headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|header| header.to_str().ok())
        .flat_map(|header| header.split(';'))
        .filter_map(move |pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key.trim() == name).then(|| value.trim().trim_matches('"'))
        })
}

impl Connection {
    /// The hash consistent-hashing services pick by; `None` when the value is absent.
    fn hash_for(&self, service: &ServiceTable, request: Option<&Request<Incoming>>) -> Option<u64> {
        let Strategy::Hashing {
            hash_on, fallback, ..
        } = &service.strategy
        else {
            return None;
        };
        let request = request?;
        [Some(hash_on), fallback.as_ref()]
            .into_iter()
            .flatten()
            .find_map(|on| self.hash_value(on, request))
    }

    fn hash_value(&self, on: &HashOn, request: &Request<Incoming>) -> Option<u64> {
        match on {
            HashOn::ClientIp => Some(stable_hash(self.client.ip().to_string().as_bytes())),
            HashOn::Path => Some(stable_hash(request.uri().path().as_bytes())),
            HashOn::Header(name) => request
                .headers()
                .get(name.as_str())
                .map(|v| stable_hash(v.as_bytes())),
            HashOn::Cookie { name, .. } => cookie_values(request, name)
                .next()
                .map(|v| stable_hash(v.as_bytes())),
            HashOn::QueryArg(arg) => request.uri().query().and_then(|query| {
                query.split('&').find_map(|pair| {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    (key == arg).then(|| stable_hash(value.as_bytes()))
                })
            }),
        }
    }
}

fn no_target(
    service: &ServiceTable,
    outcomes: &OutcomeCounters,
    tried: &Tried,
) -> Response<ProxyBody> {
    if tried.is_empty() {
        outcomes.no_target.inc();
        let message = if service.has_targets() {
            "no target can take new sessions: every target is draining\n"
        } else {
            "the service has no targets\n"
        };
        warn!(service = &*service.name, "{}", message.trim_end());
        plain(StatusCode::SERVICE_UNAVAILABLE, message)
    } else {
        outcomes.upstream_error.inc();
        warn!(
            service = &*service.name,
            tried = tried.len(),
            "every target tried failed"
        );
        plain(StatusCode::BAD_GATEWAY, "every target tried failed\n")
    }
}

fn failed(
    outcomes: &OutcomeCounters,
    service: &ServiceTable,
    slot: &TargetSlot,
    why: &'static str,
) -> Response<ProxyBody> {
    outcomes.upstream_error.inc();
    warn!(service = &*service.name, target = &*slot.label, "{why}");
    plain(StatusCode::BAD_GATEWAY, "the target failed to answer\n")
}

/// The targets a request has tried, at most [`MAX_ATTEMPTS`]; no allocation per request.
#[derive(Default)]
struct Tried {
    targets: [usize; MAX_ATTEMPTS],
    len: usize,
}

impl Tried {
    fn push(&mut self, target: usize) {
        if self.len < MAX_ATTEMPTS {
            self.targets[self.len] = target;
            self.len += 1;
        }
    }

    fn contains(&self, target: &usize) -> bool {
        self.targets[..self.len].contains(target)
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
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

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// What is needed to send a bodiless request again.
struct RetryParts {
    method: Method,
    uri: hyper::Uri,
    version: hyper::Version,
    headers: hyper::HeaderMap,
}

impl RetryParts {
    fn clone_parts(&self) -> hyper::http::request::Parts {
        let (mut parts, ()) = Request::new(()).into_parts();
        parts.method = self.method.clone();
        parts.uri = self.uri.clone();
        parts.version = self.version;
        parts.headers = self.headers.clone();
        parts
    }
}

fn rebuild_parts(parts: &hyper::http::request::Parts) -> RetryParts {
    let mut headers = parts.headers.clone();
    headers::remove_hop_by_hop(&mut headers, false);
    RetryParts {
        method: parts.method.clone(),
        uri: parts
            .uri
            .path_and_query()
            .and_then(|p| p.as_str().parse().ok())
            .unwrap_or_else(|| parts.uri.clone()),
        version: parts.version,
        headers,
    }
}

fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    service: std::sync::Arc<str>,
    target: std::sync::Arc<str>,
) {
    tokio::task::spawn_local(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(error) => {
                warn!(service = &*service, target = &*target, %error, "upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((up, down)) => debug!(
                service = &*service,
                target = &*target,
                up,
                down,
                "tunnel closed"
            ),
            Err(error) => debug!(service = &*service, target = &*target, %error, "tunnel ended"),
        }
    });
}
