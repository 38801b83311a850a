//! Message bodies: JSON objects or Python dict literals (PROTOCOL.md §3).
//!
//! Devices written in Python often send `str(dict)` rather than `json.dumps(dict)`, so a body may be a
//! Python literal: single- or double-quoted strings with Python escapes, `True`/`False`/`None`, integers of
//! any size, floats (`1e3`, `-2.5`, `.5`, `5.`), nested dicts, lists and tuples, trailing commas. It is
//! converted to the equivalent JSON value.
//!
//! Three paths, fastest first: a JSON object of plain keys (nearly every body) is read by a byte scan
//! straight into the map (the crate's fast path), which reads simple values itself and hands nested or
//! escaped ones to `serde_json` where they stand; other valid JSON goes through `serde_json`; everything
//! else goes through the Python-literal parser (nom), which also accepts JSON's `true`/`false`/`null` so
//! that mixed forms work, and which reports the syntax errors. Valid JSON always means what JSON says (`"\/"` is
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

use crate::bounds::deeper_than;
use crate::fast::find_special;
use crate::{Error, Result};

pub use crate::bounds::MAX_DEPTH;

/// The reason given for a body nested deeper than [`MAX_DEPTH`].
const TOO_DEEP: &str = "nested deeper than 32 levels";

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
    if let Some(map) = crate::fast::flat_object(body) {
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
// The Python-literal parser. Each construct is recognised by its first character, so the parser never
// backtracks: every error is final and points at the byte where the input stopped making sense.

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
            let word = crate::error::shorten(word, crate::error::WORD_QUOTE);
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
mod tests {
    #![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

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

    #[test]
    fn find_py_stop_stops_at_the_quote_a_backslash_or_a_line_break() {
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
