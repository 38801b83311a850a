//! The history of every device's numeric fields (issue 12): raw samples, 5-minute and hourly
//! rollups, in sled. See docs/server.md, "History".

pub(crate) mod api;
pub(crate) mod codec;
pub(crate) mod energy;
pub(crate) mod fill;
pub(crate) mod held;
pub(crate) mod maintenance;
pub(crate) mod raw;
pub(crate) mod remote;
pub(crate) mod rollup;
pub(crate) mod samples;
pub(crate) mod size;

use std::sync::atomic::AtomicBool;
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
    /// Other instances' changes waiting for the writer (`--redis`).
    pub remote: std::sync::Arc<remote::Remote>,
    meta: sled::Tree,
}

/// Where the tiers' sizes are saved (see [`size`]).
const SIZES_KEY: &str = "history_sizes";

impl History {
    /// The trees in `db`, unless the history is off.
    pub(crate) fn open(
        db: &sled::Db,
        options: HistoryOptions,
    ) -> Result<Option<History>, HistoryError> {
        if !options.enabled {
            return Ok(None);
        }
        let history = History {
            raw: Raw::open(db)?,
            rollups: Rollups::open(db)?,
            options,
            remote: std::sync::Arc::default(),
            meta: db.open_tree("meta")?,
        };
        let saved = history
            .meta
            .get(SIZES_KEY)?
            .and_then(|v| size::decode::<3>(&v));
        if saved.is_none() {
            info!("history: counting the tiers' sizes (once: later starts load the counts)");
        }
        history.raw.count_from(saved.map(|[raw, _, _]| raw))?;
        history
            .rollups
            .count_from(saved.map(|[_, five, hour]| [five, hour]))?;
        Ok(Some(history))
    }

    /// Each tier's size: raw, 5-minute, hourly.
    pub(crate) fn sizes(&self) -> [(u64, u64); 3] {
        [
            self.raw.size(),
            self.rollups.tier_size(Tier::FiveMinutes),
            self.rollups.tier_size(Tier::Hour),
        ]
    }

    /// Note the tiers' sizes in the store (before the checkpoint's flush, which makes them durable
    /// with the writes they count).
    pub(crate) fn save_sizes(&self) -> Result<(), HistoryError> {
        self.meta.insert(SIZES_KEY, size::encode(&self.sizes()))?;
        Ok(())
    }

    /// Show the tiers' sizes in /metrics.
    pub(crate) fn report(&self, metrics: &Metrics) {
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        for (i, (bytes, keys)) in self.sizes().into_iter().enumerate() {
            metrics.history_bytes[i].store(bytes, relaxed);
            metrics.history_keys[i].store(keys, relaxed);
        }
        metrics
            .history_held
            .store(self.raw.held().len() as u64, relaxed);
    }

