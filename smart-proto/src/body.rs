//! Message bodies: JSON objects or Python dict literals (PROTOCOL.md §3).
//!
//! Devices written in Python often send `str(dict)` rather than `json.dumps(dict)`, so a body may be a
//! Python literal: single- or double-quoted strings with Python escapes, `True`/`False`/`None`, integers of
//! any size, floats (`1e3`, `-2.5`, `.5`, `5.`), nested dicts, lists and tuples, trailing commas. It is
//! converted to the equivalent JSON value.
//!
//! Three paths, fastest first: a JSON object of plain keys (nearly every body) is read by a byte scan
//! straight into the map, which reads simple values itself and hands nested or escaped ones to
//! `serde_json` where they stand; other valid JSON goes through `serde_json`; everything else goes
//! through the Python-literal parser (nom), which also accepts JSON's `true`/`false`/`null` so that mixed
//! forms work, and which reports the syntax errors. Valid JSON always means what JSON says (`"\/"` is
//! `/`); Python rules apply only to text that is not JSON (there an unknown escape like `\/` keeps its
//! backslash, as in Python).
//!
//! ```
//! use serde_json::json;
//!
//! let body = smart_proto::parse_body("{'battery': 350, 'charging': False, 'tags': ('a', 'b'),}")?;
//! assert_eq!(serde_json::Value::Object(body), json!({"battery": 350, "charging": false, "tags": ["a", "b"]}));
//! # Ok::<(), smart_proto::Error>(())
//! ```
//!
//! Limits: nesting is bounded to [`MAX_DEPTH`] levels, for JSON and Python literals alike, so that hostile
//! input cannot exhaust the stack and every accepted body stays well within what `serde_json` reads back
//! (its own limit is 128) once it is stored inside a record. Not supported: sets, bytes and raw strings, triple-quoted
//! strings, `\N{…}` escapes, hex/octal/binary integers, `_` digit separators, non-string dict keys, and
//! `inf`/`nan` (JSON has no such numbers). A `u` prefix on strings (Python 2's `u'…'`) is accepted.

use std::borrow::Cow;

use nom::Parser;
use nom::branch::alt;
use nom::bytes::complete::take_while1;
use nom::character::complete::{char, digit0, digit1, one_of};
use nom::combinator::opt;
use nom::error::{ErrorKind, ParseError};
use serde_json::{Map, Number, Value};

use crate::{Error, Result};

/// Deepest nesting of objects (dicts), lists and tuples in a body or literal, counting the outermost
/// container as level 1 (PROTOCOL.md §3). The same for JSON and Python literals, and far below
/// `serde_json`'s recursion limit of 128, so that a stored record (one level deeper than its body)
/// always reads back.
///
/// ```
/// use smart_proto::{body::MAX_DEPTH, parse_body, parse_python_literal};
///
/// let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
/// assert!(parse_python_literal(&nested(MAX_DEPTH)).is_ok());
/// assert!(parse_python_literal(&nested(MAX_DEPTH + 1)).is_err());
///
/// // A JSON body: the object itself is level 1.
/// let body = |n: usize| format!("{{\"a\": {}}}", nested(n - 1));
/// assert!(parse_body(&body(MAX_DEPTH)).is_ok());
/// let err = parse_body(&body(MAX_DEPTH + 1)).unwrap_err();
/// assert!(err.to_string().ends_with("nested deeper than 32 levels"), "{err}");
/// ```
pub const MAX_DEPTH: usize = 32;

/// The reason given for a body nested deeper than [`MAX_DEPTH`].
const TOO_DEEP: &str = "nested deeper than 32 levels";

/// Whether a value nests deeper than `limit` levels (a scalar is level 0, `[]` level 1).
pub(crate) fn deeper_than(value: &Value, limit: usize) -> bool {
    match value {
        Value::Array(items) => limit == 0 || items.iter().any(|v| deeper_than(v, limit - 1)),
        Value::Object(map) => limit == 0 || map.values().any(|v| deeper_than(v, limit - 1)),
        _ => false,
    }
}

