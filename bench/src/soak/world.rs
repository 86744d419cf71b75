//! What the churn did to each target, as time windows, and the verdicts that follow from them:
//! was a moved session lost, was a 5xx explained by a deliberate event.
//!
//! Windows are opened *before* the action (kill, config write) and closed only after tether
//! confirmed the change (a new config generation) or the backend listens again, so every request
//! the action could have touched overlaps its window.
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;
use tether_testkit::binaries::{sticky_config, weighted_target};

/// Seconds after a killed backend listens again during which its requests still count as
/// touched by the kill (tether's pool learns of the restart on its next use).
pub const KILL_GRACE_S: f64 = 2.0;

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Window {
    pub from: f64,
    pub to: Option<f64>,
}

impl Window {
    fn overlaps(&self, t0: f64, t1: f64, grace: f64) -> bool {
        self.from <= t1 && self.to.is_none_or(|to| to + grace >= t0)
    }

    /// The window covers all of [t0, t1] (an open window extends to now).
    fn covers(&self, t0: f64, t1: f64) -> bool {
        self.from <= t0 && self.to.is_none_or(|to| to >= t1)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub name: String,
    pub address: SocketAddr,
    pub weight: u32,
    /// In the configuration last written.
    pub present: bool,
    /// From a config write removing it until tether confirmed the one adding it back.
    pub absent: Vec<Window>,
    /// From tether confirming the removal until the config adding it back is written (the
    /// span in which no new session may land there).
    pub removed: Vec<Window>,
    /// From the kill until the restarted backend listens.
    pub killed: Vec<Window>,
    /// From tether confirming weight 0 until the config restoring it is written (the span in
    /// which no new session may land there).
    pub draining: Vec<Window>,
}

/// How a request of a session pinned to one target came out, when another target answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Move {
    /// The pinned target was (possibly) not in the configuration.
    TargetRemoved,
    /// The pinned target's backend was killed around the request.
    BackendKilled,
    /// Neither: the session was lost.
    Lost,
}

/// Whether a new session's landing place was allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Landing {
    Ok,
    /// On a target draining for the whole request.
    Draining,
    /// On a target absent from the configuration for the whole request.
    Removed,
}

pub struct World {
    start: Instant,
    targets: Mutex<Vec<Target>>,
}

impl World {
    pub fn new(start: Instant, targets: Vec<Target>) -> Self {
        Self {
            start,
            targets: Mutex::new(targets),
        }
    }

    /// Seconds since the run started.
    pub fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    pub fn snapshot(&self) -> Vec<Target> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Target>> {
        // A panicking task cannot leave the windows half-written: every update is one push or
        // one field; keep going with what is there.
        self.targets.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn update<R>(&self, index: usize, change: impl FnOnce(&mut Target, f64) -> R) -> R {
        let now = self.now();
        let mut targets = self.lock();
        change(&mut targets[index], now)
    }

    /// A session pinned to `pinned` was answered by another target during [t0, t1].
    pub fn judge_move(&self, pinned: &str, t0: f64, t1: f64) -> Move {
        let targets = self.lock();
        let Some(target) = targets.iter().find(|t| t.name == pinned) else {
            return Move::Lost;
        };
        if !target.present || target.absent.iter().any(|w| w.overlaps(t0, t1, 0.0)) {
            Move::TargetRemoved
        } else if target
            .killed
            .iter()
            .any(|w| w.overlaps(t0, t1, KILL_GRACE_S))
        {
            Move::BackendKilled
        } else {
            Move::Lost
        }
    }

    /// A request during [t0, t1] pinned to `pinned` (or new, `None`) got a 5xx: explained when
    /// a kill of its target (any target, for a new session) overlaps it.
    pub fn explains_5xx(&self, pinned: Option<&str>, t0: f64, t1: f64) -> bool {
        self.lock()
            .iter()
            .filter(|t| pinned.is_none_or(|p| p == t.name))
            .any(|t| t.killed.iter().any(|w| w.overlaps(t0, t1, KILL_GRACE_S)))
    }

    /// A tunnel to `pod` during [t0, t1] broke: was its backend killed, or the target removed?
    pub fn tunnel_break_cause(&self, pod: &str, t0: f64, t1: f64) -> Option<&'static str> {
        let targets = self.lock();
        let target = targets.iter().find(|t| t.name == pod)?;
        if target
            .killed
            .iter()
            .any(|w| w.overlaps(t0, t1, KILL_GRACE_S))
        {
            Some("backend killed")
        } else if target.absent.iter().any(|w| w.overlaps(t0, t1, 0.0)) {
            Some("target removed")
        } else {
            None
        }
    }

    /// A new session created during [t0, t1] landed on `pod`.
    pub fn judge_landing(&self, pod: &str, t0: f64, t1: f64) -> Landing {
        let targets = self.lock();
        let Some(target) = targets.iter().find(|t| t.name == pod) else {
            return Landing::Ok;
        };
        if target.draining.iter().any(|w| w.covers(t0, t1)) {
            Landing::Draining
        } else if target.removed.iter().any(|w| w.covers(t0, t1)) {
            Landing::Removed
        } else {
            Landing::Ok
        }
    }
}

/// tether's configuration for the present targets, with a comment naming the revision so that
/// an otherwise identical rewrite is still a change on disk.
pub fn config_yaml(
    proxy: SocketAddr,
    admin: SocketAddr,
    cookie: &str,
    targets: &[Target],
    revision: u64,
) -> String {
    let mut lines: Vec<String> = targets
        .iter()
        .filter(|t| t.present)
        .map(|t| weighted_target(t.address, t.weight, &t.name))
        .collect();
    // Config order should not matter to tether; vary it so reloads see a reordered list too.
    if revision % 2 == 1 {
        lines.reverse();
    }
    format!(
        "# soak revision {revision}\n{}",
        sticky_config(proxy, "", admin, "/echo", cookie, &lines)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(name: &str) -> Target {
        Target {
            name: name.into(),
            address: SocketAddr::from(([127, 0, 0, 1], 1)),
            weight: 100,
            present: true,
            absent: vec![],
            removed: vec![],
            killed: vec![],
            draining: vec![],
        }
    }

    #[test]
    fn verdicts_follow_windows() {
        let mut a = target("a");
        a.killed.push(Window {
            from: 10.0,
            to: Some(12.0),
        });
        a.absent.push(Window {
            from: 20.0,
            to: Some(25.0),
        });
        a.removed.push(Window {
            from: 21.0,
            to: Some(24.0),
        });
        a.draining.push(Window {
            from: 30.0,
            to: None,
        });
        let world = World::new(Instant::now(), vec![a, target("b")]);
        assert_eq!(world.judge_move("a", 1.0, 2.0), Move::Lost);
        assert_eq!(world.judge_move("a", 13.0, 13.5), Move::BackendKilled);
        assert_eq!(world.judge_move("a", 24.0, 26.0), Move::TargetRemoved);
        assert_eq!(world.judge_move("a", 31.0, 32.0), Move::Lost);
        assert!(world.explains_5xx(None, 11.0, 11.1));
        assert!(!world.explains_5xx(Some("b"), 11.0, 11.1));
        assert_eq!(world.judge_landing("a", 31.0, 32.0), Landing::Draining);
        assert_eq!(world.judge_landing("a", 29.9, 32.0), Landing::Ok);
        assert_eq!(world.judge_landing("a", 21.0, 22.0), Landing::Removed);
        // Written but not yet confirmed: tether may still pick it.
        assert_eq!(world.judge_landing("a", 20.0, 20.5), Landing::Ok);
    }
}
