//! The ingest rule, in one place: device updates are applied, made durable and made visible by one
//! writer thread, in the order they were queued.
//!
//! Device sessions parse a frame and queue a [`Job::Write`] (the parsed update, not a new record).
//! The writer takes everything waiting and, for the whole batch:
//! 1. applies each update to a copy of the device's committed record (or of the record an earlier
//!    job of the same batch produced), refusing any whose result breaks the record limits;
//! 2. appends the final record of every device it changed to the log and syncs once ([`Log::commit`]);
//! 3. only if that succeeded, makes the new records visible in the [`Fleet`], then answers the acks,
//!    then hands the changes to the dashboards ([`Hub::publish`]).
//!
//! If the commit fails, every write of the batch is answered with ERROR and nothing of it is visible
//! anywhere: not in the fleet, the HTTP API, dashboards, nor in a later write of the same device
//! (which starts again from the committed record). PROTOCOL.md §5: an ERROR stores nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;

use serde_json::{Map, Value};
use smart_proto::{Header, Record, Serial, Timestamp, Update};
use tokio::sync::mpsc;
use tracing::{debug, error};

use crate::acks::{Ack, AckTicket, Refusal};
use crate::fleet::{Entry, Fleet};
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

/// One device message to apply and store.
#[derive(Debug)]
pub(crate) struct Write {
    /// The message's `MID:SERIAL:`.
    pub header: Header,
    /// Its normalized, typed fields.
    pub update: Update,
    /// When it arrived (`last_status_update`, and `manufacturing_date` of a new device).
    pub now: Timestamp,
    /// Answered once the write is durable and visible, or refused; a dropped ticket answers ERROR.
    pub ack: AckTicket,
}

/// What the writer thread does, in channel order.
#[derive(Debug)]
pub(crate) enum Job {
    /// Apply and store one device message.
    Write(Box<Write>),
    /// The device's last connection closed: it goes offline (shown, not stored: every device is
    /// offline after a restart anyway).
    Offline(Serial),
    /// Finish what is queued, checkpoint and exit.
    Stop,
}

/// Handle to the writer thread.
#[derive(Debug)]
pub(crate) struct Ingest {
    tx: mpsc::UnboundedSender<Job>,
    thread: Mutex<Option<thread::JoinHandle<()>>>,
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
            fleet,
            hub,
            log,
            limits,
            staged: HashMap::new(),
            verdicts: Vec::new(),
            scratch: Vec::new(),
        };
        let thread = thread::Builder::new()
            .name("smart-store-writer".to_owned())
            .spawn(move || writer.run(rx))?;
        Ok(Ingest {
            tx,
            thread: Mutex::new(Some(thread)),
        })
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

/// A device's state as this batch leaves it (not visible until the commit succeeded).
struct Staged {
    entry: Entry,
    /// A write of this batch changed it (so it goes to the log).
    written: bool,
}

/// What became of one job of the batch.
enum Verdict {
    /// Applied; stored if the commit succeeds.
    Write {
        /// `None` once answered.
        ack: Option<AckTicket>,
        header: Header,
        /// The record after this write (the full body for a device dashboards have not seen).
        record: Arc<Record>,
        /// Changed fields plus `last_status_update`.
        changed: Map<String, Value>,
        created: bool,
        came_online: bool,
    },
    /// Refused on its own (a record limit); the rest of the batch goes on.
    Refused(Option<AckTicket>, Refusal),
    /// The device went offline.
    Offline(Serial),
}

/// The writer thread's state.
struct Writer {
    fleet: Arc<Fleet>,
    hub: Arc<Hub>,
    log: Log,
    limits: RecordLimits,
    /// Per batch, reused: the devices it touched, and what became of each job.
    staged: HashMap<Serial, Staged>,
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

