//! The load generator behind BENCHMARKS.md: measures a SMART-OS server at the protocol level.
//!
//! N devices each send UPDTs as fast as their acks return (window W messages in flight per device),
//! while M dashboards count the UPDTs the server pushes to them. After a warm-up, a measured period gives
//! acks/s, ack latency percentiles, dashboard messages/s and the device→dashboard latency (from a
//! `sent_us` timestamp the devices put in every body; both ends are in this process, on one clock).
//!
//! ```text
//! loadgen --url ws://127.0.0.1:8000 --devices 100 --dashboards 10 --seconds 10 --json
//! loadgen --url ws://127.0.0.1:8000 --devices 100 --baseline        # also measure an echo-ack ceiling
//! loadgen --url ws://127.0.0.1:8000 --idle 10000 --server-pid PID    # memory per idle connection
//! ```
//!
//! `--baseline` starts a minimal websocket server as a child process (this binary with a hidden flag:
//! warp, reads only the message header, acks at once, stores nothing, pushes nothing) and measures it with
//! the same load in the same run, so the server is reported as a fraction of that ceiling on this machine.
//!
//! Loopback only. Every phase is bounded in time; one process holds at most as many sockets as its
//! open-files limit allows (about 19,900 here).

mod common;

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde_json::{Value, json};
use smart_proto::{Header, ServerMessage};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use common::{CpuSample, Histogram, Ws};

/// Measure a SMART-OS server: ingest rate, ack latency, fan-out to dashboards, memory per connection.
#[derive(Debug, Parser)]
#[command(version, long_about = None)]
#[allow(clippy::struct_excessive_bools, reason = "command-line flags")]
struct Args {
    /// Server URL (loopback only).
    #[arg(long, default_value = "ws://127.0.0.1:8000")]
    url: String,
    /// Devices, each on its own websocket, each sending as fast as its acks return.
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Dashboards connected to `/client/`, counting what they receive.
    #[arg(long, default_value_t = 0)]
    dashboards: usize,
    /// Length of the measured period, in seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Warm-up before the measured period, in seconds.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Messages in flight per device (1: each device waits for its ack before the next message).
    #[arg(long, default_value_t = 1)]
    window: usize,
    /// Serial number of the first device (serials are zero-padded to 4 digits).
    #[arg(long, default_value_t = 1)]
    first_serial: u64,
    /// Also measure a minimal echo-ack server (child process) with the same load, as the ceiling.
    #[arg(long)]
    baseline: bool,
    /// Measure this many times (alternating with the baseline) and report the run with the median
    /// rate: on a shared machine the spread shows how much other work disturbed the figures.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Instead of a load, open this many idle device connections and report the server's memory per
    /// connection (needs `--server-pid`).
    #[arg(long, value_name = "N")]
    idle: Option<usize>,
    /// Pid of the (local) server, to report its CPU use and resident memory from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Worker threads of this process's runtime (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Print one line of JSON.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(short, long)]
    quiet: bool,
    /// Run the baseline server (used by `--baseline`, which starts this binary as its child).
    #[arg(long, hide = true)]
    serve_baseline: bool,
    /// Address of the baseline server.
    #[arg(long, hide = true, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

/// How long a device waits for an ack, or a dashboard for its snapshot, before it counts as an error.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once, so a thousand devices do not overflow the server's accept backlog.
const CONNECT_CONCURRENCY: usize = 64;

// Phases of a run, in order.
const CONNECTING: u8 = 0;
const WARMUP: u8 = 1;
const MEASURE: u8 = 2;
/// Devices stop sending and wait for their last acks.
const STOP: u8 = 3;
/// Dashboards stop reading.
const DONE: u8 = 4;

fn main() -> Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.threads {
        runtime.worker_threads(threads.max(1));
    }
    let runtime = runtime
        .enable_all()
        .build()
        .context("starting the runtime")?;
    if args.serve_baseline {
        return runtime.block_on(serve_baseline(args.listen));
    }
    ensure!(
        common::is_loopback(&args.url),
        "loadgen only measures servers on the loopback interface, not {}",
        args.url
    );
    if let Some(connections) = args.idle {
        let report = runtime.block_on(idle(&args, connections))?;
        print_report(&args, &report);
        return Ok(());
    }
    ensure!(args.devices > 0, "--devices must be at least 1");
    ensure!(args.window > 0, "--window must be at least 1");
    common::check_socket_budget(args.devices + args.dashboards)?;
    let report = runtime.block_on(load(&args))?;
    print_report(&args, &report);
    Ok(())
}

