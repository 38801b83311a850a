//! The MQTT side of the peer benchmark (issue 15): loadgen's device model against an MQTT broker
//! (Mosquitto 2 in `examples/benchmarks.sh peer`), so that the two can be measured side by side.
//!
//! N devices, each its own MQTT connection, each publishing `QoS` 1 to its own topic
//! (`smart/update/0001`, …) as fast as its PUBACKs return (window W publishes in flight per device),
//! while M dashboards (subscribers to `#`) count what the broker routes to them. The payload is
//! loadgen's device frame, byte for byte (a UPDT with a changing `power_consumption` and the send time
//! `sent_us`: about 80 bytes, the size of a typical `SolMate` update). After a warm-up, a measured period
//! gives acks/s, ack latency percentiles, dashboard messages/s and the device→dashboard latency, and
//! with `--server-pid` the broker's CPU (per ack too) and resident memory from /proc. The flags and the
//! keys of the JSON line are loadgen's, so that a script reads both alike.
//!
//! What a PUBACK promises is the broker's business: Mosquitto with `persistence false` sends it once the
//! message is routed in memory (nothing is on disk), while smart-server acks a message after the
//! `fdatasync` that covers it.
//!
//! ```text
//! mqtt_load --url mqtt://127.0.0.1:1883 --devices 100 --seconds 10 --server-pid PID --json
//! mqtt_load --url mqtt://127.0.0.1:1883 --devices 100 --dashboards 10 --rounds 3
//! mqtt_load --url mqtt://127.0.0.1:1883 --idle 10000 --server-pid PID     # memory per idle connection
//! ```
//!
//! Loopback only. Every phase is bounded in time; one process holds at most as many sockets as its
//! open-files limit allows (about 19,900 here).

mod common;

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use clap::Parser;
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, Incoming, MqttOptions, NetworkOptions,
    Outgoing, QoS, SubscribeReasonCode,
};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, timeout};

use common::Histogram;
use common::idle::{self, IdleReport, IdleSlot};
use common::report::{self, Round, print_errors, print_json};
use common::run::{
    self, CONNECT_CONCURRENCY, DeviceResult, Phase, Shared, join_within, wait_ready,
};

/// How long a device waits for a PUBACK, or any client for its CONNACK or SUBACK, before it counts as
/// an error.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Keep-alive of every connection: longer than any run, so that idle connections stay silent.
const KEEP_ALIVE: Duration = Duration::from_mins(10);
/// The topic of device `serial` is this prefix and the serial.
const TOPIC_PREFIX: &str = "smart/update/";

/// Measure an MQTT broker with loadgen's load: `QoS` 1 acks/s, ack latency, fan-out to subscribers,
/// memory per connection.
#[derive(Debug, Parser)]
#[command(version, long_about = None)]
struct Args {
    /// Broker address (loopback only).
    #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
    url: String,
    /// Devices, each on its own connection, each publishing `QoS` 1 to its own topic as fast as its
    /// PUBACKs return.
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Dashboards: subscribers to `#`, counting what they receive.
    #[arg(long, visible_alias = "subscribers", default_value_t = 0)]
    dashboards: usize,
    /// `QoS` of the dashboards' subscription (0: pushed without acks, as smart-server pushes to its
    /// dashboards; 1: each message acked by the dashboard).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    dashboard_qos: u8,
    /// Length of the measured period, in seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Warm-up before the measured period, in seconds.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Publishes in flight per device (1: each device waits for its PUBACK before the next one).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    window: u16,
    /// Serial number of the first device (serials are zero-padded to 4 digits).
    #[arg(long, default_value_t = 1)]
    first_serial: u64,
    /// Measure this many times and report the run with the median rate, with every run's rate.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Instead of a load, open this many idle connections and report the broker's memory per
    /// connection (needs `--server-pid`).
    #[arg(long, value_name = "N")]
    idle: Option<usize>,
    #[command(flatten)]
    flags: common::Flags,
}

