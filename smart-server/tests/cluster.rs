//! Several instances sharing one fleet through a real Redis (`--redis`): the real binary, a real
//! `redis-server` started by the test on a free loopback port with its own directory (append-only
//! file synced on every write), killed at the end, on panic too.
//!
//! Without `redis-server` installed these tests fail under CI (`CI=true`) and are skipped loudly
//! elsewhere (`scripts/test.sh` and `.ci/run` install it).
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// How long a change may take to reach Redis or another instance (generous: a busy 2-core machine).
const CONVERGE: Duration = Duration::from_secs(20);

/// A `redis-server` of this test's own, on 127.0.0.1.
struct Redis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    options: Vec<String>,
}

impl Redis {
    /// Start one, or `None` (after a loud message) where `redis-server` is missing outside CI.
    fn start() -> Option<Redis> {
        Redis::start_with(&[])
    }

    /// [`Redis::start`] with extra `redis-server` options.
    fn start_with(options: &[&str]) -> Option<Redis> {
        let found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
            assert!(
                !ci,
                "redis-server is not installed: CI must install it (apt-get install redis-server; see scripts/test.sh)"
            );
            eprintln!(
                "\n*** SKIPPED: redis-server is not installed (apt-get install redis-server); the cluster tests did not run ***\n"
            );
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = Redis {
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
            options: options.iter().map(|o| (*o).to_owned()).collect(),
        };
        redis.restart();
        Some(redis)
    }

