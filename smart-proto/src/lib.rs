//! The SMART-OS protocol: what solar devices, the SMART-Server and dashboards say to each other.
//!
//! SMART-OS, the real-time observer, keeps the latest state of a fleet of solar devices. Devices hold a
//! websocket to the server at `/update/` and report their parameters; dashboards hold one at `/client/`,
//! receive the fleet and its changes, and send filter/sort queries. This crate is the protocol alone: pure
//! functions and types, no I/O, no async. Every parser is total — any input gives `Ok` or an [`Error`] that
//! says what was wrong and where, never a panic.
//!
//! # The envelope
//!
//! Every websocket text frame holds one object `{"type": KIND, "message": PAYLOAD}`. `KIND` is `INFO`,
//! `FILT`, `INIT` or `UPDT` ([`Kind`]). Keys may come in any order and unknown keys are ignored. Devices
//! written in Python may send `str(dict)` instead of JSON, so a Python dict literal is accepted too.
//!
//! ```
//! use smart_proto::{Kind, Payload, parse_envelope};
//!
//! let json = parse_envelope(r#"{"type": "UPDT", "message": "0116:0001:{\"power_consumption\": 357}"}"#)?;
//! let python = parse_envelope(r#"{'type': 'UPDT', 'message': '0116:0001:{"power_consumption": 357}'}"#)?;
//! assert_eq!(json, python);
//! assert_eq!(json.kind, Kind::Updt);
//! assert_eq!(json.message, Payload::Text("0116:0001:{\"power_consumption\": 357}".into()));
//! # Ok::<(), smart_proto::Error>(())
//! ```
//!
//! # The capping identifier
//!
//! A device message is the text `MID:SERIAL:BODY`. The message id ([`MessageId`], 1 to 9 digits, `0116`)
//! and the device serial ([`Serial`], 1 to 32 of `[A-Za-z0-9_-]`, `0001`) form the [`Header`], which the
//! server echoes verbatim in its reply. The body is everything after the second colon.
//!
//! ```
//! use smart_proto::Header;
//!
//! let (header, body) = Header::parse("10000:0001:{'local_time': '14:59:13'}")?;
//! assert_eq!((header.id.as_str(), header.serial.as_str()), ("10000", "0001"));
//! assert_eq!(body, "{'local_time': '14:59:13'}");
//! # Ok::<(), smart_proto::Error>(())
//! ```
//!
//! # Bodies
//!
//! A body is a JSON object or a Python dict literal (`True`/`False`/`None`, single quotes, tuples, trailing
//! commas), converted to a `serde_json` map by [`parse_body`]. Duplicate keys: the last wins. Anything but
//! an object is an error, `{}` is fine (a sign of life).
//!
//! ```
//! use smart_proto::{Error, parse_body};
//!
//! let body = parse_body("{'charging': False, 'battery': 92.5, 'local_time': None}")?;
//! assert_eq!(body["charging"], false);
//! assert_eq!(parse_body("[1, 2]").unwrap_err(), Error::BodyNotObject { offset: 0, found: "a list" });
//! # Ok::<(), smart_proto::Error>(())
//! ```
//!
//! # Normalization
//!
//! Devices that build their INIT from Python's `__dict__` send backing fields with a leading underscore
//! and runtime attributes that are not device state. [`normalize()`] strips one underscore from every key
//! (the plain key wins if both are present), drops the runtime keys ([`normalize::RUNTIME_KEYS`]) and the
//! keys only the server sets ([`normalize::SERVER_KEYS`]), and checks `serial_number` against the header.
//!
//! ```
//! use smart_proto::{Serial, normalize, parse_body};
//!
//! let body = parse_body(r#"{"serial_number": "0001", "_battery": 250, "websocket": "", "connected": true}"#)?;
//! let fields = normalize(body, &Serial::new("0001")?)?;
//! assert_eq!(serde_json::Value::Object(fields.into_map()), serde_json::json!({"battery": 250}));
//! # Ok::<(), smart_proto::Error>(())
//! ```
//!
//! # Device messages and replies
//!
//! [`parse_device_message`] does all of the above and type-checks the known fields ([`Update`]). The
//! server answers `MID:SERIAL:OK` once the update is stored, or `MID:SERIAL:ERROR` with a `reason`
//! ([`Rejection::reply`]); a frame whose header cannot be read gets a plain `ERROR`.
//!
//! ```
//! use smart_proto::{DEVICE_WELCOME, ServerMessage, parse_device_message};
//!
//! // On connect, the server greets the device with this exact text.
//! assert!(ServerMessage::Info(DEVICE_WELCOME.into()).to_frame().contains("SolServerConsumer: groups ['updates']"));
//!
//! let msg = parse_device_message(r#"{"type": "UPDT", "message": "0116:0001:{\"power_consumption\": 357}"}"#)
//!     .map_err(|r| r.error)?;
//! assert_eq!(ServerMessage::Ok(msg.header).to_frame(), r#"{"type":"INFO","message":"0116:0001:OK"}"#);
//!
//! let rejected = parse_device_message(r#"{"type": "UPDT", "message": "0116:0001:{\"battery\": \"full\"}"}"#)
//!     .unwrap_err();
//! assert!(rejected.reply().starts_with(r#"{"type":"INFO","message":"0116:0001:ERROR","reason":"#));
//! # Ok::<(), smart_proto::Error>(())
//! ```
//!
//! # Records
//!
//! The server keeps one [`Record`] per device: the known fields typed (strings, numbers or `null`, an
//! integer `pv_connectors`), server fields (`owner`, `manufacturing_date`, `last_status_update`, `online`),
//! and any other key a device sent. [`Record::apply`] merges an update and returns what changed, which is
//! the body of the UPDT pushed to dashboards.
//!
//! ```
//! use smart_proto::{Record, Serial, ServerMessage, Timestamp, parse_device_message};
//!
//! let msg = parse_device_message(r#"{"type": "UPDT", "message": "0008:0001:{\"country\": \"AT\"}"}"#)
//!     .map_err(|r| r.error)?;
//! let mut record = Record::new(msg.header.serial.clone(), "EET", Timestamp::UNIX_EPOCH);
//! let body = record.apply(&msg.update, Timestamp::from_unix_micros(1_000_000));
//! assert_eq!(record.country, "AT");
//! let frame = ServerMessage::Updt { header: msg.header, body }.to_frame();
//! assert!(frame.starts_with(r#"{"type":"UPDT","message":"0008:0001:{\"country\": \"AT\", "#));
//! # Ok::<(), smart_proto::Error>(())
//! ```
//!
//! # Dashboards: INIT and FILT
//!
//! A dashboard gets the whole fleet as `{"type":"INIT","message":[records…]}` ([`write_init`]) and may
//! send a FILT query: `filter:FIELD:OP:VALUE` and `sort:FIELD:DIR:KIND` clauses ([`Query`]). The answer
//! is an INIT of the matching records in the asked order.
//!
//! ```
//! use smart_proto::{Record, Serial, Timestamp, parse_dashboard_message, write_init};
//!
//! let mut fleet = Vec::new();
//! for (serial, postcode) in [("0001", "8020"), ("0002", "1010"), ("0003", "8010")] {
//!     let mut record = Record::new(Serial::new(serial)?, "EET", Timestamp::UNIX_EPOCH);
//!     record.postcode = postcode.into();
//!     fleet.push(record);
//! }
//! let query = parse_dashboard_message(r#"{"type":"FILT","message":["filter:postcode:^:8","sort:postcode:<:123"]}"#)?;
//! let view = query.apply(&fleet);
//! let serials: Vec<&str> = view.iter().map(|r| r.serial_number.as_str()).collect();
//! assert_eq!(serials, ["0003", "0001"]);
//! assert!(write_init(view).starts_with(r#"{"type":"INIT","message":[{"serial_number":"0003","#));
//! # Ok::<(), smart_proto::Error>(())
//! ```
//!
//! Every record of an INIT list carries the same keys (the union of the list's extras, `null` where a record
//! has none; [`extra_keys`], [`Record::write_json_padded`]). To test many records against one query, build
//! its [`Matcher`] once ([`Query::matcher`]).
//!
//! A server that builds frames from its own parts (cached record texts, a change set shared by every
//! dashboard) writes them with the [`frame`] writers, byte for byte what [`ServerMessage::to_frame`] writes.
//!
//! Clients (watchers, tests, load generators) read what the server sends with [`parse_server_message`].
//!
//! # Limits
//!
//! Bodies nest at most [`body::MAX_DEPTH`] (32) levels; integers beyond ±(2^53−1) in a device body are
//! refused ([`limits::MAX_SAFE_INTEGER`]), since browsers would round them; a FILT value is at most
//! [`query::MAX_VALUE_BYTES`] (256) bytes. The server bounds extra fields with [`Limits`].
//!
//! # Errors
//!
//! One [`Error`] type covers every failure; its messages are meant for the person who has to fix the
//! sender ("body is not an object at byte 0 (found a list)"). Byte offsets are relative to the text being
//! parsed: the frame for envelope errors, the body for body errors.

#![warn(missing_docs)]

pub mod body;
mod bounds;
pub mod envelope;
pub mod error;
mod fast;
pub mod frame;
pub mod header;
pub mod init;
mod json;
pub mod limits;
pub mod message;
pub mod normalize;
pub mod query;
pub mod record;

pub use body::{parse_body, parse_python_literal};
pub use envelope::{Envelope, Kind, Payload, parse_envelope};
pub use error::{Error, Result};
pub use header::{Header, MessageId, Serial};
pub use init::extra_keys;
pub use limits::Limits;
pub use message::{
    DASHBOARD_WELCOME, DEVICE_WELCOME, DeviceMessage, Rejection, ServerMessage,
    parse_dashboard_message, parse_device_message, parse_server_message, write_init,
};
pub use normalize::{Normalized, normalize};
pub use query::{Clause, Direction, Filter, Matcher, Op, Query, Sort, SortKind};
pub use record::{FieldValue, Record, Timestamp, Update};

// The README's examples run as doctests too, so they cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
