//! The `/update/` endpoint (PROTOCOL.md §2–§5): acks, errors, ordering, registration, online state.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use smart_server::{Config, Registration};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const SEED_INIT: &str = r#"{'type': 'INIT', 'message': '0000:0001:{"serial_number": "0001", "solmate_version": "v1", "_software_version": "v8.6", "_country": "DE", "_postcode": 7445, "_power_income": 377, "_power_inject": 336, "_power_consumption": 400, "_battery": 250, "_capacity": 5184000, "_local_time": null, "server_url": "ws://localhost:8000/update/", "websocket": "", "connected": true, "publish": true, "message_id": "0000", "message_queue": {}, "tasks": "", "meassuring": true, "charging": false, "injecting": false, "pv_connectors": 1}'}"#;
const SEED_FIRST_UPDT: &str = r#"{'type': 'UPDT', 'message': '0000:0001:{"battery": 350, "software_version": "v2.0", "country": "AT", "postcode": 9733, "power_income": 388, "power_inject": 357, "power_consumption": 289}'}"#;
const SEED_UPDT: &str = r#"{'type': 'UPDT', 'message': '0116:0001:{"power_consumption": 357}'}"#;

fn ok(mid: &str, serial: &str) -> Value {
    json!({"type": "INFO", "message": format!("{mid}:{serial}:OK")})
}

#[tokio::test]
async fn seed_init_is_stored_normalized() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path()).await;
    let mut dev = server.device().await;

    assert_eq!(exchange(&mut dev, SEED_INIT).await, ok("0000", "0001"));
    let rec = record(&server, "0001").await;
    assert_eq!(rec["serial_number"], "0001");
    assert_eq!(rec["software_version"], "v8.6");
    assert_eq!(rec["country"], "DE");
    assert_eq!(rec["postcode"], "7445");
    assert_eq!(rec["power_income"], 377);
    assert_eq!(rec["power_inject"], 336);
    assert_eq!(rec["power_consumption"], 400);
    assert_eq!(rec["battery"], 250);
    assert_eq!(rec["capacity"], 5_184_000);
    assert_eq!(rec["local_time"], Value::Null);
    assert_eq!(rec["pv_connectors"], 1);
    assert_eq!(rec["meassuring"], true);
    assert_eq!(rec["charging"], false);
    assert_eq!(rec["injecting"], false);
    assert_eq!(rec["owner"], "EET");
    assert_eq!(rec["online"], true);
    for runtime_key in [
        "server_url",
        "websocket",
        "connected",
        "publish",
        "message_id",
        "message_queue",
        "tasks",
    ] {
        assert!(
            rec.get(runtime_key).is_none(),
            "{runtime_key} must not be stored: {rec}"
        );
    }
    assert!(rec["manufacturing_date"].as_str().unwrap().ends_with('Z'));
    assert_eq!(rec["manufacturing_date"], rec["last_status_update"]);
    server.stop().await;
}

#[tokio::test]
async fn seed_updates_and_server_fields() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path()).await;
    let mut dev = server.device().await;

    // An unknown device may start with a plain UPDT (registration is open).
    assert_eq!(
        exchange(&mut dev, SEED_FIRST_UPDT).await,
        ok("0000", "0001")
    );
    let first = record(&server, "0001").await;
    assert_eq!(first["battery"], 350);
    assert_eq!(first["postcode"], "9733");
    assert_eq!(first["solmate_version"], "v1");

    tokio::time::sleep(Duration::from_millis(5)).await;
    // The exact reply of the seed, compared as JSON.
    let reply = exchange(&mut dev, SEED_UPDT).await;
    assert_eq!(
        reply,
        serde_json::from_str::<Value>(r#"{"type": "INFO", "message": "0116:0001:OK"}"#).unwrap()
    );
    let rec = record(&server, "0001").await;
    assert_eq!(rec["power_consumption"], 357);
    assert_eq!(rec["battery"], 350, "fields not in the update are kept");
    assert_eq!(rec["manufacturing_date"], first["manufacturing_date"]);
    assert!(
        rec["last_status_update"].as_str().unwrap() > first["last_status_update"].as_str().unwrap()
    );

    // A device may not set server-managed fields.
    let reply = exchange(
        &mut dev,
        &updt(
            "0117",
            "0001",
            &json!({"owner": "mallory", "online": false, "manufacturing_date": "x", "battery": 1}),
        ),
    )
    .await;
    assert_eq!(reply, ok("0117", "0001"));
    let rec = record(&server, "0001").await;
    assert_eq!(rec["owner"], "EET");
    assert_eq!(rec["online"], true);
    assert_eq!(rec["manufacturing_date"], first["manufacturing_date"]);
    assert_eq!(rec["battery"], 1);
    server.stop().await;
}

