//! Sealing and opening: round trips, and every way a message can be wrong
//! is refused with the right reason, never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design.

mod common;

use std::time::{Duration, Instant};

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce, Tag};
use common::{bytes, test_identity, test_key, trust, vectors};
use medgate_shared::envelope::{self, AEAD_TAG_LEN, FormatError, OpenError, TAG_LEN};
use medgate_shared::header::{Anatomy, ImageMeta, Modality};
use medgate_shared::identity::GatewayIdentity;
use medgate_shared::identity::GatewayPublicKey;
use medgate_shared::ids::MessageId;
use medgate_shared::ids::Name;
use medgate_shared::kdf::{MessageKeys, SessionKey};
use medgate_shared::keys::key_id_of;
use medgate_shared::pixels::{PixelFormat, Pixels};
use medgate_shared::seal::{self, Opener, RotationPolicy, Sealer};
use proptest::prelude::*;

fn meta(sequence: u64) -> ImageMeta {
    ImageMeta {
        message_id: MessageId::random(),
        site: "site".parse().unwrap(),
        gateway: "gw".parse().unwrap(),
        device: "dev".parse().unwrap(),
        epoch: 7,
        sequence,
        captured_at_ms: 1_700_000_000_000,
        modality: Modality::Dx,
        model_hint: None,
        anatomy: Default::default(),
    }
}

fn image(width: u32, height: u32, format: PixelFormat) -> Pixels {
    let len = width as usize * height as usize * format.bytes_per_pixel();
    Pixels::new(
        width,
        height,
        format,
        (0..len).map(|i| (i * 13) as u8).collect(),
    )
    .unwrap()
}

/// A recorded vector's sealed bytes and the session key that made them.
fn recorded() -> (Vec<u8>, SessionKey) {
    let v = &vectors()["vectors"][0];
    (
        bytes(v, "sealed"),
        SessionKey::from_bytes(bytes(v, "session_key").try_into().unwrap()),
    )
}

fn sealer() -> Sealer {
    Sealer::new(
        test_key().public().clone(),
        test_identity(),
        RotationPolicy::default(),
    )
}

/// The trust list for [`meta`]'s gateway.
fn trusted() -> Vec<(Name, Name, GatewayPublicKey)> {
    trust("site", "gw")
}

/// The trust list for the recorded vectors' gateway.
fn trusted_recorded() -> Vec<(Name, Name, GatewayPublicKey)> {
    trust("st-example", "gw-01")
}

/// Opens with the recorded vectors' trust list, keeping only the reason.
fn open_recorded(opener: &Opener, bytes: &[u8]) -> Result<envelope::Opened, OpenError> {
    opener
        .open(bytes, trusted_recorded().as_slice())
        .map_err(|r| r.error)
}

#[test]
fn sealer_and_opener_round_trip_both_formats() {
    let mut sealer = sealer();
    let opener = Opener::new(test_key(), 4);
    for format in [PixelFormat::Gray8, PixelFormat::Gray16] {
        let px = image(64, 48, format);
        let m = meta(1);
        let opened = opener
            .open(&sealer.seal(&m, &px).unwrap().bytes, trusted().as_slice())
            .unwrap();
        assert_eq!(opened.pixels, px);
        assert_eq!(opened.header.meta, m);
    }
    // One session key, unwrapped once.
    assert_eq!(opener.cached_keys(), 1);
}

#[test]
fn gateways_seal_version_4_and_older_versions_only_for_headers_they_carry() {
    let session = SessionKey::from_bytes([3; 32]);
    let wrapped = test_key().public().wrap(&session).unwrap();
    let px = image(20, 10, PixelFormat::Gray8);
    let plain = meta(1);
    let chest = ImageMeta {
        anatomy: Anatomy {
            body_part: Some("CHEST".parse().unwrap()),
            view_position: None,
        },
        ..meta(2)
    };
    let opener = Opener::new(test_key(), 4);
    for m in [&plain, &chest] {
        let sealed = envelope::seal_with(&session, &wrapped, &test_identity(), m, &px).unwrap();
        assert_eq!(sealed.bytes[4], envelope::VERSION);
        assert_eq!(envelope::VERSION, 4);
        let opened = open_trusted(&opener, &sealed.bytes);
        assert_eq!((opened.pixels, opened.header.meta), (px.clone(), m.clone()));
    }
    // What a gateway before version 4 wrote still opens...
    for (version, m) in [(2, &plain), (3, &chest)] {
        let sealed =
            envelope::seal_as(version, &session, &wrapped, &test_identity(), m, &px).unwrap();
        assert_eq!(sealed.bytes[4], version);
        assert_eq!(open_trusted(&opener, &sealed.bytes).pixels, px);
    }
    // ...but version 2 has no place for anatomy, version 3 none for its
    // absence, and no other version is written.
    for (version, m) in [(2, &chest), (3, &plain), (1, &plain), (5, &plain)] {
        let refused = envelope::seal_as(version, &session, &wrapped, &test_identity(), m, &px);
        assert!(
            matches!(refused, Err(envelope::SealError::Version(v)) if v == version),
            "v{version}: {refused:?}"
        );
    }
}

