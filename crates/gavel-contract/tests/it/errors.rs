//! Every kind of bad contract gets one located sentence saying what is wrong.

use crate::Files;

fn first_error(files: &Files) -> String {
    match files.load() {
        Ok(_) => panic!("the contract was accepted"),
        Err(errors) => errors.first().unwrap().to_string(),
    }
}

#[test]
fn unknown_key_is_located() {
    let mut f = Files::example();
    f.edit(
        "    population: \"Acme employees\"",
        "    population: \"Acme employees\"\n    populaton: typo",
    );
    let e = first_error(&f);
    assert!(e.starts_with("gavel.yaml:"), "{e}");
    assert!(e.contains("unknown field `populaton`"), "{e}");
    let line: usize = e.split(':').nth(1).unwrap().parse().unwrap();
    assert_eq!(
        f.contract().lines().nth(line - 1).unwrap().trim(),
        "populaton: typo"
    );
}

#[test]
fn wrong_type_is_located() {
    let mut f = Files::example();
    f.edit(
        "abuse:       { strikes: 3,",
        "abuse:       { strikes: many,",
    );
    let e = first_error(&f);
    assert!(e.contains("invalid u32") || e.contains("strikes"), "{e}");
    assert!(e.starts_with("gavel.yaml:"), "{e}");
}

#[test]
fn dangling_use_case_reference_names_the_alternatives() {
    let mut f = Files::example();
    f.edit(
        "    use_case: credit-limit\n",
        "    use_case: credit-limits\n",
    );
    let e = first_error(&f);
    assert!(e.contains("unknown use case `credit-limits`"), "{e}");
    assert!(e.contains("credit-limit,"), "{e}");
}

#[test]
fn dangling_endpoint_and_fallback() {
    let mut f = Files::example();
    f.edit(
        "endpoint: demo\n    model: { name: gpt-4o-mini",
        "endpoint: azure-us\n    model: { name: gpt-4o-mini",
    );
    assert!(first_error(&f).contains("unknown endpoint `azure-us`"));
    let mut f = Files::example();
    f.edit(
        "fallback: { deployment: support-triage-local }",
        "fallback: { deployment: nowhere }",
    );
    assert!(first_error(&f).contains("unknown deployment `nowhere`"));
}

#[test]
fn endpoint_kinds_are_checked() {
    let mut f = Files::example();
    f.edit("kind: mock, location", "kind: grpc, location");
    assert!(first_error(&f).contains("unknown endpoint kind `grpc`; expected openai or mock"));
    let mut f = Files::example();
    f.edit(
        "demo:        { kind: mock,",
        "demo: { kind: mock, url: \"http://x.example/v1\",",
    );
    assert!(first_error(&f).contains("is a mock: gavel answers itself, so it takes no url"));
    let mut f = Files::example();
    f.edit(
        "local-llama: { url: \"http://10.0.0.5:8000/v1\",",
        "local-llama: { api_key_env: \"sk-live-123\",",
    );
    let e = first_error(&f);
    assert!(
        e.contains("has no url") || e.contains("is not an environment variable name"),
        "{e}"
    );
}

/// A fallback takes the same requests, so it serves the same use case: another would decide
/// them under its own data classes, population and owner (sovereignty then checks the wrong
/// classes).
#[test]
fn a_fallback_deployment_serves_the_same_use_case() {
    let mut f = Files::example();
    f.edit(
        "fallback: { human_queue: underwriting }",
        "fallback: { deployment: support-triage-local }",
    );
    let e = first_error(&f);
    assert!(
        e.contains("falls back to `support-triage-local`, which serves use case `support-triage`, not `credit-limit`"),
        "{e}"
    );
    assert!(e.contains("gavel.yaml:"), "{e}");
}

#[test]
fn fallback_cycles_are_refused() {
    let mut f = Files::example();
    f.edit(
        "fallback: { response: \"Thanks, a person from our team will pick this up shortly.\" }",
        "fallback: { deployment: support-triage-v3 }",
    );
    assert!(first_error(&f).contains("cycle"));
}

