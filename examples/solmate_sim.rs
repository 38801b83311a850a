//! A fleet of simulated `SolMate` devices for a SMART-OS server: the original emulator's behaviour,
//! without its prompts, for thousands of devices at once.
//!
//! Each device keeps one websocket to `/update/`, announces itself (an INIT with the underscored keys and
//! runtime keys a Python device sends, or a plain UPDT), then changes a few values every few seconds (the
//! first change at a random point of the first interval, so the fleet does not change in step) and sends
//! only what changed. It waits for the ack of each message before the next one (changes made in the
//! meantime are merged), counts OK and ERROR replies, and after a lost connection reconnects with
//! exponential backoff and sends again every field the server has not acked — also after the end of the
//! run, for up to `--drain-seconds`, so that a run ends with the server holding each device's last values.
//! An ERROR is final (its fields are dropped: the server would refuse them again), except the store's
//! transient refusal (`not stored: the store failed …`, a failed disk write): those fields stay pending
//! and go out again after a backoff of 0.2 s doubling to 2 s, until acked (`retried_not_stored`).
//!
//! ```text
//! cargo run --release --example solmate_sim -- --url ws://127.0.0.1:8000 --devices 1000 --seconds 60
//! ```
//!
//! One process holds at most as many sockets as its open-files limit allows (`ulimit -n`; 20,000 here,
//! so about 19,900 devices): run several processes with disjoint `--first-serial` for more.

mod common;

use std::collections::BTreeMap;
use std::f64::consts::TAU;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};
use smart_proto::{DeviceMessage, Header, Kind, MessageId, Serial, ServerMessage, Update};
use tokio::sync::Semaphore;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::tungstenite::Message;

use common::{FirstErrors, Histogram, Ws};

/// Simulate a fleet of solar battery devices against a SMART-OS server.
#[derive(Debug, Parser)]
#[command(version, long_about = None)]
struct Args {
    /// Server URL; devices connect to its `/update/` endpoint.
    #[arg(long, default_value = "ws://127.0.0.1:8000")]
    url: String,
    /// Number of devices (one websocket each; one process holds at most ~19,900).
    #[arg(short = 'n', long, default_value_t = 10)]
    devices: u64,
    /// Serial number of the first device; serials are zero-padded to 4 digits (0001 … 9999, 10000 …).
    #[arg(long, default_value_t = 1)]
    first_serial: u64,
    /// The first message of each device: a Python-style INIT with underscored and runtime keys, or a
    /// plain UPDT with all values.
    #[arg(long, value_enum, default_value_t = FirstMessage::Init)]
    first: FirstMessage,
    /// How values change.
    #[arg(long, value_enum, default_value_t = Behaviour::Random)]
    values: Behaviour,
    /// Period of the ramp and sine behaviours, in seconds.
    #[arg(long, default_value_t = 60.0)]
    period: f64,
    /// Shortest time between two changes of one device, in seconds.
    #[arg(long, default_value_t = 1.0)]
    min_interval: f64,
    /// Longest time between two changes of one device, in seconds.
    #[arg(long, default_value_t = 5.0)]
    max_interval: f64,
    /// How long the devices run, in seconds (then each waits for its last ack and disconnects).
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// Seconds to wait for an ack before a connection counts as lost.
    #[arg(long, default_value_t = 10.0)]
    ack_timeout: f64,
    /// After the run, how long a device whose connection was lost keeps reconnecting to deliver the
    /// changes the server has not acked, in seconds (what is still pending then counts as unsent).
    #[arg(long, default_value_t = 10.0)]
    drain_seconds: f64,
    /// Connection handshakes in progress at once (a 10,000-device fleet connects in a few seconds).
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Seed of the random values, for repeatable runs.
    #[arg(long)]
    seed: Option<u64>,
    /// Put the send time (milliseconds since the Unix epoch, with microseconds as decimals) into this
    /// extra numeric field of UPDTs, for a dashboard on the same machine to measure the latency from
    /// device to dashboard (`watch --latency-field`); see `--stamp-fraction`.
    #[arg(long)]
    stamp_field: Option<String>,
    /// With `--stamp-field`: the share of UPDTs (0–1, picked at random) that carry the stamp; the others
    /// leave the field unchanged, so a dashboard sees it only in stamped changes.
    #[arg(long, default_value_t = 1.0)]
    stamp_fraction: f64,
    /// Add each device's last values to the JSON summary (`final_values`: serial → fields, typed as the
    /// server stores them), to compare with the server's records.
    #[arg(long)]
    final_values: bool,
    #[command(flatten)]
    flags: common::Flags,
    #[command(flatten)]
    access: common::AccessFlags,
}

