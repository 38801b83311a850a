//! The rollup tiers: per device, 5-minute and hourly buckets of each numeric field (min, max, sum,
//! count, last), computed from the raw tier once an hour is over, kept longer than raw samples.
//!
//! Tree `history_rollup`. Key: tier (1 byte: 1 = 5 minutes, 2 = 1 hour) · period (u32, big endian: the
//! day for 5-minute buckets, the 30-day block for hourly ones) · serial length · serial. Value: a
//! [`Chunk`] whose rows are the non-empty buckets (time = bucket start) and whose fields are named
//! `field/stat`. A period's chunk is rewritten when an hour is rolled up (a few KiB); retention deletes
//! the periods before a cut, per tier. `meta/history_rolled` is the last hour rolled up: catching up
//! after a restart starts after it.

use std::collections::BTreeMap;

use smart_proto::Serial;

use super::codec::{Chunk, Row};
use super::energy::{POWER, energy_field, integrate};
use super::raw::{HistoryError, Raw, ReadError};

const MINUTE_MS: i64 = 60_000;
pub(crate) const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;
/// An hour is rolled up this long after it ended: the changes of its last seconds are in the raw
/// tier by then (the checkpoint absorbs them within about two seconds).
pub(crate) const GRACE_MS: i64 = MINUTE_MS;
const ROLLED_KEY: &str = "history_rolled";
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
            Tier::FiveMinutes => DAY_MS,
            Tier::Hour => 30 * DAY_MS,
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

/// Put the energy of each power field in `[start, end)` into an hourly bucket's `fields` (as
/// `FIELD@wh`: sum = Wh, count = ms covered), from the samples around it.
fn add_energy(
    raw: &Raw,
    serial: &Serial,
    (start, end): (i64, i64),
    gap_ms: i64,
    fields: &mut BTreeMap<String, Stats>,
) -> Result<(), HistoryError> {
    let around = (start.saturating_sub(gap_ms), end.saturating_add(gap_ms));
    let rows = match raw.read(serial, &POWER, around, usize::MAX) {
        Ok(rows) => rows,
        Err(ReadError::Store(e)) => return Err(e),
        Err(ReadError::TooMany(_)) => return Ok(()),
    };
    for (i, power) in POWER.iter().enumerate() {
        let samples: Vec<(i64, f64)> = rows.iter().filter_map(|(t, v)| Some((*t, v[i]?))).collect();
        let (wh, covered) = integrate(&samples, (start, end), gap_ms);
        if covered > 0 {
            let mut stats = Stats::of(wh);
            stats.count = u64::try_from(covered).unwrap_or_default();
            fields.insert(energy_field(power), stats);
        }
    }
    Ok(())
}

/// One bucket of a device: its start and the stats of each field it saw.
pub(crate) type Bucket = (i64, BTreeMap<String, Stats>);

/// The rollup tree.
#[derive(Debug, Clone)]
pub(crate) struct Rollups {
    tree: sled::Tree,
    meta: sled::Tree,
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

/// The buckets of `tier` that `rows` (one device's raw rows with their field names) fall in.
pub(crate) fn buckets_of(tier: Tier, rows: &[(i64, Vec<(String, f64)>)]) -> Vec<Bucket> {
    let mut out: BTreeMap<i64, BTreeMap<String, Stats>> = BTreeMap::new();
    let step = tier.step_ms();
    for (ts, values) in rows {
        let bucket = out.entry(ts.div_euclid(step) * step).or_default();
        for (name, v) in values {
            match bucket.get_mut(name) {
                Some(stats) => stats.merge(&Stats::of(*v)),
                None => {
                    bucket.insert(name.clone(), Stats::of(*v));
                }
            }
        }
    }
    out.into_iter().collect()
}

impl Rollups {
    pub(crate) fn open(db: &sled::Db) -> Result<Rollups, HistoryError> {
        Ok(Rollups {
            tree: db.open_tree("history_rollup")?,
            meta: db.open_tree("meta")?,
        })
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
    /// Returns how many hours. Not flushed: the checkpoint flushes.
    pub(crate) fn catch_up(
        &self,
        raw: &Raw,
        now_ms: i64,
        gap_ms: i64,
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
            raw.compact_hour(hour)?;
            for (serial, rows) in raw.hour(hour)? {
                self.add(
                    Tier::FiveMinutes,
                    &serial,
                    buckets_of(Tier::FiveMinutes, &rows),
                )?;
                let mut buckets = buckets_of(Tier::Hour, &rows);
                if let Some((_, fields)) = buckets.first_mut() {
                    add_energy(raw, &serial, (start, start + HOUR_MS), gap_ms, fields)?;
                }
                self.add(Tier::Hour, &serial, buckets)?;
            }
            self.meta.insert(ROLLED_KEY, &hour.to_be_bytes())?;
            hours += 1;
        }
        Ok(hours)
    }

