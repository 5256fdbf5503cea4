//! The parts of CPython's `random.Random` that lm-evaluation-harness uses to pick few-shot
//! examples, reproduced bit for bit: seeding an MT19937 with `init_by_array`, `getrandbits`,
//! `_randbelow`, `sample` and `shuffle` (`Lib/random.py`, `Modules/_randommodule.c`).

use mt19937::MT19937;
use rand_core::Rng;

/// A CPython-compatible `random.Random`.
pub struct PyRandom {
    mt: MT19937,
}

impl std::fmt::Debug for PyRandom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PyRandom").finish_non_exhaustive()
    }
}

/// Why a draw is impossible (Python raises `ValueError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SampleError {
    /// `sample(population, k)` with `k > len(population)`.
    #[error("sample larger than population: {k} from {n}")]
    LargerThanPopulation {
        /// Population size.
        n: usize,
        /// Sample size asked for.
        k: usize,
    },
}

impl PyRandom {
    /// `random.Random(seed)` for a non-negative integer seed: CPython splits `abs(seed)` into
    /// 32-bit words, least significant first, and calls `init_by_array` with them.
    pub fn new(seed: u64) -> PyRandom {
        let low = seed as u32;
        let high = (seed >> 32) as u32;
        let key: Vec<u32> = if high == 0 {
            vec![low]
        } else {
            vec![low, high]
        };
        PyRandom {
            mt: MT19937::new_with_slice_seed(&key),
        }
    }

    /// The next 32-bit output of the generator (`genrand_uint32`).
    fn next_u32(&mut self) -> u32 {
        self.mt.next_u32()
    }

    /// `getrandbits(k)` for `1 <= k <= 64`: whole 32-bit words from least to most significant,
    /// the last one shifted right to keep its top bits (`_random_Random_getrandbits_impl`).
    pub fn getrandbits(&mut self, k: u32) -> u64 {
        assert!(
            (1..=64).contains(&k),
            "getrandbits supports 1..=64 bits here, got {k}"
        );
        if k <= 32 {
            return u64::from(self.next_u32() >> (32 - k));
        }
        let low = u64::from(self.next_u32());
        let high = u64::from(self.next_u32() >> (64 - k));
        low | (high << 32)
    }

    /// `_randbelow_with_getrandbits(n)`: a uniform integer in `[0, n)` for `n > 0`, by drawing
    /// `n.bit_length()` bits and rejecting values `>= n`.
    pub fn randbelow(&mut self, n: u64) -> u64 {
        assert!(n > 0, "randbelow needs n > 0");
        let k = 64 - n.leading_zeros();
        loop {
            let r = self.getrandbits(k);
            if r < n {
                return r;
            }
        }
    }

    /// `sample(range(n), k)`: `k` distinct indices of a population of `n`, in selection order.
    ///
    /// CPython picks between two methods by comparing `n` with `setsize = 21 (+ 4**ceil(log(3k, 4))
    /// if k > 5)`: a pool swap for small populations, otherwise rejection of repeats.
    pub fn sample(&mut self, n: usize, k: usize) -> Result<Vec<usize>, SampleError> {
        if k > n {
            return Err(SampleError::LargerThanPopulation { n, k });
        }
        let mut setsize: f64 = 21.0;
        if k > 5 {
            // `_ceil(_log(k * 3, 4))`, in floating point as Python computes it. `3k` is never a
            // power of 4, so there is no rounding case to worry about.
            let exponent = ((k as f64 * 3.0).ln() / 4f64.ln()).ceil();
            setsize += 4f64.powf(exponent);
        }
        let mut result = Vec::with_capacity(k);
        if (n as f64) <= setsize {
            let mut pool: Vec<usize> = (0..n).collect();
            for i in 0..k {
                let j = self.randbelow((n - i) as u64) as usize;
                result.push(pool[j]);
                pool[j] = pool[n - i - 1];
            }
        } else {
            let mut selected = std::collections::HashSet::with_capacity(k);
            for _ in 0..k {
                let mut j = self.randbelow(n as u64) as usize;
                while selected.contains(&j) {
                    j = self.randbelow(n as u64) as usize;
                }
                selected.insert(j);
                result.push(j);
            }
        }
        Ok(result)
    }

