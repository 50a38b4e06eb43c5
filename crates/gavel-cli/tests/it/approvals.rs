//! Approvals through the CLI: the taxonomy's requirements, segregation of duties, revocation.

use crate::*;

const CREDIT_TERMS: [&str; 16] = [
    "--population",
    "EU card holders",
    "--expires",
    "90d",
    "--on-breach",
    "block",
    "--threshold",
    "accuracy=0.9",
    "--threshold",
    "drift=0.2",
    "--threshold",
    "fairness=0.8",
    "--evidence",
    "eval=evals/credit-v1.jsonl",
    "--evidence",
    "bias=evals/credit-v1.jsonl",
];

fn credit(extra: &[&str]) -> Vec<String> {
    let mut args = vec!["approve".to_string(), "credit-limit-v1".to_string()];
    args.extend(CREDIT_TERMS.iter().map(|s| s.to_string()));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// A threshold that can never be crossed (a share's floor at 0 or ceiling at 1, a negative
/// ceiling, or any out-of-range number) watches nothing: it cannot meet a tier's
/// `require_thresholds`, so the approval is refused with the range expected.
#[test]
fn an_approval_with_a_threshold_that_can_never_be_crossed_is_refused() {
    let r = Ready::start();
    let args = credit(&["--evidence", "human_oversight=prompts/credit.txt"]);
    let vacuous = |from: &str, to: &str| -> Vec<String> {
        args.iter()
            .map(|a| if a == from { to.to_string() } else { a.clone() })
            .collect()
    };
    for (from, to, said) in [
        (
            "accuracy=0.9",
            "accuracy=0",
            "threshold `accuracy` is 0; expected a floor above 0, at most 1",
        ),
        (
            "fairness=0.8",
            "fairness=1.2",
            "threshold `fairness` is 1.2",
        ),
        (
            "drift=0.2",
            "drift=-1",
            "threshold `drift` is -1; expected at least 0",
        ),
    ] {
        r.g.run(Some(&r.risk), &strs(&vacuous(from, to)))
            .fails(1, said);
    }
    let pending = r.g.run(Some(&r.risk), &strs(&args)).ok();
    assert!(pending.stdout.contains("pending"), "{}", pending.stdout);
}

#[test]
fn high_risk_needs_two_approvers_with_distinct_roles() {
    let r = Ready::start();
    let g = &r.g;
    let args = credit(&["--evidence", "human_oversight=prompts/credit.txt"]);
    let first = g.run(Some(&r.risk), &strs(&args)).ok();
    assert!(first.stdout.contains("pending"), "{}", first.stdout);
    assert!(
        first.stdout.contains("role `engineering`"),
        "{}",
        first.stdout
    );
    let request = serde_json::json!({"deployment": "credit-limit-v1"});
    assert_eq!(
        g.decide(&r.service, &request)["reasons"][0]["code"],
        "approval.pending"
    );
    g.run(Some(&r.risk), &["approve", "credit-limit-v1"])
        .fails(1, "already signed");
    // A second risk approver is a second approver but not the missing role.
    let risk2 = g.key("rolf", "approver", Some("risk"));
    let second = g.run(Some(&risk2), &["approve", "credit-limit-v1"]).ok();
    assert!(
        second.stdout.contains("pending") && second.stdout.contains("engineering"),
        "{}",
        second.stdout
    );
    let done = g
        .run(Some(&r.engineering), &["approve", "credit-limit-v1"])
        .ok();
    assert!(done.stdout.contains("is active"), "{}", done.stdout);
    let list = g
        .run(
            Some(&r.auditor),
            &["approvals", "--deployment", "credit-limit-v1"],
        )
        .ok();
    assert!(
        list.stdout
            .contains("rita (risk), rolf (risk), emil (engineering)"),
        "{}",
        list.stdout
    );
}

#[test]
fn refusals_name_the_missing_requirement() {
    let r = Ready::start();
    let g = &r.g;
    g.run(Some(&r.risk), &strs(&credit(&[])))
        .fails(1, "missing: human_oversight");
    let mut no_fairness = credit(&["--evidence", "human_oversight=prompts/credit.txt"]);
    let i = no_fairness
        .iter()
        .position(|a| a == "fairness=0.8")
        .unwrap();
    no_fairness.drain(i - 1..=i);
    g.run(Some(&r.risk), &strs(&no_fairness))
        .fails(1, "missing: fairness");
    let mut too_long = credit(&["--evidence", "human_oversight=prompts/credit.txt"]);
    let i = too_long.iter().position(|a| a == "90d").unwrap();
    too_long[i] = "200d".into();
    g.run(Some(&r.risk), &strs(&too_long))
        .fails(1, "at most 180 days");
    g.run(
        Some(&r.risk),
        &[
            "approve",
            "tenant-score-v0",
            "--population",
            "x",
            "--expires",
            "1d",
            "--on-breach",
            "block",
        ],
    )
    .fails(1, "can never be approved");
    g.run(Some(&r.risk), &["approve", "order-agent-v2"])
        .fails(1, "no approval of `order-agent-v2` is pending");
    g.run(
        Some(&r.risk),
        &[
            "approve",
            "order-agent-v2",
            "--population",
            "p",
            "--expires",
            "30d",
            "--on-breach",
            "sometimes",
        ],
    )
    .fails(1, "on_breach `sometimes`");
    g.run(
        Some(&r.risk),
        &[
            "approve",
            "order-agent-v2",
            "--population",
            "p",
            "--expires",
            "30d",
            "--on-breach",
            "block",
        ],
    )
    .fails(1, "missing: eval");
    g.run(
        Some(&r.risk),
        &[
            "approve",
            "ghost",
            "--population",
            "p",
            "--expires",
            "30d",
            "--on-breach",
            "block",
        ],
    )
    .fails(1, "not in the contract");
    g.run(
        Some(&r.risk),
        &[
            "approve",
            "order-agent-v2",
            "--population",
            "p",
            "--expires",
            "30d",
            "--on-breach",
            "block",
            "--evidence",
            "eval=nope.jsonl",
        ],
    )
    .fails(1, "evidence file `nope.jsonl`: cannot be read");
}

#[test]
fn whoever_applied_a_binding_cannot_approve_it() {
    let r = Ready::start();
    let g = &r.g;
    // One person, two keys: applying as operator, then approving as approver.
    let bob_ops = g.key("bob", "operator", None);
    let bob_approver = g.key("bob", "approver", None);
    std::fs::write(g.path("prompts/kb.txt"), "Answer in one sentence.\n").unwrap();
    g.run(Some(&bob_ops), &["apply"]).ok();
    g.run(
        Some(&bob_approver),
        &[
            "approve",
            "kb-search-v1",
            "--population",
            "p",
            "--expires",
            "30d",
            "--on-breach",
            "block",
        ],
    )
    .fails(1, "segregation of duties");
    g.run(
        Some(&r.risk),
        &[
            "approve",
            "kb-search-v1",
            "--population",
            "p",
            "--expires",
            "30d",
            "--on-breach",
            "block",
        ],
    )
    .ok();
}

#[test]
fn an_unapplied_binding_cannot_be_approved() {
    let r = Ready::start();
    std::fs::write(r.g.path("prompts/kb.txt"), "Different.\n").unwrap();
    r.g.run(
        Some(&r.risk),
        &[
            "approve",
            "kb-search-v1",
            "--population",
            "p",
            "--expires",
            "30d",
            "--on-breach",
            "block",
        ],
    )
    .fails(1, "the version in force is");
}

#[test]
fn revocation_stops_serving_at_once() {
    let r = Ready::start();
    let g = &r.g;
    let d = g.decide(&r.service, &kb_request());
    let approval = d["approval_id"].as_str().unwrap().to_string();
    g.run(
        Some(&r.engineering),
        &["revoke", &approval, "--reason", "wrong population"],
    )
    .ok();
    assert_eq!(
        g.decide(&r.service, &kb_request())["reasons"][0]["code"],
        "approval.revoked"
    );
    g.run(
        Some(&r.engineering),
        &["revoke", &approval, "--reason", "again"],
    )
    .fails(1, "already revoked");
    g.run(
        Some(&r.engineering),
        &["revoke", "apr_nope", "--reason", "x"],
    )
    .fails(1, "no approval");
    let list = g.run(Some(&r.auditor), &["approvals", "--json"]).ok();
    assert!(
        list.stdout.contains("\"state\": \"revoked\""),
        "{}",
        list.stdout
    );
}

#[test]
fn an_approver_cannot_bring_their_own_rules() {
    let r = Ready::start();
    let g = &r.g;
    // A private copy of the contract that lowers the bar for high-risk approvals.
    let evil = g.path("evil");
    std::fs::create_dir_all(&evil).unwrap();
    for (path, contents) in gavel_contract::example::FILES {
        let target = evil.join(path);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(target, contents).unwrap();
    }
    let text = std::fs::read_to_string(evil.join("gavel.yaml")).unwrap();
    let lowered = text.replace(
        "high:    { approvers: 2, distinct_roles: [risk, engineering], evidence: [eval, bias, human_oversight], max_validity_days: 180, require_thresholds: [accuracy, drift, fairness] }",
        "high:    { approvers: 1, max_validity_days: 3650 }",
    );
    assert_ne!(lowered, text);
    std::fs::write(evil.join("gavel.yaml"), lowered).unwrap();
    let db = g.path("gavel.db");
    let run = g.run(
        Some(&r.risk),
        &[
            "--contract",
            evil.to_str().unwrap(),
            "--db",
            db.to_str().unwrap(),
            "approve",
            "credit-limit-v1",
            "--population",
            "p",
            "--expires",
            "3000d",
            "--on-breach",
            "block",
        ],
    );
    run.fails(1, "the version in force is");
    // Nor can a service pick an older or private contract to be judged under.
    let mut req = kb_request();
    req["deployment"] = serde_json::json!("kb-search-v1");
    let out = crate::output(
        gavel_command(g.dir.path(), Some(&r.service))
            .args([
                "--contract",
                evil.to_str().unwrap(),
                "--db",
                db.to_str().unwrap(),
                "decide",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(req.to_string().as_bytes())?;
                child.wait_with_output()
            })
            .unwrap(),
    );
    assert!(
        out.stdout.contains("governance.unavailable") && out.stdout.contains("version in force"),
        "{}",
        out.stdout
    );
}

/// Evidence is hashed by whoever signs off, the gateway included (for approvers over HTTP):
/// only regular files inside the contract's folder, so that no approver can have it read
/// another file or one without end.
#[test]
fn evidence_files_are_regular_files_inside_the_contract_folder() {
    let r = Ready::start();
    let g = &r.g;
    std::os::unix::fs::symlink("/dev/zero", g.path("evals/zero.jsonl")).unwrap();
    let fifo = std::process::Command::new("mkfifo")
        .arg(g.path("evals/fifo.jsonl"))
        .status()
        .unwrap();
    assert!(fifo.success());
    for (evidence, why) in [
        ("human_oversight=/dev/zero", "outside the contract's folder"),
        (
            "human_oversight=/etc/passwd",
            "outside the contract's folder",
        ),
        ("human_oversight=../no-such-file", "cannot be read"),
        (
            "human_oversight=evals/zero.jsonl",
            "outside the contract's folder",
        ),
        ("human_oversight=evals/fifo.jsonl", "not a regular file"),
        ("human_oversight=evals", "not a regular file"),
    ] {
        let args = credit(&["--evidence", evidence]);
        g.run(Some(&r.risk), &strs(&args)).fails(1, why);
    }
    let args = credit(&["--evidence", "human_oversight=prompts/credit.txt"]);
    g.run(Some(&r.risk), &strs(&args)).ok();
}

/// Budgets are not part of the binding: removing the dollar budget lifts the deployment's
/// spend ceiling past the example's spend tier, whose `budget_owner` role the approval lacks.
/// `gavel check` (the CI gate) says the approval is stale before the change is applied, and
/// after `apply` decisions are refused until an approval signed by that role.
#[test]
fn a_budget_change_that_needs_another_signer_makes_the_approval_stale() {
    let r = Ready::start();
    let g = &r.g;
    assert_eq!(g.decide(&r.service, &kb_request())["verdict"], "ALLOW");
    let yaml = std::fs::read_to_string(g.path("gavel.yaml")).unwrap();
    let unbounded = yaml.replacen("    - { scope: use_case,  window: 1d, usd: 300 }\n", "", 1);
    assert_ne!(unbounded, yaml);
    std::fs::write(g.path("gavel.yaml"), unbounded).unwrap();
    let check = g.run(None, &["check"]).ok();
    assert!(
        check.stdout.contains("approval: stale apr_")
            && check.stdout.contains("approved under other requirements"),
        "{}",
        check.stdout
    );
    g.run(Some(&r.operator), &["apply"]).ok();
    let d = g.decide(&r.service, &kb_request());
    assert_eq!(d["verdict"], "BLOCK", "{d}");
    assert_eq!(
        d["reasons"][0]["code"], "approval.requirements_changed",
        "{d}"
    );
    // `explain` and the model card say why the approval they name no longer serves.
    let explained = g.run(Some(&r.auditor), &["explain", "kb-search-v1"]).ok();
    assert!(
        explained.stdout.contains("every request is refused")
            && explained.stdout.contains("`budget_owner`"),
        "{}",
        explained.stdout
    );
    let status = g.run(Some(&r.auditor), &["status", "--json"]).ok();
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let kb = status["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["deployment"] == "kb-search-v1")
        .unwrap();
    assert_eq!(kb["state"], "unapproved", "{kb}");
    let card = g.run(Some(&r.auditor), &["card", "kb-search-v1"]).ok();
    assert!(
        card.stdout.contains("Every request to it is refused")
            && card.stdout.contains("`budget_owner`"),
        "{}",
        card.stdout
    );
}

/// Segregation of duties holds for signatures already given: a signer who applies the binding
/// afterwards (another version, then the same one again) is whoever last changed it, and their
/// signature no longer counts towards completing the approval; other signers can still.
#[test]
fn a_signer_who_applies_the_binding_afterwards_cannot_have_their_signature_counted() {
    let r = Ready::start();
    let g = &r.g;
    let args = credit(&["--evidence", "human_oversight=prompts/credit.txt"]);
    g.run(Some(&r.risk), &strs(&args)).ok();
    // rita, who signed, applies another version and then the one she signed again.
    let rita_ops = g.key("rita", "operator", None);
    let prompt = std::fs::read_to_string(g.path("prompts/credit.txt")).unwrap();
    std::fs::write(g.path("prompts/credit.txt"), "Answer briefly.\n").unwrap();
    g.run(Some(&rita_ops), &["apply"]).ok();
    std::fs::write(g.path("prompts/credit.txt"), prompt).unwrap();
    g.run(Some(&rita_ops), &["apply"]).ok();
    let signed = g
        .run(Some(&r.engineering), &["approve", "credit-limit-v1"])
        .ok();
    assert!(
        signed.stdout.contains("pending") && signed.stdout.contains("role `risk`"),
        "{}",
        signed.stdout
    );
    let risk2 = g.key("rolf", "approver", Some("risk"));
    let done = g.run(Some(&risk2), &["approve", "credit-limit-v1"]).ok();
    assert!(done.stdout.contains("is active"), "{}", done.stdout);
}
