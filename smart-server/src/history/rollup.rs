//! The rollup tiers: per device, 5-minute and hourly buckets of each numeric field (min, max, sum,
//! count, last), computed from the raw tier once an hour is over, kept longer than raw samples.
//!
//! Tree `history_rollup`. Key: tier (1 byte: 1 = 5 minutes, 2 = 1 hour) · period (u32, big endian: the
//! hour for 5-minute buckets, the day for hourly ones) · serial length · serial. Value: a [`Chunk`]
//! whose rows are the non-empty buckets (time = bucket start) and whose fields are named `field/stat`.
//! An hour's 5-minute chunk is written once, when the hour is rolled up; a day's hourly chunk grows by
//! one row per hour (at most 24: rewriting it stays cheap). Retention deletes the periods before a cut,
//! per tier; a query gets each period of its range by key. `meta/history_rolled` is the last hour
//! rolled up: catching up after a restart starts after it. `meta/history_rollup_layout` names this
//! layout: a tree written by an earlier one is emptied and rolled up again from the raw tier.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use smart_proto::Serial;

use super::codec::{Chunk, Row};
use super::energy::{POWER, energy_field, integrate};
use super::raw::{Edges, HistoryError, Raw, delete_range};
use super::size::{self, Size};

const MINUTE_MS: i64 = 60_000;
pub(crate) const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;
/// An hour is rolled up this long after it ended: the changes of its last seconds are in the raw
/// tier by then (the checkpoint absorbs them within about two seconds).
pub(crate) const GRACE_MS: i64 = MINUTE_MS;
const ROLLED_KEY: &str = "history_rolled";
const LAYOUT_KEY: &str = "history_rollup_layout";
/// This module's key layout (1: a chunk per day and per 30 days, rewritten every hour).
const LAYOUT: u8 = 2;
/// 5-minute buckets in an hour.
const FIVES: usize = 12;
const STATS: [&str; 5] = ["min", "max", "sum", "count", "last"];

/// A rollup tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tier {
    FiveMinutes,
    Hour,
}

impl Tier {
    /// Bucket width.
    pub(crate) fn step_ms(self) -> i64 {
        match self {
            Tier::FiveMinutes => 5 * MINUTE_MS,
            Tier::Hour => HOUR_MS,
        }
    }

    /// The span one stored chunk covers.
    fn period_ms(self) -> i64 {
        match self {
            Tier::FiveMinutes => HOUR_MS,
            Tier::Hour => DAY_MS,
        }
    }

    fn byte(self) -> u8 {
        match self {
            Tier::FiveMinutes => 1,
            Tier::Hour => 2,
        }
    }

    fn period_of(self, ts_ms: i64) -> u32 {
        u32::try_from(ts_ms.div_euclid(self.period_ms())).unwrap_or(0)
    }

    fn of_key(key: &[u8]) -> Option<Tier> {
        match key.first()? {
            1 => Some(Tier::FiveMinutes),
            2 => Some(Tier::Hour),
            _ => None,
        }
    }
}

/// What one bucket saw of one field.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Stats {
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    pub count: u64,
    pub last: f64,
}

impl Stats {
    pub(crate) fn of(v: f64) -> Stats {
        Stats {
            min: v,
            max: v,
            sum: v,
            count: 1,
            last: v,
        }
    }

    /// Add what a later bucket (or sample) saw.
    pub(crate) fn merge(&mut self, later: &Stats) {
        self.min = self.min.min(later.min);
        self.max = self.max.max(later.max);
        self.sum += later.sum;
        self.count += later.count;
        self.last = later.last;
    }
}

/// One bucket of a device: its start and the stats of each field it saw.
pub(crate) type Bucket = (i64, BTreeMap<String, Stats>);

/// The rollup tree, and what each tier holds.
#[derive(Debug, Clone)]
pub(crate) struct Rollups {
    tree: sled::Tree,
    meta: sled::Tree,
    five: Arc<Size>,
    hour: Arc<Size>,
}

