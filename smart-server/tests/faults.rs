//! Storage faults injected into the real binary (the `faultfs` shim, loaded with `LD_PRELOAD`): a full
//! disk, failing or blocked syncs, failing truncation, no file descriptors. What must hold: an OK
//! only after the sync, ERROR for every message a failed commit held, `/healthz` 503 while the store
//! fails and 200 again without a restart, and after SIGKILL every acked value there and nothing of
//! the failed commits.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/faultfs.rs"]
mod faultfs;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use faultfs::{Faults, Mode};
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio::process::Child;
use tokio_tungstenite::tungstenite::Message;

struct Binary {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

/// The real server on `data`, with `faults` loaded if given; its log goes to `data.log` (next to
/// `data`, or in the system temporary directory when `data`'s parent does not exist yet).
async fn start(data: &Path, faults: Option<&Faults>) -> Binary {
    let log = match data.parent() {
        Some(parent) if parent.is_dir() => data.with_extension("log"),
        _ => std::env::temp_dir().join(format!("smart-faults-{}.log", std::process::id())),
    };
    let mut env: Vec<(&str, OsString)> = faults.map(Faults::env).unwrap_or_default();
    // A checkpoint (and rotation, and retirement) every second, as the faults below expect.
    env.push(("SMART_CHECKPOINT_SECONDS", OsString::from("1")));
    let env: Vec<(&str, &std::ffi::OsStr)> = env.iter().map(|(k, v)| (*k, v.as_os_str())).collect();
    let (child, addr) = spawn_binary_env(data, &env, &log).await;
    Binary { child, addr, log }
}

impl Binary {
    async fn kill(mut self) {
        self.child.start_kill().unwrap();
        tokio::time::timeout(TIMEOUT, self.child.wait())
            .await
            .unwrap()
            .unwrap();
    }

    async fn health(&self) -> u16 {
        http_get(self.addr, "/healthz", &[]).await.status
    }

    /// The stored value `v` of a device.
    async fn value(&self, serial: &str) -> Value {
        let res = http_get(self.addr, &format!("/api/devices/{serial}"), &[]).await;
        assert_eq!(res.status, 200, "{serial}: {}", res.body);
        res.json()["v"].clone()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Send `{"v": n}` for every `n` without waiting, then collect one reply per message, in order.
async fn pipeline(ws: &mut Ws, serial: &str, values: std::ops::RangeInclusive<u32>) -> Vec<Value> {
    let count = values.clone().count();
    for n in values {
        let frame = updt(&format!("{n:04}"), serial, &json!({ "v": n }));
        ws.feed(Message::text(frame)).await.unwrap();
    }
    ws.flush().await.unwrap();
    let mut replies = Vec::with_capacity(count);
    for _ in 0..count {
        replies.push(recv_json(ws).await);
    }
    replies
}

fn assert_all_refused(replies: &[Value], serial: &str, first: u32) {
    for (i, reply) in replies.iter().enumerate() {
        let n = first + i as u32;
        assert_eq!(reply["type"], "INFO", "{reply}");
        assert_eq!(
            reply["message"],
            format!("{n:04}:{serial}:ERROR"),
            "{reply}"
        );
        assert!(
            reply["reason"]
                .as_str()
                .is_some_and(|r| r.contains("not stored")),
            "{reply}"
        );
    }
}

/// Two devices with a stored value each: `A` keeps writing, `B` only writes during the fault.
async fn two_devices(server: &Binary) -> (Ws, Ws) {
    let mut a = device(server.addr).await;
    let mut b = device(server.addr).await;
    send_ok(&mut a, "0001", "FA", &json!({"v": 1})).await;
    send_ok(&mut b, "0001", "FB", &json!({"v": 1})).await;
    (a, b)
}

/// After SIGKILL and a restart without faults: `A` has its last acked value, `B` the value it had
/// before its refused messages (nothing of a failed commit is replayed).
async fn assert_restart_keeps_acked_only(data: &Path, server: Binary, a_acked: u32) {
    server.kill().await;
    let server = start(data, None).await;
    assert_eq!(server.value("FA").await, a_acked, "A's acked value");
    assert_eq!(
        server.value("FB").await,
        1,
        "B's refused values were not replayed"
    );
    server.kill().await;
}

/// Item 6: a full disk answers ERROR, turns /healthz 503, and recovers without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_answers_error_and_recovers_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let faults = Faults::new(&data);
    let server = start(&data, Some(&faults)).await;
    let (mut a, mut b) = two_devices(&server).await;
    assert_eq!(server.health().await, 200);

    faults.on(Mode::Enospc);
    let replies = pipeline(&mut b, "FB", 2..=9).await;
    assert_all_refused(&replies, "FB", 2);
    assert_eq!(server.health().await, 503);
    let metrics = http_get(server.addr, "/metrics", &[]).await.body;
    assert!(metrics.contains("\nsmart_store_healthy 0\n"), "{metrics}");

    faults.off(Mode::Enospc);
    send_ok(&mut a, "0002", "FA", &json!({"v": 2})).await;
    assert_eq!(server.health().await, 200);
    send_ok(&mut a, "0003", "FA", &json!({"v": 3})).await;
    assert!(
        server.log().contains("group commit failed"),
        "{}",
        server.log()
    );
    assert_restart_keeps_acked_only(&data, server, 3).await;
}

/// Item 3: after a torn write, the next acked batch is not appended after the torn bytes even when
/// no file can be opened (so no fresh segment can be created).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_write_is_cut_off_even_without_file_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let faults = Faults::new(&data);
    let server = start(&data, Some(&faults)).await;
    let (mut a, mut b) = two_devices(&server).await;

