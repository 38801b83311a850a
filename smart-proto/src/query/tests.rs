#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use super::*;
use crate::{Serial, Timestamp};
use serde_json::json;

fn record(serial: &str) -> Record {
    Record::new(Serial::new(serial).unwrap(), "EET", Timestamp::UNIX_EPOCH)
}

fn matches(clause: &str, record: &Record) -> bool {
    Query::parse(&[clause]).unwrap().matches(record)
}

fn reason(clause: &str) -> String {
    match Clause::parse(clause) {
        Err(Error::Query { reason, .. }) => reason,
        other => panic!("{clause}: {other:?}"),
    }
}

#[test]
fn parses_every_operator_and_direction() {
    for op in Op::ALL {
        let clause = format!("filter:battery:{}:5", op.as_str());
        let Clause::Filter(filter) = Clause::parse(&clause).unwrap() else {
            panic!()
        };
        assert_eq!(filter.op, op);
        assert_eq!(filter.to_string(), clause);
    }
    for (text, dir, kind) in [
        ("sort:x:<:abc", Direction::Ascending, SortKind::Abc),
        ("sort:x:>:123", Direction::Descending, SortKind::Num),
        ("sort:x:>:", Direction::Descending, SortKind::Unspecified),
        ("sort:x:<", Direction::Ascending, SortKind::Unspecified),
        ("SoRt:x:<:ABC", Direction::Ascending, SortKind::Abc),
    ] {
        assert_eq!(
            Clause::parse(text).unwrap(),
            Clause::Sort(Sort {
                field: "x".into(),
                dir,
                kind
            }),
            "{text}"
        );
    }
}

#[test]
fn values_keep_colons_and_may_be_empty() {
    let Clause::Filter(f) = Clause::parse("filter:local_time:=:2024-03-17 14:59:13").unwrap()
    else {
        panic!()
    };
    assert_eq!(f.value, "2024-03-17 14:59:13");
    let Clause::Filter(f) = Clause::parse("filter:a_1:^:").unwrap() else {
        panic!()
    };
    assert_eq!((f.field.as_str(), f.value.as_str()), ("a_1", ""));
}

#[test]
fn errors_say_what_is_wrong() {
    assert_eq!(
        reason("filter"),
        "expected filter:FIELD:OP:VALUE or sort:FIELD:DIR:KIND"
    );
    assert_eq!(
        reason(""),
        "expected filter:FIELD:OP:VALUE or sort:FIELD:DIR:KIND"
    );
    assert_eq!(
        reason("select:x:=:1"),
        r#"unknown command "select": expected filter or sort"#
    );
    assert_eq!(reason("filter::=:1"), "missing field name");
    assert_eq!(
        reason("filter:bat-tery:=:1"),
        r#"field name "bat-tery" may only contain letters, digits and _"#
    );
    assert_eq!(
        reason("filter:bätt:=:1"),
        r#"field name "bätt" may only contain letters, digits and _"#
    );
    assert_eq!(reason("filter:battery"), "expected filter:FIELD:OP:VALUE");
    assert_eq!(reason("filter:battery:="), "expected filter:FIELD:OP:VALUE");
    assert_eq!(
        reason("filter:battery:~:1"),
        r#"unknown operator "~": expected one of = == < > <= >= ^"#
    );
    assert_eq!(
        reason("filter:battery:=<:1"),
        r#"unknown operator "=<": expected one of = == < > <= >= ^"#
    );
    assert_eq!(
        reason("filter:battery:>:"),
        r#"operator ">" compares numbers, but "" is not a number"#
    );
    assert_eq!(
        reason("filter:battery:==:NaN"),
        r#"operator "==" compares numbers, but "NaN" is not a number"#
    );
    assert_eq!(reason("sort:battery"), "expected sort:FIELD:DIR:KIND");
    assert_eq!(
        reason("sort:battery:^:abc"),
        r#"unknown direction "^": expected < (ascending) or > (descending)"#
    );
    assert_eq!(
        reason("sort:battery:<:xyz"),
        r#"unknown sort kind "xyz": expected abc, 123 or nothing"#
    );
    let long = Clause::parse(&format!("filter:x:~:{}", "y".repeat(1000)))
        .unwrap_err()
        .to_string();
    assert!(long.len() < 300, "{long}");
}

#[test]
fn text_forms() {
    let mut r = record("1234");
    r.battery = Some(350.0);
    r.capacity = Some(92.5);
    r.online = true;
    r.extra.insert("list".into(), json!([1, "a"]));
    r.extra.insert("nothing".into(), serde_json::Value::Null);
    assert!(matches("filter:battery:=:350", &r));
    assert!(!matches("filter:battery:=:350.0", &r));
    assert!(matches("filter:capacity:^:92.5", &r));
    assert!(matches("filter:online:=:TRUE", &r));
    assert!(matches("filter:online:^:t", &r));
    assert!(matches("filter:list:=:[1,\"A\"]", &r));
    assert!(matches("filter:pv_connectors:=:1", &r));
    assert!(matches("filter:last_status_update:^:1970-01-01T", &r));
    for clause in [
        "filter:nothing:=:",
        "filter:missing:=:",
        "filter:power_inject:^:",
        "filter:local_time:=:",
    ] {
        assert!(!matches(clause, &r), "{clause}");
    }
}

