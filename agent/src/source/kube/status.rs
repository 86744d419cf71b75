//! Writing Gateway API status: what to write is planned purely from the translated
//! [`Statuses`] and the objects as last seen ([`plan`]); one agent writes it, the holder of a
//! coordination.k8s.io Lease ([`run`]), not every node.
//!
//! - Conditions keep their `lastTransitionTime` while their status stays, and take the time
//!   of writing when it changes.
//! - An HTTPRoute's `status.parents` entries of other controllers are kept; tether's own
//!   entries (controllerName [`CONTROLLER`]) are replaced, and removed when the route no
//!   longer names one of tether's Gateways.
//! - Every write carries the object's resourceVersion: a stale one is refused (409) and the
//!   next plan, made from the object as it now is, writes again.
use super::gateways::{Condition, Statuses, CONTROLLER};
use super::resources::{Gateway, GatewayClass, HttpRoute};
use super::translate::Snapshot;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// How long a Lease holds without renewal.
pub const LEASE_SECONDS: i32 = 15;
/// How often the writer renews (or tries to take) the Lease.
pub const RENEW: Duration = Duration::from_secs(2);

/// Which object a write is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    GatewayClass,
    Gateway,
    HttpRoute,
}

/// One status write: a merge patch of `/status` carrying the resourceVersion it was made from.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    pub target: Target,
    pub namespace: String,
    pub name: String,
    pub resource_version: String,
    pub status: Value,
}

impl Write {
    pub fn patch(&self) -> Value {
        json!({
            "metadata": {"resourceVersion": self.resource_version},
            "status": self.status,
        })
    }
}

/// `now` as the API writes times.
pub fn now() -> String {
    Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The writes that bring the objects in `snapshot` to `statuses`; `now` stamps conditions whose
/// status changes.
pub fn plan(statuses: &Statuses, snapshot: &Snapshot, now: &str) -> Vec<Write> {
    let mut writes = Vec::new();
    for (name, conditions) in &statuses.classes {
        let Some(class) = snapshot.gateway_classes.get(&(String::new(), name.clone())) else {
            continue;
        };
        let current = class.status.clone().unwrap_or(Value::Null);
        let status = json!({"conditions": merge(conditions, &current["conditions"], now)});
        push(
            &mut writes,
            Target::GatewayClass,
            &class_meta(class),
            &current,
            status,
        );
    }
    for (key, desired) in &statuses.gateways {
        let Some(gateway) = snapshot.gateways.get(key) else {
            continue;
        };
        let current = gateway.status.clone().unwrap_or(Value::Null);
        let listeners: Vec<Value> = desired
            .listeners
            .iter()
            .map(|listener| {
                let before = current["listeners"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|l| l["name"] == listener.name.as_str())
                    .map(|l| l["conditions"].clone())
                    .unwrap_or(Value::Null);
                json!({
                    "name": listener.name,
                    "supportedKinds": listener.supported_kinds,
                    "attachedRoutes": listener.attached_routes,
                    "conditions": merge(&listener.conditions, &before, now),
                })
            })
            .collect();
        let mut status = json!({
            "conditions": merge(&desired.conditions, &current["conditions"], now),
            "listeners": listeners,
        });
        if let Some(addresses) = current.get("addresses") {
            status["addresses"] = addresses.clone();
        }
        push(
            &mut writes,
            Target::Gateway,
            &gateway.metadata,
            &current,
            status,
        );
    }
    for (key, route) in &snapshot.http_routes {
        let current = route.status.clone().unwrap_or(Value::Null);
        let parents: Vec<Value> = current["parents"].as_array().cloned().unwrap_or_default();
        let ours = |p: &&Value| p["controllerName"] == CONTROLLER;
        let desired = statuses.routes.get(key);
        if desired.is_none() && !parents.iter().any(|p| ours(&p)) {
            continue;
        }
        let mut next: Vec<Value> = parents.iter().filter(|p| !ours(p)).cloned().collect();
        for parent in desired.into_iter().flatten() {
            let parent_ref = serde_json::to_value(&parent.parent_ref).unwrap_or(Value::Null);
            let before = parents
                .iter()
                .filter(ours)
                .find(|p| p["parentRef"] == parent_ref)
                .map(|p| p["conditions"].clone())
                .unwrap_or(Value::Null);
            next.push(json!({
                "parentRef": parent_ref,
                "controllerName": CONTROLLER,
                "conditions": merge(&parent.conditions, &before, now),
            }));
        }
        let status = json!({"parents": next});
        push(
            &mut writes,
            Target::HttpRoute,
            &route.metadata,
            &current,
            status,
        );
    }
    writes
}

fn class_meta(class: &GatewayClass) -> ObjectMeta {
    class.metadata.clone()
}

/// Adds a write unless `status` is what `current` already says (times aside).
fn push(
    writes: &mut Vec<Write>,
    target: Target,
    meta: &ObjectMeta,
    current: &Value,
    status: Value,
) {
    let mut merged = current.clone();
    if !merged.is_object() {
        merged = json!({});
    }
    if let (Some(merged), Some(status)) = (merged.as_object_mut(), status.as_object()) {
        for (key, value) in status {
            merged.insert(key.clone(), value.clone());
        }
    }
    if without_times(&merged) == without_times(current) {
        return;
    }
    writes.push(Write {
        target,
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        resource_version: meta.resource_version.clone().unwrap_or_default(),
        status,
    });
}

/// The conditions as the API has them: a condition whose status did not change keeps its
/// lastTransitionTime from `before`.
fn merge(desired: &[Condition], before: &Value, now: &str) -> Value {
    Value::Array(
        desired
            .iter()
            .map(|condition| {
                let previous = before
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|c| c["type"] == condition.type_);
                let status = if condition.status { "True" } else { "False" };
                let at = previous
                    .filter(|c| c["status"] == status)
                    .and_then(|c| c["lastTransitionTime"].as_str())
                    .unwrap_or(now);
                condition.json(at)
            })
            .collect(),
    )
}

