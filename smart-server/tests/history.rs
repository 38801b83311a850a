//! The history on the real binary (issue 12): every acked numeric change is in the raw history, also
//! after SIGKILL (from the write-ahead log when no checkpoint had absorbed it yet), and
//! `/api/devices/{serial}/history` answers raw and bucketed series, JSON and CSV, and clear errors.

#![allow(clippy::unwrap_used, clippy::float_cmp)]

mod common;

use std::time::Duration;

use common::{device, http_get, send_ok, spawn_binary, spawn_binary_with};
use serde_json::{Value, json};

async fn history(addr: std::net::SocketAddr, query: &str) -> (u16, Value) {
    let res = http_get(addr, &format!("/api/devices/0001/history?{query}"), &[]).await;
    let body = serde_json::from_str(&res.body).unwrap_or(Value::Null);
    (res.status, body)
}

fn numbers(v: &Value) -> Vec<Option<f64>> {
    v.as_array().unwrap().iter().map(Value::as_f64).collect()
}

/// Polls the raw history of 0001 until it has `rows` rows (bounded: 10 s).
async fn wait_rows(addr: std::net::SocketAddr, rows: usize) {
    common::poll_until(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async move {
            let (_, raw) = history(addr, "fields=battery&agg=raw&from=0").await;
            let have = raw["battery"].as_array().map_or(0, Vec::len);
            if have == rows {
                Ok(())
            } else {
                Err(format!("{have} of {rows} rows readable: {raw}"))
            }
        },
    )
    .await;
}

fn message(i: usize) -> Value {
    if i < 20 || i % 2 == 1 {
        json!({"battery": i, "power_income": 100 + i, "country": "AT"})
    } else {
        json!({"battery": i})
    }
}

