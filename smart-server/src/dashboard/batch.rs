//! Batched UPDTs, an extension of PROTOCOL.md §7 that a dashboard asks for with `/client/?batch=1`:
//! consecutive UPDT frames that are ready to go out at the same time leave as one frame whose
//! message is the list of their strings, `{"type":"UPDT","message":["MID:SERIAL:{…}", …]}`, in order.
//!
//! A browser pays for every websocket message (a task, a `MessageEvent`, a `JSON.parse`): at 1,000
//! updates/s one message per update keeps a dashboard page's main thread busy. The list costs the
//! server no JSON work: each UPDT is already serialized once for every dashboard (the hub's
//! `Change::frame`), and its message's JSON string literal is cut out of that frame and copied
//! next to the others. Everything else — INIT (whole or fragmented), INFO, pings, a frame of any
//! other shape — is left as it is and ends the run, so no list ever moves past another kind of
//! frame and the order is the plain stream's.

use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// How an UPDT frame starts (`smart_proto::frame::write_updt`), up to its message.
const UPDT_START: &str = r#"{"type":"UPDT","message":"#;
/// How a batched frame starts and ends around the literals.
const BATCH_START: &str = r#"{"type":"UPDT","message":["#;
const BATCH_END: &str = "]}";

/// Whether a `/client/` request's query string asks for batched UPDTs: some `&`-separated pair is
/// exactly `batch=1`. Anything else (no query, `batch=0`, `batch=yes`) keeps one UPDT per frame.
pub(crate) fn wanted(query: Option<&str>) -> bool {
    query.is_some_and(|q| q.split('&').any(|pair| pair == "batch=1"))
}

/// The message of an UPDT frame `{"type":"UPDT","message":"…"}` as its JSON string literal, quotes
/// included, borrowed from the frame; `None` for a frame of any other shape (a list frame, another
/// kind, extra keys, a truncated literal).
pub(crate) fn updt_literal(frame: &str) -> Option<&str> {
    let rest = frame.strip_prefix(UPDT_START)?;
    let len = literal_len(rest)?;
    (rest.get(len..) == Some("}")).then(|| &rest[..len])
}

