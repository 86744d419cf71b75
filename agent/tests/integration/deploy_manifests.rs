//! deploy/ checked offline:
//!
//! - every manifest, and every overlay as `kubectl kustomize` renders it, validates against
//!   the Kubernetes schemas with kubernetes-validate (strict: unknown fields are errors), for
//!   the oldest Kubernetes tether supports (1.33) and the newest the package knows. The
//!   package is installed from PyPI into a venv under target/ the first time;
//! - kinds kubernetes-validate has no schema for: KongUpstreamPolicy is validated against
//!   tether's own CRD (its OpenAPI schema with Python's jsonschema, its CEL rules with
//!   kube-cel) and by tether's validator; HTTPRoute by tether's own types and translation
//!   (no Gateway API schema is available offline);
//! - the node-local configuration in each rendered ConfigMap is a valid `--kubernetes` file;
//! - the CRD accepts the example policies and rejects invalid ones, and agrees with tether's
//!   validator on every fixture (except what Kong allows and tether does not support, which
//!   the CRD accepts and tether reports).
use crate::fixtures::{loading_blocking, python_venv};
use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// kubernetes-validate's version, pinned so the schemas it carries do not move.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
/// The Kubernetes versions validated against: the oldest supported (k8s-openapi's v1_33),
/// and the newest the package has.
const KUBERNETES_VERSIONS: &[&str] = &["1.33.0", "1.37.0"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn deploy() -> PathBuf {
    workspace().join("deploy")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

fn run(command: &mut Command) -> Result<String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The venv with kubernetes-validate (created and filled on first use).
fn venv() -> Result<PathBuf> {
    python_venv("kubernetes-validate-venv", KUBERNETES_VALIDATE)
}

pub fn kustomize(dir: &Path) -> Result<String> {
    run(Command::new("kubectl").arg("kustomize").arg(dir))
        .with_context(|| format!("kubectl kustomize {}", dir.display()))
}

/// Every YAML document of `text`, as JSON.
pub fn documents(text: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(document)?;
        if value.is_null() {
            continue;
        }
        out.push(serde_json::to_value(value)?);
    }
    Ok(out)
}
use serde::Deserialize;

/// kubernetes-validate on `file`: Ok with the kinds it had no schema for.
fn kubernetes_validate(file: &Path) -> Result<Vec<String>> {
    let venv = venv()?;
    let mut unknown = Vec::new();
    for version in KUBERNETES_VERSIONS {
        let output = Command::new(venv.join("bin/kubernetes-validate"))
            .args(["--strict", "--quiet", "-k", version])
            .arg(file)
            .output()?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let errors: Vec<&str> = stdout
            .lines()
            .filter(|l| l.starts_with("ERROR") || l.starts_with("FATAL"))
            .collect();
        ensure!(
            output.status.success() && errors.is_empty(),
            "{} against Kubernetes {version}:\n{stdout}{}",
            file.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        for line in stdout.lines().filter(|l| l.starts_with("WARN")) {
            // "WARN FILE Couldn't find schema for kind KIND with api version ..."
            let kind = line
                .split("for kind ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or(line);
            unknown.push(kind.to_string());
        }
    }
    unknown.sort();
    unknown.dedup();
    Ok(unknown)
}

fn crd() -> Result<Value> {
    let text = std::fs::read_to_string(deploy().join("crds/kongupstreampolicies.yaml"))?;
    documents(&text)?
        .into_iter()
        .next()
        .context("the CRD document")
}

fn crd_schema() -> Result<Value> {
    Ok(crd()?["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone())
}

/// The OpenAPI part of the CRD's schema on each object, with Python's jsonschema (unknown
/// fields rejected, as `kubectl apply --validate=strict` does): None when valid.
fn openapi_verdicts(objects: &[Value]) -> Result<Vec<Option<String>>> {
    const SCRIPT: &str = r#"
import json, sys, jsonschema
request = json.load(sys.stdin)
def strict(schema):
    if isinstance(schema, dict):
        if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema.setdefault("additionalProperties", False)
        for value in list(schema.values()):
            strict(value)
    elif isinstance(schema, list):
        for value in schema:
            strict(value)
    return schema
schema = strict(request["schema"])
schema["properties"]["metadata"] = {"type": "object"}
validator = jsonschema.Draft7Validator(schema)
out = []
for obj in request["objects"]:
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.path))
    out.append(None if not errors else "; ".join("%s: %s" % (".".join(map(str, e.path)), e.message) for e in errors))
print(json.dumps(out))
"#;
    let python = venv()?.join("bin/python");
    let mut child = Command::new(python)
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let request = json!({"schema": crd_schema()?, "objects": objects});
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().context("stdin")?;
        stdin.write_all(request.to_string().as_bytes())?;
    }
    let output = child.wait_with_output()?;
    ensure!(
        output.status.success(),
        "jsonschema: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// The CRD's CEL rules on `object`, with kube-cel: None when they all hold.
fn cel_verdict(object: &Value) -> Result<Option<String>> {
    let schema = crd_schema()?;
    let compiled = kube_cel::compile_schema(&schema);
    ensure!(
        !compiled.has_errors(),
        "the CRD's CEL rules do not compile: {:?}",
        compiled.compilation_errors()
    );
    Ok(kube_cel::Validator::new()
        .validate(&schema, object, None)
        .err()
        .map(|e| e.to_string()))
}

/// Both halves of the API server's validation.
fn crd_verdicts(objects: &[Value]) -> Result<Vec<Option<String>>> {
    let openapi = openapi_verdicts(objects)?;
    objects
        .iter()
        .zip(openapi)
        .map(|(object, openapi)| Ok(openapi.or(cel_verdict(object)?)))
        .collect()
}

fn tether_verdict(object: &Value) -> Result<Option<String>> {
    let spec: tether::source::policy::PolicySpec = serde_json::from_value(object["spec"].clone())?;
    Ok(tether::source::policy::balancing(&spec)
        .err()
        .map(|e| e.to_string()))
}

fn policy(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "configuration.konghq.com/v1beta1",
        "kind": "KongUpstreamPolicy",
        "metadata": {"name": name, "namespace": "kong"},
        "spec": spec
    })
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Kong and tether take it.
    Valid,
    /// Kong's rules refuse it: the CRD and tether both must.
    Invalid,
    /// Kong takes it, tether does not act on it: the CRD accepts, tether reports.
    Unsupported,
}

fn fixtures() -> Vec<(Value, Expect)> {
    use Expect::*;
    let sticky = |extra: Value| {
        let mut spec = json!({"algorithm": "sticky-sessions", "hashOn": {"input": "none"},
                               "stickySessions": {"cookie": "session_id", "cookiePath": "/"}});
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                spec.insert(k.clone(), v.clone());
            }
        }
        spec
    };
    vec![
        (policy("how-to", sticky(json!({}))), Valid),
        (
            policy("round-robin", json!({"algorithm": "round-robin"})),
            Valid,
        ),
        (policy("empty", json!({})), Valid),
        (
            policy(
                "least",
                json!({"algorithm": "least-connections", "slots": 100}),
            ),
            Valid,
        ),
        (
            policy(
                "hash-ip",
                json!({"algorithm": "consistent-hashing", "hashOn": {"input": "ip"}}),
            ),
            Valid,
        ),
        (
            policy(
                "hash-header",
                json!({"algorithm": "consistent-hashing", "hashOn": {"header": "x-user"},
                                      "hashOnFallback": {"input": "ip"}}),
            ),
            Valid,
        ),
        (
            policy(
                "hash-cookie",
                json!({"algorithm": "consistent-hashing", "hashOn": {"cookie": "c", "cookiePath": "/app"}}),
            ),
            Valid,
        ),
        (
            policy(
                "healthchecks",
                json!({"algorithm": "round-robin", "healthchecks": {"active": {"type": "http"}}}),
            ),
            Valid,
        ),
        (
            policy("sticky-ip", sticky(json!({"hashOn": {"input": "ip"}}))),
            Invalid,
        ),
        (
            policy(
                "sticky-no-hash",
                json!({"algorithm": "sticky-sessions", "stickySessions": {"cookie": "c"}}),
            ),
            Invalid,
        ),
        (
            policy(
                "sticky-no-cookie",
                sticky(json!({"stickySessions": {"cookiePath": "/"}})),
            ),
            Invalid,
        ),
        (
            policy(
                "sticky-empty-cookie",
                sticky(json!({"stickySessions": {"cookie": ""}})),
            ),
            Invalid,
        ),
        (
            policy(
                "sticky-bad-cookie",
                sticky(json!({"stickySessions": {"cookie": "a b"}})),
            ),
            Invalid,
        ),
        (
            policy(
                "sticky-wrong-algorithm",
                sticky(json!({"algorithm": "round-robin"})),
            ),
            Invalid,
        ),
        (
            policy(
                "sticky-fallback",
                sticky(json!({"hashOnFallback": {"input": "ip"}})),
            ),
            Invalid,
        ),
        (
            policy(
                "algorithm-without-sticky",
                json!({"algorithm": "sticky-sessions", "hashOn": {"input": "none"}}),
            ),
            Invalid,
        ),
        (
            policy("unknown-algorithm", json!({"algorithm": "random"})),
            Invalid,
        ),
        (policy("slots", json!({"slots": 5})), Invalid),
        (
            policy(
                "two-sources",
                json!({"algorithm": "consistent-hashing", "hashOn": {"input": "ip", "header": "x"}}),
            ),
            Invalid,
        ),
        (
            policy("hash-nothing", json!({"algorithm": "consistent-hashing"})),
            Invalid,
        ),
        (
            policy(
                "rr-with-hash",
                json!({"algorithm": "round-robin", "hashOn": {"input": "ip"}}),
            ),
            Invalid,
        ),
        (
            policy(
                "cookie-fallback",
                json!({"algorithm": "consistent-hashing", "hashOn": {"cookie": "c"}, "hashOnFallback": {"input": "ip"}}),
            ),
            Invalid,
        ),
        (
            policy(
                "cookie-path-alone",
                json!({"algorithm": "consistent-hashing", "hashOn": {"input": "ip", "cookiePath": "/"}}),
            ),
            Invalid,
        ),
        (
            policy(
                "unknown-input",
                json!({"algorithm": "consistent-hashing", "hashOn": {"input": "moon"}}),
            ),
            Invalid,
        ),
        (
            policy(
                "unknown-field",
                sticky(json!({"stickySession": {"cookie": "typo"}})),
            ),
            Invalid,
        ),
        (
            policy("latency", json!({"algorithm": "latency"})),
            Unsupported,
        ),
        (
            policy(
                "consumer",
                json!({"algorithm": "consistent-hashing", "hashOn": {"input": "consumer"}}),
            ),
            Unsupported,
        ),
        (
            policy(
                "uri-capture",
                json!({"algorithm": "consistent-hashing", "hashOn": {"uriCapture": "id"}}),
            ),
            Unsupported,
        ),
    ]
}

