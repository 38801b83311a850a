//! JSON text written straight into a `String`: string literals escaped as `serde_json` escapes them.
//!
//! `serde_json` writes through `io::Write`, which hands over bytes; a `String` has to check them again.
//! These writers take `&str` and need no check. They depend on nothing else in the crate, so that the
//! record writer and the frame writers can both use them.

use std::fmt::Write as _;

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
        let esc = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        // `i` is at an ASCII byte, so a character boundary.
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
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
    fn every_control_character() {
        let s: String = (0u8..=0x7f).map(char::from).chain("é😀".chars()).collect();
        let mut out = String::new();
        write_str(&mut out, &s);
        assert_eq!(out, serde_json::to_string(&s).unwrap());
    }
}
