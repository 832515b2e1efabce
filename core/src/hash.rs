//! The hashes two nodes compare — running hash, idempotency fingerprints, state digests —
//! defined as XXH3-64 over explicit canonical bytes, never over derived `Hash` output.
//!
//! XXH3-64 is a published, frozen algorithm (xxHash's `doc/xxhash_spec.md`), fast on the short
//! inputs hashed per command, and independent of the Rust compiler and of how our types are
//! declared. The digests call `xxhash-rust`; the per-command hashes compute the same function
//! from words in registers (`Words` below, checked against `xxhash-rust` by the tests). Its
//! input is always bytes of a documented format: the canonical encoding of [`crate::codec`] or
//! the snapshot entry layout of `engine/layout.rs`. So a node built by another compiler, or a
//! node restored from a snapshot, computes the same values. It is not meant to resist an
//! adversary, only to make accidental agreement of diverged states vanishingly unlikely.
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
//! The engine's index tables place keys with a mixing function of their own (`engine/table.rs`).
//! It decides memory layout, which must also be the same on every node, but it is never
//! compared between nodes.

use crate::codec::{self, ACTION_LEN_MAX, EVENT_LEN_MAX, OUTCOME_LEN_MAX, Sink};
use crate::command::{Action, Reserve};
use crate::engine::Event;
use crate::outcome::{Outcome, Rejection};
use crate::types::Sequence;

const SEQUENCE_LEN: usize = 8;

/// The running hash after folding in one applied command's outcome: XXH3-64 of
/// `le64(sequence) ‖ canonical(outcome)`, seeded with the running hash before it.
/// No allocation, no memory round trip (see `Words`).
#[must_use]
#[inline]
pub fn fold_outcome(hash: u64, sequence: Sequence, outcome: &Outcome) -> u64 {
    // The outcomes of the commands a sale is made of each get their own copy of the same
    // encoder, handed a value rebuilt in the arm so that its variant, and so its length, are
    // known there: encoding and hash fold into straight-line arithmetic. The general copy,
    // whose every field is placed at an offset known only at run time, costs several times
    // as much; only the rare admin outcomes take it.
    match *outcome {
        Outcome::Reserved { order, expires_at, amount_cents } => {
            let reserved = Outcome::Reserved { order, expires_at, amount_cents };
            fold_encoded(hash, sequence, &reserved)
        }
        Outcome::Rejected(Rejection::SoldOut) => {
            fold_encoded(hash, sequence, &Outcome::Rejected(Rejection::SoldOut))
        }
        Outcome::Rejected(Rejection::LimitExceeded) => {
            fold_encoded(hash, sequence, &Outcome::Rejected(Rejection::LimitExceeded))
        }
        Outcome::Ticked { now } => fold_encoded(hash, sequence, &Outcome::Ticked { now }),
        Outcome::Paid { order } => fold_encoded(hash, sequence, &Outcome::Paid { order }),
        Outcome::Cancelled { order } => fold_encoded(hash, sequence, &Outcome::Cancelled { order }),
        Outcome::CouponClaimed { coupon, batch, valid_until } => {
            let claimed = Outcome::CouponClaimed { coupon, batch, valid_until };
            fold_encoded(hash, sequence, &claimed)
        }
        // Every other refusal but two is a tag and a one-byte code.
        Outcome::Rejected(
            rejection @ (Rejection::InvalidState { .. } | Rejection::WrongAmount { .. }),
        ) => fold_general(hash, sequence, &Outcome::Rejected(rejection)),
        Outcome::Rejected(rejection) => {
            let mut words = Words::new();
            words.u64(sequence.0);
            codec::write_fieldless_rejected(&mut words, rejection);
            words.xxh3_64(hash)
        }
        _ => fold_general(hash, sequence, outcome),
    }
}

