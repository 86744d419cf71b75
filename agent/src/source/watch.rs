//! Reloads the configuration file on SIGHUP and whenever its content changes.
//!
//! The file is polled (content, not mtime) rather than watched with inotify: that survives editors
//! that replace the file and Kubernetes ConfigMap mounts that swap a symlink.
//!
//! A change is acted on only once the content has stayed the same for [`SETTLE`]: a writer that
//! truncates and rewrites the file in place is seen halfway by a poll, and a prefix of a valid
//! file is often valid itself. Writers should still write a temporary file and rename it into
//! place, which is atomic.
use super::file::{self, ConfigError, Loaded};
use std::path::PathBuf;
use std::time::Duration;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing::{error, info};

// Reading a small file ten times a second costs nothing measurable and bounds how long a
// change waits to be noticed.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long a changed file must stay unchanged before it is read as the new configuration.
pub const SETTLE: Duration = Duration::from_millis(500);

/// What set off a reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    FileChange,
    Hangup,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::FileChange => "file change",
            Trigger::Hangup => "SIGHUP",
        }
    }
}

/// A reload: the file's content, read once it settled, and why it was read.
#[derive(Debug)]
pub struct Reload {
    pub loaded: Result<Loaded, ConfigError>,
    pub trigger: Trigger,
}

/// Watches one configuration file: [`Watcher::next`] yields every settled change, and every
/// SIGHUP (changed or not).
pub struct Watcher {
    path: PathBuf,
    /// How the file is read: a standalone configuration, or the node-local file of
    /// `--kubernetes`.
    parse: fn(&[u8], &str) -> Result<file::Loaded, file::ConfigError>,
    seen: Vec<u8>,
    hangup: Option<Signal>,
    ticker: tokio::time::Interval,
}

impl Watcher {
    /// Starts watching `path`, whose content is now `initial`. Needs a tokio runtime.
    pub fn new(path: PathBuf, initial: Vec<u8>) -> Self {
        Self::parsing(path, initial, file::parse_bytes)
    }

    /// [`Watcher::new`] for the node-local file of `--kubernetes`.
    pub fn node(path: PathBuf, initial: Vec<u8>) -> Self {
        Self::parsing(path, initial, file::parse_node_bytes)
    }

    fn parsing(
        path: PathBuf,
        initial: Vec<u8>,
        parse: fn(&[u8], &str) -> Result<file::Loaded, file::ConfigError>,
    ) -> Self {
        let hangup = match signal(SignalKind::hangup()) {
            Ok(hangup) => Some(hangup),
            Err(error) => {
                error!(%error, "cannot listen for SIGHUP; reloading on file changes only");
                None
            }
        };
        let mut ticker = tokio::time::interval(POLL_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            path,
            parse,
            seen: initial,
            hangup,
            ticker,
        }
    }

    /// The next reload; pending until the file changed and settled, or SIGHUP came.
    pub async fn next(&mut self) -> Reload {
        let path = &self.path;
        loop {
            let forced = tokio::select! {
                _ = self.ticker.tick() => false,
                Some(()) = async {
                    match self.hangup.as_mut() {
                        Some(hangup) => hangup.recv().await,
                        None => std::future::pending().await,
                    }
                } => true,
            };
            let content = match tokio::fs::read(path).await {
                Ok(content) => content,
                Err(error) => {
                    // A file being replaced can vanish for a moment; only a forced reload
                    // reports it.
                    if forced {
                        error!(path = %path.display(), %error, "reload on SIGHUP: cannot read the configuration; keeping the running one");
                    }
                    continue;
                }
            };
            if !forced && content == self.seen {
                continue;
            }
            let Some(content) = settled(path, content).await else {
                continue;
            };
            if !forced && content == self.seen {
                continue;
            }
            let trigger = if forced {
                Trigger::Hangup
            } else {
                Trigger::FileChange
            };
            info!(path = %path.display(), trigger = trigger.as_str(), "reloading configuration");
            let loaded = (self.parse)(&content, &path.display().to_string());
            self.seen = content;
            return Reload { loaded, trigger };
        }
    }
}

/// Reads the file again every poll until it has not changed for [`SETTLE`]; `None` if it
/// vanished meanwhile (the next poll looks again).
async fn settled(path: &PathBuf, mut content: Vec<u8>) -> Option<Vec<u8>> {
    let mut unchanged_since = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(POLL_INTERVAL).await;
        let now = tokio::fs::read(path).await.ok()?;
        if now != content {
            content = now;
            unchanged_since = tokio::time::Instant::now();
        } else if unchanged_since.elapsed() >= SETTLE {
            return Some(content);
        }
    }
}
