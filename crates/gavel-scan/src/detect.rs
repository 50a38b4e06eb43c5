//! The secrets + PII pass: one Aho-Corasick automaton over literal anchors (secret prefixes,
//! assignment keywords, date-of-birth cues), `memchr` for `@` and `:`, and a vectorisable digit
//! search for numbers. Validators run only on anchored candidates.
//!
//! Every detector is *local*: whether a candidate is a finding depends only on a bounded
//! neighbourhood of its anchor. That is what lets [`crate::StreamScanner`] rescan a window of a
//! stream and get exactly the findings of a whole-text scan. A candidate whose decision needs bytes
//! past the end of a non-final buffer is reported through [`Sink::incomplete`] instead of being
//! decided.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

use crate::{pii, secrets, BuildError, Finding};

/// Where detector output goes, plus the streaming bookkeeping.
pub(crate) struct Sink<'a> {
    pub out: &'a mut Vec<Finding>,
    /// Added to every span (the text may be a slice of a larger input).
    pub base: usize,
    /// `false` while more bytes may follow the text (streaming).
    pub is_final: bool,
    /// Earliest span start of a candidate that could not be decided yet.
    pub pending: Option<usize>,
}

impl Sink<'_> {
    pub fn push(&mut self, finding: Finding) {
        let finding = Finding {
            span: finding.span.start + self.base..finding.span.end + self.base,
            ..finding
        };
        // Overlapping anchors (`secret` inside `client_secret`) can reach the same value twice.
        let dup = self
            .out
            .iter()
            .rev()
            .take(8)
            .any(|f| f.rule_id == finding.rule_id && f.span == finding.span);
        if !dup {
            self.out.push(finding);
        }
    }

    /// Records that a candidate starting at `start` needs bytes beyond the buffer.
    pub fn incomplete(&mut self, start: usize) {
        if !self.is_final {
            self.pending = Some(self.pending.map_or(start, |p| p.min(start)));
        }
    }

    /// `true` when a scan that stopped at `end == len` must wait for more bytes.
    pub fn hit_end(&mut self, end: usize, len: usize, start: usize) -> bool {
        if end >= len && !self.is_final {
            self.incomplete(start);
            true
        } else {
            false
        }
    }
}

/// What an anchor literal starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Anchor {
    Secret(secrets::Prefix),
    Keyword(secrets::KeywordKind),
    Dob,
}

#[derive(Debug)]
pub(crate) struct Detectors {
    secrets: bool,
    pii: bool,
    /// Case-sensitive vendor prefixes (`AKIA`, `ghp_`, `-----BEGIN `).
    prefixes: AhoCorasick,
    prefix_kinds: Vec<Anchor>,
    /// Assignment keywords and date-of-birth cues, in the spellings listed in `new`, searched
    /// overlapping (see `for_each_keyword`).
    keywords: AhoCorasick,
    /// The same keywords, leftmost-first: its prefilter finds where the next keyword starts.
    keyword_finder: AhoCorasick,
    /// Longest keyword, in bytes.
    keyword_max: usize,
    keyword_kinds: Vec<Anchor>,
    /// The Azure client-secret rule, anchored on `~` by `memchr`.
    tilde: Option<secrets::Prefix>,
}

