//! Energy from power: the watt-hours of `power_income`, `power_inject` and `power_consumption`, integrated
//! from their samples with trapezoids, and `GET /api/devices/{serial}/energy` (kWh per UTC day).
//!
//! Power is taken as linear between two consecutive samples of a field at most the gap limit apart
//! (`--history-energy-gap-minutes`); across a longer gap nothing is assumed (the time counts as not
//! covered, and the answer says how much of each day was). A segment that crosses an hour or a day is
//! split where it crosses. When an hour is rolled up, its energy goes into the hourly tier as the field
//! `FIELD@wh` (sum: Wh, count: ms covered), so days older than the raw samples still have it.

use serde_json::{Value, json};
use smart_proto::{Serial, Timestamp};

use super::History;
use super::raw::ReadError;
use super::rollup::{HOUR_MS, Tier};

/// The power fields integrated.
pub(crate) const POWER: [&str; 3] = ["power_income", "power_inject", "power_consumption"];
const DAY_MS: i64 = 86_400_000;
/// Most days in one answer.
const MAX_DAYS: i64 = 366;

/// The rollup field holding a power field's energy.
pub(crate) fn energy_field(power: &str) -> String {
    format!("{power}@wh")
}

/// Watt-hours of `samples` (time-ordered `(ms, W)`) within `[start, end)`, and the ms covered: each
/// pair of consecutive samples at most `gap_ms` apart is a trapezoid, clipped to the window.
pub(crate) fn integrate(
    samples: &[(i64, f64)],
    (start, end): (i64, i64),
    gap_ms: i64,
) -> (f64, i64) {
    let mut wh = 0.0;
    let mut covered = 0;
    for pair in samples.windows(2) {
        let ((t0, p0), (t1, p1)) = (pair[0], pair[1]);
        if t1 <= t0 || t1 - t0 > gap_ms || t1 <= start || t0 >= end {
            continue;
        }
        let (a, b) = (t0.max(start), t1.min(end));
        // Power at a time inside the segment, linear between the samples.
        #[allow(clippy::cast_precision_loss)]
        let at = |t: i64| p0 + (p1 - p0) * (t - t0) as f64 / (t1 - t0) as f64;
        #[allow(clippy::cast_precision_loss)]
        let hours = (b - a) as f64 / HOUR_MS as f64;
        wh += f64::midpoint(at(a), at(b)) * hours;
        covered += b - a;
    }
    (wh, covered)
}

