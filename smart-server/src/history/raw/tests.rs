//! Unit tests of the raw tier.

#![allow(clippy::unwrap_used)]

use std::borrow::Cow;

use super::*;

fn raw() -> (tempfile::TempDir, Raw) {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::Config::new().path(dir.path()).open().unwrap();
    (dir, Raw::open(&db).unwrap())
}

fn change(serial: &str, ts_ms: i64, battery: f64) -> Change {
    Change {
        serial: Serial::new(serial).unwrap(),
        ts_ms,
        values: vec![(Cow::Borrowed("battery"), battery)],
    }
}

#[test]
fn samples_read_back_per_device_and_range_across_hours_and_parts() {
    let (_dir, raw) = raw();
    let base = 1_764_460_800_000; // an hour boundary
    // 0001: one sample a second for 2 h (parts fill up), ten seconds per log segment; 0002 in between.
    for seq in 0..720_i64 {
        let mut changes = Vec::new();
        for second in seq * 10..seq * 10 + 10 {
            changes.push(change("0001", base + second * 1000, second as f64));
            if second % 100 == 0 {
                changes.push(change("0002", base + second * 1000, -1.0));
            }
        }
        raw.absorb(seq as u64, &changes).unwrap();
    }
    let serial = Serial::new("0001").unwrap();
    let all = raw
        .read(&serial, &["battery"], (base, base + 7_200_000), usize::MAX)
        .unwrap();
    assert_eq!(all.len(), 7200);
    assert!(
        all.iter()
            .enumerate()
            .all(|(i, (ts, v))| *ts == base + i as i64 * 1000 && v[0] == Some(i as f64))
    );
    let window = (base + 3_599_500, base + 3_602_000);
    let some = raw
        .read(&serial, &["nothing", "battery"], window, 10)
        .unwrap();
    assert_eq!(
        some,
        [
            (base + 3_600_000, vec![None, Some(3600.0)]),
            (base + 3_601_000, vec![None, Some(3601.0)])
        ]
    );
    let capped = raw.read(&serial, &["battery"], (base, base + 7_200_000), 7199);
    assert!(matches!(capped, Err(ReadError::TooMany(7199))));
    let everything = (0, i64::MAX);
    let other = Serial::new("0002").unwrap();
    let other = raw
        .read(&other, &["battery"], everything, usize::MAX)
        .unwrap();
    assert_eq!(other.len(), 72);
    // A serial that is a prefix of another is not mixed up with it.
    let prefix = Serial::new("000").unwrap();
    assert!(
        raw.read(&prefix, &["battery"], everything, usize::MAX)
            .unwrap()
            .is_empty()
    );
}

/// Held changes are read from the moment they are handed over, exactly once while their write
/// runs (before and after the tree has them), after a failed write and once written; the write
/// makes one part per device and hour of all its segments, and edges see held changes too.
#[test]
fn held_changes_read_exactly_once_before_during_and_after_their_write() {
    let (_dir, raw) = raw();
    let base = 1_764_460_800_000; // an hour boundary
    let serial = Serial::new("0001").unwrap();
    let everything = (0, i64::MAX);
    let read = |raw: &Raw| -> Vec<i64> {
        raw.read(&serial, &["battery"], everything, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(ts, _)| ts)
            .collect()
    };
    raw.absorb(1, &[change("0001", base - 1000, 0.0)]).unwrap();
    // Segments 2–4: the end of one hour and the start of the next.
    raw.held()
        .hold((2..=4).map(|seq| (seq, change("0001", base + seq as i64 * 1000 - 3000, 1.0))));
    raw.held().hold([(4, change("0002", base, 2.0))]);
    let want = vec![base - 1000, base - 1000, base, base + 1000];
    assert_eq!(read(&raw), want, "held changes are read at once");
    let edges = raw
        .edges(&serial, ["battery"], (base - 500, base), 60_000)
        .unwrap();
    assert_eq!(edges.before, [Some((base - 1000, 1.0))], "the newest, held");
    assert_eq!(
        edges.after,
        [Some((base, 1.0))],
        "an edge from a held change"
    );

    // A write in progress: before and after the tree has the batch, each change once.
    let batch = raw.held().start().unwrap();
    raw.held().hold([(5, change("0001", base + 2000, 3.0))]);
    let mut want = want;
    want.push(base + 2000);
    assert_eq!(read(&raw), want);
    let tagged = batch.iter().flatten().map(|(seq, c)| (*seq, c));
    raw.absorb_tagged(tagged).unwrap();
    assert_eq!(read(&raw), want, "written and still held: read once");
    raw.held().failed();
    assert_eq!(
        read(&raw),
        want,
        "a failed write (the tree has it): read once"
    );
    raw.absorb_held().unwrap();
    assert_eq!(raw.held().len(), 0);
    assert_eq!(read(&raw), want, "written: read once");
    // One part per device and hour and write, tagged with the newest segment in it: 0001's
    // earlier hour (segment 1, then 2), its new hour (segments 3–4, then the rewrite after the
    // failure adds only segment 5), and 0002's.
    let parts: Vec<(u16, u64)> = raw
        .tree
        .iter()
        .map(|e| {
            let (k, v) = e.unwrap();
            part_header(&k, &v).unwrap()
        })
        .collect();
    assert_eq!(parts, [(0, 1), (1, 2), (0, 4), (1, 5), (0, 4)]);
}

