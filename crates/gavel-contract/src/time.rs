//! Instants, spans and calendar dates as the contract and the engine use them.
//!
//! The core never reads the clock: callers pass `Timestamp`s in. Everything is UTC and
//! millisecond-precise, which is what the ledger records.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn millis(self) -> i64 {
        self.0
    }

    pub fn saturating_add(self, span: Span) -> Timestamp {
        Timestamp(self.0.saturating_add(span.millis_i64()))
    }

    pub fn saturating_sub(self, span: Span) -> Timestamp {
        Timestamp(self.0.saturating_sub(span.millis_i64()))
    }

    /// RFC 3339 in UTC with millisecond precision, e.g. `2026-11-22T12:00:00.000Z`.
    pub fn to_rfc3339(self) -> String {
        let days = self.0.div_euclid(86_400_000);
        let ms_of_day = self.0.rem_euclid(86_400_000);
        let date = Date::from_days_since_epoch(days);
        let (h, rem) = (ms_of_day / 3_600_000, ms_of_day % 3_600_000);
        let (m, rem) = (rem / 60_000, rem % 60_000);
        let (s, ms) = (rem / 1000, rem % 1000);
        format!("{date}T{h:02}:{m:02}:{s:02}.{ms:03}Z")
    }

    /// Parses `YYYY-MM-DD` (midnight UTC) or `YYYY-MM-DDTHH:MM:SS[.fff]Z`.
    pub fn parse_rfc3339(text: &str) -> Option<Timestamp> {
        let (date_part, time_part) = match text.split_once('T') {
            Some((d, t)) => (d, Some(t)),
            None => (text, None),
        };
        let date = Date::parse(date_part)?;
        let mut ms = date.days_since_epoch().checked_mul(86_400_000)?;
        if let Some(t) = time_part {
            let t = t.strip_suffix('Z')?;
            let (hms, frac) = match t.split_once('.') {
                Some((hms, frac)) => (hms, frac),
                None => (t, ""),
            };
            let mut it = hms.split(':');
            let h: i64 = parse_fixed_digits(it.next()?, 2)?;
            let m: i64 = parse_fixed_digits(it.next()?, 2)?;
            let s: i64 = parse_fixed_digits(it.next()?, 2)?;
            if it.next().is_some() || h > 23 || m > 59 || s > 60 {
                return None;
            }
            let frac_ms: i64 = match frac.len() {
                0 => 0,
                1..=9 if frac.bytes().all(|b| b.is_ascii_digit()) => {
                    let padded = format!("{frac:0<3}");
                    padded.get(..3)?.parse().ok()?
                }
                _ => return None,
            };
            ms = ms.checked_add(h * 3_600_000 + m * 60_000 + s * 1000 + frac_ms)?;
        }
        Some(Timestamp(ms))
    }
}

fn parse_fixed_digits(text: &str, len: usize) -> Option<i64> {
    if text.len() != len || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// A length of time written in the contract as `30s`, `1m`, `24h`, `7d` or `2w`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span {
    millis: u64,
}

impl Span {
    pub const fn from_millis(millis: u64) -> Span {
        Span { millis }
    }

    pub const fn from_secs(secs: u64) -> Span {
        Span {
            millis: secs * 1000,
        }
    }

    pub const fn from_days(days: u64) -> Span {
        Span::from_secs(days * 86_400)
    }

    pub fn millis(self) -> u64 {
        self.millis
    }

    fn millis_i64(self) -> i64 {
        i64::try_from(self.millis).unwrap_or(i64::MAX)
    }

    /// Parses `<positive integer><unit>` with unit `ms`, `s`, `m`, `h`, `d` or `w`.
    pub fn parse(text: &str) -> Result<Span, String> {
        let digits_end = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(digits_end);
        let count: u64 = number.parse().map_err(|_| {
            format!("`{text}` is not a duration; expected e.g. `30s`, `1m`, `24h`, `7d`")
        })?;
        if unit.is_empty() {
            return Err(format!(
                "`{text}` has no unit; expected e.g. `30s`, `1m`, `24h`, `7d`"
            ));
        }
        let unit_ms: u64 = match unit {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            _ => {
                return Err(format!(
                    "`{text}` has unknown unit `{unit}`; expected one of ms, s, m, h, d, w"
                ))
            }
        };
        if count == 0 {
            return Err(format!("`{text}` is zero; a duration must be positive"));
        }
        let millis = count
            .checked_mul(unit_ms)
            .ok_or_else(|| format!("`{text}` is too long a duration"))?;
        Ok(Span { millis })
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 5] = [
            (7 * 86_400_000, "w"),
            (86_400_000, "d"),
            (3_600_000, "h"),
            (60_000, "m"),
            (1000, "s"),
        ];
        for (size, unit) in UNITS {
            if self.millis.is_multiple_of(size) {
                return write!(f, "{}{unit}", self.millis / size);
            }
        }
        write!(f, "{}ms", self.millis)
    }
}

