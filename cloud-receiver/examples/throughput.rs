//! End-to-end receiver throughput: a synthetic gateway publishes sealed
//! chest X-rays through a real mosquitto (mutual TLS) to the receiver
//! service, keeping at most `--window` images unanswered, and measures
//! results per second and publish→result latency.
//!
//! Run it from the test build (no extra compile profile):
//! `cargo test --workspace --all-targets --no-run` builds it as
//! `$CARGO_TARGET_DIR/debug/examples/throughput`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark tool: fail loudly.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clap::Parser;
use image::imageops::FilterType;
use medgate_receiver::model::backend::BackendChoice;
use medgate_shared::messages::Answer;
use medgate_shared::pixels::{PixelFormat, Pixels};
use support::{GATEWAY, Rig, RigOptions, SITE, meta, xrays};

#[derive(Parser)]
struct Args {
    /// Images to send.
    #[arg(long, default_value_t = 300)]
    images: usize,
    /// Side of the square images, in pixels (X-rays are upscaled).
    #[arg(long, default_value_t = 256)]
    size: u32,
    /// Most images published but not yet answered.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Receiver max batch.
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// Receiver max wait, ms.
    #[arg(long, default_value_t = 2)]
    max_wait_ms: u64,
    /// Backend: cpu or wgpu.
    #[arg(long, value_enum, default_value = "cpu")]
    backend: BackendChoice,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(measure(args));
}

async fn measure(args: Args) {
    let mut rig = Rig::start(RigOptions {
        backend: args.backend,
        max_batch: args.max_batch,
        max_wait_ms: args.max_wait_ms,
        receive_maximum: u16::try_from(args.window.max(1)).unwrap_or(u16::MAX),
    })
    .await;
    let mut sealer = rig.sealer();
    let sources = xrays(64);
    let devices = 8;
    let sealed: Vec<(String, String, Vec<u8>)> = (0..args.images)
        .map(|i| {
            let (pixels, _) = &sources[i % sources.len()];
            let pixels = upscale(pixels, args.size);
            let device = format!("cam-{}", i % devices);
            let meta = meta(&device, i as u64);
            let bytes = sealer.seal(&meta, &pixels).unwrap().bytes;
            (meta.message_id.to_string(), device, bytes)
        })
        .collect();
    let payload_bytes = sealed.first().map_or(0, |s| s.2.len());
    let prefix = format!("medgate/v1/{SITE}/{GATEWAY}/results/");
    let mut sent_at: HashMap<String, Instant> = HashMap::new();
    let mut latencies = Vec::with_capacity(args.images);
    let mut batch_sizes = 0usize;
    let mut not_classified = 0usize;
    let mut next = sealed.into_iter();
    let started = Instant::now();
    let mut outstanding = 0usize;
    loop {
        while outstanding < args.window {
            let Some((id, device, bytes)) = next.next() else {
                break;
            };
            sent_at.insert(id, Instant::now());
            rig.publish(&device, bytes).await;
            outstanding += 1;
        }
        if outstanding == 0 {
            break;
        }
        for (_, body) in rig.expect(&prefix, 1).await {
            let answer: Answer = serde_json::from_slice(&body).unwrap();
            if let Some(at) = sent_at.remove(answer.message_id()) {
                latencies.push(at.elapsed());
                match &answer {
                    Answer::Result(result) => batch_sizes += result.timings.batch_size,
                    // The gate's refusals of val X-rays (about 2 %).
                    _ => not_classified += 1,
                }
                outstanding -= 1;
            }
        }
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pct =
        |p: f64| -> Duration { latencies[((latencies.len() as f64 - 1.0) * p).round() as usize] };
    let rate = args.images as f64 / elapsed.as_secs_f64();
    let report = serde_json::json!({
        "images": args.images,
        "size": args.size,
        "payload_bytes": payload_bytes,
        "window": args.window,
        "backend": args.backend,
        "max_batch": args.max_batch,
        "seconds": elapsed.as_secs_f64(),
        "messages_per_s": rate,
        "latency_p50_ms": pct(0.5).as_secs_f64() * 1000.0,
        "latency_p99_ms": pct(0.99).as_secs_f64() * 1000.0,
        "mean_batch": batch_sizes as f64 / (args.images - not_classified).max(1) as f64,
        "not_classified": not_classified,
    });
    if args.json {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report).unwrap());
    }
    rig.shutdown().await;
}

fn upscale(pixels: &Pixels, size: u32) -> Pixels {
    if pixels.width() == size {
        return pixels.clone();
    }
    let image = image::GrayImage::from_raw(pixels.width(), pixels.height(), pixels.data().to_vec())
        .unwrap();
    let big = image::imageops::resize(&image, size, size, FilterType::Triangle);
    Pixels::new(size, size, PixelFormat::Gray8, big.into_raw()).unwrap()
}
