//! The decision pipeline (SPEC section 5).
//!
//! Guards run cheapest first and stop at the first terminal verdict: state (kills, cooldowns),
//! approval, conformance, content scanning, sovereignty, the contract's custom rules (Rego),
//! then the budget reservation. The reservation is taken last, so a request that a guard
//! refuses never holds budget. Any error from the state backend ends the pipeline with BLOCK
//! `governance.unavailable`. A caller may run the content scanners ahead
//! ([`Engine::prescan`]); the scanning step then takes that report at its place in the order,
//! so the verdict is the same.

use std::sync::Arc;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use gavel_contract::short_hash;
use gavel_contract::time::{Span, Timestamp};
use gavel_contract::{
    Budget, BudgetScope, Contract, Deployment, Fallback, OnViolation, ParamRule, RuleAction,
    UseCase,
};

use crate::approval::{covering_approval, requirements_moved, NotCovered};
use crate::custom_rules::{Facts, RuleInputs};
use crate::decision::*;
use crate::request::{ActionKind, ContentRole, DecideRequest};
use crate::scan::{ContentScanner, ScanReport, Unapproved};
use crate::state::*;
use crate::tokens::Encoding;

/// Parameters a request may send without them being approved: they change transport, not
/// behaviour or cost. Each must still be of its type ([`neutral_param_is_well_typed`]): they
/// are forwarded as sent, so a free-form value would be text nothing scanned. `user` is a
/// string, and scanned as the request's text is ([`DecideRequest::texts`]).
const NEUTRAL_PARAMS: &[&str] = &["stream", "stream_options", "user", "seed"];

/// Whether a neutral parameter's value is what the API takes there (null: not sent).
fn neutral_param_is_well_typed(name: &str, value: &Value) -> bool {
    match (name, value) {
        (_, Value::Null) => true,
        ("stream", v) => v.is_boolean(),
        ("user", v) => v.is_string(),
        ("seed", v) => v.is_i64() || v.is_u64(),
        // The API's switches, nothing else: their keys are forwarded as sent too.
        ("stream_options", Value::Object(options)) => options.iter().all(|(key, on)| {
            matches!(key.as_str(), "include_usage" | "include_obfuscation") && on.is_boolean()
        }),
        _ => false,
    }
}

#[derive(Clone)]
pub struct EngineConfig {
    /// How long an unsettled reservation holds resources.
    pub reservation_ttl: Span,
    /// Completion tokens reserved when neither the request nor the approval sets max_tokens.
    pub default_max_tokens: u64,
    /// The content-scanning stage; `None` skips it.
    pub scanner: Option<Arc<dyn ContentScanner>>,
}

impl EngineConfig {
    /// The full default pipeline: the defaults plus the content scanners under the contract's
    /// privacy and injection policy.
    pub fn standard() -> Result<EngineConfig, String> {
        Ok(EngineConfig {
            scanner: Some(Arc::new(crate::scanning::PolicyScanner::new()?)),
            ..EngineConfig::default()
        })
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            reservation_ttl: Span::from_secs(600),
            default_max_tokens: 4096,
            scanner: None,
        }
    }
}

/// Rules on requests under one contract. Cheap to clone and share: swap in a new `Engine` when
/// the contract changes.
#[derive(Clone)]
pub struct Engine {
    contract: Arc<Contract>,
    config: EngineConfig,
    rule_inputs: Arc<RuleInputs>,
}

/// One request to decide, with what the caller (not the request) asserts: who is asking, the
/// decision's id and the time.
pub struct DecideInput<'a> {
    pub request: &'a DecideRequest,
    /// The authenticated principal.
    pub principal: &'a str,
    pub decision_id: String,
    pub now: Timestamp,
}

/// Actual usage reported after the action ran.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    #[serde(deserialize_with = "json_safe_count")]
    pub prompt_tokens: u64,
    #[serde(deserialize_with = "json_safe_count")]
    pub completion_tokens: u64,
    #[serde(default, deserialize_with = "json_safe_count")]
    pub tool_calls: u64,
}

/// A count the ledger's canonical JSON can record exactly: at most 2^53 - 1 (RFC 8785 numbers
/// are IEEE doubles). Larger is refused as bad input here rather than failing the record later.
fn json_safe_count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = <u64 as serde::Deserialize>::deserialize(d)?;
    if n > (1 << 53) - 1 {
        return Err(serde::de::Error::custom(format!(
            "{n} is larger than 2^53 - 1, the largest count the ledger records exactly"
        )));
    }
    Ok(n)
}

/// A terminal verdict from a guard.
struct Stop {
    verdict: Verdict,
    reason: Reason,
    retry_until: Option<Timestamp>,
}

impl Stop {
    fn block(reason: Reason) -> Stop {
        Stop {
            verdict: Verdict::Block,
            reason,
            retry_until: None,
        }
    }

    fn cooldown(reason: Reason, until: Timestamp) -> Stop {
        Stop {
            verdict: Verdict::Cooldown,
            reason,
            retry_until: Some(until),
        }
    }
}

/// An approved fallback that may take the request in place of its deployment.
struct Route<'c> {
    target: &'c Deployment,
    /// Names the target, its endpoint, binding and approval.
    obligation: Obligation,
    /// The target's own checks of the request: its max_tokens cap and the note of it.
    as_target: Evaluation,
}

impl<'c> Route<'c> {
    /// Routes `eval` to the target: the route obligation, and the target's max_tokens cap in
    /// place of the deployment's. Returns the target.
    fn taken(self, eval: &mut Evaluation) -> &'c Deployment {
        eval.obligations
            .retain(|o| !matches!(o, Obligation::CapMaxTokens { .. }));
        eval.reasons
            .retain(|r| r.code != ReasonCode::MaxTokensCapped);
        eval.obligations.extend(self.as_target.obligations);
        eval.reasons.extend(self.as_target.reasons);
        eval.obligations.push(self.obligation);
        self.target
    }
}

/// What the guards concluded.
struct Evaluation {
    verdict: Verdict,
    reasons: Vec<Reason>,
    obligations: Vec<Obligation>,
    findings: Vec<FindingRecord>,
    retry_until: Option<Timestamp>,
    approval_id: Option<String>,
    estimate: Option<Estimate>,
    /// A breach whose `on_breach` routes this request to the fallback.
    breach_route: Option<Breach>,
}

/// What the content scanners found in one request under one engine, and its texts' token
/// count, worked out ahead of the decision by [`Engine::prescan`]: a caller that decides on
/// one thread for everyone (the gateway's decider) scans and counts on each request's own
/// thread instead, since neither needs state, and both grow with the request's text (counting
/// 100 KB takes milliseconds, which every decision queued behind it would wait). Opaque: only
/// the engine makes one, and [`Engine::decide_prescanned`] takes its findings and count only
/// for the request it was made for (the same deployment and kind of action, whose template
/// and model decide what is scanned and how it is counted, and the same texts in the same
/// fields and roles: the digest covers everything a count reads, images and the `user`
/// parameter included) under the same contract and scanners; for any other request it scans
/// and counts again. So it cannot carry findings past the scanners, nor a count onto a budget.
pub struct Prescanned {
    contract: Arc<Contract>,
    scanner: Option<Arc<dyn ContentScanner>>,
    deployment: String,
    kind: ActionKind,
    input_sha256: String,
    report: ScanReport,
    /// The texts' tokens ([`text_tokens`]) in the encoding of the model the request will run
    /// on: the requested deployment's, or its fallback's when sovereignty would route it
    /// there (where it is either routed or blocked, so the deployment's own count would go
    /// unused). None when the contract has no budget that counts tokens or dollars, for a
    /// request no model reads as a prompt (a tool call, a task: nothing is counted), or with no such
    /// deployment. A decision that runs on a model of another encoding (a route for a breach)
    /// counts on the spot.
    count: Option<(Encoding, u64)>,
}

impl Engine {
    pub fn new(contract: Arc<Contract>, config: EngineConfig) -> Engine {
        let rule_inputs = Arc::new(RuleInputs::new(&contract));
        Engine {
            contract,
            config,
            rule_inputs,
        }
    }

    /// Runs the content-scanning stage on `request` now, and counts its texts' tokens, for
    /// [`Engine::decide_prescanned`].
    pub fn prescan(&self, request: &DecideRequest) -> Prescanned {
        let (texts, input_sha256) = texts_and_digest(request);
        let deployment = self.contract.deployment(&request.deployment);
        let report = self.scan_texts(request, &texts, deployment);
        let counts_tokens = self
            .contract
            .policy
            .budgets
            .iter()
            .any(|b| b.limits.tokens.is_some() || b.limits.usd_micros.is_some());
        let runs_on = deployment
            .filter(|_| counts_tokens && request.reads_prompt())
            .map(|d| {
                self.sovereignty_route(d, &report.detected_classes)
                    .unwrap_or(d)
            });
        let count = runs_on.map(|d| {
            let encoding = Encoding::for_model(&d.model.name);
            (encoding, text_tokens(request, &texts, encoding))
        });
        Prescanned {
            contract: Arc::clone(&self.contract),
            scanner: self.config.scanner.clone(),
            deployment: request.deployment.clone(),
            kind: request.action.kind,
            input_sha256,
            report,
            count,
        }
    }

