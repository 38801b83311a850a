//! `smart-server --data-dir D history-fill --devices N --hours H`: the history's benchmark. Fills an empty
//! data dir's history with `H` simulated hours of `N` devices (an injected clock ending now), through the
//! same code the checkpoint runs (`Raw::absorb`, then the rollups), and reports what it cost: bytes on
//! disk per raw sample (sled's files, and the tier's own keys and values), the time to fill and roll up,
//! query latencies and a retention run.
//!
//! Devices behave like `solmate_sim`'s default fleet: one message every `--interval-secs` (± 0.5 s),
//! each changing 1 to 3 of the four power and battery fields to a whole number drawn at random within
//! their range (the hardest case for the delta encoding: no smooth curves).

use std::borrow::Cow;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context as _, bail};
use serde_json::json;
use smart_proto::Serial;

use super::samples::{Change, FieldName};
use super::{History, HistoryOptions, api};

const HOUR_MS: i64 = 3_600_000;
const FIELDS: [(&str, f64); 4] = [
    ("power_income", 800.0),
    ("power_inject", 600.0),
    ("power_consumption", 900.0),
    ("battery", 100.0),
];

/// A small deterministic generator (splitmix64): the fill is the same every run.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Run the fill in `dir` (which must hold no store yet) and print the report as one JSON line.
pub(crate) fn run(dir: &Path, devices: u32, hours: u32, interval_secs: u32) -> anyhow::Result<()> {
    if dir.join("sled").exists() {
        bail!(
            "{} already holds a store: history-fill only fills an empty data dir",
            dir.display()
        );
    }
    let db = sled::Config::new()
        .path(dir.join("sled"))
        .flush_every_ms(None)
        .cache_capacity(64 * 1024 * 1024)
        .open()
        .context("opening the store")?;
    let options = HistoryOptions {
        enabled: true,
        raw_ms: i64::from(hours) * HOUR_MS,
        five_minutes_ms: 30 * 24 * HOUR_MS,
        hour_ms: 365 * 24 * HOUR_MS,
        energy_gap_ms: 600_000,
    };
    let history = History::open(&db, options)?.context("history enabled")?;
    let now = super::samples::millis(smart_proto::Timestamp::from(std::time::SystemTime::now()));
    let start = (now / HOUR_MS - i64::from(hours)) * HOUR_MS;
    let interval = i64::from(interval_secs.max(1)) * 1000;
    let serials: Vec<Serial> = (0..devices)
        .map(|d| Serial::new(&format!("fill{d:06}")))
        .collect::<Result<_, _>>()?;
    let mut random = Random(42);
    let mut samples = 0_u64;
    let started = Instant::now();
    for hour in 0..i64::from(hours) {
        let (from, to) = (start + hour * HOUR_MS, start + (hour + 1) * HOUR_MS);
        for serial in &serials {
            let mut changes = Vec::new();
            let mut t = from + i64::try_from(random.below(5000)).unwrap_or(0);
            while t < to {
                let mut values: Vec<(FieldName, f64)> = Vec::new();
                for _ in 0..=random.below(3) {
                    let (name, high) = FIELDS[usize::try_from(random.below(4)).unwrap_or(0)];
                    #[allow(clippy::cast_precision_loss)]
                    let value = random.below(high as u64 + 1) as f64;
                    values.retain(|(n, _)| n != name);
                    values.push((Cow::Borrowed(name), value));
                }
                values.sort_by(|a, b| a.0.cmp(&b.0));
                samples += values.len() as u64;
                changes.push(Change {
                    serial: serial.clone(),
                    ts_ms: t,
                    values,
                });
                t += interval - 500 + i64::try_from(random.below(1001)).unwrap_or(0);
            }
            // One log segment per simulated hour, as far as absorbing is concerned.
            history
                .raw
                .absorb(u64::try_from(hour).unwrap_or(0), &changes)?;
        }
        db.flush()?;
    }
    let fill_s = started.elapsed().as_secs_f64();
    let rolled = Instant::now();
    let end = start + i64::from(hours) * HOUR_MS;
    let hours_rolled = history.rollups.catch_up(
        &history.raw,
        end + super::rollup::GRACE_MS + options.energy_gap_ms,
        options.energy_gap_ms,
        &std::sync::atomic::AtomicBool::new(false),
    )?;
    db.flush()?;
    let rollup_s = rolled.elapsed().as_secs_f64();
    let [
        (raw_bytes, raw_parts),
        (five_bytes, five_keys),
        (hour_bytes, hour_keys),
    ] = history.sizes();
    let disk_bytes = dir_size(&dir.join("sled"))?;

    // Queries on random devices: the day at 5 minutes, the month at an hour, the last hour raw.
    let mut latencies: Vec<(&str, Vec<f64>)> = Vec::new();
    for (label, span, step) in [
        ("day_5m", 24 * HOUR_MS, "5m"),
        ("month_1h", 30 * 24 * HOUR_MS, "1h"),
        ("hour_raw", HOUR_MS, ""),
    ] {
        let mut times = Vec::new();
        for _ in 0..200 {
            let serial = &serials[usize::try_from(random.below(u64::from(devices))).unwrap_or(0)];
            let mut query = vec![
                ("fields".to_owned(), "battery,power_income".to_owned()),
                ("from".to_owned(), (end - span).to_string()),
                ("to".to_owned(), end.to_string()),
            ];
            if step.is_empty() {
                query.push(("agg".to_owned(), "raw".to_owned()));
            } else {
                query.push(("step".to_owned(), step.to_owned()));
            }
            let asked = Instant::now();
            let (status, _, body) = api::answer(&history, serial, &query, end);
            if status != 200 {
                bail!("query {label} failed: {body}");
            }
            times.push(asked.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        latencies.push((label, times));
    }
    let quantile = |times: &[f64], q: f64| {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let at = ((times.len() as f64 * q) as usize).min(times.len().saturating_sub(1));
        (times.get(at).copied().unwrap_or_default() * 1000.0).round() / 1000.0
    };
    let retention = Instant::now();
    let removed = history.raw.retain(end - i64::from(hours / 2) * HOUR_MS)?;
    // A server started on this store loads the counts instead of scanning the tiers.
    history.save_sizes()?;
    db.flush()?;
    let retention_s = retention.elapsed().as_secs_f64();

    #[allow(clippy::cast_precision_loss)]
    let per_sample = |bytes: u64| (bytes as f64 / samples.max(1) as f64 * 100.0).round() / 100.0;
    let mut report = json!({
        "devices": devices,
        "hours": hours,
        "interval_s": interval_secs,
        "raw_samples": samples,
        "raw_parts": raw_parts,
        "fill_seconds": (fill_s * 10.0).round() / 10.0,
        "rollup_seconds": (rollup_s * 10.0).round() / 10.0,
        "hours_rolled_up": hours_rolled,
        "raw_bytes_per_sample": per_sample(raw_bytes),
        "rollup_5m_bytes": five_bytes,
        "rollup_5m_keys": five_keys,
        "rollup_1h_bytes": hour_bytes,
        "rollup_1h_keys": hour_keys,
        "disk_bytes": disk_bytes,
        "disk_bytes_per_sample": per_sample(disk_bytes),
        "retention_parts_removed": removed,
        "retention_seconds": (retention_s * 100.0).round() / 100.0,
    });
    for (label, times) in &latencies {
        report[format!("query_{label}_p50_ms")] = json!(quantile(times, 0.5));
        report[format!("query_{label}_p99_ms")] = json!(quantile(times, 0.99));
    }
    println!("{report}");
    Ok(())
}

/// Bytes of the files under `dir`.
fn dir_size(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}