/// Opens `bytes` sealed by the test identity for site/gw.
fn open_trusted(opener: &Opener, bytes: &[u8]) -> envelope::Opened {
    opener.open(bytes, trusted().as_slice()).unwrap()
}

#[test]
fn sealed_bytes_reveal_no_pixels() {
    // A constant image must not leave long constant runs in the sealed bytes.
    let px = Pixels::new(64, 64, PixelFormat::Gray8, vec![0x41; 4096]).unwrap();
    let sealed = sealer().seal(&meta(1), &px).unwrap().bytes;
    let runs = sealed
        .windows(8)
        .filter(|w| w.iter().all(|&b| b == 0x41))
        .count();
    assert_eq!(runs, 0);
}

#[test]
fn session_keys_rotate_by_count_and_age() {
    let policy = RotationPolicy {
        max_messages: 2,
        max_age: Duration::from_secs(60),
    };
    let mut sealer = Sealer::new(test_key().public().clone(), test_identity(), policy);
    let px = image(4, 4, PixelFormat::Gray8);
    let t0 = Instant::now();
    sealer.seal_at(&meta(1), &px, t0).unwrap();
    let first = sealer.current_key_id().unwrap();
    sealer.seal_at(&meta(2), &px, t0).unwrap();
    assert_eq!(sealer.current_key_id(), Some(first));
    sealer.seal_at(&meta(3), &px, t0).unwrap();
    let second = sealer.current_key_id().unwrap();
    assert_ne!(second, first, "rotates after max_messages");
    sealer
        .seal_at(&meta(4), &px, t0 + Duration::from_secs(61))
        .unwrap();
    assert_ne!(
        sealer.current_key_id().unwrap(),
        second,
        "rotates after max_age"
    );
}

#[test]
fn every_truncation_is_refused() {
    let (sealed, _) = recorded();
    let opener = Opener::new(test_key(), 4);
    for len in 0..sealed.len() {
        let err = open_recorded(&opener, &sealed[..len]).unwrap_err();
        assert!(matches!(err, OpenError::Malformed(_)), "len {len}: {err:?}");
    }
    let mut longer = sealed.clone();
    longer.push(0);
    assert!(matches!(
        open_recorded(&opener, &longer),
        Err(OpenError::Malformed(FormatError::BodyLength { .. }))
    ));
}

#[test]
fn every_flipped_byte_is_refused() {
    let (sealed, _) = recorded();
    let opener = Opener::new(test_key(), 4);
    for at in 0..sealed.len() {
        let mut bad = sealed.clone();
        bad[at] ^= 0x01;
        let err = open_recorded(&opener, &bad).unwrap_err();
        // Bytes of the body and the wrapped key are covered by crypto; the
        // rest by the format checks. Nothing is ever accepted.
        assert!(
            matches!(
                err,
                OpenError::Malformed(_)
                    | OpenError::Aead
                    | OpenError::UnknownRecipient(_)
                    | OpenError::UnknownGateway { .. }
                    | OpenError::BadSignature
            ),
            "byte {at}: {err:?}"
        );
    }
}

