//! Raw YAML structures in, a validated `Contract` out, or every problem with its location.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{ContractError, ContractErrors};
use crate::model::*;
use crate::prices::default_prices;
use crate::raw::*;
use crate::template::PromptTemplate;
use crate::time::{Date, Span};

/// Reads the files a contract refers to (templates, tool schemas, eval sets). The loader's only
/// I/O goes through this, so tests and embedders can supply files from memory.
pub trait SourceFiles {
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>>;
}

/// A contract and the warnings worth showing alongside it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub contract: Contract,
    pub warnings: Vec<String>,
}

/// No model generates this many tokens in one reply; a larger ceiling is a typo.
const MAX_TOKENS_CEILING: f64 = 10_000_000.0;
/// Most tokens a price entry may say one image counts for: twenty times the largest published
/// figure (gpt-4o-mini's 48,169); a larger one is a typo.
const MOST_IMAGE_TOKENS: u64 = 1_000_000;

pub(crate) const DEFAULT_IDEMPOTENCY_WINDOW: Span = Span::from_secs(24 * 3600);

struct Validator<'a> {
    file: &'a Path,
    base_dir: PathBuf,
    files: &'a dyn SourceFiles,
    errors: Vec<ContractError>,
    warnings: Vec<String>,
}

impl Validator<'_> {
    fn error<T>(&mut self, at: &Sp<T>, message: impl Into<String>) {
        self.errors.push(ContractError::at(
            self.file,
            at.referenced.line(),
            at.referenced.column(),
            message,
        ));
    }

    fn error_whole(&mut self, message: impl Into<String>) {
        self.errors
            .push(ContractError::whole_file(self.file, message));
    }

    fn span(&mut self, text: &Sp<String>, what: &str) -> Option<Span> {
        match Span::parse(&text.value) {
            Ok(span) => Some(span),
            Err(why) => {
                self.error(text, format!("{what}: {why}"));
                None
            }
        }
    }

    fn read_file(&mut self, at: &Sp<String>, what: &str) -> Option<(FileDigest, Vec<u8>)> {
        let path = self.base_dir.join(&at.value);
        match self.files.read(&path) {
            Ok(bytes) => {
                let sha256 = hex::encode(Sha256::digest(&bytes));
                Some((FileDigest { path, sha256 }, bytes))
            }
            Err(e) => {
                self.error(
                    at,
                    format!(
                        "cannot read {what} `{}` ({e}); expected a file path relative to the contract's folder",
                        path.display()
                    ),
                );
                None
            }
        }
    }

    fn finding_action(&mut self, at: &Sp<String>, allowed: &[FindingAction]) -> FindingAction {
        let action = match at.value.as_str() {
            "block" => Some(FindingAction::Block),
            "redact" => Some(FindingAction::Redact),
            "flag" => Some(FindingAction::Flag),
            "allow" => Some(FindingAction::Allow),
            _ => None,
        };
        match action {
            Some(a) if allowed.contains(&a) => a,
            _ => {
                let names: Vec<&str> = allowed.iter().map(|a| action_name(*a)).collect();
                self.error(
                    at,
                    format!(
                        "unknown action `{}`; expected one of {}",
                        at.value,
                        names.join(", ")
                    ),
                );
                FindingAction::Block
            }
        }
    }
}

fn action_name(action: FindingAction) -> &'static str {
    match action {
        FindingAction::Block => "block",
        FindingAction::Redact => "redact",
        FindingAction::Flag => "flag",
        FindingAction::Allow => "allow",
    }
}

