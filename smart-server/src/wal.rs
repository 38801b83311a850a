//! The write-ahead log that makes a group commit durable with one `write` and one `fdatasync`.
//!
//! Why not a sled `flush` per commit: it hands the write to sled's I/O thread pool and wakes all of its
//! threads; measured here, that thread traffic alone cost a quarter of the server's CPU at 100
//! devices and half of it at one device. So each group commit appends its records to this log from
//! the writer thread itself and syncs it, and sled is brought up to date by a checkpoint about once a
//! second, after which the segments it covers are retired.
//!
//! Segment files are `wal/<seq>.log`, a sequence of frames
//! `[len: u32 LE][crc32(seq, len, payload): u32 LE][payload]`. The next segment is opened ahead of
//! time as `wal/next.log` and becomes `<seq>.log` by a rename when the log rotates, and a retired
//! segment becomes the next `next.log`: rotating and retiring need no new file descriptor, so a
//! process out of descriptors still rotates and checkpoints. Reusing a file also makes `fdatasync`
//! cheaper than growing a fresh one (overwriting blocks a file already has journals no metadata:
//! measured about half the time). Because the checksum covers the segment's sequence number, frames
//! left over from a file's previous life never validate. Replay stops at the first frame that does
//! not validate: a torn write at the end (never acked), or the leftovers of a recycled file.
//!
//! A segment's file is written ahead of the records with zeros (256 KiB, then 512 KiB at a time, in
//! the same `fdatasync` as the batch that reaches its end), so that nearly every append overwrites
//! blocks the file already has — in a fresh file as in a recycled one — and its `fdatasync` has no
//! file size or block allocation to journal. Zeros never validate as a frame. The fill is small
//! because its batch waits for it: 4 MiB at a time made that batch's sync take 2–3 ms instead of
//! 0.2 (every ~200 ms in a fresh file at 100 devices), which was the ack latency's 99th percentile
//! (4.6 ms; 3.0 ms with 512 KiB, measured in alternating rounds).
//!
//! Segments are written directly (`O_DIRECT`, where the file system allows it: not through the
//! page cache), so every write is whole 4 KiB blocks from aligned memory: an append writes again
//! the block the previous one ended in (from the copy kept of its first bytes; a torn write of it
//! leaves those bytes as they were) and completes its last block with zeros, which the next append
//! overwrites. Measured against buffered writes on this machine's virtio disk (a 4–8 KiB append and
//! its sync): ~25 % less CPU and ~17 % sooner back; at 100 devices 1.05× the acks per second.
//!
//! A failed append leaves no torn bytes for a later append to follow: the segment is truncated back
//! to its last good length; if even that fails, the segment is abandoned, the log continues in the
//! next one, and a *cut* frame written there with the next batch tells replay where the abandoned
//! segment really ends.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use thiserror::Error;
use tracing::{debug, error, info, warn};

/// Frame header: payload length and checksum.
const HEADER: usize = 8;
/// The largest payload a frame may hold: [`decode`] treats a larger length as corruption, so
/// [`encode`] refuses it. Stored records are capped far below (`--max-record-bytes`).
pub(crate) const MAX_PAYLOAD: usize = 64 * 1024 * 1024;
/// The next segment, opened ahead of time.
const NEXT: &str = "next.log";
/// A retired segment kept for reuse by earlier versions.
const LEGACY_SPARE: &str = "spare.log";
/// The least a segment's file is zero-filled ahead of its records at a time.
const FILL_MIN: u64 = 256 * 1024;
/// The most: the fill doubles with the file up to this (its batch's `fdatasync` writes this much
/// more, which that batch's acks wait for).
const FILL_MAX: u64 = 512 * 1024;
/// Zeros written ahead per call.
const ZEROS: usize = 64 * 1024;
/// The unit of every write to a segment: files are opened with `O_DIRECT` where the file system
/// allows it, which needs each write's offset, length and memory aligned to the device's logical
/// block (512 or 4096 bytes on common devices; 4096 covers both).
const BLOCK: usize = 4096;
/// Payload prefix of a cut frame. Records are JSON objects and start with `{`.
const CUT: &[u8; 4] = b"\0cut";

