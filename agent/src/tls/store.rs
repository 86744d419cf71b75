//! The certificates being served. Handshakes read the current [`CertificateSet`] without a
//! lock; a reload builds a new one and swaps it in, so open connections and handshakes in
//! flight are not disturbed.
use super::certificate::{Certificate, CertificateError};
use super::select::CertificateSet;
use crate::model::CertificateFiles;
use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::Arc;

/// What the TLS listener's handshakes choose from.
#[derive(Debug)]
pub struct CertificateStore {
    current: ArcSwap<CertificateSet>,
}

impl CertificateStore {
    pub fn new(set: CertificateSet) -> Self {
        Self {
            current: ArcSwap::from_pointee(set),
        }
    }

    pub fn current(&self) -> Arc<CertificateSet> {
        self.current.load_full()
    }

    pub fn replace(&self, set: CertificateSet) {
        self.current.store(Arc::new(set));
    }
}

impl ResolvesServerCert for CertificateStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current
            .load()
            .select(hello.server_name())
            .map(|certificate| certificate.key.clone())
    }
}

/// One configured pair of files as last loaded: its content, and the certificate made of it.
#[derive(Debug)]
struct LoadedPair {
    files: CertificateFiles,
    content: (Vec<u8>, Vec<u8>),
    certificate: Arc<Certificate>,
}

/// Certificates read from files (`proxy.tls.certificates`), reloaded when a file changes.
#[derive(Debug)]
pub struct FileCertificates {
    provider: Arc<CryptoProvider>,
    loaded: Vec<LoadedPair>,
}

/// What a [`FileCertificates::refresh`] did.
#[derive(Debug, Default)]
pub struct Refreshed {
    /// Pairs read again and now served, as their origin.
    pub reloaded: Vec<String>,
    /// Pairs whose new content was refused; the previous version stays.
    pub refused: Vec<CertificateError>,
}

impl FileCertificates {
    /// Loads every pair; any that cannot be loaded is an error (naming its files).
    pub fn load(
        files: &[CertificateFiles],
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, CertificateError> {
        let loaded = files
            .iter()
            .map(|files| load_pair(files, &provider))
            .collect::<Result<_, _>>()?;
        Ok(Self { provider, loaded })
    }

    pub fn files(&self) -> Vec<CertificateFiles> {
        self.loaded.iter().map(|pair| pair.files.clone()).collect()
    }

    /// The set to serve, in the configured order.
    pub fn set(&self) -> CertificateSet {
        CertificateSet::new(
            self.loaded
                .iter()
                .map(|pair| pair.certificate.clone())
                .collect(),
        )
    }

    /// Reads every file again; a pair whose content changed is loaded anew, or, when the new
    /// content is not a valid certificate and key, keeps serving its previous version.
    pub fn refresh(&mut self) -> Refreshed {
        let mut refreshed = Refreshed::default();
        for pair in &mut self.loaded {
            let Ok(content) = read_pair(&pair.files) else {
                // A file being replaced can vanish for a moment; the next poll looks again.
                continue;
            };
            if content == pair.content {
                continue;
            }
            match Certificate::from_pem(
                &pair.files.origin(),
                &content.0,
                &content.1,
                &self.provider,
            ) {
                Ok(certificate) => {
                    refreshed.reloaded.push(certificate.origin.clone());
                    pair.certificate = Arc::new(certificate);
                    pair.content = content;
                }
                Err(error) => {
                    // Refused once per content, not once per poll.
                    pair.content = content;
                    refreshed.refused.push(error);
                }
            }
        }
        refreshed
    }
}

fn read_pair(files: &CertificateFiles) -> Result<(Vec<u8>, Vec<u8>), CertificateError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|source| CertificateError::Read {
            origin: path.display().to_string(),
            source,
        })
    };
    Ok((read(&files.cert_file)?, read(&files.key_file)?))
}

fn load_pair(
    files: &CertificateFiles,
    provider: &CryptoProvider,
) -> Result<LoadedPair, CertificateError> {
    let content = read_pair(files)?;
    let certificate = Certificate::from_pem(&files.origin(), &content.0, &content.1, provider)?;
    Ok(LoadedPair {
        files: files.clone(),
        content,
        certificate: Arc::new(certificate),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::certificate::tests::self_signed_pem;
    use std::path::PathBuf;

    struct Files {
        directory: PathBuf,
    }

    impl Files {
        fn new(test: &str) -> Self {
            let directory =
                std::env::temp_dir().join(format!("tether-tls-{test}-{}", std::process::id()));
            std::fs::create_dir_all(&directory).expect("temp dir");
            Self { directory }
        }

        fn write(&self, name: &str, names: &[&str]) -> CertificateFiles {
            let (chain, key) = self_signed_pem(names);
            let files = CertificateFiles {
                cert_file: self.directory.join(format!("{name}.pem")),
                key_file: self.directory.join(format!("{name}.key")),
            };
            std::fs::write(&files.cert_file, chain).expect("write");
            std::fs::write(&files.key_file, key).expect("write");
            files
        }
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.directory);
        }
    }

    fn names(set: &CertificateSet) -> Vec<Vec<String>> {
        set.certificates().iter().map(|c| c.names.clone()).collect()
    }

    #[test]
    fn a_changed_file_is_reloaded_and_a_bad_one_keeps_the_old_certificate() {
        let files = Files::new("refresh");
        let a = files.write("a", &["a.example"]);
        let b = files.write("b", &["b.example"]);
        let mut loaded =
            FileCertificates::load(&[a.clone(), b.clone()], crate::tls::provider()).expect("load");
        assert_eq!(names(&loaded.set()), [["a.example"], ["b.example"]]);
        let nothing = loaded.refresh();
        assert!(nothing.reloaded.is_empty() && nothing.refused.is_empty());

        // Renewed (cert-manager writes a new pair): served from now on.
        files.write("a", &["a.example", "www.a.example"]);
        let renewed = loaded.refresh();
        assert_eq!(renewed.reloaded, [a.origin()]);
        assert_eq!(
            names(&loaded.set()),
            [vec!["a.example", "www.a.example"], vec!["b.example"]]
        );

        // Broken: refused once, with the file named; the previous certificate stays.
        std::fs::write(&b.key_file, "not a key").expect("write");
        let broken = loaded.refresh();
        assert!(broken.reloaded.is_empty());
        assert_eq!(broken.refused.len(), 1);
        assert!(
            broken.refused[0].to_string().contains("b.key"),
            "{}",
            broken.refused[0]
        );
        assert_eq!(names(&loaded.set())[1], ["b.example"]);
        assert!(
            loaded.refresh().refused.is_empty(),
            "refused once per content"
        );
    }

    #[test]
    fn loading_names_the_file_that_fails() {
        let files = Files::new("load");
        let a = files.write("a", &["a.example"]);
        let missing = CertificateFiles {
            cert_file: files.directory.join("missing.pem"),
            key_file: a.key_file.clone(),
        };
        let error = FileCertificates::load(&[a, missing], crate::tls::provider())
            .expect_err("a missing file");
        assert!(
            error.to_string().contains("missing.pem: cannot read"),
            "{error}"
        );
    }
}