fn key(tier: Tier, period: u32, serial: &Serial) -> Vec<u8> {
    let serial = serial.as_str().as_bytes();
    let mut key = Vec::with_capacity(1 + 4 + 1 + serial.len());
    key.push(tier.byte());
    key.extend_from_slice(&period.to_be_bytes());
    // Serials are at most 32 bytes.
    key.push(serial.len() as u8);
    key.extend_from_slice(serial);
    key
}

fn to_chunk(buckets: &[Bucket]) -> Chunk {
    let mut chunk = Chunk::default();
    for (start, fields) in buckets {
        let mut values = Vec::new();
        for (name, stats) in fields {
            // u64 → f64: counts stay far below 2^53.
            #[allow(clippy::cast_precision_loss)]
            let numbers = [
                stats.min,
                stats.max,
                stats.sum,
                stats.count as f64,
                stats.last,
            ];
            for (stat, v) in STATS.iter().zip(numbers) {
                // A device with more than 12 numeric fields in one period: the rest is not kept.
                if let Some(i) = chunk.field(&format!("{name}/{stat}")) {
                    values.push((i, v));
                }
            }
        }
        values.sort_by_key(|(i, _)| *i);
        chunk.rows.push(Row {
            ts_ms: *start,
            values,
        });
    }
    chunk
}

fn from_chunk(chunk: &Chunk) -> Vec<Bucket> {
    let split: Vec<Option<(&str, usize)>> = chunk
        .fields
        .iter()
        .map(|f| {
            let (name, stat) = f.rsplit_once('/')?;
            Some((name, STATS.iter().position(|s| *s == stat)?))
        })
        .collect();
    chunk
        .rows
        .iter()
        .map(|row| {
            let mut fields: BTreeMap<String, [f64; 5]> = BTreeMap::new();
            for &(i, v) in &row.values {
                if let Some(Some((name, stat))) = split.get(usize::from(i)) {
                    fields.entry((*name).to_owned()).or_insert([0.0; 5])[*stat] = v;
                }
            }
            let stats = fields
                .into_iter()
                .map(|(name, [min, max, sum, count, last])| {
                    // Stored from a u64 count: a non-negative integer.
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    let count = count as u64;
                    (
                        name,
                        Stats {
                            min,
                            max,
                            sum,
                            count,
                            last,
                        },
                    )
                })
                .collect();
            (row.ts_ms, stats)
        })
        .collect()
}

/// One device's hour, rolled up: its 5-minute buckets and its hour bucket, per field.
struct Rolled<'a> {
    start: i64,
    names: Vec<&'a str>,
    /// Per field (as `names`): the 5-minute buckets, and the hour.
    five: Vec<[Option<Stats>; FIVES]>,
    hour: Vec<Option<Stats>>,
}

fn merge(into: &mut Option<Stats>, v: f64) {
    match into {
        Some(stats) => stats.merge(&Stats::of(v)),
        None => *into = Some(Stats::of(v)),
    }
}

