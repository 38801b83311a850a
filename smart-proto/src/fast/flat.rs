//! Flat objects read by a byte scan: `{"key": scalar, ...}` with plain keys, the shape of nearly every
//! body. Values go straight to a [`FlatSink`]: the map of [`parse_body`](crate::parse_body) or the typed
//! fields of a device message. Anything else (nesting in a message, escapes, numbers `serde_json` reads
//! its own way, syntax errors) returns `None` and goes to the general path, which reports errors.

use serde_json::{Map, Number, Value};

use super::scan::{find_special2, json_ws};
use crate::bounds::{MAX_DEPTH, MAX_SAFE_INTEGER, deeper_than};

/// How the strings of a flat object are quoted, and what whitespace surrounds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Quoting {
    /// `"key"`: the text is JSON.
    Plain,
    /// `\"key\"`: the text is the still-escaped inside of a JSON string (the message of a strict-JSON
    /// envelope), read in place instead of being unescaped first. Whitespace is spaces only: other
    /// whitespace bytes would be raw control bytes in that string.
    Escaped,
    /// `"key"` inside a single-quoted Python string (the message of a `str(dict)` envelope), read in
    /// place: as [`Quoting::Plain`], but a `'` would end the message and whitespace is spaces only.
    InSingleQuotes,
}

impl Quoting {
    /// The index of the first byte from `i` on that is not whitespace here.
    #[allow(clippy::inline_always, reason = "hot path, measured")]
    #[inline(always)]
    fn ws(self, b: &[u8], mut i: usize) -> usize {
        if self == Quoting::Plain {
            return json_ws(b, i);
        }
        while b.get(i) == Some(&b' ') {
            i += 1;
        }
        i
    }
}

/// Where the entries of a flat object go.
pub(crate) trait FlatSink {
    /// Take one entry (a later duplicate key replaces an earlier one); `false` declines the whole object,
    /// which then goes to the general path.
    fn put(&mut self, key: &str, value: Value) -> bool;
}

impl FlatSink for Map<String, Value> {
    fn put(&mut self, key: &str, value: Value) -> bool {
        self.insert(key.to_owned(), value);
        true
    }
}

/// A body that is a flat JSON object of unescaped keys and scalar values (nested values are read by
/// `serde_json` where they stand), or `None`: the fast path of [`parse_body`](crate::parse_body).
pub(crate) fn flat_object(body: &str) -> Option<Map<String, Value>> {
    let mut map = Map::new();
    let end = scan_flat(body, 0, Quoting::Plain, &mut map)?;
    (json_ws(body.as_bytes(), end) == body.len()).then_some(map)
}

/// A flat object of unescaped keys and scalar values at `from` in `s` (after whitespace), quoted as
/// `quoting` says; its entries go to `sink`. Returns the index after the closing brace, or `None` for
/// anything else (nesting, escapes, numbers `serde_json` reads its own way, syntax errors).
///
/// With [`Quoting::Escaped`] the entries are what [`parse_body`](crate::parse_body) gives for the unescaped text: the only
/// escape taken is the `\"` around strings, so every string's inside is the same in both forms.
pub(crate) fn scan_flat(
    s: &str,
    from: usize,
    quoting: Quoting,
    sink: &mut impl FlatSink,
) -> Option<usize> {
    // One copy of the scan per quoting, so that the quote bytes it looks for are constants.
    match quoting {
        Quoting::Plain => scan_flat_as::<PLAIN>(s, from, sink),
        Quoting::Escaped => scan_flat_as::<ESCAPED>(s, from, sink),
        Quoting::InSingleQuotes => scan_flat_as::<IN_SINGLE_QUOTES>(s, from, sink),
    }
}

const PLAIN: u8 = 0;
const ESCAPED: u8 = 1;
const IN_SINGLE_QUOTES: u8 = 2;

