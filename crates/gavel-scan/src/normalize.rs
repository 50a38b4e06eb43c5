//! Text normalisation before injection scoring, with a map back to original byte offsets.
//!
//! Order: NFKC (per character, only for characters whose NFKC quick check is not "yes", because
//! the check is much cheaper than the transform), drop zero-width and bidi controls, fold
//! confusable Cyrillic/Greek letters to Latin, lower-case, collapse horizontal whitespace, then
//! fold leetspeak digits and symbols that sit inside words (`1gn0r3` -> `ignore`).
//!
//! Cost: ASCII goes through one loop that lower-cases eight bytes at a time while they are
//! letters, punctuation and single spaces, and one table lookup per byte otherwise; the map
//! back to the original is kept as breakpoints (where the normalised text stops being a plain
//! copy: a collapsed space, a dropped or folded character), so a typical prompt writes a handful
//! of them instead of four bytes of offset per byte of text. Other characters that are their
//! own normal form (most of them) are copied after one cached check.

use unicode_normalization::{is_nfkc_quick, IsNormalized, UnicodeNormalization};

/// Reusable buffers: normalised bytes and the map back to the original offsets.
#[derive(Debug, Default)]
pub(crate) struct Normalized {
    pub bytes: Vec<u8>,
    /// Breakpoints `(n, o)`, sorted by `n`, the first at `n = 0`: byte `n + j` of the normalised
    /// text comes from original offset `o + j`, up to the next breakpoint. Only character starts
    /// of the normalised text are looked up, and each maps to a character start of the original.
    marks: Vec<(u32, u32)>,
    /// Spare buffer for rebuilding `marks` when hyphens are removed.
    spare: Vec<(u32, u32)>,
    /// Positions of leetspeak candidates in `bytes` (valid unless `leet_all`).
    leet: Vec<u32>,
    /// `leet` is incomplete: fold by scanning every byte.
    leet_all: bool,
    /// Original length: the offset of the end of the normalised text.
    end: u32,
    /// Per-character verdicts of `char_is_plain`, direct-mapped; survives across texts.
    cache: Option<Box<[(char, bool); CACHE]>>,
}

/// Entries of the per-character cache.
const CACHE: usize = 128;

impl Normalized {
    /// Original offset of normalised byte `i` (the original length for `i` at or past the end).
    pub fn orig_of(&self, i: usize) -> usize {
        if i >= self.bytes.len() {
            return self.end as usize;
        }
        let k = self.marks.partition_point(|&(n, _)| n as usize <= i);
        match k.checked_sub(1).and_then(|k| self.marks.get(k)) {
            Some(&(n, o)) => o as usize + (i - n as usize),
            None => i,
        }
    }

    /// Original byte range of the normalised range `s..e`.
    pub fn original(&self, s: usize, e: usize, end_of_text: usize) -> std::ops::Range<usize> {
        let at = |i: usize| {
            if i >= self.bytes.len() {
                end_of_text
            } else {
                self.orig_of(i)
            }
        };
        let (start, end) = (at(s), at(e));
        start..end.max(start)
    }

    /// Records that normalised byte `w` comes from original offset `o`, unless the breakpoints
    /// already say so. `w` is never below the last breakpoint.
    #[inline]
    fn mark(&mut self, w: usize, o: usize) {
        push_mark(&mut self.marks, w, o);
    }
}

fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{FEFF}'
            | '\u{00AD}'
            | '\u{180E}'
            | '\u{061C}'
            | '\u{034F}'
            | '\u{FE00}'..='\u{FE0F}'
    )
}

