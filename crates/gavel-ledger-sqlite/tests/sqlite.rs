//! The SQLite sink end to end: appends, queries, export, proofs, append-only
//! enforcement, tamper detection, key files and payload crypto-shredding.

// Test helpers outside #[test] fns may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::TempDir;
use gavel_ledger::merkle::leaf_hash;
use gavel_ledger::{
    check_proof_json, Appender, AppenderConfig, NoteSigner, NoteVerifier, Problem, Prover, Record,
    RecordKind, VerifyError, VerifyOptions,
};
use gavel_ledger_sqlite::{
    create_signing_key, load_signing_key, public_key, ExportFilter, SqliteLedgerSink,
};
use serde_json::json;

fn strict() -> VerifyOptions {
    VerifyOptions {
        check_format: true,
        check_query_aids: true,
        require_signed_tail: true,
    }
}

fn signer() -> NoteSigner {
    NoteSigner::from_seed("gavel.test/sqlite", &[5u8; 32]).unwrap()
}

/// 30 decisions across two deployments and approvals, plus a kill record.
fn populate(db: &std::path::Path) {
    let app = Appender::start(
        SqliteLedgerSink::open(db).unwrap(),
        signer(),
        AppenderConfig {
            checkpoint_every: 8,
            ..Default::default()
        },
    )
    .unwrap();
    for i in 0..30i64 {
        let body = json!({
            "deployment": if i % 2 == 0 { "prod" } else { "staging" },
            "approval_id": format!("ap-{}", i % 3),
            "principal": if i < 10 { "alice" } else { "bob" },
            "reason_codes": if i % 5 == 0 { json!(["pii", "cost"]) } else { json!([]) },
            "verdict": "allow",
        });
        app.append(&Record::new(RecordKind::Decision, 1_000 + i, format!("d-{i}"), &body).unwrap())
            .unwrap();
    }
    app.append(&Record::new(RecordKind::Kill, 2_000, "kill-1", &json!({"by": "ops"})).unwrap())
        .unwrap();
    app.close().unwrap();
}

#[test]
fn appends_survive_reopen_and_verify() {
    let dir = TempDir::new("reopen");
    let db = dir.path("gavel.db");
    populate(&db);
    let sink = SqliteLedgerSink::open(&db).unwrap();
    let report = sink.verify(&signer().verifier(), strict()).unwrap();
    assert_eq!((report.records, report.unsigned_tail), (31, 0));
    assert_eq!(report.checkpoints, 4); // sizes 8, 16, 24 and the closing 31
    assert_eq!(sink.newest_checkpoint().unwrap(), Some((4, 31)));
    // What a proof reads of the checkpoints: the newest, alone.
    let all = gavel_ledger::LedgerSink::checkpoints(&sink).unwrap();
    assert_eq!(
        gavel_ledger::LedgerSink::newest_stored_checkpoint(&sink).unwrap(),
        all.last().cloned()
    );
    let e = sink.record_by_id("d-7").unwrap().unwrap();
    assert_eq!(
        (e.index, e.record.body["principal"].as_str()),
        (7, Some("alice"))
    );
    assert!(sink.record_by_id("nope").unwrap().is_none());
}

#[test]
fn filters_select_the_right_records() {
    let dir = TempDir::new("filters");
    let db = dir.path("gavel.db");
    populate(&db);
    let sink = SqliteLedgerSink::open(&db).unwrap();
    let ids = |f: ExportFilter| -> Vec<String> {
        sink.query(&f)
            .unwrap()
            .into_iter()
            .map(|e| e.record.id)
            .collect()
    };
    let decisions = ExportFilter {
        kind: Some(RecordKind::Decision),
        ..Default::default()
    };
    assert_eq!(ids(decisions.clone()).len(), 30);
    assert_eq!(
        ids(ExportFilter {
            kind: Some(RecordKind::Kill),
            ..Default::default()
        }),
        vec!["kill-1"]
    );
    assert_eq!(
        ids(ExportFilter {
            deployment: Some("prod".into()),
            ..decisions.clone()
        })
        .len(),
        15
    );
    assert_eq!(
        ids(ExportFilter {
            approval_id: Some("ap-1".into()),
            ..Default::default()
        }),
        vec!["d-1", "d-4", "d-7", "d-10", "d-13", "d-16", "d-19", "d-22", "d-25", "d-28"]
    );
    assert_eq!(
        ids(ExportFilter {
            principal: Some("alice".into()),
            ..Default::default()
        })
        .len(),
        10
    );
    assert_eq!(
        ids(ExportFilter {
            reason_code: Some("pii".into()),
            ..Default::default()
        }),
        vec!["d-0", "d-5", "d-10", "d-15", "d-20", "d-25"]
    );
    assert_eq!(
        ids(ExportFilter {
            from_ms: Some(1_010),
            to_ms: Some(1_013),
            ..Default::default()
        }),
        vec!["d-10", "d-11", "d-12"]
    );
    assert_eq!(
        ids(ExportFilter {
            approval_id: Some("ap-2".into()),
            newest_first: true,
            limit: Some(2),
            ..Default::default()
        }),
        vec!["d-29", "d-26"]
    );
    // Pages: the next newest-first page starts below the last index shown (d-26 is leaf 26),
    // the next oldest-first page after it, through the approval's spans as through the rows.
    assert_eq!(
        ids(ExportFilter {
            approval_id: Some("ap-2".into()),
            newest_first: true,
            limit: Some(2),
            before_index: Some(26),
            ..Default::default()
        }),
        vec!["d-23", "d-20"]
    );
    assert_eq!(
        ids(ExportFilter {
            kind: Some(RecordKind::Decision),
            limit: Some(3),
            after_index: Some(26),
            ..Default::default()
        }),
        vec!["d-27", "d-28", "d-29"]
    );
    assert_eq!(
        ids(ExportFilter {
            after_index: Some(10),
            before_index: Some(13),
            ..Default::default()
        }),
        vec!["d-11", "d-12"]
    );
    // Values containing SQL or JSON syntax are just values.
    assert!(ids(ExportFilter {
        reason_code: Some("pii' OR 1=1 --".into()),
        ..Default::default()
    })
    .is_empty());
}

