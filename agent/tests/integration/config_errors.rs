//! Start-up with an invalid configuration: `tether run` exits non-zero with a message naming the
//! file, the line and the field; `tether check` says the same.
use anyhow::{Context, Result};
use std::ffi::OsStr;
use std::time::Duration;
use tether_testkit::agent::{run_to_exit, Exited, TempDir};

use crate::fixtures::TETHER;
const LIMIT: Duration = Duration::from_secs(20);

const VALID: &str = "\
proxy:
  listen: 127.0.0.1:0
routes:
  - match: {pathPrefix: /}
    service: echo
services:
  echo:
    policy:
      algorithm: sticky-sessions
      hashOn:
        input: none
      stickySessions:
        cookie: session-id
    targets:
      - address: 127.0.0.1:9
        weight: 100
";

/// Writes `yaml`, runs `tether COMMAND --config FILE`, and returns how it ended.
fn tether(dir: &TempDir, command: &str, yaml: &str) -> Result<(Exited, String)> {
    let path = dir.path().join(format!("{command}.yaml"));
    std::fs::write(&path, yaml)?;
    let exited = run_to_exit(
        TETHER,
        &[
            OsStr::new(command),
            OsStr::new("--config"),
            path.as_os_str(),
        ],
        LIMIT,
    )?;
    Ok((exited, path.display().to_string()))
}

/// The 1-based line of the first line containing `marker`.
fn line_of(yaml: &str, marker: &str) -> usize {
    yaml.lines()
        .position(|line| line.contains(marker))
        .map(|index| index + 1)
        .unwrap_or_else(|| panic!("{marker:?} is not in the YAML"))
}

/// `tether run` and `tether check` both fail, saying `file:line:...: field: ...` and `words`.
fn rejected(yaml: &str, line: usize, field: &str, words: &[&str]) -> Result<()> {
    let dir = TempDir::new("config")?;
    for command in ["run", "check"] {
        let (exited, path) = tether(&dir, command, yaml)?;
        assert!(
            !exited.status.success(),
            "{command} accepted it: {exited:?}"
        );
        assert_eq!(exited.status.code(), Some(1), "{command}: {exited:?}");
        let message = exited
            .stderr
            .lines()
            .find(|l| l.starts_with("error: "))
            .with_context(|| format!("{command}: no error line: {exited:?}"))?;
        let expected = format!("error: {path}:{line}:");
        assert!(
            message.starts_with(&expected),
            "{command}: expected {expected}..., got {message}"
        );
        assert!(
            message.contains(&format!(": {field}: ")),
            "{command}: field {field} not named: {message}"
        );
        for word in words {
            assert!(
                message.contains(word),
                "{command}: {word:?} not in {message}"
            );
        }
        // Nothing started: no proxy line, no panic.
        assert!(!exited.stderr.contains("proxy listening"), "{exited:?}");
        assert!(!exited.stderr.contains("panicked"), "{exited:?}");
    }
    Ok(())
}

#[test]
fn a_valid_file_checks_clean() -> Result<()> {
    let dir = TempDir::new("config")?;
    let (exited, path) = tether(&dir, "check", VALID)?;
    assert!(exited.status.success(), "{exited:?}");
    assert!(
        exited
            .stdout
            .contains(&format!("{path}: valid (1 services, 1 routes)")),
        "{exited:?}"
    );
    Ok(())
}

#[test]
fn an_unknown_field_is_named_with_its_line() -> Result<()> {
    let yaml = VALID.replace("        weight: 100", "        wieght: 100");
    rejected(
        &yaml,
        line_of(&yaml, "wieght"),
        "services.echo.targets[0].wieght",
        &["unknown field `wieght`", "expected `address` or `weight`"],
    )?;
    let yaml = VALID.replace("routes:", "proxies: {}\nroutes:");
    rejected(
        &yaml,
        line_of(&yaml, "proxies"),
        "proxies",
        &["unknown field `proxies`", "`proxy`"],
    )
}

