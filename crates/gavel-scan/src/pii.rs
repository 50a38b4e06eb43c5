//! PII detectors: numbers (phone, payment card, US SSN, IPv4, IBAN), e-mail addresses, IPv6
//! addresses and dates of birth introduced by a cue word.

use std::net::Ipv6Addr;
use std::str::FromStr;

use crate::detect::{at, is_word, run_end, Sink};
use crate::validate::{card_brand_ok, iban_valid, luhn_valid, us_ssn_valid};
use crate::{Finding, FindingKind};

fn pii(rule_id: &'static str, start: usize, end: usize, confidence: f32) -> Finding {
    Finding {
        kind: FindingKind::Pii,
        rule_id,
        span: start..end,
        confidence,
    }
}

/// Cue words for a date of birth; the date must follow within [`DOB_WINDOW`] bytes.
pub(crate) static DOB_CUES: &[&str] = &[
    "born",
    "dob",
    "d.o.b",
    "date of birth",
    "birth date",
    "birthdate",
    "birthday",
];
const DOB_WINDOW: usize = 24;

/// Most digit groups a number candidate keeps track of.
const MAX_GROUPS: usize = 8;
/// Most digits in a number candidate (E.164 has 15, cards 19, IBAN is handled apart).
const MAX_DIGITS: usize = 24;

/// Finds the next ASCII digit at or after `i`. Digits are rare in prose and this is the hot
/// loop of the PII pass, so it tests 32 bytes at a time with a SWAR "any byte below 10" check on
/// the bytes xor `0x30` (exact as an any-test), then locates the digit bytewise.
#[inline]
fn find_digit(b: &[u8], mut i: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    const ZEROS: u64 = 0x3030_3030_3030_3030;
    let word = |c: &[u8]| -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let x = u64::from_le_bytes(w) ^ ZEROS;
        x.wrapping_sub(ONES * 10) & !x & HIGHS
    };
    while let Some(chunk) = b.get(i..i + 32) {
        let (a, rest) = chunk.split_at(8);
        let (c, rest) = rest.split_at(8);
        let (d, e) = rest.split_at(8);
        if word(a) | word(c) | word(d) | word(e) != 0 {
            break;
        }
        i += 32;
    }
    while let Some(&c) = b.get(i) {
        if c.is_ascii_digit() {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Length of a separator between digit groups at `i`, followed by a digit; 0 when there is none.
/// The same definition decides where a candidate continues and where one may start, which keeps
/// the detector local (see the module docs of `detect`).
#[inline]
fn sep_len_at(b: &[u8], i: usize) -> usize {
    let two = matches!(
        (at(b, i), at(b, i + 1)),
        (Some(b' '), Some(b'(')) | (Some(b')'), Some(b' ' | b'-' | b'.'))
    );
    if two && at(b, i + 2).is_some_and(|c| c.is_ascii_digit()) {
        return 2;
    }
    if matches!(at(b, i), Some(b' ' | b'-' | b'.' | b'/' | b')' | b'('))
        && at(b, i + 1).is_some_and(|c| c.is_ascii_digit())
    {
        return 1;
    }
    0
}

/// `true` when the digit at `p` continues a number to its left.
#[inline]
fn continues(b: &[u8], p: usize) -> bool {
    let prev = |k: usize| p.checked_sub(k).and_then(|q| at(b, q));
    if prev(1).is_some_and(|c| c.is_ascii_digit()) {
        return true;
    }
    (p >= 2 && prev(2).is_some_and(|c| c.is_ascii_digit()) && sep_len_at(b, p - 1) == 1)
        || (p >= 3 && prev(3).is_some_and(|c| c.is_ascii_digit()) && sep_len_at(b, p - 2) == 2)
}

pub(crate) fn scan_numbers(b: &[u8], from: usize, sink: &mut Sink<'_>) {
    let mut i = from;
    while let Some(p) = find_digit(b, i) {
        // Whatever happens to this digit, the rest of its run cannot start a number.
        i = run_end(b, p, usize::MAX, |c| c.is_ascii_digit());
        if continues(b, p) {
            continue;
        }
        let prev = p.checked_sub(1).and_then(|q| at(b, q));
        if prev.is_some_and(|c| c.is_ascii_alphabetic() || c == b'_') {
            if p >= 2 && prev.is_some_and(|c| c.is_ascii_uppercase()) {
                iban(b, p - 2, sink);
            }
            continue;
        }
        // Fast path: a short number that does not continue (`2023`, `42`) is no PII shape. The
        // shortest is an unformatted phone of 8 digits after `+`.
        let lone = sep_len_at(b, i) == 0 && i - p < 8;
        if lone && (sink.is_final || i + 3 <= b.len()) {
            continue;
        }
        if let Some(end) = number(b, p, sink) {
            i = i.max(end);
        }
    }
}

/// A run of digit groups joined by single separators.
struct Groups {
    /// (start, end) of each group.
    groups: [(usize, usize); MAX_GROUPS],
    n: usize,
    digits: [u8; MAX_DIGITS],
    nd: usize,
    overflow: bool,
}

impl Groups {
    fn len(&self, k: usize) -> usize {
        self.groups.get(k).map_or(0, |&(s, e)| e - s)
    }

    fn lens(&self) -> &[(usize, usize)] {
        self.groups.get(..self.n).unwrap_or_default()
    }

    fn digits(&self) -> &[u8] {
        self.digits.get(..self.nd).unwrap_or_default()
    }

    /// Separator bytes between group `k` and `k + 1`.
    fn sep<'b>(&self, b: &'b [u8], k: usize) -> &'b [u8] {
        match (self.groups.get(k), self.groups.get(k + 1)) {
            (Some(&(_, e)), Some(&(s, _))) => b.get(e..s).unwrap_or_default(),
            _ => &[],
        }
    }

    fn seps_all(&self, b: &[u8], ok: impl Fn(&[u8]) -> bool) -> bool {
        (0..self.n.saturating_sub(1)).all(|k| ok(self.sep(b, k)))
    }
}

