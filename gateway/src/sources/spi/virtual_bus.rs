//! A virtual SPI bus over a Unix socket: the gateway's driver runs on it
//! exactly as on spidev, and firmware-sim's simulated sensor answers on the
//! other end, byte for byte as an SPI target would.
//!
//! Wire format (all integers little-endian):
//! - transaction request: `0x01`, op count `u16`, then per op a kind byte
//!   and: Read `0` `len u32`; Write `1` `len u32` bytes; Transfer `2`
//!   `write_len u32` bytes `read_len u32`; TransferInPlace `3` `len u32`
//!   bytes; DelayNs `4` `ns u32`. The target sees chip select fall, every
//!   byte clocked in order (zeros while only reading), chip select rise.
//! - pin request: `0x02`.
//! - reply: status `u8` (0 ok, 1 error), `len u32`, then the bytes read by
//!   the transaction in op order, the pin level (one byte), or an error
//!   message.
//!
//! Lengths are checked before anything is allocated.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use embedded_hal::digital::{self, InputPin};
use embedded_hal::spi::{self, Operation, SpiDevice};

/// Most operations in one transaction.
pub const MAX_OPS: usize = 64;
/// Most bytes in one operation.
pub const MAX_OP_LEN: usize = 1 << 20;

const TRANSACTION: u8 = 0x01;
const PIN: u8 = 0x02;

/// An error on the virtual bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The socket failed.
    #[error("virtual bus: {0}")]
    Io(#[from] io::Error),
    /// The other side broke the protocol or reported an error.
    #[error("virtual bus: {0}")]
    Protocol(String),
}

impl spi::Error for BusError {
    fn kind(&self) -> spi::ErrorKind {
        spi::ErrorKind::Other
    }
}

impl digital::Error for BusError {
    fn kind(&self) -> digital::ErrorKind {
        digital::ErrorKind::Other
    }
}

/// The gateway's end: an `SpiDevice` and the data-ready `InputPin`.
pub struct VirtualBus {
    stream: UnixStream,
}

/// The data-ready pin of a [`VirtualBus`] (a second connection, so that
/// the pin and the bus can be owned separately, as on real hardware).
pub struct VirtualPin {
    bus: VirtualBus,
}

impl VirtualBus {
    /// Connects to a simulated sensor's socket.
    ///
    /// # Errors
    /// If the socket cannot be reached.
    pub fn connect(path: &Path) -> Result<Self, BusError> {
        Ok(Self {
            stream: UnixStream::connect(path)?,
        })
    }

    /// Connects a data-ready pin to the same sensor.
    ///
    /// # Errors
    /// If the socket cannot be reached.
    pub fn pin(path: &Path) -> Result<VirtualPin, BusError> {
        Ok(VirtualPin {
            bus: Self::connect(path)?,
        })
    }

    fn reply(&mut self) -> Result<Vec<u8>, BusError> {
        let mut head = [0u8; 5];
        self.stream.read_exact(&mut head)?;
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > MAX_OP_LEN * MAX_OPS {
            return Err(BusError::Protocol(format!("reply of {len} bytes")));
        }
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body)?;
        match head[0] {
            0 => Ok(body),
            _ => Err(BusError::Protocol(
                String::from_utf8_lossy(&body).into_owned(),
            )),
        }
    }
}

impl spi::ErrorType for VirtualBus {
    type Error = BusError;
}

impl SpiDevice for VirtualBus {
    fn transaction(&mut self, operations: &mut [Operation<'_, u8>]) -> Result<(), BusError> {
        if operations.len() > MAX_OPS {
            return Err(BusError::Protocol(format!(
                "{} operations",
                operations.len()
            )));
        }
        let mut request = vec![TRANSACTION];
        request.extend_from_slice(&(operations.len() as u16).to_le_bytes());
        let len32 = |n: usize| -> Result<[u8; 4], BusError> {
            if n > MAX_OP_LEN {
                return Err(BusError::Protocol(format!("operation of {n} bytes")));
            }
            Ok((n as u32).to_le_bytes())
        };
        for op in operations.iter() {
            match op {
                Operation::Read(buf) => {
                    request.push(0);
                    request.extend_from_slice(&len32(buf.len())?);
                }
                Operation::Write(data) => {
                    request.push(1);
                    request.extend_from_slice(&len32(data.len())?);
                    request.extend_from_slice(data);
                }
                Operation::Transfer(read, write) => {
                    request.push(2);
                    request.extend_from_slice(&len32(write.len())?);
                    request.extend_from_slice(write);
                    request.extend_from_slice(&len32(read.len())?);
                }
                Operation::TransferInPlace(buf) => {
                    request.push(3);
                    request.extend_from_slice(&len32(buf.len())?);
                    request.extend_from_slice(buf);
                }
                Operation::DelayNs(ns) => {
                    request.push(4);
                    request.extend_from_slice(&ns.to_le_bytes());
                }
            }
        }
        self.stream.write_all(&request)?;
        let data = self.reply()?;
        let mut at = 0;
        for op in operations.iter_mut() {
            let buf: &mut [u8] = match op {
                Operation::Read(buf)
                | Operation::Transfer(buf, _)
                | Operation::TransferInPlace(buf) => buf,
                Operation::Write(_) | Operation::DelayNs(_) => continue,
            };
            let end = at + buf.len();
            let Some(part) = data.get(at..end) else {
                return Err(BusError::Protocol("short transaction reply".into()));
            };
            buf.copy_from_slice(part);
            at = end;
        }
        Ok(())
    }
}

impl digital::ErrorType for VirtualPin {
    type Error = BusError;
}

impl InputPin for VirtualPin {
    fn is_high(&mut self) -> Result<bool, BusError> {
        self.bus.stream.write_all(&[PIN])?;
        let level = self.bus.reply()?;
        Ok(level.first().copied().unwrap_or(0) != 0)
    }

