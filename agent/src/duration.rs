//! Durations as Gateway API writes them (GEP-2257: `1h`, `30m`, `10s`, `500ms`, `1h30m`), or a
//! bare number of seconds as ingress-nginx annotations do.
use std::time::Duration;

/// Parses `1h30m`, `10s`, `250ms` or `3600` (seconds).
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "invalid duration {text:?}: expected numbers with units h, m, s or ms, like 1h30m"
            ));
        }
        let value: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration {text:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = match &rest[..unit_len] {
            "h" => Duration::from_secs(3600),
            "m" => Duration::from_secs(60),
            "s" => Duration::from_secs(1),
            "ms" => Duration::from_millis(1),
            other => {
                return Err(format!(
                    "invalid duration {text:?}: unknown unit {other:?} (use h, m, s or ms)"
                ))
            }
        };
        rest = &rest[unit_len..];
        total = unit
            .checked_mul(u32::try_from(value).map_err(|_| format!("invalid duration {text:?}"))?)
            .and_then(|d| total.checked_add(d))
            .ok_or_else(|| format!("invalid duration {text:?}: too large"))?;
    }
    Ok(total)
}

/// serde support: a string in the format above, or an integer number of seconds.
pub mod serde_duration {
    use serde::{de, Deserialize, Deserializer};
    use std::time::Duration;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(u64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<Raw>::deserialize(d)? {
            None => Ok(None),
            Some(Raw::Seconds(seconds)) => Ok(Some(Duration::from_secs(seconds))),
            Some(Raw::Text(text)) => super::parse(&text).map(Some).map_err(de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_gateway_api_durations() {
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("172800"), Ok(Duration::from_secs(172_800)));
    }

    #[test]
    fn rejects_garbage_with_a_reason() {
        assert!(parse("").is_err());
        assert!(parse("10x").expect_err("bad unit").contains("unknown unit"));
        assert!(parse("h")
            .expect_err("no number")
            .contains("expected numbers"));
        assert!(parse("-5s").is_err());
    }
}