#[tokio::test]
async fn every_acked_change_survives_sigkill_in_the_raw_history() {
    let dir = tempfile::tempdir().unwrap();
    let fast = ["--checkpoint-seconds", "1"];
    let (mut child, addr) = spawn_binary_with(dir.path(), &[], &fast).await;
    let mut ws = device(addr).await;
    // Phase 1: absorbed by a checkpoint (one a second here) before the kill.
    for i in 0..20 {
        send_ok(&mut ws, &format!("{i:04}"), "0001", &message(i)).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // Phase 2: acked, then killed before any checkpoint: only the log has them.
    for i in 20..50 {
        send_ok(&mut ws, &format!("{i:04}"), "0001", &message(i)).await;
    }
    child.start_kill().unwrap();
    child.wait().await.unwrap();

    // Phase 3: with checkpoints a minute apart, acked changes are read from memory (held for the
    // next checkpoint) within seconds, and a SIGKILL then loses none of them.
    let slow = ["--checkpoint-seconds", "60"];
    let (mut child, addr) = spawn_binary_with(dir.path(), &[], &slow).await;
    wait_rows(addr, 50).await;
    let mut ws = device(addr).await;
    for i in 50..60 {
        send_ok(&mut ws, &format!("{i:04}"), "0001", &message(i)).await;
    }
    wait_rows(addr, 60).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();

    let (_child, addr) = spawn_binary(dir.path()).await;
    let (status, raw) = history(addr, "fields=battery,power_income&agg=raw&from=0").await;
    assert_eq!(status, 200, "{raw}");
    let battery = numbers(&raw["battery"]);
    let income = numbers(&raw["power_income"]);
    assert_eq!(battery.len(), 60, "one row per acked message: {raw}");
    for i in 0..60 {
        assert_eq!(battery[i], Some(i as f64), "row {i}");
        let expected = (i < 20 || i % 2 == 1).then_some(100.0 + i as f64);
        assert_eq!(income[i], expected, "row {i}");
    }
    let ts: Vec<i64> = raw["ts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_i64().unwrap())
        .collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "in time order");
    // The device record's last update is the last sample's time.
    let record = http_get(addr, "/api/devices/0001", &[]).await.json();
    let last = record["last_status_update"].as_str().unwrap();
    let last_ms = smart_proto::Timestamp::parse(last)
        .unwrap()
        .as_unix_micros()
        / 1000;
    assert_eq!(*ts.last().unwrap(), last_ms);

    // Buckets: one bucket over the whole range counts every sample.
    let query = format!(
        "fields=battery,power_income&agg=count&step=1d&from={}",
        ts[0]
    );
    let (status, counted) = history(addr, &query).await;
    assert_eq!(status, 200, "{counted}");
    let total = |column: &Value| numbers(column).iter().flatten().sum::<f64>();
    assert_eq!(total(&counted["battery"]), 60.0);
    assert_eq!(total(&counted["power_income"]), 40.0);
    assert_eq!(counted["step_ms"], 86_400_000);
    let query = format!("fields=battery&agg=max&step=1d&from={}", ts[0]);
    let (_, max) = history(addr, &query).await;
    assert_eq!(
        numbers(&max["battery"])
            .iter()
            .flatten()
            .copied()
            .reduce(f64::max),
        Some(59.0)
    );

    // CSV: a header and one line per sample.
    let res = http_get(
        addr,
        "/api/devices/0001/history?fields=battery&agg=raw&from=0&format=csv",
        &[],
    )
    .await;
    assert_eq!(res.status, 200);
    assert!(res.header("content-type").unwrap().starts_with("text/csv"));
    let lines: Vec<&str> = res.body.lines().collect();
    assert_eq!(lines[0], "ts_ms,time,\"battery\"");
    assert_eq!(lines.len(), 61);
    assert!(lines[60].ends_with(",59"), "{}", lines[60]);
}

#[tokio::test]
async fn history_requests_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (_child, addr) = spawn_binary(dir.path()).await;
    let mut ws = device(addr).await;
    send_ok(&mut ws, "0001", "0001", &json!({"battery": 1})).await;
    for (query, status, reason) in [
        ("", 400, "fields"),
        ("fields=country", 400, "not a numeric field"),
        ("fields=battery&from=soon", 400, "from: expected"),
        ("fields=battery&agg=median", 400, "agg: expected"),
        ("fields=battery&step=1s&from=0", 400, "at most 10000"),
        ("fields=battery&format=xml", 400, "format"),
    ] {
        let (got, body) = history(addr, query).await;
        assert_eq!(got, status, "{query}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(reason), "{query}: {body}");
    }
    let res = http_get(addr, "/api/devices/0404/history?fields=battery", &[]).await;
    assert_eq!(res.status, 404, "{}", res.body);
    // The default: the last 24 h at a 5-minute step, ending with the current bucket, which holds the
    // change from the next hand-over to the checkpoint thread on (about a second; the checkpoint that
    // writes it to sled comes up to 30 s later).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let body = loop {
        let (status, body) = history(addr, "fields=battery").await;
        assert_eq!(status, 200, "{body}");
        if numbers(&body["battery"]).last() == Some(&Some(1.0)) {
            break body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not in the history: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(body["step_ms"], 300_000);
    let (_, body) = history(addr, "fields=battery&agg=last&step=1h").await;
    assert_eq!(body["battery"].as_array().unwrap().len(), 25);

    // Energy: the last 7 days by default, each power field in kWh, and clear errors.
    let res = http_get(addr, "/api/devices/0001/energy", &[]).await;
    assert_eq!(res.status, 200, "{}", res.body);
    let energy = res.json();
    assert_eq!(energy["days"].as_array().unwrap().len(), 7);
    assert_eq!(energy["power_income_kwh"].as_array().unwrap().len(), 7);
    assert_eq!(energy["gap_limit_s"], 600);
    let res = http_get(addr, "/api/devices/0001/energy?from=monday", &[]).await;
    assert_eq!(res.status, 400, "{}", res.body);
    assert!(res.json()["error"].as_str().unwrap().contains("YYYY-MM-DD"));
    let res = http_get(addr, "/api/devices/0404/energy", &[]).await;
    assert_eq!(res.status, 404);
}

#[tokio::test]
async fn history_off_keeps_none() {
    let dir = tempfile::tempdir().unwrap();
    let (_child, addr) = spawn_binary_with(dir.path(), &[], &["--history", "off"]).await;
    let mut ws = device(addr).await;
    send_ok(&mut ws, "0001", "0001", &json!({"battery": 1})).await;
    let (status, body) = history(addr, "fields=battery").await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("--history off"));
}

/// The history's benchmark tool runs (small here; BENCHMARKS.md has the 48 h × 10,000-device figures)
/// and refuses a data dir that holds a store.
#[test]
fn history_fill_reports_its_figures() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = ["history-fill", "--devices", "20", "--hours", "2"];
    let (out, err, ok) = common::cli(&data, &args, "");
    assert!(ok, "{err}");
    let report: Value = serde_json::from_str(out.trim()).unwrap();
    // 20 devices × 2 h × one message per 5 s × 1 to 3 fields.
    let samples = report["raw_samples"].as_u64().unwrap();
    assert!(
        (20 * 2 * 720..=20 * 2 * 720 * 3).contains(&samples),
        "{report}"
    );
    assert_eq!(report["hours_rolled_up"], 2);
    let per_sample = report["raw_bytes_per_sample"].as_f64().unwrap();
    assert!(per_sample > 1.0 && per_sample < 6.0, "{report}");
    assert!(report["query_day_5m_p99_ms"].as_f64().is_some());
    let (_, err, ok) = common::cli(&data, &args, "");
    assert!(!ok);
    assert!(err.contains("already holds a store"), "{err}");
}