/// Collects the number starting at digit `p`, classifies it, and returns where it ends.
fn number(b: &[u8], p: usize, sink: &mut Sink<'_>) -> Option<usize> {
    let mut g = Groups {
        groups: [(0, 0); MAX_GROUPS],
        n: 0,
        digits: [0; MAX_DIGITS],
        nd: 0,
        overflow: false,
    };
    let mut i = p;
    loop {
        let s = i;
        while let Some(c) = at(b, i).filter(u8::is_ascii_digit) {
            match g.digits.get_mut(g.nd) {
                Some(slot) => {
                    *slot = c;
                    g.nd += 1;
                }
                None => g.overflow = true,
            }
            i += 1;
        }
        match g.groups.get_mut(g.n) {
            Some(slot) => {
                *slot = (s, i);
                g.n += 1;
            }
            None => g.overflow = true,
        }
        let sep = sep_len_at(b, i);
        if sep == 0 {
            break;
        }
        i += sep;
    }
    let end = i;
    let plus =
        p >= 1 && at(b, p - 1) == Some(b'+') && !(p >= 2 && at(b, p - 2).is_some_and(is_word));
    let paren = p >= 1 && at(b, p - 1) == Some(b'(');
    let start = if plus || paren { p - 1 } else { p };
    // Too many digits or groups is never PII, whatever follows; deciding it now also keeps a
    // stream of digits from holding back output forever.
    if g.overflow {
        return Some(end);
    }
    // Three bytes of lookahead decide whether the number goes on (separator + digit).
    if sink.hit_end(end + 3, b.len(), start) {
        return None;
    }
    // Glued to a word (`12abc`) it is an identifier; `x123` after a phone is an extension.
    if let Some(c) = at(b, end) {
        let extension = c == b'x' && at(b, end + 1).is_some_and(|d| d.is_ascii_digit());
        if (c.is_ascii_alphabetic() || c == b'_') && !extension {
            return Some(end);
        }
    }
    let class = classify(b, &g, plus, paren);
    if class.is_some() {
        match inside_iban(b, p, sink.is_final) {
            Iban::Valid(_) => return Some(end),
            Iban::NeedMore => {
                sink.incomplete(start);
                return None;
            }
            Iban::No => {}
        }
    }
    let finding = class.map(|(rule, conf)| {
        let s = if rule == "pii.phone" { start } else { p };
        pii(rule, s, end, conf)
    });
    if let Some(f) = finding {
        sink.push(f);
    }
    Some(end)
}

