//! Property tests: what the library writes parses back to the same value, no input panics a parser, and
//! normalization is idempotent on its own output.
#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use std::fmt::Write as _;

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use smart_proto::normalize::{RUNTIME_KEYS, SERVER_KEYS};
use smart_proto::{
    Header, Kind, MessageId, Payload, Record, Serial, ServerMessage, Timestamp, normalize,
    parse_body, parse_dashboard_message, parse_device_message, parse_envelope,
    parse_python_literal, parse_server_message,
};

// ---------------------------------------------------------------------------------------------------------
// Strategies

fn arb_message_id() -> impl Strategy<Value = MessageId> {
    "[0-9]{1,9}".prop_map(|s| MessageId::new(&s).unwrap())
}

fn arb_serial() -> impl Strategy<Value = Serial> {
    "[A-Za-z0-9_-]{1,32}".prop_map(|s| Serial::new(&s).unwrap())
}

fn arb_header() -> impl Strategy<Value = Header> {
    (arb_message_id(), arb_serial()).prop_map(|(id, serial)| Header { id, serial })
}

fn arb_scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ]
}

fn arb_value() -> impl Strategy<Value = Value> {
    arb_scalar().prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(any::<String>(), arb_value(), 0..8)
        .prop_map(|m| m.into_iter().collect())
}

/// Text that exercises the parsers' grammar more often than uniform random strings do.
fn arb_syntaxish() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            prop::sample::select(vec![
                "{",
                "}",
                "[",
                "]",
                "(",
                ")",
                "'",
                "\"",
                ":",
                ",",
                " ",
                "\\",
                "\\x4",
                "\\u00e9",
                "\\U0001F600",
                "\\ud83d",
                "True",
                "False",
                "None",
                "null",
                "1",
                "-2.5",
                ".5",
                "5.",
                "1e3",
                "0116",
                "0001",
                "u'",
                "type",
                "message",
                "UPDT",
                "INIT",
                "FILT",
                "INFO",
                "\n",
                "é",
                "9999999999999999999999",
            ])
            .prop_map(str::to_owned),
            any::<char>().prop_map(String::from),
        ],
        0..40,
    )
    .prop_map(|parts| parts.concat())
}

// ---------------------------------------------------------------------------------------------------------
// A test-side Python `repr` writer, to feed the Python-literal parser what a Python device would send.

fn py_str(s: &str, out: &mut String) {
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 || c == '\x7f' => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('\'');
}

/// `str(value)` as Python writes it; lists become tuples and containers get trailing commas when asked.
fn py_repr(v: &Value, out: &mut String, tuples: bool, trailing: bool) {
    match v {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => {
                let _ = write!(out, "{i}");
            }
            (None, Some(u), _) => {
                let _ = write!(out, "{u}");
            }
            (None, None, Some(f)) => {
                let _ = write!(out, "{f:?}");
            }
            _ => unreachable!("a JSON number is an integer or a float"),
        },
        Value::String(s) => py_str(s, out),
        Value::Array(items) => {
            let (open, close) = if tuples { ('(', ')') } else { ('[', ']') };
            out.push(open);
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(item, out, tuples, trailing);
            }
            // A one-item tuple needs its comma.
            if (trailing || (tuples && items.len() == 1)) && !items.is_empty() {
                out.push(',');
            }
            out.push(close);
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_str(k, out);
                out.push_str(": ");
                py_repr(v, out, tuples, trailing);
            }
            if trailing && !map.is_empty() {
                out.push(',');
            }
            out.push('}');
        }
    }
}

fn py(v: &Value, tuples: bool, trailing: bool) -> String {
    let mut out = String::new();
    py_repr(v, &mut out, tuples, trailing);
    out
}

// ---------------------------------------------------------------------------------------------------------
// Round trips