/// [`scan_flat`] for the quoting `Q` (one of the three constants above).
#[allow(clippy::inline_always, reason = "hot path, measured")]
#[inline(always)]
fn scan_flat_as<const Q: u8>(s: &str, from: usize, sink: &mut impl FlatSink) -> Option<usize> {
    let quoting = match Q {
        PLAIN => Quoting::Plain,
        ESCAPED => Quoting::Escaped,
        _ => Quoting::InSingleQuotes,
    };
    let b = s.as_bytes();
    let mut i = quoting.ws(b, from);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = quoting.ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return Some(i + 1);
    }
    loop {
        let (start, end, next) = flat_str(s, i, quoting)?;
        let key = s.get(start..end)?;
        i = quoting.ws(b, next);
        if b.get(i) != Some(&b':') {
            return None;
        }
        let (value, next) = flat_scalar(s, quoting.ws(b, i + 1), quoting)?;
        if !sink.put(key, value) {
            return None;
        }
        i = quoting.ws(b, next);
        match b.get(i)? {
            b',' => i = quoting.ws(b, i + 1),
            b'}' => return Some(i + 1),
            _ => return None,
        }
    }
}

/// The inside of an unescaped string whose opening quote starts at `i` (as the range `start..end`), and
/// the index after its closing quote; `None` for anything else (escapes, control bytes, no string there).
/// `start` follows an ASCII quote and `end` holds one: both are char boundaries.
#[allow(clippy::inline_always, reason = "hot path, measured")]
#[inline(always)]
fn flat_str(s: &str, i: usize, quoting: Quoting) -> Option<(usize, usize, usize)> {
    let b = s.as_bytes();
    let (start, stop) = match (quoting, b.get(i)) {
        (Quoting::Plain, Some(b'"')) => (i + 1, b'"'),
        (Quoting::InSingleQuotes, Some(b'"')) => (i + 1, b'\''),
        (Quoting::Escaped, Some(b'\\')) if b.get(i + 1) == Some(&b'"') => (i + 2, b'"'),
        _ => return None,
    };
    let end = start + find_special2(b.get(start..)?, b'"', stop)?;
    let after = match (quoting, b.get(end)?) {
        (Quoting::Plain | Quoting::InSingleQuotes, b'"') => end + 1,
        (Quoting::Escaped, b'\\') if b.get(end + 1) == Some(&b'"') => end + 2,
        _ => return None,
    };
    Some((start, end, after))
}

/// An unescaped string, a number, `true`, `false` or `null` at `i`, and the index after it.
#[allow(clippy::inline_always, reason = "hot path, measured")]
#[inline(always)]
fn flat_scalar(s: &str, i: usize, quoting: Quoting) -> Option<(Value, usize)> {
    let b = s.as_bytes();
    let word = |w: &[u8]| b.get(i..i + w.len()) == Some(w);
    let simple = match b.get(i)? {
        b'"' | b'\\' => flat_str(s, i, quoting).and_then(|(start, end, next)| {
            Some((Value::String(s.get(start..end)?.to_owned()), next))
        }),
        b't' if word(b"true") => Some((Value::Bool(true), i + 4)),
        b'f' if word(b"false") => Some((Value::Bool(false), i + 5)),
        b'n' if word(b"null") => Some((Value::Null, i + 4)),
        b'-' | b'0'..=b'9' => json_number(s, i),
        _ => None,
    };
    match simple {
        Some(read) => Some(read),
        // In JSON text, any other value (nested, escaped, a number serde_json reads its own way) is
        // read by serde_json where it stands, and the scan goes on after it.
        None if quoting == Quoting::Plain => serde_value(s, i),
        None => None,
    }
}

/// The one JSON value at `i`, read by `serde_json`, and the index after it. `None` for a value that
/// would nest the object that holds it deeper than [`MAX_DEPTH`] (the general path reports it).
#[cold]
fn serde_value(s: &str, i: usize) -> Option<(Value, usize)> {
    let mut values = serde_json::Deserializer::from_str(s.get(i..)?).into_iter::<Value>();
    let value = values.next()?.ok()?;
    if deeper_than(&value, MAX_DEPTH - 1) {
        return None;
    }
    Some((value, i + values.byte_offset()))
}

