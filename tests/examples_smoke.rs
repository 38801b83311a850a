//! Smoke tests of the examples: each binary runs briefly against the real server (in this process, on
//! 127.0.0.1 port 0, with a temporary data dir) and its summary is checked against what the server holds.
//!
//! `cargo test --all-targets` builds examples only as test harnesses, so the first test that needs the
//! programs builds them (`cargo build --examples`, a no-op when they are current) next to this test's
//! profile directory.
#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use smart_server::{Config, Server};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

#[path = "../examples/common/mod.rs"]
mod common;
#[path = "../smart-server/tests/common/faultfs.rs"]
mod faultfs;
#[path = "../smart-server/tests/common/http.rs"]
mod http;

/// A server running in this process until dropped or stopped.
struct TestServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    async fn start(data_dir: &Path) -> TestServer {
        Self::start_on(data_dir, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    async fn start_on(data_dir: &Path, listen: SocketAddr) -> TestServer {
        let mut config = Config::for_tests(data_dir.to_path_buf());
        config.listen = listen;
        let server = Server::bind(config).await.unwrap();
        let addr = server.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run_until(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        TestServer {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Graceful shutdown, waiting until the server has let go of its port and data dir.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .unwrap()
                .unwrap();
        }
    }

    async fn get_json(&self, path: &str) -> Value {
        get_json(self.addr, path).await
    }

    async fn serials(&self) -> BTreeSet<String> {
        serials(self.addr).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// `GET path` (the tests' one HTTP helper, on hyper's client); the body parsed as JSON.
async fn get_json(addr: SocketAddr, path: &str) -> Value {
    let res = http::http_get(addr, path, &[]).await;
    assert_eq!(res.status, 200, "GET {path}: {}", res.body);
    serde_json::from_str(&res.body).unwrap_or_else(|e| panic!("GET {path}: {e}: {}", res.body))
}

async fn serials(addr: SocketAddr) -> BTreeSet<String> {
    let devices = get_json(addr, "/api/devices").await;
    devices
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["serial_number"].as_str().unwrap().to_owned())
        .collect()
}

/// `cargo build --quiet ARGS` into the profile and target directory this test was built in (whichever
/// tool chose them); returns that profile's directory (target/PROFILE).
fn cargo_build(args: &[&str]) -> PathBuf {
    // This test runs as target/PROFILE/deps/examples_smoke-HASH.
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()).unwrap() {
        "debug" => "dev".to_owned(),
        other => other.to_owned(),
    };
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "--quiet"])
        .args(args)
        .args(["--profile", &profile])
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(profile_dir.parent().unwrap())
        .status()
        .unwrap();
    assert!(status.success(), "cargo build {args:?} failed");
    profile_dir
}

/// The directory of the example programs, built once per test run.
fn examples_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| cargo_build(&["--examples", "-p", "smart-os"]).join("examples"))
}

/// The real `smart-server` binary, built once per test run.
fn server_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        cargo_build(&["-p", "smart-server", "--bin", "smart-server"]).join("smart-server")
    })
}

/// The real server binary as a child process (killed on drop), for tests that kill it abruptly.
struct ServerProcess {
    child: tokio::process::Child,
    addr: SocketAddr,
}

