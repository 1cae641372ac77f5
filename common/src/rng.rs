//! Deterministic randomness derived from keys such as (seed, epoch, step, sample id), never from a
//! process's own generator, so results do not depend on which worker computed what.

/// SplitMix64's finaliser: a good 64-bit mixing function.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a hash of a string, for turning sample ids into keys.
pub fn hash_str(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix64(h)
}

/// Combines several keys into one seed; order matters.
pub fn derive(keys: &[u64]) -> u64 {
    keys.iter()
        .fold(0x6A09_E667_F3BC_C908, |acc, k| mix64(acc ^ mix64(*k)))
}

/// A small counter-based generator (SplitMix64): the same seed gives the same stream everywhere.
#[derive(Clone, Debug)]
pub struct KeyedRng {
    state: u64,
}

impl KeyedRng {
    /// A generator for the given derived seed.
    pub fn new(seed: u64) -> Self {
        KeyedRng { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.state)
    }

    /// Uniform in [0, 1) with 24 bits of precision.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in [0, 1) with 53 bits of precision.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller on two uniform draws), in f64.
    pub fn next_normal(&mut self) -> f64 {
        // 1 - u is in (0, 1], so the logarithm is finite.
        let u = 1.0 - self.next_f64();
        let v = self.next_f64();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// Uniform in [0, n) without modulo bias worth caring about for n < 2^32.
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_keys_matter() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut r = KeyedRng::new(derive(&[1, 2]));
                move |_| r.next_u64()
            })
            .collect();
        let mut r = KeyedRng::new(derive(&[1, 2]));
        assert_eq!(a, (0..4).map(|_| r.next_u64()).collect::<Vec<_>>());
        assert_ne!(derive(&[1, 2]), derive(&[2, 1]));
        assert_ne!(hash_str("a"), hash_str("b"));
        let mut v: Vec<usize> = (0..100).collect();
        KeyedRng::new(7).shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_ne!(v, sorted);
        let mut r = KeyedRng::new(3);
        let mean = (0..10_000).map(|_| r.next_f64()).sum::<f64>() / 10_000.0;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
    }

    #[test]
    fn normal_draws_have_zero_mean_and_unit_variance() {
        let mut r = KeyedRng::new(11);
        let v: Vec<f64> = (0..20_000).map(|_| r.next_normal()).collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.03, "{mean}");
        assert!((var - 1.0).abs() < 0.05, "{var}");
        assert!(v.iter().all(|x| x.is_finite()));
    }
}