#[tokio::test]
async fn python_literal_bodies_and_long_message_ids() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path().to_path_buf());
    config.owner = "ACME".to_owned();
    let server = TestServer::start(config).await;
    let mut dev = server.device().await;

    let frame = r#"{'type': 'UPDT', 'message': "0117:0042:{'battery': 12.5, 'charging': True, '_country': 'IT', 'local_time': None, 'pv_connectors': 2.0,}"}"#;
    assert_eq!(exchange(&mut dev, frame).await, ok("0117", "0042"));
    let rec = record(&server, "0042").await;
    assert_eq!(rec["battery"], 12.5);
    assert_eq!(rec["charging"], true);
    assert_eq!(rec["country"], "IT");
    assert_eq!(rec["local_time"], Value::Null);
    assert_eq!(rec["pv_connectors"], 2);
    assert_eq!(rec["owner"], "ACME");

    // After 9999 the reference device goes on to 10000; the id is echoed verbatim.
    assert_eq!(
        exchange(&mut dev, &updt("10000", "0042", &json!({"battery": 13}))).await,
        ok("10000", "0042")
    );
    assert_eq!(
        exchange(&mut dev, &updt("0007", "0042", &json!({}))).await,
        ok("0007", "0042")
    );
    assert_eq!(record(&server, "0042").await["battery"], 13);
    server.stop().await;
}

