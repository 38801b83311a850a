//! Changes the checkpoint thread has been handed but not yet written to the raw tier.
//!
//! The writer hands each second's changes over with the log segment that holds them; the checkpoint
//! thread writes them into sled only every `--checkpoint-seconds` (so a device changing every few
//! seconds gets one part per checkpoint rather than one per change: sled's cost is per insert). Until
//! then they wait here, where the raw tier's reads find them, so the history answers as soon as the
//! hand-over: a chart never lacks its last seconds. Their log segments are kept until they are written
//! (see [`Held::oldest`]).
//!
//! Writing happens in two steps so that a read never misses a change nor sees it twice: [`Held::start`]
//! moves what is held aside (still read) before the tree is written, and [`Held::done`] drops it
//! after; a read takes its copy of the held changes before it scans the tree, and a held change is
//! skipped when the tree's part of its hour already holds its segment (see `Raw::parts_over`).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use smart_proto::Serial;

use super::samples::Change;

/// A change and the log segment that holds it.
pub(crate) type Tagged = (u64, Change);

/// The held changes (shared by the checkpoint thread and the readers).
#[derive(Debug, Default)]
pub(crate) struct Held {
    inner: Mutex<Inner>,
}

/// Changes as they were handed over: one list per hand-over, in log order. Kept as handed over (an
/// append per second, nothing per change): the raw tier groups them per device and hour when it
/// writes them, and a read of one device filters them (at most a checkpoint interval of changes).
#[derive(Debug, Default)]
struct Inner {
    /// Handed over since the last write started.
    current: Vec<Vec<Tagged>>,
    /// Being written now (older than `current`).
    writing: Option<Batch>,
    /// Changes in `current` and `writing`.
    count: usize,
}

/// What a write takes: every change held, in log order (one list per hand-over).
pub(crate) type Batch = Arc<Vec<Vec<Tagged>>>;

impl Held {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hold `changes` (in log order, each with its segment).
    pub(crate) fn hold(&self, changes: impl IntoIterator<Item = Tagged>) {
        // (A `Vec` is kept as it is: collecting its own iterator reuses it.)
        let changes: Vec<Tagged> = changes.into_iter().collect();
        if changes.is_empty() {
            return;
        }
        let mut inner = self.lock();
        inner.count += changes.len();
        inner.current.push(changes);
    }

    /// Changes held (written or not yet).
    pub(crate) fn len(&self) -> usize {
        self.lock().count
    }

    /// Start writing everything held; `None` if nothing is. Call [`Held::done`] once written, or
    /// [`Held::failed`] to keep it for the next write.
    pub(crate) fn start(&self) -> Option<Batch> {
        let mut inner = self.lock();
        if let Some(writing) = inner.writing.take() {
            // An unfinished write (a failure not reported): write it again, with what came since.
            let mut all = Arc::unwrap_or_clone(writing);
            all.append(&mut inner.current);
            inner.writing = Some(Arc::new(all));
        } else if inner.current.is_empty() {
            return None;
        } else {
            inner.writing = Some(Arc::new(std::mem::take(&mut inner.current)));
        }
        inner.writing.clone()
    }

    /// The batch [`Held::start`] gave is in the tree.
    pub(crate) fn done(&self) {
        let mut inner = self.lock();
        if let Some(written) = inner.writing.take() {
            inner.count -= written.iter().map(Vec::len).sum::<usize>();
        }
    }

    /// Writing the batch failed: hold it again, before what came since.
    pub(crate) fn failed(&self) {
        let mut inner = self.lock();
        if let Some(writing) = inner.writing.take() {
            let mut older = Arc::unwrap_or_clone(writing);
            older.append(&mut inner.current);
            inner.current = older;
        }
    }

    /// `serial`'s held changes, oldest first.
    pub(crate) fn of(&self, serial: &Serial) -> Vec<Tagged> {
        let inner = self.lock();
        inner
            .writing
            .iter()
            .flat_map(|w| w.iter())
            .chain(&inner.current)
            .flatten()
            .filter(|(_, change)| change.serial == *serial)
            .cloned()
            .collect()
    }

    /// The oldest segment and the oldest time of a held change: the log keeps that segment and
    /// those after it, and no hour after that time is rolled up.
    pub(crate) fn oldest(&self) -> Option<(u64, i64)> {
        let inner = self.lock();
        inner
            .writing
            .iter()
            .flat_map(|w| w.iter())
            .chain(&inner.current)
            .flatten()
            .map(|(seq, change)| (*seq, change.ts_ms))
            .reduce(|(s, t), (seq, ts)| (s.min(seq), t.min(ts)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(serial: &str, ts_ms: i64) -> Change {
        Change {
            serial: Serial::new(serial).unwrap(),
            ts_ms,
            values: vec![("battery".into(), 1.0)],
        }
    }

    /// A change is readable from the moment it is held until its write is done, through a failed
    /// write, and counted until then; the oldest segment and time are those of what is held.
    #[test]
    fn held_changes_stay_readable_until_written() {
        let held = Held::default();
        let a = Serial::new("A").unwrap();
        assert!(held.start().is_none());
        held.hold([(1, change("A", 10)), (1, change("B", 11))]);
        held.hold([(2, change("A", 20))]);
        assert_eq!(held.len(), 3);
        assert_eq!(held.oldest(), Some((1, 10)));
        let batch = held.start().unwrap();
        let of_a = |batch: &Batch| {
            batch
                .iter()
                .flatten()
                .filter(|(_, c)| c.serial == a)
                .count()
        };
        assert_eq!(of_a(&batch), 2);
        held.hold([(3, change("A", 30))]);
        let seen: Vec<i64> = held.of(&a).iter().map(|(_, c)| c.ts_ms).collect();
        assert_eq!(seen, [10, 20, 30], "written and newer, in order");
        held.failed();
        assert_eq!(held.len(), 4);
        let seen: Vec<u64> = held.of(&a).iter().map(|(s, _)| *s).collect();
        assert_eq!(seen, [1, 2, 3], "a failed write keeps its changes first");
        let batch = held.start().unwrap();
        assert_eq!(batch.iter().map(Vec::len).sum::<usize>(), 4);
        held.hold([(4, change("B", 40))]);
        held.done();
        assert_eq!(held.len(), 1);
        assert_eq!(held.oldest(), Some((4, 40)));
        assert!(held.of(&a).is_empty());
        let batch = held.start().unwrap();
        held.done();
        assert_eq!(batch.iter().flatten().count(), 1);
        assert_eq!((held.len(), held.oldest()), (0, None));
    }
}