    /// Roll up the hours that are over, then delete what each tier keeps no longer, flush, and show
    /// the tiers' sizes in /metrics (the history's thread, once a minute; failures are logged,
    /// counted and tried again at the next run).
    /// Stops early once `stop` is set.
    pub(crate) fn maintain(&self, now_ms: i64, metrics: &Metrics, stop: &AtomicBool) {
        let started = Instant::now();
        let mut wrote = false;
        match self
            .rollups
            .catch_up(&self.raw, now_ms, self.options.energy_gap_ms, stop)
        {
            Ok(0) => {}
            Ok(hours) => {
                wrote = true;
                info!(hours, elapsed = ?started.elapsed(), "history rolled up");
            }
            Err(e) => error!(%e, "history rollup failed; tried again in a minute"),
        }
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let cut = |keep: i64| now_ms.saturating_sub(keep);
        let removed = self.raw.retain(cut(self.options.raw_ms)).and_then(|raw| {
            let five = self
                .rollups
                .retain(Tier::FiveMinutes, cut(self.options.five_minutes_ms))?;
            let hour = self.rollups.retain(Tier::Hour, cut(self.options.hour_ms))?;
            Ok(raw + five + hour)
        });
        let retained = match removed {
            Ok(removed) => {
                metrics
                    .history_parts_removed
                    .fetch_add(removed as u64, std::sync::atomic::Ordering::Relaxed);
                if removed > 0 {
                    wrote = true;
                    info!(removed, elapsed = ?started.elapsed(), "history retention");
                }
                true
            }
            Err(e) => {
                error!(%e, "history retention failed; tried again in a minute");
                false
            }
        };
        // Durable now rather than with the next checkpoint (there may be none for a while); the
        // counts with what they count.
        if wrote && let Err(e) = self.save_sizes().and_then(|()| Ok(self.meta.flush()?)) {
            error!(%e, "history flush failed; the next checkpoint flushes");
        }
        // A finished run is counted once /metrics shows the sizes it left.
        self.report(metrics);
        if retained {
            Metrics::inc(&metrics.history_retention_runs);
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::borrow::Cow;

    use smart_proto::Serial;

    use super::samples::Change;
    use super::*;

    fn open(dir: &std::path::Path) -> (sled::Db, History) {
        // A test that reopens waits for the dropped handle's lock.
        let db = crate::reopen::retrying_lock(|| sled::Config::new().path(dir).open()).unwrap();
        let options = HistoryOptions {
            enabled: true,
            raw_ms: i64::MAX / 4,
            five_minutes_ms: i64::MAX / 4,
            hour_ms: i64::MAX / 4,
            energy_gap_ms: 600_000,
        };
        let history = History::open(&db, options).unwrap().unwrap();
        (db, history)
    }

    /// The tiers' sizes are counted as they change, saved with a checkpoint and loaded at the next
    /// start; a store without saved counts is scanned; /metrics shows them.
    #[test]
    fn sizes_are_counted_saved_and_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let hour = 3_600_000;
        {
            let (db, history) = open(dir.path());
            assert_eq!(history.sizes(), [(0, 0); 3]);
            for h in 0..3 {
                let change = Change {
                    serial: Serial::new("0001").unwrap(),
                    ts_ms: h * hour + 5,
                    values: vec![(Cow::Borrowed("battery"), 50.0)],
                };
                history.raw.absorb(h as u64, &[change]).unwrap();
            }
            history.maintain(4 * hour, &Metrics::default(), &AtomicBool::new(false));
            let sizes = history.sizes();
            assert_eq!(sizes.map(|(_, keys)| keys), [3, 3, 1], "{sizes:?}");
            let metrics = Metrics::default();
            history.report(&metrics);
            let text = metrics.render(crate::metrics::Gauges::default());
            assert!(text.contains(&format!(
                "smart_history_bytes{{tier=\"raw\"}} {}",
                sizes[0].0
            )));
            assert!(text.contains("smart_history_keys{tier=\"1h\"} 1"), "{text}");
            history.save_sizes().unwrap();
            db.flush().unwrap();
        }
        let scanned = {
            let (_db, history) = open(dir.path());
            let loaded = history.sizes();
            history.meta.remove(SIZES_KEY).unwrap();
            loaded
        };
        let (_db, history) = open(dir.path());
        assert_eq!(history.sizes(), scanned, "a scan finds what was loaded");
        assert_eq!(scanned.map(|(_, keys)| keys), [3, 3, 1]);
    }

    /// Rollups of the earlier layout (a chunk per day and per 30 days) are dropped at open and
    /// rolled up again from the raw samples.
    #[test]
    fn rollups_of_an_earlier_layout_are_rolled_up_again() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            let old = db.open_tree("history_rollup").unwrap();
            old.insert(
                [1, 0, 0, 0x4f, 0x9b, 4, b'0', b'0', b'0', b'1'],
                &b"junk"[..],
            )
            .unwrap();
            let meta = db.open_tree("meta").unwrap();
            meta.insert("history_rolled", &490_000_u32.to_be_bytes())
                .unwrap();
            db.flush().unwrap();
        }
        let (_db, history) = open(dir.path());
        assert_eq!(history.rollups.rolled().unwrap(), None);
        assert_eq!(history.sizes()[1], (0, 0));
    }
}
