//! RFC 6962 / RFC 9162 Merkle tree: hashing, an append-only in-memory tree
//! that serves roots and proofs for any past size, its right edge alone (what
//! an appender needs: the root as it grows, in memory that does not grow), and
//! proof verification.

use sha2::{Digest, Sha256};
use std::fmt;

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// MTH({}) = SHA-256 of the empty string.
pub const EMPTY_ROOT: Hash = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// Longest proof any tree of at most 2^64 leaves needs; longer input is refused
/// before doing any work on it.
const MAX_PROOF_LEN: usize = 64;

/// Leaf hash: SHA-256(0x00 || data).
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// Interior node hash: SHA-256(0x01 || left || right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut buf = [0u8; 65];
    buf[0] = 1;
    buf[1..33].copy_from_slice(left);
    buf[33..].copy_from_slice(right);
    Sha256::digest(buf).into()
}

/// Largest power of two strictly smaller than `n` (n >= 2).
fn split_point(n: u64) -> u64 {
    1u64 << (63 - (n - 1).leading_zeros())
}

/// Why a proof request or a proof check failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProofError {
    /// Requested index or size is outside the tree.
    OutOfRange { index: u64, size: u64 },
    /// The proof has the wrong number of hashes for the sizes given.
    WrongLength,
    /// The proof does not lead to the expected root.
    RootMismatch,
}

impl fmt::Display for ProofError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProofError::OutOfRange { index, size } => {
                write!(f, "index/size {index} out of range for tree size {size}")
            }
            ProofError::WrongLength => f.write_str("proof has the wrong number of hashes"),
            ProofError::RootMismatch => f.write_str("proof does not match the root hash"),
        }
    }
}

impl std::error::Error for ProofError {}

/// Every how many levels a sink stores the hashes of complete subtrees (levels 4, 8, 12, ...):
/// the hash of any complete subtree is then at most 8 stored hashes away, so a proof or a
/// starting writer reads O(log n) rows instead of every leaf, for about one stored hash per 15
/// records.
pub const STORED_LEVEL_STEP: u32 = 4;

/// Whether a sink stores the complete subtrees of `level` ([`STORED_LEVEL_STEP`]); the leaves
/// (level 0) are stored with their records.
pub fn is_stored_level(level: u32) -> bool {
    level != 0 && level % STORED_LEVEL_STEP == 0
}

/// The levels a sink stores nodes at, from the lowest.
pub fn stored_levels() -> impl Iterator<Item = u32> {
    (STORED_LEVEL_STEP..64).step_by(STORED_LEVEL_STEP as usize)
}

/// The hash of a complete aligned subtree: of leaves `[index << level, (index + 1) << level)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeNode {
    pub level: u32,
    pub index: u64,
    pub hash: Hash,
}

/// Reads stored hashes for [`range_hash_from_stored`]: `(level, from, to)` asks for the hashes
/// of the complete subtrees `from..to` of `level` (0: the leaves), in order; Ok(None) when
/// they are not all stored.
pub type StoredHashes<'a, E> = &'a mut dyn FnMut(u32, u64, u64) -> Result<Option<Vec<Hash>>, E>;

/// MTH of leaves `[start, end)` from stored subtree hashes, reading at most 8 hashes for each
/// complete subtree the range divides into (one per bit set in its length). The range must
/// start at a multiple of its length rounded up to a power of two, as every range of an RFC
/// 9162 proof and every tree from leaf 0 does; Ok(None) for one that does not, or when a
/// hash it needs is not stored.
pub fn range_hash_from_stored<E>(
    start: u64,
    end: u64,
    read: StoredHashes<'_, E>,
) -> Result<Option<Hash>, E> {
    let Some(frontier) = frontier_from_stored(start, end, read)? else {
        return Ok(None);
    };
    Ok(Some(frontier.root()))
}

