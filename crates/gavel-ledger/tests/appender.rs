//! Group-commit appender behaviour over in-memory sinks.

// Test helpers outside #[test] fns may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use gavel_ledger::merkle::Hash;
use gavel_ledger::{
    verify_sink, AppendRecord, Appender, AppenderConfig, LedgerError, LedgerSink, MemorySink,
    NoteSigner, Record, RecordKind, SinkError, StoredCheckpoint, StoredRecord, TreeNode,
    VerifyOptions,
};
use serde_json::json;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn signer() -> NoteSigner {
    NoteSigner::from_seed("gavel.test/appender", &[1u8; 32]).unwrap()
}

fn record(i: usize) -> Record {
    Record::new(
        RecordKind::Decision,
        i as i64,
        format!("d-{i}"),
        &json!({"n": i}),
    )
    .unwrap()
}

fn strict() -> VerifyOptions {
    VerifyOptions {
        check_format: true,
        check_query_aids: true,
        require_signed_tail: true,
    }
}

/// Wraps a sink, sleeping per commit like an fsync would, and optionally
/// failing on demand. With a `flusher`, it splits durability off its commits as
/// SQLite's sink does. Each commit says it has started to `entered`, if given, and with a
/// `release` waits for the test's word before committing. It counts the leaf hashes read
/// through it.
struct SlowSink {
    inner: MemorySink,
    leaves_read: Arc<std::sync::atomic::AtomicU64>,
    delay: Duration,
    fail: Arc<AtomicBool>,
    flusher: Option<Box<dyn gavel_ledger::Flusher>>,
    entered: Option<std::sync::mpsc::Sender<()>>,
    release: Option<std::sync::mpsc::Receiver<()>>,
}

/// A sink over `inner` that sleeps `delay` per commit, and nothing else.
fn slow(inner: &MemorySink, delay: Duration) -> SlowSink {
    SlowSink {
        inner: inner.clone(),
        leaves_read: Arc::default(),
        delay,
        fail: Arc::new(AtomicBool::new(false)),
        flusher: None,
        entered: None,
        release: None,
    }
}

/// Each `flush` returns what the test sends, once it does.
struct HandFlusher(std::sync::mpsc::Receiver<Result<(), String>>);

impl gavel_ledger::Flusher for HandFlusher {
    fn flush(&mut self) -> Result<(), SinkError> {
        match self.0.recv() {
            Ok(result) => Ok(result?),
            Err(_) => Err("the test stopped flushing".into()),
        }
    }
}

impl LedgerSink for SlowSink {
    fn append(
        &mut self,
        records: &[AppendRecord],
        nodes: &[TreeNode],
        checkpoint: Option<&StoredCheckpoint>,
    ) -> Result<(), SinkError> {
        if let Some(entered) = &self.entered {
            let _ = entered.send(());
        }
        if let Some(release) = &self.release {
            release
                .recv_timeout(Duration::from_secs(30))
                .map_err(|_| SinkError::from("the test never released the commit"))?;
        }
        std::thread::sleep(self.delay);
        if self.fail.load(Ordering::SeqCst) {
            return Err("disk on fire".into());
        }
        self.inner.append(records, nodes, checkpoint)
    }
    fn record_count(&self) -> Result<u64, SinkError> {
        self.inner.record_count()
    }
    fn leaf_hashes(&self, from: u64, to: u64) -> Result<Vec<Hash>, SinkError> {
        let hashes = self.inner.leaf_hashes(from, to)?;
        self.leaves_read
            .fetch_add(hashes.len() as u64, Ordering::SeqCst);
        Ok(hashes)
    }
    fn tree_nodes(&self, level: u32, from: u64, to: u64) -> Result<Vec<(u64, Hash)>, SinkError> {
        self.inner.tree_nodes(level, from, to)
    }
    fn add_missing_nodes(&mut self, nodes: &[TreeNode]) -> Result<(), SinkError> {
        self.inner.add_missing_nodes(nodes)
    }
    fn read_records(&self, from: u64, to: u64) -> Result<Vec<StoredRecord>, SinkError> {
        self.inner.read_records(from, to)
    }
    fn checkpoints(&self) -> Result<Vec<StoredCheckpoint>, SinkError> {
        self.inner.checkpoints()
    }
    fn flusher(&mut self) -> Result<Option<Box<dyn gavel_ledger::Flusher>>, SinkError> {
        Ok(self.flusher.take())
    }
}