/// Powers of ten that an `f64` holds exactly.
const POW10: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// A number in JSON's grammar. Big integers and `-0` go to `serde_json`, which gives them its own meaning.
///
/// The usual short integers and decimals are read in one pass here; anything longer, or with an
/// exponent, by [`json_number_full`].
#[allow(clippy::inline_always, reason = "hot path, measured")]
#[inline(always)]
fn json_number(s: &str, start: usize) -> Option<(Value, usize)> {
    let b = s.as_bytes();
    let negative = b.get(start) == Some(&b'-');
    let int_start = start + usize::from(negative);
    let mut j = int_start;
    let mut mantissa = 0_u64;
    let mut frac_digits = 0;
    let mut point = None;
    while let Some(&c) = b.get(j) {
        let digit = c.wrapping_sub(b'0');
        if digit <= 9 {
            mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(digit));
            frac_digits += usize::from(point.is_some());
        } else if c == b'.' && point.is_none() {
            point = Some(j);
        } else {
            break;
        }
        j += 1;
    }
    let int_end = point.unwrap_or(j);
    let int_digits = int_end - int_start;
    let plain = int_digits > 0
        && int_digits + frac_digits <= 15
        && (int_digits == 1 || b[int_start] != b'0')
        && (point.is_none() || frac_digits > 0)
        && !matches!(b.get(j), Some(b'e' | b'E' | b'.'));
    if !plain {
        return json_number_full(s, start);
    }
    let number = match (point, negative) {
        (Some(_), _) => {
            // Both operands are exact in an `f64` (below 2^53 and 10^22), so the one rounding of the
            // division gives the correctly rounded value, the same as a full parse (Clinger's fast path).
            let x = mantissa as f64 / POW10[frac_digits];
            Number::from_f64(if negative { -x } else { x })?
        }
        (None, true) if mantissa == 0 => return None,
        (None, true) => Number::from(-(mantissa as i64)),
        (None, false) => Number::from(mantissa),
    };
    Some((Value::Number(number), j))
}

