//! Byte scans shared by the fast path and the Python-literal parser: JSON whitespace, the first byte a
//! string scan must stop at, and JSON unescaping.

/// JSON whitespace from `i` on; returns the index of the next other byte.
pub(crate) fn json_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// Index of the first `quote`, backslash or control byte, eight bytes at a time (frames are short, so
/// this beats a vectorized search, whose setup costs more than the scan).
#[allow(clippy::inline_always, reason = "hot path, measured")]
#[inline(always)]
pub(crate) fn find_special(b: &[u8], quote: u8) -> Option<usize> {
    find_special2(b, quote, quote)
}

/// [`find_special`] for either of two quotes.
#[allow(clippy::inline_always, reason = "hot path, measured")]
#[inline(always)]
pub(super) fn find_special2(b: &[u8], quote: u8, other: u8) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // High bit set in each byte of `v` below `n` (exact for the lowest such byte, which is all we use).
    let below = |v: u64, n: u8| v.wrapping_sub(ONES * u64::from(n)) & !v & HIGH;
    let mut i = 0;
    // Whole words while there are any: the input runs on past the string, so short strings are found
    // within a word or two.
    while let Some(word) = b.get(i..i + 8).and_then(|w| <[u8; 8]>::try_from(w).ok()) {
        let x = u64::from_le_bytes(word);
        let hits = below(x ^ (ONES * u64::from(quote)), 1)
            | below(x ^ (ONES * u64::from(other)), 1)
            | below(x ^ (ONES * u64::from(b'\\')), 1)
            | below(x, 0x20);
        if hits != 0 {
            return Some(i + (hits.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    // The last few bytes of the input, one at a time.
    while let Some(&c) = b.get(i) {
        if c == quote || c == other || c == b'\\' || c < 0x20 {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Append the meaning of an escaped JSON string's inside to `out`; `false` if an escape is invalid.
pub(crate) fn unescape_json(mut raw: &str, out: &mut String) -> bool {
    // `raw` comes from the envelope scan: no raw quotes or control bytes, so the first special byte is a backslash.
    while let Some(pos) = find_special(raw.as_bytes(), b'"') {
        out.push_str(&raw[..pos]);
        let after = &raw[pos + 1..];
        let Some(&c) = after.as_bytes().first() else {
            return false;
        };
        let simple = match c {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\x08',
            b'f' => '\x0c',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let Some((ch, len)) = json_u_escape(after) else {
                    return false;
                };
                out.push(ch);
                raw = &after[len..];
                continue;
            }
            _ => return false,
        };
        out.push(simple);
        raw = &after[1..];
    }
    out.push_str(raw);
    true
}

/// `uXXXX` (after the backslash), or a surrogate pair `uD83D\uDE00`: the char and the bytes used.
fn json_u_escape(after: &str) -> Option<(char, usize)> {
    let hex4 = |s: &str| {
        let digits = s.get(..4)?;
        if digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            u32::from_str_radix(digits, 16).ok()
        } else {
            None
        }
    };
    let code = hex4(after.get(1..)?)?;
    if (0xD800..0xDC00).contains(&code) {
        let low = hex4(after.get(5..)?.strip_prefix("\\u")?)?;
        if !(0xDC00..0xE000).contains(&low) {
            return None;
        }
        return Some((
            char::from_u32(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00))?,
            11,
        ));
    }
    Some((char::from_u32(code)?, 5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_special_finds_the_first_quote_backslash_or_control_byte() {
        assert_eq!(find_special(b"", b'"'), None);
        assert_eq!(find_special(b"abcdefghijklmnop", b'"'), None);
        for (i, special) in [b'"', b'\\', b'\n', 0x00, 0x1f].into_iter().enumerate() {
            for at in 0..20 {
                let mut s = vec![b'a'; 20];
                s[at] = special;
                s[(at + 3 + i) % 20] = b'"';
                let want = s.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20);
                assert_eq!(find_special(&s, b'"'), want, "{s:?}");
            }
        }
        // Bytes above 0x7f (UTF-8) and 0x20 itself are ordinary.
        assert_eq!(find_special("é ü €".as_bytes(), b'"'), None);
        assert_eq!(find_special(b"abcdefgh'", b'\''), Some(8));
    }
}
