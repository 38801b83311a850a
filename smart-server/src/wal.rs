//! The write-ahead log that makes a group commit durable with one `write` and one `fdatasync`.
//!
//! Why not a sled `flush` per commit: it hands the write to sled's I/O thread pool and wakes all of its
//! threads; measured here, that thread traffic alone cost a quarter of the server's CPU at 100
//! devices and half of it at one device. So each group commit appends its records to this log from
//! the writer thread itself and syncs it, and sled is brought up to date by a checkpoint about once a
//! second, after which the segments it covers are retired.
//!
//! Segment files are `wal/<seq>.log`, a sequence of frames
//! `[len: u32 LE][crc32(seq, len, payload): u32 LE][payload]`. A retired segment is kept as
//! `wal/spare.log` and reused for the next segment: overwriting blocks a file already has makes
//! `fdatasync` cheaper than growing a file (no metadata to journal: measured about half the time).
//! Because the checksum covers the segment's sequence number, frames left over from the file's
//! previous life never validate. Replay stops at the first frame that does not validate: a torn write
//! at the end (never acked), or the leftovers of a recycled file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// Frame header: payload length and checksum.
const HEADER: usize = 8;
/// No record comes near this; a larger length is corruption.
const MAX_PAYLOAD: usize = 64 * 1024 * 1024;
/// The retired segment kept for reuse.
const SPARE: &str = "spare.log";

fn checksum(seq: u64, len: u32, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&seq.to_le_bytes());
    hasher.update(&len.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// Append one frame of segment `seq` holding `payload` to `out`.
pub(crate) fn encode(out: &mut Vec<u8>, seq: u64, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&checksum(seq, len, payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// How reading a segment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Replayed {
    /// Frames read whole.
    pub frames: usize,
    /// Bytes after the last valid frame: a torn write, or the leftovers of a recycled file.
    pub rest: usize,
}

/// Call `each` with the payload of every valid frame of segment `seq` in `bytes`, in order.
pub(crate) fn decode(bytes: &[u8], seq: u64, mut each: impl FnMut(&[u8])) -> Replayed {
    let mut at = 0;
    let mut frames = 0;
    while let Some(header) = bytes.get(at..at + HEADER) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len as usize > MAX_PAYLOAD {
            break;
        }
        let Some(payload) = bytes.get(at + HEADER..at + HEADER + len as usize) else {
            break;
        };
        if checksum(seq, len, payload) != crc {
            break;
        }
        each(payload);
        frames += 1;
        at += HEADER + len as usize;
    }
    Replayed {
        frames,
        rest: bytes.len() - at,
    }
}

/// The segments in `dir`, oldest first.
pub(crate) fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let seq = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(seq) = seq {
            found.push((seq, path));
        }
    }
    found.sort_unstable();
    Ok(found)
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.log"))
}

/// Make the creation, renaming or removal of files in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Retire the segments up to and including `seq` (their content is safe elsewhere): the newest is
/// kept as the spare unless there is one already, the others are deleted. Returns how many.
pub(crate) fn retire_through(dir: &Path, seq: u64) -> io::Result<usize> {
    let mut retired: Vec<(u64, PathBuf)> = segments(dir)?
        .into_iter()
        .filter(|(s, _)| *s <= seq)
        .collect();
    let count = retired.len();
    let spare = dir.join(SPARE);
    if let Some((_, newest)) = retired.pop() {
        if spare.exists() {
            fs::remove_file(newest)?;
        } else {
            fs::rename(newest, &spare)?;
        }
    }
    for (_, path) in retired {
        fs::remove_file(path)?;
    }
    if count > 0 {
        sync_dir(dir)?;
    }
    Ok(count)
}

/// The segment being appended to.
#[derive(Debug)]
pub(crate) struct Wal {
    dir: PathBuf,
    file: File,
    seq: u64,
    len: u64,
}

