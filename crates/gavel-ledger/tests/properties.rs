//! Property tests: proofs for random trees, and tamper detection over random
//! ledgers (every single edit, deletion, insertion, reordering or truncation
//! of stored records or checkpoints must make `verify` fail).

// Test helpers outside #[test] fns may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use gavel_ledger::merkle::{
    consistency_ranges, inclusion_ranges, leaf_hash, node_hash, verify_consistency,
    verify_inclusion, Hash, MerkleFrontier, MerkleTree, RangeHashes, EMPTY_ROOT,
};
use gavel_ledger::{
    verify_records, Appender, AppenderConfig, IndexFields, MemorySink, NoteSigner, Record,
    RecordAids, RecordKind, StoredCheckpoint, StoredRecord, VerifyError, VerifyOptions,
};
use proptest::prelude::*;
use serde_json::json;
use std::sync::OnceLock;
use std::time::Duration;

/// RFC 6962 section 2.1 MTH, written straight from the definition.
fn reference_root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => EMPTY_ROOT,
        1 => leaves[0],
        n => {
            let k = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros());
            node_hash(&reference_root(&leaves[..k]), &reference_root(&leaves[k..]))
        }
    }
}

fn leaves(n: u64) -> Vec<Hash> {
    (0..n).map(|i| leaf_hash(&i.to_le_bytes())).collect()
}

/// A tampered copy of a proof: flip a bit, drop, add or duplicate a hash.
fn tamper_proof(proof: &[Hash], how: u8, at: usize) -> Option<Vec<Hash>> {
    let mut p = proof.to_vec();
    match how % 3 {
        0 if !p.is_empty() => {
            let i = at % p.len();
            p[i][at % 32] ^= 1 << (at % 8);
        }
        1 if !p.is_empty() => {
            p.remove(at % p.len());
        }
        2 => p.insert(at % (p.len() + 1), [at as u8; 32]),
        _ => return None,
    }
    Some(p)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn roots_match_the_definition(n in 0u64..300) {
        let ls = leaves(n);
        let t = MerkleTree::from_leaf_hashes(ls.iter().copied());
        prop_assert_eq!(t.root(), reference_root(&ls));
        for size in [0, n / 3, n / 2, n] {
            prop_assert_eq!(t.root_at(size), Some(reference_root(&ls[..size as usize])));
        }
    }

    /// The right edge alone gives the root the whole tree gives, at every size, and keeps one
    /// hash per bit set in its size.
    #[test]
    fn the_frontier_roots_are_the_trees(n in 0u64..600) {
        let ls = leaves(n);
        let tree = MerkleTree::from_leaf_hashes(ls.iter().copied());
        let mut frontier = MerkleFrontier::new();
        prop_assert_eq!(frontier.root(), EMPTY_ROOT);
        for (i, leaf) in ls.iter().enumerate() {
            frontier.push(*leaf);
            let size = i as u64 + 1;
            prop_assert_eq!(frontier.len(), size);
            prop_assert_eq!(Some(frontier.root()), tree.root_at(size));
            prop_assert_eq!(frontier.hashes(), size.count_ones() as usize);
        }
    }

    /// Proofs built from leaves read once (and, below the old size, the frontier's blocks) are
    /// the proofs the whole tree gives.
    #[test]
    fn proofs_from_streamed_leaves_are_the_trees(n in 1u64..700, i in any::<u64>(), m in any::<u64>()) {
        let ls = leaves(n);
        let tree = MerkleTree::from_leaf_hashes(ls.iter().copied());
        let index = i % n;
        let mut streamed = RangeHashes::new(inclusion_ranges(index, n).unwrap(), 0);
        ls.iter().for_each(|l| streamed.push(*l));
        prop_assert_eq!(streamed.hashes(), Some(tree.inclusion_proof(index, n).unwrap()));

        let old = m % (n + 1);
        let mut frontier = MerkleFrontier::new();
        ls[..old as usize].iter().for_each(|l| frontier.push(*l));
        let mut streamed = RangeHashes::new(consistency_ranges(old, n).unwrap(), old);
        streamed.known(frontier.blocks());
        ls[old as usize..].iter().for_each(|l| streamed.push(*l));
        prop_assert_eq!(streamed.hashes(), Some(tree.consistency_proof(old, n).unwrap()));
    }

    #[test]
    fn inclusion_proofs_verify_and_tampered_fail(n in 1u64..2000, i in any::<u64>(), how in any::<u8>(), at in any::<usize>()) {
        let ls = leaves(n);
        let t = MerkleTree::from_leaf_hashes(ls.iter().copied());
        let index = i % n;
        let root = t.root();
        let proof = t.inclusion_proof(index, n).unwrap();
        prop_assert!(verify_inclusion(&ls[index as usize], index, n, &proof, &root).is_ok());
        if let Some(bad) = tamper_proof(&proof, how, at) {
            prop_assert!(verify_inclusion(&ls[index as usize], index, n, &bad, &root).is_err());
        }
        // Wrong leaf, index or root all fail. (A wrong size can verify with
        // the right root for some indexes: the signed checkpoint, not the
        // proof, binds the size to the root.)
        prop_assert!(verify_inclusion(&leaf_hash(b"other"), index, n, &proof, &root).is_err());
        if n > 1 {
            let other = (index + 1 + (i >> 32) % (n - 1)) % n;
            prop_assert!(verify_inclusion(&ls[index as usize], other, n, &proof, &root).is_err());
        }
        let mut wrong_root = root;
        wrong_root[at % 32] ^= 1;
        prop_assert!(verify_inclusion(&ls[index as usize], index, n, &proof, &wrong_root).is_err());
    }

    #[test]
    fn consistency_proofs_verify_and_tampered_fail(n in 1u64..2000, m in any::<u64>(), how in any::<u8>(), at in any::<usize>()) {
        let old = m % (n + 1);
        let t = MerkleTree::from_leaf_hashes(leaves(n));
        let (r1, r2) = (t.root_at(old).unwrap(), t.root());
        let proof = t.consistency_proof(old, n).unwrap();
        prop_assert!(verify_consistency(old, n, &r1, &r2, &proof).is_ok());
        if let Some(bad) = tamper_proof(&proof, how, at) {
            prop_assert!(verify_consistency(old, n, &r1, &r2, &bad).is_err());
        }
        if old > 0 {
            let mut wrong = r1;
            wrong[at % 32] ^= 1;
            prop_assert!(verify_consistency(old, n, &wrong, &r2, &proof).is_err());
            let mut wrong = r2;
            wrong[at % 32] ^= 1;
            prop_assert!(verify_consistency(old, n, &r1, &wrong, &proof).is_err());
        }
    }

    #[test]
    fn jcs_numbers_round_trip(bits in any::<u64>()) {
        let f = f64::from_bits(bits);
        prop_assume!(f.is_finite());
        let mut out = Vec::new();
        gavel_ledger::jcs::write_f64(&mut out, f);
        let back: f64 = std::str::from_utf8(&out).unwrap().parse().unwrap();
        prop_assert!(back == f, "{} -> {}", f, String::from_utf8_lossy(&out));
    }
}