#[test]
fn impossible_values() {
    let cases = [
        (
            "abuse:       { strikes: 3, within: 10m",
            "abuse:       { strikes: 3, within: 10y",
            "unknown unit",
        ),
        ("threshold: 0.5", "threshold: 1.5", "within [0, 1]"),
        (
            "deprecates: 2027-06-30 }\n    prompt_template: prompts/triage.txt",
            "deprecates: 2027-02-30 }\n    prompt_template: prompts/triage.txt",
            "not a date",
        ),
        (
            "{ scope: use_case,  window: 1m, tokens: 200000 }",
            "{ scope: use_case, tokens: 200000 }",
            "needs a `window`",
        ),
        (
            "{ scope: principal, window: 1m, requests: 120 }",
            "{ scope: principal, window: 1m }",
            "sets no limit",
        ),
        (
            "memory_mb: { capacity: 16384 }",
            "memory_mb: { capacity: 0 }",
            "capacity 0",
        ),
        (
            "{ scope: principal, window: 1m, requests: 120 }",
            "{ scope: principal, window: 1m, requests: 120 }\n    - { scope: principal, window: 1m, tokens: 5 }",
            "same scope, window and filters",
        ),
        (
            "params: { temperature: 0.2, max_tokens: 512 }",
            "params: { temperature: 0.2, max_tokens: 18446744073709551615 }",
            "from 1 to 10000000",
        ),
        (
            "unacceptable: { allowed: false }",
            "unacceptable: { allowed: true, approvers: 1 }",
            "cannot be `allowed: true`",
        ),
        ("tier: high }", "tier: severe }", "unknown tier `severe`"),
        (
            "location: self_hosted",
            "location: on_prem",
            "unknown location `on_prem`",
        ),
        ("owner: alice@acme.example", "owner: alice", "not an email"),
        (
            "params: { temperature: 0.2, max_tokens: 512 }",
            "params: { temperature: 0.2, max_tokens: 0 }",
            "max_tokens must be",
        ),
        (
            "require_thresholds: [accuracy, drift, fairness]",
            "require_thresholds: [accuracy, vibes]",
            "unknown threshold `vibes`",
        ),
        ("\"region:eu\"]", "\"continent:eu\"]", "unknown destination"),
        ("window: 5m, bucket: 10s", "window: 5s, bucket: 10s", "at least one bucket"),
        ("window: 5m, bucket: 10s", "window: 5m, bucket: 100ms", "at least 1s"),
        ("drift_bins: 10", "drift_bins: 1", "expected 2 to 100"),
        ("min_samples: 20", "min_samples: 0", "min_samples must be at least 1"),
        ("probe_percent: 10", "probe_percent: 101", "expected 1 to 100"),
        ("probe_percent: 10", "probe_share: 10", "unknown field"),
    ];
    for (from, to, expected) in cases {
        let mut f = Files::example();
        f.edit(from, to);
        let e = first_error(&f);
        assert!(
            e.contains(expected),
            "editing `{to}` gave `{e}`, expected `{expected}`"
        );
        assert!(e.starts_with("gavel.yaml:"), "{e}");
    }
}

#[test]
fn missing_referenced_file_is_named() {
    let mut f = Files::example();
    f.0.remove("prompts/credit.txt");
    let e = first_error(&f);
    assert!(e.contains("cannot read prompt template"), "{e}");
    assert!(e.contains("prompts/credit.txt"), "{e}");
}

#[test]
fn bad_tool_schema_and_template() {
    let mut f = Files::example();
    f.set("schemas/lookup_order.json", "{ not json");
    assert!(first_error(&f).contains("not valid JSON"));
    let mut f = Files::example();
    f.set("prompts/triage.txt", "Queues: {{queues}}");
    assert!(first_error(&f).contains("do not declare `queues`"));
}

#[test]
fn usd_budgets_need_prices() {
    let mut f = Files::example();
    f.edit(
        "  llama-3.1-8b-instruct-q8-2024-07:  { input: 0.05, output: 0.05 }\n",
        "",
    );
    let e = first_error(&f);
    assert!(e.contains("has no price"), "{e}");
}