/// Parse a body into an object: JSON first (fast paths), then a Python dict literal.
/// Duplicate keys: the last wins. Anything but an object is [`Error::BodyNotObject`]; text that is
/// neither JSON nor a Python literal is [`Error::BodySyntax`] with the byte offset of the problem.
///
/// ```
/// use smart_proto::{Error, parse_body};
///
/// let body = parse_body(r#"{"power_consumption": 357}"#)?;
/// assert_eq!(body["power_consumption"], 357);
///
/// let body = parse_body("{'parameter_name': 'AT', '_parameter_name': 430}")?;
/// assert_eq!(body["_parameter_name"], 430);
///
/// assert_eq!(parse_body("  42").unwrap_err(), Error::BodyNotObject { offset: 2, found: "a number" });
/// let err = parse_body("{'a': 1 'b': 2}").unwrap_err();
/// assert_eq!(err.to_string(), "body is not valid JSON or a Python dict at byte 8: expected ',' or '}' after a dict value");
/// # Ok::<(), smart_proto::Error>(())
/// ```
pub fn parse_body(body: &str) -> Result<Map<String, Value>> {
    if let Some(map) = scan_flat_json(body) {
        return Ok(map);
    }
    let start = body.len() - skip_ws(body).len();
    if looks_like_json(&body[start..]) {
        if let Ok(value) = serde_json::from_str::<Value>(body) {
            if !deeper_than(&value, MAX_DEPTH) {
                return into_object(value, start);
            }
            // Too deep: the Python-literal parser reads JSON too and reports where the limit is crossed.
        }
    }
    let value = parse_python_literal(body)?;
    if deeper_than(&value, MAX_DEPTH) {
        // Not expected: the Python-literal parser checks the depth as it goes.
        return Err(Error::BodySyntax {
            offset: start,
            reason: TOO_DEEP.to_owned(),
        });
    }
    into_object(value, start)
}

/// Parse any Python literal (dict, list, tuple, str, int, float, `True`/`False`/`None`) into JSON.
///
/// Integers beyond `u64` become floats; tuples become lists; strings keep their Python escapes'
/// meaning (`\x41`, `\u00e9`, `\U0001F600`, octal `\101`).
///
/// ```
/// use serde_json::json;
///
/// let v = smart_proto::parse_python_literal(r"[1, -2.5, .5, 5., 1e3, 'it\'s', None, (True,)]")?;
/// assert_eq!(v, json!([1, -2.5, 0.5, 5.0, 1000.0, "it's", null, [true]]));
/// # Ok::<(), smart_proto::Error>(())
/// ```
///
/// Errors are [`Error::BodySyntax`] with a byte offset into `text`:
///
/// ```
/// let err = smart_proto::parse_python_literal("{'a': [1, 2}").unwrap_err();
/// assert_eq!(err.to_string(), "body is not valid JSON or a Python dict at byte 11: expected ',' or ']' after a list item");
/// ```
pub fn parse_python_literal(text: &str) -> Result<Value> {
    let syntax = |e: PyError<'_>| Error::BodySyntax {
        offset: text.len() - e.at.len(),
        reason: e.reason.into_owned(),
    };
    let (rest, value) = value(skip_ws(text), 0).map_err(|e| syntax(unwrap_err(e)))?;
    let rest = skip_ws(rest);
    if !rest.is_empty() {
        return Err(syntax(PyError::new(
            rest,
            "unexpected text after the value",
        )));
    }
    Ok(value)
}

/// Whether the JSON fast path is worth trying: a single quote right after the brace means Python.
fn looks_like_json(s: &str) -> bool {
    match s.as_bytes().first() {
        Some(b'{') => skip_ws(&s[1..]).as_bytes().first() != Some(&b'\''),
        _ => true,
    }
}

fn into_object(value: Value, offset: usize) -> Result<Map<String, Value>> {
    match value {
        Value::Object(map) => Ok(map),
        other => Err(Error::BodyNotObject {
            offset,
            found: describe(&other),
        }),
    }
}

/// How an error message names a JSON value's type.
pub(crate) fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "true/false",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

// ---------------------------------------------------------------------------------------------------------
// Strict-JSON fast path. Nearly every body is a flat object of plain keys, strings and numbers. A byte scan
// reads that shape with no intermediate values; anything else (nesting, escapes, big integers, syntax
// errors) returns `None` and goes to serde_json, then to the Python parser, which reports errors.

/// JSON whitespace from `i` on; returns the index of the next other byte.
pub(crate) fn json_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// Index of the first `quote`, backslash or control byte, eight bytes at a time (frames are short, so
/// this beats a vectorized search, whose setup costs more than the scan).
#[allow(clippy::inline_always, reason = "hot path, measured")]
#[inline(always)]
pub(crate) fn find_special(b: &[u8], quote: u8) -> Option<usize> {
    find_special2(b, quote, quote)
}

