//! Full re-derivation of a stored ledger: every leaf hash from its bytes, the
//! tree, every checkpoint signature, and consistency between consecutive
//! checkpoints. Reports the first problem found and where. Its memory does not
//! grow with the ledger: the tree is kept as its right edge.

use crate::merkle::{
    consistency_ranges, is_stored_level, leaf_hash, stored_levels, verify_consistency, Hash,
    MerkleFrontier, RangeHashes,
};
use crate::note::{Checkpoint, NoteError, NoteVerifier};
use crate::record::{Record, RecordAids, RecordError};
use crate::sink::{
    tree_nodes_past, AidCheck, AidError, LedgerSink, SinkError, StoredCheckpoint, StoredRecord,
    VisitWithAids,
};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

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
    /// that find records by approval) against the records: an edited aid changes no record,
    /// but can hide one from a filtered query. Checked in the same pass as the rest, for sinks
    /// that keep aids ([`LedgerSink::visit_records_with_aids`]); a wrong aid is reported only
    /// when everything else verifies, at the first record whose aids are wrong. On by default.
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
    /// A stored row holds an index no append writes (below 0): verification reads records
    /// from index 0 and would never see it, but lookups by id may return it.
    RowOutside { index: i64 },
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
    /// A stored tree node (the hash of the complete subtree `index` of `level`, kept so that
    /// proofs read O(log n) hashes) is not the hash of its records. Reported at the last record
    /// it covers, once everything else has verified: proofs built through it fail their check
    /// against the signed root and are rebuilt from the leaves, so it changes no answer, but
    /// it was edited.
    TreeNode { level: u32, index: u64 },
    /// A tree node is stored where the tree has none (past its records, or at a level nodes
    /// are not kept at). A writer refuses to start on it (past the records at a stored level,
    /// the append reaching it would fail).
    ExtraTreeNode { level: u32, index: u64 },
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
            Problem::RowOutside { index } => write!(f, "a row holds the record index {index}, which no append writes (a row inserted outside the ledger)"),
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
            Problem::TreeNode { level, index } => write!(
                f,
                "the stored tree node {index} of level {level} is not the hash of its records (edited); proofs through it fail their check and are rebuilt from the leaves"
            ),
            Problem::ExtraTreeNode { level, index } => write!(
                f,
                "a tree node {index} of level {level} is stored where the tree has none (inserted)"
            ),
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
/// recomputed from them, with `check_format` whether they are a canonical record, and with
/// `check_query_aids` whether the sink's aids for it agree with them. This part needs nothing
/// but the record, so [`verify_sink`] runs it on several threads; everything that depends on
/// the order of records (indexes, the tree, checkpoints) runs on one.
struct Examined {
    index: u64,
    stored_leaf: Hash,
    leaf: Hash,
    format: Result<(), RecordError>,
    aids: Result<(), AidError>,
    /// The stored tree nodes this record completes, as `(level, hash)` (see
    /// [`LedgerSink::tree_nodes`]): empty for most records, and where the sink keeps none.
    stored_nodes: Vec<(u32, Hash)>,
}

