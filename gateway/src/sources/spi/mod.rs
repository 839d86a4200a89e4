//! An SPI image sensor as a source: the embedded-hal driver runs on its own
//! thread (it is blocking, as embedded-hal 1.0 drivers are), polls the
//! data-ready line, reads each frame, waits until intake has it durably in
//! the spool and only then tells the sensor `FRAME_DONE`; when the spool is
//! full the sensor keeps its frame. Results go back into the sensor's
//! RESULT register.
//!
//! - [`registers`]: the sensor's register map.
//! - [`driver`]: the driver, generic over `SpiDevice` + `InputPin`.
//! - [`frames`]: which frame each image came from, across restarts.
//! - [`virtual_bus`]: the same traits over a Unix socket, to firmware-sim.

pub mod driver;
pub mod frames;
pub mod registers;
pub mod virtual_bus;

use std::path::PathBuf;
use std::time::Duration;

use embedded_hal::digital::InputPin;
use embedded_hal::spi::SpiDevice;
use medgate_shared::header::{Anatomy, Modality};
use medgate_shared::ids::{MessageId, Name};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::driver::{SensorError, SpiSensor};
use self::frames::FrameMap;
use self::registers::ResultRecord;
use self::virtual_bus::VirtualBus;
use super::{Source, SourceTask};
use crate::capture::{self, Capture, pixel_budget};
use crate::intake::{Intake, Refusal};
use crate::messages::{Delivery, Health, LinkLimit, Verdict};
use crate::metrics::Metrics;

/// How an SPI sensor is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SensorBus {
    /// firmware-sim's simulated sensor on a Unix socket.
    Virtual(PathBuf),
    /// A real sensor: Linux spidev and a GPIO character-device line for
    /// data-ready (feature `linux-spi`, e.g. on a Raspberry Pi).
    Spidev {
        /// The spidev node, e.g. `/dev/spidev0.0`.
        device: PathBuf,
        /// The GPIO chip, e.g. `/dev/gpiochip0`.
        chip: PathBuf,
        /// The data-ready line offset on that chip.
        line: u32,
        /// SPI clock.
        speed_hz: u32,
    },
}

/// A configured SPI sensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiSensorConfig {
    /// Device name.
    pub device: Name,
    /// Modality.
    pub modality: Modality,
    /// Body part and view of its images.
    pub anatomy: Anatomy,
    /// How to reach it.
    pub bus: SensorBus,
    /// Data-ready polling period.
    pub poll: Duration,
    /// Where the frame map lives (`{state_dir}/frames/{device}`).
    pub frames_dir: PathBuf,
}

/// The source.
pub struct SpiSensorSource {
    config: SpiSensorConfig,
    link: LinkLimit,
    health: Health,
    metrics: Metrics,
}

impl SpiSensorSource {
    /// A source for `config`; frames larger than `link` carries are
    /// refused; an unreachable sensor is reported in `health`.
    pub fn new(config: SpiSensorConfig, link: LinkLimit, health: Health, metrics: Metrics) -> Self {
        Self {
            config,
            link,
            health,
            metrics,
        }
    }
}

impl Source for SpiSensorSource {
    fn device(&self) -> &Name {
        &self.config.device
    }

    fn run(
        self: Box<Self>,
        intake: Intake,
        results: mpsc::Receiver<Delivery>,
        stop: CancellationToken,
    ) -> SourceTask {
        let runtime = tokio::runtime::Handle::current();
        Box::pin(async move {
            let device = self.config.device.clone();
            // A sensor's loop blocks for its whole life: it gets a thread of
            // its own, so that sensors never take the blocking pool that
            // sealing and fsync need (a site with as many sensors as pool
            // threads would stall).
            let (finished, done) = tokio::sync::oneshot::channel::<()>();
            let spawned = std::thread::Builder::new()
                .name(format!("spi-{device}"))
                .spawn(move || {
                    drive(&self, &runtime, &intake, results, &stop);
                    let _ = finished.send(());
                });
            match spawned {
                Ok(_) => {
                    if done.await.is_err() {
                        tracing::error!(device = %device, "sensor thread failed");
                    }
                }
                Err(e) => {
                    tracing::error!(device = %device, cause = %e, "cannot start the sensor thread")
                }
            }
        })
    }
}

