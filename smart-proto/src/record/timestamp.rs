//! RFC 3339 timestamps with microsecond precision (PROTOCOL.md §6): [`Timestamp`].

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

use super::quote;
use crate::{Error, Result};

const MICROS_PER_SEC: i64 = 1_000_000;
const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SEC;
/// `0000-01-01T00:00:00.000000Z`: RFC 3339 has four-digit years.
const MIN_MICROS: i64 = -62_167_219_200_000_000;
/// `9999-12-31T23:59:59.999999Z`.
const MAX_MICROS: i64 = 253_402_300_799_999_999;
/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
const TEXT_LEN: usize = 27;

///
/// The range is that of RFC 3339's four-digit years, [`Timestamp::MIN`] to [`Timestamp::MAX`]. The
/// crate never reads the clock: the caller passes the time in (from [`SystemTime`], or micros).
///
/// ```
/// use smart_proto::Timestamp;
///
/// let t = Timestamp::parse("2024-03-11T00:43:33.256667Z").unwrap();
/// assert_eq!(t.as_unix_micros(), 1_710_117_813_256_667);
/// assert_eq!(t.to_string(), "2024-03-11T00:43:33.256667Z");
/// assert!(Timestamp::UNIX_EPOCH < t);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    micros: i64,
    // The text is kept beside the instant so that `as_str`, and with it every query over a timestamp,
    // needs no allocation. It is a function of `micros`, so the derived comparisons stay consistent.
    text: [u8; TEXT_LEN],
}

impl Timestamp {
    /// The earliest timestamp, `0000-01-01T00:00:00.000000Z`.
    ///
    /// ```
    /// use smart_proto::Timestamp;
    /// assert_eq!(Timestamp::MIN.as_str(), "0000-01-01T00:00:00.000000Z");
    /// ```
    pub const MIN: Timestamp = Timestamp::from_unix_micros(MIN_MICROS);

    /// The latest timestamp, `9999-12-31T23:59:59.999999Z`.
    ///
    /// ```
    /// use smart_proto::Timestamp;
    /// assert_eq!(Timestamp::MAX.as_str(), "9999-12-31T23:59:59.999999Z");
    /// ```
    pub const MAX: Timestamp = Timestamp::from_unix_micros(MAX_MICROS);

    /// `1970-01-01T00:00:00.000000Z`, also the [`Default`].
    ///
    /// ```
    /// use smart_proto::Timestamp;
    /// assert_eq!(Timestamp::UNIX_EPOCH, Timestamp::default());
    /// assert_eq!(Timestamp::UNIX_EPOCH.as_str(), "1970-01-01T00:00:00.000000Z");
    /// ```
    pub const UNIX_EPOCH: Timestamp = Timestamp::from_unix_micros(0);

    /// From microseconds since the Unix epoch. Values outside [`Timestamp::MIN`]..=[`Timestamp::MAX`]
    /// are clamped to that range.
    ///
    /// ```
    /// use smart_proto::Timestamp;
    ///
    /// assert_eq!(Timestamp::from_unix_micros(1_500_000).as_str(), "1970-01-01T00:00:01.500000Z");
    /// assert_eq!(Timestamp::from_unix_micros(-1).as_str(), "1969-12-31T23:59:59.999999Z");
    /// assert_eq!(Timestamp::from_unix_micros(i64::MAX), Timestamp::MAX);
    /// ```
    pub const fn from_unix_micros(micros: i64) -> Timestamp {
        let micros = if micros < MIN_MICROS {
            MIN_MICROS
        } else if micros > MAX_MICROS {
            MAX_MICROS
        } else {
            micros
        };
        Timestamp {
            micros,
            text: format_rfc3339(micros),
        }
    }

    /// Microseconds since the Unix epoch.
    ///
    /// ```
    /// use smart_proto::Timestamp;
    /// assert_eq!(Timestamp::from_unix_micros(42).as_unix_micros(), 42);
    /// ```
    pub const fn as_unix_micros(self) -> i64 {
        self.micros
    }

    /// The RFC 3339 text, `2024-03-11T00:43:33.256667Z` (always 27 bytes).
    ///
    /// ```
    /// use smart_proto::Timestamp;
    /// let t = Timestamp::from_unix_micros(1_710_117_813_256_667);
    /// assert_eq!(t.as_str(), "2024-03-11T00:43:33.256667Z");
    /// ```
    pub fn as_str(&self) -> &str {
        // The text is ASCII by construction; the fallback only keeps this total.
        std::str::from_utf8(&self.text).unwrap_or("")
    }