/// [`find_special`] for either of two quotes.
#[allow(clippy::inline_always, reason = "hot path, measured")]
#[inline(always)]
fn find_special2(b: &[u8], quote: u8, other: u8) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // High bit set in each byte of `v` below `n` (exact for the lowest such byte, which is all we use).
    let below = |v: u64, n: u8| v.wrapping_sub(ONES * u64::from(n)) & !v & HIGH;
    let mut i = 0;
    // Whole words while there are any: the input runs on past the string, so short strings are found
    // within a word or two.
    while let Some(word) = b.get(i..i + 8).and_then(|w| <[u8; 8]>::try_from(w).ok()) {
        let x = u64::from_le_bytes(word);
        let hits = below(x ^ (ONES * u64::from(quote)), 1)
            | below(x ^ (ONES * u64::from(other)), 1)
            | below(x ^ (ONES * u64::from(b'\\')), 1)
            | below(x, 0x20);
        if hits != 0 {
            return Some(i + (hits.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    // The last few bytes of the input, one at a time.
    while let Some(&c) = b.get(i) {
        if c == quote || c == other || c == b'\\' || c < 0x20 {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Where a Python string body stops being plain text: its quote, a backslash or a line break. Other
/// control bytes are ordinary characters in a Python string.
fn find_py_stop(b: &[u8], quote: u8) -> Option<usize> {
    let mut from = 0;
    loop {
        let at = from + find_special(b.get(from..)?, quote)?;
        if matches!(b[at], b'\\' | b'\n' | b'\r') || b[at] == quote {
            return Some(at);
        }
        from = at + 1;
    }
}

/// Append the meaning of an escaped JSON string's inside to `out`; `false` if an escape is invalid.
pub(crate) fn unescape_json(mut raw: &str, out: &mut String) -> bool {
    // `raw` comes from `json_str`: no raw quotes or control bytes, so the first special byte is a backslash.
    while let Some(pos) = find_special(raw.as_bytes(), b'"') {
        out.push_str(&raw[..pos]);
        let after = &raw[pos + 1..];
        let Some(&c) = after.as_bytes().first() else {
            return false;
        };
        let simple = match c {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\x08',
            b'f' => '\x0c',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let Some((ch, len)) = json_u_escape(after) else {
                    return false;
                };
                out.push(ch);
                raw = &after[len..];
                continue;
            }
            _ => return false,
        };
        out.push(simple);
        raw = &after[1..];
    }
    out.push_str(raw);
    true
}

/// `uXXXX` (after the backslash), or a surrogate pair `uD83D\uDE00`: the char and the bytes used.
fn json_u_escape(after: &str) -> Option<(char, usize)> {
    let hex4 = |s: &str| {
        let digits = s.get(..4)?;
        if digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            u32::from_str_radix(digits, 16).ok()
        } else {
            None
        }
    };
    let code = hex4(after.get(1..)?)?;
    if (0xD800..0xDC00).contains(&code) {
        let low = hex4(after.get(5..)?.strip_prefix("\\u")?)?;
        if !(0xDC00..0xE000).contains(&low) {
            return None;
        }
        return Some((
            char::from_u32(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00))?,
            11,
        ));
    }
    Some((char::from_u32(code)?, 5))
}

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

/// A flat JSON object of unescaped keys and scalar values, or `None`.
fn scan_flat_json(body: &str) -> Option<Map<String, Value>> {
    let mut map = Map::new();
    let end = scan_flat(body, 0, Quoting::Plain, &mut map)?;
    (json_ws(body.as_bytes(), end) == body.len()).then_some(map)
}

/// A flat object of unescaped keys and scalar values at `from` in `s` (after whitespace), quoted as
/// `quoting` says; its entries go to `sink`. Returns the index after the closing brace, or `None` for
/// anything else (nesting, escapes, numbers `serde_json` reads its own way, syntax errors).
///
/// With [`Quoting::Escaped`] the entries are what [`parse_body`] gives for the unescaped text: the only
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
            (_, m) if m > crate::limits::MAX_SAFE_INTEGER => return None,
            (true, m) => Number::from(-(m as i64)),
            (false, m) => Number::from(m),
        }
    } else {
        // 19 digits or more, all beyond ±(2^53−1): as above.
        return None;
    };
    Some((Value::Number(number), j))
}

// ---------------------------------------------------------------------------------------------------------
// The Python-literal parser. Each construct is recognised by its first character, so the parser never
// backtracks: every error is final and points at the byte where the input stopped making sense.

/// A parse failure: where (the remaining input) and why.
#[derive(Debug)]
pub(crate) struct PyError<'a> {
    pub(crate) at: &'a str,
    pub(crate) reason: Cow<'static, str>,
}

impl<'a> PyError<'a> {
    fn new(at: &'a str, reason: &'static str) -> Self {
        PyError {
            at,
            reason: Cow::Borrowed(reason),
        }
    }
}

impl<'a> ParseError<&'a str> for PyError<'a> {
    fn from_error_kind(at: &'a str, kind: ErrorKind) -> Self {
        let reason = match kind {
            ErrorKind::Digit => "expected a digit",
            ErrorKind::Char => "unexpected character",
            _ => "unexpected input",
        };
        PyError::new(at, reason)
    }

    fn append(_: &'a str, _: ErrorKind, other: Self) -> Self {
        other
    }
}

pub(crate) type PResult<'a, T> = nom::IResult<&'a str, T, PyError<'a>>;

fn fail<'a, T>(at: &'a str, reason: &'static str) -> PResult<'a, T> {
    Err(nom::Err::Failure(PyError::new(at, reason)))
}

fn fail_owned<T>(at: &str, reason: String) -> PResult<'_, T> {
    Err(nom::Err::Failure(PyError {
        at,
        reason: Cow::Owned(reason),
    }))
}

