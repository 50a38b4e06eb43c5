//! Output scanning under `policy.privacy.output`: the model's answer passes through the
//! streaming scanner's hold-back window, so no byte of a span that must be blocked or redacted
//! is released before the scan that catches it has run. Non-streamed answers take the same path
//! in one push.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use serde_json::{json, Value};

use gavel_contract::{FindingAction, PrivacyActions};
use gavel_engine::ReasonCode;
use gavel_scan::{Finding, FindingKind, Scanners, StreamScanner};

/// An output finding that the policy blocks: the stream must end here.
#[derive(Debug, Clone)]
pub struct Violation {
    pub code: ReasonCode,
    pub rule_id: &'static str,
    pub span: Range<usize>,
}

impl Violation {
    pub fn message(&self) -> String {
        format!(
            "the model's output contained {} ({}) at bytes {}..{}; policy.privacy.output blocks it, so the rest was withheld",
            match self.code {
                ReasonCode::PrivacySecret => "a secret",
                _ => "personal data",
            },
            self.rule_id,
            self.span.start,
            self.span.end
        )
    }
}

pub struct OutputGuard {
    scanner: StreamScanner,
    actions: Option<PrivacyActions>,
    /// Spans to replace as they are released, with their placeholders.
    redactions: Vec<(Range<usize>, String)>,
    /// Placeholder numbering per label, in order of appearance within one answer.
    counters: HashMap<&'static str, usize>,
    /// Every finding, for the outcome record (kind, rule, span; never the text).
    pub findings: Vec<Value>,
}

impl OutputGuard {
    pub fn new(scanners: Arc<Scanners>, actions: Option<PrivacyActions>) -> OutputGuard {
        OutputGuard {
            scanner: StreamScanner::new(scanners),
            actions,
            redactions: Vec::new(),
            counters: HashMap::new(),
            findings: Vec::new(),
        }
    }

    /// Adds model output; returns the text now safe to send (possibly empty), or the violation
    /// that ends the answer.
    pub fn push(&mut self, chunk: &str) -> Result<String, Violation> {
        let from = self.scanner.released_len();
        let event = self.scanner.push(chunk);
        let (findings, released) = (event.findings.to_vec(), event.released.to_string());
        self.judge(&findings, from, &released)
    }

    /// Guards `text` as a whole answer: one push, then the end.
    pub fn whole(&mut self, text: &str) -> Result<String, Violation> {
        let head = self.push(text)?;
        Ok(head + &self.finish()?)
    }

    /// Ends the answer: decides what was held back and releases the rest.
    pub fn finish(&mut self) -> Result<String, Violation> {
        let from = self.scanner.released_len();
        let event = self.scanner.finish();
        let (findings, released) = (event.findings.to_vec(), event.released.to_string());
        self.judge(&findings, from, &released)
    }

    fn judge(
        &mut self,
        findings: &[Finding],
        from: usize,
        released: &str,
    ) -> Result<String, Violation> {
        for finding in findings {
            let (action, code) = match finding.kind {
                FindingKind::Secret => (self.actions.map(|a| a.secret), ReasonCode::PrivacySecret),
                FindingKind::Pii => (self.actions.map(|a| a.pii), ReasonCode::PrivacyPii),
                _ => (Some(FindingAction::Flag), ReasonCode::PrivacyPii),
            };
            let action = action.unwrap_or(FindingAction::Allow);
            self.findings.push(json!({
                "kind": finding.kind.as_str(),
                "rule_id": finding.rule_id,
                "start": finding.span.start,
                "end": finding.span.end,
                "action": format!("{action:?}").to_lowercase(),
            }));
            match action {
                FindingAction::Block => {
                    return Err(Violation {
                        code,
                        rule_id: finding.rule_id,
                        span: finding.span.clone(),
                    })
                }
                FindingAction::Redact => {
                    let label = finding.label();
                    let n = self.counters.entry(label).or_insert(0);
                    *n += 1;
                    self.redactions
                        .push((finding.span.clone(), format!("[{label}_{n}]")));
                }
                FindingAction::Flag | FindingAction::Allow => {}
            }
        }
        Ok(self.redact(from, released))
    }

