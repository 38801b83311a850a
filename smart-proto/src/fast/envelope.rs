//! The envelope scan. Nearly every frame is an object whose values are all strings, like
//! `{"type": "UPDT", "message": "0116:0001:{\"power_consumption\": 357}"}` or its Python form
//! `{'type': 'UPDT', 'message': '0116:0001:{"power_consumption": 357}'}`. A byte scan finds the strings
//! without building anything; whatever it does not recognise goes to `serde_json` and the Python parser
//! ([`parse_envelope`](crate::parse_envelope)), which also produce the error messages.

use std::borrow::Cow;

use super::scan::{find_special, json_ws, unescape_json};

/// The envelope's string values as they sit in the frame (still escaped).
#[derive(Debug, Clone, Copy)]
pub(crate) struct FastEnvelope<'a> {
    pub(crate) frame: &'a str,
    pub(crate) kind: Option<JsonStr>,
    pub(crate) message: Option<JsonStr>,
    pub(crate) reason: Option<JsonStr>,
}

/// An object whose keys and values are all strings, or `None`: strict JSON, or a Python dict literal of
/// single-quoted strings without escapes (`str(dict)` from a Python device), or a mix of both.
///
/// Where the two languages disagree, JSON's reading applies only to JSON text and Python's only to the
/// rest (PROTOCOL.md §3): so once a single-quoted string is seen, an escaped string anywhere leaves the
/// frame to the general path.
pub(crate) fn scan_json_envelope(frame: &str) -> Option<FastEnvelope<'_>> {
    scan_envelope(frame, |_, _| None)
}

/// [`scan_json_envelope`], offering each `message` value to `in_place` first: given the frame and the
/// index of the value's opening quote, it returns the index after the closing quote if it read the
/// value itself, or `None` to leave it to the scan.
///
/// Inlined into both callers: the envelope's fields then stay in registers instead of being copied
/// through a returned struct, which measurably costs the device fast path.
#[allow(clippy::inline_always, reason = "hot path, measured")]
#[inline(always)]
pub(crate) fn scan_envelope<'a>(
    frame: &'a str,
    mut in_place: impl FnMut(&'a str, usize) -> Option<usize>,
) -> Option<FastEnvelope<'a>> {
    /// Where a value goes.
    enum Slot {
        Kind,
        Message,
        Reason,
        Other,
    }
    let b = frame.as_bytes();
    let mut i = json_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = json_ws(b, i + 1);
    let mut env = FastEnvelope {
        frame,
        kind: None,
        message: None,
        reason: None,
    };
    let (mut python, mut escaped) = (false, false);
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            // `"type"` and `"message"` as they are nearly always written: one comparison each instead
            // of a scan (the same result: plain quoted text).
            let (slot, next) = if let Some(next) = quoted_word(b, i, b"type", &mut python) {
                (Slot::Kind, next)
            } else if let Some(next) = quoted_word(b, i, b"message", &mut python) {
                (Slot::Message, next)
            } else {
                let (key, next) = envelope_str(frame, i, &mut python)?;
                // An escaped key could still spell one of ours; leave that rare case to serde.
                if key.escaped {
                    return None;
                }
                let slot = match key.bytes(frame) {
                    b"type" => Slot::Kind,
                    b"message" => Slot::Message,
                    b"reason" => Slot::Reason,
                    _ => Slot::Other,
                };
                (slot, next)
            };
            i = json_ws(b, next);
            if b.get(i) != Some(&b':') {
                return None;
            }
            i = json_ws(b, i + 1);
            let read = match slot {
                Slot::Message => in_place(frame, i),
                _ => None,
            };
            let (value, next) = match read {
                Some(next) => {
                    let quote = *b.get(i)?;
                    python |= quote == b'\'';
                    let value = JsonStr {
                        start: i + 1,
                        end: next.saturating_sub(1),
                        // Conservative: the text may hold escaped quotes.
                        escaped: quote == b'"',
                    };
                    (value, next)
                }
                None => envelope_str(frame, i, &mut python)?,
            };
            escaped |= value.escaped;
            // Our own values are unescaped later; any other value must still be valid JSON, or the frame
            // is not an object at all (the general path reports where).
            if matches!(slot, Slot::Other) && value.escaped && value.to_cow(frame).is_none() {
                return None;
            }
            let displaced = match slot {
                Slot::Kind => env.kind.replace(value),
                Slot::Message => env.message.replace(value),
                Slot::Reason => env.reason.replace(value),
                Slot::Other => None,
            };
            // A repeated key: the last value wins, but the one it displaces must still be valid.
            if displaced.is_some_and(|old| old.escaped && old.to_cow(frame).is_none()) {
                return None;
            }
            i = json_ws(b, next);
            match b.get(i)? {
                b',' => i = json_ws(b, i + 1),
                b'}' => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    (json_ws(b, i) == b.len() && !(python && escaped)).then_some(env)
}

