//! The simulation's only source of randomness: SplitMix64, seeded. Small, fast, and the same sequence on
//! every platform and Rust version, so a seed replays identically wherever it runs.

/// A seeded pseudo-random generator.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// The generator of `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed ^ 0x5851_f42d_4c95_7f2d }
    }

    /// An independent generator for one part of the simulation, so that drawing more numbers in one part
    /// does not shift the others.
    pub fn fork(&mut self, stream: u64) -> Rng {
        Rng::new(self.next_u64() ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        // Lemire's multiply-shift: unbiased enough for a simulator, and branch-free.
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A number in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high.saturating_sub(low) + 1)
    }

    /// True with probability `per_10k` / 10,000.
    pub fn chance(&mut self, per_10k: u32) -> bool {
        self.below(10_000) < u64::from(per_10k)
    }

    /// An index into `len` items (0 when there are none).
    pub fn index(&mut self, len: usize) -> usize {
        usize::try_from(self.below(len as u64)).unwrap_or(0)
    }

    /// A random item of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() { None } else { items.get(self.index(items.len())) }
    }

    /// An index drawn with the given weights (0 when they are all zero).
    pub fn weighted(&mut self, weights: &[u32]) -> usize {
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        let mut draw = self.below(total);
        for (i, weight) in weights.iter().enumerate() {
            if draw < u64::from(*weight) {
                return i;
            }
            draw -= u64::from(*weight);
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_sequence_and_draws_stay_in_range() {
        let (mut a, mut b) = (Rng::new(9), Rng::new(9));
        let first: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
        assert_eq!(first, (0..100).map(|_| b.next_u64()).collect::<Vec<_>>());
        assert_ne!(first, (0..100).map(|_| Rng::new(10).next_u64()).collect::<Vec<_>>());
        let mut rng = Rng::new(1);
        for _ in 0..1_000 {
            assert!(rng.below(7) < 7);
            assert!((3..=5).contains(&rng.between(3, 5)));
        }
        assert_eq!(rng.below(0), 0);
        assert_eq!(rng.weighted(&[0, 0, 5]), 2);
        let heads = (0..10_000).filter(|_| rng.chance(5_000)).count();
        assert!((4_500..5_500).contains(&heads), "{heads}");
    }
}