impl<'a> Rolled<'a> {
    /// The buckets of the rows of `chunks` (one device's parts of the hour starting at `start`).
    fn of(start: i64, chunks: &'a [Chunk]) -> Rolled<'a> {
        let mut rolled = Rolled {
            start,
            names: Vec::new(),
            five: Vec::new(),
            hour: Vec::new(),
        };
        for chunk in chunks {
            let slots: Vec<usize> = chunk.fields.iter().map(|f| rolled.slot(f)).collect();
            for row in &chunk.rows {
                // Rows are in their hour (the key says so); clamped all the same.
                let five = usize::try_from((row.ts_ms - start).div_euclid(5 * MINUTE_MS))
                    .unwrap_or(0)
                    .min(FIVES - 1);
                for &(field, v) in &row.values {
                    if let Some(&slot) = slots.get(usize::from(field)) {
                        merge(&mut rolled.five[slot][five], v);
                        merge(&mut rolled.hour[slot], v);
                    }
                }
            }
        }
        rolled
    }

    fn slot(&mut self, name: &'a str) -> usize {
        if let Some(slot) = self.names.iter().position(|n| *n == name) {
            return slot;
        }
        self.names.push(name);
        self.five.push([None; FIVES]);
        self.hour.push(None);
        self.names.len() - 1
    }

    /// The non-empty 5-minute buckets.
    fn fives(&self) -> Vec<Bucket> {
        (0..FIVES)
            .filter_map(|b| {
                let fields: BTreeMap<String, Stats> = self
                    .names
                    .iter()
                    .zip(&self.five)
                    .filter_map(|(name, buckets)| Some(((*name).to_owned(), buckets[b]?)))
                    .collect();
                let at = i64::try_from(b).unwrap_or(0) * 5 * MINUTE_MS;
                (!fields.is_empty()).then(|| (self.start + at, fields))
            })
            .collect()
    }

    /// The hour bucket, with the energy of each power field (`FIELD@wh`: sum = Wh, count = ms
    /// covered) from the hour's samples and the nearest ones around it (`edges`).
    fn hour(&self, edges: &Edges<3>, gap_ms: i64, chunks: &[Chunk]) -> Bucket {
        let mut fields: BTreeMap<String, Stats> = self
            .names
            .iter()
            .zip(&self.hour)
            .filter_map(|(name, stats)| Some(((*name).to_owned(), (*stats)?)))
            .collect();
        for (i, power) in POWER.iter().enumerate() {
            let mut samples: Vec<(i64, f64)> = edges.before[i].into_iter().collect();
            for chunk in chunks {
                if let Some(field) = chunk.fields.iter().position(|f| f == power) {
                    samples.extend(chunk.rows.iter().filter_map(|row| {
                        let (_, v) = row.values.iter().find(|(f, _)| usize::from(*f) == field)?;
                        Some((row.ts_ms, *v))
                    }));
                }
            }
            samples.extend(edges.after[i]);
            let (wh, covered) = integrate(&samples, (self.start, self.start + HOUR_MS), gap_ms);
            if covered > 0 {
                let mut stats = Stats::of(wh);
                stats.count = u64::try_from(covered).unwrap_or_default();
                fields.insert(energy_field(power), stats);
            }
        }
        (self.start, fields)
    }
}

impl Rollups {
    pub(crate) fn open(db: &sled::Db) -> Result<Rollups, HistoryError> {
        let rollups = Rollups {
            tree: db.open_tree("history_rollup")?,
            meta: db.open_tree("meta")?,
            five: Arc::default(),
            hour: Arc::default(),
        };
        if rollups.meta.get(LAYOUT_KEY)?.as_deref() != Some(&[LAYOUT][..]) {
            // Buckets of an earlier layout: rolled up again from the raw tier (what it still holds).
            if !rollups.tree.is_empty() {
                tracing::warn!(
                    "history: the rollups were written by an earlier build; rolling up again from the raw samples"
                );
            }
            rollups.tree.clear()?;
            rollups.meta.remove(ROLLED_KEY)?;
            rollups.meta.insert(LAYOUT_KEY, &[LAYOUT])?;
        }
        Ok(rollups)
    }

    /// The last hour rolled up (hours since the epoch).
    pub(crate) fn rolled(&self) -> Result<Option<u32>, HistoryError> {
        Ok(self
            .meta
            .get(ROLLED_KEY)?
            .and_then(|v| <[u8; 4]>::try_from(v.as_ref()).ok())
            .map(u32::from_be_bytes))
    }

    /// Roll up every hour of `raw` that ended at least [`GRACE_MS`] and the energy gap limit
    /// (`gap_ms`: the samples that close its last segments) before `now_ms` and was not rolled up yet.
    /// Returns how many hours. Not flushed: the caller flushes (`History::maintain`).
    /// Stops between two devices once `stop` is set: the hour then is rolled up again (whole) later.
    pub(crate) fn catch_up(
        &self,
        raw: &Raw,
        now_ms: i64,
        gap_ms: i64,
        stop: &AtomicBool,
    ) -> Result<u32, HistoryError> {
        let wait = GRACE_MS + gap_ms;
        let Some(last_due) = u32::try_from((now_ms - wait).div_euclid(HOUR_MS) - 1).ok() else {
            return Ok(0);
        };
        let first = match self.rolled()? {
            Some(rolled) => rolled + 1,
            None => match raw.first_hour()? {
                Some(first) => first,
                None => return Ok(0),
            },
        };
        let mut hours = 0;
        for hour in first..=last_due {
            let start = i64::from(hour) * HOUR_MS;
            let rolled_up = raw.each_device(hour, |serial, chunks| {
                if stop.load(Ordering::Relaxed) {
                    return Err(HistoryError::Stopped);
                }
                let rolled = Rolled::of(start, chunks);
                self.put_fives(hour, serial, &rolled.fives())?;
                let edges = raw.edges(serial, POWER, (start, start + HOUR_MS), gap_ms)?;
                self.add_hour(serial, rolled.hour(&edges, gap_ms, chunks))
            });
            match rolled_up {
                Ok(()) => {}
                Err(HistoryError::Stopped) => return Ok(hours),
                Err(e) => return Err(e),
            }
            self.meta.insert(ROLLED_KEY, &hour.to_be_bytes())?;
            hours += 1;
        }
        Ok(hours)
    }

