//! The raw tier: every numeric change of every device, in sled tree `history_raw`.
//!
//! Key: hour (u32, big endian, hours since the Unix epoch) · serial length (1 byte) · serial · part
//! (u16, big endian). Value: the log segment last absorbed into it (u64, big endian) · a
//! [`Chunk`] of at most [`MAX_ROWS`] rows of that device in that hour.
//!
//! Time comes first so that retention is a delete of the range of keys before a cut; one device's hour
//! is a short range scan. Absorbing only adds parts (a checkpoint writes each device's new rows as a
//! new part: nothing stored is rewritten, so sled writes what is new and little more); a device's
//! hour is compacted into full parts of [`MAX_ROWS`] rows once it has [`COMPACT_AT`] parts, and when
//! the hour is over (before its rollup). The segment number makes absorbing idempotent: a checkpoint
//! absorbs the changes [`Held`] since the last one (a part per device and hour, tagged with the newest
//! segment in it), and after a crash the replay of the log absorbs the segments the last checkpoint
//! did not cover; a device's changes of segments its hour's newest part already holds are skipped.
//! Reads see the held changes too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use smart_proto::Serial;

use super::codec::{Chunk, CodecError, Row};
use super::held::{Held, Tagged};
use super::samples::Change;
use super::size::{self, Size};

/// Most rows in one part.
pub(crate) const MAX_ROWS: usize = 256;
/// A device's hour with this many parts is compacted before another is added.
const COMPACT_AT: usize = 64;
const HOUR_MS: i64 = 3_600_000;

/// A failure of the history's storage.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("history store: {0}")]
    Sled(#[from] sled::Error),
    #[error("history part {key}: {error}")]
    Damaged { key: String, error: CodecError },
    /// The server is stopping: the work is left for the next start.
    #[error("history: stopped")]
    Stopped,
}

/// The raw tier's tree.
#[derive(Debug, Clone)]
pub(crate) struct Raw {
    tree: sled::Tree,
    size: Arc<Size>,
    /// Per device, where absorbing its changes goes on: the hour of its newest part, that part's
    /// number and the last segment in it. Spares a reverse scan of the tree per device and
    /// checkpoint (2,000 a second at 10,000 devices); a device not in it (or in another hour) is
    /// looked up in the tree.
    newest: Arc<Mutex<HashMap<Serial, Newest>>>,
    /// Changes handed over but not yet absorbed.
    held: Arc<Held>,
}

/// A device's newest part: its hour, number, and the last segment in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Newest {
    hour: u32,
    number: u16,
    seq: u64,
}

/// The hour of `ts_ms` (hours since the epoch; times before it count as hour 0).
fn hour_of(ts_ms: i64) -> u32 {
    u32::try_from(ts_ms.div_euclid(HOUR_MS)).unwrap_or(if ts_ms < 0 { 0 } else { u32::MAX })
}

fn prefix(hour: u32, serial: &Serial) -> Vec<u8> {
    let serial = serial.as_str().as_bytes();
    let mut key = Vec::with_capacity(4 + 1 + serial.len() + 2);
    key.extend_from_slice(&hour.to_be_bytes());
    // Serials are at most 32 bytes.
    key.push(serial.len() as u8);
    key.extend_from_slice(serial);
    key
}

fn part_key(hour: u32, serial: &Serial, part: u16) -> Vec<u8> {
    let mut key = prefix(hour, serial);
    key.extend_from_slice(&part.to_be_bytes());
    key
}

/// The serial in a part's key.
fn serial_of(key: &[u8]) -> Result<Serial, HistoryError> {
    key.get(4)
        .and_then(|&len| key.get(5..5 + usize::from(len)))
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| Serial::new(s).ok())
        .ok_or_else(|| HistoryError::Damaged {
            key: describe(key),
            error: CodecError::Invalid("no serial in the key"),
        })
}

