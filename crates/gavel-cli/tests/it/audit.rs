//! The ledger from the command line: every decision and governance change is recorded before
//! it takes effect, verifies, can be proved to a third party, and any edit is caught.

use crate::*;

fn kinds(r: &Ready) -> Vec<String> {
    let run = r.g.run(Some(&r.auditor), &["audit", "export"]).ok();
    run.stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn every_governance_change_and_decision_is_recorded() {
    let r = Ready::start();
    let g = &r.g;
    let setup = kinds(&r);
    // init's admin key, five more keys, the contract, one approval.
    assert_eq!(
        setup.iter().filter(|k| *k == "key_created").count(),
        6,
        "{setup:?}"
    );
    assert_eq!(setup.iter().filter(|k| *k == "contract_loaded").count(), 1);
    assert_eq!(
        setup.iter().filter(|k| *k == "approval_completed").count(),
        1
    );

    let d = g.decide(&r.service, &kb_request());
    assert!(
        d["receipt"]["index"].as_u64().unwrap() >= setup.len() as u64,
        "{d}"
    );
    let id = d["decision_id"].as_str().unwrap();
    let shown: serde_json::Value =
        serde_json::from_str(&g.run(Some(&r.auditor), &["audit", "show", id]).ok().stdout).unwrap();
    assert_eq!(shown["record"]["body"]["verdict"], "ALLOW");
    assert_eq!(
        shown["record"]["body"]["reason_codes"],
        serde_json::json!([])
    );

    g.run(
        Some(&r.operator),
        &["kill", "--deployment", "kb-search-v1", "--reason", "drill"],
    )
    .ok();
    g.run(
        Some(&r.operator),
        &["unkill", "--deployment", "kb-search-v1"],
    )
    .ok();
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
    .fails(1, "never be approved");
    g.run(
        Some(&r.risk),
        &[
            "revoke",
            d["approval_id"].as_str().unwrap(),
            "--reason",
            "audit finding",
        ],
    )
    .ok();
    let after = kinds(&r);
    for kind in ["decision", "kill", "unkill", "admin", "approval_revoked"] {
        assert!(
            after.iter().any(|k| k == kind),
            "no `{kind}` record: {after:?}"
        );
    }
    let refused = g
        .run(Some(&r.auditor), &["audit", "export", "--kind", "admin"])
        .ok();
    assert!(
        refused.stdout.contains("approval_refused") && refused.stdout.contains("tenant-score-v0"),
        "{}",
        refused.stdout
    );

    let by_approval = g
        .run(
            Some(&r.auditor),
            &[
                "audit",
                "export",
                "--approval",
                d["approval_id"].as_str().unwrap(),
                "--kind",
                "decision",
            ],
        )
        .ok();
    assert_eq!(by_approval.stdout.lines().count(), 1);
    let explain = g
        .run(Some(&r.auditor), &["explain", "kb-search-v1", "--json"])
        .ok();
    assert!(explain.stdout.contains("\"latest_decisions\""));
    g.run(Some(&r.auditor), &["audit", "verify", "--strict"])
        .ok();
}

#[test]
fn no_secret_reaches_the_ledger() {
    let r = Ready::start();
    let mut req = kb_request();
    let aws = format!("AKIA{}", "QWERTYUIOPASDFGH");
    req["messages"][1]["content"] =
        serde_json::json!(format!("my key {aws} and mail jane.doe@example.org"));
    let d = r.g.decide(&r.service, &req);
    assert_eq!(d["reasons"][0]["code"], "privacy.secret");
    let export = r.g.run(Some(&r.auditor), &["audit", "export"]).ok().stdout;
    for secret in [
        aws.as_str(),
        "jane.doe@example.org",
        r.service.as_str(),
        r.g.admin.as_str(),
    ] {
        assert!(
            !export.contains(secret),
            "`{secret}` leaked into the ledger"
        );
    }
}

#[test]
fn a_proof_verifies_with_only_the_public_key_and_tampering_fails() {
    let r = Ready::start();
    let g = &r.g;
    let d = g.decide(&r.service, &kb_request());
    let proof = g
        .run(
            Some(&r.auditor),
            &["audit", "prove", d["decision_id"].as_str().unwrap()],
        )
        .ok()
        .stdout;
    std::fs::write(g.path("proof.json"), &proof).unwrap();
    let pubkey = g
        .run(None, &["audit", "pubkey"])
        .ok()
        .stdout
        .trim()
        .to_string();
    // A third party: no database, no key, a different folder.
    let elsewhere = tempfile::tempdir().unwrap();
    let check = |file: &std::path::Path| {
        crate::output(
            gavel_command(elsewhere.path(), None)
                .args(["audit", "check-proof"])
                .arg(file)
                .args(["--pubkey", &pubkey])
                .output()
                .unwrap(),
        )
    };
    let ok = check(&g.path("proof.json")).ok();
    assert!(ok.stdout.contains("proof OK"), "{}", ok.stdout);
    let tampered = proof.replacen("ALLOW", "BLOCK", 1);
    assert_ne!(tampered, proof);
    std::fs::write(g.path("tampered.json"), tampered).unwrap();
    check(&g.path("tampered.json")).fails(1, "does NOT verify");
}

#[test]
fn verify_names_the_first_edited_record() {
    let r = Ready::start();
    let g = &r.g;
    g.decide(&r.service, &kb_request());
    g.run(Some(&r.auditor), &["audit", "verify"]).ok();
    let conn = rusqlite::Connection::open(g.path("gavel.db")).unwrap();
    // The append-only triggers stop mistakes, not an attacker with the file: drop them.
    let triggers: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'ledger_records'",
        )
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for trigger in triggers {
        conn.execute(&format!("DROP TRIGGER {trigger}"), [])
            .unwrap();
    }
    let (idx, bytes): (i64, Vec<u8>) = conn
        .query_row(
            "SELECT idx, bytes FROM ledger_records WHERE kind = 'contract_loaded'",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    let edited = String::from_utf8(bytes.clone())
        .unwrap()
        .replacen("\"olga\"", "\"mallory\"", 1)
        .into_bytes();
    assert_ne!(edited, bytes);
    conn.execute(
        "UPDATE ledger_records SET bytes = ?1 WHERE idx = ?2",
        rusqlite::params![edited, idx],
    )
    .unwrap();
    drop(conn);
    let run = g.run(Some(&r.auditor), &["audit", "verify"]);
    assert_eq!(run.code, 1, "{} {}", run.stdout, run.stderr);
    assert!(run.stderr.contains("does NOT verify"), "{}", run.stderr);
    assert!(
        run.stderr.contains(&idx.to_string()),
        "names index {idx}: {}",
        run.stderr
    );
}

#[test]
fn records_no_checkpoint_covers_fail_verify_while_nobody_writes() {
    let r = Ready::start();
    let g = &r.g;
    g.decide(&r.service, &kb_request());
    let pubkey = g.run(Some(&r.auditor), &["audit", "pubkey"]).ok().stdout;
    let pubkey = pubkey.trim();
    g.run(Some(&r.auditor), &["audit", "verify", "--pubkey", pubkey])
        .ok();
    // Someone with the file but not the key removes the newest checkpoint, so that records can
    // be rewritten past the one before it.
    let conn = rusqlite::Connection::open(g.path("gavel.db")).unwrap();
    conn.execute_batch(
        "DROP TRIGGER ledger_checkpoints_no_delete;
         DELETE FROM ledger_checkpoints WHERE seq = (SELECT MAX(seq) FROM ledger_checkpoints);",
    )
    .unwrap();
    drop(conn);
    let run = g
        .run(Some(&r.auditor), &["audit", "verify"])
        .fails(1, "not covered by any signed checkpoint");
    assert!(
        run.stderr
            .contains("no gavel process is writing the ledger"),
        "{}",
        run.stderr
    );
    // A pinned key of the same name that is not the ledger's, and one that is not a key.
    let name = pubkey.split('+').next().unwrap();
    let other = gavel_ledger::NoteSigner::from_seed(name, &[9; 32])
        .unwrap()
        .verifier()
        .to_string();
    assert_ne!(other, pubkey);
    g.run(Some(&r.auditor), &["audit", "verify", "--pubkey", &other])
        .fails(1, "does NOT verify");
    g.run(
        Some(&r.auditor),
        &["audit", "verify", "--pubkey", "nonsense"],
    )
    .fails(1, "--pubkey is not a ledger public key");
}

#[test]
fn verify_names_a_decision_hidden_from_its_approval() {
    let r = Ready::start();
    let g = &r.g;
    let d = g.decide(&r.service, &kb_request());
    let approval = d["approval_id"].as_str().unwrap();
    let under_approval = || {
        g.run(
            Some(&r.auditor),
            &[
                "audit",
                "export",
                "--approval",
                approval,
                "--kind",
                "decision",
            ],
        )
        .ok()
        .stdout
        .lines()
        .count()
    };
    assert_eq!(under_approval(), 1);
    let conn = rusqlite::Connection::open(g.path("gavel.db")).unwrap();
    conn.execute("DROP TRIGGER ledger_records_no_update", [])
        .unwrap();
    // The record's bytes, and so the tree and every signature, stay as they were: only the
    // column that `--approval` filters on is changed.
    let idx: i64 = conn
        .query_row(
            "UPDATE ledger_records SET approval_id = 'apr-elsewhere' WHERE kind = 'decision' RETURNING idx",
            [],
            |row| row.get(0),
        )
        .unwrap();
    drop(conn);
    assert_eq!(under_approval(), 0, "the edit hides the decision");
    let run = g.run(Some(&r.auditor), &["audit", "verify"]);
    assert_eq!(run.code, 1, "{} {}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("does NOT verify")
            && run.stderr.contains(&format!("record {idx}:"))
            && run.stderr.contains("`approval_id` column"),
        "{}",
        run.stderr
    );
}

#[test]
fn without_a_usable_ledger_nothing_is_decided() {
    let r = Ready::start();
    let key = r.g.path("gavel-ledger.key");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = r.g.run_stdin(
        Some(&r.service),
        &["decide"],
        kb_request().to_string().as_bytes(),
    );
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert!(run.stderr.contains("owner-only"), "{}", run.stderr);
    assert!(!run.stdout.contains("ALLOW"));
}

#[test]
fn captured_payloads_are_crypto_shredded_by_forget_and_the_ledger_still_verifies() {
    let r = Ready::start();
    let g = &r.g;
    let text = std::fs::read_to_string(g.path("gavel.yaml")).unwrap();
    std::fs::write(
        g.path("gavel.yaml"),
        text.replace(
            "  idempotency: { window: 24h }\n",
            "  idempotency: { window: 24h }\n  payload_capture: { subject: user_id }\n",
        ),
    )
    .unwrap();
    g.run(Some(&r.operator), &["apply"]).ok();
    let mut req = kb_request();
    req["metadata"] = serde_json::json!({"user_id": "u-42"});
    // The `user` parameter is a text of a field of its own in the digest.
    req["params"]["user"] = serde_json::json!("employee-42");
    let d = g.decide(&r.service, &req);
    let id = d["decision_id"].as_str().unwrap();
    let payload = g.run(Some(&r.auditor), &["audit", "payload", id]).ok();
    assert!(
        payload.stdout.contains("Where is the VPN guide?"),
        "{}",
        payload.stdout
    );
    // What was captured digests to what the ledger holds, by docs/decide.md's recipe.
    let texts: Vec<serde_json::Value> = serde_json::from_str(&payload.stdout).unwrap();
    assert_eq!(texts.len(), 3, "{texts:?}");
    assert_eq!(texts[2]["source"], "user", "{texts:?}");
    use sha2::Digest;
    let mut digest = sha2::Sha256::new();
    for t in &texts {
        let (tag, index) = match t["source"].as_str().unwrap() {
            "message" => (0u8, t["index"].as_u64().unwrap()),
            "part" => (1, t["index"].as_u64().unwrap()),
            "user" => (2, 0),
            "tool_calls" => (3, t["index"].as_u64().unwrap()),
            "action_args" => (3, u64::MAX),
            "other_fields" => (4, t["index"].as_u64().unwrap()),
            "tool_description" => (5, t["index"].as_u64().unwrap()),
            other => panic!("unknown source {other}"),
        };
        let role = ["user", "system", "assistant", "retrieved", "tool_output"]
            .iter()
            .position(|s| *s == t["role"])
            .unwrap() as u8;
        let text = t["text"].as_str().unwrap();
        digest.update([tag]);
        digest.update(index.to_be_bytes());
        digest.update([role]);
        digest.update((text.len() as u64).to_be_bytes());
        digest.update(text.as_bytes());
    }
    assert_eq!(
        hex::encode(digest.finalize()),
        d["input_sha256"].as_str().unwrap(),
        "{texts:?}"
    );
    // Not captured without the subject field.
    let other = g.decide(&r.service, &kb_request());
    g.run(
        Some(&r.auditor),
        &["audit", "payload", other["decision_id"].as_str().unwrap()],
    )
    .fails(1, "no readable payload");

    g.run(Some(&r.auditor), &["audit", "forget", "--subject", "u-42"])
        .fails(3, "needs role admin");
    g.run(Some(&g.admin), &["audit", "forget", "--subject", "u-42"])
        .ok();
    g.run(Some(&r.auditor), &["audit", "payload", id])
        .fails(1, "no readable payload");
    g.run(Some(&r.auditor), &["audit", "verify"]).ok();
    let record = g
        .run(Some(&r.auditor), &["audit", "export", "--kind", "admin"])
        .ok()
        .stdout;
    assert!(
        record.contains("subject_forgotten") && !record.contains("u-42"),
        "{record}"
    );
}

#[test]
fn concurrent_decide_processes_all_get_recorded() {
    let r = Ready::start();
    let g = &r.g;
    let batch: String = (0..5).map(|_| format!("{}\n", kb_request())).collect();
    let children: Vec<_> = (0..4)
        .map(|_| {
            let mut child = gavel_command(g.dir.path(), Some(&r.service))
                .arg("decide")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(batch.as_bytes())
                .unwrap();
            child
        })
        .collect();
    for child in children {
        let run = crate::output(child.wait_with_output().unwrap()).ok();
        let verdicts: Vec<_> = run
            .json_lines()
            .iter()
            .map(|d| d["verdict"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(verdicts, vec!["ALLOW"; 5], "{}", run.stdout);
    }
    let decisions = g
        .run(Some(&r.auditor), &["audit", "export", "--kind", "decision"])
        .ok();
    assert_eq!(decisions.stdout.lines().count(), 20);
    g.run(Some(&r.auditor), &["audit", "verify"]).ok();
}

/// Free text an operator or approver gives goes into ledger records as it is: text holding a
/// secret is refused before anything is recorded.
#[test]
fn governance_text_holding_a_secret_is_refused_and_never_recorded() {
    let r = Ready::start();
    let g = &r.g;
    let key = format!("AKIA{}", "QWERTYUIOPASDFGH");
    let reason = format!("leaked {key} in a prompt");
    g.run(
        Some(&r.operator),
        &["kill", "--deployment", "kb-search-v1", "--reason", &reason],
    )
    .fails(1, "--reason holds what looks like a secret");
    let exported = g.run(Some(&r.auditor), &["audit", "export"]).ok().stdout;
    assert!(!exported.contains(&key));
    assert!(!exported.contains("\"kill\""), "nothing was recorded");
}