fn signer() -> NoteSigner {
    NoteSigner::from_seed("gavel.test/ledger", &[42u8; 32]).unwrap()
}

/// A ledger of `n` decision records with a checkpoint every `every` records,
/// closed cleanly so a final checkpoint covers everything.
fn build_ledger(n: usize, every: u64) -> (Vec<StoredRecord>, Vec<StoredCheckpoint>) {
    let sink = MemorySink::new();
    let config = AppenderConfig {
        checkpoint_every: every,
        checkpoint_interval: Duration::from_secs(3600),
        max_batch: 4,
        ..AppenderConfig::default()
    };
    let app = Appender::start(sink.clone(), signer(), config).unwrap();
    for i in 0..n {
        let body = json!({"deployment": "prod", "verdict": if i % 3 == 0 { "deny" } else { "allow" }, "n": i});
        app.append(
            &Record::new(
                RecordKind::Decision,
                1_700_000_000_000 + i as i64,
                format!("d-{i}"),
                &body,
            )
            .unwrap(),
        )
        .unwrap();
    }
    app.close().unwrap();
    sink.snapshot()
}

type Ledger = (usize, Vec<StoredRecord>, Vec<StoredCheckpoint>);

/// Random-shaped ledgers built (and checked to verify) once, so each property
/// case pays only for tampering and one verification.
fn ledger_pool() -> &'static [Ledger] {
    static POOL: OnceLock<Vec<Ledger>> = OnceLock::new();
    POOL.get_or_init(|| {
        let mut pool = Vec::new();
        for n in 1..24 {
            for every in [1, 2, 3, 5, 8, 13] {
                let (recs, cps) = build_ledger(n, every);
                let report = verify(&recs, &cps).unwrap();
                assert_eq!((report.records, report.unsigned_tail), (n as u64, 0));
                pool.push((n, recs, cps));
            }
        }
        pool
    })
}

