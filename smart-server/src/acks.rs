//! How a device session learns the outcome of its writes: one counter per session, raised by the
//! writer thread, plus the reasons of the (rare) refusals.
//!
//! Why not a oneshot channel per message: that is an allocation and a channel per write, and a
//! session only needs to know how far, in its own submission order, its writes are answered. The
//! writer answers the writes of one session in submission order (one FIFO channel, batches taken in
//! order), so one monotonic counter says it; refusals are listed by ordinal.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use thiserror::Error;

/// Why a write was not stored. Nothing of a refused write is stored or shown (PROTOCOL.md §5).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(crate) enum Refusal {
    /// The group commit's append or sync failed (disk full, I/O error), or the writer stopped.
    #[error("not stored: the store failed to make it durable")]
    Store,
    /// The record after the update would exceed `--max-record-bytes`.
    #[error("not stored: the record would be {bytes} bytes, more than the limit of {max}")]
    RecordTooLarge { bytes: usize, max: usize },
    /// `--ack cluster` and Redis cannot be reached: refused before anything was stored.
    #[error(
        "not stored: Redis cannot be reached, and --ack cluster answers OK only once it has the write"
    )]
    ClusterDown,
    /// The record after the update would hold more than `--max-extras` extra fields.
    #[error("not stored: the record would have {count} extra fields, more than the limit of {max}")]
    TooManyExtras { count: usize, max: usize },
}

/// The outcome of one write: durable, or refused (nothing stored).
pub(crate) type Ack = Result<(), Refusal>;

/// A device session's write outcomes.
#[derive(Debug, Default)]
pub(crate) struct AckQueue {
    /// Highest ordinal answered; every lower ordinal is answered too.
    answered: AtomicU64,
    /// Whether `refused` may hold something (keeps the lock off the common path).
    any_refused: AtomicBool,
    /// Ordinals answered with a refusal and not yet taken by the session.
    refused: Mutex<Vec<(u64, Refusal)>>,
    waker: AtomicWaker,
}

impl AckQueue {
    /// Highest ordinal answered so far.
    pub(crate) fn answered(&self) -> u64 {
        self.answered.load(Ordering::Acquire)
    }

    /// Resolves once `ordinal` is answered, with the highest ordinal answered.
    pub(crate) fn poll_answered(&self, ordinal: u64, cx: &mut Context<'_>) -> Poll<u64> {
        let answered = self.answered();
        if answered >= ordinal {
            return Poll::Ready(answered);
        }
        self.waker.register(cx.waker());
        // An answer racing with the registration would have found no waker to wake.
        let answered = self.answered();
        if answered >= ordinal {
            Poll::Ready(answered)
        } else {
            Poll::Pending
        }
    }

    /// The result of the answered write `ordinal` (taking its refusal, if any).
    pub(crate) fn result(&self, ordinal: u64) -> Ack {
        if !self.any_refused.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut refused = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
        match refused.iter().position(|(o, _)| *o == ordinal) {
            Some(i) => Err(refused.swap_remove(i).1),
            None => Ok(()),
        }
    }
}

/// The writer's duty to answer one write of a session.
#[derive(Debug)]
pub(crate) struct AckTicket {
    queue: Arc<AckQueue>,
    ordinal: u64,
    settled: bool,
}

impl AckTicket {
    /// The ticket for the session's write number `ordinal` (1, 2, 3, … in submission order).
    pub(crate) fn new(queue: Arc<AckQueue>, ordinal: u64) -> AckTicket {
        AckTicket {
            queue,
            ordinal,
            settled: false,
        }
    }

    /// Whether every earlier write of the session is answered: only then may this one be answered
    /// ahead of writes that wait (`--ack cluster`), for a session reads its answers in order.
    pub(crate) fn next_to_answer(&self) -> bool {
        self.queue.answered() + 1 >= self.ordinal
    }

    /// Answer the write and wake its session.
    pub(crate) fn answer(mut self, ack: Ack) {
        self.settle(ack);
    }

    fn settle(&mut self, ack: Ack) {
        if self.settled {
            return;
        }
        self.settled = true;
        let queue = &self.queue;
        if let Err(refusal) = ack {
            // Listed before the counter moves: a session that sees the ordinal answered sees this.
            queue
                .refused
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((self.ordinal, refusal));
            queue.any_refused.store(true, Ordering::Release);
        }
        queue.answered.fetch_max(self.ordinal, Ordering::AcqRel);
        // Several answers for one session in a batch: only the first finds a waker to wake.
        queue.waker.wake();
    }
}

impl Drop for AckTicket {
    /// A write the writer never got to (it stopped) was not stored.
    fn drop(&mut self) {
        self.settle(Err(Refusal::Store));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Answers arrive per session in submission order; a refusal is reported for its own write
    /// only, with its reason, and a ticket the writer never answered (dropped) counts as a failure.
    #[test]
    fn ack_queue_reports_each_write_once_in_order() {
        let queue = Arc::new(AckQueue::default());
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let tickets: Vec<AckTicket> = (1..=4)
            .map(|o| AckTicket::new(Arc::clone(&queue), o))
            .collect();
        assert!(queue.poll_answered(1, &mut cx).is_pending());
        let mut tickets = tickets.into_iter();
        tickets.next().unwrap().answer(Ok(()));
        let too_large = Refusal::RecordTooLarge { bytes: 9, max: 8 };
        tickets.next().unwrap().answer(Err(too_large.clone()));
        assert_eq!(queue.poll_answered(1, &mut cx), Poll::Ready(2));
        assert!(queue.poll_answered(3, &mut cx).is_pending());
        assert_eq!(queue.result(1), Ok(()));
        assert_eq!(queue.result(2), Err(too_large));
        tickets.next().unwrap().answer(Ok(()));
        drop(tickets); // the writer stopped before the fourth
        assert_eq!(queue.answered(), 4);
        assert_eq!(queue.result(3), Ok(()));
        assert_eq!(queue.result(4), Err(Refusal::Store));
    }
}
