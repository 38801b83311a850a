//! The bounds of issue 9: nesting, integers a browser can hold, connector counts, the header echoed on
//! every error it can be read for, the FILT value cap and a linear `=` search, and INIT lists whose
//! records all carry the same keys.
#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use proptest::prelude::*;
use serde_json::{Value, json};
use smart_proto::{
    Clause, Query, Record, Serial, ServerMessage, Timestamp, parse_device_message,
    parse_server_message, write_init,
};

fn frame(message: &str) -> String {
    json!({"type": "UPDT", "message": message}).to_string()
}

/// A Python `str(dict)` envelope around `message`.
fn python_frame(message: &str) -> String {
    let quoted = message.replace('\\', "\\\\").replace('\'', "\\'");
    format!("{{'type': 'UPDT', 'message': '{quoted}'}}")
}

fn reason(frame: &str) -> String {
    match parse_device_message(frame) {
        Ok(msg) => panic!("{frame} accepted as {:?}", msg.update),
        Err(rejection) => {
            let reply: Value = serde_json::from_str(&rejection.reply()).unwrap();
            assert_eq!(reply["message"], "0006:0901:ERROR", "{frame}");
            reply["reason"].as_str().unwrap().to_owned()
        }
    }
}

/// `{"a": [[…[]…]]}`: a body nested `depth` levels, the object itself being the first.
fn nested_json(depth: usize) -> String {
    format!(
        "{{\"a\": {}1{}}}",
        "[".repeat(depth - 1),
        "]".repeat(depth - 1)
    )
}

#[test]
fn nesting_is_bounded_at_32_levels_for_json_and_python_bodies() {
    for depth in [1, 2, 31, 32] {
        let body = nested_json(depth);
        assert!(parse_device_message(&frame(&format!("0006:0901:{body}"))).is_ok());
        let python = format!(
            "{{'a': {}1{}}}",
            "(".repeat(depth - 1),
            ",)".repeat(depth - 1)
        );
        let msg = format!("0006:0901:{python}");
        assert!(parse_device_message(&python_frame(&msg)).is_ok(), "{msg}");
    }
    for depth in [33, 64, 65, 100, 127] {
        let body = nested_json(depth);
        let why = reason(&frame(&format!("0006:0901:{body}")));
        assert!(
            why.ends_with("nested deeper than 32 levels"),
            "{depth}: {why}"
        );
        let python = body.replace('"', "'");
        let why = reason(&python_frame(&format!("0006:0901:{python}")));
        assert!(
            why.ends_with("nested deeper than 32 levels"),
            "{depth}: {why}"
        );
        // Objects count like lists.
        let objects = format!("{}1{}", "{\"a\": ".repeat(depth), "}".repeat(depth));
        let why = reason(&frame(&format!("0006:0901:{objects}")));
        assert!(
            why.ends_with("nested deeper than 32 levels"),
            "{depth}: {why}"
        );
    }
}

#[test]
fn integers_beyond_2_pow_53_are_errors_anywhere_in_a_body() {
    for body in [
        r#"{"battery": 9007199254740992}"#,
        r#"{"power_inject": -9007199254740992}"#,
        r#"{"pv_connectors": 9007199254740993}"#,
        r#"{"counter": 18446744073709551615}"#,
        r#"{"counter": 18446744073709551616}"#,
        r#"{"counter": -99999999999999999999999}"#,
        r#"{"deep": {"list": [1, 2, {"x": 12345678901234567890}]}}"#,
        "{'counter': 123456789012345678901234567890}",
        "{'t': (1, 2, 9007199254740992)}",
        r#"{"postcode": 9007199254740992}"#,
    ] {
        let message = format!("0006:0901:{body}");
        for f in [frame(&message), python_frame(&message)] {
            let why = reason(&f);
            assert!(
                why.contains("beyond ±9007199254740991 (2^53-1)"),
                "{f}: {why}"
            );
        }
    }
    // At the bounds, and floats of any size, are fine.
    for body in [
        r#"{"battery": 9007199254740991, "x": -9007199254740991, "y": [0]}"#,
        r#"{"x": 1e300, "y": 18446744073709551616.0, "z": -1.5e19}"#,
        r#"{"x": "18446744073709551616"}"#,
    ] {
        let message = format!("0006:0901:{body}");
        assert!(parse_device_message(&frame(&message)).is_ok(), "{body}");
    }
}