fn strict() -> VerifyOptions {
    VerifyOptions {
        check_format: true,
        check_query_aids: true,
        require_signed_tail: true,
    }
}

fn verify(
    records: &[StoredRecord],
    cps: &[StoredCheckpoint],
) -> Result<gavel_ledger::VerifyReport, VerifyError> {
    verify_records(
        records.iter().cloned().map(Ok),
        cps,
        &signer().verifier(),
        strict(),
    )
}

/// Re-numbers records by position, as an attacker rewriting rows would.
fn renumber(records: &mut [StoredRecord]) {
    for (i, r) in records.iter_mut().enumerate() {
        r.index = i as u64;
    }
}

#[derive(Debug, Clone)]
enum Tamper {
    /// Flip one bit of a record's bytes, keeping its stored leaf hash.
    EditBytes {
        rec: usize,
        byte: usize,
    },
    /// Edit bytes and recompute the stored leaf hash to match.
    EditBytesAndHash {
        rec: usize,
        byte: usize,
    },
    DeleteRecord {
        rec: usize,
        renumber: bool,
    },
    InsertRecord {
        at: usize,
        renumber: bool,
    },
    SwapRecords {
        a: usize,
        b: usize,
    },
    TruncateRecords {
        keep: usize,
    },
    EditCheckpoint {
        cp: usize,
        ch: usize,
    },
    DeleteCheckpoint {
        cp: usize,
    },
    DuplicateCheckpoint {
        cp: usize,
    },
    SwapCheckpoints {
        a: usize,
        b: usize,
    },
    TruncateCheckpoints {
        keep: usize,
    },
}

fn tamper_strategy() -> impl Strategy<Value = Tamper> {
    let i = any::<usize>;
    prop_oneof![
        (i(), i()).prop_map(|(rec, byte)| Tamper::EditBytes { rec, byte }),
        (i(), i()).prop_map(|(rec, byte)| Tamper::EditBytesAndHash { rec, byte }),
        (i(), any::<bool>()).prop_map(|(rec, renumber)| Tamper::DeleteRecord { rec, renumber }),
        (i(), any::<bool>()).prop_map(|(at, renumber)| Tamper::InsertRecord { at, renumber }),
        (i(), i()).prop_map(|(a, b)| Tamper::SwapRecords { a, b }),
        i().prop_map(|keep| Tamper::TruncateRecords { keep }),
        (i(), i()).prop_map(|(cp, ch)| Tamper::EditCheckpoint { cp, ch }),
        i().prop_map(|cp| Tamper::DeleteCheckpoint { cp }),
        i().prop_map(|cp| Tamper::DuplicateCheckpoint { cp }),
        (i(), i()).prop_map(|(a, b)| Tamper::SwapCheckpoints { a, b }),
        i().prop_map(|keep| Tamper::TruncateCheckpoints { keep }),
    ]
}

