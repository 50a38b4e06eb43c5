//! The storage interface the appender writes through, and an in-memory sink.

use crate::merkle::{frontier_from_stored, Hash, MerkleFrontier, TreeNode};
use crate::record::{IndexFields, RecordAids, RecordKind};
use std::sync::{Arc, Mutex};

/// Boxed storage error: sinks wrap whatever their backend reports.
pub type SinkError = Box<dyn std::error::Error + Send + Sync>;

/// Why stored leaf hashes could not be read in order ([`leaf_hashes_in_order`]).
#[derive(Debug)]
pub enum LeafReadError {
    Sink(SinkError),
    /// The sink holds fewer hashes for `[from, to)` than the range has indexes.
    Missing {
        from: u64,
        to: u64,
    },
}

impl std::fmt::Display for LeafReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeafReadError::Sink(e) => write!(f, "{e}"),
            LeafReadError::Missing { from, to } => {
                write!(f, "records {from}..{to} are not all stored")
            }
        }
    }
}

/// Leaf hashes read per sink call by [`leaf_hashes_in_order`].
const LEAF_CHUNK: u64 = 65_536;

/// The stored leaf hashes of indexes `[from, to)` in order, read a chunk at a time, so that a
/// reader of the whole ledger (a starting writer, a proof) holds one chunk, not every hash.
/// Ends after the first error.
pub fn leaf_hashes_in_order<S: LedgerSink + ?Sized>(
    sink: &S,
    from: u64,
    to: u64,
) -> impl Iterator<Item = Result<Hash, LeafReadError>> + '_ {
    let mut next = from;
    let mut failed = false;
    let mut chunk = Vec::new().into_iter();
    std::iter::from_fn(move || loop {
        if let Some(hash) = chunk.next() {
            return Some(Ok(hash));
        }
        if failed || next >= to {
            return None;
        }
        let (from, end) = (next, next.saturating_add(LEAF_CHUNK).min(to));
        let read = match sink.leaf_hashes(from, end) {
            Ok(hashes) if hashes.len() as u64 == end - from => Ok(hashes),
            Ok(_) => Err(LeafReadError::Missing { from, to: end }),
            Err(e) => Err(LeafReadError::Sink(e)),
        };
        match read {
            Ok(hashes) => {
                next = end;
                chunk = hashes.into_iter();
            }
            Err(e) => {
                failed = true;
                return Some(Err(e));
            }
        }
    })
}

/// Every tree node stored where the tree of `count` records has none, as `(level, index)`:
/// past the records at a stored level (node `i` of `level` ends at record `(i + 1) << level`,
/// so it lies past them when `i >= count >> level`), or at a level nodes are not kept at. A
/// writer refuses to start on one; `verify` names it.
pub fn tree_nodes_past<S: LedgerSink + ?Sized>(
    sink: &S,
    count: u64,
) -> Result<Vec<(u32, u64)>, SinkError> {
    let mut past = Vec::new();
    for level in 0..64u32 {
        let first = if crate::merkle::is_stored_level(level) {
            count >> level
        } else {
            0
        };
        let rows = sink.tree_nodes(level, first, i64::MAX as u64)?;
        past.extend(rows.into_iter().map(|(index, _)| (level, index)));
    }
    Ok(past)
}

/// Reads stored hashes (tree nodes, and leaf hashes below the lowest stored level) a block of
/// 16 aligned ones at a time per level, each block once, for a starting writer's tree
/// ([`StoredReads::frontier`]) and a proof's ranges ([`StoredReads::range_hash`]). Every read
/// these make below one stored level lies in one such block (a subtree of height below 4
/// above the level is at most 8 aligned hashes, and a proof's siblings at heights 0 to 3 share
/// the block of its path), so a proof reads about one block per stored level (5 reads for a
/// million records) instead of one read per hash.
pub struct StoredReads<'s, S: LedgerSink + ?Sized> {
    sink: &'s S,
    blocks: Vec<Block>,
}

/// `(level, block)` and the block's hashes by position, None where not stored.
type Block = ((u32, u64), Vec<Option<Hash>>);

/// Hashes per block: one stored level spans this many of the level below it.
const BLOCK: u64 = 1 << crate::merkle::STORED_LEVEL_STEP;

/// Records per block of leaf hashes ([`LedgerSink::leaf_block`]): the leaves below the lowest
/// stored level.
pub const LEAF_BLOCK: u64 = BLOCK;

