//! Simulated firmware of medgate's SPI image sensor (register map in
//! `SENSOR.md` beside this crate, constants in the gateway's
//! `sources::spi::registers`): it produces frames at a set rate from a feed
//! of real chest X-rays (or any images), raises data-ready while a frame
//! waits, holds each frame until the gateway writes FRAME_DONE, and records
//! the results the gateway writes into its RESULT register. It is reached
//! over the gateway's virtual SPI bus (a Unix socket).

use std::collections::HashMap;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use image::imageops::FilterType;
use medgate_gateway::sources::spi::registers::{self as reg, FrameInfo, ResultRecord};
use medgate_gateway::sources::spi::virtual_bus::{self, SharedTarget, SpiTarget};
use medgate_medmnist::{self as dataset, SplitName};
use medgate_shared::pixels::{PixelFormat, Pixels};

/// Where a sensor's images come from.
#[derive(Debug, Clone)]
pub struct Feed {
    images: Vec<Pixels>,
    /// The dataset's label of each image, where it has one.
    truth: Vec<Option<u8>>,
    next: usize,
}

impl Feed {
    /// Images of a MedMNIST `.npz` split, upscaled to `size` (Lanczos).
    ///
    /// # Errors
    /// If the file cannot be read.
    pub fn from_npz(
        path: &Path,
        split: SplitName,
        size: u32,
        limit: usize,
    ) -> anyhow::Result<Self> {
        let data = dataset::read_split(path, split)?;
        let side = data.width as u32;
        let mut images = Vec::new();
        let mut truth = Vec::new();
        for i in 0..data.labels.len().min(limit.max(1)) {
            if let Some(raw) = data.image(i) {
                images.push(scale(raw, side, size)?);
                truth.push(data.labels.get(i).copied());
            }
        }
        anyhow::ensure!(!images.is_empty(), "{}: no images", path.display());
        Ok(Self {
            images,
            truth,
            next: 0,
        })
    }

    /// Every readable image file (PNG, JPEG, TIFF) in `dir`, as 8-bit
    /// grayscale resized to `size`², in name order.
    ///
    /// # Errors
    /// If the folder cannot be read or holds no readable image.
    pub fn from_folder(dir: &Path, size: u32) -> anyhow::Result<Self> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        paths.sort();
        let mut images = Vec::new();
        for path in paths {
            match crate::imageio::read_gray(&path, crate::imageio::Depth::Gray8) {
                Ok(pixels) => {
                    let raw = image::GrayImage::from_raw(
                        pixels.width(),
                        pixels.height(),
                        pixels.into_data(),
                    )
                    .ok_or_else(|| anyhow::anyhow!("{}: bad buffer", path.display()))?;
                    let big = image::imageops::resize(&raw, size, size, FilterType::Triangle);
                    images.push(Pixels::new(size, size, PixelFormat::Gray8, big.into_raw())?);
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), cause = %e, "skipped: not a readable image")
                }
            }
        }
        anyhow::ensure!(!images.is_empty(), "{}: no readable image", dir.display());
        Ok(Self {
            truth: vec![None; images.len()],
            images,
            next: 0,
        })
    }

    /// Generated test images (gradients and discs), for a machine without data.
    pub fn generated(size: u32, count: usize) -> Self {
        let images = (0..count.max(1))
            .map(|k| {
                let data = (0..size * size)
                    .map(|i| {
                        let (x, y) = (i % size, i / size);
                        let (dx, dy) = (x as i64 - size as i64 / 2, y as i64 - size as i64 / 2);
                        let disc = dx * dx + dy * dy < (size as i64 / (3 + k as i64 % 3)).pow(2);
                        ((x + y + k as u32 * 17) % 200) as u8 + if disc { 55 } else { 0 }
                    })
                    .collect();
                Pixels::new(size, size, PixelFormat::Gray8, data)
            })
            .filter_map(Result::ok)
            .collect::<Vec<_>>();
        Self {
            truth: vec![None; images.len()],
            images,
            next: 0,
        }
    }

    /// The same images, the first taken at `offset` (so that several
    /// sensors on one feed do not show the same image at once).
    pub fn starting_at(mut self, offset: usize) -> Self {
        self.next = offset % self.images.len().max(1);
        self
    }

    /// The same images at 16 bits per pixel, each 8-bit value v spread
    /// over the whole range as v × 257 (little-endian), as a 16-bit
    /// detector's frames are sized.
    ///
    /// # Errors
    /// Never for images this feed holds.
    pub fn widened(self) -> anyhow::Result<Self> {
        let images = self
            .images
            .into_iter()
            .map(|image| {
                let (w, h) = (image.width(), image.height());
                let wide = match image.format() {
                    PixelFormat::Gray16 => image.into_data(),
                    _ => image
                        .into_data()
                        .into_iter()
                        .flat_map(|v| (u16::from(v) * 257).to_le_bytes())
                        .collect(),
                };
                Ok(Pixels::new(w, h, PixelFormat::Gray16, wide)?)
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { images, ..self })
    }

    /// Its images.
    pub fn images(&self) -> &[Pixels] {
        &self.images
    }

    /// Whether the images carry dataset labels.
    pub fn labelled(&self) -> bool {
        self.truth.iter().any(Option::is_some)
    }

    /// The next image and its label, round and round.
    fn take(&mut self) -> (Pixels, Option<u8>) {
        let at = self.next % self.images.len();
        self.next += 1;
        (
            self.images[at].clone(),
            self.truth.get(at).copied().flatten(),
        )
    }
}