/// One row per segment makes one small part each; a device's hour is compacted at 64 parts and
/// when the hour is compacted, into full parts, with every row kept in order.
#[test]
fn parts_are_compacted_without_losing_a_row() {
    let (_dir, raw) = raw();
    let serial = Serial::new("0001").unwrap();
    let parts = |raw: &Raw| raw.tree.scan_prefix(prefix(0, &serial)).count();
    for i in 0..100_i64 {
        raw.absorb(i as u64, &[change("0001", i * 1000, i as f64)])
            .unwrap();
    }
    // Compacted when the 65th part would have been added: 64 rows in one part, then 36 more.
    assert_eq!(parts(&raw), 37);
    let mut seen = Vec::new();
    raw.each_device(0, |serial, chunks| {
        seen.push((
            serial.clone(),
            chunks.iter().map(|c| c.rows.len()).sum::<usize>(),
        ));
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, [(serial.clone(), 100)]);
    assert_eq!(parts(&raw), 1);
    assert_eq!(raw.size(), size::scan(raw.tree.iter()).unwrap());
    let read = raw
        .read(&serial, &["battery"], (0, HOUR_MS), usize::MAX)
        .unwrap();
    let values: Vec<f64> = read.iter().map(|(_, v)| v[0].unwrap()).collect();
    assert_eq!(values, (0..100).map(f64::from).collect::<Vec<_>>());
    // Still idempotent after compaction.
    raw.absorb(99, &[change("0001", 99_000, 99.0)]).unwrap();
    raw.absorb(100, &[change("0001", 100_000, 100.0)]).unwrap();
    assert_eq!(
        raw.read(&serial, &["battery"], (0, HOUR_MS), usize::MAX)
            .unwrap()
            .len(),
        101
    );
}

/// The nearest samples on each side of a range, per field, within the gap, across hours and
/// parts.
#[test]
fn edges_are_the_nearest_samples_within_the_gap() {
    let (_dir, raw) = raw();
    let serial = Serial::new("0001").unwrap();
    let sample = |seq: u64, ts_ms: i64, values: Vec<(&'static str, f64)>| {
        let values = values
            .into_iter()
            .map(|(n, v)| (Cow::Borrowed(n), v))
            .collect();
        raw.absorb(
            seq,
            &[Change {
                serial: serial.clone(),
                ts_ms,
                values,
            }],
        )
        .unwrap();
    };
    let start = 10 * HOUR_MS;
    let end = start + HOUR_MS;
    sample(1, start - 700_000, vec![("a", 1.0), ("b", 1.0)]); // beyond a 10-minute gap
    sample(2, start - 500_000, vec![("a", 2.0)]);
    sample(3, start - 400_000, vec![("b", 3.0)]);
    sample(4, start - 1, vec![("c", 4.0)]);
    sample(5, start, vec![("a", 5.0)]); // inside
    sample(6, end - 1, vec![("b", 6.0)]); // inside
    sample(7, end, vec![("b", 7.0)]);
    sample(8, end + 100_000, vec![("a", 8.0), ("b", 8.5)]);
    sample(9, end + 600_001, vec![("c", 9.0)]); // beyond
    let edges = raw
        .edges(&serial, ["a", "b", "c"], (start, end), 600_000)
        .unwrap();
    assert_eq!(
        edges,
        Edges {
            before: [
                Some((start - 500_000, 2.0)),
                Some((start - 400_000, 3.0)),
                Some((start - 1, 4.0))
            ],
            after: [Some((end + 100_000, 8.0)), Some((end, 7.0)), None],
        }
    );
}

/// Where absorbing goes on is remembered per device; a restarted server (nothing remembered)
/// finds the same place in the tree.
#[test]
fn absorbing_after_a_restart_goes_on_where_the_tree_says() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::Config::new().path(dir.path()).open().unwrap();
    let serial = Serial::new("0001").unwrap();
    let first = Raw::open(&db).unwrap();
    for seq in 0..70_u64 {
        first
            .absorb(seq, &[change("0001", seq as i64 * 1000, seq as f64)])
            .unwrap();
    }
    let remembered = first.newest().get(&serial).copied().unwrap();
    let second = Raw::open(&db).unwrap();
    // Segments already in the tree are skipped, whichever way the place is found.
    second.absorb(69, &[change("0001", 69_000, 69.0)]).unwrap();
    assert_eq!(second.newest().get(&serial), None);
    second.absorb(70, &[change("0001", 70_000, 70.0)]).unwrap();
    let found = second.newest().get(&serial).copied().unwrap();
    assert_eq!(
        (found.hour, found.number),
        (remembered.hour, remembered.number + 1)
    );
    let read = second
        .read(&serial, &["battery"], (0, HOUR_MS), usize::MAX)
        .unwrap();
    let values: Vec<f64> = read.iter().map(|(_, v)| v[0].unwrap()).collect();
    assert_eq!(values, (0..=70).map(f64::from).collect::<Vec<_>>());
}

