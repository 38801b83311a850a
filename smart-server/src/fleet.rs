//! The in-memory state of every device as committed: what INIT, FILT and the HTTP API read.
//!
//! Only the writer thread ([`crate::ingest`]) changes records, and only after the group commit that
//! makes them durable succeeded: an update the store refused is never visible here (PROTOCOL.md §5).
//! Each device keeps its typed [`Record`] next to that record's JSON text, both shared (`Arc`). The
//! text is what the store wrote and what snapshots are made of, so an INIT of ten thousand devices is
//! a concatenation, not ten thousand serializations. Queries take a snapshot of the `Arc`s under the
//! read lock and evaluate it outside, so a costly query never holds up the writer.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use smart_proto::{Query, Record, Serial};
use thiserror::Error;

use crate::config::Registration;

/// An update for an unknown serial while registration is closed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown device {0} and registration is closed")]
pub(crate) struct Unregistered(pub String);

/// Which devices a reader may see: every one, or only one owner's (a user with `--scope-owner`).
/// Every way of reading the fleet takes one: INIT, UPDT, FILT results, `/api/devices`. A dashboard
/// that asked for an empty first view (`/client/?empty=1`) sees none until its first FILT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Scope(Within);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Within {
    #[default]
    All,
    Owner(Arc<str>),
    Nothing,
}

impl Scope {
    /// Every device.
    pub(crate) const ALL: Scope = Scope(Within::All);

    /// No device at all.
    pub(crate) const NOTHING: Scope = Scope(Within::Nothing);

    /// Only the devices whose `owner` is `owner`.
    pub(crate) fn owner(owner: &str) -> Scope {
        Scope(Within::Owner(Arc::from(owner)))
    }

    /// Whether `record` is in this scope.
    pub(crate) fn allows(&self, record: &Record) -> bool {
        match &self.0 {
            Within::All => true,
            Within::Owner(owner) => record.owner == **owner,
            Within::Nothing => false,
        }
    }

    /// Whether this scope leaves devices out.
    pub(crate) fn is_limited(&self) -> bool {
        self.0 != Within::All
    }
}

/// One device as committed: its record and the record's JSON text (as stored).
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub record: Arc<Record>,
    pub json: Arc<str>,
}

impl Entry {
    /// An entry for `record`, serializing it.
    pub(crate) fn new(record: Record) -> Entry {
        let json = Arc::from(record.to_json());
        Entry {
            record: Arc::new(record),
            json,
        }
    }

    /// An entry for `record` whose JSON is at hand already: `json` must be what
    /// [`Record::to_json`] writes for it (checked in debug builds).
    pub(crate) fn with_json(record: Record, json: &str) -> Entry {
        debug_assert_eq!(record.to_json(), json);
        Entry {
            record: Arc::new(record),
            json: Arc::from(json),
        }
    }
}