/// Flatten nom's error wrapper; `Incomplete` cannot happen with complete-input parsers.
pub(crate) fn unwrap_err(e: nom::Err<PyError<'_>>) -> PyError<'_> {
    match e {
        nom::Err::Error(e) | nom::Err::Failure(e) => e,
        nom::Err::Incomplete(_) => PyError::new("", "unexpected end of input"),
    }
}

/// Skip Python whitespace (inside brackets newlines are whitespace too).
pub(crate) fn skip_ws(i: &str) -> &str {
    let n = i
        .bytes()
        .take_while(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0c))
        .count();
    // Whitespace is ASCII, so `n` is a char boundary.
    &i[n..]
}

/// Length of a string prefix (`u`) if `i` starts a string literal.
pub(crate) fn string_start(i: &str) -> Option<usize> {
    match i.as_bytes() {
        [b'\'' | b'"', ..] => Some(0),
        [b'u' | b'U', b'\'' | b'"', ..] => Some(1),
        _ => None,
    }
}

/// One value. `depth` counts the containers around it.
pub(crate) fn value(i: &str, depth: usize) -> PResult<'_, Value> {
    if string_start(i).is_some() {
        let (rest, s) = string(i)?;
        return Ok((rest, Value::String(s.into_owned())));
    }
    match i.as_bytes().first() {
        Some(b'{') => {
            let (rest, map) = dict(i, depth + 1)?;
            Ok((rest, Value::Object(map)))
        }
        Some(b'[') => {
            let (rest, items) = list(i, depth + 1)?;
            Ok((rest, Value::Array(items)))
        }
        Some(b'(') => tuple(i, depth + 1),
        Some(b'+' | b'-' | b'.' | b'0'..=b'9') => number(i),
        Some(b) if b.is_ascii_alphabetic() || *b == b'_' => name(i),
        Some(_) => fail(i, "expected a value"),
        None => fail(i, "expected a value, found the end of the input"),
    }
}

fn check_depth(i: &str, depth: usize) -> PResult<'_, ()> {
    if depth > MAX_DEPTH {
        fail(i, TOO_DEEP)
    } else {
        Ok((i, ()))
    }
}

/// `{'key': value, ...}`; `i` starts at the brace.
fn dict(i: &str, depth: usize) -> PResult<'_, Map<String, Value>> {
    check_depth(i, depth)?;
    let mut map = Map::new();
    let mut rest = skip_ws(&i[1..]);
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((after, map));
        }
        let (r, key) = dict_key(rest, "expected a string key or '}'")?;
        let (r, ()) = colon(r)?;
        let (r, v) = value(r, depth)?;
        map.insert(key.into_owned(), v);
        rest = skip_ws(r);
        match rest.as_bytes().first() {
            Some(b',') => rest = skip_ws(&rest[1..]),
            Some(b'}') => {}
            Some(_) => return fail(rest, "expected ',' or '}' after a dict value"),
            None => {
                return fail(
                    rest,
                    "unclosed dict: expected ',' or '}', found the end of the input",
                );
            }
        }
    }
}

/// A dict key: only strings, since JSON keys are strings.
pub(crate) fn dict_key<'a>(i: &'a str, expected: &'static str) -> PResult<'a, Cow<'a, str>> {
    if string_start(i).is_some() {
        return string(i);
    }
    match i.as_bytes().first() {
        None => fail(
            i,
            "unclosed dict: expected a key or '}', found the end of the input",
        ),
        Some(b'{' | b'[' | b'(' | b'+' | b'-' | b'.' | b'0'..=b'9') => {
            fail(i, "dict keys must be strings")
        }
        Some(b) if b.is_ascii_alphabetic() => fail(i, "dict keys must be strings"),
        Some(_) => fail(i, expected),
    }
}

/// The `:` between key and value, with the whitespace around it.
pub(crate) fn colon(i: &str) -> PResult<'_, ()> {
    let i = skip_ws(i);
    match i.strip_prefix(':') {
        Some(rest) => Ok((skip_ws(rest), ())),
        None => fail(i, "expected ':' after a dict key"),
    }
}

/// `[a, b, ...]`; `i` starts at the bracket.
fn list(i: &str, depth: usize) -> PResult<'_, Vec<Value>> {
    check_depth(i, depth)?;
    items(skip_ws(&i[1..]), depth, Vec::new(), b']')
}

/// List or tuple items up to and including `close`.
fn items(mut rest: &str, depth: usize, mut out: Vec<Value>, close: u8) -> PResult<'_, Vec<Value>> {
    let (after_item, unclosed) = if close == b']' {
        (
            "expected ',' or ']' after a list item",
            "unclosed list: expected ',' or ']', found the end of the input",
        )
    } else {
        (
            "expected ',' or ')' after a tuple item",
            "unclosed tuple: expected ',' or ')', found the end of the input",
        )
    };
    loop {
        if rest.as_bytes().first() == Some(&close) {
            return Ok((&rest[1..], out));
        }
        let (r, v) = value(rest, depth)?;
        out.push(v);
        rest = skip_ws(r);
        match rest.as_bytes().first() {
            Some(b',') => rest = skip_ws(&rest[1..]),
            Some(&b) if b == close => {}
            Some(_) => return fail(rest, after_item),
            None => return fail(rest, unclosed),
        }
    }
}