#[test]
fn export_lines_are_the_leaf_preimages() {
    let dir = TempDir::new("export");
    let db = dir.path("gavel.db");
    populate(&db);
    let sink = SqliteLedgerSink::open(&db).unwrap();
    let mut out = Vec::new();
    let n = sink
        .export_jsonl(
            &ExportFilter {
                principal: Some("alice".into()),
                ..Default::default()
            },
            &mut out,
        )
        .unwrap();
    assert_eq!(n, 10);
    let lines: Vec<&[u8]> = out
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(lines.len(), 10);
    use gavel_ledger::LedgerSink;
    let stored = sink.read_records(0, 10).unwrap();
    for (line, rec) in lines.iter().zip(&stored) {
        assert_eq!(leaf_hash(line), rec.leaf_hash);
        serde_json::from_slice::<serde_json::Value>(line).unwrap();
    }
}

#[test]
fn prove_and_check_proof_with_only_the_public_key() {
    let dir = TempDir::new("prove");
    let db = dir.path("gavel.db");
    populate(&db);
    let sink = SqliteLedgerSink::open(&db).unwrap();
    let bundle = sink
        .prove("d-12", &Prover::new(signer().verifier()))
        .unwrap();
    let json = serde_json::to_string(&bundle).unwrap();
    let checked = check_proof_json(&json, &public_key(&signer())).unwrap();
    assert_eq!((checked.index, checked.record.id.as_str()), (12, "d-12"));
    assert!(check_proof_json(&json.replace("d-12", "d-13"), &public_key(&signer())).is_err());
    assert!(sink
        .prove("missing", &Prover::new(signer().verifier()))
        .is_err());
    // An edited id column that leads one id to another record's proof is refused.
    drop(sink);
    tamper(&db, "UPDATE ledger_records SET id = 'd-12' WHERE idx = 5; UPDATE ledger_records SET id = 'd-5' WHERE idx = 12");
    let sink = SqliteLedgerSink::open(&db).unwrap();
    let why = sink
        .prove("d-12", &Prover::new(signer().verifier()))
        .unwrap_err()
        .to_string();
    assert!(
        why.contains("id column leads \"d-12\" to record 5"),
        "{why}"
    );
}

#[test]
fn ledger_rows_refuse_update_and_delete() {
    let dir = TempDir::new("appendonly");
    let db = dir.path("gavel.db");
    populate(&db);
    let raw = rusqlite::Connection::open(&db).unwrap();
    for sql in [
        "UPDATE ledger_records SET bytes = x'00' WHERE idx = 3",
        "DELETE FROM ledger_records WHERE idx = 3",
        "UPDATE ledger_checkpoints SET note = '' WHERE seq = 1",
        "DELETE FROM ledger_checkpoints",
    ] {
        let err = raw.execute(sql, []).unwrap_err().to_string();
        assert!(err.contains("append-only"), "{sql}: {err}");
    }
}

fn tamper(db: &std::path::Path, sql: &str) {
    let raw = rusqlite::Connection::open(db).unwrap();
    raw.execute_batch(
        "DROP TRIGGER ledger_records_no_update; DROP TRIGGER ledger_records_no_delete;
         DROP TRIGGER ledger_checkpoints_no_update; DROP TRIGGER ledger_checkpoints_no_delete;
         DROP TRIGGER ledger_approval_spans_no_update; DROP TRIGGER ledger_approval_spans_no_delete;",
    )
    .unwrap();
    raw.execute_batch(sql).unwrap();
}

fn failure(db: &std::path::Path) -> gavel_ledger::VerifyFailure {
    match SqliteLedgerSink::open(db)
        .unwrap()
        .verify(&signer().verifier(), strict())
    {
        Err(VerifyError::Failed(f)) => f,
        other => panic!("tamper not detected: {other:?}"),
    }
}

/// An appender on the ledger at `db`, configured as by default.
fn appender(db: &std::path::Path) -> Appender {
    Appender::start(
        SqliteLedgerSink::open(db).unwrap(),
        signer(),
        AppenderConfig::default(),
    )
    .unwrap()
}

/// What verification says of a `populate`d ledger after `sql`.
fn failure_after(sql: &str) -> gavel_ledger::VerifyFailure {
    let dir = TempDir::new("tamper");
    let db = dir.path("gavel.db");
    populate(&db);
    tamper(&db, sql);
    failure(&db)
}

/// 300 decisions through an appender configured as by default, closed (signed at 300).
fn three_hundred(db: &std::path::Path) {
    let app = appender(db);
    for i in 0..300i64 {
        let body = json!({"deployment": "prod", "n": i});
        app.append(&Record::new(RecordKind::Decision, 1_000 + i, format!("d-{i}"), &body).unwrap())
            .unwrap();
    }
    app.close().unwrap();
}