impl Wal {
    /// Start segment `seq` in `dir`, reusing the spare file if there is one.
    pub(crate) fn create(dir: &Path, seq: u64) -> io::Result<Wal> {
        fs::create_dir_all(dir)?;
        let path = segment_path(dir, seq);
        // Another thread may take or make the spare at the same time: a failed rename just means a
        // fresh file.
        let recycled = fs::rename(dir.join(SPARE), &path).is_ok();
        // Not `append`: a recycled file is overwritten from its start.
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&path)?;
        sync_dir(dir)?;
        tracing::debug!(seq, recycled, "new log segment");
        Ok(Wal {
            dir: dir.to_path_buf(),
            file,
            seq,
            len: 0,
        })
    }

    /// Append frames encoded for this segment ([`Wal::seq`]) and make them durable.
    pub(crate) fn append_sync(&mut self, frames: &[u8]) -> io::Result<()> {
        self.file.write_all(frames)?;
        self.file.sync_data()?;
        self.len += frames.len() as u64;
        Ok(())
    }

    /// Bytes written to the current segment.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Continue in a new segment; returns the sequence number of the one just finished.
    pub(crate) fn rotate(&mut self) -> io::Result<u64> {
        let next = Wal::create(&self.dir, self.seq + 1)?;
        let finished = self.seq;
        *self = next;
        Ok(finished)
    }

    /// The current segment's sequence number.
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn frames(seq: u64, payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            encode(&mut out, seq, p);
        }
        out
    }

    fn replay(bytes: &[u8], seq: u64) -> (Vec<Vec<u8>>, Replayed) {
        let mut got = Vec::new();
        let outcome = decode(bytes, seq, |p| got.push(p.to_vec()));
        (got, outcome)
    }

    #[test]
    fn round_trip() {
        let bytes = frames(4, &[b"one", b"", b"three"]);
        let (got, outcome) = replay(&bytes, 4);
        assert_eq!(got, [b"one".to_vec(), Vec::new(), b"three".to_vec()]);
        assert_eq!(outcome, Replayed { frames: 3, rest: 0 });
    }

    #[test]
    fn frames_of_another_segment_or_zeroes_do_not_validate() {
        let bytes = frames(4, &[b"one"]);
        assert_eq!(
            replay(&bytes, 5).1,
            Replayed {
                frames: 0,
                rest: bytes.len()
            }
        );
        assert_eq!(replay(&[0; 64], 0).1.frames, 0);
    }

    #[test]
    fn a_torn_tail_is_dropped_at_every_cut() {
        let whole = frames(1, &[b"first record", b"second record"]);
        let first_len = HEADER + b"first record".len();
        for cut in first_len..whole.len() {
            let (got, outcome) = replay(&whole[..cut], 1);
            assert_eq!(got, [b"first record".to_vec()], "cut at {cut}");
            assert_eq!(outcome.rest, cut - first_len);
        }
    }

    #[test]
    fn corruption_stops_replay() {
        let mut bytes = frames(2, &[b"good", b"flipped", b"after"]);
        bytes[HEADER + 4 + HEADER + 2] ^= 0x40;
        let (got, outcome) = replay(&bytes, 2);
        assert_eq!(got, [b"good".to_vec()]);
        assert_eq!(outcome.frames, 1);
        // A huge length is corruption, not an allocation.
        let mut bytes = frames(2, &[b"x"]);
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        bytes.extend_from_slice(&[0; 4]);
        assert_eq!(replay(&bytes, 2).1, Replayed { frames: 1, rest: 8 });
    }

    #[test]
    fn retired_segments_are_recycled_and_their_leftovers_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        let mut wal = Wal::create(&wal_dir, 7).unwrap();
        wal.append_sync(&frames(7, &[b"a"])).unwrap();
        assert_eq!(wal.rotate().unwrap(), 7);
        wal.append_sync(&frames(
            8,
            &[b"a long record from segment eight", b"and another"],
        ))
        .unwrap();
        assert_eq!(wal.rotate().unwrap(), 8);
        let seqs: Vec<u64> = segments(&wal_dir)
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(seqs, [7, 8, 9]);

        assert_eq!(retire_through(&wal_dir, 8).unwrap(), 2);
        assert!(wal_dir.join(SPARE).exists());
        let seqs: Vec<u64> = segments(&wal_dir)
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(seqs, [9]);

        // Segment 10 reuses the spare (segment 8's file) and writes a shorter frame over it: what
        // is left of segment 8 after it does not validate.
        assert_eq!(wal.rotate().unwrap(), 9);
        assert!(!wal_dir.join(SPARE).exists());
        wal.append_sync(&frames(10, &[b"c"])).unwrap();
        let bytes = fs::read(segment_path(&wal_dir, 10)).unwrap();
        let (got, outcome) = replay(&bytes, 10);
        assert_eq!(got, [b"c".to_vec()]);
        assert!(outcome.rest > 0, "leftovers of segment 8 are there");
        assert_eq!(wal.seq(), 10);
        assert_eq!(wal.len(), (HEADER + 1) as u64);
    }
}
