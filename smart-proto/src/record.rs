//! The typed device record (PROTOCOL.md §6).

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value};

use crate::{Normalized, Result, Serial};

/// An instant, as microseconds since the Unix epoch; written as RFC 3339 UTC with microseconds
/// (`2024-03-11T00:43:33.256667Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(i64);

impl Timestamp {
    /// From microseconds since the epoch.
    pub fn from_unix_micros(micros: i64) -> Timestamp {
        Timestamp(micros)
    }
    /// Microseconds since the epoch.
    pub fn as_unix_micros(self) -> i64 {
        self.0
    }
    /// Parse the RFC 3339 form this type writes (also accepts fewer fraction digits and `+00:00`).
    pub fn parse(s: &str) -> Result<Timestamp> {
        let _ = s;
        todo!()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let _ = f;
        todo!()
    }
}

/// The normalized, type-checked fields of one device message: known fields coerced to their type
/// (numbers from numeric strings, postcode from numbers, integral `pv_connectors`), others kept as sent.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Update(pub(crate) Map<String, Value>);

impl Update {
    /// Type-check and coerce a normalized body. Any known field of the wrong type fails the whole update.
    pub fn from_normalized(fields: Normalized) -> Result<Update> {
        let _ = fields;
        todo!()
    }
    /// The coerced fields, in key order.
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }
    /// Number of fields.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// `{}`: a sign of life that changes nothing.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A borrowed view of one field's value, for queries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldValue<'a> {
    /// A string.
    Str(&'a str),
    /// A number.
    Num(f64),
    /// A boolean.
    Bool(bool),
    /// A list or object (extra fields only).
    Other(&'a Value),
}

/// The latest known state of one device.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The key.
    pub serial_number: Serial,
    /// Firmware version, `""` until reported.
    pub software_version: String,
    /// Country code, `""` until reported.
    pub country: String,
    /// Postcode as text, `""` until reported.
    pub postcode: String,
    /// Hardware generation, default `"v1"`.
    pub solmate_version: String,
    /// W.
    pub power_income: Option<f64>,
    /// W.
    pub power_inject: Option<f64>,
    /// W.
    pub power_consumption: Option<f64>,
    /// Battery level.
    pub battery: Option<f64>,
    /// Capacity.
    pub capacity: Option<f64>,
    /// Number of PV connectors, default 1.
    pub pv_connectors: i64,
    /// Device local time, kept as sent.
    pub local_time: Option<String>,
    /// Set by the server at registration.
    pub owner: String,
    /// First time seen.
    pub manufacturing_date: Timestamp,
    /// Last accepted message.
    pub last_status_update: Timestamp,
    /// At least one connection has sent for this serial.
    pub online: bool,
    /// Any other field a device sent, as sent.
    pub extra: BTreeMap<String, Value>,
}

impl Record {
    /// A new device, first seen `now`, with every field at its default.
    pub fn new(serial_number: Serial, owner: impl Into<String>, now: Timestamp) -> Record {
        let _ = (serial_number, owner, now);
        todo!()
    }

    /// Apply an update received at `now`. Returns the fields whose value changed, typed, plus
    /// `last_status_update` — the body of the UPDT sent to dashboards.
    pub fn apply(&mut self, update: &Update, now: Timestamp) -> Map<String, Value> {
        let _ = (update, now);
        todo!()
    }

    /// A field by name (`serial_number`, known fields, server fields, extras). `None` if missing or null.
    pub fn get(&self, field: &str) -> Option<FieldValue<'_>> {
        let _ = field;
        todo!()
    }

    /// All fields as a JSON object, in the order of §6.
    pub fn to_map(&self) -> Map<String, Value> {
        todo!()
    }

    /// Serialize as a JSON object, known fields in the order of §6, then extras in key order.
    pub fn write_json(&self, out: &mut String) {
        let _ = out;
        todo!()
    }

    /// The JSON text of [`Record::write_json`].
    pub fn to_json(&self) -> String {
        let mut s = String::new();
        self.write_json(&mut s);
        s
    }

    /// Read a record back from its JSON object (storage, clients). Server fields must be present.
    pub fn from_map(map: Map<String, Value>) -> Result<Record> {
        let _ = map;
        todo!()
    }

    /// Read a record back from JSON text.
    pub fn from_json(text: &str) -> Result<Record> {
        let _ = text;
        todo!()
    }
}