/// [`json_number`], for any length and with exponents.
fn json_number_full(s: &str, start: usize) -> Option<(Value, usize)> {
    let b = s.as_bytes();
    // The digits, also gathered into `mantissa` (wrapping: only used when there are few enough digits).
    let mut mantissa = 0_u64;
    let mut digits = |mut j: usize| {
        while let Some(&d @ b'0'..=b'9') = b.get(j) {
            mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
            j += 1;
        }
        j
    };
    let negative = b.get(start) == Some(&b'-');
    let int_start = start + usize::from(negative);
    let mut j = digits(int_start);
    let int_digits = j - int_start;
    if int_digits == 0 || (int_digits > 1 && b[int_start] == b'0') {
        return None;
    }
    let mut frac_digits = 0;
    if b.get(j) == Some(&b'.') {
        let frac = j + 1;
        j = digits(frac);
        frac_digits = j - frac;
        if frac_digits == 0 {
            return None;
        }
    }
    let mut exponent = false;
    if let Some(b'e' | b'E') = b.get(j) {
        j += 1;
        if let Some(b'+' | b'-') = b.get(j) {
            j += 1;
        }
        let exp = j;
        while let Some(b'0'..=b'9') = b.get(j) {
            j += 1;
        }
        if j == exp {
            return None;
        }
        exponent = true;
    }
    let token = &s[start..j];
    let number = if exponent || frac_digits > 0 {
        if !exponent && int_digits + frac_digits <= 15 {
            // Both operands are exact in an `f64` (below 2^53 and 10^22), so the one rounding of the
            // division gives the correctly rounded value, the same as a full parse (Clinger's fast path).
            let x = mantissa as f64 / POW10[frac_digits];
            Number::from_f64(if negative { -x } else { x })?
        } else {
            Number::from_f64(token.parse().ok()?)?
        }
    } else if int_digits <= 18 {
        // Below 10^18: no overflow, and it fits an `i64`. Integers beyond ±(2^53−1) are left to the
        // general path, where a device message refuses them (PROTOCOL.md §6).
        match (negative, mantissa) {
            (true, 0) => return None,
            (_, m) if m > MAX_SAFE_INTEGER => return None,
            (true, m) => Number::from(-(m as i64)),
            (false, m) => Number::from(m),
        }
    } else {
        // 19 digits or more, all beyond ±(2^53−1): as above.
        return None;
    };
    Some((Value::Number(number), j))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

    use super::*;
    use crate::parse_body;

    proptest::proptest! {
        /// Numbers in JSON's grammar (and near misses): the scan reads them as `serde_json` does, or
        /// declines.
        #[test]
        fn numbers_read_as_serde_json_reads_them(
            token in "-?(0|[1-9][0-9]{0,19})(\\.[0-9]{1,18})?([eE][-+]?[0-9]{1,3})?|[-+.0-9eE]{1,8}",
        ) {
            let body = format!(r#"{{"n": {token}}}"#);
            let serde = serde_json::from_str::<Value>(&body).ok();
            for quoting in [Quoting::Plain, Quoting::Escaped, Quoting::InSingleQuotes] {
                let text = if quoting == Quoting::Escaped { body.replace('"', "\\\"") } else { body.clone() };
                let mut map = Map::new();
                if let Some(end) = scan_flat(&text, 0, quoting, &mut map) {
                    proptest::prop_assert_eq!(end, text.len());
                    proptest::prop_assert_eq!(Some(Value::Object(map)), serde.clone(), "{}", text);
                }
            }
            if let Some(Value::Object(map)) = &serde {
                proptest::prop_assert_eq!(&parse_body(&body).unwrap(), map);
            }
        }
    }

    #[test]
    fn short_decimals_take_the_one_pass_path() {
        for token in [
            "0.5",
            "92.5",
            "-92.5",
            "0.001",
            "123.456",
            "12345678901234.5",
            "-0.0",
            "357",
            "-7",
        ] {
            let (value, end) = json_number(token, 0).unwrap();
            assert_eq!(end, token.len());
            assert_eq!(
                value,
                serde_json::from_str::<Value>(token).unwrap(),
                "{token}"
            );
            assert_eq!(Some((value, end)), json_number_full(token, 0), "{token}");
        }
    }

    #[test]
    fn flat_scan_agrees_with_serde_or_declines() {
        for body in [
            r#"{"power_consumption": 357}"#,
            r#" { "a" : -1.5e-3 , "b" : "x" , "c" : true , "d" : false , "e" : null , "f" : 0 } "#,
            r#"{"big": 18446744073709551615, "neg": -9223372036854775808, "f": 1E+2}"#,
            "{}",
            // Values the scan hands to serde_json where they stand: nesting, escapes, numbers
            // serde_json gives its own meaning to.
            r#"{"a": [1, {"b": [2]}], "c": 3}"#,
            r#"{"a": {}, "b": [], "c": "x"}"#,
            r#"{"a": "\n\u00e9", "b": 1}"#,
            r#"{"a": -0, "b": 18446744073709551616, "c": 1e300, "d": 0.1}"#,
            r#"{"a": 1, "a": [2], "a": 3}"#,
            "{\"a\":\t[1,\n2] ,\r\"b\": {} }",
        ] {
            let fast = flat_object(body).unwrap();
            let Value::Object(slow) = serde_json::from_str::<Value>(body).unwrap() else {
                panic!()
            };
            assert_eq!(fast, slow, "{body}");
        }
        // Escaped keys and invalid JSON decline.
        for body in [
            r#"{"a\n": 1}"#,
            r#"{"a": 01}"#,
            r#"{"a": 1.}"#,
            r#"{"a": .5}"#,
            r#"{"a": 1e}"#,
            r#"{"a": +1}"#,
            r#"{"a": 1,}"#,
            r#"{"a" 1}"#,
            r#"{"a": 1} x"#,
            r#"{"a": [1,]}"#,
            r#"{"a": [1} "#,
            "{'a': 1}",
            r#"{"a": 'x'}"#,
            r#"{"a": True}"#,
            "[1]",
            r#"{"a": tru}"#,
            "{\"a\": \"\t\"}",
        ] {
            assert!(flat_object(body).is_none(), "{body}");
        }
        // Whatever path they take, these agree with serde_json.
        for body in [r#"{"a\n": "\u00e9"}"#, r#"{"a": 1, "b\"": [{}]}"#] {
            let Value::Object(slow) = serde_json::from_str::<Value>(body).unwrap() else {
                panic!()
            };
            assert_eq!(parse_body(body).unwrap(), slow, "{body}");
        }
    }
}