fn classify(b: &[u8], g: &Groups, plus: bool, paren: bool) -> Option<(&'static str, f32)> {
    let digits = g.digits();
    let nd = digits.len();
    let lens: Lens = Lens::of(g);
    let dot = |s: &[u8]| s == b".";
    // IPv4: four dotted groups of at most three digits, each <= 255; a version-like `1.2.3.4`
    // (every group one digit) is left alone.
    if !plus && !paren && g.n == 4 && g.seps_all(b, dot) && lens.all_in(1, 3) {
        let ok = g.lens().iter().all(|&(s, e)| {
            b.get(s..e)
                .unwrap_or_default()
                .iter()
                .fold(0u32, |a, &c| a * 10 + u32::from(c - b'0'))
                <= 255
        });
        let trivial = lens.all_in(1, 1);
        return (ok && !trivial).then_some(("pii.ipv4", 0.9));
    }
    if g.n >= 2 && g.seps_all(b, dot) && !plus {
        // Dotted numbers other than IPv4 (versions, decimals, dates) are never PII here.
        return phone_dotted(g);
    }
    // US SSN: 3-2-4 with dashes (or spaces, less sure), valid ranges.
    if !plus && !paren && g.n == 3 && lens.is(&[3, 2, 4]) {
        let dash = g.seps_all(b, |s| s == b"-");
        let space = g.seps_all(b, |s| s == b" ");
        if (dash || space) && us_ssn_valid(digits) {
            return Some(("pii.us_ssn", if dash { 0.85 } else { 0.6 }));
        }
    }
    // Payment cards: 13-19 digits, one consistent separator, card-like grouping, Luhn, issuer.
    if !plus && !paren && (13..=19).contains(&nd) {
        let consistent = g.seps_all(b, |s| s == b" ") || g.seps_all(b, |s| s == b"-");
        let grouping = g.n == 1
            || lens.is(&[4, 6, 5])
            || lens.is(&[4, 6, 4])
            || (g.n >= 3
                && (0..g.n - 1).all(|k| g.len(k) == 4)
                && (1..=4).contains(&g.len(g.n - 1)));
        if consistent && grouping && luhn_valid(digits) && card_brand_ok(digits) {
            return Some(("pii.payment_card", if g.n == 1 { 0.9 } else { 0.95 }));
        }
    }
    phone(b, g, plus, paren)
}

/// `555.123.4567` is a US phone written with dots.
fn phone_dotted(g: &Groups) -> Option<(&'static str, f32)> {
    Lens::of(g).is(&[3, 3, 4]).then_some(("pii.phone", 0.75))
}