/// Applies the tamper; false if it is a no-op for this ledger (e.g. swapping
/// an element with itself), which the property then skips.
fn apply(t: &Tamper, recs: &mut Vec<StoredRecord>, cps: &mut Vec<StoredCheckpoint>) -> bool {
    let (n, c) = (recs.len(), cps.len());
    match *t {
        Tamper::EditBytes { rec, byte } | Tamper::EditBytesAndHash { rec, byte } => {
            let r = &mut recs[rec % n];
            let b = byte % r.bytes.len();
            r.bytes[b] ^= 1 << (byte % 8);
            if matches!(t, Tamper::EditBytesAndHash { .. }) {
                r.leaf_hash = leaf_hash(&r.bytes);
            }
        }
        Tamper::DeleteRecord { rec, renumber: re } => {
            recs.remove(rec % n);
            if re {
                renumber(recs);
            }
        }
        Tamper::InsertRecord { at, renumber: re } => {
            let forged = Record::new(
                RecordKind::Decision,
                0,
                "forged",
                &json!({"verdict": "allow"}),
            )
            .unwrap()
            .canonical_bytes()
            .unwrap();
            let pos = at % (n + 1);
            recs.insert(
                pos,
                StoredRecord {
                    index: pos as u64,
                    leaf_hash: leaf_hash(&forged),
                    bytes: forged,
                },
            );
            if re {
                renumber(recs);
            }
        }
        Tamper::SwapRecords { a, b } => {
            if a % n == b % n {
                return false;
            }
            recs.swap(a % n, b % n);
            renumber(recs);
        }
        Tamper::TruncateRecords { keep } => recs.truncate(keep % n),
        Tamper::EditCheckpoint { cp, ch } => {
            let note = &mut cps[cp % c].note;
            let chars: Vec<char> = note.chars().collect();
            let i = ch % chars.len();
            let replacement = if chars[i] == 'A' { 'B' } else { 'A' };
            *note = chars
                .iter()
                .enumerate()
                .map(|(j, &x)| if j == i { replacement } else { x })
                .collect();
        }
        Tamper::DeleteCheckpoint { cp } => {
            cps.remove(cp % c);
        }
        Tamper::DuplicateCheckpoint { cp } => {
            let dup = cps[cp % c].clone();
            cps.insert(cp % c, dup);
        }
        Tamper::SwapCheckpoints { a, b } => {
            if a % c == b % c {
                return false;
            }
            cps.swap(a % c, b % c);
        }
        Tamper::TruncateCheckpoints { keep } => cps.truncate(keep % c),
    }
    true
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_single_tamper_is_detected(pick in any::<usize>(), t in tamper_strategy()) {
        let pool = ledger_pool();
        let (n, mut recs, mut cps) = pool[pick % pool.len()].clone();
        prop_assume!(apply(&t, &mut recs, &mut cps));
        match verify(&recs, &cps) {
            Err(VerifyError::Failed(f)) => {
                // The named index is always within the ledger as stored or
                // as signed.
                if let Some(i) = f.index {
                    prop_assert!(i <= n as u64 + 1, "index {} for ledger of {}", i, n);
                }
            }
            other => prop_assert!(false, "tamper {:?} not detected: {:?}", t, other),
        }
    }
}

#[test]
fn an_edited_record_is_named_exactly() {
    let (mut recs, cps) = build_ledger(30, 7);
    recs[17].bytes[5] ^= 1;
    match verify(&recs, &cps) {
        Err(VerifyError::Failed(f)) => {
            assert_eq!(f.index, Some(17));
            assert_eq!(f.problem, gavel_ledger::Problem::LeafHash);
        }
        other => panic!("not detected: {other:?}"),
    }
}

#[test]
fn a_rehashed_edit_is_named_by_its_checkpoint_range() {
    let (mut recs, cps) = build_ledger(30, 7);
    // A well-formed, canonical replacement: only the signed roots can tell.
    let forged = Record::new(
        RecordKind::Decision,
        0,
        "d-17",
        &json!({"verdict": "allow"}),
    )
    .unwrap()
    .canonical_bytes()
    .unwrap();
    recs[17].leaf_hash = leaf_hash(&forged);
    recs[17].bytes = forged;
    match verify(&recs, &cps) {
        Err(VerifyError::Failed(f)) => {
            // Checkpoints sign sizes 7, 14, 21, 28, 30: record 17 is in 14..21.
            assert_eq!(f.index, Some(14));
            assert!(
                matches!(
                    f.problem,
                    gavel_ledger::Problem::RootMismatch { size: 21, .. }
                ),
                "{f}"
            );
        }
        other => panic!("not detected: {other:?}"),
    }
}

