//! The content-scanning stage's seam. The engine asks a `ContentScanner` for findings on the
//! request's texts; the scanner applies the contract's privacy and injection policy and says
//! whether to block, what to redact and which data classes it saw (which feed sovereignty).

use std::borrow::Cow;
use std::ops::Range;

use gavel_contract::Policy;

use crate::decision::{FindingRecord, Reason, Redaction};
use crate::request::ContentRole;

#[derive(Debug, Default)]
pub struct ScanReport {
    pub findings: Vec<FindingRecord>,
    /// Set when a finding's policy action is `block`.
    pub block: Option<Reason>,
    /// Flagged (not blocking) findings, reported as reasons on the decision.
    pub notes: Vec<Reason>,
    pub redactions: Vec<Redaction>,
    /// Data classes seen in the content, e.g. `pii`, `secret`.
    pub detected_classes: Vec<String>,
}

/// Bytes `span` of system text `text_index` that conformance did not approve: the values a
/// caller filled into the approved prompt template's variables, or the whole text where no
/// template vouches for it. They are the caller's words, so they are scored for injection as
/// user input, where the rest of a system text is not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unapproved {
    pub text_index: usize,
    pub span: Range<usize>,
}

pub trait ContentScanner: Send + Sync {
    /// Scans `texts` (indexed as `Redaction::text_index` and `FindingRecord::text_index`) under
    /// `policy` and fills `report`; `unapproved` says which bytes of system texts are the
    /// caller's.
    fn scan(
        &self,
        texts: &[(ContentRole, Cow<'_, str>)],
        unapproved: &[Unapproved],
        policy: &Policy,
        report: &mut ScanReport,
    );
}
