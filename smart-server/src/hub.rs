//! Fan-out of device changes to dashboards.
//!
//! The ingest writer thread publishes each committed batch once, whatever the number of dashboards,
//! through the [`Sink`] the hub implements: [`Hub::publish`] appends the batch's changes (already
//! serialized, shared by every dashboard) to one
//! sequence-numbered ring of recent changes, notes per device the sequence number of its latest
//! change, and bumps the head sequence number in a [`watch`] channel, which wakes only the dashboards
//! that are waiting for it. A dashboard stuck writing to its socket is not touched at all.
//!
//! Every dashboard keeps a cursor (the next sequence number it wants) and does its own work in its
//! own task: it copies changes from the ring, filters them by its view and frames them. One that fell
//! behind the ring degrades in two bounded steps:
//! 1. *conflation*: it is sent, once per device changed since its cursor, the device's current record
//!    (read from the fleet when it is sent) — O(1) work per change, nothing stored per dashboard;
//! 2. *resync*: if more than `conflate_limit` devices changed since its cursor, it gets a fresh INIT of
//!    its view instead.
//!
//! [`Hub::resync_all`] makes every dashboard subscribed at that moment resync once (the cluster's
//! follower, after reloading the latest records from Redis): it bumps an epoch that each
//! subscription compares with the one it last took an INIT at — one atomic load per take, no lock.
//!
//! Views (FILT) are evaluated by the dashboard session, not here, so the cost on the ingest path is
//! the same whatever the dashboards ask for.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde_json::{Map, Value};
use smart_proto::{Header, MessageId, Serial};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::ingest::{Committed, Sink};
use crate::metrics::Metrics;

/// One device change as dashboards see it: an UPDT serialized once and shared by every dashboard.
#[derive(Debug)]
pub(crate) struct Change {
    /// The device.
    pub serial: Serial,
    /// The message id of the device message (`0000` for online/offline).
    pub id: MessageId,
    /// The UPDT frame.
    pub frame: Utf8Bytes,
}

impl Change {
    /// An UPDT with `body` for the device of `header`.
    pub(crate) fn new(header: Header, body: &Map<String, Value>) -> Change {
        let frame = Utf8Bytes::from(smart_proto::frame::updt(&header, body));
        Change {
            serial: header.serial,
            id: header.id,
            frame,
        }
    }

    /// `0000:SERIAL:{"online": …}`.
    pub(crate) fn online(serial: Serial, online: bool) -> Change {
        let mut body = Map::new();
        body.insert("online".to_owned(), Value::Bool(online));
        Change::new(
            Header {
                id: MessageId::zero(),
                serial,
            },
            &body,
        )
    }
}

/// Bounds of the fan-out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Recent changes kept in the shared ring; a dashboard further behind is conflated.
    pub queue: usize,
    /// Devices a conflating dashboard may owe before it is resynchronised with a fresh INIT.
    pub conflate: usize,
}

/// The latest change of one device: what a conflated UPDT needs besides the current record.
#[derive(Debug, Clone)]
pub(crate) struct Latest {
    pub serial: Serial,
    pub id: MessageId,
}

/// What the hub's lock protects.
#[derive(Debug, Default)]
struct Log {
    /// Recent changes, oldest first: `ring[i]` has sequence number `first + i`.
    ring: VecDeque<Arc<Change>>,
    /// Sequence number of `ring[0]`.
    first: u64,
    /// Sequence number the next change gets.
    head: u64,
    /// Per device, the sequence number of its latest change …
    latest: HashMap<Serial, u64>,
    /// … and the same by sequence number: the devices changed since any cursor, in order.
    by_seq: BTreeMap<u64, Latest>,
    /// Dashboards subscribed.
    subscribers: usize,
}

impl Log {
    fn push(&mut self, change: &Arc<Change>, ring_limit: usize) {
        let seq = self.head;
        self.head += 1;
        self.ring.push_back(Arc::clone(change));
        if self.ring.len() > ring_limit {
            self.ring.pop_front();
            self.first += 1;
        }
        match self.latest.get_mut(&change.serial) {
            Some(previous) => {
                self.by_seq.remove(previous);
                *previous = seq;
            }
            None => {
                self.latest.insert(change.serial.clone(), seq);
            }
        }
        self.by_seq.insert(
            seq,
            Latest {
                serial: change.serial.clone(),
                id: change.id.clone(),
            },
        );
    }