/// Everything one load run needs to know.
#[derive(Debug, Clone)]
struct Load {
    devices: usize,
    dashboards: usize,
    window: usize,
    first_serial: u64,
    warmup: Duration,
    measured: Duration,
    quiet: bool,
}

async fn load(args: &Args) -> Result<Value> {
    let load = Load {
        devices: args.devices,
        dashboards: args.dashboards,
        window: args.window,
        first_serial: args.first_serial,
        warmup: common::seconds(args.warmup, "--warmup")?,
        measured: common::seconds(args.seconds, "--seconds")?,
        quiet: args.quiet || args.json,
    };
    check_frames(&load)?;
    let mut baseline = if args.baseline {
        Some(spawn_baseline().await?)
    } else {
        None
    };
    // Alternate server and baseline so that both see the same background load on a shared machine.
    let mut server_runs = Vec::new();
    let mut baseline_runs = Vec::new();
    for _ in 0..args.rounds.max(1) {
        server_runs.push(measure("smart-server", &args.url, args.server_pid, &load).await?);
        if let Some((_, url, pid)) = &baseline {
            baseline_runs.push(measure("baseline", url, Some(*pid), &load).await?);
        }
    }
    if let Some((child, _, _)) = baseline.as_mut() {
        let _ = child.kill().await;
    }
    let mut report = median_run(server_runs);
    if !baseline_runs.is_empty() {
        let baseline = median_run(baseline_runs);
        let ceiling = baseline["acks_per_s"].as_f64().unwrap_or(0.0);
        let rate = report["acks_per_s"].as_f64().unwrap_or(0.0);
        report["fraction_of_baseline"] = json!(if ceiling > 0.0 {
            common::round(rate / ceiling, 3)
        } else {
            0.0
        });
        report["baseline"] = baseline;
    }
    Ok(report)
}

/// The run with the median ack rate, with every run's rate alongside to show the spread.
fn median_run(mut runs: Vec<Value>) -> Value {
    let rate = |run: &Value| run["acks_per_s"].as_f64().unwrap_or(0.0);
    runs.sort_by(|a, b| rate(a).total_cmp(&rate(b)));
    let rates: Vec<f64> = runs.iter().map(rate).collect();
    let mut median = runs.swap_remove(runs.len().saturating_sub(1) / 2);
    if rates.len() > 1 {
        median["rounds_acks_per_s"] = json!(rates);
    }
    median
}

/// Counters shared by the tasks of one run.
#[derive(Debug, Default)]
struct Shared {
    phase: AtomicU8,
    /// Acks over the whole run, for the progress bar.
    acks_live: AtomicU64,
    ready: AtomicUsize,
    failed: AtomicUsize,
    errors: AtomicU64,
    first_errors: Mutex<Vec<String>>,
}

impl Shared {
    fn phase(&self) -> u8 {
        self.phase.load(Ordering::Relaxed)
    }

    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("{what}");
        let mut first = self
            .first_errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if first.len() < 5 {
            first.push(what);
        }
    }
}

/// What one device measured.
#[derive(Debug, Default)]
struct DeviceResult {
    acks: u64,
    latency: Histogram,
}

/// What one dashboard measured.
#[derive(Debug, Default)]
struct DashboardResult {
    updates: u64,
    resyncs: u64,
    latency: Histogram,
}

