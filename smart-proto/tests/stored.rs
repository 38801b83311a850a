//! Every device message the library accepts is stored as a record that reads back identically (issue 9,
//! item 2): applied to a new record as the server applies it, written with `to_json`, read with
//! `from_json`. Bodies nest up to and beyond the limit, hold big and small integers, floats, unicode and
//! escaped keys, underscore keys and known fields, as JSON and as Python literals.
#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use std::fmt::Write as _;

use proptest::prelude::*;
use serde_json::Value;
use smart_proto::body::MAX_DEPTH;
use smart_proto::limits::MAX_SAFE_INTEGER;
use smart_proto::{Record, Timestamp, parse_device_message};

/// A body value as a device writes it: numbers keep their spelling (so integers too long for 64 bits
/// can be sent), strings are written as each language escapes them.
#[derive(Debug, Clone)]
enum Node {
    Null,
    Bool(bool),
    /// A number token, as written.
    Number(String),
    Str(String),
    List(Vec<Node>),
    Dict(Vec<(String, Node)>),
}

impl Node {
    fn write(&self, python: bool, out: &mut String) {
        match self {
            Node::Null => out.push_str(if python { "None" } else { "null" }),
            Node::Bool(b) => out.push_str(match (python, b) {
                (true, true) => "True",
                (true, false) => "False",
                (false, true) => "true",
                (false, false) => "false",
            }),
            Node::Number(token) => out.push_str(token),
            Node::Str(s) => write_str(s, python, out),
            Node::List(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    item.write(python, out);
                }
                out.push(']');
            }
            Node::Dict(entries) => {
                out.push('{');
                for (i, (key, value)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_str(key, python, out);
                    out.push_str(": ");
                    value.write(python, out);
                }
                out.push('}');
            }
        }
    }
}

fn write_str(s: &str, python: bool, out: &mut String) {
    if !python {
        out.push_str(&Value::String(s.to_owned()).to_string());
        return;
    }
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('\'');
}

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        (-1000_i64..1000).prop_map(|n| n.to_string()),
        (0..=3_u64).prop_map(|d| (MAX_SAFE_INTEGER - 1 + d).to_string()),
        (0..=3_u64).prop_map(|d| format!("-{}", MAX_SAFE_INTEGER - 1 + d)),
        "[1-9][0-9]{19,30}",
        any::<f64>()
            .prop_filter("finite", |x| x.is_finite())
            .prop_map(|x| format!("{x:?}")),
        any::<f32>()
            .prop_filter("finite", |x| x.is_finite())
            .prop_map(|x| format!("{x:e}")),
        Just("-0".to_owned()),
        Just("0.1".to_owned()),
        Just("1e300".to_owned()),
        Just("5e-324".to_owned()),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "battery",
            "power_income",
            "capacity",
            "postcode",
            "country",
            "pv_connectors",
            "local_time",
            "software_version",
            "_battery",
            "_country",
            "__x",
            "___y",
            "_",
            "",
            "é",
            "日本",
            "😀",
            "a\"b",
            "back\\slash",
            "tab\tkey",
            "it's",
            "\u{1}",
            "online",
            "websocket",
        ])
        .prop_map(str::to_owned),
        "[a-z_]{1,8}",
        any::<String>(),
    ]
}

fn leaf() -> impl Strategy<Value = Node> {
    prop_oneof![
        Just(Node::Null),
        any::<bool>().prop_map(Node::Bool),
        number().prop_map(Node::Number),
        any::<String>().prop_map(Node::Str),
        "[0-9 .]{0,6}".prop_map(Node::Str),
    ]
}

fn tree() -> impl Strategy<Value = Node> {
    leaf().prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Node::List),
            prop::collection::vec((key(), inner), 0..4).prop_map(Node::Dict),
        ]
    })
}

/// A value nested `levels` deep around `inner`, in lists or dicts.
fn deep() -> impl Strategy<Value = Node> {
    (MAX_DEPTH - 3..MAX_DEPTH + 3, any::<bool>(), tree()).prop_map(|(levels, dicts, inner)| {
        let mut node = inner;
        for _ in 0..levels {
            node = if dicts {
                Node::Dict(vec![("k".to_owned(), node)])
            } else {
                Node::List(vec![node])
            };
        }
        node
    })
}

fn body() -> impl Strategy<Value = Vec<(String, Node)>> {
    prop::collection::vec(
        (key(), prop_oneof![4 => leaf(), 2 => tree(), 1 => deep()]),
        0..6,
    )
}

/// How deep a value nests (a scalar is 0).
fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Whether an integer a browser would round sits anywhere in `value`.
fn has_unsafe_integer(value: &Value) -> bool {
    match value {
        Value::Number(n) => n
            .as_i64()
            .map(i64::unsigned_abs)
            .or(n.as_u64())
            .is_some_and(|m| m > MAX_SAFE_INTEGER),
        Value::Array(items) => items.iter().any(has_unsafe_integer),
        Value::Object(map) => map.values().any(has_unsafe_integer),
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(768))]

    #[test]
    fn every_accepted_message_is_stored_as_a_record_that_reads_back(
        entries in body(),
        python_body in any::<bool>(),
        python_envelope in any::<bool>(),
    ) {
        let mut text = String::new();
        Node::Dict(entries).write(python_body, &mut text);
        let message = format!("0116:0001:{text}");
        let frame = if python_envelope {
            let mut frame = String::from("{'type': 'UPDT', 'message': ");
            write_str(&message, true, &mut frame);
            frame.push('}');
            frame
        } else {
            serde_json::json!({"type": "UPDT", "message": message}).to_string()
        };
        let Ok(msg) = parse_device_message(&frame) else {
            // Refused (too deep, an unsafe integer, a wrong type...): nothing is stored.
            return Ok(());
        };
        let first = Timestamp::from_unix_micros(1_710_117_813_256_667);
        let mut record = Record::new(msg.header.serial.clone(), "EET", first);
        record.apply(&msg.update, Timestamp::from_unix_micros(1_710_117_813_256_668));
        let json = record.to_json();
        let stored: Value = serde_json::from_str(&json).unwrap();
        // The record nests no deeper than the limit, so that even framed a few levels deeper (as the
        // server's store does) serde_json's limit of 128 is far away.
        prop_assert!(depth(&stored) <= MAX_DEPTH, "{} levels: {}", depth(&stored), json);
        prop_assert!(!has_unsafe_integer(&stored), "{}", json);
        let back = Record::from_json(&json);
        prop_assert_eq!(back.as_ref(), Ok(&record), "{}", json);
        // Written again, the record is the same text.
        prop_assert_eq!(back.unwrap().to_json(), json);
    }
}
