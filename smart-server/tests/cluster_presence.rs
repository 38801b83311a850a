//! Presence across instances sharing one fleet through a real Redis (`--redis`): a device online on
//! any instance is online on every one, and the devices of an instance that dies (SIGKILL) or stalls
//! past its heartbeat's TTL (SIGSTOP) go offline on the others. The real binary and a real
//! `redis-server` (see `common/cluster.rs`).
#![allow(clippy::unwrap_used)]

#[path = "common/cluster.rs"]
mod cluster;
mod common;

use std::time::{Duration, Instant};

use cluster::*;
use common::*;
use futures_util::StreamExt as _;
use serde_json::{Value, json};

/// The presence heartbeat's TTL in the tests that kill an instance (`--redis-presence-ttl`).
const TTL: Duration = Duration::from_secs(2);
/// What a killed instance's devices may take on top of the TTL to go offline elsewhere: the
/// watcher's check every third of the TTL, and a busy 2-core machine.
const TTL_SLACK: Duration = Duration::from_secs(4);
/// The environment for [`TTL`].
const SHORT_TTL: [(&str, &str); 1] = [("SMART_REDIS_PRESENCE_TTL", "2")];

/// Skip `dashboard`'s frames until an UPDT of `serial` says `online` (for at most [`CONVERGE`]).
async fn until_online(dashboard: &mut Ws, serial: &str, online: bool) {
    let wait = async {
        loop {
            let (_, body) = next_updt_for(dashboard, serial).await;
            if body.get("online") == Some(&Value::Bool(online)) {
                return;
            }
        }
    };
    tokio::time::timeout(CONVERGE, wait)
        .await
        .unwrap_or_else(|_| panic!("no UPDT of {serial} with online {online} within {CONVERGE:?}"));
}

/// Whether the instance's API shows `serial` online (`None`: it does not know the device).
async fn online(instance: &Instance, serial: &str) -> Option<bool> {
    instance.api(serial).await?["online"].as_bool()
}

#[tokio::test]
async fn a_device_connected_to_one_instance_is_online_on_the_others() {
    let Some((redis, tmp, a, b)) = two_instances(&[], &[], &[]).await else {
        return;
    };
    let (mut dashboard, _) = dashboard(b.addr).await;

    // Connected to A: online in B's API and on B's dashboard.
    let mut on_a = device(a.addr).await;
    send_ok(&mut on_a, "0001", "P001", &json!({"battery": 50})).await;
    until_online(&mut dashboard, "P001", true).await;
    eventually("B's API shows P001 online", &[&a, &b], || async {
        online(&b, "P001").await == Some(true)
    })
    .await;
    assert_eq!(b.metric("smart_cluster_devices_online_elsewhere").await, 1);
    eventually("B counts two instances alive", &[&b], || async {
        b.metric("smart_cluster_instances_alive").await == 2
    })
    .await;

    // Its connection to A closes: offline on B too, and B's dashboard is told.
    drop(on_a);
    until_online(&mut dashboard, "P001", false).await;
    eventually("P001 offline on A and B", &[&a, &b], || async {
        online(&a, "P001").await == Some(false) && online(&b, "P001").await == Some(false)
    })
    .await;

    // Connected to both: closing one connection leaves it online everywhere.
    let mut on_a = device(a.addr).await;
    send_ok(&mut on_a, "0002", "P001", &json!({"battery": 51})).await;
    let mut on_b = device(b.addr).await;
    send_ok(&mut on_b, "0003", "P001", &json!({"battery": 52})).await;
    eventually(
        "each instance knows the other has P001",
        &[&a, &b],
        || async {
            a.metric("smart_cluster_devices_online_elsewhere").await == 1
                && b.metric("smart_cluster_devices_online_elsewhere").await == 1
        },
    )
    .await;
    let applied = b.metric("smart_cluster_presence_changes_total").await;
    drop(on_a);
    eventually("B applied P001's offline on A", &[&a, &b], || async {
        b.metric("smart_cluster_presence_changes_total").await > applied
    })
    .await;
    // The recheck it caused was queued before this write: answered, the recheck is done.
    send_ok(&mut on_b, "0004", "P001", &json!({"battery": 53})).await;
    assert_eq!(online(&b, "P001").await, Some(true));
    assert_eq!(online(&a, "P001").await, Some(true), "online on B");
    loop {
        let (_, body) = next_updt_for(&mut dashboard, "P001").await;
        assert_ne!(body.get("online"), Some(&Value::Bool(false)), "{body}");
        if body["battery"] == 53 {
            break;
        }
    }

    // And its last connection closes: offline everywhere.
    drop(on_b);
    until_online(&mut dashboard, "P001", false).await;
    eventually("P001 offline on A and B at last", &[&a, &b], || async {
        online(&a, "P001").await == Some(false) && online(&b, "P001").await == Some(false)
    })
    .await;
    assert_eq!(a.metric("smart_cluster_presence_errors_total").await, 0);

    // An instance started now loads P001's record from Redis (which says `online: true`, as it
    // was written): presence, not the record, says it is offline.
    let c = Instance::start(&tmp.path().join("c"), &redis).await;
    eventually("C loaded P001's last record", &[&c], || async {
        field(c.api("P001").await.as_ref(), "battery") == 53
    })
    .await;
    assert_eq!(online(&c, "P001").await, Some(false));
}

