//! The README's tour, end to end.

use serde_json::json;

use crate::*;

#[test]
fn init_check_apply_approve_decide_outcome_explain() {
    let r = Ready::start();
    let g = &r.g;
    let check = g.run(None, &["check"]).ok();
    assert!(
        check.stdout.contains("credit-limit           high"),
        "{}",
        check.stdout
    );
    assert!(check.stdout.contains("applied"));
    assert!(
        check
            .stdout
            .contains("refund-needs-ticket    block  package acme.refunds"),
        "{}",
        check.stdout
    );
    assert!(check.stdout.contains("kb-search-v1") && check.stdout.contains("approval: active"));

    let d = g.decide(&r.service, &kb_request());
    assert_eq!(d["verdict"], "ALLOW", "{d}");
    assert!(d["approval_id"].as_str().unwrap().starts_with("apr_"));
    assert_eq!(d["principal"], "svc-wiki");
    let id = d["decision_id"].as_str().unwrap();

    let settled = report_outcome(g, &r.service, id, "kb-search-v1", (40, 120)).ok();
    assert!(settled.stdout.contains("\"settled\":true"));
    report_outcome(g, &r.service, id, "kb-search-v1", (1, 1)).fails(1, "holds no open reservation");
    // Nobody else settles it, and not under another deployment.
    let second = g.decide(&r.service, &kb_request());
    let second = second["decision_id"].as_str().unwrap();
    let other = g.key("other-team", "service", None);
    let settle = |key: &str, decision: &str, deployment: &str| {
        report_outcome(g, key, decision, deployment, (0, 0))
    };
    settle(&other, second, "kb-search-v1").fails(3, "another principal");
    settle(&r.service, second, "credit-limit-v1").fails(1, "ran on `kb-search-v1`");
    settle(&r.service, "dec_nope", "kb-search-v1").fails(1, "no decision `dec_nope`");

    let explain = g.run(Some(&r.auditor), &["explain", "kb-search-v1"]).ok();
    assert!(
        explain.stdout.contains("signed by rita as risk"),
        "{}",
        explain.stdout
    );
    assert!(explain.stdout.contains("owner: dana@acme.example"));
    assert!(explain.stdout.contains("applied by olga"));
    // A webhook's path is often its credential: explain names its origin only.
    assert!(
        explain
            .stdout
            .contains("on-call webhook: https://hooks.acme.example/…"),
        "{}",
        explain.stdout
    );
    assert!(!explain.stdout.contains("/pager"), "{}", explain.stdout);
    let explain_json = g
        .run(Some(&r.auditor), &["explain", "kb-search-v1", "--json"])
        .ok()
        .stdout;
    assert!(!explain_json.contains("/pager"), "{explain_json}");
    let explain: serde_json::Value = serde_json::from_str(&explain_json).unwrap();
    assert_eq!(
        explain["on_the_hook"]["oncall"]["webhook_origin"],
        "https://hooks.acme.example"
    );
    assert_eq!(
        explain["who_approved"]["approval"]["signoffs"][0]["principal"],
        "rita"
    );
    assert_eq!(explain["on_the_hook"]["owner"], "dana@acme.example");

    // Reports answer from the contract in force, not from an edited file nobody applied.
    let yaml = std::fs::read_to_string(g.path("gavel.yaml")).unwrap();
    assert!(yaml.contains("owner: dana@acme.example"));
    let edited = yaml.replace("owner: dana@acme.example", "owner: eve@acme.example");
    std::fs::write(g.path("gavel.yaml"), edited).unwrap();
    for args in [
        &["explain", "kb-search-v1"][..],
        &["card", "kb-search-v1"],
        &["status"],
    ] {
        let report = g.run(Some(&r.auditor), args).ok().stdout;
        assert!(report.contains("dana@acme.example"), "{args:?}: {report}");
        assert!(!report.contains("eve@acme.example"), "{args:?}: {report}");
    }
    let fresh = Gavel::init();
    let auditor = fresh.key("audrey", "auditor", None);
    for args in [
        &["explain", "kb-search-v1"][..],
        &["card", "kb-search-v1"],
        &["status"],
    ] {
        fresh
            .run(Some(&auditor), args)
            .fails(1, "no contract has been applied yet");
    }
}

