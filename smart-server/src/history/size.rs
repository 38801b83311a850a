//! What each history tier holds: bytes of keys and values, and keys, counted as they are written and
//! deleted (never by scanning a tier while the server runs).
//!
//! The counts are saved in the `meta` tree with every checkpoint (`meta/history_sizes`), so a restart
//! loads them; a store without them (made by a build before the counts) is scanned once when it opens.
//! After a crash they can be short by what sled kept of the last second's writes before the crash
//! (those parts are not absorbed, so not counted, again): a few KiB.

use std::sync::atomic::{AtomicI64, Ordering};

/// One tier's size.
#[derive(Debug, Default)]
pub(crate) struct Size {
    bytes: AtomicI64,
    keys: AtomicI64,
}

/// A length as a count.
fn len(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Size {
    /// A new key and its value.
    pub(crate) fn add(&self, key: usize, value: usize) {
        self.bytes
            .fetch_add(len(key).saturating_add(len(value)), Ordering::Relaxed);
        self.keys.fetch_add(1, Ordering::Relaxed);
    }

    /// A deleted key and its value.
    pub(crate) fn remove(&self, key: usize, value: usize) {
        self.bytes
            .fetch_sub(len(key).saturating_add(len(value)), Ordering::Relaxed);
        self.keys.fetch_sub(1, Ordering::Relaxed);
    }

    /// `key` written with a value of `value` bytes, replacing `old` bytes if it held any.
    pub(crate) fn put(&self, key: usize, value: usize, old: Option<usize>) {
        match old {
            Some(old) => {
                self.bytes
                    .fetch_add(len(value).saturating_sub(len(old)), Ordering::Relaxed);
            }
            None => self.add(key, value),
        }
    }

    /// Bytes and keys (never below zero).
    pub(crate) fn get(&self) -> (u64, u64) {
        let read = |n: &AtomicI64| u64::try_from(n.load(Ordering::Relaxed)).unwrap_or(0);
        (read(&self.bytes), read(&self.keys))
    }

    /// Start from counts saved or scanned.
    pub(crate) fn set(&self, (bytes, keys): (u64, u64)) {
        let to = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.bytes.store(to(bytes), Ordering::Relaxed);
        self.keys.store(to(keys), Ordering::Relaxed);
    }
}

/// Counts of the entries of `entries` (a scan: only when no saved counts exist).
pub(crate) fn scan(
    entries: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
) -> sled::Result<(u64, u64)> {
    let mut bytes = 0_u64;
    let mut keys = 0_u64;
    for entry in entries {
        let (k, v) = entry?;
        bytes += (k.len() + v.len()) as u64;
        keys += 1;
    }
    Ok((bytes, keys))
}

/// The saved form of several tiers' counts (big-endian `u64`s, bytes then keys per tier).
pub(crate) fn encode(sizes: &[(u64, u64)]) -> Vec<u8> {
    sizes
        .iter()
        .flat_map(|(b, k)| b.to_be_bytes().into_iter().chain(k.to_be_bytes()))
        .collect()
}

/// Read back [`encode`] of `N` tiers; `None` if the bytes are not that.
pub(crate) fn decode<const N: usize>(bytes: &[u8]) -> Option<[(u64, u64); N]> {
    if bytes.len() != N * 16 {
        return None;
    }
    let word = |at: usize| {
        bytes
            .get(at..at + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
    };
    let mut out = [(0, 0); N];
    for (i, tier) in out.iter_mut().enumerate() {
        *tier = (word(i * 16)?, word(i * 16 + 8)?);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_writes_and_round_trip() {
        let size = Size::default();
        size.add(10, 100);
        size.add(10, 50);
        size.put(10, 70, Some(50));
        size.put(12, 8, None);
        assert_eq!(size.get(), (10 + 100 + 10 + 70 + 12 + 8, 3));
        size.remove(10, 100);
        assert_eq!(size.get(), (10 + 70 + 12 + 8, 2));
        let saved = encode(&[size.get(), (1, 2)]);
        assert_eq!(decode::<2>(&saved), Some([(100, 2), (1, 2)]));
        assert_eq!(decode::<3>(&saved), None);
        // Never reported below zero, whatever a crash left.
        size.remove(1000, 0);
        size.remove(1, 0);
        size.remove(1, 0);
        assert_eq!(size.get(), (0, 0));
    }
}
