//! Issue 9 item 7: a costly query never holds up device acks. Substring filters over long texts are
//! evaluated on a snapshot, outside the fleet's lock and off the runtime's workers; before, one such
//! query held the lock that every device write needed and stalled every ack for seconds.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn costly_queries_do_not_hold_up_device_acks() {
    let dir = tempfile::tempdir().unwrap();
    // Long texts are allowed here (an operator may raise the cap): the search must stay linear.
    let (_child, addr) = spawn_binary_with(dir.path(), &[], &["--max-extra-bytes", "100000"]).await;
    let mut dev = device(addr).await;
    // 100 devices with a 40 KB text each: the worst case of a naive substring search.
    let long = "a".repeat(40_000);
    for i in 0..100 {
        send_ok(
            &mut dev,
            "0001",
            &format!("L{i:03}"),
            &json!({"note": long}),
        )
        .await;
    }
    // Every filter value is a needle that almost matches everywhere.
    let needle = format!("{}b", "a".repeat(250));
    let path = format!("/api/devices?q=filter:note:=:{needle}");

    let queries: Vec<_> = (0..4)
        .map(|_| {
            let path = path.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let res = http_get(addr, &path, &[]).await;
                (res.status, res.body, started.elapsed())
            })
        })
        .collect();
    // Meanwhile a device sends one message at a time and times each ack.
    let mut slowest = Duration::ZERO;
    let ingest_started = Instant::now();
    let mut sent = 0;
    while sent < 20 || (ingest_started.elapsed() < Duration::from_secs(3) && sent < 2_000) {
        let started = Instant::now();
        send_ok(&mut dev, "0002", "Q1", &json!({"battery": sent})).await;
        slowest = slowest.max(started.elapsed());
        sent += 1;
    }
    for query in queries {
        let (status, body, took) = query.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, "[]", "nothing contains the needle");
        eprintln!("query took {took:?}");
    }
    eprintln!("{sent} acks, slowest {slowest:?}");
    assert!(
        slowest < Duration::from_secs(2),
        "a device ack waited {slowest:?} while queries ran"
    );
}
