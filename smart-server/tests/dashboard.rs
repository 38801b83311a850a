//! The `/client/` endpoint (PROTOCOL.md §7, §8): INIT, UPDT, FILT views, online state, slow
//! dashboards.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use smart_server::Config;
use tokio_tungstenite::tungstenite::Message;

fn serials(records: &[Value]) -> Vec<&str> {
    records
        .iter()
        .map(|r| r["serial_number"].as_str().unwrap())
        .collect()
}

fn filt(clauses: &[&str]) -> String {
    json!({"type": "FILT", "message": clauses}).to_string()
}

/// Wait for the next INIT, skipping UPDTs; returns its records.
async fn next_init(ws: &mut Ws) -> Vec<Value> {
    for _ in 0..10_000 {
        let frame = recv_json(ws).await;
        if frame["type"] == "INIT" {
            return frame["message"].as_array().unwrap().clone();
        }
    }
    panic!("no INIT");
}

#[tokio::test]
async fn welcome_then_init_in_serial_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path()).await;
    let mut dev = server.device().await;
    for serial in ["0003", "0001", "0010", "0002"] {
        send_ok(&mut dev, "0001", serial, &json!({"battery": 5})).await;
    }
    let (mut dash, records) = server.dashboard().await;
    assert_eq!(serials(&records), ["0001", "0002", "0003", "0010"]);
    let api = server.get("/api/devices").await.json();
    assert_eq!(Value::Array(records), api, "INIT and the API agree");
    assert_silent(&mut dash, Duration::from_millis(100)).await;
    server.stop().await;
}