/// Connects (again and again, with backoff) and runs the sensor until `stop`.
fn drive(
    source: &SpiSensorSource,
    runtime: &tokio::runtime::Handle,
    intake: &Intake,
    results: mpsc::Receiver<Delivery>,
    stop: &CancellationToken,
) {
    let SpiSensorSource {
        config,
        link,
        health,
        metrics,
    } = source;
    let mut backoff = Duration::from_millis(100);
    let mut frames = match FrameMap::open(&config.frames_dir) {
        Ok(frames) => frames,
        Err(e) => {
            metrics.error("sensor");
            tracing::error!(device = %config.device, dir = %config.frames_dir.display(), cause = %e, "cannot keep the frame map; sensor not served");
            return;
        }
    };
    let mut results = Inbox {
        queue: results,
        held: None,
    };
    while !stop.is_cancelled() {
        let session = match &config.bus {
            SensorBus::Virtual(path) => VirtualBus::connect(path)
                .and_then(|bus| Ok((bus, VirtualBus::pin(path)?)))
                .map_err(|e| SensorError::Bus(e.to_string()))
                .and_then(|(bus, pin)| SpiSensor::new(bus, pin))
                .map(|mut sensor| {
                    health.set(&config.device, None);
                    session(
                        &mut sensor,
                        config,
                        link,
                        metrics,
                        runtime,
                        intake,
                        &mut results,
                        &mut frames,
                        stop,
                    )
                }),
            #[cfg(feature = "linux-spi")]
            SensorBus::Spidev {
                device,
                chip,
                line,
                speed_hz,
            } => linux::open(device, chip, *line, *speed_hz).map(|mut sensor| {
                health.set(&config.device, None);
                session(
                    &mut sensor,
                    config,
                    link,
                    metrics,
                    runtime,
                    intake,
                    &mut results,
                    &mut frames,
                    stop,
                )
            }),
            #[cfg(not(feature = "linux-spi"))]
            SensorBus::Spidev { .. } => Err(SensorError::Bus(
                "spidev needs a build with the `linux-spi` feature".into(),
            )),
        };
        match session {
            Ok(Ok(())) => return,
            Ok(Err(e)) => {
                metrics.error("sensor");
                health.set(&config.device, Some(format!("sensor link failed: {e}")));
                tracing::warn!(device = %config.device, cause = %e, "sensor link failed; reconnecting");
            }
            Err(e) => {
                metrics.error("sensor");
                health.set(&config.device, Some(format!("sensor not reachable: {e}")));
                tracing::warn!(device = %config.device, cause = %e, retry_in_ms = backoff.as_millis() as u64, "sensor not reachable");
            }
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// One connected session; `Ok` when stopped, `Err` when the link failed.
#[allow(clippy::too_many_arguments)]
fn session<S: SpiDevice, P: InputPin>(
    sensor: &mut SpiSensor<S, P>,
    config: &SpiSensorConfig,
    link: &LinkLimit,
    metrics: &Metrics,
    runtime: &tokio::runtime::Handle,
    intake: &Intake,
    results: &mut Inbox,
    frames: &mut FrameMap,
    stop: &CancellationToken,
) -> Result<(), SensorError> {
    let mut first = true;
    // A frame spooled whose record could not be written: when the sensor
    // offers it again, only the record is retried (never a second copy).
    let mut unrecorded: Option<(u32, u32, MessageId)> = None;
    while !stop.is_cancelled() {
        while let Some(delivery) = results.next() {
            match write_back(sensor, config, metrics, frames, &delivery.verdict) {
                Ok(true) => {
                    let _ = delivery.done.send(());
                }
                // Not delivered: the image stays spooled and is answered
                // again.
                Ok(false) => {}
                // The sensor is gone: the verdict waits for it to return.
                Err(e) => {
                    results.hold(delivery);
                    return Err(e);
                }
            }
        }
        if !sensor.frame_ready()? {
            std::thread::sleep(config.poll);
            continue;
        }
        let frame = match sensor.read_frame(pixel_budget(link.get())) {
            // The first frame after a (re)start may be one taken just before
            // a crash, before FRAME_DONE reached the sensor: it is spooled
            // already, so release it rather than send it twice.
            Ok(frame) if first && frames.has_frame(frame.boot, frame.frame) => {
                first = false;
                tracing::info!(device = %config.device, frame = frame.frame, "frame already spooled before a restart; released");
                sensor.frame_done()?;
                continue;
            }
            Ok(frame) => frame,
            Err(SensorError::BadFrame { frame, reason }) => {
                // Nothing sensible to keep: say so, release it, go on.
                refuse_frame(sensor, config, metrics, frame, "bad_frame", &reason)?;
                continue;
            }
            Err(e @ SensorError::FrameTooLarge { frame, .. }) => {
                refuse_frame(
                    sensor,
                    config,
                    metrics,
                    frame,
                    "too_large_for_link",
                    &e.to_string(),
                )?;
                continue;
            }
            Err(e) => return Err(e),
        };
        first = false;
        let (boot, number) = (frame.boot, frame.frame);
        if let Some((pending_boot, pending, id)) = unrecorded
            && (pending_boot, pending) == (boot, number)
        {
            match frames.insert(id, boot, number) {
                Ok(()) => {
                    unrecorded = None;
                    sensor.frame_done()?;
                }
                Err(e) => {
                    tracing::error!(device = %config.device, cause = %e, "still cannot record the frame; the sensor keeps it");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            continue;
        }
        let capture = Capture {
            message_id: MessageId::random(),
            device: config.device.clone(),
            modality: config.modality,
            anatomy: config.anatomy.clone(),
            captured_at_ms: capture::now_ms(),
            pixels: frame.pixels,
        };
        match runtime.block_on(intake.submit(capture)) {
            Ok(id) => match frames.insert(id, boot, number) {
                Ok(()) => sensor.frame_done()?,
                Err(e) => {
                    unrecorded = Some((boot, number, id));
                    // Spooled, but its result could not be routed after a
                    // restart: keep the frame, so it is taken again.
                    metrics.error("sensor");
                    tracing::error!(device = %config.device, cause = %e, "cannot record the frame; the sensor keeps it");
                    std::thread::sleep(Duration::from_millis(200));
                }
            },
            Err(Refusal::Full(_) | Refusal::DiskFull(_)) => {
                // The sensor keeps the frame; try again shortly.
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(Refusal::Stopping) => return Ok(()),
            Err(Refusal::TooLarge(reason)) => {
                refuse_frame(
                    sensor,
                    config,
                    metrics,
                    number,
                    "too_large_for_link",
                    &reason,
                )?;
            }
            Err(Refusal::Failed(reason)) => {
                tracing::error!(device = %config.device, %reason, "frame not accepted; the sensor keeps it");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    Ok(())
}

/// The verdicts for the sensor: the queue from the core, and the one a
/// failed write left, which goes first when the sensor is back.
struct Inbox {
    queue: mpsc::Receiver<Delivery>,
    held: Option<Delivery>,
}

impl Inbox {
    fn next(&mut self) -> Option<Delivery> {
        self.held.take().or_else(|| self.queue.try_recv().ok())
    }

    fn hold(&mut self, delivery: Delivery) {
        self.held = Some(delivery);
    }
}

/// Refuses a frame for good: the sensor gets a REJECTED result for it and
/// is told to release it; counted by reason, never spooled.
fn refuse_frame<S: SpiDevice, P: InputPin>(
    sensor: &mut SpiSensor<S, P>,
    config: &SpiSensorConfig,
    metrics: &Metrics,
    frame: u32,
    label: &str,
    reason: &str,
) -> Result<(), SensorError> {
    metrics.rejected_frame(label);
    tracing::error!(device = %config.device, frame, cause = label, reason, "frame refused; released with a REJECTED result");
    sensor.write_result(ResultRecord::rejected(frame))?;
    sensor.frame_done()
}

/// Writes a verdict into the sensor's RESULT register; false when it is
/// not delivered (the image stays spooled and is answered again).
fn write_back<S: SpiDevice, P: InputPin>(
    sensor: &mut SpiSensor<S, P>,
    config: &SpiSensorConfig,
    metrics: &Metrics,
    frames: &mut FrameMap,
    verdict: &Verdict,
) -> Result<bool, SensorError> {
    let id = verdict.message_id().parse::<MessageId>().ok();
    let Some((id, (boot, frame))) = id.and_then(|id| Some((id, frames.frame(&id)?))) else {
        tracing::info!(device = %config.device, message = %verdict.message_id(), "verdict for an image without a frame record (a second copy of a frame): logged only");
        return Ok(true);
    };
    // A sensor that is gone would swallow the write: the link fails
    // instead, and the verdict waits for it.
    sensor.present()?;
    // The frame counter restarts with the sensor: frame 7 of an earlier
    // boot is not the frame 7 the sensor holds now. Such a verdict is kept
    // beside the frame map, never written into another frame.
    if boot != Some(sensor.boot()?) {
        let body = match verdict {
            Verdict::Classified(result) => serde_json::to_vec_pretty(result),
            Verdict::NotClassified(answer) => serde_json::to_vec_pretty(answer),
            Verdict::Rejected(rejection) => serde_json::to_vec_pretty(rejection),
        }
        .unwrap_or_default();
        metrics.error("sensor_restarted");
        match frames.orphan(&id, &body) {
            Ok(path) => {
                tracing::warn!(device = %config.device, frame, message = %id, file = %path.display(), "the sensor restarted since this frame was captured; its verdict is kept in a file, not written into another frame");
            }
            Err(e) => {
                // Not kept: the image stays spooled and is answered again.
                tracing::error!(device = %config.device, frame, message = %id, cause = %e, "the sensor restarted since this frame was captured, and its verdict cannot be kept; the image stays spooled");
                return Ok(false);
            }
        }
        return Ok(true);
    }
    let result = match verdict {
        Verdict::Classified(result) => result,
        Verdict::NotClassified(answer) => {
            sensor.write_result(ResultRecord::not_classified(frame))?;
            frames.forget(&id);
            tracing::info!(device = %config.device, frame, reason = %answer.reason, detail = %answer.detail, "not classified: written to the sensor");
            return Ok(true);
        }
        Verdict::Rejected(rejection) => {
            // Class unknown, flag REJECTED: the sensor learns its frame
            // will not be classified (the image is kept in quarantine).
            sensor.write_result(ResultRecord::rejected(frame))?;
            frames.forget(&id);
            tracing::warn!(device = %config.device, frame, cause = %rejection.cause, reason = %rejection.reason, "rejection written to the sensor");
            return Ok(true);
        }
    };
    let class = result
        .probabilities
        .keys()
        .position(|k| *k == result.label)
        .and_then(|i| u8::try_from(i).ok())
        .unwrap_or(0xFF);
    let probability = result
        .probabilities
        .get(&result.label)
        .copied()
        .unwrap_or(0.0);
    let record = ResultRecord {
        frame,
        class,
        confidence: (probability.clamp(0.0, 1.0) * 10_000.0).round() as u16,
        flags: 0,
    };
    sensor.write_result(record)?;
    // Forgotten only once the register has it.
    frames.forget(&id);
    tracing::info!(device = %config.device, frame, label = %result.label, "result written to the sensor");
    Ok(true)
}

/// Real hardware: spidev and a GPIO line (Raspberry Pi and alike).
#[cfg(feature = "linux-spi")]
mod linux {
    use std::path::Path;

    use linux_embedded_hal::gpio_cdev::{Chip, LineRequestFlags};
    use linux_embedded_hal::spidev::{SpiModeFlags, SpidevOptions};
    use linux_embedded_hal::{CdevPin, SpidevDevice};

    use super::driver::{SensorError, SpiSensor};

    /// Opens the sensor on `device` with data-ready on `chip`:`line`.
    pub fn open(
        device: &Path,
        chip: &Path,
        line: u32,
        speed_hz: u32,
    ) -> Result<SpiSensor<SpidevDevice, CdevPin>, SensorError> {
        let bus = |e: String| SensorError::Bus(format!("{}: {e}", device.display()));
        let pin = |e: String| SensorError::Pin(format!("{}:{line}: {e}", chip.display()));
        let mut spi = SpidevDevice::open(device).map_err(|e| bus(format!("{e:?}")))?;
        spi.configure(
            &SpidevOptions::new()
                .bits_per_word(8)
                .max_speed_hz(speed_hz)
                .mode(SpiModeFlags::SPI_MODE_0)
                .build(),
        )
        .map_err(|e| bus(e.to_string()))?;
        let handle = Chip::new(chip)
            .and_then(|mut c| c.get_line(line))
            .and_then(|l| l.request(LineRequestFlags::INPUT, 0, "medgate-gateway"))
            .map_err(|e| pin(e.to_string()))?;
        let ready = CdevPin::new(handle).map_err(|e| pin(e.to_string()))?;
        SpiSensor::new(spi, ready)
    }
}
