//! `GET /api/devices/{serial}/history`: one device's numeric fields over time, raw or in buckets, as
//! columnar JSON (what chart libraries take) or CSV.
//!
//! Parameters: `fields=a,b` (required: numeric fields, known or extras), `from`/`to` (epoch ms or RFC 3339;
//! default the last 24 h up to now), `agg` (`raw`, `avg`, `min`, `max`, `last`, `count`; default `avg`),
//! `step` (`30s`, `5m`, `1h`, `1d` or ms; default: the smallest of 1m, 5m, 15m, 1h, 6h, 1d giving at most
//! 1,000 buckets), `format` (`json` or `csv`). Buckets start at multiples of the step since the epoch; the
//! first is the one holding `from`, the last the one holding `to` (the current one, unfinished, included).
//!
//! Tiers: a step that is a whole number of hours reads the hourly rollups, else one that is a whole
//! number of 5 minutes the 5-minute rollups, for the hours already rolled up; the rest of the range (the
//! last hour or so, and any step finer than 5 minutes) comes from the raw samples.

use std::fmt::Write as _;
use std::sync::OnceLock;

use serde_json::{Map, Value, json};
use smart_proto::{Record, Serial, Timestamp};

use super::History;
use super::raw::{ReadError, Rowed};
use super::rollup::{Bucket, HOUR_MS, Stats, Tier};

/// Most buckets in one answer.
pub(crate) const MAX_POINTS: i64 = 10_000;
/// Most raw samples (messages) in one answer.
pub(crate) const MAX_RAW: usize = 100_000;
/// Most fields in one request.
const MAX_FIELDS: usize = 16;
const DAY_MS: i64 = 86_400_000;

/// An answer: status, content type, body.
pub(crate) type Answer = (u16, &'static str, String);

/// How samples are combined per bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Agg {
    Raw,
    Avg,
    Min,
    Max,
    Last,
    Count,
}

impl Agg {
    fn parse(s: &str) -> Option<Agg> {
        Some(match s {
            "raw" => Agg::Raw,
            "avg" => Agg::Avg,
            "min" => Agg::Min,
            "max" => Agg::Max,
            "last" => Agg::Last,
            "count" => Agg::Count,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Agg::Raw => "raw",
            Agg::Avg => "avg",
            Agg::Min => "min",
            Agg::Max => "max",
            Agg::Last => "last",
            Agg::Count => "count",
        }
    }
}

/// A checked request.
#[derive(Debug)]
struct Request {
    fields: Vec<String>,
    from_ms: i64,
    to_ms: i64,
    agg: Agg,
    step_ms: i64,
    csv: bool,
}

fn bad(message: impl Into<String>) -> Answer {
    let body = json!({ "error": message.into() }).to_string();
    (400, "application/json", body)
}

/// `12345` (ms since the epoch) or RFC 3339.
fn time(name: &str, text: &str) -> Result<i64, String> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    Timestamp::parse(text)
        .map(|t| t.as_unix_micros().div_euclid(1000))
        .map_err(|e| format!("{name}: expected epoch milliseconds or RFC 3339 time: {e}"))
}

/// `30s`, `5m`, `2h`, `1d` or milliseconds.
fn step(text: &str) -> Result<i64, String> {
    let err =
        || format!("step: expected a duration like 30s, 5m, 1h, 1d or milliseconds, got {text:?}");
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, ""),
    };
    let n: i64 = number.parse().map_err(|_| err())?;
    let unit_ms = match unit {
        "" | "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => DAY_MS,
        _ => return Err(err()),
    };
    let ms = n.checked_mul(unit_ms).ok_or_else(err)?;
    if !(1000..=366 * DAY_MS).contains(&ms) {
        return Err(format!("step: must be between 1s and 366d, got {text:?}"));
    }
    Ok(ms)
}

