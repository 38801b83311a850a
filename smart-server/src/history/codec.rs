//! The compact form of a run of one device's samples (a history chunk): what makes a raw sample cost a
//! few bytes on disk.
//!
//! A chunk holds rows; a row is one accepted message's numeric changes: its receive time (ms since the
//! Unix epoch) and the new value of each field that changed. Layout (integers are LEB128 varints, signed
//! ones zigzagged):
//!
//! ```text
//! version (1 byte = 1)
//! field count F (≤ 64), then F × (name length, UTF-8 name)
//! F × scale (1 byte): values of that field are stored as integers × 10^-scale (0..=6), or 0xFF: raw f64
//! row count R, then R × row:
//!     time: the first row's in full, then the change of the interval between rows (delta of delta)
//!     fields: a bitmap of the fields the row sets (bit i = field i)
//!     per field set, in field order: scaled: the change from that field's previous integer
//!                                    raw: the 8 bytes (little endian) of the value's bits XOR the previous
//! ```
//!
//! Devices report at steady intervals and values move by small decimal steps, so most rows cost a byte
//! or two of time, one of bitmap and one or two per value. A field's scale is the smallest that turns
//! *every* value of the chunk into an integer that converts back to the identical `f64` (bit for bit):
//! decoding is exact, whatever the values.

use thiserror::Error;

/// Most fields in one chunk (the bitmap is a `u64`).
pub(crate) const MAX_FIELDS: usize = 64;
/// Longest field name.
const MAX_NAME: usize = 1024;
/// Largest decimal scale tried.
const MAX_SCALE: u8 = 6;
const RAW: u8 = 0xFF;
const VERSION: u8 = 1;
/// Integers up to this magnitude convert to `f64` exactly.
const EXACT: f64 = 9_007_199_254_740_992.0;

/// One message's numeric changes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row {
    /// Receive time, ms since the Unix epoch.
    pub ts_ms: i64,
    /// `(field index, value)`, field indices ascending and below the chunk's field count.
    pub values: Vec<(u8, f64)>,
}

/// A run of one device's samples.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Chunk {
    /// The fields the rows refer to by index.
    pub fields: Vec<String>,
    /// In time order (equal times allowed).
    pub rows: Vec<Row>,
}

/// Bytes that are not a chunk this code wrote.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CodecError {
    #[error("history chunk: unknown version {0}")]
    Version(u8),
    #[error("history chunk: truncated")]
    Truncated,
    #[error("history chunk: {0}")]
    Invalid(&'static str),
}

impl Chunk {
    /// The index of `name`, added if new; `None` once the chunk has [`MAX_FIELDS`] others.
    pub(crate) fn field(&mut self, name: &str) -> Option<u8> {
        if let Some(i) = self.fields.iter().position(|f| f == name) {
            return u8::try_from(i).ok();
        }
        if self.fields.len() >= MAX_FIELDS || name.len() > MAX_NAME {
            return None;
        }
        self.fields.push(name.to_owned());
        u8::try_from(self.fields.len() - 1).ok()
    }

