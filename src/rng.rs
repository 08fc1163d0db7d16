//! A small seeded random number generator shared by clones without a lock.
//!
//! SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators", 2014):
//! the state is a Weyl sequence advanced with one atomic `fetch_add`, and each output is the
//! state run through a 64-bit mixing function. Concurrent callers each get a distinct state, so
//! sharing one generator between all clones of a service costs one atomic add per draw and no
//! lock. With a fixed seed and one caller, the sequence is exactly reproducible, which the
//! statistical tests rely on.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::padded::Padded;

const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// A lock-free SplitMix64 generator.
#[derive(Debug)]
pub(crate) struct Rng {
    // Every pick writes it: padded so that the fields around it stay in their cores' caches.
    state: Padded<AtomicU64>,
}

impl Rng {
    /// A generator whose sequence is fixed by `seed`.
    pub(crate) fn seeded(seed: u64) -> Self {
        Self {
            state: Padded(AtomicU64::new(seed)),
        }
    }

    /// A generator seeded from the operating system's entropy.
    pub(crate) fn from_entropy() -> Self {
        Self::seeded(rand::random())
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&self) -> u64 {
        let mut z = self
            .state
            .fetch_add(GOLDEN_GAMMA, Ordering::Relaxed)
            .wrapping_add(GOLDEN_GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform integer in `0..n` (Lemire's multiply-shift; `n` must be non-zero).
    pub(crate) fn below(&self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// A uniform float in `[0, 1)`.
    pub(crate) fn unit(&self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_sequences_repeat() {
        let a = Rng::seeded(7);
        let b = Rng::seeded(7);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let rng = Rng::seeded(1);
        let mut seen = [0u32; 5];
        for _ in 0..10_000 {
            let i = rng.below(5);
            seen[i] += 1;
        }
        for count in seen {
            assert!((1_800..2_200).contains(&count), "{seen:?}");
        }
    }

    #[test]
    fn unit_is_in_half_open_interval() {
        let rng = Rng::seeded(3);
        for _ in 0..10_000 {
            let x = rng.unit();
            assert!((0.0..1.0).contains(&x));
        }
    }
}
