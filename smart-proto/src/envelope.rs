//! The envelope `{"type": KIND, "message": PAYLOAD}` (PROTOCOL.md §1).
//!
//! Every websocket text frame holds one envelope. Keys may come in any order, unknown keys are ignored,
//! and `reason` (which the server adds to error replies) is kept. Strict JSON is parsed straight into
//! borrowed fields; an envelope written as a Python dict literal (`str(dict)` from a Python device) is
//! accepted too.
//!
//! ```
//! use smart_proto::{Kind, Payload, parse_envelope};
//!
//! let env = parse_envelope(r#"{"type": "UPDT", "message": "0116:0001:{}"}"#)?;
//! assert_eq!(env.kind, Kind::Updt);
//! assert_eq!(env.message, Payload::Text("0116:0001:{}".into()));
//!
//! let env = parse_envelope("{'message': '0116:0001:{}', 'type': 'UPDT', 'extra': [1]}")?;
//! assert_eq!(env.kind, Kind::Updt);
//! assert_eq!(env.message, Payload::Text("0116:0001:{}".into()));
//! # Ok::<(), smart_proto::Error>(())
//! ```

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};

use crate::body::{self, PyError};
use crate::fast::{FastEnvelope, JsonStr};
use crate::{Error, Result};

/// The four message types.
///
/// ```
/// use smart_proto::Kind;
///
/// assert_eq!(Kind::parse("FILT")?, Kind::Filt);
/// assert_eq!(Kind::Filt.as_str(), "FILT");
/// # Ok::<(), smart_proto::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Server → peer information: welcome texts and acks.
    Info,
    /// Dashboard → server query.
    Filt,
    /// Full parameter set (device → server) or full snapshot (server → dashboard).
    Init,
    /// Changed parameters.
    Updt,
}

impl Kind {
    /// The wire name, `"INFO"` etc.
    ///
    /// ```
    /// assert_eq!(smart_proto::Kind::Updt.as_str(), "UPDT");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Info => "INFO",
            Kind::Filt => "FILT",
            Kind::Init => "INIT",
            Kind::Updt => "UPDT",
        }
    }

    /// Parse the exact, upper-case wire name.
    ///
    /// ```
    /// use smart_proto::{Error, Kind};
    ///
    /// assert_eq!(Kind::parse("INIT")?, Kind::Init);
    /// assert_eq!(Kind::parse("updt").unwrap_err(), Error::UnknownKind("updt".into()));
    /// # Ok::<(), smart_proto::Error>(())
    /// ```
    pub fn parse(s: &str) -> Result<Kind> {
        match s {
            "INFO" => Ok(Kind::Info),
            "FILT" => Ok(Kind::Filt),
            "INIT" => Ok(Kind::Init),
            "UPDT" => Ok(Kind::Updt),
            other => Err(Error::UnknownKind(crate::error::shorten(
                other,
                crate::error::WORD_QUOTE,
            ))),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `message` of an envelope.
///
/// ```
/// use smart_proto::{Payload, parse_envelope};
///
/// let env = parse_envelope(r#"{"type": "FILT", "message": ["sort:battery:>:123"]}"#)?;
/// assert_eq!(env.message, Payload::List(vec!["sort:battery:>:123".into()]));
/// # Ok::<(), smart_proto::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum Payload<'a> {
    /// A string (INFO, device INIT/UPDT, UPDT to dashboards); borrowed when no unescaping was needed.
    Text(Cow<'a, str>),
    /// A list (FILT clauses, INIT records to dashboards), kept as JSON values. Python tuples are lists.
    List(Vec<Value>),
    /// Anything else (a number, an object, `null`, ...): valid JSON, but no message type takes it.
    Other(Value),
}

/// A parsed envelope. Extra keys are ignored; `reason` (sent by the server on errors) is kept.
///
/// ```
/// use smart_proto::parse_envelope;
///
/// let env = parse_envelope(r#"{"type":"INFO","message":"ERROR","reason":"bad header"}"#)?;
/// assert_eq!(env.reason.as_deref(), Some("bad header"));
/// # Ok::<(), smart_proto::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope<'a> {
    /// The `type`.
    pub kind: Kind,
    /// The `message`.
    pub message: Payload<'a>,
    /// The `reason` of an error reply, if any.
    pub reason: Option<Cow<'a, str>>,
}

/// Parse a frame: strict JSON, or a Python dict literal (devices written in Python send `str(dict)`).
///
/// Errors: [`Error::Envelope`] (not an object, with the byte offset of the problem),
/// [`Error::MissingType`] (no `type`, or not a string), [`Error::UnknownKind`], [`Error::MissingMessage`].
///
/// ```
/// use smart_proto::{Error, parse_envelope};
///
/// assert_eq!(parse_envelope(r#"{"message": "x"}"#).unwrap_err(), Error::MissingType);
/// assert_eq!(parse_envelope(r#"{"type": "UPDT"}"#).unwrap_err(), Error::MissingMessage);
/// assert_eq!(parse_envelope(r#"{"type": "PING", "message": ""}"#).unwrap_err(), Error::UnknownKind("PING".into()));
/// assert_eq!(
///     parse_envelope("[1]").unwrap_err().to_string(),
///     "frame is not a JSON object or Python dict at byte 0: expected an object, found a list",
/// );
/// ```
pub fn parse_envelope(frame: &str) -> Result<Envelope<'_>> {
    envelope_parts(frame)?.finish()
}