/// The rows of `sql`, a query of two columns, on the database at `db`.
fn pairs<A: rusqlite::types::FromSql, B: rusqlite::types::FromSql>(
    db: &std::path::Path,
    sql: &str,
) -> Vec<(A, B)> {
    let raw = rusqlite::Connection::open(db).unwrap();
    let mut stmt = raw.prepare(sql).unwrap();
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    rows.collect::<Result<_, _>>().unwrap()
}

fn node_rows(db: &std::path::Path) -> Vec<(u32, i64)> {
    pairs(
        db,
        "SELECT level, idx FROM ledger_nodes ORDER BY level, idx",
    )
}

/// The tree nodes go in with their records and are append-only like them; verify names an
/// edited one while proofs still check (they are rebuilt from the leaves); a ledger without
/// them (written by a gavel before them) verifies and proves read-only, and gets them at the
/// next writer start.
#[test]
fn tree_nodes_are_stored_checked_and_filled_in() {
    let dir = TempDir::new("nodes");
    let db = dir.path("gavel.db");
    three_hundred(&db);
    let expected: Vec<(u32, i64)> = (0..18).map(|i| (4, i)).chain([(8, 0)]).collect();
    assert_eq!(node_rows(&db), expected);
    let raw = rusqlite::Connection::open(&db).unwrap();
    for sql in [
        "UPDATE ledger_nodes SET hash = zeroblob(32) WHERE level = 4 AND idx = 5",
        "DELETE FROM ledger_nodes WHERE level = 8",
    ] {
        let err = raw.execute(sql, []).unwrap_err().to_string();
        assert!(err.contains("append-only"), "{sql}: {err}");
    }
    let prove = |db: &std::path::Path, id: &str| {
        let sink = SqliteLedgerSink::open_read_only(db).unwrap();
        let bundle = sink.prove(id, &Prover::new(signer().verifier())).unwrap();
        check_proof_json(
            &serde_json::to_string(&bundle).unwrap(),
            &public_key(&signer()),
        )
        .unwrap();
    };
    prove(&db, "d-90");

    let legacy = dir.path("legacy.db");
    std::fs::copy(&db, &legacy).unwrap();
    tamper(
        &db,
        "DROP TRIGGER ledger_nodes_no_update;
         UPDATE ledger_nodes SET hash = zeroblob(32) WHERE level = 4 AND idx = 5;",
    );
    let f = failure(&db);
    assert_eq!(
        (f.index, f.problem),
        (Some(95), Problem::TreeNode { level: 4, index: 5 })
    );
    // d-70's path goes through node 5 of level 4 (records 80-95).
    prove(&db, "d-70");
    // A node that is no 32-byte hash at all is read as a wrong one: named, never a storage
    // error; a writer still starts (from the leaves) and proofs through it check.
    let malformed = dir.path("malformed.db");
    std::fs::copy(&legacy, &malformed).unwrap();
    tamper(
        &malformed,
        "DROP TRIGGER ledger_nodes_no_update;
         UPDATE ledger_nodes SET hash = 'not a hash' WHERE level = 8 AND idx = 0;",
    );
    let f = failure(&malformed);
    assert_eq!(
        (f.index, f.problem),
        (Some(255), Problem::TreeNode { level: 8, index: 0 })
    );
    // d-270's path goes through node 0 of level 8 (records 0-255).
    prove(&malformed, "d-270");
    appender(&malformed).close().unwrap();
    prove(&malformed, "d-270");

    // A schema-3 ledger without its node table was edited: verify does not pass it.
    let raw = rusqlite::Connection::open(&legacy).unwrap();
    raw.execute_batch("DROP TABLE ledger_nodes;").unwrap();
    let why = SqliteLedgerSink::open_read_only(&legacy)
        .unwrap()
        .verify(&signer().verifier(), strict())
        .unwrap_err()
        .to_string();
    assert!(why.contains("ledger_nodes"), "{why}");
    // What a gavel of schema 2 left: no node table, nor leaf blocks.
    raw.execute_batch(
        "DROP TABLE ledger_leaf_blocks;
         UPDATE ledger_meta SET value = '2' WHERE key = 'schema_version';",
    )
    .unwrap();
    drop(raw);
    let read_only = SqliteLedgerSink::open_read_only(&legacy).unwrap();
    read_only.verify(&signer().verifier(), strict()).unwrap();
    prove(&legacy, "d-90");
    appender(&legacy).close().unwrap();
    assert_eq!(node_rows(&legacy), expected);
    let version: String = rusqlite::Connection::open(&legacy)
        .unwrap()
        .query_row(
            "SELECT value FROM ledger_meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(version, "4");
    SqliteLedgerSink::open(&legacy)
        .unwrap()
        .verify(&signer().verifier(), strict())
        .unwrap();
}

/// The leaf hashes of each block of 16 records, as stored: `(block, hashes)`.
fn leaf_block_rows(db: &std::path::Path) -> Vec<(i64, Vec<u8>)> {
    pairs(
        db,
        "SELECT block, hashes FROM ledger_leaf_blocks ORDER BY block",
    )
}

/// The leaf blocks go in with the records that complete them (a block begun by an earlier
/// batch included), are append-only, and are what a proof reads; verify names an edited,
/// missing, malformed or extra one; a ledger from before them verifies and proves read-only,
/// and the first command that writes to it fills them in.
#[test]
fn leaf_blocks_are_stored_checked_and_filled_in() {
    let dir = TempDir::new("blocks");
    let db = dir.path("gavel.db");
    // Lone appends, whose blocks each take 15 hashes from earlier batches, then batches of
    // whatever queued.
    three_hundred(&db);
    let app = appender(&db);
    let pending: Vec<_> = (300..500i64)
        .map(|i| {
            let body = json!({"deployment": "prod", "n": i});
            app.submit(
                &Record::new(RecordKind::Decision, 1_000 + i, format!("d-{i}"), &body).unwrap(),
            )
            .unwrap()
        })
        .collect();
    for p in pending {
        p.wait().unwrap();
    }
    app.close().unwrap();
    let sink = SqliteLedgerSink::open_read_only(&db).unwrap();
    let leaves: Vec<[u8; 32]> = gavel_ledger::LedgerSink::read_records(&sink, 0, 500)
        .unwrap()
        .iter()
        .map(|r| leaf_hash(&r.bytes))
        .collect();
    let expected: Vec<(i64, Vec<u8>)> = leaves
        .chunks_exact(16)
        .enumerate()
        .map(|(block, hashes)| (block as i64, hashes.concat()))
        .collect();
    assert_eq!(expected.len(), 31);
    assert_eq!(leaf_block_rows(&db), expected);
    let raw = rusqlite::Connection::open(&db).unwrap();
    for sql in [
        "UPDATE ledger_leaf_blocks SET hashes = zeroblob(512) WHERE block = 1",
        "DELETE FROM ledger_leaf_blocks WHERE block = 1",
    ] {
        let err = raw.execute(sql, []).unwrap_err().to_string();
        assert!(err.contains("append-only"), "{sql}: {err}");
    }
    // No connection stays open: the file alone is then the whole ledger (no WAL beside it).
    drop((raw, sink));
    let pristine = std::fs::read(&db).unwrap();
    let proves = |db: &std::path::Path, id: &str| {
        SqliteLedgerSink::open_read_only(db)
            .unwrap()
            .prove(id, &Prover::new(signer().verifier()))
            .is_ok()
    };

    // Record 17's leaf hash column wrong: record 16's proof takes its sibling from block 1,
    // where reading the records (and then every leaf) would give a path that does not check.
    tamper(
        &db,
        "UPDATE ledger_records SET leaf_hash = zeroblob(32) WHERE idx = 17",
    );
    assert!(proves(&db, "d-16"));
    assert_eq!(
        (failure(&db).index, failure(&db).problem),
        (Some(17), Problem::LeafHash)
    );

    let unblocked =
        "DROP TRIGGER ledger_leaf_blocks_no_update; DROP TRIGGER ledger_leaf_blocks_no_delete;";
    for (edit, index, says) in [
        (
            "UPDATE ledger_leaf_blocks SET hashes = zeroblob(512) WHERE block = 1",
            Some(31),
            "not the leaf hashes of records 16..=31",
        ),
        (
            "UPDATE ledger_leaf_blocks SET hashes = 'not hashes' WHERE block = 2",
            Some(47),
            "not the leaf hashes of records 32..=47",
        ),
        (
            "INSERT INTO ledger_leaf_blocks VALUES (31, zeroblob(512))",
            None,
            "a leaf block 31 is stored",
        ),
        (
            "INSERT INTO ledger_leaf_blocks VALUES (-1, zeroblob(512))",
            None,
            "a leaf block -1 is stored",
        ),
    ] {
        std::fs::write(&db, &pristine).unwrap();
        tamper(&db, &format!("{unblocked} {edit}"));
        let f = failure(&db);
        assert_eq!(f.index, index, "{edit}: {f}");
        assert!(
            matches!(&f.problem, Problem::QueryAid(what) if what.contains(says)),
            "{edit}: {f}"
        );
        // Proofs through an edited block still check: they are built from the leaves.
        assert!(proves(&db, "d-20"), "{edit}");
    }
    // A block left out (as a gavel from before them, appending to an upgraded ledger, leaves
    // them out) hides nothing: no failure, and proofs read the records.
    std::fs::write(&db, &pristine).unwrap();
    tamper(
        &db,
        &format!("{unblocked} DELETE FROM ledger_leaf_blocks WHERE block = 30"),
    );
    // Opened for writing, as `failure` opens it: the schema puts the dropped triggers back.
    SqliteLedgerSink::open(&db)
        .unwrap()
        .verify(&signer().verifier(), strict())
        .unwrap();
    assert!(proves(&db, "d-490"));
    // A block planted ahead of its records does not stop the appends that complete them;
    // verify names it.
    std::fs::write(&db, &pristine).unwrap();
    tamper(
        &db,
        &format!("{unblocked} INSERT INTO ledger_leaf_blocks VALUES (31, zeroblob(512))"),
    );
    let app = appender(&db);
    for i in 500..516i64 {
        let body = json!({"deployment": "prod", "n": i});
        app.append(&Record::new(RecordKind::Decision, 1_000 + i, format!("d-{i}"), &body).unwrap())
            .unwrap();
    }
    app.close().unwrap();
    let f = failure(&db);
    assert_eq!(f.index, Some(511), "{f}");
    assert!(
        f.to_string()
            .contains("not the leaf hashes of records 496..=511"),
        "{f}"
    );

    // A range that begins inside a block checks it whole: block 0 takes records 0-4 from the
    // rows before the range.
    let wrong_aids = |db: &std::path::Path| {
        let sink = SqliteLedgerSink::open_read_only(db).unwrap();
        let mut wrong = Vec::new();
        let mut visit =
            |index, _: &[u8; 32], bytes: &[u8], check: Option<gavel_ledger::AidCheck<'_>>| {
                let aids = gavel_ledger::RecordAids::from_bytes(bytes).unwrap();
                if check.unwrap()(&aids).is_err() {
                    wrong.push(index);
                }
            };
        gavel_ledger::LedgerSink::visit_records_with_aids(&sink, 5, 40, &mut visit).unwrap();
        wrong
    };
    std::fs::write(&db, &pristine).unwrap();
    assert_eq!(wrong_aids(&db), Vec::<u64>::new());
    tamper(
        &db,
        &format!(
            "{unblocked} UPDATE ledger_leaf_blocks SET hashes = zeroblob(512) WHERE block = 0"
        ),
    );
    assert_eq!(wrong_aids(&db), [15]);

    // A writer of version 4 creates the leaf block table before it upgrades a version-3
    // ledger, in a transaction of its own: what a reader of the version-3 ledger then finds is
    // no edit.
    std::fs::write(&db, &pristine).unwrap();
    let raw = rusqlite::Connection::open(&db).unwrap();
    raw.execute_batch("UPDATE ledger_meta SET value = '3' WHERE key = 'schema_version';")
        .unwrap();
    SqliteLedgerSink::open_read_only(&db)
        .unwrap()
        .verify(&signer().verifier(), strict())
        .unwrap();
    // What a gavel of schema 3 left: no leaf blocks.
    raw.execute_batch(
        "DROP TABLE ledger_leaf_blocks;
         UPDATE ledger_meta SET value = '3' WHERE key = 'schema_version';",
    )
    .unwrap();
    // An edited leaf hash does not stop the upgrade (verify names the record). The copy is of
    // the file, so what the WAL holds goes into it first.
    raw.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    let edited = dir.path("edited.db");
    std::fs::copy(&db, &edited).unwrap();
    tamper(
        &edited,
        "UPDATE ledger_records SET leaf_hash = 'x' WHERE idx = 17",
    );
    assert_eq!(
        (failure(&edited).index, failure(&edited).problem),
        (Some(17), Problem::LeafHash)
    );
    SqliteLedgerSink::open_read_only(&db)
        .unwrap()
        .verify(&signer().verifier(), strict())
        .unwrap();
    assert!(proves(&db, "d-16"));
    let upgraded = SqliteLedgerSink::open(&db).unwrap();
    assert_eq!(leaf_block_rows(&db), expected);
    upgraded.verify(&signer().verifier(), strict()).unwrap();
    // A schema-4 ledger without them was edited: named as such, and proofs read the records.
    // Read only: a writer's schema would put the table back.
    raw.execute_batch("DROP TABLE ledger_leaf_blocks;").unwrap();
    let why = SqliteLedgerSink::open_read_only(&db)
        .unwrap()
        .verify(&signer().verifier(), strict());
    assert!(
        matches!(&why, Err(VerifyError::Failed(f)) if matches!(&f.problem, Problem::QueryAid(what) if what.contains("ledger_leaf_blocks"))),
        "{why:?}"
    );
    assert!(proves(&db, "d-16"));
}