#[test]
fn contains_is_case_insensitive_and_prefix_is_not() {
    let mut r = record("1234");
    r.country = "Österreich".into();
    r.software_version = "V8.6-Beta".into();
    assert!(matches("filter:country:=:österREICH", &r));
    assert!(matches("filter:country:=:TERR", &r));
    assert!(matches("filter:software_version:=:beta", &r));
    assert!(matches("filter:software_version:^:V8", &r));
    assert!(!matches("filter:software_version:^:v8", &r));
    assert!(!matches("filter:software_version:=:alpha", &r));
    assert!(!matches("filter:software_version:=:V8.6-Beta-and-more", &r));
}

#[test]
fn numeric_operators() {
    let mut r = record("1234");
    r.battery = Some(50.0);
    r.postcode = " 8020 ".into();
    r.country = "AT".into();
    r.extra.insert("flag".into(), json!(true));
    for (clause, expected) in [
        ("filter:battery:==:50", true),
        ("filter:battery:==:50.0", true),
        ("filter:battery:==:5e1", true),
        ("filter:battery:<:50", false),
        ("filter:battery:<=:50", true),
        ("filter:battery:>:49.9", true),
        ("filter:battery:>=:51", false),
        ("filter:postcode:>=:8000", true),
        ("filter:postcode:<:8020.5", true),
        ("filter:country:>:0", false),
        ("filter:country:<:0", false),
        ("filter:flag:>=:0", false),
        ("filter:capacity:<:1e9", false),
    ] {
        assert_eq!(matches(clause, &r), expected, "{clause}");
    }
    let hand_built = Query {
        filters: vec![Filter {
            field: "battery".into(),
            op: Op::Ge,
            value: "lots".into(),
        }],
        sorts: vec![],
    };
    assert!(!hand_built.matches(&r));
    assert!(hand_built.apply([&r]).is_empty());
}

#[test]
fn all_filters_must_hold() {
    let mut r = record("1234");
    r.battery = Some(50.0);
    assert!(
        Query::parse(&["filter:battery:>:10", "filter:serial_number:=:23"])
            .unwrap()
            .matches(&r)
    );
    assert!(
        !Query::parse(&["filter:battery:>:10", "filter:serial_number:=:9"])
            .unwrap()
            .matches(&r)
    );
    assert!(Query::default().matches(&r));
}

#[test]
fn values_order_by_type_and_missing_last() {
    let mut num = record("1");
    num.extra.insert("v".into(), json!(10));
    let mut small = record("2");
    small.extra.insert("v".into(), json!(9));
    let mut text = record("3");
    text.extra.insert("v".into(), json!("1"));
    let mut flag = record("4");
    flag.extra.insert("v".into(), json!(false));
    let mut list = record("5");
    list.extra.insert("v".into(), json!([]));
    let missing = record("6");
    let mut null = record("7");
    null.extra.insert("v".into(), serde_json::Value::Null);
    let all = [&null, &missing, &list, &flag, &text, &num, &small];
    let serials = |q: &str| -> Vec<&str> {
        Query::parse(&[q])
            .unwrap()
            .apply(all)
            .iter()
            .map(|r| r.serial_number.as_str())
            .collect()
    };
    assert_eq!(serials("sort:v:<:"), ["2", "1", "3", "4", "5", "6", "7"]);
    assert_eq!(serials("sort:v:>:"), ["5", "4", "3", "1", "2", "6", "7"]);
}

#[test]
fn strings_order_by_code_point() {
    let mut a = record("1");
    a.country = "Z".into();
    let mut b = record("2");
    b.country = "a".into();
    let mut c = record("3");
    c.country = "é".into();
    let q = Query::parse(&["sort:country:<:abc"]).unwrap();
    let order: Vec<&str> = q
        .apply([&c, &b, &a])
        .iter()
        .map(|r| r.country.as_str())
        .collect();
    assert_eq!(order, ["Z", "a", "é"]);
}

#[test]
fn later_keys_break_ties_then_serial() {
    let mut a = record("3");
    a.country = "AT".into();
    a.battery = Some(1.0);
    let mut b = record("1");
    b.country = "AT".into();
    b.battery = Some(2.0);
    let mut c = record("2");
    c.country = "AT".into();
    c.battery = Some(2.0);
    let q = Query::parse(&["sort:country:<:", "sort:battery:>:"]).unwrap();
    let order: Vec<&str> = q
        .apply([&a, &b, &c])
        .iter()
        .map(|r| r.serial_number.as_str())
        .collect();
    assert_eq!(order, ["1", "2", "3"]);
}
