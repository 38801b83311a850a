//! The ingest rule, in one place: how a device message becomes a durable, visible update.
//!
//! **Front** (`intake.rs`; in the device session's task or on the parking lot's thread, outside any
//! lock): an [`Intake`] per connection parses a frame, checks the connection's and the server's
//! admission rules (serials per connection, extras, closed registration) and queues a [`Job::Write`]
//! (the parsed update, not a new record) with the session's [`AckTicket`]. The first write of a
//! connection for a serial counts the connection for that serial and is queued under the same lock
//! as the serial's "offline" ([`Ingest::detach`]), so the two can never be queued swapped. The session keeps only the socket and the reply order.
//!
//! **Writer** (one thread): it takes everything waiting and, for the whole batch:
//! 1. applies each update to a copy of the device's committed record (or of the record an earlier
//!    job of the same batch produced), refusing any whose result breaks the record limits. The copy
//!    is made into a record the previous batches retired, reusing its allocations, and the changed
//!    fields dashboards need are only collected while a dashboard listens;
//! 2. appends the final record of every device it changed to the log and syncs once ([`Log::commit`]);
//! 3. only if that succeeded, makes the new records visible in the [`Fleet`], then hands the changes
//!    to the [`Sink`] wired in at start-up (the dashboards' hub; nothing here knows dashboards), then
//!    answers the acks.
//!
//! If the commit fails, every write of the batch is answered with ERROR and nothing of it is visible
//! anywhere: not in the fleet, the HTTP API, dashboards, nor in a later write of the same device
//! (which starts again from the committed record). PROTOCOL.md §5: an ERROR stores nothing.

use std::collections::{HashMap, hash_map};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::SystemTime;

use serde_json::{Map, Value};
use smart_proto::{Header, Record, Serial, Timestamp, Update};
use tokio::sync::mpsc;
use tracing::{debug, error};

use crate::acks::{Ack, AckTicket, Refusal};
use crate::fleet::{Entry, Fleet};
use crate::history::samples as history;
use crate::metrics::Metrics;
use crate::store::{Log, Store, StoreError};

/// Largest number of jobs one group commit takes: bounds the latency a huge backlog adds to the
/// first job of the next batch.
const MAX_BATCH: usize = 4096;

/// Most retired records the writer keeps to copy later records into (see [`recycled`]).
const POOL: usize = 512;

/// Records whose text is larger than this are not kept for reuse (their allocations would be).
const POOL_RECORD_BYTES: usize = 4096;

/// What a device message and the record it builds may hold (from the config).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Largest record JSON stored (`--max-record-bytes`).
    pub record_bytes: usize,
    /// Most extra fields in one record (`--max-extras`).
    pub extras: usize,
    /// Largest extra value in one message (`--max-extra-bytes`).
    pub extra_bytes: usize,
    /// Most serials one connection may send for (`--max-serials-per-connection`).
    pub serials_per_connection: usize,
}

/// Where the writer hands the changes of each committed batch: wired in at start-up (the hub), so
/// that ingest and storage do not know who listens.
pub(crate) trait Sink: Send + Sync + 'static {
    /// Whether anybody listens: when nobody does, the writer builds no changes.
    fn listening(&self) -> bool;

    /// Take the batch's changes, in order (emptying `changes`). Must not wait.
    fn publish_committed(&self, changes: &mut Vec<Committed>);
}

/// One committed change, as the writer hands it to the [`Sink`].
#[derive(Debug)]
pub(crate) enum Committed {
    /// A device message's effect: the changed fields plus `last_status_update`, or the full record
    /// for a device nobody has seen yet.
    Updt {
        header: Header,
        body: Map<String, Value>,
    },
    /// The device came online (its first connection sent) or went offline (its last one closed;
    /// or, with `--redis`, another instance's presence changed it).
    Online { serial: Serial, online: bool },
}

