//! Tests of records and updates (the modules' own pieces are tested beside them).

#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use serde_json::{Value, json};

use super::*;
use crate::Normalized;

fn serial() -> Serial {
    Serial::new("0001").unwrap()
}

fn update(value: Value) -> Result<Update> {
    let Value::Object(map) = value else {
        panic!("not an object")
    };
    Update::from_normalized(Normalized(map))
}

fn field_error(value: Value) -> String {
    update(value).unwrap_err().to_string()
}

#[test]
fn update_views_agree() {
    let u = update(json!({"power_inject": "357", "battery": 92.5, "zz": [1], "country": "AT"}))
        .unwrap();
    let listed: Vec<(&str, &Value)> = u.iter().collect();
    let mapped: Vec<(&str, &Value)> = u.as_map().iter().map(|(k, v)| (k.as_str(), v)).collect();
    assert_eq!(listed, mapped);
    assert_eq!(u.len(), 4);
    assert_eq!(u.get("power_inject"), Some(&json!(357)));
    assert_eq!(u.get("zz"), Some(&json!([1])));
    assert_eq!(u.get("nope"), None);
    // The cached map does not take part in equality.
    let fresh =
        update(json!({"power_inject": 357, "battery": 92.5, "zz": [1], "country": "AT"})).unwrap();
    assert_eq!(u, fresh);
    assert_ne!(u, Update::default());
    assert_eq!(
        format!("{:?}", update(json!({"battery": 1})).unwrap()),
        "Update({\"battery\": Number(1)})"
    );
    // Reserved keys are never kept, even when handed over directly.
    let u = update(json!({"online": true, "owner": "x", "battery": 1})).unwrap();
    assert_eq!(u.iter().map(|(k, _)| k).collect::<Vec<_>>(), ["battery"]);
}

#[test]
fn update_coerces_known_fields() {
    let u = update(json!({
        "software_version": "v8.6", "country": "DE", "solmate_version": "v2",
        "postcode": 7445, "power_income": "377", "power_inject": 336.0, "power_consumption": null,
        "battery": " 12.5 ", "capacity": 5_184_000, "pv_connectors": 2.0, "local_time": null,
        "meassuring": true, "nested": {"a": [1, 2.5]}
    }))
    .unwrap();
    assert_eq!(
        Value::Object(u.as_map().clone()),
        json!({
            "software_version": "v8.6", "country": "DE", "solmate_version": "v2",
            "postcode": "7445", "power_income": 377, "power_inject": 336, "power_consumption": null,
            "battery": 12.5, "capacity": 5_184_000, "pv_connectors": 2, "local_time": null,
            "meassuring": true, "nested": {"a": [1, 2.5]}
        })
    );
    assert!(u.as_map()["power_inject"].is_i64());
    assert_eq!(
        update(json!({"postcode": "8020"})).unwrap().as_map()["postcode"],
        "8020"
    );
    assert_eq!(
        update(json!({"postcode": 18_446_744_073_709_551_615_u64}))
            .unwrap()
            .as_map()["postcode"],
        "18446744073709551615"
    );
    assert_eq!(
        update(json!({"postcode": 1e20})).unwrap().as_map()["postcode"],
        "100000000000000000000"
    );
    assert_eq!(
        update(json!({"postcode": -0.0})).unwrap().as_map()["postcode"],
        "0"
    );
    assert_eq!(
        update(json!({"pv_connectors": 0})).unwrap().as_map()["pv_connectors"],
        0
    );
    // A device may not send a negative count, but a stored record is read as it was written.
    assert!(update(json!({"pv_connectors": -3})).is_err());
    let mut stored = Record::new(serial(), "EET", Timestamp::UNIX_EPOCH);
    stored.pv_connectors = -3;
    assert_eq!(Record::from_json(&stored.to_json()).unwrap(), stored);
    assert_eq!(
        update(json!({"local_time": "14:59"})).unwrap().as_map()["local_time"],
        "14:59"
    );
}

