//! Reading image files into [`Pixels`] and writing them as PNG, safely:
//! decoding is bounded, and output files appear whole or not at all.

use std::fs;
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageBuffer, ImageFormat, ImageReader, Luma};
use medgate_shared::pixels::{MAX_DIMENSION, MAX_PIXEL_BYTES, PixelFormat, Pixels};

/// Why an image file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ImageIoError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The file is not an image the decoder reads, or is corrupt.
    #[error("{path}: cannot decode image: {reason}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        reason: String,
    },
    /// The decoded image does not fit medgate's limits.
    #[error("{path}: {reason}")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Which depth to decode to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// Always 8-bit grayscale.
    Gray8,
    /// 16-bit grayscale if the file has more than 8 bits per sample, else 8-bit.
    Native,
}

/// Decodes an image file (PNG, JPEG, TIFF) to grayscale.
///
/// # Errors
/// [`ImageIoError`] naming the file.
pub fn read_gray(path: &Path, depth: Depth) -> Result<Pixels, ImageIoError> {
    let decode = |reason: String| ImageIoError::Decode {
        path: path.to_owned(),
        reason,
    };
    let mut reader = ImageReader::open(path)
        .map_err(|source| ImageIoError::Io {
            path: path.to_owned(),
            source,
        })?
        .with_guessed_format()
        .map_err(|source| ImageIoError::Io {
            path: path.to_owned(),
            source,
        })?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_DIMENSION);
    limits.max_image_height = Some(MAX_DIMENSION);
    // RGBA16 is 8 bytes a pixel; allow room for the conversion.
    limits.max_alloc = Some(4 * MAX_PIXEL_BYTES as u64);
    reader.limits(limits);
    let decoded = reader.decode().map_err(|e| decode(e.to_string()))?;
    to_pixels(decoded, depth).map_err(|reason| ImageIoError::Unsupported {
        path: path.to_owned(),
        reason,
    })
}

/// Converts a decoded image to grayscale pixels.
///
/// # Errors
/// A reason when the image is outside medgate's limits.
pub fn to_pixels(image: DynamicImage, depth: Depth) -> Result<Pixels, String> {
    let wide = image.color().bits_per_pixel() / u16::from(image.color().channel_count()) > 8;
    let (width, height) = (image.width(), image.height());
    let result = if depth == Depth::Native && wide {
        let gray = image.into_luma16();
        let data = gray
            .into_raw()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        Pixels::new(width, height, PixelFormat::Gray16, data)
    } else {
        Pixels::new(
            width,
            height,
            PixelFormat::Gray8,
            image.into_luma8().into_raw(),
        )
    };
    result.map_err(|e| e.to_string())
}

/// Encodes pixels as PNG (8- or 16-bit grayscale) in memory.
///
/// # Errors
/// A reason if the encoder fails.
pub fn encode_png(pixels: &Pixels) -> Result<Vec<u8>, String> {
    let (w, h) = (pixels.width(), pixels.height());
    let image = match pixels.format() {
        PixelFormat::Gray8 => ImageBuffer::<Luma<u8>, _>::from_raw(w, h, pixels.data().to_vec())
            .map(DynamicImage::ImageLuma8),
        PixelFormat::Gray16 => {
            let values = pixels
                .data()
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect();
            ImageBuffer::<Luma<u16>, _>::from_raw(w, h, values).map(DynamicImage::ImageLuma16)
        }
    }
    .ok_or("pixel buffer does not match its size")?;
    let mut out = Cursor::new(Vec::new());
    image
        .write_to(&mut out, ImageFormat::Png)
        .map_err(|e| e.to_string())?;
    Ok(out.into_inner())
}

/// Writes `contents` to `path` atomically: a temporary file in the same
/// directory, synced, then renamed over `path`. A reader never sees a
/// partial file, and a failure leaves nothing behind.
///
/// # Errors
/// [`ImageIoError::Io`].
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), ImageIoError> {
    let io = |source| ImageIoError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a file name",
        ))
    })?;
    let temp = dir.join(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = fs::File::create(&temp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_round_trips_both_depths() {
        let dir = tempfile::tempdir().unwrap();
        for (format, len) in [(PixelFormat::Gray8, 12), (PixelFormat::Gray16, 24)] {
            let px = Pixels::new(4, 3, format, (0..len).map(|i| (i * 21) as u8).collect()).unwrap();
            let path = dir.path().join(format!("{format:?}.png"));
            write_atomically(&path, &encode_png(&px).unwrap()).unwrap();
            assert_eq!(read_gray(&path, Depth::Native).unwrap(), px);
        }
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            2,
            "no temporary files left"
        );
    }

    #[test]
    fn unreadable_files_name_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.png");
        fs::write(&path, b"not an image").unwrap();
        let err = read_gray(&path, Depth::Gray8).unwrap_err().to_string();
        assert!(err.contains("junk.png"), "{err}");
        let err = read_gray(&dir.path().join("missing.png"), Depth::Gray8).unwrap_err();
        assert!(matches!(err, ImageIoError::Io { .. }));
    }
}