fn phone(b: &[u8], g: &Groups, plus: bool, paren: bool) -> Option<(&'static str, f32)> {
    let digits = g.digits();
    let nd = digits.len();
    let lens = Lens::of(g);
    let phone_sep = |s: &[u8]| {
        matches!(
            s,
            b" " | b"-" | b"." | b") " | b")" | b" (" | b")-" | b")." | b"("
        )
    };
    if !g.seps_all(b, phone_sep) {
        return None;
    }
    // E.164 with a plus: country code and subscriber number, 8 to 15 digits.
    if plus {
        // Country codes are often written glued to the number (`+34800 43 45 79`).
        return ((8..=15).contains(&nd) && digits.first() != Some(&b'0'))
            .then_some(("pii.phone", 0.9));
    }
    // International dialling prefix `00` / `011` followed by a country code.
    if g.n >= 3
        && (digits.starts_with(b"00") || digits.starts_with(b"011"))
        && (10..=18).contains(&nd)
        && g.len(0) <= 4
    {
        return Some(("pii.phone", 0.8));
    }
    // North American numbers: (NXX) NXX-XXXX, NXX-NXX-XXXX, 1-NXX-NXX-XXXX.
    let nanp = (lens.is(&[3, 3, 4]) && !(paren && g.sep(b, 0).first() != Some(&b')')))
        || (lens.is(&[1, 3, 3, 4]) && digits.first() == Some(&b'1') && !paren);
    if nanp {
        let area = digits.get(nd - 10).copied().unwrap_or(b'0');
        let exchange = digits.get(nd - 7).copied().unwrap_or(b'0');
        let valid = area >= b'2' && exchange >= b'2';
        let dashed_only = g.seps_all(b, |s| s == b"-");
        // `123-456-7890` with invalid area and exchange is as likely an ID as a phone.
        return match (valid, paren || !dashed_only) {
            (true, _) => Some(("pii.phone", 0.85)),
            (false, true) => Some(("pii.phone", 0.6)),
            (false, false) => Some(("pii.phone", 0.5)),
        };
    }
    // National numbers with a trunk prefix 0, grouped: `020 7946 0958`, `01 23 45 67 89`.
    if g.n >= 2 && digits.first() == Some(&b'0') && (10..=11).contains(&nd) && g.len(0) >= 2 {
        return Some(("pii.phone", 0.7));
    }
    // Unformatted: ten digits with a valid NANP area code and exchange (which also rules out
    // Unix timestamps), or a national number with trunk prefix 0. Less sure: could be an id.
    if g.n == 1 && !paren {
        let d = |i: usize| digits.get(i).copied().unwrap_or(b'0');
        if nd == 10 && d(0) >= b'2' && d(3) >= b'2' {
            return Some(("pii.phone", 0.5));
        }
        if (10..=11).contains(&nd) && d(0) == b'0' && d(1) != b'0' {
            return Some(("pii.phone", 0.5));
        }
    }
    None
}

/// Group lengths, for pattern comparisons without allocation.
struct Lens {
    lens: [usize; MAX_GROUPS],
    n: usize,
}

impl Lens {
    fn of(g: &Groups) -> Self {
        let mut lens = [0; MAX_GROUPS];
        for (slot, &(s, e)) in lens.iter_mut().zip(g.lens()) {
            *slot = e - s;
        }
        Lens { lens, n: g.n }
    }
    fn is(&self, pattern: &[usize]) -> bool {
        self.lens.get(..self.n) == Some(pattern)
    }
    fn all_in(&self, lo: usize, hi: usize) -> bool {
        self.lens
            .get(..self.n)
            .unwrap_or_default()
            .iter()
            .all(|l| (lo..=hi).contains(l))
    }
}

/// IBAN starting at `start` (two upper-case letters, then the check digits at `start + 2`), in
/// the compact form or grouped by four with single spaces.
fn iban(b: &[u8], start: usize, sink: &mut Sink<'_>) {
    match iban_at(b, start, sink.is_final) {
        Iban::Valid(end) => sink.push(pii("pii.iban", start, end, 0.98)),
        Iban::NeedMore => sink.incomplete(start),
        Iban::No => {}
    }
}

enum Iban {
    Valid(usize),
    NeedMore,
    No,
}

fn iban_at(b: &[u8], start: usize, is_final: bool) -> Iban {
    if start > 0 && at(b, start - 1).is_some_and(|c| c.is_ascii_alphanumeric()) {
        return Iban::No;
    }
    let head = b.get(start..start + 4);
    let head_ok = head.is_some_and(|h| {
        h.iter().take(2).all(u8::is_ascii_uppercase) && h.iter().skip(2).all(u8::is_ascii_digit)
    });
    if !head_ok {
        return Iban::No;
    }
    let alnum = |c: u8| c.is_ascii_uppercase() || c.is_ascii_digit();
    let mut i = start;
    let mut count = 0;
    loop {
        let e = run_end(b, i, 35, alnum);
        count += e - i;
        i = e;
        if count > 34 {
            return Iban::No;
        }
        if at(b, i) == Some(b' ') && at(b, i + 1).is_some_and(alnum) && count % 4 == 0 {
            i += 1;
            continue;
        }
        break;
    }
    if !is_final && i + 2 >= b.len() {
        return Iban::NeedMore;
    }
    if at(b, i).is_some_and(|c| c.is_ascii_alphanumeric()) {
        return Iban::No;
    }
    if iban_valid(b.get(start..i).unwrap_or_default()) {
        Iban::Valid(i)
    } else {
        Iban::No
    }
}