#[test]
fn update_rejects_wrong_types() {
    assert_eq!(
        field_error(json!({"battery": "full"})),
        r#"field "battery" must be a number, numeric string or null, got "full""#
    );
    assert_eq!(
        field_error(json!({"pv_connectors": true})),
        r#"field "pv_connectors" must be an integer from 0 to 9007199254740991, got true"#
    );
    assert_eq!(
        field_error(json!({"pv_connectors": 2.5})),
        r#"field "pv_connectors" must be an integer from 0 to 9007199254740991, got 2.5"#
    );
    assert_eq!(
        field_error(json!({"pv_connectors": null})),
        r#"field "pv_connectors" must be an integer from 0 to 9007199254740991, got null"#
    );
    assert_eq!(
        field_error(json!({"pv_connectors": "2"})),
        r#"field "pv_connectors" must be an integer from 0 to 9007199254740991, got "2""#
    );
    assert!(field_error(json!({"pv_connectors": 1e19})).contains("must be an integer"));
    assert!(field_error(json!({"pv_connectors": u64::MAX})).contains("must be an integer"));
    assert_eq!(
        field_error(json!({"postcode": 74.5})),
        r#"field "postcode" must be a string or an integer, got 74.5"#
    );
    assert_eq!(
        field_error(json!({"postcode": null})),
        r#"field "postcode" must be a string or an integer, got null"#
    );
    assert_eq!(
        field_error(json!({"country": 43})),
        r#"field "country" must be a string, got 43"#
    );
    assert_eq!(
        field_error(json!({"software_version": null})),
        r#"field "software_version" must be a string, got null"#
    );
    assert_eq!(
        field_error(json!({"local_time": 5})),
        r#"field "local_time" must be a string or null, got 5"#
    );
    assert_eq!(
        field_error(json!({"capacity": [1]})),
        r#"field "capacity" must be a number, numeric string or null, got [1]"#
    );
    assert_eq!(
        field_error(json!({"battery": "NaN"})),
        r#"field "battery" must be a number, numeric string or null, got "NaN""#
    );
    let long = field_error(json!({"battery": "x".repeat(500)}));
    assert!(long.len() < 200 && long.ends_with('…'), "{long}");
}

#[test]
fn update_drops_reserved_keys() {
    let u = update(json!({"serial_number": "0001", "online": true, "owner": "me", "battery": 1}))
        .unwrap();
    assert_eq!(u.len(), 1);
}

#[test]
fn apply_reports_changes_only() {
    let t0 = Timestamp::from_unix_micros(0);
    let t1 = Timestamp::from_unix_micros(1);
    let mut r = Record::new(serial(), "EET", t0);
    let changed = r.apply(
        &update(json!({"battery": 350, "solmate_version": "v1", "charging": false})).unwrap(),
        t1,
    );
    assert_eq!(
        Value::Object(changed),
        json!({"battery": 350, "charging": false, "last_status_update": "1970-01-01T00:00:00.000001Z"})
    );
    assert_eq!(r.last_status_update, t1);
    assert_eq!(r.manufacturing_date, t0);
    let changed = r.apply(
        &update(json!({"battery": "350", "charging": false, "local_time": null})).unwrap(),
        t1,
    );
    assert_eq!(
        Value::Object(changed),
        json!({"last_status_update": "1970-01-01T00:00:00.000001Z"})
    );
    let changed = r.apply(
        &update(json!({"battery": null, "local_time": "x", "pv_connectors": 3, "postcode": 1}))
            .unwrap(),
        t1,
    );
    assert_eq!(changed.len(), 5);
    assert_eq!(
        (
            r.battery,
            r.local_time.as_deref(),
            r.pv_connectors,
            r.postcode.as_str()
        ),
        (None, Some("x"), 3, "1")
    );
    let changed = r.apply(&Update::default(), t0);
    assert_eq!(
        Value::Object(changed),
        json!({"last_status_update": "1970-01-01T00:00:00.000000Z"})
    );
}