    faults.on(Mode::Emfile);
    faults.on(Mode::Enospc);
    let replies = pipeline(&mut b, "FB", 2..=9).await;
    assert_all_refused(&replies, "FB", 2);
    faults.off(Mode::Enospc);
    send_ok(&mut a, "0002", "FA", &json!({"v": 2})).await;
    send_ok(&mut a, "0003", "FA", &json!({"v": 3})).await;
    assert_eq!(server.health().await, 200);
    assert_restart_keeps_acked_only(&data, server, 3).await;
}

/// Item 3: when the torn bytes cannot be truncated away, the segment is abandoned: later acks go to
/// a fresh one and the torn frames are never replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_that_cannot_be_truncated_is_abandoned() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let faults = Faults::new(&data);
    let server = start(&data, Some(&faults)).await;
    let (mut a, mut b) = two_devices(&server).await;

    faults.on(Mode::EioTrunc);
    faults.on(Mode::Enospc);
    let replies = pipeline(&mut b, "FB", 2..=9).await;
    assert_all_refused(&replies, "FB", 2);
    faults.off(Mode::Enospc);
    send_ok(&mut a, "0002", "FA", &json!({"v": 2})).await;
    faults.off(Mode::EioTrunc);
    send_ok(&mut a, "0003", "FA", &json!({"v": 3})).await;
    assert!(
        server.log().contains("abandoning the segment"),
        "{}",
        server.log()
    );
    assert_restart_keeps_acked_only(&data, server, 3).await;
}

/// The sequence numbers of the log segments in `wal`.
fn segments(wal: &Path) -> Vec<u64> {
    let mut seqs: Vec<u64> = std::fs::read_dir(wal)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().ok()?;
            name.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    seqs.sort_unstable();
    seqs
}

/// Item 3: with no file descriptor to be had, the log still rotates and checkpoints (it recycles
/// the files it holds), so it neither grows without end nor stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fd_exhaustion_stops_neither_rotation_nor_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let faults = Faults::new(&data);
    let server = start(&data, Some(&faults)).await;
    let mut a = device(server.addr).await;
    send_ok(&mut a, "0001", "FA", &json!({"v": 1})).await;
    let first = *segments(&data.join("wal")).last().unwrap();

    faults.on(Mode::Emfile);
    // Writes until the log has rotated twice more (each rotation after the first needs a file the
    // previous checkpoint recycled), bounded in count and time.
    let started = Instant::now();
    let mut n = 1;
    let mut seqs = Vec::new();
    while started.elapsed() < Duration::from_secs(12) && n < 5000 {
        n += 1;
        send_ok(
            &mut a,
            &format!("{:04}", n % 10_000),
            "FA",
            &json!({"v": n}),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        seqs = segments(&data.join("wal"));
        if seqs.last().is_some_and(|&last| last >= first + 3) {
            break;
        }
    }
    assert!(
        seqs.last().is_some_and(|&last| last >= first + 3),
        "rotated three times after {first} with no descriptor to open: {seqs:?}"
    );
    assert!(seqs.len() <= 3, "checkpointed segments retired: {seqs:?}");
    assert_eq!(server.health().await, 200);
    server.kill().await;
    let server = start(&data, None).await;
    assert_eq!(server.value("FA").await, n);
    server.kill().await;
}

