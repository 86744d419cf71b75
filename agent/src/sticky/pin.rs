//! The pin decision: which target a sticky session's request goes to, how a failed attempt
//! moves the session, and whether the response (re-)issues its cookie.
//!
//! The whole state machine of [`Pin`] lives here, with no socket, counter or log: the handler
//! counts and logs from the [`Decision`]s it gets back, and the tests below drive every branch
//! with plain tables. Rules (HAProxy's drain, Kong's sticky sessions):
//! - a pinned session stays on its target while that target is configured, draining or not;
//! - a pinned session whose target is gone is re-pinned to a new pick;
//! - when the pinned target fails, the retry's target takes the session (a new cookie), or,
//!   with change-on-failure off, the session stays pinned to the failed one (no new cookie).
use crate::balance::Candidate;
use crate::metrics::RepinReason;
use crate::sticky::cookie::{CookieCodec, Lifetimes, Rejected, Session, TargetTag};
use crate::table::{ServiceTable, Strategy};

/// Session cookies verified per request. A browser sends one per matching path, rarely more
/// than two; a client sending hundreds is probing, and each check costs a MAC.
pub const MAX_SESSION_COOKIES_CHECKED: usize = 3;

/// What a request's session cookies amount to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// The request carries no session cookie.
    Absent,
    /// The first cookie that verified (those refused before it are not reported).
    Valid(Session),
    /// None of the few checked verified: why the last one did not, and how many more the
    /// request carried unchecked.
    Rejected { reason: Rejected, unchecked: usize },
}

/// Verifies `values`, the request's session cookies for `service`, in order: the first valid
/// one wins, and at most [`MAX_SESSION_COOKIES_CHECKED`] are checked.
pub fn verify<'a>(
    codec: &CookieCodec,
    service: &str,
    lifetimes: Lifetimes,
    mut values: impl Iterator<Item = &'a str>,
    now: u32,
) -> Verified {
    let mut rejected = None;
    for value in values.by_ref().take(MAX_SESSION_COOKIES_CHECKED) {
        match codec.decode(service, value, lifetimes, now) {
            Ok(session) => return Verified::Valid(session),
            Err(reason) => rejected = Some(reason),
        }
    }
    match rejected {
        None => Verified::Absent,
        Some(reason) => Verified::Rejected {
            reason,
            unchecked: values.count(),
        },
    }
}

/// Where a pinned session goes, given the target its cookie names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinnedTo {
    /// The target is configured and takes new sessions.
    Active(usize),
    /// The target is draining: the session stays (the drain), no new one arrives.
    Draining(usize),
    /// The target is gone: pick anew.
    Gone,
}

/// Resolves a pin found by lookup (`found` is the target's index, if it is still configured).
pub fn pinned(found: Option<usize>, candidates: &[Candidate]) -> PinnedTo {
    match found {
        Some(index) if candidates[index].takes_new() => PinnedTo::Active(index),
        Some(index) => PinnedTo::Draining(index),
        None => PinnedTo::Gone,
    }
}

/// How the session came to its target: the state a request carries through its retries.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    /// No session cookie applies (not a sticky service).
    Unpinned,
    /// The cookie's target kept the session; `session` is what the cookie said.
    Kept { session: Session, draining: bool },
    /// No valid cookie: a new session.
    New,
    /// The cookie's target is gone or failed: the session moved.
    Moved,
    /// The cookie's target failed and another served this request, but the session stays
    /// pinned to it (change-on-failure off): no new cookie.
    Stays,
}

/// Logs name the state, not the cookie's contents.
impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pin::Unpinned => f.write_str("Unpinned"),
            Pin::Kept { draining, .. } => {
                f.debug_struct("Kept").field("draining", draining).finish()
            }
            Pin::New => f.write_str("New"),
            Pin::Moved => f.write_str("Moved"),
            Pin::Stays => f.write_str("Stays"),
        }
    }
}

/// Which target a request tries next, and how its session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub pin: Pin,
    /// `None`: no target can take the request.
    pub target: Option<usize>,
    /// Set when this decision moved the session to `target`, and why.
    pub repinned: Option<RepinReason>,
}