/// The envelope's fields as the frame holds them, before `type` and `message` are checked: errors are
/// syntax errors only ([`Error::Envelope`]).
pub(crate) fn envelope_parts(frame: &str) -> Result<RawEnvelope<'_>> {
    if let Some(raw) = crate::fast::scan_json_envelope(frame).and_then(RawEnvelope::from_scan) {
        return Ok(raw);
    }
    if looks_like_json(frame) {
        if let Ok(raw) = serde_json::from_str::<RawEnvelope<'_>>(frame) {
            return Ok(raw);
        }
    }
    python_envelope(frame)
}

impl<'a> RawEnvelope<'a> {
    /// The fields the envelope scan found, unescaped; `None` if an escape is invalid: the full path
    /// then reports it.
    pub(crate) fn from_scan(scan: FastEnvelope<'a>) -> Option<RawEnvelope<'a>> {
        let unescape = |s: Option<JsonStr>| match s {
            Some(s) => s.to_cow(scan.frame).map(Some),
            None => Some(None),
        };
        let (kind, message, reason) = (
            unescape(scan.kind)?,
            unescape(scan.message)?,
            unescape(scan.reason)?,
        );
        Some(RawEnvelope {
            kind,
            message: message.map(Payload::Text),
            reason,
        })
    }

    /// The envelope, once `type` names a kind and `message` is present.
    pub(crate) fn finish(self) -> Result<Envelope<'a>> {
        let kind = Kind::parse(&self.kind.ok_or(Error::MissingType)?)?;
        let message = self.message.ok_or(Error::MissingMessage)?;
        Ok(Envelope {
            kind,
            message,
            reason: self.reason,
        })
    }
}

/// Whether to try JSON first: a single quote right after the opening brace means a Python literal.
fn looks_like_json(frame: &str) -> bool {
    let s = body::skip_ws(frame);
    match s.strip_prefix('{') {
        Some(rest) => !body::skip_ws(rest).starts_with('\''),
        None => false,
    }
}

/// The envelope's fields as found; `None` for missing (or, for `type`/`reason`, non-string) values.
#[derive(Default)]
pub(crate) struct RawEnvelope<'a> {
    pub(crate) kind: Option<Cow<'a, str>>,
    pub(crate) message: Option<Payload<'a>>,
    pub(crate) reason: Option<Cow<'a, str>>,
}

// Hand-written rather than derived so that strings borrow from the frame, duplicate keys behave as in the
// Python path (last wins), and a non-string `type` is reported as missing instead of as a serde error.
impl<'de> Deserialize<'de> for RawEnvelope<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawEnvelope<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an envelope object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut raw = RawEnvelope::default();
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::Type => raw.kind = map.next_value::<MaybeStr<'de>>()?.0,
                        Key::Message => raw.message = Some(map.next_value::<RawPayload<'de>>()?.0),
                        Key::Reason => raw.reason = map.next_value::<MaybeStr<'de>>()?.0,
                        Key::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(raw)
            }
        }
        d.deserialize_map(V)
    }
}