/// Letters that render like Latin ones (a subset of Unicode's confusables for Cyrillic and Greek,
/// the scripts used in homoglyph attacks on English keywords).
fn confusable(c: char) -> Option<char> {
    Some(match c {
        'а' | 'А' | 'α' | 'Α' => 'a',
        'в' | 'В' | 'β' | 'Β' | 'Ь' => 'b',
        'с' | 'С' | 'ϲ' => 'c',
        'ԁ' => 'd',
        'е' | 'Е' | 'ё' | 'ε' | 'Ε' => 'e',
        'һ' | 'Н' | 'Η' => 'h',
        'і' | 'І' | 'ι' | 'Ι' | 'ı' => 'i',
        'ј' | 'Ј' => 'j',
        'к' | 'К' | 'κ' | 'Κ' => 'k',
        'ӏ' => 'l',
        'м' | 'М' | 'Μ' => 'm',
        'п' | 'η' | 'Ν' => 'n',
        'о' | 'О' | 'ο' | 'Ο' | 'σ' => 'o',
        'р' | 'Р' | 'ρ' | 'Ρ' => 'p',
        'ԛ' => 'q',
        'г' => 'r',
        'ѕ' | 'Ѕ' => 's',
        'т' | 'Т' | 'τ' | 'Τ' => 't',
        'υ' | 'μ' => 'u',
        'ν' => 'v',
        'ԝ' | 'ω' => 'w',
        'х' | 'Х' | 'χ' | 'Χ' => 'x',
        'у' | 'У' | 'Υ' | 'γ' => 'y',
        'Ζ' => 'z',
        _ => return None,
    })
}

/// Normalises `src` into `out` (cleared first). Offsets are relative to `src`.
pub(crate) fn normalize_into(src: &str, out: &mut Normalized) {
    out.bytes.clear();
    out.marks.clear();
    out.marks.push((0, 0));
    out.leet.clear();
    out.leet_all = false;
    out.end = src.len() as u32;
    out.bytes.reserve(src.len());
    let bytes = src.as_bytes();
    let mut st = State {
        space: true,
        seen: 0,
    };
    let mut i = 0;
    while i < bytes.len() {
        // ASCII runs go through the table-driven loop, which stops at the first other byte.
        let rest = bytes.get(i..).unwrap_or_default();
        let n = normalize_ascii(rest, i, out, &mut st);
        i += n;
        let Some(c) = src.get(i..).and_then(|r| r.chars().next()) else {
            break;
        };
        // Most characters of a text are their own normalisation (an apostrophe, an accented
        // small letter, an emoji); the verdict is cached so each costs a lookup after the first.
        let plain = char_is_plain(c, out);
        if plain {
            st.space = false;
            out.mark(out.bytes.len(), i);
            out.bytes
                .extend_from_slice(src.get(i..i + c.len_utf8()).unwrap_or_default().as_bytes());
        } else if is_nfkc_quick(std::iter::once(c)) == IsNormalized::Yes {
            // NFKC per character: a character whose quick check says "yes" is its own NFKC form.
            push_char(c, i, out, &mut st);
        } else {
            for d in std::iter::once(c).nfkc() {
                push_char(d, i, out, &mut st);
            }
        }
        i += c.len_utf8();
    }
    finish(out, st.seen);
}

/// `true` when `c` is left exactly as it is: its own NFKC form, visible, not a confusable,
/// not whitespace, its own lower case.
fn char_is_plain(c: char, out: &mut Normalized) -> bool {
    let slot = (u32::from(c).wrapping_mul(0x9E37_79B9) >> 25) as usize % CACHE;
    let cache = out
        .cache
        .get_or_insert_with(|| Box::new([('\0', false); CACHE]));
    if let Some(&(k, v)) = cache.get(slot) {
        if k == c {
            return v;
        }
    }
    let mut lower = c.to_lowercase();
    let v = lower.next() == Some(c)
        && lower.next().is_none()
        && !is_invisible(c)
        && confusable(c).is_none()
        && !c.is_whitespace()
        && is_nfkc_quick(std::iter::once(c)) == IsNormalized::Yes;
    if let Some(e) = cache.get_mut(slot) {
        *e = (c, v);
    }
    v
}

/// Loop state carried across ASCII runs and other characters.
struct State {
    /// The last byte written is a space or newline (or nothing was written yet).
    space: bool,
    /// Union of the `KIND` bits of every byte written.
    seen: u8,
}

fn finish(out: &mut Normalized, seen: u8) {
    // Compaction rewrites the bytes and the map; most texts have hyphens but none inside a word.
    if seen & HYPHEN != 0 {
        let letter = |i: Option<usize>| {
            i.and_then(|i| out.bytes.get(i))
                .is_some_and(u8::is_ascii_alphabetic)
        };
        let inword = memchr::memchr_iter(b'-', &out.bytes).any(|i| {
            letter(i.checked_sub(1)) && (letter(Some(i + 1)) || out.bytes.get(i + 1) == Some(&b'-'))
        });
        if inword {
            drop_inword_hyphens(out);
            out.leet_all = true;
        }
    }
    if seen & LEET != 0 {
        if out.leet_all {
            let n = out.bytes.len();
            fold_leet(&mut out.bytes, 0..n);
        } else {
            let Normalized { bytes, leet, .. } = out;
            for &p in leet.iter() {
                fold_leet(bytes, p as usize..p as usize + 1);
            }
        }
    }
}

