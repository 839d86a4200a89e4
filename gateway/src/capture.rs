//! From a captured image to pixels ready for sealing: decode (PNG, JPEG,
//! TIFF), convert to 8- or 16-bit grayscale, resize if the config asks.
//!
//! Memory is bounded per input, before anything large is allocated: a file
//! is read only up to [`Limits::max_file_bytes`], its header's dimensions
//! and colour type must decode to at most [`Limits::max_decoded_bytes`]
//! (a decompression bomb stops there), and the pixels to be sealed must fit
//! the broker link ([`pixel_budget`]): an image that could never be
//! published is refused (or down-scaled, when the config says so) instead
//! of spooled.

use std::io::Cursor;
use std::time::{SystemTime, UNIX_EPOCH};

use image::{DynamicImage, ImageDecoder, ImageReader, imageops};
use medgate_shared::envelope;
use medgate_shared::header::{Anatomy, Modality};
use medgate_shared::ids::{MAX_NAME_LEN, MessageId, Name};
use medgate_shared::pixels::{MAX_DIMENSION, PixelFormat, Pixels, PixelsError};
use medgate_shared::topics;
use serde::{Deserialize, Serialize};

/// One image as a source delivers it.
#[derive(Debug, Clone)]
pub struct Capture {
    /// The id its message will carry, chosen by the source (which may
    /// record it before submitting, see [`crate::dicom`]).
    pub message_id: MessageId,
    /// The capturing device.
    pub device: Name,
    /// Its modality.
    pub modality: Modality,
    /// What it shows, as far as the source knows.
    pub anatomy: Anatomy,
    /// Capture time, ms since the Unix epoch.
    pub captured_at_ms: u64,
    /// The pixels, as they will be sealed.
    pub pixels: Pixels,
}

/// Bytes an MQTT v5 PUBLISH (QoS 1, no properties) adds to its payload on
/// a topic of `topic_len` bytes: fixed header (at most 5), topic name
/// (2 + its length), packet id (2), properties length (1).
pub fn publish_overhead(topic_len: usize) -> u64 {
    (5 + 2 + topic_len + 2 + 1) as u64
}

/// The longest images topic: `{ROOT}/{site}/{gateway}/images/{device}`
/// with names of the longest length allowed.
const MAX_IMAGE_TOPIC_LEN: usize =
    topics::ROOT.len() + 1 + MAX_NAME_LEN + 1 + MAX_NAME_LEN + "/images/".len() + MAX_NAME_LEN;

/// The most pixel bytes one sealed image can carry through a link whose
/// packets are at most `packet_bytes` (for any device's topic).
pub fn pixel_budget(packet_bytes: u32) -> u64 {
    u64::from(packet_bytes)
        .saturating_sub(envelope::MAX_OVERHEAD as u64 + publish_overhead(MAX_IMAGE_TOPIC_LEN))
}

/// What happens to an image whose pixels exceed the link's budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Oversize {
    /// Refused, with the reason (the default: nothing is changed silently).
    #[default]
    Refuse,
    /// Scaled down, keeping its aspect ratio, until it fits.
    Downscale,
}

/// The bounds one input is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest decoded source image, before conversion, in bytes.
    pub max_decoded_bytes: u64,
    /// Largest pixel data the link carries for this source's topic.
    pub pixel_budget: u64,
    /// The packet limit the budget comes from (for messages).
    pub packet_bytes: u32,
    /// What to do with an image over the budget.
    pub oversize: Oversize,
}

impl Limits {
    /// The largest image file read: a compressed image is smaller than its
    /// pixels, an uncompressed TIFF a little larger.
    pub fn max_file_bytes(&self) -> u64 {
        self.max_decoded_bytes + (1 << 20)
    }

    /// Refuses a file of `bytes` over [`max_file_bytes`](Self::max_file_bytes).
    ///
    /// # Errors
    /// [`DecodeError::FileTooLarge`].
    pub fn check_file_len(&self, bytes: u64) -> Result<(), DecodeError> {
        if bytes > self.max_file_bytes() {
            return Err(DecodeError::FileTooLarge {
                bytes,
                limit: self.max_file_bytes(),
            });
        }
        Ok(())
    }
}

