//! One measured run: devices, reading and stalled dashboards, phases and the report of the run; and
//! the idle-connection memory measurement.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use smart_proto::ServerMessage;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::common::idle::{self, IdleReport, IdleSlot};
use crate::common::run::{
    self, CONNECT_CONCURRENCY, DeviceResult, Phase, Shared, join_within, wait_ready,
};
use crate::common::{self, CpuSample, Histogram, Ws};
use crate::report::RunReport;
use crate::{Args, Load};

/// How long a device waits for an ack, or a dashboard for its snapshot, before it counts as an error.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

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
pub(crate) fn check_frames(load: &Load) -> Result<()> {
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

async fn open_device(url: &str, serial: &str, handshakes: &Semaphore) -> Result<Ws> {
    let _permit = handshakes.acquire().await?;
    let mut ws = common::connect_as(
        url,
        Some(serial),
        common::small_frames_config(),
        REPLY_TIMEOUT,
    )
    .await?;
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
    mut phase: watch::Receiver<Phase>,
) -> DeviceResult {
    let mut result = DeviceResult::default();
    let opened = open_device(&url, &serial, &handshakes).await;
    let Some(mut ws) = shared.opened(format_args!("device {serial}"), opened) else {
        return result;
    };
    if phase.wait_for(|p| *p >= Phase::Warmup).await.is_err() {
        return result;
    }
    // One timer for the whole run instead of one per ack: the run ends by then or this device is stuck.
    let stuck = sleep(Duration::from_hours(24));
    tokio::pin!(stuck);
    let mut in_flight: VecDeque<(u64, u64)> = VecDeque::with_capacity(window);
    let mut next_id = 1u64;
    loop {
        if shared.phase() < Phase::Stop {
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
            result.ack(&shared, sent_us);
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
    mut phase: watch::Receiver<Phase>,
) -> DashboardResult {
    let mut result = DashboardResult::default();
    let opened = async {
        let mut ws = common::connect(&url, WebSocketConfig::default(), REPLY_TIMEOUT).await?;
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
    let opened = opened.await;
    let Some(mut ws) = shared.opened(format_args!("dashboard {index}"), opened) else {
        return result;
    };
    let done = phase.wait_for(|p| *p >= Phase::Done);
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
        let measuring = shared.phase() == Phase::Measure;
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

/// A dashboard that connects and never reads anything (not even the welcome) until the run is
/// [`Phase::Done`], then closes its socket.
async fn stalled_dashboard(
    url: Arc<str>,
    shared: Arc<Shared>,
    handshakes: Arc<Semaphore>,
    mut phase: watch::Receiver<Phase>,
) {
    let connected = async {
        let _permit = handshakes.acquire().await?;
        common::connect(&url, WebSocketConfig::default(), REPLY_TIMEOUT).await
    };
    let connected = connected.await;
    if let Some(ws) = shared.opened("stalled dashboard", connected) {
        let _ = timeout(
            Duration::from_mins(30),
            phase.wait_for(|p| *p >= Phase::Done),
        )
        .await;
        drop(ws);
    }
}

/// Reset the peak resident set of `pid` to its current one (`echo 5 > /proc/PID/clear_refs`);
/// whether the kernel allowed it.
fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// Peak resident set (`VmHWM`) of `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmHWM in /proc/{pid}/status"))
}

/// One measured run against the server at `base`.
pub(crate) async fn measure(
    target: &str,
    base: &str,
    pid: Option<u32>,
    load: &Load,
) -> Result<RunReport> {
    let device_url: Arc<str> = common::endpoint(base, "/update/")?.into();
    let dashboard_url: Arc<str> = common::endpoint(base, "/client/")?.into();
    let shared = Arc::new(Shared::default());
    let (phase_tx, phase_rx) = watch::channel(Phase::Connecting);
    let set_phase = |phase: Phase| shared.set_phase(&phase_tx, phase);

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
    // Stalled dashboards: the server's memory is read before they connect and at its peak after
    // the measured period.
    let peak_reset = load.stalled_dashboards > 0 && pid.is_some_and(reset_peak_rss);
    let rss_before_stalled = if load.stalled_dashboards > 0 {
        pid.map(common::rss_kib).transpose()?
    } else {
        None
    };
    let mut stalled = JoinSet::new();
    for _ in 0..load.stalled_dashboards {
        stalled.spawn(stalled_dashboard(
            Arc::clone(&dashboard_url),
            Arc::clone(&shared),
            Arc::clone(&handshakes),
            phase_rx.clone(),
        ));
    }
    wait_ready(
        &shared,
        load.dashboards + load.stalled_dashboards,
        Duration::from_mins(1),
    )
    .await?;
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
        load.dashboards + load.stalled_dashboards + load.devices,
        Duration::from_mins(1),
    )
    .await?;
    let connected = shared.ready.load(Ordering::Relaxed);

    let total = load.warmup + load.measured;
    let bar = common::progress_bar(total.as_secs(), load.quiet);
    bar.set_prefix(target.to_owned());
    let ticker = run::tick_progress(&shared, &bar);
    set_phase(Phase::Warmup);
    sleep(load.warmup).await;

    let server_cpu = pid.map(CpuSample::start).transpose()?;
    let own_cpu = CpuSample::start(std::process::id())?;
    let load_average = common::load_average();
    let measure_start = Instant::now();
    set_phase(Phase::Measure);
    sleep(load.measured).await;
    set_phase(Phase::Stop);
    let measured = measure_start.elapsed().as_secs_f64();
    let server_cpu = server_cpu.map(|c| c.percent()).transpose()?;
    let own_cpu = own_cpu.percent()?;
    let server_rss = pid.map(common::rss_kib).transpose()?;
    let server_peak = match pid {
        Some(pid) if peak_reset => Some(peak_rss_kib(pid)?),
        _ => server_rss,
    };
    ticker.abort();
    bar.finish_and_clear();

    let (all, stuck_devices) =
        run::join_devices(&mut devices, REPLY_TIMEOUT + Duration::from_secs(5)).await;
    let (ack_count, acks) = (all.acks, all.latency);
    // Let the last UPDTs reach the dashboards before they stop reading.
    sleep_until(Instant::now() + Duration::from_millis(300)).await;
    set_phase(Phase::Done);
    let mut fanout = Histogram::default();
    let (mut updates, mut resyncs) = (0, 0);
    join_within(&mut dashboards, Duration::from_secs(5), |result| {
        updates += result.updates;
        resyncs += result.resyncs;
        fanout.merge(&result.latency);
    })
    .await;
    // The stalled dashboards were released at `Done`: they close without reading.
    join_within(&mut stalled, Duration::from_secs(5), |()| {}).await;
    if stuck_devices > 0 {
        shared.error(format!("{stuck_devices} devices did not finish"));
    }

    let per_s = |n: u64| common::round(n as f64 / measured.max(1e-3), 1);
    let ms = |h: &Histogram, q: f64| common::round(h.quantile_ms(q), 3);
    let mut report = RunReport {
        target: target.to_owned(),
        url: base.to_owned(),
        devices: load.devices,
        dashboards: load.dashboards,
        stalled_dashboards: load.stalled_dashboards,
        window: load.window,
        connected,
        warmup_s: load.warmup.as_secs_f64(),
        seconds: common::round(measured, 3),
        acks: ack_count,
        acks_per_s: per_s(ack_count),
        ack_p50_ms: ms(&acks, 0.50),
        ack_p99_ms: ms(&acks, 0.99),
        ack_p999_ms: ms(&acks, 0.999),
        ack_max_ms: common::round(acks.max_ms(), 3),
        dashboard_msgs: updates,
        dashboard_msgs_per_s: per_s(updates),
        fanout_p50_ms: ms(&fanout, 0.50),
        fanout_p99_ms: ms(&fanout, 0.99),
        resyncs,
        errors: shared.errors.load(Ordering::Relaxed),
        first_errors: shared.first_errors.to_vec(),
        loadgen_cpu_percent: common::round(own_cpu, 1),
        load_average,
        server_cpu_percent: server_cpu.map(|cpu| common::round(cpu, 1)),
        server_rss_kib: server_rss,
        server_rss_before_stalled_kib: None,
        server_rss_peak_kib: None,
        rss_per_stalled_dashboard_kib: None,
        rounds_acks_per_s: None,
        rounds_rss_per_stalled_dashboard_kib: None,
        no_dashboards: None,
        ratio_to_no_dashboards: None,
        baseline: None,
        fraction_of_baseline: None,
    };
    if let (Some(before), Some(peak)) = (rss_before_stalled, server_peak) {
        report.server_rss_before_stalled_kib = Some(before);
        report.server_rss_peak_kib = Some(peak);
        let per = (peak as f64 - before as f64) / load.stalled_dashboards.max(1) as f64;
        report.rss_per_stalled_dashboard_kib = Some(common::round(per, 2));
    }
    Ok(report)
}

/// Open idle device connections and report the server's resident memory per connection.
pub(crate) async fn idle(args: &Args, connections: usize) -> Result<IdleReport> {
    let url: Arc<str> = common::endpoint(&args.url, "/update/")?.into();
    let hold = |slot: IdleSlot| {
        let url = Arc::clone(&url);
        async move {
            let IdleSlot {
                index,
                shared,
                handshakes,
                mut release,
            } = slot;
            // With `--token-file`, idle connections present the tokens of serials 0001, 0002, …
            let serial = format!("{:04}", index + 1);
            let opened = open_device(&url, &serial, &handshakes).await;
            if let Some(ws) = shared.opened("idle connection", opened) {
                // Hold the socket, unread, until released (or the run is abandoned).
                let _ = timeout(Duration::from_mins(10), release.wait_for(|r| *r)).await;
                drop(ws);
            }
        }
    };
    idle::measure(
        "smart-server",
        args.url.clone(),
        connections,
        &args.flags,
        hold,
    )
    .await
}