impl Detectors {
    pub fn new(secrets_on: bool, pii_on: bool) -> Result<Self, BuildError> {
        let mut prefixes: Vec<&'static str> = Vec::new();
        let mut prefix_kinds = Vec::new();
        let mut keywords: Vec<String> = Vec::new();
        let mut keyword_kinds = Vec::new();
        // Explicit case variants instead of a case-insensitive automaton: with at most 64
        // patterns the automaton keeps its SIMD (Teddy) prefilter, which is most of the
        // throughput. So only the spellings that occur are listed: `password`, `Password`,
        // `PASSWORD`; `api_key` and `API_KEY` (not `Api_key`); camelCase as given; `DOB`.
        let mut cased = |lit: &str, anchor: Anchor, upper: bool| {
            let capital: String = lit
                .chars()
                .enumerate()
                .map(|(i, c)| if i == 0 { c.to_ascii_uppercase() } else { c })
                .collect();
            let separated = lit.contains(['_', '-']);
            let variants = [
                Some(lit.to_string()),
                (!separated).then_some(capital),
                upper.then(|| lit.to_ascii_uppercase()),
            ];
            for v in variants.into_iter().flatten() {
                if !keywords.contains(&v) {
                    keywords.push(v);
                    keyword_kinds.push(anchor);
                }
            }
        };
        if secrets_on {
            for &(lit, kw) in secrets::KEYWORDS {
                let camel = lit.chars().any(|c| c.is_ascii_uppercase());
                cased(lit, Anchor::Keyword(kw), !camel);
            }
        }
        if pii_on {
            for &lit in pii::DOB_CUES {
                cased(lit, Anchor::Dob, lit == "dob");
            }
        }
        if secrets_on {
            for (lit, anchor) in secrets::prefixes() {
                prefixes.push(lit);
                prefix_kinds.push(anchor);
            }
        }
        // Leftmost-longest: `sk-ant-` wins over `sk-` at the same position.
        let build = |patterns: &[&str]| {
            AhoCorasickBuilder::new()
                .match_kind(MatchKind::LeftmostLongest)
                .build(patterns)
                .map_err(|e| BuildError(e.to_string()))
        };
        let keyword_refs: Vec<&str> = keywords.iter().map(String::as_str).collect();
        // Keywords are searched overlapping: with leftmost matching, which keywords are seen
        // depends on where the search starts (`authToken` hides `token` from a scan starting
        // before it but not from one starting inside it), and the streaming scanner rescans
        // from inside the text. Every keyword occurrence is a candidate; `on_keyword` decides.
        let keyword_automaton = AhoCorasickBuilder::new()
            .match_kind(MatchKind::Standard)
            .build(&keyword_refs)
            .map_err(|e| BuildError(e.to_string()))?;
        // The overlapping search cannot skip ahead with the SIMD prefilter the way a leftmost
        // search does (a whole-text scan ran at a third of the speed), so a leftmost search
        // finds where the next keyword starts and the overlapping one runs only around it.
        let keyword_finder = AhoCorasickBuilder::new()
            .match_kind(MatchKind::LeftmostFirst)
            .build(&keyword_refs)
            .map_err(|e| BuildError(e.to_string()))?;
        let keyword_max = keyword_refs.iter().map(|k| k.len()).max().unwrap_or(0);
        Ok(Detectors {
            secrets: secrets_on,
            pii: pii_on,
            prefixes: build(&prefixes)?,
            prefix_kinds,
            keywords: keyword_automaton,
            keyword_finder,
            keyword_max,
            keyword_kinds,
            tilde: if secrets_on {
                secrets::tilde_rule()
            } else {
                None
            },
        })
    }

    /// Whole-text scan: every candidate is decided.
    pub fn scan_final(&self, text: &str, base: usize, out: &mut Vec<Finding>) {
        let mut sink = Sink {
            out,
            base,
            is_final: true,
            pending: None,
        };
        self.scan(text, 0, &mut sink);
    }

    /// Scans candidates anchored at or after `from`; bytes before `from` are left context only.
    pub fn scan(&self, text: &str, from: usize, sink: &mut Sink<'_>) {
        let bytes = text.as_bytes();
        if self.pii {
            pii::scan_numbers(bytes, from, sink);
            pii::scan_emails(bytes, from, sink);
            pii::scan_ipv6(text, from, sink);
        }
        if self.secrets {
            let input = aho_corasick::Input::new(bytes).range(from..);
            for m in self.prefixes.find_iter(input) {
                if let Some(&Anchor::Secret(p)) = self.prefix_kinds.get(m.pattern().as_usize()) {
                    secrets::on_prefix(bytes, m.start(), m.end(), p, sink);
                }
            }
            if let (Some(rule), Some(rest)) = (self.tilde, bytes.get(from..)) {
                for t in memchr::memchr_iter(b'~', rest) {
                    let t = from + t;
                    if t > 0 && at(bytes, t - 1) == Some(b'Q') {
                        secrets::on_prefix(bytes, t - 1, t + 1, rule, sink);
                    }
                }
            }
        }
        if self.secrets || self.pii {
            self.for_each_keyword(bytes, from, |m| {
                match self.keyword_kinds.get(m.pattern().as_usize()) {
                    Some(&Anchor::Keyword(k)) => {
                        secrets::on_keyword(bytes, m.start(), m.end(), k, sink)
                    }
                    Some(&Anchor::Dob) => pii::on_dob_cue(bytes, m.start(), m.end(), sink),
                    _ => {}
                }
            });
        }
    }

