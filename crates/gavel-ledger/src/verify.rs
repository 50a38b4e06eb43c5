//! Full re-derivation of a stored ledger: every leaf hash from its bytes, the
//! tree, every checkpoint signature, and consistency between consecutive
//! checkpoints. Reports the first problem found and where.

use crate::merkle::{leaf_hash, verify_consistency, Hash, MerkleTree};
use crate::note::{Checkpoint, NoteError, NoteVerifier};
use crate::record::{Record, RecordError};
use crate::sink::{LedgerSink, SinkError, StoredCheckpoint, StoredRecord};
use std::fmt;
use std::sync::{mpsc, Arc, Mutex};

/// Records read from a sink per call while verifying (about 4 MB of gateway-sized records).
const READ_CHUNK: u64 = 4_096;

/// What to check beyond the cryptographic chain.
#[derive(Debug, Clone, Copy)]
pub struct VerifyOptions {
    /// Also parse every record and check its bytes are the canonical form of a
    /// known format. Catches writer bugs, not tampering (the hashes and
    /// signatures catch that), and costs about 5x; on by default, as in
    /// `gavel audit verify`.
    pub check_format: bool,
    /// Also check the query aids a sink keeps next to the records (lookup columns, the ranges
    /// that find records by approval) against the records the tree has proven: an edited aid
    /// changes no record, but can hide one from a filtered query. Reads every record again;
    /// on by default. Honoured by a sink's own verify (`SqliteLedgerSink::verify`), which
    /// knows its aids; [`verify_sink`] checks only what every sink has.
    pub check_query_aids: bool,
    /// Fail when records exist past the last signed checkpoint. A running
    /// appender always has such a tail (at most N records or T ms old); a
    /// ledger closed cleanly or reopened after a crash has none.
    pub require_signed_tail: bool,
}

impl Default for VerifyOptions {
    fn default() -> VerifyOptions {
        VerifyOptions {
            check_format: true,
            check_query_aids: true,
            require_signed_tail: false,
        }
    }
}

/// Summary of a ledger that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub records: u64,
    pub checkpoints: u64,
    /// The newest signed checkpoint, if any.
    pub latest: Option<Checkpoint>,
    /// Records after the newest checkpoint (not yet covered by a signature).
    pub unsigned_tail: u64,
}

/// What is wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A checkpoint note fails to open (signature, key, syntax).
    CheckpointNote(NoteError),
    /// The stored seq/size columns disagree with the signed note.
    CheckpointColumns,
    /// Sequence numbers are not 1, 2, 3, ...: a checkpoint was deleted,
    /// duplicated or reordered.
    CheckpointSequence { expected: u64, found: u64 },
    /// A later checkpoint signs a smaller tree than an earlier one.
    CheckpointShrinks { previous: u64, size: u64 },
    /// Expected record `index`, found another index (deletion/insertion).
    IndexGap { found: u64 },
    /// The stored leaf hash is not the hash of the stored bytes.
    LeafHash,
    /// The bytes are not a valid canonical record.
    Format(RecordError),
    /// The tree over records `[index, size)` does not have the signed root:
    /// some record in that range was altered, inserted, removed or moved.
    RootMismatch { checkpoint_seq: u64, size: u64 },
    /// A checkpoint signs more records than are stored.
    Truncated { checkpoint_seq: u64, size: u64 },
    /// Two consecutive signed checkpoints are not consistent.
    Inconsistent { from_seq: u64, to_seq: u64 },
    /// Records follow the last checkpoint (only with `require_signed_tail`).
    Unsigned,
    /// A query aid the sink keeps next to the record (a lookup column, a range that finds
    /// records by approval) disagrees with the record or is malformed: a filtered query would
    /// miss the record or return it for the wrong filter. The sentence says which aid, what it
    /// holds and what it would break.
    QueryAid(String),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::CheckpointNote(e) => write!(f, "checkpoint does not verify: {e}"),
            Problem::CheckpointColumns => f.write_str("stored checkpoint seq/size columns differ from the signed note"),
            Problem::CheckpointSequence { expected, found } => {
                write!(f, "expected checkpoint seq {expected}, found {found} (checkpoint deleted, duplicated or reordered)")
            }
            Problem::CheckpointShrinks { previous, size } => write!(f, "checkpoint signs {size} records after one signed {previous}"),
            Problem::IndexGap { found } => write!(f, "found record index {found} here (record deleted, inserted or moved)"),
            Problem::LeafHash => f.write_str("stored bytes do not hash to the stored leaf hash (record edited)"),
            Problem::Format(e) => write!(f, "{e}"),
            Problem::RootMismatch { checkpoint_seq, size } => write!(
                f,
                "records from here up to {size} do not hash to the root signed by checkpoint {checkpoint_seq} (a record in that range was altered, inserted, removed or moved)"
            ),
            Problem::Truncated { checkpoint_seq, size } => {
                write!(f, "checkpoint {checkpoint_seq} signs {size} records but the ledger ends here (records truncated)")
            }
            Problem::Inconsistent { from_seq, to_seq } => write!(f, "checkpoints {from_seq} and {to_seq} are not consistent"),
            Problem::Unsigned => f.write_str("records from here on are not covered by any signed checkpoint"),
            Problem::QueryAid(what) => f.write_str(what),
        }
    }
}

