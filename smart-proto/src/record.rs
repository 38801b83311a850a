//! The typed device record (PROTOCOL.md §6).
//!
//! A device message becomes an [`Update`]: its normalized fields, with every known field checked and
//! coerced to its type (numbers from numeric strings, postcodes from numbers, integral `pv_connectors`).
//! The server keeps one [`Record`] per serial and [applies](Record::apply) updates to it; what changed is
//! the body of the UPDT that dashboards receive.
//!
//! ```
//! use smart_proto::{Record, Serial, Timestamp, Update, normalize, parse_body};
//!
//! let serial = Serial::new("0001").unwrap();
//! let seen = Timestamp::parse("2024-03-11T00:43:33.256667Z").unwrap();
//! let mut record = Record::new(serial.clone(), "EET", seen);
//!
//! let body = parse_body(r#"{"battery": "350", "postcode": 7445}"#).unwrap();
//! let update = Update::from_normalized(normalize(body, &serial).unwrap()).unwrap();
//! let changed = record.apply(&update, seen);
//!
//! assert_eq!(record.battery, Some(350.0));
//! assert_eq!(record.postcode, "7445");
//! assert_eq!(
//!     serde_json::Value::Object(changed).to_string(),
//!     r#"{"battery":350,"last_status_update":"2024-03-11T00:43:33.256667Z","postcode":"7445"}"#
//! );
//! ```

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::io;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::{self, Deserializer};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

use crate::{Error, Normalized, Result, Serial};

const MICROS_PER_SEC: i64 = 1_000_000;
const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SEC;
/// `0000-01-01T00:00:00.000000Z`: RFC 3339 has four-digit years.
const MIN_MICROS: i64 = -62_167_219_200_000_000;
/// `9999-12-31T23:59:59.999999Z`.
const MAX_MICROS: i64 = 253_402_300_799_999_999;
/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
const TEXT_LEN: usize = 27;
/// Integral numbers below this magnitude are exact in an `f64` and are written as JSON integers.
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_992.0;
/// Values quoted in error messages are cut to about this many bytes.
const QUOTE_BYTES: usize = 64;

/// An instant with microsecond precision, written as RFC 3339 UTC with exactly six fraction digits
/// (`2024-03-11T00:43:33.256667Z`).
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

/// `s` cut to a length fit for an error message.
fn quote(s: &str) -> String {
    crate::error::shorten(s, QUOTE_BYTES)
}

/// A number written as text: `"357"`, `" 12.5 "`, `"-1e3"`. Surrounding whitespace is ignored;
/// `inf`, `NaN` and values that overflow are not numbers.
pub(crate) fn parse_number(text: &str) -> Option<f64> {
    let text = text.trim();
    let bytes = text.as_bytes();
    let unsigned = usize::from(matches!(bytes.first(), Some(b'+' | b'-')));
    // Rust's float syntax also takes `inf` and `NaN`; a device sending those has no number to report.
    if !matches!(bytes.get(unsigned), Some(b'0'..=b'9' | b'.')) {
        return None;
    }
    let value: f64 = text.parse().ok()?;
    // `+ 0.0` turns `-0` into `0`, so that zero has one form.
    value.is_finite().then_some(value + 0.0)
}

/// An integral `f64` that fits an `i64` exactly.
fn integral(x: f64) -> Option<i64> {
    // -2^63 is representable; 2^63 is the first value too large.
    let in_range = (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&x);
    (in_range && x.fract() == 0.0).then_some(x as i64)
}

/// The canonical JSON form of a number: integral values that an `f64` holds exactly are integers
/// (`350`, not `350.0`).
fn number_value(x: f64) -> Value {
    if x.abs() < MAX_SAFE_INTEGER && x.fract() == 0.0 {
        Value::from(x as i64)
    } else {
        Number::from_f64(x).map_or(Value::Null, Value::Number)
    }
}

/// What a key holds, per the table of PROTOCOL.md §6.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FieldKind {
    Text,
    Postcode,
    Number,
    Integer,
    OptionalText,
    /// `serial_number` and the server fields: never taken from a device.
    Reserved,
    Extra,
}

impl FieldKind {
    fn of(key: &str) -> FieldKind {
        FieldKind::named(key).map_or(FieldKind::Extra, |(_, kind)| kind)
    }

    /// The crate's own copy of a known or reserved field name, and its kind; `None` for other keys.
    fn named(key: &str) -> Option<(&'static str, FieldKind)> {
        Some(match key {
            "software_version" => ("software_version", FieldKind::Text),
            "country" => ("country", FieldKind::Text),
            "solmate_version" => ("solmate_version", FieldKind::Text),
            "postcode" => ("postcode", FieldKind::Postcode),
            "power_income" => ("power_income", FieldKind::Number),
            "power_inject" => ("power_inject", FieldKind::Number),
            "power_consumption" => ("power_consumption", FieldKind::Number),
            "battery" => ("battery", FieldKind::Number),
            "capacity" => ("capacity", FieldKind::Number),
            "pv_connectors" => ("pv_connectors", FieldKind::Integer),
            "local_time" => ("local_time", FieldKind::OptionalText),
            "serial_number" => ("serial_number", FieldKind::Reserved),
            "owner" => ("owner", FieldKind::Reserved),
            "manufacturing_date" => ("manufacturing_date", FieldKind::Reserved),
            "last_status_update" => ("last_status_update", FieldKind::Reserved),
            "online" => ("online", FieldKind::Reserved),
            _ => return None,
        })
    }

    fn expected(self) -> &'static str {
        match self {
            FieldKind::Text => "a string",
            FieldKind::Postcode => "a string or an integer",
            FieldKind::Number => "a number, numeric string or null",
            FieldKind::Integer => "an integer from 0 to 9007199254740991",
            FieldKind::OptionalText => "a string or null",
            FieldKind::Reserved | FieldKind::Extra => "anything",
        }
    }

    /// Turn `value` into its canonical type in place; `false` (and `value` untouched) if it has the
    /// wrong type. Values already in canonical form, the common case, are left as they are.
    #[allow(clippy::inline_always, reason = "hot path, measured")]
    #[inline(always)]
    fn coerce(self, value: &mut Value) -> bool {
        match (self, &*value) {
            (FieldKind::Text | FieldKind::Postcode, Value::String(_))
            | (FieldKind::OptionalText, Value::String(_) | Value::Null)
            | (FieldKind::Number, Value::Null)
            | (FieldKind::Reserved | FieldKind::Extra, _) => true,
            (FieldKind::Number, Value::Number(n)) if is_canonical_number(n) => true,
            (FieldKind::Integer, Value::Number(n)) if n.is_i64() => true,
            _ => self.coerce_changing(value),
        }
    }

    /// The part of [`FieldKind::coerce`] that changes the value or refuses it.
    #[inline(never)]
    fn coerce_changing(self, value: &mut Value) -> bool {
        let canonical = match (self, &*value) {
            (FieldKind::Postcode, Value::Number(n)) => postcode_text(n).map(Value::String),
            (FieldKind::Number, Value::Number(n)) => n.as_f64().map(|x| number_value(x + 0.0)),
            (FieldKind::Number, Value::String(s)) => parse_number(s).map(number_value),
            // Past `i64`, only an integral float is accepted.
            (FieldKind::Integer, Value::Number(n)) => n
                .as_f64()
                .filter(|_| n.is_f64())
                .and_then(integral)
                .map(Value::from),
            _ => None,
        };
        match canonical {
            Some(canonical) => {
                *value = canonical;
                true
            }
            None => false,
        }
    }
}

