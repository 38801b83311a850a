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
//! had), records how far it got, flushes, and retires the segments it covered. A restart replays at
//! most the segments written since.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::thread;
use std::time::{Duration, Instant};

use smart_proto::{Record, Serial};
use thiserror::Error;
use tracing::{debug, error, info, warn};

use crate::metrics::Metrics;
use crate::wal::{self, Wal};

/// How often sled is flushed and the log truncated.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// A log segment this large is checkpointed without waiting for the interval.
const CHECKPOINT_BYTES: u64 = 64 * 1024 * 1024;
/// Key in the `meta` tree: the last log segment whose records are in sled.
const CHECKPOINT_KEY: &str = "checkpoint";

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
}

/// The sled database, its one tree of device records, and the log directory.
#[derive(Debug)]
pub(crate) struct Store {
    db: sled::Db,
    devices: sled::Tree,
    /// `checkpoint`: the last log segment whose records are in `devices`.
    meta: sled::Tree,
    wal_dir: PathBuf,
    /// Where the log continues after [`Store::open`].
    first_segment: u64,
    healthy: AtomicBool,
}

impl Store {
    /// Open (or create) the store in `dir`, replaying whatever the log holds beyond sled.
    pub(crate) fn open(dir: &Path) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(dir.join("sled"))
            // The log makes commits durable; sled is flushed by checkpoints only.
            .flush_every_ms(None)
            .cache_capacity(64 * 1024 * 1024)
            .open()?;
        let devices = db.open_tree("devices")?;
        let meta = db.open_tree("meta")?;
        let mut store = Store {
            db,
            devices,
            meta,
            wal_dir: dir.join("wal"),
            first_segment: 0,
            healthy: AtomicBool::new(true),
        };
        std::fs::create_dir_all(&store.wal_dir)?;
        store.first_segment = store.replay()?;
        Ok(store)
    }

    /// Apply the log segments written since the last checkpoint (a crash left them behind), record
    /// the checkpoint, flush, retire them. Returns the sequence number for the next segment.
    fn replay(&self) -> Result<u64, StoreError> {
        let checkpointed = self.checkpointed()?;
        let segments = wal::segments(&self.wal_dir)?;
        let Some(&(last, _)) = segments.last() else {
            return Ok(checkpointed.map_or(0, |c| c + 1));
        };
        let mut records = 0;
        let mut replayed = 0;
        for (seq, path) in &segments {
            // Segments at or below the checkpoint are in sled already; replaying them could take
            // a device back to an older state.
            if checkpointed.is_some_and(|c| *seq <= c) {
                continue;
            }
            let bytes = std::fs::read(path)?;
            let mut failed = None;
            let outcome = wal::decode(&bytes, *seq, |payload| {
                if failed.is_some() {
                    return;
                }
                let Some(key) = record_key(payload) else {
                    warn!(seq, "skipping an unreadable record in the write-ahead log");
                    return;
                };
                match self.devices.insert(key, payload) {
                    Ok(_) => records += 1,
                    Err(e) => failed = Some(e),
                }
            });
            if let Some(e) = failed {
                return Err(e.into());
            }
            replayed += 1;
            debug!(
                seq,
                frames = outcome.frames,
                rest = outcome.rest,
                "replayed log segment"
            );
        }
        self.meta.insert(CHECKPOINT_KEY, &last.to_be_bytes())?;
        self.db.flush()?;
        wal::retire_through(&self.wal_dir, last)?;
        if replayed > 0 {
            info!(segments = replayed, records, "replayed the write-ahead log");
        }
        Ok(last + 1)
    }

    /// The last segment a checkpoint covered.
    fn checkpointed(&self) -> Result<Option<u64>, StoreError> {
        Ok(self
            .meta
            .get(CHECKPOINT_KEY)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_be_bytes))
    }

    /// Put the latest `records` of segments up to `seq` into sled, note the checkpoint, flush, and
    /// retire those segments.
    fn checkpoint(&self, seq: u64, records: &HashMap<Serial, Arc<str>>) -> Result<(), StoreError> {
        for (serial, json) in records {
            self.devices.insert(serial.as_str(), json.as_bytes())?;
        }
        // Written after the records: sled recovers a prefix of its log, so if this survives a
        // crash, so do they.
        self.meta.insert(CHECKPOINT_KEY, &seq.to_be_bytes())?;
        self.db.flush()?;
        wal::retire_through(&self.wal_dir, seq)?;
        Ok(())
    }

    /// Every stored record. A record that no longer parses is logged and skipped, so one bad entry
    /// cannot keep the whole fleet from starting.
    pub(crate) fn load(&self) -> Result<Vec<Record>, StoreError> {
        let mut records = Vec::with_capacity(self.devices.len());
        for entry in &self.devices {
            let (key, value) = entry?;
            let key = String::from_utf8_lossy(&key).into_owned();
            let parsed = std::str::from_utf8(&value)
                .map_err(|e| e.to_string())
                .and_then(|text| Record::from_json(text).map_err(|e| e.to_string()));
            match parsed {
                Ok(record) if record.serial_number.as_str() == key => records.push(record),
                Ok(record) => {
                    warn!(key, serial = %record.serial_number, "skipping stored record under a foreign key");
                }
                Err(reason) => warn!(key, reason, "skipping unreadable stored record"),
            }
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
    serde_json::from_slice::<Key>(payload)
        .ok()
        .map(|k| k.serial_number)
}

/// The group commit failed: nothing of it will ever be replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("the store could not make the update durable")]
pub(crate) struct StoreFailed;

/// The storage side of the writer thread: the log segment being appended, and the latest record of
/// every device written since the last checkpoint. Owned by the writer thread ([`crate::ingest`]).
pub(crate) struct Log {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    wal: Wal,
    /// The frames of the batch being committed (reused).
    frames: Vec<u8>,
    /// Latest record of every device written since the last checkpoint.
    dirty: HashMap<Serial, Arc<str>>,
    last_checkpoint: Instant,
    checkpoints: Checkpoints,
}

impl Log {
    /// Continue the log where [`Store::open`] left it, and start the checkpoint thread.
    pub(crate) fn start(store: Arc<Store>, metrics: Arc<Metrics>) -> Result<Log, StoreError> {
        let log = Wal::create(&store.wal_dir, store.first_segment)?;
        let checkpoints = Checkpoints::start(Arc::clone(&store));
        Ok(Log {
            store,
            metrics,
            wal: log,
            frames: Vec::with_capacity(64 * 1024),
            dirty: HashMap::new(),
            last_checkpoint: Instant::now(),
            checkpoints,
        })
    }

    /// Append `records` and make them durable with one append and one sync. `Ok`: every record is
    /// durable and will be checkpointed. `Err`: the store is marked unhealthy and none of them counts.
    pub(crate) fn commit(&mut self, records: &[(Serial, Arc<str>)]) -> Result<(), StoreFailed> {
        if records.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        self.frames.clear();
        let seq = self.wal.seq();
        for (_, json) in records {
            wal::encode(&mut self.frames, seq, json.as_bytes());
        }
        let metrics = &self.metrics;
        match self.wal.append_sync(&self.frames) {
            Ok(()) => {
                Metrics::inc(&metrics.flushes);
                metrics
                    .flushed_writes
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
                metrics
                    .flush_micros
                    .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                if !self.store.healthy.swap(true, Ordering::Relaxed) {
                    info!("store writable again");
                }
                for (serial, json) in records {
                    self.dirty.insert(serial.clone(), Arc::clone(json));
                }
                Ok(())
            }
            Err(e) => {
                if self.store.healthy.swap(false, Ordering::Relaxed) {
                    error!(%e, "group commit failed; the updates in it are answered with ERROR");
                }
                // What the failed sync left in the segment is uncertain: continue in a fresh one.
                if let Err(e) = self.wal.rotate() {
                    error!(%e, "cannot start a new log segment");
                }
                Err(StoreFailed)
            }
        }
    }

    /// Every second (or 64 MiB of log), start a new segment and hand what the finished ones hold to
    /// the checkpoint thread, unless it is still busy with the previous one.
    pub(crate) fn maybe_checkpoint(&mut self) {
        let due = self.wal.len() >= CHECKPOINT_BYTES
            || (self.wal.len() > 0 && self.last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL);
        if !due || self.checkpoints.busy() {
            return;
        }
        match self.wal.rotate() {
            Ok(finished) => {
                self.last_checkpoint = Instant::now();
                if let Err(records) = self
                    .checkpoints
                    .request(finished, std::mem::take(&mut self.dirty))
                {
                    // Keep them for the next checkpoint; what was written since is newer.
                    for (serial, json) in records {
                        self.dirty.entry(serial).or_insert(json);
                    }
                }
            }
            Err(e) => error!(%e, "cannot rotate the write-ahead log"),
        }
    }

    /// On shutdown: everything into sled, and no log left to replay.
    pub(crate) fn finish(self) {
        let Log {
            store,
            wal: log,
            mut dirty,
            checkpoints,
            ..
        } = self;
        for (serial, json) in checkpoints.finish() {
            dirty.entry(serial).or_insert(json);
        }
        if let Err(e) = store.checkpoint(log.seq(), &dirty) {
            error!(%e, "final checkpoint failed; the log is kept for replay");
        }
    }
}

type Records = HashMap<Serial, Arc<str>>;

/// The checkpoint thread.
struct Checkpoints {
    tx: Option<std_mpsc::SyncSender<(u64, Records)>>,
    busy: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<Records>>,
}

impl Checkpoints {
    fn start(store: Arc<Store>) -> Checkpoints {
        let (tx, rx) = std_mpsc::sync_channel::<(u64, Records)>(1);
        let busy = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&busy);
        let thread = thread::Builder::new()
            .name("smart-store-checkpoint".to_owned())
            .spawn(move || {
                // Records of a failed checkpoint: their segments stay until a later checkpoint
                // succeeds, and that one must carry them into sled.
                let mut carried = Records::new();
                for (seq, mut records) in rx {
                    for (serial, json) in carried.drain() {
                        records.entry(serial).or_insert(json);
                    }
                    let started = Instant::now();
                    match store.checkpoint(seq, &records) {
                        Ok(()) => debug!(seq, devices = records.len(), elapsed = ?started.elapsed(), "checkpoint"),
                        Err(e) => {
                            error!(%e, seq, "checkpoint failed; the log is kept");
                            carried = records;
                        }
                    }
                    flag.store(false, Ordering::Release);
                }
                carried
            });
        match thread {
            Ok(thread) => Checkpoints {
                tx: Some(tx),
                busy,
                thread: Some(thread),
            },
            Err(e) => {
                // Without checkpoints the log only grows until the next clean shutdown.
                error!(%e, "cannot start the checkpoint thread");
                Checkpoints {
                    tx: None,
                    busy,
                    thread: None,
                }
            }
        }
    }

    fn busy(&self) -> bool {
        self.tx.is_none() || self.busy.load(Ordering::Acquire)
    }

    /// Hand `records` (everything of the segments up to `seq`) over, or get them back.
    fn request(&self, seq: u64, records: Records) -> Result<(), Records> {
        let Some(tx) = &self.tx else {
            return Err(records);
        };
        self.busy.store(true, Ordering::Release);
        tx.try_send((seq, records)).map_err(|e| {
            self.busy.store(false, Ordering::Release);
            match e {
                std_mpsc::TrySendError::Full((_, r))
                | std_mpsc::TrySendError::Disconnected((_, r)) => r,
            }
        })
    }

    /// Wait for a running checkpoint and stop the thread; returns records it could not store.
    fn finish(mut self) -> Records {
        drop(self.tx.take());
        match self.thread.take().map(thread::JoinHandle::join) {
            Some(Ok(carried)) => carried,
            Some(Err(_)) => {
                error!("checkpoint thread panicked");
                Records::new()
            }
            None => Records::new(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn record_json(serial: &str, battery: u32) -> String {
        let mut record = Record::new(
            Serial::new(serial).unwrap(),
            "EET",
            smart_proto::Timestamp::from_unix_micros(0),
        );
        record.battery = Some(f64::from(battery));
        record.to_json()
    }

    fn frames(seq: u64, records: &[String]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in records {
            wal::encode(&mut out, seq, r.as_bytes());
        }
        out
    }

    fn batteries(store: &Store) -> Vec<(String, Option<f64>)> {
        store
            .load()
            .unwrap()
            .iter()
            .map(|r| (r.serial_number.as_str().to_owned(), r.battery))
            .collect()
    }

    /// A crash leaves log segments behind: opening the store replays them into sled, later records
    /// over earlier ones, a torn tail ignored, and retires them.
    #[test]
    fn open_replays_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        let mut log = Wal::create(&wal_dir, 3).unwrap();
        log.append_sync(&frames(
            3,
            &[record_json("0001", 10), record_json("0002", 20)],
        ))
        .unwrap();
        log.rotate().unwrap();
        let mut torn = frames(4, &[record_json("0001", 11), record_json("0003", 30)]);
        torn.truncate(torn.len() - 5); // 0003 was never acked
        log.append_sync(&torn).unwrap();
        drop(log);

        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            batteries(&store),
            [
                ("0001".to_owned(), Some(11.0)),
                ("0002".to_owned(), Some(20.0))
            ]
        );
        assert!(wal::segments(&wal_dir).unwrap().is_empty());
        assert_eq!(store.first_segment, 5);
        drop(store);

        // It is in sled now: a second open finds the same without any log.
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(batteries(&store).len(), 2);
        assert_eq!(store.first_segment, 5);
    }

    /// Segments a checkpoint covered are never replayed, even if their files survived: replaying
    /// them would take devices back to older states.
    #[test]
    fn checkpointed_segments_are_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        let store = Store::open(dir.path()).unwrap();
        let mut records = Records::new();
        records.insert(
            Serial::new("0001").unwrap(),
            Arc::from(record_json("0001", 50)),
        );
        store.checkpoint(2, &records).unwrap();
        drop(store);

        let mut log = Wal::create(&wal_dir, 2).unwrap();
        log.append_sync(&frames(2, &[record_json("0001", 10)]))
            .unwrap(); // older than sled
        log.rotate().unwrap();
        log.append_sync(&frames(3, &[record_json("0002", 20)]))
            .unwrap();
        drop(log);

        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            batteries(&store),
            [
                ("0001".to_owned(), Some(50.0)),
                ("0002".to_owned(), Some(20.0))
            ]
        );
        assert_eq!(store.first_segment, 4);
    }

    #[test]
    fn record_key_reads_the_serial() {
        assert_eq!(
            record_key(record_json("X-1", 1).as_bytes()).as_deref(),
            Some("X-1")
        );
        assert_eq!(record_key(b"{\"battery\": 1}"), None);
        assert_eq!(record_key(b"not json"), None);
    }
}
