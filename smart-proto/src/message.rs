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

use crate::envelope::Payload;
use crate::fast::{self, DeviceFrame};
pub use crate::init::write_init;
use crate::normalize::{Normalized, needs_work, normalized_entries};
use crate::record::FastFields;
use crate::{
    Error, Header, Kind, Query, Record, Result, Serial, Update, parse_body, parse_envelope,
};

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
    let mut fields = FastFields::default();
    if let Some(DeviceFrame { init, message }) = fast::device_frame(frame, &mut fields) {
        let kind = if init { Kind::Init } else { Kind::Updt };
        return match message {
            fast::Message::InPlace {
                header,
                id_len,
                serial_len,
            } => Ok(DeviceMessage {
                kind,
                header: crate::header::from_lens(header, id_len, serial_len),
                update: fields.into_update(),
            }),
            fast::Message::Text(text) => device_message(kind, &text),
        };
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

pub(crate) fn device_kind(kind: Kind) -> Result<Kind> {
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
pub(crate) fn typed_message(
    kind: Kind,
    header: Header,
    body: &str,
    fields: Result<Map<String, Value>>,
) -> Result<DeviceMessage, Rejection> {
    let update = fields.and_then(|map| {
        crate::limits::check_safe_integers(&map, body)?;
        normalized_update(map, &header.serial)
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

/// The fast path reads a typical message straight into the typed fields of its update.
impl fast::Fields for FastFields {
    fn clear(&mut self) {
        FastFields::clear(self);
    }
}

/// The rules of PROTOCOL.md §4 applied to a body, typed ([`Update::from_normalized`] without the map in
/// between).
fn normalized_update(body: Map<String, Value>, serial: &Serial) -> Result<Update> {
    if !body.keys().any(|k| needs_work(k)) {
        return Update::from_normalized(Normalized(body));
    }
    Update::from_entries(normalized_entries(body, serial)?)
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
mod tests {
    #![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

    use serde_json::json;

    use super::*;
    use crate::normalize::normalize;

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

    /// The device path types the normalized entries without building the normalized map first.
    fn both_ways(body: &Value, serial: &str) -> (Result<Update>, Result<Update>) {
        let Value::Object(map) = body.clone() else {
            panic!("not an object")
        };
        let serial = Serial::new(serial).unwrap();
        let direct = normalized_update(map.clone(), &serial);
        let via_map = normalize(map, &serial).and_then(Update::from_normalized);
        (direct, via_map)
    }

    #[test]
    fn typing_without_the_map_agrees() {
        for body in [
            json!({"_power_income": "x", "battery": "y"}),
            json!({"_power_income": "x", "zz": 1, "_battery": 2}),
            json!({"_z": 1, "a": 2, "_a": 3, "__b": 4, "tasks": 5, "serial_number": "0001"}),
            json!({"serial_number": 2, "_battery": 1}),
            json!({"_postcode": 8020, "_pv_connectors": 2.0, "owner": "x", "_online": true}),
            json!({"battery": 1}),
            json!({}),
        ] {
            let (direct, via_map) = both_ways(&body, "0001");
            assert_eq!(direct, via_map, "{body}");
        }
        let (direct, _) = both_ways(&json!({"_power_income": "x", "battery": "y"}), "1");
        assert!(
            direct
                .unwrap_err()
                .to_string()
                .starts_with("field \"battery\"")
        );
    }

    proptest::proptest! {
        #[test]
        fn typing_without_the_map_agrees_on_any_body(
            entries in proptest::collection::vec(
                (
                    "_{0,2}(battery|power_income|country|postcode|pv_connectors|tasks|online|serial_number|[a-z]{1,3})",
                    proptest::prop_oneof![
                        proptest::strategy::Just(json!(1)),
                        proptest::strategy::Just(json!(2.5)),
                        proptest::strategy::Just(json!("7")),
                        proptest::strategy::Just(json!("x")),
                        proptest::strategy::Just(json!(null)),
                        proptest::strategy::Just(json!([1])),
                    ],
                ),
                0..8,
            ),
        ) {
            let body = Value::Object(entries.into_iter().collect());
            let (direct, via_map) = both_ways(&body, "7");
            proptest::prop_assert_eq!(direct, via_map, "{}", body);
        }
    }
}