/// The first problem found. `index` is the first record index implicated:
/// for a root mismatch or a bad checkpoint, the first record after the last
/// good checkpoint. `checkpoint_seq` names the checkpoint involved, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyFailure {
    pub index: Option<u64>,
    pub checkpoint_seq: Option<u64>,
    pub problem: Problem,
}

impl fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.index, self.checkpoint_seq) {
            (Some(i), _) => write!(f, "record {i}: {}", self.problem),
            (None, Some(s)) => write!(f, "checkpoint {s}: {}", self.problem),
            (None, None) => write!(f, "{}", self.problem),
        }
    }
}

/// Verification could not conclude (storage error) or found a problem.
#[derive(Debug)]
pub enum VerifyError {
    Failed(VerifyFailure),
    Sink(SinkError),
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyError::Failed(fail) => write!(f, "ledger does not verify: {fail}"),
            VerifyError::Sink(e) => write!(f, "cannot read ledger: {e}"),
        }
    }
}

impl std::error::Error for VerifyError {}

fn fail(index: Option<u64>, checkpoint_seq: Option<u64>, problem: Problem) -> VerifyError {
    VerifyError::Failed(VerifyFailure {
        index,
        checkpoint_seq,
        problem,
    })
}

/// Opens every checkpoint and checks their sequence (signatures, seq 1..n,
/// sizes never shrinking). Returns the parsed checkpoints in order.
pub fn open_checkpoints(
    stored: &[StoredCheckpoint],
    verifier: &NoteVerifier,
) -> Result<Vec<Checkpoint>, VerifyError> {
    let mut out: Vec<Checkpoint> = Vec::with_capacity(stored.len());
    for (i, s) in stored.iter().enumerate() {
        // Records from the last good checkpoint on are the first ones a bad
        // checkpoint leaves without a valid signature: name that index.
        let first_unsigned = Some(out.last().map_or(0, |c: &Checkpoint| c.size));
        let cp = Checkpoint::open(&s.note, verifier)
            .map_err(|e| fail(first_unsigned, Some(s.seq), Problem::CheckpointNote(e)))?;
        let expected = i as u64 + 1;
        if cp.seq != expected {
            return Err(fail(
                first_unsigned,
                Some(cp.seq),
                Problem::CheckpointSequence {
                    expected,
                    found: cp.seq,
                },
            ));
        }
        if cp.seq != s.seq || cp.size != s.size {
            return Err(fail(
                first_unsigned,
                Some(cp.seq),
                Problem::CheckpointColumns,
            ));
        }
        if let Some(prev) = out.last() {
            if cp.size < prev.size {
                return Err(fail(
                    first_unsigned,
                    Some(cp.seq),
                    Problem::CheckpointShrinks {
                        previous: prev.size,
                        size: cp.size,
                    },
                ));
            }
        }
        out.push(cp);
    }
    Ok(out)
}

