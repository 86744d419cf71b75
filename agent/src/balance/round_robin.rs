//! Weighted round-robin: spreads new sessions over active targets in proportion to their
//! weights, with no lock on the request path.
use super::Candidate;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The longest weighted round-robin schedule kept; larger weight sets are scaled down to fit.
const MAX_SCHEDULE: u64 = 4096;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::tests::candidates;

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
}
