//! The capping identifier `MID:SERIAL:` (PROTOCOL.md §2).

use std::fmt;

use crate::Result;

/// A message id: 1 to 9 ASCII digits, kept verbatim (`0116`, `10000`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(String);

/// A device serial: 1 to 32 characters of `[A-Za-z0-9_-]`, kept verbatim (`0001` and `1` differ).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial(String);

/// The `MID:SERIAL` pair that caps every device message and is echoed in its ack.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Header {
    /// Message id.
    pub id: MessageId,
    /// Device serial.
    pub serial: Serial,
}

impl MessageId {
    /// Validate a message id.
    pub fn new(s: &str) -> Result<MessageId> {
        let _ = s;
        todo!()
    }
    /// `0000`, used by the server for online/offline UPDTs.
    pub fn zero() -> MessageId {
        MessageId("0000".to_owned())
    }
    /// The id as sent.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Serial {
    /// Validate a serial.
    pub fn new(s: &str) -> Result<Serial> {
        let _ = s;
        todo!()
    }
    /// The serial as sent.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Header {
    /// Split `MID:SERIAL:BODY` into the header and the body (everything after the second colon).
    pub fn parse(message: &str) -> Result<(Header, &str)> {
        let _ = message;
        todo!()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Writes `MID:SERIAL` (no trailing colon).
impl fmt::Display for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.id, self.serial)
    }
}