fn main() -> Result<()> {
    let args: Args = common::parse_args(&[(
        "server_pid",
        "Pid of the (local) broker, to report its CPU use and resident memory from /proc",
    )]);
    common::init_tracing();
    let broker = broker_address(&args.url)?;
    let runtime = args.flags.runtime()?;
    if let Some(connections) = args.idle {
        let report = runtime.block_on(idle(&args, broker, connections))?;
        return report.print_report(args.flags.json, "MQTT", "broker");
    }
    ensure!(args.devices > 0, "--devices must be at least 1");
    common::check_socket_budget(args.devices + args.dashboards)?;
    let load = Load {
        devices: args.devices,
        dashboards: args.dashboards,
        dashboard_qos: args.dashboard_qos,
        window: args.window,
        first_serial: args.first_serial,
        warmup: common::seconds(args.warmup, "--warmup")?,
        measured: common::seconds(args.seconds, "--seconds")?,
        quiet: args.flags.no_progress(),
    };
    let report = runtime.block_on(async {
        let mut runs = Vec::new();
        for _ in 0..args.rounds.max(1) {
            runs.push(measure(&args.url, broker, args.flags.server_pid, &load).await?);
        }
        report::median(runs).context("no run measured")
    })?;
    report.print_report(args.flags.json)
}

/// The address of the broker at `url` (`mqtt://127.0.0.1:1883`, `tcp://…` or `127.0.0.1:1883`), which
/// must be on the loopback interface.
fn broker_address(url: &str) -> Result<SocketAddr> {
    let rest = ["mqtt://", "tcp://"]
        .into_iter()
        .find_map(|scheme| url.strip_prefix(scheme))
        .unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or_default();
    let authority = authority
        .strip_prefix("localhost:")
        .map_or_else(|| authority.to_owned(), |port| format!("127.0.0.1:{port}"));
    let address: SocketAddr = authority
        .parse()
        .with_context(|| format!("broker URL {url:?} is not mqtt://IP:PORT"))?;
    ensure!(
        address.ip().is_loopback(),
        "mqtt_load only measures brokers on the loopback interface, not {url}"
    );
    Ok(address)
}

/// Everything one load run needs to know.
#[derive(Debug, Clone)]
struct Load {
    devices: usize,
    dashboards: usize,
    /// 0 or 1.
    dashboard_qos: u8,
    window: u16,
    first_serial: u64,
    warmup: Duration,
    measured: Duration,
    quiet: bool,
}

/// A client of the broker at `broker` (Nagle off, as loadgen's websockets), not yet connected: at
/// most `inflight` `QoS` 1 publishes unacknowledged, `requests` requests queued.
fn mqtt_client(
    broker: SocketAddr,
    client_id: String,
    inflight: u16,
    requests: usize,
) -> (AsyncClient, EventLoop) {
    let mut options = MqttOptions::new(client_id, broker.ip().to_string(), broker.port());
    options
        .set_keep_alive(KEEP_ALIVE)
        .set_clean_session(true)
        .set_inflight(inflight.max(1))
        .set_max_packet_size(16 * 1024, 16 * 1024);
    let (client, mut events) = AsyncClient::new(options, requests.max(1));
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    network.set_connection_timeout(REPLY_TIMEOUT.as_secs());
    events.set_network_options(network);
    (client, events)
}

/// Connect: the first poll opens the socket and returns the CONNACK.
async fn connect(events: &mut EventLoop, handshakes: &Semaphore) -> Result<()> {
    let _permit = handshakes.acquire().await?;
    match timeout(REPLY_TIMEOUT, events.poll())
        .await
        .context("no CONNACK")?
        .context("connecting")?
    {
        Event::Incoming(Incoming::ConnAck(ack)) if ack.code == ConnectReturnCode::Success => Ok(()),
        other => anyhow::bail!("expected a successful CONNACK, got {other:?}"),
    }
}

/// Close a connection politely (DISCONNECT), within a second.
async fn disconnect(client: &AsyncClient, events: &mut EventLoop) {
    if client.try_disconnect().is_ok() {
        let _ = timeout(Duration::from_secs(1), async {
            while let Ok(event) = events.poll().await {
                if matches!(event, Event::Outgoing(Outgoing::Disconnect)) {
                    break;
                }
            }
        })
        .await;
    }
}

