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
//! - edge request: `0x03`, `timeout_ms u32`: answered as soon as the
//!   data-ready line has risen since the previous edge request on this
//!   connection (or since the connection opened), else after the timeout;
//!   the reply byte is 1 when it rose, 0 when the time ran out. Rises are
//!   counted, never lost between two requests, as a GPIO character device
//!   queues its edge events.
//! - reply: status `u8` (0 ok, 1 error), `len u32`, then the bytes read by
//!   the transaction in op order, the pin level (one byte), whether the line
//!   rose (one byte), or an error message.
//!
//! Lengths are checked before anything is allocated.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use embedded_hal::digital::{self, InputPin};
use embedded_hal::spi::{self, Operation, SpiDevice};

/// Most operations in one transaction.
pub const MAX_OPS: usize = 64;
/// Most bytes in one operation.
pub const MAX_OP_LEN: usize = 1 << 20;

/// The longest an edge request waits.
pub const MAX_EDGE_WAIT: Duration = Duration::from_secs(60);

const TRANSACTION: u8 = 0x01;
const PIN: u8 = 0x02;
const EDGE: u8 = 0x03;

/// How much longer than its own timeout the gateway waits for the answer
/// to an edge request before it calls the link dead.
const EDGE_GRACE: Duration = Duration::from_secs(5);

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

/// The data-ready line's rising edges (a third connection, owned by the
/// thread that waits for them).
pub struct VirtualEdges {
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

