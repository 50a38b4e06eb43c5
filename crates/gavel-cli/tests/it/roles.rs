//! Authentication and authorisation: every acting command refuses every wrong role with exit
//! code 3, and no key, flag or variable lets a request skip a guard.

use crate::*;

#[test]
fn every_command_refuses_every_wrong_role() {
    let r = Ready::start();
    let g = &r.g;
    let admin = g.admin.clone();
    let approver = r.risk.clone();
    let keys = [
        ("service", r.service.clone()),
        ("operator", r.operator.clone()),
        ("approver", approver),
        ("auditor", r.auditor.clone()),
        ("admin", admin),
    ];
    // (command, roles allowed)
    let table: Vec<(Vec<&str>, &[&str])> = vec![
        (vec!["keys", "list"], &["admin"]),
        (
            vec!["keys", "create", "--principal", "x", "--role", "service"],
            &["admin"],
        ),
        (vec!["apply"], &["operator", "admin"]),
        (
            vec![
                "approve",
                "order-agent-v2",
                "--population",
                "p",
                "--expires",
                "30d",
                "--on-breach",
                "block",
                "--evidence",
                "eval=evals/order-agent-v2.jsonl",
            ],
            &["approver"],
        ),
        (vec!["revoke", "apr_nope", "--reason", "x"], &["approver"]),
        (
            vec!["approvals"],
            &["approver", "auditor", "operator", "admin"],
        ),
        (
            vec![
                "kill",
                "--deployment",
                "kb-search-v1",
                "--reason",
                "x",
                "--for",
                "1s",
            ],
            &["operator"],
        ),
        (
            vec!["unkill", "--deployment", "kb-search-v1"],
            &["operator"],
        ),
        (
            vec!["explain", "kb-search-v1"],
            &["auditor", "approver", "operator", "admin"],
        ),
        (
            vec![
                "outcome",
                "--decision",
                "dec_x",
                "--deployment",
                "kb-search-v1",
                "--prompt-tokens",
                "1",
                "--completion-tokens",
                "1",
            ],
            &["service"],
        ),
    ];
    for (args, allowed) in &table {
        for (role, key) in &keys {
            let run = g.run(Some(key), args);
            if allowed.contains(role) {
                assert_ne!(run.code, 3, "{role} may run {args:?}: {}", run.stderr);
            } else {
                assert_eq!(
                    run.code, 3,
                    "{role} must not run {args:?}: {} {}",
                    run.stdout, run.stderr
                );
                assert!(
                    run.stderr.contains(&format!("has role {role}")),
                    "{}",
                    run.stderr
                );
            }
        }
    }
    // decide reads stdin: table-driven separately.
    for (role, key) in &keys {
        let run = g.run_stdin(Some(key), &["decide"], kb_request().to_string().as_bytes());
        assert_eq!(run.code == 3, *role != "service", "{role}: {}", run.stderr);
        if *role != "service" {
            assert!(
                run.stdout.is_empty(),
                "no decision for a non-service key: {}",
                run.stdout
            );
        }
    }
}

#[test]
fn missing_unknown_and_revoked_keys_are_refused() {
    let r = Ready::start();
    let g = &r.g;
    g.run(None, &["approvals"]).fails(3, "needs an API key");
    g.run(Some("gvl_not_a_real_key"), &["approvals"])
        .fails(3, "not known");
    let temp = g.key("temp", "auditor", None);
    let id = g
        .run(Some(&g.admin), &["keys", "list"])
        .ok()
        .stdout
        .lines()
        .find(|l| l.contains(" temp "))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    g.run(Some(&g.admin), &["keys", "revoke", &id]).ok();
    g.run(Some(&temp), &["approvals"]).fails(3, "was revoked");
    g.run(
        Some(&g.admin),
        &["keys", "create", "--principal", "x", "--role", "root"],
    )
    .fails(1, "unknown role `root`");
    g.run(
        Some(&g.admin),
        &[
            "keys",
            "create",
            "--principal",
            "x",
            "--role",
            "service",
            "--approver-role",
            "risk",
        ],
    )
    .fails(1, "applies only");
}

#[test]
fn keys_are_shown_once_and_never_listed_or_stored() {
    let r = Ready::start();
    let list = r.g.run(Some(&r.g.admin), &["keys", "list"]).ok();
    for key in [&r.service, &r.operator, &r.g.admin] {
        assert!(!list.stdout.contains(key.as_str()));
    }
    let db = std::fs::read(r.g.path("gavel.db")).unwrap();
    let wal = std::fs::read(r.g.path("gavel.db-wal")).unwrap_or_default();
    for key in [&r.service, &r.operator, &r.g.admin] {
        assert!(!db.windows(key.len()).any(|w| w == key.as_bytes()));
        assert!(!wal.windows(key.len()).any(|w| w == key.as_bytes()));
    }
}

#[test]
fn override_attempts_change_nothing() {
    let r = Ready::start();
    let g = &r.g;
    let unapproved = serde_json::json!({"deployment": "credit-limit-v1"});
    // Environment variables and flags that sound like overrides.
    for (var, value) in [
        ("GAVEL_OVERRIDE", "1"),
        ("GAVEL_FORCE", "true"),
        ("GAVEL_BYPASS", "1"),
        ("X_GAVEL_OVERRIDE", "1"),
    ] {
        let out = gavel_command(g.dir.path(), Some(&r.service))
            .env(var, value)
            .arg("decide")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin
                    .take()
                    .unwrap()
                    .write_all(unapproved.to_string().as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(d["verdict"], "BLOCK", "{var}");
    }
    let forced = g.run(Some(&r.service), &["decide", "--force"]);
    assert_eq!(
        forced.code, 2,
        "clap refuses unknown flags: {}",
        forced.stderr
    );
    assert!(forced.stdout.is_empty());
    // A bypass field in the body is an error, not an ALLOW.
    let mut body = unapproved.clone();
    body["bypass"] = serde_json::json!(true);
    let run = g.run_stdin(Some(&r.service), &["decide"], body.to_string().as_bytes());
    assert_eq!(run.code, 1);
    assert!(run.stdout.contains("unknown field `bypass`"));
    // The admin key on the data path is refused, never an ALLOW.
    g.run_stdin(
        Some(&g.admin),
        &["decide"],
        unapproved.to_string().as_bytes(),
    )
    .fails(3, "needs role service");
}