/// What verification needs of one record once its own bytes have been examined: the leaf hash
/// recomputed from them and, with `check_format`, whether they are a canonical record. This part
/// needs nothing but the record, so [`verify_sink`] runs it on several threads; everything that
/// depends on the order of records (indexes, the tree, checkpoints) runs on one.
struct Examined {
    index: u64,
    stored_leaf: Hash,
    leaf: Hash,
    format: Result<(), RecordError>,
}

fn examine(rec: &StoredRecord, check_format: bool) -> Examined {
    Examined {
        index: rec.index,
        stored_leaf: rec.leaf_hash,
        leaf: leaf_hash(&rec.bytes),
        format: if check_format {
            Record::from_canonical(&rec.bytes).map(drop)
        } else {
            Ok(())
        },
    }
}

/// Verifies records (in index order) against stored checkpoints.
pub fn verify_records<I>(
    records: I,
    checkpoints: &[StoredCheckpoint],
    verifier: &NoteVerifier,
    opts: VerifyOptions,
) -> Result<VerifyReport, VerifyError>
where
    I: IntoIterator<Item = Result<StoredRecord, SinkError>>,
{
    let examined = records
        .into_iter()
        .map(|rec| rec.map(|rec| examine(&rec, opts.check_format)));
    verify_examined(examined, checkpoints, verifier, opts)
}

/// The part of verification that follows the order of records, over records already examined.
fn verify_examined<I>(
    records: I,
    checkpoints: &[StoredCheckpoint],
    verifier: &NoteVerifier,
    opts: VerifyOptions,
) -> Result<VerifyReport, VerifyError>
where
    I: IntoIterator<Item = Result<Examined, SinkError>>,
{
    let cps = open_checkpoints(checkpoints, verifier)?;
    let mut tree = MerkleTree::new();
    // Checkpoints not yet matched against the tree, and the size the last
    // matched one covered (the start of the range a mismatch implicates).
    let mut next_cp = 0usize;
    let mut good_size = 0u64;
    let check_due =
        |tree: &MerkleTree, next_cp: &mut usize, good_size: &mut u64| -> Result<(), VerifyError> {
            while let Some(cp) = cps.get(*next_cp) {
                if cp.size != tree.len() {
                    break;
                }
                if tree.root() != cp.root {
                    return Err(fail(
                        Some(*good_size),
                        Some(cp.seq),
                        Problem::RootMismatch {
                            checkpoint_seq: cp.seq,
                            size: cp.size,
                        },
                    ));
                }
                *good_size = cp.size;
                *next_cp += 1;
            }
            Ok(())
        };
    check_due(&tree, &mut next_cp, &mut good_size)?;
    for rec in records {
        let rec = rec.map_err(VerifyError::Sink)?;
        let index = tree.len();
        if rec.index != index {
            return Err(fail(
                Some(index),
                None,
                Problem::IndexGap { found: rec.index },
            ));
        }
        if rec.leaf != rec.stored_leaf {
            return Err(fail(Some(index), None, Problem::LeafHash));
        }
        rec.format
            .map_err(|e| fail(Some(index), None, Problem::Format(e)))?;
        tree.push(rec.leaf);
        check_due(&tree, &mut next_cp, &mut good_size)?;
    }
    if let Some(cp) = cps.get(next_cp) {
        return Err(fail(
            Some(tree.len()),
            Some(cp.seq),
            Problem::Truncated {
                checkpoint_seq: cp.seq,
                size: cp.size,
            },
        ));
    }
    // Each checkpoint matched the recomputed tree, so consecutive ones are
    // consistent by construction; still check it the way an outside auditor
    // holding only the two checkpoints would, so the proof code is exercised
    // on every real ledger.
    for pair in cps.windows(2) {
        if let [a, b] = pair {
            let ok = tree
                .consistency_proof(a.size, b.size)
                .ok()
                .is_some_and(|p| verify_consistency(a.size, b.size, &a.root, &b.root, &p).is_ok());
            if !ok {
                return Err(fail(
                    Some(a.size),
                    Some(b.seq),
                    Problem::Inconsistent {
                        from_seq: a.seq,
                        to_seq: b.seq,
                    },
                ));
            }
        }
    }
    let latest = cps.last().cloned();
    let signed = latest.as_ref().map_or(0, |c| c.size);
    let unsigned_tail = tree.len() - signed;
    if opts.require_signed_tail && unsigned_tail > 0 {
        return Err(fail(Some(signed), None, Problem::Unsigned));
    }
    Ok(VerifyReport {
        records: tree.len(),
        checkpoints: cps.len() as u64,
        latest,
        unsigned_tail,
    })
}

