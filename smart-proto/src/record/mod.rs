//! The typed device record (PROTOCOL.md §6).
//!
//! A device message becomes an [`Update`]: its normalized fields, with every known field checked and
//! coerced to its type (numbers from numeric strings, postcodes from numbers, integral `pv_connectors`).
//! The server keeps one [`Record`] per serial and [applies](Record::apply) updates to it; what changed is
//! the body of the UPDT that dashboards receive.
//!
//! ```
//! use smart_proto::{Record, Serial, Timestamp, Update, normalize, parse_body};
//!
//! let serial = Serial::new("0001").unwrap();
//! let seen = Timestamp::parse("2024-03-11T00:43:33.256667Z").unwrap();
//! let mut record = Record::new(serial.clone(), "EET", seen);
//!
//! let body = parse_body(r#"{"battery": "350", "postcode": 7445}"#).unwrap();
//! let update = Update::from_normalized(normalize(body, &serial).unwrap()).unwrap();
//! let changed = record.apply(&update, seen);
//!
//! assert_eq!(record.battery, Some(350.0));
//! assert_eq!(record.postcode, "7445");
//! assert_eq!(
//!     serde_json::Value::Object(changed).to_string(),
//!     r#"{"battery":350,"last_status_update":"2024-03-11T00:43:33.256667Z","postcode":"7445"}"#
//! );
//! ```

mod diff;
mod fast_fields;
mod field;
mod number;
mod read;
mod timestamp;
mod update;
mod write;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::de::{self, Deserializer};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Error, Result, Serial};

pub(crate) use fast_fields::FastFields;
#[allow(
    unused_imports,
    reason = "the fast parser's path to the key order, kept at `crate::record::key_cmp`"
)]
pub(crate) use fast_fields::key_cmp;
pub use field::FieldValue;
use field::{FieldKind, FieldRef, Slot, write_field};
pub(crate) use number::parse_number;
pub use timestamp::Timestamp;
use update::Source;
pub use update::Update;

/// Values quoted in error messages are cut to about this many bytes.
const QUOTE_BYTES: usize = 64;

/// Make `target` a copy of `source`, reusing `target`'s keys and values where the keys are the same
/// (a device usually sends the same extra fields every time).
fn clone_extras_from(target: &mut BTreeMap<String, Value>, source: &BTreeMap<String, Value>) {
    if target.len() == source.len() && target.keys().eq(source.keys()) {
        for (to, from) in target.values_mut().zip(source.values()) {
            to.clone_from(from);
        }
    } else {
        *target = source.clone();
    }
}

/// `s` cut to a length fit for an error message.
fn quote(s: &str) -> String {
    crate::error::shorten(s, QUOTE_BYTES)
}

