//! TLS termination (`proxy.tls`), through real TLS clients: curl, and rustls for connections
//! the test holds open. Certificates are chosen by SNI, requests arrive at targets marked
//! `X-Forwarded-Proto: https`, renewed files are served without a restart, a bad one keeps the
//! old, and garbage on the TLS port closes that connection only.
use crate::fixtures::{outcomes, pods};
use anyhow::{bail, ensure, Context, Result};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tether_testkit::agent::{TempDir, Tether};
pub use tether_testkit::certs::Site;
use tether_testkit::config::{Config, COOKIE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

const TETHER: &str = env!("CARGO_BIN_EXE_tether");

/// tether with a TLS listener serving `sites` (the first is the default) in front of pods.
pub(crate) async fn start(sites: &[&Site], pods: &[SocketAddr]) -> Result<(Tether, SocketAddr)> {
    let certificates = sites
        .iter()
        .map(|s| s.yaml())
        .collect::<Vec<_>>()
        .join(", ");
    let targets: Vec<(SocketAddr, u32)> = pods.iter().map(|pod| (*pod, 100)).collect();
    let config = Config::sticky(&targets).proxy(&format!(
        "tls: {{listen: \"127.0.0.1:0\", certificates: [{certificates}]}}"
    ));
    let tether = Tether::start(TETHER, &config.yaml()).await?;
    let address = tls_address(&tether)?;
    Ok((tether, address))
}

/// The TLS listener's address, from its `TLS listening listen=ADDRESS` log line.
pub fn tls_address(tether: &Tether) -> Result<SocketAddr> {
    let logs = tether.logs();
    let line = logs
        .lines()
        .find(|line| line.contains("TLS listening"))
        .with_context(|| format!("no `TLS listening` line:\n{logs}"))?;
    let address = line
        .split_whitespace()
        .find_map(|word| word.strip_prefix("listen="))
        .context("listen=")?;
    Ok(address.trim_matches('"').parse()?)
}

/// What curl got for `https://NAME:PORT/PATH` (NAME resolved to the listener), trusting `ca`.
pub struct Fetched {
    pub ok: bool,
    pub status: String,
    pub body: String,
    /// curl's verbose output: the certificate's subject, the TLS version, headers.
    pub trace: String,
}

pub fn curl(
    address: SocketAddr,
    name: &str,
    path: &str,
    ca: &Site,
    extra: &[&str],
) -> Result<Fetched> {
    let output = Command::new("curl")
        .args([
            "-sS",
            "-v",
            "--max-time",
            "10",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
        ])
        .arg("--cacert")
        .arg(&ca.cert)
        .arg("--resolve")
        .arg(format!("{name}:{}:127.0.0.1", address.port()))
        .args(extra)
        .arg(format!("https://{name}:{}{path}", address.port()))
        .output()
        .context("curl (apt-get install curl)")?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    Ok(Fetched {
        ok: output.status.success(),
        status: status.to_string(),
        body: body.to_string(),
        trace: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// The common name of the certificate curl was shown (its `subject: CN=...` line).
pub fn subject(fetched: &Fetched) -> Option<String> {
    fetched.trace.lines().find_map(|line| {
        let subject = line.split_once("subject:")?.1.trim();
        Some(subject.trim_start_matches("CN=").to_string())
    })
}

#[tokio::test]
async fn sni_chooses_the_certificate_and_targets_see_https() -> Result<()> {
    let dir = TempDir::new("tls-sni")?;
    let a = Site::write(dir.path(), "a", &["a.example", "*.a.example"])?;
    let b = Site::write(dir.path(), "b", &["b.example"])?;
    let [pod] = pods(["a"])?;
    let (tether, address) = start(&[&a, &b], &[pod.address()]).await?;

    // Exact name, one-label wildcard, the second certificate: each verified against its own CA.
    for (name, ca, common_name) in [
        ("a.example", &a, "a.example"),
        ("www.a.example", &a, "a.example"),
        ("b.example", &b, "b.example"),
    ] {
        let fetched = curl(address, name, "/headers", ca, &[])?;
        ensure!(
            fetched.ok && fetched.status == "200",
            "{name}: {}",
            fetched.trace
        );
        assert_eq!(subject(&fetched).as_deref(), Some(common_name), "{name}");
        assert!(
            fetched.body.contains("x-forwarded-proto: https"),
            "{name}: {}",
            fetched.body
        );
        assert!(
            fetched.trace.contains(&format!("{COOKIE}=")),
            "a session cookie over TLS"
        );
    }
    // No certificate for the name (and one label too deep for the wildcard): the first one.
    for name in ["other.test", "x.www.a.example"] {
        let fetched = curl(address, name, "/", &a, &["-k"])?;
        ensure!(fetched.ok, "{name}: {}", fetched.trace);
        assert_eq!(subject(&fetched).as_deref(), Some("a.example"), "{name}");
    }
    // The plaintext listener still says http.
    let plain = tether_testkit::http::Http::new()
        .get(&tether.url("/headers"), None)
        .await?;
    assert!(
        plain.text().contains("x-forwarded-proto: http\n"),
        "{}",
        plain.text()
    );
    Ok(())
}

#[tokio::test]
async fn only_tls_1_2_and_1_3_are_spoken() -> Result<()> {
    let dir = TempDir::new("tls-versions")?;
    let a = Site::write(dir.path(), "a", &["a.example"])?;
    let [pod] = pods(["a"])?;
    let (_tether, address) = start(&[&a], &[pod.address()]).await?;
    for (flags, version) in [
        (&["--tlsv1.2", "--tls-max", "1.2"][..], "TLSv1.2"),
        (&["--tlsv1.3"][..], "TLSv1.3"),
    ] {
        let fetched = curl(address, "a.example", "/", &a, flags)?;
        ensure!(fetched.ok, "{version}: {}", fetched.trace);
        assert!(fetched.trace.contains(version), "{}", fetched.trace);
    }
    let old = curl(
        address,
        "a.example",
        "/",
        &a,
        &["--tlsv1", "--tls-max", "1.1"],
    )?;
    assert!(!old.ok, "TLS 1.1 was accepted: {}", old.trace);
    Ok(())
}

/// A rustls client connection that trusts `ca`, to `name` on `address`.
async fn tls_connect(
    address: SocketAddr,
    name: &str,
    ca: &Site,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(&ca.cert)? {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream = TcpStream::connect(address).await?;
    let server_name = rustls::pki_types::ServerName::try_from(name.to_string())?;
    Ok(connector.connect(server_name, stream).await?)
}

/// One keep-alive request on `stream`; the status line and the pod that answered.
async fn ask<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    host: &str,
) -> Result<String> {
    stream
        .write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await?;
    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buffer = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&received);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse())
                })
                .context("content-length")??;
            if body.len() >= length {
                return Ok(head.lines().next().unwrap_or_default().to_string());
            }
        }
        ensure!(Instant::now() < deadline, "no answer: {text}");
        let read =
            tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer)).await??;
        if read == 0 {
            bail!("closed: {text}");
        }
        received.extend_from_slice(&buffer[..read]);
    }
}