impl<'s, S: LedgerSink + ?Sized> StoredReads<'s, S> {
    pub fn new(sink: &'s S) -> StoredReads<'s, S> {
        StoredReads {
            sink,
            blocks: Vec::new(),
        }
    }

    /// The tree of the first `size` leaves as its right edge: O(log n) reads. None when a
    /// hash it needs is not stored; the caller then reads the leaves ([`leaf_hashes_in_order`])
    /// and checks what it builds from either against a signed root.
    pub fn frontier(&mut self, size: u64) -> Result<Option<MerkleFrontier>, SinkError> {
        frontier_from_stored(0, size, &mut |level, from, to| self.hashes(level, from, to))
    }

    /// The MTH of leaves `[start, end)` (a range of an RFC 9162 proof), or None when a hash it
    /// needs is not stored.
    pub fn range_hash(&mut self, start: u64, end: u64) -> Result<Option<Hash>, SinkError> {
        crate::merkle::range_hash_from_stored(start, end, &mut |level, from, to| {
            self.hashes(level, from, to)
        })
    }

    /// The hashes `[from, to)` of `level` (0: the leaves) if all are stored. A range across two
    /// blocks is none that the tree reads ask for: answered as not stored.
    fn hashes(&mut self, level: u32, from: u64, to: u64) -> Result<Option<Vec<Hash>>, SinkError> {
        let block = from / BLOCK;
        if to <= from || (to - 1) / BLOCK != block {
            return Ok(None);
        }
        let at = match self
            .blocks
            .iter()
            .position(|(key, _)| *key == (level, block))
        {
            Some(at) => at,
            None => {
                let first = block * BLOCK;
                let mut row = vec![None; BLOCK as usize];
                if level == 0 {
                    // Records are stored from 0 without gaps, so a short read is the ledger's
                    // end; if one was deleted, the hashes land in the wrong slots and the path
                    // fails its check against the signed root (the proof then reads the leaves).
                    let leaves = match self.sink.leaf_block(block)? {
                        Some(leaves) if leaves.len() as u64 == BLOCK => leaves,
                        _ => self.sink.leaf_hashes(first, first + BLOCK)?,
                    };
                    for (slot, hash) in row.iter_mut().zip(leaves) {
                        *slot = Some(hash);
                    }
                } else {
                    for (index, hash) in self.sink.tree_nodes(level, first, first + BLOCK)? {
                        let slot = index
                            .checked_sub(first)
                            .and_then(|i| row.get_mut(i as usize));
                        if let Some(slot) = slot {
                            *slot = Some(hash);
                        }
                    }
                }
                self.blocks.push(((level, block), row));
                self.blocks.len() - 1
            }
        };
        let row = &self.blocks[at].1;
        let (a, b) = (
            (from - block * BLOCK) as usize,
            (to - block * BLOCK) as usize,
        );
        Ok(row[a..b].iter().copied().collect())
    }
}

/// A record as handed to a sink: the canonical bytes plus everything a sink
/// may want to store beside them for lookups.
#[derive(Debug, Clone, PartialEq)]
pub struct AppendRecord {
    pub index: u64,
    pub leaf_hash: Hash,
    pub bytes: Vec<u8>,
    pub id: String,
    pub kind: RecordKind,
    pub at_ms: i64,
    pub fields: IndexFields,
}

/// A record as read back: only what verification relies on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub index: u64,
    /// Hash computed at append time. Verification recomputes it from `bytes`
    /// and reports a mismatch at this exact index.
    pub leaf_hash: Hash,
    pub bytes: Vec<u8>,
}

/// A signed checkpoint as stored: the note is the authority, `seq` and `size`
/// are copies for lookup (verification checks them against the note).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCheckpoint {
    pub seq: u64,
    pub size: u64,
    pub note: String,
}

/// Makes everything its sink has committed so far durable (an fsync), outside the sink's
/// commits: on a thread of its own while the sink commits the next batch, or after a commit
/// with nothing queued behind it, so the sink's write lock is not held for the length of a
/// sync.
pub trait Flusher: Send + 'static {
    /// Returns once every commit that returned before this call began is durable.
    fn flush(&mut self) -> Result<(), SinkError>;
}

