//! Batched UPDTs (`/client/?batch=1`, PROTOCOL.md §7, an extension), on the real binary: a batching
//! dashboard reads the same UPDT strings, in the same order, as a plain one, in fewer frames, each
//! cut byte for byte from the plain frames; INIT stays a frame of its own; dashboards that do not
//! ask get one UPDT per frame, as before.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const DEVICES: usize = 8;
const BURST: usize = 40;
const PLAIN_START: &str = r#"{"type":"UPDT","message":""#;
const BATCH_START: &str = r#"{"type":"UPDT","message":["#;

/// A dashboard at `path` past its welcome; returns it with its INIT frame's text.
async fn dashboard_at(addr: std::net::SocketAddr, path: &str) -> (Ws, String) {
    let mut ws = connect(addr, path).await;
    assert_eq!(recv_text(&mut ws).await, DASHBOARD_WELCOME);
    let init = recv_text(&mut ws).await;
    let records = next_init_records(&init);
    assert_eq!(records.len(), DEVICES, "{init}");
    (ws, init)
}

/// The records of an INIT frame (which must be one: a whole frame of its own, type INIT).
fn next_init_records(frame: &str) -> Vec<Value> {
    let v: Value = serde_json::from_str(frame).unwrap();
    assert_eq!(v["type"], "INIT", "{frame}");
    let records = v["message"].as_array().unwrap().clone();
    assert!(records.iter().all(Value::is_object), "{frame}");
    records
}

/// Read frames until `n` UPDT strings have arrived; returns the frames' texts and the strings in
/// order. Any other frame fails the test, and so do more strings than `n`.
async fn read_updts(ws: &mut Ws, n: usize) -> (Vec<String>, Vec<String>) {
    let (mut frames, mut strings) = (Vec::new(), Vec::new());
    while strings.len() < n {
        let text = recv_text(ws).await;
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["type"], "UPDT", "{text}");
        match &v["message"] {
            Value::String(s) => strings.push(s.clone()),
            Value::Array(list) => {
                assert!(!list.is_empty(), "{text}");
                strings.extend(list.iter().map(|s| s.as_str().unwrap().to_owned()));
            }
            other => panic!("an UPDT message is a string or a list: {other}"),
        }
        frames.push(text);
    }
    assert_eq!(strings.len(), n, "more UPDTs than sent");
    (frames, strings)
}

/// Send `updates` in one write, so that the server takes them in one group commit (or a few), then
/// read their OKs.
async fn burst(dev: &mut Ws, updates: &[(String, String, Value)]) {
    for (mid, serial, body) in updates {
        dev.feed(Message::text(updt(mid, serial, body)))
            .await
            .unwrap();
    }
    tokio::time::timeout(TIMEOUT, dev.flush())
        .await
        .unwrap()
        .unwrap();
    for (mid, serial, _) in updates {
        assert_eq!(
            recv_json(dev).await,
            json!({"type": "INFO", "message": format!("{mid}:{serial}:OK")})
        );
    }
}

/// `BURST` updates over the devices, message ids from `first`; every value differs from the ones
/// before it (from `first` = 2 on), so each UPDT carries both fields.
fn updates(serials: &[String], first: usize) -> Vec<(String, String, Value)> {
    (0..BURST)
        .map(|k| {
            (
                format!("{:04}", first + k),
                serials[k % serials.len()].clone(),
                json!({"battery": (first + k) % 101, "power_income": first + k}),
            )
        })
        .collect()
}

/// A plain dashboard's frames are one UPDT each, its message a string: for `updates`, in their order.
fn assert_plain(frames: &[String], updates: &[(String, String, Value)]) {
    assert_eq!(frames.len(), updates.len(), "one frame per UPDT");
    for (frame, (mid, serial, body)) in frames.iter().zip(updates) {
        assert!(
            frame.starts_with(&format!("{PLAIN_START}{mid}:{serial}:{{")),
            "{frame}"
        );
        let (_, _, got) = parse_updt(&serde_json::from_str(frame).unwrap());
        assert_eq!(got["battery"], body["battery"], "{frame}");
        assert_eq!(got["power_income"], body["power_income"], "{frame}");
        assert!(got["last_status_update"].is_string(), "{frame}");
    }
}