    /// Every keyword occurrence starting at or after `from`, overlapping ones included (which
    /// keywords are seen must not depend on where a scan starts: `authToken` holds `token`, and
    /// the streaming scanner rescans from inside the text). A leftmost search (SIMD prefilter)
    /// finds the next position where a keyword starts; every occurrence starting within one
    /// keyword length of it ends within two, so an overlapping search of that stretch reports
    /// them all; the next leftmost search starts after the stretch, and no occurrence starts
    /// between a leftmost search's start and its match. Occurrences come stretch by stretch,
    /// each stretch in the order the overlapping search gives (by end).
    fn for_each_keyword(&self, bytes: &[u8], from: usize, mut f: impl FnMut(aho_corasick::Match)) {
        let max = self.keyword_max.max(1);
        let mut pos = from;
        while pos < bytes.len() {
            let input = aho_corasick::Input::new(bytes).range(pos..);
            let Some(m) = self.keyword_finder.find(input) else {
                return;
            };
            let start = m.start();
            let stretch = start + max;
            let input =
                aho_corasick::Input::new(bytes).range(start..(start + 2 * max).min(bytes.len()));
            for o in self.keywords.find_overlapping_iter(input) {
                if o.start() < stretch {
                    f(o);
                }
            }
            pos = stretch;
        }
    }
}

/// Byte at `i`, `None` past the end.
#[inline]
pub(crate) fn at(b: &[u8], i: usize) -> Option<u8> {
    b.get(i).copied()
}

/// End of the run of bytes from `i` matching `pred`, at most `max` long.
#[inline]
pub(crate) fn run_end(b: &[u8], i: usize, max: usize, pred: impl Fn(u8) -> bool) -> usize {
    let mut j = i;
    while j < b.len() && j - i < max && pred(b[j]) {
        j += 1;
    }
    j
}

#[inline]
pub(crate) fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Above 64 patterns the automata lose their SIMD prefilter and throughput drops about 3x
    /// (measured with the criterion bench), so the pattern lists must stay within it.
    #[test]
    fn automata_stay_within_the_simd_prefilter_limit() {
        let d = Detectors::new(true, true).unwrap();
        assert!(d.keyword_kinds.len() <= 64, "{}", d.keyword_kinds.len());
        assert!(d.prefix_kinds.len() <= 64, "{}", d.prefix_kinds.len());
    }

    fn keyword_matches(d: &Detectors, text: &[u8], from: usize) -> [Vec<(usize, usize, u32)>; 2] {
        let key = |m: aho_corasick::Match| (m.start(), m.end(), m.pattern().as_u32());
        let mut fast = Vec::new();
        d.for_each_keyword(text, from, |m| fast.push(key(m)));
        let input = aho_corasick::Input::new(text).range(from..);
        let all = d.keywords.find_overlapping_iter(input).map(key).collect();
        [fast, all]
    }

    /// The stretch-by-stretch keyword search reports exactly the occurrences of a plain
    /// overlapping search (the order may differ between stretches).
    #[test]
    fn keyword_stretches_find_every_overlapping_occurrence() {
        use proptest::prelude::*;
        let d = Detectors::new(true, true).unwrap();
        const WORDS: &[&str] = &[
            "password",
            "Password",
            "authToken",
            "token",
            "apiKey",
            "api_key",
            "secret",
            "DOB",
            "born",
            "birthday",
            "passwd",
            "accessToken",
            "x",
            " ",
            "=",
            "_",
            "Token",
            "pwdpwd",
            "privateKey",
        ];
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        runner
            .run(
                &(
                    prop::collection::vec(prop::sample::select(WORDS), 0..40),
                    0usize..200,
                ),
                |(parts, from)| {
                    let text = parts.concat();
                    let from = from.min(text.len());
                    let [mut fast, mut all] = keyword_matches(&d, text.as_bytes(), from);
                    fast.sort_unstable();
                    all.sort_unstable();
                    prop_assert_eq!(fast, all);
                    Ok(())
                },
            )
            .unwrap();
    }

    #[test]
    fn keyword_spellings() {
        let s = crate::Scanners::new(&crate::ScanConfig::default()).unwrap();
        for text in [
            "PASSWORD=Zx81!kq0Pw7",
            "Password: \"Zx81!kq0Pw7\"",
            "dbPassword = \"Zx81!kq0Pw7\"",
            "{\"apiKey\": \"9f8e7d6c5b4a39281706f5e4d3c2b1a0\"}",
        ] {
            let mut out = Vec::new();
            s.scan(text, crate::ContentRole::User, &mut out);
            assert_eq!(out.len(), 1, "{text}: {out:?}");
        }
    }
}