/// `(a, b)` is a list, `()` an empty one, `(a,)` a one-item list, and `(a)` just `a`, as in Python.
fn tuple(i: &str, depth: usize) -> PResult<'_, Value> {
    check_depth(i, depth)?;
    let rest = skip_ws(&i[1..]);
    if let Some(after) = rest.strip_prefix(')') {
        return Ok((after, Value::Array(Vec::new())));
    }
    let (r, first) = value(rest, depth)?;
    let r = skip_ws(r);
    match r.as_bytes().first() {
        Some(b')') => Ok((&r[1..], first)),
        Some(b',') => {
            let (r, items) = items(skip_ws(&r[1..]), depth, vec![first], b')')?;
            Ok((r, Value::Array(items)))
        }
        Some(_) => fail(r, "expected ',' or ')' after a tuple item"),
        None => fail(
            r,
            "unclosed tuple: expected ',' or ')', found the end of the input",
        ),
    }
}

/// `True`, `False`, `None`, and JSON's `true`, `false`, `null`.
fn name(i: &str) -> PResult<'_, Value> {
    let (rest, word) = take_while1(|c: char| c.is_ascii_alphanumeric() || c == '_').parse(i)?;
    let v = match word {
        "True" | "true" => Value::Bool(true),
        "False" | "false" => Value::Bool(false),
        "None" | "null" => Value::Null,
        _ => {
            let word = crate::error::shorten(word, 32);
            return fail_owned(
                i,
                format!("unknown name {word:?}: expected a quoted string, True, False or None"),
            );
        }
    };
    Ok((rest, v))
}

/// A number token: sign, digits with an optional fraction (or a fraction alone), optional exponent.
fn number_token(i: &str) -> PResult<'_, &str> {
    // The token is measured by length rather than with `recognize`: nom 8.0.0's `digit0` can return an
    // empty remainder that is not a suffix of the input at its end, which throws `recognize`'s offset off.
    let (rest, _) = (
        opt(one_of("+-")),
        alt((
            (digit1, opt((char('.'), digit0))).map(|_| ()),
            (char('.'), digit1).map(|_| ()),
        )),
        opt((one_of("eE"), opt(one_of("+-")), digit1)),
    )
        .parse(i)?;
    Ok((rest, &i[..i.len() - rest.len()]))
}

fn number(i: &str) -> PResult<'_, Value> {
    let Ok((rest, token)) = number_token(i) else {
        return fail(i, "expected a number");
    };
    if rest.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '.' || c == '_') {
        return fail(i, "malformed number");
    }
    let float = token.contains(['.', 'e', 'E']);
    let digits = token.trim_start_matches(['+', '-']);
    if !float && digits.len() > 1 && digits.starts_with('0') && digits.bytes().any(|b| b != b'0') {
        return fail(i, "leading zeros are not allowed in an integer");
    }
    let number = if float {
        None
    } else if let Ok(n) = token.parse::<i64>() {
        Some(Number::from(n))
    } else if let Ok(n) = token.parse::<u64>() {
        Some(Number::from(n))
    } else {
        None
    };
    // Integers too big for u64 become floats, as serde_json does with such JSON numbers.
    let number = match number {
        Some(n) => Some(n),
        None => token.parse::<f64>().ok().and_then(Number::from_f64),
    };
    match number {
        Some(n) => Ok((rest, Value::Number(n))),
        None => fail(i, "number out of range"),
    }
}

/// A quoted string (optionally `u`-prefixed); borrowed unless it holds escapes.
pub(crate) fn string(i: &str) -> PResult<'_, Cow<'_, str>> {
    let start = i;
    let i = &i[string_start(i).unwrap_or(0)..];
    let Some(&quote) = i.as_bytes().first() else {
        return fail(start, "expected a string");
    };
    let body = &i[1..];
    match find_py_stop(body.as_bytes(), quote) {
        Some(n) if body.as_bytes()[n] == quote => Ok((&body[n + 1..], Cow::Borrowed(&body[..n]))),
        Some(n) if body.as_bytes()[n] == b'\\' => {
            let (rest, s) = escaped(start, &body[n..], quote, body[..n].to_owned())?;
            Ok((rest, Cow::Owned(s)))
        }
        _ => fail(start, "unterminated string"),
    }
}

