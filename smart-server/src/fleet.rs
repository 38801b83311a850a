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

    /// Refresh the JSON text after a change, through `scratch` so that the only allocation is the
    /// shared text itself.
    ///
    /// Through `Record`'s `Serialize` (the same text as `Record::write_json`, checked by
    /// `init_frame_matches_write_init`) into bytes: `write_json` goes through a `String` writer that
    /// re-validates every chunk `serde_json` hands it, measured at about 3 % of the server's CPU at 100
    /// devices; validating the finished text once is a fraction of that.
    fn reserialize(&mut self, scratch: &mut Vec<u8>) {
        scratch.clear();
        if serde_json::to_writer(&mut *scratch, &self.record).is_ok()
            && let Ok(text) = std::str::from_utf8(scratch)
        {
            self.json = Arc::from(text);
        } else {
            // Not expected (a record always serializes to UTF-8); the slow path is still right.
            self.json = Arc::from(self.record.to_json());
        }
    }
}

/// What the fleet lock protects.
#[derive(Debug, Default)]
struct Devices {
    map: BTreeMap<Serial, Device>,
    /// Reused serialization buffer (only touched under the write lock).
    scratch: Vec<u8>,
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
    devices: RwLock<Devices>,
    online: AtomicUsize,
    owner: String,
    registration: Registration,
}

impl Fleet {
    /// A fleet holding `records` (from the store), all offline.
    pub(crate) fn new(owner: String, registration: Registration, records: Vec<Record>) -> Fleet {
        let map = records
            .into_iter()
            .map(|mut record| {
                record.online = false;
                (record.serial_number.clone(), Device::new(record))
            })
            .collect();
        Fleet {
            devices: RwLock::new(Devices {
                map,
                scratch: Vec::new(),
            }),
            online: AtomicUsize::new(0),
            owner,
            registration,
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Devices> {
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
        let mut guard = self.devices.write().unwrap_or_else(PoisonError::into_inner);
        let Devices {
            map: devices,
            scratch,
        } = &mut *guard;
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
        device.reserialize(scratch);
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
        let mut guard = self.devices.write().unwrap_or_else(PoisonError::into_inner);
        let Devices {
            map: devices,
            scratch,
        } = &mut *guard;
        let mut went_offline = false;
        if let Some(device) = devices.get_mut(serial) {
            device.connections = device.connections.saturating_sub(1);
            if device.connections == 0 && device.record.online {
                device.record.online = false;
                device.reserialize(scratch);
                self.online.fetch_sub(1, Ordering::Relaxed);
                went_offline = true;
            }
        }
        then(went_offline)
    }

    /// Number of devices.
    pub(crate) fn len(&self) -> usize {
        self.read().map.len()
    }

    /// Number of devices online.
    pub(crate) fn online(&self) -> usize {
        self.online.load(Ordering::Relaxed)
    }

    /// One device's record as JSON.
    pub(crate) fn device_json(&self, serial: &str) -> Option<Arc<str>> {
        let serial = Serial::new(serial).ok()?;
        self.read().map.get(&serial).map(|d| Arc::clone(&d.json))
    }

    /// Run `f` over the records under one read lock (no awaiting inside).
    pub(crate) fn with_records<T>(&self, f: impl FnOnce(&Records<'_>) -> T) -> T {
        let guard = self.read();
        f(&Records {
            devices: &guard.map,
        })
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use smart_proto::{normalize, parse_body, write_init};

    fn update(body: &str, serial: &Serial) -> Update {
        Update::from_normalized(normalize(parse_body(body).unwrap(), serial).unwrap()).unwrap()
    }

    fn fleet() -> Fleet {
        let fleet = Fleet::new("EET".to_owned(), Registration::Open, Vec::new());
        for (serial, body) in [
            (
                "0003",
                r#"{"battery": 80, "country": "AT", "note": "Grüß \"dich\"\n\u0001 ✓"}"#,
            ),
            (
                "0001",
                r#"{"battery": 20, "country": "DE", "extra": [1, "two"]}"#,
            ),
            (
                "0002",
                r#"{"battery": 55.5, "local_time": "2024-03-17 14:59:13.047108"}"#,
            ),
        ] {
            let serial = Serial::new(serial).unwrap();
            let u = update(body, &serial);
            fleet
                .apply(
                    &serial,
                    &u,
                    Timestamp::from_unix_micros(1_700_000_000_000_000),
                    true,
                    |_| (),
                )
                .unwrap();
        }
        fleet
    }

    /// The INIT assembled from cached record texts is byte for byte what smart-proto writes.
    #[test]
    fn init_frame_matches_write_init() {
        let fleet = fleet();
        let (frame, members) = fleet.init_frame(&Query::default());
        assert!(members.is_none());
        let expected = fleet.with_records(|r| write_init(r.devices.values().map(|d| &d.record)));
        assert_eq!(frame, expected);

        let query = Query::parse(&["filter:battery:>:50", "sort:battery:>:123"]).unwrap();
        let (frame, members) = fleet.init_frame(&query);
        let expected =
            fleet.with_records(|r| write_init(query.apply(r.devices.values().map(|d| &d.record))));
        assert_eq!(frame, expected);
        let mut members: Vec<_> = members
            .unwrap()
            .into_iter()
            .map(|s| s.as_str().to_owned())
            .collect();
        members.sort();
        assert_eq!(members, ["0002", "0003"]);
        let listed: serde_json::Value = serde_json::from_str(&fleet.query_json(&query)).unwrap();
        let framed: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(listed, framed["message"]);
    }

    #[test]
    fn cached_json_follows_every_change() {
        let fleet = fleet();
        let serial = Serial::new("0001").unwrap();
        fleet
            .apply(
                &serial,
                &update(r#"{"battery": 21}"#, &serial),
                Timestamp::from_unix_micros(1),
                false,
                |a| {
                    assert!(!a.created);
                    assert!(!a.came_online);
                    assert_eq!(a.changed["battery"], 21);
                },
            )
            .unwrap();
        let json = fleet.device_json("0001").unwrap();
        let record = Record::from_json(&json).unwrap();
        assert_eq!(record.battery, Some(21.0));
        assert!(record.online);
        assert_eq!(fleet.online(), 3);

        assert!(fleet.detach(&serial, |offline| offline));
        assert!(
            !Record::from_json(&fleet.device_json("0001").unwrap())
                .unwrap()
                .online
        );
        assert_eq!(fleet.online(), 2);
        assert!(!fleet.detach(&serial, |offline| offline), "already offline");
    }

    #[test]
    fn closed_registration_refuses_unknown_serials() {
        let fleet = Fleet::new("EET".to_owned(), Registration::Closed, Vec::new());
        let serial = Serial::new("0001").unwrap();
        let result = fleet.apply(
            &serial,
            &update("{}", &serial),
            Timestamp::from_unix_micros(1),
            true,
            |_| (),
        );
        assert_eq!(result, Err(Unregistered("0001".to_owned())));
        assert_eq!(fleet.len(), 0);
        assert_eq!(fleet.online(), 0);
    }
}
