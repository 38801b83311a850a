//! Unit tests of the store: replay, checkpoints, cuts, quarantine, `Log::commit`, acks.
#![allow(clippy::unwrap_used)]

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
        wal::encode(&mut out, seq, r.as_bytes()).unwrap();
    }
    out
}

/// What a crash leaves: segment `seq` of the log holding `bytes`.
fn plant_segment(dir: &Path, seq: u64, bytes: &[u8]) {
    let wal_dir = dir.join("wal");
    std::fs::create_dir_all(&wal_dir).unwrap();
    std::fs::write(wal_dir.join(format!("{seq:020}.log")), bytes).unwrap();
}

/// The history as a server keeps it by default.
const HISTORY: HistoryOptions = HistoryOptions {
    enabled: true,
    raw_ms: 48 * 3_600_000,
    five_minutes_ms: 30 * 86_400_000,
    hour_ms: 365 * 86_400_000,
    energy_gap_ms: 600_000,
};

/// Open the store at `dir`, waiting for a dropped handle's lock ([`crate::reopen`]).
fn open(dir: &Path) -> Store {
    crate::reopen::retrying_lock(|| Store::open(dir, HISTORY))
        .unwrap_or_else(|e| panic!("open the store: {e}"))
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
    plant_segment(
        dir.path(),
        3,
        &frames(3, &[record_json("0001", 10), record_json("0002", 20)]),
    );
    let mut torn = frames(4, &[record_json("0001", 11), record_json("0003", 30)]);
    torn.truncate(torn.len() - 5); // 0003 was never acked
    plant_segment(dir.path(), 4, &torn);

    let store = open(dir.path());
    assert_eq!(
        batteries(&store),
        [
            ("0001".to_owned(), Some(11.0)),
            ("0002".to_owned(), Some(20.0))
        ]
    );
    assert!(wal::segments(&dir.path().join("wal")).unwrap().is_empty());
    assert_eq!(store.first_segment, 5);
    drop(store);

    // It is in sled now: a second open finds the same without any log.
    let store = open(dir.path());
    assert_eq!(batteries(&store).len(), 2);
    assert_eq!(store.first_segment, 5);
}

/// Segments a checkpoint covered are never replayed, even if their files survived: replaying
/// them would take devices back to older states.
#[test]
fn checkpointed_segments_are_not_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut records = Records::new();
    records.insert(
        Serial::new("0001").unwrap(),
        Arc::from(record_json("0001", 50)),
    );
    store.checkpoint(2, &records).unwrap();
    drop(store);

    plant_segment(dir.path(), 2, &frames(2, &[record_json("0001", 10)])); // older than sled
    plant_segment(dir.path(), 3, &frames(3, &[record_json("0002", 20)]));

    let store = open(dir.path());
    assert_eq!(
        batteries(&store),
        [
            ("0001".to_owned(), Some(50.0)),
            ("0002".to_owned(), Some(20.0))
        ]
    );
    assert_eq!(store.first_segment, 4);
}

/// An abandoned segment (its torn tail could not be truncated) is read only up to the cut
/// recorded in a later segment: the frames of the failed commit after it are never replayed.
#[test]
fn replay_stops_an_abandoned_segment_at_its_cut() {
    let dir = tempfile::tempdir().unwrap();
    let good = frames(5, &[record_json("0001", 10)]);
    let mut torn = good.clone();
    torn.extend(frames(
        5,
        &[record_json("0001", 99), record_json("0002", 99)],
    ));
    plant_segment(dir.path(), 5, &torn);
    let mut next = Vec::new();
    let cut = wal::Cut {
        seq: 5,
        len: good.len() as u64,
    };
    wal::encode(&mut next, 6, &cut_payload(cut)).unwrap();
    next.extend(frames(6, &[record_json("0003", 30)]));
    plant_segment(dir.path(), 6, &next);

    let store = open(dir.path());
    assert_eq!(
        batteries(&store),
        [
            ("0001".to_owned(), Some(10.0)),
            ("0003".to_owned(), Some(30.0))
        ]
    );
    assert_eq!(store.quarantined(), 0, "a cut frame is not a record");
}

/// Drop the store once the checkpoint thread has let go of it (it exits when its log is dropped).
fn release(mut store: Arc<Store>) {
    for _ in 0..1000 {
        match Arc::try_unwrap(store) {
            Ok(store) => return drop(store),
            Err(shared) => store = shared,
        }
        thread::sleep(Duration::from_millis(5));
    }
    panic!("the checkpoint thread kept the store");
}

fn cut_payload(cut: wal::Cut) -> Vec<u8> {
    let mut p = b"\0cut".to_vec();
    p.extend_from_slice(&cut.seq.to_le_bytes());
    p.extend_from_slice(&cut.len.to_le_bytes());
    assert_eq!(wal::Cut::of(&p), Some(cut));
    p
}

