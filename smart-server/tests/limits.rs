//! Shedding on the real binary: a low file-descriptor limit (run under `prlimit`) and a peer that
//! floods pings without reading must cost neither /healthz nor other devices.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::{connect_async, tungstenite};

async fn metrics(addr: std::net::SocketAddr) -> String {
    let res = http_get(addr, "/metrics", &[]).await;
    assert_eq!(res.status, 200);
    res.body
}

fn prlimit_available() -> bool {
    std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test]
async fn under_a_low_fd_limit_healthz_and_new_devices_are_still_served() {
    assert!(
        prlimit_available(),
        "this test needs prlimit (util-linux) to run the server with 1024 descriptors"
    );
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) =
        spawn_binary_with(dir.path(), &["prlimit", "--nofile=1024:1024", "--"], &[]).await;

    // More idle raw sockets than the server has descriptors: none of them ever sends a byte.
    let mut hogs = Vec::new();
    for _ in 0..1200 {
        hogs.push(
            tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let health = http_get(addr, "/healthz", &[]).await;
    assert_eq!(health.status, 200, "{}", health.body);
    let mut first = device(addr).await;
    send_ok(&mut first, "0001", "0001", &json!({"battery": 1})).await;

    // Idle devices up to the (clamped) websocket cap: the next one is refused with 503.
    let mut idle = Vec::new();
    let refused_at = loop {
        assert!(idle.len() < 1100, "no websocket cap below the fd limit");
        let url = format!("ws://{addr}/update/");
        match tokio::time::timeout(TIMEOUT, connect_async(url))
            .await
            .unwrap()
        {
            Ok((ws, _)) => idle.push(ws),
            Err(tungstenite::Error::Http(res)) => {
                assert_eq!(res.status().as_u16(), 503);
                break idle.len();
            }
            Err(e) => panic!("after {} devices: {e}", idle.len()),
        }
    };
    assert!(refused_at + 1 < 1024, "{refused_at}");
    // Plain HTTP still gets through, and the device that got in still gets its OKs.
    let health = http_get(addr, "/healthz", &[]).await;
    assert_eq!(health.status, 200, "{}", health.body);
    send_ok(&mut first, "0002", "0001", &json!({"battery": 2})).await;

    // A slot freed by a leaving device goes to a new one.
    drop(idle.pop());
    let deadline = Instant::now() + TIMEOUT;
    let mut newcomer = loop {
        match connect_async(format!("ws://{addr}/update/")).await {
            Ok((ws, _)) => break ws,
            Err(tungstenite::Error::Http(res)) if res.status().as_u16() == 503 => {
                assert!(Instant::now() < deadline, "the freed slot never came back");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(recv_text(&mut newcomer).await, DEVICE_WELCOME);
    send_ok(&mut newcomer, "0001", "0002", &json!({"battery": 3})).await;

    let text = metrics(addr).await;
    assert!(metric_or_zero(&text, "smart_connections_refused_total{reason=\"limit\"}") >= 1);
    assert!(
        metric_or_zero(&text, "smart_connections_shed_total{reason=\"evicted\"}") >= 1,
        "idle HTTP sockets were closed to make room\n{text}"
    );
    assert_eq!(
        metric_or_zero(&text, "smart_connections_limit{kind=\"websocket\"}"),
        refused_at as u64 + 1
    );
    assert!(child.try_wait().unwrap().is_none(), "the server died");
    drop(hogs);
}

fn vm_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_ping_flood_that_never_reads_is_dropped_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let (child, addr) = spawn_binary(dir.path()).await;
    let pid = child.id().unwrap();
    let mut good = device(addr).await;
    send_ok(&mut good, "0001", "0001", &json!({"battery": 1})).await;
    let base = vm_kib(pid, "VmRSS");

    let (status, mut flood) = upgrade_raw(addr, "/update/", None, &[]).await;
    assert_eq!(status, 101);
    let ping = client_frame(0x9, &[0x55; 125]);
    let batch: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 1000)
        .collect();
    // Up to 2 million pings (260 MB) or 8 seconds, whichever comes first; the other device keeps
    // getting its OKs meanwhile.
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut write_failed = false;
    for i in 0..2000u32 {
        match tokio::time::timeout_at(deadline, flood.write_all(&batch)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                write_failed = true;
                break;
            }
            Err(_) => break,
        }
        if i % 100 == 0 {
            let mid = format!("{:04}", i / 100 + 2);
            send_ok(&mut good, &mid, "0001", &json!({"battery": i % 100})).await;
        }
    }
    let dropped = write_failed
        || read_until_closed(&mut flood, Duration::from_secs(5))
            .await
            .is_some();
    assert!(dropped, "the server still holds a peer that never reads");
    send_ok(&mut good, "9999", "0001", &json!({"battery": 99})).await;

    let peak = vm_kib(pid, "VmHWM");
    eprintln!(
        "server RSS before the flood {base} KiB, peak {peak} KiB; writes failed: {write_failed}"
    );
    assert!(
        peak < base + 8 * 1024,
        "server grew from {base} KiB to a peak of {peak} KiB"
    );
    let text = metrics(addr).await;
    assert_eq!(
        metric_or_zero(
            &text,
            "smart_connections_shed_total{reason=\"not_reading\"}"
        ),
        1,
        "{text}"
    );
    let _ = flood.shutdown().await;
}

#[tokio::test]
async fn an_init_larger_than_the_write_buffer_arrives_whole() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path()).await;
    let mut dev = server.device().await;
    // 600 devices: an INIT of several hundred KiB, far beyond a dashboard's bounded write buffer.
    let long = "x".repeat(200);
    let n = 600;
    for i in 0..n {
        let serial = format!("{i:04}");
        send(
            &mut dev,
            &updt("0001", &serial, &json!({"country": long, "battery": i})),
        )
        .await;
    }
    for i in 0..n {
        let reply = recv_json(&mut dev).await;
        assert_eq!(reply["message"], format!("0001:{i:04}:OK"), "{reply}");
    }
    let (mut dash, records) = server.dashboard().await;
    assert_eq!(records.len(), n);
    let size: usize = records.iter().map(|r| r.to_string().len()).sum();
    assert!(size > 256 * 1024, "the INIT is only {size} bytes");
    assert_eq!(records[n - 1]["battery"], n - 1);
    // The dashboard is still served afterwards.
    send_ok(&mut dev, "0002", "0000", &json!({"battery": 7})).await;
    let (mid, body) = next_updt_for(&mut dash, "0000").await;
    assert_eq!(mid, "0002");
    assert_eq!(body["battery"], 7);
    server.stop().await;
}
