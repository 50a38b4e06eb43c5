//! Reference normaliser for differential tests: the straightforward implementation (whole-text
//! NFKC quick check, one map entry per output byte) that `normalize` must match byte for byte
//! and offset for offset. Not used outside tests.
//!
//! Order: NFKC (per character, and only when the text is not already NFKC, because the check is
//! much cheaper than the transform), drop zero-width and bidi controls, fold confusable
//! Cyrillic/Greek letters to Latin, lower-case, collapse horizontal whitespace, then fold
//! leetspeak digits and symbols that sit inside words (`1gn0r3` -> `ignore`).

use unicode_normalization::{is_nfkc_quick, IsNormalized, UnicodeNormalization};

/// Reusable buffers: normalised bytes and, for each, the original byte offset it came from.
#[derive(Debug, Default)]
pub(crate) struct Normalized {
    pub bytes: Vec<u8>,
    /// `map[i]` is the original offset of `bytes[i]`; one extra entry maps the end.
    pub map: Vec<u32>,
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

/// Normalises `src` into `out` (cleared first). Offsets in `out.map` are relative to `src`.
pub(crate) fn normalize_into(src: &str, out: &mut Normalized) {
    out.bytes.clear();
    out.map.clear();
    out.bytes.reserve(src.len());
    out.map.reserve(src.len() + 1);
    // ASCII is always NFKC (and resets canonical ordering), so the quick check only needs the
    // other characters; leaving ASCII out can only make it more cautious.
    let compat = !src.is_ascii()
        && is_nfkc_quick(src.chars().filter(|c| !c.is_ascii())) != IsNormalized::Yes;
    let bytes = src.as_bytes();
    let mut last_space = true;
    let mut i = 0;
    while i < bytes.len() {
        // ASCII runs go through the table-driven writer; other characters one by one.
        let run = bytes
            .get(i..)
            .unwrap_or_default()
            .iter()
            .position(|b| !b.is_ascii())
            .map_or(bytes.len(), |p| i + p);
        if run > i {
            normalize_ascii(
                bytes.get(i..run).unwrap_or_default(),
                i,
                out,
                &mut last_space,
            );
            i = run;
            continue;
        }
        let Some(c) = src.get(i..).and_then(|rest| rest.chars().next()) else {
            break;
        };
        if compat {
            for d in std::iter::once(c).nfkc() {
                push_char(d, i as u32, out, &mut last_space);
            }
        } else {
            push_char(c, i as u32, out, &mut last_space);
        }
        i += c.len_utf8();
    }
    finish(src, out);
}

fn finish(src: &str, out: &mut Normalized) {
    out.map.push(src.len() as u32);
    // Compaction rewrites both buffers; most texts have hyphens but none inside a word.
    let letter = |i: Option<usize>| {
        i.and_then(|i| out.bytes.get(i))
            .is_some_and(u8::is_ascii_alphabetic)
    };
    let inword = memchr::memchr_iter(b'-', &out.bytes).any(|i| {
        letter(i.checked_sub(1)) && (letter(Some(i + 1)) || out.bytes.get(i + 1) == Some(&b'-'))
    });
    if inword {
        drop_inword_hyphens(out);
    }
    fold_leet(&mut out.bytes);
}

/// Appends an ASCII run (at offset `origin` of the source): one table lookup per byte, writing
/// into space reserved up front instead of pushing byte by byte.
fn normalize_ascii(run: &[u8], origin: usize, out: &mut Normalized, last_space: &mut bool) {
    let start = out.bytes.len();
    out.bytes.resize(start + run.len(), 0);
    out.map.resize(start + run.len(), 0);
    // Plain slices and a local flag let the compiler keep everything in registers.
    let bytes = out.bytes.as_mut_slice();
    let map = out.map.as_mut_slice();
    let mut space = *last_space;
    let mut w = start;
    for (k, &b) in run.iter().enumerate() {
        let byte = match ASCII_KIND[usize::from(b)] {
            // ordinary byte, lower-cased
            0 => {
                space = false;
                b.to_ascii_lowercase()
            }
            // horizontal space, `_`, `\\`: one space at most
            1 => {
                if space {
                    continue;
                }
                space = true;
                b' '
            }
            // newline replaces a preceding space
            _ => {
                if w > 0 && bytes.get(w - 1) == Some(&b' ') {
                    w -= 1;
                }
                space = true;
                b'\n'
            }
        };
        if let (Some(slot), Some(m)) = (bytes.get_mut(w), map.get_mut(w)) {
            *slot = byte;
            *m = (origin + k) as u32;
        }
        w += 1;
    }
    *last_space = space;
    out.bytes.truncate(w);
    out.map.truncate(w);
}

/// 0: ordinary, 1: collapsible space, 2: newline.
static ASCII_KIND: [u8; 256] = {
    let mut t = [0u8; 256];
    t[b' ' as usize] = 1;
    t[b'\t' as usize] = 1;
    t[b'\r' as usize] = 1;
    t[0x0b] = 1;
    t[0x0c] = 1;
    t[b'_' as usize] = 1;
    t[b'\\' as usize] = 1;
    t[b'\n' as usize] = 2;
    t
};

/// Removes runs of `-` between two letters (`i-nstruction`, `m----ssage`), a cheap way to break
/// keyword matching that real compounds (`role-play` -> `roleplay`) survive.
fn drop_inword_hyphens(out: &mut Normalized) {
    let n = out.bytes.len();
    let mut w = 0;
    let mut r = 0;
    while r < n {
        let c = out.bytes.get(r).copied().unwrap_or(0);
        if c == b'-' && w > 0 && out.bytes.get(w - 1).is_some_and(u8::is_ascii_alphabetic) {
            let run_end = crate::detect::run_end(&out.bytes, r, usize::MAX, |b| b == b'-');
            if out.bytes.get(run_end).is_some_and(u8::is_ascii_alphabetic) {
                r = run_end;
                continue;
            }
        }
        if let (Some(&b), Some(&m)) = (out.bytes.get(r), out.map.get(r)) {
            if let Some(slot) = out.bytes.get_mut(w) {
                *slot = b;
            }
            if let Some(slot) = out.map.get_mut(w) {
                *slot = m;
            }
        }
        w += 1;
        r += 1;
    }
    // The end-of-text entry of the map follows the kept bytes.
    if let Some(&end) = out.map.get(n) {
        if let Some(slot) = out.map.get_mut(w) {
            *slot = end;
        }
    }
    out.bytes.truncate(w);
    out.map.truncate(w + 1);
}

fn push_char(c: char, origin: u32, out: &mut Normalized, last_space: &mut bool) {
    if is_invisible(c) {
        return;
    }
    let c = confusable(c).unwrap_or(c);
    if c.is_ascii() {
        push_ascii(c as u8, origin, out, last_space);
        return;
    }
    if c.is_whitespace() {
        push_ascii(b' ', origin, out, last_space);
        return;
    }
    *last_space = false;
    let mut buf = [0u8; 4];
    for l in c.to_lowercase() {
        for &b in l.encode_utf8(&mut buf).as_bytes() {
            out.bytes.push(b);
            out.map.push(origin);
        }
    }
}

#[inline(always)]
fn push_ascii(b: u8, origin: u32, out: &mut Normalized, last_space: &mut bool) {
    match b {
        b'\n' => {
            // Newlines stay: fake conversation turns are recognised at line starts.
            if out.bytes.last() == Some(&b' ') {
                out.bytes.pop();
                out.map.pop();
            }
            out.bytes.push(b'\n');
            out.map.push(origin);
            *last_space = true;
        }
        // `developer_mode` and `developer mode` are the same words; `\_` is Markdown's escape.
        b' ' | b'\t' | b'\r' | 0x0b | 0x0c | b'_' | b'\\' => {
            if !*last_space {
                out.bytes.push(b' ');
                out.map.push(origin);
                *last_space = true;
            }
        }
        _ => {
            *last_space = false;
            out.bytes.push(b.to_ascii_lowercase());
            out.map.push(origin);
        }
    }
}

/// Replaces leetspeak digits and symbols that touch a letter. ASCII-for-ASCII, so offsets and
/// UTF-8 validity are unchanged.
fn fold_leet(bytes: &mut [u8]) {
    let n = bytes.len();
    for i in 0..n {
        let Some(&c) = bytes.get(i) else {
            break;
        };
        let to = LEET[usize::from(c)];
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
static LEET: [u8; 256] = {
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