#[tokio::test]
async fn garbage_or_plaintext_on_the_tls_port_closes_that_connection_only() -> Result<()> {
    let dir = TempDir::new("tls-garbage")?;
    let a = Site::write(dir.path(), "a", &["a.example"])?;
    let [pod] = pods(["a"])?;
    let (tether, address) = start(&[&a], &[pod.address()]).await?;
    let mut held = tls_connect(address, "a.example", &a).await?;
    assert_eq!(ask(&mut held, "a.example").await?, "HTTP/1.1 200 OK");

    for junk in [
        &b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n"[..],
        &b"\x16\x03\x01\x00\x05hello"[..],
        &[0xffu8; 600][..],
    ] {
        let mut stream = TcpStream::connect(address).await?;
        stream.write_all(junk).await?;
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
            .await
            .context("the connection stayed open")?;
        // Closed (perhaps after a TLS alert), never an HTTP answer.
        let _ = read;
        assert!(!answer.starts_with(b"HTTP/"), "{answer:?}");
    }
    // The held connection and new ones are unaffected.
    assert_eq!(ask(&mut held, "a.example").await?, "HTTP/1.1 200 OK");
    let fetched = curl(address, "a.example", "/", &a, &[])?;
    ensure!(fetched.ok && fetched.status == "200", "{}", fetched.trace);
    assert!(outcomes(&tether, "tls_handshake_failed").await? >= 3.0);
    Ok(())
}

#[tokio::test]
async fn renewed_certificates_are_served_without_a_restart_and_a_bad_one_keeps_the_old(
) -> Result<()> {
    let dir = TempDir::new("tls-renew")?;
    let a = Site::write(dir.path(), "a", &["a.example"])?;
    let [pod] = pods(["a"])?;
    let (tether, address) = start(&[&a], &[pod.address()]).await?;
    let pid = tether.pid();
    let mut held = tls_connect(address, "a.example", &a).await?;
    assert_eq!(ask(&mut held, "a.example").await?, "HTTP/1.1 200 OK");

    // Renewed in place (as cert-manager does): a new key, and one more name.
    let renewed = Site::write(dir.path(), "a", &["a.example", "www.a.example"])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let fetched = curl(address, "www.a.example", "/", &renewed, &[])?;
        if fetched.ok {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the renewed certificate was not served: {}",
            fetched.trace
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(tether.logs().contains("TLS certificates reloaded"));
    // The connection opened before the renewal goes on.
    assert_eq!(ask(&mut held, "a.example").await?, "HTTP/1.1 200 OK");

    // A broken key: refused with the files named; the renewed certificate stays.
    let rejections = |logs: &str| {
        logs.lines()
            .filter(|line| line.contains("certificate rejected"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let before = rejections(&tether.logs()).len();
    tether_testkit::agent::write_atomically(
        &renewed.key,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while rejections(&tether.logs()).len() == before {
        ensure!(
            Instant::now() < deadline,
            "no rejection logged:\n{}",
            tether.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let line = rejections(&tether.logs()).pop().context("the line")?;
    assert!(
        line.contains("a.key") && line.contains("private key"),
        "{line}"
    );
    let fetched = curl(address, "www.a.example", "/", &renewed, &[])?;
    ensure!(fetched.ok && fetched.status == "200", "{}", fetched.trace);
    assert_eq!(tether.pid(), pid);
    Ok(())
}
