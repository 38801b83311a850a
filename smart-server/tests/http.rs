//! HTTP (PROTOCOL.md §9), who may open a websocket, and the connection limit.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;
use smart_server::Config;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{connect_async, tungstenite};

fn asset(name: &str) -> String {
    std::fs::read_to_string(format!("{}/assets/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[tokio::test]
async fn root_redirects_and_assets_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path()).await;

    let root = server.get("/").await;
    assert!(
        matches!(root.status, 301 | 302 | 303 | 307 | 308),
        "{}",
        root.status
    );
    assert_eq!(root.header("location"), Some("/index.html"));

    // Served at `/NAME`, from `assets/FILE` (the vendored uPlot lives in its own directory).
    for (name, file, kind) in [
        ("index.html", "index.html", "text/html"),
        ("app.js", "app.js", "javascript"),
        ("style.css", "style.css", "text/css"),
        ("fields.js", "fields.js", "javascript"),
        ("format.js", "format.js", "javascript"),
        ("query.js", "query.js", "javascript"),
        ("order.js", "order.js", "javascript"),
        ("wire.js", "wire.js", "javascript"),
        ("stale.js", "stale.js", "javascript"),
        ("grid.js", "grid.js", "javascript"),
        ("state.js", "state.js", "javascript"),
        ("filters.js", "filters.js", "javascript"),
        ("columns.js", "columns.js", "javascript"),
        ("auth.js", "auth.js", "javascript"),
        ("device.js", "device.js", "javascript"),
        (
            "uPlot.iife.min.js",
            "vendor/uplot/uPlot.iife.min.js",
            "javascript",
        ),
        ("uPlot.min.css", "vendor/uplot/uPlot.min.css", "text/css"),
    ] {
        let res = server.get(&format!("/{name}")).await;
        assert_eq!(res.status, 200, "{name}");
        assert!(
            res.header("content-type").unwrap().contains(kind),
            "{name}: {:?}",
            res.header("content-type")
        );
        assert_eq!(res.header("cache-control"), Some("no-cache"), "{name}");
        assert_eq!(res.body, asset(file), "{name} is served as embedded");
    }
    assert_eq!(server.get("/nothing-here.html").await.status, 404);
    assert_eq!(server.get("/api/nothing").await.status, 404);

    // The websocket endpoints explain themselves to plain HTTP.
    assert_eq!(server.get("/update/").await.status, 426);
    assert_eq!(server.get("/client/").await.status, 426);
    server.stop().await;
}

/// `/api/fields`: the known fields of PROTOCOL.md §6 from smart-proto's table, which the dashboard
/// takes its known columns from; they are the leading keys of every record the API serves.
#[tokio::test]
async fn field_list_is_the_record_table() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path()).await;
    let res = server.get("/api/fields").await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("content-type"), Some("application/json"));
    assert_eq!(res.body, smart_proto::Record::fields_json());
    let fields = res.json();
    let names: Vec<&str> = fields
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, smart_proto::Record::FIELDS);
    assert_eq!(
        fields[8],
        json!({"name": "battery", "type": "number", "null": true, "device": true})
    );
    assert_eq!(
        fields[15],
        json!({"name": "online", "type": "boolean", "null": false, "device": false})
    );

    let mut dev = server.device().await;
    send_ok(
        &mut dev,
        "0001",
        "0042",
        &json!({"battery": 50, "mode": "eco"}),
    )
    .await;
    let record = server.get("/api/devices/0042").await.json();
    let keys: Vec<&str> = record
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut known = keys.clone();
    known.retain(|k| names.contains(k));
    assert_eq!(known.len(), names.len(), "{keys:?}");
    assert!(keys.contains(&"mode"));
    server.stop().await;
}

