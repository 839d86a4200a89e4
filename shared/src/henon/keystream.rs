//! The Henon keystream: sixteen interleaved orbits of the classic Henon map
//! `x' = 1 − a·x² + y, y' = b·x` (a = 1.4, b = 0.3), in one of two
//! [`Variant`]s.
//!
//! - **Original** (formats 2 and 3): each iterate gives four bytes, bits 6 to
//!   37 (counted from the lowest) of the mantissa of `x`. The other bits are
//!   plainly biased (the top ones follow the attractor's uneven density, the
//!   lowest are often zero because `1 − a·x²` landing in a lower binade has
//!   fewer significant bits than its type holds), but the chosen slice is
//!   not clean either: over hundreds of megabytes the top byte of each
//!   32-bit word is high on average (z ≈ 6) and dieharder's lagged-sum test
//!   turns weak.
//! - **Whitened** (format 4): each iterate's whole bit pattern is added to a
//!   per-orbit Weyl counter (a key-drawn start, stepped by an odd constant)
//!   and folded through one 64×64→128-bit multiply (the high half XOR the
//!   low half of `z · (z ⊕ ε)`), which gives eight bytes per iterate. The
//!   counter alone would be the wyrand generator, which passes the usual
//!   batteries; the orbit makes each word depend on the chaotic state, and
//!   the multiply spreads whatever density the attractor has over all 64
//!   bits. SplitMix64's two-multiply finaliser was measured too: compilers
//!   turn its 64-bit multiplies into slow vector emulations on x86-64
//!   without AVX-512, while the widening multiply stays one instruction, so
//!   this fold costs half as much per byte.
//!
//! The orbits are independent, so the CPU runs sixteen of them at once
//! instead of waiting on one long dependency chain.
//!
//! Bit-exactness: every step is plain IEEE-754 binary64 multiplication,
//! subtraction and addition, evaluated as `((1 − (a·x)·x) + y)`; Rust never
//! contracts these into fused multiply-adds and no platform math function is
//! called, so every conforming platform produces the same bytes.

use super::{HenonKey, Variant};

/// Independent orbits iterated side by side.
pub(crate) const ORBITS: usize = 16;
/// The most keystream bytes one step of all orbits gives.
const MAX_BLOCK: usize = ORBITS * 8;

const A: f64 = 1.4;
const B: f64 = 0.3;
/// SplitMix64's increment, the golden ratio in 64 bits (odd).
const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;
/// The whitening counters' increment (odd) and the fold's XOR constant, as
/// in wyrand.
const DELTA: u64 = 0xa076_1d64_78bd_642f;
const EPSILON: u64 = 0xe703_7ed1_a0b4_28db;
/// Iterations discarded so that every orbit has settled on the attractor and
/// forgotten its start.
const BURN_IN: usize = 128;
/// The attractor stays within |x| < 1.3; anything past this has escaped.
const ESCAPE: f64 = 2.0;

/// A deterministic generator of keystream bytes from a [`HenonKey`].
#[derive(Clone)]
pub struct Keystream {
    variant: Variant,
    x: [f64; ORBITS],
    y: [f64; ORBITS],
    /// The whitening counters (Whitened only).
    counter: [u64; ORBITS],
    block: [u8; MAX_BLOCK],
    /// Next unread byte in `block`; the variant's block length or more
    /// means empty.
    used: usize,
}

