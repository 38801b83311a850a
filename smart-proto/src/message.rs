//! Whole messages: what devices send, what dashboards send, what the server sends (PROTOCOL.md §5, §7).
//!
//! The server side of a device connection is [`parse_device_message`] then [`ServerMessage::to_frame`]
//! (or [`Rejection::reply`]); a dashboard sends FILT frames ([`parse_dashboard_message`]) and receives
//! INFO, INIT and UPDT frames, which clients read back with [`parse_server_message`].
//!
//! ```
//! use smart_proto::{ServerMessage, parse_device_message};
//!
//! let msg = parse_device_message(r#"{"type": "UPDT", "message": "0116:0001:{\"power_consumption\": 357}"}"#)
//!     .map_err(|r| r.error)?;
//! let ack = ServerMessage::Ok(msg.header).to_frame();
//! assert_eq!(ack, r#"{"type":"INFO","message":"0116:0001:OK"}"#);
//! # Ok::<(), smart_proto::Error>(())
//! ```

use std::fmt::Write as _;

use serde_json::{Map, Value};

use crate::body::{Quoting, scan_flat};
use crate::envelope::{Payload, scan_envelope};
pub use crate::init::write_init;
use crate::record::FastFields;
use crate::{Error, Header, Kind, Query, Record, Result, Update, parse_body, parse_envelope};

/// Welcome text sent to devices on connect (exact, devices look for it).
///
/// ```
/// use smart_proto::{DEVICE_WELCOME, ServerMessage};
///
/// assert_eq!(
///     ServerMessage::Info(DEVICE_WELCOME.into()).to_frame(),
///     r#"{"type":"INFO","message":"Welcome to SMART-Server - SolMate Real-Time ObServer! - SolServerConsumer: groups ['updates']"}"#,
/// );
/// ```
pub const DEVICE_WELCOME: &str =
    "Welcome to SMART-Server - SolMate Real-Time ObServer! - SolServerConsumer: groups ['updates']";

/// Welcome text sent to dashboards on connect.
///
/// ```
/// use smart_proto::{DASHBOARD_WELCOME, ServerMessage};
///
/// assert_eq!(
///     ServerMessage::Info(DASHBOARD_WELCOME.into()).to_frame(),
///     r#"{"type":"INFO","message":"Welcome to SMART-Server - SolMate Real-Time ObServer! - ClientConsumer: groups ['broadcast']"}"#,
/// );
/// ```
pub const DASHBOARD_WELCOME: &str =
    "Welcome to SMART-Server - SolMate Real-Time ObServer! - ClientConsumer: groups ['broadcast']";

/// A valid device message: INIT or UPDT, header, typed normalized fields.
///
/// ```
/// use smart_proto::{Kind, parse_device_message};
///
/// let msg = parse_device_message("{'type': 'INIT', 'message': '0000:0001:{\"_battery\": 250}'}")
///     .map_err(|r| r.error)?;
/// assert_eq!(msg.kind, Kind::Init);
/// assert_eq!(msg.header.serial.as_str(), "0001");
/// assert_eq!(msg.update.as_map()["battery"], 250.0);
/// # Ok::<(), smart_proto::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceMessage {
    /// [`Kind::Init`] or [`Kind::Updt`].
    pub kind: Kind,
    /// `MID:SERIAL`.
    pub header: Header,
    /// The normalized, type-checked fields.
    pub update: Update,
}

/// Why a device frame was refused, with the header when it could be read (for the ERROR reply).
///
/// ```
/// use smart_proto::parse_device_message;
///
/// let rejection = parse_device_message(r#"{"type": "UPDT", "message": "0116:0001:[1]"}"#).unwrap_err();
/// assert_eq!(rejection.header.unwrap().to_string(), "0116:0001");
/// assert_eq!(rejection.error.to_string(), "body is not an object at byte 0 (found a list)");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// The header, if the frame got that far.
    pub header: Option<Header>,
    /// What was wrong.
    pub error: Error,
}

impl Rejection {
    /// The ERROR reply frame: `{"type":"INFO","message":"MID:SERIAL:ERROR","reason":"…"}` or, without a
    /// header, `{"type":"INFO","message":"ERROR","reason":"…"}`.
    ///
    /// ```
    /// use smart_proto::parse_device_message;
    ///
    /// let rejection = parse_device_message(r#"{"type": "UPDT", "message": "0116:0001:{\"battery\": \"full\"}"}"#)
    ///     .unwrap_err();
    /// assert!(rejection.reply().starts_with(r#"{"type":"INFO","message":"0116:0001:ERROR","reason":"#));
    ///
    /// let rejection = parse_device_message("not json").unwrap_err();
    /// assert!(rejection.reply().starts_with(r#"{"type":"INFO","message":"ERROR","reason":"frame is not"#));
    /// ```
    pub fn reply(&self) -> String {
        ServerMessage::Error {
            header: self.header.clone(),
            reason: self.error.to_string(),
        }
        .to_frame()
    }
}