fn checksum(seq: u64, len: u32, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&seq.to_le_bytes());
    hasher.update(&len.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// A payload the log's reader would refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("a record of {len} bytes is over the write-ahead log's frame limit of {MAX_PAYLOAD} bytes")]
pub(crate) struct TooLarge {
    pub len: usize,
}

/// Append one frame of segment `seq` holding `payload` to `out`; refuses exactly the payloads that
/// [`decode`] would not read back.
pub(crate) fn encode(out: &mut Vec<u8>, seq: u64, payload: &[u8]) -> Result<(), TooLarge> {
    let len = match u32::try_from(payload.len()) {
        Ok(len) if payload.len() <= MAX_PAYLOAD => len,
        _ => {
            return Err(TooLarge { len: payload.len() });
        }
    };
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&checksum(seq, len, payload).to_le_bytes());
    out.extend_from_slice(payload);
    Ok(())
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

/// Where an abandoned segment really ends: replay reads segment `seq` only up to `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cut {
    pub seq: u64,
    pub len: u64,
}

impl Cut {
    fn payload(self) -> [u8; 20] {
        let mut out = [0; 20];
        out[..4].copy_from_slice(CUT);
        out[4..12].copy_from_slice(&self.seq.to_le_bytes());
        out[12..].copy_from_slice(&self.len.to_le_bytes());
        out
    }

    /// The cut a frame's payload records, if it is a cut frame.
    pub(crate) fn of(payload: &[u8]) -> Option<Cut> {
        let rest = payload.strip_prefix(CUT)?;
        let seq = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
        let len = u64::from_le_bytes(rest.get(8..16)?.try_into().ok()?);
        (rest.len() == 16).then_some(Cut { seq, len })
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

/// Create `dir` and its missing ancestors, syncing each new directory's parent so that the new
/// entries survive a crash (`create_dir_all` leaves them to the next journal commit).
pub(crate) fn create_dir_durable(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    create_dir_durable(parent)?;
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
        Err(e) => return Err(e),
    }
    File::open(parent)?.sync_all()
}

/// The log directory, kept open: syncing it needs no new descriptor.
#[derive(Debug)]
pub(crate) struct WalDir {
    path: PathBuf,
    fd: File,
}

impl WalDir {
    /// Create (durably) and open the log directory.
    pub(crate) fn open(path: &Path) -> io::Result<WalDir> {
        create_dir_durable(path)?;
        Ok(WalDir {
            path: path.to_path_buf(),
            fd: File::open(path)?,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Make the creation, renaming or removal of files in the directory durable.
    fn sync(&self) -> io::Result<()> {
        self.fd.sync_all()
    }

    /// On start: remove the segments up to `seq` (a checkpoint covers them), keeping the newest as
    /// the next segment's file if there is none. Returns how many.
    pub(crate) fn retire_found(&self, seq: u64) -> io::Result<usize> {
        let mut retired: Vec<(u64, PathBuf)> = segments(&self.path)?
            .into_iter()
            .filter(|(s, _)| *s <= seq)
            .collect();
        let count = retired.len();
        if let Some((_, newest)) = retired.pop() {
            if self.path.join(NEXT).exists() {
                fs::remove_file(newest)?;
            } else {
                fs::rename(newest, self.path.join(NEXT))?;
            }
        }
        for (_, path) in retired {
            fs::remove_file(path)?;
        }
        // No directory sync: a retirement undone by a crash leaves segments the checkpoint covers,
        // which replay skips and retires again.
        Ok(count)
    }

    /// Make `next.log` segment `seq`; its name is durable before anything in it is acked.
    fn install(&self, seq: u64) -> io::Result<()> {
        let path = segment_path(&self.path, seq);
        fs::rename(self.path.join(NEXT), &path)?;
        if let Err(e) = self.sync() {
            let _ = fs::rename(&path, self.path.join(NEXT));
            return Err(e);
        }
        Ok(())
    }

    /// Open `next.log` (made from the legacy spare if there is one, created otherwise).
    fn open_next(&self) -> io::Result<File> {
        let next = self.path.join(NEXT);
        if !next.exists() && self.path.join(LEGACY_SPARE).exists() {
            fs::rename(self.path.join(LEGACY_SPARE), &next)?;
        }
        // Not `append`: a recycled file is overwritten from its start.
        let mut options = OpenOptions::new();
        options.create(true).write(true).truncate(false);
        // Direct writes skip the page cache: measured here, a group commit's `fdatasync` then
        // costs ~25 % less CPU and returns ~15 % sooner. A file system without them (tmpfs before
        // Linux 6.6) refuses the flag at open: the file is opened without.
        match options.clone().custom_flags(direct_flag()).open(&next) {
            Err(e) if e.raw_os_error() == Some(EINVAL) => options.open(next),
            result => result,
        }
    }
}

/// `EINVAL`: the flags or alignment a direct write needs are not met.
const EINVAL: i32 = 22;

/// `O_DIRECT`, for opening segment files.
fn direct_flag() -> i32 {
    rustix::fs::OFlags::DIRECT.bits() as i32
}

/// Write all of `bytes` at `offset`. A file opened with `O_DIRECT` on a device whose blocks are
/// larger than [`BLOCK`] refuses the write (`EINVAL`): the file then leaves direct mode, once, and
/// the write is tried again.
fn write_at(file: &File, bytes: &[u8], offset: u64) -> io::Result<()> {
    match file.write_all_at(bytes, offset) {
        Err(e) if e.raw_os_error() == Some(EINVAL) => {
            let flags = rustix::fs::fcntl_getfl(file)?;
            if !flags.contains(rustix::fs::OFlags::DIRECT) {
                return Err(e);
            }
            warn!(%e, "direct writes refused; writing the log through the page cache");
            rustix::fs::fcntl_setfl(file, flags - rustix::fs::OFlags::DIRECT)?;
            file.write_all_at(bytes, offset)
        }
        result => result,
    }
}

/// A byte buffer whose usable part starts at a multiple of [`BLOCK`] in memory, as direct writes
/// need: a plain vector one block larger than asked, used from its first aligned byte.
struct Aligned {
    raw: Vec<u8>,
    start: usize,
}

impl std::fmt::Debug for Aligned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aligned")
            .field("capacity", &(self.raw.len() - BLOCK))
            .finish_non_exhaustive()
    }
}

impl Aligned {
    /// `capacity` zeros (rounded up to whole blocks).
    fn zeroed(capacity: usize) -> Aligned {
        let raw = vec![0; capacity.next_multiple_of(BLOCK) + BLOCK];
        let start = (BLOCK - raw.as_ptr().addr() % BLOCK) % BLOCK;
        Aligned { raw, start }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        let end = self.raw.len() - BLOCK + self.start;
        &mut self.raw[self.start..end]
    }