/// Every class of bad input gets its ERROR, stores nothing and leaves the connection and other
/// connections working.
#[tokio::test]
async fn bad_input_gets_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path()).await;
    let mut dev = server.device().await;
    let mut other = server.device().await;
    send_ok(
        &mut dev,
        "0001",
        "0001",
        &json!({"battery": 50, "country": "AT"}),
    )
    .await;
    send_ok(&mut other, "0001", "0002", &json!({"battery": 60})).await;
    let before = record(&server, "0001").await;

    let cases: &[(&str, &str, Option<&str>)] = &[
        ("not JSON", "this is not json", None),
        (
            "unknown type with a readable header (PROTOCOL §5)",
            r#"{"type":"PING","message":"0002:0001:{\"battery\": 1}"}"#,
            Some("0002:0001"),
        ),
        (
            "info from a device",
            r#"{"type":"INFO","message":"0002:0001:{\"battery\": 1}"}"#,
            Some("0002:0001"),
        ),
        (
            "no header",
            r#"{"type":"UPDT","message":"{\"battery\": 1}"}"#,
            None,
        ),
        ("no message", r#"{"type":"UPDT"}"#, None),
        (
            "body not an object",
            r#"{"type":"UPDT","message":"0003:0001:[1, 2]"}"#,
            Some("0003:0001"),
        ),
        (
            "body a number",
            r#"{"type":"UPDT","message":"0004:0001:42"}"#,
            Some("0004:0001"),
        ),
        (
            "broken body",
            r#"{"type":"UPDT","message":"0005:0001:{\"battery\": }"}"#,
            Some("0005:0001"),
        ),
        (
            "wrong field type",
            r#"{"type":"UPDT","message":"0006:0001:{\"battery\": \"full\"}"}"#,
            Some("0006:0001"),
        ),
        (
            "wrong type next to a good field",
            r#"{"type":"UPDT","message":"0007:0001:{\"country\": \"DE\", \"pv_connectors\": true}"}"#,
            Some("0007:0001"),
        ),
        (
            "serial mismatch",
            r#"{"type":"UPDT","message":"0008:0001:{\"serial_number\": \"0002\", \"battery\": 1}"}"#,
            Some("0008:0001"),
        ),
    ];
    for (what, frame, header) in cases {
        let reply = exchange(&mut dev, frame).await;
        let expected = header.map_or("ERROR".to_owned(), |h| format!("{h}:ERROR"));
        assert_eq!(reply["type"], "INFO", "{what}: {reply}");
        assert_eq!(reply["message"], expected, "{what}: {reply}");
        let reason = reply["reason"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no reason in {reply}"));
        assert!(!reason.is_empty(), "{what}");
    }

    // A binary frame: ERROR, connection kept.
    tokio::time::timeout(
        TIMEOUT,
        dev.send(Message::binary(b"\x00\x01binary".to_vec())),
    )
    .await
    .unwrap()
    .unwrap();
    let reply = recv_json(&mut dev).await;
    assert_eq!(reply["message"], "ERROR", "{reply}");
    assert!(reply["reason"].as_str().unwrap().contains("binary"));

    // Nothing of any refused message was stored, and both connections still work.
    assert_eq!(record(&server, "0001").await, before);
    send_ok(&mut dev, "0009", "0001", &json!({"battery": 51})).await;
    send_ok(&mut other, "0002", "0002", &json!({"battery": 61})).await;
    assert_eq!(record(&server, "0001").await["battery"], 51);
    assert_eq!(record(&server, "0001").await["country"], "AT");

    let metrics = server.get("/metrics").await.body;
    for (reason, at_least) in [
        ("envelope", 2),
        ("kind", 2),
        ("header", 1),
        ("body", 3),
        ("field", 2),
        ("serial", 1),
        ("binary", 1),
    ] {
        let line = format!("smart_messages_rejected_total{{reason=\"{reason}\"}} ");
        let value: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .unwrap_or_else(|| panic!("no {line} in\n{metrics}"))
            .parse()
            .unwrap();
        assert!(
            value >= at_least,
            "{reason}: {value} < {at_least}\n{metrics}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn oversize_frame_closes_with_1009_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path().to_path_buf());
    config.max_frame_bytes = 1024;
    let server = TestServer::start(config).await;
    let mut dev = server.device().await;
    let mut other = server.device().await;
    send_ok(&mut dev, "0001", "0001", &json!({"battery": 50})).await;

    let big = updt(
        "0002",
        "0001",
        &json!({"battery": 99, "padding": "x".repeat(2000)}),
    );
    send(&mut dev, &big).await;
    match recv(&mut dev).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Size),
        other => panic!("expected a 1009 close, got {other:?}"),
    }
    // The stream ends after the close.
    let end = tokio::time::timeout(TIMEOUT, dev.next()).await.unwrap();
    assert!(matches!(end, None | Some(Err(_))), "{end:?}");

    assert_eq!(record(&server, "0001").await["battery"], 50);
    send_ok(&mut other, "0001", "0002", &json!({"battery": 1})).await;
    // Just under the limit is fine.
    let mut dev = server.device().await;
    let fits = updt("0003", "0001", &json!({"padding": "y".repeat(900)}));
    assert!(fits.len() <= 1024);
    assert_eq!(exchange(&mut dev, &fits).await, ok("0003", "0001"));
    server.stop().await;
}

/// Frames sent back to back, good and bad mixed, get their replies in arrival order.
#[tokio::test]
async fn pipelined_replies_keep_arrival_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path()).await;
    let mut dev = server.device().await;
    let mut expected = Vec::new();
    let mut last_good = 0;
    for i in 0..200u32 {
        let mid = format!("{:04}", i + 1);
        let frame = if i % 7 == 3 {
            expected.push(format!("{mid}:0001:ERROR"));
            updt(&mid, "0001", &json!({"battery": "bad"}))
        } else if i % 11 == 5 {
            expected.push("ERROR".to_owned());
            "garbage".to_owned()
        } else {
            expected.push(format!("{mid}:0001:OK"));
            last_good = i;
            updt(&mid, "0001", &json!({"battery": i}))
        };
        dev.feed(Message::text(frame)).await.unwrap();
    }
    tokio::time::timeout(TIMEOUT, dev.flush())
        .await
        .unwrap()
        .unwrap();
    for want in &expected {
        let reply = recv_json(&mut dev).await;
        assert_eq!(reply["message"], want.as_str(), "{reply}");
    }
    assert_eq!(record(&server, "0001").await["battery"], last_good);
    server.stop().await;
}

