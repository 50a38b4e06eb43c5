//! Self-contained inclusion proofs (`gavel audit prove` / `check-proof`): a
//! record, its Merkle path and the signed checkpoint, checkable with nothing
//! but the file and the log's public key.

use crate::merkle::{
    inclusion_ranges, leaf_hash, verify_inclusion, Hash, MerkleFrontier, RangeHashes,
};
use crate::note::{Checkpoint, NoteVerifier};
use crate::record::Record;
use crate::sink::{leaf_hashes_in_order, LedgerSink, StoredReads};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

/// Value of [`InclusionBundle::format`] this build writes and reads.
pub const BUNDLE_FORMAT: &str = "gavel-inclusion-proof/1";

/// Everything needed to check that one record is in the signed log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionBundle {
    pub format: String,
    /// Leaf index of the record.
    pub index: u64,
    /// Tree size of the checkpoint the proof is against.
    pub tree_size: u64,
    /// The record's canonical bytes (UTF-8 JSON text), hashed as the leaf.
    pub record: String,
    /// Base64 sibling hashes from the leaf upwards (RFC 9162 inclusion path).
    pub proof: Vec<String>,
    /// The signed checkpoint note.
    pub checkpoint: String,
}

/// Why a proof could not be built or does not check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProofFailure(pub String);

impl fmt::Display for ProofFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProofFailure {}

fn failure(msg: impl fmt::Display) -> ProofFailure {
    ProofFailure(msg.to_string())
}

/// A successfully checked bundle.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedInclusion {
    pub record: Record,
    pub index: u64,
    pub checkpoint: Checkpoint,
}

/// The checkpoint `cp`, if it covers record `index`.
fn covering(cp: Checkpoint, index: u64) -> Result<Checkpoint, ProofFailure> {
    if index >= cp.size {
        return Err(failure(format!(
            "record {index} is not yet covered by a signed checkpoint (newest covers {} records)",
            cp.size
        )));
    }
    Ok(cp)
}

/// The bundle for a record, once its leaf hash and the tree's root at the checkpoint's size
/// (`found`: from the stored leaves, or, for a path from stored nodes, the ones the path was
/// checked with) are checked against its bytes and the signed root.
fn bundle(
    index: u64,
    record_bytes: &[u8],
    found: (Option<Hash>, Option<Hash>),
    proof: Vec<Hash>,
    checkpoint_note: &str,
    cp: &Checkpoint,
) -> Result<InclusionBundle, ProofFailure> {
    let (leaf, root) = found;
    if leaf != Some(leaf_hash(record_bytes)) {
        return Err(failure(format!(
            "record {index} bytes do not match the tree"
        )));
    }
    if root != Some(cp.root) {
        return Err(failure("the tree does not match the signed checkpoint"));
    }
    // What `check` would refuse is said here, not by whoever is handed the bundle.
    Record::check_canonical(record_bytes).map_err(|e| {
        failure(format!(
            "record {index} is not a canonical record ({e}); `gavel audit verify` says more"
        ))
    })?;
    let record = String::from_utf8(record_bytes.to_vec())
        .map_err(|_| failure("record bytes are not UTF-8"))?;
    Ok(InclusionBundle {
        format: BUNDLE_FORMAT.to_owned(),
        index,
        tree_size: cp.size,
        record,
        proof: proof.iter().map(|h| B64.encode(h)).collect(),
        checkpoint: checkpoint_note.to_owned(),
    })
}

/// Builds inclusion bundles from a sink against its newest signed checkpoint. One prover
/// serves one ledger.
///
/// Two things a proof would otherwise redo it keeps between proofs, both only ever used on the
/// way to a path that is checked against the signed root before it is handed out:
/// - the last checkpoint whose Ed25519 signature it checked, by the note's exact text (a note
///   that differs in any byte is checked again): with the tree nodes stored, that check was
///   most of what a proof cost;
/// - the hashes of complete subtrees of [`KEPT_SUBTREE_LEAVES`] leaves or more, 12 levels
///   below the root at most, from proofs whose path checked: in an append-only log such a hash
///   never changes, whatever checkpoint a later proof is against, and the upper ones are in
///   nearly every proof's path. When a path through kept hashes does not check, they are all
///   forgotten and the path is built again from the stored nodes alone.
pub struct Prover {
    verifier: NoteVerifier,
    opened: Mutex<Option<(String, Checkpoint)>>,
    subtrees: Mutex<HashMap<(u64, u64), Hash>>,
}

/// The smallest subtree whose hash a [`Prover`] keeps: below it, one read of stored nodes and a
/// few hashes make it.
pub const KEPT_SUBTREE_LEAVES: u64 = 1 << 8;

