//! The one error type of the crate.
//!
//! ```
//! use smart_proto::{Error, parse_device_message};
//!
//! let rejection = parse_device_message(r#"{"type": "UPDT", "message": "0116:0001"}"#).unwrap_err();
//! assert_eq!(rejection.error, Error::Header("missing ':' after serial".into()));
//! assert_eq!(rejection.error.to_string(), "bad header: missing ':' after serial");
//! ```

use thiserror::Error;

/// Everything that can be wrong with a frame, a body, a record or a query.
///
/// Each message says what was wrong and, where it helps, where (byte offsets are relative to the string
/// that was being parsed: the frame for envelope errors, the body for body errors).
///
/// ```
/// let err = smart_proto::parse_body("[1, 2]").unwrap_err();
/// assert_eq!(err.to_string(), "body is not an object at byte 0 (found a list)");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Error {
    /// The frame is not a JSON object or Python dict literal.
    #[error("frame is not a JSON object or Python dict at byte {offset}: {reason}")]
    Envelope {
        /// Byte offset in the frame.
        offset: usize,
        /// What the parser expected.
        reason: String,
    },
    /// The envelope has no `type` key, or it is not a string.
    #[error("envelope has no string \"type\"")]
    MissingType,
    /// The envelope has no `message` key.
    #[error("envelope has no \"message\"")]
    MissingMessage,
    /// The `type` is not one of `INFO`, `FILT`, `INIT`, `UPDT`.
    #[error("unknown message type {0:?}: expected INFO, FILT, INIT or UPDT")]
    UnknownKind(String),
    /// The message type is valid but not allowed on this endpoint.
    #[error("unexpected message type {kind} here: expected {expected}")]
    UnexpectedKind {
        /// The type that arrived.
        kind: &'static str,
        /// What the endpoint takes.
        expected: &'static str,
    },
    /// The `message` has the wrong JSON type for its kind.
    #[error("\"message\" of a {kind} must be {expected}")]
    PayloadType {
        /// The message type.
        kind: &'static str,
        /// What the payload must be.
        expected: &'static str,
    },
    /// The capping identifier `MID:SERIAL:` is missing or malformed.
    #[error("bad header: {0}")]
    Header(String),
    /// The body parsed but is not an object.
    #[error("body is not an object at byte {offset} (found {found})")]
    BodyNotObject {
        /// Byte offset in the body.
        offset: usize,
        /// What was found instead (`a list`, `a number`, ...).
        found: &'static str,
    },
    /// The body is neither valid JSON nor a valid Python dict literal.
    #[error("body is not valid JSON or a Python dict at byte {offset}: {reason}")]
    BodySyntax {
        /// Byte offset in the body.
        offset: usize,
        /// What the parser expected.
        reason: String,
    },
    /// `serial_number` in the body differs from the serial in the header.
    #[error("serial_number {body:?} in the body does not match the header serial {header:?}")]
    SerialMismatch {
        /// Serial from the header.
        header: String,
        /// Serial from the body (its JSON text if it was not a string).
        body: String,
    },
    /// A known field has a value of the wrong type.
    #[error("field {field:?} must be {expected}, got {got}")]
    FieldType {
        /// Field name.
        field: String,
        /// The accepted types.
        expected: &'static str,
        /// The offending value, as JSON text (shortened).
        got: String,
    },
    /// A stored record is missing a required field or has a broken one.
    #[error("bad stored record: {0}")]
    Record(String),
    /// A timestamp is not RFC 3339, or lies outside years 0000 to 9999.
    #[error("bad timestamp {text:?}: {reason}")]
    Timestamp {
        /// The text as given (shortened).
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A FILT clause is malformed.
    #[error("bad query clause {clause:?}: {reason}")]
    Query {
        /// The clause as sent (shortened).
        clause: String,
        /// What is wrong with it.
        reason: String,
    },
    /// More clauses than [`crate::query::MAX_CLAUSES`].
    #[error("too many query clauses: {0} (at most 64)")]
    TooManyClauses(usize),
    /// A device body holds an integer beyond ±(2^53−1), which a browser's `JSON.parse` would silently
    /// round ([`crate::limits::MAX_SAFE_INTEGER`]).
    #[error(
        "field {field:?} holds the integer {value}, beyond ±9007199254740991 (2^53-1): browsers would \
         silently round it; send it as a string"
    )]
    UnsafeInteger {
        /// The top-level key of the body that holds it (as sent).
        field: String,
        /// The integer as written (shortened).
        value: String,
    },
    /// A record would hold more extra fields than the server allows ([`crate::Limits`]).
    #[error("too many extra fields: {count} (at most {max})")]
    TooManyExtras {
        /// How many extra fields the record would hold.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// An extra field's value is larger, written as JSON, than the server allows ([`crate::Limits`]).
    #[error("extra field {field:?} is {bytes} bytes as JSON (at most {max})")]
    ExtraTooLarge {
        /// The field (shortened).
        field: String,
        /// Its size as compact JSON, in bytes.
        bytes: usize,
        /// The limit.
        max: usize,
    },
}

/// Shorthand for results of this crate.
///
/// ```
/// fn serial_of(message: &str) -> smart_proto::Result<String> {
///     let (header, _body) = smart_proto::Header::parse(message)?;
///     Ok(header.serial.to_string())
/// }
/// assert_eq!(serial_of("0116:0001:{}").unwrap(), "0001");
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How much of a key, name or other word from the input an error message quotes, in bytes ([`shorten`]).
pub(crate) const WORD_QUOTE: usize = 32;

/// How much of a value from the input (a header part, a serial, a FILT clause) an error message quotes,
/// in bytes ([`shorten`]).
pub(crate) const VALUE_QUOTE: usize = 64;

/// Cut user-supplied text for an error message at a char boundary near `max` bytes, marking the cut.
pub(crate) fn shorten(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