    /// The fallback `deployment`'s requests would be routed to for their data classes (the
    /// use case's and `detected`): the deployment its fallback names, when its own endpoint
    /// breaks a sovereignty rule and every rule it breaks may route. Whether the fallback may
    /// then take the request (its endpoint, approval, snapshot) is the decision's to find.
    fn sovereignty_route(
        &self,
        deployment: &Deployment,
        detected: &[String],
    ) -> Option<&Deployment> {
        let Some(Fallback::Deployment(target)) = &deployment.fallback else {
            return None;
        };
        let use_case = self.contract.use_case_of(deployment)?;
        let endpoint = self.contract.endpoint_of(deployment)?;
        let classes = data_classes(use_case, detected);
        let violated = violated_rules(&self.contract, &classes, endpoint);
        (!violated.is_empty() && may_route(&violated))
            .then(|| self.contract.deployment(target))
            .flatten()
    }

    /// Scans `request`'s `texts` for `deployment` (whose prompt template says which bytes of a
    /// system prompt are the caller's).
    fn scan_texts(
        &self,
        request: &DecideRequest,
        texts: &[Text<'_>],
        deployment: Option<&Deployment>,
    ) -> ScanReport {
        let mut report = ScanReport::default();
        if let Some(scanner) = &self.config.scanner {
            let unapproved = unapproved_spans(request, texts, deployment);
            scanner.scan(texts, &unapproved, &self.contract.policy, &mut report);
        }
        report
    }

    /// Whether `prescanned` was made by this engine's contract and scanners for `request`,
    /// whose texts digest to `input_sha256`.
    fn made_for(
        &self,
        prescanned: &Prescanned,
        request: &DecideRequest,
        input_sha256: &str,
    ) -> bool {
        let same_scanner = match (&prescanned.scanner, &self.config.scanner) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        Arc::ptr_eq(&prescanned.contract, &self.contract)
            && same_scanner
            && prescanned.deployment == request.deployment
            && prescanned.kind == request.action.kind
            && prescanned.input_sha256 == input_sha256
    }

    pub fn contract(&self) -> &Contract {
        &self.contract
    }

    /// Decides one request. Never fails: whatever goes wrong becomes a BLOCK.
    pub fn decide(&self, state: &dyn RuntimeState, input: DecideInput<'_>) -> Decision {
        self.decide_prescanned(state, input, None)
    }

    /// [`Engine::decide`], with the scanners' findings and the texts' token count taken from
    /// `prescanned` when it was made for this request under this engine (see [`Prescanned`]);
    /// otherwise it scans and counts.
    pub fn decide_prescanned(
        &self,
        state: &dyn RuntimeState,
        input: DecideInput<'_>,
        prescanned: Option<Prescanned>,
    ) -> Decision {
        let DecideInput {
            request,
            principal,
            decision_id,
            now,
        } = input;
        let deployment = self.contract.deployment(&request.deployment);
        let use_case = deployment.and_then(|d| self.contract.use_case_of(d));
        // Every stage reads the request's texts (the digest, the template check, the scanners,
        // the token count): gather them once, tool-call arguments serialised once.
        let (texts, input_sha256) = texts_and_digest(request);
        let mut decision = self.skeleton(request, input_sha256, principal, decision_id, now);

        if let Some(claimed) = request.principal.as_deref().filter(|p| *p != principal) {
            decision.reasons.push(Reason::new(
                ReasonCode::PrincipalMismatch,
                format!(
                    "the request names principal `{claimed}` but the key belongs to `{principal}`"
                ),
            ));
            return decision;
        }
        let (Some(deployment), Some(use_case)) = (deployment, use_case) else {
            decision.reasons.push(Reason::new(
                ReasonCode::DeploymentUnknown,
                format!(
                    "deployment `{}` is not in contract {}",
                    request.deployment,
                    short_hash(&self.contract.version.0)
                ),
            ));
            return decision;
        };

        let idempotency_key = match request
            .idempotency_key
            .as_ref()
            .filter(|_| !request.dry_run)
        {
            None => None,
            Some(key) => {
                let scoped = idempotency_scope(principal, &deployment.id, key);
                let expires = now.saturating_add(self.contract.policy.idempotency_window);
                match state.claim_idempotency(&scoped, &decision.decision_id, now, expires) {
                    Ok(None) => Some(scoped),
                    Ok(Some(first)) => {
                        decision.verdict = Verdict::NoOp;
                        decision.reasons.push(
                            Reason::new(
                                ReasonCode::IdempotentDuplicate,
                                format!("idempotency key already used within {}; the first decision stands", self.contract.policy.idempotency_window),
                            )
                            .with("first_decision_id", first.clone()),
                        );
                        decision.first_decision_id = Some(first);
                        return decision;
                    }
                    Err(e) => {
                        decision.reasons.push(unavailable(&e));
                        return decision;
                    }
                }
            }
        };

        let (prescanned, counted) =
            match prescanned.filter(|p| self.made_for(p, request, &decision.input_sha256)) {
                Some(p) => (Some(p.report), p.count),
                None => (None, None),
            };
        let ctx = Ctx {
            engine: self,
            request,
            principal,
            deployment,
            use_case,
            now,
            decision_id: &decision.decision_id,
            texts: &texts,
            counted,
        };
        let evaluation = match ctx.evaluate(state, request.dry_run, prescanned) {
            Ok(evaluation) => evaluation,
            Err(e) => Evaluation::allow().stopped(Stop::block(unavailable(&e))),
        };
        decision.approval_id = evaluation.approval_id;
        decision.findings = evaluation.findings;
        decision.estimate = evaluation.estimate;
        if request.dry_run {
            decision.verdict = Verdict::NoOp;
            decision.reasons.push(Reason::new(ReasonCode::DryRun, "dry run: nothing was executed or consumed; `would_be` is the decision a real request would get"));
            decision.would_be = Some(WouldBe {
                verdict: evaluation.verdict,
                reasons: evaluation.reasons,
                obligations: evaluation.obligations,
            });
            return decision;
        }
        decision.verdict = evaluation.verdict;
        decision.reasons = evaluation.reasons;
        decision.obligations = evaluation.obligations;
        if let Some(until) = evaluation.retry_until {
            decision.set_retry_after(now, until);
        }
        if decision.verdict == Verdict::Block {
            match self.record_strike(state, &decision, principal, now) {
                Ok(started) => decision.started_cooldown = started,
                Err(e) => decision.reasons.push(unavailable(&e)),
            }
        }
        if let Some(key) = idempotency_key.filter(|_| decision.verdict != Verdict::Allow) {
            // Nothing executed, so the key is not spent: a retry is decided afresh. If giving
            // it back fails, the key stays held, which errs towards not executing.
            let _ = state.release_idempotency(&key, &decision.decision_id);
        }
        decision
    }

    /// A BLOCK for a request the caller refuses before the pipeline runs (for example when the
    /// contract version has not been applied).
    pub fn refuse(&self, input: DecideInput<'_>, reason: Reason) -> Decision {
        let mut decision = self.skeleton(
            input.request,
            texts_and_digest(input.request).1,
            input.principal,
            input.decision_id,
            input.now,
        );
        decision.reasons.push(reason);
        decision
    }

    /// A BLOCK with no reasons yet and every id the request allows.
    fn skeleton(
        &self,
        request: &DecideRequest,
        input_sha256: String,
        principal: &str,
        decision_id: String,
        now: Timestamp,
    ) -> Decision {
        let deployment = self.contract.deployment(&request.deployment);
        let use_case = deployment.and_then(|d| self.contract.use_case_of(d));
        Decision {
            decision_id,
            verdict: Verdict::Block,
            reasons: Vec::new(),
            obligations: Vec::new(),
            findings: Vec::new(),
            deployment: request.deployment.clone(),
            use_case: use_case.map(|u| u.id.clone()),
            tier: use_case.map(|u| u.tier.as_str().to_string()),
            binding: deployment.map(|d| d.binding.0.clone()),
            approval_id: None,
            contract_version: self.contract.version.0.clone(),
            principal: principal.to_string(),
            run_id: request.run_id.clone(),
            at: now.to_rfc3339(),
            retry_after: None,
            retry_after_seconds: None,
            would_be: None,
            first_decision_id: None,
            estimate: None,
            input_sha256,
            started_cooldown: None,
        }
    }

    /// Takes back everything a decision holds (its reservation and its idempotency key), for
    /// a caller that could not act on it, e.g. because the ledger refused its record. The
    /// caller then reports `governance.unavailable` instead.
    pub fn withdraw(
        &self,
        state: &dyn RuntimeState,
        request: &DecideRequest,
        decision: &Decision,
        now: Timestamp,
    ) -> Result<(), StateError> {
        state.settle(&decision.decision_id, Amounts::default(), now)?;
        if let Some(key) = &request.idempotency_key {
            state.release_idempotency(
                &idempotency_scope(&decision.principal, &request.deployment, key),
                &decision.decision_id,
            )?;
        }
        Ok(())
    }

    /// Settles a decision's reservation with what the action actually used.
    /// What `usage` on a deployment costs by the contract's price table (0 when unpriced or
    /// unknown).
    pub fn usd_micros(&self, deployment_id: &str, usage: &Usage) -> u64 {
        self.contract
            .deployment(deployment_id)
            .and_then(|d| self.contract.price_of(&d.model.snapshot))
            .map_or(0, |p| {
                p.cost_micros(usage.prompt_tokens, usage.completion_tokens)
            })
    }

    pub fn settle(
        &self,
        state: &dyn RuntimeState,
        decision_id: &str,
        deployment_id: &str,
        usage: &Usage,
        now: Timestamp,
    ) -> Result<Settled, StateError> {
        state.settle(decision_id, self.actual_amounts(deployment_id, usage)?, now)
    }

    /// What a call on `deployment_id` actually consumed, priced: what settling charges in
    /// place of the reservation's estimate.
    pub fn actual_amounts(
        &self,
        deployment_id: &str,
        usage: &Usage,
    ) -> Result<Amounts, StateError> {
        let deployment = self.contract.deployment(deployment_id).ok_or_else(|| {
            StateError(format!(
                "deployment `{deployment_id}` is not in the contract"
            ))
        })?;
        Ok(Amounts {
            tokens: usage.prompt_tokens.saturating_add(usage.completion_tokens),
            usd_micros: self.usd_micros(&deployment.id, usage),
            requests: 1,
            tool_calls: usage.tool_calls,
        })
    }

    /// Blocks for abuse reasons count against the principal; enough of them start a cooldown,
    /// which is returned.
    fn record_strike(
        &self,
        state: &dyn RuntimeState,
        decision: &Decision,
        principal: &str,
        now: Timestamp,
    ) -> Result<Option<Cooldown>, StateError> {
        let Some(abuse) = self.contract.policy.abuse else {
            return Ok(None);
        };
        // The reason that blocked comes first; the others are notes (findings the policy only
        // flags), and a block for another reason is not abuse because of them.
        if !decision.reasons.first().is_some_and(|r| r.code.is_abuse()) {
            return Ok(None);
        }
        let strikes = state.add_strike(principal, now, abuse.within.millis())?;
        if strikes < abuse.strikes {
            return Ok(None);
        }
        let cooldown = Cooldown {
            scope: Scope::Principal(principal.to_string()),
            code: ReasonCode::AbuseCooldown.as_str().to_string(),
            reason: format!("{strikes} abuse blocks within {}", abuse.within),
            since: now,
            until: now.saturating_add(abuse.cooldown),
        };
        state.start_cooldown(&cooldown)?;
        Ok(Some(cooldown))
    }
}

/// Idempotency keys are scoped to the principal and deployment.
fn idempotency_scope(principal: &str, deployment: &str, key: &str) -> String {
    format!("{principal}\u{1f}{deployment}\u{1f}{key}")
}

fn unavailable(e: &StateError) -> Reason {
    Reason::new(
        ReasonCode::GovernanceUnavailable,
        format!("governance state is unavailable ({e}); failing closed"),
    )
}

/// `contract.breach.<signal>` with the breach's figures and what it means for this request.
fn breach_reason(breach: &Breach, consequence: &str) -> Reason {
    let code = ReasonCode::breach_of(&breach.signal).unwrap_or(ReasonCode::GovernanceUnavailable);
    Reason::new(
        code,
        format!(
            "`{}` breached its approved `{}` threshold ({:.4} against {}) since {}; {consequence}",
            breach.deployment, breach.threshold, breach.value, breach.limit, breach.since
        ),
    )
    .with("breach_id", breach.id.clone())
    .with("threshold", breach.threshold.clone())
    .with("value", breach.value)
    .with("limit", breach.limit)
}

/// One text of a request with the role it was written in.
type Text<'a> = (ContentRole, std::borrow::Cow<'a, str>);