/// `KIND` bits: a collapsible space (horizontal whitespace, `_`, `\\`), a newline, a leetspeak
/// candidate, a hyphen, a byte that is not ASCII (ends the run).
const SPACE: u8 = 1;
const NEWLINE: u8 = 2;
const LEET: u8 = 4;
const HYPHEN: u8 = 8;
const NON_ASCII: u8 = 16;

static KIND: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0x80;
    while c < 256 {
        t[c] = NON_ASCII;
        c += 1;
    }
    t[b' ' as usize] = SPACE;
    t[b'\t' as usize] = SPACE;
    t[b'\r' as usize] = SPACE;
    t[0x0b] = SPACE;
    t[0x0c] = SPACE;
    // `developer_mode` and `developer mode` are the same words; `\_` is Markdown's escape.
    t[b'_' as usize] = SPACE;
    t[b'\\' as usize] = SPACE;
    t[b'\n' as usize] = NEWLINE;
    t[b'-' as usize] = HYPHEN;
    let mut k = 0;
    while k < 256 {
        if LEET_TO[k] != 0 {
            t[k] = LEET;
        }
        k += 1;
    }
    t
};

static LOWER: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = (c as u8).to_ascii_lowercase();
        c += 1;
    }
    t
};

/// Appends the ASCII prefix of `rest` (at offset `origin` of the source); returns its length.
/// One table lookup per byte, writing into space reserved up front; breakpoints only where the
/// output stops being a copy of the input.
fn normalize_ascii(rest: &[u8], origin: usize, out: &mut Normalized, st: &mut State) -> usize {
    let run = rest.get(..ascii_prefix(rest)).unwrap_or_default();
    let Normalized {
        bytes, marks, leet, ..
    } = out;
    let start = bytes.len();
    bytes.resize(start + run.len(), 0);
    // Plain slices and locals let the compiler keep the loop state in registers.
    let buf = bytes.as_mut_slice();
    let mut w = start;
    let mut space = st.space;
    let mut seen = st.seen;
    // After another character or a skipped byte, the next byte written may need a breakpoint.
    let mut dirty = true;
    let mut k = 0;
    // Where the next attempt at eight bytes at a time may start (after a failed attempt, the
    // scalar loop goes first for eight bytes, so that code or short lines cost little extra).
    let mut next_try = 0;
    while k < run.len() {
        // Eight bytes at a time while they are letters, punctuation and single spaces.
        if !dirty && k >= next_try {
            while let (Some(src), Some(dst)) = (run.get(k..k + 8), buf.get_mut(w..w + 8)) {
                let mut word = [0u8; 8];
                word.copy_from_slice(src);
                let x = u64::from_le_bytes(word);
                let Some(lower) = plain_word(x, space) else {
                    next_try = k + 8;
                    break;
                };
                dst.copy_from_slice(&lower.to_le_bytes());
                space = x >> 56 == u64::from(b' ');
                k += 8;
                w += 8;
            }
        }
        let Some(&b) = run.get(k) else {
            break;
        };
        let kind = KIND[usize::from(b)];
        if kind & (SPACE | NEWLINE) == 0 {
            if dirty {
                push_mark(marks, w, origin + k);
                dirty = false;
            }
            space = false;
            // The common case: a stretch of ordinary bytes, lower-cased one for one.
            let mut b = b;
            let mut kind = kind;
            loop {
                if kind == LEET {
                    leet.push(w as u32);
                }
                let Some(slot) = buf.get_mut(w) else {
                    break;
                };
                *slot = LOWER[usize::from(b)];
                seen |= kind;
                w += 1;
                k += 1;
                match run.get(k) {
                    Some(&next) if KIND[usize::from(next)] & (SPACE | NEWLINE) == 0 => {
                        b = next;
                        kind = KIND[usize::from(next)];
                    }
                    _ => break,
                }
            }
            continue;
        }
        if kind == SPACE {
            if space {
                dirty = true;
            } else {
                if dirty {
                    push_mark(marks, w, origin + k);
                    dirty = false;
                }
                if let Some(slot) = buf.get_mut(w) {
                    *slot = b' ';
                }
                space = true;
                w += 1;
            }
        } else {
            // A newline stays (fake conversation turns are recognised at line starts) and
            // replaces a preceding space.
            if w > 0 && buf.get(w - 1) == Some(&b' ') {
                w -= 1;
            }
            push_mark(marks, w, origin + k);
            dirty = false;
            if let Some(slot) = buf.get_mut(w) {
                *slot = b'\n';
            }
            space = true;
            w += 1;
        }
        k += 1;
    }
    st.space = space;
    st.seen = seen;
    bytes.truncate(w);
    k
}

