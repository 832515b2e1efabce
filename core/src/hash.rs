//! The hashes two nodes compare — running hash, idempotency fingerprints, state digests —
//! defined as XXH3-64 over explicit canonical bytes, never over derived `Hash` output.
//!
//! XXH3-64 is a published, frozen algorithm (xxHash's `doc/xxhash_spec.md`, implemented here by
//! `xxhash-rust`), fast on the short inputs hashed per command, and independent of the Rust
//! compiler and of how our types are declared. Its input is always bytes of a documented
//! format: the canonical encoding of [`crate::codec`] or the snapshot entry layout of
//! `engine/layout.rs`. So a node built by another compiler, or a node restored from a snapshot,
//! computes the same values. It is not meant to resist an adversary, only to make accidental
//! agreement of diverged states vanishingly unlikely.
//!
//! Definitions (`‖` is concatenation, `le64` a `u64` in 8 little-endian bytes,
//! `canonical` the encoding of [`crate::codec`], version [`crate::codec::ENCODING_VERSION`]):
//!
//! - **Running hash.** Starts at 0. A mutating command (a tick or a client command; queries and
//!   snapshot requests are not folded) first moves time, folding each expiry it fires in
//!   firing order: `h = XXH3_64_with_seed(canonical(event), seed: h)`; then its outcome:
//!   `h = XXH3_64_with_seed(le64(sequence) ‖ canonical(outcome), seed: h)`.
//! - **Idempotency fingerprint** of a client command: `XXH3_64(canonical(action))` (seed 0);
//!   the request key is not part of it. Snapshots store it, so it must never drift.
//! - **Entry hash** for the state digests: `XXH3_64(entry bytes)`, with the fixed-size entry
//!   encodings of the snapshot image; the digests themselves are defined in `engine/image.rs`.
//!
//! [`mix64`] is a different thing: the fixed mixing function that places keys in the engine's
//! index tables. It decides memory layout, which must also be the same on every node, but it is
//! never compared between nodes.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::codec::{self, ACTION_LEN_MAX, EVENT_LEN_MAX, OUTCOME_LEN_MAX};
use crate::command::Action;
use crate::engine::Event;
use crate::outcome::Outcome;
use crate::types::Sequence;

const SEQUENCE_LEN: usize = 8;

/// The running hash after folding in one applied command's outcome: XXH3-64 of
/// `le64(sequence) ‖ canonical(outcome)`, seeded with the running hash before it.
/// Encodes into a stack buffer: no allocation.
#[must_use]
#[inline]
pub fn fold_outcome(hash: u64, sequence: Sequence, outcome: &Outcome) -> u64 {
    let mut bytes = [0_u8; SEQUENCE_LEN + OUTCOME_LEN_MAX];
    bytes[..SEQUENCE_LEN].copy_from_slice(&sequence.0.to_le_bytes());
    let len = SEQUENCE_LEN + codec::encode_outcome(outcome, &mut bytes[SEQUENCE_LEN..]);
    xxh3_64_with_seed(&bytes[..len], hash)
}

/// The running hash after folding in one event (an expiry): XXH3-64 of `canonical(event)`,
/// seeded with the running hash before it.
#[must_use]
pub fn fold_event(hash: u64, event: &Event) -> u64 {
    let mut bytes = [0_u8; EVENT_LEN_MAX];
    let len = codec::encode_event(event, &mut bytes);
    xxh3_64_with_seed(&bytes[..len], hash)
}

/// A client command's idempotency fingerprint: XXH3-64 of `canonical(action)`. A retry with
/// the same request key and the same fingerprint gets the remembered outcome.
#[must_use]
#[inline]
pub fn fingerprint(action: &Action) -> u64 {
    let mut bytes = [0_u8; ACTION_LEN_MAX];
    let len = codec::encode_action(action, &mut bytes);
    xxh3_64(&bytes[..len])
}

/// SplitMix64's finaliser: every input bit affects every output bit. Places keys in the
/// engine's index tables (see `engine/table.rs`).
#[must_use]
pub fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Reserve;
    use crate::types::{OrderId, SkuId, Timestamp, UserId};

    /// Bytes from a hex string with spaces, as written in the specification.
    fn hex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        assert_eq!(digits.len() % 2, 0, "odd number of hex digits");
        let nibble = |d: u8| (d as char).to_digit(16).expect("hex digit") as u8;
        digits.chunks(2).map(|pair| nibble(pair[0]) << 4 | nibble(pair[1])).collect()
    }

    #[test]
    fn fingerprint_is_xxh3_of_the_literal_action_bytes() {
        // Goal: the fingerprint of a reservation is XXH3-64 (seed 0) of the bytes the
        // specification lists, computed here without the engine's encoder.
        let action = Action::Reserve(Reserve {
            user: UserId(3),
            sku: SkuId(1),
            qty: 2,
            coupon: Some(crate::types::CouponId(0x0102)),
        });
        let bytes = hex("05 0300000000000000 0100000000000000 02000000 01 0201000000000000");
        assert_eq!(fingerprint(&action), xxh3_64(&bytes));
        // The value itself, as snapshots store it: a change of hash library is caught too.
        assert_eq!(fingerprint(&action), 0x7EFB_BC4B_3C36_5B78);
    }

    #[test]
    fn running_hash_folds_sequence_and_literal_outcome_bytes_seeded_by_the_last_hash() {
        // Goal: folding an outcome is XXH3-64 of le64(sequence) ‖ outcome bytes, seeded with
        // the previous hash, as the module documentation defines it.
        let outcome = Outcome::Reserved {
            order: OrderId(0x0A0B),
            expires_at: Timestamp(0x1122_3344),
            amount_cents: 999,
        };
        let bytes = hex("0700000000000000 05 0B0A000000000000 4433221100000000 E703000000000000");
        let seed = 0xDEAD_BEEF_u64;
        assert_eq!(fold_outcome(seed, Sequence(7), &outcome), xxh3_64_with_seed(&bytes, seed));
        assert_eq!(fold_outcome(seed, Sequence(7), &outcome), 0x9548_6F2C_7C72_892A);
        let rejected = Outcome::Rejected(crate::outcome::Rejection::SoldOut);
        let bytes = hex("0800000000000000 12 01");
        assert_eq!(fold_outcome(1, Sequence(8), &rejected), xxh3_64_with_seed(&bytes, 1));
    }

    #[test]
    fn expiry_folds_the_literal_event_bytes() {
        // Goal: an expiry folds XXH3-64 of its canonical event bytes, seeded with the hash.
        let event =
            Event::OrderExpired { order: OrderId(5), user: UserId(6), sku: SkuId(7), qty: 3 };
        let bytes = hex("01 0500000000000000 0600000000000000 0700000000000000 03000000");
        assert_eq!(fold_event(42, &event), xxh3_64_with_seed(&bytes, 42));
    }

    #[test]
    fn xxh3_matches_the_published_test_vectors() {
        // Goal: the hash library computes XXH3-64 as published (xxHash's sanity checks), so
        // the definitions above mean the same on every build.
        assert_eq!(xxh3_64(b""), 0x2D06_8005_38D3_94C2);
        assert_eq!(xxh3_64_with_seed(b"", 0x9E37_79B1_85EB_CA8D), 0xA8A6_B918_B2F0_364A);
    }

    #[test]
    fn mix64_is_pinned() {
        // Goal: index-table placement does not drift between builds (SplitMix64 finaliser).
        assert_eq!(mix64(0), 0);
        assert_eq!(mix64(1), 0x5692_161D_100B_05E5);
    }
}