/// A number that [`number_value`] would give back unchanged: an integer below 2^53 in magnitude, or a
/// float with a fraction.
#[allow(clippy::inline_always, reason = "hot path, measured")]
#[inline(always)]
fn is_canonical_number(n: &Number) -> bool {
    match n.as_i64() {
        Some(i) => i.unsigned_abs() < 1 << 53,
        // Below 2^53 the cast back and forth is exact for integral values only (and cheaper than
        // `fract`, a library call on baseline x86-64).
        #[allow(clippy::float_cmp, reason = "an exact test of integrality")]
        None => n.is_f64() && n.as_f64().is_some_and(|x| (x as i64) as f64 != x),
    }
}

/// The decimal text of an integral postcode number (`7445` → `"7445"`), or `None` for fractions.
fn postcode_text(n: &Number) -> Option<String> {
    if n.is_f64() {
        let x = n.as_f64()?;
        if !x.is_finite() || x.fract() != 0.0 {
            return None;
        }
        // Rust prints integral floats without a fraction or exponent; `+ 0.0` drops `-0`.
        Some(format!("{}", x + 0.0))
    } else {
        Some(n.to_string())
    }
}

/// One field of an update: its name (the crate's own copy for known fields, so that they cost no
/// allocation) and its value.
type Field = (Cow<'static, str>, Value);

/// The normalized, type-checked fields of one device message: known fields coerced to their type
/// (numbers from numeric strings, postcode from numbers, integral `pv_connectors`), others kept as sent.
///
/// ```
/// use smart_proto::{Serial, Update, normalize, parse_body};
///
/// let serial = Serial::new("0001").unwrap();
/// let body = parse_body("{'_battery': ' 12.5 ', 'pv_connectors': 2.0, 'charging': False}").unwrap();
/// let update = Update::from_normalized(normalize(body, &serial).unwrap()).unwrap();
/// assert_eq!(
///     serde_json::Value::Object(update.as_map().clone()).to_string(),
///     r#"{"battery":12.5,"charging":false,"pv_connectors":2}"#
/// );
/// ```
#[derive(Clone, Default)]
pub struct Update {
    /// In key order, names unique. A list rather than a map: a typical update has a few fields, and
    /// building and dropping a map for them would cost more than the parse.
    fields: Vec<Field>,
    /// The fields as a map, built on the first [`Update::as_map`].
    map: OnceLock<Map<String, Value>>,
}

impl Update {
    /// Type-check and coerce a normalized body. Any known field of the wrong type fails the whole
    /// update with [`Error::FieldType`]. The rules, per field:
    ///
    /// - `software_version`, `country`, `solmate_version`: a string.
    /// - `postcode`: a string, or an integral number, which becomes its decimal text (`7445` → `"7445"`).
    /// - `power_income`, `power_inject`, `power_consumption`, `battery`, `capacity`: a number, `null`, or
    ///   a string holding a number (`"357"`; surrounding whitespace is ignored; `"inf"` and `"NaN"` are not
    ///   numbers). Integral values are kept as integers (`350`, not `350.0`).
    /// - `pv_connectors`: an integer from 0 to 2^53−1, or an integral float (`2.0` → `2`); `null` and
    ///   negative counts are type errors too.
    /// - `local_time`: a string or `null`.
    /// - any other field: kept as sent.
    ///
    /// ```
    /// use smart_proto::{Error, Serial, Update, normalize, parse_body};
    ///
    /// let serial = Serial::new("0001").unwrap();
    /// let body = parse_body(r#"{"battery": "full"}"#).unwrap();
    /// let err = Update::from_normalized(normalize(body, &serial).unwrap()).unwrap_err();
    /// assert!(matches!(err, Error::FieldType { .. }));
    /// assert_eq!(err.to_string(), r#"field "battery" must be a number, numeric string or null, got "full""#);
    /// ```
    pub fn from_normalized(fields: Normalized) -> Result<Update> {
        Update::coerce(fields.into_map(), Source::Device)
    }

    /// Coerces each value in place; the text of a wrong value is only written for the error.
    fn coerce(map: Map<String, Value>, source: Source) -> Result<Update> {
        let len = map.len();
        let mut update = Update::coerce_in_order(map, len, source)?;
        // In key order already, unless serde_json's `preserve_order` kept the order sent.
        if !update.fields.is_sorted_by(|a, b| a.0 < b.0) {
            update.fields.sort_by(|a, b| a.0.cmp(&b.0));
        }
        Ok(update)
    }

    /// [`Update::coerce`] for normalized entries in any order, with unique keys.
    pub(crate) fn from_entries(mut entries: Vec<(String, Value)>) -> Result<Update> {
        // Sorted first, so that a type error names the first bad field in key order, as for a map.
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let len = entries.len();
        Update::coerce_in_order(entries, len, Source::Device)
    }

    fn coerce_in_order(
        entries: impl IntoIterator<Item = (String, Value)>,
        len: usize,
        source: Source,
    ) -> Result<Update> {
        let mut fields: Vec<Field> = Vec::with_capacity(len);
        for (key, mut value) in entries {
            let kind = FieldKind::of(&key);
            if kind == FieldKind::Reserved {
                // Normalization already removed these; a device may not set them in any case.
                continue;
            }
            let coerced = kind.coerce(&mut value);
            // A device's count of connectors is never negative (stored records are read as they are).
            let counted = kind != FieldKind::Integer
                || source == Source::Stored
                || crate::limits::is_connector_count(&value);
            if !coerced || !counted {
                return Err(Error::FieldType {
                    field: quote(&key),
                    expected: kind.expected(),
                    got: quote(&value.to_string()),
                });
            }
            fields.push((Cow::Owned(key), value));
        }
        Ok(Update {
            fields,
            map: OnceLock::new(),
        })
    }

    /// The coerced fields as a map, in key order. Built on first use (the server reads the fields
    /// with [`Update::iter`] and never needs it).
    ///
    /// ```
    /// use smart_proto::{Serial, Update, normalize, parse_body};
    ///
    /// let serial = Serial::new("0001").unwrap();
    /// let body = parse_body(r#"{"postcode": 8020}"#).unwrap();
    /// let update = Update::from_normalized(normalize(body, &serial).unwrap()).unwrap();
    /// assert_eq!(update.as_map()["postcode"], "8020");
    /// ```
    pub fn as_map(&self) -> &Map<String, Value> {
        self.map.get_or_init(|| {
            self.iter()
                .map(|(key, value)| (key.to_owned(), value.clone()))
                .collect()
        })
    }

    /// The coerced fields, in key order.
    ///
    /// ```
    /// use smart_proto::{Serial, Update, normalize, parse_body};
    ///
    /// let serial = Serial::new("0001").unwrap();
    /// let body = parse_body(r#"{"power_inject": "357", "battery": 92.5}"#).unwrap();
    /// let update = Update::from_normalized(normalize(body, &serial).unwrap()).unwrap();
    /// let fields: Vec<(&str, String)> = update.iter().map(|(k, v)| (k, v.to_string())).collect();
    /// assert_eq!(fields, [("battery", "92.5".to_owned()), ("power_inject", "357".to_owned())]);
    /// ```
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Value)> + '_ {
        self.fields.iter().map(|(key, value)| (key.as_ref(), value))
    }

    /// One field's coerced value.
    ///
    /// ```
    /// use smart_proto::{Serial, Update, normalize, parse_body};
    ///
    /// let serial = Serial::new("0001").unwrap();
    /// let body = parse_body(r#"{"battery": "92.5"}"#).unwrap();
    /// let update = Update::from_normalized(normalize(body, &serial).unwrap()).unwrap();
    /// assert_eq!(update.get("battery"), Some(&serde_json::json!(92.5)));
    /// assert_eq!(update.get("country"), None);
    /// ```
    pub fn get(&self, key: &str) -> Option<&Value> {
        let at = self
            .fields
            .binary_search_by(|(name, _)| name.as_ref().cmp(key))
            .ok()?;
        Some(&self.fields[at].1)
    }

    /// The fields that are not known ones (the record's extras), in key order.
    pub(crate) fn extras(&self) -> impl Iterator<Item = (&str, &Value)> + '_ {
        self.iter()
            .filter(|(key, _)| FieldKind::of(key) == FieldKind::Extra)
    }

    /// Number of fields.
    ///
    /// ```
    /// use smart_proto::{Serial, Update, normalize, parse_body};
    ///
    /// let serial = Serial::new("0001").unwrap();
    /// let body = parse_body(r#"{"battery": 1, "country": "AT"}"#).unwrap();
    /// assert_eq!(Update::from_normalized(normalize(body, &serial).unwrap()).unwrap().len(), 2);
    /// ```
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// `{}`: a sign of life that changes nothing.
    ///
    /// ```
    /// use smart_proto::Update;
    /// assert!(Update::default().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