/// Why an input was refused. Never quotes pixel data.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not an image the gateway reads, or damaged.
    #[error("not a readable PNG, JPEG or TIFF image: {0}")]
    Unreadable(String),
    /// The file is larger than any acceptable image.
    #[error(
        "the file has {bytes} bytes, more than the {limit} an image may have here (preprocess.max_decoded_bytes + 1 MiB)"
    )]
    FileTooLarge {
        /// Its size.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// Its pixels would need more memory than allowed (a decompression
    /// bomb, or simply too big).
    #[error(
        "{width}x{height} {color} decodes to {bytes} bytes, more than preprocess.max_decoded_bytes = {limit}"
    )]
    DecodedTooLarge {
        /// Width.
        width: u32,
        /// Height.
        height: u32,
        /// Colour type, as the decoder names it.
        color: String,
        /// Decoded bytes.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// Sealed, it would not fit a packet the broker link carries.
    #[error(
        "{width}x{height} at {bits} bits is {bytes} bytes of pixels; a {packet_bytes}-byte packet (mqtt.max_packet_bytes, or the broker's maximum if lower) carries at most {budget}; set preprocess.resize or preprocess.too_large = \"downscale\", or raise mqtt.max_packet_bytes and the broker's max_packet_size"
    )]
    TooLargeForLink {
        /// Width to be sealed.
        width: u32,
        /// Height to be sealed.
        height: u32,
        /// Bits per pixel.
        bits: u8,
        /// Pixel bytes.
        bytes: u64,
        /// The budget.
        budget: u64,
        /// The packet limit.
        packet_bytes: u32,
    },
    /// An input the gateway does not take, for a reason named by `label`
    /// (a DICOM object in colour, with burned-in annotation, malformed…).
    #[error("{reason}")]
    Refused {
        /// The metrics label.
        label: &'static str,
        /// Why, for the `.reason.txt`.
        reason: String,
    },
    /// The decoder stopped at its memory limit.
    #[error("decoding needs more memory than preprocess.max_decoded_bytes allows: {0}")]
    DecoderLimit(String),
    /// A side is over the format's limit.
    #[error("{width}x{height} is larger than the {MAX_DIMENSION}x{MAX_DIMENSION} limit")]
    TooLarge {
        /// Width.
        width: u32,
        /// Height.
        height: u32,
    },
    /// The pixels do not form a valid buffer.
    #[error(transparent)]
    Pixels(#[from] PixelsError),
}

impl DecodeError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unreadable(_) => "unreadable",
            Self::FileTooLarge { .. } => "file_too_large",
            Self::DecodedTooLarge { .. } | Self::TooLarge { .. } | Self::DecoderLimit(_) => {
                "decoded_too_large"
            }
            Self::TooLargeForLink { .. } => "too_large_for_link",
            Self::Pixels(_) => "invalid_pixels",
            Self::Refused { label, .. } => label,
        }
    }
}

/// How captured images are prepared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preparation {
    /// Sealed pixel format.
    pub format: PixelFormat,
    /// Optional resize to (width, height).
    pub resize: Option<(u32, u32)>,
    /// Largest decoded source image, bytes (`preprocess.max_decoded_bytes`).
    pub max_decoded_bytes: u64,
    /// What happens to an image too large for the link.
    pub oversize: Oversize,
}

impl Preparation {
    /// The limits an input is held to while the link carries packets of at
    /// most `packet_bytes`.
    pub fn limits(&self, packet_bytes: u32) -> Limits {
        Limits {
            max_decoded_bytes: self.max_decoded_bytes,
            pixel_budget: pixel_budget(packet_bytes),
            packet_bytes,
            oversize: self.oversize,
        }
    }
}

fn bits(format: PixelFormat) -> u8 {
    match format {
        PixelFormat::Gray8 => 8,
        PixelFormat::Gray16 => 16,
    }
}

fn pixel_bytes(width: u32, height: u32, format: PixelFormat) -> u64 {
    u64::from(width) * u64::from(height) * format.bytes_per_pixel() as u64
}

/// The size an image of `width` × `height` is sealed at: the configured
/// resize, or its own; scaled down to the budget when allowed.
///
/// # Errors
/// [`DecodeError::TooLargeForLink`] when it does not fit and may not be
/// scaled.
pub fn sealed_size(
    width: u32,
    height: u32,
    preparation: Preparation,
    limits: &Limits,
) -> Result<(u32, u32), DecodeError> {
    let (w, h) = preparation.resize.unwrap_or((width, height));
    let bytes = pixel_bytes(w, h, preparation.format);
    if bytes <= limits.pixel_budget {
        return Ok((w, h));
    }
    let too_large = DecodeError::TooLargeForLink {
        width: w,
        height: h,
        bits: bits(preparation.format),
        bytes,
        budget: limits.pixel_budget,
        packet_bytes: limits.packet_bytes,
    };
    if limits.oversize == Oversize::Refuse {
        return Err(too_large);
    }
    let scale = (limits.pixel_budget as f64 / bytes as f64).sqrt();
    let (mut sw, mut sh) = (
        ((f64::from(w) * scale) as u32).max(1),
        ((f64::from(h) * scale) as u32).max(1),
    );
    // Rounding may leave it a row over.
    while pixel_bytes(sw, sh, preparation.format) > limits.pixel_budget && sw > 1 && sh > 1 {
        sw -= 1;
        sh = ((u64::from(sw) * u64::from(h)) / u64::from(w)).max(1) as u32;
    }
    if pixel_bytes(sw, sh, preparation.format) > limits.pixel_budget {
        return Err(too_large);
    }
    Ok((sw, sh))
}

