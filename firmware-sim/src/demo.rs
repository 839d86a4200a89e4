//! `medgate-sim demo`: the whole system in one process (embedded broker with
//! mutual TLS, a receiver, a gateway, simulated sensors streaming chest
//! X-rays), one line per result as it reaches its sensor, and a summary.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use medgate_gateway::sources::spi::registers::FLAG_NOT_CLASSIFIED as NOT_CLASSIFIED;
use medgate_medmnist::SplitName;
use medgate_receiver::model::backend::BackendChoice;

use crate::broker::BrokerKind;
use crate::sensor::{self, Feed};
use crate::stats::Latencies;
use crate::system::{self, GatewayMode, Options, System};
use crate::tools;

/// What the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Simulated sensors.
    pub sensors: usize,
    /// Frames per second of each sensor.
    pub rate: f64,
    /// Image side in pixels.
    pub size: u32,
    /// Stop after this many results (else at Ctrl-C).
    pub images: Option<usize>,
    /// The PneumoniaMNIST file, if not the default place.
    pub data: Option<PathBuf>,
    /// The receiver's backend.
    pub backend: BackendChoice,
}

/// How many validation X-rays the sensors cycle through.
const FEED_IMAGES: usize = 128;

/// How often the screen is brought up to date.
const REFRESH: Duration = Duration::from_millis(50);

/// Runs the demo until `--images` results or Ctrl-C / SIGTERM, printing to
/// stdout (results) and stderr (what runs where).
///
/// # Errors
/// If a part does not start or a daemon fails.
pub fn run(options: &DemoOptions) -> anyhow::Result<()> {
    let feed = feed(options)?;
    let labelled = feed.labelled();
    eprintln!("starting: throwaway certificates, embedded broker, receiver, gateway, sensors …");
    let begun = Instant::now();
    let mut system = System::start(&Options {
        sensors: options.sensors,
        rate: options.rate,
        feed,
        receivers: 1,
        backend: options.backend,
        max_batch: 16,
        gateway: GatewayMode::InProcess,
        broker: BrokerKind::Embedded,
        paused: false,
        junk_gateway: false,
    })?;
    eprintln!(
        "running ({:.1} s to start):\n  broker    rumqttd on {} (MQTT v5, TLS with client certificates)\n  receiver  receiver-1, backend {}, shared subscription group \"receivers\"\n  gateway   {}/{}: {} SPI sensor(s) on the virtual bus, spool on disk\n  sensors   {} × {:.1} frames/s of {}×{} chest X-rays\n  files     {} (removed at exit)\n{}",
        begun.elapsed().as_secs_f64(),
        system.broker().address(),
        system.backend(),
        system::SITE,
        system::GATEWAY,
        options.sensors,
        options.sensors,
        options.rate,
        options.size,
        options.size,
        system.folder().display(),
        match options.images {
            Some(n) => format!("stopping after {n} results"),
            None => "Ctrl-C to stop".to_owned(),
        }
    );

    let started = Instant::now();
    let mut shown = vec![0usize; system.sensors().len()];
    let mut latencies = Latencies::default();
    let mut counts = [0usize; 3];
    let mut not_classified = 0usize;
    let (mut agree, mut compared) = (0usize, 0usize);
    let mut stdout = std::io::stdout().lock();
    let outcome = loop {
        for (sensor, shown) in system.sensors().iter().zip(shown.iter_mut()) {
            let log = sensor.log();
            for at in *shown..log.results.len() {
                let result = log.results[at];
                let latency = log.latencies[at];
                let label = sensor::verdict_name(&result).replace(' ', "-");
                latencies.push(latency);
                counts[usize::from(result.class.min(2))] += 1;
                if result.flags & NOT_CLASSIFIED != 0 {
                    not_classified += 1;
                }
                // A class's probability, or a dash when there is none.
                let confidence = if result.class < 2 {
                    format!("{:>5.1}%", f64::from(result.confidence) / 100.0)
                } else {
                    format!("{:>6}", "-")
                };
                let truth = match log.truths[at] {
                    Some(truth) => {
                        compared += 1;
                        if truth == result.class {
                            agree += 1;
                        }
                        format!("  (dataset: {})", sensor::class_name(truth))
                    }
                    None => String::new(),
                };
                writeln!(
                    stdout,
                    "{:<5} frame {:>4}  {:<9} {confidence}  capture→result {:>6.1} ms{truth}",
                    sensor.name(),
                    result.frame,
                    label,
                    latency.as_secs_f64() * 1e3,
                )?;
            }
            *shown = log.results.len();
        }
        stdout.flush()?;
        if options.images.is_some_and(|n| latencies.len() >= n) {
            break Ok(());
        }
        if system.interrupted() {
            eprintln!("interrupted: shutting down");
            break Ok(());
        }
        if let Some(failure) = system.failed() {
            break Err(anyhow::anyhow!("{failure}; see the log above"));
        }
        // The screen is refreshed on a clock; nothing else waits on it.
        std::thread::sleep(REFRESH);
    };
    let elapsed = started.elapsed();
    let summary = Summary {
        results: latencies.len(),
        elapsed,
        latencies,
        counts,
        not_classified,
        agreement: labelled.then_some((agree, compared)),
    };
    let stopped = system.shutdown();
    writeln!(stdout, "{}", summary.render())?;
    outcome.and(stopped)
}

