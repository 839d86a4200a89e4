//! The sealed-image header: who captured what, when, and how to open it.
//!
//! Encoded with postcard (serde), fields in declaration order; see
//! `shared/FORMAT.md` for the byte-level description. The encoding of a
//! given header is unique, and parsing rejects any other encoding of it, so
//! the received bytes are the canonical header that the SHA-512 tag covers.
//!
//! Two layouts exist: versions 3 and 4 carry what the image shows
//! ([`Anatomy`]: body part and view position) after the model hint;
//! version 2 does not. Format 4 (the Henon cipher's whitened variant) is
//! what gateways write. Readers of formats 2 and 3 keep their rule: a
//! version-2 header has no anatomy and a version-3 header has some, so every
//! header still has exactly one accepted encoding in each version.

use serde::{Deserialize, Serialize};

use crate::ids::{KeyId, MessageId, Name, NameError, RecipientId, SignerId};
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
    /// What the image shows, as far as the device knows (format versions 3
    /// and 4).
    pub anatomy: Anatomy,
}

/// What an image shows, in DICOM's terms, as far as the capturing device
/// knows: Body Part Examined (0018,0015), e.g. `CHEST`, and View Position
/// (0018,5101), e.g. `PA`. Receivers route on it; neither identifies a
/// patient.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Anatomy {
    /// The body part, upper case (`CHEST`, `SHOULDER`, `HEAD`).
    pub body_part: Option<Name>,
    /// The view position, upper case (`PA`, `AP`, `LL`).
    pub view_position: Option<Name>,
}

impl Anatomy {
    /// Whether the device knows neither body part nor view position (such
    /// a header could be written in format version 2).
    pub fn is_unknown(&self) -> bool {
        self.body_part.is_none() && self.view_position.is_none()
    }

    /// These values, each one this lacks taken from `fallback` (an
    /// object's own body part before the configured one).
    #[must_use]
    pub fn or(self, fallback: &Self) -> Self {
        Self {
            body_part: self.body_part.or_else(|| fallback.body_part.clone()),
            view_position: self
                .view_position
                .or_else(|| fallback.view_position.clone()),
        }
    }

    /// A DICOM code string (CS, such as `"Chest "` or `"LOWER LEG"`) as it
    /// travels: trimmed, upper case, inner spaces as `_`. `None` for an
    /// empty value.
    ///
    /// # Errors
    /// [`NameError`] if it holds a character no DICOM code string holds
    /// and no topic name may hold, or is over 64 bytes.
    pub fn code(value: &str) -> Result<Option<Name>, NameError> {
        let value = value.trim_matches(|c: char| c == ' ' || c == '\0');
        if value.is_empty() {
            return Ok(None);
        }
        Name::new(value.to_ascii_uppercase().replace(' ', "_")).map(Some)
    }
}

impl std::fmt::Display for Anatomy {
    /// `CHEST/PA`, `CHEST`, `?/LL` or `?`: how a not-classified answer
    /// names what no model accepts.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let part = self.body_part.as_ref().map_or("?", Name::as_str);
        match &self.view_position {
            Some(view) => write!(f, "{part}/{view}"),
            None => f.write_str(part),
        }
    }
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

/// The header in format version 2: as [`Header`] without the anatomy.
#[derive(Serialize, Deserialize)]
struct HeaderV2 {
    message_id: MessageId,
    site: Name,
    gateway: Name,
    device: Name,
    epoch: u64,
    sequence: u64,
    captured_at_ms: u64,
    modality: Modality,
    model_hint: Option<Name>,
    width: u32,
    height: u32,
    pixel_format: PixelFormat,
    recipient: RecipientId,
    key_id: KeyId,
    signer: SignerId,
}

/// Why header bytes are not a header of their version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The bytes do not decode as the version's fields.
    #[error("header does not decode: {0}")]
    Decode(String),
    /// They decode, but are not the one encoding of what they hold (extra
    /// bytes, non-minimal varints, or version 3 without anatomy).
    /// Also returned by [`Header::encode`] for a header its version cannot
    /// carry (version 2 with anatomy, version 3 without).
    #[error("header is not canonically encoded")]
    NonCanonical,
    /// The version has no header layout.
    #[error("format version {0} has no header layout")]
    Version(u8),
}

impl Header {
    /// Whether format `version` can carry this header: version 2 only
    /// headers without anatomy, version 3 only headers with some, version 4
    /// any.
    pub fn fits(&self, version: u8) -> bool {
        match version {
            2 => self.meta.anatomy.is_unknown(),
            3 => !self.meta.anatomy.is_unknown(),
            4 => true,
            _ => false,
        }
    }

    /// The header's bytes in format `version`'s layout.
    ///
    /// # Errors
    /// [`HeaderError::Version`] for a version without a header layout,
    /// [`HeaderError::NonCanonical`] if the version cannot carry this
    /// header (see [`fits`](Self::fits)).
    pub fn encode(&self, version: u8) -> Result<Vec<u8>, HeaderError> {
        if !(2..=4).contains(&version) {
            return Err(HeaderError::Version(version));
        }
        if !self.fits(version) {
            return Err(HeaderError::NonCanonical);
        }
        let encoded = if version == 2 {
            let m = &self.meta;
            postcard::to_allocvec(&HeaderV2 {
                message_id: m.message_id,
                site: m.site.clone(),
                gateway: m.gateway.clone(),
                device: m.device.clone(),
                epoch: m.epoch,
                sequence: m.sequence,
                captured_at_ms: m.captured_at_ms,
                modality: m.modality,
                model_hint: m.model_hint.clone(),
                width: self.width,
                height: self.height,
                pixel_format: self.pixel_format,
                recipient: self.recipient,
                key_id: self.key_id,
                signer: self.signer,
            })
        } else {
            postcard::to_allocvec(self)
        };
        // Postcard encodes every value of these types; an error would be a
        // bug, reported rather than panicked on.
        encoded.map_err(|e| HeaderError::Decode(e.to_string()))
    }