/// Durable, append-only storage for records and checkpoints.
///
/// `append` must store the whole batch atomically (one transaction) and, unless the sink has
/// handed out a [`Flusher`], durably (one fsync) before returning Ok: the appender
/// acknowledges callers once their batch is durable.
pub trait LedgerSink: Send + 'static {
    /// Appends records (with consecutive indexes continuing the ledger), the tree nodes they
    /// complete at stored levels ([`crate::merkle::is_stored_level`]) and optionally a
    /// checkpoint, atomically (and durably, without a flusher). A sink that keeps no nodes
    /// ignores `nodes`.
    fn append(
        &mut self,
        records: &[AppendRecord],
        nodes: &[TreeNode],
        checkpoint: Option<&StoredCheckpoint>,
    ) -> Result<(), SinkError>;
    /// The stored tree nodes of `level` with indexes in `[from, to)`, as `(index, hash)` in
    /// index order; those not stored are left out. Nodes are derived from the records, never
    /// the authority: whatever is built from them is checked against a signed root before it
    /// is used, and `verify` checks them. A sink that keeps none returns none.
    fn tree_nodes(&self, level: u32, from: u64, to: u64) -> Result<Vec<(u64, Hash)>, SinkError> {
        let _ = (level, from, to);
        Ok(Vec::new())
    }
    /// Stores those of `nodes` that are not stored yet (a starting writer fills in the nodes
    /// of records appended by a gavel that kept none), leaving stored ones as they are.
    fn add_missing_nodes(&mut self, nodes: &[TreeNode]) -> Result<(), SinkError> {
        let _ = nodes;
        Ok(())
    }
    /// The leaf hashes of the complete block `block` of [`LEAF_BLOCK`] records (`[block *
    /// LEAF_BLOCK, (block + 1) * LEAF_BLOCK)`), where the sink keeps them together: a proof
    /// needs all of a block's leaf hashes below the lowest stored level, and one read of them
    /// costs a quarter of reading them from the records. None where the sink keeps no such
    /// block (the proof then reads [`LedgerSink::leaf_hashes`]). Derived like the nodes: what
    /// is built from them is checked against a signed root before use.
    fn leaf_block(&self, block: u64) -> Result<Option<Vec<Hash>>, SinkError> {
        let _ = block;
        Ok(None)
    }
    /// Number of records stored.
    fn record_count(&self) -> Result<u64, SinkError>;
    /// Stored leaf hashes for indexes `[from, to)`, in index order.
    fn leaf_hashes(&self, from: u64, to: u64) -> Result<Vec<Hash>, SinkError>;
    /// Stored records for indexes `[from, to)`, in index order. Gaps are
    /// returned as they are (verification detects them).
    fn read_records(&self, from: u64, to: u64) -> Result<Vec<StoredRecord>, SinkError>;
    /// Every stored checkpoint, in `seq` order.
    fn checkpoints(&self) -> Result<Vec<StoredCheckpoint>, SinkError>;
    /// The checkpoint of the highest `seq`, if any (a proof needs no other).
    fn newest_stored_checkpoint(&self) -> Result<Option<StoredCheckpoint>, SinkError> {
        Ok(self.checkpoints()?.pop())
    }
    /// Splits durability off `append`: afterwards `append` need only be atomic, and a batch
    /// is durable once a [`Flusher::flush`] that began after its `append` returned has
    /// returned. The appender asks once, at start. A sink that cannot split returns None
    /// and stays durable on `append`.
    fn flusher(&mut self) -> Result<Option<Box<dyn Flusher>>, SinkError> {
        Ok(None)
    }
    /// What [`LedgerSink::read_records`] reads, lent to `visit` one record at a time
    /// (`index, stored leaf hash, bytes`) instead of copied out. Verification reads every
    /// record once, and copying each out cost about as much as hashing it.
    fn visit_records(&self, from: u64, to: u64, visit: Visit<'_>) -> Result<(), SinkError> {
        for r in self.read_records(from, to)? {
            visit(r.index, &r.leaf_hash, &r.bytes);
        }
        Ok(())
    }
    /// [`LedgerSink::visit_records`], with a check of the query aids the sink keeps next to
    /// each record (see [`VisitWithAids`]). A sink that keeps none passes `None`.
    fn visit_records_with_aids(
        &self,
        from: u64,
        to: u64,
        visit: VisitWithAids<'_>,
    ) -> Result<(), SinkError> {
        self.visit_records(from, to, &mut |index, hash, bytes| {
            visit(index, hash, bytes, None)
        })
    }
    /// Another reader of the committed records, independent of this sink, so that
    /// verification reads on several threads at once (for a database: a connection of its
    /// own). None when the sink has none; verification then reads on one thread.
    fn parallel_reader(&self) -> Result<Option<Box<dyn RecordReader>>, SinkError> {
        Ok(None)
    }
}