/// The payload of one device message: loadgen's device frame, byte for byte.
fn device_payload(id: u64, serial: &str, sent_us: u64) -> String {
    let mut out = String::with_capacity(96);
    let _ = write!(
        out,
        r#"{{"type":"UPDT","message":"{id:04}:{serial}:{{\"power_consumption\":{},\"sent_us\":{sent_us}}}"}}"#,
        id % 1000
    );
    out
}

/// The `sent_us` a device put in a payload.
fn sent_us(payload: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(payload).ok()?;
    let at = text.find("sent_us")? + "sent_us".len();
    let rest = text[at..].trim_start_matches(['\\', '"', ':', ' ']);
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// What one dashboard measured.
#[derive(Debug, Default)]
struct DashboardResult {
    messages: u64,
    latency: Histogram,
}

async fn device(
    serial: String,
    broker: SocketAddr,
    window: u16,
    shared: Arc<Shared>,
    handshakes: Arc<Semaphore>,
    mut phase: watch::Receiver<Phase>,
) -> DeviceResult {
    let mut result = DeviceResult::default();
    let (client, mut events) = mqtt_client(
        broker,
        format!("smart-device-{serial}"),
        window,
        usize::from(window),
    );
    let opened = connect(&mut events, &handshakes).await;
    if shared
        .opened(format_args!("device {serial}"), opened)
        .is_none()
    {
        return result;
    }
    if phase.wait_for(|p| *p >= Phase::Warmup).await.is_err() {
        return result;
    }
    let topic = format!("{TOPIC_PREFIX}{serial}");
    let window = usize::from(window);
    // One timer for the whole run instead of one per ack: the run ends by then or this device is stuck.
    let stuck = sleep(Duration::from_hours(24));
    tokio::pin!(stuck);
    // Send times of the publishes handed to the client and not yet written (no packet id yet), then
    // of those written, by packet id.
    let mut queued: VecDeque<u64> = VecDeque::with_capacity(window);
    let mut in_flight: Vec<(u16, u64)> = Vec::with_capacity(window);
    let mut next_id = 1u64;
    loop {
        if shared.phase() < Phase::Stop {
            while queued.len() + in_flight.len() < window {
                let sent_us = common::monotonic_micros();
                let payload = device_payload(next_id, &serial, sent_us);
                if let Err(err) = client.try_publish(&topic, QoS::AtLeastOnce, false, payload) {
                    shared.error(format!("device {serial}: publish failed: {err}"));
                    return result;
                }
                queued.push_back(sent_us);
                next_id += 1;
            }
        } else if queued.is_empty() && in_flight.is_empty() {
            break;
        }
        stuck.as_mut().reset(Instant::now() + REPLY_TIMEOUT);
        let event = tokio::select! {
            event = events.poll() => event,
            () = &mut stuck => {
                shared.error(format!("device {serial}: no PUBACK within {REPLY_TIMEOUT:?}"));
                return result;
            }
        };
        match event {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                if let Some(sent_us) = queued.pop_front() {
                    in_flight.push((pkid, sent_us));
                }
            }
            Ok(Event::Incoming(Incoming::PubAck(ack))) => {
                let Some(at) = in_flight.iter().position(|&(pkid, _)| pkid == ack.pkid) else {
                    shared.error(format!(
                        "device {serial}: PUBACK {} for nothing in flight",
                        ack.pkid
                    ));
                    continue;
                };
                let (_, sent_us) = in_flight.swap_remove(at);
                result.ack(&shared, sent_us);
            }
            Ok(Event::Incoming(Incoming::Disconnect)) => {
                shared.error(format!("device {serial}: disconnected by the broker"));
                return result;
            }
            Err(err) => {
                shared.error(format!("device {serial}: connection lost: {err}"));
                return result;
            }
            Ok(_) => {}
        }
    }
    disconnect(&client, &mut events).await;
    result
}