    /// Apply, commit, publish and answer one batch. Returns whether a [`Job::Stop`] was in it.
    fn process(&mut self, batch: &mut Vec<Job>) -> bool {
        let stopping = self.stage(batch);
        let committed = self
            .log
            .commit(
                self.staged
                    .iter()
                    .filter(|(_, s)| s.written)
                    .map(|(serial, s)| (serial, &s.entry.json)),
            )
            .is_ok();
        let mut retired = Vec::new();
        if committed {
            self.fleet.publish(
                self.staged
                    .drain()
                    .map(|(serial, staged)| (serial, staged.entry)),
                &mut retired,
            );
        } else {
            // Nothing of the batch becomes visible; the offline marks still hold, on the
            // committed records.
            self.staged.clear();
            let scratch = &mut self.scratch;
            let offline: Vec<(Serial, Entry)> = self.fleet.with_records(|records| {
                self.verdicts
                    .iter()
                    .filter_map(|v| match v {
                        Verdict::Offline(serial) => records
                            .entry(serial)
                            .filter(|e| e.record.online)
                            .map(|e| (serial.clone(), offline(e, scratch))),
                        _ => None,
                    })
                    .collect()
            });
            self.fleet.publish(offline, &mut retired);
        }
        // Dashboards get the batch before its acks leave, so a dashboard that connects after an OK
        // never gets a change older than its snapshot. (Without dashboards this costs nothing.)
        let listening = self.hub.has_listeners();
        let mut changes = Vec::new();
        for verdict in &mut self.verdicts {
            match verdict {
                Verdict::Write {
                    header,
                    record,
                    changed,
                    created,
                    came_online,
                    ..
                } if committed && listening => {
                    let changed = std::mem::take(changed);
                    if *created {
                        changes.push(Arc::new(Change::new(header.clone(), &record.to_map())));
                    } else {
                        if *came_online {
                            let serial = header.serial.clone();
                            changes.push(Arc::new(Change::online(serial, true)));
                        }
                        changes.push(Arc::new(Change::new(header.clone(), &changed)));
                    }
                }
                Verdict::Offline(serial) if listening => {
                    changes.push(Arc::new(Change::online(serial.clone(), false)));
                }
                _ => {}
            }
        }
        self.hub.publish(&changes);
        for verdict in &mut self.verdicts {
            let (ack, result): (_, Ack) = match verdict {
                Verdict::Write { ack, .. } if committed => (ack, Ok(())),
                Verdict::Write { ack, .. } => (ack, Err(Refusal::Store)),
                Verdict::Refused(ack, refusal) => (ack, Err(refusal.clone())),
                Verdict::Offline(_) => continue,
            };
            // The session may be gone (peer closed): the write is durable all the same.
            if let Some(ack) = ack.take() {
                ack.answer(result);
            }
        }
        // Freeing the batch's parsed updates and replaced records waits until the acks are out.
        self.verdicts.clear();
        drop(retired);
        stopping
    }

    /// Apply every job of `batch` to staged copies, recording a verdict per job. Returns whether a
    /// [`Job::Stop`] was in it.
    fn stage(&mut self, batch: &mut Vec<Job>) -> bool {
        let Writer {
            fleet,
            limits,
            staged,
            verdicts,
            scratch,
            ..
        } = self;
        let mut stopping = false;
        fleet.with_records(|records| {
            for job in batch.drain(..) {
                match job {
                    Job::Write(write) => {
                        let Write {
                            header,
                            update,
                            now,
                            ack,
                        } = *write;
                        let base = match staged.get(&header.serial) {
                            Some(s) => Some(&s.entry),
                            None => records.entry(&header.serial),
                        };
                        let (mut record, created) = match base {
                            Some(entry) => ((*entry.record).clone(), false),
                            None => (Record::new(header.serial.clone(), fleet.owner(), now), true),
                        };
                        let was_online = record.online && !created;
                        let changed = record.apply(&update, now);
                        // A device that sends is online: its connection is attached.
                        record.online = true;
                        if record.extra.len() > limits.max_extras {
                            let refusal = Refusal::TooManyExtras {
                                count: record.extra.len(),
                                max: limits.max_extras,
                            };
                            verdicts.push(Verdict::Refused(Some(ack), refusal));
                            continue;
                        }
                        let json = serialize(&record, scratch);
                        if json.len() > limits.max_bytes {
                            let refusal = Refusal::RecordTooLarge {
                                bytes: json.len(),
                                max: limits.max_bytes,
                            };
                            verdicts.push(Verdict::Refused(Some(ack), refusal));
                            continue;
                        }
                        let record = Arc::new(record);
                        let entry = Entry {
                            record: Arc::clone(&record),
                            json,
                        };
                        staged.insert(
                            header.serial.clone(),
                            Staged {
                                entry,
                                written: true,
                            },
                        );
                        verdicts.push(Verdict::Write {
                            ack: Some(ack),
                            header,
                            record,
                            changed,
                            created,
                            came_online: !was_online,
                        });
                    }
                    Job::Offline(serial) => {
                        let (base, written) = match staged.get(&serial) {
                            Some(s) => (Some(&s.entry), s.written),
                            None => (records.entry(&serial), false),
                        };
                        let Some(base) = base.filter(|e| e.record.online) else {
                            continue;
                        };
                        let entry = offline(base, scratch);
                        staged.insert(serial.clone(), Staged { entry, written });
                        verdicts.push(Verdict::Offline(serial));
                    }
                    Job::Stop => stopping = true,
                }
            }
        });
        stopping
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