/// The frame of one device message: a changing known field and the send time.
fn device_frame(id: u64, serial: &str, sent_us: u64) -> String {
    let mut out = String::with_capacity(96);
    let _ = write!(
        out,
        r#"{{"type":"UPDT","message":"{id:04}:{serial}:{{\"power_consumption\":{},\"sent_us\":{sent_us}}}"}}"#,
        id % 1000
    );
    out
}

/// Make sure the hand-written frames are what the protocol library would accept, before measuring.
fn check_frames(load: &Load) -> Result<()> {
    let frame = device_frame(1, &format!("{:04}", load.first_serial), 1);
    smart_proto::parse_device_message(&frame)
        .map_err(|r| anyhow::anyhow!("loadgen frame {frame} is invalid: {}", r.error))?;
    Ok(())
}

/// Whether `reply` acks message `id` of `serial`. The fast path reads the compact form the server
/// writes without allocating; any other spelling goes through the protocol parser.
fn is_ack(reply: &str, id: u64, serial: &str) -> bool {
    const PREFIX: &str = r#"{"type":"INFO","message":""#;
    const SUFFIX: &str = r#":OK"}"#;
    if let Some(inner) = reply
        .strip_prefix(PREFIX)
        .and_then(|r| r.strip_suffix(SUFFIX))
        && let Some((mid, sent_serial)) = inner.split_once(':')
    {
        return sent_serial == serial && mid.parse::<u64>() == Ok(id);
    }
    matches!(smart_proto::parse_server_message(reply),
        Ok(ServerMessage::Ok(header)) if header.serial.as_str() == serial && header.id.as_str().parse::<u64>() == Ok(id))
}

/// What a reply that is not the expected ack says, for the error report.
fn describe(reply: &str) -> String {
    match smart_proto::parse_server_message(reply) {
        Ok(ServerMessage::Error { header, reason }) => {
            format!(
                "ERROR {}: {reason}",
                header.map(|h| h.to_string()).unwrap_or_default()
            )
        }
        _ => format!(
            "unexpected reply {}",
            reply.chars().take(120).collect::<String>()
        ),
    }
}

async fn open_device(url: &str, handshakes: &Semaphore) -> Result<Ws> {
    let _permit = handshakes.acquire().await?;
    let mut ws = timeout(
        REPLY_TIMEOUT,
        common::connect(url, common::small_frames_config()),
    )
    .await
    .context("connect timed out")??;
    match timeout(REPLY_TIMEOUT, ws.next())
        .await
        .context("no welcome")?
    {
        Some(Ok(Message::Text(text))) if text.contains("Welcome") => Ok(ws),
        other => bail!("no welcome: {other:?}"),
    }
}

async fn device(
    serial: String,
    url: Arc<str>,
    window: usize,
    shared: Arc<Shared>,
    handshakes: Arc<Semaphore>,
    mut phase: watch::Receiver<u8>,
) -> DeviceResult {
    let mut result = DeviceResult::default();
    let mut ws = match open_device(&url, &handshakes).await {
        Ok(ws) => ws,
        Err(err) => {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            shared.error(format!("device {serial}: {err:#}"));
            return result;
        }
    };
    shared.ready.fetch_add(1, Ordering::Relaxed);
    if phase.wait_for(|p| *p >= WARMUP).await.is_err() {
        return result;
    }
    // One timer for the whole run instead of one per ack: the run ends by then or this device is stuck.
    let stuck = sleep(Duration::from_hours(24));
    tokio::pin!(stuck);
    let mut in_flight: VecDeque<(u64, u64)> = VecDeque::with_capacity(window);
    let mut next_id = 1u64;
    loop {
        if shared.phase() < STOP {
            while in_flight.len() < window {
                let sent_us = common::monotonic_micros();
                let frame = device_frame(next_id, &serial, sent_us);
                if let Err(err) = ws.feed(Message::text(frame)).await {
                    shared.error(format!("device {serial}: send failed: {err}"));
                    return result;
                }
                in_flight.push_back((next_id, sent_us));
                next_id += 1;
            }
            if let Err(err) = ws.flush().await {
                shared.error(format!("device {serial}: send failed: {err}"));
                return result;
            }
        } else if in_flight.is_empty() {
            break;
        }
        stuck.as_mut().reset(Instant::now() + REPLY_TIMEOUT);
        let message = tokio::select! {
            message = ws.next() => message,
            () = &mut stuck => {
                shared.error(format!("device {serial}: no ack within {REPLY_TIMEOUT:?}"));
                return result;
            }
        };
        let reply = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_)) | Err(_)) | None => {
                shared.error(format!("device {serial}: connection lost"));
                return result;
            }
            Some(Ok(_)) => continue,
        };
        let Some((id, sent_us)) = in_flight.pop_front() else {
            shared.error(format!(
                "device {serial}: reply with nothing in flight: {}",
                describe(&reply)
            ));
            continue;
        };
        if is_ack(&reply, id, &serial) {
            shared.acks_live.fetch_add(1, Ordering::Relaxed);
            if shared.phase() == MEASURE {
                result.acks += 1;
                result
                    .latency
                    .record(common::monotonic_micros().saturating_sub(sent_us));
            }
        } else {
            shared.error(format!("device {serial}: {}", describe(&reply)));
        }
    }
    let _ = timeout(Duration::from_secs(2), ws.close(None)).await;
    result
}