fn parse(query: &[(String, String)], now_ms: i64) -> Result<Request, String> {
    let get = |key: &str| {
        query
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    for (key, _) in query {
        if !["fields", "from", "to", "agg", "step", "format"].contains(&key.as_str()) {
            return Err(format!(
                "unknown parameter {key:?}: expected fields, from, to, agg, step, format"
            ));
        }
    }
    let fields: Vec<String> = get("fields")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(str::to_owned)
        .collect();
    if fields.is_empty() {
        return Err(
            "fields: name one or more numeric fields, e.g. fields=battery,power_income".to_owned(),
        );
    }
    if fields.len() > MAX_FIELDS {
        return Err(format!("fields: at most {MAX_FIELDS} per request"));
    }
    for field in &fields {
        if !numeric(field) {
            return Err(format!("fields: {field:?} is not a numeric field"));
        }
    }
    let to_ms = get("to").map_or(Ok(now_ms), |t| time("to", t))?;
    let from_ms = get("from").map_or(Ok(to_ms.saturating_sub(DAY_MS)), |t| time("from", t))?;
    if from_ms >= to_ms {
        return Err("from must be before to".to_owned());
    }
    let agg = match get("agg") {
        None => Agg::Avg,
        Some(a) => Agg::parse(a)
            .ok_or_else(|| format!("agg: expected raw, avg, min, max, last or count, got {a:?}"))?,
    };
    let span = to_ms.saturating_sub(from_ms);
    let step_ms = match get("step") {
        Some(s) => step(s)?,
        None => [60_000, 300_000, 900_000, 3_600_000, 21_600_000, DAY_MS]
            .into_iter()
            .find(|s| span / s < 1000)
            .unwrap_or(DAY_MS),
    };
    if agg != Agg::Raw {
        let points = span / step_ms + 2;
        if points > MAX_POINTS {
            return Err(format!(
                "{points} points at step {step_ms} ms: at most {MAX_POINTS}; ask for a larger step or a shorter range"
            ));
        }
    }
    let csv = match get("format") {
        None | Some("json") => false,
        Some("csv") => true,
        Some(f) => return Err(format!("format: expected json or csv, got {f:?}")),
    };
    Ok(Request {
        fields,
        from_ms,
        to_ms,
        agg,
        step_ms,
        csv,
    })
}

/// Known numeric fields and any extra (extras hold numbers or not, sample by sample).
fn numeric(field: &str) -> bool {
    // The field table's JSON (`/api/fields`), read once.
    static KNOWN: OnceLock<Vec<(String, bool)>> = OnceLock::new();
    let known = KNOWN.get_or_init(|| {
        let table: Value = serde_json::from_str(&Record::fields_json()).unwrap_or_default();
        table
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|f| {
                let name = f["name"].as_str()?.to_owned();
                Some((
                    name,
                    matches!(f["type"].as_str(), Some("number" | "integer")),
                ))
            })
            .collect()
    });
    match known.iter().find(|(name, _)| name == field) {
        Some((_, numeric)) => *numeric,
        None => field.len() <= 256,
    }
}