proptest! {
    #[test]
    fn header_round_trips(header in arb_header(), body in any::<String>()) {
        let message = format!("{header}:{body}");
        let (parsed, rest) = Header::parse(&message).unwrap();
        prop_assert_eq!(parsed, header);
        prop_assert_eq!(rest, body.as_str());
    }

    #[test]
    fn json_bodies_round_trip(body in arb_object()) {
        let value = Value::Object(body.clone());
        prop_assert_eq!(&parse_body(&value.to_string()).unwrap(), &body);
        prop_assert_eq!(&parse_body(&serde_json::to_string_pretty(&value).unwrap()).unwrap(), &body);
    }

    #[test]
    fn python_bodies_round_trip(body in arb_object(), tuples in any::<bool>(), trailing in any::<bool>()) {
        let text = py(&Value::Object(body.clone()), tuples, trailing);
        prop_assert_eq!(parse_body(&text).unwrap(), body, "{}", text);
    }

    #[test]
    fn python_literals_round_trip(value in arb_value(), trailing in any::<bool>()) {
        prop_assert_eq!(parse_python_literal(&py(&value, false, trailing)).unwrap(), value);
    }

    #[test]
    fn envelopes_round_trip(
        kind in prop::sample::select(vec![Kind::Info, Kind::Filt, Kind::Init, Kind::Updt]),
        text in any::<String>(),
        reason in proptest::option::of(any::<String>()),
        extra in any::<bool>(),
    ) {
        // Without the extra list every value is a string, which takes the scanning fast path.
        let mut obj = json!({"type": kind.as_str(), "message": text});
        if extra {
            obj["extra"] = json!([1, {"a": null}]);
        }
        if let Some(r) = &reason {
            obj["reason"] = Value::String(r.clone());
        }
        let frame = obj.to_string();
        let env = parse_envelope(&frame).unwrap();
        prop_assert_eq!(env.kind, kind);
        prop_assert_eq!(env.message, Payload::Text(text.clone().into()));
        prop_assert_eq!(env.reason.as_deref(), reason.as_deref());

        let mut python = format!("{{'type': '{}', 'message': ", kind.as_str());
        py_str(&text, &mut python);
        python.push('}');
        let env = parse_envelope(&python).unwrap();
        prop_assert_eq!((env.kind, env.message), (kind, Payload::Text(text.into())));
    }

    #[test]
    fn list_payloads_round_trip(items in prop::collection::vec(arb_value(), 0..5)) {
        let frame = json!({"type": "FILT", "message": items}).to_string();
        prop_assert_eq!(parse_envelope(&frame).unwrap().message, Payload::List(items));
    }

    #[test]
    fn server_messages_round_trip(
        header in arb_header(),
        maybe_header in proptest::option::of(arb_header()),
        text in any::<String>(),
        body in arb_object(),
    ) {
        let ambiguous = text == "ERROR"
            || Header::parse(&text).is_ok_and(|(_, rest)| rest == "OK" || rest == "ERROR");
        let mut messages = vec![
            ServerMessage::Ok(header.clone()),
            ServerMessage::Error { header: maybe_header, reason: text.clone() },
            ServerMessage::Updt { header, body },
        ];
        if !ambiguous {
            messages.push(ServerMessage::Info(text));
        }
        for msg in messages {
            let frame = msg.to_frame();
            prop_assert_eq!(parse_server_message(&frame).unwrap(), msg, "{}", frame);
            // Strict JSON, always.
            prop_assert!(serde_json::from_str::<Value>(&frame).is_ok());
        }
    }

    #[test]
    fn init_frames_round_trip(
        devices in prop::collection::vec((arb_serial(), any::<String>(), proptest::option::of(-1e9..1e9f64)), 0..6),
    ) {
        let records: Vec<Record> = devices
            .into_iter()
            .map(|(serial, country, battery)| {
                let mut r = Record::new(serial, "EET", Timestamp::from_unix_micros(1_710_117_813_256_667));
                r.country = country;
                r.battery = battery;
                r
            })
            .collect();
        let msg = ServerMessage::Init(records);
        prop_assert_eq!(parse_server_message(&msg.to_frame()).unwrap(), msg);
    }

    #[test]
    fn device_messages_round_trip(header in arb_header(), body in arb_object(), init in any::<bool>()) {
        let kind = if init { "INIT" } else { "UPDT" };
        let message = format!("{header}:{}", Value::Object(body));
        let frame = json!({"type": kind, "message": message}).to_string();
        let Ok(msg) = parse_device_message(&frame) else {
            // Random bodies may hit known fields with wrong types; those are covered elsewhere.
            return Ok(());
        };
        prop_assume!(!msg.update.as_map().keys().any(|k| k.starts_with('_')));
        prop_assert_eq!(&msg.header, &header);
        prop_assert_eq!(parse_device_message(&msg.to_frame()).unwrap(), msg);
    }
}

