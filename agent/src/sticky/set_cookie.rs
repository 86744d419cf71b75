//! The `Set-Cookie` header for a session cookie: value plus the configured attributes.
use crate::model::{SameSite, SessionCookie};
use hyper::header::HeaderValue;
use std::time::{Duration, SystemTime};

/// A session cookie's attributes, rendered once per table so each response only appends them.
#[derive(Debug, Clone)]
pub struct CookieTemplate {
    name: String,
    /// `; Path=/; Domain=...; Max-Age=...` and `; HttpOnly`/`; Secure`: everything fixed.
    fixed: String,
    expires: Option<Duration>,
    same_site: Option<SameSite>,
    conditional_same_site_none: bool,
}

impl CookieTemplate {
    pub fn new(cookie: &SessionCookie) -> Self {
        let mut fixed = format!("; Path={}", cookie.path);
        if let Some(domain) = &cookie.domain {
            fixed.push_str("; Domain=");
            fixed.push_str(domain);
        }
        if let Some(max_age) = cookie.max_age {
            fixed.push_str(&format!("; Max-Age={}", max_age.as_secs()));
        }
        if cookie.http_only {
            fixed.push_str("; HttpOnly");
        }
        if cookie.secure {
            fixed.push_str("; Secure");
        }
        Self {
            name: cookie.name.clone(),
            fixed,
            expires: cookie.expires,
            same_site: cookie.same_site,
            conditional_same_site_none: cookie.conditional_same_site_none,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether [`Self::header`] reads the user agent: only for conditional `SameSite=None`.
    pub fn reads_user_agent(&self) -> bool {
        self.same_site == Some(SameSite::None) && self.conditional_same_site_none
    }

    /// The header for `value`. `user_agent` matters only for conditional `SameSite=None`.
    pub fn header(&self, value: &str, user_agent: Option<&[u8]>, now: SystemTime) -> HeaderValue {
        let mut header =
            String::with_capacity(self.name.len() + value.len() + self.fixed.len() + 48);
        header.push_str(&self.name);
        header.push('=');
        header.push_str(value);
        header.push_str(&self.fixed);
        if let Some(expires) = self.expires {
            header.push_str("; Expires=");
            header.push_str(&httpdate::fmt_http_date(now + expires));
        }
        if let Some(same_site) = self.same_site {
            let omit = same_site == SameSite::None
                && self.conditional_same_site_none
                && !same_site_none_compatible(user_agent);
            if !omit {
                header.push_str("; SameSite=");
                header.push_str(same_site.as_str());
            }
        }
        // Every part was validated to hold only visible ASCII, so this cannot fail.
        HeaderValue::from_str(&header).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

/// Whether a browser handles `SameSite=None`; those known not to are Chrome 51 to 66, every
/// browser on iOS 12, and Safari (and embedded browsers) on macOS 10.14 (Chromium's list).
pub fn same_site_none_compatible(user_agent: Option<&[u8]>) -> bool {
    let Some(agent) = user_agent.and_then(|ua| std::str::from_utf8(ua).ok()) else {
        return true;
    };
    if let Some(version) = chrome_major(agent) {
        if (51..=66).contains(&version) {
            return false;
        }
    }
    if agent.contains("CPU iPhone OS 12_") || agent.contains("iPad; CPU OS 12_") {
        return false;
    }
    let macos_10_14 = agent.contains("Macintosh") && agent.contains("Mac OS X 10_14");
    if macos_10_14 && !agent.contains("Chrome/") && !agent.contains("Chromium/") {
        return false;
    }
    true
}

fn chrome_major(agent: &str) -> Option<u32> {
    let at = agent
        .find("Chrome/")
        .map(|i| i + 7)
        .or_else(|| agent.find("Chromium/").map(|i| i + 9))?;
    let digits: String = agent[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cookie() -> SessionCookie {
        SessionCookie::named("session-id")
    }

    fn render(cookie: &SessionCookie, ua: Option<&str>) -> String {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        CookieTemplate::new(cookie)
            .header("v", ua.map(str::as_bytes), now)
            .to_str()
            .expect("ascii")
            .to_string()
    }

    #[test]
    fn defaults_are_kongs_plus_http_only() {
        assert_eq!(render(&cookie(), None), "session-id=v; Path=/; HttpOnly");
    }

    #[test]
    fn every_attribute_renders() {
        let mut c = cookie();
        c.path = "/app".into();
        c.domain = Some("example.com".into());
        c.max_age = Some(Duration::from_secs(172_800));
        c.expires = Some(Duration::from_secs(172_800));
        c.secure = true;
        c.same_site = Some(SameSite::Strict);
        assert_eq!(
            render(&c, None),
            "session-id=v; Path=/app; Domain=example.com; Max-Age=172800; HttpOnly; Secure; \
             Expires=Thu, 16 Nov 2023 22:13:20 GMT; SameSite=Strict"
        );
    }

    #[test]
    fn http_only_can_be_turned_off() {
        let mut c = cookie();
        c.http_only = false;
        assert_eq!(render(&c, None), "session-id=v; Path=/");
    }

    #[test]
    fn conditional_same_site_none_omits_it_for_old_browsers() {
        let mut c = cookie();
        c.secure = true;
        c.same_site = Some(SameSite::None);
        c.conditional_same_site_none = true;
        let chrome_60 = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/60.0.3112.113 Safari/537.36";
        let chrome_120 = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
        let ios_12 = "Mozilla/5.0 (iPhone; CPU iPhone OS 12_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/12.1.2 Mobile/15E148 Safari/604.1";
        let safari_mojave = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/12.1.2 Safari/605.1.15";
        assert!(!render(&c, Some(chrome_60)).contains("SameSite"));
        assert!(!render(&c, Some(ios_12)).contains("SameSite"));
        assert!(!render(&c, Some(safari_mojave)).contains("SameSite"));
        assert!(render(&c, Some(chrome_120)).ends_with("; SameSite=None"));
        assert!(render(&c, None).ends_with("; SameSite=None"));
        c.conditional_same_site_none = false;
        assert!(render(&c, Some(chrome_60)).ends_with("; SameSite=None"));
    }
}