/// Generates, from the one table of the known fields below, everything that lists them: the [`Record`]
/// struct, [`Record::FIELDS`], [`Record::new`], the field kinds ([`FieldKind::named`], which the fast
/// parser uses too), setting a field from an update, reading one by name, visiting them in the written
/// order, and the field list served to dashboards ([`Record::fields_json`]).
macro_rules! record_fields {
    (
        $(#[$new_doc:meta])*
        new($serial:ident, $owner:ident, $now:ident);
        $(
            $(#[$doc:meta])*
            $name:ident: $ty:ty [$kind:ident] = $default:expr;
        )*
    ) => {
        /// The latest known state of one device (PROTOCOL.md §6).
        ///
        /// ```
        /// use smart_proto::{Record, Serial, Timestamp};
        ///
        /// let now = Timestamp::parse("2024-03-11T00:43:33.256667Z").unwrap();
        /// let record = Record::new(Serial::new("0004").unwrap(), "EET", now);
        /// assert_eq!(record.solmate_version, "v1");
        /// assert_eq!(record.pv_connectors, 1);
        /// assert_eq!(Record::from_json(&record.to_json()).unwrap(), record);
        /// ```
        #[derive(Debug, PartialEq)]
        pub struct Record {
            $(
                $(#[$doc])*
                pub $name: $ty,
            )*
            /// Any other field a device sent, as sent. Keys that name a known field are ignored when the
            /// record is written.
            pub extra: BTreeMap<String, Value>,
        }

        /// `clone_from` copies field by field into the allocations the target already has (its
        /// strings, its extras' keys), so a server recycling retired records copies without
        /// allocating.
        impl Clone for Record {
            fn clone(&self) -> Record {
                Record {
                    $($name: self.$name.clone(),)*
                    extra: self.extra.clone(),
                }
            }

            fn clone_from(&mut self, source: &Record) {
                $(self.$name.clone_from(&source.$name);)*
                clone_extras_from(&mut self.extra, &source.extra);
            }
        }

        impl Record {
            /// The known fields in the order of PROTOCOL.md §6, which is the order records are written in
            /// (extra fields follow, in key order).
            ///
            /// ```
            /// use smart_proto::Record;
            /// assert_eq!(Record::FIELDS[0], "serial_number");
            /// assert_eq!(Record::FIELDS.len(), 16);
            /// ```
            pub const FIELDS: [&'static str; [$(stringify!($name)),*].len()] = [$(stringify!($name)),*];

            /// Each known field with its JSON type, whether it may be `null`, and whether devices set it.
            const FIELD_TYPES: [(&'static str, &'static str, bool, bool); Record::FIELDS.len()] = [$(
                (
                    stringify!($name),
                    <$ty as Slot>::JSON_TYPE,
                    <$ty as Slot>::NULLABLE,
                    !matches!(FieldKind::$kind, FieldKind::Reserved),
                ),
            )*];

            $(#[$new_doc])*
            pub fn new($serial: Serial, $owner: impl Into<String>, $now: Timestamp) -> Record {
                Record {
                    $($name: $default,)*
                    extra: BTreeMap::new(),
                }
            }

            /// Sets one known field from its canonical value: whether it changed, `None` if `key` is not
            /// a known field. Values of the wrong type and reserved fields are ignored.
            #[inline]
            fn set_known(&mut self, key: &str, value: &Value) -> Option<bool> {
                Some(match key {
                    $(stringify!($name) => {
                        !matches!(FieldKind::$kind, FieldKind::Reserved) && self.$name.set_from(value)
                    })*
                    _ => return None,
                })
            }

            /// A known field's value (`None` inside if it is null), `None` if `field` is not a known field.
            #[inline]
            fn get_known(&self, field: &str) -> Option<Option<FieldValue<'_>>> {
                Some(match field {
                    $(stringify!($name) => self.$name.field_value(),)*
                    _ => return None,
                })
            }

            /// Visits the known fields in the written order.
            fn try_for_each_known<'a, E>(
                &'a self,
                mut visit: impl FnMut(&'static str, FieldRef<'a>) -> Result<(), E>,
            ) -> Result<(), E> {
                $(visit(stringify!($name), self.$name.field_ref())?;)*
                Ok(())
            }
        }

        /// One known field, named as in the table: how the reader of stored records
        /// ([`read`]) says which field a key names, and its bit in the set of fields read.
        #[allow(non_camel_case_types, reason = "the variants are the fields' own names")]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        enum Known {
            $($name,)*
        }

        impl Known {
            /// Every known field, in the table's order.
            const ALL: [Known; Record::FIELDS.len()] = [$(Known::$name),*];

            /// The known field named `key`.
            #[inline]
            fn named(key: &str) -> Option<Known> {
                Some(match key {
                    $(stringify!($name) => Known::$name,)*
                    _ => return None,
                })
            }

            /// Whether only the server sets it (a stored record must hold it).
            const fn is_reserved(self) -> bool {
                match self {
                    $(Known::$name => matches!(FieldKind::$kind, FieldKind::Reserved),)*
                }
            }
        }

        impl Record {
            /// Reads the value of known field `field` of a stored record from `map`, as
            /// [`Record::from_map`] would take it (see [`read::Stored`]): `false` if it would not take
            /// it as it is (the caller then gives up on the fast path).
            #[inline]
            fn read_known<'de, A: de::MapAccess<'de>>(
                &mut self,
                field: Known,
                map: &mut A,
            ) -> Result<bool, A::Error> {
                match field {
                    $(Known::$name => read::Stored::read(&mut self.$name, FieldKind::$kind, map),)*
                }
            }
        }

        impl FieldKind {
            /// The crate's own copy of a known or reserved field name, and its kind; `None` for other keys.
            #[inline]
            pub(crate) fn named(key: &str) -> Option<(&'static str, FieldKind)> {
                Some(match key {
                    $(stringify!($name) => (stringify!($name), FieldKind::$kind),)*
                    _ => return None,
                })
            }
        }
    };
}

// The known fields of PROTOCOL.md §6, in the order records are written: `name: Rust type [kind] =
// default in Record::new`. The kind says how a device's value is checked and coerced (`Reserved`: never
// taken from a device). Adding a field is one line here (and its row in PROTOCOL.md §6).
record_fields! {
    /// A new device, first seen `now`, with every field at its default: empty strings, `solmate_version`
    /// `"v1"`, numbers `null`, one PV connector, no local time, and `online` false (the server sets it).
    ///
    /// ```
    /// use smart_proto::{Record, Serial, Timestamp};
    ///
    /// let now = Timestamp::from_unix_micros(1_710_117_813_256_667);
    /// let record = Record::new(Serial::new("0004").unwrap(), "EET", now);
    /// assert_eq!(
    ///     record.to_json(),
    ///     concat!(
    ///         r#"{"serial_number":"0004","software_version":"","country":"","solmate_version":"v1","#,
    ///         r#""postcode":"","power_income":null,"power_inject":null,"power_consumption":null,"#,
    ///         r#""battery":null,"capacity":null,"pv_connectors":1,"local_time":null,"owner":"EET","#,
    ///         r#""manufacturing_date":"2024-03-11T00:43:33.256667Z","#,
    ///         r#""last_status_update":"2024-03-11T00:43:33.256667Z","online":false}"#
    ///     )
    /// );
    /// ```
    new(serial_number, owner, now);

    /// The key.
    serial_number: Serial [Reserved] = serial_number;
    /// Firmware version, `""` until reported.
    software_version: String [Text] = String::new();
    /// Country code, `""` until reported.
    country: String [Text] = String::new();
    /// Hardware generation, default `"v1"`.
    solmate_version: String [Text] = "v1".to_owned();
    /// Postcode as text, `""` until reported.
    postcode: String [Postcode] = String::new();
    /// W.
    power_income: Option<f64> [Number] = None;
    /// W.
    power_inject: Option<f64> [Number] = None;
    /// W.
    power_consumption: Option<f64> [Number] = None;
    /// Battery level.
    battery: Option<f64> [Number] = None;
    /// Capacity.
    capacity: Option<f64> [Number] = None;
    /// Number of PV connectors, default 1.
    pv_connectors: i64 [Integer] = 1;
    /// Device local time, kept as sent.
    local_time: Option<String> [OptionalText] = None;
    /// Set by the server at registration.
    owner: String [Reserved] = owner.into();
    /// First time seen.
    manufacturing_date: Timestamp [Reserved] = now;
    /// Last accepted message.
    last_status_update: Timestamp [Reserved] = now;
    /// At least one connection has sent for this serial.
    online: bool [Reserved] = false;
}

impl Record {
    /// The known fields as a JSON list, in the order of [`Record::FIELDS`]: each with its `name`, the JSON
    /// `type` of its value (`"string"`, `"number"`, `"integer"`, `"timestamp"` — RFC 3339 text — or
    /// `"boolean"`), whether it may be `null`, and whether `device`s set it (the others are set by the
    /// server). Dashboards take their known columns from it (`GET /api/fields`).
    ///
    /// ```
    /// use smart_proto::Record;
    ///
    /// let fields: serde_json::Value = serde_json::from_str(&Record::fields_json())?;
    /// assert_eq!(fields.as_array().map(Vec::len), Some(Record::FIELDS.len()));
    /// assert_eq!(fields[0], serde_json::json!({"name": "serial_number", "type": "string", "null": false, "device": false}));
    /// assert_eq!(fields[8], serde_json::json!({"name": "battery", "type": "number", "null": true, "device": true}));
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn fields_json() -> String {
        let mut out = String::from("[");
        for (i, (name, json_type, nullable, device)) in Record::FIELD_TYPES.into_iter().enumerate()
        {
            if i > 0 {
                out.push(',');
            }
            // Names and types are plain ASCII identifiers: nothing to escape.
            let _ = write!(
                out,
                r#"{{"name":"{name}","type":"{json_type}","null":{nullable},"device":{device}}}"#
            );
        }
        out.push(']');
        out
    }

    /// Apply an update received at `now`. Returns the fields whose value changed, typed, plus
    /// `last_status_update` — the body of the UPDT sent to dashboards (PROTOCOL.md §7).
    ///
    /// ```
    /// use smart_proto::{Record, Serial, Timestamp, Update, normalize, parse_body};
    ///
    /// let serial = Serial::new("0001").unwrap();
    /// let mut record = Record::new(serial.clone(), "EET", Timestamp::UNIX_EPOCH);
    /// record.battery = Some(350.0);
    ///
    /// let body = parse_body(r#"{"battery": 350.0, "power_consumption": "357"}"#).unwrap();
    /// let update = Update::from_normalized(normalize(body, &serial).unwrap()).unwrap();
    /// let later = Timestamp::from_unix_micros(1_000_000);
    /// let changed = record.apply(&update, later);
    /// // The battery did not change, so only the consumption and the time are news.
    /// assert_eq!(
    ///     serde_json::Value::Object(changed).to_string(),
    ///     r#"{"last_status_update":"1970-01-01T00:00:01.000000Z","power_consumption":357}"#
    /// );
    /// ```
    pub fn apply(&mut self, update: &Update, now: Timestamp) -> Map<String, Value> {
        let mut changed = Map::new();
        for (key, value) in update.iter() {
            if self.set(key, value) {
                changed.insert(key.to_owned(), value.clone());
            }
        }
        self.last_status_update = now;
        changed.insert(
            "last_status_update".to_owned(),
            Value::String(now.as_str().to_owned()),
        );
        changed
    }

    /// [`Record::apply`] without building the map of what changed (for when nobody needs it): the
    /// record ends up the same.
    ///
    /// ```
    /// use smart_proto::{Record, Serial, Timestamp, Update, normalize, parse_body};
    ///
    /// let serial = Serial::new("0001").unwrap();
    /// let mut a = Record::new(serial.clone(), "EET", Timestamp::UNIX_EPOCH);
    /// let mut b = a.clone();
    /// let body = parse_body(r#"{"battery": 35, "charging": true}"#).unwrap();
    /// let update = Update::from_normalized(normalize(body, &serial).unwrap()).unwrap();
    /// let later = Timestamp::from_unix_micros(1_000_000);
    /// a.apply(&update, later);
    /// b.apply_unrecorded(&update, later);
    /// assert_eq!(a, b);
    /// ```
    pub fn apply_unrecorded(&mut self, update: &Update, now: Timestamp) {
        self.apply_each(update, now, |_, _| {});
    }

    /// [`Record::apply`], calling `changed` with each field the update changes (its key and new
    /// value) instead of building a map: for a caller that keeps only some of them.
    ///
    /// ```
    /// use smart_proto::{Record, Serial, Timestamp, Update, normalize, parse_body};
    ///
    /// let serial = Serial::new("0001").unwrap();
    /// let mut record = Record::new(serial.clone(), "EET", Timestamp::UNIX_EPOCH);
    /// record.battery = Some(35.0);
    /// let body = parse_body(r#"{"battery": 35, "power_income": 120, "country": "AT"}"#).unwrap();
    /// let update = Update::from_normalized(normalize(body, &serial).unwrap()).unwrap();
    /// let mut numbers = Vec::new();
    /// record.apply_each(&update, Timestamp::UNIX_EPOCH, |key, value| {
    ///     if let Some(n) = value.as_f64() {
    ///         numbers.push((key.to_owned(), n));
    ///     }
    /// });
    /// // The battery did not change.
    /// assert_eq!(numbers, [("power_income".to_owned(), 120.0)]);
    /// assert_eq!(record.country, "AT");
    /// ```
    pub fn apply_each(
        &mut self,
        update: &Update,
        now: Timestamp,
        mut changed: impl FnMut(&str, &Value),
    ) {
        for (key, value) in update.iter() {
            if self.set(key, value) {
                changed(key, value);
            }
        }
        self.last_status_update = now;
    }

    /// Sets one field from its canonical value; whether it changed. Values of the wrong type (which
    /// [`Update`] never holds) and reserved keys are ignored.
    fn set(&mut self, key: &str, value: &Value) -> bool {
        if let Some(changed) = self.set_known(key, value) {
            return changed;
        }
        match self.extra.get_mut(key) {
            Some(old) if old == value => false,
            Some(old) => {
                old.clone_from(value);
                true
            }
            None => {
                self.extra.insert(key.to_owned(), value.clone());
                true
            }
        }
    }

    /// A field by name (`serial_number`, known fields, server fields, extras). `None` if missing or
    /// null. Timestamps are their RFC 3339 text; numbers of extra fields are `f64`.
    ///
    /// ```
    /// use smart_proto::{FieldValue, Record, Serial, Timestamp};
    ///
    /// let mut record = Record::new(Serial::new("0001").unwrap(), "EET", Timestamp::UNIX_EPOCH);
    /// record.extra.insert("charging".into(), serde_json::json!(true));
    /// assert_eq!(record.get("serial_number"), Some(FieldValue::Str("0001")));
    /// assert_eq!(record.get("pv_connectors"), Some(FieldValue::Num(1.0)));
    /// assert_eq!(record.get("last_status_update"), Some(FieldValue::Str("1970-01-01T00:00:00.000000Z")));
    /// assert_eq!(record.get("charging"), Some(FieldValue::Bool(true)));
    /// assert_eq!(record.get("no_such_field"), None);
    /// ```
    pub fn get(&self, field: &str) -> Option<FieldValue<'_>> {
        if let Some(known) = self.get_known(field) {
            return known;
        }
        let value = match self.extra.get(field)? {
            Value::Null => return None,
            Value::Bool(b) => FieldValue::Bool(*b),
            Value::Number(n) => FieldValue::Num(n.as_f64()?),
            Value::String(s) => FieldValue::Str(s),
            other @ (Value::Array(_) | Value::Object(_)) => FieldValue::Other(other),
        };
        Some(value)
    }

    /// Visits every field in the written order.
    fn try_for_each_field<E>(
        &self,
        mut visit: impl FnMut(&str, FieldRef<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        self.try_for_each_known(&mut visit)?;
        for (key, value) in self.extras() {
            visit(key, FieldRef::Json(value))?;
        }
        Ok(())
    }
    /// Extra fields that do not shadow a known one.
    pub(crate) fn extras(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.extra
            .iter()
            .filter(|(key, _)| FieldKind::of(key) == FieldKind::Extra)
    }

    /// All fields as a JSON object. The keys come in `serde_json`'s map order: the order of §6 if its
    /// `preserve_order` feature is on, key order otherwise; [`Record::write_json`] always writes §6 order.
    ///
    /// ```
    /// use smart_proto::{Record, Serial, Timestamp};
    ///
    /// let record = Record::new(Serial::new("0001").unwrap(), "EET", Timestamp::UNIX_EPOCH);
    /// let map = record.to_map();
    /// assert_eq!(map.len(), 16);
    /// assert_eq!(map["pv_connectors"], 1);
    /// assert_eq!(map["battery"], serde_json::Value::Null);
    /// ```
    pub fn to_map(&self) -> Map<String, Value> {
        let mut map = Map::new();
        let _ = self.try_for_each_field(|key, value| {
            map.insert(key.to_owned(), value.to_value());
            Ok::<(), std::convert::Infallible>(())
        });
        map
    }
    /// Append the record as a compact JSON object: known fields in the order of §6, then extras in key
    /// order. Integral numbers are written as integers (`350`), absent numbers as `null`.
    ///
    /// ```
    /// use smart_proto::{Record, Serial, Timestamp};
    ///
    /// let mut record = Record::new(Serial::new("0001").unwrap(), "EET", Timestamp::UNIX_EPOCH);
    /// record.battery = Some(350.0);
    /// record.country = "A\"T".into();
    /// let mut out = String::new();
    /// record.write_json(&mut out);
    /// assert!(out.contains(r#""country":"A\"T""#));
    /// assert!(out.contains(r#""battery":350,"#));
    /// assert_eq!(out, serde_json::to_string(&record).unwrap());
    /// ```
    pub fn write_json(&self, out: &mut String) {
        let mut bytes = Vec::with_capacity(512);
        self.write_json_bytes(&mut bytes);
        // Always UTF-8 (the record's strings are, and so is what is written around them); the slow
        // path is still right.
        if let Ok(text) = std::str::from_utf8(&bytes) {
            out.push_str(text);
            return;
        }
        out.push('{');
        let mut first = true;
        let _ = self.try_for_each_field(|key, value| {
            write_field(out, &mut first, key, value);
            Ok::<(), std::convert::Infallible>(())
        });
        out.push('}');
    }

    /// [`Record::write_json`], with `null` for each of `keys` (in ascending order) that is not one of
    /// the record's extra fields, merged into the extras in key order. Keys that name a known field are
    /// skipped. This is how a record is written in an INIT list (PROTOCOL.md §7), `keys` being the
    /// union of the list's extra keys ([`extra_keys`](crate::extra_keys)).
    ///
    /// ```
    /// use smart_proto::{Record, Serial, Timestamp};
    ///
    /// let mut record = Record::new(Serial::new("0001")?, "EET", Timestamp::UNIX_EPOCH);
    /// record.extra.insert("b".into(), 2.into());
    /// let mut out = String::new();
    /// record.write_json_padded(["a", "b", "battery", "c"], &mut out);
    /// assert!(out.ends_with(r#""online":false,"a":null,"b":2,"c":null}"#), "{out}");
    /// # Ok::<(), smart_proto::Error>(())
    /// ```
    pub fn write_json_padded<K: AsRef<str>>(
        &self,
        keys: impl IntoIterator<Item = K>,
        out: &mut String,
    ) {
        out.push('{');
        let mut first = true;
        let _ = self.try_for_each_known(|key, value| {
            write_field(out, &mut first, key, value);
            Ok::<(), std::convert::Infallible>(())
        });
        let mut pads = keys.into_iter().peekable();
        let mut last_pad: Option<K> = None;
        let mut pad = |out: &mut String, first: &mut bool, key: K| {
            let name = key.as_ref();
            let repeated = last_pad.as_ref().is_some_and(|last| last.as_ref() == name);
            if !repeated
                && FieldKind::of(name) == FieldKind::Extra
                && !self.extra.contains_key(name)
            {
                write_field(out, first, name, FieldRef::OptStr(None));
            }
            last_pad = Some(key);
        };
        for (key, value) in self.extras() {
            while let Some(key) = pads.next_if(|k| k.as_ref() < key.as_str()) {
                pad(out, &mut first, key);
            }
            write_field(out, &mut first, key, FieldRef::Json(value));
        }
        for key in pads {
            pad(out, &mut first, key);
        }
        out.push('}');
    }

    /// Whether every one of `keys` is an extra field of this record, so that [`Record::write_json`]
    /// already writes what [`Record::write_json_padded`] would.
    ///
    /// ```
    /// use smart_proto::{Record, Serial, Timestamp};
    ///
    /// let mut record = Record::new(Serial::new("0001")?, "EET", Timestamp::UNIX_EPOCH);
    /// record.extra.insert("b".into(), 2.into());
    /// assert!(record.has_extras(["b"]));
    /// assert!(!record.has_extras(["a", "b"]));
    /// # Ok::<(), smart_proto::Error>(())
    /// ```
    pub fn has_extras<K: AsRef<str>>(&self, keys: impl IntoIterator<Item = K>) -> bool {
        keys.into_iter().all(|key| {
            let key = key.as_ref();
            FieldKind::of(key) == FieldKind::Extra && self.extra.contains_key(key)
        })
    }

    /// The JSON text of [`Record::write_json`].
    ///
    /// ```
    /// use smart_proto::{Record, Serial, Timestamp};
    ///
    /// let record = Record::new(Serial::new("0001").unwrap(), "EET", Timestamp::UNIX_EPOCH);
    /// assert!(record.to_json().starts_with(r#"{"serial_number":"0001","software_version":"","#));
    /// ```
    pub fn to_json(&self) -> String {
        let mut s = String::new();
        self.write_json(&mut s);
        s
    }

    /// Read a record back from its JSON object (storage, clients). `serial_number` and the server fields
    /// (`owner`, `manufacturing_date`, `last_status_update`, `online`) must be present; known device
    /// fields are optional (defaults as in [`Record::new`]) and coerced as in
    /// [`Update::from_normalized`]; other keys become extra fields. Errors are [`Error::Record`].
    ///
    /// ```
    /// use serde_json::json;
    /// use smart_proto::Record;
    ///
    /// let map = json!({
    ///     "serial_number": "0004", "owner": "EET", "online": true, "battery": 144.0,
    ///     "manufacturing_date": "2024-03-11T00:43:33.256667Z",
    ///     "last_status_update": "2024-03-11T00:46:52.690962Z",
    /// });
    /// let serde_json::Value::Object(map) = map else { unreachable!() };
    /// let record = Record::from_map(map).unwrap();
    /// assert_eq!(record.battery, Some(144.0));
    /// assert_eq!(record.solmate_version, "v1");
    ///
    /// let err = Record::from_map(serde_json::Map::new()).unwrap_err();
    /// assert_eq!(err.to_string(), "bad stored record: missing \"serial_number\"");
    /// ```
    pub fn from_map(mut map: Map<String, Value>) -> Result<Record> {
        fn take(map: &mut Map<String, Value>, key: &str) -> Result<Value> {
            map.remove(key)
                .ok_or_else(|| Error::Record(format!("missing {key:?}")))
        }
        fn wrong(key: &str, expected: &str, got: &Value) -> Error {
            Error::Record(format!(
                "{key:?} must be {expected}, got {}",
                quote(&got.to_string())
            ))
        }
        fn take_string(map: &mut Map<String, Value>, key: &str) -> Result<String> {
            match take(map, key)? {
                Value::String(s) => Ok(s),
                other => Err(wrong(key, "a string", &other)),
            }
        }
        fn take_timestamp(map: &mut Map<String, Value>, key: &str) -> Result<Timestamp> {
            let text = take_string(map, key)?;
            Timestamp::parse(&text).map_err(|e| Error::Record(format!("{key:?}: {e}")))
        }

        let serial = take_string(&mut map, "serial_number")?;
        let serial =
            Serial::new(&serial).map_err(|e| Error::Record(format!("\"serial_number\": {e}")))?;
        let owner = take_string(&mut map, "owner")?;
        let manufacturing_date = take_timestamp(&mut map, "manufacturing_date")?;
        let last_status_update = take_timestamp(&mut map, "last_status_update")?;
        let online = match take(&mut map, "online")? {
            Value::Bool(b) => b,
            other => return Err(wrong("online", "a boolean", &other)),
        };

        let mut record = Record::new(serial, owner, manufacturing_date);
        record.last_status_update = last_status_update;
        record.online = online;
        let fields =
            Update::coerce(map, Source::Stored).map_err(|e| Error::Record(e.to_string()))?;
        for (key, value) in fields.iter() {
            record.set(key, value);
        }
        Ok(record)
    }

    /// Read a record back from JSON text, as written by [`Record::to_json`]: the same record, or the same
    /// error, as [`Record::from_map`] of the text's JSON object (duplicate keys: the last one counts).
    ///
    /// Records as [`Record::to_json`] writes them are read straight into the record's fields, without
    /// building the map; any other text (a value that needs coercing or is refused, a repeated key, a
    /// missing server field, bad JSON) is read again the general way, which gives the result or the
    /// error.
    ///
    /// ```
    /// use smart_proto::{Record, Serial, Timestamp};
    ///
    /// let mut record = Record::new(Serial::new("0001").unwrap(), "EET", Timestamp::UNIX_EPOCH);
    /// record.extra.insert("meassuring".into(), serde_json::json!(true));
    /// assert_eq!(Record::from_json(&record.to_json()).unwrap(), record);
    /// assert!(Record::from_json("[1]").is_err());
    ///
    /// // Not as written, but accepted: numeric text is coerced, the last of repeated keys counts.
    /// let text = record.to_json().replacen(r#""battery":null"#, r#""battery":"35","battery":"36""#, 1);
    /// assert_eq!(Record::from_json(&text).unwrap().battery, Some(36.0));
    /// ```
    pub fn from_json(text: &str) -> Result<Record> {
        match read::canonical(text) {
            Some(record) => Ok(record),
            None => Record::from_json_slow(text),
        }
    }

    /// [`Record::from_json`] the general way: the text's JSON object as a map, then [`Record::from_map`].
    fn from_json_slow(text: &str) -> Result<Record> {
        let map: Map<String, Value> = serde_json::from_str(text)
            .map_err(|e| Error::Record(format!("not a JSON object: {e}")))?;
        Record::from_map(map)
    }
}

/// The same JSON as [`Record::write_json`].
impl Serialize for Record {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map =
            serializer.serialize_map(Some(Record::FIELDS.len() + self.extras().count()))?;
        self.try_for_each_field(|key, value| map.serialize_entry(key, &value))?;
        map.end()
    }
}

/// Read with [`Record::from_map`].
impl<'de> Deserialize<'de> for Record {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Record, D::Error> {
        let map = Map::<String, Value>::deserialize(deserializer)?;
        Record::from_map(map).map_err(de::Error::custom)
    }
}
