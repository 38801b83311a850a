//! Bounds shared by the general parsers and the fast path (PROTOCOL.md §3, §6): how deep a body may nest
//! and which integers a browser reads exactly. A leaf, so that every parser can read them without
//! depending on another.

use serde_json::Value;

/// Deepest nesting of objects (dicts), lists and tuples in a body or literal, counting the outermost
/// container as level 1 (PROTOCOL.md §3). The same for JSON and Python literals, and far below
/// `serde_json`'s recursion limit of 128, so that a stored record (one level deeper than its body)
/// always reads back.
///
/// ```
/// use smart_proto::{body::MAX_DEPTH, parse_body, parse_python_literal};
///
/// let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
/// assert!(parse_python_literal(&nested(MAX_DEPTH)).is_ok());
/// assert!(parse_python_literal(&nested(MAX_DEPTH + 1)).is_err());
///
/// // A JSON body: the object itself is level 1.
/// let body = |n: usize| format!("{{\"a\": {}}}", nested(n - 1));
/// assert!(parse_body(&body(MAX_DEPTH)).is_ok());
/// let err = parse_body(&body(MAX_DEPTH + 1)).unwrap_err();
/// assert!(err.to_string().ends_with("nested deeper than 32 levels"), "{err}");
/// ```
pub const MAX_DEPTH: usize = 32;

/// The largest integer a browser's `JSON.parse` (an IEEE double) reads exactly: 2^53−1. Public as
/// [`limits::MAX_SAFE_INTEGER`](crate::limits::MAX_SAFE_INTEGER).
pub(crate) const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Whether a value nests deeper than `limit` levels (a scalar is level 0, `[]` level 1).
pub(crate) fn deeper_than(value: &Value, limit: usize) -> bool {
    match value {
        Value::Array(items) => limit == 0 || items.iter().any(|v| deeper_than(v, limit - 1)),
        Value::Object(map) => limit == 0 || map.values().any(|v| deeper_than(v, limit - 1)),
        _ => false,
    }
}