#[test]
fn rejections_have_their_own_reasons() {
    let (sealed, session) = recorded();
    let opener = Opener::new(test_key(), 4);
    let parsed = envelope::parse(&sealed).unwrap();
    let body_at = parsed.associated_data.len();

    // Body altered: AEAD.
    let mut bad = sealed.clone();
    bad[body_at + 3] ^= 0x80;
    assert_eq!(open_recorded(&opener, &bad).unwrap_err().reason(), "aead");

    // Magic, version.
    let mut bad = sealed.clone();
    bad[0] = b'X';
    assert_eq!(
        open_recorded(&opener, &bad).unwrap_err(),
        OpenError::Malformed(FormatError::BadMagic)
    );
    let mut bad = sealed.clone();
    bad[4] = 1;
    let old = open_recorded(&opener, &bad).unwrap_err();
    assert_eq!(
        old,
        OpenError::Malformed(FormatError::UnsupportedVersion(1))
    );
    assert!(
        old.to_string()
            .contains("version 1 carries no gateway signature"),
        "{old}"
    );

    // Signed by a key that is not enrolled, or enrolled for another
    // gateway: unknown gateway, before any RSA work.
    let stranger = GatewayIdentity::generate();
    let resealed = envelope::seal_with(
        &session,
        &medgate_shared::keys::WrappedKey {
            recipient: parsed.header.recipient,
            bytes: parsed.wrapped_key.to_vec(),
        },
        &stranger,
        &parsed.header.meta,
        &envelope::open_with(&parsed, &session).unwrap().pixels,
    )
    .unwrap()
    .bytes;
    assert_eq!(
        open_recorded(&opener, &resealed).unwrap_err().reason(),
        "unknown_gateway"
    );
    let other_site = trust("st-other", "gw-01");
    assert_eq!(
        opener
            .open(&sealed, other_site.as_slice())
            .unwrap_err()
            .error
            .reason(),
        "unknown_gateway"
    );

    // A signature that does not verify (one bit of it flipped).
    let signature_at = body_at - 64;
    let mut bad = sealed.clone();
    bad[signature_at + 5] ^= 0x10;
    assert_eq!(
        open_recorded(&opener, &bad).unwrap_err(),
        OpenError::BadSignature
    );

    // A wrapped key that is not ours, with a matching key id, signed by the
    // enrolled gateway: unknown key.
    let key_at = signature_at - parsed.wrapped_key.len();
    let mut bad = sealed.clone();
    bad[key_at..signature_at].fill(0x5a);
    let forged_id = key_id_of(&bad[key_at..signature_at]);
    let id_at = find(&bad[..key_at], parsed.header.key_id.as_bytes()).unwrap();
    bad[id_at..id_at + 16].copy_from_slice(forged_id.as_bytes());
    let signature = test_identity().sign(&envelope::origin_message(&bad[..signature_at]));
    bad[signature_at..body_at].copy_from_slice(&signature);
    assert_eq!(
        open_recorded(&opener, &bad).unwrap_err(),
        OpenError::UnknownKey(forged_id)
    );
    // The failed key id is remembered: the same junk again costs no RSA
    // (still refused, and the good key stays usable).
    assert_eq!(
        open_recorded(&opener, &bad).unwrap_err(),
        OpenError::UnknownKey(forged_id)
    );
    assert!(open_recorded(&opener, &sealed).is_ok());

    // Sealed for another receiver: unknown recipient.
    let mut bad = sealed.clone();
    let rid = parsed.header.recipient;
    let rid_at = find(&bad[..key_at], rid.as_bytes()).unwrap();
    bad[rid_at] ^= 1;
    let signature = test_identity().sign(&envelope::origin_message(&bad[..signature_at]));
    bad[signature_at..body_at].copy_from_slice(&signature);
    assert_eq!(
        open_recorded(&opener, &bad).unwrap_err().reason(),
        "unknown_recipient"
    );

    // Correct AEAD over a wrong SHA-512 tag (what a buggy or malicious
    // sealer holding the session key could produce): tag mismatch.
    let keys = MessageKeys::derive(&session, &parsed.header.meta.message_id);
    let aead = ChaCha20Poly1305::new((&keys.aead_key).into());
    let mut body = parsed.body[..parsed.body.len() - AEAD_TAG_LEN].to_vec();
    aead.decrypt_in_place_detached(
        Nonce::from_slice(&keys.nonce),
        parsed.associated_data,
        &mut body,
        Tag::from_slice(&parsed.body[parsed.body.len() - AEAD_TAG_LEN..]),
    )
    .unwrap();
    let tag_at = body.len() - TAG_LEN;
    body[tag_at] ^= 1;
    let tag = aead
        .encrypt_in_place_detached(
            Nonce::from_slice(&keys.nonce),
            parsed.associated_data,
            &mut body,
        )
        .unwrap();
    let mut bad = parsed.associated_data.to_vec();
    bad.extend_from_slice(&body);
    bad.extend_from_slice(&tag);
    let rejected = opener
        .open(&bad, trusted_recorded().as_slice())
        .unwrap_err();
    assert_eq!(rejected.error, OpenError::TagMismatch);
    // The receiver recovered the session key, so it can answer the refusal.
    let (header, _) = *rejected.answerable.unwrap();
    assert_eq!(header.meta.message_id, parsed.header.meta.message_id);
}

