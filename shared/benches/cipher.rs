//! Criterion benchmarks: Henon encryption and decryption (the whitened
//! variant images are sealed with, and the original one formats 2 and 3
//! used) beside ChaCha20-Poly1305 at 512², 2048² and 4096², 8- and 16-bit
//! (group `henon/SIDE/DEPTH`); the keystream alone (group `keystream`); the seal and open of a 512×512 8-bit image; origin
//! and answer authentication per image. `cargo bench -p medgate-shared`; one
//! size: `cargo bench -p medgate-shared -- henon/4096`. The one-run ratio the
//! project quotes comes from `medgate-sim bench-cipher`, which measures
//! everything in one process; these give confidence intervals per operation.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)] // benchmark harness

use std::hint::black_box;

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use medgate_shared::answer::{AnswerFields, Outcome};
use medgate_shared::envelope;
use medgate_shared::header::{ImageMeta, Modality};
use medgate_shared::henon::{self, HenonKey, Keystream, Variant};
use medgate_shared::identity::GatewayIdentity;
use medgate_shared::ids::MessageId;
use medgate_shared::kdf::SessionKey;
use medgate_shared::keys::WrappedKey;
use medgate_shared::pixels::{PixelFormat, Pixels};
use sha2::{Digest, Sha512};

const SIDE: u32 = 512;

/// A smooth gradient, like an X-ray's neighbouring pixels.
fn image(side: u32, format: PixelFormat) -> Pixels {
    let n = side as usize;
    let data = match format {
        PixelFormat::Gray8 => (0..n * n).map(|i| ((i % n + i / n) / 4) as u8).collect(),
        PixelFormat::Gray16 => (0..n * n)
            .flat_map(|i| (((i % n + i / n) * 8) as u16).to_le_bytes())
            .collect(),
    };
    Pixels::new(side, side, format, data).unwrap()
}

/// Both Henon directions beside the AEAD over the same bytes. Encryption
/// is timed twice: into a new buffer ([`henon::encrypt`], whose pages are
/// faulted in and zeroed on first touch) and into one that exists already
/// ([`henon::encrypt_into`], as the sealer writes into the envelope).
/// Decryption is timed as an opener runs it, on a buffer it owns
/// ([`henon::decrypt_owned`]); the copy it is handed is made untimed.
fn directions(c: &mut Criterion) {
    let key = HenonKey::from_bytes([0x42; 32]);
    let aead = ChaCha20Poly1305::new((&[7u8; 32]).into());
    for side in [512, 2048, 4096] {
        for (format, depth) in [(PixelFormat::Gray8, 8), (PixelFormat::Gray16, 16)] {
            let image = image(side, format);
            let mut group = c.benchmark_group(format!("henon/{side}/{depth}"));
            group.throughput(Throughput::Bytes(image.data().len() as u64));
            if side > 512 {
                group.sample_size(20);
            }
            for (variant, name) in [(Variant::Whitened, ""), (Variant::Original, "original_")] {
                group.bench_function(format!("{name}encrypt"), |b| {
                    b.iter(|| henon::encrypt(variant, &key, black_box(&image)))
                });
                // As a sealer runs it: into the envelope's buffer, which
                // exists already (and which ChaCha20-Poly1305 then seals in
                // place, as timed below), so no page of it is new.
                group.bench_function(format!("{name}encrypt_into"), |b| {
                    let mut out = vec![0u8; image.data().len()];
                    b.iter(|| henon::encrypt_into(variant, &key, black_box(&image), &mut out))
                });
                group.bench_function(format!("{name}decrypt"), |b| {
                    // Made here, so that a run filtered to other benchmarks
                    // does not pay for it.
                    let cipher = henon::encrypt(variant, &key, &image);
                    b.iter_batched(
                        || cipher.clone(),
                        |cipher| henon::decrypt_owned(variant, &key, cipher),
                        BatchSize::LargeInput,
                    )
                });
            }
            let mut buffer = image.data().to_vec();
            group.bench_function("chacha20poly1305", |b| {
                b.iter(|| {
                    aead.encrypt_in_place_detached(Nonce::from_slice(&[9; 12]), b"", &mut buffer)
                        .unwrap()
                })
            });
            group.finish();
        }
    }
}