#[tokio::test]
async fn closed_registration_refuses_unknown_serials() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path()).await;
    let mut dev = server.device().await;
    send_ok(&mut dev, "0001", "0001", &json!({"battery": 1})).await;
    drop(dev);
    server.stop().await;

    let mut config = Config::for_tests(dir.path().to_path_buf());
    config.registration = Registration::Closed;
    let server = TestServer::start(config).await;
    let mut dev = server.device().await;
    let reply = exchange(&mut dev, &updt("0002", "0099", &json!({"battery": 1}))).await;
    assert_eq!(reply["message"], "0002:0099:ERROR", "{reply}");
    assert!(
        reply["reason"].as_str().unwrap().contains("registration"),
        "{reply}"
    );
    assert_eq!(server.get("/api/devices/0099").await.status, 404);
    // Known devices carry on.
    send_ok(&mut dev, "0003", "0001", &json!({"battery": 2})).await;
    server.stop().await;
}

async fn online(server: &TestServer, serial: &str) -> bool {
    record(server, serial).await["online"].as_bool().unwrap()
}

async fn wait_online(server: &TestServer, serial: &str, want: bool) {
    for _ in 0..200 {
        if online(server, serial).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{serial} never became online={want}");
}

#[tokio::test]
async fn online_while_a_connection_that_sent_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path()).await;
    let mut a = server.device().await;
    let mut b = server.device().await;
    send_ok(&mut a, "0001", "0001", &json!({"battery": 1})).await;
    assert!(online(&server, "0001").await);
    // A connection that has not sent for the serial does not count.
    let idle = server.device().await;
    send_ok(&mut b, "0002", "0001", &json!({"battery": 2})).await;

    a.close(None).await.unwrap();
    drop(a);
    drop(idle);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(online(&server, "0001").await, "b still holds it online");
    b.close(None).await.unwrap();
    drop(b);
    wait_online(&server, "0001", false).await;

    let mut c = server.device().await;
    send_ok(&mut c, "0003", "0001", &json!({})).await;
    assert!(online(&server, "0001").await);
    server.stop().await;
}

#[tokio::test]
async fn restart_keeps_devices_offline() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path()).await;
    let mut dev = server.device().await;
    assert_eq!(exchange(&mut dev, SEED_INIT).await, ok("0000", "0001"));
    send_ok(
        &mut dev,
        "0001",
        "0002",
        &json!({"battery": 7, "custom": [1, 2]}),
    )
    .await;
    let before = server.get("/api/devices").await.json();
    // The device is still connected when the server stops.
    server.stop().await;
    drop(dev);

    let server = TestServer::start_in(dir.path()).await;
    let after = server.get("/api/devices").await.json();
    let (before, after) = (before.as_array().unwrap(), after.as_array().unwrap());
    assert_eq!(after.len(), 2);
    for (b, a) in before.iter().zip(after) {
        let mut b = b.clone();
        b["online"] = json!(false);
        assert_eq!(&b, a);
    }
    let mut dev = server.device().await;
    send_ok(&mut dev, "0002", "0002", &json!({})).await;
    assert!(online(&server, "0002").await);
    assert!(!online(&server, "0001").await);
    server.stop().await;
}

