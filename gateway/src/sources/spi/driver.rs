//! The sensor driver, generic over embedded-hal 1.0: any `SpiDevice` (chip
//! select handled by the device) and any `InputPin` for data-ready. On a Pi
//! these are linux-embedded-hal's spidev and GPIO; in tests and the demo,
//! the virtual bus to firmware-sim's simulated sensor.

use std::time::Duration;

use embedded_hal::digital::InputPin;
use embedded_hal::spi::{Operation, SpiDevice};
use medgate_shared::pixels::{MAX_DIMENSION, MAX_PIXEL_BYTES, PixelFormat, Pixels};

use super::registers::{self as reg, FrameInfo, ResultRecord};
use super::virtual_bus::VirtualEdges;

/// Bytes per FRAME_DATA read transaction.
const CHUNK: usize = 4096;

/// What went wrong talking to the sensor.
#[derive(Debug, thiserror::Error)]
pub enum SensorError {
    /// The SPI bus failed.
    #[error("SPI: {0}")]
    Bus(String),
    /// The data-ready pin could not be read.
    #[error("data-ready pin: {0}")]
    Pin(String),
    /// The device is not a medgate sensor.
    #[error("unexpected sensor identity {0:02x?} (expected \"MGS1\")")]
    Identity([u8; 4]),
    /// The sensor reports a fault.
    #[error("the sensor reports a fault (STATUS {0:#04x})")]
    Fault(u8),
    /// The frame description is impossible.
    #[error("bad frame {frame}: {reason}")]
    BadFrame {
        /// The sensor's frame counter.
        frame: u32,
        /// What is wrong.
        reason: String,
    },
    /// The frame is larger than the broker link carries; its pixels are
    /// not read.
    #[error("frame {frame} has {bytes} bytes of pixels; the broker link carries at most {budget}")]
    FrameTooLarge {
        /// The sensor's frame counter.
        frame: u32,
        /// Its pixel bytes.
        bytes: u64,
        /// What the link carries.
        budget: u64,
    },
}

/// The data-ready line's rising edges as events: a GPIO edge on a Pi, a
/// notification on the virtual bus. The gateway sleeps until one comes
/// instead of polling the line (embedded-hal 1.0's `InputPin` only reads a
/// level, so this is the one piece of hardware access beyond it).
pub trait ReadyEdges: Send + 'static {
    /// Waits until the line rises or `timeout` passes; true when it rose.
    /// A rise between two calls is not lost: the next call reports it.
    ///
    /// # Errors
    /// [`SensorError::Pin`] when the line can no longer be watched.
    fn wait_rise(&mut self, timeout: Duration) -> Result<bool, SensorError>;
}

impl ReadyEdges for VirtualEdges {
    fn wait_rise(&mut self, timeout: Duration) -> Result<bool, SensorError> {
        self.wait(timeout)
            .map_err(|e| SensorError::Pin(e.to_string()))
    }
}

/// A frame read from the sensor.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The sensor's boot id when it was read.
    pub boot: u32,
    /// The sensor's frame counter.
    pub frame: u32,
    /// The pixels.
    pub pixels: Pixels,
}

/// The driver.
pub struct SpiSensor<Spi, Ready> {
    spi: Spi,
    ready: Ready,
    /// Stands for the boot id of a sensor that reports 0: drawn at every
    /// connection, so that no frame of an earlier connection is trusted.
    connection_boot: u32,
}

impl<Spi: SpiDevice, Ready: InputPin> SpiSensor<Spi, Ready> {
    /// A driver on `spi` with data-ready on `ready`; checks the identity.
    ///
    /// # Errors
    /// [`SensorError::Identity`] for another device, or a bus error.
    pub fn new(spi: Spi, ready: Ready) -> Result<Self, SensorError> {
        let mut sensor = Self {
            spi,
            ready,
            connection_boot: rand::random::<u32>() | 1,
        };
        let mut id = [0u8; 4];
        sensor.read_register(reg::ID, &mut id)?;
        if id != reg::IDENTITY {
            return Err(SensorError::Identity(id));
        }
        Ok(sensor)
    }

    /// Checks that the sensor still answers (an unplugged SPI device reads
    /// as zeros or ones, and swallows writes without a word).
    ///
    /// # Errors
    /// [`SensorError::Identity`] when it does not, or a bus error.
    pub fn present(&mut self) -> Result<(), SensorError> {
        let mut id = [0u8; 4];
        self.read_register(reg::ID, &mut id)?;
        if id != reg::IDENTITY {
            return Err(SensorError::Identity(id));
        }
        Ok(())
    }

