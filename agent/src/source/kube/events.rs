//! Findings (invalid policies, conflicts, unsupported fields) become Warning Events
//! (events.k8s.io/v1) on the object concerned, and log lines.
//!
//! An Event's name is derived from its content (object uid, reason, message), so every agent
//! reporting the same finding posts the same Event: the first create wins and the others get
//! 409, which counts as reported. A finding is logged when it appears (again after it went
//! away), and posted once per agent run while it lasts; a post that fails is retried with the
//! next model.
use super::translate::Finding;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};
use prometheus_client::metrics::counter::Counter;
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use tracing::{debug, warn};

/// `reportingController` of every Event tether posts.
pub const CONTROLLER: &str = "tether";
/// The longest note the API server takes.
const MAX_NOTE: usize = 1024;

pub struct Reporter {
    client: Client,
    instance: String,
    /// Findings of the last model: a new one is logged.
    current: BTreeSet<Finding>,
    /// Event names posted (or being posted) by this agent.
    posted: Arc<Mutex<HashSet<String>>>,
    events_posted: Counter,
}

impl Reporter {
    pub fn new(client: Client, instance: String, events_posted: Counter) -> Self {
        Self {
            client,
            instance,
            current: BTreeSet::new(),
            posted: Arc::default(),
            events_posted,
        }
    }

    /// Logs the findings that are new and posts an Event for each not posted yet.
    pub fn report(&mut self, findings: &BTreeSet<Finding>) {
        for finding in findings.difference(&self.current) {
            warn!(
                regarding = %finding.regarding,
                reason = finding.reason,
                "{}",
                finding.message
            );
        }
        for finding in findings {
            let name = event_name(finding);
            let fresh = self
                .posted
                .lock()
                .map(|mut posted| posted.insert(name.clone()))
                .unwrap_or(false);
            if !fresh {
                continue;
            }
            let event = event(finding, &name, &self.instance);
            let api: Api<Event> =
                Api::namespaced(self.client.clone(), &finding.regarding.namespace);
            let posted = self.posted.clone();
            let counter = self.events_posted.clone();
            tokio::spawn(async move {
                match api.create(&PostParams::default(), &event).await {
                    Ok(_) => {
                        counter.inc();
                        debug!(event = %name, "event posted");
                    }
                    Err(kube::Error::Api(status)) if status.code == 409 => {
                        debug!(event = %name, "event already posted");
                    }
                    Err(error) => {
                        debug!(event = %name, error = %crate::report::Chain(&error), "cannot post the event; retried with the next model");
                        if let Ok(mut posted) = posted.lock() {
                            posted.remove(&name);
                        }
                    }
                }
            });
        }
        self.current = findings.clone();
    }
}

/// `OBJECT.HASH`: the same finding gets the same name on every agent.
pub fn event_name(finding: &Finding) -> String {
    let mut hasher = Sha256::new();
    for part in [
        finding.regarding.uid.as_str(),
        finding.regarding.kind,
        &finding.regarding.namespace,
        &finding.regarding.name,
        finding.reason,
        &finding.message,
    ] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    let digest = hasher.finalize();
    let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let mut object: String = finding.regarding.name.chars().take(200).collect();
    if object.is_empty() {
        object.push_str("object");
    }
    format!("{object}.tether.{hash}")
}

/// The Event posted for `finding` (named `name`, from agent `instance`).
pub fn event(finding: &Finding, name: &str, instance: &str) -> Event {
    let regarding = &finding.regarding;
    let mut note = finding.message.clone();
    if note.len() > MAX_NOTE {
        let mut cut = MAX_NOTE - 3;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    Event {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(regarding.namespace.clone()),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
        reporting_controller: Some(CONTROLLER.to_string()),
        reporting_instance: Some(instance.chars().take(128).collect()),
        action: Some("Configure".into()),
        reason: Some(finding.reason.to_string()),
        type_: Some("Warning".into()),
        note: Some(note),
        regarding: Some(ObjectReference {
            kind: Some(regarding.kind.to_string()),
            api_version: Some(regarding.api_version.to_string()),
            namespace: Some(regarding.namespace.clone()),
            name: Some(regarding.name.clone()),
            uid: (!regarding.uid.is_empty()).then(|| regarding.uid.clone()),
            ..ObjectReference::default()
        }),
        ..Event::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::kube::translate::ObjectRef;

    fn finding(message: &str) -> Finding {
        Finding {
            regarding: ObjectRef {
                kind: "Service",
                api_version: "v1",
                namespace: "kong".into(),
                name: "echo".into(),
                uid: "u-1".into(),
            },
            reason: "PolicyConflict",
            message: message.into(),
        }
    }

    #[test]
    fn names_are_deterministic_and_valid() {
        let a = event_name(&finding("x"));
        assert_eq!(a, event_name(&finding("x")));
        assert_ne!(a, event_name(&finding("y")));
        assert!(a.starts_with("echo.tether."), "{a}");
        assert!(a.len() <= 253);
        let event = event(&finding(&"z".repeat(5000)), &a, "node-1");
        assert!(event.note.expect("note").len() <= MAX_NOTE);
        assert_eq!(event.type_.as_deref(), Some("Warning"));
    }
}