/// The digit groups of a grouped IBAN (`GB29 NWBK 6016 1331 ...`) look like a number of their
/// own; a number that a valid IBAN to its left covers is part of that IBAN. Looks back at most
/// one IBAN length, so the check stays local.
fn inside_iban(b: &[u8], p: usize, is_final: bool) -> Iban {
    let lo = p.saturating_sub(42);
    let mut q = p;
    while q > lo {
        q -= 1;
        let Some(c) = at(b, q) else {
            break;
        };
        if !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == b' ') {
            break;
        }
        match iban_at(b, q, is_final) {
            Iban::Valid(end) if end > p => return Iban::Valid(end),
            Iban::NeedMore => return Iban::NeedMore,
            _ => {}
        }
    }
    Iban::No
}

/// Longest e-mail local part (RFC 5321).
const MAX_LOCAL: usize = 64;

pub(crate) fn scan_emails(b: &[u8], from: usize, sink: &mut Sink<'_>) {
    let Some(rest) = b.get(from..) else {
        return;
    };
    for at_rel in memchr::memchr_iter(b'@', rest) {
        email(b, from + at_rel, sink);
    }
}

fn is_local(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'%' | b'+' | b'-')
}

fn email(b: &[u8], a: usize, sink: &mut Sink<'_>) {
    let mut ls = a;
    while ls > 0 && a - ls <= MAX_LOCAL && at(b, ls - 1).is_some_and(is_local) {
        ls -= 1;
    }
    if a - ls > MAX_LOCAL {
        return;
    }
    while ls < a && matches!(at(b, ls), Some(b'.' | b'-' | b'+' | b'%')) {
        ls += 1;
    }
    if ls == a || at(b, a - 1) == Some(b'.') {
        return;
    }
    let de = run_end(b, a + 1, 254, |c| {
        c.is_ascii_alphanumeric() || c == b'.' || c == b'-'
    });
    if sink.hit_end(de + 1, b.len(), ls) {
        return;
    }
    let mut end = de;
    while end > a + 1 && matches!(at(b, end - 1), Some(b'.' | b'-')) {
        end -= 1;
    }
    let domain = b.get(a + 1..end).unwrap_or_default();
    if domain.len() > 253 || at(b, end).is_some_and(|c| c == b'@' || is_word(c)) {
        return;
    }
    let mut labels = 0;
    let mut tld: &[u8] = &[];
    for label in domain.split(|&c| c == b'.') {
        if label.is_empty()
            || label.len() > 63
            || label.first() == Some(&b'-')
            || label.last() == Some(&b'-')
        {
            return;
        }
        labels += 1;
        tld = label;
    }
    if labels < 2 || !(2..=24).contains(&tld.len()) || !tld.iter().all(u8::is_ascii_alphabetic) {
        return;
    }
    sink.push(pii("pii.email", ls, end, 0.95));
}

/// Longest textual IPv6 address (with an embedded IPv4).
const MAX_IPV6: usize = 45;

pub(crate) fn scan_ipv6(text: &str, from: usize, sink: &mut Sink<'_>) {
    let b = text.as_bytes();
    let Some(rest) = b.get(from..) else {
        return;
    };
    let class = |c: u8| c.is_ascii_hexdigit() || c == b':' || c == b'.';
    for rel in memchr::memchr_iter(b':', rest) {
        let c = from + rel;
        // An address has a second colon at most four hex digits after its first; most colons
        // (`key: value`, `https://`) fail this before any scanning.
        let r = run_end(b, c + 1, 4, |x| x.is_ascii_hexdigit());
        if r < b.len() && at(b, r) != Some(b':') {
            continue;
        }
        // Only the first colon of a run anchors a candidate.
        let mut rs = c;
        while rs > 0
            && c - rs <= MAX_IPV6
            && at(b, rs - 1).is_some_and(|x| x.is_ascii_hexdigit() || x == b'.')
        {
            rs -= 1;
        }
        if c - rs > MAX_IPV6 || (rs > 0 && at(b, rs - 1) == Some(b':')) {
            continue;
        }
        let re = run_end(b, c, MAX_IPV6 + 1, class);
        if sink.hit_end(re + 1, b.len(), rs) {
            continue;
        }
        if re - rs > MAX_IPV6 {
            continue;
        }
        let mut end = re;
        while end > c && at(b, end - 1) == Some(b'.') {
            end -= 1;
        }
        let attached = |x: Option<u8>| x.is_some_and(is_word);
        if attached(rs.checked_sub(1).and_then(|q| at(b, q))) || attached(at(b, re)) {
            continue;
        }
        let Some(cand) = text.get(rs..end) else {
            continue;
        };
        let groups = cand.split(':').filter(|g| !g.is_empty()).count();
        let long_group = cand.split(':').any(|g| g.len() >= 3);
        if (groups >= 3 || (groups >= 2 && long_group)) && Ipv6Addr::from_str(cand).is_ok() {
            sink.push(pii("pii.ipv6", rs, end, 0.85));
        }
    }
}

