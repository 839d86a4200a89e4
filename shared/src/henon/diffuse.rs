//! The diffusion stage: a forward and a backward chaining pass over the
//! permuted bytes, in 64-bit words, so that every output byte depends on
//! every input byte and on the key.
//!
//! Words are little-endian groups of 8 bytes; a last group of fewer bytes is
//! a partial word, zero-padded for arithmetic and written back truncated.
//! The words are split into a *lane region* (all full words but the last 8)
//! and a *final region* (the last 8 full words and the partial word).
//!
//! Forward (keystream `k`, states from the key):
//! - lane region: word `w` belongs to lane `w mod 8`;
//!   `c = p ⊕ k ⊕ s[lane]`, then `s[lane] = mix(s[lane] + p)`;
//! - then `h = fold`, and for each lane in order `h = mix(h + s[lane])`;
//! - final region, in order: `c = p ⊕ k ⊕ h`, then `h = mix(h + p)`.
//!
//! The last forward word therefore depends on every plaintext byte.
//!
//! Backward (no keystream, states from the key), walking from the end:
//! - final region, partial word first: `d = c ⊕ u`, then `u = mix(u + c)`;
//! - then `t[lane] = mix(back[lane] + u)` for each lane;
//! - lane region from its end, the j-th word from the end in lane `j mod 8`:
//!   `d = c ⊕ t[lane]`, then `t[lane] = mix(t[lane] + c)`.
//!
//! The backward chain starts from the last forward word, so one changed
//! plaintext byte changes every output word by an unpredictable amount.
//! Eight lanes keep eight independent dependency chains in flight; the two
//! sequential regions are what ties them together. All additions wrap.

use super::keystream::Keystream;

/// Independent chains in the lane region.
const LANES: usize = 8;
/// Full words in the final region.
const FINAL_WORDS: usize = 8;
/// Keystream is read in pieces of this many bytes (a multiple of 64).
const CHUNK: usize = 4096;

/// The key-derived starting states of both passes.
#[derive(Clone)]
pub(crate) struct DiffusionKeys {
    forward: [u64; LANES],
    fold: u64,
    backward_start: u64,
    backward: [u64; LANES],
}

impl DiffusionKeys {
    /// Reads 18 words from the keystream: 8 forward lane states, the fold
    /// start, the backward start and 8 backward lane seeds.
    pub(crate) fn new(stream: &mut Keystream) -> Self {
        let forward = std::array::from_fn(|_| stream.next_u64());
        let fold = stream.next_u64();
        let backward_start = stream.next_u64();
        let backward = std::array::from_fn(|_| stream.next_u64());
        Self {
            forward,
            fold,
            backward_start,
            backward,
        }
    }
}

/// One round of a 64-bit multiply–xorshift mixer: a bijection in which every
/// input bit reaches the high bits through the multiply and the low bits
/// through the shifts.
#[inline(always)]
fn mix(v: u64) -> u64 {
    let v = (v ^ (v >> 32)).wrapping_mul(0xd6e8_feb8_6659_fd93);
    v ^ (v >> 29)
}

/// Reads up to 8 bytes as a zero-padded little-endian word.
#[inline(always)]
fn load(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word[..bytes.len()].copy_from_slice(bytes);
    u64::from_le_bytes(word)
}

/// Writes the low `bytes.len()` bytes of `value`.
#[inline(always)]
fn store(bytes: &mut [u8], value: u64) {
    let len = bytes.len();
    bytes.copy_from_slice(&value.to_le_bytes()[..len]);
}

/// The mask that keeps the real bytes of a word of `len` bytes.
#[inline(always)]
fn mask(len: usize) -> u64 {
    if len >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * len)) - 1
    }
}

/// One chaining step. `ENCRYPT` decides which side is the pass's plaintext,
/// the one the state absorbs: the input when encrypting, the output when
/// decrypting. Both sides of a partial word are masked, so padding never
/// reaches the state.
#[inline(always)]
fn step<const ENCRYPT: bool>(input: u64, k: u64, state: &mut u64, keep: u64) -> u64 {
    let output = (input ^ k ^ *state) & keep;
    let plain = if ENCRYPT { input } else { output };
    *state = mix(state.wrapping_add(plain));
    output
}

