//! A dashboard for the terminal: connects to a SMART-OS server's `/client/` endpoint like the web page
//! does, prints the fleet (the INIT snapshot) as a table, then one line per UPDT as devices report.
//!
//! FILT clauses given as arguments are sent after the welcome; the table is then the server's answer
//! and the lines follow that view (a fresh table whenever a device enters or leaves it).
//!
//! ```text
//! cargo run --example watch -- --url ws://127.0.0.1:8000 'filter:battery:>:500' 'sort:battery:>:123'
//! ```
//!
//! It runs until interrupted, or for `--seconds`, or until `--count` UPDTs have been printed.
//!
//! With `--latency-field FIELD` it prints nothing per update: it measures the latency from device to
//! dashboard from the send time that `solmate_sim --stamp-field FIELD` puts into some UPDTs (milliseconds
//! since the Unix epoch; same machine, same clock), apart for the devices of `--local-serials` (connected
//! to this dashboard's instance) and the others (acked on other instances, through Redis), and prints one
//! line of JSON at the end: percentiles of both, and the worst latency of each second of the window
//! (`worst_ms_by_second`, by arrival: a tail made of a few stalls shows as a few bad seconds). UPDTs
//! holding a device's full record (a dashboard that fell behind is conflated, PROTOCOL.md §7) are
//! counted but not timed: their stamp is that of the device's last stamped message, which may be much
//! older than the change that made the UPDT.
//!
//! ```text
//! cargo run --release --example watch -- --url ws://127.0.0.1:8001 --seconds 60 \
//!     --latency-field sent_ms --local-serials 1-16667
//! ```

mod common;

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use smart_proto::{Query, Record, ServerMessage};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Watch a SMART-OS fleet from the terminal.
#[derive(Debug, Parser)]
#[command(version, long_about = None)]
struct Args {
    /// Server URL; the watcher connects to its `/client/` endpoint.
    #[arg(long, default_value = "ws://127.0.0.1:8000")]
    url: String,
    /// FILT clauses (`filter:FIELD:OP:VALUE`, `sort:FIELD:DIR:KIND`), e.g. `filter:country:=:AT`.
    clauses: Vec<String>,
    /// Stop after printing this many UPDTs.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    seconds: Option<f64>,
    /// Columns of the tables, comma-separated (default: every field the records have).
    #[arg(long, value_delimiter = ',')]
    columns: Vec<String>,
    /// At most this many rows per table.
    #[arg(long, default_value_t = 100)]
    max_rows: usize,
    /// Latency mode: take the send time from this numeric field of each UPDT (`solmate_sim
    /// --stamp-field`), print no updates and one JSON summary at the end.
    #[arg(long)]
    latency_field: Option<String>,
    /// In latency mode: the serials (`FIRST-LAST`, numeric, inclusive) of the devices connected to this
    /// dashboard's instance; the others' latency is reported as `remote`.
    #[arg(long, value_parser = parse_range)]
    local_serials: Option<(u64, u64)>,
    /// In latency mode: count nothing during the first seconds (the snapshot, and whatever it delayed).
    #[arg(long, default_value_t = 0.0)]
    latency_warmup: f64,
    #[command(flatten)]
    access: common::AccessFlags,
}

fn parse_range(text: &str) -> Result<(u64, u64)> {
    let (first, last) = text
        .split_once('-')
        .context("expected FIRST-LAST, e.g. 1-16667")?;
    let (first, last) = (
        first.trim().parse().context("FIRST is not a number")?,
        last.trim().parse().context("LAST is not a number")?,
    );
    if first > last {
        bail!("FIRST must not exceed LAST");
    }
    Ok((first, last))
}

/// What latency mode counts: the device→dashboard latency of stamped UPDTs, for devices of this
/// instance (`local`) and of the others (`remote`).
#[derive(Debug, Default)]
struct Latency {
    local: common::Histogram,
    remote: common::Histogram,
    /// UPDTs received, stamped or not.
    updates: u64,
    /// Stamps later than this process's clock (they count as 0 ms).
    negative: u64,
    /// INITs after the first (resyncs).
    resyncs: u64,
    /// UPDTs holding a device's full record (conflated, or a device new to the view): not timed,
    /// since their stamp is that of the device's last stamped message, possibly long before.
    full_records: u64,
    /// The worst latency (µs) of each second of the measured period, by when the UPDT arrived:
    /// (local, remote). Shows whether a tail is spread out or a few stalls.
    worst_by_second: Vec<(u64, u64)>,
}

