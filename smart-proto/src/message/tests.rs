#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::normalize::normalize;

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

/// The hand-written JSON writer that `serde_json` with [`PythonSeparators`] replaced: the frames must
/// stay byte for byte what they were.
mod hand_written {
    use std::fmt::Write as _;

    use serde_json::{Map, Value};

    /// A JSON string literal, quotes included.
    fn write_json_str(out: &mut String, s: &str) {
        out.push('"');
        write_json_chars(out, s);
        out.push('"');
    }

    /// The inside of a JSON string literal.
    fn write_json_chars(out: &mut String, s: &str) {
        let mut start = 0;
        for (i, b) in s.bytes().enumerate() {
            let esc = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x08 => "\\b",
                0x0c => "\\f",
                0..=0x1f => "",
                _ => continue,
            };
            out.push_str(&s[start..i]);
            if esc.is_empty() {
                let _ = write!(out, "\\u{b:04x}");
            } else {
                out.push_str(esc);
            }
            start = i + 1;
        }
        out.push_str(&s[start..]);
    }

    fn map_entries(map: &Map<String, Value>) -> impl Iterator<Item = (&str, &Value)> {
        map.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// `{"a": 1, "b": [1, 2]}`, as Python's `json.dumps` separates items.
    fn write_json_object<'a>(
        out: &mut String,
        entries: impl IntoIterator<Item = (&'a str, &'a Value)>,
    ) {
        out.push('{');
        for (i, (k, v)) in entries.into_iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            write_json_str(out, k);
            out.push_str(": ");
            write_json_value(out, v);
        }
        out.push('}');
    }

    fn write_json_value(out: &mut String, v: &Value) {
        match v {
            Value::Null => out.push_str("null"),
            Value::Bool(true) => out.push_str("true"),
            Value::Bool(false) => out.push_str("false"),
            Value::Number(n) => {
                let _ = write!(out, "{n}");
            }
            Value::String(s) => write_json_str(out, s),
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_json_value(out, item);
                }
                out.push(']');
            }
            Value::Object(map) => write_json_object(out, map_entries(map)),
        }
    }

    /// `{"type":KIND,"message":"MID:SERIAL:{body}"}` as it was written.
    pub(super) fn header_frame<'a>(
        kind: &str,
        header: &str,
        body: impl IntoIterator<Item = (&'a str, &'a Value)>,
    ) -> String {
        let mut out = format!(r#"{{"type":"{kind}","message":"{header}:"#);
        let mut inner = String::new();
        write_json_object(&mut inner, body);
        write_json_chars(&mut out, &inner);
        out.push_str("\"}");
        out
    }

    /// An INFO frame as it was written.
    pub(super) fn info(message: &str, reason: Option<&str>) -> String {
        let mut out = String::from(r#"{"type":"INFO","message":"#);
        write_json_str(&mut out, message);
        if let Some(reason) = reason {
            out.push_str(r#","reason":"#);
            write_json_str(&mut out, reason);
        }
        out.push('}');
        out
    }
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        "[\\x00-\\x7f\"\\\\é😀]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((any::<String>(), inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn frames_are_what_the_hand_written_writer_wrote(
        body in prop::collection::vec(("[ -~\\x00-\\x1f]{0,8}|.{0,4}", arb_json()), 0..6),
        text in any::<String>(),
        control in "[\\x00-\\x1f\"\\\\a\\x7f]{0,16}",
    ) {
        let header = Header::new("0116", "0001").unwrap();
        let body: Map<String, Value> = body.into_iter().collect();
        prop_assert_eq!(
            ServerMessage::Updt { header: header.clone(), body: body.clone() }.to_frame(),
            hand_written::header_frame("UPDT", "0116:0001", body.iter().map(|(k, v)| (k.as_str(), v)))
        );
        for text in [&text, &control] {
            prop_assert_eq!(ServerMessage::Info(text.clone()).to_frame(), hand_written::info(text, None));
            prop_assert_eq!(
                ServerMessage::Error { header: Some(header.clone()), reason: text.clone() }.to_frame(),
                hand_written::info("0116:0001:ERROR", Some(text))
            );
            prop_assert_eq!(
                ServerMessage::Error { header: None, reason: text.clone() }.to_frame(),
                hand_written::info("ERROR", Some(text))
            );
        }
        prop_assert_eq!(ServerMessage::Ok(header).to_frame(), hand_written::info("0116:0001:OK", None));
    }

    /// `write_frame` appends what `to_frame` returns (what `serde_json` writes for the envelope), for
    /// any header, after whatever the buffer held.
    #[test]
    fn write_frame_appends_the_frame(
        id in "[0-9]{1,8}",
        serial in "[A-Za-z0-9_-]{1,32}",
        reason in any::<String>(),
        before in ".{0,8}",
    ) {
        let header = Header::new(&id, &serial).unwrap();
        let text = format!("{id}:{serial}");
        for (msg, message, reason) in [
            (ServerMessage::Ok(header.clone()), format!("{text}:OK"), None),
            (
                ServerMessage::Error { header: Some(header.clone()), reason: reason.clone() },
                format!("{text}:ERROR"),
                Some(reason.as_str()),
            ),
        ] {
            let mut out = before.clone();
            msg.write_frame(&mut out);
            let serde = Frame { kind: "INFO", message: &message, reason }.to_json();
            prop_assert_eq!(&out[before.len()..], serde.as_str());
            prop_assert_eq!(&out[..before.len()], before.as_str());
            prop_assert_eq!(msg.to_frame(), serde);
        }
    }
}

#[test]
fn python_separators_and_escapes() {
    let v = json!({"a\"b": "line\nbreak\t\u{1}\u{7f}é😀\\", "n": [1, -2, 2.5, 1e300, null, true, false], "o": {}, "l": []});
    let Value::Object(body) = v.clone() else {
        panic!()
    };
    let message = header_message(&Header::new("1", "1").unwrap(), &body);
    let out = message.strip_prefix("1:1:").unwrap();
    assert_eq!(serde_json::from_str::<Value>(out).unwrap(), v);
    assert!(out.contains("\\u0001"));
    assert!(out.starts_with(r#"{"a\"b": "line\nbreak\t\u0001"#));
    assert!(
        out.contains(r#""l": [], "n": [1, -2, 2.5, 1e+300, null, true, false], "o": {}}"#),
        "{out}"
    );
}

#[test]
fn ok_and_error_replies_are_exact() {
    let h = Header::new("0116", "0001").unwrap();
    assert_eq!(
        ServerMessage::Ok(h.clone()).to_frame(),
        r#"{"type":"INFO","message":"0116:0001:OK"}"#
    );
    assert_eq!(
        ServerMessage::Error {
            header: Some(h),
            reason: "bad \"x\"".into()
        }
        .to_frame(),
        r#"{"type":"INFO","message":"0116:0001:ERROR","reason":"bad \"x\""}"#
    );
    assert_eq!(
        ServerMessage::Error {
            header: None,
            reason: "r".into()
        }
        .to_frame(),
        r#"{"type":"INFO","message":"ERROR","reason":"r"}"#
    );
}

#[test]
fn updt_frame_nests_a_json_string() {
    let h = Header::new("0008", "0001").unwrap();
    let frame = ServerMessage::Updt {
        header: h.clone(),
        body: obj(json!({"local_time": "2024-03-17 14:59:13.047108"})),
    }
    .to_frame();
    assert_eq!(
        frame,
        r#"{"type":"UPDT","message":"0008:0001:{\"local_time\": \"2024-03-17 14:59:13.047108\"}"}"#
    );
    let outer: Value = serde_json::from_str(&frame).unwrap();
    assert_eq!(
        outer["message"],
        "0008:0001:{\"local_time\": \"2024-03-17 14:59:13.047108\"}"
    );
}

#[test]
fn server_info_texts_parse_back() {
    for (frame, want) in [
        (
            r#"{"type":"INFO","message":"hello"}"#,
            ServerMessage::Info("hello".into()),
        ),
        (
            r#"{"type":"INFO","message":"0116:0001:OK"}"#,
            ServerMessage::Ok(Header::new("0116", "0001").unwrap()),
        ),
        (
            r#"{"type":"INFO","message":"0116:0001:ERROR","reason":"x"}"#,
            ServerMessage::Error {
                header: Some(Header::new("0116", "0001").unwrap()),
                reason: "x".into(),
            },
        ),
        (
            r#"{"type":"INFO","message":"ERROR"}"#,
            ServerMessage::Error {
                header: None,
                reason: String::new(),
            },
        ),
        (
            r#"{"type":"INFO","message":"0116:0001:MAYBE"}"#,
            ServerMessage::Info("0116:0001:MAYBE".into()),
        ),
    ] {
        assert_eq!(parse_server_message(frame).unwrap(), want, "{frame}");
    }
}

#[test]
fn server_message_payload_errors() {
    assert_eq!(
        parse_server_message(r#"{"type":"FILT","message":[]}"#).unwrap_err(),
        Error::UnexpectedKind {
            kind: "FILT",
            expected: "INFO, INIT or UPDT"
        }
    );
    assert_eq!(
        parse_server_message(r#"{"type":"INIT","message":"x"}"#).unwrap_err(),
        Error::PayloadType {
            kind: "INIT",
            expected: "a list of records"
        }
    );
    assert_eq!(
        parse_server_message(r#"{"type":"UPDT","message":[]}"#).unwrap_err(),
        Error::PayloadType {
            kind: "UPDT",
            expected: "a string"
        }
    );
    assert!(matches!(
        parse_server_message(r#"{"type":"INIT","message":[1]}"#).unwrap_err(),
        Error::Record(_)
    ));
    assert_eq!(
        parse_server_message(r#"{"type":"INIT","message":[]}"#).unwrap(),
        ServerMessage::Init(vec![])
    );
}

#[test]
fn device_message_errors_before_the_header_have_no_header() {
    for (frame, error) in [
        (
            r#"{"type":"INFO","message":"x"}"#,
            Error::UnexpectedKind {
                kind: "INFO",
                expected: "INIT or UPDT",
            },
        ),
        (
            r#"{"type":"UPDT","message":["x"]}"#,
            Error::PayloadType {
                kind: "UPDT",
                expected: "a string \"MID:SERIAL:BODY\"",
            },
        ),
        (
            r#"{"type":"INIT","message":5}"#,
            Error::PayloadType {
                kind: "INIT",
                expected: "a string \"MID:SERIAL:BODY\"",
            },
        ),
        (
            r#"{"type":"UPDT","message":"0116:0001"}"#,
            Error::Header("missing ':' after serial".into()),
        ),
        (r#"{"message":"0116:0001"}"#, Error::MissingType),
    ] {
        assert_eq!(
            parse_device_message(frame).unwrap_err(),
            Rejection {
                header: None,
                error
            },
            "{frame}"
        );
    }
}

#[test]
fn envelope_errors_keep_a_readable_header() {
    let h = Some(Header::new("0116", "0001").unwrap());
    for (frame, error) in [
        (r#"{"message":"0116:0001:{}"}"#, Error::MissingType),
        (
            r#"{"type":"FOO","message":"0116:0001:{}"}"#,
            Error::UnknownKind("FOO".into()),
        ),
        (
            "{'type': 'ping', 'message': '0116:0001:x'}",
            Error::UnknownKind("ping".into()),
        ),
        (
            r#"{"type":"INFO","message":"0116:0001:OK"}"#,
            Error::UnexpectedKind {
                kind: "INFO",
                expected: "INIT or UPDT",
            },
        ),
    ] {
        assert_eq!(
            parse_device_message(frame).unwrap_err(),
            Rejection {
                header: h.clone(),
                error
            },
            "{frame}"
        );
    }
}

#[test]
fn device_message_errors_after_the_header_keep_it() {
    let h = Some(Header::new("0116", "0001").unwrap());
    let r = parse_device_message(r#"{"type":"UPDT","message":"0116:0001:{'a': }"}"#).unwrap_err();
    assert_eq!(r.header, h);
    assert_eq!(
        r.error,
        Error::BodySyntax {
            offset: 6,
            reason: "expected a value".into()
        }
    );
    let r = parse_device_message(
        r#"{"type":"UPDT","message":"0116:0001:{\"serial_number\": \"0002\"}"}"#,
    )
    .unwrap_err();
    assert_eq!(
        r,
        Rejection {
            header: h,
            error: Error::SerialMismatch {
                header: "0001".into(),
                body: "0002".into()
            }
        }
    );
    assert_eq!(
        r.reply(),
        r#"{"type":"INFO","message":"0116:0001:ERROR","reason":"serial_number \"0002\" in the body does not match the header serial \"0001\""}"#
    );
}

#[test]
fn dashboard_errors() {
    assert_eq!(
        parse_dashboard_message(r#"{"type":"UPDT","message":"x"}"#).unwrap_err(),
        Error::UnexpectedKind {
            kind: "UPDT",
            expected: "FILT"
        }
    );
    assert_eq!(
        parse_dashboard_message(r#"{"type":"FILT","message":["a", 1]}"#).unwrap_err(),
        Error::PayloadType {
            kind: "FILT",
            expected: "a list of strings"
        }
    );
    assert_eq!(
        parse_dashboard_message("{'type': 'FILT', 'message': 7}").unwrap_err(),
        Error::PayloadType {
            kind: "FILT",
            expected: "a list of strings"
        }
    );
    assert_eq!(
        parse_dashboard_message("").unwrap_err(),
        Error::Envelope {
            offset: 0,
            reason: "expected a value, found the end of the input".into()
        }
    );
}

/// The device path types the normalized entries without building the normalized map first.
fn both_ways(body: &Value, serial: &str) -> (Result<Update>, Result<Update>) {
    let Value::Object(map) = body.clone() else {
        panic!("not an object")
    };
    let serial = Serial::new(serial).unwrap();
    let direct = normalized_update(map.clone(), &serial);
    let via_map = normalize(map, &serial).and_then(Update::from_normalized);
    (direct, via_map)
}

#[test]
fn typing_without_the_map_agrees() {
    for body in [
        json!({"_power_income": "x", "battery": "y"}),
        json!({"_power_income": "x", "zz": 1, "_battery": 2}),
        json!({"_z": 1, "a": 2, "_a": 3, "__b": 4, "tasks": 5, "serial_number": "0001"}),
        json!({"serial_number": 2, "_battery": 1}),
        json!({"_postcode": 8020, "_pv_connectors": 2.0, "owner": "x", "_online": true}),
        json!({"battery": 1}),
        json!({}),
    ] {
        let (direct, via_map) = both_ways(&body, "0001");
        assert_eq!(direct, via_map, "{body}");
    }
    let (direct, _) = both_ways(&json!({"_power_income": "x", "battery": "y"}), "1");
    assert!(
        direct
            .unwrap_err()
            .to_string()
            .starts_with("field \"battery\"")
    );
}

proptest::proptest! {
    #[test]
    fn typing_without_the_map_agrees_on_any_body(
        entries in proptest::collection::vec(
            (
                "_{0,2}(battery|power_income|country|postcode|pv_connectors|tasks|online|serial_number|[a-z]{1,3})",
                proptest::prop_oneof![
                    proptest::strategy::Just(json!(1)),
                    proptest::strategy::Just(json!(2.5)),
                    proptest::strategy::Just(json!("7")),
                    proptest::strategy::Just(json!("x")),
                    proptest::strategy::Just(json!(null)),
                    proptest::strategy::Just(json!([1])),
                ],
            ),
            0..8,
        ),
    ) {
        let body = Value::Object(entries.into_iter().collect());
        let (direct, via_map) = both_ways(&body, "7");
        proptest::prop_assert_eq!(direct, via_map, "{}", body);
    }
}
