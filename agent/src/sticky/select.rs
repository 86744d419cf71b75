//! Target selection: the one place that decides which target takes a new session, and whether
//! a pinned session may stay where it is.
//!
//! Rules (Kong's sticky-sessions with drain support, HAProxy's drain):
//! - new sessions go only to active targets with weight > 0, in proportion to their weights;
//! - a pinned session stays on its target while that target is configured, draining or not;
//! - a pinned session whose target is gone, or refused the connection, is re-pinned.
use crate::maglev::Maglev;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

/// The longest weighted round-robin schedule kept; larger weight sets are scaled down to fit.
const MAX_SCHEDULE: u64 = 4096;

/// What selection needs to know about a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub weight: u32,
    /// Active (takes new sessions) or draining (keeps existing ones only).
    pub active: bool,
}

impl Candidate {
    fn takes_new(&self) -> bool {
        self.active && self.weight > 0
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

/// Spreads new sessions over active targets in proportion to their weights.
///
/// The schedule is the smooth weighted round-robin sequence (nginx's), computed once per table,
/// so picking is one atomic increment and no lock: `1,1,2` weights give `a a b a a b ...`
/// interleaved rather than bursty.
#[derive(Debug)]
pub struct WeightedRoundRobin {
    schedule: Box<[u16]>,
    cursor: AtomicUsize,
}

impl WeightedRoundRobin {
    /// `start` offsets the cursor so agents (and reloads) don't all begin on the same target.
    pub fn new(candidates: &[Candidate], start: usize) -> Self {
        let schedule = smooth_schedule(candidates);
        let cursor = if schedule.is_empty() {
            0
        } else {
            start % schedule.len()
        };
        Self {
            schedule: schedule.into_boxed_slice(),
            cursor: AtomicUsize::new(cursor),
        }
    }

    /// The next target for a new session, skipping those `excluded` says no to.
    pub fn next(&self, excluded: impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.schedule.len();
        if len == 0 {
            return None;
        }
        // An excluded slot is skipped by taking the next *shared* slot, not the neighbouring one:
        // the remaining targets then keep their weighted shares instead of the target after the
        // excluded one inheriting its whole share. Every target appears within `len` slots.
        (0..len)
            .map(|_| {
                let slot = self.cursor.fetch_add(1, Ordering::Relaxed);
                usize::from(self.schedule[slot % len])
            })
            .find(|&index| !excluded(index))
    }
}

fn smooth_schedule(candidates: &[Candidate]) -> Vec<u16> {
    let active: Vec<(usize, u64)> = candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.takes_new())
        .map(|(index, c)| (index, u64::from(c.weight)))
        .collect();
    if active.is_empty() {
        return Vec::new();
    }
    let divisor = active.iter().fold(0, |g, &(_, w)| gcd(g, w));
    let mut weights: Vec<(usize, u64)> = active
        .iter()
        .map(|&(index, w)| (index, w / divisor))
        .collect();
    let total: u64 = weights.iter().map(|&(_, w)| w).sum();
    if total > MAX_SCHEDULE {
        // Keep proportions approximately, and every active target at least once.
        for (_, w) in &mut weights {
            *w = (*w * MAX_SCHEDULE / total).max(1);
        }
    }
    let total: i64 = weights.iter().map(|&(_, w)| w as i64).sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (slot, &(_, w)) in weights.iter().enumerate() {
            current[slot] += w as i64;
            if current[slot] > current[best] {
                best = slot;
            }
        }
        current[best] -= total;
        schedule.push(weights[best].0 as u16);
    }
    schedule
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Picks the active target with the fewest requests in flight per unit of weight.
pub fn least_loaded(
    candidates: &[Candidate],
    in_flight: &[AtomicU32],
    start: usize,
    excluded: impl Fn(usize) -> bool,
) -> Option<usize> {
    let len = candidates.len();
    let mut best: Option<(usize, u64)> = None;
    // Rotating the start breaks ties fairly instead of always favouring the first target.
    for step in 0..len {
        let index = (start + step) % len;
        let candidate = candidates[index];
        if !candidate.takes_new() || excluded(index) {
            continue;
        }
        // Compare load/weight without division: scale by a common factor.
        let load = u64::from(in_flight[index].load(Ordering::Relaxed)) * 65_536
            / u64::from(candidate.weight);
        if best.is_none_or(|(_, best_load)| load < best_load) {
            best = Some((index, load));
        }
    }
    best.map(|(index, _)| index)
}

/// Consistent hashing: a Maglev table over active targets; exclusions walk to the next slot.
pub fn hashed(maglev: &Maglev, hash: u64, excluded: impl Fn(usize) -> bool) -> Option<usize> {
    let table = maglev.table();
    if table.is_empty() {
        return None;
    }
    let start = (hash % table.len() as u64) as usize;
    // Bounded: a failed target is skipped, the walk stops after one lap.
    (0..table.len())
        .map(|step| table[(start + step) % table.len()] as usize)
        .find(|&index| !excluded(index))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidates(weights: &[u32]) -> Vec<Candidate> {
        weights
            .iter()
            .map(|&weight| Candidate {
                weight,
                active: weight > 0,
            })
            .collect()
    }

    fn counts(rr: &WeightedRoundRobin, n: usize, len: usize) -> Vec<usize> {
        let mut counts = vec![0; len];
        for _ in 0..n {
            counts[rr.next(|_| false).expect("a target")] += 1;
        }
        counts
    }

    #[test]
    fn weights_are_honoured_exactly_over_a_cycle() {
        let rr = WeightedRoundRobin::new(&candidates(&[100, 200, 100]), 0);
        assert_eq!(counts(&rr, 400, 3), vec![100, 200, 100]);
    }

    #[test]
    fn the_sequence_is_interleaved() {
        let rr = WeightedRoundRobin::new(&candidates(&[5, 1, 1]), 0);
        let sequence: Vec<usize> = (0..7)
            .map(|_| rr.next(|_| false).expect("a target"))
            .collect();
        // nginx's smooth WRR: a a b a c a a
        assert_eq!(sequence, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn draining_targets_get_no_new_sessions() {
        let rr = WeightedRoundRobin::new(&candidates(&[100, 0, 100]), 0);
        assert_eq!(counts(&rr, 1000, 3), vec![500, 0, 500]);
    }

    #[test]
    fn a_draining_target_with_weight_gets_no_new_sessions() {
        let mut set = candidates(&[100, 100]);
        set[1].active = false;
        let rr = WeightedRoundRobin::new(&set, 0);
        assert_eq!(counts(&rr, 10, 2), vec![10, 0]);
    }

    #[test]
    fn no_active_target_means_none() {
        let rr = WeightedRoundRobin::new(&candidates(&[0, 0]), 0);
        assert_eq!(rr.next(|_| false), None);
        let rr = WeightedRoundRobin::new(&[], 3);
        assert_eq!(rr.next(|_| false), None);
    }

    #[test]
    fn exclusions_skip_to_another_target() {
        let rr = WeightedRoundRobin::new(&candidates(&[100, 100, 100]), 0);
        for _ in 0..10 {
            assert_ne!(rr.next(|index| index == 1), Some(1));
        }
        assert_eq!(rr.next(|_| true), None);
    }

    #[test]
    fn an_excluded_target_share_spreads_by_weight() {
        // b (index 1) is excluded: a and c must keep their 1:2 ratio, not c taking b's share.
        let rr = WeightedRoundRobin::new(&candidates(&[100, 300, 200]), 0);
        let mut counts = [0usize; 3];
        for _ in 0..600 {
            counts[rr.next(|index| index == 1).expect("a target")] += 1;
        }
        assert_eq!(counts[1], 0);
        let ratio = counts[2] as f64 / counts[0] as f64;
        assert!((1.8..2.2).contains(&ratio), "{counts:?}");
    }

    #[test]
    fn huge_weight_sets_keep_every_target_and_proportions() {
        let rr = WeightedRoundRobin::new(&candidates(&[65_535, 1, 30_000]), 0);
        let len = rr.schedule.len();
        assert!(len as u64 <= MAX_SCHEDULE + 3);
        let counts = counts(&rr, len, 3);
        assert!(counts.iter().all(|&c| c >= 1), "{counts:?}");
        assert!(counts[0] > 2 * counts[2] - 10 && counts[0] < 2 * counts[2] + 400);
    }

    #[test]
    fn pins_follow_the_drain_rules() {
        let set = candidates(&[100, 0]);
        assert_eq!(pinned(Some(0), &set), PinnedTo::Active(0));
        assert_eq!(pinned(Some(1), &set), PinnedTo::Draining(1));
        assert_eq!(pinned(None, &set), PinnedTo::Gone);
    }

    #[test]
    fn least_loaded_prefers_idle_and_heavy_targets() {
        let set = candidates(&[100, 100, 0]);
        let in_flight: Vec<AtomicU32> = [5, 2, 0].into_iter().map(AtomicU32::new).collect();
        assert_eq!(least_loaded(&set, &in_flight, 0, |_| false), Some(1));
        assert_eq!(least_loaded(&set, &in_flight, 0, |i| i == 1), Some(0));
        let set = candidates(&[300, 100]);
        let in_flight: Vec<AtomicU32> = [2, 1].into_iter().map(AtomicU32::new).collect();
        assert_eq!(least_loaded(&set, &in_flight, 0, |_| false), Some(0));
    }
}
