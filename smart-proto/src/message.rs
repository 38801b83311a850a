//! Whole messages: what devices send, what dashboards send, what the server sends (PROTOCOL.md §5, §7).

use serde_json::{Map, Value};

use crate::{Error, Header, Kind, Query, Record, Result, Update};

/// Welcome text sent to devices on connect (exact, devices look for it).
pub const DEVICE_WELCOME: &str =
    "Welcome to SMART-Server - SolMate Real-Time ObServer! - SolServerConsumer: groups ['updates']";
/// Welcome text sent to dashboards on connect.
pub const DASHBOARD_WELCOME: &str =
    "Welcome to SMART-Server - SolMate Real-Time ObServer! - ClientConsumer: groups ['broadcast']";

/// A valid device message: INIT or UPDT, header, typed normalized fields.
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
    pub fn reply(&self) -> String {
        ServerMessage::Error { header: self.header.clone(), reason: self.error.to_string() }.to_frame()
    }
}

/// Parse a device frame all the way: envelope, header, body, normalization, typed fields.
pub fn parse_device_message(frame: &str) -> Result<DeviceMessage, Rejection> {
    let _ = frame;
    todo!()
}

impl DeviceMessage {
    /// The frame a device sends for this message (strict JSON envelope, JSON body).
    pub fn to_frame(&self) -> String {
        todo!()
    }
}

/// Parse a dashboard frame: a FILT with a list of clauses.
pub fn parse_dashboard_message(frame: &str) -> Result<Query> {
    let _ = frame;
    todo!()
}

/// Everything the server sends.
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
    pub fn to_frame(&self) -> String {
        todo!()
    }
}

/// Write an INIT frame straight from borrowed records (no intermediate `Vec`).
pub fn write_init<'a>(records: impl IntoIterator<Item = &'a Record>) -> String {
    let _ = records;
    todo!()
}

/// Parse a frame sent by the server (for clients: watchers, tests, load generators).
pub fn parse_server_message(frame: &str) -> Result<ServerMessage> {
    let _ = frame;
    let _ = Error::MissingType;
    todo!()
}