    /// Merge `buckets` (of one hour) into the device's period chunk.
    fn add(&self, tier: Tier, serial: &Serial, buckets: Vec<Bucket>) -> Result<(), HistoryError> {
        let Some((first, _)) = buckets.first() else {
            return Ok(());
        };
        let key = key(tier, tier.period_of(*first), serial);
        let mut all = match self.tree.get(&key)? {
            Some(value) => {
                from_chunk(
                    &Chunk::decode(&value).map_err(|error| HistoryError::Damaged {
                        key: String::from_utf8_lossy(&key).into_owned(),
                        error,
                    })?,
                )
            }
            None => Vec::new(),
        };
        // Rolling the same hour again (a crash before the mark) replaces its buckets.
        let hour_start = first.div_euclid(HOUR_MS) * HOUR_MS;
        all.retain(|(start, _)| *start < hour_start || *start >= hour_start + HOUR_MS);
        all.extend(buckets);
        all.sort_by_key(|(start, _)| *start);
        self.tree.insert(key, to_chunk(&all).encode())?;
        Ok(())
    }

    /// The buckets of `tier` of `serial` from `from_ms` to `to_ms` (bucket starts), in time order.
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
        let (first, last) = (tier.period_of(from_ms), tier.period_of(to_ms - 1));
        // Only periods that exist: a wide range must not walk empty ones.
        let lo = key(tier, first, serial);
        let hi = key(tier, last.saturating_add(1), serial);
        for entry in self.tree.range(lo..hi) {
            let (k, value) = entry?;
            if k.get(5..) != key(tier, 0, serial).get(5..) {
                continue;
            }
            let chunk = Chunk::decode(&value).map_err(|error| HistoryError::Damaged {
                key: String::from_utf8_lossy(&k).into_owned(),
                error,
            })?;
            out.extend(
                from_chunk(&chunk)
                    .into_iter()
                    .filter(|(start, _)| *start >= from_ms && *start < to_ms),
            );
        }
        Ok(out)
    }

    /// Delete the periods of `tier` that end at or before `before_ms`. Returns how many chunks.
    pub(crate) fn retain(&self, tier: Tier, before_ms: i64) -> Result<usize, HistoryError> {
        let start = [tier.byte()];
        let mut end = vec![tier.byte()];
        end.extend_from_slice(&tier.period_of(before_ms).to_be_bytes());
        let mut removed = 0;
        loop {
            let mut batch = sled::Batch::default();
            let mut n = 0;
            for k in self
                .tree
                .range(start.as_slice()..end.as_slice())
                .keys()
                .take(4096)
            {
                batch.remove(k?);
                n += 1;
            }
            if n == 0 {
                return Ok(removed);
            }
            self.tree.apply_batch(batch)?;
            removed += n;
        }
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
                rollups.catch_up(&raw, ts, 0).unwrap();
            }
        }
        let end = day0 + minutes * MINUTE_MS;
        assert_eq!(
            rollups.catch_up(&raw, end + GRACE_MS, 0).unwrap(),
            1,
            "the last hour"
        );
        assert_eq!(rollups.catch_up(&raw, end + GRACE_MS, 0).unwrap(), 0);
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
        // Retention of the 5-minute tier before day 2 drops two day-chunks.
        assert_eq!(
            rollups
                .retain(Tier::FiveMinutes, day0 + 2 * DAY_MS)
                .unwrap(),
            2
        );
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

    proptest! {
        /// Stored and read back, buckets are what was computed (exact values).
        #[test]
        fn buckets_round_trip(values in proptest::collection::vec((0_i64..3_600_000, -1e6_f64..1e6), 1..100)) {
            let rows: Vec<(i64, Vec<(String, f64)>)> = values
                .iter()
                .map(|(t, v)| (*t, vec![("x".to_owned(), *v)]))
                .collect();
            let mut sorted = rows.clone();
            sorted.sort_by_key(|(t, _)| *t);
            let buckets = buckets_of(Tier::FiveMinutes, &sorted);
            prop_assert_eq!(from_chunk(&Chunk::decode(&to_chunk(&buckets).encode()).unwrap()), buckets);
        }
    }
}