pub(crate) fn validate(
    raw: RawContract,
    file: &Path,
    files: &dyn SourceFiles,
) -> Result<Loaded, ContractErrors> {
    let base_dir = file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut v = Validator {
        file,
        base_dir,
        files,
        errors: Vec::new(),
        warnings: Vec::new(),
    };

    if raw.version.value != 1 {
        v.error(
            &raw.version,
            format!(
                "unsupported contract version {}; expected 1",
                raw.version.value
            ),
        );
    }
    if raw.organization.value.trim().is_empty() {
        v.error(&raw.organization, "organization is empty; expected a name");
    }

    let taxonomy = taxonomy(&mut v, raw.risk_taxonomy);
    let endpoints = endpoints(&mut v, raw.endpoints);
    let use_cases = use_cases(&mut v, raw.use_cases, &taxonomy);
    let mut prices = default_prices();
    for (snapshot, price) in raw.prices {
        for p in [&price.input, &price.output] {
            if !(p.value.is_finite() && p.value >= 0.0) {
                v.error(
                    p,
                    "a price must be a non-negative number of USD per 1M tokens",
                );
            }
        }
        for (tokens, field, meaning) in [
            (
                &price.image_tokens,
                "image_tokens",
                "the most one image counts for on this snapshot",
            ),
            (
                &price.low_detail_image_tokens,
                "low_detail_image_tokens",
                "what one image sent with `detail: low` counts for on this snapshot",
            ),
        ] {
            if let Some(tokens) = tokens
                .as_ref()
                .filter(|t| !(1..=MOST_IMAGE_TOKENS).contains(&t.value))
            {
                v.error(
                    tokens,
                    format!(
                        "{field} must be a whole number of tokens from 1 to 1000000 ({meaning})"
                    ),
                );
            }
        }
        // An entry that does not say how images count keeps what the built-in table says.
        let table = prices.get(&snapshot);
        let image_tokens = price
            .image_tokens
            .map(|t| t.value)
            .or_else(|| table.and_then(|p| p.image_tokens));
        let low_detail_image_tokens = price
            .low_detail_image_tokens
            .map(|t| t.value)
            .or_else(|| table.and_then(|p| p.low_detail_image_tokens));
        prices.insert(
            snapshot,
            Price {
                input: price.input.value,
                output: price.output.value,
                image_tokens,
                low_detail_image_tokens,
            },
        );
    }
    let deployments = deployments(&mut v, raw.deployments, &use_cases, &endpoints);
    let policy = policy(&mut v, raw.policy, &use_cases, &deployments, &prices);

    if !v.errors.is_empty() {
        v.errors.sort_by_key(|e| (e.line, e.column));
        return Err(ContractErrors(v.errors));
    }
    let mut contract = Contract {
        version: ContractVersion::default(),
        source: file.to_path_buf(),
        schema: raw.version.value,
        organization: raw.organization.value,
        taxonomy,
        endpoints,
        use_cases,
        deployments,
        policy,
        prices,
    };
    crate::binding::seal(&mut contract).map_err(|e| ContractError::whole_file(file, e))?;
    Ok(Loaded {
        contract,
        warnings: v.warnings,
    })
}

fn taxonomy(v: &mut Validator<'_>, raw: RawTaxonomy) -> Taxonomy {
    let mut classify = Vec::new();
    let mut default_tier = None;
    let mut seen_domains = BTreeSet::new();
    for rule in raw.classify {
        match (rule.domains, rule.tier, rule.default) {
            (Some(domains), Some(tier), None) => {
                let tier = parse_tier(v, &tier);
                let mut names = Vec::new();
                for d in domains {
                    if !seen_domains.insert(d.value.clone()) {
                        v.error(&d, format!("domain `{}` is classified twice; list each domain in one rule", d.value));
                    }
                    names.push(d.value);
                }
                classify.push(ClassifyRule { domains: names, tier });
            }
            (None, None, Some(default)) => {
                if default_tier.is_some() {
                    v.error(&default, "a second `default` rule; expected exactly one");
                }
                default_tier = Some(parse_tier(v, &default));
            }
            (_, Some(at), _) | (_, _, Some(at)) => v.error(
                &at,
                "a classify rule is either `{ domains: [...], tier: T }` or `{ default: T }`",
            ),
            (Some(domains), None, None) => match domains.first() {
                Some(first) => v.error(first, "this classify rule has domains but no `tier`"),
                None => v.error_whole("a classify rule has an empty `domains` and no `tier`"),
            },
            (None, None, None) => {
                v.error_whole("an empty classify rule; expected `{ domains: [...], tier: T }` or `{ default: T }`")
            }
        }
    }
    let default_tier = default_tier.unwrap_or_else(|| {
        v.error(
            &raw.approval_requirements,
            "risk_taxonomy.classify has no `{ default: <tier> }` rule; add one so every domain has a tier",
        );
        Tier::Minimal
    });

    let mut requirements = BTreeMap::new();
    for (tier_name, req) in &raw.approval_requirements.value {
        let Some(tier) = Tier::parse(tier_name) else {
            v.error(
                &raw.approval_requirements,
                format!("approval_requirements names unknown tier `{tier_name}`; expected unacceptable, high, limited or minimal"),
            );
            continue;
        };
        let allowed = req.allowed.unwrap_or(tier != Tier::Unacceptable);
        if tier == Tier::Unacceptable && allowed {
            v.error(
                &raw.approval_requirements,
                "tier `unacceptable` cannot be `allowed: true`; the EU AI Act prohibits these uses",
            );
        }
        let approvers = match &req.approvers {
            Some(n) if n.value == 0 => {
                v.error(n, "approvers must be at least 1");
                1
            }
            Some(n) => n.value,
            None if allowed => {
                v.error(&raw.approval_requirements, format!("tier `{tier_name}` lacks `approvers`; expected the number of approvers required"));
                1
            }
            None => 0,
        };
        if let Some(n) = &req.approvers {
            if (req.distinct_roles.len() as u64) > u64::from(n.value) {
                v.error(
                    n,
                    format!(
                        "{} distinct roles cannot be covered by {} approvers",
                        req.distinct_roles.len(),
                        n.value
                    ),
                );
            }
        }
        if let Some(days) = &req.max_validity_days {
            if days.value == 0 {
                v.error(days, "max_validity_days must be at least 1");
            }
        }
        let mut thresholds = Vec::new();
        for t in &req.require_thresholds {
            match Signal::parse(&t.value) {
                Some(s) => thresholds.push(s),
                None => v.error(
                    t,
                    format!(
                        "unknown threshold `{}`; expected one of {}",
                        t.value,
                        signal_names()
                    ),
                ),
            }
        }
        requirements.insert(
            tier,
            ApprovalRequirements {
                allowed,
                approvers,
                distinct_roles: req.distinct_roles.clone(),
                evidence: req.evidence.clone(),
                max_validity_days: req.max_validity_days.as_ref().map(|d| d.value),
                require_thresholds: thresholds,
            },
        );
    }
    for tier in Tier::ALL {
        if tier != Tier::Unacceptable && !requirements.contains_key(&tier) {
            v.error(
                &raw.approval_requirements,
                format!("approval_requirements has no entry for tier `{tier}`; every approvable tier needs one"),
            );
        }
    }
    requirements
        .entry(Tier::Unacceptable)
        .or_insert(ApprovalRequirements {
            allowed: false,
            approvers: 0,
            distinct_roles: Vec::new(),
            evidence: Vec::new(),
            max_validity_days: None,
            require_thresholds: Vec::new(),
        });

    let mut spend_tiers = Vec::new();
    for tier in raw.spend_tiers {
        if !(tier.above_usd_per_month.value.is_finite() && tier.above_usd_per_month.value >= 0.0) {
            v.error(
                &tier.above_usd_per_month,
                "above_usd_per_month must be a non-negative number",
            );
        }
        spend_tiers.push(SpendTier {
            above_usd_per_month: tier.above_usd_per_month.value,
            extra_role: tier.extra_role,
        });
    }
    Taxonomy {
        classify,
        default_tier,
        requirements,
        spend_tiers,
    }
}