/// The `sent_us` a loadgen device put in a body, from a UPDT frame as the server forwards it.
fn sent_us(frame: &str) -> Option<u64> {
    let at = frame.find("sent_us")? + "sent_us".len();
    let rest = frame[at..].trim_start_matches(['\\', '"', ':', ' ']);
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The type of a server frame: a look at the head of the frame, the protocol parser if that is not enough.
fn frame_kind(frame: &str) -> &'static str {
    let head = frame.get(..32).unwrap_or(frame);
    for kind in ["UPDT", "INIT", "INFO"] {
        if head.contains(kind) {
            return kind;
        }
    }
    match smart_proto::parse_server_message(frame) {
        Ok(ServerMessage::Updt { .. }) => "UPDT",
        Ok(ServerMessage::Init(_)) => "INIT",
        Ok(_) => "INFO",
        Err(_) => "?",
    }
}

async fn dashboard(
    index: usize,
    url: Arc<str>,
    shared: Arc<Shared>,
    mut phase: watch::Receiver<u8>,
) -> DashboardResult {
    let mut result = DashboardResult::default();
    let opened = async {
        let mut ws = timeout(
            REPLY_TIMEOUT,
            common::connect(&url, WebSocketConfig::default()),
        )
        .await
        .context("connect timed out")??;
        // The welcome, then the snapshot.
        for expected in ["INFO", "INIT"] {
            match timeout(REPLY_TIMEOUT, ws.next())
                .await
                .context("no welcome and snapshot")?
            {
                Some(Ok(Message::Text(text))) if frame_kind(&text) == expected => {}
                other => bail!("expected {expected}, got {other:?}"),
            }
        }
        anyhow::Ok(ws)
    };
    let mut ws = match opened.await {
        Ok(ws) => ws,
        Err(err) => {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            shared.error(format!("dashboard {index}: {err:#}"));
            return result;
        }
    };
    shared.ready.fetch_add(1, Ordering::Relaxed);
    let done = phase.wait_for(|p| *p >= DONE);
    tokio::pin!(done);
    loop {
        let message = tokio::select! {
            message = ws.next() => message,
            _ = &mut done => break,
        };
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_)) | Err(_)) | None => {
                shared.error(format!("dashboard {index}: connection lost"));
                return result;
            }
            Some(Ok(_)) => continue,
        };
        let measuring = shared.phase() == MEASURE;
        match frame_kind(&text) {
            "UPDT" if measuring => {
                result.updates += 1;
                if let Some(sent) = sent_us(&text) {
                    result
                        .latency
                        .record(common::monotonic_micros().saturating_sub(sent));
                }
            }
            "INIT" if measuring => result.resyncs += 1,
            "UPDT" | "INIT" => {}
            _ => shared.error(format!(
                "dashboard {index}: unexpected {}",
                text.chars().take(120).collect::<String>()
            )),
        }
    }
    let _ = timeout(Duration::from_secs(2), ws.close(None)).await;
    result
}

