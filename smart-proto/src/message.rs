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

use std::io::{self, Write as _};

use serde::{Serialize, Serializer as _};
use serde_json::ser::Formatter;
use serde_json::{Map, Value};

use crate::envelope::Payload;
use crate::fast::{self, DeviceFrame};
pub use crate::init::write_init;
use crate::json;
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
    // The usual frame is read by the fast path; whatever it leaves (`None`) is read below, step by step.
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
        header_frame(self.kind, &self.header, self.update.iter())
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
        let mut out = String::new();
        self.write_frame(&mut out);
        out
    }

    /// Append the frame [`ServerMessage::to_frame`] returns to `out`. An INFO (OK, ERROR, welcome)
    /// is written straight into `out`, without a temporary string: a server that keeps one buffer
    /// per connection acks without allocating.
    ///
    /// ```
    /// use smart_proto::{Header, ServerMessage};
    ///
    /// let mut out = String::new();
    /// ServerMessage::Ok(Header::new("0116", "0001")?).write_frame(&mut out);
    /// assert_eq!(out, r#"{"type":"INFO","message":"0116:0001:OK"}"#);
    /// out.clear();
    /// ServerMessage::Error { header: None, reason: "say \"hi\"".into() }.write_frame(&mut out);
    /// assert_eq!(out, r#"{"type":"INFO","message":"ERROR","reason":"say \"hi\""}"#);
    /// # Ok::<(), smart_proto::Error>(())
    /// ```
    pub fn write_frame(&self, out: &mut String) {
        match self {
            ServerMessage::Info(text) => write_info(out, |out| json::write_chars(out, text), None),
            ServerMessage::Ok(header) => write_info(
                out,
                |out| {
                    write_header_chars(out, header);
                    out.push_str(":OK");
                },
                None,
            ),
            ServerMessage::Error {
                header: Some(header),
                reason,
            } => write_info(
                out,
                |out| {
                    write_header_chars(out, header);
                    out.push_str(":ERROR");
                },
                Some(reason),
            ),
            ServerMessage::Error {
                header: None,
                reason,
            } => write_info(out, |out| out.push_str("ERROR"), Some(reason)),
            ServerMessage::Init(records) => out.push_str(&write_init(records)),
            ServerMessage::Updt { header, body } => {
                out.push_str(&header_frame(Kind::Updt, header, body));
            }
        }
    }
}

/// An INFO frame as `serde_json` writes [`Frame`]: `write_message` writes the inside of the
/// message's string literal (escaped), `reason` is added when there is one.
fn write_info(out: &mut String, write_message: impl FnOnce(&mut String), reason: Option<&str>) {
    out.push_str(r#"{"type":"INFO","message":""#);
    write_message(out);
    out.push('"');
    if let Some(reason) = reason {
        out.push_str(r#","reason":"#);
        json::write_str(out, reason);
    }
    out.push('}');
}

/// `MID:SERIAL` inside a JSON string literal (escaped, as its `Display` text would be).
fn write_header_chars(out: &mut String, header: &Header) {
    json::write_chars(out, header.id.as_str());
    out.push(':');
    json::write_chars(out, header.serial.as_str());
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

/// The envelope of every frame the server sends, written compact and in this key order.
#[derive(Serialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

impl Frame<'_> {
    fn to_json(&self) -> String {
        // Infallible: every field is a string.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// `serde_json`'s compact output with the separators of Python's `json.dumps`: `{"a": 1, "b": [1, 2]}`.
struct PythonSeparators;

impl Formatter for PythonSeparators {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }
}

/// `MID:SERIAL:{body}`, the body written as Python's `json.dumps` writes it.
fn header_message<K: Serialize, V: Serialize>(
    header: &Header,
    body: impl IntoIterator<Item = (K, V)>,
) -> String {
    let mut out = Vec::with_capacity(64);
    // Infallible: a `Vec` takes every write, and every key is a string.
    let _ = write!(out, "{header}:");
    let _ = serde_json::Serializer::with_formatter(&mut out, PythonSeparators).collect_map(body);
    // `serde_json` writes UTF-8 only, so this borrows.
    String::from_utf8_lossy(&out).into_owned()
}

/// `{"type":KIND,"message":"MID:SERIAL:{body}"}`.
fn header_frame<K: Serialize, V: Serialize>(
    kind: Kind,
    header: &Header,
    body: impl IntoIterator<Item = (K, V)>,
) -> String {
    Frame {
        kind: kind.as_str(),
        message: &header_message(header, body),
        reason: None,
    }
    .to_json()
}

#[cfg(test)]
mod tests;
