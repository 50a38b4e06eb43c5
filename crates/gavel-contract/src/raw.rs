//! The contract exactly as written in YAML.
//!
//! Every struct denies unknown keys, and values that later validation may reject carry their
//! source location (`Spanned`), so an error can name `file:line:col`. Nothing outside this crate
//! sees these types: `validate` turns them into the model in `model.rs`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

pub(crate) type Sp<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawContract {
    pub version: Sp<u32>,
    pub organization: Sp<String>,
    pub risk_taxonomy: RawTaxonomy,
    pub endpoints: BTreeMap<String, RawEndpoint>,
    pub use_cases: BTreeMap<String, RawUseCase>,
    pub deployments: BTreeMap<String, RawDeployment>,
    #[serde(default)]
    pub policy: RawPolicy,
    #[serde(default)]
    pub prices: BTreeMap<String, RawPrice>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTaxonomy {
    pub classify: Vec<RawClassifyRule>,
    pub approval_requirements: Sp<BTreeMap<String, RawRequirements>>,
    #[serde(default)]
    pub spend_tiers: Vec<RawSpendTier>,
}

/// Either `{ domains: [...], tier: T }` or `{ default: T }`; validation checks which.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawClassifyRule {
    #[serde(default)]
    pub domains: Option<Vec<Sp<String>>>,
    #[serde(default)]
    pub tier: Option<Sp<String>>,
    #[serde(default)]
    pub default: Option<Sp<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRequirements {
    #[serde(default)]
    pub allowed: Option<bool>,
    #[serde(default)]
    pub approvers: Option<Sp<u32>>,
    #[serde(default)]
    pub distinct_roles: Vec<String>,
    #[serde(default)]
    pub evidence: Vec<String>,
    #[serde(default)]
    pub max_validity_days: Option<Sp<u32>>,
    #[serde(default)]
    pub require_thresholds: Vec<Sp<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSpendTier {
    pub above_usd_per_month: Sp<f64>,
    pub extra_role: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEndpoint {
    /// `openai` (an OpenAI-compatible HTTP API, the default) or `mock` (gavel answers itself).
    #[serde(default)]
    pub kind: Option<Sp<String>>,
    #[serde(default)]
    pub url: Option<Sp<String>>,
    pub location: Sp<String>,
    pub region: String,
    /// The environment variable holding the upstream's API key (never the key itself).
    #[serde(default)]
    pub api_key_env: Option<Sp<String>>,
    #[serde(default)]
    pub mock: Option<RawMock>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMock {
    /// Delay before the first byte of a reply, in milliseconds.
    #[serde(default)]
    pub latency_ms: Option<Sp<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUseCase {
    pub domain: Sp<String>,
    pub owner: Sp<String>,
    pub oncall: RawOncall,
    pub population: String,
    #[serde(default)]
    pub data_classes: Vec<Sp<String>>,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOncall {
    pub webhook: Sp<String>,
    #[serde(default)]
    pub runbook: Option<String>,
    #[serde(default)]
    pub severity_map: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDeployment {
    pub use_case: Sp<String>,
    pub endpoint: Sp<String>,
    pub model: RawModel,
    #[serde(default)]
    pub prompt_template: Option<Sp<String>>,
    #[serde(default)]
    pub prompt_variables: Vec<Sp<String>>,
    #[serde(default)]
    pub tools: BTreeMap<String, Sp<String>>,
    #[serde(default)]
    pub params: BTreeMap<String, Sp<RawParam>>,
    #[serde(default)]
    pub retrieval: Option<RawRetrieval>,
    #[serde(default)]
    pub eval_set: Option<Sp<String>>,
    #[serde(default)]
    pub fallback: Option<Sp<RawFallback>>,
    #[serde(default)]
    pub steps: BTreeMap<String, RawStep>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawModel {
    pub name: String,
    pub snapshot: Sp<String>,
    #[serde(default)]
    pub deprecates: Option<Sp<String>>,
}

/// `temperature: 0.2` (exactly this), `temperature: { min: 0, max: 0.7 }`, or a string/bool.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawParam {
    Number(f64),
    Bool(bool),
    Text(String),
    Range(RawRange),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRange {
    pub min: f64,
    pub max: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetrieval {
    pub index: String,
    #[serde(default)]
    pub top_k: Option<u32>,
    #[serde(default)]
    pub embedding_model: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFallback {
    #[serde(default)]
    pub deployment: Option<String>,
    #[serde(default)]
    pub response: Option<String>,
    #[serde(default)]
    pub human_queue: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStep {
    pub kind: Sp<String>,
    #[serde(default)]
    pub tool: Option<Sp<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    #[serde(default)]
    pub privacy: Option<RawPrivacy>,
    #[serde(default)]
    pub injection: Option<RawInjection>,
    #[serde(default)]
    pub sovereignty: Vec<RawSovereigntyRule>,
    #[serde(default)]
    pub budgets: Vec<Sp<RawBudget>>,
    #[serde(default)]
    pub resources: BTreeMap<String, RawResource>,
    #[serde(default)]
    pub abuse: Option<RawAbuse>,
    #[serde(default)]
    pub idempotency: Option<RawIdempotency>,
    #[serde(default)]
    pub payload_capture: Option<RawPayloadCapture>,
    #[serde(default)]
    pub monitoring: Option<RawMonitoring>,
    #[serde(default)]
    pub rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    pub id: Sp<String>,
    pub file: Sp<String>,
    #[serde(default)]
    pub action: Option<Sp<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMonitoring {
    pub window: Option<Sp<String>>,
    pub bucket: Option<Sp<String>>,
    pub min_samples: Option<Sp<u64>>,
    pub drift_bins: Option<Sp<u32>>,
    pub drift_min_samples: Option<Sp<u64>>,
    pub min_group_size: Option<Sp<u64>>,
    pub probe_percent: Option<Sp<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPayloadCapture {
    pub subject: Sp<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPrivacy {
    pub input: RawPrivacyActions,
    #[serde(default)]
    pub retrieved: Option<RawPrivacyActions>,
    pub output: RawPrivacyActions,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPrivacyActions {
    pub pii: Sp<String>,
    pub secret: Sp<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawInjection {
    pub input: Sp<String>,
    pub retrieved: Sp<String>,
    pub threshold: Sp<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSovereigntyRule {
    pub data_class: Sp<String>,
    pub allow: Vec<Sp<String>>,
    pub on_violation: Sp<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBudget {
    pub scope: Sp<String>,
    #[serde(default)]
    pub window: Option<Sp<String>>,
    #[serde(default)]
    pub use_case: Option<Sp<String>>,
    #[serde(default)]
    pub deployment: Option<Sp<String>>,
    #[serde(default)]
    pub tokens: Option<u64>,
    #[serde(default)]
    pub usd: Option<Sp<f64>>,
    #[serde(default)]
    pub requests: Option<u64>,
    #[serde(default)]
    pub tool_calls: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawResource {
    pub capacity: Sp<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAbuse {
    pub strikes: Sp<u32>,
    pub within: Sp<String>,
    pub cooldown: Sp<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIdempotency {
    pub window: Sp<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPrice {
    pub input: Sp<f64>,
    pub output: Sp<f64>,
    #[serde(default)]
    pub image_tokens: Option<Sp<u64>>,
    #[serde(default)]
    pub low_detail_image_tokens: Option<Sp<u64>>,
}