/// The seed's INIT example, as a dashboard receives it: strict JSON, known fields in the order of
/// PROTOCOL.md §6, RFC 3339 timestamps with microseconds, no ORM artefacts.
#[tokio::test]
async fn init_has_the_seed_shape() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path()).await;
    let mut dev = server.device().await;
    let body = json!({"power_income": 0.0, "power_inject": 0.0, "power_consumption": 144.0, "battery": 0.0,
        "solmate_version": "v2", "pv_connectors": 2, "local_time": "2024-03-11T01:46:48.012456Z"});
    send_ok(&mut dev, "0000", "0004", &body).await;

    let mut dash = connect(server.addr, "/client/").await;
    assert_eq!(recv_text(&mut dash).await, DASHBOARD_WELCOME);
    let text = recv_text(&mut dash).await;
    assert!(
        text.starts_with(r#"{"type":"INIT","message":[{"serial_number":"0004","#),
        "{text}"
    );
    let order = [
        "serial_number",
        "software_version",
        "country",
        "solmate_version",
        "postcode",
        "power_income",
        "power_inject",
        "power_consumption",
        "battery",
        "capacity",
        "pv_connectors",
        "local_time",
        "owner",
        "manufacturing_date",
        "last_status_update",
        "online",
    ];
    let positions: Vec<usize> = order
        .iter()
        .map(|k| text.find(&format!("\"{k}\":")).unwrap())
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "fields in §6 order: {text}"
    );
    assert!(!text.contains("statusdata_ptr"));

    let init: Value = serde_json::from_str(&text).unwrap();
    let rec = &init["message"][0];
    assert_eq!(rec["power_consumption"], 144);
    assert_eq!(rec["battery"], 0);
    assert_eq!(rec["solmate_version"], "v2");
    assert_eq!(rec["pv_connectors"], 2);
    assert_eq!(rec["local_time"], "2024-03-11T01:46:48.012456Z");
    assert_eq!(rec["software_version"], "");
    assert_eq!(rec["postcode"], "");
    for stamp in ["manufacturing_date", "last_status_update"] {
        let stamp = rec[stamp].as_str().unwrap();
        assert_eq!(stamp.len(), "2024-03-11T00:43:33.256667Z".len(), "{stamp}");
        assert_eq!(
            (&stamp[10..11], &stamp[19..20], &stamp[26..]),
            ("T", ".", "Z"),
            "{stamp}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn updates_carry_changed_fields_and_new_devices_their_full_record() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path()).await;
    let mut dev = server.device().await;
    send_ok(
        &mut dev,
        "0001",
        "0001",
        &json!({"battery": 350, "power_consumption": 289}),
    )
    .await;
    let (mut dash, _) = server.dashboard().await;

    // The seed's update, and the seed's dashboard example.
    send_ok(
        &mut dev,
        "0116",
        "0001",
        &json!({"power_consumption": 357, "battery": 350}),
    )
    .await;
    let (mid, serial, body) = parse_updt(&recv_json(&mut dash).await);
    assert_eq!((mid.as_str(), serial.as_str()), ("0116", "0001"));
    let keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        ["last_status_update", "power_consumption"],
        "only what changed: {body}"
    );
    assert_eq!(body["power_consumption"], 357);

    send_ok(
        &mut dev,
        "0008",
        "0001",
        &json!({"local_time": "2024-03-17 14:59:13.047108"}),
    )
    .await;
    let frame = recv_text(&mut dash).await;
    assert!(
        frame.starts_with(r#"{"type":"UPDT","message":"0008:0001:{"#),
        "strict JSON with the device's header: {frame}"
    );
    let (_, _, body) = parse_updt(&serde_json::from_str(&frame).unwrap());
    assert_eq!(body["local_time"], "2024-03-17 14:59:13.047108");

    // A device the dashboard has never seen arrives with every field.
    let mut other = server.device().await;
    send_ok(
        &mut other,
        "0042",
        "0002",
        &json!({"_country": "AT", "extra_field": 1}),
    )
    .await;
    let (mid, body) = next_updt_for(&mut dash, "0002").await;
    assert_eq!(mid, "0042");
    assert_eq!(body, record(&server, "0002").await, "the full record");
    assert_eq!(body["online"], true);
    assert_silent(&mut dash, Duration::from_millis(100)).await;
    server.stop().await;
}

#[tokio::test]
async fn online_and_offline_updates() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path()).await;
    let mut dev = server.device().await;
    send_ok(&mut dev, "0001", "0001", &json!({"battery": 1})).await;
    let (mut dash, records) = server.dashboard().await;
    assert_eq!(records[0]["online"], true);

    dev.close(None).await.unwrap();
    drop(dev);
    let frame = recv_text(&mut dash).await;
    assert_eq!(
        frame,
        r#"{"type":"UPDT","message":"0000:0001:{\"online\": false}"}"#
    );

    let mut dev = server.device().await;
    send_ok(&mut dev, "0002", "0001", &json!({"battery": 2})).await;
    let frame = recv_text(&mut dash).await;
    assert_eq!(
        frame,
        r#"{"type":"UPDT","message":"0000:0001:{\"online\": true}"}"#
    );
    let (mid, body) = next_updt_for(&mut dash, "0001").await;
    assert_eq!(mid, "0002");
    assert_eq!(body["battery"], 2);
    server.stop().await;
}

#[tokio::test]
async fn filt_is_answered_with_init_in_the_asked_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path()).await;
    let mut dev = server.device().await;
    for (serial, battery) in [("0001", 30), ("1009", 80), ("2032", 55), ("1111", 90)] {
        send_ok(&mut dev, "0001", serial, &json!({"battery": battery})).await;
    }
    let (mut dash, _) = server.dashboard().await;

    // The seed's query.
    send(
        &mut dash,
        &filt(&["filter:serial_number:=:0", "sort:serial_number:<:abc"]),
    )
    .await;
    let reply = recv_json(&mut dash).await;
    assert_eq!(reply["type"], "INIT");
    assert_eq!(
        serials(reply["message"].as_array().unwrap()),
        ["0001", "1009", "2032"]
    );

    send(
        &mut dash,
        &filt(&["filter:battery:>:50", "sort:battery:>:123"]),
    )
    .await;
    assert_eq!(
        serials(&next_init(&mut dash).await),
        ["1111", "1009", "2032"]
    );

    // A bad query: ERROR, the view stays.
    send(&mut dash, &filt(&["filter:battery:>:lots"])).await;
    let reply = recv_json(&mut dash).await;
    assert_eq!(reply["type"], "INFO");
    assert_eq!(reply["message"], "ERROR");
    assert!(!reply["reason"].as_str().unwrap().is_empty());
    send(
        &mut dash,
        r#"{"type":"FILT","message":"filter:battery:>:1"}"#,
    )
    .await;
    assert_eq!(recv_json(&mut dash).await["message"], "ERROR");
    send(&mut dash, "not json").await;
    assert_eq!(recv_json(&mut dash).await["message"], "ERROR");
    dash.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(recv_json(&mut dash).await["message"], "ERROR");
    send_ok(&mut dev, "0002", "0001", &json!({"country": "AT"})).await; // out of view
    send_ok(&mut dev, "0002", "1111", &json!({"country": "DE"})).await; // in view
    let (_, serial, body) = parse_updt(&recv_json(&mut dash).await);
    assert_eq!((serial.as_str(), &body["country"]), ("1111", &json!("DE")));

    // An empty FILT resets the view to every device, serial ascending.
    send(&mut dash, &filt(&[])).await;
    assert_eq!(
        serials(&next_init(&mut dash).await),
        ["0001", "1009", "1111", "2032"]
    );
    send_ok(&mut dev, "0003", "0001", &json!({"country": "IT"})).await;
    let (_, body) = next_updt_for(&mut dash, "0001").await;
    assert_eq!(body["country"], "IT");
    server.stop().await;
}