/// Item 1 of issue 9: a batch with a record the log could not read back is refused whole and
/// writes nothing; the log goes on, and what it acked before and after replays.
#[test]
fn commit_refuses_a_record_over_the_frame_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()));
    let mut log = Log::start(Arc::clone(&store), Arc::new(Metrics::default())).unwrap();
    let a = Serial::new("0001").unwrap();
    let b = Serial::new("0002").unwrap();
    let first: Arc<str> = Arc::from(record_json("0001", 1));
    log.commit([(&a, &first)]).unwrap();
    let written = log.wal.len();

    let huge: Arc<str> = Arc::from("x".repeat(wal::MAX_PAYLOAD + 1));
    let other: Arc<str> = Arc::from(record_json("0001", 2));
    assert_eq!(log.commit([(&a, &other), (&b, &huge)]), Err(StoreFailed));
    assert_eq!(log.wal.len(), written, "nothing of the batch was written");
    assert!(store.is_healthy(), "not a storage fault");
    drop(huge);

    let later: Arc<str> = Arc::from(record_json("0002", 3));
    log.commit([(&b, &later)]).unwrap();
    drop(log); // a crash: no final checkpoint
    release(store);
    let store = open(dir.path());
    assert_eq!(
        batteries(&store),
        [
            ("0001".to_owned(), Some(1.0)),
            ("0002".to_owned(), Some(3.0))
        ]
    );
}

/// A clean finish checkpoints everything into sled and leaves no segment behind.
#[test]
fn finish_checkpoints_and_retires_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()));
    let mut log = Log::start(Arc::clone(&store), Arc::new(Metrics::default())).unwrap();
    let a = Serial::new("0001").unwrap();
    let json: Arc<str> = Arc::from(record_json("0001", 7));
    log.commit([(&a, &json)]).unwrap();
    log.finish();
    assert!(wal::segments(&dir.path().join("wal")).unwrap().is_empty());
    release(store);
    let store = open(dir.path());
    assert_eq!(batteries(&store), [("0001".to_owned(), Some(7.0))]);
}

/// Item 2 of issue 9: a stored record that does not read (bad JSON, nesting beyond the
/// parser's limit, a foreign key) and a log record without a readable key are quarantined —
/// kept, counted — never dropped; the other records load.
#[test]
fn unreadable_records_are_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let deep = format!(
        "{{\"serial_number\":\"0003\",\"x\":{}{}}}",
        "[".repeat(200),
        "]".repeat(200)
    );
    store
        .devices
        .insert("0001", record_json("0001", 1).as_bytes())
        .unwrap();
    store
        .devices
        .insert("0002", &b"{\"serial_number\": \"00"[..])
        .unwrap();
    store.devices.insert("0003", deep.as_bytes()).unwrap();
    store
        .devices
        .insert("0004", record_json("0005", 1).as_bytes())
        .unwrap();
    store.flush().unwrap();
    drop(store);
    plant_segment(
        dir.path(),
        0,
        &frames(0, &["not json".to_owned(), record_json("0006", 6)]),
    );

    let store = open(dir.path());
    assert_eq!(
        batteries(&store),
        [
            ("0001".to_owned(), Some(1.0)),
            ("0006".to_owned(), Some(6.0))
        ]
    );
    assert_eq!(store.quarantined(), 4);
    let kept: Vec<(String, Vec<u8>)> = store
        .quarantine
        .iter()
        .map(|e| {
            let (k, v) = e.unwrap();
            (String::from_utf8(k.to_vec()).unwrap(), v.to_vec())
        })
        .collect();
    assert_eq!(
        kept,
        [
            ("0002".to_owned(), b"{\"serial_number\": \"00".to_vec()),
            ("0003".to_owned(), deep.into_bytes()),
            ("0004".to_owned(), record_json("0005", 1).into_bytes()),
            ("wal:0:1".to_owned(), b"not json".to_vec()),
        ]
    );
    drop(store);
    // Still there, counted once, after another start.
    let store = open(dir.path());
    assert_eq!(batteries(&store).len(), 2);
    assert_eq!(store.quarantined(), 4);
}

#[test]
fn record_key_reads_the_serial() {
    assert_eq!(
        record_key(record_json("X-1", 1).as_bytes()).as_deref(),
        Some("X-1")
    );
    assert_eq!(record_key(b"{\"battery\": 1}"), None);
    assert_eq!(record_key(b"not json"), None);
    assert_eq!(record_key(b"[\"X-1\"]"), None, "not an object");
}

/// After a crash, the replay puts what the logged records changed into the history (each record
/// against the device's previous version, sled's or an earlier frame's).
#[test]
fn the_replay_fills_the_history_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut records = Records::new();
    records.insert(
        Serial::new("0001").unwrap(),
        Arc::from(record_json("0001", 5)),
    );
    store.checkpoint(1, &records).unwrap();
    drop(store);
    plant_segment(
        dir.path(),
        2,
        &frames(2, &[record_json("0001", 10), record_json("0002", 20)]),
    );
    // 0001 again, unchanged, then changed: one sample, not two.
    plant_segment(
        dir.path(),
        3,
        &frames(3, &[record_json("0001", 10), record_json("0001", 11)]),
    );
    let batteries_in_history = |store: &Store, serial: &str| -> Vec<f64> {
        let raw = &store.history().unwrap().raw;
        let serial = Serial::new(serial).unwrap();
        raw.read(&serial, &["battery"], (i64::MIN, i64::MAX), 100)
            .unwrap()
            .into_iter()
            .filter_map(|(_, v)| v[0])
            .collect()
    };
    let store = open(dir.path());
    assert_eq!(batteries_in_history(&store, "0001"), [10.0, 11.0]);
    assert_eq!(batteries_in_history(&store, "0002"), [20.0]);
}
