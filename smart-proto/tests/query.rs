//! The FILT grammar and its evaluation (PROTOCOL.md §8), including the original test suite's cases.
#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use std::cmp::Ordering;

use proptest::prelude::*;
use serde_json::{Value, json};
use smart_proto::query::MAX_CLAUSES;
use smart_proto::{
    Clause, Direction, Error, Filter, Op, Query, Record, Serial, Sort, SortKind, Timestamp,
};

fn device(serial: &str) -> Record {
    Record::new(Serial::new(serial).unwrap(), "EET", Timestamp::UNIX_EPOCH)
}

/// The five devices of the original test suite, with values that tell them apart.
fn fleet() -> Vec<Record> {
    let rows = [
        ("1234", 100.0, "v1", "8010"),
        ("1235", 200.0, "v2", "8020"),
        ("1236", 300.0, "v1", "8020"),
        ("1237", 400.0, "v2", "8040"),
        ("1238", 500.0, "v2", "9010"),
    ];
    rows.iter()
        .map(|&(serial, inject, version, postcode)| {
            let mut r = device(serial);
            r.power_inject = Some(inject);
            version.clone_into(&mut r.solmate_version);
            postcode.clone_into(&mut r.postcode);
            r
        })
        .collect()
}

fn serials<S: AsRef<str>>(clauses: &[S], records: &[Record]) -> Vec<String> {
    let query = Query::parse(clauses).unwrap();
    query
        .apply(records)
        .iter()
        .map(|r| r.serial_number.to_string())
        .collect()
}

#[test]
fn original_suite_single_serial_match() {
    assert_eq!(
        serials(&["filter:serial_number:=:1234"], &fleet()),
        ["1234"]
    );
}

#[test]
fn original_suite_three_filters_give_1237() {
    let clauses = [
        "filter:power_inject:>=:300",
        "filter:solmate_version:=:v2",
        "filter:postcode:^:8",
    ];
    assert_eq!(serials(&clauses, &fleet()), ["1237"]);
    // Each filter alone lets more through, so the result really is their conjunction.
    assert_eq!(serials(&clauses[..1], &fleet()), ["1236", "1237", "1238"]);
    assert_eq!(serials(&clauses[1..2], &fleet()), ["1235", "1237", "1238"]);
    assert_eq!(
        serials(&clauses[2..], &fleet()),
        ["1234", "1235", "1236", "1237"]
    );
}

#[test]
fn original_suite_descending_sorts() {
    let order = serials(
        &["sort:postcode:>:abc", "sort:serial_number:>:abc"],
        &fleet(),
    );
    assert_eq!(order, ["1238", "1237", "1236", "1235", "1234"]);
    assert_eq!(order.first().map(String::as_str), Some("1238"));
    assert_eq!(order.last().map(String::as_str), Some("1234"));
    // The secondary key decides between 1235 and 1236, which share a postcode.
    let order = serials(
        &["sort:postcode:>:abc", "sort:serial_number:<:abc"],
        &fleet(),
    );
    assert_eq!(order, ["1238", "1237", "1235", "1236", "1234"]);
}

#[test]
fn seed_query_serial_contains_zero_ascending() {
    let records: Vec<Record> = ["2032", "0001", "1234", "0023", "1009"]
        .into_iter()
        .map(device)
        .collect();
    let order = serials(
        &["filter:serial_number:=:0", "sort:serial_number:<:abc"],
        &records,
    );
    assert_eq!(order, ["0001", "0023", "1009", "2032"]);
}

#[test]
fn empty_query_is_every_device_serial_ascending() {
    let mut records = fleet();
    records.reverse();
    assert_eq!(
        serials::<&str>(&[], &records),
        ["1234", "1235", "1236", "1237", "1238"]
    );
}