#[test]
fn the_crd_accepts_valid_policies_and_rejects_invalid_ones() -> Result<()> {
    let _machine = loading_blocking();
    let fixtures = fixtures();
    let objects: Vec<Value> = fixtures.iter().map(|(o, _)| o.clone()).collect();
    let verdicts = crd_verdicts(&objects)?;
    let mut failures = Vec::new();
    for ((object, expect), crd) in fixtures.iter().zip(verdicts) {
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let tether = tether_verdict(object)?;
        let crd_ok = crd.is_none();
        let tether_ok = tether.is_none();
        let wanted = match expect {
            Expect::Valid => (true, true),
            Expect::Invalid => (false, false),
            Expect::Unsupported => (true, false),
        };
        // An unknown field is pruned by the API server (or refused with strict validation);
        // tether never sees it, so only the CRD's verdict counts there.
        let tether_counts = name != "unknown-field";
        if crd_ok != wanted.0 || (tether_counts && tether_ok != wanted.1) {
            failures.push(format!(
                "{name}: expected {expect:?}; CRD says {crd:?}; tether says {tether:?}"
            ));
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));

    // Kong's cross-field rules are CEL: the OpenAPI half alone lets these through.
    for (name, object) in objects.iter().map(|o| (o["metadata"]["name"].clone(), o)) {
        let cel_only = [
            "sticky-ip",
            "sticky-fallback",
            "rr-with-hash",
            "cookie-fallback",
            "two-sources",
        ];
        if cel_only.iter().any(|n| name == *n) {
            let openapi = openapi_verdicts(std::slice::from_ref(object))?;
            ensure!(openapi == [None], "{name}: {openapi:?}");
            let cel = cel_verdict(object)?;
            ensure!(cel.is_some(), "{name}: CEL accepted it");
        }
    }

    // The how-to's policy as shipped in deploy/examples is accepted by both.
    let example = documents(&std::fs::read_to_string(
        deploy().join("examples/kongupstreampolicy.yaml"),
    )?)?;
    let verdicts = crd_verdicts(&example)?;
    ensure!(verdicts.iter().all(Option::is_none), "{verdicts:?}");
    ensure!(tether_verdict(&example[0])?.is_none());
    Ok(())
}

