//! What the engine returns: a verdict with stable reason codes, obligations and the ids that tie
//! it to the approval and contract version that made it possible.

use serde::Serialize;
use serde_json::Value;

use gavel_contract::time::Timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Verdict {
    Allow,
    Block,
    Cooldown,
    NoOp,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "ALLOW",
            Verdict::Block => "BLOCK",
            Verdict::Cooldown => "COOLDOWN",
            Verdict::NoOp => "NO_OP",
        }
    }
}

/// Every reason code the engine can give. The strings are a public, stable API: they appear
/// in ledger records, dashboards and alert rules. `docs/reasons.md` lists each one; a test
/// keeps the two in step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum ReasonCode {
    #[serde(rename = "governance.unavailable")]
    GovernanceUnavailable,
    #[serde(rename = "deployment.unknown")]
    DeploymentUnknown,
    #[serde(rename = "principal.mismatch")]
    PrincipalMismatch,
    #[serde(rename = "killswitch.active")]
    KillswitchActive,
    #[serde(rename = "cooldown.active")]
    CooldownActive,
    #[serde(rename = "abuse.cooldown")]
    AbuseCooldown,
    #[serde(rename = "approval.missing")]
    ApprovalMissing,
    #[serde(rename = "approval.pending")]
    ApprovalPending,
    #[serde(rename = "approval.expired")]
    ApprovalExpired,
    #[serde(rename = "approval.revoked")]
    ApprovalRevoked,
    #[serde(rename = "approval.binding_mismatch")]
    ApprovalBindingMismatch,
    #[serde(rename = "approval.requirements_changed")]
    ApprovalRequirementsChanged,
    #[serde(rename = "tier.unacceptable")]
    TierUnacceptable,
    #[serde(rename = "model.deprecated")]
    ModelDeprecated,
    #[serde(rename = "conformance.model")]
    ConformanceModel,
    #[serde(rename = "conformance.system_prompt")]
    ConformanceSystemPrompt,
    #[serde(rename = "conformance.params")]
    ConformanceParams,
    #[serde(rename = "conformance.tool_schema")]
    ConformanceToolSchema,
    #[serde(rename = "conformance.tool_args")]
    ConformanceToolArgs,
    #[serde(rename = "tool.not_approved")]
    ToolNotApproved,
    #[serde(rename = "chain.step_undeclared")]
    ChainStepUndeclared,
    #[serde(rename = "chain.run_missing")]
    ChainRunMissing,
    #[serde(rename = "sovereignty.endpoint")]
    SovereigntyEndpoint,
    #[serde(rename = "sovereignty.routed")]
    SovereigntyRouted,
    #[serde(rename = "budget.tokens")]
    BudgetTokens,
    #[serde(rename = "budget.spend")]
    BudgetSpend,
    #[serde(rename = "budget.rate")]
    BudgetRate,
    #[serde(rename = "budget.tool_calls")]
    BudgetToolCalls,
    #[serde(rename = "budget.resource")]
    BudgetResource,
    #[serde(rename = "params.max_tokens_capped")]
    MaxTokensCapped,
    #[serde(rename = "privacy.pii")]
    PrivacyPii,
    #[serde(rename = "privacy.secret")]
    PrivacySecret,
    #[serde(rename = "injection.direct")]
    InjectionDirect,
    #[serde(rename = "injection.indirect")]
    InjectionIndirect,
    #[serde(rename = "input.invalid")]
    InputInvalid,
    #[serde(rename = "idempotent.duplicate")]
    IdempotentDuplicate,
    #[serde(rename = "dry_run")]
    DryRun,
    #[serde(rename = "rule.deny")]
    RuleDeny,
    #[serde(rename = "rule.flagged")]
    RuleFlagged,
    #[serde(rename = "contract.breach.accuracy")]
    ContractBreachAccuracy,
    #[serde(rename = "contract.breach.drift")]
    ContractBreachDrift,
    #[serde(rename = "contract.breach.latency")]
    ContractBreachLatency,
    #[serde(rename = "contract.breach.error")]
    ContractBreachError,
    #[serde(rename = "contract.breach.abuse")]
    ContractBreachAbuse,
    #[serde(rename = "contract.breach.fallback")]
    ContractBreachFallback,
    #[serde(rename = "contract.breach.fairness")]
    ContractBreachFairness,
    #[serde(rename = "contract.breach.spend")]
    ContractBreachSpend,
}

