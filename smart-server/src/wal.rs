//! The write-ahead log that makes a group commit durable with one `write` and one `fdatasync`.
//!
//! sled keeps the latest record of every device, but a sled `flush` hands the write to sled's I/O
//! thread pool and wakes all of its threads: measured here, that thread traffic cost a quarter of the
//! server's CPU at 100 devices and half of it at one. So each group commit appends its records to
//! this log from the writer thread itself and syncs it; sled is written at the same time but only
//! flushed by a periodic checkpoint, after which the log segments it covers are deleted. On start,
//! segments left over are replayed into sled (records are whole, so replay is idempotent).
//!
//! Segment files are `wal/<seq>.log`, a sequence of frames `[len: u32 LE][crc32: u32 LE][payload]`.
//! A crash can tear the last frame of the last segment: replay stops at the first frame whose length
//! runs past the end of the file or whose checksum does not match (that frame was never acked).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// Frame header: payload length and checksum.
const HEADER: usize = 8;
/// No record comes near this; a larger length is corruption.
const MAX_PAYLOAD: usize = 64 * 1024 * 1024;

/// Append one frame holding `payload` to `out`.
pub(crate) fn encode(out: &mut Vec<u8>, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// How reading a segment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Replayed {
    /// Frames read whole.
    pub frames: usize,
    /// Bytes after the last whole frame (a torn or corrupt tail), 0 for a clean end.
    pub discarded: usize,
}

/// Call `each` with every whole frame's payload in `bytes`, in order.
pub(crate) fn decode(bytes: &[u8], mut each: impl FnMut(&[u8])) -> Replayed {
    let mut at = 0;
    let mut frames = 0;
    while let Some(header) = bytes.get(at..at + HEADER) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len > MAX_PAYLOAD {
            break;
        }
        let Some(payload) = bytes.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        each(payload);
        frames += 1;
        at += HEADER + len;
    }
    Replayed {
        frames,
        discarded: bytes.len() - at,
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

/// Make the creation or removal of files in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Delete the segments up to and including `seq`.
pub(crate) fn remove_through(dir: &Path, seq: u64) -> io::Result<usize> {
    let mut removed = 0;
    for (s, path) in segments(dir)? {
        if s <= seq {
            fs::remove_file(path)?;
            removed += 1;
        }
    }
    if removed > 0 {
        sync_dir(dir)?;
    }
    Ok(removed)
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
    /// Start segment `seq` in `dir` (created if needed).
    pub(crate) fn create(dir: &Path, seq: u64) -> io::Result<Wal> {
        fs::create_dir_all(dir)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(dir, seq))?;
        sync_dir(dir)?;
        let len = file.metadata()?.len();
        Ok(Wal {
            dir: dir.to_path_buf(),
            file,
            seq,
            len,
        })
    }

    /// Append already encoded frames and make them durable.
    pub(crate) fn append_sync(&mut self, frames: &[u8]) -> io::Result<()> {
        self.file.write_all(frames)?;
        self.file.sync_data()?;
        self.len += frames.len() as u64;
        Ok(())
    }

    /// Bytes in the current segment.
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

    fn frames(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            encode(&mut out, p);
        }
        out
    }

    fn replay(bytes: &[u8]) -> (Vec<Vec<u8>>, Replayed) {
        let mut got = Vec::new();
        let outcome = decode(bytes, |p| got.push(p.to_vec()));
        (got, outcome)
    }

    #[test]
    fn round_trip() {
        let bytes = frames(&[b"one", b"", b"three"]);
        let (got, outcome) = replay(&bytes);
        assert_eq!(got, [b"one".to_vec(), Vec::new(), b"three".to_vec()]);
        assert_eq!(
            outcome,
            Replayed {
                frames: 3,
                discarded: 0
            }
        );
    }

    #[test]
    fn a_torn_tail_is_dropped_at_every_cut() {
        let whole = frames(&[b"first record", b"second record"]);
        let first_len = HEADER + b"first record".len();
        for cut in first_len..whole.len() {
            let (got, outcome) = replay(&whole[..cut]);
            assert_eq!(got, [b"first record".to_vec()], "cut at {cut}");
            assert_eq!(outcome.discarded, cut - first_len);
        }
    }

    #[test]
    fn corruption_stops_replay() {
        let mut bytes = frames(&[b"good", b"flipped", b"after"]);
        let flip = HEADER + 4 + HEADER + 2;
        bytes[flip] ^= 0x40;
        let (got, outcome) = replay(&bytes);
        assert_eq!(got, [b"good".to_vec()]);
        assert_eq!(outcome.frames, 1);
        // A huge length is corruption, not an allocation.
        let mut bytes = frames(&[b"x"]);
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        bytes.extend_from_slice(&[0; 4]);
        assert_eq!(
            replay(&bytes).1,
            Replayed {
                frames: 1,
                discarded: 8
            }
        );
    }

    #[test]
    fn segments_rotate_and_are_removed_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        let mut wal = Wal::create(&wal_dir, 7).unwrap();
        wal.append_sync(&frames(&[b"a"])).unwrap();
        assert_eq!(wal.rotate().unwrap(), 7);
        wal.append_sync(&frames(&[b"b"])).unwrap();
        assert_eq!(wal.rotate().unwrap(), 8);
        let seqs: Vec<u64> = segments(&wal_dir)
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(seqs, [7, 8, 9]);
        assert_eq!(remove_through(&wal_dir, 8).unwrap(), 2);
        let (seq, path) = segments(&wal_dir).unwrap().pop().unwrap();
        assert_eq!((seq, wal.seq()), (9, 9));
        assert_eq!(fs::read(path).unwrap(), Vec::<u8>::new());
        assert_eq!(wal.len(), 0);
    }
}