#[test]
fn malformed_yaml_invalid_utf8_and_nul() {
    let mut f = Files::example();
    f.set("gavel.yaml", "version: 1\norganization: [acme\n");
    assert!(first_error(&f).starts_with("gavel.yaml:"));
    let mut f = Files::example();
    f.0.insert(
        "gavel.yaml".into(),
        b"version: 1\norganization: \xff\n".to_vec(),
    );
    assert!(first_error(&f).contains("invalid UTF-8"));
    let mut f = Files::example();
    f.set("gavel.yaml", "version: 1\norganization: a\0b\n");
    assert!(first_error(&f).contains("NUL"));
    let mut f = Files::example();
    f.set("gavel.yaml", "");
    assert!(first_error(&f).starts_with("gavel.yaml"));
}

#[test]
fn every_error_is_reported_not_only_the_first() {
    let mut f = Files::example();
    f.edit("endpoint: openai\n", "endpoint: nope1\n");
    f.edit("use_case: order-agent\n", "use_case: nope2\n");
    let errors = f.load().unwrap_err();
    assert!(errors.0.len() >= 2, "{errors}");
}

#[test]
fn unclassified_domain_warns() {
    let mut f = Files::example();
    f.edit(
        "domain: internal_knowledge\n",
        "domain: internal_knowlege\n",
    );
    let loaded = f.load().unwrap();
    assert!(loaded
        .warnings
        .iter()
        .any(|w| w.contains("internal_knowlege")));
}

#[test]
fn image_tokens_are_a_positive_bounded_count_and_kept_from_the_built_in_table() {
    for field in ["image_tokens", "low_detail_image_tokens"] {
        let out_of_range = format!("{field} must be a whole number of tokens from 1 to 1000000");
        for (bad, said) in [
            ("0", out_of_range.as_str()),
            ("2000000", out_of_range.as_str()),
            ("-5", "u64"),
            ("lots", "u64"),
        ] {
            let mut f = Files::example();
            f.edit(
                "llama-3.1-8b-instruct-q8-2024-07:  { input: 0.05, output: 0.05 }",
                &format!("llama-3.1-8b-instruct-q8-2024-07:  {{ input: 0.05, output: 0.05, {field}: {bad} }}"),
            );
            let e = first_error(&f);
            assert!(e.starts_with("gavel.yaml:145:"), "{field} {bad}: {e}");
            assert!(e.contains(said), "{field} {bad}: {e}");
        }
    }
    // A contract that reprices a built-in snapshot keeps the table's image counts; one that says
    // its own gets them; a snapshot nobody describes gets the default, at any detail.
    let mut f = Files::example();
    f.edit(
        "  llama-3.1-8b-instruct-q8-2024-07:  { input: 0.05, output: 0.05 }",
        "  llama-3.1-8b-instruct-q8-2024-07:  { input: 0.05, output: 0.05, image_tokens: 576, low_detail_image_tokens: 64 }\n  gpt-4o-2024-08-06: { input: 2.0, output: 8.0 }\n  gpt-4.1-2025-04-14: { input: 2.0, output: 8.0, image_tokens: 50 }",
    );
    let contract = f.load().unwrap().contract;
    let counts = |snapshot: &str| {
        (
            contract.image_tokens_of(snapshot, false),
            contract.image_tokens_of(snapshot, true),
        )
    };
    assert_eq!(counts("gpt-4o-2024-08-06"), (1_445, 85));
    assert_eq!(counts("llama-3.1-8b-instruct-q8-2024-07"), (576, 64));
    // A low-detail image never counts for more than any image.
    assert_eq!(counts("gpt-4.1-2025-04-14"), (50, 50));
    // No low-detail mode: as any image.
    assert_eq!(counts("claude-3-5-haiku-20241022"), (1_600, 1_600));
    let default = gavel_contract::DEFAULT_IMAGE_TOKENS;
    assert_eq!(
        counts("llama-3.1-70b-instruct-q4-2024-07"),
        (default, default)
    );
}