/// Where an update's fields come from: a device (every rule of PROTOCOL.md §6), or a stored record,
/// read as it was written even if a rule was added since.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Device,
    Stored,
}

/// Equal when the fields are (whether or not either map view was built).
impl PartialEq for Update {
    fn eq(&self, other: &Update) -> bool {
        self.fields == other.fields
    }
}

/// Written like the map: `Update({"battery": Number(92.5)})`.
impl fmt::Debug for Update {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Fields<'a>(&'a Update);
        impl fmt::Debug for Fields<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_map().entries(self.0.iter()).finish()
            }
        }
        f.debug_tuple("Update").field(&Fields(self)).finish()
    }
}

/// The fields of a device message read straight from the frame (the fast path of
/// [`parse_device_message`](crate::parse_device_message)), coerced as they arrive.
///
/// It declines (and the frame takes the general path, which gives the same result or the error) any key
/// that normalization would touch, and any value of the wrong type: a later duplicate key could still
/// make the message valid, and the general path reports the first bad field in key order.
#[derive(Debug, Default)]
pub(crate) struct FastFields(Vec<Field>);

impl FastFields {
    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }

    pub(crate) fn into_update(self) -> Update {
        Update {
            fields: self.0,
            map: OnceLock::new(),
        }
    }
}

impl crate::fast::FlatSink for FastFields {
    fn put(&mut self, key: &str, mut value: Value) -> bool {
        let (name, kind) = match FieldKind::named(key) {
            Some((_, FieldKind::Reserved)) => return false,
            Some((name, kind)) => (Cow::Borrowed(name), kind),
            None if crate::normalize::needs_work(key) => return false,
            None => (Cow::Owned(key.to_owned()), FieldKind::Extra),
        };
        if !kind.coerce(&mut value)
            || (kind == FieldKind::Integer && !crate::limits::is_connector_count(&value))
        {
            return false;
        }
        if self.0.capacity() == 0 {
            // Enough for a typical update, without the growth policy's bookkeeping.
            self.0 = Vec::with_capacity(4);
        }
        // Keys mostly arrive out of order, but there are few: insertion sort, keeping the later of two
        // equal keys (JSON's last-wins).
        let mut at = self.0.len();
        while at > 0 {
            match key_cmp(self.0[at - 1].0.as_bytes(), key.as_bytes()) {
                Ordering::Less => break,
                Ordering::Greater => at -= 1,
                Ordering::Equal => {
                    self.0[at - 1].1 = value;
                    return true;
                }
            }
        }
        self.0.insert(at, (name, value));
        true
    }
}

/// `str`'s order (bytewise), eight bytes at a time: keys are short and mostly differ early.
#[inline]
fn key_cmp(a: &[u8], b: &[u8]) -> Ordering {
    let (mut a, mut b) = (a, b);
    while let (Some((x, a_rest)), Some((y, b_rest))) =
        (a.split_first_chunk::<8>(), b.split_first_chunk::<8>())
    {
        if x != y {
            return u64::from_be_bytes(*x).cmp(&u64::from_be_bytes(*y));
        }
        (a, b) = (a_rest, b_rest);
    }
    for (x, y) in a.iter().zip(b) {
        if x != y {
            return x.cmp(y);
        }
    }
    a.len().cmp(&b.len())
}

/// A borrowed view of one field's value, for queries ([`Record::get`]).
///
/// ```
/// use smart_proto::{FieldValue, Record, Serial, Timestamp};
///
/// let mut record = Record::new(Serial::new("0001").unwrap(), "EET", Timestamp::UNIX_EPOCH);
/// record.battery = Some(92.5);
/// assert_eq!(record.get("battery"), Some(FieldValue::Num(92.5)));
/// assert_eq!(record.get("online"), Some(FieldValue::Bool(false)));
/// assert_eq!(record.get("power_inject"), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldValue<'a> {
    /// A string (timestamps are their RFC 3339 text).
    Str(&'a str),
    /// A number.
    Num(f64),
    /// A boolean.
    Bool(bool),
    /// A list or object (extra fields only).
    Other(&'a Value),
}

/// The latest known state of one device (PROTOCOL.md §6).
///
/// ```
/// use smart_proto::{Record, Serial, Timestamp};
///
/// let now = Timestamp::parse("2024-03-11T00:43:33.256667Z").unwrap();
/// let record = Record::new(Serial::new("0004").unwrap(), "EET", now);
/// assert_eq!(record.solmate_version, "v1");
/// assert_eq!(record.pv_connectors, 1);
/// assert_eq!(Record::from_json(&record.to_json()).unwrap(), record);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The key.
    pub serial_number: Serial,
    /// Firmware version, `""` until reported.
    pub software_version: String,
    /// Country code, `""` until reported.
    pub country: String,
    /// Postcode as text, `""` until reported.
    pub postcode: String,
    /// Hardware generation, default `"v1"`.
    pub solmate_version: String,
    /// W.
    pub power_income: Option<f64>,
    /// W.
    pub power_inject: Option<f64>,
    /// W.
    pub power_consumption: Option<f64>,
    /// Battery level.
    pub battery: Option<f64>,
    /// Capacity.
    pub capacity: Option<f64>,
    /// Number of PV connectors, default 1.
    pub pv_connectors: i64,
    /// Device local time, kept as sent.
    pub local_time: Option<String>,
    /// Set by the server at registration.
    pub owner: String,
    /// First time seen.
    pub manufacturing_date: Timestamp,
    /// Last accepted message.
    pub last_status_update: Timestamp,
    /// At least one connection has sent for this serial.
    pub online: bool,
    /// Any other field a device sent, as sent. Keys that name a known field are ignored when the
    /// record is written.
    pub extra: BTreeMap<String, Value>,
}

/// One field's value while a record is written out.
#[derive(Clone, Copy)]
enum FieldRef<'a> {
    Str(&'a str),
    OptStr(Option<&'a str>),
    Num(Option<f64>),
    Int(i64),
    Bool(bool),
    Json(&'a Value),
}

impl Serialize for FieldRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match *self {
            FieldRef::Str(s) | FieldRef::OptStr(Some(s)) => serializer.serialize_str(s),
            FieldRef::OptStr(None) | FieldRef::Num(None) => serializer.serialize_none(),
            FieldRef::Num(Some(x)) => match number_value(x) {
                Value::Number(n) => n.serialize(serializer),
                _ => serializer.serialize_none(),
            },
            FieldRef::Int(i) => serializer.serialize_i64(i),
            FieldRef::Bool(b) => serializer.serialize_bool(b),
            FieldRef::Json(v) => v.serialize(serializer),
        }
    }
}