fn examine(
    index: u64,
    stored_leaf: &Hash,
    bytes: &[u8],
    opts: VerifyOptions,
    aid_check: Option<AidCheck<'_>>,
) -> Examined {
    let check_aids = aid_check.filter(|_| opts.check_query_aids);
    let (format, aids) = match (check_aids, opts.check_format) {
        (None, false) => (Ok(()), Ok(())),
        (None, true) => (Record::check_canonical(bytes), Ok(())),
        // One pass gives the format's answer and the aids.
        (Some(check), true) => match RecordAids::from_canonical(bytes) {
            Ok(aids) => (Ok(()), check(&aids)),
            Err(e) => (Err(e), Ok(())),
        },
        (Some(check), false) => match RecordAids::from_bytes(bytes) {
            Ok(aids) => (Ok(()), check(&aids)),
            Err(e) => (
                Ok(()),
                Err(AidError::Mismatch(format!(
                    "the record's lookup columns cannot be read from it: {e}"
                ))),
            ),
        },
    };
    Examined {
        index,
        stored_leaf: *stored_leaf,
        leaf: leaf_hash(bytes),
        format,
        aids,
        stored_nodes: Vec::new(),
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
        .map(|rec| rec.map(|r| examine(r.index, &r.leaf_hash, &r.bytes, opts, None)));
    verify_examined(examined, checkpoints, verifier, opts)
}

/// The signed checkpoints, matched in order against the tree as it grows.
struct SignedRoots<'c> {
    cps: &'c [Checkpoint],
    /// The first checkpoint not matched yet.
    next_cp: usize,
    /// The size the last matched one covered (the start of the range a mismatch implicates).
    good_size: u64,
    /// From the last matched checkpoint to the next: the hashes of the RFC 9162 consistency
    /// proof between them, collected as the records between them pass (those below the older
    /// one are blocks of the tree's right edge when it was matched).
    consistency: Option<(usize, RangeHashes)>,
}

impl SignedRoots<'_> {
    /// Matches every checkpoint of the tree's size. Each root is the root of the records as
    /// stored, so consecutive checkpoints are consistent by construction; each pair is still
    /// checked with a consistency proof, as an auditor holding only the two would check it.
    fn check_due(&mut self, tree: &MerkleFrontier) -> Result<(), VerifyError> {
        while let Some(cp) = self.cps.get(self.next_cp) {
            if cp.size != tree.len() {
                break;
            }
            if tree.root() != cp.root {
                return Err(fail(
                    Some(self.good_size),
                    Some(cp.seq),
                    Problem::RootMismatch {
                        checkpoint_seq: cp.seq,
                        size: cp.size,
                    },
                ));
            }
            if let Some((from, proof)) = self.consistency.take() {
                let a = &self.cps[from];
                let consistent = proof.hashes().is_some_and(|p| {
                    verify_consistency(a.size, cp.size, &a.root, &cp.root, &p).is_ok()
                });
                if !consistent {
                    return Err(fail(
                        Some(a.size),
                        Some(cp.seq),
                        Problem::Inconsistent {
                            from_seq: a.seq,
                            to_seq: cp.seq,
                        },
                    ));
                }
            }
            if let Some(next) = self.cps.get(self.next_cp + 1) {
                let ranges = consistency_ranges(cp.size, next.size).unwrap_or_default();
                let mut proof = RangeHashes::new(ranges, cp.size);
                proof.known(tree.blocks());
                self.consistency = Some((self.next_cp, proof));
            }
            self.good_size = cp.size;
            self.next_cp += 1;
        }
        Ok(())
    }
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
    // The tree's right edge: its root as it grows, in memory that does not grow with the ledger.
    let mut tree = MerkleFrontier::new();
    let mut signed = SignedRoots {
        cps: &cps,
        next_cp: 0,
        good_size: 0,
        consistency: None,
    };
    signed.check_due(&tree)?;
    // Reported only once everything else has verified, as when the aids were checked in a
    // pass of their own over the proven records; so is a failure to read what an aid check
    // needs, which must not hide a problem with the records.
    let mut first_wrong_aid: Option<(u64, AidError)> = None;
    let mut first_wrong_node: Option<(u64, Problem)> = None;
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
        if let Err(wrong) = rec.aids {
            first_wrong_aid.get_or_insert((index, wrong));
        }
        tree.push_reporting(rec.leaf, |node| {
            let stored = rec
                .stored_nodes
                .iter()
                .find(|(level, _)| *level == node.level);
            if stored.is_some_and(|(_, hash)| *hash != node.hash) {
                first_wrong_node.get_or_insert((
                    index,
                    Problem::TreeNode {
                        level: node.level,
                        index: node.index,
                    },
                ));
            }
        });
        if let Some((_, proof)) = signed.consistency.as_mut() {
            proof.push(rec.leaf);
        }
        signed.check_due(&tree)?;
    }
    if let Some(cp) = cps.get(signed.next_cp) {
        return Err(fail(
            Some(tree.len()),
            Some(cp.seq),
            Problem::Truncated {
                checkpoint_seq: cp.seq,
                size: cp.size,
            },
        ));
    }
    let latest = cps.last().cloned();
    let signed = latest.as_ref().map_or(0, |c| c.size);
    let unsigned_tail = tree.len() - signed;
    if opts.require_signed_tail && unsigned_tail > 0 {
        return Err(fail(Some(signed), None, Problem::Unsigned));
    }
    match first_wrong_aid {
        Some((index, AidError::Mismatch(what))) => {
            return Err(fail(Some(index), None, Problem::QueryAid(what)))
        }
        Some((_, AidError::Sink(e))) => return Err(VerifyError::Sink(e)),
        None => {}
    }
    if let Some((index, problem)) = first_wrong_node {
        return Err(fail(Some(index), None, problem));
    }
    Ok(VerifyReport {
        records: tree.len(),
        checkpoints: cps.len() as u64,
        latest,
        unsigned_tail,
    })
}

