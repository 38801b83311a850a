//! What changed between two records of one device.

use std::convert::Infallible;

use serde_json::{Map, Value};

use super::Record;
use super::field::FieldRef;

impl Record {
    /// The fields of `self` whose value differs from `before`'s, as [`Record::to_map`] writes them,
    /// and always `last_status_update` (what a dashboard is told when a device's record changes
    /// from `before` to `self`). An extra that is `null` here and absent in `before` has not changed
    /// (a dashboard cannot tell them apart); an extra `before` has and `self` lacks is not listed.
    ///
    /// ```
    /// use smart_proto::{Record, Serial, Timestamp};
    ///
    /// let before = Record::new(Serial::new("0001").unwrap(), "EET", Timestamp::UNIX_EPOCH);
    /// let mut now = before.clone();
    /// now.battery = Some(0.5);
    /// now.extra.insert("mode".into(), serde_json::json!("eco"));
    /// now.extra.insert("unset".into(), serde_json::Value::Null);
    /// let changed = now.changed_since(&before);
    /// let keys: Vec<&str> = changed.keys().map(String::as_str).collect();
    /// assert_eq!(keys.len(), 3);
    /// assert!(keys.contains(&"battery") && keys.contains(&"mode"));
    /// assert!(keys.contains(&"last_status_update"));
    /// assert_eq!(changed["battery"], 0.5);
    /// assert_eq!(before.changed_since(&before).len(), 1);
    /// ```
    pub fn changed_since(&self, before: &Record) -> Map<String, Value> {
        let mut old = Vec::with_capacity(Record::FIELDS.len());
        let _ = before.try_for_each_known(|key, value| {
            old.push((key, value));
            Ok::<(), Infallible>(())
        });
        let mut out = Map::new();
        let mut at = 0;
        let _ = self.try_for_each_known(|key, value| {
            // Both visit the same fields in the same order; checked anyway.
            let same = old
                .get(at)
                .is_some_and(|&(name, was)| name == key && same(was, value));
            at += 1;
            if !same || key == "last_status_update" {
                out.insert(key.to_owned(), value.to_value());
            }
            Ok::<(), Infallible>(())
        });
        for (key, value) in self.extras() {
            let same = before
                .extra
                .get(key)
                .map_or(value.is_null(), |was| was == value);
            if !same {
                out.insert(key.clone(), value.clone());
            }
        }
        out
    }
}

/// Whether two values of one known field write the same JSON value.
fn same(a: FieldRef<'_>, b: FieldRef<'_>) -> bool {
    match (a, b) {
        (
            FieldRef::Str(a) | FieldRef::OptStr(Some(a)),
            FieldRef::Str(b) | FieldRef::OptStr(Some(b)),
        ) => a == b,
        (
            FieldRef::OptStr(None) | FieldRef::Num(None),
            FieldRef::OptStr(None) | FieldRef::Num(None),
        ) => true,
        (FieldRef::Int(a), FieldRef::Int(b)) => a == b,
        (FieldRef::Bool(a), FieldRef::Bool(b)) => a == b,
        (FieldRef::Json(a), FieldRef::Json(b)) => a == b,
        // Numbers (written as integers when integral) and mixed cases: as written.
        (a, b) => a.to_value() == b.to_value(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use crate::{Record, Serial, Timestamp};

    fn values() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            Just(json!(1)),
            Just(json!(1.5)),
            Just(json!("x")),
            Just(json!([1, {"a": null}])),
            Just(json!(true)),
        ]
    }

    prop_compose! {
        fn records()(
            battery in proptest::option::of(prop_oneof![Just(0.0), Just(0.5), Just(350.0)]),
            income in proptest::option::of(prop_oneof![Just(-1.0), Just(357.0)]),
            country in prop_oneof![Just("AT"), Just("DE")],
            connectors in 0i64..3,
            time in 0i64..3,
            extras in proptest::collection::btree_map(
                prop_oneof![Just("a"), Just("b"), Just("battery"), Just("online")],
                values(),
                0..4,
            ),
        ) -> Record {
            let at = Timestamp::from_unix_micros(time * 1_000_000);
            let mut record = Record::new(Serial::new("0001").unwrap(), "EET", Timestamp::UNIX_EPOCH);
            record.last_status_update = at;
            record.battery = battery;
            record.power_income = income;
            record.country = country.into();
            record.pv_connectors = connectors;
            for (key, value) in extras {
                record.extra.insert(key.into(), value);
            }
            record
        }
    }

    proptest! {
        /// The fields told are those whose JSON value differs (an absent extra counting as null).
        #[test]
        fn changed_fields_are_those_whose_json_differs(before in records(), now in records()) {
            let old = before.to_map();
            let naive: serde_json::Map<String, Value> = now
                .to_map()
                .into_iter()
                .filter(|(key, value)| {
                    key == "last_status_update" || old.get(key).unwrap_or(&Value::Null) != value
                })
                .collect();
            prop_assert_eq!(now.changed_since(&before), naive);
        }
    }
}