/// If `word` stands at `i` between two equal quotes (`"` or `'`, which sets `python`), the index after
/// the closing one. `word` must be plain text (no quote, backslash or control byte): then this reads
/// what [`envelope_str`] would, with one comparison instead of a scan.
#[allow(clippy::inline_always, reason = "hot path, measured")]
#[inline(always)]
fn quoted_word(b: &[u8], i: usize, word: &[u8], python: &mut bool) -> Option<usize> {
    let quote = *b.get(i)?;
    let end = i + 1 + word.len();
    let found = (quote == b'"' || quote == b'\'')
        && b.get(i + 1..end) == Some(word)
        && b.get(end) == Some(&quote);
    if !found {
        return None;
    }
    *python |= quote == b'\'';
    Some(end + 1)
}

/// The string whose opening quote is at `i`, and the index after its closing quote: a JSON string, or
/// a single-quoted Python string without escapes (which sets `python`; its inside is its value). `None`
/// for anything else, including raw control bytes (the general path reads those).
#[allow(clippy::inline_always, reason = "hot path, measured")]
#[inline(always)]
fn envelope_str(frame: &str, i: usize, python: &mut bool) -> Option<(JsonStr, usize)> {
    let b = frame.as_bytes();
    let quote = *b.get(i)?;
    if quote != b'"' && quote != b'\'' {
        return None;
    }
    *python |= quote == b'\'';
    let start = i + 1;
    let mut j = start;
    let mut escaped = false;
    loop {
        j += find_special(b.get(j..)?, quote)?;
        match *b.get(j)? {
            c if c == quote => break,
            // Skip the escaped byte; a multi-byte char there holds no quote or backslash byte.
            b'\\' if quote == b'"' => {
                escaped = true;
                j += 2;
            }
            _ => return None,
        }
    }
    Some((
        JsonStr {
            start,
            end: j,
            escaped,
        },
        j + 1,
    ))
}

/// A string's inside as it sits in the frame (still escaped), `start..end`; `escaped` if it holds a
/// backslash. Kept as a range: the hot path compares bytes and never needs the `str` slice.
#[derive(Debug, Clone, Copy)]
pub(crate) struct JsonStr {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) escaped: bool,
}

impl JsonStr {
    /// The inside's bytes, still escaped.
    pub(crate) fn bytes(self, frame: &str) -> &[u8] {
        frame
            .as_bytes()
            .get(self.start..self.end)
            .unwrap_or_default()
    }

    /// The inside, still escaped. Both ends sit next to ASCII quotes, so this is `None` only for a
    /// range the scan could not have produced.
    pub(crate) fn raw(self, frame: &str) -> Option<&str> {
        frame.get(self.start..self.end)
    }

    /// The text, borrowed unless escaped; `None` if an escape is invalid.
    pub(crate) fn to_cow(self, frame: &str) -> Option<Cow<'_, str>> {
        let raw = self.raw(frame)?;
        if !self.escaped {
            return Some(Cow::Borrowed(raw));
        }
        let mut out = String::with_capacity(raw.len());
        unescape_json(raw, &mut out).then_some(Cow::Owned(out))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