/// The simulator's wording of the shared flags' help (without the final period, as clap shows a
/// one-line doc comment).
const FLAGS_HELP: [(&str, &str); 3] = [
    (
        "server_pid",
        "Report this process's CPU use and memory at the end (the pid of a local server)",
    ),
    (
        "threads",
        "Worker threads of the runtime (default: one per core)",
    ),
    ("json", "Print the summary as one line of JSON"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FirstMessage {
    /// `INIT` with `_battery`, `server_url`, … as the reference device sends from its `__dict__`.
    Init,
    /// `UPDT` with every value under its plain name.
    Updt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Behaviour {
    /// One to three values jump to a random level at each change.
    Random,
    /// Values climb linearly from their minimum to their maximum over a period, then start again.
    Ramp,
    /// Values follow a sine over a period, each device and value with its own phase.
    Sine,
}

/// The changing values of a `SolMate` and their ranges.
const DYNAMIC: [(&str, f64, f64); 4] = [
    ("power_income", 0.0, 800.0),
    ("power_inject", 0.0, 600.0),
    ("power_consumption", 0.0, 900.0),
    ("battery", 0.0, 1000.0),
];

/// Counters shared by all devices, read by the progress bar and the summary.
#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
    unexpected: AtomicU64,
    reconnects: AtomicU64,
    connect_failures: AtomicU64,
    /// UPDTs that carried the send time (`--stamp-field`).
    stamped: AtomicU64,
    ack_timeouts: AtomicU64,
    lost_in_flight: AtomicU64,
    connected_now: AtomicU64,
    ever_connected: AtomicU64,
    unsent_fields: AtomicU64,
    /// ERROR replies of a failed store write, whose fields were kept and sent again.
    retried_not_stored: AtomicU64,
}

impl Counters {
    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What every device needs to know about the run.
#[derive(Debug)]
struct Run {
    url: String,
    server_url: String,
    first: FirstMessage,
    values: Behaviour,
    period: f64,
    min_interval: Duration,
    max_interval: Duration,
    ack_timeout: Duration,
    /// `--stamp-field` and `--stamp-fraction`.
    stamp: Option<(String, f64)>,
    start: Instant,
    deadline: Instant,
    /// Devices with unacked changes keep reconnecting until then.
    drain_deadline: Instant,
    handshakes: Semaphore,
    counters: Counters,
    latency: Mutex<Histogram>,
    first_errors: FirstErrors,
}

impl Run {
    fn note_error(&self, what: String) {
        self.first_errors.note(what);
    }
}

/// How the server's reason of a transient refusal starts (`Refusal::Store` in smart-server's
/// `acks.rs`): its disk write failed, nothing of the message is stored, and the same write succeeds
/// once the store recovers (without a restart). Every other refusal is permanent.
const STORE_FAILED: &str = "not stored: the store failed";

/// A message waiting for its ack, and the versions of the fields it carries.
#[derive(Debug)]
struct InFlight {
    id: MessageId,
    fields: Vec<(String, u64)>,
    sent_at: Instant,
}

/// How a connection ended.
enum SessionEnd {
    /// The run is over and nothing is waiting for an ack.
    Done,
    /// The connection broke, or an ack did not come in time; with the message that was waiting for its
    /// ack, if any (its fields are still pending and go out again on the next connection).
    Lost(Option<InFlight>),
}

/// One simulated device: its values, what changed since the last ack, its message counter.
struct Device {
    serial: Serial,
    next_id: u64,
    /// Every value under its plain name, as the device currently sees it.
    state: Map<String, Value>,
    /// Fields not yet acked, with the version of their latest change.
    dirty: BTreeMap<String, u64>,
    version: u64,
    /// The first message (INIT or full UPDT) has been answered.
    announced: bool,
    /// After a transient refusal by the store: the pending fields go out again no earlier than this.
    retry_at: Option<Instant>,
    /// Transient refusals in a row, for the backoff.
    store_refusals: u32,
    phases: [f64; DYNAMIC.len()],
    rng: StdRng,
}

impl Device {
    fn new(serial: Serial, seed: u64) -> Device {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut state = Map::new();
        let countries = ["AT", "DE", "CH", "IT", "SI"];
        state.insert(
            "solmate_version".into(),
            json!(if rng.random_bool(0.5) { "v1" } else { "v2" }),
        );
        state.insert(
            "software_version".into(),
            json!(format!("v8.{}", rng.random_range(0..10))),
        );
        state.insert(
            "country".into(),
            json!(countries[rng.random_range(0..countries.len())]),
        );
        // A number, as the reference device sends it; the server keeps postcodes as text.
        state.insert("postcode".into(), json!(rng.random_range(1000..10_000)));
        state.insert("capacity".into(), json!(5_184_000));
        state.insert("pv_connectors".into(), json!(rng.random_range(1..=2)));
        state.insert("local_time".into(), json!(local_time()));
        for (name, low, high) in DYNAMIC {
            state.insert(name.into(), json!(rng.random_range(low..=high).round()));
        }
        let phases = std::array::from_fn(|_| rng.random_range(0.0..1.0));
        let dirty = state.keys().map(|key| (key.clone(), 0)).collect();
        Device {
            serial,
            next_id: 0,
            state,
            dirty,
            version: 0,
            announced: false,
            retry_at: None,
            store_refusals: 0,
            phases,
            rng,
        }
    }

    /// When the first change after the start is due: a random point of one interval, so that a fleet
    /// that connects within seconds does not change in step (every device at the same instant of each
    /// period, as a fixed `--min-interval` = `--max-interval` would have it).
    fn first_interval(&mut self, run: &Run) -> Duration {
        let interval = self.interval(run);
        interval.mul_f64(self.rng.random_range(0.0..1.0))
    }

    fn interval(&mut self, run: &Run) -> Duration {
        if run.max_interval <= run.min_interval {
            return run.min_interval;
        }
        self.rng.random_range(run.min_interval..=run.max_interval)
    }

    fn set(&mut self, field: &str, value: Value) {
        if self.state.get(field) != Some(&value) {
            self.state.insert(field.to_owned(), value);
            self.version += 1;
            self.dirty.insert(field.to_owned(), self.version);
        }
    }

    /// One change of the device's values, by the run's behaviour.
    fn change(&mut self, run: &Run) {
        let before = self.version;
        match run.values {
            Behaviour::Random => {
                let count = self.rng.random_range(1..=3);
                for _ in 0..count {
                    let pick = self.rng.random_range(0..=DYNAMIC.len());
                    if let Some(&(name, low, high)) = DYNAMIC.get(pick) {
                        let value = self.rng.random_range(low..=high).round();
                        self.set(name, json!(value));
                    } else {
                        self.set("local_time", json!(local_time()));
                    }
                }
            }
            Behaviour::Ramp | Behaviour::Sine => {
                let t = run.start.elapsed().as_secs_f64() / run.period;
                for (i, (name, low, high)) in DYNAMIC.into_iter().enumerate() {
                    let cycle = t + self.phases[i];
                    let level = if run.values == Behaviour::Ramp {
                        cycle.fract()
                    } else {
                        0.5 + 0.5 * (TAU * cycle).sin()
                    };
                    self.set(name, json!((low + level * (high - low)).round()));
                }
            }
        }
        if self.version == before {
            // Nothing moved: the device still reports its clock, as a sign of life.
            self.set("local_time", json!(local_time()));
        }
    }

    fn next_header(&mut self) -> Result<Header> {
        let id = MessageId::new(&format!("{:04}", self.next_id))?;
        self.next_id += 1;
        Ok(Header {
            id,
            serial: self.serial.clone(),
        })
    }

    /// The next message: the announcement until it is answered, then an UPDT of what is not acked yet.
    fn next_message(&mut self, run: &Run) -> Result<(String, InFlight)> {
        let header = self.next_header()?;
        let fields: Vec<(String, u64)> = self.dirty.iter().map(|(k, v)| (k.clone(), *v)).collect();
        let frame = if !self.announced && run.first == FirstMessage::Init {
            self.init_frame(&header, run)
        } else {
            let mut body = Map::new();
            for (field, _) in &fields {
                if let Some(value) = self.state.get(field) {
                    body.insert(field.clone(), value.clone());
                }
            }
            if let Some((field, fraction)) = &run.stamp
                && self.rng.random_bool(*fraction)
            {
                body.insert(field.clone(), json!(epoch_millis()));
                Counters::bump(&run.counters.stamped);
            }
            let update = Update::from_normalized(smart_proto::normalize(body, &self.serial)?)?;
            DeviceMessage {
                kind: Kind::Updt,
                header: header.clone(),
                update,
            }
            .to_frame()
        };
        Ok((
            frame,
            InFlight {
                id: header.id,
                fields,
                sent_at: Instant::now(),
            },
        ))
    }

    /// An INIT as the reference device builds it from its `__dict__`: backing fields with a leading
    /// underscore, runtime keys, the serial in the body.
    fn init_frame(&self, header: &Header, run: &Run) -> String {
        let mut body = Map::new();
        body.insert("serial_number".into(), json!(self.serial.as_str()));
        for (key, value) in &self.state {
            let key = match key.as_str() {
                "solmate_version" | "pv_connectors" => key.clone(),
                _ => format!("_{key}"),
            };
            body.insert(key, value.clone());
        }
        body.insert("server_url".into(), json!(run.server_url));
        body.insert("websocket".into(), json!(""));
        body.insert("connected".into(), json!(true));
        body.insert("publish".into(), json!(true));
        body.insert("message_id".into(), json!(header.id.as_str()));
        body.insert("message_queue".into(), json!({}));
        body.insert("tasks".into(), json!(""));
        body.insert("meassuring".into(), json!(true));
        body.insert("charging".into(), json!(false));
        body.insert("injecting".into(), json!(false));
        let message = format!("{header}:{}", Value::Object(body));
        json!({"type": "INIT", "message": message}).to_string()
    }

    /// The ack (or ERROR) of the message in flight settles its fields.
    fn settle(&mut self, flight: &InFlight) {
        for (field, version) in &flight.fields {
            if self.dirty.get(field) == Some(version) {
                self.dirty.remove(field);
            }
        }
        self.announced = true;
    }

    /// Connect and read the welcome, within the handshake budget.
    async fn open(run: &Run, serial: &Serial) -> Result<Ws> {
        let _permit = run.handshakes.acquire().await?;
        let mut ws = common::connect_as(
            &run.url,
            Some(serial.as_str()),
            common::small_frames_config(),
            Duration::from_secs(10),
        )
        .await?;
        let welcome = timeout(Duration::from_secs(10), ws.next())
            .await
            .context("no welcome")?;
        match welcome {
            Some(Ok(Message::Text(text))) => match smart_proto::parse_server_message(&text) {
                Ok(ServerMessage::Info(info)) if info == smart_proto::DEVICE_WELCOME => Ok(ws),
                _ => bail!("unexpected welcome {text:?}"),
            },
            other => bail!("no welcome: {other:?}"),
        }
    }

    /// Whether the server has not acked everything yet: the announcement or a changed field.
    fn pending(&self) -> bool {
        !self.announced || !self.dirty.is_empty()
    }

    /// Until when this device keeps (re)connecting: the end of the run, or the end of the drain window
    /// while a device that reached the server has something the server has not acked.
    fn connect_until(&self, run: &Run, connected_before: bool) -> Instant {
        if connected_before && self.pending() {
            run.drain_deadline
        } else {
            run.deadline
        }
    }

    /// The device's values typed as the server stores them (`postcode` as text, integral numbers as
    /// integers), for the summary's `final_values`.
    fn final_values(&self) -> Result<Value> {
        let fields = smart_proto::normalize(self.state.clone(), &self.serial)?;
        Ok(Value::Object(
            Update::from_normalized(fields)?.as_map().clone(),
        ))
    }

    /// Run the device until the end of the run: connect, talk, reconnect with backoff. Returns the
    /// serial and the last values.
    async fn run(mut self, run: Arc<Run>) -> (String, Value) {
        let mut connected_before = false;
        let mut failures = 0u32;
        let mut next_change = Instant::now() + self.first_interval(&run);
        while Instant::now() < self.connect_until(&run, connected_before) {
            match Device::open(&run, &self.serial).await {
                Ok(ws) => {
                    if connected_before {
                        Counters::bump(&run.counters.reconnects);
                    } else {
                        Counters::bump(&run.counters.ever_connected);
                    }
                    connected_before = true;
                    failures = 0;
                    run.counters.connected_now.fetch_add(1, Ordering::Relaxed);
                    let end = self.session(ws, &run, &mut next_change).await;
                    run.counters.connected_now.fetch_sub(1, Ordering::Relaxed);
                    match end {
                        SessionEnd::Done => break,
                        // Its fields stay in `dirty` (only an answer settles them): they go out again.
                        SessionEnd::Lost(Some(_)) => Counters::bump(&run.counters.lost_in_flight),
                        SessionEnd::Lost(None) => {}
                    }
                }
                Err(err) => {
                    Counters::bump(&run.counters.connect_failures);
                    run.note_error(format!("{}: {err:#}", self.serial));
                }
            }
            // Exponential backoff from 100 ms to 5 s, with jitter so a fleet does not come back in step.
            let base = Duration::from_millis(100)
                .saturating_mul(1 << failures.min(6))
                .min(Duration::from_secs(5));
            failures += 1;
            let jitter = self.rng.random_range(0.5..1.5);
            let until = self.connect_until(&run, connected_before);
            sleep_until((Instant::now() + base.mul_f64(jitter)).min(until)).await;
        }
        let unsent = self.dirty.len() as u64;
        run.counters
            .unsent_fields
            .fetch_add(unsent, Ordering::Relaxed);
        let values = self.final_values().unwrap_or_else(|err| {
            run.note_error(format!("{}: final values: {err}", self.serial));
            Value::Null
        });
        (self.serial.as_str().to_owned(), values)
    }

    /// One connection: send, wait for acks, change values on schedule.
    async fn session(&mut self, mut ws: Ws, run: &Run, next_change: &mut Instant) -> SessionEnd {
        let mut in_flight: Option<InFlight> = None;
        loop {
            let now = Instant::now();
            let running = now < run.deadline;
            // After a transient refusal the pending fields wait for the end of the backoff; past the
            // drain window the device gives up (what is still pending counts as unsent).
            let backoff = self.retry_at.filter(|&at| at > now);
            if in_flight.is_none() && backoff.is_some() && now >= run.drain_deadline {
                let _ = timeout(Duration::from_secs(2), ws.close(None)).await;
                return SessionEnd::Done;
            }
            // Past the deadline values no longer change: this sends at most one last message with
            // what is still pending (again after a transient refusal), so a run ends with everything
            // acked.
            if in_flight.is_none() && backoff.is_none() && self.pending() {
                self.retry_at = None;
                let (frame, flight) = match self.next_message(run) {
                    Ok(message) => message,
                    Err(err) => {
                        // Only a bug of this simulator gets here: its values are always valid.
                        run.note_error(format!("{}: cannot build a message: {err}", self.serial));
                        Counters::bump(&run.counters.errors);
                        return SessionEnd::Done;
                    }
                };
                if ws.send(Message::text(frame)).await.is_err() {
                    // Not sent (not counted), and its fields are still pending.
                    return SessionEnd::Lost(None);
                }
                Counters::bump(&run.counters.sent);
                in_flight = Some(flight);
            }
            if !running && in_flight.is_none() && backoff.is_none() {
                let _ = timeout(Duration::from_secs(2), ws.close(None)).await;
                return SessionEnd::Done;
            }
            let ack_deadline = in_flight
                .as_ref()
                .map_or(run.deadline, |f| f.sent_at + run.ack_timeout);
            tokio::select! {
                () = sleep_until(*next_change), if running => {
                    self.change(run);
                    *next_change = Instant::now() + self.interval(run);
                }
                () = sleep_until(run.deadline), if running && in_flight.is_none() => {}
                () = sleep_until(backoff.unwrap_or(now).min(run.drain_deadline)), if backoff.is_some() => {}
                () = sleep_until(ack_deadline), if in_flight.is_some() => {
                    Counters::bump(&run.counters.ack_timeouts);
                    run.note_error(format!("{}: no ack within {:?}", self.serial, run.ack_timeout));
                    return SessionEnd::Lost(in_flight);
                }
                message = ws.next() => match message {
                    Some(Ok(Message::Text(text))) => self.on_reply(&text, &mut in_flight, run),
                    Some(Ok(Message::Close(_)) | Err(_)) | None => return SessionEnd::Lost(in_flight),
                    Some(Ok(_)) => {}
                },
            }
        }
    }

    fn on_reply(&mut self, text: &str, in_flight: &mut Option<InFlight>, run: &Run) {
        let reply = smart_proto::parse_server_message(text);
        let matches = |header: &Header, flight: &InFlight| {
            header.id == flight.id && header.serial == self.serial
        };
        match (reply, in_flight.take()) {
            (Ok(ServerMessage::Ok(header)), Some(flight)) if matches(&header, &flight) => {
                Counters::bump(&run.counters.acked);
                let micros = flight.sent_at.elapsed().as_micros() as u64;
                run.latency
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .record(micros);
                self.settle(&flight);
                self.store_refusals = 0;
            }
            (
                Ok(ServerMessage::Error {
                    header: Some(header),
                    reason,
                }),
                Some(flight),
            ) if matches(&header, &flight) && reason.starts_with(STORE_FAILED) => {
                // Nothing was stored, and the store recovers: the fields stay pending (a first message
                // stays unannounced) and go out again, with newer changes, after the backoff.
                Counters::bump(&run.counters.retried_not_stored);
                tracing::debug!("{}: ERROR {reason}; sending again", self.serial);
                let backoff = Duration::from_millis(200)
                    .saturating_mul(1 << self.store_refusals.min(4))
                    .min(Duration::from_secs(2));
                self.store_refusals += 1;
                let jitter = self.rng.random_range(0.75..1.25);
                self.retry_at = Some(Instant::now() + backoff.mul_f64(jitter));
            }
            (
                Ok(ServerMessage::Error {
                    header: Some(header),
                    reason,
                }),
                Some(flight),
            ) if matches(&header, &flight) => {
                // A permanent refusal: the server will refuse the same values again; count them and
                // move on.
                Counters::bump(&run.counters.errors);
                run.note_error(format!("{}: ERROR {reason}", self.serial));
                self.settle(&flight);
            }
            (reply, flight) => {
                Counters::bump(&run.counters.unexpected);
                run.note_error(format!(
                    "{}: unexpected reply {reply:?} to {:?}",
                    self.serial,
                    flight.as_ref().map(|f| &f.id)
                ));
                *in_flight = flight;
            }
        }
    }
}

/// The device's clock as the reference device writes it: `2024-03-17 14:59:13.047108`.
fn local_time() -> String {
    let text = common::now_text();
    text.trim_end_matches('Z').replacen('T', " ", 1)
}

/// Milliseconds since the Unix epoch, with microseconds as decimals (an `f64` holds them exactly for
/// centuries): the stamp of `--stamp-field`.
fn epoch_millis() -> f64 {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    micros as f64 / 1000.0
}

fn main() -> Result<()> {
    let args: Args = common::parse_args(&FLAGS_HELP);
    common::init_tracing();
    args.access.install()?;
    if args.devices == 0 {
        bail!("--devices must be at least 1");
    }
    if args.period.is_nan() || args.period <= 0.0 {
        bail!("--period must be positive");
    }
    if args.min_interval > args.max_interval {
        bail!("--min-interval must not exceed --max-interval");
    }
    if !(0.0..=1.0).contains(&args.stamp_fraction) {
        bail!("--stamp-fraction must be between 0 and 1");
    }
    if let Some(field) = &args.stamp_field
        && smart_proto::Record::FIELDS.contains(&field.as_str())
    {
        bail!("--stamp-field {field:?} is a known field: name an extra one (e.g. sent_ms)");
    }
    common::check_socket_budget(usize::try_from(args.devices)?)?;
    args.flags.runtime()?.block_on(simulate(args))
}

async fn simulate(args: Args) -> Result<()> {
    let url = common::endpoint(&args.url, "/update/")?;
    let duration = common::seconds(args.seconds, "--seconds")?;
    let ack_timeout = common::seconds(args.ack_timeout, "--ack-timeout")?;
    let drain = common::seconds(args.drain_seconds, "--drain-seconds")?;
    let start = Instant::now();
    let run = Arc::new(Run {
        server_url: url.clone(),
        url,
        first: args.first,
        values: args.values,
        period: args.period,
        min_interval: common::seconds(args.min_interval, "--min-interval")?,
        max_interval: common::seconds(args.max_interval, "--max-interval")?,
        ack_timeout,
        stamp: args.stamp_field.clone().map(|f| (f, args.stamp_fraction)),
        start,
        deadline: start + duration,
        drain_deadline: start + duration + drain,
        handshakes: Semaphore::new(args.connect_concurrency.max(1)),
        counters: Counters::default(),
        latency: Mutex::new(Histogram::default()),
        first_errors: FirstErrors::default(),
    });
    let server_cpu = args
        .flags
        .server_pid
        .map(common::CpuSample::start)
        .transpose()?;
    let own_cpu = common::CpuSample::start(std::process::id())?;
    let seed = args.seed.unwrap_or_else(|| rand::rng().random::<u64>());

    let mut devices = tokio::task::JoinSet::new();
    for i in 0..args.devices {
        let serial = Serial::new(&format!("{:04}", args.first_serial + i))?;
        devices.spawn(Device::new(serial, seed.wrapping_add(i)).run(Arc::clone(&run)));
    }

    let bar = common::progress_bar(duration.as_secs(), args.flags.no_progress());
    let counters = &run.counters;
    // Every device stops by the end of the drain window plus one ack timeout plus its last handshake
    // and close.
    let hard_stop = run.drain_deadline + ack_timeout + Duration::from_secs(25);
    let mut final_values = Map::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    while !devices.is_empty() && Instant::now() < hard_stop {
        tokio::select! {
            _ = tick.tick() => {
                bar.set_position(start.elapsed().as_secs().min(duration.as_secs()));
                bar.set_message(format!(
                    "{} connected, {} sent, {} acked, {} errors, {} reconnects",
                    Counters::get(&counters.connected_now), Counters::get(&counters.sent),
                    Counters::get(&counters.acked), Counters::get(&counters.errors), Counters::get(&counters.reconnects),
                ));
            }
            joined = devices.join_next() => match joined {
                Some(Ok((serial, values))) if args.final_values => {
                    final_values.insert(serial, values);
                }
                Some(Err(err)) => run.note_error(format!("device task failed: {err}")),
                Some(Ok(_)) | None => {}
            },
        }
    }
    let stragglers = devices.len();
    devices.abort_all();
    bar.finish_and_clear();
    let elapsed = start.elapsed().as_secs_f64();

    let latency = run
        .latency
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let sent = Counters::get(&counters.sent);
    let acked = Counters::get(&counters.acked);
    let errors = Counters::get(&counters.errors);
    let unexpected = Counters::get(&counters.unexpected);
    let lost = Counters::get(&counters.lost_in_flight);
    let retried = Counters::get(&counters.retried_not_stored);
    let mut summary = json!({
        "devices": args.devices,
        "seconds": common::round(elapsed, 2),
        "connected": Counters::get(&counters.ever_connected),
        "sent": sent,
        "acked": acked,
        "errors": errors,
        "unexpected": unexpected,
        // A message whose connection broke before its answer is lost, not unacked: its fields went out
        // again (or count in `unsent_fields`). Unacked are the messages still waiting at the end.
        "lost_in_flight": lost,
        "unacked": sent.saturating_sub(acked + errors + retried + lost),
        // Transient refusals of the store (ERROR `not stored: the store failed …`): sent again.
        "retried_not_stored": retried,
        "unsent_fields": Counters::get(&counters.unsent_fields),
        "reconnects": Counters::get(&counters.reconnects),
        "stamped": Counters::get(&counters.stamped),
        "connect_failures": Counters::get(&counters.connect_failures),
        "ack_timeouts": Counters::get(&counters.ack_timeouts),
        "stragglers": stragglers,
        "acks_per_s": common::round(acked as f64 / duration.as_secs_f64().max(1e-3), 1),
        "ack_p50_ms": common::round(latency.quantile_ms(0.50), 3),
        "ack_p99_ms": common::round(latency.quantile_ms(0.99), 3),
        "ack_max_ms": common::round(latency.max_ms(), 3),
        "sim_cpu_percent": common::round(own_cpu.percent()?, 1),
        "first_errors": run.first_errors.to_vec(),
    });
    if args.final_values {
        summary["final_values"] = Value::Object(final_values);
    }
    if let (Some(pid), Some(cpu)) = (args.flags.server_pid, server_cpu) {
        summary["server_cpu_percent"] = json!(common::round(cpu.percent()?, 1));
        summary["server_rss_kib"] = json!(common::rss_kib(pid)?);
    }
    if args.flags.json {
        println!("{summary}");
    } else {
        print_summary(&summary);
    }
    if Counters::get(&counters.ever_connected) == 0 {
        bail!("no device could connect to {}", run.url);
    }
    Ok(())
}

fn print_summary(s: &Value) {
    println!(
        "{} devices for {} s ({} connected at least once)",
        s["devices"], s["seconds"], s["connected"]
    );
    println!(
        "  messages    {} sent, {} acked ({} acks/s), {} errors, {} unexpected replies, {} unacked",
        s["sent"], s["acked"], s["acks_per_s"], s["errors"], s["unexpected"], s["unacked"]
    );
    println!(
        "  store       {} messages refused while the server's store failed (sent again)",
        s["retried_not_stored"]
    );
    println!(
        "  ack latency p50 {} ms, p99 {} ms, max {} ms",
        s["ack_p50_ms"], s["ack_p99_ms"], s["ack_max_ms"]
    );
    println!(
        "  connections {} reconnects, {} failed attempts, {} ack timeouts, {} messages lost in flight (sent again); {} changed fields never sent",
        s["reconnects"],
        s["connect_failures"],
        s["ack_timeouts"],
        s["lost_in_flight"],
        s["unsent_fields"]
    );
    if let Some(cpu) = s.get("server_cpu_percent") {
        println!(
            "  server      {cpu} % of one core on average (simulator {} %), RSS {} KiB at the end",
            s["sim_cpu_percent"], s["server_rss_kib"]
        );
    }
    for error in s["first_errors"].as_array().into_iter().flatten() {
        println!("  error: {}", error.as_str().unwrap_or_default());
    }
}
