//! The fast path of [`Record::from_json`]: a stored record's JSON text read straight into the record's
//! fields, without the map of `Value`s that [`Record::from_map`] takes.
//!
//! It reads each value exactly as [`Record::from_map`] would take it — the same coercion
//! ([`accepts`], [`Source::Stored`]), the same parsers for the server fields — and gives up (returns
//! `None`, and the caller reads the text the general way) on anything else: a value `from_map` would
//! refuse, a repeated key (the map keeps the last, and the first may be the wrong one), a missing server
//! field, text that is not one JSON object. So whenever it returns a record, `from_map` of the text's
//! map would have returned the same record; every error comes from the general path.

use std::collections::btree_map::Entry;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer as _, MapAccess, Visitor};
use serde_json::Value;

use super::field::FieldKind;
use super::update::{Source, accepts};
use super::{Known, Record, Timestamp};
use crate::Serial;

/// The set of known fields read so far, one bit per [`Known`] field.
type FieldSet = u64;

const _: () = assert!(Record::FIELDS.len() <= FieldSet::BITS as usize);

/// The fields that [`Record::from_map`] requires (the server's): the reserved ones of the table.
const REQUIRED: FieldSet = {
    let mut set = 0;
    let mut i = 0;
    while i < Known::ALL.len() {
        if Known::ALL[i].is_reserved() {
            set |= bit(Known::ALL[i]);
        }
        i += 1;
    }
    set
};

const fn bit(field: Known) -> FieldSet {
    1 << field as u32
}

/// The record of a JSON text as [`Record::to_json`] writes it (in any key order, with any spacing), or
/// `None` if the text needs the general path of [`Record::from_json`].
pub(super) fn canonical(text: &str) -> Option<Record> {
    // A placeholder until the text's own serial is read (it must be).
    let blank = Record::new(Serial::new("0").ok()?, String::new(), Timestamp::UNIX_EPOCH);
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let record = deserializer.deserialize_map(Fields(blank)).ok()?;
    // Only whitespace may follow, as for `serde_json::from_str`.
    deserializer.end().ok()?;
    Some(record)
}

/// The error that makes [`canonical`] give up (its text is never shown).
fn give_up<E: de::Error>() -> E {
    E::custom("not a canonical record")
}

/// Reads the fields of a JSON object into the record it holds.
struct Fields(Record);

impl<'de> Visitor<'de> for Fields {
    type Value = Record;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a stored record")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Record, A::Error> {
        let Fields(mut record) = self;
        let mut read: FieldSet = 0;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            match key {
                Key::Known(field) => {
                    if read & bit(field) != 0 || !record.read_known(field, &mut map)? {
                        return Err(give_up());
                    }
                    read |= bit(field);
                }
                Key::Extra(name) => match record.extra.entry(name) {
                    Entry::Vacant(slot) => {
                        slot.insert(map.next_value()?);
                    }
                    Entry::Occupied(_) => return Err(give_up()),
                },
            }
        }
        if read & REQUIRED != REQUIRED {
            return Err(give_up());
        }
        Ok(record)
    }
}

/// A key of the record's object: a known field, or the name of an extra one.
enum Key {
    Known(Known),
    Extra(String),
}

/// Reads a key, borrowing it from the text when it has no escapes (only extras' names are copied).
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Key, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
        Ok(Known::named(key).map_or_else(|| Key::Extra(key.to_owned()), Key::Known))
    }
}

/// A string value, turned into `T` by a parser while it is borrowed (`None` if it refuses it); any other
/// value is an error.
struct ParsedStr<F>(F);

impl<'de, T, F: FnOnce(&str) -> Option<T>> DeserializeSeed<'de> for ParsedStr<F> {
    type Value = Option<T>;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Option<T>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<T, F: FnOnce(&str) -> Option<T>> Visitor<'_> for ParsedStr<F> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Option<T>, E> {
        Ok((self.0)(text))
    }
}

/// The Rust type of a known field, read from a stored record as [`Record::from_map`] takes it.
pub(super) trait Stored {
    /// Reads the next value of `map` into `self`, as a field of `kind`: `false` if `from_map` would not
    /// take the value as it is.
    #[inline]
    fn read<'de, A: MapAccess<'de>>(
        &mut self,
        kind: FieldKind,
        map: &mut A,
    ) -> Result<bool, A::Error> {
        let mut value: Value = map.next_value()?;
        Ok(accepts(kind, &mut value, Source::Stored) && self.take(value))
    }

    /// Takes a canonical value of its type (what `from_map` would set it from): `false`, and `self`
    /// untouched, for a value of another type.
    fn take(&mut self, value: Value) -> bool;
}

impl Stored for String {
    #[inline]
    fn take(&mut self, value: Value) -> bool {
        match value {
            Value::String(s) => {
                *self = s;
                true
            }
            _ => false,
        }
    }
}

impl Stored for Option<String> {
    #[inline]
    fn take(&mut self, value: Value) -> bool {
        match value {
            Value::String(s) => *self = Some(s),
            Value::Null => *self = None,
            _ => return false,
        }
        true
    }
}

impl Stored for Option<f64> {
    #[inline]
    fn take(&mut self, value: Value) -> bool {
        match value {
            Value::Null => *self = None,
            Value::Number(n) => match n.as_f64() {
                Some(x) => *self = Some(x),
                None => return false,
            },
            _ => return false,
        }
        true
    }
}

impl Stored for i64 {
    #[inline]
    fn take(&mut self, value: Value) -> bool {
        match value.as_i64() {
            Some(n) => {
                *self = n;
                true
            }
            None => false,
        }
    }
}

impl Stored for bool {
    #[inline]
    fn take(&mut self, value: Value) -> bool {
        match value {
            Value::Bool(b) => {
                *self = b;
                true
            }
            _ => false,
        }
    }
}

/// Stores the parsed value, if the parser took it.
fn put<T>(slot: &mut T, parsed: Option<T>) -> bool {
    parsed.map(|value| *slot = value).is_some()
}

/// `serial_number`: a string that is a valid serial.
impl Stored for Serial {
    #[inline]
    fn read<'de, A: MapAccess<'de>>(
        &mut self,
        _: FieldKind,
        map: &mut A,
    ) -> Result<bool, A::Error> {
        let serial = map.next_value_seed(ParsedStr(|text: &str| Serial::new(text).ok()))?;
        Ok(put(self, serial))
    }

    fn take(&mut self, value: Value) -> bool {
        put(self, value.as_str().and_then(|text| Serial::new(text).ok()))
    }
}

/// The server's timestamps: a string that is a valid timestamp.
impl Stored for Timestamp {
    #[inline]
    fn read<'de, A: MapAccess<'de>>(
        &mut self,
        _: FieldKind,
        map: &mut A,
    ) -> Result<bool, A::Error> {
        let time = map.next_value_seed(ParsedStr(|text: &str| Timestamp::parse(text).ok()))?;
        Ok(put(self, time))
    }

    fn take(&mut self, value: Value) -> bool {
        put(
            self,
            value.as_str().and_then(|text| Timestamp::parse(text).ok()),
        )
    }
}

#[cfg(test)]
mod tests;