/// The frontier of the range `[start, end)` (see [`range_hash_from_stored`]); with `start` 0,
/// the tree of `end` leaves.
pub fn frontier_from_stored<E>(
    start: u64,
    end: u64,
    read: StoredHashes<'_, E>,
) -> Result<Option<MerkleFrontier>, E> {
    let Some(len) = end.checked_sub(start).filter(|n| *n > 0) else {
        return Ok((start == end).then(MerkleFrontier::new));
    };
    if len
        .checked_next_power_of_two()
        .is_none_or(|p| start % p != 0)
    {
        return Ok(None);
    }
    let mut subtrees = Vec::with_capacity(len.count_ones() as usize);
    let mut at = start;
    for height in (0..64u32).rev().filter(|h| len & (1 << h) != 0) {
        // The stored level at or below this height, and its hashes under the subtree.
        let level = height - height % STORED_LEVEL_STEP;
        let (from, to) = (at >> level, (at >> level) + (1 << (height - level)));
        let Some(hashes) = read(level, from, to)?.filter(|h| h.len() as u64 == to - from) else {
            return Ok(None);
        };
        let mut below = MerkleFrontier::new();
        hashes.into_iter().for_each(|h| below.push(h));
        subtrees.push(below.root());
        at += 1 << height;
    }
    Ok(MerkleFrontier::from_blocks(len, subtrees))
}

/// The right edge of an append-only Merkle tree: the hash of each complete subtree its leaves
/// divide into, from the largest (leftmost) down, one per bit set in the leaf count. At most 64
/// hashes whatever the size, and enough to append and to give the root; proofs need a
/// [`MerkleTree`] (or the stored leaves).
#[derive(Debug, Clone, Default)]
pub struct MerkleFrontier {
    size: u64,
    subtrees: Vec<Hash>,
}

impl MerkleFrontier {
    pub fn new() -> MerkleFrontier {
        MerkleFrontier::default()
    }

    /// Number of leaves.
    pub fn len(&self) -> u64 {
        self.size
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// How many hashes it holds: one per bit set in [`Self::len`].
    pub fn hashes(&self) -> usize {
        self.subtrees.len()
    }

    /// The frontier of a tree of `size` leaves from its subtrees' hashes (as
    /// [`Self::blocks`] lists them); None unless there is one per bit set in `size`.
    pub fn from_blocks(size: u64, subtrees: Vec<Hash>) -> Option<MerkleFrontier> {
        (subtrees.len() == size.count_ones() as usize).then_some(MerkleFrontier { size, subtrees })
    }

    /// Appends a leaf hash: like adding one to a binary counter, each subtree it completes
    /// merges with its left neighbour of the same size.
    pub fn push(&mut self, leaf: Hash) {
        self.push_reporting(leaf, |_| {});
    }

    /// [`Self::push`], handing `completed` every subtree the leaf completes, smallest first
    /// (what a sink stores of them lets proofs skip reading every leaf).
    pub fn push_reporting(&mut self, leaf: Hash, mut completed: impl FnMut(TreeNode)) {
        let mut hash = leaf;
        let mut carry = self.size;
        let mut level = 0;
        while carry & 1 == 1 {
            // A set bit always has its subtree at the end.
            let Some(left) = self.subtrees.pop() else {
                break;
            };
            hash = node_hash(&left, &hash);
            carry >>= 1;
            level += 1;
            // The new size is a multiple of 2^level; this subtree is the last of them.
            completed(TreeNode {
                level,
                index: self.size >> level,
                hash,
            });
        }
        self.subtrees.push(hash);
        self.size += 1;
    }

    /// Its subtrees with the leaf range each covers, from the leftmost.
    pub fn blocks(&self) -> impl Iterator<Item = ((u64, u64), Hash)> + '_ {
        let mut sizes = (0..64u32)
            .rev()
            .map(|bit| 1u64 << bit)
            .filter(|size| self.size & size != 0);
        let mut start = 0;
        self.subtrees.iter().map(move |hash| {
            let size = sizes.next().unwrap_or(0);
            let range = (start, start + size);
            start += size;
            (range, *hash)
        })
    }

    /// Root hash: the subtrees folded from the right (RFC 9162's MTH splits at the largest
    /// power of two below the size, which is the leftmost subtree).
    pub fn root(&self) -> Hash {
        let mut from_right = self.subtrees.iter().rev();
        match from_right.next() {
            None => EMPTY_ROOT,
            Some(last) => from_right.fold(*last, |right, left| node_hash(left, &right)),
        }
    }
}