/// Eight ASCII bytes lower-cased, when the scalar loop would copy them one for one: no
/// control byte, `_`, `\\`, `-`, digit or leetspeak symbol (`!`, `$`, `@`), no two spaces in a row,
/// and no space first when the output already ends with one (`space_before`). `None` otherwise.
#[inline(always)]
fn plain_word(x: u64, space_before: bool) -> Option<u64> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;
    // Exact per-byte masks (high bit set where true), for bytes below 0x80.
    let at_least = |v: u8| (x + ONES * u64::from(0x80 - v)) & HIGH;
    let equal = |v: u8| {
        let y = x ^ (ONES * u64::from(v));
        !(((y & LOW7) + LOW7) | y) & HIGH
    };
    let ge = |v: u8| at_least(v);
    let controls = !ge(0x20) & HIGH;
    let digits = ge(b'0') & !ge(b'9' + 1);
    let special = controls
        | equal(b'!')
        | equal(b'$')
        | digits
        | equal(b'@')
        | equal(b'_')
        | equal(b'\\')
        | equal(b'-');
    let spaces = equal(b' ');
    if special != 0 || spaces & (spaces << 8) != 0 || (space_before && spaces & 0x80 != 0) {
        return None;
    }
    let upper = ge(b'A') & !ge(b'Z' + 1);
    Some(x | (upper >> 2))
}

/// Length of the ASCII prefix of `b`, eight bytes at a time.
fn ascii_prefix(b: &[u8]) -> usize {
    let mut n = 0;
    for chunk in b.chunks_exact(8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let high = u64::from_le_bytes(word) & 0x8080_8080_8080_8080;
        if high != 0 {
            return n + (high.trailing_zeros() / 8) as usize;
        }
        n += 8;
    }
    n + b
        .get(n..)
        .unwrap_or_default()
        .iter()
        .position(|c| !c.is_ascii())
        .unwrap_or(b.len() - n)
}

/// Removes runs of `-` between two letters (`i-nstruction`, `m----ssage`), a cheap way to break
/// keyword matching that real compounds (`role-play` -> `roleplay`) survive. Moves the text
/// between removed runs in blocks and shifts the breakpoints with it.
fn drop_inword_hyphens(out: &mut Normalized) {
    let mut marks = std::mem::take(&mut out.spare);
    marks.clear();
    let n = out.bytes.len();
    let alpha = |b: &[u8], i: usize| b.get(i).is_some_and(u8::is_ascii_alphabetic);
    // Text `r..` is still to be moved to `w..`.
    let (mut r, mut w) = (0usize, 0usize);
    let mut next_mark = 0usize;
    let mut from = 0usize;
    loop {
        let hit = memchr::memchr(b'-', out.bytes.get(from..).unwrap_or_default()).map(|h| from + h);
        let h = hit.unwrap_or(n);
        let run_end = match hit {
            Some(h) => crate::detect::run_end(&out.bytes, h, usize::MAX, |b| b == b'-'),
            None => n,
        };
        let remove =
            hit.is_some() && h > 0 && alpha(&out.bytes, h - 1) && alpha(&out.bytes, run_end);
        if hit.is_some() && !remove {
            from = run_end;
            continue;
        }
        // Move `r..h` to `w..`: its breakpoints shift left by `r - w`, and its first byte may
        // need one of its own.
        let shift = r - w;
        let mut cur = out
            .marks
            .get(next_mark.saturating_sub(1))
            .copied()
            .unwrap_or((0, 0));
        while let Some(&m) = out.marks.get(next_mark) {
            if m.0 as usize > r {
                break;
            }
            cur = m;
            next_mark += 1;
        }
        push_mark(&mut marks, w, cur.1 as usize + (r - cur.0 as usize));
        while let Some(&m) = out.marks.get(next_mark) {
            if m.0 as usize >= h {
                break;
            }
            push_mark(&mut marks, m.0 as usize - shift, m.1 as usize);
            next_mark += 1;
        }
        out.bytes.copy_within(r..h, w);
        w += h - r;
        if hit.is_none() {
            break;
        }
        r = run_end;
        from = run_end;
    }
    out.bytes.truncate(w);
    if marks.is_empty() {
        marks.push((0, 0));
    }
    out.spare = std::mem::replace(&mut out.marks, marks);
}

