//! `medgate-sim bench-cipher`: single-threaded throughput of the Henon cipher
//! (either variant, 8- or 16-bit images) beside ChaCha20-Poly1305 and
//! SHA-512 on the same core, in one run, and the cost of a whole seal and
//! open.
//!
//! Each figure is the median of several timed rounds, each round repeating
//! the operation until it has run for a minimum time, so that one noisy
//! moment on a shared machine does not decide the result. The Henon and
//! ChaCha20-Poly1305 rounds alternate, and their ratio is the median of the
//! per-round ratios: both sides of each ratio saw the same machine load.
//!
//! Every cipher is timed as the pipeline runs it, on buffers that exist
//! already: ChaCha20-Poly1305 seals in place, Henon encrypts into the
//! envelope's buffer ([`henon::encrypt_into`]) and decrypts the AEAD's
//! output in place ([`henon::decrypt_owned`], the copy it is handed made
//! outside the timing). Encryption into a new buffer is reported too: its
//! pages are faulted in and cleared by the kernel on first touch, a cost of
//! the allocation, not of the cipher (at 4096² 16-bit it is a quarter of
//! the time).

use std::hint::black_box;
use std::time::{Duration, Instant};

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce};
use medgate_shared::envelope;
use medgate_shared::header::{ImageMeta, Modality};
use medgate_shared::henon::{self, HenonKey, Variant};
use medgate_shared::identity::GatewayIdentity;
use medgate_shared::ids::MessageId;
use medgate_shared::kdf::SessionKey;
use medgate_shared::keys::{DEFAULT_RSA_BITS, ReceiverPrivateKey};
use medgate_shared::pixels::{PixelFormat, Pixels, PixelsError};
use serde::Serialize;
use sha2::{Digest, Sha512};

/// The figures `bench-cipher --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct CipherBench {
    /// Image side in pixels (N×N).
    pub size: u32,
    /// Bits per pixel, 8 or 16.
    pub depth: u8,
    /// The Henon variant measured: `whitened` (format 4, what gateways
    /// seal with) or `original` (formats 2 and 3).
    pub variant: &'static str,
    /// Henon encryption into a buffer that exists already (as the sealer
    /// writes into the envelope), MB/s of pixels.
    pub henon_encrypt_mbps: f64,
    /// Henon encryption into a new buffer ([`henon::encrypt`]), MB/s.
    pub henon_encrypt_new_buffer_mbps: f64,
    /// Henon decryption in a buffer it owns (an opener decrypts the AEAD's
    /// output in place), MB/s of pixels.
    pub henon_decrypt_mbps: f64,
    /// ChaCha20-Poly1305 encryption of the same bytes, MB/s.
    pub chacha20poly1305_mbps: f64,
    /// SHA-512 of the same bytes, MB/s.
    pub sha512_mbps: f64,
    /// Henon encryption speed over ChaCha20-Poly1305 speed: the median of
    /// per-round ratios, rounds interleaved.
    pub henon_to_chacha20poly1305: f64,
    /// The same for Henon decryption.
    pub henon_decrypt_to_chacha20poly1305: f64,
    /// One whole seal (header, tag, Henon, AEAD), µs; the session key is
    /// already wrapped.
    pub seal_us: f64,
    /// One whole open (parse, AEAD, Henon, tag) with a cached session key, µs.
    pub open_us: f64,
    /// One RSA-OAEP unwrap of a session key (once per session key), µs.
    pub rsa_unwrap_us: f64,
}

const ROUNDS: usize = 5;
const ROUND_TIME: Duration = Duration::from_millis(300);