fn signal_names() -> String {
    Signal::ALL.map(Signal::as_str).join(", ")
}

fn parse_tier(v: &mut Validator<'_>, at: &Sp<String>) -> Tier {
    Tier::parse(&at.value).unwrap_or_else(|| {
        v.error(
            at,
            format!(
                "unknown tier `{}`; expected unacceptable, high, limited or minimal",
                at.value
            ),
        );
        Tier::Unacceptable
    })
}

fn endpoints(
    v: &mut Validator<'_>,
    raw: BTreeMap<String, RawEndpoint>,
) -> BTreeMap<String, Endpoint> {
    let mut out = BTreeMap::new();
    for (id, e) in raw {
        let location = match e.location.value.as_str() {
            "external" => EndpointLocation::External,
            "self_hosted" => EndpointLocation::SelfHosted,
            other => {
                v.error(
                    &e.location,
                    format!("unknown location `{other}`; expected external or self_hosted"),
                );
                EndpointLocation::External
            }
        };
        let kind = match e.kind.as_ref().map(|k| k.value.as_str()) {
            None | Some("openai") => EndpointKind::Openai,
            Some("mock") => EndpointKind::Mock {
                latency_ms: e
                    .mock
                    .as_ref()
                    .and_then(|m| m.latency_ms.as_ref())
                    .map_or(0, |l| l.value),
            },
            Some(other) => {
                if let Some(at) = &e.kind {
                    v.error(
                        at,
                        format!("unknown endpoint kind `{other}`; expected openai or mock"),
                    );
                }
                EndpointKind::Openai
            }
        };
        let url = match (&kind, &e.url) {
            (EndpointKind::Mock { .. }, None) => format!("mock://{id}"),
            (EndpointKind::Mock { .. }, Some(url)) => {
                v.error(
                    url,
                    format!("endpoint `{id}` is a mock: gavel answers itself, so it takes no url; remove it"),
                );
                String::new()
            }
            (EndpointKind::Openai, Some(url)) => {
                let text = url.value.trim();
                if !(text.starts_with("http://") || text.starts_with("https://")) || text.len() < 10
                {
                    v.error(
                        url,
                        format!("`{text}` is not an http(s) URL; expected e.g. https://api.example.com/v1"),
                    );
                }
                text.trim_end_matches('/').to_string()
            }
            (EndpointKind::Openai, None) => {
                v.error(
                    &e.location,
                    format!("endpoint `{id}` has no url; expected e.g. url: https://api.example.com/v1 (or kind: mock)"),
                );
                String::new()
            }
        };
        if let (EndpointKind::Openai, Some(mock)) = (&kind, &e.mock) {
            if let Some(at) = &mock.latency_ms {
                v.error(
                    at,
                    format!("endpoint `{id}` is not a mock; `mock` settings need kind: mock"),
                );
            }
        }
        let api_key_env = e.api_key_env.map(|env| {
            let name = env.value.trim().to_string();
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                v.error(
                    &env,
                    format!("`{name}` is not an environment variable name; expected e.g. OPENAI_API_KEY (the key itself never goes in the contract)"),
                );
            }
            name
        });
        out.insert(
            id.clone(),
            Endpoint {
                id,
                url,
                kind,
                location,
                api_key_env,
                region: e.region,
            },
        );
    }
    out
}