#[test]
fn connector_counts_are_never_negative() {
    for body in [
        r#"{"pv_connectors": -1}"#,
        r#"{"pv_connectors": -2.0}"#,
        "{'_pv_connectors': -3}",
    ] {
        let message = format!("0006:0901:{body}");
        let why = reason(&frame(&message));
        assert!(
            why.starts_with(
                r#"field "pv_connectors" must be an integer from 0 to 9007199254740991"#
            ),
            "{why}"
        );
    }
    let msg = parse_device_message(&frame(r#"0006:0901:{"pv_connectors": 0}"#)).unwrap();
    assert_eq!(msg.update.get("pv_connectors"), Some(&json!(0)));
}

/// Found by the `device_frame` fuzzer: a frame that is not JSON (a bad escape in a key the server does not
/// read) is a syntax error with no header, even when an earlier `message` shows one.
#[test]
fn an_invalid_frame_echoes_no_header_even_after_a_readable_message() {
    let f = r#"{"type": "SPDT", "message": "0035:0001:{}", "other": "\uZ"}"#;
    let rejection = parse_device_message(f).unwrap_err();
    assert_eq!(rejection.header, None, "{rejection:?}");
    assert!(
        matches!(rejection.error, smart_proto::Error::Envelope { .. }),
        "{rejection:?}"
    );
}

#[test]
fn a_readable_header_is_echoed_whatever_the_type() {
    for (f, why) in [
        (
            r#"{"type": "FOO", "message": "0006:0901:{}"}"#,
            r#"unknown message type "FOO": expected INFO, FILT, INIT or UPDT"#,
        ),
        (
            "{'type': 'updt', 'message': '0006:0901:{}'}",
            r#"unknown message type "updt": expected INFO, FILT, INIT or UPDT"#,
        ),
        (
            r#"{"type": "FOO", "message": "0006:0901:{\"battery\": \"full\"}"}"#,
            r#"unknown message type "FOO": expected INFO, FILT, INIT or UPDT"#,
        ),
        (
            r#"{"message": "0006:0901:{}"}"#,
            r#"envelope has no string "type""#,
        ),
        (
            r#"{"type": 7, "message": "0006:0901:{}"}"#,
            r#"envelope has no string "type""#,
        ),
        (
            r#"{"type": "FILT", "message": "0006:0901:{}"}"#,
            "unexpected message type FILT here: expected INIT or UPDT",
        ),
        (
            r#"{"type": "INFO", "message": "0006:0901:OK"}"#,
            "unexpected message type INFO here: expected INIT or UPDT",
        ),
    ] {
        let reply = parse_device_message(f).unwrap_err().reply();
        assert!(
            reply.starts_with(r#"{"type":"INFO","message":"0006:0901:ERROR","reason":"#),
            "{f}: {reply}"
        );
        assert_eq!(
            serde_json::from_str::<Value>(&reply).unwrap(),
            json!({"type": "INFO", "message": "0006:0901:ERROR", "reason": why}),
            "{f}"
        );
    }
    // Without a readable header, the bare ERROR stays.
    for f in [
        r#"{"type": "FOO", "message": "hello"}"#,
        r#"{"type": "FOO", "message": ["0006:0901:{}"]}"#,
        r#"{"type": "FOO"}"#,
        "not json",
    ] {
        let reply = parse_device_message(f).unwrap_err().reply();
        assert!(
            reply.starts_with(r#"{"type":"INFO","message":"ERROR","reason":"#),
            "{f}: {reply}"
        );
    }
}

#[test]
fn filter_values_are_capped_at_256_bytes() {
    let value = "é".repeat(128);
    assert!(Clause::parse(&format!("filter:country:=:{value}")).is_ok());
    for clause in [
        format!("filter:country:=:{value}x"),
        format!("filter:country:^:{}", "a".repeat(30_000)),
        format!("filter:battery:==:{}1", "0".repeat(300)),
    ] {
        let err = Clause::parse(&clause).unwrap_err().to_string();
        assert!(err.contains("bytes long, more than 256"), "{err}");
        assert!(
            err.len() < 400,
            "the error quotes the clause shortened: {err}"
        );
    }
}

/// The reference meaning of `=`: the text lowercased contains the needle lowercased.
fn contains_reference(text: &str, needle: &str) -> bool {
    text.to_lowercase().contains(&needle.to_lowercase())
}

fn with_country(text: &str) -> Record {
    let mut record = Record::new(Serial::new("0001").unwrap(), "EET", Timestamp::UNIX_EPOCH);
    text.clone_into(&mut record.country);
    record
}

#[test]
fn contains_finds_matches_across_the_search_chunks() {
    // Long texts with upper-case letters are lowercased in chunks of 2 KiB: a needle straddling a chunk
    // boundary must still be found, wherever it lies.
    for needle_len in [1, 2, 17, 255, 256] {
        let needle: String = "Ab".repeat(needle_len).chars().take(needle_len).collect();
        for at in [
            0,
            1,
            2047 - needle_len / 2,
            2048 - needle_len,
            2047,
            2048,
            4095,
            6000,
        ] {
            let mut text = "X".repeat(at);
            text.push_str(&needle.to_uppercase());
            text.push_str(&"Y".repeat(100));
            let query = Query::parse(&[format!("filter:country:=:{needle}")]).unwrap();
            let record = with_country(&text);
            assert!(query.matches(&record), "{needle_len} at {at}");
            assert!(query.matcher().matches(&record), "{needle_len} at {at}");
            let missing = text.replace(&needle.to_uppercase(), &"Z".repeat(needle_len));
            assert!(!query.matcher().matches(&with_country(&missing)));
        }
    }
}

#[test]
fn a_long_needle_over_long_text_is_answered() {
    // The attack of issue 9 (a 30 KB needle over long strings), at the cap: it must simply work; its
    // speed is in benches/proto.rs (filt_eval_10k/long_needle).
    let text = "a".repeat(60_000);
    let needle = format!("{}b", "a".repeat(255));
    let query = Query::parse(&[format!("filter:country:=:{needle}")]).unwrap();
    assert!(!query.matcher().matches(&with_country(&text)));
    assert!(
        query
            .matcher()
            .matches(&with_country(&format!("{text}{needle}")))
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn contains_agrees_with_lowercase_then_contains(
        text in "[aAbBéÉİıK\u{212a}ς Σ0-9]{0,40}",
        needle in "[aAbBéÉİK\u{212a}σΣ]{0,4}",
        repeat in 1usize..200,
    ) {
        let text = text.repeat(repeat);
        let query = Query::parse(&[format!("filter:country:=:{needle}")]).unwrap();
        let record = with_country(&text);
        let want = contains_reference(&text, &needle);
        prop_assert_eq!(query.matches(&record), want);
        prop_assert_eq!(query.matcher().matches(&record), want);
    }
}

fn device(serial: &str, extras: &[(&str, Value)]) -> Record {
    let mut record = Record::new(Serial::new(serial).unwrap(), "EET", Timestamp::UNIX_EPOCH);
    for (key, value) in extras {
        record.extra.insert((*key).to_owned(), value.clone());
    }
    record
}

/// The keys of each record of an INIT frame of flat records, in the order written (`serde_json`'s map
/// would sort them, and the order is the point).
fn keys_of_init(frame: &str) -> Vec<Vec<String>> {
    let list = frame
        .strip_prefix(r#"{"type":"INIT","message":[{"#)
        .and_then(|s| s.strip_suffix("}]}"))
        .unwrap();
    list.split("},{")
        .map(|record| {
            let mut keys = Vec::new();
            let mut rest = record;
            while let Some(pos) = rest.find("\":") {
                let head = &rest[..pos];
                keys.push(head[head.rfind('"').unwrap() + 1..].to_owned());
                rest = &rest[pos + 2..];
            }
            keys
        })
        .collect()
}

#[test]
fn every_record_of_an_init_list_has_the_same_keys() {
    let a = device("0001", &[("mode", json!("eco"))]);
    let b = device("0002", &[]);
    let c = device("0003", &[("charging", json!(true)), ("zeta", json!(1))]);
    let frame = write_init([&a, &b, &c]);
    let mut expected: Vec<String> = Record::FIELDS.iter().map(|&f| f.to_owned()).collect();
    expected.extend(["charging", "mode", "zeta"].map(str::to_owned));
    let keys = keys_of_init(&frame);
    assert_eq!(
        keys,
        [expected.clone(), expected.clone(), expected],
        "{frame}"
    );
    assert!(
        frame.contains(r#""online":false,"charging":null,"mode":"eco","zeta":null}"#),
        "{frame}"
    );
    assert!(
        frame.contains(r#""online":false,"charging":true,"mode":null,"zeta":1}"#),
        "{frame}"
    );
    // ServerMessage::Init writes the same, and clients read the padding back as null extras.
    let msg = ServerMessage::Init(vec![a, b, c]);
    assert_eq!(msg.to_frame(), frame);
    let ServerMessage::Init(back) = parse_server_message(&frame).unwrap() else {
        panic!()
    };
    assert_eq!(back[1].extra.get("zeta"), Some(&Value::Null));
}