const MONTHS: &[&str] = &[
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];

pub(crate) fn on_dob_cue(b: &[u8], start: usize, end: usize, sink: &mut Sink<'_>) {
    if start > 0 && at(b, start - 1).is_some_and(|c| c.is_ascii_alphanumeric()) {
        return;
    }
    if sink.hit_end(end + 1, b.len(), start) {
        return;
    }
    if at(b, end).is_some_and(|c| c.is_ascii_alphabetic()) {
        return;
    }
    // The date must begin within the window; its own parse may read a little past it.
    let window_end = end + DOB_WINDOW;
    let mut i = end;
    while i < window_end {
        let Some(c) = at(b, i) else {
            // More text could still bring the date (no-op on a final scan).
            sink.incomplete(start);
            return;
        };
        let word_start = i == 0 || !at(b, i - 1).is_some_and(|p| p.is_ascii_alphanumeric());
        if c.is_ascii_digit() && word_start {
            let parsed = match date_at(b, i, sink.is_final) {
                DateParse::No => day_month_date_at(b, i),
                other => other,
            };
            match parsed {
                DateParse::Date(e) => sink.push(pii("pii.date_of_birth", i, e, 0.85)),
                DateParse::NeedMore => sink.incomplete(start),
                DateParse::No => {}
            }
            return;
        }
        if c.is_ascii_alphabetic() && word_start {
            match month_date_at(b, i, sink.is_final) {
                DateParse::Date(e) => {
                    sink.push(pii("pii.date_of_birth", i, e, 0.85));
                    return;
                }
                DateParse::NeedMore => {
                    sink.incomplete(start);
                    return;
                }
                DateParse::No => {}
            }
        }
        if c == b'\n' {
            return;
        }
        i += 1;
    }
}

enum DateParse {
    Date(usize),
    NeedMore,
    No,
}

fn num_at(b: &[u8], i: usize, max: usize) -> (u32, usize) {
    let e = run_end(b, i, max + 1, |c| c.is_ascii_digit());
    let v = b
        .get(i..e)
        .unwrap_or_default()
        .iter()
        .fold(0u32, |a, &c| a * 10 + u32::from(c - b'0'));
    (v, e - i)
}

fn plausible_year(y: u32, len: usize) -> bool {
    (len == 4 && (1900..=2099).contains(&y)) || len == 2
}

/// Numeric dates: `1990-05-17`, `05/17/1990`, `17.05.1990`, `5/17/90`.
fn date_at(b: &[u8], i: usize, is_final: bool) -> DateParse {
    if !is_final && i + 12 > b.len() {
        return DateParse::NeedMore;
    }
    let (a, la) = num_at(b, i, 4);
    let s1 = at(b, i + la);
    if !matches!(s1, Some(b'-' | b'/' | b'.')) {
        return DateParse::No;
    }
    let (m, lm) = num_at(b, i + la + 1, 2);
    let s2 = at(b, i + la + 1 + lm);
    if s2 != s1 || lm == 0 {
        return DateParse::No;
    }
    let (c, lc) = num_at(b, i + la + lm + 2, 4);
    let end = i + la + lm + 2 + lc;
    if lc == 0 || at(b, end).is_some_and(|x| x.is_ascii_digit()) {
        return DateParse::No;
    }
    let day_month = |d: u32, mo: u32| (1..=31).contains(&d) && (1..=12).contains(&mo);
    let ok = if la == 4 {
        plausible_year(a, 4) && day_month(c, m) && lc <= 2
    } else {
        la <= 2 && plausible_year(c, lc) && (day_month(a, m) || day_month(m, a))
    };
    if ok {
        DateParse::Date(end)
    } else {
        DateParse::No
    }
}