fn without_times(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(key, _)| key.as_str() != "lastTransitionTime")
                .map(|(key, value)| (key.clone(), without_times(value)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_times).collect()),
        other => other.clone(),
    }
}

/// The Lease that says which agent writes status.
pub struct Election {
    api: Api<Lease>,
    name: String,
    identity: String,
    leading: bool,
}

impl Election {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            leading: false,
        }
    }

    /// Takes or renews the Lease; whether this agent holds it.
    pub async fn hold(&mut self) -> bool {
        let leading = match self.try_hold().await {
            Ok(leading) => leading,
            Err(kube::Error::Api(status)) if status.code == 409 => false,
            Err(error) => {
                warn!(error = %crate::report::Chain(&error), "cannot read or write the status Lease");
                false
            }
        };
        if leading != self.leading {
            info!(lease = %self.name, leading, "status writer");
            self.leading = leading;
        }
        leading
    }

    /// Gives the Lease up if this agent holds it (on a graceful stop), so another takes it
    /// within a second instead of waiting for it to expire.
    pub async fn release(client: Client, namespace: &str, name: &str, identity: &str) {
        let api: Api<Lease> = Api::namespaced(client, namespace);
        let Ok(Some(mut lease)) = api.get_opt(name).await else {
            return;
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(identity) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        lease.spec = Some(spec);
        match api.replace(name, &PostParams::default(), &lease).await {
            Ok(_) => info!(lease = %name, "status Lease released"),
            Err(error) => {
                warn!(error = %crate::report::Chain(&error), "cannot release the status Lease")
            }
        }
    }

    async fn try_hold(&self) -> Result<bool, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(LEASE_SECONDS),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            self.api.create(&PostParams::default(), &lease).await?;
            return Ok(true);
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        let mine = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let duration = i64::from(spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS));
        let expired = spec
            .renew_time
            .as_ref()
            .is_none_or(|renewed| Timestamp::now().as_second() - renewed.0.as_second() > duration);
        if !mine && !expired {
            return Ok(false);
        }
        if !mine {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.holder_identity = Some(self.identity.clone());
        }
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(LEASE_SECONDS);
        lease.spec = Some(spec);
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await?;
        Ok(true)
    }
}

/// Writes the latest plan while this agent holds the Lease; a write already made from the same
/// resourceVersion is not made again.
pub async fn run(client: Client, mut election: Election, mut plans: watch::Receiver<Vec<Write>>) {
    let mut done: HashSet<(Target, String, String, String)> = HashSet::new();
    let mut tick = tokio::time::interval(RENEW);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = plans.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
        }
        if !election.hold().await {
            continue;
        }
        let writes = plans.borrow_and_update().clone();
        // Only writes still planned can be repeated: the others need no memory.
        done.retain(|(target, namespace, name, version)| {
            writes.iter().any(|w| {
                w.target == *target
                    && w.namespace == *namespace
                    && w.name == *name
                    && w.resource_version == *version
            })
        });
        for write in writes {
            let id = (
                write.target,
                write.namespace.clone(),
                write.name.clone(),
                write.resource_version.clone(),
            );
            if done.contains(&id) {
                continue;
            }
            let patch = Patch::Merge(write.patch());
            let params = PatchParams::default();
            let result = match write.target {
                Target::GatewayClass => Api::<GatewayClass>::all(client.clone())
                    .patch_status(&write.name, &params, &patch)
                    .await
                    .map(|_| ()),
                Target::Gateway => Api::<Gateway>::namespaced(client.clone(), &write.namespace)
                    .patch_status(&write.name, &params, &patch)
                    .await
                    .map(|_| ()),
                Target::HttpRoute => Api::<HttpRoute>::namespaced(client.clone(), &write.namespace)
                    .patch_status(&write.name, &params, &patch)
                    .await
                    .map(|_| ()),
            };
            match result {
                Ok(()) => {
                    debug!(object = %format!("{:?} {}/{}", write.target, write.namespace, write.name), "status written");
                    done.insert(id);
                }
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    // Changed meanwhile: the next plan is made from the new version.
                }
                Err(error) => {
                    warn!(object = %format!("{:?} {}/{}", write.target, write.namespace, write.name), error = %crate::report::Chain(&error), "cannot write status; retrying");
                }
            }
        }
    }
}
