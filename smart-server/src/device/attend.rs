//! The fast path: a parked connection's frames served on the parking lot's thread, without a task.
//!
//! A device that only reports sends whole text frames and waits for their OKs. The lot's thread
//! reads what its socket has, takes the simple frames ([`Inbound::next_simple`]: whole text frames,
//! pings, pongs), hands each text to the connection's [`Intake`](crate::ingest::Intake) exactly as
//! its task would, and writes the replies, in arrival order, once the writer has answered (the
//! writer wakes the lot, once per group commit, through the connection's place waker). No wake-up crosses threads per
//! message besides the writer's own.
//!
//! Anything else sends the connection back to a task with what was read and not taken, and what
//! could not be written ([`Handover`]): a frame not whole yet, a fragment, binary, a close, a
//! violation, a reply the socket cannot take at once, more frames than `--max-in-flight`, the end
//! of the stream or a read error. The task then serves it exactly as before, and parks it again
//! after `--park-after` of silence.

use std::collections::VecDeque;
use std::io::{self, Read as _, Write as _};
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Context, Waker};

use tracing::debug;

use super::codec::{Event, Inbound, Outbound};
use super::park::{self, Next};
use super::{Handover, Lots, Parked, Parking, handle, queue_ready, resume};
use crate::liveness::CONTROL_ROOM;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::state::Shared;

/// Most bytes read from one connection in one turn: a device with more waiting is served by its
/// task (which reads at its own pace) rather than hold the lot's thread.
const READ_LIMIT: usize = 64 * 1024;

/// One read's room.
const READ_CHUNK: usize = 16 * 1024;

/// The parking lot's keeper for device connections: serves their simple frames, and resumes them
/// as tasks.
pub(super) struct Attendant {
    /// Weak: the lot's thread must not keep the server's state alive once the server is gone.
    state: Weak<Shared>,
    shutdown: Shutdown,
    runtime: tokio::runtime::Handle,
    /// The lots (set once started), for the tasks it resumes to park again.
    lots: Arc<OnceLock<Weak<Lots>>>,
    /// Bytes read from the connection being served: empty between turns.
    inbound: Inbound,
    /// Frames for the connection being served: empty between turns.
    outbound: Outbound,
    /// Where reads land before the codec takes them.
    chunk: Box<[u8]>,
    /// Where an OK is framed.
    scratch: String,
    /// Where the writer's spent updates are freed, on this thread, which parsed them
    /// (`Shared::free_spent`).
    spent: Vec<smart_proto::Update>,
}

impl Attendant {
    pub(super) fn new(
        state: Weak<Shared>,
        shutdown: Shutdown,
        runtime: tokio::runtime::Handle,
        lots: Arc<OnceLock<Weak<Lots>>>,
        max_frame_bytes: usize,
    ) -> Attendant {
        Attendant {
            state,
            shutdown,
            runtime,
            lots,
            inbound: Inbound::new(max_frame_bytes),
            // Never refuses: what one turn queues is bounded by `--max-in-flight` replies and the
            // pongs of one read.
            outbound: Outbound::new(usize::MAX),
            chunk: vec![0; READ_CHUNK].into_boxed_slice(),
            scratch: String::new(),
            spent: Vec::new(),
        }
    }

    /// Start a turn with empty buffers (a turn cut short by a panic may have left bytes behind).
    fn fresh(&mut self) {
        let _ = self.inbound.take_rest();
        self.outbound.written(self.outbound.len());
    }

    /// The connection goes to a task, with what this turn read and did not take, and what it
    /// could not write.
    fn leave(&mut self, parked: &mut Parked) -> Next {
        let unread = self.inbound.take_rest();
        let unsent = self.outbound.bytes().to_vec();
        self.outbound.written(unsent.len());
        if !unread.is_empty() || !unsent.is_empty() {
            parked.handover = Some(Box::new(Handover { unread, unsent }));
        }
        Next::Leave
    }

