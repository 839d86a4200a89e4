//! The receiver service against a real mosquitto with mutual TLS: sealed
//! chest X-rays in, results and notifications out; duplicates answered from
//! memory; tampered, forged, replayed and foreign messages refused, audited
//! and counted while the stream goes on.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design.

use std::collections::HashMap;

use medgate_receiver::model::LoadedModel;
use medgate_receiver::model::backend::{BackendChoice, select};
use medgate_receiver::model::data::preprocess;
use medgate_receiver::model::infer::infer;
use medgate_shared::header::Modality;
use medgate_shared::identity::GatewayIdentity;
use medgate_shared::keys::ReceiverPrivateKey;
use medgate_shared::messages::{Answer, AuditRecord, Notification, ResultMessage};
use medgate_shared::pixels::{PixelFormat, Pixels};
use medgate_shared::seal::{RotationPolicy, Sealer};
use medgate_testkit::forge;

mod support;

use support::{GATEWAY, Rig, RigOptions, SITE, counter, meta, xrays};

/// What the shipped model says offline about each image, on the CPU: the
/// calibrated probability of pneumonia results carry.
fn offline_probabilities(images: &[(Pixels, u8)]) -> Vec<f32> {
    let cpu = select(BackendChoice::Cpu).unwrap();
    let model = LoadedModel::shipped(&cpu.device).unwrap();
    let inputs: Vec<u8> = images.iter().flat_map(|(p, _)| preprocess(p, 28)).collect();
    infer(
        &model.network,
        &inputs,
        28,
        model.card.normalisation,
        &cpu.device,
        64,
    )
    .iter()
    .map(|o| model.card.probability(o.margin))
    .collect()
}

