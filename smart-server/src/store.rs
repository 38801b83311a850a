//! The durable latest-state table and its group commit.
//!
//! Layout of `--data-dir`: `sled/` holds the latest record of every device (key: serial, value: the
//! record's JSON); `wal/` holds the write-ahead log of what sled may not have yet (see [`crate::wal`]).
//!
//! One writer thread ([`crate::ingest`]) owns every write. Through [`Log::commit`] it appends a whole
//! batch of records to the log with one `write` and makes it durable with one `fdatasync`. A batch
//! costs one sync whatever its size: the more devices send at once, the more writes each sync covers.
//!
//! sled is off the hot path: the writer only remembers the latest record of each device written
//! since the last checkpoint. About once a second it starts a new log segment and hands that set to
//! the checkpoint thread, which inserts it into sled (one insert per device, however many updates it
//! had), records how far it got and flushes; the writer then retires the segments it covered. A
//! restart replays at most the segments written since.
//!
//! The storage side of the writer is [`Log`] (append + sync, checkpoints); the job loop only hands
//! it batches. A record that fails to read at start is quarantined (the `quarantine` tree), never
//! dropped.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::thread;
use std::time::{Duration, Instant};

use smart_proto::{Record, Serial};
use thiserror::Error;
use tracing::{debug, error, info};

use crate::acks::{self, AckTicket};
use crate::history::maintenance::Maintenance;
use crate::history::raw::HistoryError;
use crate::history::samples::{self, Change};
pub(crate) use crate::history::{History, HistoryOptions};
use crate::metrics::Metrics;
use crate::wal::{self, Wal, WalDir};

/// How often sled is flushed and the log truncated, unless `--checkpoint-seconds` says otherwise.
const CHECKPOINT_INTERVAL: Duration = Duration::from_mins(1);
/// How often the writer hands what it wrote over to the checkpoint thread (where the history's
/// reads find the changes at once).
const HAND_OVER_INTERVAL: Duration = Duration::from_secs(1);
/// A log segment this large is checkpointed without waiting for the interval.
const CHECKPOINT_BYTES: u64 = 64 * 1024 * 1024;
/// This many history changes since the last checkpoint start the next one without waiting for the
/// interval (they are held in memory until then: about 100 bytes each).
const CHECKPOINT_CHANGES: usize = 200_000;
/// Key in the `meta` tree: the last log segment whose records are in sled.
const CHECKPOINT_KEY: &str = "checkpoint";
/// The checkpoint thread's nice value (Linux: per thread): see where it is set.
const CHECKPOINT_NICE: i32 = 5;
/// A checkpoint longer than this is logged (info): its writes compete with the log's syncs.
const SLOW_CHECKPOINT: Duration = Duration::from_millis(500);