    /// The compact bytes. Rows must be in time order with ascending field indices (as
    /// [`Chunk::field`] and the history build them); values are kept exactly.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.rows.len() * 6);
        self.encode_into(&mut out);
        out
    }

    /// [`Chunk::encode`], appended to `out`.
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        debug_assert!(self.rows.iter().all(|r| {
            r.values.windows(2).all(|w| w[0].0 < w[1].0)
                && r.values
                    .iter()
                    .all(|(f, _)| usize::from(*f) < self.fields.len())
        }));
        let known = |field: u8| usize::from(field) < self.fields.len();
        let scales: Vec<u8> = (0..self.fields.len())
            .map(|i| scale_of(&self.rows.iter().filter_map(|r| value_of(r, i))))
            .collect();
        out.reserve(16 + self.rows.len() * 6);
        out.push(VERSION);
        put_varint(out, self.fields.len() as u64);
        for name in &self.fields {
            put_varint(out, name.len() as u64);
            out.extend_from_slice(name.as_bytes());
        }
        out.extend_from_slice(&scales);
        put_varint(out, self.rows.len() as u64);
        let mut prev_ts = 0_i64;
        let mut prev_delta = 0_i64;
        let mut prev_int = vec![0_i64; self.fields.len()];
        let mut prev_bits = vec![0_u64; self.fields.len()];
        for (n, row) in self.rows.iter().enumerate() {
            if n == 0 {
                put_signed(out, row.ts_ms);
            } else {
                let delta = row.ts_ms.wrapping_sub(prev_ts);
                put_signed(out, delta.wrapping_sub(prev_delta));
                prev_delta = delta;
            }
            prev_ts = row.ts_ms;
            let bitmap = row
                .values
                .iter()
                .filter(|(field, _)| known(*field))
                .fold(0_u64, |map, (field, _)| map | 1 << field);
            put_varint(out, bitmap);
            for &(field, value) in row.values.iter().filter(|(field, _)| known(*field)) {
                let i = usize::from(field);
                match scales[i] {
                    RAW => {
                        let bits = value.to_bits();
                        out.extend_from_slice(&(bits ^ prev_bits[i]).to_le_bytes());
                        prev_bits[i] = bits;
                    }
                    scale => {
                        let int = scaled(value, scale).unwrap_or_default();
                        put_signed(out, int.wrapping_sub(prev_int[i]));
                        prev_int[i] = int;
                    }
                }
            }
        }
    }

    /// Read back what [`Chunk::encode`] wrote.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Chunk, CodecError> {
        let mut r = Reader { bytes, at: 0 };
        let version = r.byte()?;
        if version != VERSION {
            return Err(CodecError::Version(version));
        }
        let nfields = r.len(MAX_FIELDS)?;
        let mut fields = Vec::with_capacity(nfields);
        for _ in 0..nfields {
            let len = r.len(MAX_NAME)?;
            let name = std::str::from_utf8(r.take(len)?)
                .map_err(|_| CodecError::Invalid("field name is not UTF-8"))?;
            fields.push(name.to_owned());
        }
        let scales = r.take(nfields)?.to_vec();
        if scales.iter().any(|&s| s > MAX_SCALE && s != RAW) {
            return Err(CodecError::Invalid("unknown scale"));
        }
        // Each row takes at least two bytes: bounds the allocation by the input.
        let nrows = r.len(bytes.len() / 2)?;
        let mut rows = Vec::with_capacity(nrows);
        let mut prev_ts = 0_i64;
        let mut prev_delta = 0_i64;
        let mut prev_int = vec![0_i64; nfields];
        let mut prev_bits = vec![0_u64; nfields];
        for n in 0..nrows {
            let ts_ms = if n == 0 {
                r.signed()?
            } else {
                let delta = prev_delta.wrapping_add(r.signed()?);
                prev_delta = delta;
                prev_ts.wrapping_add(delta)
            };
            prev_ts = ts_ms;
            let bitmap = r.varint()?;
            if nfields < 64 && bitmap >> nfields != 0 {
                return Err(CodecError::Invalid("a row sets an unknown field"));
            }
            let mut values = Vec::with_capacity(bitmap.count_ones() as usize);
            for i in (0..nfields).filter(|i| bitmap & (1 << i) != 0) {
                let value = if scales[i] == RAW {
                    let mut raw = [0_u8; 8];
                    raw.copy_from_slice(r.take(8)?);
                    let bits = u64::from_le_bytes(raw) ^ prev_bits[i];
                    prev_bits[i] = bits;
                    f64::from_bits(bits)
                } else {
                    let int = prev_int[i].wrapping_add(r.signed()?);
                    prev_int[i] = int;
                    unscaled(int, scales[i])
                };
                // `i < nfields ≤ 64`: fits.
                values.push((i as u8, value));
            }
            rows.push(Row { ts_ms, values });
        }
        if r.at != bytes.len() {
            return Err(CodecError::Invalid("bytes after the last row"));
        }
        Ok(Chunk { fields, rows })
    }
}

fn value_of(row: &Row, field: usize) -> Option<f64> {
    row.values
        .iter()
        .find(|(f, _)| usize::from(*f) == field)
        .map(|(_, v)| *v)
}

/// The smallest scale at which every value converts to an integer and back exactly, or [`RAW`].
fn scale_of(values: &(impl Iterator<Item = f64> + Clone)) -> u8 {
    (0..=MAX_SCALE)
        .find(|&scale| values.clone().all(|v| scaled(v, scale).is_some()))
        .unwrap_or(RAW)
}

/// `value × 10^scale` as an integer, if decoding it gives back `value` bit for bit.
fn scaled(value: f64, scale: u8) -> Option<i64> {
    let int = (value * 10_f64.powi(i32::from(scale))).round();
    // NaN fails too.
    if int.is_nan() || int.abs() >= EXACT {
        return None;
    }
    // |int| < 2^53: exact as an i64.
    let int = int as i64;
    (unscaled(int, scale).to_bits() == value.to_bits()).then_some(int)
}