    /// Write every reply that is known now and wait (with `waker`) for the next one; or leave.
    fn reply(&mut self, parked: &mut Parked, shared: &Shared, waker: &Waker) -> Next {
        loop {
            let kept = &mut parked.kept;
            let waiting = match kept.intake.acks() {
                Some(acks) => {
                    // `usize::MAX` bytes of room: queueing cannot fail.
                    let _ = queue_ready(
                        &mut kept.replies,
                        acks,
                        &shared.metrics,
                        &mut self.scratch,
                        &mut self.outbound,
                    );
                    match kept.replies.front() {
                        // Registered before looking again: an answer in between wakes the lot.
                        Some(super::Reply::Waiting { ordinal, .. }) => acks
                            .poll_answered(*ordinal, &mut Context::from_waker(waker))
                            .is_pending(),
                        _ => true,
                    }
                }
                // Nothing was ever submitted: only pongs can be queued.
                None => true,
            };
            if kept.replies.is_empty() && kept.replies.capacity() > 0 {
                // Nothing owed: keep no room while the connection is quiet.
                kept.replies = VecDeque::new();
            }
            if !self.flush(&mut parked.socket) {
                return self.leave(parked);
            }
            if waiting {
                return Next::Stay;
            }
        }
    }

    /// Write what is queued. `false`: the socket did not take all of it at once (or failed), and
    /// the connection goes to its task (which waits for the socket, within its write timeout).
    fn flush(&mut self, socket: &mut mio::net::TcpStream) -> bool {
        while !self.outbound.is_empty() {
            match socket.write(self.outbound.bytes()) {
                Ok(0) => return false,
                Ok(n) => self.outbound.written(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        debug!(%e, "device socket write failed on the lot's thread");
                    }
                    return false;
                }
            }
        }
        true
    }

    /// Read what the socket has (all of it: readiness is edge-triggered; a read shorter than the
    /// room offered has emptied the socket's queue, and any later data is a new edge). `false`:
    /// the connection must leave (the end of the stream, an error, or more than [`READ_LIMIT`]).
    fn read(&mut self, parked: &mut Parked) -> bool {
        let mut total = 0;
        loop {
            match parked.socket.read(&mut self.chunk) {
                // The task sees the end (or the error) again, after what was read before it.
                Ok(0) => return false,
                Ok(n) => {
                    self.inbound.push(&self.chunk[..n]);
                    total += n;
                    if n < self.chunk.len() {
                        return true;
                    }
                    if total >= READ_LIMIT {
                        return false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }
}

impl park::Keeper<Parked> for Attendant {
    fn readable(&mut self, parked: &mut Parked, waker: &Waker) -> Next {
        let Some(shared) = self.state.upgrade() else {
            return Next::Leave;
        };
        self.fresh();
        // A revoked token is noticed before anything more is read (as in the task, whose check
        // comes before its read): its connection closes without another write.
        if park::Park::must_wake(parked) || !self.read(parked) {
            return self.leave(parked);
        }
        let max_in_flight = shared.config.max_in_flight.max(1);
        let kept = &mut parked.kept;
        let mut intake = shared.resume_intake(std::mem::take(&mut kept.intake));
        while kept.replies.len() < max_in_flight {
            match self.inbound.next_simple() {
                Some(Event::Text(text)) => {
                    kept.liveness.heard();
                    kept.replies.push_back(handle(&mut intake, text));
                }
                Some(Event::Ping(payload)) => {
                    kept.liveness.heard();
                    // As in the task: a peer that pings but never reads its pongs is dropped
                    // before they pile up (here: the task finds the socket not taking them).
                    let queued =
                        self.outbound.len() <= CONTROL_ROOM && self.outbound.pong(payload).is_ok();
                    let _ = kept.liveness.pong_written(queued);
                }
                Some(Event::Pong) => kept.liveness.heard(),
                Some(_) | None => break,
            }
        }
        kept.intake = intake.park();
        shared.free_spent(&mut self.spent);
        if self.inbound.is_clean() {
            let _ = self.inbound.take_rest();
            return self.reply(parked, &shared, waker);
        }
        // What is known goes out first; the rest is the task's.
        match self.reply(parked, &shared, waker) {
            Next::Stay => self.leave(parked),
            Next::Leave => Next::Leave,
        }
    }

    fn woken(&mut self, parked: &mut Parked, waker: &Waker) -> Next {
        let Some(shared) = self.state.upgrade() else {
            return Next::Leave;
        };
        self.fresh();
        shared.free_spent(&mut self.spent);
        self.reply(parked, &shared, waker)
    }

    fn resume(&mut self, parked: Box<Parked>) {
        let Some(shared) = self.state.upgrade() else {
            // The server is gone; so is the connection.
            return;
        };
        Metrics::dec(&shared.metrics.device_parked);
        let parking = self
            .lots
            .get()
            .and_then(Weak::upgrade)
            .map(|lots| Parking { lots });
        let _runtime = self.runtime.enter();
        resume(parked, Arc::clone(&shared), self.shutdown.clone(), parking);
    }
}
