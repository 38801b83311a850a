//! The in-memory, authoritative state of every device: what INIT, FILT and the HTTP API read.
//!
//! Each device keeps its typed [`Record`] next to that record's JSON text. The text is what the store
//! writes and what snapshots are made of, so an INIT of ten thousand devices is a concatenation
//! under a read lock, not ten thousand serializations.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use serde_json::{Map, Value};
use smart_proto::{Query, Record, Serial, Timestamp, Update};
use thiserror::Error;

use crate::config::Registration;

/// An update for an unknown serial while registration is closed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown device {0} and registration is closed")]
pub(crate) struct Unregistered(pub String);

#[derive(Debug)]
struct Device {
    record: Record,
    json: Arc<str>,
    /// Open connections that have sent a valid message for this serial.
    connections: u32,
}

impl Device {
    fn new(record: Record) -> Device {
        let json = Arc::from(record.to_json());
        Device {
            record,
            json,
            connections: 0,
        }
    }

    fn reserialize(&mut self) {
        self.json = Arc::from(self.record.to_json());
    }
}

/// The outcome of one applied update, handed to the caller while the fleet is still locked so that
/// whatever it queues (store write, dashboard change) is queued in the order updates were applied.
#[derive(Debug)]
pub(crate) struct Applied<'a> {
    /// The record after the update.
    pub record: &'a Record,
    /// Its JSON text (shared with the store).
    pub json: Arc<str>,
    /// Changed fields plus `last_status_update`: the body of the UPDT to dashboards.
    pub changed: Map<String, Value>,
    /// The device did not exist before this update.
    pub created: bool,
    /// The device went from offline to online with this update.
    pub came_online: bool,
}

/// All devices, by serial.
#[derive(Debug)]
pub(crate) struct Fleet {
    devices: RwLock<BTreeMap<Serial, Device>>,
    online: AtomicUsize,
    owner: String,
    registration: Registration,
}

impl Fleet {
    /// A fleet holding `records` (from the store), all offline.
    pub(crate) fn new(owner: String, registration: Registration, records: Vec<Record>) -> Fleet {
        let devices = records
            .into_iter()
            .map(|mut record| {
                record.online = false;
                (record.serial_number.clone(), Device::new(record))
            })
            .collect();
        Fleet {
            devices: RwLock::new(devices),
            online: AtomicUsize::new(0),
            owner,
            registration,
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<Serial, Device>> {
        // A panic while holding the lock leaves records that are each still whole (apply works on
        // one record at a time), so the data stays usable.
        self.devices.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Apply `update` to `serial` (registering it if allowed) and run `then` on the outcome under the
    /// lock. `attach` marks the first valid message of a connection for this serial: it counts the
    /// connection and brings the device online.
    pub(crate) fn apply<T>(
        &self,
        serial: &Serial,
        update: &Update,
        now: Timestamp,
        attach: bool,
        then: impl FnOnce(Applied<'_>) -> T,
    ) -> Result<T, Unregistered> {
        let mut devices = self.devices.write().unwrap_or_else(PoisonError::into_inner);
        let created = !devices.contains_key(serial);
        if created {
            if self.registration == Registration::Closed {
                return Err(Unregistered(serial.as_str().to_owned()));
            }
            let record = Record::new(serial.clone(), self.owner.as_str(), now);
            devices.insert(
                serial.clone(),
                Device {
                    json: Arc::from(""),
                    record,
                    connections: 0,
                },
            );
        }
        let Some(device) = devices.get_mut(serial) else {
            // Inserted just above when missing; the lock is held throughout.
            return Err(Unregistered(serial.as_str().to_owned()));
        };
        let changed = device.record.apply(update, now);
        let mut came_online = false;
        if attach {
            device.connections += 1;
            if !device.record.online {
                device.record.online = true;
                came_online = true;
                self.online.fetch_add(1, Ordering::Relaxed);
            }
        }
        device.reserialize();
        Ok(then(Applied {
            record: &device.record,
            json: Arc::clone(&device.json),
            changed,
            created,
            came_online,
        }))
    }

    /// A connection that had sent for `serial` closed. `then` gets whether the device just went
    /// offline (it was the last such connection), under the lock.
    pub(crate) fn detach<T>(&self, serial: &Serial, then: impl FnOnce(bool) -> T) -> T {
        let mut devices = self.devices.write().unwrap_or_else(PoisonError::into_inner);
        let mut went_offline = false;
        if let Some(device) = devices.get_mut(serial) {
            device.connections = device.connections.saturating_sub(1);
            if device.connections == 0 && device.record.online {
                device.record.online = false;
                device.reserialize();
                self.online.fetch_sub(1, Ordering::Relaxed);
                went_offline = true;
            }
        }
        then(went_offline)
    }

    /// Number of devices.
    pub(crate) fn len(&self) -> usize {
        self.read().len()
    }

    /// Number of devices online.
    pub(crate) fn online(&self) -> usize {
        self.online.load(Ordering::Relaxed)
    }

    /// One device's record as JSON.
    pub(crate) fn device_json(&self, serial: &str) -> Option<Arc<str>> {
        let serial = Serial::new(serial).ok()?;
        self.read().get(&serial).map(|d| Arc::clone(&d.json))
    }

    /// Run `f` over the records under one read lock (no awaiting inside).
    pub(crate) fn with_records<T>(&self, f: impl FnOnce(&Records<'_>) -> T) -> T {
        let guard = self.read();
        f(&Records { devices: &guard })
    }

    /// The JSON array of the records `query` selects, in its order.
    pub(crate) fn query_json(&self, query: &Query) -> String {
        let mut out = String::new();
        self.with_records(|records| records.write_array(query, &mut out, None));
        out
    }

    /// The INIT frame for `query`, and the serials it holds when the query filters (the dashboard's
    /// view membership).
    pub(crate) fn init_frame(
        &self,
        query: &Query,
    ) -> (String, Option<std::collections::HashSet<Serial>>) {
        let mut out = String::from(r#"{"type":"INIT","message":"#);
        let mut members = (!query.filters.is_empty()).then(std::collections::HashSet::new);
        self.with_records(|records| records.write_array(query, &mut out, members.as_mut()));
        out.push('}');
        (out, members)
    }
}

/// The records under a read lock.
#[derive(Debug)]
pub(crate) struct Records<'a> {
    devices: &'a BTreeMap<Serial, Device>,
}

impl Records<'_> {
    /// One record.
    pub(crate) fn get(&self, serial: &Serial) -> Option<&Record> {
        self.devices.get(serial).map(|d| &d.record)
    }

    fn write_array(
        &self,
        query: &Query,
        out: &mut String,
        mut members: Option<&mut std::collections::HashSet<Serial>>,
    ) {
        let mut selected: Vec<&Device> = if query.filters.is_empty() {
            self.devices.values().collect()
        } else {
            self.devices
                .values()
                .filter(|d| query.matches(&d.record))
                .collect()
        };
        if !query.sorts.is_empty() {
            // Stable over serial-ascending input, and `compare` ends ties on the serial anyway.
            selected.sort_by(|a, b| query.compare(&a.record, &b.record));
        }
        out.reserve(selected.iter().map(|d| d.json.len() + 1).sum::<usize>() + 2);
        out.push('[');
        for (i, device) in selected.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&device.json);
            if let Some(members) = members.as_deref_mut() {
                members.insert(device.record.serial_number.clone());
            }
        }
        out.push(']');
    }
}
