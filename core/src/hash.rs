//! A small, explicitly specified 64-bit hasher for state hashes that two nodes compare.
//!
//! Not `DefaultHasher` (its algorithm may change between Rust releases) and not a randomly
//! seeded hasher (nodes would disagree). Each word is folded with a multiply-rotate step and the
//! result finished with the SplitMix64 mixer, which is enough to make accidental agreement of
//! diverged states vanishingly unlikely; it is not meant to resist an adversary.

use std::hash::{Hash, Hasher};

const FOLD: u64 = 0x9E37_79B9_7F4A_7C15;

/// Deterministic hasher used for the running outcome hash and the state digest.
#[derive(Clone, Copy, Debug, Default)]
pub struct StateHasher {
    state: u64,
}

impl StateHasher {
    /// A hasher starting from `seed`.
    #[must_use]
    pub fn with_seed(seed: u64) -> StateHasher {
        StateHasher { state: seed }
    }

    /// Hashes one value from a fresh hasher.
    #[must_use]
    pub fn hash_one<T: Hash + ?Sized>(value: &T) -> u64 {
        let mut hasher = StateHasher::default();
        value.hash(&mut hasher);
        hasher.finish()
    }
}

/// SplitMix64's finaliser: every input bit affects every output bit.
#[must_use]
pub fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl Hasher for StateHasher {
    fn finish(&self) -> u64 {
        mix64(self.state)
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let word = u64::from_le_bytes(chunk.try_into().expect("chunk of 8"));
            self.write_u64(word);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.write_u64(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 56));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.state = (self.state.rotate_left(23) ^ word).wrapping_mul(FOLD);
    }

    fn write_u8(&mut self, value: u8) {
        self.write_u64(u64::from(value));
    }
    fn write_u16(&mut self, value: u16) {
        self.write_u64(u64::from(value));
    }
    fn write_u32(&mut self, value: u32) {
        self.write_u64(u64::from(value));
    }
    fn write_usize(&mut self, value: usize) {
        self.write_u64(value as u64);
    }
    fn write_isize(&mut self, value: isize) {
        self.write_u64(value as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_hash_equal_and_neighbours_differ() {
        // Goal: the hash is a function of the value and separates close values.
        assert_eq!(StateHasher::hash_one(&(1u64, 2u64)), StateHasher::hash_one(&(1u64, 2u64)));
        assert_ne!(StateHasher::hash_one(&(1u64, 2u64)), StateHasher::hash_one(&(2u64, 1u64)));
        assert_ne!(StateHasher::hash_one(&[0u8; 3][..]), StateHasher::hash_one(&[0u8; 4][..]));
    }

    #[test]
    fn hash_is_pinned() {
        // Goal: the algorithm does not drift silently; nodes of different builds must agree.
        assert_eq!(StateHasher::hash_one(&42u64), mix64((42u64).wrapping_mul(FOLD)));
    }
}