impl From<Error> for Rejection {
    fn from(error: Error) -> Self {
        Rejection {
            header: None,
            error,
        }
    }
}

/// Parse a device frame all the way: envelope, header, body, normalization, typed fields.
///
/// The kind must be INIT or UPDT and the message a string `MID:SERIAL:BODY`; the body is normalized
/// (PROTOCOL.md §4) and type-checked ([`Update::from_normalized`]). Any failure is a [`Rejection`] that
/// carries the header once it was read, so the ERROR reply can echo it.
///
/// ```
/// use smart_proto::{Error, parse_device_message};
///
/// let msg = parse_device_message("{'type': 'UPDT', 'message': \"0001:1234:{'parameter_name':'AT','_parameter_name':430}\"}")
///     .map_err(|r| r.error)?;
/// assert_eq!(msg.update.as_map()["parameter_name"], "AT");
///
/// let rejection = parse_device_message(r#"{"type": "FILT", "message": []}"#).unwrap_err();
/// assert_eq!(rejection.error, Error::UnexpectedKind { kind: "FILT", expected: "INIT or UPDT" });
/// # Ok::<(), smart_proto::Error>(())
/// ```
pub fn parse_device_message(frame: &str) -> Result<DeviceMessage, Rejection> {
    if let Some(result) = fast_device_message(frame) {
        return result;
    }
    let raw = crate::envelope::envelope_parts(frame)?;
    // The frame is an object: once its message shows a header, every error echoes it (PROTOCOL.md §5),
    // a `type` that is missing, unknown or not for devices included.
    let header = match &raw.message {
        Some(Payload::Text(text)) => Header::parse(text).ok().map(|(header, _)| header),
        _ => None,
    };
    let rejection = |error: Error| Rejection {
        header: header.clone(),
        error,
    };
    let envelope = raw.finish().map_err(rejection)?;
    let kind = device_kind(envelope.kind).map_err(rejection)?;
    let Payload::Text(text) = envelope.message else {
        return Err(Error::PayloadType {
            kind: kind.as_str(),
            expected: "a string \"MID:SERIAL:BODY\"",
        }
        .into());
    };
    device_message(kind, &text)
}

fn device_kind(kind: Kind) -> Result<Kind> {
    match kind {
        Kind::Init | Kind::Updt => Ok(kind),
        other => Err(Error::UnexpectedKind {
            kind: other.as_str(),
            expected: "INIT or UPDT",
        }),
    }
}

/// Header, body, normalization and typing of the message text.
fn device_message(kind: Kind, text: &str) -> Result<DeviceMessage, Rejection> {
    let (header, body) = Header::parse(text)?;
    let fields = parse_body(body);
    typed_message(kind, header, body, fields)
}

/// The device rules for a parsed `body` (safe integers, normalization, typing); errors keep the header
/// for the reply.
fn typed_message(
    kind: Kind,
    header: Header,
    body: &str,
    fields: Result<Map<String, Value>>,
) -> Result<DeviceMessage, Rejection> {
    let update = fields.and_then(|map| {
        crate::limits::check_safe_integers(&map, body)?;
        crate::normalize::normalized_update(map, &header.serial)
    });
    match update {
        Ok(update) => Ok(DeviceMessage {
            kind,
            header,
            update,
        }),
        Err(error) => Err(Rejection {
            header: Some(header),
            error,
        }),
    }
}

/// The common frame: strings only, a known kind. `None` leaves anything else (and every envelope-level
/// error) to the general path.
///
/// The usual message, a header and a flat body, is read in place while the envelope is scanned: no
/// unescaped copy of the message, one pass over it, and fields that go straight into the [`Update`].
/// What the scan finds travels as a few indices and the header is built once, where it stays: moving a
/// freshly built header through several structs stalls the CPU longer than the whole scan takes.
fn fast_device_message(frame: &str) -> Option<Result<DeviceMessage, Rejection>> {
    let mut read = None;
    let mut fields = FastFields::default();
    let env = scan_envelope(frame, |frame, at| {
        // A later `message` key replaces an earlier one, whichever way either is read.
        read = None;
        fields.clear();
        let (lens, next) = message_in_place(frame, at, &mut fields)?;
        read = Some((at + 1, lens));
        Some(next)
    })?;
    let (kind, message) = (env.kind?, env.message?);
    if kind.escaped {
        return None;
    }
    // A kind devices may not send is rare: the general path reports it, after checking the rest of the
    // envelope, so both paths give the same error for the same frame (found by the device_frame fuzzer).
    let kind = device_kind(Kind::from_bytes(kind.bytes(frame))?).ok()?;
    if let Some((text, (id_len, serial_len))) = read {
        let header = crate::header::from_lens(frame.as_bytes().get(text..)?, id_len, serial_len);
        return Some(Ok(DeviceMessage {
            kind,
            header,
            update: fields.into_update(),
        }));
    }
    if !message.escaped {
        return Some(device_message(kind, message.raw(frame)?));
    }
    let text = message.to_cow(frame)?;
    Some(device_message(kind, &text))
}