/// Append-only Merkle tree keeping every complete aligned subtree hash:
/// `levels[k][i]` is the hash of leaves `[i * 2^k, (i + 1) * 2^k)`. That is
/// two hashes per leaf, and any root or proof for any size needs only
/// O(log n) lookups plus O(log n) hashes for the ragged right edge.
#[derive(Debug, Clone, Default)]
pub struct MerkleTree {
    levels: Vec<Vec<Hash>>,
}

impl MerkleTree {
    pub fn new() -> MerkleTree {
        MerkleTree::default()
    }

    /// Tree over the given leaf hashes.
    pub fn from_leaf_hashes<I: IntoIterator<Item = Hash>>(leaves: I) -> MerkleTree {
        let mut t = MerkleTree::new();
        for l in leaves {
            t.push(l);
        }
        t
    }

    /// Number of leaves.
    pub fn len(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a leaf hash, completing every subtree it closes.
    pub fn push(&mut self, leaf: Hash) {
        let mut hash = leaf;
        let mut level = 0;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            let row = &mut self.levels[level];
            row.push(hash);
            let n = row.len();
            if n % 2 == 1 {
                break;
            }
            hash = node_hash(&row[n - 2], &row[n - 1]);
            level += 1;
        }
    }

    fn node(&self, level: u32, index: u64) -> Option<Hash> {
        self.levels
            .get(level as usize)?
            .get(usize::try_from(index).ok()?)
            .copied()
    }

    /// MTH of leaves `[start, end)`, `end <= len`, `start < end`.
    fn range_hash(&self, start: u64, end: u64) -> Option<Hash> {
        let n = end.checked_sub(start)?;
        if n == 0 {
            return None;
        }
        if n.is_power_of_two() && start % n == 0 {
            return self.node(n.trailing_zeros(), start / n);
        }
        let k = split_point(n);
        Some(node_hash(
            &self.range_hash(start, start + k)?,
            &self.range_hash(start + k, end)?,
        ))
    }

    /// Root hash of the current tree.
    pub fn root(&self) -> Hash {
        self.root_at(self.len()).unwrap_or(EMPTY_ROOT)
    }

    /// Root hash of the first `size` leaves.
    pub fn root_at(&self, size: u64) -> Option<Hash> {
        if size > self.len() {
            return None;
        }
        if size == 0 {
            return Some(EMPTY_ROOT);
        }
        self.range_hash(0, size)
    }

    /// Inclusion proof of leaf `index` in the tree of the first `size` leaves
    /// (RFC 9162 2.1.3.1), ordered from the leaf upwards.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
        if size > self.len() {
            return Err(ProofError::OutOfRange { index, size });
        }
        self.hashes_of(&inclusion_ranges(index, size)?, index, size)
    }

    /// Consistency proof between the trees of sizes `old` and `new`
    /// (RFC 9162 2.1.4.1). Empty when `old` is 0 or equals `new`.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, ProofError> {
        if new > self.len() {
            return Err(ProofError::OutOfRange {
                index: old,
                size: new,
            });
        }
        self.hashes_of(&consistency_ranges(old, new)?, old, new)
    }

    fn hashes_of(
        &self,
        ranges: &[(u64, u64)],
        index: u64,
        size: u64,
    ) -> Result<Vec<Hash>, ProofError> {
        ranges
            .iter()
            .map(|&(start, end)| self.range_hash(start, end))
            .collect::<Option<Vec<Hash>>>()
            .ok_or(ProofError::OutOfRange { index, size })
    }
}

/// The leaf ranges `[start, end)` whose hashes make up the inclusion proof of leaf `index` in
/// the tree of `size` leaves (RFC 9162 2.1.3.1), from the leaf upwards. Disjoint, so that
/// [`RangeHashes`] can hash them from leaves read once.
pub fn inclusion_ranges(index: u64, size: u64) -> Result<Vec<(u64, u64)>, ProofError> {
    if index >= size {
        return Err(ProofError::OutOfRange { index, size });
    }
    let mut top_down = Vec::new();
    let (mut m, mut start, mut n) = (index, 0, size);
    while n > 1 {
        let k = split_point(n);
        if m < k {
            top_down.push((start + k, start + n));
            n = k;
        } else {
            top_down.push((start, start + k));
            m -= k;
            start += k;
            n -= k;
        }
    }
    top_down.reverse();
    Ok(top_down)
}

