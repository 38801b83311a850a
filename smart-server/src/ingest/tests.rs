//! Unit tests of the ingest path: what sinks get after staging and commit, and the last connection detaching a serial.

#![allow(clippy::unwrap_used)]

use super::*;
use std::collections::HashSet;

use crate::acks::AckQueue;
use crate::config::Registration;
use crate::history::HistoryOptions;

/// Records what the writer hands it.
#[derive(Default)]
struct Recording(Mutex<Vec<String>>);

impl Sink for Recording {
    fn listening(&self) -> bool {
        true
    }

    fn publish_committed(&self, changes: &mut Vec<Committed>) {
        let mut seen = self.0.lock().unwrap();
        for change in changes.drain(..) {
            seen.push(match change {
                Committed::Updt { header, body } => {
                    format!("{header}:{}", body.get("battery").unwrap_or(&Value::Null))
                }
                Committed::Online { serial, online } => format!("{serial} online={online}"),
            });
        }
    }
}

/// Stops listening for exactly one call: the third (the staging of the second batch).
#[derive(Default)]
struct LateListener {
    calls: std::sync::atomic::AtomicUsize,
    bodies: Mutex<Vec<Map<String, Value>>>,
}

impl Sink for LateListener {
    fn listening(&self) -> bool {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            != 2
    }

    fn publish_committed(&self, changes: &mut Vec<Committed>) {
        for change in changes.drain(..) {
            if let Committed::Updt { body, .. } = change {
                self.bodies.lock().unwrap().push(body);
            }
        }
    }
}

fn start<S: Sink>(dir: &std::path::Path, sink: Arc<S>) -> Ingest {
    start_with(dir, sink, None)
}

fn start_with<S: Sink>(
    dir: &std::path::Path,
    sink: Arc<S>,
    presence: Option<Arc<dyn Presence>>,
) -> Ingest {
    let store = Arc::new(Store::open(dir, HistoryOptions::OFF).unwrap());
    let fleet = Arc::new(Fleet::new("EET".to_owned(), Registration::Open, Vec::new()));
    let limits = Limits {
        record_bytes: 1 << 20,
        extras: 16,
        extra_bytes: 1024,
        serials_per_connection: 2,
    };
    Ingest::start(
        store,
        fleet,
        sink,
        presence,
        &Arc::new(Metrics::default()),
        limits,
    )
    .unwrap()
}

fn wait_answered(acks: &AckQueue, ordinal: u64) {
    for _ in 0..1000 {
        if acks.answered() >= ordinal {
            return;
        }
        thread::sleep(std::time::Duration::from_millis(5));
    }
    panic!("write {ordinal} not answered");
}