fn unscaled(int: i64, scale: u8) -> f64 {
    // Integers beyond 2^53 never get here from `encode` (`scaled` refuses them); a damaged chunk
    // only decodes to other numbers.
    #[allow(clippy::cast_precision_loss)]
    let value = int as f64;
    if scale == 0 {
        value
    } else {
        value / 10_f64.powi(i32::from(scale))
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_signed(out: &mut Vec<u8>, v: i64) {
    put_varint(out, ((v << 1) ^ (v >> 63)) as u64);
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, CodecError> {
        let b = *self.bytes.get(self.at).ok_or(CodecError::Truncated)?;
        self.at += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&[u8], CodecError> {
        let end = self.at.checked_add(n).ok_or(CodecError::Truncated)?;
        let slice = self.bytes.get(self.at..end).ok_or(CodecError::Truncated)?;
        self.at = end;
        Ok(slice)
    }

    fn varint(&mut self) -> Result<u64, CodecError> {
        let mut v = 0_u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(CodecError::Invalid("varint longer than 64 bits"))
    }

    fn signed(&mut self) -> Result<i64, CodecError> {
        let v = self.varint()?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    fn len(&mut self, max: usize) -> Result<usize, CodecError> {
        usize::try_from(self.varint()?)
            .ok()
            .filter(|&n| n <= max)
            .ok_or(CodecError::Invalid("count out of range"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn same(a: &Chunk, b: &Chunk) -> bool {
        a.fields == b.fields
            && a.rows.len() == b.rows.len()
            && a.rows.iter().zip(&b.rows).all(|(x, y)| {
                x.ts_ms == y.ts_ms
                    && x.values.len() == y.values.len()
                    && x.values
                        .iter()
                        .zip(&y.values)
                        .all(|((f, v), (g, w))| f == g && v.to_bits() == w.to_bits())
            })
    }

    /// A device every 5 s (± jitter) reporting power and battery with one decimal.
    fn typical(rows: usize) -> Chunk {
        let mut chunk = Chunk::default();
        let fields: Vec<u8> = [
            "battery",
            "power_income",
            "power_inject",
            "power_consumption",
        ]
        .iter()
        .map(|f| chunk.field(f).unwrap())
        .collect();
        let mut ts = 1_764_460_800_000_i64;
        for n in 0..rows {
            ts += 5_000 + (n as i64 * 37 % 41) - 20;
            let wave = (n as f64 / 40.0).sin();
            let values = fields
                .iter()
                .map(|&f| {
                    let raw = 1000.0 * wave * f64::from(f + 1) + (n % 7) as f64 * 3.3;
                    (f, (raw * 10.0).round() / 10.0)
                })
                .collect();
            chunk.rows.push(Row { ts_ms: ts, values });
        }
        chunk
    }

    #[test]
    fn a_typical_hour_costs_a_few_bytes_per_sample() {
        let chunk = typical(720);
        let bytes = chunk.encode();
        assert!(same(&Chunk::decode(&bytes).unwrap(), &chunk));
        let per_sample = bytes.len() as f64 / (720.0 * 4.0);
        assert!(per_sample < 3.0, "{per_sample} bytes per sample");
    }

    #[test]
    fn values_no_decimal_scale_fits_are_kept_raw_and_exact() {
        let mut chunk = Chunk::default();
        let f = chunk.field("x").unwrap();
        for (i, v) in [0.1 + 0.2, -0.0, f64::MAX, 5e-324, 1e300, 123.456_789_1]
            .into_iter()
            .enumerate()
        {
            chunk.rows.push(Row {
                ts_ms: i as i64,
                values: vec![(f, v)],
            });
        }
        assert!(same(&Chunk::decode(&chunk.encode()).unwrap(), &chunk));
    }

    #[test]
    fn damaged_chunks_are_errors_not_panics() {
        let bytes = typical(50).encode();
        for cut in 0..bytes.len() {
            assert!(Chunk::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Chunk::decode(&longer).is_err());
        assert_eq!(Chunk::decode(&[2]), Err(CodecError::Version(2)));
        // A row setting a field the chunk does not have.
        let mut chunk = Chunk::default();
        chunk.field("a").unwrap();
        chunk.rows.push(Row {
            ts_ms: 1,
            values: vec![(0, 1.0)],
        });
        let mut bad = chunk.encode();
        let at = bad.len() - 2; // the bitmap, before the one-byte value
        bad[at] = 0b10;
        assert!(Chunk::decode(&bad).is_err());
    }

    #[test]
    fn at_most_64_fields() {
        let mut chunk = Chunk::default();
        for i in 0..MAX_FIELDS {
            assert_eq!(chunk.field(&format!("f{i}")), Some(i as u8));
        }
        assert_eq!(chunk.field("one more"), None);
        assert_eq!(chunk.field("f3"), Some(3));
    }

    fn value() -> impl Strategy<Value = f64> {
        prop_oneof![
            (-1_000_000_i64..1_000_000, 0_u32..4)
                .prop_map(|(n, d)| n as f64 / 10_f64.powi(d as i32)),
            any::<f64>().prop_filter("JSON numbers are finite", |v| v.is_finite()),
        ]
    }

    fn chunk() -> impl Strategy<Value = Chunk> {
        (
            1_usize..6,
            proptest::collection::vec(
                (
                    0_i64..100_000,
                    proptest::collection::vec((0_u8..6, value()), 0..6),
                ),
                0..60,
            ),
            any::<i64>(),
        )
            .prop_map(|(nfields, rows, start)| {
                let mut chunk = Chunk::default();
                for i in 0..nfields {
                    chunk.field(&format!("field{i}"));
                }
                let mut ts = start / 2;
                for (gap, mut values) in rows {
                    ts = ts.saturating_add(gap);
                    values.retain(|(f, _)| usize::from(*f) < nfields);
                    values.sort_by_key(|(f, _)| *f);
                    values.dedup_by_key(|(f, _)| *f);
                    chunk.rows.push(Row { ts_ms: ts, values });
                }
                chunk
            })
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_the_identity(chunk in chunk()) {
            let decoded = Chunk::decode(&chunk.encode()).unwrap();
            prop_assert!(same(&decoded, &chunk), "{decoded:?} != {chunk:?}");
        }

        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Chunk::decode(&bytes);
        }
    }
}