/// Two dashboards with different filters each see only their view, and a device entering or leaving
/// a view brings a fresh INIT of it.
#[tokio::test]
async fn two_dashboards_two_views() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path()).await;
    let mut dev = server.device().await;
    send_ok(
        &mut dev,
        "0001",
        "0001",
        &json!({"battery": 80, "country": "DE"}),
    )
    .await;
    send_ok(
        &mut dev,
        "0001",
        "0002",
        &json!({"battery": 20, "country": "AT"}),
    )
    .await;
    send_ok(
        &mut dev,
        "0001",
        "0003",
        &json!({"battery": 90, "country": "AT"}),
    )
    .await;

    let (mut high, _) = server.dashboard().await;
    let (mut austria, _) = server.dashboard().await;
    send(&mut high, &filt(&["filter:battery:>:50"])).await;
    assert_eq!(serials(&next_init(&mut high).await), ["0001", "0003"]);
    send(&mut austria, &filt(&["filter:country:=:at"])).await;
    assert_eq!(serials(&next_init(&mut austria).await), ["0002", "0003"]);

    send_ok(&mut dev, "0002", "0001", &json!({"battery": 81})).await;
    send_ok(&mut dev, "0002", "0002", &json!({"power_income": 5})).await;
    let (mid, serial, body) = parse_updt(&recv_json(&mut high).await);
    assert_eq!(
        (mid.as_str(), serial.as_str(), &body["battery"]),
        ("0002", "0001", &json!(81))
    );
    let (_, serial, body) = parse_updt(&recv_json(&mut austria).await);
    assert_eq!(
        (serial.as_str(), &body["power_income"]),
        ("0002", &json!(5))
    );
    assert_silent(&mut high, Duration::from_millis(100)).await;
    assert_silent(&mut austria, Duration::from_millis(100)).await;

    // 0002 enters the high view: its full record now, a fresh INIT of the view soon after.
    let entered = Instant::now();
    send_ok(&mut dev, "0003", "0002", &json!({"battery": 99})).await;
    let (mid, serial, body) = parse_updt(&recv_json(&mut high).await);
    assert_eq!((mid.as_str(), serial.as_str()), ("0003", "0002"));
    assert_eq!(body, record(&server, "0002").await);
    let init = recv_json(&mut high).await;
    assert_eq!(init["type"], "INIT", "{init}");
    assert_eq!(
        serials(init["message"].as_array().unwrap()),
        ["0001", "0002", "0003"]
    );
    assert!(entered.elapsed() < Duration::from_secs(2));
    let (_, serial, body) = parse_updt(&recv_json(&mut austria).await);
    assert_eq!((serial.as_str(), &body["battery"]), ("0002", &json!(99)));

    // 0001 leaves the high view: no UPDT, a fresh INIT (at most one per 250 ms).
    let before = Instant::now();
    send_ok(&mut dev, "0004", "0001", &json!({"battery": 10})).await;
    let init = recv_json(&mut high).await;
    assert_eq!(init["type"], "INIT", "{init}");
    assert_eq!(
        serials(init["message"].as_array().unwrap()),
        ["0002", "0003"]
    );
    let waited = before.elapsed();
    assert!(waited < Duration::from_secs(2), "{waited:?}");
    assert_silent(&mut austria, Duration::from_millis(100)).await;
    assert_silent(&mut high, Duration::from_millis(100)).await;
    server.stop().await;
}

