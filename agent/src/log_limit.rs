//! Rate-limited log lines: what a hostile client can trigger per request must not become one
//! log line per request. The counters behind each line keep the full count.
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Lets one caller a second through, across threads, with no lock.
pub struct OncePerSecond {
    last_second: AtomicU64,
}

impl OncePerSecond {
    pub const fn new() -> Self {
        Self {
            last_second: AtomicU64::new(0),
        }
    }

    /// True for the first call in each wall-clock second.
    pub fn allow(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        let last = self.last_second.load(Ordering::Relaxed);
        now > last
            && self
                .last_second
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

impl Default for OncePerSecond {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_call_a_second_passes() {
        let limit = OncePerSecond::new();
        let passed = (0..1000).filter(|_| limit.allow()).count();
        // 1000 calls take far less than two seconds.
        assert!((1..=2).contains(&passed), "{passed}");
    }
}