    /// Decodes the header of a `version` envelope, and refuses any bytes
    /// but the one encoding of what they hold.
    ///
    /// # Errors
    /// [`HeaderError`] saying what is wrong.
    pub fn decode(version: u8, bytes: &[u8]) -> Result<Self, HeaderError> {
        let header = match version {
            2 => Self::from(whole::<HeaderV2>(bytes)?),
            3 | 4 => whole::<Self>(bytes)?,
            other => return Err(HeaderError::Version(other)),
        };
        if header.encode(version).as_deref() != Ok(bytes) {
            return Err(HeaderError::NonCanonical);
        }
        Ok(header)
    }
}

/// Decodes `bytes` as one `T` with nothing after it.
fn whole<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, HeaderError> {
    match postcard::take_from_bytes(bytes) {
        Ok((value, [])) => Ok(value),
        Ok(_) => Err(HeaderError::NonCanonical),
        Err(e) => Err(HeaderError::Decode(e.to_string())),
    }
}

impl From<HeaderV2> for Header {
    fn from(v2: HeaderV2) -> Self {
        Self {
            meta: ImageMeta {
                message_id: v2.message_id,
                site: v2.site,
                gateway: v2.gateway,
                device: v2.device,
                epoch: v2.epoch,
                sequence: v2.sequence,
                captured_at_ms: v2.captured_at_ms,
                modality: v2.modality,
                model_hint: v2.model_hint,
                anatomy: Anatomy::default(),
            },
            width: v2.width,
            height: v2.height,
            pixel_format: v2.pixel_format,
            recipient: v2.recipient,
            key_id: v2.key_id,
            signer: v2.signer,
        }
    }
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

    fn header(anatomy: Anatomy) -> Header {
        Header {
            meta: ImageMeta {
                message_id: MessageId([7; 16]),
                site: "st".parse().unwrap(),
                gateway: "gw".parse().unwrap(),
                device: "dev".parse().unwrap(),
                epoch: 300,
                sequence: 9,
                captured_at_ms: 1_700_000_000_000,
                modality: Modality::Dx,
                model_hint: None,
                anatomy,
            },
            width: 28,
            height: 28,
            pixel_format: PixelFormat::Gray8,
            recipient: RecipientId([1; 16]),
            key_id: KeyId([2; 16]),
            signer: SignerId([3; 16]),
        }
    }

    #[test]
    fn version_2_carries_no_anatomy_version_3_only_anatomy_and_version_4_both() {
        let plain = header(Anatomy::default());
        let chest = header(Anatomy {
            body_part: Some("CHEST".parse().unwrap()),
            view_position: None,
        });
        let fits = |h: &Header| [2, 3, 4].map(|v| h.fits(v));
        assert_eq!(fits(&plain), [true, false, true]);
        assert_eq!(fits(&chest), [false, true, true]);
        for (h, version) in [(&plain, 2), (&plain, 4), (&chest, 3), (&chest, 4)] {
            let bytes = h.encode(version).unwrap();
            assert_eq!(&Header::decode(version, &bytes).unwrap(), h, "v{version}");
        }
        assert_eq!(plain.encode(3), Err(HeaderError::NonCanonical));
        assert_eq!(chest.encode(2), Err(HeaderError::NonCanonical));
        // Version 3 is version 2 with two options after the model hint, and
        // version 4 has version 3's layout.
        let (v2, v3) = (plain.encode(2).unwrap(), chest.encode(3).unwrap());
        assert_eq!(v3.len(), v2.len() + 2 + 6);
        assert_eq!(v2[..v2.len() - 48 - 3], v3[..v2.len() - 48 - 3]);
        assert_eq!(chest.encode(4).unwrap(), v3);
        assert_eq!(plain.encode(4).unwrap().len(), v2.len() + 2);
    }

    #[test]
    fn a_header_in_the_wrong_version_or_with_extra_bytes_is_refused() {
        let plain = header(Anatomy::default());
        let v4 = plain.encode(4).unwrap();
        assert_eq!(Header::decode(3, &v4), Err(HeaderError::NonCanonical));
        assert!(Header::decode(2, &v4).is_err());
        let mut longer = plain.encode(2).unwrap();
        longer.push(0);
        assert_eq!(Header::decode(2, &longer), Err(HeaderError::NonCanonical));
        assert!(matches!(
            Header::decode(2, &longer[..10]),
            Err(HeaderError::Decode(_))
        ));
        let mut longer = v4;
        longer.push(0);
        assert_eq!(Header::decode(4, &longer), Err(HeaderError::NonCanonical));
        assert_eq!(Header::decode(5, &[]), Err(HeaderError::Version(5)));
    }

    #[test]
    fn dicom_code_strings_become_names() {
        assert_eq!(
            Anatomy::code("lower leg ").unwrap().unwrap().as_str(),
            "LOWER_LEG"
        );
        assert_eq!(Anatomy::code("  ").unwrap(), None);
        assert!(Anatomy::code("CHEST/PA").is_err());
        let shown = Anatomy {
            body_part: Some("SHOULDER".parse().unwrap()),
            view_position: Some("AP".parse().unwrap()),
        };
        assert_eq!(shown.to_string(), "SHOULDER/AP");
        assert_eq!(Anatomy::default().to_string(), "?");
    }
}
