//! Fan-out of device changes to dashboards.
//!
//! Publishing never waits: each dashboard has a slot (a small mutex-protected [`Pending`] plus a
//! wake-up), and a publish only appends a shared, already serialized change to every slot. A
//! dashboard that does not drain its slot fast enough degrades in two steps instead of growing
//! without bound:
//! 1. past `queue_limit` queued changes its slot switches to *conflation*: one entry per device
//!    holding the latest value of every changed field;
//! 2. past `conflate_limit` devices in conflation the slot is cleared and marked for *resync*: the
//!    dashboard gets a fresh INIT of its view instead of what it missed.
//!
//! Views (FILT) are evaluated by the dashboard session when it drains, not here, so the cost on the
//! ingest path is the same whatever the dashboards ask for.

use std::collections::HashMap;
use std::mem;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use serde_json::{Map, Value};
use smart_proto::{Header, MessageId, Serial, ServerMessage};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::metrics::Metrics;

/// One device change as dashboards see it: an UPDT serialized once and shared by every dashboard.
#[derive(Debug)]
pub(crate) struct Change {
    /// The device.
    pub serial: Serial,
    /// The message id of the device message (`0000` for online/offline).
    pub id: MessageId,
    /// The fields of the UPDT body (kept for conflation).
    pub fields: Map<String, Value>,
    /// The UPDT frame.
    pub frame: Utf8Bytes,
}

impl Change {
    /// An UPDT with `body` for the device of `header`.
    pub(crate) fn new(header: Header, body: Map<String, Value>) -> Change {
        let message = ServerMessage::Updt { header, body };
        let frame = Utf8Bytes::from(message.to_frame());
        let ServerMessage::Updt { header, body } = message else {
            unreachable!("constructed as an UPDT just above")
        };
        Change {
            serial: header.serial,
            id: header.id,
            fields: body,
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
            body,
        )
    }
}

/// Conflated changes of one device: the latest message id and the latest value of each field.
#[derive(Debug)]
pub(crate) struct Conflated {
    pub id: MessageId,
    pub fields: Map<String, Value>,
}

/// What a dashboard has not been sent yet.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    /// Changes in publish order (while within `queue_limit`).
    pub changes: Vec<Arc<Change>>,
    /// Per-device latest values, once the queue overflowed.
    pub conflated: HashMap<Serial, Conflated>,
    /// The dashboard fell too far behind: send a fresh INIT of its view, drop everything else.
    pub resync: bool,
}

/// What a push did to a slot, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pushed {
    Queued,
    StartedConflation,
    Conflated,
    StartedResync,
    Dropped,
}

impl Pending {
    /// Updates owed: queued changes plus conflated devices.
    pub(crate) fn len(&self) -> usize {
        self.changes.len() + self.conflated.len()
    }

    fn push(&mut self, change: &Arc<Change>, limits: Limits) -> Pushed {
        if self.resync {
            return Pushed::Dropped;
        }
        if self.conflated.is_empty() && self.changes.len() < limits.queue {
            self.changes.push(Arc::clone(change));
            return Pushed::Queued;
        }
        let started = !self.changes.is_empty();
        for queued in mem::take(&mut self.changes) {
            self.conflate(&queued);
        }
        self.conflate(change);
        if self.conflated.len() > limits.conflate {
            self.conflated = HashMap::new();
            self.resync = true;
            return Pushed::StartedResync;
        }
        if started {
            Pushed::StartedConflation
        } else {
            Pushed::Conflated
        }
    }

    fn conflate(&mut self, change: &Change) {
        match self.conflated.get_mut(&change.serial) {
            Some(entry) => {
                entry.id = change.id.clone();
                for (k, v) in &change.fields {
                    entry.fields.insert(k.clone(), v.clone());
                }
            }
            None => {
                self.conflated.insert(
                    change.serial.clone(),
                    Conflated {
                        id: change.id.clone(),
                        fields: change.fields.clone(),
                    },
                );
            }
        }
    }
}

/// Per-dashboard bounds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Changes queued before conflation starts.
    pub queue: usize,
    /// Devices in conflation before a resync.
    pub conflate: usize,
}

/// One dashboard's mailbox.
#[derive(Debug)]
pub(crate) struct Slot {
    id: u64,
    pending: Mutex<Pending>,
    notify: Notify,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// All connected dashboards.
#[derive(Debug)]
pub(crate) struct Hub {
    slots: RwLock<Vec<Arc<Slot>>>,
    listeners: AtomicUsize,
    next_id: AtomicU64,
    limits: Limits,
    metrics: Arc<Metrics>,
}

impl Hub {
    pub(crate) fn new(limits: Limits, metrics: Arc<Metrics>) -> Hub {
        Hub {
            slots: RwLock::new(Vec::new()),
            listeners: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            limits,
            metrics,
        }
    }

    /// Whether any dashboard is connected: when none is, device sessions skip building changes.
    pub(crate) fn has_listeners(&self) -> bool {
        self.listeners.load(Ordering::Relaxed) > 0
    }

    /// Hand `changes` (in order) to every dashboard: one lock and at most one wake-up per dashboard
    /// for the whole batch. Never waits on a dashboard.
    pub(crate) fn publish(&self, changes: &[Arc<Change>]) {
        if changes.is_empty() {
            return;
        }
        let slots = self.slots.read().unwrap_or_else(PoisonError::into_inner);
        for slot in slots.iter() {
            let mut wake = false;
            let mut pending = slot.lock();
            for change in changes {
                let pushed = pending.push(change, self.limits);
                match pushed {
                    Pushed::StartedConflation => Metrics::inc(&self.metrics.dashboard_conflated),
                    Pushed::StartedResync => Metrics::inc(&self.metrics.dashboard_resyncs),
                    Pushed::Queued | Pushed::Conflated | Pushed::Dropped => {}
                }
                wake |= pushed != Pushed::Dropped;
            }
            drop(pending);
            if wake {
                slot.notify.notify_one();
            }
        }
    }