fn feed(options: &DemoOptions) -> anyhow::Result<Feed> {
    match tools::dataset_path(options.data.clone()) {
        Ok(path) if path.exists() => {
            eprintln!(
                "images: PneumoniaMNIST validation X-rays from {}",
                path.display()
            );
            Feed::from_npz(&path, SplitName::Val, options.size, FEED_IMAGES)
        }
        Ok(path) => anyhow::bail!(
            "{} does not exist (run scripts/fetch-data, or drop --data / MEDGATE_DATA_DIR for generated images)",
            path.display()
        ),
        Err(_) => {
            eprintln!(
                "images: no PneumoniaMNIST file found, so the sensors send generated test images; they are no chest X-rays, and the receiver answers them not classified. For real chest X-rays run scripts/fetch-data, or set MEDGATE_DATA_DIR."
            );
            Ok(Feed::generated(options.size, 16))
        }
    }
}

/// What the demo saw.
struct Summary {
    results: usize,
    elapsed: Duration,
    latencies: Latencies,
    counts: [usize; 3],
    /// Of `counts[2]`, those a receiver verified and gave no class (the
    /// rest were rejected).
    not_classified: usize,
    agreement: Option<(usize, usize)>,
}

impl Summary {
    fn render(&self) -> String {
        let seconds = self.elapsed.as_secs_f64().max(1e-9);
        let mut text = format!(
            "\nsummary: {} results in {:.1} s ({:.1} images/s): {} normal, {} pneumonia",
            self.results,
            seconds,
            self.results as f64 / seconds,
            self.counts[0],
            self.counts[1],
        );
        if self.not_classified > 0 {
            text.push_str(&format!(
                ", {} not classified (no model, or unlike the training images)",
                self.not_classified
            ));
        }
        let rejected = self.counts[2].saturating_sub(self.not_classified);
        if rejected > 0 {
            text.push_str(&format!(", {rejected} rejected"));
        }
        if let Some(ms) = self.latencies.summary_ms() {
            text.push_str(&format!(
                "\ncapture→result: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                ms.p50, ms.p99, ms.max
            ));
        }
        if let Some((agree, compared)) = self.agreement.filter(|(_, n)| *n > 0) {
            text.push_str(&format!(
                "\nagreement with the dataset's labels: {agree}/{compared} ({:.0}%)",
                100.0 * agree as f64 / compared as f64
            ));
        }
        text
    }
}