    /// The sensor's boot id now (see [`reg::BOOT`]); for a sensor that
    /// reports 0 (it cannot tell), a number drawn for this connection.
    ///
    /// # Errors
    /// [`SensorError::Bus`].
    pub fn boot(&mut self) -> Result<u32, SensorError> {
        let mut raw = [0u8; 4];
        self.read_register(reg::BOOT, &mut raw)?;
        let boot = u32::from_le_bytes(raw);
        Ok(if boot == 0 {
            self.connection_boot
        } else {
            boot
        })
    }

    /// Whether a frame waits (the data-ready line).
    ///
    /// # Errors
    /// [`SensorError::Pin`].
    pub fn frame_ready(&mut self) -> Result<bool, SensorError> {
        self.ready
            .is_high()
            .map_err(|e| SensorError::Pin(format!("{e:?}")))
    }

    /// Reads the waiting frame (the sensor keeps it until
    /// [`frame_done`](Self::frame_done)) if its pixels are at most
    /// `max_bytes`: the description is checked before anything is
    /// allocated.
    ///
    /// # Errors
    /// [`SensorError`] for a fault, a bus error, an impossible frame or one
    /// over `max_bytes`.
    pub fn read_frame(&mut self, max_bytes: u64) -> Result<Frame, SensorError> {
        let mut status = [0u8; 1];
        self.read_register(reg::STATUS, &mut status)?;
        if status[0] & reg::STATUS_FAULT != 0 {
            return Err(SensorError::Fault(status[0]));
        }
        let boot = self.boot()?;
        let mut raw = [0u8; reg::FRAME_INFO_LEN];
        self.read_register(reg::FRAME_INFO, &mut raw)?;
        let info = FrameInfo::from_bytes(&raw);
        let bad = |reason: String| SensorError::BadFrame {
            frame: info.frame,
            reason,
        };
        let format = match info.bits {
            8 => PixelFormat::Gray8,
            16 => PixelFormat::Gray16,
            other => return Err(bad(format!("{other} bits per pixel"))),
        };
        let (w, h) = (u32::from(info.width), u32::from(info.height));
        if w == 0 || h == 0 || w > MAX_DIMENSION || h > MAX_DIMENSION {
            return Err(bad(format!("{w}x{h} pixels")));
        }
        let expected = w as usize * h as usize * format.bytes_per_pixel();
        if info.length as usize != expected || expected > MAX_PIXEL_BYTES {
            return Err(bad(format!(
                "length {} for {w}x{h} at {} bits",
                info.length, info.bits
            )));
        }
        if expected as u64 > max_bytes {
            return Err(SensorError::FrameTooLarge {
                frame: info.frame,
                bytes: expected as u64,
                budget: max_bytes,
            });
        }
        let mut data = vec![0u8; expected];
        for chunk in data.chunks_mut(CHUNK) {
            self.read_register(reg::FRAME_DATA, chunk)?;
        }
        let pixels = Pixels::new(w, h, format, data).map_err(|e| bad(e.to_string()))?;
        Ok(Frame {
            boot,
            frame: info.frame,
            pixels,
        })
    }

    /// Tells the sensor the frame is stored safely.
    ///
    /// # Errors
    /// [`SensorError::Bus`].
    pub fn frame_done(&mut self) -> Result<(), SensorError> {
        self.write_register(reg::CONTROL, &[reg::CONTROL_FRAME_DONE])
    }

    /// Writes a result into the sensor's RESULT register.
    ///
    /// # Errors
    /// [`SensorError::Bus`].
    pub fn write_result(&mut self, record: ResultRecord) -> Result<(), SensorError> {
        self.write_register(reg::RESULT, &record.to_bytes())
    }

    fn read_register(&mut self, register: u8, buf: &mut [u8]) -> Result<(), SensorError> {
        self.spi
            .transaction(&mut [
                Operation::Write(&[reg::READ | register]),
                Operation::Read(buf),
            ])
            .map_err(|e| SensorError::Bus(format!("{e:?}")))
    }

    fn write_register(&mut self, register: u8, data: &[u8]) -> Result<(), SensorError> {
        self.spi
            .transaction(&mut [Operation::Write(&[register]), Operation::Write(data)])
            .map_err(|e| SensorError::Bus(format!("{e:?}")))
    }
}
