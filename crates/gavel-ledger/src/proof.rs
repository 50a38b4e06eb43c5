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
use std::fmt;

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

/// The checkpoint in `note`, if it covers record `index`.
fn covering(note: &str, verifier: &NoteVerifier, index: u64) -> Result<Checkpoint, ProofFailure> {
    let cp = Checkpoint::open(note, verifier).map_err(failure)?;
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

impl InclusionBundle {
    /// Builds a bundle for leaf `index` from a sink against its newest checkpoint: from the
    /// tree nodes the sink stores (O(log n) reads), checked against the signed root before it
    /// is handed out; where a node is missing or wrong, from the leaf hashes up to the
    /// checkpoint, read once, in chunks, keeping only what the proof needs (a few kilobytes,
    /// not the tree).
    pub fn from_sink<S: LedgerSink + ?Sized>(
        sink: &S,
        index: u64,
        verifier: &NoteVerifier,
    ) -> Result<InclusionBundle, ProofFailure> {
        let newest = sink
            .newest_stored_checkpoint()
            .map_err(failure)?
            .ok_or_else(|| failure("the ledger has no signed checkpoint yet"))?;
        let cp = covering(&newest.note, verifier, index)?;
        let record = sink
            .read_records(index, index.saturating_add(1))
            .map_err(failure)?;
        let record = record
            .into_iter()
            .next()
            .ok_or_else(|| failure(format!("no record {index}")))?;
        let ranges = inclusion_ranges(index, cp.size).map_err(failure)?;
        let leaf = leaf_hash(&record.bytes);
        let mut from_nodes = Vec::with_capacity(ranges.len());
        let mut reads = StoredReads::new(sink);
        for &(start, end) in &ranges {
            match reads.range_hash(start, end).map_err(failure)? {
                Some(hash) => from_nodes.push(hash),
                None => break,
            }
        }
        if from_nodes.len() == ranges.len()
            && verify_inclusion(&leaf, index, cp.size, &from_nodes, &cp.root).is_ok()
        {
            // The path leads from the record's bytes to the signed root: both are proven.
            return bundle(
                index,
                &record.bytes,
                (Some(leaf), Some(cp.root)),
                from_nodes,
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