/// `GET /api/devices/{serial}/energy?from=DAY&to=DAY` (days `YYYY-MM-DD`, UTC, both included; default
/// the last 7 days up to today).
pub(crate) fn answer(
    history: &History,
    serial: &Serial,
    query: &[(String, String)],
    now_ms: i64,
) -> (u16, String) {
    let bad = |message: String| (400, json!({ "error": message }).to_string());
    let get = |key: &str| {
        query
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    if let Some((key, _)) = query.iter().find(|(k, _)| k != "from" && k != "to") {
        return bad(format!("unknown parameter {key:?}: expected from, to"));
    }
    let day = |name: &str, text: &str| {
        Timestamp::parse(&format!("{text}T00:00:00Z"))
            .map(|t| t.as_unix_micros().div_euclid(1000))
            .map_err(|_| format!("{name}: expected a day as YYYY-MM-DD, got {text:?}"))
    };
    let today = now_ms.div_euclid(DAY_MS) * DAY_MS;
    let to = match get("to").map(|t| day("to", t)).transpose() {
        Ok(to) => to.unwrap_or(today),
        Err(e) => return bad(e),
    };
    let from = match get("from").map(|t| day("from", t)).transpose() {
        Ok(from) => from.unwrap_or(to - 6 * DAY_MS),
        Err(e) => return bad(e),
    };
    if from > to {
        return bad("from must not be after to".to_owned());
    }
    if (to - from) / DAY_MS + 1 > MAX_DAYS {
        return bad(format!("at most {MAX_DAYS} days per request"));
    }
    match days(history, serial, from, to + DAY_MS) {
        Ok(body) => (200, body.to_string()),
        Err(e) => {
            tracing::error!(%e, %serial, "energy read failed");
            (
                500,
                json!({ "error": "the history could not be read" }).to_string(),
            )
        }
    }
}

/// Per day of `[from, to)`: kWh of each power field, and hours covered (of the first one with data).
fn days(history: &History, serial: &Serial, from: i64, to: i64) -> Result<Value, ReadError> {
    let gap = history.options.energy_gap_ms;
    let n = usize::try_from((to - from) / DAY_MS).unwrap_or(0);
    let mut wh = vec![[0.0_f64; 3]; n];
    let mut covered = vec![[0_i64; 3]; n];
    let day_of = |t: i64| usize::try_from((t - from) / DAY_MS).ok().filter(|d| *d < n);
    // Hours already rolled up: their stored energy.
    let rolled_end = history
        .rollups
        .rolled()?
        .map_or(i64::MIN, |h| (i64::from(h) + 1) * HOUR_MS)
        .clamp(from, to);
    for (start, fields) in history
        .rollups
        .read(Tier::Hour, serial, (from, rolled_end))?
    {
        let Some(d) = day_of(start) else { continue };
        for (i, power) in POWER.iter().enumerate() {
            if let Some(stats) = fields.get(&energy_field(power)) {
                wh[d][i] += stats.sum;
                covered[d][i] += i64::try_from(stats.count).unwrap_or(i64::MAX);
            }
        }
    }
    // The rest from raw samples, from one gap before (the segment that enters the range).
    let rows = history.raw.read(
        serial,
        &POWER,
        (rolled_end.saturating_sub(gap), to),
        super::api::MAX_RAW,
    )?;
    for (i, _) in POWER.iter().enumerate() {
        let samples: Vec<(i64, f64)> = rows.iter().filter_map(|(t, v)| Some((*t, v[i]?))).collect();
        let mut day = rolled_end;
        while day < to {
            let end = ((day.div_euclid(DAY_MS) + 1) * DAY_MS).min(to);
            let (energy, ms) = integrate(&samples, (day, end), gap);
            if let Some(d) = day_of(day) {
                wh[d][i] += energy;
                covered[d][i] += ms;
            }
            day = end;
        }
    }
    let mut body = serde_json::Map::new();
    body.insert("serial".into(), serial.as_str().into());
    let days: Vec<String> = (0..n)
        .map(|d| {
            let t = Timestamp::from_unix_micros((from + d as i64 * DAY_MS) * 1000);
            t.to_string().get(..10).unwrap_or_default().to_owned()
        })
        .collect();
    body.insert("days".into(), days.into());
    for (i, power) in POWER.iter().enumerate() {
        let kwh: Vec<f64> = wh.iter().map(|w| w[i] / 1000.0).collect();
        body.insert(format!("{power}_kwh"), kwh.into());
        #[allow(clippy::cast_precision_loss)]
        let hours: Vec<f64> = covered
            .iter()
            .map(|c| c[i] as f64 / HOUR_MS as f64)
            .collect();
        body.insert(format!("{power}_covered_hours"), hours.into());
    }
    body.insert("gap_limit_s".into(), (gap / 1000).into());
    body.insert(
        "note".into(),
        "power is integrated between samples at most gap_limit_s apart; longer gaps are not bridged (a day with less than 24 covered hours was partly unmeasured)".into(),
    );
    Ok(Value::Object(body))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::float_cmp)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_constant_kilowatt_for_an_hour_is_one_kilowatt_hour() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        let samples: Vec<(i64, f64)> = (0..=60).map(|m| (m * 60_000, 1000.0)).collect();
        let (wh, covered) = integrate(&samples, (0, HOUR_MS), 600_000);
        assert!(close(wh, 1000.0) && covered == HOUR_MS, "{wh} {covered}");
        // Half of it in each half hour.
        assert!(close(
            integrate(&samples, (0, HOUR_MS / 2), 600_000).0,
            500.0
        ));
        // A gap beyond the limit is not bridged.
        let gapped = [(0, 1000.0), (HOUR_MS, 1000.0)];
        assert_eq!(integrate(&gapped, (0, HOUR_MS), 600_000), (0.0, 0));
        // A ramp from 0 to 2 kW over an hour: 1 kWh, split 0.25 / 0.75 at the half hour.
        let ramp = [(0, 0.0), (HOUR_MS, 2000.0)];
        assert!(close(integrate(&ramp, (0, HOUR_MS), HOUR_MS).0, 1000.0));
        assert!(close(integrate(&ramp, (0, HOUR_MS / 2), HOUR_MS).0, 250.0));
        assert!(close(
            integrate(&ramp, (HOUR_MS / 2, HOUR_MS), HOUR_MS).0,
            750.0
        ));
    }

    /// Three simulated days at a constant 600 W, a sample a minute, after the hourly maintenance (raw
    /// samples of day 0 deleted): every day's energy, from stored hourly energy or raw samples.
    #[test]
    fn daily_energy_from_rollups_and_raw_samples() {
        use super::super::rollup::GRACE_MS;
        use super::super::samples::Change;
        use std::borrow::Cow;
        let (_dir, history) = super::super::scratch();
        let day0 = 1_764_460_800_000_i64;
        let serial = Serial::new("0001").unwrap();
        let minutes = 3 * 24 * 60;
        for minute in 0..minutes {
            let change = Change {
                serial: serial.clone(),
                ts_ms: day0 + minute * 60_000,
                values: vec![(Cow::Borrowed("power_income"), 600.0)],
            };
            history.raw.absorb(minute as u64, &[change]).unwrap();
        }
        let now = day0 + minutes * 60_000 + GRACE_MS + 600_000;
        history.maintain(
            now,
            &crate::metrics::Metrics::default(),
            &std::sync::atomic::AtomicBool::new(false),
        );
        let query = [
            ("from".to_owned(), "2025-11-30".to_owned()),
            ("to".to_owned(), "2025-12-02".to_owned()),
        ];
        let (status, body) = answer(&history, &serial, &query, now);
        assert_eq!(status, 200, "{body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            body["days"],
            json!(["2025-11-30", "2025-12-01", "2025-12-02"])
        );
        let kwh: Vec<f64> = body["power_income_kwh"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let expected = [14.4, 14.4, 0.6 * (24.0 - 1.0 / 60.0)];
        for (got, want) in kwh.iter().zip(expected) {
            assert!((got - want).abs() < 1e-9, "{kwh:?}");
        }
        let covered = body["power_income_covered_hours"][0].as_f64().unwrap();
        assert!((covered - 24.0).abs() < 1e-9, "{body}");
        assert_eq!(body["power_inject_kwh"], json!([0.0, 0.0, 0.0]));
        for (query, reason) in [
            (vec![("from", "30.11.2025")], "from: expected a day"),
            (
                vec![("from", "2025-12-02"), ("to", "2025-11-30")],
                "not be after",
            ),
            (
                vec![("from", "2020-01-01"), ("to", "2025-11-30")],
                "at most 366 days",
            ),
            (vec![("step", "1h")], "unknown parameter"),
        ] {
            let pairs: Vec<(String, String)> = query
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            let (status, body) = answer(&history, &serial, &pairs, now);
            assert_eq!(status, 400);
            assert!(body.contains(reason), "{body}");
        }
    }

    proptest! {
        /// Integrated in windows, the pieces add up to the whole, which equals a naive sum of
        /// trapezoids over the bridged pairs.
        #[test]
        fn windows_add_up_to_a_naive_integration(
            steps in proptest::collection::vec((1_i64..1_200_000, 0_u32..5000), 1..60),
            cuts in proptest::collection::vec(0_i64..40_000_000, 0..5),
        ) {
            let mut t = 0;
            let samples: Vec<(i64, f64)> = steps.iter().map(|(dt, p)| { t += dt; (t, f64::from(*p)) }).collect();
            let gap = 600_000;
            let naive: f64 = samples
                .windows(2)
                .filter(|w| w[1].0 - w[0].0 <= gap)
                .map(|w| f64::midpoint(w[0].1, w[1].1) * (w[1].0 - w[0].0) as f64 / HOUR_MS as f64)
                .sum();
            let mut bounds = cuts.clone();
            bounds.extend([0, t + 1]);
            bounds.sort_unstable();
            bounds.dedup();
            let pieces: f64 = bounds.windows(2).map(|w| integrate(&samples, (w[0], w[1]), gap).0).sum();
            prop_assert!((pieces - naive).abs() <= 1e-6 * naive.abs().max(1.0), "{} vs {}", pieces, naive);
        }
    }
}
