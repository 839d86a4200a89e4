//! The sealed-image header: who captured what, when, and how to open it.
//!
//! Encoded with postcard (serde), fields in declaration order; see
//! `shared/FORMAT.md` for the byte-level description. The encoding of a
//! given header is unique, and parsing rejects any other encoding of it, so
//! the received bytes are the canonical header that the SHA-512 tag covers.

use serde::{Deserialize, Serialize};

use crate::ids::{KeyId, MessageId, Name, RecipientId, SignerId};
use crate::pixels::PixelFormat;

/// The imaging modality, as DICOM names it (tag 0008,0060).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Modality {
    /// Other or unknown.
    Ot,
    /// Computed radiography.
    Cr,
    /// Digital radiography.
    Dx,
    /// Computed tomography.
    Ct,
    /// Magnetic resonance.
    Mr,
    /// Ultrasound.
    Us,
    /// Mammography.
    Mg,
    /// Secondary capture (scanned or converted images, hot-folder files).
    Sc,
}

impl Modality {
    /// The DICOM code, e.g. `"DX"`.
    pub fn code(self) -> &'static str {
        match self {
            Self::Ot => "OT",
            Self::Cr => "CR",
            Self::Dx => "DX",
            Self::Ct => "CT",
            Self::Mr => "MR",
            Self::Us => "US",
            Self::Mg => "MG",
            Self::Sc => "SC",
        }
    }

    /// Parses a DICOM code, case-insensitively.
    pub fn from_code(code: &str) -> Option<Self> {
        [
            Self::Ot,
            Self::Cr,
            Self::Dx,
            Self::Ct,
            Self::Mr,
            Self::Us,
            Self::Mg,
            Self::Sc,
        ]
        .into_iter()
        .find(|m| m.code().eq_ignore_ascii_case(code))
    }
}

/// What the gateway knows about an image when it seals it: the part of the
/// header that describes the capture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMeta {
    /// Unique id of this image; kept when the image is re-published.
    pub message_id: MessageId,
    /// Hospital site.
    pub site: Name,
    /// Gateway that sealed it.
    pub gateway: Name,
    /// Device (sensor, folder, modality) that captured it.
    pub device: Name,
    /// The gateway installation's epoch: random, drawn when its state folder
    /// is first created. Sequence numbers count within an epoch, so a gateway
    /// whose state was wiped starts a new epoch rather than repeating numbers.
    pub epoch: u64,
    /// Per-device sequence number, increasing within the epoch.
    pub sequence: u64,
    /// Capture time, milliseconds since the Unix epoch (UTC).
    pub captured_at_ms: u64,
    /// Imaging modality.
    pub modality: Modality,
    /// A hint for which model should classify it, if the device knows.
    pub model_hint: Option<Name>,
}

/// The header as encoded in a sealed image: the capture metadata, then what
/// the receiver needs to open it. Postcard writes a nested struct's fields
/// in place, so this is one flat sequence of fields on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Capture metadata.
    pub meta: ImageMeta,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Pixel format.
    pub pixel_format: PixelFormat,
    /// The receiver key pair the session key was wrapped for.
    pub recipient: RecipientId,
    /// The session key's id.
    pub key_id: KeyId,
    /// The id of the gateway signing key that signed the image.
    pub signer: SignerId,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modality_codes_round_trip() {
        for m in [Modality::Ot, Modality::Dx, Modality::Sc, Modality::Mg] {
            assert_eq!(Modality::from_code(&m.code().to_lowercase()), Some(m));
        }
        assert_eq!(Modality::from_code("XX"), None);
    }
}
