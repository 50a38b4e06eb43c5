//! Redaction: finding spans become typed placeholders (`[EMAIL_1]`), numbered per type and
//! consistent within one request: the same value gets the same placeholder in every text the
//! request redacts (prompt, retrieved documents, tool outputs).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use crate::{Finding, FindingKind};

/// Lives for one request. Remembers a keyed hash of each redacted value (never the value), so
/// placeholders stay consistent across texts without keeping sensitive text in memory.
#[derive(Debug)]
pub struct Redactor {
    keys: RandomState,
    seen: Vec<(u64, &'static str, u32)>,
    counters: Vec<(&'static str, u32)>,
}

impl Default for Redactor {
    fn default() -> Self {
        Self::new()
    }
}

impl Redactor {
    pub fn new() -> Self {
        Redactor {
            keys: RandomState::new(),
            seen: Vec::new(),
            counters: Vec::new(),
        }
    }

    /// Returns `text` with every secret and PII finding replaced. Overlapping findings are
    /// merged into the earliest (then longest) one; spans that are not valid for `text` are
    /// skipped rather than trusted.
    pub fn redact(&mut self, text: &str, findings: &[Finding]) -> String {
        let mut spans: Vec<&Finding> = findings
            .iter()
            .filter(|f| matches!(f.kind, FindingKind::Secret | FindingKind::Pii))
            .filter(|f| text.get(f.span.clone()).is_some() && !f.span.is_empty())
            .collect();
        spans.sort_by(|a, b| {
            a.span
                .start
                .cmp(&b.span.start)
                .then(b.span.end.cmp(&a.span.end))
        });
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for f in spans {
            if f.span.start < at {
                continue;
            }
            let (Some(before), Some(value)) =
                (text.get(at..f.span.start), text.get(f.span.clone()))
            else {
                continue;
            };
            out.push_str(before);
            let label = f.label();
            let n = self.number(label, value);
            out.push('[');
            out.push_str(label);
            out.push('_');
            out.push_str(&n.to_string());
            out.push(']');
            at = f.span.end;
        }
        out.push_str(text.get(at..).unwrap_or_default());
        out
    }

    fn number(&mut self, label: &'static str, value: &str) -> u32 {
        let h = self.keys.hash_one((label, value));
        if let Some(&(_, _, n)) = self
            .seen
            .iter()
            .find(|(sh, sl, _)| *sh == h && *sl == label)
        {
            return n;
        }
        let n = match self.counters.iter_mut().find(|(l, _)| *l == label) {
            Some((_, c)) => {
                *c += 1;
                *c
            }
            None => {
                self.counters.push((label, 1));
                1
            }
        };
        self.seen.push((h, label, n));
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ContentRole, ScanConfig, Scanners};

    fn scan(s: &Scanners, text: &str) -> Vec<Finding> {
        let mut out = Vec::new();
        s.scan(text, ContentRole::User, &mut out);
        out
    }

    #[test]
    fn same_value_same_placeholder_across_texts() {
        let s = Scanners::new(&ScanConfig::default()).unwrap();
        let mut r = Redactor::new();
        let a = "From ann@example.com to bob@example.com, cc ann@example.com";
        let b = "Reply to bob@example.com or call +1 415 555 2671";
        assert_eq!(
            r.redact(a, &scan(&s, a)),
            "From [EMAIL_1] to [EMAIL_2], cc [EMAIL_1]"
        );
        assert_eq!(
            r.redact(b, &scan(&s, b)),
            "Reply to [EMAIL_2] or call [PHONE_1]"
        );
        // A new request starts numbering again.
        assert_eq!(
            Redactor::new().redact(b, &scan(&s, b)),
            "Reply to [EMAIL_1] or call [PHONE_1]"
        );
    }

    #[test]
    fn overlapping_and_invalid_spans() {
        let f = |s, e| Finding {
            kind: FindingKind::Pii,
            rule_id: "pii.phone",
            span: s..e,
            confidence: 1.0,
        };
        let mut r = Redactor::new();
        assert_eq!(
            r.redact("0123456789", &[f(2, 6), f(0, 4), f(8, 40)]),
            "[PHONE_1]456789"
        );
        assert_eq!(r.redact("é", &[f(1, 2)]), "é");
    }
}
