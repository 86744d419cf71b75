//! The session cookie's value: which target, since when, last used when, under a keyed MAC.
//!
//! Layout before base64url (33 bytes, 44 characters):
//!
//! ```text
//! version:1 | target tag:8 | issued at:4 | refreshed at:4 | MAC:16
//! ```
//!
//! - The target tag is a keyed hash of (service, target address): opaque to the client, and the
//!   same on every agent that shares the key, so any node routes any cookie without shared state.
//! - Times are Unix seconds (wall clock, never a per-process clock: envoy#44111), so absolute and
//!   idle timeouts are enforced from the cookie alone.
//! - The MAC (HMAC-SHA-256, truncated to 128 bits) covers the service name and every byte
//!   before it, so a cookie cannot be forged, edited, or replayed against another service.
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::net::SocketAddr;

const VERSION: u8 = 1;
const TAG_LEN: usize = 8;
const PAYLOAD_LEN: usize = 1 + TAG_LEN + 4 + 4;
const MAC_LEN: usize = 16;
const RAW_LEN: usize = PAYLOAD_LEN + MAC_LEN;
/// Length of an encoded cookie value.
pub const ENCODED_LEN: usize = (RAW_LEN * 8).div_ceil(6);
/// Cookies stamped this far in the future (clock skew between nodes) are still accepted.
const MAX_CLOCK_SKEW_SECS: u32 = 60;

/// The length of a session key, in bytes.
pub const KEY_LEN: usize = 32;

/// Identifies a target inside a cookie without revealing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TargetTag(pub [u8; TAG_LEN]);

/// What a valid cookie says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    pub target: TargetTag,
    /// When the session was first pinned (Unix seconds).
    pub issued_at: u32,
    /// When the cookie was last re-issued (Unix seconds).
    pub refreshed_at: u32,
}

/// Why a cookie value was not obeyed. Never an error for the client: it counts as absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Not our encoding, wrong length or version.
    Malformed,
    /// Well-formed, but the MAC does not match: edited, forged, or signed with another key.
    Forged,
    /// Genuine, but past its absolute or idle timeout.
    Expired,
}

impl Rejected {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejected::Malformed => "malformed",
            Rejected::Forged => "forged",
            Rejected::Expired => "expired",
        }
    }
}

/// Lifetimes enforced from the cookie itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lifetimes {
    pub absolute_secs: Option<u32>,
    pub idle_secs: Option<u32>,
}

/// Signs and verifies cookie values with one key.
#[derive(Clone)]
pub struct CookieCodec {
    /// HMAC state with the key already absorbed; cloned per use.
    keyed: Hmac<Sha256>,
}

impl std::fmt::Debug for CookieCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieCodec { key: <secret> }")
    }
}