/// Seals `images` over three devices, publishes them, and checks that each
/// gets exactly one result at its own device, equal to offline inference.
async fn stream_and_check(
    rig: &mut Rig,
    images: &[(Pixels, u8)],
    first_sequence: u64,
) -> HashMap<String, ResultMessage> {
    let mut sealer = rig.sealer();
    let mut sent = HashMap::new();
    for (i, (pixels, _)) in images.iter().enumerate() {
        let device = format!("cam-{}", i % 3);
        let meta = meta(&device, first_sequence + i as u64);
        let sealed = sealer.seal(&meta, pixels).unwrap().bytes;
        sent.insert(meta.message_id.to_string(), (i, device.clone()));
        rig.publish(&device, sealed).await;
    }
    let expected = offline_probabilities(images);
    let prefix = format!("medgate/v1/{SITE}/{GATEWAY}/results/");
    let mut results = HashMap::new();
    for (topic, body) in rig.expect(&prefix, images.len()).await {
        let result: ResultMessage = serde_json::from_slice(&body).unwrap();
        let (i, device) = sent
            .get(&result.message_id)
            .expect("a result for a sent image")
            .clone();
        assert_eq!(
            topic,
            format!("{prefix}{device}"),
            "routed to its own device"
        );
        assert_eq!(result.device, device);
        assert_eq!(result.sequence, first_sequence + i as u64);
        assert_eq!(result.sha512.len(), 128);
        let p = result.probabilities["pneumonia"];
        assert!(
            (p - expected[i]).abs() < 1e-3,
            "image {i}: service {p}, offline {}",
            expected[i]
        );
        assert!((p + result.probabilities["normal"] - 1.0).abs() < 1e-4);
        let label = if p >= result.threshold {
            "pneumonia"
        } else {
            "normal"
        };
        assert_eq!(result.label, label);
        assert!(result.timings.batch_size >= 1);
        assert!(
            results.insert(result.message_id.clone(), result).is_none(),
            "exactly one result per image"
        );
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classifies_real_xrays_notifies_and_refuses_what_fails_a_check() {
    let mut rig = Rig::start(RigOptions::default()).await;
    let images = xrays(12);
    let results = stream_and_check(&mut rig, &images, 100).await;

    // The labels are right for nearly all of these val images (0.98 on val).
    let correct = results
        .values()
        .filter(|r| {
            let i = (r.sequence - 100) as usize;
            (r.label == "pneumonia") == (images[i].1 == 1)
        })
        .count();
    assert!(correct >= 10, "{correct} of 12 right");

    // One notification per result at or above 0.5, without pixels.
    let urgent: Vec<&ResultMessage> = results
        .values()
        .filter(|r| r.probabilities["pneumonia"] >= 0.5)
        .collect();
    assert!(!urgent.is_empty());
    let notes = rig
        .expect(&format!("medgate/v1/{SITE}/notify/radiology"), urgent.len())
        .await;
    for (_, body) in &notes {
        let note: Notification = serde_json::from_slice(body).unwrap();
        assert!(results.contains_key(&note.message_id));
        assert_eq!(note.label, "pneumonia");
        assert_eq!(note.ward, "radiology");
        let keys: Vec<String> =
            serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body)
                .unwrap()
                .keys()
                .cloned()
                .collect();
        assert!(
            !keys
                .iter()
                .any(|k| k.contains("pixel") || k.contains("patient")),
            "{keys:?}"
        );
        assert!(body.len() < 1024, "a notification carries no image");
    }

    // The same message again: the same answer, not a second classification.
    let mut sealer = rig.sealer();
    let first_meta = meta("cam-9", 7);
    let first = sealer.seal(&first_meta, &images[0].0).unwrap();
    let first_key = first.answer_key.clone();
    let first = first.bytes;
    rig.publish("cam-9", first.clone()).await;
    let prefix = format!("medgate/v1/{SITE}/{GATEWAY}/results/cam-9");
    let original: ResultMessage =
        serde_json::from_slice(&rig.expect(&prefix, 1).await[0].1).unwrap();
    rig.publish("cam-9", first.clone()).await;
    let repeated: ResultMessage =
        serde_json::from_slice(&rig.expect(&prefix, 1).await[0].1).unwrap();
    assert_eq!(original, repeated, "the cached answer, timings included");
    let fields = original.answer_fields().unwrap();
    assert!(
        first_key.verify(&fields, &hex::decode(&original.mac).unwrap()),
        "a result carries a MAC from the image's session key"
    );

    // Refused: each audited with its reason, none classified.
    let tampered_seal = sealer.seal(&meta("cam-9", 8), &images[1].0).unwrap();
    let tampered = forge::tampered(&tampered_seal.bytes);
    let unknown_key = forge::with_unknown_key(
        &sealer.seal(&meta("cam-9", 9), &images[1].0).unwrap().bytes,
        &rig.identity,
    )
    .unwrap();
    let other = ReceiverPrivateKey::generate(3072).unwrap();
    let foreign = Sealer::new(
        other.public().clone(),
        rig.identity.clone(),
        RotationPolicy::default(),
    )
    .seal(&meta("cam-9", 10), &images[1].0)
    .unwrap()
    .bytes;
    // Sealed by a gateway the trust list does not hold.
    let stranger = Sealer::new(
        rig.key.public().clone(),
        GatewayIdentity::generate(),
        RotationPolicy::default(),
    )
    .seal(&meta("cam-9", 12), &images[1].0)
    .unwrap()
    .bytes;
    // A new message id with an answered device sequence number.
    let replayed_seal = sealer.seal(&meta("cam-9", 7), &images[1].0).unwrap();
    let misplaced = sealer.seal(&meta("cam-9", 11), &images[1].0).unwrap().bytes;
    rig.publish("cam-9", tampered).await;
    rig.publish("cam-9", unknown_key).await;
    rig.publish("cam-9", foreign).await;
    rig.publish("cam-9", stranger).await;
    rig.publish("cam-9", replayed_seal.bytes.clone()).await;
    rig.publish("cam-9", b"not a sealed image".to_vec()).await;
    rig.publish("cam-8", misplaced).await;
    let audits = rig
        .expect(&format!("medgate/v1/{SITE}/audit/receiver-1"), 7)
        .await;
    let mut reasons: Vec<String> = audits
        .iter()
        .map(|(_, body)| serde_json::from_slice::<AuditRecord>(body).unwrap().reason)
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "aead",
            "malformed",
            "replay",
            "topic_mismatch",
            "unknown_gateway",
            "unknown_key",
            "unknown_recipient"
        ]
    );
    // The two refusals the receiver could attribute (it recovered the
    // session key, and they came on their own gateway's topic) are
    // answered to the gateway, authenticated.
    let mut refusals = HashMap::new();
    for (topic, body) in rig.expect(&prefix, 2).await {
        assert_eq!(topic, prefix);
        let Answer::Refusal(refusal) = serde_json::from_slice(&body).unwrap() else {
            panic!("a refusal");
        };
        refusals.insert(refusal.reason.clone(), refusal);
    }
    for (reason, seal) in [("aead", &tampered_seal), ("replay", &replayed_seal)] {
        let refusal = &refusals[reason];
        let fields = refusal.answer_fields().unwrap();
        assert!(
            seal.answer_key
                .verify(&fields, &hex::decode(&refusal.mac).unwrap()),
            "{reason}: authenticated"
        );
    }

    // The stream goes on.
    let after = stream_and_check(&mut rig, &images[..3], 200).await;
    assert_eq!(after.len(), 3);

    let metrics = rig.metrics_text().await;
    for reason in [
        "aead",
        "malformed",
        "replay",
        "topic_mismatch",
        "unknown_gateway",
        "unknown_key",
        "unknown_recipient",
    ] {
        let line = format!("medgate_receiver_rejected_total{{reason=\"{reason}\"}}");
        assert_eq!(counter(&metrics, &line), 1.0, "{reason}\n{metrics}");
    }
    assert_eq!(
        counter(&metrics, "medgate_receiver_duplicates_total"),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        counter(&metrics, "medgate_receiver_received_total"),
        12.0 + 2.0 + 7.0 + 3.0
    );
    let classified: f64 = ["normal", "pneumonia"]
        .iter()
        .map(|l| {
            counter(
                &metrics,
                &format!("medgate_receiver_results_total{{label=\"{l}\"}}"),
            )
        })
        .sum();
    assert_eq!(
        classified,
        12.0 + 1.0 + 3.0,
        "duplicates and refusals are not classified"
    );
    assert!(counter(&metrics, "medgate_receiver_batch_size_count") >= 1.0);
    // No result ever went anywhere but this gateway's results topics.
    assert!(rig.broker.log_text().contains("receiver-1"));
    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_no_model_takes_or_unlike_chest_xrays_are_answered_not_classified_and_notify_nobody()
{
    let mut rig = Rig::start(RigOptions::default()).await;
    // Pixels that the chest model would call pneumonia: only the header's
    // modality keeps them from it.
    let images = xrays(40);
    let probabilities = offline_probabilities(&images);
    let sick = probabilities
        .iter()
        .position(|p| *p > 0.9)
        .expect("a clear pneumonia case among 40 val images");
    let pixels = &images[sick].0;
    let mut sealer = rig.sealer();
    let mut sent = HashMap::new();
    for (sequence, (modality, expected)) in [
        (Modality::Ct, "no model for CT"),
        (Modality::Mr, "no model for MR"),
        (Modality::Sc, "no model for SC"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut meta = meta("cam-1", sequence as u64 + 1);
        meta.modality = modality;
        let sealed = sealer.seal(&meta, pixels).unwrap();
        sent.insert(meta.message_id.to_string(), (expected, sealed.answer_key));
        rig.publish("cam-1", sealed.bytes).await;
    }
    let prefix = format!("medgate/v1/{SITE}/{GATEWAY}/results/cam-1");
    for (_, body) in rig.expect(&prefix, 3).await {
        let Answer::NotClassified(answer) = serde_json::from_slice(&body).unwrap() else {
            panic!("not classified: {}", String::from_utf8_lossy(&body));
        };
        let (expected, key) = &sent[&answer.message_id];
        assert_eq!(answer.reason, "no_model");
        assert_eq!(answer.detail, *expected);
        assert_eq!(answer.score, None);
        let fields = answer.answer_fields().unwrap();
        assert!(
            key.verify(&fields, &hex::decode(&answer.mac).unwrap()),
            "authenticated, so the gateway lets go of the image"
        );
    }

    // Radiographs by their header, but not chest X-rays: the same X-ray
    // turned on its side, and a blank frame.
    let data = pixels.data();
    let turned: Vec<u8> = (0..28 * 28)
        .map(|i| data[(i % 28) * 28 + 27 - i / 28])
        .collect();
    let unlike = [
        Pixels::new(28, 28, PixelFormat::Gray8, turned).unwrap(),
        Pixels::new(64, 64, PixelFormat::Gray8, vec![0; 64 * 64]).unwrap(),
    ];
    let mut keys = HashMap::new();
    for (i, image) in unlike.iter().enumerate() {
        let meta = meta("cam-1", 5 + i as u64);
        let sealed = sealer.seal(&meta, image).unwrap();
        keys.insert(meta.message_id.to_string(), (i, sealed.answer_key));
        rig.publish("cam-1", sealed.bytes).await;
    }
    for (_, body) in rig.expect(&prefix, 2).await {
        let Answer::NotClassified(answer) = serde_json::from_slice(&body).unwrap() else {
            panic!("not classified: {}", String::from_utf8_lossy(&body));
        };
        let (i, key) = &keys[&answer.message_id];
        assert_eq!(answer.reason, "out_of_distribution", "{answer:?}");
        assert_eq!(answer.model_version, "pneumonia-cnn-2");
        if *i == 0 {
            assert!(answer.score.unwrap() > 1.0, "{answer:?}");
            assert!(answer.detail.contains("laid out unlike"), "{answer:?}");
        } else {
            assert!(answer.detail.contains("uniform"), "{answer:?}");
        }
        let fields = answer.answer_fields().unwrap();
        assert!(key.verify(&fields, &hex::decode(&answer.mac).unwrap()));
    }

    // The same pixels as a radiograph are classified and notified; by the
    // time that notification is in, one for the images above would be too.
    let radiograph = meta("cam-1", 10);
    rig.publish("cam-1", sealer.seal(&radiograph, pixels).unwrap().bytes)
        .await;
    let result: ResultMessage = serde_json::from_slice(&rig.expect(&prefix, 1).await[0].1).unwrap();
    assert_eq!(result.label, "pneumonia");
    let notify = format!("medgate/v1/{SITE}/notify/");
    let notes = rig.expect(&notify, 1).await;
    let note: Notification = serde_json::from_slice(&notes[0].1).unwrap();
    assert_eq!(note.message_id, radiograph.message_id.to_string());
    assert!(
        rig.client.drain(&notify).is_empty(),
        "no other notification"
    );

    let metrics = rig.metrics_text().await;
    assert_eq!(
        counter(
            &metrics,
            "medgate_receiver_not_classified_total{reason=\"no_model\"}"
        ),
        3.0,
        "{metrics}"
    );
    assert_eq!(
        counter(
            &metrics,
            "medgate_receiver_not_classified_total{reason=\"out_of_distribution\"}"
        ),
        2.0,
        "{metrics}"
    );
    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wgpu_backend_serves_the_same_answers() {
    // On a machine without a GPU this is Mesa's software Vulkan (lavapipe),
    // which scripts/test installs.
    let mut rig = Rig::start(RigOptions {
        backend: BackendChoice::Wgpu,
        ..RigOptions::default()
    })
    .await;
    let images = xrays(6);
    let results = stream_and_check(&mut rig, &images, 100).await;
    assert_eq!(results.len(), 6);
    rig.shutdown().await;
}
