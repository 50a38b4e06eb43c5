//! The scanner stage: `gavel-scan`'s detectors under the contract's `policy.privacy` and
//! `policy.injection`.
//!
//! Per text and role: secrets and PII take the privacy action for the text's direction (user,
//! assistant and system messages are input; retrieved documents and tool outputs use
//! `privacy.retrieved`, which defaults to the input's), injection takes `injection.input` for
//! user and assistant turns (direct) and `injection.retrieved` for retrieved documents and tool
//! outputs (indirect: instructions inside data are suspect), at `injection.threshold`. System
//! prompts are scanned whole for secrets and PII; for injection only what conformance did not
//! approve is scored, as user input (`Unapproved`: the values filled into the template's
//! variables, or a whole system text no template vouches for), since the approved template's
//! own instructions would read as injection. Tool-call arguments are scanned as input.
//! NUL bytes are refused as invalid input. Every finding is recorded (kind, rule, span,
//! confidence), never the text; detected classes feed the sovereignty guard even when no
//! privacy policy is set.

use std::borrow::Cow;

use gavel_contract::{FindingAction, Policy, PrivacyActions};
use gavel_scan::{
    ContentRole as ScanRole, DataClasses, Finding, FindingKind, Redactor, ScanConfig, Scanners,
};

use crate::decision::{FindingRecord, Reason, ReasonCode, Redaction};
use crate::request::ContentRole;
use crate::scan::{ContentScanner, ScanReport, Unapproved};

/// The default content scanner: every detector on, the contract's policy deciding what to do.
pub struct PolicyScanner {
    scanners: Scanners,
}

impl PolicyScanner {
    pub fn new() -> Result<PolicyScanner, String> {
        // Findings are thresholded here, by the contract, so the scanners report all evidence
        // from a low floor.
        let config = ScanConfig {
            injection_threshold: 0.0,
            ..ScanConfig::default()
        };
        Scanners::new(&config)
            .map(|scanners| PolicyScanner { scanners })
            .map_err(|e| e.to_string())
    }
}

struct Direction {
    privacy: Option<PrivacyActions>,
    injection: Option<FindingAction>,
    code: ReasonCode,
    scan_role: ScanRole,
}

fn direction(role: ContentRole, policy: &Policy) -> Option<Direction> {
    let injection_threshold_action = |indirect: bool| {
        policy
            .injection
            .as_ref()
            .map(|i| if indirect { i.retrieved } else { i.input })
    };
    match role {
        // System prompts passed conformance (they are the approved template): the whole text is
        // scanned for secrets and PII here, and for injection only what conformance did not
        // approve (`PolicyScanner::score_unapproved`), since the template's own instructions
        // would read as injection.
        ContentRole::System => Some(Direction {
            privacy: policy.privacy.as_ref().map(|p| p.input),
            injection: None,
            code: ReasonCode::InjectionDirect,
            scan_role: ScanRole::System,
        }),
        ContentRole::User | ContentRole::Assistant => Some(Direction {
            privacy: policy.privacy.as_ref().map(|p| p.input),
            injection: injection_threshold_action(false),
            code: ReasonCode::InjectionDirect,
            scan_role: ScanRole::User,
        }),
        ContentRole::Retrieved | ContentRole::ToolOutput => Some(Direction {
            privacy: policy.privacy.as_ref().map(|p| p.retrieved),
            injection: injection_threshold_action(true),
            code: ReasonCode::InjectionIndirect,
            scan_role: if role == ContentRole::Retrieved {
                ScanRole::Retrieved
            } else {
                ScanRole::ToolOutput
            },
        }),
    }
}

fn evidence(reason: Reason, index: usize, role: ContentRole, f: &Finding) -> Reason {
    reason
        .with("rule_id", f.rule_id)
        .with("text_index", index)
        .with("role", role.as_str())
        .with("start", f.span.start)
        .with("end", f.span.end)
        .with("confidence", f64::from(f.confidence))
}