/// Wait until `expected` tasks are ready or failed, at most `limit`.
async fn wait_ready(shared: &Shared, expected: usize, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while shared.ready.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed) < expected {
        ensure!(
            Instant::now() < deadline,
            "connections not ready after {limit:?}"
        );
        sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// One measured run against the server at `base`.
async fn measure(target: &str, base: &str, pid: Option<u32>, load: &Load) -> Result<Value> {
    let device_url: Arc<str> = common::endpoint(base, "/update/")?.into();
    let dashboard_url: Arc<str> = common::endpoint(base, "/client/")?.into();
    let shared = Arc::new(Shared::default());
    let (phase_tx, phase_rx) = watch::channel(CONNECTING);
    let set_phase = |phase: u8| {
        shared.phase.store(phase, Ordering::Relaxed);
        phase_tx.send_replace(phase);
    };

    // Dashboards first, so their snapshots are small and they see every device arrive.
    let mut dashboards = JoinSet::new();
    for index in 0..load.dashboards {
        dashboards.spawn(dashboard(
            index,
            Arc::clone(&dashboard_url),
            Arc::clone(&shared),
            phase_rx.clone(),
        ));
    }
    wait_ready(&shared, load.dashboards, Duration::from_secs(30)).await?;
    let handshakes = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut devices = JoinSet::new();
    for i in 0..load.devices {
        let serial = format!("{:04}", load.first_serial + i as u64);
        devices.spawn(device(
            serial,
            Arc::clone(&device_url),
            load.window,
            Arc::clone(&shared),
            Arc::clone(&handshakes),
            phase_rx.clone(),
        ));
    }
    wait_ready(
        &shared,
        load.dashboards + load.devices,
        Duration::from_mins(1),
    )
    .await?;
    let connected = shared.ready.load(Ordering::Relaxed);

    let total = load.warmup + load.measured;
    let bar = common::progress_bar(total.as_secs(), load.quiet);
    bar.set_prefix(target.to_owned());
    let started = Instant::now();
    let ticker = {
        let shared = Arc::clone(&shared);
        let bar = bar.clone();
        tokio::spawn(async move {
            let mut last = (Instant::now(), 0u64);
            loop {
                sleep(Duration::from_millis(500)).await;
                let acks = shared.acks_live.load(Ordering::Relaxed);
                let rate = (acks - last.1) as f64 / last.0.elapsed().as_secs_f64();
                last = (Instant::now(), acks);
                bar.set_position(started.elapsed().as_secs());
                bar.set_message(format!("{rate:.0} acks/s"));
            }
        })
    };
    set_phase(WARMUP);
    sleep(load.warmup).await;

    let server_cpu = pid.map(CpuSample::start).transpose()?;
    let own_cpu = CpuSample::start(std::process::id())?;
    let load_average = common::load_average();
    let measure_start = Instant::now();
    set_phase(MEASURE);
    sleep(load.measured).await;
    set_phase(STOP);
    let measured = measure_start.elapsed().as_secs_f64();
    let server_cpu = server_cpu.map(|c| c.percent()).transpose()?;
    let own_cpu = own_cpu.percent()?;
    let server_rss = pid.map(common::rss_kib).transpose()?;
    ticker.abort();
    bar.finish_and_clear();

    let mut acks = Histogram::default();
    let mut ack_count = 0;
    let join_deadline = Instant::now() + REPLY_TIMEOUT + Duration::from_secs(5);
    while let Ok(Some(joined)) = timeout(
        join_deadline.saturating_duration_since(Instant::now()),
        devices.join_next(),
    )
    .await
    {
        if let Ok(result) = joined {
            ack_count += result.acks;
            acks.merge(&result.latency);
        }
    }
    let stuck_devices = devices.len();
    devices.abort_all();
    // Let the last UPDTs reach the dashboards before they stop reading.
    sleep_until(Instant::now() + Duration::from_millis(300)).await;
    set_phase(DONE);
    let mut fanout = Histogram::default();
    let (mut updates, mut resyncs) = (0, 0);
    let join_deadline = Instant::now() + Duration::from_secs(5);
    while let Ok(Some(joined)) = timeout(
        join_deadline.saturating_duration_since(Instant::now()),
        dashboards.join_next(),
    )
    .await
    {
        if let Ok(result) = joined {
            updates += result.updates;
            resyncs += result.resyncs;
            fanout.merge(&result.latency);
        }
    }
    dashboards.abort_all();
    if stuck_devices > 0 {
        shared.error(format!("{stuck_devices} devices did not finish"));
    }

    let per_s = |n: u64| common::round(n as f64 / measured.max(1e-3), 1);
    let ms = |h: &Histogram, q: f64| common::round(h.quantile_ms(q), 3);
    let mut report = json!({
        "target": target,
        "url": base,
        "devices": load.devices,
        "dashboards": load.dashboards,
        "window": load.window,
        "connected": connected,
        "warmup_s": load.warmup.as_secs_f64(),
        "seconds": common::round(measured, 3),
        "acks": ack_count,
        "acks_per_s": per_s(ack_count),
        "ack_p50_ms": ms(&acks, 0.50),
        "ack_p99_ms": ms(&acks, 0.99),
        "ack_p999_ms": ms(&acks, 0.999),
        "ack_max_ms": common::round(acks.max_ms(), 3),
        "dashboard_msgs": updates,
        "dashboard_msgs_per_s": per_s(updates),
        "fanout_p50_ms": ms(&fanout, 0.50),
        "fanout_p99_ms": ms(&fanout, 0.99),
        "resyncs": resyncs,
        "errors": shared.errors.load(Ordering::Relaxed),
        "first_errors": shared.first_errors.lock().unwrap_or_else(PoisonError::into_inner).clone(),
        "loadgen_cpu_percent": common::round(own_cpu, 1),
        "load_average": load_average,
    });
    if let Some(cpu) = server_cpu {
        report["server_cpu_percent"] = json!(common::round(cpu, 1));
    }
    if let Some(rss) = server_rss {
        report["server_rss_kib"] = json!(rss);
    }
    Ok(report)
}

/// Open idle device connections and report the server's resident memory per connection.
async fn idle(args: &Args, connections: usize) -> Result<Value> {
    ensure!(connections > 0, "--idle must be at least 1");
    common::check_socket_budget(connections)?;
    let url: Arc<str> = common::endpoint(&args.url, "/update/")?.into();
    let rss_before = args.server_pid.map(common::rss_kib).transpose()?;
    let shared = Arc::new(Shared::default());
    let handshakes = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let (release_tx, release_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for _ in 0..connections {
        let (url, shared, handshakes, mut release) = (
            Arc::clone(&url),
            Arc::clone(&shared),
            Arc::clone(&handshakes),
            release_rx.clone(),
        );
        tasks.spawn(async move {
            match open_device(&url, &handshakes).await {
                Ok(ws) => {
                    shared.ready.fetch_add(1, Ordering::Relaxed);
                    // Hold the socket, unread, until released (or the run is abandoned).
                    let _ = timeout(Duration::from_mins(10), release.wait_for(|r| *r)).await;
                    drop(ws);
                }
                Err(err) => {
                    shared.failed.fetch_add(1, Ordering::Relaxed);
                    shared.error(format!("idle connection: {err:#}"));
                }
            }
        });
    }
    let bar = common::progress_bar(connections as u64, args.quiet || args.json);
    let deadline = Instant::now() + Duration::from_mins(2);
    loop {
        let (ready, failed) = (
            shared.ready.load(Ordering::Relaxed),
            shared.failed.load(Ordering::Relaxed),
        );
        bar.set_position(ready as u64);
        if ready + failed >= connections || Instant::now() >= deadline {
            break;
        }
        sleep(Duration::from_millis(100)).await;
    }
    bar.finish_and_clear();
    // Let the server finish whatever each accept started before reading its memory.
    sleep(Duration::from_secs(1)).await;
    let opened = shared.ready.load(Ordering::Relaxed);
    let rss_after = args.server_pid.map(common::rss_kib).transpose()?;
    release_tx.send_replace(true);
    let close_deadline = Instant::now() + Duration::from_secs(30);
    while let Ok(Some(_)) = timeout(
        close_deadline.saturating_duration_since(Instant::now()),
        tasks.join_next(),
    )
    .await
    {}
    tasks.abort_all();

    let mut report = json!({
        "target": "smart-server",
        "url": args.url,
        "idle_connections": opened,
        "errors": shared.errors.load(Ordering::Relaxed),
        "first_errors": shared.first_errors.lock().unwrap_or_else(PoisonError::into_inner).clone(),
    });
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        report["server_rss_before_kib"] = json!(before);
        report["server_rss_after_kib"] = json!(after);
        let per_connection = (after as f64 - before as f64) / opened.max(1) as f64;
        report["rss_per_connection_kib"] = json!(common::round(per_connection, 2));
    }
    Ok(report)
}

fn print_report(args: &Args, report: &Value) {
    if args.json {
        println!("{report}");
        return;
    }
    if report.get("idle_connections").is_some() {
        println!(
            "{} idle device connections, {} errors",
            report["idle_connections"], report["errors"]
        );
        if let Some(per) = report.get("rss_per_connection_kib") {
            println!(
                "  server RSS {} KiB → {} KiB: {per} KiB per connection",
                report["server_rss_before_kib"], report["server_rss_after_kib"]
            );
        }
        print_errors(report);
        return;
    }
    print_run(report);
    if let Some(baseline) = report.get("baseline") {
        print_run(baseline);
        println!(
            "smart-server / baseline acks/s: {}",
            report["fraction_of_baseline"]
        );
    }
}

fn print_run(r: &Value) {
    println!(
        "{}: {} devices (window {}), {} dashboards; {} s measured after {} s warm-up",
        r["target"].as_str().unwrap_or_default(),
        r["devices"],
        r["window"],
        r["dashboards"],
        r["seconds"],
        r["warmup_s"]
    );
    println!(
        "  acks/s        {} ({} acks, {} errors)",
        r["acks_per_s"], r["acks"], r["errors"]
    );
    println!(
        "  ack latency   p50 {} ms, p99 {} ms, p99.9 {} ms, max {} ms",
        r["ack_p50_ms"], r["ack_p99_ms"], r["ack_p999_ms"], r["ack_max_ms"]
    );
    if r["dashboards"].as_u64().unwrap_or(0) > 0 {
        println!(
            "  dashboards    {} msgs/s in all; device→dashboard p50 {} ms, p99 {} ms; {} resyncs",
            r["dashboard_msgs_per_s"], r["fanout_p50_ms"], r["fanout_p99_ms"], r["resyncs"]
        );
    }
    let mut cpu = format!("  CPU           loadgen {} %", r["loadgen_cpu_percent"]);
    if let Some(server) = r.get("server_cpu_percent") {
        let _ = write!(cpu, ", server {server} % (RSS {} KiB)", r["server_rss_kib"]);
    }
    let _ = write!(
        cpu,
        " of one core; machine load average {}",
        r["load_average"]
    );
    println!("{cpu}");
    if let Some(rounds) = r.get("rounds_acks_per_s") {
        println!("  rounds        acks/s {rounds} (this is the median one)");
    }
    print_errors(r);
}

fn print_errors(report: &Value) {
    for error in report["first_errors"].as_array().into_iter().flatten() {
        println!("  error: {}", error.as_str().unwrap_or_default());
    }
}

/// Start the baseline server as a child process; its first stdout line says where it listens.
async fn spawn_baseline() -> Result<(tokio::process::Child, String, u32)> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let mut child = tokio::process::Command::new(exe)
        .args(["--serve-baseline", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the baseline server")?;
    let pid = child.id().context("baseline server exited at once")?;
    let stdout = child
        .stdout
        .take()
        .context("no stdout of the baseline server")?;
    let line = timeout(
        Duration::from_secs(10),
        BufReader::new(stdout).lines().next_line(),
    )
    .await
    .context("baseline server did not start")??
    .context("baseline server exited")?;
    let addr = line
        .strip_prefix("listening on ")
        .with_context(|| format!("unexpected first line {line:?}"))?;
    Ok((child, format!("ws://{addr}"), pid))
}

/// The ceiling: a websocket server that reads the header of each device message and acks it, with no
/// parsing of the body, no storage and no fan-out. Dashboards get the welcome and an empty snapshot.
/// Its connections are served like smart-server's: hyper HTTP/1 with upgrades, Nagle off.
async fn serve_baseline(listen: SocketAddr) -> Result<()> {
    use tower_service::Service as _;
    use warp::Filter as _;

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    println!("listening on {}", listener.local_addr()?);
    let route =
        warp::path::full()
            .and(warp::ws())
            .map(|path: warp::path::FullPath, ws: warp::ws::Ws| {
                let dashboard = path.as_str().starts_with("/client");
                ws.on_upgrade(move |socket| async move {
                    if dashboard {
                        baseline_dashboard(socket).await;
                    } else {
                        baseline_device(socket).await;
                    }
                })
            });
    let routes = warp::service(route);
    loop {
        let (stream, _peer) = listener.accept().await.context("accepting")?;
        let _ = stream.set_nodelay(true);
        let service = hyper::service::service_fn(move |request| {
            let mut routes = routes;
            routes.call(request)
        });
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(err) = connection.await {
                tracing::debug!("baseline connection: {err}");
            }
        });
    }
}

