//! Reloads the configuration file on SIGHUP and whenever its content changes.
//!
//! The file is polled (content, not mtime) rather than watched with inotify: that survives editors
//! that replace the file and Kubernetes ConfigMap mounts that swap a symlink.
use super::file::{self, ConfigError, Loaded};
use std::path::PathBuf;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info};

// Reading a small file ten times a second costs nothing measurable and bounds how long a
// change waits to be noticed.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Calls `apply` with every new valid configuration; invalid ones are logged and skipped, and
/// the running configuration stays.
pub async fn watch(
    path: PathBuf,
    initial: Vec<u8>,
    mut apply: impl FnMut(Result<Loaded, ConfigError>),
) {
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => Some(hangup),
        Err(error) => {
            error!(%error, "cannot listen for SIGHUP; reloading on file changes only");
            None
        }
    };
    let mut seen = initial;
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let forced = tokio::select! {
            _ = ticker.tick() => false,
            Some(()) = async {
                match hangup.as_mut() {
                    Some(hangup) => hangup.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
        };
        let content = match tokio::fs::read(&path).await {
            Ok(content) => content,
            Err(error) => {
                // A file being replaced can vanish for a moment; only a forced reload reports it.
                if forced {
                    error!(path = %path.display(), %error, "reload on SIGHUP: cannot read the configuration; keeping the running one");
                }
                continue;
            }
        };
        if !forced && content == seen {
            continue;
        }
        info!(path = %path.display(), trigger = if forced { "SIGHUP" } else { "file change" }, "reloading configuration");
        let text = String::from_utf8_lossy(&content).into_owned();
        seen = content;
        apply(file::parse(&text, &path.display().to_string()));
    }
}