    /// Forget everything (the last dashboard left): nothing is kept while nobody listens.
    fn clear(&mut self) {
        self.ring = VecDeque::new();
        self.latest = HashMap::new();
        self.by_seq = BTreeMap::new();
        self.first = self.head;
    }
}

/// All connected dashboards.
#[derive(Debug)]
pub(crate) struct Hub {
    log: Mutex<Log>,
    head: watch::Sender<u64>,
    /// Cursors of the subscribed dashboards, for the lag gauges (not on the publish path).
    cursors: Mutex<HashMap<u64, Arc<AtomicU64>>>,
    listeners: AtomicUsize,
    /// Dashboards admitted (see [`Hub::admit`]).
    admitted: AtomicUsize,
    /// Bumped by [`Hub::resync_all`]: a subscription that took its INIT at an older epoch owes a
    /// resync.
    epoch: AtomicU64,
    /// `--redis`: since when (ms since the Unix epoch) other instances' devices may be out of date
    /// here (this instance cannot read the change stream), `None` while they are current.
    remote_stale: watch::Sender<Option<u64>>,
    next_id: AtomicU64,
    limits: Limits,
    metrics: Arc<Metrics>,
}

impl Hub {
    pub(crate) fn new(limits: Limits, metrics: Arc<Metrics>) -> Hub {
        Hub {
            log: Mutex::new(Log::default()),
            head: watch::Sender::new(0),
            cursors: Mutex::new(HashMap::new()),
            listeners: AtomicUsize::new(0),
            admitted: AtomicUsize::new(0),
            epoch: AtomicU64::new(0),
            remote_stale: watch::Sender::new(None),
            next_id: AtomicU64::new(0),
            limits: Limits {
                queue: limits.queue.max(1),
                conflate: limits.conflate.max(1),
            },
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Log> {
        // The log is consistent after every statement that a panic could interrupt.
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether any dashboard is connected: when none is, the writer builds no changes.
    pub(crate) fn has_listeners(&self) -> bool {
        self.listeners.load(Ordering::Relaxed) > 0
    }

    /// Hand `changes` (in order) to every dashboard. O(batch) whatever the number of dashboards:
    /// one append to the shared ring per change and one wake-up of the dashboards that wait. Never
    /// waits on a dashboard.
    pub(crate) fn publish(&self, changes: &[Arc<Change>]) {
        if changes.is_empty() {
            return;
        }
        let head = {
            let mut log = self.lock();
            if log.subscribers == 0 {
                return;
            }
            for change in changes {
                log.push(change, self.limits.queue);
            }
            log.head
        };
        self.head.send_replace(head);
    }

    /// Make every dashboard subscribed now resync once: each is owed [`Owed::Resync`] (a fresh
    /// INIT of its view, read from the fleet when it is sent) at its next take, and those waiting
    /// are woken. Call once the fleet holds what the INITs must show. O(1), whatever the number of
    /// dashboards.
    pub(crate) fn resync_all(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        // Wakes the waiting dashboards (the head is unchanged; `ready` checks the epoch too).
        self.head.send_modify(|_| {});
    }

    /// The cluster's follower: whether other instances' devices may be out of date here (it cannot
    /// read the change stream). Dashboards that asked are told of each change ([`Hub::remote_stale`]).
    pub(crate) fn set_remote_stale(&self, stale: bool) {
        self.remote_stale
            .send_if_modified(|since| match (stale, *since) {
                (true, None) => {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                    *since = Some(now);
                    true
                }
                (false, Some(_)) => {
                    *since = None;
                    true
                }
                _ => false,
            });
    }

    /// Since when other instances' devices may be out of date here (`None`: current), watched.
    pub(crate) fn remote_stale(&self) -> watch::Receiver<Option<u64>> {
        self.remote_stale.subscribe()
    }

    /// Count a dashboard connection against `max`; `None` when `max` are already connected.
    pub(crate) fn admit(self: &Arc<Self>, max: usize) -> Option<Admission> {
        self.admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Admission {
                hub: Arc::clone(self),
            })
    }

    /// Register a dashboard. Changes published from now on reach it until the subscription drops.
    pub(crate) fn subscribe(self: &Arc<Self>) -> Subscription {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Before the cursor: the INIT the dashboard is about to take covers this epoch.
        let epoch = self.epoch.load(Ordering::Acquire);
        let cursor = {
            let mut log = self.lock();
            log.subscribers += 1;
            log.head
        };
        let shared_cursor = Arc::new(AtomicU64::new(cursor));
        self.cursors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, Arc::clone(&shared_cursor));
        self.listeners.fetch_add(1, Ordering::Relaxed);
        Subscription {
            hub: Arc::clone(self),
            id,
            cursor,
            shared_cursor,
            epoch,
            conflated: None,
            head: self.head.subscribe(),
        }
    }

    /// The most and the total changes published that dashboards have not taken yet (the lag
    /// gauges).
    pub(crate) fn lag(&self) -> (usize, usize) {
        let head = self.lock().head;
        let cursors = self.cursors.lock().unwrap_or_else(PoisonError::into_inner);
        cursors
            .values()
            .map(|c| head.saturating_sub(c.load(Ordering::Relaxed)) as usize)
            .fold((0, 0), |(max, total), n| (max.max(n), total + n))
    }
}

/// The hub is where the writer hands each committed batch (wired in at start-up, see
/// [`crate::state`]): each change is framed once here, then [`Hub::publish`]ed.
impl Sink for Hub {
    fn listening(&self) -> bool {
        self.has_listeners()
    }

