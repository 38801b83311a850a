//! The fast path: the usual frames, read by byte scans that build nothing they do not keep.
//!
//! Nearly every device frame is an envelope of strings around a message `MID:SERIAL:{flat body}`, like
//! `{"type": "UPDT", "message": "0116:0001:{\"power_consumption\": 357}"}` or its Python form
//! `{'type': 'UPDT', 'message': '0116:0001:{"power_consumption": 357}'}`. [`device_frame`] reads such
//! a frame in one pass: the envelope is scanned ([`envelope`]), the message read where it stands, still
//! escaped, its header measured ([`header::part_lens`](crate::header::part_lens)) and its body's fields
//! put straight into the typed fields of the update ([`flat`], [`Fields`]). It returns `None` whenever
//! the general path must decide, which then gives the same result or reports the error: every answer of
//! this module is checked against the general parsers (the differential tests below and in each
//! submodule).
//!
//! The general parsers use the same scans as their own first try: [`scan_json_envelope`] for
//! [`parse_envelope`](crate::parse_envelope), [`flat_object`] for [`parse_body`](crate::parse_body).
//! This module depends on no parser (only on [`bounds`](crate::bounds) and the header's byte rules), so
//! that every parser can use it.

mod envelope;
mod flat;
mod scan;

use std::borrow::Cow;

pub(crate) use envelope::{FastEnvelope, JsonStr, scan_json_envelope};
pub(crate) use flat::{FlatSink, flat_object};
pub(crate) use scan::find_special;

use flat::{Quoting, scan_flat};

/// Where [`device_frame`] puts the fields of a message it reads in place: the typed fields of an update
/// ([`FastFields`](crate::record::FastFields), plugged in by [`message`](crate::message)).
pub(crate) trait Fields: FlatSink {
    /// Forget every field taken so far.
    fn clear(&mut self);
}

/// What the fast path read of a device frame: its kind and its message.
#[derive(Debug)]
pub(crate) struct DeviceFrame<'a> {
    /// `INIT` (else `UPDT`: the fast path takes no other kind).
    pub(crate) init: bool,
    /// The message.
    pub(crate) message: Message<'a>,
}

/// A device message as the fast path leaves it.
#[derive(Debug)]
pub(crate) enum Message<'a> {
    /// Read in place, its fields in the sink: `header` starts with `MID:SERIAL:`, whose parts are
    /// `id_len` and `serial_len` bytes long. The header is built by the caller, where it stays: moving
    /// a freshly built header through several structs stalls the CPU longer than the whole scan takes.
    InPlace {
        header: &'a [u8],
        id_len: usize,
        serial_len: usize,
    },
    /// The envelope only: the message's text (unescaped), for the general path to read.
    Text(Cow<'a, str>),
}

/// The common device frame: strings only, kind `INIT` or `UPDT`. `None` leaves anything else (and every
/// envelope-level error) to the general path.
///
/// The usual message, a header and a flat body, is read in place while the envelope is scanned: no
/// unescaped copy of the message, one pass over it, and fields that go straight into `fields` (any
/// earlier content is replaced). What the scan finds travels as a few indices.
#[inline]
pub(crate) fn device_frame<'a>(
    frame: &'a str,
    fields: &mut impl Fields,
) -> Option<DeviceFrame<'a>> {
    let mut read = None;
    let env = envelope::scan_envelope(frame, |frame, at| {
        // A later `message` key replaces an earlier one, whichever way either is read.
        read = None;
        fields.clear();
        let (lens, next) = message_in_place(frame, at, fields)?;
        read = Some((at + 1, lens));
        Some(next)
    })?;
    let (kind, message) = (env.kind?, env.message?);
    // A kind devices may not send is rare: the general path reports it, after checking the rest of the
    // envelope, so both paths give the same error for the same frame (found by the device_frame fuzzer).
    let init = match kind.bytes(frame) {
        _ if kind.escaped => return None,
        b"INIT" => true,
        b"UPDT" => false,
        _ => return None,
    };
    let message = match read {
        Some((text, (id_len, serial_len))) => Message::InPlace {
            header: frame.as_bytes().get(text..)?,
            id_len,
            serial_len,
        },
        None => Message::Text(message.to_cow(frame)?),
    };
    Some(DeviceFrame { init, message })
}