/// The rest of a string that holds escapes; `i` starts at the first backslash, `out` holds what came before.
fn escaped<'a>(start: &'a str, mut i: &'a str, quote: u8, mut out: String) -> PResult<'a, String> {
    loop {
        let Some(n) = find_py_stop(i.as_bytes(), quote) else {
            return fail(start, "unterminated string");
        };
        out.push_str(&i[..n]);
        i = &i[n..];
        match i.as_bytes()[0] {
            b if b == quote => return Ok((&i[1..], out)),
            b'\\' if i.len() == 1 => return fail(start, "unterminated string"),
            b'\\' => i = escape(i, &mut out)?.0,
            _ => return fail(start, "unterminated string"),
        }
    }
}

/// One escape sequence starting at the backslash; appends its meaning to `out`.
fn escape<'a>(i: &'a str, out: &mut String) -> PResult<'a, ()> {
    let mut chars = i[1..].chars();
    let Some(c) = chars.next() else {
        return fail(i, "unterminated string");
    };
    let after = &i[1 + c.len_utf8()..];
    let simple = match c {
        '\\' => Some('\\'),
        '\'' => Some('\''),
        '"' => Some('"'),
        'a' => Some('\x07'),
        'b' => Some('\x08'),
        'f' => Some('\x0c'),
        'n' => Some('\n'),
        'r' => Some('\r'),
        't' => Some('\t'),
        'v' => Some('\x0b'),
        _ => None,
    };
    if let Some(ch) = simple {
        out.push(ch);
        return Ok((after, ()));
    }
    match c {
        // A backslash before a line break continues the string on the next line.
        '\n' => Ok((after, ())),
        '\r' => Ok((after.strip_prefix('\n').unwrap_or(after), ())),
        '0'..='7' => {
            let len = i[1..]
                .bytes()
                .take(3)
                .take_while(|b| (b'0'..=b'7').contains(b))
                .count();
            let code = u32::from_str_radix(&i[1..=len], 8).unwrap_or(0);
            // At most 0o777, always a valid scalar value.
            out.push(char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER));
            Ok((&i[1 + len..], ()))
        }
        'x' => {
            let (rest, code) = hex(i, after, 2, "invalid \\x escape: expected 2 hex digits")?;
            out.push(char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER));
            Ok((rest, ()))
        }
        'u' => {
            let (rest, code) = hex(i, after, 4, "invalid \\u escape: expected 4 hex digits")?;
            if (0xD800..0xDC00).contains(&code) {
                // A JSON-style surrogate pair; Python itself writes \U0001F600 instead.
                if let Some(low_start) = rest.strip_prefix("\\u") {
                    if let Ok((rest2, low)) = hex(
                        rest,
                        low_start,
                        4,
                        "invalid \\u escape: expected 4 hex digits",
                    ) {
                        if (0xDC00..0xE000).contains(&low) {
                            let code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                            if let Some(ch) = char::from_u32(code) {
                                out.push(ch);
                                return Ok((rest2, ()));
                            }
                        }
                    }
                }
            }
            match char::from_u32(code) {
                Some(ch) => {
                    out.push(ch);
                    Ok((rest, ()))
                }
                None => fail(i, "lone surrogate in \\u escape cannot be represented"),
            }
        }
        'U' => {
            let (rest, code) = hex(i, after, 8, "invalid \\U escape: expected 8 hex digits")?;
            match char::from_u32(code) {
                Some(ch) => {
                    out.push(ch);
                    Ok((rest, ()))
                }
                None => fail(i, "invalid code point in \\U escape"),
            }
        }
        // Python keeps unknown escapes as they are, backslash included.
        other => {
            out.push('\\');
            out.push(other);
            Ok((after, ()))
        }
    }
}

