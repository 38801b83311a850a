//! Frame writers: the exact text of the frames the server sends (PROTOCOL.md §7), for a server that
//! builds them from its own parts — cached record texts, a change set shared by every dashboard — rather
//! than from a [`ServerMessage`](crate::ServerMessage). The text is byte for byte what
//! [`ServerMessage::to_frame`](crate::ServerMessage::to_frame) and [`write_init`](crate::write_init) write.
//!
//! ```
//! use serde_json::{Map, json};
//! use smart_proto::{Header, Kind, ServerMessage, frame};
//!
//! let header = Header::new("0116", "0001")?;
//! let mut body = Map::new();
//! body.insert("battery".into(), json!(92.5));
//! assert_eq!(
//!     frame::updt(&header, &body),
//!     ServerMessage::Updt { header, body }.to_frame(),
//! );
//!
//! let mut init = String::new();
//! frame::write_envelope(&mut init, Kind::Init, |out| out.push_str("[]"));
//! assert_eq!(init, smart_proto::write_init([]));
//! # Ok::<(), smart_proto::Error>(())
//! ```

use std::fmt::Write as _;

use serde_json::{Map, Value};

use crate::{Header, Kind};

/// Append `{"type":"KIND","message":MESSAGE}`, where `write_message` appends MESSAGE: exactly one JSON
/// value (a list of records for an INIT, a string for the others). The caller vouches for that text; the
/// envelope around it is this function's.
///
/// ```
/// use smart_proto::{Kind, Record, Serial, Timestamp, frame, write_init};
///
/// let record = Record::new(Serial::new("0001")?, "EET", Timestamp::UNIX_EPOCH);
/// let cached = record.to_json(); // a server may keep each record's text
/// let mut out = String::new();
/// frame::write_envelope(&mut out, Kind::Init, |out| {
///     out.push('[');
///     out.push_str(&cached);
///     out.push(']');
/// });
/// assert_eq!(out, write_init([&record]));
/// # Ok::<(), smart_proto::Error>(())
/// ```
pub fn write_envelope(out: &mut String, kind: Kind, write_message: impl FnOnce(&mut String)) {
    out.push_str(r#"{"type":""#);
    out.push_str(kind.as_str());
    out.push_str(r#"","message":"#);
    write_message(out);
    out.push('}');
}

/// Append the UPDT `{"type":"UPDT","message":"MID:SERIAL:{body}"}` of a device's changed fields, as
/// [`ServerMessage::Updt`](crate::ServerMessage::Updt) writes it, from borrowed parts: the body is written
/// with the separators of Python's `json.dumps` (`{"battery": 92.5}`) and then quoted as a JSON string.
///
/// ```
/// use serde_json::{Map, json};
/// use smart_proto::{Header, frame};
///
/// let mut body = Map::new();
/// body.insert("online".into(), json!(false));
/// let mut out = String::new();
/// frame::write_updt(&mut out, &Header::new("0000", "0001")?, &body);
/// assert_eq!(out, r#"{"type":"UPDT","message":"0000:0001:{\"online\": false}"}"#);
/// # Ok::<(), smart_proto::Error>(())
/// ```
pub fn write_updt(out: &mut String, header: &Header, body: &Map<String, Value>) {
    // Header texts are `[A-Za-z0-9_-]`: nothing to escape.
    let _ = write!(out, r#"{{"type":"UPDT","message":"{header}:"#);
    let mut inner = String::with_capacity(32);
    crate::json::write_spaced_object(&mut inner, body.iter().map(|(k, v)| (k.as_str(), v)));
    crate::json::write_chars(out, &inner);
    out.push_str("\"}");
}

/// [`write_updt`] into a new `String`.
///
/// ```
/// use serde_json::{Map, json};
/// use smart_proto::{Header, frame};
///
/// let mut body = Map::new();
/// body.insert("country".into(), json!("AT"));
/// assert_eq!(
///     frame::updt(&Header::new("0008", "0001")?, &body),
///     r#"{"type":"UPDT","message":"0008:0001:{\"country\": \"AT\"}"}"#
/// );
/// # Ok::<(), smart_proto::Error>(())
/// ```
pub fn updt(header: &Header, body: &Map<String, Value>) -> String {
    let mut out = String::with_capacity(64);
    write_updt(&mut out, header, body);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::{Record, Serial, ServerMessage, Timestamp, write_init};

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |x| x.is_finite())
                .prop_map(Value::from),
            "\\PC{0,12}|[\\x00-\\x7f]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("\\PC{0,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn updt_is_byte_identical_to_server_message(
            id in "[0-9]{1,9}",
            serial in "[A-Za-z0-9_-]{1,32}",
            body in prop::collection::btree_map("\\PC{0,10}|[\\x00-\\x7f]{0,10}", value(), 0..6),
        ) {
            let header = Header::new(&id, &serial).unwrap();
            let body: Map<String, Value> = body.into_iter().collect();
            let expected = ServerMessage::Updt { header: header.clone(), body: body.clone() }.to_frame();
            prop_assert_eq!(updt(&header, &body), expected);
        }
    }

    #[test]
    fn envelope_around_records_is_write_init() {
        let mut a = Record::new(Serial::new("0001").unwrap(), "EET", Timestamp::UNIX_EPOCH);
        a.extra.insert("mode".into(), json!("e\"co"));
        let b = Record::new(Serial::new("0002").unwrap(), "EET", Timestamp::UNIX_EPOCH);
        let keys = crate::extra_keys([&a, &b]);
        let mut out = String::new();
        write_envelope(&mut out, Kind::Init, |out| {
            out.push('[');
            a.write_json(out);
            out.push(',');
            b.write_json_padded(&keys, out);
            out.push(']');
        });
        assert_eq!(out, write_init([&a, &b]));
    }

    #[test]
    fn envelope_names_each_kind() {
        for kind in [Kind::Info, Kind::Filt, Kind::Init, Kind::Updt] {
            let mut out = String::new();
            write_envelope(&mut out, kind, |out| out.push_str("[]"));
            assert_eq!(
                out,
                format!(r#"{{"type":"{}","message":[]}}"#, kind.as_str())
            );
        }
    }
}