/// A valid proof file for the no-panic property below.
fn proof_json() -> &'static (String, String) {
    static PROOF: OnceLock<(String, String)> = OnceLock::new();
    PROOF.get_or_init(|| {
        let sink = MemorySink::new();
        let app = Appender::start(sink.clone(), signer(), AppenderConfig::default()).unwrap();
        for i in 0..5 {
            app.append(
                &Record::new(RecordKind::Decision, i, format!("d-{i}"), &json!({"n": i})).unwrap(),
            )
            .unwrap();
        }
        app.close().unwrap();
        let v = signer().verifier();
        let bundle = gavel_ledger::Prover::new(v.clone())
            .prove(&sink, 3)
            .unwrap();
        (serde_json::to_string(&bundle).unwrap(), v.to_string())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Parsers of outside input return errors, never panic, on arbitrary or
    /// corrupted input; a corrupted proof file is always rejected.
    #[test]
    fn parsers_never_panic(junk in proptest::collection::vec(any::<u8>(), 0..300), at in any::<usize>(), byte in any::<u8>()) {
        let text = String::from_utf8_lossy(&junk);
        let _ = Record::from_canonical(&junk);
        let _ = gavel_ledger::Checkpoint::parse(&text);
        let _ = gavel_ledger::NoteVerifier::parse(&text);
        let _ = gavel_ledger::NoteSigner::from_private_key(&text);
        let _ = signer().verifier().open(&text);
        let (json, key) = proof_json();
        let _ = gavel_ledger::check_proof_json(&text, key);
        let mut corrupted = json.clone().into_bytes();
        let i = at % corrupted.len();
        corrupted[i] = byte;
        let corrupted = String::from_utf8_lossy(&corrupted);
        if corrupted != json.as_str() {
            // Every byte of a proof file matters: any change is rejected.
            prop_assert!(gavel_ledger::check_proof_json(&corrupted, key).is_err(), "accepted: {}", corrupted);
        }
        prop_assert!(gavel_ledger::check_proof_json(json, key).is_ok());
    }
}

/// Random JSON values: strings with controls, quotes, non-BMP characters;
/// safe integers and finite doubles; nested arrays and objects.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        (-(1i64 << 53)..=(1i64 << 53)).prop_map(|i| json!(i)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "[\\x00-\\x1f\"\\\\a-z\u{e000}\u{ffff}\u{1f600}]{0,8}".prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map(
                "[\\x00-\\x1f\\\\a-z\u{e000}\u{1f600}\"]{0,4}",
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Canonical bytes parse back to the same value (numbers as doubles),
    /// canonicalising again is a no-op, and records built from such bodies
    /// pass the format check.
    #[test]
    fn canonical_json_round_trips(v in json_value()) {
        let bytes = gavel_ledger::jcs::to_vec(&v).unwrap();
        let back: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        prop_assert!(same_json(&back, &v), "{} is not {}", back, v);
        prop_assert_eq!(gavel_ledger::jcs::to_vec(&back).unwrap(), bytes.clone());
        prop_assert!(!bytes.contains(&b'\n'), "canonical JSON must fit on one line");
        let record = Record::new(RecordKind::Admin, 1, "x", &v).unwrap();
        let rb = record.canonical_bytes().unwrap();
        prop_assert_eq!(Record::from_canonical(&rb).unwrap().canonical_bytes().unwrap(), rb.clone());
        // Encoding straight from the body gives the same bytes and query columns.
        let encoded = gavel_ledger::Encoded::new(RecordKind::Admin, 1, "x", &v).unwrap();
        prop_assert_eq!(encoded, record.encode().unwrap());
        prop_assert_eq!(aids_of(&record), RecordAids::from_bytes(&rb).unwrap());
        prop_assert_eq!(aids_of(&record), RecordAids::from_canonical(&rb).unwrap());
    }

    /// Bodies with the conventional members, holding anything: the columns read back from the
    /// bytes without building the body are the parsed record's.
    #[test]
    fn query_columns_read_from_bytes_are_the_parsed_records(
        members in proptest::collection::btree_map(
            prop_oneof![
                Just("deployment".to_owned()),
                Just("approval_id".to_owned()),
                Just("principal".to_owned()),
                Just("reason_codes".to_owned()),
                "[a-z_]{0,12}",
            ],
            prop_oneof![
                "[\\x00-\\x1f\"a-z\u{1f600}]{0,6}".prop_map(serde_json::Value::String),
                json_value(),
                proptest::collection::vec(
                    prop_oneof![
                        "[a-z.]{0,6}".prop_map(serde_json::Value::String),
                        json_value(),
                    ],
                    0..5,
                )
                .prop_map(serde_json::Value::Array),
            ],
            0..6,
        ),
        kind in 0usize..RecordKind::ALL.len(),
        at_ms in -(1i64 << 53)..=(1i64 << 53),
        id in "[\\x00-\\x1f\"a-z\u{1f600}]{0,10}",
    ) {
        let body = serde_json::Value::Object(members.into_iter().collect());
        let record = Record::new(RecordKind::ALL[kind], at_ms, id, &body).unwrap();
        let bytes = record.canonical_bytes().unwrap();
        let parsed = Record::from_canonical(&bytes).unwrap();
        prop_assert_eq!(aids_of(&parsed), RecordAids::from_bytes(&bytes).unwrap());
        prop_assert_eq!(aids_of(&parsed), RecordAids::from_canonical(&bytes).unwrap());
        let encoded = gavel_ledger::Encoded::new(RecordKind::ALL[kind], at_ms, &parsed.id, &body).unwrap();
        prop_assert_eq!(encoded.fields, reference_fields(&body));
    }
}

/// What a sink stores for the record, its columns checked against the reference below.
fn aids_of(record: &Record) -> RecordAids {
    let fields = record.index_fields();
    assert_eq!(fields, reference_fields(&record.body), "{}", record.body);
    RecordAids {
        id: record.id.clone(),
        kind: record.kind,
        at_ms: record.at_ms,
        fields,
    }
}