// ---------------------------------------------------------------------------------------------------------
// Totality: nothing panics

fn parse_everything(s: &str) {
    let _ = parse_envelope(s);
    let _ = parse_body(s);
    let _ = parse_python_literal(s);
    let _ = Header::parse(s);
    let _ = Kind::parse(s);
    let _ = MessageId::new(s);
    let _ = Serial::new(s);
    let _ = parse_device_message(s);
    let _ = parse_dashboard_message(s);
    let _ = parse_server_message(s);
    // Also as the payload of a frame, to reach the header and body parsers through the envelope.
    let frame = json!({"type": "UPDT", "message": s}).to_string();
    let _ = parse_device_message(&frame);
    let _ = parse_server_message(&frame);
    let _ = parse_device_message(&format!("{{'type': 'INIT', 'message': '0001:0001:{s}'}}"));
    let _ = parse_device_message(
        &json!({"type": "INIT", "message": format!("0001:0001:{s}")}).to_string(),
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn arbitrary_strings_never_panic(s in any::<String>()) {
        parse_everything(&s);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        parse_everything(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn syntax_like_strings_never_panic(s in arb_syntaxish()) {
        parse_everything(&s);
        parse_everything(&format!("{{{s}}}"));
        parse_everything(&format!("{{'a': {s}}}"));
    }
}

#[test]
fn hostile_nesting_never_panics() {
    for open in ["[", "(", "{'a': ", "{\"a\": "] {
        parse_everything(&open.repeat(50_000));
    }
}

// ---------------------------------------------------------------------------------------------------------
// Normalization

fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "a",
            "_a",
            "__a",
            "",
            "_",
            "battery",
            "_battery",
            "serial_number",
            "_serial_number",
            "websocket",
            "_websocket",
            "owner",
            "_owner",
            "__owner",
            "online",
            "x_",
        ])
        .prop_map(str::to_owned),
        "_{0,3}[a-c]{0,2}",
    ]
}

fn arb_body() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(arb_key(), arb_scalar(), 0..10)
        .prop_map(|m| m.into_iter().collect())
}

proptest! {
    #[test]
    fn normalize_is_idempotent_without_leading_underscores(body in arb_body(), serial in "[0-9]{1,2}") {
        let serial = Serial::new(&serial).unwrap();
        let Ok(once) = normalize(body, &serial) else { return Ok(()) };
        prop_assume!(!once.as_map().keys().any(|k| k.starts_with('_')));
        prop_assert_eq!(normalize(once.clone().into_map(), &serial).unwrap(), once);
    }

    #[test]
    fn normalize_follows_the_rules(body in arb_body()) {
        let serial = Serial::new("0001").unwrap();
        // Make the serial check pass so the other rules are always observed.
        let mut body = body;
        for key in ["serial_number", "_serial_number"] {
            if body.contains_key(key) {
                body.insert(key.to_owned(), json!("0001"));
            }
        }
        let out = normalize(body.clone(), &serial).unwrap().into_map();
        for key in out.keys() {
            prop_assert!(key != "serial_number");
            prop_assert!(!RUNTIME_KEYS.contains(&key.as_str()) && !SERVER_KEYS.contains(&key.as_str()));
        }
        for (key, value) in &body {
            let name = key.strip_prefix('_').unwrap_or(key);
            let dropped = name == "serial_number" || RUNTIME_KEYS.contains(&name) || SERVER_KEYS.contains(&name);
            if dropped {
                continue;
            }
            let plain_present = key.starts_with('_') && !name.starts_with('_') && body.contains_key(name);
            if plain_present {
                // The plain key wins over its underscored twin.
                prop_assert_eq!(&out[name], &body[name]);
            } else {
                prop_assert_eq!(&out[name], value);
            }
        }
    }
}

#[test]
fn double_underscore_is_not_idempotent_by_the_rules() {
    let serial = Serial::new("1").unwrap();
    let Value::Object(body) = json!({"__x": 1}) else {
        unreachable!()
    };
    let once = normalize(body, &serial).unwrap();
    assert_eq!(once.as_map(), json!({"_x": 1}).as_object().unwrap());
    let twice = normalize(once.into_map(), &serial).unwrap();
    assert_eq!(twice.as_map(), json!({"x": 1}).as_object().unwrap());
}
