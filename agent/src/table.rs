//! The proxy's compiled view of a [`Model`]: routes sorted for matching, each service's
//! targets with their cookie tags, balancer state and metric handles.
//!
//! A `Tables` is immutable once built and swapped in whole; a request keeps the one it started
//! with, so a reload never changes the rules under an in-flight request.
use crate::balance::maglev::{self, Maglev};
use crate::balance::round_robin::WeightedRoundRobin;
use crate::balance::{least_connections, Candidate};
use crate::metrics::{
    CookieLabels, CookieRejection, FailureKind, FailureLabels, Metrics, RepinLabels, RepinReason,
    TargetLabels,
};
use crate::model::{
    Balancing, HashOn, HostMatch, Model, PathMatch, Plaintext, ProxyTimeouts, TargetState,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_HEADER_BYTES,
};
use crate::sticky::cookie::{CookieCodec, Lifetimes, Rejected, TargetTag};
use crate::sticky::pin::{self, PinnedTo};
use crate::sticky::set_cookie::CookieTemplate;
use prometheus_client::metrics::counter::Counter;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

pub struct Tables {
    pub generation: u64,
    pub timeouts: ProxyTimeouts,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    pub http2: crate::model::Http2Settings,
    /// Whether any route matches on host; if none does, requests skip reading it.
    pub routes_by_host: bool,
    /// The TLS listener's port, for redirects to https (the runtime sets the bound port when
    /// the configured one is 0).
    pub https_port: Option<u16>,
    routes: Vec<CompiledRoute>,
    services: Vec<Arc<ServiceTable>>,
}

struct CompiledRoute {
    host: Option<HostMatch>,
    path: PathMatch,
    service: usize,
    allow_connect: bool,
    plaintext: Plaintext,
    over_tls: bool,
}

/// What a request's route says: the service, whether CONNECT may tunnel through it, and what a
/// plaintext request gets.
pub struct Routed<'a> {
    pub service: &'a ServiceTable,
    pub allow_connect: bool,
    pub plaintext: Plaintext,
}

impl Tables {
    pub fn build(model: &Model, codec: &CookieCodec, metrics: &Metrics, generation: u64) -> Self {
        Self::build_reusing(None, model, codec, metrics, generation)
    }

    /// Tables for `model` that keep this one's table for every service that did not change, so a
    /// change to one service leaves the others' round-robin position, in-flight counts and
    /// failure avoidance alone (Kubernetes changes one EndpointSlice at a time).
    pub fn rebuild(
        &self,
        model: &Model,
        codec: &CookieCodec,
        metrics: &Metrics,
        generation: u64,
    ) -> Self {
        Self::build_reusing(Some(self), model, codec, metrics, generation)
    }

    fn build_reusing(
        previous: Option<&Tables>,
        model: &Model,
        codec: &CookieCodec,
        metrics: &Metrics,
        generation: u64,
    ) -> Self {
        let services: Vec<Arc<ServiceTable>> = model
            .services
            .values()
            .map(|service| {
                let unchanged = previous
                    .and_then(|tables| tables.services.iter().find(|t| t.source == *service));
                match unchanged {
                    Some(table) => table.clone(),
                    None => Arc::new(ServiceTable::build(service, codec, metrics, generation)),
                }
            })
            .collect();
        let index_of = |name: &str| services.iter().position(|s| &*s.name == name);
        let mut routes: Vec<(usize, CompiledRoute)> = model
            .routes
            .iter()
            .enumerate()
            .filter_map(|(order, route)| {
                Some((
                    order,
                    CompiledRoute {
                        host: route.host.clone(),
                        path: route.path.clone(),
                        service: index_of(&route.service)?,
                        allow_connect: route.allow_connect,
                        plaintext: route.plaintext,
                        over_tls: route.over_tls,
                    },
                ))
            })
            .collect();
        // Most specific first: exact host, wildcard host, any host; then exact path, then the
        // longest prefix; ties keep the file's order.
        routes.sort_by_key(|(order, route)| {
            let host_rank = match &route.host {
                Some(HostMatch::Exact(_)) => 0,
                // The longer suffix first; for one suffix, the one-label wildcard first.
                Some(HostMatch::Wildcard(suffix)) => 2000 - 2 * suffix.len().min(999),
                Some(HostMatch::WildcardAnyDepth(suffix)) => 2001 - 2 * suffix.len().min(999),
                None => 4000,
            };
            let path_rank = match &route.path {
                PathMatch::Exact(_) => 0,
                PathMatch::Prefix(prefix) => 100_000 - prefix.len().min(99_999),
            };
            (host_rank, path_rank, *order)
        });
        let (timeouts, max_header_bytes, max_connections, http2) = model
            .proxy
            .as_ref()
            .map(|p| (p.timeouts, p.max_header_bytes, p.max_connections, p.http2))
            .unwrap_or((
                ProxyTimeouts::default(),
                DEFAULT_MAX_HEADER_BYTES,
                DEFAULT_MAX_CONNECTIONS,
                Default::default(),
            ));
        Self {
            generation,
            timeouts,
            max_header_bytes,
            max_connections,
            http2,
            routes_by_host: routes.iter().any(|(_, route)| route.host.is_some()),
            https_port: model
                .proxy
                .as_ref()
                .and_then(|p| p.tls.as_ref())
                .map(|tls| tls.listen.port())
                .filter(|port| *port != 0),
            routes: routes.into_iter().map(|(_, route)| route).collect(),
            services,
        }
    }