/// Where devices are online besides this instance (`--redis`: the cluster's presence), wired in at
/// start-up, so that ingest does not know the cluster.
pub(crate) trait Presence: Send + Sync + std::fmt::Debug + 'static {
    /// A device's first connection here sent a valid message (`true`), or its last one closed
    /// (`false`). Called under the lock that counts the device's connections, so in order per
    /// device, from the sessions' tasks: must not wait (never Redis).
    fn local(&self, serial: &Serial, online: bool);

    /// Whether another instance has the device online.
    fn elsewhere(&self, serial: &Serial) -> bool;
}

/// The current time as a record timestamp.
pub(crate) fn now() -> Timestamp {
    Timestamp::from(SystemTime::now())
}

/// One device message to apply and store.
#[derive(Debug)]
struct Write {
    /// The message's `MID:SERIAL:`.
    header: Header,
    /// Its normalized, typed fields.
    update: Update,
    /// When it arrived (`last_status_update`, and `manufacturing_date` of a new device).
    now: Timestamp,
    /// The owner the connection's device token assigns (`token issue --owner`): the record takes it.
    owner: Option<Arc<str>>,
    /// Answered once the write is durable and visible, or refused; a dropped ticket answers ERROR.
    ack: AckTicket,
}

/// What the writer thread does, in channel order.
#[derive(Debug)]
enum Job {
    /// Apply and store one device message.
    Write(Write),
    /// The device's last connection closed: it goes offline (shown, not stored: every device is
    /// offline after a restart anyway), unless another instance has it online.
    Offline(Serial),
    /// Whether another instance has the device online changed (`--redis`): it is online if a
    /// connection here or another instance has it.
    Recheck(Serial),
    /// Finish what is queued, checkpoint and exit.
    Stop,
    /// Nothing to write: a second went by (checkpoints, and so the history, also happen when
    /// devices fall silent).
    Tick,
}

/// How often the writer is woken up without work.
const TICK: std::time::Duration = std::time::Duration::from_secs(1);

/// Open connections that have sent a valid message, per serial; shared with the writer, which
/// keeps a device online while one is open (see [`Job::Recheck`]).
type Connections = Arc<Mutex<HashMap<Serial, u32>>>;

/// Asks the writer thread to decide again whether devices are online (`--redis`: the cluster's
/// presence, when another instance's devices come or go). Never blocks.
#[derive(Debug, Clone)]
pub(crate) struct Recheck(mpsc::UnboundedSender<Job>);

impl Recheck {
    /// Decide `serial`'s `online` again (dashboards get an UPDT if it changes).
    pub(crate) fn device(&self, serial: Serial) {
        if self.0.send(Job::Recheck(serial)).is_err() {
            debug!("store writer gone; presence recheck dropped");
        }
    }
}

/// Most parsed updates waiting in [`Spent`]; beyond that (nobody takes them: no connection is on
/// the parking lot's thread) the writer frees them itself.
const SPENT_MAX: usize = 4 * MAX_BATCH;

/// Parsed updates the writer has applied, handed back to be freed where they were parsed. glibc
/// frees a chunk into the arena of the thread that allocated it, under that arena's lock, which the
/// parsing thread takes for every message it parses: the writer freeing the parking lot's
/// allocations made the two wait on each other (`futex` in `_int_free` on the writer's commit path).
#[derive(Debug, Default)]
struct Spent {
    bin: Mutex<Vec<Update>>,
    any: AtomicBool,
}

/// Handle to the writer thread, and the count of connections keeping each device online.
#[derive(Debug)]
pub(crate) struct Ingest {
    tx: mpsc::UnboundedSender<Job>,
    thread: Mutex<Option<thread::JoinHandle<()>>>,
    /// Open connections that have sent a valid message, per serial (they keep the device online).
    connections: Connections,
    /// Told when a device comes online here or goes offline (`--redis`).
    presence: Option<Arc<dyn Presence>>,
    fleet: Arc<Fleet>,
    metrics: Arc<Metrics>,
    limits: Limits,
    spent: Arc<Spent>,
}