/// The CRD describes the resource tether reads: same group, version, kind and plural, and
/// every spec field tether's PolicySpec knows.
#[test]
fn the_crd_matches_tether_s_types() -> Result<()> {
    let _machine = loading_blocking();
    use kube::Resource;
    use tether::source::kube::resources::KongUpstreamPolicy;
    let crd = crd()?;
    let spec = &crd["spec"];
    ensure!(spec["group"] == KongUpstreamPolicy::group(&()).as_ref());
    ensure!(spec["names"]["kind"] == KongUpstreamPolicy::kind(&()).as_ref());
    ensure!(spec["names"]["plural"] == KongUpstreamPolicy::plural(&()).as_ref());
    ensure!(spec["scope"] == "Namespaced");
    let version = &spec["versions"][0];
    ensure!(version["name"] == KongUpstreamPolicy::version(&()).as_ref());
    ensure!(version["served"] == true && version["storage"] == true);
    let full = tether::source::policy::PolicySpec {
        algorithm: Some("x".into()),
        slots: Some(10),
        hash_on: Some(Default::default()),
        hash_on_fallback: Some(Default::default()),
        healthchecks: Some(json!({})),
        sticky_sessions: Some(Default::default()),
    };
    let properties = &version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    for field in serde_json::to_value(&full)?
        .as_object()
        .context("object")?
        .keys()
    {
        ensure!(properties[field].is_object(), "the CRD lacks spec.{field}");
    }
    let hash_on = tether::source::policy::HashOnSpec {
        input: Some("x".into()),
        header: Some("x".into()),
        cookie: Some("x".into()),
        cookie_path: Some("x".into()),
        query_arg: Some("x".into()),
        uri_capture: Some("x".into()),
    };
    for field in serde_json::to_value(&hash_on)?
        .as_object()
        .context("object")?
        .keys()
    {
        ensure!(
            properties["hashOn"]["properties"][field].is_object(),
            "hashOn.{field}"
        );
        ensure!(
            properties["hashOnFallback"]["properties"][field].is_object(),
            "hashOnFallback.{field}"
        );
    }
    let rules = properties["stickySessions"]["required"].clone();
    ensure!(
        rules == json!(["cookie"]),
        "stickySessions.cookie is required: {rules}"
    );
    Ok(())
}

