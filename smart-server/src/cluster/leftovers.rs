//! At start, with `--redis`: what the log segments kept by the previous run hold (the store's replay
//! retires nothing while a shipper waits for them). They may have been shipped already, in part or
//! whole (the version check makes shipping them again harmless), so they are simply read back, the
//! latest record of each device, and shipped before anything newer.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use smart_proto::Serial;
use tracing::warn;

use crate::wal;

/// The latest record of each device in `segments` (oldest first), honouring the cuts that mark
/// where an abandoned segment really ends (as the store's replay does). A segment that cannot be
/// read is logged and skipped: its records are in sled, and the instance's next write of each
/// device ships it again.
pub(crate) fn read(segments: &[(u64, PathBuf)]) -> HashMap<Serial, Arc<str>> {
    let mut contents = Vec::with_capacity(segments.len());
    for (seq, path) in segments {
        match std::fs::read(path) {
            Ok(bytes) => contents.push((*seq, bytes)),
            Err(e) => {
                warn!(%e, seq, path = %path.display(), "cannot read a kept log segment; not shipped");
            }
        }
    }
    let mut cuts: HashMap<u64, u64> = HashMap::new();
    for (seq, bytes) in &contents {
        wal::decode(bytes, *seq, |payload| {
            if let Some(cut) = wal::Cut::of(payload) {
                let len = cuts.entry(cut.seq).or_insert(cut.len);
                *len = (*len).min(cut.len);
            }
        });
    }
    let mut latest = HashMap::new();
    for (seq, bytes) in &contents {
        let end = cuts
            .get(seq)
            .map_or(bytes.len(), |&len| bytes.len().min(len as usize));
        wal::decode(&bytes[..end], *seq, |payload| {
            if wal::Cut::of(payload).is_some() {
                return;
            }
            let Some(serial) = serial_of(payload) else {
                return;
            };
            if let Ok(text) = std::str::from_utf8(payload) {
                latest.insert(serial, Arc::from(text));
            }
        });
    }
    latest
}

/// The serial of a logged record's JSON, without parsing all of it.
fn serial_of(payload: &[u8]) -> Option<Serial> {
    #[derive(serde::Deserialize)]
    struct Key<'a> {
        #[serde(borrow)]
        serial_number: &'a str,
    }
    if payload.first() != Some(&b'{') {
        return None;
    }
    let key: Key<'_> = serde_json::from_slice(payload).ok()?;
    Serial::new(key.serial_number).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_record_of_each_device_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut segments = Vec::new();
        for (seq, records) in [
            (
                3u64,
                vec![
                    r#"{"serial_number":"0001","battery":1}"#,
                    r#"{"serial_number":"0002","battery":2}"#,
                ],
            ),
            (
                4,
                vec![r#"{"serial_number":"0001","battery":3}"#, "not a record"],
            ),
        ] {
            let mut bytes = Vec::new();
            for record in records {
                wal::encode(&mut bytes, seq, record.as_bytes()).unwrap();
            }
            let path = dir.path().join(format!("{seq}.log"));
            std::fs::write(&path, bytes).unwrap();
            segments.push((seq, path));
        }
        let latest = read(&segments);
        assert_eq!(latest.len(), 2);
        assert!(latest[&Serial::new("0001").unwrap()].contains("\"battery\":3"));
        assert!(latest[&Serial::new("0002").unwrap()].contains("\"battery\":2"));
    }
}