fn now_ms() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.unwrap().as_millis() as i64
}

/// The value of the metric line starting with `name` (labels included) in `/metrics`.
async fn metric(addr: std::net::SocketAddr, name: &str) -> Option<f64> {
    let text = http_get(addr, "/metrics", &[]).await.body;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// On a store filled by `history-fill` (4 h of 20 devices), the server's history thread deletes the
/// raw hours beyond `--history-raw-hours` at start while the rollups keep answering for them;
/// `/metrics` shows each tier's counted size, and a restart loads the same counts.
#[tokio::test]
async fn the_history_thread_keeps_retention_and_counts_each_tier() {
    let dir = tempfile::tempdir().unwrap();
    // The fill ends at the start of the current hour and the server cuts relative to its clock:
    // not across an hour's end.
    let hour_ms = 3_600_000;
    let into_hour = now_ms() % hour_ms;
    if into_hour > hour_ms - 30_000 {
        tokio::time::sleep(Duration::from_millis((hour_ms - into_hour) as u64 + 100)).await;
    }
    let args = ["history-fill", "--devices", "20", "--hours", "4"];
    let (out, err, ok) = common::cli(dir.path(), &args, "");
    assert!(ok, "{err}");
    let fill: Value = serde_json::from_str(out.trim()).unwrap();
    // A checkpoint every second: the counts below wait for one.
    let keep = ["--history-raw-hours", "1", "--checkpoint-seconds", "1"];
    let (child, addr) = spawn_binary_with(dir.path(), &[], &keep).await;
    let raw_keys = r#"smart_history_keys{tier="raw"}"#;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while metric(addr, "smart_history_retention_runs_total").await < Some(1.0) {
        assert!(std::time::Instant::now() < deadline, "no retention run");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The fill kept 2 of its 4 raw hours; one (the last) is left. 20 devices × 720 messages an hour
    // make 3 parts each.
    assert_eq!(metric(addr, raw_keys).await, Some(20.0 * 3.0));
    assert!(metric(addr, "smart_history_parts_removed_total").await >= Some(60.0));
    let five = metric(addr, r#"smart_history_keys{tier="5m"}"#).await;
    assert_eq!(five, fill["rollup_5m_keys"].as_f64(), "an hour per device");
    assert_eq!(five, Some(20.0 * 4.0));
    let hour = metric(addr, r#"smart_history_keys{tier="1h"}"#).await;
    assert_eq!(hour, fill["rollup_1h_keys"].as_f64());
    let bytes = r#"smart_history_bytes{tier="5m"}"#;
    assert_eq!(metric(addr, bytes).await, fill["rollup_5m_bytes"].as_f64());

    // The device must be known to be asked about.
    let mut ws = device(addr).await;
    send_ok(&mut ws, "0001", "fill000000", &json!({"country": "AT"})).await;
    let start = (now_ms() / hour_ms - 4) * hour_ms;
    let ask = |query: String| async move {
        let path = format!("/api/devices/fill000000/history?{query}");
        http_get(addr, &path, &[]).await.json()
    };
    let raw = ask(format!("fields=battery&agg=raw&from={start}")).await;
    let ts = raw["ts"].as_array().unwrap();
    assert!(!ts.is_empty(), "{raw}");
    assert!(
        ts.iter()
            .all(|t| t.as_i64().unwrap() >= start + 3 * hour_ms),
        "only the last filled hour is raw"
    );
    let hourly = ask(format!(
        "fields=battery,power_income&agg=count&step=1h&from={start}&to={}",
        start + 4 * hour_ms
    ))
    .await;
    let counts = numbers(&hourly["battery"]);
    assert_eq!(counts.len(), 4);
    assert!(
        counts.iter().all(|c| c.unwrap() > 0.0),
        "every hour from the rollups: {hourly}"
    );

    // Stopped and started again: the counts are loaded, not lost. (The new device's first message
    // added a part: wait until a checkpoint has absorbed it.)
    while metric(addr, raw_keys).await < Some(61.0) {
        assert!(std::time::Instant::now() < deadline, "not absorbed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = [
        metric(addr, raw_keys).await,
        metric(addr, bytes).await,
        metric(addr, r#"smart_history_bytes{tier="raw"}"#).await,
    ];
    drop(ws);
    let pid = child.id().unwrap();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut child = child;
    assert!(child.wait().await.unwrap().success());
    let (_child, addr) = spawn_binary_with(dir.path(), &[], &keep).await;
    let after = [
        metric(addr, raw_keys).await,
        metric(addr, bytes).await,
        metric(addr, r#"smart_history_bytes{tier="raw"}"#).await,
    ];
    assert_eq!(before, after);
}

/// The nice value of each of `pid`'s threads, by thread name (`/proc/PID/task/TID/stat`; Linux keeps a
/// nice value per thread).
#[cfg(target_os = "linux")]
fn thread_nice(pid: u32) -> std::collections::BTreeMap<String, i64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        // After the name: state is field 3, nice field 19.
        let nice = stat[close + 1..]
            .split_whitespace()
            .nth(16)
            .and_then(|n| n.parse().ok());
        if let Some(nice) = nice {
            out.insert(stat[open + 1..close].to_owned(), nice);
        }
    }
    out
}

/// Background work yields the cores to the live path when they are busy: the checkpoint thread runs 5
/// nice levels below the process, the history's maintenance 15; the writer keeps the process's own.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn checkpoints_and_history_maintenance_run_behind_the_live_path() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, _addr) = spawn_binary(dir.path()).await;
    let pid = child.id().expect("the server runs");
    // Thread names are cut to 15 bytes. Each thread lowers its own priority as it starts, and the
    // history's thread is started by the checkpoint thread (so it first has that one's nice value):
    // wait until both have done so, or 5 s.
    let wanted = ["smart-store-che", "smart-history", "smart-store-wri"];
    let settled = |threads: &std::collections::BTreeMap<String, i64>| {
        let (Some(process), Some(che), Some(history)) = (
            threads.get("smart-server"),
            threads.get("smart-store-che"),
            threads.get("smart-history"),
        ) else {
            return false;
        };
        wanted.iter().all(|name| threads.contains_key(*name))
            && *che == (process + 5).min(19)
            && *history == (process + 15).min(19)
    };
    let mut threads = thread_nice(pid);
    for _ in 0..50 {
        if settled(&threads) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        threads = thread_nice(pid);
    }
    let process = threads["smart-server"];
    assert_eq!(
        threads.get("smart-store-wri"),
        Some(&process),
        "{threads:?}"
    );
    assert_eq!(
        threads.get("smart-store-che"),
        Some(&(process + 5).min(19)),
        "{threads:?}"
    );
    assert_eq!(
        threads.get("smart-history"),
        Some(&(process + 15).min(19)),
        "{threads:?}"
    );
    child.kill().await.unwrap();
}
