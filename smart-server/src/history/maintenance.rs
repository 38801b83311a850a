//! The history's own thread: rolls up the hours that are over and deletes what the tiers keep no
//! longer, once a minute, beside the checkpoints — a long rollup (a restart after days away, a big
//! fleet's hour) never delays a checkpoint, so the write-ahead log does not grow while it runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use tracing::error;

use super::History;
use super::samples::millis;
use crate::metrics::Metrics;

/// How often the history is maintained.
const INTERVAL: Duration = Duration::from_mins(1);
/// The thread's nice value (Linux schedules threads by their own: the rest of the server keeps 0).
#[cfg(unix)]
const NICE: i32 = 10;

/// The running thread; [`Maintenance::finish`] stops it.
#[derive(Debug)]
pub(crate) struct Maintenance {
    stopping: Arc<AtomicBool>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Maintenance {
    /// Maintain `history` now and then every minute. Hours are rolled up only once no change of
    /// theirs waits for a checkpoint (see [`super::held::Held`]): an hour rolled up without them
    /// would miss them for good.
    pub(crate) fn start(history: History, metrics: Arc<Metrics>) -> Self {
        let (stop, stopped) = mpsc::channel::<()>();
        let stopping = Arc::new(AtomicBool::new(false));
        let halt = Arc::clone(&stopping);
        let thread = thread::Builder::new()
            .name("smart-history".to_owned())
            .spawn(move || {
                // Behind the sessions, the writer and the checkpoints when the cores are busy: a
                // retention run or a big rollup takes longer rather than slowing acks.
                #[cfg(unix)]
                if let Err(e) = rustix::process::nice(NICE) {
                    tracing::debug!(%e, "cannot lower the history thread's priority");
                }
                loop {
                    let now = millis(smart_proto::Timestamp::from(std::time::SystemTime::now()));
                    // As if it were the time of the oldest change still waiting.
                    let oldest = history.raw.held().oldest().map(|(_, ts_ms)| ts_ms);
                    history.maintain(oldest.map_or(now, |ts| ts.min(now)), &metrics, &halt);
                    match stopped.recv_timeout(INTERVAL) {
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
            });
        match thread {
            Ok(thread) => Maintenance {
                stopping,
                stop: Some(stop),
                thread: Some(thread),
            },
            Err(e) => {
                // The raw tier still fills; nothing is rolled up or deleted until a restart.
                error!(%e, "cannot start the history's thread");
                Maintenance {
                    stopping,
                    stop: None,
                    thread: None,
                }
            }
        }
    }

    /// Stop the thread (a rollup stops after the device it is at; the hour is rolled up again,
    /// whole, at the next start).
    pub(crate) fn finish(mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        drop(self.stop.take());
        if let Some(Err(_)) = self.thread.take().map(thread::JoinHandle::join) {
            error!("the history's thread panicked");
        }
    }
}