/// The message `"MID:SERIAL:{flat body}"` whose opening quote is at `at`, read in place: its fields go
/// to `fields`; returns the lengths of `MID` and `SERIAL` and the index after its closing quote. A
/// double-quoted message is read with its escaped quotes (`{\"battery\": 92.5}`), a single-quoted one
/// (a Python envelope) as it stands. `None` for anything else, including any body that normalization
/// would change or typing would refuse.
#[allow(clippy::inline_always, reason = "hot path, measured")]
#[inline(always)]
fn message_in_place(
    frame: &str,
    at: usize,
    fields: &mut FastFields,
) -> Option<((usize, usize), usize)> {
    let (quote, quoting) = match frame.as_bytes().get(at)? {
        b'"' => (b'"', Quoting::Escaped),
        b'\'' => (b'\'', Quoting::InSingleQuotes),
        _ => return None,
    };
    // Header characters are never quotes, backslashes or control bytes, so the header reads the same
    // escaped or not.
    let (id_len, serial_len) = crate::header::part_lens(frame.as_bytes().get(at + 1..)?)?;
    let close = scan_flat(frame, at + 3 + id_len + serial_len, quoting, fields)?;
    (frame.as_bytes().get(close) == Some(&quote)).then_some(((id_len, serial_len), close + 1))
}

impl DeviceMessage {
    /// The frame a device sends for this message (strict JSON envelope, JSON body).
    ///
    /// Parsing the frame gives this message back, unless a field name starts with `_` (normalization
    /// strips one underscore per pass).
    ///
    /// ```
    /// use smart_proto::parse_device_message;
    ///
    /// let msg = parse_device_message("{'type': 'UPDT', 'message': '0116:0001:{\"country\": \"AT\"}'}")
    ///     .map_err(|r| r.error)?;
    /// assert_eq!(msg.to_frame(), r#"{"type":"UPDT","message":"0116:0001:{\"country\": \"AT\"}"}"#);
    /// # Ok::<(), smart_proto::Error>(())
    /// ```
    pub fn to_frame(&self) -> String {
        let mut out = String::with_capacity(64);
        write_header_frame(&mut out, self.kind, &self.header, self.update.iter());
        out
    }
}

/// Parse a dashboard frame: a FILT with a list of clauses.
///
/// ```
/// use smart_proto::{Error, parse_dashboard_message};
///
/// let query = parse_dashboard_message(r#"{"type":"FILT","message":["filter:serial_number:=:0","sort:serial_number:<:abc"]}"#)?;
/// assert_eq!(query.filters.len(), 1);
/// assert_eq!(query.sorts.len(), 1);
///
/// let err = parse_dashboard_message(r#"{"type":"FILT","message":"filter:a:=:b"}"#).unwrap_err();
/// assert_eq!(err, Error::PayloadType { kind: "FILT", expected: "a list of strings" });
/// # Ok::<(), smart_proto::Error>(())
/// ```
pub fn parse_dashboard_message(frame: &str) -> Result<Query> {
    let envelope = parse_envelope(frame)?;
    if envelope.kind != Kind::Filt {
        return Err(Error::UnexpectedKind {
            kind: envelope.kind.as_str(),
            expected: "FILT",
        });
    }
    let bad_payload = Error::PayloadType {
        kind: "FILT",
        expected: "a list of strings",
    };
    let Payload::List(items) = envelope.message else {
        return Err(bad_payload);
    };
    let clauses = items
        .iter()
        .map(Value::as_str)
        .collect::<Option<Vec<&str>>>()
        .ok_or(bad_payload)?;
    Query::parse(&clauses)
}

/// Everything the server sends.
///
/// ```
/// use smart_proto::{Header, ServerMessage};
///
/// let msg = ServerMessage::Error { header: Some(Header::new("0116", "0001")?), reason: "no".into() };
/// assert_eq!(msg.to_frame(), r#"{"type":"INFO","message":"0116:0001:ERROR","reason":"no"}"#);
/// # Ok::<(), smart_proto::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    /// An INFO with free text (welcome messages).
    Info(String),
    /// `MID:SERIAL:OK`.
    Ok(Header),
    /// `MID:SERIAL:ERROR` or `ERROR`, with a reason.
    Error {
        /// Header of the refused message, if it could be read.
        header: Option<Header>,
        /// What was wrong.
        reason: String,
    },
    /// A snapshot of records.
    Init(Vec<Record>),
    /// A change: header and body (changed fields, or the full record).
    Updt {
        /// `MID:SERIAL` of the device message (or `0000` for online changes).
        header: Header,
        /// The fields.
        body: Map<String, Value>,
    },
}