#[tokio::test]
async fn the_devices_of_a_killed_instance_go_offline_on_the_others_within_the_ttl() {
    let Some((_redis, _tmp, a, b)) = two_instances(&[], &SHORT_TTL, &SHORT_TTL).await else {
        return;
    };
    let (mut dashboard, _) = dashboard(b.addr).await;
    let mut devices = Vec::new();
    for serial in ["K001", "K002"] {
        let mut ws = device(a.addr).await;
        send_ok(&mut ws, "0001", serial, &json!({"battery": 10})).await;
        devices.push(ws);
    }
    eventually("A's devices are online on B", &[&a, &b], || async {
        online(&b, "K001").await == Some(true) && online(&b, "K002").await == Some(true)
    })
    .await;
    until_online(&mut dashboard, "K002", true).await;
    eventually("B counts two instances alive", &[&b], || async {
        b.metric("smart_cluster_instances_alive").await == 2
    })
    .await;

    // SIGKILL: A says nothing more; its heartbeat expires.
    let killed = Instant::now();
    let _ = a.kill().await;
    until_online(&mut dashboard, "K002", false).await;
    let took = killed.elapsed();
    eprintln!("K002 offline on B {took:?} after A's SIGKILL (presence TTL {TTL:?})");
    assert!(
        took <= TTL + TTL_SLACK,
        "K002 went offline on B {took:?} after A was killed (TTL {TTL:?})"
    );
    eventually("both of A's devices are offline on B", &[&b], || async {
        online(&b, "K001").await == Some(false) && online(&b, "K002").await == Some(false)
    })
    .await;
    assert!(b.metric("smart_cluster_instances_lost_total").await >= 1);
    assert_eq!(b.metric("smart_cluster_instances_alive").await, 1);
    assert_eq!(b.metric("smart_cluster_devices_online_elsewhere").await, 0);
    drop(devices);
}

#[tokio::test]
async fn a_device_of_a_killed_instance_that_reconnects_to_another_is_online_there() {
    let Some((redis, tmp, a, b)) = two_instances(&[], &SHORT_TTL, &SHORT_TTL).await else {
        return;
    };
    let mut on_a = device(a.addr).await;
    send_ok(&mut on_a, "0001", "K020", &json!({"battery": 20})).await;
    eventually("K020 is online on B", &[&a, &b], || async {
        online(&b, "K020").await == Some(true)
    })
    .await;
    let _ = a.kill().await;
    drop(on_a);
    eventually(
        "K020 is offline on B once A's heartbeat expired",
        &[&b],
        || async { online(&b, "K020").await == Some(false) },
    )
    .await;

    // The device reconnects to B.
    let (mut dashboard, _) = dashboard(b.addr).await;
    let mut on_b = device(b.addr).await;
    send_ok(&mut on_b, "0002", "K020", &json!({"battery": 21})).await;
    until_online(&mut dashboard, "K020", true).await;
    let record = b.api("K020").await.unwrap();
    assert_eq!(record["online"], true, "{record}");
    assert_eq!(record["battery"], 21, "{record}");

    // Redis: B alone is alive, and has K020 online.
    let mut conn = redis.connection().unwrap();
    eventually("Redis lists B alone, with K020 online", &[&b], || {
        let alive: Vec<String> = redis::cmd("SMEMBERS")
            .arg("smart:instances")
            .query(&mut conn)
            .unwrap();
        let online: Vec<String> = match alive.as_slice() {
            [only] => redis::cmd("SMEMBERS")
                .arg(format!("smart:online:{only}"))
                .query(&mut conn)
                .unwrap(),
            _ => Vec::new(),
        };
        async move { online == ["K020"] }
    })
    .await;

    // An instance started now learns it from Redis.
    let c = Instance::start_env(&tmp.path().join("c"), &redis, &SHORT_TTL).await;
    eventually("K020 is online on C", &[&b, &c], || async {
        online(&c, "K020").await == Some(true)
    })
    .await;
    assert_eq!(field(c.api("K020").await.as_ref(), "battery"), 21);
}

