//! Grayscale pixel buffers: the plaintext that gets sealed.

use serde::{Deserialize, Serialize};

/// The largest width or height accepted, in pixels.
pub const MAX_DIMENSION: u32 = 32_768;
/// The largest pixel buffer accepted, in bytes (a 16-bit 4096×4096 image is 32 MiB).
pub const MAX_PIXEL_BYTES: usize = 64 * 1024 * 1024;

/// How pixels are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PixelFormat {
    /// 8-bit grayscale, one byte per pixel.
    Gray8,
    /// 16-bit grayscale, two bytes per pixel, little-endian (DICOM sources).
    Gray16,
}

impl PixelFormat {
    /// Bytes per pixel.
    pub fn bytes_per_pixel(self) -> usize {
        match self {
            Self::Gray8 => 1,
            Self::Gray16 => 2,
        }
    }
}

/// Why a pixel buffer is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PixelsError {
    /// Width or height is zero or above [`MAX_DIMENSION`].
    #[error("image size {width}x{height} is outside 1..={MAX_DIMENSION} pixels per side")]
    BadDimensions {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
    /// The buffer would be larger than [`MAX_PIXEL_BYTES`].
    #[error("image of {width}x{height} {format:?} is over the {MAX_PIXEL_BYTES}-byte limit")]
    TooLarge {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// Pixel format.
        format: PixelFormat,
    },
    /// The buffer length does not match width × height × bytes per pixel.
    #[error("pixel buffer has {actual} bytes, {width}x{height} {format:?} needs {expected}")]
    LengthMismatch {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// Pixel format.
        format: PixelFormat,
        /// Bytes needed.
        expected: usize,
        /// Bytes given.
        actual: usize,
    },
}

/// The number of bytes a `width × height` image of `format` needs, after
/// checking both sides and the total against the limits.
///
/// # Errors
/// [`PixelsError::BadDimensions`] or [`PixelsError::TooLarge`].
pub fn byte_len(width: u32, height: u32, format: PixelFormat) -> Result<usize, PixelsError> {
    if width == 0 || height == 0 || width > MAX_DIMENSION || height > MAX_DIMENSION {
        return Err(PixelsError::BadDimensions { width, height });
    }
    let len = (width as usize)
        .checked_mul(height as usize)
        .and_then(|n| n.checked_mul(format.bytes_per_pixel()))
        .filter(|&n| n <= MAX_PIXEL_BYTES);
    len.ok_or(PixelsError::TooLarge {
        width,
        height,
        format,
    })
}

/// A grayscale image, row-major, no padding between rows.
///
/// Its `Debug` output never shows pixel values.
#[derive(Clone, PartialEq, Eq)]
pub struct Pixels {
    width: u32,
    height: u32,
    format: PixelFormat,
    data: Vec<u8>,
}

impl Pixels {
    /// Wraps a buffer after checking its size.
    ///
    /// # Errors
    /// [`PixelsError`] when the dimensions are out of range or the buffer
    /// length does not match them.
    pub fn new(
        width: u32,
        height: u32,
        format: PixelFormat,
        data: Vec<u8>,
    ) -> Result<Self, PixelsError> {
        let expected = byte_len(width, height, format)?;
        if data.len() != expected {
            return Err(PixelsError::LengthMismatch {
                width,
                height,
                format,
                expected,
                actual: data.len(),
            });
        }
        Ok(Self {
            width,
            height,
            format,
            data,
        })
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Pixel format.
    pub fn format(&self) -> PixelFormat {
        self.format
    }

    /// The raw bytes (16-bit pixels little-endian).
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Mutable access to the raw bytes; the length cannot change.
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }

    /// An image of the same size and format holding `data`, which must have
    /// the same length (ciphers keep the shape of what they transform).
    pub(crate) fn with_data(&self, data: Vec<u8>) -> Self {
        debug_assert_eq!(data.len(), self.data.len());
        Self {
            width: self.width,
            height: self.height,
            format: self.format,
            data,
        }
    }

    /// Gives the buffer back.
    pub fn into_data(self) -> Vec<u8> {
        self.data
    }

    /// The same image with its buffer replaced by `f` of it, which must
    /// keep its length (a cipher that may work in place).
    pub(crate) fn map_data(mut self, f: impl FnOnce(Vec<u8>) -> Vec<u8>) -> Self {
        let len = self.data.len();
        self.data = f(std::mem::take(&mut self.data));
        debug_assert_eq!(self.data.len(), len);
        self
    }
}

impl std::fmt::Debug for Pixels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pixels")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("format", &self.format)
            .field("bytes", &self.data.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_checked() {
        assert_eq!(byte_len(3, 2, PixelFormat::Gray16), Ok(12));
        assert!(matches!(
            byte_len(0, 2, PixelFormat::Gray8),
            Err(PixelsError::BadDimensions { .. })
        ));
        assert!(matches!(
            byte_len(MAX_DIMENSION, MAX_DIMENSION, PixelFormat::Gray16),
            Err(PixelsError::TooLarge { .. })
        ));
        assert!(matches!(
            Pixels::new(2, 2, PixelFormat::Gray8, vec![0; 3]),
            Err(PixelsError::LengthMismatch { expected: 4, .. })
        ));
    }

    #[test]
    fn debug_output_hides_pixel_values() {
        let px = Pixels::new(2, 1, PixelFormat::Gray8, vec![123, 231]).unwrap();
        let shown = format!("{px:?}");
        assert!(!shown.contains("123") && !shown.contains("231"), "{shown}");
    }
}
