//! What the history records of one accepted message: its numeric changes, at its receive time.
//!
//! Two ways to the same samples: the writer takes them from the fields an update changed
//! ([`from_changed`]); the replay of the write-ahead log after a crash compares each logged record with
//! the device's previous one ([`between`]). A property test keeps the two equal.

use std::borrow::Cow;

use serde_json::{Map, Value};
use smart_proto::{FieldValue, Record, Serial, Timestamp};

/// A field's name: the known ones borrowed from the field table, extras owned.
pub(crate) type FieldName = Cow<'static, str>;

/// One accepted message's numeric changes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Change {
    pub serial: Serial,
    /// Receive time (the record's `last_status_update`), ms since the Unix epoch.
    pub ts_ms: i64,
    /// Every numeric field the message changed, and its new value.
    pub values: Vec<(FieldName, f64)>,
}

/// Milliseconds since the Unix epoch of `ts`.
pub(crate) fn millis(ts: Timestamp) -> i64 {
    ts.as_unix_micros().div_euclid(1000)
}

/// The history's name of a field: the known ones borrowed from the field table.
pub(crate) fn name(key: &str) -> FieldName {
    match Record::FIELDS.iter().find(|f| **f == key) {
        Some(known) => Cow::Borrowed(known),
        None => Cow::Owned(key.to_owned()),
    }
}

/// The numeric entries of the fields `Record::apply` reported changed.
pub(crate) fn from_changed(changed: &Map<String, Value>) -> Vec<(FieldName, f64)> {
    changed
        .iter()
        .filter_map(|(key, value)| Some((name(key), value.as_number()?.as_f64()?)))
        .collect()
}

/// The numeric fields `next` holds with another value than `prev` (every numeric field of a new
/// device): the same as [`from_changed`] of the update that made `next` from `prev`.
pub(crate) fn between(prev: Option<&Record>, next: &Record) -> Vec<(FieldName, f64)> {
    let mut out = Vec::new();
    for field in Record::FIELDS {
        if let Some(FieldValue::Num(v)) = next.get(field)
            && prev.is_none_or(|p| p.get(field) != Some(FieldValue::Num(v)))
        {
            out.push((Cow::Borrowed(field), v));
        }
    }
    for (key, value) in &next.extra {
        if let Some(v) = value.as_number().and_then(serde_json::Number::as_f64)
            && prev.is_none_or(|p| p.extra.get(key) != Some(value))
        {
            out.push((Cow::Owned(key.clone()), v));
        }
    }
    // In the order `from_changed` gives them: by name.
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use smart_proto::{Update, normalize, parse_body};

    fn update(body: &str, serial: &Serial) -> Update {
        Update::from_normalized(normalize(parse_body(body).unwrap(), serial).unwrap()).unwrap()
    }

    fn sorted(mut v: Vec<(FieldName, f64)>) -> Vec<(FieldName, f64)> {
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    #[test]
    fn a_new_device_records_every_numeric_field() {
        let serial = Serial::new("0001").unwrap();
        let mut record = Record::new(serial.clone(), "EET", Timestamp::UNIX_EPOCH);
        record.apply(
            &update(
                r#"{"battery": 50, "country": "AT", "x": 2.5, "y": "text"}"#,
                &serial,
            ),
            Timestamp::UNIX_EPOCH,
        );
        let names: Vec<_> = between(None, &record)
            .into_iter()
            .map(|(n, _)| n.into_owned())
            .collect();
        // pv_connectors has its default, 1: a number too.
        assert_eq!(names, ["battery", "pv_connectors", "x"]);
    }

    fn body() -> impl Strategy<Value = String> {
        let value = prop_oneof![
            (0_i32..5).prop_map(|n| n.to_string()),
            (0_i32..5).prop_map(|n| format!("{n}.5")),
            Just("null".to_owned()),
            Just("\"text\"".to_owned()),
            Just("-0.0".to_owned()),
            Just("1.0".to_owned()),
            Just("true".to_owned()),
        ];
        let key = prop_oneof![
            Just("battery"),
            Just("power_income"),
            Just("capacity"),
            Just("pv_connectors"),
            Just("country"),
            Just("extra_a"),
            Just("extra_b"),
        ];
        proptest::collection::vec((key, value), 0..5).prop_map(|pairs| {
            let inner: Vec<String> = pairs.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
            format!("{{{}}}", inner.join(", "))
        })
    }

    proptest! {
        /// The writer's samples (from what `apply` reports changed) are the replay's (from comparing
        /// records), for any sequence of updates.
        #[test]
        fn the_writer_and_the_replay_see_the_same_changes(bodies in proptest::collection::vec(body(), 1..8)) {
            let serial = Serial::new("0001").unwrap();
            let mut prev: Option<Record> = None;
            for body in bodies {
                let Ok(parsed) = parse_body(&body) else { continue };
                let Ok(normalized) = normalize(parsed, &serial) else { continue };
                let Ok(update) = Update::from_normalized(normalized) else { continue };
                let mut next = prev.clone().unwrap_or_else(|| Record::new(serial.clone(), "EET", Timestamp::UNIX_EPOCH));
                let mut other = next.clone();
                let changed = next.apply(&update, Timestamp::UNIX_EPOCH);
                let live = sorted(from_changed(&changed));
                // The writer's other way, without dashboards: one by one.
                let mut each = Vec::new();
                other.apply_each(&update, Timestamp::UNIX_EPOCH, |key, value| {
                    if let Some(n) = value.as_f64() {
                        each.push((name(key), n));
                    }
                });
                prop_assert_eq!(&sorted(each), &live);
                let replayed = between(prev.as_ref(), &next);
                if prev.is_some() {
                    prop_assert_eq!(&live, &replayed, "{}", body);
                } else {
                    // A new device: the replay also records the defaults the update did not touch.
                    prop_assert!(live.iter().all(|s| replayed.contains(s)), "{}", body);
                }
                prev = Some(next);
            }
        }
    }
}
