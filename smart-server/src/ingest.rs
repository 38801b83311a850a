//! The ingest rule, in one place: device updates are staged on copies, made durable by one writer
//! thread in the order they were queued, and only then made visible.
//!
//! 1. A device session stages each update on the device's [`Slot`] ([`Ingest::stage`]): under the
//!    slot's lock it applies the update to a copy of the record the earlier queued writes of that
//!    device left, checks the record limits, serializes, and queues the result. Sessions of different
//!    devices do this in parallel; nothing of it is visible yet.
//! 2. The writer takes everything waiting, appends the final record of every device the batch
//!    wrote to the log and syncs once ([`Log::commit`]).
//! 3. Only if that succeeded, it makes the new records visible in the [`Fleet`], answers the acks,
//!    and hands the changes to the dashboards ([`Hub::publish`]).
//!
//! If the commit fails, every write of the batch is answered with ERROR and nothing of it is visible
//! anywhere: not in the fleet, the HTTP API, dashboards, nor in a later write of the same device. The
//! writer resets each slot of the batch to the committed record and bumps its generation, so jobs
//! already queued on top of the failed state are refused too (ERROR, nothing stored), and new ones
//! start again from the committed record. PROTOCOL.md §5: an ERROR stores nothing.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;

use serde_json::{Map, Value};
use smart_proto::{Header, Record, Serial, Timestamp, Update};
use tokio::sync::mpsc;
use tracing::{debug, error};

use crate::acks::{AckTicket, Refusal};
use crate::fleet::{Entry, Fleet, Slot};
use crate::hub::{Change, Hub};
use crate::metrics::Metrics;
use crate::store::{Log, Store, StoreError};

/// Largest number of jobs one group commit takes: bounds the latency a huge backlog adds to the
/// first job of the next batch.
const MAX_BATCH: usize = 4096;

/// Bounds on what one device's record may grow to (`--max-record-bytes`, `--max-extras`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordLimits {
    /// Largest record JSON stored.
    pub max_bytes: usize,
    /// Most extra fields in one record.
    pub max_extras: usize,
}

/// One staged device message, to store.
#[derive(Debug)]
pub(crate) struct Write {
    /// The message's `MID:SERIAL:`.
    pub header: Header,
    /// The device's slot, and the generation the write was staged in.
    pub slot: Arc<Slot>,
    pub generation: u64,
    /// The record after this write, and its JSON.
    pub entry: Entry,
    /// Changed fields plus `last_status_update` (the UPDT body for dashboards).
    pub changed: Map<String, Value>,
    /// The device did not exist before.
    pub created: bool,
    /// The device was offline before.
    pub came_online: bool,
    /// Answered once the write is durable and visible, or refused; a dropped ticket answers ERROR.
    pub ack: AckTicket,
}

/// What the writer thread does, in channel order.
#[derive(Debug)]
pub(crate) enum Job {
    /// Store one staged device message.
    Write(Box<Write>),
    /// The device's last connection closed: it goes offline (shown, not stored: every device is
    /// offline after a restart anyway).
    Offline {
        slot: Arc<Slot>,
        generation: u64,
        entry: Entry,
    },
    /// Finish what is queued, checkpoint and exit.
    Stop,
}

/// Handle to the writer thread.
#[derive(Debug)]
pub(crate) struct Ingest {
    tx: mpsc::UnboundedSender<Job>,
    thread: Mutex<Option<thread::JoinHandle<()>>>,
    limits: RecordLimits,
    fleet: Arc<Fleet>,
}

impl Ingest {
    /// Start the writer thread (and, through [`Log::start`], the checkpoint thread).
    pub(crate) fn start(
        store: Arc<Store>,
        fleet: Arc<Fleet>,
        hub: Arc<Hub>,
        metrics: &Arc<Metrics>,
        limits: RecordLimits,
    ) -> Result<Ingest, StoreError> {
        let log = Log::start(store, Arc::clone(metrics))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = Writer {
            fleet: Arc::clone(&fleet),
            hub,
            log,
            finals: HashMap::new(),
            verdicts: Vec::new(),
            scratch: Vec::new(),
        };
        let thread = thread::Builder::new()
            .name("smart-store-writer".to_owned())
            .spawn(move || writer.run(rx))?;
        Ok(Ingest {
            tx,
            thread: Mutex::new(Some(thread)),
            limits,
            fleet,
        })
    }

