//! The gateway's footprint at a steady image rate: RSS and CPU of the real
//! `medgate-gateway` process while a hot folder receives `--rate` images
//! per second of `--size`² pixels, a real mosquitto (mutual TLS) carries
//! them, and a stand-in receiver opens and answers each one.
//!
//! Built by `cargo test --workspace --all-targets` (a short run doubles as a
//! smoke test); measure with e.g.
//! `$CARGO_TARGET_DIR/debug/examples/footprint --rate 10 --size 512 --seconds 60`.
//! The gateway binary is the one beside this example's folder.
//!
//! `--input bomb|largest` measures one input instead: the gateway's peak
//! RSS (VmHWM) while it refuses an 8192² decompression bomb, or while it
//! accepts, seals, publishes and delivers the result of the largest image a
//! 16 MiB packet carries at 8 bits (4095², noise, so that the PNG is large
//! too); `--input dicom` the same for a 3000² 16-bit CR DICOM file;
//! `--input scp` the same file stored by C-STORE to the DICOM node.
//! `--input scp-latency` stores 1024² 16-bit CR objects (2 MB) one after
//! another and reports C-STORE request to success (= durably spooled)
//! latency, p50 and p99.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a measuring tool: fail loudly.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use medgate_gateway::capture::pixel_budget;
use medgate_testkit::procstat::{clock_ticks, cpu_ticks, status_kb};
use support::{World, answer, bomb_png, files_in, noise_png, noise_png16};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Input {
    /// An 8192 x 8192 black PNG, refused.
    Bomb,
    /// The largest image the default packet limit carries, accepted.
    Largest,
    /// The same from a 16-bit source (twice the decoded bytes).
    Largest16,
    /// A 3000 x 3000 16-bit CR DICOM file (18 MB), sealed at 8 bits.
    Dicom,
    /// The same object stored by C-STORE.
    Scp,
    /// C-STORE to spooled latency for 2 MB CR objects.
    ScpLatency,
}

#[derive(Parser)]
struct Args {
    /// Images per second.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Side of the square images, pixels.
    #[arg(long, default_value_t = 512)]
    size: u32,
    /// Seconds of measurement (after a 2 s warm-up).
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Measure one input instead of a steady rate.
    #[arg(long, value_enum)]
    input: Option<Input>,
}

fn main() {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(measure(args));
}