/// Failures of the store.
#[derive(Debug, Error)]
pub enum StoreError {
    /// sled refused to open, read, write or flush.
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    /// The write-ahead log could not be read or written.
    #[error("write-ahead log: {0}")]
    Wal(#[from] io::Error),
    /// The writer thread is gone (it failed or the server is shutting down).
    #[error("store writer is not running")]
    WriterGone,
    /// The history's trees could not be read or written.
    #[error("{0}")]
    History(#[from] HistoryError),
}

/// The sled database, its trees, and the log directory.
#[derive(Debug)]
pub(crate) struct Store {
    db: sled::Db,
    devices: sled::Tree,
    /// `checkpoint`: the last log segment whose records are in `devices`.
    meta: sled::Tree,
    /// Stored records that could not be read, under their original key (log frames without a
    /// readable key under `wal:<segment>:<frame>`): kept for an operator, never served.
    quarantine: sled::Tree,
    quarantined: AtomicU64,
    wal_dir: Arc<WalDir>,
    /// Where the log continues after [`Store::open_shipping`].
    first_segment: u64,
    healthy: AtomicBool,
    /// The history, unless `--history off`.
    history: Option<History>,
    /// `--checkpoint-seconds`.
    checkpoint_every: Duration,
    /// Where committed batches are shipped (`--redis`): log segments stay until it has them.
    shipping: Option<Arc<dyn Shipping>>,
}

/// Where every committed batch also goes, besides sled (`--redis`: the cluster's shipper, which
/// implements it), and how far it got. Log segments are retired only once both the checkpoint and
/// the shipper are past them, at start too: with a shipper, the replay retires nothing.
pub(crate) trait Shipping: Send + Sync + std::fmt::Debug {
    /// The records of a batch just made durable in log segment `seq`. Must not wait.
    fn committed(&self, seq: u64, records: &mut dyn Iterator<Item = (&Serial, &Arc<str>)>);
    /// The oldest log segment holding something not shipped yet (`u64::MAX`: none).
    fn unshipped_from(&self) -> u64;
    /// At shutdown: ship what is pending, waiting a bounded time; then [`Shipping::unshipped_from`].
    fn finish(&self) -> u64;
    /// `--ack cluster`: a write is answered only once the shipper has it where it goes.
    fn acks_wait(&self) -> bool;
    /// Whether the last attempt to reach where it ships failed (false before the first attempt).
    fn unreachable(&self) -> bool;
    /// Give these answers (of the last batch passed to [`Shipping::committed`], or refused after
    /// it) once that batch is shipped, after those handed over before. Must not wait.
    fn answer_when_shipped(&self, answers: &mut dyn Iterator<Item = (AckTicket, acks::Ack)>);
}

impl Store {
    /// Open (or create) the store in `dir`, replaying whatever the log holds beyond sled (into the
    /// latest records and, if kept, the history). (The server opens it through
    /// [`Store::open_shipping`].)
    #[cfg(test)]
    pub(crate) fn open(dir: &Path, history: HistoryOptions) -> Result<Store, StoreError> {
        Store::open_shipping(dir, history, None)
    }

    /// Open (or create) the store in `dir`, replaying whatever the log holds beyond sled (into the
    /// latest records and, if kept, the history), also handing every committed batch to `shipping`.
    pub(crate) fn open_shipping(
        dir: &Path,
        history: HistoryOptions,
        shipping: Option<Arc<dyn Shipping>>,
    ) -> Result<Store, StoreError> {
        // Created here, with their parents synced, not by sled or `create_dir_all`.
        wal::create_dir_durable(&dir.join("sled"))?;
        let db = sled::Config::new()
            .path(dir.join("sled"))
            // The log makes commits durable; sled is flushed by checkpoints only.
            .flush_every_ms(None)
            .cache_capacity(64 * 1024 * 1024)
            .open()?;
        let devices = db.open_tree("devices")?;
        let meta = db.open_tree("meta")?;
        let quarantine = db.open_tree("quarantine")?;
        let quarantined = AtomicU64::new(quarantine.len() as u64);
        let history = History::open(&db, history)?;
        let mut store = Store {
            db,
            devices,
            meta,
            quarantine,
            quarantined,
            wal_dir: Arc::new(WalDir::open(&dir.join("wal"))?),
            first_segment: 0,
            healthy: AtomicBool::new(true),
            history,
            checkpoint_every: CHECKPOINT_INTERVAL,
            shipping,
        };
        store.first_segment = store.replay()?;
        let quarantined = store.quarantined();
        if quarantined > 0 {
            error!(
                records = quarantined,
                "stored records in quarantine (unreadable, kept in the `quarantine` tree of sled)"
            );
        }
        Ok(store)
    }

    /// Checkpoint every `every` (`--checkpoint-seconds`) instead of every 60 s.
    pub(crate) fn checkpoint_every(mut self, every: Duration) -> Store {
        self.checkpoint_every = every;
        self
    }

    /// The sled database (other modules keep their own trees in it).
    pub(crate) fn db(&self) -> &sled::Db {
        &self.db
    }

    /// The history, unless `--history off`.
    pub(crate) fn history(&self) -> Option<&History> {
        self.history.as_ref()
    }

    /// Apply the log segments written since the last checkpoint (a crash left them behind), record
    /// the checkpoint, flush, retire them. Returns the sequence number for the next segment.
    fn replay(&self) -> Result<u64, StoreError> {
        let checkpointed = self.checkpointed()?;
        let segments: Vec<(u64, PathBuf)> = wal::segments(self.wal_dir.path())?
            .into_iter()
            // Segments at or below the checkpoint are in sled already; replaying them could take
            // a device back to an older state.
            .filter(|(seq, _)| checkpointed.is_none_or(|c| *seq > c))
            .collect();
        let Some(&(last, _)) = segments.last() else {
            let next = checkpointed.map_or(0, |c| c + 1);
            if self.shipping.is_none() {
                self.wal_dir.retire_found(next.saturating_sub(1))?;
            }
            return Ok(next);
        };
        // First pass: where abandoned segments really end (recorded in later segments).
        let mut cuts: HashMap<u64, u64> = HashMap::new();
        for (seq, path) in &segments {
            let bytes = std::fs::read(path)?;
            wal::decode(&bytes, *seq, |payload| {
                if let Some(cut) = wal::Cut::of(payload) {
                    let len = cuts.entry(cut.seq).or_insert(cut.len);
                    *len = (*len).min(cut.len);
                }
            });
        }
        let mut records = 0;
        // The latest version of each device seen so far, for the history's changes.
        let mut latest: HashMap<String, Record> = HashMap::new();
        for (seq, path) in &segments {
            let mut changes = Vec::new();
            let bytes = std::fs::read(path)?;
            let end = cuts
                .get(seq)
                .map_or(bytes.len(), |&len| bytes.len().min(len as usize));
            let mut failed = None;
            let mut frame = 0;
            let outcome = wal::decode(&bytes[..end], *seq, |payload| {
                frame += 1;
                if failed.is_some() || wal::Cut::of(payload).is_some() {
                    return;
                }
                let result = match record_key(payload) {
                    Some(key) => {
                        if self.history.is_some() {
                            self.replayed_change(&key, payload, &mut latest, &mut changes);
                        }
                        self.devices.insert(key, payload).map(|_| records += 1)
                    }
                    None => self.quarantine_record(
                        &format!("wal:{seq}:{frame}"),
                        payload,
                        "a log record without a readable serial_number",
                    ),
                };
                if let Err(e) = result {
                    failed = Some(e);
                }
            });
            if let Some(e) = failed {
                return Err(e.into());
            }
            if let Some(history) = &self.history {
                history.raw.absorb(*seq, &changes)?;
            }
            debug!(
                seq,
                frames = outcome.frames,
                rest = outcome.rest,
                cut = end < bytes.len(),
                "replayed log segment"
            );
        }
        self.meta.insert(CHECKPOINT_KEY, &last.to_be_bytes())?;
        self.db.flush()?;
        if self.shipping.is_none() {
            self.wal_dir.retire_found(last)?;
        }
        info!(
            segments = segments.len(),
            records, "replayed the write-ahead log"
        );
        Ok(last + 1)
    }

    /// The history's change for a logged record: what it changed from the device's previous version
    /// (the one seen earlier in the replay, or sled's). Records that do not read are left to
    /// `load`'s quarantine.
    fn replayed_change(
        &self,
        key: &str,
        payload: &[u8],
        latest: &mut HashMap<String, Record>,
        changes: &mut Vec<Change>,
    ) {
        let read = |bytes: &[u8]| {
            std::str::from_utf8(bytes)
                .ok()
                .and_then(|text| Record::from_json(text).ok())
        };
        let Some(next) = read(payload) else {
            return;
        };
        if !latest.contains_key(key)
            && let Ok(Some(stored)) = self.devices.get(key)
            && let Some(prev) = read(&stored)
        {
            latest.insert(key.to_owned(), prev);
        }
        let values = samples::between(latest.get(key), &next);
        if !values.is_empty() {
            changes.push(Change {
                serial: next.serial_number.clone(),
                ts_ms: samples::millis(next.last_status_update),
                values,
            });
        }
        latest.insert(key.to_owned(), next);
    }

    /// Keep an unreadable record in the quarantine tree (under `key`, or `key#2`, … if another
    /// value is there already), log it at ERROR and count it.
    fn quarantine_record(&self, key: &str, value: &[u8], reason: &str) -> Result<(), sled::Error> {
        let mut slot = key.to_owned();
        for n in 2.. {
            match self.quarantine.get(&slot)? {
                Some(old) if old.as_ref() == value => return Ok(()),
                Some(_) => slot = format!("{key}#{n}"),
                None => break,
            }
        }
        self.quarantine.insert(slot.as_str(), value)?;
        self.quarantined.fetch_add(1, Ordering::Relaxed);
        error!(
            key = slot,
            bytes = value.len(),
            reason,
            "unreadable stored record quarantined (kept in sled's `quarantine` tree, not served)"
        );
        Ok(())
    }

    /// Records kept in quarantine.
    pub(crate) fn quarantined(&self) -> u64 {
        self.quarantined.load(Ordering::Relaxed)
    }

    /// The last segment a checkpoint covered.
    fn checkpointed(&self) -> Result<Option<u64>, StoreError> {
        Ok(self
            .meta
            .get(CHECKPOINT_KEY)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_be_bytes))
    }

    /// Hand the history's changes (each with its log segment) to the next checkpoint; the
    /// history's reads see them from now on.
    fn hold(&self, changes: Vec<(u64, Change)>) {
        if let Some(history) = &self.history {
            history.raw.held().hold(changes);
        }
    }

    /// Put the latest `records` and every held history change (all of segments up to `seq`) into
    /// sled, note the checkpoint and flush. Those segments may be retired once this returns `Ok`.
    fn checkpoint(&self, seq: u64, records: &Records) -> Result<(), StoreError> {
        if let Some(history) = &self.history {
            history.raw.absorb_held()?;
            history.save_sizes()?;
        }
        for (serial, json) in records {
            self.devices.insert(serial.as_str(), json.as_bytes())?;
        }
        // Written after the records: sled recovers a prefix of its log, so if this survives a
        // crash, so do they.
        self.meta.insert(CHECKPOINT_KEY, &seq.to_be_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    /// Every stored record. A record that no longer reads is moved to quarantine (logged at ERROR,
    /// counted), so one bad entry can neither keep the fleet from starting nor be lost.
    pub(crate) fn load(&self) -> Result<Vec<Record>, StoreError> {
        let mut records = Vec::with_capacity(self.devices.len());
        let mut moved = 0;
        for entry in &self.devices {
            let (key, value) = entry?;
            let parsed = std::str::from_utf8(&value)
                .map_err(|e| e.to_string())
                .and_then(|text| Record::from_json(text).map_err(|e| e.to_string()));
            let reason = match parsed {
                Ok(record) if record.serial_number.as_str().as_bytes() == key.as_ref() => {
                    records.push(record);
                    continue;
                }
                Ok(record) => format!(
                    "stored under a foreign key (serial {})",
                    record.serial_number
                ),
                Err(reason) => reason,
            };
            let name = String::from_utf8_lossy(&key).into_owned();
            self.quarantine_record(&name, &value, &reason)?;
            self.devices.remove(&key)?;
            moved += 1;
        }
        if moved > 0 {
            self.db.flush()?;
        }
        Ok(records)
    }

    /// Whether the last group commit succeeded.
    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Flush sled: everything inserted so far is in sled's files.
    pub(crate) fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

/// The serial of a stored record's JSON, without parsing all of it.
fn record_key(payload: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Key {
        serial_number: String,
    }
    // Records are JSON objects as written; serde would also take `["serial"]` for `Key`.
    if payload.first() != Some(&b'{') {
        return None;
    }
    serde_json::from_slice::<Key>(payload)
        .ok()
        .map(|k| k.serial_number)
}

/// The result of a group commit: durable, or not stored.
pub(crate) type Ack = Result<(), StoreFailed>;

/// The write was not made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("the store could not make the update durable")]
pub(crate) struct StoreFailed;

/// The storage side of the writer: the log segment being appended, and what the next checkpoint
/// needs. Owned by the writer thread.
pub(crate) struct Log {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    wal: Wal,
    /// The frames of the batch being committed (reused).
    frames: Vec<u8>,
    /// What was written since the last hand-over.
    pending: Pending,
    last_checkpoint: Instant,
    last_hand_over: Instant,
    /// History changes noted since the last checkpoint.
    unchecked: usize,
    checkpoints: Checkpoints,
    /// The last segment a checkpoint covered, while a shipper holds it back from retirement.
    retirable: Option<u64>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("wal", &self.wal)
            .field("dirty", &self.pending.records.len())
            .finish_non_exhaustive()
    }
}

impl Log {
    /// Start the log where [`Store::open_shipping`] left it, and the checkpoint thread.
    pub(crate) fn start(store: Arc<Store>, metrics: Arc<Metrics>) -> Result<Log, StoreError> {
        let store_first = store.first_segment;
        let wal = Wal::start(Arc::clone(&store.wal_dir), store_first)?;
        // The tiers' sizes, loaded when the store opened, are in /metrics from the first request on
        // (the history's thread reports them again after each run, the checkpoints after each one).
        if let Some(history) = &store.history {
            history.report(&metrics);
        }
        let checkpoints = Checkpoints::start(Arc::clone(&store), Arc::clone(&metrics));
        Ok(Log {
            store,
            metrics,
            wal,
            frames: Vec::with_capacity(64 * 1024),
            pending: Pending::default(),
            last_checkpoint: Instant::now(),
            last_hand_over: Instant::now(),
            unchecked: 0,
            checkpoints,
            // Everything before the first segment is in sled (the replay's checkpoint).
            retirable: store_first.checked_sub(1),
        })
    }

    /// Append these records (serial, full record JSON) and make them durable with one write and one
    /// sync. `Ok`: every record is durable and will be checkpointed. `Err`: none of them will ever
    /// be replayed (no torn bytes are left for a later append to follow). A failed write or sync
    /// marks the store unhealthy until a commit succeeds again; a record over the log's frame limit
    /// ([`wal::MAX_PAYLOAD`], which `--max-record-bytes` keeps records far below) fails the batch
    /// without touching the disk.
    pub(crate) fn commit<'a, I>(&mut self, records: I) -> Ack
    where
        I: IntoIterator<Item = (&'a Serial, &'a Arc<str>)>,
        I::IntoIter: Clone,
    {
        let records = records.into_iter();
        let started = Instant::now();
        self.frames.clear();
        if records.clone().next().is_none() {
            return Ok(());
        }
        let seq = match self.wal.begin(&mut self.frames) {
            Ok(seq) => seq,
            Err(e) => return Err(self.failed(&e)),
        };
        let mut writes = 0u64;
        for (serial, json) in records.clone() {
            if let Err(e) = wal::encode(&mut self.frames, seq, json.as_bytes()) {
                error!(%e, %serial, "record refused by the write-ahead log; its batch is answered with ERROR");
                return Err(StoreFailed);
            }
            writes += 1;
        }
        if let Err(e) = self.wal.append_sync(&self.frames) {
            return Err(self.failed(&e));
        }
        if let Some(shipping) = &self.store.shipping {
            shipping.committed(seq, &mut records.clone());
        }
        for (serial, json) in records {
            self.pending
                .records
                .insert(serial.clone(), Arc::clone(json));
        }
        let metrics = &self.metrics;
        Metrics::inc(&metrics.commits);
        metrics
            .committed_writes
            .fetch_add(writes, Ordering::Relaxed);
        metrics
            .commit_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        if !self.store.healthy.swap(true, Ordering::Relaxed) {
            info!("store writable again");
        }
        Ok(())
    }

    /// `--ack cluster`: the writes of a committed batch are answered by the shipper, once Redis has
    /// them ([`Log::answer_when_shipped`]).
    pub(crate) fn acks_wait(&self) -> bool {
        self.store.shipping.as_ref().is_some_and(|s| s.acks_wait())
    }

    /// `--ack cluster` and the shipper cannot reach Redis: new writes are refused before they are
    /// stored.
    pub(crate) fn refuses_writes(&self) -> bool {
        self.store
            .shipping
            .as_ref()
            .is_some_and(|s| s.acks_wait() && s.unreachable())
    }

    /// `--ack cluster`: give these answers once the last committed batch is shipped.
    pub(crate) fn answer_when_shipped(
        &self,
        answers: &mut dyn Iterator<Item = (AckTicket, acks::Ack)>,
    ) {
        match &self.store.shipping {
            Some(shipping) => shipping.answer_when_shipped(answers),
            None => answers.for_each(|(ticket, ack)| ticket.answer(ack)),
        }
    }

    /// Whether the history is kept (`--history`): the writer then notes each write's changes.
    pub(crate) fn keeps_history(&self) -> bool {
        self.store.history.is_some()
    }

    /// The history's change of a write the last [`Log::commit`] made durable: the history's reads
    /// find it from the next hand-over, sled has it from the checkpoint of the segment that holds
    /// the write.
    pub(crate) fn note(&mut self, change: Change) {
        self.metrics
            .history_samples
            .fetch_add(change.values.len() as u64, Ordering::Relaxed);
        self.unchecked += 1;
        self.pending.changes.push((self.wal.seq(), change));
    }

    fn failed(&self, e: &io::Error) -> StoreFailed {
        if self.store.healthy.swap(false, Ordering::Relaxed) {
            error!(%e, "group commit failed; the updates in it are answered with ERROR");
        } else {
            debug!(%e, "group commit failed again");
        }
        StoreFailed
    }

    /// Call after each batch: retire the segments the last checkpoint covered; every second hand
    /// what was written over to the checkpoint thread, and every `--checkpoint-seconds` (sooner
    /// after 64 MiB of log or [`CHECKPOINT_CHANGES`] history changes) start a new segment and have
    /// the finished ones checkpointed with it — unless the thread is still busy with the last one.
    pub(crate) fn maybe_checkpoint(&mut self) {
        // Other instances' changes (`--redis`) join this instance's, tagged with the segment now.
        if let Some(history) = &self.store.history {
            for change in history.remote.take() {
                self.note(change);
            }
        }
        if let Some(done) = self.checkpoints.take_done() {
            self.retirable = Some(done);
        }
        if let Some(done) = self.retirable {
            match self.store.shipping.as_ref().map(|s| s.unshipped_from()) {
                None => {
                    self.wal.retire_through(done);
                    self.retirable = None;
                }
                Some(0) => {}
                Some(from) => self.wal.retire_through(done.min(from - 1)),
            }
        }
        if self.checkpoints.busy() {
            return;
        }
        // History changes count too: other instances' (`--redis`) reach the history here while
        // this instance's own log may stay empty.
        let due = self.wal.len() >= CHECKPOINT_BYTES
            || self.unchecked >= CHECKPOINT_CHANGES
            || ((self.wal.len() > 0 || self.unchecked > 0)
                && self.last_checkpoint.elapsed() >= self.store.checkpoint_every);
        let hand_over =
            self.pending.is_some() && self.last_hand_over.elapsed() >= HAND_OVER_INTERVAL;
        if !due && !hand_over {
            return;
        }
        let mut through = None;
        if due {
            // Tried again at most once an interval if the rotation fails.
            self.last_checkpoint = Instant::now();
            self.unchecked = 0;
            match self.wal.rotate() {
                Ok(finished) => through = Some(finished),
                Err(e) => {
                    error!(%e, "cannot rotate the write-ahead log; the segment keeps growing");
                }
            }
        }
        self.last_hand_over = Instant::now();
        let pending = std::mem::take(&mut self.pending);
        if let Err(older) = self.checkpoints.request(pending, through) {
            // Kept for the next hand-over; what was written since is newer. The finished segments
            // stay until a later checkpoint covers them.
            self.pending.merge_older(older);
        }
    }

    /// On shutdown: everything into sled, and no log left to replay.
    pub(crate) fn finish(self) {
        let Log {
            store,
            wal,
            mut pending,
            checkpoints,
            ..
        } = self;
        for (serial, json) in checkpoints.finish() {
            pending.records.entry(serial).or_insert(json);
        }
        store.hold(std::mem::take(&mut pending.changes));
        let unshipped = store.shipping.as_ref().map_or(u64::MAX, |s| s.finish());
        match store.checkpoint(wal.seq(), &pending.records) {
            Ok(()) if unshipped == u64::MAX => wal.retire_all(),
            Ok(()) => {
                let mut wal = wal;
                if let Some(shipped) = unshipped.checked_sub(1) {
                    wal.retire_through(shipped);
                }
                info!(from = unshipped, "log segments kept until they are shipped");
            }
            Err(e) => error!(%e, "final checkpoint failed; the log is kept for replay"),
        }
    }
}

type Records = HashMap<Serial, Arc<str>>;

/// What the writer hands over to the checkpoint thread: the latest record of every device written
/// since the last hand-over, and the history's changes of those writes (tagged with their log
/// segment, in log order).
#[derive(Debug, Default)]
struct Pending {
    records: Records,
    changes: Vec<(u64, Change)>,
}

impl Pending {
    fn is_some(&self) -> bool {
        !self.records.is_empty() || !self.changes.is_empty()
    }

    /// Add what an earlier, failed checkpoint could not store: its records unless newer ones are
    /// here, its changes before these.
    fn merge_older(&mut self, older: Pending) {
        for (serial, json) in older.records {
            self.records.entry(serial).or_insert(json);
        }
        let newer = std::mem::replace(&mut self.changes, older.changes);
        self.changes.extend(newer);
    }
}

/// A hand-over: what was written since the last one, and the last finished segment if a
/// checkpoint is due (through it).
type HandOver = (Pending, Option<u64>);

/// The checkpoint thread.
struct Checkpoints {
    tx: Option<std_mpsc::SyncSender<HandOver>>,
    busy: Arc<AtomicBool>,
    /// One more than the last segment a checkpoint covered (0: none yet), for retiring.
    done: Arc<AtomicU64>,
    retired: u64,
    thread: Option<thread::JoinHandle<Records>>,
}

impl Checkpoints {
    fn start(store: Arc<Store>, metrics: Arc<Metrics>) -> Checkpoints {
        let (tx, rx) = std_mpsc::sync_channel::<HandOver>(1);
        let busy = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&busy);
        let done = Arc::new(AtomicU64::new(0));
        let covered = Arc::clone(&done);
        let thread = thread::Builder::new()
            .name("smart-store-checkpoint".to_owned())
            .spawn(move || {
                // Behind the sessions, the writer and the cluster's threads when the cores are busy
                // (ahead of the history's maintenance): a checkpoint is seconds of CPU and disk for
                // a big fleet, and at normal priority it held up acks and other instances' changes
                // (BENCHMARKS.md, "Several instances", session 11). A checkpoint that takes longer
                // only makes the next one later; the log keeps everything meanwhile.
                #[cfg(unix)]
                if let Err(e) = rustix::process::nice(CHECKPOINT_NICE) {
                    debug!(%e, "cannot lower the checkpoint thread's priority");
                }
                // The records handed over since the last checkpoint (or held by a failed one: its
                // segments stay until a later checkpoint succeeds, and that one must store them).
                let mut waiting = Records::new();
                let maintenance = store
                    .history
                    .as_ref()
                    .map(|history| Maintenance::start(history.clone(), Arc::clone(&metrics)));
                for (pending, through) in rx {
                    store.hold(pending.changes);
                    // Newer than what waits.
                    waiting.extend(pending.records);
                    if let Some(seq) = through {
                        let started = Instant::now();
                        match store.checkpoint(seq, &waiting) {
                            Ok(()) => {
                                covered.fetch_max(seq + 1, Ordering::AcqRel);
                                let took = started.elapsed();
                                if took >= SLOW_CHECKPOINT {
                                    info!(seq, devices = waiting.len(), ms = took.as_millis(), "slow checkpoint");
                                } else {
                                    debug!(seq, devices = waiting.len(), elapsed = ?took, "checkpoint");
                                }
                                waiting.clear();
                            }
                            Err(e) => error!(%e, seq, "checkpoint failed; the log is kept"),
                        }
                    }
                    if let Some(history) = &store.history {
                        history.report(&metrics);
                    }
                    flag.store(false, Ordering::Release);
                }
                if let Some(maintenance) = maintenance {
                    maintenance.finish();
                }
                waiting
            });
        match thread {
            Ok(thread) => Checkpoints {
                tx: Some(tx),
                busy,
                done,
                retired: 0,
                thread: Some(thread),
            },
            Err(e) => {
                // Without checkpoints the log only grows until the next clean shutdown.
                error!(%e, "cannot start the checkpoint thread");
                Checkpoints {
                    tx: None,
                    busy,
                    done,
                    retired: 0,
                    thread: None,
                }
            }
        }
    }

    /// The last segment a checkpoint covered, once per new checkpoint.
    fn take_done(&mut self) -> Option<u64> {
        let done = self.done.load(Ordering::Acquire);
        if done <= self.retired {
            return None;
        }
        self.retired = done;
        Some(done - 1)
    }

    fn busy(&self) -> bool {
        self.tx.is_none() || self.busy.load(Ordering::Acquire)
    }

    /// Hand `pending` over (and have the segments through `through` checkpointed), or get it back.
    fn request(&self, pending: Pending, through: Option<u64>) -> Result<(), Pending> {
        let Some(tx) = &self.tx else {
            return Err(pending);
        };
        self.busy.store(true, Ordering::Release);
        tx.try_send((pending, through)).map_err(|e| {
            self.busy.store(false, Ordering::Release);
            match e {
                std_mpsc::TrySendError::Full((r, _))
                | std_mpsc::TrySendError::Disconnected((r, _)) => r,
            }
        })
    }

    /// Wait for a running checkpoint and stop the thread; returns the records it has not stored
    /// (the history's changes stay held).
    fn finish(mut self) -> Records {
        drop(self.tx.take());
        match self.thread.take().map(thread::JoinHandle::join) {
            Some(Ok(waiting)) => waiting,
            Some(Err(_)) => {
                error!("checkpoint thread panicked");
                Records::new()
            }
            None => Records::new(),
        }
    }
}

#[cfg(test)]
mod tests;