/// The message `"MID:SERIAL:{flat body}"` whose opening quote is at `at`, read in place: its fields go
/// to `fields`; returns the lengths of `MID` and `SERIAL` and the index after its closing quote. A
/// double-quoted message is read with its escaped quotes (`{\"battery\": 92.5}`), a single-quoted one
/// (a Python envelope) as it stands. `None` for anything else, including any body that normalization
/// would change or typing would refuse.
#[allow(clippy::inline_always, reason = "hot path, measured")]
#[inline(always)]
fn message_in_place(
    frame: &str,
    at: usize,
    fields: &mut impl FlatSink,
) -> Option<((usize, usize), usize)> {
    let (quote, quoting) = match frame.as_bytes().get(at)? {
        b'"' => (b'"', Quoting::Escaped),
        b'\'' => (b'\'', Quoting::InSingleQuotes),
        _ => return None,
    };
    // Header characters are never quotes, backslashes or control bytes, so the header reads the same
    // escaped or not.
    let (id_len, serial_len) = crate::header::part_lens(frame.as_bytes().get(at + 1..)?)?;
    let close = scan_flat(frame, at + 3 + id_len + serial_len, quoting, fields)?;
    (frame.as_bytes().get(close) == Some(&quote)).then_some(((id_len, serial_len), close + 1))
}