    fn is_low(&mut self) -> Result<bool, BusError> {
        self.is_high().map(|high| !high)
    }
}

/// The target's side: what a simulated SPI device implements.
pub trait SpiTarget {
    /// Chip select falls: a transaction starts.
    fn select(&mut self);
    /// One byte clocked: `mosi` in, the returned byte out.
    fn clock(&mut self, mosi: u8) -> u8;
    /// Chip select rises: the transaction ends.
    fn deselect(&mut self);
    /// The data-ready line.
    fn data_ready(&self) -> bool;
}

/// Serves one connection for `target` until the peer hangs up. `with`
/// gives exclusive access to the target for one request (it is shared by
/// the bus and pin connections).
///
/// # Errors
/// A socket error other than the peer closing.
pub fn serve<F>(mut stream: UnixStream, mut with: F) -> io::Result<()>
where
    F: FnMut(&mut dyn FnMut(&mut dyn SpiTarget)),
{
    loop {
        let mut kind = [0u8; 1];
        match stream.read_exact(&mut kind) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let outcome = match kind[0] {
            PIN => {
                let mut level = 0u8;
                with(&mut |t: &mut dyn SpiTarget| level = u8::from(t.data_ready()));
                Ok(vec![level])
            }
            TRANSACTION => read_transaction(&mut stream).map(|ops| {
                let mut out = Vec::new();
                with(&mut |t: &mut dyn SpiTarget| out = run_transaction(t, &ops));
                out
            }),
            other => Err(format!("unknown request {other:#04x}")),
        };
        let (status, body) = match outcome {
            Ok(body) => (0u8, body),
            Err(message) => (1u8, message.into_bytes()),
        };
        let mut reply = vec![status];
        reply.extend_from_slice(&(body.len() as u32).to_le_bytes());
        reply.extend_from_slice(&body);
        stream.write_all(&reply)?;
    }
}

/// One decoded operation: bytes to clock in, and how many of the bytes
/// clocked out (from its start) go back to the reader.
struct ClockedOp {
    mosi: Vec<u8>,
    read: usize,
}

fn read_transaction(stream: &mut UnixStream) -> Result<Vec<ClockedOp>, String> {
    let io = |e: io::Error| e.to_string();
    let mut count = [0u8; 2];
    stream.read_exact(&mut count).map_err(io)?;
    let count = u16::from_le_bytes(count) as usize;
    if count > MAX_OPS {
        return Err(format!("{count} operations (at most {MAX_OPS})"));
    }
    let read_len = |stream: &mut UnixStream| -> Result<usize, String> {
        let mut b = [0u8; 4];
        stream.read_exact(&mut b).map_err(io)?;
        let n = u32::from_le_bytes(b) as usize;
        if n > MAX_OP_LEN {
            return Err(format!("operation of {n} bytes (at most {MAX_OP_LEN})"));
        }
        Ok(n)
    };
    let mut ops = Vec::with_capacity(count);
    for _ in 0..count {
        let mut kind = [0u8; 1];
        stream.read_exact(&mut kind).map_err(io)?;
        let op = match kind[0] {
            0 => {
                let n = read_len(stream)?;
                ClockedOp {
                    mosi: vec![0; n],
                    read: n,
                }
            }
            1 | 3 => {
                let mut data = vec![0; read_len(stream)?];
                stream.read_exact(&mut data).map_err(io)?;
                let read = if kind[0] == 3 { data.len() } else { 0 };
                ClockedOp { mosi: data, read }
            }
            2 => {
                let mut data = vec![0; read_len(stream)?];
                stream.read_exact(&mut data).map_err(io)?;
                let n = read_len(stream)?;
                // A transfer clocks as many bytes as its longer buffer.
                data.resize(data.len().max(n), 0);
                ClockedOp {
                    mosi: data,
                    read: n,
                }
            }
            4 => {
                let mut ns = [0u8; 4];
                stream.read_exact(&mut ns).map_err(io)?;
                ClockedOp {
                    mosi: Vec::new(),
                    read: 0,
                }
            }
            other => return Err(format!("unknown operation {other}")),
        };
        ops.push(op);
    }
    Ok(ops)
}

fn run_transaction(target: &mut dyn SpiTarget, ops: &[ClockedOp]) -> Vec<u8> {
    let mut out = Vec::new();
    target.select();
    for op in ops {
        for (i, &byte) in op.mosi.iter().enumerate() {
            let miso = target.clock(byte);
            if i < op.read {
                out.push(miso);
            }
        }
    }
    target.deselect();
    out
}