/// How far below the root a [`Prover`] keeps subtrees: those of at least 2^-12 of the tree's
/// leaves (rounded up to a power of two), at most 8,191 of them, the root's included.
const KEPT_LEVELS: u32 = 12;

/// Most subtree hashes kept (about 50 bytes each): all of a tree's. When the tree's height
/// grows, the smaller ones kept before push it over, and all are dropped and read again.
const KEPT_SUBTREES: usize = 1 << (KEPT_LEVELS + 1);

/// Leaves `[start, end)` form a subtree a prover keeps in a tree of `size` leaves: an aligned
/// power of two of them, at least [`KEPT_SUBTREE_LEAVES`] and in the tree's top levels.
fn kept_subtree(start: u64, end: u64, size: u64) -> bool {
    let leaves = end.wrapping_sub(start);
    let height = u64::BITS - size.saturating_sub(1).leading_zeros();
    let top_levels = 1u64 << height.saturating_sub(KEPT_LEVELS);
    end > start
        && leaves.is_power_of_two()
        && start % leaves == 0
        && leaves >= KEPT_SUBTREE_LEAVES.max(top_levels)
}

/// A path's hashes, each the kept one where there is one, else made from stored hashes; None
/// when one of them is not stored.
fn path_from_stored<S: LedgerSink + ?Sized>(
    reads: &mut StoredReads<'_, S>,
    ranges: &[(u64, u64)],
    kept: &[Option<Hash>],
) -> Result<Option<Vec<Hash>>, ProofFailure> {
    let mut path = Vec::with_capacity(ranges.len());
    for (&(start, end), kept) in ranges.iter().zip(kept) {
        let hash = match kept {
            Some(hash) => Some(*hash),
            None => reads.range_hash(start, end).map_err(failure)?,
        };
        match hash {
            Some(hash) => path.push(hash),
            None => return Ok(None),
        }
    }
    Ok(Some(path))
}

impl Prover {
    pub fn new(verifier: NoteVerifier) -> Prover {
        Prover {
            verifier,
            opened: Mutex::new(None),
            subtrees: Mutex::new(HashMap::new()),
        }
    }

    /// The key the checkpoints are checked with.
    pub fn verifier(&self) -> &NoteVerifier {
        &self.verifier
    }

    /// The checkpoint in `note`, its signature checked now or when this note was last seen.
    fn open(&self, note: &str) -> Result<Checkpoint, ProofFailure> {
        // A panic elsewhere while a lock was held leaves a whole value or none: still usable.
        let mut opened = self.opened.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((text, cp)) = opened.as_ref() {
            if text == note {
                return Ok(cp.clone());
            }
        }
        let cp = Checkpoint::open(note, &self.verifier).map_err(failure)?;
        *opened = Some((note.to_owned(), cp.clone()));
        Ok(cp)
    }

    /// The kept hashes of `ranges`, None where not kept.
    fn kept(&self, ranges: &[(u64, u64)]) -> Vec<Option<Hash>> {
        let subtrees = self.subtrees.lock().unwrap_or_else(|e| e.into_inner());
        ranges.iter().map(|r| subtrees.get(r).copied()).collect()
    }

    /// Keeps the subtrees of a path that checked, in a tree of `size` leaves.
    fn keep(&self, ranges: &[(u64, u64)], path: &[Hash], size: u64) {
        let mut subtrees = self.subtrees.lock().unwrap_or_else(|e| e.into_inner());
        for (&(start, end), hash) in ranges.iter().zip(path) {
            if kept_subtree(start, end, size) {
                if subtrees.len() >= KEPT_SUBTREES {
                    subtrees.clear();
                }
                subtrees.insert((start, end), *hash);
            }
        }
    }