/// The first target for a request to a service without sessions; `hash` feeds consistent
/// hashing.
pub fn unpinned(service: &ServiceTable, hash: Option<u64>) -> Decision {
    Decision {
        pin: Pin::Unpinned,
        target: service.pick_new(hash, |_| false),
        repinned: None,
    }
}

/// The first target for a request to a sticky service whose session cookies came to `cookie`.
pub fn decide(service: &ServiceTable, cookie: Verified) -> Decision {
    let (pin, target, repinned) = match cookie {
        Verified::Valid(session) => match service.pinned(session.target) {
            PinnedTo::Active(index) => (
                Pin::Kept {
                    session,
                    draining: false,
                },
                Some(index),
                None,
            ),
            PinnedTo::Draining(index) => (
                Pin::Kept {
                    session,
                    draining: true,
                },
                Some(index),
                None,
            ),
            PinnedTo::Gone => {
                let target = service.pick_new(None, |_| false);
                let repinned = target.map(|_| RepinReason::target_removed);
                (Pin::Moved, target, repinned)
            }
        },
        Verified::Absent | Verified::Rejected { .. } => {
            (Pin::New, service.pick_new(None, |_| false), None)
        }
    };
    Decision {
        pin,
        target,
        repinned,
    }
}

impl Decision {
    /// The target tried last failed and the request may go to another: the next target (none
    /// that `tried` names), and how the session moves with it.
    pub fn fail_over(self, service: &ServiceTable, tried: impl Fn(usize) -> bool) -> Decision {
        // Without the request's hash: a retry spreads over the rest like round-robin.
        let Some(next) = service.pick_new(None, tried) else {
            return Decision {
                target: None,
                repinned: None,
                ..self
            };
        };
        let keeps_pin = matches!(
            service.strategy,
            Strategy::Sticky {
                change_on_failure: false,
                ..
            }
        );
        // A new session whose first pick failed was never pinned: it stays new.
        let (pin, repinned) = match self.pin {
            Pin::Kept { .. } if keeps_pin => (Pin::Stays, None),
            Pin::Kept { .. } | Pin::Moved => (Pin::Moved, Some(RepinReason::target_failed)),
            pin @ (Pin::Unpinned | Pin::New | Pin::Stays) => (pin, None),
        };
        Decision {
            pin,
            target: Some(next),
            repinned,
        }
    }
}

