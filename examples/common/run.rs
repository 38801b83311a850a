//! The frame of a measured run that loadgen and `mqtt_load` share: its phases, the counters its tasks
//! share, what a device measures, waiting for the connections, the progress bar's ticker and joining
//! the tasks within a limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Result, ensure};
use indicatif::ProgressBar;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, sleep, timeout};

use super::{FirstErrors, Histogram, monotonic_micros};

/// Handshakes in progress at once, so a thousand clients do not overflow the server's accept backlog.
pub const CONNECT_CONCURRENCY: usize = 64;

/// The phases of a run, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Dashboards (reading, subscribed or stalled) and devices connect.
    Connecting,
    /// Devices send; nothing is counted yet.
    Warmup,
    /// Devices send; acks, dashboard messages and latencies are counted.
    Measure,
    /// Devices stop sending and wait for their last acks.
    Stop,
    /// Dashboards stop reading.
    Done,
}

impl Phase {
    const ALL: [Phase; 5] = [
        Phase::Connecting,
        Phase::Warmup,
        Phase::Measure,
        Phase::Stop,
        Phase::Done,
    ];

    /// The phase stored as `phase as u8`.
    fn from_u8(stored: u8) -> Phase {
        Phase::ALL
            .get(usize::from(stored))
            .copied()
            .unwrap_or(Phase::Done)
    }
}

/// Counters shared by the tasks of one run.
#[derive(Debug, Default)]
pub struct Shared {
    /// The current [`Phase`], for the tasks' hot paths (the watch channel wakes the waiting ones).
    phase: AtomicU8,
    /// Acks over the whole run, for the progress bar.
    pub acks_live: AtomicU64,
    pub ready: AtomicUsize,
    pub failed: AtomicUsize,
    pub errors: AtomicU64,
    pub first_errors: FirstErrors,
}

impl Shared {
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Relaxed))
    }

    /// Enter `phase`: for the hot paths, and for the tasks waiting on `phases`.
    pub fn set_phase(&self, phases: &watch::Sender<Phase>, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
        phases.send_replace(phase);
    }

    pub fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.first_errors.note(what);
    }

    /// Count a connection that opened as ready, and one that did not as failed, with its error
    /// (`who: error`); the connection, if it opened.
    pub fn opened<T>(&self, who: impl std::fmt::Display, opened: Result<T>) -> Option<T> {
        match opened {
            Ok(connection) => {
                self.ready.fetch_add(1, Ordering::Relaxed);
                Some(connection)
            }
            Err(err) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.error(format!("{who}: {err:#}"));
                None
            }
        }
    }

    /// Connections that opened and that failed so far.
    fn settled(&self) -> (usize, usize) {
        (
            self.ready.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// What one device measured (or all of them, joined).
#[derive(Debug, Default)]
pub struct DeviceResult {
    /// Acks in the measured period.
    pub acks: u64,
    /// Their latency, from the send to the ack.
    pub latency: Histogram,
}

impl DeviceResult {
    /// Count the ack of a message sent at `sent_us` ([`monotonic_micros`]): for the progress bar, and
    /// with its latency if the run is in [`Phase::Measure`].
    pub fn ack(&mut self, shared: &Shared, sent_us: u64) {
        shared.acks_live.fetch_add(1, Ordering::Relaxed);
        if shared.phase() == Phase::Measure {
            self.acks += 1;
            self.latency
                .record(monotonic_micros().saturating_sub(sent_us));
        }
    }
}

/// Join the devices that end within `limit`: what they measured, together, and how many did not end.
pub async fn join_devices(
    devices: &mut JoinSet<DeviceResult>,
    limit: Duration,
) -> (DeviceResult, usize) {
    let mut all = DeviceResult::default();
    let stuck = join_within(devices, limit, |result| {
        all.acks += result.acks;
        all.latency.merge(&result.latency);
    })
    .await;
    (all, stuck)
}

/// Wait until `expected` tasks are ready or failed, at most `limit`.
pub async fn wait_ready(shared: &Shared, expected: usize, limit: Duration) -> Result<()> {
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

/// Wait until `connections` idle connections are open or failed, at most `limit`, showing those open
/// on `bar`.
pub async fn wait_idle_open(
    shared: &Shared,
    connections: usize,
    bar: &ProgressBar,
    limit: Duration,
) {
    let deadline = Instant::now() + limit;
    loop {
        let (ready, failed) = shared.settled();
        bar.set_position(ready as u64);
        if ready + failed >= connections || Instant::now() >= deadline {
            break;
        }
        sleep(Duration::from_millis(10)).await;
    }
}

/// Show the seconds elapsed from now and the rate of acks on `bar`, twice a second, until aborted.
pub fn tick_progress(shared: &Arc<Shared>, bar: &ProgressBar) -> JoinHandle<()> {
    let started = Instant::now();
    let shared = Arc::clone(shared);
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
}

/// Join the tasks of `set` that end within `limit`, handing `each` what they return; abort the others
/// and say how many they were.
pub async fn join_within<T: 'static>(
    set: &mut JoinSet<T>,
    limit: Duration,
    mut each: impl FnMut(T),
) -> usize {
    let deadline = Instant::now() + limit;
    while let Ok(Some(joined)) = timeout(
        deadline.saturating_duration_since(Instant::now()),
        set.join_next(),
    )
    .await
    {
        if let Ok(result) = joined {
            each(result);
        }
    }
    let unfinished = set.len();
    set.abort_all();
    unfinished
}