/// What an injection score of text `index` adds to the report: a BLOCK or a note when it is
/// at or over the contract's threshold, with the strongest piece of evidence among the
/// findings recorded for that text from `first` on.
fn judge_injection(
    report: &mut ScanReport,
    policy: &Policy,
    (action, code, described): (Option<FindingAction>, ReasonCode, [&str; 2]),
    (index, score, first): (usize, f32, usize),
) {
    let (Some(action), Some(threshold)) = (action, policy.injection.as_ref().map(|i| i.threshold))
    else {
        return;
    };
    let score = f64::from(score);
    if score < threshold || action == FindingAction::Allow {
        return;
    }
    let findings = report.findings.get(first..).unwrap_or_default();
    let strongest = findings
        .iter()
        .filter(|f| f.kind == FindingKind::Injection.as_str())
        .max_by(|a, b| a.confidence.total_cmp(&b.confidence));
    let [what, whose] = described;
    let message =
        format!("{what}{whose} scores {score:.2} for prompt injection (threshold {threshold})");
    let mut reason = Reason::new(code, message)
        .with("score", score)
        .with("threshold", threshold)
        .with("text_index", index);
    if let Some(f) = strongest {
        reason = reason
            .with("feature", f.rule_id.clone())
            .with("start", f.start)
            .with("end", f.end);
    }
    if action == FindingAction::Block {
        report.block.get_or_insert(reason);
    } else {
        report.notes.push(reason);
    }
}

impl PolicyScanner {
    /// Scores for injection, as user input, the bytes of system text `index` that conformance
    /// did not approve; their findings are recorded at their place in the whole text.
    fn score_unapproved(
        &self,
        (index, text): (usize, &str),
        unapproved: &[Unapproved],
        policy: &Policy,
        report: &mut ScanReport,
    ) {
        let Some(injection) = &policy.injection else {
            return;
        };
        let mut findings = Vec::new();
        // Scores `read`, which starts at `offset` in the text, records its evidence there and
        // judges it; its score.
        let mut score_at = |report: &mut ScanReport, offset: usize, read: &str, whose: &str| {
            findings.clear();
            let score = self
                .scanners
                .score_injection(read, ScanRole::User, &mut findings);
            let first = report.findings.len();
            report
                .findings
                .extend(findings.iter().map(|f| finding_record(index, f, offset)));
            judge_injection(
                report,
                policy,
                (
                    Some(injection.input),
                    ReasonCode::InjectionDirect,
                    ["system content", whose],
                ),
                (index, score, first),
            );
            score
        };
        let mut values = 0;
        let mut highest = 0.0f32;
        let mut stretch: Option<std::ops::Range<usize>> = None;
        for span in unapproved.iter().filter(|u| u.text_index == index) {
            let Some(value) = text.get(span.span.clone()) else {
                continue;
            };
            values += 1;
            stretch = Some(match stretch {
                Some(s) => s.start.min(span.span.start)..s.end.max(span.span.end),
                None => span.span.clone(),
            });
            let score = score_at(report, span.span.start, value, " the caller filled in");
            highest = highest.max(score);
        }
        // The model reads the values together, with the approved words between them: an
        // attack split across two variables ("ignore all the previous" / "guidelines ...") is
        // whole only there. When no value is over the threshold alone, the prompt's stretch
        // from the first value to the last is scored as the model reads it, approved words and
        // sentence breaks between included (values a full stop apart do not add up).
        let stretch = stretch.filter(|_| values > 1 && f64::from(highest) < injection.threshold);
        if let Some(s) = stretch {
            if let Some(read) = text.get(s.clone()) {
                score_at(
                    report,
                    s.start,
                    read,
                    " the caller filled in, read with the words between,",
                );
            }
        }
    }
}