fn scale(raw: &[u8], side: u32, size: u32) -> anyhow::Result<Pixels> {
    let small = image::GrayImage::from_raw(side, side, raw.to_vec())
        .ok_or_else(|| anyhow::anyhow!("image buffer of the wrong size"))?;
    let big = if size == side {
        small
    } else {
        image::imageops::resize(&small, size, size, FilterType::Lanczos3)
    };
    Ok(Pixels::new(size, size, PixelFormat::Gray8, big.into_raw())?)
}

/// What the sensor has seen, for callers and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SensorLog {
    /// Frames produced.
    pub produced: u32,
    /// Frames released by FRAME_DONE.
    pub released: u32,
    /// Results written by the gateway, in order, one per frame.
    pub results: Vec<ResultRecord>,
    /// RESULT writes for a frame that already had one (ignored, as the
    /// register map says: the host delivers at least once).
    pub repeated: u32,
    /// Capture to result, per entry of `results`: from the moment the frame
    /// was ready (data-ready raised) to its RESULT write.
    pub latencies: Vec<Duration>,
    /// The feed's label of each entry of `results`, where it has one.
    pub truths: Vec<Option<u8>>,
    /// Frame clock ticks at which the previous frame was still waiting for
    /// the host, so no frame was captured (the host is too slow).
    pub missed: u32,
    /// Power cycles so far ([`Sensor::power_cycle`]).
    pub boots: u32,
}

struct Frame {
    info: FrameInfo,
    data: Vec<u8>,
}

/// How long a frame's capture time is remembered waiting for its result;
/// older entries are dropped (their results count without a latency).
const PENDING_RESULTS: usize = 65_536;

/// The register machine.
struct Machine {
    /// The boot id (`BOOT`), drawn at every power-up.
    boot: u32,
    /// Frames captured since the last power-up: the frame counter.
    since_boot: u32,
    frame: Option<Frame>,
    offset: usize,
    command: Option<u8>,
    written: Vec<u8>,
    log: SensorLog,
    /// When each frame still waiting for its result was captured, and its
    /// label in the feed.
    captured: HashMap<u32, (Instant, Option<u8>)>,
    /// Cleared by [`Sensor::stop_capturing`].
    capturing: bool,
    /// Cleared by [`Sensor::unplug`]: the bus then reads zeros and writes
    /// are lost, as with a real device pulled off its connector.
    present: bool,
}

impl Machine {
    fn capture(&mut self, (pixels, truth): (Pixels, Option<u8>)) {
        self.log.produced += 1;
        self.since_boot += 1;
        let frame = self.since_boot;
        let info = FrameInfo {
            frame,
            width: pixels.width() as u16,
            height: pixels.height() as u16,
            bits: if pixels.format() == PixelFormat::Gray16 {
                16
            } else {
                8
            },
            length: pixels.data().len() as u32,
        };
        self.frame = Some(Frame {
            info,
            data: pixels.into_data(),
        });
        if self.captured.len() >= PENDING_RESULTS {
            self.captured.clear();
        }
        self.captured.insert(frame, (Instant::now(), truth));
    }
}

impl SpiTarget for Machine {
    fn select(&mut self) {
        self.command = None;
        self.written.clear();
    }

