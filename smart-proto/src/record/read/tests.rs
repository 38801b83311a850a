//! The fast path of `Record::from_json` against the general one: the same result for every text, and
//! records as `to_json` writes them read without falling back.

#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

const SEEN: &str = "2024-03-11T00:43:33.256667Z";

/// `from_json`, and whether the fast path read it, checked against the general path.
fn read_both(text: &str) -> (crate::Result<Record>, bool) {
    let fast = canonical(text);
    let took = fast.is_some();
    let result = Record::from_json(text);
    let slow = Record::from_json_slow(text);
    assert_eq!(
        result, slow,
        "from_json and the general path differ on {text:?}"
    );
    if let Some(record) = fast {
        assert_eq!(Ok(record), slow, "the fast path differs on {text:?}");
    }
    (result, took)
}

fn record_text(extra: &str) -> String {
    format!(
        r#"{{"serial_number":"0001","owner":"EET","manufacturing_date":"{SEEN}","last_status_update":"{SEEN}","online":true{extra}}}"#
    )
}

#[test]
fn canonical_texts_take_the_fast_path() {
    let mut record = Record::new(Serial::new("0001").unwrap(), "EET", Timestamp::UNIX_EPOCH);
    record.battery = Some(92.5);
    record.capacity = Some(5_184_000.0);
    record.pv_connectors = -3;
    record.local_time = Some("14:59".into());
    record.extra.insert("charging".into(), json!(false));
    record
        .extra
        .insert("nested".into(), json!({"a": [1, 2.5, null, "é"]}));
    let (read, took) = read_both(&record.to_json());
    assert_eq!((read, took), (Ok(record.clone()), true));
    // Any key order, any spacing; escapes in keys and values.
    let pretty = serde_json::to_string_pretty(&Value::Object(record.to_map())).unwrap();
    assert_eq!(read_both(&pretty), (Ok(record.clone()), true));
    let escaped = record
        .to_json()
        .replace(r#""battery""#, r#""b\u0061ttery""#)
        .replace(r#""EET""#, r#""\u0045ET""#);
    assert_eq!(read_both(&escaped), (Ok(record), true));
    // Values that need coercing are coerced as the general path coerces them.
    let (read, took) = read_both(&record_text(
        r#","battery":"35","postcode":7445,"pv_connectors":2.0,"capacity":-0.0"#,
    ));
    let read = read.unwrap();
    assert!(took);
    assert_eq!(
        (
            read.battery,
            read.postcode.as_str(),
            read.pv_connectors,
            read.capacity
        ),
        (Some(35.0), "7445", 2, Some(0.0))
    );
}

#[test]
fn other_texts_fall_back() {
    for extra in [
        // Repeated keys: the general path keeps the last.
        r#","battery":"full","battery":1"#,
        r#","a":1,"a":2"#,
        r#","online":false"#,
        // Values the general path refuses.
        r#","battery":true"#,
        r#","pv_connectors":2.5"#,
        r#","pv_connectors":18446744073709551615"#,
        r#","postcode":null"#,
        r#","country":1"#,
    ] {
        let (_, took) = read_both(&record_text(extra));
        assert!(!took, "{extra}");
    }
    for text in [
        "",
        "{",
        "[1]",
        "{}",
        "null",
        &record_text("").replace(r#""owner":"EET","#, ""),
        &record_text("").replace(r#""online":true"#, r#""online":"yes""#),
        &record_text("").replace(r#""0001""#, r#""a b""#),
        &record_text("").replace(SEEN, "now"),
        &format!("{} x", record_text("")),
        &format!("{}}}", record_text("")),
    ] {
        let (read, took) = read_both(text);
        assert!(read.is_err() && !took, "{text}");
    }
    // Whitespace around the object is fine.
    assert!(read_both(&format!(" \n{}\t", record_text(""))).1);
}

#[test]
fn required_fields_are_the_reserved_ones() {
    // The fast path requires the table's reserved fields; the general path its own list of them.
    let full = record_text("");
    assert_eq!(REQUIRED.count_ones(), 5);
    for field in Known::ALL.iter().filter(|field| field.is_reserved()) {
        let mut map: serde_json::Map<String, Value> = serde_json::from_str(&full).unwrap();
        let name = Record::FIELDS[*field as usize];
        assert!(map.remove(name).is_some(), "{name}");
        let text = Value::Object(map).to_string();
        assert_eq!(
            read_both(&text).0.unwrap_err().to_string(),
            format!("bad stored record: missing {name:?}")
        );
    }
    for (i, field) in Known::ALL.iter().enumerate() {
        assert_eq!(Known::named(Record::FIELDS[i]), Some(*field));
    }
}

// ---- properties -------------------------------------------------------------------------------

fn finite() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>().prop_filter("finite", |x| x.is_finite()),
        (-1_000_000_i64..1_000_000).prop_map(|n| n as f64),
        (-1_000_000_i64..1_000_000).prop_map(|n| n as f64 / 100.0),
    ]
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        finite().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((any::<String>(), inner), 0..4)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

fn record() -> impl Strategy<Value = Record> {
    let texts = prop::collection::vec(any::<String>(), 5);
    let numbers = prop::collection::vec(prop::option::of(finite()), 5);
    let extras = prop::collection::btree_map("[a-z_]{1,8}|.{1,4}", any_json(), 0..5).prop_map(
        |mut extras| {
            extras.retain(|key, _| Known::named(key).is_none());
            extras
        },
    );
    let time = || {
        (Timestamp::MIN.as_unix_micros()..=Timestamp::MAX.as_unix_micros())
            .prop_map(Timestamp::from_unix_micros)
    };
    (
        "[A-Za-z0-9_-]{1,32}",
        texts,
        numbers,
        (
            any::<i64>(),
            prop::option::of(any::<String>()),
            any::<bool>(),
        ),
        (time(), time()),
        extras,
    )
        .prop_map(
            |(serial, texts, numbers, (pv_connectors, local_time, online), times, extra)| {
                let [software_version, country, solmate_version, postcode, owner] =
                    <[String; 5]>::try_from(texts).unwrap();
                Record {
                    serial_number: Serial::new(&serial).unwrap(),
                    software_version,
                    country,
                    solmate_version,
                    postcode,
                    power_income: numbers[0],
                    power_inject: numbers[1],
                    power_consumption: numbers[2],
                    battery: numbers[3],
                    capacity: numbers[4],
                    pv_connectors,
                    local_time,
                    owner,
                    manufacturing_date: times.0,
                    last_status_update: times.1,
                    online,
                    extra,
                }
            },
        )
}

/// A key as JSON text: known names (some escaped), extras, odd ones.
fn key_text() -> impl Strategy<Value = String> {
    let known = prop::sample::select(Record::FIELDS.to_vec());
    prop_oneof![
        4 => known.clone().prop_map(|name| format!("\"{name}\"")),
        1 => known.prop_map(|name| format!("\"\\u{:04x}{}\"", u32::from(name.as_bytes()[0]), &name[1..])),
        2 => "[a-z_]{1,6}".prop_map(|name| format!("\"{name}\"")),
        1 => any::<String>().prop_map(|name| Value::String(name).to_string()),
    ]
}

/// A value as JSON text: of each known field's type and of wrong ones, numbers in every spelling.
fn value_text() -> impl Strategy<Value = String> {
    let odd = prop::sample::select(vec![
        "0",
        "-0",
        "-0.0",
        "2.0",
        "-3",
        "1e3",
        "1E2",
        "-1.5e-3",
        "9007199254740991",
        "9007199254740992",
        "9007199254740993",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775808",
        "-9223372036854775809",
        "1e400",
        "1.",
        "01",
        "null",
        "true",
        "false",
        "\"\"",
        "\"357\"",
        "\" 12.5 \"",
        "\"NaN\"",
        "\"inf\"",
        "\"full\"",
        "\"v1\"",
        "\"0001\"",
        "\"a b\"",
        "\"\\u0041\\n\"",
        "\"2024-03-11T00:43:33.256667Z\"",
        "\"2024-03-11T01:43:33.256667+01:00\"",
        "\"2024-02-30T00:00:00Z\"",
        "\"now\"",
        "[]",
        "{}",
        "[1,{\"a\":null}]",
        "{\"battery\":1,\"battery\":2}",
    ])
    .prop_map(str::to_owned);
    prop_oneof![
        4 => odd,
        2 => any_json().prop_map(|value| value.to_string()),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => finite().prop_map(|x| format!("{x:?}")),
        1 => finite().prop_map(|x| format!("\"{x}\"")),
    ]
}

/// A value the general path takes for the key (as JSON text), as written or to be coerced.
fn right_value_text(key: &str) -> BoxedStrategy<String> {
    let name: String = serde_json::from_str(key).unwrap_or_default();
    let string = || any::<String>().prop_map(|s| Value::String(s).to_string());
    let number = || finite().prop_map(|x| super::super::number::number_value(x).to_string());
    match (name.as_str(), FieldKind::of(&name)) {
        ("serial_number", _) => "\"[A-Za-z0-9_-]{1,32}\"".boxed(),
        ("online", _) => any::<bool>().prop_map(|b| b.to_string()).boxed(),
        ("manufacturing_date" | "last_status_update", _) => (Timestamp::MIN.as_unix_micros()
            ..=Timestamp::MAX.as_unix_micros())
            .prop_map(|t| format!("\"{}\"", Timestamp::from_unix_micros(t)))
            .boxed(),
        (_, FieldKind::Text | FieldKind::Reserved) => string().boxed(),
        (_, FieldKind::Postcode) => {
            prop_oneof![string(), any::<i64>().prop_map(|n| n.to_string())].boxed()
        }
        (_, FieldKind::Number) => prop_oneof![
            number(),
            Just("null".to_owned()),
            finite().prop_map(|x| format!("\"{x}\"")),
        ]
        .boxed(),
        (_, FieldKind::Integer) => any::<i64>().prop_map(|n| n.to_string()).boxed(),
        (_, FieldKind::OptionalText) => prop_oneof![string(), Just("null".to_owned())].boxed(),
        (_, FieldKind::Extra) => any_json().prop_map(|value| value.to_string()).boxed(),
    }
}

/// An entry of an object: mostly of the right type for its key.
fn entry_text() -> impl Strategy<Value = (String, String)> {
    key_text().prop_flat_map(|key| {
        let value = prop_oneof![3 => right_value_text(&key), 1 => value_text()];
        (Just(key), value)
    })
}

/// An object's text: entries in any order, repeats allowed; usually with the server fields, sometimes
/// broken.
fn object_text() -> impl Strategy<Value = String> {
    let entries = prop::collection::vec(entry_text(), 0..12);
    (
        entries,
        any::<bool>(),
        any::<prop::sample::Index>(),
        0..8_u8,
    )
        .prop_map(|(mut entries, complete, at, mangle)| {
            if complete {
                let server = [
                    ("\"serial_number\"", "\"0001\""),
                    ("\"owner\"", "\"EET\""),
                    ("\"manufacturing_date\"", "\"2024-03-11T00:43:33.256667Z\""),
                    ("\"last_status_update\"", "\"2024-03-11T00:46:52.690962Z\""),
                    ("\"online\"", "false"),
                ];
                for (key, value) in server {
                    let at = at.index(entries.len() + 1);
                    entries.insert(at, (key.to_owned(), value.to_owned()));
                }
            }
            let body: Vec<String> = entries
                .iter()
                .map(|(key, value)| format!("{key}:{value}"))
                .collect();
            let mut text = format!("{{{}}}", body.join(if mangle == 1 { " , " } else { "," }));
            match mangle {
                2 => text.push_str(" x"),
                3 => text.push('}'),
                4 => {
                    let cut = at.index(text.len() + 1);
                    let cut = (0..=cut)
                        .rev()
                        .find(|&i| text.is_char_boundary(i))
                        .unwrap_or(0);
                    text.truncate(cut);
                }
                _ => {}
            }
            text
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn records_read_back_on_the_fast_path(record in record()) {
        let text = record.to_json();
        let fast = canonical(&text);
        prop_assert_eq!(fast.as_ref(), Some(&record), "{}", text);
        prop_assert_eq!(Record::from_json(&text), Ok(record));
    }

    #[test]
    fn fast_and_general_paths_agree(text in object_text()) {
        let _ = read_both(&text);
    }

    #[test]
    fn fast_and_general_paths_agree_on_edited_records(
        record in record(),
        key in key_text(),
        value in value_text(),
        at in any::<prop::sample::Index>(),
    ) {
        // A record as written, with one entry put in somewhere: often a repeat or a wrong type.
        let text = record.to_json();
        let commas: Vec<usize> = text.match_indices(",\"").map(|(i, _)| i).collect();
        let cut = commas[at.index(commas.len())];
        let edited = format!("{},{key}:{value}{}", &text[..cut], &text[cut..]);
        let _ = read_both(&edited);
    }

    #[test]
    fn fast_and_general_paths_agree_on_any_text(text in any::<String>()) {
        let _ = read_both(&text);
    }
}

/// The generated objects are not all refused: enough of them read, on the fast path and off it, for the
/// property above to compare records and not only errors.
#[test]
fn generated_objects_cover_both_paths() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, TestRng, TestRunner};

    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::deterministic_rng(Config::default().rng_algorithm),
    );
    let strategy = object_text();
    let (mut fast, mut slow_ok, mut errors) = (0, 0, 0);
    for _ in 0..2000 {
        let text = strategy.new_tree(&mut runner).unwrap().current();
        match read_both(&text) {
            (Ok(_), true) => fast += 1,
            (Ok(_), false) => slow_ok += 1,
            (Err(_), _) => errors += 1,
        }
    }
    eprintln!("fast {fast}, general ok {slow_ok}, errors {errors}");
    assert!(
        fast >= 100 && slow_ok >= 20 && errors >= 100,
        "fast {fast}, general ok {slow_ok}, errors {errors}"
    );
}