impl CookieCodec {
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        Self {
            keyed: <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length"),
        }
    }

    /// The tag that stands for `target` of `service` in cookies.
    pub fn target_tag(&self, service: &str, target: SocketAddr) -> TargetTag {
        let mut mac = self.keyed.clone();
        mac.update(b"tether-target-v1\0");
        mac.update(service.as_bytes());
        mac.update(b"\0");
        mac.update(target.to_string().as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&digest[..TAG_LEN]);
        TargetTag(tag)
    }

    /// Encodes a signed cookie value for `session` of `service`.
    pub fn encode(&self, service: &str, session: &Session) -> String {
        let mut raw = [0u8; RAW_LEN];
        raw[0] = VERSION;
        raw[1..1 + TAG_LEN].copy_from_slice(&session.target.0);
        raw[9..13].copy_from_slice(&session.issued_at.to_be_bytes());
        raw[13..17].copy_from_slice(&session.refreshed_at.to_be_bytes());
        let mac = self.mac(service, &raw[..PAYLOAD_LEN]);
        raw[PAYLOAD_LEN..].copy_from_slice(&mac);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Decodes and verifies a cookie value. `now` is Unix seconds.
    pub fn decode(
        &self,
        service: &str,
        value: &str,
        lifetimes: Lifetimes,
        now: u32,
    ) -> Result<Session, Rejected> {
        if value.len() != ENCODED_LEN {
            return Err(Rejected::Malformed);
        }
        let mut raw = [0u8; RAW_LEN];
        match URL_SAFE_NO_PAD.decode_slice(value.as_bytes(), &mut raw) {
            Ok(RAW_LEN) => {}
            _ => return Err(Rejected::Malformed),
        }
        if raw[0] != VERSION {
            return Err(Rejected::Malformed);
        }
        let expected = self.mac(service, &raw[..PAYLOAD_LEN]);
        if !constant_time_eq(&expected, &raw[PAYLOAD_LEN..]) {
            return Err(Rejected::Forged);
        }
        let mut target = [0u8; TAG_LEN];
        target.copy_from_slice(&raw[1..1 + TAG_LEN]);
        let session = Session {
            target: TargetTag(target),
            issued_at: u32::from_be_bytes([raw[9], raw[10], raw[11], raw[12]]),
            refreshed_at: u32::from_be_bytes([raw[13], raw[14], raw[15], raw[16]]),
        };
        // A MAC-valid cookie from the future means a skewed clock, or a key leaked; either way,
        // don't let it extend a session.
        if session.issued_at > now.saturating_add(MAX_CLOCK_SKEW_SECS)
            || session.refreshed_at < session.issued_at
        {
            return Err(Rejected::Forged);
        }
        if let Some(limit) = lifetimes.absolute_secs {
            if now.saturating_sub(session.issued_at) >= limit {
                return Err(Rejected::Expired);
            }
        }
        if let Some(limit) = lifetimes.idle_secs {
            if now.saturating_sub(session.refreshed_at) >= limit {
                return Err(Rejected::Expired);
            }
        }
        Ok(session)
    }

    fn mac(&self, service: &str, payload: &[u8]) -> [u8; MAC_LEN] {
        let mut mac = self.keyed.clone();
        mac.update(b"tether-cookie-v1\0");
        mac.update(service.as_bytes());
        mac.update(b"\0");
        mac.update(payload);
        let digest = mac.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&digest[..MAC_LEN]);
        out
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Now, in Unix seconds (saturating; u32 lasts until 2106).
pub fn unix_now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec() -> CookieCodec {
        CookieCodec::new(&[7u8; KEY_LEN])
    }

    fn session(codec: &CookieCodec) -> Session {
        Session {
            target: codec.target_tag("echo", "10.0.0.1:80".parse().expect("address")),
            issued_at: 1_000_000,
            refreshed_at: 1_000_100,
        }
    }

    #[test]
    fn round_trips() {
        let codec = codec();
        let session = session(&codec);
        let value = codec.encode("echo", &session);
        assert_eq!(value.len(), ENCODED_LEN);
        assert!(value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        let decoded = codec.decode("echo", &value, Lifetimes::default(), 1_000_200);
        assert_eq!(decoded, Ok(session));
    }

    #[test]
    fn the_value_does_not_reveal_the_target() {
        let codec = codec();
        let value = codec.encode("echo", &session(&codec));
        let raw = URL_SAFE_NO_PAD.decode(value).expect("base64");
        let address = [10u8, 0, 0, 1];
        assert!(!raw.windows(4).any(|w| w == address));
        assert!(!raw.windows(2).any(|w| w == 80u16.to_be_bytes()));
    }

    #[test]
    fn every_flipped_bit_is_rejected() {
        let codec = codec();
        let value = codec.encode("echo", &session(&codec));
        let raw = URL_SAFE_NO_PAD.decode(&value).expect("base64");
        for byte in 0..raw.len() {
            for bit in 0..8 {
                let mut tampered = raw.clone();
                tampered[byte] ^= 1 << bit;
                let tampered = URL_SAFE_NO_PAD.encode(&tampered);
                let result = codec.decode("echo", &tampered, Lifetimes::default(), 1_000_200);
                assert!(result.is_err(), "byte {byte} bit {bit} was accepted");
            }
        }
    }

    #[test]
    fn another_key_or_service_counts_as_forged() {
        let codec = codec();
        let value = codec.encode("echo", &session(&codec));
        let other = CookieCodec::new(&[8u8; KEY_LEN]);
        let now = 1_000_200;
        assert_eq!(
            other.decode("echo", &value, Lifetimes::default(), now),
            Err(Rejected::Forged)
        );
        assert_eq!(
            codec.decode("billing", &value, Lifetimes::default(), now),
            Err(Rejected::Forged)
        );
    }

    #[test]
    fn garbage_is_malformed() {
        let codec = codec();
        let lifetimes = Lifetimes::default();
        for value in [
            "",
            "x",
            "01234567-89ab-cdef-0123-456789abcdef",
            &"A".repeat(ENCODED_LEN),
            &"!".repeat(ENCODED_LEN),
            &"é".repeat(ENCODED_LEN / 2),
        ] {
            assert_eq!(
                codec.decode("echo", value, lifetimes, 0),
                Err(Rejected::Malformed),
                "{value:?}"
            );
        }
    }

    #[test]
    fn absolute_and_idle_timeouts_expire() {
        let codec = codec();
        let session = session(&codec);
        let value = codec.encode("echo", &session);
        let absolute = Lifetimes {
            absolute_secs: Some(300),
            idle_secs: None,
        };
        assert!(codec.decode("echo", &value, absolute, 1_000_299).is_ok());
        assert_eq!(
            codec.decode("echo", &value, absolute, 1_000_300),
            Err(Rejected::Expired)
        );
        let idle = Lifetimes {
            absolute_secs: None,
            idle_secs: Some(60),
        };
        assert!(codec.decode("echo", &value, idle, 1_000_159).is_ok());
        assert_eq!(
            codec.decode("echo", &value, idle, 1_000_160),
            Err(Rejected::Expired)
        );
    }

    #[test]
    fn a_cookie_from_the_future_is_not_obeyed() {
        let codec = codec();
        let mut session = session(&codec);
        session.issued_at = 2_000_000;
        session.refreshed_at = 2_000_000;
        let value = codec.encode("echo", &session);
        assert_eq!(
            codec.decode("echo", &value, Lifetimes::default(), 1_000_000),
            Err(Rejected::Forged)
        );
        // Small skew between nodes is fine.
        assert!(codec
            .decode("echo", &value, Lifetimes::default(), 2_000_000 - 30)
            .is_ok());
    }

    #[test]
    fn tags_are_stable_and_distinct() {
        let a = codec();
        let b = codec();
        let address: SocketAddr = "10.0.0.1:80".parse().expect("address");
        let other: SocketAddr = "10.0.0.2:80".parse().expect("address");
        assert_eq!(a.target_tag("echo", address), b.target_tag("echo", address));
        assert_ne!(a.target_tag("echo", address), a.target_tag("echo", other));
        assert_ne!(a.target_tag("echo", address), a.target_tag("web", address));
    }
}