    use super::*;
    use crate::envelope::{RawEnvelope, python_envelope};
    use crate::{Envelope, Payload, parse_envelope};

    fn text<'a>(env: &'a Envelope<'_>) -> &'a str {
        match &env.message {
            Payload::Text(s) => s,
            other => panic!("not text: {other:?}"),
        }
    }

    #[test]
    fn a_repeated_key_displaces_only_a_valid_value() {
        // Found by the fuzzer: the first `message` holds escapes neither JSON (`\ `) nor Python (`\U`
        // needs 8 hex digits) accepts; the second one wins, but the frame is still no object at all.
        let frame =
            r#"{"type":"INITUPDT","message":"0005:0001:{\"b\ \UPDT","message":"0005:0001:{}"}"#;
        assert!(scan_json_envelope(frame).is_none());
        assert!(matches!(
            parse_envelope(frame).unwrap_err(),
            crate::Error::Envelope { .. }
        ));
        let rejection = crate::parse_device_message(frame).unwrap_err();
        assert_eq!(rejection.header, None);
        // A valid displaced value keeps the fast path, and the last value wins.
        let frame = r#"{"type":"UPDT","message":"a\"b","message":"0005:0001:{}"}"#;
        let env = scan_json_envelope(frame)
            .and_then(RawEnvelope::from_scan)
            .unwrap();
        assert!(matches!(env.message, Some(Payload::Text(ref t)) if t == "0005:0001:{}"));
    }

    #[test]
    fn fast_path_agrees_with_serde() {
        for frame in [
            r#"{"type": "UPDT", "message": "0116:0001:{\"power_consumption\": 357}"}"#,
            r#" { "message" : "m" , "type" : "INFO" , "reason" : "r\n" } "#,
            r#"{"type": "INIT", "message": "", "x": "y"}"#,
            "{}",
        ] {
            let fast = scan_json_envelope(frame)
                .and_then(RawEnvelope::from_scan)
                .unwrap()
                .finish();
            let raw: RawEnvelope<'_> = serde_json::from_str(frame).unwrap();
            assert_eq!(fast, raw.finish(), "{frame}");
        }
        // Python dict literals of plain single-quoted strings (and mixes) take the fast path too.
        for frame in [
            "{'type': 'UPDT', 'message': '0116:0001:{\"power_consumption\": 357}'}",
            r#"{"type": 'INFO', 'message': "m", 'reason': 'r'}"#,
            "{'type': 'UPDT'}",
        ] {
            let fast = scan_json_envelope(frame)
                .and_then(RawEnvelope::from_scan)
                .unwrap()
                .finish();
            let raw = python_envelope(frame).unwrap();
            assert_eq!(fast, raw.finish(), "{frame}");
        }
        for not_fast in [
            r#"{"type": "UPDT", "message": []}"#,
            r#"{"type": "UPDT", "message": "x"} x"#,
            "[]",
            r#"{"a\u0062": "x"}"#,
            // Python forms the scan leaves to the Python parser: escapes, prefixes, trailing commas,
            // raw control bytes, and a JSON escape in a frame that is not JSON (Python reads `\/` as is).
            r"{'type': 'UP\'DT'}",
            "{u'type': 'UPDT'}",
            "{'type': 'UPDT',}",
            "{'type': 'UP\tDT'}",
            r#"{'type': 'UPDT', "message": "a\/b"}"#,
        ] {
            assert!(scan_json_envelope(not_fast).is_none(), "{not_fast}");
        }
        assert_eq!(
            text(&parse_envelope(r#"{'type': 'UPDT', "message": "a\/b"}"#).unwrap()),
            r"a\/b"
        );
        assert_eq!(
            text(&parse_envelope(r#"{"type": "UPDT", "message": "a\/b"}"#).unwrap()),
            "a/b"
        );
    }
}