/// The general copy, kept out of line so that the processor's hot path stays small.
#[inline(never)]
fn fold_general(hash: u64, sequence: Sequence, outcome: &Outcome) -> u64 {
    fold_encoded(hash, sequence, outcome)
}

#[inline(always)]
fn fold_encoded(hash: u64, sequence: Sequence, outcome: &Outcome) -> u64 {
    let mut words = Words::new();
    words.u64(sequence.0);
    codec::write_outcome(&mut words, outcome);
    words.xxh3_64(hash)
}

/// The running hash after folding in one event (an expiry): XXH3-64 of `canonical(event)`,
/// seeded with the running hash before it.
#[must_use]
pub fn fold_event(hash: u64, event: &Event) -> u64 {
    let mut words = Words::new();
    codec::write_event(&mut words, event);
    words.xxh3_64(hash)
}

/// A client command's idempotency fingerprint: XXH3-64 of `canonical(action)`. A retry with
/// the same request key and the same fingerprint gets the remembered outcome.
#[must_use]
#[inline]
pub fn fingerprint(action: &Action) -> u64 {
    // As in `fold_outcome`: reservations, with and without a coupon, payments, cancellations
    // and coupon claims get their own copies.
    match *action {
        Action::Reserve(Reserve { user, sku, qty, coupon: None }) => {
            fingerprint_encoded(&Action::Reserve(Reserve { user, sku, qty, coupon: None }))
        }
        Action::Reserve(Reserve { user, sku, qty, coupon: Some(coupon) }) => {
            let coupon = Some(coupon);
            fingerprint_encoded(&Action::Reserve(Reserve { user, sku, qty, coupon }))
        }
        Action::Pay { order, payment_ref, amount_cents } => {
            fingerprint_encoded(&Action::Pay { order, payment_ref, amount_cents })
        }
        Action::Cancel { order, user } => fingerprint_encoded(&Action::Cancel { order, user }),
        Action::ClaimCoupon { user, batch } => {
            fingerprint_encoded(&Action::ClaimCoupon { user, batch })
        }
        _ => fingerprint_general(action),
    }
}

/// The general copy, kept out of line so that the processor's hot path stays small.
#[inline(never)]
fn fingerprint_general(action: &Action) -> u64 {
    fingerprint_encoded(action)
}

#[inline(always)]
fn fingerprint_encoded(action: &Action) -> u64 {
    let mut words = Words::new();
    codec::write_action(&mut words, action);
    words.xxh3_64(0)
}

/// Words of [`Words`]: room for the longest input hashed per command.
const WORDS_MAX: usize = (SEQUENCE_LEN + OUTCOME_LEN_MAX).div_ceil(8);
const _: () = assert!(ACTION_LEN_MAX <= 8 * WORDS_MAX && EVENT_LEN_MAX <= 8 * WORDS_MAX);
// `Words::xxh3_64` implements the 9..=16 and 17..=96-byte paths of XXH3 only.
const _: () = assert!(8 * WORDS_MAX <= 96);

/// Canonical bytes accumulated as little-endian 64-bit words (byte `i` is bits `8 * (i % 8)`
/// of word `i / 8`), and XXH3-64 computed from those words.
///
/// Why not encode into a byte buffer and call `xxhash_rust`? That is what the definitions say,
/// and the tests check these two agree for every length and value. But on the hot path, XXH3
/// reads the freshly written bytes back as 8-byte words at offsets (`len - 16`, ...) that
/// straddle the fields just stored, which defeats store-to-load forwarding: measured on the
/// reservation path, about 13 ns per hash instead of about 2 ns. Here every field is shifted
/// into place in registers, and XXH3's unaligned reads are shifts of whole words.
pub(crate) struct Words {
    words: [u64; WORDS_MAX],
    len: usize,
}

impl Words {
    #[inline(always)]
    pub(crate) fn new() -> Words {
        Words { words: [0; WORDS_MAX], len: 0 }
    }

