//! A record written as compact JSON bytes, field by field: the same text as `serde_json`'s compact
//! writer (a property test holds them equal), at a fraction of its cost — the known fields' keys need
//! no escaping, and a string is copied whole unless it holds a byte that must be escaped. The server
//! writes every stored record this way, on its writer thread, between two syncs.

use serde_json::Value;

use super::Record;
use super::field::FieldRef;
use super::number::EXACT_BELOW;
use crate::json::write_str_bytes as write_str;

impl Record {
    /// Append the record as compact JSON to `out`: the text of [`Record::write_json`], as bytes (what a
    /// log or a socket takes), without checking it as UTF-8 on the way.
    ///
    /// ```
    /// use smart_proto::{Record, Serial, Timestamp};
    ///
    /// let mut record = Record::new(Serial::new("0001")?, "EET", Timestamp::UNIX_EPOCH);
    /// record.battery = Some(0.5);
    /// record.country = "A\"T\n".into();
    /// let mut out = Vec::new();
    /// record.write_json_bytes(&mut out);
    /// assert_eq!(out, serde_json::to_vec(&record)?);
    /// assert!(std::str::from_utf8(&out)?.contains(r#""country":"A\"T\n","#));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_json_bytes(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        let mut first = true;
        let _ = self.try_for_each_known(|key, value| {
            // Known names are plain identifiers: nothing to escape.
            key_plain(out, &mut first, key);
            write_value(out, value);
            Ok::<(), std::convert::Infallible>(())
        });
        for (key, value) in self.extras() {
            if !first {
                out.push(b',');
            }
            first = false;
            write_str(out, key);
            out.push(b':');
            write_json_value(out, value);
        }
        out.push(b'}');
    }
}

/// `"key":`, after a comma unless it is the first field.
#[inline]
fn key_plain(out: &mut Vec<u8>, first: &mut bool, key: &str) {
    if !*first {
        out.push(b',');
    }
    *first = false;
    out.push(b'"');
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
}

#[inline]
fn write_value(out: &mut Vec<u8>, value: FieldRef<'_>) {
    match value {
        FieldRef::Str(s) | FieldRef::OptStr(Some(s)) => write_str(out, s),
        FieldRef::OptStr(None) | FieldRef::Num(None) => out.extend_from_slice(b"null"),
        FieldRef::Num(Some(x)) => write_number(out, x),
        FieldRef::Int(i) => out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes()),
        FieldRef::Bool(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
        FieldRef::Json(v) => write_json_value(out, v),
    }
}

/// A number in its canonical form (`number_value`): integral values an `f64` holds exactly as
/// integers, other finite values as `serde_json` writes floats, anything else as `null`.
#[inline]
fn write_number(out: &mut Vec<u8>, x: f64) {
    if x.abs() < EXACT_BELOW && x.fract() == 0.0 {
        out.extend_from_slice(itoa::Buffer::new().format(x as i64).as_bytes());
    } else if x.is_finite() {
        out.extend_from_slice(zmij::Buffer::new().format_finite(x).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}

/// An extra field's value: through `serde_json` (any shape; writing into a `Vec` cannot fail).
fn write_json_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::String(s) => write_str(out, s),
        Value::Null => out.extend_from_slice(b"null"),
        _ => {
            let _ = serde_json::to_writer(&mut *out, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use crate::{Record, Serial, Timestamp};

    fn written(record: &Record) -> Vec<u8> {
        let mut out = Vec::new();
        record.write_json_bytes(&mut out);
        out
    }

    #[test]
    fn numbers_strings_and_extras_are_written_as_serde_json_writes_them() {
        let mut r = Record::new(
            Serial::new("0001").unwrap(),
            "E\u{7f}T\u{1}",
            Timestamp::UNIX_EPOCH,
        );
        for (battery, text) in [
            (-0.0, "0"),
            (350.0, "350"),
            (0.1, "0.1"),
            (1e300, "1e+300"),
            (9_007_199_254_740_992.0, "9007199254740992.0"),
            (-2.5e-7, "-2.5e-7"),
            (f64::NAN, "null"),
            (f64::INFINITY, "null"),
        ] {
            r.battery = Some(battery);
            let out = written(&r);
            assert_eq!(out, serde_json::to_vec(&r).unwrap(), "{battery}");
            let text = format!("\"battery\":{text},");
            assert!(String::from_utf8(out).unwrap().contains(&text), "{text}");
        }
        r.extra
            .insert("a\"b\\".into(), json!({"x": [1, 2.5, null, "\u{0}é"]}));
        r.extra
            .insert("s".into(), Value::String("tab\there".into()));
        r.extra.insert("n".into(), Value::Null);
        // Shadows a known field: not written.
        r.extra.insert("battery".into(), json!(1));
        assert_eq!(written(&r), serde_json::to_vec(&r).unwrap());
    }

    proptest! {
        #[test]
        fn the_bytes_are_serde_jsons(
            owner in "\\PC{0,12}|[\\x00-\\x7f]{0,12}",
            country in ".{0,8}",
            battery in proptest::option::of(any::<f64>()),
            income in proptest::option::of(-1e18f64..1e18),
            pv in any::<i64>(),
            extras in proptest::collection::btree_map("[\\x00-\\x7f]{0,6}|\\PC{0,4}", any::<i32>(), 0..4),
            text in proptest::collection::vec("[\\x00-\\x7f]{0,6}", 0..3),
        ) {
            let mut r = Record::new(Serial::new("SN-1").unwrap(), &owner, Timestamp::UNIX_EPOCH);
            r.country = country;
            r.battery = battery;
            r.power_income = income;
            r.pv_connectors = pv;
            for (key, n) in extras {
                r.extra.insert(key, if n % 3 == 0 { Value::from(f64::from(n) / 8.0) } else { Value::from(n) });
            }
            for (i, t) in text.into_iter().enumerate() {
                r.extra.insert(format!("t{i}"), Value::String(t));
            }
            prop_assert_eq!(written(&r), serde_json::to_vec(&r).unwrap());
        }
    }
}