/// The fast path (envelope scan with the message read in place) against the general parsers alone.
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

    use std::fmt::Write as _;

    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::message::{device_kind, typed_message};
    use crate::record::FastFields;
    use crate::{
        DeviceMessage, Error, Header, Kind, Rejection, Result, parse_body, parse_device_message,
    };

    /// What the general parsers make of a valid envelope: `serde_json` or the Python-literal parser for
    /// the envelope and for the body (no scans), then normalization and typing.
    fn reference(frame: &str) -> Result<DeviceMessage, Rejection> {
        let envelope = serde_json::from_str::<Value>(frame)
            .or_else(|_| crate::parse_python_literal(frame))
            .unwrap();
        let kind = device_kind(Kind::parse(envelope["type"].as_str().unwrap()).unwrap())?;
        let (header, body) = Header::parse(envelope["message"].as_str().unwrap())?;
        let json = serde_json::from_str::<Value>(body)
            .ok()
            .filter(|v| !crate::bounds::deeper_than(v, crate::bounds::MAX_DEPTH));
        let fields = match json {
            Some(Value::Object(map)) => Ok(map),
            _ => parse_body(body),
        };
        typed_message(kind, header, body, fields)
    }

    /// A Python `repr` of a string, as `str(dict)` writes it.
    fn py_str(s: &str) -> String {
        let mut out = String::from("'");
        for c in s.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\'' => out.push_str("\\'"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if u32::from(c) < 0x20 => {
                    let _ = write!(out, "\\x{:02x}", u32::from(c));
                }
                c => out.push(c),
            }
        }
        out.push('\'');
        out
    }

    /// Every layout a device might use for one message.
    fn frames(kind: &str, message: &str) -> Vec<String> {
        let json = Value::String(message.to_owned()).to_string();
        let py = py_str(message);
        vec![
            format!(r#"{{"type": "{kind}", "message": {json}}}"#),
            format!(r#"{{"type":"{kind}","message":{json}}}"#),
            format!(r#" {{ "message" : {json} , "type" : "{kind}" , "x": "y" }} "#),
            format!(r#"{{"message": "ignored", "type": "{kind}", "message": {json}}}"#),
            format!(r#"{{"type": "{kind}", "message": {json}, "message": "0001:0001:{{}}"}}"#),
            format!("{{'type': '{kind}', 'message': {py}}}"),
            format!("{{'message': {py}, 'type': '{kind}'}}"),
            format!(r#"{{"type": '{kind}', 'message': {py}}}"#),
        ]
    }

    fn assert_agrees(frame: &str) {
        assert_eq!(parse_device_message(frame), reference(frame), "{frame}");
    }

    #[test]
    fn typical_frames_are_read_in_place() {
        for (frame, at) in [
            (
                r#"{"type": "UPDT", "message": "0116:0001:{\"power_consumption\": 357}"}"#,
                28,
            ),
            (
                r#"{'type': 'UPDT', 'message': '0116:0001:{"power_consumption": 357}'}"#,
                28,
            ),
            (
                r#"{"type": "UPDT", "message": "0117:0001:{\"power_inject\": 357, \"battery\": 92.5}"}"#,
                28,
            ),
            (
                r#"{"type": "UPDT", "message": "1:A-b_9:{\"country\": \"AT\", \"x\": [true]}"}"#,
                28,
            ),
        ] {
            let mut fields = FastFields::default();
            let in_place = message_in_place(frame, at, &mut fields);
            let expect_in_place = !frame.contains('[');
            assert_eq!(in_place.is_some(), expect_in_place, "{frame}");
            if let Some((_, next)) = in_place {
                assert_eq!(&frame[next..], "}", "{frame}");
                assert!(!fields.into_update().is_empty());
            }
            assert_agrees(frame);
        }
    }

    /// A quote inside the body that really ends the message: read in place, the rest of the envelope
    /// would be taken for the body.
    #[test]
    fn a_quote_that_ends_the_message_ends_it() {
        for frame in [
            r#"{'type': 'UPDT', 'message': '1:1:{"a', 'x': '": 1}'}"#,
            r#"{"type": "UPDT", "message": "1:1:{\"a", "x": "\": 1}"}"#,
            r#"{'type': 'UPDT', 'message': '1:1:{"a": "b', 'x': '"}'}"#,
            r#"{"type": "UPDT", "message": "1:1:{\"a\": \"b", "x": "\"}"}"#,
        ] {
            let rejection = parse_device_message(frame).unwrap_err();
            assert!(
                matches!(rejection.error, Error::BodySyntax { .. }),
                "{frame}: {rejection:?}"
            );
            assert_agrees(frame);
        }
    }

    #[test]
    fn fields_are_sorted_and_the_last_duplicate_wins() {
        let msg = parse_device_message(
            r#"{"type": "UPDT", "message": "1:1:{\"power_inject\": 1, \"battery\": \"2\", \"power_income\": 3, \"power_inject\": 4, \"zz\": 5, \"a\": 6}"}"#,
        )
        .unwrap();
        let fields: Vec<(&str, &Value)> = msg.update.iter().collect();
        assert_eq!(
            fields,
            [
                ("a", &json!(6)),
                ("battery", &json!(2)),
                ("power_income", &json!(3)),
                ("power_inject", &json!(4)),
                ("zz", &json!(5)),
            ]
        );
        assert_eq!(msg.update.get("power_inject"), Some(&json!(4)));
        assert_eq!(msg.update.as_map().len(), 5);
    }

    #[test]
    fn a_kind_devices_may_not_send_does_not_hide_a_broken_envelope() {
        // Found by the device_frame fuzzer: the fast path reported the kind before the bad escape.
        let err = parse_device_message(r#"{"type":"FILT","message":"\uZZZZ"}"#).unwrap_err();
        assert!(matches!(err.error, Error::Envelope { .. }), "{err:?}");
        let err = parse_device_message(r#"{"type":"FILT","message":"1:0001:{}"}"#).unwrap_err();
        assert_eq!(
            err.error,
            Error::UnexpectedKind {
                kind: "FILT",
                expected: "INIT or UPDT"
            }
        );
    }

    #[test]
    fn what_the_fast_path_declines_still_agrees() {
        for message in [
            // Normalization, runtime and server keys, serial checks.
            "1:0001:{\"_battery\": 1, \"battery\": 2}",
            "1:0001:{\"serial_number\": \"0001\", \"tasks\": \"\"}",
            "1:0001:{\"serial_number\": \"0002\"}",
            "1:0001:{\"online\": true}",
            // Type errors, including one a later duplicate repairs.
            "1:0001:{\"battery\": \"full\"}",
            "1:0001:{\"battery\": \"full\", \"battery\": 3}",
            "1:0001:{\"pv_connectors\": 2.5}",
            "1:0001:{\"postcode\": 8020, \"pv_connectors\": 2.0, \"battery\": 350.0}",
            // Escapes inside strings, other whitespace, nesting, Python bodies, odd numbers.
            "1:0001:{\"country\": \"A\\\"T\"}",
            "1:0001:{\"country\": \"A\\\\T\"}",
            "1:0001:{\"country\":\t\"AT\"}",
            "1:0001:{\"x\": {\"a\": 1}}",
            "1:0001:{'battery': 1, 'country': 'AT'}",
            "1:0001:{\"a\": -0, \"b\": 1e3, \"c\": 18446744073709551616, \"d\": 0.1, \"e\": -0.0}",
            "1:0001:{\"a\": 9007199254740993, \"battery\": 9007199254740993}",
            // Integers at and beyond ±(2^53−1), connector counts, nesting at and beyond the limit.
            "1:0001:{\"a\": 9007199254740991, \"b\": -9007199254740991}",
            "1:0001:{\"a\": 9007199254740992}",
            "1:0001:{\"battery\": -9007199254740992, \"country\": 1}",
            "1:0001:{\"a\": 123456789012345678901234567890}",
            "1:0001:{\"a\": 1.8446744073709552e19, \"b\": 18446744073709551616}",
            "1:0001:{\"pv_connectors\": -1}",
            "1:0001:{\"pv_connectors\": -1, \"pv_connectors\": 2}",
            "1:0001:{\"pv_connectors\": 9007199254740992.0}",
            "1:0001:{\"a\": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}",
            "1:0001:{\"a\": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}",
            "1:0001:{\"é\": \"ü\", \"it's\": 1}",
            "1:0001:{} ",
            "1:0001: {}",
            "1:0001:{}",
            "1:0001:",
            "1:0001:[1]",
            "x:0001:{}",
            "1:00 01:{}",
        ] {
            for frame in frames("UPDT", message)
                .iter()
                .chain(&frames("INIT", message))
            {
                assert_agrees(frame);
            }
        }
    }

    fn arb_key() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "battery",
                "power_income",
                "power_inject",
                "power_consumption",
                "capacity",
                "postcode",
                "country",
                "pv_connectors",
                "local_time",
                "software_version",
                "solmate_version",
                "serial_number",
                "_battery",
                "__x",
                "websocket",
                "online",
                "owner",
                "charging",
                "power_in",
                "power_injectx",
                "",
                "it's",
                "a\"b",
                "back\\slash",
                "é",
            ])
            .prop_map(str::to_owned),
            "[a-z_]{1,20}",
        ]
    }

    fn arb_value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            (-1000i64..1000).prop_map(|n| n.to_string()),
            any::<f64>()
                .prop_filter("finite", |x| x.is_finite())
                .prop_map(|x| Value::from(x).to_string()),
            "-?[0-9]{1,17}(\\.[0-9]{1,17})?([eE][-+]?[0-9]{1,3})?",
            prop::sample::select(vec![
                "true",
                "false",
                "null",
                "\"357\"",
                "\" 12.5 \"",
                "\"inf\"",
                "\"\"",
                "\"it's\"",
                "\"a\\\"b\"",
                "\"tab\\t\"",
                "[1, 2]",
                "{\"a\": 1}",
                "9007199254740991",
                "-9007199254740992",
                "99999999999999999999",
                "-1",
                "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
                "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
                "-0",
                "1.0",
                "2.5",
            ])
            .prop_map(str::to_owned),
            "\"[ -~]{0,12}\""
                .prop_filter("valid JSON", |s| serde_json::from_str::<Value>(s).is_ok()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn fast_path_agrees_with_the_general_parsers(
            fields in prop::collection::vec((arb_key(), arb_value()), 0..6),
            serial in prop::sample::select(vec!["0001", "1", "SN-4711_b"]),
            spacing in prop::sample::select(vec![(", ", ": "), (",", ":"), (" , ", " : ")]),
            init in any::<bool>(),
        ) {
            let mut body = String::from("{");
            for (i, (key, value)) in fields.iter().enumerate() {
                if i > 0 {
                    body.push_str(spacing.0);
                }
                body.push_str(&Value::String(key.clone()).to_string());
                body.push_str(spacing.1);
                body.push_str(value);
            }
            body.push('}');
            let message = format!("0116:{serial}:{body}");
            for frame in frames(if init { "INIT" } else { "UPDT" }, &message) {
                prop_assert_eq!(parse_device_message(&frame), reference(&frame), "{}", frame);
            }
        }
    }
}
