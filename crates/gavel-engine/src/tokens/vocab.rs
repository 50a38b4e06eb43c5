//! A vocabulary as `build.rs` lays it out: token bytes in rank order, their offsets, and a hash
//! index from bytes to rank, all embedded read-only in the binary. Nothing is built at run time;
//! the pages a lookup touches become resident (3.4 MB for o200k, 1.6 MB for cl100k once every
//! page has been touched; a test keeps each under 5 MB).

use super::hash;

/// One encoding's tables (see `build.rs` for the layout).
pub(super) struct Vocab {
    /// Every token's bytes, concatenated in rank order.
    bytes: &'static [u8],
    /// Little-endian `u32` offsets into `bytes`: `tokens + 1` of them.
    offsets: &'static [u8],
    /// Little-endian `u32` slots (layout in `hash.rs`).
    index: &'static [u8],
    /// No token is longer: longer byte strings are not looked up.
    max_token_len: usize,
}

include!(concat!(env!("OUT_DIR"), "/vocab.rs"));

#[inline]
fn read_u32(table: &[u8], i: usize) -> Option<u32> {
    let at = i.checked_mul(4)?;
    let word: [u8; 4] = table.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(word))
}

impl Vocab {
    /// The rank (token id) of `bytes` if they are a token.
    #[inline]
    pub(super) fn rank(&self, bytes: &[u8]) -> Option<u32> {
        if bytes.len() > self.max_token_len {
            return None;
        }
        let h = hash::hash(bytes);
        let tag = hash::tag(h);
        let slots = self.index.len() / 4;
        let mut slot = hash::slot(h, slots);
        // Bounded by the table size, so even a damaged table cannot loop forever.
        for _ in 0..slots {
            let entry = read_u32(self.index, slot)?;
            if entry == hash::EMPTY {
                return None;
            }
            if entry & !hash::ID_MASK == tag {
                let id = entry & hash::ID_MASK;
                if self.token(id) == Some(bytes) {
                    return Some(id);
                }
            }
            slot = if slot + 1 == slots { 0 } else { slot + 1 };
        }
        None
    }

    /// The bytes of token `id`.
    #[inline]
    pub(super) fn token(&self, id: u32) -> Option<&'static [u8]> {
        let start = read_u32(self.offsets, id as usize)? as usize;
        let end = read_u32(self.offsets, id as usize + 1)? as usize;
        self.bytes.get(start..end)
    }
}

#[cfg(test)]
impl Vocab {
    /// How many tokens the vocabulary has (ids `0..len`).
    pub(super) fn len(&self) -> u32 {
        (self.offsets.len() / 4).saturating_sub(1) as u32
    }

    /// The bytes the tables occupy (all resident once every page has been touched).
    pub(super) fn table_bytes(&self) -> usize {
        self.bytes.len() + self.offsets.len() + self.index.len()
    }

    pub(super) fn max_token_len(&self) -> usize {
        self.max_token_len
    }
}