fn describe(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

/// Keys deleted by one batch of a retention run.
const DELETE_BATCH: usize = 4096;

/// Delete every key of `tree` in `range`, counting them out of `size` once deleted; returns how
/// many. In batches of [`DELETE_BATCH`] (a pause after each was tried: it made a big run slower and
/// acks beside it no faster — what they feel is sled writing the emptied pages, not this thread's
/// CPU, which runs at a lower priority).
pub(crate) fn delete_range(
    tree: &sled::Tree,
    range: std::ops::Range<&[u8]>,
    size: &Size,
) -> Result<usize, HistoryError> {
    let mut removed = 0;
    loop {
        let mut batch = sled::Batch::default();
        let mut lens = Vec::new();
        for entry in tree.range(range.clone()).take(DELETE_BATCH) {
            let (key, value) = entry?;
            lens.push((key.len(), value.len()));
            batch.remove(key);
        }
        if lens.is_empty() {
            return Ok(removed);
        }
        tree.apply_batch(batch)?;
        for (key, value) in &lens {
            size.remove(*key, *value);
        }
        removed += lens.len();
    }
}

/// A stored part: the last segment in it, its rows.
struct Part {
    seq: u64,
    chunk: Chunk,
}

/// A stored part's number and the last segment in it, without decoding its rows.
fn part_header(key: &[u8], value: &[u8]) -> Result<(u16, u64), HistoryError> {
    let damaged = || HistoryError::Damaged {
        key: describe(key),
        error: CodecError::Truncated,
    };
    let number = key
        .len()
        .checked_sub(2)
        .and_then(|at| key.get(at..))
        .and_then(|b| <[u8; 2]>::try_from(b).ok())
        .map(u16::from_be_bytes)
        .ok_or_else(damaged)?;
    let seq = value
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(damaged)?;
    Ok((number, seq))
}

fn decode_part(key: &[u8], value: &[u8]) -> Result<Part, HistoryError> {
    let (_, seq) = part_header(key, value)?;
    let chunk = Chunk::decode(value.get(8..).unwrap_or_default()).map_err(|error| {
        HistoryError::Damaged {
            key: describe(key),
            error,
        }
    })?;
    Ok(Part { seq, chunk })
}

fn encode_part(seq: u64, chunk: &Chunk) -> Vec<u8> {
    let mut value = Vec::with_capacity(8 + 16 + chunk.rows.len() * 16);
    value.extend_from_slice(&seq.to_be_bytes());
    chunk.encode_into(&mut value);
    value
}

/// Rows (each a time and named values) as one chunk; a row's repeated names keep the first value,
/// names beyond the chunk's 64 fields are not kept.
fn chunk_of<'a, V>(rows: impl IntoIterator<Item = (i64, V)>) -> Chunk
where
    V: IntoIterator<Item = (&'a str, f64)>,
{
    let mut chunk = Chunk::default();
    for (ts_ms, values) in rows {
        let mut values: Vec<(u8, f64)> = values
            .into_iter()
            .filter_map(|(name, v)| Some((chunk.field(name)?, v)))
            .collect();
        values.sort_by_key(|(field, _)| *field);
        values.dedup_by_key(|(field, _)| *field);
        chunk.rows.push(Row { ts_ms, values });
    }
    chunk
}

/// A part as read from the tree.
struct Stored {
    key: sled::IVec,
    len: usize,
    part: Part,
}

impl Stored {
    fn read(key: sled::IVec, value: &[u8]) -> Result<Stored, HistoryError> {
        let part = decode_part(&key, value)?;
        Ok(Stored {
            key,
            len: value.len(),
            part,
        })
    }
}

/// One message as read back: its time and the requested fields it changed.
pub(crate) type Rowed = (i64, Vec<Option<f64>>);

/// Per field, a sample next to a range on each side (see [`Raw::edges`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Edges<const N: usize> {
    pub before: [Option<(i64, f64)>; N],
    pub after: [Option<(i64, f64)>; N],
}

/// Keep `row`'s value of each of `fields` in `found` unless one was found already (rows come
/// in the order of preference).
fn note<const N: usize>(
    chunk: &Chunk,
    row: &Row,
    fields: [&str; N],
    found: &mut [Option<(i64, f64)>; N],
) {
    for &(field, v) in &row.values {
        let Some(name) = chunk.fields.get(usize::from(field)) else {
            continue;
        };
        if let Some(i) = fields.iter().position(|f| f == name)
            && found[i].is_none()
        {
            found[i] = Some((row.ts_ms, v));
        }
    }
}

/// Why a read gave no rows.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error(transparent)]
    Store(#[from] HistoryError),
    #[error("more than {0} samples")]
    TooMany(usize),
}

impl Raw {
    /// The tier in `db`.
    pub(crate) fn open(db: &sled::Db) -> Result<Raw, HistoryError> {
        Ok(Raw {
            tree: db.open_tree("history_raw")?,
            size: Arc::default(),
            newest: Arc::default(),
            held: Arc::default(),
        })
    }

    /// The changes handed over to the next checkpoint (readable at once).
    pub(crate) fn held(&self) -> &Held {
        &self.held
    }

    /// Absorb every held change (see [`Held`]): kept held if that fails.
    pub(crate) fn absorb_held(&self) -> Result<(), HistoryError> {
        let Some(batch) = self.held.start() else {
            return Ok(());
        };
        let tagged = batch.iter().flatten().map(|(seq, change)| (*seq, change));
        let result = self.absorb_tagged(tagged);
        match &result {
            Ok(()) => self.held.done(),
            Err(_) => self.held.failed(),
        }
        result
    }

    /// Add the changes log segment `seq` made (in the order they were acked). Segments must come in
    /// ascending order per device; a device's changes of a segment its hour's newest part already
    /// holds are skipped (absorbed before a crash). Not flushed: the checkpoint flushes.
    pub(crate) fn absorb<'a>(
        &self,
        seq: u64,
        changes: impl IntoIterator<Item = &'a Change>,
    ) -> Result<(), HistoryError> {
        self.absorb_tagged(changes.into_iter().map(|change| (seq, change)))
    }

    /// [`Raw::absorb`] for changes each with its own segment (ascending per device): one new part
    /// per device and hour, tagged with the newest segment in it.
    fn absorb_tagged<'a>(
        &self,
        changes: impl IntoIterator<Item = (u64, &'a Change)>,
    ) -> Result<(), HistoryError> {
        // Per device and hour, in order: each (hour, device) numbered as first seen, then one stable
        // sort by that number (each device's changes keep their order). Sorting by the number, not by
        // the serial, spares a string comparison per step: a checkpoint may take a second's worth of
        // changes, tens of thousands.
        let mut groups: HashMap<(u32, &Serial), u32> = HashMap::new();
        let mut all: Vec<(u32, u64, &Change)> = changes
            .into_iter()
            .filter(|(_, c)| !c.values.is_empty())
            .map(|(seq, c)| {
                let next = groups.len() as u32;
                let group = *groups.entry((hour_of(c.ts_ms), &c.serial)).or_insert(next);
                (group, seq, c)
            })
            .collect();
        all.sort_by_key(|&(group, _, _)| group);
        let mut run = Vec::new();
        for group in all.chunk_by(|a, b| a.0 == b.0) {
            run.clear();
            run.extend(group.iter().map(|&(_, seq, change)| (seq, change)));
            let first = group[0].2;
            self.absorb_device(hour_of(first.ts_ms), &first.serial, &run)?;
        }
        Ok(())
    }

    fn absorb_device(
        &self,
        hour: u32,
        serial: &Serial,
        changes: &[(u64, &Change)],
    ) -> Result<(), HistoryError> {
        // The newest part's number and segment (its rows are not needed).
        let known = self.newest().get(serial).copied();
        let last = match known.filter(|n| n.hour == hour) {
            Some(newest) => Some((newest.number, newest.seq)),
            None => match self.tree.scan_prefix(prefix(hour, serial)).next_back() {
                Some(entry) => {
                    let (key, value) = entry?;
                    Some(part_header(&key, &value)?)
                }
                None => None,
            },
        };
        // Segments ascend: what the newest part does not hold yet is a suffix.
        let kept = &changes[changes
            .partition_point(|(seq, _)| last.is_some_and(|(_, written)| *seq <= written))..];
        // The newest segment in the new part (segments ascend).
        let Some(&(seq, _)) = kept.last() else {
            return Ok(());
        };
        let mut next = last.map_or(0, |(number, _)| number.saturating_add(1));
        if usize::from(next) >= COMPACT_AT {
            let parts = self.parts(hour, serial)?;
            next = self.compact(hour, serial, &parts)?;
        }
        // New parts only (nothing stored is rewritten). More than one part (more than MAX_ROWS rows of
        // one device in a checkpoint) goes in one atomic batch, so that a crash keeps all of the
        // checkpoint's rows of the device or none; one part is a plain insert (atomic too): sled's
        // batches cost far more (measured: 2,000 a second more than doubled the server's CPU).
        let mut parts = Vec::new();
        for rows in kept.chunks(MAX_ROWS) {
            let chunk = chunk_of(rows.iter().map(|(_, change)| {
                let values = change.values.iter().map(|(name, v)| (name.as_ref(), *v));
                (change.ts_ms, values)
            }));
            parts.push((part_key(hour, serial, next), encode_part(seq, &chunk)));
            next = next.saturating_add(1);
        }
        if parts.len() == 1 {
            for (key, value) in parts {
                let (k, v) = (key.len(), value.len());
                let old = self.tree.insert(key, value)?;
                self.size.put(k, v, old.map(|old| old.len()));
            }
        } else {
            let mut lens = Vec::new();
            let mut batch = sled::Batch::default();
            for (key, value) in parts {
                lens.push((key.len(), value.len()));
                batch.insert(key, value);
            }
            self.tree.apply_batch(batch)?;
            for (key, value) in lens {
                self.size.add(key, value);
            }
        }
        let newest = Newest {
            hour,
            number: next.saturating_sub(1),
            seq,
        };
        self.newest().insert(serial.clone(), newest);
        Ok(())
    }

    fn newest(&self) -> std::sync::MutexGuard<'_, HashMap<Serial, Newest>> {
        self.newest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The parts of one device's hour, in order.
    fn parts(&self, hour: u32, serial: &Serial) -> Result<Vec<Stored>, HistoryError> {
        self.tree
            .scan_prefix(prefix(hour, serial))
            .map(|entry| {
                let (key, value) = entry?;
                Stored::read(key, &value)
            })
            .collect()
    }

    /// Merge `parts` (all of one device's hour) into as few full parts as its rows need (numbered
    /// from 0, holding the newest segment); returns the next free part number. Atomic.
    fn compact(&self, hour: u32, serial: &Serial, parts: &[Stored]) -> Result<u16, HistoryError> {
        let count: usize = parts.iter().map(|s| s.part.chunk.rows.len()).sum();
        if parts.len() <= count.div_ceil(MAX_ROWS) {
            // Already compact.
            return Ok(u16::try_from(parts.len()).unwrap_or(u16::MAX));
        }
        let rows: Vec<(i64, Vec<(&str, f64)>)> = parts
            .iter()
            .flat_map(|stored| {
                let fields = &stored.part.chunk.fields;
                stored.part.chunk.rows.iter().map(move |row| {
                    let values = row
                        .values
                        .iter()
                        .filter_map(|&(i, v)| Some((fields.get(usize::from(i))?.as_str(), v)))
                        .collect();
                    (row.ts_ms, values)
                })
            })
            .collect();
        let seq = parts.iter().map(|s| s.part.seq).max().unwrap_or(0);
        let mut batch = sled::Batch::default();
        for stored in parts {
            batch.remove(stored.key.clone());
        }
        let mut added = Vec::new();
        let mut number = 0_u16;
        for rows in rows.chunks(MAX_ROWS) {
            let chunk = chunk_of(
                rows.iter()
                    .map(|(ts, values)| (*ts, values.iter().copied())),
            );
            let (key, value) = (part_key(hour, serial, number), encode_part(seq, &chunk));
            added.push((key.len(), value.len()));
            batch.insert(key, value);
            number = number.saturating_add(1);
        }
        self.tree.apply_batch(batch)?;
        for stored in parts {
            self.size.remove(stored.key.len(), stored.len);
        }
        for (key, value) in added {
            self.size.add(key, value);
        }
        if let Some(newest) = self.newest().get_mut(serial)
            && newest.hour == hour
        {
            newest.number = number.saturating_sub(1);
        }
        Ok(number)
    }

    /// Visit every device's rows of `hour` (hours since the epoch), one device at a time, as the
    /// chunks of its parts in order; each device's parts are compacted first (see [`Raw::compact`]):
    /// once an hour is over, it is rolled up this way.
    pub(crate) fn each_device(
        &self,
        hour: u32,
        mut visit: impl FnMut(&Serial, &[Chunk]) -> Result<(), HistoryError>,
    ) -> Result<(), HistoryError> {
        let mut device: Option<(Serial, Vec<Stored>)> = None;
        let mut done = |(serial, parts): (Serial, Vec<Stored>)| -> Result<(), HistoryError> {
            self.compact(hour, &serial, &parts)?;
            let chunks: Vec<Chunk> = parts.into_iter().map(|s| s.part.chunk).collect();
            visit(&serial, &chunks)
        };
        for entry in self.tree.scan_prefix(hour.to_be_bytes()) {
            let (key, value) = entry?;
            let serial = serial_of(&key)?;
            let stored = Stored::read(key, &value)?;
            match &mut device {
                // Parts of one device are adjacent, in order.
                Some((current, parts)) if *current == serial => parts.push(stored),
                _ => {
                    if let Some(finished) = device.replace((serial, vec![stored])) {
                        done(finished)?;
                    }
                }
            }
        }
        match device {
            Some(last) => done(last),
            None => Ok(()),
        }
    }

    /// The messages of `serial` from `from_ms` (inclusive) to `to_ms` (exclusive) that changed any
    /// of `fields`, in time order: each one's time and the new value of each field (`None`: not
    /// changed by it). Reads at most `limit` rows (then `Err(TooMany)`).
    pub(crate) fn read(
        &self,
        serial: &Serial,
        fields: &[&str],
        (from_ms, to_ms): (i64, i64),
        limit: usize,
    ) -> Result<Vec<Rowed>, ReadError> {
        let mut out = Vec::new();
        if from_ms >= to_ms {
            return Ok(out);
        }
        // Taken before the tree is read (see `Held`).
        let held = self.held.of(serial);
        // Only the hours the tree or the held changes hold (a wide range must not walk empty hours).
        let stored_hour = |entry: Option<(sled::IVec, sled::IVec)>| {
            entry.and_then(|(k, _)| {
                <[u8; 4]>::try_from(k.get(..4)?)
                    .ok()
                    .map(u32::from_be_bytes)
            })
        };
        let bounds = [
            stored_hour(self.tree.first().map_err(HistoryError::from)?),
            stored_hour(self.tree.last().map_err(HistoryError::from)?),
        ]
        .into_iter()
        .flatten()
        .chain(held.iter().map(|(_, change)| hour_of(change.ts_ms)));
        let Some((first, last)) = bounds.fold(None, |range: Option<(u32, u32)>, hour| {
            Some(range.map_or((hour, hour), |(lo, hi)| (lo.min(hour), hi.max(hour))))
        }) else {
            return Ok(out);
        };
        let hours = hour_of(from_ms).max(first)..=hour_of(to_ms - 1).min(last);
        for part in self.parts_over(serial, &held, hours, false) {
            let part = part?;
            let index: Vec<Option<usize>> = part
                .chunk
                .fields
                .iter()
                .map(|f| fields.iter().position(|w| w == f))
                .collect();
            for row in &part.chunk.rows {
                if row.ts_ms < from_ms || row.ts_ms >= to_ms {
                    continue;
                }
                let mut values = vec![None; fields.len()];
                for &(field, value) in &row.values {
                    if let Some(&Some(i)) = index.get(usize::from(field)) {
                        values[i] = Some(value);
                    }
                }
                if values.iter().any(Option::is_some) {
                    if out.len() == limit {
                        return Err(ReadError::TooMany(limit));
                    }
                    out.push((row.ts_ms, values));
                }
            }
        }
        Ok(out)
    }

    /// One device's parts in `hours` (taken in the order given), each hour's decoded when it is
    /// reached, its `held` changes (those no part of it holds yet) last as one more part; within an
    /// hour oldest first, or newest first with `newest_first`.
    fn parts_over<'a>(
        &'a self,
        serial: &'a Serial,
        held: &'a [Tagged],
        hours: impl Iterator<Item = u32> + 'a,
        newest_first: bool,
    ) -> impl Iterator<Item = Result<Part, HistoryError>> + 'a {
        hours.flat_map(move |hour| {
            let stored: Result<Vec<Part>, HistoryError> = self
                .tree
                .scan_prefix(prefix(hour, serial))
                .map(|entry| {
                    let (key, value) = entry?;
                    decode_part(&key, &value)
                })
                .collect();
            let mut parts = match stored {
                Ok(parts) => parts,
                Err(e) => return vec![Err(e)],
            };
            let written = parts.iter().map(|part| part.seq).max();
            let rows: Vec<&Tagged> = held
                .iter()
                .filter(|(seq, change)| {
                    hour_of(change.ts_ms) == hour && written.is_none_or(|w| *seq > w)
                })
                .collect();
            if let Some(&&(seq, _)) = rows.last() {
                let chunk = chunk_of(rows.iter().map(|(_, change)| {
                    let values = change.values.iter().map(|(name, v)| (name.as_ref(), *v));
                    (change.ts_ms, values)
                }));
                parts.push(Part { seq, chunk });
            }
            if newest_first {
                parts.reverse();
            }
            parts.into_iter().map(Ok).collect()
        })
    }

    /// The samples of `fields` next to `[start, end)` that a trapezoid across its edges needs: per
    /// field, the last one of `serial` at most `gap_ms` before `start`, and the first one at most
    /// `gap_ms` from `end` on (decoding only the parts that hold them, newest first before the
    /// range and oldest first after it).
    pub(crate) fn edges<const N: usize>(
        &self,
        serial: &Serial,
        fields: [&str; N],
        (start, end): (i64, i64),
        gap_ms: i64,
    ) -> Result<Edges<N>, HistoryError> {
        let mut before = [None; N];
        let mut after = [None; N];
        let held = self.held.of(serial);
        let lo = start.saturating_sub(gap_ms);
        let hours = (hour_of(lo)..=hour_of(start.saturating_sub(1))).rev();
        for part in self.parts_over(serial, &held, hours, true) {
            let part = part?;
            for row in part.chunk.rows.iter().rev() {
                if row.ts_ms < start && row.ts_ms >= lo {
                    note(&part.chunk, row, fields, &mut before);
                }
            }
            if before.iter().all(Option::is_some) {
                break;
            }
        }
        let hi = end.saturating_add(gap_ms);
        for part in self.parts_over(serial, &held, hour_of(end)..=hour_of(hi), false) {
            let part = part?;
            for row in &part.chunk.rows {
                if row.ts_ms >= end && row.ts_ms <= hi {
                    note(&part.chunk, row, fields, &mut after);
                }
            }
            if after.iter().all(Option::is_some) {
                break;
            }
        }
        Ok(Edges { before, after })
    }

    /// The first hour the tier holds.
    pub(crate) fn first_hour(&self) -> Result<Option<u32>, HistoryError> {
        Ok(self
            .tree
            .first()?
            .and_then(|(k, _)| <[u8; 4]>::try_from(k.get(..4)?).ok())
            .map(u32::from_be_bytes))
    }

    /// Delete every part of the hours that end at or before `before_ms`. Returns how many.
    pub(crate) fn retain(&self, before_ms: i64) -> Result<usize, HistoryError> {
        let cut = hour_of(before_ms).to_be_bytes();
        delete_range(&self.tree, &[][..]..&cut[..], &self.size)
    }

    /// Bytes (keys and values) and parts stored, as counted.
    pub(crate) fn size(&self) -> (u64, u64) {
        self.size.get()
    }

    /// Start the counts from saved ones, or from a scan of the tier if there are none.
    pub(crate) fn count_from(&self, saved: Option<(u64, u64)>) -> Result<(), HistoryError> {
        let counts = match saved {
            Some(counts) => counts,
            None => size::scan(self.tree.iter())?,
        };
        self.size.set(counts);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
