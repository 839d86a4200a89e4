//! The shipped model and the backends, on real chest X-rays.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design.

use std::path::{Path, PathBuf};

use burn::module::Module;
use medgate_medmnist::{SplitName, read_split};
use medgate_receiver::model::backend::{BackendChoice, select};
use medgate_receiver::model::infer::{infer, predict};
use medgate_receiver::model::metrics::roc_auc;
use medgate_receiver::model::{
    Classifier, LoadedModel, ModelError, Network, Scope, data::preprocess,
};
use medgate_shared::pixels::{PixelFormat, Pixels};

fn data_file() -> PathBuf {
    let dir = std::env::var_os("MEDGATE_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    let file = dir.join("pneumoniamnist.npz");
    assert!(
        file.exists(),
        "real X-ray data not found at {}: set MEDGATE_DATA_DIR (scripts/test does)",
        file.display()
    );
    file
}

#[test]
fn shipped_weights_load_and_separate_the_val_split() {
    let cpu = select(BackendChoice::Cpu).unwrap();
    let model = LoadedModel::shipped(&cpu.device).unwrap();
    assert_eq!(model.card.classes, ["normal", "pneumonia"]);
    assert_eq!(model.card.input_size, [28, 28]);
    let val = read_split(&data_file(), SplitName::Val).unwrap();
    let scores = predict(
        &model.network,
        &val.images,
        28,
        model.card.normalisation,
        &cpu.device,
        128,
    );
    let auc = roc_auc(&scores, &val.labels);
    assert!(auc > 0.95, "val AUC of the shipped model is {auc}");
}

#[test]
fn wgpu_and_cpu_give_the_same_predictions() {
    let cpu = select(BackendChoice::Cpu).unwrap();
    // On a machine without a GPU this is Mesa's software Vulkan (lavapipe),
    // which scripts/test installs.
    let gpu = select(BackendChoice::Wgpu).unwrap();
    assert_eq!(gpu.name, "wgpu");
    let on_cpu = LoadedModel::shipped(&cpu.device).unwrap();
    let on_gpu = LoadedModel::shipped(&gpu.device).unwrap();
    let val = read_split(&data_file(), SplitName::Val).unwrap();
    let images = &val.images[..64 * 28 * 28];
    let norm = on_cpu.card.normalisation;
    let a = predict(&on_cpu.network, images, 28, norm, &cpu.device, 64);
    let b = predict(&on_gpu.network, images, 28, norm, &gpu.device, 64);
    let threshold = on_cpu.card.threshold;
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!((x - y).abs() < 1e-4, "image {i}: cpu {x} vs wgpu {y}");
        assert_eq!(x >= &threshold, y >= &threshold, "image {i}: labels differ");
    }
}

#[test]
fn large_received_images_are_brought_to_the_model_input() {
    // A real X-ray upscaled to 256x256, as a gateway would send it, scores
    // like the 28x28 original.
    let cpu = select(BackendChoice::Cpu).unwrap();
    let model = LoadedModel::shipped(&cpu.device).unwrap();
    let val = read_split(&data_file(), SplitName::Val).unwrap();
    let original = val.image(0).unwrap().to_vec();
    let small = image::GrayImage::from_raw(28, 28, original.clone()).unwrap();
    let big = image::imageops::resize(&small, 256, 256, image::imageops::FilterType::Lanczos3);
    let received = Pixels::new(256, 256, PixelFormat::Gray8, big.into_raw()).unwrap();
    let prepared = preprocess(&received, 28);
    let norm = model.card.normalisation;
    let direct = predict(&model.network, &original, 28, norm, &cpu.device, 1)[0];
    let via = predict(&model.network, &prepared, 28, norm, &cpu.device, 1)[0];
    assert!(
        (direct - via).abs() < 0.1,
        "28x28 {direct} vs 256x256 {via}"
    );
}

#[test]
fn an_ensemble_averages_its_networks_logits_and_keeps_the_first_ones_features() {
    let cpu = select(BackendChoice::Cpu).unwrap();
    let shipped = LoadedModel::shipped(&cpu.device).unwrap();
    let arch = shipped.card.architecture.clone();
    let norm = shipped.card.normalisation;
    let a = Classifier::new(&arch, &cpu.device).valid();
    let b = Classifier::new(&arch, &cpu.device).valid();
    let val = read_split(&data_file(), SplitName::Val).unwrap();
    let images = &val.images[..16 * 28 * 28];
    let out_a = infer(&a, images, 28, norm, &cpu.device, 16);
    let out_b = infer(&b, images, 28, norm, &cpu.device, 16);
    let both = Network::ensemble(a, vec![b]);
    assert_eq!(both.len(), 2);
    let out = infer(&both, images, 28, norm, &cpu.device, 16);
    for ((x, y), e) in out_a.iter().zip(&out_b).zip(&out) {
        let mean = (x.margin + y.margin) / 2.0;
        assert!((e.margin - mean).abs() < 1e-4, "{} vs {mean}", e.margin);
        assert_eq!(e.features, x.features);
    }
}

#[test]
fn an_ensemble_folder_round_trips_and_its_card_may_only_name_files_beside_it() {
    let cpu = select(BackendChoice::Cpu).unwrap();
    let one = LoadedModel::shipped(&cpu.device).unwrap();
    let networks = one.network.len();
    let joined = LoadedModel::shipped(&cpu.device)
        .unwrap()
        .join(vec![one])
        .unwrap();
    assert_eq!(joined.network.len(), 2 * networks);
    let dir = tempfile::tempdir().unwrap();
    let card = joined.card.clone();
    medgate_receiver::model::save(dir.path(), &card, joined.network, joined.gate.as_ref()).unwrap();
    for member in &card.members {
        assert!(
            dir.path().join(&member.weights).is_file(),
            "{}",
            member.weights
        );
    }
    let loaded = LoadedModel::from_dir(dir.path(), &cpu.device).unwrap();
    assert_eq!(loaded.card, card);
    assert_eq!(loaded.network.len(), 2 * networks);

    // A card may name weights only in its own folder.
    let mut text: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("model.json")).unwrap())
            .unwrap();
    text["members"][0]["weights"] = "../elsewhere.bpk".into();
    std::fs::write(dir.path().join("model.json"), text.to_string()).unwrap();
    let err = LoadedModel::from_dir(dir.path(), &cpu.device).unwrap_err();
    assert!(err.to_string().contains("members"), "{err}");
    // A missing member is named.
    text["members"][0]["weights"] = "gone.bpk".into();
    std::fs::write(dir.path().join("model.json"), text.to_string()).unwrap();
    let err = LoadedModel::from_dir(dir.path(), &cpu.device).unwrap_err();
    assert!(err.to_string().contains("gone.bpk"), "{err}");
}

#[test]
fn models_normalised_differently_are_not_joined_and_the_error_says_why() {
    let cpu = select(BackendChoice::Cpu).unwrap();
    let shipped = LoadedModel::shipped(&cpu.device).unwrap();
    let mut other = LoadedModel::shipped(&cpu.device).unwrap();
    other.card.version = "per-image".into();
    other.card.normalisation.scope = Scope::Image;
    let err = shipped.join(vec![other]).err().unwrap();
    assert!(
        matches!(&err, ModelError::Incompatible { member, differs, .. }
            if member == "per-image" && differs == "normalisation"),
        "{err}"
    );
}
