//! `medgate-sim sensor`: simulated sensors on Unix sockets for a real
//! gateway to read, one line on stdout per result the gateway writes back.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use crate::sensor::{self, Feed, Sensor};

/// How long a sensor's watcher waits for its next result before it looks
/// again (it only ends with the process).
const WATCH: Duration = Duration::from_secs(3600);

/// Starts one sensor per socket, each capturing `rate` frames per second
/// from `feed`, and prints each result as it arrives; returns after
/// `stop_after` results in total, else runs until the process ends.
///
/// # Errors
/// If the rate is out of range or a socket cannot be bound.
pub fn run(
    sockets: &[PathBuf],
    feed: Feed,
    rate: f64,
    stop_after: Option<usize>,
) -> anyhow::Result<()> {
    anyhow::ensure!(rate > 0.0 && rate <= 1000.0, "--rate must be in (0, 1000]");
    let period = Duration::from_secs_f64(1.0 / rate);
    let (lines, printed) = mpsc::channel();
    for (i, path) in sockets.iter().enumerate() {
        let name = path.file_stem().map_or_else(
            || format!("sensor-{i}"),
            |s| s.to_string_lossy().into_owned(),
        );
        let sensor = Sensor::start(&name, path, feed.clone(), period)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        eprintln!("sensor {name} on {}", path.display());
        let lines = lines.clone();
        // One watcher per sensor, woken by its sensor when a result is
        // written.
        std::thread::Builder::new()
            .name(format!("sensor-{name}-watch"))
            .spawn(move || watch(&sensor, &lines))?;
    }
    drop(lines);
    for line in printed.into_iter().take(stop_after.unwrap_or(usize::MAX)) {
        println!("{line}");
    }
    Ok(())
}

/// Sends a line for each result `sensor` receives, until nobody listens.
fn watch(sensor: &Sensor, lines: &mpsc::Sender<String>) {
    let mut seen = 0;
    loop {
        let results = sensor.wait_for_results(seen + 1, WATCH);
        for result in &results[seen.min(results.len())..] {
            let line = format!(
                "{} frame {}: {} ({:.4})",
                sensor.name(),
                result.frame,
                sensor::verdict_name(result),
                f64::from(result.confidence) / 10_000.0
            );
            if lines.send(line).is_err() {
                return;
            }
        }
        seen = results.len();
    }
}