    fn clock(&mut self, mosi: u8) -> u8 {
        if !self.present {
            return 0;
        }
        let Some(command) = self.command else {
            self.command = Some(mosi);
            if mosi == reg::READ | reg::FRAME_INFO {
                self.offset = 0;
            }
            return 0;
        };
        if command & reg::READ == 0 {
            self.written.push(mosi);
            return 0;
        }
        // Reads: the register's bytes, counted from the command.
        let at = self.written.len();
        self.written.push(mosi);
        match command & !reg::READ {
            reg::ID => reg::IDENTITY.get(at).copied().unwrap_or(0),
            reg::BOOT => self.boot.to_le_bytes().get(at).copied().unwrap_or(0),
            reg::STATUS if self.frame.is_some() => reg::STATUS_FRAME_READY,
            reg::FRAME_INFO => self
                .frame
                .as_ref()
                .map_or(0, |f| f.info.to_bytes().get(at).copied().unwrap_or(0)),
            reg::FRAME_DATA => {
                let byte = self
                    .frame
                    .as_ref()
                    .and_then(|f| f.data.get(self.offset).copied())
                    .unwrap_or(0);
                self.offset += 1;
                byte
            }
            _ => 0,
        }
    }

    fn deselect(&mut self) {
        if !self.present {
            self.command = None;
            return;
        }
        match self.command {
            Some(reg::CONTROL) if self.written.first() == Some(&reg::CONTROL_FRAME_DONE) => {
                if self.frame.take().is_some() {
                    self.log.released += 1;
                }
                self.offset = 0;
            }
            Some(reg::CONTROL) if self.written.first() == Some(&reg::CONTROL_RESET) => {
                self.offset = 0
            }
            Some(reg::RESULT) if self.written.len() == reg::RESULT_LEN => {
                let mut bytes = [0u8; reg::RESULT_LEN];
                bytes.copy_from_slice(&self.written);
                let record = ResultRecord::from_bytes(&bytes);
                match self.captured.remove(&record.frame) {
                    Some((at, truth)) => {
                        self.log.results.push(record);
                        self.log.latencies.push(at.elapsed());
                        self.log.truths.push(truth);
                    }
                    None if self.log.results.iter().any(|r| r.frame == record.frame) => {
                        self.log.repeated += 1;
                    }
                    // Remembered no longer: answered once, without a latency.
                    None => {
                        self.log.results.push(record);
                        self.log.latencies.push(Duration::ZERO);
                        self.log.truths.push(None);
                    }
                }
            }
            _ => {}
        }
        self.command = None;
    }

    fn data_ready(&self) -> bool {
        self.present && self.frame.is_some()
    }
}

/// A running simulated sensor.
#[derive(Clone)]
pub struct Sensor {
    name: String,
    socket: PathBuf,
    state: Arc<SharedTarget<Machine>>,
}

impl Sensor {
    /// Starts a sensor named `name` listening on `socket` (replacing a stale
    /// socket file), capturing a frame from `feed` at every tick of a
    /// `period` clock unless the previous frame is still waiting (a missed
    /// tick, counted in [`SensorLog::missed`]).
    ///
    /// # Errors
    /// If the socket cannot be bound.
    pub fn start(name: &str, socket: &Path, feed: Feed, period: Duration) -> std::io::Result<Self> {
        Self::start_limited(name, socket, feed, period, None)
    }

    /// As [`start`](Self::start), producing at most `limit` frames per power-up.
    ///
    /// # Errors
    /// If the socket cannot be bound.
    pub fn start_limited(
        name: &str,
        socket: &Path,
        feed: Feed,
        period: Duration,
        limit: Option<u32>,
    ) -> std::io::Result<Self> {
        Self::start_phased(name, socket, feed, period, Duration::ZERO, limit, true)
    }