/// Verifies everything a sink holds. Workers take chunks of records in turn, each reading its
/// chunk in place and examining it (the leaf hash, and with `check_format` the parse); one thread
/// puts the examined chunks back in order and does the rest. A worker per core (at most 8), each
/// with a reader of its own ([`LedgerSink::parallel_reader`]), the calling thread among them;
/// a sink without such readers is read on the calling thread alone. Reading and hashing are most
/// of the work, and they are the part that spreads.
pub fn verify_sink<S: LedgerSink + ?Sized>(
    sink: &S,
    verifier: &NoteVerifier,
    opts: VerifyOptions,
) -> Result<VerifyReport, VerifyError> {
    verify_sink_reporting(sink, verifier, opts, &|_, _| {})
}

/// [`verify_sink`], calling `progress(records examined, records stored)` as chunks of records
/// come back in order (every [`READ_CHUNK`] records or so), for a caller that shows long work.
pub fn verify_sink_reporting<S: LedgerSink + ?Sized>(
    sink: &S,
    verifier: &NoteVerifier,
    opts: VerifyOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<VerifyReport, VerifyError> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    let pipeline = Pipeline {
        chunk_records: READ_CHUNK,
        workers: cores,
        examine,
    };
    verify_sink_in_chunks(sink, verifier, opts, pipeline, progress)
}

/// How [`verify_sink`] splits its work; tests choose small chunks, several workers and an
/// examiner that fails.
struct Pipeline {
    chunk_records: u64,
    /// At most this many read and examine; fewer if the sink has fewer readers.
    workers: usize,
    examine: Examiner,
}

