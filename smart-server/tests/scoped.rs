//! Owner-scoped users on the real binary (`--auth required`): a user added with `--scope-owner X`
//! sees only the devices whose `owner` is X — in INIT, UPDT, FILT results and the HTTP API — and
//! nothing fleet-wide (`/metrics`, owner actions). A device's owner comes from its token
//! (`token issue SERIAL --owner X`); re-issuing the token with another owner moves the device.

#![allow(clippy::unwrap_used)]

mod common;

use std::ffi::OsStr;
use std::path::Path;

use base64::Engine as _;
use common::{
    DASHBOARD_WELCOME, DEVICE_WELCOME, TIMEOUT, Ws, cli, exchange, http_get, parse_updt, recv_json,
    recv_text, spawn_binary_env,
};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const PASSWORD: &str = "correct horse battery staple";

fn issue(dir: &Path, serial: &str, owner: Option<&str>) -> String {
    let mut args = vec!["token", "issue", serial];
    args.extend(owner.iter().flat_map(|o| ["--owner", o]));
    let (out, err, ok) = cli(dir, &args, "");
    assert!(ok, "{err}");
    out.lines().last().unwrap().to_owned()
}

fn add_user(dir: &Path, name: &str, role: &str, scope: Option<&str>) {
    let mut args = vec!["user", "add", name, "--role", role];
    args.extend(scope.iter().flat_map(|s| ["--scope-owner", s]));
    let (_, err, ok) = cli(dir, &args, &format!("{PASSWORD}\n"));
    assert!(ok, "{err}");
}

fn basic(user: &str) -> String {
    let pair = format!("{user}:{PASSWORD}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

async fn connect(addr: std::net::SocketAddr, path: &str, authorization: &str) -> Ws {
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(authorization).unwrap(),
    );
    let (ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(request))
        .await
        .unwrap()
        .unwrap();
    ws
}

async fn device(addr: std::net::SocketAddr, token: &str) -> Ws {
    let mut ws = connect(addr, "/update/", &format!("Bearer {token}")).await;
    assert_eq!(recv_text(&mut ws).await, DEVICE_WELCOME);
    ws
}

async fn write(ws: &mut Ws, mid: &str, serial: &str, body: &Value) {
    let reply = exchange(ws, &common::updt(mid, serial, body)).await;
    assert_eq!(reply["message"], format!("{mid}:{serial}:OK"), "{reply}");
}

/// `(serial, owner)` of each record of a list.
fn owners(list: &Value) -> Vec<(String, String)> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let field = |k: &str| r[k].as_str().unwrap().to_owned();
            (field("serial_number"), field("owner"))
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(s, o)| ((*s).to_owned(), (*o).to_owned()))
        .collect()
}

async fn api(addr: std::net::SocketAddr, path: &str, user: &str) -> common::HttpResponse {
    http_get(addr, path, &[("Authorization", &basic(user))]).await
}

/// The next INIT's records, skipping anything else; every UPDT skipped is returned too.
async fn next_init(ws: &mut Ws, skipped: &mut Vec<String>) -> Value {
    for _ in 0..1000 {
        let frame = recv_json(ws).await;
        match frame["type"].as_str() {
            Some("INIT") => return frame["message"].clone(),
            Some("UPDT") => skipped.push(parse_updt(&frame).1),
            _ => {}
        }
    }
    panic!("no INIT");
}

/// UPDTs until one for `serial`: the serials of all of them, and the last one's body.
async fn updts_until(ws: &mut Ws, serial: &str) -> (Vec<String>, Value) {
    let mut seen = Vec::new();
    for _ in 0..1000 {
        let frame = recv_json(ws).await;
        if frame["type"] != "UPDT" {
            continue;
        }
        let (_, s, body) = parse_updt(&frame);
        seen.push(s.clone());
        if s == serial {
            return (seen, body);
        }
    }
    panic!("no UPDT for {serial}");
}