/// Verifies everything a sink holds. Three stages overlap: this thread reads chunks of
/// records; examiners hash (and with `check_format` parse) each chunk's records;
/// one thread puts the examined chunks back in order and does the rest. Hashing and parsing are
/// most of the work, and they are the part that spreads over cores.
pub fn verify_sink<S: LedgerSink + ?Sized>(
    sink: &S,
    verifier: &NoteVerifier,
    opts: VerifyOptions,
) -> Result<VerifyReport, VerifyError> {
    // Hashing a record costs about what reading it does, so the reader keeps a core of its own;
    // parsing it too (the format check) costs several times more, and every core examines.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    let examiners = if opts.check_format {
        cores
    } else {
        cores.saturating_sub(1).max(1)
    };
    let pipeline = Pipeline {
        chunk_records: READ_CHUNK,
        examiners,
        examine,
    };
    verify_sink_in_chunks(sink, verifier, opts, pipeline)
}

/// How [`verify_sink`] splits its work; tests choose small chunks, several examiners and an
/// examiner that fails.
struct Pipeline {
    chunk_records: u64,
    examiners: usize,
    examine: fn(&StoredRecord, bool) -> Examined,
}

fn verify_sink_in_chunks<S: LedgerSink + ?Sized>(
    sink: &S,
    verifier: &NoteVerifier,
    opts: VerifyOptions,
    pipeline: Pipeline,
) -> Result<VerifyReport, VerifyError> {
    type Chunk<T> = (u64, Result<Vec<T>, SinkError>);
    let checkpoints = sink.checkpoints().map_err(VerifyError::Sink)?;
    let count = sink.record_count().map_err(VerifyError::Sink)?;
    let Pipeline {
        chunk_records,
        examiners,
        examine,
    } = pipeline;
    let examiners = examiners.max(1);
    // Two chunks waiting at each hand-over keep every thread busy; memory stays within a few
    // chunks per examiner (the last stage may also hold examined chunks, about 100 bytes a
    // record, while it waits for an earlier one).
    let (read_tx, read_rx) = mpsc::sync_channel::<Chunk<StoredRecord>>(2);
    // Shared by the examiners alone: once they have all stopped (because the last stage did),
    // the receiver is gone and the reader's next send fails instead of waiting forever.
    let read_rx = Arc::new(Mutex::new(read_rx));
    let (examined_tx, examined_rx) = mpsc::sync_channel::<Chunk<Examined>>(2);
    std::thread::scope(|scope| {
        let examining: Vec<_> = (0..examiners)
            .map(|_| {
                let (read_rx, examined_tx) = (read_rx.clone(), examined_tx.clone());
                scope.spawn(move || loop {
                    // The lock is held only while waiting for the next chunk, never while working.
                    let next = read_rx
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .recv();
                    let Ok((seq, chunk)) = next else { break };
                    // A panic while examining becomes this chunk's error, so that no chunk is
                    // ever missing and the last stage reports it in its place.
                    let examined = chunk.and_then(|records| {
                        std::panic::catch_unwind(|| {
                            records
                                .iter()
                                .map(|rec| examine(rec, opts.check_format))
                                .collect()
                        })
                        .map_err(|_| {
                            let first = records.first().map_or(0, |r| r.index);
                            format!("examining the records from index {first} on failed (a panic)")
                                .into()
                        })
                    });
                    // A send error means the last stage stopped early (it found a problem).
                    if examined_tx.send((seq, examined)).is_err() {
                        break;
                    }
                })
            })
            .collect();
        drop((read_rx, examined_tx));
        let last_stage = scope.spawn(move || {
            let records = in_order(examined_rx).flat_map(|chunk| {
                // A chunk's records one by one, or its error in their place; not copied.
                let (records, error) = match chunk {
                    Ok(records) => (records, None),
                    Err(e) => (Vec::new(), Some(e)),
                };
                records.into_iter().map(Ok).chain(error.map(Err))
            });
            verify_examined(records, &checkpoints, verifier, opts)
        });
        let (mut from, mut seq) = (0u64, 0u64);
        while from < count {
            let to = from.saturating_add(chunk_records.max(1)).min(count);
            let chunk = sink.read_records(from, to);
            let failed = chunk.is_err();
            // A send error means every examiner stopped, because the last stage did.
            if read_tx.send((seq, chunk)).is_err() || failed {
                break;
            }
            (from, seq) = (to, seq + 1);
        }
        drop(read_tx);
        // Every thread is joined here, so that a panic is an error rather than a panic of
        // this call.
        let verified = last_stage.join();
        let joined: Vec<_> = examining.into_iter().map(|e| e.join()).collect();
        match verified {
            Ok(report) if joined.iter().all(Result::is_ok) => report,
            _ => Err(VerifyError::Sink("a verification thread panicked".into())),
        }
    })
}

