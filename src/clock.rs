//! Wall-clock time behind a trait, so that tests can set it. Every timestamp the daemon stores
//! (`next_poll_at`, `lease_until`, `finished_at`, webhook timestamps) comes from a [`Clock`].

use std::sync::Mutex;

use chrono::{DateTime, Utc};

/// A source of the current UTC time.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// The system's real-time clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that only moves when told to, for tests.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<DateTime<Utc>>,
}

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: DateTime<Utc>) -> ManualClock {
        ManualClock { now: Mutex::new(start) }
    }

    /// Moves the clock forward (or back, with a negative duration).
    pub fn advance(&self, by: chrono::Duration) {
        let mut now = self.now.lock().expect("the clock mutex is never poisoned: no code panics holding it");
        *now += by;
    }

    /// Sets the clock.
    pub fn set(&self, to: DateTime<Utc>) {
        *self.now.lock().expect("the clock mutex is never poisoned: no code panics holding it") = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().expect("the clock mutex is never poisoned: no code panics holding it")
    }
}

/// Formats an instant the way every `*_at` column stores it: fixed-width UTC with milliseconds,
/// `2026-11-28T01:23:45.678Z`, so that text order is time order.
pub fn format_instant(instant: DateTime<Utc>) -> String {
    use chrono::Datelike as _;
    // chrono's RFC 3339 writer gives the same text for the years it writes with four digits, without
    // interpreting a format string on every call (the hot path formats several times per poll).
    if (0..=9999).contains(&instant.year()) {
        instant.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    } else {
        instant.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
    }
}

/// Parses a stored instant (or any RFC 3339 time) back into UTC.
pub fn parse_instant(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text).ok().map(|instant| instant.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use chrono::{NaiveDate, TimeZone as _};

    use super::*;

    #[test]
    fn instants_are_written_as_the_strftime_pattern_writes_them() {
        let days = [(0, 1, 1), (1, 1, 1), (999, 12, 31), (1970, 1, 1), (2024, 2, 29), (2026, 12, 3), (9999, 12, 31)];
        let times = [
            (0, 0, 0, 0),
            (23, 59, 59, 999_999_999),
            (12, 30, 5, 1_000_000),
            (1, 2, 3, 456_789),
            (23, 59, 59, 1_500_000_000),
        ];
        for (year, month, day) in days {
            for (hour, minute, second, nano) in times {
                let naive = NaiveDate::from_ymd_opt(year, month, day)
                    .and_then(|date| date.and_hms_nano_opt(hour, minute, second, nano))
                    .expect("a valid test instant");
                let instant = Utc.from_utc_datetime(&naive);
                assert_eq!(format_instant(instant), instant.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(), "{naive:?}");
            }
        }
        let far = Utc.with_ymd_and_hms(12_345, 6, 7, 8, 9, 10).unwrap();
        assert_eq!(format_instant(far), far.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string());
        assert_eq!(format_instant(Utc.with_ymd_and_hms(2026, 11, 28, 1, 23, 45).unwrap()), "2026-11-28T01:23:45.000Z");
    }
}
