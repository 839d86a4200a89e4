//! The shipped model and the backends, on real chest X-rays.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design.

use std::path::{Path, PathBuf};

use medgate_medmnist::{SplitName, read_split};
use medgate_receiver::model::backend::{BackendChoice, select};
use medgate_receiver::model::infer::predict;
use medgate_receiver::model::metrics::roc_auc;
use medgate_receiver::model::{LoadedModel, data::preprocess};
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