    /// As [`start_limited`](Self::start_limited), with the first frame
    /// `phase` after the start (sensors of one site do not tick together),
    /// and without capturing until [`start_capturing`](Self::start_capturing)
    /// unless `capturing`.
    ///
    /// # Errors
    /// If the socket cannot be bound.
    pub fn start_phased(
        name: &str,
        socket: &Path,
        mut feed: Feed,
        period: Duration,
        phase: Duration,
        limit: Option<u32>,
        capturing: bool,
    ) -> std::io::Result<Self> {
        if socket.exists() {
            std::fs::remove_file(socket)?;
        }
        let listener = UnixListener::bind(socket)?;
        let sensor = Self {
            name: name.to_owned(),
            socket: socket.to_path_buf(),
            state: Arc::new(SharedTarget::new(Machine {
                boot: new_boot(),
                since_boot: 0,
                frame: None,
                offset: 0,
                command: None,
                written: Vec::new(),
                log: SensorLog::default(),
                captured: HashMap::new(),
                capturing,
                present: true,
            })),
        };
        let state = sensor.state.clone();
        std::thread::Builder::new()
            .name(format!("sensor-{name}-frames"))
            .spawn(move || {
                std::thread::sleep(phase);
                let mut tick = Instant::now();
                loop {
                    state.with(|machine| {
                        let more =
                            machine.capturing && limit.is_none_or(|l| machine.since_boot < l);
                        if machine.frame.is_some() && more {
                            machine.log.missed += 1;
                        } else if more {
                            machine.capture(feed.take());
                        }
                    });
                    // The frame clock of the simulated device: fixed ticks,
                    // so that the rate holds however long a capture takes.
                    tick += period;
                    let now = Instant::now();
                    if tick > now {
                        std::thread::sleep(tick - now);
                    } else {
                        tick = now;
                    }
                }
            })?;
        let state = sensor.state.clone();
        let link = format!("sensor-{name}-link");
        std::thread::Builder::new()
            .name(format!("sensor-{name}-bus"))
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let state = state.clone();
                    // Named as the sensor's: the load report counts the
                    // threads named `sensor-…` as the simulated sensors.
                    let _ = std::thread::Builder::new()
                        .name(link.clone())
                        .spawn(move || {
                            let _ = virtual_bus::serve(stream, &state);
                        });
                }
            })?;
        Ok(sensor)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Starts (again) capturing a frame at every tick of its clock.
    pub fn start_capturing(&self) {
        self.state.with(|machine| machine.capturing = true);
    }

    /// Whether a host (the gateway) is attached and waits for its
    /// data-ready edges.
    pub fn watched(&self) -> bool {
        self.state.watched()
    }

    /// Bus requests the host has made so far.
    pub fn requests(&self) -> u64 {
        self.state.requests()
    }

    /// Captures no more frames (a frame already waiting stays readable, and
    /// results are still taken).
    pub fn stop_capturing(&self) {
        self.state.with(|machine| machine.capturing = false);
    }

    /// Pulls the sensor off its bus (`false`) or plugs it back (`true`): it
    /// keeps capturing, but while unplugged the host reads zeros and its
    /// writes are lost.
    pub fn plug(&self, present: bool) {
        self.state.with(|machine| machine.present = present);
    }

    /// Simulates a power cycle: a new boot id, the frame counter back to
    /// 0 (the next frame is 1 again), the waiting frame and the memory of
    /// captured frames lost, as a real sensor's RAM is.
    pub fn power_cycle(&self) {
        self.state.with(|machine| {
            machine.boot = new_boot();
            machine.since_boot = 0;
            machine.frame = None;
            machine.offset = 0;
            machine.captured.clear();
            machine.log.boots += 1;
        });
    }

    /// A copy of what it has seen.
    pub fn log(&self) -> SensorLog {
        self.state.with(|machine| machine.log.clone())
    }

    /// Waits until `count` results have been written or `timeout` passes;
    /// returns the results so far.
    pub fn wait_for_results(&self, count: usize, timeout: Duration) -> Vec<ResultRecord> {
        self.state.wait_until(
            timeout,
            |machine| machine.log.results.len() >= count,
            |machine| machine.log.results.clone(),
        )
    }
}

/// A nonzero boot id.
fn new_boot() -> u32 {
    rand::random::<u32>() | 1
}

/// What a `RESULT` write says: the class name, `rejected` when the gateway
/// flagged that the frame will not be classified, or `not classified` when
/// a receiver verified it and gave it no class on purpose.
pub fn verdict_name(record: &ResultRecord) -> &'static str {
    if record.flags & reg::FLAG_REJECTED != 0 {
        "rejected"
    } else if record.flags & reg::FLAG_NOT_CLASSIFIED != 0 {
        "not classified"
    } else {
        class_name(record.class)
    }
}

/// The class names of the result register's class index.
pub fn class_name(class: u8) -> &'static str {
    match class {
        0 => "normal",
        1 => "pneumonia",
        _ => "unknown",
    }
}