/// The manifests one by one, then every overlay rendered.
#[test]
fn every_manifest_and_rendered_overlay_validates() -> Result<()> {
    let _machine = loading_blocking();
    let mut files = Vec::new();
    collect(&deploy(), &mut files)?;
    files.sort();
    let mut policies = Vec::new();
    let mut checked = 0;
    for file in &files {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name == "kustomization.yaml" {
            continue;
        }
        let text = std::fs::read_to_string(file)?;
        let docs = documents(&text)?;
        if name == "tether.yaml" {
            check_node_config(&text, &file.display().to_string())?;
            continue;
        }
        let unknown = kubernetes_validate(file)?;
        for kind in &unknown {
            ensure!(
                matches!(
                    kind.as_str(),
                    "KongUpstreamPolicy" | "HTTPRoute" | "Gateway" | "GatewayClass"
                ),
                "{}: no schema for kind {kind}",
                file.display()
            );
        }
        check_custom(&docs, &mut policies)?;
        checked += 1;
    }
    ensure!(checked >= 10, "only {checked} manifests found");
    let verdicts = crd_verdicts(&policies)?;
    ensure!(verdicts.iter().all(Option::is_none), "{verdicts:?}");

    let rendered_dir = target_dir().join("deploy-rendered");
    std::fs::create_dir_all(&rendered_dir)?;
    let mut overlays = vec![
        deploy().join("base"),
        deploy().join("examples"),
        deploy().join("examples/gateway-api"),
    ];
    for entry in std::fs::read_dir(deploy().join("overlays"))? {
        overlays.push(entry?.path());
    }
    overlays.sort();
    for overlay in &overlays {
        let rendered = kustomize(overlay)?;
        let name = overlay
            .strip_prefix(deploy())
            .unwrap_or(overlay)
            .display()
            .to_string()
            .replace('/', "-");
        let file = rendered_dir.join(format!("{name}.yaml"));
        std::fs::write(&file, &rendered)?;
        let unknown = kubernetes_validate(&file)?;
        ensure!(
            unknown.iter().all(|k| matches!(
                k.as_str(),
                "KongUpstreamPolicy" | "HTTPRoute" | "Gateway" | "GatewayClass"
            )),
            "{name}: {unknown:?}"
        );
        let docs = documents(&rendered)?;
        let mut policies = Vec::new();
        check_custom(&docs, &mut policies)?;
        let verdicts = crd_verdicts(&policies)?;
        ensure!(verdicts.iter().all(Option::is_none), "{name}: {verdicts:?}");
        for doc in &docs {
            if doc["kind"] == "ConfigMap"
                && doc["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("tether"))
            {
                let config = doc["data"]["tether.yaml"].as_str().context("tether.yaml")?;
                check_node_config(config, &name)?;
            }
        }
        check_overlay(&name, &docs)?;
    }
    Ok(())
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, files)?;
        } else if path.extension().is_some_and(|e| e == "yaml") {
            files.push(path);
        }
    }
    Ok(())
}