/// The `MID:SERIAL` of a device frame, found without parsing the JSON.
fn baseline_header(frame: &str) -> Option<Header> {
    let at = frame.find("\"message\"")? + "\"message\"".len();
    let rest = frame[at..]
        .trim_start_matches([' ', ':'])
        .strip_prefix('"')?;
    Header::parse(rest).ok().map(|(header, _)| header)
}

async fn baseline_device(mut socket: warp::ws::WebSocket) {
    let welcome = ServerMessage::Info(smart_proto::DEVICE_WELCOME.to_owned()).to_frame();
    if socket.send(warp::ws::Message::text(welcome)).await.is_err() {
        return;
    }
    let reply = |message: &warp::ws::Message| {
        let frame = message.to_str().unwrap_or_default();
        match baseline_header(frame) {
            Some(header) => ServerMessage::Ok(header).to_frame(),
            None => ServerMessage::Error {
                header: None,
                reason: "no header".to_owned(),
            }
            .to_frame(),
        }
    };
    while let Some(Ok(message)) = socket.next().await {
        if message.is_close() {
            break;
        }
        if !message.is_text() {
            continue;
        }
        if socket
            .feed(warp::ws::Message::text(reply(&message)))
            .await
            .is_err()
        {
            return;
        }
        // Answer everything already received with one write, as a server batching its acks would.
        while let Some(Some(Ok(message))) = socket.next().now_or_never() {
            if message.is_text()
                && socket
                    .feed(warp::ws::Message::text(reply(&message)))
                    .await
                    .is_err()
            {
                return;
            }
        }
        if socket.flush().await.is_err() {
            return;
        }
    }
}

async fn baseline_dashboard(mut socket: warp::ws::WebSocket) {
    let welcome = ServerMessage::Info(smart_proto::DASHBOARD_WELCOME.to_owned()).to_frame();
    let snapshot = smart_proto::write_init([]);
    for frame in [welcome, snapshot] {
        if socket.send(warp::ws::Message::text(frame)).await.is_err() {
            return;
        }
    }
    while let Some(Ok(message)) = socket.next().await {
        if message.is_close() {
            break;
        }
    }
}
