//! The capping identifier `MID:SERIAL:` (PROTOCOL.md §2).
//!
//! Every device message starts with a message id and the device serial, each followed by a colon; the rest
//! is the body. Both parts are kept exactly as sent, because the ack echoes them verbatim and `1` and `0001`
//! are different devices.
//!
//! ```
//! use smart_proto::Header;
//!
//! let (header, body) = Header::parse("0116:0001:{\"power_consumption\": 357}")?;
//! assert_eq!(header.id.as_str(), "0116");
//! assert_eq!(header.serial.as_str(), "0001");
//! assert_eq!(body, "{\"power_consumption\": 357}");
//! assert_eq!(header.to_string(), "0116:0001");
//! # Ok::<(), smart_proto::Error>(())
//! ```
//!
//! Both types store their text inline (no heap allocation), so parsing a header costs no allocation.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use crate::{Error, Result};

/// Longest accepted message id, in digits.
///
/// ```
/// use smart_proto::{MessageId, header::MAX_ID_LEN};
///
/// assert!(MessageId::new(&"9".repeat(MAX_ID_LEN)).is_ok());
/// assert!(MessageId::new(&"9".repeat(MAX_ID_LEN + 1)).is_err());
/// ```
pub const MAX_ID_LEN: usize = 9;
/// Longest accepted serial, in characters.
///
/// ```
/// use smart_proto::{Serial, header::MAX_SERIAL_LEN};
///
/// assert!(Serial::new(&"x".repeat(MAX_SERIAL_LEN)).is_ok());
/// assert!(Serial::new(&"x".repeat(MAX_SERIAL_LEN + 1)).is_err());
/// ```
pub const MAX_SERIAL_LEN: usize = 32;

/// A message id: 1 to 9 ASCII digits, kept verbatim (`0116`, `10000`).
///
/// ```
/// use smart_proto::MessageId;
///
/// assert_eq!(MessageId::new("10000")?.as_str(), "10000");
/// let err = MessageId::new("ab").unwrap_err();
/// assert_eq!(err.to_string(), "bad header: message id must be 1 to 9 digits, got \"ab\"");
/// # Ok::<(), smart_proto::Error>(())
/// ```
#[derive(Clone)]
pub struct MessageId {
    len: u8,
    buf: [u8; MAX_ID_LEN],
}

/// A device serial: 1 to 32 characters of `[A-Za-z0-9_-]`, kept verbatim (`0001` and `1` differ).
///
/// Compares, orders and hashes like its text, and borrows as `str`, so a map keyed by `Serial` can be
/// searched with a `&str`.
///
/// ```
/// use smart_proto::Serial;
///
/// let serial = Serial::new("0001")?;
/// assert_eq!(serial.as_str(), "0001");
/// assert_ne!(serial, Serial::new("1")?);
/// assert!(Serial::new("00 01").is_err());
/// # Ok::<(), smart_proto::Error>(())
/// ```
#[derive(Clone)]
pub struct Serial {
    len: u8,
    buf: [u8; MAX_SERIAL_LEN],
}

/// The `MID:SERIAL` pair that caps every device message and is echoed in its ack.
///
/// ```
/// use smart_proto::{Header, MessageId, Serial};
///
/// let header = Header { id: MessageId::new("0008")?, serial: Serial::new("0001")? };
/// assert_eq!(header.to_string(), "0008:0001");
/// # Ok::<(), smart_proto::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Header {
    /// Message id.
    pub id: MessageId,
    /// Device serial.
    pub serial: Serial,
}

/// Copy validated ASCII into an inline buffer.
fn inline<const N: usize>(s: &str) -> [u8; N] {
    inline_bytes(s.as_bytes())
}

/// Copy validated ASCII (at most `N` bytes) into an inline buffer.
fn inline_bytes<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut buf = [0u8; N];
    if let Some(head) = buf.get_mut(..s.len()) {
        head.copy_from_slice(s);
    }
    buf
}

/// Quote a possibly long, user-supplied value for an error message.
fn quote(s: &str) -> String {
    crate::error::shorten(s, crate::error::VALUE_QUOTE)
}