/// A finding's record, its span moved by `offset` (where the scanned text starts in text `index`).
fn finding_record(index: usize, f: &Finding, offset: usize) -> FindingRecord {
    FindingRecord {
        kind: f.kind.as_str().to_string(),
        rule_id: f.rule_id.to_string(),
        text_index: index,
        start: f.span.start + offset,
        end: f.span.end + offset,
        confidence: (f.confidence * 1000.0).round() / 1000.0,
    }
}

impl ContentScanner for PolicyScanner {
    fn scan(
        &self,
        texts: &[(ContentRole, Cow<'_, str>)],
        unapproved: &[Unapproved],
        policy: &Policy,
        report: &mut ScanReport,
    ) {
        let mut findings = Vec::new();
        let mut classes = std::collections::BTreeSet::new();
        let mut redactor: Option<Redactor> = None;
        for (index, (role, text)) in texts.iter().enumerate() {
            let Some(direction) = direction(*role, policy) else {
                continue;
            };
            if let Some(nul) = text.find('\0') {
                let reason = Reason::new(
                    ReasonCode::InputInvalid,
                    "a NUL byte in the content; send text without control bytes",
                )
                .with("text_index", index)
                .with("start", nul);
                report.block.get_or_insert(reason);
                continue;
            }
            findings.clear();
            let outcome = self.scanners.scan(text, direction.scan_role, &mut findings);
            classes.extend(DataClasses::from_findings(&findings).names());
            let first = report.findings.len();
            for f in &findings {
                report.findings.push(finding_record(index, f, 0));
                let (action, code, what) = match f.kind {
                    FindingKind::Secret => (
                        direction.privacy.map(|p| p.secret),
                        ReasonCode::PrivacySecret,
                        "a secret",
                    ),
                    FindingKind::Pii => (
                        direction.privacy.map(|p| p.pii),
                        ReasonCode::PrivacyPii,
                        "personal data",
                    ),
                    FindingKind::Injection => continue,
                    FindingKind::InvalidUtf8 | FindingKind::NulByte => (
                        Some(FindingAction::Block),
                        ReasonCode::InputInvalid,
                        "invalid input",
                    ),
                };
                let message = format!("{what} ({}) in {} content", f.rule_id, role.as_str());
                match action {
                    Some(FindingAction::Block) => {
                        report.block.get_or_insert_with(|| {
                            evidence(Reason::new(code, message), index, *role, f)
                        });
                    }
                    Some(FindingAction::Redact) => {
                        let redactor = redactor.get_or_insert_with(Redactor::new);
                        match placeholder(redactor, text, f) {
                            Some(placeholder) => report.redactions.push(Redaction {
                                text_index: index,
                                start: f.span.start,
                                end: f.span.end,
                                placeholder,
                            }),
                            // A span that cannot be redacted must not go out unredacted.
                            None => {
                                report.block.get_or_insert_with(|| {
                                    evidence(
                                        Reason::new(
                                            code,
                                            format!("{message}, and it cannot be redacted"),
                                        ),
                                        index,
                                        *role,
                                        f,
                                    )
                                });
                            }
                        }
                    }
                    Some(FindingAction::Flag) => {
                        report
                            .notes
                            .push(evidence(Reason::new(code, message), index, *role, f))
                    }
                    Some(FindingAction::Allow) | None => {}
                }
            }
            judge_injection(
                report,
                policy,
                (
                    direction.injection,
                    direction.code,
                    [role.as_str(), " content"],
                ),
                (index, outcome.injection_score, first),
            );
            if *role == ContentRole::System {
                self.score_unapproved((index, text), unapproved, policy, report);
            }
        }
        report
            .detected_classes
            .extend(classes.into_iter().map(str::to_string));
    }
}

/// The placeholder for one finding, numbered consistently within the request.
fn placeholder(redactor: &mut Redactor, text: &str, finding: &Finding) -> Option<String> {
    let value = text.get(finding.span.clone())?;
    let alone = Finding {
        span: 0..value.len(),
        ..finding.clone()
    };
    Some(redactor.redact(value, std::slice::from_ref(&alone)))
}