/// Answer a history request for `serial` (known to exist and be visible to the asker).
pub(crate) fn answer(
    history: &History,
    serial: &Serial,
    query: &[(String, String)],
    now_ms: i64,
) -> Answer {
    let request = match parse(query, now_ms) {
        Ok(request) => request,
        Err(message) => return bad(message),
    };
    let names: Vec<&str> = request.fields.iter().map(String::as_str).collect();
    // One more than the end: the rows of the last (unfinished) bucket.
    let (from, to) = if request.agg == Agg::Raw {
        (request.from_ms, request.to_ms)
    } else {
        let first = request.from_ms.div_euclid(request.step_ms) * request.step_ms;
        let last = request.to_ms.saturating_sub(1).div_euclid(request.step_ms) * request.step_ms;
        (first, last.saturating_add(request.step_ms))
    };
    let failed = |e: &dyn std::fmt::Display| {
        tracing::error!(%e, %serial, "history read failed");
        let body = json!({ "error": "the history could not be read" }).to_string();
        (500, "application/json", body)
    };
    // The rolled-up part of the range, from the coarsest tier the step is a multiple of.
    let tier = [Tier::Hour, Tier::FiveMinutes]
        .into_iter()
        .find(|t| request.agg != Agg::Raw && request.step_ms % t.step_ms() == 0);
    let mut rolled: Vec<Bucket> = Vec::new();
    let mut split = from;
    if let Some(tier) = tier {
        let end = match history.rollups.rolled() {
            Ok(rolled) => rolled.map_or(i64::MIN, |h| (i64::from(h) + 1) * HOUR_MS),
            Err(e) => return failed(&e),
        };
        split = end.clamp(from, to);
        rolled = match history.rollups.read(tier, serial, (from, split)) {
            Ok(buckets) => buckets,
            Err(e) => return failed(&e),
        };
    }
    let rows = match history.raw.read(serial, &names, (split, to), MAX_RAW) {
        Ok(rows) => rows,
        Err(ReadError::TooMany(n)) => {
            return bad(format!(
                "more than {n} raw samples in this range: ask for a shorter range or an aggregate (agg=avg&step=…)"
            ));
        }
        Err(ReadError::Store(e)) => return failed(&e),
    };
    let (ts, columns) = if request.agg == Agg::Raw {
        let ts = rows.iter().map(|(t, _)| *t).collect();
        let columns = (0..names.len())
            .map(|i| rows.iter().map(|(_, v)| v[i]).collect())
            .collect();
        (ts, columns)
    } else {
        let window = Window {
            from,
            to,
            step: request.step_ms,
        };
        buckets(&rolled, &rows, &names, window, request.agg)
    };
    if request.csv {
        (200, "text/csv; charset=utf-8", csv(&names, &ts, &columns))
    } else {
        let mut body = Map::new();
        body.insert("serial".into(), serial.as_str().into());
        body.insert("agg".into(), request.agg.name().into());
        let step = (request.agg != Agg::Raw).then_some(request.step_ms);
        body.insert("step_ms".into(), step.into());
        body.insert("from".into(), request.from_ms.into());
        body.insert("to".into(), request.to_ms.into());
        body.insert("ts".into(), ts.into());
        for (name, column) in names.iter().zip(columns) {
            body.insert((*name).to_owned(), column.into());
        }
        (200, "application/json", Value::Object(body).to_string())
    }
}

fn value(stats: Option<&Stats>, agg: Agg) -> Option<f64> {
    let Some(stats) = stats else {
        return (agg == Agg::Count).then_some(0.0);
    };
    // u64 → f64: counts stay far below 2^53.
    #[allow(clippy::cast_precision_loss)]
    let count = stats.count as f64;
    Some(match agg {
        Agg::Count => count,
        Agg::Avg => stats.sum / count,
        Agg::Min => stats.min,
        Agg::Max => stats.max,
        Agg::Last | Agg::Raw => stats.last,
    })
}

type Columns = (Vec<i64>, Vec<Vec<Option<f64>>>);

/// Buckets of `step` from `from` (a multiple of it) to `to`.
#[derive(Debug, Clone, Copy)]
struct Window {
    from: i64,
    to: i64,
    step: i64,
}

/// The stats of rolled-up buckets (earlier) and raw rows (later) in the window's buckets.
fn buckets(rolled: &[Bucket], rows: &[Rowed], names: &[&str], w: Window, agg: Agg) -> Columns {
    let n = usize::try_from((w.to - w.from) / w.step).unwrap_or(0);
    let mut acc: Vec<Vec<Option<Stats>>> = vec![vec![None; names.len()]; n];
    let mut add = |t: i64, i: usize, stats: &Stats| {
        if let Some(bucket) = usize::try_from((t - w.from) / w.step)
            .ok()
            .filter(|b| *b < n)
        {
            match &mut acc[bucket][i] {
                Some(seen) => seen.merge(stats),
                slot @ None => *slot = Some(*stats),
            }
        }
    };
    for (start, fields) in rolled {
        for (i, name) in names.iter().enumerate() {
            if let Some(stats) = fields.get(*name) {
                add(*start, i, stats);
            }
        }
    }
    for (t, values) in rows {
        for (i, v) in values.iter().enumerate() {
            if let Some(v) = v {
                add(*t, i, &Stats::of(*v));
            }
        }
    }
    let ts = (0..n).map(|b| w.from + b as i64 * w.step).collect();
    let columns = (0..names.len())
        .map(|i| {
            acc.iter()
                .map(|bucket| value(bucket[i].as_ref(), agg))
                .collect()
        })
        .collect();
    (ts, columns)
}