/// The node-local file: valid for `tether run --kubernetes` (proxy, admin, dataplane only).
fn check_node_config(text: &str, origin: &str) -> Result<()> {
    let loaded = tether::source::file::parse_node(text, origin)?;
    ensure!(loaded.model.proxy.is_some(), "{origin}: no proxy section");
    ensure!(
        loaded.model.services.is_empty() && loaded.model.routes.is_empty(),
        "{origin}: services and routes come from the cluster"
    );
    Ok(())
}

/// KongUpstreamPolicies are collected for the CRD; HTTPRoutes must parse as tether reads them
/// and route somewhere.
fn check_custom(docs: &[Value], policies: &mut Vec<Value>) -> Result<()> {
    for doc in docs {
        match doc["kind"].as_str() {
            Some("KongUpstreamPolicy") => {
                ensure!(tether_verdict(doc)?.is_none(), "{doc}");
                policies.push(doc.clone());
            }
            Some("HTTPRoute") => {
                let route: tether::source::kube::resources::HttpRoute =
                    serde_json::from_value(doc.clone()).context("HTTPRoute")?;
                let mut snapshot = tether::source::kube::translate::Snapshot::default();
                let key = (
                    route.metadata.namespace.clone().unwrap_or_default(),
                    route.metadata.name.clone().unwrap_or_default(),
                );
                snapshot.http_routes.insert(key, route);
                let translated = tether::source::kube::translate::translate(
                    &snapshot,
                    &tether::source::kube::translate::Settings {
                        drain: true,
                        dialects: tether::source::kube::translate::Dialects::ALL,
                        ingress_classes: Vec::new(),
                        kernel: false,
                        node_ip: None,
                        tls: false,
                        gateway_classes: Vec::new(),
                    },
                );
                ensure!(!translated.routes.is_empty(), "{doc}");
                let unexpected: Vec<_> = translated
                    .findings
                    .iter()
                    .filter(|f| f.reason != "BackendNotFound")
                    .collect();
                ensure!(unexpected.is_empty(), "{unexpected:?}");
            }
            _ => {}
        }
    }
    Ok(())
}