#[tokio::test]
async fn membership_inits_are_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path()).await;
    let mut dev = server.device().await;
    send_ok(&mut dev, "0001", "0001", &json!({"battery": 10})).await;
    let (mut dash, _) = server.dashboard().await;
    send(&mut dash, &filt(&["filter:battery:>:50"])).await;
    assert!(next_init(&mut dash).await.is_empty());

    // The dashboard's frames are timed as they arrive, by a task of their own: read only after the
    // sending, INITs sent 250 ms apart while it lasted (a loaded machine) would arrive together.
    let (sent, mut sending_done) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        let mut inits = Vec::new();
        let mut sending = true;
        loop {
            let frame = if sending {
                tokio::select! {
                    _ = &mut sending_done => {
                        sending = false;
                        continue;
                    }
                    frame = dash.next() => frame,
                }
            } else {
                match tokio::time::timeout(Duration::from_millis(600), dash.next()).await {
                    Ok(frame) => frame,
                    Err(_) => break,
                }
            };
            let Some(Ok(Message::Text(text))) = frame else {
                break;
            };
            let frame: Value = serde_json::from_str(&text).unwrap();
            if frame["type"] == "INIT" {
                inits.push((Instant::now(), frame["message"].as_array().unwrap().len()));
            }
        }
        (inits, dash)
    });

    // The device flips in and out of the view 40 times in quick succession.
    let started = Instant::now();
    for i in 0..40 {
        let battery = if i % 2 == 0 { 90 } else { 10 };
        send_ok(
            &mut dev,
            &format!("{:04}", i + 2),
            "0001",
            &json!({"battery": battery}),
        )
        .await;
    }
    let sending = started.elapsed();
    sent.send(()).unwrap();
    let (inits, _dash) = tokio::time::timeout(TIMEOUT, reader)
        .await
        .unwrap()
        .unwrap();
    assert!(!inits.is_empty());
    for pair in inits.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        // 250 ms apart when sent; reading them may be delayed a little.
        assert!(gap >= Duration::from_millis(150), "INITs {gap:?} apart");
    }
    let allowed = (sending.as_millis() / 250 + 2) as usize;
    assert!(
        inits.len() <= allowed,
        "{} INITs in {sending:?}",
        inits.len()
    );
    // The last INIT shows the final state: battery 10, out of view.
    assert_eq!(inits.last().unwrap().1, 0);
    server.stop().await;
}

/// What a dashboard believes, built from its INIT and UPDT frames.
#[derive(Default)]
struct Mirror {
    records: BTreeMap<String, serde_json::Map<String, Value>>,
    inits: usize,
    updts: usize,
}

impl Mirror {
    fn apply(&mut self, frame: &Value) {
        match frame["type"].as_str().unwrap() {
            "INIT" => {
                self.inits += 1;
                self.records.clear();
                for r in frame["message"].as_array().unwrap() {
                    self.records.insert(
                        r["serial_number"].as_str().unwrap().to_owned(),
                        r.as_object().unwrap().clone(),
                    );
                }
            }
            "UPDT" => {
                self.updts += 1;
                let (_, serial, body) = parse_updt(frame);
                let entry = self.records.entry(serial).or_default();
                for (k, v) in body.as_object().unwrap() {
                    entry.insert(k.clone(), v.clone());
                }
            }
            other => panic!("unexpected {other}"),
        }
    }
}

