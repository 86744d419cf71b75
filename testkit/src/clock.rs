//! Wall-clock time as UTC calendar fields, for result file names and Kubernetes timestamps
//! (std has no calendar; this is all the tests and benches need).
use std::time::{SystemTime, UNIX_EPOCH};

/// A UTC time to the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utc {
    pub year: i64,
    pub month: i64,
    pub day: i64,
    pub hour: i64,
    pub minute: i64,
    pub second: i64,
}

impl Utc {
    /// Now, `offset` seconds from now.
    pub fn now_plus(offset: i64) -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
        Self::from_unix(now + offset)
    }

    pub fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let rest = secs.rem_euclid(86_400);
        // Howard Hinnant's civil_from_days.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        Self {
            year: yoe + era * 400 + i64::from(month <= 2),
            month,
            day,
            hour: rest / 3600,
            minute: rest % 3600 / 60,
            second: rest % 60,
        }
    }

    /// `2026-04-21T10:15:00Z`.
    pub fn rfc3339(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }

    /// `2026-04-21T10:15:00.000000Z`, the MicroTime Kubernetes writes in Leases.
    pub fn micro_time(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.000000Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }

    /// `20260421T101500Z`, for file names.
    pub fn compact(&self) -> String {
        format!(
            "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_fields() {
        let epoch = Utc::from_unix(0);
        assert_eq!(epoch.rfc3339(), "1970-01-01T00:00:00Z");
        // 2024-02-29 12:34:56 (a leap day).
        let leap = Utc::from_unix(1_709_210_096);
        assert_eq!(leap.rfc3339(), "2024-02-29T12:34:56Z");
        assert_eq!(leap.compact(), "20240229T123456Z");
        assert_eq!(leap.micro_time(), "2024-02-29T12:34:56.000000Z");
    }
}