    /// Appends the low `len` bytes of `value`, whose higher bytes are zero.
    #[inline(always)]
    fn put(&mut self, value: u64, len: usize) {
        let (index, shift) = (self.len / 8, self.len % 8 * 8);
        if shift == 0 {
            self.words[index] = value;
        } else {
            // Bytes past `self.len` are zero, so the word can be or-ed into; bytes spilling
            // into the next word start it afresh.
            self.words[index] |= value << shift;
            if shift + 8 * len > 64 {
                self.words[index + 1] = value >> (64 - shift);
            }
        }
        self.len += len;
    }

    /// The 8 bytes starting at byte `offset`, little-endian.
    #[inline(always)]
    fn read64(&self, offset: usize) -> u64 {
        let (index, shift) = (offset / 8, offset % 8 * 8);
        if shift == 0 {
            self.words[index]
        } else {
            (self.words[index] >> shift) | (self.words[index + 1] << (64 - shift))
        }
    }

    /// XXH3-64 of the bytes held, with `seed` and the default secret: the short-input paths
    /// of the published algorithm (xxHash `doc/xxhash_spec.md`, "XXH3 ... 9-16 bytes" and
    /// "17-128 bytes"), for the 9 to 96 bytes held here.
    #[inline(always)]
    fn xxh3_64(&self, seed: u64) -> u64 {
        let len = self.len;
        assert!((9..=8 * WORDS_MAX).contains(&len), "{len} bytes to hash");
        if len <= 16 {
            let flip_lo = (SECRET[3] ^ SECRET[4]).wrapping_add(seed);
            let flip_hi = (SECRET[5] ^ SECRET[6]).wrapping_sub(seed);
            let lo = self.read64(0) ^ flip_lo;
            let hi = self.read64(len - 8) ^ flip_hi;
            let acc = (len as u64)
                .wrapping_add(lo.swap_bytes())
                .wrapping_add(hi)
                .wrapping_add(fold_multiply(lo, hi));
            return avalanche(acc);
        }
        let mut acc = (len as u64).wrapping_mul(PRIME64_1);
        if len > 64 {
            acc = acc.wrapping_add(self.mix16(32, 8, seed));
            acc = acc.wrapping_add(self.mix16(len - 48, 10, seed));
        }
        if len > 32 {
            acc = acc.wrapping_add(self.mix16(16, 4, seed));
            acc = acc.wrapping_add(self.mix16(len - 32, 6, seed));
        }
        acc = acc.wrapping_add(self.mix16(0, 0, seed));
        acc = acc.wrapping_add(self.mix16(len - 16, 2, seed));
        avalanche(acc)
    }

    /// XXH3's 16-byte mixing step: input bytes `offset..offset + 16` against secret words
    /// `secret` and `secret + 1`.
    #[inline(always)]
    fn mix16(&self, offset: usize, secret: usize, seed: u64) -> u64 {
        let lo = self.read64(offset) ^ SECRET[secret].wrapping_add(seed);
        let hi = self.read64(offset + 8) ^ SECRET[secret + 1].wrapping_sub(seed);
        fold_multiply(lo, hi)
    }
}

impl Sink for Words {
    #[inline(always)]
    fn u8(&mut self, value: u8) {
        self.put(u64::from(value), 1);
    }

    #[inline(always)]
    fn u32(&mut self, value: u32) {
        self.put(u64::from(value), 4);
    }

    #[inline(always)]
    fn u64(&mut self, value: u64) {
        self.put(value, 8);
    }

    #[inline(always)]
    fn bytes16(&mut self, value: &[u8; 16]) {
        let [low, high] = [&value[..8], &value[8..]].map(|half| {
            let mut word = [0; 8];
            word.copy_from_slice(half);
            u64::from_le_bytes(word)
        });
        self.put(low, 8);
        self.put(high, 8);
    }
}

/// XXH64's first prime, which XXH3 uses too.
const PRIME64_1: u64 = 0x9E37_79B1_85EB_CA87;

