//! Idle device connections are parked (device/park.rs): no task, no buffer, the socket out of the
//! runtime. The servers here park after 500 ms of silence (`--park-after`; the default is 10 s). Everything a device may do still works on a parked connection, on the real binary:
//! its next message is acked in order, a half-sent message keeps it awake, pings and the idle timeout
//! still come, a revoked token and shutdown still close it.
#![allow(clippy::unwrap_used)]

mod common;

use std::ffi::OsStr;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

const PASSWORD: &str = "correct horse battery staple";

/// Read server frames from a raw socket until `count` have arrived.
async fn frames(stream: &mut TcpStream, count: usize) -> Vec<(u8, Vec<u8>)> {
    let mut bytes = Vec::new();
    tokio::time::timeout(TIMEOUT, async {
        loop {
            let got = server_frames(&bytes);
            if got.len() >= count {
                return got;
            }
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed after {got:?}");
            bytes.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("timed out waiting for frames")
}

/// The close frame the server sends on `ws` within `within` (other frames are skipped).
async fn close_frame(ws: &mut Ws, within: Duration, when: &str) -> CloseFrame {
    tokio::time::timeout(within, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.unwrap(),
                Some(Ok(_)) => {}
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("a parked connection was not closed {when}"))
}

fn text(frame: &(u8, Vec<u8>)) -> String {
    assert_eq!(frame.0, 0x1, "not a text frame: {frame:?}");
    String::from_utf8(frame.1.clone()).unwrap()
}

fn ok_text(mid: &str, serial: &str) -> serde_json::Value {
    json!({"type": "INFO", "message": format!("{mid}:{serial}:OK")})
}

fn json_of(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap()
}

#[tokio::test]
async fn parked_devices_are_acked_in_order_and_a_half_sent_message_keeps_one_awake() {
    let dir = tempfile::tempdir().unwrap();
    let (_child, addr) = spawn_binary_with(dir.path(), &[], &["--park-after", "500"]).await;
    let (mut dash, _) = dashboard(addr).await;

    let mut devices = Vec::new();
    for i in 0..20 {
        let mut ws = device(addr).await;
        send_ok(&mut ws, "0001", &format!("P{i:03}"), &json!({"battery": i})).await;
        devices.push(ws);
    }
    until_parked(addr, 20, &[]).await;
    // Back from the lot: three pipelined messages each, acked in order, shown to the dashboard.
    for (i, ws) in devices.iter_mut().enumerate() {
        let serial = format!("P{i:03}");
        for mid in ["0002", "0003", "0004"] {
            send(ws, &updt(mid, &serial, &json!({"battery": 100 + i}))).await;
        }
        for mid in ["0002", "0003", "0004"] {
            assert_eq!(recv_json(ws).await, ok_text(mid, &serial));
        }
    }
    // The dashboard saw the first update of the last device, then its three from the lot.
    let mut seen = Vec::new();
    while seen.last() != Some(&json!(119)) {
        let (_, body) = next_updt_for(&mut dash, "P019").await;
        seen.push(body["battery"].clone());
        assert!(seen.len() <= 4, "{seen:?}");
    }
    assert_eq!(seen[0], 19);
    until_parked(addr, 20, &[]).await;

    // A message sent in fragments, with a ping between them and a pause longer than a parked
    // connection waits: the half-sent message keeps the connection in its task, and is acked whole.
    let (status, mut raw) = upgrade_raw(addr, "/update/", None, &[]).await;
    assert_eq!(status, 101);
    assert_eq!(text(&frames(&mut raw, 1).await[0]), DEVICE_WELCOME);
    until_parked(addr, 21, &[]).await;
    let message = updt("0001", "R001", &json!({"battery": 77}));
    let (head, tail) = message.as_bytes().split_at(20);
    let mut first = client_frame(0x1, head);
    first[0] &= 0x7f; // not final
    raw.write_all(&first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        parked(addr, &[]).await,
        20,
        "a half-sent message was parked"
    );
    let mut rest = client_frame(0x9, b"still here");
    rest.extend(client_frame(0x0, tail));
    raw.write_all(&rest).await.unwrap();
    let got = frames(&mut raw, 2).await;
    assert_eq!(got[0], (0xa, b"still here".to_vec()), "the pong: {got:?}");
    assert_eq!(json_of(&text(&got[1])), ok_text("0001", "R001"));
    until_parked(addr, 21, &[]).await;

    // The first frame in the same packet as the upgrade request.
    let mut request = format!(
        "GET /update/ HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .into_bytes();
    request.extend(client_frame(
        0x1,
        updt("0001", "R002", &json!({"battery": 1})).as_bytes(),
    ));
    let mut eager = TcpStream::connect(addr).await.unwrap();
    eager.write_all(&request).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        assert_eq!(eager.read(&mut byte).await.unwrap(), 1);
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    let got = frames(&mut eager, 2).await;
    assert_eq!(text(&got[0]), DEVICE_WELCOME);
    assert_eq!(json_of(&text(&got[1])), ok_text("0001", "R002"));
    until_parked(addr, 22, &[]).await;

    // A close from a parked device is answered, and it leaves the lot.
    raw.write_all(&client_frame(0x8, &1000u16.to_be_bytes()))
        .await
        .unwrap();
    let bytes = read_until_closed(&mut raw, TIMEOUT).await.unwrap();
    assert_eq!(
        server_frames(&bytes),
        [(0x8, 1000u16.to_be_bytes().to_vec())]
    );
    until_parked(addr, 21, &[]).await;
}

#[tokio::test]
async fn parked_devices_are_pinged_timed_out_revoked_and_shut_down() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let tokens: Vec<String> = ["0001", "0002", "0003"]
        .iter()
        .map(|serial| issue(dir.path(), serial))
        .collect();
    let (_, err, ok) = cli(
        dir.path(),
        &["user", "add", "ops", "--role", "viewer"],
        &format!("{PASSWORD}\n"),
    );
    assert!(ok, "{err}");
    let login = basic("ops", PASSWORD);
    let auth = [("Authorization", login.as_str())];
    let (mut child, addr) = spawn_binary_env(
        dir.path(),
        &[
            ("SMART_AUTH", OsStr::new("required")),
            ("SMART_IDLE_TIMEOUT", OsStr::new("3")),
            ("SMART_PARK_AFTER", OsStr::new("500")),
        ],
        &log,
    )
    .await;
    let mut answering = device_with(addr, "/update/", Some(&tokens[0])).await;
    let mut revoked = device_with(addr, "/update/", Some(&tokens[1])).await;
    let bearer = format!("Bearer {}", tokens[2]);
    let (status, mut silent) =
        upgrade_raw(addr, "/update/", None, &[("Authorization", &bearer)]).await;
    assert_eq!(status, 101);
    for (ws, serial) in [(&mut answering, "0001"), (&mut revoked, "0002")] {
        let reply = exchange(ws, &updt("0001", serial, &json!({"battery": 1}))).await;
        assert_eq!(reply["message"], format!("0001:{serial}:OK"), "{reply}");
    }
    until_parked(addr, 3, &auth).await;

    // A revoked token closes its parked connection with 1008, and what it sends after the
    // revocation is not taken (the lot checks before it reads).
    let (_, err, ok) = cli(dir.path(), &["token", "revoke", "0002"], "");
    assert!(ok, "{err}");
    revoked
        .send(Message::text(updt("0002", "0002", &json!({"battery": 2}))))
        .await
        .unwrap();
    let close = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match revoked.next().await {
                Some(Ok(Message::Close(frame))) => return frame.unwrap(),
                Some(Ok(Message::Text(text))) => {
                    panic!("a revoked token's write was answered: {text}")
                }
                Some(Ok(_)) => {}
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("a revoked token's connection was not closed");
    assert_eq!(u16::from(close.code), 1008, "{close:?}");

    // Parked and silent: pinged at half the idle timeout, closed with 1001 at its end. Parked and
    // answering (tungstenite answers pings while `next` is polled): pinged, and kept.
    let started = tokio::time::Instant::now();
    let (pings, bytes) = tokio::join!(
        async {
            let mut pings = 0;
            while let Ok(Some(Ok(msg))) =
                tokio::time::timeout_at(started + Duration::from_secs(5), answering.next()).await
            {
                assert!(matches!(msg, Message::Ping(_)), "{msg:?}");
                pings += 1;
            }
            pings
        },
        read_until_closed(&mut silent, Duration::from_secs(10))
    );
    let bytes = bytes.expect("a silent parked connection was never closed");
    let got = server_frames(&bytes);
    assert_eq!(got[0].0, 0x1, "the welcome first: {got:?}");
    assert_eq!(got[1], (0x9, Vec::new()), "then a ping: {got:?}");
    let (opcode, payload) = got.last().unwrap();
    assert_eq!(*opcode, 0x8);
    assert_eq!(&payload[..2], 1001u16.to_be_bytes());
    assert_eq!(&payload[2..], b"idle timeout");
    assert!(pings >= 1, "the answering device was never pinged");
    let reply = exchange(
        &mut answering,
        &updt("0002", "0001", &json!({"battery": 2})),
    )
    .await;
    assert_eq!(reply["message"], "0002:0001:OK", "{reply}");

    // Shutdown closes parked connections with 1001 too, and the server exits.
    until_parked(addr, 1, &auth).await;
    let pid = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let close = close_frame(&mut answering, TIMEOUT, "at shutdown").await;
    assert_eq!(u16::from(close.code), 1001, "{close:?}");
    assert_eq!(close.reason.as_str(), "server shutting down");
    let status = tokio::time::timeout(TIMEOUT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// By default (`--park-after` 10 s) every connection parks once welcomed, and a device that only
/// reports stays there: its frames are served on the lot's thread (device/attend.rs). One that sends
/// something the lot leaves to a task (a binary frame, a frame in two reads) gets a task, and keeps
/// it while active.
#[tokio::test]
async fn reporting_devices_are_served_in_the_lot_and_others_keep_a_task() {
    let dir = tempfile::tempdir().unwrap();
    let (_child, addr) = spawn_binary(dir.path()).await;
    let (mut dash, _) = dashboard(addr).await;
    let _quiet = device(addr).await;
    let mut speaker = device(addr).await;
    let mut odd = device(addr).await;
    until_parked(addr, 3, &[]).await;

    // One at a time, then pipelined: acked in order, shown, and still in the lot.
    send_ok(&mut speaker, "0001", "S001", &json!({"battery": 1})).await;
    for mid in ["0002", "0003", "0004"] {
        let battery: u32 = mid.parse().unwrap();
        send(
            &mut speaker,
            &updt(mid, "S001", &json!({"battery": battery})),
        )
        .await;
    }
    // A bad frame among them gets its ERROR in its place, and changes nothing.
    send(&mut speaker, "{not json").await;
    send(&mut speaker, &updt("0005", "S001", &json!({"battery": 5}))).await;
    for mid in ["0002", "0003", "0004"] {
        assert_eq!(recv_json(&mut speaker).await, ok_text(mid, "S001"));
    }
    let error = recv_json(&mut speaker).await;
    assert_eq!(error["message"], "ERROR", "{error}");
    assert_eq!(recv_json(&mut speaker).await, ok_text("0005", "S001"));
    let mut seen = Vec::new();
    while seen.last() != Some(&json!(5)) {
        let (_, body) = next_updt_for(&mut dash, "S001").await;
        seen.push(body["battery"].clone());
        assert!(seen.len() <= 5, "{seen:?}");
    }
    assert_eq!(seen, [1, 2, 3, 4, 5].map(|n| json!(n)));
    // A ping from the device is answered there too.
    speaker
        .send(Message::Ping(b"hi".to_vec().into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(TIMEOUT, speaker.next()).await.unwrap();
    assert!(
        matches!(&pong, Some(Ok(Message::Pong(payload))) if payload.as_ref() == b"hi"),
        "{pong:?}"
    );
    assert_eq!(
        parked(addr, &[]).await,
        3,
        "a reporting device left the lot"
    );

    // A binary frame is for a task: the connection leaves the lot, is answered there, and keeps
    // its task while it goes on reporting.
    odd.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    let error = recv_json(&mut odd).await;
    assert_eq!(error["message"], "ERROR", "{error}");
    until_parked(addr, 2, &[]).await;
    send_ok(&mut odd, "0001", "S002", &json!({"battery": 2})).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    send_ok(&mut odd, "0002", "S002", &json!({"battery": 3})).await;
    assert_eq!(parked(addr, &[]).await, 2);
    send_ok(&mut speaker, "0006", "S001", &json!({"battery": 6})).await;
    assert_eq!(parked(addr, &[]).await, 2);

    // A frame whose bytes come in two reads is the task's too: the lot hands over what it read.
    let (status, mut raw) = upgrade_raw(addr, "/update/", None, &[]).await;
    assert_eq!(status, 101);
    assert_eq!(text(&frames(&mut raw, 1).await[0]), DEVICE_WELCOME);
    until_parked(addr, 3, &[]).await;
    let frame = client_frame(0x1, updt("0001", "S003", &json!({"battery": 4})).as_bytes());
    raw.write_all(&frame[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    raw.write_all(&frame[10..]).await.unwrap();
    let got = frames(&mut raw, 1).await;
    assert_eq!(json_of(&text(&got[0])), ok_text("0001", "S003"));
    assert_eq!(parked(addr, &[]).await, 2);
}

/// The names of `pid`'s threads (`/proc/PID/task/TID/comm`).
fn thread_names(pid: u32) -> Vec<String> {
    let mut names = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        if let Ok(name) = std::fs::read_to_string(task.path().join("comm")) {
            names.push(name.trim().to_owned());
        }
    }
    names
}

/// How often each of `pid`'s threads named `name` went to sleep, by thread id.
fn sleeps(pid: u32, name: &str) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        if status.lines().next() != Some(&format!("Name:\t{name}")) {
            continue;
        }
        let switches = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        out.insert(task.file_name().to_string_lossy().into_owned(), switches);
    }
    out
}

/// `--device-threads 2`: two lots, new connections spread over them, each serving its devices.
#[tokio::test]
async fn device_connections_spread_over_the_lots() {
    if !std::path::Path::new("/proc/self/task").exists() {
        eprintln!("no /proc: skipping");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (child, addr) = spawn_binary_with(dir.path(), &[], &["--device-threads", "2"]).await;
    let pid = child.id().unwrap();
    let mut devices = Vec::new();
    for _ in 0..6 {
        devices.push(device(addr).await);
    }
    until_parked(addr, 6, &[]).await;
    // (A thread names itself once it runs: by now both have.)
    let lots = thread_names(pid)
        .iter()
        .filter(|name| *name == "device-park")
        .count();
    assert_eq!(lots, 2, "{:?}", thread_names(pid));
    let before = sleeps(pid, "device-park");
    // Every device, whichever lot holds it, is acked in order there and stays parked.
    for round in 1..=3u32 {
        for (i, ws) in devices.iter_mut().enumerate() {
            let serial = format!("L{i:03}");
            let mids: Vec<String> = (0..2).map(|k| format!("{:04}", round * 10 + k)).collect();
            for mid in &mids {
                send(ws, &updt(mid, &serial, &json!({"battery": round}))).await;
            }
            for mid in &mids {
                assert_eq!(recv_json(ws).await, ok_text(mid, &serial));
            }
        }
    }
    assert_eq!(parked(addr, &[]).await, 6);
    // Both lots served (each woke for its three devices' nine exchanges, at least).
    let after = sleeps(pid, "device-park");
    for (thread, n) in &after {
        let served = n - before.get(thread).copied().unwrap_or(0);
        assert!(
            served >= 6,
            "lot thread {thread} woke {served} times: {before:?} -> {after:?}"
        );
    }
    // One closing leaves its lot for a task, which closes it; the others go on.
    let mut gone = devices.pop().unwrap();
    gone.close(None).await.unwrap();
    until_parked(addr, 5, &[]).await;
    send_ok(&mut devices[0], "0100", "L000", &json!({"battery": 9})).await;
    assert_eq!(parked(addr, &[]).await, 5);
}