/// Exactly `n` hex digits at the start of `digits`; errors point at the escape's backslash.
fn hex<'a>(escape: &'a str, digits: &'a str, n: usize, reason: &'static str) -> PResult<'a, u32> {
    let ok = digits.len() >= n && digits.as_bytes()[..n].iter().all(u8::is_ascii_hexdigit);
    match ok
        .then(|| u32::from_str_radix(&digits[..n], 16).ok())
        .flatten()
    {
        Some(code) => Ok((&digits[n..], code)),
        None => fail(escape, reason),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use serde_json::json;

    use super::*;

    fn lit(s: &str) -> Value {
        parse_python_literal(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn syntax(s: &str) -> (usize, String) {
        match parse_python_literal(s).unwrap_err() {
            Error::BodySyntax { offset, reason } => (offset, reason),
            other => panic!("unexpected {other:?}"),
        }
    }

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
            let fast = scan_flat_json(body).unwrap();
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
            assert!(scan_flat_json(body).is_none(), "{body}");
        }
        // Whatever path they take, these agree with serde_json.
        for body in [r#"{"a\n": "\u00e9"}"#, r#"{"a": 1, "b\"": [{}]}"#] {
            let Value::Object(slow) = serde_json::from_str::<Value>(body).unwrap() else {
                panic!()
            };
            assert_eq!(parse_body(body).unwrap(), slow, "{body}");
        }
    }

    #[test]
    fn find_special_finds_the_first_quote_backslash_or_control_byte() {
        assert_eq!(find_special(b"", b'"'), None);
        assert_eq!(find_special(b"abcdefghijklmnop", b'"'), None);
        for (i, special) in [b'"', b'\\', b'\n', 0x00, 0x1f].into_iter().enumerate() {
            for at in 0..20 {
                let mut s = vec![b'a'; 20];
                s[at] = special;
                s[(at + 3 + i) % 20] = b'"';
                let want = s.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20);
                assert_eq!(find_special(&s, b'"'), want, "{s:?}");
            }
        }
        // Bytes above 0x7f (UTF-8) and 0x20 itself are ordinary.
        assert_eq!(find_special("é ü €".as_bytes(), b'"'), None);
        assert_eq!(find_special(b"abcdefgh'", b'\''), Some(8));
        assert_eq!(find_py_stop(b"a\tb\x01c'd", b'\''), Some(5));
        assert_eq!(find_py_stop(b"a\tb\nc'd", b'\''), Some(3));
        assert_eq!(find_py_stop(b"a\tb", b'\''), None);
    }

    #[test]
    fn json_body_takes_the_fast_path() {
        let body = parse_body(r#"{"power_consumption": 357, "a": [1, {"b": null}]}"#).unwrap();
        assert_eq!(
            Value::Object(body),
            json!({"power_consumption": 357, "a": [1, {"b": null}]})
        );
    }

    #[test]
    fn python_dict_with_the_seed_capping_example() {
        let body = parse_body("{'parameter_name':'AT','_parameter_name':430}").unwrap();
        assert_eq!(
            Value::Object(body),
            json!({"parameter_name": "AT", "_parameter_name": 430})
        );
    }

    #[test]
    fn python_keywords_and_json_keywords() {
        assert_eq!(
            lit("[True, False, None, true, false, null]"),
            json!([true, false, null, true, false, null])
        );
        assert_eq!(
            syntax("[Nonsense]"),
            (
                1,
                "unknown name \"Nonsense\": expected a quoted string, True, False or None".into()
            )
        );
        assert_eq!(syntax("{'x': inf}").0, 6);
    }

    #[test]
    fn integers_of_any_size() {
        assert_eq!(lit("0"), json!(0));
        assert_eq!(lit("-17"), json!(-17));
        assert_eq!(lit("+5"), json!(5));
        assert_eq!(lit("9223372036854775807"), json!(i64::MAX));
        assert_eq!(lit("-9223372036854775808"), json!(i64::MIN));
        assert_eq!(lit("18446744073709551615"), json!(u64::MAX));
        assert_eq!(
            lit("18446744073709551616"),
            json!(18_446_744_073_709_551_616.0_f64)
        );
        assert_eq!(lit("-99999999999999999999"), json!(-1e20));
        assert_eq!(lit("000"), json!(0));
        assert_eq!(
            syntax("0116").1,
            "leading zeros are not allowed in an integer"
        );
        let huge = "9".repeat(400);
        assert_eq!(syntax(&huge), (0, "number out of range".into()));
    }

    #[test]
    fn floats_in_every_python_spelling() {
        assert_eq!(lit("1e3"), json!(1000.0));
        assert_eq!(lit("-2.5"), json!(-2.5));
        assert_eq!(lit(".5"), json!(0.5));
        assert_eq!(lit("5."), json!(5.0));
        assert_eq!(lit("1.5E-3"), json!(0.0015));
        assert_eq!(lit("0.0"), json!(0.0));
        assert_eq!(syntax("[1.2.3]"), (1, "malformed number".into()));
        assert_eq!(syntax("[12abc]"), (1, "malformed number".into()));
        assert_eq!(syntax("[1e]"), (1, "malformed number".into()));
        assert_eq!(syntax("[-]"), (1, "expected a number".into()));
        assert_eq!(syntax("1e999"), (0, "number out of range".into()));
    }

    #[test]
    fn strings_with_python_escapes() {
        assert_eq!(lit(r#"'a\nb\tc\\d\'e\"f'"#), json!("a\nb\tc\\d'e\"f"));
        assert_eq!(lit(r#""it's""#), json!("it's"));
        assert_eq!(lit(r"'\x41\u00e9\U0001F600\101\0'"), json!("Aé😀A\0"));
        assert_eq!(lit(r"'\a\b\f\v\r'"), json!("\x07\x08\x0c\x0b\r"));
        assert_eq!(lit(r"'\ud83d\ude00'"), json!("😀"));
        assert_eq!(lit(r"'\q\/'"), json!("\\q\\/"));
        assert_eq!(lit("'a\\\nb'"), json!("ab"));
        assert_eq!(lit("u'x'"), json!("x"));
        assert_eq!(lit("'ünï'"), json!("ünï"));
    }

    #[test]
    fn string_errors_point_at_the_problem() {
        assert_eq!(syntax("{'a': 'xyz"), (6, "unterminated string".into()));
        assert_eq!(syntax("{'a': 'x\ny'}"), (6, "unterminated string".into()));
        assert_eq!(
            syntax(r"['ab\x4g']"),
            (4, "invalid \\x escape: expected 2 hex digits".into())
        );
        assert_eq!(
            syntax(r"['\u12']"),
            (2, "invalid \\u escape: expected 4 hex digits".into())
        );
        assert_eq!(
            syntax(r"['\ud800']"),
            (
                2,
                "lone surrogate in \\u escape cannot be represented".into()
            )
        );
        assert_eq!(
            syntax(r"['\U00110000']"),
            (2, "invalid code point in \\U escape".into())
        );
        assert_eq!(syntax("'\\"), (0, "unterminated string".into()));
    }

    #[test]
    fn borrowed_when_no_escapes() {
        let (_, s) = string("'plain' rest").unwrap();
        assert!(matches!(s, Cow::Borrowed("plain")));
        let (rest, s) = string(r"'a\'b' rest").unwrap();
        assert_eq!((rest, s.as_ref()), (" rest", "a'b"));
    }

    #[test]
    fn containers_tuples_and_trailing_commas() {
        assert_eq!(
            lit("{'a': [1, 2,], 'b': (3, 4), 'c': (5,), 'd': (), 'e': (6), 'f': {},}"),
            json!({"a": [1, 2], "b": [3, 4], "c": [5], "d": [], "e": 6, "f": {}})
        );
        assert_eq!(
            lit(" \n{ 'a' :\t1 ,\r\n 'b' : 2 } \n"),
            json!({"a": 1, "b": 2})
        );
        assert_eq!(lit("[]"), json!([]));
    }

    #[test]
    fn duplicate_keys_last_wins() {
        assert_eq!(lit("{'a': 1, 'a': 2}"), json!({"a": 2}));
        assert_eq!(
            Value::Object(parse_body(r#"{"a": 1, "a": 2}"#).unwrap()),
            json!({"a": 2})
        );
    }

    #[test]
    fn container_errors() {
        assert_eq!(
            syntax("{'a' 1}"),
            (5, "expected ':' after a dict key".into())
        );
        assert_eq!(syntax("{1: 2}"), (1, "dict keys must be strings".into()));
        assert_eq!(
            syntax("{'a': 1"),
            (
                7,
                "unclosed dict: expected ',' or '}', found the end of the input".into()
            )
        );
        assert_eq!(
            syntax("{'a': 1,"),
            (
                8,
                "unclosed dict: expected a key or '}', found the end of the input".into()
            )
        );
        assert_eq!(syntax("{'a': }"), (6, "expected a value".into()));
        assert_eq!(
            syntax("{'a': 1} x"),
            (9, "unexpected text after the value".into())
        );
        assert_eq!(
            syntax("[1 2]"),
            (3, "expected ',' or ']' after a list item".into())
        );
        assert_eq!(
            syntax("(1 2)"),
            (3, "expected ',' or ')' after a tuple item".into())
        );
        assert_eq!(
            syntax("(1, 2"),
            (
                5,
                "unclosed tuple: expected ',' or ')', found the end of the input".into()
            )
        );
        assert_eq!(syntax("{,}"), (1, "expected a string key or '}'".into()));
        assert_eq!(
            syntax(""),
            (0, "expected a value, found the end of the input".into())
        );
    }

    #[test]
    fn nesting_is_bounded() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse_python_literal(&ok).is_ok());
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(
            syntax(&deep),
            (MAX_DEPTH, "nested deeper than 32 levels".into())
        );
        assert_eq!(TOO_DEEP, format!("nested deeper than {MAX_DEPTH} levels"));
        let hostile = "{'a': ".repeat(100_000);
        assert!(parse_body(&hostile).is_err());
        let hostile_json = "[".repeat(100_000);
        assert!(parse_body(&hostile_json).is_err());
    }

    #[test]
    fn non_objects_are_named() {
        let found = |s: &str| match parse_body(s).unwrap_err() {
            Error::BodyNotObject { offset, found } => (offset, found),
            other => panic!("{other:?}"),
        };
        assert_eq!(found("[1, 2]"), (0, "a list"));
        assert_eq!(found(" 3"), (1, "a number"));
        assert_eq!(found("'x'"), (0, "a string"));
        assert_eq!(found("\"x\""), (0, "a string"));
        assert_eq!(found("True"), (0, "true/false"));
        assert_eq!(found("null"), (0, "null"));
        assert_eq!(found("(1, 2)"), (0, "a list"));
    }

    #[test]
    fn empty_object_is_valid() {
        assert!(parse_body("{}").unwrap().is_empty());
        assert!(parse_body(" { } ").unwrap().is_empty());
    }
}
