//! The agent as the DaemonSet runs it: from the image `cargo xtask image` built (its reference
//! in `TETHER_IMAGE`), with exactly the securityContext of the rendered DaemonSet
//! (`kubectl kustomize deploy/base`), read here so the test and the manifest cannot drift:
//! capabilities dropped to the `add` list, its seccomp profile, a read-only root,
//! no-new-privileges, not privileged. The node's bpffs is bind-mounted, and the container joins
//! the node namespace of the test's topology, as `hostNetwork` would put it in the node's.
use crate::deploy_manifests::{documents, kustomize};
use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The image reference `cargo xtask test` exports after building it.
pub const IMAGE_ENV: &str = "TETHER_IMAGE";
/// The containers.conf `cargo xtask image` wrote for podman on this machine kind.
const CONF_ENV: &str = "CONTAINERS_CONF";

/// How the DaemonSet's container may run, as podman flags.
pub struct Container {
    image: String,
    /// podman flags for the securityContext.
    security: Vec<String>,
    /// What the securityContext says, for the test's log.
    pub described: String,
    /// The image reference is a tag this test made: removed when dropped.
    own_tag: bool,
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.own_tag {
            let _ = podman(engine().args(["untag", &self.image, &self.image]));
        }
    }
}

impl Container {
    /// The image and the DaemonSet's securityContext; `None` when no image was built (the
    /// test says so and does nothing: `cargo xtask test` always builds one).
    pub fn from_env(test: &str) -> Result<Option<Self>> {
        let Ok(image) = std::env::var(IMAGE_ENV) else {
            eprintln!(
                "{test}: skipped: {IMAGE_ENV} is not set (`cargo xtask test` builds the image \
                 and sets it)"
            );
            return Ok(None);
        };
        let context = daemonset_security_context()?;
        let security = podman_security(&context)?;
        Ok(Some(Self {
            image,
            described: security.join(" "),
            security,
            own_tag: false,
        }))
    }

    /// The same container under another reference of the image (`IMAGE-SUFFIX`, tagged
    /// here), as a rolling update names a new image; the tag is removed when dropped.
    pub fn tagged(&self, suffix: &str) -> Result<Self> {
        let image = format!("{}-{suffix}", self.image);
        podman_output(engine().args(["tag", &self.image, &image]))?;
        Ok(Self {
            image,
            security: self.security.clone(),
            described: self.described.clone(),
            own_tag: true,
        })
    }

    /// `podman run -d` of the agent in the namespace at `netns`: `tether ARGS`, with
    /// `config_dir` mounted read-only at /etc/tether (the ConfigMap's place).
    pub fn start(&self, name: &str, netns: &Path, config_dir: &Path, args: &[&str]) -> Result<()> {
        let mut command = self.run_command(netns);
        command
            .args(["-d", "--replace", "--name", name])
            .arg("-v")
            .arg(format!("{}:/etc/tether:ro", config_dir.display()))
            .args(["-e", "RUST_LOG=info"])
            .arg(&self.image)
            .args(args);
        podman_output(&mut command).map(|_| ())
    }