impl ServerMessage {
    /// Serialize as a strict JSON text frame.
    ///
    /// The envelope is compact; an UPDT body is written as Python's `json.dumps` writes it
    /// (`{"online": false}`), the form the seed shows and existing dashboards parse.
    ///
    /// ```
    /// use serde_json::json;
    /// use smart_proto::{Header, MessageId, ServerMessage};
    ///
    /// let header = Header { id: MessageId::zero(), serial: "0001".parse()? };
    /// let Some(body) = json!({"online": false}).as_object().cloned() else { unreachable!() };
    /// assert_eq!(
    ///     ServerMessage::Updt { header, body }.to_frame(),
    ///     r#"{"type":"UPDT","message":"0000:0001:{\"online\": false}"}"#,
    /// );
    /// # Ok::<(), smart_proto::Error>(())
    /// ```
    pub fn to_frame(&self) -> String {
        let mut out = String::with_capacity(64);
        match self {
            ServerMessage::Info(text) => {
                out.push_str(r#"{"type":"INFO","message":"#);
                write_json_str(&mut out, text);
                out.push('}');
            }
            ServerMessage::Ok(header) => {
                let _ = write!(out, r#"{{"type":"INFO","message":"{header}:OK"}}"#);
            }
            ServerMessage::Error { header, reason } => {
                match header {
                    Some(h) => {
                        let _ = write!(out, r#"{{"type":"INFO","message":"{h}:ERROR","reason":"#);
                    }
                    None => out.push_str(r#"{"type":"INFO","message":"ERROR","reason":"#),
                }
                write_json_str(&mut out, reason);
                out.push('}');
            }
            ServerMessage::Init(records) => return write_init(records),
            ServerMessage::Updt { header, body } => {
                write_header_frame(&mut out, Kind::Updt, header, map_entries(body));
            }
        }
        out
    }
}

/// `{"type":KIND,"message":"MID:SERIAL:{body}"}`. Header texts are `[A-Za-z0-9_-]`, so need no escaping.
fn write_header_frame<'a>(
    out: &mut String,
    kind: Kind,
    header: &Header,
    body: impl IntoIterator<Item = (&'a str, &'a Value)>,
) {
    let _ = write!(out, r#"{{"type":"{kind}","message":"{header}:"#);
    let mut inner = String::with_capacity(32);
    write_json_object(&mut inner, body);
    write_json_chars(out, &inner);
    out.push_str("\"}");
}

/// Parse a frame sent by the server (for clients: watchers, tests, load generators).
///
/// The inverse of [`ServerMessage::to_frame`]: an INFO whose text is `MID:SERIAL:OK` is
/// [`ServerMessage::Ok`], `MID:SERIAL:ERROR` or `ERROR` is [`ServerMessage::Error`] (reason `""` if the
/// frame has none), any other INFO text is [`ServerMessage::Info`].
///
/// ```
/// use smart_proto::{ServerMessage, parse_server_message};
///
/// let msg = parse_server_message(r#"{"type": "INFO", "message": "0116:0001:OK"}"#)?;
/// let ServerMessage::Ok(header) = msg else { panic!("not an ack") };
/// assert_eq!(header.to_string(), "0116:0001");
///
/// let msg = parse_server_message(r#"{"type":"UPDT","message":"0008:0001:{\"local_time\": \"2024-03-17 14:59:13.047108\"}"}"#)?;
/// let ServerMessage::Updt { body, .. } = msg else { panic!("not an update") };
/// assert_eq!(body["local_time"], "2024-03-17 14:59:13.047108");
/// # Ok::<(), smart_proto::Error>(())
/// ```
pub fn parse_server_message(frame: &str) -> Result<ServerMessage> {
    let envelope = parse_envelope(frame)?;
    let kind = envelope.kind;
    match (kind, envelope.message) {
        (Kind::Info, Payload::Text(text)) => {
            let reason = envelope
                .reason
                .map(std::borrow::Cow::into_owned)
                .unwrap_or_default();
            if text == "ERROR" {
                return Ok(ServerMessage::Error {
                    header: None,
                    reason,
                });
            }
            Ok(match Header::parse(&text) {
                Ok((header, "OK")) => ServerMessage::Ok(header),
                Ok((header, "ERROR")) => ServerMessage::Error {
                    header: Some(header),
                    reason,
                },
                _ => ServerMessage::Info(text.into_owned()),
            })
        }
        (Kind::Init, Payload::List(items)) => {
            let records = items
                .into_iter()
                .map(|item| match item {
                    Value::Object(map) => Record::from_map(map),
                    other => Err(Error::Record(format!(
                        "INIT entry is {}, not an object",
                        crate::body::describe(&other)
                    ))),
                })
                .collect::<Result<Vec<Record>>>()?;
            Ok(ServerMessage::Init(records))
        }
        (Kind::Updt, Payload::Text(text)) => {
            let (header, body) = Header::parse(&text)?;
            Ok(ServerMessage::Updt {
                header,
                body: parse_body(body)?,
            })
        }
        (Kind::Filt, _) => Err(Error::UnexpectedKind {
            kind: "FILT",
            expected: "INFO, INIT or UPDT",
        }),
        (Kind::Init, _) => Err(Error::PayloadType {
            kind: "INIT",
            expected: "a list of records",
        }),
        (Kind::Info | Kind::Updt, _) => Err(Error::PayloadType {
            kind: kind.as_str(),
            expected: "a string",
        }),
    }
}

// ---------------------------------------------------------------------------------------------------------
// A small JSON writer into `String`: infallible (no `io::Result` to unwrap) and with Python's separators.

/// A JSON string literal, quotes included.
fn write_json_str(out: &mut String, s: &str) {
    out.push('"');
    write_json_chars(out, s);
    out.push('"');
}

/// The inside of a JSON string literal.
fn write_json_chars(out: &mut String, s: &str) {
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
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

fn map_entries(map: &Map<String, Value>) -> impl Iterator<Item = (&str, &Value)> {
    map.iter().map(|(k, v)| (k.as_str(), v))
}

/// `{"a": 1, "b": [1, 2]}`, as Python's `json.dumps` separates items.
fn write_json_object<'a>(
    out: &mut String,
    entries: impl IntoIterator<Item = (&'a str, &'a Value)>,
) {
    out.push('{');
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_json_str(out, k);
        out.push_str(": ");
        write_json_value(out, v);
    }
    out.push('}');
}

fn write_json_value(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => write_json_str(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_json_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => write_json_object(out, map_entries(map)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use serde_json::json;

    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn json_writer_escapes_and_matches_serde_json() {
        let v = json!({"a\"b": "line\nbreak\t\u{1}\u{7f}é😀\\", "n": [1, -2, 2.5, 1e300, null, true, false], "o": {}, "l": []});
        let mut out = String::new();
        write_json_value(&mut out, &v);
        assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), v);
        assert!(out.contains("\\u0001"));
        assert!(out.starts_with(r#"{"a\"b": "line\nbreak\t\u0001"#));
    }

    #[test]
    fn ok_and_error_replies_are_exact() {
        let h = Header::new("0116", "0001").unwrap();
        assert_eq!(
            ServerMessage::Ok(h.clone()).to_frame(),
            r#"{"type":"INFO","message":"0116:0001:OK"}"#
        );
        assert_eq!(
            ServerMessage::Error {
                header: Some(h),
                reason: "bad \"x\"".into()
            }
            .to_frame(),
            r#"{"type":"INFO","message":"0116:0001:ERROR","reason":"bad \"x\""}"#
        );
        assert_eq!(
            ServerMessage::Error {
                header: None,
                reason: "r".into()
            }
            .to_frame(),
            r#"{"type":"INFO","message":"ERROR","reason":"r"}"#
        );
    }

    #[test]
    fn updt_frame_nests_a_json_string() {
        let h = Header::new("0008", "0001").unwrap();
        let frame = ServerMessage::Updt {
            header: h.clone(),
            body: obj(json!({"local_time": "2024-03-17 14:59:13.047108"})),
        }
        .to_frame();
        assert_eq!(
            frame,
            r#"{"type":"UPDT","message":"0008:0001:{\"local_time\": \"2024-03-17 14:59:13.047108\"}"}"#
        );
        let outer: Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(
            outer["message"],
            "0008:0001:{\"local_time\": \"2024-03-17 14:59:13.047108\"}"
        );
    }

    #[test]
    fn server_info_texts_parse_back() {
        for (frame, want) in [
            (
                r#"{"type":"INFO","message":"hello"}"#,
                ServerMessage::Info("hello".into()),
            ),
            (
                r#"{"type":"INFO","message":"0116:0001:OK"}"#,
                ServerMessage::Ok(Header::new("0116", "0001").unwrap()),
            ),
            (
                r#"{"type":"INFO","message":"0116:0001:ERROR","reason":"x"}"#,
                ServerMessage::Error {
                    header: Some(Header::new("0116", "0001").unwrap()),
                    reason: "x".into(),
                },
            ),
            (
                r#"{"type":"INFO","message":"ERROR"}"#,
                ServerMessage::Error {
                    header: None,
                    reason: String::new(),
                },
            ),
            (
                r#"{"type":"INFO","message":"0116:0001:MAYBE"}"#,
                ServerMessage::Info("0116:0001:MAYBE".into()),
            ),
        ] {
            assert_eq!(parse_server_message(frame).unwrap(), want, "{frame}");
        }
    }

    #[test]
    fn server_message_payload_errors() {
        assert_eq!(
            parse_server_message(r#"{"type":"FILT","message":[]}"#).unwrap_err(),
            Error::UnexpectedKind {
                kind: "FILT",
                expected: "INFO, INIT or UPDT"
            }
        );
        assert_eq!(
            parse_server_message(r#"{"type":"INIT","message":"x"}"#).unwrap_err(),
            Error::PayloadType {
                kind: "INIT",
                expected: "a list of records"
            }
        );
        assert_eq!(
            parse_server_message(r#"{"type":"UPDT","message":[]}"#).unwrap_err(),
            Error::PayloadType {
                kind: "UPDT",
                expected: "a string"
            }
        );
        assert!(matches!(
            parse_server_message(r#"{"type":"INIT","message":[1]}"#).unwrap_err(),
            Error::Record(_)
        ));
        assert_eq!(
            parse_server_message(r#"{"type":"INIT","message":[]}"#).unwrap(),
            ServerMessage::Init(vec![])
        );
    }

    #[test]
    fn device_message_errors_before_the_header_have_no_header() {
        for (frame, error) in [
            (
                r#"{"type":"INFO","message":"x"}"#,
                Error::UnexpectedKind {
                    kind: "INFO",
                    expected: "INIT or UPDT",
                },
            ),
            (
                r#"{"type":"UPDT","message":["x"]}"#,
                Error::PayloadType {
                    kind: "UPDT",
                    expected: "a string \"MID:SERIAL:BODY\"",
                },
            ),
            (
                r#"{"type":"INIT","message":5}"#,
                Error::PayloadType {
                    kind: "INIT",
                    expected: "a string \"MID:SERIAL:BODY\"",
                },
            ),
            (
                r#"{"type":"UPDT","message":"0116:0001"}"#,
                Error::Header("missing ':' after serial".into()),
            ),
            (r#"{"message":"0116:0001"}"#, Error::MissingType),
        ] {
            assert_eq!(
                parse_device_message(frame).unwrap_err(),
                Rejection {
                    header: None,
                    error
                },
                "{frame}"
            );
        }
    }

    #[test]
    fn envelope_errors_keep_a_readable_header() {
        let h = Some(Header::new("0116", "0001").unwrap());
        for (frame, error) in [
            (r#"{"message":"0116:0001:{}"}"#, Error::MissingType),
            (
                r#"{"type":"FOO","message":"0116:0001:{}"}"#,
                Error::UnknownKind("FOO".into()),
            ),
            (
                "{'type': 'ping', 'message': '0116:0001:x'}",
                Error::UnknownKind("ping".into()),
            ),
            (
                r#"{"type":"INFO","message":"0116:0001:OK"}"#,
                Error::UnexpectedKind {
                    kind: "INFO",
                    expected: "INIT or UPDT",
                },
            ),
        ] {
            assert_eq!(
                parse_device_message(frame).unwrap_err(),
                Rejection {
                    header: h.clone(),
                    error
                },
                "{frame}"
            );
        }
    }

    #[test]
    fn device_message_errors_after_the_header_keep_it() {
        let h = Some(Header::new("0116", "0001").unwrap());
        let r =
            parse_device_message(r#"{"type":"UPDT","message":"0116:0001:{'a': }"}"#).unwrap_err();
        assert_eq!(r.header, h);
        assert_eq!(
            r.error,
            Error::BodySyntax {
                offset: 6,
                reason: "expected a value".into()
            }
        );
        let r = parse_device_message(
            r#"{"type":"UPDT","message":"0116:0001:{\"serial_number\": \"0002\"}"}"#,
        )
        .unwrap_err();
        assert_eq!(
            r,
            Rejection {
                header: h,
                error: Error::SerialMismatch {
                    header: "0001".into(),
                    body: "0002".into()
                }
            }
        );
        assert_eq!(
            r.reply(),
            r#"{"type":"INFO","message":"0116:0001:ERROR","reason":"serial_number \"0002\" in the body does not match the header serial \"0001\""}"#
        );
    }

    #[test]
    fn dashboard_errors() {
        assert_eq!(
            parse_dashboard_message(r#"{"type":"UPDT","message":"x"}"#).unwrap_err(),
            Error::UnexpectedKind {
                kind: "UPDT",
                expected: "FILT"
            }
        );
        assert_eq!(
            parse_dashboard_message(r#"{"type":"FILT","message":["a", 1]}"#).unwrap_err(),
            Error::PayloadType {
                kind: "FILT",
                expected: "a list of strings"
            }
        );
        assert_eq!(
            parse_dashboard_message("{'type': 'FILT', 'message': 7}").unwrap_err(),
            Error::PayloadType {
                kind: "FILT",
                expected: "a list of strings"
            }
        );
        assert_eq!(
            parse_dashboard_message("").unwrap_err(),
            Error::Envelope {
                offset: 0,
                reason: "expected a value, found the end of the input".into()
            }
        );
    }
}

/// The fast path (envelope scan with the message read in place) against the general parsers alone.
#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod fast_path_tests {
    use std::fmt::Write as _;

    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    /// What the general parsers make of a valid envelope: `serde_json` or the Python-literal parser for
    /// the envelope and for the body (no scans), then normalization and typing.
    fn reference(frame: &str) -> Result<DeviceMessage, Rejection> {
        let envelope = serde_json::from_str::<Value>(frame)
            .or_else(|_| crate::parse_python_literal(frame))
            .unwrap();
        let kind = device_kind(Kind::parse(envelope["type"].as_str().unwrap()).unwrap())?;
        let (header, body) = Header::parse(envelope["message"].as_str().unwrap())?;
        let json = serde_json::from_str::<Value>(body)
            .ok()
            .filter(|v| !crate::body::deeper_than(v, crate::body::MAX_DEPTH));
        let fields = match json {
            Some(Value::Object(map)) => Ok(map),
            _ => parse_body(body),
        };
        typed_message(kind, header, body, fields)
    }

    /// A Python `repr` of a string, as `str(dict)` writes it.
    fn py_str(s: &str) -> String {
        let mut out = String::from("'");
        for c in s.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\'' => out.push_str("\\'"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if u32::from(c) < 0x20 => {
                    let _ = write!(out, "\\x{:02x}", u32::from(c));
                }
                c => out.push(c),
            }
        }
        out.push('\'');
        out
    }

    /// Every layout a device might use for one message.
    fn frames(kind: &str, message: &str) -> Vec<String> {
        let json = Value::String(message.to_owned()).to_string();
        let py = py_str(message);
        vec![
            format!(r#"{{"type": "{kind}", "message": {json}}}"#),
            format!(r#"{{"type":"{kind}","message":{json}}}"#),
            format!(r#" {{ "message" : {json} , "type" : "{kind}" , "x": "y" }} "#),
            format!(r#"{{"message": "ignored", "type": "{kind}", "message": {json}}}"#),
            format!(r#"{{"type": "{kind}", "message": {json}, "message": "0001:0001:{{}}"}}"#),
            format!("{{'type': '{kind}', 'message': {py}}}"),
            format!("{{'message': {py}, 'type': '{kind}'}}"),
            format!(r#"{{"type": '{kind}', 'message': {py}}}"#),
        ]
    }

    fn assert_agrees(frame: &str) {
        assert_eq!(parse_device_message(frame), reference(frame), "{frame}");
    }

    #[test]
    fn typical_frames_are_read_in_place() {
        for (frame, at) in [
            (
                r#"{"type": "UPDT", "message": "0116:0001:{\"power_consumption\": 357}"}"#,
                28,
            ),
            (
                r#"{'type': 'UPDT', 'message': '0116:0001:{"power_consumption": 357}'}"#,
                28,
            ),
            (
                r#"{"type": "UPDT", "message": "0117:0001:{\"power_inject\": 357, \"battery\": 92.5}"}"#,
                28,
            ),
            (
                r#"{"type": "UPDT", "message": "1:A-b_9:{\"country\": \"AT\", \"x\": [true]}"}"#,
                28,
            ),
        ] {
            let mut fields = FastFields::default();
            let in_place = message_in_place(frame, at, &mut fields);
            let expect_in_place = !frame.contains('[');
            assert_eq!(in_place.is_some(), expect_in_place, "{frame}");
            if let Some((_, next)) = in_place {
                assert_eq!(&frame[next..], "}", "{frame}");
                assert!(!fields.into_update().is_empty());
            }
            assert_agrees(frame);
        }
    }

    /// A quote inside the body that really ends the message: read in place, the rest of the envelope
    /// would be taken for the body.
    #[test]
    fn a_quote_that_ends_the_message_ends_it() {
        for frame in [
            r#"{'type': 'UPDT', 'message': '1:1:{"a', 'x': '": 1}'}"#,
            r#"{"type": "UPDT", "message": "1:1:{\"a", "x": "\": 1}"}"#,
            r#"{'type': 'UPDT', 'message': '1:1:{"a": "b', 'x': '"}'}"#,
            r#"{"type": "UPDT", "message": "1:1:{\"a\": \"b", "x": "\"}"}"#,
        ] {
            let rejection = parse_device_message(frame).unwrap_err();
            assert!(
                matches!(rejection.error, Error::BodySyntax { .. }),
                "{frame}: {rejection:?}"
            );
            assert_agrees(frame);
        }
    }

    #[test]
    fn fields_are_sorted_and_the_last_duplicate_wins() {
        let msg = parse_device_message(
            r#"{"type": "UPDT", "message": "1:1:{\"power_inject\": 1, \"battery\": \"2\", \"power_income\": 3, \"power_inject\": 4, \"zz\": 5, \"a\": 6}"}"#,
        )
        .unwrap();
        let fields: Vec<(&str, &Value)> = msg.update.iter().collect();
        assert_eq!(
            fields,
            [
                ("a", &json!(6)),
                ("battery", &json!(2)),
                ("power_income", &json!(3)),
                ("power_inject", &json!(4)),
                ("zz", &json!(5)),
            ]
        );
        assert_eq!(msg.update.get("power_inject"), Some(&json!(4)));
        assert_eq!(msg.update.as_map().len(), 5);
    }

    #[test]
    fn a_kind_devices_may_not_send_does_not_hide_a_broken_envelope() {
        // Found by the device_frame fuzzer: the fast path reported the kind before the bad escape.
        let err = parse_device_message(r#"{"type":"FILT","message":"\uZZZZ"}"#).unwrap_err();
        assert!(matches!(err.error, Error::Envelope { .. }), "{err:?}");
        let err = parse_device_message(r#"{"type":"FILT","message":"1:0001:{}"}"#).unwrap_err();
        assert_eq!(
            err.error,
            Error::UnexpectedKind {
                kind: "FILT",
                expected: "INIT or UPDT"
            }
        );
    }

    #[test]
    fn what_the_fast_path_declines_still_agrees() {
        for message in [
            // Normalization, runtime and server keys, serial checks.
            "1:0001:{\"_battery\": 1, \"battery\": 2}",
            "1:0001:{\"serial_number\": \"0001\", \"tasks\": \"\"}",
            "1:0001:{\"serial_number\": \"0002\"}",
            "1:0001:{\"online\": true}",
            // Type errors, including one a later duplicate repairs.
            "1:0001:{\"battery\": \"full\"}",
            "1:0001:{\"battery\": \"full\", \"battery\": 3}",
            "1:0001:{\"pv_connectors\": 2.5}",
            "1:0001:{\"postcode\": 8020, \"pv_connectors\": 2.0, \"battery\": 350.0}",
            // Escapes inside strings, other whitespace, nesting, Python bodies, odd numbers.
            "1:0001:{\"country\": \"A\\\"T\"}",
            "1:0001:{\"country\": \"A\\\\T\"}",
            "1:0001:{\"country\":\t\"AT\"}",
            "1:0001:{\"x\": {\"a\": 1}}",
            "1:0001:{'battery': 1, 'country': 'AT'}",
            "1:0001:{\"a\": -0, \"b\": 1e3, \"c\": 18446744073709551616, \"d\": 0.1, \"e\": -0.0}",
            "1:0001:{\"a\": 9007199254740993, \"battery\": 9007199254740993}",
            // Integers at and beyond ±(2^53−1), connector counts, nesting at and beyond the limit.
            "1:0001:{\"a\": 9007199254740991, \"b\": -9007199254740991}",
            "1:0001:{\"a\": 9007199254740992}",
            "1:0001:{\"battery\": -9007199254740992, \"country\": 1}",
            "1:0001:{\"a\": 123456789012345678901234567890}",
            "1:0001:{\"a\": 1.8446744073709552e19, \"b\": 18446744073709551616}",
            "1:0001:{\"pv_connectors\": -1}",
            "1:0001:{\"pv_connectors\": -1, \"pv_connectors\": 2}",
            "1:0001:{\"pv_connectors\": 9007199254740992.0}",
            "1:0001:{\"a\": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}",
            "1:0001:{\"a\": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}",
            "1:0001:{\"é\": \"ü\", \"it's\": 1}",
            "1:0001:{} ",
            "1:0001: {}",
            "1:0001:{}",
            "1:0001:",
            "1:0001:[1]",
            "x:0001:{}",
            "1:00 01:{}",
        ] {
            for frame in frames("UPDT", message)
                .iter()
                .chain(&frames("INIT", message))
            {
                assert_agrees(frame);
            }
        }
    }

    fn arb_key() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "battery",
                "power_income",
                "power_inject",
                "power_consumption",
                "capacity",
                "postcode",
                "country",
                "pv_connectors",
                "local_time",
                "software_version",
                "solmate_version",
                "serial_number",
                "_battery",
                "__x",
                "websocket",
                "online",
                "owner",
                "charging",
                "power_in",
                "power_injectx",
                "",
                "it's",
                "a\"b",
                "back\\slash",
                "é",
            ])
            .prop_map(str::to_owned),
            "[a-z_]{1,20}",
        ]
    }

    fn arb_value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            (-1000i64..1000).prop_map(|n| n.to_string()),
            any::<f64>()
                .prop_filter("finite", |x| x.is_finite())
                .prop_map(|x| Value::from(x).to_string()),
            "-?[0-9]{1,17}(\\.[0-9]{1,17})?([eE][-+]?[0-9]{1,3})?",
            prop::sample::select(vec![
                "true",
                "false",
                "null",
                "\"357\"",
                "\" 12.5 \"",
                "\"inf\"",
                "\"\"",
                "\"it's\"",
                "\"a\\\"b\"",
                "\"tab\\t\"",
                "[1, 2]",
                "{\"a\": 1}",
                "9007199254740991",
                "-9007199254740992",
                "99999999999999999999",
                "-1",
                "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
                "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
                "-0",
                "1.0",
                "2.5",
            ])
            .prop_map(str::to_owned),
            "\"[ -~]{0,12}\""
                .prop_filter("valid JSON", |s| serde_json::from_str::<Value>(s).is_ok()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn fast_path_agrees_with_the_general_parsers(
            fields in prop::collection::vec((arb_key(), arb_value()), 0..6),
            serial in prop::sample::select(vec!["0001", "1", "SN-4711_b"]),
            spacing in prop::sample::select(vec![(", ", ": "), (",", ":"), (" , ", " : ")]),
            init in any::<bool>(),
        ) {
            let mut body = String::from("{");
            for (i, (key, value)) in fields.iter().enumerate() {
                if i > 0 {
                    body.push_str(spacing.0);
                }
                body.push_str(&Value::String(key.clone()).to_string());
                body.push_str(spacing.1);
                body.push_str(value);
            }
            body.push('}');
            let message = format!("0116:{serial}:{body}");
            for frame in frames(if init { "INIT" } else { "UPDT" }, &message) {
                prop_assert_eq!(parse_device_message(&frame), reference(&frame), "{}", frame);
            }
        }
    }
}