#[tokio::test]
async fn device_api_with_queries() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path()).await;
    assert_eq!(server.get("/api/devices").await.json(), json!([]));

    let mut dev = server.device().await;
    for (serial, battery, country) in [
        ("0001", 30, "AT"),
        ("0002", 80, "DE"),
        ("0003", 55, "AT"),
        ("0004", 90, "AT"),
    ] {
        send_ok(
            &mut dev,
            "0001",
            serial,
            &json!({"battery": battery, "country": country}),
        )
        .await;
    }
    let all = server.get("/api/devices").await;
    assert_eq!(all.status, 200);
    assert!(
        all.header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    let all = all.json();
    assert_eq!(all.as_array().unwrap().len(), 4);
    assert_eq!(all[0]["serial_number"], "0001");

    // Repeated q clauses, URL-encoded.
    let res = server
        .get("/api/devices?q=filter:battery:%3E:50&q=sort:battery:%3E:123")
        .await;
    assert_eq!(res.status, 200, "{}", res.body);
    let got: Vec<_> = res
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["serial_number"].clone())
        .collect();
    assert_eq!(got, [json!("0004"), json!("0002"), json!("0003")]);
    let res = server
        .get("/api/devices?q=filter:country:=:at&q=filter:battery:%3C=:55")
        .await;
    let got: Vec<_> = res
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["serial_number"].clone())
        .collect();
    assert_eq!(got, [json!("0001"), json!("0003")]);
    // Other parameters are ignored.
    assert_eq!(
        server
            .get("/api/devices?page=2")
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        4
    );

    for bad in [
        "/api/devices?q=filter:battery:%3E:lots",
        "/api/devices?q=frobnicate:x",
        "/api/devices?q=filter:battery:~:1",
    ] {
        let res = server.get(bad).await;
        assert_eq!(res.status, 400, "{bad}");
        assert!(
            !res.json()["error"].as_str().unwrap().is_empty(),
            "{bad}: {}",
            res.body
        );
    }

    let one = server.get("/api/devices/0002").await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json(), all[1]);
    for missing in ["/api/devices/9999", "/api/devices/not!valid"] {
        let res = server.get(missing).await;
        assert_eq!(res.status, 404, "{missing}");
        assert!(res.json()["error"].is_string());
    }
    server.stop().await;
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn healthz_and_metrics_move() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path()).await;
    let health = server.get("/healthz").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");

    let before = server.get("/metrics").await;
    assert!(
        before
            .header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    let before = before.body;
    assert_eq!(metric(&before, "smart_acks_total"), 0);
    assert_eq!(metric(&before, "smart_connections{role=\"device\"}"), 0);

    let mut dev = server.device().await;
    let (_dash, _) = server.dashboard().await;
    send_ok(&mut dev, "0001", "0001", &json!({"battery": 1})).await;
    send_ok(&mut dev, "0002", "0001", &json!({"battery": 2})).await;
    let init = r#"{"type":"INIT","message":"0003:0001:{\"_battery\": 3}"}"#;
    assert_eq!(exchange(&mut dev, init).await["message"], "0003:0001:OK");
    assert_eq!(exchange(&mut dev, "nonsense").await["message"], "ERROR");

    let after = server.get("/metrics").await.body;
    assert_eq!(metric(&after, "smart_acks_total"), 3);
    assert_eq!(
        metric(&after, "smart_messages_accepted_total{type=\"UPDT\"}"),
        2
    );
    assert_eq!(
        metric(&after, "smart_messages_accepted_total{type=\"INIT\"}"),
        1
    );
    assert_eq!(
        metric(&after, "smart_messages_rejected_total{reason=\"envelope\"}"),
        1
    );
    assert_eq!(metric(&after, "smart_connections{role=\"device\"}"), 1);
    assert_eq!(metric(&after, "smart_connections{role=\"dashboard\"}"), 1);
    assert_eq!(metric(&after, "smart_devices"), 1);
    assert_eq!(metric(&after, "smart_devices_online"), 1);
    let flushes = metric(&after, "smart_store_flushes_total");
    assert!((1..=3).contains(&flushes), "{flushes}");
    // One record per device per group commit: updates of one device in one batch are written once.
    let writes = metric(&after, "smart_store_writes_total");
    assert!(
        (flushes..=3).contains(&writes),
        "{writes} records in {flushes} commits"
    );
    // The dashboard's frames leave from its own task, a moment after the acks: wait (bounded) for them.
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut after = after;
    while metric(&after, "smart_dashboard_frames_total") < 4 && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        after = server.get("/metrics").await.body;
    }
    assert!(
        metric(&after, "smart_dashboard_frames_total") >= 4,
        "welcome, INIT and UPDTs\n{after}"
    );

    let health = server.get("/healthz").await.json();
    assert_eq!(health["devices"], 1);
    server.stop().await;
}

async fn ws_status(url: &str, origin: Option<&str>) -> u16 {
    let mut request = url.into_client_request().unwrap();
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", HeaderValue::from_str(origin).unwrap());
    }
    match tokio::time::timeout(TIMEOUT, connect_async(request))
        .await
        .unwrap()
    {
        Ok((_, response)) => response.status().as_u16(),
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("{url}: {e}"),
    }
}