/// A dashboard that stops reading never slows the devices down and never makes the server buffer
/// without bound: its updates are conflated, then it is resynchronised; once it reads again it ends
/// up with exactly the fleet's state.
#[tokio::test]
async fn slow_dashboard_is_conflated_then_resynced_and_converges() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path().to_path_buf());
    config.dashboard_queue = 64;
    config.dashboard_conflate = 20;
    let server = TestServer::start(config).await;
    let (mut slow, _) = server.dashboard().await;

    // ~25 MB of updates, far beyond what socket buffers hold, while the dashboard does not read:
    // first to 10 devices (few enough to conflate), then to 30 others (too many: resync).
    let mut dev = server.device().await;
    let padding = "p".repeat(2000);
    let total = 12_000u32;
    let started = Instant::now();
    let mut mirror = Mirror::default();
    for (phase, serials) in [(0..total / 2, 0..10u32), (total / 2..total, 10..40)] {
        let sender = async {
            let (mut acks, mut sent) = (phase.start, phase.start);
            while acks < phase.end {
                while sent < phase.end && sent - acks < 200 {
                    let serial = serials.start + sent % (serials.end - serials.start);
                    let serial = format!("{serial:04}");
                    let body = json!({"battery": sent, "pad": format!("{padding}{sent}")});
                    dev.feed(Message::text(updt(
                        &format!("{:04}", sent % 10_000),
                        &serial,
                        &body,
                    )))
                    .await
                    .unwrap();
                    sent += 1;
                }
                dev.flush().await.unwrap();
                let reply = recv_json(&mut dev).await;
                assert!(
                    reply["message"].as_str().unwrap().ends_with(":OK"),
                    "{reply}"
                );
                acks += 1;
            }
        };
        tokio::time::timeout(Duration::from_mins(2), sender)
            .await
            .unwrap();
        // Now read everything the dashboard was sent, until it goes quiet.
        loop {
            match tokio::time::timeout(Duration::from_millis(500), slow.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => {
                    mirror.apply(&serde_json::from_str(&text).unwrap());
                }
                Ok(Some(Ok(_))) => {}
                Ok(other) => panic!("dashboard connection ended: {other:?}"),
                Err(_) => break,
            }
        }
    }
    let ingest = started.elapsed();

    let metrics = server.get("/metrics").await.body;
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(value("smart_dashboard_conflated_total") >= 1, "{metrics}");
    assert!(value("smart_dashboard_resyncs_total") >= 1, "{metrics}");
    // What a stalled dashboard costs the devices and the server's memory is measured on the real
    // binary in tests/memory.rs (`stalled_dashboards_neither_slow_devices_nor_hold_memory`).
    assert!(mirror.inits >= 1, "a resync INIT was sent");
    assert!(
        mirror.updts < total as usize,
        "not every update was delivered one by one ({ingest:?})"
    );
    let fleet = server.get("/api/devices").await.json();
    let fleet: BTreeMap<String, serde_json::Map<String, Value>> = fleet
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["serial_number"].as_str().unwrap().to_owned(),
                r.as_object().unwrap().clone(),
            )
        })
        .collect();
    assert_eq!(mirror.records.len(), 40);
    for (serial, record) in &fleet {
        let seen = &mirror.records[serial];
        for field in ["battery", "pad", "last_status_update", "online"] {
            assert_eq!(seen.get(field), record.get(field), "{serial}.{field}");
        }
    }
    server.stop().await;
}

/// `--max-dashboards`: the upgrade beyond the cap gets 503 with a JSON reason and is counted; devices
/// are still served, and a slot freed by a closing dashboard can be taken again.
#[tokio::test]
async fn dashboards_beyond_the_cap_get_503_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path().to_path_buf());
    config.max_dashboards = 2;
    let server = TestServer::start(config).await;
    let (mut first, _) = server.dashboard().await;
    let (_second, _) = server.dashboard().await;
    let upgrade = [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let refused = http_get(server.addr, "/client/", &upgrade).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.header("content-type"), Some("application/json"));
    let reason = refused.json()["error"].as_str().unwrap().to_owned();
    assert!(reason.contains("too many dashboards"), "{reason}");
    let metrics = server.get("/metrics").await.body;
    assert!(
        metrics.contains("smart_connections_refused_total{reason=\"dashboards\"} 1"),
        "{metrics}"
    );
    // Devices are not dashboards.
    let mut dev = server.device().await;
    send_ok(&mut dev, "0001", "0001", &json!({"battery": 1})).await;

    first.close(None).await.unwrap();
    let _ = tokio::time::timeout(TIMEOUT, first.next()).await;
    drop(first);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let attempt = tokio::time::timeout(
            TIMEOUT,
            tokio_tungstenite::connect_async(server.url("/client/")),
        )
        .await
        .unwrap();
        match attempt {
            Ok(_) => break,
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
                assert_eq!(res.status(), 503);
            }
            Err(e) => panic!("{e}"),
        }
        assert!(
            Instant::now() < deadline,
            "the closed dashboard's slot was not freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn shutdown_closes_dashboards_with_1001() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path()).await;
    let (mut dash, _) = server.dashboard().await;
    let stopping = tokio::spawn(server.stop());
    match recv(&mut dash).await {
        Message::Close(Some(frame)) => {
            assert_eq!(
                frame.code,
                tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Away
            );
        }
        other => panic!("expected a 1001 close, got {other:?}"),
    }
    // Reading on completes the closing handshake, which lets the server finish promptly.
    let _ = tokio::time::timeout(TIMEOUT, dash.next()).await;
    tokio::time::timeout(Duration::from_secs(3), stopping)
        .await
        .unwrap()
        .unwrap();
}

