//! Least-connections: the active target with the fewest requests in flight, per unit of weight.
use super::Candidate;
use std::sync::atomic::{AtomicU32, Ordering};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::tests::candidates;

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
