//! Self-signed certificates for TLS listeners under test: the integration tests, the demo and
//! the benchmarks (through the `tether-testcert` binary) make them the same way.
use crate::fs::write_atomically;
use anyhow::Result;
use std::path::{Path, PathBuf};

/// A self-signed certificate (its own CA) for `names`, written as `FILE.pem` and `FILE.key`;
/// its subject's common name is the first name, so a client can tell which one it got.
pub struct Site {
    /// The certificate, PEM; also what a client trusts as its CA.
    pub cert: PathBuf,
    /// The private key, PKCS#8 PEM.
    pub key: PathBuf,
}

impl Site {
    pub fn write(dir: &Path, file: &str, names: &[&str]) -> Result<Self> {
        let (cert, key) = self_signed(names)?;
        let site = Self {
            cert: dir.join(format!("{file}.pem")),
            key: dir.join(format!("{file}.key")),
        };
        // Each file replaced whole (renamed into place); a poll between the two may still see
        // a new certificate with the old key, which tether refuses until the key follows.
        write_atomically(&site.cert, &cert)?;
        write_atomically(&site.key, &key)?;
        Ok(site)
    }

    /// The `{certFile, keyFile}` entry of `proxy.tls.certificates`.
    pub fn yaml(&self) -> String {
        format!(
            "{{certFile: {}, keyFile: {}}}",
            self.cert.display(),
            self.key.display()
        )
    }

    /// Certificate then key in one PEM file, as HAProxy's `ssl crt` takes them.
    pub fn write_combined(&self, path: &Path) -> Result<()> {
        let mut text = std::fs::read_to_string(&self.cert)?;
        text.push_str(&std::fs::read_to_string(&self.key)?);
        write_atomically(path, &text)
    }
}

/// A self-signed certificate for `names` (DNS names, or IP addresses), as PEM: the
/// certificate, then its key.
pub fn self_signed(names: &[&str]) -> Result<(String, String)> {
    let first = *names
        .first()
        .ok_or_else(|| anyhow::anyhow!("a certificate needs at least one name"))?;
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, first);
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}
