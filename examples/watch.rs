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
    #[command(flatten)]
    access: common::AccessFlags,
}

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
    // Snapshots of a large fleet are big frames: keep tungstenite's default buffer here.
    let mut ws = common::connect(&url, WebSocketConfig::default(), Duration::from_secs(10)).await?;

    let mut filtered_view_pending = !args.clauses.is_empty();
    let mut snapshot_seen = false;
    if filtered_view_pending {
        let filt = json!({"type": "FILT", "message": args.clauses});
        ws.send(Message::text(filt.to_string()))
            .await
            .context("sending the FILT")?;
    }

    let mut printed = 0u64;
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
                filtered_view_pending = false;
                snapshot_seen = true;
                print_table(&records, &args.columns, args.max_rows);
            }
            Ok(ServerMessage::Updt { header, body }) => {
                if filtered_view_pending {
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