/// The bytes of `texts`' system texts that conformance does not approve: in a system prompt
/// that the conformance guard checks against `deployment`'s template (an inference's), the
/// values filled into its variables; any other system text whole (one in a tool call's or a
/// task's content, a system message's other fields), since no template vouches for it. A
/// prompt that is not an instance of the template is refused by conformance before anything is
/// scanned; here it counts as unapproved whole.
fn unapproved_spans(
    request: &DecideRequest,
    texts: &[Text<'_>],
    deployment: Option<&Deployment>,
) -> Vec<Unapproved> {
    let template = deployment
        .and_then(|d| d.prompt_template.as_ref())
        .filter(|_| request.is_generative());
    let prompts = request.redactable_texts();
    let mut unapproved = Vec::new();
    for (text_index, (role, text)) in texts.iter().enumerate() {
        if *role != ContentRole::System {
            continue;
        }
        let filled = template
            .filter(|_| text_index < prompts)
            .and_then(|t| t.filled_spans(text).ok());
        match filled {
            Some(spans) => unapproved.extend(
                spans
                    .into_iter()
                    .filter(|span| !span.is_empty())
                    .map(|span| Unapproved { text_index, span }),
            ),
            None => unapproved.push(Unapproved {
                text_index,
                span: 0..text.len(),
            }),
        }
    }
    unapproved
}

/// The request's data classes: those its use case declares and those the scanners `detected`.
fn data_classes<'a>(use_case: &'a UseCase, detected: &'a [String]) -> Vec<&'a str> {
    use_case
        .data_classes
        .iter()
        .map(String::as_str)
        .chain(detected.iter().map(String::as_str))
        .collect()
}

/// The sovereignty rules sending data of `classes` to `endpoint` breaks.
fn violated_rules<'c>(
    contract: &'c Contract,
    classes: &[&str],
    endpoint: &gavel_contract::Endpoint,
) -> Vec<&'c gavel_contract::SovereigntyRule> {
    contract
        .policy
        .sovereignty
        .iter()
        .filter(|rule| classes.contains(&rule.data_class.as_str()) && !rule.admits(endpoint))
        .collect()
}

/// Whether a request whose data classes break `violated` may be routed to the deployment's
/// fallback rather than blocked: every rule it breaks says `route_or_block`.
fn may_route(violated: &[&gavel_contract::SovereigntyRule]) -> bool {
    violated
        .iter()
        .all(|r| r.on_violation == OnViolation::RouteOrBlock)
}

/// The prompt tokens of what a model reads of `request` as text, images aside (they are counted
/// by the contract's figure per image): `texts` (its texts as gathered for the decision) unless
/// images or the `user` parameter are among them, which the model does not read as text.
fn text_tokens(request: &DecideRequest, texts: &[Text<'_>], encoding: Encoding) -> u64 {
    if !request.is_generative() {
        // Embeddings: each input is counted as it is, with no chat framing around it (and the
        // `user` parameter, which the model does not read, left out).
        return request
            .counted_texts()
            .map(|(_, t)| encoding.count(&t))
            .fold(0, u64::saturating_add);
    }
    if request.images().all == 0 && request.user_param().is_none() {
        encoding.count_chat(texts.iter().map(|(_, t)| t.as_ref()))
    } else {
        let read: Vec<Text<'_>> = request.counted_texts().collect();
        encoding.count_chat(read.iter().map(|(_, t)| t.as_ref()))
    }
}

/// The request's texts ([`DecideRequest::texts`]), and their digest: SHA-256 over every text
/// with the field it comes from, its role and its length, so that no two requests that differ
/// in their texts, in how those are split or in where they stand digest alike.
fn texts_and_digest(request: &DecideRequest) -> (Vec<Text<'_>>, String) {
    let mut hasher = Sha256::new();
    let texts = request
        .sourced_texts()
        .map(|(source, role, text)| {
            let (tag, index) = source.tag();
            hasher.update([tag]);
            hasher.update(index.to_be_bytes());
            hasher.update([role as u8]);
            hasher.update((text.len() as u64).to_be_bytes());
            hasher.update(text.as_bytes());
            (role, text)
        })
        .collect();
    (texts, hex::encode(hasher.finalize()))
}

#[derive(Clone, Copy)]
struct Ctx<'a> {
    engine: &'a Engine,
    request: &'a DecideRequest,
    principal: &'a str,
    deployment: &'a Deployment,
    use_case: &'a UseCase,
    now: Timestamp,
    decision_id: &'a str,
    texts: &'a [Text<'a>],
    /// The texts' tokens counted ahead ([`Prescanned`]), in the encoding named.
    counted: Option<(Encoding, u64)>,
}

