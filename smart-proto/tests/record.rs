//! Device records (PROTOCOL.md §6): coercion, updates, serialization, and timestamps.
#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use smart_proto::normalize::RUNTIME_KEYS;
use smart_proto::{Error, FieldValue, Record, Serial, Timestamp, Update, normalize, parse_body};

const SEEN: &str = "2024-03-11T00:43:33.256667Z";

fn serial(s: &str) -> Serial {
    Serial::new(s).unwrap()
}

fn update_for(serial: &Serial, body: &str) -> Result<Update, Error> {
    Update::from_normalized(normalize(parse_body(body).unwrap(), serial).unwrap())
}

/// The INIT body of the seed (`smart-os-technical-details.md`), as sent.
const SEED_INIT_BODY: &str = r#"{"serial_number": "0001", "solmate_version": "v1", "_software_version": "v8.6", "_country": "DE", "_postcode": 7445, "_power_income": 377, "_power_inject": 336, "_power_consumption": 400, "_battery": 250, "_capacity": 5184000, "_local_time": null, "server_url": "ws://localhost:8000/update/", "websocket": "", "connected": true, "publish": true, "message_id": "0000", "message_queue": {}, "tasks": "", "meassuring": true, "charging": false, "injecting": false, "pv_connectors": 1}"#;

#[test]
fn seed_init_becomes_a_typed_record() {
    let s = serial("0001");
    let now = Timestamp::parse(SEEN).unwrap();
    let mut record = Record::new(s.clone(), "EET", now);
    let changed = record.apply(&update_for(&s, SEED_INIT_BODY).unwrap(), now);
    assert_eq!(
        record.to_json(),
        concat!(
            r#"{"serial_number":"0001","software_version":"v8.6","country":"DE","solmate_version":"v1","#,
            r#""postcode":"7445","power_income":377,"power_inject":336,"power_consumption":400,"battery":250,"#,
            r#""capacity":5184000,"pv_connectors":1,"local_time":null,"owner":"EET","#,
            r#""manufacturing_date":"2024-03-11T00:43:33.256667Z","#,
            r#""last_status_update":"2024-03-11T00:43:33.256667Z","online":false,"#,
            r#""charging":false,"injecting":false,"meassuring":true}"#
        )
    );
    // solmate_version, pv_connectors and local_time were sent with their default values: no news.
    assert_eq!(
        Value::Object(changed),
        json!({
            "software_version": "v8.6", "country": "DE", "postcode": "7445", "power_income": 377,
            "power_inject": 336, "power_consumption": 400, "battery": 250, "capacity": 5_184_000,
            "meassuring": true, "charging": false, "injecting": false,
            "last_status_update": SEEN,
        })
    );
}