/// Dates with a month name: `March 5, 1985`, `5 March 1985`, `5th of March, 1985`.
fn month_date_at(b: &[u8], i: usize, is_final: bool) -> DateParse {
    if !is_final && i + 20 > b.len() {
        return DateParse::NeedMore;
    }
    let word_end = run_end(b, i, 12, |c| c.is_ascii_alphabetic());
    let word = b.get(i..word_end).unwrap_or_default();
    if !is_month(word) {
        return DateParse::No;
    }
    // Month Day, Year
    let mut j = run_end(b, word_end, 2, |c| c == b' ' || c == b'.');
    let (d, ld) = num_at(b, j, 2);
    if ld == 0 || !(1..=31).contains(&d) {
        return DateParse::No;
    }
    j += ld;
    j = skip_ordinal(b, j);
    j = run_end(b, j, 2, |c| c == b',' || c == b' ');
    let (y, ly) = num_at(b, j, 4);
    if ly == 4 && plausible_year(y, 4) {
        DateParse::Date(j + 4)
    } else {
        DateParse::No
    }
}

fn skip_ordinal(b: &[u8], j: usize) -> usize {
    let suffix = b.get(j..j + 2).map(|s| s.to_ascii_lowercase());
    match suffix.as_deref() {
        Some(b"st" | b"nd" | b"rd" | b"th") => j + 2,
        _ => j,
    }
}

fn is_month(word: &[u8]) -> bool {
    word.len() >= 3
        && MONTHS.iter().any(|m| {
            let m = m.as_bytes();
            (word.len() == m.len() || word.len() == 3)
                && m.get(..word.len())
                    .is_some_and(|p| p.eq_ignore_ascii_case(word))
        })
}

/// Day-first textual dates (`5 March 1985`) are parsed from the day.
fn day_month_date_at(b: &[u8], i: usize) -> DateParse {
    let (d, ld) = num_at(b, i, 2);
    if ld == 0 || !(1..=31).contains(&d) {
        return DateParse::No;
    }
    let mut j = skip_ordinal(b, i + ld);
    j = run_end(b, j, 1, |c| c == b' ');
    if b.get(j..j + 3)
        .is_some_and(|w| w.eq_ignore_ascii_case(b"of "))
    {
        j += 3;
    }
    let word_end = run_end(b, j, 12, |c| c.is_ascii_alphabetic());
    if !is_month(b.get(j..word_end).unwrap_or_default()) {
        return DateParse::No;
    }
    let k = run_end(b, word_end, 2, |c| c == b',' || c == b' ' || c == b'.');
    let (y, ly) = num_at(b, k, 4);
    if ly == 4 && plausible_year(y, 4) {
        DateParse::Date(k + 4)
    } else {
        DateParse::No
    }
}

#[cfg(test)]
mod tests {
    use crate::{ContentRole, FindingKind, ScanConfig, Scanners};

    fn found(text: &str) -> Vec<(&'static str, &str)> {
        let s = Scanners::new(&ScanConfig::default()).unwrap();
        let mut out = Vec::new();
        s.scan(text, ContentRole::Output, &mut out);
        out.iter()
            .filter(|f| f.kind == FindingKind::Pii)
            .map(|f| (f.rule_id, &text[f.span.clone()]))
            .collect()
    }

    #[test]
    fn emails() {
        assert_eq!(
            found("write to Jane.Doe+tag@mail.example.co.uk."),
            [("pii.email", "Jane.Doe+tag@mail.example.co.uk")]
        );
        for not in [
            "@decorator",
            "user@localhost",
            "a@b.c",
            "x@1.2.3.4",
            "name@domain.toolongtldxxxxxxxxxxxxxxxxxx",
        ] {
            assert!(found(not).is_empty(), "{not}");
        }
    }