/// The keystream alone, both variants (group `keystream`), 1 MiB per call:
/// what whitening costs or saves per byte.
fn keystreams(c: &mut Criterion) {
    let key = HenonKey::from_bytes([0x42; 32]);
    let mut group = c.benchmark_group("keystream");
    let mut out = vec![0u8; 1 << 20];
    group.throughput(Throughput::Bytes(out.len() as u64));
    for (variant, name) in [
        (Variant::Whitened, "whitened"),
        (Variant::Original, "original"),
    ] {
        let mut stream = Keystream::new(&key, variant);
        group.bench_function(name, |b| b.iter(|| stream.fill(black_box(&mut out))));
    }
    group.finish();
}

fn ciphers(c: &mut Criterion) {
    let image = image(SIDE, PixelFormat::Gray8);
    let mut group = c.benchmark_group("512x512");
    group.throughput(Throughput::Bytes(image.data().len() as u64));
    group.bench_function("sha512", |b| {
        b.iter(|| Sha512::digest(black_box(image.data())))
    });

    // A whole seal and open; the wrapped key is opaque bytes here (no RSA).
    let session = SessionKey::from_bytes([1; 32]);
    let wrapped = WrappedKey {
        recipient: medgate_shared::ids::RecipientId([2; 16]),
        bytes: vec![3; 384],
    };
    let meta = ImageMeta {
        message_id: MessageId([4; 16]),
        site: "s".parse().unwrap(),
        gateway: "g".parse().unwrap(),
        device: "d".parse().unwrap(),
        epoch: 1,
        sequence: 1,
        captured_at_ms: 0,
        modality: Modality::Dx,
        model_hint: None,
        anatomy: Default::default(),
    };
    let identity = GatewayIdentity::from_secret(&[5; 32]);
    group.bench_function("seal", |b| {
        b.iter(|| {
            envelope::seal_with(&session, &wrapped, &identity, &meta, black_box(&image)).unwrap()
        })
    });
    let sealed = envelope::seal_with(&session, &wrapped, &identity, &meta, &image)
        .unwrap()
        .bytes;
    group.bench_function("open", |b| {
        b.iter(|| {
            let parsed = envelope::parse(black_box(&sealed)).unwrap();
            envelope::open_with(&parsed, &session).unwrap()
        })
    });
    group.finish();

    // Per image, independent of its size: the gateway signs header and
    // wrapped key, the receiver verifies; each answer is one HMAC each way.
    let mut group = c.benchmark_group("authentication");
    let parsed = envelope::parse(&sealed).unwrap();
    let public = identity.public();
    group.bench_function("origin_sign", |b| {
        b.iter(|| identity.sign(&envelope::origin_message(black_box(parsed.signed))))
    });
    group.bench_function("origin_verify", |b| {
        b.iter(|| assert!(envelope::verify_origin(black_box(&parsed), &public)))
    });
    let opened = envelope::open_with(&parsed, &session).unwrap();
    let answer = AnswerFields {
        message_id: meta.message_id,
        site: "s",
        gateway: "g",
        device: "d",
        sequence: 1,
        receiver: "receiver-1",
        outcome: Outcome::Classified {
            label: "pneumonia",
            probabilities: vec![("normal", 0.1), ("pneumonia", 0.9)],
            threshold: 0.5,
            model_version: "pneumonia-cnn-1",
            sha512: opened.sha512,
        },
    };
    let tag = opened.answer_key.mac(&answer);
    group.bench_function("answer_mac", |b| {
        b.iter(|| opened.answer_key.mac(black_box(&answer)))
    });
    group.bench_function("answer_verify", |b| {
        b.iter(|| assert!(opened.answer_key.verify(black_box(&answer), &tag)))
    });
    group.finish();
}

criterion_group!(benches, directions, keystreams, ciphers);
criterion_main!(benches);
