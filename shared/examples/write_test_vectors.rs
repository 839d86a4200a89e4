//! Writes `shared/tests/vectors/v2.json`, `v3.json` or `v4.json`, the
//! sealed-image test vectors of format version 2 (headers without anatomy),
//! 3 (headers with anatomy) or 4 (the whitened Henon variant, any header).
//!
//! Run once when the format changes on purpose:
//! `cargo run -p medgate-shared --example write_test_vectors -- v4`.
//! The RSA key and the gateway's Ed25519 key in the files are throwaway test
//! keys, published on purpose; the RSA-OAEP wrap is randomised, so the
//! wrapped key is recorded, not derived (Ed25519 signatures are
//! deterministic and are derived). An existing `v2.json` lends its RSA key
//! to every file, and an existing output file its wrapped keys, so that
//! rewriting a file changes only what the format change changes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a developer tool: fail loudly.

use std::path::Path;

use medgate_shared::answer::{AnswerFields, AnswerKey, Outcome};
use medgate_shared::envelope::{self, integrity_tag};
use medgate_shared::header::{Anatomy, ImageMeta, Modality};
use medgate_shared::henon;
use medgate_shared::identity::GatewayIdentity;
use medgate_shared::ids::MessageId;
use medgate_shared::kdf::{MessageKeys, SessionKey};
use medgate_shared::keys::ReceiverPrivateKey;
use medgate_shared::keys::WrappedKey;
use medgate_shared::pixels::{PixelFormat, Pixels};
use serde_json::{Value, json};

/// One vector: name, size, format, modality, model hint, body part, view.
type Case = (
    &'static str,
    u32,
    u32,
    PixelFormat,
    Modality,
    Option<&'static str>,
    Option<&'static str>,
    Option<&'static str>,
);

const V2_CASES: [Case; 4] = [
    (
        "gray8-13x7",
        13,
        7,
        PixelFormat::Gray8,
        Modality::Dx,
        None,
        None,
        None,
    ),
    (
        "gray8-40x30",
        40,
        30,
        PixelFormat::Gray8,
        Modality::Cr,
        Some("pneumonia-cnn"),
        None,
        None,
    ),
    (
        "gray16-9x5",
        9,
        5,
        PixelFormat::Gray16,
        Modality::Ct,
        None,
        None,
        None,
    ),
    (
        "gray8-1x1",
        1,
        1,
        PixelFormat::Gray8,
        Modality::Ot,
        None,
        None,
        None,
    ),
];

const V3_CASES: [Case; 3] = [
    (
        "v3-chest-pa-12x10",
        12,
        10,
        PixelFormat::Gray8,
        Modality::Dx,
        None,
        Some("CHEST"),
        Some("PA"),
    ),
    (
        "v3-shoulder-8x6",
        8,
        6,
        PixelFormat::Gray16,
        Modality::Mr,
        Some("chest-xray"),
        Some("SHOULDER"),
        None,
    ),
    (
        "v3-view-only-5x5",
        5,
        5,
        PixelFormat::Gray8,
        Modality::Cr,
        None,
        None,
        Some("LL"),
    ),
];

/// Format 4: runs of 1, 2, 4 and 8 bytes in the permutation (row byte
/// counts 13, 18, 12 and 40), with and without anatomy, both pixel formats.
const V4_CASES: [Case; 6] = [
    (
        "v4-gray8-13x7",
        13,
        7,
        PixelFormat::Gray8,
        Modality::Dx,
        None,
        None,
        None,
    ),
    (
        "v4-gray16-9x5",
        9,
        5,
        PixelFormat::Gray16,
        Modality::Ct,
        None,
        Some("HEAD"),
        None,
    ),
    (
        "v4-chest-pa-12x10",
        12,
        10,
        PixelFormat::Gray8,
        Modality::Dx,
        None,
        Some("CHEST"),
        Some("PA"),
    ),
    (
        "v4-gray8-40x30",
        40,
        30,
        PixelFormat::Gray8,
        Modality::Cr,
        Some("pneumonia-cnn"),
        None,
        None,
    ),
    (
        "v4-gray16-20x6",
        20,
        6,
        PixelFormat::Gray16,
        Modality::Mr,
        None,
        Some("SHOULDER"),
        Some("AP"),
    ),
    (
        "v4-gray8-1x1",
        1,
        1,
        PixelFormat::Gray8,
        Modality::Ot,
        None,
        None,
        None,
    ),
];

