//! The churn, on a schedule, on its own thread: drain and restore a target, remove and re-add
//! one, kill a backend and restart it, rewrite the configuration, SIGHUP. Each step disturbs at
//! most one target, so new sessions always have somewhere to go.
use super::world::{config_yaml, Window, World};
use anyhow::{bail, Result};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use tether_testkit::binaries::start_echo;
use tether_testkit::fs::write_atomically;
use tether_testkit::net::config_generation as generation;
use tether_testkit::process::Proc;

/// How long tether gets to report a new configuration generation.
const CONFIRM_LIMIT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Serialize)]
pub struct Event {
    /// Seconds since the start, when the action began.
    pub t: f64,
    pub action: &'static str,
    pub target: Option<String>,
    /// Seconds until tether reported the new generation (config changes and SIGHUP), or the
    /// backend listened again (restart).
    pub took_s: Option<f64>,
    pub problem: Option<String>,
}

#[derive(Clone, Copy)]
enum Step {
    Drain,
    Undrain,
    Remove,
    ReAdd,
    Kill,
    Restart,
    Rewrite,
    Sighup,
}

const PLAN: [Step; 8] = [
    Step::Drain,
    Step::Undrain,
    Step::Remove,
    Step::ReAdd,
    Step::Kill,
    Step::Restart,
    Step::Rewrite,
    Step::Sighup,
];

pub struct Churn {
    pub world: Arc<World>,
    pub config: PathBuf,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    /// The directory of `tether-echo`.
    pub bin: PathBuf,
    pub scratch: PathBuf,
    /// One per target; `None` while killed.
    pub backends: Vec<Option<Proc>>,
    pub tether_pid: u32,
    pub events: Arc<Mutex<Vec<Event>>>,
    pub revision: u64,
}

impl Churn {
    /// Runs the plan every `interval` until `deadline` (or `stop`), puts every target back as
    /// it started, and sends the outcome on `done`. The backends then keep running until
    /// `release` (or 5 minutes): the kernel ends a child started with PR_SET_PDEATHSIG when the
    /// *thread* that started it exits, so this thread must outlive the backends it restarted.
    pub fn run(
        mut self,
        interval: Duration,
        deadline: Instant,
        stop: &AtomicBool,
        done: mpsc::Sender<Result<()>>,
        release: mpsc::Receiver<()>,
    ) {
        let result = self.schedule(interval, deadline, stop);
        let restored = self.restore();
        let _ = done.send(result.and(restored));
        let _ = release.recv_timeout(Duration::from_secs(300));
        for backend in self.backends.iter_mut().flatten() {
            backend.stop();
        }
    }