#[test]
fn values_with_colons() {
    let mut r = device("0001");
    r.local_time = Some("2024-03-17 14:59:13.047108".to_owned());
    let records = [r];
    assert_eq!(serials(&["filter:local_time:=:14:59"], &records), ["0001"]);
    assert_eq!(
        serials(&["filter:local_time:^:2024-03-17 14:59:13"], &records),
        ["0001"]
    );
    assert!(serials(&["filter:local_time:=:14:58"], &records).is_empty());
    let Clause::Filter(filter) = Clause::parse("filter:local_time:=:14:59").unwrap() else {
        panic!("not a filter")
    };
    assert_eq!(filter.value, "14:59");
}

#[test]
fn numeric_strings_compare_as_numbers() {
    assert_eq!(
        serials(&["filter:postcode:>:8020"], &fleet()),
        ["1237", "1238"]
    );
    assert_eq!(
        serials(&["filter:postcode:==:8020.0"], &fleet()),
        ["1235", "1236"]
    );
    assert_eq!(serials(&["filter:power_inject:<:200"], &fleet()), ["1234"]);
    assert_eq!(
        serials(&["filter:power_inject:<=:200"], &fleet()),
        ["1234", "1235"]
    );
    assert_eq!(serials(&["filter:power_inject:>:450"], &fleet()), ["1238"]);
    // A field whose text is not a number never passes a numeric filter.
    assert!(serials(&["filter:solmate_version:>:0"], &fleet()).is_empty());
}

#[test]
fn text_form_of_numbers_is_shortest() {
    let mut records = fleet();
    records[0].battery = Some(92.5);
    assert_eq!(serials(&["filter:power_inject:=:500"], &records), ["1238"]);
    assert!(serials(&["filter:power_inject:=:500.0"], &records).is_empty());
    assert_eq!(serials(&["filter:battery:^:92.5"], &records), ["1234"]);
}

#[test]
fn missing_and_null_fields_match_no_filter() {
    let mut records = fleet();
    records[0].extra.insert("note".to_owned(), Value::Null);
    records[1].extra.insert("note".to_owned(), json!("hello"));
    // An empty VALUE is a substring and a prefix of every text, but not of a null.
    assert_eq!(serials(&["filter:note:=:"], &records), ["1235"]);
    assert_eq!(serials(&["filter:note:^:"], &records), ["1235"]);
    assert!(serials(&["filter:note:>=:-1e300"], &records).is_empty());
    assert!(serials(&["filter:battery:=:"], &records).is_empty());
    assert!(serials(&["filter:nonexistent:=:"], &records).is_empty());
}

#[test]
fn null_values_sort_last_in_both_directions() {
    let mut records = fleet();
    records[2].power_inject = None;
    records[4].power_inject = None;
    assert_eq!(
        serials(&["sort:power_inject:<:123"], &records),
        ["1234", "1235", "1237", "1236", "1238"]
    );
    assert_eq!(
        serials(&["sort:power_inject:>:123"], &records),
        ["1237", "1235", "1234", "1236", "1238"]
    );
}

#[test]
fn kind_word_does_not_change_the_order() {
    let base = serials(&["sort:postcode:<:abc"], &fleet());
    assert_eq!(serials(&["sort:postcode:<:123"], &fleet()), base);
    assert_eq!(serials(&["sort:postcode:<:"], &fleet()), base);
}

#[test]
fn command_word_is_case_insensitive() {
    assert_eq!(
        serials(&["FILTER:serial_number:=:1234"], &fleet()),
        ["1234"]
    );
    assert_eq!(serials(&["Sort:serial_number:>:abc"], &fleet())[0], "1238");
}

fn reason(clause: &str) -> String {
    match Query::parse(&[clause]) {
        Err(Error::Query {
            clause: quoted,
            reason,
        }) => {
            assert_eq!(quoted, clause);
            reason
        }
        other => panic!("{clause}: {other:?}"),
    }
}

