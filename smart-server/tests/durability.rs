//! Crash safety and graceful shutdown of the real binary: an OK means the update survives SIGKILL;
//! SIGTERM finishes in-flight work, closes with 1001 and exits 0.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::process::Child;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const DEVICES: usize = 8;
/// Messages one device may have unacknowledged at once.
const WINDOW: u32 = 16;

struct Binary {
    child: Child,
    addr: SocketAddr,
}

async fn spawn(dir: &Path) -> Binary {
    // Every message sets its own key `m<n>`, so a device's record grows by one extra per message.
    let (child, addr) = spawn_binary_with(dir, &[], &["--max-extras", "1000000"]).await;
    Binary { child, addr }
}

impl Binary {
    fn signal(&self, signal: &str) {
        let pid = self.child.id().unwrap();
        let status = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

/// What one device got acked: the highest sequence number, and whether the stream ended with a
/// 1001 close.
#[derive(Debug, Default)]
struct Acked {
    last_seq: Option<u32>,
    away: bool,
}

/// Send numbered updates for `serial` as fast as acks allow, `WINDOW` in flight, until the
/// connection goes away. Each message `n` sets `seq = n` and its own key `m<n>`.
async fn hammer(addr: SocketAddr, serial: String) -> Acked {
    let mut ws = device(addr).await;
    let mut acked = Acked::default();
    let mut next = 0u32;
    let mut expected = std::collections::VecDeque::new();
    loop {
        while next < 100_000 && expected.len() < WINDOW as usize {
            let body = json!({"seq": next, format!("m{next}"): next, "battery": next % 100});
            let frame = updt(&format!("{:04}", next % 10_000), &serial, &body);
            if ws.feed(Message::text(frame)).await.is_err() {
                return acked;
            }
            expected.push_back(next);
            next += 1;
        }
        if ws.flush().await.is_err() {
            return acked;
        }
        match tokio::time::timeout(TIMEOUT, ws.next()).await.unwrap() {
            Some(Ok(Message::Text(text))) => {
                let reply: Value = serde_json::from_str(&text).unwrap();
                assert!(
                    reply["message"].as_str().unwrap().ends_with(":OK"),
                    "{reply}"
                );
                acked.last_seq = expected.pop_front();
            }
            Some(Ok(Message::Close(frame))) => {
                acked.away = frame.is_some_and(|f| f.code == CloseCode::Away);
                return acked;
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return acked,
        }
    }
}

/// Every acked update is in the record: `seq` is at least the last acked one and every acked
/// message's own key is there.
fn assert_has_acked(record: &Value, acked: &Acked) {
    let Some(last) = acked.last_seq else { return };
    let serial = &record["serial_number"];
    let stored = record["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("{serial}: no seq"));
    assert!(
        stored >= u64::from(last),
        "{serial}: stored seq {stored} < acked {last}"
    );
    for n in 0..=last {
        assert_eq!(record[format!("m{n}")], n, "{serial}: acked m{n} missing");
    }
}

async fn fleet(addr: SocketAddr) -> BTreeMap<String, Value> {
    let res = http_get(addr, "/api/devices", &[]).await;
    assert_eq!(res.status, 200);
    res.json()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["serial_number"].as_str().unwrap().to_owned(), r.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acked_update() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = spawn(dir.path()).await;
    let devices: Vec<_> = (0..DEVICES)
        .map(|i| tokio::spawn(hammer(server.addr, format!("K{i:03}"))))
        .collect();
    // Past the first checkpoint (1 s), so both sled and the log hold acked updates.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.child.start_kill().unwrap();
    let status = tokio::time::timeout(TIMEOUT, server.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(!status.success(), "killed, not exited: {status:?}");

    let mut acked = Vec::new();
    for device in devices {
        acked.push(
            tokio::time::timeout(TIMEOUT, device)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let total: u32 = acked.iter().filter_map(|a| a.last_seq.map(|s| s + 1)).sum();
    assert!(
        total > 50,
        "the devices got going before the kill ({total} acks)"
    );

    let server = spawn(dir.path()).await;
    let records = fleet(server.addr).await;
    for (i, acked) in acked.iter().enumerate() {
        let serial = format!("K{i:03}");
        if acked.last_seq.is_none() {
            continue;
        }
        let record = records
            .get(&serial)
            .unwrap_or_else(|| panic!("{serial} lost"));
        assert_has_acked(record, acked);
        assert_eq!(record["online"], false);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_work_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = spawn(dir.path()).await;
    let devices: Vec<_> = (0..DEVICES)
        .map(|i| tokio::spawn(hammer(server.addr, format!("T{i:03}"))))
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    server.signal("-TERM");
    let status = tokio::time::timeout(TIMEOUT, server.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "graceful exit with 0: {status:?}");

    let mut acked = Vec::new();
    for device in devices {
        acked.push(
            tokio::time::timeout(TIMEOUT, device)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    for (i, a) in acked.iter().enumerate() {
        assert!(a.away, "T{i:03} was closed with 1001: {a:?}");
        assert!(a.last_seq.is_some(), "T{i:03} got acks");
    }

    let server = spawn(dir.path()).await;
    let records = fleet(server.addr).await;
    assert_eq!(records.len(), DEVICES);
    for (i, acked) in acked.iter().enumerate() {
        let record = &records[&format!("T{i:03}")];
        assert_has_acked(record, acked);
        // Graceful: what was read was answered, so nothing beyond the last OK was applied.
        assert_eq!(
            record["seq"].as_u64(),
            acked.last_seq.map(u64::from),
            "T{i:03}"
        );
        assert_eq!(record["online"], false);
    }
}
