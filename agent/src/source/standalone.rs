//! The standalone source: one YAML file, reloaded when it changes or on SIGHUP.
use super::file::{self, ConfigError};
use super::watch::{Trigger, Watcher};
use crate::model::Model;
use crate::runtime::{Candidate, Change, ModelSource};
use anyhow::Result;
use std::path::PathBuf;
use tracing::warn;

/// The file's models, for [`crate::runtime::run`].
pub struct FileSource {
    path: PathBuf,
    /// The file as first read: the first model, and the node's settings.
    model: Model,
    initial: Option<Vec<u8>>,
    watcher: Option<Watcher>,
}

impl FileSource {
    /// Reads and validates the file; the error names the file, line, column and field.
    pub fn open(path: PathBuf) -> Result<Self, ConfigError> {
        let text = file::read(&path)?;
        let loaded = file::parse_bytes(&text, &path.display().to_string())?;
        for warning in &loaded.warnings {
            warn!("{warning}");
        }
        Ok(Self {
            path,
            model: loaded.model,
            initial: Some(text),
            watcher: None,
        })
    }
}

impl ModelSource for FileSource {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn node(&self) -> &Model {
        &self.model
    }

    async fn first(&mut self) -> Result<Model> {
        // Watching starts from the content the first model was read from, so a change made
        // since is seen as one.
        let initial = self.initial.take().unwrap_or_default();
        self.watcher = Some(Watcher::new(self.path.clone(), initial));
        Ok(self.model.clone())
    }

    async fn next(&mut self, running: &Model) -> Change {
        let watcher = self
            .watcher
            .get_or_insert_with(|| Watcher::new(self.path.clone(), Vec::new()));
        let reload = watcher.next().await;
        let loaded = match reload.loaded {
            Ok(loaded) => loaded,
            Err(error) => return Change::Rejected(error.to_string()),
        };
        if let Some(why) = file::refuses_emptying(running, &loaded) {
            return Change::Rejected(format!("{}: {why}", self.path.display()));
        }
        for warning in &loaded.warnings {
            warn!("{warning}");
        }
        // The change-to-maps clock starts when the file was written.
        let changed_at = std::fs::metadata(&self.path)
            .and_then(|meta| meta.modified())
            .ok();
        Change::Model(Candidate {
            model: loaded.model,
            forced: reload.trigger == Trigger::Hangup,
            changed_at,
        })
    }
}
