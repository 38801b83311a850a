//! The cluster tests' helpers (`tests/cluster*.rs`, through `#[path]`): a real `redis-server` of
//! the test's own on a free loopback port with its own directory (append-only file synced on every
//! write), killed at the end, on panic too; `smart-server` processes with `--redis`; bounded polling.
//!
//! Without `redis-server` installed the tests fail under CI (`CI=true`) and are skipped loudly
//! elsewhere (`scripts/test.sh` and `.ci/run` install it).
#![allow(dead_code, clippy::unwrap_used, clippy::missing_panics_doc)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::*;

/// How long a change may take to reach Redis or another instance (generous: a busy 2-core machine).
pub const CONVERGE: Duration = Duration::from_secs(20);

/// A `redis-server` of this test's own, on 127.0.0.1.
pub struct Redis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    options: Vec<String>,
}

impl Redis {
    /// Start one, or `None` (after a loud message) where `redis-server` is missing outside CI.
    pub fn start() -> Option<Redis> {
        Redis::start_with(&[])
    }

    /// [`Redis::start`] with extra `redis-server` options.
    pub fn start_with(options: &[&str]) -> Option<Redis> {
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
    pub fn restart(&mut self) {
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
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Send `signal` (`-STOP`, `-CONT`) to the running `redis-server`.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().unwrap().id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn connection(&self) -> redis::RedisResult<redis::Connection> {
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
    pub fn record(&self, serial: &str) -> Option<Value> {
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
pub struct Instance {
    child: tokio::process::Child,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    log: PathBuf,
}

impl Instance {
    pub async fn start(dir: &Path, redis: &Redis) -> Instance {
        Instance::start_env(dir, redis, &[]).await
    }

    /// [`Instance::start`] with more environment (`SMART_*` flags).
    pub async fn start_env(dir: &Path, redis: &Redis, env: &[(&str, &str)]) -> Instance {
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

    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().unwrap();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub async fn kill(mut self) -> PathBuf {
        self.child.kill().await.unwrap();
        self.dir.clone()
    }

    pub async fn api(&self, serial: &str) -> Option<Value> {
        let res = http_get(self.addr, &format!("/api/devices/{serial}"), &[]).await;
        (res.status == 200).then(|| res.json())
    }

    pub async fn metric(&self, name: &str) -> u64 {
        let res = http_get(self.addr, "/metrics", &[]).await;
        assert_eq!(res.status, 200);
        metric_or_zero(&res.body, name)
    }

    pub async fn health(&self) -> Value {
        http_get(self.addr, "/healthz", &[]).await.json()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Poll `check` until it holds, for at most [`CONVERGE`]; panics with `what` and the logs.
pub async fn eventually<F, Fut>(what: &str, logs: &[&Instance], mut check: F)
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
pub async fn two_instances(
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
pub async fn next_change_for(dashboard: &mut Ws, serial: &str) -> (String, Value) {
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
pub fn field(record: Option<&Value>, key: &str) -> Value {
    record.map_or(Value::Null, |r| r[key].clone())
}

/// The values of each device's last acked message, for `devices` devices after `rounds` rounds.
pub fn expected(devices: usize, rounds: usize) -> Vec<(String, i64)> {
    (0..devices)
        .map(|d| (format!("R{d:03}"), (rounds * 100 + d) as i64))
        .collect()
}

/// `rounds` messages for each of `devices` devices, over one connection each; every one must be OK.
pub async fn send_rounds(addr: SocketAddr, devices: usize, rounds: usize) {
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
