//! Bounds on what a device may store: integers a browser can represent (PROTOCOL.md §6) and, as the server
//! configures them, the number and size of extra fields ([`Limits`]).
//!
//! [`parse_device_message`](crate::parse_device_message) already refuses integers beyond ±(2^53−1);
//! [`Limits`] is for the server, which checks each update against the record it is about to change.
//!
//! ```
//! use smart_proto::{Error, Limits, parse_device_message};
//!
//! let rejection = parse_device_message(r#"{"type":"UPDT","message":"1:0001:{\"id\": 9007199254740993}"}"#)
//!     .unwrap_err();
//! assert!(matches!(rejection.error, Error::UnsafeInteger { .. }));
//!
//! let msg = parse_device_message(r#"{"type":"UPDT","message":"1:0001:{\"a\": 1, \"b\": 2}"}"#)
//!     .map_err(|r| r.error)?;
//! let tight = Limits { max_extras: 1, ..Limits::default() };
//! assert_eq!(tight.check(&msg.update), Err(Error::TooManyExtras { count: 2, max: 1 }));
//! # Ok::<(), smart_proto::Error>(())
//! ```

use std::io;

use serde_json::{Map, Value};

use crate::{Error, Record, Result, Update};

/// The largest integer a browser's `JSON.parse` (an IEEE double) reads exactly: 2^53−1.
///
/// ```
/// assert_eq!(smart_proto::limits::MAX_SAFE_INTEGER, (1 << 53) - 1);
/// ```
pub const MAX_SAFE_INTEGER: u64 = crate::bounds::MAX_SAFE_INTEGER;

/// Integral floats from 2^64 on can only come from an integer too long for `u64` (or a float spelled
/// with an exponent or fraction): those are told apart by the text.
const U64_LIMIT: f64 = 18_446_744_073_709_551_616.0;

/// Refuse a device body that holds an integer beyond ±(2^53−1), anywhere (known fields and extras, at
/// any depth): browsers would silently round it (PROTOCOL.md §6). `body` is the parsed `text`; the text
/// tells integers too long for a 64-bit integer (which the parsers turn into floats) from floats.
///
/// Floats (`1e20`, `9007199254740993.0`) are not integers and pass.
///
/// ```
/// use smart_proto::{Error, limits::check_safe_integers, parse_body};
///
/// for text in [r#"{"a": 9007199254740991}"#, r#"{"a": [-9007199254740991]}"#, "{'a': 1e300}"] {
///     assert_eq!(check_safe_integers(&parse_body(text)?, text), Ok(()));
/// }
/// for text in [r#"{"a": {"b": 9007199254740992}}"#, "{'a': -18446744073709551616}"] {
///     let err = check_safe_integers(&parse_body(text)?, text).unwrap_err();
///     assert!(matches!(err, Error::UnsafeInteger { ref field, .. } if field == "a"), "{err}");
/// }
/// # Ok::<(), smart_proto::Error>(())
/// ```
pub fn check_safe_integers(body: &Map<String, Value>, text: &str) -> Result<()> {
    for (key, value) in body {
        match unsafe_number(value) {
            None => {}
            Some(Unsafe::Integer(value)) => {
                return Err(Error::UnsafeInteger {
                    field: crate::error::shorten(key, 64),
                    value,
                });
            }
            Some(Unsafe::HugeFloat) => {
                if let Some(token) = unsafe_integer_token(text) {
                    return Err(Error::UnsafeInteger {
                        field: crate::error::shorten(key, 64),
                        value: crate::error::shorten(token, 64),
                    });
                }
            }
        }
    }
    Ok(())
}

enum Unsafe {
    /// An integer beyond ±(2^53−1), as text.
    Integer(String),
    /// An integral float from 2^64 on: an integer in the text, or a float spelled as one.
    HugeFloat,
}

/// The first unsafe number in `value` (depth-first), if any.
fn unsafe_number(value: &Value) -> Option<Unsafe> {
    match value {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                (i.unsigned_abs() > MAX_SAFE_INTEGER).then(|| Unsafe::Integer(i.to_string()))
            } else if let Some(u) = n.as_u64() {
                (u > MAX_SAFE_INTEGER).then(|| Unsafe::Integer(u.to_string()))
            } else {
                let x = n.as_f64()?;
                (x.abs() >= U64_LIMIT && x.fract() == 0.0).then_some(Unsafe::HugeFloat)
            }
        }
        Value::Array(items) => items.iter().find_map(unsafe_number),
        Value::Object(map) => map.values().find_map(unsafe_number),
        Value::Null | Value::Bool(_) | Value::String(_) => None,
    }
}