    /// The buffer with room for `len` bytes, its first `keep` bytes kept when it has to grow.
    fn with_room(&mut self, len: usize, keep: usize) -> &mut [u8] {
        if self.raw.len() - BLOCK < len {
            let mut larger = Aligned::zeroed(len.max(2 * (self.raw.len() - BLOCK)));
            larger.bytes_mut()[..keep].copy_from_slice(&self.bytes_mut()[..keep]);
            *self = larger;
        }
        self.bytes_mut()
    }
}

/// The segment being appended to, the file of the next one, and what is not yet retired.
#[derive(Debug)]
pub(crate) struct Wal {
    dir: std::sync::Arc<WalDir>,
    file: File,
    seq: u64,
    /// Bytes of the current segment known good (durable, or nothing after them).
    len: u64,
    /// Bytes of the current segment's file written before (records, zeros or a previous life's
    /// leftovers): appends below it allocate nothing.
    filled: u64,
    /// The next segment's file, opened ahead (`next.log`).
    reserve: Option<File>,
    /// The newest finished segment, kept open to become the reserve once it is retired.
    finished: Option<(u64, File)>,
    /// The oldest segment not retired yet.
    oldest: u64,
    /// Abandoned segments, to be recorded by the next successful append.
    cuts: Vec<Cut>,
    /// The current segment may hold bytes after `len` that could not be removed.
    torn: bool,
    /// What each write is assembled in (the current block's first bytes kept between writes).
    buffer: Aligned,
    /// Zeros to fill ahead with, once the first fill needs them.
    zeros: Option<Aligned>,
}

impl Wal {
    /// Start segment `seq` (the segments before it are retired or replayed).
    pub(crate) fn start(dir: std::sync::Arc<WalDir>, seq: u64) -> io::Result<Wal> {
        let file = dir.open_next()?;
        let filled = file.metadata()?.len();
        dir.install(seq)?;
        let reserve = dir
            .open_next()
            .inspect_err(|e| warn!(%e, "cannot open the next log segment ahead of time"))
            .ok();
        debug!(seq, "first log segment");
        // Segments a start kept (for a shipper) are retired like the ones written from now on.
        let oldest = segments(dir.path())?
            .first()
            .map_or(seq, |(s, _)| (*s).min(seq));
        Ok(Wal {
            dir,
            file,
            seq,
            len: 0,
            filled,
            reserve,
            finished: None,
            oldest,
            cuts: Vec::new(),
            torn: false,
            buffer: Aligned::zeroed(64 * 1024),
            zeros: None,
        })
    }