    /// Stage `update` for the device of `slot` and queue it: applied to a copy of what the device's
    /// queued writes leave, checked against the record limits, serialized. `attach` counts this
    /// connection for the device (its first message for it). `ack` makes the ticket, only once the
    /// write is queued. A refusal queues nothing and changes nothing.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn stage(
        &self,
        slot: &Arc<Slot>,
        attach: bool,
        header: Header,
        update: &Update,
        now: Timestamp,
        scratch: &mut Vec<u8>,
        ack: impl FnOnce() -> AckTicket,
    ) -> Result<(), Refusal> {
        let mut staging = slot.lock();
        let (mut record, created) = match &staging.entry {
            Some(entry) => ((*entry.record).clone(), false),
            None => (
                Record::new(slot.serial.clone(), self.fleet.owner(), now),
                true,
            ),
        };
        let was_online = !created && record.online;
        let changed = record.apply(update, now);
        // A device that sends is online: its connection is attached.
        record.online = true;
        if record.extra.len() > self.limits.max_extras {
            return Err(Refusal::TooManyExtras {
                count: record.extra.len(),
                max: self.limits.max_extras,
            });
        }
        let json = serialize(&record, scratch);
        if json.len() > self.limits.max_bytes {
            return Err(Refusal::RecordTooLarge {
                bytes: json.len(),
                max: self.limits.max_bytes,
            });
        }
        if attach {
            staging.connections += 1;
        }
        let entry = Entry {
            record: Arc::new(record),
            json,
        };
        staging.entry = Some(entry.clone());
        // Queued under the slot's lock: the writer sees one device's writes in staging order.
        self.submit(Job::Write(Box::new(Write {
            header,
            slot: Arc::clone(slot),
            generation: slot.generation.load(Ordering::Acquire),
            entry,
            changed,
            created,
            came_online: !was_online,
            ack: ack(),
        })));
        Ok(())
    }

    /// A connection that had sent for the device of `slot` closed; if it was the last, the device
    /// goes offline (queued after its pending writes).
    pub(crate) fn detach(&self, slot: &Arc<Slot>, scratch: &mut Vec<u8>) {
        let mut staging = slot.lock();
        staging.connections = staging.connections.saturating_sub(1);
        if staging.connections > 0 {
            return;
        }
        let Some(online) = staging.entry.as_ref().filter(|e| e.record.online) else {
            return;
        };
        let entry = offline(online, scratch);
        staging.entry = Some(entry.clone());
        self.submit(Job::Offline {
            slot: Arc::clone(slot),
            generation: slot.generation.load(Ordering::Acquire),
            entry,
        });
    }

    /// Queue a job. Never blocks (the bound is upstream: each connection may only have
    /// `--max-in-flight` messages waiting). Jobs sent after the writer stopped are dropped, which
    /// their tickets report as ERROR to the waiting session.
    pub(crate) fn submit(&self, job: Job) {
        if self.tx.send(job).is_err() {
            debug!("store writer gone; job dropped");
        }
    }

    /// Finish every queued job, checkpoint and wait for the writer thread to exit.
    pub(crate) async fn stop(&self) {
        self.submit(Job::Stop);
        let handle = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            match tokio::task::spawn_blocking(move || handle.join()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => error!("store writer panicked"),
                Err(e) => error!(%e, "joining the store writer failed"),
            }
        }
    }
}

/// What became of one job of the batch.
enum Verdict {
    /// Stored if the commit succeeds.
    Write(Box<Write>),
    /// Staged on a state a failed commit threw away: refused.
    Stale(AckTicket),
    /// The device went offline.
    Offline(Serial),
}

