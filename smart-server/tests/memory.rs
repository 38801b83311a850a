//! Server memory per idle device connection (target: ≤ 16 KiB), measured on the real binary as the
//! growth of its resident set while connections are opened.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::*;
use serde_json::json;

/// Connections opened for the measurement (the client side lives in this process).
const CONNECTIONS: usize = 2000;
/// Target from the issue.
const BUDGET: usize = 16 * 1024;

/// Resident set of a process, in bytes.
fn rss(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_device_connections_stay_small() {
    if !Path::new("/proc/self/status").exists() {
        eprintln!("no /proc: skipping the memory measurement");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (child, addr) = spawn_binary(dir.path()).await;
    let pid = child.id().unwrap();

    // Warm up: the first connections allocate runtime and store structures once.
    let mut warm = Vec::new();
    for i in 0..50 {
        let mut ws = device(addr).await;
        send_ok(&mut ws, "0001", &format!("W{i:04}"), &json!({"battery": 1})).await;
        warm.push(ws);
    }
    let before = rss(pid);

    let mut sockets = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS {
        let mut ws = device(addr).await;
        // A registered device that then sits idle: one update, acked.
        send_ok(
            &mut ws,
            "0001",
            &format!("D{i:05}"),
            &json!({"battery": 50, "country": "AT"}),
        )
        .await;
        sockets.push(ws);
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let after = rss(pid);
    let per_connection = after.saturating_sub(before) / CONNECTIONS;
    eprintln!(
        "server RSS {} KiB -> {} KiB for {CONNECTIONS} idle device connections: {} bytes each",
        before / 1024,
        after / 1024,
        per_connection
    );
    assert!(
        per_connection <= BUDGET,
        "{per_connection} bytes per idle connection (budget {BUDGET})"
    );
    drop(sockets);
    drop(warm);
}
