//! The response phase: count what served the request, rewrite the response's headers, set the
//! session cookie when the pin rules say so, and hand over a tunnel when the target switched
//! protocols.
use super::forward::Served;
use super::h1::TargetUpgrade;
use super::handler::{Answer, Asked};
use super::headers;
use super::idle::TargetBody;
use super::upstream;
use super::Shared;
use crate::sticky::pin::{self, Pin};
use crate::table::{ServiceTable, Strategy, TargetSlot};
use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::header::{HeaderMap, SET_COOKIE};
use hyper::{Response, StatusCode};
use std::time::{Duration, SystemTime};
use tracing::debug;

/// The client's response from the target's.
pub fn respond(
    service: &ServiceTable,
    served: Served,
    asked: &Asked,
    shared: &Shared,
    now: u32,
    client_idle: Duration,
) -> Answer {
    let Served {
        target,
        pin,
        mut response,
    } = served;
    let slot = &service.targets[target];
    count_served(slot, pin);
    debug!(
        service = &*service.name,
        target = &*slot.label,
        state = slot.state.as_str(),
        pin = ?pin,
        status = response.status().as_u16(),
        "forwarded"
    );
    let switching = if asked.connect {
        response.status().is_success()
    } else {
        response.status() == StatusCode::SWITCHING_PROTOCOLS
    };
    // The target's side of a tunnel travels in the response's extensions.
    let target_upgrade = if switching && asked.upgrade {
        upstream::take_tunnel(&mut response)
    } else {
        None
    };
    let (mut parts, body) = response.into_parts();
    headers::remove_hop_by_hop(
        &mut parts.headers,
        switching && asked.upgrade && !asked.connect,
    );
    headers::add_via(&mut parts.headers);
    set_cookie(&mut parts.headers, service, slot, pin, asked, shared, now);
    if let Some(upgrade) = target_upgrade {
        shared.outcomes.upgraded.inc();
        return Answer {
            response: Response::from_parts(parts, Either::Right(Full::new(Bytes::new()))),
            tunnel: Some(TargetUpgrade {
                upgrade,
                service: service.name.clone(),
                target: slot.label.clone(),
            }),
        };
    }
    shared.outcomes.forwarded.inc();
    let body = TargetBody::new(body, client_idle);
    Response::from_parts(parts, Either::Left(body)).into()
}

fn count_served(slot: &TargetSlot, pin: Pin) {
    slot.counters.requests.inc();
    match pin {
        Pin::New => {
            slot.counters.new_pins.inc();
        }
        Pin::Kept { draining: true, .. } => {
            slot.counters.drained_session_requests.inc();
        }
        _ => {}
    }
}

/// Appends the session cookie when [`pin::reissue`] says the response carries one.
fn set_cookie(
    headers: &mut HeaderMap,
    service: &ServiceTable,
    slot: &TargetSlot,
    pin: Pin,
    asked: &Asked,
    shared: &Shared,
    now: u32,
) {
    let Strategy::Sticky {
        cookie, refresh, ..
    } = &service.strategy
    else {
        return;
    };
    let Some(session) = pin::reissue(pin, slot.tag, *refresh, now) else {
        return;
    };
    let value = shared.codec.encode(&service.name, &session);
    let user_agent = asked.user_agent.as_ref().map(|ua| ua.as_bytes());
    let header = cookie.header(&value, user_agent, SystemTime::now());
    headers.append(SET_COOKIE, header);
}