/// Splits `data` into the lane region and the final region.
fn regions(data: &mut [u8]) -> (&mut [u8], &mut [u8]) {
    let full = data.len() / 8;
    let lane_words = full.saturating_sub(FINAL_WORDS);
    data.split_at_mut(lane_words * 8)
}

/// The forward pass, encrypting; consumes exactly `data.len()` keystream bytes.
pub(crate) fn forward_encrypt(data: &mut [u8], keys: &DiffusionKeys, stream: &mut Keystream) {
    forward::<true>(data, keys, stream);
}

/// Undoes [`forward_encrypt`], consuming the same keystream bytes.
pub(crate) fn forward_decrypt(data: &mut [u8], keys: &DiffusionKeys, stream: &mut Keystream) {
    forward::<false>(data, keys, stream);
}

fn forward<const ENCRYPT: bool>(data: &mut [u8], keys: &DiffusionKeys, stream: &mut Keystream) {
    let (lanes, tail) = regions(data);
    let mut s = keys.forward;
    let mut ks = [0u8; CHUNK];
    for chunk in lanes.chunks_mut(CHUNK) {
        let ks = &mut ks[..chunk.len()];
        stream.fill(ks);
        // CHUNK is a multiple of 64, so every chunk starts at lane 0.
        let mut blocks = chunk.chunks_exact_mut(8 * LANES);
        let mut k_blocks = ks.chunks_exact(8 * LANES);
        for (block, k_block) in (&mut blocks).zip(&mut k_blocks) {
            for (lane, state) in s.iter_mut().enumerate() {
                let at = lane * 8..lane * 8 + 8;
                let k = load(&k_block[at.clone()]);
                let out = step::<ENCRYPT>(load(&block[at.clone()]), k, state, u64::MAX);
                store(&mut block[at], out);
            }
        }
        let words = blocks.into_remainder().chunks_exact_mut(8);
        let keys = k_blocks.remainder().chunks_exact(8);
        for ((word, k), state) in words.zip(keys).zip(s.iter_mut()) {
            let out = step::<ENCRYPT>(load(word), load(k), state, u64::MAX);
            store(word, out);
        }
    }

    let mut h = keys.fold;
    for state in s {
        h = mix(h.wrapping_add(state));
    }
    let mut k_tail = [0u8; 8 * (FINAL_WORDS + 1)];
    let k_tail = &mut k_tail[..tail.len()];
    stream.fill(k_tail);
    for (word, k) in tail.chunks_mut(8).zip(k_tail.chunks(8)) {
        let out = step::<ENCRYPT>(load(word), load(k), &mut h, mask(word.len()));
        store(word, out);
    }
}

/// The backward pass, encrypting.
pub(crate) fn backward_encrypt(data: &mut [u8], keys: &DiffusionKeys) {
    backward::<true>(data, keys);
}

/// Undoes [`backward_encrypt`].
pub(crate) fn backward_decrypt(data: &mut [u8], keys: &DiffusionKeys) {
    backward::<false>(data, keys);
}

fn backward<const ENCRYPT: bool>(data: &mut [u8], keys: &DiffusionKeys) {
    let (lanes, tail) = regions(data);
    let mut u = keys.backward_start;
    for word in tail.chunks_mut(8).rev() {
        let out = step::<ENCRYPT>(load(word), 0, &mut u, mask(word.len()));
        store(word, out);
    }

    let mut t = keys.backward;
    for state in &mut t {
        *state = mix(state.wrapping_add(u));
    }
    // Blocks of 8 words from the end: the word at position `i` of a block is
    // the (7 − i)-th from the block's end, so it belongs to lane 7 − i.
    let mut blocks = lanes.rchunks_exact_mut(8 * LANES);
    for block in &mut blocks {
        for (i, state) in t.iter_mut().rev().enumerate() {
            let at = i * 8..i * 8 + 8;
            let out = step::<ENCRYPT>(load(&block[at.clone()]), 0, state, u64::MAX);
            store(&mut block[at], out);
        }
    }
    let words = blocks.into_remainder().chunks_exact_mut(8).rev();
    for (word, state) in words.zip(t.iter_mut()) {
        let out = step::<ENCRYPT>(load(word), 0, state, u64::MAX);
        store(word, out);
    }
}