    /// The service for a plaintext request to `host` (lowercase, no port) and `path`.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<Routed<'_>> {
        self.route_over(host, path, false)
    }

    /// The service for a request to `host` and `path` that came over TLS or not: a route that
    /// does not take TLS requests is passed over for them.
    pub fn route_over(&self, host: Option<&str>, path: &str, tls: bool) -> Option<Routed<'_>> {
        self.routes
            .iter()
            .find(|route| {
                (if tls {
                    route.over_tls
                } else {
                    route.plaintext != Plaintext::NoMatch
                }) && host_matches(route.host.as_ref(), host)
                    && path_matches(&route.path, path)
            })
            .map(|route| Routed {
                service: &self.services[route.service],
                allow_connect: route.allow_connect,
                plaintext: route.plaintext,
            })
    }

    pub fn service(&self, name: &str) -> Option<&ServiceTable> {
        self.services
            .iter()
            .find(|s| &*s.name == name)
            .map(|s| &**s)
    }
}

fn host_matches(rule: Option<&HostMatch>, host: Option<&str>) -> bool {
    match (rule, host) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(HostMatch::Exact(exact)), Some(host)) => exact == host,
        (Some(HostMatch::Wildcard(suffix)), Some(host)) => host
            .strip_suffix(suffix.as_str())
            .and_then(|label| label.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        (Some(HostMatch::WildcardAnyDepth(suffix)), Some(host)) => host
            .strip_suffix(suffix.as_str())
            .and_then(|labels| labels.strip_suffix('.'))
            .is_some_and(|labels| !labels.is_empty() && !labels.split('.').any(str::is_empty)),
    }
}