#[test]
fn json_lines_in_one_decision_per_line_out() {
    let r = Ready::start();
    let lines = [
        kb_request().to_string(),
        json!({"deployment": "credit-limit-v1"}).to_string(),
        json!({"deployment": "ghost"}).to_string(),
    ]
    .join("\n");
    let run =
        r.g.run_stdin(Some(&r.service), &["decide"], lines.as_bytes())
            .ok();
    let verdicts: Vec<String> = run
        .json_lines()
        .iter()
        .map(|d| format!("{} {}", d["verdict"], d["reasons"][0]["code"]))
        .collect();
    assert_eq!(
        verdicts,
        [
            "\"ALLOW\" null",
            "\"BLOCK\" \"approval.missing\"",
            "\"BLOCK\" \"deployment.unknown\""
        ]
    );
}

#[test]
fn pretty_printed_single_request_is_one_request() {
    let r = Ready::start();
    let pretty = serde_json::to_string_pretty(&kb_request()).unwrap();
    let run =
        r.g.run_stdin(Some(&r.service), &["decide"], pretty.as_bytes())
            .ok();
    assert_eq!(run.json_lines().len(), 1);
    assert_eq!(run.json_lines()[0]["verdict"], "ALLOW");
}

#[test]
fn kill_and_unkill() {
    let r = Ready::start();
    let g = &r.g;
    g.run(
        Some(&r.operator),
        &[
            "kill",
            "--use-case",
            "knowledge-search",
            "--reason",
            "incident 7",
        ],
    )
    .ok();
    let d = g.decide(&r.service, &kb_request());
    assert_eq!(d["reasons"][0]["code"], "killswitch.active");
    assert!(g
        .run(Some(&r.auditor), &["explain", "kb-search-v1"])
        .ok()
        .stdout
        .contains("KILLED"));
    g.run(
        Some(&r.operator),
        &["unkill", "--use-case", "knowledge-search"],
    )
    .ok();
    assert_eq!(g.decide(&r.service, &kb_request())["verdict"], "ALLOW");
    g.run(
        Some(&r.operator),
        &["unkill", "--use-case", "knowledge-search"],
    )
    .fails(1, "no kill switch");
    g.run(
        Some(&r.operator),
        &[
            "kill",
            "--use-case",
            "knowledge-search",
            "--reason",
            "incident 8",
        ],
    )
    .ok();
    g.run(
        Some(&r.operator),
        &[
            "kill",
            "--use-case",
            "knowledge-search",
            "--reason",
            "shorter",
            "--for",
            "1s",
        ],
    )
    .fails(1, "may not end sooner");
    g.run(
        Some(&r.operator),
        &["unkill", "--use-case", "knowledge-search"],
    )
    .ok();
    // One caller: its requests are refused, another's are not; a name that holds no key is
    // refused, as a misspelt deployment is.
    let other = g.key("svc-other", "service", None);
    g.run(
        Some(&r.operator),
        &[
            "kill",
            "--principal",
            "svc-wiki",
            "--reason",
            "runaway agent",
        ],
    )
    .ok();
    let d = g.decide(&r.service, &kb_request());
    assert_eq!(d["reasons"][0]["code"], "killswitch.active", "{d}");
    assert!(d["reasons"][0]["message"]
        .as_str()
        .unwrap()
        .contains("runaway agent"));
    assert_eq!(g.decide(&other, &kb_request())["verdict"], "ALLOW");
    g.run(
        Some(&r.operator),
        &["kill", "--principal", "svc-wikki", "--reason", "x"],
    )
    .fails(1, "principal `svc-wikki` holds no API key");
    g.run(Some(&r.operator), &["unkill", "--principal", "svc-wiki"])
        .ok();
    assert_eq!(g.decide(&r.service, &kb_request())["verdict"], "ALLOW");
    g.run(
        Some(&r.operator),
        &["kill", "--all", "--reason", "drill", "--for", "10m"],
    )
    .ok();
    let d = g.decide(&r.service, &kb_request());
    assert_eq!(d["verdict"], "COOLDOWN");
    assert!(d["retry_after_seconds"].as_u64().unwrap() > 590);
    g.run(
        Some(&r.operator),
        &["kill", "--deployment", "ghost", "--reason", "x"],
    )
    .fails(1, "not in the contract");
    let run = g.run(Some(&r.operator), &["kill", "--reason", "x"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
}

/// The commands that act on what is in force (kill, unkill, feedback, baseline) read the
/// contract in force, not the file: an on-call must be able to stop a model while the file on
/// disk is half-edited, and signals are measured against the thresholds that were applied.
#[test]
fn a_broken_contract_file_stops_no_kill_feedback_or_baseline() {
    let r = Ready::start();
    let g = &r.g;
    let d = g.decide(&r.service, &kb_request());
    let id = d["decision_id"].as_str().unwrap();
    let yaml = std::fs::read_to_string(g.path("gavel.yaml")).unwrap();
    let operator = |args: &[&str]| g.run(Some(&r.operator), args);
    std::fs::write(
        g.path("gavel.yaml"),
        "version: 1\norganization: [half-edited\n",
    )
    .unwrap();

    operator(&[
        "kill",
        "--deployment",
        "kb-search-v1",
        "--reason",
        "incident 9",
    ])
    .ok();
    operator(&[
        "kill",
        "--use-case",
        "knowledge-search",
        "--reason",
        "incident 9",
    ])
    .ok();
    operator(&["kill", "--deployment", "ghost", "--reason", "x"]).fails(1, "not in the contract");
    operator(&["kill", "--use-case", "ghost", "--reason", "x"])
        .fails(1, "not in the contract in force");
    let status = g.run(Some(&r.auditor), &["status"]).ok().stdout;
    assert!(status.contains("killed"), "{status}");
    operator(&["unkill", "--deployment", "kb-search-v1"]).ok();
    operator(&["unkill", "--use-case", "knowledge-search"]).ok();
    operator(&["unkill", "--deployment", "ghost"])
        .fails(1, "no kill switch is set on `deployment:ghost`");

    g.run(Some(&r.service), &["feedback", id, "--score", "0.9"])
        .ok();
    let rows: String = (0..50)
        .map(|i| format!("{{\"score\": {}}}\n", f64::from(i) / 50.0))
        .collect();
    std::fs::write(g.path("rows.jsonl"), rows).unwrap();
    let rows_path = g.path("rows.jsonl");
    g.run(
        Some(&r.risk),
        &[
            "baseline",
            "kb-search-v1",
            "--file",
            rows_path.to_str().unwrap(),
        ],
    )
    .ok();

    // The data path still reads the file, and refuses it.
    g.run_stdin(
        Some(&r.service),
        &["decide"],
        kb_request().to_string().as_bytes(),
    )
    .fails(1, "gavel.yaml:2:15");

    // A kill outlives its deployment's removal from the contract, and can still be lifted.
    operator(&[
        "kill",
        "--deployment",
        "kb-search-v1",
        "--reason",
        "retired",
    ])
    .ok();
    let kb_block = yaml.find("  kb-search-v1:\n").unwrap();
    let next_block = yaml.find("  tenant-score-v0:\n").unwrap();
    let without_kb = format!("{}{}", &yaml[..kb_block], &yaml[next_block..]);
    std::fs::write(g.path("gavel.yaml"), without_kb).unwrap();
    operator(&["apply"]).ok();
    operator(&["kill", "--deployment", "kb-search-v1", "--reason", "again"])
        .fails(1, "not in the contract");
    operator(&["unkill", "--deployment", "kb-search-v1"]).ok();

    // Before any contract is applied, everything can still be stopped; a named scope cannot be
    // checked, and is refused.
    let fresh = Gavel::init();
    let fresh_operator = fresh.key("olga", "operator", None);
    fresh
        .run(
            Some(&fresh_operator),
            &["kill", "--all", "--reason", "drill"],
        )
        .ok();
    fresh
        .run(
            Some(&fresh_operator),
            &["kill", "--deployment", "kb-search-v1", "--reason", "x"],
        )
        .fails(1, "no contract has been applied yet");
}

/// Two reports of one decision's outcome at once: the one that claims the reservation records
/// and settles it; the other is refused and records nothing (the race is staged: the claim of
/// a report in progress is written first). The claim is held only while settling, is given
/// back when the ledger does not take the record, and is taken over once stale.
#[test]
fn an_outcome_claims_its_reservation_while_it_records_and_settles() {
    let r = Ready::start();
    let g = &r.g;
    let decide = || {
        g.decide(&r.service, &kb_request())["decision_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let report = |id: &str| report_outcome(g, &r.service, id, "kb-search-v1", (40, 120));
    let outcomes = || {
        g.run(Some(&r.auditor), &["audit", "export", "--kind", "outcome"])
            .ok()
            .stdout
            .lines()
            .count()
    };
    let db = rusqlite::Connection::open(g.path("gavel.db")).unwrap();
    let stage_claim = |id: &str, at_ms: &str| {
        db.execute(
            "INSERT INTO report_claims (key, by_id) VALUES (?1, ?2)",
            [format!("settling:{id}"), at_ms.to_string()],
        )
        .unwrap();
    };
    let claims = || -> i64 {
        db.query_row("SELECT count(*) FROM report_claims", [], |row| row.get(0))
            .unwrap()
    };

    let id = decide();
    stage_claim(&id, "99999999999999");
    report(&id).fails(1, "being recorded and settled by another report");
    assert_eq!(outcomes(), 0, "the refused report recorded nothing");

    // A claim whose report died long ago is taken over.
    let stale = decide();
    stage_claim(&stale, "0");
    assert!(report(&stale).ok().stdout.contains("\"settled\":true"));
    assert_eq!(outcomes(), 1);

    // A report the ledger does not take gives its claim back, so that it can be made again.
    let refused_once = decide();
    db.execute_batch(
        "CREATE TRIGGER refuse BEFORE INSERT ON ledger_records BEGIN SELECT RAISE(ABORT, 'disk full'); END",
    )
    .unwrap();
    let refused = report(&refused_once);
    assert_eq!(refused.code, 4, "{}", refused.stderr);
    db.execute_batch("DROP TRIGGER refuse").unwrap();
    assert!(report(&refused_once)
        .ok()
        .stdout
        .contains("\"settled\":true"));
    assert_eq!(outcomes(), 2);
    assert_eq!(
        claims(),
        1,
        "only the staged claim of the first decision is left: the others were given back once settled"
    );
}

#[test]
fn a_changed_deployment_is_refused_until_applied_and_reapproved() {
    let r = Ready::start();
    let g = &r.g;
    std::fs::write(g.path("prompts/kb.txt"), "Answer briefly.\n").unwrap();
    let changed = serde_json::json!({
        "deployment": "kb-search-v1",
        "messages": [{"role": "system", "content": "Answer briefly.\n"}, {"role": "user", "content": "hi"}]
    });
    let d = g.decide(&r.service, &changed);
    assert_eq!(
        d["reasons"][0]["code"], "governance.unavailable",
        "an unapplied contract fails closed: {d}"
    );
    assert!(d["reasons"][0]["message"]
        .as_str()
        .unwrap()
        .contains("gavel apply"));
    let applied = g.run(Some(&r.operator), &["apply"]).ok();
    assert!(
        applied.stdout.contains("kb-search-v1 -> binding"),
        "{}",
        applied.stdout
    );
    let d = g.decide(&r.service, &changed);
    assert_eq!(d["reasons"][0]["code"], "approval.binding_mismatch", "{d}");
    g.run(Some(&r.risk), &approve_kb("block")).ok();
    assert_eq!(g.decide(&r.service, &changed)["verdict"], "ALLOW");
}

#[test]
fn idempotent_and_dry_run_from_the_command_line() {
    let r = Ready::start();
    let mut req = kb_request();
    req["idempotency_key"] = json!("job-1");
    let first = r.g.decide(&r.service, &req);
    let second = r.g.decide(&r.service, &req);
    assert_eq!(second["verdict"], "NO_OP");
    assert_eq!(second["first_decision_id"], first["decision_id"]);
    let mut dry = kb_request();
    dry["dry_run"] = json!(true);
    let d = r.g.decide(&r.service, &dry);
    assert_eq!(d["verdict"], "NO_OP");
    assert_eq!(d["would_be"]["verdict"], "ALLOW");
}

#[test]
fn apply_reports_what_changed_and_flags_loosening() {
    let r = Ready::start();
    let g = &r.g;
    let text = std::fs::read_to_string(g.path("gavel.yaml")).unwrap();
    std::fs::write(
        g.path("gavel.yaml"),
        text.replace("window: 1m, requests: 120", "window: 1m, requests: 500")
            .replace("threshold: 0.5", "threshold: 0.4"),
    )
    .unwrap();
    let run = g.run(Some(&r.operator), &["apply"]).ok();
    assert!(run.stdout.contains("LOOSENING"), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("LOOSENS budget `principal/1m/*/*` requests raised 120 -> 500"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("-       injection threshold 0.5 -> 0.4"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("no deployment binding changed"),
        "{}",
        run.stdout
    );
    // Going back is recorded as a change too: the budget tightens, the threshold loosens.
    std::fs::write(g.path("gavel.yaml"), text).unwrap();
    let back = g.run(Some(&r.operator), &["apply"]).ok();
    assert!(
        back.stdout.contains("it is the current version again"),
        "{}",
        back.stdout
    );
    assert!(
        back.stdout
            .contains("LOOSENS injection threshold 0.4 -> 0.5"),
        "{}",
        back.stdout
    );
    assert!(
        back.stdout
            .contains("-       budget `principal/1m/*/*` requests lowered 500 -> 120"),
        "{}",
        back.stdout
    );
}

/// The version in force reloads from its stored files as another version when this gavel's
/// built-in defaults (its price table, say) changed since it was applied, or the files were
/// altered: comparing with that one would hide what the difference loosened, so the change is
/// taken to loosen and says why, with the changes against the version as it reloads. Here the
/// stored files are edited to stand for such an upgrade.
#[test]
fn apply_takes_a_previous_version_that_reloads_differently_to_loosen() {
    let r = Ready::start();
    let g = &r.g;
    let db = rusqlite::Connection::open(g.path("gavel.db")).unwrap();
    let edited = db
        .execute(
            "UPDATE contract_files SET bytes = CAST(CAST(bytes AS TEXT) || ' ' AS BLOB) WHERE path = 'prompts/kb.txt'",
            [],
        )
        .unwrap();
    assert_eq!(edited, 1);
    drop(db);
    let text = std::fs::read_to_string(g.path("gavel.yaml")).unwrap();
    // A tightening, which a comparison alone would not flag.
    std::fs::write(
        g.path("gavel.yaml"),
        text.replace("window: 1m, requests: 120", "window: 1m, requests: 60"),
    )
    .unwrap();
    let run = g.run(Some(&r.operator), &["apply"]).ok();
    assert!(
        run.stdout
            .contains("LOOSENING, taken to be: the previous version")
            && run.stdout.contains("reloads as"),
        "{}",
        run.stdout
    );
    let loads = g
        .run(
            Some(&r.auditor),
            &["audit", "export", "--kind", "contract_loaded"],
        )
        .ok()
        .stdout;
    let last: Value = serde_json::from_str(loads.lines().last().unwrap()).unwrap();
    assert_eq!(last["body"]["loosening"], true, "{last}");
    let changes: Vec<&str> = last["body"]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(
        changes
            .iter()
            .any(|c| c.contains("requests lowered 120 -> 60"))
            && changes
                .iter()
                .any(|c| c.starts_with("LOOSENS (taken to, in doubt) the previous version")),
        "{changes:?}"
    );
}

/// A caller reports its usage, but not less prompt than gavel counted when it decided: a report
/// of zero would hand back the tokens and dollars reserved for a prompt that was sent.
#[test]
fn an_outcome_settles_no_less_prompt_than_was_counted() {
    let r = Ready::start();
    let g = &r.g;
    // Reports `report(counted)` prompt tokens; returns what was counted and what settled.
    let settle = |report: &dyn Fn(u64) -> u64| {
        let decided = g.decide(&r.service, &kb_request());
        let id = decided["decision_id"].as_str().unwrap();
        let counted = decided["estimate"]["prompt_tokens"].as_u64().unwrap();
        report_outcome(g, &r.service, id, "kb-search-v1", (report(counted), 3)).ok();
        let outcomes = g
            .run(Some(&r.auditor), &["audit", "export", "--kind", "outcome"])
            .ok()
            .stdout;
        let outcome: Value = outcomes
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|o| o["body"]["decision_id"] == id)
            .unwrap();
        let settled = outcome["body"]["usage"]["prompt_tokens"].as_u64().unwrap();
        (counted, settled)
    };
    let (counted, settled) = settle(&|_| 0);
    assert!(counted > 0);
    assert_eq!(
        settled, counted,
        "a report of no prompt settles what was counted"
    );
    let (counted, settled) = settle(&|counted| counted - 1);
    assert_eq!(settled, counted);
    let (counted, settled) = settle(&|counted| counted + 25);
    assert_eq!(
        settled,
        counted + 25,
        "more than was counted is taken as reported"
    );
}

/// `gavel outcome` for `decision` on `deployment`, as `key`, with (prompt, completion) tokens.
fn report_outcome(
    g: &Gavel,
    key: &str,
    decision: &str,
    deployment: &str,
    (prompt, completion): (u64, u64),
) -> Run {
    g.run(
        Some(key),
        &[
            "outcome",
            "--decision",
            decision,
            "--deployment",
            deployment,
            "--prompt-tokens",
            &prompt.to_string(),
            "--completion-tokens",
            &completion.to_string(),
        ],
    )
}