/// `clone_from` gives the same record as `clone`, whatever the target held: other extras, the
/// same ones with other values, none.
#[test]
fn clone_from_copies_every_field() {
    let t0 = Timestamp::from_unix_micros(0);
    let t1 = Timestamp::from_unix_micros(1);
    let mut source = Record::new(serial(), "EET", t0);
    source.apply(
        &update(json!({"battery": 35, "country": "AT", "local_time": "x", "a": 1, "b": [2]}))
            .unwrap(),
        t1,
    );
    source.online = true;
    let other = Serial::new("0002").unwrap();
    let targets = [
        Record::new(other.clone(), "someone else", t1),
        {
            let mut r = source.clone();
            r.extra.insert("a".into(), json!("one"));
            r.extra.insert("b".into(), json!(null));
            r.local_time = None;
            r
        },
        {
            let mut r = Record::new(other, "", t0);
            r.extra.insert("c".into(), json!(3));
            r.extra.insert("a".into(), json!(1));
            r
        },
    ];
    for mut target in targets {
        target.clone_from(&source);
        assert_eq!(target, source);
    }
    let mut r = source.clone();
    r.apply_unrecorded(&update(json!({"a": 2, "c": true})).unwrap(), t0);
    assert_eq!(
        (r.extra["a"].clone(), r.extra["c"].clone()),
        (json!(2), json!(true))
    );
    assert_eq!(r.last_status_update, t0);
}

#[test]
fn set_ignores_wrong_types_and_reserved_keys() {
    let mut r = Record::new(serial(), "EET", Timestamp::UNIX_EPOCH);
    let before = r.clone();
    assert!(!r.set("battery", &json!("x")));
    assert!(!r.set("pv_connectors", &json!(2.5)));
    assert!(!r.set("country", &json!(1)));
    assert!(!r.set("online", &json!(true)));
    assert!(!r.set("serial_number", &json!("9")));
    assert_eq!(r, before);
    assert!(r.set("capacity", &json!(5)));
    assert_eq!(r.capacity, Some(5.0));
}

#[test]
fn get_views_every_kind() {
    let mut r = Record::new(serial(), "EET", Timestamp::UNIX_EPOCH);
    r.extra.insert("n".into(), json!(2));
    r.extra.insert("s".into(), json!("x"));
    r.extra.insert("null".into(), Value::Null);
    r.extra.insert("list".into(), json!([1]));
    r.local_time = Some("t".into());
    assert_eq!(r.get("n"), Some(FieldValue::Num(2.0)));
    assert_eq!(r.get("s"), Some(FieldValue::Str("x")));
    assert_eq!(r.get("null"), None);
    assert_eq!(r.get("list"), Some(FieldValue::Other(&json!([1]))));
    assert_eq!(r.get("local_time"), Some(FieldValue::Str("t")));
    assert_eq!(r.get("owner"), Some(FieldValue::Str("EET")));
    assert_eq!(r.get("country"), Some(FieldValue::Str("")));
    assert_eq!(r.get("solmate_version"), Some(FieldValue::Str("v1")));
    assert_eq!(
        r.get("manufacturing_date"),
        Some(FieldValue::Str("1970-01-01T00:00:00.000000Z"))
    );
    for name in [
        "power_income",
        "power_inject",
        "power_consumption",
        "battery",
        "capacity",
    ] {
        assert_eq!(r.get(name), None);
    }
}

