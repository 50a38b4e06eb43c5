//! Records by approval, found through approval spans: every batch shape and every way of
//! asking (oldest or newest first, with a limit) gives exactly the records a full scan would,
//! and a ledger made by schema 1 (an index on approval_id) is upgraded in place.

// Test helpers outside #[test] fns may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::TempDir;
use gavel_ledger::merkle::leaf_hash;
use gavel_ledger::{
    AppendRecord, LedgerSink, NoteSigner, Record, RecordKind, VerifyError, VerifyOptions,
};
use gavel_ledger_sqlite::{ExportFilter, SqliteLedgerSink};
use proptest::prelude::*;
use serde_json::json;

const APPROVALS: [&str; 3] = ["apr-a", "apr-b", "apr-c"];

/// `audit verify` over records appended without checkpoints (so any key verifies them), with
/// the query aids checked: what it says of the spans.
fn verify_aids(sink: &SqliteLedgerSink, records: usize) -> Result<(), VerifyError> {
    let verifier = NoteSigner::from_seed("gavel.test/spans", &[3u8; 32])
        .unwrap()
        .verifier();
    let report = sink.verify(&verifier, VerifyOptions::default())?;
    assert_eq!(report.records, records as u64);
    Ok(())
}

/// Appends batches straight through the sink; each record names `APPROVALS[n]`, or no
/// approval for `None`. Returns every record's approval in index order.
fn append_batches(
    sink: &mut SqliteLedgerSink,
    batches: &[Vec<Option<usize>>],
) -> Vec<Option<usize>> {
    let mut approvals = Vec::new();
    for batch in batches {
        let records: Vec<AppendRecord> = batch
            .iter()
            .map(|&approval| {
                let index = approvals.len() as u64;
                approvals.push(approval);
                let body = match approval {
                    Some(a) => json!({"approval_id": APPROVALS[a], "verdict": "ALLOW"}),
                    None => json!({"verdict": "BLOCK"}),
                };
                let record = Record::new(
                    RecordKind::Decision,
                    index as i64,
                    format!("d-{index}"),
                    &body,
                )
                .unwrap();
                let bytes = record.canonical_bytes().unwrap();
                AppendRecord {
                    index,
                    leaf_hash: leaf_hash(&bytes),
                    bytes,
                    id: record.id.clone(),
                    kind: record.kind,
                    at_ms: record.at_ms,
                    fields: record.index_fields(),
                }
            })
            .collect();
        sink.append(&records, &[], None).unwrap();
    }
    approvals
}

fn ids_under(
    sink: &SqliteLedgerSink,
    approval: &str,
    newest_first: bool,
    limit: Option<u64>,
) -> Vec<String> {
    let filter = ExportFilter {
        approval_id: Some(approval.to_owned()),
        newest_first,
        limit,
        ..Default::default()
    };
    sink.query(&filter)
        .unwrap()
        .into_iter()
        .map(|e| e.record.id)
        .collect()
}

/// What a scan of every record finds.
fn expected(
    approvals: &[Option<usize>],
    a: usize,
    newest_first: bool,
    limit: Option<u64>,
) -> Vec<String> {
    let mut ids: Vec<String> = (0..approvals.len())
        .filter(|&i| approvals[i] == Some(a))
        .map(|i| format!("d-{i}"))
        .collect();
    if newest_first {
        ids.reverse();
    }
    ids.truncate(limit.map_or(usize::MAX, |n| n as usize));
    ids
}

/// Batches of records under no approval or one of three, with long runs of unrelated records
/// now and then, so that spans sit both closer and farther apart than the merging distance.
fn batches() -> impl Strategy<Value = Vec<Vec<Option<usize>>>> {
    let record = prop_oneof![
        3 => (0..APPROVALS.len()).prop_map(Some),
        1 => Just(None),
    ];
    let batch = prop_oneof![
        4 => prop::collection::vec(record, 1..12),
        1 => (50usize..150).prop_map(|n| vec![None; n]),
    ];
    prop::collection::vec(batch, 1..25)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn records_by_approval_are_exactly_what_a_scan_finds(
        batches in batches(),
        limit in prop::option::of(1u64..20),
    ) {
        let dir = TempDir::new("spans");
        let mut sink = SqliteLedgerSink::open(dir.path("gavel.db")).unwrap();
        let approvals = append_batches(&mut sink, &batches);
        for (a, name) in APPROVALS.iter().enumerate() {
            for newest_first in [false, true] {
                for limit in [None, limit] {
                    prop_assert_eq!(
                        ids_under(&sink, name, newest_first, limit),
                        expected(&approvals, a, newest_first, limit),
                        "approval {} newest_first {} limit {:?}", name, newest_first, limit
                    );
                }
            }
        }
        prop_assert!(ids_under(&sink, "apr-unknown", false, None).is_empty());
        // Whatever the batches, the spans the sink wrote are disjoint and cover every record
        // under each approval.
        verify_aids(&sink, approvals.len()).unwrap();
    }
}

