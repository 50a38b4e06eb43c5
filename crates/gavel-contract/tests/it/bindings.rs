//! Property: a deployment's binding changes exactly when content bound into it changes.

use proptest::prelude::*;

use crate::Files;

/// Edits that touch one deployment's bound content (support-triage-v3's or the files it binds).
/// A named change to the example's files.
type Edit = (&'static str, Box<dyn Fn(&mut Files)>);

fn binding_edits() -> Vec<Edit> {
    vec![
        (
            "template text",
            Box::new(|f: &mut Files| {
                f.set("prompts/triage.txt", "Queues: {{queue_list}}. Be brief.\n");
            }),
        ),
        (
            "template whitespace",
            Box::new(|f: &mut Files| {
                let t = String::from_utf8(f.0["prompts/triage.txt"].clone()).unwrap();
                f.set("prompts/triage.txt", &format!("{t} "));
            }),
        ),
        (
            "eval set",
            Box::new(|f: &mut Files| {
                f.set("evals/triage-v3.jsonl", "{}\n");
            }),
        ),
        (
            "temperature",
            Box::new(|f: &mut Files| {
                f.edit("params: { temperature: 0.2,", "params: { temperature: 0.3,");
            }),
        ),
        (
            "max_tokens",
            Box::new(|f: &mut Files| {
                f.edit("max_tokens: 512 }\n    eval_set: evals/triage-v3.jsonl\n    fallback: { deployment", "max_tokens: 513 }\n    eval_set: evals/triage-v3.jsonl\n    fallback: { deployment");
            }),
        ),
        (
            "snapshot",
            Box::new(|f: &mut Files| {
                f.edit("model: { name: gpt-4o, snapshot: gpt-4o-2024-08-06, deprecates: 2027-06-30 }\n    prompt_template: prompts/triage.txt", "model: { name: gpt-4o, snapshot: gpt-4o-2024-11-20, deprecates: 2027-06-30 }\n    prompt_template: prompts/triage.txt");
            }),
        ),
        (
            "endpoint url",
            Box::new(|f: &mut Files| {
                f.edit("https://api.openai.com/v1", "https://api.openai.com/v2");
            }),
        ),
        (
            "fallback",
            Box::new(|f: &mut Files| {
                f.edit(
                    "fallback: { deployment: support-triage-local }",
                    "fallback: { human_queue: support }",
                );
            }),
        ),
        (
            "use case population",
            Box::new(|f: &mut Files| {
                f.edit(
                    "population: \"EU retail customers writing to support\"",
                    "population: \"All customers\"",
                );
            }),
        ),
    ]
}

/// Edits that must leave support-triage-v3's binding alone.
fn neutral_edits() -> Vec<Edit> {
    vec![
        (
            "comment",
            Box::new(|f: &mut Files| {
                f.edit("version: 1\n", "version: 1   # a comment\n");
            }),
        ),
        (
            "other deployment",
            Box::new(|f: &mut Files| {
                f.edit(
                    "params: { temperature: 0.1, max_tokens: 400 }",
                    "params: { temperature: 0.15, max_tokens: 400 }",
                );
            }),
        ),
        (
            "other tool schema",
            Box::new(|f: &mut Files| {
                f.set("schemas/issue_refund.json", "{\"type\": \"object\"}");
            }),
        ),
        (
            "budget",
            Box::new(|f: &mut Files| {
                f.edit("requests: 120", "requests: 121");
            }),
        ),
        (
            "key order",
            Box::new(|f: &mut Files| {
                f.edit("openai:      { url:", "openai:      { region: us, url:");
                f.edit("location: external, region: us }", "location: external }");
            }),
        ),
    ]
}

fn triage_binding(f: &Files) -> String {
    f.load().unwrap().contract.deployments["support-triage-v3"]
        .binding
        .0
        .clone()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn binding_changes_exactly_when_bound_content_changes(
        bound in proptest::collection::vec(any::<bool>(), 9),
        neutral in proptest::collection::vec(any::<bool>(), 5),
    ) {
        let base = triage_binding(&Files::example());
        let mut f = Files::example();
        let mut touched = false;
        for ((_, edit), on) in binding_edits().iter().zip(&bound) {
            if *on { edit(&mut f); touched = true; }
        }
        for ((_, edit), on) in neutral_edits().iter().zip(&neutral) {
            if *on { edit(&mut f); }
        }
        prop_assert_eq!(triage_binding(&f) != base, touched);
    }
}

#[test]
fn each_bound_edit_alone_changes_the_binding_and_the_version() {
    let base = Files::example().load().unwrap().contract;
    for (name, edit) in binding_edits() {
        let mut f = Files::example();
        edit(&mut f);
        let c = f.load().unwrap().contract;
        assert_ne!(
            c.deployments["support-triage-v3"].binding,
            base.deployments["support-triage-v3"].binding,
            "{name}"
        );
        assert_ne!(c.version, base.version, "{name}");
    }
}

#[test]
fn a_budget_edit_changes_the_version_but_no_binding() {
    let base = Files::example().load().unwrap().contract;
    let mut f = Files::example();
    f.edit("requests: 120", "requests: 121");
    let c = f.load().unwrap().contract;
    assert_ne!(c.version, base.version);
    for (id, d) in &c.deployments {
        assert_eq!(d.binding, base.deployments[id].binding, "{id}");
    }
}