fn use_cases(
    v: &mut Validator<'_>,
    raw: BTreeMap<String, RawUseCase>,
    taxonomy: &Taxonomy,
) -> BTreeMap<String, UseCase> {
    let mut out = BTreeMap::new();
    for (id, u) in raw {
        let (tier, named) = taxonomy.classify(&u.domain.value);
        if !named {
            v.warnings.push(format!(
                "use case `{id}`: domain `{}` is in no classify rule, so it takes the default tier `{tier}`",
                u.domain.value
            ));
        }
        if !u.owner.value.contains('@') {
            v.error(&u.owner, format!("owner `{}` is not an email address; expected who is accountable, e.g. alice@acme.example", u.owner.value));
        }
        let hook = &u.oncall.webhook.value;
        if !crate::model::is_http_url(hook) && crate::model::env_reference(hook).is_none() {
            v.error(
                &u.oncall.webhook,
                format!("on-call webhook `{hook}` is neither an http(s) URL nor `${{env:NAME}}`; write the URL, or keep it out of the contract as `${{env:KB_PAGER_URL}}` and set that variable where `gavel serve` runs"),
            );
        }
        let mut classes = Vec::new();
        for class in u.data_classes {
            if class.value.is_empty()
                || !class
                    .value
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_')
            {
                v.error(
                    &class,
                    format!(
                        "data class `{}` must be lowercase letters and `_`, e.g. pii",
                        class.value
                    ),
                );
            }
            classes.push(class.value);
        }
        out.insert(
            id.clone(),
            UseCase {
                id,
                domain: u.domain.value,
                tier,
                owner: u.owner.value,
                oncall: Oncall {
                    webhook: u.oncall.webhook.value,
                    runbook: u.oncall.runbook,
                    severity_map: u.oncall.severity_map,
                },
                population: u.population,
                data_classes: classes,
                description: u.description,
            },
        );
    }
    out
}