impl Ingest {
    /// Start the writer thread (and, through [`Log::start`], the checkpoint thread); `sink` gets
    /// every committed batch's changes, `presence` (`--redis`) every device coming online here or
    /// going offline.
    pub(crate) fn start<S: Sink>(
        store: Arc<Store>,
        fleet: Arc<Fleet>,
        sink: Arc<S>,
        presence: Option<Arc<dyn Presence>>,
        metrics: &Arc<Metrics>,
        limits: Limits,
    ) -> Result<Ingest, StoreError> {
        let log = Log::start(store, Arc::clone(metrics))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let connections = Connections::default();
        let spent = Arc::new(Spent::default());
        let writer = Writer {
            spent: Arc::clone(&spent),
            used: Vec::new(),
            fleet: Arc::clone(&fleet),
            sink,
            presence: presence.clone(),
            connections: Arc::clone(&connections),
            log,
            limits,
            staged: HashMap::new(),
            verdicts: Vec::new(),
            committed: Vec::new(),
            scratch: Vec::new(),
            listened: false,
            pool: Vec::new(),
        };
        let ticks = tx.clone();
        let thread = thread::Builder::new()
            .name("smart-store-writer".to_owned())
            .spawn(move || writer.run(rx))?;
        // Ends when the writer is gone (its channel closed).
        thread::Builder::new()
            .name("smart-store-tick".to_owned())
            .spawn(move || {
                while ticks.send(Job::Tick).is_ok() {
                    thread::sleep(TICK);
                }
            })?;
        Ok(Ingest {
            tx,
            thread: Mutex::new(Some(thread)),
            connections,
            presence,
            fleet,
            metrics: Arc::clone(metrics),
            limits,
            spent,
        })
    }

    /// Free, on this thread, the parsed updates the writer is done with (see [`Spent`]); `buffer`
    /// is an empty vector the caller keeps, swapped with the full one under the lock.
    /// Returns how many it freed.
    pub(crate) fn free_spent(&self, buffer: &mut Vec<Update>) -> usize {
        if !self.spent.any.load(Ordering::Relaxed) || !self.spent.any.swap(false, Ordering::AcqRel)
        {
            return 0;
        }
        std::mem::swap(
            &mut *self
                .spent
                .bin
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
            buffer,
        );
        let freed = buffer.len();
        buffer.clear();
        freed
    }

    /// The front of the ingest path for a new, unbound connection (sessions start from
    /// [`Ingest::resume`] with a [`ParkedIntake::new`]).
    #[cfg(test)]
    pub(crate) fn intake(&self) -> Intake<'_> {
        self.resume(ParkedIntake::new(None))
    }

    /// A device connection's intake, from what it kept (a new one's: [`ParkedIntake::new`]).
    pub(crate) fn resume(&self, parked: ParkedIntake) -> Intake<'_> {
        Intake::resumed(self, parked)
    }

    /// The handle the cluster's presence asks for rechecks with.
    pub(crate) fn recheck(&self) -> Recheck {
        Recheck(self.tx.clone())
    }

    /// Queue a job. Never blocks (the bound is upstream: each connection may only have
    /// `--max-in-flight` messages waiting). Jobs sent after the writer stopped are dropped, which
    /// their tickets report as ERROR to the waiting session.
    fn submit(&self, job: Job) {
        if self.tx.send(job).is_err() {
            debug!("store writer gone; job dropped");
        }
    }

    /// The devices with a connection here that has sent for them.
    pub(crate) fn connected(&self) -> Vec<Serial> {
        self.lock_connections().keys().cloned().collect()
    }

    fn lock_connections(&self) -> std::sync::MutexGuard<'_, HashMap<Serial, u32>> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A connection sends its first valid message for `serial`: count it and queue that message
    /// under the same lock as [`Ingest::detach`], so that a device's "offline" can never be queued
    /// after a newer connection's write.
    fn attach(&self, serial: &Serial, job: Job) {
        let mut connections = self.lock_connections();
        let count = connections.entry(serial.clone()).or_insert(0);
        *count += 1;
        if *count == 1
            && let Some(presence) = &self.presence
        {
            presence.local(serial, true);
        }
        self.submit(job);
    }

    /// A connection that had sent for `serial` closed. If it was the device's last, its "offline"
    /// is queued (under the lock, through the writer: after this device's pending writes). Returns
    /// whether it was the last.
    fn detach(&self, serial: &Serial) -> bool {
        let mut connections = self.lock_connections();
        let last = match connections.get_mut(serial) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                connections.remove(serial);
                true
            }
            None => false,
        };
        if last {
            if let Some(presence) = &self.presence {
                presence.local(serial, false);
            }
            self.submit(Job::Offline(serial.clone()));
        }
        last
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
        /// The record after this write (the full body for a device dashboards have not seen), and
        /// its text (what the log stores).
        record: Arc<Record>,
        json: Arc<str>,
        /// Changed fields plus `last_status_update`.
        changed: Map<String, Value>,
        /// Numeric changes for the history (`--history`; empty for a new device, which records
        /// every numeric field).
        numbers: Vec<(history::FieldName, f64)>,
        created: bool,
        came_online: bool,
    },
    /// Refused on its own (a record limit); the rest of the batch goes on.
    Refused(Option<AckTicket>, Refusal),
    /// The device went online or offline (its connections here, or other instances).
    Online(Serial, bool),
}