impl FieldRef<'_> {
    fn to_value(self) -> Value {
        match self {
            FieldRef::Str(s) | FieldRef::OptStr(Some(s)) => Value::String(s.to_owned()),
            FieldRef::OptStr(None) | FieldRef::Num(None) => Value::Null,
            FieldRef::Num(Some(x)) => number_value(x),
            FieldRef::Int(i) => Value::from(i),
            FieldRef::Bool(b) => Value::Bool(b),
            FieldRef::Json(v) => v.clone(),
        }
    }
}

/// Lets `serde_json` write straight into a `String`.
struct StringWriter<'a>(&'a mut String);

impl io::Write for StringWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // serde_json hands over whole UTF-8 sequences (it splits strings only around ASCII escapes), so
        // this borrows and never replaces anything.
        self.0.push_str(&String::from_utf8_lossy(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `"key":value`, after a comma unless it is the `first` field.
#[inline]
fn write_field(out: &mut String, first: &mut bool, key: &str, value: FieldRef<'_>) {
    if !*first {
        out.push(',');
    }
    *first = false;
    write_json_value(out, key);
    out.push(':');
    match value {
        FieldRef::Bool(b) => out.push_str(if b { "true" } else { "false" }),
        FieldRef::Int(i) => {
            // Writing to a `String` cannot fail.
            let _ = write!(out, "{i}");
        }
        FieldRef::OptStr(None) | FieldRef::Num(None) => out.push_str("null"),
        other => write_json_value(out, &other),
    }
}

fn write_json_value<T: Serialize + ?Sized>(out: &mut String, value: &T) {
    // Cannot fail: strings, numbers and `Value`s (whose keys are strings) always serialize, and the
    // writer never returns an error.
    let _ = serde_json::to_writer(StringWriter(out), value);
}

impl Record {
    /// The known fields in the order of PROTOCOL.md §6, which is the order records are written in
    /// (extra fields follow, in key order).
    ///
    /// ```
    /// use smart_proto::Record;
    /// assert_eq!(Record::FIELDS[0], "serial_number");
    /// assert_eq!(Record::FIELDS.len(), 16);
    /// ```
    pub const FIELDS: [&'static str; 16] = [
        "serial_number",
        "software_version",
        "country",
        "solmate_version",
        "postcode",
        "power_income",
        "power_inject",
        "power_consumption",
        "battery",
        "capacity",
        "pv_connectors",
        "local_time",
        "owner",
        "manufacturing_date",
        "last_status_update",
        "online",
    ];

    /// A new device, first seen `now`, with every field at its default: empty strings, `solmate_version`
    /// `"v1"`, numbers `null`, one PV connector, no local time, and `online` false (the server sets it
    /// with [`Record::set_online`]).
    ///
    /// ```
    /// use smart_proto::{Record, Serial, Timestamp};
    ///
    /// let now = Timestamp::from_unix_micros(1_710_117_813_256_667);
    /// let record = Record::new(Serial::new("0004").unwrap(), "EET", now);
    /// assert_eq!(
    ///     record.to_json(),
    ///     concat!(
    ///         r#"{"serial_number":"0004","software_version":"","country":"","solmate_version":"v1","#,
    ///         r#""postcode":"","power_income":null,"power_inject":null,"power_consumption":null,"#,
    ///         r#""battery":null,"capacity":null,"pv_connectors":1,"local_time":null,"owner":"EET","#,
    ///         r#""manufacturing_date":"2024-03-11T00:43:33.256667Z","#,
    ///         r#""last_status_update":"2024-03-11T00:43:33.256667Z","online":false}"#
    ///     )
    /// );
    /// ```
    pub fn new(serial_number: Serial, owner: impl Into<String>, now: Timestamp) -> Record {
        Record {
            serial_number,
            software_version: String::new(),
            country: String::new(),
            postcode: String::new(),
            solmate_version: "v1".to_owned(),
            power_income: None,
            power_inject: None,
            power_consumption: None,
            battery: None,
            capacity: None,
            pv_connectors: 1,
            local_time: None,
            owner: owner.into(),
            manufacturing_date: now,
            last_status_update: now,
            online: false,
            extra: BTreeMap::new(),
        }
    }

    /// Apply an update received at `now`. Returns the fields whose value changed, typed, plus
    /// `last_status_update` — the body of the UPDT sent to dashboards (PROTOCOL.md §7).
    ///
    /// ```
    /// use smart_proto::{Record, Serial, Timestamp, Update, normalize, parse_body};
    ///
    /// let serial = Serial::new("0001").unwrap();
    /// let mut record = Record::new(serial.clone(), "EET", Timestamp::UNIX_EPOCH);
    /// record.battery = Some(350.0);
    ///
    /// let body = parse_body(r#"{"battery": 350.0, "power_consumption": "357"}"#).unwrap();
    /// let update = Update::from_normalized(normalize(body, &serial).unwrap()).unwrap();
    /// let later = Timestamp::from_unix_micros(1_000_000);
    /// let changed = record.apply(&update, later);
    /// // The battery did not change, so only the consumption and the time are news.
    /// assert_eq!(
    ///     serde_json::Value::Object(changed).to_string(),
    ///     r#"{"last_status_update":"1970-01-01T00:00:01.000000Z","power_consumption":357}"#
    /// );
    /// ```
    pub fn apply(&mut self, update: &Update, now: Timestamp) -> Map<String, Value> {
        let mut changed = Map::new();
        for (key, value) in update.iter() {
            if self.set(key, value) {
                changed.insert(key.to_owned(), value.clone());
            }
        }
        self.last_status_update = now;
        changed.insert(
            "last_status_update".to_owned(),
            Value::String(now.as_str().to_owned()),
        );
        changed
    }

    /// Sets one field from its canonical value; whether it changed. Values of the wrong type (which
    /// [`Update`] never holds) and reserved keys are ignored.
    fn set(&mut self, key: &str, value: &Value) -> bool {
        fn replace<T: PartialEq>(slot: &mut T, new: T) -> bool {
            let changed = *slot != new;
            *slot = new;
            changed
        }
        let number = |value: &Value| match value {
            Value::Null => Some(None),
            Value::Number(n) => n.as_f64().map(Some),
            _ => None,
        };
        match (key, value) {
            ("software_version", Value::String(s)) => {
                replace(&mut self.software_version, s.clone())
            }
            ("country", Value::String(s)) => replace(&mut self.country, s.clone()),
            ("solmate_version", Value::String(s)) => replace(&mut self.solmate_version, s.clone()),
            ("postcode", Value::String(s)) => replace(&mut self.postcode, s.clone()),
            ("local_time", Value::String(s)) => replace(&mut self.local_time, Some(s.clone())),
            ("local_time", Value::Null) => replace(&mut self.local_time, None),
            ("pv_connectors", Value::Number(n)) => n
                .as_i64()
                .is_some_and(|n| replace(&mut self.pv_connectors, n)),
            _ => match FieldKind::of(key) {
                FieldKind::Number => {
                    let Some(new) = number(value) else {
                        return false;
                    };
                    let slot = match key {
                        "power_income" => &mut self.power_income,
                        "power_inject" => &mut self.power_inject,
                        "power_consumption" => &mut self.power_consumption,
                        "battery" => &mut self.battery,
                        _ => &mut self.capacity,
                    };
                    replace(slot, new)
                }
                FieldKind::Extra => {
                    if self.extra.get(key) == Some(value) {
                        false
                    } else {
                        self.extra.insert(key.to_owned(), value.clone());
                        true
                    }
                }
                _ => false,
            },
        }
    }

    /// Set whether the device is online; returns whether that changed (and an UPDT is due).
    ///
    /// ```
    /// use smart_proto::{Record, Serial, Timestamp};
    ///
    /// let mut record = Record::new(Serial::new("0001").unwrap(), "EET", Timestamp::UNIX_EPOCH);
    /// assert!(record.set_online(true));
    /// assert!(!record.set_online(true));
    /// assert!(record.online);
    /// ```
    pub fn set_online(&mut self, online: bool) -> bool {
        let changed = self.online != online;
        self.online = online;
        changed
    }

    /// A field by name (`serial_number`, known fields, server fields, extras). `None` if missing or
    /// null. Timestamps are their RFC 3339 text; numbers of extra fields are `f64`.
    ///
    /// ```
    /// use smart_proto::{FieldValue, Record, Serial, Timestamp};
    ///
    /// let mut record = Record::new(Serial::new("0001").unwrap(), "EET", Timestamp::UNIX_EPOCH);
    /// record.extra.insert("charging".into(), serde_json::json!(true));
    /// assert_eq!(record.get("serial_number"), Some(FieldValue::Str("0001")));
    /// assert_eq!(record.get("pv_connectors"), Some(FieldValue::Num(1.0)));
    /// assert_eq!(record.get("last_status_update"), Some(FieldValue::Str("1970-01-01T00:00:00.000000Z")));
    /// assert_eq!(record.get("charging"), Some(FieldValue::Bool(true)));
    /// assert_eq!(record.get("no_such_field"), None);
    /// ```
    pub fn get(&self, field: &str) -> Option<FieldValue<'_>> {
        let value = match field {
            "serial_number" => FieldValue::Str(self.serial_number.as_str()),
            "software_version" => FieldValue::Str(&self.software_version),
            "country" => FieldValue::Str(&self.country),
            "solmate_version" => FieldValue::Str(&self.solmate_version),
            "postcode" => FieldValue::Str(&self.postcode),
            "power_income" => FieldValue::Num(self.power_income?),
            "power_inject" => FieldValue::Num(self.power_inject?),
            "power_consumption" => FieldValue::Num(self.power_consumption?),
            "battery" => FieldValue::Num(self.battery?),
            "capacity" => FieldValue::Num(self.capacity?),
            "pv_connectors" => FieldValue::Num(self.pv_connectors as f64),
            "local_time" => FieldValue::Str(self.local_time.as_deref()?),
            "owner" => FieldValue::Str(&self.owner),
            "manufacturing_date" => FieldValue::Str(self.manufacturing_date.as_str()),
            "last_status_update" => FieldValue::Str(self.last_status_update.as_str()),
            "online" => FieldValue::Bool(self.online),
            _ => match self.extra.get(field)? {
                Value::Null => return None,
                Value::Bool(b) => FieldValue::Bool(*b),
                Value::Number(n) => FieldValue::Num(n.as_f64()?),
                Value::String(s) => FieldValue::Str(s),
                other @ (Value::Array(_) | Value::Object(_)) => FieldValue::Other(other),
            },
        };
        Some(value)
    }

    /// Visits every field in the written order.
    fn try_for_each_field<E>(
        &self,
        mut visit: impl FnMut(&str, FieldRef<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        self.try_for_each_known(&mut visit)?;
        for (key, value) in self.extras() {
            visit(key, FieldRef::Json(value))?;
        }
        Ok(())
    }

    /// Visits the known fields in the written order.
    fn try_for_each_known<E>(
        &self,
        mut visit: impl FnMut(&str, FieldRef<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        visit("serial_number", FieldRef::Str(self.serial_number.as_str()))?;
        visit("software_version", FieldRef::Str(&self.software_version))?;
        visit("country", FieldRef::Str(&self.country))?;
        visit("solmate_version", FieldRef::Str(&self.solmate_version))?;
        visit("postcode", FieldRef::Str(&self.postcode))?;
        visit("power_income", FieldRef::Num(self.power_income))?;
        visit("power_inject", FieldRef::Num(self.power_inject))?;
        visit("power_consumption", FieldRef::Num(self.power_consumption))?;
        visit("battery", FieldRef::Num(self.battery))?;
        visit("capacity", FieldRef::Num(self.capacity))?;
        visit("pv_connectors", FieldRef::Int(self.pv_connectors))?;
        visit("local_time", FieldRef::OptStr(self.local_time.as_deref()))?;
        visit("owner", FieldRef::Str(&self.owner))?;
        visit(
            "manufacturing_date",
            FieldRef::Str(self.manufacturing_date.as_str()),
        )?;
        visit(
            "last_status_update",
            FieldRef::Str(self.last_status_update.as_str()),
        )?;
        visit("online", FieldRef::Bool(self.online))
    }

    /// Extra fields that do not shadow a known one.
    pub(crate) fn extras(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.extra
            .iter()
            .filter(|(key, _)| FieldKind::of(key) == FieldKind::Extra)
    }

    /// All fields as a JSON object. The keys come in `serde_json`'s map order: the order of §6 if its
    /// `preserve_order` feature is on, key order otherwise; [`Record::write_json`] always writes §6 order.
    ///
    /// ```
    /// use smart_proto::{Record, Serial, Timestamp};
    ///
    /// let record = Record::new(Serial::new("0001").unwrap(), "EET", Timestamp::UNIX_EPOCH);
    /// let map = record.to_map();
    /// assert_eq!(map.len(), 16);
    /// assert_eq!(map["pv_connectors"], 1);
    /// assert_eq!(map["battery"], serde_json::Value::Null);
    /// ```
    pub fn to_map(&self) -> Map<String, Value> {
        let mut map = Map::new();
        let _ = self.try_for_each_field(|key, value| {
            map.insert(key.to_owned(), value.to_value());
            Ok::<(), std::convert::Infallible>(())
        });
        map
    }

    /// The UPDT body for a dashboard that has not seen this device yet: every field (PROTOCOL.md §7).
    /// The same as [`Record::to_map`].
    ///
    /// ```
    /// use smart_proto::{Record, Serial, Timestamp};
    ///
    /// let record = Record::new(Serial::new("0001").unwrap(), "EET", Timestamp::UNIX_EPOCH);
    /// assert_eq!(record.full_body(), record.to_map());
    /// ```
    pub fn full_body(&self) -> Map<String, Value> {
        self.to_map()
    }

    /// Append the record as a compact JSON object: known fields in the order of §6, then extras in key
    /// order. Integral numbers are written as integers (`350`), absent numbers as `null`.
    ///
    /// ```
    /// use smart_proto::{Record, Serial, Timestamp};
    ///
    /// let mut record = Record::new(Serial::new("0001").unwrap(), "EET", Timestamp::UNIX_EPOCH);
    /// record.battery = Some(350.0);
    /// record.country = "A\"T".into();
    /// let mut out = String::new();
    /// record.write_json(&mut out);
    /// assert!(out.contains(r#""country":"A\"T""#));
    /// assert!(out.contains(r#""battery":350,"#));
    /// assert_eq!(out, serde_json::to_string(&record).unwrap());
    /// ```
    pub fn write_json(&self, out: &mut String) {
        out.push('{');
        let mut first = true;
        let _ = self.try_for_each_field(|key, value| {
            write_field(out, &mut first, key, value);
            Ok::<(), std::convert::Infallible>(())
        });
        out.push('}');
    }

    /// [`Record::write_json`], with `null` for each of `keys` (in ascending order) that is not one of
    /// the record's extra fields, merged into the extras in key order. Keys that name a known field are
    /// skipped. This is how a record is written in an INIT list (PROTOCOL.md §7), `keys` being the
    /// union of the list's extra keys ([`extra_keys`](crate::extra_keys)).
    ///
    /// ```
    /// use smart_proto::{Record, Serial, Timestamp};
    ///
    /// let mut record = Record::new(Serial::new("0001")?, "EET", Timestamp::UNIX_EPOCH);
    /// record.extra.insert("b".into(), 2.into());
    /// let mut out = String::new();
    /// record.write_json_padded(["a", "b", "battery", "c"], &mut out);
    /// assert!(out.ends_with(r#""online":false,"a":null,"b":2,"c":null}"#), "{out}");
    /// # Ok::<(), smart_proto::Error>(())
    /// ```
    pub fn write_json_padded<K: AsRef<str>>(
        &self,
        keys: impl IntoIterator<Item = K>,
        out: &mut String,
    ) {
        out.push('{');
        let mut first = true;
        let _ = self.try_for_each_known(|key, value| {
            write_field(out, &mut first, key, value);
            Ok::<(), std::convert::Infallible>(())
        });
        let mut pads = keys.into_iter().peekable();
        let mut last_pad: Option<K> = None;
        let mut pad = |out: &mut String, first: &mut bool, key: K| {
            let name = key.as_ref();
            let repeated = last_pad.as_ref().is_some_and(|last| last.as_ref() == name);
            if !repeated
                && FieldKind::of(name) == FieldKind::Extra
                && !self.extra.contains_key(name)
            {
                write_field(out, first, name, FieldRef::OptStr(None));
            }
            last_pad = Some(key);
        };
        for (key, value) in self.extras() {
            while let Some(key) = pads.next_if(|k| k.as_ref() < key.as_str()) {
                pad(out, &mut first, key);
            }
            write_field(out, &mut first, key, FieldRef::Json(value));
        }
        for key in pads {
            pad(out, &mut first, key);
        }
        out.push('}');
    }

    /// Whether every one of `keys` is an extra field of this record, so that [`Record::write_json`]
    /// already writes what [`Record::write_json_padded`] would.
    ///
    /// ```
    /// use smart_proto::{Record, Serial, Timestamp};
    ///
    /// let mut record = Record::new(Serial::new("0001")?, "EET", Timestamp::UNIX_EPOCH);
    /// record.extra.insert("b".into(), 2.into());
    /// assert!(record.has_extras(["b"]));
    /// assert!(!record.has_extras(["a", "b"]));
    /// # Ok::<(), smart_proto::Error>(())
    /// ```
    pub fn has_extras<K: AsRef<str>>(&self, keys: impl IntoIterator<Item = K>) -> bool {
        keys.into_iter().all(|key| {
            let key = key.as_ref();
            FieldKind::of(key) == FieldKind::Extra && self.extra.contains_key(key)
        })
    }

    /// The JSON text of [`Record::write_json`].
    ///
    /// ```
    /// use smart_proto::{Record, Serial, Timestamp};
    ///
    /// let record = Record::new(Serial::new("0001").unwrap(), "EET", Timestamp::UNIX_EPOCH);
    /// assert!(record.to_json().starts_with(r#"{"serial_number":"0001","software_version":"","#));
    /// ```
    pub fn to_json(&self) -> String {
        let mut s = String::new();
        self.write_json(&mut s);
        s
    }

    /// Read a record back from its JSON object (storage, clients). `serial_number` and the server fields
    /// (`owner`, `manufacturing_date`, `last_status_update`, `online`) must be present; known device
    /// fields are optional (defaults as in [`Record::new`]) and coerced as in
    /// [`Update::from_normalized`]; other keys become extra fields. Errors are [`Error::Record`].
    ///
    /// ```
    /// use serde_json::json;
    /// use smart_proto::Record;
    ///
    /// let map = json!({
    ///     "serial_number": "0004", "owner": "EET", "online": true, "battery": 144.0,
    ///     "manufacturing_date": "2024-03-11T00:43:33.256667Z",
    ///     "last_status_update": "2024-03-11T00:46:52.690962Z",
    /// });
    /// let serde_json::Value::Object(map) = map else { unreachable!() };
    /// let record = Record::from_map(map).unwrap();
    /// assert_eq!(record.battery, Some(144.0));
    /// assert_eq!(record.solmate_version, "v1");
    ///
    /// let err = Record::from_map(serde_json::Map::new()).unwrap_err();
    /// assert_eq!(err.to_string(), "bad stored record: missing \"serial_number\"");
    /// ```
    pub fn from_map(mut map: Map<String, Value>) -> Result<Record> {
        fn take(map: &mut Map<String, Value>, key: &str) -> Result<Value> {
            map.remove(key)
                .ok_or_else(|| Error::Record(format!("missing {key:?}")))
        }
        fn wrong(key: &str, expected: &str, got: &Value) -> Error {
            Error::Record(format!(
                "{key:?} must be {expected}, got {}",
                quote(&got.to_string())
            ))
        }
        fn take_string(map: &mut Map<String, Value>, key: &str) -> Result<String> {
            match take(map, key)? {
                Value::String(s) => Ok(s),
                other => Err(wrong(key, "a string", &other)),
            }
        }
        fn take_timestamp(map: &mut Map<String, Value>, key: &str) -> Result<Timestamp> {
            let text = take_string(map, key)?;
            Timestamp::parse(&text).map_err(|e| Error::Record(format!("{key:?}: {e}")))
        }

        let serial = take_string(&mut map, "serial_number")?;
        let serial =
            Serial::new(&serial).map_err(|e| Error::Record(format!("\"serial_number\": {e}")))?;
        let owner = take_string(&mut map, "owner")?;
        let manufacturing_date = take_timestamp(&mut map, "manufacturing_date")?;
        let last_status_update = take_timestamp(&mut map, "last_status_update")?;
        let online = match take(&mut map, "online")? {
            Value::Bool(b) => b,
            other => return Err(wrong("online", "a boolean", &other)),
        };

        let mut record = Record::new(serial, owner, manufacturing_date);
        record.last_status_update = last_status_update;
        record.online = online;
        let fields =
            Update::coerce(map, Source::Stored).map_err(|e| Error::Record(e.to_string()))?;
        for (key, value) in fields.iter() {
            record.set(key, value);
        }
        Ok(record)
    }

    /// Read a record back from JSON text, as written by [`Record::to_json`].
    ///
    /// ```
    /// use smart_proto::{Record, Serial, Timestamp};
    ///
    /// let mut record = Record::new(Serial::new("0001").unwrap(), "EET", Timestamp::UNIX_EPOCH);
    /// record.extra.insert("meassuring".into(), serde_json::json!(true));
    /// assert_eq!(Record::from_json(&record.to_json()).unwrap(), record);
    /// assert!(Record::from_json("[1]").is_err());
    /// ```
    pub fn from_json(text: &str) -> Result<Record> {
        let map: Map<String, Value> = serde_json::from_str(text)
            .map_err(|e| Error::Record(format!("not a JSON object: {e}")))?;
        Record::from_map(map)
    }
}

/// The same JSON as [`Record::write_json`].
impl Serialize for Record {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map =
            serializer.serialize_map(Some(Record::FIELDS.len() + self.extras().count()))?;
        self.try_for_each_field(|key, value| map.serialize_entry(key, &value))?;
        map.end()
    }
}

/// Read with [`Record::from_map`].
impl<'de> Deserialize<'de> for Record {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Record, D::Error> {
        let map = Map::<String, Value>::deserialize(deserializer)?;
        Record::from_map(map).map_err(de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use super::*;
    use serde_json::json;

    fn serial() -> Serial {
        Serial::new("0001").unwrap()
    }

    fn update(value: Value) -> Result<Update> {
        let Value::Object(map) = value else {
            panic!("not an object")
        };
        Update::from_normalized(Normalized(map))
    }

    fn field_error(value: Value) -> String {
        update(value).unwrap_err().to_string()
    }

    proptest::proptest! {
        #[test]
        fn key_order_is_str_order(a in "[a-z_é]{0,20}", b in "[a-z_é]{0,20}") {
            proptest::prop_assert_eq!(key_cmp(a.as_bytes(), b.as_bytes()), a.cmp(&b));
            proptest::prop_assert_eq!(key_cmp(a.as_bytes(), a.as_bytes()), Ordering::Equal);
        }
    }

    #[test]
    fn key_order_edges() {
        for (a, b) in [
            ("power_income", "power_inject"),
            ("power_in", "power_inject"),
            ("abcdefgh", "abcdefgh"),
            ("abcdefghi", "abcdefgh"),
            ("", "a"),
            ("b", "abcdefghijk"),
        ] {
            assert_eq!(key_cmp(a.as_bytes(), b.as_bytes()), a.cmp(b), "{a} {b}");
            assert_eq!(key_cmp(b.as_bytes(), a.as_bytes()), b.cmp(a), "{b} {a}");
        }
    }

    #[test]
    fn update_views_agree() {
        let u = update(json!({"power_inject": "357", "battery": 92.5, "zz": [1], "country": "AT"}))
            .unwrap();
        let listed: Vec<(&str, &Value)> = u.iter().collect();
        let mapped: Vec<(&str, &Value)> = u.as_map().iter().map(|(k, v)| (k.as_str(), v)).collect();
        assert_eq!(listed, mapped);
        assert_eq!(u.len(), 4);
        assert_eq!(u.get("power_inject"), Some(&json!(357)));
        assert_eq!(u.get("zz"), Some(&json!([1])));
        assert_eq!(u.get("nope"), None);
        // The cached map does not take part in equality.
        let fresh =
            update(json!({"power_inject": 357, "battery": 92.5, "zz": [1], "country": "AT"}))
                .unwrap();
        assert_eq!(u, fresh);
        assert_ne!(u, Update::default());
        assert_eq!(
            format!("{:?}", update(json!({"battery": 1})).unwrap()),
            "Update({\"battery\": Number(1)})"
        );
        // Reserved keys are never kept, even when handed over directly.
        let u = update(json!({"online": true, "owner": "x", "battery": 1})).unwrap();
        assert_eq!(u.iter().map(|(k, _)| k).collect::<Vec<_>>(), ["battery"]);
    }

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

    #[test]
    fn numbers_parse_from_text() {
        assert_eq!(parse_number("357"), Some(357.0));
        assert_eq!(parse_number(" 12.5 "), Some(12.5));
        assert_eq!(parse_number("-1e3"), Some(-1000.0));
        assert_eq!(parse_number("+.5"), Some(0.5));
        assert_eq!(
            parse_number("-0").map(f64::to_bits),
            Some(0.0_f64.to_bits())
        );
        for bad in [
            "", " ", "full", "inf", "-inf", "NaN", "infinity", "1e400", "0x10", "1_000", ".", "1 2",
        ] {
            assert_eq!(parse_number(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn numbers_are_canonical() {
        assert_eq!(number_value(350.0).to_string(), "350");
        assert_eq!(number_value(-0.0).to_string(), "0");
        assert_eq!(number_value(92.5).to_string(), "92.5");
        assert_eq!(number_value(1e300).to_string(), "1e+300");
        assert!(number_value(9_007_199_254_740_992.0).is_f64());
        assert!(number_value(9_007_199_254_740_991.0).is_i64());
        assert_eq!(number_value(f64::NAN), Value::Null);
    }

    #[test]
    fn update_coerces_known_fields() {
        let u = update(json!({
            "software_version": "v8.6", "country": "DE", "solmate_version": "v2",
            "postcode": 7445, "power_income": "377", "power_inject": 336.0, "power_consumption": null,
            "battery": " 12.5 ", "capacity": 5_184_000, "pv_connectors": 2.0, "local_time": null,
            "meassuring": true, "nested": {"a": [1, 2.5]}
        }))
        .unwrap();
        assert_eq!(
            Value::Object(u.as_map().clone()),
            json!({
                "software_version": "v8.6", "country": "DE", "solmate_version": "v2",
                "postcode": "7445", "power_income": 377, "power_inject": 336, "power_consumption": null,
                "battery": 12.5, "capacity": 5_184_000, "pv_connectors": 2, "local_time": null,
                "meassuring": true, "nested": {"a": [1, 2.5]}
            })
        );
        assert!(u.as_map()["power_inject"].is_i64());
        assert_eq!(
            update(json!({"postcode": "8020"})).unwrap().as_map()["postcode"],
            "8020"
        );
        assert_eq!(
            update(json!({"postcode": 18_446_744_073_709_551_615_u64}))
                .unwrap()
                .as_map()["postcode"],
            "18446744073709551615"
        );
        assert_eq!(
            update(json!({"postcode": 1e20})).unwrap().as_map()["postcode"],
            "100000000000000000000"
        );
        assert_eq!(
            update(json!({"postcode": -0.0})).unwrap().as_map()["postcode"],
            "0"
        );
        assert_eq!(
            update(json!({"pv_connectors": 0})).unwrap().as_map()["pv_connectors"],
            0
        );
        // A device may not send a negative count, but a stored record is read as it was written.
        assert!(update(json!({"pv_connectors": -3})).is_err());
        let mut stored = Record::new(serial(), "EET", Timestamp::UNIX_EPOCH);
        stored.pv_connectors = -3;
        assert_eq!(Record::from_json(&stored.to_json()).unwrap(), stored);
        assert_eq!(
            update(json!({"local_time": "14:59"})).unwrap().as_map()["local_time"],
            "14:59"
        );
    }

    #[test]
    fn update_rejects_wrong_types() {
        assert_eq!(
            field_error(json!({"battery": "full"})),
            r#"field "battery" must be a number, numeric string or null, got "full""#
        );
        assert_eq!(
            field_error(json!({"pv_connectors": true})),
            r#"field "pv_connectors" must be an integer from 0 to 9007199254740991, got true"#
        );
        assert_eq!(
            field_error(json!({"pv_connectors": 2.5})),
            r#"field "pv_connectors" must be an integer from 0 to 9007199254740991, got 2.5"#
        );
        assert_eq!(
            field_error(json!({"pv_connectors": null})),
            r#"field "pv_connectors" must be an integer from 0 to 9007199254740991, got null"#
        );
        assert_eq!(
            field_error(json!({"pv_connectors": "2"})),
            r#"field "pv_connectors" must be an integer from 0 to 9007199254740991, got "2""#
        );
        assert!(field_error(json!({"pv_connectors": 1e19})).contains("must be an integer"));
        assert!(field_error(json!({"pv_connectors": u64::MAX})).contains("must be an integer"));
        assert_eq!(
            field_error(json!({"postcode": 74.5})),
            r#"field "postcode" must be a string or an integer, got 74.5"#
        );
        assert_eq!(
            field_error(json!({"postcode": null})),
            r#"field "postcode" must be a string or an integer, got null"#
        );
        assert_eq!(
            field_error(json!({"country": 43})),
            r#"field "country" must be a string, got 43"#
        );
        assert_eq!(
            field_error(json!({"software_version": null})),
            r#"field "software_version" must be a string, got null"#
        );
        assert_eq!(
            field_error(json!({"local_time": 5})),
            r#"field "local_time" must be a string or null, got 5"#
        );
        assert_eq!(
            field_error(json!({"capacity": [1]})),
            r#"field "capacity" must be a number, numeric string or null, got [1]"#
        );
        assert_eq!(
            field_error(json!({"battery": "NaN"})),
            r#"field "battery" must be a number, numeric string or null, got "NaN""#
        );
        let long = field_error(json!({"battery": "x".repeat(500)}));
        assert!(long.len() < 200 && long.ends_with('…'), "{long}");
    }

    #[test]
    fn update_drops_reserved_keys() {
        let u =
            update(json!({"serial_number": "0001", "online": true, "owner": "me", "battery": 1}))
                .unwrap();
        assert_eq!(u.len(), 1);
    }

    #[test]
    fn apply_reports_changes_only() {
        let t0 = Timestamp::from_unix_micros(0);
        let t1 = Timestamp::from_unix_micros(1);
        let mut r = Record::new(serial(), "EET", t0);
        let changed = r.apply(
            &update(json!({"battery": 350, "solmate_version": "v1", "charging": false})).unwrap(),
            t1,
        );
        assert_eq!(
            Value::Object(changed),
            json!({"battery": 350, "charging": false, "last_status_update": "1970-01-01T00:00:00.000001Z"})
        );
        assert_eq!(r.last_status_update, t1);
        assert_eq!(r.manufacturing_date, t0);
        let changed = r.apply(
            &update(json!({"battery": "350", "charging": false, "local_time": null})).unwrap(),
            t1,
        );
        assert_eq!(
            Value::Object(changed),
            json!({"last_status_update": "1970-01-01T00:00:00.000001Z"})
        );
        let changed = r.apply(
            &update(json!({"battery": null, "local_time": "x", "pv_connectors": 3, "postcode": 1}))
                .unwrap(),
            t1,
        );
        assert_eq!(changed.len(), 5);
        assert_eq!(
            (
                r.battery,
                r.local_time.as_deref(),
                r.pv_connectors,
                r.postcode.as_str()
            ),
            (None, Some("x"), 3, "1")
        );
        let changed = r.apply(&Update::default(), t0);
        assert_eq!(
            Value::Object(changed),
            json!({"last_status_update": "1970-01-01T00:00:00.000000Z"})
        );
    }

    #[test]
    fn set_ignores_wrong_types_and_reserved_keys() {
        let mut r = Record::new(serial(), "EET", Timestamp::UNIX_EPOCH);
        let before = r.clone();
        assert!(!r.set("battery", &json!("x")));
        assert!(!r.set("pv_connectors", &json!(2.5)));
        assert!(!r.set("country", &json!(1)));
        assert!(!r.set("online", &json!(true)));
        assert!(!r.set("serial_number", &json!("9")));
        assert_eq!(r, before);
        assert!(r.set("capacity", &json!(5)));
        assert_eq!(r.capacity, Some(5.0));
    }

    #[test]
    fn get_views_every_kind() {
        let mut r = Record::new(serial(), "EET", Timestamp::UNIX_EPOCH);
        r.extra.insert("n".into(), json!(2));
        r.extra.insert("s".into(), json!("x"));
        r.extra.insert("null".into(), Value::Null);
        r.extra.insert("list".into(), json!([1]));
        r.local_time = Some("t".into());
        assert_eq!(r.get("n"), Some(FieldValue::Num(2.0)));
        assert_eq!(r.get("s"), Some(FieldValue::Str("x")));
        assert_eq!(r.get("null"), None);
        assert_eq!(r.get("list"), Some(FieldValue::Other(&json!([1]))));
        assert_eq!(r.get("local_time"), Some(FieldValue::Str("t")));
        assert_eq!(r.get("owner"), Some(FieldValue::Str("EET")));
        assert_eq!(r.get("country"), Some(FieldValue::Str("")));
        assert_eq!(r.get("solmate_version"), Some(FieldValue::Str("v1")));
        assert_eq!(
            r.get("manufacturing_date"),
            Some(FieldValue::Str("1970-01-01T00:00:00.000000Z"))
        );
        for name in [
            "power_income",
            "power_inject",
            "power_consumption",
            "battery",
            "capacity",
        ] {
            assert_eq!(r.get(name), None);
        }
    }

    #[test]
    fn json_follows_table_order_then_extras() {
        let mut r = Record::new(
            serial(),
            "EET",
            Timestamp::from_unix_micros(1_710_117_813_256_667),
        );
        r.battery = Some(92.5);
        r.capacity = Some(5_184_000.0);
        r.power_income = Some(1e300);
        r.local_time = Some("2024-03-17 14:59:13.047108".into());
        r.extra.insert("zeta".into(), json!({"k": "\u{1}é"}));
        r.extra.insert("alpha".into(), json!(1.0));
        r.extra.insert("battery".into(), json!("shadow"));
        let text = r.to_json();
        let keys: Vec<&str> = Record::FIELDS
            .iter()
            .copied()
            .chain(["alpha", "zeta"])
            .collect();
        let mut at = 0;
        for key in keys {
            let found = text[at..]
                .find(&format!("\"{key}\":"))
                .unwrap_or_else(|| panic!("{key} in {text}"));
            at += found;
        }
        assert!(
            text.contains(r#""battery":92.5,"capacity":5184000,"#),
            "{text}"
        );
        assert!(text.contains(r#""power_income":1e+300,"#), "{text}");
        assert!(text.contains(r#""zeta":{"k":"\u0001é"}"#), "{text}");
        assert!(text.contains(r#""alpha":1.0"#), "{text}");
        assert!(!text.contains("shadow"));
        assert_eq!(text, serde_json::to_string(&r).unwrap());
        assert_eq!(r.to_map().len(), 18);
        assert_eq!(
            Value::Object(r.to_map()),
            serde_json::from_str::<Value>(&text).unwrap()
        );
        r.extra.remove("battery");
        assert_eq!(Record::from_json(&text).unwrap(), r);
        assert_eq!(serde_json::from_str::<Record>(&text).unwrap(), r);
    }

    #[test]
    fn non_finite_numbers_are_written_as_null() {
        let mut r = Record::new(serial(), "EET", Timestamp::UNIX_EPOCH);
        r.battery = Some(f64::NAN);
        assert!(r.to_json().contains(r#""battery":null"#));
        assert_eq!(r.to_json(), serde_json::to_string(&r).unwrap());
    }

    #[test]
    fn from_map_errors() {
        let good = Record::new(serial(), "EET", Timestamp::UNIX_EPOCH).to_map();
        let broken = |key: &str, value: Option<Value>| {
            let mut map = good.clone();
            match value {
                Some(v) => map.insert(key.to_owned(), v),
                None => map.remove(key),
            };
            Record::from_map(map).unwrap_err().to_string()
        };
        assert_eq!(
            broken("owner", None),
            "bad stored record: missing \"owner\""
        );
        assert_eq!(
            broken("online", Some(json!("yes"))),
            "bad stored record: \"online\" must be a boolean, got \"yes\""
        );
        assert_eq!(
            broken("serial_number", Some(json!(1))),
            "bad stored record: \"serial_number\" must be a string, got 1"
        );
        assert!(
            broken("serial_number", Some(json!("a b")))
                .starts_with("bad stored record: \"serial_number\": ")
        );
        assert!(
            broken("last_status_update", Some(json!("now")))
                .starts_with("bad stored record: \"last_status_update\": bad timestamp")
        );
        assert_eq!(
            broken("battery", Some(json!(true))),
            "bad stored record: field \"battery\" must be a number, numeric string or null, got true"
        );
        assert!(
            Record::from_json("{")
                .unwrap_err()
                .to_string()
                .starts_with("bad stored record: not a JSON object")
        );
        assert!(serde_json::from_str::<Record>("{}").is_err());
    }
}