#[test]
fn non_canonical_headers_are_refused() {
    let (sealed, _) = recorded();
    // Re-encode the site name's length (the first varint, one byte) as a
    // two-byte varint: the same value, a different encoding.
    let header_len = u16::from_le_bytes([sealed[5], sealed[6]]) as usize;
    let header = &sealed[7..7 + header_len];
    let site_len_at = 16; // after the 16-byte message id
    let mut longer = header[..site_len_at].to_vec();
    longer.extend_from_slice(&[header[site_len_at] | 0x80, 0x00]);
    longer.extend_from_slice(&header[site_len_at + 1..]);
    let mut bad = sealed[..5].to_vec();
    bad.extend_from_slice(&((longer.len()) as u16).to_le_bytes());
    bad.extend_from_slice(&longer);
    bad.extend_from_slice(&sealed[7 + header_len..]);
    assert_eq!(
        envelope::parse(&bad).unwrap_err(),
        FormatError::NonCanonicalHeader
    );
}

#[test]
fn headers_with_invalid_names_are_refused() {
    let (sealed, _) = recorded();
    let parsed = envelope::parse(&sealed).unwrap();
    let site = parsed.header.meta.site.as_str().as_bytes().to_vec();
    let at = find(&sealed, &site).unwrap();
    let mut bad = sealed.clone();
    bad[at] = b'/';
    assert!(matches!(envelope::parse(&bad), Err(FormatError::Header(_))));
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn parse_never_panics_on_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = envelope::parse(&data);
    }

    #[test]
    fn parse_never_panics_on_mutated_envelopes(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let (mut sealed, _) = recorded();
        for (at, value) in edits {
            let i = at.index(sealed.len());
            sealed[i] = value;
        }
        let len = cut.index(sealed.len() + 1);
        let _ = envelope::parse(&sealed[..len]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn open_inverts_seal(
        width in 1u32..48,
        height in 1u32..48,
        wide in any::<bool>(),
        sequence in any::<u64>(),
        captured in any::<u64>(),
        hint in proptest::option::of("[a-z0-9._-]{1,64}"),
    ) {
        let format = if wide { PixelFormat::Gray16 } else { PixelFormat::Gray8 };
        let px = image(width, height, format);
        let mut m = meta(sequence);
        m.captured_at_ms = captured;
        m.model_hint = hint.map(|h| h.parse().unwrap());
        let key = test_key();
        let wrapped = key.public().wrap(&SessionKey::from_bytes([9; 32])).unwrap();
        let sealed = envelope::seal_with(&SessionKey::from_bytes([9; 32]), &wrapped, &test_identity(), &m, &px).unwrap();
        let opened = Opener::new(key, 1).open(&sealed.bytes, trusted().as_slice()).unwrap();
        prop_assert_eq!(opened.sha512, sealed.sha512);
        prop_assert_eq!(opened.answer_key, sealed.answer_key);
        prop_assert_eq!(opened.pixels, px);
        prop_assert_eq!(opened.header.meta, m);
    }
}

#[test]
fn an_enrolled_key_asking_for_ever_new_session_keys_is_cut_off_without_rsa() {
    let (sealed, _) = recorded();
    let opener = Opener::new(test_key(), 4096);
    let parsed = envelope::parse(&sealed).unwrap();
    let signature_at = parsed.signed.len();
    let key_at = signature_at - parsed.wrapped_key.len();
    let forged = |fill: u32| {
        let mut bad = sealed.clone();
        for (i, byte) in bad[key_at..signature_at].iter_mut().enumerate() {
            *byte = (fill.wrapping_mul(2_654_435_761) >> (i % 24)) as u8 ^ i as u8;
        }
        let id = key_id_of(&bad[key_at..signature_at]);
        let id_at = find(&bad[..key_at], parsed.header.key_id.as_bytes()).unwrap();
        bad[id_at..id_at + 16].copy_from_slice(id.as_bytes());
        let signature = test_identity().sign(&envelope::origin_message(&bad[..signature_at]));
        bad[signature_at..signature_at + 64].copy_from_slice(&signature);
        bad
    };
    // The real image's key was the first unwrap.
    assert!(open_recorded(&opener, &sealed).is_ok());
    let reasons: Vec<&str> = (0..seal::UNWRAP_BURST + 5)
        .map(|k| open_recorded(&opener, &forged(k)).unwrap_err().reason())
        .collect();
    let tried = reasons.iter().filter(|r| **r == "unknown_key").count();
    assert_eq!(tried, seal::UNWRAP_BURST as usize - 1, "{reasons:?}");
    assert!(reasons.ends_with(&["key_rate_limited"; 5]), "{reasons:?}");
    // A key already unwrapped still opens.
    assert!(open_recorded(&opener, &sealed).is_ok());
}