/// Receives stored records one at a time: index, stored leaf hash, canonical bytes.
pub type Visit<'a> = &'a mut dyn FnMut(u64, &Hash, &[u8]);

/// Receives stored records one at a time as [`Visit`] does, and with each a check of the query
/// aids the sink keeps for it (lookup columns and the like), or None when it keeps none:
/// verification derives the aids from the bytes and hands them to the check. The aids decide
/// what a filtered query returns, and the Merkle tree does not cover them, so an edited aid
/// could hide a record from "every decision under approval X" without changing any record.
pub type VisitWithAids<'a> = &'a mut dyn FnMut(u64, &Hash, &[u8], Option<AidCheck<'_>>);

/// Compares the query aids a sink keeps for one record with `aids`, those its bytes give.
pub type AidCheck<'c> = &'c mut dyn FnMut(&RecordAids) -> Result<(), AidError>;

/// Why a sink's query aids for a record could not be confirmed.
#[derive(Debug)]
pub enum AidError {
    /// An aid disagrees with the record or is malformed: the sentence says which aid, what it
    /// holds and what it would break.
    Mismatch(String),
    /// Reading what the check needs failed.
    Sink(SinkError),
}

/// Reads committed records on a thread of its own; see [`LedgerSink::parallel_reader`].
pub trait RecordReader: Send {
    /// As [`LedgerSink::visit_records`].
    fn visit_records(&self, from: u64, to: u64, visit: Visit<'_>) -> Result<(), SinkError>;
    /// As [`LedgerSink::visit_records_with_aids`], which a sink's readers must do as the sink
    /// does: no default here, so that a sink that keeps aids cannot hand out readers that
    /// skip them.
    fn visit_records_with_aids(
        &self,
        from: u64,
        to: u64,
        visit: VisitWithAids<'_>,
    ) -> Result<(), SinkError>;
    /// As [`LedgerSink::tree_nodes`]; required for the same reason.
    fn tree_nodes(&self, level: u32, from: u64, to: u64) -> Result<Vec<(u64, Hash)>, SinkError>;
}

#[derive(Debug, Default)]
struct MemoryInner {
    records: Vec<StoredRecord>,
    checkpoints: Vec<StoredCheckpoint>,
    nodes: std::collections::BTreeMap<(u32, u64), Hash>,
    batches: u64,
}

/// In-memory sink for tests and benchmarks of the pure parts. Clones share
/// storage, so a test can inspect what an appender wrote.
#[derive(Debug, Clone, Default)]
pub struct MemorySink {
    inner: Arc<Mutex<MemoryInner>>,
}

impl MemorySink {
    pub fn new() -> MemorySink {
        MemorySink::default()
    }

    /// A sink holding `records` and `checkpoints` as stored (a [`MemorySink::snapshot`], say),
    /// unchecked: for reopening what another sink held, edits included.
    pub fn from_parts(
        records: Vec<StoredRecord>,
        checkpoints: Vec<StoredCheckpoint>,
    ) -> MemorySink {
        MemorySink {
            inner: Arc::new(Mutex::new(MemoryInner {
                records,
                checkpoints,
                nodes: Default::default(),
                batches: 0,
            })),
        }
    }

    /// Copies of everything stored.
    pub fn snapshot(&self) -> (Vec<StoredRecord>, Vec<StoredCheckpoint>) {
        match self.inner.lock() {
            Ok(g) => (g.records.clone(), g.checkpoints.clone()),
            Err(p) => (p.get_ref().records.clone(), p.get_ref().checkpoints.clone()),
        }
    }

    /// The tree nodes stored, by `(level, index)`.
    pub fn nodes(&self) -> std::collections::BTreeMap<(u32, u64), Hash> {
        self.inner
            .lock()
            .map(|g| g.nodes.clone())
            .unwrap_or_default()
    }

    /// Replaces the stored tree nodes (a test's edits).
    pub fn set_nodes(&self, nodes: std::collections::BTreeMap<(u32, u64), Hash>) {
        if let Ok(mut g) = self.inner.lock() {
            g.nodes = nodes;
        }
    }

    /// Number of `append` calls (to observe batching).
    pub fn batches(&self) -> u64 {
        self.inner.lock().map(|g| g.batches).unwrap_or(0)
    }
}

fn lock(inner: &Mutex<MemoryInner>) -> Result<std::sync::MutexGuard<'_, MemoryInner>, SinkError> {
    inner.lock().map_err(|_| "memory sink lock poisoned".into())
}

impl LedgerSink for MemorySink {
    fn append(
        &mut self,
        records: &[AppendRecord],
        nodes: &[TreeNode],
        checkpoint: Option<&StoredCheckpoint>,
    ) -> Result<(), SinkError> {
        let mut g = lock(&self.inner)?;
        if let Some(n) = nodes
            .iter()
            .find(|n| g.nodes.contains_key(&(n.level, n.index)))
        {
            return Err(format!("tree node {}/{} is already stored", n.level, n.index).into());
        }
        let next = g.records.len() as u64;
        for (i, r) in records.iter().enumerate() {
            if r.index != next + i as u64 {
                return Err(format!(
                    "record index {} does not continue the ledger at {}",
                    r.index,
                    next + i as u64
                )
                .into());
            }
        }
        g.records.extend(records.iter().map(|r| StoredRecord {
            index: r.index,
            leaf_hash: r.leaf_hash,
            bytes: r.bytes.clone(),
        }));
        g.nodes
            .extend(nodes.iter().map(|n| ((n.level, n.index), n.hash)));
        if let Some(cp) = checkpoint {
            g.checkpoints.push(cp.clone());
        }
        g.batches += 1;
        Ok(())
    }

    fn tree_nodes(&self, level: u32, from: u64, to: u64) -> Result<Vec<(u64, Hash)>, SinkError> {
        let g = lock(&self.inner)?;
        Ok(g.nodes
            .range((level, from)..(level, to.max(from)))
            .map(|(&(_, index), hash)| (index, *hash))
            .collect())
    }

    fn add_missing_nodes(&mut self, nodes: &[TreeNode]) -> Result<(), SinkError> {
        let mut g = lock(&self.inner)?;
        for n in nodes {
            g.nodes.entry((n.level, n.index)).or_insert(n.hash);
        }
        Ok(())
    }

    fn record_count(&self) -> Result<u64, SinkError> {
        Ok(lock(&self.inner)?.records.len() as u64)
    }

    fn leaf_hashes(&self, from: u64, to: u64) -> Result<Vec<Hash>, SinkError> {
        Ok(self
            .read_records(from, to)?
            .into_iter()
            .map(|r| r.leaf_hash)
            .collect())
    }

    fn read_records(&self, from: u64, to: u64) -> Result<Vec<StoredRecord>, SinkError> {
        let g = lock(&self.inner)?;
        // Indexes are contiguous from 0 here: `append` refuses anything else.
        let len = g.records.len();
        let from = usize::try_from(from).unwrap_or(usize::MAX).min(len);
        let to = usize::try_from(to).unwrap_or(usize::MAX).clamp(from, len);
        Ok(g.records[from..to].to_vec())
    }

    fn checkpoints(&self) -> Result<Vec<StoredCheckpoint>, SinkError> {
        Ok(lock(&self.inner)?.checkpoints.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink_of(n: u64) -> MemorySink {
        let records = (0..n)
            .map(|index| StoredRecord {
                index,
                leaf_hash: crate::merkle::leaf_hash(&index.to_be_bytes()),
                bytes: Vec::new(),
            })
            .collect();
        MemorySink::from_parts(records, Vec::new())
    }

    /// Across chunk boundaries every hash comes once, in order; a chunk that reaches past the
    /// stored records comes as the error that names them, and the reader stops.
    #[test]
    fn leaf_hashes_come_in_order_across_chunks_and_missing_ones_are_named() {
        let n = 2 * LEAF_CHUNK + 5;
        let sink = sink_of(n);
        let read: Vec<Hash> = leaf_hashes_in_order(&sink, 0, n)
            .map(Result::unwrap)
            .collect();
        let want: Vec<Hash> = (0..n)
            .map(|i| crate::merkle::leaf_hash(&i.to_be_bytes()))
            .collect();
        assert!(read == want, "{} hashes read of {n}", read.len());

        let mut past_the_end = leaf_hashes_in_order(&sink, 0, n + 3).skip(2 * LEAF_CHUNK as usize);
        match past_the_end.next() {
            Some(Err(LeafReadError::Missing { from, to })) => {
                assert_eq!((from, to), (2 * LEAF_CHUNK, n + 3))
            }
            other => panic!("expected the missing records to be named, got {other:?}"),
        }
        assert!(past_the_end.next().is_none());
    }
}