/// A dashboard that starts listening after a batch was staged without its changes still gets
/// them: the whole record stands for the change.
#[test]
fn a_sink_listening_after_staging_gets_whole_records() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(LateListener::default());
    let ingest = start(dir.path(), Arc::clone(&sink));
    let mut intake = ingest.intake();
    let updt = |mid: &str, body: &str| {
        serde_json::json!({"type": "UPDT", "message": format!("{mid}:0001:{body}")}).to_string()
    };
    let first = intake
        .submit(&updt("0001", r#"{"battery": 10, "country": "AT"}"#))
        .unwrap();
    wait_answered(intake.acks(), first.ordinal);
    let second = intake.submit(&updt("0002", r#"{"battery": 20}"#)).unwrap();
    wait_answered(intake.acks(), second.ordinal);
    let third = intake.submit(&updt("0003", r#"{"battery": 30}"#)).unwrap();
    wait_answered(intake.acks(), third.ordinal);
    let bodies = sink.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 3);
    assert_eq!(bodies[1]["battery"], 20);
    assert_eq!(bodies[1]["country"], "AT", "the whole record");
    assert_eq!(bodies[2]["battery"], 30);
    assert!(!bodies[2].contains_key("country"), "only what changed");
}

#[test]
fn the_last_connection_of_a_serial_detaches_it() {
    let dir = tempfile::tempdir().unwrap();
    let ingest = start(dir.path(), Arc::<Recording>::default());
    let serial = Serial::new("0001").unwrap();
    ingest.attach(&serial, Job::Offline(serial.clone()));
    ingest.attach(&serial, Job::Offline(serial.clone()));
    assert!(!ingest.detach(&serial));
    assert!(ingest.detach(&serial));
    assert!(!ingest.detach(&serial), "already detached");
}

/// Committed changes reach the sink wired in at start, in order: a new device's full record, a
/// change, and "offline" once its connection is gone; a refused message reaches nothing.
#[test]
fn committed_batches_go_to_the_sink() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(Recording::default());
    let ingest = start(dir.path(), Arc::clone(&sink));
    let mut intake = ingest.intake();
    let updt = |mid: &str, serial: &str, body: &str| {
        serde_json::json!({"type": "UPDT", "message": format!("{mid}:{serial}:{body}")}).to_string()
    };
    let first = intake
        .submit(&updt("0001", "0001", r#"{"battery": 10}"#))
        .unwrap();
    wait_answered(intake.acks(), first.ordinal);
    let second = intake
        .submit(&updt("0002", "0001", r#"{"battery": 20}"#))
        .unwrap();
    assert_eq!(second.ordinal, 2);
    let refused = intake.submit(&updt("0003", "0001", r#"{"battery": "full"}"#));
    assert!(refused.unwrap_err().contains("0003:0001:ERROR"));
    intake.submit(&updt("0004", "0002", "{}")).unwrap();
    let over = intake.submit(&updt("0005", "0003", "{}"));
    assert!(over.unwrap_err().contains("--max-serials-per-connection"));
    wait_answered(intake.acks(), 3);
    intake.detach_all();
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(ingest.stop());
    let mut seen = sink.0.lock().unwrap().clone();
    // The two serials go offline in the order their detach was queued.
    let offline = seen.split_off(3);
    assert_eq!(seen, ["0001:0001:10", "0002:0001:20", "0004:0002:null"]);
    let mut offline = offline;
    offline.sort();
    assert_eq!(offline, ["0001 online=false", "0002 online=false"]);
}

/// Other instances, as a test sets them; and what this one told them.
#[derive(Debug, Default)]
struct Elsewhere {
    online: Mutex<HashSet<Serial>>,
    told: Mutex<Vec<String>>,
}

impl Presence for Elsewhere {
    fn local(&self, serial: &Serial, online: bool) {
        self.told
            .lock()
            .unwrap()
            .push(format!("{serial} online={online}"));
    }

    fn elsewhere(&self, serial: &Serial) -> bool {
        self.online.lock().unwrap().contains(serial)
    }
}

/// With other instances (`--redis`): a device online elsewhere stays online when its last
/// connection here closes; a recheck takes it offline once no instance has it, brings it back
/// when one has, and never takes it offline while a connection here keeps it.
#[test]
fn a_device_online_elsewhere_stays_online_and_rechecks_follow_the_other_instances() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(Recording::default());
    let elsewhere = Arc::new(Elsewhere::default());
    let presence = Arc::clone(&elsewhere) as Arc<dyn Presence>;
    let ingest = start_with(dir.path(), Arc::clone(&sink), Some(presence));
    let serial = Serial::new("0001").unwrap();
    let online = || {
        ingest
            .fleet
            .device_json("0001", &crate::fleet::Scope::ALL)
            .is_some_and(|json| Record::from_json(&json).unwrap().online)
    };
    let seen = |n: usize| {
        for _ in 0..1000 {
            if sink.0.lock().unwrap().len() >= n {
                return sink.0.lock().unwrap().clone();
            }
            thread::sleep(std::time::Duration::from_millis(5));
        }
        panic!(
            "the sink did not get {n} changes: {:?}",
            sink.0.lock().unwrap()
        );
    };
    let mut intake = ingest.intake();
    let first = intake
        .submit(
            &serde_json::json!({"type": "UPDT", "message": "0001:0001:{\"battery\": 1}"})
                .to_string(),
        )
        .unwrap();
    wait_answered(intake.acks(), first.ordinal);
    assert!(online());
    // Online here and on another instance: the recheck keeps it, nothing is sent.
    elsewhere.online.lock().unwrap().insert(serial.clone());
    ingest.recheck().device(serial.clone());
    // Its connection here closes: still online elsewhere.
    intake.detach_all();
    // Nobody has it any more.
    elsewhere.online.lock().unwrap().clear();
    ingest.recheck().device(serial.clone());
    assert_eq!(seen(2), ["0001:0001:1", "0001 online=false"]);
    assert!(!online());
    // Another instance has it again.
    elsewhere.online.lock().unwrap().insert(serial.clone());
    ingest.recheck().device(serial.clone());
    assert_eq!(seen(3)[2], "0001 online=true");
    assert!(online());
    // A connection here, then no instance any more: a connection here keeps it online.
    let mut again = ingest.intake();
    let second = again
        .submit(
            &serde_json::json!({"type": "UPDT", "message": "0002:0001:{\"battery\": 2}"})
                .to_string(),
        )
        .unwrap();
    wait_answered(again.acks(), second.ordinal);
    elsewhere.online.lock().unwrap().clear();
    ingest.recheck().device(serial.clone());
    again.detach_all();
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(ingest.stop());
    assert_eq!(
        sink.0.lock().unwrap()[3..],
        ["0002:0001:2", "0001 online=false"],
        "no offline before the connection here closed"
    );
    assert_eq!(
        *elsewhere.told.lock().unwrap(),
        [
            "0001 online=true",
            "0001 online=false",
            "0001 online=true",
            "0001 online=false"
        ]
    );
}

/// The writer hands the updates it applied back, to be freed by whoever parsed them
/// (`Ingest::free_spent`); when nobody takes them, it keeps at most `SPENT_MAX` and frees the rest
/// itself.
#[test]
fn applied_updates_come_back_to_be_freed_and_are_bounded_when_nobody_takes_them() {
    let dir = tempfile::tempdir().unwrap();
    let ingest = start(dir.path(), Arc::<Recording>::default());
    let mut intake = ingest.intake();
    let updt = |mid: u32| {
        serde_json::json!({"type": "UPDT", "message": format!("{mid:04}:0001:{{\"battery\": {}}}", mid % 100)})
            .to_string()
    };
    let mut last = 0;
    for mid in 1..=3 {
        last = intake.submit(&updt(mid)).unwrap().ordinal;
    }
    wait_answered(intake.acks(), last);
    let mut buffer = Vec::new();
    let mut freed = 0;
    for _ in 0..200 {
        freed += ingest.free_spent(&mut buffer);
        if freed >= 3 {
            break;
        }
        thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(freed, 3);
    assert!(buffer.is_empty());
    assert_eq!(ingest.free_spent(&mut buffer), 0, "each once");

    // Nobody takes them: the bin stays bounded, and every write is still answered.
    for mid in 0..(SPENT_MAX as u32 + 2 * MAX_BATCH as u32) {
        last = intake.submit(&updt(mid % 10_000)).unwrap().ordinal;
    }
    wait_answered(intake.acks(), last);
    let held = ingest.spent.bin.lock().unwrap().len();
    assert!(held <= SPENT_MAX, "{held} spent updates held");
    assert!(held > 0);
}
