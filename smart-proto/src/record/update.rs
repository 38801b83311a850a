//! [`Update`]: the type-checked fields of one device message.

use std::borrow::Cow;
use std::fmt;
use std::sync::OnceLock;

use serde_json::{Map, Value};

use super::field::FieldKind;
use super::number::is_connector_count;
use super::quote;
use crate::{Error, Normalized, Result};

/// One field of an update: its name (the crate's own copy for known fields, so that they cost no
/// allocation) and its value.
pub(super) type Field = (Cow<'static, str>, Value);

/// The normalized, type-checked fields of one device message: known fields coerced to their type
/// (numbers from numeric strings, postcode from numbers, integral `pv_connectors`), others kept as sent.
///
/// ```
/// use smart_proto::{Serial, Update, normalize, parse_body};
///
/// let serial = Serial::new("0001").unwrap();
/// let body = parse_body("{'_battery': ' 12.5 ', 'pv_connectors': 2.0, 'charging': False}").unwrap();
/// let update = Update::from_normalized(normalize(body, &serial).unwrap()).unwrap();
/// assert_eq!(
///     serde_json::Value::Object(update.as_map().clone()).to_string(),
///     r#"{"battery":12.5,"charging":false,"pv_connectors":2}"#
/// );
/// ```
#[derive(Clone, Default)]
pub struct Update {
    /// In key order, names unique. A list rather than a map: a typical update has a few fields, and
    /// building and dropping a map for them would cost more than the parse.
    fields: Vec<Field>,
    /// The fields as a map, built on the first [`Update::as_map`].
    map: OnceLock<Map<String, Value>>,
}

impl Update {
    /// Type-check and coerce a normalized body. Any known field of the wrong type fails the whole
    /// update with [`Error::FieldType`]. The rules, per field:
    ///
    /// - `software_version`, `country`, `solmate_version`: a string.
    /// - `postcode`: a string, or an integral number, which becomes its decimal text (`7445` → `"7445"`).
    /// - `power_income`, `power_inject`, `power_consumption`, `battery`, `capacity`: a number, `null`, or
    ///   a string holding a number (`"357"`; surrounding whitespace is ignored; `"inf"` and `"NaN"` are not
    ///   numbers). Integral values are kept as integers (`350`, not `350.0`).
    /// - `pv_connectors`: an integer from 0 to 2^53−1, or an integral float (`2.0` → `2`); `null` and
    ///   negative counts are type errors too.
    /// - `local_time`: a string or `null`.
    /// - any other field: kept as sent.
    ///
    /// ```
    /// use smart_proto::{Error, Serial, Update, normalize, parse_body};
    ///
    /// let serial = Serial::new("0001").unwrap();
    /// let body = parse_body(r#"{"battery": "full"}"#).unwrap();
    /// let err = Update::from_normalized(normalize(body, &serial).unwrap()).unwrap_err();
    /// assert!(matches!(err, Error::FieldType { .. }));
    /// assert_eq!(err.to_string(), r#"field "battery" must be a number, numeric string or null, got "full""#);
    /// ```
    pub fn from_normalized(fields: Normalized) -> Result<Update> {
        Update::coerce(fields.into_map(), Source::Device)
    }

    /// Coerces each value in place; the text of a wrong value is only written for the error.
    pub(super) fn coerce(map: Map<String, Value>, source: Source) -> Result<Update> {
        let len = map.len();
        let mut update = Update::coerce_in_order(map, len, source)?;
        // In key order already, unless serde_json's `preserve_order` kept the order sent.
        if !update.fields.is_sorted_by(|a, b| a.0 < b.0) {
            update.fields.sort_by(|a, b| a.0.cmp(&b.0));
        }
        Ok(update)
    }

    /// Coerced fields, already in key order with unique names.
    #[inline]
    pub(super) fn from_sorted(fields: Vec<Field>) -> Update {
        Update {
            fields,
            map: OnceLock::new(),
        }
    }

    /// [`Update::coerce`] for normalized entries in any order, with unique keys.
    pub(crate) fn from_entries(mut entries: Vec<(String, Value)>) -> Result<Update> {
        // Sorted first, so that a type error names the first bad field in key order, as for a map.
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let len = entries.len();
        Update::coerce_in_order(entries, len, Source::Device)
    }

    fn coerce_in_order(
        entries: impl IntoIterator<Item = (String, Value)>,
        len: usize,
        source: Source,
    ) -> Result<Update> {
        let mut fields: Vec<Field> = Vec::with_capacity(len);
        for (key, mut value) in entries {
            let kind = FieldKind::of(&key);
            if kind == FieldKind::Reserved {
                // Normalization already removed these; a device may not set them in any case.
                continue;
            }
            if !accepts(kind, &mut value, source) {
                return Err(Error::FieldType {
                    field: quote(&key),
                    expected: kind.expected(),
                    got: quote(&value.to_string()),
                });
            }
            fields.push((Cow::Owned(key), value));
        }
        Ok(Update {
            fields,
            map: OnceLock::new(),
        })
    }

    /// The coerced fields as a map, in key order. Built on first use (the server reads the fields
    /// with [`Update::iter`] and never needs it).
    ///
    /// ```
    /// use smart_proto::{Serial, Update, normalize, parse_body};
    ///
    /// let serial = Serial::new("0001").unwrap();
    /// let body = parse_body(r#"{"postcode": 8020}"#).unwrap();
    /// let update = Update::from_normalized(normalize(body, &serial).unwrap()).unwrap();
    /// assert_eq!(update.as_map()["postcode"], "8020");
    /// ```
    pub fn as_map(&self) -> &Map<String, Value> {
        self.map.get_or_init(|| {
            self.iter()
                .map(|(key, value)| (key.to_owned(), value.clone()))
                .collect()
        })
    }

    /// The coerced fields, in key order.
    ///
    /// ```
    /// use smart_proto::{Serial, Update, normalize, parse_body};
    ///
    /// let serial = Serial::new("0001").unwrap();
    /// let body = parse_body(r#"{"power_inject": "357", "battery": 92.5}"#).unwrap();
    /// let update = Update::from_normalized(normalize(body, &serial).unwrap()).unwrap();
    /// let fields: Vec<(&str, String)> = update.iter().map(|(k, v)| (k, v.to_string())).collect();
    /// assert_eq!(fields, [("battery", "92.5".to_owned()), ("power_inject", "357".to_owned())]);
    /// ```
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Value)> + '_ {
        self.fields.iter().map(|(key, value)| (key.as_ref(), value))
    }

    /// One field's coerced value.
    ///
    /// ```
    /// use smart_proto::{Serial, Update, normalize, parse_body};
    ///
    /// let serial = Serial::new("0001").unwrap();
    /// let body = parse_body(r#"{"battery": "92.5"}"#).unwrap();
    /// let update = Update::from_normalized(normalize(body, &serial).unwrap()).unwrap();
    /// assert_eq!(update.get("battery"), Some(&serde_json::json!(92.5)));
    /// assert_eq!(update.get("country"), None);
    /// ```
    pub fn get(&self, key: &str) -> Option<&Value> {
        let at = self
            .fields
            .binary_search_by(|(name, _)| name.as_ref().cmp(key))
            .ok()?;
        Some(&self.fields[at].1)
    }

    /// The fields that are not known ones (the record's extras), in key order.
    pub(crate) fn extras(&self) -> impl Iterator<Item = (&str, &Value)> + '_ {
        self.iter()
            .filter(|(key, _)| FieldKind::of(key) == FieldKind::Extra)
    }

    /// Number of fields.
    ///
    /// ```
    /// use smart_proto::{Serial, Update, normalize, parse_body};
    ///
    /// let serial = Serial::new("0001").unwrap();
    /// let body = parse_body(r#"{"battery": 1, "country": "AT"}"#).unwrap();
    /// assert_eq!(Update::from_normalized(normalize(body, &serial).unwrap()).unwrap().len(), 2);
    /// ```
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// `{}`: a sign of life that changes nothing.
    ///
    /// ```
    /// use smart_proto::Update;
    /// assert!(Update::default().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

/// Whether a field of `kind` from `source` may hold `value`, which is coerced to its canonical form in
/// place (left untouched if not).
#[inline]
pub(super) fn accepts(kind: FieldKind, value: &mut Value, source: Source) -> bool {
    // A device's count of connectors is never negative (stored records are read as they are).
    kind.coerce(value)
        && (kind != FieldKind::Integer || source == Source::Stored || is_connector_count(value))
}

/// Where an update's fields come from: a device (every rule of PROTOCOL.md §6), or a stored record,
/// read as it was written even if a rule was added since.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    Device,
    Stored,
}

/// Equal when the fields are (whether or not either map view was built).
impl PartialEq for Update {
    fn eq(&self, other: &Update) -> bool {
        self.fields == other.fields
    }
}

/// Written like the map: `Update({"battery": Number(92.5)})`.
impl fmt::Debug for Update {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Fields<'a>(&'a Update);
        impl fmt::Debug for Fields<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_map().entries(self.0.iter()).finish()
            }
        }
        f.debug_tuple("Update").field(&Fields(self)).finish()
    }
}