/// All devices, by serial.
#[derive(Debug)]
pub(crate) struct Fleet {
    devices: RwLock<BTreeMap<Serial, Entry>>,
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
                (record.serial_number.clone(), Entry::new(record))
            })
            .collect();
        Fleet {
            devices: RwLock::new(map),
            online: AtomicUsize::new(0),
            owner,
            registration,
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<Serial, Entry>> {
        // Entries are replaced whole, so a panic elsewhere cannot leave a torn one behind.
        self.devices.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The owner written into the records of newly registered devices.
    pub(crate) fn owner(&self) -> &str {
        &self.owner
    }

    /// Whether `serial` may send: always with open registration, only known devices otherwise.
    pub(crate) fn admit(&self, serial: &Serial) -> Result<(), Unregistered> {
        if self.registration == Registration::Open || self.read().contains_key(serial) {
            Ok(())
        } else {
            Err(Unregistered(serial.as_str().to_owned()))
        }
    }

    /// Make committed states visible (the writer thread, after the commit that stored them). The
    /// replaced entries go to `retired`, for the caller to drop outside the lock and after the acks
    /// (freeing a record costs more than replacing it).
    pub(crate) fn publish(
        &self,
        entries: impl IntoIterator<Item = (Serial, Entry)>,
        retired: &mut Vec<Entry>,
    ) {
        let mut devices = self.devices.write().unwrap_or_else(PoisonError::into_inner);
        for (serial, entry) in entries {
            self.insert(&mut devices, serial, entry, retired);
        }
    }

    /// Make a batch's online and offline marks visible (the writer thread). Each mark was staged
    /// on the entry the writer read; if the cluster's follower has since replaced that entry with a
    /// newer remote record ([`Fleet::publish_newer`]), the mark goes onto that record instead
    /// (`remark`), so that a mark never brings an older record back.
    pub(crate) fn publish_marks(
        &self,
        marks: impl IntoIterator<Item = (Serial, Entry)>,
        retired: &mut Vec<Entry>,
        mut remark: impl FnMut(&Entry, bool) -> Entry,
    ) {
        let mut devices = self.devices.write().unwrap_or_else(PoisonError::into_inner);
        for (serial, entry) in marks {
            let online = entry.record.online;
            let entry = match devices.get(&serial) {
                Some(now) if now.record.last_status_update > entry.record.last_status_update => {
                    if now.record.online == online {
                        continue;
                    }
                    remark(now, online)
                }
                _ => entry,
            };
            self.insert(&mut devices, serial, entry, retired);
        }
    }

    /// Make other instances' records visible (`--redis`, the cluster's follower): each only if its
    /// `last_status_update` is later than that of the device's entry here, checked under the write
    /// lock, so that a change the writer published meanwhile is never replaced by an older one.
    /// `online` is not the record's to say (it is presence, which the writer keeps): the entry's
    /// here is kept, and a device new here is online if `elsewhere` says another instance has it.
    /// Returns the serials applied, in order.
    pub(crate) fn publish_newer(
        &self,
        entries: Vec<(Serial, Entry)>,
        retired: &mut Vec<Entry>,
        elsewhere: impl Fn(&Serial) -> bool,
    ) -> Vec<Serial> {
        let mut applied = Vec::with_capacity(entries.len());
        let mut devices = self.devices.write().unwrap_or_else(PoisonError::into_inner);
        for (serial, mut entry) in entries {
            let old = devices.get(&serial);
            let newer = old
                .is_none_or(|old| old.record.last_status_update < entry.record.last_status_update);
            if newer {
                let online = old.map_or_else(|| elsewhere(&serial), |old| old.record.online);
                if entry.record.online != online {
                    let mut record = (*entry.record).clone();
                    record.online = online;
                    entry = Entry::new(record);
                }
                applied.push(serial.clone());
                self.insert(&mut devices, serial, entry, retired);
            }
        }
        applied
    }

    /// Replace one entry, keeping the count of online devices.
    fn insert(
        &self,
        devices: &mut BTreeMap<Serial, Entry>,
        serial: Serial,
        entry: Entry,
        retired: &mut Vec<Entry>,
    ) {
        let now_online = entry.record.online;
        let old = devices.insert(serial, entry);
        let was_online = old.as_ref().is_some_and(|old| old.record.online);
        retired.extend(old);
        match (was_online, now_online) {
            (false, true) => {
                self.online.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                self.online.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// Number of devices.
    pub(crate) fn len(&self) -> usize {
        self.read().len()
    }

    /// Number of devices online.
    pub(crate) fn online(&self) -> usize {
        self.online.load(Ordering::Relaxed)
    }

    /// One device's record as JSON, if it is in `scope`.
    pub(crate) fn device_json(&self, serial: &str, scope: &Scope) -> Option<Arc<str>> {
        let serial = Serial::new(serial).ok()?;
        self.read()
            .get(&serial)
            .filter(|d| scope.allows(&d.record))
            .map(|d| Arc::clone(&d.json))
    }

    /// Run `f` over the records under one read lock (no awaiting inside; keep it short: the writer
    /// waits for the lock to make commits visible).
    pub(crate) fn with_records<T>(&self, f: impl FnOnce(&Records<'_>) -> T) -> T {
        let guard = self.read();
        f(&Records { devices: &guard })
    }

    /// Every device, serial ascending, as of now: the read lock is held only to copy the pointers.
    pub(crate) fn snapshot(&self) -> Vec<Entry> {
        self.read().values().cloned().collect()
    }

    /// The JSON array of the records of `scope` that `query` selects, in its order (evaluated
    /// outside the lock).
    pub(crate) fn query_json(&self, query: &Query, scope: &Scope) -> String {
        let mut out = String::new();
        write_array(&self.snapshot(), query, scope, &mut out, None);
        out
    }

    /// The INIT frame for `query` within `scope`, and the serials it holds when it leaves devices
    /// out (the dashboard's view membership). Evaluated outside the lock.
    pub(crate) fn init_frame(
        &self,
        query: &Query,
        scope: &Scope,
    ) -> (String, Option<HashSet<Serial>>) {
        let mut out = String::new();
        let mut members = (!query.filters.is_empty() || scope.is_limited()).then(HashSet::new);
        smart_proto::frame::write_envelope(&mut out, smart_proto::Kind::Init, |out| {
            write_array(&self.snapshot(), query, scope, out, members.as_mut());
        });
        (out, members)
    }
}

/// The records under a read lock.
#[derive(Debug)]
pub(crate) struct Records<'a> {
    devices: &'a BTreeMap<Serial, Entry>,
}

impl Records<'_> {
    /// One record.
    pub(crate) fn get(&self, serial: &Serial) -> Option<&Record> {
        self.devices.get(serial).map(|d| &*d.record)
    }

    /// One device's entry (record and JSON).
    pub(crate) fn entry(&self, serial: &Serial) -> Option<&Entry> {
        self.devices.get(serial)
    }
}

fn write_array(
    entries: &[Entry],
    query: &Query,
    scope: &Scope,
    out: &mut String,
    mut members: Option<&mut HashSet<Serial>>,
) {
    let in_scope = entries.iter().filter(|d| scope.allows(&d.record));
    let mut selected: Vec<&Entry> = if query.filters.is_empty() {
        in_scope.collect()
    } else {
        let matcher = query.matcher();
        in_scope.filter(|d| matcher.matches(&d.record)).collect()
    };
    if !query.sorts.is_empty() {
        // Stable over serial-ascending input, and `compare` ends ties on the serial anyway.
        selected.sort_by(|a, b| query.compare(&a.record, &b.record));
    }
    // Every record of the list carries the same keys (PROTOCOL.md §7): a record lacking some of the
    // list's extras is written padded with nulls; the others are their cached text as is.
    let keys = smart_proto::extra_keys(selected.iter().map(|d| &*d.record));
    out.reserve(selected.iter().map(|d| d.json.len() + 1).sum::<usize>() + 2);
    out.push('[');
    for (i, device) in selected.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        if device.record.has_extras(&keys) {
            out.push_str(&device.json);
        } else {
            device.record.write_json_padded(&keys, out);
        }
        if let Some(members) = members.as_deref_mut() {
            members.insert(device.record.serial_number.clone());
        }
    }
    out.push(']');
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use smart_proto::{Timestamp, Update, normalize, parse_body, write_init};

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
            let now = Timestamp::from_unix_micros(1_700_000_000_000_000);
            let mut record = Record::new(serial.clone(), "EET", now);
            record.apply(&update(body, &serial), now);
            record.online = true;
            fleet.publish([(serial, Entry::new(record))], &mut Vec::new());
        }
        fleet
    }

    /// The INIT assembled from cached record texts is byte for byte what smart-proto writes.
    #[test]
    fn init_frame_matches_write_init() {
        let fleet = fleet();
        let (frame, members) = fleet.init_frame(&Query::default(), &Scope::ALL);
        assert!(members.is_none());
        let expected = fleet.with_records(|r| write_init(r.devices.values().map(|d| &*d.record)));
        assert_eq!(frame, expected);

        let query = Query::parse(&["filter:battery:>:50", "sort:battery:>:123"]).unwrap();
        let (frame, members) = fleet.init_frame(&query, &Scope::ALL);
        let expected =
            fleet.with_records(|r| write_init(query.apply(r.devices.values().map(|d| &*d.record))));
        assert_eq!(frame, expected);
        let mut members: Vec<_> = members
            .unwrap()
            .into_iter()
            .map(|s| s.as_str().to_owned())
            .collect();
        members.sort();
        assert_eq!(members, ["0002", "0003"]);
        let listed: serde_json::Value =
            serde_json::from_str(&fleet.query_json(&query, &Scope::ALL)).unwrap();
        let framed: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(listed, framed["message"]);
    }

    /// A scoped reader gets only its owner's devices, in every way of reading, and its INIT tracks
    /// membership even without a filter (so that other owners' changes are not forwarded).
    #[test]
    fn a_scope_leaves_other_owners_devices_out() {
        let now = Timestamp::from_unix_micros(1);
        let records = ["A", "B", "A"].iter().enumerate().map(|(i, owner)| {
            let mut record = Record::new(Serial::new(&format!("000{i}")).unwrap(), *owner, now);
            record.battery = Some(i as f64);
            record
        });
        let fleet = Fleet::new("EET".to_owned(), Registration::Open, records.collect());
        let a = Scope::owner("A");
        let serials = |json: &str| -> Vec<String> {
            let v: serde_json::Value = serde_json::from_str(json).unwrap();
            let list = v.get("message").unwrap_or(&v).as_array().unwrap().clone();
            list.iter()
                .map(|r| r["serial_number"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(
            serials(&fleet.query_json(&Query::default(), &a)),
            ["0000", "0002"]
        );
        let sorted = Query::parse(&["sort:battery:>:123"]).unwrap();
        assert_eq!(serials(&fleet.query_json(&sorted, &a)), ["0002", "0000"]);
        let (frame, members) = fleet.init_frame(&Query::default(), &a);
        assert_eq!(serials(&frame), ["0000", "0002"]);
        assert_eq!(members.map(|m| m.len()), Some(2));
        assert!(fleet.device_json("0001", &a).is_none());
        assert!(fleet.device_json("0001", &Scope::owner("B")).is_some());
        assert_eq!(
            serials(&fleet.query_json(&Query::default(), &Scope::ALL)).len(),
            3
        );
        assert!(serials(&fleet.query_json(&Query::default(), &Scope::owner("C"))).is_empty());
    }

    #[test]
    fn publish_counts_devices_going_online_and_offline() {
        let fleet = fleet();
        assert_eq!(fleet.online(), 3);
        let serial = Serial::new("0001").unwrap();
        let mut record = (*fleet
            .with_records(|r| r.entry(&serial).unwrap().clone())
            .record)
            .clone();
        record.online = false;
        fleet.publish([(serial.clone(), Entry::new(record))], &mut Vec::new());
        assert_eq!(fleet.online(), 2);
        let json = fleet.device_json("0001", &Scope::ALL).unwrap();
        assert!(!Record::from_json(&json).unwrap().online);
        assert_eq!(fleet.len(), 3);
    }

    /// Another instance's record never decides `online` here: a known device keeps its own, a
    /// new one is online only if another instance has it.
    #[test]
    fn remote_records_keep_the_online_state_here() {
        let fleet = fleet();
        let remote = |serial: &str, online: bool| {
            let serial = Serial::new(serial).unwrap();
            let mut record = Record::new(
                serial.clone(),
                "EET",
                Timestamp::from_unix_micros(1_800_000_000_000_000),
            );
            record.online = online;
            (serial, Entry::new(record))
        };
        let online = |serial: &str| {
            Record::from_json(&fleet.device_json(serial, &Scope::ALL).unwrap())
                .unwrap()
                .online
        };
        let applied = fleet.publish_newer(
            vec![
                remote("0001", false),
                remote("0009", true),
                remote("0008", false),
            ],
            &mut Vec::new(),
            |serial| serial.as_str() == "0008",
        );
        assert_eq!(applied.len(), 3);
        assert!(online("0001"), "online here, whatever the record says");
        assert!(!online("0009"), "new here and online on no other instance");
        assert!(online("0008"), "new here and online on another instance");
        assert_eq!(fleet.online(), 4);
    }

    /// The race behind a flaky three-instance test: the writer stages an offline mark on the entry
    /// it read, the follower meanwhile applies a newer remote record; the mark must land on that
    /// record, not bring the older one back.
    #[test]
    fn a_mark_never_brings_an_older_record_back() {
        let fleet = fleet();
        let serial = Serial::new("0001").unwrap();
        let read = fleet.with_records(|r| r.entry(&serial).unwrap().clone());
        assert!(read.record.online);
        let mut mark = (*read.record).clone();
        mark.online = false;
        let mut newer = (*read.record).clone();
        let later = Timestamp::from_unix_micros(1_800_000_000_000_000);
        newer.apply(&update(r#"{"battery": 77}"#, &serial), later);
        fleet.publish_newer(
            vec![(serial.clone(), Entry::new(newer))],
            &mut Vec::new(),
            |_| false,
        );
        let mut remarked = 0;
        fleet.publish_marks(
            [(serial.clone(), Entry::new(mark.clone()))],
            &mut Vec::new(),
            |entry, online| {
                remarked += 1;
                let mut record = (*entry.record).clone();
                record.online = online;
                Entry::new(record)
            },
        );
        assert_eq!(remarked, 1);
        let now = Record::from_json(&fleet.device_json("0001", &Scope::ALL).unwrap()).unwrap();
        assert!(!now.online);
        assert_eq!(now.to_map()["battery"], 77);
        assert_eq!(fleet.online(), 2);
        // On the entry it was staged on (nothing newer came), the mark is published as staged.
        let serial = Serial::new("0002").unwrap();
        let mut mark = (*fleet
            .with_records(|r| r.entry(&serial).unwrap().clone())
            .record)
            .clone();
        mark.online = false;
        fleet.publish_marks([(serial, Entry::new(mark))], &mut Vec::new(), |_, _| {
            panic!("nothing to remark")
        });
        assert_eq!(fleet.online(), 1);
    }

    #[test]
    fn closed_registration_admits_only_known_serials() {
        let fleet = Fleet::new(
            "EET".to_owned(),
            Registration::Closed,
            vec![Record::new(
                Serial::new("0001").unwrap(),
                "EET",
                Timestamp::from_unix_micros(1),
            )],
        );
        assert_eq!(fleet.admit(&Serial::new("0001").unwrap()), Ok(()));
        assert_eq!(
            fleet.admit(&Serial::new("0002").unwrap()),
            Err(Unregistered("0002".to_owned()))
        );
        assert_eq!(fleet.len(), 1);
        assert_eq!(fleet.online(), 0);
    }
}