    /// `shuffle(x)` in place: for `i` from `len-1` down to 1, swap `x[i]` with `x[randbelow(i+1)]`.
    pub fn shuffle<T>(&mut self, x: &mut [T]) {
        for i in (1..x.len()).rev() {
            let j = self.randbelow(i as u64 + 1) as usize;
            x.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors from lm-eval-tasks.md §2.4 (Python 3.11.7).

    #[test]
    fn getrandbits_matches_cpython() {
        let mut r = PyRandom::new(1234);
        let v: Vec<u64> = (0..3).map(|_| r.getrandbits(32)).collect();
        assert_eq!(v, vec![4150886329, 3342196574, 1892932127]);
    }

    #[test]
    fn getrandbits_short_and_long_words_use_the_top_bits() {
        let mut a = PyRandom::new(1234);
        let mut b = PyRandom::new(1234);
        // CPython 3.11.7: r = random.Random(1234); r.getrandbits(5), r.getrandbits(40) -> 30, 484378533726
        assert_eq!(a.getrandbits(5), 30);
        assert_eq!(a.getrandbits(40), 484378533726);
        // The same words, drawn whole.
        assert_eq!(b.getrandbits(32), 4150886329);
    }

    #[test]
    fn sample_matches_cpython_for_arc() {
        let mut r = PyRandom::new(1234);
        let first = r.sample(1119, 25).unwrap();
        assert_eq!(
            first,
            vec![
                902, 239, 15, 185, 71, 171, 201, 726, 484, 35, 63, 32, 708, 991, 949, 304, 186,
                374, 234, 29, 1030, 996, 511, 132, 1108
            ]
        );
        let second = r.sample(1119, 25).unwrap();
        assert_eq!(&second[..5], &[954, 140, 182, 1054, 94]);
    }

    #[test]
    fn sample_matches_cpython_for_hellaswag() {
        let mut r = PyRandom::new(1234);
        assert_eq!(
            r.sample(39905, 11).unwrap(),
            vec![28883, 7657, 490, 5940, 38156, 2288, 5500, 6450, 23241, 15519, 1142]
        );
    }

    #[test]
    fn small_populations_use_the_pool_method_and_stay_distinct() {
        // CPython 3.11.7: r = random.Random(3); r.sample(range(20), 7), r.sample(range(5), 5),
        // r.sample(range(100), 3)  (pool, pool, then set method: 100 > setsize 21)
        let mut r = PyRandom::new(3);
        assert_eq!(r.sample(20, 7).unwrap(), vec![7, 18, 17, 4, 11, 14, 9]);
        assert_eq!(r.sample(5, 5).unwrap(), vec![3, 0, 2, 4, 1]);
        assert_eq!(r.sample(100, 3).unwrap(), vec![33, 70, 29]);
        let mut r = PyRandom::new(7);
        for n in 1..40 {
            for k in 0..=n.min(12) {
                let s = r.sample(n, k).unwrap();
                let set: std::collections::HashSet<_> = s.iter().collect();
                assert_eq!(set.len(), k);
                assert!(s.iter().all(|&x| x < n));
            }
        }
        assert_eq!(
            r.sample(3, 4),
            Err(SampleError::LargerThanPopulation { n: 3, k: 4 })
        );
    }

    #[test]
    fn randbelow_rejects_out_of_range_draws() {
        // n = 5 takes 3 bits; a draw of 5, 6 or 7 is rejected and the next one used.
        let mut r = PyRandom::new(1234);
        let mut bits = PyRandom::new(1234);
        let expected = loop {
            let x = bits.getrandbits(3);
            if x < 5 {
                break x;
            }
        };
        assert_eq!(r.randbelow(5), expected);
    }

    #[test]
    fn shuffle_matches_cpython() {
        // CPython 3.11.7: r = random.Random(42); x = list(range(10)); r.shuffle(x)
        let mut r = PyRandom::new(42);
        let mut v: Vec<usize> = (0..10).collect();
        r.shuffle(&mut v);
        assert_eq!(v, vec![7, 3, 2, 8, 5, 6, 9, 4, 0, 1]);
        // The Leaderboard v1 order of ARC test docs, then the first shots from the shared RNG:
        // r = random.Random(42); x = list(range(1172)); r.shuffle(x); r.sample(range(1119), 25)
        let mut r = PyRandom::new(42);
        let mut v: Vec<usize> = (0..1172).collect();
        r.shuffle(&mut v);
        assert_eq!(
            &v[..10],
            &[595, 716, 511, 906, 148, 368, 930, 121, 1031, 280]
        );
        assert_eq!(
            r.sample(1119, 25).unwrap(),
            vec![
                888, 201, 205, 908, 340, 613, 59, 94, 664, 114, 600, 734, 767, 882, 298, 500, 1087,
                843, 368, 348, 358, 161, 783, 493, 1019
            ]
        );
    }

    #[test]
    fn seeds_wider_than_32_bits_use_two_key_words() {
        // CPython 3.11.7: random.Random(2**40 + 5).getrandbits(32)
        assert_eq!(PyRandom::new((1 << 40) + 5).getrandbits(32), 2166296868);
    }
}
