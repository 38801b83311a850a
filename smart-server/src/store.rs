//! The durable latest-state table (sled) and its group commit.
//!
//! One writer thread owns every write. Device sessions hand it [`Job`]s over an unbounded channel (the
//! bound is upstream: each connection may only have `--max-in-flight` messages waiting). The writer
//! takes everything that is waiting, inserts it, makes it durable with a single `flush` (one fsync),
//! and only then answers each job, in arrival order. A batch therefore costs one fsync whatever its
//! size: the more devices send at once, the more writes each flush covers.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Instant;

use smart_proto::{Record, Serial};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use crate::hub::{Change, Hub};
use crate::metrics::Metrics;

/// Largest number of jobs one group commit takes: bounds the latency a huge backlog adds to the
/// first job of the next batch.
static COMMITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static TOTAL_NS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static FLUSH_NS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
const MAX_BATCH: usize = 4096;

/// Failures of the store.
#[derive(Debug, Error)]
pub enum StoreError {
    /// sled refused to open, read, write or flush.
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    /// The writer thread is gone (it failed or the server is shutting down).
    #[error("store writer is not running")]
    WriterGone,
}

/// The sled database and its one tree of device records (key: serial, value: the record's JSON).
#[derive(Debug)]
pub(crate) struct Store {
    db: sled::Db,
    devices: sled::Tree,
    healthy: AtomicBool,
}

impl Store {
    /// Open (or create) the database in `dir`.
    pub(crate) fn open(dir: &Path) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            // Durability comes from our own flush per group commit; sled's timer flush would only
            // compete with it for the disk.
            .flush_every_ms(None)
            .cache_capacity(64 * 1024 * 1024)
            .open()?;
        let devices = db.open_tree("devices")?;
        Ok(Store {
            db,
            devices,
            healthy: AtomicBool::new(true),
        })
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

    /// Make everything written so far durable.
    pub(crate) fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn commit(&self, batch: &[Job]) -> Result<usize, StoreError> {
        let t0 = Instant::now();
        let r = self.commit2(batch);
        let n = COMMITS.fetch_add(1, Ordering::Relaxed);
        TOTAL_NS.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        if n % 5000 == 4999 { eprintln!("commits {} total {} us/commit flush {} us/commit", n, TOTAL_NS.load(Ordering::Relaxed)/1000/n, FLUSH_NS.load(Ordering::Relaxed)/1000/n); }
        r
    }
    fn commit2(&self, batch: &[Job]) -> Result<usize, StoreError> {
        let mut writes = 0;
        for job in batch {
            if let Job::Write(write) = job {
                self.devices
                    .insert(write.serial.as_str(), write.json.as_bytes())?;
                writes += 1;
            }
        }
        let t = Instant::now();
        if writes > 0 {
            self.db.flush()?;
        }
        FLUSH_NS.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        Ok(writes)
    }
}

/// The result a device session gets for one write: durable, or not stored.
pub(crate) type Ack = Result<(), StoreFailed>;

/// The write was not made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("the store could not make the update durable")]
pub(crate) struct StoreFailed;

/// One record write waiting for the next group commit.
#[derive(Debug)]
pub(crate) struct Write {
    /// Key.
    pub serial: Serial,
    /// The full record after the update, as stored and served.
    pub json: Arc<str>,
    /// Told once the write is durable (or failed).
    pub ack: oneshot::Sender<Ack>,
    /// What dashboards see once the write is durable (`None` when no dashboard was listening).
    pub change: Option<Arc<Change>>,
}

/// What the writer thread does, in channel order.
#[derive(Debug)]
pub(crate) enum Job {
    /// Store a record.
    Write(Write),
    /// Publish a change that has nothing to store (online/offline), ordered after earlier writes.
    Publish(Arc<Change>),
    /// Finish what is queued, flush and exit.
    Stop,
}

/// Handle to the writer thread.
#[derive(Debug)]
pub(crate) struct Committer {
    tx: mpsc::UnboundedSender<Job>,
    thread: std::sync::Mutex<Option<thread::JoinHandle<()>>>,
}

impl Committer {
    /// Start the writer thread.
    pub(crate) fn start(
        store: Arc<Store>,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
    ) -> Result<Committer, StoreError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let thread = thread::Builder::new()
            .name("smart-store-writer".to_owned())
            .spawn(move || writer(&store, &hub, &metrics, rx))
            .map_err(|e| {
                error!(%e, "cannot start the store writer");
                StoreError::WriterGone
            })?;
        Ok(Committer {
            tx,
            thread: std::sync::Mutex::new(Some(thread)),
        })
    }

    /// Queue a job. Never blocks. Jobs sent after the writer stopped are dropped, which their ack
    /// senders report as a failure to the waiting session.
    pub(crate) fn submit(&self, job: Job) {
        if self.tx.send(job).is_err() {
            debug!("store writer gone; job dropped");
        }
    }

    /// Finish every queued job, flush and wait for the writer thread to exit.
    pub(crate) async fn stop(&self) {
        self.submit(Job::Stop);
        let handle = self
            .thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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

fn writer(store: &Store, hub: &Hub, metrics: &Metrics, mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut batch: Vec<Job> = Vec::with_capacity(256);
    let mut stopping = false;
    while !stopping {
        let Some(first) = rx.blocking_recv() else {
            break;
        };
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }

        let started = Instant::now();
        let result = store.commit(&batch);
        let ack = match result {
            Ok(writes) => {
                if writes > 0 {
                    Metrics::inc(&metrics.flushes);
                    metrics
                        .flushed_writes
                        .fetch_add(writes as u64, Ordering::Relaxed);
                    metrics
                        .flush_micros
                        .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                }
                if !store.healthy.swap(true, Ordering::Relaxed) {
                    info!("store writable again");
                }
                Ok(())
            }
            Err(e) => {
                if store.healthy.swap(false, Ordering::Relaxed) {
                    error!(%e, "group commit failed; the updates in it are answered with ERROR");
                }
                Err(StoreFailed)
            }
        };

        for job in batch.drain(..) {
            match job {
                Job::Write(write) => {
                    if let (Ok(()), Some(change)) = (ack, write.change) {
                        hub.publish(&change);
                    }
                    // The session may be gone (peer closed): the write is durable all the same.
                    let _ = write.ack.send(ack);
                }
                Job::Publish(change) => hub.publish(&change),
                Job::Stop => stopping = true,
            }
        }
    }
    if let Err(e) = store.flush() {
        error!(%e, "final flush failed");
    }
    debug!("store writer stopped");
}
