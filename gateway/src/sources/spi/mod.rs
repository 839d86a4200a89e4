//! An SPI image sensor as a source: the embedded-hal driver runs on its own
//! thread (it is blocking, as embedded-hal 1.0 drivers are), sleeps until
//! the data-ready line rises (an edge event: a GPIO edge on a Pi, a
//! notification on the virtual bus; a second thread waits for it), a
//! verdict arrives or the gateway stops, reads each frame, waits until
//! intake has it durably in the spool and only then tells the sensor
//! `FRAME_DONE`; when the spool is full the sensor keeps its frame. Results
//! go back into the sensor's RESULT register. A sensor with nothing to send
//! costs the gateway a wake-up a second, not a poll every few
//! milliseconds.
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

use self::driver::{ReadyEdges, SensorError, SpiSensor};
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
    /// The longest the loop goes without reading the data-ready level
    /// should an edge be lost (edges wake it at once).
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
        open: true,
    };
    let mut session = Session {
        config,
        link,
        metrics,
        runtime,
        intake,
        results: &mut results,
        frames: &mut frames,
        stop,
    };
    while !stop.is_cancelled() {
        let outcome = match &config.bus {
            SensorBus::Virtual(path) => VirtualBus::connect(path)
                .and_then(|bus| Ok((bus, VirtualBus::pin(path)?, VirtualBus::edges(path)?)))
                .map_err(|e| SensorError::Bus(e.to_string()))
                .and_then(|(bus, pin, edges)| {
                    Ok((SpiSensor::new(bus, pin)?, watch(edges, &config.device)?))
                })
                .map(|(mut sensor, mut edges)| {
                    health.set(&config.device, None);
                    session.run(&mut sensor, &mut edges)
                }),
            #[cfg(feature = "linux-spi")]
            SensorBus::Spidev {
                device,
                chip,
                line,
                speed_hz,
            } => linux::open(device, chip, *line, *speed_hz)
                .and_then(|(sensor, edges)| Ok((sensor, watch(edges, &config.device)?)))
                .map(|(mut sensor, mut edges)| {
                    health.set(&config.device, None);
                    session.run(&mut sensor, &mut edges)
                }),
            #[cfg(not(feature = "linux-spi"))]
            SensorBus::Spidev { .. } => Err(SensorError::Bus(
                "spidev needs a build with the `linux-spi` feature".into(),
            )),
        };
        match outcome {
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

/// How long the edge thread waits at a time: after each wait it checks
/// whether its session has ended.
const EDGE_WAIT: Duration = Duration::from_secs(1);

/// Rises of the data-ready line, from the thread that waits for them; an
/// `Err` when the line can no longer be watched (the thread has ended).
type Edges = mpsc::Receiver<Result<(), SensorError>>;

/// Starts a thread that waits for `edges` and reports each rise; it ends
/// when the returned receiver is dropped (within [`EDGE_WAIT`]) or the line
/// fails.
fn watch<E: ReadyEdges>(mut edges: E, device: &Name) -> Result<Edges, SensorError> {
    // One wait first, on this thread: the other end now counts rises from
    // here, before the session reads the level for the first time.
    edges.wait_rise(Duration::ZERO)?;
    let (tx, rx) = mpsc::channel(1);
    std::thread::Builder::new()
        .name(format!("spi-{device}-ready"))
        .spawn(move || {
            while !tx.is_closed() {
                match edges.wait_rise(EDGE_WAIT) {
                    // One wake-up pending is enough: the loop reads the
                    // level when it wakes.
                    Ok(true) => {
                        let _ = tx.try_send(Ok(()));
                    }
                    Ok(false) => {}
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
            }
        })
        .map_err(|e| {
            SensorError::Pin(format!(
                "cannot start the thread that waits for data-ready: {e}"
            ))
        })?;
    Ok(rx)
}

/// What ended an idle wait.
enum Wake {
    /// Data-ready rose, or it is time to read its level again anyway.
    Look,
    /// A verdict for the sensor.
    Verdict(Delivery),
    /// The gateway stops.
    Stop,
    /// The data-ready line cannot be watched any more.
    Lost(SensorError),
}

/// Sleeps until data-ready rises, a verdict arrives, the gateway stops, or
/// `recheck` passes.
fn idle(
    runtime: &tokio::runtime::Handle,
    edges: &mut Edges,
    results: &mut Inbox,
    stop: &CancellationToken,
    recheck: Duration,
) -> Wake {
    let open = results.open;
    let wake = runtime.block_on(async {
        tokio::select! {
            biased;
            () = stop.cancelled() => Wake::Stop,
            delivery = results.queue.recv(), if open => match delivery {
                Some(delivery) => Wake::Verdict(delivery),
                None => Wake::Look,
            },
            edge = edges.recv() => match edge {
                Some(Ok(())) => Wake::Look,
                Some(Err(e)) => Wake::Lost(e),
                None => Wake::Lost(SensorError::Pin("the thread that waits for data-ready ended".into())),
            },
            () = tokio::time::sleep(recheck) => Wake::Look,
        }
    });
    if open && results.queue.is_closed() && results.queue.is_empty() {
        results.open = false;
    }
    wake
}

/// What a sensor's sessions share across reconnections.
struct Session<'a> {
    config: &'a SpiSensorConfig,
    link: &'a LinkLimit,
    metrics: &'a Metrics,
    runtime: &'a tokio::runtime::Handle,
    intake: &'a Intake,
    results: &'a mut Inbox,
    frames: &'a mut FrameMap,
    stop: &'a CancellationToken,
}

impl Session<'_> {
    /// One connected session; `Ok` when stopped, `Err` when the link
    /// failed.
    fn run<S: SpiDevice, P: InputPin>(
        &mut self,
        sensor: &mut SpiSensor<S, P>,
        edges: &mut Edges,
    ) -> Result<(), SensorError> {
        let (config, link, metrics, runtime, intake, stop) = (
            self.config,
            self.link,
            self.metrics,
            self.runtime,
            self.intake,
            self.stop,
        );
        let results = &mut *self.results;
        let frames = &mut *self.frames;
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
                match idle(runtime, edges, results, stop, config.poll) {
                    Wake::Look => {}
                    Wake::Verdict(delivery) => results.hold(delivery),
                    Wake::Stop => return Ok(()),
                    Wake::Lost(e) => return Err(e),
                }
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
}

/// The verdicts for the sensor: the queue from the core, and the one a
/// failed write left, which goes first when the sensor is back.
struct Inbox {
    queue: mpsc::Receiver<Delivery>,
    held: Option<Delivery>,
    /// False once the core has closed the queue and it is drained.
    open: bool,
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

/// Real hardware: spidev and a GPIO line (Raspberry Pi and alike). The
/// line is requested for rising-edge events: its level is read through the
/// event handle, and a duplicate of the handle's descriptor is polled for
/// the kernel's queued edges.
#[cfg(feature = "linux-spi")]
mod linux {
    use std::fs::File;
    use std::io::Read;
    use std::path::Path;
    use std::time::Duration;

    use embedded_hal::digital::{self, InputPin};
    use linux_embedded_hal::SpidevDevice;
    use linux_embedded_hal::gpio_cdev::{
        Chip, EventRequestFlags, LineEventHandle, LineRequestFlags,
    };
    use linux_embedded_hal::spidev::{SpiModeFlags, SpidevOptions};
    use nix::errno::Errno;
    use nix::poll::{PollFd, PollFlags, poll};

    use super::driver::{ReadyEdges, SensorError, SpiSensor};

    /// The data-ready level, read from the line's event handle.
    pub struct EventPin(LineEventHandle);

    /// A failed read of the line (its debug form is the message alone,
    /// which is what the driver reports).
    pub struct PinError(String);

    impl std::fmt::Debug for PinError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl digital::Error for PinError {
        fn kind(&self) -> digital::ErrorKind {
            digital::ErrorKind::Other
        }
    }

    impl digital::ErrorType for EventPin {
        type Error = PinError;
    }

    impl InputPin for EventPin {
        fn is_high(&mut self) -> Result<bool, PinError> {
            self.0
                .get_value()
                .map(|v| v != 0)
                .map_err(|e| PinError(e.to_string()))
        }

        fn is_low(&mut self) -> Result<bool, PinError> {
            self.is_high().map(|high| !high)
        }
    }

    /// The line's queued rising edges.
    pub struct GpioEdges {
        events: File,
        name: String,
    }

    /// Bytes of one `gpioevent_data` record (a u64 timestamp, a u32 id,
    /// padding); a read returns whole records only.
    const EVENT_LEN: usize = 16;

    impl ReadyEdges for GpioEdges {
        fn wait_rise(&mut self, timeout: Duration) -> Result<bool, SensorError> {
            let fail = |e: String| SensorError::Pin(format!("{}: {e}", self.name));
            let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
            let mut fds = [PollFd::new(&self.events, PollFlags::POLLIN)];
            let ready = match poll(&mut fds, millis) {
                Ok(ready) => ready,
                // A signal cut the wait short: the caller waits again.
                Err(Errno::EINTR) => 0,
                Err(e) => return Err(fail(e.to_string())),
            };
            if ready == 0 {
                return Ok(false);
            }
            // Every queued edge at once (up to 16): one wake-up for them all.
            let mut records = [0u8; EVENT_LEN * 16];
            let read = match self.events.read(&mut records) {
                Ok(read) => read,
                // The edge stays queued; the next wait finds it at once.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Ok(false),
                Err(e) => return Err(fail(e.to_string())),
            };
            if read < EVENT_LEN {
                return Err(fail(format!("short edge event ({read} bytes)")));
            }
            Ok(true)
        }
    }

    /// Opens the sensor on `device` with data-ready on `chip`:`line`.
    pub fn open(
        device: &Path,
        chip: &Path,
        line: u32,
        speed_hz: u32,
    ) -> Result<(SpiSensor<SpidevDevice, EventPin>, GpioEdges), SensorError> {
        let name = format!("{}:{line}", chip.display());
        let bus = |e: String| SensorError::Bus(format!("{}: {e}", device.display()));
        let pin = |e: String| SensorError::Pin(format!("{name}: {e}"));
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
            .and_then(|l| {
                l.events(
                    LineRequestFlags::INPUT,
                    EventRequestFlags::RISING_EDGE,
                    "medgate-gateway",
                )
            })
            .map_err(|e| pin(e.to_string()))?;
        let events = handle.file().try_clone().map_err(|e| pin(e.to_string()))?;
        let sensor = SpiSensor::new(spi, EventPin(handle))?;
        Ok((sensor, GpioEdges { events, name }))
    }
}