#[test]
fn concurrent_appends_are_batched_and_all_acknowledged() {
    let mem = MemorySink::new();
    let sink = slow(&mem, Duration::from_millis(2));
    let app = Arc::new(Appender::start(sink, signer(), AppenderConfig::default()).unwrap());
    let threads = 16;
    let per = 50;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let app = Arc::clone(&app);
            std::thread::spawn(move || {
                (0..per)
                    .map(|i| app.append(&record(t * per + i)).unwrap().index)
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut indexes: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    indexes.sort_unstable();
    assert_eq!(indexes, (0..(threads * per) as u64).collect::<Vec<_>>());
    let batches = mem.batches();
    // 800 records under 16-way load with a 2 ms commit: one commit per record
    // would take 1.6 s; group commit needs far fewer.
    assert!(
        batches < (threads * per / 4) as u64,
        "{batches} batches for {} records",
        threads * per
    );
    Arc::try_unwrap(app).ok().unwrap().close().unwrap();
    let report = verify_sink(&mem, &signer().verifier(), strict()).unwrap();
    assert_eq!(report.records, (threads * per) as u64);
}

#[test]
fn a_lone_append_is_not_held_back() {
    let mem = MemorySink::new();
    let sink = slow(&mem, Duration::from_millis(1));
    let app = Appender::start(sink, signer(), AppenderConfig::default()).unwrap();
    let mut times: Vec<Duration> = (0..21)
        .map(|i| {
            let t = Instant::now();
            app.append(&record(i)).unwrap();
            t.elapsed()
        })
        .collect();
    times.sort();
    // One 1 ms commit each. The median (robust to a loaded test machine)
    // must stay near that: a design that held appends back to fill batches
    // would show its wait here.
    let median = times[times.len() / 2];
    assert!(
        median < Duration::from_millis(10),
        "lone append took {median:?}"
    );
    assert_eq!(mem.batches(), 21);
}

#[test]
fn checkpoints_every_n_records_with_receipts_naming_them() {
    let mem = MemorySink::new();
    let config = AppenderConfig {
        checkpoint_every: 5,
        checkpoint_interval: Duration::from_secs(3600),
        max_batch: 1,
        ..AppenderConfig::default()
    };
    let app = Appender::start(mem.clone(), signer(), config).unwrap();
    let receipts: Vec<_> = (0..12).map(|i| app.append(&record(i)).unwrap()).collect();
    assert_eq!(receipts[3].checkpoint_seq, 1);
    assert_eq!(receipts[3].checkpoint_size, None);
    assert_eq!(
        (receipts[4].checkpoint_seq, receipts[4].checkpoint_size),
        (1, Some(5))
    );
    assert_eq!(
        (receipts[9].checkpoint_seq, receipts[9].checkpoint_size),
        (2, Some(10))
    );
    assert_eq!(
        (receipts[11].checkpoint_seq, receipts[11].checkpoint_size),
        (3, None)
    );
    let closing = app.close().unwrap().unwrap();
    assert_eq!((closing.seq, closing.size), (3, 12));
}

#[test]
fn checkpoints_after_t_ms_without_further_appends() {
    let mem = MemorySink::new();
    let config = AppenderConfig {
        checkpoint_every: 1_000_000,
        checkpoint_interval: Duration::from_millis(20),
        max_batch: 64,
        ..AppenderConfig::default()
    };
    let app = Appender::start(mem.clone(), signer(), config).unwrap();
    app.append(&record(0)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while mem.snapshot().1.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(mem.snapshot().1.len(), 1, "no timed checkpoint");
    verify_sink(&mem, &signer().verifier(), strict()).unwrap();
    drop(app);
}

#[test]
fn restart_signs_a_tail_left_by_a_crash() {
    let mem = MemorySink::new();
    let app = Appender::start(mem.clone(), signer(), AppenderConfig::default()).unwrap();
    for i in 0..3 {
        app.append(&record(i)).unwrap();
    }
    // Simulate a crash: records are durable, no closing checkpoint.
    std::mem::forget(app);
    let report = verify_sink(&mem, &signer().verifier(), VerifyOptions::default()).unwrap();
    assert_eq!(report.unsigned_tail, 3);
    assert!(verify_sink(&mem, &signer().verifier(), strict()).is_err());
    let app = Appender::start(mem.clone(), signer(), AppenderConfig::default()).unwrap();
    let r = app.append(&record(3)).unwrap();
    assert_eq!((r.index, r.checkpoint_seq), (3, 2));
    app.close().unwrap();
    let report = verify_sink(&mem, &signer().verifier(), strict()).unwrap();
    assert_eq!((report.records, report.checkpoints), (4, 2));
}

/// Appends `n` records and stops without the closing checkpoint, as a crash does; returns what
/// the sink holds.
fn crashed_after(n: usize, config: AppenderConfig) -> (Vec<StoredRecord>, Vec<StoredCheckpoint>) {
    let mem = MemorySink::new();
    let app = Appender::start(mem.clone(), signer(), config).unwrap();
    for i in 0..n {
        app.append(&record(i)).unwrap();
    }
    std::mem::forget(app);
    mem.snapshot()
}

fn refused(sink: MemorySink, config: AppenderConfig) -> String {
    match Appender::start(sink, signer(), config) {
        Err(LedgerError::Corrupt(why)) => why,
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("started, and would sign over the tail"),
    }
}

#[test]
fn restart_does_not_sign_an_edited_tail() {
    let config = AppenderConfig::default();
    let (mut records, checkpoints) = crashed_after(3, config);
    // Bytes edited, stored leaf hash left as it was.
    records[1].bytes = record(7).encode().unwrap().bytes;
    let why = refused(MemorySink::from_parts(records, checkpoints.clone()), config);
    assert!(why.contains("record 1 does not hash"), "{why}");

    // Bytes and leaf hash edited together, into something that is not a canonical record.
    let (mut records, _) = crashed_after(3, config);
    let mut bytes = records[2].bytes.clone();
    bytes.insert(1, b' ');
    records[2].leaf_hash = gavel_ledger::merkle::leaf_hash(&bytes);
    records[2].bytes = bytes;
    let why = refused(MemorySink::from_parts(records, checkpoints), config);
    assert!(why.contains("record 2 is not a canonical record"), "{why}");
}

#[test]
fn restart_does_not_sign_more_than_a_writer_leaves_unsigned() {
    let config = AppenderConfig {
        checkpoint_every: 2,
        max_batch: 2,
        ..AppenderConfig::default()
    };
    let mem = MemorySink::new();
    let app = Appender::start(mem.clone(), signer(), config).unwrap();
    for i in 0..10 {
        app.append(&record(i)).unwrap();
    }
    app.close().unwrap();
    let (records, checkpoints) = mem.snapshot();
    assert!(checkpoints.len() > 1);
    // As stored, it reopens.
    Appender::start(
        MemorySink::from_parts(records.clone(), checkpoints),
        signer(),
        config,
    )
    .unwrap()
    .close()
    .unwrap();
    // With its checkpoints removed, 10 records are unsigned where a writer leaves at most 4.
    let why = refused(MemorySink::from_parts(records, Vec::new()), config);
    assert!(
        why.contains("10 records follow the newest signed checkpoint"),
        "{why}"
    );
}

/// A starting writer that reads the stored leaves (a ledger without tree nodes: `from_parts`
/// keeps none) keeps only the tree's right edge and checks the newest checkpoint's root as it
/// passes that size: a signed leaf edited, or signed records gone, and it refuses to extend
/// the ledger. With the nodes it reads those instead, and an edited signed leaf is `verify`'s
/// to name (`a_starting_writer_reads_stored_nodes_not_every_leaf`).
#[test]
fn restart_refuses_signed_leaves_that_do_not_give_the_signed_root() {
    let config = AppenderConfig::default();
    let mem = MemorySink::new();
    let app = Appender::start(mem.clone(), signer(), config).unwrap();
    for i in 0..5 {
        app.append(&record(i)).unwrap();
    }
    app.close().unwrap();
    let (records, checkpoints) = mem.snapshot();
    assert_eq!(checkpoints.last().unwrap().size, 5);
    // As stored, it reopens, and goes on from the signed root.
    let reopened = MemorySink::from_parts(records.clone(), checkpoints.clone());
    let app = Appender::start(reopened.clone(), signer(), config).unwrap();
    assert_eq!(app.append(&record(5)).unwrap().index, 5);
    app.close().unwrap();
    verify_sink(&reopened, &signer().verifier(), strict()).unwrap();

    let mut edited = records.clone();
    edited[2].leaf_hash[0] ^= 1;
    let why = refused(MemorySink::from_parts(edited, checkpoints.clone()), config);
    assert!(
        why.contains("do not match the root signed at size 5"),
        "{why}"
    );
    let why = refused(
        MemorySink::from_parts(records[..4].to_vec(), checkpoints),
        config,
    );
    assert!(
        why.contains("do not match the root signed at size 5"),
        "{why}"
    );

    // Checked as the leaves pass the signed size, with unsigned records after it.
    let config = AppenderConfig {
        checkpoint_every: 2,
        max_batch: 1,
        ..AppenderConfig::default()
    };
    let (mut records, checkpoints) = crashed_after(5, config);
    assert_eq!(checkpoints.last().unwrap().size, 4);
    records[1].leaf_hash[0] ^= 1;
    let why = refused(MemorySink::from_parts(records, checkpoints), config);
    assert!(
        why.contains("do not match the root signed at size 4"),
        "{why}"
    );
}

/// Appends `n` records through a sink that stores tree nodes, signed and closed.
fn closed_after(n: usize) -> MemorySink {
    let mem = MemorySink::new();
    let app = Appender::start(mem.clone(), signer(), AppenderConfig::default()).unwrap();
    for i in 0..n {
        app.append(&record(i)).unwrap();
    }
    app.close().unwrap();
    mem
}

/// Leaf hashes read by a writer starting on `sink`, which then appends one record and closes.
fn leaves_read_by_a_start(sink: &MemorySink) -> u64 {
    let counting = slow(sink, Duration::ZERO);
    let leaves_read = Arc::clone(&counting.leaves_read);
    let app = Appender::start(counting, signer(), AppenderConfig::default()).unwrap();
    let read = leaves_read.load(Ordering::SeqCst);
    app.append(&record(9_999)).unwrap();
    app.close().unwrap();
    read
}

/// A starting writer builds its tree from the stored nodes (O(log n) reads) and checks it
/// against the signed root. Where the nodes are missing (a ledger from a gavel that kept none)
/// or wrong, it reads every leaf as before, and stores the missing nodes for the next start.
#[test]
fn a_starting_writer_reads_stored_nodes_not_every_leaf() {
    let mem = closed_after(1000);
    let nodes = mem.nodes();
    assert_eq!(nodes.len(), 1000 / 16 + 1000 / 256);
    // 1000 = 512 + 256 + 128 + 64 + 32 + 8: only the last block is read from its 8 leaves.
    assert_eq!(leaves_read_by_a_start(&mem), 8);
    verify_sink(&mem, &signer().verifier(), strict()).unwrap();

    let (records, checkpoints) = closed_after(1000).snapshot();
    let legacy = MemorySink::from_parts(records.clone(), checkpoints.clone());
    assert_eq!(leaves_read_by_a_start(&legacy), 1000);
    assert_eq!(legacy.nodes(), nodes);
    // 1001 = the same blocks and one leaf.
    assert_eq!(leaves_read_by_a_start(&legacy), 9);
    verify_sink(&legacy, &signer().verifier(), strict()).unwrap();

    // A wrong node gives the wrong root: the leaves are read, and verify names the node.
    let edited = MemorySink::from_parts(records, checkpoints);
    let mut wrong = nodes.clone();
    wrong.insert((8, 1), [7; 32]);
    edited.set_nodes(wrong);
    assert_eq!(leaves_read_by_a_start(&edited), 8 + 1000);
    let named = verify_sink(&edited, &signer().verifier(), strict()).unwrap_err();
    assert!(
        named.to_string().contains("tree node 1 of level 8"),
        "{named}"
    );

    // The tree from the nodes gives the signed root whatever a signed leaf's stored hash says:
    // the writer extends the signed tree (its roots stay consistent with the signed ones) and
    // `verify` names the edit.
    let (mut records, checkpoints) = mem.snapshot();
    records[500].leaf_hash[0] ^= 1;
    let edited_leaf = MemorySink::from_parts(records, checkpoints);
    edited_leaf.set_nodes(mem.nodes());
    // 1001 records now: the 8 leaves of the block [992, 1000) and the last one.
    assert_eq!(leaves_read_by_a_start(&edited_leaf), 9);
    let named = verify_sink(&edited_leaf, &signer().verifier(), strict()).unwrap_err();
    assert!(
        named
            .to_string()
            .starts_with("ledger does not verify: record 500"),
        "{named}"
    );
}

/// Records appended without their nodes (by a gavel from before them) leave a level's newest
/// node missing: the writer then reads every leaf and stores what is missing, even where the
/// signed part's nodes would give its tree. A node stored past the records is refused at
/// start, where it can be named, not when an append reaches it.
#[test]
fn a_starting_writer_fills_in_nodes_and_refuses_one_past_the_records() {
    let mem = closed_after(1000);
    let complete = mem.nodes();
    let mut without = mem.clone();
    let appended: Vec<gavel_ledger::AppendRecord> = (1000..1024)
        .map(|i| {
            let encoded = record(i).encode().unwrap();
            gavel_ledger::AppendRecord {
                index: i as u64,
                leaf_hash: gavel_ledger::merkle::leaf_hash(&encoded.bytes),
                bytes: encoded.bytes,
                id: encoded.id,
                kind: encoded.kind,
                at_ms: encoded.at_ms,
                fields: encoded.fields,
            }
        })
        .collect();
    without.append(&appended, &[], None).unwrap();
    // Refused even where the nodes are to be filled in from the leaves.
    let (records, checkpoints) = mem.snapshot();
    let planted_early = MemorySink::from_parts(records, checkpoints);
    let mut planted = mem.nodes();
    planted.insert((8, 10), [3; 32]);
    planted_early.set_nodes(planted);
    let why = refused(planted_early, AppenderConfig::default());
    assert!(why.contains("tree node (10 of level 8)"), "{why}");

    assert_eq!(leaves_read_by_a_start(&mem), 1024);
    let filled = mem.nodes();
    assert!(complete
        .iter()
        .all(|(at, hash)| filled.get(at) == Some(hash)));
    for at in [(4, 62), (4, 63), (8, 3)] {
        assert!(filled.contains_key(&at), "{at:?}");
    }
    verify_sink(&mem, &signer().verifier(), strict()).unwrap();

    let mut planted = mem.nodes();
    planted.insert((4, 70), [3; 32]);
    mem.set_nodes(planted);
    let why = refused(mem, AppenderConfig::default());
    assert!(
        why.contains(
            "tree node (70 of level 4) is stored where the ledger's 1025 records have none"
        ),
        "{why}"
    );
}

/// A proof is built from the stored nodes, reading a few leaves, not every one; where a node
/// is wrong or missing, from the leaves; either way the proof is the tree's, and checks.
#[test]
fn proofs_read_stored_nodes_and_are_the_trees() {
    let mem = closed_after(300);
    let v = signer().verifier();
    let (records, checkpoints) = mem.snapshot();
    let tree = gavel_ledger::MerkleTree::from_leaf_hashes(records.iter().map(|r| r.leaf_hash));
    let prover = gavel_ledger::Prover::new(v.clone());
    let proof_of = |sink: &MemorySink, index: u64| {
        let counting = slow(sink, Duration::ZERO);
        let bundle = prover.prove(&counting, index).unwrap();
        bundle.check(&v).unwrap();
        let path: Vec<String> = tree
            .inclusion_proof(index, 300)
            .unwrap()
            .iter()
            .map(|h| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, h))
            .collect();
        assert_eq!(bundle.proof, path, "{index}");
        counting.leaves_read.load(Ordering::SeqCst)
    };
    // Leaves are read a block of 16 at a time: the path's block below the stored level 4,
    // and the one of the ragged right edge (300 = 256 + 32 + 8 + 4: leaves 288-299).
    for index in (0..300).step_by(7).chain([255, 256, 299]) {
        assert!(proof_of(&mem, index) <= 16 + 12, "{index}");
    }
    let edited = MemorySink::from_parts(records, checkpoints);
    let mut wrong = mem.nodes();
    wrong.insert((4, 3), [7; 32]);
    edited.set_nodes(wrong);
    // The path from the nodes, then every leaf.
    let from_nodes = proof_of(&mem, 0);
    assert_eq!(proof_of(&edited, 0), from_nodes + 300);
    assert!(proof_of(&edited, 290) <= 16 + 12);
}

/// A prover checks a checkpoint's signature once per note, by its exact text: a note edited
/// after a proof against the one before it is checked, and refused.
#[test]
fn a_prover_checks_every_note_it_has_not_seen() {
    let mem = closed_after(20);
    let prover = gavel_ledger::Prover::new(signer().verifier());
    prover.prove(&mem, 3).unwrap();
    prover.prove(&mem, 4).unwrap();
    let (records, mut checkpoints) = mem.snapshot();
    let newest = checkpoints.last_mut().unwrap();
    let body = newest.note.split("\n\n").next().unwrap().to_owned() + "\n";
    let other = NoteSigner::from_seed("gavel.test/appender", &[2u8; 32]).unwrap();
    newest.note = gavel_ledger::Checkpoint::parse(&body)
        .unwrap()
        .sign(&other)
        .unwrap();
    let forged = MemorySink::from_parts(records, checkpoints);
    assert!(prover.prove(&forged, 3).is_err());
}

/// A prover keeps the hashes of complete subtrees of 256 leaves or more from paths that checked
/// and proves through them, not through the stored nodes; once a kept hash is in a path that
/// does not check (here: another ledger signed with the same key), it forgets them all and
/// builds the path from the stored nodes alone, not from every leaf.
#[test]
fn a_prover_keeps_checked_subtrees_and_forgets_them_after_a_failed_path() {
    let mem = closed_after(300);
    let prover = gavel_ledger::Prover::new(signer().verifier());
    let leaves_read = |prover: &gavel_ledger::Prover, sink: &MemorySink, index: u64| {
        let counting = slow(sink, Duration::ZERO);
        let bundle = prover.prove(&counting, index).unwrap();
        bundle.check(&signer().verifier()).unwrap();
        counting.leaves_read.load(Ordering::SeqCst)
    };
    // 290's path holds the subtree of leaves 0-255: kept.
    assert!(leaves_read(&prover, &mem, 290) <= 16 + 12);
    let (records, checkpoints) = mem.snapshot();
    let edited = MemorySink::from_parts(records, checkpoints);
    let mut wrong = mem.nodes();
    wrong.insert((8, 0), [7; 32]);
    edited.set_nodes(wrong);
    // Through the kept hash, the wrong node is not read; a prover without it reads every leaf.
    assert!(leaves_read(&prover, &edited, 291) <= 16 + 12);
    let fresh = gavel_ledger::Prover::new(signer().verifier());
    assert!(leaves_read(&fresh, &edited, 291) >= 300);

    let other = MemorySink::new();
    let app = Appender::start(other.clone(), signer(), AppenderConfig::default()).unwrap();
    for i in 0..300 {
        let record = Record::new(RecordKind::Decision, i, format!("other-{i}"), &json!({}));
        app.append(&record.unwrap()).unwrap();
    }
    app.close().unwrap();
    // The kept hash of leaves 0-255 is the first ledger's: the path fails, and is built again
    // from the stored nodes alone.
    assert!(leaves_read(&prover, &other, 290) <= 16 + 12);
    // Now the kept hash is the other ledger's: on the first, with its wrong stored node, both
    // ways fail and the leaves are read.
    assert!(leaves_read(&prover, &edited, 291) >= 300);
}

#[test]
fn a_failed_commit_fails_closed() {
    let mem = MemorySink::new();
    let fail = Arc::new(AtomicBool::new(false));
    let sink = SlowSink {
        fail: Arc::clone(&fail),
        ..slow(&mem, Duration::ZERO)
    };
    let app = Appender::start(sink, signer(), AppenderConfig::default()).unwrap();
    app.append(&record(0)).unwrap();
    assert_eq!(app.failure(), None);
    fail.store(true, Ordering::SeqCst);
    assert!(matches!(app.append(&record(1)), Err(LedgerError::Sink(_))));
    // Said once for all (a gateway's readiness and its log read it), and it stays.
    assert!(app.failure().is_some());
    fail.store(false, Ordering::SeqCst);
    assert!(matches!(
        app.append(&record(2)),
        Err(LedgerError::Failed(_))
    ));
    drop(app);
    // A fresh appender resumes from what the sink holds.
    let app = Appender::start(mem.clone(), signer(), AppenderConfig::default()).unwrap();
    assert_eq!(app.append(&record(3)).unwrap().index, 1);
    app.close().unwrap();
    verify_sink(&mem, &signer().verifier(), strict()).unwrap();
}

#[test]
fn refuses_to_extend_a_ledger_signed_by_another_key() {
    let mem = MemorySink::new();
    let app = Appender::start(mem.clone(), signer(), AppenderConfig::default()).unwrap();
    app.append(&record(0)).unwrap();
    app.close().unwrap();
    let other = NoteSigner::from_seed("gavel.test/appender", &[2u8; 32]).unwrap();
    assert!(matches!(
        Appender::start(mem, other, AppenderConfig::default()),
        Err(LedgerError::Corrupt(_))
    ));
}

#[test]
fn inclusion_bundle_round_trip() {
    let mem = MemorySink::new();
    let app = Appender::start(mem.clone(), signer(), AppenderConfig::default()).unwrap();
    for i in 0..10 {
        app.append(&record(i)).unwrap();
    }
    app.close().unwrap();
    let v = signer().verifier();
    let bundle = gavel_ledger::Prover::new(v.clone()).prove(&mem, 6).unwrap();
    let json = serde_json::to_string_pretty(&bundle).unwrap();
    let checked = gavel_ledger::check_proof_json(&json, &v.to_string()).unwrap();
    assert_eq!(
        (
            checked.index,
            checked.record.id.as_str(),
            checked.checkpoint.size
        ),
        (6, "d-6", 10)
    );
    let forged = json.replace("\\\"n\\\":6", "\\\"n\\\":7");
    assert_ne!(forged, json);
    assert!(gavel_ledger::check_proof_json(&forged, &v.to_string()).is_err());
    let other = NoteSigner::from_seed("gavel.test/appender", &[3u8; 32])
        .unwrap()
        .verifier();
    assert!(gavel_ledger::check_proof_json(&json, &other.to_string()).is_err());
}

#[test]
fn the_appender_can_be_shared_between_threads() {
    fn shareable<T: Send + Sync + 'static>(_: &T) {}
    let app = Appender::start(MemorySink::new(), signer(), AppenderConfig::default()).unwrap();
    shareable(&app);
    let pending = app.submit(&record(0)).unwrap();
    // A pending append can be waited on from another thread.
    let receipt = std::thread::spawn(move || pending.wait())
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(receipt.index, 0);
}

fn lingering(delay: Duration) -> AppenderConfig {
    AppenderConfig {
        background_delay: delay,
        ..AppenderConfig::default()
    }
}

#[test]
fn a_background_record_rides_with_the_next_waited_on_commit() {
    let mem = MemorySink::new();
    let app = Appender::start(mem.clone(), signer(), lingering(Duration::from_secs(3600))).unwrap();
    let background = app.submit_background(&record(0)).unwrap();
    // Nobody waits on it, so it is not committed on its own within the hour.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(mem.batches(), 0);
    let waited = app.append(&record(1)).unwrap();
    assert_eq!(waited.index, 1);
    assert_eq!(background.wait().unwrap().index, 0);
    assert_eq!(mem.batches(), 1, "one commit carried both");
}

#[test]
fn a_lone_background_record_is_committed_after_the_delay() {
    let mem = MemorySink::new();
    let app = Appender::start(mem.clone(), signer(), lingering(Duration::from_millis(20))).unwrap();
    let receipt = app.submit_background(&record(0)).unwrap().wait().unwrap();
    assert_eq!(receipt.index, 0);
    assert_eq!(mem.batches(), 1);
}

#[test]
fn closing_commits_and_signs_a_lingering_background_record() {
    let mem = MemorySink::new();
    let app = Appender::start(mem.clone(), signer(), lingering(Duration::from_secs(3600))).unwrap();
    let background = app.submit_background(&record(0)).unwrap();
    let closing = app.close().unwrap().unwrap();
    assert_eq!(closing.size, 1);
    assert_eq!(background.wait().unwrap().index, 0);
    verify_sink(&mem, &signer().verifier(), strict()).unwrap();
}

#[test]
fn an_async_submission_resolves_once_durable() {
    let mem = MemorySink::new();
    let app = Appender::start(mem.clone(), signer(), AppenderConfig::default()).unwrap();
    let mut durable = std::pin::pin!(app.submit_async(&record(0)).unwrap());
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let deadline = Instant::now() + Duration::from_secs(30);
    let receipt = loop {
        if let std::task::Poll::Ready(r) = durable.as_mut().poll(&mut cx) {
            break r.unwrap();
        }
        assert!(Instant::now() < deadline, "the commit never resolved");
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(receipt.index, 0);
    assert_eq!(mem.record_count().unwrap(), 1);
    app.close().unwrap();
}

fn synced_by_hand() -> (
    MemorySink,
    Appender,
    std::sync::mpsc::Sender<Result<(), String>>,
) {
    let mem = MemorySink::new();
    let (flush, flushes) = std::sync::mpsc::channel();
    let sink = SlowSink {
        flusher: Some(Box::new(HandFlusher(flushes))),
        ..slow(&mem, Duration::ZERO)
    };
    let app = Appender::start(sink, signer(), AppenderConfig::default()).unwrap();
    (mem, app, flush)
}

#[test]
fn a_committed_record_is_acknowledged_only_once_flushed() {
    let (mem, app, flush) = synced_by_hand();
    let app = Arc::new(app);
    let acknowledged = Arc::new(AtomicBool::new(false));
    let waiter = {
        let (app, acknowledged) = (Arc::clone(&app), Arc::clone(&acknowledged));
        std::thread::spawn(move || {
            let receipt = app.append(&record(0)).unwrap();
            acknowledged.store(true, Ordering::SeqCst);
            receipt
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while mem.batches() == 0 {
        assert!(Instant::now() < deadline, "the record was never committed");
        std::thread::sleep(Duration::from_millis(1));
    }
    // Committed, but no flush has returned: the caller must still be waiting.
    std::thread::sleep(Duration::from_millis(100));
    assert!(!acknowledged.load(Ordering::SeqCst));
    flush.send(Ok(())).unwrap();
    assert_eq!(waiter.join().unwrap().index, 0);
    // The closing checkpoint is acknowledged after a flush too.
    flush.send(Ok(())).unwrap();
    let app = Arc::try_unwrap(app).ok().unwrap();
    assert_eq!(app.close().unwrap().unwrap().size, 1);
}

#[test]
fn a_failed_flush_fails_closed() {
    let (_mem, app, flush) = synced_by_hand();
    flush.send(Ok(())).unwrap();
    app.append(&record(0)).unwrap();
    flush.send(Err("fsync: input/output error".into())).unwrap();
    match app.append(&record(1)) {
        Err(LedgerError::Sink(e)) => assert!(e.contains("input/output error"), "{e}"),
        other => panic!("expected the sync failure, got {other:?}"),
    }
    // Nothing more is acknowledged, even if a later sync would succeed.
    flush.send(Ok(())).unwrap();
    assert!(matches!(
        app.append(&record(2)),
        Err(LedgerError::Failed(_))
    ));
}

/// Notes the thread each flush runs on.
struct NamingFlusher(Arc<std::sync::Mutex<Vec<String>>>);

impl gavel_ledger::Flusher for NamingFlusher {
    fn flush(&mut self) -> Result<(), SinkError> {
        let name = std::thread::current().name().unwrap_or("").to_string();
        self.0.lock().unwrap().push(name);
        Ok(())
    }
}

#[test]
fn a_lone_commit_is_synced_by_the_writer_and_one_with_work_behind_it_by_the_sync_thread() {
    const WRITER: &str = "gavel-ledger-writer";
    const SYNC: &str = "gavel-ledger-sync";
    // One append at a time: nothing is ever queued behind a commit.
    let flushed_on = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = SlowSink {
        flusher: Some(Box::new(NamingFlusher(Arc::clone(&flushed_on)))),
        ..slow(&MemorySink::new(), Duration::ZERO)
    };
    // No timed checkpoint (one more flush) however slowly the machine runs the test.
    let untimed = AppenderConfig {
        checkpoint_interval: Duration::from_secs(3600),
        ..AppenderConfig::default()
    };
    let app = Appender::start(sink, signer(), untimed).unwrap();
    for i in 0..5 {
        assert_eq!(app.append(&record(i)).unwrap().index, i as u64);
    }
    app.close().unwrap();
    let threads = flushed_on.lock().unwrap().clone();
    assert_eq!(threads.len(), 6, "five appends and the closing checkpoint");
    assert!(threads.iter().all(|t| t == WRITER), "{threads:?}");

    // A second append queued while the first commits: the first's flush goes to the sync
    // thread, so that the second's commit overlaps it.
    let flushed_on = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (entered, commits_started) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel();
    let sink = SlowSink {
        flusher: Some(Box::new(NamingFlusher(Arc::clone(&flushed_on)))),
        entered: Some(entered),
        release: Some(released),
        ..slow(&MemorySink::new(), Duration::ZERO)
    };
    let app = Appender::start(sink, signer(), AppenderConfig::default()).unwrap();
    let first = app.submit(&record(0)).unwrap();
    commits_started
        .recv_timeout(Duration::from_secs(30))
        .unwrap();
    let second = app.submit(&record(1)).unwrap();
    // Both commits and the closing checkpoint's (a spare word or two is never read).
    for _ in 0..5 {
        release.send(()).unwrap();
    }
    assert_eq!(first.wait().unwrap().index, 0);
    assert_eq!(second.wait().unwrap().index, 1);
    app.close().unwrap();
    let threads = flushed_on.lock().unwrap().clone();
    assert_eq!(
        threads.first().map(String::as_str),
        Some(SYNC),
        "{threads:?}"
    );
}
