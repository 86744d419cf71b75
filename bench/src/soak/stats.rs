//! Counts by traffic kind and outcome, and the few noteworthy cases kept with their details.
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Noteworthy cases kept in full per kind of case (the counts go on beyond), so that one
/// frequent case cannot crowd out a rare one.
const MAX_NOTES_PER_CASE: u64 = 20;

#[derive(Default, Serialize, Clone)]
pub struct Counts {
    /// HTTP answers (any status) and tunnel echoes: what req/s counts.
    pub answered: u64,
    /// Traffic kind → outcome ("2xx", "5xx (backend killed)", "error: reset", ...) → count.
    pub outcomes: BTreeMap<String, BTreeMap<String, u64>>,
    /// Requests of pinned sessions answered by their pinned target.
    pub kept: u64,
    /// Requests of pinned sessions answered elsewhere, by explanation ("lost" when none).
    pub moves: BTreeMap<String, u64>,
    pub lost_sessions: u64,
    pub unexpected_5xx: u64,
    pub expected_5xx: u64,
    /// New sessions that landed on a draining or removed target.
    pub bad_landings: u64,
    /// Failures (resets, timeouts, broken tunnels...) that no deliberate event explains.
    pub unexplained_failures: u64,
    /// Noteworthy cases counted by "kind: what".
    pub cases: BTreeMap<String, u64>,
    /// The first few of each case, in full.
    pub notes: Vec<Note>,
}

#[derive(Serialize, Clone, Debug)]
pub struct Note {
    /// Seconds since the start: request sent, answer complete.
    pub t0: f64,
    pub t1: f64,
    pub kind: String,
    pub what: String,
    pub detail: String,
}

#[derive(Default)]
pub struct Stats {
    /// Every HTTP answer (any status) and every completed tunnel exchange: the req/s series.
    pub answered: AtomicU64,
    counts: Mutex<Counts>,
}

impl Stats {
    fn with<R>(&self, f: impl FnOnce(&mut Counts) -> R) -> R {
        // Counters stay meaningful after a panic elsewhere; keep counting.
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut counts)
    }

    pub fn snapshot(&self) -> Counts {
        let answered = self.answered.load(Ordering::Relaxed);
        self.with(|c| Counts {
            answered,
            ..c.clone()
        })
    }

    pub fn outcome(&self, kind: &str, outcome: &str) {
        self.with(|c| {
            *c.outcomes
                .entry(kind.to_string())
                .or_default()
                .entry(outcome.to_string())
                .or_default() += 1;
        });
    }

    /// Counts a status: `explained` says whether a deliberate event accounts for a 5xx.
    pub fn status(&self, kind: &str, status: u16, explained: bool, note: impl FnOnce() -> Note) {
        self.answered.fetch_add(1, Ordering::Relaxed);
        let outcome = match status {
            500..=599 if explained => format!("{status} (backend killed)"),
            500..=599 => format!("{status} UNEXPECTED"),
            101 => "101 (upgraded)".to_string(),
            _ => format!("{}xx", status / 100),
        };
        self.outcome(kind, &outcome);
        if status >= 500 {
            self.with(|c| {
                if explained {
                    c.expected_5xx += 1;
                } else {
                    c.unexpected_5xx += 1;
                    push(c, note());
                }
            });
        }
    }

    /// Counts a failure to get an answer; unexplained ones are kept as notes.
    pub fn failure(
        &self,
        kind: &str,
        what: &str,
        cause: Option<&str>,
        note: impl FnOnce() -> Note,
    ) {
        match cause {
            Some(cause) => self.outcome(kind, &format!("{what} ({cause})")),
            None => {
                self.outcome(kind, &format!("{what} UNEXPLAINED"));
                self.with(|c| {
                    c.unexplained_failures += 1;
                    push(c, note());
                });
            }
        }
    }

    pub fn kept(&self) {
        self.with(|c| c.kept += 1);
    }

    pub fn moved(&self, why: &str, lost: bool, note: impl FnOnce() -> Note) {
        self.with(|c| {
            *c.moves.entry(why.to_string()).or_default() += 1;
            if lost {
                c.lost_sessions += 1;
                push(c, note());
            }
        });
    }

    pub fn bad_landing(&self, note: Note) {
        self.with(|c| {
            c.bad_landings += 1;
            push(c, note);
        });
    }
}

fn push(counts: &mut Counts, note: Note) {
    let seen = counts
        .cases
        .entry(format!("{}: {}", note.kind, note.what))
        .or_default();
    *seen += 1;
    if *seen <= MAX_NOTES_PER_CASE {
        counts.notes.push(note);
    }
}