impl ServerProcess {
    /// Start on `listen` (port 0: any free port) with `env` added to its environment; the address
    /// comes from its first stdout line.
    async fn spawn(
        data_dir: &Path,
        listen: SocketAddr,
        env: &[(&str, OsString)],
    ) -> Result<ServerProcess, String> {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(server_binary())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(30),
            tokio::io::BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .map_err(|_| "no address within 30 s".to_owned())?
        .map_err(|e| e.to_string())?;
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|a| a.trim().parse().ok())
            .ok_or_else(|| format!("first line {line:?} (exit {:?})", child.try_wait()))?;
        Ok(ServerProcess { child, addr })
    }

    async fn start(data_dir: &Path) -> ServerProcess {
        Self::spawn(data_dir, SocketAddr::from(([127, 0, 0, 1], 0)), &[])
            .await
            .unwrap()
    }

    /// Start again on the same address; the port may stay busy for a moment, so retry for 15 s.
    async fn restart(data_dir: &Path, addr: SocketAddr) -> ServerProcess {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            match Self::spawn(data_dir, addr, &[]).await {
                Ok(server) => return server,
                Err(e) if tokio::time::Instant::now() > deadline => {
                    panic!("restart on {addr}: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Send a signal (`STOP`, `CONT`, ...) with kill(1).
    fn signal(&self, name: &str) {
        let pid = self.child.id().unwrap();
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} {pid}");
    }

    /// SIGKILL, and wait until the process is gone.
    async fn kill(mut self) {
        self.child.start_kill().unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .unwrap()
            .unwrap();
    }
}

/// Run an example to completion (at most 60 s) and return its output.
async fn run(name: &str, args: &[&str]) -> Output {
    let program = examples_dir().join(name);
    let child = tokio::process::Command::new(&program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    tokio::time::timeout(Duration::from_mins(1), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{name} {args:?} did not finish"))
        .unwrap()
}

/// The last stdout line of a successful run, as JSON.
fn json_summary(name: &str, output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{name} failed: {}\nstdout: {stdout}\nstderr: {stderr}",
        output.status
    );
    let line = stdout
        .lines()
        .last()
        .unwrap_or_else(|| panic!("{name} printed nothing; stderr: {stderr}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{name}: {e}: {line}"))
}

fn expected_serials(range: std::ops::RangeInclusive<u64>) -> BTreeSet<String> {
    range.map(|n| format!("{n:04}")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn simulator_devices_all_appear_in_the_api() {
    let dir = TempDir::new().unwrap();
    let server = TestServer::start(dir.path()).await;
    let url = server.url();
    let output = run(
        "solmate_sim",
        &[
            "--url",
            &url,
            "--devices",
            "25",
            "--seconds",
            "2",
            "--min-interval",
            "0.1",
            "--max-interval",
            "0.4",
            "--values",
            "sine",
            "--json",
            "--seed",
            "7",
        ],
    )
    .await;
    let summary = json_summary("solmate_sim", &output);
    assert_eq!(summary["connected"], 25, "{summary}");
    assert_eq!(summary["errors"], 0, "{summary}");
    assert_eq!(summary["unexpected"], 0, "{summary}");
    assert_eq!(summary["unacked"], 0, "{summary}");
    // Each device sent its INIT and then changes every 0.1–0.4 s for 2 s.
    assert!(summary["acked"].as_u64().unwrap() >= 25 * 3, "{summary}");
    assert_eq!(summary["acked"], summary["sent"], "{summary}");

    assert_eq!(server.serials().await, expected_serials(1..=25));
    // The INIT's underscored keys arrived under their plain names, runtime keys were dropped, and the
    // extra flags of the reference device were kept.
    let device = server.get_json("/api/devices/0007").await;
    assert!(
        device["country"].as_str().is_some_and(|c| c.len() == 2),
        "{device}"
    );
    assert!(
        device["postcode"].as_str().is_some_and(|p| p.len() == 4),
        "{device}"
    );
    assert!(device["battery"].is_number(), "{device}");
    assert_eq!(device["meassuring"], true, "{device}");
    assert!(
        device.get("server_url").is_none() && device.get("_battery").is_none(),
        "{device}"
    );
    server.stop().await;
}

/// Against `--auth required` over TLS: with `--ca-cert` and `--token-file` every device connects and is
/// acked; without its token the server refuses it (401).
#[tokio::test(flavor = "multi_thread")]
async fn simulator_presents_device_tokens_over_wss() {
    let dir = TempDir::new().unwrap();
    let pair = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, pair.cert.pem()).unwrap();
    std::fs::write(&key, pair.signing_key.serialize_pem()).unwrap();
    let (data, tokens) = (dir.path().join("data"), dir.path().join("tokens.txt"));
    let provisioned = std::process::Command::new(server_binary())
        .arg("--data-dir")
        .arg(&data)
        .args(["token", "bulk", "--out"])
        .arg(&tokens)
        .args(["0001", "0002", "0003"])
        .output()
        .unwrap();
    assert!(provisioned.status.success(), "{provisioned:?}");
    let env = [
        ("SMART_AUTH", OsString::from("required")),
        ("SMART_TLS_CERT", cert.clone().into_os_string()),
        ("SMART_TLS_KEY", key.into_os_string()),
    ];
    let server = ServerProcess::spawn(&data, SocketAddr::from(([127, 0, 0, 1], 0)), &env)
        .await
        .unwrap();
    let url = format!("wss://localhost:{}", server.addr.port());
    let (cert, tokens) = (cert.to_str().unwrap(), tokens.to_str().unwrap());
    let common = ["--url", &url, "--ca-cert", cert, "--seconds", "1", "--json"];
    let with = [&common[..], &["--token-file", tokens, "--devices", "3"]].concat();
    let summary = json_summary("solmate_sim", &run("solmate_sim", &with).await);
    assert_eq!(summary["connected"], 3, "{summary}");
    assert_eq!(summary["errors"], 0, "{summary}");
    assert!(summary["acked"].as_u64().unwrap() >= 3, "{summary}");
    let without = run("solmate_sim", &[&common[..], &["--devices", "1"]].concat()).await;
    assert!(!without.status.success());
    let stdout = String::from_utf8_lossy(&without.stdout);
    assert!(stdout.contains("401"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn simulator_starts_with_updt_and_widens_serials_past_9999() {
    let dir = TempDir::new().unwrap();
    let server = TestServer::start(dir.path()).await;
    let url = server.url();
    let output = run(
        "solmate_sim",
        &[
            "--url",
            &url,
            "--devices",
            "3",
            "--first-serial",
            "9999",
            "--first",
            "updt",
            "--values",
            "ramp",
            "--seconds",
            "1",
            "--min-interval",
            "0.1",
            "--max-interval",
            "0.2",
            "--json",
        ],
    )
    .await;
    let summary = json_summary("solmate_sim", &output);
    assert_eq!(summary["errors"], 0, "{summary}");
    assert_eq!(summary["connected"], 3, "{summary}");
    let serials: BTreeSet<String> = ["9999", "10000", "10001"].map(str::to_owned).into();
    assert_eq!(server.serials().await, serials);
    let device = server.get_json("/api/devices/10000").await;
    assert!(
        device.get("meassuring").is_none(),
        "a first UPDT carries no runtime flags: {device}"
    );
    server.stop().await;
}

/// A server killed (SIGKILL) mid-stream: the simulator must send again every field the server had not acked,
/// and say so truthfully in its summary.
#[tokio::test(flavor = "multi_thread")]
async fn simulator_resends_every_unacked_field_after_the_server_is_killed() {
    const SECONDS: u64 = 6;
    let dir = TempDir::new().unwrap();
    let server = ServerProcess::start(dir.path()).await;
    let addr = server.addr;
    let url = format!("ws://{addr}");
    // Built before the clock starts: the timing below is about the run, not the build.
    examples_dir();
    let spawned = tokio::time::Instant::now();
    let sim = tokio::spawn(async move {
        run(
            "solmate_sim",
            &[
                "--url",
                &url,
                "--devices",
                "8",
                "--seconds",
                &SECONDS.to_string(),
                "--min-interval",
                "0.2",
                "--max-interval",
                "0.3",
                "--ack-timeout",
                "5",
                "--drain-seconds",
                "20",
                "--final-values",
                "--json",
                "--seed",
                "11",
            ],
        )
        .await
    });
    // Every device has registered (so each has a connection to lose) and is streaming changes.
    for _ in 0..300 {
        if serials(addr).await.len() == 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(serials(addr).await, expected_serials(1..=8));
    let registered = tokio::time::Instant::now();
    assert!(
        registered - spawned < Duration::from_secs(SECONDS - 2),
        "the devices took {:?} to register: the kill would miss the run",
        registered - spawned
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Freeze the server for longer than a device's longest interval, so that every device has a
    // message waiting for its ack (and maybe a newer change queued behind it), but not so long that
    // later changes would cover every field in flight; then kill it without a chance to answer.
    server.signal("STOP");
    tokio::time::sleep(Duration::from_millis(450)).await;
    server.kill().await;
    // Come back only after the run is over (it began before the first device registered): no later
    // change of a value can hide a dropped one, the devices must deliver what is pending on their own.
    tokio::time::sleep_until(registered + Duration::from_millis(SECONDS * 1000 + 500)).await;
    let server = ServerProcess::restart(dir.path(), addr).await;

    let output = sim.await.unwrap();
    let summary = json_summary("solmate_sim", &output);
    assert!(
        summary["reconnects"].as_u64().unwrap() >= 8,
        "every device came back: {summary}"
    );
    assert!(
        summary["lost_in_flight"].as_u64().unwrap() >= 8,
        "every device lost a message in flight: {summary}"
    );
    assert_eq!(summary["errors"], 0, "{summary}");
    assert_eq!(summary["unexpected"], 0, "{summary}");
    assert_eq!(summary["stragglers"], 0, "{summary}");
    assert_eq!(summary["unacked"], 0, "{summary}");
    assert_eq!(summary["unsent_fields"], 0, "{summary}");

    assert_final_values_stored(server.addr, &summary, &expected_serials(1..=8)).await;
    server.kill().await;
}

/// What each device of a `--final-values` summary last set is what the server holds.
async fn assert_final_values_stored(addr: SocketAddr, summary: &Value, serials: &BTreeSet<String>) {
    let finals = summary["final_values"].as_object().unwrap();
    assert_eq!(&finals.keys().cloned().collect::<BTreeSet<_>>(), serials);
    for (serial, fields) in finals {
        let record = get_json(addr, &format!("/api/devices/{serial}")).await;
        let fields = fields.as_object().unwrap();
        assert!(fields.len() >= 10, "{serial}: {fields:?}");
        for (field, value) in fields {
            assert_eq!(
                &record[field], value,
                "{serial}.{field}: the server holds {record}"
            );
        }
    }
}

/// The server refuses writes while its disk fails (fsync EIO: `not stored: the store failed to make it
/// durable`), a transient fault it recovers from without a restart: the simulator must keep those
/// fields pending and send them again until they are acked — not drop them as it drops permanent
/// refusals — and end with the server holding each device's last values.
#[tokio::test(flavor = "multi_thread")]
async fn simulator_resends_fields_refused_while_the_store_fails() {
    const SECONDS: u64 = 4;
    let dir = TempDir::new().unwrap();
    let faults = faultfs::Faults::new(&dir.path().join("data"));
    let server = ServerProcess::spawn(
        faults.watched(),
        SocketAddr::from(([127, 0, 0, 1], 0)),
        &faults.env(),
    )
    .await
    .unwrap();
    let addr = server.addr;
    let url = format!("ws://{addr}");
    examples_dir();
    let sim = tokio::spawn(async move {
        run(
            "solmate_sim",
            &[
                "--url",
                &url,
                "--devices",
                "4",
                "--seconds",
                &SECONDS.to_string(),
                "--min-interval",
                "0.1",
                "--max-interval",
                "0.2",
                "--drain-seconds",
                "15",
                "--final-values",
                "--json",
                "--seed",
                "5",
            ],
        )
        .await
    });
    for _ in 0..300 {
        if serials(addr).await.len() == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(serials(addr).await, expected_serials(1..=4));
    // Fail every sync for about a second, until the run is (nearly) over: the last changes of each
    // device are refused, and no later change can cover a dropped field.
    let registered = tokio::time::Instant::now();
    tokio::time::sleep_until(registered + Duration::from_millis(SECONDS * 1000 - 1200)).await;
    faults.on(faultfs::Mode::EioSync);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    faults.off(faultfs::Mode::EioSync);

    let output = sim.await.unwrap();
    let summary = json_summary("solmate_sim", &output);
    assert!(
        summary["retried_not_stored"].as_u64().unwrap_or(0) > 0,
        "the fault refused some messages, and they were sent again: {summary}"
    );
    assert_eq!(summary["errors"], 0, "no permanent refusal: {summary}");
    assert_eq!(summary["unexpected"], 0, "{summary}");
    assert_eq!(summary["stragglers"], 0, "{summary}");
    assert_eq!(summary["unacked"], 0, "{summary}");
    assert_eq!(summary["unsent_fields"], 0, "{summary}");
    assert_final_values_stored(addr, &summary, &expected_serials(1..=4)).await;
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn loadgen_reports_a_nonzero_rate_and_no_errors() {
    let dir = TempDir::new().unwrap();
    let server = TestServer::start(dir.path()).await;
    let url = server.url();
    let pid = std::process::id().to_string();
    let output = run(
        "loadgen",
        &[
            "--url",
            &url,
            "--devices",
            "4",
            "--dashboards",
            "2",
            "--window",
            "2",
            "--seconds",
            "1.5",
            "--warmup",
            "0.5",
            "--json",
            "--server-pid",
            &pid,
        ],
    )
    .await;
    let report = json_summary("loadgen", &output);
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["connected"], 6, "{report}");
    assert!(report["acks_per_s"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["ack_p50_ms"].as_f64().unwrap() > 0.0, "{report}");
    assert!(
        report["ack_p99_ms"].as_f64().unwrap() >= report["ack_p50_ms"].as_f64().unwrap(),
        "{report}"
    );
    assert!(
        report["dashboard_msgs_per_s"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert!(report["fanout_p99_ms"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["server_cpu_percent"].as_f64().is_some(), "{report}");
    // Every device the load generator used is stored.
    assert_eq!(server.serials().await, expected_serials(1..=4));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn loadgen_measures_the_baseline_and_idle_memory() {
    let dir = TempDir::new().unwrap();
    let server = TestServer::start(dir.path()).await;
    let url = server.url();
    let output = run(
        "loadgen",
        &[
            "--url",
            &url,
            "--devices",
            "2",
            "--seconds",
            "1",
            "--warmup",
            "0.2",
            "--baseline",
            "--json",
        ],
    )
    .await;
    let report = json_summary("loadgen", &output);
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["baseline"]["errors"], 0, "{report}");
    assert_eq!(report["baseline"]["target"], "baseline", "{report}");
    assert!(
        report["baseline"]["acks_per_s"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert!(
        report["fraction_of_baseline"].as_f64().unwrap() > 0.0,
        "{report}"
    );

    let pid = std::process::id().to_string();
    let output = run(
        "loadgen",
        &[
            "--url",
            &url,
            "--idle",
            "50",
            "--server-pid",
            &pid,
            "--json",
        ],
    )
    .await;
    let report = json_summary("loadgen", &output);
    assert_eq!(report["idle_connections"], 50, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert!(
        report["rss_per_connection_kib"].as_f64().is_some(),
        "{report}"
    );
    server.stop().await;
}

/// `--stalled-dashboards` with `--against-no-dashboards`: dashboards that never read, the same
/// devices without them in alternating rounds, the ratio, and the server's memory per stalled one.
#[tokio::test(flavor = "multi_thread")]
async fn loadgen_measures_stalled_dashboards_against_none() {
    let dir = TempDir::new().unwrap();
    let server = TestServer::start(dir.path()).await;
    let url = server.url();
    let pid = std::process::id().to_string();
    let output = run(
        "loadgen",
        &[
            "--url",
            &url,
            "--devices",
            "3",
            "--stalled-dashboards",
            "5",
            "--against-no-dashboards",
            "--rounds",
            "2",
            "--seconds",
            "0.5",
            "--warmup",
            "0.2",
            "--server-pid",
            &pid,
            "--json",
        ],
    )
    .await;
    let report = json_summary("loadgen", &output);
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["stalled_dashboards"], 5, "{report}");
    assert_eq!(report["connected"], 3 + 5, "{report}");
    assert_eq!(
        report["no_dashboards"]["target"], "no dashboards",
        "{report}"
    );
    assert_eq!(report["no_dashboards"]["stalled_dashboards"], 0, "{report}");
    assert_eq!(report["no_dashboards"]["connected"], 3, "{report}");
    assert!(
        report["no_dashboards"]["acks_per_s"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert!(
        report["ratio_to_no_dashboards"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert!(
        report["rss_per_stalled_dashboard_kib"].as_f64().is_some(),
        "{report}"
    );
    assert_eq!(
        report["rounds_rss_per_stalled_dashboard_kib"]
            .as_array()
            .unwrap()
            .len(),
        2,
        "{report}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn loadgen_refuses_non_loopback_servers() {
    let output = run(
        "loadgen",
        &["--url", "ws://192.0.2.1:8000", "--seconds", "1"],
    )
    .await;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("loopback"));
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_prints_the_init_table_then_updates() {
    let dir = TempDir::new().unwrap();
    let server = TestServer::start(dir.path()).await;
    let url = server.url();
    let seed = run(
        "solmate_sim",
        &[
            "--url",
            &url,
            "--devices",
            "3",
            "--seconds",
            "1.5",
            "--json",
        ],
    )
    .await;
    json_summary("solmate_sim", &seed);

    let watch_url = url.clone();
    let watch = tokio::spawn(async move {
        run(
            "watch",
            &["--url", &watch_url, "--count", "6", "--seconds", "20"],
        )
        .await
    });
    // The simulator keeps changing values until the watcher has seen six updates.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sim = run(
        "solmate_sim",
        &[
            "--url",
            &url,
            "--devices",
            "3",
            "--seconds",
            "2",
            "--min-interval",
            "0.1",
            "--max-interval",
            "0.2",
        ],
    )
    .await;
    assert!(sim.status.success());
    let output = watch.await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "INIT: 3 devices", "{stdout}");
    assert!(lines[1].starts_with("serial_number | "), "{stdout}");
    for (row, serial) in lines[3..6].iter().zip(["0001", "0002", "0003"]) {
        assert!(row.starts_with(serial), "{stdout}");
    }
    // Each device goes online (UPDT `online=true`) before its first values: six lines hold at least
    // three UPDTs with values.
    let updates: Vec<&&str> = lines.iter().filter(|l| l.contains("  UPDT ")).collect();
    assert_eq!(updates.len(), 6, "{stdout}");
    let with_values = updates
        .iter()
        .filter(|l| l.contains("last_status_update="))
        .count();
    assert!(with_values >= 3, "{stdout}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_shows_only_the_filtered_view() {
    let dir = TempDir::new().unwrap();
    let server = TestServer::start(dir.path()).await;
    let url = server.url();
    let seed = run(
        "solmate_sim",
        &[
            "--url",
            &url,
            "--devices",
            "4",
            "--seconds",
            "1.5",
            "--json",
        ],
    )
    .await;
    json_summary("solmate_sim", &seed);

    let output = run(
        "watch",
        &[
            "--url",
            &url,
            "--seconds",
            "1",
            "--columns",
            "serial_number,online",
            "filter:serial_number:^:000",
            "sort:serial_number:>:abc",
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "INIT: 4 devices", "{stdout}");
    assert_eq!(lines[1], "serial_number | online", "{stdout}");
    let rows: Vec<&str> = lines[3..7]
        .iter()
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(
        rows,
        ["0004", "0003", "0002", "0001"],
        "descending: {stdout}"
    );

    let output = run(
        "watch",
        &[
            "--url",
            &url,
            "--seconds",
            "1",
            "filter:serial_number:=:0002",
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.starts_with("INIT: 1 devices\n"), "{stdout}");
    assert!(
        stdout.contains("\n0002 ") && !stdout.contains("\n0001 "),
        "{stdout}"
    );

    let output = run(
        "watch",
        &["--url", &url, "--seconds", "1", "filter:battery:>:lots"],
    )
    .await;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("bad FILT clause"));
    server.stop().await;
}

#[test]
fn histogram_quantiles_are_within_their_bucket_error() {
    let mut histogram = common::Histogram::default();
    for micros in 1..=10_000 {
        histogram.record(micros);
    }
    for (q, exact) in [(0.5, 5_000.0), (0.99, 9_900.0), (0.999, 9_990.0)] {
        let got = histogram.quantile(q) as f64;
        assert!((got - exact).abs() / exact < 0.04, "q{q}: {got} vs {exact}");
    }
    let mut other = common::Histogram::default();
    other.record(1_000_000);
    histogram.merge(&other);
    assert_eq!(histogram.len(), 10_001);
    assert!((histogram.max_ms() - 1000.0).abs() < f64::EPSILON);
    assert_eq!(common::Histogram::default().quantile(0.99), 0);
}

#[test]
fn endpoints_and_loopback_checks() {
    assert_eq!(
        common::endpoint("ws://127.0.0.1:8000", "/update/").unwrap(),
        "ws://127.0.0.1:8000/update/"
    );
    assert_eq!(
        common::endpoint("ws://localhost:1/client/", "/update/").unwrap(),
        "ws://localhost:1/update/"
    );
    assert_eq!(
        common::endpoint("wss://localhost:8443", "/client/").unwrap(),
        "wss://localhost:8443/client/"
    );
    assert!(common::endpoint("http://127.0.0.1:8000", "/update/").is_err());
    assert!(common::is_loopback("wss://localhost:8443"));
    assert!(common::is_loopback("ws://127.0.0.1:8000"));
    assert!(common::is_loopback("ws://localhost:8000/update/"));
    assert!(common::is_loopback("ws://[::1]:8000"));
    assert!(!common::is_loopback("ws://10.0.0.1:8000"));
    assert!(!common::is_loopback("ws://127.0.0.1.example.com:8000"));
}

#[test]
fn proc_readings_of_this_process() {
    let pid = std::process::id();
    assert!(common::rss_kib(pid).unwrap() > 1000);
    let before = common::cpu_ticks(pid).unwrap();
    let mut x = 0u64;
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_millis(200) {
        x = x.wrapping_mul(31).wrapping_add(7);
    }
    std::hint::black_box(x);
    assert!(
        common::cpu_ticks(pid).unwrap() > before,
        "200 ms of busy work shows as CPU time"
    );
    assert!(common::open_files_limit().is_some_and(|limit| limit > 0));
}