/// What each overlay promises.
fn check_overlay(name: &str, docs: &[Value]) -> Result<()> {
    let find = |kind: &str| docs.iter().find(|d| d["kind"] == kind);
    if name == "examples-gateway-api" {
        // An HTTPS Gateway of tether's class, with a Secret certificateRef.
        ensure!(
            docs.iter().any(|d| d["kind"] == "GatewayClass"
                && d["spec"]["controllerName"] == "tether.dev/gateway-controller"),
            "{name}: no GatewayClass of tether's"
        );
        ensure!(
            docs.iter().any(|d| d["kind"] == "Gateway"
                && d["spec"]["listeners"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|l| l["protocol"] == "HTTPS"
                        && l["tls"]["certificateRefs"][0]["kind"] == "Secret")),
            "{name}: no HTTPS Gateway"
        );
        return Ok(());
    }
    let Some(daemonset) = find("DaemonSet") else {
        ensure!(name == "examples", "{name}: no DaemonSet");
        // HTTPS: an Ingress with spec.tls naming its Secret.
        ensure!(
            docs.iter().any(|d| d["kind"] == "Ingress"
                && d["spec"]["tls"][0]["secretName"].is_string()
                && d["spec"]["tls"][0]["hosts"][0].is_string()),
            "{name}: no TLS Ingress"
        );
        return Ok(());
    };
    let pod = &daemonset["spec"]["template"]["spec"];
    ensure!(pod["hostNetwork"] == true, "{name}: hostNetwork");
    let container = &pod["containers"][0];
    let security = &container["securityContext"];
    ensure!(security["privileged"] != true, "{name}: privileged");
    ensure!(container["livenessProbe"]["httpGet"]["path"] == "/healthz");
    ensure!(container["readinessProbe"]["httpGet"]["path"] == "/readyz");
    let env = |key: &str| {
        container["env"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["name"] == key)
            .and_then(|e| e["value"].as_str().map(str::to_string))
    };
    let added: Vec<String> = security["capabilities"]["add"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.as_str().map(str::to_string))
        .collect();
    let rules = find("ClusterRole").context("ClusterRole")?["rules"].clone();
    let resources: Vec<String> = rules
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["resources"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r.as_str().map(str::to_string))
        .collect();
    match name {
        "overlays-proxy-only" => {
            ensure!(added.is_empty(), "{name}: {added:?}");
            ensure!(security["runAsNonRoot"] == true);
        }
        _ => {
            ensure!(
                added == ["BPF", "NET_ADMIN", "PERFMON", "SYS_RESOURCE"],
                "{name}: {added:?}"
            );
            let mounts = container["volumeMounts"].to_string();
            ensure!(mounts.contains("/sys/fs/bpf"), "{name}: bpffs");
        }
    }
    // The TLS listener (certificates from Secrets): its port, and Secrets readable.
    ensure!(
        container["ports"].to_string().contains("8443"),
        "{name}: the TLS port"
    );
    ensure!(
        resources.iter().any(|r| r == "secrets"),
        "{name}: {resources:?}"
    );
    let drain = env("TETHER_ENABLE_DRAIN_SUPPORT");
    let dialects = env("TETHER_DIALECTS");
    match name {
        "overlays-drain" | "overlays-with-kong-crd" => ensure!(drain.as_deref() == Some("true")),
        "overlays-ingress-nginx" => {
            ensure!(dialects.as_deref() == Some("ingress-nginx"));
            ensure!(
                resources
                    == [
                        "services",
                        "endpointslices",
                        "ingresses",
                        "secrets",
                        "events"
                    ],
                "{resources:?}"
            );
        }
        "overlays-gateway-api" => {
            ensure!(dialects.as_deref() == Some("gateway-api") && drain.as_deref() == Some("true"));
            ensure!(
                resources
                    == [
                        "services",
                        "endpointslices",
                        "httproutes",
                        "gatewayclasses",
                        "gateways",
                        "referencegrants",
                        "httproutes/status",
                        "gatewayclasses/status",
                        "gateways/status",
                        "namespaces",
                        "secrets",
                        "events"
                    ],
                "{resources:?}"
            );
        }
        "base" => ensure!(drain.as_deref() == Some("false") && dialects.as_deref() == Some("all")),
        _ => {}
    }
    if name == "overlays-with-kong-crd" {
        ensure!(
            find("CustomResourceDefinition").is_some(),
            "{name}: the CRD"
        );
    }
    // The cookie Secret: read by name only, created in tether's namespace only.
    let role = find("Role").context("Role")?;
    ensure!(role["metadata"]["namespace"] == "tether-system");
    ensure!(role["rules"][0]["resourceNames"] == json!(["tether-cookie-key"]));
    // The status Lease: read and renewed by name, created in tether's namespace only.
    let lease_rules = role["rules"].to_string();
    ensure!(
        lease_rules.contains("leases") && lease_rules.contains("tether-status"),
        "{name}: {lease_rules}"
    );
    // Every verb on the cluster is read-only, except creating Events and patching Gateway API
    // status.
    for rule in rules.as_array().into_iter().flatten() {
        let verbs = rule["verbs"].clone();
        if rule["resources"] == json!(["events"]) {
            ensure!(verbs == json!(["create"]), "{rule}");
        } else if rule["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|r| r.as_str().is_some_and(|r| r.ends_with("/status")))
        {
            ensure!(verbs == json!(["patch"]), "{rule}");
        } else {
            ensure!(verbs == json!(["get", "list", "watch"]), "{rule}");
        }
    }
    Ok(())
}

/// What tether itself writes to the API server (a Warning Event, the cookie Secret) passes the
/// same schema validation.
#[test]
fn the_objects_tether_creates_validate() -> Result<()> {
    let _machine = loading_blocking();
    use tether::source::kube::{events, secret, translate};
    let finding = translate::Finding {
        regarding: translate::ObjectRef {
            kind: "Ingress",
            api_version: "networking.k8s.io/v1",
            namespace: "kong".into(),
            name: "nginx-test".into(),
            uid: "00000000-0000-4000-8000-000000000001".into(),
        },
        reason: "PolicyConflict",
        message: "conflicting session policies".into(),
    };
    let mut event = serde_json::to_value(events::event(
        &finding,
        &events::event_name(&finding),
        "node-1",
    ))?;
    event["apiVersion"] = json!("events.k8s.io/v1");
    event["kind"] = json!("Event");
    let mut created = serde_json::to_value(secret::new_secret(
        "tether-system",
        "tether-cookie-key",
        b"0123456789abcdef0123456789abcdef",
    ))?;
    created["apiVersion"] = json!("v1");
    created["kind"] = json!("Secret");
    let dir = target_dir().join("deploy-rendered");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("created-by-tether.yaml");
    std::fs::write(&file, format!("{}\n---\n{}\n", event, created))?;
    let unknown = kubernetes_validate(&file)?;
    ensure!(unknown.is_empty(), "{unknown:?}");
    for field in [
        "eventTime",
        "reportingController",
        "reportingInstance",
        "action",
        "reason",
        "type",
        "regarding",
    ] {
        ensure!(
            !event[field].is_null(),
            "Event.{field} is required by the API server"
        );
    }
    Ok(())
}