    fn size(&self, tier: Tier) -> &Size {
        match tier {
            Tier::FiveMinutes => &self.five,
            Tier::Hour => &self.hour,
        }
    }

    /// Write `key` of `tier`, counting it.
    fn put(&self, tier: Tier, key: Vec<u8>, value: Vec<u8>) -> Result<(), HistoryError> {
        let (k, v) = (key.len(), value.len());
        let old = self.tree.insert(key, value)?;
        self.size(tier).put(k, v, old.map(|old| old.len()));
        Ok(())
    }

    /// The chunk stored at `key`, if any.
    fn chunk(&self, key: &[u8]) -> Result<Option<Chunk>, HistoryError> {
        let Some(value) = self.tree.get(key)? else {
            return Ok(None);
        };
        Chunk::decode(&value)
            .map(Some)
            .map_err(|error| HistoryError::Damaged {
                key: String::from_utf8_lossy(key).into_owned(),
                error,
            })
    }

    /// Store an hour's 5-minute buckets (rolling the same hour again, after a crash before the
    /// mark, writes the same chunk).
    fn put_fives(
        &self,
        hour: u32,
        serial: &Serial,
        buckets: &[Bucket],
    ) -> Result<(), HistoryError> {
        if buckets.is_empty() {
            return Ok(());
        }
        let tier = Tier::FiveMinutes;
        self.put(tier, key(tier, hour, serial), to_chunk(buckets).encode())
    }

    /// Merge an hour's bucket into the device's day chunk.
    fn add_hour(&self, serial: &Serial, bucket: Bucket) -> Result<(), HistoryError> {
        if bucket.1.is_empty() {
            return Ok(());
        }
        let tier = Tier::Hour;
        let key = key(tier, tier.period_of(bucket.0), serial);
        let mut all = match self.chunk(&key)? {
            Some(chunk) => from_chunk(&chunk),
            None => Vec::new(),
        };
        // Rolling the same hour again (a crash before the mark) replaces its bucket.
        all.retain(|(start, _)| *start != bucket.0);
        all.push(bucket);
        all.sort_by_key(|(start, _)| *start);
        self.put(tier, key, to_chunk(&all).encode())
    }

    /// The buckets of `tier` of `serial` from `from_ms` to `to_ms` (bucket starts), in time order.
    /// Each period of the range is one key (the caller bounds the range by its points cap).
    pub(crate) fn read(
        &self,
        tier: Tier,
        serial: &Serial,
        (from_ms, to_ms): (i64, i64),
    ) -> Result<Vec<Bucket>, HistoryError> {
        let mut out = Vec::new();
        if from_ms >= to_ms {
            return Ok(out);
        }
        // Only periods the tier can hold: none before its first key.
        let Some(oldest) = self.tree.range(key(tier, 0, serial)..).keys().next() else {
            return Ok(out);
        };
        let oldest = oldest?;
        if Tier::of_key(&oldest) != Some(tier) {
            return Ok(out);
        }
        let oldest = oldest
            .get(1..5)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map_or(0, u32::from_be_bytes);
        for period in tier.period_of(from_ms).max(oldest)..=tier.period_of(to_ms - 1) {
            if let Some(chunk) = self.chunk(&key(tier, period, serial))? {
                out.extend(
                    from_chunk(&chunk)
                        .into_iter()
                        .filter(|(start, _)| *start >= from_ms && *start < to_ms),
                );
            }
        }
        Ok(out)
    }

