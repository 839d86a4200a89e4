//! The committed test vectors pin the sealed-image format: key derivation,
//! the Henon cipher, the header encoding and the whole envelope must come
//! out byte for byte as recorded.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design.

mod common;

use common::{bytes, test_identity, test_key, text, trust, vector_documents, vectors};
use medgate_shared::answer::{AnswerFields, AnswerKey, Outcome};
use medgate_shared::envelope::{self, integrity_tag};
use medgate_shared::header::{Anatomy, ImageMeta, Modality};
use medgate_shared::henon::{self, HenonKey};
use medgate_shared::kdf::{MessageKeys, SessionKey};
use medgate_shared::keys::{ReceiverPublicKey, WrappedKey};
use medgate_shared::pixels::{PixelFormat, Pixels};
use medgate_shared::seal::Opener;
use serde_json::Value;

struct Case {
    version: u8,
    name: String,
    session: SessionKey,
    wrapped: WrappedKey,
    meta: ImageMeta,
    pixels: Pixels,
    v: Value,
}

fn cases() -> Vec<Case> {
    let key = test_key();
    let documents = vector_documents();
    documents
        .iter()
        .flat_map(|(version, doc)| {
            doc["vectors"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |v| (*version, v))
        })
        .map(|(version, v)| {
            let format = match text(v, "pixel_format") {
                "Gray8" => PixelFormat::Gray8,
                "Gray16" => PixelFormat::Gray16,
                other => panic!("unknown format {other}"),
            };
            let name = |field: &str| v[field].as_str().map(|n| n.parse().unwrap());
            Case {
                version,
                name: text(v, "name").to_owned(),
                session: SessionKey::from_bytes(bytes(v, "session_key").try_into().unwrap()),
                wrapped: WrappedKey {
                    recipient: key.public().id(),
                    bytes: bytes(v, "wrapped_key"),
                },
                meta: ImageMeta {
                    message_id: text(v, "message_id").parse().unwrap(),
                    site: text(v, "site").parse().unwrap(),
                    gateway: text(v, "gateway").parse().unwrap(),
                    device: text(v, "device").parse().unwrap(),
                    epoch: v["epoch"].as_u64().unwrap(),
                    sequence: v["sequence"].as_u64().unwrap(),
                    captured_at_ms: v["captured_at_ms"].as_u64().unwrap(),
                    modality: Modality::from_code(text(v, "modality")).unwrap(),
                    model_hint: name("model_hint"),
                    anatomy: Anatomy {
                        body_part: name("body_part"),
                        view_position: name("view_position"),
                    },
                },
                pixels: Pixels::new(
                    v["width"].as_u64().unwrap() as u32,
                    v["height"].as_u64().unwrap() as u32,
                    format,
                    bytes(v, "pixels"),
                )
                .unwrap(),
                v: v.clone(),
            }
        })
        .collect()
}

#[test]
fn there_are_vectors_for_both_pixel_formats() {
    let cases = cases();
    assert!(cases.len() >= 4);
    assert!(
        cases
            .iter()
            .any(|c| c.pixels.format() == PixelFormat::Gray16)
    );
}

#[test]
fn every_version_has_vectors_and_they_share_the_test_keys() {
    let documents = vector_documents();
    let cases = cases();
    for (version, doc) in &documents {
        assert!(cases.iter().any(|c| c.version == *version), "v{version}");
        for field in ["receiver_public_key_pem", "gateway_public_key"] {
            assert_eq!(doc[field], vectors()[field], "v{version} {field}");
        }
    }
    for c in &cases {
        if c.version < 4 {
            assert_eq!(c.meta.anatomy.is_unknown(), c.version == 2, "{}", c.name);
        }
        assert_eq!(bytes(&c.v, "sealed")[4], c.version, "{}", c.name);
    }
    // Version 4's vectors hold headers with and without anatomy.
    let v4 = cases.iter().filter(|c| c.version == 4);
    assert!(v4.clone().any(|c| c.meta.anatomy.is_unknown()));
    assert!(v4.clone().any(|c| !c.meta.anatomy.is_unknown()));
}

#[test]
fn key_ids_match_the_keys() {
    let key = test_key();
    let public = ReceiverPublicKey::from_pem(
        vectors()["receiver_public_key_pem"].as_str().unwrap(),
        "vectors",
    )
    .unwrap();
    assert_eq!(public.id(), key.public().id());
    for c in cases() {
        assert_eq!(
            c.wrapped.recipient.to_string(),
            text(&c.v, "recipient"),
            "{}",
            c.name
        );
        assert_eq!(
            c.wrapped.key_id().to_string(),
            text(&c.v, "key_id"),
            "{}",
            c.name
        );
        let unwrapped = key.unwrap_key(&c.wrapped.bytes).unwrap();
        assert_eq!(unwrapped, c.session, "{}", c.name);
    }
}