/// The first 128 bytes of XXH3's default secret (`kSecret` in xxHash), as little-endian words.
const SECRET: [u64; 16] = [
    0xBE4B_A423_396C_FEB8,
    0x1CAD_21F7_2C81_017C,
    0xDB97_9083_E96D_D4DE,
    0x1F67_B3B7_A4A4_4072,
    0x78E5_C0CC_4EE6_79CB,
    0x2172_FFCC_7DD0_5A82,
    0x8E24_43F7_7446_08B8,
    0x4C26_3A81_E690_35E0,
    0xCB00_C391_BB52_283C,
    0xA32E_531B_8B65_D088,
    0x4EF9_0DA2_9748_6471,
    0xD8AC_DEA9_46EF_1938,
    0x3F34_9CE3_3F76_FAA8,
    0x1D4F_0BC7_C7BB_DCF9,
    0x3159_B4CD_4BE0_518A,
    0x6473_78D9_C97E_9FC8,
];

/// The 128-bit product of `a` and `b`, its halves xor-ed. XXH3's mixing step, and the
/// engine's index tables' placement (`engine/table.rs`).
#[inline(always)]
pub(crate) fn fold_multiply(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

/// XXH3's final mix for short inputs.
#[inline(always)]
fn avalanche(mut h: u64) -> u64 {
    h ^= h >> 37;
    h = h.wrapping_mul(0x1656_6791_9E37_79F9);
    h ^ (h >> 32)
}

/// SplitMix64's finaliser: every input bit affects every output bit. Makes well-spread,
/// reproducible keys for tests and benchmarks.
#[must_use]
pub fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

    use super::*;
    use crate::arb;
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
        // Goal: the keys tests and benchmarks make with it do not drift between builds.
        assert_eq!(mix64(0), 0);
        assert_eq!(mix64(1), 0x5692_161D_100B_05E5);
    }

    fn words_of(bytes: &[u8]) -> Words {
        let mut words = Words::new();
        bytes.iter().for_each(|&byte| words.u8(byte));
        words
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4_000))]

        #[test]
        fn word_xxh3_equals_the_library_for_every_length_and_seed(
            bytes in proptest::collection::vec(any::<u8>(), 9..=8 * WORDS_MAX),
            seed in prop_oneof![Just(0_u64), any::<u64>()],
        ) {
            // Goal: the register implementation is XXH3-64, byte for byte, on every length
            // it accepts: 9-16 and 17-88, each boundary included.
            prop_assert_eq!(words_of(&bytes).xxh3_64(seed), xxh3_64_with_seed(&bytes, seed));
        }

        #[test]
        fn hashes_of_every_value_are_xxh3_of_its_encoded_bytes(
            action in arb::action(),
            outcome in arb::outcome(),
            event in arb::event(),
            hash: u64,
            sequence: u64,
        ) {
            // Goal: hashing through words gives XXH3-64 of exactly the bytes the byte encoder
            // writes, for every variant, so the definitions hold on every path.
            let mut bytes = [0_u8; ACTION_LEN_MAX];
            let len = codec::encode_action(&action, &mut bytes);
            prop_assert_eq!(fingerprint(&action), xxh3_64(&bytes[..len]));
            let mut bytes = [0_u8; SEQUENCE_LEN + OUTCOME_LEN_MAX];
            bytes[..8].copy_from_slice(&sequence.to_le_bytes());
            let len = 8 + codec::encode_outcome(&outcome, &mut bytes[8..]);
            prop_assert_eq!(
                fold_outcome(hash, Sequence(sequence), &outcome),
                xxh3_64_with_seed(&bytes[..len], hash)
            );
            let mut bytes = [0_u8; EVENT_LEN_MAX];
            let len = codec::encode_event(&event, &mut bytes);
            prop_assert_eq!(fold_event(hash, &event), xxh3_64_with_seed(&bytes[..len], hash));
        }
    }
}