/// The query columns as `IndexFields` documents them, walking the JSON tree: the body's
/// `deployment`, `approval_id` and `principal` members when they are strings, and the strings
/// of its `reason_codes` member when it is a list. The code reads them without a tree.
fn reference_fields(body: &serde_json::Value) -> IndexFields {
    let text = |name: &str| {
        body.get(name)
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
    };
    IndexFields {
        deployment: text("deployment"),
        approval_id: text("approval_id"),
        principal: text("principal"),
        reason_codes: body
            .get("reason_codes")
            .and_then(serde_json::Value::as_array)
            .map(|codes| {
                codes
                    .iter()
                    .filter_map(serde_json::Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// JSON equality where numbers compare as doubles: JCS writes 1.0 as `1`
/// and -0.0 as `0`, which parse back as integers.
fn same_json(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value::*;
    match (a, b) {
        (Number(x), Number(y)) => x.as_f64() == y.as_f64(),
        (Array(x), Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_json(p, q)),
        (Object(x), Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, p)| y.get(k).is_some_and(|q| same_json(p, q)))
        }
        _ => a == b,
    }
}

/// One edit of a record's bytes: bytes and pieces that change JSON's structure or its
/// canonical form (whitespace, escapes, number forms, brackets, invalid UTF-8) put in,
/// replacing or removing what is there.
fn edited(bytes: &[u8], at: usize, op: u8, piece: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let at = at % (out.len() + 1);
    match op % 4 {
        0 => {
            out.splice(at..at, piece.iter().copied());
        }
        1 => {
            let end = (at + piece.len()).min(out.len());
            out.splice(at..end, piece.iter().copied());
        }
        2 => {
            let end = (at + 1 + usize::from(op / 4 % 3)).min(out.len());
            out.drain(at..end);
        }
        _ => {
            if at + 1 < out.len() {
                out.swap(at, at + 1);
            }
        }
    }
    out
}

const PIECES: &[&[u8]] = &[
    b" ",
    b"\n",
    b"\\",
    b"\"",
    b",",
    b":",
    b"{",
    b"}",
    b"[",
    b"]",
    b"0",
    b"-",
    b".",
    b"e",
    b"E",
    b"+",
    b".0",
    b"e+1",
    b"1",
    b"9",
    b"u",
    b"\\u0041",
    b"\\u000a",
    b"\\u001F",
    b"\\u001f",
    b"\\/",
    b"\\ud800",
    b"\x01",
    b"\xff",
    b"\xc3\xa9",
    b"true",
    b"null",
    b"\"a\":1,",
    b"\"format\":2",
    b"\"kind\":\"nope\"",
    b"1e400",
    b"9007199254740993",
    b"-0",
    b"A",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// The one-pass canonical check (`Record::check_canonical`, what verification runs) accepts
    /// exactly what parsing and writing again (`Record::from_canonical`) accepts: every
    /// record, and any edit of one.
    #[test]
    fn the_one_pass_check_agrees_with_parsing_and_rewriting(
        v in json_value(),
        kind in 0usize..RecordKind::ALL.len(),
        at_ms in -(1i64 << 53)..=(1i64 << 53),
        id in "[\\x00-\\x1f\"a-z\u{e000}\u{1f600}]{0,8}",
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0..PIECES.len()), 0..3),
    ) {
        let record = Record::new(RecordKind::ALL[kind], at_ms, id, &v).unwrap();
        let mut bytes = record.canonical_bytes().unwrap();
        prop_assert!(Record::check_canonical(&bytes).is_ok());
        for (at, op, piece) in edits {
            bytes = edited(&bytes, at, op, PIECES[piece]);
            let reference = Record::from_canonical(&bytes);
            let one_pass = Record::check_canonical(&bytes);
            prop_assert_eq!(
                one_pass.is_ok(),
                reference.is_ok(),
                "{}: one pass {:?}, reference {:?}",
                String::from_utf8_lossy(&bytes),
                one_pass,
                reference.map(drop)
            );
            // The same pass reading the query columns too: the same answer, and for a record,
            // the columns the parsed record gives.
            let with_aids = RecordAids::from_canonical(&bytes);
            prop_assert_eq!(with_aids.as_ref().map(drop), one_pass.as_ref().map(drop));
            if let (Ok(aids), Ok(parsed)) = (with_aids, &reference) {
                prop_assert_eq!(aids, aids_of(parsed));
            }
        }
    }
}