impl ReasonCode {
    pub const ALL: [ReasonCode; 47] = [
        ReasonCode::GovernanceUnavailable,
        ReasonCode::DeploymentUnknown,
        ReasonCode::PrincipalMismatch,
        ReasonCode::KillswitchActive,
        ReasonCode::CooldownActive,
        ReasonCode::AbuseCooldown,
        ReasonCode::ApprovalMissing,
        ReasonCode::ApprovalPending,
        ReasonCode::ApprovalExpired,
        ReasonCode::ApprovalRevoked,
        ReasonCode::ApprovalBindingMismatch,
        ReasonCode::ApprovalRequirementsChanged,
        ReasonCode::TierUnacceptable,
        ReasonCode::ModelDeprecated,
        ReasonCode::ConformanceModel,
        ReasonCode::ConformanceSystemPrompt,
        ReasonCode::ConformanceParams,
        ReasonCode::ConformanceToolSchema,
        ReasonCode::ConformanceToolArgs,
        ReasonCode::ToolNotApproved,
        ReasonCode::ChainStepUndeclared,
        ReasonCode::ChainRunMissing,
        ReasonCode::SovereigntyEndpoint,
        ReasonCode::SovereigntyRouted,
        ReasonCode::BudgetTokens,
        ReasonCode::BudgetSpend,
        ReasonCode::BudgetRate,
        ReasonCode::BudgetToolCalls,
        ReasonCode::BudgetResource,
        ReasonCode::MaxTokensCapped,
        ReasonCode::PrivacyPii,
        ReasonCode::PrivacySecret,
        ReasonCode::InjectionDirect,
        ReasonCode::InjectionIndirect,
        ReasonCode::InputInvalid,
        ReasonCode::IdempotentDuplicate,
        ReasonCode::DryRun,
        ReasonCode::RuleDeny,
        ReasonCode::RuleFlagged,
        ReasonCode::ContractBreachAccuracy,
        ReasonCode::ContractBreachDrift,
        ReasonCode::ContractBreachLatency,
        ReasonCode::ContractBreachError,
        ReasonCode::ContractBreachAbuse,
        ReasonCode::ContractBreachFallback,
        ReasonCode::ContractBreachFairness,
        ReasonCode::ContractBreachSpend,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReasonCode::GovernanceUnavailable => "governance.unavailable",
            ReasonCode::DeploymentUnknown => "deployment.unknown",
            ReasonCode::PrincipalMismatch => "principal.mismatch",
            ReasonCode::KillswitchActive => "killswitch.active",
            ReasonCode::CooldownActive => "cooldown.active",
            ReasonCode::AbuseCooldown => "abuse.cooldown",
            ReasonCode::ApprovalMissing => "approval.missing",
            ReasonCode::ApprovalPending => "approval.pending",
            ReasonCode::ApprovalExpired => "approval.expired",
            ReasonCode::ApprovalRevoked => "approval.revoked",
            ReasonCode::ApprovalBindingMismatch => "approval.binding_mismatch",
            ReasonCode::ApprovalRequirementsChanged => "approval.requirements_changed",
            ReasonCode::TierUnacceptable => "tier.unacceptable",
            ReasonCode::ModelDeprecated => "model.deprecated",
            ReasonCode::ConformanceModel => "conformance.model",
            ReasonCode::ConformanceSystemPrompt => "conformance.system_prompt",
            ReasonCode::ConformanceParams => "conformance.params",
            ReasonCode::ConformanceToolSchema => "conformance.tool_schema",
            ReasonCode::ConformanceToolArgs => "conformance.tool_args",
            ReasonCode::ToolNotApproved => "tool.not_approved",
            ReasonCode::ChainStepUndeclared => "chain.step_undeclared",
            ReasonCode::ChainRunMissing => "chain.run_missing",
            ReasonCode::SovereigntyEndpoint => "sovereignty.endpoint",
            ReasonCode::SovereigntyRouted => "sovereignty.routed",
            ReasonCode::BudgetTokens => "budget.tokens",
            ReasonCode::BudgetSpend => "budget.spend",
            ReasonCode::BudgetRate => "budget.rate",
            ReasonCode::BudgetToolCalls => "budget.tool_calls",
            ReasonCode::BudgetResource => "budget.resource",
            ReasonCode::MaxTokensCapped => "params.max_tokens_capped",
            ReasonCode::PrivacyPii => "privacy.pii",
            ReasonCode::PrivacySecret => "privacy.secret",
            ReasonCode::InjectionDirect => "injection.direct",
            ReasonCode::InjectionIndirect => "injection.indirect",
            ReasonCode::InputInvalid => "input.invalid",
            ReasonCode::IdempotentDuplicate => "idempotent.duplicate",
            ReasonCode::DryRun => "dry_run",
            ReasonCode::RuleDeny => "rule.deny",
            ReasonCode::RuleFlagged => "rule.flagged",
            ReasonCode::ContractBreachAccuracy => "contract.breach.accuracy",
            ReasonCode::ContractBreachDrift => "contract.breach.drift",
            ReasonCode::ContractBreachLatency => "contract.breach.latency",
            ReasonCode::ContractBreachError => "contract.breach.error",
            ReasonCode::ContractBreachAbuse => "contract.breach.abuse",
            ReasonCode::ContractBreachFallback => "contract.breach.fallback",
            ReasonCode::ContractBreachFairness => "contract.breach.fairness",
            ReasonCode::ContractBreachSpend => "contract.breach.spend",
        }
    }

    /// `contract.breach.<signal>` for a monitored signal (a threshold name such as `drift_js`
    /// maps to its signal, `drift`).
    pub fn breach_of(signal: &str) -> Option<ReasonCode> {
        Some(match signal {
            "accuracy" => ReasonCode::ContractBreachAccuracy,
            "drift" => ReasonCode::ContractBreachDrift,
            "latency" => ReasonCode::ContractBreachLatency,
            "error" => ReasonCode::ContractBreachError,
            "abuse" => ReasonCode::ContractBreachAbuse,
            "fallback" => ReasonCode::ContractBreachFallback,
            "fairness" => ReasonCode::ContractBreachFairness,
            "spend" => ReasonCode::ContractBreachSpend,
            _ => return None,
        })
    }

    /// Blocks for these reasons count as strikes against the principal (SPEC: repeated abuse
    /// leads to a cooldown). Configuration mistakes such as a missing approval do not.
    pub fn is_abuse(self) -> bool {
        matches!(
            self,
            ReasonCode::InjectionDirect
                | ReasonCode::InjectionIndirect
                | ReasonCode::PrivacySecret
                | ReasonCode::ToolNotApproved
                | ReasonCode::ConformanceSystemPrompt
                | ReasonCode::ConformanceToolSchema
                | ReasonCode::ConformanceToolArgs
        )
    }
}

