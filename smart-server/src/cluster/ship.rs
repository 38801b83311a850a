//! Shipping: every batch the writer commits goes to Redis, asynchronously, in one round trip.
//!
//! The writer hands each committed batch over ([`Shipper::committed`], the store's [`Shipping`]
//! hook): the records go into a backlog that keeps the latest record of each device, with the oldest
//! log segment they came from. The shipping thread takes the whole backlog, sends it as one pipeline
//! of script calls (chunks of [`CHUNK`] devices), and forgets it once Redis answered; if Redis is
//! away, what it took goes back under anything newer and it tries again, backing off. With `--ack
//! local` a round trip starts at most every `--redis-ship-interval` (20 ms by default): a device that
//! writes faster ships its latest record per interval, so Redis and the followers pay per device and
//! interval, not per write. Until then the
//! log keeps the segments the backlog came from ([`Shipping::unshipped_from`]), and at start the
//! segments a previous run kept are read back into the backlog first ([`crate::cluster::leftovers`]),
//! so nothing acked is lost while Redis is away, even across a crash.
//!
//! With `--ack cluster` the writer does not answer a committed batch's writes itself: it parks their
//! acks here ([`Shipping::answer_when_shipped`]), tagged with the batch's number, and the shipping
//! thread answers them, in order, once a round trip that carried that batch (or a later one) has
//! succeeded. While Redis is away they wait (what they wrote is durable here and ships on its
//! return); new writes are refused before they are stored (see `ingest`).

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use smart_proto::Serial;
use tracing::{debug, info, warn};

use super::scripts::{self, CHUNK};
use super::{FIRST_BACKOFF, Link, MAX_BACKOFF, SLOW, leftovers};
use crate::acks::{Ack, AckTicket};
use crate::metrics::Metrics;
use crate::store::Shipping;

/// How long a graceful shutdown waits for the backlog to ship.
const FINISH_WAIT: Duration = Duration::from_secs(3);

/// Records not shipped yet: the latest of each device, and where they came from.
#[derive(Debug, Default)]
struct Backlog {
    records: HashMap<Serial, Arc<str>>,
    /// The oldest log segment a record of `records` came from.
    from: Option<u64>,
    /// Taken by the shipping thread, not answered yet: the oldest segment it came from, and how
    /// many records.
    in_flight: Option<(u64, usize)>,
    /// Before the log segments a previous run kept are read back: nothing may be retired.
    starting: bool,
    /// Batches handed over so far (the number of the last one).
    batches: u64,
    /// Taken by the shipping thread: the number of the last batch in it.
    in_flight_batches: u64,
    /// Every batch up to this one is in Redis.
    shipped_batches: u64,
    /// `--ack cluster`: answers waiting for their batch to ship, in the writer's order (each batch's
    /// number is at most the next one's, and above `shipped_batches`).
    waiting: VecDeque<(u64, AckTicket, Ack)>,
    /// A graceful shutdown is waiting.
    finishing: bool,
}

impl Backlog {
    fn unshipped_from(&self) -> u64 {
        if self.starting {
            return 0;
        }
        let queued = self.from.filter(|_| !self.records.is_empty());
        let flying = self.in_flight.map(|(from, _)| from);
        queued.into_iter().chain(flying).min().unwrap_or(u64::MAX)
    }

    /// Put back what a failed round trip took: under the newer records that came meanwhile.
    fn restore(&mut self, taken: HashMap<Serial, Arc<str>>, from: u64) {
        for (serial, json) in taken {
            self.records.entry(serial).or_insert(json);
        }
        self.from = Some(self.from.map_or(from, |f| f.min(from)));
    }

    /// Take the whole backlog for a round trip.
    fn take(&mut self) -> (HashMap<Serial, Arc<str>>, u64) {
        let taken = std::mem::take(&mut self.records);
        let from = self.from.take().unwrap_or(0);
        self.in_flight = Some((from, taken.len()));
        self.in_flight_batches = self.batches;
        (taken, from)
    }

    /// The round trip of what was taken succeeded: the answers its batches waited for, in order.
    fn shipped(&mut self) -> Vec<(AckTicket, Ack)> {
        self.in_flight = None;
        self.shipped_batches = self.shipped_batches.max(self.in_flight_batches);
        let ready = self
            .waiting
            .iter()
            .take_while(|(batch, _, _)| *batch <= self.shipped_batches)
            .count();
        self.waiting
            .drain(..ready)
            .map(|(_, ticket, ack)| (ticket, ack))
            .collect()
    }
}