    fn publish_committed(&self, changes: &mut Vec<Committed>) {
        if changes.is_empty() {
            return;
        }
        let changes: Vec<Arc<Change>> = changes
            .drain(..)
            .map(|committed| {
                Arc::new(match committed {
                    Committed::Updt { header, body } => Change::new(header, &body),
                    Committed::Online { serial, online } => Change::online(serial, online),
                })
            })
            .collect();
        self.publish(&changes);
    }
}

/// A counted dashboard connection (`--max-dashboards`); released on drop.
#[derive(Debug)]
pub(crate) struct Admission {
    hub: Arc<Hub>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.hub.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a dashboard is owed next (see [`Subscription::take`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Owed {
    /// Nothing yet.
    Nothing,
    /// The next changes, in publish order (appended to the caller's buffer).
    Changes,
    /// Devices changed since the cursor whose changes left the ring: send each one's current
    /// record (appended to the caller's buffer).
    Conflated,
    /// Too many devices to conflate, or [`Hub::resync_all`] was called: send a fresh INIT of the
    /// view (then call [`Subscription::resync`]).
    Resync,
}

/// A dashboard's registration with the hub; unregisters on drop.
#[derive(Debug)]
pub(crate) struct Subscription {
    hub: Arc<Hub>,
    id: u64,
    /// The next sequence number this dashboard wants.
    cursor: u64,
    /// `cursor`, for the lag gauges.
    shared_cursor: Arc<AtomicU64>,
    /// The hub's epoch when this dashboard last took an INIT (see [`Hub::resync_all`]).
    epoch: u64,
    /// While conflating: devices sent so far in this episode.
    conflated: Option<usize>,
    head: watch::Receiver<u64>,
}

impl Subscription {
    /// Resolves once something was published past this dashboard's cursor (at once if that is
    /// already so).
    pub(crate) async fn ready(&mut self) {
        let (cursor, epoch) = (self.cursor, self.epoch);
        let hub = &self.hub;
        let owed = |&head: &u64| head > cursor || hub.epoch.load(Ordering::Acquire) != epoch;
        if self.head.wait_for(owed).await.is_err() {
            // The hub is gone: the server is shutting down; nothing will come.
            std::future::pending::<()>().await;
        }
    }

    /// Whether something was published past this dashboard's cursor (or a resync is owed).
    pub(crate) fn behind(&self) -> bool {
        *self.head.borrow() > self.cursor || self.resync_owed()
    }

    /// Whether [`Hub::resync_all`] was called since this dashboard last took an INIT.
    fn resync_owed(&self) -> bool {
        self.hub.epoch.load(Ordering::Acquire) != self.epoch
    }

    /// Take what this dashboard is owed next, at most `max_changes` changes of at most about
    /// `max_bytes` of frames, or `max_devices` conflated devices. Holds the hub's lock for O(what it
    /// takes) (plus, once per conflation episode, O(`--dashboard-conflate`) to count the devices).
    pub(crate) fn take(
        &mut self,
        changes: &mut Vec<Arc<Change>>,
        conflated: &mut Vec<Latest>,
        budget: Budget,
    ) -> Owed {
        let limits = self.hub.limits;
        if self.resync_owed() {
            Metrics::inc(&self.hub.metrics.dashboard_resyncs);
            return Owed::Resync;
        }
        let log = self.hub.lock();
        if self.cursor >= log.head {
            self.conflated = None;
            return Owed::Nothing;
        }
        if self.conflated.is_none() && self.cursor >= log.first {
            let start = (self.cursor - log.first) as usize;
            let (mut bytes, mut taken) = (0, 0);
            for change in log.ring.range(start..).take(budget.changes.max(1)) {
                if bytes >= budget.bytes {
                    break;
                }
                bytes += change.frame.len();
                taken += 1;
                changes.push(Arc::clone(change));
            }
            drop(log);
            self.advance(self.cursor + taken);
            return Owed::Changes;
        }
        let mut sent = if let Some(sent) = self.conflated {
            sent
        } else {
            // A new episode: resync at once if it would be too long.
            let owed = log.by_seq.range(self.cursor..).take(limits.conflate + 1);
            if owed.count() > limits.conflate {
                Metrics::inc(&self.hub.metrics.dashboard_resyncs);
                return Owed::Resync;
            }
            Metrics::inc(&self.hub.metrics.dashboard_conflated);
            0
        };
        let mut next = self.cursor;
        for (&seq, latest) in log.by_seq.range(self.cursor..).take(budget.devices.max(1)) {
            conflated.push(latest.clone());
            sent += 1;
            next = seq + 1;
        }
        if sent > limits.conflate {
            // Devices kept changing while it conflated.
            conflated.clear();
            Metrics::inc(&self.hub.metrics.dashboard_resyncs);
            return Owed::Resync;
        }
        let caught_up = next >= log.head;
        drop(log);
        // Whatever the ring still holds from `next` on reaches the dashboard one by one again.
        self.conflated = (!caught_up).then_some(sent);
        self.advance(next);
        Owed::Conflated
    }

    /// Skip to the head: a fresh INIT of the view is about to cover everything published so far.
    /// Call *before* taking the INIT snapshot (a change racing with it is then sent twice, never lost).
    pub(crate) fn resync(&mut self) {
        self.epoch = self.hub.epoch.load(Ordering::Acquire);
        let head = self.hub.lock().head;
        self.conflated = None;
        self.advance(head);
    }

    fn advance(&mut self, cursor: u64) {
        self.cursor = cursor;
        self.shared_cursor.store(cursor, Ordering::Relaxed);
    }
}

/// How much one [`Subscription::take`] may take.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    pub changes: usize,
    pub bytes: usize,
    pub devices: usize,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub
            .cursors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
        let mut log = self.hub.lock();
        log.subscribers = log.subscribers.saturating_sub(1);
        if log.subscribers == 0 {
            log.clear();
        }
        drop(log);
        self.hub.listeners.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn change(serial: &str, id: &str, field: &str, value: i64) -> Arc<Change> {
        let mut body = Map::new();
        body.insert(field.to_owned(), Value::from(value));
        let header = Header {
            id: MessageId::new(id).unwrap(),
            serial: Serial::new(serial).unwrap(),
        };
        Arc::new(Change::new(header, &body))
    }

    const BUDGET: Budget = Budget {
        changes: 100,
        bytes: 1 << 20,
        devices: 100,
    };

    fn hub(queue: usize, conflate: usize) -> Arc<Hub> {
        Arc::new(Hub::new(Limits { queue, conflate }, Arc::default()))
    }

    fn take(s: &mut Subscription, budget: Budget) -> (Owed, Vec<String>) {
        let (mut changes, mut conflated) = (Vec::new(), Vec::new());
        let owed = s.take(&mut changes, &mut conflated, budget);
        let ids = changes
            .iter()
            .map(|c| format!("{}:{}", c.serial.as_str(), c.id.as_str()))
            .chain(
                conflated
                    .iter()
                    .map(|l| format!("{}:{}", l.serial.as_str(), l.id.as_str())),
            )
            .collect();
        (owed, ids)
    }

    #[test]
    fn publish_reaches_every_subscriber_in_order_and_stops_after_drop() {
        let hub = hub(8, 8);
        assert!(!hub.has_listeners());
        let mut a = hub.subscribe();
        let b = hub.subscribe();
        assert!(hub.has_listeners());
        hub.publish(&[
            change("0001", "0001", "battery", 1),
            change("0002", "0001", "battery", 1),
        ]);
        assert_eq!(hub.lag(), (2, 4));
        assert_eq!(
            take(&mut a, BUDGET),
            (Owed::Changes, vec!["0001:0001".into(), "0002:0001".into()])
        );
        drop(b);
        hub.publish(&[change("0001", "0002", "battery", 2)]);
        assert_eq!(
            take(&mut a, BUDGET),
            (Owed::Changes, vec!["0001:0002".into()])
        );
        assert_eq!(take(&mut a, BUDGET), (Owed::Nothing, vec![]));
        assert_eq!(hub.lag(), (0, 0));
        drop(a);
        assert!(!hub.has_listeners());
        // Nobody listens: nothing is kept.
        hub.publish(&[change("0001", "0003", "battery", 3)]);
        assert!(hub.lock().ring.is_empty());
        assert!(hub.lock().by_seq.is_empty());
    }

    #[test]
    fn takes_are_bounded_by_count_and_bytes() {
        let hub = hub(100, 100);
        let mut a = hub.subscribe();
        let batch: Vec<_> = (0..10)
            .map(|i| change("0001", &format!("{i:04}"), "battery", i))
            .collect();
        hub.publish(&batch);
        let few = Budget {
            changes: 3,
            ..BUDGET
        };
        assert_eq!(take(&mut a, few).1.len(), 3);
        let one_frame = Budget { bytes: 1, ..BUDGET };
        assert_eq!(take(&mut a, one_frame).1, ["0001:0003"]);
        assert_eq!(take(&mut a, BUDGET).1.len(), 6);
    }

    #[test]
    fn a_dashboard_behind_the_ring_gets_each_changed_device_once_then_the_ring_again() {
        let hub = hub(2, 4);
        let mut a = hub.subscribe();
        hub.publish(&[
            change("0001", "0001", "battery", 1),
            change("0002", "0001", "battery", 1),
            change("0001", "0002", "battery", 2),
            change("0003", "0001", "battery", 1),
            change("0001", "0003", "battery", 3),
        ]);
        // The ring holds the last two; five were published: 0002, 0003 and 0001 are owed once each,
        // in the order of their latest change, with that change's id.
        let two = Budget {
            devices: 2,
            ..BUDGET
        };
        assert_eq!(
            take(&mut a, two),
            (
                Owed::Conflated,
                vec!["0002:0001".into(), "0003:0001".into()]
            )
        );
        hub.publish(&[change("0002", "0002", "battery", 2)]);
        assert_eq!(
            take(&mut a, two),
            (
                Owed::Conflated,
                vec!["0001:0003".into(), "0002:0002".into()]
            )
        );
        assert_eq!(take(&mut a, BUDGET), (Owed::Nothing, vec![]));
        hub.publish(&[change("0003", "0002", "battery", 2)]);
        assert_eq!(
            take(&mut a, BUDGET),
            (Owed::Changes, vec!["0003:0002".into()])
        );
        assert_eq!(hub.metrics.dashboard_conflated.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn too_many_devices_behind_means_a_resync_from_the_head() {
        let hub = hub(2, 2);
        let mut a = hub.subscribe();
        hub.publish(&[
            change("0001", "0001", "battery", 1),
            change("0002", "0001", "battery", 1),
            change("0003", "0001", "battery", 1),
        ]);
        assert_eq!(take(&mut a, BUDGET), (Owed::Resync, vec![]));
        a.resync();
        assert_eq!(take(&mut a, BUDGET), (Owed::Nothing, vec![]));
        hub.publish(&[change("0004", "0001", "battery", 1)]);
        assert_eq!(
            take(&mut a, BUDGET),
            (Owed::Changes, vec!["0004:0001".into()])
        );
        assert_eq!(hub.metrics.dashboard_resyncs.load(Ordering::Relaxed), 1);
    }

    /// `resync_all`: every dashboard subscribed at that moment owes exactly one resync, whatever it
    /// was doing (caught up, with changes waiting, conflating), and a waiting one is woken; one
    /// subscribed later owes none.
    #[tokio::test]
    async fn resync_all_makes_every_current_dashboard_resync_once() {
        let hub = hub(2, 8);
        let (mut idle, mut pending, mut conflating) =
            (hub.subscribe(), hub.subscribe(), hub.subscribe());
        hub.publish(&[change("0001", "0001", "battery", 1)]);
        assert_eq!(take(&mut idle, BUDGET).0, Owed::Changes);
        hub.publish(&[
            change("0002", "0001", "battery", 1),
            change("0003", "0001", "battery", 1),
        ]);
        let one = Budget {
            devices: 1,
            ..BUDGET
        };
        assert_eq!(take(&mut conflating, one).0, Owed::Conflated);
        assert_eq!(take(&mut idle, BUDGET).0, Owed::Changes);
        assert!(!idle.behind());

        // A caught-up dashboard waiting for changes is woken, though nothing was published.
        let waiting = tokio::spawn(async move {
            idle.ready().await;
            idle
        });
        tokio::task::yield_now().await;
        hub.resync_all();
        let mut idle = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("a waiting dashboard is woken by resync_all")
            .unwrap();
        let later = hub.subscribe();
        for s in [&mut idle, &mut pending, &mut conflating] {
            assert!(s.behind());
            assert_eq!(take(s, BUDGET), (Owed::Resync, vec![]));
            s.resync();
            assert!(!s.behind());
            assert_eq!(take(s, BUDGET), (Owed::Nothing, vec![]));
        }
        let mut later = later;
        assert!(!later.behind());
        assert_eq!(take(&mut later, BUDGET), (Owed::Nothing, vec![]));
        assert_eq!(hub.metrics.dashboard_resyncs.load(Ordering::Relaxed), 3);

        // Once resynced, changes flow again as before.
        hub.publish(&[change("0004", "0001", "battery", 1)]);
        for s in [&mut idle, &mut pending, &mut conflating, &mut later] {
            assert_eq!(take(s, BUDGET), (Owed::Changes, vec!["0004:0001".into()]));
        }
    }

    /// Publishing does the same work and keeps the same state however many dashboards never take
    /// anything.
    #[test]
    fn publish_state_does_not_grow_with_stalled_dashboards() {
        let hub = hub(16, 16);
        let stalled: Vec<_> = (0..1000).map(|_| hub.subscribe()).collect();
        for i in 0..100 {
            hub.publish(&[change(&format!("{:04}", i % 5), "0001", "battery", i)]);
        }
        let log = hub.lock();
        assert_eq!(log.ring.len(), 16);
        assert_eq!(log.latest.len(), 5);
        assert_eq!(log.by_seq.len(), 5);
        drop(log);
        assert_eq!(hub.lag(), (100, 100_000));
        drop(stalled);
    }

    #[test]
    fn admission_is_capped_and_released() {
        let hub = hub(4, 4);
        let one = hub.admit(2).unwrap();
        let two = hub.admit(2).unwrap();
        assert!(hub.admit(2).is_none());
        drop(one);
        assert!(hub.admit(2).is_some());
        drop(two);
    }
}