/// Path-element prefixes, as Kubernetes and Gateway API define them.
fn path_matches(rule: &PathMatch, path: &str) -> bool {
    match rule {
        PathMatch::Exact(exact) => path == exact,
        PathMatch::Prefix(prefix) if prefix == "/" => true,
        PathMatch::Prefix(prefix) => path
            .strip_prefix(prefix.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
    }
}

/// How a service picks targets for new sessions.
pub enum Strategy {
    RoundRobin,
    Sticky {
        cookie: CookieTemplate,
        lifetimes: Lifetimes,
        /// Re-issue the cookie on use, so the idle timeout counts from the last request.
        refresh: bool,
        /// A retry after the pinned target failed moves the session (false: the cookie stays).
        change_on_failure: bool,
    },
    LeastConnections,
    Hashing {
        hash_on: HashOn,
        fallback: Option<HashOn>,
        maglev: Maglev,
    },
}

pub struct ServiceTable {
    pub name: Arc<str>,
    /// The model this table was built from: an equal one later reuses the table.
    source: crate::model::Service,
    pub strategy: Strategy,
    /// Whether targets are reached over HTTP/2 with prior knowledge (`protocol: h2c`).
    pub h2c: bool,
    pub targets: Box<[TargetSlot]>,
    candidates: Box<[Candidate]>,
    round_robin: WeightedRoundRobin,
    in_flight: Box<[AtomicU32]>,
    invalid_cookies: [Counter; 4],
}

pub struct TargetSlot {
    pub address: SocketAddr,
    /// Until when (ms on [`monotonic_ms`]'s clock) new sessions avoid this target because it
    /// failed a connection: passive health, like nginx's `max_fails=1 fail_timeout`.
    avoid_until_ms: AtomicU64,
    /// The address as text: the metrics label and the log field.
    pub label: Arc<str>,
    pub tag: TargetTag,
    pub state: TargetState,
    pub weight: u32,
    pub counters: TargetCounters,
}

/// Handles into the metric families, resolved at build time.
pub struct TargetCounters {
    pub requests: Counter,
    pub new_pins: Counter,
    pub repins_removed: Counter,
    pub repins_failed: Counter,
    pub drained_session_requests: Counter,
    pub connect_failures: Counter,
    pub timeouts: Counter,
    pub broken: Counter,
}

impl TargetCounters {
    fn new(metrics: &Metrics, service: &str, target: &str) -> Self {
        let labels = TargetLabels {
            service: service.to_string(),
            target: target.to_string(),
        };
        let repin = |reason| {
            metrics
                .repins
                .get_or_create(&RepinLabels {
                    service: service.to_string(),
                    target: target.to_string(),
                    reason,
                })
                .clone()
        };
        let failure = |kind| {
            metrics
                .upstream_failures
                .get_or_create(&FailureLabels {
                    service: service.to_string(),
                    target: target.to_string(),
                    kind,
                })
                .clone()
        };
        Self {
            requests: metrics.requests.get_or_create(&labels).clone(),
            new_pins: metrics.new_pins.get_or_create(&labels).clone(),
            repins_removed: repin(RepinReason::target_removed),
            repins_failed: repin(RepinReason::target_failed),
            drained_session_requests: metrics
                .drained_session_requests
                .get_or_create(&labels)
                .clone(),
            connect_failures: failure(FailureKind::connect),
            timeouts: failure(FailureKind::timeout),
            broken: failure(FailureKind::broken),
        }
    }
}

impl ServiceTable {
    fn build(
        service: &crate::model::Service,
        codec: &CookieCodec,
        metrics: &Metrics,
        generation: u64,
    ) -> Self {
        let name: Arc<str> = Arc::from(service.name.as_str());
        let targets: Box<[TargetSlot]> = service
            .targets
            .iter()
            .map(|target| {
                let label: Arc<str> = Arc::from(target.address.to_string());
                TargetSlot {
                    address: target.address,
                    avoid_until_ms: AtomicU64::new(0),
                    tag: codec.target_tag(&service.name, target.address),
                    state: target.state,
                    weight: target.weight,
                    counters: TargetCounters::new(metrics, &service.name, &label),
                    label,
                }
            })
            .collect();
        let candidates: Box<[Candidate]> = service
            .targets
            .iter()
            .map(|target| Candidate {
                weight: target.weight,
                active: target.state == TargetState::Active,
            })
            .collect();
        let strategy = match &service.balancing {
            Balancing::RoundRobin => Strategy::RoundRobin,
            Balancing::LeastConnections => Strategy::LeastConnections,
            Balancing::StickySessions(cookie) => Strategy::Sticky {
                cookie: CookieTemplate::new(cookie),
                lifetimes: Lifetimes {
                    absolute_secs: cookie.absolute_timeout.map(secs_u32),
                    idle_secs: cookie.idle_timeout.map(secs_u32),
                },
                refresh: cookie.idle_timeout.is_some(),
                change_on_failure: cookie.change_on_failure,
            },
            Balancing::ConsistentHashing { hash_on, fallback } => {
                let identities: Vec<String> =
                    targets.iter().map(|t| t.address.to_string()).collect();
                let entries: Vec<maglev::Entry> = identities
                    .iter()
                    .zip(candidates.iter())
                    .map(|(identity, candidate)| maglev::Entry {
                        identity: identity.as_bytes(),
                        weight: if candidate.active {
                            candidate.weight
                        } else {
                            0
                        },
                    })
                    .collect();
                Strategy::Hashing {
                    hash_on: hash_on.clone(),
                    fallback: fallback.clone(),
                    // The L7 table is per service and small; a smaller prime keeps builds fast.
                    maglev: Maglev::build(&entries, 10_007),
                }
            }
        };
        let rejection = |reason| {
            metrics
                .invalid_cookies
                .get_or_create(&CookieLabels {
                    service: service.name.clone(),
                    reason,
                })
                .clone()
        };
        // Different agents and generations start their rotation at different targets.
        let start = (maglev::stable_hash(service.name.as_bytes())
            ^ generation
            ^ u64::from(std::process::id())) as usize;
        Self {
            source: service.clone(),
            round_robin: WeightedRoundRobin::new(&candidates, start),
            in_flight: candidates.iter().map(|_| AtomicU32::new(0)).collect(),
            candidates,
            targets,
            strategy,
            h2c: service.upstream == crate::model::UpstreamProtocol::H2c,
            name,
            invalid_cookies: [
                rejection(CookieRejection::malformed),
                rejection(CookieRejection::forged),
                rejection(CookieRejection::expired),
                rejection(CookieRejection::unchecked),
            ],
        }
    }

    /// Where the session whose cookie names `tag` goes.
    pub fn pinned(&self, tag: TargetTag) -> PinnedTo {
        let found = self.targets.iter().position(|target| target.tag == tag);
        pin::pinned(found, &self.candidates)
    }

    /// A target for a new session, or a re-pin; `hash` feeds consistent hashing.
    ///
    /// Targets that recently refused a connection are avoided while any other can take the
    /// session; when all have failed, they are tried anyway (the failure may be over).
    pub fn pick_new(&self, hash: Option<u64>, excluded: impl Fn(usize) -> bool) -> Option<usize> {
        let now = monotonic_ms();
        let excluded_or_avoided =
            |index: usize| excluded(index) || self.targets[index].avoided(now);
        self.pick_among(hash, excluded_or_avoided)
            .or_else(|| self.pick_among(hash, excluded))
    }

    fn pick_among(&self, hash: Option<u64>, excluded: impl Fn(usize) -> bool) -> Option<usize> {
        match &self.strategy {
            Strategy::RoundRobin | Strategy::Sticky { .. } => self.round_robin.next(excluded),
            Strategy::LeastConnections => {
                let start = self.round_robin.next(|_| false).unwrap_or(0);
                least_connections::least_loaded(&self.candidates, &self.in_flight, start, excluded)
            }
            Strategy::Hashing { maglev, .. } => match hash {
                Some(hash) => maglev.pick(hash, excluded),
                // No value to hash on (header absent, say): spread like round-robin.
                None => self.round_robin.next(excluded),
            },
        }
    }

    pub fn count_rejected_cookie(&self, rejected: Rejected) {
        let index = match rejected {
            Rejected::Malformed => 0,
            Rejected::Forged => 1,
            Rejected::Expired => 2,
        };
        self.invalid_cookies[index].inc();
    }

    /// Session cookies a request carried past the ones checked.
    pub fn count_unchecked_cookies(&self, count: u64) {
        self.invalid_cookies[3].inc_by(count);
    }

    /// Marks a request in flight to `target` until the guard drops (for least-connections).
    pub fn in_flight(&self, target: usize) -> InFlight<'_> {
        self.in_flight[target].fetch_add(1, Ordering::Relaxed);
        InFlight(&self.in_flight[target])
    }

    /// Whether any target is configured (draining ones included).
    pub fn has_targets(&self) -> bool {
        !self.targets.is_empty()
    }
}