impl MessageId {
    /// Validate a message id: 1 to 9 ASCII digits.
    ///
    /// ```
    /// use smart_proto::MessageId;
    ///
    /// assert!(MessageId::new("0116").is_ok());
    /// assert!(MessageId::new("").is_err());
    /// assert!(MessageId::new("1234567890").is_err());
    /// ```
    pub fn new(s: &str) -> Result<MessageId> {
        if s.is_empty() || s.len() > MAX_ID_LEN || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::Header(format!(
                "message id must be 1 to 9 digits, got {:?}",
                quote(s)
            )));
        }
        Ok(MessageId {
            len: s.len() as u8,
            buf: inline(s),
        })
    }

    /// `0000`, used by the server for online/offline UPDTs.
    ///
    /// ```
    /// assert_eq!(smart_proto::MessageId::zero().as_str(), "0000");
    /// ```
    pub fn zero() -> MessageId {
        MessageId {
            len: 4,
            buf: inline("0000"),
        }
    }

    /// The id as sent.
    ///
    /// ```
    /// assert_eq!(smart_proto::MessageId::new("0042")?.as_str(), "0042");
    /// # Ok::<(), smart_proto::Error>(())
    /// ```
    pub fn as_str(&self) -> &str {
        // Only ASCII digits are ever stored, so this cannot fail.
        std::str::from_utf8(self.bytes()).unwrap_or_default()
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

impl Serial {
    /// Validate a serial: 1 to 32 characters of `[A-Za-z0-9_-]`.
    ///
    /// ```
    /// use smart_proto::Serial;
    ///
    /// assert!(Serial::new("SN-4711_b").is_ok());
    /// assert_eq!(
    ///     Serial::new("12:34").unwrap_err().to_string(),
    ///     "bad header: serial must be 1 to 32 characters of [A-Za-z0-9_-], got \"12:34\"",
    /// );
    /// ```
    pub fn new(s: &str) -> Result<Serial> {
        if s.is_empty() || s.len() > MAX_SERIAL_LEN || !s.bytes().all(is_serial_byte) {
            return Err(Error::Header(format!(
                "serial must be 1 to 32 characters of [A-Za-z0-9_-], got {:?}",
                quote(s)
            )));
        }
        Ok(Serial {
            len: s.len() as u8,
            buf: inline(s),
        })
    }

    /// The serial as sent.
    ///
    /// ```
    /// assert_eq!(smart_proto::Serial::new("0001")?.as_str(), "0001");
    /// # Ok::<(), smart_proto::Error>(())
    /// ```
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored, so this cannot fail.
        std::str::from_utf8(self.bytes()).unwrap_or_default()
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

fn is_serial_byte(b: u8) -> bool {
    SERIAL_BYTES[usize::from(b)]
}

/// `[A-Za-z0-9_-]`, as a table: one load per byte on the hot path.
static SERIAL_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || c == b'_' || c == b'-';
        b += 1;
    }
    table
};

/// The lengths of `MID` and `SERIAL` in `MID:SERIAL:…` at the start of `b`, if it is a valid header (each
/// part checked while it is read, without copying anything).
#[inline]
pub(crate) fn part_lens(b: &[u8]) -> Option<(usize, usize)> {
    let id_len = part_len(b, MAX_ID_LEN, |c| c.is_ascii_digit())?;
    let serial_len = part_len(b.get(id_len + 1..)?, MAX_SERIAL_LEN, is_serial_byte)?;
    Some((id_len, serial_len))
}

/// Length of the run of 1 to `max` bytes accepted by `ok` that starts `b` and is followed by a colon.
#[inline]
fn part_len(b: &[u8], max: usize, ok: impl Fn(u8) -> bool) -> Option<usize> {
    let mut i = 0;
    // Stops one byte past the longest valid part, which bounds the scan on hostile input.
    while let Some(&c) = b.get(i) {
        if c == b':' || i > max || !ok(c) {
            break;
        }
        i += 1;
    }
    (i > 0 && i <= max && b.get(i) == Some(&b':')).then_some(i)
}

/// `MID:SERIAL:` at the start of `b` (the hot path: one pass over a few bytes, no re-validation, no
/// error text), and the index after the second colon.
fn read_header(b: &[u8]) -> Option<(Header, usize)> {
    let (id_len, serial_len) = part_lens(b)?;
    Some((from_lens(b, id_len, serial_len), id_len + serial_len + 2))
}