/// The length of the JSON string literal `s` starts with (quotes included); `None` if it starts
/// with none or it does not end.
fn literal_len(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    if bytes.first() != Some(&b'"') {
        return None;
    }
    let mut i = 1;
    while let Some(&byte) = bytes.get(i) {
        match byte {
            // An escape: the next byte is part of it (`\"`, `\\`, `\u…`), never the closing quote.
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// Merges runs of UPDT frames (see the module documentation). Keeps its scratch buffer between
/// sends.
#[derive(Debug, Default)]
pub(crate) struct Batcher {
    scratch: Vec<Message>,
}

impl Batcher {
    /// Replace each run of consecutive UPDT text frames in `out` by list frames, in order. A list
    /// frame grows to about `max_bytes` and a new one starts beyond (a single UPDT larger than that
    /// is a list of one). Any other message keeps its place between the lists.
    pub(crate) fn merge(&mut self, out: &mut Vec<Message>, max_bytes: usize) {
        let mut run = Run::default();
        self.scratch.clear();
        for message in out.drain(..) {
            if let Message::Text(text) = &message
                && let Some(literal) = updt_literal(text.as_str())
            {
                run.add(literal, max_bytes, &mut self.scratch);
                continue;
            }
            run.close(&mut self.scratch);
            self.scratch.push(message);
        }
        run.close(&mut self.scratch);
        std::mem::swap(out, &mut self.scratch);
    }
}

/// The list frame being built; empty while no run is open.
#[derive(Debug, Default)]
struct Run {
    frame: String,
}

impl Run {
    fn add(&mut self, literal: &str, max_bytes: usize, out: &mut Vec<Message>) {
        if !self.frame.is_empty()
            && self.frame.len() + 1 + literal.len() + BATCH_END.len() > max_bytes
        {
            self.close(out);
        }
        if self.frame.is_empty() {
            self.frame
                .reserve(BATCH_START.len() + literal.len() + BATCH_END.len());
            self.frame.push_str(BATCH_START);
        } else {
            self.frame.push(',');
        }
        self.frame.push_str(literal);
    }

    fn close(&mut self, out: &mut Vec<Message>) {
        if self.frame.is_empty() {
            return;
        }
        self.frame.push_str(BATCH_END);
        out.push(Message::Text(Utf8Bytes::from(std::mem::take(
            &mut self.frame,
        ))));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Map, Value, json};
    use smart_proto::{Header, ServerMessage};
    use tokio_tungstenite::tungstenite::Bytes;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

    use super::*;

    /// An UPDT frame as the hub writes it.
    fn updt(id: &str, serial: &str, body: &Value) -> String {
        let body: Map<String, Value> = body.as_object().unwrap().clone();
        smart_proto::frame::updt(&Header::new(id, serial).unwrap(), &body)
    }

    fn text(frame: &str) -> Message {
        Message::Text(frame.to_owned().into())
    }

    /// What a dashboard reads from `frames`: each frame's type and its message (a string, or a list
    /// of strings for a batched UPDT).
    fn read(frames: &[Message]) -> Vec<(String, Value)> {
        frames
            .iter()
            .map(|m| match m {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    (v["type"].as_str().unwrap().to_owned(), v["message"].clone())
                }
                Message::Frame(_) => ("fragment".to_owned(), Value::Null),
                other => (format!("{other:?}"), Value::Null),
            })
            .collect()
    }

    fn message_of(frame: &str) -> Value {
        serde_json::from_str::<Value>(frame).unwrap()["message"].clone()
    }

    #[test]
    fn only_batch_1_asks_for_batches() {
        assert!(wanted(Some("batch=1")));
        assert!(wanted(Some("x=2&batch=1")));
        assert!(wanted(Some("batch=1&x=2")));
        for plain in [
            None,
            Some(""),
            Some("batch=0"),
            Some("batch"),
            Some("batch=10"),
            Some("xbatch=1"),
        ] {
            assert!(!wanted(plain), "{plain:?}");
        }
    }

    #[test]
    fn the_literal_is_cut_from_the_frame_as_written() {
        let body = json!({"a": "quote \" backslash \\ colon : brace } unicode é \u{1}", "n": 1.5});
        let frame = updt("0007", "0042", &body);
        let literal = updt_literal(&frame).unwrap();
        assert!(literal.starts_with('"') && literal.ends_with('"'));
        let decoded: String = serde_json::from_str(literal).unwrap();
        assert_eq!(Value::String(decoded), message_of(&frame));
        // The same for a frame written by `ServerMessage` (conflated and entering devices).
        let other = ServerMessage::Updt {
            header: Header::new("0001", "0002").unwrap(),
            body: body.as_object().unwrap().clone(),
        }
        .to_frame();
        assert_eq!(
            updt_literal(&other),
            Some(literal.replace("0007:0042", "0001:0002").as_str())
        );
    }

    #[test]
    fn frames_of_another_shape_have_no_literal() {
        for frame in [
            r#"{"type":"INFO","message":"x"}"#,
            r#"{"type":"INIT","message":[]}"#,
            r#"{"type":"UPDT","message":["a"]}"#,
            r#"{"type":"UPDT","message":"a","reason":"b"}"#,
            r#"{"type":"UPDT","message":"a"} "#,
            r#"{"type":"UPDT","message":"a"#,
            r#"{"type":"UPDT","message":"a\"}"#,
            r#"{"type":"UPDT","message":"a\"#,
            r#"{"message":"a","type":"UPDT"}"#,
        ] {
            assert_eq!(updt_literal(frame), None, "{frame}");
        }
        assert_eq!(
            updt_literal(r#"{"type":"UPDT","message":""}"#),
            Some(r#""""#)
        );
    }

    #[test]
    fn runs_merge_and_every_other_frame_keeps_its_place() {
        let u: Vec<String> = (1..=5)
            .map(|i| updt(&format!("{i:04}"), "0001", &json!({ "battery": i })))
            .collect();
        let init = r#"{"type":"INIT","message":[{"serial_number":"0001"}]}"#;
        let info = r#"{"type":"INFO","message":"ERROR","reason":"bad"}"#;
        let fragment = Message::Frame(WsFrame::message(
            Bytes::from_static(b"{\"type\":\"INIT\""),
            OpCode::Data(Data::Text),
            false,
        ));
        let mut out = vec![
            text(&u[0]),
            text(&u[1]),
            text(init),
            text(&u[2]),
            text(info),
            fragment,
            Message::Ping(Bytes::new()),
            text(&u[3]),
            text(&u[4]),
        ];
        Batcher::default().merge(&mut out, 16 * 1024);
        let m = |i: usize| message_of(&u[i]);
        assert_eq!(
            read(&out),
            vec![
                ("UPDT".to_owned(), json!([m(0), m(1)])),
                ("INIT".to_owned(), json!([{"serial_number": "0001"}])),
                ("UPDT".to_owned(), json!([m(2)])),
                ("INFO".to_owned(), json!("ERROR")),
                ("fragment".to_owned(), Value::Null),
                ("Ping(b\"\")".to_owned(), Value::Null),
                ("UPDT".to_owned(), json!([m(3), m(4)])),
            ]
        );
        // The batched frame is the literals joined, byte for byte.
        let Message::Text(first) = &out[0] else {
            panic!("{:?}", out[0])
        };
        let joined = format!(
            "{BATCH_START}{},{}{BATCH_END}",
            updt_literal(&u[0]).unwrap(),
            updt_literal(&u[1]).unwrap()
        );
        assert_eq!(first.as_str(), joined);
    }

    #[test]
    fn a_frame_of_another_shape_is_sent_as_it_is_between_lists() {
        let a = updt("0001", "0001", &json!({"battery": 1}));
        let odd = r#"{"type":"UPDT","message":"0002:0001:{}","reason":"x"}"#;
        let mut out = vec![text(&a), text(odd), text(&a)];
        Batcher::default().merge(&mut out, 1 << 20);
        let Message::Text(middle) = &out[1] else {
            panic!("{out:?}")
        };
        assert_eq!(middle.as_str(), odd);
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn lists_are_capped_and_one_large_update_is_a_list_of_one() {
        let frames: Vec<String> = (0..50)
            .map(|i| updt(&format!("{i:04}"), "0001", &json!({ "battery": i })))
            .collect();
        let big = updt("0050", "0001", &json!({ "note": "x".repeat(2000) }));
        let mut out: Vec<Message> = frames.iter().map(|f| text(f)).collect();
        out.push(text(&big));
        out.push(text(&frames[0]));
        let max = 1000;
        Batcher::default().merge(&mut out, max);
        let sizes: Vec<usize> = out.iter().map(Message::len).collect();
        assert!(out.len() > 3, "{sizes:?}");
        let mut messages = Vec::new();
        for (message, size) in read(&out).into_iter().zip(&sizes) {
            let list = message.1.as_array().unwrap().clone();
            assert!(*size <= max || list.len() == 1, "{sizes:?}");
            messages.extend(list);
        }
        let expected: Vec<Value> = frames
            .iter()
            .chain([&big, &frames[0]])
            .map(|f| message_of(f))
            .collect();
        assert_eq!(messages, expected);
    }

    proptest! {
        /// Whatever the mix, a batching dashboard reads the same UPDT strings in the same order as
        /// a plain one, and every other frame at the same place among them.
        #[test]
        fn merging_keeps_the_sequence(
            kinds in prop::collection::vec(0u8..4, 0..60),
            text_value in "\\PC{0,12}",
            max in 64usize..2048,
        ) {
            let input: Vec<String> = kinds
                .iter()
                .enumerate()
                .map(|(i, kind)| match kind {
                    0 => r#"{"type":"INIT","message":[]}"#.to_owned(),
                    1 => ServerMessage::Info(format!("{i}")).to_frame(),
                    _ => updt(&format!("{i:04}"), "0001", &json!({ "v": text_value, "i": i })),
                })
                .collect();
            let mut out: Vec<Message> = input.iter().map(|f| text(f)).collect();
            let mut batcher = Batcher::default();
            batcher.merge(&mut out, max);
            let flatten = |frames: Vec<(String, Value)>| -> Vec<(String, Value)> {
                frames
                    .into_iter()
                    .flat_map(|(kind, message)| match message {
                        Value::Array(list) if kind == "UPDT" => {
                            list.into_iter().map(|m| ("UPDT".to_owned(), m)).collect()
                        }
                        message => vec![(kind, message)],
                    })
                    .collect::<Vec<_>>()
            };
            let plain: Vec<Message> = input.iter().map(|f| text(f)).collect();
            prop_assert_eq!(flatten(read(&out)), read(&plain));
            // A list frame follows another only when its first string did not fit in the other.
            for pair in out.windows(2) {
                if let (Message::Text(a), Message::Text(b)) = (&pair[0], &pair[1])
                    && a.as_str().starts_with(BATCH_START)
                    && b.as_str().starts_with(BATCH_START)
                {
                    let first = literal_len(&b.as_str()[BATCH_START.len()..]).unwrap();
                    prop_assert!(a.len() + 1 + first > max, "{} + {first} <= {max}", a.len());
                }
            }
        }
    }
}