fn deployments(
    v: &mut Validator<'_>,
    raw: BTreeMap<String, RawDeployment>,
    use_cases: &BTreeMap<String, UseCase>,
    endpoints: &BTreeMap<String, Endpoint>,
) -> BTreeMap<String, Deployment> {
    let use_case_of: BTreeMap<String, String> = raw
        .iter()
        .map(|(id, d)| (id.clone(), d.use_case.value.clone()))
        .collect();
    let mut out = BTreeMap::new();
    for (id, d) in raw {
        if !use_cases.contains_key(&d.use_case.value) {
            v.error(
                &d.use_case,
                format!(
                    "deployment `{id}` names unknown use case `{}`; expected one of: {}",
                    d.use_case.value,
                    keys(use_cases)
                ),
            );
        }
        if !endpoints.contains_key(&d.endpoint.value) {
            v.error(
                &d.endpoint,
                format!(
                    "deployment `{id}` names unknown endpoint `{}`; expected one of: {}",
                    d.endpoint.value,
                    keys(endpoints)
                ),
            );
        }
        let deprecates = d.model.deprecates.as_ref().and_then(|at| {
            let date = Date::parse(&at.value);
            if date.is_none() {
                v.error(
                    at,
                    format!("`{}` is not a date; expected YYYY-MM-DD", at.value),
                );
            }
            date
        });
        let variables: Vec<String> = d.prompt_variables.iter().map(|s| s.value.clone()).collect();
        let prompt_template = match &d.prompt_template {
            Some(at) => v
                .read_file(at, "prompt template")
                .and_then(|(digest, bytes)| {
                    let text = match String::from_utf8(bytes) {
                        Ok(text) => text,
                        Err(_) => {
                            v.error(at, "the prompt template is not valid UTF-8");
                            return None;
                        }
                    };
                    PromptTemplate::parse(digest, &text, &variables)
                        .map_err(|why| {
                            v.error(at, format!("prompt template `{}`: {why}", at.value))
                        })
                        .ok()
                }),
            None => {
                if let Some(first) = d.prompt_variables.first() {
                    v.error(first, "prompt_variables without a prompt_template; add the template or remove the variables");
                }
                None
            }
        };
        let mut tools = BTreeMap::new();
        for (name, path) in &d.tools {
            if let Some((file, bytes)) = v.read_file(path, "tool schema") {
                match serde_json::from_slice::<serde_json::Value>(&bytes) {
                    Ok(schema) if schema.is_object() => {
                        tools.insert(name.clone(), ToolSchema { file, schema });
                    }
                    Ok(_) => v.error(path, format!("tool schema `{}` is not a JSON object; expected a JSON Schema for the tool's parameters", path.value)),
                    Err(e) => v.error(path, format!("tool schema `{}` is not valid JSON ({e})", path.value)),
                }
            }
        }
        let mut params = BTreeMap::new();
        for (name, rule) in &d.params {
            let rule = match &rule.value {
                RawParam::Number(n) => ParamRule::Exactly(serde_json::json!(n)),
                RawParam::Bool(b) => ParamRule::Exactly(serde_json::json!(b)),
                RawParam::Text(t) => ParamRule::Exactly(serde_json::json!(t)),
                RawParam::Range(r) => {
                    if !(r.min.is_finite() && r.max.is_finite() && r.min <= r.max) {
                        v.error(
                            rule,
                            format!("param `{name}`: range needs finite min <= max"),
                        );
                    }
                    ParamRule::Range {
                        min: r.min,
                        max: r.max,
                    }
                }
            };
            if name == "max_tokens" {
                let ok = match &rule {
                    ParamRule::Exactly(value) => value.as_f64().is_some_and(|n| {
                        (1.0..=MAX_TOKENS_CEILING).contains(&n) && n.fract() == 0.0
                    }),
                    ParamRule::Range { .. } => false,
                };
                if !ok {
                    if let Some(at) = d.params.get(name) {
                        v.error(
                            at,
                            "max_tokens must be a whole number from 1 to 10000000 (the approved ceiling)",
                        );
                    }
                }
            }
            params.insert(name.clone(), rule);
        }
        let eval_set = d
            .eval_set
            .as_ref()
            .and_then(|at| v.read_file(at, "eval set"))
            .map(|(digest, _)| digest);
        let fallback = d.fallback.as_ref().and_then(|fb| {
            let raw = &fb.value;
            match (&raw.deployment, &raw.response, &raw.human_queue) {
                (Some(target), None, None) => {
                    if *target == id {
                        v.error(
                            fb,
                            format!(
                                "deployment `{id}` falls back to itself; name another deployment"
                            ),
                        );
                    } else {
                        match use_case_of.get(target) {
                            None => v.error(
                                fb,
                                format!("fallback names unknown deployment `{target}`"),
                            ),
                            // It takes this deployment's requests, under the data classes,
                            // population and owner of the use case its approval names.
                            Some(theirs) if *theirs != d.use_case.value => v.error(
                                fb,
                                format!(
                                    "deployment `{id}` falls back to `{target}`, which serves use case `{theirs}`, not `{}`; a fallback takes the same requests, so it must serve the same use case: name one of its deployments, or a `response` or `human_queue`",
                                    d.use_case.value
                                ),
                            ),
                            Some(_) => {}
                        }
                    }
                    Some(Fallback::Deployment(target.clone()))
                }
                (None, Some(text), None) => Some(Fallback::Response(text.clone())),
                (None, None, Some(queue)) => Some(Fallback::HumanQueue(queue.clone())),
                _ => {
                    v.error(
                        fb,
                        "a fallback is exactly one of `deployment`, `response` or `human_queue`",
                    );
                    None
                }
            }
        });
        let mut steps = BTreeMap::new();
        for (name, step) in &d.steps {
            let kind = match step.kind.value.as_str() {
                "model" => StepKind::Model,
                "tool" => StepKind::Tool,
                "retriever" => StepKind::Retriever,
                other => {
                    v.error(
                        &step.kind,
                        format!("unknown step kind `{other}`; expected model, tool or retriever"),
                    );
                    StepKind::Model
                }
            };
            match (&kind, &step.tool) {
                (StepKind::Tool, Some(tool)) if !d.tools.contains_key(&tool.value) => {
                    v.error(tool, format!("step `{name}` calls tool `{}`, which is not in this deployment's tools", tool.value));
                }
                (StepKind::Tool, None) => {
                    v.error(
                        &step.kind,
                        format!("tool step `{name}` needs `tool: <name>`"),
                    );
                }
                (StepKind::Model | StepKind::Retriever, Some(tool)) => {
                    v.error(
                        tool,
                        format!("step `{name}` is not a tool step; remove `tool`"),
                    );
                }
                _ => {}
            }
            steps.insert(
                name.clone(),
                Step {
                    kind,
                    tool: step.tool.as_ref().map(|t| t.value.clone()),
                },
            );
        }
        let retrieval = d.retrieval.map(|r| Retrieval {
            index: r.index,
            top_k: r.top_k,
            embedding_model: r.embedding_model,
        });
        out.insert(
            id.clone(),
            Deployment {
                id,
                use_case: d.use_case.value,
                endpoint: d.endpoint.value,
                model: ModelRef {
                    name: d.model.name,
                    snapshot: d.model.snapshot.value,
                    deprecates,
                },
                prompt_template,
                tools,
                params,
                retrieval,
                eval_set,
                fallback,
                steps,
                binding: Binding::default(),
            },
        );
    }
    check_fallback_cycles(v, &out);
    out
}