#[tokio::test]
async fn a_scoped_user_sees_only_its_owners_devices_in_every_channel() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let t1 = issue(dir.path(), "0001", Some("Tenant A"));
    let t2 = issue(dir.path(), "0002", Some("Tenant B"));
    let t3 = issue(dir.path(), "0003", None);
    add_user(dir.path(), "alice", "viewer", Some("Tenant A"));
    add_user(dir.path(), "ops", "viewer", None);
    add_user(dir.path(), "tenant-admin", "owner", Some("Tenant A"));
    let (list, _, ok) = cli(dir.path(), &["token", "list"], "");
    assert!(ok);
    assert!(
        list.lines()
            .any(|l| l.starts_with("0001\t") && l.ends_with("\tTenant A")),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with("0003\t") && l.ends_with("\t-")),
        "{list}"
    );

    let (mut child, addr) =
        spawn_binary_env(dir.path(), &[("SMART_AUTH", OsStr::new("required"))], &log).await;
    let mut d1 = device(addr, &t1).await;
    let mut d2 = device(addr, &t2).await;
    let mut d3 = device(addr, &t3).await;
    write(&mut d1, "0001", "0001", &json!({"battery": 10})).await;
    write(&mut d2, "0002", "0002", &json!({"battery": 20})).await;
    write(&mut d3, "0003", "0003", &json!({"battery": 30})).await;

    // HTTP: the unscoped user sees everyone, each device with the owner of its token (or the default).
    let all = api(addr, "/api/devices", "ops").await;
    assert_eq!(all.status, 200, "{}", all.body);
    assert_eq!(
        owners(&all.json()),
        pairs(&[("0001", "Tenant A"), ("0002", "Tenant B"), ("0003", "EET")])
    );
    // The scoped user: its owner's devices only, whatever the query asks.
    for path in [
        "/api/devices",
        "/api/devices?q=sort%3Abattery%3A%3E%3A123",
        "/api/devices?q=filter%3Abattery%3A%3E%3A0",
    ] {
        let mine = api(addr, path, "alice").await;
        assert_eq!(mine.status, 200, "{path}: {}", mine.body);
        assert_eq!(
            owners(&mine.json()),
            pairs(&[("0001", "Tenant A")]),
            "{path}"
        );
    }
    assert_eq!(api(addr, "/api/devices/0001", "alice").await.status, 200);
    // Another owner's device does not exist for it (404, as an unknown serial: nothing leaks).
    let other = api(addr, "/api/devices/0002", "alice").await;
    assert_eq!(other.status, 404, "{}", other.body);
    assert_eq!(api(addr, "/api/devices/0002", "ops").await.status, 200);
    // Nothing fleet-wide: metrics and owner actions are refused, even to a scoped owner.
    assert_eq!(api(addr, "/metrics", "alice").await.status, 403);
    assert_eq!(api(addr, "/metrics", "ops").await.status, 200);
    let admin = api(addr, "/api/admin/tokens", "tenant-admin").await;
    assert_eq!(admin.status, 403, "{}", admin.body);

    // The websocket: INIT, live UPDTs and FILT results hold only the owner's devices.
    let mut dash = connect(addr, "/client/", &basic("alice")).await;
    assert_eq!(recv_text(&mut dash).await, DASHBOARD_WELCOME);
    let mut skipped = Vec::new();
    let init = next_init(&mut dash, &mut skipped).await;
    assert_eq!(owners(&init), pairs(&[("0001", "Tenant A")]));
    write(&mut d2, "0004", "0002", &json!({"battery": 21})).await;
    write(&mut d3, "0005", "0003", &json!({"battery": 31})).await;
    write(&mut d1, "0006", "0001", &json!({"battery": 11})).await;
    let (seen, body) = updts_until(&mut dash, "0001").await;
    assert_eq!(seen, ["0001"], "other owners' changes are not forwarded");
    assert_eq!(body["battery"], 11.0);
    let filt = json!({"type": "FILT", "message": ["filter:battery:>:0", "sort:battery:<:123"]});
    common::send(&mut dash, &filt.to_string()).await;
    let init = next_init(&mut dash, &mut skipped).await;
    assert_eq!(owners(&init), pairs(&[("0001", "Tenant A")]));
    assert!(skipped.iter().all(|s| s == "0001"), "{skipped:?}");

    // Moving a device to the tenant: a token issued with its owner (through the running server),
    // the device's next message carries the new owner, and the device enters the scoped view.
    let t2 = issue(dir.path(), "0002", Some("Tenant A"));
    drop(d2);
    let mut d2 = device(addr, &t2).await;
    write(&mut d2, "0007", "0002", &json!({"battery": 22})).await;
    let (seen, body) = updts_until(&mut dash, "0002").await;
    assert!(seen.iter().all(|s| s == "0001" || s == "0002"), "{seen:?}");
    assert_eq!(
        body["owner"], "Tenant A",
        "it enters with its whole record: {body}"
    );
    assert_eq!(body["battery"], 22.0);
    let mine = api(addr, "/api/devices", "alice").await;
    assert_eq!(
        owners(&mine.json()),
        pairs(&[("0001", "Tenant A"), ("0002", "Tenant A")])
    );
    // The owner is stored with the record: it survives a restart.
    child.kill().await.unwrap();
    child.wait().await.unwrap();
    let (mut child, addr) =
        spawn_binary_env(dir.path(), &[("SMART_AUTH", OsStr::new("required"))], &log).await;
    let mine = api(addr, "/api/devices", "alice").await;
    assert_eq!(
        owners(&mine.json()),
        pairs(&[("0001", "Tenant A"), ("0002", "Tenant A")])
    );
    child.kill().await.unwrap();
}
