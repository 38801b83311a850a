//! Wake-ups coalesced per batch. A thread that answers many waiters in a row (the store writer,
//! once per group commit) defers the wake of each poller thread those waiters share until it is
//! done, so that the poller is woken once per batch rather than again each time it has already
//! taken the first answers and gone back to sleep.

use std::cell::RefCell;
use std::sync::Arc;

/// A poller thread's waker: a syscall, and a context switch for the thread it wakes.
pub(crate) trait Wake: Send + Sync {
    fn wake_now(&self);
}

thread_local! {
    /// While a batch runs on this thread: the wakes it deferred.
    static DEFERRED: RefCell<Option<Vec<Arc<dyn Wake>>>> = const { RefCell::new(None) };
}

/// Run `f`, deferring the [`wake`]s it causes on this thread until it returns (or panics).
pub(crate) fn batched<R>(f: impl FnOnce() -> R) -> R {
    /// Wakes what was deferred when the batch ends, however it ends.
    struct End {
        outer: bool,
    }
    impl Drop for End {
        fn drop(&mut self) {
            if self.outer {
                let deferred = DEFERRED.with(|d| d.borrow_mut().take()).unwrap_or_default();
                for target in deferred {
                    target.wake_now();
                }
            }
        }
    }
    // A batch inside a batch belongs to the outer one.
    let outer = DEFERRED.with(|d| {
        let mut d = d.borrow_mut();
        let outer = d.is_none();
        if outer {
            *d = Some(Vec::new());
        }
        outer
    });
    let _end = End { outer };
    f()
}

/// Wake `target` now, or once the batch running on this thread ends (once however often it is
/// asked for in the batch).
pub(crate) fn wake<W: Wake + 'static>(target: &Arc<W>) {
    let woken = DEFERRED.with(|d| match d.borrow_mut().as_mut() {
        Some(deferred) => {
            let target: Arc<dyn Wake> = Arc::clone(target) as Arc<dyn Wake>;
            if !deferred.iter().any(|t| Arc::ptr_eq(t, &target)) {
                deferred.push(target);
            }
            false
        }
        None => true,
    });
    if woken {
        target.wake_now();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake_now(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn wakes_in_a_batch_come_once_at_its_end_and_others_at_once() {
        let (a, b) = (Arc::new(Count::default()), Arc::new(Count::default()));
        wake(&a);
        assert_eq!(a.0.load(Ordering::Relaxed), 1, "outside a batch: at once");
        batched(|| {
            for _ in 0..3 {
                wake(&a);
                wake(&b);
            }
            batched(|| wake(&b));
            assert_eq!(a.0.load(Ordering::Relaxed), 1, "deferred");
            assert_eq!(
                b.0.load(Ordering::Relaxed),
                0,
                "deferred, also from an inner batch"
            );
        });
        assert_eq!(a.0.load(Ordering::Relaxed), 2);
        assert_eq!(b.0.load(Ordering::Relaxed), 1);
        // A batch that panics still wakes what it deferred.
        let c = Arc::new(Count::default());
        let panicked = std::panic::catch_unwind(|| {
            batched(|| {
                wake(&c);
                panic!("in the batch");
            })
        });
        assert!(panicked.is_err());
        assert_eq!(c.0.load(Ordering::Relaxed), 1);
        wake(&c);
        assert_eq!(c.0.load(Ordering::Relaxed), 2, "no batch left open");
    }
}
