//! The session cookie codec (agent/src/sticky/cookie.rs).
//!
//! The input, as text, is a cookie value a client sent, decoded for each service (the seeds in
//! fuzz/corpus/cookie_codec are values the codec made for them, with this key). Its bytes also
//! make a session and a clock for the round trip. Checks: decoding never panics; a value is
//! obeyed for one service at most, and only if it is exactly what the codec encodes for the
//! session it says; every session round-trips through encode and decode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use tether::sticky::cookie::{CookieCodec, Lifetimes, Session, TargetTag, ENCODED_LEN, KEY_LEN};

static CODEC: LazyLock<CookieCodec> = LazyLock::new(|| CookieCodec::new(&[7u8; KEY_LEN]));

const SERVICES: [&str; 3] = ["echo", "shop", ""];
/// 2023-11-14: after the seeds' sessions began.
const NOW: u32 = 1_700_000_000;

fn u32_at(data: &[u8], at: usize) -> u32 {
    let mut bytes = [0u8; 4];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = data.get(at + i).copied().unwrap_or(0);
    }
    u32::from_be_bytes(bytes)
}

fuzz_target!(|data: &[u8]| {
    let codec = &*CODEC;

    // Whatever a client sends: never a panic, and only a genuine value is obeyed.
    let value = String::from_utf8_lossy(data);
    for text in [value.as_ref(), value.trim()] {
        for lifetimes in [
            Lifetimes::default(),
            Lifetimes {
                absolute_secs: Some(3600),
                idle_secs: Some(600),
            },
        ] {
            let mut accepted = 0;
            for service in SERVICES {
                let Ok(session) = codec.decode(service, text, lifetimes, NOW) else {
                    continue;
                };
                accepted += 1;
                assert_eq!(text.len(), ENCODED_LEN);
                assert!(session.refreshed_at >= session.issued_at);
                assert_eq!(codec.encode(service, &session), text);
            }
            assert!(accepted <= 1, "{text:?} is valid for {accepted} services");
        }
    }

    // Any session the proxy can issue decodes to itself, and only for its service.
    let service = SERVICES[usize::from(data.first().copied().unwrap_or(0)) % SERVICES.len()];
    let mut tag = [0u8; 8];
    for (i, byte) in tag.iter_mut().enumerate() {
        *byte = data.get(1 + i).copied().unwrap_or(0);
    }
    let issued_at = u32_at(data, 9);
    let refreshed_at = issued_at.saturating_add(u32_at(data, 13) % 86_400);
    let session = Session {
        target: TargetTag(tag),
        issued_at,
        refreshed_at,
    };
    let encoded = codec.encode(service, &session);
    assert_eq!(encoded.len(), ENCODED_LEN);
    assert!(encoded
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    assert_eq!(
        codec.decode(service, &encoded, Lifetimes::default(), refreshed_at),
        Ok(session)
    );
    for other in SERVICES.iter().filter(|other| **other != service) {
        assert!(codec
            .decode(other, &encoded, Lifetimes::default(), refreshed_at)
            .is_err());
    }
});
