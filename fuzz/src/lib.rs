//! Checks shared by the fuzz targets: the properties every parse result must have, beyond "no panic".
//!
//! A failed assertion here is a finding, exactly like a crash: libFuzzer saves the input under
//! `fuzz/artifacts/<target>/`. Panicking on a broken property is the point, hence no `# Panics` docs.
#![allow(clippy::missing_panics_doc, clippy::cast_possible_wrap)]

use std::cmp::Ordering;
use std::fmt::Write as _;
use std::sync::LazyLock;

use serde_json::Value;
use smart_proto::limits::check_safe_integers;
use smart_proto::{
    DeviceMessage, Error, Header, Kind, Payload, Query, Record, Rejection, Serial, ServerMessage,
    Timestamp, Update, normalize, parse_body, parse_device_message, parse_envelope,
    parse_server_message, write_init,
};

/// `2024-03-11T00:43:33.256667Z`, the seed's `manufacturing_date`.
const FIRST_SEEN: i64 = 1_710_117_813_256_667;

/// A small fleet whose fields differ in type from record to record (numbers, numeric strings, nulls,
/// extras that are a number here and a string or a bool there), so that filters and the sort comparator
/// meet every pair of value types.
pub static FLEET: LazyLock<Vec<Record>> = LazyLock::new(|| {
    let frames = [
        r#"{"type":"INIT","message":"0000:0001:{\"serial_number\": \"0001\", \"solmate_version\": \"v1\", \"_software_version\": \"v8.6\", \"_country\": \"DE\", \"_postcode\": 7445, \"_power_income\": 377, \"_power_inject\": 336, \"_power_consumption\": 400, \"_battery\": 250, \"_capacity\": 5184000, \"_local_time\": null, \"server_url\": \"ws://localhost:8000/update/\", \"connected\": true, \"meassuring\": true, \"charging\": false, \"pv_connectors\": 1}"}"#,
        r#"{"type":"UPDT","message":"0000:0002:{\"battery\": 350, \"software_version\": \"v2.0\", \"country\": \"AT\", \"postcode\": 9733, \"power_income\": 388, \"power_inject\": 357, \"power_consumption\": 289, \"mode\": 3}"}"#,
        r#"{"type":"UPDT","message":"0116:1:{\"power_consumption\": \"357\", \"postcode\": \"8020\", \"mode\": \"eco\", \"charging\": true}"}"#,
        r#"{"type":"UPDT","message":"0008:10:{\"local_time\": \"2024-03-17 14:59:13.047108\", \"battery\": 92.5, \"mode\": true, \"tags\": [1, \"a\"]}"}"#,
        r#"{"type":"UPDT","message":"0009:abc-_Z:{\"battery\": -0.0, \"power_inject\": 1e300, \"solmate_version\": \"v2\", \"pv_connectors\": 2.0, \"mode\": {\"a\": null}}"}"#,
        "{'type': 'UPDT', 'message': '0001:1234:{\\'parameter_name\\':\\'AT\\',\\'_parameter_name\\':430}'}",
        r#"{"type":"UPDT","message":"0002:0003:{}"}"#,
        r#"{"type":"UPDT","message":"0003:0004:{\"battery\": 0, \"postcode\": \"08\", \"country\": \"at\", \"mode\": null}"}"#,
    ];
    let mut fleet = Vec::new();
    for (i, frame) in frames.iter().enumerate() {
        let msg = match parse_device_message(frame) {
            Ok(msg) => msg,
            Err(rejection) => panic!("fixture frame {i} refused: {}", rejection.error),
        };
        let now = Timestamp::from_unix_micros(FIRST_SEEN + i as i64 * 1_000_003);
        let mut record = Record::new(msg.header.serial.clone(), "EET", now);
        record.apply(&msg.update, now);
        fleet.push(record);
    }
    fleet
});

