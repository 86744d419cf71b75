//! Prometheus metrics. Per-target counters are resolved once per table (see `table.rs`), so the
//! request path only increments atomics.
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub service: String,
    pub target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RepinLabels {
    pub service: String,
    /// The target the session moved to.
    pub target: String,
    pub reason: RepinReason,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[expect(
    non_camel_case_types,
    reason = "label values are the variant names, spelled as Prometheus labels are"
)]
pub enum RepinReason {
    /// The pinned target is no longer configured.
    target_removed,
    /// The pinned target refused or failed the connection.
    target_failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CookieLabels {
    pub service: String,
    pub reason: CookieRejection,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[expect(
    non_camel_case_types,
    reason = "label values are the variant names, spelled as Prometheus labels are"
)]
pub enum CookieRejection {
    malformed,
    forged,
    expired,
    /// Past the first few session cookies of one request: not even checked.
    unchecked,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub service: String,
    pub target: String,
    pub kind: FailureKind,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[expect(
    non_camel_case_types,
    reason = "label values are the variant names, spelled as Prometheus labels are"
)]
pub enum FailureKind {
    /// Connecting failed (refused, unreachable, or timed out).
    connect,
    /// The target did not answer within proxy.timeouts.response.
    timeout,
    /// The connection broke after the request was sent.
    broken,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: Outcome,
}

/// What happened to a request, as the client saw it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[expect(
    non_camel_case_types,
    reason = "label values are the variant names, spelled as Prometheus labels are"
)]
pub enum Outcome {
    /// A target answered (whatever its status).
    forwarded,
    /// 101: tunnelled after an Upgrade.
    upgraded,
    /// 400: malformed request.
    bad_request,
    /// 431: request head over proxy.maxHeaderBytes.
    header_too_large,
    /// The client was too slow sending its request head (or finishing the TLS handshake); the
    /// connection was closed.
    client_timeout,
    /// The TLS handshake failed (not TLS, no common version or cipher, a bad record); the
    /// connection was closed.
    tls_handshake_failed,
    /// 408: the client stopped sending its request body for proxy.timeouts.clientIdle.
    client_body_timeout,
    /// A client stopped reading the response (or a target stopped sending it) for
    /// proxy.timeouts.clientIdle; the connection was closed.
    stalled,
    /// 404: no route matched.
    no_route,
    /// 405: CONNECT on a route that does not allow tunnelling.
    method_not_allowed,
    /// 503: no target can take the request.
    no_target,
    /// 502: every target tried failed.
    upstream_error,
    /// 504: the target did not answer in time.
    upstream_timeout,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: ReloadResult,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[expect(
    non_camel_case_types,
    reason = "label values are the variant names, spelled as Prometheus labels are"
)]
pub enum ReloadResult {
    applied,
    rejected,
    /// The source's new model equals the running one (a comment edited, a watch event that
    /// changes nothing tether uses): nothing is rebuilt.
    unchanged,
}

/// Every metric tether exports.
#[derive(Clone, Default)]
pub struct Metrics {
    pub requests: Family<TargetLabels, Counter>,
    pub new_pins: Family<TargetLabels, Counter>,
    pub repins: Family<RepinLabels, Counter>,
    pub drained_session_requests: Family<TargetLabels, Counter>,
    pub invalid_cookies: Family<CookieLabels, Counter>,
    pub upstream_failures: Family<FailureLabels, Counter>,
    pub outcomes: Family<OutcomeLabels, Counter>,
    pub config_reloads: Family<ReloadLabels, Counter>,
    pub client_connections: Gauge,
    pub shed_connections: Counter,
    pub config_generation: Gauge,
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        let prefixed = registry.sub_registry_with_prefix("tether");
        prefixed.register(
            "requests",
            "Requests forwarded to a target",
            self.requests.clone(),
        );
        prefixed.register(
            "new_pins",
            "Sessions pinned to a target for the first time",
            self.new_pins.clone(),
        );
        prefixed.register(
            "repins",
            "Sessions moved to another target because theirs was removed or failed",
            self.repins.clone(),
        );
        prefixed.register(
            "drained_session_requests",
            "Requests of existing sessions served by a draining target",
            self.drained_session_requests.clone(),
        );
        prefixed.register(
            "invalid_cookies",
            "Session cookies ignored because they were malformed, forged, expired, or past the few checked per request",
            self.invalid_cookies.clone(),
        );
        prefixed.register(
            "upstream_failures",
            "Failed attempts to reach a target",
            self.upstream_failures.clone(),
        );
        prefixed.register(
            "request_outcomes",
            "Requests by what the client got",
            self.outcomes.clone(),
        );
        prefixed.register(
            "config_reloads",
            "New models from the source: applied, rejected, or unchanged (nothing to do)",
            self.config_reloads.clone(),
        );
        prefixed.register(
            "client_connections",
            "Open client connections",
            self.client_connections.clone(),
        );
        prefixed.register(
            "shed_connections",
            "Client connections answered 503 and closed because proxy.maxConnections were open",
            self.shed_connections.clone(),
        );
        prefixed.register(
            "config_generation",
            "How many configurations have been applied since start",
            self.config_generation.clone(),
        );
    }

    pub fn outcome(&self, outcome: Outcome) -> Counter {
        self.outcomes
            .get_or_create(&OutcomeLabels { outcome })
            .clone()
    }
}

/// Counters for one outcome each, resolved once so the hot path skips the family's lock.
#[derive(Clone)]
pub struct OutcomeCounters {
    pub forwarded: Counter,
    pub upgraded: Counter,
    pub bad_request: Counter,
    pub header_too_large: Counter,
    pub client_timeout: Counter,
    pub tls_handshake_failed: Counter,
    pub client_body_timeout: Counter,
    pub stalled: Counter,
    pub no_route: Counter,
    pub method_not_allowed: Counter,
    pub no_target: Counter,
    pub upstream_error: Counter,
    pub upstream_timeout: Counter,
}

impl OutcomeCounters {
    pub fn new(metrics: &Metrics) -> Self {
        Self {
            forwarded: metrics.outcome(Outcome::forwarded),
            upgraded: metrics.outcome(Outcome::upgraded),
            bad_request: metrics.outcome(Outcome::bad_request),
            header_too_large: metrics.outcome(Outcome::header_too_large),
            client_timeout: metrics.outcome(Outcome::client_timeout),
            tls_handshake_failed: metrics.outcome(Outcome::tls_handshake_failed),
            client_body_timeout: metrics.outcome(Outcome::client_body_timeout),
            stalled: metrics.outcome(Outcome::stalled),
            no_route: metrics.outcome(Outcome::no_route),
            method_not_allowed: metrics.outcome(Outcome::method_not_allowed),
            no_target: metrics.outcome(Outcome::no_target),
            upstream_error: metrics.outcome(Outcome::upstream_error),
            upstream_timeout: metrics.outcome(Outcome::upstream_timeout),
        }
    }
}
