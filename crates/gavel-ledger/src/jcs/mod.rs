//! RFC 8785 JSON Canonicalization Scheme (JCS) for any `Serialize` value (a
//! `serde_json::Value` or a typed body), written straight into bytes.
//!
//! Written here rather than pulled in because the ledger's tamper evidence rests
//! on these bytes being stable forever: the rules are short, and owning them
//! lets the tests pin every corner (number formatting, UTF-16 key order).

use serde_json::Number;
use std::fmt;

/// Largest integer magnitude an IEEE 754 double represents exactly (2^53).
/// JCS numbers are doubles; larger integers would be silently rounded, so they
/// are refused instead of changing the recorded value.
pub const MAX_SAFE_INTEGER: u64 = 9_007_199_254_740_992;

/// Why a value has no canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JcsError {
    /// An integer outside +-2^53 cannot be represented exactly as a JCS number.
    UnsafeInteger(String),
    /// A number serde_json holds that is neither integer nor finite double.
    BadNumber(String),
    /// An object has this key twice; its canonical form would be ambiguous.
    DuplicateKey(String),
    /// The value cannot be written as JSON: its `Serialize` failed (or went on after an
    /// error), an object key is not a string, a number or a boolean, or it is serde_json's
    /// raw JSON.
    Serialize(String),
}

impl fmt::Display for JcsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JcsError::UnsafeInteger(n) => {
                write!(f, "integer {n} is outside the exactly representable range (+-2^53); encode it as a string")
            }
            JcsError::BadNumber(n) => write!(f, "number {n} has no canonical JSON form"),
            JcsError::DuplicateKey(k) => write!(f, "an object has the key `{k}` twice"),
            JcsError::Serialize(e) => write!(f, "cannot be written as JSON: {e}"),
        }
    }
}

impl std::error::Error for JcsError {}

mod check;
mod serializer;

pub(crate) use check::{check, Defect, Visit};

pub use serializer::{to_vec, write, write_visiting_members};

/// Orders strings by UTF-16 code units. UTF-8 byte order agrees except when
/// a character above the BMP (lead byte 0xF0..0xF4) meets one in
/// U+E000..U+FFFF (lead byte 0xEE or 0xEF), so bytes are compared directly
/// unless such lead bytes occur.
fn utf16_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let needs_utf16 = |s: &str| s.bytes().any(|c| c >= 0xEE);
    if needs_utf16(a) || needs_utf16(b) {
        a.encode_utf16().cmp(b.encode_utf16())
    } else {
        a.as_bytes().cmp(b.as_bytes())
    }
}

/// Whether a key's bytes between the quotes order as its UTF-16 code units do: no escapes, and
/// no lead byte from 0xEE up (see [`utf16_cmp`]). Plain keys are ordered by their bytes.
fn is_plain_key(inner: &[u8]) -> bool {
    // Keys are nearly always ASCII, which two word-at-a-time scans settle.
    if inner.is_ascii() {
        return !inner.contains(&b'\\');
    }
    inner.iter().all(|&b| b != b'\\' && b < 0xEE)
}

/// Orders two key literals (quotes included) by their texts, escapes undone: for keys that are
/// not both plain.
fn literal_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let unescaped = |bytes: &[u8]| serde_json::from_slice::<String>(bytes).unwrap_or_default();
    utf16_cmp(&unescaped(a), &unescaped(b))
}

/// Bytes a JSON string literal must escape: `"`, `\` and controls below U+0020.
static ESCAPED: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// Appends a JSON string literal escaped as ECMAScript `JSON.stringify` does
/// (RFC 8785 3.2.2.2): only `"`, `\` and controls below U+0020 are escaped.
#[inline]
pub fn write_string(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // The bytes since the last escape, copied in one piece when the next one (or the end) comes.
    let mut start = 0;
    loop {
        let i = next_escaped(bytes, start);
        let Some(&b) = bytes.get(i) else { break };
        out.extend_from_slice(bytes.get(start..i).unwrap_or_default());
        write_escape(out, b);
        start = i + 1;
    }
    out.extend_from_slice(bytes.get(start..).unwrap_or_default());
    out.push(b'"');
}