impl Ctx<'_> {
    fn contract(&self) -> &Contract {
        &self.engine.contract
    }

    /// `prescanned`: the scanners' report on this request, when it was made beforehand.
    fn evaluate(
        &self,
        state: &dyn RuntimeState,
        dry_run: bool,
        prescanned: Option<ScanReport>,
    ) -> Result<Evaluation, StateError> {
        let mut eval = Evaluation::allow();
        let view = state.view(
            &self.deployment.id,
            &self.use_case.id,
            self.principal,
            self.request.run_id.as_deref(),
            self.now,
        )?;
        let outcome = self
            .state_guard(&view)
            .or_else(|| self.approval_guard(&view, &mut eval))
            .or_else(|| self.conformance_guard(&mut eval));
        if let Some(stop) = outcome {
            return Ok(eval.stopped(stop));
        }
        let scan = prescanned.unwrap_or_else(|| {
            self.engine
                .scan_texts(self.request, self.texts, Some(self.deployment))
        });
        let unredactable = self.unredactable(&scan);
        eval.findings = scan.findings;
        if let Some(reason) = scan.block {
            return Ok(eval.stopped(Stop::block(reason)));
        }
        if let Some(stop) = unredactable {
            return Ok(eval.stopped(stop));
        }
        eval.reasons.extend(scan.notes);
        if !scan.redactions.is_empty() {
            eval.obligations.push(Obligation::Redact {
                redactions: scan.redactions,
            });
        }
        let target = match self.sovereignty_guard(state, &scan.detected_classes, &mut eval)? {
            Ok(target) => target,
            Err(stop) => return Ok(eval.stopped(stop)),
        };
        if let Some(stop) = self.rules_guard(target, &scan.detected_classes, &mut eval) {
            return Ok(eval.stopped(stop));
        }
        if let Some(stop) = self.budget_guard(state, target, dry_run, &mut eval)? {
            return Ok(eval.stopped(stop));
        }
        Ok(eval)
    }

    /// A redaction of a text that cannot be rewritten in place (tool-call arguments, a
    /// message's other fields: see [`DecideRequest::redactable_texts`]) would let the span go
    /// out as it is: the request is blocked instead, as for a span the redactor cannot cover.
    fn unredactable(&self, scan: &ScanReport) -> Option<Stop> {
        let redactable = self.request.redactable_texts();
        let r = scan
            .redactions
            .iter()
            .find(|r| r.text_index >= redactable)?;
        let kind = scan
            .findings
            .iter()
            .find(|f| (f.text_index, f.start, f.end) == (r.text_index, r.start, r.end))
            .map_or("pii", |f| f.kind.as_str());
        let code = if kind == "secret" {
            ReasonCode::PrivacySecret
        } else {
            ReasonCode::PrivacyPii
        };
        Some(Stop::block(
            Reason::new(
                code,
                format!("{kind} found outside a message's content (tool-call arguments or another message field), where it cannot be redacted"),
            )
            .with("text_index", r.text_index)
            .with("start", r.start)
            .with("end", r.end),
        ))
    }

    fn state_guard(&self, view: &GovernanceView) -> Option<Stop> {
        if let Some(kill) = view.kills.iter().find(|k| k.until.is_none()) {
            return Some(Stop::block(
                Reason::new(
                    ReasonCode::KillswitchActive,
                    format!(
                        "kill switch on `{}` by {}: {}",
                        kill.scope.key(),
                        kill.by,
                        kill.reason
                    ),
                )
                .with("scope", kill.scope.key()),
            ));
        }
        if let Some(kill) = view
            .kills
            .iter()
            .filter(|k| k.until.is_some())
            .max_by_key(|k| k.until)
        {
            let until = kill.until.unwrap_or(self.now);
            return Some(Stop::cooldown(
                Reason::new(
                    ReasonCode::KillswitchActive,
                    format!(
                        "timed kill on `{}` by {} until {until}: {}",
                        kill.scope.key(),
                        kill.by,
                        kill.reason
                    ),
                )
                .with("scope", kill.scope.key()),
                until,
            ));
        }
        let cooldown = view.cooldowns.iter().max_by_key(|c| c.until)?;
        let code = if cooldown.code == ReasonCode::AbuseCooldown.as_str() {
            ReasonCode::AbuseCooldown
        } else {
            ReasonCode::CooldownActive
        };
        Some(Stop::cooldown(
            Reason::new(
                code,
                format!(
                    "`{}` is cooling down until {}: {}",
                    cooldown.scope.key(),
                    cooldown.until,
                    cooldown.reason
                ),
            )
            .with("scope", cooldown.scope.key())
            .with("cause", cooldown.code.clone()),
            cooldown.until,
        ))
    }

    fn approval_guard(&self, view: &GovernanceView, eval: &mut Evaluation) -> Option<Stop> {
        let d = self.deployment;
        if self.use_case.tier == gavel_contract::Tier::Unacceptable {
            return Some(Stop::block(Reason::new(
                ReasonCode::TierUnacceptable,
                format!(
                    "use case `{}` is tier unacceptable (domain `{}`); it can never run",
                    self.use_case.id, self.use_case.domain
                ),
            )));
        }
        let approval = match covering_approval(&view.approvals, d, self.now) {
            Ok(approval) => approval,
            Err(why) => return Some(Stop::block(self.not_covered_reason(why))),
        };
        eval.approval_id = Some(approval.id.clone());
        if let Some(why) = requirements_moved(approval, &self.engine.contract, d) {
            return Some(Stop::block(
                Reason::new(ReasonCode::ApprovalRequirementsChanged, why)
                    .with("approval_id", approval.id.clone()),
            ));
        }
        if let Some(date) = d.model.deprecates {
            if self.now >= date.start() {
                return Some(Stop::block(
                    Reason::new(ReasonCode::ModelDeprecated, format!("model snapshot `{}` was deprecated on {date}; re-approve a current snapshot", d.model.snapshot))
                        .with("snapshot", d.model.snapshot.clone())
                        .with("deprecated_on", date.to_string()),
                ));
            }
        }
        match &view.breach {
            Some(breach) if breach.approval_id == approval.id => self.breach_guard(breach, eval),
            _ => None,
        }
    }

    /// The approval's `on_breach` while monitoring holds a breach on it: BLOCK until a new
    /// approval, COOLDOWN until the cooldown ends (then traffic probes the deployment), or a
    /// route to the fallback for all but a probing share of requests.
    fn breach_guard(&self, breach: &Breach, eval: &mut Evaluation) -> Option<Stop> {
        match breach.on_breach {
            OnBreach::Block => Some(Stop::block(breach_reason(
                breach,
                "blocked until a new approval",
            ))),
            OnBreach::Cooldown { .. } => match breach.until {
                Some(until) if self.now < until => {
                    Some(Stop::cooldown(breach_reason(breach, "cooling down"), until))
                }
                _ => {
                    eval.reasons.push(breach_reason(
                        breach,
                        "the cooldown is over; this request probes recovery",
                    ));
                    None
                }
            },
            OnBreach::Fallback if self.is_probe() => {
                eval.reasons
                    .push(breach_reason(breach, "this request probes recovery"));
                None
            }
            OnBreach::Fallback => {
                eval.breach_route = Some(breach.clone());
                None
            }
        }
    }

    /// Whether this decision is one of the share let through to a breached deployment so that
    /// its recovery can be observed (chosen by the decision id, so it replays identically).
    fn is_probe(&self) -> bool {
        let hash = self
            .decision_id
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
        hash % 100 < u64::from(self.contract().policy.monitoring.probe_percent)
    }

    fn not_covered_reason(&self, why: NotCovered) -> Reason {
        let d = &self.deployment.id;
        let binding = short_hash(&self.deployment.binding.0);
        match why {
            NotCovered::Missing => Reason::new(ReasonCode::ApprovalMissing, format!("deployment `{d}` (binding {binding}) has no approval; nothing runs unapproved")),
            NotCovered::Pending(id) => Reason::new(ReasonCode::ApprovalPending, format!("approval {id} of `{d}` is still pending signoffs")).with("approval_id", id),
            NotCovered::Expired(id) => Reason::new(ReasonCode::ApprovalExpired, format!("approval {id} of `{d}` has expired; re-approve it")).with("approval_id", id),
            NotCovered::Revoked(id) => Reason::new(ReasonCode::ApprovalRevoked, format!("approval {id} of `{d}` was revoked")).with("approval_id", id),
            NotCovered::BindingMismatch { approval_id, approved } => Reason::new(
                ReasonCode::ApprovalBindingMismatch,
                format!("deployment `{d}` changed since approval {approval_id}: approved binding {}, current {binding}; the change needs its own approval", short_hash(&approved)),
            )
            .with("approval_id", approval_id)
            .with("approved_binding", approved)
            .with("current_binding", self.deployment.binding.0.clone()),
        }
    }

    fn conformance_guard(&self, eval: &mut Evaluation) -> Option<Stop> {
        let d = self.deployment;
        let r = self.request;
        if let Some(model) = &r.model {
            if *model != d.model.name && *model != d.model.snapshot && *model != d.id {
                return Some(Stop::block(
                    Reason::new(
                        ReasonCode::ConformanceModel,
                        format!(
                            "model `{model}` is not the approved `{}` ({})",
                            d.model.name, d.model.snapshot
                        ),
                    )
                    .with("requested", model.clone())
                    .with("approved", d.model.snapshot.clone()),
                ));
            }
        }
        self.approved_shape_guard(eval)
    }

    /// The request against what the deployment's approval covers, its model name aside: chain
    /// step, tool-call arguments, system prompt, tools and parameters (and the max_tokens cap
    /// they give). A route target must pass it too: it runs the request as it is.
    fn approved_shape_guard(&self, eval: &mut Evaluation) -> Option<Stop> {
        let d = self.deployment;
        let r = self.request;
        if let Some(stop) = self.chain_guard().or_else(|| self.tool_args_guard()) {
            return Some(stop);
        }
        if r.is_generative() {
            if let Some(stop) = self.system_prompt_guard() {
                return Some(stop);
            }
        }
        for tool in &r.tools {
            let name = &tool.function.name;
            let Some(approved) = d.tools.get(name) else {
                return Some(Stop::block(
                    Reason::new(
                        ReasonCode::ToolNotApproved,
                        format!("tool `{name}` is not approved for `{}`", d.id),
                    )
                    .with("tool", name.clone()),
                ));
            };
            if tool.function.parameters.as_ref() != Some(&approved.schema) {
                return Some(Stop::block(
                    Reason::new(
                        ReasonCode::ConformanceToolSchema,
                        format!("tool `{name}`'s schema differs from the approved one"),
                    )
                    .with("tool", name.clone())
                    .with("approved_sha256", approved.file.sha256.clone()),
                ));
            }
        }
        self.params_guard(eval)
    }

    fn chain_guard(&self) -> Option<Stop> {
        let d = self.deployment;
        let r = self.request;
        let tool_call = (r.action.kind == ActionKind::ToolCall)
            .then(|| r.action.name.clone().unwrap_or_default());
        if let Some(name) = &tool_call {
            if !d.tools.contains_key(name) {
                return Some(Stop::block(
                    Reason::new(
                        ReasonCode::ToolNotApproved,
                        format!("tool `{name}` is not approved for `{}`", d.id),
                    )
                    .with("tool", name.clone()),
                ));
            }
        }
        let step_reason = |message: String| {
            Some(Stop::block(Reason::new(
                ReasonCode::ChainStepUndeclared,
                message,
            )))
        };
        match (&r.step, d.is_chain()) {
            (None, false) => None,
            (Some(step), false) => step_reason(format!(
                "`{}` is not a chain; it declares no step `{step}`",
                d.id
            )),
            (None, true) => step_reason(format!(
                "`{}` is a chain; name the step (one of: {})",
                d.id,
                d.steps.keys().cloned().collect::<Vec<_>>().join(", ")
            )),
            (Some(step), true) => {
                let Some(declared) = d.steps.get(step) else {
                    return step_reason(format!("chain `{}` declares no step `{step}`", d.id));
                };
                let fits = match declared.kind {
                    gavel_contract::StepKind::Tool => {
                        tool_call.as_deref() == declared.tool.as_deref()
                    }
                    gavel_contract::StepKind::Model => r.action.kind == ActionKind::Inference,
                    gavel_contract::StepKind::Retriever => r.action.kind != ActionKind::ToolCall,
                };
                if !fits {
                    return step_reason(format!(
                        "step `{step}` of `{}` is a {} step; this request does something else",
                        d.id,
                        step_kind_name(declared.kind)
                    ));
                }
                // A chain's steps are governed as one run (run budgets, `run:` cooldowns and
                // kills count by its id): a step outside any run would escape them all.
                r.run_id.as_deref().is_none_or(str::is_empty).then(|| {
                    Stop::block(Reason::new(
                        ReasonCode::ChainRunMissing,
                        format!(
                            "`{}` is a chain; name the run this step belongs to (`run_id`, or the `X-Gavel-Run-Id` header)",
                            d.id
                        ),
                    ))
                })
            }
        }
    }

    /// A tool call's arguments must fit the tool's approved schema; none given counts as `{}`,
    /// so leaving them out cannot skip the check.
    fn tool_args_guard(&self) -> Option<Stop> {
        let r = self.request;
        if r.action.kind != ActionKind::ToolCall {
            return None;
        }
        let name = r.action.name.as_deref().unwrap_or_default();
        let approved = self.deployment.tools.get(name)?;
        let empty = Value::Object(serde_json::Map::new());
        let args = r.action.args.as_ref().unwrap_or(&empty);
        let problem = crate::schema::violation(&approved.schema, args)?;
        // The problem names the place by the caller's property names, and the reason is
        // recorded: one that holds a secret is not repeated.
        let message = match crate::request::secret_in_text(&problem) {
            None => format!("arguments to `{name}` do not fit its approved schema: {problem}"),
            Some(rule) => format!("arguments to `{name}` do not fit its approved schema, at a property whose name holds what looks like a secret ({rule}; not repeated here)"),
        };
        Some(Stop::block(
            Reason::new(ReasonCode::ConformanceToolArgs, message).with("tool", name),
        ))
    }

    fn system_prompt_guard(&self) -> Option<Stop> {
        // Message contents and content parts only: a system message's other fields (its
        // `name`) are scanned as a text of their own, not part of the prompt.
        let prompts: Vec<&str> = self
            .texts
            .iter()
            .take(self.request.redactable_texts())
            .filter(|(role, _)| *role == ContentRole::System)
            .map(|(_, text)| text.as_ref())
            .collect();
        let refuse = |message: String| {
            Some(Stop::block(Reason::new(
                ReasonCode::ConformanceSystemPrompt,
                message,
            )))
        };
        match (&self.deployment.prompt_template, prompts.as_slice()) {
            (None, []) => None,
            (None, _) => refuse(format!(
                "`{}` has no approved prompt template, so it takes no system prompt",
                self.deployment.id
            )),
            (Some(_), []) => refuse(format!(
                "`{}` must be called with its approved system prompt",
                self.deployment.id
            )),
            (Some(template), [prompt]) => match template.check(prompt) {
                Ok(()) => None,
                Err(mismatch) => Some(Stop::block(
                    Reason::new(ReasonCode::ConformanceSystemPrompt, mismatch.to_string())
                        .with("approved_sha256", template.file.sha256.clone()),
                )),
            },
            (Some(_), _) => refuse(format!(
                "{} system messages; the approved template is one message",
                prompts.len()
            )),
        }
    }

    fn params_guard(&self, eval: &mut Evaluation) -> Option<Stop> {
        let d = self.deployment;
        for (name, value) in &self.request.params {
            // The offending value is described by its type only: a caller may put anything in
            // a parameter, including a credential, and reasons are recorded in the ledger.
            let refuse = |why: String| {
                Some(Stop::block(
                    Reason::new(ReasonCode::ConformanceParams, why)
                        .with("param", name.clone())
                        .with("value_type", crate::schema::json_type(value)),
                ))
            };
            if NEUTRAL_PARAMS.contains(&name.as_str()) {
                if neutral_param_is_well_typed(name, value) {
                    continue;
                }
                return refuse(format!(
                    "parameter `{name}` is not of its type (stream: true or false; user: a string; seed: an integer; stream_options: include_usage and include_obfuscation, true or false)"
                ));
            }
            if name == "max_tokens" || name == "max_completion_tokens" {
                continue;
            }
            match d.params.get(name) {
                None => {
                    return refuse(format!("parameter `{name}` is not approved for `{}`", d.id))
                }
                Some(ParamRule::Exactly(approved)) => {
                    if !same_value(approved, value) {
                        return refuse(format!(
                            "parameter `{name}` differs from the approved value {approved}"
                        ));
                    }
                }
                Some(ParamRule::Range { min, max }) => match value.as_f64() {
                    Some(v) if v >= *min && v <= *max => {}
                    _ => {
                        return refuse(format!(
                            "parameter `{name}` is outside the approved range [{min}, {max}]"
                        ))
                    }
                },
            }
        }
        // Both spellings may be sent; the larger one is what the caller asks for.
        let mut requested: Option<u64> = None;
        let mut spellings = 0;
        for key in ["max_tokens", "max_completion_tokens"] {
            let Some(value) = self.request.params.get(key) else {
                continue;
            };
            let Some(n) = value.as_u64() else {
                return Some(Stop::block(
                    Reason::new(
                        ReasonCode::ConformanceParams,
                        format!("`{key}` must be a whole number of tokens"),
                    )
                    .with("param", key)
                    .with("value_type", crate::schema::json_type(value)),
                ));
            };
            spellings += 1;
            requested = Some(requested.map_or(n, |r| r.max(n)));
        }
        let approved = match d.params.get("max_tokens") {
            Some(ParamRule::Exactly(v)) => v.as_f64().map(|n| n as u64),
            _ => None,
        };
        let ceiling = approved.unwrap_or(self.engine.config.default_max_tokens);
        let effective = requested.map_or(ceiling, |n| n.min(ceiling));
        if requested.is_some_and(|n| n > ceiling) {
            eval.reasons.push(
                Reason::new(
                    ReasonCode::MaxTokensCapped,
                    format!("max_tokens capped to {ceiling}"),
                )
                .with("requested", requested.unwrap_or_default())
                .with("limit", ceiling),
            );
        }
        if (requested != Some(effective) || spellings > 1) && self.request.is_generative() {
            eval.obligations.push(Obligation::CapMaxTokens {
                max_tokens: effective,
            });
        }
        None
    }

    /// The route to the deployment's fallback, when the fallback is a deployment whose
    /// endpoint `admits`, with a covering approval, a current snapshot, no kill or cooldown of
    /// its own, and an approval that covers the request as it is ([`Self::approved_shape_guard`]).
    fn approved_fallback(
        &self,
        state: &dyn RuntimeState,
        admits: impl Fn(&gavel_contract::Endpoint) -> bool,
    ) -> Result<Option<Route<'_>>, StateError> {
        let contract = self.contract();
        let Some(Fallback::Deployment(target_id)) = &self.deployment.fallback else {
            return Ok(None);
        };
        let Some(target) = contract.deployment(target_id) else {
            return Ok(None);
        };
        if !contract.endpoint_of(target).is_some_and(admits) {
            return Ok(None);
        }
        if target
            .model
            .deprecates
            .is_some_and(|d| self.now >= d.start())
        {
            return Ok(None);
        }
        // The target runs the request as it came (its model name aside, which the route
        // swaps): a template, tool or parameter its approval does not cover stops the route,
        // and its own max_tokens ceiling is the one that holds. Checked before the state is
        // read, as the guards are: cheapest first.
        let mut as_target = Evaluation::allow();
        let shape = Ctx {
            deployment: target,
            ..*self
        }
        .approved_shape_guard(&mut as_target);
        if shape.is_some() {
            return Ok(None);
        }
        let approvals = state.approvals_of(target_id)?;
        let Ok(approval) = covering_approval(&approvals, target, self.now) else {
            return Ok(None);
        };
        // What would refuse the target if called directly refuses it as a route too.
        if requirements_moved(approval, contract, target).is_some() {
            return Ok(None);
        }
        let target_state = state.view(
            target_id,
            &target.use_case,
            self.principal,
            self.request.run_id.as_deref(),
            self.now,
        )?;
        let breached = target_state
            .breach
            .is_some_and(|b| b.approval_id == approval.id);
        if !target_state.kills.is_empty() || !target_state.cooldowns.is_empty() || breached {
            return Ok(None);
        }
        Ok(Some(Route {
            target,
            obligation: Obligation::Route {
                deployment: target_id.clone(),
                endpoint: target.endpoint.clone(),
                binding: target.binding.0.clone(),
                approval_id: approval.id.clone(),
            },
            as_target,
        }))
    }

    /// Returns the deployment the request will run on (itself or a route target).
    fn sovereignty_guard<'c>(
        &'c self,
        state: &dyn RuntimeState,
        detected: &[String],
        eval: &mut Evaluation,
    ) -> Result<Result<&'c Deployment, Stop>, StateError> {
        let contract = self.contract();
        let classes = data_classes(self.use_case, detected);
        // A route target takes the request's data: every rule of its classes must admit it,
        // not only those the deployment's own endpoint broke.
        let may_take =
            |e: &gavel_contract::Endpoint| violated_rules(contract, &classes, e).is_empty();
        if let Some(breach) = eval.breach_route.take() {
            return Ok(
                match self.approved_fallback(state, may_take)? {
                    Some(route) => {
                        eval.reasons.push(
                            breach_reason(&breach, "routed to the approved fallback")
                                .with("to", route.target.id.clone()),
                        );
                        Ok(route.taken(eval))
                    }
                    None => Err(Stop::block(breach_reason(
                        &breach,
                        "its fallback is not an approved deployment that may take this request, so it is blocked",
                    ))),
                },
            );
        }
        let Some(endpoint) = contract.endpoint_of(self.deployment) else {
            return Ok(Err(Stop::block(Reason::new(
                ReasonCode::GovernanceUnavailable,
                "the deployment's endpoint is missing from the contract",
            ))));
        };
        let violated = violated_rules(contract, &classes, endpoint);
        if violated.is_empty() {
            return Ok(Ok(self.deployment));
        }
        let names: Vec<&str> = violated.iter().map(|r| r.data_class.as_str()).collect();
        if may_route(&violated) {
            if let Some(route) = self.approved_fallback(state, may_take)? {
                eval.reasons.push(
                    Reason::new(
                        ReasonCode::SovereigntyRouted,
                        format!(
                            "{} data may not go to endpoint `{}`; routed to `{}`",
                            names.join(", "),
                            endpoint.id,
                            route.target.id
                        ),
                    )
                    .with("data_classes", json!(names))
                    .with("to", route.target.id.clone()),
                );
                return Ok(Ok(route.taken(eval)));
            }
        }
        Ok(Err(Stop::block(
            Reason::new(
                ReasonCode::SovereigntyEndpoint,
                format!("{} data may not go to endpoint `{}` ({}, {}) and no approved alternative is allowed to take it", names.join(", "), endpoint.id, endpoint.location.as_str(), endpoint.region),
            )
            .with("data_classes", json!(names))
            .with("endpoint", endpoint.id.clone()),
        )))
    }

    /// Stage 7: the contract's custom rules, in order ([`crate::custom_rules`]). A `block`
    /// rule that denies stops the request (`rule.deny`); a `flag` rule's denial is recorded
    /// (`rule.flagged`) and the pipeline goes on. A rule that cannot be evaluated blocks with
    /// `governance.unavailable`: a rule that gave no answer has not said yes.
    fn rules_guard(
        &self,
        target: &Deployment,
        detected: &[String],
        eval: &mut Evaluation,
    ) -> Option<Stop> {
        let rules = &self.contract().policy.rules;
        if rules.is_empty() {
            return None;
        }
        let classes = data_classes(self.use_case, detected);
        let roles: Vec<ContentRole> = self.texts.iter().map(|(role, _)| *role).collect();
        let input = crate::custom_rules::input(
            &self.engine.rule_inputs,
            &Facts {
                request: self.request,
                principal: self.principal,
                deployment: self.deployment,
                target,
                data_classes: &classes,
                findings: &eval.findings,
                roles: &roles,
                now: self.now,
            },
        );
        let hidden = crate::custom_rules::hidden(self.request);
        for rule in rules {
            let messages = match rule.program.evaluate_hiding(&input, &hidden) {
                Ok(messages) => messages,
                // A rule on trial takes no part in the verdict, so governance can still decide
                // without it: its failure is recorded, not enforced.
                Err(e) if rule.action == RuleAction::Flag => {
                    eval.reasons.push(
                        Reason::new(
                            ReasonCode::RuleFlagged,
                            format!("custom rule `{}` (flag) could not be evaluated ({e}); it is not enforced", rule.id),
                        )
                        .with("rule", rule.id.clone())
                        .with("error", e.0),
                    );
                    continue;
                }
                Err(e) => {
                    return Some(Stop::block(
                        Reason::new(
                            ReasonCode::GovernanceUnavailable,
                            format!("custom rule `{}` could not be evaluated ({e}), so the request is blocked", rule.id),
                        )
                        .with("rule", rule.id.clone()),
                    ))
                }
            };
            if messages.is_empty() {
                continue;
            }
            let (code, verb) = match rule.action {
                RuleAction::Block => (ReasonCode::RuleDeny, "denies"),
                RuleAction::Flag => (ReasonCode::RuleFlagged, "flags"),
            };
            let reason = Reason::new(
                code,
                format!(
                    "custom rule `{}` {verb} this request: {}",
                    rule.id,
                    messages.join("; ")
                ),
            )
            .with("rule", rule.id.clone())
            .with("messages", json!(messages));
            match rule.action {
                RuleAction::Block => return Some(Stop::block(reason)),
                RuleAction::Flag => eval.reasons.push(reason),
            }
        }
        None
    }

    fn budget_guard(
        &self,
        state: &dyn RuntimeState,
        target: &Deployment,
        dry_run: bool,
        eval: &mut Evaluation,
    ) -> Result<Option<Stop>, StateError> {
        let contract = self.contract();
        let applicable: Vec<(&Budget, String)> = contract
            .policy
            .budgets
            .iter()
            // A routed request runs on, and is charged to, its route target.
            .filter(|b| {
                b.only_use_case
                    .as_ref()
                    .is_none_or(|u| *u == target.use_case)
            })
            .filter(|b| b.only_deployment.as_ref().is_none_or(|d| *d == target.id))
            .filter_map(|b| self.scope_value(b.scope, target).map(|v| (b, v)))
            .collect();
        let resources: Vec<ResourceClaim> = self
            .request
            .resources
            .iter()
            .map(|(name, amount)| (name, *amount, contract.policy.resources.get(name).copied()))
            .map(|(name, amount, capacity)| ResourceClaim {
                name: name.clone(),
                amount,
                capacity: capacity.unwrap_or(0),
            })
            .collect();
        if let Some(unknown) = resources.iter().find(|r| r.capacity == 0) {
            return Ok(Some(Stop::block(Reason::new(
                ReasonCode::BudgetResource,
                format!(
                    "resource `{}` is not declared in the contract's policy.resources",
                    unknown.name
                ),
            ))));
        }
        let max_tokens = eval
            .obligations
            .iter()
            .find_map(|o| match o {
                Obligation::CapMaxTokens { max_tokens } => Some(*max_tokens),
                _ => None,
            })
            .or_else(|| {
                self.request
                    .params
                    .get("max_tokens")
                    .and_then(Value::as_u64)
            })
            .or_else(|| {
                self.request
                    .params
                    .get("max_completion_tokens")
                    .and_then(Value::as_u64)
            })
            .unwrap_or(self.engine.config.default_max_tokens);
        let needs_tokens = applicable
            .iter()
            .any(|(b, _)| b.limits.tokens.is_some() || b.limits.usd_micros.is_some());
        // A model reads a prompt only for inference (or anything carrying chat messages) and
        // embeddings: a tool call's arguments or a task's content are not tokens of a model's.
        let is_inference = self.request.is_generative();
        let prompt_tokens = if needs_tokens && self.request.reads_prompt() {
            let encoding = Encoding::for_model(&target.model.name);
            let for_texts = match self.counted {
                Some((counted_in, tokens)) if counted_in == encoding => tokens,
                _ => text_tokens(self.request, self.texts, encoding),
            };
            let images = self.request.images();
            let snapshot = &target.model.snapshot;
            let image_tokens = (images.all - images.low_detail)
                .saturating_mul(contract.image_tokens_of(snapshot, false))
                .saturating_add(
                    images
                        .low_detail
                        .saturating_mul(contract.image_tokens_of(snapshot, true)),
                );
            for_texts.saturating_add(image_tokens)
        } else {
            0
        };
        let completion = if is_inference { max_tokens } else { 0 };
        let usd_micros = contract
            .price_of(&target.model.snapshot)
            .map_or(0, |p| p.cost_micros(prompt_tokens, completion));
        let tool_calls = u64::from(self.request.action.kind == ActionKind::ToolCall);
        let amounts = Amounts {
            tokens: prompt_tokens.saturating_add(completion),
            usd_micros,
            requests: 1,
            tool_calls,
        };
        eval.estimate = Some(Estimate {
            prompt_tokens,
            max_tokens: completion,
            usd_micros,
            tool_calls,
        });
        let windows = applicable
            .iter()
            .map(|(budget, scope_value)| window_charge(budget, scope_value, amounts, self.now))
            .collect();
        let reservation = ReservationRequest {
            reservation_id: self.decision_id.to_string(),
            windows,
            resources,
            expires_at: self.now.saturating_add(self.engine.config.reservation_ttl),
        };
        Ok(state
            .reserve(&reservation, self.now, dry_run)?
            .err()
            .map(|refusal| self.refusal_stop(refusal)))
    }

    fn scope_value(&self, scope: BudgetScope, target: &Deployment) -> Option<String> {
        match scope {
            BudgetScope::Organization => Some(self.contract().organization.clone()),
            BudgetScope::UseCase => Some(target.use_case.clone()),
            BudgetScope::Deployment => Some(target.id.clone()),
            BudgetScope::Principal => Some(self.principal.to_string()),
            // A run is the caller's own: another principal naming the same run id (a sequence
            // number, a guess) has a counter of its own and cannot spend this run's budget.
            // JSON, so that no pair of names reads as another pair.
            BudgetScope::Run => self
                .request
                .run_id
                .as_ref()
                .map(|run| serde_json::json!([self.principal, run]).to_string()),
        }
    }

    fn refusal_stop(&self, refusal: Refusal) -> Stop {
        match refusal {
            Refusal::Window {
                key,
                measure,
                limit,
                used,
                requested,
                resets_at,
            } => {
                let (code, unit) = match measure {
                    Measure::Tokens => (ReasonCode::BudgetTokens, "tokens"),
                    Measure::UsdMicros => (ReasonCode::BudgetSpend, "micro-USD"),
                    Measure::Requests => (ReasonCode::BudgetRate, "requests"),
                    Measure::ToolCalls => (ReasonCode::BudgetToolCalls, "tool calls"),
                };
                let reason = Reason::new(code, format!("budget `{key}` would exceed its limit: {used} + {requested} > {limit} {unit}"))
                    .with("budget", key)
                    .with("limit", limit)
                    .with("used", used)
                    .with("requested", requested);
                // More than the whole limit never fits, however long it waits: a BLOCK (not as
                // is), not a COOLDOWN whose retry would be refused again in every window.
                match resets_at {
                    Some(until) if requested <= limit => Stop::cooldown(reason, until),
                    _ => Stop::block(reason),
                }
            }
            Refusal::Resource {
                name,
                capacity,
                in_use,
                requested,
            } => {
                let reason = Reason::new(ReasonCode::BudgetResource, format!("resource `{name}`: {in_use} in use + {requested} requested > capacity {capacity}"))
                    .with("resource", name)
                    .with("limit", capacity)
                    .with("used", in_use)
                    .with("requested", requested);
                if requested > capacity {
                    Stop::block(reason)
                } else {
                    Stop::cooldown(reason, self.now.saturating_add(Span::from_secs(1)))
                }
            }
        }
    }
}

