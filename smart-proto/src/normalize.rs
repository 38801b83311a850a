//! Underscore normalization and dropped keys (PROTOCOL.md §4).
//!
//! Devices that build INIT from Python's `__dict__` send backing fields with a leading underscore
//! (`_battery`), alongside runtime attributes that are not device state (`websocket`, `tasks`, ...).
//! [`normalize`] turns such a body into the plain field set:
//!
//! 1. strip exactly one leading underscore from every key (`_battery` → `battery`, `__x` → `_x`);
//! 2. when a body holds both `x` and `_x`, the plain `x` wins, whatever the order;
//! 3. drop the device runtime keys [`RUNTIME_KEYS`];
//! 4. drop the server-managed keys [`SERVER_KEYS`];
//! 5. check `serial_number` against the header serial (as text), then drop it.
//!
//! ```
//! use serde_json::json;
//! use smart_proto::{Serial, normalize, parse_body};
//!
//! let body = parse_body("{'parameter_name': 'AT', '_parameter_name': 430, '_battery': 250, 'tasks': ''}")?;
//! let fields = normalize(body, &Serial::new("1234")?)?;
//! assert_eq!(serde_json::Value::Object(fields.into_map()), json!({"parameter_name": "AT", "battery": 250}));
//! # Ok::<(), smart_proto::Error>(())
//! ```
//!
//! Normalization is idempotent on its own output as long as no output key starts with an underscore:
//! `__x` becomes `_x`, and a second pass would turn that into `x`. That is what the rules say (one
//! underscore per pass), so it is kept.

use serde_json::{Map, Value};

use crate::{Error, Result, Serial};