/// The leaf ranges whose hashes make up the consistency proof between the trees of sizes `old`
/// and `new` (RFC 9162 2.1.4.1), in proof order. Those below `old` are blocks of the frontier at
/// `old` ([`MerkleFrontier::blocks`]); the others lie between `old` and `new`.
pub fn consistency_ranges(old: u64, new: u64) -> Result<Vec<(u64, u64)>, ProofError> {
    if old > new {
        return Err(ProofError::OutOfRange {
            index: old,
            size: new,
        });
    }
    if old == 0 || old == new {
        return Ok(Vec::new());
    }
    let mut top_down = Vec::new();
    let (mut m, mut start, mut n, mut whole) = (old, 0, new, true);
    while m != n {
        let k = split_point(n);
        if m <= k {
            top_down.push((start + k, start + n));
            n = k;
        } else {
            top_down.push((start, start + k));
            m -= k;
            start += k;
            n -= k;
            whole = false;
        }
    }
    // Where the old tree is one subtree of the new, the proof starts with it, unless it is
    // the whole old tree (whose root the verifier has).
    let last = (!whole).then_some((start, start + n));
    Ok(last.into_iter().chain(top_down.into_iter().rev()).collect())
}

/// The hashes of chosen disjoint leaf ranges (the MTH of each), from leaves pushed once and in
/// order, in memory that does not grow with the tree: a frontier per range. Ranges already
/// known (blocks of a frontier) can be given instead of their leaves.
#[derive(Debug, Clone)]
pub struct RangeHashes {
    ranges: Vec<(u64, u64)>,
    hashes: Vec<Option<Hash>>,
    growing: Vec<MerkleFrontier>,
    next: u64,
}

impl RangeHashes {
    /// Collects the hashes of `ranges`; the first leaf pushed is leaf `from`.
    pub fn new(ranges: Vec<(u64, u64)>, from: u64) -> RangeHashes {
        let n = ranges.len();
        RangeHashes {
            ranges,
            hashes: vec![None; n],
            growing: vec![MerkleFrontier::new(); n],
            next: from,
        }
    }

    /// Gives the hash of each range that is one of `blocks` (as [`MerkleFrontier::blocks`]
    /// lists them).
    pub fn known(&mut self, blocks: impl IntoIterator<Item = ((u64, u64), Hash)>) {
        for (range, hash) in blocks {
            if let Some(i) = self.ranges.iter().position(|r| *r == range) {
                self.hashes[i] = Some(hash);
            }
        }
    }

    pub fn push(&mut self, leaf: Hash) {
        let at = self.next;
        for (i, &(start, end)) in self.ranges.iter().enumerate() {
            if start <= at && at < end && self.hashes[i].is_none() {
                self.growing[i].push(leaf);
                if self.growing[i].len() == end - start {
                    self.hashes[i] = Some(self.growing[i].root());
                }
            }
        }
        self.next += 1;
    }

    /// Every range's hash, in the order given, once each is complete.
    pub fn hashes(&self) -> Option<Vec<Hash>> {
        self.hashes.iter().copied().collect()
    }
}

/// Verifies that `leaf` is at `index` in the tree of `size` leaves with root
/// `root` (RFC 9162 2.1.3.2).
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::OutOfRange { index, size });
    }
    if proof.len() > MAX_PROOF_LEN {
        return Err(ProofError::WrongLength);
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return Err(ProofError::WrongLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::WrongLength);
    }
    if &r != root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// Verifies that the tree of `old` leaves with root `old_root` is a prefix of