    /// `tether ARGS` in a second, short-lived container with the same privileges: stdout.
    pub fn exec(&self, netns: &Path, args: &[&str]) -> Result<Vec<u8>> {
        let mut command = self.run_command(netns);
        command.arg("--rm").arg(&self.image).args(args);
        let output = podman(&mut command)?;
        ensure!(
            output.status.success(),
            "tether {} in a container: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(output.stdout)
    }

    fn run_command(&self, netns: &Path) -> Command {
        let mut command = engine();
        command
            .arg("run")
            .arg(format!("--network=ns:{}", netns.display()))
            .args(&self.security)
            // Kubernetes puts no tmpfs on a read-only root; podman would.
            .arg("--read-only-tmpfs=false")
            .args(["-v", "/sys/fs/bpf:/sys/fs/bpf"]);
        command
    }
}

/// Whether the container `name` is running; its exit code when it stopped.
pub fn state(name: &str) -> Result<Option<i32>> {
    let text = podman_output(engine().args([
        "inspect",
        "--format",
        "{{.State.Running}} {{.State.ExitCode}}",
        name,
    ]))?;
    let mut words = text.split_whitespace();
    match (words.next(), words.next()) {
        (Some("true"), _) => Ok(None),
        (Some("false"), Some(code)) => Ok(Some(code.parse()?)),
        _ => bail!("podman inspect {name}: {text:?}"),
    }
}

/// SIGTERM (`podman stop`, 30 s grace as the DaemonSet gives), then the exit code; the
/// container's logs are returned and it is removed.
pub fn stop(name: &str) -> Result<(i32, String)> {
    podman_output(engine().args(["stop", "--time", "30", name]))?;
    let code = state(name)?.context("the container still runs after podman stop")?;
    let logs = logs(name);
    let _ = podman(engine().args(["rm", "--force", name]));
    Ok((code, logs))
}

/// The container's output (tether logs to stderr).
pub fn logs(name: &str) -> String {
    podman(engine().args(["logs", name]))
        .map(|o| {
            let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&o.stderr));
            text
        })
        .unwrap_or_default()
}

/// Removes the container whatever its state.
pub fn remove(name: &str) {
    let _ = podman(engine().args(["rm", "--force", "--time", "5", name]));
}

fn engine() -> Command {
    let mut command = Command::new("podman");
    if let Some(conf) = std::env::var_os(CONF_ENV) {
        command.env(CONF_ENV, conf);
    }
    command
}

fn podman(command: &mut Command) -> Result<std::process::Output> {
    command
        .output()
        .context("podman (cargo xtask image installs it)")
}

fn podman_output(command: &mut Command) -> Result<String> {
    let output = podman(command)?;
    ensure!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The tether container's securityContext in `kubectl kustomize deploy/base`.
fn daemonset_security_context() -> Result<Value> {
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/base");
    let rendered = documents(&kustomize(&base)?)?;
    let daemonset = rendered
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .context("no DaemonSet in deploy/base")?;
    let container = daemonset["spec"]["template"]["spec"]["containers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "tether"))
        .context("no tether container in the DaemonSet")?;
    Ok(container["securityContext"].clone())
}

/// podman flags for a securityContext; a field this does not know is an error, so a change to
/// the manifest cannot pass the test unmirrored.
fn podman_security(context: &Value) -> Result<Vec<String>> {
    let fields = context
        .as_object()
        .context("the DaemonSet's container has no securityContext")?;
    let mut flags = Vec::new();
    for (field, value) in fields {
        match field.as_str() {
            "runAsUser" => flags.push(format!("--user={}", value.as_i64().context("runAsUser")?)),
            "runAsNonRoot" => ensure!(value == false, "runAsNonRoot: true is not mirrored here"),
            "privileged" => {
                if value == true {
                    flags.push("--privileged".into());
                }
            }
            "allowPrivilegeEscalation" => {
                if value == false {
                    flags.push("--security-opt=no-new-privileges".into());
                }
            }
            "readOnlyRootFilesystem" => {
                if value == true {
                    flags.push("--read-only".into());
                }
            }
            "capabilities" => {
                for dropped in value["drop"].as_array().into_iter().flatten() {
                    flags.push(format!("--cap-drop={}", dropped.as_str().context("drop")?));
                }
                for added in value["add"].as_array().into_iter().flatten() {
                    flags.push(format!("--cap-add={}", added.as_str().context("add")?));
                }
            }
            "seccompProfile" => match value["type"].as_str() {
                Some("Unconfined") => flags.push("--security-opt=seccomp=unconfined".into()),
                Some("RuntimeDefault") => {}
                other => bail!("seccompProfile type {other:?} is not mirrored here"),
            },
            other => bail!("securityContext.{other} is not mirrored by this test"),
        }
    }
    Ok(flags)
}