fn check_fallback_cycles(v: &mut Validator<'_>, deployments: &BTreeMap<String, Deployment>) {
    for start in deployments.keys() {
        let mut seen = BTreeSet::new();
        let mut current = start;
        while let Some(Fallback::Deployment(next)) =
            deployments.get(current).and_then(|d| d.fallback.as_ref())
        {
            if !seen.insert(current.clone()) {
                v.error_whole(format!(
                    "deployments fall back in a cycle through `{start}`; a fallback chain must end"
                ));
                return;
            }
            current = next;
        }
    }
}

fn keys<T>(map: &BTreeMap<String, T>) -> String {
    if map.is_empty() {
        return "(none defined)".to_string();
    }
    map.keys()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

fn policy(
    v: &mut Validator<'_>,
    raw: RawPolicy,
    use_cases: &BTreeMap<String, UseCase>,
    deployments: &BTreeMap<String, Deployment>,
    prices: &BTreeMap<String, Price>,
) -> Policy {
    use FindingAction::*;
    let privacy = raw.privacy.map(|p| {
        let mut actions = |a: &RawPrivacyActions| PrivacyActions {
            pii: v.finding_action(&a.pii, &[Block, Redact, Flag, Allow]),
            secret: v.finding_action(&a.secret, &[Block, Redact, Flag, Allow]),
        };
        let input = actions(&p.input);
        let output = actions(&p.output);
        let retrieved = p.retrieved.as_ref().map_or(input, &mut actions);
        PrivacyPolicy {
            input,
            retrieved,
            output,
        }
    });
    let injection = raw.injection.map(|i| {
        if !(0.0..=1.0).contains(&i.threshold.value) {
            v.error(&i.threshold, "injection threshold must be within [0, 1]");
        }
        InjectionPolicy {
            input: v.finding_action(&i.input, &[Block, Flag, Allow]),
            retrieved: v.finding_action(&i.retrieved, &[Block, Flag, Allow]),
            threshold: i.threshold.value,
        }
    });
    let mut sovereignty = Vec::new();
    for rule in raw.sovereignty {
        let class = &rule.data_class.value;
        if class.is_empty() || !class.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            v.error(
                &rule.data_class,
                format!("data class `{class}` must be lowercase letters and `_`, e.g. pii"),
            );
        }
        let mut allow = Vec::new();
        for dest in &rule.allow {
            match dest.value.as_str() {
                "self_hosted" => allow.push(Destination::Location(EndpointLocation::SelfHosted)),
                "external" => allow.push(Destination::Location(EndpointLocation::External)),
                other => match other.strip_prefix("region:") {
                    Some(region) if !region.is_empty() => allow.push(Destination::Region(region.to_string())),
                    _ => v.error(dest, format!("unknown destination `{other}`; expected self_hosted, external or region:<name>")),
                },
            }
        }
        let on_violation = match rule.on_violation.value.as_str() {
            "route_or_block" => OnViolation::RouteOrBlock,
            "block" => OnViolation::Block,
            other => {
                v.error(
                    &rule.on_violation,
                    format!("unknown on_violation `{other}`; expected route_or_block or block"),
                );
                OnViolation::Block
            }
        };
        sovereignty.push(SovereigntyRule {
            data_class: rule.data_class.value,
            allow,
            on_violation,
        });
    }
    let mut budgets: Vec<Budget> = Vec::new();
    for b in raw.budgets {
        if let Some(budget) = budget(v, &b, use_cases, deployments) {
            // Two lines counting the same thing would share one counter; say so instead.
            if budgets
                .iter()
                .any(|other| other.counts_the_same_as(&budget))
            {
                v.error(&b, "another budget line has the same scope, window and filters; merge their limits into one line");
                continue;
            }
            budgets.push(budget);
        }
    }
    if budgets.iter().any(|b| b.limits.usd_micros.is_some()) {
        for d in deployments.values() {
            if !prices.contains_key(&d.model.snapshot) {
                v.error_whole(format!(
                    "deployment `{}`: budgets limit USD but snapshot `{}` has no price; add it under `prices` (USD per 1M input and output tokens)",
                    d.id, d.model.snapshot
                ));
            }
        }
    }
    let mut resources = BTreeMap::new();
    for (name, r) in raw.resources {
        if r.capacity.value == 0 {
            v.error(
                &r.capacity,
                format!("resource `{name}` has capacity 0; expected a positive amount"),
            );
        }
        resources.insert(name, r.capacity.value);
    }
    let abuse = raw.abuse.and_then(|a| {
        if a.strikes.value == 0 {
            v.error(&a.strikes, "abuse strikes must be at least 1");
        }
        let within = v.span(&a.within, "abuse.within")?;
        let cooldown = v.span(&a.cooldown, "abuse.cooldown")?;
        Some(AbusePolicy {
            strikes: a.strikes.value,
            within,
            cooldown,
        })
    });
    let idempotency_window = raw
        .idempotency
        .and_then(|i| v.span(&i.window, "idempotency.window"))
        .unwrap_or(DEFAULT_IDEMPOTENCY_WINDOW);
    let payload_subject = raw.payload_capture.map(|p| {
        let field = &p.subject.value;
        if field.is_empty() || !field.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            v.error(&p.subject, format!("payload_capture.subject `{field}` must name a metadata field: lowercase letters, digits and `_`"));
        }
        field.clone()
    });
    let monitoring = raw.monitoring.map(|m| monitoring(v, m)).unwrap_or_default();
    let rules = custom_rules(v, &raw.rules);
    Policy {
        privacy,
        injection,
        sovereignty,
        budgets,
        resources,
        abuse,
        idempotency_window,
        payload_subject,
        monitoring,
        rules,
    }
}