    /// Delete the periods of `tier` that end at or before `before_ms`. Returns how many chunks.
    pub(crate) fn retain(&self, tier: Tier, before_ms: i64) -> Result<usize, HistoryError> {
        let start = [tier.byte()];
        let mut end = vec![tier.byte()];
        end.extend_from_slice(&tier.period_of(before_ms).to_be_bytes());
        delete_range(&self.tree, &start[..]..&end[..], self.size(tier))
    }

    /// Bytes (keys and values) and chunks of `tier`, as counted.
    pub(crate) fn tier_size(&self, tier: Tier) -> (u64, u64) {
        self.size(tier).get()
    }

    /// Start the counts from saved ones, or from a scan of the tree if there are none.
    pub(crate) fn count_from(&self, saved: Option<[(u64, u64); 2]>) -> Result<(), HistoryError> {
        let [five, hour] = match saved {
            Some(counts) => counts,
            None => [
                size::scan(self.tree.scan_prefix([Tier::FiveMinutes.byte()]))?,
                size::scan(self.tree.scan_prefix([Tier::Hour.byte()]))?,
            ],
        };
        self.five.set(five);
        self.hour.set(hour);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::float_cmp)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::history::samples::Change;
    use proptest::prelude::*;

    fn open() -> (tempfile::TempDir, Raw, Rollups) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        (dir, Raw::open(&db).unwrap(), Rollups::open(&db).unwrap())
    }

    fn change(serial: &str, ts_ms: i64, field: &'static str, v: f64) -> Change {
        Change {
            serial: Serial::new(serial).unwrap(),
            ts_ms,
            values: vec![(Cow::Borrowed(field), v)],
        }
    }

    /// Three simulated days, a sample a minute: every tier's buckets equal a naive computation over
    /// the raw samples, hours are rolled up only once over, and retention drops the oldest periods.
    #[test]
    fn three_days_roll_up_into_both_tiers() {
        let (_dir, raw, rollups) = open();
        let day0 = 1_764_460_800_000_i64;
        let value = |minute: i64| ((minute * 37) % 101) as f64 / 2.0;
        let minutes = 3 * 24 * 60;
        for minute in 0..minutes {
            let ts = day0 + minute * MINUTE_MS + 7_000;
            raw.absorb(
                minute as u64,
                &[change("0001", ts, "battery", value(minute))],
            )
            .unwrap();
            // Roll up as the checkpoint thread would, every 10 simulated minutes.
            if minute % 10 == 0 {
                rollups
                    .catch_up(&raw, ts, 0, &AtomicBool::new(false))
                    .unwrap();
            }
        }
        let end = day0 + minutes * MINUTE_MS;
        assert_eq!(
            rollups
                .catch_up(&raw, end + GRACE_MS, 0, &AtomicBool::new(false))
                .unwrap(),
            1,
            "the last hour"
        );
        assert_eq!(
            rollups
                .catch_up(&raw, end + GRACE_MS, 0, &AtomicBool::new(false))
                .unwrap(),
            0
        );
        let serial = Serial::new("0001").unwrap();
        for tier in [Tier::FiveMinutes, Tier::Hour] {
            let buckets = rollups.read(tier, &serial, (day0, end)).unwrap();
            let per_bucket = tier.step_ms() / MINUTE_MS;
            assert_eq!(buckets.len() as i64, minutes / per_bucket);
            for (b, (start, fields)) in buckets.iter().enumerate() {
                let first = b as i64 * per_bucket;
                let samples: Vec<f64> = (first..first + per_bucket).map(value).collect();
                assert_eq!(*start, day0 + first * MINUTE_MS);
                let stats = fields["battery"];
                assert_eq!(stats.count, per_bucket as u64);
                assert_eq!(stats.min, samples.iter().copied().reduce(f64::min).unwrap());
                assert_eq!(stats.max, samples.iter().copied().reduce(f64::max).unwrap());
                assert_eq!(stats.sum, samples.iter().sum::<f64>());
                assert_eq!(stats.last, *samples.last().unwrap());
            }
        }
        // A range inside a period.
        let noon = day0 + 12 * HOUR_MS;
        let two = rollups
            .read(Tier::Hour, &serial, (noon, noon + 2 * HOUR_MS))
            .unwrap();
        assert_eq!(
            two.iter().map(|b| b.0).collect::<Vec<_>>(),
            [noon, noon + HOUR_MS]
        );
        // Retention of the 5-minute tier before day 2 drops two days of hour chunks.
        assert_eq!(
            rollups
                .retain(Tier::FiveMinutes, day0 + 2 * DAY_MS)
                .unwrap(),
            48
        );
        // The counts followed every write and delete.
        let counted = |tier: Tier| rollups.tier_size(tier);
        let scanned = |tier: Tier| size::scan(rollups.tree.scan_prefix([tier.byte()])).unwrap();
        assert_eq!(counted(Tier::FiveMinutes), scanned(Tier::FiveMinutes));
        assert_eq!(counted(Tier::Hour), scanned(Tier::Hour));
        assert_eq!(counted(Tier::Hour).1, 3, "a chunk per day");
        let left = rollups
            .read(Tier::FiveMinutes, &serial, (day0, end))
            .unwrap();
        assert_eq!(left.first().map(|b| b.0), Some(day0 + 2 * DAY_MS));
        assert_eq!(
            rollups
                .read(Tier::Hour, &serial, (day0, end))
                .unwrap()
                .len(),
            72
        );
    }