/// The two lists of dropped keys and [`is_dropped`], from one spelling of the keys: `is_dropped` is a
/// `match` (a jump on the length, then one comparison), which a search of the lists would not be.
macro_rules! dropped_keys {
    (
        $(#[$runtime_doc:meta])* runtime: [$($runtime:literal),* $(,)?];
        $(#[$server_doc:meta])* server: [$($server:literal),* $(,)?];
    ) => {
        $(#[$runtime_doc])*
        pub const RUNTIME_KEYS: &[&str] = &[$($runtime),*];

        $(#[$server_doc])*
        pub const SERVER_KEYS: &[&str] = &[$($server),*];

        /// Whether a (stripped) key is dropped by rules 3 and 4: one of [`RUNTIME_KEYS`] or
        /// [`SERVER_KEYS`].
        fn is_dropped(name: &str) -> bool {
            matches!(name, $($runtime)|* | $($server)|*)
        }
    };
}

dropped_keys! {
    /// Runtime keys of the reference device that are not device state.
    ///
    /// ```
    /// use smart_proto::{Serial, normalize, normalize::RUNTIME_KEYS, parse_body};
    ///
    /// assert!(RUNTIME_KEYS.contains(&"websocket"));
    /// let fields = normalize(parse_body("{'websocket': '', '_tasks': ''}")?, &Serial::new("1")?)?;
    /// assert!(fields.as_map().is_empty());
    /// # Ok::<(), smart_proto::Error>(())
    /// ```
    runtime: [
        "server_url",
        "websocket",
        "connected",
        "publish",
        "message_id",
        "message_queue",
        "tasks",
    ];

    /// Keys only the server sets; a device sending them has them dropped.
    ///
    /// ```
    /// use smart_proto::{Serial, normalize, normalize::SERVER_KEYS, parse_body};
    ///
    /// assert!(SERVER_KEYS.contains(&"online"));
    /// let fields = normalize(parse_body(r#"{"online": true, "owner": "me"}"#)?, &Serial::new("1")?)?;
    /// assert!(fields.as_map().is_empty());
    /// # Ok::<(), smart_proto::Error>(())
    /// ```
    server: ["owner", "manufacturing_date", "last_status_update", "online"];
}

/// A body after §4: keys without their leading underscore, runtime and server keys dropped,
/// `serial_number` checked against the header and removed.
///
/// ```
/// use smart_proto::{Serial, normalize, parse_body};
///
/// let fields = normalize(parse_body(r#"{"_country": "DE"}"#)?, &Serial::new("0001")?)?;
/// assert_eq!(fields.as_map()["country"], "DE");
/// # Ok::<(), smart_proto::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Normalized(pub(crate) Map<String, Value>);

impl Normalized {
    /// The fields.
    ///
    /// ```
    /// let fields = smart_proto::Normalized::default();
    /// assert!(fields.as_map().is_empty());
    /// ```
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }

    /// The fields, owned.
    ///
    /// ```
    /// use smart_proto::{Serial, normalize, parse_body};
    ///
    /// let map = normalize(parse_body("{'_battery': 250}")?, &Serial::new("1")?)?.into_map();
    /// assert_eq!(map["battery"], 250);
    /// # Ok::<(), smart_proto::Error>(())
    /// ```
    pub fn into_map(self) -> Map<String, Value> {
        self.0
    }
}

/// Whether a key needs any of the rules (the common UPDT body needs none and is returned as is).
pub(crate) fn needs_work(key: &str) -> bool {
    key.starts_with('_') || key == "serial_number" || is_dropped(key)
}

/// Apply §4 to a parsed body for the device `serial`.
///
/// ```
/// use smart_proto::{Error, Serial, normalize, parse_body};
///
/// let serial = Serial::new("0001")?;
/// let fields = normalize(parse_body(r#"{"serial_number": "0001", "_battery": 250, "battery": 260}"#)?, &serial)?;
/// assert_eq!(fields.as_map()["battery"], 260); // plain beats underscore
/// assert!(fields.as_map().get("serial_number").is_none());
///
/// let err = normalize(parse_body(r#"{"serial_number": 1}"#)?, &serial).unwrap_err();
/// assert_eq!(err, Error::SerialMismatch { header: "0001".into(), body: "1".into() });
/// # Ok::<(), smart_proto::Error>(())
/// ```
pub fn normalize(body: Map<String, Value>, serial: &Serial) -> Result<Normalized> {
    if !body.keys().any(|k| needs_work(k)) {
        return Ok(Normalized(body));
    }
    Ok(Normalized(
        normalized_entries(body, serial)?.into_iter().collect(),
    ))
}

/// The rules, as a list of entries with unique keys, in the body's order (which stripping may have
/// broken: `_x` sorts before `a`, `x` after it).
pub(crate) fn normalized_entries(
    body: Map<String, Value>,
    serial: &Serial,
) -> Result<Vec<(String, Value)>> {
    // Decide on the borrowed map (rule 2 needs lookups), then move the entries out in the same order.
    // Only `x` and `_x` can collide after stripping (`_x` and `__x` become `x` and `_x`), so after this
    // filter no two kept keys share a name.
    let keep: Vec<bool> = body
        .keys()
        .map(|k| match k.strip_prefix('_') {
            Some(stripped) => stripped.starts_with('_') || !body.contains_key(stripped),
            None => true,
        })
        .collect();
    let mut out = Vec::with_capacity(body.len());
    let mut body_serial = None;
    for ((mut key, value), keep) in body.into_iter().zip(keep) {
        if !keep {
            continue;
        }
        if key.starts_with('_') {
            key.remove(0);
        }
        if key == "serial_number" {
            body_serial = Some(value);
        } else if !is_dropped(&key) {
            out.push((key, value));
        }
    }
    if let Some(value) = body_serial {
        let text = match value {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            other => {
                // Never equal: only strings and numbers name a serial.
                return Err(mismatch(serial, &other.to_string()));
            }
        };
        if text != serial.as_str() {
            return Err(mismatch(serial, &text));
        }
    }
    Ok(out)
}

fn mismatch(serial: &Serial, body: &str) -> Error {
    Error::SerialMismatch {
        header: serial.as_str().to_owned(),
        body: crate::error::shorten(body, crate::error::VALUE_QUOTE),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

    use serde_json::json;

    use super::*;

    fn norm(body: Value, serial: &str) -> Result<Value> {
        let Value::Object(map) = body else {
            panic!("not an object")
        };
        normalize(map, &Serial::new(serial).unwrap()).map(|n| Value::Object(n.into_map()))
    }

    #[test]
    fn strips_exactly_one_underscore() {
        assert_eq!(
            norm(json!({"_battery": 1, "__x": 2, "___y": 3}), "1").unwrap(),
            json!({"battery": 1, "_x": 2, "__y": 3})
        );
        assert_eq!(norm(json!({"_": 1}), "1").unwrap(), json!({"": 1}));
    }

    #[test]
    fn plain_key_wins_whatever_the_order() {
        // Map order is by key, so test both spellings sorting first.
        assert_eq!(
            norm(json!({"a": 1, "_a": 2}), "1").unwrap(),
            json!({"a": 1})
        );
        assert_eq!(
            norm(json!({"_z": 2, "z": 1}), "1").unwrap(),
            json!({"z": 1})
        );
        let body = crate::parse_body("{'_battery': 1, 'battery': 2}").unwrap();
        assert_eq!(
            normalize(body, &Serial::new("1").unwrap())
                .unwrap()
                .as_map()["battery"],
            2
        );
        let body = crate::parse_body("{'battery': 2, '_battery': 1}").unwrap();
        assert_eq!(
            normalize(body, &Serial::new("1").unwrap())
                .unwrap()
                .as_map()["battery"],
            2
        );
    }

    #[test]
    fn single_and_double_underscore_do_not_collide() {
        assert_eq!(
            norm(json!({"_x": 1, "__x": 2}), "1").unwrap(),
            json!({"x": 1, "_x": 2})
        );
        assert_eq!(
            norm(json!({"x": 0, "_x": 1, "__x": 2}), "1").unwrap(),
            json!({"x": 0, "_x": 2})
        );
    }

    #[test]
    fn drops_runtime_and_server_keys_with_or_without_underscore() {
        let mut body = serde_json::Map::new();
        for k in RUNTIME_KEYS.iter().chain(SERVER_KEYS) {
            body.insert((*k).to_owned(), json!(1));
            body.insert(format!("_{k}"), json!(2));
        }
        body.insert("battery".into(), json!(3));
        let out = normalize(body, &Serial::new("1").unwrap()).unwrap();
        assert_eq!(Value::Object(out.into_map()), json!({"battery": 3}));
        assert_eq!(
            norm(json!({"__owner": 1}), "1").unwrap(),
            json!({"_owner": 1})
        );
    }

    #[test]
    fn serial_number_is_checked_as_text_then_dropped() {
        assert_eq!(
            norm(json!({"serial_number": "0001", "a": 1}), "0001").unwrap(),
            json!({"a": 1})
        );
        assert_eq!(
            norm(json!({"_serial_number": "0001"}), "0001").unwrap(),
            json!({})
        );
        assert_eq!(norm(json!({"serial_number": 1}), "1").unwrap(), json!({}));
        assert_eq!(
            norm(json!({"serial_number": 1}), "0001").unwrap_err(),
            Error::SerialMismatch {
                header: "0001".into(),
                body: "1".into()
            }
        );
        assert_eq!(
            norm(json!({"serial_number": "0002"}), "0001").unwrap_err(),
            Error::SerialMismatch {
                header: "0001".into(),
                body: "0002".into()
            }
        );
        assert_eq!(
            norm(json!({"serial_number": null}), "null").unwrap_err(),
            Error::SerialMismatch {
                header: "null".into(),
                body: "null".into()
            }
        );
        // The plain key wins the conflict, so only it is checked.
        assert_eq!(
            norm(
                json!({"serial_number": "0001", "_serial_number": "9"}),
                "0001"
            )
            .unwrap(),
            json!({})
        );
    }

    #[test]
    fn untouched_body_is_returned_as_is() {
        assert_eq!(
            norm(json!({"power_consumption": 357}), "0001").unwrap(),
            json!({"power_consumption": 357})
        );
        assert_eq!(norm(json!({}), "0001").unwrap(), json!({}));
    }

    #[test]
    fn is_dropped_matches_the_public_lists() {
        for k in RUNTIME_KEYS.iter().chain(SERVER_KEYS) {
            assert!(is_dropped(k), "{k}");
        }
        assert!(!is_dropped("battery"));
    }
}