/// Decodes an image file's bytes and prepares its pixels, within `limits`.
///
/// # Errors
/// [`DecodeError`] for anything that is not a readable image within limits;
/// the large checks happen on the header, before the pixels are allocated.
pub fn decode(
    bytes: Vec<u8>,
    preparation: Preparation,
    limits: &Limits,
) -> Result<Pixels, DecodeError> {
    limits.check_file_len(bytes.len() as u64)?;
    let unreadable = |e: image::ImageError| match e {
        image::ImageError::Limits(e) => DecodeError::DecoderLimit(e.to_string()),
        e => DecodeError::Unreadable(e.to_string()),
    };
    let mut reader = ImageReader::new(Cursor::new(bytes.as_slice()))
        .with_guessed_format()
        .map_err(|e| DecodeError::Unreadable(e.to_string()))?;
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_image_width = Some(MAX_DIMENSION);
    decoder_limits.max_image_height = Some(MAX_DIMENSION);
    decoder_limits.max_alloc = Some(limits.max_decoded_bytes);
    reader.limits(decoder_limits);
    let decoder = reader.into_decoder().map_err(unreadable)?;
    let (width, height) = decoder.dimensions();
    if width > MAX_DIMENSION || height > MAX_DIMENSION {
        return Err(DecodeError::TooLarge { width, height });
    }
    let decoded = decoder.total_bytes();
    if decoded > limits.max_decoded_bytes {
        return Err(DecodeError::DecodedTooLarge {
            width,
            height,
            color: format!("{:?}", decoder.color_type()),
            bytes: decoded,
            limit: limits.max_decoded_bytes,
        });
    }
    let target = sealed_size(width, height, preparation, limits)?;
    let image = DynamicImage::from_decoder(decoder).map_err(unreadable)?;
    // The file is not needed while converting: a large one is not held
    // beside its pixels.
    drop(bytes);
    prepare(image, preparation.format, target)
}

/// Converts a decoded image to `format` and scales it to `target`
/// (area-averaging, so that no buffer larger than the source and the
/// result is ever held).
///
/// # Errors
/// [`DecodeError`] when the result exceeds the pixel limits.
pub fn prepare(
    image: DynamicImage,
    format: PixelFormat,
    target: (u32, u32),
) -> Result<Pixels, DecodeError> {
    let (width, height) = target;
    if width > MAX_DIMENSION || height > MAX_DIMENSION {
        return Err(DecodeError::TooLarge { width, height });
    }
    let scale = (image.width(), image.height()) != target;
    let data = match format {
        PixelFormat::Gray8 => {
            let mut gray = image.into_luma8();
            if scale {
                gray = imageops::thumbnail(&gray, width, height);
            }
            gray.into_raw()
        }
        PixelFormat::Gray16 => {
            let mut gray = image.into_luma16();
            if scale {
                gray = imageops::thumbnail(&gray, width, height);
            }
            let samples = gray.into_raw();
            let mut data = Vec::with_capacity(samples.len() * 2);
            for v in samples {
                data.extend_from_slice(&v.to_le_bytes());
            }
            data
        }
    };
    Ok(Pixels::new(width, height, format, data)?)
}