fn csv(names: &[&str], ts: &[i64], columns: &[Vec<Option<f64>>]) -> String {
    let mut out = String::from("ts_ms,time");
    for name in names {
        out.push(',');
        // Field names are JSON keys: quote them as CSV text.
        let _ = write!(out, "\"{}\"", name.replace('"', "\"\""));
    }
    out.push_str("\r\n");
    for (row, t) in ts.iter().enumerate() {
        let time = Timestamp::from_unix_micros(t.saturating_mul(1000));
        let _ = write!(out, "{t},{time}");
        for column in columns {
            out.push(',');
            if let Some(v) = column[row] {
                let _ = write!(out, "{v}");
            }
        }
        out.push_str("\r\n");
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn bad_requests_get_their_reason() {
        let now = 1_764_547_200_000; // 2025-12-01T00:00:00Z
        for (query, expected) in [
            (q(&[]), "fields: name one or more"),
            (q(&[("fields", "country")]), "not a numeric field"),
            (
                q(&[("fields", "battery"), ("from", "yesterday")]),
                "from: expected epoch",
            ),
            (
                q(&[("fields", "battery"), ("from", "10"), ("to", "5")]),
                "from must be before to",
            ),
            (
                q(&[("fields", "battery"), ("agg", "median")]),
                "agg: expected",
            ),
            (
                q(&[("fields", "battery"), ("step", "5x")]),
                "step: expected",
            ),
            (
                q(&[("fields", "battery"), ("step", "10")]),
                "between 1s and 366d",
            ),
            (
                q(&[("fields", "battery"), ("step", "1s"), ("from", "0")]),
                "at most 10000",
            ),
            (
                q(&[("fields", "battery"), ("format", "xml")]),
                "format: expected",
            ),
            (
                q(&[("fields", "battery"), ("color", "red")]),
                "unknown parameter",
            ),
        ] {
            let err = parse(&query, now).unwrap_err();
            assert!(err.contains(expected), "{query:?}: {err}");
        }
        let ok = parse(&q(&[("fields", "battery, x_extra")]), now).unwrap();
        assert_eq!(ok.fields, ["battery", "x_extra"]);
        assert_eq!(
            (ok.from_ms, ok.to_ms, ok.step_ms),
            (now - DAY_MS, now, 300_000)
        );
        let rfc = parse(
            &q(&[
                ("fields", "battery"),
                ("from", "2025-11-30T00:00:00Z"),
                ("step", "1h"),
            ]),
            now,
        )
        .unwrap();
        assert_eq!((rfc.from_ms, rfc.step_ms), (1_764_460_800_000, 3_600_000));
    }

    /// Three simulated days of a sample a minute, then the hourly maintenance (rollups, retention of
    /// raw samples after 48 h): every tier answers with what a naive computation over the samples
    /// gives, also where the raw samples are gone.
    #[test]
    fn three_days_answer_from_every_tier() {
        use super::super::samples::Change;
        use std::borrow::Cow;
        let (_dir, history) = super::super::scratch();
        let day0 = 1_764_460_800_000_i64;
        let minutes = 3 * 24 * 60;
        let value = |minute: i64| ((minute * 37) % 101) as f64 / 2.0;
        let serial = Serial::new("0001").unwrap();
        for minute in 0..minutes {
            let change = Change {
                serial: serial.clone(),
                ts_ms: day0 + minute * 60_000 + 7_000,
                values: vec![(Cow::Borrowed("battery"), value(minute))],
            };
            history.raw.absorb(minute as u64, &[change]).unwrap();
        }
        let end = day0 + minutes * 60_000;
        let now = end + super::super::rollup::GRACE_MS;
        history.maintain(
            now,
            &crate::metrics::Metrics::default(),
            &std::sync::atomic::AtomicBool::new(false),
        );
        let ask = |pairs: &[(&str, &str)]| -> Value {
            let (status, _, body) = answer(&history, &serial, &q(pairs), now);
            assert_eq!(status, 200, "{body}");
            serde_json::from_str(&body).unwrap()
        };
        let naive_avg = |first: i64, n: i64| (first..first + n).map(value).sum::<f64>() / n as f64;
        let (from, to) = (day0.to_string(), end.to_string());
        for (step, per) in [("1h", 60), ("5m", 5), ("1d", 1440)] {
            let body = ask(&[
                ("fields", "battery"),
                ("from", &from),
                ("to", &to),
                ("step", step),
            ]);
            let values = body["battery"].as_array().unwrap();
            assert_eq!(values.len() as i64, minutes / per, "{step}");
            for (b, v) in values.iter().enumerate() {
                let expected = naive_avg(b as i64 * per, per);
                assert!(
                    (v.as_f64().unwrap() - expected).abs() < 1e-9,
                    "{step} bucket {b}"
                );
            }
        }
        // Day 0's raw samples are gone (48 h): a step finer than 5 minutes finds nothing there…
        let day0_end = (day0 + DAY_MS).to_string();
        let body = ask(&[
            ("fields", "battery"),
            ("from", &from),
            ("to", &day0_end),
            ("step", "1m"),
        ]);
        assert!(
            body["battery"]
                .as_array()
                .unwrap()
                .iter()
                .all(Value::is_null)
        );
        let body = ask(&[
            ("fields", "battery"),
            ("from", &from),
            ("to", &day0_end),
            ("agg", "raw"),
        ]);
        assert!(body["ts"].as_array().unwrap().is_empty());
        // …while the last day's are all there.
        let last_day = (end - DAY_MS).to_string();
        let body = ask(&[
            ("fields", "battery"),
            ("from", &last_day),
            ("to", &to),
            ("agg", "raw"),
        ]);
        assert_eq!(body["ts"].as_array().unwrap().len(), 1440);
        let body = ask(&[
            ("fields", "battery"),
            ("from", &last_day),
            ("to", &to),
            ("agg", "max"),
            ("step", "1m"),
        ]);
        assert_eq!(body["battery"][0].as_f64(), Some(value(minutes - 1440)));
    }

    proptest! {
        /// Every aggregate equals the naive computation over the samples of its bucket.
        #[test]
        fn buckets_equal_a_naive_computation(
            samples in proptest::collection::vec((0_i64..10_000, proptest::option::of(-1000_i32..1000)), 0..200),
            step in 1_i64..3000,
        ) {
            let mut rows: Vec<Rowed> = samples.iter().map(|(t, v)| (*t, vec![v.map(f64::from)])).collect();
            rows.sort_by_key(|(t, _)| *t);
            let to = (10_000 / step + 1) * step;
            for agg in [Agg::Avg, Agg::Min, Agg::Max, Agg::Last, Agg::Count] {
                let window = Window { from: 0, to, step };
                let (ts, columns) = buckets(&[], &rows, &["x"], window, agg);
                prop_assert_eq!(ts.len() as i64, to / step);
                for (b, start) in ts.iter().enumerate() {
                    let inside: Vec<f64> = rows
                        .iter()
                        .filter(|(t, _)| *t >= *start && *t < start + step)
                        .filter_map(|(_, v)| v[0])
                        .collect();
                    let expected = match agg {
                        Agg::Count => Some(inside.len() as f64),
                        _ if inside.is_empty() => None,
                        Agg::Avg => Some(inside.iter().sum::<f64>() / inside.len() as f64),
                        Agg::Min => inside.iter().copied().reduce(f64::min),
                        Agg::Max => inside.iter().copied().reduce(f64::max),
                        Agg::Last | Agg::Raw => inside.last().copied(),
                    };
                    prop_assert_eq!(columns[0][b], expected, "{:?} bucket {}", agg, b);
                }
            }
        }
    }
}