fn custom_rules(v: &mut Validator<'_>, raw: &[RawRule]) -> Vec<CustomRule> {
    let mut rules: Vec<CustomRule> = Vec::new();
    for r in raw {
        let id = &r.id.value;
        if id.is_empty()
            || !id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            v.error(&r.id, format!("rule id `{id}` must be lowercase letters, digits, `-` and `_`, e.g. credit-needs-case"));
        }
        if rules.iter().any(|other| other.id == *id) {
            v.error(
                &r.id,
                format!("rule id `{id}` is used twice; give each rule its own id"),
            );
        }
        let action = match r.action.as_ref().map(|a| a.value.as_str()) {
            None | Some("block") => RuleAction::Block,
            Some("flag") => RuleAction::Flag,
            Some(other) => {
                if let Some(at) = &r.action {
                    v.error(
                        at,
                        format!("unknown rule action `{other}`; expected block or flag"),
                    );
                }
                RuleAction::Block
            }
        };
        let Some((file, bytes)) = v.read_file(&r.file, "rule file") else {
            continue;
        };
        let Ok(text) = String::from_utf8(bytes) else {
            v.error(
                &r.file,
                format!("rule file `{}` is not valid UTF-8", r.file.value),
            );
            continue;
        };
        match gavel_rules::RuleProgram::compile(&r.file.value, &text) {
            Ok(program) => rules.push(CustomRule {
                id: id.clone(),
                file,
                action,
                program,
            }),
            // Located in the rule file, where the fix is.
            Err(e) => {
                let (line, column) = e.at.map_or((0, 0), |(l, c)| (u64::from(l), u64::from(c)));
                v.errors.push(ContractError::at(
                    &file.path,
                    line,
                    column,
                    format!("rule `{id}`: {}; rules are Rego v1 modules defining `deny`, with the builtins docs/rules.md lists", e.message),
                ));
            }
        }
    }
    rules
}