    /// `released` starts at stream offset `from`; replaces the parts of it that fall in a
    /// redaction span, writing each placeholder once, where its span starts.
    fn redact(&mut self, from: usize, released: &str) -> String {
        if self.redactions.is_empty() {
            return released.to_string();
        }
        let to = from + released.len();
        let mut out = String::with_capacity(released.len());
        let mut at = from;
        self.redactions.sort_by_key(|(span, _)| span.start);
        for (span, placeholder) in &self.redactions {
            if span.end <= at || span.start >= to {
                continue;
            }
            if span.start > at {
                out.push_str(&released[at - from..span.start - from]);
            }
            if span.start >= from {
                out.push_str(placeholder);
            }
            at = span.end.min(to).max(at);
        }
        if at < to {
            out.push_str(&released[at - from..]);
        }
        self.redactions.retain(|(span, _)| span.end > to);
        out
    }
}

/// Guards, in place, every string in `value` (object keys included), each as a whole answer
/// with a guard of its own from `new_guard`, adding what they found to `findings`. An upstream's
/// answer carries text in more places than the message content the proxy guards as the answer
/// (a `refusal`, tool-call arguments, content given as parts, an error's message, fields of the
/// upstream's own), and all of it reaches the client. A span split across two strings (two
/// stream events) is seen by neither.
pub fn guard_strings(
    value: &mut Value,
    new_guard: &dyn Fn() -> OutputGuard,
    findings: &mut Vec<Value>,
) -> Result<(), Violation> {
    match value {
        Value::String(text) => {
            if let Some(guarded) = guarded(text, new_guard, findings)? {
                *text = guarded;
            }
        }
        Value::Array(items) => {
            for item in items {
                guard_strings(item, new_guard, findings)?;
            }
        }
        Value::Object(members) => {
            // Keys are rewritten only when guarding changed one (a redaction): rebuilding the
            // map for every object would cost more than guarding it.
            let mut renamed = Vec::new();
            for (key, member) in members.iter_mut() {
                guard_strings(member, new_guard, findings)?;
                if let Some(guarded_key) = guarded(key, new_guard, findings)? {
                    renamed.push((key.clone(), guarded_key));
                }
            }
            for (key, guarded_key) in renamed {
                if let Some(member) = members.remove(&key) {
                    // Two keys can redact to the same placeholder (each string is guarded on
                    // its own): number the later ones rather than overwrite a member.
                    let mut free = guarded_key.clone();
                    let mut n = 1;
                    while members.contains_key(&free) {
                        n += 1;
                        free = format!("{guarded_key} ({n})");
                    }
                    members.insert(free, member);
                }
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

/// Most strings [`CLEAN`] holds before it starts again.
const CLEAN_MOST: usize = 512;

/// Longest string [`CLEAN`] remembers: what recurs is short (names, ids, a model), and
/// remembering long strings would let an upstream fill 512 entries with answers of up to the
/// 32 MiB an answer may hold.
const CLEAN_LONGEST: usize = 256;

thread_local! {
    /// Strings this thread guarded and found to hold nothing at all, not scanned again:
    /// answers repeat themselves (field names, a model's name, a stream's id in every event),
    /// and each string scanned costs about half a microsecond. Whether a string holds a
    /// finding depends on it and the scanners alone, not on the policy or the answer around
    /// it, so what was clean once stays clean. Emptied when full, so that ids seen once do not
    /// keep out the strings that recur.
    static CLEAN: std::cell::RefCell<std::collections::HashSet<String>> = Default::default();
}

/// Guards `text` as a whole answer, unless this thread found it clean before: what to put in
/// its place if guarding changed it (a redaction), `None` if it goes as it is.
fn guarded(
    text: &str,
    new_guard: &dyn Fn() -> OutputGuard,
    findings: &mut Vec<Value>,
) -> Result<Option<String>, Violation> {
    if CLEAN.with_borrow(|clean| clean.contains(text)) {
        return Ok(None);
    }
    let mut guard = new_guard();
    let result = guard.whole(text);
    if guard.findings.is_empty() && text.len() <= CLEAN_LONGEST {
        CLEAN.with_borrow_mut(|clean| {
            if clean.len() >= CLEAN_MOST {
                clean.clear();
            }
            clean.insert(text.to_string());
        });
    }
    findings.append(&mut guard.findings);
    Ok(Some(result?).filter(|guarded| guarded != text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gavel_scan::ScanConfig;

    fn guard(pii: FindingAction) -> OutputGuard {
        let scanners = Arc::new(Scanners::new(&ScanConfig::default()).unwrap());
        OutputGuard::new(
            scanners,
            Some(PrivacyActions {
                pii,
                secret: FindingAction::Block,
            }),
        )
    }

    /// Feeds `text` in `size`-byte chunks (on char boundaries) and returns what was released.
    fn run(guard: &mut OutputGuard, text: &str, size: usize) -> Result<String, Violation> {
        let mut out = String::new();
        let mut start = 0;
        while start < text.len() {
            let mut end = (start + size).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            out.push_str(&guard.push(&text[start..end])?);
            start = end;
        }
        out.push_str(&guard.finish()?);
        Ok(out)
    }

    #[test]
    fn redacts_across_chunk_boundaries_in_order() {
        let text = "Write to jane.doe@example.org or to jane.doe@example.org, and bob@example.com.";
        for size in [1, 3, 7, 64] {
            let out = run(&mut guard(FindingAction::Redact), text, size).unwrap();
            assert_eq!(
                out, "Write to [EMAIL_1] or to [EMAIL_2], and [EMAIL_3].",
                "chunk size {size}"
            );
        }
    }

    #[test]
    fn a_blocked_span_is_never_released() {
        let text = format!(
            "{} call me at jane.doe@example.org tomorrow",
            "ok ".repeat(100)
        );
        for size in [1, 5, 50] {
            let mut g = guard(FindingAction::Block);
            let mut released = String::new();
            let mut start = 0;
            let violation = loop {
                let end = (start + size).min(text.len());
                match g.push(&text[start..end]) {
                    Ok(r) => released.push_str(&r),
                    Err(v) => break Some(v),
                }
                start = end;
                if start == text.len() {
                    break g.finish().err();
                }
            };
            let v = violation.expect("the e-mail must be caught");
            assert_eq!(v.code, ReasonCode::PrivacyPii);
            assert!(released.len() <= v.span.start, "released past the finding");
            assert!(!released.contains('@'));
        }
    }

    #[test]
    fn clean_text_passes_unchanged() {
        let text = "The VPN guide is on the wiki under IT > Remote access. ".repeat(20);
        assert_eq!(
            run(&mut guard(FindingAction::Block), &text, 13).unwrap(),
            text
        );
    }

    /// Every string of an answer is guarded, keys included; what holds a finding is guarded
    /// again each time (only clean strings are remembered), and a redacted key is renamed.
    #[test]
    fn every_string_is_guarded_each_time_it_holds_something() {
        let email = "jane.doe@example.org";
        for _ in 0..3 {
            let mut answer = serde_json::json!({
                "id": "c1",
                "choices": [{"message": {"refusal": format!("write to {email}")}}],
                (format!("note {email}")): 1,
            });
            let mut findings = Vec::new();
            guard_strings(&mut answer, &|| guard(FindingAction::Redact), &mut findings).unwrap();
            let text = answer.to_string();
            assert!(!text.contains(email), "{text}");
            assert_eq!(
                answer["choices"][0]["message"]["refusal"],
                "write to [EMAIL_1]"
            );
            assert_eq!(answer["note [EMAIL_1]"], 1, "{text}");
            assert_eq!(findings.len(), 2);
            // Two keys redacted alike keep both members.
            let mut twins =
                serde_json::json!({ (format!("to {email}")): 1, "to bob@example.com": 2 });
            guard_strings(
                &mut twins,
                &|| guard(FindingAction::Redact),
                &mut Vec::new(),
            )
            .unwrap();
            assert_eq!(twins.as_object().unwrap().len(), 2, "{twins}");
            let mut blocked = answer.clone();
            blocked["extra"] = serde_json::json!(["ok", email]);
            let refused = guard_strings(
                &mut blocked,
                &|| guard(FindingAction::Block),
                &mut Vec::new(),
            );
            assert!(refused.is_err());
        }
    }
}
