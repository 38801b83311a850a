//! Field kinds and coercion (PROTOCOL.md §6), borrowed views of field values, and how a field is
//! written as JSON.

use std::fmt::Write as _;

use serde::{Serialize, Serializer};
use serde_json::Value;

use super::Timestamp;
use super::number::{integral, is_canonical_number, number_value, parse_number, postcode_text};
use crate::Serial;

/// What a key holds, per the table of PROTOCOL.md §6.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldKind {
    Text,
    Postcode,
    Number,
    Integer,
    OptionalText,
    /// `serial_number` and the server fields: never taken from a device.
    Reserved,
    Extra,
}

impl FieldKind {
    /// The kind of any key: [`FieldKind::Extra`] for keys that are not known fields.
    #[inline]
    pub(super) fn of(key: &str) -> FieldKind {
        FieldKind::named(key).map_or(FieldKind::Extra, |(_, kind)| kind)
    }

    pub(super) fn expected(self) -> &'static str {
        match self {
            FieldKind::Text => "a string",
            FieldKind::Postcode => "a string or an integer",
            FieldKind::Number => "a number, numeric string or null",
            FieldKind::Integer => "an integer from 0 to 9007199254740991",
            FieldKind::OptionalText => "a string or null",
            FieldKind::Reserved | FieldKind::Extra => "anything",
        }
    }

    /// Turn `value` into its canonical type in place; `false` (and `value` untouched) if it has the
    /// wrong type. Values already in canonical form, the common case, are left as they are.
    #[allow(clippy::inline_always, reason = "hot path, measured")]
    #[inline(always)]
    pub(super) fn coerce(self, value: &mut Value) -> bool {
        match (self, &*value) {
            (FieldKind::Text | FieldKind::Postcode, Value::String(_))
            | (FieldKind::OptionalText, Value::String(_) | Value::Null)
            | (FieldKind::Number, Value::Null)
            | (FieldKind::Reserved | FieldKind::Extra, _) => true,
            (FieldKind::Number, Value::Number(n)) if is_canonical_number(n) => true,
            (FieldKind::Integer, Value::Number(n)) if n.is_i64() => true,
            _ => self.coerce_changing(value),
        }
    }

    /// The part of [`FieldKind::coerce`] that changes the value or refuses it.
    #[inline(never)]
    fn coerce_changing(self, value: &mut Value) -> bool {
        let canonical = match (self, &*value) {
            (FieldKind::Postcode, Value::Number(n)) => postcode_text(n).map(Value::String),
            (FieldKind::Number, Value::Number(n)) => n.as_f64().map(|x| number_value(x + 0.0)),
            (FieldKind::Number, Value::String(s)) => parse_number(s).map(number_value),
            // Past `i64`, only an integral float is accepted.
            (FieldKind::Integer, Value::Number(n)) => n
                .as_f64()
                .filter(|_| n.is_f64())
                .and_then(integral)
                .map(Value::from),
            _ => None,
        };
        match canonical {
            Some(canonical) => {
                *value = canonical;
                true
            }
            None => false,
        }
    }
}

/// A borrowed view of one field's value, for queries ([`Record::get`](super::Record::get)).
///
/// ```
/// use smart_proto::{FieldValue, Record, Serial, Timestamp};
///
/// let mut record = Record::new(Serial::new("0001").unwrap(), "EET", Timestamp::UNIX_EPOCH);
/// record.battery = Some(92.5);
/// assert_eq!(record.get("battery"), Some(FieldValue::Num(92.5)));
/// assert_eq!(record.get("online"), Some(FieldValue::Bool(false)));
/// assert_eq!(record.get("power_inject"), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldValue<'a> {
    /// A string (timestamps are their RFC 3339 text).
    Str(&'a str),
    /// A number.
    Num(f64),
    /// A boolean.
    Bool(bool),
    /// A list or object (extra fields only).
    Other(&'a Value),
}

/// One field's value while a record is written out.
#[derive(Clone, Copy)]
pub(super) enum FieldRef<'a> {
    Str(&'a str),
    OptStr(Option<&'a str>),
    Num(Option<f64>),
    Int(i64),
    Bool(bool),
    Json(&'a Value),
}

impl Serialize for FieldRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match *self {
            FieldRef::Str(s) | FieldRef::OptStr(Some(s)) => serializer.serialize_str(s),
            FieldRef::OptStr(None) | FieldRef::Num(None) => serializer.serialize_none(),
            FieldRef::Num(Some(x)) => match number_value(x) {
                Value::Number(n) => n.serialize(serializer),
                _ => serializer.serialize_none(),
            },
            FieldRef::Int(i) => serializer.serialize_i64(i),
            FieldRef::Bool(b) => serializer.serialize_bool(b),
            FieldRef::Json(v) => v.serialize(serializer),
        }
    }
}

impl FieldRef<'_> {
    pub(super) fn to_value(self) -> Value {
        match self {
            FieldRef::Str(s) | FieldRef::OptStr(Some(s)) => Value::String(s.to_owned()),
            FieldRef::OptStr(None) | FieldRef::Num(None) => Value::Null,
            FieldRef::Num(Some(x)) => number_value(x),
            FieldRef::Int(i) => Value::from(i),
            FieldRef::Bool(b) => Value::Bool(b),
            FieldRef::Json(v) => v.clone(),
        }
    }
}

