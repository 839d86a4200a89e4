//! MedMNIST `.npz` files: a zip of NumPy `.npy` arrays named
//! `{train,val,test}_{images,labels}`, images `uint8` of shape (N, H, W) and
//! labels `uint8` of shape (N, 1). Only what these files use is read:
//! `.npy` version 1–3, dtype `|u1` (or `<u1`), C order.
//!
//! A crate of its own so that its users (the receiver's `train` and
//! `evaluate`, the simulator's sensors, the `npy` fuzz target) share one
//! reader without building Burn or the daemons.
//!
//! # Layout
//! One module: [`read_split`] and [`read_array`] for files, [`parse_npy`]
//! for one array's bytes (untrusted input: it has a fuzz target).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The largest array accepted, in bytes (the full MedMNIST 224×224 sets are
/// bigger than anything medgate trains on here).
pub const MAX_ARRAY_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// A split of a MedMNIST file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SplitName {
    /// Training images.
    Train,
    /// Validation images (model selection).
    Val,
    /// Held-out test images.
    Test,
}

impl SplitName {
    /// The array-name prefix, e.g. `"val"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Train => "train",
            Self::Val => "val",
            Self::Test => "test",
        }
    }
}

impl std::str::FromStr for SplitName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "train" => Ok(Self::Train),
            "val" => Ok(Self::Val),
            "test" => Ok(Self::Test),
            other => Err(format!(
                "unknown split {other:?}: expected train, val or test"
            )),
        }
    }
}

/// Why a dataset could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The file is not a readable zip archive.
    #[error("{path}: not a readable .npz (zip) file: {reason}")]
    NotNpz {
        /// The file.
        path: PathBuf,
        /// What the zip reader said.
        reason: String,
    },
    /// The archive has no array of that name, e.g. a file without a test split.
    #[error("{path} has no array {name:?} (arrays present: {present})")]
    MissingArray {
        /// The file.
        path: PathBuf,
        /// The array asked for.
        name: String,
        /// The arrays it has.
        present: String,
    },
    /// An array is not a `.npy` this reader understands.
    #[error("{path}: array {name:?}: {reason}")]
    BadArray {
        /// The file.
        path: PathBuf,
        /// The array.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A `uint8` array: its shape and its bytes in C order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct U8Array {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Elements, row-major.
    pub data: Vec<u8>,
}

/// Images and labels of one split.
#[derive(Debug, Clone)]
pub struct Split {
    /// Number of images.
    pub len: usize,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// All images, `len × height × width` bytes.
    pub images: Vec<u8>,
    /// One label per image.
    pub labels: Vec<u8>,
}

impl Split {
    /// The pixels of image `index`.
    pub fn image(&self, index: usize) -> Option<&[u8]> {
        let size = self.height * self.width;
        self.images.get(index * size..(index + 1) * size)
    }
}

/// Reads one split (`{split}_images` and `{split}_labels`) of a MedMNIST file.
///
/// # Errors
/// [`DatasetError`] naming the file and what is missing or malformed.
pub fn read_split(path: &Path, split: SplitName) -> Result<Split, DatasetError> {
    let images_name = format!("{}_images", split.as_str());
    let labels_name = format!("{}_labels", split.as_str());
    let images = read_array(path, &images_name)?;
    let labels = read_array(path, &labels_name)?;
    let bad = |name: &str, reason: String| DatasetError::BadArray {
        path: path.to_owned(),
        name: name.to_owned(),
        reason,
    };
    let [len, height, width] = images.shape[..] else {
        return Err(bad(
            &images_name,
            format!("shape {:?} is not (N, H, W)", images.shape),
        ));
    };
    let label_count = match labels.shape[..] {
        [n] | [n, 1] => n,
        _ => {
            return Err(bad(
                &labels_name,
                format!("shape {:?} is not (N, 1)", labels.shape),
            ));
        }
    };
    if label_count != len {
        return Err(bad(
            &labels_name,
            format!("{label_count} labels for {len} images"),
        ));
    }
    Ok(Split {
        len,
        height,
        width,
        images: images.data,
        labels: labels.data,
    })
}

/// Reads the `uint8` array `name` (without `.npy`) from an `.npz` file.
///
/// # Errors
/// [`DatasetError`].
pub fn read_array(path: &Path, name: &str) -> Result<U8Array, DatasetError> {
    let file = File::open(path).map_err(|source| DatasetError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| DatasetError::NotNpz {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let member = format!("{name}.npy");
    let present = archive
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.trim_end_matches(".npy").to_owned()))
        .collect::<Vec<_>>();
    let mut entry = match archive.by_name(&member) {
        Ok(entry) => entry,
        Err(zip::result::ZipError::FileNotFound) => {
            let mut present = present;
            present.sort();
            return Err(DatasetError::MissingArray {
                path: path.to_owned(),
                name: name.to_owned(),
                present: present.join(", "),
            });
        }
        Err(e) => {
            return Err(DatasetError::NotNpz {
                path: path.to_owned(),
                reason: e.to_string(),
            });
        }
    };
    let bad = |reason: String| DatasetError::BadArray {
        path: path.to_owned(),
        name: name.to_owned(),
        reason,
    };
    if entry.size() > MAX_ARRAY_BYTES {
        return Err(bad(format!("{} bytes is over the limit", entry.size())));
    }
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    entry
        .read_to_end(&mut bytes)
        .map_err(|e| bad(e.to_string()))?;
    parse_npy(&bytes).map_err(bad)
}

