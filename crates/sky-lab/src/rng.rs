//! The lab's one seeded PRNG, for the simulators and the load generator:
//! SplitMix64 (Steele, Lea and
//! Flood, 2014), with named streams so that one random choice never shifts
//! another.
//!
//! Not for keys or anything an attacker may predict: it only makes
//! simulations reproducible. A stream is a pure function of the seed and
//! its labels, so a simulation can redraw, say, user 17's sessions in every
//! mode it compares and get the same sessions each time.

/// The SplitMix64 increment (the golden ratio, as 64-bit fixed point).
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's output function: a bijective 64-bit mixer.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A SplitMix64 generator.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// The stream named by `labels` under `seed`. Different label lists give
    /// independent-looking streams; the same list gives the same stream.
    pub fn stream(seed: u64, labels: &[u64]) -> Rng {
        let mut state = mix(seed.wrapping_add(GOLDEN));
        for &label in labels {
            state = mix(state ^ mix(label.wrapping_add(GOLDEN)));
        }
        Rng { state }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix(self.state)
    }

    /// Uniform in `[0, 1)`, with 53 random bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[0, n)`; 0 when `n` is 0. (Lemire's multiply-shift; its
    /// bias, below n / 2^64, is far under anything a simulation resolves.)
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Exponentially distributed with the given mean.
    pub fn exp(&mut self, mean: f64) -> f64 {
        // 1 - unit() is in (0, 1]: the logarithm is finite.
        -mean * (1.0 - self.unit()).ln()
    }

    /// Uniform in `[low, high)` (whole units; `low` when the range is empty).
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high.saturating_sub(low))
    }
}

#[cfg(test)]
#[path = "tests/rng.rs"]
mod tests;