/// Records that normalised byte `w` comes from original offset `o`, unless the breakpoints
/// already say so (`w` is never below the last breakpoint).
fn push_mark(marks: &mut Vec<(u32, u32)>, w: usize, o: usize) {
    let (w32, o32) = (w as u32, o as u32);
    match marks.last_mut() {
        Some(last) if last.1.wrapping_add(w32.wrapping_sub(last.0)) == o32 => {}
        Some(last) if last.0 == w32 => *last = (w32, o32),
        _ => marks.push((w32, o32)),
    }
}

fn push_char(c: char, origin: usize, out: &mut Normalized, st: &mut State) {
    if is_invisible(c) {
        return;
    }
    let c = confusable(c).unwrap_or(c);
    if c.is_ascii() {
        push_ascii(c as u8, origin, out, st);
        return;
    }
    if c.is_whitespace() {
        push_ascii(b' ', origin, out, st);
        return;
    }
    st.space = false;
    let mut buf = [0u8; 4];
    for l in c.to_lowercase() {
        // Each output character starts at the original character's start.
        out.mark(out.bytes.len(), origin);
        out.bytes
            .extend_from_slice(l.encode_utf8(&mut buf).as_bytes());
    }
}

/// One ASCII byte that came from another character (NFKC, confusable, Unicode space).
fn push_ascii(b: u8, origin: usize, out: &mut Normalized, st: &mut State) {
    let kind = KIND[usize::from(b)];
    if kind & SPACE != 0 {
        if st.space {
            return;
        }
        st.space = true;
        out.mark(out.bytes.len(), origin);
        out.bytes.push(b' ');
        return;
    }
    if kind & NEWLINE != 0 {
        if out.bytes.last() == Some(&b' ') {
            out.bytes.pop();
        }
        st.space = true;
        out.mark(out.bytes.len(), origin);
        out.bytes.push(b'\n');
        return;
    }
    st.space = false;
    st.seen |= kind;
    if kind & LEET != 0 {
        out.leet.push(out.bytes.len() as u32);
    }
    out.mark(out.bytes.len(), origin);
    out.bytes.push(b.to_ascii_lowercase());
}

/// Replaces leetspeak digits and symbols in `range` that touch a letter. ASCII-for-ASCII, so
/// offsets and UTF-8 validity are unchanged.
fn fold_leet(bytes: &mut [u8], range: std::ops::Range<usize>) {
    for i in range {
        let Some(&c) = bytes.get(i) else {
            break;
        };
        let to = LEET_TO[usize::from(c)];
        if to == 0 {
            continue;
        }
        let letter = |j: Option<usize>| {
            j.and_then(|j| bytes.get(j))
                .is_some_and(|b| b.is_ascii_lowercase())
        };
        let prev = letter(i.checked_sub(1));
        let next = letter(Some(i + 1));
        // `!` and `$` end or start words legitimately; they only count inside a word.
        let inside = if matches!(c, b'!' | b'$' | b'@') {
            prev && next
        } else {
            prev || next
        };
        if inside {
            if let Some(slot) = bytes.get_mut(i) {
                *slot = to;
            }
        }
    }
}