/// Parses a `.npy` byte string holding a C-order `uint8` array.
///
/// # Errors
/// A description of what is unsupported or malformed.
pub fn parse_npy(bytes: &[u8]) -> Result<U8Array, String> {
    if bytes.get(..6) != Some(b"\x93NUMPY") {
        return Err("not a .npy array (bad magic)".into());
    }
    let major = *bytes.get(6).ok_or("truncated .npy header")?;
    let (header_len, header_at) = match major {
        1 => {
            let raw = bytes.get(8..10).ok_or("truncated .npy header")?;
            (usize::from(u16::from_le_bytes([raw[0], raw[1]])), 10)
        }
        2 | 3 => {
            let raw = bytes.get(8..12).ok_or("truncated .npy header")?;
            (
                u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize,
                12,
            )
        }
        v => return Err(format!(".npy version {v} is not supported")),
    };
    let header = bytes
        .get(header_at..header_at + header_len)
        .ok_or("truncated .npy header")?;
    let header = std::str::from_utf8(header).map_err(|_| "the .npy header is not text")?;
    let descr = dict_value(header, "descr").ok_or("the .npy header has no descr")?;
    if !matches!(
        descr.trim_matches(|c| c == '\'' || c == '"'),
        "|u1" | "<u1" | ">u1"
    ) {
        return Err(format!("dtype {descr} is not uint8"));
    }
    let fortran =
        dict_value(header, "fortran_order").ok_or("the .npy header has no fortran_order")?;
    if fortran != "False" {
        return Err("Fortran-order arrays are not supported".into());
    }
    let shape_text = dict_value(header, "shape").ok_or("the .npy header has no shape")?;
    let shape = shape_text
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("bad shape {shape_text}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or("shape overflows")?;
    let data = &bytes[header_at + header_len..];
    if data.len() != count {
        return Err(format!(
            "shape {shape:?} needs {count} bytes, the array has {}",
            data.len()
        ));
    }
    Ok(U8Array {
        shape,
        data: data.to_vec(),
    })
}

/// The raw text of `key`'s value in a Python dict literal such as
/// `{'descr': '|u1', 'fortran_order': False, 'shape': (3, 2), }`.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else {
        rest.find([',', '}'])?
    };
    Some(rest[..end].trim())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn npy(shape: &str, data: &[u8]) -> Vec<u8> {
        npy_typed("|u1", shape, data)
    }

    fn npy_typed(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn npz(arrays: &[(&str, Vec<u8>)]) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut zip = zip::ZipWriter::new(file.reopen().unwrap());
        for (name, bytes) in arrays {
            zip.start_file(
                format!("{name}.npy"),
                zip::write::SimpleFileOptions::default(),
            )
            .unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
        file
    }

    #[test]
    fn reads_a_split() {
        let file = npz(&[
            (
                "val_images",
                npy("(2, 2, 3)", &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]),
            ),
            ("val_labels", npy("(2, 1)", &[0, 1])),
        ]);
        let split = read_split(file.path(), SplitName::Val).unwrap();
        assert_eq!((split.len, split.height, split.width), (2, 2, 3));
        assert_eq!(split.image(1), Some(&[7, 8, 9, 10, 11, 12][..]));
        assert_eq!(split.labels, vec![0, 1]);
        assert_eq!(split.image(2), None);
    }

    #[test]
    fn a_missing_split_is_named() {
        let file = npz(&[("val_labels", npy("(1, 1)", &[0]))]);
        let err = read_split(file.path(), SplitName::Test).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("test_images") && text.contains("val_labels"),
            "{text}"
        );
    }

    #[test]
    fn malformed_arrays_are_refused() {
        assert!(parse_npy(b"nonsense").is_err());
        assert!(
            parse_npy(&npy("(2, 2)", &[1, 2, 3]))
                .unwrap_err()
                .contains("needs 4")
        );
        assert!(
            parse_npy(&npy_typed("<u1", "(1,)", &[0])).is_ok(),
            "<u1 is uint8 too"
        );
        let float = npy_typed("<f8", "(1,)", &[0; 8]);
        assert!(parse_npy(&float).unwrap_err().contains("not uint8"));
        for len in 0..20 {
            let _ = parse_npy(&npy("(3,)", &[1, 2, 3])[..len]);
        }
    }
}