/// The header at the start of `b` whose parts [`part_lens`] measured. Inlined so that the header is
/// written where the caller keeps it, not copied there.
#[allow(clippy::inline_always, reason = "hot path, measured")]
#[inline(always)]
pub(crate) fn from_lens(b: &[u8], id_len: usize, serial_len: usize) -> Header {
    Header {
        id: MessageId {
            len: id_len as u8,
            buf: padded(b, 0, id_len),
        },
        serial: Serial {
            len: serial_len as u8,
            buf: padded(b, id_len + 1, serial_len),
        },
    }
}

/// `b[start..start + len]` (at most `N` bytes), zero-padded to `N`. Taken as one block when the input runs
/// on far enough (the usual case: a body follows the header) and the padding masked off eight bytes at
/// a time: a buffer written byte by byte and then moved as a whole stalls the CPU on the move.
#[allow(clippy::inline_always, reason = "hot path, measured")]
#[inline(always)]
fn padded<const N: usize>(b: &[u8], start: usize, len: usize) -> [u8; N] {
    let Some(&window) = b.get(start..).and_then(<[u8]>::first_chunk::<N>) else {
        return inline_bytes(b.get(start..start + len).unwrap_or_default());
    };
    let mut buf = window;
    for (i, chunk) in buf.chunks_mut(8).enumerate() {
        let keep = len.saturating_sub(i * 8);
        if let Ok(word) = <&mut [u8; 8]>::try_from(&mut *chunk) {
            if keep < 8 {
                let mask = (1_u64 << (keep * 8)) - 1;
                *word = (u64::from_le_bytes(*word) & mask).to_le_bytes();
            }
        } else {
            chunk.iter_mut().skip(keep).for_each(|byte| *byte = 0);
        }
    }
    buf
}

/// `MID`, `:`, `SERIAL`, `:` again, to say which part is wrong once [`read_header`] failed.
fn header_error(message: &str) -> Error {
    let mut parts = message.splitn(3, ':');
    let (mid, serial) = (parts.next().unwrap_or_default(), parts.next());
    if let Err(e) = MessageId::new(mid) {
        return e;
    }
    let Some(serial) = serial else {
        return Error::Header("missing ':' after message id".to_owned());
    };
    if let Err(e) = Serial::new(serial) {
        return e;
    }
    Error::Header("missing ':' after serial".to_owned())
}

impl Header {
    /// Split `MID:SERIAL:BODY` into the header and the body (everything after the second colon, which may
    /// hold more colons).
    ///
    /// ```
    /// use smart_proto::Header;
    ///
    /// let (header, body) = Header::parse("10000:1234:{'time': '12:00'}")?;
    /// assert_eq!(header.id.as_str(), "10000");
    /// assert_eq!(body, "{'time': '12:00'}");
    ///
    /// let err = Header::parse("0001:1234").unwrap_err();
    /// assert_eq!(err.to_string(), "bad header: missing ':' after serial");
    /// # Ok::<(), smart_proto::Error>(())
    /// ```
    pub fn parse(message: &str) -> Result<(Header, &str)> {
        Header::split(message).ok_or_else(|| header_error(message))
    }

    /// [`Header::parse`] without the error: `None` if the text does not start with a valid header.
    pub(crate) fn split(message: &str) -> Option<(Header, &str)> {
        let (header, body_start) = read_header(message.as_bytes())?;
        // The parts and colons are ASCII, so the body starts on a char boundary.
        Some((header, message.get(body_start..)?))
    }

    /// Build a header from its two texts.
    ///
    /// ```
    /// let header = smart_proto::Header::new("0116", "0001")?;
    /// assert_eq!(header.to_string(), "0116:0001");
    /// # Ok::<(), smart_proto::Error>(())
    /// ```
    pub fn new(id: &str, serial: &str) -> Result<Header> {
        Ok(Header {
            id: MessageId::new(id)?,
            serial: Serial::new(serial)?,
        })
    }
}

