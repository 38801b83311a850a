//! The envelope `{"type": KIND, "message": PAYLOAD}` (PROTOCOL.md §1).

use std::borrow::Cow;

use serde_json::Value;

use crate::Result;

/// The four message types.
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
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Info => "INFO",
            Kind::Filt => "FILT",
            Kind::Init => "INIT",
            Kind::Updt => "UPDT",
        }
    }

    /// Parse the exact, upper-case wire name.
    pub fn parse(s: &str) -> Result<Kind> {
        let _ = s;
        todo!()
    }
}

/// The `message` of an envelope.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload<'a> {
    /// A string (INFO, device INIT/UPDT, UPDT to dashboards); borrowed when no unescaping was needed.
    Text(Cow<'a, str>),
    /// A list (FILT clauses, INIT records to dashboards), kept as JSON values.
    List(Vec<Value>),
}

/// A parsed envelope. Extra keys are ignored; `reason` (sent by the server on errors) is kept.
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
pub fn parse_envelope(frame: &str) -> Result<Envelope<'_>> {
    let _ = frame;
    todo!()
}
