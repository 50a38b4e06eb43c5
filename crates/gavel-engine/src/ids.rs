//! Identifiers: a prefix, then 26 Crockford base-32 characters (48 bits of milliseconds, 80
//! random bits, as ULIDs), so ids sort by time and carry no meaning beyond it.

use gavel_contract::time::Timestamp;

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// `prefix_` + a time-ordered id. The caller supplies randomness, keeping this module pure.
pub fn new_id(prefix: &str, now: Timestamp, random: [u8; 10]) -> String {
    let millis = u128::from(u64::try_from(now.millis()).unwrap_or(0) & 0xFFFF_FFFF_FFFF);
    let mut value = millis << 80;
    for (i, byte) in random.iter().enumerate() {
        value |= u128::from(*byte) << (72 - 8 * i);
    }
    let mut out = String::with_capacity(prefix.len() + 27);
    out.push_str(prefix);
    out.push('_');
    for i in (0..26).rev() {
        let index = ((value >> (5 * i)) & 0x1F) as usize;
        out.push(char::from(CROCKFORD.get(index).copied().unwrap_or(b'0')));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time_and_differ_by_randomness() {
        let a = new_id("dec", Timestamp(1_000), [0; 10]);
        let b = new_id("dec", Timestamp(2_000), [0; 10]);
        let c = new_id("dec", Timestamp(2_000), [1; 10]);
        assert!(a < b && b < c);
        assert_eq!(a.len(), 30);
        assert!(a.starts_with("dec_"));
    }
}