impl Evaluation {
    /// Nothing has stopped the request yet.
    fn allow() -> Evaluation {
        Evaluation {
            verdict: Verdict::Allow,
            reasons: Vec::new(),
            obligations: Vec::new(),
            findings: Vec::new(),
            retry_until: None,
            approval_id: None,
            estimate: None,
            breach_route: None,
        }
    }

    fn stopped(mut self, stop: Stop) -> Evaluation {
        self.verdict = stop.verdict;
        self.reasons.insert(0, stop.reason);
        self.retry_until = stop.retry_until;
        self.obligations.clear();
        self
    }
}

/// The counter a budget line charges for this request: fixed windows aligned to the epoch, so
/// every replica computes the same window boundaries.
pub fn window_charge(
    budget: &Budget,
    scope_value: &str,
    amounts: Amounts,
    now: Timestamp,
) -> WindowCharge {
    let line = budget.line();
    let (key, resets_at) = match budget.window {
        Some(window) => {
            let size = i64::try_from(window.millis()).unwrap_or(i64::MAX).max(1);
            let start = now.millis().div_euclid(size) * size;
            (
                format!("{line}|{scope_value}|{start}"),
                Some(Timestamp(start.saturating_add(size))),
            )
        }
        None => (format!("{line}|{scope_value}"), None),
    };
    WindowCharge {
        key,
        limits: WindowLimits {
            tokens: budget.limits.tokens,
            usd_micros: budget.limits.usd_micros,
            requests: budget.limits.requests,
            tool_calls: budget.limits.tool_calls,
        },
        amounts,
        resets_at,
    }
}