/// A text frame that is not UTF-8, on the real binary: that dashboard is closed with 1007 (as a
/// device would be); other dashboards and devices go on.
#[tokio::test]
async fn a_text_frame_that_is_not_utf8_closes_that_dashboard_with_1007() {
    let dir = tempfile::tempdir().unwrap();
    let (_child, addr) = spawn_binary(dir.path()).await;
    let mut dev = device(addr).await;
    let (mut other, _) = dashboard(addr).await;

    let got = not_utf8_closes_with_1007(addr, "/client/", &[]).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0], DASHBOARD_WELCOME);
    assert_eq!(
        serde_json::from_str::<Value>(&got[1]).unwrap()["type"],
        "INIT"
    );

    send_ok(&mut dev, "0003", "0001", &json!({"battery": 9})).await;
    let (mid, body) = next_updt_for(&mut other, "0001").await;
    assert_eq!(mid, "0003");
    assert_eq!(body["battery"], 9);
}

/// `/client/?empty=1` (PROTOCOL.md §7, an extension): the greeting INIT is empty and nothing of the
/// fleet follows until the first FILT, which is answered and followed as on any connection; an empty
/// FILT then shows the whole fleet. A connection that does not ask still gets the whole fleet.
#[tokio::test]
async fn a_dashboard_that_asks_for_an_empty_view_gets_nothing_before_its_filt() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path()).await;
    let mut device = server.device().await;
    for serial in ["E001", "E002"] {
        send_ok(&mut device, "0001", serial, &json!({"battery": 10})).await;
    }

    let mut empty = connect(server.addr, "/client/?batch=1&empty=1").await;
    assert_eq!(recv_text(&mut empty).await, DASHBOARD_WELCOME);
    let greeting = recv_json(&mut empty).await;
    assert_eq!(greeting, json!({"type": "INIT", "message": []}));
    // Changes, a device that is new and one that goes offline: none of it reaches the empty view.
    send_ok(&mut device, "0002", "E001", &json!({"battery": 11})).await;
    send_ok(&mut device, "0003", "E003", &json!({"battery": 12})).await;
    assert_silent(&mut empty, Duration::from_millis(500)).await;

    send(&mut empty, &filt(&["filter:serial_number:^:E002"])).await;
    assert_eq!(serials(&next_init(&mut empty).await), ["E002"]);
    send_ok(&mut device, "0004", "E002", &json!({"battery": 13})).await;
    send_ok(&mut device, "0005", "E001", &json!({"battery": 14})).await;
    let frame = recv_json(&mut empty).await;
    assert_eq!(frame["type"], "UPDT", "{frame}");
    let text = frame["message"].to_string();
    assert!(
        text.contains("0004:E002:") && !text.contains("E001"),
        "{frame}"
    );

    send(&mut empty, &filt(&[])).await;
    assert_eq!(
        serials(&next_init(&mut empty).await),
        ["E001", "E002", "E003"]
    );

    let (_, everything) = server.dashboard().await;
    assert_eq!(serials(&everything), ["E001", "E002", "E003"]);
    server.stop().await;
}
