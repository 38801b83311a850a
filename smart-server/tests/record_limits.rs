//! Record limits (`--max-extras`, `--max-record-bytes`) on the real binary: a message beyond them gets
//! `MID:SERIAL:ERROR` with a reason and stores nothing — not in the API, not on dashboards, not in a
//! later write of the same device, not after a restart (PROTOCOL.md §5, issue 9 items 1, 4 and 10).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{Value, json};

fn error_reason(reply: &Value, mid: &str, serial: &str) -> String {
    assert_eq!(reply["type"], "INFO", "{reply}");
    assert_eq!(reply["message"], format!("{mid}:{serial}:ERROR"), "{reply}");
    reply["reason"].as_str().unwrap().to_owned()
}

async fn api_record(addr: std::net::SocketAddr, serial: &str) -> Value {
    let res = http_get(addr, &format!("/api/devices/{serial}"), &[]).await;
    assert_eq!(res.status, 200, "{}", res.body);
    res.json()
}

#[tokio::test]
async fn a_message_beyond_max_extras_is_refused_whole_and_never_stored() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = spawn_binary_with(dir.path(), &[], &["--max-extras", "3"]).await;
    let (mut dash, _) = dashboard(addr).await;
    let mut dev = device(addr).await;

    send_ok(
        &mut dev,
        "0001",
        "D1",
        &json!({"battery": 10, "a": 1, "b": 2}),
    )
    .await;
    let (mid, _) = next_updt_for(&mut dash, "D1").await;
    assert_eq!(mid, "0001");

    // Two more extras make four: the whole message is refused, its battery too.
    let reply = exchange(
        &mut dev,
        &updt("0002", "D1", &json!({"battery": 99, "c": 3, "d": 4})),
    )
    .await;
    let reason = error_reason(&reply, "0002", "D1");
    assert!(reason.contains("extra fields"), "{reason}");
    let rec = api_record(addr, "D1").await;
    assert_eq!(rec["battery"], 10, "{rec}");
    assert!(rec.get("c").is_none() && rec.get("d").is_none(), "{rec}");

    // A later good message of the same device carries nothing of the refused one.
    send_ok(&mut dev, "0003", "D1", &json!({"capacity": 5})).await;
    let (mid, body) = next_updt_for(&mut dash, "D1").await;
    assert_eq!(
        mid, "0003",
        "the refused message never reached the dashboard"
    );
    assert!(
        body.get("battery").is_none() && body.get("c").is_none(),
        "{body}"
    );
    // Replacing an extra does not add one: still within the limit.
    send_ok(&mut dev, "0004", "D1", &json!({"a": "x", "c": 3})).await;
    let rec = api_record(addr, "D1").await;
    assert_eq!(
        (rec["battery"].clone(), rec["capacity"].clone()),
        (json!(10), json!(5))
    );
    assert_eq!((rec["a"].clone(), rec["c"].clone()), (json!("x"), json!(3)));
    assert!(rec.get("d").is_none(), "{rec}");

    let metrics = http_get(addr, "/metrics", &[]).await.body;
    assert!(
        metrics.contains("smart_messages_rejected_total{reason=\"limit\"} 1"),
        "{metrics}"
    );

    // After a crash, the same.
    child.kill().await.unwrap();
    let (_child, addr) = spawn_binary_with(dir.path(), &[], &["--max-extras", "3"]).await;
    let rec = api_record(addr, "D1").await;
    assert_eq!(
        (rec["battery"].clone(), rec["capacity"].clone()),
        (json!(10), json!(5))
    );
    assert!(rec.get("d").is_none(), "{rec}");
}

#[tokio::test]
async fn a_record_that_would_outgrow_max_record_bytes_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_child, addr) = spawn_binary_with(
        dir.path(),
        &[],
        &["--max-record-bytes", "20000", "--max-extra-bytes", "20000"],
    )
    .await;
    let mut dev = device(addr).await;
    let big = "x".repeat(12_000);

    // Each frame is far below the 64 KiB frame limit; the record grows through extras.
    send_ok(&mut dev, "0001", "D2", &json!({"one": big})).await;
    let reply = exchange(
        &mut dev,
        &updt("0002", "D2", &json!({"two": big, "battery": 7})),
    )
    .await;
    let reason = error_reason(&reply, "0002", "D2");
    assert!(reason.contains("20000"), "{reason}");
    let rec = api_record(addr, "D2").await;
    assert!(rec.get("two").is_none(), "{rec}");
    assert_eq!(rec["battery"], Value::Null, "{rec}");

    // Shrinking is fine, and other devices were never affected.
    send_ok(&mut dev, "0003", "D2", &json!({"one": "small", "two": big})).await;
    send_ok(&mut dev, "0004", "D3", &json!({"battery": 1})).await;
    assert_eq!(api_record(addr, "D2").await["one"], "small");
}

#[tokio::test]
async fn an_extra_value_beyond_max_extra_bytes_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_child, addr) = spawn_binary_with(dir.path(), &[], &["--max-extra-bytes", "100"]).await;
    let mut dev = device(addr).await;
    send_ok(&mut dev, "0001", "D4", &json!({"note": "x".repeat(98)})).await; // 100 bytes as JSON
    let reply = exchange(
        &mut dev,
        &updt("0002", "D4", &json!({"note": "x".repeat(99), "battery": 3})),
    )
    .await;
    let reason = error_reason(&reply, "0002", "D4");
    assert!(
        reason.contains("\"note\"") && reason.contains("100"),
        "{reason}"
    );
    let rec = api_record(addr, "D4").await;
    assert_eq!(rec["note"].as_str().unwrap().len(), 98, "{rec}");
    assert_eq!(rec["battery"], Value::Null, "{rec}");
}