#[test]
fn json_follows_table_order_then_extras() {
    let mut r = Record::new(
        serial(),
        "EET",
        Timestamp::from_unix_micros(1_710_117_813_256_667),
    );
    r.battery = Some(92.5);
    r.capacity = Some(5_184_000.0);
    r.power_income = Some(1e300);
    r.local_time = Some("2024-03-17 14:59:13.047108".into());
    r.extra.insert("zeta".into(), json!({"k": "\u{1}é"}));
    r.extra.insert("alpha".into(), json!(1.0));
    r.extra.insert("battery".into(), json!("shadow"));
    let text = r.to_json();
    let keys: Vec<&str> = Record::FIELDS
        .iter()
        .copied()
        .chain(["alpha", "zeta"])
        .collect();
    let mut at = 0;
    for key in keys {
        let found = text[at..]
            .find(&format!("\"{key}\":"))
            .unwrap_or_else(|| panic!("{key} in {text}"));
        at += found;
    }
    assert!(
        text.contains(r#""battery":92.5,"capacity":5184000,"#),
        "{text}"
    );
    assert!(text.contains(r#""power_income":1e+300,"#), "{text}");
    assert!(text.contains(r#""zeta":{"k":"\u0001é"}"#), "{text}");
    assert!(text.contains(r#""alpha":1.0"#), "{text}");
    assert!(!text.contains("shadow"));
    assert_eq!(text, serde_json::to_string(&r).unwrap());
    assert_eq!(r.to_map().len(), 18);
    assert_eq!(
        Value::Object(r.to_map()),
        serde_json::from_str::<Value>(&text).unwrap()
    );
    r.extra.remove("battery");
    assert_eq!(Record::from_json(&text).unwrap(), r);
    assert_eq!(serde_json::from_str::<Record>(&text).unwrap(), r);
}

#[test]
fn non_finite_numbers_are_written_as_null() {
    let mut r = Record::new(serial(), "EET", Timestamp::UNIX_EPOCH);
    r.battery = Some(f64::NAN);
    assert!(r.to_json().contains(r#""battery":null"#));
    assert_eq!(r.to_json(), serde_json::to_string(&r).unwrap());
}

#[test]
fn from_map_errors() {
    let good = Record::new(serial(), "EET", Timestamp::UNIX_EPOCH).to_map();
    let broken = |key: &str, value: Option<Value>| {
        let mut map = good.clone();
        match value {
            Some(v) => map.insert(key.to_owned(), v),
            None => map.remove(key),
        };
        Record::from_map(map).unwrap_err().to_string()
    };
    assert_eq!(
        broken("owner", None),
        "bad stored record: missing \"owner\""
    );
    assert_eq!(
        broken("online", Some(json!("yes"))),
        "bad stored record: \"online\" must be a boolean, got \"yes\""
    );
    assert_eq!(
        broken("serial_number", Some(json!(1))),
        "bad stored record: \"serial_number\" must be a string, got 1"
    );
    assert!(
        broken("serial_number", Some(json!("a b")))
            .starts_with("bad stored record: \"serial_number\": ")
    );
    assert!(
        broken("last_status_update", Some(json!("now")))
            .starts_with("bad stored record: \"last_status_update\": bad timestamp")
    );
    assert_eq!(
        broken("battery", Some(json!(true))),
        "bad stored record: field \"battery\" must be a number, numeric string or null, got true"
    );
    assert!(
        Record::from_json("{")
            .unwrap_err()
            .to_string()
            .starts_with("bad stored record: not a JSON object")
    );
    assert!(serde_json::from_str::<Record>("{}").is_err());
}

#[test]
fn direct_writer_matches_serde() {
    // `write_json` goes through `serde_json`; `write_json_padded` writes each field itself.
    let mut r = Record::new(
        serial(),
        "E\"E\\T\u{1}",
        Timestamp::from_unix_micros(1_710_117_813_256_667),
    );
    r.battery = Some(92.5);
    r.capacity = Some(5_184_000.0);
    r.power_income = Some(1e300);
    r.power_inject = Some(f64::NAN);
    r.pv_connectors = -3;
    r.local_time = Some("14:59\n".into());
    r.extra.insert(
        "zeta".into(),
        json!({"k": "\u{1}é😀", "l": [1, 2.5, null, true]}),
    );
    r.extra.insert("alpha".into(), json!(1.0));
    r.extra.insert("battery".into(), json!("shadow"));
    let mut padded = String::new();
    r.write_json_padded(std::iter::empty::<&str>(), &mut padded);
    assert_eq!(padded, r.to_json());
    assert_eq!(padded, serde_json::to_string(&r).unwrap());
}
