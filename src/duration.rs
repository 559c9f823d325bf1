//! Durations as people write them in the configuration (`"500ms"`, `"30s"`, `"1h30m"`):
//! [`parse_duration`] reads them, [`format_duration`] writes them back exactly. Pure; no IO.

use std::fmt::Write as _;
use std::time::Duration;

/// The longest duration any key accepts (100 years). Bounding it keeps every sum and multiple
/// the daemon derives from durations (lease checks, backoff caps, deadlines) far from overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(36_500 * 86_400);

/// Why a text is not a duration. Each message quotes the text and says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Nothing was written.
    #[error("empty duration; write e.g. \"30s\"")]
    Empty,
    /// A part is not a number followed by a unit.
    #[error("{0:?} is not a duration; write e.g. \"500ms\", \"30s\", \"5m\", \"2h\"")]
    NotANumber(String),
    /// A number has no unit.
    #[error("{0:?} has a number without a unit (ms, s, m, h, d)")]
    NoUnit(String),
    /// A unit is not one of `ms`, `s`, `m`, `h`, `d`.
    #[error("{text:?} has an unknown unit {unit:?}; use ms, s, m, h or d")]
    UnknownUnit {
        /// The whole text.
        text: String,
        /// The unit as written.
        unit: String,
    },
    /// The total is above [`MAX_DURATION`].
    #[error("{0:?} is longer than 100 years (36500d)")]
    TooLong(String),
}

/// Parses `"500ms"`, `"30s"`, `"5m"`, `"2h"`, `"30d"` and sums such as `"1h30m"`; `"0"` is zero.
/// At most [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let trimmed = text.trim();
    if trimmed == "0" {
        return Ok(Duration::ZERO);
    }
    if trimmed.is_empty() {
        return Err(DurationError::Empty);
    }
    let mut total = Duration::ZERO;
    let mut rest = trimmed;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let value: f64 = number.parse().map_err(|_| DurationError::NotANumber(text.to_owned()))?;
        let unit_secs = match unit.trim() {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            "" => return Err(DurationError::NoUnit(text.to_owned())),
            other => return Err(DurationError::UnknownUnit { text: text.to_owned(), unit: other.to_owned() }),
        };
        let part = Duration::try_from_secs_f64(value * unit_secs)
            .ok()
            .filter(|part| *part <= MAX_DURATION)
            .ok_or_else(|| DurationError::TooLong(text.to_owned()))?;
        total = total.saturating_add(part);
        if total > MAX_DURATION {
            return Err(DurationError::TooLong(text.to_owned()));
        }
        rest = tail.trim_start();
    }
    Ok(total)
}

/// Renders a duration in the config syntax, exactly (`"1h30m"`, `"1500ms"`).
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis == 0 {
        return "0s".to_owned();
    }
    if millis % 1000 != 0 {
        return format!("{millis}ms");
    }
    let mut secs = millis / 1000;
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            let _ = write!(out, "{}{unit}", secs / size);
            secs %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_every_unit_and_sum() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("30").unwrap_err().to_string().contains("without a unit"));
        assert!(parse_duration("3 weeks").unwrap_err().to_string().contains("unknown unit"));
        assert!(parse_duration("").is_err());
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn durations_beyond_a_century_are_refused() {
        assert_eq!(parse_duration("36500d"), Ok(MAX_DURATION));
        for text in ["36501d", "200000000000000d", "1e30s", "36500d1ms", "18446744073709551615s"] {
            assert!(parse_duration(text).is_err(), "{text}");
        }
    }
}
