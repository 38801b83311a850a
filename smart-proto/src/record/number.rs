//! Numbers as the protocol reads and writes them: numeric strings, canonical JSON numbers (integral
//! values as integers), postcodes from numbers, connector counts.

use serde_json::{Number, Value};

pub(crate) use crate::bounds::MAX_SAFE_INTEGER;

/// Integral numbers below this magnitude are exact in an `f64` and are written as JSON integers.
pub(super) const EXACT_BELOW: f64 = 9_007_199_254_740_992.0;

/// A number written as text: `"357"`, `" 12.5 "`, `"-1e3"`. Surrounding whitespace is ignored;
/// `inf`, `NaN` and values that overflow are not numbers.
pub(crate) fn parse_number(text: &str) -> Option<f64> {
    let text = text.trim();
    let bytes = text.as_bytes();
    let unsigned = usize::from(matches!(bytes.first(), Some(b'+' | b'-')));
    // Rust's float syntax also takes `inf` and `NaN`; a device sending those has no number to report.
    if !matches!(bytes.get(unsigned), Some(b'0'..=b'9' | b'.')) {
        return None;
    }
    let value: f64 = text.parse().ok()?;
    // `+ 0.0` turns `-0` into `0`, so that zero has one form.
    value.is_finite().then_some(value + 0.0)
}

/// An integral `f64` that fits an `i64` exactly.
pub(super) fn integral(x: f64) -> Option<i64> {
    // -2^63 is representable; 2^63 is the first value too large.
    let in_range = (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&x);
    (in_range && x.fract() == 0.0).then_some(x as i64)
}

/// The canonical JSON form of a number: integral values that an `f64` holds exactly are integers
/// (`350`, not `350.0`).
pub(super) fn number_value(x: f64) -> Value {
    if x.abs() < EXACT_BELOW && x.fract() == 0.0 {
        Value::from(x as i64)
    } else {
        Number::from_f64(x).map_or(Value::Null, Value::Number)
    }
}

/// A number that [`number_value`] would give back unchanged: an integer below 2^53 in magnitude, or a
/// float with a fraction.
#[allow(clippy::inline_always, reason = "hot path, measured")]
#[inline(always)]
pub(super) fn is_canonical_number(n: &Number) -> bool {
    match n.as_i64() {
        Some(i) => i.unsigned_abs() < 1 << 53,
        // Below 2^53 the cast back and forth is exact for integral values only (and cheaper than
        // `fract`, a library call on baseline x86-64).
        #[allow(clippy::float_cmp, reason = "an exact test of integrality")]
        None => n.is_f64() && n.as_f64().is_some_and(|x| (x as i64) as f64 != x),
    }
}

/// The decimal text of an integral postcode number (`7445` → `"7445"`), or `None` for fractions.
pub(super) fn postcode_text(n: &Number) -> Option<String> {
    if n.is_f64() {
        let x = n.as_f64()?;
        if !x.is_finite() || x.fract() != 0.0 {
            return None;
        }
        // Rust prints integral floats without a fraction or exponent; `+ 0.0` drops `-0`.
        Some(format!("{}", x + 0.0))
    } else {
        Some(n.to_string())
    }
}

/// `pv_connectors` from a device: a count, so from 0 to 2^53−1 (PROTOCOL.md §6).
#[inline]
pub(super) fn is_connector_count(value: &Value) -> bool {
    value
        .as_i64()
        .is_some_and(|n| (0..=MAX_SAFE_INTEGER as i64).contains(&n))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use super::*;

    #[test]
    fn numbers_parse_from_text() {
        assert_eq!(parse_number("357"), Some(357.0));
        assert_eq!(parse_number(" 12.5 "), Some(12.5));
        assert_eq!(parse_number("-1e3"), Some(-1000.0));
        assert_eq!(parse_number("+.5"), Some(0.5));
        assert_eq!(
            parse_number("-0").map(f64::to_bits),
            Some(0.0_f64.to_bits())
        );
        for bad in [
            "", " ", "full", "inf", "-inf", "NaN", "infinity", "1e400", "0x10", "1_000", ".", "1 2",
        ] {
            assert_eq!(parse_number(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn numbers_are_canonical() {
        assert_eq!(number_value(350.0).to_string(), "350");
        assert_eq!(number_value(-0.0).to_string(), "0");
        assert_eq!(number_value(92.5).to_string(), "92.5");
        assert_eq!(number_value(1e300).to_string(), "1e+300");
        assert!(number_value(9_007_199_254_740_992.0).is_f64());
        assert!(number_value(9_007_199_254_740_991.0).is_i64());
        assert_eq!(number_value(f64::NAN), Value::Null);
    }

    #[test]
    fn connector_counts() {
        use serde_json::json;
        assert!(is_connector_count(&json!(0)));
        assert!(is_connector_count(&json!(MAX_SAFE_INTEGER)));
        assert!(!is_connector_count(&json!(-1)));
        assert!(!is_connector_count(&json!(MAX_SAFE_INTEGER + 1)));
    }
}
