//! `medgate-receiver bench-inference`: images per second of the model on
//! one or more backends at several batch sizes, measured in one run with
//! the backends and batch sizes interleaved round by round, so that a busy
//! shared machine slows all of them alike and their ratios hold.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::LoadedModel;
use super::backend::Selected;
use super::infer::predict;

/// One backend at one batch size.
#[derive(Debug, Clone, Serialize)]
pub struct InferenceFigure {
    /// Backend name (`cpu`, `wgpu`) and adapter.
    pub backend: String,
    /// Images per inference call.
    pub batch: usize,
    /// Median over rounds of images per second.
    pub images_per_s: f64,
    /// Median milliseconds per inference call (input upload and result
    /// read-back included).
    pub ms_per_call: f64,
    /// Rounds measured.
    pub rounds: usize,
}

/// Measures each `(backend, model)` at each batch size for about
/// `duration` in total, after one warm-up call each (wgpu compiles its
/// shaders on the first call).
pub fn run(
    backends: &[(Selected, LoadedModel)],
    batches: &[usize],
    duration: Duration,
) -> Vec<InferenceFigure> {
    let side = backends
        .first()
        .map_or(28, |(_, model)| model.card.input_size[0]);
    let largest = batches.iter().copied().max().unwrap_or(1);
    // Content does not change the cost; a fixed pseudo-random pattern.
    let images: Vec<u8> = (0..largest * side * side)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let call = |(selected, model): &(Selected, LoadedModel), batch: usize| {
        let input = &images[..batch * side * side];
        let started = Instant::now();
        let scores = predict(
            &model.network,
            input,
            side,
            model.card.normalisation,
            &selected.device,
            batch,
        );
        debug_assert_eq!(scores.len(), batch);
        started.elapsed()
    };
    for backend in backends {
        for &batch in batches {
            call(backend, batch);
        }
    }
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); backends.len() * batches.len()];
    let started = Instant::now();
    while started.elapsed() < duration || samples[0].len() < 3 {
        for (b, backend) in backends.iter().enumerate() {
            for (k, &batch) in batches.iter().enumerate() {
                samples[b * batches.len() + k].push(call(backend, batch));
            }
        }
    }
    let mut figures = Vec::new();
    for (b, (selected, _)) in backends.iter().enumerate() {
        for (k, &batch) in batches.iter().enumerate() {
            let times = &mut samples[b * batches.len() + k];
            times.sort();
            let median = times[times.len() / 2].as_secs_f64();
            figures.push(InferenceFigure {
                backend: selected.to_string(),
                batch,
                images_per_s: batch as f64 / median,
                ms_per_call: median * 1000.0,
                rounds: times.len(),
            });
        }
    }
    figures
}

/// The figures as the table `bench-inference` prints without `--json`.
pub fn render_table(figures: &[InferenceFigure]) -> String {
    let mut table = format!(
        "{:<28} {:>6} {:>12} {:>10} {:>7}\n",
        "backend", "batch", "images/s", "ms/call", "rounds"
    );
    for f in figures {
        table.push_str(&format!(
            "{:<28} {:>6} {:>12.0} {:>10.3} {:>7}\n",
            f.backend, f.batch, f.images_per_s, f.ms_per_call, f.rounds
        ));
    }
    table
}