    #[test]
    fn phones() {
        for (text, phone) in [
            ("call +1 415 555 2671 now", "+1 415 555 2671"),
            ("tel +44 20 7946 0958", "+44 20 7946 0958"),
            ("(415) 555-2671", "(415) 555-2671"),
            ("415-555-2671x123", "415-555-2671"),
            ("415.555.2671", "415.555.2671"),
            ("1-415-555-2671", "1-415-555-2671"),
            ("001-415-555-2671", "001-415-555-2671"),
            ("Tel: 020 7946 0958", "020 7946 0958"),
            ("+33612345678", "+33612345678"),
        ] {
            assert_eq!(found(text), [("pii.phone", phone)], "{text}");
        }
        for not in [
            "in 2024-01-15 at 10:30",
            "version 1.2.3",
            "3.14159",
            "x = 12345678",
            "+12",
            "call 555-1234",
        ] {
            assert!(found(not).is_empty(), "{not}: {:?}", found(not));
        }
    }

    #[test]
    fn cards_need_luhn_and_issuer() {
        assert_eq!(
            found("card 4111 1111 1111 1111 exp"),
            [("pii.payment_card", "4111 1111 1111 1111")]
        );
        assert_eq!(
            found("amex 3782-822463-10005"),
            [("pii.payment_card", "3782-822463-10005")]
        );
        assert_eq!(
            found("5555555555554444"),
            [("pii.payment_card", "5555555555554444")]
        );
        assert!(found("4111 1111 1111 1112").is_empty());
        assert!(found("order 1234567812345670").is_empty());
    }

    #[test]
    fn ssn_with_invalid_ranges_excluded() {
        assert_eq!(found("SSN 536-22-1234."), [("pii.us_ssn", "536-22-1234")]);
        for bad in [
            "000-12-3456",
            "666-12-3456",
            "912-12-3456",
            "536-00-1234",
            "536-22-0000",
        ] {
            assert!(found(bad).is_empty(), "{bad}");
        }
    }

    #[test]
    fn ip_addresses() {
        assert_eq!(
            found("host 192.168.10.254:8080"),
            [("pii.ipv4", "192.168.10.254")]
        );
        assert!(found("256.1.1.1 and 1.2.3.4").is_empty());
        assert_eq!(
            found("addr 2001:db8:85a3::8a2e:370:7334."),
            [("pii.ipv6", "2001:db8:85a3::8a2e:370:7334")]
        );
        assert_eq!(
            found("fe80::1ff:fe23:4567:890a%eth0"),
            [("pii.ipv6", "fe80::1ff:fe23:4567:890a")]
        );
        for not in [
            "std::vector",
            "12:30:45",
            "a::b",
            "00:1A:2B:3C:4D:5E",
            "deadbeef::",
        ] {
            assert!(found(not).is_empty(), "{not}: {:?}", found(not));
        }
    }

    #[test]
    fn iban_in_text() {
        assert_eq!(
            found("pay to GB29 NWBK 6016 1331 9268 19 today"),
            [("pii.iban", "GB29 NWBK 6016 1331 9268 19")]
        );
        assert_eq!(
            found("IBAN: DE89370400440532013000."),
            [("pii.iban", "DE89370400440532013000")]
        );
        assert!(found("GB29 NWBK 6016 1331 9268 18").is_empty());
    }

    #[test]
    fn dates_of_birth_need_a_cue() {
        assert_eq!(
            found("DOB: 1985-03-05"),
            [("pii.date_of_birth", "1985-03-05")]
        );
        assert_eq!(
            found("she was born on March 5th, 1985 in Ohio"),
            [("pii.date_of_birth", "March 5th, 1985")]
        );
        assert_eq!(
            found("Date of birth 05/03/1985"),
            [("pii.date_of_birth", "05/03/1985")]
        );
        assert_eq!(
            found("born 5 March 1985"),
            [("pii.date_of_birth", "5 March 1985")]
        );
        assert!(found("released on 1985-03-05").is_empty());
        assert!(found("reborn 1985-03-05").is_empty());
    }
}