async fn measure(args: Args) {
    let binary: PathBuf = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(|examples| examples.parent())
        .unwrap()
        .join("medgate-gateway");
    let dicom_port = medgate_testkit::free_port().unwrap();
    let world = World::with(1 << 30, 60, |config| {
        config.dicom = Some(medgate_gateway::config::DicomSection::new(
            "modalities",
            &format!("127.0.0.1:{dicom_port}"),
            &["FOOTPRINT"],
            "PACS",
            "127.0.0.1:9",
        ));
    });
    let mut receiver = world.receiver().await;
    let mut opener = world.opener();
    let mut gateway = world.start_process(&binary);
    let pid = gateway.id();

    if let Some(input) = args.input {
        let done = world.done();
        // A first image proves the gateway runs and is connected.
        world.drop_image("warm-up.png", 1, 64);
        let images = receiver
            .expect("medgate/v1/site-a/gw-1/images/", 1, Duration::from_secs(60))
            .await
            .unwrap();
        answer(&receiver, &mut opener, &images[0].payload).await;
        support::eventually("the warm-up result", || {
            files_in(&done, ".result.json").len() == 1
        })
        .await;
        let before_kb = status_kb(pid, "VmHWM:");
        let started = Instant::now();
        let (name, file_bytes) = match input {
            Input::Bomb => {
                let bomb = bomb_png(8192);
                world.drop_file("bomb.png", &bomb);
                let rejected = world.inbox.join("rejected");
                support::eventually("the bomb refused", || {
                    !files_in(&rejected, ".reason.txt").is_empty()
                })
                .await;
                ("bomb 8192x8192".to_owned(), bomb.len())
            }
            Input::Largest | Input::Largest16 => {
                let side = ((pixel_budget(16 << 20)) as f64).sqrt() as u32;
                let png = if matches!(input, Input::Largest16) {
                    noise_png16(side, side)
                } else {
                    noise_png(side, side)
                };
                world.drop_file("largest.png", &png);
                let images = receiver
                    .expect(
                        "medgate/v1/site-a/gw-1/images/",
                        1,
                        Duration::from_secs(120),
                    )
                    .await
                    .unwrap();
                answer(&receiver, &mut opener, &images[0].payload).await;
                support::eventually("the largest image's result", || {
                    files_in(&done, ".result.json").len() == 2
                })
                .await;
                (
                    format!("largest {side}x{side} 8-bit from {input:?}"),
                    png.len(),
                )
            }
            Input::Scp => {
                let file = support::dicom_file(3000, 3000, "CR", "MONOCHROME2");
                let bytes = file.len();
                let (code, comment) =
                    support::c_store(dicom_port, "FOOTPRINT", support::data_set(&file)).await;
                assert_eq!(code, 0, "{comment:?}");
                let images = receiver
                    .expect(
                        "medgate/v1/site-a/gw-1/images/",
                        1,
                        Duration::from_secs(120),
                    )
                    .await
                    .unwrap();
                answer(&receiver, &mut opener, &images[0].payload).await;
                let outbox = world.dir.path().join("state/dicom/outbox");
                support::eventually("the report in the outbox", || {
                    files_in(&outbox, ".dcm").len() == 1
                })
                .await;
                (
                    "C-STORE of a CR 3000x3000 16-bit, sealed 8-bit".to_owned(),
                    bytes,
                )
            }
            Input::ScpLatency => {
                let file = support::dicom_file(1024, 1024, "CR", "MONOCHROME2");
                let mut latencies = Vec::new();
                for _ in 0..args.seconds.max(1) * 10 {
                    let data = support::data_set(&file);
                    let sent = Instant::now();
                    let (code, comment) = support::c_store(dicom_port, "FOOTPRINT", data).await;
                    assert_eq!(code, 0, "{comment:?}");
                    latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                }
                latencies.sort_by(f64::total_cmp);
                let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
                println!(
                    "{}",
                    serde_json::json!({
                        "c_store_to_spooled_ms": {
                            "objects": latencies.len(),
                            "object_bytes": file.len(),
                            "p50": at(0.5),
                            "p99": at(0.99),
                            "max": at(1.0),
                        }
                    })
                );
                (
                    "C-STORE latency, 1024x1024 16-bit CR".to_owned(),
                    file.len(),
                )
            }
            Input::Dicom => {
                let file = support::dicom_file(3000, 3000, "CR", "MONOCHROME2");
                world.drop_file("cr.dcm", &file);
                let images = receiver
                    .expect(
                        "medgate/v1/site-a/gw-1/images/",
                        1,
                        Duration::from_secs(120),
                    )
                    .await
                    .unwrap();
                answer(&receiver, &mut opener, &images[0].payload).await;
                support::eventually("the DICOM image's result", || {
                    files_in(&done, ".result.json").len() == 2
                })
                .await;
                (
                    "DICOM CR 3000x3000 16-bit, sealed 8-bit".to_owned(),
                    file.len(),
                )
            }
        };
        let report = serde_json::json!({
            "input": name,
            "file_bytes": file_bytes,
            "seconds": started.elapsed().as_secs_f64(),
            "peak_rss_kb_before": before_kb,
            "peak_rss_kb": status_kb(pid, "VmHWM:"),
            "rss_kb_after": status_kb(pid, "VmRSS:"),
        });
        gateway.kill().unwrap();
        gateway.wait().unwrap();
        println!("{}", serde_json::to_string_pretty(&report).unwrap());
        return;
    }
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = answered.clone();
    let answering = tokio::spawn(async move {
        loop {
            let Ok(images) = receiver
                .expect("medgate/v1/site-a/gw-1/images/", 1, Duration::from_secs(30))
                .await
            else {
                return;
            };
            for image in images {
                answer(&receiver, &mut opener, &image.payload).await;
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });

    let period = Duration::from_secs_f64(1.0 / args.rate.max(0.1));
    let mut tick = tokio::time::interval(period);
    let warm_up = Duration::from_secs(2);
    let started = Instant::now();
    let mut sent = 0u32;
    let mut window: Option<(Instant, u64)> = None;
    let mut rss_samples = Vec::new();
    let end = warm_up + Duration::from_secs(args.seconds);
    while started.elapsed() < end {
        tick.tick().await;
        world.drop_image(
            &format!("f-{sent:06}.png"),
            (sent % 251) as u8 + 1,
            args.size,
        );
        sent += 1;
        if started.elapsed() >= warm_up {
            if window.is_none() {
                window = Some((Instant::now(), cpu_ticks(pid)));
            }
            rss_samples.push(status_kb(pid, "VmRSS:"));
        }
    }
    let (from, ticks_then) = window.unwrap();
    let wall = from.elapsed().as_secs_f64();
    let cpu_seconds = (cpu_ticks(pid) - ticks_then) as f64 / clock_ticks();
    let peak_kb = status_kb(pid, "VmHWM:");
    rss_samples.sort();
    let median_kb = rss_samples[rss_samples.len() / 2];
    gateway.kill().unwrap();
    gateway.wait().unwrap();
    answering.abort();
    let report = serde_json::json!({
        "rate": args.rate,
        "size": args.size,
        "seconds": wall,
        "images_dropped": sent,
        "results_answered": answered.load(std::sync::atomic::Ordering::Relaxed),
        "rss_median_kb": median_kb,
        "rss_peak_kb": peak_kb,
        "cpu_percent_of_one_core": 100.0 * cpu_seconds / wall,
    });
    if args.json {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report).unwrap());
    }
}
