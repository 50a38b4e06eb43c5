//! Stage 7: the input document the contract's custom rules (Rego) see, and their verdict.
//!
//! The document holds governance facts about the request (docs/rules.md lists every field):
//! who asks, for which deployment and use case, where it will run, the data classes, what the
//! scanners found (kinds and rules, never the matched text), the parameters, tools, step, run,
//! metadata and the time. It holds none of the request's texts: a rule's messages become
//! reasons, and reasons are recorded in the ledger.

use std::collections::{BTreeSet, HashMap};

use gavel_contract::time::Timestamp;
use gavel_contract::{Contract, Deployment};
use gavel_rules::{Doc, Field};

use crate::decision::FindingRecord;
use crate::request::{ActionKind, ContentRole, DecideRequest};

/// The parts of the document that depend on the deployment alone (its own facts and its use
/// case's), built once per contract so that a decision clones them (a reference count)
/// instead of building them.
#[derive(Clone, Default)]
pub(crate) struct RuleInputs {
    deployments: HashMap<String, Field>,
    use_cases: HashMap<String, Field>,
}

impl RuleInputs {
    /// Empty when the contract has no rules: nothing would read it.
    pub(crate) fn new(contract: &Contract) -> RuleInputs {
        if contract.policy.rules.is_empty() {
            return RuleInputs::default();
        }
        let deployments = contract
            .deployments
            .values()
            .map(|d| {
                let endpoint = contract.endpoint_of(d).map(|e| {
                    Doc::default()
                        .with("id", e.id.as_str())
                        .with("location", e.location.as_str())
                        .with("region", e.region.as_str())
                });
                let doc = Doc::default()
                    .with("id", d.id.as_str())
                    .with("use_case", d.use_case.as_str())
                    .with(
                        "model",
                        Doc::default()
                            .with("name", d.model.name.as_str())
                            .with("snapshot", d.model.snapshot.as_str()),
                    )
                    .with("endpoint", endpoint)
                    .with("binding", d.binding.0.as_str());
                (d.id.clone(), doc.into())
            })
            .collect();
        let use_cases = contract
            .use_cases
            .values()
            .map(|u| {
                let doc = Doc::default()
                    .with("id", u.id.as_str())
                    .with("domain", u.domain.as_str())
                    .with("tier", u.tier.as_str())
                    .with(
                        "data_classes",
                        u.data_classes.iter().map(String::as_str).collect::<Field>(),
                    );
                (u.id.clone(), doc.into())
            })
            .collect();
        RuleInputs {
            deployments,
            use_cases,
        }
    }

    fn deployment(&self, d: &Deployment) -> Field {
        self.deployments
            .get(&d.id)
            .cloned()
            .unwrap_or_else(|| Doc::default().with("id", d.id.as_str()).into())
    }
}

/// What the document is made of, as the pipeline knows it at stage 7.
pub(crate) struct Facts<'a> {
    pub(crate) request: &'a DecideRequest,
    pub(crate) principal: &'a str,
    pub(crate) deployment: &'a Deployment,
    /// Where the request will run: the deployment, or the fallback a guard routed it to.
    pub(crate) target: &'a Deployment,
    /// Declared by the use case and detected by the scanners.
    pub(crate) data_classes: &'a [&'a str],
    pub(crate) findings: &'a [FindingRecord],
    pub(crate) roles: &'a [ContentRole],
    pub(crate) now: Timestamp,
}