/// Item 18: the ack waits for the sync. While the log's sync blocks, no OK arrives; released, it does;
/// a failing sync answers every message of its batch with ERROR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ack_waits_for_the_sync() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let faults = Faults::new(&data);
    let server = start(&data, Some(&faults)).await;
    let mut ws = device(server.addr).await;

    faults.on(Mode::BlockSync);
    send(&mut ws, &updt("0001", "FS", &json!({"v": 1}))).await;
    assert_silent(&mut ws, Duration::from_millis(800)).await;
    faults.off(Mode::BlockSync);
    assert_eq!(
        recv_json(&mut ws).await,
        json!({"type": "INFO", "message": "0001:FS:OK"})
    );

    faults.on(Mode::EioSync);
    let replies = pipeline(&mut ws, "FS", 2..=9).await;
    assert_all_refused(&replies, "FS", 2);
    faults.off(Mode::EioSync);
    send_ok(&mut ws, "0010", "FS", &json!({"v": 10})).await;
    server.kill().await;
}

/// Item 5: creating the data directory, the log directory and a segment syncs their parents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_directories_are_synced_in_their_parents() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new(dir.path()).with_sync_log();
    let root = faults.watched().to_path_buf();
    let data = root.join("x").join("y").join("data");
    let server = start(&data, Some(&faults)).await;
    let synced: Vec<PathBuf> = faults
        .synced()
        .into_iter()
        .filter(|(call, _)| call == "fsync")
        .map(|(_, path)| path)
        .collect();
    for parent in [
        root.clone(),
        root.join("x"),
        root.join("x").join("y"),
        data.clone(),
        data.join("wal"),
    ] {
        assert!(
            synced.contains(&parent),
            "{} synced: {synced:?}",
            parent.display()
        );
    }
    server.kill().await;
}

/// Issue 9 item 4: an update answered ERROR (its commit failed) is visible nowhere — not in the API —
/// and is not stored by the device's next successful write either (`ingest` applies updates to
/// copies and shows them only after their commit). Before, the fleet kept the refused value and the
/// next write of the device stored it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_stores_nothing_even_after_the_next_write() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let faults = Faults::new(&data);
    let server = start(&data, Some(&faults)).await;
    let (_a, mut b) = two_devices(&server).await;
    faults.on(Mode::Enospc);
    let replies = pipeline(&mut b, "FB", 2..=9).await;
    assert_all_refused(&replies, "FB", 2);
    faults.off(Mode::Enospc);
    assert_eq!(
        server.value("FB").await,
        1,
        "the API shows no refused value"
    );
    send_ok(&mut b, "0010", "FB", &json!({"w": 1})).await;
    server.kill().await;
    let server = start(&data, None).await;
    assert_eq!(server.value("FB").await, 1, "no refused value stored");
    server.kill().await;
}

/// Issue 9 item 4, the pipelined case: while a commit is blocked in its sync, the device sends more,
/// staged on top of it; then that sync fails (once — the disk works again right after). Whatever the
/// server answers for the later messages, every OK is stored and nothing of an ERROR is, in the API
/// and after SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_queued_behind_a_failed_commit_store_nothing_they_were_not_acked_for() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let faults = Faults::new(&data);
    let server = start(&data, Some(&faults)).await;
    let mut dev = device(server.addr).await;
    send_ok(&mut dev, "0001", "FP", &json!({"v": 1})).await;

    faults.on(Mode::BlockSync);
    send(&mut dev, &updt("0002", "FP", &json!({"a": 2}))).await;
    // Let the writer take it and block in its sync, then queue two more on top of it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    send(&mut dev, &updt("0003", "FP", &json!({"b": 3}))).await;
    send(&mut dev, &updt("0004", "FP", &json!({"c": 4}))).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    faults.on(Mode::EioOnce);
    faults.off(Mode::BlockSync);
    let replies = [
        recv_json(&mut dev).await,
        recv_json(&mut dev).await,
        recv_json(&mut dev).await,
    ];
    assert_eq!(replies[0]["message"], "0002:FP:ERROR", "{}", replies[0]);
    send_ok(&mut dev, "0005", "FP", &json!({"d": 5})).await;

    let check = |record: &Value| {
        assert!(
            record.get("a").is_none(),
            "a refused write is visible: {record}"
        );
        for (reply, key, value) in [(&replies[1], "b", 3), (&replies[2], "c", 4)] {
            let ok = reply["message"].as_str().unwrap().ends_with(":OK");
            if ok {
                assert_eq!(record[key], value, "{reply} but {record}");
            } else {
                assert!(record.get(key).is_none(), "{reply} but {record}");
            }
        }
        assert_eq!(
            (record["v"].clone(), record["d"].clone()),
            (json!(1), json!(5)),
            "{record}"
        );
    };
    let live = http_get(server.addr, "/api/devices/FP", &[]).await.json();
    check(&live);
    server.kill().await;
    let server = start(&data, None).await;
    check(&http_get(server.addr, "/api/devices/FP", &[]).await.json());
    server.kill().await;
}

