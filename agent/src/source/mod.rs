//! Where models come from. A source builds a [`crate::model::Model`] and knows nothing of the
//! proxy or the maps; the two sources, [`standalone::FileSource`] and
//! [`kube::cluster::ClusterSource`], implement [`crate::runtime::ModelSource`].
pub mod file;
pub mod kube;
pub mod locate;
pub mod policy;
pub mod standalone;
pub mod watch;

use crate::model::{HostMatch, PathMatch};

/// A route's host: `example.com` or `*.example.com` (lowercased); the rule Kubernetes Ingress,
/// Gateway API and the file share.
pub fn host_match(host: &str) -> Result<HostMatch, String> {
    let lower = host.to_ascii_lowercase();
    let valid_label = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if let Some(suffix) = lower.strip_prefix("*.") {
        if suffix.split('.').all(valid_label) {
            return Ok(HostMatch::Wildcard(suffix.to_string()));
        }
    } else if lower.split('.').all(valid_label) {
        return Ok(HostMatch::Exact(lower));
    }
    Err(format!(
        "{host:?} is not a host name (a wildcard may only be a leading *.)"
    ))
}

/// A path prefix: `/echo/` and `/echo` both mean the path elements under `/echo`.
pub fn prefix_match(prefix: &str) -> PathMatch {
    let trimmed = prefix.trim_end_matches('/');
    PathMatch::Prefix(if trimmed.is_empty() { "/" } else { trimmed }.to_string())
}