#[test]
fn bad_clauses_are_clear_errors() {
    assert_eq!(
        reason("filter:battery:~:5"),
        r#"unknown operator "~": expected one of = == < > <= >= ^"#
    );
    assert_eq!(
        reason("filter:battery:!=:5"),
        r#"unknown operator "!=": expected one of = == < > <= >= ^"#
    );
    assert_eq!(
        reason("filter:battery:>=:lots"),
        r#"operator ">=" compares numbers, but "lots" is not a number"#
    );
    assert_eq!(
        reason("filter:battery:==:"),
        r#"operator "==" compares numbers, but "" is not a number"#
    );
    assert_eq!(
        reason("order:battery:<:abc"),
        r#"unknown command "order": expected filter or sort"#
    );
    assert_eq!(
        reason("battery"),
        "expected filter:FIELD:OP:VALUE or sort:FIELD:DIR:KIND"
    );
    assert_eq!(
        reason("filter:bat.tery:=:1"),
        r#"field name "bat.tery" may only contain letters, digits and _"#
    );
    assert_eq!(
        reason("sort:battery:desc:abc"),
        r#"unknown direction "desc": expected < (ascending) or > (descending)"#
    );
    assert_eq!(
        reason("sort:battery:<:alpha"),
        r#"unknown sort kind "alpha": expected abc, 123 or nothing"#
    );
    let err = Query::parse(&["filter:battery:~:5"]).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"bad query clause "filter:battery:~:5": unknown operator "~": expected one of = == < > <= >= ^"#
    );
}

#[test]
fn clause_count_limit() {
    let clauses = vec!["filter:serial_number:=:1"; MAX_CLAUSES];
    assert_eq!(Query::parse(&clauses).unwrap().filters.len(), 64);
    let clauses = vec!["filter:serial_number:=:1"; MAX_CLAUSES + 1];
    let err = Query::parse(&clauses).unwrap_err();
    assert_eq!(err, Error::TooManyClauses(65));
    assert_eq!(err.to_string(), "too many query clauses: 65 (at most 64)");
}

#[test]
fn first_bad_clause_fails_the_query() {
    let err = Query::parse(&["sort:battery:<:", "filter:battery:?:1", "bogus"]).unwrap_err();
    assert!(err.to_string().contains("filter:battery:?:1"), "{err}");
}

// ---- properties -------------------------------------------------------------------------------

fn field_name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_]{1,16}"
}

fn number_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |x| x.is_finite())
            .prop_map(|x| x.to_string())
            .prop_filter("within the value cap", |s| s.len()
                <= smart_proto::query::MAX_VALUE_BYTES),
        (any::<f64>().prop_filter("finite", |x| x.is_finite())).prop_map(|x| format!("{x:e}")),
    ]
}

fn filter() -> impl Strategy<Value = Filter> {
    let text = (
        field_name(),
        prop::sample::select(vec![Op::Contains, Op::StartsWith]),
        any::<String>(),
    )
        .prop_map(|(field, op, value)| Filter { field, op, value });
    let numeric = (
        field_name(),
        prop::sample::select(vec![Op::Eq, Op::Lt, Op::Gt, Op::Le, Op::Ge]),
        number_text(),
    )
        .prop_map(|(field, op, value)| Filter { field, op, value });
    prop_oneof![text, numeric]
}

fn sort() -> impl Strategy<Value = Sort> {
    (
        field_name(),
        prop::sample::select(vec![Direction::Ascending, Direction::Descending]),
        prop::sample::select(vec![SortKind::Abc, SortKind::Num, SortKind::Unspecified]),
    )
        .prop_map(|(field, dir, kind)| Sort { field, dir, kind })
}

fn query() -> impl Strategy<Value = Query> {
    (
        prop::collection::vec(filter(), 0..32),
        prop::collection::vec(sort(), 0..32),
    )
        .prop_map(|(filters, sorts)| Query { filters, sorts })
}

/// Values of mixed types for one extra field, including null and absent.
fn loose_value() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        Just(Some(Value::Null)),
        (-5_i64..5).prop_map(|n| Some(json!(n))),
        (-50_i64..50).prop_map(|n| Some(json!(n as f64 / 4.0))),
        "[a-c0-9A ]{0,3}".prop_map(|s| Some(json!(s))),
        any::<bool>().prop_map(|b| Some(json!(b))),
        Just(Some(json!([1]))),
        Just(Some(json!({"k": 1}))),
    ]
}