impl Serialize for Span {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Span::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A proleptic Gregorian calendar date.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    pub year: i32,
    pub month: u8,
    pub day: u8,
}

impl Date {
    /// Parses `YYYY-MM-DD`, rejecting impossible days such as `2026-02-30`.
    pub fn parse(text: &str) -> Option<Date> {
        let mut parts = text.split('-');
        let year = parse_fixed_digits(parts.next()?, 4)?;
        let month = parse_fixed_digits(parts.next()?, 2)?;
        let day = parse_fixed_digits(parts.next()?, 2)?;
        if parts.next().is_some() || !(1..=12).contains(&month) {
            return None;
        }
        let date = Date {
            year: i32::try_from(year).ok()?,
            month: u8::try_from(month).ok()?,
            day: u8::try_from(day).ok()?,
        };
        (day >= 1 && date.day <= days_in_month(date.year, date.month)).then_some(date)
    }

    /// Days since 1970-01-01 (Howard Hinnant's `days_from_civil`).
    pub fn days_since_epoch(self) -> i64 {
        let y = i64::from(self.year) - i64::from(self.month <= 2);
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let m = i64::from(self.month);
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(self.day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// Inverse of `days_since_epoch` (Hinnant's `civil_from_days`).
    pub fn from_days_since_epoch(days: i64) -> Date {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        Date {
            year: i32::try_from(year).unwrap_or(i32::MAX),
            month: u8::try_from(month).unwrap_or(1),
            day: u8::try_from(day).unwrap_or(1),
        }
    }

    /// Midnight UTC at the start of this date.
    pub fn start(self) -> Timestamp {
        Timestamp(self.days_since_epoch().saturating_mul(86_400_000))
    }
}

fn days_in_month(year: i32, month: u8) -> u8 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

impl Serialize for Date {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_parse_and_print() {
        assert_eq!(Span::parse("1m").unwrap().millis(), 60_000);
        assert_eq!(Span::parse("24h").unwrap().to_string(), "1d");
        assert_eq!(Span::parse("90s").unwrap().to_string(), "90s");
        assert!(Span::parse("0s").is_err());
        assert!(Span::parse("5y").unwrap_err().contains("unknown unit"));
        assert!(Span::parse("m").is_err());
        assert!(Span::parse("99999999999999999999d").is_err());
    }

    #[test]
    fn dates_round_trip_and_reject_impossible_days() {
        let d = Date::parse("2026-12-31").unwrap();
        assert_eq!(Date::from_days_since_epoch(d.days_since_epoch()), d);
        assert_eq!(Date::parse("1970-01-01").unwrap().days_since_epoch(), 0);
        assert_eq!(
            Date::parse("2000-03-01").unwrap().days_since_epoch(),
            11_017
        );
        assert!(Date::parse("2026-02-29").is_none());
        assert!(Date::parse("2024-02-29").is_some());
        assert!(Date::parse("2026-13-01").is_none());
        assert!(Date::parse("2026-1-01").is_none());
    }

    #[test]
    fn timestamps_format_and_parse() {
        let t = Timestamp::parse_rfc3339("2026-11-22T12:34:56.789Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-22T12:34:56.789Z");
        assert_eq!(Timestamp(0).to_rfc3339(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            Timestamp::parse_rfc3339("2026-11-22").unwrap(),
            Date::parse("2026-11-22").unwrap().start()
        );
        assert!(Timestamp::parse_rfc3339("2026-11-22T25:00:00Z").is_none());
        assert!(Timestamp::parse_rfc3339("yesterday").is_none());
    }
}