    /// Start it again on the same port and directory (what it had synced comes back).
    fn restart(&mut self) {
        assert!(self.child.is_none());
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--dir")
            .arg(self.dir.path())
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .args(["--daemonize", "no", "--logfile", ""])
            .args(&self.options)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let pong = self
                .connection()
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if pong.is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, and wait until it is gone.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Send `signal` (`-STOP`, `-CONT`) to the running `redis-server`.
    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().unwrap().id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn connection(&self) -> redis::RedisResult<redis::Connection> {
        let client = redis::Client::open(self.url())?;
        let mut tries = 0;
        loop {
            match client.get_connection_with_timeout(Duration::from_secs(2)) {
                // A signal (SIGCHLD of a `kill` this test ran) interrupted the connect: again.
                Err(e) if e.is_io_error() && e.to_string().contains("os error 4") && tries < 5 => {
                    tries += 1;
                }
                connected => return connected,
            }
        }
    }

    /// The record Redis holds for `serial`.
    fn record(&self, serial: &str) -> Option<Value> {
        let mut conn = self.connection().ok()?;
        let json: Option<String> = redis::cmd("HGET")
            .arg("smart:devices")
            .arg(serial)
            .query(&mut conn)
            .ok()?;
        serde_json::from_str(&json?).ok()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One `smart-server` process with `--redis` (killed on drop), its log kept for failures.
struct Instance {
    child: tokio::process::Child,
    addr: SocketAddr,
    dir: PathBuf,
    log: PathBuf,
}

impl Instance {
    async fn start(dir: &Path, redis: &Redis) -> Instance {
        Instance::start_env(dir, redis, &[]).await
    }

    /// [`Instance::start`] with more environment (`SMART_*` flags).
    async fn start_env(dir: &Path, redis: &Redis, env: &[(&str, &str)]) -> Instance {
        let url = redis.url();
        let log = dir.with_extension("log");
        let mut envs = vec![
            ("SMART_REDIS", std::ffi::OsStr::new(&url)),
            ("RUST_LOG", std::ffi::OsStr::new("info")),
            // A checkpoint (and rotation) every second, as the tests below expect.
            ("SMART_CHECKPOINT_SECONDS", std::ffi::OsStr::new("1")),
        ];
        envs.extend(env.iter().map(|(k, v)| (*k, std::ffi::OsStr::new(*v))));
        let (child, addr) = spawn_binary_env(dir, &envs, &log).await;
        Instance {
            child,
            addr,
            dir: dir.to_path_buf(),
            log,
        }
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().unwrap();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    async fn kill(mut self) -> PathBuf {
        self.child.kill().await.unwrap();
        self.dir.clone()
    }

    async fn api(&self, serial: &str) -> Option<Value> {
        let res = http_get(self.addr, &format!("/api/devices/{serial}"), &[]).await;
        (res.status == 200).then(|| res.json())
    }

    async fn metric(&self, name: &str) -> u64 {
        let res = http_get(self.addr, "/metrics", &[]).await;
        assert_eq!(res.status, 200);
        metric_or_zero(&res.body, name)
    }

    async fn health(&self) -> Value {
        http_get(self.addr, "/healthz", &[]).await.json()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Poll `check` until it holds, for at most [`CONVERGE`]; panics with `what` and the logs.
async fn eventually<F, Fut>(what: &str, logs: &[&Instance], mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + CONVERGE;
    while !check().await {
        if Instant::now() >= deadline {
            let logs: Vec<String> = logs.iter().map(|i| i.log()).collect();
            panic!(
                "not within {CONVERGE:?}: {what}\nlogs:\n{}",
                logs.join("\n---\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A Redis of the test's own (started with `options`) and two instances on it, A and B (with the
/// environment `env_a` and `env_b`), and the directory holding their data; `None` where
/// `redis-server` is missing (see [`Redis::start`]).
async fn two_instances(
    options: &[&str],
    env_a: &[(&str, &str)],
    env_b: &[(&str, &str)],
) -> Option<(Redis, tempfile::TempDir, Instance, Instance)> {
    let redis = Redis::start_with(options)?;
    let tmp = tempfile::tempdir().unwrap();
    let a = Instance::start_env(&tmp.path().join("a"), &redis, env_a).await;
    let b = Instance::start_env(&tmp.path().join("b"), &redis, env_b).await;
    Some((redis, tmp, a, b))
}

/// The next UPDT of `serial` that is not only its presence (`{"online": …}`: the device came
/// online on another instance, which may reach this one before or after its record).
async fn next_change_for(dashboard: &mut Ws, serial: &str) -> (String, Value) {
    loop {
        let (mid, body) = next_updt_for(dashboard, serial).await;
        let presence_only = body
            .as_object()
            .is_some_and(|fields| fields.len() == 1 && fields.contains_key("online"));
        if !presence_only {
            return (mid, body);
        }
    }
}

/// A field of a record, if the record is there.
fn field(record: Option<&Value>, key: &str) -> Value {
    record.map_or(Value::Null, |r| r[key].clone())
}

#[tokio::test]
async fn a_change_acked_on_one_instance_reaches_the_dashboards_and_api_of_another() {
    let Some((redis, _tmp, a, b)) = two_instances(&[], &[], &[]).await else {
        return;
    };
    let (mut dashboard, _) = dashboard(b.addr).await;

    let mut device = device(a.addr).await;
    send_ok(
        &mut device,
        "0001",
        "C001",
        &json!({"battery": 42, "note": "from A"}),
    )
    .await;

    let (mid, body) = next_change_for(&mut dashboard, "C001").await;
    assert_eq!(mid, "0000");
    assert_eq!(body["battery"], 42, "{body}");
    assert_eq!(body["note"], "from A", "{body}");

    let on_a = a.api("C001").await.unwrap();
    eventually("B's API answers A's record", &[&a, &b], || async {
        b.api("C001").await.as_ref() == Some(&on_a)
    })
    .await;
    assert_eq!(redis.record("C001").as_ref(), Some(&on_a));

    // A second change: only what changed reaches B's dashboard.
    send_ok(&mut device, "0002", "C001", &json!({"battery": 43})).await;
    let (_, body) = next_change_for(&mut dashboard, "C001").await;
    assert_eq!(body["battery"], 43, "{body}");
    assert!(body.get("note").is_none(), "{body}");
    assert!(body.get("last_status_update").is_some(), "{body}");
    assert!(a.metric("smart_cluster_shipped_batches_total").await >= 2);
    assert!(b.metric("smart_cluster_remote_applied_total").await >= 2);
    assert_eq!(a.health().await["redis"], "ok");
    // B shipped nothing, and says whether Redis answers all the same.
    eventually("B reports Redis up", &[&b], || async {
        let health = b.health().await;
        health["status"] == "ok" && health["redis"] == "ok"
    })
    .await;
}

#[tokio::test]
async fn an_older_change_shipped_late_never_overwrites_a_newer_one() {
    let Some((mut redis, _tmp, a, b)) = two_instances(&[], &[], &[]).await else {
        return;
    };

    // The device is on A while Redis is away: acked, not shipped.
    redis.kill();
    let mut on_a = device(a.addr).await;
    send_ok(&mut on_a, "0001", "M001", &json!({"battery": 1})).await;
    drop(on_a);
    // A stops before it can ship; Redis comes back; the device moves to B and sends again.
    a.signal("-STOP");
    redis.restart();
    let mut on_b = device(b.addr).await;
    send_ok(&mut on_b, "0002", "M001", &json!({"battery": 2})).await;
    eventually("Redis holds B's newer change", &[&b], || async {
        field(redis.record("M001").as_ref(), "battery") == 2
    })
    .await;

    // A resumes and ships its older change: Redis keeps the newer one, and A converges to it.
    a.signal("-CONT");
    eventually("A shipped its backlog", &[&a], || async {
        a.metric("smart_cluster_backlog_records").await == 0
            && a.metric("smart_cluster_shipped_records_total").await >= 1
    })
    .await;
    assert_eq!(field(redis.record("M001").as_ref(), "battery"), 2);
    eventually("A applies B's newer change", &[&a, &b], || async {
        field(a.api("M001").await.as_ref(), "battery") == 2
    })
    .await;
    assert_eq!(field(b.api("M001").await.as_ref(), "battery"), 2);
    assert_eq!(field(redis.record("M001").as_ref(), "battery"), 2);
}

/// The sequence number of the newest log segment in `dir`'s write-ahead log.
fn newest_segment(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_suffix(".log")?
                .parse()
                .ok()
        })
        .max()
        .unwrap_or(0)
}

/// The values of each device's last acked message, for `devices` devices after `rounds` rounds.
fn expected(devices: usize, rounds: usize) -> Vec<(String, i64)> {
    (0..devices)
        .map(|d| (format!("R{d:03}"), (rounds * 100 + d) as i64))
        .collect()
}

/// `rounds` messages for each of `devices` devices, over one connection each; every one must be OK.
async fn send_rounds(addr: SocketAddr, devices: usize, rounds: usize) {
    let mut sockets = Vec::new();
    for _ in 0..devices {
        sockets.push(device(addr).await);
    }
    for round in 1..=rounds {
        for (d, ws) in sockets.iter_mut().enumerate() {
            let serial = format!("R{d:03}");
            let mid = format!("{round:04}");
            send_ok(ws, &mid, &serial, &json!({"power_income": round * 100 + d})).await;
        }
    }
}

#[tokio::test]
async fn redis_away_for_seconds_loses_nothing_and_the_instances_converge() {
    const DEVICES: usize = 5;
    const ROUNDS: usize = 20;
    let Some((mut redis, _tmp, a, b)) = two_instances(&[], &[], &[]).await else {
        return;
    };

    send_rounds(a.addr, DEVICES, 2).await;
    redis.kill();
    let started = Instant::now();
    // Every message is acked while Redis is away (send_rounds asserts each OK).
    send_rounds(a.addr, DEVICES, ROUNDS).await;
    eventually("A reports Redis down", &[&a], || async {
        a.health().await["status"] == "degraded"
    })
    .await;
    let health = a.health().await;
    assert_eq!(health["redis"], "down", "{health}");
    assert!(a.metric("smart_cluster_ship_errors_total").await >= 1);
    assert!(a.metric("smart_cluster_backlog_records").await >= 1);
    // Away for a few seconds (at least two), then back on the same port and directory.
    if let Some(left) = Duration::from_secs(2).checked_sub(started.elapsed()) {
        tokio::time::sleep(left).await;
    }
    redis.restart();

    for (serial, value) in expected(DEVICES, ROUNDS) {
        eventually(
            &format!("Redis and B hold {serial}'s last change"),
            &[&a, &b],
            || async {
                field(redis.record(&serial).as_ref(), "power_income") == value
                    && field(b.api(&serial).await.as_ref(), "power_income") == value
            },
        )
        .await;
    }
    eventually("A is healthy again", &[&a], || async {
        a.health().await["status"] == "ok"
    })
    .await;
    assert_eq!(a.metric("smart_cluster_backlog_records").await, 0);
    let rejected: u64 = http_get(a.addr, "/metrics", &[])
        .await
        .body
        .lines()
        .filter(|l| l.starts_with("smart_messages_rejected_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(rejected, 0, "no device got an ERROR");
}

#[tokio::test]
async fn acks_of_an_instance_killed_while_redis_was_away_reach_redis_after_its_restart() {
    const DEVICES: usize = 4;
    const ROUNDS: usize = 10;
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let a = Instance::start(&tmp.path().join("a"), &redis).await;

    redis.kill();
    send_rounds(a.addr, DEVICES, ROUNDS).await;
    // Another device keeps writing until the log has rotated three times: the segments holding the
    // acks above are checkpointed into sled, and without the shipper's hold they would be retired.
    let mut ticker = device(a.addr).await;
    let deadline = Instant::now() + CONVERGE;
    for n in 0.. {
        send_ok(
            &mut ticker,
            &format!("{:04}", n % 10_000),
            "T000",
            &json!({"battery": n % 100}),
        )
        .await;
        if newest_segment(&a.dir) >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the log did not rotate\n{}",
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dir = a.kill().await;
    redis.restart();
    for (serial, _) in expected(DEVICES, ROUNDS) {
        assert_eq!(
            redis.record(&serial),
            None,
            "{serial} was shipped before the kill"
        );
    }

    let a = Instance::start(&dir, &redis).await;
    for (serial, value) in expected(DEVICES, ROUNDS) {
        eventually(
            &format!("Redis holds {serial}'s last acked change"),
            &[&a],
            || async { field(redis.record(&serial).as_ref(), "power_income") == value },
        )
        .await;
    }
    // Shipped, the kept segments are retired (the checkpoint runs once a second).
    eventually("the kept log segments are retired", &[&a], || async {
        std::fs::read_dir(dir.join("wal"))
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
            .filter(|e| e.file_name() != "next.log")
            .count()
            <= 2
    })
    .await;
}

#[tokio::test]
async fn an_instance_the_stream_was_trimmed_past_loads_the_latest_records_again() {
    const DEVICES: usize = 30;
    const MAX_ROUNDS: usize = 20;
    // Small stream nodes, so that `MAXLEN ~ 5` trims a few entries at a time.
    let Some((redis, _tmp, a, b)) = two_instances(
        &["--stream-node-max-entries", "4"],
        &[("SMART_REDIS_STREAM_MAX_LEN", "5")],
        &[],
    )
    .await
    else {
        return;
    };
    // B follows the stream (it has noted its position: stopped before that, it would simply load
    // the latest records when it resumes, no resync)…
    eventually("B follows the change stream", &[&b], || async {
        b.health().await["redis"] == "ok"
    })
    .await;
    // …and is not reading while A's changes push the stream past it: rounds until at least ten
    // entries B never read are trimmed (its blocked read took the first one at most).
    b.signal("-STOP");
    let mut conn = redis.connection().unwrap();
    let mut rounds = 0;
    loop {
        rounds += 1;
        send_rounds(a.addr, DEVICES, 1).await;
        let info: std::collections::HashMap<String, redis::Value> = redis::cmd("XINFO")
            .arg("STREAM")
            .arg("smart:changes")
            .query(&mut conn)
            .unwrap();
        let number = |key: &str| redis::from_redis_value::<u64>(&info[key]).unwrap();
        if number("entries-added") >= number("length") + 10 {
            break;
        }
        assert!(rounds < MAX_ROUNDS, "the stream was not trimmed: {info:?}");
    }
    let last: Vec<(String, i64)> = (0..DEVICES)
        .map(|d| (format!("R{d:03}"), (100 + d) as i64))
        .collect();
    for (serial, value) in &last {
        eventually(&format!("Redis holds {serial}"), &[&a], || async {
            field(redis.record(serial).as_ref(), "power_income") == *value
        })
        .await;
    }
    b.signal("-CONT");
    for (serial, value) in &last {
        eventually(
            &format!("B holds {serial}'s last change"),
            &[&b],
            || async { field(b.api(serial).await.as_ref(), "power_income") == *value },
        )
        .await;
    }
    assert!(b.metric("smart_cluster_resyncs_total").await >= 1);
}

/// The OK or ERROR of a device message (skipping nothing: the device sends one at a time).
async fn reply_to(device: &mut Ws) -> Value {
    recv_json(device).await
}

/// `--ack cluster`: an OK means Redis has the write. A write Redis cannot take yet waits for it
/// (stored here, answered OK once Redis has it); once the instance knows Redis is away, new writes
/// get ERROR and nothing of them is stored, and `/healthz` says 503; Redis back, writes get OK again.
#[tokio::test]
async fn with_ack_cluster_an_ok_means_redis_has_the_write() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let a = Instance::start_env(&tmp.path().join("a"), &redis, &[("SMART_ACK", "cluster")]).await;
    let mut first = device(a.addr).await;
    for n in 1..=5 {
        send_ok(
            &mut first,
            &format!("{n:04}"),
            "K001",
            &json!({"battery": n}),
        )
        .await;
        assert_eq!(
            field(redis.record("K001").as_ref(), "battery"),
            n,
            "an OK came before Redis had the write"
        );
    }
    assert_eq!(a.health().await["acks_waiting_for_redis"], 0);

    // Redis frozen: no answer while it cannot reply; OK once it has the write.
    redis.signal("-STOP");
    send(&mut first, &updt("0006", "K001", &json!({"battery": 6}))).await;
    assert_silent(&mut first, Duration::from_millis(1500)).await;
    redis.signal("-CONT");
    assert_eq!(
        reply_to(&mut first).await,
        json!({"type": "INFO", "message": "0006:K001:OK"})
    );
    assert_eq!(field(redis.record("K001").as_ref(), "battery"), 6);

    // Redis gone: the write in flight waits (it is stored here); the instance turns unhealthy.
    redis.kill();
    send(&mut first, &updt("0007", "K001", &json!({"battery": 7}))).await;
    eventually("A reports Redis down with 503", &[&a], || async {
        let res = http_get(a.addr, "/healthz", &[]).await;
        res.status == 503 && res.json()["redis"] == "down"
    })
    .await;
    // (The instance may learn that Redis is gone from its stream reader before the write arrives.)
    eventually("the write waits, its shipping failed", &[&a], || async {
        a.health().await["acks_waiting_for_redis"] == 1
            && a.metric("smart_cluster_ship_errors_total").await >= 1
    })
    .await;
    // Any other write is refused before it is stored.
    let mut second = device(a.addr).await;
    let refused = exchange(&mut second, &updt("0001", "K002", &json!({"battery": 50}))).await;
    assert_eq!(refused["message"], "0001:K002:ERROR", "{refused}");
    assert!(
        refused["reason"].as_str().unwrap().contains("Redis"),
        "{refused}"
    );
    assert!(a.api("K002").await.is_none(), "a refused write was stored");
    assert!(
        a.metric("smart_messages_rejected_total{reason=\"storage\"}")
            .await
            >= 1
    );
    assert_silent(&mut first, Duration::from_millis(300)).await;

    // Redis back: the waiting write is answered once shipped, and writes are taken again.
    redis.restart();
    assert_eq!(
        reply_to(&mut first).await,
        json!({"type": "INFO", "message": "0007:K001:OK"})
    );
    assert_eq!(field(redis.record("K001").as_ref(), "battery"), 7);
    send_ok(&mut second, "0002", "K002", &json!({"battery": 51})).await;
    assert_eq!(field(redis.record("K002").as_ref(), "battery"), 51);
    eventually("A healthy again", &[&a], || async {
        http_get(a.addr, "/healthz", &[]).await.status == 200
    })
    .await;
}

/// `--ack cluster` without `--redis` is refused at start, with the reason.
#[test]
fn ack_cluster_without_redis_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_smart-server"))
        .args(["--listen", "127.0.0.1:0", "--ack", "cluster", "--data-dir"])
        .arg(dir.path().join("data"))
        .env_remove("SMART_REDIS")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--ack cluster needs --redis"), "{stderr}");
}

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

/// Three instances on one Redis (issue 14): a dashboard on C sees every change acked on A and B, in
/// the order each device sent them; afterwards C's snapshot (a new dashboard's INIT), Redis's latest
/// records, every instance's API and the last acked values agree for every device.
#[tokio::test]
async fn three_instances_a_dashboard_on_one_sees_what_the_others_acked() {
    let Some((redis, tmp, a, b)) = two_instances(&[], &[], &[]).await else {
        return;
    };
    let c = Instance::start(&tmp.path().join("c"), &redis).await;
    let (mut watching, _) = dashboard(c.addr).await;
    // Three devices on A, three on B, each on its own connection; five changes each.
    let mut expected = std::collections::BTreeMap::new();
    for (instance, prefix) in [(&a, "TA"), (&b, "TB")] {
        for k in 0..3 {
            let serial = format!("{prefix}{k:02}");
            let mut link = device(instance.addr).await;
            for n in 0..5 {
                let value = n * 10 + k;
                send_ok(
                    &mut link,
                    &format!("{:04}", n + 1),
                    &serial,
                    &json!({"battery": value}),
                )
                .await;
                expected.insert(serial.clone(), value);
            }
        }
    }
    // C's dashboard: each device's batteries arrive in the order they were acked, ending at the last.
    let mut seen: std::collections::BTreeMap<String, Vec<i64>> = std::collections::BTreeMap::new();
    let deadline = Instant::now() + CONVERGE;
    while expected
        .iter()
        .any(|(serial, last)| seen.get(serial).and_then(|v| v.last()) != Some(last))
    {
        assert!(
            Instant::now() < deadline,
            "C's dashboard saw {seen:?}, expected {expected:?}"
        );
        let frame = recv_json(&mut watching).await;
        if frame["type"] != "UPDT" {
            continue;
        }
        let (_, serial, body) = parse_updt(&frame);
        if let Some(battery) = body["battery"].as_i64() {
            seen.entry(serial).or_default().push(battery);
        }
    }
    for (serial, values) in &seen {
        assert!(values.is_sorted(), "{serial}: {values:?} out of order");
    }
    // Snapshot, Redis and every API agree with the last acked values.
    let (_, init) = dashboard(c.addr).await;
    for (serial, last) in &expected {
        let in_init = init.iter().find(|r| r["serial_number"] == serial.as_str());
        assert_eq!(field(in_init, "battery"), *last, "{serial} in C's INIT");
        assert_eq!(
            field(redis.record(serial).as_ref(), "battery"),
            *last,
            "{serial} in Redis"
        );
        for (name, instance) in [("A", &a), ("B", &b), ("C", &c)] {
            // (A and B read the stream at their own pace.)
            eventually(
                &format!("{name}'s API answers {serial}'s last acked value"),
                &[&a, &b, &c],
                || async { field(instance.api(serial).await.as_ref(), "battery") == *last },
            )
            .await;
        }
    }
}
