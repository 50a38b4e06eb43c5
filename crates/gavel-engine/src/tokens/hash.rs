//! The token index's hash and entry layout, shared word for word by `build.rs` (which lays the
//! index out) and the counter (which probes it): the file is compiled into both.
//!
//! The index is an open-addressing table (linear probing, two thirds full) of `u32` entries:
//! the low [`ID_BITS`] bits are a token id, the high bits a tag taken from the hash, so most
//! probes that land on another token are rejected without reading its bytes. [`EMPTY`] marks a
//! free slot; no entry can equal it because ids stay below [`ID_MASK`].

/// Bits of an entry that hold the token id (o200k has 199,998 tokens, under 2^18).
pub const ID_BITS: u32 = 18;
/// Mask of the id bits; also the bound ids must stay below.
pub const ID_MASK: u32 = (1 << ID_BITS) - 1;
/// A free slot.
pub const EMPTY: u32 = u32::MAX;

/// A 64-bit hash of a token's bytes: eight bytes at a time (the last eight overlapping the
/// word before; short strings read as one or two overlapping halves, so no byte is copied), then
/// a full avalanche, so the high bits (the slot) and the low bits (the tag) are independent.
#[inline]
pub fn hash(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let n = bytes.len();
    let mut h = (n as u64).wrapping_mul(K);
    let tail = if let Some(last) = bytes.last_chunk::<8>() {
        let mut rest = bytes;
        while let (Some(word), Some(after)) = (rest.first_chunk::<8>(), rest.get(8..)) {
            if after.is_empty() {
                break;
            }
            h = (h ^ u64::from_le_bytes(*word))
                .wrapping_mul(K)
                .rotate_left(31);
            rest = after;
        }
        u64::from_le_bytes(*last)
    } else if let (Some(head), Some(last)) = (bytes.first_chunk::<4>(), bytes.last_chunk::<4>()) {
        u64::from(u32::from_le_bytes(*head)) | u64::from(u32::from_le_bytes(*last)) << 32
    } else if let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) {
        let middle = bytes.get(n / 2).copied().unwrap_or(0);
        u64::from(first) | u64::from(middle) << 8 | u64::from(last) << 16
    } else {
        0
    };
    h = (h ^ tail).wrapping_mul(K);
    // MurmurHash3's 64-bit finaliser.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The first slot to probe in a table of `slots` slots (the hash's high bits, scaled).
#[inline]
pub fn slot(hash: u64, slots: usize) -> usize {
    ((u128::from(hash) * slots as u128) >> 64) as usize
}

/// The tag bits of an entry for this hash (the id bits are zero).
#[inline]
pub fn tag(hash: u64) -> u32 {
    (hash as u32) & !ID_MASK
}
