//! The one seeded pseudo-random generator for tests, fuzzers, simulators and benchmark
//! workloads, so that any failure is reproduced from its seed (TigerBeetle's `stdx/prng.zig`).
//!
//! The stream comes from ChaCha8 (`rand_chacha`), not from code written here: the rand project
//! keeps its output the same on every platform and across releases, and changes it only with a
//! breaking version. The golden test below notices if an upgrade changes it anyway. On top of
//! the raw words this module adds only the few distributions tests need, each unbiased and
//! built from whole `u64` draws so that the number of draws per call is easy to reason about.
//!
//! The engine never uses it: the business-logic processor is a function of its commands.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// A deterministic pseudo-random generator: the same seed gives the same numbers on every
/// platform and build.
#[derive(Clone, Debug)]
pub struct Prng {
    inner: ChaCha8Rng,
}

impl Prng {
    /// A generator whose whole stream is fixed by `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Prng {
        Prng { inner: ChaCha8Rng::seed_from_u64(seed) }
    }

    /// An independent generator derived from this one (advances this one): for giving each
    /// component its own stream so adding draws in one does not shift another.
    #[must_use]
    pub fn fork(&mut self) -> Prng {
        // A full 256-bit key drawn from this stream: the child shares no state with the parent,
        // and the parent moves on by exactly one key's worth of words whatever the child does.
        Prng { inner: ChaCha8Rng::from_rng(&mut self.inner) }
    }

    /// The next 64 bits of the stream.
    pub fn next_u64(&mut self) -> u64 {
        self.inner.next_u64()
    }

    /// The next 32 bits of the stream.
    pub fn next_u32(&mut self) -> u32 {
        self.inner.next_u32()
    }

    /// Uniform in [0, n); panics if n == 0. Unbiased.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0): there is no number below zero to choose");
        // Lemire's multiply-shift: the high word of `draw * n` is the value. Draws whose low
        // word falls under 2^64 mod n would make some values more likely; they are redrawn.
        // The remainder is computed only when the low word is small enough to need it.
        let mut wide = u128::from(self.next_u64()) * u128::from(n);
        if (wide as u64) < n {
            let threshold = n.wrapping_neg() % n;
            while (wide as u64) < threshold {
                wide = u128::from(self.next_u64()) * u128::from(n);
            }
        }
        let value = (wide >> 64) as u64;
        assert!(value < n, "below({n}) gave {value}");
        value
    }

    /// Uniform in [lo, hi] inclusive; panics if lo > hi.
    pub fn range_inclusive(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi, "range_inclusive({lo}, {hi}): an empty range");
        // The full range has 2^64 values, one more than `below` can be asked for.
        let value = match (hi - lo).checked_add(1) {
            Some(count) => lo + self.below(count),
            None => self.next_u64(),
        };
        assert!(lo <= value && value <= hi, "range_inclusive({lo}, {hi}) gave {value}");
        value
    }

    /// True with probability numerator/denominator (denominator > 0, numerator <= denominator).
    pub fn chance(&mut self, numerator: u64, denominator: u64) -> bool {
        assert!(denominator > 0, "chance({numerator}, 0): a probability needs a denominator");
        assert!(numerator <= denominator, "chance({numerator}, {denominator}) is above one");
        // Draws even when the answer is certain, so the stream does not depend on the odds.
        self.below(denominator) < numerator
    }

    /// An index chosen with probability proportional to its weight (sum > 0).
    pub fn weighted(&mut self, weights: &[u64]) -> usize {
        let total = weights.iter().try_fold(0u64, |sum, &weight| sum.checked_add(weight));
        let total = total.expect("weighted: the weights' sum overflows u64");
        assert!(total > 0, "weighted: every weight is zero, so no index can be chosen");
        let mut point = self.below(total);
        // A zero weight never holds the point: the point must be below it to stop there.
        for (index, &weight) in weights.iter().enumerate() {
            if point < weight {
                return index;
            }
            point -= weight;
        }
        unreachable!("the point is below the sum of the weights")
    }

    /// A uniformly chosen element; panics on an empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        assert!(!items.is_empty(), "pick from an empty slice");
        &items[self.index(items.len())]
    }

    /// Puts `items` in a uniformly chosen order (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for last in (1..items.len()).rev() {
            let other = self.index(last + 1);
            items.swap(last, other);
        }
    }

    /// Overwrites `bytes` with pseudo-random bytes.
    pub fn fill(&mut self, bytes: &mut [u8]) {
        self.inner.fill_bytes(bytes);
    }

    /// Uniform in [0, len) as an index.
    fn index(&mut self, len: usize) -> usize {
        let index = self.below(len as u64);
        usize::try_from(index).expect("an index below a slice length fits usize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(prng: &mut Prng, count: usize) -> Vec<u64> {
        (0..count).map(|_| prng.next_u64()).collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_numbers_and_another_seed_others() {
        // Goal: a seed fixes the whole stream, through every kind of draw, and seeds differ.
        let draw = |seed: u64| {
            let mut prng = Prng::new(seed);
            let mut bytes = [0u8; 13];
            prng.fill(&mut bytes);
            let mut items: Vec<u32> = (0..20).collect();
            prng.shuffle(&mut items);
            let picked = *prng.pick(&items);
            let numbers = (prng.next_u32(), prng.below(1_000), prng.range_inclusive(7, 9));
            (bytes, items, picked, numbers, prng.weighted(&[1, 2, 3]), words(&mut prng, 8))
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
    }

    #[test]
    fn the_stream_of_seed_1_is_pinned() {
        // Goal: a dependency upgrade that changes the stream is noticed, since every recorded
        // failing seed would then replay something else. These values come from rand_chacha's
        // ChaCha8 seeded through rand_core's `seed_from_u64`, not from code in this module, so
        // the assertion checks the crates, not the test against itself. (When pinned they were
        // also reproduced by a separate from-scratch ChaCha8 with the same seed expansion.)
        let mut prng = Prng::new(1);
        let pinned = [
            7_424_550_030_962_593_201,
            1_482_817_706_323_250_795,
            11_004_592_982_271_133_285,
            4_045_824_405_258_374_466,
        ];
        assert_eq!(words(&mut prng, 4), pinned);
    }

    #[test]
    fn forks_are_deterministic_and_independent() {
        // Goal: a fork is fixed by its parent's seed, differs from the parent's own stream,
        // and how much the child draws never shifts what the parent draws next.
        let (mut a, mut b) = (Prng::new(9), Prng::new(9));
        let (mut child_a, mut child_b) = (a.fork(), b.fork());
        assert_eq!(words(&mut child_a, 16), words(&mut child_b, 16));
        let _ = words(&mut child_a, 1_000);
        assert_eq!(words(&mut a, 16), words(&mut b, 16), "the child's draws moved the parent");
        let mut parent = Prng::new(9);
        let mut child = parent.fork();
        let mut sibling = parent.fork();
        let child_words = words(&mut child, 16);
        assert_ne!(child_words, words(&mut parent, 16));
        assert_ne!(child_words, words(&mut sibling, 16));
    }

    #[test]
    fn below_stays_in_range_and_reaches_every_value_of_a_small_range() {
        // Goal: every draw is under the bound, and each value of a small range turns up.
        let mut prng = Prng::new(3);
        for n in 1..=12u64 {
            let mut seen = vec![false; n as usize];
            for _ in 0..2_000 {
                let value = prng.below(n);
                assert!(value < n, "below({n}) gave {value}");
                seen[value as usize] = true;
            }
            assert!(seen.iter().all(|&hit| hit), "below({n}) missed a value: {seen:?}");
        }
        for n in [u64::MAX, 1 << 63, (1 << 63) + 1] {
            assert!((0..1_000).all(|_| prng.below(n) < n));
        }
    }

    #[test]
    fn below_a_bound_that_modulo_would_skew_splits_evenly() {
        // Goal: for n = 3·2^62, `draw % n` would put half the values in the lowest third; the
        // rejection step keeps each third near a third.
        let mut prng = Prng::new(5);
        let n = 3u64 << 62;
        let mut thirds = [0u32; 3];
        for _ in 0..30_000 {
            thirds[(prng.below(n) >> 62) as usize] += 1;
        }
        assert!(thirds.iter().all(|&count| (9_000..11_000).contains(&count)), "{thirds:?}");
    }

    #[test]
    fn range_inclusive_reaches_both_ends_and_allows_the_full_range() {
        // Goal: both bounds are possible, a one-value range gives that value, and [0, MAX]
        // (one value more than `below` takes) works.
        let mut prng = Prng::new(4);
        let mut seen = [false; 4];
        for _ in 0..1_000 {
            seen[(prng.range_inclusive(3, 6) - 3) as usize] = true;
        }
        assert_eq!(seen, [true; 4]);
        assert_eq!(prng.range_inclusive(17, 17), 17);
        let full: Vec<u64> = (0..4).map(|_| prng.range_inclusive(0, u64::MAX)).collect();
        assert!(full.windows(2).any(|pair| pair[0] != pair[1]), "{full:?}");
        assert!((0..1_000).all(|_| prng.range_inclusive(u64::MAX - 1, u64::MAX) >= u64::MAX - 1));
    }

    #[test]
    fn weighted_never_returns_a_zero_weight_index() {
        // Goal: zero weights are never chosen, every positive weight is, roughly in proportion.
        let mut prng = Prng::new(6);
        let mut counts = [0u32; 5];
        for _ in 0..10_000 {
            counts[prng.weighted(&[0, 3, 0, 1, 0])] += 1;
        }
        assert_eq!((counts[0], counts[2], counts[4]), (0, 0, 0), "{counts:?}");
        assert!(counts[3] > 1_000 && counts[1] > 2 * counts[3], "{counts:?}");
        assert_eq!(prng.weighted(&[0, 0, 5]), 2);
    }

    #[test]
    fn chance_of_nothing_never_happens_and_of_everything_always_does() {
        // Goal: the certain odds are exact, and a half comes up both ways.
        let mut prng = Prng::new(8);
        for denominator in [1, 2, 7, u64::MAX] {
            assert!((0..500).all(|_| !prng.chance(0, denominator)));
            assert!((0..500).all(|_| prng.chance(denominator, denominator)));
        }
        let heads = (0..1_000).filter(|_| prng.chance(1, 2)).count();
        assert!((400..600).contains(&heads), "{heads}");
    }

    #[test]
    fn shuffle_permutes_and_pick_chooses_from_the_slice() {
        // Goal: a shuffle keeps every element and moves them; pick reaches every element.
        let mut prng = Prng::new(10);
        let mut items: Vec<u32> = (0..50).collect();
        prng.shuffle(&mut items);
        assert_ne!(items, (0..50).collect::<Vec<_>>());
        let mut sorted = items.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        let mut seen = [false; 5];
        for _ in 0..200 {
            seen[*prng.pick(&[0, 1, 2, 3, 4])] = true;
        }
        assert_eq!(seen, [true; 5]);
        prng.shuffle::<u8>(&mut []);
    }

    #[test]
    #[should_panic(expected = "below(0)")]
    fn below_zero_is_a_programmer_error() {
        // Goal: an empty range panics instead of returning a value outside it.
        let _ = Prng::new(1).below(0);
    }
}