    fn schedule(&mut self, interval: Duration, deadline: Instant, stop: &AtomicBool) -> Result<()> {
        let n = self.backends.len();
        let max_steps = 100_000usize;
        let mut next = Instant::now() + interval;
        for step_index in 0..max_steps {
            while Instant::now() < next {
                if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if Instant::now() + Duration::from_millis(500) >= deadline {
                return Ok(());
            }
            let cycle = step_index / PLAN.len();
            let step = PLAN[step_index % PLAN.len()];
            let target = match step {
                Step::Drain | Step::Undrain => cycle % n,
                Step::Remove | Step::ReAdd => (cycle + 1) % n,
                _ => (cycle + 2) % n,
            };
            self.step(step, target)?;
            next += interval;
        }
        Ok(())
    }

    fn step(&mut self, step: Step, i: usize) -> Result<()> {
        match step {
            Step::Drain => {
                self.world.update(i, |t, _| t.weight = 0);
                let (event, confirmed) = self.apply("drain", Some(i))?;
                if confirmed {
                    self.world.update(i, |t, now| {
                        t.draining.push(Window {
                            from: now,
                            to: None,
                        })
                    });
                }
                self.log(event);
            }
            Step::Undrain => {
                self.world.update(i, |t, now| {
                    close(&mut t.draining, now);
                    t.weight = 100;
                });
                let (event, _) = self.apply("undrain", Some(i))?;
                self.log(event);
            }
            Step::Remove => {
                self.world.update(i, |t, now| {
                    t.absent.push(Window {
                        from: now,
                        to: None,
                    });
                    t.present = false;
                });
                let (event, confirmed) = self.apply("remove", Some(i))?;
                if confirmed {
                    self.world.update(i, |t, now| {
                        t.removed.push(Window {
                            from: now,
                            to: None,
                        })
                    });
                }
                self.log(event);
            }
            Step::ReAdd => {
                self.world.update(i, |t, now| {
                    close(&mut t.removed, now);
                    t.present = true;
                });
                let (event, _) = self.apply("re-add", Some(i))?;
                // Closed only now: until tether confirmed, requests may still see it absent.
                self.world.update(i, |t, now| close(&mut t.absent, now));
                self.log(event);
            }
            Step::Kill => self.kill(i),
            Step::Restart => self.restart(i)?,
            Step::Rewrite => {
                let (event, _) = self.apply("rewrite", None)?;
                self.log(event);
            }
            Step::Sighup => {
                let t = self.world.now();
                let before = generation(self.admin)?;
                // SAFETY: kill(2) on tether's pid, our own child, not reaped while it runs.
                unsafe {
                    libc::kill(self.tether_pid as libc::pid_t, libc::SIGHUP);
                }
                let problem = wait_generation(self.admin, before).err();
                self.log(Event {
                    t,
                    action: "sighup",
                    target: None,
                    took_s: problem.is_none().then(|| self.world.now() - t),
                    problem: problem.map(|e| format!("{e:#}")),
                });
            }
        }
        Ok(())
    }

    fn kill(&mut self, i: usize) {
        let t = self.world.now();
        // The window opens before the kill: every request the kill can touch overlaps it.
        self.world.update(i, |target, now| {
            target.killed.push(Window {
                from: now,
                to: None,
            })
        });
        if let Some(mut backend) = self.backends[i].take() {
            // SAFETY: kill(2) on our own child's pid; `stop` then reaps it.
            unsafe {
                libc::kill(backend.pid() as libc::pid_t, libc::SIGKILL);
            }
            backend.stop();
        }
        let name = self.world.snapshot()[i].name.clone();
        self.log(Event {
            t,
            action: "kill",
            target: Some(name),
            took_s: None,
            problem: None,
        });
    }

    fn restart(&mut self, i: usize) -> Result<()> {
        if self.backends[i].is_some() {
            return Ok(());
        }
        let t = self.world.now();
        let target = self.world.snapshot()[i].clone();
        let backend = start_echo(&self.bin, &self.scratch, &target.name, target.address)?;
        self.backends[i] = Some(backend);
        self.world
            .update(i, |target, now| close(&mut target.killed, now));
        self.log(Event {
            t,
            action: "restart",
            target: Some(target.name),
            took_s: Some(self.world.now() - t),
            problem: None,
        });
        Ok(())
    }

    /// Back to every target present, weight 100, backend running.
    fn restore(&mut self) -> Result<()> {
        for i in 0..self.backends.len() {
            self.restart(i)?;
        }
        let targets = self.world.snapshot();
        if targets.iter().any(|t| !t.present || t.weight != 100) {
            for i in 0..targets.len() {
                self.world.update(i, |t, now| {
                    t.present = true;
                    t.weight = 100;
                    close(&mut t.draining, now);
                    close(&mut t.removed, now);
                });
            }
            let (event, _) = self.apply("restore", None)?;
            for i in 0..targets.len() {
                self.world.update(i, |t, now| close(&mut t.absent, now));
            }
            self.log(event);
        }
        Ok(())
    }

    /// Writes the configuration for the world's targets and waits for tether to apply it.
    fn apply(&mut self, action: &'static str, target: Option<usize>) -> Result<(Event, bool)> {
        let t = self.world.now();
        let before = generation(self.admin)?;
        self.revision += 1;
        let targets = self.world.snapshot();
        let yaml = config_yaml(
            self.proxy,
            self.admin,
            super::traffic::COOKIE,
            &targets,
            self.revision,
        );
        write_atomically(&self.config, &yaml)?;
        let problem = wait_generation(self.admin, before).err();
        let event = Event {
            t,
            action,
            target: target.map(|i| targets[i].name.clone()),
            took_s: problem.is_none().then(|| self.world.now() - t),
            problem: problem.map(|e| format!("{e:#}")),
        };
        let confirmed = event.problem.is_none();
        Ok((event, confirmed))
    }

    fn log(&self, event: Event) {
        if let Some(problem) = &event.problem {
            eprintln!("warning: churn {}: {problem}", event.action);
        }
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event);
    }
}

fn close(windows: &mut [Window], now: f64) {
    if let Some(window) = windows.last_mut().filter(|w| w.to.is_none()) {
        window.to = Some(now);
    }
}

fn wait_generation(admin: SocketAddr, before: u64) -> Result<()> {
    let deadline = Instant::now() + CONFIRM_LIMIT;
    while generation(admin)? <= before {
        if Instant::now() >= deadline {
            bail!("tether did not report a new configuration generation within {CONFIRM_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Ok(())
}
