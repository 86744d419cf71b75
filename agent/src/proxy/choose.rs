//! The pin decision phase: the target a request tries first, and the next one after a failure.
//! A sticky service's session cookies are verified and its pin decided by `sticky::pin`; other
//! services take the balancer's pick, consistent hashing on the request's hash. What the
//! decisions found (refused cookies, re-pins) is counted and logged here.
use super::Connection;
use crate::balance::maglev::stable_hash;
use crate::metrics::RepinReason;
use crate::model::HashOn;
use crate::sticky::cookie::Rejected;
use crate::sticky::pin::{self, Decision, Verified};
use crate::table::{ServiceTable, Strategy};
use hyper::header::{HeaderMap, COOKIE};
use hyper::http::request::Parts;
use tracing::{debug, info, warn};

/// Forged cookies come in floods: one warning a second says it is happening, the counter says
/// how much.
static FORGED_COOKIE_LOG: crate::log_limit::OncePerSecond = crate::log_limit::OncePerSecond::new();

/// The first target for the request with head `head`.
pub fn first(service: &ServiceTable, head: &Parts, connection: &Connection, now: u32) -> Decision {
    let Strategy::Sticky {
        cookie, lifetimes, ..
    } = &service.strategy
    else {
        return pin::unpinned(service, request_hash(service, head, connection));
    };
    let values = cookie_values(&head.headers, cookie.name());
    let codec = &connection.shared.codec;
    let verified = pin::verify(codec, &service.name, *lifetimes, values, now);
    if let Verified::Rejected { reason, unchecked } = verified {
        count_refused(service, reason, unchecked, connection);
    }
    let decision = pin::decide(service, verified);
    count_repin(service, &decision);
    decision
}

/// The next target after the one `decision` chose failed, none of those `tried`.
pub fn after_failure(
    service: &ServiceTable,
    decision: Decision,
    tried: impl Fn(usize) -> bool,
) -> Decision {
    let next = decision.fail_over(service, tried);
    count_repin(service, &next);
    next
}

fn count_refused(
    service: &ServiceTable,
    reason: Rejected,
    unchecked: usize,
    connection: &Connection,
) {
    if unchecked > 0 {
        service.count_unchecked_cookies(unchecked as u64);
    }
    service.count_rejected_cookie(reason);
    if reason == Rejected::Forged {
        if FORGED_COOKIE_LOG.allow() {
            warn!(service = &*service.name, client = %connection.client.ip(), "forged session cookie ignored (logged at most once a second; tether_invalid_cookies_total counts all)");
        }
    } else {
        debug!(
            service = &*service.name,
            reason = reason.as_str(),
            "session cookie ignored"
        );
    }
}

/// A moved session counts on the target it moved to.
fn count_repin(service: &ServiceTable, decision: &Decision) {
    let (Some(target), Some(reason)) = (decision.target, decision.repinned) else {
        return;
    };
    let slot = &service.targets[target];
    match reason {
        RepinReason::target_removed => {
            slot.counters.repins_removed.inc();
            info!(
                service = &*service.name,
                to = &*slot.label,
                "pinned target is gone: session re-pinned"
            );
        }
        // The failure itself was logged where it happened.
        RepinReason::target_failed => {
            slot.counters.repins_failed.inc();
        }
    }
}

/// Every value of the cookie `name` across all Cookie headers (a browser may send several with
/// the same name for different paths; the first valid one wins).
fn cookie_values<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|header| header.to_str().ok())
        .flat_map(|header| header.split(';'))
        .filter_map(move |pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key.trim() == name).then(|| value.trim().trim_matches('"'))
        })
}

/// The hash consistent-hashing services pick by; `None` when the value is absent (or the
/// service does not hash).
fn request_hash(service: &ServiceTable, head: &Parts, connection: &Connection) -> Option<u64> {
    let Strategy::Hashing {
        hash_on, fallback, ..
    } = &service.strategy
    else {
        return None;
    };
    [Some(hash_on), fallback.as_ref()]
        .into_iter()
        .flatten()
        .find_map(|on| hash_value(on, head, connection))
}

fn hash_value(on: &HashOn, head: &Parts, connection: &Connection) -> Option<u64> {
    match on {
        HashOn::ClientIp => Some(stable_hash(connection.client.ip().to_string().as_bytes())),
        HashOn::Path => Some(stable_hash(head.uri.path().as_bytes())),
        HashOn::Header(name) => head
            .headers
            .get(name.as_str())
            .map(|v| stable_hash(v.as_bytes())),
        HashOn::Cookie { name, .. } => cookie_values(&head.headers, name)
            .next()
            .map(|v| stable_hash(v.as_bytes())),
        HashOn::QueryArg(arg) => head.uri.query().and_then(|query| {
            query.split('&').find_map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (key == arg).then(|| stable_hash(value.as_bytes()))
            })
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    /// RFC 9113 §8.2.3: an HTTP/2 client may send Cookie as several fields ("crumbs"); the
    /// session cookie is found in any of them, in order.
    #[test]
    fn the_session_cookie_is_found_in_any_crumb() {
        let mut headers = HeaderMap::new();
        for crumb in [
            "theme=dark",
            "session-id=first",
            "lang=en; session-id=\"second\"",
        ] {
            headers.append(COOKIE, HeaderValue::from_static(crumb));
        }
        let values: Vec<&str> = cookie_values(&headers, "session-id").collect();
        assert_eq!(values, ["first", "second"]);
        assert_eq!(cookie_values(&headers, "lang").collect::<Vec<_>>(), ["en"]);
        assert_eq!(cookie_values(&headers, "absent").count(), 0);
    }
}