/// The input document for `facts` (docs/rules.md).
pub(crate) fn input(inputs: &RuleInputs, facts: &Facts<'_>) -> Field {
    let request = facts.request;
    let use_case = inputs.use_cases.get(&facts.deployment.use_case).cloned();
    let findings: Field = facts
        .findings
        .iter()
        .map(|f| {
            Doc::default()
                .with("kind", f.kind.as_str())
                .with("rule_id", f.rule_id.as_str())
                .with("confidence", f64::from(f.confidence))
                .with("role", facts.roles.get(f.text_index).map(|r| r.as_str()))
        })
        .collect();
    let roles: BTreeSet<&str> = facts.roles.iter().map(|r| r.as_str()).collect();
    let mut metadata = Doc::default();
    for (key, value) in &request.metadata {
        metadata.set(key, value.as_str());
    }
    let mut params = Doc::default();
    // `user` is text the request sends (and the scanners read), not a parameter to judge.
    for (key, value) in request.params.iter().filter(|(k, _)| *k != "user") {
        params.set(key, value);
    }
    Doc::default()
        .with("principal", facts.principal)
        .with(
            "action",
            Doc::default()
                .with("type", action_name(request.action.kind))
                .with("name", request.action.name.as_deref()),
        )
        .with("deployment", inputs.deployment(facts.deployment))
        .with("target", inputs.deployment(facts.target))
        .with("use_case", use_case)
        .with(
            "data_classes",
            facts
                .data_classes
                .iter()
                .copied()
                .collect::<BTreeSet<&str>>()
                .into_iter()
                .collect::<Field>(),
        )
        .with("findings", findings)
        .with("content_roles", roles.into_iter().collect::<Field>())
        .with("model", request.model.as_deref())
        .with("params", params)
        .with(
            "tools",
            request
                .tools
                .iter()
                .map(|t| t.function.name.as_str())
                .collect::<Field>(),
        )
        .with("step", request.step.as_deref())
        .with("run_id", request.run_id.as_deref())
        .with("metadata", metadata)
        .with("time", time(facts.now))
        .into()
}

/// The values of the request's metadata, each with its stand-in (`[metadata.KEY]`), for the
/// rules' messages and errors: metadata is the caller's text and reaches no record, and a rule
/// that quotes it would put it (perhaps a credential) in one. Values under four characters are
/// left: replacing them would garble messages, and they hide nothing.
pub(crate) fn hidden(request: &DecideRequest) -> Vec<(String, &str)> {
    request
        .metadata
        .iter()
        .filter(|(_, v)| v.chars().count() >= 4)
        .map(|(k, v)| (format!("[metadata.{k}]"), v.as_str()))
        .collect()
}

fn action_name(kind: ActionKind) -> &'static str {
    match kind {
        ActionKind::Inference => "inference",
        ActionKind::ToolCall => "tool_call",
        ActionKind::Task => "task",
        ActionKind::Embeddings => "embeddings",
    }
}

const WEEKDAYS: [&str; 7] = [
    "thursday",
    "friday",
    "saturday",
    "sunday",
    "monday",
    "tuesday",
    "wednesday",
];

/// The decision's time in UTC: what a rule about hours or days needs, from the time the
/// decision was given (the engine reads no clock of its own).
fn time(now: Timestamp) -> Doc {
    let days = now.millis().div_euclid(86_400_000);
    let millis_of_day = now.millis().rem_euclid(86_400_000);
    Doc::default()
        .with("unix_ms", now.millis() as f64)
        .with("weekday", WEEKDAYS[days.rem_euclid(7) as usize])
        .with("hour", (millis_of_day / 3_600_000) as u64)
        .with("minute", (millis_of_day / 60_000 % 60) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_weekday_and_hour_are_those_of_utc() {
        // 1970-01-01 was a Thursday; 2026-11-22 is a Sunday.
        let epoch = time(Timestamp(0));
        let sunday = time(Timestamp(1_795_357_500_000));
        let doc: Field = Doc::default().with("a", epoch).with("b", sunday).into();
        let rule = gavel_rules::RuleProgram::compile(
            "t.rego",
            r#"package t
deny contains "ok" if {
    input.a.weekday == "thursday"
    input.a.hour == 0
    input.b.weekday == "sunday"
    input.b.hour == 14
    input.b.minute == 25
}"#,
        )
        .unwrap();
        assert_eq!(rule.evaluate(&doc).unwrap(), ["ok"]);
    }
}