/// Seconds per call of `op`, over one round.
fn round(op: &mut impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut calls = 0u32;
    while start.elapsed() < ROUND_TIME {
        op();
        calls += 1;
    }
    start.elapsed().as_secs_f64() / f64::from(calls)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Seconds per call of `op` over one round, each call handed a fresh
/// input made by `setup` outside the timing.
fn round_with_setup<I>(setup: &mut impl FnMut() -> I, op: &mut impl FnMut(I)) -> f64 {
    let start = Instant::now();
    let mut timed = Duration::ZERO;
    let mut calls = 0u32;
    while start.elapsed() < ROUND_TIME {
        let input = setup();
        let call = Instant::now();
        op(input);
        timed += call.elapsed();
        calls += 1;
    }
    timed.as_secs_f64() / f64::from(calls)
}

/// Median seconds per call of `op`.
fn time_per_call(mut op: impl FnMut()) -> f64 {
    op(); // warm caches and lazy initialisation
    median((0..ROUNDS).map(|_| round(&mut op)).collect())
}

/// Median seconds per call of `a` and of `b`, and the median of the
/// per-round ratios `b / a`, with the rounds of the two interleaved.
fn time_pair(mut a: impl FnMut(), mut b: impl FnMut()) -> (f64, f64, f64) {
    a();
    b();
    let rounds: Vec<(f64, f64)> = (0..ROUNDS)
        .map(|_| (round(&mut a), round(&mut b)))
        .collect();
    let ratio = median(rounds.iter().map(|(ta, tb)| tb / ta).collect());
    (
        median(rounds.iter().map(|r| r.0).collect()),
        median(rounds.iter().map(|r| r.1).collect()),
        ratio,
    )
}

/// A test image with smooth structure and some texture.
///
/// # Errors
/// If `size` is outside the pixel limits.
pub fn synthetic_image(size: u32) -> Result<Pixels, PixelsError> {
    synthetic_image_of(size, PixelFormat::Gray8)
}

/// [`synthetic_image`] in either pixel format (16-bit: the same picture
/// scaled to 12 significant bits, as detectors deliver, plus low-bit
/// texture).
///
/// # Errors
/// If `size` is outside the pixel limits.
pub fn synthetic_image_of(size: u32, format: PixelFormat) -> Result<Pixels, PixelsError> {
    let n = size as usize;
    let value = |i: usize| {
        let (x, y) = (i % n, i / n);
        ((x * 255 / n + y * 128 / n) as u8) ^ ((i as u8).wrapping_mul(13) & 7)
    };
    let data = match format {
        PixelFormat::Gray8 => (0..n * n).map(value).collect(),
        PixelFormat::Gray16 => (0..n * n)
            .flat_map(|i| ((u16::from(value(i)) << 4) | (i as u16 & 15)).to_le_bytes())
            .collect(),
    };
    Pixels::new(size, size, format, data)
}

/// Runs every measurement on an N×N image of `depth` bits (8 or 16) with
/// the Henon `variant`.
///
/// # Errors
/// If generating the RSA key pair or sealing fails.
pub fn run(size: u32, depth: u8, variant: Variant) -> anyhow::Result<CipherBench> {
    let format = if depth == 16 {
        PixelFormat::Gray16
    } else {
        PixelFormat::Gray8
    };
    let image = synthetic_image_of(size, format)?;
    let bytes = image.data().len() as f64;
    let mbps = |seconds: f64| bytes / seconds / 1e6;

    let key = HenonKey::from_bytes([0x42; 32]);
    let cipher = henon::encrypt(variant, &key, &image);
    let aead = ChaCha20Poly1305::new((&[7u8; 32]).into());
    let nonce = [9u8; 12];
    let mut buffer = image.data().to_vec();
    let mut chacha_round = || {
        let tag = aead.encrypt_in_place_detached(Nonce::from_slice(&nonce), b"", &mut buffer);
        black_box(tag.ok());
    };
    let mut envelope = vec![0u8; image.data().len()];
    let (henon_encrypt, chacha, ratio) = time_pair(
        || {
            henon::encrypt_into(variant, &key, black_box(&image), &mut envelope);
            black_box(&envelope);
        },
        &mut chacha_round,
    );
    let henon_encrypt_new_buffer = time_per_call(|| {
        black_box(henon::encrypt(variant, &key, black_box(&image)));
    });
    let (henon_decrypt, decrypt_ratio) = {
        let mut setup = || cipher.clone();
        let mut decrypt = |owned| {
            black_box(henon::decrypt_owned(variant, &key, owned));
        };
        decrypt(setup());
        let rounds: Vec<(f64, f64)> = (0..ROUNDS)
            .map(|_| {
                let henon = round_with_setup(&mut setup, &mut decrypt);
                (henon, round(&mut chacha_round) / henon)
            })
            .collect();
        (
            median(rounds.iter().map(|r| r.0).collect()),
            median(rounds.iter().map(|r| r.1).collect()),
        )
    };

    let sha = time_per_call(|| {
        black_box(Sha512::digest(black_box(image.data())));
    });

    let receiver = ReceiverPrivateKey::generate(DEFAULT_RSA_BITS)?;
    let session = SessionKey::random();
    let wrapped = receiver.public().wrap(&session)?;
    let meta = ImageMeta {
        message_id: MessageId::random(),
        site: "bench".parse()?,
        gateway: "bench".parse()?,
        device: "bench".parse()?,
        epoch: 1,
        sequence: 1,
        captured_at_ms: 0,
        modality: Modality::Dx,
        model_hint: None,
        anatomy: Default::default(),
    };
    let identity = GatewayIdentity::generate();
    let sealed = envelope::seal_with(&session, &wrapped, &identity, &meta, &image)?.bytes;
    let seal = time_per_call(|| {
        black_box(envelope::seal_with(&session, &wrapped, &identity, &meta, &image).ok());
    });
    let open = time_per_call(|| {
        let opened = envelope::parse(&sealed)
            .ok()
            .and_then(|env| envelope::open_with(&env, &session).ok());
        black_box(opened);
    });
    let unwrap = time_per_call(|| {
        black_box(receiver.unwrap_key(&wrapped.bytes).ok());
    });

    Ok(CipherBench {
        size,
        depth: if format == PixelFormat::Gray16 { 16 } else { 8 },
        variant: match variant {
            Variant::Original => "original",
            Variant::Whitened => "whitened",
        },
        henon_encrypt_mbps: mbps(henon_encrypt),
        henon_encrypt_new_buffer_mbps: mbps(henon_encrypt_new_buffer),
        henon_decrypt_mbps: mbps(henon_decrypt),
        chacha20poly1305_mbps: mbps(chacha),
        sha512_mbps: mbps(sha),
        henon_to_chacha20poly1305: ratio,
        henon_decrypt_to_chacha20poly1305: decrypt_ratio,
        seal_us: seal * 1e6,
        open_us: open * 1e6,
        rsa_unwrap_us: unwrap * 1e6,
    })
}

/// The figures as a table.
pub fn render_text(b: &CipherBench) -> String {
    format!(
        "cipher benchmark, {s}x{s} {d}-bit image, {v} Henon variant, one thread\n\
         henon encrypt         {:>10.1} MB/s (into a new buffer {:.1} MB/s)\n\
         henon decrypt         {:>10.1} MB/s\n\
         chacha20-poly1305     {:>10.1} MB/s\n\
         sha-512               {:>10.1} MB/s\n\
         henon / chacha        {:>10.2} x encrypt, {:.2} x decrypt\n\
         seal (whole)          {:>10.1} us\n\
         open (cached key)     {:>10.1} us\n\
         rsa unwrap (per key)  {:>10.1} us\n",
        b.henon_encrypt_mbps,
        b.henon_encrypt_new_buffer_mbps,
        b.henon_decrypt_mbps,
        b.chacha20poly1305_mbps,
        b.sha512_mbps,
        b.henon_to_chacha20poly1305,
        b.henon_decrypt_to_chacha20poly1305,
        b.seal_us,
        b.open_us,
        b.rsa_unwrap_us,
        s = b.size,
        d = b.depth,
        v = b.variant,
    )
}