/// One log frame of segment `seq` (the format of `wal.rs`: length, crc32 of segment, length and
/// payload, payload).
fn frame(seq: u64, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&seq.to_le_bytes());
    crc.update(&len.to_le_bytes());
    crc.update(payload);
    let mut out = len.to_le_bytes().to_vec();
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Item 2: stored records that cannot be read at start — bad JSON and nesting beyond the parser's
/// limit in sled, a log record without a readable serial — are quarantined: logged at ERROR, counted
/// in /metrics, kept on disk; the other devices load and work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_stored_records_are_quarantined_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start(&data, None).await;
    let mut ws = device(server.addr).await;
    send_ok(&mut ws, "0001", "FQ", &json!({"v": 1})).await;
    let mut other = http_get(server.addr, "/api/devices/FQ", &[]).await.json();
    drop(ws);
    server.kill().await;

    let bad_json = br#"{"serial_number": "FBAD", "battery": "#.to_vec();
    let deep = format!(
        r#"{{"serial_number":"FDEEP","x":{}{}}}"#,
        "[".repeat(300),
        "]".repeat(300)
    )
    .into_bytes();
    {
        let db = sled::open(data.join("sled")).unwrap();
        let devices = db.open_tree("devices").unwrap();
        devices.insert("FBAD", bad_json.clone()).unwrap();
        devices.insert("FDEEP", deep.clone()).unwrap();
        db.flush().unwrap();
    }
    let wal = data.join("wal");
    let seq = segments(&wal).last().map_or(0, |s| s + 1);
    other["serial_number"] = json!("FR");
    other["v"] = json!(2);
    let mut bytes = frame(seq, b"[\"no serial here\"]");
    bytes.extend(frame(seq, other.to_string().as_bytes()));
    std::fs::write(wal.join(format!("{seq:020}.log")), bytes).unwrap();

    let server = start(&data, None).await;
    assert_eq!(server.value("FQ").await, 1);
    assert_eq!(
        server.value("FR").await,
        2,
        "replay went on after the bad frame"
    );
    let metrics = http_get(server.addr, "/metrics", &[]).await.body;
    assert!(
        metrics.contains("\nsmart_store_quarantined_records 3\n"),
        "{metrics}"
    );
    let log = server.log();
    for key in ["FBAD", "FDEEP", &format!("wal:{seq}:1")] {
        assert!(
            log.lines()
                .any(|l| l.contains("ERROR") && l.contains("quarantined") && l.contains(key)),
            "{key} logged at ERROR: {log}"
        );
    }
    let mut ws = device(server.addr).await;
    send_ok(&mut ws, "0002", "FQ", &json!({"v": 3})).await;
    server.kill().await;

    let db = sled::open(data.join("sled")).unwrap();
    let quarantine = db.open_tree("quarantine").unwrap();
    assert_eq!(quarantine.get("FBAD").unwrap().unwrap().as_ref(), bad_json);
    assert_eq!(quarantine.get("FDEEP").unwrap().unwrap().as_ref(), deep);
    assert_eq!(
        quarantine
            .get(format!("wal:{seq}:1"))
            .unwrap()
            .unwrap()
            .as_ref(),
        b"[\"no serial here\"]"
    );
}