    /// Register a dashboard. Changes published from now on reach it until the subscription drops.
    pub(crate) fn subscribe(self: &Arc<Self>) -> Subscription {
        let slot = Arc::new(Slot {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            pending: Mutex::new(Pending::default()),
            notify: Notify::new(),
        });
        self.slots
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::clone(&slot));
        self.listeners.fetch_add(1, Ordering::Relaxed);
        Subscription {
            hub: Arc::clone(self),
            slot,
        }
    }

    /// The most and the total updates owed to dashboards (the lag gauges).
    pub(crate) fn lag(&self) -> (usize, usize) {
        let slots = self.slots.read().unwrap_or_else(PoisonError::into_inner);
        slots
            .iter()
            .map(|slot| slot.lock().len())
            .fold((0, 0), |(max, total), n| (max.max(n), total + n))
    }
}

/// A dashboard's registration with the hub; unregisters on drop.
#[derive(Debug)]
pub(crate) struct Subscription {
    hub: Arc<Hub>,
    slot: Arc<Slot>,
}

impl Subscription {
    /// Resolves when something was published for this dashboard since the last [`Subscription::take`]
    /// (a wake-up is kept if nobody was waiting, so none is lost).
    pub(crate) async fn notified(&self) {
        self.slot.notify.notified().await;
    }

    /// Take everything pending, leaving `spare` (an empty change buffer, kept to reuse its capacity)
    /// in its place.
    pub(crate) fn take(&self, spare: Vec<Arc<Change>>) -> Pending {
        let mut pending = self.slot.lock();
        let changes = mem::replace(&mut pending.changes, spare);
        Pending {
            changes,
            conflated: mem::take(&mut pending.conflated),
            resync: mem::replace(&mut pending.resync, false),
        }
    }

    /// Drop everything pending (a fresh INIT is about to cover it).
    pub(crate) fn clear(&self) {
        let mut pending = self.slot.lock();
        pending.changes.clear();
        pending.conflated = HashMap::new();
        pending.resync = false;
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut slots = self
            .hub
            .slots
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = slots.iter().position(|s| s.id == self.slot.id) {
            slots.swap_remove(i);
            self.hub.listeners.fetch_sub(1, Ordering::Relaxed);
        }
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
        Arc::new(Change::new(header, body))
    }

    const LIMITS: Limits = Limits {
        queue: 2,
        conflate: 2,
    };

    #[test]
    fn queues_until_the_limit_then_conflates_latest_per_device_and_field() {
        let mut p = Pending::default();
        assert_eq!(
            p.push(&change("0001", "0001", "battery", 1), LIMITS),
            Pushed::Queued
        );
        assert_eq!(
            p.push(&change("0001", "0002", "capacity", 5), LIMITS),
            Pushed::Queued
        );
        assert_eq!(
            p.push(&change("0001", "0003", "battery", 3), LIMITS),
            Pushed::StartedConflation
        );
        assert_eq!(
            p.push(&change("0002", "0004", "battery", 7), LIMITS),
            Pushed::Conflated
        );
        assert!(p.changes.is_empty());
        let one = &p.conflated[&Serial::new("0001").unwrap()];
        assert_eq!(one.id.as_str(), "0003");
        assert_eq!(one.fields["battery"], 3);
        assert_eq!(one.fields["capacity"], 5);
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn resyncs_when_too_many_devices_are_owed() {
        let mut p = Pending::default();
        assert_eq!(
            p.push(&change("0001", "0001", "battery", 1), LIMITS),
            Pushed::Queued
        );
        assert_eq!(
            p.push(&change("0001", "0002", "battery", 2), LIMITS),
            Pushed::Queued
        );
        assert_eq!(
            p.push(&change("0002", "0003", "battery", 3), LIMITS),
            Pushed::StartedConflation
        );
        assert_eq!(
            p.push(&change("0003", "0004", "battery", 4), LIMITS),
            Pushed::StartedResync
        );
        assert!(p.resync);
        assert_eq!(p.len(), 0);
        assert_eq!(
            p.push(&change("0005", "0001", "battery", 1), LIMITS),
            Pushed::Dropped
        );
    }

    #[test]
    fn publish_reaches_every_subscriber_and_stops_after_drop() {
        let hub = Arc::new(Hub::new(
            Limits {
                queue: 8,
                conflate: 8,
            },
            Arc::default(),
        ));
        assert!(!hub.has_listeners());
        let a = hub.subscribe();
        let b = hub.subscribe();
        assert!(hub.has_listeners());
        hub.publish(&[
            change("0001", "0001", "battery", 1),
            change("0002", "0001", "battery", 1),
        ]);
        assert_eq!(a.take(Vec::new()).changes.len(), 2);
        drop(b);
        hub.publish(&[change("0001", "0002", "battery", 2)]);
        let got = a.take(Vec::new());
        assert_eq!(got.changes.len(), 1);
        assert_eq!(got.changes[0].id.as_str(), "0002");
        assert_eq!(hub.lag(), (0, 0));
        drop(a);
        assert!(!hub.has_listeners());
    }
}