/// Verification while a writer appends: the records and nodes committed after it counted the
/// records are not "inserted" nodes.
#[test]
fn verify_passes_while_a_writer_appends() {
    let dir = TempDir::new("live");
    let db = dir.path("gavel.db");
    three_hundred(&db);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writing = {
        let (db, stop) = (db.clone(), stop.clone());
        std::thread::spawn(move || {
            let app = appender(&db);
            let mut i = 300i64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let body = json!({"deployment": "prod", "n": i});
                let r = Record::new(RecordKind::Decision, 1_000 + i, format!("d-{i}"), &body);
                app.append(&r.unwrap()).unwrap();
                i += 1;
            }
            app.close().unwrap();
            i
        })
    };
    let sink = SqliteLedgerSink::open_read_only(&db).unwrap();
    let live = VerifyOptions {
        require_signed_tail: false,
        ..strict()
    };
    // Until the writer has completed a few dozen nodes while verifications ran.
    for _ in 0..1_000 {
        sink.verify(&signer().verifier(), live).unwrap();
        if gavel_ledger::LedgerSink::record_count(&sink).unwrap() > 1_000 {
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let appended = writing.join().unwrap();
    assert!(appended > 1_000, "{appended}");
    sink.verify(&signer().verifier(), strict()).unwrap();
}

#[test]
fn tampering_in_the_database_is_named() {
    // Checkpoints sign 8, 16, 24 and 31 records; a bad checkpoint is named
    // by the first record it would have been the first to sign.
    let cases: [(&str, Option<u64>); 5] = [
        ("UPDATE ledger_records SET bytes = CAST(replace(CAST(bytes AS TEXT), 'allow', 'deny!') AS BLOB) WHERE idx = 11", Some(11)),
        ("DELETE FROM ledger_records WHERE idx = 20", Some(20)),
        ("DELETE FROM ledger_records WHERE idx >= 25", Some(25)),
        ("DELETE FROM ledger_checkpoints WHERE seq = 2", Some(8)),
        ("UPDATE ledger_checkpoints SET note = replace(note, 'gavel-seq 3', 'gavel-seq 4') WHERE seq = 3", Some(16)),
    ];
    for (sql, index) in cases {
        let f = failure_after(sql);
        assert_eq!(f.index, index, "{sql}: {f}");
    }
}

#[test]
fn columns_of_another_sql_type_are_edits_named_like_any() {
    // Checkpoints sign 8, 16, 24 and 31 records (see `tampering_in_the_database_is_named`).
    let cases: [(&str, Option<u64>, &str); 6] = [
        (
            "UPDATE ledger_records SET leaf_hash = hex(leaf_hash) WHERE idx = 11",
            Some(11),
            "leaf hash",
        ),
        (
            "UPDATE ledger_records SET leaf_hash = substr(leaf_hash, 1, 31) WHERE idx = 12",
            Some(12),
            "leaf hash",
        ),
        (
            "UPDATE ledger_records SET bytes = 7 WHERE idx = 13",
            Some(13),
            "leaf hash",
        ),
        (
            "UPDATE ledger_records SET bytes = CAST(bytes AS TEXT) WHERE idx = 14",
            Some(14),
            "as text, not as a blob",
        ),
        (
            "UPDATE ledger_checkpoints SET size = 'x' WHERE seq = 2",
            Some(8),
            "columns differ",
        ),
        (
            "UPDATE ledger_checkpoints SET note = CAST(note AS BLOB) WHERE seq = 3",
            Some(16),
            "checkpoint does not verify",
        ),
    ];
    for (sql, index, named) in cases {
        let f = failure_after(sql);
        assert_eq!(f.index, index, "{sql}: {f}");
        assert!(f.to_string().contains(named), "{sql}: {f}");
    }
}

/// Read-only, verification changes nothing in the file it checks; so a dropped append-only
/// trigger stays dropped, and is named.
#[test]
fn verifying_read_only_names_a_dropped_trigger_and_leaves_it_dropped() {
    let dir = TempDir::new("trigger");
    let db = dir.path("gavel.db");
    populate(&db);
    let raw = rusqlite::Connection::open(&db).unwrap();
    raw.execute_batch("DROP TRIGGER ledger_records_no_update")
        .unwrap();
    let f = match SqliteLedgerSink::open_read_only(&db)
        .unwrap()
        .verify(&signer().verifier(), strict())
    {
        Err(VerifyError::Failed(f)) => f,
        other => panic!("a dropped trigger was not named: {other:?}"),
    };
    assert!(
        f.to_string()
            .contains("lack the trigger `ledger_records_no_update`"),
        "{f}"
    );
    let still_dropped: i64 = raw
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'ledger_records_no_update'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(still_dropped, 0);
}

/// A ledger written under another schema version is refused, for reading and for writing:
/// this gavel could misread it, or break it by writing.
#[test]
fn a_ledger_of_another_schema_version_is_refused() {
    let dir = TempDir::new("schema");
    let db = dir.path("gavel.db");
    populate(&db);
    let raw = rusqlite::Connection::open(&db).unwrap();
    raw.execute(
        "UPDATE ledger_meta SET value = '5' WHERE key = 'schema_version'",
        [],
    )
    .unwrap();
    for refused in [
        SqliteLedgerSink::open(&db).unwrap_err(),
        SqliteLedgerSink::open_read_only(&db).unwrap_err(),
    ] {
        assert!(
            refused.to_string().contains("schema version is \"5\""),
            "{refused}"
        );
    }
}

/// A copy of record 3's row inserted at `index`.
fn row_copied_to(index: i64) -> String {
    format!(
        "INSERT INTO ledger_records SELECT {index}, id, kind, at_ms, leaf_hash, bytes, deployment,
         approval_id, principal, reason_codes FROM ledger_records WHERE idx = 3"
    )
}

#[test]
fn rows_outside_the_ledger_are_named_without_walking_to_them() {
    // Below 0, verification would never read the row; far above the 31 records, it would read
    // empty ranges for years (2^62) or fail to count them (i64::MAX). Each is named at once.
    let f = failure_after(&row_copied_to(-1));
    assert_eq!(
        (f.index, &f.problem),
        (None, &Problem::RowOutside { index: -1 }),
        "{f}"
    );
    for far in [1_i64 << 62, i64::MAX] {
        let f = failure_after(&row_copied_to(far));
        let found = u64::try_from(far).unwrap();
        assert_eq!(
            (f.index, &f.problem),
            (Some(31), &Problem::IndexGap { found }),
            "{f}"
        );
    }
}

#[test]
fn planted_and_hollowed_lookup_indexes_are_named() {
    let cases = [
        // Another index, partial: an export by deployment that used it would skip record 11.
        (
            "CREATE INDEX ledger_records_deployment ON ledger_records (deployment) WHERE idx <> 11",
            "the index `ledger_records_deployment`",
        ),
        // The id index rebuilt partial, its definition edited back to the whole one's.
        (
            "CREATE TEMP TABLE kept AS SELECT sql FROM sqlite_master WHERE name = 'ledger_records_id';
             DROP INDEX ledger_records_id;
             CREATE INDEX ledger_records_id ON ledger_records (id) WHERE idx <> 11;
             PRAGMA writable_schema = ON;
             UPDATE sqlite_master SET sql = (SELECT sql FROM kept) WHERE name = 'ledger_records_id';
             PRAGMA writable_schema = OFF;",
            "holds 30 entries for 31 records",
        ),
    ];
    for (sql, named) in cases {
        let f = failure_after(sql);
        assert!(matches!(f.problem, Problem::QueryAid(_)), "{sql}: {f}");
        assert!(f.to_string().contains(named), "{sql}: {f}");
    }
}

#[test]
fn edited_query_columns_and_spans_are_named() {
    // `populate`: record i has deployment prod (even) or staging, approval ap-(i % 3),
    // principal alice (i < 10) or bob, reason codes pii and cost when i % 5 == 0; the
    // appender commits them one by one, so each has a span of its own.
    let cases: [(&str, u64, &str); 13] = [
        (
            "UPDATE ledger_records SET approval_id = 'ap-9' WHERE idx = 4",
            4,
            "`approval_id` column",
        ),
        (
            "UPDATE ledger_records SET approval_id = NULL WHERE idx = 5",
            5,
            "`approval_id` column",
        ),
        (
            "UPDATE ledger_records SET deployment = 'prod' WHERE idx = 7",
            7,
            "`deployment` column",
        ),
        (
            "UPDATE ledger_records SET principal = 'alice' WHERE idx = 12",
            12,
            "`principal` column",
        ),
        (
            "UPDATE ledger_records SET reason_codes = NULL WHERE idx = 10",
            10,
            "`reason_codes` column",
        ),
        (
            "UPDATE ledger_records SET reason_codes = 'pii' WHERE idx = 15",
            15,
            "not a JSON list",
        ),
        (
            "UPDATE ledger_records SET id = 'd-99' WHERE idx = 3",
            3,
            "`id` column",
        ),
        (
            "UPDATE ledger_records SET kind = 'kill' WHERE idx = 2",
            2,
            "`kind` column",
        ),
        (
            "UPDATE ledger_records SET at_ms = 0 WHERE idx = 6",
            6,
            "`at_ms` column",
        ),
        (
            "DELETE FROM ledger_approval_spans WHERE first_idx = 9",
            9,
            "no span of approval \"ap-0\" covers this record",
        ),
        // A column of another type is an edit too, not a storage error.
        (
            "UPDATE ledger_records SET approval_id = CAST('ap-2' AS BLOB) WHERE idx = 8",
            8,
            "`approval_id` column holds blob data",
        ),
        (
            "UPDATE ledger_records SET at_ms = 1008.5 WHERE idx = 8",
            8,
            "`at_ms` column",
        ),
        (
            "UPDATE ledger_approval_spans SET last_idx = 0 WHERE first_idx = 13",
            13,
            "ends at 0, before it begins",
        ),
    ];
    for (sql, index, named) in cases {
        let f = failure_after(sql);
        assert_eq!(f.index, Some(index), "{sql}: {f}");
        assert!(matches!(f.problem, Problem::QueryAid(_)), "{sql}: {f}");
        assert!(f.to_string().contains(named), "{sql}: {f}");
    }
    // A span bound of another type is an edit of the spans too, not a storage error, and an
    // edited record later in the ledger is still the problem named first.
    let span_of_text = "UPDATE ledger_approval_spans SET last_idx = 'x5' WHERE first_idx = 11";
    for (also, index, named) in [
        ("", None, "a span holds a value of the wrong type"),
        (
            "UPDATE ledger_records SET bytes = x'00' WHERE idx = 20",
            Some(20),
            "record edited",
        ),
    ] {
        let f = failure_after(&format!("{span_of_text}; {also}"));
        assert_eq!(f.index, index, "{also}: {f}");
        assert!(f.to_string().contains(named), "{also}: {f}");
    }
    // A span that covers more than its approval's records, without overlapping another of
    // the same approval, hides nothing: queries check `approval_id` within a span.
    let dir = TempDir::new("aids-wide");
    let db = dir.path("gavel.db");
    populate(&db);
    tamper(
        &db,
        "INSERT INTO ledger_approval_spans (approval_id, first_idx, last_idx) VALUES ('ap-1', 100, 200)",
    );
    SqliteLedgerSink::open(&db)
        .unwrap()
        .verify(&signer().verifier(), strict())
        .unwrap();
}

#[test]
fn query_aids_checked_chunk_by_chunk_name_the_first_edit() {
    // Enough records for several of verification's chunks (4,096 records each, read and
    // checked on connections of their own): an edit in a later chunk is found, and of edits
    // in two chunks the earlier one is named.
    let dir = TempDir::new("aids-chunks");
    let db = dir.path("gavel.db");
    let app = appender(&db);
    // A count that leaves the last chunk nearly empty.
    let pending: Vec<_> = (0..8_195i64)
        .map(|i| {
            let body = json!({"approval_id": format!("ap-{}", i % 4), "deployment": "prod"});
            app.submit(&Record::new(RecordKind::Decision, i, format!("d-{i}"), &body).unwrap())
                .unwrap()
        })
        .collect();
    for p in pending {
        p.wait().unwrap();
    }
    app.close().unwrap();
    let pristine = std::fs::read(&db).unwrap();
    // Spans follow the batches the writer happened to commit: the first record a deleted span
    // covered (its first index) is the one named.
    let first_uncovered: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row(
            "SELECT MIN(first_idx) FROM ledger_approval_spans WHERE approval_id = 'ap-3' AND last_idx >= 6000",
            [],
            |r| r.get(0),
        )
        .unwrap();
    // Where chunks begin and end, each edited alone.
    for index in [0, 4_095, 4_096, 8_191, 8_192, 8_194] {
        let sql = format!("UPDATE ledger_records SET principal = 'x' WHERE idx = {index}");
        std::fs::write(&db, &pristine).unwrap();
        tamper(&db, &sql);
        let f = failure(&db);
        assert_eq!(f.index, Some(index), "{sql}: {f}");
        assert!(matches!(f.problem, Problem::QueryAid(_)), "{sql}: {f}");
    }
    for (sql, index) in [
        (
            "UPDATE ledger_records SET deployment = 'staging' WHERE idx = 8190",
            8190,
        ),
        (
            "UPDATE ledger_records SET deployment = 'staging' WHERE idx IN (40, 8190)",
            40,
        ),
        (
            "UPDATE ledger_records SET deployment = 'staging' WHERE idx IN (4100, 8190)",
            4100,
        ),
        (
            "UPDATE ledger_records SET principal = 'x' WHERE idx IN (4095, 4096, 4097)",
            4095,
        ),
        (
            "DELETE FROM ledger_approval_spans WHERE approval_id = 'ap-3' AND last_idx >= 6000",
            first_uncovered as u64,
        ),
    ] {
        std::fs::write(&db, &pristine).unwrap();
        tamper(&db, sql);
        let f = failure(&db);
        assert_eq!(f.index, Some(index), "{sql}: {f}");
        assert!(matches!(f.problem, Problem::QueryAid(_)), "{sql}: {f}");
    }
    std::fs::write(&db, &pristine).unwrap();
    SqliteLedgerSink::open(&db)
        .unwrap()
        .verify(&signer().verifier(), strict())
        .unwrap();
}

#[test]
fn a_consistently_rehashed_edit_is_caught_by_the_signed_root() {
    let dir = TempDir::new("rehash");
    let db = dir.path("gavel.db");
    populate(&db);
    let forged = Record::new(
        RecordKind::Decision,
        1_011,
        "d-11",
        &json!({"verdict": "deny"}),
    )
    .unwrap()
    .canonical_bytes()
    .unwrap();
    let raw = rusqlite::Connection::open(&db).unwrap();
    raw.execute("DROP TRIGGER ledger_records_no_update", [])
        .unwrap();
    raw.execute(
        "UPDATE ledger_records SET bytes = ?1, leaf_hash = ?2 WHERE idx = 11",
        rusqlite::params![forged, &leaf_hash(&forged)[..]],
    )
    .unwrap();
    let f = failure(&db);
    // Checkpoints sign 8, 16, 24, 31: record 11 lies in 8..16.
    assert_eq!(f.index, Some(8));
    assert!(
        matches!(f.problem, Problem::RootMismatch { size: 16, .. }),
        "{f}"
    );
}

#[test]
fn key_files_are_owner_only() {
    let dir = TempDir::new("keys");
    let path = dir.path("ledger.key");
    let signer = create_signing_key(&path, "gavel.example/ledger").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let loaded = load_signing_key(&path).unwrap();
    assert_eq!(public_key(&loaded), public_key(&signer));
    let v = NoteVerifier::parse(&public_key(&loaded)).unwrap();
    assert_eq!(v.name(), "gavel.example/ledger");
    assert!(
        create_signing_key(&path, "again").is_err(),
        "must not overwrite a key"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load_signing_key(&path).is_err());
    }
}