    /// The current segment's sequence number.
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// Bytes written to the current segment.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Prepare an append: make sure nothing torn precedes it (truncating or abandoning a segment a
    /// failed append left torn), and put the frames of pending cuts into `out`. Returns the segment
    /// sequence number to encode the records for.
    pub(crate) fn begin(&mut self, out: &mut Vec<u8>) -> io::Result<u64> {
        if self.torn {
            self.repair()?;
        }
        for cut in &self.cuts {
            // 20 bytes: never too large.
            let _ = encode(out, self.seq, &cut.payload());
        }
        Ok(self.seq)
    }

    /// Append frames encoded for this segment (by way of [`Wal::begin`]) and make them durable.
    /// On failure nothing of them will be replayed.
    pub(crate) fn append_sync(&mut self, frames: &[u8]) -> io::Result<()> {
        let end = self.len + frames.len() as u64;
        let result = self.write_frames(frames).and_then(|()| {
            if end > self.filled {
                self.fill_ahead(end);
            }
            self.file.sync_data()
        });
        match result {
            Ok(()) => {
                self.advance(end);
                self.cuts.clear();
                Ok(())
            }
            Err(e) => {
                self.torn = true;
                if let Err(e) = self.repair() {
                    error!(%e, seq = self.seq, "cannot cut the failed write off the log; retrying before the next one");
                }
                Err(e)
            }
        }
    }

    /// Write zeros after `end` (the end of the records being appended), as many as the file has
    /// bytes (at least [`FILL_MIN`], at most [`FILL_MAX`]). Best effort: on failure (a full disk)
    /// the records are still appended, into a file that grows with them.
    fn fill_ahead(&mut self, end: u64) {
        // The write of the records already covered the rest of their last block.
        let mut at = end.next_multiple_of(BLOCK as u64);
        let target = end + end.clamp(FILL_MIN, FILL_MAX);
        let target = target - target % BLOCK as u64;
        let zeros = self.zeros.get_or_insert_with(|| Aligned::zeroed(ZEROS));
        while at < target {
            let n = (target - at).min(ZEROS as u64) as usize;
            if let Err(e) = write_at(&self.file, &zeros.bytes_mut()[..n], at) {
                debug!(%e, seq = self.seq, "cannot fill the log segment ahead");
                break;
            }
            at += n as u64;
        }
        self.filled = self.filled.max(at);
    }

    /// Write `frames` after the segment's `len` bytes, in whole blocks: the block `len` falls in is
    /// written again, from the copy kept of its first bytes, and the last block is completed with
    /// zeros (which never validate as a frame, and which the next append overwrites). A block
    /// written again holds the same bytes before `len`, so a torn write of it cannot damage them.
    /// `len` does not move (see [`Wal::advance`]).
    fn write_frames(&mut self, frames: &[u8]) -> io::Result<()> {
        let start = self.len - self.len % BLOCK as u64;
        let head = (self.len - start) as usize;
        let total = head + frames.len();
        let padded = total.next_multiple_of(BLOCK);
        let buffer = self.buffer.with_room(padded, head);
        buffer[head..total].copy_from_slice(frames);
        buffer[total..padded].fill(0);
        write_at(&self.file, &buffer[..padded], start)
    }

    /// The frames [`Wal::write_frames`] wrote are good up to `end`: keep the first bytes of the
    /// block `end` falls in for the next write.
    fn advance(&mut self, end: u64) {
        let start = self.len - self.len % BLOCK as u64;
        let last = end - end % BLOCK as u64;
        let from = (last - start) as usize;
        let to = (end - start) as usize;
        self.buffer.bytes_mut().copy_within(from..to, 0);
        self.len = end;
    }