macro_rules! text_traits {
    ($ty:ident) => {
        // On the whole inline buffers: the same answers as on the text (`str` compares and orders
        // its UTF-8 bytes). Every constructor pads the buffer with zeros, which no id or serial
        // holds, so a shorter text orders before a longer one it begins, and equal buffers are
        // equal texts. A fixed-size comparison compiles to a few word compares, where the text's
        // variable length takes a `memcmp` call (fleet and history maps compare serials a lot).
        impl PartialEq for $ty {
            fn eq(&self, other: &Self) -> bool {
                self.buf == other.buf
            }
        }
        impl Eq for $ty {}
        impl PartialOrd for $ty {
            fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
                Some(self.cmp(other))
            }
        }
        impl Ord for $ty {
            fn cmp(&self, other: &Self) -> Ordering {
                self.buf.cmp(&other.buf)
            }
        }
        // Hashes like `str` so that `Borrow<str>` lookups work in hash maps.
        impl Hash for $ty {
            fn hash<H: Hasher>(&self, state: &mut H) {
                self.as_str().hash(state);
            }
        }
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_tuple(stringify!($ty))
                    .field(&self.as_str())
                    .finish()
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }
        impl Borrow<str> for $ty {
            fn borrow(&self) -> &str {
                self.as_str()
            }
        }
        impl PartialEq<str> for $ty {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }
        impl PartialEq<&str> for $ty {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
        impl FromStr for $ty {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                $ty::new(s)
            }
        }
        impl TryFrom<&str> for $ty {
            type Error = Error;
            fn try_from(s: &str) -> Result<Self> {
                $ty::new(s)
            }
        }
    };
}

text_traits!(MessageId);
text_traits!(Serial);

