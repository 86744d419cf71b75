//! Which certificate a handshake gets: by SNI against each certificate's DNS names, an exact
//! name first, then a one-label wildcard (`*.example.com` covers `a.example.com`, not
//! `example.com` or `a.b.example.com`); no SNI, or a name no certificate has, gets the first
//! certificate. Among certificates with the same name, the first listed wins.
use super::certificate::Certificate;
use std::collections::HashMap;
use std::sync::Arc;

/// The certificates being served, indexed by name.
#[derive(Debug, Default)]
pub struct CertificateSet {
    certificates: Vec<Arc<Certificate>>,
    exact: HashMap<String, usize>,
    /// Keyed by the part after `*.`.
    wildcard: HashMap<String, usize>,
}

impl CertificateSet {
    pub fn new(certificates: Vec<Arc<Certificate>>) -> Self {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (index, certificate) in certificates.iter().enumerate() {
            for name in &certificate.names {
                match name.strip_prefix("*.") {
                    Some(suffix) => wildcard.entry(suffix.to_string()).or_insert(index),
                    None => exact.entry(name.clone()).or_insert(index),
                };
            }
        }
        Self {
            certificates,
            exact,
            wildcard,
        }
    }

    pub fn certificates(&self) -> &[Arc<Certificate>] {
        &self.certificates
    }

    /// The certificate for a handshake that asked for `server_name` (SNI), if any is loaded.
    pub fn select(&self, server_name: Option<&str>) -> Option<&Arc<Certificate>> {
        let chosen = server_name.and_then(|name| {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            self.exact.get(&name).copied().or_else(|| {
                let (_, parent) = name.split_once('.')?;
                self.wildcard.get(parent).copied()
            })
        });
        self.certificates.get(chosen.unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::certificate::tests::self_signed;

    fn set(names: &[&[&str]]) -> CertificateSet {
        CertificateSet::new(
            names
                .iter()
                .enumerate()
                .map(|(index, names)| Arc::new(self_signed(&format!("cert-{index}"), names)))
                .collect(),
        )
    }

    fn chosen(set: &CertificateSet, server_name: Option<&str>) -> String {
        set.select(server_name)
            .expect("a certificate")
            .origin
            .clone()
    }

    #[test]
    fn sni_picks_exact_then_one_label_wildcard_else_the_first() {
        let set = set(&[
            &["default.example"],
            &["*.example.com"],
            &["www.example.com", "api.example.com"],
            &["*.www.example.com"],
        ]);
        // Exact beats the wildcard that also matches.
        assert_eq!(chosen(&set, Some("www.example.com")), "cert-2");
        assert_eq!(chosen(&set, Some("api.example.com")), "cert-2");
        // One label under the wildcard.
        assert_eq!(chosen(&set, Some("shop.example.com")), "cert-1");
        assert_eq!(chosen(&set, Some("x.www.example.com")), "cert-3");
        // A wildcard covers exactly one label: not the bare domain, not two labels deep.
        assert_eq!(chosen(&set, Some("example.com")), "cert-0");
        assert_eq!(chosen(&set, Some("a.b.example.com")), "cert-0");
        // Case and a trailing dot do not matter.
        assert_eq!(chosen(&set, Some("WWW.Example.COM.")), "cert-2");
        // No SNI, or a name nobody has: the first.
        assert_eq!(chosen(&set, None), "cert-0");
        assert_eq!(chosen(&set, Some("other.test")), "cert-0");
    }

    #[test]
    fn the_first_listed_certificate_wins_a_shared_name() {
        let set = set(&[
            &["a.example.test"],
            &["b.example.test", "*.example.test"],
            &["b.example.test", "*.example.test"],
        ]);
        assert_eq!(chosen(&set, Some("b.example.test")), "cert-1");
        assert_eq!(chosen(&set, Some("c.example.test")), "cert-1");
    }

    #[test]
    fn an_empty_set_has_nothing_to_offer() {
        assert!(CertificateSet::default()
            .select(Some("a.example"))
            .is_none());
    }
}
