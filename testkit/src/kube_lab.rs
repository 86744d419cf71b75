//! The seed how-to's cluster, for `tether run --kubernetes` tests: a [`FakeApiServer`] holding
//! the echo Service and one EndpointSlice per echo pod, the in-process echo pods themselves,
//! and the real `tether` pointed at the server through a generated kubeconfig.
use crate::agent::{Options, Tether};
use crate::cluster::{self, Endpoint, NS};
use crate::echo::EchoServer;
use crate::fake_apiserver::FakeApiServer;
use crate::fs::TempDir;
use anyhow::{bail, Result};
use serde_json::Value;
use std::time::{Duration, Instant};

/// The Secret every agent of a lab shares its cookie key through.
pub const COOKIE_SECRET: &str = "kong/tether-cookie-key";
/// The node-local file: only proxy and admin.
pub const NODE_CONFIG: &str = "proxy:\n  listen: $PROXY\nadmin:\n  listen: $ADMIN\n";
/// Bound on every wait for the agent to follow the cluster.
pub const CONVERGE: Duration = Duration::from_secs(20);

pub struct Lab {
    pub api: FakeApiServer,
    pub pods: Vec<EchoServer>,
    pub dir: TempDir,
}

impl Lab {
    /// The fake API server with `pods` echo pods (named as given), each in its own slice of
    /// the echo Service (without the policy annotation), plus `objects`.
    pub fn new(pods: &[&str], objects: Vec<Value>) -> Result<Self> {
        Self::on(FakeApiServer::start()?, pods, objects)
    }

    /// [`Lab::new`] on a given server (one serving HTTPS, say).
    pub fn on(api: FakeApiServer, pods: &[&str], objects: Vec<Value>) -> Result<Self> {
        let mut servers = Vec::new();
        for pod in pods {
            servers.push(EchoServer::start(pod)?);
        }
        api.apply(cluster::echo_service());
        for server in &servers {
            api.apply(cluster::pod_slice(&Endpoint::ready(
                server.name(),
                server.address(),
            )));
        }
        for object in objects {
            api.apply(object);
        }
        Ok(Self {
            api,
            pods: servers,
            dir: TempDir::new("kube-lab")?,
        })
    }

    pub fn pod(&self, name: &str) -> &EchoServer {
        match self.pods.iter().find(|p| p.name() == name) {
            Some(pod) => pod,
            None => panic!("no pod {name}"),
        }
    }

    pub fn pod_mut(&mut self, name: &str) -> &mut EchoServer {
        match self.pods.iter_mut().find(|p| p.name() == name) {
            Some(pod) => pod,
            None => panic!("no pod {name}"),
        }
    }

    /// Starts tether against the server with `--kubernetes`, the shared cookie Secret, and
    /// `extra` arguments.
    pub async fn tether(&self, binary: &str, extra: &[&str]) -> Result<Tether> {
        self.tether_with(binary, extra, &[], true).await
    }

    /// [`Lab::tether`] with environment variables, and the kubeconfig passed as
    /// `--kubeconfig` (`flag`) or as `KUBECONFIG` (the inferred configuration, which falls
    /// back to in-cluster in a pod).
    pub async fn tether_with(
        &self,
        binary: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        flag: bool,
    ) -> Result<Tether> {
        self.tether_on(binary, NODE_CONFIG, extra, env, flag).await
    }

    /// [`Lab::tether_with`] with the node-local file `node_config` (a TLS listener, say).
    pub async fn tether_on(
        &self,
        binary: &str,
        node_config: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        flag: bool,
    ) -> Result<Tether> {
        self.tether_as(binary, node_config, "test-node", extra, env, flag)
            .await
    }

    /// [`Lab::tether_on`] as the agent of node `node` (its name in Events and Leases).
    pub async fn tether_as(
        &self,
        binary: &str,
        node_config: &str,
        node: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        flag: bool,
    ) -> Result<Tether> {
        let kubeconfig = self.api.kubeconfig(self.dir.path())?;
        let mut args: Vec<String> = vec!["--kubernetes".into()];
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if flag {
            args.push("--kubeconfig".into());
            args.push(kubeconfig.display().to_string());
        } else {
            env.push(("KUBECONFIG".into(), kubeconfig.display().to_string()));
        }
        args.extend([
            "--cookie-secret".into(),
            COOKIE_SECRET.into(),
            "--node-name".into(),
            node.into(),
        ]);
        args.extend(extra.iter().map(|a| a.to_string()));
        Tether::start_with(
            binary,
            node_config,
            Options {
                args,
                env,
                ..Options::default()
            },
        )
        .await
    }

    /// Sets the pod's endpoint as given (its slice is replaced, as the controller updates it).
    pub fn set_endpoint(&self, endpoint: Endpoint) -> u64 {
        self.api.apply(cluster::pod_slice(&endpoint))
    }

    pub fn terminating(&self, pod: &str) -> u64 {
        let address = self.pod(pod).address();
        self.set_endpoint(Endpoint::terminating(pod, address))
    }

    pub fn ready(&self, pod: &str) -> u64 {
        let address = self.pod(pod).address();
        self.set_endpoint(Endpoint::ready(pod, address))
    }

    /// The pod is gone: its slice is deleted.
    pub fn gone(&self, pod: &str) -> bool {
        self.api.delete("EndpointSlice", NS, &format!("echo-{pod}"))
    }
}

/// Waits until `tether`'s configuration generation is above `before` (a new model from the
/// cluster was applied).
pub async fn applied_after(tether: &Tether, before: f64) -> Result<f64> {
    let started = Instant::now();
    loop {
        let now = tether.generation().await?;
        if now > before {
            return Ok(now);
        }
        if started.elapsed() > CONVERGE {
            bail!(
                "no new model applied within {CONVERGE:?} (generation {before}); logs:\n{}",
                tether.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `check` every 20 ms until it returns true, for at most [`CONVERGE`].
pub async fn eventually<F, Fut>(what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let started = Instant::now();
    loop {
        if check().await? {
            return Ok(());
        }
        if started.elapsed() > CONVERGE {
            bail!("{what}: not within {CONVERGE:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