/// The shipping side of the cluster: the backlog, shared by the writer and the shipping thread.
#[derive(Debug)]
pub(crate) struct Shipper {
    backlog: Mutex<Backlog>,
    /// Signalled when the backlog gets its first record, or a shutdown waits.
    wake: Condvar,
    /// Whether the last round trip succeeded (`/healthz`).
    pub(crate) up: AtomicBool,
    /// The last attempt to reach Redis failed (unlike `!up`, not true before the first attempt).
    unreachable: AtomicBool,
    /// `--ack cluster`: a write is answered once Redis has it.
    acks_wait: bool,
    /// `--ack local`: the shortest time from one round trip's start to the next one's
    /// (`--redis-ship-interval`); what comes meanwhile is conflated in the backlog.
    interval: Duration,
}

impl Shipper {
    pub(crate) fn new(acks_wait: bool, interval: Duration) -> Shipper {
        Shipper {
            acks_wait,
            // An answer waits for its round trip: never hold one back.
            interval: if acks_wait { Duration::ZERO } else { interval },
            backlog: Mutex::new(Backlog {
                starting: true,
                ..Backlog::default()
            }),
            wake: Condvar::new(),
            up: AtomicBool::new(false),
            unreachable: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Backlog> {
        self.backlog.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records waiting to be shipped (queued and in flight).
    pub(crate) fn backlog(&self) -> usize {
        let backlog = self.lock();
        backlog.records.len() + backlog.in_flight.map_or(0, |(_, n)| n)
    }

    /// `--ack cluster`: writes whose answer waits for Redis.
    pub(crate) fn acks_waiting(&self) -> usize {
        self.lock().waiting.len()
    }

    /// The shipping thread: read back what the log kept, then ship until the process ends.
    pub(crate) fn run(&self, link: &Link, kept: &[(u64, PathBuf)], metrics: &Metrics) {
        let found = leftovers::read(kept);
        {
            let mut backlog = self.lock();
            if let Some(first) = kept.first().map(|(seq, _)| *seq) {
                info!(
                    segments = kept.len(),
                    devices = found.len(),
                    "shipping what the kept log segments hold"
                );
                backlog.restore(found, first);
            }
            backlog.starting = false;
        }
        let mut conn: Option<redis::Connection> = None;
        let mut backoff = FIRST_BACKOFF;
        // Whether Redis being away was logged since the start (later: when `up` turns false).
        let mut reported = false;
        // When the next round trip may start (`--redis-ship-interval`).
        let mut due = Instant::now();
        loop {
            let next = {
                let mut backlog = self.lock();
                if backlog.records.is_empty() {
                    if backlog.finishing {
                        self.wake.notify_all();
                    }
                    backlog = self
                        .wake
                        .wait_timeout(backlog, Duration::from_secs(1))
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                // Let more come (conflated per device) until the interval since the last round
                // trip is over; a shutdown does not wait.
                backlog = self
                    .wake
                    .wait_timeout_while(
                        backlog,
                        due.saturating_duration_since(Instant::now()),
                        |b| !b.records.is_empty() && !b.finishing,
                    )
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                (!backlog.records.is_empty()).then(|| backlog.take())
            };
            let Some((taken, from)) = next else {
                // Nothing to ship: keep a connection, so that `/healthz` tells whether Redis answers.
                if conn.is_none() {
                    match link.connect() {
                        Ok(c) => {
                            conn = Some(c);
                            self.unreachable.store(false, Ordering::Relaxed);
                            if !self.up.swap(true, Ordering::Relaxed) {
                                info!(redis = %link.redacted, "connected to Redis for shipping");
                            }
                        }
                        Err(e) => {
                            self.unreachable.store(true, Ordering::Relaxed);
                            if self.up.swap(false, Ordering::Relaxed) || !reported {
                                reported = true;
                                warn!(%e, redis = %link.redacted, "cannot reach Redis; devices are still acked, the log keeps what is not shipped");
                            }
                        }
                    }
                }
                continue;
            };
            let started = Instant::now();
            due = started + self.interval;
            let result = match conn.as_mut() {
                Some(c) => ship(c, link, &taken),
                None => link.connect().and_then(|mut c| {
                    let shipped = ship(&mut c, link, &taken);
                    conn = Some(c);
                    shipped
                }),
            };
            let mut backlog = self.lock();
            match result {
                Ok(accepted) => {
                    self.unreachable.store(false, Ordering::Relaxed);
                    // Answered outside the lock (each wakes a device session).
                    let answers = backlog.shipped();
                    let finishing = backlog.finishing && backlog.records.is_empty();
                    drop(backlog);
                    for (ticket, ack) in answers {
                        ticket.answer(ack);
                    }
                    Metrics::inc(&metrics.cluster_shipped_batches);
                    metrics
                        .cluster_shipped_records
                        .fetch_add(taken.len() as u64, Ordering::Relaxed);
                    if !self.up.swap(true, Ordering::Relaxed) {
                        info!(redis = %link.redacted, "shipping to Redis");
                    }
                    let took = started.elapsed();
                    if took >= SLOW {
                        info!(
                            ms = took.as_millis(),
                            records = taken.len(),
                            "slow round trip to Redis (shipping)"
                        );
                    }
                    debug!(records = taken.len(), accepted, "shipped");
                    backoff = FIRST_BACKOFF;
                    if finishing {
                        self.wake.notify_all();
                    }
                }
                Err(e) => {
                    backlog.in_flight = None;
                    Metrics::inc(&metrics.cluster_ship_errors);
                    conn = None;
                    self.unreachable.store(true, Ordering::Relaxed);
                    backlog.restore(taken, from);
                    if self.up.swap(false, Ordering::Relaxed) || !reported {
                        reported = true;
                        warn!(%e, redis = %link.redacted, "cannot ship to Redis; devices are still acked, the log keeps what is not shipped");
                    } else {
                        debug!(%e, "shipping failed again");
                    }
                    let finishing = backlog.finishing;
                    drop(backlog);
                    if finishing {
                        self.wake.notify_all();
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// One round trip: the records as a pipeline of script calls. Returns how many Redis accepted
/// (the others were older than what it has, or equal: shipped before).
fn ship(
    conn: &mut redis::Connection,
    link: &Link,
    records: &HashMap<Serial, Arc<str>>,
) -> redis::RedisResult<u64> {
    let versioned: Vec<(&Serial, String, &Arc<str>)> = records
        .iter()
        .filter_map(|(serial, json)| {
            let version = scripts::version(json, &link.instance);
            if version.is_none() {
                warn!(%serial, "record without a readable last_status_update; not shipped");
            }
            version.map(|v| (serial, v, json))
        })
        .collect();
    if versioned.is_empty() {
        return Ok(0);
    }
    let mut pipe = redis::pipe();
    for chunk in versioned.chunks(CHUNK) {
        let mut call = link.script.prepare_invoke();
        call.key(scripts::DEVICES)
            .key(scripts::VERSIONS)
            .key(scripts::STREAM)
            .arg(&*link.instance)
            .arg(link.stream_max_len);
        for (serial, version, json) in chunk {
            call.arg(serial.as_str()).arg(version).arg(json.as_bytes());
        }
        pipe.invoke_script(&call);
    }
    let accepted: Vec<u64> = pipe.query(conn)?;
    Ok(accepted.iter().sum())
}

impl Shipping for Shipper {
    fn committed(&self, seq: u64, records: &mut dyn Iterator<Item = (&Serial, &Arc<str>)>) {
        let mut backlog = self.lock();
        backlog.batches += 1;
        let was_empty = backlog.records.is_empty();
        for (serial, json) in records {
            backlog.records.insert(serial.clone(), Arc::clone(json));
        }
        if backlog.from.is_none() {
            backlog.from = Some(seq);
        }
        if was_empty {
            self.wake.notify_all();
        }
    }

    fn unshipped_from(&self) -> u64 {
        self.lock().unshipped_from()
    }

    fn acks_wait(&self) -> bool {
        self.acks_wait
    }

    fn unreachable(&self) -> bool {
        self.unreachable.load(Ordering::Relaxed)
    }

    fn answer_when_shipped(&self, answers: &mut dyn Iterator<Item = (AckTicket, Ack)>) {
        let mut backlog = self.lock();
        let batch = backlog.batches;
        if batch <= backlog.shipped_batches {
            // Shipped already (or nothing committed yet): nothing older waits either.
            drop(backlog);
            for (ticket, ack) in answers {
                ticket.answer(ack);
            }
            return;
        }
        backlog
            .waiting
            .extend(answers.map(|(ticket, ack)| (batch, ticket, ack)));
    }

    fn finish(&self) -> u64 {
        let mut backlog = self.lock();
        backlog.finishing = true;
        self.wake.notify_all();
        let (backlog, waited) = self
            .wake
            .wait_timeout_while(backlog, FINISH_WAIT, |b| b.unshipped_from() != u64::MAX)
            .unwrap_or_else(PoisonError::into_inner);
        if waited.timed_out() {
            warn!(
                records = backlog.records.len(),
                "Redis did not take the backlog before shutdown; the log keeps it for the next start"
            );
        }
        backlog.unshipped_from()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn serial(s: &str) -> Serial {
        Serial::new(s).unwrap()
    }

    #[test]
    fn nothing_is_retired_before_the_kept_segments_are_read_back() {
        let shipper = Shipper::new(false, Duration::ZERO);
        assert_eq!(shipper.unshipped_from(), 0);
        shipper.lock().starting = false;
        assert_eq!(shipper.unshipped_from(), u64::MAX);
    }

    #[test]
    fn the_backlog_holds_back_its_oldest_segment_and_keeps_newer_records_on_failure() {
        let shipper = Shipper::new(false, Duration::ZERO);
        shipper.lock().starting = false;
        let (a, b) = (serial("0001"), serial("0002"));
        let old: Arc<str> = Arc::from("old");
        shipper.committed(7, &mut [(&a, &old), (&b, &old)].into_iter());
        let new: Arc<str> = Arc::from("new");
        shipper.committed(9, &mut [(&a, &new)].into_iter());
        assert_eq!(shipper.unshipped_from(), 7);
        assert_eq!(shipper.backlog(), 2);
        // Taken by a round trip: still unshipped.
        let (taken, from) = shipper.lock().take();
        assert_eq!(from, 7);
        assert_eq!(shipper.unshipped_from(), 7);
        let newer: Arc<str> = Arc::from("newer");
        shipper.committed(10, &mut [(&a, &newer)].into_iter());
        assert_eq!(shipper.unshipped_from(), 7);
        // The round trip failed: what it took goes back under the newer record.
        {
            let mut backlog = shipper.lock();
            backlog.in_flight = None;
            backlog.restore(taken, 7);
        }
        assert_eq!(shipper.unshipped_from(), 7);
        let backlog = shipper.lock();
        assert_eq!(&*backlog.records[&a], "newer");
        assert_eq!(&*backlog.records[&b], "old");
    }

    /// `--ack cluster`: a batch's answers wait until a round trip that carried it succeeded, go out
    /// in the writer's order, survive a failed round trip, and an answer for a batch shipped already
    /// goes out at once.
    #[test]
    fn answers_wait_for_the_round_trip_that_carries_their_batch() {
        use crate::acks::{AckQueue, Refusal};
        let shipper = Shipper::new(true, Duration::ZERO);
        shipper.lock().starting = false;
        let queue = Arc::new(AckQueue::default());
        let ticket = |n| AckTicket::new(Arc::clone(&queue), n);
        let (a, b) = (serial("0001"), serial("0002"));
        let json: Arc<str> = Arc::from("{}");

        shipper.committed(1, &mut [(&a, &json)].into_iter());
        shipper.answer_when_shipped(&mut [(ticket(1), Ok(()))].into_iter());
        assert_eq!((queue.answered(), shipper.acks_waiting()), (0, 1));
        // A round trip takes batch 1; batch 2 comes meanwhile, with a refusal behind its write.
        let (taken, from) = shipper.lock().take();
        shipper.committed(2, &mut [(&b, &json)].into_iter());
        shipper.answer_when_shipped(
            &mut [(ticket(2), Ok(())), (ticket(3), Err(Refusal::ClusterDown))].into_iter(),
        );
        // It fails: nothing is answered; what it took goes back.
        shipper.lock().restore(taken, from);
        shipper.lock().in_flight = None;
        assert_eq!((queue.answered(), shipper.acks_waiting()), (0, 3));
        // The next round trip carries both batches: every answer, in order.
        let _ = shipper.lock().take();
        let answers = shipper.lock().shipped();
        assert_eq!(answers.len(), 3);
        for (ticket, ack) in answers {
            ticket.answer(ack);
        }
        assert_eq!(queue.answered(), 3);
        assert_eq!(queue.result(2), Ok(()));
        assert_eq!(queue.result(3), Err(Refusal::ClusterDown));
        // Batch 2 is shipped: a later answer of it goes out at once.
        shipper.answer_when_shipped(&mut [(ticket(4), Ok(()))].into_iter());
        assert_eq!((queue.answered(), shipper.acks_waiting()), (4, 0));

        // A batch committed while a round trip is in flight waits for the next one.
        let _ = shipper.lock().take();
        shipper.committed(3, &mut [(&a, &json)].into_iter());
        shipper.answer_when_shipped(&mut [(ticket(5), Ok(()))].into_iter());
        assert!(shipper.lock().shipped().is_empty());
        let _ = shipper.lock().take();
        assert_eq!(shipper.lock().shipped().len(), 1);
    }
}