#[tokio::test]
async fn browser_origins_may_not_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path().to_path_buf());
    config.allowed_origins = vec!["https://ops.example.com".to_owned()];
    let server = TestServer::start(config).await;
    let update = server.url("/update/");
    let client = server.url("/client/");
    let own = format!("http://{}", server.addr);

    assert_eq!(
        ws_status(&update, None).await,
        101,
        "devices send no Origin"
    );
    assert_eq!(ws_status(&update, Some("https://evil.example")).await, 403);
    assert_eq!(
        ws_status(&update, Some(&own)).await,
        403,
        "the dashboard page may not write either"
    );
    assert_eq!(
        ws_status(&update, Some("https://ops.example.com")).await,
        101
    );

    assert_eq!(ws_status(&client, None).await, 101);
    assert_eq!(
        ws_status(&client, Some(&own)).await,
        101,
        "the server's own page"
    );
    assert_eq!(
        ws_status(&client, Some("https://ops.example.com")).await,
        101
    );
    assert_eq!(ws_status(&client, Some("https://evil.example")).await, 403);

    let metrics = server.get("/metrics").await.body;
    assert_eq!(
        metric(
            &metrics,
            "smart_connections_refused_total{reason=\"origin\"}"
        ),
        3
    );
    server.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_limit_get_503() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path().to_path_buf());
    config.max_connections = 2;
    let server = TestServer::start(config).await;
    let a = server.device().await;
    let (b, _) = server.dashboard().await;
    assert_eq!(ws_status(&server.url("/update/"), None).await, 503);
    assert_eq!(ws_status(&server.url("/client/"), None).await, 503);
    // Plain HTTP is not counted.
    assert_eq!(server.get("/healthz").await.status, 200);

    drop(a);
    // The slot frees once the server has seen the close.
    let mut freed = false;
    for _ in 0..100 {
        if ws_status(&server.url("/update/"), None).await == 101 {
            freed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(freed);
    drop(b);
    let metrics = server.get("/metrics").await.body;
    assert!(
        metric(
            &metrics,
            "smart_connections_refused_total{reason=\"limit\"}"
        ) >= 2
    );
    server.stop().await;
}

#[tokio::test]
async fn own_origin_is_the_listen_address_not_the_host_header() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path()).await;
    let port = server.addr.port();
    let status = |origin: String, host: String| async move {
        upgrade_raw(server.addr, "/client/", Some(&host), &[("Origin", &origin)])
            .await
            .0
    };
    // DNS rebinding: evil.example resolves to 127.0.0.1, so Host and Origin agree.
    assert_eq!(
        status(
            format!("http://evil.example:{port}"),
            format!("evil.example:{port}")
        )
        .await,
        403
    );
    assert_eq!(
        status(
            format!("http://evil.example:{port}"),
            format!("127.0.0.1:{port}")
        )
        .await,
        403
    );
    // The real page, under each loopback name.
    for own in [
        format!("http://127.0.0.1:{port}"),
        format!("http://localhost:{port}"),
        format!("http://LOCALHOST:{port}/"),
    ] {
        let host = own
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        assert_eq!(status(own.clone(), host).await, 101, "{own}");
    }
    // Same host, another port: another origin.
    let other = port.wrapping_add(1);
    assert_eq!(
        status(
            format!("http://127.0.0.1:{other}"),
            format!("127.0.0.1:{other}")
        )
        .await,
        403
    );
    let metrics = server.get("/metrics").await.body;
    assert_eq!(
        metric(
            &metrics,
            "smart_connections_refused_total{reason=\"origin\"}"
        ),
        3
    );
    server.stop().await;
}

#[tokio::test]
async fn every_api_error_is_json_even_for_unencoded_targets() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path()).await;
    let mut dev = server.device().await;
    send_ok(
        &mut dev,
        "0001",
        "0001",
        &json!({"country": "AT", "postcode": 9}),
    )
    .await;
    send_ok(
        &mut dev,
        "0001",
        "0002",
        &json!({"country": "AT", "postcode": 1}),
    )
    .await;
    // The README's example exactly as curl sends it: `<` unencoded.
    // Sent raw: hyper's client would refuse these targets, which is the point.
    let res = raw_get(
        server.addr,
        "/api/devices?q=filter:country:=:AT&q=sort:postcode:<:abc",
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.body);
    let got: Vec<_> = res
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["serial_number"].clone())
        .collect();
    assert_eq!(got, [json!("0002"), json!("0001")]);
    // Raw non-ASCII and control bytes reach the query too (which matches nothing here).
    let res = raw_get(server.addr, "/api/devices?q=filter:country:=:\u{e9}\u{1}").await;
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(res.json(), json!([]));

    for bad in [
        "/api/devices?q=filter:postcode:>:lots",
        "/api/devices?q=a b",
        "/api/devices?q=\"quoted\"",
        "/api/devices?q=%zz",
        "/api/devices?q={x}|^`\\",
    ] {
        let res = raw_get(server.addr, bad).await;
        assert_eq!(res.status, 400, "{bad}: {}", res.body);
        assert!(
            res.header("content-type")
                .is_some_and(|t| t.starts_with("application/json")),
            "{bad}"
        );
        assert!(
            !res.json()["error"].as_str().unwrap().is_empty(),
            "{bad}: {}",
            res.body
        );
    }
    for missing in ["/nothing-here.html", "/api/nothing", "/a b"] {
        let res = raw_get(server.addr, missing).await;
        assert_eq!(res.status, 404, "{missing}");
        assert!(res.json()["error"].is_string(), "{missing}: {}", res.body);
    }
    // A good request on the same kind of connection still works afterwards.
    assert_eq!(server.get("/healthz").await.status, 200);
    server.stop().await;
}
