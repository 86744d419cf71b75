//! Load balancing: which target takes a new session or flow.
//!
//! New sessions go only to active targets with weight > 0, in proportion to their weights
//! (Kong's balancer, HAProxy's drain): a draining target keeps what it has and gets nothing new.
//! The L7 proxy picks with all three algorithms here; the kernel dataplane's per-service lookup
//! rows are built by the same [`maglev`] module.
pub mod least_connections;
pub mod maglev;
pub mod round_robin;

/// What balancing needs to know about a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub weight: u32,
    /// Active (takes new sessions) or draining (keeps existing ones only).
    pub active: bool,
}

impl Candidate {
    /// Whether new sessions may go here.
    pub fn takes_new(&self) -> bool {
        self.active && self.weight > 0
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::Candidate;

    /// Targets with these weights; weight 0 stands for draining.
    pub fn candidates(weights: &[u32]) -> Vec<Candidate> {
        weights
            .iter()
            .map(|&weight| Candidate {
                weight,
                active: weight > 0,
            })
            .collect()
    }
}