/// Subscribe to `#` and wait for the SUBACK.
async fn subscribe(client: &AsyncClient, events: &mut EventLoop, qos: u8) -> Result<()> {
    let qos = if qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    client.try_subscribe("#", qos).context("subscribing")?;
    let deadline = Instant::now() + REPLY_TIMEOUT;
    loop {
        let event = timeout(
            deadline.saturating_duration_since(Instant::now()),
            events.poll(),
        )
        .await
        .context("no SUBACK")?
        .context("subscribing")?;
        if let Event::Incoming(Incoming::SubAck(ack)) = event {
            ensure!(
                ack.return_codes
                    .iter()
                    .all(|code| matches!(code, SubscribeReasonCode::Success(_))),
                "subscription refused: {:?}",
                ack.return_codes
            );
            return Ok(());
        }
    }
}

async fn dashboard(
    index: usize,
    broker: SocketAddr,
    qos: u8,
    shared: Arc<Shared>,
    handshakes: Arc<Semaphore>,
    mut phase: watch::Receiver<Phase>,
) -> DashboardResult {
    let mut result = DashboardResult::default();
    let (client, mut events) = mqtt_client(broker, format!("smart-dashboard-{index}"), 16, 16);
    let opened = async {
        connect(&mut events, &handshakes).await?;
        subscribe(&client, &mut events, qos).await
    };
    let opened = opened.await;
    if shared
        .opened(format_args!("dashboard {index}"), opened)
        .is_none()
    {
        return result;
    }
    let done = phase.wait_for(|p| *p >= Phase::Done);
    tokio::pin!(done);
    loop {
        let event = tokio::select! {
            event = events.poll() => event,
            _ = &mut done => break,
        };
        match event {
            Ok(Event::Incoming(Incoming::Publish(publish))) => {
                if shared.phase() == Phase::Measure {
                    result.messages += 1;
                    if let Some(sent) = sent_us(&publish.payload) {
                        result
                            .latency
                            .record(common::monotonic_micros().saturating_sub(sent));
                    }
                }
            }
            Ok(Event::Incoming(Incoming::Disconnect)) => {
                shared.error(format!("dashboard {index}: disconnected by the broker"));
                return result;
            }
            Err(err) => {
                shared.error(format!("dashboard {index}: connection lost: {err}"));
                return result;
            }
            Ok(_) => {}
        }
    }
    disconnect(&client, &mut events).await;
    result
}