#[test]
fn seed_updates_change_what_they_name() {
    let s = serial("0001");
    let t0 = Timestamp::parse(SEEN).unwrap();
    let t1 = Timestamp::parse("2024-03-11T00:46:52.690962Z").unwrap();
    let mut record = Record::new(s.clone(), "EET", t0);
    let first = r#"{"battery": 350, "software_version": "v2.0", "country": "AT", "postcode": 9733, "power_income": 388, "power_inject": 357, "power_consumption": 289}"#;
    let changed = record.apply(&update_for(&s, first).unwrap(), t1);
    assert_eq!(changed.len(), 8);
    assert_eq!(changed["postcode"], "9733");
    assert_eq!(record.postcode, "9733");
    assert_eq!(record.manufacturing_date, t0);
    assert_eq!(record.last_status_update, t1);

    let changed = record.apply(
        &update_for(&s, r#"{"power_consumption": 357}"#).unwrap(),
        t1,
    );
    assert_eq!(
        Value::Object(changed),
        json!({"power_consumption": 357, "last_status_update": "2024-03-11T00:46:52.690962Z"})
    );
    let changed = record.apply(
        &update_for(&s, r#"{"local_time": "2024-03-17 14:59:13.047108"}"#).unwrap(),
        t1,
    );
    assert_eq!(changed["local_time"], "2024-03-17 14:59:13.047108");
    assert_eq!(
        record.get("local_time"),
        Some(FieldValue::Str("2024-03-17 14:59:13.047108"))
    );
}

#[test]
fn seed_header_example_keeps_the_plain_key() {
    let s = serial("1234");
    let update = update_for(&s, "{'parameter_name':'AT','_parameter_name':430}").unwrap();
    assert_eq!(
        Value::Object(update.as_map().clone()),
        json!({"parameter_name": "AT"})
    );
    let mut record = Record::new(s, "EET", Timestamp::UNIX_EPOCH);
    record.apply(&update, Timestamp::UNIX_EPOCH);
    assert_eq!(record.get("parameter_name"), Some(FieldValue::Str("AT")));
}

#[test]
fn seed_dashboard_record_reads_back() {
    // The record of the seed's INIT reply, with the server fields this protocol adds.
    let text = r#"{"serial_number": "0004", "software_version": "", "country": "", "postcode": "", "manufacturing_date": "2024-03-11T00:43:33.256667Z", "power_income": 0.0, "power_inject": 0.0, "power_consumption": 144.0, "battery": 0.0, "last_status_update": "2024-03-11T00:46:52.690962Z", "solmate_version": "v2", "pv_connectors": 2, "local_time": "2024-03-11T01:46:48.012456Z", "statusdata_ptr": 467, "owner": "EET", "online": true}"#;
    let record = Record::from_json(text).unwrap();
    assert_eq!(record.power_consumption, Some(144.0));
    assert_eq!(record.capacity, None);
    assert_eq!(record.extra["statusdata_ptr"], 467);
    assert_eq!(
        record.to_json(),
        concat!(
            r#"{"serial_number":"0004","software_version":"","country":"","solmate_version":"v2","postcode":"","#,
            r#""power_income":0,"power_inject":0,"power_consumption":144,"battery":0,"capacity":null,"#,
            r#""pv_connectors":2,"local_time":"2024-03-11T01:46:48.012456Z","owner":"EET","#,
            r#""manufacturing_date":"2024-03-11T00:43:33.256667Z","#,
            r#""last_status_update":"2024-03-11T00:46:52.690962Z","online":true,"statusdata_ptr":467}"#
        )
    );
    // The original's record has no owner or online flag: it is not a stored record of ours.
    let original = text.replace(r#", "owner": "EET", "online": true"#, "");
    assert_eq!(
        Record::from_json(&original).unwrap_err().to_string(),
        "bad stored record: missing \"owner\""
    );
}

#[test]
fn type_errors_fail_the_whole_update() {
    let s = serial("0001");
    for (body, message) in [
        (
            r#"{"battery": "full"}"#,
            r#"field "battery" must be a number, numeric string or null, got "full""#,
        ),
        (
            r#"{"pv_connectors": true}"#,
            r#"field "pv_connectors" must be an integer from 0 to 9007199254740991, got true"#,
        ),
        (
            r#"{"pv_connectors": 1.5}"#,
            r#"field "pv_connectors" must be an integer from 0 to 9007199254740991, got 1.5"#,
        ),
        (
            r#"{"postcode": 74.45}"#,
            r#"field "postcode" must be a string or an integer, got 74.45"#,
        ),
        (
            r#"{"country": ["AT"]}"#,
            r#"field "country" must be a string, got ["AT"]"#,
        ),
        (
            r#"{"local_time": false}"#,
            r#"field "local_time" must be a string or null, got false"#,
        ),
        (
            "{'_battery': 'empty', 'country': 'AT'}",
            r#"field "battery" must be a number, numeric string or null, got "empty""#,
        ),
    ] {
        let err = update_for(&s, body).unwrap_err();
        assert!(matches!(err, Error::FieldType { .. }), "{body}");
        assert_eq!(err.to_string(), message, "{body}");
    }
}

#[test]
fn coercions() {
    let s = serial("0001");
    let update = update_for(
        &s,
        "{'power_income': '357', 'power_inject': ' 12.5 ', 'battery': 350.0, 'capacity': None, \
         'pv_connectors': 2.0, 'postcode': 8020, 'extra_float': 350.0}",
    )
    .unwrap();
    assert_eq!(
        Value::Object(update.as_map().clone()).to_string(),
        r#"{"battery":350,"capacity":null,"extra_float":350.0,"postcode":"8020","power_income":357,"power_inject":12.5,"pv_connectors":2}"#
    );
}

#[test]
fn empty_update_is_a_sign_of_life() {
    let s = serial("0001");
    let update = update_for(&s, "{}").unwrap();
    assert!(update.is_empty());
    let mut record = Record::new(s, "EET", Timestamp::UNIX_EPOCH);
    let later = Timestamp::from_unix_micros(5);
    let changed = record.apply(&update, later);
    assert_eq!(
        Value::Object(changed),
        json!({"last_status_update": "1970-01-01T00:00:00.000005Z"})
    );
    assert_eq!(record.last_status_update, later);
}

#[test]
fn serde_impls_agree_with_the_hand_written_codec() {
    let s = serial("0001");
    let mut record = Record::new(s.clone(), "EET", Timestamp::parse(SEEN).unwrap());
    record.apply(
        &update_for(&s, SEED_INIT_BODY).unwrap(),
        Timestamp::parse(SEEN).unwrap(),
    );
    let via_serde = serde_json::to_string(&record).unwrap();
    assert_eq!(via_serde, record.to_json());
    assert_eq!(serde_json::from_str::<Record>(&via_serde).unwrap(), record);
    assert_eq!(Record::from_map(record.to_map()).unwrap(), record);
    assert_eq!(
        Value::Object(record.to_map()),
        serde_json::from_str::<Value>(&via_serde).unwrap()
    );
    assert_eq!(
        serde_json::to_value(record.last_status_update).unwrap(),
        json!(SEEN)
    );
}

// ---- properties -------------------------------------------------------------------------------

/// Numbers whose shortest text `serde_json` reads back exactly (its default float parser is exact for
/// up to 15 significant digits; the `float_roundtrip` feature would be needed for all of them).
fn exact_number() -> impl Strategy<Value = f64> {
    prop_oneof![
        (-1_000_000_000_i64..1_000_000_000).prop_map(|n| n as f64),
        (-1_000_000_000_i64..1_000_000_000, 1_u32..5)
            .prop_map(|(n, k)| n as f64 / 10_f64.powi(k as i32)),
    ]
}

fn extra_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        exact_number().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,3}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn timestamp() -> impl Strategy<Value = Timestamp> {
    (Timestamp::MIN.as_unix_micros()..=Timestamp::MAX.as_unix_micros())
        .prop_map(Timestamp::from_unix_micros)
}

fn record() -> impl Strategy<Value = Record> {
    let text = (
        any::<String>(),
        any::<String>(),
        any::<String>(),
        any::<String>(),
        any::<String>(),
    );
    let numbers = prop::collection::vec(prop::option::of(exact_number()), 5);
    // Keys a device could send: normalization would strip a leading underscore or drop runtime keys.
    let extras =
        prop::collection::btree_map("[a-z][a-z_]{0,11}", extra_value(), 0..4).prop_map(|mut m| {
            m.retain(|key, _| {
                !Record::FIELDS.contains(&key.as_str()) && !RUNTIME_KEYS.contains(&key.as_str())
            });
            m
        });
    (
        "[A-Za-z0-9_-]{1,32}",
        text,
        numbers,
        (
            any::<i64>(),
            prop::option::of(any::<String>()),
            any::<bool>(),
        ),
        (timestamp(), timestamp()),
        extras,
    )
        .prop_map(
            |(serial_text, texts, numbers, (pv, local_time, online), (made, seen), extra)| {
                let (software_version, country, postcode, solmate_version, owner) = texts;
                Record {
                    serial_number: serial(&serial_text),
                    software_version,
                    country,
                    postcode,
                    solmate_version,
                    power_income: numbers[0],
                    power_inject: numbers[1],
                    power_consumption: numbers[2],
                    battery: numbers[3],
                    capacity: numbers[4],
                    pv_connectors: pv,
                    local_time,
                    owner,
                    manufacturing_date: made,
                    last_status_update: seen,
                    online,
                    extra,
                }
            },
        )
}

/// Known keys with values of any type, and a few others: input for `from_map` that is often wrong.
fn loose_map() -> impl Strategy<Value = Map<String, Value>> {
    let key = prop_oneof![
        prop::sample::select(Record::FIELDS.to_vec()).prop_map(str::to_owned),
        "[a-z]{1,4}"
    ];
    let value = prop_oneof![
        extra_value(),
        timestamp().prop_map(|t| Value::String(t.to_string())),
        "[A-Za-z0-9]{1,6}".prop_map(Value::String),
    ];
    prop::collection::btree_map(key, value, 0..20).prop_map(|m| m.into_iter().collect())
}

proptest! {
    #[test]
    fn record_json_round_trips(r in record()) {
        let text = r.to_json();
        prop_assert_eq!(&Record::from_json(&text).unwrap(), &r);
        prop_assert_eq!(&serde_json::to_string(&r).unwrap(), &text);
        prop_assert_eq!(&Record::from_map(r.to_map()).unwrap(), &r);
    }

    #[test]
    fn applying_a_record_to_itself_changes_nothing(r in record()) {
        // A device only sends counts of connectors a browser can hold, never negative ones.
        let mut r = r;
        r.pv_connectors = r.pv_connectors.rem_euclid(1 << 53);
        let mut fields = r.to_map();
        for key in ["serial_number", "owner", "manufacturing_date", "last_status_update", "online"] {
            fields.remove(key);
        }
        let body = Value::Object(fields).to_string();
        let update = update_for(&r.serial_number, &body).unwrap();
        let mut copy = r.clone();
        let changed = copy.apply(&update, r.last_status_update);
        prop_assert_eq!(changed.len(), 1, "{:?}", changed);
        prop_assert_eq!(copy, r);
    }

    #[test]
    fn timestamp_text_round_trips(t in timestamp()) {
        let text = t.to_string();
        prop_assert_eq!(text.len(), 27);
        prop_assert_eq!(Timestamp::parse(&text).unwrap(), t);
        prop_assert_eq!(Timestamp::parse(&text.replace('Z', "+00:00")).unwrap(), t);
    }

    #[test]
    fn timestamp_text_orders_like_the_instant(a in timestamp(), b in timestamp()) {
        prop_assert_eq!(a.as_str().cmp(b.as_str()), a.cmp(&b));
    }

    #[test]
    fn offsets_convert_to_utc(t in timestamp(), offset_minutes in -1439_i64..=1439) {
        let local = Timestamp::from_unix_micros(t.as_unix_micros() + offset_minutes * 60_000_000);
        let sign = if offset_minutes < 0 { '-' } else { '+' };
        let text = format!(
            "{}{sign}{:02}:{:02}",
            &local.as_str()[..26],
            offset_minutes.abs() / 60,
            offset_minutes.abs() % 60
        );
        let in_range = local.as_unix_micros() == t.as_unix_micros() + offset_minutes * 60_000_000;
        if in_range {
            prop_assert_eq!(Timestamp::parse(&text).unwrap(), t);
        }
    }

    #[test]
    fn timestamp_parse_never_panics(s in any::<String>()) {
        let _ = Timestamp::parse(&s);
    }

    #[test]
    fn near_timestamps_parse_or_fail_cleanly(
        s in "[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,11})?(Z|[+-][0-9]{2}:[0-9]{2}|x)?"
    ) {
        match Timestamp::parse(&s) {
            Ok(t) => prop_assert_eq!(Timestamp::parse(t.as_str()).unwrap(), t),
            Err(err) => prop_assert!(matches!(err, Error::Timestamp { .. }), "{:?}", err),
        }
    }

    #[test]
    fn from_json_never_panics(s in any::<String>()) {
        let _ = Record::from_json(&s);
    }

    #[test]
    fn from_map_never_panics(mut map in loose_map(), complete in any::<bool>()) {
        // Half the time, make sure the required fields are there so that the device fields get checked.
        if complete {
            map.entry("serial_number").or_insert(json!("0001"));
            map.entry("owner").or_insert(json!("EET"));
            map.entry("manufacturing_date").or_insert(json!(SEEN));
            map.entry("last_status_update").or_insert(json!(SEEN));
            map.entry("online").or_insert(json!(true));
        }
        if let Ok(r) = Record::from_map(map) {
            prop_assert_eq!(Record::from_json(&r.to_json()).unwrap(), r);
        }
    }

    #[test]
    fn numbers_and_numeric_strings_coerce_alike(x in any::<f64>().prop_filter("finite", |x| x.is_finite())) {
        let s = serial("0001");
        let mut body = Map::new();
        body.insert("battery".to_owned(), json!(x));
        body.insert("capacity".to_owned(), json!(x.to_string()));
        let update = Update::from_normalized(normalize(body, &s).unwrap()).unwrap();
        let mut r = Record::new(s, "EET", Timestamp::UNIX_EPOCH);
        r.apply(&update, Timestamp::UNIX_EPOCH);
        prop_assert_eq!(r.battery, Some(x + 0.0));
        prop_assert_eq!(r.capacity, Some(x + 0.0));
        let integral = x.fract() == 0.0 && x.abs() < 9_007_199_254_740_992.0;
        prop_assert_eq!(update.as_map()["battery"].is_i64(), integral);
    }
}