/// One reason: a stable code, a sentence for people, and evidence (limit and value, finding
/// kind and span...) as flat JSON fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reason {
    pub code: ReasonCode,
    pub message: String,
    #[serde(flatten)]
    pub evidence: serde_json::Map<String, Value>,
}

impl Reason {
    pub fn new(code: ReasonCode, message: impl Into<String>) -> Reason {
        Reason {
            code,
            message: message.into(),
            evidence: serde_json::Map::new(),
        }
    }

    /// Adds a piece of evidence. `code` and `message` are the reason's own members: evidence
    /// under either name would give the ledger a record with a key twice, which it refuses
    /// (the decision would then fail closed), so it is a mistake in the caller.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Reason {
        debug_assert!(
            key != "code" && key != "message",
            "evidence named `{key}` would clash with the reason's own member"
        );
        self.evidence.insert(key.to_string(), value.into());
        self
    }
}

/// What must happen for an ALLOW to hold.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Obligation {
    /// Send the request to this deployment instead (sovereignty routing).
    Route {
        deployment: String,
        endpoint: String,
        binding: String,
        approval_id: String,
    },
    /// Send at most this many completion tokens.
    CapMaxTokens { max_tokens: u64 },
    /// Replace these byte spans of these texts with the placeholders.
    Redact { redactions: Vec<Redaction> },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Redaction {
    /// Index into the request's texts (messages first, then content parts).
    pub text_index: usize,
    pub start: usize,
    pub end: usize,
    pub placeholder: String,
}

/// A scanner finding as the decision records it: never the sensitive text itself.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FindingRecord {
    pub kind: String,
    pub rule_id: String,
    pub text_index: usize,
    pub start: usize,
    pub end: usize,
    pub confidence: f32,
}