/// The first integer token beyond ±(2^53−1) outside the strings of a JSON or Python-literal text.
fn unsafe_integer_token(text: &str) -> Option<&str> {
    let b = text.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'.';
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'"' | b'\'' => {
                // Skip the string; a backslash escapes the next byte in both languages.
                i += 1;
                while let Some(&d) = b.get(i) {
                    i += if d == b'\\' { 2 } else { 1 };
                    if d == c {
                        break;
                    }
                }
            }
            c if word(c) => {
                let start = i;
                while let Some(&d) = b.get(i) {
                    let exponent_sign =
                        matches!(d, b'+' | b'-') && matches!(b.get(i - 1), Some(b'e' | b'E'));
                    if !(word(d) || exponent_sign) {
                        break;
                    }
                    i += 1;
                }
                let token = &text[start..i];
                let digits = token.trim_start_matches('0');
                let integer = token.bytes().all(|d| d.is_ascii_digit());
                // Zeros only (`0`, `00`) leave no digits: zero, which is safe.
                let unsafe_integer = !digits.is_empty()
                    && digits.parse::<u64>().map_or(true, |n| n > MAX_SAFE_INTEGER);
                if integer && unsafe_integer {
                    return Some(token);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// Caps on the extra fields of a record, set by the server (PROTOCOL.md §6): how many a record may hold,
/// and how large one value may be, written as compact JSON. [`Limits::default`] is 64 extras of at most
/// 4 KiB each.
///
/// ```
/// use smart_proto::{Error, Limits, Record, Serial, Timestamp, parse_device_message};
///
/// let limits = Limits { max_extras: 2, max_extra_bytes: 16 };
/// let msg = parse_device_message(r#"{"type":"UPDT","message":"1:0001:{\"a\": 1, \"battery\": 5}"}"#)
///     .map_err(|r| r.error)?;
/// limits.check(&msg.update)?;
///
/// let mut record = Record::new(Serial::new("0001")?, "EET", Timestamp::UNIX_EPOCH);
/// record.extra.insert("b".into(), 2.into());
/// record.extra.insert("c".into(), 3.into());
/// assert_eq!(limits.check_against(&record, &msg.update), Err(Error::TooManyExtras { count: 3, max: 2 }));
/// # Ok::<(), smart_proto::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most extra fields one record may hold.
    pub max_extras: usize,
    /// Largest extra value, in bytes of compact JSON (`"abc"` is 5 bytes, `[1,2]` 5).
    pub max_extra_bytes: usize,
}

impl Default for Limits {
    /// 64 extras of at most 4 KiB each.
    ///
    /// ```
    /// let limits = smart_proto::Limits::default();
    /// assert_eq!((limits.max_extras, limits.max_extra_bytes), (64, 4096));
    /// ```
    fn default() -> Limits {
        Limits {
            max_extras: 64,
            max_extra_bytes: 4096,
        }
    }
}

impl Limits {
    /// Check an update on its own: no extra value larger than `max_extra_bytes`, no more than
    /// `max_extras` extra fields. Known fields are not counted. Errors are [`Error::ExtraTooLarge`] and
    /// [`Error::TooManyExtras`].
    ///
    /// ```
    /// use smart_proto::{Error, Limits, parse_device_message};
    ///
    /// let msg = parse_device_message(r#"{"type":"UPDT","message":"1:0001:{\"note\": \"0123456789\"}"}"#)
    ///     .map_err(|r| r.error)?;
    /// assert_eq!(Limits::default().check(&msg.update), Ok(()));
    /// let err = Limits { max_extra_bytes: 8, ..Limits::default() }.check(&msg.update).unwrap_err();
    /// assert_eq!(err, Error::ExtraTooLarge { field: "note".into(), bytes: 12, max: 8 });
    /// assert_eq!(err.to_string(), r#"extra field "note" is 12 bytes as JSON (at most 8)"#);
    /// # Ok::<(), smart_proto::Error>(())
    /// ```
    pub fn check(&self, update: &Update) -> Result<()> {
        let mut count = 0;
        for (key, value) in update.extras() {
            count += 1;
            self.check_value(key, value)?;
        }
        self.check_count(count)
    }

    /// [`Limits::check`], counting the extras `record` would hold once `update` is applied (its own
    /// plus the update's new ones): what the server calls before [`Record::apply`].
    ///
    /// ```
    /// use smart_proto::{Limits, Record, Serial, Timestamp, parse_device_message};
    ///
    /// let msg = parse_device_message(r#"{"type":"UPDT","message":"1:0001:{\"a\": 2}"}"#)
    ///     .map_err(|r| r.error)?;
    /// let mut record = Record::new(Serial::new("0001")?, "EET", Timestamp::UNIX_EPOCH);
    /// record.extra.insert("a".into(), 1.into());
    /// // Changing an extra the record has does not add one.
    /// assert_eq!(Limits { max_extras: 1, max_extra_bytes: 8 }.check_against(&record, &msg.update), Ok(()));
    /// # Ok::<(), smart_proto::Error>(())
    /// ```
    pub fn check_against(&self, record: &Record, update: &Update) -> Result<()> {
        let mut added = 0;
        for (key, value) in update.extras() {
            self.check_value(key, value)?;
            added += usize::from(!record.extra.contains_key(key));
        }
        self.check_count(record.extras().count() + added)
    }

    fn check_count(&self, count: usize) -> Result<()> {
        if count > self.max_extras {
            return Err(Error::TooManyExtras {
                count,
                max: self.max_extras,
            });
        }
        Ok(())
    }

    fn check_value(&self, key: &str, value: &Value) -> Result<()> {
        // A string's JSON is at most 6 bytes per byte (`\u001f`) plus its quotes: most need no count.
        let cheap = match value {
            Value::String(s) => s.len().saturating_mul(6).saturating_add(2) <= self.max_extra_bytes,
            Value::Null | Value::Bool(_) | Value::Number(_) => self.max_extra_bytes >= 24,
            Value::Array(_) | Value::Object(_) => false,
        };
        if cheap {
            return Ok(());
        }
        let bytes = json_len(value);
        if bytes > self.max_extra_bytes {
            return Err(Error::ExtraTooLarge {
                field: crate::error::shorten(key, 64),
                bytes,
                max: self.max_extra_bytes,
            });
        }
        Ok(())
    }
}

/// The length of a value's compact JSON, without writing it anywhere.
fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Cannot fail: a `Value` always serializes and the writer never errs.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn integer_tokens_are_found_outside_strings_only() {
        for (text, found) in [
            ("{'a': 18446744073709551616}", Some("18446744073709551616")),
            (
                "{'a': 00018446744073709551616}",
                Some("00018446744073709551616"),
            ),
            ("{'a': '18446744073709551616'}", None),
            (r#"{"a\"": "x 18446744073709551616"}"#, None),
            (
                "{'a': 1.8446744073709552e19, 'b': 1e+99999999999999999999}",
                None,
            ),
            ("{'a': 9007199254740991}", None),
            // A zero beside a huge float spelled with an exponent: neither is an unsafe integer.
            (r#"{"charging": 0, "a": -7.4696541895437715e+270}"#, None),
            ("{'a': 00, 'b': [0, 1e300]}", None),
            ("{'a': 9007199254740992}", Some("9007199254740992")),
            (
                "{'a': 0, 'b': 0009007199254740992}",
                Some("0009007199254740992"),
            ),
            (
                "{'a\\'': [1, (2, -99999999999999999999)]}",
                Some("99999999999999999999"),
            ),
        ] {
            assert_eq!(unsafe_integer_token(text), found, "{text}");
        }
    }

    #[test]
    fn limits_of_safe_integers_are_exact() {
        let check = |v: Value| {
            let text = v.to_string();
            let Value::Object(map) = v else { panic!() };
            check_safe_integers(&map, &text)
        };
        let max = MAX_SAFE_INTEGER as i64;
        assert_eq!(check(json!({"a": max, "b": -max, "c": [1e300]})), Ok(()));
        // The huge float sends the check to the text, where the zero must not count as unsafe.
        assert_eq!(
            check(json!({"charging": 0, "a": -7.469_654_189_543_771_5e270})),
            Ok(())
        );
        for v in [
            json!({"a": max + 1}),
            json!({"a": -max - 1}),
            json!({"a": u64::MAX}),
            json!({"a": i64::MIN}),
        ] {
            assert!(
                matches!(check(v.clone()), Err(Error::UnsafeInteger { .. })),
                "{v}"
            );
        }
    }

    #[test]
    fn json_len_is_the_compact_text_length() {
        for v in [
            json!(null),
            json!("a\"\u{1}é"),
            json!([1, {"b": 2.5}]),
            json!({}),
        ] {
            assert_eq!(json_len(&v), v.to_string().len(), "{v}");
        }
    }
}