impl Keystream {
    /// Seeds every orbit from the key and runs the burn-in.
    ///
    /// The 256 key bits are folded through SplitMix64 so that flipping any
    /// one bit moves every starting point; the starting points lie in
    /// [−0.1, 0.1]², inside the attractor's basin. The variants start from
    /// different constants, so one key gives unrelated streams in each.
    pub fn new(key: &HenonKey, variant: Variant) -> Self {
        let mut seed = match variant {
            Variant::Original => 0x6d65_6467_6174_6531_u64, // "medgate1"
            Variant::Whitened => 0x6d65_6467_6174_6534_u64, // "medgate4"
        };
        for word in key.0.chunks_exact(8) {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(word);
            seed = splitmix64(&mut (seed ^ u64::from_le_bytes(bytes)));
        }
        let mut state = seed;
        let mut x = [0.0; ORBITS];
        let mut y = [0.0; ORBITS];
        for i in 0..ORBITS {
            x[i] = unit(splitmix64(&mut state)) * 0.2 - 0.1;
            y[i] = unit(splitmix64(&mut state)) * 0.2 - 0.1;
        }
        let counter = match variant {
            Variant::Original => [0; ORBITS],
            Variant::Whitened => std::array::from_fn(|_| splitmix64(&mut state)),
        };
        let mut stream = Self {
            variant,
            x,
            y,
            counter,
            block: [0; MAX_BLOCK],
            used: MAX_BLOCK,
        };
        for _ in 0..BURN_IN {
            stream.step();
        }
        stream
    }

    /// Fills `out` with the next keystream bytes.
    pub fn fill(&mut self, out: &mut [u8]) {
        // One branch per call, not per block: each variant's loop is
        // compiled with its block length and emitter as constants.
        match self.variant {
            Variant::Original => self.fill_as::<{ ORBITS * 4 }>(out),
            Variant::Whitened => self.fill_as::<{ ORBITS * 8 }>(out),
        }
    }

    fn fill_as<const BLOCK: usize>(&mut self, out: &mut [u8]) {
        let mut out = out;
        if self.used < BLOCK {
            let take = out.len().min(BLOCK - self.used);
            out[..take].copy_from_slice(&self.block[self.used..self.used + take]);
            self.used += take;
            out = &mut out[take..];
        }
        let mut blocks = out.chunks_exact_mut(BLOCK);
        for chunk in &mut blocks {
            self.step();
            self.emit::<BLOCK>(chunk);
        }
        let rest = blocks.into_remainder();
        if !rest.is_empty() {
            self.step();
            let mut block = [0u8; MAX_BLOCK];
            self.emit::<BLOCK>(&mut block[..BLOCK]);
            self.block = block;
            rest.copy_from_slice(&self.block[..rest.len()]);
            self.used = rest.len();
        }
    }

    /// The next four bytes as a little-endian `u32`.
    pub(crate) fn next_u32(&mut self) -> u32 {
        let mut bytes = [0u8; 4];
        self.fill(&mut bytes);
        u32::from_le_bytes(bytes)
    }

    /// The next eight bytes as a little-endian `u64`.
    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        self.fill(&mut bytes);
        u64::from_le_bytes(bytes)
    }

    /// A draw in `0..n` (Lemire's multiply-shift; the bias, below n / 2³², is
    /// irrelevant for a permutation of at most 32 768 elements).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        ((u64::from(self.next_u32()) * n as u64) >> 32) as usize
    }

    /// Advances every orbit by one iterate.
    #[inline(always)]
    fn step(&mut self) {
        let mut escaped = false;
        for i in 0..ORBITS {
            let x = self.x[i];
            let next = 1.0 - A * x * x + self.y[i];
            self.y[i] = B * x;
            self.x[i] = next;
            escaped |= !in_bounds(next);
        }
        if escaped {
            self.recover();
        }
    }

    /// Puts an orbit that left the attractor (never seen in practice, but
    /// floating point gives no proof) back at a fixed point of its basin.
    #[cold]
    fn recover(&mut self) {
        for i in 0..ORBITS {
            if !in_bounds(self.x[i]) || !in_bounds(self.y[i]) {
                self.x[i] = 0.01 * (i as f64 + 1.0);
                self.y[i] = 0.05;
            }
        }
    }

    /// Writes one step's bytes: per orbit, mantissa bits 6..38 of `x`
    /// (Original), or `fold(counter + bits(x))` after stepping the counter
    /// (Whitened).
    #[inline(always)]
    fn emit<const BLOCK: usize>(&mut self, out: &mut [u8]) {
        if BLOCK == ORBITS * 4 {
            for (chunk, x) in out.chunks_exact_mut(4).zip(self.x.iter()) {
                chunk.copy_from_slice(&((x.to_bits() >> 6) as u32).to_le_bytes());
            }
        } else {
            for ((chunk, x), counter) in out
                .chunks_exact_mut(8)
                .zip(self.x.iter())
                .zip(self.counter.iter_mut())
            {
                *counter = counter.wrapping_add(DELTA);
                let word = fold(counter.wrapping_add(x.to_bits()));
                chunk.copy_from_slice(&word.to_le_bytes());
            }
        }
    }
}

