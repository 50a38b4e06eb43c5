//! Stage 7: the contract's custom rules (Rego), against the example contract.

use std::collections::BTreeMap;
use std::path::Path;

use super::*;

/// The example's files, with these in addition or in place of the example's own.
struct WithFiles(BTreeMap<&'static str, String>);

impl gavel_contract::SourceFiles for WithFiles {
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        match self.0.iter().find(|(p, _)| path.ends_with(p)) {
            Some((_, text)) => Ok(text.as_bytes().to_vec()),
            None => gavel_contract::example::InMemory.read(path),
        }
    }
}

const EXAMPLE_RULE: &str = "    - { id: refund-needs-ticket, file: rules/refund_ticket.rego }";

/// The example with `rules` (YAML lines under `policy.rules`) in place of its own rule, and
/// `files` beside it.
fn world_with_rules(rules: &str, files: &[(&'static str, &str)], edits: &[(&str, &str)]) -> World {
    let mut text = gavel_contract::example::FILES[0]
        .1
        .replacen(EXAMPLE_RULE, rules, 1);
    for (from, to) in edits {
        assert!(text.contains(from), "the example has no `{from}`");
        text = text.replacen(from, to, 1);
    }
    let files = WithFiles(files.iter().map(|(p, t)| (*p, t.to_string())).collect());
    let loaded = gavel_contract::load_bytes(Path::new("gavel.yaml"), text.as_bytes(), &files);
    World::with_contract(loaded.unwrap_or_else(|e| panic!("{e}")).contract)
}

fn refund(metadata: Value) -> Value {
    json!({
        "deployment": "order-agent-v2", "step": "refund", "run_id": "r1", "metadata": metadata,
        "action": {"type": "tool_call", "name": "issue_refund", "args": {"order_id": "A00012345", "amount_eur": 40, "reason": "damaged"}}
    })
}

fn evidence<'d>(d: &'d Decision, key: &str) -> &'d Value {
    &d.reasons[0].evidence[key]
}

#[test]
fn the_example_rule_refuses_a_refund_that_names_no_ticket() {
    let w = World::example();
    w.approve("order-agent-v2");
    let d = w.decide(refund(json!({})));
    assert_verdict(&d, Verdict::Block, "rule.deny");
    assert_eq!(evidence(&d, "rule"), "refund-needs-ticket");
    assert_eq!(
        evidence(&d, "messages"),
        &json!(["issue_refund needs metadata.ticket_id: the support ticket the refund settles"])
    );
    let d = w.decide(refund(json!({"ticket_id": "see my mail"})));
    assert_verdict(&d, Verdict::Block, "rule.deny");
    assert!(
        d.reasons[0].message.contains("is not a ticket number"),
        "{}",
        d.reasons[0].message
    );
    assert_eq!(
        w.decide(refund(json!({"ticket_id": "T-10452"}))).verdict,
        Verdict::Allow
    );
    // The rule is about refunds alone.
    let lookup = json!({"deployment": "order-agent-v2", "step": "lookup", "run_id": "r1",
        "action": {"type": "tool_call", "name": "lookup_order", "args": {"order_id": "A00012345"}}});
    assert_eq!(w.decide(lookup).verdict, Verdict::Allow);
}

/// A denial reserves nothing: the rules run before the budget stage, so a refused request
/// never holds budget; and a dry run shows the denial in `would_be`.
#[test]
fn a_denied_request_holds_no_budget_and_a_dry_run_shows_the_denial() {
    let w = World::example();
    w.approve("order-agent-v2");
    assert_verdict(&w.decide(refund(json!({}))), Verdict::Block, "rule.deny");
    assert!(w.state.all_windows().unwrap().is_empty());
    let mut dry = refund(json!({}));
    dry["dry_run"] = json!(true);
    let d = w.decide(dry);
    assert_eq!(d.verdict, Verdict::NoOp);
    let would_be = d.would_be.unwrap();
    assert_eq!(would_be.verdict, Verdict::Block);
    assert_eq!(would_be.reasons[0].code.as_str(), "rule.deny");
    // The request as allowed reserves.
    assert_eq!(
        w.decide(refund(json!({"ticket_id": "T-1"}))).verdict,
        Verdict::Allow
    );
    assert!(!w.state.all_windows().unwrap().is_empty());
}

