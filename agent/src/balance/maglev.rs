//! Maglev lookup tables (Eisenbud et al., NSDI 2016), weighted as Katran does.
//!
//! The one place tables are built: the L7 consistent-hashing balancer (which also looks up
//! here) and the kernel's per-service lookup rows (dataplane/plan.rs) both use it. Only targets
//! that take new flows are given slots, so a draining target is never picked for a new flow
//! (Cilium builds its table the same way). The table depends only on the targets' identities
//! and weights, so every agent builds the same one.

/// Katran's default ring size (prime).
pub const DEFAULT_SIZE: u32 = 65_537;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Maglev {
    /// Slot → index into the entries the table was built from.
    table: Box<[u32]>,
}

/// One target as Maglev sees it.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// Stable identity bytes, e.g. the target's address as text.
    pub identity: &'a [u8],
    /// 0 leaves the target out of the table.
    pub weight: u32,
}

impl Maglev {
    /// Builds a table of `size` slots (rounded up to a prime).
    pub fn build(entries: &[Entry<'_>], size: u32) -> Self {
        let size = next_prime(size.max(7)) as u64;
        let live: Vec<(usize, u64, u64, u64)> = entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.weight > 0)
            .map(|(index, e)| {
                let h = stable_hash(e.identity);
                let offset = mix(h ^ 0x6d61_676c_6576_3031) % size;
                let skip = mix(h ^ 0x736b_6970_7374_6570) % (size - 1) + 1;
                (index, offset, skip, u64::from(e.weight))
            })
            .collect();
        if live.is_empty() {
            return Self {
                table: Box::new([]),
            };
        }
        let max_weight = live.iter().map(|l| l.3).max().unwrap_or(1);
        let mut table = vec![u32::MAX; size as usize];
        let mut next = vec![0u64; live.len()];
        let mut credit = vec![0u64; live.len()];
        let mut filled = 0u64;
        // Each round every target earns credit in proportion to its weight; the heaviest fills
        // one slot per round, lighter ones proportionally fewer.
        'fill: loop {
            for (slot, &(index, offset, skip, weight)) in live.iter().enumerate() {
                credit[slot] += weight;
                while credit[slot] >= max_weight {
                    credit[slot] -= max_weight;
                    let mut candidate = (offset + next[slot] * skip) % size;
                    while table[candidate as usize] != u32::MAX {
                        next[slot] += 1;
                        candidate = (offset + next[slot] * skip) % size;
                    }
                    table[candidate as usize] = index as u32;
                    next[slot] += 1;
                    filled += 1;
                    if filled == size {
                        break 'fill;
                    }
                }
            }
        }
        Self {
            table: table.into_boxed_slice(),
        }
    }

    pub fn table(&self) -> &[u32] {
        &self.table
    }

    /// The target for `hash`; an excluded target's slot walks on to the next slot's.
    pub fn pick(&self, hash: u64, excluded: impl Fn(usize) -> bool) -> Option<usize> {
        let table = self.table();
        if table.is_empty() {
            return None;
        }
        let start = (hash % table.len() as u64) as usize;
        // Bounded: a failed target is skipped, the walk stops after one lap.
        (0..table.len())
            .map(|step| table[(start + step) % table.len()] as usize)
            .find(|&index| !excluded(index))
    }
}

/// FNV-1a 64, then mixed: stable across processes, versions and machines (unlike std's hasher).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(hash)
}

/// splitmix64's finaliser.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn next_prime(mut n: u32) -> u32 {
    while !is_prime(n) {
        n += 1;
    }
    n
}

fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let n = u64::from(n);
    (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.1.{i}:8080")).collect()
    }

    fn build(names: &[String], weights: &[u32], size: u32) -> Maglev {
        let entries: Vec<Entry> = names
            .iter()
            .zip(weights)
            .map(|(name, &weight)| Entry {
                identity: name.as_bytes(),
                weight,
            })
            .collect();
        Maglev::build(&entries, size)
    }

    fn shares(maglev: &Maglev, n: usize) -> Vec<usize> {
        let mut counts = vec![0; n];
        for &slot in maglev.table() {
            counts[slot as usize] += 1;
        }
        counts
    }

    #[test]
    fn equal_weights_spread_evenly() {
        let names = names(3);
        let maglev = build(&names, &[1, 1, 1], DEFAULT_SIZE);
        assert_eq!(maglev.table().len(), 65_537);
        for share in shares(&maglev, 3) {
            assert!((21_800..=21_900).contains(&share), "{share}");
        }
    }

    #[test]
    fn weights_are_honoured_and_zero_weight_gets_nothing() {
        let names = names(3);
        let maglev = build(&names, &[200, 100, 0], 10_007);
        let shares = shares(&maglev, 3);
        assert_eq!(shares[2], 0);
        let ratio = shares[0] as f64 / shares[1] as f64;
        assert!((1.9..2.1).contains(&ratio), "{shares:?}");
    }

    #[test]
    fn removing_a_target_moves_only_its_slots_mostly() {
        let names = names(5);
        let before = build(&names, &[1; 5], DEFAULT_SIZE);
        let after = build(&names, &[1, 1, 0, 1, 1], DEFAULT_SIZE);
        let moved = before
            .table()
            .iter()
            .zip(after.table())
            .filter(|(b, a)| **b != 2 && b != a)
            .count();
        // Maglev's promise: little disruption beyond the removed target's own share.
        assert!(moved < 65_537 / 20, "{moved}");
    }

    #[test]
    fn the_table_is_deterministic() {
        let names = names(4);
        assert_eq!(build(&names, &[1; 4], 1009), build(&names, &[1; 4], 1009));
    }

    #[test]
    fn no_live_target_gives_an_empty_table() {
        let names = names(2);
        assert!(build(&names, &[0, 0], 1009).table().is_empty());
    }
}