impl Latency {
    fn record(
        &mut self,
        field: &str,
        serial: &str,
        body: &Map<String, Value>,
        local: Option<(u64, u64)>,
        second: usize,
    ) {
        self.updates += 1;
        // A full record carries the server-set `manufacturing_date`; a change never does.
        if body.contains_key("manufacturing_date") {
            self.full_records += 1;
            return;
        }
        let Some(sent) = body.get(field).and_then(Value::as_f64) else {
            return;
        };
        let micros = epoch_micros() - sent * 1000.0;
        if micros < 0.0 {
            self.negative += 1;
        }
        let is_local = local.is_some_and(|(first, last)| {
            serial
                .parse::<u64>()
                .is_ok_and(|n| (first..=last).contains(&n))
        });
        let micros = micros.max(0.0) as u64;
        if self.worst_by_second.len() <= second {
            self.worst_by_second.resize(second + 1, (0, 0));
        }
        let worst = &mut self.worst_by_second[second];
        let (histogram, worst) = if is_local {
            (&mut self.local, &mut worst.0)
        } else {
            (&mut self.remote, &mut worst.1)
        };
        histogram.record(micros);
        *worst = (*worst).max(micros);
    }

    fn summary(&self, seconds: f64) -> Value {
        let part = |h: &common::Histogram| {
            json!({
                "count": h.len(),
                "p50_ms": common::round(h.quantile_ms(0.50), 3),
                "p99_ms": common::round(h.quantile_ms(0.99), 3),
                "p999_ms": common::round(h.quantile_ms(0.999), 3),
                "max_ms": common::round(h.max_ms(), 3),
            })
        };
        json!({
            "seconds": common::round(seconds, 2),
            "updates": self.updates,
            "updates_per_s": common::round(self.updates as f64 / seconds.max(1e-3), 1),
            "remote": part(&self.remote),
            "local": part(&self.local),
            "negative": self.negative,
            "resyncs": self.resyncs,
            "full_records": self.full_records,
            "worst_ms_by_second": {
                "local": self.worst_by_second.iter().map(|w| w.0 / 1000).collect::<Vec<_>>(),
                "remote": self.worst_by_second.iter().map(|w| w.1 / 1000).collect::<Vec<_>>(),
            },
        })
    }
}

/// Microseconds since the Unix epoch, as `solmate_sim` stamps them (in milliseconds).
fn epoch_micros() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_micros() as f64)
}

/// The largest frame and message this watcher reads (a snapshot of a large fleet).
const MAX_SNAPSHOT: usize = 512 << 20;

/// The known fields in the order of PROTOCOL.md §6; extra fields follow in key order.
const KNOWN: [&str; 16] = Record::FIELDS;

fn main() -> Result<()> {
    let args = Args::parse();
    common::init_tracing();
    args.access.install()?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(watch(args))
}

