//! `GET /api/devices/{serial}/history`: one device's numeric fields over time, raw or in buckets, as
//! columnar JSON (what chart libraries take) or CSV.
//!
//! Parameters: `fields=a,b` (required: numeric fields, known or extras), `from`/`to` (epoch ms or RFC 3339;
//! default the last 24 h up to now), `agg` (`raw`, `avg`, `min`, `max`, `last`, `count`; default `avg`),
//! `step` (`30s`, `5m`, `1h`, `1d` or ms; default: the smallest of 1m, 5m, 15m, 1h, 6h, 1d giving at most
//! 1,000 buckets), `format` (`json` or `csv`). Buckets start at multiples of the step since the epoch; the
//! first is the one holding `from`, the last the one holding `to` (the current one, unfinished, included).

use std::fmt::Write as _;
use std::sync::OnceLock;

use serde_json::{Map, Value, json};
use smart_proto::{Record, Serial, Timestamp};

use super::raw::{Raw, ReadError, Rowed};

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
    raw: &Raw,
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
    let rows = match raw.read(serial, &names, (from, to), MAX_RAW) {
        Ok(rows) => rows,
        Err(ReadError::TooMany(n)) => {
            return bad(format!(
                "more than {n} raw samples in this range: ask for a shorter range or an aggregate (agg=avg&step=…)"
            ));
        }
        Err(ReadError::Store(e)) => {
            tracing::error!(%e, %serial, "history read failed");
            let body = json!({ "error": "the history could not be read" }).to_string();
            return (500, "application/json", body);
        }
    };
    let (ts, columns) = if request.agg == Agg::Raw {
        let ts = rows.iter().map(|(t, _)| *t).collect();
        let columns = (0..names.len())
            .map(|i| rows.iter().map(|(_, v)| v[i]).collect())
            .collect();
        (ts, columns)
    } else {
        buckets(&rows, names.len(), from, to, request.step_ms, request.agg)
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

/// Per field, what one bucket saw.
#[derive(Debug, Clone, Copy, Default)]
struct Acc {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    last: f64,
}

impl Acc {
    fn add(&mut self, v: f64) {
        if self.count == 0 {
            (self.min, self.max) = (v, v);
        }
        self.count += 1;
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.last = v;
    }

    fn value(&self, agg: Agg) -> Option<f64> {
        if agg == Agg::Count {
            // u64 → f64: counts stay far below 2^53.
            #[allow(clippy::cast_precision_loss)]
            return Some(self.count as f64);
        }
        if self.count == 0 {
            return None;
        }
        #[allow(clippy::cast_precision_loss)]
        let avg = self.sum / self.count as f64;
        Some(match agg {
            Agg::Avg => avg,
            Agg::Min => self.min,
            Agg::Max => self.max,
            Agg::Last | Agg::Raw | Agg::Count => self.last,
        })
    }
}

type Columns = (Vec<i64>, Vec<Vec<Option<f64>>>);

/// The rows in buckets of `step` from `from` (a multiple of it) to `to`.
fn buckets(rows: &[Rowed], fields: usize, from: i64, to: i64, step: i64, agg: Agg) -> Columns {
    let n = usize::try_from((to - from) / step).unwrap_or(0);
    let mut acc = vec![vec![Acc::default(); fields]; n];
    for (t, values) in rows {
        let Some(bucket) = usize::try_from((t - from) / step).ok().filter(|b| *b < n) else {
            continue;
        };
        for (i, v) in values.iter().enumerate() {
            if let Some(v) = v {
                acc[bucket][i].add(*v);
            }
        }
    }
    let ts = (0..n).map(|b| from + b as i64 * step).collect();
    let columns = (0..fields)
        .map(|i| acc.iter().map(|bucket| bucket[i].value(agg)).collect())
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
                let (ts, columns) = buckets(&rows, 1, 0, to, step, agg);
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