/// Every documented field reaches the rule with its value; the rule denies only when all of
/// them are as the request and the contract say.
#[test]
fn a_rule_sees_the_governance_facts_of_the_request() {
    let facts = r#"package t
deny contains "all facts seen" if {
    input.principal == "svc-kb"
    input.action == {"type": "inference", "name": null}
    input.deployment.id == "kb-search-v1"
    input.deployment.use_case == "knowledge-search"
    input.deployment.model == {"name": "gpt-4o-mini", "snapshot": "gpt-4o-mini-2024-07-18"}
    input.deployment.endpoint == {"id": "demo", "location": "self_hosted", "region": "eu"}
    count(input.deployment.binding) == 64
    input.target.id == "kb-search-v1"
    input.use_case == {"id": "knowledge-search", "domain": "internal_knowledge", "tier": "minimal", "data_classes": ["internal"]}
    input.data_classes == ["internal", "pii"]
    some f in input.findings
    f.rule_id == "pii.email"
    f.kind == "pii"
    f.role == "user"
    f.confidence > 0.5
    input.content_roles == ["system", "user"]
    input.params == {"temperature": 0.1}
    input.tools == []
    input.step == null
    input.run_id == "run-7"
    input.metadata == {"team": "hr"}
    input.model == null
    input.time.weekday == "sunday"
    input.time.hour == 12
    input.time.minute == 0
    input.time.unix_ms == 1795348800000
}"#;
    let w = world_with_rules(
        "    - { id: facts, file: rules/facts.rego }",
        &[("rules/facts.rego", facts)],
        &[],
    );
    w.approve("kb-search-v1");
    let mut r = kb_request();
    r["messages"][1]["content"] = json!("Mail jane.doe@example.com the room guide");
    r["params"] = json!({"temperature": 0.1});
    r["run_id"] = json!("run-7");
    r["metadata"] = json!({"team": "hr"});
    let d = w.decide_at(r.clone(), "svc-kb", NOW);
    assert_verdict(&d, Verdict::Block, "rule.deny");
    // One fact otherwise, and the rule does not deny.
    r["metadata"] = json!({"team": "it"});
    assert_eq!(w.decide_at(r, "svc-kb", NOW).verdict, Verdict::Allow);
}

/// The request's texts never reach a rule (its messages are recorded in the ledger): a rule
/// that looks for a word anywhere in its input finds it in metadata, not in the prompt.
#[test]
fn no_text_of_the_request_reaches_a_rule() {
    let looks = r#"package t
deny contains "the canary is in the input" if contains(json.marshal(input), "zebracanary")
"#;
    let w = world_with_rules(
        "    - { id: looks, file: rules/looks.rego }",
        &[("rules/looks.rego", looks)],
        &[],
    );
    w.approve("kb-search-v1");
    let mut r = kb_request();
    r["messages"][1]["content"] = json!("zebracanary: how do I book a room?");
    r["params"] = json!({"user": "zebracanary"});
    assert_eq!(w.decide(r.clone()).verdict, Verdict::Allow);
    r["metadata"] = json!({"note": "zebracanary"});
    assert_verdict(&w.decide(r), Verdict::Block, "rule.deny");
}

#[test]
fn a_flag_rule_is_recorded_and_does_not_block() {
    let w = world_with_rules(
        "    - { id: refund-needs-ticket, file: rules/refund_ticket.rego, action: flag }",
        &[],
        &[],
    );
    w.approve("order-agent-v2");
    let d = w.decide(refund(json!({})));
    assert_eq!(d.verdict, Verdict::Allow, "{d:?}");
    let flagged = d
        .reasons
        .iter()
        .find(|r| r.code.as_str() == "rule.flagged")
        .unwrap();
    assert_eq!(flagged.evidence["rule"], "refund-needs-ticket");
    assert!(flagged
        .message
        .contains("flags this request: issue_refund needs metadata.ticket_id"));
}

/// Rules run in order and the first denial stops the request; a rule that cannot be
/// evaluated blocks as `governance.unavailable`, naming the rule.
#[test]
fn a_rule_that_fails_blocks_and_the_first_denial_stops_the_rest() {
    let spins = "package t\ndeny contains sprintf(\"%d\", [i]) if { some i in numbers.range(1, 10000000); i < 0 }\n";
    let never = "package n\ndeny contains \"never reached\" if true\n";
    let w = world_with_rules(
        "    - { id: refund-needs-ticket, file: rules/refund_ticket.rego }\n    - { id: spins, file: rules/spins.rego }\n    - { id: never, file: rules/never.rego }",
        &[("rules/spins.rego", spins), ("rules/never.rego", never)],
        &[],
    );
    w.approve("order-agent-v2");
    let d = w.decide(refund(json!({})));
    assert_verdict(&d, Verdict::Block, "rule.deny");
    assert_eq!(evidence(&d, "rule"), "refund-needs-ticket");
    let d = w.decide(refund(json!({"ticket_id": "T-1"})));
    assert_verdict(&d, Verdict::Block, "governance.unavailable");
    assert_eq!(evidence(&d, "rule"), "spins");
    assert!(
        d.reasons[0].message.contains("time limit"),
        "{}",
        d.reasons[0].message
    );
}

