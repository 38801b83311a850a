//! The idle measurement of loadgen and `mqtt_load` (`--idle N`): open N connections that send nothing,
//! and report the server's (or broker's) resident memory per connection and the CPU the connects cost.
//!
//! The report's fields are in alphabetical order, which is the order of the JSON keys. The text prints
//! each number as the JSON does (`null` for a figure that is missing).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Result, ensure};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep};

use super::report::{print_errors, print_json};
use super::run::{CONNECT_CONCURRENCY, Shared, join_within, wait_idle_open};
use super::{CLOCK_TICKS_PER_S, Flags, cpu_ticks, progress_bar, round, rss_kib};

/// What the task of one idle connection is given.
pub struct IdleSlot {
    /// Which connection, from 0.
    pub index: usize,
    /// The counters the task reports its connection to ([`Shared::opened`]).
    pub shared: Arc<Shared>,
    /// The permits of the handshakes in progress, one to hold while connecting.
    pub handshakes: Arc<Semaphore>,
    /// Becomes true when the task is to close its connection and end.
    pub release: watch::Receiver<bool>,
}

/// Open `connections` idle connections, each held by the task `hold` returns for its slot until
/// released, and report the memory and CPU of the server or broker at `url` (`--server-pid`).
pub async fn measure<F, Fut>(
    target: &'static str,
    url: String,
    connections: usize,
    flags: &Flags,
    mut hold: F,
) -> Result<IdleReport>
where
    F: FnMut(IdleSlot) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    ensure!(connections > 0, "--idle must be at least 1");
    super::check_socket_budget(connections)?;
    let pid = flags.server_pid;
    let rss_before = pid.map(rss_kib).transpose()?;
    let cpu_before = pid.map(cpu_ticks).transpose()?;
    let started = Instant::now();
    let shared = Arc::new(Shared::default());
    let handshakes = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let (release_tx, release_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for index in 0..connections {
        tasks.spawn(hold(IdleSlot {
            index,
            shared: Arc::clone(&shared),
            handshakes: Arc::clone(&handshakes),
            release: release_rx.clone(),
        }));
    }
    let bar = progress_bar(connections as u64, flags.no_progress());
    wait_idle_open(&shared, connections, &bar, Duration::from_mins(2)).await;
    // Every connection has its welcome or CONNACK (or failed): the time and CPU it took to get there.
    let connect_seconds = started.elapsed().as_secs_f64();
    let cpu_after = pid.map(cpu_ticks).transpose()?;
    bar.finish_and_clear();
    // Let the server finish whatever each accept started before reading its memory.
    sleep(Duration::from_secs(1)).await;
    let opened = shared.ready.load(Ordering::Relaxed);
    let rss_after = pid.map(rss_kib).transpose()?;
    release_tx.send_replace(true);
    join_within(&mut tasks, Duration::from_secs(30), |()| {}).await;
    Ok(IdleReport::new(
        target,
        url,
        &shared,
        IdleMeasured {
            opened,
            connect_seconds,
            cpu_ticks: (cpu_before, cpu_after),
            rss_kib: (rss_before, rss_after),
        },
    ))
}

/// The server's (or broker's) memory per idle connection (`--idle`).
#[derive(Debug, Serialize)]
pub struct IdleReport {
    /// Seconds from the first connect to the last welcome or CONNACK (or failure).
    pub connect_seconds: f64,
    pub errors: u64,
    pub first_errors: Vec<String>,
    /// Connections that opened.
    pub idle_connections: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_per_connection_kib: Option<f64>,
    /// Server CPU (user + system) spent while the connections opened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_connect_cpu_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_after_kib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_before_kib: Option<u64>,
    pub target: &'static str,
    pub url: String,
}

/// What an idle measurement saw: the connections and the server's `/proc` before and after they opened.
#[derive(Debug, Clone, Copy, Default)]
struct IdleMeasured {
    /// Connections that opened.
    opened: usize,
    /// Seconds from the first connect until all were open (or failed).
    connect_seconds: f64,
    /// CPU ticks before the first connect and once all were open.
    cpu_ticks: (Option<u64>, Option<u64>),
    /// Resident memory before the first connect and once all were open, in KiB.
    rss_kib: (Option<u64>, Option<u64>),
}

impl IdleReport {
    /// The report of `measured`, with the errors counted in `shared`.
    fn new(
        target: &'static str,
        url: String,
        shared: &Shared,
        measured: IdleMeasured,
    ) -> IdleReport {
        let opened = measured.opened;
        let (cpu_before, cpu_after) = measured.cpu_ticks;
        let mut report = IdleReport {
            connect_seconds: round(measured.connect_seconds, 3),
            errors: shared.errors.load(Ordering::Relaxed),
            first_errors: shared.first_errors.to_vec(),
            idle_connections: opened,
            rss_per_connection_kib: None,
            server_connect_cpu_seconds: cpu_before
                .zip(cpu_after)
                .map(|(b, a)| round(a.saturating_sub(b) as f64 / CLOCK_TICKS_PER_S, 2)),
            server_rss_after_kib: None,
            server_rss_before_kib: None,
            target,
            url,
        };
        if let (Some(before), Some(after)) = measured.rss_kib {
            report.server_rss_before_kib = Some(before);
            report.server_rss_after_kib = Some(after);
            let per_connection = (after as f64 - before as f64) / opened.max(1) as f64;
            report.rss_per_connection_kib = Some(round(per_connection, 2));
        }
        report
    }

    /// Print the report: one line of JSON, or text that calls the connections `{kind} connections`
    /// and the measured process `peer` (`server`, `broker`).
    pub fn print_report(&self, json: bool, kind: &str, peer: &str) -> Result<()> {
        if json {
            return print_json(self);
        }
        println!(
            "{} idle {kind} connections, {} errors, all open after {:.3} s",
            self.idle_connections, self.errors, self.connect_seconds
        );
        if let Some(cpu) = self.server_connect_cpu_seconds {
            println!("  {peer} CPU while connecting {cpu} s");
        }
        if let Some(per) = self.rss_per_connection_kib {
            println!(
                "  {peer} RSS {} KiB → {} KiB: {} KiB per connection",
                Value::from(self.server_rss_before_kib),
                Value::from(self.server_rss_after_kib),
                Value::from(per)
            );
        }
        print_errors(&self.first_errors);
        Ok(())
    }
}