    /// Parse an RFC 3339 timestamp: `YYYY-MM-DDTHH:MM:SS`, an optional fraction of 1 to 9 digits
    /// (digits beyond microseconds are truncated), and `Z` or an offset `±HH:MM`, which is converted to
    /// UTC. `t`, `z` and a space in place of `T` are accepted as RFC 3339 allows. Leap seconds and
    /// instants outside years 0000..=9999 (in UTC) are errors.
    ///
    /// ```
    /// use smart_proto::Timestamp;
    ///
    /// let t = Timestamp::parse("2024-03-11T00:43:33.256667Z").unwrap();
    /// assert_eq!(Timestamp::parse("2024-03-11T00:43:33.256667891+00:00").unwrap(), t);
    /// assert_eq!(Timestamp::parse("2024-03-11T01:43:33.256667+01:00").unwrap(), t);
    /// assert_eq!(Timestamp::parse("2024-03-11T00:43:33Z").unwrap().to_string(), "2024-03-11T00:43:33.000000Z");
    ///
    /// let err = Timestamp::parse("2024-02-30T00:00:00Z").unwrap_err();
    /// assert_eq!(err.to_string(), "bad timestamp \"2024-02-30T00:00:00Z\": day out of range for the month");
    /// ```
    pub fn parse(s: &str) -> Result<Timestamp> {
        parse_rfc3339(s.as_bytes()).map_err(|reason| Error::Timestamp {
            text: quote(s),
            reason,
        })
    }
}

impl Default for Timestamp {
    fn default() -> Timestamp {
        Timestamp::UNIX_EPOCH
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Timestamp").field(&self.as_str()).finish()
    }
}

/// Same as [`Timestamp::parse`].
impl FromStr for Timestamp {
    type Err = Error;

    fn from_str(s: &str) -> Result<Timestamp> {
        Timestamp::parse(s)
    }
}

/// The caller reads the clock; this converts (clamping like [`Timestamp::from_unix_micros`]).
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use smart_proto::Timestamp;
///
/// let t = Timestamp::from(UNIX_EPOCH + Duration::from_micros(1_710_117_813_256_667));
/// assert_eq!(t.as_str(), "2024-03-11T00:43:33.256667Z");
/// ```
impl From<SystemTime> for Timestamp {
    fn from(time: SystemTime) -> Timestamp {
        let micros = match time.duration_since(UNIX_EPOCH) {
            Ok(after) => i64::try_from(after.as_micros()).unwrap_or(i64::MAX),
            Err(before) => i64::try_from(before.duration().as_micros()).map_or(i64::MIN, |m| -m),
        };
        Timestamp::from_unix_micros(micros)
    }
}

/// Written as its RFC 3339 text.
impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Read with [`Timestamp::parse`].
impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Timestamp, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Timestamp::parse(&text).map_err(de::Error::custom)
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
const fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y.rem_euclid(400);
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The inverse of [`days_from_civil`]: `(year, month, day)`.
const fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + if month <= 2 { 1 } else { 0 };
    (year, month, day)
}

const fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

const fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Writes `value` as `width` zero-padded decimal digits at `at`.
const fn put_digits(text: &mut [u8; TEXT_LEN], at: usize, value: i64, width: usize) {
    let mut value = value;
    let mut i = width;
    while i > 0 {
        i -= 1;
        text[at + i] = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// `micros` must be within `MIN_MICROS..=MAX_MICROS`.
const fn format_rfc3339(micros: i64) -> [u8; TEXT_LEN] {
    let (year, month, day) = civil_from_days(micros.div_euclid(MICROS_PER_DAY));
    let of_day = micros.rem_euclid(MICROS_PER_DAY);
    let seconds = of_day / MICROS_PER_SEC;
    let mut text = *b"0000-00-00T00:00:00.000000Z";
    put_digits(&mut text, 0, year, 4);
    put_digits(&mut text, 5, month, 2);
    put_digits(&mut text, 8, day, 2);
    put_digits(&mut text, 11, seconds / 3600, 2);
    put_digits(&mut text, 14, seconds / 60 % 60, 2);
    put_digits(&mut text, 17, seconds % 60, 2);
    put_digits(&mut text, 20, of_day % MICROS_PER_SEC, 6);
    text
}

/// `count` ASCII digits at `at`, if they are there.
fn digits_at(b: &[u8], at: usize, count: usize) -> Option<i64> {
    let digits = b.get(at..at + count)?;
    digits.iter().try_fold(0_i64, |acc, &d| {
        d.is_ascii_digit().then(|| acc * 10 + i64::from(d - b'0'))
    })
}

fn parse_rfc3339(b: &[u8]) -> Result<Timestamp, &'static str> {
    const SHAPE: &str =
        "expected YYYY-MM-DDTHH:MM:SS, an optional fraction, then Z or an offset like +01:00";
    let separators_ok = b.get(4) == Some(&b'-')
        && b.get(7) == Some(&b'-')
        && matches!(b.get(10), Some(b'T' | b't' | b' '))
        && b.get(13) == Some(&b':')
        && b.get(16) == Some(&b':');
    if !separators_ok {
        return Err(SHAPE);
    }
    let field = |at, count| digits_at(b, at, count).ok_or(SHAPE);
    let (year, month, day) = (field(0, 4)?, field(5, 2)?, field(8, 2)?);
    let (hour, minute, second) = (field(11, 2)?, field(14, 2)?, field(17, 2)?);

    let mut rest = &b[19..];
    let mut fraction_micros = 0;
    if let Some(after_dot) = rest.strip_prefix(b".") {
        let count = after_dot.iter().take_while(|d| d.is_ascii_digit()).count();
        if count == 0 {
            return Err("expected digits after the '.'");
        }
        if count > 9 {
            return Err("more than 9 fraction digits");
        }
        // Only microseconds are kept; further digits are truncated.
        for i in 0..6 {
            let digit = after_dot
                .get(i)
                .filter(|_| i < count)
                .map_or(0, |d| i64::from(d - b'0'));
            fraction_micros = fraction_micros * 10 + digit;
        }
        rest = &after_dot[count..];
    }
    let offset_seconds = match rest {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let hours = digits_at(&[*h1, *h2], 0, 2).ok_or(SHAPE)?;
            let minutes = digits_at(&[*m1, *m2], 0, 2).ok_or(SHAPE)?;
            if hours > 23 || minutes > 59 {
                return Err("offset out of range");
            }
            let seconds = hours * 3600 + minutes * 60;
            if *sign == b'-' { -seconds } else { seconds }
        }
        _ => return Err(SHAPE),
    };

    if !(1..=12).contains(&month) {
        return Err("month out of range");
    }
    if day < 1 || day > days_in_month(year, month) {
        return Err("day out of range for the month");
    }
    if hour > 23 {
        return Err("hour out of range");
    }
    if minute > 59 {
        return Err("minute out of range");
    }
    if second > 59 {
        return Err("second out of range (leap seconds are not supported)");
    }
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
        - offset_seconds;
    let micros = seconds * MICROS_PER_SEC + fraction_micros;
    if !(MIN_MICROS..=MAX_MICROS).contains(&micros) {
        return Err("out of range: years 0000 to 9999 in UTC");
    }
    Ok(Timestamp::from_unix_micros(micros))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use super::*;

    #[test]
    fn civil_conversion_round_trips_every_day_of_four_centuries() {
        let start = days_from_civil(1800, 1, 1);
        let mut expected = (1800, 1, 1);
        for days in start..start + 146_097 * 2 {
            assert_eq!(civil_from_days(days), expected);
            assert_eq!(days_from_civil(expected.0, expected.1, expected.2), days);
            let (y, m, d) = expected;
            expected = if d < days_in_month(y, m) {
                (y, m, d + 1)
            } else if m < 12 {
                (y, m + 1, 1)
            } else {
                (y + 1, 1, 1)
            };
        }
    }

    #[test]
    fn known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(0, 1, 1) * MICROS_PER_DAY, MIN_MICROS);
        assert_eq!(
            (days_from_civil(9999, 12, 31) + 1) * MICROS_PER_DAY - 1,
            MAX_MICROS
        );
        assert!(is_leap_year(2000) && is_leap_year(2024) && !is_leap_year(1900));
    }

    #[test]
    fn timestamp_formats_seed_examples() {
        let t = Timestamp::parse("2024-03-11T00:46:52.690962Z").unwrap();
        assert_eq!(t.to_string(), "2024-03-11T00:46:52.690962Z");
        assert_eq!(
            format!("{t:?}"),
            "Timestamp(\"2024-03-11T00:46:52.690962Z\")"
        );
    }

    #[test]
    fn timestamp_accepts_variants() {
        let t = Timestamp::parse("2024-03-17T14:59:13.047108Z").unwrap();
        for text in [
            "2024-03-17T14:59:13.047108+00:00",
            "2024-03-17t14:59:13.047108z",
            "2024-03-17 14:59:13.047108Z",
            "2024-03-17T14:59:13.047108-00:00",
            "2024-03-17T14:59:13.0471089Z",
            "2024-03-17T16:29:13.047108+01:30",
            "2024-03-17T13:59:13.047108-01:00",
        ] {
            assert_eq!(Timestamp::parse(text).unwrap(), t, "{text}");
        }
        assert_eq!(
            Timestamp::parse("2024-03-17T14:59:13.5Z").unwrap().as_str(),
            "2024-03-17T14:59:13.500000Z"
        );
        assert_eq!(
            Timestamp::parse("2024-03-17T14:59:13.123456789Z")
                .unwrap()
                .as_str(),
            "2024-03-17T14:59:13.123456Z"
        );
        assert_eq!(
            Timestamp::parse("2024-03-01T00:30:00+01:00")
                .unwrap()
                .as_str(),
            "2024-02-29T23:30:00.000000Z"
        );
    }

    #[test]
    fn timestamp_rejects_bad_text() {
        for (text, reason) in [
            ("", "expected YYYY-MM-DDTHH:MM:SS"),
            ("2024-03-17", "expected YYYY-MM-DDTHH:MM:SS"),
            ("2024-03-17T14:59:13", "expected YYYY-MM-DDTHH:MM:SS"),
            ("2024-03-17T14:59:13+0100", "expected YYYY-MM-DDTHH:MM:SS"),
            ("2024-3-17T14:59:13Z", "expected YYYY-MM-DDTHH:MM:SS"),
            ("２０２４-03-17T14:59:13Z", "expected YYYY-MM-DDTHH:MM:SS"),
            ("2024-03-17T14:59:13.Z", "expected digits after the '.'"),
            (
                "2024-03-17T14:59:13.1234567890Z",
                "more than 9 fraction digits",
            ),
            ("2024-13-17T14:59:13Z", "month out of range"),
            ("2024-00-17T14:59:13Z", "month out of range"),
            ("2023-02-29T14:59:13Z", "day out of range for the month"),
            ("2024-04-31T14:59:13Z", "day out of range for the month"),
            ("2024-03-17T24:00:00Z", "hour out of range"),
            ("2024-03-17T14:60:13Z", "minute out of range"),
            ("2016-12-31T23:59:60Z", "second out of range"),
            ("2024-03-17T14:59:13+24:00", "offset out of range"),
            (
                "0000-01-01T00:30:00+01:00",
                "out of range: years 0000 to 9999",
            ),
            (
                "9999-12-31T23:30:00-01:00",
                "out of range: years 0000 to 9999",
            ),
            ("2024-03-17T14:59:13Z ", "expected YYYY-MM-DDTHH:MM:SS"),
        ] {
            let err = Timestamp::parse(text).unwrap_err();
            assert!(matches!(err, Error::Timestamp { .. }), "{text}");
            assert!(err.to_string().contains(reason), "{text}: {err}");
        }
        assert_eq!(
            Timestamp::parse("2024-02-29T00:00:00Z").unwrap().as_str(),
            "2024-02-29T00:00:00.000000Z"
        );
    }

    #[test]
    fn timestamp_clamps_and_converts() {
        assert_eq!(Timestamp::from_unix_micros(i64::MIN), Timestamp::MIN);
        assert_eq!(
            Timestamp::from_unix_micros(i64::MAX).as_unix_micros(),
            MAX_MICROS
        );
        assert_eq!(Timestamp::from(UNIX_EPOCH), Timestamp::UNIX_EPOCH);
        let before = UNIX_EPOCH - std::time::Duration::from_micros(1);
        assert_eq!(
            Timestamp::from(before).as_str(),
            "1969-12-31T23:59:59.999999Z"
        );
        let t: Timestamp = serde_json::from_str("\"2024-03-11T00:43:33.256667Z\"").unwrap();
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            "\"2024-03-11T00:43:33.256667Z\""
        );
        assert!(serde_json::from_str::<Timestamp>("\"yesterday\"").is_err());
        assert_eq!(
            "1970-01-01T00:00:00Z".parse::<Timestamp>().unwrap(),
            Timestamp::default()
        );
    }
}