#[test]
fn a_bad_address_is_named_with_its_line() -> Result<()> {
    let yaml = VALID.replace("127.0.0.1:9\n", "backend.local:80\n");
    rejected(
        &yaml,
        line_of(&yaml, "backend.local"),
        "services.echo.targets[0].address",
        &["invalid address \"backend.local:80\"", "IP:port"],
    )?;
    let yaml = VALID.replace("listen: 127.0.0.1:0", "listen: 127.0.0.1:99999");
    rejected(
        &yaml,
        line_of(&yaml, "99999"),
        "proxy.listen",
        &["invalid address"],
    )
}

#[test]
fn sticky_sessions_with_hash_on_ip_is_named_with_its_line() -> Result<()> {
    let yaml = VALID.replace("input: none", "input: ip");
    rejected(
        &yaml,
        line_of(&yaml, "input: ip"),
        "services.echo.policy.hashOn.input",
        &["stickySessions requires hashOn.input: none"],
    )
}

#[test]
fn a_route_to_an_unknown_service_is_named_with_its_line() -> Result<()> {
    let yaml = VALID.replace("    service: echo", "    service: ecko");
    rejected(
        &yaml,
        line_of(&yaml, "service: ecko"),
        "routes[0].service",
        &["no service named \"ecko\""],
    )
}

#[test]
fn more_semantic_errors_point_at_their_field() -> Result<()> {
    let cases = [
        (
            VALID.replace("weight: 100", "weight: 70000"),
            "70000",
            "services.echo.targets[0].weight",
            "above the maximum",
        ),
        (
            VALID.replace("cookie: session-id", "cookie: \"bad cookie\""),
            "bad cookie",
            "services.echo.policy.stickySessions.cookie",
            "not a valid cookie name",
        ),
        (
            format!("{VALID}    sessionCookie:\n      sameSite: None\n"),
            "sameSite",
            "services.echo.sessionCookie.sameSite",
            "needs secure: true",
        ),
        (
            format!("{VALID}    sessionCookie:\n      idleTimeout: 10x\n"),
            "idleTimeout",
            "services.echo.sessionCookie.idleTimeout",
            "invalid duration \"10x\"",
        ),
    ];
    for (yaml, marker, field, words) in cases {
        rejected(&yaml, line_of(&yaml, marker), field, &[words])?;
    }
    Ok(())
}

/// A configuration that is valid but cannot start: the message names the setting.
#[test]
fn a_taken_port_stops_start_up_with_the_setting_named() -> Result<()> {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = taken.local_addr()?.port();
    let yaml = VALID.replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let dir = TempDir::new("config")?;
    // The listener above has no SO_REUSEPORT, so tether's socket cannot share its port.
    let (exited, _) = tether(&dir, "run", &yaml)?;
    if exited.status.success() {
        anyhow::bail!("tether ran on a taken port: {exited:?}");
    }
    assert!(
        exited.stderr.contains("proxy.listen: cannot listen on"),
        "{exited:?}"
    );
    drop(taken);
    Ok(())
}

/// A session key file too short to be a key stops start-up.
#[test]
fn a_short_session_key_stops_start_up() -> Result<()> {
    let dir = TempDir::new("config")?;
    let key = dir.path().join("key");
    std::fs::write(&key, "short\n")?;
    let yaml = format!("{VALID}sessionKey:\n  file: {}\n", key.display());
    let (exited, _) = tether(&dir, "run", &yaml)?;
    assert_eq!(exited.status.code(), Some(1), "{exited:?}");
    assert!(exited.stderr.contains("too short"), "{exited:?}");
    assert!(
        exited.stderr.contains(&key.display().to_string()),
        "{exited:?}"
    );
    Ok(())
}

/// An empty or comment-only file is no configuration: `check` and `run` both refuse it.
#[test]
fn an_empty_or_comment_only_file_is_refused() -> Result<()> {
    let dir = TempDir::new("config")?;
    for yaml in [
        "",
        "\n   \n",
        "# nothing here yet\n\n# still nothing\n",
        "---\n",
    ] {
        for command in ["check", "run"] {
            let (exited, path) = tether(&dir, command, yaml)?;
            assert_eq!(
                exited.status.code(),
                Some(1),
                "{command} {yaml:?}: {exited:?}"
            );
            assert!(
                exited
                    .stderr
                    .contains(&format!("error: {path}: the file is empty")),
                "{command} {yaml:?}: {exited:?}"
            );
        }
    }
    Ok(())
}