#[test]
fn an_oncall_webhook_is_a_url_or_an_environment_variable() {
    let mut f = Files::example();
    f.edit(
        "oncall: { webhook: \"https://hooks.acme.example/pager/platform\" }",
        "oncall: { webhook: \"${env:KB_PAGER_URL}\" }",
    );
    let contract = f.load().unwrap().contract;
    let kb = contract
        .use_cases
        .values()
        .find(|u| u.oncall.webhook_env().is_some())
        .expect("the use case keeps its webhook in the environment");
    assert_eq!(kb.oncall.webhook_env(), Some("KB_PAGER_URL"));
    for bad in [
        "${env:KB-PAGER}",
        "$KB_PAGER_URL",
        "hooks.acme.example/pager",
    ] {
        let mut f = Files::example();
        f.edit(
            "oncall: { webhook: \"https://hooks.acme.example/pager/platform\" }",
            &format!("oncall: {{ webhook: \"{bad}\" }}"),
        );
        let e = first_error(&f);
        assert!(e.starts_with("gavel.yaml:"), "{e}");
        assert!(
            e.contains(&format!(
                "on-call webhook `{bad}` is neither an http(s) URL nor `${{env:NAME}}`"
            )),
            "{e}"
        );
    }
}

#[test]
fn custom_rules_are_compiled_when_the_contract_loads_and_errors_point_into_the_rule_file() {
    const LINE: &str = "    - { id: refund-needs-ticket, file: rules/refund_ticket.rego }";
    // A Rego error is located in the rule file, where the fix is.
    let mut f = Files::example();
    f.set(
        "rules/refund_ticket.rego",
        "package acme.refunds\n\ndeny contains m if {\n  m := http.send({})\n}\n",
    );
    let e = first_error(&f);
    assert!(
        e.starts_with("rules/refund_ticket.rego:4:17: rule `refund-needs-ticket`: Unknown function: 'http.send'"),
        "{e}"
    );
    // A file without `deny`, a missing file, a bad id, a duplicate id, an unknown action.
    f.set(
        "rules/refund_ticket.rego",
        "package acme.refunds\nallow if true\n",
    );
    assert!(first_error(&f).contains("package `acme.refunds` defines no `deny` rule"));
    let mut f = Files::example();
    f.edit(
        LINE,
        "    - { id: refund-needs-ticket, file: rules/nope.rego }",
    );
    let e = first_error(&f);
    assert!(
        e.starts_with("gavel.yaml:") && e.contains("cannot read rule file"),
        "{e}"
    );
    for (edit, said) in [
        (
            "    - { id: Refund, file: rules/refund_ticket.rego }",
            "rule id `Refund` must be lowercase",
        ),
        (
            "    - { id: r, file: rules/refund_ticket.rego }\n    - { id: r, file: rules/refund_ticket.rego }",
            "rule id `r` is used twice",
        ),
        (
            "    - { id: r, file: rules/refund_ticket.rego, action: warn }",
            "unknown rule action `warn`; expected block or flag",
        ),
        (
            "    - { id: r, file: rules/refund_ticket.rego, query: data.x }",
            "unknown field `query`",
        ),
    ] {
        let mut f = Files::example();
        f.edit(LINE, edit);
        let e = first_error(&f);
        assert!(e.starts_with("gavel.yaml:"), "{e}");
        assert!(e.contains(said), "{e}");
    }
}

#[test]
fn a_rule_file_is_part_of_the_contract_version_but_not_of_any_binding() {
    let before = Files::example().load().unwrap().contract;
    let mut f = Files::example();
    f.set(
        "rules/refund_ticket.rego",
        &format!(
            "{}\n# reviewed\n",
            gavel_contract::example::FILES
                .iter()
                .find(|(p, _)| *p == "rules/refund_ticket.rego")
                .unwrap()
                .1
        ),
    );
    let after = f.load().unwrap().contract;
    assert_ne!(before.version, after.version);
    for (id, d) in &before.deployments {
        assert_eq!(d.binding, after.deployments[id].binding, "{id}");
    }
}

/// Rules entered the contract after versions were in force: a contract without them must
/// keep the canonical form (and so the version) it had.
#[test]
fn a_contract_without_rules_has_none_in_its_canonical_form() {
    let mut f = Files::example();
    f.edit(
        "  rules:\n    - { id: refund-needs-ticket, file: rules/refund_ticket.rego }\n",
        "",
    );
    let without = f.load().unwrap().contract;
    assert!(without.policy.rules.is_empty());
    assert!(serde_json::to_value(&without.policy)
        .unwrap()
        .get("rules")
        .is_none());
    let with = Files::example().load().unwrap().contract;
    assert!(serde_json::to_value(&with.policy)
        .unwrap()
        .get("rules")
        .is_some());
}
