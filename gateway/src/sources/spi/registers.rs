//! The register map of medgate's SPI image sensor, shared by the gateway's
//! driver and the simulated firmware (`firmware-sim/SENSOR.md` describes it
//! for firmware authors).
//!
//! A transaction (chip select low … high) starts with a command byte:
//! bit 7 set reads, clear writes; bits 0–6 address a register. A read then
//! clocks out the register's bytes (FRAME_DATA streams the frame, continuing
//! where the previous read stopped); a write clocks in its bytes, applied
//! when chip select rises. The data-ready line is high while a frame waits.

/// Read flag of the command byte.
pub const READ: u8 = 0x80;

/// `ID` (r, 4 bytes): `MGS1`.
pub const ID: u8 = 0x00;
/// The expected identity.
pub const IDENTITY: [u8; 4] = *b"MGS1";
/// `STATUS` (r, 1 byte): see the `STATUS_*` bits.
pub const STATUS: u8 = 0x04;
/// `STATUS` bit: a frame is ready (mirrors the data-ready line).
pub const STATUS_FRAME_READY: u8 = 0x01;
/// `STATUS` bit: the sensor has failed and needs a reset.
pub const STATUS_FAULT: u8 = 0x80;
/// `CONTROL` (w, 1 byte): [`CONTROL_FRAME_DONE`] or [`CONTROL_RESET`].
pub const CONTROL: u8 = 0x05;
/// `CONTROL` value: the frame is stored; the sensor may release it.
pub const CONTROL_FRAME_DONE: u8 = 0x01;
/// `CONTROL` value: reset the frame stream to its start.
pub const CONTROL_RESET: u8 = 0x02;
/// `BOOT` (r, 4 bytes): the sensor's boot id, a nonzero u32 that changes at
/// every power-up or firmware restart (when the frame counter restarts at
/// 1); `(BOOT, frame)` names one frame for the sensor's whole life. 0 means
/// the sensor cannot tell: the host then trusts no frame of an earlier
/// connection.
pub const BOOT: u8 = 0x18;
/// `FRAME_INFO` (r, 16 bytes): see [`FrameInfo`]; reading it rewinds
/// `FRAME_DATA` to the frame's first byte.
pub const FRAME_INFO: u8 = 0x08;
/// Size of `FRAME_INFO`.
pub const FRAME_INFO_LEN: usize = 16;
/// `FRAME_DATA` (r, streaming): the frame's pixels, row by row,
/// little-endian for 16-bit pixels.
pub const FRAME_DATA: u8 = 0x20;
/// `RESULT` (w, 8 bytes): see [`ResultRecord`].
pub const RESULT: u8 = 0x30;
/// Size of `RESULT`.
pub const RESULT_LEN: usize = 8;
/// `RESULT` flags bit 0: the frame will not be classified (a receiver
/// refused it, or nobody answered it); class is 0xFF and confidence 0.
pub const FLAG_REJECTED: u8 = 0x01;
/// `RESULT` flags bit 1: a receiver verified the frame but gave it no class
/// on purpose (no model accepts it, or it is unlike the model's training
/// data); class is 0xFF and confidence 0. Sending it again would get the
/// same answer.
pub const FLAG_NOT_CLASSIFIED: u8 = 0x02;

/// The `FRAME_INFO` register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameInfo {
    /// The sensor's frame counter.
    pub frame: u32,
    /// Width in pixels.
    pub width: u16,
    /// Height in pixels.
    pub height: u16,
    /// Bits per pixel: 8 or 16.
    pub bits: u8,
    /// Bytes of pixel data.
    pub length: u32,
}

impl FrameInfo {
    /// The register's bytes: frame u32, width u16, height u16, bits u8,
    /// three reserved zero bytes, length u32 (all little-endian).
    pub fn to_bytes(self) -> [u8; FRAME_INFO_LEN] {
        let mut out = [0u8; FRAME_INFO_LEN];
        out[0..4].copy_from_slice(&self.frame.to_le_bytes());
        out[4..6].copy_from_slice(&self.width.to_le_bytes());
        out[6..8].copy_from_slice(&self.height.to_le_bytes());
        out[8] = self.bits;
        out[12..16].copy_from_slice(&self.length.to_le_bytes());
        out
    }

    /// Parses the register's bytes.
    pub fn from_bytes(b: &[u8; FRAME_INFO_LEN]) -> Self {
        Self {
            frame: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            width: u16::from_le_bytes([b[4], b[5]]),
            height: u16::from_le_bytes([b[6], b[7]]),
            bits: b[8],
            length: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
        }
    }
}

/// The `RESULT` register: what the gateway tells the sensor about a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResultRecord {
    /// The frame it concerns.
    pub frame: u32,
    /// Class index (0 normal, 1 pneumonia; 0xFF unknown).
    pub class: u8,
    /// Probability of that class in units of 1/10000.
    pub confidence: u16,
    /// Bit 0 [`FLAG_REJECTED`], bit 1 [`FLAG_NOT_CLASSIFIED`]; the others
    /// zero.
    pub flags: u8,
}

impl ResultRecord {
    /// The record that tells the sensor frame `frame` will not be
    /// classified: class 0xFF, confidence 0, flag [`FLAG_REJECTED`].
    pub fn rejected(frame: u32) -> Self {
        Self {
            frame,
            class: 0xFF,
            confidence: 0,
            flags: FLAG_REJECTED,
        }
    }

    /// The record that tells the sensor frame `frame` was verified but not
    /// classified: class 0xFF, confidence 0, flag [`FLAG_NOT_CLASSIFIED`].
    pub fn not_classified(frame: u32) -> Self {
        Self {
            frame,
            class: 0xFF,
            confidence: 0,
            flags: FLAG_NOT_CLASSIFIED,
        }
    }

    /// The register's bytes: frame u32, class u8, confidence u16, flags u8.
    pub fn to_bytes(self) -> [u8; RESULT_LEN] {
        let mut out = [0u8; RESULT_LEN];
        out[0..4].copy_from_slice(&self.frame.to_le_bytes());
        out[4] = self.class;
        out[5..7].copy_from_slice(&self.confidence.to_le_bytes());
        out[7] = self.flags;
        out
    }

    /// Parses the register's bytes.
    pub fn from_bytes(b: &[u8; RESULT_LEN]) -> Self {
        Self {
            frame: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            class: b[4],
            confidence: u16::from_le_bytes([b[5], b[6]]),
            flags: b[7],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_round_trip() {
        let info = FrameInfo {
            frame: 7,
            width: 512,
            height: 256,
            bits: 16,
            length: 512 * 256 * 2,
        };
        assert_eq!(FrameInfo::from_bytes(&info.to_bytes()), info);
        let result = ResultRecord {
            frame: 9,
            class: 1,
            confidence: 9312,
            flags: 0,
        };
        assert_eq!(ResultRecord::from_bytes(&result.to_bytes()), result);
    }
}