    /// A rollup asked to stop leaves the hour unmarked, and rolling it up again later gives the
    /// same buckets as one uninterrupted run.
    #[test]
    fn a_stopped_rollup_is_done_again_whole() {
        let (_dir, raw, rollups) = open();
        for (n, serial) in ["0001", "0002"].iter().enumerate() {
            raw.absorb(
                n as u64,
                &[change(serial, 60_000, "battery", 1.0 + n as f64)],
            )
            .unwrap();
        }
        let later = 3 * HOUR_MS;
        assert_eq!(
            rollups
                .catch_up(&raw, later, 0, &AtomicBool::new(true))
                .unwrap(),
            0
        );
        assert_eq!(rollups.rolled().unwrap(), None);
        assert_eq!(
            rollups
                .catch_up(&raw, later, 0, &AtomicBool::new(false))
                .unwrap(),
            2,
            "hours 0 and 1"
        );
        let serial = Serial::new("0002").unwrap();
        let buckets = rollups.read(Tier::Hour, &serial, (0, HOUR_MS)).unwrap();
        assert_eq!(buckets.len(), 1);
        assert_eq!(buckets[0].1["battery"].last, 2.0);
    }

    proptest! {
        /// Rolled up, stored and read back, an hour's 5-minute buckets are exact: each bucket's
        /// stats equal a naive computation over its samples (in their order).
        #[test]
        fn buckets_round_trip(values in proptest::collection::vec((0_i64..3_600_000, -1e6_f64..1e6), 1..100)) {
            let mut rows = values.clone();
            rows.sort_by_key(|(t, _)| *t);
            let mut chunk = Chunk::default();
            let x = chunk.field("x").unwrap();
            chunk.rows = rows.iter().map(|(t, v)| Row { ts_ms: *t, values: vec![(x, *v)] }).collect();
            let chunks = [chunk];
            let buckets = Rolled::of(0, &chunks).fives();
            for (start, fields) in &buckets {
                let samples: Vec<f64> = rows
                    .iter()
                    .filter(|(t, _)| *t >= *start && *t < start + 5 * MINUTE_MS)
                    .map(|(_, v)| *v)
                    .collect();
                let stats = fields["x"];
                prop_assert_eq!(stats.count, samples.len() as u64);
                prop_assert_eq!(stats.last, *samples.last().unwrap());
                prop_assert_eq!(stats.min, samples.iter().copied().reduce(f64::min).unwrap());
            }
            prop_assert_eq!(buckets.iter().map(|(_, f)| f["x"].count).sum::<u64>(), rows.len() as u64);
            prop_assert_eq!(from_chunk(&Chunk::decode(&to_chunk(&buckets).encode()).unwrap()), buckets);
        }
    }
}