/// A batching dashboard's frames hold the plain frames' strings in the same order, as lists, each
/// list frame exactly the plain frames' JSON string literals joined by commas; returns how many
/// frames that took.
fn assert_batched(
    batched: &(Vec<String>, Vec<String>),
    plain: &(Vec<String>, Vec<String>),
) -> usize {
    let ((batched_frames, batched_strings), (plain_frames, plain_strings)) = (batched, plain);
    assert_eq!(
        batched_strings, plain_strings,
        "the same UPDTs in the same order"
    );
    let mut literals = plain_frames
        .iter()
        .map(|f| &f[PLAIN_START.len() - 1..f.len() - 1]);
    for frame in batched_frames {
        assert!(frame.starts_with(BATCH_START), "{frame}");
        let n = serde_json::from_str::<Value>(frame).unwrap()["message"]
            .as_array()
            .unwrap()
            .len();
        let joined: Vec<&str> = literals.by_ref().take(n).collect();
        assert_eq!(
            *frame,
            format!("{BATCH_START}{}]}}", joined.join(",")),
            "cut from the plain frames, not written again"
        );
    }
    batched_frames.len()
}

#[tokio::test]
async fn batched_dashboards_get_the_same_updts_as_lists_and_others_one_per_frame() {
    let dir = tempfile::tempdir().unwrap();
    let (_child, addr) = spawn_binary(dir.path()).await;
    // One connection speaks for every device, as a gateway would.
    let mut dev = device(addr).await;
    let serials: Vec<String> = (1..=DEVICES).map(|i| format!("{i:04}")).collect();
    for serial in &serials {
        send_ok(&mut dev, "0001", serial, &json!({"battery": 1})).await;
    }
    let (mut plain, plain_init) = dashboard_at(addr, "/client/").await;
    let (mut batched, batched_init) = dashboard_at(addr, "/client/?batch=1").await;
    let (mut other, _) = dashboard_at(addr, "/client/?batch=0&view=1").await;
    assert_eq!(batched_init, plain_init, "the same INIT frame");

    // A burst: the writer commits it in one group commit (or a few), the dashboards take it at once.
    let first = updates(&serials, 2);
    burst(&mut dev, &first).await;
    let plain_got = read_updts(&mut plain, BURST).await;
    assert_plain(&plain_got.0, &first);
    let other_got = read_updts(&mut other, BURST).await;
    assert_plain(&other_got.0, &first);
    let batched_got = read_updts(&mut batched, BURST).await;
    let frames = assert_batched(&batched_got, &plain_got);
    assert!(frames < BURST, "{BURST} UPDTs in {frames} frames");

    // A view (every device matches, so the session follows membership): its INIT is a frame of its
    // own for both, and the UPDTs after it are the same again.
    let filt = json!({"type": "FILT", "message": ["filter:battery:>=:0", "sort:battery:<:123"]})
        .to_string();
    send(&mut plain, &filt).await;
    send(&mut batched, &filt).await;
    let plain_view = next_init_records(&recv_text(&mut plain).await);
    let batched_view = next_init_records(&recv_text(&mut batched).await);
    assert_eq!(batched_view, plain_view);
    assert_eq!(plain_view.len(), DEVICES);
    let second = updates(&serials, 2 + BURST);
    burst(&mut dev, &second).await;
    let plain_got = read_updts(&mut plain, BURST).await;
    assert_plain(&plain_got.0, &second);
    let batched_got = read_updts(&mut batched, BURST).await;
    let frames = assert_batched(&batched_got, &plain_got);
    assert!(frames < BURST, "{BURST} UPDTs in {frames} frames");
    let _ = read_updts(&mut other, BURST).await;

    // The gateway leaves: every device goes offline at once, `0000:SERIAL:{"online": false}`.
    drop(dev);
    let plain_got = read_updts(&mut plain, DEVICES).await;
    assert_eq!(plain_got.0.len(), DEVICES);
    let batched_got = read_updts(&mut batched, DEVICES).await;
    assert_batched(&batched_got, &plain_got);
    let offline: Vec<String> = plain_got
        .1
        .iter()
        .map(|s| s.split_once(":{").unwrap().1.to_owned())
        .collect();
    assert!(
        offline.iter().all(|body| body == r#""online": false}"#),
        "{offline:?}"
    );
    let other_got = read_updts(&mut other, DEVICES).await;
    assert_eq!(other_got, plain_got, "plain dashboards get the same frames");
    assert_silent(&mut batched, std::time::Duration::from_millis(100)).await;
}
