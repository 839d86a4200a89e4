//! From a captured image to pixels ready for sealing: decode (PNG, JPEG,
//! TIFF), convert to 8- or 16-bit grayscale, resize if the config asks.
//! Decoding is bounded: oversized images are refused before their pixels
//! are allocated.

use std::io::Cursor;
use std::time::{SystemTime, UNIX_EPOCH};

use image::imageops::FilterType;
use image::{DynamicImage, ImageReader, Limits};
use medgate_shared::header::Modality;
use medgate_shared::ids::Name;
use medgate_shared::pixels::{MAX_DIMENSION, MAX_PIXEL_BYTES, PixelFormat, Pixels, PixelsError};

/// One image as a source delivers it.
#[derive(Debug, Clone)]
pub struct Capture {
    /// The capturing device.
    pub device: Name,
    /// Its modality.
    pub modality: Modality,
    /// Capture time, ms since the Unix epoch.
    pub captured_at_ms: u64,
    /// The pixels, as they will be sealed.
    pub pixels: Pixels,
}

/// Why an image file was refused. Never quotes pixel data.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not an image the gateway reads, or damaged.
    #[error("not a readable PNG, JPEG or TIFF image: {0}")]
    Unreadable(String),
    /// Too large.
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

/// How captured images are prepared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preparation {
    /// Sealed pixel format.
    pub format: PixelFormat,
    /// Optional resize to (width, height).
    pub resize: Option<(u32, u32)>,
}

/// Decodes an image file's bytes and prepares its pixels.
///
/// # Errors
/// [`DecodeError`] for anything that is not a readable image within limits.
pub fn decode(bytes: &[u8], preparation: Preparation) -> Result<Pixels, DecodeError> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| DecodeError::Unreadable(e.to_string()))?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_DIMENSION);
    limits.max_image_height = Some(MAX_DIMENSION);
    limits.max_alloc = Some(MAX_PIXEL_BYTES as u64 * 4);
    reader.limits(limits);
    let image = reader
        .decode()
        .map_err(|e| DecodeError::Unreadable(e.to_string()))?;
    prepare(image, preparation)
}

/// Converts and resizes a decoded image.
///
/// # Errors
/// [`DecodeError`] when the result exceeds the pixel limits.
pub fn prepare(image: DynamicImage, preparation: Preparation) -> Result<Pixels, DecodeError> {
    let image = match preparation.resize {
        Some((w, h)) if (w, h) != (image.width(), image.height()) => {
            image.resize_exact(w, h, FilterType::Triangle)
        }
        _ => image,
    };
    let (width, height) = (image.width(), image.height());
    if width > MAX_DIMENSION || height > MAX_DIMENSION {
        return Err(DecodeError::TooLarge { width, height });
    }
    let data = match preparation.format {
        PixelFormat::Gray8 => image.into_luma8().into_raw(),
        PixelFormat::Gray16 => image
            .into_luma16()
            .into_raw()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
    };
    Ok(Pixels::new(width, height, preparation.format, data)?)
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

    #[test]
    fn decodes_converts_and_resizes() {
        let eight = Preparation {
            format: PixelFormat::Gray8,
            resize: None,
        };
        let pixels = decode(&png(20, 10), eight).unwrap();
        assert_eq!((pixels.width(), pixels.height()), (20, 10));
        assert_eq!(pixels.data()[21], 2);
        let sixteen = Preparation {
            format: PixelFormat::Gray16,
            resize: Some((8, 8)),
        };
        let pixels = decode(&png(20, 10), sixteen).unwrap();
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
        };
        let e = decode(b"definitely not an image", prep).unwrap_err();
        assert!(e.to_string().contains("not a readable"), "{e}");
        let mut truncated = png(64, 64);
        truncated.truncate(60);
        assert!(decode(&truncated, prep).is_err());
    }
}
