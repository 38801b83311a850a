//! INIT lists for dashboards (PROTOCOL.md §7): every record carries the same keys.
//!
//! Dashboards built for the original server take their column headers from the first record of an INIT
//! list, so an extra field that only some devices have would be missing from the table. Every record of
//! a list therefore carries the union of the list's extra keys, `null` where it has none, in the key order
//! of §6: the known fields, then the extras in key order.
//!
//! ```
//! use smart_proto::{Record, Serial, Timestamp, write_init};
//!
//! let mut a = Record::new(Serial::new("0001")?, "EET", Timestamp::UNIX_EPOCH);
//! a.extra.insert("mode".into(), "eco".into());
//! let b = Record::new(Serial::new("0002")?, "EET", Timestamp::UNIX_EPOCH);
//! let frame = write_init([&a, &b]);
//! assert!(frame.contains(r#""online":false,"mode":"eco"},{"serial_number":"0002""#));
//! assert!(frame.ends_with(r#""online":false,"mode":null}]}"#));
//! # Ok::<(), smart_proto::Error>(())
//! ```

use std::collections::BTreeSet;

use crate::Record;

/// The union of the extra keys of `records`, in key order: the extra columns of an INIT list of them
/// (known fields are not extras, even if a record's `extra` map shadows one).
///
/// ```
/// use smart_proto::{Record, Serial, Timestamp, extra_keys};
///
/// let mut a = Record::new(Serial::new("0001")?, "EET", Timestamp::UNIX_EPOCH);
/// a.extra.insert("mode".into(), 1.into());
/// let mut b = Record::new(Serial::new("0002")?, "EET", Timestamp::UNIX_EPOCH);
/// b.extra.insert("charging".into(), true.into());
/// b.extra.insert("mode".into(), 2.into());
/// assert_eq!(extra_keys([&a, &b]).into_iter().collect::<Vec<_>>(), ["charging", "mode"]);
/// # Ok::<(), smart_proto::Error>(())
/// ```
pub fn extra_keys<'a>(records: impl IntoIterator<Item = &'a Record>) -> BTreeSet<&'a str> {
    let mut keys = BTreeSet::new();
    let mut previous: Option<&Record> = None;
    for record in records {
        // Most devices of a fleet have the same extras: a comparison is cheaper than the inserts.
        let same =
            previous.is_some_and(|p| p.extras().map(|e| e.0).eq(record.extras().map(|e| e.0)));
        if !same {
            keys.extend(record.extras().map(|(key, _)| key.as_str()));
        }
        previous = Some(record);
    }
    keys
}

/// Write an INIT frame straight from borrowed records (no copy of them). Every record carries the same
/// keys: the extras another record of the list has are written as `null` ([`Record::write_json_padded`]).
///
/// ```
/// let frame = smart_proto::write_init([]);
/// assert_eq!(frame, r#"{"type":"INIT","message":[]}"#);
/// ```
pub fn write_init<'a>(records: impl IntoIterator<Item = &'a Record>) -> String {
    let records: Vec<&Record> = records.into_iter().collect();
    let keys = extra_keys(records.iter().copied());
    let mut out = String::from(r#"{"type":"INIT","message":["#);
    for (i, record) in records.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // `keys` holds the record's own extras, so it has them all when the counts agree.
        if record.extras().count() == keys.len() {
            record.write_json(&mut out);
        } else {
            record.write_json_padded(&keys, &mut out);
        }
    }
    out.push_str("]}");
    out
}