async fn watch(args: Args) -> Result<()> {
    if !args.clauses.is_empty() {
        // Refuse a bad query here, with the parser's reason, rather than after connecting.
        Query::parse(&args.clauses).context("bad FILT clause")?;
    }
    let url = common::endpoint(&args.url, "/client/")?;
    let deadline = match args.seconds {
        Some(s) => Some(Instant::now() + common::seconds(s, "--seconds")?),
        None => None,
    };
    // Snapshots of a large fleet are big frames: keep tungstenite's default buffer here, and allow
    // frames beyond its 16 MiB default (the INIT of 50,000 devices is about 25 MB).
    let config = WebSocketConfig::default()
        .max_frame_size(Some(MAX_SNAPSHOT))
        .max_message_size(Some(MAX_SNAPSHOT));
    let mut ws = common::connect(&url, config, Duration::from_secs(10)).await?;

    let mut filtered_view_pending = !args.clauses.is_empty();
    let mut snapshot_seen = false;
    if filtered_view_pending {
        let filt = json!({"type": "FILT", "message": args.clauses});
        ws.send(Message::text(filt.to_string()))
            .await
            .context("sending the FILT")?;
    }

    let mut printed = 0u64;
    let mut latency = args.latency_field.as_ref().map(|_| Latency::default());
    let measuring_from = Instant::now() + common::seconds(args.latency_warmup, "--latency-warmup")?;
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    loop {
        if args.count.is_some_and(|count| printed >= count) {
            break;
        }
        let message = tokio::select! {
            () = sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => break,
            _ = &mut interrupt => break,
            message = ws.next() => message,
        };
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                eprintln!("server closed the connection: {frame:?}");
                break;
            }
            Some(Ok(_)) => continue,
            Some(Err(err)) => return Err(err).context("reading from the server"),
            None => {
                eprintln!("connection closed");
                break;
            }
        };
        if let Some(latency) = &mut latency
            && text.get(..32).is_some_and(|head| head.contains("\"INIT\""))
        {
            // A snapshot (of the whole fleet: tens of MB) says nothing about latency: counted, not
            // parsed, so that this dashboard keeps up with the changes that follow it.
            latency.resyncs += u64::from(snapshot_seen);
            snapshot_seen = true;
            filtered_view_pending = false;
            continue;
        }
        match smart_proto::parse_server_message(&text) {
            Ok(ServerMessage::Info(info)) => eprintln!("INFO {info}"),
            Ok(ServerMessage::Init(records)) => {
                if filtered_view_pending && !snapshot_seen {
                    // The snapshot of the whole fleet arrives before the answer to the FILT.
                    snapshot_seen = true;
                    eprintln!(
                        "fleet: {} devices; waiting for the filtered view",
                        records.len()
                    );
                    continue;
                }
                if let Some(latency) = &mut latency {
                    latency.resyncs += u64::from(snapshot_seen);
                    snapshot_seen = true;
                    filtered_view_pending = false;
                    continue;
                }
                filtered_view_pending = false;
                snapshot_seen = true;
                print_table(&records, &args.columns, args.max_rows);
            }
            Ok(ServerMessage::Updt { header, body }) => {
                if filtered_view_pending {
                    continue;
                }
                if let (Some(latency), Some(field)) = (&mut latency, &args.latency_field) {
                    let now = Instant::now();
                    if now < measuring_from {
                        continue;
                    }
                    let second = now.duration_since(measuring_from).as_secs() as usize;
                    latency.record(
                        field,
                        header.serial.as_str(),
                        &body,
                        args.local_serials,
                        second,
                    );
                    continue;
                }
                println!("{}  UPDT {header}  {}", clock(), fields_line(&body));
                printed += 1;
            }
            Ok(ServerMessage::Error { header, reason }) => {
                let what = header.map_or_else(|| "ERROR".to_owned(), |h| format!("{h}:ERROR"));
                if filtered_view_pending {
                    bail!("the server refused the query: {what}: {reason}");
                }
                eprintln!("INFO {what}: {reason}");
            }
            Ok(ServerMessage::Ok(header)) => eprintln!("INFO {header}:OK"),
            Err(err) => eprintln!("unreadable frame ({err}): {text}"),
        }
    }
    let _ = timeout(Duration::from_secs(2), ws.close(None)).await;
    if let Some(latency) = latency {
        let measured = Instant::now().saturating_duration_since(measuring_from);
        println!("{}", latency.summary(measured.as_secs_f64()));
        return Ok(());
    }
    eprintln!("{printed} updates");
    Ok(())
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_hours(24 * 365)
}

/// The current UTC time of day with milliseconds.
fn clock() -> String {
    let text = common::now_text();
    text.get(11..23).unwrap_or(&text).to_owned()
}

fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn fields_line(body: &Map<String, Value>) -> String {
    let mut keys: Vec<&String> = body.keys().collect();
    keys.sort_by_key(|key| {
        (
            KNOWN.iter().position(|k| k == key).unwrap_or(KNOWN.len()),
            key.as_str(),
        )
    });
    keys.iter()
        .map(|key| format!("{key}={}", cell(body.get(*key))))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The columns to show: those asked for, or the known fields any record has, then the extra fields.
fn columns_of(maps: &[Map<String, Value>], asked: &[String]) -> Vec<String> {
    if !asked.is_empty() {
        return asked.to_vec();
    }
    let mut columns: Vec<String> = KNOWN
        .iter()
        .filter(|k| maps.iter().any(|m| m.contains_key(**k)))
        .map(|k| (*k).to_owned())
        .collect();
    let mut extras: Vec<String> = maps
        .iter()
        .flat_map(|m| m.keys())
        .filter(|k| !KNOWN.contains(&k.as_str()))
        .cloned()
        .collect();
    extras.sort();
    extras.dedup();
    columns.extend(extras);
    columns
}

fn print_table(records: &[Record], asked: &[String], max_rows: usize) {
    let maps: Vec<Map<String, Value>> = records.iter().map(Record::to_map).collect();
    let columns = columns_of(&maps, asked);
    let shown = &maps[..maps.len().min(max_rows)];
    let rows: Vec<Vec<String>> = shown
        .iter()
        .map(|m| columns.iter().map(|c| cell(m.get(c))).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([c.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join(" | ")
            .trim_end()
            .to_owned()
    };
    println!("INIT: {} devices", records.len());
    println!("{}", line(&columns));
    println!(
        "{}",
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-+-")
    );
    for row in &rows {
        println!("{}", line(row));
    }
    if maps.len() > shown.len() {
        println!("… {} more", maps.len() - shown.len());
    }
}
