//! Counting the tokens of one pre-tokenized piece: tiktoken's byte-pair merge.
//!
//! A piece that is itself a token counts 1 (tiktoken's shortcut; in o200k and cl100k merging a
//! token's bytes always gives the token back, so it only saves time). Otherwise the piece starts as single bytes (every
//! byte is a token) and, as in tiktoken, the adjacent pair whose concatenation has the lowest
//! rank is merged, ties going to the leftmost pair, until no adjacent pair is a token; the count
//! is the number of parts left.
//!
//! State is one `u32` per byte: for a byte that starts a part, the rank of that part joined with
//! the next ([`NO_PAIR`] if that is not a token or there is no next part); for a byte inside a
//! part, [`DEAD`]. A part is a token, so neighbours are at most the longest token away and are
//! found by skipping dead bytes. Short pieces find the lowest pair by a scan (tiktoken's own
//! loop: quadratic, but in at most [`SMALL_PIECE`] bytes). Longer ones keep a tournament tree of
//! per-block minima over the ranks, so each merge costs a block scan and a walk up the tree:
//! O(n log n) in time, 5 to 6 bytes per byte of piece in memory, kept in a per-thread scratch
//! (released after a piece over 64 KiB).

use super::vocab::Vocab;

/// Pieces up to this long are merged on the stack with a linear scan.
const SMALL_PIECE: usize = 64;
/// Ranks per leaf of the tournament tree.
const BLOCK: usize = 16;
/// Scratch kept (in entries) after a long piece; more is released.
const SCRATCH_KEEP: usize = 1 << 16;

/// The part starting here has no right neighbour it can merge with.
const NO_PAIR: u32 = u32::MAX;
/// This byte is inside a part, not at its start.
const DEAD: u32 = u32::MAX - 1;

/// Per-thread buffers for long pieces.
#[derive(Default)]
pub(super) struct Scratch {
    rank: Vec<u32>,
    tree: Vec<u64>,
}

/// Tokens of `piece` under `vocab`.
pub(super) fn count_piece(vocab: &Vocab, piece: &[u8], scratch: &mut Scratch) -> usize {
    let n = piece.len();
    if n <= 1 {
        // Every single byte is a token (build.rs checks).
        return n;
    }
    if vocab.rank(piece).is_some() {
        return 1;
    }
    if n <= SMALL_PIECE {
        let mut rank = [NO_PAIR; SMALL_PIECE];
        merge_small(vocab, piece, rank.get_mut(..n).unwrap_or_default())
    } else if u32::try_from(n).is_ok() {
        let parts = merge_large(vocab, piece, scratch);
        if scratch.rank.capacity() > SCRATCH_KEEP {
            scratch.rank = Vec::new();
            scratch.tree = Vec::new();
        }
        parts
    } else {
        // Over 4 GiB in one piece: positions do not fit, so count every byte (an upper bound).
        n
    }
}

/// Rank of `piece[start..end]`, [`NO_PAIR`] if it is not a token.
#[inline]
fn rank_of(vocab: &Vocab, piece: &[u8], start: usize, end: usize) -> u32 {
    piece
        .get(start..end)
        .and_then(|bytes| vocab.rank(bytes))
        .unwrap_or(NO_PAIR)
}

/// Sets every byte's pair rank (each byte its own part).
fn init_ranks(vocab: &Vocab, piece: &[u8], rank: &mut [u32]) {
    for (i, r) in rank.iter_mut().enumerate() {
        // The last byte gets NO_PAIR: `piece[n - 1..n + 1]` is out of range.
        *r = rank_of(vocab, piece, i, i + 2);
    }
}

/// Start of the part after the one starting at `at` (`rank.len()` if none).
#[inline]
fn next_part(rank: &[u32], at: usize) -> usize {
    let mut i = at + 1;
    while rank.get(i) == Some(&DEAD) {
        i += 1;
    }
    i.min(rank.len())
}

/// Start of the part before the one starting at `at`.
#[inline]
fn prev_part(rank: &[u32], at: usize) -> Option<usize> {
    let mut i = at;
    while i > 0 {
        i -= 1;
        if rank.get(i) != Some(&DEAD) {
            return Some(i);
        }
    }
    None
}

/// Merges the part starting at `at` with the next one and re-ranks the pairs that changed.
/// Returns the start of the part that was absorbed and of the previous part (whose ranks
/// changed, with `at`'s).
#[inline]
fn merge_at(vocab: &Vocab, piece: &[u8], rank: &mut [u32], at: usize) -> (usize, Option<usize>) {
    let absorbed = next_part(rank, at);
    let after = next_part(rank, absorbed);
    if let Some(r) = rank.get_mut(absorbed) {
        *r = DEAD;
    }
    let new_rank = if after < rank.len() {
        rank_of(vocab, piece, at, next_part(rank, after))
    } else {
        NO_PAIR
    };
    if let Some(r) = rank.get_mut(at) {
        *r = new_rank;
    }
    let prev = prev_part(rank, at);
    if let Some(p) = prev {
        let r = rank_of(vocab, piece, p, after);
        if let Some(slot) = rank.get_mut(p) {
            *slot = r;
        }
    }
    (absorbed, prev)
}