/// The index of the first byte from `at` on that a string literal escapes ([`ESCAPED`]), or
/// the length of `bytes` if there is none. Most strings in a record (ids, hashes, codes) escape
/// nothing: eight bytes at a time, and the word that holds one says where.
pub(crate) fn next_escaped(bytes: &[u8], mut at: usize) -> usize {
    while let Some(word) = bytes
        .get(at..at + 8)
        .and_then(|w| <[u8; 8]>::try_from(w).ok())
    {
        let escaped = escaped_bytes(u64::from_le_bytes(word));
        if escaped != 0 {
            return at + (escaped.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    while bytes.get(at).is_some_and(|&b| !ESCAPED[usize::from(b)]) {
        at += 1;
    }
    at.min(bytes.len())
}

/// The bytes of `word` that [`ESCAPED`] marks (a control byte below 0x20, `"` or `\\`), as the
/// high bit of each: nonzero exactly when one is there, and the lowest bit set is the first of
/// them (a wrong flag can only follow a right one, through a borrow). Word-at-a-time tests: a
/// byte below n, for n up to 0x80, leaves its high bit set in `(w - n * ONES) & !w`; a byte
/// equal to c is a zero byte of `w ^ c * ONES`. Bytes of 0x80 and above (UTF-8 beyond ASCII)
/// are never flagged.
fn escaped_bytes(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let below = |w: u64, n: u64| w.wrapping_sub(n * ONES) & !w & HIGHS;
    let control = below(word, 0x20);
    let quote = below(word ^ (u64::from(b'"') * ONES), 1);
    let backslash = below(word ^ (u64::from(b'\\') * ONES), 1);
    control | quote | backslash
}

fn write_escape(out: &mut Vec<u8>, b: u8) {
    match b {
        b'"' => out.extend_from_slice(b"\\\""),
        b'\\' => out.extend_from_slice(b"\\\\"),
        0x08 => out.extend_from_slice(b"\\b"),
        0x09 => out.extend_from_slice(b"\\t"),
        0x0a => out.extend_from_slice(b"\\n"),
        0x0c => out.extend_from_slice(b"\\f"),
        0x0d => out.extend_from_slice(b"\\r"),
        _ => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0x0f)]);
        }
    }
}

fn write_number(out: &mut Vec<u8>, n: &Number) -> Result<(), JcsError> {
    let int = n
        .as_u64()
        .map(|u| (u, false))
        .or_else(|| n.as_i64().map(|i| (i.unsigned_abs(), i < 0)));
    if let Some((magnitude, negative)) = int {
        // Printed from the value, not `n.to_string()`: under serde_json's
        // `arbitrary_precision` feature that would echo the input text.
        if magnitude <= MAX_SAFE_INTEGER {
            if negative {
                out.push(b'-');
            }
            out.extend_from_slice(itoa::Buffer::new().format(magnitude).as_bytes());
            return Ok(());
        }
        let text = if negative {
            format!("-{magnitude}")
        } else {
            magnitude.to_string()
        };
        // Beyond 2^53 a JCS number is the nearest double. Accept the integer
        // only if that double prints as the very same digits (as happens
        // when a large double was written, e.g. 389761334621997900), so the
        // canonical text never silently changes a value.
        let mut as_double = Vec::new();
        let f = magnitude as f64;
        write_f64(&mut as_double, if negative { -f } else { f });
        if as_double == text.as_bytes() {
            out.extend_from_slice(&as_double);
            return Ok(());
        }
        return Err(JcsError::UnsafeInteger(text));
    }
    match n.as_f64() {
        Some(f) if f.is_finite() => {
            write_f64(out, f);
            Ok(())
        }
        _ => Err(JcsError::BadNumber(n.to_string())),
    }
}