impl TargetSlot {
    /// Records a failed connection: new sessions avoid this target for [`AVOID_AFTER_FAILURE`].
    pub fn failed(&self) {
        let until = monotonic_ms() + AVOID_AFTER_FAILURE.as_millis() as u64;
        self.avoid_until_ms.store(until, Ordering::Relaxed);
    }

    fn avoided(&self, now_ms: u64) -> bool {
        self.avoid_until_ms.load(Ordering::Relaxed) > now_ms
    }
}

/// How long new sessions avoid a target after it refused a connection (nginx's default
/// `fail_timeout`). Pinned sessions still try their own target first.
pub const AVOID_AFTER_FAILURE: std::time::Duration = std::time::Duration::from_secs(10);

/// Milliseconds on a process-wide monotonic clock (never 0 after the first call's instant).
fn monotonic_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(std::time::Instant::now);
    epoch.elapsed().as_millis() as u64 + 1
}

pub struct InFlight<'a>(&'a AtomicU32);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn secs_u32(duration: std::time::Duration) -> u32 {
    u32::try_from(duration.as_secs()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::file;

    fn tables(yaml: &str) -> Tables {
        let model = file::parse(yaml, "test.yaml").expect("valid").model;
        Tables::build(&model, &CookieCodec::new(&[1; 32]), &Metrics::default(), 1)
    }

    const ROUTES: &str = r#"
proxy: {listen: 127.0.0.1:1}
routes:
  - {match: {pathPrefix: /}, service: root}
  - {match: {pathPrefix: /api}, service: api}
  - {match: {pathPrefix: /api/v2}, service: v2}
  - {match: {path: /api/exact}, service: exact}
  - {match: {host: shop.example.com, pathPrefix: /api}, service: shop}
  - {match: {host: "*.example.com"}, service: wild}
services:
  root: {targets: []}
  api: {targets: []}
  v2: {targets: []}
  exact: {targets: []}
  shop: {targets: []}
  wild: {targets: []}
"#;

    fn routed(tables: &Tables, host: Option<&str>, path: &str) -> String {
        tables
            .route(host, path)
            .map(|routed| routed.service.name.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn the_most_specific_route_wins() {
        let t = tables(ROUTES);
        assert_eq!(routed(&t, None, "/"), "root");
        assert_eq!(routed(&t, None, "/api"), "api");
        assert_eq!(routed(&t, None, "/api/x"), "api");
        assert_eq!(routed(&t, None, "/apix"), "root");
        assert_eq!(routed(&t, None, "/api/v2/items"), "v2");
        assert_eq!(routed(&t, None, "/api/exact"), "exact");
        assert_eq!(routed(&t, None, "/api/exact/more"), "api");
        assert_eq!(routed(&t, Some("shop.example.com"), "/api/x"), "shop");
        assert_eq!(routed(&t, Some("shop.example.com"), "/other"), "wild");
        assert_eq!(routed(&t, Some("a.b.example.com"), "/other"), "root");
        assert_eq!(routed(&t, Some("example.com"), "/other"), "root");
    }

    #[test]
    fn a_gateway_wildcard_covers_any_number_of_labels_an_ingress_wildcard_one() {
        let one = HostMatch::Wildcard("example.com".into());
        let any = HostMatch::WildcardAnyDepth("example.com".into());
        for (host, by_one, by_any) in [
            ("a.example.com", true, true),
            ("a.b.example.com", false, true),
            ("example.com", false, false),
            (".example.com", false, false),
            ("a..example.com", false, false),
            ("aexample.com", false, false),
            ("a.example.org", false, false),
        ] {
            assert_eq!(host_matches(Some(&one), Some(host)), by_one, "{host}");
            assert_eq!(host_matches(Some(&any), Some(host)), by_any, "{host}");
        }
        assert!(!host_matches(Some(&any), None));
    }

    #[test]
    fn a_rebuild_keeps_the_tables_of_unchanged_services() {
        let yaml = |b_port: u16| {
            format!(
                "services:\n  a:\n    targets: [{{address: 127.0.0.1:1}}, {{address: 127.0.0.1:2}}]\n  b:\n    targets: [{{address: 127.0.0.1:{b_port}}}]\n"
            )
        };
        let codec = CookieCodec::new(&[1; 32]);
        let metrics = Metrics::default();
        let first_model = file::parse(&yaml(3), "t").expect("valid").model;
        let first = Tables::build(&first_model, &codec, &metrics, 1);
        let next_after_first = first.service("a").expect("a").pick_new(None, |_| false);
        let second_model = file::parse(&yaml(4), "t").expect("valid").model;
        let second = first.rebuild(&second_model, &codec, &metrics, 2);
        let a1 = first.service("a").expect("a") as *const ServiceTable;
        let a2 = second.service("a").expect("a") as *const ServiceTable;
        assert_eq!(a1, a2, "unchanged service a was rebuilt");
        let b1 = first.service("b").expect("b") as *const ServiceTable;
        let b2 = second.service("b").expect("b") as *const ServiceTable;
        assert_ne!(b1, b2, "changed service b was reused");
        // The round-robin rotation carries on where it was.
        let next = second.service("a").expect("a").pick_new(None, |_| false);
        assert_ne!(next, next_after_first);
    }

    #[test]
    fn pins_resolve_by_tag_including_draining_targets() {
        let t = tables(
            r#"
services:
  echo:
    policy: {algorithm: sticky-sessions, hashOn: {input: none}, stickySessions: {cookie: s}}
    targets:
      - {address: 127.0.0.1:9001}
      - {address: 127.0.0.1:9002, weight: 0}
"#,
        );
        let service = t.service("echo").expect("service");
        let codec = CookieCodec::new(&[1; 32]);
        let tag = |a: &str| codec.target_tag("echo", a.parse().expect("addr"));
        assert_eq!(service.pinned(tag("127.0.0.1:9001")), PinnedTo::Active(0));
        assert_eq!(service.pinned(tag("127.0.0.1:9002")), PinnedTo::Draining(1));
        assert_eq!(service.pinned(tag("127.0.0.1:9003")), PinnedTo::Gone);
        for _ in 0..20 {
            assert_eq!(service.pick_new(None, |_| false), Some(0));
        }
    }
}