    fn forget_subtrees(&self) {
        self.subtrees
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Builds a bundle for leaf `index` from a sink against its newest checkpoint: from the
    /// tree nodes the sink stores (O(log n) reads), checked against the signed root before it
    /// is handed out; where a node is missing or wrong, from the leaf hashes up to the
    /// checkpoint, read once, in chunks, keeping only what the proof needs (a few kilobytes,
    /// not the tree).
    pub fn prove<S: LedgerSink + ?Sized>(
        &self,
        sink: &S,
        index: u64,
    ) -> Result<InclusionBundle, ProofFailure> {
        let newest = sink
            .newest_stored_checkpoint()
            .map_err(failure)?
            .ok_or_else(|| failure("the ledger has no signed checkpoint yet"))?;
        let cp = covering(self.open(&newest.note)?, index)?;
        let record = sink
            .read_records(index, index.saturating_add(1))
            .map_err(failure)?;
        let record = record
            .into_iter()
            .next()
            .ok_or_else(|| failure(format!("no record {index}")))?;
        let ranges = inclusion_ranges(index, cp.size).map_err(failure)?;
        let leaf = leaf_hash(&record.bytes);
        let checks =
            |path: &Vec<Hash>| verify_inclusion(&leaf, index, cp.size, path, &cp.root).is_ok();
        let mut reads = StoredReads::new(sink);
        let kept = self.kept(&ranges);
        let mut path = path_from_stored(&mut reads, &ranges, &kept)?;
        if path.as_ref().is_some_and(|path| !checks(path)) {
            path = None;
            if kept.iter().any(Option::is_some) {
                // A kept hash may be what is wrong (another ledger's, under the same key).
                self.forget_subtrees();
                path = path_from_stored(&mut reads, &ranges, &vec![None; ranges.len()])?
                    .filter(checks);
            }
        }
        if let Some(path) = path {
            // The path leads from the record's bytes to the signed root: both are proven.
            self.keep(&ranges, &path, cp.size);
            return bundle(
                index,
                &record.bytes,
                (Some(leaf), Some(cp.root)),
                path,
                &newest.note,
                &cp,
            );
        }
        let mut path = RangeHashes::new(ranges, 0);
        let mut whole = MerkleFrontier::new();
        let mut leaf = None;
        for hash in leaf_hashes_in_order(sink, 0, cp.size) {
            let hash = hash.map_err(failure)?;
            if whole.len() == index {
                leaf = Some(hash);
            }
            path.push(hash);
            whole.push(hash);
        }
        let proof = path
            .hashes()
            .ok_or_else(|| failure("the proof's hashes could not all be read"))?;
        bundle(
            index,
            &record.bytes,
            (leaf, Some(whole.root())),
            proof,
            &newest.note,
            &cp,
        )
    }
}

impl InclusionBundle {
    /// Checks the bundle with nothing but the verifier key: the checkpoint
    /// signature, the record's canonical form and the inclusion path.
    pub fn check(&self, verifier: &NoteVerifier) -> Result<CheckedInclusion, ProofFailure> {
        if self.format != BUNDLE_FORMAT {
            return Err(failure(format!("unknown proof format {:?}", self.format)));
        }
        let cp = Checkpoint::open(&self.checkpoint, verifier).map_err(failure)?;
        if cp.size != self.tree_size {
            return Err(failure("tree_size differs from the signed checkpoint"));
        }
        let record = Record::from_canonical(self.record.as_bytes()).map_err(failure)?;
        let proof: Vec<Hash> = self
            .proof
            .iter()
            .map(|h| {
                B64.decode(h)
                    .ok()
                    .and_then(|b| Hash::try_from(b).ok())
                    .ok_or_else(|| failure("proof hash is not base64 SHA-256"))
            })
            .collect::<Result<_, _>>()?;
        verify_inclusion(
            &leaf_hash(self.record.as_bytes()),
            self.index,
            cp.size,
            &proof,
            &cp.root,
        )
        .map_err(failure)?;
        Ok(CheckedInclusion {
            record,
            index: self.index,
            checkpoint: cp,
        })
    }
}

/// `gavel audit check-proof FILE --pubkey KEY`: parses the JSON and checks it.
pub fn check_proof_json(json: &str, verifier_key: &str) -> Result<CheckedInclusion, ProofFailure> {
    let verifier = NoteVerifier::parse(verifier_key).map_err(failure)?;
    let bundle: InclusionBundle =
        serde_json::from_str(json).map_err(|e| failure(format!("not a proof file: {e}")))?;
    bundle.check(&verifier)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_subtrees_are_aligned_large_and_in_the_top_levels() {
        assert!(kept_subtree(0, 256, 300));
        assert!(kept_subtree(256, 512, 512));
        assert!(!kept_subtree(0, 128, 300), "below 256 leaves");
        assert!(!kept_subtree(256, 300, 300), "not a power of two");
        assert!(!kept_subtree(128, 384, 1000), "not aligned");
        assert!(!kept_subtree(5, 5, 300));
        // 2^24 leaves: subtrees of 4,096 leaves and more, 8,191 of them (the root's included).
        let size = 1 << 24;
        assert!(!kept_subtree(0, 2048, size));
        assert!(kept_subtree(4096, 8192, size));
        // Below 256 leaves nothing is kept (the first test above), so from height 8 up.
        let kept: u64 = (8..=24)
            .map(|height| {
                let leaves = 1u64 << height;
                (0..size / leaves)
                    .filter(|i| kept_subtree(i * leaves, (i + 1) * leaves, size))
                    .count() as u64
            })
            .sum();
        assert_eq!(kept, 8191);
        assert!(kept < KEPT_SUBTREES as u64);
    }
}