#[tokio::test]
async fn an_instance_stalled_past_its_ttl_brings_its_devices_back_online_when_it_resumes() {
    let Some((_redis, _tmp, a, b)) = two_instances(&[], &SHORT_TTL, &SHORT_TTL).await else {
        return;
    };
    let mut on_a = device(a.addr).await;
    send_ok(&mut on_a, "0001", "S001", &json!({"battery": 30})).await;
    eventually("S001 is online on B", &[&a, &b], || async {
        online(&b, "S001").await == Some(true)
    })
    .await;

    // A stops (SIGSTOP) past its TTL: B takes its device for offline.
    a.signal("-STOP");
    eventually("S001 is offline on B while A is stopped", &[&b], || async {
        online(&b, "S001").await == Some(false)
    })
    .await;
    assert!(b.metric("smart_cluster_instances_lost_total").await >= 1);

    // A resumes: it finds its heartbeat gone, publishes its whole set again, and B takes it back.
    a.signal("-CONT");
    eventually("S001 is online on B again", &[&a, &b], || async {
        online(&b, "S001").await == Some(true)
    })
    .await;
    eventually("B counts A alive again", &[&a, &b], || async {
        b.metric("smart_cluster_instances_alive").await == 2
    })
    .await;
    assert!(
        a.log().contains("heartbeat had expired"),
        "A noticed its heartbeat had expired"
    );
    // The device's connection held throughout: it still writes through A.
    send_ok(&mut on_a, "0002", "S001", &json!({"battery": 31})).await;
    eventually("B has S001's new value, online", &[&a, &b], || async {
        let record = b.api("S001").await;
        field(record.as_ref(), "battery") == 31 && field(record.as_ref(), "online") == true
    })
    .await;
}

/// The next INFO frame of `dashboard` (other frames skipped), for at most [`CONVERGE`].
async fn next_info(dashboard: &mut Ws) -> Value {
    let wait = async {
        loop {
            let frame = recv_json(dashboard).await;
            if frame["type"] == "INFO" {
                return frame;
            }
        }
    };
    tokio::time::timeout(CONVERGE, wait)
        .await
        .unwrap_or_else(|_| panic!("no INFO frame within {CONVERGE:?}"))
}

/// `/client/?stale=1` (an extension): while an instance cannot read the change stream, its
/// dashboards are told that the devices not connected to it may be out of date (INFO `STALE`, with
/// the serials connected here), and told again once they are current (`LIVE`). Without `stale=1`
/// nothing changes for a dashboard.
#[tokio::test]
async fn dashboards_that_ask_are_told_when_other_instances_devices_may_be_stale() {
    let Some((mut redis, _tmp, a, b)) = two_instances(&[], &[], &[]).await else {
        return;
    };
    let mut on_a = device(a.addr).await;
    send_ok(&mut on_a, "0001", "S00A", &json!({"battery": 1})).await;
    let mut on_b = device(b.addr).await;
    send_ok(&mut on_b, "0001", "S00B", &json!({"battery": 2})).await;
    eventually("B knows A's device", &[&a, &b], || async {
        b.api("S00A").await.is_some()
    })
    .await;
    let mut asking = connect(b.addr, "/client/?stale=1").await;
    assert_eq!(recv_text(&mut asking).await, DASHBOARD_WELCOME);
    assert_eq!(recv_json(&mut asking).await["type"], "INIT");
    let (mut plain, _) = dashboard(b.addr).await;

    redis.kill();
    let stale = next_info(&mut asking).await;
    assert_eq!(stale["message"], "STALE", "{stale}");
    assert_eq!(stale["local"], json!(["S00B"]), "{stale}");
    assert!(stale["since_ms"].as_u64().is_some_and(|t| t > 0), "{stale}");
    // A dashboard that connects meanwhile is told at once, after its INIT.
    let mut late = connect(b.addr, "/client/?stale=1").await;
    assert_eq!(recv_text(&mut late).await, DASHBOARD_WELCOME);
    assert_eq!(recv_json(&mut late).await["type"], "INIT");
    let told = recv_json(&mut late).await;
    assert_eq!(told["message"], "STALE", "{told}");
    assert_eq!(told["since_ms"], stale["since_ms"]);

    redis.restart();
    assert_eq!(next_info(&mut asking).await["message"], "LIVE");
    assert_eq!(next_info(&mut late).await["message"], "LIVE");
    // The dashboard that did not ask got no INFO at all (its UPDTs, if any, are all it got).
    while let Ok(Some(Ok(frame))) =
        tokio::time::timeout(Duration::from_millis(300), plain.next()).await
    {
        if let tokio_tungstenite::tungstenite::Message::Text(text) = frame {
            assert!(!text.contains("\"INFO\""), "{text}");
        }
    }
    drop((on_a, on_b));
}