/// Examines one record: [`examine`], or in tests one that fails.
type Examiner = fn(u64, &Hash, &[u8], VerifyOptions, Option<AidCheck<'_>>) -> Examined;

type Chunk = (u64, Result<Vec<Examined>, SinkError>);

fn verify_sink_in_chunks<S: LedgerSink + ?Sized>(
    sink: &S,
    verifier: &NoteVerifier,
    opts: VerifyOptions,
    pipeline: Pipeline,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<VerifyReport, VerifyError> {
    let checkpoints = sink.checkpoints().map_err(VerifyError::Sink)?;
    let count = sink.record_count().map_err(VerifyError::Sink)?;
    let mut readers = Vec::new();
    while readers.len() < pipeline.workers {
        match sink.parallel_reader().map_err(VerifyError::Sink)? {
            Some(reader) => readers.push(reader),
            None => break,
        }
    }
    let chunks = Chunks {
        next: AtomicU64::new(0),
        count,
        records: pipeline.chunk_records.max(1),
        examine: pipeline.examine,
        opts,
    };
    // Two chunks waiting per worker keep every thread busy; the last stage may also hold
    // examined chunks (about 100 bytes a record) while it waits for an earlier one.
    let (examined_tx, examined_rx) = mpsc::sync_channel::<Chunk>(2 * readers.len().max(1));
    // The calling thread works too: with a reader of its own if the sink has one for it.
    let own_reader = readers.pop();
    std::thread::scope(|scope| {
        let last_stage = scope.spawn(move || {
            let mut examined = 0u64;
            let records = in_order(examined_rx).flat_map(|chunk| {
                // A chunk's records one by one, or its error in their place; not copied.
                let (records, error) = match chunk {
                    Ok(records) => (records, None),
                    Err(e) => (Vec::new(), Some(e)),
                };
                examined += records.len() as u64;
                progress(examined, count);
                records.into_iter().map(Ok).chain(error.map(Err))
            });
            verify_examined(records, &checkpoints, verifier, opts)
        });
        let chunks = &chunks;
        let working: Vec<_> = readers
            .into_iter()
            .map(|reader| {
                let tx = examined_tx.clone();
                scope.spawn(move || {
                    chunks.work(
                        &tx,
                        |f, t, v| reader.visit_records_with_aids(f, t, v),
                        |l, f, t| reader.tree_nodes(l, f, t),
                    )
                })
            })
            .collect();
        match own_reader {
            Some(reader) => chunks.work(
                &examined_tx,
                |f, t, v| reader.visit_records_with_aids(f, t, v),
                |l, f, t| reader.tree_nodes(l, f, t),
            ),
            None => chunks.work(
                &examined_tx,
                |f, t, v| sink.visit_records_with_aids(f, t, v),
                |l, f, t| sink.tree_nodes(l, f, t),
            ),
        }
        drop(examined_tx);
        // Every thread is joined here, so that a panic is an error rather than a panic of
        // this call.
        let joined: Vec<_> = working.into_iter().map(|w| w.join()).collect();
        let report = match last_stage.join() {
            Ok(report) if joined.iter().all(Result::is_ok) => report?,
            _ => return Err(VerifyError::Sink("a verification thread panicked".into())),
        };
        match extra_tree_node(sink, report.records).map_err(VerifyError::Sink)? {
            Some(problem) => Err(fail(None, None, problem)),
            None => Ok(report),
        }
    })
}

/// The chunks of one verification, handed out in turn to whichever worker asks next.
struct Chunks {
    next: AtomicU64,
    count: u64,
    records: u64,
    examine: Examiner,
    opts: VerifyOptions,
}

impl Chunks {
    /// Reads and examines chunks until none is left or the last stage has stopped (it found a
    /// problem). Every chunk taken is sent, examined or as its error, so that the last stage
    /// never waits for one that will not come; after an error this worker stops.
    fn work<R, N>(&self, tx: &mpsc::SyncSender<Chunk>, read: R, nodes: N)
    where
        R: Fn(u64, u64, VisitWithAids<'_>) -> Result<(), SinkError>,
        N: Fn(u32, u64, u64) -> Result<Vec<(u64, Hash)>, SinkError>,
    {
        loop {
            let seq = self.next.fetch_add(1, Ordering::Relaxed);
            let from = seq.saturating_mul(self.records);
            if from >= self.count {
                return;
            }
            let to = from.saturating_add(self.records).min(self.count);
            let mut examined = Vec::with_capacity((to - from) as usize);
            let (examine, opts) = (self.examine, self.opts);
            // A panic while reading or examining becomes this chunk's error, in its place.
            let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                read(from, to, &mut |index, stored, bytes, aid_check| {
                    examined.push(examine(index, stored, bytes, opts, aid_check));
                })?;
                attach_stored_nodes(&mut examined, from, to, &nodes)
            }))
            .unwrap_or_else(|_| {
                Err(format!("examining the records from index {from} on failed (a panic)").into())
            });
            let failed = read.is_err();
            if tx.send((seq, read.map(|()| examined))).is_err() || failed {
                return;
            }
        }
    }
}