#[test]
fn hkdf_gives_the_recorded_message_keys() {
    for c in cases() {
        let keys = MessageKeys::derive(&c.session, &c.meta.message_id);
        assert_eq!(
            keys.aead_key.to_vec(),
            bytes(&c.v, "aead_key"),
            "{}",
            c.name
        );
        assert_eq!(keys.nonce.to_vec(), bytes(&c.v, "aead_nonce"), "{}", c.name);
        assert_eq!(
            keys.henon.as_bytes().to_vec(),
            bytes(&c.v, "henon_key"),
            "{}",
            c.name
        );
    }
}

#[test]
fn henon_cipher_gives_the_recorded_bytes_and_inverts() {
    for c in cases() {
        let key = HenonKey::from_bytes(bytes(&c.v, "henon_key").try_into().unwrap());
        let variant = envelope::henon_variant(c.version);
        let cipher = henon::encrypt(variant, &key, &c.pixels);
        assert_eq!(cipher.data(), bytes(&c.v, "henon_ciphertext"), "{}", c.name);
        assert_eq!(
            henon::decrypt(variant, &key, &cipher),
            c.pixels,
            "{}",
            c.name
        );
    }
}

#[test]
fn sealing_gives_the_recorded_envelope() {
    for c in cases() {
        let sealed = envelope::seal_as(
            c.version,
            &c.session,
            &c.wrapped,
            &test_identity(),
            &c.meta,
            &c.pixels,
        )
        .unwrap();
        assert_eq!(
            hex::encode(&sealed.bytes),
            text(&c.v, "sealed"),
            "{}",
            c.name
        );
        assert_eq!(sealed.sha512.to_vec(), bytes(&c.v, "sha512"), "{}", c.name);
        let parsed = envelope::parse(&sealed.bytes).unwrap();
        assert_eq!(parsed.signature.to_vec(), bytes(&c.v, "signature"));
        assert_eq!(parsed.header.signer.to_string(), text(&c.v, "signer"));
        assert!(envelope::verify_origin(&parsed, &test_identity().public()));
        assert_eq!(
            parsed.canonical_header[3..],
            bytes(&c.v, "header")[..],
            "{}",
            c.name
        );
        assert_eq!(
            integrity_tag(parsed.canonical_header, c.pixels.data()).to_vec(),
            bytes(&c.v, "sha512"),
            "{}",
            c.name
        );
    }
}

#[test]
fn answers_are_authenticated_as_recorded() {
    for c in cases() {
        let key = AnswerKey::derive(&c.session, &c.meta.message_id);
        assert_eq!(key.as_bytes().to_vec(), bytes(&c.v, "answer_key"));
        let sha512: [u8; 64] = bytes(&c.v, "sha512").try_into().unwrap();
        let result = AnswerFields {
            message_id: c.meta.message_id,
            site: c.meta.site.as_str(),
            gateway: c.meta.gateway.as_str(),
            device: c.meta.device.as_str(),
            sequence: c.meta.sequence,
            receiver: "receiver-1",
            outcome: Outcome::Classified {
                label: "pneumonia",
                probabilities: vec![("normal", 0.125), ("pneumonia", 0.875)],
                threshold: 0.5,
                model_version: "pneumonia-cnn-1",
                sha512,
            },
        };
        assert_eq!(
            result.encode(),
            bytes(&c.v, "result_mac_input"),
            "{}",
            c.name
        );
        assert_eq!(key.mac(&result).to_vec(), bytes(&c.v, "result_mac"));
        let refusal = AnswerFields {
            outcome: Outcome::Refused { reason: "replay" },
            ..result
        };
        assert_eq!(refusal.encode(), bytes(&c.v, "refusal_mac_input"));
        assert!(key.verify(&refusal, &bytes(&c.v, "refusal_mac")));
        let not_classified = AnswerFields {
            outcome: Outcome::NotClassified {
                reason: "out_of_distribution",
                detail: "unlike the model's training images",
                score: Some(12.5),
                model_version: "pneumonia-cnn-1",
                sha512,
            },
            ..refusal
        };
        assert_eq!(
            not_classified.encode(),
            bytes(&c.v, "not_classified_mac_input")
        );
        assert!(key.verify(&not_classified, &bytes(&c.v, "not_classified_mac")));
    }
}

#[test]
fn recorded_envelopes_open() {
    let opener = Opener::new(test_key(), 8);
    for c in cases() {
        let trusted = trust(c.meta.site.as_str(), c.meta.gateway.as_str());
        let opened = opener
            .open(&bytes(&c.v, "sealed"), trusted.as_slice())
            .unwrap();
        assert_eq!(opened.pixels, c.pixels, "{}", c.name);
        assert_eq!(opened.header.meta, c.meta, "{}", c.name);
        assert_eq!(opened.sha512.to_vec(), bytes(&c.v, "sha512"), "{}", c.name);
    }
}