/// The session the response's cookie carries, if it sets one, for a request `served` by the
/// target with that tag. A new or moved session gets a fresh cookie; a kept one is re-issued
/// only with `refresh` on (an idle timeout counts from the last use), and at most once a second;
/// an unpinned or stayed request sets none.
pub fn reissue(pin: Pin, served: TargetTag, refresh: bool, now: u32) -> Option<Session> {
    match pin {
        Pin::New | Pin::Moved => Some(Session {
            target: served,
            issued_at: now,
            refreshed_at: now,
        }),
        Pin::Kept { session, .. } => (refresh && session.refreshed_at < now).then_some(Session {
            refreshed_at: now,
            ..session
        }),
        Pin::Unpinned | Pin::Stays => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::tests::candidates;
    use crate::metrics::Metrics;
    use crate::model::Balancing;
    use crate::source::file;
    use crate::sticky::cookie::KEY_LEN;
    use crate::table::Tables;

    const NOW: u32 = 1_000_000;
    const A: &str = "127.0.0.1:9001";
    const B: &str = "127.0.0.1:9002";
    /// Weight 0: draining.
    const D: &str = "127.0.0.1:9003";
    /// Not a target of the service (any more).
    const GONE: &str = "127.0.0.1:9009";

    /// Targets 0 (A) and 1 (B) take new sessions; 2 (D) drains.
    const ECHO: &str = r#"
services:
  echo:
    policy: {algorithm: sticky-sessions, hashOn: {input: none}, stickySessions: {cookie: s}}
    targets:
      - {address: 127.0.0.1:9001}
      - {address: 127.0.0.1:9002}
      - {address: 127.0.0.1:9003, weight: 0}
"#;

    /// Every target drains: no new session can be placed.
    const DRAINING: &str = r#"
services:
  echo:
    policy: {algorithm: sticky-sessions, hashOn: {input: none}, stickySessions: {cookie: s}}
    targets:
      - {address: 127.0.0.1:9001, weight: 0}
"#;

    fn codec() -> CookieCodec {
        CookieCodec::new(&[1; KEY_LEN])
    }

    fn tables(yaml: &str, change_on_failure: bool) -> Tables {
        let mut model = file::parse(yaml, "test.yaml").expect("valid").model;
        for service in model.services.values_mut() {
            if let Balancing::StickySessions(cookie) = &mut service.balancing {
                cookie.change_on_failure = change_on_failure;
            }
        }
        Tables::build(&model, &codec(), &Metrics::default(), 1)
    }

    fn echo(tables: &Tables) -> &ServiceTable {
        tables.service("echo").expect("service echo")
    }

    fn tag(address: &str) -> TargetTag {
        codec().target_tag("echo", address.parse().expect("address"))
    }

    fn session(address: &str, issued_at: u32, refreshed_at: u32) -> Session {
        Session {
            target: tag(address),
            issued_at,
            refreshed_at,
        }
    }

    fn value(session: &Session) -> String {
        codec().encode("echo", session)
    }

    fn kept(address: &str, draining: bool) -> Pin {
        Pin::Kept {
            session: session(address, NOW - 100, NOW - 10),
            draining,
        }
    }

    /// What a decision should be: its pin, the targets it may go to (a new pick rotates; none
    /// for no target), and its re-pin.
    type Expected<'a> = (Pin, &'a [usize], Option<RepinReason>);

    fn check(case: &str, decision: Decision, (pin, targets, repinned): Expected) {
        assert_eq!(decision.pin, pin, "{case}: pin");
        match decision.target {
            Some(target) => assert!(targets.contains(&target), "{case}: target {target}"),
            None => assert!(targets.is_empty(), "{case}: no target"),
        }
        assert_eq!(decision.repinned, repinned, "{case}: re-pin");
    }

    #[test]
    fn verify_takes_the_first_valid_cookie_of_the_few_checked() {
        let valid = session(A, NOW - 100, NOW - 10);
        let other = session(B, NOW - 50, NOW - 5);
        let forged = CookieCodec::new(&[2; KEY_LEN]).encode("echo", &valid);
        let other_service = codec().encode("billing", &valid);
        let (good, second) = (value(&valid), value(&other));
        let idle = Lifetimes {
            absolute_secs: None,
            idle_secs: Some(10),
        };
        let absolute = Lifetimes {
            absolute_secs: Some(100),
            idle_secs: None,
        };
        let none = Lifetimes::default();
        let malformed = |unchecked| Verified::Rejected {
            reason: Rejected::Malformed,
            unchecked,
        };
        let rejected = |reason| Verified::Rejected {
            reason,
            unchecked: 0,
        };
        #[rustfmt::skip]
        let cases: &[(&str, &[&str], Lifetimes, Verified)] = &[
            ("no cookie", &[], none, Verified::Absent),
            ("valid", &[&good], none, Verified::Valid(valid)),
            ("malformed", &["garbage"], none, malformed(0)),
            ("signed with another key", &[&forged], none, rejected(Rejected::Forged)),
            ("signed for another service", &[&other_service], none, rejected(Rejected::Forged)),
            ("idle timeout reached", &[&good], idle, rejected(Rejected::Expired)),
            ("absolute timeout reached", &[&good], absolute, rejected(Rejected::Expired)),
            ("within both timeouts", &[&good], Lifetimes { absolute_secs: Some(101), idle_secs: Some(11) }, Verified::Valid(valid)),
            ("a valid one after a bad one", &["garbage", &good], none, Verified::Valid(valid)),
            ("the first of two valid ones", &[&second, &good], none, Verified::Valid(other)),
            ("the last reason is reported", &[&forged, "garbage"], none, malformed(0)),
            ("the last reason is reported, forged", &["garbage", &forged], none, rejected(Rejected::Forged)),
            ("three checked, all bad", &["a", "b", "c"], none, malformed(0)),
            ("a valid one past the third is not checked", &["a", "b", "c", &good], none, malformed(1)),
            ("the rest are counted unchecked", &["a", "b", "c", "d", "e"], none, malformed(2)),
        ];
        for (case, values, lifetimes, expected) in cases {
            let verified = verify(&codec(), "echo", *lifetimes, values.iter().copied(), NOW);
            assert_eq!(verified, *expected, "{case}");
        }
    }

    #[test]
    fn decide_keeps_a_pin_where_its_target_is_configured_and_places_the_rest() {
        let forged = Verified::Rejected {
            reason: Rejected::Forged,
            unchecked: 0,
        };
        let expired = Verified::Rejected {
            reason: Rejected::Expired,
            unchecked: 2,
        };
        let at = |address| Verified::Valid(session(address, NOW - 100, NOW - 10));
        let removed = Some(RepinReason::target_removed);
        #[rustfmt::skip]
        let cases: &[(&str, &str, Verified, Expected)] = &[
            ("no cookie: a new session", ECHO, Verified::Absent, (Pin::New, &[0, 1], None)),
            ("forged: a new session", ECHO, forged, (Pin::New, &[0, 1], None)),
            ("expired: a new session", ECHO, expired, (Pin::New, &[0, 1], None)),
            ("pinned to an active target", ECHO, at(A), (kept(A, false), &[0], None)),
            ("pinned to the other one", ECHO, at(B), (kept(B, false), &[1], None)),
            ("pinned to a draining target: it stays", ECHO, at(D), (kept(D, true), &[2], None)),
            ("pinned to a removed target: re-pinned", ECHO, at(GONE), (Pin::Moved, &[0, 1], removed)),
            ("removed, and nothing takes new sessions", DRAINING, at(GONE), (Pin::Moved, &[], None)),
            ("no cookie, and nothing takes new sessions", DRAINING, Verified::Absent, (Pin::New, &[], None)),
            ("pinned to the one draining target", DRAINING, at(A), (kept(A, true), &[0], None)),
        ];
        for &(case, yaml, cookie, expected) in cases {
            let tables = tables(yaml, true);
            check(case, decide(echo(&tables), cookie), expected);
        }
    }

    #[test]
    fn new_sessions_avoid_a_failed_target_but_its_own_sessions_still_try_it() {
        let tables = tables(ECHO, true);
        let service = echo(&tables);
        service.targets[0].failed();
        for _ in 0..10 {
            let new = decide(service, Verified::Absent);
            check("new", new, (Pin::New, &[1], None));
        }
        let pinned = decide(service, Verified::Valid(session(A, NOW - 100, NOW - 10)));
        let expected = (kept(A, false), &[0][..], None);
        check("pinned to the failed target", pinned, expected);
    }

    #[test]
    fn a_service_without_sessions_is_unpinned() {
        for (yaml, targets) in [(ECHO, &[0, 1][..]), (DRAINING, &[])] {
            let tables = tables(yaml, true);
            let decision = unpinned(echo(&tables), None);
            check("unpinned", decision, (Pin::Unpinned, targets, None));
        }
    }

    #[test]
    fn fail_over_moves_the_session_unless_it_stays_pinned() {
        let failed = Some(RepinReason::target_failed);
        #[rustfmt::skip]
        let cases: &[(&str, bool, Pin, &[usize], Expected)] = &[
            // (case, change on failure, pin before, tried, expected after)
            ("kept, target failed: moves", true, kept(A, false), &[0], (Pin::Moved, &[1], failed)),
            ("kept, target failed, change-on-failure off: stays", false, kept(A, false), &[0], (Pin::Stays, &[1], None)),
            ("draining target failed: moves", true, kept(D, true), &[2], (Pin::Moved, &[0, 1], failed)),
            ("draining target failed, change-on-failure off: stays", false, kept(D, true), &[2], (Pin::Stays, &[0, 1], None)),
            ("moved, and the new target failed too: moves again", true, Pin::Moved, &[0], (Pin::Moved, &[1], failed)),
            ("moved, change-on-failure off: still moves", false, Pin::Moved, &[0], (Pin::Moved, &[1], failed)),
            ("a new session's pick failed: still new", true, Pin::New, &[0], (Pin::New, &[1], None)),
            ("stays, failed again: still stays", false, Pin::Stays, &[2, 0], (Pin::Stays, &[1], None)),
            ("unpinned", true, Pin::Unpinned, &[1], (Pin::Unpinned, &[0], None)),
            ("every active target tried: no target, pin unchanged", true, kept(A, false), &[0, 1], (kept(A, false), &[], None)),
            ("none left for a new session", true, Pin::New, &[1, 0], (Pin::New, &[], None)),
        ];
        for &(case, change_on_failure, before, tried, expected) in cases {
            let tables = tables(ECHO, change_on_failure);
            let service = echo(&tables);
            let decision = Decision {
                pin: before,
                target: tried.last().copied(),
                repinned: None,
            };
            let next = decision.fail_over(service, |index| tried.contains(&index));
            check(case, next, expected);
        }
    }

    #[test]
    fn reissue_sets_a_cookie_for_new_and_moved_sessions_and_refreshes_kept_ones() {
        let served = tag(B);
        let fresh = Some(session(B, NOW, NOW));
        let pinned_at = |refreshed_at| Pin::Kept {
            session: session(A, NOW - 100, refreshed_at),
            draining: false,
        };
        let refreshed = Some(session(A, NOW - 100, NOW));
        let draining = Pin::Kept {
            session: session(D, NOW - 100, NOW - 10),
            draining: true,
        };
        #[rustfmt::skip]
        let cases: &[(&str, Pin, bool, Option<Session>)] = &[
            ("new session", Pin::New, false, fresh),
            ("new session, refresh on", Pin::New, true, fresh),
            ("moved session", Pin::Moved, false, fresh),
            ("moved session, refresh on", Pin::Moved, true, fresh),
            ("kept, no idle timeout: no cookie", pinned_at(NOW - 10), false, None),
            ("kept, idle timeout: refreshed, first pin kept", pinned_at(NOW - 10), true, refreshed),
            ("kept, already refreshed this second", pinned_at(NOW), true, None),
            ("kept, refreshed ahead of this clock", pinned_at(NOW + 5), true, None),
            ("kept on a draining target: refreshed", draining, true, Some(session(D, NOW - 100, NOW))),
            ("stays pinned to a failed target: no cookie", Pin::Stays, true, None),
            ("unpinned: no cookie", Pin::Unpinned, true, None),
        ];
        for &(case, pin, refresh, expected) in cases {
            assert_eq!(reissue(pin, served, refresh, NOW), expected, "{case}");
        }
    }

    /// One session through a failure: pinned to A, A fails, B serves and the cookie moves to
    /// B; the next request is kept on B.
    #[test]
    fn a_moved_session_comes_back_pinned_to_its_new_target() {
        let tables = tables(ECHO, true);
        let service = echo(&tables);
        let cookie = value(&session(A, NOW - 100, NOW - 10));
        let verified = verify(
            &codec(),
            "echo",
            Lifetimes::default(),
            [&*cookie].into_iter(),
            NOW,
        );
        let first = decide(service, verified);
        check("first", first, (kept(A, false), &[0], None));
        let second = first.fail_over(service, |index| index == 0);
        let failed = Some(RepinReason::target_failed);
        check("after A failed", second, (Pin::Moved, &[1], failed));
        let served = service.targets[1].tag;
        let moved = reissue(second.pin, served, false, NOW).expect("a new cookie");
        let cookie = codec().encode("echo", &moved);
        let verified = verify(
            &codec(),
            "echo",
            Lifetimes::default(),
            [&*cookie].into_iter(),
            NOW + 1,
        );
        let next = decide(service, verified);
        let pin = Pin::Kept {
            session: moved,
            draining: false,
        };
        check("next request", next, (pin, &[1], None));
    }

    #[test]
    fn logs_name_the_state_not_the_cookie() {
        assert_eq!(format!("{:?}", kept(A, true)), "Kept { draining: true }");
        assert_eq!(format!("{:?}", Pin::Moved), "Moved");
    }

    #[test]
    fn pins_follow_the_drain_rules() {
        let set = candidates(&[100, 0]);
        assert_eq!(pinned(Some(0), &set), PinnedTo::Active(0));
        assert_eq!(pinned(Some(1), &set), PinnedTo::Draining(1));
        assert_eq!(pinned(None, &set), PinnedTo::Gone);
    }
}
