//! What the clinical gate costs per image, beside inference:
//! `cargo bench -p medgate-receiver --bench gate`. Routing reads the
//! header; the out-of-distribution gate's pixel and layout checks run before
//! inference, its feature distance after (on features the forward pass
//! computed anyway); calibration is one sigmoid. Inference of one image is
//! measured alongside for scale.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)] // benchmark harness

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use medgate_medmnist::{SplitName, read_split};
use medgate_receiver::model::LoadedModel;
use medgate_receiver::model::backend::{BackendChoice, select};
use medgate_receiver::model::decision::decide;
use medgate_receiver::model::infer::infer;
use medgate_receiver::model::routing::{Query, choose_for};
use medgate_shared::header::{Anatomy, Modality};
use medgate_shared::pixels::PixelFormat;

fn gate(c: &mut Criterion) {
    let cpu = select(BackendChoice::Cpu).unwrap();
    let model = LoadedModel::shipped(&cpu.device).unwrap();
    let gate = model.gate.clone().unwrap();
    // A real val X-ray, which passes every check (the whole gate runs).
    let data = std::env::var_os("MEDGATE_DATA_DIR")
        .map_or_else(|| "../../shared/data".into(), std::path::PathBuf::from)
        .join("pneumoniamnist.npz");
    let val = read_split(&data, SplitName::Val).unwrap();
    let input = val.image(0).unwrap().to_vec();
    let norm = model.card.normalisation;
    let output = infer(&model.network, &input, 28, norm, &cpu.device, 1)
        .pop()
        .unwrap();
    assert!(gate.admit(&input, &output.features).is_ok());
    let cards = [&model.card];
    let chest = Anatomy {
        body_part: Some("CHEST".parse().unwrap()),
        view_position: Some("PA".parse().unwrap()),
    };
    let query = Query {
        modality: Modality::Dx,
        format: PixelFormat::Gray8,
        anatomy: &chest,
        hint: None,
    };
    let mut group = c.benchmark_group("gate");
    group.bench_function("route", |b| {
        b.iter(|| choose_for(black_box(&cards), black_box(&query)))
    });
    group.bench_function("pixels_and_layout", |b| {
        b.iter(|| gate.check_pixels(black_box(&input)))
    });
    group.bench_function("whole_decision", |b| {
        b.iter(|| {
            decide(
                &model.card,
                Some(&gate),
                black_box(&input),
                output.margin,
                black_box(&output.features),
            )
        })
    });
    group.bench_function("inference_batch_of_1", |b| {
        b.iter(|| infer(&model.network, black_box(&input), 28, norm, &cpu.device, 1))
    });
    group.finish();
}

criterion_group!(benches, gate);
criterion_main!(benches);