#[test]
fn absorbing_a_segment_again_changes_nothing() {
    let (_dir, raw) = raw();
    let serial = Serial::new("0001").unwrap();
    raw.absorb(1, &[change("0001", 1000, 1.0)]).unwrap();
    raw.absorb(2, &[change("0001", 2000, 2.0), change("0001", 3000, 3.0)])
        .unwrap();
    // A crash before the checkpoint's mark: the replay absorbs segments 1 and 2 again.
    raw.absorb(1, &[change("0001", 1000, 1.0)]).unwrap();
    raw.absorb(2, &[change("0001", 2000, 2.0), change("0001", 3000, 3.0)])
        .unwrap();
    raw.absorb(3, &[change("0001", 4000, 4.0)]).unwrap();
    let read = raw.read(&serial, &["battery"], (0, 10_000), 10).unwrap();
    let values: Vec<(i64, f64)> = read.iter().map(|(t, v)| (*t, v[0].unwrap())).collect();
    assert_eq!(values, [(1000, 1.0), (2000, 2.0), (3000, 3.0), (4000, 4.0)]);
}

#[test]
fn retention_deletes_whole_hours_before_the_cut() {
    let (_dir, raw) = raw();
    let serial = Serial::new("0001").unwrap();
    for h in 0..5_i64 {
        raw.absorb(h as u64, &[change("0001", h * HOUR_MS + 5, h as f64)])
            .unwrap();
    }
    assert_eq!(raw.retain(2 * HOUR_MS + 10).unwrap(), 2);
    let left = raw
        .read(&serial, &["battery"], (0, 5 * HOUR_MS), 10)
        .unwrap();
    assert_eq!(
        left.iter().map(|p| p.1[0].unwrap()).collect::<Vec<_>>(),
        [2.0, 3.0, 4.0]
    );
    assert_eq!(raw.retain(2 * HOUR_MS).unwrap(), 0);
    assert_eq!(raw.size(), size::scan(raw.tree.iter()).unwrap());
    assert_eq!(raw.size().1, 3);
}