/// The decision as the ledger records it: the decision itself plus its reason codes as a
/// top-level list, which the ledger indexes and filters on.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionRecord<'d> {
    #[serde(flatten)]
    decision: &'d Decision,
    reason_codes: Vec<&'static str>,
    /// `gateway` for a call through the gateway's proxy, whose outcome the gateway settles
    /// itself from what the upstream reports; absent when the caller reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    settled_by: Option<&'static str>,
    /// The decision whose upstream call failed, when this one is its approved fallback
    /// deployment's: the ledger ties the two together.
    #[serde(skip_serializing_if = "Option::is_none")]
    fallback_for: Option<&'d str>,
}

impl<'d> DecisionRecord<'d> {
    /// The value of `settled_by` in the record of a decision the gateway settles itself.
    pub const SETTLED_BY_GATEWAY: &'static str = "gateway";

    /// Records that the gateway settles this decision's outcome: in the ledger, so that no
    /// caller reports it instead (at a usage of its choosing), whenever and wherever from.
    pub fn settled_by_gateway(mut self) -> Self {
        self.settled_by = Some(Self::SETTLED_BY_GATEWAY);
        self
    }

    /// Records that this decision is the approved fallback for `failed`, a decision whose
    /// upstream call failed.
    pub fn fallback_for(mut self, failed: Option<&'d str>) -> Self {
        self.fallback_for = failed;
        self
    }
}

/// The reservation a decision holds; settle it with the actual usage when the action is done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Estimate {
    pub prompt_tokens: u64,
    pub max_tokens: u64,
    pub usd_micros: u64,
    pub tool_calls: u64,
}

/// The decision that a dry run would have made.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WouldBe {
    pub verdict: Verdict,
    pub reasons: Vec<Reason>,
    pub obligations: Vec<Obligation>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub decision_id: String,
    pub verdict: Verdict,
    pub reasons: Vec<Reason>,
    pub obligations: Vec<Obligation>,
    pub findings: Vec<FindingRecord>,
    pub deployment: String,
    pub use_case: Option<String>,
    pub tier: Option<String>,
    pub binding: Option<String>,
    pub approval_id: Option<String>,
    pub contract_version: String,
    pub principal: String,
    pub run_id: Option<String>,
    pub at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_be: Option<WouldBe>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_decision_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimate: Option<Estimate>,
    /// SHA-256 of the request's texts, so the ledger can tie a decision to its input without
    /// storing it.
    pub input_sha256: String,
    /// A cooldown this decision started (the principal's abuse strikes reached the limit), so
    /// the caller can record it as the governance change it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_cooldown: Option<crate::state::Cooldown>,
}

impl Decision {
    /// The decision as the ledger records it.
    pub fn record(&self) -> DecisionRecord<'_> {
        DecisionRecord {
            decision: self,
            reason_codes: self.reason_code_strings(),
            settled_by: None,
            fallback_for: None,
        }
    }

    /// The reason codes as strings, for indexes and filters.
    pub fn reason_code_strings(&self) -> Vec<&'static str> {
        self.reasons.iter().map(|r| r.code.as_str()).collect()
    }

    pub fn reason_codes(&self) -> impl Iterator<Item = ReasonCode> + '_ {
        self.reasons.iter().map(|r| r.code)
    }

    /// Sets `retry_after` from an instant, rounding the wait up to whole seconds.
    pub(crate) fn set_retry_after(&mut self, now: Timestamp, until: Timestamp) {
        let wait_ms = until.millis().saturating_sub(now.millis()).max(0) as u64;
        self.retry_after = Some(until.to_rfc3339());
        self.retry_after_seconds = Some(wait_ms.div_ceil(1000).max(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ledger refuses a record with a key twice: evidence must not shadow `code` or
    /// `message`, which sit next to it in the reason's JSON.
    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "would clash")]
    fn evidence_cannot_shadow_the_reason_code() {
        let _ = Reason::new(ReasonCode::BudgetTokens, "over").with("code", "x");
    }

    #[test]
    fn evidence_sits_next_to_code_and_message() {
        let reason = Reason::new(ReasonCode::BudgetTokens, "over").with("limit", 5);
        let json = serde_json::to_value(&reason).unwrap();
        assert_eq!(json["code"], "budget.tokens");
        assert_eq!(json["limit"], 5);
    }
}
