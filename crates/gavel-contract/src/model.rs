//! The validated contract. Only `validate` constructs these types, so holding a `Contract`
//! means every reference resolves, every value is in range and every binding is computed.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use crate::template::PromptTemplate;
use crate::time::{Date, Span};

/// A validated governance contract. Its `version` is the SHA-256 of its canonical form.
#[derive(Debug, Clone, Serialize)]
pub struct Contract {
    #[serde(skip)]
    pub version: ContractVersion,
    #[serde(skip)]
    pub source: PathBuf,
    pub schema: u32,
    pub organization: String,
    pub taxonomy: Taxonomy,
    pub endpoints: BTreeMap<String, Endpoint>,
    pub use_cases: BTreeMap<String, UseCase>,
    pub deployments: BTreeMap<String, Deployment>,
    pub policy: Policy,
    pub prices: BTreeMap<String, Price>,
}

impl Contract {
    pub fn deployment(&self, id: &str) -> Option<&Deployment> {
        self.deployments.get(id)
    }

    pub fn use_case_of(&self, deployment: &Deployment) -> Option<&UseCase> {
        self.use_cases.get(&deployment.use_case)
    }

    pub fn endpoint_of(&self, deployment: &Deployment) -> Option<&Endpoint> {
        self.endpoints.get(&deployment.endpoint)
    }

    pub fn price_of(&self, snapshot: &str) -> Option<Price> {
        self.prices.get(snapshot).copied()
    }

    /// The most prompt tokens one input image counts for on `snapshot`; with `low_detail`, one
    /// sent with `detail: low`.
    pub fn image_tokens_of(&self, snapshot: &str, low_detail: bool) -> u64 {
        self.price_of(snapshot).map_or(DEFAULT_IMAGE_TOKENS, |p| {
            p.reserved_image_tokens(low_detail)
        })
    }
}

/// Hex SHA-256 of a contract's canonical form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(transparent)]
pub struct ContractVersion(pub String);

impl fmt::Display for ContractVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The first 12 hex digits of a hash, as messages and tables show bindings and versions.
pub fn short_hash(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// Hex SHA-256 of a deployment's canonical form, file contents included.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Default, PartialOrd, Ord)]
#[serde(transparent)]
pub struct Binding(pub String);

impl fmt::Display for Binding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The EU AI Act's risk tiers, most severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Unacceptable,
    High,
    Limited,
    Minimal,
}

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::Unacceptable, Tier::High, Tier::Limited, Tier::Minimal];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Unacceptable => "unacceptable",
            Tier::High => "high",
            Tier::Limited => "limited",
            Tier::Minimal => "minimal",
        }
    }

    pub fn parse(text: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.as_str() == text)
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Taxonomy {
    pub classify: Vec<ClassifyRule>,
    pub default_tier: Tier,
    pub requirements: BTreeMap<Tier, ApprovalRequirements>,
    pub spend_tiers: Vec<SpendTier>,
}