fn main() {
    let version = std::env::args().nth(1).unwrap_or_else(|| "v4".into());
    let (cases, number): (&[Case], u8) = match version.as_str() {
        "v2" => (&V2_CASES, 2),
        "v3" => (&V3_CASES, 3),
        "v4" => (&V4_CASES, 4),
        other => panic!("usage: write_test_vectors v2|v3|v4 (not {other:?})"),
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let out = dir.join(format!("{version}.json"));
    let read = |path: &Path| -> Option<Value> {
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
    };
    let key = match read(&dir.join("v2.json")) {
        Some(doc) => ReceiverPrivateKey::from_pem(
            doc["receiver_private_key_pem"].as_str().unwrap(),
            "v2.json",
        )
        .unwrap(),
        None => ReceiverPrivateKey::generate(3072).unwrap(),
    };
    let earlier = read(&out);
    let gateway_secret: [u8; 32] = std::array::from_fn(|j| 0x42 ^ (j as u8).wrapping_mul(29));
    let identity = GatewayIdentity::from_secret(&gateway_secret);
    let mut vectors = Vec::new();
    for (i, &(name, width, height, format, modality, hint, body_part, view)) in
        cases.iter().enumerate()
    {
        // Each version's cases draw other session keys and ids.
        let i = i as u8 + 8 * (number - 2);
        let session =
            SessionKey::from_bytes(std::array::from_fn(|j| (j as u8).wrapping_mul(7) ^ i));
        let recorded = earlier.as_ref().and_then(|doc| {
            let v = doc["vectors"]
                .as_array()?
                .iter()
                .find(|v| v["name"] == name)?;
            let bytes = hex::decode(v["wrapped_key"].as_str()?).ok()?;
            (key.unwrap_key(&bytes).ok()? == session).then_some(bytes)
        });
        let wrapped = match recorded {
            Some(bytes) => WrappedKey {
                recipient: key.public().id(),
                bytes,
            },
            None => key.public().wrap(&session).unwrap(),
        };
        let meta = ImageMeta {
            message_id: MessageId(std::array::from_fn(|j| {
                0xa0 ^ j as u8 ^ (i << 4) ^ (i >> 4)
            })),
            site: "st-example".parse().unwrap(),
            gateway: "gw-01".parse().unwrap(),
            device: format!("sensor-{i}").parse().unwrap(),
            epoch: 0x5eed_0000_0000_0000 | u64::from(i),
            sequence: 1000 + u64::from(i),
            captured_at_ms: 1_790_000_000_000 + u64::from(i),
            modality,
            model_hint: hint.map(|h| h.parse().unwrap()),
            anatomy: Anatomy {
                body_part: body_part.map(|b| b.parse().unwrap()),
                view_position: view.map(|v| v.parse().unwrap()),
            },
        };
        let len = width as usize * height as usize * format.bytes_per_pixel();
        let data = (0..len)
            .map(|k| (k as u8).wrapping_mul(37).wrapping_add(11))
            .collect();
        let pixels = Pixels::new(width, height, format, data).unwrap();
        let keys = MessageKeys::derive(&session, &meta.message_id);
        let sealed = envelope::seal_as(number, &session, &wrapped, &identity, &meta, &pixels)
            .unwrap()
            .bytes;
        let parsed = envelope::parse(&sealed).unwrap();
        let answer_key = AnswerKey::derive(&session, &meta.message_id);
        let sha512 = integrity_tag(parsed.canonical_header, pixels.data());
        let answer = AnswerFields {
            message_id: meta.message_id,
            site: meta.site.as_str(),
            gateway: meta.gateway.as_str(),
            device: meta.device.as_str(),
            sequence: meta.sequence,
            receiver: "receiver-1",
            outcome: Outcome::Classified {
                label: "pneumonia",
                probabilities: vec![("normal", 0.125), ("pneumonia", 0.875)],
                threshold: 0.5,
                model_version: "pneumonia-cnn-1",
                sha512,
            },
        };
        let refusal = AnswerFields {
            outcome: Outcome::Refused { reason: "replay" },
            ..answer.clone()
        };
        let not_classified = AnswerFields {
            outcome: Outcome::NotClassified {
                reason: "out_of_distribution",
                detail: "unlike the model's training images",
                score: Some(12.5),
                model_version: "pneumonia-cnn-1",
                sha512,
            },
            ..answer.clone()
        };
        let header_len = u16::from_le_bytes([sealed[5], sealed[6]]) as usize;
        vectors.push(json!({
            "name": name,
            "session_key": hex::encode(session.as_bytes()),
            "wrapped_key": hex::encode(&wrapped.bytes),
            "key_id": wrapped.key_id().to_string(),
            "recipient": wrapped.recipient.to_string(),
            "message_id": meta.message_id.to_string(),
            "site": meta.site.as_str(),
            "gateway": meta.gateway.as_str(),
            "device": meta.device.as_str(),
            "epoch": meta.epoch,
            "sequence": meta.sequence,
            "captured_at_ms": meta.captured_at_ms,
            "modality": modality.code(),
            "model_hint": hint,
            "body_part": body_part,
            "view_position": view,
            "width": width,
            "height": height,
            "pixel_format": format!("{format:?}"),
            "pixels": hex::encode(pixels.data()),
            "aead_key": hex::encode(keys.aead_key),
            "aead_nonce": hex::encode(keys.nonce),
            "henon_key": hex::encode(keys.henon.as_bytes()),
            "henon_ciphertext": hex::encode(henon::encrypt(envelope::henon_variant(number), &keys.henon, &pixels).data()),
            "header": hex::encode(&sealed[7..7 + header_len]),
            "sha512": hex::encode(sha512),
            "signer": parsed.header.signer.to_string(),
            "signature": hex::encode(parsed.signature),
            "sealed": hex::encode(&sealed),
            "answer_key": hex::encode(answer_key.as_bytes()),
            "result_mac_input": hex::encode(answer.encode()),
            "result_mac": hex::encode(answer_key.mac(&answer)),
            "refusal_mac_input": hex::encode(refusal.encode()),
            "refusal_mac": hex::encode(answer_key.mac(&refusal)),
            "not_classified_mac_input": hex::encode(not_classified.encode()),
            "not_classified_mac": hex::encode(answer_key.mac(&not_classified)),
        }));
    }
    let doc = json!({
        "about": format!("medgate sealed-image format {version} test vectors; see shared/FORMAT.md. \
                  The private keys below are published TEST keys: never use them for real data. \
                  result_mac/refusal_mac authenticate a result (label pneumonia, probabilities \
                  normal 0.125 / pneumonia 0.875, threshold 0.5, model pneumonia-cnn-1, \
                  receiver receiver-1), a refusal (reason replay) and a not-classified answer \
                  (reason out_of_distribution, detail \"unlike the model's training images\", \
                  score 12.5, model pneumonia-cnn-1) of each image."),
        "gateway_secret_key": hex::encode(gateway_secret),
        "gateway_public_key": identity.public().to_string(),
        "receiver_private_key_pem": key.to_pem().unwrap().as_str(),
        "receiver_public_key_pem": key.public().to_pem().unwrap(),
        "vectors": vectors,
    });
    std::fs::write(&out, serde_json::to_string_pretty(&doc).unwrap() + "\n").unwrap();
    println!("wrote {}", out.display());
}