/// Writes `MID:SERIAL` (no trailing colon).
impl fmt::Display for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.id, self.serial)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

    use super::*;

    proptest::proptest! {
        /// Serials compare, order and hash exactly like their text (maps keyed by `Serial` are
        /// searched with `&str`, and listed in the text's order).
        #[test]
        fn serials_compare_like_their_text(a in "[A-Za-z0-9_-]{1,32}", b in "[A-Za-z0-9_-]{1,32}") {
            let (x, y) = (Serial::new(&a).unwrap(), Serial::new(&b).unwrap());
            proptest::prop_assert_eq!(x == y, a == b);
            proptest::prop_assert_eq!(x.cmp(&y), a.cmp(&b));
            let hash = |v: &dyn Fn(&mut std::collections::hash_map::DefaultHasher)| {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                v(&mut h);
                h.finish()
            };
            proptest::prop_assert_eq!(hash(&|h| x.hash(h)), hash(&|h| a.hash(h)));
        }

        /// The same where it is hardest: one text begins the other, or both share a long start;
        /// and message ids (compared on their padded buffers too).
        #[test]
        fn texts_sharing_a_start_compare_like_their_text(
            a in "[A-Za-z0-9_-]{1,32}",
            keep in 0usize..32,
            tail in "[A-Za-z0-9_-]{0,32}",
            m in "[0-9]{1,9}",
            n_keep in 0usize..9,
            n_tail in "[0-9]{0,9}",
        ) {
            let b = sharing_start(&a, keep, &tail, 32);
            compares_like_text(&a, &b, Serial::new)?;
            let n = sharing_start(&m, n_keep, &n_tail, 9);
            compares_like_text(&m, &n, MessageId::new)?;
        }
    }

    /// The first `keep` characters of `text`, then `tail`, at most `max` characters (at least one).
    fn sharing_start(text: &str, keep: usize, tail: &str, max: usize) -> String {
        let shared: String = text
            .chars()
            .take(keep)
            .chain(tail.chars())
            .take(max)
            .collect();
        if shared.is_empty() {
            "0".to_owned()
        } else {
            shared
        }
    }

    /// `make(a)` and `make(b)` are equal and ordered as `a` and `b` are.
    fn compares_like_text<T: Ord>(
        a: &str,
        b: &str,
        make: fn(&str) -> Result<T>,
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        let (x, y) = (make(a).unwrap(), make(b).unwrap());
        proptest::prop_assert_eq!(x == y, a == b);
        proptest::prop_assert_eq!(x.cmp(&y), a.cmp(b));
        Ok(())
    }

    #[test]
    fn message_id_accepts_one_to_nine_digits() {
        assert_eq!(MessageId::new("0").unwrap().as_str(), "0");
        assert_eq!(MessageId::new("0116").unwrap().as_str(), "0116");
        assert_eq!(MessageId::new("10000").unwrap().as_str(), "10000");
        assert_eq!(MessageId::new("123456789").unwrap().as_str(), "123456789");
        for bad in ["", "1234567890", "12a", "-1", " 1", "١٢"] {
            assert!(MessageId::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn message_id_error_names_the_value() {
        assert_eq!(
            MessageId::new("ab").unwrap_err(),
            Error::Header("message id must be 1 to 9 digits, got \"ab\"".to_owned())
        );
    }

    #[test]
    fn serial_accepts_vendor_forms_and_keeps_them_verbatim() {
        for good in ["1", "0001", "SN-4711_b", &"a".repeat(32)] {
            assert_eq!(Serial::new(good).unwrap().as_str(), good);
        }
        for bad in ["", &"a".repeat(33), "00 01", "ä", "1.2", "a:b"] {
            assert!(Serial::new(bad).is_err(), "{bad:?} accepted");
        }
        assert_ne!(Serial::new("1").unwrap(), Serial::new("0001").unwrap());
    }

    #[test]
    fn serial_orders_and_hashes_like_its_text() {
        use std::collections::{BTreeSet, HashSet};
        let mut sorted: BTreeSet<Serial> = ["b", "a10", "a2", "0001"]
            .iter()
            .map(|s| Serial::new(s).unwrap())
            .collect();
        let order: Vec<&str> = sorted.iter().map(Serial::as_str).collect();
        assert_eq!(order, ["0001", "a10", "a2", "b"]);
        assert!(sorted.remove("a2"));
        let set: HashSet<Serial> = [Serial::new("0001").unwrap()].into_iter().collect();
        assert!(set.contains("0001"));
        assert!(!set.contains("1"));
    }

    #[test]
    fn header_splits_at_the_first_two_colons() {
        let (h, body) = Header::parse("0116:0001:{\"a\": \"1:2:3\"}").unwrap();
        assert_eq!(h.id.as_str(), "0116");
        assert_eq!(h.serial.as_str(), "0001");
        assert_eq!(body, "{\"a\": \"1:2:3\"}");
        let (_, body) = Header::parse("1:2:").unwrap();
        assert_eq!(body, "");
    }

    #[test]
    fn header_errors_say_which_part_is_wrong() {
        let reason = |s: &str| match Header::parse(s).unwrap_err() {
            Error::Header(r) => r,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(
            reason("ab:0001:{}"),
            "message id must be 1 to 9 digits, got \"ab\""
        );
        assert_eq!(reason(""), "message id must be 1 to 9 digits, got \"\"");
        assert_eq!(reason("0001"), "missing ':' after message id");
        assert_eq!(
            reason("0001:"),
            "serial must be 1 to 32 characters of [A-Za-z0-9_-], got \"\""
        );
        assert_eq!(
            reason("0001:12 34:{}"),
            "serial must be 1 to 32 characters of [A-Za-z0-9_-], got \"12 34\""
        );
        assert_eq!(reason("0001:1234"), "missing ':' after serial");
        assert_eq!(
            reason("{'a': 1}"),
            "message id must be 1 to 9 digits, got \"{'a'\""
        );
    }

    #[test]
    fn long_values_are_shortened_in_errors() {
        let long = "x".repeat(10_000);
        let Error::Header(reason) = MessageId::new(&long).unwrap_err() else {
            panic!()
        };
        let quoted = format!("\"{}…\"", "x".repeat(crate::error::VALUE_QUOTE));
        assert!(reason.ends_with(&quoted), "{reason}");
    }

    #[test]
    fn padded_copies_exactly_the_part_and_zeroes_the_rest() {
        let text: Vec<u8> = (b'a'..=b'z').cycle().take(80).collect();
        for start in [0, 3] {
            for len in 0..=32 {
                // From a long input (block copy and mask) and from one that ends with the part.
                for end in [text.len(), start + len] {
                    let b = &text[..end];
                    let want: [u8; 32] = inline_bytes(&b[start..start + len]);
                    assert_eq!(padded::<32>(b, start, len), want, "{start} {len} {end}");
                    if len <= 9 {
                        let want: [u8; 9] = inline_bytes(&b[start..start + len]);
                        assert_eq!(padded::<9>(b, start, len), want, "{start} {len} {end}");
                    }
                }
            }
        }
        let (h, _) = read_header(b"0116:SN-4711_b:{}").unwrap();
        assert_eq!(&h.id.buf, b"0116\0\0\0\0\0");
        assert_eq!(&h.serial.buf[..10], b"SN-4711_b\0");
        assert!(h.serial.buf[9..].iter().all(|&b| b == 0));
    }

    #[test]
    fn header_displays_without_trailing_colon() {
        let h = Header::new("0116", "0001").unwrap();
        assert_eq!(h.to_string(), "0116:0001");
        assert_eq!(format!("{:?}", h.serial), "Serial(\"0001\")");
    }
}