/// Now, in ms since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let image = image::GrayImage::from_fn(width, height, |x, y| image::Luma([(x + y) as u8]));
        let mut out = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    fn roomy() -> Limits {
        Limits {
            max_decoded_bytes: 32 << 20,
            pixel_budget: 16 << 20,
            packet_bytes: 16 << 20,
            oversize: Oversize::Refuse,
        }
    }

    #[test]
    fn decodes_converts_and_resizes() {
        let eight = Preparation {
            format: PixelFormat::Gray8,
            resize: None,
            max_decoded_bytes: 32 << 20,
            oversize: Oversize::Refuse,
        };
        let pixels = decode(png(20, 10), eight, &roomy()).unwrap();
        assert_eq!((pixels.width(), pixels.height()), (20, 10));
        assert_eq!(pixels.data()[21], 2);
        let sixteen = Preparation {
            format: PixelFormat::Gray16,
            resize: Some((8, 8)),
            ..eight
        };
        let pixels = decode(png(20, 10), sixteen, &roomy()).unwrap();
        assert_eq!(
            (pixels.width(), pixels.height(), pixels.data().len()),
            (8, 8, 128)
        );
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let prep = Preparation {
            format: PixelFormat::Gray8,
            resize: None,
            max_decoded_bytes: 32 << 20,
            oversize: Oversize::Refuse,
        };
        let e = decode(b"definitely not an image".to_vec(), prep, &roomy()).unwrap_err();
        assert!(e.to_string().contains("not a readable"), "{e}");
        let mut truncated = png(64, 64);
        truncated.truncate(60);
        assert!(decode(truncated, prep, &roomy()).is_err());
    }

    #[test]
    fn a_decompression_bomb_is_refused_from_its_header() {
        let mut bomb = Vec::new();
        image::GrayImage::new(8192, 8192)
            .write_to(&mut Cursor::new(&mut bomb), image::ImageFormat::Png)
            .unwrap();
        let prep = Preparation {
            format: PixelFormat::Gray8,
            resize: Some((256, 256)),
            max_decoded_bytes: 32 << 20,
            oversize: Oversize::Refuse,
        };
        let e = decode(bomb.clone(), prep, &prep.limits(16 << 20)).unwrap_err();
        assert_eq!(e.reason(), "decoded_too_large");
        assert!(
            e.to_string()
                .contains("8192x8192 L8 decodes to 67108864 bytes"),
            "{e}"
        );
        // The decoder's own allocations are bounded too.
        let tight = Limits {
            max_decoded_bytes: 1 << 10,
            ..prep.limits(16 << 20)
        };
        assert_eq!(
            decode(bomb.clone(), prep, &tight).unwrap_err().reason(),
            "decoded_too_large"
        );
        // A file larger than any acceptable image is not even parsed.
        let huge = vec![0u8; (1 << 20) + (2 << 10)];
        assert_eq!(
            decode(huge, prep, &tight).unwrap_err().reason(),
            "file_too_large"
        );
    }

    #[test]
    fn an_image_over_the_link_budget_is_refused_or_scaled_down_to_fit() {
        let prep = Preparation {
            format: PixelFormat::Gray16,
            resize: None,
            max_decoded_bytes: 32 << 20,
            oversize: Oversize::Refuse,
        };
        let limits = Limits {
            pixel_budget: 1 << 20,
            ..prep.limits(16 << 20)
        };
        let e = sealed_size(3000, 2000, prep, &limits).unwrap_err();
        assert_eq!(e.reason(), "too_large_for_link");
        assert!(e.to_string().contains("3000x2000 at 16 bits"), "{e}");
        let scaled = Limits {
            oversize: Oversize::Downscale,
            ..limits
        };
        let (w, h) = sealed_size(3000, 2000, prep, &scaled).unwrap();
        assert!(u64::from(w) * u64::from(h) * 2 <= 1 << 20, "{w}x{h}");
        assert!(
            w > 800 && (f64::from(w) / f64::from(h) - 1.5).abs() < 0.01,
            "{w}x{h}"
        );
        // What fits is left alone.
        assert_eq!(sealed_size(500, 400, prep, &scaled).unwrap(), (500, 400));
        // Decoding applies it.
        let pixels = decode(
            png(1500, 1000),
            prep,
            &Limits {
                pixel_budget: 1 << 18,
                ..scaled
            },
        )
        .unwrap();
        assert!(
            pixels.data().len() <= 1 << 18 && pixels.width() > 300,
            "{}",
            pixels.width()
        );
    }

    #[test]
    fn a_jpeg_whose_header_claims_a_huge_image_is_refused_before_decoding() {
        let mut jpeg = Vec::new();
        image::GrayImage::new(8, 8)
            .write_to(&mut Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
            .unwrap();
        // The baseline frame header (FFC0): length, precision, height, width.
        let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        jpeg[sof + 5..sof + 9].copy_from_slice(&[0x75, 0x30, 0x75, 0x30]); // 30000 x 30000
        let prep = Preparation {
            format: PixelFormat::Gray8,
            resize: Some((256, 256)),
            max_decoded_bytes: 32 << 20,
            oversize: Oversize::Refuse,
        };
        let e = decode(jpeg, prep, &prep.limits(16 << 20)).unwrap_err();
        assert_eq!(e.reason(), "decoded_too_large", "{e}");
        assert!(e.to_string().contains("30000x30000"), "{e}");
    }
}