/// A routed request is judged where it will run: `target` is the fallback.
#[test]
fn a_rule_sees_where_a_routed_request_will_run() {
    let local_only = r#"package t
deny contains sprintf("%s may not run on %s", [input.deployment.id, input.target.id]) if {
    input.target.endpoint.location == "self_hosted"
    input.deployment.id != input.target.id
}"#;
    let w = world_with_rules(
        "    - { id: no-routes, file: rules/no_routes.rego }",
        &[("rules/no_routes.rego", local_only)],
        &[(
            "    data_classes: [internal]\n  credit-limit:",
            "    data_classes: [internal, pii]\n  credit-limit:",
        )],
    );
    w.approve("support-triage-v3");
    w.approve("support-triage-local");
    let d = w.decide(triage_request("support-triage-v3"));
    assert_verdict(&d, Verdict::Block, "rule.deny");
    assert_eq!(
        evidence(&d, "messages"),
        &json!(["support-triage-v3 may not run on support-triage-local"])
    );
    assert_eq!(
        w.decide(triage_request("support-triage-local")).verdict,
        Verdict::Allow
    );
}

/// A class both declared and detected is listed once.
#[test]
fn data_classes_are_listed_once() {
    let w = world_with_rules(
        "    - { id: classes, file: rules/classes.rego }",
        &[(
            "rules/classes.rego",
            "package c\ndeny contains concat(\",\", input.data_classes) if true\n",
        )],
        &[(
            "    data_classes: [internal]\n  tenant-trust-score:",
            "    data_classes: [pii, internal]\n  tenant-trust-score:",
        )],
    );
    w.approve("kb-search-v1");
    let mut r = kb_request();
    r["messages"][1]["content"] = json!("Mail jane.doe@example.com the room guide");
    let d = w.decide(r);
    assert_verdict(&d, Verdict::Block, "rule.deny");
    assert_eq!(evidence(&d, "messages"), &json!(["internal,pii"]));
}

/// A rule that quotes the caller's metadata in its message does not put it in the decision
/// (which the ledger records): the value is replaced by `[metadata.KEY]`.
#[test]
fn metadata_a_rule_quotes_reaches_no_record() {
    let quotes = "package q\ndeny contains sprintf(\"ticket %s is unknown\", [input.metadata.ticket_id]) if input.metadata.ticket_id\n";
    let w = world_with_rules(
        "    - { id: quotes, file: rules/quotes.rego }",
        &[("rules/quotes.rego", quotes)],
        &[],
    );
    w.approve("kb-search-v1");
    let secret = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789";
    let mut r = kb_request();
    r["metadata"] = json!({"ticket_id": secret});
    let d = w.decide(r);
    assert_verdict(&d, Verdict::Block, "rule.deny");
    assert_eq!(
        evidence(&d, "messages"),
        &json!(["ticket [metadata.ticket_id] is unknown"])
    );
    assert!(!serde_json::to_string(&d)
        .unwrap()
        .contains("abcdefghijklmnop"));
}

/// A `flag` rule takes no part in the verdict: when it cannot be evaluated, the failure is
/// noted and the request goes on (a `block` rule's failure blocks: see above).
#[test]
fn a_flag_rule_that_fails_is_noted_not_enforced() {
    let fails = "package f\ndeny contains \"x\" if to_number(input.metadata.n) > 1\n";
    let w = world_with_rules(
        "    - { id: fails, file: rules/fails.rego, action: flag }",
        &[("rules/fails.rego", fails)],
        &[],
    );
    w.approve("kb-search-v1");
    let mut r = kb_request();
    r["metadata"] = json!({"n": "many"});
    let d = w.decide(r);
    assert_eq!(d.verdict, Verdict::Allow, "{d:?}");
    let note = d
        .reasons
        .iter()
        .find(|r| r.code.as_str() == "rule.flagged")
        .unwrap();
    assert_eq!(note.evidence["rule"], "fails");
    assert!(
        note.message.contains("could not be evaluated"),
        "{}",
        note.message
    );
    assert!(note.evidence["error"]
        .as_str()
        .is_some_and(|e| !e.is_empty()));
}
