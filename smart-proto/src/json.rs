//! JSON text written straight into a `String`: string literals escaped as `serde_json` escapes them.
//!
//! `serde_json` writes through `io::Write`, which hands over bytes; a `String` has to check them again.
//! These writers take `&str` and need no check; `write_str_bytes` is the same literal for a writer of bytes
//! (`Record::write_json_bytes`), with the same escape table. They depend on nothing else in the crate, so that the
//! record writer and the frame writers can both use them.

use std::fmt::Write as _;

use serde_json::Value;

/// `s` as a JSON string literal, quotes included.
#[inline]
pub(crate) fn write_str(out: &mut String, s: &str) {
    out.push('"');
    write_chars(out, s);
    out.push('"');
}

/// The inside of a JSON string literal: `"`, `\` and control characters escaped (`\n`, `\u0001`), as
/// `serde_json` does; everything else, DEL and non-ASCII included, as is.
#[inline]
pub(crate) fn write_chars(out: &mut String, s: &str) {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !ESCAPED[usize::from(b)] {
            continue;
        }
        // `i` is at an ASCII byte, so a character boundary.
        out.push_str(&s[start..i]);
        match short_escape(b) {
            Some(esc) => out.push_str(esc),
            None => {
                let _ = write!(out, "\\u{b:04x}");
            }
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
}

/// `s` as a JSON string literal, quotes included, appended as bytes: the text of [`write_str`].
#[inline]
pub(crate) fn write_str_bytes(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !ESCAPED[usize::from(b)] {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        if let Some(esc) = short_escape(b) {
            out.extend_from_slice(esc.as_bytes());
        } else {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// The bytes a JSON string literal escapes: `"`, `\` and the control characters.
static ESCAPED: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// The short escape of a byte [`ESCAPED`] marks, as `serde_json` writes it; `None` for the control
/// characters written as `\u00XX`.
#[inline]
fn short_escape(b: u8) -> Option<&'static str> {
    Some(match b {
        b'"' => "\\\"",
        b'\\' => "\\\\",
        b'\n' => "\\n",
        b'\r' => "\\r",
        b'\t' => "\\t",
        0x08 => "\\b",
        0x0c => "\\f",
        _ => return None,
    })
}

/// `{"a": 1, "b": [1, 2]}`: an object with the separators of Python's `json.dumps` (`", "`, `": "`), which
/// the bodies of UPDT messages use. Numbers as `serde_json` writes them.
pub(crate) fn write_spaced_object<'a>(
    out: &mut String,
    entries: impl IntoIterator<Item = (&'a str, &'a Value)>,
) {
    out.push('{');
    for (i, (key, value)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_str(out, key);
        out.push_str(": ");
        write_spaced_value(out, value);
    }
    out.push('}');
}

/// One value with the separators of [`write_spaced_object`].
fn write_spaced_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_spaced_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => write_spaced_object(out, map.iter().map(|(k, v)| (k.as_str(), v))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn strings_are_escaped_as_serde_json_escapes_them(s in "\\PC*|[\\x00-\\x7f]{0,40}") {
            let mut out = String::new();
            write_str(&mut out, &s);
            proptest::prop_assert_eq!(out, serde_json::to_string(&s).unwrap());
        }
    }

    #[test]
    fn spaced_objects_read_back_as_written() {
        let v = serde_json::json!({"a\"b": "line\nbreak\t\u{1}\u{7f}é😀\\", "n": [1, -2, 2.5, 1e300, null, true, false], "o": {"x": {}}, "l": []});
        let serde_json::Value::Object(map) = &v else {
            unreachable!()
        };
        let mut out = String::new();
        write_spaced_object(&mut out, map.iter().map(|(k, v)| (k.as_str(), v)));
        assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), v);
        assert!(
            out.contains(r#""n": [1, -2, 2.5, 1e+300, null, true, false]"#),
            "{out}"
        );
    }

    #[test]
    fn every_control_character() {
        let s: String = (0u8..=0x7f).map(char::from).chain("é😀".chars()).collect();
        let mut out = String::new();
        write_str(&mut out, &s);
        assert_eq!(out, serde_json::to_string(&s).unwrap());
    }
}