/// The writer thread's state.
struct Writer<S> {
    fleet: Arc<Fleet>,
    /// Where committed changes go (the hub).
    sink: Arc<S>,
    /// Other instances' devices (`--redis`).
    presence: Option<Arc<dyn Presence>>,
    /// The connections keeping each device online here.
    connections: Connections,
    log: Log,
    limits: Limits,
    /// Per batch, reused: the devices it touched, what became of each job, the changes for the sink.
    staged: HashMap<Serial, Staged>,
    verdicts: Vec<Verdict>,
    committed: Vec<Committed>,
    /// Serialization buffer.
    scratch: Vec<u8>,
    /// Whether the sink listened when the batch was staged (the staged writes carry their changes).
    listened: bool,
    /// Retired records nothing else holds any more, to stage later writes in (see [`recycled`]).
    pool: Vec<Arc<Record>>,
    /// The batch's applied updates, then handed back to be freed where they were parsed.
    used: Vec<Update>,
    spent: Arc<Spent>,
}

impl<S: Sink> Writer<S> {
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
            // A tick only wakes the writer up for the checkpoint below.
            batch.retain(|job| !matches!(job, Job::Tick));
            last_batch = batch.len();
            if !batch.is_empty() {
                stopping = self.process(&mut batch);
            }
            self.log.maybe_checkpoint();
        }
        self.log.finish();
        debug!("store writer stopped");
    }

    /// Apply, commit, publish and answer one batch. Returns whether a [`Job::Stop`] was in it.
    fn process(&mut self, batch: &mut Vec<Job>) -> bool {
        let stopping = self.stage(batch);
        // Every write's record, in order (a device written twice in the batch has both versions in
        // the log: the replay after a crash gives the history each acked change).
        let committed = self
            .log
            .commit(self.verdicts.iter().filter_map(|v| match v {
                Verdict::Write { header, json, .. } => Some((&header.serial, json)),
                _ => None,
            }))
            .is_ok();
        let mut retired = Vec::new();
        if committed && self.log.keeps_history() {
            self.note_history();
        }
        if committed {
            // Writes replace their entries; what is left are marks only.
            self.fleet.publish(
                self.staged
                    .extract_if(|_, staged| staged.written)
                    .map(|(serial, staged)| (serial, staged.entry)),
                &mut retired,
            );
            if !self.staged.is_empty() {
                let scratch = &mut self.scratch;
                self.fleet.publish_marks(
                    self.staged
                        .drain()
                        .map(|(serial, staged)| (serial, staged.entry)),
                    &mut retired,
                    |entry, online| with_online(entry, online, scratch),
                );
            }
        } else {
            // Nothing of the batch becomes visible; the online and offline marks still hold, on
            // the committed records.
            self.staged.clear();
            let scratch = &mut self.scratch;
            let marks: Vec<(Serial, Entry)> = self.fleet.with_records(|records| {
                self.verdicts
                    .iter()
                    .filter_map(|v| match v {
                        Verdict::Online(serial, online) => records
                            .entry(serial)
                            .filter(|e| e.record.online != *online)
                            .map(|e| (serial.clone(), with_online(e, *online, scratch))),
                        _ => None,
                    })
                    .collect()
            });
            self.fleet
                .publish_marks(marks, &mut retired, |entry, online| {
                    with_online(entry, online, scratch)
                });
        }
        // Dashboards get the batch before its acks leave, so a dashboard that connects after an OK
        // never gets a change older than its snapshot. (Without dashboards this costs nothing.)
        let listening = self.sink.listening();
        let changes = &mut self.committed;
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
                    if *created || !self.listened {
                        // A new device, or a dashboard came after the batch was staged without
                        // its changes: the whole record is the change.
                        changes.push(Committed::Updt {
                            header: header.clone(),
                            body: record.to_map(),
                        });
                    } else {
                        if *came_online {
                            let serial = header.serial.clone();
                            changes.push(Committed::Online {
                                serial,
                                online: true,
                            });
                        }
                        changes.push(Committed::Updt {
                            header: header.clone(),
                            body: changed,
                        });
                    }
                }
                Verdict::Online(serial, online) if listening => {
                    changes.push(Committed::Online {
                        serial: serial.clone(),
                        online: *online,
                    });
                }
                _ => {}
            }
        }
        self.sink.publish_committed(changes);
        changes.clear();
        // `--ack cluster`: an OK waits until Redis has the batch, and so does any answer behind a
        // waiting one of its session (a session reads its answers in order).
        let cluster = self.log.acks_wait();
        let mut waiting = Vec::new();
        // Pollers the sessions share (the parking lot's thread) are woken once, after all answers.
        crate::wakes::batched(|| {
            for verdict in &mut self.verdicts {
                let (ack, result): (_, Ack) = match verdict {
                    Verdict::Write { ack, .. } if committed => (ack, Ok(())),
                    Verdict::Write { ack, .. } => (ack, Err(Refusal::Store)),
                    Verdict::Refused(ack, refusal) => (ack, Err(refusal.clone())),
                    Verdict::Online(..) => continue,
                };
                // The session may be gone (peer closed): the write is durable all the same.
                if let Some(ack) = ack.take() {
                    if cluster && (result.is_ok() || !ack.next_to_answer()) {
                        waiting.push((ack, result));
                    } else {
                        ack.answer(result);
                    }
                }
            }
        });
        if !waiting.is_empty() {
            self.log.answer_when_shipped(&mut waiting.into_iter());
        }
        // Freeing the batch's parsed updates and keeping the replaced records for later writes
        // waits until the acks are out.
        self.verdicts.clear();
        self.hand_back();
        for entry in retired {
            if entry.json.len() <= POOL_RECORD_BYTES {
                recycle(&mut self.pool, entry.record);
            }
        }
        stopping
    }

    /// Note each committed write's numeric changes for the history: a new device's every numeric
    /// field, else what the update changed.
    fn note_history(&mut self) {
        for verdict in &mut self.verdicts {
            if let Verdict::Write {
                record,
                numbers,
                created,
                ..
            } = verdict
            {
                let values = if *created {
                    history::between(None, record)
                } else {
                    std::mem::take(numbers)
                };
                if !values.is_empty() {
                    self.log.note(history::Change {
                        serial: record.serial_number.clone(),
                        ts_ms: history::millis(record.last_status_update),
                        values,
                    });
                }
            }
        }
    }

    /// Apply every job of `batch` to staged copies, recording a verdict per job. Returns whether a
    /// [`Job::Stop`] was in it.
    fn stage(&mut self, batch: &mut Vec<Job>) -> bool {
        // Checked again when the batch is handed over (see `process`).
        self.listened = self.sink.listening();
        let Writer {
            fleet,
            presence,
            connections,
            listened,
            limits,
            staged,
            verdicts,
            scratch,
            pool,
            log,
            used,
            ..
        } = self;
        let listening = *listened;
        let history = log.keeps_history();
        // `--ack cluster` with Redis away: refused before anything is stored.
        let refusing = log.refuses_writes();
        let mut stopping = false;
        fleet.with_records(|records| {
            for job in batch.drain(..) {
                let recheck = matches!(job, Job::Recheck(_));
                match job {
                    Job::Write(write) => {
                        let Write {
                            header,
                            update,
                            now,
                            owner,
                            ack,
                        } = write;
                        // Kept until the batch is done, then freed where it was parsed (`Spent`).
                        used.push(update);
                        let Some(update) = used.last() else {
                            continue;
                        };
                        // Unless an earlier write of the session waits for Redis: this one then
                        // waits with it (it is stored, and shipped on Redis's return).
                        if refusing && ack.next_to_answer() {
                            verdicts.push(Verdict::Refused(Some(ack), Refusal::ClusterDown));
                            continue;
                        }
                        let slot = staged.entry(header.serial.clone());
                        let base = match &slot {
                            hash_map::Entry::Occupied(s) => Some(&s.get().entry),
                            hash_map::Entry::Vacant(_) => records.entry(&header.serial),
                        };
                        let owner = owner.as_deref();
                        let (mut shared, created) = if let Some(entry) = base {
                            (recycled(pool, &entry.record), false)
                        } else {
                            let owner = owner.unwrap_or(fleet.owner());
                            let record = Record::new(header.serial.clone(), owner, now);
                            (Arc::new(record), true)
                        };
                        // Unique (fresh or recycled): this never copies.
                        let record = Arc::make_mut(&mut shared);
                        let was_online = record.online && !created;
                        // `last_status_update` is the version instances compare (`--redis`): never
                        // older than the record's, even where this clock lags the one that wrote it.
                        let after = record.last_status_update.as_unix_micros().saturating_add(1);
                        let now = if created {
                            now
                        } else {
                            now.max(Timestamp::from_unix_micros(after))
                        };
                        // What changed: all of it for dashboards, the numbers for the history.
                        let mut numbers = Vec::new();
                        let mut changed = if listening {
                            let changed = record.apply(update, now);
                            if history && !created {
                                numbers = history::from_changed(&changed);
                            }
                            changed
                        } else if history && !created {
                            record.apply_each(update, now, |key, value| {
                                if let Some(n) = value.as_f64() {
                                    numbers.push((history::name(key), n));
                                }
                            });
                            Map::new()
                        } else {
                            record.apply_unrecorded(update, now);
                            Map::new()
                        };
                        // The token's owner wins over the one the record was registered with.
                        if let Some(owner) = owner.filter(|o| *o != record.owner) {
                            owner.clone_into(&mut record.owner);
                            if listening {
                                changed.insert("owner".to_owned(), Value::String(owner.to_owned()));
                            }
                        }
                        // A device that sends is online: its connection is attached.
                        record.online = true;
                        if record.extra.len() > limits.extras {
                            let refusal = Refusal::TooManyExtras {
                                count: record.extra.len(),
                                max: limits.extras,
                            };
                            verdicts.push(Verdict::Refused(Some(ack), refusal));
                            continue;
                        }
                        let json = serialize(record, scratch);
                        if json.len() > limits.record_bytes {
                            let refusal = Refusal::RecordTooLarge {
                                bytes: json.len(),
                                max: limits.record_bytes,
                            };
                            verdicts.push(Verdict::Refused(Some(ack), refusal));
                            continue;
                        }
                        let entry = Entry {
                            record: Arc::clone(&shared),
                            json: Arc::clone(&json),
                        };
                        let staged = Staged {
                            entry,
                            written: true,
                        };
                        match slot {
                            hash_map::Entry::Occupied(mut s) => {
                                s.insert(staged);
                            }
                            hash_map::Entry::Vacant(s) => {
                                s.insert(staged);
                            }
                        }
                        let record = shared;
                        verdicts.push(Verdict::Write {
                            ack: Some(ack),
                            header,
                            record,
                            json,
                            changed,
                            numbers,
                            created,
                            came_online: !was_online,
                        });
                    }
                    Job::Offline(serial) | Job::Recheck(serial) => {
                        // Offline: the last connection here closed (a newer connection's first
                        // write follows it in the queue). Recheck: other instances changed; a
                        // connection here keeps the device online.
                        let here = recheck
                            && connections
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .contains_key(&serial);
                        let online =
                            here || presence.as_ref().is_some_and(|p| p.elsewhere(&serial));
                        let (base, written) = match staged.get(&serial) {
                            Some(s) => (Some(&s.entry), s.written),
                            None => (records.entry(&serial), false),
                        };
                        let Some(base) = base.filter(|e| e.record.online != online) else {
                            continue;
                        };
                        let entry = with_online(base, online, scratch);
                        staged.insert(serial.clone(), Staged { entry, written });
                        verdicts.push(Verdict::Online(serial, online));
                    }
                    Job::Stop => stopping = true,
                    // Taken out of the batch before it is staged.
                    Job::Tick => {}
                }
            }
        });
        stopping
    }
}

