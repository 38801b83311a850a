//! Message bodies: JSON objects or Python dict literals (PROTOCOL.md §3).

use serde_json::{Map, Value};

use crate::Result;

/// Parse a body into an object. JSON first (fast path), then a Python dict literal.
/// Duplicate keys: the last wins. Anything but an object is [`crate::Error::BodyNotObject`].
pub fn parse_body(body: &str) -> Result<Map<String, Value>> {
    let _ = body;
    todo!()
}

/// Parse any Python literal (dict, list, tuple, str, int, float, `True`/`False`/`None`) into JSON.
pub fn parse_python_literal(text: &str) -> Result<Value> {
    let _ = text;
    todo!()
}