#[tokio::test]
async fn silent_peers_are_pinged_then_closed_while_answering_ones_stay() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path().to_path_buf());
    config.idle_timeout_secs = 2;
    let server = TestServer::start(config).await;
    // Upgraded, then never a byte: neither a message nor a pong.
    let (status, mut silent_device) = upgrade_raw(server.addr, "/update/", None, &[]).await;
    assert_eq!(status, 101);
    let (status, mut silent_dashboard) = upgrade_raw(server.addr, "/client/", None, &[]).await;
    assert_eq!(status, 101);
    // Reads (so tungstenite answers every ping) but never sends a message of its own.
    let mut live = server.device().await;
    send_ok(&mut live, "0001", "0001", &json!({"battery": 1})).await;
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    let mut pings = 0;
    loop {
        match tokio::time::timeout_at(until, live.next()).await {
            Err(_) => break,
            Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
            Ok(other) => panic!("a device answering pings got {other:?}"),
        }
    }
    assert!(pings >= 1, "the server never pinged a silent device");
    send_ok(&mut live, "0002", "0001", &json!({"battery": 2})).await;

    for (name, socket) in [
        ("device", &mut silent_device),
        ("dashboard", &mut silent_dashboard),
    ] {
        let bytes = read_until_closed(socket, TIMEOUT)
            .await
            .unwrap_or_else(|| panic!("a silent {name} is never closed"));
        let opcodes = server_opcodes(&bytes);
        let ping = opcodes.iter().position(|&op| op == 0x9);
        let close = opcodes.iter().position(|&op| op == 0x8);
        assert!(
            matches!((ping, close), (Some(p), Some(c)) if p < c),
            "{name}: expected a ping, then a close: {opcodes:?}"
        );
    }
    let metrics = server.get("/metrics").await.body;
    assert_eq!(
        metric_or_zero(&metrics, "smart_connections_shed_total{reason=\"idle\"}"),
        2,
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn serials_per_connection_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path().to_path_buf());
    config.max_serials_per_connection = 3;
    let server = TestServer::start(config).await;
    let mut dev = server.device().await;
    for serial in ["1001", "1002", "1003"] {
        send_ok(&mut dev, "0001", serial, &json!({"battery": 1})).await;
    }
    let reply = exchange(&mut dev, &updt("0002", "1004", &json!({"battery": 2}))).await;
    assert_eq!(reply["message"], "0002:1004:ERROR", "{reply}");
    assert!(
        reply["reason"].as_str().unwrap().contains("serials"),
        "{reply}"
    );
    assert_eq!(
        server.get("/api/devices/1004").await.status,
        404,
        "nothing stored"
    );
    // The connection stays open and its serials keep working; another connection may take the
    // refused serial.
    send_ok(&mut dev, "0003", "1001", &json!({"battery": 3})).await;
    send_ok(&mut dev, "0004", "1003", &json!({"battery": 4})).await;
    let mut other = server.device().await;
    send_ok(&mut other, "0005", "1004", &json!({"battery": 5})).await;
    let metrics = server.get("/metrics").await.body;
    assert_eq!(
        metric_or_zero(
            &metrics,
            "smart_messages_rejected_total{reason=\"serials\"}"
        ),
        1
    );
    server.stop().await;
}

/// A text frame that is not UTF-8, on the real binary: that device connection gets the replies it
/// is owed, then a close with 1007; the frame stores nothing and other connections go on.
#[tokio::test]
async fn a_text_frame_that_is_not_utf8_closes_that_device_with_1007() {
    let dir = tempfile::tempdir().unwrap();
    let (_child, addr) = spawn_binary(dir.path()).await;
    let mut other = device(addr).await;
    let (mut dash, _) = dashboard(addr).await;

    let good = updt("0001", "0001", &json!({"battery": 42}));
    let got = not_utf8_closes_with_1007(addr, "/update/", &[&good]).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0], DEVICE_WELCOME);
    assert_eq!(
        serde_json::from_str::<Value>(&got[1]).unwrap(),
        ok("0001", "0001")
    );

    send_ok(&mut other, "0002", "0002", &json!({"battery": 7})).await;
    let (mid, body) = next_updt_for(&mut dash, "0002").await;
    assert_eq!(mid, "0002");
    assert_eq!(body["battery"], 7);
    let res = http_get(addr, "/api/devices/0001", &[]).await;
    assert_eq!(res.json()["battery"], 42);
}