/// A copy of `source` in a record of the pool that nothing else holds any more (no allocation: its
/// strings and extras are overwritten in place), or a fresh one. The result is not shared.
impl<S> Writer<S> {
    /// Hand the batch's applied updates back to be freed where they were parsed (see [`Spent`]).
    fn hand_back(&mut self) {
        if self.used.is_empty() {
            return;
        }
        let mut bin = self
            .spent
            .bin
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if bin.len() + self.used.len() <= SPENT_MAX {
            bin.append(&mut self.used);
            drop(bin);
            self.spent.any.store(true, Ordering::Release);
        } else {
            drop(bin);
            self.used.clear();
        }
    }
}

fn recycled(pool: &mut Vec<Arc<Record>>, source: &Record) -> Arc<Record> {
    while let Some(mut shared) = pool.pop() {
        if let Some(record) = Arc::get_mut(&mut shared) {
            record.clone_from(source);
            return shared;
        }
    }
    Arc::new(source.clone())
}

/// Keep `record` for [`recycled`] if the pool has room.
fn recycle(pool: &mut Vec<Arc<Record>>, record: Arc<Record>) {
    if pool.len() < POOL {
        pool.push(record);
    }
}

/// `entry` with `online` set as given.
fn with_online(entry: &Entry, online: bool, scratch: &mut Vec<u8>) -> Entry {
    let mut record = (*entry.record).clone();
    record.online = online;
    let json = serialize(&record, scratch);
    Entry {
        record: Arc::new(record),
        json,
    }
}

/// A record's JSON text, through `scratch` so that the only allocation is the shared text itself
/// (`Record::write_json_bytes`: the same text as `Record::write_json`, checked as UTF-8 once, whole).
fn serialize(record: &Record, scratch: &mut Vec<u8>) -> Arc<str> {
    scratch.clear();
    record.write_json_bytes(scratch);
    match std::str::from_utf8(scratch) {
        Ok(text) => Arc::from(text),
        // Not expected (a record always is UTF-8); the slow path is still right.
        Err(_) => Arc::from(record.to_json()),
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

mod intake;
#[cfg(test)]
mod tests;

pub(crate) use intake::{Intake, ParkedIntake, Queued};