/// One measured run against the broker at `broker`.
async fn measure(
    url: &str,
    broker: SocketAddr,
    pid: Option<u32>,
    load: &Load,
) -> Result<RunReport> {
    let shared = Arc::new(Shared::default());
    let (phase_tx, phase_rx) = watch::channel(Phase::Connecting);
    let set_phase = |phase: Phase| shared.set_phase(&phase_tx, phase);
    let handshakes = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));

    // Dashboards first, so that they see every message.
    let mut dashboards = JoinSet::new();
    for index in 0..load.dashboards {
        dashboards.spawn(dashboard(
            index,
            broker,
            load.dashboard_qos,
            Arc::clone(&shared),
            Arc::clone(&handshakes),
            phase_rx.clone(),
        ));
    }
    wait_ready(&shared, load.dashboards, Duration::from_secs(30)).await?;
    let mut devices = JoinSet::new();
    for i in 0..load.devices {
        let serial = format!("{:04}", load.first_serial + i as u64);
        devices.spawn(device(
            serial,
            broker,
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
    bar.set_prefix("mqtt broker");
    let ticker = run::tick_progress(&shared, &bar);
    set_phase(Phase::Warmup);
    sleep(load.warmup).await;

    let server_ticks = pid.map(common::cpu_ticks).transpose()?;
    let own_cpu = common::CpuSample::start(std::process::id())?;
    let load_average = common::load_average();
    let measure_start = Instant::now();
    set_phase(Phase::Measure);
    sleep(load.measured).await;
    set_phase(Phase::Stop);
    let measured = measure_start.elapsed().as_secs_f64();
    let server_cpu_s = match (pid, server_ticks) {
        (Some(pid), Some(before)) => {
            Some(common::cpu_ticks(pid)?.saturating_sub(before) as f64 / common::CLOCK_TICKS_PER_S)
        }
        _ => None,
    };
    let own_cpu = own_cpu.percent()?;
    let server_rss = pid.map(common::rss_kib).transpose()?;
    ticker.abort();
    bar.finish_and_clear();

    let (all, stuck_devices) =
        run::join_devices(&mut devices, REPLY_TIMEOUT + Duration::from_secs(5)).await;
    let (ack_count, acks) = (all.acks, all.latency);
    // Let the last messages reach the dashboards before they stop reading.
    sleep(Duration::from_millis(300)).await;
    set_phase(Phase::Done);
    let mut fanout = Histogram::default();
    let mut messages = 0;
    join_within(&mut dashboards, Duration::from_secs(5), |result| {
        messages += result.messages;
        fanout.merge(&result.latency);
    })
    .await;
    if stuck_devices > 0 {
        shared.error(format!("{stuck_devices} devices did not finish"));
    }

    let per_s = |n: u64| common::round(n as f64 / measured.max(1e-3), 1);
    let ms = |h: &Histogram, q: f64| common::round(h.quantile_ms(q), 3);
    Ok(RunReport {
        ack_max_ms: common::round(acks.max_ms(), 3),
        ack_p50_ms: ms(&acks, 0.50),
        ack_p999_ms: ms(&acks, 0.999),
        ack_p99_ms: ms(&acks, 0.99),
        acks: ack_count,
        acks_per_s: per_s(ack_count),
        connected,
        dashboard_delivery: (load.dashboards > 0 && ack_count > 0).then(|| {
            common::round(
                messages as f64 / (ack_count as f64 * load.dashboards as f64),
                3,
            )
        }),
        dashboard_msgs: messages,
        dashboard_msgs_per_s: per_s(messages),
        dashboard_qos: load.dashboard_qos,
        dashboards: load.dashboards,
        devices: load.devices,
        errors: shared.errors.load(Ordering::Relaxed),
        fanout_p50_ms: ms(&fanout, 0.50),
        fanout_p99_ms: ms(&fanout, 0.99),
        first_errors: shared.first_errors.to_vec(),
        load_average,
        loadgen_cpu_percent: common::round(own_cpu, 1),
        payload_bytes: device_payload(1, &format!("{:04}", load.first_serial), 1).len(),
        rounds_acks_per_s: None,
        seconds: common::round(measured, 3),
        server_cpu_percent: server_cpu_s
            .map(|cpu| common::round(cpu / measured.max(1e-3) * 100.0, 1)),
        server_cpu_us_per_ack: server_cpu_s
            .filter(|_| ack_count > 0)
            .map(|cpu| common::round(cpu * 1e6 / ack_count as f64, 2)),
        server_rss_kib: server_rss,
        target: "mqtt broker",
        url: url.to_owned(),
        warmup_s: load.warmup.as_secs_f64(),
        window: load.window,
    })
}

/// Open idle connections and report the broker's resident memory per connection.
async fn idle(args: &Args, broker: SocketAddr, connections: usize) -> Result<IdleReport> {
    let hold = |slot: IdleSlot| async move {
        let IdleSlot {
            index,
            shared,
            handshakes,
            mut release,
        } = slot;
        let (client, mut events) =
            mqtt_client(broker, format!("smart-idle-{:05}", index + 1), 1, 1);
        let opened = connect(&mut events, &handshakes).await;
        if shared.opened("idle connection", opened).is_some() {
            // Hold the connection (polling answers the broker, should it send anything) until
            // released, or the run is abandoned.
            let released = release.wait_for(|r| *r);
            let _ = timeout(Duration::from_mins(10), async {
                tokio::pin!(released);
                loop {
                    tokio::select! {
                        _ = &mut released => break,
                        event = events.poll() => if event.is_err() { break },
                    }
                }
            })
            .await;
            disconnect(&client, &mut events).await;
        }
    };
    idle::measure(
        "mqtt broker",
        args.url.clone(),
        connections,
        &args.flags,
        hold,
    )
    .await
}

/// One measured run; the report of a load is the median run. The fields are in alphabetical order, the
/// keys are loadgen's where loadgen has them.
#[derive(Debug, Clone, Serialize)]
struct RunReport {
    ack_max_ms: f64,
    ack_p50_ms: f64,
    ack_p999_ms: f64,
    ack_p99_ms: f64,
    acks: u64,
    acks_per_s: f64,
    /// Devices and dashboards that connected.
    connected: usize,
    /// Messages the dashboards received over the acks times the dashboards (about 1 when the broker
    /// routed every message to every dashboard; the edges of the measured period blur it a little).
    dashboard_delivery: Option<f64>,
    dashboard_msgs: u64,
    dashboard_msgs_per_s: f64,
    dashboard_qos: u8,
    dashboards: usize,
    devices: usize,
    errors: u64,
    fanout_p50_ms: f64,
    fanout_p99_ms: f64,
    first_errors: Vec<String>,
    load_average: Option<f64>,
    /// CPU of this process (the load client), in percent of one core.
    loadgen_cpu_percent: f64,
    payload_bytes: usize,
    /// Every round's acks/s, when there were several (set on the median run).
    #[serde(skip_serializing_if = "Option::is_none")]
    rounds_acks_per_s: Option<Vec<f64>>,
    /// Length of the measured period.
    seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_cpu_percent: Option<f64>,
    /// The broker's CPU (user + system, from /proc over the measured period) per ack, in µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    server_cpu_us_per_ack: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_rss_kib: Option<u64>,
    target: &'static str,
    url: String,
    warmup_s: f64,
    window: u16,
}

impl Round for RunReport {
    fn acks_per_s(&self) -> f64 {
        self.acks_per_s
    }

    fn set_rounds_acks_per_s(&mut self, rates: Vec<f64>) {
        self.rounds_acks_per_s = Some(rates);
    }
}

impl RunReport {
    fn print_report(&self, json: bool) -> Result<()> {
        if json {
            return print_json(self);
        }
        println!(
            "{} {}: {} devices (window {}, QoS 1, {} B payloads), {} dashboards (QoS {}); {} s measured after {} s warm-up",
            self.target,
            self.url,
            self.devices,
            self.window,
            self.payload_bytes,
            self.dashboards,
            self.dashboard_qos,
            Value::from(self.seconds),
            Value::from(self.warmup_s)
        );
        println!(
            "  acks/s        {} ({} PUBACKs, {} errors)",
            Value::from(self.acks_per_s),
            self.acks,
            self.errors
        );
        println!(
            "  ack latency   p50 {} ms, p99 {} ms, p99.9 {} ms, max {} ms",
            Value::from(self.ack_p50_ms),
            Value::from(self.ack_p99_ms),
            Value::from(self.ack_p999_ms),
            Value::from(self.ack_max_ms)
        );
        if self.dashboards > 0 {
            println!(
                "  dashboards    {} msgs/s in all (delivery {}); device→dashboard p50 {} ms, p99 {} ms",
                Value::from(self.dashboard_msgs_per_s),
                Value::from(self.dashboard_delivery),
                Value::from(self.fanout_p50_ms),
                Value::from(self.fanout_p99_ms)
            );
        }
        let mut cpu = format!(
            "  CPU           load client {} %",
            Value::from(self.loadgen_cpu_percent)
        );
        if let Some(server) = self.server_cpu_percent {
            let _ = write!(
                cpu,
                ", broker {} % ({} µs per ack; RSS {} KiB)",
                Value::from(server),
                Value::from(self.server_cpu_us_per_ack),
                Value::from(self.server_rss_kib)
            );
        }
        let _ = write!(
            cpu,
            " of one core; machine load average {}",
            Value::from(self.load_average)
        );
        println!("{cpu}");
        if let Some(rounds) = &self.rounds_acks_per_s {
            println!(
                "  rounds        acks/s {} (this is the median one)",
                Value::from(rounds.clone())
            );
        }
        print_errors(&self.first_errors);
        Ok(())
    }
}
