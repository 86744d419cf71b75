//! The session cookie: its attributes, its tamper-proofing, a key shared between agents, and
//! the lifetimes enforced from the cookie itself.
use crate::fixtures::{invalid_cookies, pods, sticky, sticky_with, timing, TETHER};
use anyhow::{Context, Result};
use std::time::{Duration, SystemTime};
use tether_testkit::agent::{Options, TempDir, Tether};
use tether_testkit::config::{Config, COOKIE};
use tether_testkit::http::{CookieJar, Http};

/// The attributes of a sessionCookie block all reach the Set-Cookie header.
#[tokio::test]
async fn set_cookie_carries_the_configured_attributes() -> Result<()> {
    let (_pods, _, _tether, http, url) = sticky_with(["a"], |config| {
        config
            .cookie("domain: shop.example.com")
            .cookie("httpOnly: false")
            .cookie("secure: true")
            .cookie("sameSite: Lax")
            .cookie("maxAge: 2h")
            .cookie("expires: 1h")
    })
    .await?;
    let reply = http.get(&url, None).await?;
    assert_eq!(reply.status, 200);
    let header = reply.set_cookie(COOKIE).context("Set-Cookie")?;
    let value = reply.cookie_value(COOKIE).context("value")?;
    let attributes: Vec<&str> = header.split("; ").skip(1).collect();
    assert_eq!(value.len(), 44, "{header}");
    assert!(value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    assert_eq!(
        attributes[..4],
        [
            "Path=/",
            "Domain=shop.example.com",
            "Max-Age=7200",
            "Secure"
        ],
        "{header}"
    );
    assert!(!header.contains("HttpOnly"), "{header}");
    assert_eq!(attributes.last(), Some(&"SameSite=Lax"), "{header}");
    let expires = attributes
        .iter()
        .find_map(|a| a.strip_prefix("Expires="))
        .context("Expires")?;
    let expires = httpdate::parse_http_date(expires)?;
    let expected = SystemTime::now() + Duration::from_secs(3600);
    let off = expires
        .duration_since(expected)
        .unwrap_or_else(|e| e.duration());
    assert!(
        off < Duration::from_secs(10),
        "Expires {expires:?} is {off:?} off"
    );
    Ok(())
}

/// conditionalSameSiteNone leaves SameSite=None out for browsers that reject it.
#[tokio::test]
async fn conditional_same_site_none_spares_old_browsers() -> Result<()> {
    let (_pods, _, tether, http, _) = sticky_with(["a"], |config| {
        config
            .cookie("secure: true")
            .cookie("sameSite: None")
            .cookie("conditionalSameSiteNone: true")
    })
    .await?;
    let agents = [
        ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/51.0.2704.103 Safari/537.36", false),
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/66.0.3359.181 Safari/537.36", false),
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/67.0.3396.99 Safari/537.36", true),
        ("Mozilla/5.0 (iPhone; CPU iPhone OS 12_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/12.1.2 Mobile/15E148 Safari/604.1", false),
        ("Mozilla/5.0 (iPhone; CPU iPhone OS 13_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/13.0.1 Mobile/15E148 Safari/604.1", true),
        ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/12.1.2 Safari/605.1.15", false),
        ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/14.0 Safari/605.1.15", true),
        ("Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0", true),
    ];
    for (agent, gets_none) in agents {
        let reply = http
            .get_with(&tether.url("/"), None, &[("user-agent", agent)])
            .await?;
        let header = reply.set_cookie(COOKIE).context("Set-Cookie")?;
        assert!(header.contains("; Secure"), "{header}");
        assert_eq!(
            header.ends_with("; SameSite=None"),
            gets_none,
            "{agent}: {header}"
        );
        if !gets_none {
            assert!(!header.contains("SameSite"), "{agent}: {header}");
        }
    }
    // No User-Agent at all: the attribute is written.
    let reply = http.get(&tether.url("/"), None).await?;
    assert!(reply
        .set_cookie(COOKIE)
        .context("Set-Cookie")?
        .ends_with("; SameSite=None"));
    Ok(())
}

/// Forged, edited and corrupted cookies count as absent: a new pick, a new cookie, a metric;
/// never an error.
#[tokio::test]
async fn tampered_cookies_count_as_absent() -> Result<()> {
    let (_pods, _, tether, http, url) = sticky(["a", "b"]).await?;
    let genuine = http.session_on(&url, COOKIE, "b", 4).await?;
    // Edit one character in the middle (inside the target tag and times): a valid encoding
    // whose MAC no longer matches.
    let mut edited: Vec<u8> = genuine.clone().into_bytes();
    edited[10] = if edited[10] == b'A' { b'B' } else { b'A' };
    let edited = String::from_utf8(edited)?;
    // Version byte 1 ("AQ"), then anything: well-formed, but no MAC of ours.
    let forged_random = format!("AQ{}", "x".repeat(42));
    let cases: [(&str, String, &str); 6] = [
        ("edited", edited, "forged"),
        ("random", forged_random, "forged"),
        ("truncated", genuine[..30].to_string(), "malformed"),
        ("garbage", "not a cookie at all".into(), "malformed"),
        ("empty", String::new(), "malformed"),
        ("binary-ish", "%00%ff%fe".into(), "malformed"),
    ];
    for (what, value, reason) in cases {
        let before = invalid_cookies(&tether, Some(reason)).await?;
        let reply = http.get(&url, Some(&format!("{COOKIE}={value}"))).await?;
        assert_eq!(reply.status, 200, "{what}");
        let new = reply.cookie_value(COOKIE).context("a new cookie")?;
        assert_ne!(new, value, "{what}");
        assert_eq!(new.len(), 44);
        let after = invalid_cookies(&tether, Some(reason)).await?;
        assert_eq!(after, before + 1.0, "{what}: {reason}");
        // The new cookie is genuine: it keeps its session.
        let again = http.get(&url, Some(&format!("{COOKIE}={new}"))).await?;
        assert_eq!(again.pod(), reply.pod(), "{what}");
        assert_eq!(again.set_cookie(COOKIE), None, "{what}");
    }
    // The genuine cookie still works after all that.
    let reply = http.get(&url, Some(&format!("{COOKIE}={genuine}"))).await?;
    assert_eq!(reply.pod(), Some("b"));
    assert!(!tether.logs().contains("panicked"));
    Ok(())
}

/// Two agents with the same --session-key file accept each other's cookies (same pod); an agent
/// with another key does not.
#[tokio::test]
async fn agents_sharing_a_key_accept_each_other_s_cookies() -> Result<()> {
    let pods = pods(["a", "b", "c"])?;
    let targets: Vec<_> = pods.iter().map(|p| (p.address(), 100)).collect();
    let yaml = Config::sticky(&targets).yaml();
    let keys = TempDir::new("keys")?;
    let shared = keys.path().join("shared.key");
    let with_key = |path: std::path::PathBuf| Options {
        session_key: Some(path),
        ..Options::default()
    };
    // The first agent creates the key file; the second reads it.
    let first = Tether::start_with(TETHER, &yaml, with_key(shared.clone())).await?;
    let second = Tether::start_with(TETHER, &yaml, with_key(shared.clone())).await?;
    let other = Tether::start_with(TETHER, &yaml, with_key(keys.path().join("other.key"))).await?;
    let http = Http::new();
    for pod in ["a", "b", "c"] {
        let value = http.session_on(&first.url("/"), COOKIE, pod, 6).await?;
        let header = format!("{COOKIE}={value}");
        for _ in 0..3 {
            let reply = http.get(&second.url("/"), Some(&header)).await?;
            assert_eq!(reply.pod(), Some(pod), "the second agent keeps the session");
            assert_eq!(reply.set_cookie(COOKIE), None);
        }
        let reply = http.get(&other.url("/"), Some(&header)).await?;
        assert_eq!(reply.status, 200);
        assert!(
            reply.set_cookie(COOKIE).is_some(),
            "another key: a new session"
        );
    }
    assert_eq!(invalid_cookies(&second, None).await?, 0.0);
    assert_eq!(invalid_cookies(&other, Some("forged")).await?, 3.0);
    Ok(())
}

/// absoluteTimeout: a session is over that long after it began, used or not.
#[tokio::test]
async fn absolute_timeout_ends_the_session() -> Result<()> {
    let (_pods, _, tether, http, url) =
        sticky_with(["a", "b"], |config| config.cookie("absoluteTimeout: 2s")).await?;
    let reply = http.get(&url, None).await?;
    let pod = reply.pod().context("x-pod")?.to_string();
    let first = reply.cookie_value(COOKIE).context("cookie")?;
    let header = format!("{COOKIE}={first}");
    // Under a second later (at most 1 in Unix seconds): still the session, not re-issued.
    let reply = http.get(&url, Some(&header)).await?;
    assert_eq!(reply.pod(), Some(pod.as_str()));
    assert_eq!(reply.set_cookie(COOKIE), None);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let reply = http.get(&url, Some(&header)).await?;
    assert_eq!(reply.status, 200);
    let second = reply.cookie_value(COOKIE).context("a new session")?;
    assert_ne!(second, first);
    assert_eq!(invalid_cookies(&tether, Some("expired")).await?, 1.0);
    Ok(())
}

/// idleTimeout: the cookie is re-issued on use, so a session in use lives on; one left idle
/// that long is over.
#[tokio::test]
async fn idle_timeout_refreshes_on_use_and_expires_when_idle() -> Result<()> {
    // Each request must take under 0.95 s (below): nothing that loads the machine meanwhile.
    let _machine = timing().await;
    let (_pods, _, tether, http, url) =
        sticky_with(["a", "b"], |config| config.cookie("idleTimeout: 3s")).await?;
    let mut jar = CookieJar::session_id();
    let reply = http.get(&url, None).await?;
    let pod = reply.pod().context("x-pod")?.to_string();
    assert!(jar.update(&reply));
    let first = jar.value().context("cookie")?.to_string();
    // Used every 1.05 s for over 3 s, longer than the idle timeout: the session lives on, its
    // cookie refreshed each time. In Unix seconds (the cookie's clock) each gap is at least 1, so
    // the cookie is re-issued, and at most 2 while a request takes under 0.95 s: under the limit.
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(1050)).await;
        let previous = jar.value().context("cookie")?.to_string();
        let reply = http.get(&url, jar.header().as_deref()).await?;
        assert_eq!(reply.pod(), Some(pod.as_str()), "round {round}");
        assert!(jar.update(&reply), "round {round}: the cookie is re-issued");
        assert_ne!(jar.value(), Some(previous.as_str()), "round {round}");
    }
    assert_eq!(invalid_cookies(&tether, Some("expired")).await?, 0.0);
    // The first cookie, never refreshed, is past its idle time by now (over 3.15 s).
    let reply = http.get(&url, Some(&format!("{COOKIE}={first}"))).await?;
    assert!(reply.set_cookie(COOKIE).is_some());
    // Left idle past the timeout: over.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let previous = jar.value().context("cookie")?.to_string();
    let reply = http.get(&url, jar.header().as_deref()).await?;
    assert_eq!(reply.status, 200);
    assert!(jar.update(&reply), "an expired session gets a new cookie");
    assert_ne!(jar.value(), Some(previous.as_str()));
    assert_eq!(invalid_cookies(&tether, Some("expired")).await?, 2.0);
    Ok(())
}
