//! TLS termination: rustls with the ring provider (no OpenSSL), TLS 1.2 and 1.3 only.
//!
//! - [`certificate`]: a PEM chain and key, checked to belong together, and its DNS names;
//! - [`select`]: which certificate a handshake gets (SNI: exact, then one-label wildcard,
//!   else the first);
//! - [`store`]: the certificates being served, swapped whole on reload while handshakes read
//!   them without a lock; a certificate that fails to load keeps its previous version.
pub mod certificate;
pub mod select;
pub mod store;

use rustls::crypto::CryptoProvider;
use rustls::ServerConfig;
use std::sync::Arc;

/// ALPN protocol names, most preferred first.
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The one crypto provider tether uses (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server configuration of the TLS listener: certificates from `store`, ALPN `alpn`.
pub fn server_config(
    store: Arc<store::CertificateStore>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    Ok(Arc::new(config))
}