/// Every error must render, and its byte offset must point into the text that was parsed.
pub fn check_error(error: &Error, parsed_len: usize) {
    let text = error.to_string();
    assert!(!text.is_empty());
    match error {
        Error::Envelope { offset, .. }
        | Error::BodyNotObject { offset, .. }
        | Error::BodySyntax { offset, .. } => {
            assert!(
                *offset <= parsed_len,
                "offset {offset} beyond input of {parsed_len} bytes: {text}"
            );
        }
        _ => {}
    }
}

/// `parse_device_message` composed from the public stage functions, without its fused fast path for flat
/// JSON frames: the two must agree on every frame.
pub fn device_message_by_stages(frame: &str) -> Result<DeviceMessage, Rejection> {
    let envelope = match parse_envelope(frame) {
        Ok(envelope) => envelope,
        // A frame that is an object but has no usable `type` still echoes a readable header (§5).
        Err(error @ (Error::MissingType | Error::UnknownKind(_))) => {
            return Err(Rejection {
                header: header_of_message(frame),
                error,
            });
        }
        Err(error) => return Err(error.into()),
    };
    let kind = envelope.kind;
    let header_of_text = match &envelope.message {
        Payload::Text(text) => Header::parse(text).ok().map(|(header, _)| header),
        _ => None,
    };
    if !matches!(kind, Kind::Init | Kind::Updt) {
        return Err(Rejection {
            header: header_of_text,
            error: Error::UnexpectedKind {
                kind: kind.as_str(),
                expected: "INIT or UPDT",
            },
        });
    }
    let Payload::Text(text) = envelope.message else {
        return Err(Error::PayloadType {
            kind: kind.as_str(),
            expected: "a string \"MID:SERIAL:BODY\"",
        }
        .into());
    };
    let (header, body) = Header::parse(&text)?;
    match parse_body(body)
        .and_then(|map| check_safe_integers(&map, body).map(|()| map))
        .and_then(|map| normalize(map, &header.serial))
        .and_then(Update::from_normalized)
    {
        Ok(update) => Ok(DeviceMessage {
            kind,
            header,
            update,
        }),
        Err(error) => Err(Rejection {
            header: Some(header),
            error,
        }),
    }
}

/// The header of an envelope's `message` string, read with the general parsers (last key wins).
fn header_of_message(frame: &str) -> Option<Header> {
    let value = serde_json::from_str::<Value>(frame)
        .ok()
        .filter(Value::is_object)
        .or_else(|| smart_proto::parse_python_literal(frame).ok())?;
    let (header, _) = Header::parse(value.get("message")?.as_str()?).ok()?;
    Some(header)
}

/// Properties of an accepted device message.
pub fn check_device_message(msg: &DeviceMessage) {
    assert!(matches!(msg.kind, Kind::Init | Kind::Updt));
    let id = msg.header.id.as_str();
    assert!(
        (1..=9).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit()),
        "bad id {id:?}"
    );
    let serial = msg.header.serial.as_str();
    assert!(
        (1..=32).contains(&serial.len())
            && serial
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
        "bad serial {serial:?}"
    );
    for key in [
        "serial_number",
        "owner",
        "manufacturing_date",
        "last_status_update",
        "online",
        "server_url",
    ] {
        assert!(
            !msg.update.as_map().contains_key(key),
            "{key} survived normalization"
        );
    }

    // What the library writes for a device must read back as the same message. A key that still starts
    // with `_` after normalization (`__x` arrived) loses one more underscore on every pass, by §4.
    if !msg.update.as_map().keys().any(|k| k.starts_with('_')) {
        let frame = msg.to_frame();
        match parse_device_message(&frame) {
            Ok(back) => assert_eq!(&back, msg, "device frame round trip via {frame}"),
            Err(rejection) => panic!("own frame {frame} refused: {}", rejection.error),
        }
    }

    // The server path: registration, apply, storage text, the INIT sent to dashboards.
    let first = Timestamp::from_unix_micros(FIRST_SEEN);
    let later = Timestamp::from_unix_micros(FIRST_SEEN + 1_000_000);
    let mut record = Record::new(msg.header.serial.clone(), "EET", first);
    let changed = record.apply(&msg.update, first);
    assert!(changed.contains_key("last_status_update"));
    let again = record.apply(&msg.update, later);
    assert_eq!(
        again.keys().map(String::as_str).collect::<Vec<_>>(),
        ["last_status_update"],
        "re-applying the same update changed fields"
    );
    let json = record.to_json();
    let value: Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("record JSON {json}: {e}"));
    assert!(value.is_object());
    match check_record_json(&json) {
        Ok(back) => assert_eq!(back, record, "record round trip via {json}"),
        Err(e) => panic!("own record JSON {json} refused: {e}"),
    }
    let init = write_init([&record]);
    match parse_server_message(&init) {
        Ok(ServerMessage::Init(records)) => {
            assert_eq!(records, [record], "INIT round trip via {init}");
        }
        other => panic!("own INIT {init} read back as {other:?}"),
    }
}