impl Taxonomy {
    /// The tier of a domain: the first rule naming it, else the default. The second value says
    /// whether a rule named it (a domain no rule names is worth a warning: it may be a typo).
    pub fn classify(&self, domain: &str) -> (Tier, bool) {
        self.classify
            .iter()
            .find(|rule| rule.domains.iter().any(|d| d == domain))
            .map_or((self.default_tier, false), |rule| (rule.tier, true))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassifyRule {
    pub domains: Vec<String>,
    pub tier: Tier,
}

/// What an approval of a deployment in a given tier must carry.
#[derive(Debug, Clone, Serialize)]
pub struct ApprovalRequirements {
    pub allowed: bool,
    pub approvers: u32,
    pub distinct_roles: Vec<String>,
    pub evidence: Vec<String>,
    pub max_validity_days: Option<u32>,
    pub require_thresholds: Vec<Signal>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SpendTier {
    pub above_usd_per_month: f64,
    pub extra_role: String,
}

/// The monitored measures an approval can set thresholds on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    Accuracy,
    Drift,
    Latency,
    Abuse,
    Fallback,
    Fairness,
    Spend,
    Error,
}

impl Signal {
    pub const ALL: [Signal; 8] = [
        Signal::Accuracy,
        Signal::Drift,
        Signal::Latency,
        Signal::Abuse,
        Signal::Fallback,
        Signal::Fairness,
        Signal::Spend,
        Signal::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Accuracy => "accuracy",
            Signal::Drift => "drift",
            Signal::Latency => "latency",
            Signal::Abuse => "abuse",
            Signal::Fallback => "fallback",
            Signal::Fairness => "fairness",
            Signal::Spend => "spend",
            Signal::Error => "error",
        }
    }

    pub fn parse(text: &str) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// The signal an approval threshold watches: its own name, or `drift_js` (drift measured
    /// by Jensen-Shannon distance rather than PSI) for drift.
    pub fn of_threshold(name: &str) -> Option<Signal> {
        match name {
            "drift_js" => Some(Signal::Drift),
            _ => Signal::parse(name),
        }
    }

    /// Why `value` cannot be the threshold `name` (a threshold [`Signal::of_threshold`]
    /// knows), or None. Shares (accuracy, fairness, error, abuse and fallback rates) and the
    /// Jensen-Shannon distance lie in [0, 1]; a floor at 0 or a ceiling at 1 on one of them
    /// could never be crossed, so it would satisfy a tier's `require_thresholds` while
    /// watching nothing. PSI, latency and spend have no upper end; none is negative.
    pub fn threshold_out_of_range(name: &str, value: f64) -> Option<String> {
        let (fits, expected) = match name {
            "accuracy" | "fairness" => (value > 0.0 && value <= 1.0, "a floor above 0, at most 1"),
            "error" | "abuse" | "fallback" | "drift_js" => (
                (0.0..1.0).contains(&value),
                "a ceiling of at least 0, below 1",
            ),
            "latency" => (value > 0.0, "more than 0 milliseconds"),
            _ => (value >= 0.0, "at least 0"),
        };
        (!value.is_finite() || !fits)
            .then(|| format!("threshold `{name}` is {value}; expected {expected}"))
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an endpoint sends data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointLocation {
    External,
    SelfHosted,
}

impl EndpointLocation {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointLocation::External => "external",
            EndpointLocation::SelfHosted => "self_hosted",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Endpoint {
    pub id: String,
    /// The base URL (`https://api.openai.com/v1`); `mock://<id>` for a mock endpoint.
    pub url: String,
    pub kind: EndpointKind,
    pub location: EndpointLocation,
    pub region: String,
    /// The environment variable the gateway reads the upstream's API key from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
}

/// How the gateway reaches an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum EndpointKind {
    /// An OpenAI-compatible HTTP API at `url`.
    Openai,
    /// gavel answers itself, deterministically, for demos and tests: no model behind it.
    Mock { latency_ms: u64 },
}

#[derive(Debug, Clone, Serialize)]
pub struct UseCase {
    pub id: String,
    pub domain: String,
    pub tier: Tier,
    pub owner: String,
    pub oncall: Oncall,
    pub population: String,
    pub data_classes: Vec<String>,
    pub description: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Oncall {
    /// Where alerts are posted, as the contract writes it: an http(s) URL, or
    /// `${env:NAME}` for a URL kept out of the contract ([`Oncall::webhook_env`]). A URL's path
    /// or query is often the credential (a chat tool's incoming webhook, a pager's integration
    /// key): show it by [`Oncall::webhook_origin`].
    pub webhook: String,
    pub runbook: Option<String>,
    pub severity_map: BTreeMap<String, String>,
}

impl Oncall {
    /// The environment variable that holds the webhook's URL, when the contract says
    /// `${env:NAME}` instead of the URL itself (a credential has no place in a file kept in
    /// git, nor in the evidence packs that copy it). Read where alerts are sent.
    pub fn webhook_env(&self) -> Option<&str> {
        env_reference(&self.webhook)
    }

    /// The webhook's scheme, host and port (`https://hooks.slack.com`): what a report, an API
    /// answer or a ledger record may say about it. Credentials before the host, the path, the
    /// query and the fragment are left out. For a URL kept in the environment, the reference
    /// as written (`${env:NAME}`).
    pub fn webhook_origin(&self) -> String {
        if self.webhook_env().is_some() {
            return self.webhook.clone();
        }
        origin_of(&self.webhook)
    }

    /// The webhook as a person reads it in a report: its origin and an ellipsis for the rest
    /// (`https://hooks.slack.com/…`), or the environment reference as written.
    pub fn webhook_shown(&self) -> String {
        match self.webhook_env() {
            Some(_) => self.webhook.clone(),
            None => format!("{}/…", origin_of(&self.webhook)),
        }
    }
}

/// `NAME` of `${env:NAME}`, when NAME is an environment variable's name (letters, digits and
/// `_`, not starting with a digit).
pub(crate) fn env_reference(written: &str) -> Option<&str> {
    let name = written.strip_prefix("${env:")?.strip_suffix('}')?;
    let mut bytes = name.bytes();
    let first = bytes.next()?;
    ((first.is_ascii_alphabetic() || first == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_'))
    .then_some(name)
}

/// Whether `url` is an http(s) URL, as an on-call webhook must be (written in the contract, or
/// held by the environment variable it names).
pub fn is_http_url(url: &str) -> bool {
    url.starts_with("https://") || url.starts_with("http://")
}

/// The scheme, host and port of a URL.
pub fn origin_of(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(not a URL)".to_string();
    };
    // A backslash ends the host too: URL parsers read it as `/` in http(s) URLs.
    let authority = rest.split(['/', '\\', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    format!("{scheme}://{host}")
}

/// The governed unit: everything that must be approved together.
#[derive(Debug, Clone, Serialize)]
pub struct Deployment {
    pub id: String,
    pub use_case: String,
    pub endpoint: String,
    pub model: ModelRef,
    pub prompt_template: Option<PromptTemplate>,
    pub tools: BTreeMap<String, ToolSchema>,
    pub params: BTreeMap<String, ParamRule>,
    pub retrieval: Option<Retrieval>,
    pub eval_set: Option<FileDigest>,
    pub fallback: Option<Fallback>,
    /// Non-empty for chains: the steps a run of this deployment may take.
    pub steps: BTreeMap<String, Step>,
    #[serde(skip)]
    pub binding: Binding,
}

impl Deployment {
    pub fn is_chain(&self) -> bool {
        !self.steps.is_empty()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelRef {
    pub name: String,
    pub snapshot: String,
    pub deprecates: Option<Date>,
}

/// A file whose contents are bound into a deployment.
#[derive(Debug, Clone, Serialize)]
pub struct FileDigest {
    #[serde(skip)]
    pub path: PathBuf,
    pub sha256: String,
}

/// An approved tool: its JSON schema (parsed, for conformance) and the file's digest.
#[derive(Debug, Clone, Serialize)]
pub struct ToolSchema {
    pub file: FileDigest,
    #[serde(skip)]
    pub schema: serde_json::Value,
}

/// An approved generation parameter.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamRule {
    /// The request may omit it or send exactly this value; for `max_tokens` it is a ceiling.
    Exactly(serde_json::Value),
    /// The request may send any number in `[min, max]`.
    Range { min: f64, max: f64 },
}

#[derive(Debug, Clone, Serialize)]
pub struct Retrieval {
    pub index: String,
    pub top_k: Option<u32>,
    pub embedding_model: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    Deployment(String),
    Response(String),
    HumanQueue(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    Model,
    Tool,
    Retriever,
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub kind: StepKind,
    /// For `tool` steps: which of the deployment's tools the step calls.
    pub tool: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Policy {
    pub privacy: Option<PrivacyPolicy>,
    pub injection: Option<InjectionPolicy>,
    pub sovereignty: Vec<SovereigntyRule>,
    pub budgets: Vec<Budget>,
    pub resources: BTreeMap<String, u64>,
    pub abuse: Option<AbusePolicy>,
    pub idempotency_window: Span,
    /// When set, prompts are stored encrypted under a key per subject, the subject being this
    /// request metadata field (e.g. `user_id`); off by default.
    pub payload_subject: Option<String>,
    pub monitoring: Monitoring,
    /// Custom rules (stage 7), run in this order. Left out of the canonical form when there
    /// are none, so that contracts written before rules existed keep their versions.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<CustomRule>,
}

/// A custom rule (`policy.rules`, docs/rules.md): a Rego file whose `deny` messages block the
/// request, or with `action: flag` are only recorded.
#[derive(Debug, Clone, Serialize)]
pub struct CustomRule {
    pub id: String,
    /// The file's digest: a changed rule is a new contract version.
    pub file: FileDigest,
    pub action: RuleAction,
    #[serde(skip)]
    pub program: gavel_rules::RuleProgram,
}

/// Two rules are the same rule when their ids, actions and file contents are.
impl PartialEq for CustomRule {
    fn eq(&self, other: &CustomRule) -> bool {
        (&self.id, self.action, &self.file.sha256) == (&other.id, other.action, &other.file.sha256)
    }
}

impl Eq for CustomRule {}

/// What a custom rule's `deny` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    /// BLOCK with `rule.deny`.
    Block,
    /// Record `rule.flagged` on the decision and go on: a rule tried out before it blocks.
    Flag,
}

impl RuleAction {
    /// The action as the contract writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleAction::Block => "block",
            RuleAction::Flag => "flag",
        }
    }
}

/// How signals are gathered and judged (`policy.monitoring`, docs/monitoring.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Monitoring {
    /// The sliding window signals are computed over.
    pub window: Span,
    /// Its granularity, and that of the stored rollups.
    pub bucket: Span,
    /// Observations a signal needs in the window before it is checked.
    pub min_samples: u64,
    /// Quantile bins per numeric feature for drift.
    pub drift_bins: u32,
    /// Values a feature needs in the window and in the baseline before drift is checked.
    pub drift_min_samples: u64,
    /// Outcomes a group needs before it enters fairness comparisons.
    pub min_group_size: u64,
    /// Share of requests (percent) that still go to a deployment routed to its fallback by a
    /// breach, so that its recovery can be observed.
    pub probe_percent: u32,
}

impl Default for Monitoring {
    fn default() -> Monitoring {
        Monitoring {
            window: Span::from_millis(5 * 60_000),
            bucket: Span::from_millis(10_000),
            min_samples: 20,
            drift_bins: 10,
            drift_min_samples: 50,
            min_group_size: 30,
            probe_percent: 10,
        }
    }
}

/// What to do with a finding of a given class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingAction {
    Block,
    Redact,
    Flag,
    Allow,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct PrivacyActions {
    pub pii: FindingAction,
    pub secret: FindingAction,
}

#[derive(Debug, Clone, Serialize)]
pub struct PrivacyPolicy {
    pub input: PrivacyActions,
    pub retrieved: PrivacyActions,
    pub output: PrivacyActions,
}

#[derive(Debug, Clone, Serialize)]
pub struct InjectionPolicy {
    pub input: FindingAction,
    pub retrieved: FindingAction,
    pub threshold: f64,
}

/// Where data of a class may be sent: a location (`self_hosted`, `external`) or `region:<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Destination {
    Location(EndpointLocation),
    Region(String),
}

impl Destination {
    pub fn admits(&self, endpoint: &Endpoint) -> bool {
        match self {
            Destination::Location(location) => *location == endpoint.location,
            Destination::Region(region) => *region == endpoint.region,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnViolation {
    RouteOrBlock,
    Block,
}

#[derive(Debug, Clone, Serialize)]
pub struct SovereigntyRule {
    pub data_class: String,
    pub allow: Vec<Destination>,
    pub on_violation: OnViolation,
}

impl SovereigntyRule {
    pub fn admits(&self, endpoint: &Endpoint) -> bool {
        self.allow.iter().any(|d| d.admits(endpoint))
    }
}

/// Who a budget window is counted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetScope {
    Organization,
    UseCase,
    Deployment,
    Principal,
    Run,
}

impl BudgetScope {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetScope::Organization => "organization",
            BudgetScope::UseCase => "use_case",
            BudgetScope::Deployment => "deployment",
            BudgetScope::Principal => "principal",
            BudgetScope::Run => "run",
        }
    }
}

/// One budget line. Each distinct scope value (each use case, each principal...) gets its own
/// counters; `window: None` means the budget never resets (used for runs).
#[derive(Debug, Clone, Serialize)]
pub struct Budget {
    pub scope: BudgetScope,
    pub window: Option<Span>,
    pub only_use_case: Option<String>,
    pub only_deployment: Option<String>,
    pub limits: Limits,
}

impl Budget {
    /// The line's name, `scope/window/use_case/deployment` (`run` for run budgets, `*` for no
    /// filter), e.g. `principal/1m/*/*`: the budget's counters and reasons are keyed by it.
    pub fn line(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.scope.as_str(),
            self.window.map_or("run".to_string(), |w| w.to_string()),
            self.only_use_case.as_deref().unwrap_or("*"),
            self.only_deployment.as_deref().unwrap_or("*")
        )
    }

    /// Whether two lines would charge the same counters (same scope, window and filters).
    pub fn counts_the_same_as(&self, other: &Budget) -> bool {
        self.scope == other.scope
            && self.window == other.window
            && self.only_use_case == other.only_use_case
            && self.only_deployment == other.only_deployment
    }
}

/// Limits in integer units so that sums are exact: micro-dollars, not floating dollars.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Limits {
    pub tokens: Option<u64>,
    pub usd_micros: Option<u64>,
    pub requests: Option<u64>,
    pub tool_calls: Option<u64>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct AbusePolicy {
    pub strikes: u32,
    pub within: Span,
    pub cooldown: Span,
}

/// The most prompt tokens one image is reserved at on a snapshot whose entry in the price table
/// does not say. Budgets must hold, so it errs high: open vision models count up to 16,384 per
/// image by default (Qwen2.5-VL), where OpenAI's and Anthropic's count 1,445 to about 3,800
/// (gpt-4o-mini's 48,169 is in the built-in table). Settlement charges what the upstream reports.
pub const DEFAULT_IMAGE_TOKENS: u64 = 16_384;

/// USD per one million tokens, and what one image counts for.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    /// The most prompt tokens one input image counts for on this snapshot (None: not known,
    /// [`DEFAULT_IMAGE_TOKENS`]). A request's images are reserved at this, since their size is
    /// not known before the upstream reads them.
    pub image_tokens: Option<u64>,
    /// What one image sent with `detail: low` counts for, on a snapshot that reads such images
    /// at a fixed size (None: no such mode, they count as any image).
    pub low_detail_image_tokens: Option<u64>,
}

impl Price {
    /// What one image is reserved at.
    pub fn most_image_tokens(self) -> u64 {
        self.image_tokens.unwrap_or(DEFAULT_IMAGE_TOKENS)
    }

    /// What one image is reserved at; with `low_detail`, one sent with `detail: low` (never
    /// more than any image).
    pub fn reserved_image_tokens(self, low_detail: bool) -> u64 {
        let most = self.most_image_tokens();
        match self.low_detail_image_tokens {
            Some(low) if low_detail => low.min(most),
            _ => most,
        }
    }

    /// Cost in micro-dollars, rounded up so that estimates never undercount.
    pub fn cost_micros(self, input_tokens: u64, output_tokens: u64) -> u64 {
        // USD per 1M tokens equals micro-USD per token.
        let micros = self.input * input_tokens as f64 + self.output * output_tokens as f64;
        if micros.is_finite() && micros >= 0.0 {
            micros.ceil() as u64
        } else {
            u64::MAX
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oncall(webhook: &str) -> Oncall {
        Oncall {
            webhook: webhook.to_string(),
            runbook: None,
            severity_map: BTreeMap::new(),
        }
    }

    #[test]
    fn a_threshold_that_can_never_be_crossed_is_out_of_range() {
        let fits = |name: &str, value: f64| Signal::threshold_out_of_range(name, value).is_none();
        for (name, value) in [
            ("accuracy", 0.9),
            ("accuracy", 1.0),
            ("fairness", 0.8),
            ("error", 0.0),
            ("abuse", 0.05),
            ("fallback", 0.2),
            ("drift_js", 0.3),
            ("drift", 0.2),
            ("drift", 3.0),
            ("latency", 800.0),
            ("spend", 0.0),
        ] {
            assert!(fits(name, value), "{name}={value}");
        }
        for (name, value) in [
            ("accuracy", 0.0),
            ("accuracy", 1.5),
            ("fairness", -0.1),
            ("error", 1.0),
            ("abuse", 2.0),
            ("fallback", -0.5),
            ("drift_js", 1.0),
            ("drift", -1.0),
            ("drift", f64::INFINITY),
            ("latency", 0.0),
            ("spend", -5.0),
            ("spend", f64::NAN),
        ] {
            assert!(!fits(name, value), "{name}={value}");
        }
        assert_eq!(
            Signal::threshold_out_of_range("drift_js", 1.0).as_deref(),
            Some("threshold `drift_js` is 1; expected a ceiling of at least 0, below 1")
        );
    }

    #[test]
    fn a_webhook_is_shown_by_its_origin_only() {
        let origin = |w: &str| oncall(w).webhook_origin();
        assert_eq!(
            origin("https://hooks.slack.com/services/T000/B000/XXXXSECRET"),
            "https://hooks.slack.com"
        );
        assert_eq!(
            origin("https://user:pw@pager.example:8443?token=abc"),
            "https://pager.example:8443"
        );
        assert_eq!(origin("http://[::1]:9000#key"), "http://[::1]:9000");
        assert_eq!(
            origin("https://hooks.example.com\\services\\T000\\SECRET"),
            "https://hooks.example.com"
        );
        assert_eq!(origin("not a url"), "(not a URL)");
    }

    #[test]
    fn a_webhook_kept_in_the_environment_is_named_by_its_variable() {
        let hook = oncall("${env:KB_PAGER_URL}");
        assert_eq!(hook.webhook_env(), Some("KB_PAGER_URL"));
        assert_eq!(hook.webhook_origin(), "${env:KB_PAGER_URL}");
        assert_eq!(hook.webhook_shown(), "${env:KB_PAGER_URL}");
        assert_eq!(
            oncall("https://hooks.slack.com/services/T0/B0/SECRET").webhook_shown(),
            "https://hooks.slack.com/…"
        );
        assert_eq!(oncall("${env:_x1}").webhook_env(), Some("_x1"));
        for not_a_reference in [
            "https://hooks.example.com/${env:X}",
            "${env:}",
            "${env:1X}",
            "${env:X-Y}",
            "${env:X} ",
            "${X}",
            "$env:X",
        ] {
            assert_eq!(
                oncall(not_a_reference).webhook_env(),
                None,
                "{not_a_reference}"
            );
        }
    }
}
