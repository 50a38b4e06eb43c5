//! Builds a small ledger and writes everything an outside auditor gets:
//!
//!   cargo run -p gavel-ledger-sqlite --example ledger_demo -- DIR [RECORDS]
//!
//! DIR/gavel.db and DIR/ledger.key (the operator's side), then
//! DIR/pubkey.txt, DIR/records.jsonl, DIR/checkpoints.jsonl and
//! DIR/proof.json (the auditor's side; see bench/ledger/independent_verify.py).

// An example reports failures by stopping loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use gavel_ledger::{Appender, AppenderConfig, ContractLoaded, Record, RecordKind, VerifyOptions};
use gavel_ledger_sqlite::{create_signing_key, public_key, ExportFilter, SqliteLedgerSink};
use serde_json::json;
use std::fs::File;
use std::path::PathBuf;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(args.get(1).expect("usage: ledger_demo DIR [RECORDS]"));
    let n: u64 = args.get(2).map_or(1_000, |s| s.parse().unwrap());
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("gavel.db");
    let signer = create_signing_key(dir.join("ledger.key"), "gavel.example/ledger").unwrap();
    let verifier = signer.verifier();
    std::fs::write(dir.join("pubkey.txt"), format!("{}\n", public_key(&signer))).unwrap();

    let config = AppenderConfig {
        checkpoint_every: 100,
        checkpoint_interval: Duration::from_millis(200),
        ..Default::default()
    };
    let app = Appender::start(SqliteLedgerSink::open(&db).unwrap(), signer, config).unwrap();
    let change = ContractLoaded {
        contract_version: "v2".into(),
        previous_version: Some("v1".into()),
        changes: vec!["raised daily cost limit 50 -> 80 USD".into()],
        loosening: true,
    };
    app.append(
        &Record::new(
            RecordKind::ContractLoaded,
            1_764_000_000_000,
            "contract-v2",
            &change,
        )
        .unwrap(),
    )
    .unwrap();
    for i in 0..n {
        let body = json!({
            "contract_version": "v2",
            "deployment": "support-bot",
            "approval_id": format!("ap-{}", i % 3),
            "principal": format!("user-{}", i % 7),
            "verdict": if i % 10 == 0 { "deny" } else { "allow" },
            "reason_codes": if i % 10 == 0 { json!(["pii.email"]) } else { json!([]) },
            "input_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        });
        app.append(
            &Record::new(
                RecordKind::Decision,
                1_764_000_000_001 + i as i64,
                format!("dec-{i}"),
                &body,
            )
            .unwrap(),
        )
        .unwrap();
    }
    app.close().unwrap();

    let sink = SqliteLedgerSink::open(&db).unwrap();
    let report = sink
        .verify(
            &verifier,
            VerifyOptions {
                check_format: true,
                check_query_aids: true,
                require_signed_tail: true,
            },
        )
        .unwrap();
    let records = sink
        .export_jsonl(
            &ExportFilter::default(),
            &mut File::create(dir.join("records.jsonl")).unwrap(),
        )
        .unwrap();
    let checkpoints = sink
        .export_checkpoints_jsonl(&mut File::create(dir.join("checkpoints.jsonl")).unwrap())
        .unwrap();
    let proof = sink
        .prove(
            &format!("dec-{}", n / 2),
            &gavel_ledger::Prover::new(verifier.clone()),
        )
        .unwrap();
    std::fs::write(
        dir.join("proof.json"),
        serde_json::to_string_pretty(&proof).unwrap(),
    )
    .unwrap();
    println!(
        "ledger {}: {} records, {} checkpoints, verified",
        db.display(),
        report.records,
        report.checkpoints
    );
    println!("wrote pubkey.txt, records.jsonl ({records} lines), checkpoints.jsonl ({checkpoints} lines), proof.json");
}