    /// Connects to the rising edges of the same sensor's data-ready line.
    ///
    /// # Errors
    /// If the socket cannot be reached.
    pub fn edges(path: &Path) -> Result<VirtualEdges, BusError> {
        Ok(VirtualEdges {
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

impl VirtualEdges {
    /// Waits until the line rises or `timeout` (at most
    /// [`MAX_EDGE_WAIT`]) passes; true when it rose.
    ///
    /// # Errors
    /// A socket error, or no answer within the timeout and a grace period.
    pub fn wait(&mut self, timeout: Duration) -> Result<bool, BusError> {
        let timeout = timeout.min(MAX_EDGE_WAIT);
        let millis = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        let mut request = vec![EDGE];
        request.extend_from_slice(&millis.to_le_bytes());
        self.bus
            .stream
            .set_read_timeout(Some(timeout + EDGE_GRACE))?;
        self.bus.stream.write_all(&request)?;
        let rose = self.bus.reply()?;
        Ok(rose.first().copied().unwrap_or(0) != 0)
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

/// A simulated device shared by its bus, pin and edge connections (and
/// by whatever drives it, such as its frame clock): every access goes
/// through [`with`](Self::with), which afterwards reads the data-ready line
/// and counts its rises, so that edge requests see every one of them.
pub struct SharedTarget<T> {
    state: Mutex<Tracked<T>>,
    /// Woken after every access.
    changed: Condvar,
    /// Woken when data-ready rises (the edge requests wait on it alone, so
    /// that a frame's many transactions do not wake them).
    rose: Condvar,
}

struct Tracked<T> {
    target: T,
    /// The data-ready level after the last access.
    level: bool,
    /// Rises of data-ready so far.
    rises: u64,
    /// Open connections that have asked for edges.
    watchers: usize,
    /// Requests served so far, on every connection.
    requests: u64,
}

impl<T: SpiTarget> SharedTarget<T> {
    /// Shares `target`.
    pub fn new(target: T) -> Self {
        let level = target.data_ready();
        Self {
            state: Mutex::new(Tracked {
                target,
                level,
                rises: 0,
                watchers: 0,
                requests: 0,
            }),
            changed: Condvar::new(),
            rose: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Tracked<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` with the device to itself; then a rise of data-ready is
    /// counted and everyone waiting is woken.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let mut state = self.lock();
        let out = f(&mut state.target);
        let level = state.target.data_ready();
        let rose = level && !state.level;
        if rose {
            state.rises += 1;
        }
        state.level = level;
        drop(state);
        if rose {
            self.rose.notify_all();
        }
        self.changed.notify_all();
        out
    }

    /// Waits until `done` holds for the device or `timeout` passes, then
    /// reads it with `read`.
    pub fn wait_until<R>(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&T) -> bool,
        read: impl FnOnce(&T) -> R,
    ) -> R {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        while !done(&state.target) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        read(&state.target)
    }

    /// Whether a host is watching the data-ready line (an open connection
    /// has asked for its edges): a gateway is attached and waiting.
    pub fn watched(&self) -> bool {
        self.lock().watchers > 0
    }

    /// Requests the host has made so far (transactions, level reads, edge
    /// waits): what a host that polls pays for, and one that waits for
    /// edges does not.
    pub fn requests(&self) -> u64 {
        self.lock().requests
    }

    fn rises(&self) -> u64 {
        self.lock().rises
    }

    /// Waits until more than `seen` rises were counted or `timeout` passes;
    /// the count then.
    fn wait_rise(&self, seen: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        while state.rises <= seen {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            state = self
                .rose
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        state.rises
    }
}

/// Serves one connection for `target` until the peer hangs up.
///
/// # Errors
/// A socket error other than the peer closing.
pub fn serve<T: SpiTarget>(mut stream: UnixStream, target: &SharedTarget<T>) -> io::Result<()> {
    /// Counts the connection among the watchers from its first edge
    /// request until it ends, however it ends.
    struct Watching<'a, T>(&'a SharedTarget<T>, bool);
    impl<T> Drop for Watching<'_, T> {
        fn drop(&mut self) {
            if self.1 {
                let mut state = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
                state.watchers = state.watchers.saturating_sub(1);
            }
        }
    }
    let mut watching = Watching(target, false);
    // Edge requests report the rises after this point.
    let mut seen = target.rises();
    loop {
        let mut kind = [0u8; 1];
        match stream.read_exact(&mut kind) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        target.lock().requests += 1;
        let outcome = match kind[0] {
            PIN => Ok(vec![u8::from(target.with(|t| t.data_ready()))]),
            TRANSACTION => {
                read_transaction(&mut stream).map(|ops| target.with(|t| run_transaction(t, &ops)))
            }
            EDGE => {
                let mut millis = [0u8; 4];
                stream.read_exact(&mut millis)?;
                let timeout =
                    Duration::from_millis(u64::from(u32::from_le_bytes(millis))).min(MAX_EDGE_WAIT);
                if !watching.1 {
                    watching.1 = true;
                    target.lock().watchers += 1;
                }
                let now = target.wait_rise(seen, timeout);
                let rose = now > seen;
                seen = now;
                Ok(vec![u8::from(rose)])
            }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::net::UnixListener;
    use std::sync::Arc;

    use super::*;

    /// A device that is nothing but its data-ready line.
    struct Line {
        high: bool,
    }

    impl SpiTarget for Line {
        fn select(&mut self) {}
        fn clock(&mut self, _mosi: u8) -> u8 {
            0
        }
        fn deselect(&mut self) {}
        fn data_ready(&self) -> bool {
            self.high
        }
    }

    #[test]
    fn rises_wake_the_waiter_are_never_lost_between_requests_and_a_quiet_line_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("line.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let line = Arc::new(SharedTarget::new(Line { high: false }));
        let served = line.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let served = served.clone();
                std::thread::spawn(move || serve(stream, &served));
            }
        });
        let mut edges = VirtualBus::edges(&path).unwrap();
        let mut pin = VirtualBus::pin(&path).unwrap();
        assert!(!line.watched());
        assert!(!edges.wait(Duration::ZERO).unwrap(), "no rise yet");
        assert!(line.watched(), "a host waits for its edges");

        // Two rises while nobody waits: the next request reports them.
        line.with(|l| l.high = true);
        line.with(|l| l.high = false);
        line.with(|l| l.high = true);
        assert!(edges.wait(MAX_EDGE_WAIT).unwrap());
        assert!(pin.is_high().unwrap());
        // A line that stays high has not risen again.
        assert!(!edges.wait(Duration::from_millis(20)).unwrap());

        // A rise while the request waits answers it.
        let toggler = line.clone();
        let rise = std::thread::spawn(move || {
            toggler.with(|l| l.high = false);
            toggler.with(|l| l.high = true);
        });
        assert!(edges.wait(MAX_EDGE_WAIT).unwrap());
        rise.join().unwrap();

        // The host hangs up: nobody watches any more.
        drop(edges);
        let deadline = Instant::now() + MAX_EDGE_WAIT;
        while line.watched() {
            assert!(Instant::now() < deadline, "the watcher is gone");
            std::thread::yield_now();
        }
    }
}