/// Hands each stored tree node that records `[from, to)` complete to the record that completes
/// it (the last it covers), for the last stage to compare with the node its tree computes.
fn attach_stored_nodes<N>(
    examined: &mut [Examined],
    from: u64,
    to: u64,
    nodes: &N,
) -> Result<(), SinkError>
where
    N: Fn(u32, u64, u64) -> Result<Vec<(u64, Hash)>, SinkError>,
{
    for level in stored_levels() {
        // Node i of this level is completed by record ((i + 1) << level) - 1.
        let (first, end) = (from >> level, to >> level);
        if first == end {
            continue;
        }
        for (index, hash) in nodes(level, first, end)? {
            let last = ((index + 1) << level) - 1;
            if let Ok(at) = examined.binary_search_by_key(&last, |e| e.index) {
                examined[at].stored_nodes.push((level, hash));
            }
        }
    }
    Ok(())
}

/// A node stored where the tree has none ([`tree_nodes_past`]); such a row is read by nothing,
/// so the chunks do not see it. A writer may have appended since verification counted `count`
/// records, with the nodes they complete: the records are counted again after the nodes are
/// read (a node is committed with its records, so a real one never lies past that count).
fn extra_tree_node<S: LedgerSink + ?Sized>(
    sink: &S,
    count: u64,
) -> Result<Option<Problem>, SinkError> {
    let past = tree_nodes_past(sink, count)?;
    if past.is_empty() {
        return Ok(None);
    }
    let now = sink.record_count()?;
    Ok(past
        .into_iter()
        .find(|&(level, index)| !is_stored_level(level) || index >= now >> level)
        .map(|(level, index)| Problem::ExtraTreeNode { level, index }))
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
    use crate::{
        AppendRecord, Appender, AppenderConfig, MemorySink, NoteSigner, RecordKind, RecordReader,
        Visit,
    };
    use std::time::Duration;

    /// Records and checkpoints as stored, however they were tampered with; read-only.
    #[derive(Clone)]
    struct Stored {
        records: Vec<StoredRecord>,
        checkpoints: Vec<StoredCheckpoint>,
        /// Reading records from this index on fails, as a storage error would.
        unreadable_from: u64,
        /// Records whose query aid (a copy of the body's `deployment`, "prod" in every
        /// record `ledger` makes) was edited.
        edited_aids: Vec<u64>,
        /// Records whose aid cannot be read, as a storage error would have it.
        unreadable_aids: Vec<u64>,
        /// Tree nodes by `(level, index)`, as the appender stored them.
        nodes: std::collections::BTreeMap<(u32, u64), Hash>,
    }

    impl Stored {
        /// The sink's aid for record `index` against the one its bytes give.
        fn check_aid(&self, index: u64, aids: &RecordAids) -> Result<(), AidError> {
            if self.unreadable_aids.contains(&index) {
                return Err(AidError::Sink(
                    format!("disk error reading the aids of record {index}").into(),
                ));
            }
            let stored = if self.edited_aids.contains(&index) {
                "edited"
            } else {
                "prod"
            };
            match aids.fields.deployment.as_deref() {
                Some(d) if d == stored => Ok(()),
                derived => Err(AidError::Mismatch(format!(
                    "the deployment aid holds {stored:?} but the record says {derived:?}"
                ))),
            }
        }
    }

    impl LedgerSink for Stored {
        fn append(
            &mut self,
            _: &[AppendRecord],
            _: &[crate::TreeNode],
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
        fn visit_records_with_aids(
            &self,
            from: u64,
            to: u64,
            visit: VisitWithAids<'_>,
        ) -> Result<(), SinkError> {
            LedgerSink::visit_records(self, from, to, &mut |index, hash, bytes| {
                visit(
                    index,
                    hash,
                    bytes,
                    Some(&mut |aids| self.check_aid(index, aids)),
                )
            })
        }
        /// A copy per reader, as a database's connections each read the same records.
        fn parallel_reader(&self) -> Result<Option<Box<dyn RecordReader>>, SinkError> {
            Ok(Some(Box::new(self.clone())))
        }
        fn tree_nodes(
            &self,
            level: u32,
            from: u64,
            to: u64,
        ) -> Result<Vec<(u64, Hash)>, SinkError> {
            Ok(self
                .nodes
                .range((level, from)..(level, to.max(from)))
                .map(|(&(_, index), hash)| (index, *hash))
                .collect())
        }
    }

    impl RecordReader for Stored {
        fn visit_records(&self, from: u64, to: u64, visit: Visit<'_>) -> Result<(), SinkError> {
            LedgerSink::visit_records(self, from, to, visit)
        }
        fn visit_records_with_aids(
            &self,
            from: u64,
            to: u64,
            visit: VisitWithAids<'_>,
        ) -> Result<(), SinkError> {
            LedgerSink::visit_records_with_aids(self, from, to, visit)
        }
        fn tree_nodes(
            &self,
            level: u32,
            from: u64,
            to: u64,
        ) -> Result<Vec<(u64, Hash)>, SinkError> {
            LedgerSink::tree_nodes(self, level, from, to)
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
            edited_aids: Vec::new(),
            unreadable_aids: Vec::new(),
            nodes: sink.nodes(),
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

    /// Four workers even on one core, so that chunks come back out of order.
    fn in_chunks_of_7(s: &Stored) -> Result<VerifyReport, VerifyError> {
        let pipeline = Pipeline {
            chunk_records: 7,
            workers: 4,
            examine,
        };
        verify_sink_in_chunks(
            s,
            &signer().verifier(),
            VerifyOptions::default(),
            pipeline,
            &|_, _| {},
        )
    }

    /// Progress counts the records examined in order, a chunk at a time, up to all of them.
    #[test]
    fn progress_counts_every_record_in_order() {
        let stored = ledger(40);
        let calls = std::sync::Mutex::new(Vec::new());
        let pipeline = Pipeline {
            chunk_records: 7,
            workers: 4,
            examine,
        };
        let report = verify_sink_in_chunks(
            &stored,
            &signer().verifier(),
            VerifyOptions::default(),
            pipeline,
            &|done, total| calls.lock().unwrap().push((done, total)),
        )
        .unwrap();
        assert_eq!(report.records, 40);
        let calls = calls.into_inner().unwrap();
        let expected: Vec<(u64, u64)> = [7, 14, 21, 28, 35, 40].iter().map(|&d| (d, 40)).collect();
        assert_eq!(calls, expected);
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

    /// The tree nodes the appender stored are checked against the tree: an edited one is named
    /// at the record that completes it, after everything else (a record's own problem comes
    /// first); one stored where the tree has none is named too; a missing one is not a problem
    /// (proofs then read the leaves).
    #[test]
    fn stored_tree_nodes_are_checked_against_the_tree() {
        let s = ledger(100);
        // 100 records complete six subtrees of 16 (level 4), none of 256.
        let levels: Vec<(u32, u64)> = s.nodes.keys().copied().collect();
        assert_eq!(levels, (0..6).map(|i| (4, i)).collect::<Vec<_>>());
        assert_eq!(in_chunks_of_7(&s).unwrap().records, 100);

        let mut edited = s.clone();
        edited.nodes.insert((4, 2), [9; 32]);
        let failure = |r: Result<VerifyReport, VerifyError>| match r {
            Err(VerifyError::Failed(f)) => (f.index, f.problem),
            other => panic!("expected a failure, got {other:?}"),
        };
        assert_eq!(
            failure(in_chunks_of_7(&edited)),
            (Some(47), Problem::TreeNode { level: 4, index: 2 })
        );
        let mut and_a_record = edited.clone();
        and_a_record.records[60].bytes[5] ^= 1;
        assert_eq!(
            failure(in_chunks_of_7(&and_a_record)),
            (Some(60), Problem::LeafHash)
        );

        for (level, index) in [(4, 6), (8, 0), (3, 0)] {
            let mut extra = s.clone();
            extra.nodes.insert((level, index), [1; 32]);
            assert_eq!(
                failure(in_chunks_of_7(&extra)),
                (None, Problem::ExtraTreeNode { level, index })
            );
        }

        let mut missing = s.clone();
        missing.nodes.remove(&(4, 3));
        assert_eq!(in_chunks_of_7(&missing).unwrap().records, 100);
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
            unreadable_from: u64::MAX,
            edited_aids: Vec::new(),
            unreadable_aids: Vec::new(),
            nodes: Default::default(),
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
        fn panics_at_30(
            index: u64,
            stored: &Hash,
            bytes: &[u8],
            opts: VerifyOptions,
            aid_check: Option<AidCheck<'_>>,
        ) -> Examined {
            assert_ne!(index, 30, "a bug in examining");
            examine(index, stored, bytes, opts, aid_check)
        }
        let s = ledger(100);
        let pipeline = Pipeline {
            chunk_records: 7,
            workers: 4,
            examine: panics_at_30,
        };
        match verify_sink_in_chunks(
            &s,
            &signer().verifier(),
            VerifyOptions::default(),
            pipeline,
            &|_, _| {},
        ) {
            Err(VerifyError::Sink(e)) => assert!(e.to_string().contains("index 28"), "{e}"),
            other => panic!("expected an error for the chunk from 28, got {other:?}"),
        }
    }

    /// The sink's query aids are checked in the same pass, chunk by chunk: the first record
    /// whose aid is wrong is named, but only once everything else has verified (a problem in
    /// the records or the tree is named first, wherever it lies); without `check_query_aids`,
    /// or with the format check off, the aids are still read right.
    #[test]
    fn wrong_query_aids_are_named_in_order_after_everything_else() {
        let verify = |s: &Stored, opts: VerifyOptions| {
            let pipeline = Pipeline {
                chunk_records: 7,
                workers: 4,
                examine,
            };
            verify_sink_in_chunks(s, &signer().verifier(), opts, pipeline, &|_, _| {})
        };
        let failure = |result: Result<VerifyReport, VerifyError>| match result {
            Err(VerifyError::Failed(f)) => (f.index, f.problem),
            other => panic!("expected a failure, got {other:?}"),
        };
        let mut s = ledger(100);
        assert!(verify(&s, VerifyOptions::default()).is_ok());
        s.edited_aids = vec![64, 22, 90];
        let (index, problem) = failure(verify(&s, VerifyOptions::default()));
        assert_eq!(index, Some(22));
        assert!(
            matches!(&problem, Problem::QueryAid(what) if what.contains("\"edited\"")),
            "{problem:?}"
        );
        let without_format = VerifyOptions {
            check_format: false,
            ..VerifyOptions::default()
        };
        assert_eq!(failure(verify(&s, without_format)).0, Some(22));
        let without_aids = VerifyOptions {
            check_query_aids: false,
            ..VerifyOptions::default()
        };
        assert!(verify(&s, without_aids).is_ok());
        // An aid that cannot be read is a storage error, not a wrong aid, and it is reported
        // after the rest too.
        s.edited_aids.clear();
        s.unreadable_aids = vec![10];
        match verify(&s, VerifyOptions::default()) {
            Err(VerifyError::Sink(e)) => assert!(e.to_string().contains("record 10"), "{e}"),
            other => panic!("expected the storage error, got {other:?}"),
        }
        // A record edited after the first wrong or unreadable aid is still the problem named.
        s.records[70].bytes[5] ^= 1;
        assert_eq!(
            failure(verify(&s, VerifyOptions::default())),
            (Some(70), Problem::LeafHash)
        );
        s.unreadable_aids.clear();
        s.edited_aids = vec![22];
        assert_eq!(
            failure(verify(&s, VerifyOptions::default())),
            (Some(70), Problem::LeafHash)
        );
    }
}