/// Whether `v` is a finite value within the escape bound (false for NaN).
#[inline(always)]
fn in_bounds(v: f64) -> bool {
    v.abs() <= ESCAPE
}

/// SplitMix64 (Steele, Lea, Flood): advances `state` and returns a mixed word.
pub(crate) fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(GAMMA);
    mix64(*state)
}

/// The high half XOR the low half of the 128-bit product `z · (z ⊕ ε)`.
#[inline(always)]
fn fold(z: u64) -> u64 {
    let product = u128::from(z) * u128::from(z ^ EPSILON);
    (product >> 64) as u64 ^ product as u64
}

/// SplitMix64's output function, a bijection of 64-bit words.
#[inline(always)]
fn mix64(z: u64) -> u64 {
    let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The top 53 bits of `v` as a number in [0, 1), exactly.
fn unit(v: u64) -> f64 {
    (v >> 11) as f64 * (1.0 / 9_007_199_254_740_992.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VARIANTS: [Variant; 2] = [Variant::Original, Variant::Whitened];

    #[test]
    fn split_reads_equal_one_read() {
        let key = HenonKey::from_bytes([7; 32]);
        for variant in VARIANTS {
            let mut whole = vec![0u8; 1000];
            Keystream::new(&key, variant).fill(&mut whole);
            let mut parts = vec![0u8; 1000];
            let mut stream = Keystream::new(&key, variant);
            let mut at = 0;
            for len in [1, 3, 64, 65, 100, 0, 7, 500, 129, 131] {
                stream.fill(&mut parts[at..at + len]);
                at += len;
            }
            assert_eq!(at, 1000);
            assert_eq!(whole, parts, "{variant:?}");
        }
    }

    #[test]
    fn the_variants_give_unrelated_streams() {
        let key = HenonKey::from_bytes([7; 32]);
        let mut streams = VARIANTS.map(|variant| {
            let mut bytes = vec![0u8; 4096];
            Keystream::new(&key, variant).fill(&mut bytes);
            bytes
        });
        let [original, whitened] = &mut streams;
        let equal = original
            .iter()
            .zip(whitened.iter())
            .filter(|(a, b)| a == b)
            .count();
        assert!(equal < 4096 / 64, "{equal} equal bytes");
    }

    #[test]
    fn orbits_stay_on_the_attractor() {
        let mut stream = Keystream::new(&HenonKey::from_bytes([1; 32]), Variant::Whitened);
        for _ in 0..100_000 {
            stream.step();
            assert!(stream.x.iter().all(|x| x.abs() < 1.3));
        }
    }

    #[test]
    fn recovery_puts_escaped_orbits_back() {
        let mut stream = Keystream::new(&HenonKey::from_bytes([1; 32]), Variant::Whitened);
        stream.x[3] = f64::NAN;
        stream.x[5] = 1e300;
        stream.step();
        assert!(stream.x.iter().all(|x| x.abs() <= ESCAPE));
    }

    #[test]
    fn bytes_look_uniform() {
        for variant in VARIANTS {
            let mut bytes = vec![0u8; 1 << 20];
            Keystream::new(&HenonKey::from_bytes([9; 32]), variant).fill(&mut bytes);
            let mut counts = [0u32; 256];
            for b in &bytes {
                counts[*b as usize] += 1;
            }
            // Chi-square with 255 degrees of freedom: mean 255, sd ~22.6.
            let expected = bytes.len() as f64 / 256.0;
            let chi2: f64 = counts
                .iter()
                .map(|&c| (c as f64 - expected).powi(2) / expected)
                .sum();
            assert!(chi2 < 360.0, "{variant:?}: chi-square {chi2}");
        }
    }
}