    /// Remove what a failed append may have left after `len`: truncate, or abandon the segment.
    fn repair(&mut self) -> io::Result<()> {
        match self
            .file
            .set_len(self.len)
            .and_then(|()| self.file.sync_all())
        {
            Ok(()) => {
                self.torn = false;
                self.filled = self.len;
                debug!(seq = self.seq, len = self.len, "failed write truncated");
                Ok(())
            }
            Err(e) => {
                warn!(%e, seq = self.seq, "cannot truncate the failed write; abandoning the segment");
                self.rotate()?;
                self.write_cuts();
                Ok(())
            }
        }
    }

    /// Record the pending cuts at the start of a fresh segment now rather than with the next batch,
    /// so a crash before that batch does not replay the abandoned segment's torn frames either. On
    /// failure they stay pending (and the segment is repaired before the next append).
    fn write_cuts(&mut self) {
        let mut out = Vec::new();
        for cut in &self.cuts {
            // 20 bytes: never too large.
            let _ = encode(&mut out, self.seq, &cut.payload());
        }
        let end = self.len + out.len() as u64;
        match self.write_frames(&out).and_then(|()| self.file.sync_data()) {
            Ok(()) => {
                self.advance(end);
                self.cuts.clear();
            }
            Err(e) => {
                self.torn = true;
                warn!(%e, seq = self.seq, "cannot record where the abandoned segment ends yet");
            }
        }
    }

    /// Continue in a new segment; returns the sequence number of the one just finished.
    pub(crate) fn rotate(&mut self) -> io::Result<u64> {
        let file = match self.reserve.take() {
            Some(file) => file,
            None => self.dir.open_next()?,
        };
        let next = self.seq + 1;
        if let Err(e) = self.dir.install(next) {
            self.reserve = Some(file);
            return Err(e);
        }
        let finished = self.seq;
        if self.torn {
            self.cuts.push(Cut {
                seq: finished,
                len: self.len,
            });
            self.torn = false;
        }
        // Unknown (fstat failed): the first append fills ahead.
        self.filled = file.metadata().map_or(0, |m| m.len());
        let old = std::mem::replace(&mut self.file, file);
        self.finished = Some((finished, old));
        self.seq = next;
        self.len = 0;
        debug!(seq = next, "new log segment");
        Ok(finished)
    }

    /// Retire the finished segments up to and including `seq` (a checkpoint covers them): the newest
    /// one's file becomes the reserve if there is none, the others are deleted.
    pub(crate) fn retire_through(&mut self, seq: u64) {
        let Some(before_current) = self.seq.checked_sub(1) else {
            return;
        };
        let last = seq.min(before_current);
        while self.oldest <= last {
            let s = self.oldest;
            self.oldest += 1;
            let path = segment_path(&self.dir.path, s);
            let recycle =
                self.reserve.is_none() && self.finished.as_ref().is_some_and(|f| f.0 == s);
            let result = if recycle {
                fs::rename(&path, self.dir.path.join(NEXT)).map(|()| {
                    self.reserve = self.finished.take().map(|(_, f)| f);
                })
            } else {
                fs::remove_file(&path)
            };
            match result {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => warn!(%e, seq = s, "cannot retire a log segment"),
            }
        }
        if self.finished.as_ref().is_some_and(|f| f.0 <= last) {
            self.finished = None;
        }
    }