fn record() -> impl Strategy<Value = Record> {
    (
        "[0-9]{1,3}",
        prop::option::of((-4_i64..4).prop_map(|n| n as f64 / 2.0)),
        "[a-cA-C]{0,2}",
        loose_value(),
        any::<bool>(),
    )
        .prop_map(|(serial, battery, country, v, online)| {
            let mut r = device(&serial);
            r.battery = battery;
            r.country = country;
            r.online = online;
            if let Some(v) = v {
                r.extra.insert("v".to_owned(), v);
            }
            r
        })
}

fn sort_query() -> impl Strategy<Value = Query> {
    let key = (
        prop::sample::select(vec![
            "battery",
            "country",
            "v",
            "online",
            "serial_number",
            "absent",
        ]),
        prop::sample::select(vec![Direction::Ascending, Direction::Descending]),
    )
        .prop_map(|(field, dir)| Sort {
            field: field.to_owned(),
            dir,
            kind: SortKind::Unspecified,
        });
    prop::collection::vec(key, 0..4).prop_map(|sorts| Query {
        filters: Vec::new(),
        sorts,
    })
}

proptest! {
    #[test]
    fn query_round_trips_through_clauses(q in query()) {
        let clauses = q.to_clauses();
        prop_assert_eq!(Query::parse(&clauses).unwrap(), q);
    }

    #[test]
    fn clause_text_round_trips(f in filter(), s in sort()) {
        prop_assert_eq!(Clause::parse(&f.to_string()).unwrap(), Clause::Filter(f.clone()));
        prop_assert_eq!(Clause::parse(&s.to_string()).unwrap(), Clause::Sort(s));
    }

    #[test]
    fn clause_parse_never_panics(s in any::<String>()) {
        let _ = Clause::parse(&s);
    }

    #[test]
    fn near_miss_clauses_never_panic(
        command in prop::sample::select(vec!["filter", "FILTER", "sort", "Sort", "x", ""]),
        rest in "[a-z_:<>=^!0-9. é]{0,20}",
    ) {
        let clause = format!("{command}:{rest}");
        if let Err(err) = Clause::parse(&clause) {
            prop_assert!(matches!(err, Error::Query { .. }), "{:?}", err);
        }
    }

    #[test]
    fn sort_order_is_total(
        records in prop::collection::vec(record(), 3),
        q in sort_query(),
    ) {
        let (a, b, c) = (&records[0], &records[1], &records[2]);
        prop_assert_eq!(q.compare(a, a), Ordering::Equal);
        prop_assert_eq!(q.compare(a, b), q.compare(b, a).reverse());
        prop_assert_eq!(q.compare(b, c), q.compare(c, b).reverse());
        for (x, y, z) in [(a, b, c), (a, c, b), (b, a, c), (b, c, a), (c, a, b), (c, b, a)] {
            if q.compare(x, y) != Ordering::Greater && q.compare(y, z) != Ordering::Greater {
                prop_assert_ne!(q.compare(x, z), Ordering::Greater);
            }
        }
    }

    #[test]
    fn apply_sorts_and_filters_like_compare_and_matches(
        records in prop::collection::vec(record(), 0..12),
        q in sort_query(),
        f in prop::sample::select(vec![
            "filter:v:=:a", "filter:v:>:0", "filter:v:^:1", "filter:battery:<=:0", "filter:country:=:B",
            "filter:online:=:true", "filter:v:==:0.5",
        ]),
    ) {
        let mut q = q;
        let Clause::Filter(filter) = Clause::parse(f).unwrap() else { unreachable!() };
        q.filters.push(filter);
        let out = q.apply(&records);
        let expected = records.iter().filter(|r| q.matches(r)).count();
        prop_assert_eq!(out.len(), expected);
        for pair in out.windows(2) {
            prop_assert_ne!(q.compare(pair[0], pair[1]), Ordering::Greater);
        }
    }
}
