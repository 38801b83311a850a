//! The history of every device's numeric fields (issue 12): raw samples, 5-minute and hourly
//! rollups, in sled. See docs/server.md, "History".

pub(crate) mod api;
pub(crate) mod codec;
pub(crate) mod energy;
pub(crate) mod fill;
pub(crate) mod raw;
pub(crate) mod rollup;
pub(crate) mod samples;

use std::time::Instant;

use tracing::{error, info};

use crate::metrics::Metrics;
use raw::{HistoryError, Raw};
use rollup::{Rollups, Tier};

/// What the store keeps of the past (`--history`, `--history-*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HistoryOptions {
    /// Keep it at all.
    pub enabled: bool,
    /// How long each tier keeps its data, in ms: raw samples, 5-minute and hourly buckets.
    pub raw_ms: i64,
    pub five_minutes_ms: i64,
    pub hour_ms: i64,
    /// Power samples further apart than this are not bridged when integrating energy.
    pub energy_gap_ms: i64,
}

impl HistoryOptions {
    /// No history.
    #[cfg(test)]
    pub(crate) const OFF: HistoryOptions = HistoryOptions {
        enabled: false,
        raw_ms: 0,
        five_minutes_ms: 0,
        hour_ms: 0,
        energy_gap_ms: 0,
    };
}

/// The history's trees.
#[derive(Debug, Clone)]
pub(crate) struct History {
    pub raw: Raw,
    pub rollups: Rollups,
    pub options: HistoryOptions,
}

impl History {
    /// The trees in `db`, unless the history is off.
    pub(crate) fn open(
        db: &sled::Db,
        options: HistoryOptions,
    ) -> Result<Option<History>, HistoryError> {
        if !options.enabled {
            return Ok(None);
        }
        Ok(Some(History {
            raw: Raw::open(db)?,
            rollups: Rollups::open(db)?,
            options,
        }))
    }

    /// Roll up the hours that are over, then delete what each tier keeps no longer (the checkpoint
    /// thread, once a minute; failures are logged, counted and tried again at the next run).
    pub(crate) fn maintain(&self, now_ms: i64, metrics: &Metrics) {
        let started = Instant::now();
        match self
            .rollups
            .catch_up(&self.raw, now_ms, self.options.energy_gap_ms)
        {
            Ok(0) => {}
            Ok(hours) => info!(hours, elapsed = ?started.elapsed(), "history rolled up"),
            Err(e) => error!(%e, "history rollup failed; tried again in a minute"),
        }
        let cut = |keep: i64| now_ms.saturating_sub(keep);
        let removed = self.raw.retain(cut(self.options.raw_ms)).and_then(|raw| {
            let five = self
                .rollups
                .retain(Tier::FiveMinutes, cut(self.options.five_minutes_ms))?;
            let hour = self.rollups.retain(Tier::Hour, cut(self.options.hour_ms))?;
            Ok(raw + five + hour)
        });
        match removed {
            Ok(removed) => {
                Metrics::inc(&metrics.history_retention_runs);
                metrics
                    .history_parts_removed
                    .fetch_add(removed as u64, std::sync::atomic::Ordering::Relaxed);
                let (bytes, parts) = self.raw.size();
                let relaxed = std::sync::atomic::Ordering::Relaxed;
                metrics.history_raw_bytes.store(bytes, relaxed);
                metrics.history_raw_parts.store(parts, relaxed);
                if removed > 0 {
                    info!(removed, elapsed = ?started.elapsed(), "history retention");
                }
            }
            Err(e) => error!(%e, "history retention failed; tried again in a minute"),
        }
    }
}

/// A history in a temporary directory with the default retentions (48 h, 30 days, a year, gaps of
/// 10 minutes), for tests.
#[cfg(test)]
pub(crate) fn scratch() -> (tempfile::TempDir, History) {
    const DAY_MS: i64 = 86_400_000;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let db = sled::Config::new()
        .path(dir.path())
        .open()
        .unwrap_or_else(|e| panic!("{e}"));
    let options = HistoryOptions {
        enabled: true,
        raw_ms: 2 * DAY_MS,
        five_minutes_ms: 30 * DAY_MS,
        hour_ms: 365 * DAY_MS,
        energy_gap_ms: 600_000,
    };
    let history = History::open(&db, options)
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("enabled"));
    (dir, history)
}