enum Key {
    Type,
    Message,
    Reason,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> std::result::Result<Key, E> {
                Ok(match s {
                    "type" => Key::Type,
                    "message" => Key::Message,
                    "reason" => Key::Reason,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

/// A string if the value is one, else `None` (the value is skipped).
struct MaybeStr<'a>(Option<Cow<'a, str>>);

impl<'de> Deserialize<'de> for MaybeStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(AnyVisitor(|v: Scalar<'de>| match v {
            Scalar::Str(s) => MaybeStr(Some(s)),
            _ => MaybeStr(None),
        }))
    }
}

/// The payload, strings borrowed.
struct RawPayload<'a>(Payload<'a>);

impl<'de> Deserialize<'de> for RawPayload<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(AnyVisitor(|v: Scalar<'de>| {
            RawPayload(match v {
                Scalar::Str(s) => Payload::Text(s),
                Scalar::List(items) => Payload::List(items),
                Scalar::Value(v) => Payload::Other(v),
            })
        }))
    }
}

/// What [`AnyVisitor`] saw: a (borrowed) string, a list, or any other value.
enum Scalar<'a> {
    Str(Cow<'a, str>),
    List(Vec<Value>),
    Value(Value),
}

impl<'a> Scalar<'a> {
    fn into_text(self) -> Option<Cow<'a, str>> {
        match self {
            Scalar::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// Visits any JSON value, borrowing strings, and hands it to `F`.
struct AnyVisitor<F>(F);

impl<'de, T, F: FnOnce(Scalar<'de>) -> T> Visitor<'de> for AnyVisitor<F> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> std::result::Result<T, E> {
        Ok((self.0)(Scalar::Str(Cow::Borrowed(s))))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> std::result::Result<T, E> {
        Ok((self.0)(Scalar::Str(Cow::Owned(s.to_owned()))))
    }
    fn visit_string<E: de::Error>(self, s: String) -> std::result::Result<T, E> {
        Ok((self.0)(Scalar::Str(Cow::Owned(s))))
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> std::result::Result<T, E> {
        Ok((self.0)(Scalar::Value(Value::Bool(b))))
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> std::result::Result<T, E> {
        Ok((self.0)(Scalar::Value(Value::Number(n.into()))))
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> std::result::Result<T, E> {
        Ok((self.0)(Scalar::Value(Value::Number(n.into()))))
    }
    fn visit_f64<E: de::Error>(self, n: f64) -> std::result::Result<T, E> {
        Ok((self.0)(Scalar::Value(
            Number::from_f64(n).map_or(Value::Null, Value::Number),
        )))
    }
    fn visit_unit<E: de::Error>(self) -> std::result::Result<T, E> {
        Ok((self.0)(Scalar::Value(Value::Null)))
    }
    fn visit_none<E: de::Error>(self) -> std::result::Result<T, E> {
        Ok((self.0)(Scalar::Value(Value::Null)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<T, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element::<Value>()? {
            items.push(item);
        }
        Ok((self.0)(Scalar::List(items)))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> std::result::Result<T, A::Error> {
        let value = Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok((self.0)(Scalar::Value(value)))
    }
}

/// The Python-literal envelope. Its errors are the ones reported when JSON failed too, since the
/// Python parser accepts everything JSON does and stops at the first byte neither accepts.
pub(crate) fn python_envelope(frame: &str) -> Result<RawEnvelope<'_>> {
    let err = |e: PyError<'_>| Error::Envelope {
        offset: frame.len() - e.at.len(),
        reason: e.reason.into_owned(),
    };
    let start = body::skip_ws(frame);
    if !start.starts_with('{') {
        let offset = frame.len() - start.len();
        return Err(match crate::parse_python_literal(frame) {
            Ok(v) => Error::Envelope {
                offset,
                reason: format!("expected an object, found {}", body::describe(&v)),
            },
            Err(Error::BodySyntax { offset, reason }) => Error::Envelope { offset, reason },
            Err(other) => other,
        });
    }
    let (rest, raw) = python_entries(start).map_err(|e| err(body::unwrap_err(e)))?;
    let rest = body::skip_ws(rest);
    if !rest.is_empty() {
        return Err(err(PyError {
            at: rest,
            reason: "unexpected text after the object".into(),
        }));
    }
    Ok(raw)
}

/// `{key: value, ...}` with `type`, `message` and `reason` taken out, strings borrowed where possible.
fn python_entries(i: &str) -> body::PResult<'_, RawEnvelope<'_>> {
    let mut raw = RawEnvelope::default();
    let mut rest = body::skip_ws(&i[1..]);
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((after, raw));
        }
        let (r, key) = body::dict_key(rest, "expected a string key or '}'")?;
        let (r, ()) = body::colon(r)?;
        let (r, value) = if body::string_start(r).is_some() {
            let (r, s) = body::string(r)?;
            (r, Scalar::Str(s))
        } else {
            let (r, v) = body::value(r, 1)?;
            match v {
                Value::Array(items) => (r, Scalar::List(items)),
                other => (r, Scalar::Value(other)),
            }
        };

        match key.as_ref() {
            "type" => raw.kind = value.into_text(),
            "reason" => raw.reason = value.into_text(),
            "message" => {
                raw.message = Some(match value {
                    Scalar::Str(s) => Payload::Text(s),
                    Scalar::List(items) => Payload::List(items),
                    Scalar::Value(v) => Payload::Other(v),
                });
            }
            _ => {}
        }
        rest = body::skip_ws(r);
        match rest.as_bytes().first() {
            Some(b',') => rest = body::skip_ws(&rest[1..]),
            Some(b'}') => {}
            Some(_) => {
                return Err(nom::Err::Failure(PyError {
                    at: rest,
                    reason: "expected ',' or '}' after a value".into(),
                }));
            }
            None => {
                return Err(nom::Err::Failure(PyError {
                    at: rest,
                    reason: "unclosed object: expected ',' or '}', found the end of the input"
                        .into(),
                }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

    use serde_json::json;

    use super::*;

    fn text<'a>(env: &'a Envelope<'_>) -> &'a str {
        match &env.message {
            Payload::Text(s) => s,
            other => panic!("not text: {other:?}"),
        }
    }

    #[test]
    fn kind_parse_is_exact() {
        for k in [Kind::Info, Kind::Filt, Kind::Init, Kind::Updt] {
            assert_eq!(Kind::parse(k.as_str()).unwrap(), k);
            assert_eq!(k.to_string(), k.as_str());
        }
        for bad in ["updt", "Updt", "UPDT ", "", "UPDATE"] {
            assert_eq!(
                Kind::parse(bad).unwrap_err(),
                Error::UnknownKind(bad.to_owned())
            );
        }
        let Error::UnknownKind(long) = Kind::parse(&"X".repeat(1000)).unwrap_err() else {
            panic!()
        };
        assert!(long.len() < 40);
    }

    #[test]
    fn json_envelope_borrows_its_message() {
        let frame = r#"{"type": "UPDT", "message": "0116:0001:{}"}"#;
        let env = parse_envelope(frame).unwrap();
        assert!(matches!(env.message, Payload::Text(Cow::Borrowed(_))));
        assert_eq!(env.reason, None);
        // With escapes it must be unescaped, hence owned.
        let env = parse_envelope(
            r#"{"type": "UPDT", "message": "0116:0001:{\"power_consumption\": 357}"}"#,
        )
        .unwrap();
        assert_eq!(text(&env), "0116:0001:{\"power_consumption\": 357}");
    }

    #[test]
    fn escaped_keys_and_values_are_unescaped() {
        let env =
            parse_envelope(r#"{"typ\u0065": "UPD\u0054", "message": "a\/b\u00e9\ud83d\ude00"}"#)
                .unwrap();
        assert_eq!((env.kind, text(&env)), (Kind::Updt, "a/bé😀"));
        // A lone surrogate is not text: the full path reports it.
        assert!(matches!(
            parse_envelope(r#"{"type": "UPDT", "message": "\ud800"}"#),
            Err(Error::Envelope { .. })
        ));
        // A bad escape in a key we do not read still makes the frame invalid JSON.
        assert!(matches!(
            parse_envelope(r#"{"type": "UPDT", "message": "m", "other": "\uZ"}"#),
            Err(Error::Envelope { .. })
        ));
        // A raw control character is not JSON, but a Python string may hold a tab.
        assert_eq!(
            text(&parse_envelope("{\"type\": \"UPDT\", \"message\": \"a\tb\"}").unwrap()),
            "a\tb"
        );
    }

    #[test]
    fn keys_in_any_order_extras_ignored_reason_kept() {
        let env = parse_envelope(
            r#"{"x": {"a": [1, 2]}, "reason": "r", "message": "m", "type": "INFO", "y": null}"#,
        )
        .unwrap();
        assert_eq!(
            (env.kind, text(&env), env.reason.as_deref()),
            (Kind::Info, "m", Some("r"))
        );
    }

    #[test]
    fn duplicate_keys_last_wins_in_both_forms() {
        let env = parse_envelope(r#"{"type": "INFO", "message": "a", "type": "UPDT"}"#).unwrap();
        assert_eq!(env.kind, Kind::Updt);
        let env = parse_envelope("{'type': 'INFO', 'message': 'a', 'type': 'UPDT'}").unwrap();
        assert_eq!(env.kind, Kind::Updt);
    }

    #[test]
    fn python_envelope_forms() {
        let env =
            parse_envelope("{'type': 'UPDT', 'message': '0116:0001:{\"power_consumption\": 357}'}")
                .unwrap();
        assert_eq!(env.kind, Kind::Updt);
        assert!(matches!(
            env.message,
            Payload::Text(Cow::Borrowed("0116:0001:{\"power_consumption\": 357}"))
        ));
        let env =
            parse_envelope("{\"type\": 'FILT', \"message\": ('a', 'b'), 'reason': None,}").unwrap();
        assert_eq!(env.message, Payload::List(vec![json!("a"), json!("b")]));
        assert_eq!(env.reason, None);
        let env = parse_envelope("{u'type': u'INIT', u'message': u'0000:0001:{}'}").unwrap();
        assert_eq!(env.kind, Kind::Init);
    }

    #[test]
    fn payload_kinds() {
        let env = parse_envelope(r#"{"type": "FILT", "message": ["a", 1]}"#).unwrap();
        assert_eq!(env.message, Payload::List(vec![json!("a"), json!(1)]));
        for (m, v) in [
            ("5", json!(5)),
            ("-5", json!(-5)),
            ("2.5", json!(2.5)),
            ("null", json!(null)),
            ("true", json!(true)),
            ("{\"a\": 1}", json!({"a": 1})),
        ] {
            let frame = format!(r#"{{"type": "UPDT", "message": {m}}}"#);
            let env = parse_envelope(&frame).unwrap();
            assert_eq!(env.message, Payload::Other(v));
        }
        let env = parse_envelope("{'type': 'UPDT', 'message': 5}").unwrap();
        assert_eq!(env.message, Payload::Other(json!(5)));
    }

    #[test]
    fn missing_or_bad_fields() {
        assert_eq!(
            parse_envelope(r#"{"message": "m"}"#).unwrap_err(),
            Error::MissingType
        );
        assert_eq!(
            parse_envelope(r#"{"type": 5, "message": "m"}"#).unwrap_err(),
            Error::MissingType
        );
        assert_eq!(
            parse_envelope(r#"{"type": ["UPDT"], "message": "m"}"#).unwrap_err(),
            Error::MissingType
        );
        assert_eq!(
            parse_envelope("{'type': None, 'message': 'm'}").unwrap_err(),
            Error::MissingType
        );
        assert_eq!(
            parse_envelope(r#"{"type": "UPDT"}"#).unwrap_err(),
            Error::MissingMessage
        );
        assert_eq!(parse_envelope("{}").unwrap_err(), Error::MissingType);
        assert_eq!(
            parse_envelope(r#"{"type": "ping", "message": "m"}"#).unwrap_err(),
            Error::UnknownKind("ping".into())
        );
    }

    #[test]
    fn syntax_errors_have_offsets() {
        let env_err = |s: &str| match parse_envelope(s).unwrap_err() {
            Error::Envelope { offset, reason } => (offset, reason),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            env_err(""),
            (0, "expected a value, found the end of the input".into())
        );
        assert_eq!(
            env_err("hello"),
            (
                0,
                "unknown name \"hello\": expected a quoted string, True, False or None".into()
            )
        );
        assert_eq!(
            env_err("  \"str\""),
            (2, "expected an object, found a string".into())
        );
        assert_eq!(
            env_err(r#"{"type": "UPDT", "message": "x"} trailing"#),
            (33, "unexpected text after the object".into())
        );
        assert_eq!(
            env_err(r#"{"type": "UPDT" "message": "x"}"#),
            (16, "expected ',' or '}' after a value".into())
        );
        assert_eq!(
            env_err("{'type': 'UPDT', 'message': 'x'"),
            (
                31,
                "unclosed object: expected ',' or '}', found the end of the input".into()
            )
        );
        assert_eq!(
            env_err("{type: 'UPDT'}"),
            (1, "dict keys must be strings".into())
        );
    }
}