#[test]
fn a_schema_1_ledger_is_upgraded_in_place() {
    let dir = TempDir::new("schema1");
    let db = dir.path("gavel.db");
    let batches = vec![
        vec![Some(0), Some(1), None],
        vec![Some(1); 4],
        vec![None; 90],
        vec![Some(0), Some(2)],
    ];
    let approvals = {
        let mut sink = SqliteLedgerSink::open(&db).unwrap();
        append_batches(&mut sink, &batches)
    };
    // Turn it into what schema 1 left: no spans nor leaf blocks, an index on approval_id,
    // version 1.
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "DROP TABLE ledger_approval_spans;
         DROP TABLE ledger_leaf_blocks;
         CREATE INDEX ledger_records_approval ON ledger_records (approval_id) WHERE approval_id IS NOT NULL;
         UPDATE ledger_meta SET value = '1' WHERE key = 'schema_version';",
    )
    .unwrap();
    let sink = SqliteLedgerSink::open(&db).unwrap();
    // The upgrade's spans cover the old records, and the new batches' spans follow them.
    verify_aids(&sink, approvals.len()).unwrap();
    for (a, name) in APPROVALS.iter().enumerate() {
        assert_eq!(
            ids_under(&sink, name, false, None),
            expected(&approvals, a, false, None)
        );
        assert_eq!(
            ids_under(&sink, name, true, Some(2)),
            expected(&approvals, a, true, Some(2))
        );
    }
    let index_left: bool = conn
        .prepare("SELECT 1 FROM sqlite_master WHERE name = 'ledger_records_approval'")
        .unwrap()
        .exists([])
        .unwrap();
    assert!(!index_left, "the schema 1 index is dropped");
    let version: String = conn
        .query_row(
            "SELECT value FROM ledger_meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(version, "4");
    // Spans are append-only like the records they point at.
    assert!(conn
        .execute("DELETE FROM ledger_approval_spans", [])
        .is_err());
}

#[test]
fn an_overlapping_span_neither_repeats_nor_hides_a_record_and_verify_names_it() {
    let dir = TempDir::new("overlap");
    let db = dir.path("gavel.db");
    // Records of apr-b at 100, 201, 302, 403, 504 and 605: spans too far apart to be merged.
    let mut batches = Vec::new();
    for _ in 0..6 {
        batches.push(vec![None; 100]);
        batches.push(vec![Some(1)]);
    }
    let approvals = {
        let mut sink = SqliteLedgerSink::open(&db).unwrap();
        append_batches(&mut sink, &batches)
    };
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "DROP TRIGGER ledger_approval_spans_no_update; DROP TRIGGER ledger_approval_spans_no_delete;
         INSERT INTO ledger_approval_spans (approval_id, first_idx, last_idx) VALUES ('apr-b', 0, 2000);",
    )
    .unwrap();
    let sink = SqliteLedgerSink::open(&db).unwrap();
    for newest_first in [false, true] {
        for limit in [None, Some(5)] {
            assert_eq!(
                ids_under(&sink, "apr-b", newest_first, limit),
                expected(&approvals, 1, newest_first, limit),
                "newest_first {newest_first} limit {limit:?}"
            );
        }
    }
    let Err(VerifyError::Failed(failure)) = verify_aids(&sink, approvals.len()) else {
        panic!("an overlapping span passed");
    };
    assert!(
        failure
            .to_string()
            .contains("spans of approval \"apr-b\" overlap"),
        "{failure}"
    );
}
