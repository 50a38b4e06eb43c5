//! Full re-derivation of a stored ledger: every leaf hash from its bytes, the
//! tree, every checkpoint signature, and consistency between consecutive
//! checkpoints. Reports the first problem found and where.

use crate::merkle::{leaf_hash, verify_consistency, MerkleTree};
use crate::note::{Checkpoint, NoteError, NoteVerifier};
use crate::record::{Record, RecordError};
use crate::sink::{LedgerSink, SinkError, StoredCheckpoint, StoredRecord};
use std::fmt;
use std::sync::mpsc;

/// Records read from a sink per call while verifying.
const READ_CHUNK: u64 = 16_384;

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
        let leaf = leaf_hash(&rec.bytes);
        if leaf != rec.leaf_hash {
            return Err(fail(Some(index), None, Problem::LeafHash));
        }
        if opts.check_format {
            Record::from_canonical(&rec.bytes)
                .map_err(|e| fail(Some(index), None, Problem::Format(e)))?;
        }
        tree.push(leaf);
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

/// Verifies everything a sink holds. Reading (storage I/O and decoding) and
/// verifying (hashing) overlap: this thread reads chunks while a scoped
/// worker verifies the previous ones, which roughly doubles throughput over
/// doing both in turn.
pub fn verify_sink<S: LedgerSink + ?Sized>(
    sink: &S,
    verifier: &NoteVerifier,
    opts: VerifyOptions,
) -> Result<VerifyReport, VerifyError> {
    let checkpoints = sink.checkpoints().map_err(VerifyError::Sink)?;
    let count = sink.record_count().map_err(VerifyError::Sink)?;
    // A few chunks in flight bound memory while keeping both threads busy.
    let (tx, rx) = mpsc::sync_channel::<Result<Vec<StoredRecord>, SinkError>>(4);
    std::thread::scope(|scope| {
        let worker = scope.spawn(move || {
            let records =
                rx.into_iter()
                    .flat_map(|chunk| -> Vec<Result<StoredRecord, SinkError>> {
                        match chunk {
                            Ok(v) => v.into_iter().map(Ok).collect(),
                            Err(e) => vec![Err(e)],
                        }
                    });
            verify_records(records, &checkpoints, verifier, opts)
        });
        let mut from = 0u64;
        while from < count {
            let to = from.saturating_add(READ_CHUNK).min(count);
            let chunk = sink.read_records(from, to);
            let failed = chunk.is_err();
            // A send error means the worker stopped early (it found a
            // problem); its result says which.
            if tx.send(chunk).is_err() || failed {
                break;
            }
            from = to;
        }
        drop(tx);
        worker
            .join()
            .unwrap_or_else(|_| Err(VerifyError::Sink("verification thread panicked".into())))
    })
}