/// `Record::from_json` of any text, checked against the general path it falls back to (the text's JSON
/// object as a map, then `Record::from_map`): the same record or the same error. A record it reads writes
/// as JSON that reads back equal.
pub fn check_record_json(text: &str) -> Result<Record, Error> {
    let read = Record::from_json(text);
    let general = serde_json::from_str::<serde_json::Map<String, Value>>(text)
        .map_err(|e| Error::Record(format!("not a JSON object: {e}")))
        .and_then(Record::from_map);
    assert_eq!(
        read, general,
        "from_json and the general path differ on {text:?}"
    );
    if let Ok(record) = &read {
        let json = record.to_json();
        let mut bytes = Vec::new();
        record.write_json_bytes(&mut bytes);
        assert_eq!(
            serde_json::to_vec(record).ok().as_deref(),
            Some(bytes.as_slice()),
            "write_json_bytes and serde_json differ on {json}"
        );
        assert_eq!(
            Record::from_json(&json).as_ref(),
            Ok(record),
            "record round trip via {json}"
        );
    }
    read
}

/// Properties of an accepted query: it writes back to clauses that parse to itself, and evaluating it
/// over [`FLEET`] is consistent (the comparator is a total order, results match and are sorted).
pub fn check_query(query: &Query) {
    let clauses = query.to_clauses();
    match Query::parse(&clauses) {
        Ok(back) => assert_eq!(&back, query, "query round trip via {clauses:?}"),
        Err(e) => panic!("own clauses {clauses:?} refused: {e}"),
    }

    let fleet = &*FLEET;
    for a in fleet {
        assert_eq!(query.compare(a, a), Ordering::Equal);
        for b in fleet {
            let ab = query.compare(a, b);
            assert_eq!(
                ab,
                query.compare(b, a).reverse(),
                "antisymmetry {} {}",
                a.serial_number,
                b.serial_number
            );
            if ab == Ordering::Equal {
                // Ties end on the serial, the key: only a record equals itself.
                assert_eq!(a.serial_number, b.serial_number);
            }
            for c in fleet {
                if ab != Ordering::Greater && query.compare(b, c) != Ordering::Greater {
                    assert_ne!(query.compare(a, c), Ordering::Greater, "transitivity");
                }
            }
        }
    }

    let expected: Vec<&Serial> = fleet
        .iter()
        .filter(|r| query.matches(r))
        .map(|r| &r.serial_number)
        .collect();
    let result = query.apply(fleet);
    assert_eq!(result.len(), expected.len());
    for pair in result.windows(2) {
        assert_eq!(query.compare(pair[0], pair[1]), Ordering::Less);
    }
    assert!(result.iter().all(|r| expected.contains(&&r.serial_number)));
    if query.filters.is_empty() {
        assert_eq!(result.len(), fleet.len());
    }
}

/// Python `repr` of a JSON value, for the Python-literal round trip.
pub fn python_repr(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
                // Debug keeps a `.0` or an exponent, so Python reads it back as a float, not an int.
                let _ = write!(out, "{f:?}");
            } else {
                out.push_str(&n.to_string());
            }
        }
        Value::String(s) => python_str(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                python_repr(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                python_str(key, out);
                out.push_str(": ");
                python_repr(item, out);
            }
            out.push('}');
        }
    }
}

fn python_str(s: &str, out: &mut String) {
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('\'');
}
