//! One serving certificate: a PEM chain and its private key, checked to belong together, with
//! the DNS names SNI selects it by.
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("{origin}: cannot read")]
    Read {
        origin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it")]
    NoCertificate { origin: String },
    #[error("{origin}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in it")]
    NoKey { origin: String },
    #[error("{origin}: malformed PEM")]
    Pem {
        origin: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{origin}: the first certificate is not a valid X.509 certificate")]
    Parse {
        origin: String,
        #[source]
        source: webpki::Error,
    },
    #[error("{origin}: the private key cannot be used")]
    Key {
        origin: String,
        #[source]
        source: rustls::Error,
    },
    #[error("{origin}: the private key does not belong to the certificate")]
    KeyMismatch { origin: String },
}

/// A certificate ready to serve.
#[derive(Debug)]
pub struct Certificate {
    /// Where it came from, for logs: `a.pem + a.key`, `Secret default/site-tls`.
    pub origin: String,
    /// Its DNS subjectAltNames, lowercased; `*.example.com` for a wildcard.
    pub names: Vec<String>,
    pub key: Arc<CertifiedKey>,
}

impl Certificate {
    /// Parses a PEM chain (end-entity first) and a PEM private key, and checks that the key
    /// is the certificate's.
    pub fn from_pem(
        origin: &str,
        chain: &[u8],
        key: &[u8],
        provider: &CryptoProvider,
    ) -> Result<Self, CertificateError> {
        let origin = origin.to_string();
        let chain = CertificateDer::pem_slice_iter(chain)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| CertificateError::Pem {
                origin: origin.clone(),
                source,
            })?;
        let Some(end_entity) = chain.first() else {
            return Err(CertificateError::NoCertificate { origin });
        };
        let names = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|source| CertificateError::Parse {
                origin: origin.clone(),
                source,
            })?
            .valid_dns_names()
            .map(|name| name.trim_end_matches('.').to_ascii_lowercase())
            .collect();
        let key = match PrivateKeyDer::from_pem_slice(key) {
            Ok(key) => key,
            Err(rustls::pki_types::pem::Error::NoItemsFound) => {
                return Err(CertificateError::NoKey { origin })
            }
            Err(source) => return Err(CertificateError::Pem { origin, source }),
        };
        let signing_key = provider
            .key_provider
            .load_private_key(key)
            .map_err(|source| CertificateError::Key {
                origin: origin.clone(),
                source,
            })?;
        let certified = CertifiedKey::new(chain, signing_key);
        match certified.keys_match() {
            // A key type whose public half rustls cannot derive: nothing to compare.
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(_) => return Err(CertificateError::KeyMismatch { origin }),
        }
        Ok(Self {
            origin,
            names,
            key: Arc::new(certified),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A self-signed certificate for `names`, as PEM chain and key.
    pub(crate) fn self_signed_pem(names: &[&str]) -> (String, String) {
        let names = names
            .iter()
            .map(|name| name.to_string())
            .collect::<Vec<_>>();
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(names).expect("rcgen");
        (cert.pem(), signing_key.serialize_pem())
    }

    pub(crate) fn self_signed(origin: &str, names: &[&str]) -> Certificate {
        let (chain, key) = self_signed_pem(names);
        Certificate::from_pem(
            origin,
            chain.as_bytes(),
            key.as_bytes(),
            &crate::tls::provider(),
        )
        .expect("a valid certificate")
    }

    fn load(chain: &str, key: &str) -> Result<Certificate, CertificateError> {
        Certificate::from_pem(
            "site",
            chain.as_bytes(),
            key.as_bytes(),
            &crate::tls::provider(),
        )
    }

    #[test]
    fn a_certificate_is_named_by_its_dns_names_lowercased() {
        let certificate = self_signed("site", &["WWW.Example.com", "*.api.example.com"]);
        assert_eq!(certificate.names, ["www.example.com", "*.api.example.com"]);
        assert_eq!(certificate.key.cert.len(), 1);
    }

    #[test]
    fn bad_pairs_are_refused_with_a_reason() {
        let (chain, key) = self_signed_pem(&["a.example"]);
        let (_, other_key) = self_signed_pem(&["b.example"]);
        let cases: [(&str, &str, &str); 5] = [
            ("", &key, "no PEM certificate"),
            (&chain, "", "no PEM private key"),
            (&key, &key, "no PEM certificate"),
            (&chain, &other_key, "does not belong to the certificate"),
            (
                "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
                &key,
                "not a valid X.509 certificate",
            ),
        ];
        for (chain, key, expected) in cases {
            let error = load(chain, key).expect_err(expected);
            assert!(
                error.to_string().starts_with("site: ") && error.to_string().contains(expected),
                "{error} (expected {expected:?})"
            );
        }
    }
}