#[test]
fn forgetting_a_subject_shreds_payloads_and_keeps_the_ledger_valid() {
    let dir = TempDir::new("payload");
    let db = dir.path("gavel.db");
    let sink = SqliteLedgerSink::open(&db).unwrap();
    let prompt = b"my card number is 4111 1111 1111 1111";
    let hash = gavel_ledger::payload::payload_hash(prompt);
    sink.store_payload("user-9", "d-1", "input", prompt)
        .unwrap();
    sink.store_payload("user-8", "d-2", "input", b"other")
        .unwrap();
    let app = appender(&db);
    app.append(
        &Record::new(
            RecordKind::Decision,
            1,
            "d-1",
            &json!({"input_sha256": hash}),
        )
        .unwrap(),
    )
    .unwrap();
    app.close().unwrap();
    assert_eq!(
        sink.load_payload("d-1", "input").unwrap().as_deref(),
        Some(&prompt[..])
    );
    let raw = rusqlite::Connection::open(&db).unwrap();
    let key: Vec<u8> = raw
        .query_row(
            "SELECT key FROM ledger_payload_keys WHERE subject = 'user-9'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    drop(raw);
    // Only ciphertext was ever stored.
    let db_bytes = std::fs::read(&db).unwrap();
    assert!(!db_bytes.windows(prompt.len()).any(|w| w == prompt));
    assert!(sink.forget("user-9").unwrap());
    assert!(!sink.forget("user-9").unwrap());
    assert_eq!(sink.load_payload("d-1", "input").unwrap(), None);
    assert_eq!(
        sink.load_payload("d-2", "input").unwrap().as_deref(),
        Some(&b"other"[..])
    );
    sink.verify(&signer().verifier(), strict()).unwrap();
    // The destroyed key is gone from the database and its WAL, not just
    // unlinked from the table.
    for f in ["gavel.db", "gavel.db-wal"] {
        if let Ok(bytes) = std::fs::read(dir.path(f)) {
            assert!(
                !bytes.windows(key.len()).any(|w| w == key.as_slice()),
                "key bytes remain in {f}"
            );
        }
    }
}

/// A record written into a database file someone deleted would vanish when the ledger closes:
/// it must not be acknowledged as durable.
#[test]
fn appends_fail_once_the_database_file_is_deleted() {
    for deleted in ["gavel.db", "gavel.db-wal"] {
        let dir = TempDir::new("deleted");
        let db = dir.path("gavel.db");
        let app = appender(&db);
        let record =
            |i: i64| Record::new(RecordKind::Decision, i, format!("d-{i}"), &json!({})).unwrap();
        app.append(&record(0)).unwrap();
        std::fs::remove_file(dir.path(deleted)).unwrap();
        let refused = app.append(&record(1)).unwrap_err();
        assert!(
            refused.to_string().contains("was deleted"),
            "{deleted}: {refused}"
        );
        assert!(app.failure().is_some());
    }
}