fn step_kind_name(kind: gavel_contract::StepKind) -> &'static str {
    match kind {
        gavel_contract::StepKind::Tool => "tool",
        gavel_contract::StepKind::Model => "model",
        gavel_contract::StepKind::Retriever => "retriever",
    }
}

/// Numbers compare by value (0.2 == 0.20), everything else structurally.
fn same_value(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> DecideRequest {
        crate::parse_request(json.as_bytes()).unwrap()
    }

    fn digest(json: &str) -> String {
        texts_and_digest(&request(json)).1
    }

    /// The recipe docs/decide.md gives, written out for a request of two texts.
    #[test]
    fn the_input_digest_is_the_documented_recipe() {
        let mut expected = Sha256::new();
        for (tag, index, role, text) in [(0u8, 0u64, 1u8, "Be brief."), (2, 0, 0, "user-7")] {
            expected.update([tag]);
            expected.update(index.to_be_bytes());
            expected.update([role]);
            expected.update((text.len() as u64).to_be_bytes());
            expected.update(text.as_bytes());
        }
        assert_eq!(
            digest(
                r#"{"deployment":"d","messages":[{"role":"system","content":"Be brief."}],"params":{"user":"user-7"}}"#
            ),
            hex::encode(expected.finalize())
        );
    }

    /// 2026-11-22T12:00:00Z, well before the example's deprecation dates.
    const NOW: Timestamp = Timestamp(1_795_348_800_000);

    /// The example contract with each edit `(from, to)` made in gavel.yaml, every deployment
    /// approved, and a request to `deployment` whose system prompt is the example's
    /// `prompts/{prompt}.txt`.
    fn example_world(
        edits: &[(&str, &str)],
        deployment: &str,
        prompt: &str,
        user: &str,
    ) -> (Engine, crate::MemoryState, DecideRequest) {
        let mut text = gavel_contract::example::FILES[0].1.to_string();
        for (from, to) in edits {
            assert!(text.contains(from), "the example has no `{from}`");
            text = text.replacen(from, to, 1);
        }
        let contract = gavel_contract::load_bytes(
            std::path::Path::new("gavel.yaml"),
            text.as_bytes(),
            &gavel_contract::example::InMemory,
        )
        .unwrap()
        .contract;
        let state = crate::MemoryState::new();
        for d in contract.deployments.values() {
            state
                .put_approval(crate::Approval {
                    id: format!("apr_{}", d.id),
                    deployment: d.id.clone(),
                    use_case: d.use_case.clone(),
                    binding: d.binding.0.clone(),
                    contract_version: contract.version.0.clone(),
                    tier: contract.use_case_of(d).unwrap().tier.as_str().into(),
                    population: "test".into(),
                    created_at: NOW,
                    expires_at: NOW.saturating_add(gavel_contract::time::Span::from_days(30)),
                    thresholds: Default::default(),
                    on_breach: crate::OnBreach::Block,
                    evidence: vec![],
                    signoffs: vec![],
                    status: crate::ApprovalStatus::Active,
                    revocation: None,
                    activated_at: None,
                })
                .unwrap();
        }
        let system = gavel_contract::example::FILES
            .iter()
            .find(|(path, _)| *path == format!("prompts/{prompt}.txt"))
            .map(|(_, text)| text.replace("{{queue_list}}", "billing"))
            .unwrap();
        let request = crate::parse_request(
            serde_json::json!({
                "deployment": deployment,
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": user}
                ]
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let engine = Engine::new(Arc::new(contract), EngineConfig::default());
        (engine, state, request)
    }

    fn prompt_tokens(
        (engine, state, request): &(Engine, crate::MemoryState, DecideRequest),
        prescanned: Option<Prescanned>,
    ) -> u64 {
        let input = DecideInput {
            request,
            principal: "svc",
            decision_id: "dec_count".into(),
            now: NOW,
        };
        let decision = engine.decide_prescanned(state, input, prescanned);
        assert_eq!(decision.verdict, Verdict::Allow, "{decision:?}");
        decision.estimate.unwrap().prompt_tokens
    }

    /// A decision takes its texts' token count from a prescan made for it instead of counting
    /// again on the deciding thread, also when sovereignty routes it to a fallback whose model
    /// counts in another encoding; a count in an encoding other than the model's it runs on is
    /// not taken. Counts set by hand here, which only this crate can do, show which was used.
    #[test]
    fn a_prescanned_count_is_taken_not_counted_again() {
        let kb = example_world(&[], "kb-search-v1", "kb", "How do I book a meeting room?");
        let counted = prompt_tokens(&kb, None);
        let mut prescanned = kb.0.prescan(&kb.2);
        assert_eq!(
            prescanned.count,
            Some((Encoding::O200k, counted)),
            "kb-search-v1 runs gpt-4o-mini, which counts in o200k"
        );
        prescanned.count = Some((Encoding::O200k, 1_000));
        assert_eq!(prompt_tokens(&kb, Some(prescanned)), 1_000);
        let mut prescanned = kb.0.prescan(&kb.2);
        prescanned.count = Some((Encoding::Cl100k, 1_000));
        assert_eq!(prompt_tokens(&kb, Some(prescanned)), counted);

        // Support triage declares PII, which may not go to its external endpoint: routed to
        // support-triage-local (llama: cl100k) from support-triage-v3 (gpt-4o: o200k).
        let triage = example_world(
            &[(
                "    data_classes: [internal]\n  credit-limit:",
                "    data_classes: [internal, pii]\n  credit-limit:",
            )],
            "support-triage-v3",
            "triage",
            "My parcel arrived crushed.",
        );
        let counted = prompt_tokens(&triage, None);
        let mut prescanned = triage.0.prescan(&triage.2);
        assert_eq!(prescanned.count, Some((Encoding::Cl100k, counted)));
        prescanned.count = Some((Encoding::Cl100k, 2_000));
        assert_eq!(prompt_tokens(&triage, Some(prescanned)), 2_000);
        // A count for the deployment asked for is not the route target's.
        let mut prescanned = triage.0.prescan(&triage.2);
        prescanned.count = Some((Encoding::O200k, 1_000));
        assert_eq!(prompt_tokens(&triage, Some(prescanned)), counted);
    }

    /// A prescan is taken only for the deployment and the kind of action it was made for: the
    /// same texts sent to another deployment (another template, another model) or as another
    /// kind of action are scanned and counted again.
    #[test]
    fn a_prescan_is_not_taken_for_another_deployment_or_action() {
        let v3 = example_world(
            &[],
            "support-triage-v3",
            "triage",
            "My parcel arrived crushed.",
        );
        let local = example_world(
            &[],
            "support-triage-local",
            "triage",
            "My parcel arrived crushed.",
        );
        let counted = prompt_tokens(&local, None);
        // Made for support-triage-v3, with the count support-triage-local's model would take.
        let mut prescanned = local.0.prescan(&v3.2);
        prescanned.count = Some((Encoding::Cl100k, 2_000));
        assert_eq!(prompt_tokens(&local, Some(prescanned)), counted);
        // The control: made for support-triage-local, it is taken.
        let mut prescanned = local.0.prescan(&local.2);
        prescanned.count = Some((Encoding::Cl100k, 2_000));
        assert_eq!(prompt_tokens(&local, Some(prescanned)), 2_000);

        let mut as_task = local.2.clone();
        as_task.action.kind = ActionKind::Task;
        let mut prescanned = local.0.prescan(&as_task);
        prescanned.count = Some((Encoding::Cl100k, 2_000));
        assert_eq!(prompt_tokens(&local, Some(prescanned)), counted);
    }

    /// Requests that carry the same texts in the same roles, in different fields, digest apart.
    #[test]
    fn the_same_texts_in_other_fields_digest_apart() {
        let user_param = digest(
            r#"{"deployment":"d","messages":[{"role":"user","content":"hi"}],"params":{"user":"bob"}}"#,
        );
        let trailing_part = digest(
            r#"{"deployment":"d","messages":[{"role":"user","content":"hi"}],"content":[{"role":"user","text":"bob"}]}"#,
        );
        assert_ne!(user_param, trailing_part);
        let calls = |on: usize| {
            let mut messages = [r#"{"role":"assistant","content":"a"}"#; 2];
            messages[on] = r#"{"role":"assistant","content":"a","tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]}"#;
            digest(&format!(
                r#"{{"deployment":"d","messages":[{}]}}"#,
                messages.join(",")
            ))
        };
        assert_ne!(calls(0), calls(1));
        // And the same request digests alike.
        assert_eq!(calls(1), calls(1));
    }
}