/// the tree of `new` leaves with root `new_root` (RFC 9162 2.1.4.2).
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old > new {
        return Err(ProofError::OutOfRange {
            index: old,
            size: new,
        });
    }
    if proof.len() > MAX_PROOF_LEN {
        return Err(ProofError::WrongLength);
    }
    if old == new {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength);
        }
        return if old_root == new_root {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    if old == 0 {
        // Every tree extends the empty tree; the empty proof is the only one.
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(ProofError::WrongLength)
        };
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return Err(ProofError::WrongLength);
    };
    let (mut fnode, mut snode) = (old - 1, new - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if snode == 0 {
            return Err(ProofError::WrongLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::WrongLength);
    }
    if &fr != old_root || &sr != new_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nodes a frontier reports are the tree's, and the hashes built from those stored
    /// (every fourth level) and the leaves are the tree's: every root, every inclusion and
    /// consistency proof range, for every size below 600; with a node missing, None.
    #[test]
    fn hashes_from_stored_nodes_are_the_trees() {
        let leaves: Vec<Hash> = (0u32..600).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let tree = MerkleTree::from_leaf_hashes(leaves.iter().copied());
        let mut stored = std::collections::BTreeMap::new();
        let mut frontier = MerkleFrontier::new();
        for leaf in &leaves {
            frontier.push_reporting(*leaf, |n| {
                assert_eq!(Some(n.hash), tree.node(n.level, n.index), "{n:?}");
                if is_stored_level(n.level) {
                    stored.insert((n.level, n.index), n.hash);
                }
            });
        }
        assert_eq!(stored.len(), 600 / 16 + 600 / 256);
        let read = |stored: &std::collections::BTreeMap<(u32, u64), Hash>,
                    level: u32,
                    from: u64,
                    to: u64|
         -> Result<Option<Vec<Hash>>, ()> {
            Ok((from..to)
                .map(|i| match level {
                    0 => leaves.get(i as usize).copied(),
                    _ => stored.get(&(level, i)).copied(),
                })
                .collect())
        };
        for size in 1..600u64 {
            let built = frontier_from_stored(0, size, &mut |l, f, t| read(&stored, l, f, t));
            assert_eq!(
                built.unwrap().map(|f| f.root()),
                tree.root_at(size),
                "{size}"
            );
            for index in (0..size).step_by(7) {
                let ranges = inclusion_ranges(index, size).unwrap();
                let hashes: Option<Vec<Hash>> = ranges
                    .iter()
                    .map(|&(a, b)| {
                        range_hash_from_stored(a, b, &mut |l, f, t| read(&stored, l, f, t)).unwrap()
                    })
                    .collect();
                assert_eq!(
                    hashes,
                    tree.inclusion_proof(index, size).ok(),
                    "{index}/{size}"
                );
                let ranges = consistency_ranges(index + 1, size).unwrap();
                let hashes: Option<Vec<Hash>> = ranges
                    .iter()
                    .map(|&(a, b)| {
                        range_hash_from_stored(a, b, &mut |l, f, t| read(&stored, l, f, t)).unwrap()
                    })
                    .collect();
                assert_eq!(hashes, tree.consistency_proof(index + 1, size).ok());
            }
        }
        // A range that does not start at a multiple of its length (rounded up) is refused.
        assert_eq!(
            range_hash_from_stored(3, 7, &mut |l, f, t| read(&stored, l, f, t)),
            Ok(None)
        );
        let mut gap = stored.clone();
        gap.remove(&(4, 33));
        let built = frontier_from_stored(0, 599, &mut |l, f, t| read(&gap, l, f, t));
        assert_eq!(built.unwrap().map(|f| f.root()), None);
        assert!(MerkleFrontier::from_blocks(5, vec![[0; 32]]).is_none());
    }

    #[test]
    fn empty_root_is_sha256_of_nothing() {
        assert_eq!(EMPTY_ROOT, <[u8; 32]>::from(Sha256::digest(b"")));
        assert_eq!(MerkleTree::new().root(), EMPTY_ROOT);
    }

    #[test]
    fn split_point_matches_reference() {
        // Cases from transparency-dev/merkle testonly/reference_test.go TestDownToPowerOfTwo.
        for (n, want) in [(2, 1), (7, 4), (8, 4), (63, 32), (28937, 16384)] {
            assert_eq!(split_point(n), want);
        }
    }
}