fn monitoring(v: &mut Validator<'_>, raw: RawMonitoring) -> Monitoring {
    let defaults = Monitoring::default();
    let mut span = |text: &Option<Sp<String>>, what: &str, default: Span| {
        text.as_ref()
            .and_then(|t| v.span(t, what))
            .unwrap_or(default)
    };
    let window = span(&raw.window, "monitoring.window", defaults.window);
    let bucket = span(&raw.bucket, "monitoring.bucket", defaults.bucket);
    if let Some(at) = &raw.bucket {
        if bucket.millis() < 1000 {
            v.error(at, "monitoring.bucket must be at least 1s");
        }
    }
    if let Some(at) = raw.window.as_ref().or(raw.bucket.as_ref()) {
        if window < bucket {
            v.error(
                at,
                format!("monitoring.window ({window}) must be at least one bucket ({bucket})"),
            );
        } else if bucket.millis() >= 1000 && window.millis() / bucket.millis() > 1000 {
            v.error(at, format!("monitoring.window ({window}) holds more than 1000 buckets of {bucket}; use a longer bucket"));
        }
    }
    let mut count = |value: Option<Sp<u64>>, what: &str, default: u64| match value {
        Some(n) if n.value == 0 => {
            v.error(&n, format!("monitoring.{what} must be at least 1"));
            default
        }
        Some(n) => n.value,
        None => default,
    };
    let min_samples = count(raw.min_samples, "min_samples", defaults.min_samples);
    let drift_min_samples = count(
        raw.drift_min_samples,
        "drift_min_samples",
        defaults.drift_min_samples,
    );
    let min_group_size = count(
        raw.min_group_size,
        "min_group_size",
        defaults.min_group_size,
    );
    let drift_bins = match raw.drift_bins {
        Some(n) if !(2..=100).contains(&n.value) => {
            v.error(
                &n,
                format!("monitoring.drift_bins is {}; expected 2 to 100", n.value),
            );
            defaults.drift_bins
        }
        Some(n) => n.value,
        None => defaults.drift_bins,
    };
    let probe_percent = match raw.probe_percent {
        Some(n) if !(1..=100).contains(&n.value) => {
            v.error(
                &n,
                format!("monitoring.probe_percent is {}; expected 1 to 100", n.value),
            );
            defaults.probe_percent
        }
        Some(n) => n.value,
        None => defaults.probe_percent,
    };
    Monitoring {
        window,
        bucket,
        min_samples,
        drift_bins,
        drift_min_samples,
        min_group_size,
        probe_percent,
    }
}

fn budget(
    v: &mut Validator<'_>,
    b: &Sp<RawBudget>,
    use_cases: &BTreeMap<String, UseCase>,
    deployments: &BTreeMap<String, Deployment>,
) -> Option<Budget> {
    let raw = &b.value;
    let scope = match raw.scope.value.as_str() {
        "organization" => BudgetScope::Organization,
        "use_case" => BudgetScope::UseCase,
        "deployment" => BudgetScope::Deployment,
        "principal" => BudgetScope::Principal,
        "run" => BudgetScope::Run,
        other => {
            v.error(&raw.scope, format!("unknown budget scope `{other}`; expected organization, use_case, deployment, principal or run"));
            return None;
        }
    };
    let window = match &raw.window {
        Some(w) => Some(v.span(w, "budget window")?),
        None if scope == BudgetScope::Run => None,
        None => {
            v.error(b, format!("a `{}` budget needs a `window` (e.g. 1m, 1d); only run budgets may last for the whole run", scope.as_str()));
            return None;
        }
    };
    if let Some(u) = &raw.use_case {
        if !use_cases.contains_key(&u.value) {
            v.error(u, format!("budget names unknown use case `{}`", u.value));
        }
    }
    if let Some(d) = &raw.deployment {
        if !deployments.contains_key(&d.value) {
            v.error(d, format!("budget names unknown deployment `{}`", d.value));
        }
    }
    let usd_micros = raw.usd.as_ref().and_then(|usd| {
        if usd.value.is_finite() && usd.value >= 0.0 && usd.value < 1e12 {
            Some((usd.value * 1e6).round() as u64)
        } else {
            v.error(usd, "usd must be a non-negative amount below 1e12");
            None
        }
    });
    let limits = Limits {
        tokens: raw.tokens,
        usd_micros,
        requests: raw.requests,
        tool_calls: raw.tool_calls,
    };
    if limits == Limits::default() {
        v.error(
            b,
            "this budget sets no limit; expected at least one of tokens, usd, requests, tool_calls",
        );
        return None;
    }
    Some(Budget {
        scope,
        window,
        only_use_case: raw.use_case.as_ref().map(|u| u.value.clone()),
        only_deployment: raw.deployment.as_ref().map(|d| d.value.clone()),
        limits,
    })
}