    /// After the final checkpoint: retire every segment, the current one too.
    pub(crate) fn retire_all(mut self) {
        let current = self.seq;
        if let Some(before_current) = current.checked_sub(1) {
            self.retire_through(before_current);
        }
        let path = segment_path(&self.dir.path, current);
        let result = if self.reserve.is_none() {
            fs::rename(&path, self.dir.path.join(NEXT))
        } else {
            fs::remove_file(&path)
        };
        if let Err(e) = result {
            warn!(%e, seq = current, "cannot retire the last log segment");
        } else {
            info!(seq = current, "write-ahead log retired");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;

    fn frames(seq: u64, payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            encode(&mut out, seq, p).unwrap();
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

    /// Item 1 of issue 9: the encoder refuses exactly what the decoder would not read back, so
    /// nothing is acked that replay would treat as corruption (losing it and every later frame).
    #[test]
    fn encode_refuses_exactly_what_decode_refuses() {
        let largest = vec![b'x'; MAX_PAYLOAD];
        let mut out = Vec::new();
        encode(&mut out, 1, &largest).unwrap();
        encode(&mut out, 1, b"after").unwrap();
        let (got, outcome) = replay(&out, 1);
        assert_eq!(outcome, Replayed { frames: 2, rest: 0 });
        assert_eq!(got[1], b"after");
        drop((got, largest));

        let mut out = frames(1, &[b"before"]);
        let written = out.len();
        let too_large = vec![b'x'; MAX_PAYLOAD + 1];
        assert_eq!(
            encode(&mut out, 1, &too_large),
            Err(TooLarge {
                len: MAX_PAYLOAD + 1
            })
        );
        assert_eq!(out.len(), written, "nothing of a refused frame is written");
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

    proptest! {
        /// Item 19 of issue 9: damage anywhere in a frame — any bit of its header or payload, the
        /// last payload byte included — and replay stops exactly there: the frames before it are
        /// read whole, nothing of it or after it is. The same for a cut at every offset.
        #[test]
        fn replay_stops_exactly_at_the_damaged_frame(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..5),
            seq in any::<u64>(),
            damaged in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let mut bytes = Vec::new();
            let mut starts = Vec::new();
            for p in &payloads {
                starts.push(bytes.len());
                encode(&mut bytes, seq, p).unwrap();
            }
            let target = damaged.index(payloads.len());
            let frame = starts[target]..starts[target] + HEADER + payloads[target].len();
            for at in frame.clone() {
                let mut flipped = bytes.clone();
                flipped[at] ^= 1 << bit;
                let (got, outcome) = replay(&flipped, seq);
                prop_assert_eq!(&got[..], &payloads[..target], "bit {} of byte {} flipped", bit, at);
                prop_assert_eq!(outcome.rest, flipped.len() - frame.start);
            }
            for cut in 0..bytes.len() {
                let whole = starts.iter().zip(&payloads).filter(|(s, p)| *s + HEADER + p.len() <= cut).count();
                let (got, _) = replay(&bytes[..cut], seq);
                prop_assert_eq!(&got[..], &payloads[..whole], "cut at {}", cut);
            }
        }
    }

    #[test]
    fn cut_frames_read_back_and_are_not_records() {
        let cut = Cut { seq: 7, len: 1234 };
        assert_eq!(Cut::of(&cut.payload()), Some(cut));
        assert_eq!(Cut::of(b"{\"serial_number\":\"x\"}"), None);
        assert_eq!(Cut::of(&cut.payload()[..19]), None);
    }

    /// A log started at segment `seq` in a new directory `wal` of a temporary directory.
    fn fresh(seq: u64) -> (tempfile::TempDir, PathBuf, Wal) {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        let wal = Wal::start(Arc::new(WalDir::open(&wal_dir).unwrap()), seq).unwrap();
        (dir, wal_dir, wal)
    }

    /// Rotation takes the file opened ahead; retiring makes a finished segment's file the next one,
    /// so the log cycles through the files it holds; leftovers of a file's previous life never
    /// validate.
    #[test]
    fn segments_are_recycled_and_their_leftovers_ignored() {
        let (_dir, wal_dir, mut wal) = fresh(7);
        let append = |wal: &mut Wal, payloads: &[&[u8]]| {
            let mut out = Vec::new();
            let seq = wal.begin(&mut out).unwrap();
            for p in payloads {
                encode(&mut out, seq, p).unwrap();
            }
            wal.append_sync(&out).unwrap();
        };
        append(&mut wal, &[b"a"]);
        assert_eq!(wal.rotate().unwrap(), 7);
        append(
            &mut wal,
            &[b"a long record from segment eight", b"and another"],
        );
        assert_eq!(wal.rotate().unwrap(), 8);
        let seqs = |wal_dir: &Path| -> Vec<u64> {
            segments(wal_dir)
                .unwrap()
                .into_iter()
                .map(|(s, _)| s)
                .collect()
        };
        assert_eq!(seqs(&wal_dir), [7, 8, 9]);

        wal.retire_through(8);
        assert!(wal_dir.join(NEXT).exists());
        assert_eq!(seqs(&wal_dir), [9]);
        // Never the current segment.
        wal.retire_through(100);
        assert_eq!(seqs(&wal_dir), [9]);

        // Segment 10 reuses segment 8's file and writes a shorter frame over it: what is left of
        // segment 8 after it does not validate.
        assert_eq!(wal.rotate().unwrap(), 9);
        assert!(!wal_dir.join(NEXT).exists());
        append(&mut wal, &[b"c"]);
        let bytes = fs::read(segment_path(&wal_dir, 10)).unwrap();
        let (got, outcome) = replay(&bytes, 10);
        assert_eq!(got, [b"c".to_vec()]);
        assert!(outcome.rest > 0, "leftovers of segment 8 are there");
        assert_eq!(wal.seq(), 10);
        assert_eq!(wal.len(), (HEADER + 1) as u64);

        wal.retire_all();
        assert!(seqs(&wal_dir).is_empty());
    }

    /// A fresh segment's file is written ahead of its records with zeros, doubling up to
    /// [`FILL_MAX`]: appends overwrite blocks the file has. Replay reads the records, not the zeros.
    #[test]
    fn segments_are_filled_ahead_with_zeros() {
        let (_dir, wal_dir, mut wal) = fresh(3);
        let size = || fs::metadata(segment_path(&wal_dir, 3)).unwrap().len();
        assert_eq!(size(), 0, "a fresh file");
        let record = vec![b'r'; 32 * 1024];
        let mut written = Vec::new();
        let mut sizes = vec![];
        while wal.len() < 3 * FILL_MAX {
            let mut out = Vec::new();
            let seq = wal.begin(&mut out).unwrap();
            encode(&mut out, seq, &record).unwrap();
            wal.append_sync(&out).unwrap();
            written.push(record.clone());
            let (len, size) = (wal.len(), size());
            assert!(size >= len, "the records fit in what was filled");
            assert!(size - len <= FILL_MAX, "at most FILL_MAX ahead");
            if sizes.last() != Some(&size) {
                sizes.push(size);
            }
        }
        let first = (HEADER + record.len()) as u64;
        // Whole blocks are written: the fill ends at the last block boundary within reach.
        assert_eq!(sizes[0], (first + FILL_MIN) / BLOCK as u64 * BLOCK as u64);
        // The fill doubles with the file, then stays at FILL_MAX: few size changes, not one per append.
        assert!(sizes.len() < 10, "{sizes:?}");
        let steps: Vec<u64> = sizes.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(steps.iter().all(|s| *s <= FILL_MAX + first), "{steps:?}");
        assert!(steps.iter().any(|s| *s >= FILL_MAX), "{steps:?}");
        let (got, outcome) = replay(&fs::read(segment_path(&wal_dir, 3)).unwrap(), 3);
        assert_eq!(got, written);
        assert_eq!(outcome.rest as u64, size() - wal.len());
    }

    /// Appends are whole-block writes that write the block the last one ended in again: replay
    /// reads exactly the frames appended, whatever their sizes (the buffer grows, keeping the head
    /// of the current block), and the file is written directly where its file system allows it.
    #[test]
    fn appends_of_any_size_read_back_through_whole_block_writes() {
        let (dir, wal_dir, mut wal) = fresh(1);
        let direct_allowed = OpenOptions::new()
            .create(true)
            .write(true)
            .custom_flags(direct_flag())
            .open(dir.path().join("probe"))
            .is_ok();
        let flags = rustix::fs::fcntl_getfl(&wal.file).unwrap();
        assert_eq!(
            flags.contains(rustix::fs::OFlags::DIRECT),
            direct_allowed,
            "segments are written directly exactly where the file system allows it"
        );
        let mut written: Vec<Vec<u8>> = Vec::new();
        for (i, size) in [
            1,
            BLOCK - 2 * HEADER,
            BLOCK,
            5000,
            0,
            70_000,
            3,
            2 * BLOCK - 1,
            200_000,
        ]
        .into_iter()
        .enumerate()
        {
            let payload: Vec<u8> = (0..size).map(|b| (b * 7 + i) as u8).collect();
            let mut out = Vec::new();
            let seq = wal.begin(&mut out).unwrap();
            encode(&mut out, seq, &payload).unwrap();
            wal.append_sync(&out).unwrap();
            written.push(payload);
            let bytes = fs::read(segment_path(&wal_dir, 1)).unwrap();
            let (got, outcome) = replay(&bytes, 1);
            assert_eq!(got, written, "after {} appends", i + 1);
            assert_eq!(outcome.rest as u64, bytes.len() as u64 - wal.len());
        }
    }

    /// Item 5 of issue 9: missing ancestors are created too.
    #[test]
    fn create_dir_durable_creates_missing_ancestors() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a").join("b").join("c");
        create_dir_durable(&deep).unwrap();
        assert!(deep.is_dir());
        create_dir_durable(&deep).unwrap();
    }
}