/// Chunks numbered 0, 1, 2, ... as they arrive in any order, given back in order. Ends at the
/// first number that never comes (every sender is gone), so that records after a missing chunk
/// are never verified as if they came next.
fn in_order<T>(rx: mpsc::Receiver<(u64, T)>) -> impl Iterator<Item = T> {
    let mut waiting = std::collections::BTreeMap::new();
    let mut next = 0u64;
    std::iter::from_fn(move || loop {
        if let Some(chunk) = waiting.remove(&next) {
            next += 1;
            return Some(chunk);
        }
        let (seq, chunk) = rx.recv().ok()?;
        waiting.insert(seq, chunk);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AppendRecord, Appender, AppenderConfig, MemorySink, NoteSigner, RecordKind};
    use std::time::Duration;

    /// Records and checkpoints as stored, however they were tampered with; read-only.
    struct Stored {
        records: Vec<StoredRecord>,
        checkpoints: Vec<StoredCheckpoint>,
        /// Reading records from this index on fails, as a storage error would.
        unreadable_from: u64,
    }

    impl LedgerSink for Stored {
        fn append(
            &mut self,
            _: &[AppendRecord],
            _: Option<&StoredCheckpoint>,
        ) -> Result<(), SinkError> {
            Err("read-only".into())
        }
        fn record_count(&self) -> Result<u64, SinkError> {
            Ok(self.records.len() as u64)
        }
        fn leaf_hashes(&self, from: u64, to: u64) -> Result<Vec<Hash>, SinkError> {
            Ok(self
                .read_records(from, to)?
                .iter()
                .map(|r| r.leaf_hash)
                .collect())
        }
        fn read_records(&self, from: u64, to: u64) -> Result<Vec<StoredRecord>, SinkError> {
            if to > self.unreadable_from {
                return Err(format!("disk error reading record {}", self.unreadable_from).into());
            }
            Ok(self
                .records
                .get(from as usize..to as usize)
                .unwrap_or_default()
                .to_vec())
        }
        fn checkpoints(&self) -> Result<Vec<StoredCheckpoint>, SinkError> {
            Ok(self.checkpoints.clone())
        }
    }

    fn signer() -> NoteSigner {
        NoteSigner::from_seed("gavel.test/ledger", &[7u8; 32]).unwrap()
    }

    fn ledger(n: usize) -> Stored {
        let sink = MemorySink::new();
        let config = AppenderConfig {
            checkpoint_every: 16,
            checkpoint_interval: Duration::from_secs(3600),
            ..AppenderConfig::default()
        };
        let app = Appender::start(sink.clone(), signer(), config).unwrap();
        for i in 0..n {
            let body = serde_json::json!({ "deployment": "prod", "n": i });
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
        let (records, checkpoints) = sink.snapshot();
        Stored {
            records,
            checkpoints,
            unreadable_from: u64::MAX,
        }
    }

    fn one_pass(s: &Stored) -> Result<VerifyReport, VerifyError> {
        verify_records(
            s.records.iter().cloned().map(Ok),
            &s.checkpoints,
            &signer().verifier(),
            VerifyOptions::default(),
        )
    }

    /// Four examiners even on one core, so that chunks come back out of order.
    fn in_chunks_of_7(s: &Stored) -> Result<VerifyReport, VerifyError> {
        let pipeline = Pipeline {
            chunk_records: 7,
            examiners: 4,
            examine,
        };
        verify_sink_in_chunks(s, &signer().verifier(), VerifyOptions::default(), pipeline)
    }

    /// Chunks examined on several threads and put back in order give what one pass over the
    /// records gives: the same report, or the same first problem at the same index, including
    /// across chunk boundaries (7, 14, 21, ...).
    #[test]
    fn chunks_examined_on_several_threads_verify_like_one_pass() {
        type Tamper = fn(&mut Stored);
        let tampers: [(&str, Tamper); 6] = [
            ("untouched", |_| {}),
            ("a byte edited in the sixth chunk", |s| {
                s.records[40].bytes[5] ^= 1
            }),
            ("records swapped across a chunk boundary", |s| {
                s.records.swap(20, 21)
            }),
            ("a record deleted", |s| {
                s.records.remove(50);
            }),
            ("records truncated mid-chunk", |s| s.records.truncate(60)),
            ("bytes that are no canonical record, hash updated", |s| {
                s.records[33].bytes = b"{\"not\": \"a record\"}".to_vec();
                s.records[33].leaf_hash = leaf_hash(&s.records[33].bytes);
            }),
        ];
        for (what, tamper) in tampers {
            let mut s = ledger(100);
            tamper(&mut s);
            match (one_pass(&s), in_chunks_of_7(&s)) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{what}"),
                (Err(VerifyError::Failed(a)), Err(VerifyError::Failed(b))) => {
                    assert_eq!(a, b, "{what}")
                }
                (a, b) => panic!("{what}: one pass gave {a:?}, chunks gave {b:?}"),
            }
        }
        assert_eq!(in_chunks_of_7(&ledger(100)).unwrap().records, 100);
    }

    /// A read that fails part-way is an error, never a report over the records read before it.
    #[test]
    fn a_storage_error_part_way_is_not_a_shorter_ledger() {
        let mut s = ledger(100);
        s.unreadable_from = 90;
        s.checkpoints.truncate(3);
        assert!(one_pass(&Stored {
            records: s.records[..90].to_vec(),
            checkpoints: s.checkpoints.clone(),
            unreadable_from: u64::MAX
        })
        .is_ok());
        match in_chunks_of_7(&s) {
            Err(VerifyError::Sink(e)) => assert!(e.to_string().contains("disk error"), "{e}"),
            other => panic!("expected the storage error, got {other:?}"),
        }
    }

    /// An examiner that panics costs its chunk an error in its place: never a panic of the
    /// caller, never a report, never a wait for the rest of the ledger.
    #[test]
    fn a_panic_while_examining_is_an_error_in_its_place() {
        fn panics_at_30(rec: &StoredRecord, check_format: bool) -> Examined {
            assert_ne!(rec.index, 30, "a bug in examining");
            examine(rec, check_format)
        }
        let s = ledger(100);
        let pipeline = Pipeline {
            chunk_records: 7,
            examiners: 4,
            examine: panics_at_30,
        };
        match verify_sink_in_chunks(&s, &signer().verifier(), VerifyOptions::default(), pipeline) {
            Err(VerifyError::Sink(e)) => assert!(e.to_string().contains("index 28"), "{e}"),
            other => panic!("expected an error for the chunk from 28, got {other:?}"),
        }
    }
}