/// Leetspeak replacements, 0 for bytes that are not leet.
static LEET_TO: [u8; 256] = {
    let mut t = [0u8; 256];
    t[b'0' as usize] = b'o';
    t[b'1' as usize] = b'i';
    t[b'!' as usize] = b'i';
    t[b'3' as usize] = b'e';
    t[b'4' as usize] = b'a';
    t[b'@' as usize] = b'a';
    t[b'5' as usize] = b's';
    t[b'$' as usize] = b's';
    t[b'7' as usize] = b't';
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        let mut n = Normalized::default();
        normalize_into(s, &mut n);
        // Every character start of the output maps to a character start of the input.
        let out = std::str::from_utf8(&n.bytes).unwrap();
        for (i, _) in out.char_indices() {
            assert!(s.is_char_boundary(n.orig_of(i)), "{s:?} at {i}");
        }
        assert_eq!(n.orig_of(n.bytes.len()), s.len());
        String::from_utf8(n.bytes).unwrap()
    }

    #[test]
    fn folds_compatibility_invisible_confusable_and_leet() {
        assert_eq!(norm("ＩＧＮＯＲＥ"), "ignore");
        assert_eq!(norm("ig\u{200B}no\u{202E}re"), "ignore");
        assert_eq!(norm("іgnоrе"), "ignore"); // Cyrillic і, о, е
        assert_eq!(norm("1gn0r3 pr3v10us"), "ignore previous");
        assert_eq!(norm("a  \t b\r\n  c"), "a b\nc");
        assert_eq!(norm("gpt 4 costs $20"), "gpt 4 costs $20");
        assert_eq!(
            norm("i-nstruction m----essage role-play -x a- DEV\\_MODE"),
            "instruction message roleplay -x a- dev mode"
        );
    }

    #[test]
    fn map_points_back_to_original_bytes() {
        let src = "ｘ ignore";
        let mut n = Normalized::default();
        normalize_into(src, &mut n);
        let at = n.bytes.iter().position(|&b| b == b'i').unwrap();
        let r = n.original(at, at + 6, src.len());
        assert_eq!(&src[r], "ignore");
    }
}

/// The fast normaliser against the reference one: same bytes, same offsets at every character
/// start, on the corpora and on random mixes of the cases each fast path handles.
#[cfg(test)]
mod equiv {
    use super::*;
    use proptest::prelude::*;

    fn check(s: &str) {
        let mut old = crate::normalize_ref::Normalized::default();
        crate::normalize_ref::normalize_into(s, &mut old);
        let mut new = Normalized::default();
        normalize_into(s, &mut new);
        assert_eq!(old.bytes, new.bytes, "{s:?}");
        let out = std::str::from_utf8(&new.bytes).unwrap();
        for (i, _) in out.char_indices() {
            assert_eq!(old.map[i] as usize, new.orig_of(i), "{s:?} at {i}");
        }
        assert_eq!(
            old.map[new.bytes.len()] as usize,
            new.orig_of(new.bytes.len())
        );
    }

    #[test]
    fn corpora_equal() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/corpora");
        if !std::path::Path::new(dir).exists() {
            eprintln!("corpora not found at {dir}: skipped");
            return;
        }
        let mut n = 0;
        for f in [
            "attacks/inthewild_jailbreaks.json",
            "benign/arena_hard_v0.1_questions.jsonl",
            "benign/bipia_email_contexts_train.jsonl",
            "attacks/bipia_text_attacks_train.json",
            "attacks/bipia_code_attacks_train.json",
        ] {
            let raw = std::fs::read_to_string(format!("{dir}/{f}")).unwrap();
            for t in raw.split('"') {
                check(t);
                n += 1;
            }
            check(&raw);
        }
        assert!(n > 1000);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, .. ProptestConfig::default() })]
        #[test]
        fn random_equal(parts in prop::collection::vec(prop::sample::select(vec![
            " ", "  ", "\n", " \n", "\t", "_", "\\", "-", "--", "a", "B", "x-y", "1", "0", "!", "@", "$", "3",
            "é", "É", "ＩＧＮＯＲＥ", "\u{200B}", "і", "ﬁ", "ǅ", "ĳ", "\u{FDFA}", "㎒", "\u{0301}", "e\u{0301}",
            "\u{00A0}", "\u{2028}", "\u{3000}", "İ", "ẞ", "ß", "日本", "\r\n", "x", "word", "ignore",
            "The Quick brown fox jumps ", "ABCDEFGHIJKLMNOP", "q\"#%&'()*+,./:;<=>?[]^`{|}~z",
        ]), 0..40)) {
            check(&parts.concat());
        }
    }
}
