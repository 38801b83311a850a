//! `--auth required` on the real binary: device tokens on `/update/` (401 without or with a wrong one,
//! the serial bound to the token), user credentials for `/client/`, `/api`, `/metrics` (not
//! `/healthz`), rate-limited failures, provisioning from the command line, and no secret in the logs.

#![allow(clippy::unwrap_used)]

mod common;

use std::ffi::OsStr;

use common::{
    TIMEOUT, basic, cli, device_with, exchange, http_get, issue, metric_or_zero, spawn_binary_env,
    upgrade_raw,
};
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const PASSWORD: &str = "correct horse battery staple";

fn updt(mid: &str, serial: &str, body: &Value) -> String {
    common::updt(mid, serial, body)
}

#[tokio::test]
async fn devices_need_their_token_and_people_a_login() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let token = issue(dir.path(), "0001");
    let other = issue(dir.path(), "0002");
    let (_, err, ok) = cli(
        dir.path(),
        &["user", "add", "ops", "--role", "viewer"],
        &format!("{PASSWORD}\n"),
    );
    assert!(ok, "{err}");

    let (mut child, addr) =
        spawn_binary_env(dir.path(), &[("SMART_AUTH", OsStr::new("required"))], &log).await;

    // No token, a wrong token, a revoked-looking token: 401 before the upgrade, with a JSON reason.
    let (status, _) = upgrade_raw(addr, "/update/", None, &[]).await;
    assert_eq!(status, 401);
    let wrong = format!("Bearer {}x", &token[..token.len() - 1]);
    let (status, _) = upgrade_raw(addr, "/update/", None, &[("Authorization", &wrong)]).await;
    assert_eq!(status, 401);
    let (status, _) = upgrade_raw(addr, "/update/?token=smartos_nope", None, &[]).await;
    assert_eq!(status, 401);

    // The right token: the device writes its own serial, and only that one.
    let mut ws = device_with(addr, "/update/", Some(&token)).await;
    let ok = exchange(&mut ws, &updt("0001", "0001", &json!({"battery": 50}))).await;
    assert_eq!(ok["message"], "0001:0001:OK", "{ok}");
    let refused = exchange(&mut ws, &updt("0002", "0002", &json!({"battery": 7}))).await;
    assert_eq!(refused["message"], "0002:0002:ERROR", "{refused}");
    let reason = refused["reason"].as_str().unwrap();
    assert!(reason.contains("token is for serial 0001"), "{reason}");
    // The token in the query string, for devices that cannot set headers.
    let path = format!("/update/?token={other}");
    let mut ws2 = device_with(addr, &path, None).await;
    let ok = exchange(&mut ws2, &updt("0003", "0002", &json!({"battery": 9}))).await;
    assert_eq!(ok["message"], "0003:0002:OK", "{ok}");

    // People: 401 with a Basic challenge without credentials, 200 with them; /healthz stays open.
    let auth = basic("ops", PASSWORD);
    for path in ["/api/devices", "/metrics", "/api/devices/0001"] {
        let res = http_get(addr, path, &[]).await;
        assert_eq!(res.status, 401, "{path}");
        assert!(
            res.header("www-authenticate")
                .is_some_and(|h| h.starts_with("Basic")),
            "{path}: {:?}",
            res.headers
        );
    }
    // The page itself is public (it shows the login form); its data is not.
    assert_eq!(http_get(addr, "/healthz", &[]).await.status, 200);
    assert_eq!(http_get(addr, "/index.html", &[]).await.status, 200);
    assert_eq!(http_get(addr, "/api/fields", &[]).await.status, 200);
    // The page asks with X-Requested-With: a 401 without a Basic challenge (no browser prompt).
    let res = http_get(
        addr,
        "/api/devices",
        &[("X-Requested-With", "smartos-page")],
    )
    .await;
    assert_eq!((res.status, res.header("www-authenticate")), (401, None));
    let devices = http_get(addr, "/api/devices", &[("Authorization", &auth)]).await;
    assert_eq!(devices.status, 200, "{}", devices.body);
    let list = devices.json();
    let serials: Vec<&str> = list
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(|r| r["serial_number"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(serials, ["0001", "0002"], "{}", devices.body);
    let (status, _) = upgrade_raw(addr, "/client/", None, &[]).await;
    assert_eq!(status, 401);
    let (status, _) = upgrade_raw(addr, "/client/", None, &[("Authorization", &auth)]).await;
    assert_eq!(status, 101);

    // Provisioning while the server holds the store goes through its admin API: a new device's token
    // works at once, and revoking a token closes that device's live connection within a second.
    let (third, err, ok) = cli(dir.path(), &["token", "issue", "0003"], "");
    assert!(ok, "{err}");
    let third = third.lines().last().unwrap().to_owned();
    let mut ws3 = device_with(addr, "/update/", Some(&third)).await;
    let ok = exchange(&mut ws3, &updt("0004", "0003", &json!({"battery": 3}))).await;
    assert_eq!(ok["message"], "0004:0003:OK", "{ok}");
    let (list, _, ok) = cli(dir.path(), &["token", "list"], "");
    assert!(ok);
    assert_eq!(
        list.lines().filter(|l| l.starts_with("000")).count(),
        3,
        "{list}"
    );
    let revoked_at = std::time::Instant::now();
    let (_, err, ok) = cli(dir.path(), &["token", "revoke", "0003"], "");
    assert!(ok, "{err}");
    let close = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        loop {
            match ws3.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => {}
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("the revoked device's connection stays open");
    let frame = close.unwrap();
    assert_eq!(u16::from(frame.code), 1008, "{frame:?}");
    assert!(revoked_at.elapsed() < std::time::Duration::from_secs(2));
    let bearer3 = format!("Bearer {third}");
    let (status, _) = upgrade_raw(addr, "/update/", None, &[("Authorization", &bearer3)]).await;
    assert_eq!(status, 401);

    // Owner actions over HTTP: a viewer is forbidden, no credentials is 401, an owner may.
    let (_, err, ok) = cli(
        dir.path(),
        &["user", "add", "boss", "--role", "owner"],
        "boss pass\n",
    );
    assert!(ok, "{err}");
    let res = http_get(addr, "/api/admin/tokens", &[("Authorization", &auth)]).await;
    assert_eq!(res.status, 403, "{}", res.body);
    assert_eq!(http_get(addr, "/api/admin/tokens", &[]).await.status, 401);
    let owner = basic("boss", "boss pass");
    let res = http_get(addr, "/api/admin/tokens", &[("Authorization", &owner)]).await;
    assert_eq!(res.status, 200, "{}", res.body);
    assert!(!res.body.contains("smartos_"), "{}", res.body);
    let res = http_get(addr, "/api/admin/users", &[("Authorization", &owner)]).await;
    assert_eq!(res.json().as_array().map(Vec::len), Some(2), "{}", res.body);

    // Failed logins are rate-limited per user and address, even for the right password then.
    let bad = basic("ops", "guess");
    for _ in 0..5 {
        let res = http_get(addr, "/api/devices", &[("Authorization", &bad)]).await;
        assert_eq!(res.status, 401);
    }
    let res = http_get(addr, "/api/devices", &[("Authorization", &bad)]).await;
    assert_eq!(res.status, 429, "{}", res.body);
    assert_eq!(res.header("retry-after"), Some("60"));

    let metrics = http_get(addr, "/metrics", &[("Authorization", &auth)])
        .await
        .body;
    let failures =
        |labels: &str| metric_or_zero(&metrics, &format!("smart_auth_failures_total{{{labels}}}"));
    assert_eq!(failures(r#"who="device",reason="missing""#), 1, "{metrics}");
    assert_eq!(failures(r#"who="device",reason="invalid""#), 3, "{metrics}");
    assert!(
        failures(r#"who="person",reason="missing""#) >= 5,
        "{metrics}"
    );
    assert_eq!(failures(r#"who="person",reason="invalid""#), 5, "{metrics}");
    assert_eq!(
        failures(r#"who="person",reason="rate_limited""#),
        1,
        "{metrics}"
    );
    assert_eq!(
        metric_or_zero(&metrics, r#"smart_messages_rejected_total{reason="token"}"#),
        1,
        "{metrics}"
    );

    drop((ws, ws2, ws3));
    child.kill().await.unwrap();
    let _ = child.wait().await;
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("refused: credentials"), "{log}");
    for secret in [
        token.as_str(),
        &other,
        &third,
        PASSWORD,
        "boss pass",
        "smartos_nope",
        &auth,
        &owner,
    ] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
    // Only the query-string form of a token is in no log either.
    assert!(!log.contains("token="), "{log}");
}

/// One request (the tests' HTTP helper): status, headers, body.
async fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    let res = common::http_request(addr, method, path, headers, body).await;
    (res.status, res.headers, res.body)
}

#[tokio::test]
async fn the_page_logs_in_with_a_form_and_a_session_cookie() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let (_, err, ok) = cli(
        dir.path(),
        &["user", "add", "ops", "--role", "viewer"],
        &format!("{PASSWORD}\n"),
    );
    assert!(ok, "{err}");
    let (mut child, addr) =
        spawn_binary_env(dir.path(), &[("SMART_AUTH", OsStr::new("required"))], &log).await;
    let form = [("content-type", "application/x-www-form-urlencoded")];

    let (status, _, body) = request(addr, "GET", "/api/me", &[], "").await;
    assert_eq!(status, 401, "{body}");
    let (status, headers, body) =
        request(addr, "POST", "/login", &form, "user=ops&password=wrong").await;
    assert_eq!(status, 401, "{body}");
    assert!(headers.iter().all(|(k, _)| k != "set-cookie"));

    let login = format!("user=ops&password={}", PASSWORD.replace(' ', "+"));
    let (status, headers, body) = request(addr, "POST", "/login", &form, &login).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["role"],
        "viewer"
    );
    let set_cookie = headers
        .iter()
        .find(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v.clone())
        .unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let with_cookie = [("cookie", cookie.as_str())];
    let (status, _, body) = request(addr, "GET", "/api/me", &with_cookie, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["user"], "ops");
    assert_eq!(
        http_get(addr, "/api/devices", &with_cookie).await.status,
        200
    );
    let (status, _) = upgrade_raw(addr, "/client/", None, &with_cookie).await;
    assert_eq!(status, 101);

    let (status, headers, _) = request(addr, "POST", "/logout", &with_cookie, "").await;
    assert_eq!(status, 200);
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "set-cookie" && v.contains("Max-Age=0"))
    );
    assert_eq!(
        http_get(addr, "/api/devices", &with_cookie).await.status,
        401
    );
    let (status, _) = upgrade_raw(addr, "/client/", None, &with_cookie).await;
    assert_eq!(status, 401);

    child.kill().await.unwrap();
    let _ = child.wait().await;
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        !log.contains(PASSWORD) && !log.contains(&cookie["smartos_session=".len()..]),
        "{log}"
    );
}

#[tokio::test]
async fn tokens_are_listed_revoked_and_provisioned_in_bulk() {
    let dir = tempfile::tempdir().unwrap();
    let token = issue(dir.path(), "0001");
    let (list, _, ok) = cli(dir.path(), &["token", "list"], "");
    assert!(ok);
    assert!(list.contains("0001\t"), "{list}");
    assert!(list.contains("never"), "{list}");
    assert!(!list.contains(&token), "{list}");

    // Used once by a running server, then listed with its last use.
    let log = dir.path().join("server.log");
    let (mut child, addr) =
        spawn_binary_env(dir.path(), &[("SMART_AUTH", OsStr::new("required"))], &log).await;
    drop(device_with(addr, "/update/", Some(&token)).await);
    let pid = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let _ = tokio::time::timeout(TIMEOUT, child.wait()).await.unwrap();
    let (list, _, _) = cli(dir.path(), &["token", "list"], "");
    let line = list.lines().find(|l| l.starts_with("0001\t")).unwrap();
    assert!(!line.ends_with("never"), "{list}");

    // Revoked: the next start refuses the token.
    let (_, err, ok) = cli(dir.path(), &["token", "revoke", "0001"], "");
    assert!(ok, "{err}");
    let (_, err, ok) = cli(dir.path(), &["token", "revoke", "0001"], "");
    assert!(!ok && err.contains("no token"), "{err}");
    let (mut child, addr) =
        spawn_binary_env(dir.path(), &[("SMART_AUTH", OsStr::new("required"))], &log).await;
    let bearer = format!("Bearer {token}");
    let (status, _) = upgrade_raw(addr, "/update/", None, &[("Authorization", &bearer)]).await;
    assert_eq!(status, 401);
    child.kill().await.unwrap();
    let _ = child.wait().await;

    // Bulk: serials on stdin, `SERIAL TOKEN` lines in a new file only the owner may read.
    let out = dir.path().join("tokens.txt");
    let out_arg = out.to_str().unwrap();
    let (_, err, ok) = cli(
        dir.path(),
        &["token", "bulk", "--out", out_arg],
        "a1\na2\n\na3\n",
    );
    assert!(ok, "{err}");
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<(&str, &str)> = text.lines().map(|l| l.split_once(' ').unwrap()).collect();
    assert_eq!(
        lines.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        ["a1", "a2", "a3"]
    );
    assert!(lines.iter().all(|(_, t)| t.starts_with("smartos_")));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // An existing file is never overwritten; a bad serial is refused before anything is issued.
    let (_, err, ok) = cli(dir.path(), &["token", "bulk", "--out", out_arg, "b1"], "");
    assert!(!ok && err.contains("must not exist"), "{err}");
    let other = dir.path().join("other.txt");
    let (_, err, ok) = cli(
        dir.path(),
        &[
            "token",
            "bulk",
            "--out",
            other.to_str().unwrap(),
            "ok",
            "not ok",
        ],
        "",
    );
    assert!(!ok && err.contains("bad serial"), "{err}");
}

#[tokio::test]
async fn the_default_on_loopback_is_open_as_before() {
    let dir = tempfile::tempdir().unwrap();
    // A token exists, but auth is off on loopback by default: devices without one still write.
    issue(dir.path(), "0001");
    let log = dir.path().join("server.log");
    let (mut child, addr) = spawn_binary_env(dir.path(), &[], &log).await;
    let mut ws = common::device(addr).await;
    let ok = exchange(&mut ws, &updt("0001", "0009", &json!({"battery": 1}))).await;
    assert_eq!(ok["message"], "0001:0009:OK");
    assert_eq!(http_get(addr, "/api/devices", &[]).await.status, 200);
    child.kill().await.unwrap();
    let _ = child.wait().await;
}
