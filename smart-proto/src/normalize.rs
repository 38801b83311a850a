//! Underscore normalization and dropped keys (PROTOCOL.md §4).

use serde_json::{Map, Value};

use crate::{Result, Serial};

/// Runtime keys of the reference device that are not device state.
pub const RUNTIME_KEYS: &[&str] =
    &["server_url", "websocket", "connected", "publish", "message_id", "message_queue", "tasks"];

/// Keys only the server sets.
pub const SERVER_KEYS: &[&str] = &["owner", "manufacturing_date", "last_status_update", "online"];

/// A body after §4: keys without their leading underscore, runtime and server keys dropped,
/// `serial_number` checked against the header and removed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Normalized(pub(crate) Map<String, Value>);

impl Normalized {
    /// The fields.
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }
    /// The fields, owned.
    pub fn into_map(self) -> Map<String, Value> {
        self.0
    }
}

/// Apply §4 to a parsed body for the device `serial`.
pub fn normalize(body: Map<String, Value>, serial: &Serial) -> Result<Normalized> {
    let _ = (body, serial);
    todo!()
}