/// The writer thread's state.
struct Writer {
    fleet: Arc<Fleet>,
    hub: Arc<Hub>,
    log: Log,
    /// Per batch, reused: the final state of every device it touched (and whether a write of the
    /// batch changed it, so it goes to the log), and what became of each job.
    finals: HashMap<Serial, (Arc<Slot>, Entry, bool)>,
    verdicts: Vec<Verdict>,
    /// Serialization buffer.
    scratch: Vec<u8>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Job>) {
        let mut batch: Vec<Job> = Vec::with_capacity(256);
        let mut stopping = false;
        // Size of the previous batch.
        let mut last_batch = 0;
        while !stopping {
            let Some(first) = rx.blocking_recv() else {
                break;
            };
            batch.push(first);
            drain(&mut rx, &mut batch);
            if batch.len() * 2 < last_batch {
                // Much less than last time: the sessions that make up the rest are probably waiting
                // for a CPU (two cores, shared). Letting them run first costs a `sched_yield`
                // and saves a whole commit (measured: 50–100 µs of CPU for `write` +
                // `fdatasync` and their wake-ups here); with one device, or an idle CPU, it changes
                // nothing.
                thread::yield_now();
                drain(&mut rx, &mut batch);
            }
            last_batch = batch.len();
            stopping = self.process(&mut batch);
            self.log.maybe_checkpoint();
        }
        self.log.finish();
        debug!("store writer stopped");
    }

    /// Commit, publish and answer one batch. Returns whether a [`Job::Stop`] was in it.
    fn process(&mut self, batch: &mut Vec<Job>) -> bool {
        let mut stopping = false;
        for job in batch.drain(..) {
            match job {
                Job::Write(write) => {
                    if write.generation != write.slot.generation.load(Ordering::Acquire) {
                        self.verdicts.push(Verdict::Stale(write.ack));
                        continue;
                    }
                    let serial = write.slot.serial.clone();
                    let slot = Arc::clone(&write.slot);
                    self.finals
                        .insert(serial, (slot, write.entry.clone(), true));
                    self.verdicts.push(Verdict::Write(write));
                }
                Job::Offline {
                    slot,
                    generation,
                    entry,
                } => {
                    if generation != slot.generation.load(Ordering::Acquire) {
                        continue;
                    }
                    let serial = slot.serial.clone();
                    let written = self.finals.get(&serial).is_some_and(|f| f.2);
                    self.finals.insert(serial.clone(), (slot, entry, written));
                    self.verdicts.push(Verdict::Offline(serial));
                }
                Job::Stop => stopping = true,
            }
        }
        let committed = self
            .log
            .commit(
                self.finals
                    .iter()
                    .filter(|(_, f)| f.2)
                    .map(|(serial, f)| (serial, &f.1.json)),
            )
            .is_ok();
        let listening = self.hub.has_listeners();
        let mut changes = Vec::new();
        if committed {
            self.fleet.publish(
                self.finals
                    .drain()
                    .map(|(serial, (_, entry, _))| (serial, entry)),
            );
        } else {
            self.reset_failed(listening, &mut changes);
        }
        for verdict in self.verdicts.drain(..) {
            match verdict {
                Verdict::Write(write) => {
                    let Write {
                        header,
                        entry,
                        changed,
                        created,
                        came_online,
                        ack,
                        ..
                    } = *write;
                    if !committed {
                        ack.answer(Err(Refusal::Store));
                        continue;
                    }
                    // The session may be gone (peer closed): the write is durable all the same.
                    ack.answer(Ok(()));
                    if listening {
                        if created {
                            changes.push(Arc::new(Change::new(header, entry.record.to_map())));
                        } else {
                            if came_online {
                                let serial = header.serial.clone();
                                changes.push(Arc::new(Change::online(serial, true)));
                            }
                            changes.push(Arc::new(Change::new(header, changed)));
                        }
                    }
                }
                Verdict::Stale(ack) => ack.answer(Err(Refusal::Store)),
                Verdict::Offline(serial) => {
                    if committed && listening {
                        changes.push(Arc::new(Change::online(serial, false)));
                    }
                }
            }
        }
        self.hub.publish(&changes);
        stopping
    }

    /// The commit failed: every device of the batch starts again from its committed record, in a
    /// new generation (what was queued on top of the failed state is refused when it comes). A
    /// device whose connections are all gone is shown offline.
    fn reset_failed(&mut self, listening: bool, changes: &mut Vec<Arc<Change>>) {
        let mut offline = Vec::new();
        for (serial, (slot, _, _)) in self.finals.drain() {
            let mut staging = slot.lock();
            slot.generation.fetch_add(1, Ordering::AcqRel);
            let mut committed = self.fleet.committed(&serial);
            if staging.connections == 0
                && let Some(online) = committed.as_ref().filter(|e| e.record.online)
            {
                let entry = self::offline(online, &mut self.scratch);
                committed = Some(entry.clone());
                offline.push((serial.clone(), entry));
                if listening {
                    changes.push(Arc::new(Change::online(serial, false)));
                }
            }
            staging.entry = committed;
        }
        self.fleet.publish(offline);
    }
}

/// `entry` with `online: false`.
fn offline(entry: &Entry, scratch: &mut Vec<u8>) -> Entry {
    let mut record = (*entry.record).clone();
    record.online = false;
    let json = serialize(&record, scratch);
    Entry {
        record: Arc::new(record),
        json,
    }
}

/// A record's JSON text, through `scratch` so that the only allocation is the shared text itself.
///
/// Through `Record`'s `Serialize` (the same text as `Record::write_json`, checked by
/// `init_frame_matches_write_init`) into bytes: `write_json` goes through a `String` writer that
/// re-validates every chunk `serde_json` hands it; validating the finished text once is cheaper.
fn serialize(record: &Record, scratch: &mut Vec<u8>) -> Arc<str> {
    scratch.clear();
    if serde_json::to_writer(&mut *scratch, record).is_ok()
        && let Ok(text) = std::str::from_utf8(scratch)
    {
        Arc::from(text)
    } else {
        // Not expected (a record always serializes to UTF-8); the slow path is still right.
        Arc::from(record.to_json())
    }
}

/// Move what is waiting in `rx` into `batch`, up to [`MAX_BATCH`].
fn drain(rx: &mut mpsc::UnboundedReceiver<Job>, batch: &mut Vec<Job>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
}