/// ECMAScript `Number.prototype.toString` for a finite double (ECMA-262
/// 7.1.12.1), which RFC 8785 3.2.2.3 adopts.
pub fn write_f64(out: &mut Vec<u8>, f: f64) {
    if f == 0.0 {
        // Both +0 and -0 serialise as "0".
        out.push(b'0');
        return;
    }
    if f < 0.0 {
        out.push(b'-');
    }
    // Rust's `{:e}` prints the shortest digit string that round-trips, which is
    // exactly the (k, s) ECMAScript asks for; only the layout differs.
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = match sci.split_once('e') {
        Some(parts) => parts,
        None => (sci.as_str(), "0"),
    };
    let mut digits: Vec<u8> = mantissa.bytes().filter(u8::is_ascii_digit).collect();
    let mut exp: i64 = exp.parse().unwrap_or(0);
    break_tie_to_even(&mut digits, &mut exp, f.abs());
    let k = digits.len() as i64;
    // ECMAScript's n: the value is 0.d1d2...dk * 10^n.
    let n = exp + 1;
    if k <= n && n <= 21 {
        out.extend_from_slice(&digits);
        out.extend(std::iter::repeat_n(b'0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        let (int, frac) = digits.split_at(n as usize);
        out.extend_from_slice(int);
        out.push(b'.');
        out.extend_from_slice(frac);
    } else if -6 < n && n <= 0 {
        out.extend_from_slice(b"0.");
        out.extend(std::iter::repeat_n(b'0', (-n) as usize));
        out.extend_from_slice(&digits);
    } else {
        let (first, rest) = digits.split_at(1);
        out.extend_from_slice(first);
        if !rest.is_empty() {
            out.push(b'.');
            out.extend_from_slice(rest);
        }
        out.push(b'e');
        out.push(if n > 0 { b'+' } else { b'-' });
        out.extend_from_slice((n - 1).unsigned_abs().to_string().as_bytes());
    }
}

/// ECMAScript picks the even digit string when two shortest candidates are
/// equally close to the double; Rust's shortest formatting does not promise
/// that. A tie needs the exact decimal expansion of `f` to continue with a
/// single 5 right after the shortest digits, which is rare, so the exact
/// (and slower) expansion is only computed when the last digit is odd.
fn break_tie_to_even(digits: &mut Vec<u8>, exp: &mut i64, f: f64) {
    if digits.last().is_none_or(|d| (d - b'0') % 2 == 0) || !tie_is_possible(f) {
        return;
    }
    exact_tie_break(digits, exp, f);
}

/// [`break_tie_to_even`] for an odd last digit, from the exact expansion of `f`.
fn exact_tie_break(digits: &mut Vec<u8>, exp: &mut i64, f: f64) {
    let k = digits.len();
    // 800 significant digits cover the longest exact expansion of a double
    // (about 767 digits, for subnormals).
    let exact = format!("{f:.800e}");
    let Some((mantissa, exact_exp)) = exact.split_once('e') else {
        return;
    };
    let ex: Vec<u8> = mantissa.bytes().filter(u8::is_ascii_digit).collect();
    let is_tie = ex.len() > k + 1 && ex[k] == b'5' && ex[k + 1..].iter().all(|&d| d == b'0');
    if !is_tie || exact_exp.parse::<i64>().ok() != Some(*exp) {
        return;
    }
    let truncated = &ex[..k];
    let mut candidate = truncated.to_vec();
    let mut cand_exp = *exp;
    if truncated == digits.as_slice() {
        // Rust rounded down to an odd digit: the even candidate is one up.
        let mut i = k;
        loop {
            if i == 0 {
                candidate.insert(0, b'1');
                cand_exp += 1;
                break;
            }
            i -= 1;
            if candidate[i] == b'9' {
                candidate[i] = b'0';
            } else {
                candidate[i] += 1;
                break;
            }
        }
    }
    while candidate.len() > 1 && candidate.last() == Some(&b'0') {
        candidate.pop();
    }
    let text = format!("0.{}e{}", String::from_utf8_lossy(&candidate), cand_exp + 1);
    if text.parse::<f64>().ok() == Some(f) {
        *digits = candidate;
        *exp = cand_exp;
    }
}

/// Whether a positive finite double can lie exactly halfway between two shortest digit strings.
/// That needs its exact decimal expansion to have one digit more than the shortest string, so at
/// most 18 significant digits. A double is m * 2^e with m odd: for e < 0 its expansion's
/// significant digits are those of m * 5^-e, for e >= 0 it is an integer, and integers below
/// 2^53 print exactly (every integer there is a double, so no shorter string round-trips). Most
/// fractions (0.7 as an f32 widens to 11744051 * 2^-24, whose expansion has 24 digits) are
/// ruled out here, before the 800-digit expansion in [`break_tie_to_even`].
fn tie_is_possible(f: f64) -> bool {
    let bits = f.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i64;
    let fraction = bits & ((1u64 << 52) - 1);
    let (mut m, mut e) = if biased == 0 {
        (fraction, -1074)
    } else {
        (fraction | (1u64 << 52), biased - 1075)
    };
    if m == 0 {
        return false;
    }
    let zeros = m.trailing_zeros();
    m >>= zeros;
    e += i64::from(zeros);
    if e >= 0 {
        // m * 2^e < 2^(bits of m + e): below 2^53 it prints exactly.
        return i64::from(64 - m.leading_zeros()) + e > 53;
    }
    match u32::try_from(-e) {
        Ok(fives) if fives <= 25 => u128::from(m) * 5u128.pow(fives) < 10u128.pow(18),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_ruled_out_of_ties_are_left_as_they_are() {
        // Odd last digits (where ties are looked for) among f32 fractions, their halves and
        // random doubles: whenever `tie_is_possible` says no, the exact test agrees.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut checked = 0;
        for i in 0..20_000u32 {
            let f = match i % 4 {
                0 => f64::from(i as f32 / 1000.0),
                1 => f64::from_bits(next() >> 2),
                2 => (next() % 1_000_000) as f64 / 1024.0,
                // Small odd numbers over powers of two: real ties among them (2^-25,
                // 2.98023223876953125e-8, lies halfway between two 17-digit strings that both
                // read back as it).
                _ => (1 + 2 * (next() % 64)) as f64 / 2f64.powi(1 + (next() % 40) as i32),
            };
            if !f.is_finite() || f <= 0.0 || tie_is_possible(f) {
                continue;
            }
            let sci = format!("{f:e}");
            let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
            let digits: Vec<u8> = mantissa.bytes().filter(u8::is_ascii_digit).collect();
            if digits.last().is_none_or(|d| (d - b'0') % 2 == 0) {
                continue;
            }
            let mut exact_digits = digits.clone();
            let mut exp: i64 = exp.parse().unwrap_or(0);
            let before = exp;
            // The exact test, without the shortcut.
            exact_tie_break(&mut exact_digits, &mut exp, f);
            assert_eq!((exact_digits, exp), (digits, before), "{f:e}");
            checked += 1;
        }
        assert!(checked > 5_000, "{checked}");
        // Short expansions (halves, eighths) and integers from 2^53 up stay candidates.
        for f in [0.5, 2.5, 0.375, 9007199254740993.0 * 2.0] {
            assert!(tie_is_possible(f), "{f}");
        }
    }

    #[test]
    fn the_word_test_finds_exactly_the_first_byte_that_is_escaped() {
        // Every pair of bytes at every two places of a word: the first escaped one is found,
        // whatever a borrow from it does to the bytes above.
        for first in 0..8 {
            for second in first + 1..8 {
                for a in 0..=255u8 {
                    for b in 0..=255u8 {
                        let mut word = *b"abcdefgh";
                        word[first] = a;
                        word[second] = b;
                        let expected = word
                            .iter()
                            .position(|&x| ESCAPED[usize::from(x)])
                            .unwrap_or(8);
                        assert_eq!(
                            next_escaped(&word, 0),
                            expected,
                            "{a:#04x} at {first}, {b:#04x} at {second}"
                        );
                    }
                }
            }
        }
        // Every string whose escapes fall at every offset of a word, past the end of a word,
        // or nowhere: escaped byte by byte as the table says.
        for len in 0..20 {
            for at in 0..len {
                for b in [b'"', b'\\', 0x00, 0x1f, b'\n'] {
                    let mut text = vec![b'x'; len];
                    text[at] = b;
                    let text = String::from_utf8(text).unwrap();
                    let mut out = Vec::new();
                    write_string(&mut out, &text);
                    assert_eq!(out, serde_json::to_vec(&text).unwrap(), "{text:?}");
                }
            }
        }
    }
    use serde_json::{json, Value};

    fn num(f: f64) -> String {
        let mut out = Vec::new();
        write_f64(&mut out, f);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn numbers_match_rfc8785_appendix_b() {
        // RFC 8785 Appendix B: IEEE 754 value (hex) -> expected serialisation.
        let cases: &[(u64, &str)] = &[
            (0x0000000000000000, "0"),
            (0x8000000000000000, "0"),
            (0x0000000000000001, "5e-324"),
            (0x8000000000000001, "-5e-324"),
            (0x7fefffffffffffff, "1.7976931348623157e+308"),
            (0xffefffffffffffff, "-1.7976931348623157e+308"),
            (0x4340000000000000, "9007199254740992"),
            (0xc340000000000000, "-9007199254740992"),
            (0x4430000000000000, "295147905179352830000"),
            (0x44b52d02c7e14af5, "9.999999999999997e+22"),
            (0x44b52d02c7e14af6, "1e+23"),
            (0x44b52d02c7e14af7, "1.0000000000000001e+23"),
            (0x444b1ae4d6e2ef4e, "999999999999999700000"),
            (0x444b1ae4d6e2ef4f, "999999999999999900000"),
            (0x444b1ae4d6e2ef50, "1e+21"),
            (0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"),
            (0x3eb0c6f7a0b5ed8d, "0.000001"),
            (0x41b3de4355555553, "333333333.3333332"),
            (0x41b3de4355555554, "333333333.33333325"),
            (0x41b3de4355555555, "333333333.3333333"),
            (0x41b3de4355555556, "333333333.3333334"),
            (0x41b3de4355555557, "333333333.33333343"),
            (0xbecbf647612f3696, "-0.0000033333333333333333"),
            (0x43143ff3c1cb0959, "1424953923781206.2"),
        ];
        for &(bits, want) in cases {
            assert_eq!(num(f64::from_bits(bits)), want, "bits {bits:#018x}");
        }
    }

    #[test]
    fn rfc8785_sorting_example() {
        // RFC 8785 3.2.3 sorting example: keys ordered by UTF-16 code units.
        let v: Value = serde_json::from_str(
            r#"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}"#,
        )
        .unwrap();
        let got = String::from_utf8(to_vec(&v).unwrap()).unwrap();
        let order: Vec<&str> = [
            "Carriage Return",
            "One",
            "Control",
            "Latin Small",
            "Euro Sign",
            "Emoji",
            "Hebrew",
        ]
        .to_vec();
        let mut last = 0;
        for name in order {
            let pos = got.find(name).unwrap();
            assert!(pos > last, "{name} out of order in {got}");
            last = pos;
        }
    }

    #[test]
    fn rfc8785_escaping_example() {
        // RFC 8785 3.2.2.2 example input and output.
        let v = json!({"string": "\u{20ac}$\u{000F}\u{000a}A'\u{0042}\u{0022}\u{005c}\\\"/"});
        let got = String::from_utf8(to_vec(&v).unwrap()).unwrap();
        assert_eq!(
            got,
            "{\"string\":\"\u{20ac}$\\u000f\\nA'B\\\"\\\\\\\\\\\"/\"}"
        );
    }

    #[test]
    fn rfc8785_main_example() {
        // RFC 8785 3.2.4 (with the literal 1E30 value and 4.50 etc).
        let v: Value = serde_json::from_str(
            r#"{"numbers":[333333333.33333329,1E30,4.50,2e-3,0.000000000000000000000000001],"string":"\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/","literals":[null,true,false]}"#,
        )
        .unwrap();
        let got = String::from_utf8(to_vec(&v).unwrap()).unwrap();
        assert_eq!(
            got,
            "{\"literals\":[null,true,false],\"numbers\":[333333333.3333333,1e+30,4.5,0.002,1e-27],\"string\":\"\u{20ac}$\\u000f\\nA'B\\\"\\\\\\\\\\\"/\"}"
        );
    }

    #[test]
    fn large_integers_are_kept_only_when_a_double_prints_them_exactly() {
        // 3.897613346219979e17 prints as these digits; reading them back as
        // an integer must canonicalise to the same text.
        assert_eq!(
            to_vec(&json!(389_761_334_621_997_900u64)).unwrap(),
            b"389761334621997900"
        );
        assert_eq!(
            to_vec(&json!(3.897613346219979e17)).unwrap(),
            b"389761334621997900"
        );
        assert_eq!(
            to_vec(&json!(-1_152_921_504_606_847_000i64)).unwrap(),
            b"-1152921504606847000"
        );
        // 2^60 is a double, but ECMAScript prints it as 1152921504606847000:
        // the integer's own digits would change, so it is refused.
        assert!(to_vec(&json!(1u64 << 60)).is_err());
    }

    #[test]
    fn unsafe_integers_are_refused() {
        assert!(to_vec(&json!(9_007_199_254_740_993u64)).is_err());
        assert!(to_vec(&json!(-9_007_199_254_740_993i64)).is_err());
        assert_eq!(
            to_vec(&json!(-9_007_199_254_740_992i64)).unwrap(),
            b"-9007199254740992"
        );
    }
}
