//! The forward phase: send the request to its target and, when a failed send allows it, to
//! another, each target at most once, the session moving as the pin rules say. A failed
//! attempt is counted and logged in one place ([`record`]).
use super::choose;
use super::handler::{closing, plain, ProxyBody};
use super::idle::{BodyProgress, BodyState};
use super::upstream::{Failure, Outgoing, ResponseBody};
use super::Connection;
use crate::metrics::OutcomeCounters;
use crate::model::ProxyTimeouts;
use crate::sticky::pin::{Decision, Pin};
use crate::table::{ServiceTable, TargetSlot};
use hyper::{Response, StatusCode};
use tracing::{debug, warn};

/// Kong retries a failed target up to 5 times by default; tether tries each target at most once.
const MAX_ATTEMPTS: usize = 5;

/// A target's answer, and how the session came to that target.
pub struct Served {
    pub target: usize,
    pub pin: Pin,
    pub response: Response<ResponseBody>,
}

/// Sends `outgoing` where `decision` says, then on to other targets while the failure allows a
/// retry; tether's own answer when no target answers.
pub async fn forward(
    service: &ServiceTable,
    mut decision: Decision,
    mut outgoing: Outgoing,
    connection: &Connection,
    body_progress: &BodyProgress,
    timeouts: &ProxyTimeouts,
    upgrade: bool,
) -> Result<Served, Response<ProxyBody>> {
    let outcomes = &connection.shared.outcomes;
    let mut tried = Tried::default();
    loop {
        let Some(target) = decision.target else {
            return Err(no_target(service, outcomes, &tried));
        };
        let slot = &service.targets[target];
        tried.push(target);
        let _in_flight = service.in_flight(target);
        let sent = connection
            .upstreams
            .send(slot.address, outgoing, body_progress, timeouts, upgrade)
            .await;
        let error = match sent {
            Ok(response) => {
                return Ok(Served {
                    target,
                    pin: decision.pin,
                    response,
                })
            }
            Err(error) => error,
        };
        record(service, slot, &error.failure);
        let Some(retry) = error.retry else {
            return Err(not_retried(
                &error.failure,
                service,
                slot,
                outcomes,
                body_progress,
            ));
        };
        if tried.len() >= MAX_ATTEMPTS.min(service.targets.len()) {
            return Err(failed(outcomes, service, slot, "every target tried failed"));
        }
        outgoing = *retry;
        decision = choose::after_failure(service, decision, |index| tried.contains(&index));
    }
}

/// Counts and logs a failed attempt against its target. New sessions avoid a target that
/// refused or did not answer for a while (passive health); a broken connection is only counted,
/// and a client's own failure is not the target's.
fn record(service: &ServiceTable, slot: &TargetSlot, failure: &Failure) {
    match failure {
        Failure::Connect(error) => {
            slot.counters.connect_failures.inc();
            slot.failed();
            warn!(service = &*service.name, target = &*slot.label, %error, "target refused the connection");
        }
        Failure::Broken(error) => {
            slot.counters.broken.inc();
            warn!(service = &*service.name, target = &*slot.label, %error, "connection to target broke");
        }
        Failure::Timeout => {
            slot.counters.timeouts.inc();
            slot.failed();
            warn!(
                service = &*service.name,
                target = &*slot.label,
                "target did not answer in time"
            );
        }
        Failure::Client => {}
    }
}

/// tether's answer for a failure that may not be retried.
fn not_retried(
    failure: &Failure,
    service: &ServiceTable,
    slot: &TargetSlot,
    outcomes: &OutcomeCounters,
    body_progress: &BodyProgress,
) -> Response<ProxyBody> {
    match failure {
        Failure::Timeout => {
            outcomes.upstream_timeout.inc();
            plain(
                StatusCode::GATEWAY_TIMEOUT,
                "the target did not answer in time\n",
            )
        }
        Failure::Client => client_body_failed(outcomes, service, body_progress.state()),
        Failure::Broken(_) => failed(outcomes, service, slot, "connection to target broke"),
        // Not reached: nothing was sent, so the request always comes back.
        Failure::Connect(_) => failed(outcomes, service, slot, "request could not be retried"),
    }
}

/// 408 for a client that stopped sending its body, 400 for one whose framing broke.
fn client_body_failed(
    outcomes: &OutcomeCounters,
    service: &ServiceTable,
    state: BodyState,
) -> Response<ProxyBody> {
    if state == BodyState::Stalled {
        outcomes.client_body_timeout.inc();
        debug!(
            service = &*service.name,
            "client stopped sending its request body: 408"
        );
        closing(plain(
            StatusCode::REQUEST_TIMEOUT,
            "the request body stopped arriving\n",
        ))
    } else {
        outcomes.bad_request.inc();
        debug!(
            service = &*service.name,
            "malformed or unfinished request body: 400"
        );
        closing(plain(StatusCode::BAD_REQUEST, "malformed request body\n"))
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
