//! Credentials shared by instances through a real Redis (`--redis`, `--auth required`): a token or a
//! user made on one instance works on every one, a revoke closes the device's connection wherever it
//! is, an instance that was away drops what was revoked meanwhile, and while Redis is down changes
//! are refused but every instance keeps letting in what it knew. The real binary and a real
//! `redis-server` (see `common/cluster.rs`).
#![allow(clippy::unwrap_used)]

#[path = "common/cluster.rs"]
mod cluster;
mod common;

use std::time::{Duration, Instant};

use cluster::*;
use common::*;
use futures_util::StreamExt as _;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

const PASSWORD: &str = "correct horse battery staple";
const AUTH: [(&str, &str); 1] = [("SMART_AUTH", "required")];

/// The status of a device upgrade on `instance` with `token`.
async fn upgrade_status(instance: &Instance, token: &str) -> u16 {
    let bearer = format!("Bearer {token}");
    upgrade_raw(
        instance.addr,
        "/update/",
        None,
        &[("Authorization", &bearer)],
    )
    .await
    .0
}

/// The status of `GET /api/devices` on `instance` as `user`.
async fn api_status(instance: &Instance, user: &str) -> u16 {
    let auth = basic(user, PASSWORD);
    http_get(instance.addr, "/api/devices", &[("Authorization", &auth)])
        .await
        .status
}

#[tokio::test]
async fn tokens_and_users_made_on_one_instance_hold_on_every_one() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (tmp.path().join("a"), tmp.path().join("b"));
    // Before the cluster: A has a device token and a user, B a token of its own.
    let first = issue(&dir_a, "0001");
    let (_, err, ok) = cli(
        &dir_a,
        &["user", "add", "ops", "--role", "viewer"],
        &format!("{PASSWORD}\n"),
    );
    assert!(ok, "{err}");
    let only_b = issue(&dir_b, "0009");

    // A starts first and seeds the cluster's credentials with its own; B's copy becomes the
    // cluster's: A's token and user work there, B's own token no longer does.
    let a = Instance::start_env(&dir_a, &redis, &AUTH).await;
    eventually("A seeds the cluster's credentials", &[&a], || async {
        a.log().contains("seeded the cluster's credentials")
    })
    .await;
    let b = Instance::start_env(&dir_b, &redis, &AUTH).await;
    eventually("B copies the cluster's credentials", &[&a, &b], || async {
        upgrade_status(&b, &first).await == 101
            && upgrade_status(&b, &only_b).await == 401
            && api_status(&b, "ops").await == 200
    })
    .await;
    assert!(
        b.log()
            .contains("credentials only this instance had were dropped")
    );

    // A token issued through A works on B; revoked through A, its connection on B closes with
    // 1008 and B refuses it.
    let second = issue(&dir_a, "0002");
    eventually("A's new token works on B", &[&a, &b], || async {
        upgrade_status(&b, &second).await == 101
    })
    .await;
    let mut on_b = device_with(b.addr, "/update/", Some(&second)).await;
    send_ok(&mut on_b, "0001", "0002", &json!({"battery": 42})).await;
    let (_, err, ok) = cli(&dir_a, &["token", "revoke", "0002"], "");
    assert!(ok, "{err}");
    let close = tokio::time::timeout(CONVERGE, async {
        loop {
            match on_b.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => {}
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the revoked device's connection on B stays open\n{}",
            b.log()
        )
    });
    assert_eq!(u16::from(close.unwrap().code), 1008);
    assert_eq!(upgrade_status(&b, &second).await, 401);
    assert_eq!(upgrade_status(&a, &second).await, 401);
    let metrics = http_get(
        b.addr,
        "/metrics",
        &[("Authorization", &basic("ops", PASSWORD))],
    )
    .await;
    assert_eq!(metrics.status, 200);
    assert!(metric_or_zero(&metrics.body, "smart_cluster_credentials_applied_total") >= 1);

    // B away: A revokes the first token and removes the user; B, back, drops both.
    let dir_b = b.kill().await;
    // With no server on it, B's dir refuses changes made behind the cluster's back.
    let (_, err, ok) = cli(&dir_b, &["token", "issue", "0005"], "");
    assert!(
        !ok && err.contains("credentials are the cluster's"),
        "{err}"
    );
    let (_, err, ok) = cli(&dir_a, &["token", "revoke", "0001"], "");
    assert!(ok, "{err}");
    let (_, err, ok) = cli(&dir_a, &["user", "remove", "ops"], "");
    assert!(ok, "{err}");
    assert_eq!(api_status(&a, "ops").await, 401);
    let b = Instance::start_env(&dir_b, &redis, &AUTH).await;
    eventually(
        "B drops what was revoked while it was away",
        &[&a, &b],
        || async { upgrade_status(&b, &first).await == 401 && api_status(&b, "ops").await == 401 },
    )
    .await;

    // Redis down: changes are refused (and change nothing), what every instance knew still works.
    let third = issue(&dir_a, "0003");
    eventually("A's third token works on B", &[&a, &b], || async {
        upgrade_status(&b, &third).await == 101
    })
    .await;
    redis.kill();
    let (_, err, ok) = cli(&dir_a, &["token", "issue", "0003"], "");
    assert!(!ok, "issued while Redis is down");
    assert!(
        err.contains("503") && err.contains("nothing was changed"),
        "{err}"
    );
    let (_, err, ok) = cli(&dir_a, &["token", "revoke", "0003"], "");
    assert!(!ok && err.contains("503"), "{err}");
    for instance in [&a, &b] {
        assert_eq!(upgrade_status(instance, &third).await, 101);
    }
    // Back: changes are taken again.
    redis.restart();
    let started = Instant::now();
    let fourth = loop {
        let (out, err, ok) = cli(&dir_a, &["token", "issue", "0004"], "");
        if ok {
            break out.lines().last().unwrap().to_owned();
        }
        assert!(started.elapsed() < CONVERGE, "{err}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eventually(
        "a token issued after Redis came back works on B",
        &[&a, &b],
        || async { upgrade_status(&b, &fourth).await == 101 },
    )
    .await;
}
