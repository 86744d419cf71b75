//! The cookie key, shared by every agent through one Secret (`--cookie-secret NS/NAME`, key
//! `key`): read when it exists; created with 32 random bytes when it does not. Creation races
//! between agents are settled by the API server: a 409 on create means another agent was
//! first, and its key is read back. Every agent therefore signs with the same key, and a cookie
//! from one node is valid on every other.
//!
//! The Secret is watched afterwards: deleted, it is put back with the key in use (so agents
//! that start later agree with those running); changed, it is logged, and the running agent
//! keeps its key until restarted (cookies signed with either key stay valid on the agents
//! holding that key).
use super::{watch, Error};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::PostParams;
use kube::runtime::watcher;
use kube::{Api, Client};
use std::collections::BTreeMap;
use tracing::{info, warn};

/// The data key that holds the cookie key.
pub const DATA_KEY: &str = "key";

/// Where the key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The Secret existed.
    Read,
    /// This agent created it.
    Created,
    /// Another agent created it between our read and our create (409).
    LostRace,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Read => "read",
            Origin::Created => "created",
            Origin::LostRace => "read after another agent created it",
        }
    }
}

fn content(secret: &Secret, namespace: &str, name: &str) -> Result<Vec<u8>, Error> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(DATA_KEY))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(DATA_KEY))
                .map(|s| s.clone().into_bytes())
        })
        .ok_or_else(|| Error::Secret(format!("Secret {namespace}/{name} has no data.{DATA_KEY}")))
}

/// The Secret an agent creates to share `key`.
pub fn new_secret(namespace: &str, name: &str, key: &[u8]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "tether".to_string(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            DATA_KEY.to_string(),
            ByteString(key.to_vec()),
        )])),
        ..Secret::default()
    }
}

fn is_status(error: &kube::Error, code: u16) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == code)
}

/// Reads the key from the Secret, creating the Secret if it does not exist.
pub async fn load_or_create(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<(Vec<u8>, Origin), Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    match api.get(name).await {
        Ok(secret) => return Ok((content(&secret, namespace, name)?, Origin::Read)),
        Err(error) if is_status(&error, 404) => {}
        Err(error) => return Err(Error::Api(format!("get Secret {namespace}/{name}"), error)),
    }
    let mut random = [0u8; 32];
    getrandom::fill(&mut random).map_err(|e| Error::Secret(format!("no random bytes: {e}")))?;
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    match api
        .create(
            &PostParams::default(),
            &new_secret(namespace, name, hex.as_bytes()),
        )
        .await
    {
        Ok(_) => Ok((hex.into_bytes(), Origin::Created)),
        Err(error) if is_status(&error, 409) => {
            let secret = api
                .get(name)
                .await
                .map_err(|e| Error::Api(format!("get Secret {namespace}/{name} after 409"), e))?;
            Ok((content(&secret, namespace, name)?, Origin::LostRace))
        }
        Err(error) => Err(Error::Api(
            format!("create Secret {namespace}/{name}"),
            error,
        )),
    }
}

/// Watches the Secret for as long as the agent runs (see the module's documentation).
pub async fn guard(client: Client, namespace: String, name: String, in_use: Vec<u8>) {
    use futures_util::StreamExt;
    let api: Api<Secret> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watch(api.clone(), config).boxed();
    let mut listed: Option<bool> = None;
    while let Some(event) = events.next().await {
        let put_back = match event {
            Ok(watcher::Event::Init) => {
                listed = Some(false);
                false
            }
            Ok(watcher::Event::InitApply(secret)) | Ok(watcher::Event::Apply(secret)) => {
                if listed == Some(false) {
                    listed = Some(true);
                }
                if content(&secret, &namespace, &name).ok().as_deref() != Some(&in_use[..]) {
                    warn!(secret = %format!("{namespace}/{name}"), "the cookie key Secret changed: this agent keeps signing with the key it started with until it restarts");
                }
                false
            }
            // A list without the Secret: it was deleted while we were not watching.
            Ok(watcher::Event::InitDone) => listed.take() == Some(false),
            Ok(watcher::Event::Delete(_)) => true,
            Err(error) => {
                warn!(error = %crate::report::Chain(&error), secret = %format!("{namespace}/{name}"), "watching the cookie key Secret");
                false
            }
        };
        if put_back {
            match api
                .create(
                    &PostParams::default(),
                    &new_secret(&namespace, &name, &in_use),
                )
                .await
            {
                Ok(_) => {
                    info!(secret = %format!("{namespace}/{name}"), "the cookie key Secret was deleted: put back with the key in use")
                }
                Err(error) if is_status(&error, 409) => {}
                Err(error) => {
                    warn!(error = %crate::report::Chain(&error), "cannot put back the cookie key Secret")
                }
            }
        }
    }
}