/// `"key":value`, after a comma unless it is the `first` field: the same text as `serde_json`'s compact
/// writer, written straight into the `String` (no `io::Write` adapter, so nothing is validated again).
#[inline]
pub(super) fn write_field(out: &mut String, first: &mut bool, key: &str, value: FieldRef<'_>) {
    if !*first {
        out.push(',');
    }
    *first = false;
    crate::json::write_str(out, key);
    out.push(':');
    // Writing to a `String` cannot fail.
    match value {
        FieldRef::Str(s) | FieldRef::OptStr(Some(s)) => crate::json::write_str(out, s),
        FieldRef::OptStr(None) | FieldRef::Num(None) => out.push_str("null"),
        FieldRef::Num(Some(x)) => match number_value(x) {
            Value::Number(n) => {
                let _ = write!(out, "{n}");
            }
            _ => out.push_str("null"),
        },
        FieldRef::Int(i) => {
            let _ = write!(out, "{i}");
        }
        FieldRef::Bool(b) => out.push_str(if b { "true" } else { "false" }),
        // `Value`'s `Display` is `serde_json`'s compact writer.
        FieldRef::Json(v) => {
            let _ = write!(out, "{v}");
        }
    }
}

/// The Rust type of a known field, as the field table (`record_fields!` in `record/mod.rs`) uses it.
pub(super) trait Slot {
    /// The JSON type of its values, for [`super::Record::fields_json`].
    const JSON_TYPE: &'static str;
    /// Whether it may be `null`.
    const NULLABLE: bool;
    /// Its value while the record is written out.
    fn field_ref(&self) -> FieldRef<'_>;
    /// Its value for queries; `None` if null.
    fn field_value(&self) -> Option<FieldValue<'_>>;
    /// Set from a canonical value of its type: whether it changed. Values of another type are ignored,
    /// and so is every value for the types that only the server sets.
    fn set_from(&mut self, value: &Value) -> bool;
}

fn replace<T: PartialEq>(slot: &mut T, new: T) -> bool {
    let changed = *slot != new;
    *slot = new;
    changed
}

impl Slot for String {
    const JSON_TYPE: &'static str = "string";
    const NULLABLE: bool = false;
    #[inline]
    fn field_ref(&self) -> FieldRef<'_> {
        FieldRef::Str(self)
    }
    #[inline]
    fn field_value(&self) -> Option<FieldValue<'_>> {
        Some(FieldValue::Str(self))
    }
    #[inline]
    fn set_from(&mut self, value: &Value) -> bool {
        match value {
            Value::String(s) => replace(self, s.clone()),
            _ => false,
        }
    }
}

impl Slot for Option<String> {
    const JSON_TYPE: &'static str = "string";
    const NULLABLE: bool = true;
    #[inline]
    fn field_ref(&self) -> FieldRef<'_> {
        FieldRef::OptStr(self.as_deref())
    }
    #[inline]
    fn field_value(&self) -> Option<FieldValue<'_>> {
        self.as_deref().map(FieldValue::Str)
    }
    #[inline]
    fn set_from(&mut self, value: &Value) -> bool {
        match value {
            Value::String(s) => replace(self, Some(s.clone())),
            Value::Null => replace(self, None),
            _ => false,
        }
    }
}

impl Slot for Option<f64> {
    const JSON_TYPE: &'static str = "number";
    const NULLABLE: bool = true;
    #[inline]
    fn field_ref(&self) -> FieldRef<'_> {
        FieldRef::Num(*self)
    }
    #[inline]
    fn field_value(&self) -> Option<FieldValue<'_>> {
        self.map(FieldValue::Num)
    }
    #[inline]
    fn set_from(&mut self, value: &Value) -> bool {
        match value {
            Value::Null => replace(self, None),
            Value::Number(n) => n.as_f64().is_some_and(|x| replace(self, Some(x))),
            _ => false,
        }
    }
}

impl Slot for i64 {
    const JSON_TYPE: &'static str = "integer";
    const NULLABLE: bool = false;
    #[inline]
    fn field_ref(&self) -> FieldRef<'_> {
        FieldRef::Int(*self)
    }
    #[inline]
    fn field_value(&self) -> Option<FieldValue<'_>> {
        Some(FieldValue::Num(*self as f64))
    }
    #[inline]
    fn set_from(&mut self, value: &Value) -> bool {
        match value {
            Value::Number(n) => n.as_i64().is_some_and(|n| replace(self, n)),
            _ => false,
        }
    }
}

impl Slot for Serial {
    const JSON_TYPE: &'static str = "string";
    const NULLABLE: bool = false;
    #[inline]
    fn field_ref(&self) -> FieldRef<'_> {
        FieldRef::Str(self.as_str())
    }
    #[inline]
    fn field_value(&self) -> Option<FieldValue<'_>> {
        Some(FieldValue::Str(self.as_str()))
    }
    #[inline]
    fn set_from(&mut self, _: &Value) -> bool {
        false
    }
}

impl Slot for Timestamp {
    const JSON_TYPE: &'static str = "timestamp";
    const NULLABLE: bool = false;
    #[inline]
    fn field_ref(&self) -> FieldRef<'_> {
        FieldRef::Str(self.as_str())
    }
    #[inline]
    fn field_value(&self) -> Option<FieldValue<'_>> {
        Some(FieldValue::Str(self.as_str()))
    }
    #[inline]
    fn set_from(&mut self, _: &Value) -> bool {
        false
    }
}

impl Slot for bool {
    const JSON_TYPE: &'static str = "boolean";
    const NULLABLE: bool = false;
    #[inline]
    fn field_ref(&self) -> FieldRef<'_> {
        FieldRef::Bool(*self)
    }
    #[inline]
    fn field_value(&self) -> Option<FieldValue<'_>> {
        Some(FieldValue::Bool(*self))
    }
    #[inline]
    fn set_from(&mut self, _: &Value) -> bool {
        false
    }
}
