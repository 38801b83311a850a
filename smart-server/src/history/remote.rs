//! Other instances' changes, for this instance's history (`--redis`): the cluster's follower adds the
//! numeric changes of each remote record it applies, and the writer thread takes them at its next
//! hand-over (about every second), tags them with its current log segment and treats them from there
//! as its own: held and read at once, absorbed into the raw tier at the next checkpoint.
//!
//! They are not in this instance's log: a crash loses those not absorbed yet (the instance that
//! acked them keeps them in its own history, as durable as its acks).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use tracing::warn;

use super::samples::Change;

/// Most changes waiting (a writer that stopped taking them must not grow memory without bound).
const MAX_WAITING: usize = 1 << 20;

/// The changes waiting for the writer.
#[derive(Debug, Default)]
pub(crate) struct Remote {
    waiting: Mutex<Vec<Change>>,
    /// Whether `waiting` may hold something: the writer checks it after every batch.
    any: AtomicBool,
}

impl Remote {
    /// Add changes (in the order they were applied).
    pub(crate) fn add(&self, changes: impl IntoIterator<Item = Change>) {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let before = waiting.len();
        waiting.extend(changes);
        if waiting.len() > MAX_WAITING {
            warn!(
                dropped = waiting.len() - MAX_WAITING,
                "the history is not taking other instances' changes; the newest are dropped"
            );
            waiting.truncate(MAX_WAITING.max(before));
        }
        if !waiting.is_empty() {
            self.any.store(true, Ordering::Release);
        }
    }

    /// Everything waiting (cheap when nothing is).
    pub(crate) fn take(&self) -> Vec<Change> {
        if !self.any.swap(false, Ordering::Acquire) {
            return Vec::new();
        }
        std::mem::take(&mut *self.waiting.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::borrow::Cow;

    use smart_proto::Serial;

    use super::*;

    fn change(ts_ms: i64) -> Change {
        Change {
            serial: Serial::new("0001").unwrap(),
            ts_ms,
            values: vec![(Cow::Borrowed("battery"), 0.5)],
        }
    }

    #[test]
    fn changes_are_taken_once_in_order() {
        let remote = Remote::default();
        assert!(remote.take().is_empty());
        remote.add([change(1), change(2)]);
        remote.add([change(3)]);
        let taken: Vec<i64> = remote.take().iter().map(|c| c.ts_ms).collect();
        assert_eq!(taken, [1, 2, 3]);
        assert!(remote.take().is_empty());
    }
}