/// tiktoken's loop: scan for the lowest pair, merge, repeat.
fn merge_small(vocab: &Vocab, piece: &[u8], rank: &mut [u32]) -> usize {
    init_ranks(vocab, piece, rank);
    let mut parts = rank.len();
    loop {
        let mut best = DEAD;
        let mut at = 0;
        for (i, &r) in rank.iter().enumerate() {
            if r < best {
                best = r;
                at = i;
            }
        }
        if best >= DEAD {
            return parts;
        }
        merge_at(vocab, piece, rank, at);
        parts -= 1;
    }
}

/// The same merges, the lowest pair found through a tournament tree over blocks of ranks.
fn merge_large(vocab: &Vocab, piece: &[u8], scratch: &mut Scratch) -> usize {
    let n = piece.len();
    let rank = &mut scratch.rank;
    rank.clear();
    rank.resize(n, NO_PAIR);
    init_ranks(vocab, piece, rank);
    let mut tree = Tree::build(rank, &mut scratch.tree);
    let mut parts = n;
    while let Some(at) = tree.lowest() {
        let (absorbed, prev) = merge_at(vocab, piece, rank, at);
        parts -= 1;
        let block = at / BLOCK;
        tree.update(rank, block);
        if absorbed / BLOCK != block {
            tree.update(rank, absorbed / BLOCK);
        }
        if let Some(p) = prev.filter(|p| p / BLOCK != block) {
            tree.update(rank, p / BLOCK);
        }
    }
    parts
}

/// A tournament tree over blocks of [`BLOCK`] ranks. Node `k` holds the lowest key under it,
/// a key being `rank << 32 | position` (so the minimum is the lowest rank, leftmost on ties);
/// leaves are at `size..size + blocks`, the root at 1.
struct Tree<'a> {
    nodes: &'a mut Vec<u64>,
    size: usize,
}

impl<'a> Tree<'a> {
    fn build(rank: &[u32], nodes: &'a mut Vec<u64>) -> Tree<'a> {
        let blocks = rank.len().div_ceil(BLOCK);
        let size = blocks.next_power_of_two();
        nodes.clear();
        nodes.resize(2 * size, u64::MAX);
        for (block, leaf) in nodes.iter_mut().skip(size).take(blocks).enumerate() {
            *leaf = Self::block_min(rank, block);
        }
        for node in (1..size).rev() {
            let children = nodes.get(2 * node..2 * node + 2).unwrap_or_default();
            let min = children.iter().copied().min().unwrap_or(u64::MAX);
            if let Some(slot) = nodes.get_mut(node) {
                *slot = min;
            }
        }
        Tree { nodes, size }
    }

    /// The lowest key in `block` (only dead or unpaired bytes give a key with a rank of
    /// [`DEAD`] or more).
    #[inline]
    fn block_min(rank: &[u32], block: usize) -> u64 {
        let start = block * BLOCK;
        let ranks = rank.get(start..).unwrap_or_default();
        ranks
            .iter()
            .take(BLOCK)
            .enumerate()
            .map(|(i, &r)| u64::from(r) << 32 | (start + i) as u64)
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Recomputes `block`'s leaf and its ancestors, stopping where nothing changes.
    fn update(&mut self, rank: &[u32], block: usize) {
        let mut node = self.size + block;
        let mut key = Self::block_min(rank, block);
        while let Some(slot) = self.nodes.get_mut(node) {
            if *slot == key {
                return;
            }
            *slot = key;
            if node <= 1 {
                return;
            }
            let sibling = self.nodes.get(node ^ 1).copied().unwrap_or(u64::MAX);
            key = key.min(sibling);
            node /= 2;
        }
    }

    /// Start of the lowest-ranked mergeable pair, if any.
    #[inline]
    fn lowest(&self) -> Option<usize> {
        let key = *self.nodes.get(1)?;
        ((key >> 32) < u64::from(DEAD)).then_some((key & u64::from(u32::MAX)) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::super::vocab;
    use super::*;
    use proptest::prelude::*;

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        // Mostly a few letters (many merges, many ties), some arbitrary bytes (invalid UTF-8).
        let byte = prop_oneof![4 => b'a'..=b'e', 1 => any::<u8>()];
        proptest::collection::vec(byte, 2..=SMALL_PIECE)
    }

    proptest! {
        #[test]
        fn the_scan_and_the_tree_merge_alike(bytes in bytes()) {
            let oracles = [&bpe_openai::o200k_base().bpe, &bpe_openai::cl100k_base().bpe];
            for (vocab, oracle) in [&vocab::O200K_BASE, &vocab::CL100K_BASE].into_iter().zip(oracles) {
                let mut rank = vec![NO_PAIR; bytes.len()];
                let small = merge_small(vocab, &bytes, &mut rank);
                let large = merge_large(vocab, &bytes, &mut Scratch::default());
                prop_assert_eq!(small, large);
                let whole = count_piece(vocab, &bytes, &mut Scratch::default());
                prop_assert_eq!(whole, oracle.count(&bytes));
            }
        }
    }

    #[test]
    fn tiny_pieces() {
        let mut scratch = Scratch::default();
        assert_eq!(count_piece(&vocab::O200K_BASE, b"", &mut scratch), 0);
        assert_eq!(count_piece(&vocab::O200K_BASE, b"\xff", &mut scratch), 1);
        assert_eq!(
            count_piece(&vocab::O200K_BASE, b"\xff\xfe", &mut scratch),
            2
        );
        assert_eq!(count_piece(&vocab::CL100K_BASE, b" hello", &mut scratch), 1);
    }
}
