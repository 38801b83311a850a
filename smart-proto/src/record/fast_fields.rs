//! [`FastFields`]: the fields of a device message coerced as the fast parser reads them.

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::Value;

use super::field::FieldKind;
use super::number::is_connector_count;
use super::update::{Field, Update};

/// The fields of a device message read straight from the frame (the fast path of
/// [`parse_device_message`](crate::parse_device_message)), coerced as they arrive.
///
/// It declines (and the frame takes the general path, which gives the same result or the error) any key
/// that normalization would touch, and any value of the wrong type: a later duplicate key could still
/// make the message valid, and the general path reports the first bad field in key order.
#[derive(Debug, Default)]
pub(crate) struct FastFields(Vec<Field>);

impl FastFields {
    #[inline]
    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }

    #[inline]
    pub(crate) fn into_update(self) -> Update {
        Update::from_sorted(self.0)
    }
}

impl crate::fast::FlatSink for FastFields {
    fn put(&mut self, key: &str, mut value: Value) -> bool {
        let (name, kind) = match FieldKind::named(key) {
            Some((_, FieldKind::Reserved)) => return false,
            Some((name, kind)) => (Cow::Borrowed(name), kind),
            None if crate::normalize::needs_work(key) => return false,
            None => (Cow::Owned(key.to_owned()), FieldKind::Extra),
        };
        if !kind.coerce(&mut value) || (kind == FieldKind::Integer && !is_connector_count(&value)) {
            return false;
        }
        if self.0.capacity() == 0 {
            // Enough for a typical update, without the growth policy's bookkeeping.
            self.0 = Vec::with_capacity(4);
        }
        // Keys mostly arrive out of order, but there are few: insertion sort, keeping the later of two
        // equal keys (JSON's last-wins).
        let mut at = self.0.len();
        while at > 0 {
            match key_cmp(self.0[at - 1].0.as_bytes(), key.as_bytes()) {
                Ordering::Less => break,
                Ordering::Greater => at -= 1,
                Ordering::Equal => {
                    self.0[at - 1].1 = value;
                    return true;
                }
            }
        }
        self.0.insert(at, (name, value));
        true
    }
}

/// `str`'s order (bytewise), eight bytes at a time: keys are short and mostly differ early.
#[inline]
pub(crate) fn key_cmp(a: &[u8], b: &[u8]) -> Ordering {
    let (mut a, mut b) = (a, b);
    while let (Some((x, a_rest)), Some((y, b_rest))) =
        (a.split_first_chunk::<8>(), b.split_first_chunk::<8>())
    {
        if x != y {
            return u64::from_be_bytes(*x).cmp(&u64::from_be_bytes(*y));
        }
        (a, b) = (a_rest, b_rest);
    }
    for (x, y) in a.iter().zip(b) {
        if x != y {
            return x.cmp(y);
        }
    }
    a.len().cmp(&b.len())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn key_order_is_str_order(a in "[a-z_é]{0,20}", b in "[a-z_é]{0,20}") {
            proptest::prop_assert_eq!(key_cmp(a.as_bytes(), b.as_bytes()), a.cmp(&b));
            proptest::prop_assert_eq!(key_cmp(a.as_bytes(), a.as_bytes()), Ordering::Equal);
        }
    }

    #[test]
    fn key_order_edges() {
        for (a, b) in [
            ("power_income", "power_inject"),
            ("power_in", "power_inject"),
            ("abcdefgh", "abcdefgh"),
            ("abcdefghi", "abcdefgh"),
            ("", "a"),
            ("b", "abcdefghijk"),
        ] {
            assert_eq!(key_cmp(a.as_bytes(), b.as_bytes()), a.cmp(b), "{a} {b}");
            assert_eq!(key_cmp(b.as_bytes(), a.as_bytes()), b.cmp(a), "{b} {a}");
        }
    }
}
